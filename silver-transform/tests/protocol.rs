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
