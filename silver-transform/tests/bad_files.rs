//! Bad files in bronze (#19 item 7): a corrupt Parquet file, one replaced by
//! another of a different size, a foreign file, a manifest that does not parse.
//! Each is a clear error naming the object (or, for the foreign file, nothing at
//! all), silver publishes nothing, and nothing of bronze is overwritten or
//! deleted.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod support;

use bytes::Bytes;
use object_store::ObjectStoreExt;
use object_store::path::Path;
use support::*;

fn events(from: u64, day: &str) -> Vec<Ev> {
    (from..from + 20)
        .map(|i| {
            Ev::new(
                i,
                &format!("{day}T06:00:00Z"),
                Some(&format!("tok-{i}")),
                "STOP_TRIGGERED",
            )
            .client(1 + (i % 3) as i64)
            .qty("1")
        })
        .collect()
}

/// The run fails (exit 1) with one line naming `object` and saying `what`;
/// silver is as before and every bronze object is unchanged.
async fn assert_refused(t: &TestLake, object: &str, what: &str) {
    let bronze = objects(&t.lake, "bronze").await;
    let silver = published(&t.lake).await;
    let out = t.run_bin(&[], &[]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let error = stderr
        .lines()
        .rfind(|l| l.contains("\"level\":\"ERROR\""))
        .expect("an error line");
    assert!(error.contains(object), "names {object}: {error}");
    assert!(error.contains(what), "says {what:?}: {error}");
    assert_eq!(published(&t.lake).await, silver, "nothing published");
    assert_eq!(objects(&t.lake, "bronze").await, bronze, "bronze untouched");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_or_replaced_bronze_file_is_named_and_nothing_is_published() {
    let t = TestLake::new().await;
    commit_batch(&t.lake, 1, &events(0, "2025-06-01")).await;
    run(&t.lake, &incremental()).await;
    let m = commit_batch(&t.lake, 2, &events(100, "2025-06-02")).await;
    let file = m.files[0].path.clone();
    let original = t.lake.get_bytes(&Path::from(file.as_str())).await.unwrap();

    // Garbage of the same size.
    let garbage = Bytes::from(vec![0x5a; original.len()]);
    t.lake
        .put(&Path::from(file.as_str()), garbage)
        .await
        .unwrap();
    assert_refused(&t, &file, "is not the file bronze committed").await;

    // A valid Parquet file of another size (another batch's, copied over it).
    let other = commit_batch(&t.lake, 3, &events(200, "2025-06-03")[..5]).await;
    let foreign = t
        .lake
        .get_bytes(&Path::from(other.files[0].path.as_str()))
        .await
        .unwrap();
    assert_ne!(foreign.len(), original.len());
    t.lake
        .put(&Path::from(file.as_str()), foreign)
        .await
        .unwrap();
    assert_refused(&t, &file, "is not the file bronze committed").await;

    // Deleted outside bronze (the log still lists it): damage, to restore.
    t.lake
        .store()
        .delete(&Path::from(file.as_str()))
        .await
        .unwrap();
    assert_refused(&t, &file, "is not the file bronze committed: it is missing").await;

    // Restored: the next run goes on.
    t.lake
        .put(&Path::from(file.as_str()), original)
        .await
        .unwrap();
    t.run_bin_ok(&[], &[]);
    assert_eq!(silver(&t.lake).await.len(), 45);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_foreign_file_in_bronze_is_ignored_and_kept() {
    let t = TestLake::new().await;
    let m = commit_batch(&t.lake, 1, &events(0, "2025-06-01")).await;
    let day = m.files[0].path.rsplit_once('/').unwrap().0.to_owned();
    let foreign = Path::from(format!("{day}/exported-by-hand.parquet"));
    let bytes = t
        .lake
        .get_bytes(&Path::from(m.files[0].path.as_str()))
        .await
        .unwrap();
    t.lake.put(&foreign, bytes.clone()).await.unwrap();
    let notes = Path::from(format!("{day}/README.txt"));
    t.lake
        .put(&notes, Bytes::from_static(b"not parquet"))
        .await
        .unwrap();

    t.run_bin_ok(&[], &[]);
    assert_eq!(
        silver(&t.lake).await.len(),
        20,
        "the foreign copy is not read"
    );
    assert_eq!(t.lake.get_bytes(&foreign).await.unwrap(), bytes, "kept");
    assert!(t.lake.get_bytes(&notes).await.is_ok(), "kept");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bronze_manifest_that_does_not_parse_is_named() {
    let t = TestLake::new().await;
    commit_batch(&t.lake, 1, &events(0, "2025-06-01")).await;
    run(&t.lake, &incremental()).await;
    commit_batch(&t.lake, 2, &events(100, "2025-06-02")).await;
    let manifest = "bronze/events/_manifests/0000000002.json";
    t.lake
        .put(
            &Path::from(manifest),
            Bytes::from_static(b"{\"batch\": 2, \"state\": "),
        )
        .await
        .unwrap();
    assert_refused(&t, manifest, "is not a valid batch manifest").await;
    assert_refused(&t, manifest, "restore it").await;
}

/// A bronze backfill that commits and deletes the files it superseded while a
/// silver run is reading them (#16 item 5): not damage but a race. The run says
/// bronze changed under it, publishes nothing and releases its lease; the
/// retry reads the new files and ends where a clean run does.
#[tokio::test(flavor = "multi_thread")]
async fn a_backfill_removing_a_file_silver_is_reading_is_retried_not_reported_as_damage() {
    use lake_testkit::{Fault, FaultProxy, Rule, S3Op};
    let t = TestLake::new().await;
    commit_batch(&t.lake, 1, &events(0, "2025-06-01")).await;
    run(&t.lake, &incremental()).await;
    let m = commit_batch(&t.lake, 2, &events(100, "2025-06-02")).await;
    let file = m.files[0].path.clone();
    let proxy = FaultProxy::start(&t.s3, 31).unwrap();
    proxy.add_rule(
        Rule::new(Fault::Delay(std::time::Duration::from_secs(2)))
            .op(S3Op::GetObject)
            .key_contains(&file)
            .nth(1),
    );
    let endpoint = proxy.endpoint();
    let silver_before = published(&t.lake).await;
    let child = t
        .command(&[], &[("AWS_ENDPOINT", endpoint.as_str())])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !proxy.log().iter().any(|r| r.path.contains(&file)) {
        assert!(std::time::Instant::now() < deadline, "{}", proxy.log_text());
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // The backfill re-exports the day (with one event more) while the GET waits.
    let day = chrono::NaiveDate::from_ymd_opt(2025, 6, 2).unwrap();
    let mut redone = events(100, "2025-06-02");
    redone.extend(events(500, "2025-06-02").into_iter().take(1));
    commit_backfill(&t.lake, 3, &[day], &redone).await;
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let error = stderr
        .lines()
        .rfind(|l| l.contains("\"level\":\"ERROR\""))
        .expect("an error line");
    assert!(error.contains(&file), "names the file: {error}");
    assert!(
        error.contains("superseded by bronze batch 3") && !error.contains("restore"),
        "a race, not damage: {error}"
    );
    assert_eq!(published(&t.lake).await, silver_before, "nothing published");

    // The retry (at once: the lease was released) reads the backfill's files.
    t.run_bin_ok(&[], &[]);
    let other = t.other_bucket().await;
    commit_batch(&other, 1, &events(0, "2025-06-01")).await;
    commit_batch(&other, 2, &redone).await;
    run(&other, &full_refresh()).await;
    assert_eq!(silver(&t.lake).await, silver(&other).await);
}
