//! silver-transform on the shared commit protocol, through the fault proxy:
//! a lost answer to its pin is its own pin, and a failed attempt releases the
//! version so the next attempt goes on at once.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod support;

use std::time::{Duration, Instant};

use lake_testkit::{Fault, FaultProxy, Rule, S3Op};
use silver_transform::key::Shard;
use silver_transform::manifest;
use support::*;

fn events() -> Vec<Ev> {
    (0..40)
        .map(|i| {
            Ev::new(
                i,
                "2025-06-01T06:00:00Z",
                Some(&format!("tok-{i}")),
                "STOP_TRIGGERED",
            )
            .client(1 + (i % 3) as i64)
            .qty("1")
        })
        .collect()
}

const SILVER_MANIFESTS: &str = "silver/stop_executions/_manifests/";

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_answer_to_the_pin_is_this_runs_own_pin() {
    let t = TestLake::new().await;
    commit_batch(&t.lake, 1, &events()).await;
    let proxy = FaultProxy::start(&t.s3, 3).unwrap();
    proxy.add_rule(
        Rule::new(Fault::LoseResponse)
            .op(S3Op::PutObject)
            .key_contains(SILVER_MANIFESTS)
            .nth(1),
    );
    let endpoint = proxy.endpoint();
    let out = t.run_bin(&[], &[("AWS_ENDPOINT", endpoint.as_str())]);
    assert_eq!(out.status.code(), Some(0), "{}", proxy.log_text());
    assert_eq!(proxy.fault_counts().get("lose-response"), Some(&1));
    assert_eq!(silver(&t.lake).await.len(), 40);
    assert_eq!(latest_report(&t.lake).await["committed_version"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_attempt_releases_its_version_for_the_next_one() {
    let t = TestLake::new().await;
    commit_batch(&t.lake, 1, &events()).await;
    let proxy = FaultProxy::start(&t.s3, 3).unwrap();
    // Every partition write fails: the attempt fails after pinning.
    proxy.add_rule(Rule::new(Fault::Status(500)).key_contains("silver/stop_executions/client_id="));
    let endpoint = proxy.endpoint();
    let out = t.run_bin(&[], &[("AWS_ENDPOINT", endpoint.as_str())]);
    assert_eq!(out.status.code(), Some(1), "a store failure is exit 1");
    proxy.clear_rules();
    // The Job's next pod, at once (default 30 s lease).
    let started = Instant::now();
    let out = t.run_bin(&[], &[("AWS_ENDPOINT", endpoint.as_str())]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "without waiting out the lease"
    );
    assert_eq!(silver(&t.lake).await.len(), 40);
    assert_eq!(latest_report(&t.lake).await["outcome"], "success");
}

/// #16 item 2: on a store that ignores conditional writes, silver serialises on
/// its shard's PostgreSQL advisory lock: a held lock is exit 4 with nothing
/// written, and without it the run commits with plain overwrites.
#[tokio::test(flavor = "multi_thread")]
async fn without_conditional_writes_silver_serialises_on_the_advisory_lock() {
    let t = TestLake::new().await;
    commit_batch(&t.lake, 1, &events()).await;
    let pg = lake_testkit::TestPostgres::start().await.unwrap();
    let proxy = FaultProxy::start(&t.s3, 5).unwrap();
    proxy.add_rule(Rule::new(Fault::StripConditionalHeaders));
    let mut env: Vec<(String, String)> = pg.env();
    env.push(("AWS_ENDPOINT".into(), proxy.endpoint()));
    env.push(("S3_CONDITIONAL_WRITES".into(), "disabled".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();

    // Another session holds the shard's lock: exit 4, nothing written.
    let holder = pg.client().await.unwrap();
    let (a, b) = lake_common::commit::lock::lock_keys("silver-transform/shard-0-of-1");
    holder
        .execute("SELECT pg_advisory_lock($1, $2)", &[&a, &b])
        .await
        .unwrap();
    let out = t.run_bin(&[], &env);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(objects(&t.lake, "silver/stop_executions").await.is_empty());
    holder
        .execute("SELECT pg_advisory_unlock($1, $2)", &[&a, &b])
        .await
        .unwrap();

    let out = t.run_bin(&[], &env);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(silver(&t.lake).await.len(), 40);
    commit_batch(
        &t.lake,
        2,
        &[Ev::new(
            100,
            "2025-06-02T06:00:00Z",
            Some("tok-100"),
            "STOP_TRIGGERED",
        )
        .qty("1")],
    )
    .await;
    assert_eq!(t.run_bin(&[], &env).status.code(), Some(0));
    assert_eq!(silver(&t.lake).await.len(), 41);
}

/// SPEC §5.4 / §5.6 fencing for silver: a run frozen past its lease in the
/// middle of publishing (SIGSTOP), with one partition PUT still held on the
/// wire, is overtaken by a run that commits newer data; the held PUT then lands.
/// Its object carries a name unique to the frozen run, so it cannot change a
/// committed object (in place, it would have replaced the partition with stale
/// rows): every checksum of the committed manifest still matches. The frozen run
/// wakes fenced and exits 4; the orphan is removed by the next recompute of the
/// shard (garbage collection is the backstop).
#[tokio::test(flavor = "multi_thread")]
async fn a_run_frozen_past_its_lease_mid_publish_cannot_change_a_committed_object() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let t = TestLake::new().await;
    commit_batch(&t.lake, 1, &events()).await;
    let proxy = FaultProxy::start(&t.s3, 5).unwrap();
    // The first partition PUT is held 14 s, then forwarded (it lands).
    proxy.add_rule(
        Rule::new(Fault::Delay(Duration::from_secs(14)))
            .op(S3Op::PutObject)
            .key_contains("silver/stop_executions/client_id=")
            .nth(1),
    );
    let endpoint = proxy.endpoint();
    let first = t
        .command(
            &["--lease-secs", "2"],
            &[
                ("AWS_ENDPOINT", endpoint.as_str()),
                ("SILVER_TEST_PAUSE_AFTER_PUBLISH_MS", "300"),
                ("S3_TIMEOUT_SECS", "1"),
            ],
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while proxy.fault_counts().is_empty() {
        assert!(Instant::now() < deadline, "the first run never published");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pid = Pid::from_raw(first.id() as i32);
    kill(pid, Signal::SIGSTOP).unwrap();
    let frozen_owner = manifest::read(&t.lake, Shard::ALL, 1)
        .await
        .unwrap()
        .claim
        .owner;
    // New events for every partition, then (past lease + clock-skew allowance)
    // a run that treats version 1 as abandoned and commits version 2.
    let more: Vec<Ev> = (0..3)
        .map(|c| {
            Ev::new(
                100 + c,
                "2025-06-01T07:00:00Z",
                Some(&format!("tok-new-{c}")),
                "STOP_TRIGGERED",
            )
            .client(1 + c as i64)
            .qty("1")
        })
        .collect();
    commit_batch(&t.lake, 2, &more).await;
    tokio::time::sleep(Duration::from_secs(2 + 5 + 1)).await;
    let out = t.run_bin(&[], &[]);
    if fallback_mode() {
        // Without conditional writes the frozen run still holds the shard's
        // advisory lock: nobody overtakes it (exit 4, nothing written); woken,
        // it finds its lease gone and stops; the next run commits.
        assert_eq!(
            out.status.code(),
            Some(4),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        kill(pid, Signal::SIGCONT).unwrap();
        let out = first.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(4),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        t.run_bin_ok(&[], &[]);
        assert_eq!(silver_committed(&t.lake).await.len(), 43);
        return;
    }
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(latest_report(&t.lake).await["committed_version"], 2);
    // The held PUT lands after the commit.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !objects(&t.lake, "silver/stop_executions")
        .await
        .keys()
        .any(|k| k.contains(&frozen_owner))
    {
        assert!(
            Instant::now() < deadline,
            "the held PUT never landed:\n{}",
            proxy.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    kill(pid, Signal::SIGCONT).unwrap();
    let out = first.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(4),
        "the frozen run is fenced: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The committed version reads whole, every checksum matching its object.
    assert_eq!(silver_committed(&t.lake).await.len(), 43);
    // The next recompute of the shard deletes the orphan: one object per
    // partition, the bytes of a clean recompute.
    assert_eq!(t.run_bin(&["--full-refresh"], &[]).status.code(), Some(0));
    assert!(latest_report(&t.lake).await["partitions"]["orphans_deleted"].as_u64() >= Some(1));
    let other = t.other_bucket().await;
    commit_batch(&other, 1, &events()).await;
    commit_batch(&other, 2, &more).await;
    run(&other, &full_refresh()).await;
    assert_eq!(published(&t.lake).await, published(&other).await);
}
