//! SIGKILL in the middle of publishing partitions, then rerun: a reader that
//! follows the manifest sees the committed version whole throughout, the rerun
//! deletes the killed run's objects, and it ends exactly where a clean run would
//! have (one object per partition, the same bytes).
//!
//! The binary gets the hidden, test-only `SILVER_TEST_PAUSE_AFTER_PUBLISH_MS`, so
//! the kill reliably lands after some partitions were replaced and before others.
//!
//! A glob reader (DuckDB over the Hive directories of a local lake) polls all
//! along a series of killed and retried runs: it never reads a torn file, and
//! outside each run's publish window (and the crash until its retry) it sees
//! every execution exactly once (#16 item 5).
// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use lake_common::Lake;
use lake_testkit::glob::{GlobPoller, has_module, now, python};
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

/// One round of changes for every partition: a new open execution, and a late
/// event one day before execution `x = round % 3`, which moves that execution
/// to the previous day's partition (what a glob reader would count twice or
/// not at all if partitions were rewritten in place).
fn round_batch(round: i64) -> Vec<Ev> {
    let mut v = Vec::new();
    for c in 1..=CLIENTS {
        for d in 0..DAYS {
            let x = round % 3;
            let n = ((c * 100 + d * 10 + x) * 10 + round) as u64;
            let at = ts("2025-06-01T05:00:00Z") + (d - 1) * 86_400_000_000 + round * 60_000_000;
            v.push(
                Ev::at_micros(n, at, Some(&format!("tok-{c}-{d}-{x}")), "STOP_TRIGGERED")
                    .client(c)
                    .qty("1"),
            );
            let n = ((c * 100 + d * 10 + 9) * 10 + round) as u64;
            let at = ts("2025-06-01T08:00:00Z") + d * 86_400_000_000 + round * 60_000_000;
            v.push(
                Ev::at_micros(n, at, Some(&format!("tok-{c}-{d}-r{round}")), "BLOCKED").client(c),
            );
        }
    }
    v
}

const GLOB_KEYS: &str = r#"
import sys, duckdb
rel = f"read_parquet('{sys.argv[1]}/silver/stop_executions/*/*/*.parquet')"
for (k,) in duckdb.sql(f"SELECT execution_key FROM {rel} ORDER BY 1").fetchall():
    print(k)
"#;

#[tokio::test]
async fn a_glob_reader_sees_each_execution_once_outside_the_publish_windows() {
    assert!(
        has_module("duckdb"),
        "DuckDB is missing from {}: run `./dev setup` (pip install duckdb)",
        python().display()
    );
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(&lake_common::LakeConfig::local(dir.path().join("lake"))).unwrap();
    let env = [
        (
            "LAKE_URL",
            format!("file://{}", dir.path().join("lake").display()),
        ),
        ("LOG_FORMAT", "json".to_owned()),
    ];
    let silver = |extra: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(BIN);
        cmd.env_clear()
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .envs(extra.iter().copied())
            .args(["--lease-secs", "2"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        cmd
    };
    let run_ok = || {
        let out = silver(&[]).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    commit_batch(&lake, 1, &first_batch()).await;
    run_ok();
    commit_batch(&lake, 2, &second_batch()).await;
    run_ok();

    let poller = GlobPoller::start(
        &format!(
            "{}/silver/stop_executions/*/*/*.parquet",
            dir.path().join("lake").display()
        ),
        "execution_key",
        dir.path(),
    )
    .unwrap();
    // (start, end) of each run's window, and the rows committed after it.
    let mut expected = vec![(0.0, now(), silver_committed(&lake).await.len())];
    std::thread::sleep(Duration::from_millis(500));
    let objects_now = |lake: &Lake| {
        let lake = lake.clone();
        async move { objects(&lake, "silver/stop_executions").await.len() }
    };
    for round in 3..=5 {
        commit_batch(&lake, round as u64, &round_batch(round)).await;
        let before = objects_now(&lake).await;
        let started = now();
        let mut child = silver(&[("SILVER_TEST_PAUSE_AFTER_PUBLISH_MS", "300")])
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while objects_now(&lake).await <= before {
            assert!(
                Instant::now() < deadline,
                "round {round}: nothing was published"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        child.kill().unwrap(); // SIGKILL mid-publish
        child.wait().unwrap();
        std::thread::sleep(Duration::from_millis(300)); // the crash, seen by the poller
        run_ok(); // the Job's retry (waits out the killed run's lease)
        let rows = silver_committed(&lake).await;
        expected.push((started, now(), rows.len()));
        // Right after the retry: exactly the committed executions.
        let keys: Vec<String> = run_python(GLOB_KEYS, &dir.path().join("lake"))
            .lines()
            .map(str::to_owned)
            .collect();
        assert_eq!(
            keys,
            rows.keys().cloned().collect::<Vec<_>>(),
            "round {round}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let polls = poller.finish().unwrap();

    // Every poll outside the windows saw the version committed before it,
    // each execution once; inside a window only a file that vanished between
    // listing and reading may fail a poll, never a torn one.
    let (mut quiet, mut busy, mut vanished) = (0, 0, 0);
    for p in &polls {
        let window = expected[1..].iter().any(|(s, e, _)| p.overlaps(*s, *e));
        match (&p.seen, window) {
            (Ok(seen), false) => {
                let (_, _, rows) = expected
                    .iter()
                    .rev()
                    .find(|(_, e, _)| *e < p.started)
                    .unwrap();
                assert_eq!(*seen, (*rows as u64, *rows as u64), "a quiet poll: {p:?}");
                quiet += 1;
            }
            (Ok(_), true) => busy += 1,
            (Err(_), true) if p.vanished_file() => vanished += 1,
            _ => panic!("a glob read failed: {p:?}"),
        }
    }
    eprintln!("{quiet} quiet polls, {busy} during the windows, {vanished} vanished files");
    assert!(
        quiet >= 4 && busy >= 3,
        "the poller saw too little: {quiet} quiet, {busy} busy"
    );
}

fn count_new(rows: &BTreeMap<String, SilverRow>) -> usize {
    rows.keys().filter(|k| k.ends_with("-new")).count()
}
