//! End-to-end behaviour of bronze-ingest against real PostgreSQL and S3.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod support;

use lake_common::Dataset;
use lake_common::manifest::BatchState;
use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn first_run_exports_everything_then_only_new_rows() {
    let h = Harness::new().await;
    let client = h.pg.client().await.unwrap();
    lake_testkit::demo::generate(&client, 20_000, 7)
        .await
        .unwrap();

    let out = h.run_text_ok(&[]);
    assert!(stdout(&out).contains("committed batch"), "{}", stdout(&out));
    h.assert_lake_equals_postgres().await;
    let events = h.manifests(Dataset::BronzeEvents).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].rows, 20_000);
    assert!(events[0].files.len() > 20, "one file per day over 30 days");
    let outbox_rows = h.pg_count("SELECT count(*) FROM outbox").await as u64;
    assert_eq!(
        h.manifests(Dataset::BronzeOutbox).await[0].rows,
        outbox_rows
    );

    // Nothing new: no new batch.
    h.run_ok(&[]);
    assert_eq!(h.manifests(Dataset::BronzeEvents).await.len(), 1);

    // New rows: exactly those in batch 2.
    generate_recent(&h.pg, 1_000, 8).await;
    h.run_ok(&[]);
    let events = h.manifests(Dataset::BronzeEvents).await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[1].rows, 1_000);
    assert_eq!(events[1].h_prev, Some(events[0].h));
    assert!(events.iter().all(|m| m.state == BatchState::Committed));
    h.assert_lake_equals_postgres().await;

    // A run report per run.
    assert_eq!(h.run_reports().await.len(), 3);
}

/// What a pod's log collector gets with `LOG_FORMAT=json`: only JSON lines on
/// both streams, the summary as a nested object; and a closed stdout (`| head`)
/// is not a panic.
#[tokio::test(flavor = "multi_thread")]
async fn json_mode_is_pure_json_and_a_closed_stdout_is_not_a_panic() {
    let h = Harness::new().await;
    let client = h.pg.client().await.unwrap();
    lake_testkit::demo::generate(&client, 1_000, 2)
        .await
        .unwrap();
    let out = h.run_ok(&[]); // the harness runs in JSON mode
    for line in stdout(&out).lines().chain(stderr(&out).lines()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(v["level"].is_string(), "{line}");
    }
    let summary: serde_json::Value = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["message"] == "Run summary")
        .expect("a summary line");
    assert_eq!(summary["report"]["datasets"][0]["outcome"], "committed");
    assert!(summary["report"]["datasets"][0]["rows_per_day"].is_object());
    // The report's header, shared with silver's: lake, source, commit.
    let report = &summary["report"];
    let bucket = &h.bucket;
    assert!(
        report["lake"]
            .as_str()
            .unwrap()
            .starts_with(&format!("s3://{bucket} via ")),
        "{report}"
    );
    assert!(
        report["source"]
            .as_str()
            .unwrap()
            .starts_with("postgresql://lake_reader@"),
        "{report}"
    );
    assert!(!report["source"].as_str().unwrap().contains("reader-pw"));
    assert_eq!(report["commit"].as_str().unwrap().len(), 12, "{report}");
    assert!(report["error"].is_null());
    let written = lake_testkit::output::message(&stderr(&out), "Run report written")
        .expect("the report's line");
    assert!(
        written["report"]
            .as_str()
            .unwrap()
            .starts_with(&format!("s3://{bucket}/_runs/bronze-ingest/")),
        "the report is named with the lake root: {written}"
    );

    // `bronze-ingest --dry-run | head -0`: the reader is gone before the summary.
    let out = lake_testkit::output::with_stdout_closed(&mut h.command_with(
        &[h.env(), vec![("LOG_FORMAT".into(), "text".into())]].concat(),
        &["--dry-run"],
    ))
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
}
