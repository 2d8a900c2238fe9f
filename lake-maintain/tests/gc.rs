//! Garbage collection against a real lake: bronze and silver runs (in process)
//! against PostgreSQL and moto, orphans planted next to their objects.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use lake_common::{Lake, LakeConfig};
use lake_testkit::TestS3;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use support::*;

const GRACE: Duration = Duration::from_secs(6);

const ORPHANS: [&str; 5] = [
    "bronze/events/date=2026-12-01/part-0000000999-0000-crashed.parquet",
    "bronze/outbox/_state/0000000999.identity",
    "silver/stop_executions/client_id=1/date=2026-12-01/part-0000000999-crashed.parquet",
    "silver/_quarantine/stop_executions/date=2026-12-01/client-1-0000000999-crashed.parquet",
    "silver/stop_executions/_manifests/segments/shard-0-of-1/2026-12/0000000999.index",
];

/// #20: unreferenced objects older than the grace go, in every swept prefix;
/// referenced ones, the logs and younger orphans stay; a dry run deletes
/// nothing; the next run finds nothing more.
#[tokio::test(flavor = "multi_thread")]
async fn gc_deletes_only_unreferenced_objects_older_than_the_grace() {
    let h = Harness::new().await;
    h.batch(2000, 1).await;
    h.batch(500, 2).await;
    let lake = h.lake();
    let healthy = objects(&lake).await;
    plant(&lake, &ORPHANS).await;
    // The young object must stay younger than the grace through both runs,
    // whatever the machine's load: a grace of seconds, not one.
    tokio::time::sleep(GRACE + Duration::from_millis(500)).await;
    let young = "bronze/events/date=2026-12-01/part-0000001000-0000-running.parquet";
    plant(&lake, &[young]).await;
    let planted = objects(&lake).await;

    let dry = lake_maintain::run(&lake, &options(GRACE, true))
        .await
        .unwrap();
    assert_eq!(dry.garbage().0, ORPHANS.len() as u64, "{:#?}", dry.prefixes);
    assert_eq!(objects(&lake).await, planted, "a dry run deletes nothing");
    assert!(
        dry.summary().contains("would delete 5"),
        "{}",
        dry.summary()
    );

    let r = lake_maintain::run(&lake, &options(GRACE, false))
        .await
        .unwrap();
    assert_eq!(r.garbage().0, ORPHANS.len() as u64, "{:#?}", r.prefixes);
    assert_eq!(r.prefixes.iter().map(|p| p.young).sum::<u64>(), 1);
    assert!(
        r.prefixes.iter().all(|p| p.garbage <= 2),
        "{:#?}",
        r.prefixes
    );
    assert!(r.prefixes[0].log > 0 && r.prefixes[0].referenced > 0);
    let mut expected = healthy.clone();
    expected.insert(young.to_owned());
    // The run's own report is the only other new object.
    let after: BTreeSet<String> = objects(&lake)
        .await
        .into_iter()
        .filter(|p| !p.starts_with("_runs/lake-maintain/"))
        .collect();
    assert_eq!(after, expected);
    assert_references_exist(&lake).await;

    let again = lake_maintain::run(&lake, &options(Duration::from_secs(3600), false))
        .await
        .unwrap();
    assert_eq!(again.garbage().0, 0);
    // silver and bronze go on as before.
    h.batch(300, 3).await;
    assert_references_exist(&lake).await;
}

/// #20: collection racing bronze batches and silver runs deletes nothing
/// they reference: the lake is whole afterwards and incremental silver equals
/// a full recompute, while the old orphans are gone.
#[tokio::test(flavor = "multi_thread")]
async fn gc_racing_bronze_and_silver_deletes_nothing_referenced() {
    let h = Harness::new().await;
    h.batch(1500, 1).await;
    let lake = h.lake();
    plant(&lake, &ORPHANS).await;
    // Everything so far (the lake's own objects included) is older than the grace.
    let grace = Duration::from_secs(6);
    tokio::time::sleep(grace + Duration::from_secs(1)).await;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let collector = {
        let lake = lake.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut garbage = 0;
            let mut runs = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || runs == 0 {
                let r = lake_maintain::run(&lake, &options(grace, false))
                    .await
                    .unwrap();
                garbage += r.garbage().0;
                runs += 1;
            }
            (runs, garbage)
        })
    };
    for seed in 2..5 {
        h.batch(400, seed).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (runs, garbage) = collector.await.unwrap();
    assert!(runs >= 2, "collection ran {runs} times");
    assert_eq!(
        garbage,
        ORPHANS.len() as u64,
        "only the orphans were garbage"
    );
    let all = objects(&lake).await;
    assert!(ORPHANS.iter().all(|o| !all.contains(*o)));
    assert_references_exist(&lake).await;

    h.assert_full_refresh_changes_nothing().await;
}

/// A dataset holding objects but no manifest (lost manifests, a wrong prefix)
/// is refused, and nothing is deleted.
#[tokio::test(flavor = "multi_thread")]
async fn a_dataset_without_a_log_is_refused() {
    let s3 = TestS3::start().await.unwrap();
    let bucket = s3.new_bucket().await.unwrap();
    let lake = Lake::open(&LakeConfig::from_vars(s3.env(&bucket)).unwrap()).unwrap();
    plant(&lake, &ORPHANS[..1]).await;
    let err = lake_maintain::run(&lake, &options(Duration::ZERO, false))
        .await
        .unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains("bronze/events holds 1 objects but no manifest"),
        "{text}"
    );
    assert!(objects(&lake).await.contains(ORPHANS[0]));
    // The failed run's report says why.
    assert!(
        objects(&lake)
            .await
            .iter()
            .any(|p| p.starts_with("_runs/lake-maintain/"))
    );
}

/// Leaves a multipart upload of one 5 MiB part open at `path`.
async fn open_upload(lake: &Lake, path: &str) {
    let mut upload = lake.store().put_multipart(&Path::from(path)).await.unwrap();
    upload
        .put_part(PutPayload::from(vec![0u8; 5 * 1024 * 1024]))
        .await
        .unwrap();
    drop(upload);
}

/// Multipart uploads started longer ago than the upload grace are aborted, but
/// none under a dataset a run is writing; a dry run only counts them. (moto
/// reports every upload as started in 2010, so each one it lists is stale: the
/// live lease is what must protect a running writer's upload.)
#[tokio::test(flavor = "multi_thread")]
async fn stale_multipart_uploads_are_aborted_but_not_those_of_a_running_job() {
    use silver_transform::key::Shard;
    use silver_transform::manifest::{Lease, SilverManifest};
    let h = Harness::new().await;
    h.batch(200, 1).await;
    let lake = h.lake();
    open_upload(
        &lake,
        "bronze/events/date=2026-12-01/part-0000000998-0000.parquet",
    )
    .await;
    open_upload(
        &lake,
        "silver/stop_executions/client_id=1/date=2026-12-01/part-0000000099-r.parquet",
    )
    .await;
    assert_eq!(h.s3.incomplete_uploads(&h.bucket).await.unwrap().len(), 2);
    // Another silver run holds version 99 of the shard.
    let lease_secs = Duration::from_secs(30);
    let running = Lease::pin(
        &lake,
        SilverManifest::pending(Shard::ALL, 99, "other-run", lease_secs, "incremental"),
        lease_secs,
    )
    .await
    .unwrap();

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let dry = lake_maintain::run(&lake, &options(Duration::from_secs(1), true))
        .await
        .unwrap();
    assert_eq!(
        (dry.uploads.open, dry.uploads.stale, dry.uploads.in_use),
        (2, 1, 1)
    );
    assert_eq!(h.s3.incomplete_uploads(&h.bucket).await.unwrap().len(), 2);
    let r = lake_maintain::run(&lake, &options(Duration::from_secs(1), false))
        .await
        .unwrap();
    assert_eq!((r.uploads.stale, r.uploads.in_use), (1, 1));
    let left = h.s3.incomplete_uploads(&h.bucket).await.unwrap();
    assert_eq!(left.len(), 1);
    assert!(left[0].contains("silver/"), "{left:?}");

    running.release().await;
    let r = lake_maintain::run(&lake, &options(Duration::from_secs(1), false))
        .await
        .unwrap();
    assert_eq!((r.uploads.stale, r.uploads.in_use), (1, 0));
    assert!(h.s3.incomplete_uploads(&h.bucket).await.unwrap().is_empty());
}

/// #20: run reports older than their retention are deleted, newer ones stay;
/// a dry run only counts them.
#[tokio::test(flavor = "multi_thread")]
async fn run_reports_older_than_their_retention_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(&LakeConfig::local(dir.path().to_path_buf())).unwrap();
    let old = "_runs/bronze-ingest/20250101T000000.000000Z-old.json";
    let new = "_runs/bronze-ingest/20261201T000000.000000Z-new.json";
    plant(&lake, &[old, new]).await;
    let long_ago = std::time::SystemTime::now() - Duration::from_secs(400 * 24 * 3600);
    std::fs::File::options()
        .write(true)
        .open(dir.path().join(old))
        .unwrap()
        .set_modified(long_ago)
        .unwrap();
    let mut opts = options(Duration::from_secs(3600), true);
    let dry = lake_maintain::run(&lake, &opts).await.unwrap();
    assert_eq!((dry.reports.objects, dry.reports.expired), (2, 1));
    assert!(
        objects(&lake).await.contains(old),
        "a dry run deletes nothing"
    );
    opts.dry_run = false;
    let r = lake_maintain::run(&lake, &opts).await.unwrap();
    assert_eq!(
        (r.reports.objects, r.reports.expired),
        (2, 1),
        "{:?}",
        r.reports
    );
    let left = objects(&lake).await;
    assert!(!left.contains(old) && left.contains(new), "{left:?}");
}
