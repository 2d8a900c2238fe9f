//! Shared set-up of the silver-transform integration tests: a real S3 endpoint
//! (moto over HTTP), bronze batches written exactly as bronze-ingest writes them
//! (same schema, sort order, file names, committed manifests), and readers of
//! what silver published.
//!
//! With `LAKE_TEST_STORE=no-conditional-writes` (`just test-fallback`) silver
//! runs as it does on a store that ignores conditional writes: through a proxy
//! that strips `If-None-Match` and `If-Match`, with
//! `S3_CONDITIONAL_WRITES=disabled`, holding its shard's PostgreSQL advisory
//! lock (#16 item 2). The bronze fixtures keep writing straight to the store,
//! as bronze-ingest would, so every test checks the same lake either way.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Decimal128Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{Decimal128Type, Int32Type, Int64Type, TimestampMicrosecondType};
use chrono::{DateTime, NaiveDate, Utc};
use futures::TryStreamExt;
use lake_common::manifest::{self, BatchManifest, BatchState, DataFile, MANIFEST_FORMAT};
use lake_common::parquet_io::{self, FileWriter};
use lake_common::schema::{AddedColumn, ExportSchema, PgType, STOP_EVENTS};
use lake_common::{Dataset, Lake, LakeConfig, Partition};
use lake_testkit::TestS3;
use object_store::ObjectStoreExt;
use object_store::path::Path;
use silver_transform::report::RunReport;
use silver_transform::{Mode, Options};

pub const BIN: &str = env!("CARGO_BIN_EXE_silver-transform");

/// A moto server and one bucket, opened as a lake.
pub struct TestLake {
    pub s3: TestS3,
    pub bucket: String,
    pub lake: Lake,
    /// The no-conditional-writes mode's parts (see the module docs).
    pub fallback: Option<Fallback>,
}

/// What silver runs through without conditional writes: the proxy that strips
/// them and the PostgreSQL server of the advisory locks.
pub struct Fallback {
    pub proxy: lake_testkit::FaultProxy,
    pub pg: lake_testkit::TestPostgres,
}

/// Whether the suite runs against a store without conditional writes.
pub fn fallback_mode() -> bool {
    std::env::var("LAKE_TEST_STORE").is_ok_and(|v| v == "no-conditional-writes")
}

/// For [`run`]: each test lake's counterpart through the proxy, with the
/// database settings of its locks (by the lake's description).
static FALLBACK_LAKES: std::sync::Mutex<BTreeMap<String, (Lake, lake_common::PostgresConfig)>> =
    std::sync::Mutex::new(BTreeMap::new());

impl TestLake {
    pub async fn new() -> Self {
        lake_common::telemetry::init(lake_common::telemetry::LogFormat::Text);
        let s3 = TestS3::start().await.expect("moto_server");
        let bucket = s3.new_bucket().await.unwrap();
        let lake = Lake::open(&LakeConfig::from_vars(s3.env(&bucket)).unwrap()).unwrap();
        let fallback = if fallback_mode() {
            let proxy = lake_testkit::FaultProxy::start(&s3, 1).unwrap();
            proxy.add_rule(lake_testkit::Rule::new(
                lake_testkit::Fault::StripConditionalHeaders,
            ));
            let pg = lake_testkit::TestPostgres::start().await.unwrap();
            Some(Fallback { proxy, pg })
        } else {
            None
        };
        let t = Self {
            s3,
            bucket,
            lake,
            fallback,
        };
        t.register(&t.lake, &t.bucket);
        t
    }

    /// Another empty bucket on the same server.
    pub async fn other_bucket(&self) -> Lake {
        let bucket = self.s3.new_bucket().await.unwrap();
        let lake = Lake::open(&LakeConfig::from_vars(self.s3.env(&bucket)).unwrap()).unwrap();
        self.register(&lake, &bucket);
        lake
    }

    /// In the fallback mode, remembers how silver reaches `lake` (for [`run`]).
    fn register(&self, lake: &Lake, bucket: &str) {
        if let Some(f) = &self.fallback {
            let env = self.fallback_env(bucket);
            let silver_lake = Lake::open(&LakeConfig::from_vars(env.clone()).unwrap()).unwrap();
            assert!(!silver_lake.capabilities().create_if_absent);
            let pg = lake_common::PostgresConfig::from_vars(f.pg.env()).unwrap();
            FALLBACK_LAKES
                .lock()
                .unwrap()
                .insert(lake.description().to_owned(), (silver_lake, pg));
        }
    }

    /// The store variables silver runs with (through the proxy in the fallback mode).
    fn fallback_env(&self, bucket: &str) -> Vec<(String, String)> {
        let mut env = self.s3.env(bucket);
        if let Some(f) = &self.fallback {
            env.retain(|(k, _)| k != "AWS_ENDPOINT");
            env.push(("AWS_ENDPOINT".into(), f.proxy.endpoint()));
            env.push(("S3_CONDITIONAL_WRITES".into(), "disabled".into()));
            env.extend(f.pg.env());
        }
        env
    }

    /// The job's environment for the binary.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = self.fallback_env(&self.bucket);
        env.push(("LOG_FORMAT".into(), "json".into()));
        env.push(("RUST_LOG".into(), "info,silver_transform=debug".into()));
        env
    }

    pub fn command(&self, args: &[&str], extra_env: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.env_clear()
            .envs(self.env())
            .envs(
                extra_env
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string())),
            )
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    /// [`run_bin`](Self::run_bin), which must exit 0.
    pub fn run_bin_ok(&self, args: &[&str], extra_env: &[(&str, &str)]) -> Output {
        let out = self.run_bin(args, extra_env);
        assert_eq!(
            out.status.code(),
            Some(0),
            "silver-transform {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    pub fn run_bin(&self, args: &[&str], extra_env: &[(&str, &str)]) -> Output {
        let out = self
            .command(args, extra_env)
            .output()
            .expect("spawn silver-transform");
        eprintln!(
            "silver-transform {args:?} -> {:?}\nstderr:\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

/// Runs silver in-process.
pub async fn run(lake: &Lake, opts: &Options) -> RunReport {
    match try_run(lake, opts).await {
        Ok(r) => r,
        Err(e) => panic!("silver run failed: {e:#}"),
    }
}

/// A run in-process, as the binary does it: in the fallback mode through the
/// proxy and under the shard's advisory lock.
pub async fn try_run(lake: &Lake, opts: &Options) -> anyhow::Result<RunReport> {
    let fallback = FALLBACK_LAKES
        .lock()
        .unwrap()
        .get(lake.description())
        .cloned();
    match fallback {
        Some((silver_lake, pg)) if !opts.dry_run => {
            let mut opts = opts.clone();
            let _lock = silver_transform::lock_shard(&pg, &mut opts).await?;
            silver_transform::run(&silver_lake, &opts).await
        }
        _ => silver_transform::run(lake, opts).await,
    }
}

pub fn incremental() -> Options {
    Options {
        lease: std::time::Duration::from_secs(5),
        ..Options::default()
    }
}

pub fn full_refresh() -> Options {
    Options {
        mode: Mode::FullRefresh,
        ..incremental()
    }
}

// ---------------------------------------------------------------------------
// Bronze events.

/// The canonical id of test event `n`.
pub fn uuid(n: u64) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}

/// Microseconds of an RFC 3339 timestamp.
pub fn ts(s: &str) -> i64 {
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .with_timezone(&Utc)
        .timestamp_micros()
}

/// A decimal literal as an integer at `scale`.
pub fn dec(s: &str, scale: u32) -> i128 {
    let neg = s.starts_with('-');
    let s = s.trim_start_matches('-');
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    assert!(
        frac.len() <= scale as usize,
        "{s} has more than {scale} decimals"
    );
    let digits = format!("{int}{frac:0<width$}", width = scale as usize);
    let v: i128 = digits.parse().unwrap();
    if neg { -v } else { v }
}

/// One `stop_events` row.
#[derive(Debug, Clone, PartialEq)]
pub struct Ev {
    pub event_id: String,
    pub event_seq: Option<i64>,
    pub occurred_at: i64,
    pub operation_id: i64,
    pub client_id: i64,
    pub symbol: String,
    pub event_type: String,
    pub trigger_price: Option<i128>,
    pub stop_price: Option<i128>,
    pub quantity: Option<i128>,
    pub side: Option<String>,
    pub execution_token: Option<String>,
    pub exchange_order_id: Option<String>,
    pub fill_price: Option<i128>,
    pub slippage_pct: Option<i128>,
    pub source: String,
    pub error_message: Option<String>,
    pub retry_count: i32,
}

impl Ev {
    /// Event `n` of `event_type` at `at` (RFC 3339), with neutral defaults.
    pub fn new(n: u64, at: &str, token: Option<&str>, event_type: &str) -> Self {
        Self::at_micros(n, ts(at), token, event_type)
    }

    pub fn at_micros(n: u64, at: i64, token: Option<&str>, event_type: &str) -> Self {
        Self {
            event_id: uuid(n),
            event_seq: None,
            occurred_at: at,
            operation_id: 1,
            client_id: 1,
            symbol: "BTCUSDC".into(),
            event_type: event_type.into(),
            trigger_price: None,
            stop_price: None,
            quantity: None,
            side: None,
            execution_token: token.map(Into::into),
            exchange_order_id: None,
            fill_price: None,
            slippage_pct: None,
            source: "ws".into(),
            error_message: None,
            retry_count: 0,
        }
    }

    pub fn op(mut self, op: i64) -> Self {
        self.operation_id = op;
        self
    }
    pub fn client(mut self, c: i64) -> Self {
        self.client_id = c;
        self
    }
    pub fn seq(mut self, s: i64) -> Self {
        self.event_seq = Some(s);
        self
    }
    pub fn symbol(mut self, s: &str) -> Self {
        self.symbol = s.into();
        self
    }
    pub fn side(mut self, s: &str) -> Self {
        self.side = Some(s.into());
        self
    }
    pub fn stop(mut self, v: &str) -> Self {
        self.stop_price = Some(dec(v, 8));
        self
    }
    pub fn trigger(mut self, v: &str) -> Self {
        self.trigger_price = Some(dec(v, 8));
        self
    }
    pub fn qty(mut self, v: &str) -> Self {
        self.quantity = Some(dec(v, 8));
        self
    }
    pub fn fill(mut self, v: &str) -> Self {
        self.fill_price = Some(dec(v, 8));
        self
    }
    pub fn slip(mut self, v: &str) -> Self {
        self.slippage_pct = Some(dec(v, 4));
        self
    }
    pub fn exch(mut self, v: &str) -> Self {
        self.exchange_order_id = Some(v.into());
        self
    }
    pub fn error(mut self, v: &str) -> Self {
        self.error_message = Some(v.into());
        self
    }
    pub fn source(mut self, v: &str) -> Self {
        self.source = v.into();
        self
    }
    pub fn retry(mut self, r: i32) -> Self {
        self.retry_count = r;
        self
    }
    pub fn date(&self) -> NaiveDate {
        DateTime::from_timestamp_micros(self.occurred_at)
            .unwrap()
            .date_naive()
    }
}

/// The columns of batch `batch`: even batches also hold two columns the
/// contract does not name, as bronze writes them after a Django migration
/// added them (SPEC §5.8), so every silver test reads old and new files together.
fn export_schema(batch: u64) -> ExportSchema {
    let added = |name: &str, pg_type: &str, stored_as| AddedColumn {
        name: name.into(),
        pg_type: pg_type.into(),
        stored_as,
    };
    ExportSchema {
        table: &STOP_EVENTS,
        added: if batch.is_multiple_of(2) {
            vec![
                added("venue", "text", PgType::Text),
                added("fee", "numeric(12,4)", PgType::Numeric(12, 4)),
            ]
        } else {
            vec![]
        },
    }
}

fn bronze_batch(events: &[&Ev], batch: u64, ingested_at: i64) -> RecordBatch {
    let schema = export_schema(batch).arrow_schema();
    let n = events.len();
    let s = |f: &dyn Fn(&Ev) -> Option<String>| -> ArrayRef {
        Arc::new(StringArray::from_iter(events.iter().map(|e| f(e))))
    };
    let d = |f: &dyn Fn(&Ev) -> Option<i128>, p: u8, sc: i8| -> ArrayRef {
        Arc::new(
            Decimal128Array::from_iter(events.iter().map(|e| f(e)))
                .with_precision_and_scale(p, sc)
                .unwrap(),
        )
    };
    let cols: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .map(|f| -> ArrayRef {
            match f.name().as_str() {
                "event_id" => s(&|e| Some(e.event_id.clone())),
                "event_seq" => Arc::new(Int64Array::from_iter(events.iter().map(|e| e.event_seq))),
                "occurred_at" => Arc::new(
                    TimestampMicrosecondArray::from_iter_values(
                        events.iter().map(|e| e.occurred_at),
                    )
                    .with_timezone("UTC"),
                ),
                "operation_id" => Arc::new(Int64Array::from_iter_values(
                    events.iter().map(|e| e.operation_id),
                )),
                "client_id" => Arc::new(Int64Array::from_iter_values(
                    events.iter().map(|e| e.client_id),
                )),
                "symbol" => s(&|e| Some(e.symbol.clone())),
                "event_type" => s(&|e| Some(e.event_type.clone())),
                "trigger_price" => d(&|e| e.trigger_price, 20, 8),
                "stop_price" => d(&|e| e.stop_price, 20, 8),
                "quantity" => d(&|e| e.quantity, 20, 8),
                "side" => s(&|e| e.side.clone()),
                "execution_token" => s(&|e| e.execution_token.clone()),
                "payload_json" => s(&|e| Some(format!("{{\"event\":\"{}\"}}", e.event_id))),
                "request_payload_hash" => s(&|_| None),
                "exchange_order_id" => s(&|e| e.exchange_order_id.clone()),
                "fill_price" => d(&|e| e.fill_price, 20, 8),
                "slippage_pct" => d(&|e| e.slippage_pct, 10, 4),
                "source" => s(&|e| Some(e.source.clone())),
                "error_message" => s(&|e| e.error_message.clone()),
                "retry_count" => Arc::new(Int32Array::from_iter_values(
                    events.iter().map(|e| e.retry_count),
                )),
                "_batch" => Arc::new(Int64Array::from_iter_values(std::iter::repeat_n(
                    batch as i64,
                    n,
                ))),
                "_ingested_at" => Arc::new(
                    TimestampMicrosecondArray::from_iter_values(std::iter::repeat_n(
                        ingested_at,
                        n,
                    ))
                    .with_timezone("UTC"),
                ),
                "venue" => s(&|e| Some(format!("v{}", e.client_id))),
                "fee" => d(&|e| Some(e.client_id as i128 * 10_000), 12, 4),
                other => panic!("unknown bronze column {other}"),
            }
        })
        .collect();
    RecordBatch::try_new(schema, cols).unwrap()
}

/// Writes the files of one batch (one file per day, rows sorted by
/// `(occurred_at, event_id)` as bronze-ingest sorts them).
async fn write_files(lake: &Lake, batch: u64, events: &[Ev]) -> Vec<DataFile> {
    let mut by_day: BTreeMap<NaiveDate, Vec<&Ev>> = BTreeMap::new();
    for e in events {
        by_day.entry(e.date()).or_default().push(e);
    }
    let mut files = Vec::new();
    for (date, mut evs) in by_day {
        evs.sort_by(|a, b| (a.occurred_at, &a.event_id).cmp(&(b.occurred_at, &b.event_id)));
        let path = Dataset::BronzeEvents.batch_file(&Partition::date(date), batch, 0);
        let schema = export_schema(batch);
        let mut w = FileWriter::bronze(lake, &schema, path).unwrap();
        w.write(&bronze_batch(
            &evs,
            batch,
            1_750_000_000_000_000 + batch as i64,
        ))
        .await
        .unwrap();
        files.push(DataFile::new(date, w.finish().await.unwrap()));
    }
    files
}

fn manifest_of(batch: u64, state: BatchState, files: Vec<DataFile>) -> BatchManifest {
    BatchManifest {
        format: MANIFEST_FORMAT,
        dataset: Dataset::BronzeEvents.dir().into(),
        batch,
        state,
        h_prev: (batch > 1).then_some(batch * 100),
        h: batch * 100 + 100,
        xmax: batch * 100 + 101,
        snapshot_time: DateTime::from_timestamp_micros(1_750_000_000_000_000 + batch as i64)
            .unwrap(),
        scan_from: None,
        system_identifier: "7000000000000000001".into(),
        timeline: None,
        wal_lsn: None,
        relfilenode: None,
        drop_captured: false,
        drop_captured_below: None,
        backfill_days: vec![],
        added_columns: export_schema(batch).added,
        claim: lake_common::commit::Claim {
            owner: "test".into(),
            ..Default::default()
        },
        committed_at: Some(Utc::now()),
        rows: files.iter().map(|f| f.rows).sum(),
        files,
        supersedes: vec![],
        compacted_days: vec![],
        pruned_days: vec![],
        retained_before: None,
    }
}

/// Commits bronze batch `batch` holding `events`.
pub async fn commit_batch(lake: &Lake, batch: u64, events: &[Ev]) -> BatchManifest {
    let files = write_files(lake, batch, events).await;
    let m = manifest_of(batch, BatchState::Committed, files);
    commit(lake, &m).await;
    m
}

/// Commits a bronze manifest and, as bronze-ingest does, writes the checkpoint
/// when one is due: silver then reads these lakes through checkpoints too.
async fn commit(lake: &Lake, m: &BatchManifest) {
    let log = manifest::BronzeLog::load(lake, Dataset::BronzeEvents)
        .await
        .unwrap();
    assert!(
        manifest::create(lake, m).await.unwrap().is_some(),
        "batch {} exists",
        m.batch
    );
    if let Some(checkpoint) = log.checkpoint_after(m) {
        manifest::write_checkpoint(lake, &checkpoint).await.unwrap();
    }
}

/// Writes the files of batch `batch` but leaves it pending (silver must ignore it).
pub async fn pending_batch(lake: &Lake, batch: u64, events: &[Ev]) -> BatchManifest {
    let files = write_files(lake, batch, events).await;
    let m = manifest_of(batch, BatchState::Pending, files);
    manifest::create(lake, &m).await.unwrap();
    m
}

/// Commits a backfill batch re-exporting whole `days` (`events` must be all events
/// of those days): it supersedes every earlier live file of those days, and the
/// superseded files are then deleted, as bronze-ingest does.
pub async fn commit_backfill(
    lake: &Lake,
    batch: u64,
    days: &[NaiveDate],
    events: &[Ev],
) -> BatchManifest {
    let manifests = manifest::read_all(lake, Dataset::BronzeEvents)
        .await
        .unwrap();
    let supersedes: Vec<String> = manifest::live_files(&manifests)
        .into_iter()
        .filter(|f| days.contains(&f.date))
        .map(|f| f.path)
        .collect();
    assert!(events.iter().all(|e| days.contains(&e.date())));
    let files = write_files(lake, batch, events).await;
    let mut m = manifest_of(batch, BatchState::Committed, files);
    m.backfill_days = days.to_vec();
    m.supersedes = supersedes.clone();
    commit(lake, &m).await;
    for p in supersedes {
        lake.store().delete(&Path::from(p)).await.unwrap();
    }
    m
}

/// Commits a retention entry as lake-maintain does: it supersedes every live
/// file of the days before `before` and adds none; those files are then deleted.
pub async fn commit_retention(lake: &Lake, batch: u64, before: NaiveDate) -> BatchManifest {
    let manifests = manifest::read_all(lake, Dataset::BronzeEvents)
        .await
        .unwrap();
    let supersedes: Vec<String> = manifest::live_files(&manifests)
        .into_iter()
        .filter(|f| f.date < before)
        .map(|f| f.path)
        .collect();
    let mut m = manifest_of(batch, BatchState::Committed, vec![]);
    m.supersedes = supersedes.clone();
    m.retained_before = Some(before);
    commit(lake, &m).await;
    for p in supersedes {
        lake.store().delete(&Path::from(p)).await.unwrap();
    }
    m
}

// ---------------------------------------------------------------------------
// Reading silver.

/// One silver row as a reader sees it, partition columns from the path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SilverRow {
    pub client_id: i64,
    pub date: String,
    pub execution_id: String,
    pub execution_key: String,
    pub operation_id: i64,
    pub symbol: String,
    pub side: Option<String>,
    pub status: String,
    pub triggered_at: Option<i64>,
    pub submitted_at: Option<i64>,
    pub executed_at: Option<i64>,
    pub failed_at: Option<i64>,
    pub blocked_at: Option<i64>,
    pub stop_price: Option<i128>,
    pub trigger_price: Option<i128>,
    pub quantity: Option<i128>,
    pub exchange_order_id: Option<String>,
    pub fill_price: Option<i128>,
    pub slippage_pct: Option<i128>,
    pub source: String,
    pub error_message: Option<String>,
    pub retry_count: i32,
    pub event_count: i64,
    pub first_event_at: i64,
    pub last_event_at: i64,
    pub last_event_id: String,
    /// Quarantine only.
    pub violation: Option<String>,
}

/// Every object under `prefix` with its SHA-256, skipping `_`-prefixed directories
/// below the prefix (manifests).
pub async fn objects(lake: &Lake, prefix: &str) -> BTreeMap<String, String> {
    let listed: Vec<Path> = lake
        .store()
        .list(Some(&Path::from(prefix)))
        .map_ok(|m| m.location)
        .try_collect()
        .await
        .unwrap();
    let mut out = BTreeMap::new();
    for p in listed {
        let rel = p.as_ref().strip_prefix(prefix).unwrap_or(p.as_ref());
        if rel.split('/').any(|s| s.starts_with('_')) {
            continue;
        }
        let bytes = lake.get_bytes(&p).await.unwrap();
        out.insert(p.to_string(), parquet_io::sha256_hex(&bytes));
    }
    out
}

/// The checksum of every published partition's silver file and quarantine file,
/// keyed by partition (`silver/stop_executions/client_id=<c>/date=<d>` and
/// `silver/_quarantine/stop_executions/date=<d>/client-<c>`): object names carry
/// the version that wrote them, contents do not. Panics if a partition holds two
/// objects — after a finished run, superseded objects and orphans must be gone.
pub async fn published(lake: &Lake) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (path, sha) in objects(lake, "silver/stop_executions").await {
        let dir = path.rsplit_once('/').unwrap().0.to_owned();
        if let Some(other) = out.insert(dir.clone(), sha) {
            panic!("two objects in partition {dir} (one with {other})");
        }
    }
    for (path, sha) in objects(lake, "silver/_quarantine/stop_executions").await {
        let (dir, name) = path.rsplit_once('/').unwrap();
        let client = silver_transform::publish::quarantine_client(name).expect("client-<c>-…");
        let key = format!("{dir}/client-{client}");
        if out.insert(key.clone(), sha).is_some() {
            panic!("two quarantine objects for {key}");
        }
    }
    out
}

/// Every silver row of the latest committed version, read as a reader that
/// follows the manifest does: the files the committed manifest lists, the
/// manifest read again if one of them is gone (a newer version committed and
/// deleted it meanwhile). Panics if a key appears twice.
pub async fn silver_committed(lake: &Lake) -> BTreeMap<String, SilverRow> {
    use silver_transform::manifest;
    'retry: for _ in 0..10 {
        let found = manifest::find(lake, silver_transform::key::Shard::ALL)
            .await
            .unwrap();
        let Some(m) = found.committed else {
            return BTreeMap::new();
        };
        let mut out = BTreeMap::new();
        for part in &silver_transform::partitions::read_all(lake, &m)
            .await
            .unwrap()
        {
            let Some(file) = &part.silver else { continue };
            let path = Path::from(file.path.as_str());
            let bytes = match lake.get_bytes(&path).await {
                Ok(b) => b,
                Err(object_store::Error::NotFound { .. }) => continue 'retry,
                Err(e) => panic!("{path}: {e}"),
            };
            assert_eq!(parquet_io::sha256_hex(&bytes), file.sha256, "{path}");
            let date = part.date.format("%Y-%m-%d").to_string();
            for batch in parquet_io::read_bytes(bytes).unwrap() {
                for row in read_rows(&batch, Some(part.client_id), &date) {
                    let key = row.execution_key.clone();
                    assert!(out.insert(key.clone(), row).is_none(), "{key} twice");
                }
            }
        }
        return out;
    }
    panic!("the manifest kept changing under the reader");
}

fn read_rows(batch: &RecordBatch, client_from_path: Option<i64>, date: &str) -> Vec<SilverRow> {
    let s = |n: &str| batch.column_by_name(n).unwrap().as_string::<i32>().clone();
    let os =
        |a: &arrow::array::StringArray, i: usize| (!a.is_null(i)).then(|| a.value(i).to_owned());
    let i64c = |n: &str| {
        batch
            .column_by_name(n)
            .unwrap()
            .as_primitive::<Int64Type>()
            .clone()
    };
    let t = |n: &str| {
        batch
            .column_by_name(n)
            .unwrap()
            .as_primitive::<TimestampMicrosecondType>()
            .clone()
    };
    let ot = |a: &TimestampMicrosecondArray, i: usize| (!a.is_null(i)).then(|| a.value(i));
    let dc = |n: &str| {
        batch
            .column_by_name(n)
            .unwrap()
            .as_primitive::<Decimal128Type>()
            .clone()
    };
    let od = |a: &Decimal128Array, i: usize| (!a.is_null(i)).then(|| a.value(i));
    let (id, key, sym, side, status, exch, source, err, last_id) = (
        s("execution_id"),
        s("execution_key"),
        s("symbol"),
        s("side"),
        s("status"),
        s("exchange_order_id"),
        s("source"),
        s("error_message"),
        s("last_event_id"),
    );
    let violation = batch
        .column_by_name("violation")
        .map(|c| c.as_string::<i32>().clone());
    let client = batch
        .column_by_name("client_id")
        .map(|c| c.as_primitive::<Int64Type>().clone());
    let (op, count) = (i64c("operation_id"), i64c("event_count"));
    let (tr, su, ex, fa, bl, first, last) = (
        t("triggered_at"),
        t("submitted_at"),
        t("executed_at"),
        t("failed_at"),
        t("blocked_at"),
        t("first_event_at"),
        t("last_event_at"),
    );
    let (stop, trig, qty, fill, slip) = (
        dc("stop_price"),
        dc("trigger_price"),
        dc("quantity"),
        dc("fill_price"),
        dc("slippage_pct"),
    );
    let retry = batch
        .column_by_name("retry_count")
        .unwrap()
        .as_primitive::<Int32Type>()
        .clone();
    (0..batch.num_rows())
        .map(|i| SilverRow {
            client_id: client_from_path.unwrap_or_else(|| client.as_ref().unwrap().value(i)),
            date: date.to_owned(),
            execution_id: id.value(i).into(),
            execution_key: key.value(i).into(),
            operation_id: op.value(i),
            symbol: sym.value(i).into(),
            side: os(&side, i),
            status: status.value(i).into(),
            triggered_at: ot(&tr, i),
            submitted_at: ot(&su, i),
            executed_at: ot(&ex, i),
            failed_at: ot(&fa, i),
            blocked_at: ot(&bl, i),
            stop_price: od(&stop, i),
            trigger_price: od(&trig, i),
            quantity: od(&qty, i),
            exchange_order_id: os(&exch, i),
            fill_price: od(&fill, i),
            slippage_pct: od(&slip, i),
            source: source.value(i).into(),
            error_message: os(&err, i),
            retry_count: retry.value(i),
            event_count: count.value(i),
            first_event_at: first.value(i),
            last_event_at: last.value(i),
            last_event_id: last_id.value(i).into(),
            violation: violation.as_ref().map(|v| v.value(i).to_owned()),
        })
        .collect()
}

/// Reads a file with one GET, as a consistent reader does: footer and pages
/// fetched by separate range requests could straddle an in-place replace (see
/// "Limits" in docs/silver.md).
async fn read_whole(lake: &Lake, path: &Path) -> Vec<RecordBatch> {
    parquet_io::read_bytes(lake.get_bytes(path).await.unwrap()).unwrap()
}

/// Every silver row by execution key; panics if a key appears twice (a doubled
/// partition) or a partition holds more than one file.
pub async fn silver(lake: &Lake) -> BTreeMap<String, SilverRow> {
    let files = objects(lake, "silver/stop_executions").await;
    let mut dirs = BTreeSet::new();
    let mut out = BTreeMap::new();
    for path in files.keys() {
        let p = Path::from(path.as_str());
        let part = Partition::parse(Dataset::SilverStopExecutions, &p).expect("a partition path");
        let dir = path.rsplit_once('/').unwrap().0.to_owned();
        assert!(dirs.insert(dir.clone()), "two files in partition {dir}");
        let date = part.date.format("%Y-%m-%d").to_string();
        for batch in read_whole(lake, &p).await {
            assert!(
                batch.column_by_name("client_id").is_none(),
                "partition column in file"
            );
            for row in read_rows(&batch, part.client_id, &date) {
                let key = row.execution_key.clone();
                if let Some(prev) = out.insert(key.clone(), row) {
                    panic!(
                        "execution {key} appears twice (also in {}/{})",
                        prev.client_id, prev.date
                    );
                }
            }
        }
    }
    out
}

/// Every quarantine row, sorted.
pub async fn quarantine(lake: &Lake) -> Vec<SilverRow> {
    let files = objects(lake, "silver/_quarantine/stop_executions").await;
    let mut out = Vec::new();
    for path in files.keys() {
        let p = Path::from(path.as_str());
        let part =
            Partition::parse(Dataset::QuarantineStopExecutions, &p).expect("a partition path");
        let date = part.date.format("%Y-%m-%d").to_string();
        for batch in read_whole(lake, &p).await {
            out.extend(read_rows(&batch, None, &date));
        }
    }
    out.sort();
    out
}

/// The latest run report of silver-transform.
pub async fn latest_report(lake: &Lake) -> serde_json::Value {
    let listed: Vec<Path> = lake
        .store()
        .list(Some(&Path::from("_runs/silver-transform")))
        .map_ok(|m| m.location)
        .try_collect()
        .await
        .unwrap();
    let last = listed.into_iter().max().expect("a run report");
    serde_json::from_slice(&lake.get_bytes(&last).await.unwrap()).unwrap()
}

/// A small deterministic PRNG (SplitMix64).
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// True with probability `p` percent.
    pub fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// The event types silver folds (SPEC §6).
pub const TYPES: [&str; 5] = [
    "STOP_TRIGGERED",
    "EXECUTION_SUBMITTED",
    "EXECUTED",
    "FAILED",
    "BLOCKED",
];

/// SPEC §6 and §7, naively: group, sort, read off. Returns silver rows by key and
/// the sorted quarantine rows.
pub fn reference(events: &[&Ev]) -> (BTreeMap<String, SilverRow>, Vec<SilverRow>) {
    let mut groups: BTreeMap<String, Vec<&Ev>> = BTreeMap::new();
    for e in events
        .iter()
        .filter(|e| TYPES.contains(&e.event_type.as_str()))
    {
        let key = e
            .execution_token
            .clone()
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| format!("operation:{}", e.operation_id));
        groups.entry(key).or_default().push(e);
    }
    let mut silver = BTreeMap::new();
    let mut quarantined = Vec::new();
    for (key, mut evs) in groups {
        evs.sort_by(|a, b| {
            (
                a.occurred_at,
                a.event_seq.is_none(),
                a.event_seq,
                &a.event_id,
            )
                .cmp(&(
                    b.occurred_at,
                    b.event_seq.is_none(),
                    b.event_seq,
                    &b.event_id,
                ))
        });
        let (first, last) = (evs[0], evs[evs.len() - 1]);
        let first_of = |t: &str| {
            evs.iter()
                .find(|e| e.event_type == t)
                .map(|e| e.occurred_at)
        };
        let latest = |f: &dyn Fn(&Ev) -> Option<i128>, only_executed: bool| {
            evs.iter()
                .rev()
                .filter(|e| !only_executed || e.event_type == "EXECUTED")
                .find_map(|e| f(e))
        };
        let status = match last.event_type.as_str() {
            "STOP_TRIGGERED" => "PENDING",
            "EXECUTION_SUBMITTED" => "SUBMITTED",
            other => other,
        };
        let row = SilverRow {
            client_id: first.client_id,
            date: first.date().format("%Y-%m-%d").to_string(),
            execution_id: first.event_id.clone(),
            execution_key: key.clone(),
            operation_id: first.operation_id,
            symbol: first.symbol.clone(),
            side: first.side.clone(),
            status: status.into(),
            triggered_at: first_of("STOP_TRIGGERED"),
            submitted_at: first_of("EXECUTION_SUBMITTED"),
            executed_at: first_of("EXECUTED"),
            failed_at: first_of("FAILED"),
            blocked_at: first_of("BLOCKED"),
            stop_price: latest(&|e| e.stop_price, false),
            trigger_price: latest(&|e| e.trigger_price, false),
            quantity: latest(&|e| e.quantity, false),
            exchange_order_id: evs
                .iter()
                .rev()
                .filter(|e| e.event_type == "EXECUTED")
                .find_map(|e| e.exchange_order_id.clone()),
            fill_price: latest(&|e| e.fill_price, true),
            slippage_pct: latest(&|e| e.slippage_pct, true),
            source: last.source.clone(),
            error_message: evs.iter().rev().find_map(|e| e.error_message.clone()),
            retry_count: evs.iter().map(|e| e.retry_count).max().unwrap_or(0),
            event_count: evs.len() as i64,
            first_event_at: first.occurred_at,
            last_event_at: last.occurred_at,
            last_event_id: last.event_id.clone(),
            violation: None,
        };
        let clients: BTreeSet<i64> = evs.iter().map(|e| e.client_id).collect();
        let symbol_ok = (2..=20).contains(&row.symbol.len())
            && row
                .symbol
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
        let mut broken = Vec::new();
        if row.slippage_pct.is_some_and(|s| s.abs() > 500_000) {
            broken.push(silver_transform::quality::Rule::SlippageInRange);
        }
        if row.status == "EXECUTED" && row.fill_price.is_none() {
            broken.push(silver_transform::quality::Rule::ExecutedHasFillPrice);
        }
        if clients.len() > 1 {
            broken.push(silver_transform::quality::Rule::SingleClient);
        }
        if !symbol_ok {
            broken.push(silver_transform::quality::Rule::SymbolFormat);
        }
        if broken.is_empty() {
            silver.insert(key, row);
        } else {
            quarantined.extend(broken.into_iter().map(|r| SilverRow {
                violation: Some(r.name().into()),
                ..row.clone()
            }));
        }
    }
    quarantined.sort();
    (silver, quarantined)
}

/// Runs `script` with the lake's root directory as its argument; its stdout.
pub fn run_python(script: &str, root: &std::path::Path) -> String {
    let out = Command::new(lake_testkit::glob::python())
        .args(["-c", script, root.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
