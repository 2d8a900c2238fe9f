//! Silver's own manifests: what each version of each shard consumed and published.
//!
//! Layout, per shard (shards never write each other's files):
//!
//! ```text
//! silver/stop_executions/_manifests/shard-<i>-of-<n>/<version:010>.json
//! silver/stop_executions/_manifests/segments/shard-<i>-of-<n>/YYYY-MM/<version:010>.index
//!     (a month of the Parquet key index, crate::segments)
//! silver/stop_executions/_manifests/segments/shard-<i>-of-<n>/YYYY-MM/<version:010>.partitions.json
//!     (a month of the partition table, crate::partitions)
//! ```
//!
//! A run **pins** version `v = max + 1` by creating its manifest in state `pending`
//! (create-if-absent: of two racing runs exactly one wins, the other exits 4), with
//! an owner and a lease it renews while it works. Before it publishes anything it
//! records the partitions it is about to rewrite (`planned`). It then publishes,
//! writes the months of the key index and of the partition table it changed, and
//! rewrites its manifest as `committed`, listing every month's files and the set
//! of bronze batches consumed.
//!
//! The latest committed version is the state. A pending version whose lease has
//! expired was abandoned by a crashed run: the next run starts again from the
//! latest committed version and also recomputes the abandoned run's `planned`
//! partitions, so whatever the crashed run had already published is replaced by
//! the correct version. A pending version with a live lease means another run is
//! working: exit 4 without writing.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use futures::TryStreamExt;
use lake_common::commit::fence::Fence;
use lake_common::commit::{Claim, CommitError, Entry, Log, Mode, Pinned};
use lake_common::{Classified, Dataset, ExitStatus, Lake};
use object_store::ObjectStoreExt;
use object_store::path::Path;
use serde::{Deserialize, Serialize};

use crate::key::{PartitionKey, Shard};
use crate::publish::FileRecord;

/// Version of the manifest format, bumped on incompatible change: 5 splits
/// a large month of the key index into segments by key hash
/// ([`crate::segments::IndexSegment::hash`]; whole months still read), 4 gives each
/// key of the index the longest run of days without events (the days a fold
/// skips; earlier segments still read, as whole spans) and keeps the
/// segments' Bloom filters in one object per version (`bloom_pack`; inline
/// filters still read), 3 keeps the
/// partition table in monthly files ([`crate::partitions`]; 2 and 1 inline,
/// still read), 2 the key index in monthly segments (1: one file, still read).
/// A release of an older format refuses a newer lake instead of misreading it.
pub const FORMAT: u32 = 5;
/// Versions kept (older manifests and indexes are deleted).
pub const KEEP_VERSIONS: usize = 5;

/// Errors of the silver manifests.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// The store failed.
    #[error("object store error on {path}: {source}")]
    Store {
        /// The path.
        path: String,
        /// Why.
        source: object_store::Error,
    },
    /// A manifest of a newer format (written by a newer release).
    #[error("{0}")]
    Format(String),
    /// A manifest does not parse.
    #[error("silver manifest {path} is not valid: {source}")]
    Parse {
        /// The path.
        path: String,
        /// Why.
        source: serde_json::Error,
    },
}

fn store_err(path: &Path) -> impl FnOnce(object_store::Error) -> ManifestError + '_ {
    move |source| ManifestError::Store {
        path: path.to_string(),
        source,
    }
}

/// Lifecycle of a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Pinned by a running (or crashed) run.
    Pending,
    /// Complete: this is the shard's state.
    Committed,
}

/// A partition named in a manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PartitionRef {
    /// `client_id`.
    pub client_id: i64,
    /// `date`.
    pub date: NaiveDate,
}

impl From<PartitionKey> for PartitionRef {
    fn from(p: PartitionKey) -> Self {
        Self {
            client_id: p.client_id,
            date: p.date(),
        }
    }
}

impl From<PartitionRef> for PartitionKey {
    fn from(p: PartitionRef) -> Self {
        PartitionKey::from_date(p.client_id, p.date)
    }
}

/// The current version of one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRecord {
    /// `client_id`.
    pub client_id: i64,
    /// `date`.
    pub date: NaiveDate,
    /// The manifest version that wrote this partition version.
    pub version: u64,
    /// The silver file (`None`: only quarantined executions).
    pub silver: Option<FileRecord>,
    /// The quarantine file (`None`: no violations).
    pub quarantine: Option<FileRecord>,
    /// Bronze batches whose events this partition version was computed from.
    pub batches: Vec<[u64; 2]>,
}

impl PartitionRecord {
    /// The partition.
    pub fn key(&self) -> PartitionKey {
        PartitionKey::from_date(self.client_id, self.date)
    }
}

/// One version of one shard's silver state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SilverManifest {
    /// [`FORMAT`].
    pub format: u32,
    /// `silver/stop_executions`.
    pub dataset: String,
    /// Shard index.
    pub shard_index: u32,
    /// Shard count.
    pub shard_count: u32,
    /// Version number (1, 2, …; abandoned versions leave gaps).
    pub version: u64,
    /// Pending or committed.
    pub state: State,
    /// Who owns the pending version and its lease (flattened: the JSON keeps
    /// `owner` and `lease_expires_at`).
    #[serde(flatten)]
    pub claim: Claim,
    /// When the version was pinned.
    pub created_at: DateTime<Utc>,
    /// When it was committed.
    pub committed_at: Option<DateTime<Utc>>,
    /// `incremental`, `dates` or `full_refresh`.
    pub mode: String,
    /// The committed version this one was computed from.
    pub base_version: Option<u64>,
    /// While pending: the partitions the run is rewriting.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub planned: Vec<PartitionRef>,
    /// Every bronze batch consumed so far (inclusive ranges).
    #[serde(default)]
    pub consumed_batches: Vec<[u64; 2]>,
    /// The batches this version consumed for the first time.
    #[serde(default)]
    pub new_batches: Vec<[u64; 2]>,
    /// Partitions this version rewrote (including deleted ones).
    #[serde(default)]
    pub rewritten: Vec<PartitionRef>,
    /// The key index as one file (format 1, written by earlier releases; read
    /// once and replaced by segments).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<FileRecord>,
    /// The key index in monthly segments ([`crate::segments`], format 2).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub index_segments: Vec<crate::segments::IndexSegment>,
    /// The Bloom filters of the segments' keys, one object per version
    /// (format 4; before, each segment's filter was inline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bloom_pack: Option<FileRecord>,
    /// Executions in the key index.
    #[serde(default)]
    pub index_keys: u64,
    /// The shard's partitions after this version, by month
    /// ([`crate::partitions`], format 3): read them with
    /// [`crate::partitions::read_all`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partition_months: Vec<crate::partitions::PartitionMonth>,
    /// The shard's partitions inline (formats 1 and 2, written by earlier
    /// releases; read once and replaced by months).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<PartitionRecord>,
    /// Objects of the base version this one replaced: deleted right after the
    /// commit, and again by the next run in case this one died in between.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub superseded: Vec<String>,
    /// Silver's retention horizon: the partitions of the days before it were
    /// removed on purpose ([`crate::retain`]). Carried by every later version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retained_before: Option<NaiveDate>,
}

impl SilverManifest {
    /// A fresh pending manifest.
    pub fn pending(shard: Shard, version: u64, owner: &str, lease: Duration, mode: &str) -> Self {
        let now = Utc::now();
        Self {
            format: FORMAT,
            dataset: Dataset::SilverStopExecutions.dir().to_owned(),
            shard_index: shard.index,
            shard_count: shard.count,
            version,
            state: State::Pending,
            claim: Claim {
                owner: owner.to_owned(),
                lease_expires_at: Some(now + lease),
                ..Default::default()
            },
            created_at: now,
            committed_at: None,
            mode: mode.to_owned(),
            base_version: None,
            planned: vec![],
            consumed_batches: vec![],
            new_batches: vec![],
            rewritten: vec![],
            index: None,
            index_segments: vec![],
            bloom_pack: None,
            index_keys: 0,
            partition_months: vec![],
            partitions: vec![],
            superseded: vec![],
            retained_before: None,
        }
    }

    /// Whether a pending version's lease is still running at `now` (with the
    /// protocol's clock-skew allowance).
    pub fn lease_live(&self, now: DateTime<Utc>) -> bool {
        self.state == State::Pending && self.claim.is_live(now)
    }
}

impl Entry for SilverManifest {
    fn claim(&self) -> &Claim {
        &self.claim
    }

    fn claim_mut(&mut self) -> &mut Claim {
        &mut self.claim
    }

    fn is_pending(&self) -> bool {
        self.state == State::Pending
    }
}

/// The directory of a shard's manifests.
pub fn shard_dir(shard: Shard) -> Path {
    Dataset::SilverStopExecutions
        .manifests_dir()
        .join(shard.to_string())
}

/// The shard counts of the shard logs already in the lake (`shard-<i>-of-<n>`
/// directories under `_manifests/`), one LIST with a delimiter.
pub async fn shard_counts(lake: &Lake) -> Result<BTreeSet<u32>, ManifestError> {
    let dir = Dataset::SilverStopExecutions.manifests_dir();
    let listed = lake
        .store()
        .list_with_delimiter(Some(&dir))
        .await
        .map_err(store_err(&dir))?;
    Ok(listed
        .common_prefixes
        .iter()
        .filter_map(|p| {
            let name = p.filename()?.strip_prefix("shard-")?;
            name.split_once("-of-")?.1.parse().ok()
        })
        .collect())
}

/// One shard layout (`SILVER_SHARD_COUNT`) of the lake: the latest committed
/// manifest of each of its shards.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The shard count.
    pub count: u32,
    /// Per shard index, its latest committed manifest (`None`: not committed yet).
    pub shards: Vec<Option<SilverManifest>>,
    /// Whether a newer layout replaced this one ([`layouts`]).
    pub stale: bool,
}

impl Layout {
    /// Whether every shard has committed.
    pub fn complete(&self) -> bool {
        self.shards.iter().all(Option::is_some)
    }

    fn committed_at(&self) -> impl Iterator<Item = DateTime<Utc>> + '_ {
        self.shards.iter().flatten().filter_map(|m| m.committed_at)
    }
}

/// Every shard layout of the lake, each marked stale or not.
///
/// Re-sharding leaves the old layout's logs behind (docs/silver.md,
/// "Sharding"): no run writes them any more, and what they consumed or hold
/// must neither hold bronze's retention back nor receive silver's. A layout
/// is **stale** when another layout is complete and every shard of it
/// committed after the layout's last commit: the full refresh of every new
/// shard that re-sharding is. While the new layout is incomplete (its full
/// refresh under way) nothing is stale, so maintenance stays conservative.
pub async fn layouts(lake: &Lake) -> Result<Vec<Layout>, ManifestError> {
    let mut out = Vec::new();
    for count in shard_counts(lake).await? {
        let mut shards = Vec::with_capacity(count as usize);
        for index in 0..count {
            shards.push(find(lake, Shard { index, count }).await?.committed);
        }
        out.push(Layout {
            count,
            shards,
            stale: false,
        });
    }
    // The layout all of whose shards committed last: the one silver runs.
    let newest = out
        .iter()
        .filter(|l| l.complete())
        .filter_map(|l| l.committed_at().min().map(|at| (at, l.count)))
        .max();
    if let Some((since, count)) = newest {
        for l in out.iter_mut().filter(|l| l.count != count) {
            l.stale = l.committed_at().max().is_some_and(|last| last < since);
        }
    }
    Ok(out)
}

/// The manifest of a version.
pub fn manifest_path(shard: Shard, version: u64) -> Path {
    shard_dir(shard).join(format!("{version:010}.json"))
}

/// The key index of a version.
pub fn index_path(shard: Shard, version: u64) -> Path {
    shard_dir(shard).join(format!("{version:010}.index"))
}

fn version_of(path: &Path) -> Option<(u64, bool)> {
    let name = path.filename()?;
    let (digits, is_manifest) = if let Some(d) = name.strip_suffix(".json") {
        (d, true)
    } else {
        (name.strip_suffix(".index")?, false)
    };
    (digits.len() == 10 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok().map(|v| (v, is_manifest)))
        .flatten()
}

/// Versions with a manifest, ascending, and every object of the shard directory.
async fn list(lake: &Lake, shard: Shard) -> Result<(Vec<u64>, Vec<Path>), ManifestError> {
    let dir = shard_dir(shard);
    let objects: Vec<Path> = lake
        .store()
        .list(Some(&dir))
        .map_ok(|m| m.location)
        .try_collect()
        .await
        .map_err(store_err(&dir))?;
    let mut versions: Vec<u64> = objects
        .iter()
        .filter_map(version_of)
        .filter(|(_, m)| *m)
        .map(|(v, _)| v)
        .collect();
    versions.sort_unstable();
    Ok((versions, objects))
}

/// Reads one version's manifest.
pub async fn read(
    lake: &Lake,
    shard: Shard,
    version: u64,
) -> Result<SilverManifest, ManifestError> {
    let path = manifest_path(shard, version);
    let bytes = lake.get_bytes(&path).await.map_err(store_err(&path))?;
    lake_common::manifest::check_format(path.as_ref(), &bytes, FORMAT)
        .map_err(|e| ManifestError::Format(e.to_string()))?;
    serde_json::from_slice(&bytes).map_err(|source| ManifestError::Parse {
        path: path.to_string(),
        source,
    })
}

/// The state of a shard as found at the start of a run.
#[derive(Debug, Clone, Default)]
pub struct Found {
    /// The latest committed version.
    pub committed: Option<SilverManifest>,
    /// The highest version number in use.
    pub max_version: u64,
    /// A pending version whose owner still holds its lease.
    pub busy: Option<SilverManifest>,
    /// Pending versions newer than `committed` whose lease expired (crashed runs).
    pub abandoned: Vec<SilverManifest>,
}

/// Reads a shard's state: newest versions first, down to the latest committed one.
pub async fn find(lake: &Lake, shard: Shard) -> Result<Found, ManifestError> {
    let (versions, _) = list(lake, shard).await?;
    let now = Utc::now();
    let mut found = Found {
        max_version: versions.last().copied().unwrap_or(0),
        ..Default::default()
    };
    for &v in versions.iter().rev() {
        let m = read(lake, shard, v).await?;
        match m.state {
            State::Committed => {
                found.committed = Some(m);
                break;
            }
            State::Pending if m.lease_live(now) => {
                found.busy.get_or_insert(m);
            }
            State::Pending => found.abandoned.push(m),
        }
    }
    Ok(found)
}

/// Reads a stored key index.
pub async fn read_index(lake: &Lake, file: &FileRecord) -> anyhow::Result<crate::index::KeyIndex> {
    let path = Path::from(file.path.as_str());
    let bytes = lake.get_bytes(&path).await?;
    if bytes.len() as u64 != file.bytes
        || lake_common::parquet_io::sha256_hex(&bytes) != file.sha256
    {
        anyhow::bail!(
            "key index {path} does not match its manifest (size or checksum); run with --full-refresh to rebuild it"
        );
    }
    Ok(crate::index::KeyIndex::from_parquet(bytes)?)
}

/// A pinned version: the shared commit protocol's [`Pinned`] entry, plus the
/// check that no newer version appeared before it commits.
#[derive(Debug)]
pub struct Lease {
    lake: Lake,
    shard: Shard,
    version: u64,
    pinned: Pinned<SilverManifest>,
    /// Held under the shard's advisory lock (its loss is what fences the run).
    locked: bool,
}

fn busy(message: String) -> anyhow::Error {
    anyhow::Error::new(Classified::new(ExitStatus::Busy, message))
}

/// How silver writes its log on `lake`: compare-and-swap where the store has
/// it; on a local directory (create-if-absent only) updates are overwrites
/// checked against the last write first.
fn log_mode(lake: &Lake, locked: bool) -> anyhow::Result<Mode> {
    let caps = lake.capabilities();
    match (caps.create_if_absent, caps.update_if_match) {
        _ if locked => Ok(Mode::Locked),
        (true, true) => Ok(Mode::Conditional),
        (true, false) => Ok(Mode::CreateOnly),
        _ => Err(anyhow::Error::new(Classified::new(
            ExitStatus::Usage,
            "this store has no conditional writes (S3_CONDITIONAL_WRITES=disabled): silver-transform \
             must hold the shard's PostgreSQL advisory lock; set DJANGO_DB_HOST, DJANGO_DB_NAME, \
             DJANGO_DB_USER and DJANGO_DB_PASSWORD",
        ))),
    }
}

impl Lease {
    /// Pins `manifest.version` (create-if-absent). Exit 4 if another run pinned it.
    pub async fn pin(
        lake: &Lake,
        manifest: SilverManifest,
        duration: Duration,
    ) -> anyhow::Result<Self> {
        Self::pin_with(lake, manifest, duration, None).await
    }

    /// [`Lease::pin`] under the shard's advisory lock, whose loss raises `lock_fence`
    /// (stores without conditional writes: plain overwrites).
    pub async fn pin_with(
        lake: &Lake,
        manifest: SilverManifest,
        duration: Duration,
        lock_fence: Option<Fence>,
    ) -> anyhow::Result<Self> {
        let shard = Shard {
            index: manifest.shard_index,
            count: manifest.shard_count,
        };
        let version = manifest.version;
        let path = manifest_path(shard, version);
        let owner = manifest.claim.owner.clone();
        let locked = lock_fence.is_some();
        let mut log = Log::new(
            lake.clone(),
            log_mode(lake, lock_fence.is_some())?,
            duration,
        );
        if let Some(fence) = lock_fence {
            log = log.fenced_by(fence);
        }
        match log.pin(&path, manifest, &owner).await? {
            Ok(pinned) => Ok(Self {
                lake: lake.clone(),
                shard,
                version,
                pinned,
                locked,
            }),
            Err(found) => Err(busy(format!(
                "run {} pinned {path} first; this run wrote nothing",
                found.entry.claim.owner
            ))),
        }
    }

    /// The pinned version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The fence every write of this version goes through.
    pub fn fence(&self) -> Fence {
        self.pinned.fence()
    }

    /// Changes the pending manifest and writes it at once.
    pub async fn update(&self, f: impl FnOnce(&mut SilverManifest)) -> anyhow::Result<()> {
        self.pinned.update(f).await.map_err(fenced_is_busy)
    }

    /// Fails (exit 4) once this run can no longer prove it holds the version.
    pub fn check(&self) -> anyhow::Result<()> {
        self.pinned
            .fence()
            .check()
            .map_err(|f| fenced_is_busy(CommitError::Fenced(f)))
    }

    /// Commits `manifest` (state committed) if no newer version appeared and the
    /// lease held; otherwise exit 4 and the version stays pending (abandoned).
    pub async fn commit(self, manifest: SilverManifest) -> anyhow::Result<SilverManifest> {
        self.check()?;
        let (versions, _) = list(&self.lake, self.shard).await?;
        if let Some(newer) = versions.iter().find(|v| **v > self.version) {
            let newer = *newer;
            self.pinned.release().await;
            return Err(busy(format!(
                "version {newer} of {} appeared while this run worked; not committing version {}",
                self.shard, self.version
            )));
        }
        let committed_at = Utc::now();
        self.pinned
            .commit(move |m| {
                let claim = std::mem::take(&mut m.claim);
                *m = manifest;
                m.claim = claim;
                m.state = State::Committed;
                m.planned.clear();
                m.committed_at = Some(committed_at);
            })
            .await
            .map_err(fenced_is_busy)
    }

    /// Gives the version up after a failure: its lease ends now, so the next
    /// run goes on at once (recomputing what this one planned).
    pub async fn release(self) {
        self.pinned.release().await;
    }

    /// Ends the attempt after `err`: a run whose fence is raised lost the version
    /// (whatever error its writes met first: a refused write, a timeout after a
    /// freeze) and exits 4; any other failure releases the version first.
    pub async fn fail(self, err: anyhow::Error) -> anyhow::Error {
        let fence = self.pinned.fence();
        if fence.is_raised() {
            // Under the advisory lock only the lock's session can fence the
            // run (a server restart): the lease is not the cause then.
            let next = if self.locked {
                "the next run goes on"
            } else {
                "the next run goes on. Raise --lease-secs if runs are slow"
            };
            return busy(format!(
                "{} version {}: this run lost its claim ({}); it stopped writing and wrote \
                 nothing a reader follows (cause: {}); {next}",
                self.shard,
                self.version,
                fence.reason(),
                lake_common::telemetry::error_text(&err)
            ));
        }
        if lake_common::telemetry::exit_status_of(err.as_ref()) != ExitStatus::Busy {
            self.release().await;
        }
        err
    }
}

fn fenced_is_busy(e: CommitError) -> anyhow::Error {
    match e {
        CommitError::Fenced(f) => busy(format!("{f}; another run owns the silver version now")),
        other => other.into(),
    }
}

/// Deletes the manifests and indexes (format 1) of versions older than the
/// [`KEEP_VERSIONS`] newest version numbers up to `committed_now` (the version
/// just committed). Older pending versions are superseded by it, so they go
/// too. Index segments live elsewhere ([`crate::segments::delete_replaced`]).
pub async fn prune(lake: &Lake, shard: Shard, committed_now: u64) -> Result<usize, ManifestError> {
    let Some(oldest_kept) = committed_now.checked_sub(KEEP_VERSIONS as u64 - 1) else {
        return Ok(0);
    };
    let (_, objects) = list(lake, shard).await?;
    let mut deleted = 0;
    for p in objects {
        if version_of(&p).is_some_and(|(v, _)| v < oldest_kept) {
            match lake.store().delete(&p).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => deleted += 1,
                Err(source) => {
                    return Err(ManifestError::Store {
                        path: p.to_string(),
                        source,
                    });
                }
            }
        }
    }
    Ok(deleted)
}

/// A set of batch numbers as inclusive ranges.
pub fn to_ranges(set: &BTreeSet<u64>) -> Vec<[u64; 2]> {
    let mut out: Vec<[u64; 2]> = Vec::new();
    for &b in set {
        match out.last_mut() {
            Some(r) if r[1] + 1 == b => r[1] = b,
            _ => out.push([b, b]),
        }
    }
    out
}

/// Inclusive ranges back into a set.
pub fn from_ranges(ranges: &[[u64; 2]]) -> BTreeSet<u64> {
    ranges.iter().flat_map(|r| r[0]..=r[1]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn ranges_round_trip() {
        let set: BTreeSet<u64> = [1, 2, 3, 5, 7, 8].into();
        assert_eq!(to_ranges(&set), vec![[1, 3], [5, 5], [7, 8]]);
        assert_eq!(from_ranges(&to_ranges(&set)), set);
        assert!(to_ranges(&BTreeSet::new()).is_empty());
    }

    #[test]
    fn paths() {
        let s = Shard { index: 1, count: 4 };
        assert_eq!(
            manifest_path(s, 12).as_ref(),
            "silver/stop_executions/_manifests/shard-1-of-4/0000000012.json"
        );
        assert_eq!(version_of(&index_path(s, 12)), Some((12, false)));
        assert_eq!(version_of(&manifest_path(s, 12)), Some((12, true)));
        assert_eq!(version_of(&Path::from("a/12.json")), None);
    }

    #[tokio::test]
    async fn prune_keeps_the_newest_versions() {
        let lake = Lake::in_memory();
        let shard = Shard { index: 0, count: 2 };
        for v in 1..=7 {
            lake.put(&manifest_path(shard, v), Bytes::from_static(b"{}"))
                .await
                .unwrap();
            lake.put(&index_path(shard, v), Bytes::from_static(b""))
                .await
                .unwrap();
        }
        assert_eq!(prune(&lake, shard, 7).await.unwrap(), 4);
        let (versions, objects) = list(&lake, shard).await.unwrap();
        assert_eq!(versions, vec![3, 4, 5, 6, 7]);
        assert_eq!(objects.len(), 10);
        assert_eq!(prune(&lake, shard, 2).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn pin_is_exclusive_and_commit_refuses_when_overtaken() {
        let lake = Lake::in_memory();
        let shard = Shard::ALL;
        let lease = Duration::from_secs(30);
        let m1 = SilverManifest::pending(shard, 1, "a", lease, "incremental");
        let l1 = Lease::pin(&lake, m1.clone(), lease).await.unwrap();
        let err = Lease::pin(&lake, m1.clone(), lease).await.unwrap_err();
        assert_eq!(
            lake_common::telemetry::exit_status_of(err.as_ref()),
            ExitStatus::Busy
        );
        let found = find(&lake, shard).await.unwrap();
        assert_eq!(found.busy.map(|m| m.version), Some(1));
        // A newer version appears (a takeover): the old owner may not commit.
        let l2 = Lease::pin(
            &lake,
            SilverManifest::pending(shard, 2, "b", lease, "incremental"),
            lease,
        )
        .await
        .unwrap();
        assert!(l1.commit(m1).await.is_err());
        let committed = l2
            .commit(SilverManifest::pending(shard, 2, "b", lease, "incremental"))
            .await
            .unwrap();
        let found = find(&lake, shard).await.unwrap();
        assert_eq!(found.committed, Some(committed));
        assert!(found.busy.is_none() && found.abandoned.is_empty());
    }
}
