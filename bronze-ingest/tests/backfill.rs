//! Backfill replaces a day's files without ever committing a row twice, and
//! `--verify` finds what differs.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod support;

use chrono::NaiveDate;
use lake_common::Dataset;
use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn backfill_replaces_a_day_and_verify_audits() {
    let h = Harness::new().await;
    let client = h.pg.client().await.unwrap();
    lake_testkit::demo::generate(&client, 10_000, 21)
        .await
        .unwrap();
    h.run_ok(&[]);
    let day = "2025-06-10";
    let before = h.data_files(Dataset::BronzeEvents).await;
    let old_day_files: Vec<_> = before.iter().filter(|p| p.contains(day)).cloned().collect();
    assert!(!old_day_files.is_empty());

    // Rows of that day keep arriving (late), plus the day is re-exported.
    generate_recent(&h.pg, 50, 22).await;
    let out = h.run_text_ok(&["--date", day]);
    let superseding = format!(
        "backfill committed as batch 2, superseding {} files",
        old_day_files.len()
    );
    assert!(
        stdout(&out).contains(&superseding),
        "{superseding} in {}",
        stdout(&out)
    );
    for internal in ["NothingNew", "DryRun", "xids ["] {
        assert!(
            !stdout(&out).contains(internal),
            "internal name {internal}: {}",
            stdout(&out)
        );
    }
    let ms = h.manifests(Dataset::BronzeEvents).await;
    assert_eq!(ms.len(), 2);
    assert_eq!(
        ms[1].backfill_days,
        vec![NaiveDate::parse_from_str(day, "%Y-%m-%d").unwrap()]
    );
    assert_eq!(ms[1].supersedes, old_day_files);
    let after = h.data_files(Dataset::BronzeEvents).await;
    assert!(
        old_day_files.iter().all(|f| !after.contains(f)),
        "superseded files deleted"
    );
    h.assert_lake_equals_postgres().await;

    // A range backfill, twice: still exactly once.
    h.run_ok(&["--from", "2025-06-01", "--to", "2025-06-03"]);
    h.run_ok(&["--from", "2025-06-01", "--to", "2025-06-03"]);
    h.assert_lake_equals_postgres().await;

    // The audit agrees...
    let out = h.run_text_ok(&["--verify"]);
    assert!(stdout(&out).contains("0 mismatched"), "{}", stdout(&out));
    // ...until PostgreSQL and the lake differ.
    client
        .batch_execute("DELETE FROM outbox WHERE event_id IN (SELECT event_id FROM stop_events WHERE occurred_at::date = '2025-06-20' LIMIT 3); DELETE FROM stop_events WHERE event_id IN (SELECT event_id FROM stop_events WHERE (occurred_at AT TIME ZONE 'UTC')::date = '2025-06-20' AND event_id NOT IN (SELECT event_id FROM outbox WHERE event_id IS NOT NULL) LIMIT 3)")
        .await
        .unwrap();
    let out = h.run_text(&["--verify"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stdout(&out).contains("MISMATCH bronze/events 2025-06-20"),
        "{}",
        stdout(&out)
    );
    // One day at a time: the other days agree, that one does not.
    let out = h.run_text_ok(&["--verify", "--date", "2025-06-21"]);
    assert!(stdout(&out).contains("0 mismatched"), "{}", stdout(&out));
    let out = h.run_text(&["--verify", "--from", "2025-06-19", "--to", "2025-06-20"]);
    assert_eq!(out.status.code(), Some(3), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("MISMATCH bronze/events 2025-06-20"),
        "{}",
        stdout(&out)
    );
}
