//! Silver never panics on what bronze holds (#15 item 8): an event present twice
//! (a lake written before bronze dropped rows a table rewrite re-inserted) is
//! folded once and counted in the run report.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod support;

use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn an_event_present_twice_is_folded_once_and_counted() {
    let t = TestLake::new().await;
    let events = vec![
        Ev::new(1, "2025-06-01T08:00:00Z", Some("tok-a"), "STOP_TRIGGERED").qty("1"),
        Ev::new(
            2,
            "2025-06-01T08:01:00Z",
            Some("tok-a"),
            "EXECUTION_SUBMITTED",
        )
        .qty("1"),
        Ev::new(3, "2025-06-01T08:02:00Z", Some("tok-b"), "STOP_TRIGGERED").qty("2"),
    ];
    commit_batch(&t.lake, 1, &events).await;
    // Batch 2 holds events 1 and 2 again, and one new event.
    let mut again = events[..2].to_vec();
    again.push(
        Ev::new(4, "2025-06-01T08:03:00Z", Some("tok-b"), "EXECUTED")
            .qty("2")
            .fill("10"),
    );
    commit_batch(&t.lake, 2, &again).await;
    t.run_bin_ok(&[], &[]);
    let report = latest_report(&t.lake).await;
    assert_eq!(report["work"]["duplicate_events"], 2, "{report}");
    let rows = silver(&t.lake).await;
    assert_eq!(rows["tok-a"].event_count, 2, "each event folded once");
    assert_eq!(rows["tok-b"].event_count, 2);

    // The same from one full recompute.
    let other = t.other_bucket().await;
    commit_batch(&other, 1, &events).await;
    commit_batch(&other, 2, &again).await;
    run(&other, &full_refresh()).await;
    assert_eq!(published(&t.lake).await, published(&other).await);
}

/// One `event_id` under two different `occurred_at`s is not a duplicate but two
/// versions of one event: exit 1 with a line that names it, nothing published.
#[tokio::test(flavor = "multi_thread")]
async fn one_event_id_with_two_versions_is_a_clear_error() {
    let t = TestLake::new().await;
    commit_batch(
        &t.lake,
        1,
        &[Ev::new(
            7,
            "2025-06-01T08:00:00Z",
            Some("tok-a"),
            "STOP_TRIGGERED",
        )],
    )
    .await;
    commit_batch(
        &t.lake,
        2,
        &[Ev::new(
            7,
            "2025-06-01T09:00:00Z",
            Some("tok-a"),
            "STOP_TRIGGERED",
        )],
    )
    .await;
    let out = t.run_bin(&[], &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&uuid(7)), "names the event: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(objects(&t.lake, "silver/stop_executions").await.is_empty());
}

/// The same when the two versions fall into different fold windows of a large
/// day (here: windows of one row): the windows check each other's ids.
#[tokio::test(flavor = "multi_thread")]
async fn two_versions_in_two_fold_windows_are_the_same_clear_error() {
    let t = TestLake::new().await;
    let version = |batch: u64, at: &'static str| {
        let lake = t.lake.clone();
        async move {
            commit_batch(
                &lake,
                batch,
                &[Ev::new(7, at, Some("tok-a"), "STOP_TRIGGERED")],
            )
            .await
        }
    };
    version(1, "2025-06-01T08:00:00Z").await;
    version(2, "2025-06-01T20:00:00Z").await;
    let opts = silver_transform::Options {
        window_rows: 1,
        ..full_refresh()
    };
    let err = silver_transform::run(&t.lake, &opts)
        .await
        .expect_err("two versions of one event");
    assert!(format!("{err:#}").contains(&uuid(7)), "{err:#}");
    assert!(objects(&t.lake, "silver/stop_executions").await.is_empty());
}

/// An empty `execution_token` (Django's default for a token never set) is no
/// token: each such event belongs to its operation, as a NULL one does, instead
/// of all of them, across all history, merging into one execution `''`.
#[tokio::test(flavor = "multi_thread")]
async fn an_empty_token_counts_as_none() {
    let t = TestLake::new().await;
    let events = vec![
        Ev::new(1, "2025-06-01T08:00:00Z", Some(""), "STOP_TRIGGERED").op(10),
        Ev::new(2, "2025-06-01T08:01:00Z", None, "EXECUTED")
            .op(10)
            .fill("10"),
        Ev::new(3, "2025-06-20T09:00:00Z", Some(""), "STOP_TRIGGERED").op(11),
    ];
    commit_batch(&t.lake, 1, &events).await;
    run(&t.lake, &incremental()).await;
    let rows = silver(&t.lake).await;
    assert_eq!(
        rows.keys().collect::<Vec<_>>(),
        ["operation:10", "operation:11"],
        "{rows:?}"
    );
    assert_eq!(
        rows["operation:10"].event_count, 2,
        "'' and NULL: one operation"
    );
    assert_eq!(rows["operation:10"].status, "EXECUTED");
    assert_eq!(rows["operation:11"].event_count, 1);
}

/// A shard whose key index holds the key `''` was built by a release that
/// merged empty tokens: an incremental run refuses (exit 2, nothing written)
/// and says to rebuild; the full refresh it asks for fixes the lake.
#[tokio::test(flavor = "multi_thread")]
async fn a_lake_built_with_empty_tokens_as_keys_is_rebuilt_once() {
    use silver_transform::key::{KeyHash, Shard};
    use silver_transform::manifest;

    let t = TestLake::new().await;
    let events = vec![Ev::new(
        1,
        "2025-06-01T08:00:00Z",
        Some("tok-a"),
        "STOP_TRIGGERED",
    )];
    commit_batch(&t.lake, 1, &events).await;
    run(&t.lake, &incremental()).await;
    // What the old release left: '' in the committed version's key index, a
    // format-1 manifest with the index in one file.
    let found = manifest::find(&t.lake, Shard::ALL).await.unwrap();
    let mut committed = found.committed.unwrap();
    let segment = committed.index_segments.pop().unwrap();
    assert!(
        committed.index_segments.is_empty(),
        "one month, one segment"
    );
    committed.format = 1;
    let mut index = manifest::read_index(&t.lake, &segment.file).await.unwrap();
    let (_, info) = index.iter().next().map(|(k, i)| (*k, *i)).unwrap();
    index.insert(KeyHash::of(""), info);
    let index = index.finish(vec![]);
    let path = manifest::index_path(Shard::ALL, committed.version);
    let mut w = lake_common::parquet_io::FileWriter::create(
        &t.lake,
        path.clone(),
        silver_transform::index::KeyIndex::schema(),
    )
    .unwrap();
    w.write(&index.to_batch().unwrap()).await.unwrap();
    let f = w.finish().await.unwrap();
    committed.index = Some(silver_transform::publish::FileRecord {
        path: f.path.to_string(),
        rows: f.rows,
        bytes: f.bytes,
        sha256: f.sha256,
    });
    committed.index_keys += 1;
    t.lake
        .put(
            &manifest::manifest_path(Shard::ALL, committed.version),
            serde_json::to_vec(&committed).unwrap().into(),
        )
        .await
        .unwrap();

    commit_batch(
        &t.lake,
        2,
        &[Ev::new(2, "2025-06-02T08:00:00Z", Some(""), "STOP_TRIGGERED").op(7)],
    )
    .await;
    let before = published(&t.lake).await;
    let out = t.run_bin(&[], &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--full-refresh once"), "{stderr}");
    assert_eq!(published(&t.lake).await, before, "nothing written");

    t.run_bin_ok(&["--full-refresh"], &[]);
    let rows = silver(&t.lake).await;
    assert!(
        rows.contains_key("operation:7") && rows.contains_key("tok-a"),
        "{rows:?}"
    );
    let out = t.run_bin(&[], &[]);
    assert_eq!(out.status.code(), Some(0), "incremental runs go on");
}
