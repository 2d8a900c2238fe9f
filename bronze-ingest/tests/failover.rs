//! Source identity through a real failover and a real switchover (SPEC §5.5),
//! with a streaming replica made by `pg_basebackup`.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod support;

use lake_common::Dataset;
use lake_testkit::TestPostgres;
use support::*;

async fn assert_lake_holds_exactly(h: &Harness, pg: &TestPostgres, extra: usize) {
    let mut ids = h.committed_keys(Dataset::BronzeEvents, "event_id").await;
    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "nothing twice");
    let source: i64 = pg
        .client()
        .await
        .unwrap()
        .query_one("SELECT count(*) FROM stop_events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, source as usize + extra);
}

/// The replica is stopped while the primary goes on writing and bronze
/// commits those rows; the primary dies and the lagging replica is promoted.
/// Its xids above the promotion point are reused, so horizons alone cannot see
/// the loss: the run stops (exit 2, nothing written); `--rebase` adopts the new
/// primary and later batches export its new rows exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn a_failover_to_a_lagging_replica_stops_the_run_until_rebase() {
    let mut h = Harness::native().await;
    generate_recent(&h.pg, 300, 51).await;
    h.run_ok(&["--dataset", "events"]);
    let mut replica = TestPostgres::replica_of(&h.pg).await.unwrap();
    replica.wait_caught_up(&h.pg).await.unwrap();
    replica.stop();
    generate_recent(&h.pg, 100, 52).await;
    h.run_ok(&["--dataset", "events"]);
    h.pg.stop(); // the primary is lost
    replica.restart().await.unwrap();
    replica.promote().await.unwrap();

    let env = h.env_for(&replica);
    let out = h.run_with(&env, &["--dataset", "events"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--rebase"), "{}", stderr(&out));
    assert_eq!(
        h.manifests(Dataset::BronzeEvents).await.len(),
        2,
        "nothing pinned"
    );

    let out = h.run_with(&env, &["--dataset", "events", "--rebase"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // New rows on the promoted server reuse the lost xids.
    generate_recent(&replica, 50, 53).await;
    let out = h.run_with(&env, &["--dataset", "events"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // Every row of the new primary, plus the 100 only the lost primary had.
    assert_lake_holds_exactly(&h, &replica, 100).await;
}

/// A planned switchover: the replica has everything, the primary stops
/// cleanly, the replica is promoted. The new timeline holds every row of the
/// last batch, so bronze goes on without a person.
#[tokio::test(flavor = "multi_thread")]
async fn a_clean_switchover_goes_on() {
    let mut h = Harness::native().await;
    generate_recent(&h.pg, 300, 54).await;
    h.run_ok(&["--dataset", "events"]);
    let replica = TestPostgres::replica_of(&h.pg).await.unwrap();
    generate_recent(&h.pg, 40, 55).await;
    h.run_ok(&["--dataset", "events"]);
    replica.wait_caught_up(&h.pg).await.unwrap();
    h.pg.stop();
    replica.promote().await.unwrap();

    let env = h.env_for(&replica);
    generate_recent(&replica, 30, 56).await;
    let out = h.run_with(&env, &["--dataset", "events"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("switchover"), "{}", stderr(&out));
    assert_lake_holds_exactly(&h, &replica, 0).await;
}

/// A dump restored into a new cluster (a new `system_identifier`, the same
/// rows under new xids): the run stops; `--rebase` adopts it with nothing
/// doubled.
#[tokio::test(flavor = "multi_thread")]
async fn a_restore_into_a_new_cluster_is_adopted_by_rebase() {
    let h = Harness::native().await;
    generate_recent(&h.pg, 200, 57).await;
    h.run_ok(&["--dataset", "events"]);
    let copy = TestPostgres::start_native().await.unwrap();
    copy.client()
        .await
        .unwrap()
        .batch_execute("CREATE ROLE lake_reader LOGIN PASSWORD 'reader-pw'")
        .await
        .unwrap();
    let dump = std::env::temp_dir().join(format!("lake-dump-{}.pgdump", std::process::id()));
    let tool = |name: &str, args: &[&str], pg: &TestPostgres| {
        let out = std::process::Command::new(h.pg.bin_dir().join(name))
            .args(args)
            .args(["--host", pg.host(), "--port", &pg.port().to_string()])
            .args(["--username", pg.user(), "--dbname", pg.database()])
            .env("PGPASSWORD", pg.password())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let file = format!("--file={}", dump.display());
    tool("pg_dump", &["--format=custom", &file], &h.pg);
    tool(
        "pg_restore",
        &["--no-owner", &dump.display().to_string()],
        &copy,
    );
    let _ = std::fs::remove_file(&dump);

    let env = h.env_for(&copy);
    let out = h.run_with(&env, &["--dataset", "events"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("another cluster"), "{}", stderr(&out));
    let out = h.run_with(&env, &["--dataset", "events", "--rebase"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    generate_recent(&copy, 25, 58).await;
    let out = h.run_with(&env, &["--dataset", "events"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_lake_holds_exactly(&h, &copy, 0).await;
}

/// A major upgrade with `pg_upgrade` (15 → 15 here): a new `system_identifier`
/// but the same rows, xmins, xid counter and file nodes. The run stops (exit 2,
/// nothing pinned) naming the change; `--rebase` adopts the upgraded cluster
/// with nothing doubled, and later rows are exported exactly once. Both
/// datasets: the outbox keeps its versions through the upgrade.
#[tokio::test(flavor = "multi_thread")]
async fn a_pg_upgrade_into_a_new_cluster_is_adopted_by_rebase() {
    let mut h = Harness::native().await;
    generate_recent(&h.pg, 200, 59).await;
    h.run_ok(&[]);
    let before = h.manifests(Dataset::BronzeEvents).await.len();
    let upgraded = h.pg.upgrade_into_new_cluster().await.unwrap();

    let env = h.env_for(&upgraded);
    let out = h.run_with(&env, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("another cluster"), "{}", stderr(&out));
    assert!(stderr(&out).contains("--rebase"), "{}", stderr(&out));
    assert_eq!(
        h.manifests(Dataset::BronzeEvents).await.len(),
        before,
        "nothing pinned"
    );

    let out = h.run_with(&env, &["--rebase"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    generate_recent(&upgraded, 30, 60).await;
    let out = h.run_with(&env, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_lake_holds_exactly(&h, &upgraded, 0).await;
    let outbox: i64 = upgraded
        .client()
        .await
        .unwrap()
        .query_one("SELECT count(*) FROM outbox", &[])
        .await
        .unwrap()
        .get(0);
    let mut ids = h.committed_keys(Dataset::BronzeOutbox, "outbox_id").await;
    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(
        (n, ids.len()),
        (outbox as usize, outbox as usize),
        "each outbox row once"
    );
}
