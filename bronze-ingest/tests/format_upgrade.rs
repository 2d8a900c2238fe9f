//! A lake written by the first release (commit bd9174e, the `main` the
//! commit-protocol issue was filed against) is read and carried on by this
//! release (#16 item 9): its manifests have none of the fields added since
//! (claims, write ids, checkpoints, source identity, added columns, row
//! identity state), its silver objects are named the old way and its key index
//! is the old file.
//!
//! The fixture under `tests/fixtures/lake-bd9174e/` was written by that
//! release's own binaries with [`make_fixture`] from deterministic demo data;
//! the test regenerates the same rows in a new PostgreSQL cluster, puts the
//! fixture into the S3 endpoint and runs today's binaries on it.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use lake_common::Lake;
use lake_testkit::demo;
use lake_testkit::error_line;
use object_store::ObjectStoreExt;
use support::*;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lake-bd9174e")
}

/// When the fixture's second round of rows ends (recorded by [`make_fixture`]:
/// that release's incremental scan only sees rows near its run time).
fn second_round_end() -> SystemTime {
    let s = std::fs::read_to_string(fixture_dir().join("SECOND_ROUND_END")).unwrap();
    SystemTime::UNIX_EPOCH + Duration::from_secs(s.trim().parse().unwrap())
}

/// The fixture's source rows: three days of demo data, then a second round
/// ending at `end`.
async fn generate_rounds(h: &Harness, round: u8, end: SystemTime) {
    let client = h.pg.client().await.unwrap();
    let opts = match round {
        1 => demo::GenerateOptions::new(1_500, 7).window(Duration::from_secs(3 * 86_400)),
        _ => demo::GenerateOptions::new(150, 8)
            .window_end(end)
            .window(Duration::from_secs(3_600)),
    };
    demo::generate_with(&client, &opts).await.unwrap();
}

/// Writes the fixture with the first release's binaries (built from bd9174e
/// into `OLD_BIN_DIR`): its bronze-ingest and silver-transform, twice, on a
/// local lake, as its demo did.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "writes the fixture: OLD_BIN_DIR=<bd9174e's target/debug> cargo test -p bronze-ingest --test format_upgrade -- --ignored make_fixture"]
async fn make_fixture() {
    let old = PathBuf::from(std::env::var("OLD_BIN_DIR").expect("OLD_BIN_DIR"));
    let h = Harness::new().await;
    let dir = fixture_dir();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut env = h.local_lake_env(&dir);
    env.push(("LOG_FORMAT".into(), "text".into()));
    let end = SystemTime::now();
    for round in 1..=2 {
        generate_rounds(&h, round, end).await;
        for job in ["bronze-ingest", "silver-transform"] {
            let out = std::process::Command::new(old.join(job))
                .env_clear()
                .envs(env.iter().cloned())
                .output()
                .unwrap();
            assert!(out.status.success(), "{job}: {}", stderr(&out));
        }
    }
    let end = end
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    std::fs::write(dir.join("SECOND_ROUND_END"), format!("{end}\n")).unwrap();
}

/// Every file of the fixture, by its path in the lake.
fn fixture_files() -> Vec<(String, PathBuf)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else if p.file_name().is_some_and(|n| n != "SECOND_ROUND_END") {
                let rel = p.strip_prefix(root).unwrap().to_str().unwrap().to_owned();
                out.push((rel, p));
            }
        }
    }
    let mut out = Vec::new();
    walk(&fixture_dir(), &fixture_dir(), &mut out);
    out.sort();
    out
}

/// SHA-256 of the object of every silver and quarantine partition, by partition.
async fn silver_partitions(lake: &Lake) -> BTreeMap<String, String> {
    use futures::TryStreamExt;
    let mut out = BTreeMap::new();
    for prefix in [
        "silver/stop_executions",
        "silver/_quarantine/stop_executions",
    ] {
        let listed: Vec<_> = lake
            .store()
            .list(Some(&object_store::path::Path::from(prefix)))
            .try_collect()
            .await
            .unwrap();
        for m in listed {
            let path = m.location.to_string();
            if !path.ends_with(".parquet") {
                continue;
            }
            let bytes = lake.get_bytes(&m.location).await.unwrap();
            let dir = path.rsplit_once('/').unwrap().0.to_owned();
            let sha = lake_common::parquet_io::sha256_hex(&bytes);
            assert!(
                out.insert(dir.clone(), sha).is_none(),
                "two objects in {dir}"
            );
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lake_written_by_the_first_release_is_read_and_carried_on() {
    let silver_bin = Path::new(BIN).with_file_name("silver-transform");
    assert!(
        silver_bin.exists(),
        "{} is not built: cargo build --bin silver-transform",
        silver_bin.display()
    );
    let h = Harness::new().await;
    let end = second_round_end();
    generate_rounds(&h, 1, end).await;
    generate_rounds(&h, 2, end).await;
    let lake = h.lake();
    let files = fixture_files();
    assert!(files.len() > 10, "the fixture is missing: {files:?}");
    for (rel, path) in &files {
        let bytes = std::fs::read(path).unwrap();
        lake.store()
            .put(&object_store::path::Path::from(rel.as_str()), bytes.into())
            .await
            .unwrap();
    }

    // The old log has no source identity: this cluster is a new one to it,
    // and the run stops until the operator adopts it.
    let out = h.run(&[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        error_line(&out).contains("--rebase"),
        "{}",
        error_line(&out)
    );
    // --rebase adopts it and doubles nothing: the old files hold every row.
    h.run_ok(&["--rebase"]);
    h.assert_lake_equals_postgres().await;
    h.run_ok(&["--verify"]);
    // And the lake goes on.
    generate_recent(&h.pg, 300, 9).await;
    h.run_ok(&[]);
    h.assert_lake_equals_postgres().await;

    // Silver carries on from the first release's state (its manifests, key
    // index and objects), and ends where a full recompute does.
    let silver = |args: &[&str]| {
        let out = std::process::Command::new(&silver_bin)
            .env_clear()
            .envs(h.env())
            .args(args)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "silver {args:?}: {}",
            stderr(&out)
        );
    };
    silver(&[]);
    let incremental = silver_partitions(&lake).await;
    silver(&["--full-refresh"]);
    assert_eq!(incremental, silver_partitions(&lake).await);
}
