//! #18: every run pushes its metrics to a real Pushgateway when
//! `PUSHGATEWAY_URL` is set; a failed run updates its exit code but not the
//! time of the last success, which the staleness alerts count from.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod support;

use lake_testkit::TestPushgateway;
use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn runs_push_their_metrics_and_a_failure_keeps_the_last_success() {
    let h = Harness::new().await;
    let gw = TestPushgateway::start().await.unwrap();
    generate_recent(&h.pg, 500, 18).await;
    let mut env = h.env();
    env.push(("PUSHGATEWAY_URL".into(), gw.url()));
    let out = h.run_with(&env, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let ingest = [("job", "bronze-ingest"), ("mode", "ingest")];
    let events = [
        ("job", "bronze-ingest"),
        ("mode", "ingest"),
        ("dataset", "events"),
    ];
    assert_eq!(
        val(&gw, "robson_lake_run_exit_code", &ingest).await,
        Some(0.0)
    );
    let rows = h.pg_count("SELECT count(*) FROM stop_events").await as f64;
    assert_eq!(
        val(&gw, "robson_lake_bronze_rows", &events).await,
        Some(rows)
    );
    assert_eq!(
        val(&gw, "robson_lake_bronze_committed_batch", &events).await,
        Some(1.0)
    );
    let fresh = val(
        &gw,
        "robson_lake_bronze_fresh_as_of_timestamp_seconds",
        &events,
    )
    .await
    .expect("freshness pushed");
    assert!((chrono::Utc::now().timestamp() as f64 - fresh).abs() < 300.0);
    let success = val(&gw, "robson_lake_last_success_timestamp_seconds", &ingest)
        .await
        .expect("last success pushed");

    // A run that cannot log in fails (exit 1): its exit code is pushed, the
    // last success stays.
    let mut bad = env.clone();
    for (k, v) in bad.iter_mut() {
        if k == "DJANGO_DB_PASSWORD" {
            *v = "wrong".into();
        }
    }
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let out = h.run_with(&bad, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        val(&gw, "robson_lake_run_exit_code", &ingest).await,
        Some(1.0)
    );
    assert_eq!(
        val(&gw, "robson_lake_last_success_timestamp_seconds", &ingest).await,
        Some(success)
    );
    assert_eq!(
        val(&gw, "robson_lake_bronze_rows", &events).await,
        Some(rows),
        "a dataset the run did not reach keeps its series"
    );
    assert!(
        val(&gw, "robson_lake_run_finished_timestamp_seconds", &ingest)
            .await
            .unwrap()
            > success
    );

    // The audit pushes to its own group: the export's series stay.
    // (The daily CronJob's window: the last days only.)
    let out = h.run_with(&env, &["--verify", "--last-days", "2"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let days = h
        .pg_count(
            "SELECT count(DISTINCT (occurred_at AT TIME ZONE 'UTC')::date) FROM stop_events \
             WHERE occurred_at >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' - interval '1 day'",
        )
        .await as f64;
    let verify = [("mode", "verify"), ("dataset", "events")];
    assert_eq!(
        val(&gw, "robson_lake_bronze_verify_mismatched_days", &verify).await,
        Some(0.0)
    );
    assert_eq!(
        val(&gw, "robson_lake_bronze_verify_days_checked", &verify).await,
        Some(days),
        "--last-days 2 audits today and yesterday only"
    );
    assert_eq!(
        val(&gw, "robson_lake_run_exit_code", &ingest).await,
        Some(1.0)
    );
}

/// A malformed `PUSHGATEWAY_URL` and an unreachable gateway are warnings
/// naming the variable, never a failed run: metrics must not stop the export.
#[tokio::test(flavor = "multi_thread")]
async fn a_bad_or_unreachable_pushgateway_only_warns() {
    let h = Harness::new().await;
    generate_recent(&h.pg, 50, 19).await;
    let mut env = h.env();
    env.push(("PUSHGATEWAY_URL".into(), "pushgateway:9091".into()));
    let out = h.run_with(&env, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("PUSHGATEWAY_URL") && stderr(&out).contains("pushes no metrics"),
        "{}",
        stderr(&out)
    );

    env.pop();
    env.push(("PUSHGATEWAY_URL".into(), "http://127.0.0.1:1".into()));
    let out = h.run_with(&env, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stderr(&out)
            .matches("Could not push the run's metrics")
            .count(),
        1,
        "one warning, no retry per group: {}",
        stderr(&out)
    );
    h.assert_lake_equals_postgres().await;
}

async fn val(gw: &TestPushgateway, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    gw.value(name, labels).await.unwrap()
}
