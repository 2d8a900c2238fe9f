//! Compaction of closed bronze days (SPEC §11): the hourly files of a day
//! merged into a few large ones, recorded as a rewrite without new data.
//!
//! A day of `bronze/events` is **closed** once the latest batch's snapshot is
//! [`CLOSED_AFTER_DAYS`] days past it: bronze's incremental look-back (24 h)
//! no longer reaches it. A late row for a closed day (a transaction that
//! stayed open for days) still lands, as a new small file in a later batch;
//! the day then has two files again and is compacted again. The outbox is left
//! out: its old days keep receiving new versions of their rows, so no day of it
//! is ever closed.
//!
//! **What a compaction writes.** The live files of each day, merged in the
//! order SPEC §4 fixes (`occurred_at`, `event_id`) one batch of rows at a time
//! (memory: a few thousand rows per input file plus one output row group, not
//! the day), into files of up to ~128 MiB with row groups of 128 Ki rows and
//! zstd level 3. Every row is copied as it is, lineage columns included, so
//! what silver folds from the day is unchanged. The row count of the new files
//! must equal that of the old ones, or nothing is committed.
//!
//! **How it is committed.** As one entry of bronze's log, `batch = latest + 1`,
//! created directly as committed (one create-if-absent write): it lists the new
//! files, supersedes the old ones and names the days (`compacted_days`). Its
//! horizons and snapshot are those of the batch before it, so the next export
//! goes on from where the last one ended. There is no pending phase: a run
//! killed before the write leaves only files no manifest lists (garbage
//! collection removes them after its grace), and bronze never finds a pending
//! compaction to resume. If an export takes the batch number first, this run
//! deletes what it wrote and tries again the next day. Silver consumes the entry
//! without scanning its files or recomputing its days (the events are the same);
//! the failover check never reads its rows back.

use std::collections::BTreeMap;

use arrow::array::RecordBatch;
use arrow::row::{RowConverter, Rows, SortField};
use chrono::NaiveDate;
use futures::StreamExt;
use futures::stream::BoxStream;
use lake_common::manifest::{self, BatchManifest, DataFile, LiveFile};
use lake_common::parquet_io::FileWriter;
use lake_common::schema::{STOP_EVENTS, TARGET_FILE_BYTES};
use lake_common::{Dataset, Lake, Partition};
use object_store::path::Path;

use crate::rewrite;
use parquet::errors::ParquetError;
use serde::Serialize;

/// A day is closed once the latest batch's snapshot is this many days past it.
pub const CLOSED_AFTER_DAYS: u64 = 2;
/// Days compacted per run, oldest first: the first run over years of hourly
/// files catches up over several nights instead of holding one long run.
pub const MAX_DAYS_PER_RUN: usize = 62;
/// Rows read from each input file at a time.
const READ_ROWS: usize = 2048;
/// Rows handed to the writer at a time.
const WRITE_ROWS: usize = 8192;

/// Errors of a compaction.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CompactError {
    /// Bronze's log could not be read or written.
    #[error("bronze's log of {dataset}: {source}")]
    Log {
        /// The dataset.
        dataset: Dataset,
        /// Why.
        source: manifest::ManifestError,
    },
    /// The commit protocol failed.
    #[error("appending the compaction to bronze's log: {0}")]
    Commit(#[from] lake_common::commit::CommitError),
    /// Reading or writing Parquet failed.
    #[error("compacting {date}: {source}")]
    Parquet {
        /// The day.
        date: NaiveDate,
        /// Why.
        source: ParquetError,
    },
    /// Ordering the rows failed (a column of an unexpected type).
    #[error("compacting {date}: {source}")]
    Arrow {
        /// The day.
        date: NaiveDate,
        /// Why.
        source: arrow::error::ArrowError,
    },
    /// The new files do not hold as many rows as the old ones.
    #[error(
        "compacting {date}: the new files hold {written} rows, the old ones {expected}; nothing was committed"
    )]
    Rows {
        /// The day.
        date: NaiveDate,
        /// Rows written.
        written: u64,
        /// Rows listed.
        expected: u64,
    },
    /// The store failed.
    #[error("object store error: {0}")]
    Store(#[from] object_store::Error),
}

/// One compacted day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Day {
    /// The day.
    pub date: NaiveDate,
    /// Live files before.
    pub files_before: u64,
    /// Files after.
    pub files_after: u64,
    /// Rows (the same before and after).
    pub rows: u64,
    /// Bytes before.
    pub bytes_before: u64,
    /// Bytes after.
    pub bytes_after: u64,
}

/// What a compaction run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Compacted {
    /// The dataset.
    pub dataset: String,
    /// The batch that records it (`None`: nothing committed).
    pub batch: Option<u64>,
    /// The days compacted (a dry run: those it would compact, without the
    /// "after" figures).
    pub days: Vec<Day>,
    /// Closed days with more than one file left for a later run (the per-run limit).
    pub days_left: u64,
    /// Why nothing was compacted, when nothing was.
    pub skipped: Option<String>,
}

/// Compacts the closed days of `bronze/events` that have more than one live
/// file (at most [`MAX_DAYS_PER_RUN`]); a dry run only says which.
pub async fn compact(lake: &Lake, run_id: &str, dry_run: bool) -> Result<Compacted, CompactError> {
    let dataset = Dataset::BronzeEvents;
    let mut out = Compacted {
        dataset: dataset.to_string(),
        ..Compacted::default()
    };
    let skip = |mut out: Compacted, why: String| {
        tracing::info!(dataset = %dataset, "Not compacting: {why}");
        out.skipped = Some(why);
        Ok(out)
    };
    let (log, latest) = match rewrite::prepare(lake, dataset)
        .await
        .map_err(|source| CompactError::Log { dataset, source })?
    {
        Ok(found) => found,
        Err(why) => return skip(out, why),
    };
    let closed_before = latest.snapshot_time.date_naive() - chrono::Days::new(CLOSED_AFTER_DAYS);
    let mut by_day: BTreeMap<NaiveDate, Vec<LiveFile>> = BTreeMap::new();
    for f in log.live_files() {
        by_day.entry(f.file.date).or_default().push(f);
    }
    let candidates: Vec<(NaiveDate, Vec<LiveFile>)> = by_day
        .into_iter()
        .filter(|(date, files)| *date < closed_before && files.len() > 1)
        .collect();
    out.days_left = candidates.len().saturating_sub(MAX_DAYS_PER_RUN) as u64;
    let candidates: Vec<_> = candidates.into_iter().take(MAX_DAYS_PER_RUN).collect();
    if candidates.is_empty() {
        return skip(
            out,
            format!("no closed day (before {closed_before}) has more than one file"),
        );
    }
    let batch = latest.batch + 1;
    let mut written: Vec<DataFile> = Vec::new();
    let mut supersedes: Vec<String> = Vec::new();
    for (date, files) in &candidates {
        let mut day = Day {
            date: *date,
            files_before: files.len() as u64,
            files_after: 0,
            rows: files.iter().map(|f| f.file.rows).sum(),
            bytes_before: files.iter().map(|f| f.file.bytes).sum(),
            bytes_after: 0,
        };
        if !dry_run {
            let new = match merge_day(lake, *date, files, batch, run_id).await {
                Ok(Some(new)) => new,
                Ok(None) => continue,
                Err(e) => {
                    delete_quietly(lake, &written).await;
                    return Err(e);
                }
            };
            day.files_after = new.len() as u64;
            day.bytes_after = new.iter().map(|f| f.bytes).sum();
            written.extend(new);
            supersedes.extend(files.iter().map(|f| f.file.path.clone()));
        }
        out.days.push(day);
    }
    if dry_run || written.is_empty() {
        return Ok(out);
    }

    crate::failpoint("compact-before-commit");
    let entry = BatchManifest {
        compacted_days: out.days.iter().map(|d| d.date).collect(),
        ..rewrite::entry(latest, written.clone(), supersedes.clone())
    };
    match rewrite::append(lake, dataset, &log, entry, run_id).await? {
        rewrite::Appended::Committed(_) => {}
        rewrite::Appended::Lost { owner } => {
            delete_quietly(lake, &written).await;
            out.days.clear();
            return skip(
                out,
                format!(
                    "run {owner} took batch {batch} first; this run deleted what it wrote and the next one compacts"
                ),
            );
        }
    }
    out.batch = Some(batch);
    tracing::info!(dataset = %dataset, batch, days = out.days.len(), files_before = supersedes.len(), files_after = written.len(), "Committed a compaction");
    Ok(out)
}

async fn delete_quietly(lake: &Lake, files: &[DataFile]) {
    let paths: Vec<Path> = files.iter().map(|f| Path::from(f.path.as_str())).collect();
    if let Err(e) = lake.delete_all(paths).await {
        tracing::warn!(error = %e, "Could not delete the files of an uncommitted compaction; garbage collection does");
    }
}

/// One input file's position in the merge.
struct Cursor {
    stream: BoxStream<'static, Result<RecordBatch, ParquetError>>,
    /// Its current batch's slot in the batches the pending output refers to.
    slot: usize,
    rows: Rows,
    pos: usize,
    len: usize,
}

/// Merges one day's files into new ones; `None` if their schemas differ (a
/// column added mid-day: the day is left as it is).
async fn merge_day(
    lake: &Lake,
    date: NaiveDate,
    files: &[LiveFile],
    batch: u64,
    run_id: &str,
) -> Result<Option<Vec<DataFile>>, CompactError> {
    let pq = |source| CompactError::Parquet { date, source };
    let ar = |source| CompactError::Arrow { date, source };
    let mut schema = None;
    let mut streams = Vec::new();
    for f in files {
        let (s, stream) = lake_common::parquet_io::read_listed(
            lake,
            &Path::from(f.file.path.as_str()),
            f.file.bytes,
            READ_ROWS,
        )
        .await
        .map_err(pq)?;
        match &schema {
            None => schema = Some(s),
            Some(first) if first.fields() != s.fields() => {
                tracing::info!(%date, "Not compacting a day whose files have different columns");
                return Ok(None);
            }
            Some(_) => {}
        }
        streams.push(stream.boxed());
    }
    let Some(schema) = schema else {
        return Ok(Some(vec![]));
    };
    let sort: Vec<usize> = [STOP_EVENTS.time_column, STOP_EVENTS.key]
        .iter()
        .map(|c| schema.index_of(c))
        .collect::<Result<_, _>>()
        .map_err(ar)?;
    let converter = RowConverter::new(
        sort.iter()
            .map(|i| SortField::new(schema.field(*i).data_type().clone()))
            .collect(),
    )
    .map_err(ar)?;
    let convert = |b: &RecordBatch| {
        let cols: Vec<_> = sort.iter().map(|i| b.column(*i).clone()).collect();
        converter.convert_columns(&cols)
    };

    // The batches the pending output rows refer to, and the cursors into them.
    let mut held: Vec<RecordBatch> = Vec::new();
    let mut cursors: Vec<Cursor> = Vec::new();
    for mut stream in streams {
        if let Some(b) = next_non_empty(&mut stream).await.map_err(pq)? {
            let rows = convert(&b).map_err(ar)?;
            cursors.push(Cursor {
                stream,
                slot: held.len(),
                len: b.num_rows(),
                rows,
                pos: 0,
            });
            held.push(b);
        }
    }
    let partition = Partition::date(date);
    let mut out: Vec<DataFile> = Vec::new();
    let mut writer: Option<FileWriter> = None;
    let mut picks: Vec<(usize, usize)> = Vec::with_capacity(WRITE_ROWS);
    let new_writer = |n: u32| {
        FileWriter::with_properties(
            lake,
            Dataset::BronzeEvents.attempt_file(&partition, batch, n, run_id),
            schema.clone(),
            lake_common::schema::compacted_writer_properties(&STOP_EVENTS),
        )
    };
    loop {
        let next = cursors
            .iter()
            .enumerate()
            .min_by(|(_, a), (_, b)| a.rows.row(a.pos).cmp(&b.rows.row(b.pos)))
            .map(|(i, _)| i);
        let done = next.is_none();
        if let Some(i) = next {
            let c = &mut cursors[i];
            picks.push((c.slot, c.pos));
            c.pos += 1;
            if c.pos == c.len {
                match next_non_empty(&mut c.stream).await.map_err(pq)? {
                    Some(b) => {
                        c.rows = convert(&b).map_err(ar)?;
                        c.pos = 0;
                        c.len = b.num_rows();
                        c.slot = held.len();
                        held.push(b);
                    }
                    None => {
                        cursors.remove(i);
                    }
                }
            }
        }
        if picks.len() == WRITE_ROWS || (done && !picks.is_empty()) {
            let refs: Vec<&RecordBatch> = held.iter().collect();
            let merged = arrow::compute::interleave_record_batch(&refs, &picks).map_err(ar)?;
            picks.clear();
            let w = match &mut writer {
                Some(w) => w,
                None => writer.insert(new_writer(out.len() as u32).map_err(pq)?),
            };
            w.write(&merged).await.map_err(pq)?;
            if w.approximate_size() >= TARGET_FILE_BYTES
                && let Some(w) = writer.take()
            {
                out.push(DataFile::new(date, w.finish().await.map_err(pq)?));
            }
            // Only the cursors' current batches are still needed.
            let mut kept = Vec::with_capacity(cursors.len());
            for c in &mut cursors {
                kept.push(held[c.slot].clone());
                c.slot = kept.len() - 1;
            }
            held = kept;
        }
        if done {
            break;
        }
    }
    if let Some(w) = writer.take() {
        out.push(DataFile::new(date, w.finish().await.map_err(pq)?));
    }
    let expected: u64 = files.iter().map(|f| f.file.rows).sum();
    let written: u64 = out.iter().map(|f| f.rows).sum();
    if written != expected {
        delete_quietly(lake, &out).await;
        return Err(CompactError::Rows {
            date,
            written,
            expected,
        });
    }
    Ok(Some(out))
}

async fn next_non_empty(
    stream: &mut BoxStream<'static, Result<RecordBatch, ParquetError>>,
) -> Result<Option<RecordBatch>, ParquetError> {
    while let Some(b) = stream.next().await {
        let b = b?;
        if b.num_rows() > 0 {
            return Ok(Some(b));
        }
    }
    Ok(None)
}
