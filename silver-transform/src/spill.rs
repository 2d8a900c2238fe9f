//! The rows of a fold's key-hash passes, parked on local disk until publish
//! merges each partition's pieces (SPEC §10).
//!
//! A fold larger than the memory budget allows ([`crate::memory::Budget::passes`])
//! runs in passes, each folding the executions of one part of the key-hash
//! space from all the days it reads ([`crate::fold::KeyFilter::Part`]). An
//! execution's events all fall in one part, so each pass's executions are
//! complete: they are checked and routed as the pass ends, their rows written
//! here, sorted, one file per partition and side, and their key index
//! entries go to the rebuilt index ([`crate::segments::Rebuild`]). The last
//! pass is parked too, so publishing holds the merges and no executions;
//! [`crate::publish`] merges each partition's pieces as it writes them.
//!
//! The files are Parquet (zstd, level 1) in a private temporary directory under
//! `TMPDIR` (the pod's emptyDir at /tmp), removed when the run ends. A run
//! that was killed (out of memory, say) cannot remove its own, and a container
//! restarted in the same pod keeps the emptyDir: each directory holds a file
//! its run keeps locked, and the next run that parks removes every directory
//! whose lock nobody holds.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::PathBuf;

use arrow::array::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::fold::Folded;
use crate::index::KeyInfo;
use crate::key::{KeyHash, PartitionKey};
use crate::publish::{BuildError, Pieces, build_partition};
use crate::route::Routing;

/// Prefix of a run's directory under `TMPDIR`.
const DIR_PREFIX: &str = "silver-passes-";
/// The file a run's directory holds, locked while the run lives.
const LOCK_FILE: &str = "lock";

/// Rows of a parked file's row groups.
const PARKED_ROW_GROUP_ROWS: usize = 1_024;

/// Errors of parking rows on local disk.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpillError {
    /// The local disk refused (full, read-only, gone).
    #[error(
        "cannot park the rows of a fold pass on local disk ({path}): {reason}; the run needs free space \
         under TMPDIR (the pod's emptyDir at /tmp: raise its sizeLimit), or a larger SILVER_MEMORY_MB \
         so that the fold needs fewer passes; nothing was published"
    )]
    Disk {
        /// The file or directory.
        path: String,
        /// Why.
        reason: String,
    },
    /// The rows could not be built (a schema mismatch: a bug).
    #[error("cannot build the rows of a fold pass: {0}")]
    Build(String),
}

/// A partition's parked files.
#[derive(Debug, Default)]
struct Parked {
    silver: Vec<PathBuf>,
    quarantine: Vec<PathBuf>,
}

/// The parked rows of a run's earlier passes.
#[derive(Debug, Default)]
pub struct Spill {
    /// Where the run's directory goes (`None`: `TMPDIR`).
    base: Option<PathBuf>,
    /// The run's directory and its held lock.
    dir: Option<(tempfile::TempDir, File)>,
    parked: BTreeMap<PartitionKey, Parked>,
    files: u64,
    /// Key index entries of the parked executions.
    pub entries: Vec<(KeyHash, KeyInfo)>,
    /// Bytes written.
    pub bytes: u64,
}

impl Spill {
    /// Parks under `base` instead of `TMPDIR`.
    pub fn in_dir(base: PathBuf) -> Self {
        Self {
            base: Some(base),
            ..Self::default()
        }
    }

    /// Checks and routes one pass's `executions` (all of them: a pass's
    /// partitions are all published) into `routing`, writes their rows and
    /// returns their index entries; the executions are freed.
    pub fn park(
        &mut self,
        routing: &mut Routing,
        executions: Folded,
    ) -> Result<Vec<(KeyHash, KeyInfo)>, SpillError> {
        let rows = routing.route(&executions, |_| true);
        for (p, r) in &rows {
            let (silver, quarantine) = build_partition(r).map_err(|e| match e {
                BuildError::Arrow(e) => SpillError::Build(e.to_string()),
                BuildError::Unknown(c) => SpillError::Build(format!("unknown column {c}")),
            })?;
            if let Some(b) = silver {
                let path = self.write(&b)?;
                self.parked.entry(*p).or_default().silver.push(path);
            }
            if let Some(b) = quarantine {
                let path = self.write(&b)?;
                self.parked.entry(*p).or_default().quarantine.push(path);
            }
        }
        drop(rows);
        Ok(crate::incremental::entries_of(executions))
    }

    /// The parked pieces of partition `p` (none if nothing was parked).
    pub fn take(&self, p: &PartitionKey) -> Result<Pieces, SpillError> {
        let Some(parked) = self.parked.get(p) else {
            return Ok(Pieces::default());
        };
        Ok(Pieces {
            silver: parked.silver.clone(),
            quarantine: parked.quarantine.clone(),
        })
    }

    /// Files written.
    pub fn files(&self) -> u64 {
        self.files
    }

    fn write(&mut self, batch: &RecordBatch) -> Result<PathBuf, SpillError> {
        let dir = match &self.dir {
            Some((d, _)) => d.path().to_owned(),
            None => {
                let base = self.base.clone().unwrap_or_else(std::env::temp_dir);
                let (d, lock) = open_dir(&base).map_err(|e| SpillError::Disk {
                    path: base.display().to_string(),
                    reason: e.to_string(),
                })?;
                let path = d.path().to_owned();
                self.dir = Some((d, lock));
                path
            }
        };
        let path = dir.join(format!("{:06}.parquet", self.files));
        let disk = |reason: String| SpillError::Disk {
            path: path.display().to_string(),
            reason,
        };
        let file = File::create(&path).map_err(|e| disk(e.to_string()))?;
        // Compressed (fast): a large fold parks about as much as it publishes.
        // Small row groups: the merge that reads a partition's pieces back
        // holds one row group of each at a time ([`crate::publish`]).
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .set_max_row_group_row_count(Some(PARKED_ROW_GROUP_ROWS))
            .build();
        let mut w = ArrowWriter::try_new(file, batch.schema(), Some(props))
            .map_err(|e| disk(e.to_string()))?;
        w.write(batch).map_err(|e| disk(e.to_string()))?;
        w.close().map_err(|e| disk(e.to_string()))?;
        self.files += 1;
        self.bytes += std::fs::metadata(&path).map_or(0, |m| m.len());
        Ok(path)
    }
}

/// Creates this run's directory under `base`, its lock held, after removing
/// the directories of runs that died.
fn open_dir(base: &std::path::Path) -> std::io::Result<(tempfile::TempDir, File)> {
    let stale = remove_stale(base);
    if stale > 0 {
        tracing::info!(
            directories = stale,
            "Removed the parked rows of runs that died"
        );
    }
    let dir = tempfile::Builder::new()
        .prefix(DIR_PREFIX)
        .tempdir_in(base)?;
    let lock = File::create(dir.path().join(LOCK_FILE))?;
    lock.lock()?;
    Ok((dir, lock))
}

/// Removes the run directories under `base` whose lock no process holds
/// (a directory without a lock file is being created: left alone).
fn remove_stale(base: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(base) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        if !e.file_name().to_string_lossy().starts_with(DIR_PREFIX) {
            continue;
        }
        let Ok(lock) = File::open(e.path().join(LOCK_FILE)) else {
            continue;
        };
        if lock.try_lock().is_ok() {
            drop(lock);
            if std::fs::remove_dir_all(e.path()).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

/// Reads a parked file back, `rows` at a time (in its sorted order).
pub fn open(
    path: &std::path::Path,
    rows: usize,
) -> Result<parquet::arrow::arrow_reader::ParquetRecordBatchReader, SpillError> {
    let disk = |reason: String| SpillError::Disk {
        path: path.display().to_string(),
        reason,
    };
    let file = File::open(path).map_err(|e| disk(e.to_string()))?;
    ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.with_batch_size(rows).build())
        .map_err(|e| disk(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A killed run's directory goes with the next run that parks; a live
    /// run's stays, and so does this run's until it ends.
    #[test]
    fn the_parked_rows_of_a_run_that_died_are_removed_and_a_live_runs_kept() {
        let base = tempfile::tempdir().unwrap();
        let dead = base.path().join(format!("{DIR_PREFIX}dead"));
        std::fs::create_dir(&dead).unwrap();
        std::fs::write(dead.join(LOCK_FILE), b"").unwrap();
        std::fs::write(dead.join("000000.parquet"), b"rows").unwrap();
        let (live, live_lock) = open_dir(base.path()).unwrap();
        let other = base.path().join("not-ours");
        std::fs::create_dir(&other).unwrap();

        let (mine, _lock) = open_dir(base.path()).unwrap();
        assert!(!dead.exists(), "the dead run's directory is removed");
        assert!(live.path().exists(), "a live run's directory stays");
        assert!(other.exists(), "what is not a run's directory stays");
        assert!(mine.path().join(LOCK_FILE).exists());

        // Once that run is gone (its lock released, its directory left
        // behind, as by a kill), the next one removes it.
        let left = live.keep();
        drop(live_lock);
        let (_next, _l) = open_dir(base.path()).unwrap();
        assert!(!left.exists());
        assert!(mine.path().exists());
    }
}
