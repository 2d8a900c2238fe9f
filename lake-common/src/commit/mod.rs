//! The one commit protocol of the lake (docs/commit-protocol.md).
//!
//! Every job that commits to a log (bronze per dataset, silver per shard) does it
//! through this module: pin a pending entry with create-if-absent, keep its lease
//! alive with compare-and-swap renewals, write data only through a
//! [`fence::FencedStore`], commit with a compare-and-swap, release the lease on
//! failure. Two things make it safe on a real object store:
//!
//! * **lost answers are resolved, not guessed**: every PUT of an entry carries a
//!   fresh `write_id`; a 412, an "already exists" or an error without an answer
//!   is followed by a read of the entry, and the run's own write is recognised by
//!   its id instead of being taken for a rival's;
//! * **a run that cannot prove its claim stops writing** ([`fence`]).
//!
//! Where the store enforces no conditional writes, the caller holds an
//! [`lock::AdvisoryLock`] for the table instead and the log is opened in
//! [`Mode::Locked`]: entries are then written with plain overwrites.

pub mod fence;
pub mod lock;

use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, Notify};

use crate::store::Lake;
use fence::Fence;

/// How long a contender tolerates clock skew: it takes over an entry only this
/// long after its `lease_expires_at` (docs/commit-protocol.md, "Clock skew").
pub const CLOCK_SKEW: Duration = Duration::from_secs(5);

/// A run that finds a lease ending within this much waits for it instead of
/// exiting 4 (a Job's retry pod right after a crash, or a release that was lost).
pub const LEASE_WAIT: Duration = Duration::from_secs(15);

/// Who holds a pending entry, flattened into every entry's JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The run that owns (or owned) the entry.
    pub owner: String,
    /// The attempt: a fresh id per pin or takeover (names of non-deterministic
    /// output carry it, so a fenced attempt's late PUTs land on no committed name).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub attempt: String,
    /// A fresh id per PUT of the entry: how a run recognises its own write.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub write_id: String,
    /// While pending: until when the owner may write.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// How many attempts pinned or took over the entry (`0`: written before it
    /// was counted). More than one means an earlier attempt may have left
    /// output the entry does not list, so only then does the clean-up look for it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempts: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Claim {
    /// Whether another run must still keep off at `now` (lease plus skew).
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        let skew = chrono::Duration::from_std(CLOCK_SKEW).unwrap_or_default();
        self.lease_expires_at.is_some_and(|t| t + skew > now)
    }

    /// How long until another run may take over (zero if it may now).
    pub fn remaining(&self, now: DateTime<Utc>) -> Duration {
        let skew = chrono::Duration::from_std(CLOCK_SKEW).unwrap_or_default();
        self.lease_expires_at
            .map(|t| (t + skew - now).to_std().unwrap_or_default())
            .unwrap_or_default()
    }
}

/// A log entry: a bronze batch manifest, a silver version manifest.
pub trait Entry: Serialize + DeserializeOwned + Clone + Debug + Send + Sync + 'static {
    /// Its claim.
    fn claim(&self) -> &Claim;
    /// Its claim, to change.
    fn claim_mut(&mut self) -> &mut Claim;
    /// Whether it is still pending (committed entries never change again).
    fn is_pending(&self) -> bool;
}

/// How entries are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Create-if-absent and compare-and-swap on the ETag.
    Conditional,
    /// Plain overwrites: the caller holds the table's advisory lock.
    Locked,
    /// A local directory: create-if-absent is atomic (a hard link) but there is
    /// no compare-and-swap, so an update reads the entry first and overwrites it
    /// only if it still holds this run's last write. Two processes can still
    /// race between that read and the write: for development lakes only.
    CreateOnly,
}

/// Errors of the commit protocol.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommitError {
    /// The store failed.
    #[error("{op} {path}: {source}")]
    Store {
        /// What was being done.
        op: &'static str,
        /// The entry.
        path: String,
        /// The store's error.
        source: object_store::Error,
    },
    /// An entry does not parse.
    #[error("log entry {path} is not valid JSON of this format: {source}")]
    Parse {
        /// The entry.
        path: String,
        /// Why.
        source: serde_json::Error,
    },
    /// Another run wrote the entry: this run lost its claim (or never had it).
    #[error("another run ({owner}) wrote {path}")]
    Conflict {
        /// The entry.
        path: String,
        /// Its owner as read back.
        owner: String,
    },
    /// This run's lease was lost: it stopped writing.
    #[error(transparent)]
    Fenced(#[from] fence::Fenced),
}

/// An entry as read, with the version a compare-and-swap needs.
#[derive(Debug, Clone)]
pub struct Stored<E> {
    /// The entry.
    pub entry: E,
    /// Its ETag / version.
    pub version: UpdateVersion,
}

/// How one PUT of an entry ended.
enum Written {
    Done(UpdateVersion),
    /// Refused because an earlier write of this same attempt (its answer lost)
    /// changed the version: the entry's current version.
    OwnEarlierWrite(UpdateVersion),
}

/// A table's log: where its entries live and how they are written.
#[derive(Debug, Clone)]
pub struct Log {
    lake: Lake,
    mode: Mode,
    lease: Duration,
    fence: Option<Fence>,
}

fn fresh_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

impl Log {
    /// A log on `lake`, written in `mode`, with pending entries leased for `lease`.
    pub fn new(lake: Lake, mode: Mode, lease: Duration) -> Self {
        Self {
            lake,
            mode,
            lease,
            fence: None,
        }
    }

    /// Entries pinned through this log use `fence` (for example one that the
    /// table's advisory lock also raises) instead of a fresh one.
    pub fn fenced_by(mut self, fence: Fence) -> Self {
        self.fence = Some(fence);
        self
    }

    /// The write mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The lease duration.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Reads an entry (`None`: absent).
    pub async fn read<E: Entry>(&self, path: &Path) -> Result<Option<Stored<E>>, CommitError> {
        let got = match self.lake.store().get(path).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(source) => {
                return Err(CommitError::Store {
                    op: "reading",
                    path: path.to_string(),
                    source,
                });
            }
        };
        let version = UpdateVersion {
            e_tag: got.meta.e_tag.clone(),
            version: got.meta.version.clone(),
        };
        let bytes = got.bytes().await.map_err(|source| CommitError::Store {
            op: "reading",
            path: path.to_string(),
            source,
        })?;
        let entry = serde_json::from_slice(&bytes).map_err(|source| CommitError::Parse {
            path: path.to_string(),
            source,
        })?;
        Ok(Some(Stored { entry, version }))
    }

    /// Writes `entry` with a fresh `write_id`: create-if-absent when `expected`
    /// is `None`, else a compare-and-swap on it (plain overwrites in
    /// [`Mode::Locked`]). Whatever the answer — success, 412, "exists", an error
    /// without an answer — an unclear outcome is settled by reading the entry
    /// back: our `write_id` there means the write took effect.
    pub async fn write<E: Entry>(
        &self,
        path: &Path,
        entry: &mut E,
        expected: Option<UpdateVersion>,
    ) -> Result<UpdateVersion, CommitError> {
        match self.write_once(path, entry, expected).await? {
            Written::Done(v) => Ok(v),
            // An earlier write of this attempt took effect but its answer was
            // lost, so the version this write expected is stale: write again
            // over our own entry.
            Written::OwnEarlierWrite(v) => match self.write_once(path, entry, Some(v)).await? {
                Written::Done(v) => Ok(v),
                Written::OwnEarlierWrite(_) => Err(CommitError::Conflict {
                    path: path.to_string(),
                    owner: entry.claim().owner.clone(),
                }),
            },
        }
    }

    async fn write_once<E: Entry>(
        &self,
        path: &Path,
        entry: &mut E,
        expected: Option<UpdateVersion>,
    ) -> Result<Written, CommitError> {
        // What the entry held when this run last read or wrote it (a takeover
        // carries the previous owner's last write).
        let previous_write = std::mem::replace(&mut entry.claim_mut().write_id, fresh_id());
        let ours = |s: &Stored<E>| {
            !entry.claim().attempt.is_empty() && s.entry.claim().attempt == entry.claim().attempt
        };
        // Without compare-and-swap an update first checks that the entry is still
        // this attempt's (a run whose lock session died must not overwrite the
        // run that took the lock over).
        if self.mode != Mode::Conditional && expected.is_some() {
            match self.read::<E>(path).await? {
                Some(s) if s.entry.claim().write_id == previous_write || ours(&s) => {}
                Some(s) => {
                    return Err(CommitError::Conflict {
                        path: path.to_string(),
                        owner: s.entry.claim().owner.clone(),
                    });
                }
                None => {
                    return Err(CommitError::Conflict {
                        path: path.to_string(),
                        owner: "(deleted)".into(),
                    });
                }
            }
        }
        let bytes = serde_json::to_vec_pretty(entry).map_err(|source| CommitError::Parse {
            path: path.to_string(),
            source,
        })?;
        let is_update = expected.is_some();
        let mode = match (self.mode, expected) {
            (Mode::Locked, _) | (Mode::CreateOnly, Some(_)) => PutMode::Overwrite,
            (Mode::CreateOnly, None) => PutMode::Create,
            (Mode::Conditional, None) => PutMode::Create,
            (Mode::Conditional, Some(v)) => PutMode::Update(v),
        };
        let opts = PutOptions {
            mode,
            ..Default::default()
        };
        let err = match self
            .lake
            .store()
            .put_opts(path, PutPayload::from(bytes), opts)
            .await
        {
            Ok(r) => {
                return Ok(Written::Done(UpdateVersion {
                    e_tag: r.e_tag,
                    version: r.version,
                }));
            }
            Err(e) => e,
        };
        let refused = matches!(
            err,
            object_store::Error::Precondition { .. } | object_store::Error::AlreadyExists { .. }
        );
        // Settle it by reading back (the read has its own retries).
        match self.read::<E>(path).await? {
            Some(s) if s.entry.claim().write_id == entry.claim().write_id => {
                tracing::info!(%path, "A write whose answer was lost had taken effect");
                Ok(Written::Done(s.version))
            }
            Some(s) if refused && is_update && ours(&s) => {
                tracing::info!(%path, "An earlier write of this attempt had taken effect; writing again");
                Ok(Written::OwnEarlierWrite(s.version))
            }
            Some(s) if refused => Err(CommitError::Conflict {
                path: path.to_string(),
                owner: s.entry.claim().owner.clone(),
            }),
            _ => Err(CommitError::Store {
                op: "writing",
                path: path.to_string(),
                source: err,
            }),
        }
    }

    /// Pins a new pending entry at `path` (create-if-absent) for `run_id`.
    /// `Ok(Err(found))`: the entry exists already (another run pinned it).
    pub async fn pin<E: Entry>(
        &self,
        path: &Path,
        mut entry: E,
        run_id: &str,
    ) -> Result<Result<Pinned<E>, Stored<E>>, CommitError> {
        self.claim(&mut entry, run_id);
        let sent = Instant::now();
        match self.write(path, &mut entry, None).await {
            Ok(version) => Ok(Ok(self.start(path, entry, version, sent))),
            Err(CommitError::Conflict { .. }) => match self.read(path).await? {
                Some(found) => Ok(Err(found)),
                None => Err(CommitError::Conflict {
                    path: path.to_string(),
                    owner: "(deleted since)".into(),
                }),
            },
            Err(e) => Err(e),
        }
    }

    /// Takes over a pending entry whose lease expired (compare-and-swap on the
    /// version read). `Err(Conflict)`: another run took it first.
    pub async fn take_over<E: Entry>(
        &self,
        path: &Path,
        found: Stored<E>,
        run_id: &str,
    ) -> Result<Pinned<E>, CommitError> {
        let mut entry = found.entry;
        // An entry from before attempts were counted had at least one.
        let attempts = &mut entry.claim_mut().attempts;
        *attempts = (*attempts).max(1);
        self.claim(&mut entry, run_id);
        let sent = Instant::now();
        let version = self.write(path, &mut entry, Some(found.version)).await?;
        Ok(self.start(path, entry, version, sent))
    }

    fn claim<E: Entry>(&self, entry: &mut E, run_id: &str) {
        let c = entry.claim_mut();
        c.owner = run_id.to_owned();
        c.attempt = fresh_id();
        c.attempts = c.attempts.saturating_add(1);
        c.lease_expires_at = Some(Utc::now() + self.lease);
    }

    fn start<E: Entry>(
        &self,
        path: &Path,
        entry: E,
        version: UpdateVersion,
        sent: Instant,
    ) -> Pinned<E> {
        // The lease counts from before the pin was sent: request time never extends it.
        let fence = self.fence.clone().unwrap_or_default();
        fence.set_deadline(deadline(sent, self.lease));
        fence.watch_deadline();
        let shared = Arc::new(Shared {
            log: self.clone(),
            path: path.clone(),
            current: Mutex::new((entry, version)),
            fence: fence.clone(),
            stop: Notify::new(),
        });
        let renewer = tokio::spawn(renew(shared.clone()));
        Pinned {
            shared,
            renewer: Some(renewer),
        }
    }
}

/// Until when a lease confirmed by a request sent at `sent` lets the owner
/// write: the lease minus a tenth, so a contender's clock never sees it expired
/// while the owner still writes.
fn deadline(sent: Instant, lease: Duration) -> Instant {
    sent + lease - lease / 10
}

#[derive(Debug)]
struct Shared<E> {
    log: Log,
    path: Path,
    /// The entry as last written and its version.
    current: Mutex<(E, UpdateVersion)>,
    fence: Fence,
    stop: Notify,
}

/// A pinned entry: its lease is renewed in the background until [`commit`]
/// or [`release`]; its [`fence`] says whether the run may still write.
///
/// [`commit`]: Pinned::commit
/// [`release`]: Pinned::release
/// [`fence`]: Pinned::fence
#[derive(Debug)]
pub struct Pinned<E: Entry> {
    shared: Arc<Shared<E>>,
    renewer: Option<tokio::task::JoinHandle<()>>,
}

impl<E: Entry> Pinned<E> {
    /// The fence every write of this attempt must go through.
    pub fn fence(&self) -> Fence {
        self.shared.fence.clone()
    }

    /// The entry as last written.
    pub async fn entry(&self) -> E {
        self.shared.current.lock().await.0.clone()
    }

    /// Changes the pending entry and writes it now (compare-and-swap), e.g. to
    /// record the uploads or partitions the attempt is about to write.
    pub async fn update(&self, f: impl FnOnce(&mut E)) -> Result<(), CommitError> {
        self.shared.fence.check()?;
        let mut cur = self.shared.current.lock().await;
        let mut next = cur.0.clone();
        f(&mut next);
        let sent = Instant::now();
        next.claim_mut().lease_expires_at = Some(Utc::now() + self.shared.log.lease);
        let v = write_claimed(&self.shared, &mut next, cur.1.clone()).await?;
        self.shared
            .fence
            .set_deadline(deadline(sent, self.shared.log.lease));
        *cur = (next, v);
        Ok(())
    }

    async fn stop_renewing(&mut self) {
        self.shared.stop.notify_one();
        if let Some(r) = self.renewer.take() {
            let _ = r.await;
        }
    }

    /// Commits: `f` turns the pending entry into the committed one, which is
    /// written with a compare-and-swap if the claim still holds.
    pub async fn commit(mut self, f: impl FnOnce(&mut E)) -> Result<E, CommitError> {
        self.stop_renewing().await;
        self.shared.fence.check()?;
        let mut cur = self.shared.current.lock().await;
        let mut next = cur.0.clone();
        f(&mut next);
        next.claim_mut().lease_expires_at = None;
        let v = match write_claimed(&self.shared, &mut next, cur.1.clone()).await {
            Ok(v) => v,
            Err(e @ CommitError::Fenced(_)) => return Err(e),
            Err(e) => {
                // Not committed (the read-back found no trace of it): give the
                // lease up so the next attempt resumes at once.
                self.shared.fence.raise("commit failed");
                let mut released = cur.0.clone();
                let skew = chrono::Duration::from_std(CLOCK_SKEW).unwrap_or_default();
                released.claim_mut().lease_expires_at = Some(Utc::now() - skew);
                if let Err(r) = write_claimed(&self.shared, &mut released, cur.1.clone()).await {
                    tracing::warn!(path = %self.shared.path, error = %r, "Could not release the lease");
                }
                return Err(e);
            }
        };
        self.shared.fence.close();
        *cur = (next.clone(), v);
        Ok(next)
    }

    /// Gives the claim up after a failure that was not fencing: the lease is set
    /// to expire now, so the next attempt resumes at once. Best effort (a
    /// failure here only means the next attempt waits out the lease).
    pub async fn release(mut self) {
        self.stop_renewing().await;
        if self.shared.fence.is_raised() {
            return;
        }
        // Fence first: once the lease reads as expired a rival may start, and
        // nothing of this attempt (uploads still in flight) may land after that.
        self.shared.fence.raise("released after a failure");
        let mut cur = self.shared.current.lock().await;
        let mut next = cur.0.clone();
        let skew = chrono::Duration::from_std(CLOCK_SKEW).unwrap_or_default();
        // Minus the skew contenders add: "expired" for them at once.
        next.claim_mut().lease_expires_at = Some(Utc::now() - skew);
        match write_claimed(&self.shared, &mut next, cur.1.clone()).await {
            Ok(v) => {
                tracing::info!(path = %self.shared.path, "Released the lease for the next attempt");
                *cur = (next, v);
            }
            Err(e) => {
                tracing::warn!(path = %self.shared.path, error = %e, "Could not release the lease")
            }
        }
        self.shared.fence.close();
    }
}

impl<E: Entry> Drop for Pinned<E> {
    fn drop(&mut self) {
        self.shared.stop.notify_one();
        // Whatever path dropped it, nothing more may be written under this claim.
        self.shared.fence.raise("the claim was dropped");
        self.shared.fence.close();
    }
}

/// A write under the claim: a conflict (another run's write found) raises the fence.
async fn write_claimed<E: Entry>(
    shared: &Shared<E>,
    entry: &mut E,
    expected: UpdateVersion,
) -> Result<UpdateVersion, CommitError> {
    match shared.log.write(&shared.path, entry, Some(expected)).await {
        Err(CommitError::Conflict { owner, .. }) => {
            let reason = format!("run {owner} took over {}", shared.path);
            shared.fence.raise(reason.clone());
            Err(CommitError::Fenced(fence::Fenced(reason)))
        }
        other => other,
    }
}

async fn renew<E: Entry>(shared: Arc<Shared<E>>) {
    let lease = shared.log.lease;
    loop {
        tokio::select! {
            _ = shared.stop.notified() => return,
            _ = shared.fence.raised() => return,
            _ = tokio::time::sleep(lease / 3) => {}
        }
        if shared.fence.is_raised() {
            return;
        }
        let mut cur = shared.current.lock().await;
        let mut next = cur.0.clone();
        let sent = Instant::now();
        next.claim_mut().lease_expires_at = Some(Utc::now() + lease);
        match write_claimed(&shared, &mut next, cur.1.clone()).await {
            Ok(v) => {
                shared.fence.set_deadline(deadline(sent, lease));
                *cur = (next, v);
            }
            Err(CommitError::Fenced(f)) => {
                tracing::error!(path = %shared.path, reason = %f.0, "Lease lost: stopping writes");
                return;
            }
            Err(e) => {
                tracing::warn!(path = %shared.path, error = %e, "Lease renewal failed; retrying")
            }
        }
    }
}
