//! silver-transform on the shared commit protocol, through the fault proxy:
//! a lost answer to its pin is its own pin, and a failed attempt releases the
//! version so the next attempt goes on at once.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod support;

use std::time::{Duration, Instant};

use lake_testkit::{Fault, FaultProxy, Rule, S3Op};
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
