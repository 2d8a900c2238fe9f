//! Transaction-id horizons: late commits, aborted transactions and savepoints.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod support;

use lake_common::Dataset;
use support::*;

const INSERT_ONE: &str = "INSERT INTO stop_events (event_id, occurred_at, operation_id, client_id, symbol, event_type, \
     payload_json, source, retry_count) VALUES ($1::text::uuid, now(), 1, 1, 'BTCUSDC', 'STOP_TRIGGERED', '{}', 'ws', 0)";

fn uuid(n: u32) -> String {
    format!("00000000-0000-0000-0000-{n:012}")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_late_commit_is_exported_exactly_once() {
    let h = Harness::new().await;
    let early = h.pg.client().await.unwrap();
    early.execute(INSERT_ONE, &[&uuid(1)]).await.unwrap();

    // A transaction inserts and stays open...
    let late = h.pg.client().await.unwrap();
    late.batch_execute("BEGIN").await.unwrap();
    late.execute(INSERT_ONE, &[&uuid(2)]).await.unwrap();

    // ...while later transactions commit, across two runs.
    let other = h.pg.client().await.unwrap();
    other.execute(INSERT_ONE, &[&uuid(3)]).await.unwrap();
    h.run_ok(&["--dataset", "events"]);
    other.execute(INSERT_ONE, &[&uuid(4)]).await.unwrap();
    h.run_ok(&["--dataset", "events"]);
    let mut keys = h.committed_keys(Dataset::BronzeEvents, "event_id").await;
    assert_eq!(
        keys,
        vec![uuid(1)],
        "only the row below the open transaction's horizon"
    );

    late.batch_execute("COMMIT").await.unwrap();
    h.run_ok(&["--dataset", "events"]);
    h.run_ok(&["--dataset", "events"]);
    keys = h.committed_keys(Dataset::BronzeEvents, "event_id").await;
    keys.sort();
    assert_eq!(
        keys,
        vec![uuid(1), uuid(2), uuid(3), uuid(4)],
        "each row exactly once"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn aborted_transactions_and_rolled_back_savepoints_export_nothing() {
    let h = Harness::new().await;
    let c = h.pg.client().await.unwrap();
    c.batch_execute("BEGIN").await.unwrap();
    c.execute(INSERT_ONE, &[&uuid(10)]).await.unwrap();
    c.batch_execute("ROLLBACK").await.unwrap();

    c.batch_execute("BEGIN").await.unwrap();
    c.execute(INSERT_ONE, &[&uuid(11)]).await.unwrap();
    c.batch_execute("SAVEPOINT a").await.unwrap();
    c.execute(INSERT_ONE, &[&uuid(12)]).await.unwrap();
    c.batch_execute("ROLLBACK TO SAVEPOINT a").await.unwrap();
    c.batch_execute("SAVEPOINT b").await.unwrap();
    c.execute(INSERT_ONE, &[&uuid(13)]).await.unwrap();
    c.batch_execute("RELEASE SAVEPOINT b; COMMIT")
        .await
        .unwrap();
    h.run_ok(&["--dataset", "events"]);

    // A second round after the first batch exists (the incremental predicate).
    c.batch_execute("BEGIN").await.unwrap();
    c.execute(INSERT_ONE, &[&uuid(20)]).await.unwrap();
    c.batch_execute("SAVEPOINT a").await.unwrap();
    c.execute(INSERT_ONE, &[&uuid(21)]).await.unwrap();
    c.batch_execute("ROLLBACK TO SAVEPOINT a").await.unwrap();
    c.batch_execute("SAVEPOINT b").await.unwrap();
    c.execute(INSERT_ONE, &[&uuid(22)]).await.unwrap();
    c.batch_execute("RELEASE SAVEPOINT b; COMMIT")
        .await
        .unwrap();
    c.batch_execute("BEGIN").await.unwrap();
    c.execute(INSERT_ONE, &[&uuid(23)]).await.unwrap();
    c.batch_execute("ROLLBACK").await.unwrap();
    h.run_ok(&["--dataset", "events"]);

    let mut keys = h.committed_keys(Dataset::BronzeEvents, "event_id").await;
    keys.sort();
    assert_eq!(keys, vec![uuid(11), uuid(13), uuid(20), uuid(22)]);
    assert_eq!(h.manifests(Dataset::BronzeEvents).await.len(), 2);
}

/// SPEC §5.9: an open transaction holds the horizon back; every row committed
/// after it waits. The run says so — how long, and who holds it as far as the
/// role can see — instead of a bare "nothing new", and warns past
/// BRONZE_HORIZON_WARN.
#[tokio::test(flavor = "multi_thread")]
async fn a_held_horizon_is_reported_with_its_holder() {
    let h = Harness::new().await;
    let mut config = h.pg.config();
    config.application_name("django-shell");
    let (holder, conn) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    holder.batch_execute("BEGIN").await.unwrap();
    holder.execute(INSERT_ONE, &[&uuid(20)]).await.unwrap();
    let pid: i32 = holder
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let other = h.pg.client().await.unwrap();
    other.execute(INSERT_ONE, &[&uuid(21)]).await.unwrap();
    h.run_ok(&["--dataset", "events"]);
    other.execute(INSERT_ONE, &[&uuid(22)]).await.unwrap();

    let mut env = h.env();
    env.push(("BRONZE_HORIZON_WARN".into(), "0s".into()));
    let out = h.run_with(&env, &["--dataset", "events"]);
    assert_eq!(out.status.code(), Some(0));
    let line = stdout(&out)
        .lines()
        .find(|l| l.contains("\"Run summary\""))
        .unwrap()
        .to_owned();
    let report: serde_json::Value = serde_json::from_str(&line).unwrap();
    let held = &report["report"]["datasets"][0]["horizon_held"];
    assert_eq!(held["warned"], true, "{held}");
    assert_eq!(held["holders"][0]["pid"], pid, "{held}");
    assert_eq!(held["holders"][0]["application_name"], "django-shell");
    assert!(stderr(&out).contains("has not moved"), "{}", stderr(&out));

    let text = h.run_text_ok(&["--dataset", "events"]);
    assert!(
        stdout(&text).contains(&format!("held by pid {pid}")),
        "{}",
        stdout(&text)
    );
    holder.batch_execute("COMMIT").await.unwrap();
    h.run_ok(&["--dataset", "events"]);
    h.assert_lake_equals_postgres().await;
}
