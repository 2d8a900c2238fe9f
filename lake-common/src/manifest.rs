//! Bronze batch manifests: the commit log of a bronze dataset.
//!
//! A batch is *pinned* by creating `_manifests/<batch>.json` in state `pending`
//! (create-if-absent, so exactly one run owns a batch number) and *committed* by
//! rewriting it with the list of its files. Readers that honour manifests see the
//! union of the committed batches' files minus the files a later committed batch
//! superseded (a backfill); they never see a pending batch's files. Silver reads
//! bronze through the same reduction for the same reason.
//!
//! Every [`CHECKPOINT_INTERVAL`] batches a commit also writes a [`Checkpoint`],
//! the reduced state at that batch, and the `_last_checkpoint` hint; readers go
//! through [`BronzeLog`], which reads the checkpoint and only the entries after
//! it, so a run's requests do not grow with the dataset's age.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use chrono::{DateTime, NaiveDate, Utc};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStoreExt, UpdateVersion};
use serde::{Deserialize, Serialize};

use crate::commit::{Claim, Entry};
use crate::paths::Dataset;
use crate::store::Lake;

/// Version of the manifest format, bumped on incompatible change.
pub const MANIFEST_FORMAT: u32 = 1;

/// Lifecycle of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchState {
    /// Pinned: the range is fixed, files may be partly written, nothing is visible.
    Pending,
    /// Committed: `files` are the batch's visible output.
    Committed,
}

/// One data file of a committed batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataFile {
    /// Path relative to the lake root.
    pub path: String,
    /// The UTC date partition.
    pub date: NaiveDate,
    /// Rows in the file.
    pub rows: u64,
    /// Size in bytes.
    pub bytes: u64,
    /// Hex SHA-256 of the file's bytes.
    pub sha256: String,
}

impl DataFile {
    /// The manifest entry of a file [`FileWriter`](crate::parquet_io::FileWriter) wrote for `date`.
    pub fn new(date: NaiveDate, file: crate::parquet_io::WrittenFile) -> Self {
        Self {
            path: file.path.to_string(),
            date,
            rows: file.rows,
            bytes: file.bytes,
            sha256: file.sha256,
        }
    }
}

/// The manifest of one bronze batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchManifest {
    /// Format version ([`MANIFEST_FORMAT`]).
    pub format: u32,
    /// The dataset (`bronze/events`, …).
    pub dataset: String,
    /// Batch number; batches are numbered 1, 2, … without gaps.
    pub batch: u64,
    /// Pending or committed.
    pub state: BatchState,
    /// Lower transaction-id horizon (inclusive); `None` for the first batch.
    pub h_prev: Option<u64>,
    /// Upper transaction-id horizon (exclusive): `pg_snapshot_xmin` of the snapshot.
    pub h: u64,
    /// `pg_snapshot_xmax` of the snapshot: rows of `[h, xmax)` wait for the next batch.
    pub xmax: u64,
    /// Snapshot time (`now()` of the run that pinned the batch); also `_ingested_at`.
    pub snapshot_time: DateTime<Utc>,
    /// Lower bound on the time column used for the scan (snapshot time of the
    /// previous batch minus the lookback); `None` scans everything.
    pub scan_from: Option<DateTime<Utc>>,
    /// `system_identifier` of the PostgreSQL cluster.
    pub system_identifier: String,
    /// The server's timeline in the batch's snapshot (a promotion changes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<u32>,
    /// The WAL position of the batch's snapshot (`X/Y`): a restore or a failover
    /// to a lagging replica moves it back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal_lsn: Option<String>,
    /// `pg_relation_filenode` of the source table in the batch's snapshot: a
    /// table rewrite changes it (`None` in lakes written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relfilenode: Option<u64>,
    /// Whether the batch drops rows already captured (row identity, SPEC §5.7):
    /// set when it is pinned after a change of the table's file node, so every
    /// attempt of the batch selects the same rows.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drop_captured: bool,
    /// Set by the batch that first saw a new file node: the `xmax` of its
    /// snapshot. The rewrite's own xid lies below it but possibly above that
    /// batch's horizon (a transaction older than the rewrite was still open),
    /// so every later batch whose `h_prev` is below it drops captured rows too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_captured_below: Option<u64>,
    /// Days re-exported whole by a backfill (they supersede earlier files of those days).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backfill_days: Vec<NaiveDate>,
    /// Columns of the source table the contract does not name, exported by
    /// this batch after the contract columns (SPEC §5.8). Fixed when the batch
    /// is pinned, so every attempt writes the same columns; a column added
    /// later is captured from the next batch on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub added_columns: Vec<crate::schema::AddedColumn>,
    /// Who owns the pending batch and its lease (owner, attempt, write id,
    /// lease expiry; flattened: the JSON keeps `owner` and `lease_expires_at`).
    #[serde(flatten)]
    pub claim: Claim,
    /// When the batch was committed.
    pub committed_at: Option<DateTime<Utc>>,
    /// The batch's files (committed only).
    #[serde(default)]
    pub files: Vec<DataFile>,
    /// Files of earlier batches this batch replaces (backfill, compaction).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub supersedes: Vec<String>,
    /// Rows read from PostgreSQL (committed only); equals the sum of `files[].rows`
    /// (0 for a compaction, which reads none).
    #[serde(default)]
    pub rows: u64,
    /// A compaction (`lake-maintain`, SPEC §11): the live files of these days
    /// rewritten into fewer, with exactly the same rows. It carries no new
    /// data and no horizon of its own (its horizons and snapshot are those of
    /// the batch before it), so silver consumes it without recomputing
    /// anything, and the failover check never reads its rows back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub compacted_days: Vec<NaiveDate>,
    /// Retention (`lake-maintain`, SPEC §11): this entry removed every live
    /// file of the days before this date, and adds none. Like a compaction it
    /// carries no new data and no horizon of its own. The lake's retention
    /// horizon is the latest such date ([`BronzeLog::retained_before`]): silver
    /// reads bronze only from it on and keeps the executions that began before
    /// it as they are (docs/maintenance.md, "Retention").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retained_before: Option<NaiveDate>,
    /// Retention of an updated-in-place table (the outbox, `lake-maintain`):
    /// this entry removed the live files of these days that held no version
    /// a reader still needs (every row of them superseded by a later captured
    /// version, or deleted from PostgreSQL), and adds none. The latest
    /// captured version of every row PostgreSQL holds stays, whatever its
    /// day. Like a compaction it carries no new data and no horizon.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pruned_days: Vec<NaiveDate>,
}

impl BatchManifest {
    /// Whether this entry is a compaction (no new data).
    pub fn is_compaction(&self) -> bool {
        !self.compacted_days.is_empty()
    }

    /// Whether this entry is a rewrite without new data: a compaction or a
    /// retention of either kind (its files, if any, hold rows read before).
    pub fn is_rewrite(&self) -> bool {
        self.is_compaction() || self.retained_before.is_some() || !self.pruned_days.is_empty()
    }

    /// Total rows per date of this batch's files.
    pub fn rows_per_date(&self) -> BTreeMap<NaiveDate, u64> {
        let mut m = BTreeMap::new();
        for f in &self.files {
            *m.entry(f.date).or_default() += f.rows;
        }
        m
    }

    /// Serialises for storage (pretty: operators read these).
    pub fn to_bytes(&self) -> Bytes {
        // Serialising a struct of plain fields cannot fail.
        Bytes::from(serde_json::to_vec_pretty(self).unwrap_or_default())
    }
}

impl Entry for BatchManifest {
    fn claim(&self) -> &Claim {
        &self.claim
    }

    fn claim_mut(&mut self) -> &mut Claim {
        &mut self.claim
    }

    fn is_pending(&self) -> bool {
        self.state == BatchState::Pending
    }
}

/// Errors of reading or writing manifests.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// The store failed.
    #[error("object store error on {path}: {source}")]
    Store {
        /// The manifest path.
        path: String,
        /// The store's error.
        source: object_store::Error,
    },
    /// The manifest was written by a newer release of the jobs.
    #[error(
        "manifest {path} was written by a newer release (lake format {format}; this binary reads up to {supported}): \
         run that release or a newer one; this one wrote nothing"
    )]
    NewerFormat {
        /// The manifest path.
        path: String,
        /// Its format.
        format: u32,
        /// The newest format this binary reads.
        supported: u32,
    },
    /// A checkpoint is not what its name says, or does not parse (copied,
    /// edited or damaged by hand): derived data, so deleting it is the fix.
    #[error("checkpoint {path} is unusable: {problem}; delete it (the log is read without it)")]
    Inconsistent {
        /// The checkpoint path.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// A manifest does not parse (or cannot be encoded): the lake was written by something else.
    #[error(
        "manifest {path} is not a valid batch manifest: {source}; it was changed outside the jobs: \
         restore it (a backup, the bucket's versioning), never edit manifests by hand"
    )]
    Parse {
        /// The manifest path.
        path: String,
        /// The parse error.
        source: serde_json::Error,
    },
}

/// Refuses a manifest written by a newer release before trying to parse it,
/// so a rolled-back binary stops with what to do instead of a parse error or,
/// worse, a misreading of fields it does not know.
pub fn check_format(path: &str, bytes: &[u8], supported: u32) -> Result<(), ManifestError> {
    #[derive(Deserialize)]
    struct Format {
        format: u32,
    }
    match serde_json::from_slice::<Format>(bytes) {
        Ok(f) if f.format > supported => Err(ManifestError::NewerFormat {
            path: path.to_owned(),
            format: f.format,
            supported,
        }),
        _ => Ok(()),
    }
}

fn store_err(path: &Path) -> impl FnOnce(object_store::Error) -> ManifestError + '_ {
    move |source| ManifestError::Store {
        path: path.to_string(),
        source,
    }
}

/// A manifest as read, with the version needed for a conditional update.
#[derive(Debug, Clone)]
pub struct Versioned {
    /// The manifest.
    pub manifest: BatchManifest,
    /// ETag / version of the object as read.
    pub version: UpdateVersion,
}

/// Batch numbers that have a manifest, ascending.
pub async fn list_batches(lake: &Lake, dataset: Dataset) -> Result<Vec<u64>, ManifestError> {
    let dir = dataset.manifests_dir();
    let mut numbers: Vec<u64> = lake
        .store()
        .list(Some(&dir))
        .map_err(|source| ManifestError::Store {
            path: dir.to_string(),
            source,
        })
        .try_filter_map(|meta| async move { Ok(Dataset::manifest_number(&meta.location)) })
        .try_collect()
        .await?;
    numbers.sort_unstable();
    Ok(numbers)
}

/// Reads one manifest with its version.
pub async fn read(lake: &Lake, dataset: Dataset, batch: u64) -> Result<Versioned, ManifestError> {
    let path = dataset.manifest(batch);
    let got = lake.store().get(&path).await.map_err(store_err(&path))?;
    let version = UpdateVersion {
        e_tag: got.meta.e_tag.clone(),
        version: got.meta.version.clone(),
    };
    let bytes = got.bytes().await.map_err(store_err(&path))?;
    check_format(path.as_ref(), &bytes, MANIFEST_FORMAT)?;
    let manifest = serde_json::from_slice(&bytes).map_err(|source| ManifestError::Parse {
        path: path.to_string(),
        source,
    })?;
    Ok(Versioned { manifest, version })
}

/// Reads every manifest of `dataset`, ascending by batch (16 requests in flight).
pub async fn read_all(lake: &Lake, dataset: Dataset) -> Result<Vec<BatchManifest>, ManifestError> {
    let batches = list_batches(lake, dataset).await?;
    futures::stream::iter(batches)
        .map(|b| async move { read(lake, dataset, b).await.map(|v| v.manifest) })
        .buffered(16)
        .try_collect()
        .await
}

/// Creates the manifest if no manifest of that batch exists (`Ok(None)`: one
/// exists). For fixtures and tools: the jobs pin and commit through
/// [`crate::commit::Log`], which also settles lost answers and holds the lease.
pub async fn create(
    lake: &Lake,
    manifest: &BatchManifest,
) -> Result<Option<UpdateVersion>, ManifestError> {
    let dataset = dataset_of(manifest);
    let path = dataset.manifest(manifest.batch);
    let put = lake
        .create_if_absent(&path, manifest.to_bytes())
        .await
        .map_err(store_err(&path))?;
    Ok(put.map(|r| UpdateVersion {
        e_tag: r.e_tag,
        version: r.version,
    }))
}

fn dataset_of(manifest: &BatchManifest) -> Dataset {
    [Dataset::BronzeEvents, Dataset::BronzeOutbox]
        .into_iter()
        .find(|d| d.dir() == manifest.dataset)
        .unwrap_or(Dataset::BronzeEvents)
}

/// The files a manifest-honouring reader sees: every committed batch's files minus
/// those superseded by a later committed batch, in batch order. For a whole
/// log as read by [`read_all`] (tests, audits); the jobs read through
/// [`BronzeLog::live_files`], the same reduction started from a checkpoint.
pub fn live_files(manifests: &[BatchManifest]) -> Vec<DataFile> {
    reduce(std::iter::empty(), manifests.iter())
        .into_iter()
        .map(|f| f.file)
        .collect()
}

/// The live files after `entries` (ascending; pending ones are skipped) are
/// applied to the live files `before` them.
fn reduce<'a>(
    before: impl Iterator<Item = LiveFile>,
    entries: impl Iterator<Item = &'a BatchManifest> + Clone,
) -> Vec<LiveFile> {
    let committed = entries.filter(|m| m.state == BatchState::Committed);
    let superseded: BTreeSet<&str> = committed
        .clone()
        .flat_map(|m| m.supersedes.iter().map(String::as_str))
        .collect();
    let added = committed.flat_map(|m| {
        m.files.iter().map(|f| LiveFile {
            batch: m.batch,
            file: f.clone(),
        })
    });
    before
        .chain(added)
        .filter(|f| !superseded.contains(f.file.path.as_str()))
        .collect()
}

/// A committed batch's file that no later batch superseded, with its batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveFile {
    /// The batch that wrote it.
    pub batch: u64,
    /// The file as its manifest lists it.
    #[serde(flatten)]
    pub file: DataFile,
}

/// Format of [`Checkpoint`]s, bumped on incompatible change.
pub const CHECKPOINT_FORMAT: u32 = 1;

/// A commit writes a checkpoint once this many batches were committed after
/// the last one: a reader then reads one checkpoint and at most this many
/// entries, whatever the dataset's age (docs/commit-protocol.md).
pub const CHECKPOINT_INTERVAL: u64 = 10;

/// The reduced state of a bronze dataset through one committed batch: what a
/// reader would compute from every manifest up to it. Every batch up to it is
/// committed (only the latest entry of a log may be pending), so the state needs
/// no list of batches. Its content is a function of the log: two runs writing
/// the checkpoint of the same batch write the same bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// [`CHECKPOINT_FORMAT`].
    pub format: u32,
    /// The dataset (`bronze/events`, …).
    pub dataset: String,
    /// The state is that after this committed batch.
    pub batch: u64,
    /// The manifest of `batch` itself (horizons, source identity of the latest batch).
    pub last: BatchManifest,
    /// The latest committed batch up to `batch` that has files (a failover check
    /// reads its rows back).
    pub last_with_files: Option<BatchManifest>,
    /// Every live file, in batch order.
    pub live: Vec<LiveFile>,
    /// The newest row-identity state of an updated-in-place table (the outbox)
    /// written up to `batch`; absent for append-only tables and in checkpoints
    /// of earlier releases (the state is then rebuilt from the live files).
    ///
    /// Written as `row_identity` since its digests are specified
    /// ([`IdentityState::digest`]); read under the name earlier releases
    /// wrote (`identity_state`) too. The new name is what makes a rollback
    /// safe: a release that knows only `identity_state`, and would compare
    /// its own digests with these, finds no state and reads the live files.
    #[serde(
        default,
        rename = "row_identity",
        alias = "identity_state",
        skip_serializing_if = "Option::is_none"
    )]
    pub identity_state: Option<IdentityState>,
    /// The retention horizon through `batch`: the latest `retained_before` of
    /// its entries (absent: no retention yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retained_before: Option<NaiveDate>,
}

/// A row-identity state file (SPEC §5.7): the last captured version of every
/// key the source held when it was written, through `batch`. A reader takes it
/// instead of every live file up to `batch`, so the cost of row identity
/// follows the source table's size, not the lake's history, and survives
/// retention removing old files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityState {
    /// Its path ([`Dataset::identity_state`]).
    pub path: String,
    /// The versions of every batch up to this one are in it.
    pub batch: u64,
    /// How its digests were computed (bronze-ingest's `identity::DIGEST`).
    /// Empty in states of earlier releases, whose digests (Rust's
    /// `DefaultHasher` over arrow's row format) may differ under another
    /// toolchain or arrow release: a reader does not compare against a state
    /// of another digest, it rebuilds the versions from the live files.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub digest: String,
}

/// A bronze dataset's log as readers need it: the latest checkpoint and the
/// entries after it. Loading it costs a few requests whatever the dataset's age:
/// the `_last_checkpoint` hint, the checkpoint, one listing that starts after
/// the checkpoint's batch, and the entries it finds.
#[derive(Debug, Clone)]
pub struct BronzeLog {
    checkpoint: Option<Checkpoint>,
    /// Entries after the checkpoint, ascending; only the last may be pending.
    after: Vec<Versioned>,
}

/// The `_last_checkpoint` hint: the batch of the newest checkpoint.
#[derive(Debug, Serialize, Deserialize)]
struct LastCheckpoint {
    format: u32,
    batch: u64,
}

impl BronzeLog {
    /// Reads the dataset's log. The hint is only a hint: a missing or stale one
    /// costs a longer listing (and a newer checkpoint found there is used), never
    /// a wrong answer, because every entry after the checkpoint is read.
    pub async fn load(lake: &Lake, dataset: Dataset) -> Result<Self, ManifestError> {
        let hint = dataset.last_checkpoint();
        let hinted = match lake.store().get(&hint).await {
            Ok(got) => {
                let bytes = got.bytes().await.map_err(store_err(&hint))?;
                check_format(hint.as_ref(), &bytes, CHECKPOINT_FORMAT)?;
                // An unreadable hint is as good as none.
                serde_json::from_slice::<LastCheckpoint>(&bytes)
                    .ok()
                    .map(|h| h.batch)
            }
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => return Err(store_err(&hint)(e)),
        };
        Self::load_from(lake, dataset, hinted).await
    }

    /// [`BronzeLog::load`] with the hint read (or `None`: list everything).
    async fn load_from(
        lake: &Lake,
        dataset: Dataset,
        hinted: Option<u64>,
    ) -> Result<Self, ManifestError> {
        let dir = dataset.manifests_dir();
        let listed: Vec<Path> = match hinted {
            Some(b) => lake
                .store()
                .list_with_offset(Some(&dir), &dataset.manifest(b)),
            None => lake.store().list(Some(&dir)),
        }
        .map_ok(|meta| meta.location)
        .try_collect()
        .await
        .map_err(store_err(&dir))?;
        let newest_checkpoint = listed
            .iter()
            .filter_map(Dataset::checkpoint_number)
            .chain(hinted)
            .max();
        let checkpoint = match newest_checkpoint {
            Some(b) => match read_checkpoint(lake, dataset, b).await {
                Ok(c) => Some(c),
                // The hint names a checkpoint that is gone (removed by hand, a
                // restored bucket): read the log as if there were no hint.
                Err(ManifestError::Store {
                    source: object_store::Error::NotFound { .. },
                    ..
                }) if hinted == Some(b) => {
                    tracing::warn!(dataset = %dataset, batch = b, "_last_checkpoint names a missing checkpoint; reading the whole log");
                    return Box::pin(Self::load_from(lake, dataset, None)).await;
                }
                Err(e) => return Err(e),
            },
            None => None,
        };
        let from = checkpoint.as_ref().map_or(0, |c| c.batch);
        let mut numbers: Vec<u64> = listed
            .iter()
            .filter_map(Dataset::manifest_number)
            .filter(|n| *n > from)
            .collect();
        numbers.sort_unstable();
        let after = futures::stream::iter(numbers)
            .map(|b| read(lake, dataset, b))
            .buffered(16)
            .try_collect()
            .await?;
        Ok(Self { checkpoint, after })
    }

    /// The batch of the checkpoint the log was read from (`None`: none yet).
    pub fn checkpoint_batch(&self) -> Option<u64> {
        self.checkpoint.as_ref().map(|c| c.batch)
    }

    /// The entries after the checkpoint, with their versions, ascending.
    pub fn after(&self) -> &[Versioned] {
        &self.after
    }

    /// The latest entry (pending or committed).
    pub fn latest(&self) -> Option<&BatchManifest> {
        self.after
            .last()
            .map(|v| &v.manifest)
            .or(self.checkpoint.as_ref().map(|c| &c.last))
    }

    /// The latest entry with its version; an entry only the checkpoint holds
    /// (committed, so never written again) comes without one.
    pub fn latest_entry(&self) -> Option<Versioned> {
        self.after.last().cloned().or_else(|| {
            self.checkpoint.as_ref().map(|c| Versioned {
                manifest: c.last.clone(),
                version: UpdateVersion {
                    e_tag: None,
                    version: None,
                },
            })
        })
    }

    /// The latest committed batch.
    pub fn latest_committed(&self) -> Option<&BatchManifest> {
        self.after
            .iter()
            .rev()
            .map(|v| &v.manifest)
            .find(|m| m.state == BatchState::Committed)
            .or(self.checkpoint.as_ref().map(|c| &c.last))
    }

    /// Committed batch numbers, ascending.
    pub fn committed(&self) -> BTreeSet<u64> {
        let through = self.checkpoint_batch().unwrap_or(0);
        (1..=through)
            .chain(
                self.after
                    .iter()
                    .filter(|v| v.manifest.state == BatchState::Committed)
                    .map(|v| v.manifest.batch),
            )
            .collect()
    }

    /// The latest committed export batch that has files (a compaction's files
    /// hold old rows, not the latest export's).
    pub fn latest_with_files(&self) -> Option<&BatchManifest> {
        self.after
            .iter()
            .rev()
            .map(|v| &v.manifest)
            .find(|m| m.state == BatchState::Committed && !m.files.is_empty() && !m.is_rewrite())
            .or(self
                .checkpoint
                .as_ref()
                .and_then(|c| c.last_with_files.as_ref()))
    }

    /// What a manifest-honouring reader sees: the checkpoint's live files and
    /// those of the committed entries after it, minus what those superseded, in
    /// batch order.
    pub fn live_files(&self) -> Vec<LiveFile> {
        reduce(
            self.checkpoint.iter().flat_map(|c| c.live.iter().cloned()),
            self.after.iter().map(|v| &v.manifest),
        )
    }

    /// The checkpoint to write once `committed` (the entry that follows this
    /// log) is committed, if [`CHECKPOINT_INTERVAL`] batches have been since
    /// the last one. A lost checkpoint is made good by the next commit.
    pub fn checkpoint_after(&self, committed: &BatchManifest) -> Option<Checkpoint> {
        let since = committed
            .batch
            .saturating_sub(self.checkpoint_batch().unwrap_or(0));
        if committed.state != BatchState::Committed || since < CHECKPOINT_INTERVAL {
            return None;
        }
        let mut next = self.clone();
        next.after.retain(|v| v.manifest.batch < committed.batch);
        // Every batch before it must be known committed and present: a log
        // read before an earlier batch was committed (or with a gap) would
        // reduce to the wrong state, and readers trust a checkpoint for good.
        let first = self.checkpoint_batch().unwrap_or(0) + 1;
        let complete = next.after.len() as u64 == committed.batch - first
            && next.after.iter().enumerate().all(|(i, v)| {
                v.manifest.state == BatchState::Committed && v.manifest.batch == first + i as u64
            });
        if !complete {
            return None;
        }
        let live = reduce(
            self.checkpoint.iter().flat_map(|c| c.live.iter().cloned()),
            next.after
                .iter()
                .map(|v| &v.manifest)
                .chain(std::iter::once(committed)),
        );
        let last_with_files = if committed.files.is_empty() || committed.is_rewrite() {
            next.latest_with_files().cloned()
        } else {
            Some(committed.clone())
        };
        Some(Checkpoint {
            format: CHECKPOINT_FORMAT,
            dataset: committed.dataset.clone(),
            batch: committed.batch,
            last: committed.clone(),
            last_with_files,
            live,
            // Carried over until the writer replaces it with a newer one.
            identity_state: self.identity_state().cloned(),
            retained_before: next.retained_before().max(committed.retained_before),
        })
    }

    /// The retention horizon: every file of the days before it was removed by
    /// retention (the checkpoint's and the entries' latest date; `None`: none).
    pub fn retained_before(&self) -> Option<NaiveDate> {
        self.after
            .iter()
            .filter(|v| v.manifest.state == BatchState::Committed)
            .filter_map(|v| v.manifest.retained_before)
            .chain(self.checkpoint.as_ref().and_then(|c| c.retained_before))
            .max()
    }

    /// The newest row-identity state a checkpoint references.
    pub fn identity_state(&self) -> Option<&IdentityState> {
        self.checkpoint
            .as_ref()
            .and_then(|c| c.identity_state.as_ref())
    }
}

/// Reads the checkpoint of `batch`.
pub async fn read_checkpoint(
    lake: &Lake,
    dataset: Dataset,
    batch: u64,
) -> Result<Checkpoint, ManifestError> {
    let path = dataset.checkpoint(batch);
    let bytes = lake.get_bytes(&path).await.map_err(store_err(&path))?;
    check_format(path.as_ref(), &bytes, CHECKPOINT_FORMAT)?;
    let checkpoint: Checkpoint =
        serde_json::from_slice(&bytes).map_err(|e| ManifestError::Inconsistent {
            path: path.to_string(),
            problem: format!("it does not parse ({e})"),
        })?;
    if checkpoint.batch != batch || checkpoint.dataset != dataset.dir() {
        return Err(ManifestError::Inconsistent {
            path: path.to_string(),
            problem: format!(
                "it does not match its name: it holds the state of {} batch {}",
                checkpoint.dataset, checkpoint.batch
            ),
        });
    }
    Ok(checkpoint)
}

/// Writes a checkpoint, then points `_last_checkpoint` at it. Plain PUTs: the
/// content is a function of the log, so a concurrent or late writer of the same
/// checkpoint writes the same bytes, and a crash between the two only costs
/// the next reader a longer listing.
pub async fn write_checkpoint(lake: &Lake, checkpoint: &Checkpoint) -> Result<(), ManifestError> {
    let dataset = dataset_of(&checkpoint.last);
    let path = dataset.checkpoint(checkpoint.batch);
    // Compact: a checkpoint of years holds tens of thousands of files.
    let encode = |source| ManifestError::Parse {
        path: path.to_string(),
        source,
    };
    let bytes = serde_json::to_vec(checkpoint).map_err(encode)?;
    lake.put(&path, Bytes::from(bytes))
        .await
        .map_err(store_err(&path))?;
    let hint = dataset.last_checkpoint();
    let body = serde_json::to_vec(&LastCheckpoint {
        format: CHECKPOINT_FORMAT,
        batch: checkpoint.batch,
    })
    .map_err(encode)?;
    lake.put(&hint, Bytes::from(body))
        .await
        .map_err(store_err(&hint))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The row-identity state moved to a new name with its specified digests:
    /// an earlier release (which knows only `identity_state` and would trust
    /// any digest) sees none in a checkpoint written now, and this release
    /// still reads the state of a checkpoint an earlier one wrote.
    #[test]
    fn the_row_identity_state_is_written_under_a_name_earlier_releases_do_not_read() {
        let mut cp = Checkpoint {
            format: CHECKPOINT_FORMAT,
            dataset: "bronze/outbox".into(),
            batch: 10,
            last: manifest(10, BatchState::Committed, &[], &[]),
            last_with_files: None,
            live: vec![],
            identity_state: Some(IdentityState {
                path: "bronze/outbox/_state/0000000010.identity".into(),
                batch: 10,
                digest: "sha256-values-1".into(),
            }),
            retained_before: None,
        };
        cp.last.dataset = "bronze/outbox".into();
        let json: serde_json::Value = serde_json::to_value(&cp).unwrap();
        assert!(json.get("identity_state").is_none(), "{json}");
        assert_eq!(json["row_identity"]["digest"], "sha256-values-1");
        #[derive(Deserialize)]
        struct EarlierRelease {
            #[serde(default)]
            identity_state: Option<serde_json::Value>,
        }
        let earlier: EarlierRelease = serde_json::from_value(json.clone()).unwrap();
        assert!(earlier.identity_state.is_none());
        // A checkpoint of an earlier release: read, with no digest named.
        let mut old = json;
        let state = old.as_object_mut().unwrap().remove("row_identity").unwrap();
        old["identity_state"] = serde_json::json!({
            "path": state["path"],
            "batch": state["batch"],
        });
        let read: Checkpoint = serde_json::from_value(old).unwrap();
        let state = read.identity_state.unwrap();
        assert_eq!((state.batch, state.digest.as_str()), (10, ""));
    }

    fn manifest(
        batch: u64,
        state: BatchState,
        files: &[&str],
        supersedes: &[&str],
    ) -> BatchManifest {
        BatchManifest {
            format: MANIFEST_FORMAT,
            dataset: "bronze/events".into(),
            batch,
            state,
            h_prev: None,
            h: 100,
            xmax: 105,
            snapshot_time: Utc::now(),
            scan_from: None,
            system_identifier: "7".into(),
            timeline: None,
            wal_lsn: None,
            relfilenode: None,
            drop_captured: false,
            drop_captured_below: None,
            backfill_days: vec![],
            added_columns: vec![],
            claim: Claim {
                owner: "run".into(),
                ..Default::default()
            },
            committed_at: None,
            files: files
                .iter()
                .map(|p| DataFile {
                    path: p.to_string(),
                    date: NaiveDate::from_ymd_opt(2026, 1, 1).unwrap(),
                    rows: 1,
                    bytes: 1,
                    sha256: String::new(),
                })
                .collect(),
            supersedes: supersedes.iter().map(|s| s.to_string()).collect(),
            rows: files.len() as u64,
            compacted_days: vec![],
            pruned_days: vec![],
            retained_before: None,
        }
    }

    #[test]
    fn live_files_skip_pending_and_superseded() {
        let ms = vec![
            manifest(1, BatchState::Committed, &["a", "b"], &[]),
            manifest(2, BatchState::Committed, &["c"], &["a"]),
            manifest(3, BatchState::Pending, &["d"], &["b"]),
        ];
        let live: Vec<_> = live_files(&ms).into_iter().map(|f| f.path).collect();
        assert_eq!(live, vec!["b", "c"]);
    }

    #[tokio::test]
    async fn a_manifest_of_a_newer_format_is_refused_by_name() {
        let lake = Lake::in_memory();
        let mut m = manifest(1, BatchState::Committed, &["a"], &[]);
        m.format = MANIFEST_FORMAT + 1;
        create(&lake, &m).await.unwrap();
        let err = read(&lake, Dataset::BronzeEvents, 1).await.unwrap_err();
        assert!(matches!(err, ManifestError::NewerFormat { .. }), "{err}");
        assert!(err.to_string().contains("newer release"), "{err}");
    }

    /// Commits `n` batches (every fourth a backfill superseding a file of an
    /// earlier one, a few without files), writing checkpoints as the jobs do,
    /// and checks after each commit that the log read through the checkpoint
    /// equals the reduction of every manifest.
    #[tokio::test]
    async fn the_log_read_through_checkpoints_equals_the_whole_log() {
        let lake = Lake::in_memory();
        let ds = Dataset::BronzeEvents;
        for b in 1..=35u64 {
            let log = BronzeLog::load(&lake, ds).await.unwrap();
            let files: Vec<String> = if b % 7 == 0 {
                vec![]
            } else {
                vec![format!("f{b}a"), format!("f{b}b")]
            };
            let files: Vec<&str> = files.iter().map(String::as_str).collect();
            let old = format!("f{}a", b / 2);
            let supersedes: Vec<&str> = if b % 4 == 0 {
                vec![old.as_str()]
            } else {
                vec![]
            };
            let mut m = manifest(b, BatchState::Committed, &files, &supersedes);
            m.batch = b;
            // Some are compactions: never the failover check's batch with files.
            if b % 6 == 3 || b == 30 {
                m.compacted_days = vec![NaiveDate::from_ymd_opt(2026, 1, 1).unwrap()];
            }
            // Two retentions, the first folded into checkpoints 10, 20 and 30.
            if b == 8 || b == 33 {
                m.retained_before = NaiveDate::from_ymd_opt(2025, 1, b as u32);
            }
            create(&lake, &m).await.unwrap().expect("new batch");
            if let Some(cp) = log.checkpoint_after(&m) {
                assert_eq!(cp.batch % CHECKPOINT_INTERVAL, 0, "one per interval");
                write_checkpoint(&lake, &cp).await.unwrap();
            }
            let all = read_all(&lake, ds).await.unwrap();
            let log = BronzeLog::load(&lake, ds).await.unwrap();
            let via: Vec<DataFile> = log.live_files().into_iter().map(|f| f.file).collect();
            assert_eq!(via, live_files(&all), "batch {b}");
            assert!(
                log.after().len() < CHECKPOINT_INTERVAL as usize,
                "batch {b}"
            );
            assert_eq!(log.latest().map(|m| m.batch), Some(b));
            assert_eq!(log.committed(), (1..=b).collect::<BTreeSet<_>>());
            let with_files = all
                .iter()
                .rev()
                .find(|m| !m.files.is_empty() && !m.is_rewrite())
                .map(|m| m.batch);
            assert_eq!(
                log.latest_with_files().map(|m| m.batch),
                with_files,
                "batch {b}"
            );
            let horizon = all.iter().filter_map(|m| m.retained_before).max();
            assert_eq!(log.retained_before(), horizon, "batch {b}");
        }
        assert_eq!(
            BronzeLog::load(&lake, ds).await.unwrap().checkpoint_batch(),
            Some(30)
        );
        // A lost or stale hint costs a longer listing, never a wrong answer; a
        // newer checkpoint found in the listing is used.
        let expected = live_files(&read_all(&lake, ds).await.unwrap());
        for hint in [None, Some(10u64)] {
            match hint {
                None => lake.store().delete(&ds.last_checkpoint()).await.unwrap(),
                Some(b) => {
                    let body = serde_json::to_vec(&LastCheckpoint {
                        format: CHECKPOINT_FORMAT,
                        batch: b,
                    })
                    .unwrap();
                    lake.put(&ds.last_checkpoint(), Bytes::from(body))
                        .await
                        .unwrap();
                }
            }
            let log = BronzeLog::load(&lake, ds).await.unwrap();
            assert_eq!(log.checkpoint_batch(), Some(30), "{hint:?}");
            let via: Vec<DataFile> = log.live_files().into_iter().map(|f| f.file).collect();
            assert_eq!(via, expected, "{hint:?}");
        }
    }

    /// A log read while batch 10 was still pending must not checkpoint batch
    /// 11 (it would leave batch 10's files out for good); a hint naming a
    /// checkpoint that is gone reads the whole log.
    #[tokio::test]
    async fn a_stale_log_writes_no_checkpoint_and_a_dangling_hint_is_no_hint() {
        let lake = Lake::in_memory();
        let ds = Dataset::BronzeEvents;
        for b in 1..=9u64 {
            let mut m = manifest(b, BatchState::Committed, &[&format!("f{b}")], &[]);
            m.batch = b;
            create(&lake, &m).await.unwrap();
        }
        let mut ten = manifest(10, BatchState::Pending, &["f10"], &[]);
        ten.batch = 10;
        create(&lake, &ten).await.unwrap();
        let stale = BronzeLog::load(&lake, ds).await.unwrap();
        let mut eleven = manifest(11, BatchState::Committed, &["f11"], &[]);
        eleven.batch = 11;
        assert!(
            stale.checkpoint_after(&eleven).is_none(),
            "batch 10 is not known committed"
        );
        let mut ten_done = ten.clone();
        ten_done.state = BatchState::Committed;
        let fresh = BronzeLog::load(&lake, ds).await.unwrap();
        assert!(
            fresh.checkpoint_after(&ten_done).is_some(),
            "the committing run's own log"
        );

        let body = serde_json::to_vec(&LastCheckpoint {
            format: CHECKPOINT_FORMAT,
            batch: 7,
        })
        .unwrap();
        lake.put(&ds.last_checkpoint(), Bytes::from(body))
            .await
            .unwrap();
        let log = BronzeLog::load(&lake, ds).await.unwrap();
        assert_eq!(log.checkpoint_batch(), None);
        assert_eq!(log.after().len(), 10);
    }

    #[tokio::test]
    async fn a_checkpoint_of_a_newer_format_is_refused_by_name() {
        let lake = Lake::in_memory();
        let ds = Dataset::BronzeEvents;
        let body = serde_json::to_vec(&LastCheckpoint {
            format: CHECKPOINT_FORMAT + 1,
            batch: 10,
        })
        .unwrap();
        lake.put(&ds.last_checkpoint(), Bytes::from(body))
            .await
            .unwrap();
        let err = BronzeLog::load(&lake, ds).await.unwrap_err();
        assert!(err.to_string().contains("newer release"), "{err}");
    }

    #[tokio::test]
    async fn create_once_then_read_back() {
        let lake = Lake::in_memory();
        let m = manifest(1, BatchState::Pending, &[], &[]);
        let v1 = create(&lake, &m).await.unwrap().expect("first create wins");
        assert!(
            create(&lake, &m).await.unwrap().is_none(),
            "second create loses"
        );
        let back = read(&lake, Dataset::BronzeEvents, 1).await.unwrap();
        assert_eq!(back.manifest, m);
        assert_eq!(back.version.e_tag, v1.e_tag);
        assert_eq!(
            list_batches(&lake, Dataset::BronzeEvents).await.unwrap(),
            vec![1]
        );
        assert_eq!(
            read_all(&lake, Dataset::BronzeEvents).await.unwrap(),
            vec![m]
        );
    }
}
