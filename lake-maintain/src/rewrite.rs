//! Appending a rewrite without new data (a compaction, a retention) to
//! bronze's log: one mechanism for both.
//!
//! The entry is `batch = latest + 1`, created directly as committed with one
//! create-if-absent write. There is no pending phase: a run killed before the
//! write leaves at most files no manifest lists (garbage collection removes
//! them after its grace), and bronze never finds a pending rewrite to resume.
//! If an export takes the number first, the rewrite is lost and the caller
//! cleans up; the next night tries again. After the commit the files it
//! superseded are deleted (bronze's next run and garbage collection do it if
//! that fails) and a checkpoint falling due is written, as bronze would.

use std::time::Duration;

use lake_common::commit::{CommitError, Log, Mode};
use lake_common::manifest::{self, BatchManifest, BronzeLog};
use lake_common::{Dataset, Lake};
use object_store::path::Path;

/// Where a rewrite would go: bronze's log and its latest entry, or why no
/// rewrite may be appended now (a skip, not an error: the next night tries
/// again).
pub async fn prepare(
    lake: &Lake,
    dataset: Dataset,
) -> Result<Result<(BronzeLog, BatchManifest), String>, manifest::ManifestError> {
    if !lake.capabilities().create_if_absent {
        return Ok(Err(
            "the store has no conditional writes (S3_CONDITIONAL_WRITES=disabled): appending to \
             bronze's log safely needs them, or the advisory lock bronze-ingest holds"
                .into(),
        ));
    }
    let log = BronzeLog::load(lake, dataset).await?;
    let Some(latest) = log.latest_entry().map(|v| v.manifest) else {
        return Ok(Err("bronze has no batch yet".into()));
    };
    if latest.state == manifest::BatchState::Pending {
        return Ok(Err(format!(
            "batch {} is pending (an export is running, or the next one resumes it)",
            latest.batch
        )));
    }
    Ok(Ok((log, latest)))
}

/// How an append ended.
#[derive(Debug)]
pub enum Appended {
    /// The entry is committed (as read back).
    Committed(Box<BatchManifest>),
    /// Another run took the batch number first: nothing was committed.
    Lost {
        /// That run's owner id.
        owner: String,
    },
}

/// The committed entry of a rewrite that follows `latest`: the next batch
/// number, chained to `latest`'s horizon and carrying its snapshot and source
/// fields (a rewrite reads nothing from PostgreSQL), with `files` added and
/// `supersedes` removed. None of `latest`'s own marks carry over (its rows, a
/// backfill's days, another rewrite's days): the caller sets the one that says
/// what this rewrite is (`compacted_days`, `pruned_days`, `retained_before`).
pub fn entry(
    latest: BatchManifest,
    files: Vec<manifest::DataFile>,
    supersedes: Vec<String>,
) -> BatchManifest {
    BatchManifest {
        batch: latest.batch + 1,
        state: manifest::BatchState::Committed,
        h_prev: Some(latest.h),
        drop_captured: false,
        backfill_days: vec![],
        claim: Default::default(),
        committed_at: Some(chrono::Utc::now()),
        files,
        supersedes,
        rows: 0,
        compacted_days: vec![],
        pruned_days: vec![],
        retained_before: None,
        ..latest
    }
}

/// Appends `entry` (its `batch` the one after `log`'s latest) to `log`'s
/// dataset as committed, then deletes what it superseded and writes a
/// checkpoint if one falls due.
pub async fn append(
    lake: &Lake,
    dataset: Dataset,
    log: &BronzeLog,
    entry: BatchManifest,
    run_id: &str,
) -> Result<Appended, CommitError> {
    let batch = entry.batch;
    let written = entry.clone();
    let mode = if lake.capabilities().update_if_match {
        Mode::Conditional
    } else {
        Mode::CreateOnly
    };
    let appender = Log::new(lake.clone(), mode, Duration::from_secs(30));
    let path = dataset.manifest(batch);
    let committed = match appender.pin(&path, entry, run_id).await? {
        Ok(pinned) => {
            // Created committed; this only clears the lease field the protocol
            // set (a committed entry's lease means nothing to a reader).
            match pinned.commit(|_| {}).await {
                Ok(m) => m,
                Err(e) => {
                    // It was created committed: what was written is what it is.
                    tracing::warn!(error = %e, "The rewrite is committed; clearing its lease field failed");
                    written
                }
            }
        }
        Err(found) => {
            return Ok(Appended::Lost {
                owner: found.entry.claim.owner,
            });
        }
    };
    crate::failpoint("after-rewrite-commit");
    // What it replaced goes now: readers following the log read the new
    // state from here on.
    let doomed: Vec<Path> = committed
        .supersedes
        .iter()
        .map(|p| Path::from(p.as_str()))
        .collect();
    if let Err(e) = lake.delete_all(doomed).await {
        tracing::warn!(error = %e, "Could not delete the files the rewrite replaced; bronze's next run does");
    }
    // The log read at the start is the whole log this entry follows. The
    // outbox's checkpoints carry its row-identity state, which only bronze
    // writes (and deletes the previous one of): a checkpoint written here,
    // racing bronze's, could name a state bronze just deleted. Bronze's next
    // commit writes the one that falls due.
    if dataset != Dataset::BronzeOutbox
        && let Some(cp) = log.checkpoint_after(&committed)
        && let Err(e) = manifest::write_checkpoint(lake, &cp).await
    {
        tracing::warn!(error = %e, "Could not write the checkpoint; the next commit writes it");
    }
    Ok(Appended::Committed(Box::new(committed)))
}
