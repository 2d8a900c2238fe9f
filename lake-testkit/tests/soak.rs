//! The fault soak (#19 item 4, `just test-faults`): rounds of what a production
//! source does — inserts, a late commit, savepoints rolled back, outbox
//! updates, a table rewrite — with bronze-ingest and silver-transform run after
//! each as a Job controller runs them (a failed attempt is retried; exit 2 or 3
//! would be a bug here), while the S3 proxy injects faults into about one
//! request in ten. At the end, without faults: bronze holds every event once
//! and every outbox row in its current version (`--verify`), no object outside
//! the manifests and no incomplete multipart upload remain, and silver equals
//! a full recompute row for row.
//!
//! `SOAK_ROUNDS` (4 in CI) and `SOAK_FAULT_RATE` (0.10) size it; the test
//! prints the faults injected per kind and the attempts per run.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, SystemTime};

use arrow::compute::cast;
use arrow::datatypes::DataType;
use arrow::util::display::array_value_to_string;
use futures::TryStreamExt;
use lake_common::{Dataset, Lake, LakeConfig, manifest, parquet_io};
use lake_testkit::{Fault, FaultProxy, Rule, S3Op, TestPostgres, TestS3, demo};
use object_store::path::Path;

fn bin(job: &str) -> PathBuf {
    let path = std::path::Path::new(env!("CARGO_BIN_EXE_lake-demo")).with_file_name(job);
    assert!(
        path.exists(),
        "build the jobs first: cargo build --workspace (nextest --workspace does)"
    );
    path
}

fn knob<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `job` until it succeeds, as a Job controller with a generous
/// backoffLimit would (exit 1 and 4 are retried); returns the attempts.
fn run_retried(job: &str, args: &[&str], env: &[(String, String)]) -> u32 {
    for attempt in 1..=12 {
        let out = Command::new(bin(job))
            .env_clear()
            .envs(env.iter().cloned())
            .args(args)
            .output()
            .unwrap();
        let code = out.status.code();
        if code == Some(0) {
            return attempt;
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            matches!(code, Some(1) | Some(4)),
            "{job} {args:?} exited {code:?}, which a fault must never cause:\n{stderr}"
        );
        let line = stderr
            .lines()
            .rfind(|l| l.contains("\"level\":\"ERROR\""))
            .unwrap_or_default();
        assert!(
            !line.is_empty(),
            "{job} failed without an error line:\n{stderr}"
        );
        eprintln!("{job} attempt {attempt} exited {code:?}: {line}");
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("{job} {args:?} did not succeed in 12 attempts");
}

/// An INSERT of `n` copies of random existing events under new ids (and no
/// `event_seq`, which is unique).
async fn copy_events(c: &tokio_postgres::Client, n: u32) -> String {
    let cols: String = c
        .query_one(
            "SELECT string_agg(attname, ', ' ORDER BY attnum) FROM pg_attribute \
             WHERE attrelid = 'stop_events'::regclass AND attnum > 0 AND NOT attisdropped \
             AND attname NOT IN ('event_id', 'event_seq')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    format!(
        "INSERT INTO stop_events (event_id, {cols}) \
         SELECT gen_random_uuid(), {cols} FROM stop_events ORDER BY random() LIMIT {n}"
    )
}

/// Every value of every silver file, with its partition path, sorted.
async fn silver_rows(lake: &Lake) -> Vec<String> {
    let files: Vec<_> = lake
        .store()
        .list(Some(&Path::from("silver")))
        .try_collect()
        .await
        .unwrap();
    let mut rows = Vec::new();
    for f in files
        .iter()
        .filter(|f| f.location.as_ref().ends_with(".parquet"))
    {
        let dir = f.location.as_ref().rsplit_once('/').unwrap().0.to_owned();
        for b in parquet_io::read_all(lake, &f.location).await.unwrap() {
            // Timestamps as their microseconds (displaying a zone needs chrono-tz).
            let columns: Vec<_> = b
                .columns()
                .iter()
                .map(|c| match c.data_type() {
                    DataType::Timestamp(..) => cast(c, &DataType::Int64).unwrap(),
                    _ => c.clone(),
                })
                .collect();
            for i in 0..b.num_rows() {
                let values: Vec<String> = columns
                    .iter()
                    .map(|c| array_value_to_string(c, i).unwrap())
                    .collect();
                rows.push(format!("{dir}|{}", values.join("|")));
            }
        }
    }
    rows.sort();
    rows
}

#[tokio::test(flavor = "multi_thread")]
async fn rounds_of_source_life_under_s3_faults_lose_and_duplicate_nothing() {
    let rounds: u32 = knob("SOAK_ROUNDS", 4);
    let rate: f64 = knob("SOAK_FAULT_RATE", 0.10);
    let (pg, s3) = tokio::join!(TestPostgres::start(), TestS3::start());
    let (pg, s3) = (pg.unwrap(), s3.unwrap());
    let c = pg.client().await.unwrap();
    demo::create_schema(&c).await.unwrap();
    pg.create_role("lake_reader", "reader-pw", true)
        .await
        .unwrap();
    let bucket = s3.new_bucket().await.unwrap();
    let proxy = FaultProxy::start(&s3, 2026).unwrap();
    // One kind of fault per rule, each at an equal share of the rate (a
    // request matched by an earlier rule's draw is not drawn again).
    let kinds = [
        Fault::Status(500),
        Fault::SlowDown,
        Fault::Reset,
        Fault::LoseResponse,
        Fault::TruncateBody,
    ];
    let per_kind = rate / kinds.len() as f64;
    for (i, fault) in kinds.into_iter().enumerate() {
        // A lost response or truncated body only where they mean something.
        let rule = match fault {
            Fault::LoseResponse => Rule::new(fault).op(S3Op::PutObject),
            Fault::TruncateBody => Rule::new(fault).op(S3Op::GetObject),
            _ => Rule::new(fault),
        };
        proxy.add_rule(rule.probability(per_kind / (1.0 - per_kind * i as f64)));
    }
    // One retry per request (the test default): a fault that hits a request
    // and its retry fails the run, and the Job's next attempt goes on.
    let mut env = pg.env_as("lake_reader", "reader-pw");
    env.extend(proxy.env(&s3, &bucket));
    env.push(("LOG_FORMAT".into(), "json".into()));
    env.push(("BRONZE_LEASE_SECS".into(), "5".into()));

    let mut attempts: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for round in 0..rounds {
        let opts = demo::GenerateOptions::new(400, 500 + u64::from(round))
            .window_end(SystemTime::now())
            .window(Duration::from_secs(2 * 3600));
        demo::generate_with(&c, &opts).await.unwrap();
        // A late commit: its transaction holds the horizon while bronze runs.
        let late = pg.client().await.unwrap();
        late.batch_execute(&format!("BEGIN; {}", copy_events(&late, 25).await))
            .await
            .unwrap();
        attempts
            .entry("bronze-ingest")
            .or_default()
            .push(run_retried("bronze-ingest", &[], &env));
        late.batch_execute("COMMIT").await.unwrap();
        // Savepoints: a rolled-back subtransaction's rows never reach the lake.
        let insert = copy_events(&c, 20).await;
        c.batch_execute(&format!(
            "BEGIN; {insert}; SAVEPOINT s; {insert}; ROLLBACK TO SAVEPOINT s; {insert}; COMMIT"
        ))
        .await
        .unwrap();
        // The broker publishes outbox rows long after they were created.
        c.batch_execute(
            "UPDATE outbox SET retry_count = retry_count + 1, last_error = 'retried' \
             WHERE outbox_id IN (SELECT outbox_id FROM outbox ORDER BY random() LIMIT 30)",
        )
        .await
        .unwrap();
        if round == 1 {
            // A migration that rewrites the table (every row under a new xid).
            c.batch_execute("ALTER TABLE stop_events ALTER COLUMN error_message TYPE varchar(600)")
                .await
                .unwrap();
        }
        attempts
            .entry("bronze-ingest")
            .or_default()
            .push(run_retried("bronze-ingest", &[], &env));
        attempts
            .entry("silver-transform")
            .or_default()
            .push(run_retried("silver-transform", &[], &env));
    }
    let faults = proxy.fault_counts();
    proxy.clear_rules();
    eprintln!("faults injected: {faults:?}");
    eprintln!("attempts per run: {attempts:?}");
    assert!(
        faults.values().sum::<u64>() > 0,
        "the soak injected no fault"
    );

    // Without faults: one more round of each, then the checks.
    run_retried("bronze-ingest", &[], &env);
    run_retried("silver-transform", &[], &env);
    assert_eq!(
        run_retried("bronze-ingest", &["--verify"], &env),
        1,
        "--verify finds bronze equal to PostgreSQL"
    );
    let lake = Lake::open(&LakeConfig::from_vars(s3.env(&bucket)).unwrap()).unwrap();
    let manifests = manifest::read_all(&lake, Dataset::BronzeEvents)
        .await
        .unwrap();
    let mut ids = Vec::new();
    for f in manifest::live_files(&manifests) {
        let batches = parquet_io::read_all(&lake, &Path::from(f.path.as_str()))
            .await
            .unwrap();
        for b in batches {
            let col = b.column_by_name("event_id").unwrap();
            ids.extend((0..b.num_rows()).map(|i| array_value_to_string(col, i).unwrap()));
        }
    }
    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(n, ids.len(), "an event is in bronze twice");
    let pg_ids: Vec<String> = c
        .query("SELECT event_id::text FROM stop_events ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, pg_ids, "bronze and PostgreSQL differ");
    for dataset in [Dataset::BronzeEvents, Dataset::BronzeOutbox] {
        let ms = manifest::read_all(&lake, dataset).await.unwrap();
        let mut live: Vec<String> = manifest::live_files(&ms)
            .into_iter()
            .map(|f| f.path)
            .collect();
        live.sort();
        let mut present: Vec<String> = lake
            .store()
            .list(Some(&dataset.root()))
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .unwrap();
        present.retain(|p| p.ends_with(".parquet"));
        present.sort();
        assert_eq!(present, live, "objects outside the manifests of {dataset}");
    }
    assert!(
        s3.incomplete_uploads(&bucket).await.unwrap().is_empty(),
        "an incomplete multipart upload was left behind"
    );
    // Incremental silver, every glob-visible row, equals a full recompute
    // (which also deletes any object no manifest lists).
    let incremental = silver_rows(&lake).await;
    assert!(!incremental.is_empty());
    run_retried("silver-transform", &["--full-refresh"], &env);
    assert_eq!(
        incremental,
        silver_rows(&lake).await,
        "incremental silver differs from a full recompute"
    );
}
