//! PostgreSQL failures during a run (#19 item 2): a statement timeout, the
//! connection limit, the server restarted in the middle of the export. Each
//! fails the run (exit 1) with one line that says what happened and what to do,
//! leaves no data object and no incomplete upload, and the immediate retry (a
//! Job's next pod) commits the lake exactly. The terminated backend is in
//! protocol.rs.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod support;

use lake_common::Dataset;
use lake_testkit::error_line;
use support::*;

/// Failed as said, nothing left behind, and the retry is exact.
async fn assert_failed_cleanly_then_retry(h: &Harness, out: &std::process::Output, says: &str) {
    assert_failed_with_then_retry(h, out, 1, says).await;
}

async fn assert_failed_with_then_retry(
    h: &Harness,
    out: &std::process::Output,
    code: i32,
    says: &str,
) {
    assert_eq!(out.status.code(), Some(code), "{}", stderr(out));
    let line = error_line(out);
    assert!(line.contains(says), "{says:?} missing from: {line}");
    assert!(
        h.data_files(Dataset::BronzeEvents).await.is_empty(),
        "no data object"
    );
    assert!(
        h.s3.incomplete_uploads(&h.bucket).await.unwrap().is_empty(),
        "no incomplete upload"
    );
    h.run_ok(&[]);
    h.assert_lake_equals_postgres().await;
}

/// A statement that runs past the timeout: the run's `LOCK TABLE` waits behind
/// a migration's exclusive lock (its own lock_timeout is 120 s).
#[tokio::test(flavor = "multi_thread")]
async fn a_statement_timeout_says_which_setting_and_the_retry_is_exact() {
    let h = Harness::new().await;
    generate_recent(&h.pg, 2_000, 81).await;
    let migration = h.pg.client().await.unwrap();
    migration
        .batch_execute("BEGIN; LOCK TABLE stop_events IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let mut env = h.env();
    env.push(("DJANGO_DB_STATEMENT_TIMEOUT".into(), "500ms".into()));
    let out = h.run_with(&env, &["--dataset", "events"]);
    migration.batch_execute("ROLLBACK").await.unwrap();
    assert_failed_cleanly_then_retry(&h, &out, "by DJANGO_DB_STATEMENT_TIMEOUT (raise it").await;
}

/// A bound so short that the session idles in its transaction past it (it
/// bounds idle-in-transaction time too: the server closes the connection) or a
/// statement runs past it, whichever comes first: either way the line names
/// the setting.
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_in_transaction_timeout_is_explained_and_the_retry_is_exact() {
    let h = Harness::new().await;
    generate_recent(&h.pg, 2_000, 84).await;
    let mut env = h.env();
    env.push(("DJANGO_DB_STATEMENT_TIMEOUT".into(), "1ms".into()));
    let out = h.run_with(&env, &["--dataset", "events"]);
    assert_failed_cleanly_then_retry(&h, &out, "DJANGO_DB_STATEMENT_TIMEOUT").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_connection_limit_is_named_and_the_retry_is_exact() {
    let h = Harness::new().await;
    generate_recent(&h.pg, 500, 82).await;
    let admin = h.pg.client().await.unwrap();
    admin
        .batch_execute("ALTER ROLE lake_reader CONNECTION LIMIT 0")
        .await
        .unwrap();
    let out = h.run(&["--dataset", "events"]);
    admin
        .batch_execute("ALTER ROLE lake_reader CONNECTION LIMIT -1")
        .await
        .unwrap();
    assert_failed_cleanly_then_retry(&h, &out, "connection limit is reached").await;
}

/// The server restarts (a fast shutdown ends every session) while the export
/// is uploading; the retry finds it on its new port.
#[tokio::test(flavor = "multi_thread")]
async fn a_server_restarted_mid_export_fails_the_run_and_the_retry_is_exact() {
    let mut h = Harness::native().await;
    generate_big_day(&h.pg, 83).await;
    let (proxy, run) = h.spawn_slow_export(None);
    h.pg.restart().await.unwrap();
    let out = run.wait_with_output().unwrap();
    if out.status.code() == Some(0) {
        // On a loaded machine the export can end before the restart.
        eprintln!("the export ended before the restart: no fault injected");
        h.assert_lake_equals_postgres().await;
        return;
    }
    proxy.clear_rules();
    if fallback_mode() && out.status.code() == Some(4) {
        // The restart also ended the session holding the advisory lock; when
        // its watcher notices before the export fails, the run is fenced
        // (exit 4, retried like any other).
        assert_failed_with_then_retry(
            &h,
            &out,
            4,
            "advisory lock bronze-ingest/bronze/events died); it stopped writing; the next run",
        )
        .await;
    } else {
        assert_failed_cleanly_then_retry(&h, &out, "restarted").await;
    }
}

/// A hot standby that cancels the export's snapshot to replay WAL
/// (`max_standby_streaming_delay = 0`, no `hot_standby_feedback`): rows the
/// snapshot still sees are vacuumed away on the primary mid-export. The run
/// fails with the standby settings to change; the retry is exact.
#[tokio::test(flavor = "multi_thread")]
async fn a_standby_cancelling_the_snapshot_is_explained_and_the_retry_is_exact() {
    let mut h = Harness::native().await;
    generate_big_day(&h.pg, 85).await;
    let replica = impatient_standby(&h).await;
    let (proxy, run) = h.spawn_slow_export(Some(&replica));
    let env = h.env_for(&replica);
    vacuum_what_the_standby_sees(&h).await;
    let out = run.wait_with_output().unwrap();
    if out.status.code() == Some(0) {
        eprintln!("the export ended before the standby replayed the clean-up: no fault injected");
        return;
    }
    proxy.clear_rules();
    replica.wait_caught_up(&h.pg).await.unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let line = error_line(&out);
    assert!(line.contains("hot_standby_feedback"), "{line}");
    let left = h.data_files(Dataset::BronzeEvents).await;
    assert!(
        left.is_empty(),
        "no data object: {left:?}\n{}",
        stderr(&out)
    );
    assert!(h.s3.incomplete_uploads(&h.bucket).await.unwrap().is_empty());
    // The retry resumes the pinned batch.
    let out = h.run_with(&env, &["--dataset", "events"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    h.assert_lake_equals_postgres().await;
}

/// The standby's cancellation can also arrive after the batch is committed,
/// while the session waits in its transaction for the store (reproduced in CI
/// on a loaded machine: the release of the dataset's savepoint then failed the
/// run, exit 1, although its batch was committed). The committed batch is the
/// run's result: it succeeds, and the next run takes what the clean-up changed.
#[tokio::test(flavor = "multi_thread")]
async fn a_standby_cancelling_the_snapshot_after_the_commit_fails_nothing() {
    use lake_testkit::{Fault, FaultProxy, Rule, S3Op};
    let mut h = Harness::native().await;
    generate_recent(&h.pg, 2_000, 86).await;
    let replica = impatient_standby(&h).await;
    let proxy = FaultProxy::start(&h.s3, 10).unwrap();
    h.extra_env.push(("AWS_ENDPOINT".into(), proxy.endpoint()));
    // The second PUT of the batch's manifest is its commit.
    let manifest_put = |r: &lake_testkit::LoggedRequest| {
        r.op == S3Op::PutObject && r.path.contains("/_manifests/")
    };
    proxy.add_rule(
        Rule::new(Fault::Delay(std::time::Duration::from_secs(3)))
            .op(S3Op::PutObject)
            .key_contains("/_manifests/")
            .nth(2),
    );
    let env = h.env_for(&replica);
    let run = h
        .command_with(&env, &["--dataset", "events"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while proxy.log().iter().filter(|r| manifest_put(r)).count() < 2 {
        assert!(std::time::Instant::now() < deadline, "{}", proxy.log_text());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    vacuum_what_the_standby_sees(&h).await;
    replica.wait_caught_up(&h.pg).await.unwrap();
    let out = run.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("The session to PostgreSQL failed after the batch was committed"),
        "{}",
        stderr(&out)
    );
    proxy.clear_rules();
    h.run_with(&env, &["--dataset", "events"]);
    h.assert_lake_equals_postgres().await;
}

/// A replica that cancels a snapshot the moment replay conflicts with it
/// (`max_standby_streaming_delay = 0`, no `hot_standby_feedback`).
async fn impatient_standby(h: &Harness) -> lake_testkit::TestPostgres {
    h.pg.client()
        .await
        .unwrap()
        .batch_execute("CREATE TABLE churn AS SELECT generate_series(1, 10000) AS x")
        .await
        .unwrap();
    let replica = lake_testkit::TestPostgres::replica_of(&h.pg).await.unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(replica.data_dir().join("postgresql.auto.conf"))
        .and_then(|mut f| {
            use std::io::Write;
            f.write_all(b"max_standby_streaming_delay = 0\nhot_standby_feedback = off\n")
        })
        .unwrap();
    replica
        .client()
        .await
        .unwrap()
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
    replica.wait_caught_up(&h.pg).await.unwrap();
    replica
}

/// Row versions a standby's snapshot still sees, vacuumed away on the primary
/// (in a table of the same database: the conflict is with the snapshot, not
/// with the tables it reads; `stop_events` itself is never updated).
async fn vacuum_what_the_standby_sees(h: &Harness) {
    let client = h.pg.client().await.unwrap();
    for sql in ["DELETE FROM churn", "VACUUM churn"] {
        client.batch_execute(sql).await.unwrap();
    }
}
