//! silver-transform: bronze.events → silver.stop_executions (SPEC §6, §7, §8).
//!
//! One run of one shard:
//!
//! 1. read the shard's latest committed silver manifest ([`manifest`]) and the
//!    bronze manifests ([`bronze`]); another run holding the shard → exit 4;
//! 2. pin the next silver version (pending, with a lease);
//! 3. plan and fold ([`incremental`]): the partitions affected by the bronze
//!    batches committed since the last run, each recomputed whole from the live
//!    bronze files ([`fold`], with the [`index`] of execution keys to find them);
//! 4. check every execution ([`quality`]), route violators to quarantine,
//!    summarise the rest ([`summary`]);
//! 5. publish each partition atomically ([`mod@publish`]), write the key index,
//!    commit the version;
//! 6. write the run report ([`report`]); exit 3 if the violation ratio is above
//!    the threshold.
//!
//! A crash anywhere leaves the previous committed version as the state; the next
//! run recomputes what the crashed one had planned, so nothing is lost or doubled.

pub mod bronze;
pub mod cli;
pub mod fold;
pub mod incremental;
pub mod index;
pub mod key;
pub mod manifest;
pub mod memory;
pub mod partitions;
pub mod publish;
pub mod quality;
pub mod report;
pub mod retain;
pub mod route;
pub mod segments;
pub mod spill;
pub mod summary;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{NaiveDate, Utc};
use futures::{StreamExt, TryStreamExt};
use lake_common::metrics::{Pushgateway, RunMetrics};
use lake_common::parquet_io::FileWriter;
use lake_common::report::Run;
use lake_common::telemetry::{Progress, exit_status_of};
use lake_common::{Classified, Dataset, ExitStatus, Lake, LakeConfig, Partition};
use object_store::path::Path;

use crate::bronze::BronzeView;
use crate::incremental::{Prior, Request, recompute};
use crate::index::KeyIndex;
use crate::key::{PartitionKey, Shard, date_of_day, day_of_date};
use crate::manifest::{Lease, PartitionRecord, SilverManifest, from_ranges, to_ranges};
use crate::partitions::PartitionTable;
use crate::publish::{FileRecord, PartitionRows, Published, publish};
use crate::report::{Outcome, RunReport, ShardReport};
use crate::route::Routing;

/// The job name: binary, run-report folder, manifest owner prefix.
pub const JOB: &str = "silver-transform";

/// Partitions published concurrently.
const PUBLISH_CONCURRENCY: usize = 8;
/// Partitions published concurrently when parked pieces are merged: a run in
/// key-hash passes is short of memory, and each file being written holds its
/// open row group (up to 128 Ki rows, ~75 MiB for a large partition).
const MERGE_CONCURRENCY: usize = 1;

/// What a run recomputes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The partitions affected by bronze batches committed since the last run.
    Incremental,
    /// As incremental, plus every partition of these UTC days (inclusive).
    Days {
        /// First day.
        from: NaiveDate,
        /// Last day.
        to: NaiveDate,
    },
    /// Everything, from all of bronze, ignoring silver's state.
    FullRefresh,
}

impl Mode {
    /// The name used in manifests and reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Incremental => "incremental",
            Self::Days { .. } => "dates",
            Self::FullRefresh => "full_refresh",
        }
    }
}

/// Options of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// What to recompute.
    pub mode: Mode,
    /// Compute and report, write nothing.
    pub dry_run: bool,
    /// Share of violating executions above which the run exits 3.
    pub max_violation_ratio: f64,
    /// The shard this run owns.
    pub shard: Shard,
    /// Lease of the pending version.
    pub lease: Duration,
    /// Days folded concurrently.
    pub parallel_days: usize,
    /// Test only: pause after each published partition.
    pub pause_after_publish: Option<Duration>,
    /// An unsharded incremental run that must fold more than this share of the
    /// indexed executions recomputes the whole shard instead (0.5; tests raise it
    /// to keep the incremental path under test).
    pub whole_shard_ratio: f64,
    /// Set when this run holds the shard's advisory lock (stores without
    /// conditional writes): the lock's loss fences the run.
    pub lock_fence: Option<lake_common::commit::fence::Fence>,
    /// Where the run pushes its metrics (`PUSHGATEWAY_URL`), if anywhere.
    pub pushgateway: Option<Pushgateway>,
    /// Bronze rows folded at a time (from the budget on the command line,
    /// [`incremental::FOLD_WINDOW_ROWS`] by default here).
    pub window_rows: u64,
    /// The memory the run may use ([`memory`]): the report and a warning
    /// compare what it held with it.
    pub memory: memory::Budget,
    /// Key-hash passes of a fold of everything (`None`: the fewest the budget
    /// needs, [`memory::Budget::passes`]).
    pub fold_passes: Option<u32>,
    /// Entries a key index segment holds at most before a write splits it
    /// ([`segments::SEGMENT_KEYS`]; tests use a few so that months split).
    pub index_segment_keys: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            mode: Mode::Incremental,
            dry_run: false,
            max_violation_ratio: 0.01,
            shard: Shard::ALL,
            lease: Duration::from_secs(30),
            parallel_days: 2,
            pause_after_publish: None,
            whole_shard_ratio: 0.5,
            lock_fence: None,
            pushgateway: None,
            window_rows: incremental::FOLD_WINDOW_ROWS,
            memory: memory::Budget::default(),
            fold_passes: None,
            index_segment_keys: segments::SEGMENT_KEYS,
        }
    }
}

/// Opens the lake, runs, and maps the outcome to the exit status of SPEC §8.
///
/// On a store without conditional writes the shard's runs serialise on a
/// PostgreSQL advisory lock (its own key per shard, so silver never waits for
/// bronze), held for the whole run; the database settings are then required.
pub async fn run_cli(config: LakeConfig, mut options: Options) -> anyhow::Result<ExitStatus> {
    config.warn_if_timeout_exceeds(options.lease, "--lease-secs");
    let lake = if options.dry_run {
        Lake::open_for_dry_run(&config)
    } else {
        Lake::open(&config)
    }
    .context("opening the lake")?;
    let _lock = if !lake.capabilities().create_if_absent && !options.dry_run {
        let pg = lake_common::PostgresConfig::from_env().context(
            "S3_CONDITIONAL_WRITES=disabled: silver-transform holds a PostgreSQL advisory lock \
             instead, and needs the DJANGO_DB_* settings for it",
        )?;
        Some(lock_shard(&pg, &mut options).await?)
    } else {
        None
    };
    let report = run(&lake, &options).await?;
    exit_status(&report)
}

/// Takes the shard's PostgreSQL advisory lock (stores without conditional
/// writes) and arms `options.lock_fence` with its loss; held until dropped.
/// Another session holding it is exit 4, this run having written nothing.
pub async fn lock_shard(
    pg: &lake_common::PostgresConfig,
    options: &mut Options,
) -> anyhow::Result<lake_common::commit::lock::AdvisoryLock> {
    let pool = lake_common::postgres::pool(pg, JOB)?;
    let conn = pool
        .get()
        .await
        .map_err(|e| anyhow::anyhow!(lake_common::postgres::explain_connect_error(pg, &e)))?;
    let fence = lake_common::commit::fence::Fence::new();
    let name = format!("{JOB}/{}", options.shard);
    match lake_common::commit::lock::AdvisoryLock::try_acquire(conn, &name, fence.clone())
        .await
        .map_err(|e| lake_common::postgres::missing_function_grant(e, &pg.user))?
    {
        Some(lock) => {
            options.lock_fence = Some(fence);
            Ok(lock)
        }
        None => Err(anyhow::Error::new(Classified::new(
            ExitStatus::Busy,
            format!(
                "another silver-transform run holds the advisory lock {name}; this run wrote nothing"
            ),
        ))),
    }
}

/// The exit status of a finished run: a quality breach is an error (exit 3).
pub fn exit_status(report: &RunReport) -> anyhow::Result<ExitStatus> {
    if report.quality.breached {
        return Err(anyhow::Error::new(Classified::new(
            ExitStatus::Quality,
            format!(
                "{} of {} executions ({:.3} %) broke a quality rule, above the threshold of {:.3} %; they are in {}",
                report.quality.violating_executions,
                report.quality.executions,
                report.quality.violation_ratio * 100.0,
                report.quality.max_violation_ratio * 100.0,
                Dataset::QuarantineStopExecutions,
            ),
        )));
    }
    Ok(ExitStatus::Success)
}

/// Runs once and returns the report (already written to `_runs/` unless dry-run).
/// Errors carry their exit status ([`lake_common::telemetry::exit_status_of`]).
pub async fn run(lake: &Lake, options: &Options) -> anyhow::Result<RunReport> {
    let run = Run::start(JOB);
    let mut report = RunReport {
        header: run.header(
            lake,
            lake.url_of(&Dataset::BronzeEvents.root()),
            options.dry_run,
        ),
        mode: options.mode.name().to_owned(),
        days: match options.mode {
            Mode::Days { from, to } => Some((from, to)),
            _ => None,
        },
        shard: ShardReport {
            index: options.shard.index,
            count: options.shard.count,
        },
        outcome: Outcome::Running,
        base_version: None,
        committed_version: None,
        bronze_committed_batches: 0,
        new_batches: vec![],
        superseded_days: vec![],
        retained_before: None,
        recovered_partitions: 0,
        work: Default::default(),
        memory: memory::Held::of_budget(options.memory),
        partitions: Default::default(),
        rows: Default::default(),
        quality: quality::QualityReport::new(options.max_violation_ratio),
        summary: Default::default(),
        timings_ms: BTreeMap::new(),
    };
    tracing::info!(
        run_id = %run.id,
        lake = %lake.description(),
        mode = options.mode.name(),
        days = report.days.map(|(from, to)| format!("{from}..={to}")),
        shard = %options.shard,
        dry_run = options.dry_run,
        "Starting silver-transform"
    );
    let started = Instant::now();
    let result = execute(lake, options, &run, &mut report).await;
    report.header.finished_at = Utc::now();
    report
        .timings_ms
        .insert("total", started.elapsed().as_millis() as u64);
    let elapsed = started.elapsed().as_secs_f64();
    match result {
        Ok(()) => {
            log_outcome(&report);
            if !options.dry_run {
                let path = run.write_report(lake, &report).await?;
                tracing::info!(report = %lake.url_of(&path), "Run report written");
                let status = exit_status_of_report(&report);
                let _ = metrics(&report, elapsed, status)
                    .push(options.pushgateway.as_ref())
                    .await;
            }
            Ok(report)
        }
        Err(err) => {
            let status = exit_status_of(err.as_ref());
            if status != ExitStatus::Busy && !options.dry_run {
                report.outcome = Outcome::Failed;
                report.header.error = Some(lake_common::telemetry::error_text(&err));
                if let Err(e) = run.write_report(lake, &report).await {
                    tracing::warn!(error = %e, "Could not write the run report of the failed run");
                }
            }
            if !options.dry_run {
                let _ = metrics(&report, elapsed, status)
                    .push(options.pushgateway.as_ref())
                    .await;
            }
            Err(err)
        }
    }
}

fn exit_status_of_report(report: &RunReport) -> ExitStatus {
    if report.quality.breached {
        ExitStatus::Quality
    } else {
        ExitStatus::Success
    }
}

/// The run's metrics (docs/deploy.md, Monitoring), one group per shard.
fn metrics(r: &RunReport, seconds: f64, exit: ExitStatus) -> RunMetrics {
    let mut m = RunMetrics::new(JOB, &[("shard", r.shard.index.to_string())]);
    m.set_run(r.header.finished_at, seconds, exit as u8);
    if exit != ExitStatus::Success && exit != ExitStatus::Quality {
        return m;
    }
    if let Some(v) = r.committed_version {
        m.set(
            "silver_committed_version",
            "The shard's latest committed version.",
            &[],
            v as f64,
        );
    }
    let gauges: [(&'static str, &str, u64); 6] = [
        (
            "silver_executions_written",
            "Executions the latest run wrote to silver.",
            r.rows.silver,
        ),
        (
            "silver_quarantine_rows",
            "Quarantine rows the latest run wrote (one per broken rule).",
            r.rows.quarantine_rows,
        ),
        (
            "silver_partitions_recomputed",
            "Partitions the latest run recomputed.",
            r.partitions.recomputed,
        ),
        (
            "silver_partitions",
            "The shard's partitions after the latest run.",
            r.partitions.total,
        ),
        (
            "silver_index_keys",
            "Executions in the shard's key index.",
            r.rows.index_keys,
        ),
        (
            "silver_events_folded",
            "Bronze events the latest run folded.",
            r.work.events_folded,
        ),
    ];
    for (name, help, value) in gauges {
        m.set(name, help, &[], value as f64);
    }
    m.set(
        "silver_violation_ratio",
        "Share of the latest run's executions that broke a quality rule.",
        &[],
        r.quality.violation_ratio,
    );
    m
}

async fn execute(
    lake: &Lake,
    options: &Options,
    run: &Run,
    report: &mut RunReport,
) -> anyhow::Result<()> {
    let shard = options.shard;
    let t = Instant::now();
    let mut found = manifest::find(lake, shard)
        .await
        .context("reading silver's manifests")?;
    if found.max_version == 0 && options.mode != Mode::FullRefresh {
        refuse_another_shard_count(lake, shard).await?;
    }
    // A lease that ends within LEASE_WAIT (a crashed attempt, a lost release):
    // wait for it once rather than exit 4.
    if let Some(left) = found
        .busy
        .as_ref()
        .map(|b| b.claim.remaining(chrono::Utc::now()))
        .filter(|left| *left <= lake_common::commit::LEASE_WAIT)
    {
        tracing::info!(%shard, wait_secs = left.as_secs_f64(), "Waiting for the lease of a pending version to end");
        tokio::time::sleep(left + Duration::from_millis(100)).await;
        found = manifest::find(lake, shard)
            .await
            .context("reading silver's manifests")?;
    }
    if let Some(b) = &found.busy {
        return Err(anyhow::Error::new(Classified::new(
            ExitStatus::Busy,
            format!(
                "run {} holds version {} of {shard} until {}; this run wrote nothing",
                b.claim.owner,
                b.version,
                b.claim
                    .lease_expires_at
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_default()
            ),
        )));
    }
    let committed = found.committed.as_ref();
    if let Some(m) = committed
        && !options.dry_run
    {
        delete_superseded(lake, m).await?;
    }
    let full = options.mode == Mode::FullRefresh;
    report.base_version = committed.map(|m| m.version);

    // Only the months of the partition table this run needs are read: none
    // when there is nothing new, the planned ones otherwise, all of them for a
    // full refresh.
    let mut table = match committed {
        Some(m) => PartitionTable::of(m)?,
        None => PartitionTable::default(),
    };
    let mut prior = Prior::default();
    if !full && let Some(m) = committed {
        prior.consumed = from_ranges(&m.consumed_batches);
    }
    let view = BronzeView::load(lake, (!full).then_some(&prior.consumed)).await?;
    report.bronze_committed_batches = view.committed().len() as u64;
    report.retained_before = view.retained_before().map(date_of_day);
    if committed.is_none() && view.retained_before().is_some() {
        // A shard without state (a new shard layout) would rebuild its
        // clients from bronze's days after the horizon only: it would fold
        // the frozen executions from a partial history and delete their
        // published files as another layout's.
        return Err(anyhow::Error::new(Classified::new(
            ExitStatus::Usage,
            format!(
                "shard {shard} has no silver state, and bronze's retention removed the days before {}: \
                 it cannot be rebuilt from bronze (a new SILVER_SHARD_COUNT after a retention is not \
                 supported; keep the count the lake has, docs/silver.md, \"Sharding\"); this run wrote nothing",
                report
                    .retained_before
                    .map(|d| d.to_string())
                    .unwrap_or_default()
            ),
        )));
    }
    let mut forced: BTreeSet<PartitionKey> = found
        .abandoned
        .iter()
        .flat_map(|m| m.planned.iter().map(|p| PartitionKey::from(*p)))
        .collect();
    report.recovered_partitions = forced.len() as u64;
    if !found.abandoned.is_empty() {
        tracing::warn!(
            versions = %found.abandoned.iter().map(|m| m.version.to_string()).collect::<Vec<_>>().join(", "),
            partitions = forced.len(),
            "Found versions of crashed runs; recomputing the partitions they planned"
        );
    }
    // Objects a crashed run may have left in the partitions it planned (or, for
    // a full refresh, anywhere in the shard): those no manifest lists are deleted
    // before publishing.
    let mut found_objects = if full {
        list_objects(lake, shard, None).await?
    } else {
        list_objects(lake, shard, Some(&forced)).await?
    };
    if full {
        table
            .load(lake, table.months())
            .await
            .context("reading silver's partition table")?;
        forced.extend(table.keys());
        forced.extend(found_objects.keys().copied());
    } else {
        table
            .load_for(lake, &forced)
            .await
            .context("reading silver's partition table")?;
    }
    let referenced: BTreeSet<&str> = table
        .records()
        .flat_map(|r| [&r.silver, &r.quarantine])
        .flatten()
        .map(|f| f.path.as_str())
        .collect();
    let orphans: Vec<Path> = std::mem::take(&mut found_objects)
        .into_values()
        .flatten()
        .filter(|p| !referenced.contains(p.as_ref()))
        .collect();
    drop(referenced);
    report
        .timings_ms
        .insert("load_state", t.elapsed().as_millis() as u64);

    let new_batches = view.new_batches(&prior.consumed);
    if options.mode == Mode::Incremental && new_batches.is_empty() && forced.is_empty() {
        report.outcome = Outcome::NothingNew;
        report.partitions.total = table.total();
        report.rows.index_keys = committed.map_or(0, |m| m.index_keys);
        tracing::info!(%shard, base_version = report.base_version, "No new bronze batch: nothing to do");
        return Ok(());
    }
    // The key index only when there is work: a run with nothing new reads none,
    // and a run with work only the segments it touches (`recompute` loads them).
    prior.segments = segments::Segments::default().with_max_keys(options.index_segment_keys);
    if let Some(m) = committed {
        prior.segments =
            segments::Segments::from_records(&m.index_segments, m.bloom_pack.as_ref())?
                .with_max_keys(options.index_segment_keys);
        if full && view.retained_before().is_none() {
            // A full refresh reads none: the segments it writes replace them all
            // (after a retention, those of the executions begun before its
            // horizon stay: `recompute` keeps them).
            prior.segments.replace_all();
        }
    }
    if !full && let Some(ix) = committed.and_then(|m| m.index.as_ref()) {
        // Format 1: one file, read whole once; this run writes it as segments.
        prior.index = manifest::read_index(lake, ix).await?;
    }
    if !full {
        // Built by a release that took an empty token for a key of its own: its
        // executions of '' would never be recomputed under today's rule (an
        // empty token means none), so the shard is rebuilt once, on purpose.
        let empty = key::KeyHash::of("");
        let months = prior
            .segments
            .maybe_holding(lake, std::iter::once(&empty))
            .await?;
        prior.segments.load(lake, months, &mut prior.index).await?;
        if prior.index.get(&empty).is_some() {
            return Err(anyhow::Error::new(Classified::new(
                ExitStatus::Usage,
                format!(
                    "shard {shard}'s silver was built when an empty execution_token was a key of its own; \
                     empty tokens now count as none (SPEC §6, docs/silver.md): run silver-transform \
                     --full-refresh once for every shard (nothing was written)"
                ),
            )));
        }
    }

    prior.table = table;

    let lease = if options.dry_run {
        None
    } else {
        let mut m = SilverManifest::pending(
            shard,
            found.max_version + 1,
            &run.id,
            options.lease,
            options.mode.name(),
        );
        m.base_version = report.base_version;
        Some(Lease::pin_with(lake, m, options.lease, options.lock_fence.clone()).await?)
    };

    let t = Instant::now();
    let req = Request {
        shard,
        full_refresh: full,
        days: match options.mode {
            Mode::Days { from, to } => Some((day_of_date(from), day_of_date(to))),
            _ => None,
        },
        forced,
        parallel_days: options.parallel_days,
        whole_shard_ratio: options.whole_shard_ratio,
        window_rows: options.window_rows,
        memory: options.memory,
        passes: options.fold_passes,
        progress: Progress::new(&format!("{shard} folding"), "events"),
        removed_before: committed.and_then(|m| m.retained_before).map(day_of_date),
        version: lease.as_ref().map(|l| l.version()),
        segment_keys: options.index_segment_keys,
    };
    let planned = async {
        let mut rec = recompute(lake, &view, prior, &req).await?;
        // The months of the partitions it publishes: their records are replaced.
        let mut table = std::mem::take(&mut rec.table);
        table
            .load_for(
                lake,
                rec.partitions.iter().chain(rec.late_for_frozen.keys()),
            )
            .await?;
        rec.stats.partition_months_read = table.reads;
        Ok::<_, incremental::RecomputeError>((rec, table))
    };
    let (mut rec, mut table) = match planned.await {
        Ok(r) => r,
        Err(e) => {
            if let Some(lease) = lease {
                // Nothing was published: give the version back at once.
                lease.release().await;
            }
            return Err(e.into());
        }
    };
    report
        .timings_ms
        .insert("recompute", t.elapsed().as_millis() as u64);
    tracing::info!(
        partitions = rec.partitions.len(),
        // Those of the earlier passes are parked by now; their entries count them.
        executions = rec.executions.len() as u64
            + rec.spill.entries.len() as u64
            + rec.rebuild.as_ref().map_or(0, |r| r.keys),
        passes = rec.stats.fold_passes.max(1),
        new_batches = rec.new_batches.len(),
        days_read = rec.stats.days_read,
        events_folded = rec.stats.events_folded,
        elapsed_ms = t.elapsed().as_millis() as u64,
        "Recomputed executions"
    );
    report.new_batches = to_ranges(&rec.new_batches);
    report.superseded_days = rec
        .superseded_days
        .iter()
        .map(|d| date_of_day(*d))
        .collect();
    report.work = rec.stats.clone();
    let executions = rec.executions.len() as u64;
    report.memory = memory::Held::new(
        options.memory,
        memory::Counts {
            window_rows: options.window_rows,
            parallel: options.parallel_days,
            executions: executions.max(rec.largest_pass),
            windowed_day_events: rec.stats.windowed_day_events,
            index_keys: (rec.index.len() as u64).saturating_sub(executions)
                + rec.spill.entries.len() as u64
                + rec.rebuild.as_ref().map_or(0, |r| r.open_keys()),
            index_streamed: rec.rebuild.is_some(),
        },
        rec.stats.fold_passes.max(1) as u32,
    );
    if report.memory.over_budget() {
        tracing::warn!(
            executions = report.memory.executions,
            index_keys = report.memory.index_keys,
            model_peak_mb = report.memory.model_peak_mb,
            budget_mb = report.memory.budget_mb,
            "This run held more than its memory budget (SILVER_MEMORY_MB): the executions of the \
             partitions it recomputes are held until published. Split the clients over more shards \
             (SILVER_SHARD_COUNT) before a larger run meets the pod's memory limit"
        );
    }

    let t = Instant::now();
    let routing = std::mem::take(&mut rec.routing);
    let Routed {
        rows,
        late,
        mut batches,
    } = route(&rec, routing, report);
    report
        .timings_ms
        .insert("quality", t.elapsed().as_millis() as u64);

    let Some(lease) = lease else {
        drop((rows, late));
        report.rows.index_keys = match rec.rebuild.take() {
            Some(mut r) => {
                r.add(lake, incremental::entries_of(rec.executions)).await?;
                r.keys
            }
            None => {
                let index = incremental::finish_index(
                    rec.index,
                    rec.spill.entries,
                    rec.executions,
                    &rec.attempted,
                );
                rec.segments.keys_with(&index, rec.rebuilt)
            }
        };
        report.outcome = outcome_of(report);
        report.partitions.total = table.total();
        return Ok(());
    };

    // Publish.
    let t = Instant::now();
    let version = lease.version();
    // Any failure but fencing from here to the commit releases the version, so
    // the next attempt goes on at once (recomputing what this one planned).
    macro_rules! or_release {
        ($e:expr) => {
            match $e {
                Ok(v) => v,
                Err(e) => return Err(lease.fail(anyhow::Error::from(e)).await),
            }
        };
    }
    // The frozen partitions whose quarantine gets later events, too.
    let rewritten: Vec<manifest::PartitionRef> = rows
        .keys()
        .chain(late.keys())
        .map(|p| (*p).into())
        .collect();
    or_release!(lease.update(|m| m.planned = rewritten.clone()).await);
    if !orphans.is_empty() {
        let n = orphans.len();
        or_release!(
            lake.fenced(lease.fence())
                .delete_all(orphans)
                .await
                .context("deleting objects no silver manifest lists")
        );
        report.partitions.orphans_deleted = n as u64;
        tracing::info!(
            objects = n,
            "Deleted objects of crashed runs that no manifest lists"
        );
    }
    let progress = &req.progress;
    progress.stage(&format!("{shard} publishing"), "partitions");
    let published = or_release!(
        publish_all(
            lake,
            &lease,
            &rows,
            &rec.spill,
            &run.id,
            options.pause_after_publish,
            progress
        )
        .await
    );
    let mut late_published = Vec::with_capacity(late.len());
    for (p, l) in &late {
        let old = table.get(p).and_then(|r| r.quarantine.as_ref());
        let fenced = lake.fenced(lease.fence());
        let file = or_release!(
            publish::rewrite_late(&fenced, *p, old, l.replaced, &l.rows, version, &run.id).await
        );
        late_published.push((*p, file));
    }
    progress.finish();
    report
        .timings_ms
        .insert("publish", t.elapsed().as_millis() as u64);
    tracing::info!(
        partitions = published.len(),
        version,
        elapsed_ms = t.elapsed().as_millis() as u64,
        "Published partitions"
    );

    // Commit. The executions are no longer needed: they become index entries.
    let t = Instant::now();
    let superseded: Vec<String> = rows
        .keys()
        .filter_map(|p| table.get(p))
        .flat_map(|r| [&r.silver, &r.quarantine])
        .chain(
            late.keys()
                .filter_map(|p| table.get(p))
                .map(|r| &r.quarantine),
        )
        .flatten()
        .map(|f| f.path.clone())
        .collect();
    drop((rows, late));
    let (index, built) = match rec.rebuild.take() {
        // A rebuild wrote the earlier passes' segments already.
        Some(mut r) => {
            or_release!(r.add(lake, incremental::entries_of(rec.executions)).await);
            (KeyIndex::default(), or_release!(r.finish(lake).await))
        }
        None => (
            incremental::finish_index(
                rec.index,
                std::mem::take(&mut rec.spill.entries),
                rec.executions,
                &rec.attempted,
            ),
            Vec::new(),
        ),
    };
    let written = or_release!(
        rec.segments
            .write(lake, shard, version, index, rec.rebuilt, built)
            .await
    );
    report.rows.index_keys = written.segments.iter().map(|s| s.keys).sum();
    for (p, out) in published {
        report.partitions.silver_files_written += u64::from(out.silver.is_some());
        report.partitions.quarantine_files_written += u64::from(out.quarantine.is_some());
        if out.silver.is_none() && out.quarantine.is_none() {
            report.partitions.deleted += 1;
            table.remove(&p);
            continue;
        }
        table.insert(PartitionRecord {
            client_id: p.client_id,
            date: p.date(),
            version,
            silver: out.silver,
            quarantine: out.quarantine,
            batches: to_ranges(&batches.remove(&p).unwrap_or_default()),
        });
    }
    for (p, quarantine) in late_published {
        report.partitions.quarantine_files_written += u64::from(quarantine.is_some());
        // A frozen partition keeps its silver file; its record exists (a
        // frozen execution is indexed, so it was published).
        let Some(old) = table.get(&p).cloned() else {
            continue;
        };
        if old.silver.is_none() && quarantine.is_none() {
            report.partitions.deleted += 1;
            table.remove(&p);
            continue;
        }
        let mut lineage = from_ranges(&old.batches);
        lineage.extend(batches.remove(&p).unwrap_or_default());
        table.insert(PartitionRecord {
            version,
            quarantine,
            batches: to_ranges(&lineage),
            ..old
        });
    }
    report.partitions.total = table.total();
    let (partition_months, table_months) = or_release!(table.write(lake, shard, version).await);
    let mut m =
        SilverManifest::pending(shard, version, &run.id, options.lease, options.mode.name());
    m.base_version = report.base_version;
    m.consumed_batches = to_ranges(&rec.consumed);
    m.new_batches = to_ranges(&rec.new_batches);
    m.rewritten = rewritten;
    m.index_segments = written.segments;
    m.bloom_pack = written.pack;
    m.index_keys = report.rows.index_keys;
    m.partition_months = partition_months;
    m.superseded = superseded;
    m.retained_before = committed.and_then(|c| c.retained_before);
    let committed = lease.commit(m).await?;
    report.committed_version = Some(version);
    delete_superseded(lake, &committed).await?;
    let months = &written.months | &table_months;
    match segments::delete_replaced(lake, shard, &months, &committed).await {
        Ok(0) => {}
        Ok(n) => tracing::debug!(
            objects = n,
            "Deleted replaced key index segments and partition months"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "Could not delete replaced key index segments and partition months; the next run that writes their months does")
        }
    }
    match manifest::prune(lake, shard, version).await {
        Ok(0) => {}
        Ok(n) => tracing::debug!(objects = n, "Pruned old silver manifest versions"),
        Err(e) => tracing::warn!(error = %e, "Could not prune old silver manifest versions"),
    }
    report
        .timings_ms
        .insert("commit", t.elapsed().as_millis() as u64);
    report.outcome = outcome_of(report);
    Ok(())
}

/// A shard's first incremental run refuses to start when the lake's silver was
/// built with another shard count: its partitions would be published next to
/// the old shards', and a glob reader would count them twice. Re-sharding is a
/// `--full-refresh` of every new shard, which deletes the old layout's objects
/// of its clients (docs/silver.md, "Sharding").
async fn refuse_another_shard_count(lake: &Lake, shard: Shard) -> anyhow::Result<()> {
    let counts = manifest::shard_counts(lake)
        .await
        .context("listing silver's shard logs")?;
    let others: Vec<String> = counts
        .iter()
        .filter(|n| **n != shard.count)
        .map(ToString::to_string)
        .collect();
    if others.is_empty() {
        return Ok(());
    }
    Err(Classified::new(
        ExitStatus::Usage,
        format!(
            "{} was built with {} shard(s), this run has SILVER_SHARD_COUNT={}: keep the count the lake was \
             built with, or re-shard by running every new shard once with --full-refresh (docs/silver.md, \
             \"Sharding\"); this run wrote nothing",
            Dataset::SilverStopExecutions,
            others.join(" and "),
            shard.count
        ),
    )
    .into())
}

/// The recomputed partitions' executions, checked and routed to silver or quarantine.
struct Routed<'a> {
    rows: BTreeMap<PartitionKey, PartitionRows<'a>>,
    /// Later events of frozen executions, by frozen partition (its quarantine
    /// gets them, `after_retention_horizon`).
    late: BTreeMap<PartitionKey, LateRows<'a>>,
    /// Bronze batches each partition's rows came from (lineage for the manifest).
    batches: BTreeMap<PartitionKey, BTreeSet<u64>>,
}

/// A frozen partition's `after_retention_horizon` rows to write.
struct LateRows<'a> {
    /// The executions whose earlier such rows are replaced.
    replaced: &'a rustc_hash::FxHashSet<key::KeyHash>,
    /// Their new rows (those with events from the horizon on).
    rows: Vec<publish::Row<'a>>,
}

/// Checks every execution of the recomputed partitions (SPEC §7), routes it to
/// silver or quarantine, and fills the report's quality, summary and row
/// counts; `routing` holds what the fold's earlier passes routed already.
fn route<'a>(
    rec: &'a incremental::Recomputed,
    mut routing: Routing,
    report: &mut RunReport,
) -> Routed<'a> {
    let mut rows = routing.route(&rec.executions, |p| rec.partitions.contains(p));
    // A partition left without executions is published empty (deleted).
    for p in &rec.partitions {
        rows.entry(*p).or_default();
    }
    let mut quality = routing.quality;
    quality.max_violation_ratio = report.quality.max_violation_ratio;
    let mut batches = routing.batches;
    let mut late: BTreeMap<PartitionKey, LateRows<'a>> = BTreeMap::new();
    for (p, l) in &rec.late_for_frozen {
        let rows = late.entry(*p).or_insert_with(|| LateRows {
            replaced: &l.keys,
            rows: Vec::new(),
        });
        for (key, acc) in l.folded.iter() {
            batches.entry(*p).or_default().extend(acc.batches.iter());
            // Counted per rule, not in the ratio: a late event is no defect of
            // this run's data, and must not fail it (exit 3).
            *quality
                .violations_per_rule
                .entry(quality::Rule::AfterRetentionHorizon.name())
                .or_default() += 1;
            rows.rows.push((key, acc));
        }
    }
    quality.finish();
    report.quality = quality;
    report.summary = routing.summary.finish();
    report.rows.silver = routing.silver_rows;
    report.rows.quarantine_rows =
        routing.quarantine_rows + late.values().map(|r| r.rows.len() as u64).sum::<u64>();
    report.partitions.recomputed = rows.len() as u64;
    Routed {
        rows,
        late,
        batches,
    }
}

/// Publishes every partition, [`PUBLISH_CONCURRENCY`] at a time
/// ([`MERGE_CONCURRENCY`] when earlier passes parked rows). Batches are
/// built on this task one partition at a time; encoding, compression and upload
/// (the expensive part) run on worker tasks. The lease is checked before each.
async fn publish_all(
    lake: &Lake,
    lease: &Lease,
    rows: &BTreeMap<PartitionKey, PartitionRows<'_>>,
    spill: &spill::Spill,
    run: &str,
    pause: Option<Duration>,
    progress: &Progress,
) -> anyhow::Result<Vec<(PartitionKey, Published)>> {
    // Every partition write goes through the version's fence.
    let lake = &lake.fenced(lease.fence());
    futures::stream::iter(rows.iter())
        .map(|(p, r)| {
            let prepared = spill
                .take(p)
                .map_err(anyhow::Error::from)
                .and_then(|earlier| Ok(publish::prepare(*p, r, earlier, lease.version(), run)?));
            let lake = lake.clone();
            async move {
                lease.check()?;
                let out = tokio::spawn(publish(lake, prepared?)).await??;
                tracing::debug!(partition = %p, "Published partition");
                progress.add(1);
                if let Some(d) = pause {
                    tokio::time::sleep(d).await;
                }
                Ok::<_, anyhow::Error>((*p, out))
            }
        })
        .buffer_unordered(if spill.files() > 0 {
            MERGE_CONCURRENCY
        } else {
            PUBLISH_CONCURRENCY
        })
        .try_collect()
        .await
}

fn outcome_of(report: &RunReport) -> Outcome {
    if report.quality.breached {
        Outcome::QualityBreach
    } else {
        Outcome::Success
    }
}

/// Writes one key index file (a segment, [`segments`]).
pub(crate) async fn write_index(
    lake: &Lake,
    path: Path,
    index: &KeyIndex,
) -> anyhow::Result<FileRecord> {
    let batch = index.to_batch()?;
    let mut w = FileWriter::create(lake, path.clone(), KeyIndex::schema())?;
    w.write(&batch).await?;
    let f = w
        .finish()
        .await
        .with_context(|| format!("writing the key index {path}"))?;
    Ok(FileRecord {
        path: f.path.to_string(),
        rows: f.rows,
        bytes: f.bytes,
        sha256: f.sha256,
    })
}

/// Deletes the objects a committed version superseded. Runs right after the
/// commit and again at the start of the next run (the first may have died in
/// between), so a glob reader sees them only within one run's publish window.
/// They are listed by no version at or after `m`, so this needs no lease. A
/// failure fails the run (exit 1): until they are gone a glob reader counts the
/// executions that moved twice, and only the run after *this* version deletes
/// them again, so the Job's retry must come now, not with tomorrow's schedule.
pub(crate) async fn delete_superseded(lake: &Lake, m: &SilverManifest) -> anyhow::Result<()> {
    let paths: Vec<Path> = m
        .superseded
        .iter()
        .map(|p| Path::from(p.as_str()))
        .collect();
    let n = lake.delete_all(paths).await.with_context(|| {
        format!(
            "deleting the {} objects silver version {} superseded (the version is committed; a glob \
             reader sees them until the next run deletes them first)",
            m.superseded.len(),
            m.version
        )
    })?;
    if n > 0 {
        tracing::debug!(
            objects = n,
            version = m.version,
            "Deleted superseded silver objects"
        );
    }
    Ok(())
}

/// The silver and quarantine objects of `shard`'s partitions in the lake,
/// whatever the manifests say: of every partition (`only` = `None`, a full
/// refresh), or of the given ones (a listing per partition and per date).
async fn list_objects(
    lake: &Lake,
    shard: Shard,
    only: Option<&BTreeSet<PartitionKey>>,
) -> anyhow::Result<BTreeMap<PartitionKey, Vec<Path>>> {
    let prefixes: BTreeSet<(Dataset, Path)> = match only {
        None => [
            Dataset::SilverStopExecutions,
            Dataset::QuarantineStopExecutions,
        ]
        .into_iter()
        .map(|d| (d, d.root()))
        .collect(),
        Some(set) => set
            .iter()
            .flat_map(|p| {
                [
                    (
                        Dataset::SilverStopExecutions,
                        Dataset::SilverStopExecutions.partition(&p.partition()),
                    ),
                    (
                        Dataset::QuarantineStopExecutions,
                        publish::quarantine_dir(*p),
                    ),
                ]
            })
            .collect(),
    };
    let mut out: BTreeMap<PartitionKey, Vec<Path>> = BTreeMap::new();
    for (dataset, prefix) in prefixes {
        let objects: Vec<Path> = lake
            .store()
            .list(Some(&prefix))
            .map_ok(|m| m.location)
            .try_collect()
            .await
            .with_context(|| format!("listing {prefix}"))?;
        for path in objects {
            let Some(rel) = path.as_ref().strip_prefix(dataset.dir()) else {
                continue;
            };
            if rel.split('/').any(|s| s.starts_with('_')) {
                continue;
            }
            let Some(Partition { client_id, date }) = Partition::parse(dataset, &path) else {
                continue;
            };
            let client = client_id.or_else(|| path.filename().and_then(publish::quarantine_client));
            let Some(key) = client
                .filter(|c| shard.owns(*c))
                .map(|c| PartitionKey::from_date(c, date))
            else {
                continue;
            };
            if only.is_none_or(|set| set.contains(&key)) {
                out.entry(key).or_default().push(path);
            }
        }
    }
    Ok(out)
}

fn log_outcome(r: &RunReport) {
    tracing::info!(
        outcome = r.outcome.as_str(),
        version = r.committed_version,
        silver_rows = r.rows.silver,
        quarantine_rows = r.rows.quarantine_rows,
        partitions_recomputed = r.partitions.recomputed,
        "Silver run finished"
    );
    if r.bronze_committed_batches == 0 {
        tracing::warn!(lake = %r.header.lake, "The lake holds no committed bronze batch: check LAKE_URL / S3_BUCKET, or run bronze-ingest first");
    }
    lake_common::telemetry::emit_summary(JOB, &summary_text(r), r);
}

/// The run's summary as a person reads it (SPEC §7's statistics included).
fn summary_text(r: &RunReport) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let dry = if r.header.dry_run {
        " (dry run: nothing written)"
    } else {
        ""
    };
    let _ = writeln!(
        o,
        "silver-transform {} run {}{dry} — {}, shard {}/{}, {}",
        r.header.version, r.header.run_id, r.header.lake, r.shard.index, r.shard.count, r.mode
    );
    if r.bronze_committed_batches == 0 {
        let _ = writeln!(
            o,
            "  WARNING: no committed bronze batch in this lake: check LAKE_URL / S3_BUCKET, or run bronze-ingest first"
        );
    }
    match (r.outcome, r.committed_version) {
        (Outcome::NothingNew, _) => {
            let _ = writeln!(
                o,
                "  nothing new: no bronze batch since version {}",
                r.base_version.map_or("-".into(), |v| v.to_string())
            );
        }
        (_, Some(v)) => {
            let _ = writeln!(
                o,
                "  committed version {v}{}: {} executions written, {} partitions recomputed, {} deleted ({} in all)",
                r.base_version
                    .map_or(String::new(), |b| format!(" (from {b})")),
                r.rows.silver,
                r.partitions.recomputed,
                r.partitions.deleted,
                r.partitions.total
            );
        }
        (_, None) => {
            let _ = writeln!(o, "  {} executions computed", r.rows.silver);
        }
    }
    if r.work.fold_passes > 1 {
        let _ = writeln!(
            o,
            "  folded in {} key-hash passes to stay within the memory budget ({} MiB; each pass read bronze again, {:.1} MiB parked on local disk)",
            r.work.fold_passes,
            r.memory.budget_mb,
            r.work.parked_bytes as f64 / f64::from(1 << 20)
        );
    }
    if r.work.frozen_executions > 0 || r.work.files_behind_horizon > 0 {
        let _ = writeln!(
            o,
            "  retention horizon {}: {} executions begun before it got new events (rows kept, the events quarantined as after_retention_horizon); {} late bronze files before it not read",
            r.retained_before.map_or("-".into(), |d| d.to_string()),
            r.work.frozen_executions,
            r.work.files_behind_horizon
        );
    }
    let q = &r.quality;
    let rules: Vec<String> = q
        .violations_per_rule
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(rule, n)| format!("{rule} {n}"))
        .collect();
    let _ = writeln!(
        o,
        "  quarantined {} executions ({:.2} %, threshold {:.2} %){}{}",
        r.rows.quarantine_rows,
        q.violation_ratio * 100.0,
        q.max_violation_ratio * 100.0,
        if rules.is_empty() {
            String::new()
        } else {
            format!(": {}", rules.join(", "))
        },
        if q.breached {
            " — THRESHOLD BREACHED"
        } else {
            ""
        }
    );
    let s = &r.summary;
    if !s.status_distribution.is_empty() {
        let statuses: Vec<String> = s
            .status_distribution
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(o, "  status: {}", statuses.join(", "));
    }
    if let (Some(avg), Some(median), Some(p95)) = (
        &s.slippage_pct.avg,
        &s.slippage_pct.median,
        &s.slippage_pct.p95,
    ) {
        // The report keeps the exact decimals; a person reads four.
        let short = |v: &str| v.parse::<f64>().map_or(v.to_owned(), |x| format!("{x:.4}"));
        let _ = writeln!(
            o,
            "  slippage %: average {}, median {}, p95 {} (over {} executions)",
            short(avg),
            short(median),
            short(p95),
            s.slippage_pct.count
        );
    }
    if !s.top_symbols.is_empty() {
        let top: Vec<String> = s
            .top_symbols
            .iter()
            .take(5)
            .map(|(sym, n)| format!("{sym} {n}"))
            .collect();
        let _ = writeln!(
            o,
            "  top symbols: {}; {} clients",
            top.join(", "),
            s.executions_per_client.len()
        );
    }
    let _ = writeln!(
        o,
        "  took {:.2}s, peak memory {:.0} MiB",
        r.timings_ms.get("total").copied().unwrap_or_default() as f64 / 1000.0,
        lake_common::telemetry::peak_rss_bytes().unwrap_or_default() as f64 / 1_048_576.0
    );
    o
}
