//! bronze-ingest: PostgreSQL event tables → bronze Parquet, exactly once.
//!
//! A run opens one `REPEATABLE READ READ ONLY` snapshot, checks the source schema
//! against the contract, then exports each dataset's next transaction-id batch
//! ([`horizon`]) through [`batch`]: pin a manifest, stream rows out with binary COPY
//! ([`extract`], [`decode`]), write date-partitioned Parquet ([`write`]), commit.
//! `--verify` audits the lake against PostgreSQL instead ([`verify`]).

pub mod batch;
pub mod cli;
pub mod decode;
pub mod extract;
pub mod horizon;
pub mod identity;
pub mod source;
pub mod verify;
pub mod write;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, NaiveDate, Utc};
use lake_common::commit::fence::Fence;
use lake_common::commit::lock::AdvisoryLock;
use lake_common::metrics::{Pushgateway, RunMetrics};
use lake_common::report::Run;
use lake_common::schema::{OUTBOX, STOP_EVENTS, SourceTable};
use lake_common::{Classified, Config, ExitStatus, Lake, contract, postgres};
use serde::Serialize;

use crate::batch::{BatchSettings, DatasetReport, Outcome};

/// The job name: binary, `application_name`, run-report folder.
pub const JOB: &str = "bronze-ingest";

/// Which datasets a run exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datasets {
    /// `stop_events` → `bronze/events`.
    Events,
    /// `outbox` → `bronze/outbox`.
    Outbox,
    /// Both, events first.
    All,
}

impl Datasets {
    /// The source tables, in export order.
    pub fn tables(self) -> Vec<&'static SourceTable> {
        match self {
            Self::Events => vec![&STOP_EVENTS],
            Self::Outbox => vec![&OUTBOX],
            Self::All => vec![&STOP_EVENTS, &OUTBOX],
        }
    }
}

/// What a run does.
#[derive(Debug, Clone)]
pub struct Options {
    /// Datasets to export.
    pub datasets: Datasets,
    /// Read and report, write nothing.
    pub dry_run: bool,
    /// Days to re-export whole (empty: incremental); with `verify`, the days
    /// to audit (empty: all).
    pub backfill_days: Vec<NaiveDate>,
    /// Audit instead of export.
    pub verify: bool,
    /// The next batch selects like a first batch and drops rows already
    /// captured (after a span of 2^31 transactions was refused).
    pub rebase: bool,
    /// Accept dropped or retyped columns that the contract does not name.
    pub accept_schema: bool,
    /// A horizon held longer than this is a warning.
    pub horizon_warn: Duration,
    /// Incremental scan lower bound: previous snapshot minus this.
    pub lookback: Duration,
    /// Lease of a pending batch.
    pub lease: Duration,
}

/// What `--verify` checked of one dataset.
#[derive(Debug, Clone, Serialize)]
pub struct Verified {
    /// The dataset.
    pub dataset: String,
    /// Days compared with PostgreSQL.
    pub days_checked: u64,
    /// Days whose counts or sums differ.
    pub mismatched: u64,
}

/// How a whole run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunOutcome {
    /// Every dataset committed, had nothing new, or was a dry run.
    Success,
    /// A dataset failed (see its `error`); the run exits non-zero.
    Failed,
    /// Another run held a batch; this run wrote nothing there (exit 4).
    Busy,
}

/// The run report written to `_runs/bronze-ingest/`.
#[derive(Debug, Serialize)]
pub struct RunReport {
    /// Job, version, run id, times, lake, source, dry run, error.
    #[serde(flatten)]
    pub header: lake_common::report::Header,
    /// Wall time.
    pub seconds: f64,
    /// How the run ended (the worst of its datasets).
    pub outcome: RunOutcome,
    /// The snapshot's horizon (`None`: the run failed before its snapshot).
    pub snapshot_xmin: Option<u64>,
    /// The snapshot's xmax.
    pub snapshot_xmax: Option<u64>,
    /// The snapshot's time.
    pub snapshot_time: Option<DateTime<Utc>>,
    /// Per dataset.
    pub datasets: Vec<DatasetReport>,
    /// Peak resident memory of the process (VmHWM), in bytes, at the end of the run.
    pub peak_rss_bytes: Option<u64>,
    /// What `--verify` checked, per dataset.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub verified: Vec<Verified>,
    /// Mismatches found by `--verify`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify: Option<Vec<verify::Mismatch>>,
}

/// Expands `--date` / `--from --to` into the list of days (at most 400).
pub fn days(
    date: Option<NaiveDate>,
    from: Option<NaiveDate>,
    to: Option<NaiveDate>,
) -> Result<Vec<NaiveDate>, Classified> {
    let usage = |m: &str| Classified::new(ExitStatus::Usage, m);
    let today = chrono::Utc::now().date_naive();
    match (date, from, to) {
        (None, None, None) => Ok(vec![]),
        _ if date.or(to).is_some_and(|d| d > today) => Err(usage(&format!(
            "{} is in the future (today is {today}, UTC): there is nothing to re-export yet",
            date.or(to).unwrap_or(today)
        ))),
        (Some(d), None, None) => Ok(vec![d]),
        (None, Some(f), Some(t)) if f <= t => {
            let n = (t - f).num_days() + 1;
            if n > 400 {
                return Err(usage(
                    "--from/--to spans more than 400 days: backfill in smaller ranges",
                ));
            }
            Ok(f.iter_days().take(n as usize).collect())
        }
        (None, Some(_), Some(_)) => Err(usage("--from must not be after --to")),
        _ => Err(usage("use either --date D or both --from D and --to D")),
    }
}

/// Runs the job: export (or verify), write the run report, print a summary.
pub async fn run(config: &Config, opts: &Options) -> anyhow::Result<ExitStatus> {
    let run = Run::start(JOB);
    let started = Instant::now();
    let gateway = Pushgateway::from_env_or_warn();
    config
        .lake
        .warn_if_timeout_exceeds(opts.lease, "BRONZE_LEASE_SECS");
    let lake = if opts.dry_run {
        Lake::open_for_dry_run(&config.lake)?
    } else {
        Lake::open(&config.lake)?
    };
    let mut report = RunReport {
        header: run.header(&lake, config.postgres.to_string(), opts.dry_run),
        seconds: 0.0,
        outcome: RunOutcome::Success,
        snapshot_xmin: None,
        snapshot_xmax: None,
        snapshot_time: None,
        datasets: vec![],
        peak_rss_bytes: None,
        verified: vec![],
        verify: None,
    };
    // Every run writes its report, a failed one too (with the error).
    let result = run_with(config, opts, &lake, &mut report).await;
    report.header.finished_at = Utc::now();
    report.seconds = started.elapsed().as_secs_f64();
    report.peak_rss_bytes = lake_common::telemetry::peak_rss_bytes();
    if let Err(e) = &result {
        report.outcome = match lake_common::telemetry::exit_status_of(e.as_ref()) {
            ExitStatus::Busy => RunOutcome::Busy,
            _ => RunOutcome::Failed,
        };
        report.header.error = Some(lake_common::telemetry::error_text(e));
    }
    print_summary(&report);
    if !opts.dry_run {
        match run.write_report(&lake, &report).await {
            Ok(path) => tracing::info!(report = %lake.url_of(&path), "Run report written"),
            Err(e) if result.is_err() => {
                tracing::warn!(error = %e, "Could not write the run report of the failed run")
            }
            Err(e) => return Err(e.context("writing the run report")),
        }
        let exit = match &result {
            Ok(status) => *status,
            Err(e) => lake_common::telemetry::exit_status_of(e.as_ref()),
        };
        for m in metrics(&report, opts, exit) {
            if !m.push(gateway.as_ref()).await {
                break;
            }
        }
    }
    result
}

/// The run's metrics (docs/deploy.md, Monitoring). One Pushgateway group for
/// the run and one per dataset, each within its mode (the daily audit and the
/// hourly export do not replace each other's series): a push replaces the
/// series of its own group only, so a dataset this run did not reach keeps its
/// last values.
fn metrics(r: &RunReport, opts: &Options, exit: ExitStatus) -> Vec<RunMetrics> {
    let mode = if opts.verify { "verify" } else { "ingest" };
    let mut run = RunMetrics::new(JOB, &[("mode", mode.to_owned())]);
    run.set_run(r.header.finished_at, r.seconds, exit as u8);
    let mut all = vec![run];
    let group = |dataset: &str| {
        let short = dataset.rsplit('/').next().unwrap_or(dataset).to_owned();
        RunMetrics::new(JOB, &[("mode", mode.to_owned()), ("dataset", short)])
    };
    for d in &r.datasets {
        let mut m = group(&d.dataset);
        m.set(
            "bronze_rows",
            "Rows the latest run exported.",
            &[],
            d.rows as f64,
        );
        m.set(
            "bronze_bytes",
            "Parquet bytes the latest run wrote.",
            &[],
            d.bytes as f64,
        );
        m.set(
            "bronze_files",
            "Files the latest run wrote.",
            &[],
            d.files as f64,
        );
        m.set(
            "bronze_dataset_failed",
            "1 if the dataset failed in the latest run.",
            &[],
            f64::from(u8::from(matches!(d.outcome, Outcome::Failed))),
        );
        if matches!(d.outcome, Outcome::Committed | Outcome::NothingNew) {
            // Complete up to this run's snapshot, unless an open transaction
            // holds the horizon: then only up to the batch that reached it
            // (rows committed since wait), so the staleness alert still fires.
            let fresh = match &d.horizon_held {
                Some(h) => Some(h.since),
                None => r.snapshot_time,
            };
            if let Some(t) = fresh {
                m.set(
                    "bronze_fresh_as_of_timestamp_seconds",
                    "The snapshot time the dataset is complete up to (its latest batch or no-op; with a held horizon, the batch that reached it).",
                    &[],
                    t.timestamp_millis() as f64 / 1000.0,
                );
            }
            if let Some(b) = d.batch.filter(|_| matches!(d.outcome, Outcome::Committed)) {
                m.set(
                    "bronze_committed_batch",
                    "The latest committed batch.",
                    &[],
                    b as f64,
                );
            }
            let (held, warned) = d
                .horizon_held
                .as_ref()
                .map_or((0, false), |h| (h.seconds, h.warned));
            m.set(
                "bronze_horizon_held_seconds",
                "How long the transaction horizon has not moved (0: it moves).",
                &[],
                held as f64,
            );
            m.set(
                "bronze_horizon_held_warning",
                "1 if the horizon has been held past BRONZE_HORIZON_WARN.",
                &[],
                f64::from(u8::from(warned)),
            );
        }
        all.push(m);
    }
    for v in &r.verified {
        let mut m = group(&v.dataset);
        m.set(
            "bronze_verify_days_checked",
            "Days the latest --verify compared with PostgreSQL.",
            &[],
            v.days_checked as f64,
        );
        m.set(
            "bronze_verify_mismatched_days",
            "Days whose counts or sums differ from PostgreSQL in the latest --verify.",
            &[],
            v.mismatched as f64,
        );
        all.push(m);
    }
    all
}

async fn run_with(
    config: &Config,
    opts: &Options,
    lake: &Lake,
    report: &mut RunReport,
) -> anyhow::Result<ExitStatus> {
    let lake = lake.clone();
    let run_id = report.header.run_id.clone();
    let pool = postgres::pool(&config.postgres, JOB)?;
    let client = pool
        .get()
        .await
        .map_err(|e| anyhow::anyhow!(postgres::explain_connect_error(&config.postgres, &e)))?;
    tracing::info!(run_id = %run_id, source = %config.postgres, lake = %lake.description(), dry_run = opts.dry_run, "Starting bronze-ingest");

    // Lock what can be read; a missing or unreadable table fails its own dataset
    // later, with its fix (SPEC §5.10).
    let mut lockable = Vec::new();
    for table in opts.datasets.tables() {
        if readable(&client, config, table).await.is_ok() {
            lockable.push(table);
        }
    }
    let snapshot = horizon::begin(&client, &config.postgres.user, &lockable)
        .await
        .context("opening the snapshot transaction")?;
    tracing::info!(xmin = snapshot.xmin, xmax = snapshot.xmax, time = %snapshot.time, "Snapshot taken");
    batch::pause_point("after-snapshot").await;
    // --verify reads the tables as they are now: the contract must hold, and so
    // must the columns earlier batches captured (SPEC §5.8), or the audit would
    // compare what bronze can no longer follow.
    let mut live_added = BTreeMap::new();
    if opts.verify {
        for table in opts.datasets.tables() {
            let added = contract::check(&client, table)
                .await
                .with_context(|| format!("reading the columns of {}", table.table))??;
            live_added.insert(table.dataset, added);
        }
    }

    report.snapshot_xmin = Some(snapshot.xmin);
    report.snapshot_xmax = Some(snapshot.xmax);
    report.snapshot_time = Some(snapshot.time);

    let mut pending_error: Option<anyhow::Error> = None;
    let status = if opts.verify {
        let mut all = Vec::new();
        for table in opts.datasets.tables() {
            let (checked, mismatches) = verify::verify_dataset(
                &lake,
                &client,
                table,
                live_added.remove(&table.dataset).unwrap_or_default(),
                snapshot.xmax,
                &opts.backfill_days,
            )
            .await?;
            report.verified.push(Verified {
                dataset: table.dataset.to_string(),
                days_checked: checked as u64,
                mismatched: mismatches.len() as u64,
            });
            all.extend(mismatches);
        }
        let status = if all.is_empty() {
            ExitStatus::Success
        } else {
            ExitStatus::Quality
        };
        report.verify = Some(all);
        status
    } else {
        // Stores without compare-and-swap get a PostgreSQL advisory lock instead,
        // one per dataset, held on its own session until the dataset is done
        // (docs/commit-protocol.md).
        let caps = lake.capabilities();
        let compare_and_swap = caps.create_if_absent && caps.update_if_match;
        let locked = !compare_and_swap && !opts.dry_run;
        // Datasets are independent (SPEC §5.10): each runs inside a savepoint of
        // the one snapshot transaction, so a failing one (schema drift, a missing
        // grant, another run's lease) neither stops the other nor aborts the
        // transaction; the report lists every outcome and the exit code is the
        // worst of them.
        let mut failures: Vec<anyhow::Error> = Vec::new();
        let tables = opts.datasets.tables();
        for (position, table) in tables.iter().enumerate() {
            let started = Instant::now();
            // A savepoint that cannot be taken or released (the session died)
            // fails this dataset like any other error; the next one is tried.
            let result = match client.batch_execute("SAVEPOINT dataset").await {
                Ok(()) => {
                    export_dataset(
                        &lake, &pool, &client, config, opts, &run_id, &snapshot, table, locked,
                    )
                    .await
                }
                Err(e) => Err(anyhow::Error::new(e).context("opening the dataset's savepoint")),
            };
            match result {
                Ok(r) => {
                    // The batch is committed and is the run's result: a session
                    // that dies after it (a standby cancelling the snapshot while
                    // the run waited for the store) loses nothing. The next
                    // dataset, if any, fails on its own savepoint.
                    if let Err(e) = client.batch_execute("RELEASE SAVEPOINT dataset").await {
                        tracing::warn!(
                            dataset = %table.dataset,
                            error = %lake_common::telemetry::error_text(&anyhow::Error::new(e)),
                            "The session to PostgreSQL failed after the batch was committed; nothing was lost"
                        );
                    }
                    report.datasets.push(r);
                }
                Err(e) => {
                    client
                        .batch_execute("ROLLBACK TO SAVEPOINT dataset")
                        .await
                        .ok();
                    // The run's last line states the worst error; a dataset's own
                    // line is needed only when another dataset is tried after it,
                    // or an earlier one failed too (then the last line may be
                    // that one's). Another run holding it is no error.
                    let text = lake_common::telemetry::error_text(&e);
                    let busy =
                        lake_common::telemetry::exit_status_of(e.as_ref()) == ExitStatus::Busy;
                    let next = position + 1 < tables.len();
                    match (next || !failures.is_empty(), busy) {
                        (false, _) => {}
                        (true, true) => {
                            tracing::warn!(dataset = %table.dataset, error = %text, "Dataset held by another run")
                        }
                        (true, false) if next => {
                            tracing::error!(dataset = %table.dataset, error = %text, "Dataset failed; going on with the next one")
                        }
                        (true, false) => {
                            tracing::error!(dataset = %table.dataset, error = %text, "Dataset failed")
                        }
                    }
                    report.datasets.push(DatasetReport::failed(
                        table,
                        &e,
                        started.elapsed().as_secs_f64(),
                    ));
                    failures.push(e.context(format!("exporting {}", table.table)));
                }
            }
        }
        if let Some(worst) = worst_failure(failures) {
            pending_error = Some(worst);
        }
        ExitStatus::Success
    };
    client.batch_execute("ROLLBACK").await.ok();

    match pending_error {
        Some(e) => Err(e),
        None => Ok(status),
    }
}

/// The error that decides the exit code when datasets failed: a failure that
/// needs a person (1, 2) before a quality breach (3) before "busy" (4).
fn worst_failure(mut failures: Vec<anyhow::Error>) -> Option<anyhow::Error> {
    let rank = |e: &anyhow::Error| match lake_common::telemetry::exit_status_of(e.as_ref()) {
        ExitStatus::Failure | ExitStatus::Usage => 0,
        ExitStatus::Quality => 1,
        ExitStatus::Busy => 2,
        ExitStatus::Success => 3,
    };
    failures.sort_by_key(|e| rank(e));
    failures.into_iter().next()
}

/// Refuses, before anything is pinned, a source table that is missing or that
/// the role may not read: a configuration problem (exit 2) with its fix.
async fn readable(
    client: &tokio_postgres::Client,
    config: &Config,
    table: &SourceTable,
) -> anyhow::Result<()> {
    let row = client
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL, \
                    coalesce(has_table_privilege(to_regclass($1), 'SELECT'), false)",
            &[&table.table],
        )
        .await
        .with_context(|| format!("checking that {} is readable", table.table))?;
    let (exists, may_read): (bool, bool) = (row.get(0), row.get(1));
    let user = &config.postgres.user;
    let db = &config.postgres.dbname;
    let problem = if !exists {
        format!(
            "table {} does not exist in database {db} (or is outside the role's search_path): \
             check DJANGO_DB_NAME and that Django's migrations ran",
            table.table
        )
    } else if !may_read {
        format!(
            "role {user} may not read table {}: as the table's owner, GRANT SELECT ON {} TO {user}",
            table.table, table.table
        )
    } else {
        return Ok(());
    };
    Err(Classified::new(ExitStatus::Usage, problem).into())
}

/// One dataset's export: its contract check, its advisory lock (stores
/// without compare-and-swap) and its batch.
#[allow(clippy::too_many_arguments)]
async fn export_dataset(
    lake: &Lake,
    pool: &postgres::PgPool,
    client: &tokio_postgres::Client,
    config: &Config,
    opts: &Options,
    run_id: &str,
    snapshot: &horizon::Snapshot,
    table: &'static SourceTable,
    locked: bool,
) -> anyhow::Result<DatasetReport> {
    readable(client, config, table).await?;
    let added_columns = contract::check(client, table)
        .await
        .with_context(|| format!("reading the columns of {}", table.table))??;
    let fence = Fence::new();
    let _lock = if locked {
        let conn = pool
            .get()
            .await
            .map_err(|e| anyhow::anyhow!(postgres::explain_connect_error(&config.postgres, &e)))?;
        let name = format!("{JOB}/{}", table.dataset);
        match AdvisoryLock::try_acquire(conn, &name, fence.clone())
            .await
            .map_err(|e| postgres::missing_function_grant(e, &config.postgres.user))?
        {
            Some(lock) => Some(lock),
            None => {
                return Err(Classified::new(
                    ExitStatus::Busy,
                    format!(
                        "{}: another bronze-ingest run holds the advisory lock {name}; exiting without writing",
                        table.dataset
                    ),
                )
                .into());
            }
        }
    } else {
        None
    };
    let settings = BatchSettings {
        dry_run: opts.dry_run,
        backfill_days: opts.backfill_days.clone(),
        rebase: opts.rebase,
        accept_schema: opts.accept_schema,
        added_columns,
        horizon_warn: opts.horizon_warn,
        lookback: opts.lookback,
        lease: opts.lease,
        locked,
        run_id: run_id.to_owned(),
        fence,
    };
    let bar = lake_common::telemetry::Progress::new(table.table, "rows");
    let progress = |rows: u64| bar.set(rows);
    let r = batch::run_dataset(lake, client, table, snapshot, &settings, &progress).await;
    bar.finish();
    r
}

fn print_summary(r: &RunReport) {
    use std::fmt::Write as _;
    let mut o = String::new();
    let snapshot = match (r.snapshot_xmin, r.snapshot_time) {
        (Some(x), Some(t)) => format!(
            " — snapshot xmin {x} at {}",
            t.format("%Y-%m-%d %H:%M:%S UTC")
        ),
        _ => String::new(),
    };
    let mode = if r.header.dry_run {
        " (dry run: nothing written)"
    } else {
        ""
    };
    let _ = writeln!(
        o,
        "bronze-ingest {} run {}{mode}{snapshot}",
        r.header.version, r.header.run_id
    );
    for d in &r.datasets {
        let batch = d.batch.map_or("-".into(), |b| b.to_string());
        let what = match d.outcome {
            Outcome::Committed if d.superseded_files > 0 => {
                format!(
                    "backfill committed as batch {batch}, superseding {} files",
                    d.superseded_files
                )
            }
            Outcome::Committed => format!("committed batch {batch}"),
            Outcome::NothingNew => match &d.horizon_held {
                Some(h) => format!(
                    "nothing new: the transaction horizon has not moved for {} — held by {}{}",
                    humantime::format_duration(std::time::Duration::from_secs(h.seconds)),
                    if h.holders.is_empty() {
                        "a transaction this role cannot see".to_owned()
                    } else {
                        h.holders
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    },
                    if h.warned { " (WARNING)" } else { "" }
                ),
                None => "nothing new since the last batch".into(),
            },
            Outcome::DryRun => format!("dry run of batch {batch}"),
            Outcome::Busy => "skipped: another run holds it".into(),
            Outcome::Failed => "FAILED".into(),
        };
        let _ = writeln!(o, "  {:<14} {what}", d.dataset);
        if let Some(e) = &d.error {
            let _ = writeln!(o, "      {e}");
            continue;
        }
        if d.outcome == Outcome::NothingNew {
            continue;
        }
        let rate = if d.seconds > 0.0 {
            d.rows as f64 / d.seconds
        } else {
            0.0
        };
        let _ = writeln!(
            o,
            "      {} rows, {} files, {:.1} MiB in {:.1}s ({:.0} rows/s){}",
            d.rows,
            d.files,
            d.bytes as f64 / 1_048_576.0,
            d.seconds,
            rate,
            if d.resumed {
                "; resumed the batch of a run that stopped"
            } else {
                ""
            }
        );
        if d.rows_per_day.len() <= 7 {
            for (day, n) in &d.rows_per_day {
                let _ = writeln!(o, "      {day}: {n} rows");
            }
        } else if let (Some((first, _)), Some((last, _))) = (
            d.rows_per_day.first_key_value(),
            d.rows_per_day.last_key_value(),
        ) {
            let _ = writeln!(
                o,
                "      {} days from {first} to {last}",
                d.rows_per_day.len()
            );
        }
        for (col, n) in &d.findings.nan_to_null {
            let _ = writeln!(
                o,
                "      finding: {n} NaN or infinite values in {col} stored as NULL"
            );
        }
        if d.findings.duplicate_keys > 0 {
            let _ = writeln!(
                o,
                "      finding: {} duplicate keys",
                d.findings.duplicate_keys
            );
        }
    }
    for v in &r.verified {
        let _ = writeln!(
            o,
            "verify {}: {} days checked, {} mismatched",
            v.dataset, v.days_checked, v.mismatched
        );
    }
    for m in r.verify.iter().flatten() {
        let _ = writeln!(
            o,
            "  MISMATCH {} {}: postgres rows={} sum={} | lake rows={} sum={}",
            m.dataset,
            m.date,
            m.check.postgres_rows,
            m.check.postgres_sum.as_deref().unwrap_or("-"),
            m.check.lake_rows,
            m.check.lake_sum.as_deref().unwrap_or("-")
        );
    }
    let _ = writeln!(
        o,
        "  took {:.2}s, peak memory {:.0} MiB",
        r.seconds,
        r.peak_rss_bytes.unwrap_or_default() as f64 / 1_048_576.0
    );
    lake_common::telemetry::emit_summary(JOB, &o, r);
}
