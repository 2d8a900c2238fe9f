//! The commit protocol (lake_common::commit) on a real S3 endpoint, with the
//! fault proxy between the run under test and the store: lost answers to
//! renewals, and a run whose renewals fail being fenced and taken over.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::time::Duration;

use bytes::Bytes;
use lake_common::commit::{CLOCK_SKEW, CommitError, Log, Mode};
use lake_common::manifest::{BatchManifest, BatchState, MANIFEST_FORMAT};
use lake_common::{Dataset, Lake, LakeConfig};
use lake_testkit::{Fault, FaultProxy, Rule, S3Op, TestS3};

fn lake_from(env: Vec<(String, String)>) -> Lake {
    Lake::open(&LakeConfig::from_vars(env).unwrap()).unwrap()
}

fn pending() -> BatchManifest {
    BatchManifest {
        format: MANIFEST_FORMAT,
        dataset: "bronze/events".into(),
        batch: 1,
        state: BatchState::Pending,
        h_prev: None,
        h: 10,
        xmax: 12,
        snapshot_time: chrono::Utc::now(),
        scan_from: None,
        system_identifier: "1".into(),
        timeline: None,
        wal_lsn: None,
        relfilenode: None,
        drop_captured: false,
        drop_captured_below: None,
        backfill_days: vec![],
        added_columns: vec![],
        claim: Default::default(),
        committed_at: None,
        files: vec![],
        supersedes: vec![],
        compacted_days: vec![],
        pruned_days: vec![],
        retained_before: None,
        rows: 0,
    }
}

const LEASE: Duration = Duration::from_millis(1500);

/// A conditional log whose writes go through a fresh fault proxy.
async fn through_proxy(lease: Duration) -> (TestS3, FaultProxy, Log) {
    let s3 = TestS3::start().await.unwrap();
    let bucket = s3.new_bucket().await.unwrap();
    let proxy = FaultProxy::start(&s3, 1).unwrap();
    let lake = lake_from(proxy.env(&s3, &bucket));
    (s3, proxy, Log::new(lake, Mode::Conditional, lease))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_renewal_whose_answer_was_lost_keeps_the_lease() {
    let (_s3, proxy, log) = through_proxy(LEASE).await;
    let lease = LEASE;
    // Manifest PUTs: 1 = pin, 2 = first renewal (its answer is lost, the retry gets 412).
    proxy.add_rule(
        Rule::new(Fault::LoseResponse)
            .op(S3Op::PutObject)
            .key_contains("_manifests")
            .nth(2),
    );
    let path = Dataset::BronzeEvents.manifest(1);
    let pinned = log.pin(&path, pending(), "a").await.unwrap().unwrap();
    tokio::time::sleep(lease * 2).await;
    assert!(
        !pinned.fence().is_raised(),
        "fenced by its own lost answer: {}\n{}",
        pinned.fence().reason(),
        proxy.log_text()
    );
    assert_eq!(proxy.fault_counts().get("lose-response"), Some(&1));
    let statuses: Vec<_> = proxy.log().iter().map(|r| r.status).collect();
    assert!(statuses.contains(&Some(412)), "{}", proxy.log_text());
    let committed = pinned
        .commit(|m| m.state = BatchState::Committed)
        .await
        .unwrap();
    assert_eq!(committed.claim.owner, "a");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_that_cannot_renew_is_fenced_and_taken_over() {
    let s3 = TestS3::start().await.unwrap();
    let bucket = s3.new_bucket().await.unwrap();
    let proxy = FaultProxy::start(&s3, 1).unwrap();
    let lease = Duration::from_secs(1);
    let path = Dataset::BronzeEvents.manifest(1);
    let a_lake = lake_from(proxy.env(&s3, &bucket));
    let a = Log::new(a_lake.clone(), Mode::Conditional, lease)
        .pin(&path, pending(), "a")
        .await
        .unwrap()
        .unwrap();
    // From now on every write of run a fails.
    proxy.add_rule(Rule::new(Fault::Status(503)).op(S3Op::PutObject));
    tokio::time::sleep(lease).await;
    assert!(a.fence().is_raised(), "past its deadline without a renewal");
    let fenced = a_lake.fenced(a.fence());
    let refused = fenced
        .put(
            &object_store::path::Path::from("x"),
            Bytes::from_static(b"late"),
        )
        .await;
    assert!(refused.is_err(), "a fenced run writes nothing");

    // Run b, straight to the store, takes the entry over once lease + skew passed.
    let b_log = Log::new(lake_from(s3.env(&bucket)), Mode::Conditional, lease);
    tokio::time::sleep(CLOCK_SKEW).await;
    let found = b_log.read::<BatchManifest>(&path).await.unwrap().unwrap();
    assert!(!found.entry.claim.is_live(chrono::Utc::now()));
    let b = b_log.take_over(&path, found, "b").await.unwrap();
    proxy.clear_rules();
    let late = a.commit(|m| m.state = BatchState::Committed).await;
    assert!(matches!(late, Err(CommitError::Fenced(_))), "{late:?}");
    let committed = b.commit(|m| m.state = BatchState::Committed).await.unwrap();
    assert_eq!(committed.claim.owner, "b");
}

/// A renewal took effect but both its answer and the read-back that should
/// have settled it were lost: the next renewal's 412 meets this attempt's own
/// write, which is recognised (by its attempt id) instead of fencing the run.
#[tokio::test(flavor = "multi_thread")]
async fn an_unsettled_renewal_is_recognised_by_the_next_one() {
    let (_s3, proxy, log) = through_proxy(LEASE).await;
    let lease = LEASE;
    proxy.add_rule(
        Rule::new(Fault::LoseResponse)
            .op(S3Op::PutObject)
            .key_contains("_manifests")
            .nth(2),
    );
    // The read-back right after it fails too (both attempts of the GET).
    proxy.add_rule(
        Rule::new(Fault::Status(500))
            .op(S3Op::GetObject)
            .key_contains("_manifests")
            .times(2),
    );
    let path = Dataset::BronzeEvents.manifest(1);
    let pinned = log.pin(&path, pending(), "a").await.unwrap().unwrap();
    tokio::time::sleep(lease * 2).await;
    assert!(
        !pinned.fence().is_raised(),
        "fenced by its own write: {}\n{}",
        pinned.fence().reason(),
        proxy.log_text()
    );
    let committed = pinned
        .commit(|m| m.state = BatchState::Committed)
        .await
        .unwrap();
    assert_eq!(committed.claim.owner, "a");
}
