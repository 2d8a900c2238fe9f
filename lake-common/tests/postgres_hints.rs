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
