//! Retention of bronze through its log (SPEC §11).
//!
//! Bronze `events` keeps [`DEFAULT_BRONZE_DAYS`] days: the files of the days
//! before the **horizon** (the latest batch's snapshot day less the retention)
//! are removed by one entry of bronze's log that supersedes them and adds
//! nothing (`retained_before`, appended like a compaction, [`crate::rewrite`]).
//! The horizon is part of the log (its checkpoints carry it), so every reader
//! knows which days are gone on purpose: silver reads bronze only from the
//! horizon on and keeps the executions that began before it as they are
//! (docs/maintenance.md, "Retention"); bronze `--verify` compares only the days
//! from it on.
//!
//! **Silver first.** Removing a file silver has not read would lose its events
//! for good, so the horizon never passes the first day holding a file some
//! shard of silver has not consumed: a silver that stopped running holds
//! retention back (reported, `held_by_silver`), and a lake where silver never
//! committed keeps everything. A compaction's files count as read once silver
//! consumed every batch before it (they hold only those batches' rows).
//!
//! **Silver** keeps [`DEFAULT_SILVER_DAYS`] days of partitions
//! ([`retain_silver`]): one version per shard removes those of the days before
//! its horizon ([`silver_transform::retain`]). That horizon never passes
//! bronze's, so silver drops only executions it would never fold again, and
//! a lake whose bronze keeps everything keeps all of silver too.
//!
//! **The outbox** ([`retain_outbox`]) keeps [`DEFAULT_BRONZE_DAYS`] days too,
//! by version, not by day: its old days keep receiving new versions of their
//! rows (partitions follow `created_at`), and a file of an old day may hold
//! the latest captured version of a row PostgreSQL still holds, which must
//! stay. A file of a day before the target is removed only when none of its
//! rows is such a version: each row superseded by a later captured version,
//! or of a row PostgreSQL no longer holds (the row-identity state, pruned to
//! the rows PostgreSQL holds at each checkpoint, says which; bronze-ingest's
//! [`bronze_ingest::identity::Captured`]). The state itself is never touched.
//! There is no horizon: days before the target keep their latest versions.

use chrono::NaiveDate;
use lake_common::commit::CommitError;
use std::collections::BTreeSet;

use lake_common::manifest::{self, BatchManifest, BronzeLog, LiveFile, ManifestError};
use lake_common::{Dataset, Lake};
use object_store::path::Path;
use serde::Serialize;
use silver_transform::key::Shard;

use crate::rewrite;

/// Days of `bronze/events` kept by default (SPEC §11).
pub const DEFAULT_BRONZE_DAYS: u32 = 90;
/// Days of silver partitions kept by default (SPEC §11).
pub const DEFAULT_SILVER_DAYS: u32 = 365;
/// The shortest retention: bronze's look-back (24 h) and the compaction of
/// closed days (2 days) must stay inside what is kept.
pub const MIN_BRONZE_DAYS: u32 = 7;
/// The shortest retention of silver: a week, so a value meant in another unit
/// cannot empty it.
pub const MIN_SILVER_DAYS: u32 = 7;

/// Errors of retention.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RetainError {
    /// Bronze's log could not be read.
    #[error("bronze's log of {dataset}: {source}")]
    Log {
        /// The dataset.
        dataset: Dataset,
        /// Why.
        source: ManifestError,
    },
    /// Silver's manifests could not be read (what it has consumed).
    #[error("reading what silver has consumed: {0}")]
    Silver(#[from] silver_transform::manifest::ManifestError),
    /// The commit protocol failed.
    #[error("appending the retention to bronze's log: {0}")]
    Commit(#[from] CommitError),
    /// The retention of a silver shard failed.
    #[error("retention of silver {shard}: {source:#}")]
    SilverShard {
        /// The shard.
        shard: String,
        /// Why.
        source: anyhow::Error,
    },
    /// The outbox's files or its row-identity state could not be read.
    #[error("retention of bronze/outbox: {0}")]
    Outbox(String),
}

/// What a retention run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Retained {
    /// The dataset.
    pub dataset: String,
    /// Days kept.
    pub keep_days: u32,
    /// The horizon before this run.
    pub horizon_before: Option<NaiveDate>,
    /// The horizon the retention asks for.
    pub target: Option<NaiveDate>,
    /// The horizon this run applied (a dry run: would apply).
    pub horizon: Option<NaiveDate>,
    /// The first day holding a file silver has not consumed, when it held the
    /// horizon back.
    pub held_by_silver: Option<NaiveDate>,
    /// The batch that records it (`None`: nothing committed).
    pub batch: Option<u64>,
    /// Days whose files were removed.
    pub days: u64,
    /// Files removed.
    pub files: u64,
    /// Rows in them.
    pub rows: u64,
    /// Bytes in them.
    pub bytes: u64,
    /// Why nothing was removed, when nothing was.
    pub skipped: Option<String>,
}

/// What the retention of silver did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SilverRetained {
    /// Days kept.
    pub keep_days: u32,
    /// The horizon the retention asks for (bronze's latest snapshot day less
    /// `keep_days`).
    pub target: Option<NaiveDate>,
    /// Bronze's horizon, which silver's never passes (`None`: bronze keeps
    /// every day, and silver too).
    pub bronze_horizon: Option<NaiveDate>,
    /// The horizon applied (a dry run: would apply).
    pub horizon: Option<NaiveDate>,
    /// Per shard of every live shard layout (a layout replaced by re-sharding
    /// is left alone).
    pub shards: Vec<silver_transform::retain::ShardRetained>,
    /// Why nothing was asked of any shard, when nothing was.
    pub skipped: Option<String>,
}

impl SilverRetained {
    /// Partitions removed (or, a dry run, that would be) over every shard.
    pub fn partitions(&self) -> u64 {
        self.shards.iter().map(|s| s.partitions).sum()
    }
}

/// Applies `keep_days` of retention to silver's partitions, never past
/// bronze's horizon: the committed one, or on a dry run `bronze_planned` (what
/// this run's bronze retention would apply) when it is later.
pub async fn retain_silver(
    lake: &Lake,
    run_id: &str,
    keep_days: u32,
    bronze_planned: Option<NaiveDate>,
    dry_run: bool,
) -> Result<SilverRetained, RetainError> {
    let dataset = Dataset::BronzeEvents;
    let mut out = SilverRetained {
        keep_days,
        ..SilverRetained::default()
    };
    let skip = |mut out: SilverRetained, why: String| {
        tracing::info!("No silver retention: {why}");
        out.skipped = Some(why);
        Ok(out)
    };
    if !lake.capabilities().create_if_absent {
        return skip(
            out,
            "the store has no conditional writes (S3_CONDITIONAL_WRITES=disabled): silver's log \
             needs them, or the advisory lock silver-transform holds"
                .into(),
        );
    }
    let log = BronzeLog::load(lake, dataset)
        .await
        .map_err(|source| RetainError::Log { dataset, source })?;
    let Some(latest) = log.latest_entry() else {
        return skip(out, "bronze has no batch yet".into());
    };
    let target =
        latest.manifest.snapshot_time.date_naive() - chrono::Days::new(u64::from(keep_days));
    out.target = Some(target);
    out.bronze_horizon = log.retained_before().max(bronze_planned);
    let Some(bronze) = out.bronze_horizon else {
        return skip(
            out,
            "bronze keeps every day: silver's partitions are kept while bronze can recompute them"
                .into(),
        );
    };
    let horizon = target.min(bronze);
    out.horizon = Some(horizon);
    // Renewed in the background while the shard's version is written: short,
    // so a silver run after a killed retention waits for it, not exit 4.
    let lease = std::time::Duration::from_secs(10);
    for layout in live_layouts(lake).await? {
        for index in 0..layout.count {
            let shard = Shard {
                index,
                count: layout.count,
            };
            let r = silver_transform::retain::retain(lake, shard, horizon, run_id, lease, dry_run)
                .await
                .map_err(|source| RetainError::SilverShard {
                    shard: shard.to_string(),
                    source,
                })?;
            out.shards.push(r);
        }
    }
    Ok(out)
}

/// Applies `keep_days` of retention to the outbox: removes the live files of
/// the days before the target that hold no row's latest captured version of
/// a row PostgreSQL holds (see the module docs); a dry run only says what it
/// would remove. The files a run checks are the old ones still live: mostly
/// those holding rows PostgreSQL still holds, so the work follows the outbox
/// table's size, not the lake's age.
pub async fn retain_outbox(
    lake: &Lake,
    run_id: &str,
    keep_days: u32,
    dry_run: bool,
) -> Result<Retained, RetainError> {
    let dataset = Dataset::BronzeOutbox;
    let Begun {
        mut out,
        target,
        log,
        latest,
    } = match begin(lake, dataset, keep_days).await? {
        Ok(begun) => begun,
        Err(skipped) => return Ok(skipped),
    };
    let live = log.live_files();
    let old: Vec<_> = live.iter().filter(|f| f.file.date < target).collect();
    if old.is_empty() {
        return Ok(skipped(out, format!("no file of a day before {target}")));
    }
    let captured = bronze_ingest::identity::Captured::load(
        lake,
        &lake_common::schema::OUTBOX,
        log.identity_state(),
        &live,
        None,
        &[],
    )
    .await
    .map_err(|e| RetainError::Outbox(e.to_string()))?;
    let mut doomed = Vec::new();
    for f in old {
        let path = Path::from(f.file.path.as_str());
        let batches = lake_common::parquet_io::read_all(lake, &path)
            .await
            .map_err(|e| RetainError::Outbox(format!("reading {path}: {e}")))?;
        let mut needed = false;
        for b in &batches {
            let latest = captured
                .captured(b)
                .map_err(|e| RetainError::Outbox(e.to_string()))?;
            needed |= latest.into_iter().any(|l| l);
        }
        if !needed {
            doomed.push(f);
        }
    }
    drop(captured);
    if doomed.is_empty() {
        return Ok(skipped(
            out,
            format!(
                "every file of a day before {target} holds the latest version of a row PostgreSQL holds"
            ),
        ));
    }
    out.horizon = Some(target);
    let removal = Removal {
        lake,
        dataset,
        log: &log,
        latest,
        run_id,
        dry_run,
    };
    removal
        .commit(out, &doomed, |entry, days| entry.pruned_days = days)
        .await
}

/// What a retention starts from: its report (with the target set), the
/// target day (files of days before it go), the dataset's log and its latest
/// entry.
struct Begun {
    out: Retained,
    target: NaiveDate,
    log: BronzeLog,
    latest: BatchManifest,
}

/// How a retention starts; or the report of one that cannot run now.
async fn begin(
    lake: &Lake,
    dataset: Dataset,
    keep_days: u32,
) -> Result<Result<Begun, Retained>, RetainError> {
    let out = Retained {
        dataset: dataset.to_string(),
        keep_days,
        ..Retained::default()
    };
    let (log, latest) = match rewrite::prepare(lake, dataset)
        .await
        .map_err(|source| RetainError::Log { dataset, source })?
    {
        Ok(found) => found,
        Err(why) => return Ok(Err(skipped(out, why))),
    };
    let target = latest.snapshot_time.date_naive() - chrono::Days::new(u64::from(keep_days));
    Ok(Ok(Begun {
        out: Retained {
            target: Some(target),
            ..out
        },
        target,
        log,
        latest,
    }))
}

/// `out`, skipped for `why` (logged).
fn skipped(mut out: Retained, why: String) -> Retained {
    tracing::info!(dataset = %out.dataset, "No retention: {why}");
    out.skipped = Some(why);
    out
}

/// Where a retention's entry goes.
struct Removal<'a> {
    lake: &'a Lake,
    dataset: Dataset,
    log: &'a BronzeLog,
    latest: BatchManifest,
    run_id: &'a str,
    dry_run: bool,
}

impl Removal<'_> {
    /// Counts `doomed` into `out` and, unless a dry run, appends the entry
    /// that supersedes them (`mark` records why, given their days) to the
    /// log; deleting them is [`rewrite::append`]'s.
    async fn commit(
        self,
        mut out: Retained,
        doomed: &[&LiveFile],
        mark: impl FnOnce(&mut BatchManifest, Vec<NaiveDate>),
    ) -> Result<Retained, RetainError> {
        let days: Vec<NaiveDate> = doomed
            .iter()
            .map(|f| f.file.date)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        out.days = days.len() as u64;
        out.files = doomed.len() as u64;
        out.rows = doomed.iter().map(|f| f.file.rows).sum();
        out.bytes = doomed.iter().map(|f| f.file.bytes).sum();
        if self.dry_run {
            return Ok(out);
        }
        crate::failpoint("retain-before-commit");
        let latest = self.latest;
        let batch = latest.batch + 1;
        let supersedes = doomed.iter().map(|f| f.file.path.clone()).collect();
        let mut entry = rewrite::entry(latest, vec![], supersedes);
        mark(&mut entry, days);
        let dataset = self.dataset;
        match rewrite::append(self.lake, dataset, self.log, entry, self.run_id).await? {
            rewrite::Appended::Committed(_) => {
                out.batch = Some(batch);
                tracing::info!(dataset = %dataset, batch, horizon = ?out.horizon, days = out.days, files = out.files, rows = out.rows, "Committed a retention");
                Ok(out)
            }
            rewrite::Appended::Lost { owner } => {
                out.horizon = None;
                Ok(skipped(
                    out,
                    format!(
                        "run {owner} took batch {batch} first; the next run applies the retention"
                    ),
                ))
            }
        }
    }
}

/// Applies `keep_days` of retention to `bronze/events`; a dry run only says
/// what it would remove.
pub async fn retain(
    lake: &Lake,
    run_id: &str,
    keep_days: u32,
    dry_run: bool,
) -> Result<Retained, RetainError> {
    let dataset = Dataset::BronzeEvents;
    let Begun {
        mut out,
        target,
        log,
        latest,
    } = match begin(lake, dataset, keep_days).await? {
        Ok(begun) => begun,
        Err(skipped) => return Ok(skipped),
    };
    let before = log.retained_before();
    out.horizon_before = before;
    let Some(readers) = silver_consumed(lake).await? else {
        return Ok(skipped(
            out,
            "silver has not committed a version yet: bronze keeps every day until silver has read it"
                .into(),
        ));
    };
    let live = log.live_files();
    // Files of days behind the current horizon are ignored by silver anyway
    // (late rows): they never hold the horizon back.
    let unconsumed: BTreeSet<u64> = live
        .iter()
        .filter(|f| before.is_none_or(|h| f.file.date >= h))
        .map(|f| f.batch)
        .filter(|b| !readers.iter().all(|consumed| contains(consumed, *b)))
        .collect();
    // A compaction holds rows of earlier batches only: once silver consumed
    // every batch before it, silver has read them all.
    let mut unread_batches = BTreeSet::new();
    for b in unconsumed {
        let read = readers
            .iter()
            .all(|consumed| (1..b).all(|x| contains(consumed, x)))
            && manifest::read(lake, dataset, b)
                .await
                .map_err(|source| RetainError::Log { dataset, source })?
                .manifest
                .is_compaction();
        if !read {
            unread_batches.insert(b);
        }
    }
    let unread = live
        .iter()
        .filter(|f| before.is_none_or(|h| f.file.date >= h))
        .filter(|f| unread_batches.contains(&f.batch))
        .map(|f| f.file.date)
        .min();
    let mut horizon = target;
    if let Some(day) = unread.filter(|d| *d < target) {
        tracing::warn!(dataset = %dataset, %target, held_at = %day, "Silver has not read every file of the days retention would remove; keeping them");
        out.held_by_silver = Some(day);
        horizon = day;
    }
    let horizon = before.map_or(horizon, |b| b.max(horizon));
    let doomed: Vec<_> = live.iter().filter(|f| f.file.date < horizon).collect();
    if doomed.is_empty() {
        return Ok(skipped(out, format!("no file of a day before {horizon}")));
    }
    out.horizon = Some(horizon);
    let removal = Removal {
        lake,
        dataset,
        log: &log,
        latest,
        run_id,
        dry_run,
    };
    removal
        .commit(out, &doomed, |entry, _| {
            entry.retained_before = Some(horizon)
        })
        .await
}

/// The batches every shard of silver's live shard layouts has consumed, per
/// shard (inclusive ranges); `None` if silver has no layout or a shard of a
/// live layout has not committed yet. A stale layout (replaced by re-sharding,
/// [`silver_transform::manifest::layouts`]) reads nothing any more and holds
/// nothing back.
async fn silver_consumed(lake: &Lake) -> Result<Option<Vec<Vec<[u64; 2]>>>, RetainError> {
    let mut out = Vec::new();
    for layout in live_layouts(lake).await? {
        for shard in layout.shards {
            match shard {
                Some(m) => out.push(m.consumed_batches),
                None => return Ok(None),
            }
        }
    }
    Ok((!out.is_empty()).then_some(out))
}

/// Silver's shard layouts but the stale ones, which are logged.
async fn live_layouts(lake: &Lake) -> Result<Vec<silver_transform::manifest::Layout>, RetainError> {
    let (stale, live): (Vec<_>, Vec<_>) = silver_transform::manifest::layouts(lake)
        .await?
        .into_iter()
        .partition(|l| l.stale);
    for l in &stale {
        tracing::info!(
            shard_count = l.count,
            "Silver's layout of {} shard(s) was replaced by re-sharding: ignored by retention",
            l.count
        );
    }
    Ok(live)
}

fn contains(ranges: &[[u64; 2]], batch: u64) -> bool {
    ranges.iter().any(|[a, b]| (*a..=*b).contains(&batch))
}
