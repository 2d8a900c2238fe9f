//! The harness of lake-maintain's tests: PostgreSQL with the demo schema, a
//! lake (moto, or a local directory for DuckDB), and bronze and silver run in
//! process as the CronJobs run them.
#![allow(dead_code)] // each test binary uses part of it

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::TryStreamExt;
use lake_common::{Config, Lake, LakeConfig};
use lake_maintain::{Options, gc};
use lake_testkit::{TestPostgres, TestS3, demo};
use object_store::path::Path;

pub struct Harness {
    pub pg: TestPostgres,
    pub s3: TestS3,
    pub bucket: String,
    /// The lake's variables: the bucket, or `LAKE_URL` of a local directory.
    pub lake_env: Vec<(String, String)>,
    /// bronze's look-back (the CronJob's 24 h unless a test goes further back).
    pub lookback: Duration,
    _dir: Option<tempfile::TempDir>,
}

impl Harness {
    /// PostgreSQL with the demo schema and its read-only role, and an empty bucket.
    pub async fn new() -> Self {
        let (pg, s3) = tokio::join!(TestPostgres::start(), TestS3::start());
        let (pg, s3) = (pg.expect("postgres"), s3.expect("moto"));
        demo::create_schema(&pg.client().await.unwrap())
            .await
            .unwrap();
        pg.create_role("lake_reader", "reader-pw", true)
            .await
            .unwrap();
        let bucket = s3.new_bucket().await.unwrap();
        let lake_env = s3.env(&bucket);
        Self {
            pg,
            s3,
            bucket,
            lake_env,
            lookback: Duration::from_secs(24 * 3600),
            _dir: None,
        }
    }

    /// The same with the lake in a local directory (what DuckDB reads).
    pub async fn local() -> Self {
        let mut h = Self::new().await;
        let dir = tempfile::tempdir().unwrap();
        h.lake_env = vec![(
            "LAKE_URL".to_owned(),
            format!("file://{}", dir.path().display()),
        )];
        h._dir = Some(dir);
        h
    }

    /// The local lake's directory.
    pub fn dir(&self) -> &std::path::Path {
        self._dir.as_ref().expect("a local lake").path()
    }

    pub fn lake(&self) -> Lake {
        Lake::open(&LakeConfig::from_vars(self.lake_env.clone()).unwrap()).unwrap()
    }

    /// Inserts `n` events of the last hours and runs bronze (both datasets)
    /// and silver once, as the CronJobs do.
    pub async fn batch(&self, n: u64, seed: u64) {
        self.batch_ending(n, seed, SystemTime::now(), Duration::from_secs(6 * 3600))
            .await;
    }

    /// [`Harness::batch`] with events spread over `window` before `end`.
    pub async fn batch_ending(&self, n: u64, seed: u64, end: SystemTime, window: Duration) {
        let opts = demo::GenerateOptions::new(n, seed)
            .window_end(end)
            .window(window);
        demo::generate_with(&self.pg.client().await.unwrap(), &opts)
            .await
            .unwrap();
        self.bronze().await;
        self.silver(silver_transform::Mode::Incremental).await;
    }

    pub fn bronze_options(&self, verify: bool) -> bronze_ingest::Options {
        bronze_ingest::Options {
            datasets: if verify {
                bronze_ingest::Datasets::Events
            } else {
                bronze_ingest::Datasets::All
            },
            dry_run: false,
            backfill_days: vec![],
            verify,
            rebase: false,
            accept_schema: false,
            horizon_warn: Duration::from_secs(3600),
            lookback: self.lookback,
            lease: Duration::from_secs(10),
        }
    }

    pub fn bronze_config(&self) -> Config {
        let mut env = self.pg.env_as("lake_reader", "reader-pw");
        env.extend(self.lake_env.iter().cloned());
        Config::from_vars(env).unwrap()
    }

    /// One bronze run; its exit status (4 when another run holds the batch).
    pub async fn bronze_status(&self) -> lake_common::ExitStatus {
        match bronze_ingest::run(&self.bronze_config(), &self.bronze_options(false)).await {
            Ok(s) => s,
            Err(e) => lake_common::telemetry::exit_status_of(e.as_ref()),
        }
    }

    pub async fn bronze(&self) {
        assert_eq!(self.bronze_status().await, lake_common::ExitStatus::Success);
    }

    /// `bronze-ingest --verify` over every day: bronze equals PostgreSQL.
    pub async fn assert_bronze_equals_postgres(&self) {
        let opts = self.bronze_options(true);
        let status = bronze_ingest::run(&self.bronze_config(), &opts)
            .await
            .unwrap();
        assert_eq!(
            status,
            lake_common::ExitStatus::Success,
            "--verify found a difference"
        );
    }

    /// `bronze-ingest --verify` of both datasets: the outbox's rows
    /// PostgreSQL holds are in bronze in their current version, too.
    pub async fn assert_both_datasets_equal_postgres(&self) {
        let mut opts = self.bronze_options(true);
        opts.datasets = bronze_ingest::Datasets::All;
        let status = bronze_ingest::run(&self.bronze_config(), &opts)
            .await
            .unwrap();
        assert_eq!(
            status,
            lake_common::ExitStatus::Success,
            "--verify of both datasets found a difference"
        );
    }

    /// silver rebuilt from all of bronze equals what its incremental runs
    /// built (the same files' checksums).
    pub async fn assert_full_refresh_changes_nothing(&self) {
        let lake = self.lake();
        let incremental = silver_rows(&lake).await;
        self.silver(silver_transform::Mode::FullRefresh).await;
        let full = silver_rows(&lake).await;
        assert!(
            full == incremental,
            "incremental == full recompute: the incremental run alone has {:?}, the full refresh alone {:?}",
            incremental.difference(&full).collect::<Vec<_>>(),
            full.difference(&incremental).collect::<Vec<_>>()
        );
    }

    pub async fn silver(
        &self,
        mode: silver_transform::Mode,
    ) -> silver_transform::report::RunReport {
        let opts = silver_transform::Options {
            mode,
            lease: Duration::from_secs(5),
            ..silver_transform::Options::default()
        };
        silver_transform::run(&self.lake(), &opts).await.unwrap()
    }
}

/// The latest entry of `bronze/events`' log.
pub async fn latest_events_entry(lake: &Lake) -> lake_common::manifest::BatchManifest {
    lake_common::manifest::BronzeLog::load(lake, lake_common::Dataset::BronzeEvents)
        .await
        .unwrap()
        .latest_entry()
        .unwrap()
        .manifest
}

/// Every object of the bucket.
pub async fn objects(lake: &Lake) -> BTreeSet<String> {
    lake.store()
        .list(None)
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap()
}

pub fn options(grace: Duration, dry_run: bool) -> Options {
    Options {
        dry_run,
        grace,
        upload_grace: grace,
        pushgateway: None,
        compact: false,
        bronze_retention_days: None,
        silver_retention_days: None,
        outbox_retention_days: None,
        reports_retention_days: lake_maintain::DEFAULT_REPORTS_DAYS,
    }
}

pub async fn plant(lake: &Lake, paths: &[&str]) {
    for p in paths {
        lake.put(&Path::from(*p), Bytes::from_static(b"orphan"))
            .await
            .unwrap();
    }
}

/// Every object the logs reference exists (the lake is whole).
pub async fn assert_references_exist(lake: &Lake) {
    let all = objects(lake).await;
    assert!(!gc::referenced(lake).await.unwrap().is_empty());
    let bronze = lake_common::manifest::BronzeLog::load(lake, lake_common::Dataset::BronzeEvents)
        .await
        .unwrap();
    for f in bronze.live_files() {
        assert!(
            all.contains(&f.file.path),
            "live bronze file {} is gone",
            f.file.path
        );
    }
    let layouts = silver_transform::manifest::layouts(lake).await.unwrap();
    // A layout replaced by re-sharding lost its files to the new one's full
    // refresh: only the live ones must be whole.
    for m in layouts
        .into_iter()
        .filter(|l| !l.stale)
        .flat_map(|l| l.shards)
    {
        let m = m.expect("a committed silver version");
        for p in silver_transform::partitions::read_all(lake, &m)
            .await
            .unwrap()
        {
            for f in [p.silver, p.quarantine].into_iter().flatten() {
                assert!(all.contains(&f.path), "silver file {} is gone", f.path);
            }
        }
        for s in &m.index_segments {
            assert!(
                all.contains(&s.file.path),
                "index segment {} is gone",
                s.file.path
            );
        }
        if let Some(pack) = &m.bloom_pack {
            assert!(
                all.contains(&pack.path),
                "filter pack {} is gone",
                pack.path
            );
        }
    }
}

/// Silver's content: per partition the checksums of its silver and quarantine
/// files (a recompute from the same bronze writes the same bytes).
pub async fn silver_rows(lake: &Lake) -> BTreeSet<(i64, String, Option<String>, Option<String>)> {
    let m = silver_transform::manifest::find(lake, silver_transform::key::Shard::ALL)
        .await
        .unwrap()
        .committed
        .unwrap();
    silver_transform::partitions::read_all(lake, &m)
        .await
        .unwrap()
        .into_iter()
        .map(|p| {
            (
                p.client_id,
                p.date.to_string(),
                p.silver.map(|f| f.sha256),
                p.quarantine.map(|f| f.sha256),
            )
        })
        .collect()
}
