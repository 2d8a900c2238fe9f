//! Reading bronze the way silver must: through the manifests, column-projected.
//!
//! Silver never lists bronze directories: it sees exactly the files a
//! manifest-honouring reader sees ([`BronzeView`]: committed batches, minus files a
//! later backfill superseded), so a pending batch's half-written files or a
//! superseded day can never leak into silver. Each file is read with a projection
//! of the columns the fold needs ([`Projection`]): `payload_json`, the largest
//! column, is never fetched nor decoded.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::array::{
    Array, AsArray, BooleanArray, Decimal128Array, Int32Array, Int64Array, RecordBatch,
    StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{
    DataType, Decimal128Type, Int32Type, Int64Type, TimeUnit, TimestampMicrosecondType,
};
use futures::{StreamExt, TryStreamExt};
use lake_common::manifest::{self, BatchManifest, BatchState, DataFile};
use lake_common::{Dataset, Lake, Partition};
use object_store::ObjectStoreExt;
use object_store::path::Path;
// Deprecated in parquet 60 in favour of a hand-written AsyncFileReader; it does
// exactly what is needed here (ranged GETs of the projected column chunks only).
#[allow(deprecated)]
use parquet::arrow::async_reader::ParquetObjectReader;
use parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};
use parquet::file::metadata::ParquetMetaData;
use parquet::file::statistics::Statistics;

use crate::key::{EventId, EventType, ExecutionKey, OrderKey, day_of_date, parse_event_id};

/// Rows per decoded record batch.
const READ_BATCH_ROWS: usize = 32 * 1024;

/// Errors of reading bronze.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BronzeError {
    /// The bronze manifests could not be read.
    #[error("cannot read the bronze manifests: {0}")]
    Manifests(#[from] manifest::ManifestError),
    /// A bronze file could not be read or decoded.
    #[error("cannot read bronze file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: parquet::errors::ParquetError,
    },
    /// A bronze file is no longer the object its manifest lists (another size,
    /// or not Parquet at that size): overwritten or damaged outside bronze.
    #[error(
        "bronze file {path} is not the file bronze committed: {why}; restore it (a backup, the \
         bucket's versioning), or re-export its day with bronze-ingest --date {date} (for an outbox \
         day read docs/source-life.md first); nothing was published"
    )]
    Replaced {
        /// The file.
        path: String,
        /// What differs.
        why: String,
        /// Its day.
        date: chrono::NaiveDate,
    },
    /// A file live in the log this run read was superseded since (a bronze
    /// backfill committed and deleted it): a race with bronze, not damage.
    #[error(
        "bronze file {path} was superseded by {by} while this run read bronze; nothing was \
         published; the next run (the Job's retry) reads the new files"
    )]
    Superseded {
        /// The file.
        path: String,
        /// `bronze batch <n> (a backfill of <date>)`, `… (a compaction of
        /// <date>)`, or `a newer bronze batch` when a checkpoint absorbed it.
        by: String,
        /// Its day.
        date: chrono::NaiveDate,
    },
    /// A bronze file does not match the bronze contract (SPEC §4).
    #[error("bronze file {path} breaks the bronze contract: {problem}")]
    Contract {
        /// The file.
        path: String,
        /// What is wrong.
        problem: String,
    },
}

/// A live bronze file and the batch that wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BronzeFile {
    /// Batch number.
    pub batch: u64,
    /// The file as the manifest lists it.
    pub file: DataFile,
}

impl BronzeFile {
    /// UTC day (days since the epoch) of the file's partition.
    pub fn day(&self) -> i32 {
        day_of_date(self.file.date)
    }
}

/// Bronze `events` as the manifests define it at one moment.
#[derive(Debug, Clone, Default)]
pub struct BronzeView {
    committed: BTreeSet<u64>,
    live: Vec<BronzeFile>,
    /// Per committed batch: the days of the files it superseded.
    superseded_days: BTreeMap<u64, BTreeSet<i32>>,
    /// Compactions among the batches whose manifests were read, with the
    /// batches of the files each replaced: their files hold the same events,
    /// so they are scanned only for events of batches this run has not read
    /// yet (a late event compacted before silver saw it).
    compactions: BTreeMap<u64, BTreeSet<u64>>,
    /// The retention horizon (day): bronze's files of earlier days were
    /// removed on purpose, and this view holds none of them (a late row for
    /// such a day is ignored, [`BronzeView::behind_horizon`]).
    retained_before: Option<i32>,
    /// Live files of days before the horizon (late rows; the next retention
    /// removes them), per batch.
    behind: BTreeMap<u64, u64>,
}

impl BronzeView {
    /// Reads `bronze/events` through its latest checkpoint and the entries
    /// after it. The batches not in `consumed` that the checkpoint already
    /// folded in are read one by one (by number, no listing): their manifests
    /// say which days they superseded. A full refresh (`None`) recomputes every
    /// day and needs none of them. What this costs grows with the new work,
    /// never with bronze's age.
    pub async fn load(lake: &Lake, consumed: Option<&BTreeSet<u64>>) -> Result<Self, BronzeError> {
        let log = manifest::BronzeLog::load(lake, Dataset::BronzeEvents).await?;
        let inside: Vec<u64> = match consumed {
            Some(consumed) => (1..=log.checkpoint_batch().unwrap_or(0))
                .filter(|b| !consumed.contains(b))
                .collect(),
            None => vec![],
        };
        let folded: Vec<BatchManifest> = futures::stream::iter(inside)
            .map(|b| manifest::read(lake, Dataset::BronzeEvents, b))
            .buffered(16)
            .map_ok(|v| v.manifest)
            .try_collect()
            .await?;
        Ok(Self::from_log(&log, &folded))
    }

    /// The view of a log, with the manifests of `folded` batches (inside its
    /// checkpoint) for the days they superseded.
    pub fn from_log(log: &manifest::BronzeLog, folded: &[BatchManifest]) -> Self {
        let retained_before = log.retained_before().map(day_of_date);
        let mut behind: BTreeMap<u64, u64> = BTreeMap::new();
        let live: Vec<BronzeFile> = log
            .live_files()
            .into_iter()
            .map(|f| BronzeFile {
                batch: f.batch,
                file: f.file,
            })
            .filter(|f| {
                let kept = retained_before.is_none_or(|h| f.day() >= h);
                if !kept {
                    *behind.entry(f.batch).or_default() += 1;
                }
                kept
            })
            .collect();
        let after: Vec<&BatchManifest> = log
            .after()
            .iter()
            .map(|v| &v.manifest)
            .filter(|m| m.state == BatchState::Committed)
            .collect();
        Self {
            committed: log.committed(),
            live,
            retained_before,
            behind,
            superseded_days: folded
                .iter()
                .chain(after.iter().copied())
                .filter_map(|m| superseded_days_of(m).map(|d| (m.batch, d)))
                .collect(),
            compactions: folded
                .iter()
                .chain(after)
                .filter(|m| m.is_compaction())
                .map(|m| {
                    let sources = m
                        .supersedes
                        .iter()
                        .filter_map(|p| lake_common::paths::batch_of_file(&Path::from(p.as_str())))
                        .collect();
                    (m.batch, sources)
                })
                .collect(),
        }
    }

    /// Committed batch numbers.
    pub fn committed(&self) -> &BTreeSet<u64> {
        &self.committed
    }

    /// Committed batches not in `consumed`.
    pub fn new_batches(&self, consumed: &BTreeSet<u64>) -> BTreeSet<u64> {
        self.committed.difference(consumed).copied().collect()
    }

    /// Live files written by `batches`. A compaction's files count only when
    /// it replaced files of one of `batches` (events this run has not read
    /// in their own files); otherwise its events were all read before.
    pub fn files_of(&self, batches: &BTreeSet<u64>) -> Vec<BronzeFile> {
        self.live
            .iter()
            .filter(|f| batches.contains(&f.batch) && self.brings_new(f.batch, batches))
            .cloned()
            .collect()
    }

    /// Whether batch `b` (of `batches`) carries events of `batches` itself: an
    /// export does; a compaction if it replaced files of such a batch.
    fn brings_new(&self, b: u64, batches: &BTreeSet<u64>) -> bool {
        match self.compactions.get(&b) {
            None => true,
            Some(sources) => sources
                .iter()
                .any(|s| *s != b && batches.contains(s) && self.brings_new(*s, batches)),
        }
    }

    /// The retention horizon (day), if retention removed days.
    pub fn retained_before(&self) -> Option<i32> {
        self.retained_before
    }

    /// Live files of `batches` whose day lies before the horizon (late rows):
    /// not part of the view.
    pub fn behind_horizon(&self, batches: &BTreeSet<u64>) -> u64 {
        batches.iter().filter_map(|b| self.behind.get(b)).sum()
    }

    /// Every live file (from the horizon on).
    pub fn live(&self) -> &[BronzeFile] {
        &self.live
    }

    /// Days whose earlier files `batches` superseded (backfills).
    pub fn superseded_days(&self, batches: &BTreeSet<u64>) -> BTreeSet<i32> {
        batches
            .iter()
            .filter_map(|b| self.superseded_days.get(b))
            .flatten()
            .copied()
            .collect()
    }

    /// Live files per day, for the given days.
    pub fn files_by_day(&self, days: &BTreeSet<i32>) -> BTreeMap<i32, Vec<BronzeFile>> {
        let mut out: BTreeMap<i32, Vec<BronzeFile>> = BTreeMap::new();
        for f in &self.live {
            let day = f.day();
            if days.contains(&day) {
                out.entry(day).or_default().push(f.clone());
            }
        }
        out
    }

    /// Every day that has a live file.
    pub fn days(&self) -> BTreeSet<i32> {
        self.live.iter().map(BronzeFile::day).collect()
    }
}

/// The days whose earlier files a batch superseded (a backfill), if any. A
/// compaction supersedes files with the same rows: no day changes.
fn superseded_days_of(m: &BatchManifest) -> Option<BTreeSet<i32>> {
    (!m.supersedes.is_empty() && !m.is_rewrite()).then(|| {
        m.supersedes
            .iter()
            .filter_map(|p| Partition::parse(Dataset::BronzeEvents, &Path::from(p.as_str())))
            .map(|p| day_of_date(p.date))
            .chain(m.backfill_days.iter().map(|d| day_of_date(*d)))
            .collect()
    })
}

/// Which columns to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Projection {
    /// Only what identifies and orders events (for planning).
    Keys,
    /// Everything the fold needs.
    Full,
}

const KEY_COLUMNS: [&str; 7] = [
    "event_id",
    "event_seq",
    "occurred_at",
    "operation_id",
    "client_id",
    "event_type",
    "execution_token",
];
const FOLD_COLUMNS: [&str; 12] = [
    "symbol",
    "trigger_price",
    "stop_price",
    "quantity",
    "side",
    "exchange_order_id",
    "fill_price",
    "slippage_pct",
    "source",
    "error_message",
    "retry_count",
    lake_common::schema::BATCH_COLUMN,
];

/// A half-open range of `occurred_at` (microseconds since the epoch).
pub type TimeRange = (i64, i64);

/// Reads the projected columns of one live bronze file; with `window`, only the
/// events whose `occurred_at` lies in it: the row groups whose statistics
/// overlap the window are read (bronze files are sorted by `occurred_at`, so
/// that is about the window's share of the file), then the rows outside it
/// dropped.
pub async fn read_file(
    lake: &Lake,
    file: &BronzeFile,
    projection: Projection,
    window: Option<TimeRange>,
) -> Result<Vec<EventColumns>, BronzeError> {
    match read_listed_file(lake, file, projection, window).await {
        Err(BronzeError::Read { path, source }) => {
            Err(explain_read_error(lake, file, path, source).await)
        }
        other => other,
    }
}

/// A failed read of a listed file: said as [`BronzeError::Replaced`] when the
/// object is not what the manifest lists (its size differs, or its SHA-256
/// does, checked only on this path); anything else — the store failing, or a
/// file that is the committed one but that this build cannot read — stays a
/// read error, so nobody restores good data.
async fn explain_read_error(
    lake: &Lake,
    file: &BronzeFile,
    path: String,
    source: parquet::errors::ParquetError,
) -> BronzeError {
    if let Err(object_store::Error::NotFound { .. }) =
        lake.store().head(&Path::from(path.as_str())).await
    {
        return explain_missing(lake, file, path, source).await;
    }
    // A store failure on an object of the listed size says nothing about its bytes.
    let hash = !matches!(source, parquet::errors::ParquetError::External(_));
    let why = lake_common::parquet_io::differs_from_listed(
        lake,
        &Path::from(path.as_str()),
        file.file.bytes,
        &file.file.sha256,
        hash,
    )
    .await
    .map(|why| format!("{why} (batch {}; {source})", file.batch));
    match why {
        Some(why) => BronzeError::Replaced {
            path,
            why,
            date: file.file.date,
        },
        None => BronzeError::Read { path, source },
    }
}

/// A listed file that is gone: superseded since this run read the log (a
/// backfill deletes what it replaced right after its commit), or deleted
/// outside bronze. Decided by the log as it is now.
async fn explain_missing(
    lake: &Lake,
    file: &BronzeFile,
    path: String,
    source: parquet::errors::ParquetError,
) -> BronzeError {
    let Ok(log) = manifest::BronzeLog::load(lake, Dataset::BronzeEvents).await else {
        return BronzeError::Read { path, source };
    };
    if log.live_files().iter().any(|f| f.file.path == path) {
        return BronzeError::Replaced {
            why: format!("it is missing (batch {})", file.batch),
            path,
            date: file.file.date,
        };
    }
    let by = log
        .after()
        .iter()
        .map(|v| &v.manifest)
        .find(|m| m.state == BatchState::Committed && m.supersedes.contains(&path))
        .map_or_else(
            || "a newer bronze batch".to_owned(),
            |m| {
                let what = if m.is_compaction() {
                    "a compaction"
                } else if m.retained_before.is_some() {
                    "the retention"
                } else {
                    "a backfill"
                };
                format!("bronze batch {} ({what} of {})", m.batch, file.file.date)
            },
        );
    BronzeError::Superseded {
        path,
        by,
        date: file.file.date,
    }
}

async fn read_listed_file(
    lake: &Lake,
    file: &BronzeFile,
    projection: Projection,
    window: Option<TimeRange>,
) -> Result<Vec<EventColumns>, BronzeError> {
    let path = Path::from(file.file.path.as_str());
    let read_err = |source| BronzeError::Read {
        path: file.file.path.clone(),
        source,
    };
    #[allow(deprecated)]
    let reader =
        ParquetObjectReader::new(Arc::clone(lake.store()), path).with_file_size(file.file.bytes);
    let builder = ParquetRecordBatchStreamBuilder::new(reader)
        .await
        .map_err(read_err)?;
    let wanted: Vec<&str> = match projection {
        Projection::Keys => KEY_COLUMNS.to_vec(),
        Projection::Full => KEY_COLUMNS
            .iter()
            .chain(FOLD_COLUMNS.iter())
            .copied()
            .collect(),
    };
    let schema = builder.schema().clone();
    let mut roots = Vec::with_capacity(wanted.len());
    for name in &wanted {
        let idx = schema.index_of(name).map_err(|_| BronzeError::Contract {
            path: file.file.path.clone(),
            problem: format!("column {name} is missing"),
        })?;
        roots.push(idx);
    }
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    let builder = match window {
        Some(w) => {
            let groups = row_groups_overlapping(builder.metadata(), w);
            builder.with_row_groups(groups)
        }
        None => builder,
    };
    let stream = builder
        .with_projection(mask)
        .with_batch_size(READ_BATCH_ROWS)
        .build()
        .map_err(read_err)?;
    let mut batches: Vec<RecordBatch> = stream.try_collect().await.map_err(read_err)?;
    if let Some(w) = window {
        batches = batches
            .iter()
            .map(|b| keep_window(b, w))
            .collect::<Result<_, _>>()
            .map_err(|problem| BronzeError::Contract {
                path: file.file.path.clone(),
                problem,
            })?;
    }
    batches
        .iter()
        .map(|b| {
            EventColumns::from_batch(b, projection).map_err(|problem| BronzeError::Contract {
                path: file.file.path.clone(),
                problem,
            })
        })
        .collect()
}

/// The row groups whose `occurred_at` statistics overlap `window` (all of
/// those without statistics).
fn row_groups_overlapping(meta: &ParquetMetaData, (start, end): TimeRange) -> Vec<usize> {
    let leaf = meta
        .file_metadata()
        .schema_descr()
        .columns()
        .iter()
        .position(|c| c.name() == "occurred_at");
    (0..meta.num_row_groups())
        .filter(|&i| {
            let Some(leaf) = leaf else { return true };
            match meta.row_group(i).column(leaf).statistics() {
                Some(Statistics::Int64(v)) => match (v.min_opt(), v.max_opt()) {
                    (Some(&min), Some(&max)) => max >= start && min < end,
                    _ => true,
                },
                _ => true,
            }
        })
        .collect()
}

/// The rows of `batch` whose `occurred_at` lies in `window`.
fn keep_window(batch: &RecordBatch, (start, end): TimeRange) -> Result<RecordBatch, String> {
    let at = column(batch, "occurred_at")?
        .as_primitive_opt::<TimestampMicrosecondType>()
        .ok_or("column occurred_at is not TIMESTAMP(MICROS)")?;
    // The contract's NOT NULL check runs after this filter: do it here, or a
    // NULL would be dropped instead of refused.
    if at.null_count() > 0 {
        return Err("column occurred_at is NULL, the contract says NOT NULL".to_owned());
    }
    let keep: BooleanArray = at
        .iter()
        .map(|t| Some(t.is_some_and(|t| t >= start && t < end)))
        .collect();
    arrow::compute::filter_record_batch(batch, &keep).map_err(|e| e.to_string())
}

/// The decoded columns of one record batch of bronze events. The fold columns are
/// present with [`Projection::Full`] only.
#[derive(Debug, Clone)]
pub struct EventColumns {
    event_id: StringArray,
    event_seq: Int64Array,
    occurred_at: TimestampMicrosecondArray,
    operation_id: Int64Array,
    client_id: Int64Array,
    event_type: StringArray,
    execution_token: StringArray,
    fold: Option<FoldColumns>,
}

#[derive(Debug, Clone)]
struct FoldColumns {
    symbol: StringArray,
    trigger_price: Decimal128Array,
    stop_price: Decimal128Array,
    quantity: Decimal128Array,
    side: StringArray,
    exchange_order_id: StringArray,
    fill_price: Decimal128Array,
    slippage_pct: Decimal128Array,
    source: StringArray,
    error_message: StringArray,
    retry_count: Int32Array,
    batch: Int64Array,
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a dyn Array, String> {
    batch
        .column_by_name(name)
        .map(|c| c.as_ref())
        .ok_or_else(|| format!("column {name} is missing"))
}

fn utf8(batch: &RecordBatch, name: &str, nullable: bool) -> Result<StringArray, String> {
    let c = column(batch, name)?;
    let a = c
        .as_string_opt::<i32>()
        .ok_or_else(|| format!("column {name} is {}, expected Utf8", c.data_type()))?;
    not_null(a, name, nullable)?;
    Ok(a.clone())
}

fn int64(batch: &RecordBatch, name: &str, nullable: bool) -> Result<Int64Array, String> {
    let c = column(batch, name)?;
    let a = c
        .as_primitive_opt::<Int64Type>()
        .ok_or_else(|| format!("column {name} is {}, expected Int64", c.data_type()))?;
    not_null(a, name, nullable)?;
    Ok(a.clone())
}

fn int32(batch: &RecordBatch, name: &str) -> Result<Int32Array, String> {
    let c = column(batch, name)?;
    let a = c
        .as_primitive_opt::<Int32Type>()
        .ok_or_else(|| format!("column {name} is {}, expected Int32", c.data_type()))?;
    not_null(a, name, false)?;
    Ok(a.clone())
}

fn decimal(batch: &RecordBatch, name: &str, p: u8, s: i8) -> Result<Decimal128Array, String> {
    let c = column(batch, name)?;
    if c.data_type() != &DataType::Decimal128(p, s) {
        return Err(format!(
            "column {name} is {}, expected Decimal128({p}, {s})",
            c.data_type()
        ));
    }
    Ok(c.as_primitive::<Decimal128Type>().clone())
}

fn not_null(a: &dyn Array, name: &str, nullable: bool) -> Result<(), String> {
    if !nullable && a.null_count() > 0 {
        return Err(format!("column {name} holds NULLs"));
    }
    Ok(())
}

impl EventColumns {
    /// Takes the columns of a bronze record batch (extra columns are ignored),
    /// checking their types against the contract.
    pub fn from_batch(batch: &RecordBatch, projection: Projection) -> Result<Self, String> {
        let ts = column(batch, "occurred_at")?;
        let occurred_at = match ts.data_type() {
            DataType::Timestamp(TimeUnit::Microsecond, Some(tz)) if tz.as_ref() == "UTC" => ts
                .as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                .clone(),
            other => {
                return Err(format!(
                    "column occurred_at is {other}, expected Timestamp(µs, UTC)"
                ));
            }
        };
        not_null(&occurred_at, "occurred_at", false)?;
        let fold = match projection {
            Projection::Keys => None,
            Projection::Full => Some(FoldColumns {
                symbol: utf8(batch, "symbol", false)?,
                trigger_price: decimal(batch, "trigger_price", 20, 8)?,
                stop_price: decimal(batch, "stop_price", 20, 8)?,
                quantity: decimal(batch, "quantity", 20, 8)?,
                side: utf8(batch, "side", true)?,
                exchange_order_id: utf8(batch, "exchange_order_id", true)?,
                fill_price: decimal(batch, "fill_price", 20, 8)?,
                slippage_pct: decimal(batch, "slippage_pct", 10, 4)?,
                source: utf8(batch, "source", false)?,
                error_message: utf8(batch, "error_message", true)?,
                retry_count: int32(batch, "retry_count")?,
                batch: int64(batch, lake_common::schema::BATCH_COLUMN, false)?,
            }),
        };
        Ok(Self {
            event_id: utf8(batch, "event_id", false)?,
            event_seq: int64(batch, "event_seq", true)?,
            occurred_at,
            operation_id: int64(batch, "operation_id", false)?,
            client_id: int64(batch, "client_id", false)?,
            event_type: utf8(batch, "event_type", false)?,
            execution_token: utf8(batch, "execution_token", true)?,
            fold,
        })
    }

    /// Rows in the batch.
    pub fn len(&self) -> usize {
        self.event_id.len()
    }

    /// Whether the batch has no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The execution event type of row `i`; `None` for event types silver ignores.
    pub fn event_type(&self, i: usize) -> Option<EventType> {
        EventType::parse(self.event_type.value(i))
    }

    /// The execution key of row `i`.
    ///
    /// An empty token counts as none: `''` is a common Django default for a
    /// token that was never set, and as a key it would merge every such event
    /// of all history into one execution (and make each run that touches it
    /// read every day). Such events fall back to `operation:<id>` like NULL ones.
    pub fn key(&self, i: usize) -> ExecutionKey<'_> {
        if self.execution_token.is_null(i) || self.execution_token.value(i).is_empty() {
            ExecutionKey::Operation(self.operation_id.value(i))
        } else {
            ExecutionKey::Token(self.execution_token.value(i))
        }
    }

    /// The order key of row `i`; an error if its event id is not canonical.
    pub fn order(&self, i: usize) -> Result<OrderKey, String> {
        Ok(OrderKey {
            at: self.occurred_at.value(i),
            seq: (!self.event_seq.is_null(i)).then(|| self.event_seq.value(i)),
            id: self.event_id(i)?,
        })
    }

    fn event_id(&self, i: usize) -> Result<EventId, String> {
        let s = self.event_id.value(i);
        parse_event_id(s).ok_or_else(|| format!("event_id {s:?} is not a canonical lowercase UUID"))
    }

    /// `client_id` of row `i`.
    pub fn client_id(&self, i: usize) -> i64 {
        self.client_id.value(i)
    }

    /// The whole event at row `i`, with its order key already computed.
    /// Requires [`Projection::Full`].
    pub fn event(&self, i: usize, order: OrderKey, ty: EventType) -> Option<Event<'_>> {
        let f = self.fold.as_ref()?;
        fn opt_str(a: &StringArray, i: usize) -> Option<&str> {
            (!a.is_null(i)).then(|| a.value(i))
        }
        let opt_dec = |a: &Decimal128Array| (!a.is_null(i)).then(|| a.value(i));
        Some(Event {
            order,
            ty,
            operation_id: self.operation_id.value(i),
            client_id: self.client_id.value(i),
            symbol: f.symbol.value(i),
            side: opt_str(&f.side, i),
            trigger_price: opt_dec(&f.trigger_price),
            stop_price: opt_dec(&f.stop_price),
            quantity: opt_dec(&f.quantity),
            exchange_order_id: opt_str(&f.exchange_order_id, i),
            fill_price: opt_dec(&f.fill_price),
            slippage_pct: opt_dec(&f.slippage_pct),
            source: f.source.value(i),
            error_message: opt_str(&f.error_message, i),
            retry_count: f.retry_count.value(i),
            batch: f.batch.value(i) as u64,
        })
    }
}

/// One execution event, borrowed from its record batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Event<'a> {
    /// Position in the execution's event order.
    pub order: OrderKey,
    /// Event type.
    pub ty: EventType,
    /// `operation_id`.
    pub operation_id: i64,
    /// `client_id`.
    pub client_id: i64,
    /// `symbol`.
    pub symbol: &'a str,
    /// `side`.
    pub side: Option<&'a str>,
    /// `trigger_price`, DECIMAL(20,8) as an integer at scale 8.
    pub trigger_price: Option<i128>,
    /// `stop_price`, scale 8.
    pub stop_price: Option<i128>,
    /// `quantity`, scale 8.
    pub quantity: Option<i128>,
    /// `exchange_order_id`.
    pub exchange_order_id: Option<&'a str>,
    /// `fill_price`, scale 8.
    pub fill_price: Option<i128>,
    /// `slippage_pct`, DECIMAL(10,4) at scale 4.
    pub slippage_pct: Option<i128>,
    /// `source`.
    pub source: &'a str,
    /// `error_message`.
    pub error_message: Option<&'a str>,
    /// `retry_count`.
    pub retry_count: i32,
    /// `_batch`: the bronze batch that exported the event.
    pub batch: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{Field, Schema};
    use parquet::arrow::ArrowWriter;
    use parquet::file::properties::WriterProperties;
    use parquet::file::reader::{FileReader, SerializedFileReader};

    /// Ten rows, occurred_at 0..10, in row groups of three.
    fn file() -> (RecordBatch, ParquetMetaData) {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "occurred_at",
            lake_common::schema::utc_micros(),
            false,
        )]));
        let at =
            TimestampMicrosecondArray::from((0..10).collect::<Vec<i64>>()).with_timezone("UTC");
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(at)]).unwrap();
        let mut buf = Vec::new();
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(3))
            .build();
        let mut w = ArrowWriter::try_new(&mut buf, schema, Some(props)).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let reader = SerializedFileReader::new(bytes::Bytes::from(buf)).unwrap();
        (batch, reader.metadata().clone())
    }

    /// A compaction's files are read as new only when it replaced files of a
    /// batch this run has not read (directly, or through an earlier compaction
    /// it compacted again).
    #[test]
    fn a_compaction_is_new_data_only_for_what_it_replaced_unread() {
        let file = |batch: u64| BronzeFile {
            batch,
            file: DataFile {
                path: format!("bronze/events/date=2026-01-01/part-{batch:010}-0000.parquet"),
                date: chrono::NaiveDate::from_ymd_opt(2026, 1, 1).unwrap(),
                rows: 1,
                bytes: 1,
                sha256: String::new(),
            },
        };
        // 5 compacted files of 2 and 3; 7 compacted 5's file and one of 6.
        let view = BronzeView {
            committed: (1..=7).collect(),
            live: vec![file(4), file(7)],
            superseded_days: BTreeMap::new(),
            compactions: [(5, [2, 3].into()), (7, [5, 6].into())].into(),
            ..BronzeView::default()
        };
        let batches = |files: Vec<BronzeFile>| files.iter().map(|f| f.batch).collect::<Vec<_>>();
        let set = |b: &[u64]| b.iter().copied().collect::<BTreeSet<u64>>();
        assert_eq!(
            batches(view.files_of(&set(&[4, 5, 7]))),
            [4],
            "all read before"
        );
        assert_eq!(batches(view.files_of(&set(&[5, 6, 7]))), [7], "6 unread");
        assert_eq!(
            batches(view.files_of(&set(&[3, 5, 7]))),
            [7],
            "3 unread, through 5"
        );
        assert!(view.files_of(&set(&[7])).is_empty());
    }

    #[test]
    fn a_window_reads_the_row_groups_it_overlaps_and_keeps_its_rows() {
        let (batch, meta) = file();
        assert_eq!(meta.num_row_groups(), 4);
        // Groups hold [0,2], [3,5], [6,8], [9].
        assert_eq!(row_groups_overlapping(&meta, (3, 6)), [1]);
        assert_eq!(row_groups_overlapping(&meta, (2, 7)), [0, 1, 2]);
        assert_eq!(row_groups_overlapping(&meta, (i64::MIN, 1)), [0]);
        assert_eq!(row_groups_overlapping(&meta, (9, i64::MAX)), [3]);
        assert!(row_groups_overlapping(&meta, (10, 20)).is_empty());
        let kept = keep_window(&batch, (2, 7)).unwrap();
        let at = kept.column(0).as_primitive::<TimestampMicrosecondType>();
        assert_eq!(at.values().to_vec(), [2, 3, 4, 5, 6]);
    }
}
