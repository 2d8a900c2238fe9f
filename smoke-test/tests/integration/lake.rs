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
        claim: lake_common::commit::Claim {
            owner: "test".into(),
            ..Default::default()
        },
        committed_at: Some(at),
        files: vec![],
        supersedes: vec![],
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
        out.stdout.contains("smoke-test OK: 17 passed, 0 warnings"),
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
