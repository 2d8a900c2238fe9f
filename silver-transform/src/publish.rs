//! Publication of silver partitions under names no other write uses.
//!
//! Every version writes each partition it recomputes as new objects whose names
//! carry the version and the run
//! (`client_id=<c>/date=<d>/part-<version:010>-<run>.parquet`, and
//! `silver/_quarantine/stop_executions/date=<d>/client-<c>-<version:010>-<run>.parquet`
//! for its quarantine rows), never over an existing object. The manifest commit
//! switches readers from the old objects to the new ones; the superseded objects
//! are deleted right after it (and again by the next run if this one dies in
//! between). So:
//!
//! * a reader that follows the manifest always reads one committed version: the
//!   objects it lists stay until a newer version has committed; one that finds
//!   an object gone re-reads the manifest;
//! * a write still in flight from a run that lost its lease lands under a name no
//!   manifest lists, never over a committed object (SPEC §5.6); the next run that
//!   recomputes the partition deletes such orphans, garbage collection is the
//!   backstop;
//! * a reader that globs the Hive directories sees a partition twice only between
//!   a version's upload and its clean-up (one run's publish window), and after a
//!   crash until the retry ran.
//!
//! Shards own disjoint clients, so they never write the same object. Rows are
//! sorted by `(first_event_at, execution_id)` and written with the lake's fixed
//! writer properties, so the same executions always give the same bytes.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Decimal128Array, Int32Array, Int64Array, RecordBatch, StringArray, StringBuilder,
    TimestampMicrosecondArray,
};
use arrow::datatypes::SchemaRef;
use lake_common::parquet_io::FileWriter;
use lake_common::schema::{silver_quarantine, silver_stop_executions};
use lake_common::{Dataset, Lake, Partition};
use object_store::path::Path;
use serde::{Deserialize, Serialize};

use crate::fold::{Acc, Dec, InlineStr};
use crate::key::{EventId, EventType, KeyHash, PartitionKey, write_event_id};
use crate::quality::Rule;

/// Errors of publishing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// Building the record batch failed (a schema mismatch: a bug).
    #[error("cannot build the rows of {path}: {source}")]
    Arrow {
        /// Target file.
        path: String,
        /// Why.
        source: arrow::error::ArrowError,
    },
    /// Writing the file failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// Target file.
        path: String,
        /// Why.
        source: parquet::errors::ParquetError,
    },
    /// The lake's schema has a column silver does not know how to fill.
    #[error("silver does not know how to fill column {0}")]
    UnknownColumn(String),
    /// Rows an earlier pass parked on local disk could not be read back.
    #[error(
        "cannot read back the rows parked at {path}: {reason}; the run needs its directory under \
         TMPDIR until it publishes; nothing was committed, run silver-transform again"
    )]
    Parked {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A frozen partition's quarantine file could not be read back.
    #[error(
        "cannot read the quarantine file {path}: {reason}; run silver-transform again, or restore the file"
    )]
    Read {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// A file as recorded in the silver manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// Path relative to the lake root.
    pub path: String,
    /// Rows.
    pub rows: u64,
    /// Size in bytes.
    pub bytes: u64,
    /// Hex SHA-256 of the bytes.
    pub sha256: String,
}

impl FileRecord {
    /// Writes `bytes` (holding `rows` records) to `path`, a name of its
    /// version's own, with a plain PUT, and returns its record.
    pub async fn put(
        lake: &Lake,
        path: &Path,
        rows: u64,
        bytes: bytes::Bytes,
    ) -> object_store::Result<Self> {
        let record = Self {
            path: path.to_string(),
            rows,
            bytes: bytes.len() as u64,
            sha256: lake_common::parquet_io::sha256_hex(&bytes),
        };
        lake.put(path, bytes).await?;
        Ok(record)
    }
}

/// The silver data file of a partition written by `run` for `version`.
pub fn silver_path(p: PartitionKey, version: u64, run: &str) -> Path {
    Dataset::SilverStopExecutions
        .partition(&p.partition())
        .join(format!("part-{version:010}-{run}.parquet"))
}

/// The quarantine file of a partition written by `run` for `version`.
pub fn quarantine_path(p: PartitionKey, version: u64, run: &str) -> Path {
    quarantine_dir(p).join(format!(
        "client-{}-{version:010}-{run}.parquet",
        p.client_id
    ))
}

/// The directory holding a partition's quarantine file (shared by every client
/// of that date).
pub fn quarantine_dir(p: PartitionKey) -> Path {
    Dataset::QuarantineStopExecutions.partition(&Partition::date(p.date()))
}

/// The client of a quarantine file name: `client-<c>-….parquet` (or
/// `client-<c>.parquet`, the name lakes written before version-unique names used).
pub fn quarantine_client(name: &str) -> Option<i64> {
    let rest = name.strip_prefix("client-")?.strip_suffix(".parquet")?;
    rest.split('-').next()?.parse().ok()
}

/// One execution to write: its key text and its fold.
pub type Row<'a> = (&'a str, &'a Acc);

/// The silver and quarantine rows of one partition.
#[derive(Debug, Default)]
pub struct PartitionRows<'a> {
    /// Executions that passed every rule.
    pub silver: Vec<Row<'a>>,
    /// Executions that broke rules, one entry per broken rule.
    pub quarantine: Vec<(Row<'a>, Rule)>,
}

impl PartitionRows<'_> {
    /// Sorts both lists into file order: `(first_event_at, execution_id)`, then rule.
    pub fn sort(&mut self) {
        self.silver
            .sort_unstable_by_key(|(_, a)| (a.first.at, a.first.id));
        self.quarantine
            .sort_unstable_by_key(|((_, a), r)| (a.first.at, a.first.id, *r));
    }
}

/// What publishing a partition left in the lake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The silver file, `None` if the partition is now empty (deleted).
    pub silver: Option<FileRecord>,
    /// The quarantine file, `None` if there are no violations (deleted).
    pub quarantine: Option<FileRecord>,
}

/// The record batches of one partition, built and owned: ready to be encoded
/// and uploaded on another task.
#[derive(Debug)]
pub struct PartitionBatches {
    /// The partition.
    pub partition: PartitionKey,
    /// Silver rows and their file (`None`: the partition has no silver rows).
    pub silver: Option<Side>,
    /// Quarantine rows and their file (`None`: no violations).
    pub quarantine: Option<Side>,
}

/// One side (silver or quarantine) of a partition to write: the last pass's
/// rows and the files of the earlier passes' (each sorted), merged as they
/// are written.
#[derive(Debug)]
pub struct Side {
    /// The file to write.
    pub path: Path,
    /// The last (or only) pass's rows, sorted.
    pub last: Option<RecordBatch>,
    /// The earlier passes' rows, parked on local disk ([`crate::spill`]).
    pub parked: Vec<std::path::PathBuf>,
}

/// The files of a partition's rows that earlier key-hash passes parked on
/// local disk ([`crate::spill`]), each sorted.
#[derive(Debug, Default)]
pub struct Pieces {
    /// Silver rows.
    pub silver: Vec<std::path::PathBuf>,
    /// Quarantine rows.
    pub quarantine: Vec<std::path::PathBuf>,
}

/// Builds the silver and the quarantine batch of one partition's `rows`
/// (sorted), `None` for an empty side.
pub fn build_partition(
    rows: &PartitionRows<'_>,
) -> Result<(Option<RecordBatch>, Option<RecordBatch>), BuildError> {
    let build = |schema: SchemaRef, rows: Vec<(Row<'_>, Option<Rule>)>| {
        if rows.is_empty() {
            return Ok(None);
        }
        build_batch(&schema, &rows).map(Some)
    };
    Ok((
        build(
            silver_stop_executions(),
            rows.silver.iter().map(|r| (*r, None)).collect(),
        )?,
        build(
            silver_quarantine(),
            rows.quarantine
                .iter()
                .map(|(r, rule)| (*r, Some(*rule)))
                .collect(),
        )?,
    ))
}

/// Builds the record batches of one partition from its `rows` (sorted) and
/// the `earlier` passes' pieces, merged into file order, named for `version`
/// written by `run`.
pub fn prepare(
    partition: PartitionKey,
    rows: &PartitionRows<'_>,
    earlier: Pieces,
    version: u64,
    run: &str,
) -> Result<PartitionBatches, PublishError> {
    let (silver_path, quarantine_path) = (
        silver_path(partition, version, run),
        quarantine_path(partition, version, run),
    );
    let (silver, quarantine) = match build_partition(rows) {
        Ok(b) => b,
        Err(BuildError::Arrow(source)) => {
            return Err(PublishError::Arrow {
                path: silver_path.to_string(),
                source,
            });
        }
        Err(BuildError::Unknown(c)) => return Err(PublishError::UnknownColumn(c)),
    };
    let side = |parked: Vec<std::path::PathBuf>, last: Option<RecordBatch>, path: Path| {
        (last.is_some() || !parked.is_empty()).then_some(Side { path, last, parked })
    };
    Ok(PartitionBatches {
        partition,
        quarantine: side(earlier.quarantine, quarantine, quarantine_path),
        silver: side(earlier.silver, silver, silver_path),
    })
}

/// Writes the new silver and quarantine objects of one partition (none for an
/// empty side: the commit drops the partition's old object from the table).
pub async fn publish(lake: Lake, batches: PartitionBatches) -> Result<Published, PublishError> {
    Ok(Published {
        quarantine: write(&lake, batches.quarantine).await?,
        silver: write(&lake, batches.silver).await?,
    })
}

async fn write(lake: &Lake, side: Option<Side>) -> Result<Option<FileRecord>, PublishError> {
    let Some(Side { path, last, parked }) = side else {
        return Ok(None);
    };
    let write_err = |source| PublishError::Write {
        path: path.to_string(),
        source,
    };
    let f = if parked.is_empty() {
        let Some(batch) = last else {
            return Ok(None);
        };
        let mut w = FileWriter::create(lake, path.clone(), batch.schema()).map_err(write_err)?;
        // In the merge's slices: the writer's pages follow the calls.
        let mut at = 0;
        while at < batch.num_rows() {
            let n = MERGE_BATCH_ROWS.min(batch.num_rows() - at);
            w.write(&batch.slice(at, n)).await.map_err(write_err)?;
            at += n;
        }
        w.finish().await.map_err(write_err)?
    } else {
        // The pieces merged as they are read, a few thousand rows at a time:
        // a partition larger than memory is written as one file all the same.
        let mut sources: Vec<Source> = Vec::with_capacity(parked.len() + 1);
        for p in &parked {
            let reader =
                crate::spill::open(p, MERGE_READ_ROWS).map_err(|e| PublishError::Parked {
                    path: p.display().to_string(),
                    reason: e.to_string(),
                })?;
            sources.push(Box::new(reader));
        }
        sources.extend(last.map(|b| Box::new(std::iter::once(Ok(b))) as Source));
        // A piece that fails to decode is a parked file gone bad: name the
        // run's directory of them.
        let dir = parked
            .first()
            .and_then(|p| p.parent())
            .map(|d| d.display().to_string())
            .unwrap_or_default();
        let parked_err = |e: arrow::error::ArrowError| PublishError::Parked {
            path: dir.clone(),
            reason: e.to_string(),
        };
        let mut merge = Merge::new(sources).map_err(parked_err)?;
        let mut w: Option<FileWriter> = None;
        while let Some(batch) = merge.next_batch().map_err(parked_err)? {
            let w = match &mut w {
                Some(w) => w,
                None => w.insert(
                    FileWriter::create(lake, path.clone(), batch.schema()).map_err(write_err)?,
                ),
            };
            w.write(&batch).await.map_err(write_err)?;
        }
        let Some(w) = w else {
            return Ok(None);
        };
        w.finish().await.map_err(write_err)?
    };
    Ok(Some(FileRecord {
        path: f.path.to_string(),
        rows: f.rows,
        bytes: f.bytes,
        sha256: f.sha256,
    }))
}

/// Rows a file is written at a time, merged from parked pieces or sliced
/// from one batch: the Parquet writer's pages depend on how the rows are
/// handed to it, so a fold in passes writes the bytes a fold in one pass
/// does only if both hand it the same slices.
const MERGE_BATCH_ROWS: usize = 8 * 1024;

/// Rows a merge reads of each piece at a time (a fold of dozens of passes
/// merges dozens of pieces).
const MERGE_READ_ROWS: usize = 1024;

/// Sorted record batches of one piece.
type Source = Box<dyn Iterator<Item = Result<RecordBatch, arrow::error::ArrowError>> + Send>;

/// The sort key of silver or quarantine rows in file order ([`sort_rows`]).
struct SortKeys {
    at: TimestampMicrosecondArray,
    id: StringArray,
    rule: Option<Int32Array>,
}

impl SortKeys {
    fn of(batch: &RecordBatch) -> Result<Self, arrow::error::ArrowError> {
        let (at, id, rule) = sort_columns(batch)?;
        let schema_err =
            |c: &str| arrow::error::ArrowError::SchemaError(format!("{c} has another type"));
        Ok(Self {
            at: at
                .as_any()
                .downcast_ref::<TimestampMicrosecondArray>()
                .ok_or_else(|| schema_err("first_event_at"))?
                .clone(),
            id: id
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(|| schema_err("execution_id"))?
                .clone(),
            rule: match rule {
                Some(r) => Some(
                    r.as_any()
                        .downcast_ref::<Int32Array>()
                        .ok_or_else(|| schema_err("violation"))?
                        .clone(),
                ),
                None => None,
            },
        })
    }

    /// Row `i`'s key; nulls first, as [`sort_rows`] orders them.
    fn key(&self, i: usize) -> (Option<i64>, Option<&str>, Option<i32>) {
        use arrow::array::Array;
        (
            self.at.is_valid(i).then(|| self.at.value(i)),
            self.id.is_valid(i).then(|| self.id.value(i)),
            self.rule.as_ref().map(|r| r.value(i)),
        )
    }
}

/// One piece being merged: its current batch (in [`Merge::held`]) and row.
struct Cursor {
    rest: Source,
    held: usize,
    keys: SortKeys,
    pos: usize,
    len: usize,
}

impl Cursor {
    /// Moves to the next non-empty batch; `None` when the piece is done.
    fn advance(
        rest: &mut Source,
        held: &mut Vec<RecordBatch>,
    ) -> Result<Option<(usize, SortKeys, usize)>, arrow::error::ArrowError> {
        for batch in rest.by_ref() {
            let batch = batch?;
            if batch.num_rows() == 0 {
                continue;
            }
            let keys = SortKeys::of(&batch)?;
            let len = batch.num_rows();
            held.push(batch);
            return Ok(Some((held.len() - 1, keys, len)));
        }
        Ok(None)
    }
}

/// A k-way merge of sorted pieces into file order, [`MERGE_BATCH_ROWS`] rows
/// at a time (the pieces of one partition hold disjoint executions).
struct Merge {
    cursors: Vec<Cursor>,
    /// The batches the cursors and the pending output rows refer to.
    held: Vec<RecordBatch>,
}

impl Merge {
    fn new(sources: Vec<Source>) -> Result<Self, arrow::error::ArrowError> {
        let mut held = Vec::new();
        let mut cursors = Vec::with_capacity(sources.len());
        for mut rest in sources {
            if let Some((h, keys, len)) = Cursor::advance(&mut rest, &mut held)? {
                cursors.push(Cursor {
                    rest,
                    held: h,
                    keys,
                    pos: 0,
                    len,
                });
            }
        }
        Ok(Self { cursors, held })
    }

    fn next_batch(&mut self) -> Result<Option<RecordBatch>, arrow::error::ArrowError> {
        let mut picked: Vec<(usize, usize)> = Vec::with_capacity(MERGE_BATCH_ROWS);
        while picked.len() < MERGE_BATCH_ROWS {
            // A few dozen pieces at most (the passes): a scan beats a heap.
            let Some(c) = (0..self.cursors.len()).min_by(|a, b| {
                let (a, b) = (&self.cursors[*a], &self.cursors[*b]);
                a.keys.key(a.pos).cmp(&b.keys.key(b.pos))
            }) else {
                break;
            };
            let cur = &mut self.cursors[c];
            picked.push((cur.held, cur.pos));
            cur.pos += 1;
            if cur.pos == cur.len {
                match Cursor::advance(&mut cur.rest, &mut self.held)? {
                    Some((h, keys, len)) => {
                        (cur.held, cur.keys, cur.pos, cur.len) = (h, keys, 0, len);
                    }
                    None => {
                        self.cursors.swap_remove(c);
                    }
                }
            }
        }
        if picked.is_empty() {
            return Ok(None);
        }
        let refs: Vec<&RecordBatch> = self.held.iter().collect();
        let out = arrow::compute::interleave_record_batch(&refs, &picked)?;
        // Keep only the batches the cursors still read.
        let mut kept = Vec::with_capacity(self.cursors.len());
        for cur in &mut self.cursors {
            kept.push(self.held[cur.held].clone());
            cur.held = kept.len() - 1;
        }
        self.held = kept;
        Ok(Some(out))
    }
}

/// Why a batch could not be built.
#[derive(Debug)]
pub enum BuildError {
    /// Arrow refused the arrays.
    Arrow(arrow::error::ArrowError),
    /// A column silver does not know.
    Unknown(String),
}

/// Builds the record batch of `schema` (silver or quarantine) from executions.
pub fn build_batch(
    schema: &SchemaRef,
    rows: &[(Row<'_>, Option<Rule>)],
) -> Result<RecordBatch, BuildError> {
    let accs = || rows.iter().map(|((_, a), _)| *a);
    let ts = |f: &dyn Fn(&Acc) -> Option<i64>| -> ArrayRef {
        Arc::new(TimestampMicrosecondArray::from_iter(accs().map(f)).with_timezone("UTC"))
    };
    let dec = |d: Dec, p: u8, s: i8| -> Result<ArrayRef, BuildError> {
        Ok(Arc::new(
            Decimal128Array::from_iter(accs().map(|a| a.dec(d)))
                .with_precision_and_scale(p, s)
                .map_err(BuildError::Arrow)?,
        ))
    };
    let text = |f: &dyn Fn(&Acc) -> Option<&str>| -> ArrayRef {
        Arc::new(StringArray::from_iter(accs().map(f)))
    };
    let ids = |f: &dyn Fn(&Acc) -> &EventId| -> ArrayRef {
        let mut b = StringBuilder::with_capacity(rows.len(), rows.len() * 36);
        let mut buf = [0u8; 36];
        for a in accs() {
            write_event_id(f(a), &mut buf);
            b.append_value(String::from_utf8_lossy(&buf));
        }
        Arc::new(b.finish())
    };
    let mut cols: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let col: ArrayRef = match field.name().as_str() {
            "execution_id" => ids(&|a| &a.first.id),
            "execution_key" => Arc::new(StringArray::from_iter_values(
                rows.iter().map(|((k, _), _)| *k),
            )),
            "operation_id" => {
                Arc::new(Int64Array::from_iter_values(accs().map(|a| a.operation_id)))
            }
            "client_id" => Arc::new(Int64Array::from_iter_values(accs().map(|a| a.client_id))),
            "symbol" => text(&|a| Some(a.symbol.as_str())),
            "side" => text(&|a| a.side.as_ref().map(InlineStr::as_str)),
            "status" => text(&|a| Some(a.status())),
            "triggered_at" => ts(&|a| a.first_at(EventType::StopTriggered)),
            "submitted_at" => ts(&|a| a.first_at(EventType::ExecutionSubmitted)),
            "executed_at" => ts(&|a| a.first_at(EventType::Executed)),
            "failed_at" => ts(&|a| a.first_at(EventType::Failed)),
            "blocked_at" => ts(&|a| a.first_at(EventType::Blocked)),
            "stop_price" => dec(Dec::StopPrice, 20, 8)?,
            "trigger_price" => dec(Dec::TriggerPrice, 20, 8)?,
            "quantity" => dec(Dec::Quantity, 20, 8)?,
            "exchange_order_id" => text(&|a| a.exchange_order_id.as_ref().map(InlineStr::as_str)),
            "fill_price" => dec(Dec::FillPrice, 20, 8)?,
            "slippage_pct" => dec(Dec::SlippagePct, 10, 4)?,
            "source" => text(&|a| Some(a.source.as_str())),
            "error_message" => text(&|a| a.error_message.as_deref()),
            "retry_count" => Arc::new(Int32Array::from_iter_values(accs().map(|a| a.retry_count))),
            "event_count" => Arc::new(Int64Array::from_iter_values(
                accs().map(|a| a.event_count as i64),
            )),
            "first_event_at" => ts(&|a| Some(a.first.at)),
            "last_event_at" => ts(&|a| Some(a.last_at)),
            "last_event_id" => ids(&|a| &a.last_id),
            "violation" => Arc::new(StringArray::from_iter(
                rows.iter().map(|(_, r)| r.map(Rule::name)),
            )),
            other => return Err(BuildError::Unknown(other.to_owned())),
        };
        cols.push(col);
    }
    RecordBatch::try_new(schema.clone(), cols).map_err(BuildError::Arrow)
}

/// Rewrites the quarantine file of a frozen partition (its executions began
/// before the retention horizon, [`crate::incremental`]) with the later events
/// of some of them: the rows of `old` but the `after_retention_horizon` rows of
/// the executions `replaced`, plus one such row for each execution in `late`
/// (sorted like every quarantine file; `None` if no row is left). Its silver
/// file and its other quarantine rows, which bronze can no longer recompute,
/// stay as they are.
pub async fn rewrite_late(
    lake: &Lake,
    partition: PartitionKey,
    old: Option<&FileRecord>,
    replaced: &rustc_hash::FxHashSet<KeyHash>,
    late: &[Row<'_>],
    version: u64,
    run: &str,
) -> Result<Option<FileRecord>, PublishError> {
    let path = quarantine_path(partition, version, run);
    let arrow_err = |source| PublishError::Arrow {
        path: path.to_string(),
        source,
    };
    let schema = silver_quarantine();
    let rows: Vec<(Row<'_>, Option<Rule>)> = late
        .iter()
        .map(|r| (*r, Some(Rule::AfterRetentionHorizon)))
        .collect();
    let mut batches = vec![match build_batch(&schema, &rows) {
        Ok(b) => b,
        Err(BuildError::Arrow(e)) => return Err(arrow_err(e)),
        Err(BuildError::Unknown(c)) => return Err(PublishError::UnknownColumn(c)),
    }];
    if let Some(old) = old {
        for b in read_checked(lake, old).await? {
            let keep = keep_mask(&b, replaced).map_err(arrow_err)?;
            batches.push(arrow::compute::filter_record_batch(&b, &keep).map_err(arrow_err)?);
        }
    }
    let all = arrow::compute::concat_batches(&schema, &batches).map_err(arrow_err)?;
    drop(batches);
    if all.num_rows() == 0 {
        return Ok(None);
    }
    let sorted = sort_rows(&all).map_err(arrow_err)?;
    write(
        lake,
        Some(Side {
            path,
            last: Some(sorted),
            parked: Vec::new(),
        }),
    )
    .await
}

/// Reads a quarantine file, checked against its record.
async fn read_checked(lake: &Lake, file: &FileRecord) -> Result<Vec<RecordBatch>, PublishError> {
    let read_err = |reason: String| PublishError::Read {
        path: file.path.clone(),
        reason,
    };
    let bytes = lake
        .get_bytes(&Path::from(file.path.as_str()))
        .await
        .map_err(|e| read_err(e.to_string()))?;
    if bytes.len() as u64 != file.bytes
        || lake_common::parquet_io::sha256_hex(&bytes) != file.sha256
    {
        return Err(read_err(
            "it does not match silver's manifest (size or checksum)".into(),
        ));
    }
    lake_common::parquet_io::read_bytes(bytes).map_err(|e| read_err(e.to_string()))
}

/// The rows of a quarantine batch to keep: all but the
/// `after_retention_horizon` rows of the `replaced` executions.
fn keep_mask(
    batch: &RecordBatch,
    replaced: &rustc_hash::FxHashSet<KeyHash>,
) -> Result<arrow::array::BooleanArray, arrow::error::ArrowError> {
    let text = |name: &str| {
        batch
            .column_by_name(name)
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
            .ok_or_else(|| arrow::error::ArrowError::SchemaError(format!("no text column {name}")))
    };
    let (keys, violations) = (text("execution_key")?, text("violation")?);
    let late = Rule::AfterRetentionHorizon.name();
    Ok((0..batch.num_rows())
        .map(|i| {
            let ours =
                violations.value(i) == late && replaced.contains(&KeyHash::of(keys.value(i)));
            Some(!ours)
        })
        .collect())
}

/// Sorts silver or quarantine rows into file order ([`PartitionRows::sort`]):
/// `(first_event_at, execution_id)`, then the rule of a quarantine row.
fn sort_rows(batch: &RecordBatch) -> Result<RecordBatch, arrow::error::ArrowError> {
    use arrow::compute::{SortColumn, lexsort_to_indices, take_record_batch};
    let (at, id, rule) = sort_columns(batch)?;
    let by: Vec<SortColumn> = [Some(at), Some(id), rule]
        .into_iter()
        .flatten()
        .map(|values| SortColumn {
            values,
            options: None,
        })
        .collect();
    take_record_batch(batch, &lexsort_to_indices(&by, None)?)
}

/// The columns of file order: `first_event_at`, `execution_id` and, for
/// quarantine rows, the rank of their rule.
fn sort_columns(
    batch: &RecordBatch,
) -> Result<(ArrayRef, ArrayRef, Option<ArrayRef>), arrow::error::ArrowError> {
    let column = |name: &str| {
        batch
            .column_by_name(name)
            .cloned()
            .ok_or_else(|| arrow::error::ArrowError::SchemaError(format!("no column {name}")))
    };
    let rule = match batch.column_by_name("violation") {
        Some(violations) => {
            let violations = violations
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(|| {
                    arrow::error::ArrowError::SchemaError("violation is not text".into())
                })?;
            Some(
                Arc::new(Int32Array::from_iter_values(violations.iter().map(|v| {
                    Rule::ALL
                        .iter()
                        .position(|r| Some(r.name()) == v)
                        .map_or(i32::MAX, |i| i as i32)
                }))) as ArrayRef,
            )
        }
        None => None,
    };
    Ok((column("first_event_at")?, column("execution_id")?, rule))
}
