//! Bronze batch manifests: the commit log of a bronze dataset.
//!
//! A batch is *pinned* by creating `_manifests/<batch>.json` in state `pending`
//! (create-if-absent, so exactly one run owns a batch number) and *committed* by
//! rewriting it with the list of its files. Readers that honour manifests see the
//! union of the committed batches' files minus the files a later committed batch
//! superseded (a backfill); they never see a pending batch's files. Silver reads
//! bronze through [`live_files`] for the same reason.

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
    /// Who owns the pending batch and its lease (owner, attempt, write id,
    /// lease expiry; flattened: the JSON keeps `owner` and `lease_expires_at`).
    #[serde(flatten)]
    pub claim: Claim,
    /// When the batch was committed.
    pub committed_at: Option<DateTime<Utc>>,
    /// The batch's files (committed only).
    #[serde(default)]
    pub files: Vec<DataFile>,
    /// Files of earlier batches this batch replaces (backfill).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub supersedes: Vec<String>,
    /// Rows read from PostgreSQL (committed only); equals the sum of `files[].rows`.
    #[serde(default)]
    pub rows: u64,
}

impl BatchManifest {
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
    /// A manifest does not parse: the lake was written by something else.
    #[error("manifest {path} is not a valid batch manifest: {source}")]
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
/// those superseded by a later committed batch, in batch order.
pub fn live_files(manifests: &[BatchManifest]) -> Vec<DataFile> {
    let committed = manifests
        .iter()
        .filter(|m| m.state == BatchState::Committed);
    let superseded: BTreeSet<&str> = committed
        .clone()
        .flat_map(|m| m.supersedes.iter().map(String::as_str))
        .collect();
    committed
        .flat_map(|m| m.files.iter())
        .filter(|f| !superseded.contains(f.path.as_str()))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
