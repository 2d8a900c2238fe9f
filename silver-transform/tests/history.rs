//! #17: what an incremental silver run asks of the store does not grow with
//! bronze's age. Bronze batches are committed as bronze-ingest commits them
//! (with its checkpoints) and silver runs after each; the requests of a run
//! that folds one new batch and of a no-op run are counted through the fault
//! proxy at two ages that sit at the same place between checkpoints.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod support;

use chrono::{Duration, NaiveDate};
use lake_common::manifest::CHECKPOINT_INTERVAL;
use lake_testkit::{FaultProxy, LoggedRequest, S3Op};
use support::*;

/// Five executions on a day of their own per batch, so the data each run reads
/// is the same size whatever the age.
fn events_of(batch: u64) -> Vec<Ev> {
    let day = NaiveDate::from_ymd_opt(2025, 1, 1).unwrap() + Duration::days(batch as i64);
    (0..5)
        .map(|i| {
            let n = batch * 10 + i;
            Ev::new(
                n,
                &format!("{day}T06:00:00Z"),
                Some(&format!("tok-{n}")),
                "STOP_TRIGGERED",
            )
            .client(1)
            .qty("1")
        })
        .collect()
}

/// Requests other than data files, and the bytes their listings returned.
fn cost(log: &[LoggedRequest]) -> (usize, u64) {
    let log: Vec<&LoggedRequest> = log
        .iter()
        .filter(|r| !r.path.contains("/date=") && !r.path.contains("/client_id="))
        .collect();
    let listed = log
        .iter()
        .filter(|r| r.op == S3Op::ListObjects)
        .map(|r| r.response_bytes)
        .sum();
    (log.len(), listed)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_incremental_runs_requests_do_not_grow_with_bronzes_age() {
    let t = TestLake::new().await;
    let proxy = FaultProxy::start(&t.s3, 13).unwrap();
    let endpoint = proxy.endpoint();
    let env = [("AWS_ENDPOINT", endpoint.as_str())];
    let young = CHECKPOINT_INTERVAL + 2;
    let old = 3 * CHECKPOINT_INTERVAL + 2;
    let mut measured = vec![];
    for batch in 1..=old {
        commit_batch(&t.lake, batch, &events_of(batch)).await;
        // Silver runs after every batch (its log is past the versions it
        // keeps at both ages); the measured runs go through the proxy.
        if batch != young && batch != old {
            run(&t.lake, &incremental()).await;
        } else {
            proxy.clear_log();
            let out = t.run_bin(&[], &env);
            assert_eq!(out.status.code(), Some(0), "{}", proxy.log_text());
            let work = cost(&proxy.log());
            eprintln!("after {batch} batches, one new:\n{}", proxy.log_text());
            proxy.clear_log();
            let out = t.run_bin(&[], &env);
            assert_eq!(out.status.code(), Some(0));
            let noop = cost(&proxy.log());
            eprintln!("after {batch} batches, nothing new:\n{}", proxy.log_text());
            measured.push((work, noop));
        }
    }
    let ((young_work, young_noop), (old_work, old_noop)) = (measured[0], measured[1]);
    assert_eq!(old_work.0, young_work.0, "requests of a one-batch run");
    assert_eq!(old_noop.0, young_noop.0, "requests of a no-op run");
    // Silver keeps its last few versions only, bronze is listed after its
    // checkpoint: the listings return as much at both ages (give or take a
    // digit of an object size).
    assert!(
        old_work.1 <= young_work.1 + 128,
        "{young_work:?} -> {old_work:?}"
    );
    assert!(
        old_noop.1 <= young_noop.1 + 128,
        "{young_noop:?} -> {old_noop:?}"
    );
    // And the result is the whole of bronze.
    assert_eq!(silver(&t.lake).await.len(), 5 * old as usize);
}
