//! Which partitions a run recomputes, and recomputing them from bronze.
//!
//! The incremental rule: a partition is recomputed **whole, from the live bronze
//! files**, whenever anything about one of its executions may have changed. Given
//! the previous committed state (consumed batches, key index) and the bronze
//! batches committed since:
//!
//! 1. the new batches' files are scanned for their execution keys only (narrow
//!    projection); each key's index entry is merged with what the scan saw, which
//!    gives its new first event (so its new partition) and the days that may
//!    hold its events (its span less its longest run of days without any);
//! 2. the *affected* keys are those of the new files plus, when a backfill
//!    superseded earlier files, every indexed key whose days include a
//!    superseded day;
//! 3. the partitions to recompute are the old and the new partition of every
//!    affected key (an earlier late event can move an execution to another day,
//!    and a key can change client), plus any forced ones (`--date`, partitions a
//!    crashed run had planned, everything on `--full-refresh`);
//! 4. every execution of those partitions is folded from bronze: the index gives
//!    the days that may hold each one's events, only those are read, and only
//!    their events are folded;
//! 5. if a folded execution lands in a partition not yet in the set (only possible
//!    when bronze lost events, e.g. a backfill that re-exported less), that
//!    partition joins the set and its executions are folded too, until stable.
//!
//! Executions nobody touched keep their partition and their rows, so the result
//! equals a full recompute row for row (the property test checks exactly that).
//!
//! When an unsharded run would fold more than half of the indexed executions
//! anyway (late events all over the history), it folds everything without a
//! filter instead: the same result for less work.
//!
//! **The retention horizon.** Once bronze's retention removed the days before
//! a horizon (lake-maintain), silver reads bronze only from it on, and an
//! execution whose first event lies before it is **frozen**: its row stays as
//! last published, it is never folded again (its first events are gone), and
//! its index entry is kept (its day span extended by later events). A new
//! event for it is counted (`frozen_executions`) and not folded into it: the
//! execution's events from the horizon on are folded on their own and go to
//! the frozen partition's quarantine with the rule `after_retention_horizon`
//! (`late_for_frozen`), one row per execution, replaced whenever new events
//! touch it again. A late row dated before the horizon is not read at all
//! (`files_behind_horizon`). "Incremental equals a full
//! recompute" holds relative to the horizon: a full refresh recomputes every
//! execution that began after it and keeps the frozen ones.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use lake_common::Lake;
use rustc_hash::{FxHashMap, FxHashSet};
use serde::Serialize;

use crate::bronze::{BronzeError, BronzeFile, BronzeView, Projection, TimeRange, read_file};
use crate::fold::{FoldError, Folded, KeyFilter, combine, fold_day, two_versions};
use crate::index::{KeyIndex, KeyInfo};
use crate::key::{EventId, KeyHash, PartitionKey, Shard};
use crate::memory::{Budget, Counts};
use crate::partitions::{PartitionTable, PartitionsError};
use crate::route::Routing;
use crate::segments::{Rebuild, Segments, month_of_day};
use crate::spill::{Spill, SpillError};

/// Files scanned for keys concurrently.
const SCAN_CONCURRENCY: usize = 8;

/// Bronze rows folded at a time by [`crate::Options`]' default (the command
/// line sizes them from the memory budget, [`crate::memory::Budget`]): what
/// bounds silver's working set for the bronze it reads, whatever a day holds
/// (a decoded row is ~350 bytes, `parallel_days` units are in flight;
/// docs/silver.md, "Memory and speed").
pub const FOLD_WINDOW_ROWS: u64 = 200_000;

/// Windows are at least a minute long (a day of 288 M events would still fold).
const MAX_WINDOWS_PER_DAY: u64 = 24 * 60;

const DAY_MICROS: i64 = 86_400_000_000;

/// Errors of recomputing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecomputeError {
    /// Reading bronze failed.
    #[error(transparent)]
    Bronze(#[from] BronzeError),
    /// Folding failed.
    #[error(transparent)]
    Fold(#[from] FoldError),
    /// A worker task panicked or was cancelled.
    #[error("a fold task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// A segment of the key index could not be read.
    #[error("reading the key index: {0:#}")]
    Index(anyhow::Error),
    /// A month of the partition table could not be read.
    #[error(transparent)]
    Partitions(#[from] PartitionsError),
    /// A fold pass's rows could not be parked on local disk.
    #[error(transparent)]
    Spill(#[from] SpillError),
}

/// What the shard knew before this run.
#[derive(Debug, Default)]
pub struct Prior {
    /// The part of the key index loaded so far (a format-1 index whole; empty on
    /// a full refresh); [`recompute`] loads the segments it needs into it.
    pub index: KeyIndex,
    /// The key index's segments of the latest committed version.
    pub segments: Segments,
    /// Bronze batches already consumed (empty on a full refresh).
    pub consumed: BTreeSet<u64>,
    /// The shard's partition table (the months loaded so far); [`recompute`]
    /// loads the months a `--date` range or a whole-shard recompute needs.
    pub table: PartitionTable,
}

/// What to recompute besides the effects of new bronze batches.
#[derive(Debug, Clone)]
pub struct Request {
    /// The shard.
    pub shard: Shard,
    /// Recompute everything from all of bronze.
    pub full_refresh: bool,
    /// Recompute every partition of these days (`--date`, `--from/--to`), inclusive.
    pub days: Option<(i32, i32)>,
    /// Recompute these partitions too (a crashed run's plan; existing partitions on a full refresh).
    pub forced: BTreeSet<PartitionKey>,
    /// Days folded concurrently.
    pub parallel_days: usize,
    /// An unsharded run that must fold more than this share of the indexed
    /// executions folds everything instead (same result, less work).
    pub whole_shard_ratio: f64,
    /// Bronze rows read and folded at a time: a larger day is folded in time
    /// windows ([`FOLD_WINDOW_ROWS`] by default).
    pub window_rows: u64,
    /// The memory budget: a fold of everything too large for it runs in
    /// key-hash passes ([`crate::spill`]).
    pub memory: Budget,
    /// Key-hash passes of a fold of everything, if set (else planned from
    /// the budget).
    pub passes: Option<u32>,
    /// Counts the events folded, on a terminal.
    pub progress: lake_common::telemetry::Progress,
    /// Silver's own retention horizon (`retained_before` of its manifest):
    /// the partitions before it are gone, so a later event of one of their
    /// executions (whose index entry outlives them, [`crate::retain`]) is
    /// counted and written nowhere.
    pub removed_before: Option<i32>,
    /// The version this run writes (`None`: a dry run, which writes nothing):
    /// a rebuilt index's segments are written as the fold's passes end.
    pub version: Option<u64>,
    /// Entries a key index segment holds at most ([`crate::segments::SEGMENT_KEYS`]).
    pub segment_keys: u64,
}

impl Request {
    /// Whether this run writes the `after_retention_horizon` rows of the
    /// frozen executions of partition `p`: those the shard owns and silver's
    /// retention kept.
    fn writes_late_rows_of(&self, p: PartitionKey) -> bool {
        self.shard.owns(p.client_id) && self.removed_before.is_none_or(|r| p.day >= r)
    }
}

/// Counters of the work done.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct WorkStats {
    /// New live bronze files (scanned for keys).
    pub new_files: u64,
    /// Keys found in the new files.
    pub keys_scanned: u64,
    /// Keys affected by new batches or superseded days.
    pub keys_affected: u64,
    /// Fold rounds (1 normally; more only when executions moved unexpectedly).
    pub fold_rounds: u64,
    /// Bronze days read for the fold.
    pub days_read: u64,
    /// Bronze files read for the fold.
    pub files_read: u64,
    /// Events folded.
    pub events_folded: u64,
    /// Events found more than once in bronze, identical, and folded once.
    pub duplicate_events: u64,
    /// Units read and folded: one per day, more for a day holding more than
    /// the window's rows.
    pub fold_windows: u64,
    /// Events of the largest day folded in several windows: their ids are
    /// held to check that no event is in two windows (the memory model's
    /// share that still follows a day's size).
    pub windowed_day_events: u64,
    /// Key index segments read (of the shard's `index_segments` in its manifest).
    pub index_segments_read: u64,
    /// Months of the partition table read (of its `partition_months`).
    pub partition_months_read: u64,
    /// Executions begun before the retention horizon that new bronze events
    /// (or a backfill) touched: their rows kept, not folded; their events from
    /// the horizon on quarantined (`after_retention_horizon`).
    pub frozen_executions: u64,
    /// Of those, the executions whose partition silver's retention removed:
    /// their events are counted here and written nowhere (silver keeps no
    /// row of an execution begun before its own horizon).
    pub frozen_removed: u64,
    /// New bronze files of days before the retention horizon (late rows): not read.
    pub files_behind_horizon: u64,
    /// Executions the shard's key index held before the run (every segment,
    /// loaded or not).
    pub indexed_keys: u64,
    /// Key-hash passes of a fold of everything (1 unless the memory budget
    /// needs more, [`crate::memory::Budget::passes`]; 0 when the run folded
    /// only the affected executions); each reads its days again.
    pub fold_passes: u64,
    /// Bytes of the earlier passes' rows parked on local disk.
    pub parked_bytes: u64,
}

impl WorkStats {
    /// Counts one fold round whose own counters are `round`'s.
    fn add_fold_round(&mut self, round: &WorkStats) {
        self.fold_rounds += 1;
        self.days_read += round.days_read;
        self.files_read += round.files_read;
        self.events_folded += round.events_folded;
        self.duplicate_events += round.duplicate_events;
        self.fold_windows += round.fold_windows;
        self.windowed_day_events = self.windowed_day_events.max(round.windowed_day_events);
    }
}

/// The result of [`recompute`].
#[derive(Debug, Default)]
pub struct Recomputed {
    /// The partitions (owned by the shard) to publish; every execution belonging
    /// to them is in `executions` or, routed already, in `spill`.
    pub partitions: BTreeSet<PartitionKey>,
    /// Folded executions by key text (may include executions of other shards):
    /// none after a fold in several passes, which parks them all.
    pub executions: Folded,
    /// The rows and index entries of a fold's passes.
    pub spill: Spill,
    /// What routing the earlier passes' executions counted.
    pub routing: Routing,
    /// Executions of the largest pass (held at once).
    pub largest_pass: u64,
    /// The key index after this run, except for the folded executions: complete
    /// it with [`finish_index`] once they are published.
    pub index: KeyIndex,
    /// Keys that were folded (those without events any more leave the index).
    pub attempted: FxHashSet<KeyHash>,
    /// All batches consumed after this run.
    pub consumed: BTreeSet<u64>,
    /// Batches consumed for the first time.
    pub new_batches: BTreeSet<u64>,
    /// Days whose earlier bronze files new batches superseded.
    pub superseded_days: BTreeSet<i32>,
    /// The index's segments, as far as loaded; written with the new index.
    pub segments: Segments,
    /// The index was rebuilt from all of bronze: it replaces every segment.
    pub rebuilt: bool,
    /// The segments of a rebuilt index, written as the passes end (the last
    /// pass's entries are added once its executions are published).
    pub rebuild: Option<Rebuild>,
    /// The partition table, with the months this run's plan needed loaded.
    pub table: PartitionTable,
    /// Later events of the frozen executions this run's new batches touched,
    /// by the frozen partition (owned by the shard) they belong to: their
    /// rows go to its quarantine. Never on a full refresh, which keeps frozen
    /// partitions as they are.
    pub late_for_frozen: BTreeMap<PartitionKey, Late>,
    /// Counters.
    pub stats: WorkStats,
}

/// The frozen executions of one frozen partition that new bronze batches
/// touched.
#[derive(Debug, Default)]
pub struct Late {
    /// Every one of them: their earlier `after_retention_horizon` rows are
    /// replaced (dropped, for one whose later events a backfill removed).
    pub keys: FxHashSet<KeyHash>,
    /// Their events from the horizon on, folded (those that have any).
    pub folded: Folded,
}

/// Plans and folds a run (see the module docs).
pub async fn recompute(
    lake: &Lake,
    view: &BronzeView,
    prior: Prior,
    req: &Request,
) -> Result<Recomputed, RecomputeError> {
    let shard = req.shard;
    let owned = |p: &PartitionKey| shard.owns(p.client_id);
    let new_batches = view.new_batches(&prior.consumed);
    let mut out = Recomputed {
        consumed: view.committed().clone(),
        superseded_days: if req.full_refresh {
            BTreeSet::new()
        } else {
            view.superseded_days(&new_batches)
        },
        new_batches,
        ..Default::default()
    };
    let mut old = prior.index;
    let mut segments = prior.segments;
    let mut table = prior.table;
    // Every key the index holds, loaded or not (a format-1 index is all loaded).
    let known_keys = segments.total_keys().max(old.len() as u64);
    out.stats.indexed_keys = known_keys;
    let horizon = view.retained_before();
    let frozen = |day: i32| horizon.is_some_and(|h| day < h);
    let live = |p: &PartitionKey| owned(p) && !frozen(p.day);
    let mut partitions: BTreeSet<PartitionKey> = req.forced.iter().copied().filter(live).collect();
    out.stats.files_behind_horizon = view.behind_horizon(&out.new_batches);

    if req.full_refresh {
        if let Some(h) = horizon {
            keep_frozen(lake, &mut segments, &mut old, h).await?;
        }
        if shard.count == 1 {
            out.segments = segments;
            out.table = table;
            return fold_everything(lake, view, req, out, partitions, old, None).await;
        }
    }

    // 1. Keys of the new files.
    let new_files = view.files_of(&out.new_batches);
    out.stats.new_files = new_files.len() as u64;
    let scanned = scan_keys(lake, &new_files).await?;
    out.stats.keys_scanned = scanned.len() as u64;

    // The index segments that may hold what this run looks up: the scanned
    // keys (Bloom filters), the executions with events on superseded days, and
    // those of the forced days.
    let mut wanted = segments
        .maybe_holding(lake, scanned.keys())
        .await
        .map_err(RecomputeError::Index)?;
    for d in &out.superseded_days {
        wanted.extend(segments.spanning(*d));
    }
    if let Some((from, to)) = req.days {
        wanted.extend(segments.within(from, to));
    }
    segments
        .load(lake, wanted, &mut old)
        .await
        .map_err(RecomputeError::Index)?;

    // 2. Affected keys, with their merged (old + new) info.
    let mut affected: FxHashMap<KeyHash, KeyInfo> = FxHashMap::default();
    // Frozen executions with new events (merged info: their span grows).
    let mut touched: FxHashMap<KeyHash, KeyInfo> = FxHashMap::default();
    for (k, info) in scanned {
        let mut merged = info;
        if let Some(o) = old.get(&k) {
            merged.merge(o);
            if frozen(o.partition().day) {
                touched.insert(k, merged);
                continue;
            }
        }
        affected.insert(k, merged);
    }
    if !out.superseded_days.is_empty() {
        for (k, o) in old.iter() {
            if o.days().any(|d| out.superseded_days.contains(&d)) {
                if frozen(o.partition().day) {
                    touched.entry(*k).or_insert(*o);
                } else {
                    affected.entry(*k).or_insert(*o);
                }
            }
        }
    }
    out.stats.frozen_executions = touched.len() as u64;
    out.stats.frozen_removed = touched
        .values()
        .filter(|i| req.removed_before.is_some_and(|r| i.partition().day < r))
        .count() as u64;
    if out.stats.frozen_executions > 0 {
        tracing::warn!(
            executions = out.stats.frozen_executions,
            removed_by_silver_retention = out.stats.frozen_removed,
            "New bronze events for executions begun before the retention horizon: their rows stay, \
             the events go to quarantine (after_retention_horizon), except for the executions whose \
             partition silver's retention removed (counted only)"
        );
    }
    out.stats.keys_affected = affected.len() as u64;

    // 3. Partitions to recompute.
    for (k, merged) in &affected {
        if let Some(o) = old.get(k) {
            partitions.insert(o.partition());
        }
        partitions.insert(merged.partition());
    }
    if let Some((from, to)) = req.days {
        let in_range = |p: &PartitionKey| (from..=to).contains(&p.day);
        partitions.extend(old.iter().map(|(_, o)| o.partition()).filter(in_range));
        table.load(lake, table.within(from, to)).await?;
        partitions.extend(table.keys().filter(in_range));
    }
    partitions.retain(live);

    // Most executions affected (late events all over the history, a new
    // event in every partition of a large day): one unfiltered pass over
    // everything is cheaper, and its result is the same by definition. The
    // partition table's rows tell before the index of those partitions is
    // read (an overestimate: a quarantined execution has a row per broken
    // rule); the keys to fold tell after (below).
    let whole_shard = |affected_keys: u64| {
        shard.count == 1 && affected_keys as f64 > req.whole_shard_ratio * known_keys as f64
    };
    let mut fallback = None;
    if shard.count == 1 && req.whole_shard_ratio.is_finite() {
        table.load_for(lake, &partitions).await?;
        let planned_rows: u64 = partitions
            .iter()
            .filter_map(|p| table.get(p))
            .flat_map(|r| [&r.silver, &r.quarantine])
            .flatten()
            .map(|f| f.rows)
            .sum();
        fallback = whole_shard(planned_rows).then_some(planned_rows);
    }

    // 4. and 5. Fold every execution of those partitions, until the set is stable.
    let mut attempted: FxHashSet<KeyHash> = FxHashSet::default();
    let mut folded = Folded::default();
    loop {
        if let Some(to_fold) = fallback {
            tracing::info!(
                to_fold,
                indexed = known_keys,
                "Most executions are affected: recomputing the whole shard"
            );
            drop(affected);
            table.load(lake, table.months()).await?;
            partitions.extend(table.keys().filter(|p| !frozen(p.day)));
            if let Some(h) = horizon {
                keep_frozen(lake, &mut segments, &mut old, h).await?;
            }
            out.segments = segments;
            out.table = table;
            return fold_everything(lake, view, req, out, partitions, old, Some(touched)).await;
        }
        // All executions of a planned partition are in its month's segment.
        let months: BTreeSet<i32> = partitions.iter().map(|p| month_of_day(p.day)).collect();
        let ids = segments.of_months(months);
        segments
            .load(lake, ids, &mut old)
            .await
            .map_err(RecomputeError::Index)?;
        let mut keys: FxHashSet<KeyHash> = FxHashSet::default();
        let mut days: BTreeSet<i32> = BTreeSet::new();
        let mut take = |k: &KeyHash, info: &KeyInfo| {
            if !attempted.contains(k) && keys.insert(*k) {
                days.extend(info.days());
            }
        };
        for (k, m) in &affected {
            let touches = partitions.contains(&m.partition())
                || old.get(k).is_some_and(|o| partitions.contains(&o.partition()))
                // An execution with several clients may belong to any shard: every
                // shard folds it to find out.
                || m.multi_client;
            if touches {
                take(k, m);
            }
        }
        for (k, o) in old.iter() {
            if partitions.contains(&o.partition()) && !affected.contains_key(k) {
                take(k, o);
            }
        }
        if keys.is_empty() {
            break;
        }
        if out.stats.fold_rounds == 0 && whole_shard(keys.len() as u64) {
            // Every known partition is rewritten (or deleted).
            fallback = Some(keys.len() as u64);
            continue;
        }
        let filter = Arc::new(KeyFilter::Keys(keys));
        let (round, stats) = fold_days(lake, view, days, Arc::clone(&filter), req).await?;
        if let Ok(KeyFilter::Keys(keys)) = Arc::try_unwrap(filter) {
            attempted.extend(keys);
        }
        out.stats.add_fold_round(&stats);
        let before = partitions.len();
        partitions.extend(round.values().map(|a| a.partition()).filter(live));
        folded.extend(round);
        if partitions.len() == before {
            break;
        }
        tracing::warn!(
            partitions = partitions.len() - before,
            "Executions moved to partitions outside the plan (bronze lost events?); folding those too"
        );
    }

    if let Some(h) = horizon.filter(|_| !req.full_refresh) {
        out.late_for_frozen = fold_late(lake, view, req, &touched, h, &mut out.stats).await?;
    }
    // The new index, but for the folded executions (see `finish_index`): merged
    // info for every affected key, and for the frozen ones touched.
    let mut index = old;
    for (k, m) in affected.into_iter().chain(touched) {
        index.insert(k, m);
    }
    out.partitions = partitions;
    out.executions = folded;
    out.attempted = attempted;
    out.index = index;
    out.stats.index_segments_read = segments.reads;
    out.segments = segments;
    out.table = table;
    Ok(out)
}

/// Folds every execution from all of bronze (no key scan, no filter) and plans
/// every partition it produces besides `partitions`; the index is rebuilt from
/// scratch by [`finish_index`]. With a retention horizon, `frozen` holds the
/// entries of the executions begun before it ([`keep_frozen`]): they are kept,
/// and their events after the horizon are not folded into executions of their
/// own. An incremental run's fallback passes the frozen executions its new
/// batches `touched`: their folds are quarantined (`late_for_frozen`).
async fn fold_everything(
    lake: &Lake,
    view: &BronzeView,
    req: &Request,
    mut out: Recomputed,
    mut partitions: BTreeSet<PartitionKey>,
    mut frozen: KeyIndex,
    touched: Option<FxHashMap<KeyHash, KeyInfo>>,
) -> Result<Recomputed, RecomputeError> {
    if view.retained_before().is_none() {
        // The index is rebuilt from the fold: what was loaded is not needed.
        frozen = KeyIndex::default();
    }
    let days = view.days();
    let index_keys = frozen.len() as u64;
    let passes = plan_passes(lake, view, &days, req, index_keys, out.stats.indexed_keys).await?;
    out.stats.fold_passes = u64::from(passes);
    if view.retained_before().is_none() {
        out.rebuild = Some(Rebuild::new(
            req.shard,
            req.version,
            passes,
            req.segment_keys,
        ));
    }
    if passes > 1 {
        tracing::info!(
            passes,
            budget_mb = req.memory.mb,
            "The fold does not fit the memory budget in one pass: folding in key-hash passes \
             (each reads bronze again; the earlier passes' rows wait on local disk)"
        );
    }
    let mut late = Folded::default();
    for index in 0..passes {
        let filter = if passes == 1 {
            KeyFilter::All
        } else {
            KeyFilter::Part { index, of: passes }
        };
        let (mut folded, stats) =
            fold_days(lake, view, days.clone(), Arc::new(filter), req).await?;
        out.stats.add_fold_round(&stats);
        if view.retained_before().is_some() {
            // The segments before the horizon's month may hold some of these
            // keys: those are later events of frozen executions.
            let hashes: Vec<KeyHash> = folded.iter().map(|(k, _)| KeyHash::of(k)).collect();
            let months = out
                .segments
                .maybe_holding(lake, hashes.iter())
                .await
                .map_err(RecomputeError::Index)?;
            drop(hashes);
            out.segments
                .load(lake, months, &mut frozen)
                .await
                .map_err(RecomputeError::Index)?;
            let (frozen_folds, kept) = folded.split(|k| frozen.get(&KeyHash::of(k)).is_some());
            folded = kept;
            late.extend(frozen_folds);
        }
        partitions.extend(folded.values().map(|a| a.partition()));
        out.largest_pass = out.largest_pass.max(folded.len() as u64);
        if passes > 1 {
            // The last pass's too: publishing then merges parked pieces only,
            // without the last pass's executions in memory next to the merges.
            let entries = out.spill.park(&mut out.routing, folded)?;
            match &mut out.rebuild {
                Some(r) => r.add(lake, entries).await.map_err(RecomputeError::Index)?,
                None => out.spill.entries.extend(entries),
            }
        } else {
            out.executions = folded;
        }
    }
    out.stats.parked_bytes = out.spill.bytes;
    if view.retained_before().is_some() {
        match touched {
            // Counted already, by the incremental plan.
            Some(touched) => {
                out.late_for_frozen = group_late(req, &touched, late);
                for (k, m) in touched {
                    frozen.insert(k, m);
                }
            }
            None => {
                out.stats.frozen_executions += late.len() as u64;
                // Their entries cover the events read, as an incremental
                // run's merge does: silver's retention keeps an entry while
                // its last event is from the horizon on ([`crate::retain`]).
                for (key, acc) in late.iter() {
                    let k = KeyHash::of(key);
                    if let Some(mut info) = frozen.get(&k).copied() {
                        info.merge(&info_of(acc));
                        frozen.insert(k, info);
                    }
                }
            }
        }
        out.index = frozen;
    } else {
        out.index = KeyIndex::default();
        out.rebuilt = true;
    }
    out.stats.index_segments_read = out.segments.reads;
    out.partitions = partitions;
    out.attempted = FxHashSet::default();
    Ok(out)
}

/// Key-hash passes for folding every execution of `days` within the memory
/// budget ([`Budget::passes`]). The bronze rows bound the executions; when
/// that bound does not fit one pass, the executions are those the shard's key
/// index holds (`known_keys`), or, for a shard without one, estimated from
/// bronze's key columns ([`estimate_keys`]).
async fn plan_passes(
    lake: &Lake,
    view: &BronzeView,
    days: &BTreeSet<i32>,
    req: &Request,
    index_keys: u64,
    known_keys: u64,
) -> Result<u32, RecomputeError> {
    if let Some(p) = req.passes {
        return Ok(p.clamp(1, crate::memory::MAX_PASSES));
    }
    let by_day = view.files_by_day(days);
    let rows_of = |files: &[BronzeFile]| files.iter().map(|f| f.file.rows).sum::<u64>();
    let rows: u64 = by_day.values().map(|f| rows_of(f)).sum();
    let largest_day = by_day.values().map(|f| rows_of(f)).max().unwrap_or(0);
    let windowed_day_events = if largest_day > req.window_rows {
        largest_day
    } else {
        0
    };
    let counts = |executions| Counts {
        // A unit holds a window, or a whole day smaller than one.
        window_rows: req.window_rows.min(largest_day),
        parallel: req.parallel_days,
        executions,
        windowed_day_events,
        index_keys,
        index_streamed: view.retained_before().is_none(),
    };
    if req.memory.passes(counts(rows)) == 1 {
        return Ok(1);
    }
    // The executions the shard's index holds, else an estimate from bronze.
    let keys = if known_keys > 0 {
        known_keys
    } else {
        estimate_keys(lake, by_day, req).await?
    };
    let passes = req.memory.passes(counts(keys));
    tracing::debug!(
        rows,
        estimated_executions = keys,
        passes,
        "Planned the fold's passes"
    );
    Ok(passes)
}

/// Folds the events from the horizon `h` on of the frozen executions `touched`
/// whose partition the shard owns, by that partition.
async fn fold_late(
    lake: &Lake,
    view: &BronzeView,
    req: &Request,
    touched: &FxHashMap<KeyHash, KeyInfo>,
    h: i32,
    stats: &mut WorkStats,
) -> Result<BTreeMap<PartitionKey, Late>, RecomputeError> {
    let mut keys: FxHashSet<KeyHash> = FxHashSet::default();
    let mut days: BTreeSet<i32> = BTreeSet::new();
    for (k, info) in touched {
        if req.writes_late_rows_of(info.partition()) {
            keys.insert(*k);
            days.extend(info.days().filter(|d| *d >= h));
        }
    }
    if keys.is_empty() {
        return Ok(BTreeMap::new());
    }
    let (folded, round) = fold_days(lake, view, days, Arc::new(KeyFilter::Keys(keys)), req).await?;
    stats.add_fold_round(&round);
    Ok(group_late(req, touched, folded))
}

/// The frozen executions `touched` whose late rows `req` writes
/// ([`Request::writes_late_rows_of`]), with their folds from `folded`, by
/// partition.
fn group_late(
    req: &Request,
    touched: &FxHashMap<KeyHash, KeyInfo>,
    folded: Folded,
) -> BTreeMap<PartitionKey, Late> {
    let mut out: BTreeMap<PartitionKey, Late> = BTreeMap::new();
    for (k, info) in touched {
        let p = info.partition();
        if req.writes_late_rows_of(p) {
            out.entry(p).or_default().keys.insert(*k);
        }
    }
    for (key, acc) in folded.into_entries() {
        let p = touched.get(&KeyHash::of(&key)).map(KeyInfo::partition);
        if let Some(late) = p.and_then(|p| out.get_mut(&p)) {
            late.folded.insert_new(key, acc);
        }
    }
    out
}

/// Prepares a recompute of everything after the retention horizon `h`: the
/// segments of the months after `h`'s are replaced unread, `h`'s month is
/// loaded, and `index` keeps only the entries of executions begun before `h`
/// (frozen; the months before `h`'s hold only such entries and stay as they
/// are unless a lookup loads them).
async fn keep_frozen(
    lake: &Lake,
    segments: &mut Segments,
    index: &mut KeyIndex,
    h: i32,
) -> Result<(), RecomputeError> {
    segments.replace_after(month_of_day(h));
    let ids = segments.of_months([month_of_day(h)]);
    segments
        .load(lake, ids, index)
        .await
        .map_err(RecomputeError::Index)?;
    index.retain(|i| i.partition().day < h);
    Ok(())
}

/// Completes the index of a [`Recomputed`]: exact entries for its folded
/// executions, consuming them (their memory is freed as the index grows), and no
/// entry for keys that were folded but whose events are all gone from bronze.
pub fn finish_index(
    mut index: KeyIndex,
    parked: Vec<(KeyHash, KeyInfo)>,
    executions: Folded,
    attempted: &FxHashSet<KeyHash>,
) -> KeyIndex {
    let mut entries = parked;
    entries.extend(entries_of(executions));
    if !attempted.is_empty() {
        entries.sort_unstable_by_key(|(k, _)| *k);
        for k in attempted {
            if entries.binary_search_by_key(k, |(e, _)| *e).is_err() {
                index.remove(k);
            }
        }
    }
    index.finish(entries)
}

/// The index entries of folded executions, consuming them.
pub fn entries_of(executions: Folded) -> Vec<(KeyHash, KeyInfo)> {
    let mut out = Vec::with_capacity(executions.len());
    out.extend(
        executions
            .into_entries()
            .map(|(key, acc)| (KeyHash::of(&key), info_of(&acc))),
    );
    out
}

pub(crate) fn info_of(acc: &crate::fold::Acc) -> KeyInfo {
    KeyInfo {
        first: acc.first,
        client_id: acc.client_id,
        multi_client: acc.multi_client,
        last_day: acc.last_day(),
        gap: acc.gap,
    }
}

/// Reads the key columns of `files` and merges what they say per key.
pub async fn scan_keys(
    lake: &Lake,
    files: &[BronzeFile],
) -> Result<FxHashMap<KeyHash, KeyInfo>, RecomputeError> {
    let per_file: Vec<FxHashMap<KeyHash, KeyInfo>> = futures::stream::iter(files.iter().cloned())
        .map(|f| {
            let lake = lake.clone();
            tokio::spawn(async move {
                let cols = read_file(&lake, &f, Projection::Keys, None).await?;
                let mut by_text: FxHashMap<Box<str>, KeyInfo> = FxHashMap::default();
                let mut buf = String::new();
                for c in &cols {
                    for i in 0..c.len() {
                        if c.event_type(i).is_none() {
                            continue;
                        }
                        let info = KeyInfo::event(
                            c.order(i).map_err(FoldError::Contract)?,
                            c.client_id(i),
                        );
                        let key = c.key(i).as_text(&mut buf);
                        match by_text.get_mut(key) {
                            Some(e) => e.merge(&info),
                            None => {
                                by_text.insert(key.into(), info);
                            }
                        }
                    }
                }
                Ok::<_, RecomputeError>(
                    by_text
                        .into_iter()
                        .map(|(k, v)| (KeyHash::of(&k), v))
                        .collect(),
                )
            })
        })
        .buffer_unordered(SCAN_CONCURRENCY)
        .map(|r| r.map_err(RecomputeError::from).and_then(|x| x))
        .try_collect()
        .await?;
    let mut out: FxHashMap<KeyHash, KeyInfo> = FxHashMap::default();
    for m in per_file {
        for (k, v) in m {
            out.entry(k).and_modify(|e| e.merge(&v)).or_insert(v);
        }
    }
    Ok(out)
}

/// Distinct values a key-count sketch keeps (about 3 % error).
const SKETCH_KEYS: usize = 1024;

/// Estimates the distinct execution keys of the days `by_day` from their key
/// columns in constant memory: the [`SKETCH_KEYS`] smallest key hashes ("k
/// minimum values"; exact below that many keys). Read in the fold's windows,
/// `req.parallel_days` at a time, so it holds no more bronze than the fold.
async fn estimate_keys(
    lake: &Lake,
    by_day: BTreeMap<i32, Vec<BronzeFile>>,
    req: &Request,
) -> Result<u64, RecomputeError> {
    let units = by_day
        .into_values()
        .flat_map(|files| windows(files, req.window_rows))
        .flat_map(|(files, window)| (0..files.len()).map(move |i| (Arc::clone(&files), i, window)));
    let sketches: Vec<Sketch> = futures::stream::iter(units)
        .map(|(files, i, window)| {
            let lake = lake.clone();
            tokio::spawn(async move {
                let cols = read_file(&lake, &files[i], Projection::Keys, window).await?;
                let mut sketch = Sketch::default();
                let mut buf = String::new();
                for c in &cols {
                    for i in 0..c.len() {
                        if c.event_type(i).is_some() {
                            sketch.add(c.key(i).as_text(&mut buf));
                        }
                    }
                }
                Ok::<_, RecomputeError>(sketch)
            })
        })
        .buffer_unordered(req.parallel_days.max(1))
        .map(|r| r.map_err(RecomputeError::from).and_then(|x| x))
        .try_collect()
        .await?;
    let mut all = Sketch::default();
    for s in sketches {
        all.merge(s);
    }
    Ok(all.estimate())
}

/// The smallest [`SKETCH_KEYS`] 64-bit hashes of the keys added.
#[derive(Debug, Default)]
struct Sketch(BTreeSet<u64>);

impl Sketch {
    fn add(&mut self, key: &str) {
        use std::hash::{BuildHasher, BuildHasherDefault};
        // SipHash with fixed keys: uniform over 64 bits (the estimate needs
        // that), and the same in every run.
        let h = BuildHasherDefault::<std::hash::DefaultHasher>::default().hash_one(key);
        self.insert(h);
    }

    fn insert(&mut self, h: u64) {
        if self.0.len() >= SKETCH_KEYS && self.0.last().is_some_and(|max| h >= *max) {
            return;
        }
        if self.0.insert(h) && self.0.len() > SKETCH_KEYS {
            self.0.pop_last();
        }
    }

    fn merge(&mut self, other: Sketch) {
        for h in other.0 {
            self.insert(h);
        }
    }

    fn estimate(&self) -> u64 {
        match self.0.last() {
            Some(max) if self.0.len() >= SKETCH_KEYS => {
                ((SKETCH_KEYS - 1) as f64 * (u64::MAX as f64 / *max as f64)) as u64
            }
            _ => self.0.len() as u64,
        }
    }
}

/// A day's files and the part of the day to read from them (`None`: all of it).
type Unit = (Arc<[BronzeFile]>, Option<TimeRange>);

/// Splits one day's files into units of about `window_rows` bronze rows: a
/// day holding more is read and folded in time windows of equal length (the
/// files are sorted by `occurred_at`, so each window reads about its share).
/// Every event of a window precedes every event of the next, which is what
/// [`combine`] needs: windows are to a day what days are to the history. The
/// first and last window are open-ended, so no row is ever outside all of them.
fn windows(files: Vec<BronzeFile>, window_rows: u64) -> Vec<Unit> {
    let rows: u64 = files.iter().map(|f| f.file.rows).sum();
    let n = rows
        .div_ceil(window_rows.max(1))
        .clamp(1, MAX_WINDOWS_PER_DAY);
    let Some(day) = files.first().map(BronzeFile::day) else {
        return Vec::new();
    };
    let files: Arc<[BronzeFile]> = files.into();
    if n == 1 {
        return vec![(files, None)];
    }
    let start = i64::from(day) * DAY_MICROS;
    let span = DAY_MICROS / n as i64;
    (0..n as i64)
        .map(|k| {
            let from = if k == 0 { i64::MIN } else { start + k * span };
            let to = if k == n as i64 - 1 {
                i64::MAX
            } else {
                start + (k + 1) * span
            };
            (Arc::clone(&files), Some((from, to)))
        })
        .collect()
}

/// Folds the executions passing `filter` from all live bronze files of `days`,
/// several days (or windows of a large day, see [`windows`]) at a time,
/// combining them in order.
async fn fold_days(
    lake: &Lake,
    view: &BronzeView,
    days: BTreeSet<i32>,
    filter: Arc<KeyFilter>,
    req: &Request,
) -> Result<(Folded, WorkStats), RecomputeError> {
    let by_day = view.files_by_day(&days);
    let mut stats = WorkStats {
        days_read: by_day.len() as u64,
        files_read: by_day.values().map(|f| f.len() as u64).sum(),
        ..Default::default()
    };
    let units: Vec<_> = by_day
        .into_values()
        .flat_map(|files| windows(files, req.window_rows))
        .collect();
    stats.fold_windows = units.len() as u64;
    let mut results = futures::stream::iter(units)
        .map(|(files, window)| {
            let lake = lake.clone();
            let filter = Arc::clone(&filter);
            let day_of_unit = files.first().map(BronzeFile::day);
            let unit = tokio::spawn(async move {
                let reads = files
                    .iter()
                    .map(|f| read_file(&lake, f, Projection::Full, window));
                let columns: Vec<_> = futures::future::try_join_all(reads)
                    .await?
                    .into_iter()
                    .flatten()
                    .collect();
                Ok::<_, RecomputeError>(fold_day(&columns, &filter)?)
            });
            async move { (day_of_unit, window.is_some(), unit.await) }
        })
        .buffered(req.parallel_days.max(1));
    let mut total = Folded::default();
    // The ids folded so far in the current windowed day: an id in two of its
    // windows is one event in two versions (different occurred_at).
    let mut seen: (Option<i32>, FxHashSet<EventId>) = (None, FxHashSet::default());
    while let Some((unit_day, windowed, day)) = results.next().await {
        let day = day??;
        if windowed {
            if seen.0 != unit_day {
                seen = (unit_day, FxHashSet::default());
            }
            if let Some(id) = day.ids.iter().find(|id| !seen.1.insert(**id)) {
                return Err(two_versions(id).into());
            }
            stats.windowed_day_events = stats.windowed_day_events.max(seen.1.len() as u64);
        }
        stats.events_folded += day.events;
        req.progress.add(day.events);
        stats.duplicate_events += day.duplicates;
        combine(&mut total, day.folded);
    }
    Ok((total, stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_sketch_counts_small_sets_exactly_and_estimates_large_ones() {
        let mut small = Sketch::default();
        for i in 0..500 {
            small.add(&format!("operation:{i}"));
            small.add(&format!("operation:{i}"));
        }
        assert_eq!(small.estimate(), 500);
        // 200 000 keys seen three times each, over two merged sketches.
        let (mut a, mut b) = (Sketch::default(), Sketch::default());
        for i in 0..600_000u64 {
            let key = format!("{:x}", i % 200_000);
            if i % 2 == 0 { a.add(&key) } else { b.add(&key) }
        }
        a.merge(b);
        let e = a.estimate() as f64;
        assert!((e / 200_000.0 - 1.0).abs() < 0.1, "{e}");
    }
}
