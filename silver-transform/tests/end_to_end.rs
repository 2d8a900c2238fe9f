//! End to end: demo data → bronze-ingest → silver-transform, against a real
//! PostgreSQL and a real S3 endpoint, both jobs run as their binaries.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::process::Command;

use futures::TryStreamExt;
use lake_common::{Dataset, Lake, LakeConfig, parquet_io};
use lake_testkit::{TestPostgres, TestS3, demo};

fn run(bin: &std::path::Path, env: &[(String, String)]) -> String {
    let out = Command::new(bin)
        .env_clear()
        .envs(env.iter().cloned())
        .env("LOG_FORMAT", "json")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{} failed:\n{stdout}\n{}",
        bin.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Every object under silver/, with its ETag, to prove a run changed nothing.
async fn silver_objects(lake: &Lake) -> Vec<String> {
    let mut v: Vec<String> = lake
        .store()
        .list(Some(&object_store::path::Path::from("silver")))
        .map_ok(|m| format!("{} {:?} {}", m.location, m.e_tag, m.size))
        .try_collect()
        .await
        .unwrap();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_data_through_bronze_and_silver() {
    let silver = std::path::PathBuf::from(env!("CARGO_BIN_EXE_silver-transform"));
    let bronze = silver.with_file_name("bronze-ingest");
    assert!(
        bronze.exists(),
        "build bronze-ingest first (cargo build --workspace; nextest --workspace does)"
    );
    let (pg, s3) = tokio::join!(TestPostgres::start(), TestS3::start());
    let (pg, s3) = (pg.unwrap(), s3.unwrap());
    let client = pg.client().await.unwrap();
    demo::create_schema(&client).await.unwrap();
    demo::generate(&client, 20_000, 9).await.unwrap();
    pg.create_role("lake_reader", "pw", true).await.unwrap();
    let bucket = s3.new_bucket().await.unwrap();
    let env: Vec<(String, String)> = pg
        .env_as("lake_reader", "pw")
        .into_iter()
        .chain(s3.env(&bucket))
        .collect();
    let lake = Lake::open(&LakeConfig::from_vars(s3.env(&bucket)).unwrap()).unwrap();

    run(&bronze, &env);
    run(&silver, &env);

    let expected: i64 = client
        .query_one(
            "SELECT count(DISTINCT coalesce(nullif(execution_token, ''), 'operation:' || operation_id)) FROM stop_events
             WHERE event_type IN ('STOP_TRIGGERED','EXECUTION_SUBMITTED','EXECUTED','FAILED','BLOCKED')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let files: Vec<object_store::path::Path> = lake
        .store()
        .list(Some(&Dataset::SilverStopExecutions.root()))
        .try_filter(|m| std::future::ready(m.location.as_ref().ends_with(".parquet")))
        .map_ok(|m| m.location)
        .try_collect()
        .await
        .unwrap();
    let quarantined: Vec<object_store::path::Path> = lake
        .store()
        .list(Some(&Dataset::QuarantineStopExecutions.root()))
        .try_filter(|m| std::future::ready(m.location.as_ref().ends_with(".parquet")))
        .map_ok(|m| m.location)
        .try_collect()
        .await
        .unwrap();
    let rows = parquet_io::count_rows(&lake, files).await.unwrap();
    let q = parquet_io::count_rows(&lake, quarantined).await.unwrap();
    assert_eq!(
        rows + q,
        expected as u64,
        "silver + quarantine = distinct execution keys ({rows} + {q})"
    );
    assert!(rows > 0);

    // No new bronze batch: a second silver run changes nothing.
    let before = silver_objects(&lake).await;
    run(&silver, &env);
    assert_eq!(silver_objects(&lake).await, before);
}
