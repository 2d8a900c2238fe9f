//! Shared set-up of the bronze-ingest integration tests: a real PostgreSQL, a real
//! S3 endpoint (moto over HTTP), the binary run as a child process, and readers of
//! what the lake committed.
//!
//! With `LAKE_TEST_STORE=no-conditional-writes` every test runs against a store
//! that ignores conditional writes (the fault proxy strips `If-None-Match` and
//! `If-Match` from every request) with `S3_CONDITIONAL_WRITES=disabled`: the
//! runs then serialise on PostgreSQL advisory locks (#16 item 2). `just
//! test-fallback` runs the exactly-once suites that way.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::process::{Command, Output, Stdio};

use arrow::array::{Array, StringArray};
use lake_common::manifest::{self, BatchManifest, BatchState};
use lake_common::{Dataset, Lake, LakeConfig, parquet_io};
use lake_testkit::{TestPostgres, TestS3, demo};
use object_store::path::Path;

pub const BIN: &str = env!("CARGO_BIN_EXE_bronze-ingest");

pub struct Harness {
    pub pg: TestPostgres,
    pub s3: TestS3,
    pub bucket: String,
    pub extra_env: Vec<(String, String)>,
    /// The proxy of the no-conditional-writes mode (kept alive with the harness).
    pub fallback: Option<lake_testkit::FaultProxy>,
}

/// Whether the suite runs against a store without conditional writes.
pub fn fallback_mode() -> bool {
    std::env::var("LAKE_TEST_STORE").is_ok_and(|v| v == "no-conditional-writes")
}

impl Harness {
    /// PostgreSQL with the demo schema (no rows) and an empty bucket.
    pub async fn new() -> Self {
        let (pg, s3) = tokio::join!(TestPostgres::start(), TestS3::start());
        Self::with(pg.expect("postgres"), s3.expect("moto")).await
    }

    /// Like [`new`](Self::new), with a native PostgreSQL server: for tests
    /// that stop, restart, replicate, upgrade or reconfigure it through its
    /// files (lake-testkit's container backend has none of these).
    pub async fn native() -> Self {
        let (pg, s3) = tokio::join!(TestPostgres::start_native(), TestS3::start());
        Self::with(pg.expect("postgres"), s3.expect("moto")).await
    }

    async fn with(pg: TestPostgres, s3: TestS3) -> Self {
        let client = pg.client().await.unwrap();
        demo::create_schema(&client).await.unwrap();
        pg.create_role("lake_reader", "reader-pw", true)
            .await
            .unwrap();
        let bucket = s3.new_bucket().await.unwrap();
        let mut extra_env = vec![];
        let fallback = fallback_mode().then(|| {
            let proxy = lake_testkit::FaultProxy::start(&s3, 1).unwrap();
            proxy.add_rule(lake_testkit::Rule::new(
                lake_testkit::Fault::StripConditionalHeaders,
            ));
            extra_env.push(("AWS_ENDPOINT".into(), proxy.endpoint()));
            extra_env.push(("S3_CONDITIONAL_WRITES".into(), "disabled".into()));
            proxy
        });
        Self {
            pg,
            s3,
            bucket,
            extra_env,
            fallback,
        }
    }

    /// The job's environment: the read-only role and the bucket.
    pub fn env(&self) -> Vec<(String, String)> {
        self.env_for(&self.pg)
    }

    /// [`Harness::env`] pointed at another server (a replica, a restored copy)
    /// that has the same read-only role.
    pub fn env_for(&self, pg: &TestPostgres) -> Vec<(String, String)> {
        let mut env = pg.env_as("lake_reader", "reader-pw");
        env.extend(self.s3.env(&self.bucket));
        env.push(("LOG_FORMAT".into(), "json".into()));
        env.push(("RUST_LOG".into(), "info".into()));
        env.extend(self.extra_env.iter().cloned());
        env
    }

    /// [`Harness::env`] with the lake in the local directory `dir` instead of
    /// the bucket (for readers such as DuckDB that read local files only).
    pub fn local_lake_env(&self, dir: &std::path::Path) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = self
            .env_for(&self.pg)
            .into_iter()
            .filter(|(k, _)| !k.starts_with("S3_") && !k.starts_with("AWS_"))
            .collect();
        env.push(("LAKE_URL".into(), format!("file://{}", dir.display())));
        env
    }

    pub fn lake(&self) -> Lake {
        Lake::open(&LakeConfig::from_vars(self.s3.env(&self.bucket)).unwrap()).unwrap()
    }

    /// The binary with a clean environment plus `env`.
    pub fn command_with(&self, env: &[(String, String)], args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.env_clear().envs(env.iter().cloned()).args(args);
        cmd.stdin(Stdio::null());
        cmd
    }

    pub fn command(&self, args: &[&str]) -> Command {
        self.command_with(&self.env(), args)
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.run_with(&self.env(), args)
    }

    /// Runs the binary with `env` and echoes what it printed (shown on failure).
    pub fn run_with(&self, env: &[(String, String)], args: &[&str]) -> Output {
        let out = self
            .command_with(env, args)
            .output()
            .expect("spawn bronze-ingest");
        eprintln!(
            "bronze-ingest {args:?} -> {:?}\nstdout:\n{}\nstderr:\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Runs with text logs, as on a terminal: stdout holds the human summary.
    pub fn run_text(&self, args: &[&str]) -> Output {
        let mut env = self.env();
        env.push(("LOG_FORMAT".into(), "text".into()));
        self.run_with(&env, args)
    }

    pub fn run_text_ok(&self, args: &[&str]) -> Output {
        let out = self.run_text(args);
        assert_eq!(out.status.code(), Some(0), "bronze-ingest {args:?} failed");
        out
    }

    pub fn run_ok(&self, args: &[&str]) -> Output {
        let out = self.run(args);
        assert_eq!(out.status.code(), Some(0), "bronze-ingest {args:?} failed");
        out
    }

    pub async fn manifests(&self, dataset: Dataset) -> Vec<BatchManifest> {
        manifest::read_all(&self.lake(), dataset).await.unwrap()
    }

    /// Every key column value in the committed (non-superseded) files, in file order.
    pub async fn committed_keys(&self, dataset: Dataset, key: &str) -> Vec<String> {
        let lake = self.lake();
        let ms = self.manifests(dataset).await;
        let mut keys = Vec::new();
        for f in manifest::live_files(&ms) {
            for b in parquet_io::read_all(&lake, &Path::from(f.path.as_str()))
                .await
                .unwrap()
            {
                let col = b
                    .column_by_name(key)
                    .unwrap()
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .unwrap()
                    .clone();
                keys.extend(col.iter().flatten().map(str::to_owned));
            }
        }
        keys
    }

    /// Data files present in the bucket (manifests and reports excluded).
    pub async fn data_files(&self, dataset: Dataset) -> Vec<String> {
        use futures::TryStreamExt;
        let lake = self.lake();
        let mut v: Vec<String> = lake
            .store()
            .list(Some(&dataset.root()))
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .unwrap();
        v.retain(|p| p.ends_with(".parquet"));
        v.sort();
        v
    }

    /// The run reports bronze-ingest wrote.
    pub async fn run_reports(&self) -> Vec<String> {
        use futures::TryStreamExt;
        self.lake()
            .store()
            .list(Some(&lake_common::paths::run_reports_dir("bronze-ingest")))
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .unwrap()
    }

    pub async fn pg_count(&self, sql: &str) -> i64 {
        self.pg
            .client()
            .await
            .unwrap()
            .query_one(sql, &[])
            .await
            .unwrap()
            .get(0)
    }

    /// Asserts the committed lake equals PostgreSQL: same event ids, no duplicates,
    /// no data file outside the manifests.
    pub async fn assert_lake_equals_postgres(&self) {
        let client = self.pg.client().await.unwrap();
        let pg_ids: Vec<String> = client
            .query("SELECT event_id::text FROM stop_events ORDER BY 1", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut lake_ids = self.committed_keys(Dataset::BronzeEvents, "event_id").await;
        let n = lake_ids.len();
        lake_ids.sort();
        lake_ids.dedup();
        assert_eq!(n, lake_ids.len(), "duplicates in the committed lake");
        assert_eq!(lake_ids, pg_ids, "lake and PostgreSQL differ");
        for ds in [Dataset::BronzeEvents, Dataset::BronzeOutbox] {
            let ms = self.manifests(ds).await;
            assert!(
                ms.iter().all(|m| m.state == BatchState::Committed),
                "a batch is still pending"
            );
            let live: Vec<String> = manifest::live_files(&ms)
                .into_iter()
                .map(|f| f.path)
                .collect();
            let mut live_sorted = live.clone();
            live_sorted.sort();
            assert_eq!(
                self.data_files(ds).await,
                live_sorted,
                "files outside the manifests in {ds}"
            );
        }
    }

    /// Every live file of the committed manifests has the size and SHA-256 its
    /// manifest records (no late write landed on a committed object).
    pub async fn assert_checksums_match(&self, dataset: Dataset) {
        let lake = self.lake();
        for f in manifest::live_files(&self.manifests(dataset).await) {
            let bytes = lake.get_bytes(&Path::from(f.path.as_str())).await.unwrap();
            assert_eq!(bytes.len() as u64, f.bytes, "size of {}", f.path);
            assert_eq!(
                parquet_io::sha256_hex(&bytes),
                f.sha256,
                "checksum of {}",
                f.path
            );
        }
    }

    /// sha256 per data file currently in the bucket.
    pub async fn checksums(&self, dataset: Dataset) -> BTreeMap<String, String> {
        let lake = self.lake();
        let mut out = BTreeMap::new();
        for p in self.data_files(dataset).await {
            let bytes = lake.get_bytes(&Path::from(p.as_str())).await.unwrap();
            out.insert(p, parquet_io::sha256_hex(&bytes));
        }
        out
    }
}

/// The run report of a run's JSON summary line.
pub fn report_of(out: &std::process::Output) -> serde_json::Value {
    let line = stdout(out)
        .lines()
        .find(|l| l.contains("\"Run summary\""))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no run summary:\n{}", stdout(out)));
    serde_json::from_str::<serde_json::Value>(&line).unwrap()["report"].clone()
}

/// One dataset's entry of a run report.
pub fn dataset(report: &serde_json::Value, name: &str) -> serde_json::Value {
    report["datasets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["dataset"].as_str().is_some_and(|d| d.ends_with(name)))
        .unwrap_or_else(|| panic!("no {name} in {report}"))
        .clone()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Inserts `n` realistic events timestamped around now (so they fall inside the
/// incremental look-back window).
pub async fn generate_recent(pg: &TestPostgres, n: u64, seed: u64) {
    let client = pg.client().await.unwrap();
    let opts = demo::GenerateOptions::new(n, seed)
        .window_end(std::time::SystemTime::now())
        .window(std::time::Duration::from_secs(6 * 3600));
    demo::generate_with(&client, &opts).await.unwrap();
}

/// Fills `stop_events` with enough rows for files of several S3 parts (5 MiB),
/// so an export can be interrupted mid-upload ([`Harness::spawn_slow_export`]).
pub async fn generate_big_day(pg: &TestPostgres, seed: u64) {
    let client = pg.client().await.unwrap();
    let opts = demo::GenerateOptions::new(300_000, seed)
        .window_end(std::time::SystemTime::now())
        .window(std::time::Duration::from_secs(20 * 3600));
    demo::generate_with(&client, &opts).await.unwrap();
}

impl Harness {
    /// Starts `bronze-ingest --dataset events` against `pg` (the harness's
    /// server when `None`) through a proxy that holds every S3 part 400 ms, and
    /// returns once the first part is on the wire: the COPY is then running, for
    /// a fault to hit it. Later runs keep the proxy (`clear_rules` lifts the delay).
    pub fn spawn_slow_export(
        &mut self,
        pg: Option<&TestPostgres>,
    ) -> (lake_testkit::FaultProxy, std::process::Child) {
        use lake_testkit::{Fault, FaultProxy, Rule, S3Op};
        let proxy = FaultProxy::start(&self.s3, 9).unwrap();
        self.extra_env
            .push(("AWS_ENDPOINT".into(), proxy.endpoint()));
        proxy.add_rule(
            Rule::new(Fault::Delay(std::time::Duration::from_millis(400))).op(S3Op::UploadPart),
        );
        let env = match pg {
            Some(pg) => self.env_for(pg),
            None => self.env(),
        };
        let run = self
            .command_with(&env, &["--dataset", "events"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !proxy.log().iter().any(|r| r.op == S3Op::UploadPart) {
            assert!(
                std::time::Instant::now() < deadline,
                "no multipart upload started:\n{}",
                proxy.log_text()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        (proxy, run)
    }
}
