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
pub mod verify;
pub mod write;

use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, NaiveDate, Utc};
use lake_common::commit::fence::Fence;
use lake_common::commit::lock::AdvisoryLock;
use lake_common::report::Run;
use lake_common::schema::{OUTBOX, STOP_EVENTS, SourceTable};
use lake_common::{Classified, Config, ExitStatus, Lake, contract, postgres};
use serde::Serialize;

use crate::batch::{BatchSettings, DatasetReport};

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
    /// Days to re-export whole (empty: incremental).
    pub backfill_days: Vec<NaiveDate>,
    /// Audit instead of export.
    pub verify: bool,
    /// Incremental scan lower bound: previous snapshot minus this.
    pub lookback: Duration,
    /// Lease of a pending batch.
    pub lease: Duration,
}

/// The run report written to `_runs/bronze-ingest/`.
#[derive(Debug, Serialize)]
pub struct RunReport {
    /// Job name.
    pub job: &'static str,
    /// Binary version.
    pub version: &'static str,
    /// Run id.
    pub run_id: String,
    /// Start.
    pub started_at: DateTime<Utc>,
    /// End.
    pub finished_at: DateTime<Utc>,
    /// Wall time.
    pub seconds: f64,
    /// Dry run?
    pub dry_run: bool,
    /// The snapshot's horizon.
    pub snapshot_xmin: u64,
    /// The snapshot's xmax.
    pub snapshot_xmax: u64,
    /// The snapshot's time.
    pub snapshot_time: DateTime<Utc>,
    /// Per dataset.
    pub datasets: Vec<DatasetReport>,
    /// Peak resident memory of the process (VmHWM), in bytes, at the end of the run.
    pub peak_rss_bytes: Option<u64>,
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
    match (date, from, to) {
        (None, None, None) => Ok(vec![]),
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
    let lake = Lake::open(&config.lake)?;
    let pool = postgres::pool(&config.postgres, JOB)?;
    let client = pool
        .get()
        .await
        .map_err(|e| anyhow::anyhow!(postgres::explain_connect_error(&config.postgres, &e)))?;
    tracing::info!(run_id = %run.id, source = %config.postgres, lake = %lake.description(), dry_run = opts.dry_run, "Starting bronze-ingest");

    let snapshot = horizon::begin(&client)
        .await
        .context("opening the snapshot transaction")?;
    tracing::info!(xmin = snapshot.xmin, xmax = snapshot.xmax, time = %snapshot.time, "Snapshot taken");
    for table in opts.datasets.tables() {
        contract::check(&client, table)
            .await
            .with_context(|| format!("reading the columns of {}", table.table))??;
    }

    let mut report = RunReport {
        job: JOB,
        version: env!("CARGO_PKG_VERSION"),
        run_id: run.id.clone(),
        started_at: run.started_at,
        finished_at: run.started_at,
        seconds: 0.0,
        dry_run: opts.dry_run,
        snapshot_xmin: snapshot.xmin,
        snapshot_xmax: snapshot.xmax,
        snapshot_time: snapshot.time,
        datasets: vec![],
        peak_rss_bytes: None,
        verify: None,
    };

    let status = if opts.verify {
        let mut all = Vec::new();
        for table in opts.datasets.tables() {
            let (checked, mismatches) = verify::verify_dataset(&lake, &client, table).await?;
            println!(
                "verify {}: {checked} days checked, {} mismatched",
                table.dataset,
                mismatches.len()
            );
            for m in &mismatches {
                println!(
                    "  MISMATCH {} {}: postgres rows={} sum={} | lake rows={} sum={}",
                    m.dataset,
                    m.date,
                    m.check.postgres_rows,
                    m.check.postgres_sum.as_deref().unwrap_or("-"),
                    m.check.lake_rows,
                    m.check.lake_sum.as_deref().unwrap_or("-")
                );
            }
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
        for table in opts.datasets.tables() {
            let fence = Fence::new();
            let _lock = if locked {
                let conn = pool.get().await.map_err(|e| {
                    anyhow::anyhow!(postgres::explain_connect_error(&config.postgres, &e))
                })?;
                let name = format!("{JOB}/{}", table.dataset);
                match AdvisoryLock::try_acquire(conn, &name, fence.clone()).await? {
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
                lookback: opts.lookback,
                lease: opts.lease,
                locked,
                run_id: run.id.clone(),
                fence,
            };
            let bar = lake_common::telemetry::progress_bar(table.table);
            let progress = |rows: u64| bar.set_position(rows);
            let r = batch::run_dataset(&lake, &client, table, &snapshot, &settings, &progress)
                .await
                .with_context(|| format!("exporting {}", table.table))?;
            bar.finish_and_clear();
            report.datasets.push(r);
        }
        ExitStatus::Success
    };
    client.batch_execute("ROLLBACK").await.ok();

    report.finished_at = Utc::now();
    report.seconds = started.elapsed().as_secs_f64();
    report.peak_rss_bytes = peak_rss_bytes();
    print_summary(&report);
    if !opts.dry_run {
        let path = run
            .write_report(&lake, &report)
            .await
            .context("writing the run report")?;
        tracing::info!(report = %path, "Run report written");
    }
    Ok(status)
}

/// Peak resident set size of this process (Linux `VmHWM`), for the run report and
/// the memory budget of SPEC §10.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn print_summary(r: &RunReport) {
    println!(
        "bronze-ingest {} run {}{} — snapshot xmin {} at {}",
        r.version,
        r.run_id,
        if r.dry_run {
            " (dry run: nothing written)"
        } else {
            ""
        },
        r.snapshot_xmin,
        r.snapshot_time.format("%Y-%m-%d %H:%M:%S UTC")
    );
    for d in &r.datasets {
        let rate = if d.seconds > 0.0 {
            d.rows as f64 / d.seconds
        } else {
            0.0
        };
        println!(
            "  {:<14} {:?} batch {} xids [{}, {}): {} rows, {} files, {} bytes, {:.1}s ({:.0} rows/s){}",
            d.dataset,
            d.outcome,
            d.batch.map_or("-".into(), |b| b.to_string()),
            d.h_prev.map_or("start".into(), |h| h.to_string()),
            d.h.map_or("-".into(), |h| h.to_string()),
            d.rows,
            d.files,
            d.bytes,
            d.seconds,
            rate,
            if d.resumed {
                " (resumed a pending batch)"
            } else {
                ""
            }
        );
        if d.rows_per_day.len() <= 7 {
            for (day, n) in &d.rows_per_day {
                println!("      {day}: {n} rows");
            }
        } else if let (Some((first, _)), Some((last, _))) = (
            d.rows_per_day.first_key_value(),
            d.rows_per_day.last_key_value(),
        ) {
            println!("      {} days from {first} to {last}", d.rows_per_day.len());
        }
        for (col, n) in &d.findings.nan_to_null {
            println!("      finding: {n} NaN values in {col} stored as NULL");
        }
        if d.findings.duplicate_keys > 0 {
            println!(
                "      finding: {} duplicate keys",
                d.findings.duplicate_keys
            );
        }
    }
    println!(
        "  took {:.2}s, peak memory {:.0} MiB",
        r.seconds,
        r.peak_rss_bytes.unwrap_or_default() as f64 / 1_048_576.0
    );
}
