//! The hint an operator reads for each way PostgreSQL ends a statement or a
//! session on a bound, provoked on a real server: the run's one line must name
//! the setting to raise, whichever of the server's codes arrives.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::time::Duration;

use lake_common::telemetry::error_text;
use lake_testkit::TestPostgres;

async fn text_of(err: tokio_postgres::Error) -> String {
    error_text(&anyhow::Error::new(err).context("reading stop_events"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_statement_past_the_timeout_names_the_setting() {
    let pg = TestPostgres::start().await.unwrap();
    let c = pg.client().await.unwrap();
    c.batch_execute("SET statement_timeout = '50ms'")
        .await
        .unwrap();
    let err = c.batch_execute("SELECT pg_sleep(5)").await.unwrap_err();
    let text = text_of(err).await;
    assert!(
        text.contains("by DJANGO_DB_STATEMENT_TIMEOUT (raise it"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_idle_in_its_transaction_past_the_timeout_names_the_setting() {
    let pg = TestPostgres::start().await.unwrap();
    let c = pg.client().await.unwrap();
    c.batch_execute("SET idle_in_transaction_session_timeout = '50ms'; BEGIN")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The server's FATAL arrives as the answer to the next query, or the
    // connection is already gone: both lines name the setting.
    let err = c.batch_execute("SELECT 1").await.unwrap_err();
    let text = text_of(err).await;
    assert!(
        text.contains("longer than DJANGO_DB_STATEMENT_TIMEOUT"),
        "{text}"
    );
}

/// Each way the server refuses a login, provoked on a real server, says what to
/// fix — from the server's SQLSTATE, not its (translatable) message.
#[tokio::test(flavor = "multi_thread")]
async fn each_refused_login_names_what_to_fix() {
    use lake_common::PostgresConfig;
    use lake_common::postgres::{explain_connect_error, pool};
    let pg = TestPostgres::start_native().await.unwrap();
    pg.create_role("lake_reader", "reader-pw", false)
        .await
        .unwrap();
    let refusal = |env: Vec<(String, String)>| async move {
        let config = PostgresConfig::from_vars(env).unwrap();
        let err = pool(&config, "hints")
            .unwrap()
            .get()
            .await
            .map(|_| ())
            .unwrap_err();
        explain_connect_error(&config, &err)
    };
    let with = |key: &str, value: &str| {
        let mut env = pg.env_as("lake_reader", "reader-pw");
        env.retain(|(k, _)| k != key);
        env.push((key.to_owned(), value.to_owned()));
        env
    };
    let text = refusal(with("DJANGO_DB_PASSWORD", "wrong")).await;
    assert!(
        text.contains("(check DJANGO_DB_PASSWORD: it must be the password of role lake_reader"),
        "{text}"
    );
    let text = refusal(with("DJANGO_DB_NAME", "nodb")).await;
    assert!(
        text.contains("(check DJANGO_DB_NAME: database nodb does not exist on"),
        "{text}"
    );
    assert!(!text.contains("db error: db error"), "{text}");

    let admin = pg.client().await.unwrap();
    let db = pg
        .env_as("lake_reader", "reader-pw")
        .into_iter()
        .find(|(k, _)| k == "DJANGO_DB_NAME")
        .unwrap()
        .1;
    admin
        .batch_execute(&format!(
            "REVOKE CONNECT ON DATABASE {db} FROM PUBLIC, lake_reader"
        ))
        .await
        .unwrap();
    let text = refusal(pg.env_as("lake_reader", "reader-pw")).await;
    assert!(
        text.contains(&format!(
            "role lake_reader may not connect to database {db}: as its owner, GRANT CONNECT ON DATABASE \"{db}\" TO \"lake_reader\""
        )),
        "{text}"
    );
    admin
        .batch_execute(&format!("GRANT CONNECT ON DATABASE {db} TO lake_reader"))
        .await
        .unwrap();

    // pg_hba.conf without a line for the role (the superuser keeps its own).
    let hba = format!(
        "local all all trust\nhost all {su} 127.0.0.1/32 scram-sha-256\n",
        su = pg.user()
    );
    std::fs::write(pg.data_dir().join("pg_hba.conf"), hba).unwrap();
    admin
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
    let mut text = String::new();
    for _ in 0..50 {
        text = refusal(pg.env_as("lake_reader", "reader-pw")).await;
        if text.contains("pg_hba.conf") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        text.contains(&format!(
            "has no line admitting role lake_reader to database {db} from this address: add one such as `host {db} lake_reader <pod CIDR> scram-sha-256`"
        )),
        "{text}"
    );
}
