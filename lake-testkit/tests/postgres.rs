//! `TestPostgres`: start-up, roles and passwords, clean-up on drop.

use std::time::Duration;

use lake_testkit::{Backend, TestPostgres, demo};
use tokio_postgres::error::SqlState;

/// The server is where `LAKE_TESTKIT` says: natively it answers on loopback;
/// in a container the connection arrives through the engine's network, so
/// the server's own address is the container's. Dropping it stops it, on
/// either backend.
#[tokio::test]
async fn a_server_runs_on_the_backend_lake_testkit_names_and_stops_on_drop() {
    let pg = TestPostgres::start().await.unwrap();
    let addr: String = pg
        .client()
        .await
        .unwrap()
        .query_one("SELECT host(inet_server_addr())", &[])
        .await
        .unwrap()
        .get(0);
    match Backend::current().unwrap() {
        Backend::Native => assert_eq!(addr, "127.0.0.1", "{pg:?}"),
        Backend::Containers => assert_ne!(addr, "127.0.0.1", "{pg:?}"),
    }
    let config = pg.config();
    drop(pg);
    assert!(
        config.connect(tokio_postgres::NoTls).await.is_err(),
        "the server still accepts connections after drop"
    );
}

#[tokio::test]
async fn drop_stops_the_server_and_removes_the_data_dir() {
    let pg = TestPostgres::start_native().await.unwrap();
    let client = pg.client().await.unwrap();
    let db: String = client
        .query_one("SELECT current_database()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(db, "robson");
    let tz: String = client.query_one("SHOW TimeZone", &[]).await.unwrap().get(0);
    assert_eq!(tz, "UTC");

    let port = pg.port();
    let data_dir = pg.data_dir().to_owned();
    let cluster_dir = data_dir.parent().unwrap().to_owned();
    assert!(data_dir.join("PG_VERSION").exists());
    drop(pg);

    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err(),
        "port {port} still accepts connections after drop"
    );
    assert!(
        !cluster_dir.exists(),
        "{} was not removed",
        cluster_dir.display()
    );
    // The old connection notices the server is gone instead of hanging.
    let result =
        tokio::time::timeout(Duration::from_secs(5), client.simple_query("SELECT 1")).await;
    assert!(
        matches!(result, Ok(Err(_))),
        "query on a stopped server: {result:?}"
    );
}

#[tokio::test]
async fn roles_passwords_and_read_only_grants() {
    let pg = TestPostgres::start().await.unwrap();
    let admin = pg.client().await.unwrap();
    demo::create_schema(&admin).await.unwrap();
    demo::generate(&admin, 100, 1).await.unwrap();
    admin
        .batch_execute("CREATE TABLE private_notes (note text)")
        .await
        .unwrap();

    // A password with a quote, to prove the statement is quoted properly.
    pg.create_role("lake_ingest", "s3cr'et pw", true)
        .await
        .unwrap();
    pg.create_role("nobody_special", "pw", false).await.unwrap();

    let ingest = pg.connect_as("lake_ingest", "s3cr'et pw").await.unwrap();
    let n: i64 = ingest
        .query_one("SELECT count(*) FROM stop_events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 100);
    ingest
        .query_one("SELECT count(*) FROM outbox", &[])
        .await
        .unwrap();
    // What bronze needs besides SELECT is available to a plain role.
    ingest
        .query_one(
            "SELECT pg_snapshot_xmin(pg_current_snapshot()), now(), (SELECT system_identifier FROM pg_control_system())",
            &[],
        )
        .await
        .unwrap();
    let denied = |err: tokio_postgres::Error| err.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE);
    assert!(denied(
        ingest
            .execute("DELETE FROM stop_events", &[])
            .await
            .unwrap_err()
    ));
    assert!(denied(
        ingest
            .query("SELECT * FROM private_notes", &[])
            .await
            .unwrap_err()
    ));

    let other = pg.connect_as("nobody_special", "pw").await.unwrap();
    assert!(denied(
        other
            .query("SELECT 1 FROM stop_events LIMIT 1", &[])
            .await
            .unwrap_err()
    ));

    let wrong = pg.connect_as("lake_ingest", "wrong").await.unwrap_err();
    let code = wrong
        .chain()
        .find_map(|e| e.downcast_ref::<tokio_postgres::Error>())
        .and_then(|e| e.code());
    assert_eq!(code, Some(&SqlState::INVALID_PASSWORD), "{wrong:#}");

    assert!(
        !format!("{pg:?}").contains(pg.password()),
        "Debug shows the password"
    );
    let env = pg.env();
    let get = |k: &str| {
        env.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(get("DJANGO_DB_HOST"), Some("127.0.0.1"));
    assert_eq!(get("DJANGO_DB_PORT"), Some(pg.port().to_string().as_str()));
    assert_eq!(get("DJANGO_DB_NAME"), Some("robson"));
    assert_eq!(get("DJANGO_DB_USER"), Some(pg.user()));
    assert_eq!(get("DJANGO_DB_PASSWORD"), Some(pg.password()));
    assert_eq!(get("DJANGO_DB_SSLMODE"), Some("disable"));
}
