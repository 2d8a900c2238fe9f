//! SIGKILL in the middle of publishing partitions, then rerun: a reader that
//! follows the manifest sees the committed version whole throughout, the rerun
//! deletes the killed run's objects, and it ends exactly where a clean run would
//! have (one object per partition, the same bytes).
//!
//! The binary gets the hidden, test-only `SILVER_TEST_PAUSE_AFTER_PUBLISH_MS`, so
//! the kill reliably lands after some partitions were replaced and before others.
// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use lake_common::Lake;
use silver_transform::key::Shard;
use silver_transform::manifest::{self, State};
use support::*;

const CLIENTS: i64 = 8;
const DAYS: i64 = 4;

/// Three executions per (client, day) partition, all still open.
fn first_batch() -> Vec<Ev> {
    let mut v = Vec::new();
    for c in 1..=CLIENTS {
        for d in 0..DAYS {
            for x in 0..3 {
                let n = ((c * 100 + d * 10 + x) * 10) as u64;
                let tok = format!("tok-{c}-{d}-{x}");
                let at = ts("2025-06-01T06:00:00Z") + d * 86_400_000_000 + x * 60_000_000;
                v.push(
                    Ev::at_micros(n, at, Some(&tok), "STOP_TRIGGERED")
                        .client(c)
                        .qty("1"),
                );
            }
        }
    }
    v
}

/// Completes one execution of every partition and adds a new one.
fn second_batch() -> Vec<Ev> {
    let mut v = Vec::new();
    for c in 1..=CLIENTS {
        for d in 0..DAYS {
            let n = ((c * 100 + d * 10) * 10) as u64;
            let at = ts("2025-06-01T07:00:00Z") + d * 86_400_000_000;
            v.push(
                Ev::at_micros(n + 1, at, Some(&format!("tok-{c}-{d}-0")), "EXECUTED")
                    .client(c)
                    .fill("2")
                    .slip("0.1"),
            );
            v.push(
                Ev::at_micros(n + 2, at, Some(&format!("tok-{c}-{d}-new")), "BLOCKED").client(c),
            );
        }
    }
    v
}

#[tokio::test]
async fn sigkill_mid_rewrite_then_rerun() {
    let t = TestLake::new().await;
    let lake = &t.lake;
    commit_batch(lake, 1, &first_batch()).await;
    assert_eq!(t.run_bin(&[], &[]).status.code(), Some(0));
    let before = published(lake).await;
    assert_eq!(before.len(), (CLIENTS * DAYS) as usize);
    let partitions: Vec<String> = before.keys().cloned().collect();

    commit_batch(lake, 2, &second_batch()).await;
    let mut child = t
        .command(
            &["--lease-secs", "2"],
            &[("SILVER_TEST_PAUSE_AFTER_PUBLISH_MS", "700")],
        )
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Watch as a reader that follows the manifest does, until some partitions'
    // new objects were uploaded: it sees version 1, whole, all along.
    let count = |lake: &Lake| {
        let lake = lake.clone();
        async move {
            objects(&lake, "silver/stop_executions").await.len()
                + objects(&lake, "silver/_quarantine/stop_executions")
                    .await
                    .len()
        }
    };
    let initial = count(lake).await;
    let started = Instant::now();
    let mut polls = 0;
    let seen = loop {
        let rows = silver_committed(lake).await;
        assert_eq!(rows.len(), (CLIENTS * DAYS * 3) as usize);
        assert_eq!(count_new(&rows), 0, "a row of the uncommitted version");
        polls += 1;
        let uploaded = count(lake).await - initial;
        if uploaded > 0 {
            break uploaded;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "nothing was published"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let orphans = count(lake).await - initial;
    eprintln!(
        "killed after {polls} polls with {seen}..{orphans} of {} partitions uploaded",
        partitions.len()
    );
    assert!(
        orphans < partitions.len(),
        "the kill came too late to test anything"
    );
    // Nothing of version 1 was touched.
    assert_eq!(
        silver_committed(lake).await.len(),
        (CLIENTS * DAYS * 3) as usize
    );

    // The crashed version is pending; the state is still version 1.
    let found = manifest::find(lake, Shard::ALL).await.unwrap();
    assert_eq!(found.committed.as_ref().map(|m| m.version), Some(1));
    let pending = manifest::read(lake, Shard::ALL, 2).await.unwrap();
    assert_eq!(pending.state, State::Pending);
    assert_eq!(pending.planned.len(), partitions.len());

    // Its lease (2 s) ends within LEASE_WAIT: the next run waits for it, then
    // recomputes what the crashed run planned.
    assert_eq!(t.run_bin(&[], &[]).status.code(), Some(0));
    let report = latest_report(lake).await;
    assert_eq!(report["outcome"], "success");
    assert_eq!(report["recovered_partitions"], partitions.len());
    // The killed run's objects, which no manifest lists, were deleted.
    assert_eq!(report["partitions"]["orphans_deleted"], orphans);
    let found = manifest::find(lake, Shard::ALL).await.unwrap();
    assert_eq!(found.committed.as_ref().map(|m| m.version), Some(3));

    // Exactly what a clean recompute gives.
    let other = t.other_bucket().await;
    commit_batch(&other, 1, &first_batch()).await;
    commit_batch(&other, 2, &second_batch()).await;
    run(&other, &full_refresh()).await;
    assert_eq!(published(lake).await, published(&other).await);
    let rows = silver(lake).await;
    assert_eq!(rows.len(), (CLIENTS * DAYS * 4) as usize);
    assert_eq!(
        rows.values().filter(|r| r.status == "EXECUTED").count(),
        (CLIENTS * DAYS) as usize
    );
}

fn count_new(rows: &BTreeMap<String, SilverRow>) -> usize {
    rows.keys().filter(|k| k.ends_with("-new")).count()
}
