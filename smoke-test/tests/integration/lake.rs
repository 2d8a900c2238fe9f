//! The lake's contents: manifests that parse, and freshness against the SLAs.

use chrono::{DateTime, Duration, Utc};
use lake_common::manifest::{BatchManifest, BatchState, MANIFEST_FORMAT};
use lake_common::{Dataset, Lake, LakeConfig, paths};

use crate::util::{Green, smoke};

fn committed(dataset: Dataset, batch: u64, at: DateTime<Utc>) -> BatchManifest {
    BatchManifest {
        format: MANIFEST_FORMAT,
        dataset: dataset.dir().to_owned(),
        batch,
        state: BatchState::Committed,
        h_prev: None,
        h: 1000,
        xmax: 1000,
        snapshot_time: at,
        scan_from: None,
        system_identifier: "7".to_owned(),
        timeline: None,
        wal_lsn: None,
        relfilenode: None,
        drop_captured: false,
        drop_captured_below: None,
        backfill_days: vec![],
        added_columns: vec![],
        claim: lake_common::commit::Claim {
            owner: "test".into(),
            ..Default::default()
        },
        committed_at: Some(at),
        files: vec![],
        supersedes: vec![],
        compacted_days: vec![],
        pruned_days: vec![],
        retained_before: None,
        rows: 0,
    }
}

async fn lake_for(green: &Green, bucket: &str) -> Lake {
    Lake::open(&LakeConfig::from_vars(green.s3.env(bucket)).unwrap()).unwrap()
}

/// Writes committed batches of both bronze datasets as of `bronze` and a silver
/// run report started at `silver`.
async fn populate(lake: &Lake, bronze: DateTime<Utc>, silver: DateTime<Utc>) {
    for dataset in [Dataset::BronzeEvents, Dataset::BronzeOutbox] {
        for (n, at) in [(1, bronze - Duration::hours(1)), (2, bronze)] {
            let m = committed(dataset, n, at);
            lake.put(&dataset.manifest(n), m.to_bytes()).await.unwrap();
        }
    }
    let report = paths::run_report("silver-transform", silver, "0123456789ab");
    lake.put(&report, "{}".into()).await.unwrap();
}

#[tokio::test]
async fn fresh_lake_passes_stale_lake_warns_corrupt_manifest_fails() {
    let green = Green::start().await;
    let now = Utc::now();

    let lake = lake_for(&green, &green.bucket).await;
    populate(&lake, now - Duration::minutes(40), now - Duration::hours(3)).await;
    let out = smoke(&green.env(), &[]).await;
    out.assert_code(0);
    out.assert_others_pass(&[]);
    out.assert_line(
        "lake.manifests",
        "PASS",
        &[
            "bronze/events: 2 batches, none pending",
            "bronze/outbox: 2 batches",
        ],
    );
    out.assert_line(
        "lake.bronze_freshness",
        "PASS",
        &[
            "within the 2h 00m SLA",
            "bronze/events batch 2",
            "(40m ago)",
        ],
    );
    out.assert_line(
        "lake.silver_freshness",
        "PASS",
        &["last silver-transform run started", "(3h 00m ago)"],
    );
    assert!(
        out.stdout.contains("smoke-test OK: 18 passed, 0 warnings"),
        "{}",
        out.stdout
    );

    let stale_bucket = green.s3.new_bucket().await.unwrap();
    let stale = lake_for(&green, &stale_bucket).await;
    populate(&stale, now - Duration::hours(5), now - Duration::hours(30)).await;
    let env = crate::util::with(&green.env(), "S3_BUCKET", Some(&stale_bucket));
    let out = smoke(&env, &[]).await;
    out.assert_code(0);
    out.assert_line(
        "lake.bronze_freshness",
        "WARN",
        &[
            "older than the 2h 00m SLA",
            "(5h 00m ago)",
            "fix: look at the bronze-ingest CronJob",
        ],
    );
    out.assert_line(
        "lake.silver_freshness",
        "WARN",
        &["older than the 1d 2h SLA", "(1d 6h ago)"],
    );

    lake.put(
        &Dataset::BronzeOutbox.manifest(3),
        "{\"format\": 1, \"batch\":".into(),
    )
    .await
    .unwrap();
    let out = smoke(&green.env(), &[]).await;
    out.assert_code(1);
    out.assert_line(
        "lake.manifests",
        "FAIL",
        &[
            "bronze/outbox/_manifests/0000000003.json is not a valid batch manifest",
            "fix: the jobs refuse to run over it",
        ],
    );
    out.assert_line(
        "lake.bronze_freshness",
        "SKIP",
        &["not run: lake.manifests failed"],
    );
    out.assert_line("lake.silver_freshness", "PASS", &[]);
}

/// #18: `lake status` shows each bronze dataset's newest batch and how fresh it
/// is, a pending batch with its lease, and the newest run of each job with its
/// outcome; it exits 1 while something is stale and 0 once all is fresh.
#[tokio::test]
async fn lake_status_shows_freshness_and_exits_1_when_stale() {
    let s3 = lake_testkit::TestS3::start().await.unwrap();
    let bucket = s3.new_bucket().await.unwrap();
    let lake = Lake::open(&LakeConfig::from_vars(s3.env(&bucket)).unwrap()).unwrap();
    let now = Utc::now();
    let events = Dataset::BronzeEvents;
    lake.put(
        &events.manifest(1),
        committed(events, 1, now - Duration::minutes(40)).to_bytes(),
    )
    .await
    .unwrap();
    let mut pending = committed(events, 2, now);
    pending.state = BatchState::Pending;
    pending.committed_at = None;
    pending.claim.owner = "run-abc".into();
    pending.claim.lease_expires_at = Some(now + Duration::seconds(30));
    lake.put(&events.manifest(2), pending.to_bytes())
        .await
        .unwrap();
    let outbox = Dataset::BronzeOutbox;
    lake.put(
        &outbox.manifest(1),
        committed(outbox, 1, now - Duration::hours(3)).to_bytes(),
    )
    .await
    .unwrap();
    let report =
        |job: &'static str, started: DateTime<Utc>, id: &'static str, body: serde_json::Value| {
            let lake = lake.clone();
            async move {
                let mut body = body;
                body["started_at"] = serde_json::json!(started.to_rfc3339());
                let path = paths::run_report(job, started, id);
                lake.put(&path, serde_json::to_vec(&body).unwrap().into())
                    .await
                    .unwrap();
            }
        };
    report(
        "bronze-ingest",
        now - Duration::minutes(40),
        "00000000000a",
        serde_json::json!({
            "outcome": "failed", "error": "outbox: permission denied",
            "snapshot_time": (now - Duration::minutes(40)).to_rfc3339(),
            "datasets": [{"dataset": "bronze/outbox", "outcome": "failed"}],
        }),
    )
    .await;
    // Silver, two shards: shard 0 succeeded 2 h ago; shard 1 failed an hour
    // ago and last succeeded 30 h ago.
    let shard = |i: u64, outcome: &str| serde_json::json!({"outcome": outcome, "shard": {"index": i, "count": 2}});
    report(
        "silver-transform",
        now - Duration::hours(30),
        "00000000000b",
        shard(1, "success"),
    )
    .await;
    report(
        "silver-transform",
        now - Duration::hours(2),
        "00000000000c",
        shard(0, "success"),
    )
    .await;
    report(
        "silver-transform",
        now - Duration::hours(1),
        "00000000000d",
        shard(1, "failed"),
    )
    .await;

    let mut env = s3.env(&bucket);
    env.push(("LOG_FORMAT".into(), "json".into()));
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_lake"))
            .env_clear()
            .envs(env.iter().cloned())
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["status", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stale outbox and silver shard 1: {out:?}"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["bronze"][0]["dataset"], "bronze/events");
    assert_eq!(v["bronze"][0]["committed_batch"], 1);
    assert_eq!(v["bronze"][0]["pending"]["batch"], 2);
    assert_eq!(v["bronze"][0]["pending"]["owner"], "run-abc");
    assert_eq!(v["bronze"][0]["stale"], false);
    assert_eq!(v["bronze"][1]["stale"], true);
    let stale = v["stale"].to_string();
    assert_eq!(v["stale"].as_array().unwrap().len(), 2, "{stale}");
    assert!(
        stale.contains("bronze/outbox") && stale.contains("shard 1"),
        "{stale}"
    );
    assert_eq!(v["jobs"][0]["outcome"], "failed");
    assert_eq!(v["jobs"][0]["error"], "outbox: permission denied");
    assert_eq!(v["jobs"][1]["outcome"], "failed", "the newest silver run");
    assert_eq!(v["jobs"][1]["stale"], true);

    // A quiet source: the next bronze run finds nothing new for the outbox and
    // writes no batch, yet the outbox is complete up to its snapshot. Silver's
    // shard 1 succeeds again.
    report(
        "bronze-ingest",
        now - Duration::minutes(5),
        "00000000000e",
        serde_json::json!({
            "outcome": "success",
            "snapshot_time": (now - Duration::minutes(5)).to_rfc3339(),
            "datasets": [{"dataset": "bronze/outbox", "outcome": "nothing_new"}],
        }),
    )
    .await;
    report(
        "silver-transform",
        now - Duration::minutes(30),
        "00000000000f",
        shard(1, "success"),
    )
    .await;
    // The newest events run saw the horizon held by an open transaction.
    let held_since = now - Duration::minutes(40);
    report(
        "bronze-ingest",
        now - Duration::minutes(2),
        "00000000000g",
        serde_json::json!({
            "outcome": "success",
            "snapshot_time": (now - Duration::minutes(2)).to_rfc3339(),
            "datasets": [{"dataset": "bronze/events", "outcome": "nothing_new",
                          "horizon_held": {"since": held_since.to_rfc3339(), "seconds": 2280}}],
        }),
    )
    .await;
    // Silver's shard 0 of 1 has a committed version with one partition.
    silver_committed(&lake, now - Duration::minutes(30)).await;
    let out = run(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("status: fresh"), "{text}");
    let silver_line = text
        .lines()
        .find(|l| l.contains("silver shard-0-of-1"))
        .unwrap();
    for part in [
        "version 3 committed",
        "bronze batches up to 7",
        "1 partitions, 42 executions in 1 files",
        "2 quarantined",
    ] {
        assert!(silver_line.contains(part), "{part} in {silver_line}");
    }
    let events_line = text.lines().find(|l| l.contains("bronze/events")).unwrap();
    assert!(
        events_line.contains("horizon HELD since") && events_line.contains("(40m"),
        "{events_line}"
    );
    let outbox_line = text.lines().find(|l| l.contains("bronze/outbox")).unwrap();
    assert!(!outbox_line.contains("HELD"), "{outbox_line}");
    let v: serde_json::Value = serde_json::from_slice(&run(&["status", "--json"]).stdout).unwrap();
    assert_eq!(
        v["bronze"][0]["horizon_held_since"]
            .as_str()
            .map(|t| t[..19].to_owned()),
        Some(held_since.to_rfc3339()[..19].to_owned())
    );
    assert!(v["bronze"][1]["horizon_held_since"].is_null());
    assert_eq!(v["silver"][0]["shard"], "shard-0-of-1");
    assert_eq!(v["silver"][0]["committed_version"], 3);
    assert_eq!(v["silver"][0]["rows"], 42);
    assert_eq!(v["silver"][0]["bytes"], 4096);
    assert!(
        text.contains("batch 2 pending (run-abc, lease until"),
        "{text}"
    );
    assert!(text.contains("silver-transform last run"), "{text}");
}

/// A committed silver version 3 of shard 0 of 1: one partition of 42
/// executions (4 KiB) and 2 quarantine rows, bronze batches 1..=7 consumed.
async fn silver_committed(lake: &Lake, at: DateTime<Utc>) {
    use silver_transform::key::Shard;
    use silver_transform::manifest::{self, PartitionRecord, SilverManifest, State};
    use silver_transform::publish::FileRecord;
    let file = |path: &str, rows: u64, bytes: u64| FileRecord {
        path: path.to_owned(),
        rows,
        bytes,
        sha256: String::new(),
    };
    let mut m = SilverManifest::pending(
        Shard::ALL,
        3,
        "run-s",
        std::time::Duration::from_secs(30),
        "incremental",
    );
    m.state = State::Committed;
    m.committed_at = Some(at);
    m.consumed_batches = vec![[1, 7]];
    m.partitions = vec![PartitionRecord {
        client_id: 1,
        date: at.date_naive(),
        version: 3,
        silver: Some(file("silver/a.parquet", 42, 4096)),
        quarantine: Some(file("silver/_quarantine/a.parquet", 2, 512)),
        batches: vec![[1, 7]],
    }];
    // Kept by month, as silver-transform writes it.
    let table = silver_transform::partitions::PartitionTable::of(&m).unwrap();
    m.partitions.clear();
    (m.partition_months, _) = table.write(lake, Shard::ALL, 3).await.unwrap();
    lake.put(
        &manifest::manifest_path(Shard::ALL, 3),
        serde_json::to_vec(&m).unwrap().into(),
    )
    .await
    .unwrap();
}
