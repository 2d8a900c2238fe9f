//! Each S3 fault at each phase of a silver run (#19 item 3): reading bronze's
//! log and files, reading and listing silver's own state, the pin, the plan,
//! a partition object, the commit, the clean-up of superseded objects and the
//! run report, each hit once by a 500, a reset connection, a lost answer (the
//! request took effect) or a truncated body. With the client's retries off the
//! fault reaches the job: it exits 0, 1 or 4 (never a panic) naming what
//! failed, and the retries a Job controller makes converge. After each
//! scenario silver equals the naive SPEC §6/§7 reference of every event
//! bronze holds, every partition holds one object, and no multipart upload is
//! left open.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod support;

use lake_testkit::error_line;
use lake_testkit::{Fault, FaultProxy, Rule, S3Op};
use support::*;

const WRITE: &[Fault] = &[Fault::Status(500), Fault::Reset, Fault::LoseResponse];
const READ: &[Fault] = &[Fault::Status(500), Fault::Reset, Fault::TruncateBody];
const MANIFESTS: &str = "silver/stop_executions/_manifests/";

/// A phase: a name, the rule hitting its first matching request, the faults.
/// The manifest PUTs of a run are its only `.json` PUTs before the report, in
/// order: the pin, the plan, the commit (runs this short renew no lease).
type Phase = (&'static str, fn(Fault) -> Rule, &'static [Fault]);

const PHASES: &[Phase] = &[
    (
        "read bronze's log",
        |f| {
            Rule::new(f)
                .op(S3Op::GetObject)
                .key_contains("bronze/events/_manifests/")
        },
        READ,
    ),
    (
        "read a bronze file",
        |f| {
            Rule::new(f)
                .op(S3Op::GetObject)
                .key_contains("bronze/events/date=")
        },
        READ,
    ),
    (
        "read silver's log",
        |f| Rule::new(f).op(S3Op::GetObject).key_contains(MANIFESTS),
        READ,
    ),
    ("list", |f| Rule::new(f).op(S3Op::ListObjects), READ),
    (
        "pin",
        |f| {
            Rule::new(f)
                .op(S3Op::PutObject)
                .key_contains(".json")
                .nth(1)
        },
        WRITE,
    ),
    (
        "plan",
        |f| {
            Rule::new(f)
                .op(S3Op::PutObject)
                .key_contains(".json")
                .nth(2)
        },
        WRITE,
    ),
    (
        "partition object",
        |f| {
            Rule::new(f)
                .op(S3Op::PutObject)
                .key_contains("silver/stop_executions/client_id=")
        },
        WRITE,
    ),
    (
        "key index",
        |f| Rule::new(f).op(S3Op::PutObject).key_contains(".index"),
        WRITE,
    ),
    (
        "commit",
        |f| {
            Rule::new(f)
                .op(S3Op::PutObject)
                .key_contains(".json")
                .nth(3)
        },
        WRITE,
    ),
    (
        "delete superseded objects",
        // The second: the first re-deletes the previous version's (done already).
        |f| Rule::new(f).op(S3Op::DeleteObjects).nth(2),
        WRITE,
    ),
    (
        "run report",
        |f| Rule::new(f).op(S3Op::PutObject).key_contains("_runs/"),
        WRITE,
    ),
];

/// Scenario `i`'s events: new executions on one of three days, and a late
/// event of the previous scenario's first execution (its partition is
/// rewritten, so the old object is superseded and deleted).
fn events(i: u64) -> Vec<Ev> {
    let day = 1 + i % 3;
    let mut out: Vec<Ev> = (0..12)
        .map(|j| {
            Ev::new(
                i * 100 + j,
                &format!("2025-06-0{day}T06:{j:02}:00Z"),
                Some(&format!("tok-{i}-{j}")),
                "STOP_TRIGGERED",
            )
            .client(1 + (j % 3) as i64)
            .qty("1")
        })
        .collect();
    if i > 0 {
        let prev_day = 1 + (i - 1) % 3;
        out.push(
            Ev::new(
                i * 100 + 99,
                &format!("2025-06-0{prev_day}T07:00:00Z"),
                Some(&format!("tok-{}-0", i - 1)),
                "EXECUTED",
            )
            .client(1)
            .qty("1")
            .fill("100.5"),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn every_s3_fault_at_every_phase_ends_equal_to_the_reference() {
    let t = TestLake::new().await;
    let proxy = FaultProxy::start(&t.s3, 29).unwrap();
    let endpoint = proxy.endpoint();
    let env = [("AWS_ENDPOINT", endpoint.as_str()), ("S3_MAX_RETRIES", "0")];
    let mut all = events(0);
    commit_batch(&t.lake, 1, &all).await;
    t.run_bin_ok(&[], &env);
    let mut batch = 1;
    let mut outcomes = Vec::new();
    for (name, rule, faults) in PHASES {
        for fault in *faults {
            let scenario = format!("{name} / {}", fault.name());
            batch += 1;
            let new = events(batch);
            commit_batch(&t.lake, batch, &new).await;
            all.extend(new);
            proxy.clear_log();
            proxy.add_rule(rule(*fault).times(1));
            let out = t.run_bin(&[], &env);
            let fired: u64 = proxy.fault_counts().values().sum();
            proxy.clear_rules();
            assert_eq!(
                fired,
                1,
                "{scenario}: the fault did not fire\n{}",
                proxy.log_text()
            );
            let code = out.status.code();
            assert!(matches!(code, Some(0 | 1 | 4)), "{scenario}: exit {code:?}");
            if code != Some(0) {
                let line = error_line(&out);
                assert!(
                    ["S3", "store", "silver/", "bronze/", "_runs"]
                        .iter()
                        .any(|w| line.contains(w)),
                    "{scenario}: the error does not name what failed: {line}"
                );
            }
            let mut attempts = 1;
            let mut last = out;
            while last.status.code() != Some(0) {
                assert!(attempts < 4, "{scenario}: no convergence");
                if last.status.code() == Some(4) {
                    std::thread::sleep(std::time::Duration::from_secs(2));
                }
                last = t.run_bin(&[], &env);
                attempts += 1;
            }
            let (want, want_quarantine) = reference(&all.iter().collect::<Vec<_>>());
            assert_eq!(silver(&t.lake).await, want, "{scenario}: silver");
            assert_eq!(
                quarantine(&t.lake).await,
                want_quarantine,
                "{scenario}: quarantine"
            );
            assert!(
                t.s3.incomplete_uploads(&t.bucket).await.unwrap().is_empty(),
                "{scenario}: a multipart upload is left open"
            );
            outcomes.push(format!("{scenario}: exit {code:?}, {attempts} attempt(s)"));
        }
    }
    eprintln!("{}", outcomes.join("\n"));
}
