//! Each S3 fault at each phase of a bronze run (#19 item 3): reading and listing
//! the log, pinning, a data file (a single PUT and each step of a multipart
//! upload), the commit and the run report, each hit once by a 500, a reset
//! connection, a lost answer (the request took effect) or a truncated body.
//! With the client's retries off, the fault reaches the job: it exits 0 (it
//! recovered), 1 (it failed and released its lease) or 4 (never a panic), names
//! what failed, and the retries a Job controller makes converge. After each
//! scenario the committed lake equals PostgreSQL, every checksum matches, no
//! object lies outside the manifests and no multipart upload is left open.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod support;

use lake_common::Dataset;
use lake_testkit::error_line;
use lake_testkit::{Fault, FaultProxy, Rule, S3Op};
use support::*;

/// A phase of a run: the requests a rule targets, and the faults that apply.
struct Phase {
    name: &'static str,
    rule: fn(Fault) -> Rule,
    faults: &'static [Fault],
    /// Needs a file of several parts (a multipart upload).
    multipart: bool,
}

const WRITE_FAULTS: &[Fault] = &[Fault::Status(500), Fault::Reset, Fault::LoseResponse];
const READ_FAULTS: &[Fault] = &[Fault::Status(500), Fault::Reset, Fault::TruncateBody];

const PHASES: &[Phase] = &[
    Phase {
        name: "read the log",
        rule: |f| {
            Rule::new(f)
                .op(S3Op::GetObject)
                .key_contains("/_manifests/")
                .nth(1)
        },
        faults: READ_FAULTS,
        multipart: false,
    },
    Phase {
        name: "list the log",
        rule: |f| Rule::new(f).op(S3Op::ListObjects).nth(1),
        faults: READ_FAULTS,
        multipart: false,
    },
    Phase {
        name: "pin",
        rule: |f| {
            Rule::new(f)
                .op(S3Op::PutObject)
                .key_contains("/_manifests/")
                .nth(1)
        },
        faults: WRITE_FAULTS,
        multipart: false,
    },
    Phase {
        name: "data file",
        rule: |f| {
            Rule::new(f)
                .op(S3Op::PutObject)
                .key_contains("/date=")
                .nth(1)
        },
        faults: WRITE_FAULTS,
        multipart: false,
    },
    Phase {
        name: "commit",
        rule: |f| {
            Rule::new(f)
                .op(S3Op::PutObject)
                .key_contains("/_manifests/0")
                .nth(2)
        },
        faults: WRITE_FAULTS,
        multipart: false,
    },
    Phase {
        name: "run report",
        rule: |f| Rule::new(f).op(S3Op::PutObject).key_contains("/_runs/"),
        faults: WRITE_FAULTS,
        multipart: false,
    },
    Phase {
        name: "start a multipart upload",
        rule: |f| Rule::new(f).op(S3Op::CreateMultipartUpload).nth(1),
        faults: WRITE_FAULTS,
        multipart: true,
    },
    Phase {
        name: "upload a part",
        rule: |f| Rule::new(f).op(S3Op::UploadPart).nth(2),
        faults: WRITE_FAULTS,
        multipart: true,
    },
    Phase {
        name: "complete a multipart upload",
        rule: |f| Rule::new(f).op(S3Op::CompleteMultipartUpload).nth(1),
        faults: WRITE_FAULTS,
        multipart: true,
    },
];

#[tokio::test(flavor = "multi_thread")]
async fn every_s3_fault_at_every_phase_loses_and_duplicates_nothing() {
    let mut h = Harness::new().await;
    let proxy = FaultProxy::start(&h.s3, 19).unwrap();
    h.extra_env.push(("AWS_ENDPOINT".into(), proxy.endpoint()));
    h.extra_env.push(("S3_MAX_RETRIES".into(), "0".into()));
    generate_recent(&h.pg, 500, 190).await;
    h.run_ok(&["--dataset", "events"]);
    let mut seed = 191;
    let mut big_day: Option<chrono::NaiveDate> = None;
    let mut outcomes = Vec::new();
    for phase in PHASES {
        for fault in phase.faults {
            let scenario = format!("{} / {}", phase.name, fault.name());
            seed += 1;
            // A multipart scenario re-exports a day of several parts (a backfill
            // of the day that holds a big export).
            let args: Vec<String> = if phase.multipart {
                if big_day.is_none() {
                    // ~11 MB of Parquet (three parts of 5 MiB) within one UTC
                    // day: the hour before now, or before midnight just after it.
                    let mut end = chrono::Utc::now();
                    if chrono::Timelike::hour(&end) == 0 {
                        end -= chrono::Duration::hours(1);
                    }
                    let client = h.pg.client().await.unwrap();
                    let opts = lake_testkit::demo::GenerateOptions::new(120_000, seed)
                        .window_end(end.into())
                        .window(std::time::Duration::from_secs(3600));
                    lake_testkit::demo::generate_with(&client, &opts)
                        .await
                        .unwrap();
                    h.run_ok(&["--dataset", "events"]);
                    big_day = Some(end.date_naive());
                }
                let day = big_day.unwrap().to_string();
                vec!["--dataset".into(), "events".into(), "--date".into(), day]
            } else {
                generate_recent(&h.pg, 40, seed).await;
                vec!["--dataset".into(), "events".into()]
            };
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            proxy.clear_log();
            proxy.add_rule((phase.rule)(*fault).times(1));
            let out = h.run(&args);
            let fired: u64 = proxy.fault_counts().values().sum();
            proxy.clear_rules();
            assert_eq!(
                fired,
                1,
                "{scenario}: the fault did not fire\n{}",
                proxy.log_text()
            );
            let code = out.status.code();
            assert!(
                matches!(code, Some(0 | 1 | 4)),
                "{scenario}: exit {code:?}\n{}",
                stderr(&out)
            );
            if code != Some(0) {
                let line = error_line(&out);
                assert!(
                    ["S3", "store", "lake", "_manifests", "date=", "_runs"]
                        .iter()
                        .any(|w| line.contains(w)),
                    "{scenario}: the error does not name what failed: {line}"
                );
            }
            // The retries of a Job controller: a failed run released its lease.
            let mut attempts = 1;
            let mut last = out;
            while last.status.code() != Some(0) {
                assert!(
                    attempts < 4,
                    "{scenario}: no convergence\n{}",
                    stderr(&last)
                );
                if last.status.code() == Some(4) {
                    std::thread::sleep(std::time::Duration::from_secs(2));
                }
                last = h.run(&args);
                attempts += 1;
            }
            // A run that recovered by itself may leave a backfill to be run again.
            h.assert_lake_equals_postgres().await;
            h.assert_checksums_match(Dataset::BronzeEvents).await;
            assert!(
                h.s3.incomplete_uploads(&h.bucket).await.unwrap().is_empty(),
                "{scenario}: a multipart upload is left open"
            );
            outcomes.push(format!("{scenario}: exit {code:?}, {attempts} attempt(s)"));
        }
    }
    eprintln!("{}", outcomes.join("\n"));
}
