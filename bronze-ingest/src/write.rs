//! Writing a batch's chunks into date-partitioned Parquet files.
//!
//! Chunks arrive sorted by time, so partitions arrive one after another: one open
//! file at a time, rolled at ~128 MiB. File names carry the batch number and a
//! per-partition sequence (`part-<batch>-<n>`), which depend only on the data, so
//! re-running a pinned batch overwrites exactly the same names with the same bytes.

use chrono::NaiveDate;
use lake_common::manifest::DataFile;
use lake_common::parquet_io::FileWriter;
use lake_common::schema::{ExportSchema, SourceTable, TARGET_FILE_BYTES};
use lake_common::{Lake, Partition};
use object_store::path::Path;
use tokio::sync::{mpsc, oneshot};

use crate::extract::Chunk;

/// Writing failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Parquet encoding or the upload failed.
    #[error("writing {path} failed: {source}")]
    Parquet {
        /// The file.
        path: String,
        /// The error.
        source: parquet::errors::ParquetError,
    },
    /// The extraction failed: the open file was aborted, nothing stays under its name.
    #[error("the export from PostgreSQL failed; the file being written was aborted")]
    InputFailed,
    /// Rows came out of order (would break determinism).
    #[error("rows of {0} arrived after a later date: the export is not sorted")]
    Unsorted(NaiveDate),
    /// Comparing rows with the captured ones failed.
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
}

/// Rows seen per date in a dry run, files in a real one.
#[derive(Debug, Default)]
pub struct Written {
    /// Files written (empty in a dry run).
    pub files: Vec<DataFile>,
    /// Rows per date (both modes), after dropping captured rows.
    pub rows_per_date: std::collections::BTreeMap<NaiveDate, u64>,
    /// Rows dropped because they were already captured (row identity).
    pub captured_dropped: u64,
}

/// Called after each finished file (test fail-points hook in here).
pub type AfterFile<'a> = &'a (dyn Fn(&DataFile) + Sync);

/// The writer's input: the chunks, then whether they were all of them.
#[derive(Debug)]
pub struct Input {
    /// Chunks in time order; closed when the extraction ends, well or badly.
    pub chunks: mpsc::Receiver<Chunk>,
    /// `true` once the extraction succeeded; `false` or dropped: it failed.
    pub complete: oneshot::Receiver<bool>,
    /// Rows already captured, dropped from the input (after a table rewrite).
    pub drop_captured: Option<std::sync::Arc<crate::identity::Captured>>,
}

/// How a batch names its files.
#[derive(Debug, Clone)]
pub struct FileNames {
    /// The batch number (in every name, so clean-up finds a batch's files).
    pub batch: u64,
    /// `Some(attempt)` when a re-execution may not write the same bytes (a
    /// backfill; an outbox batch, whose rows are updated in place): the names
    /// are then unique to the attempt. `None`: the same bytes under the same
    /// names (an events batch), so a late write of a fenced attempt is harmless.
    pub attempt: Option<String>,
}

impl FileNames {
    /// The `n`-th file of `date`.
    pub fn path(&self, table: &SourceTable, date: NaiveDate, n: u32) -> Path {
        let p = Partition::date(date);
        match &self.attempt {
            None => table.dataset.batch_file(&p, self.batch, n),
            Some(a) => table.dataset.attempt_file(&p, self.batch, n, a),
        }
    }
}

/// Consumes chunks until the channel closes and writes them. The last file is
/// finished only if the input was complete: otherwise it is aborted (with its
/// multipart upload), so no truncated file ever lands under a final name.
pub async fn write_partitions(
    lake: &Lake,
    schema: &ExportSchema,
    names: &FileNames,
    dry_run: bool,
    input: Input,
    after_file: AfterFile<'_>,
) -> Result<Written, WriteError> {
    let mut state = State::default();
    let result = write_all(lake, schema, names, dry_run, input, after_file, &mut state).await;
    let State { open, out } = state;
    match result {
        Ok(()) => Ok(out),
        Err(e) => {
            if let Some((_, _, w)) = open {
                w.abort().await;
            }
            // The files finished so far are listed by no manifest: a glob
            // reader would see them until the retry. Deleted before the lease
            // is released, through the fenced store, which drops the request
            // once the lease can no longer be proved (a deterministic name is
            // also what a takeover writes and commits). Best effort: the
            // takeover's clean-up removes what is left.
            let done: Vec<Path> = out
                .files
                .iter()
                .map(|f| Path::from(f.path.as_str()))
                .collect();
            if !done.is_empty()
                && let Err(err) = lake.delete_all(done).await
            {
                tracing::warn!(error = %err, "Could not delete the files of the failed attempt; the retry does");
            }
            Err(e)
        }
    }
}

/// What the writer holds while it runs: the open file and what it finished.
#[derive(Default)]
struct State {
    open: Option<(NaiveDate, u32, FileWriter)>,
    out: Written,
}

async fn write_all(
    lake: &Lake,
    schema: &ExportSchema,
    names: &FileNames,
    dry_run: bool,
    mut input: Input,
    after_file: AfterFile<'_>,
    state: &mut State,
) -> Result<(), WriteError> {
    let State { open, out } = state;
    while let Some(mut chunk) = input.chunks.recv().await {
        if let Some(captured) = &input.drop_captured {
            let (kept, dropped) = captured.drop_captured(chunk.batch)?;
            out.captured_dropped += dropped;
            chunk.batch = kept;
            if chunk.batch.num_rows() == 0 {
                continue;
            }
        }
        *out.rows_per_date.entry(chunk.date).or_default() += chunk.batch.num_rows() as u64;
        if dry_run {
            continue;
        }
        let next_n = match &*open {
            Some((date, n, w)) if *date == chunk.date => {
                if w.approximate_size() < TARGET_FILE_BYTES {
                    None
                } else {
                    Some(n + 1)
                }
            }
            Some((date, _, _)) if *date > chunk.date => {
                return Err(WriteError::Unsorted(chunk.date));
            }
            _ => Some(0),
        };
        if let Some(n) = next_n {
            if let Some((date, _, w)) = open.take() {
                finish(out, date, w, after_file).await?;
            }
            let path = names.path(schema.table, chunk.date, n);
            let w = FileWriter::bronze(lake, schema, path.clone()).map_err(|source| {
                WriteError::Parquet {
                    path: path.to_string(),
                    source,
                }
            })?;
            *open = Some((chunk.date, n, w));
        }
        if let Some((_, _, w)) = open.as_mut() {
            w.write(&chunk.batch)
                .await
                .map_err(|source| WriteError::Parquet {
                    path: "current file".into(),
                    source,
                })?;
        }
    }
    if !(&mut input.complete).await.unwrap_or(false) {
        return Err(WriteError::InputFailed);
    }
    if let Some((date, _, w)) = open.take() {
        finish(out, date, w, after_file).await?;
    }
    Ok(())
}

async fn finish(
    out: &mut Written,
    date: NaiveDate,
    w: FileWriter,
    after_file: AfterFile<'_>,
) -> Result<(), WriteError> {
    let f = w.finish().await.map_err(|source| WriteError::Parquet {
        path: format!("a file of date={date}"),
        source,
    })?;
    let file = DataFile::new(date, f);
    tracing::debug!(path = %file.path, rows = file.rows, bytes = file.bytes, "Wrote file");
    after_file(&file);
    out.files.push(file);
    Ok(())
}
