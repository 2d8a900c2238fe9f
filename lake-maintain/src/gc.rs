//! Garbage collection: deletes the objects no log references, once they are
//! older than a grace period (SPEC §11).
//!
//! The jobs clean up after themselves: bronze deletes the files a batch
//! superseded and the files of a batch that failed, silver the objects a version
//! replaced, both right after the commit and again on the next run. What is
//! left is what a pod killed between two requests leaves: a file uploaded but
//! never committed, a replaced object whose deletion was never retried because
//! no later run touched its partition. This is the backstop that removes them.
//!
//! **Referenced** is what the current state of every log names:
//!
//! * bronze: every live file (the checkpoint's and those of the entries after
//!   it, a pending entry's too) and the newest row-identity state;
//! * silver: for the latest committed version of every shard of every shard
//!   layout, its partitions' silver and quarantine files, the months of its
//!   key index and partition table, and its key index's filter pack.
//!
//! The logs themselves (`_manifests/` of each dataset, but silver's monthly
//! segments, which its manifests list like data) are never collected.
//!
//! **Why this is safe while the jobs run.** An object a log stops referencing
//! is never referenced again: every version and batch writes new names, and a
//! carried reference (silver's untouched months) was referenced by the version
//! it is carried from. An object not referenced *yet* belongs to a run still
//! writing, and is younger than the grace period, which is longer than any
//! job's deadline. So the references are read first, then the prefixes listed,
//! and an unreferenced object older than the grace is garbage whatever commits
//! meanwhile. A reader that still follows an older state may lose an object it
//! was about to read, exactly as when the job itself deletes what it replaced
//! (it retries with the new state); the grace makes that days, not seconds.
//!
//! A dataset that holds objects but has no log at all is refused, not swept:
//! that is a lake whose manifests were lost or a wrong `S3_PREFIX`, and
//! deleting "everything unreferenced" would delete everything.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use lake_common::manifest::{BatchState, BronzeLog};
use lake_common::{Dataset, Lake};
use object_store::path::Path;
use serde::Serialize;
use silver_transform::key::Shard;
use silver_transform::{manifest, partitions};

/// The prefixes swept.
pub const SWEPT: [Dataset; 4] = [
    Dataset::BronzeEvents,
    Dataset::BronzeOutbox,
    Dataset::SilverStopExecutions,
    Dataset::QuarantineStopExecutions,
];

/// Errors of garbage collection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GcError {
    /// A bronze log could not be read.
    #[error("reading the log of {dataset}: {source}")]
    Bronze {
        /// The dataset.
        dataset: Dataset,
        /// Why.
        source: lake_common::manifest::ManifestError,
    },
    /// A silver manifest could not be read.
    #[error("reading silver's manifests: {0}")]
    Silver(#[from] manifest::ManifestError),
    /// A month of silver's partition table could not be read.
    #[error("reading silver's partition table: {0}")]
    Partitions(#[from] partitions::PartitionsError),
    /// A dataset holds objects but no log names any.
    #[error(
        "{dataset} holds {objects} objects but no manifest: nothing was deleted. Check S3_BUCKET, \
         S3_PREFIX and LAKE_URL name the lake; if its manifests were lost, restore them before \
         running lake-maintain"
    )]
    NoLog {
        /// The dataset.
        dataset: Dataset,
        /// Objects found under it.
        objects: u64,
    },
    /// The store failed.
    #[error("object store error under {prefix}: {source}")]
    Store {
        /// The prefix.
        prefix: String,
        /// Why.
        source: object_store::Error,
    },
}

/// What the current state of every log references, and which datasets have a log.
#[derive(Debug, Default)]
pub struct Referenced {
    paths: HashSet<String>,
    logged: HashSet<Dataset>,
    /// Datasets a run is writing right now (a pending entry with a live lease).
    busy: HashSet<Dataset>,
}

impl Referenced {
    /// Whether `path` is referenced.
    pub fn contains(&self, path: &Path) -> bool {
        self.paths.contains(path.as_ref())
    }

    /// Objects referenced.
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// Whether nothing is referenced.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }
}

/// Reads what the logs reference. Any log that cannot be read fails the whole
/// collection: a partial set would make referenced objects look like garbage.
pub async fn referenced(lake: &Lake) -> Result<Referenced, GcError> {
    let mut out = Referenced::default();
    let now = Utc::now();
    for dataset in [Dataset::BronzeEvents, Dataset::BronzeOutbox] {
        let log = BronzeLog::load(lake, dataset)
            .await
            .map_err(|source| GcError::Bronze { dataset, source })?;
        if let Some(latest) = log.latest_entry() {
            out.logged.insert(dataset);
            let m = &latest.manifest;
            if m.state == BatchState::Pending && m.claim.is_live(now) {
                out.busy.insert(dataset);
            }
        }
        out.paths
            .extend(log.live_files().into_iter().map(|f| f.file.path));
        // Entries after the checkpoint, a pending one included: what they
        // superseded stays until the next checkpoint (the job deletes it).
        for entry in log.after() {
            out.paths
                .extend(entry.manifest.files.iter().map(|f| f.path.clone()));
        }
        if let Some(state) = log.identity_state() {
            out.paths.insert(state.path.clone());
        }
    }
    for count in manifest::shard_counts(lake).await? {
        out.logged.insert(Dataset::SilverStopExecutions);
        out.logged.insert(Dataset::QuarantineStopExecutions);
        for index in 0..count {
            let found = manifest::find(lake, Shard { index, count }).await?;
            if found.busy.is_some() {
                out.busy.insert(Dataset::SilverStopExecutions);
                out.busy.insert(Dataset::QuarantineStopExecutions);
            }
            let Some(m) = found.committed else { continue };
            for p in partitions::read_all(lake, &m).await? {
                out.paths.extend(
                    [p.silver, p.quarantine]
                        .into_iter()
                        .flatten()
                        .map(|f| f.path),
                );
            }
            let months = m.partition_months.iter().map(|r| &r.file);
            let segments = m.index_segments.iter().map(|s| &s.file);
            out.paths.extend(
                months
                    .chain(segments)
                    .chain(m.index.as_ref())
                    .chain(m.bloom_pack.as_ref())
                    .map(|f| f.path.clone()),
            );
        }
    }
    Ok(out)
}

/// Whether `path` is part of a log (never collected).
fn is_log(path: &Path) -> bool {
    SWEPT.iter().any(|ds| {
        path.as_ref()
            .strip_prefix(ds.dir())
            .and_then(|rest| rest.strip_prefix("/_manifests/"))
            .is_some_and(|rest| {
                !(*ds == Dataset::SilverStopExecutions && rest.starts_with("segments/"))
            })
    })
}

/// What one prefix's sweep found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Swept {
    /// The prefix.
    pub prefix: String,
    /// Objects listed.
    pub objects: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Objects of the log (entries, checkpoints).
    pub log: u64,
    /// Objects the logs reference.
    pub referenced: u64,
    /// Unreferenced objects younger than the grace (a run may still be writing them).
    pub young: u64,
    /// Unreferenced objects older than the grace: deleted (a dry run only counts them).
    pub garbage: u64,
    /// Their bytes.
    pub garbage_bytes: u64,
}

/// Sweeps one dataset's prefix: deletes (unless `dry_run`) every object that
/// is neither log nor referenced and was last modified before `cutoff`.
pub async fn sweep(
    lake: &Lake,
    refs: &Referenced,
    dataset: Dataset,
    cutoff: DateTime<Utc>,
    dry_run: bool,
) -> Result<Swept, GcError> {
    let prefix = dataset.root();
    let listed = list(lake, &prefix).await?;
    let mut out = Swept {
        prefix: lake.url_of(&prefix),
        ..Swept::default()
    };
    let mut garbage = Vec::new();
    for meta in listed {
        out.objects += 1;
        out.bytes += meta.size;
        if is_log(&meta.location) {
            out.log += 1;
        } else if refs.contains(&meta.location) {
            out.referenced += 1;
        } else if meta.last_modified > cutoff {
            out.young += 1;
        } else {
            out.garbage += 1;
            out.garbage_bytes += meta.size;
            tracing::debug!(path = %meta.location, last_modified = %meta.last_modified, "Garbage");
            garbage.push(meta.location);
        }
    }
    if out.objects > out.log && !refs.logged.contains(&dataset) {
        return Err(GcError::NoLog {
            dataset,
            objects: out.objects - out.log,
        });
    }
    if !dry_run && !garbage.is_empty() {
        lake.delete_all(garbage)
            .await
            .map_err(|e| store_error(&prefix, e))?;
    }
    Ok(out)
}

/// Every object under `prefix`.
async fn list(lake: &Lake, prefix: &Path) -> Result<Vec<object_store::ObjectMeta>, GcError> {
    lake.store()
        .list(Some(prefix))
        .try_collect()
        .await
        .map_err(|source| store_error(prefix, source))
}

fn store_error(prefix: &Path, source: object_store::Error) -> GcError {
    GcError::Store {
        prefix: prefix.to_string(),
        source,
    }
}

/// What the retention of run reports found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Reports {
    /// Reports listed under `_runs/`.
    pub objects: u64,
    /// Older than the retention: deleted (a dry run only counts them).
    pub expired: u64,
    /// Their bytes.
    pub expired_bytes: u64,
}

/// Deletes (unless `dry_run`) the run reports under `_runs/` last modified
/// before `cutoff`. Nothing reads an old report: the jobs and the smoke test
/// read their logs and the newest reports only.
pub async fn expire_reports(
    lake: &Lake,
    cutoff: DateTime<Utc>,
    dry_run: bool,
) -> Result<Reports, GcError> {
    let prefix = Path::from("_runs");
    let listed = list(lake, &prefix).await?;
    let mut out = Reports::default();
    let mut expired = Vec::new();
    for meta in listed {
        out.objects += 1;
        if meta.last_modified < cutoff {
            out.expired += 1;
            out.expired_bytes += meta.size;
            expired.push(meta.location);
        }
    }
    if !dry_run && !expired.is_empty() {
        lake.delete_all(expired)
            .await
            .map_err(|e| store_error(&prefix, e))?;
    }
    Ok(out)
}

/// The multipart uploads found open and those aborted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Uploads {
    /// Uploads open under the swept prefixes.
    pub open: u64,
    /// Started before the upload cutoff: aborted (a dry run only counts them).
    pub stale: u64,
    /// Kept because a run holds their dataset.
    pub in_use: u64,
}

/// Aborts (unless `dry_run`) the multipart uploads under the swept prefixes
/// started before `cutoff`. The jobs abort their own failed uploads when they
/// next hold their dataset; this catches those of a dataset no run touches any
/// more. An upload of a store that does not say when it started is never
/// aborted, and none under a dataset a run is writing (`refs`' live leases):
/// a store whose start times are wrong (moto reports a fixed one) cannot make
/// this abort a live run's upload.
pub async fn abort_stale_uploads(
    lake: &Lake,
    refs: &Referenced,
    cutoff: DateTime<Utc>,
    dry_run: bool,
) -> Result<Uploads, GcError> {
    let mut out = Uploads::default();
    for dataset in SWEPT {
        let prefix = dataset.root();
        let store_err = |source| store_error(&prefix, source);
        for u in lake.open_uploads(&prefix).await.map_err(store_err)? {
            out.open += 1;
            if refs.busy.contains(&dataset) {
                out.in_use += 1;
            } else if u.initiated.is_some_and(|t| t < cutoff) {
                out.stale += 1;
                if !dry_run {
                    lake.abort_upload(&u).await.map_err(store_err)?;
                    tracing::info!(path = %u.path, upload_id = %u.upload_id, "Aborted a stale multipart upload");
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_are_never_garbage_but_silver_segments_are_state() {
        let log = |p: &str| is_log(&Path::from(p));
        assert!(log("bronze/events/_manifests/0000000001.json"));
        assert!(log("bronze/outbox/_manifests/_last_checkpoint"));
        assert!(log(
            "silver/stop_executions/_manifests/shard-0-of-1/0000000003.json"
        ));
        assert!(!log(
            "silver/stop_executions/_manifests/segments/shard-0-of-1/2025-06/0000000003.index"
        ));
        assert!(!log(
            "bronze/events/date=2025-06-01/part-0000000001-0000.parquet"
        ));
        assert!(!log("bronze/outbox/_state/0000000010.identity"));
        assert!(!log("bronze/events_manifests/x"));
    }
}
