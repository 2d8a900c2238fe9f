//! One dataset's batch: plan, pin, extract, write, commit, clean up (SPEC §5).
//!
//! The batch is the unit of exactly-once: its manifest is created (pinned) before
//! any data is written and rewritten as committed only after every file is
//! complete. Readers honour committed manifests only, so a crash at any point
//! leaves either the previous committed state or the new one, never a mix. A
//! pinned batch that lost its owner is re-executed with the same range, snapshot
//! time and file names, so the files it rewrites are byte-identical.

use std::time::{Duration, Instant};

use chrono::{NaiveDate, Utc};
use futures::TryStreamExt;
use lake_common::commit::fence::Fence;
use lake_common::commit::{Claim, CommitError, LEASE_WAIT, Log, Mode, Pinned, Stored};
use lake_common::contract::{self, ContractError};
use lake_common::manifest::{self, BatchManifest, BatchState, DataFile, LiveFile, MANIFEST_FORMAT};
use lake_common::schema::{AddedColumn, ExportSchema, SourceTable};
use lake_common::{Classified, Dataset, ExitStatus, Lake, Partition};
use object_store::path::Path;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::Client;

use crate::extract::{self, CHANNEL_CHUNKS, Findings, Selection};
use crate::horizon::{self, Snapshot};
use crate::identity;
use crate::source;
use crate::write;

/// Settings of a run that every dataset shares.
#[derive(Debug, Clone)]
pub struct BatchSettings {
    /// Read and report, write nothing.
    pub dry_run: bool,
    /// Days to re-export whole (backfill).
    pub backfill_days: Vec<NaiveDate>,
    /// Select like a first batch, dropping rows already captured (`--rebase`).
    pub rebase: bool,
    /// A held horizon older than this is logged as a warning.
    pub horizon_warn: Duration,
    /// How far before the previous snapshot the incremental scan starts.
    pub lookback: Duration,
    /// Lease of a pending batch.
    pub lease: Duration,
    /// True when a PostgreSQL advisory lock serialises runs (stores without
    /// compare-and-swap): leases are then moot and manifest writes unconditional.
    pub locked: bool,
    /// This run's id (owner of pending manifests).
    pub run_id: String,
    /// The fence of this dataset's writes (raised also by a lost advisory lock).
    pub fence: Fence,
    /// The live table's columns that the contract does not name (SPEC §5.8).
    pub added_columns: Vec<AddedColumn>,
    /// Accept that columns captured earlier are gone or changed their Parquet
    /// type (`--accept-schema`): later files follow the table as it is now.
    pub accept_schema: bool,
}

/// How a dataset's batch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A batch was committed.
    Committed,
    /// No transaction finished since the last batch.
    NothingNew,
    /// Dry run: read and counted, nothing written.
    DryRun,
    /// Another run holds the batch; this run wrote nothing (exit 4).
    Busy,
    /// The dataset failed; `error` says why (the other dataset still ran).
    Failed,
}

/// What one dataset's batch did (part of the run report).
#[derive(Debug, Clone, Serialize)]
pub struct DatasetReport {
    /// `bronze/events` or `bronze/outbox`.
    pub dataset: String,
    /// Source table.
    pub table: String,
    /// Outcome.
    pub outcome: Outcome,
    /// Batch number (if one was pinned or would be).
    pub batch: Option<u64>,
    /// True if the batch was a pending one taken over and re-executed.
    pub resumed: bool,
    /// Lower horizon.
    pub h_prev: Option<u64>,
    /// Upper horizon.
    pub h: Option<u64>,
    /// Rows read (= rows written).
    pub rows: u64,
    /// Files written.
    pub files: usize,
    /// Bytes written.
    pub bytes: u64,
    /// Rows per UTC day.
    pub rows_per_day: std::collections::BTreeMap<NaiveDate, u64>,
    /// Earlier files replaced by a backfill.
    pub superseded_files: usize,
    /// Data-quality findings.
    pub findings: Findings,
    /// Wall time of this dataset.
    pub seconds: f64,
    /// Set when the horizon did not move since the last batch although
    /// transactions ran (an open transaction holds it back, SPEC §5.9).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub horizon_held: Option<HeldHorizon>,
    /// Set when the batch followed a change of the table's file node (a
    /// rewrite, `VACUUM FULL`, `CLUSTER`) and dropped rows already captured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<RewriteReport>,
    /// Why the dataset failed (outcome `failed` or `busy`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Columns the contract does not name that this batch captured for the
    /// first time (a finding, SPEC §5.8): `name (type)`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub added_columns: Vec<String>,
}

/// A horizon that does not move: rows committed meanwhile wait for the holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeldHorizon {
    /// The snapshot of the batch that reached this horizon: it has not moved since.
    pub since: chrono::DateTime<Utc>,
    /// How long that is, in seconds.
    pub seconds: u64,
    /// Whether that is past `BRONZE_HORIZON_WARN`.
    pub warned: bool,
    /// What holds it, as far as the role can see.
    pub holders: Vec<horizon::Holder>,
}

/// What row identity did after a change of the table's file node (SPEC §5.7).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RewriteReport {
    /// The table's file node in the batch's snapshot.
    pub filenode: Option<u64>,
    /// Rows the batch selected that were already captured, and dropped: every
    /// row of the look-back window after a rewrite, none after `VACUUM FULL`.
    pub duplicates_dropped: u64,
}

impl DatasetReport {
    /// The report of a dataset that did not get through, with its error.
    pub fn failed(table: &SourceTable, err: &anyhow::Error, seconds: f64) -> Self {
        let busy = lake_common::telemetry::exit_status_of(err.as_ref()) == ExitStatus::Busy;
        Self {
            outcome: if busy { Outcome::Busy } else { Outcome::Failed },
            seconds,
            error: Some(lake_common::telemetry::error_text(err)),
            ..Self::empty(table)
        }
    }

    /// A dataset's report before anything happened ("nothing new").
    fn empty(table: &SourceTable) -> Self {
        Self {
            dataset: table.dataset.to_string(),
            table: table.table.into(),
            outcome: Outcome::NothingNew,
            batch: None,
            resumed: false,
            h_prev: None,
            h: None,
            rows: 0,
            files: 0,
            bytes: 0,
            rows_per_day: Default::default(),
            superseded_files: 0,
            horizon_held: None,
            rewrite: None,
            findings: Findings::default(),
            seconds: 0.0,
            error: None,
            added_columns: Vec::new(),
        }
    }
}

/// Test-only fail points ([`lake_common::failpoint::stop`]).
fn failpoint(name: &str) {
    lake_common::failpoint::stop("BRONZE_FAILPOINT", name);
}

/// Test-only pause ([`lake_common::failpoint::pause`]).
pub(crate) async fn pause_point(name: &str) {
    lake_common::failpoint::pause("BRONZE_FAILPOINT", name).await;
}

fn busy(msg: String) -> anyhow::Error {
    Classified::new(ExitStatus::Busy, msg).into()
}

/// Runs the next batch of `table`: resumes a pending batch whose lease expired,
/// or pins and runs a new one.
pub async fn run_dataset(
    lake: &Lake,
    client: &Client,
    table: &'static SourceTable,
    snapshot: &Snapshot,
    settings: &BatchSettings,
    progress: &(dyn Fn(u64) + Sync),
) -> anyhow::Result<DatasetReport> {
    let started = Instant::now();
    let dataset = table.dataset;
    // The latest checkpoint and the few entries after it: a run's requests do
    // not grow with the dataset's age.
    let mut history = manifest::BronzeLog::load(lake, dataset).await?;
    let previous = history.latest_entry();
    // A day lake-maintain's retention removed is not exported again: silver no
    // longer reads it, and the next retention would remove it again.
    if let (Some(horizon), Some(day)) = (
        history.retained_before(),
        settings.backfill_days.iter().min(),
    ) && *day < horizon
    {
        return Err(Classified::new(
            ExitStatus::Usage,
            format!(
                "{dataset}: --date {day} is before the retention horizon {horizon} (lake-maintain \
                 removed the days before it on purpose; silver no longer reads them): back-fill \
                 only days from {horizon} on (nothing was written)"
            ),
        )
        .into());
    }
    // The same source, with everything the last batch saw (SPEC §5.5)? A
    // rebase adopts the source as it is now instead.
    if let Some(prev) = &previous
        && !settings.rebase
    {
        let m = &prev.manifest;
        source::check(lake, client, table, m, snapshot).await?;
    }

    let mut report = DatasetReport::empty(table);

    let log = Log::new(
        lake.clone(),
        if settings.locked {
            Mode::Locked
        } else {
            Mode::Conditional
        },
        settings.lease,
    )
    .fenced_by(settings.fence.clone());
    let mut previous = previous;
    // A pending batch whose lease ends within LEASE_WAIT: wait for it (once)
    // rather than exit 4, so a Job's retry right after a crash goes on.
    if let Some(prev) = &previous
        && prev.manifest.state == BatchState::Pending
        && prev.manifest.claim.is_live(Utc::now())
    {
        let left = prev.manifest.claim.remaining(Utc::now());
        if left <= LEASE_WAIT {
            tracing::info!(dataset = %dataset, batch = prev.manifest.batch, wait_secs = left.as_secs_f64(), "Waiting for the lease of a pending batch to end");
            tokio::time::sleep(left + Duration::from_millis(100)).await;
            // Read the log again: the owner may have committed meanwhile (and
            // the checkpoint this run may write must include that batch).
            history = manifest::BronzeLog::load(lake, dataset).await?;
            previous = history.latest_entry();
        }
    }

    let (plan, pinned) = match previous {
        Some(prev) if prev.manifest.state == BatchState::Pending => {
            let m = prev.manifest;
            // A live lease is honoured under the advisory lock too: its holder may
            // be a run whose lock session died but which has not noticed yet.
            if m.claim.is_live(Utc::now()) {
                return Err(busy(format!(
                    "{dataset}: batch {} is being written by run {} (lease until {}); exiting without writing",
                    m.batch,
                    m.claim.owner,
                    m.claim
                        .lease_expires_at
                        .map(|t| t.to_rfc3339())
                        .unwrap_or_default()
                )));
            }
            // A rebase re-plans the pending batch on the source as it is now
            // (below): it may be behind the old source's pinned horizon.
            if !settings.rebase {
                check_not_behind(dataset, &m, snapshot)?;
            }
            if !settings.backfill_days.is_empty() {
                tracing::warn!(dataset = %dataset, batch = m.batch, "A pending batch is resumed first; run the backfill again afterwards");
            }
            // The batch exports the columns it was pinned with: each must still
            // be there as it was, unless the operator accepts the table as it is.
            let drift = contract::compare_added(&m.added_columns, &settings.added_columns);
            if !drift.is_empty() && !settings.accept_schema {
                return Err(ContractError {
                    table: table.table,
                    drift,
                }
                .into());
            }
            // The batch re-plans on the live columns when they differ in any
            // way: accepted drift, a column added since the pin, or a retype
            // that kept the Parquet type but not the wire format (text → uuid,
            // text → jsonb), which the pinned mapping would misread.
            let reschema = m.added_columns != settings.added_columns;
            // A rewrite committed since the batch was pinned re-inserted the
            // pinned range's rows above its horizon: the batch is re-planned on
            // the table as it is now, as a rebase does, and row identity drops
            // what earlier batches hold (a first export would otherwise commit
            // nothing and the next batch see only its look-back window).
            let rewritten_since_pin = matches!(
                (m.relfilenode, snapshot.filenodes.get(table.table)),
                (Some(pinned), Some(now)) if pinned != *now
            );
            if rewritten_since_pin {
                tracing::warn!(dataset = %dataset, batch = m.batch, "The table was rewritten since the pending batch was pinned: re-planning it on the table as it is now");
            }
            let replan = settings.rebase || rewritten_since_pin;
            tracing::warn!(dataset = %dataset, batch = m.batch, previous_owner = %m.claim.owner, "Resuming a pending batch whose run stopped");
            report.resumed = true;
            if settings.dry_run {
                (m, None)
            } else {
                let path = dataset.manifest(m.batch);
                let found = Stored {
                    entry: m,
                    version: prev.version,
                };
                match log.take_over(&path, found, &settings.run_id).await {
                    Ok(p) if replan || reschema => {
                        p.update(|e| {
                            if replan {
                                // The pinned range belongs to the source (or the
                                // table file) being replaced: select like a first
                                // batch instead and let row identity drop what
                                // bronze holds (the look-back bound stays).
                                e.h_prev = None;
                                e.h = snapshot.xmin;
                                e.xmax = snapshot.xmax;
                                e.snapshot_time = snapshot.time;
                                e.system_identifier = snapshot.system_identifier.clone();
                                e.timeline = snapshot.timeline;
                                e.wal_lsn = snapshot.wal_lsn.clone();
                                e.relfilenode = snapshot.filenodes.get(table.table).copied();
                                // The rewrite's xid may lie above this snapshot's
                                // horizon (an older transaction still open): later
                                // batches drop captured rows too, as after any rewrite.
                                if rewritten_since_pin {
                                    e.drop_captured_below = Some(snapshot.xmax);
                                }
                                // A pinned backfill keeps its days after a
                                // rewrite (they supersede, they are not
                                // "captured"); a rebase adopts a new source.
                                if settings.rebase {
                                    e.backfill_days.clear();
                                }
                            }
                            if reschema {
                                // The live columns (an earlier attempt's files
                                // had the old ones).
                                e.added_columns = settings.added_columns.clone();
                            }
                            // Either way, names unique to the attempt.
                            e.drop_captured = true;
                        })
                        .await?;
                        tracing::warn!(dataset = %dataset, batch = p.entry().await.batch, "Re-planned the pending batch on the source as it is now");
                        (p.entry().await, Some(p))
                    }
                    Ok(p) => (p.entry().await, Some(p)),
                    Err(CommitError::Conflict { owner, .. }) => {
                        return Err(busy(format!(
                            "{dataset}: run {owner} took over the pending batch first; exiting without writing"
                        )));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        prev => {
            let prev = prev.map(|p| p.manifest);
            if let Some(p) = &prev {
                // Idempotent: finishes the clean-up of a run that died after committing.
                if !settings.dry_run {
                    cleanup(lake, p).await?;
                }
                if !settings.rebase {
                    check_not_behind(dataset, p, snapshot)?;
                }
                if snapshot.xmin == p.h && settings.backfill_days.is_empty() && !settings.rebase {
                    report.h_prev = Some(p.h);
                    report.h = Some(p.h);
                    // Transactions ran (xmax moved past H) but H did not: one of
                    // them is still open and every row committed since waits.
                    if snapshot.xmax > snapshot.xmin {
                        report.horizon_held =
                            Some(held(client, dataset, p, snapshot, settings.horizon_warn).await?);
                    }
                    report.seconds = started.elapsed().as_secs_f64();
                    return Ok(report);
                }
            }
            // Everything that can refuse the range is checked before pinning it:
            // a pinned batch that can never run would block the dataset for good.
            if let Some(p) = &prev
                && !settings.accept_schema
            {
                let drift = contract::compare_added(&p.added_columns, &settings.added_columns);
                if !drift.is_empty() {
                    return Err(ContractError {
                        table: table.table,
                        drift,
                    }
                    .into());
                }
            }
            // A rebase selects like a first batch (no lower horizon) and lets
            // row identity drop what bronze already holds.
            let rebase = settings.rebase && prev.is_some();
            let h_prev = prev.as_ref().map(|p| p.h).filter(|_| !rebase);
            horizon::predicate(h_prev, snapshot.xmin, snapshot.xmax).map_err(|e| match e {
                horizon::HorizonError::TooWide { .. } => anyhow::Error::new(Classified::new(
                    ExitStatus::Usage,
                    format!(
                        "{dataset}: {e}. Run `bronze-ingest --dataset {} --rebase` once: it \
                         selects like a first batch and commits only rows bronze does not hold yet",
                        table.dataset.dir().rsplit('/').next().unwrap_or_default()
                    ),
                )),
                e => e.into(),
            })?;
            let batch = prev.as_ref().map_or(1, |p| p.batch + 1);
            let relfilenode = snapshot.filenodes.get(table.table).copied();
            // A new file node since the last batch: the table may have been
            // rewritten, every row re-inserted under a new xmin (SPEC §5.7).
            let rewritten = match (prev.as_ref().and_then(|p| p.relfilenode), relfilenode) {
                (Some(before), Some(now)) if before != now => {
                    tracing::warn!(
                        dataset = %dataset, before, now,
                        "The table has a new file node (a rewrite, VACUUM FULL or CLUSTER): this batch drops rows already captured"
                    );
                    true
                }
                _ => false,
            };
            // A rewrite seen by an earlier batch whose horizon was still below
            // the rewriting xid: this batch's range may hold its rows.
            let carried = prev
                .as_ref()
                .and_then(|p| p.drop_captured_below)
                .filter(|below| h_prev.is_some_and(|hp| hp < *below));
            let m = BatchManifest {
                format: MANIFEST_FORMAT,
                dataset: dataset.to_string(),
                batch,
                state: BatchState::Pending,
                h_prev,
                h: snapshot.xmin,
                xmax: snapshot.xmax,
                snapshot_time: snapshot.time,
                // The outbox is never bounded in time: its rows are updated long
                // after `created_at`, and every version is captured (SPEC §5.2).
                scan_from: prev.as_ref().filter(|_| !table.updated_in_place).map(|p| {
                    p.snapshot_time
                        - chrono::Duration::from_std(settings.lookback).unwrap_or_default()
                }),
                system_identifier: snapshot.system_identifier.clone(),
                timeline: snapshot.timeline,
                wal_lsn: snapshot.wal_lsn.clone(),
                relfilenode,
                drop_captured: rewritten
                    || carried.is_some()
                    || rebase
                    || (table.updated_in_place && !settings.backfill_days.is_empty()),
                drop_captured_below: if rewritten {
                    Some(snapshot.xmax)
                } else {
                    carried
                },
                backfill_days: settings.backfill_days.clone(),
                added_columns: settings.added_columns.clone(),
                claim: Claim::default(),
                committed_at: None,
                files: vec![],
                supersedes: vec![],
                rows: 0,
                compacted_days: vec![],
                pruned_days: vec![],
                retained_before: None,
            };
            if settings.dry_run {
                (m, None)
            } else {
                match log
                    .pin(&dataset.manifest(batch), m, &settings.run_id)
                    .await?
                {
                    Ok(p) => (p.entry().await, Some(p)),
                    Err(found) => {
                        return Err(busy(format!(
                            "{dataset}: run {} pinned batch {batch} first; exiting without writing",
                            found.entry.claim.owner
                        )));
                    }
                }
            }
        }
    };
    report.batch = Some(plan.batch);
    let known = history
        .latest_committed()
        .map(|m| m.added_columns.as_slice())
        .unwrap_or_default();
    report.added_columns = plan
        .added_columns
        .iter()
        .filter(|c| !known.iter().any(|k| k.name == c.name))
        .map(|c| format!("{} ({})", c.name, c.pg_type))
        .collect();
    if !report.added_columns.is_empty() {
        tracing::warn!(
            dataset = %dataset, batch = plan.batch, columns = %report.added_columns.join(", "),
            "Capturing columns the contract does not name, from this batch on (SPEC §5.8)"
        );
    }
    report.h_prev = plan.h_prev;
    report.h = Some(plan.h);
    failpoint("after-pin");

    // Every write of the attempt goes through its fence.
    let work = match &pinned {
        Some(p) => lake.fenced(p.fence()),
        None => lake.clone(),
    };
    // The batch is this run's: any upload still open under the dataset is a
    // dead or fenced run's, or one whose start was never answered.
    if pinned.is_some()
        && let Err(e) = lake.abort_open_uploads(&dataset.root()).await
    {
        tracing::warn!(dataset = %dataset, error = %e, "Could not list or abort the multipart uploads failed runs left open; the next run tries again");
    }
    let result = execute(
        &work,
        Source {
            client,
            table,
            history: &history,
        },
        &plan,
        snapshot.xmax,
        settings,
        progress,
    )
    .await;
    // Under the advisory lock the fence rises when the lock's session dies (a
    // server restart, a dropped connection): nobody took the batch over.
    let next = if settings.locked {
        "the next run (the Job's retry) resumes it"
    } else {
        "the run that took it over commits it, or the next run resumes it. \
         Raise BRONZE_LEASE_SECS if runs are slow"
    };
    let fenced = |p: &Pinned<BatchManifest>| {
        busy(format!(
            "{dataset}: this run lost batch {} ({}); it stopped writing; {next}",
            plan.batch,
            p.fence().reason()
        ))
    };
    let (written, rows, findings, supersedes) = match (result, pinned.as_ref()) {
        (Ok(r), _) => r,
        (Err(_), Some(p)) if p.fence().is_raised() => return Err(fenced(p)),
        (Err(e), _) => {
            if let Some(p) = pinned {
                p.release().await;
            }
            return Err(e);
        }
    };
    report.rows = rows;
    report.findings = findings;
    report.rows_per_day = written.rows_per_date.clone();
    report.files = written.files.len();
    report.bytes = written.files.iter().map(|f| f.bytes).sum();
    report.superseded_files = supersedes.len();
    if plan.drop_captured {
        report.rewrite = Some(RewriteReport {
            filenode: plan.relfilenode,
            duplicates_dropped: written.captured_dropped,
        });
    }

    let Some(pinned) = pinned else {
        report.outcome = Outcome::DryRun;
        report.seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    };
    failpoint("before-commit");
    let committed_at = Utc::now();
    let committed = match pinned
        .commit(|m| {
            m.state = BatchState::Committed;
            m.committed_at = Some(committed_at);
            m.files = written.files;
            m.supersedes = supersedes;
            m.rows = rows;
        })
        .await
    {
        Ok(m) => m,
        Err(CommitError::Fenced(f)) => {
            return Err(busy(format!(
                "{dataset}: this run lost batch {} before it could commit it ({}); it stopped \
                 writing; {next}",
                plan.batch, f.0
            )));
        }
        // Not known to be committed: the next run reads the manifest and resumes.
        Err(e) => return Err(e.into()),
    };
    failpoint("after-commit");
    cleanup(lake, &committed).await?;
    if let Some(mut checkpoint) = history.checkpoint_after(&committed) {
        // The outbox's row-identity state goes with it (SPEC §5.7). Best
        // effort too: without it the checkpoint carries the previous state, and
        // readers read the live files after that one.
        if table.updated_in_place && !settings.dry_run {
            match identity::write_state(lake, client, table, &mut checkpoint).await {
                Ok(keys) => {
                    tracing::info!(dataset = %dataset, batch = checkpoint.batch, keys, "Wrote the row-identity state")
                }
                Err(e) => {
                    tracing::warn!(dataset = %dataset, batch = checkpoint.batch, error = %e, "Could not write the row-identity state; the next checkpoint writes it")
                }
            }
        }
        // Best effort: a checkpoint that is not written only means the next
        // reader reads a few more entries, and the next commit writes it.
        match manifest::write_checkpoint(lake, &checkpoint).await {
            Ok(()) => {
                tracing::debug!(dataset = %dataset, batch = checkpoint.batch, live_files = checkpoint.live.len(), "Wrote a checkpoint");
                // The state the previous checkpoint referenced is superseded
                // (a --verify that read that checkpoint just before fails and
                // is run again); best effort, lake-maintain's GC is the backstop.
                if let Some(old) = history.identity_state()
                    && checkpoint.identity_state.as_ref() != Some(old)
                    && let Err(e) = lake.delete_all(vec![Path::from(old.path.as_str())]).await
                {
                    tracing::warn!(dataset = %dataset, path = %old.path, error = %e, "Could not delete a superseded row-identity state");
                }
            }
            Err(e) => {
                tracing::warn!(dataset = %dataset, batch = checkpoint.batch, error = %e, "Could not write the checkpoint; the next commit writes it")
            }
        }
    }
    report.outcome = Outcome::Committed;
    report.seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        dataset = %dataset, batch = committed.batch, rows, files = report.files, bytes = report.bytes,
        "Committed batch"
    );
    Ok(report)
}

/// Describes a horizon that has not moved since batch `p`, warning past `warn`.
async fn held(
    client: &Client,
    dataset: Dataset,
    p: &BatchManifest,
    snapshot: &Snapshot,
    warn: Duration,
) -> anyhow::Result<HeldHorizon> {
    let holders = horizon::holders(client, snapshot.xmin).await?;
    let seconds = (snapshot.time - p.snapshot_time).num_seconds().max(0) as u64;
    let warned = seconds >= warn.as_secs();
    let who: Vec<String> = holders.iter().map(ToString::to_string).collect();
    if warned {
        tracing::warn!(
            dataset = %dataset, h = p.h, held_secs = seconds, holders = %who.join(", "),
            "The transaction horizon has not moved since the last batch: an open transaction holds it \
             back and rows committed since wait for it. End that transaction (or raise BRONZE_HORIZON_WARN)"
        );
    } else {
        tracing::info!(dataset = %dataset, h = p.h, held_secs = seconds, holders = %who.join(", "), "The transaction horizon has not moved since the last batch");
    }
    Ok(HeldHorizon {
        since: p.snapshot_time,
        seconds,
        warned,
        holders,
    })
}

/// Refuses a snapshot behind the latest batch's horizon. If that batch was pinned
/// from a *newer* snapshot, a concurrent run simply got ahead of this one (exit 4,
/// nothing written); otherwise the database went back in time (restore, failover
/// to a lagging replica) and the run fails closed.
fn check_not_behind(
    dataset: lake_common::Dataset,
    latest: &BatchManifest,
    snapshot: &Snapshot,
) -> anyhow::Result<()> {
    if snapshot.xmin >= latest.h {
        return Ok(());
    }
    if let Some(e) = crate::source::overtaken(dataset, latest, snapshot) {
        return Err(e);
    }
    let backwards = horizon::HorizonError::Backwards {
        h_prev: latest.h,
        h: snapshot.xmin,
    };
    Err(Classified::new(ExitStatus::Usage, format!("{dataset}: {backwards}")).into())
}

type Executed = (write::Written, u64, Findings, Vec<String>);

/// The table a batch reads and what the lake already holds of it.
struct Source<'a> {
    client: &'a Client,
    table: &'static SourceTable,
    /// The dataset's log as this run read it (row identity reads its live files).
    history: &'a manifest::BronzeLog,
}

async fn execute(
    lake: &Lake,
    source: Source<'_>,
    plan: &BatchManifest,
    xmax: u64,
    settings: &BatchSettings,
    progress: &(dyn Fn(u64) + Sync),
) -> anyhow::Result<Executed> {
    let Source {
        client,
        table,
        history,
    } = source;
    // Files of the backfilled days written by earlier batches: listed before any
    // file of this batch exists, so the list is exactly what the batch replaces.
    // The outbox's history cannot be re-read (its cleanup deletes rows): an
    // outbox backfill supersedes nothing and adds only the versions bronze
    // lacks (SPEC §5.6).
    let mut supersedes = Vec::new();
    for day in plan
        .backfill_days
        .iter()
        .filter(|_| !table.updated_in_place)
    {
        let dir = table.dataset.partition(&Partition::date(*day));
        let files: Vec<_> = lake.store().list(Some(&dir)).try_collect().await?;
        for f in files {
            if batch_of(&f.location).is_some_and(|b| b < plan.batch) {
                supersedes.push(f.location.to_string());
            }
        }
    }
    supersedes.sort();

    let sel = Selection {
        range: horizon::predicate(plan.h_prev, plan.h, xmax)?,
        scan_from: plan.scan_from,
        backfill: (!plan.backfill_days.is_empty())
            .then(|| horizon::finished_before(plan.h, xmax))
            .transpose()?
            .map(|f| (plan.backfill_days.clone(), f)),
    };
    let drop_captured = if plan.drop_captured {
        let earlier: Vec<LiveFile> = history
            .live_files()
            .into_iter()
            .filter(|f| f.batch < plan.batch)
            .collect();
        // Events: only the days the time-bounded scan can select again, and
        // not the days a backfill re-exports (it supersedes their files).
        let from = plan.scan_from.map(|t| t.date_naive());
        let skip: &[NaiveDate] = if table.updated_in_place {
            &[]
        } else {
            &plan.backfill_days
        };
        let state = history.identity_state().filter(|s| s.batch < plan.batch);
        let captured = identity::Captured::load(lake, table, state, &earlier, from, skip).await?;
        tracing::info!(dataset = %table.dataset, keys = captured.len(), from = from.map(|d| d.to_string()), "Loaded the captured rows to drop after a table rewrite");
        Some(std::sync::Arc::new(captured))
    } else {
        None
    };
    let schema = ExportSchema {
        table,
        added: plan.added_columns.clone(),
    };
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    // The end of the channel is not the end of the input: the writer finishes
    // its last file only when told the extraction succeeded.
    let (done_tx, done_rx) = oneshot::channel();
    let writer = tokio::spawn({
        let lake = lake.clone();
        let schema = schema.clone();
        let dry_run = settings.dry_run;
        // An events batch re-executes to the same bytes; a backfill (whatever
        // PostgreSQL holds now), an outbox batch (rows updated in place) and a
        // batch that drops captured rows (it may be re-planned by a rebase) may not.
        let names = write::FileNames {
            batch: plan.batch,
            attempt: (!plan.backfill_days.is_empty()
                || table.updated_in_place
                || plan.drop_captured)
                .then(|| settings.run_id.clone()),
        };
        async move {
            let input = write::Input {
                chunks: rx,
                complete: done_rx,
                drop_captured,
            };
            write::write_partitions(&lake, &schema, &names, dry_run, input, &after_file).await
        }
    });
    let extracted = extract::extract(
        client,
        &schema,
        &sel,
        plan.batch,
        plan.snapshot_time,
        tx,
        progress,
    )
    .await;
    let _ = done_tx.send(extracted.is_ok());
    let written = writer.await?;
    // When the writer failed first the extraction only saw it stop: the
    // writer's error (the store's answer) is the one that says what failed.
    let written = match (extracted.as_ref(), written) {
        (Err(extract::ExtractError::WriterGone), Err(e)) => return Err(e.into()),
        (_, written) => written,
    };
    let (rows, findings) = extracted?;
    let written = written?;
    let written_rows: u64 = written.rows_per_date.values().sum();
    anyhow::ensure!(
        written_rows + written.captured_dropped == rows,
        "{}: read {rows} rows but wrote {written_rows} (and dropped {} already captured); \
         nothing was committed",
        table.dataset,
        written.captured_dropped
    );
    Ok((written, written_rows, findings, supersedes))
}

fn after_file(_: &DataFile) {
    failpoint("after-file");
}

/// The batch number in a bronze file name (`part-<batch>-<n>.parquet`).
pub fn batch_of(path: &Path) -> Option<u64> {
    lake_common::paths::batch_of_file(path)
}

/// Deletes what a committed batch made obsolete: the files it supersedes and any
/// file bearing its number that it does not list (left by a crashed earlier
/// attempt). Idempotent, so it is re-run at the start of the next run.
async fn cleanup(lake: &Lake, committed: &BatchManifest) -> anyhow::Result<()> {
    let dataset = [Dataset::BronzeEvents, Dataset::BronzeOutbox]
        .into_iter()
        .find(|d| d.dir() == committed.dataset)
        .ok_or_else(|| anyhow::anyhow!("unknown dataset {}", committed.dataset))?;
    let listed: std::collections::HashSet<&str> =
        committed.files.iter().map(|f| f.path.as_str()).collect();
    let mut doomed: Vec<Path> = committed
        .supersedes
        .iter()
        .map(|p| Path::from(p.as_str()))
        .collect();
    // Only an earlier attempt can have left files the batch does not list
    // (a single attempt writes exactly what it commits): a normal run touches
    // only what the batch superseded, and lists the dataset only after a
    // takeover (or for a batch written before attempts were counted).
    if committed.claim.attempts != 1 {
        let all: Vec<_> = lake
            .store()
            .list(Some(&dataset.root()))
            .try_collect()
            .await?;
        doomed.extend(
            all.into_iter()
                .map(|m| m.location)
                .filter(|p| batch_of(p) == Some(committed.batch) && !listed.contains(p.as_ref())),
        );
    }
    if doomed.is_empty() {
        return Ok(());
    }
    let n = lake.delete_all(doomed).await?;
    if n > 0 {
        tracing::debug!(files = n, batch = committed.batch, "Deleted obsolete files");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_numbers_from_file_names() {
        assert_eq!(
            batch_of(&Path::from(
                "bronze/events/date=2026-01-01/part-0000000042-0001.parquet"
            )),
            Some(42)
        );
        assert_eq!(
            batch_of(&Path::from("bronze/events/_manifests/0000000042.json")),
            None
        );
    }
}
