//! `lake-maintain`: the lake's upkeep, run daily (SPEC §11).
//!
//! Each run applies bronze's and silver's retention ([`retain`]), compacts closed bronze
//! days ([`compact`]), then collects garbage ([`gc`]): objects no log
//! references, older than a grace period, multipart uploads left open for
//! longer than a day, and run reports past their retention
//! (docs/maintenance.md).

pub mod cli;
pub mod compact;
pub mod gc;
pub mod retain;
pub mod rewrite;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use lake_common::metrics::RunMetrics;
use lake_common::report::{Header, Run};
use lake_common::{Lake, LakeConfig};
use serde::Serialize;

/// The job's name (run reports under `_runs/lake-maintain/`).
pub const JOB: &str = "lake-maintain";

/// Test-only fail points (`MAINTAIN_FAILPOINT=<name>`, the kill -9 tests).
pub(crate) fn failpoint(name: &str) {
    lake_common::failpoint::stop("MAINTAIN_FAILPOINT", name);
}

/// Days of run reports kept by default.
pub const DEFAULT_REPORTS_DAYS: u32 = 365;

/// What a run does.
#[derive(Debug, Clone)]
pub struct Options {
    /// Count, delete nothing, write no report.
    pub dry_run: bool,
    /// An unreferenced object is deleted once it is older than this: longer
    /// than any job's deadline, so no run is still writing it.
    pub grace: Duration,
    /// A multipart upload is aborted once it was started longer ago than this.
    pub upload_grace: Duration,
    /// Where the run's metrics go (`PUSHGATEWAY_URL`), if anywhere.
    pub pushgateway: Option<lake_common::metrics::Pushgateway>,
    /// Compact closed bronze days before collecting garbage.
    pub compact: bool,
    /// Days of `bronze/events` kept (`None`: keep everything).
    pub bronze_retention_days: Option<u32>,
    /// Days of silver partitions kept (`None`: keep everything), never more
    /// than bronze removed.
    pub silver_retention_days: Option<u32>,
    /// Days of `bronze/outbox` kept (`None`: keep everything): older files
    /// are removed once they hold no latest version of a row PostgreSQL holds.
    pub outbox_retention_days: Option<u32>,
    /// Days of run reports (`_runs/`) kept.
    pub reports_retention_days: u32,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            dry_run: false,
            grace: Duration::from_secs(48 * 3600),
            upload_grace: Duration::from_secs(24 * 3600),
            pushgateway: None,
            compact: true,
            bronze_retention_days: Some(retain::DEFAULT_BRONZE_DAYS),
            silver_retention_days: Some(retain::DEFAULT_SILVER_DAYS),
            outbox_retention_days: Some(retain::DEFAULT_BRONZE_DAYS),
            reports_retention_days: DEFAULT_REPORTS_DAYS,
        }
    }
}

/// The run report (`_runs/lake-maintain/…json`).
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// Job, version, run id, times, lake, error.
    #[serde(flatten)]
    pub header: Header,
    /// The grace period, in seconds.
    pub grace_secs: u64,
    /// The upload grace period, in seconds.
    pub upload_grace_secs: u64,
    /// Days of run reports kept.
    pub reports_retention_days: u32,
    /// Bronze's retention (`None`: not asked for).
    pub retention: Option<retain::Retained>,
    /// Silver's retention (`None`: not asked for).
    pub silver_retention: Option<retain::SilverRetained>,
    /// The outbox's retention (`None`: not asked for).
    pub outbox_retention: Option<retain::Retained>,
    /// The compaction of closed bronze days (`None`: not asked for).
    pub compaction: Option<compact::Compacted>,
    /// Objects the logs reference.
    pub referenced: u64,
    /// Per swept prefix.
    pub prefixes: Vec<gc::Swept>,
    /// Multipart uploads.
    pub uploads: gc::Uploads,
    /// Run reports past their retention.
    pub reports: gc::Reports,
    /// Milliseconds per phase.
    pub timings_ms: BTreeMap<&'static str, u64>,
}

impl RunReport {
    /// Unreferenced objects older than the grace over every prefix (deleted
    /// unless a dry run).
    pub fn garbage(&self) -> (u64, u64) {
        self.prefixes
            .iter()
            .fold((0, 0), |(n, b), p| (n + p.garbage, b + p.garbage_bytes))
    }

    /// The human summary.
    pub fn summary(&self) -> String {
        let (n, bytes) = self.garbage();
        let young: u64 = self.prefixes.iter().map(|p| p.young).sum();
        let objects: u64 = self.prefixes.iter().map(|p| p.objects).sum();
        let verb = if self.header.dry_run {
            "would delete"
        } else {
            "deleted"
        };
        let grace = humantime::format_duration(Duration::from_secs(self.grace_secs));
        let mut s = format!(
            "lake-maintain{}: ",
            if self.header.dry_run {
                " (dry run)"
            } else {
                ""
            }
        );
        if let Some(r) = &self.retention {
            s += &retention_summary(r, self.header.dry_run);
        }
        if let Some(r) = &self.silver_retention {
            s += &silver_retention_summary(r, self.header.dry_run);
        }
        if let Some(r) = &self.outbox_retention {
            s += &outbox_retention_summary(r, self.header.dry_run);
        }
        if let Some(c) = &self.compaction {
            s += &compaction_summary(c, self.header.dry_run);
        }
        s += &format!(
            "{objects} objects under {} prefixes, {} referenced by the logs; {verb} {n} \
             unreferenced objects older than {grace} ({:.1} MiB)",
            self.prefixes.len(),
            self.referenced,
            bytes as f64 / 1048576.0,
        );
        if young > 0 {
            s += &format!(", kept {young} younger ones (a run may still be writing them)");
        }
        let verb = if self.header.dry_run {
            "would abort"
        } else {
            "aborted"
        };
        s += &format!(
            "; {verb} {} of {} open multipart uploads",
            self.uploads.stale, self.uploads.open
        );
        let verb = if self.header.dry_run {
            "would delete"
        } else {
            "deleted"
        };
        s += &format!(
            "; {verb} {} of {} run reports older than {} days.\n",
            self.reports.expired, self.reports.objects, self.reports_retention_days
        );
        s
    }
}

fn retention_summary(r: &retain::Retained, dry_run: bool) -> String {
    let Some(horizon) = r.horizon else {
        return format!(
            "no retention ({}); ",
            r.skipped.as_deref().unwrap_or("nothing to do")
        );
    };
    let held = r
        .held_by_silver
        .map(|d| format!(" (held back at {d}: silver has not read every file of it)"))
        .unwrap_or_default();
    let verb = if dry_run { "would remove" } else { "removed" };
    format!(
        "retention of {} days: {verb} {} days before {horizon} of {} ({} files, {} rows){held}; ",
        r.keep_days, r.days, r.dataset, r.files, r.rows
    )
}

fn silver_retention_summary(r: &retain::SilverRetained, dry_run: bool) -> String {
    let Some(horizon) = r.horizon else {
        return format!(
            "no silver retention ({}); ",
            r.skipped.as_deref().unwrap_or("nothing to do")
        );
    };
    let verb = if dry_run { "would remove" } else { "removed" };
    let capped = if r.target.is_some_and(|t| t > horizon) {
        " (bronze's horizon)"
    } else {
        ""
    };
    let skipped: Vec<String> = r
        .shards
        .iter()
        .filter(|s| s.partitions > 0 && s.version.is_none() && !dry_run)
        .map(|s| format!("{}: {}", s.shard, s.skipped.as_deref().unwrap_or("")))
        .collect();
    let skipped = if skipped.is_empty() {
        String::new()
    } else {
        format!(", left for the next run: {}", skipped.join("; "))
    };
    let rows: u64 = r.shards.iter().map(|s| s.rows).sum();
    format!(
        "silver retention of {} days: {verb} {} partitions before {horizon}{capped} ({rows} rows){skipped}; ",
        r.keep_days,
        r.partitions()
    )
}

fn outbox_retention_summary(r: &retain::Retained, dry_run: bool) -> String {
    if r.horizon.is_none() {
        return format!(
            "no retention of {} ({}); ",
            r.dataset,
            r.skipped.as_deref().unwrap_or("nothing to do")
        );
    }
    let verb = if dry_run { "would remove" } else { "removed" };
    format!(
        "retention of {} days: {verb} {} files of {} days before {} of {} holding only superseded \
         versions or rows PostgreSQL no longer holds ({} rows); ",
        r.keep_days,
        r.files,
        r.days,
        r.target.map(|d| d.to_string()).unwrap_or_default(),
        r.dataset,
        r.rows
    )
}

fn compaction_summary(c: &compact::Compacted, dry_run: bool) -> String {
    if c.days.is_empty() {
        return format!(
            "no compaction ({}); ",
            c.skipped.as_deref().unwrap_or("nothing to do")
        );
    }
    let before: u64 = c.days.iter().map(|d| d.files_before).sum();
    let after: u64 = c.days.iter().map(|d| d.files_after).sum();
    let left = if c.days_left > 0 {
        format!(", {} more left for the next runs", c.days_left)
    } else {
        String::new()
    };
    if dry_run {
        format!(
            "would compact {} closed days of {} ({before} files){left}; ",
            c.days.len(),
            c.dataset
        )
    } else {
        format!(
            "compacted {} closed days of {} ({before} files into {after}) as batch {}{left}; ",
            c.days.len(),
            c.dataset,
            c.batch.map(|b| b.to_string()).unwrap_or_default()
        )
    }
}

/// Runs once and returns the report (written to `_runs/` unless a dry run;
/// a failed run's report carries its error).
pub async fn run(lake: &Lake, options: &Options) -> anyhow::Result<RunReport> {
    let run = Run::start(JOB);
    let mut report = RunReport {
        header: run.header(lake, lake.description().to_owned(), options.dry_run),
        grace_secs: options.grace.as_secs(),
        upload_grace_secs: options.upload_grace.as_secs(),
        reports_retention_days: options.reports_retention_days,
        retention: None,
        silver_retention: None,
        outbox_retention: None,
        compaction: None,
        referenced: 0,
        prefixes: vec![],
        uploads: gc::Uploads::default(),
        reports: gc::Reports::default(),
        timings_ms: BTreeMap::new(),
    };
    tracing::info!(
        run_id = %run.id,
        lake = %lake.description(),
        grace = %humantime::format_duration(options.grace),
        dry_run = options.dry_run,
        "Starting lake-maintain"
    );
    let started = Instant::now();
    let result = collect(lake, options, &mut report).await;
    report.header.finished_at = Utc::now();
    report
        .timings_ms
        .insert("total", started.elapsed().as_millis() as u64);
    if let Err(err) = &result {
        report.header.error = Some(lake_common::telemetry::error_text(err));
    }
    if options.dry_run {
        return result.map(|()| report);
    }
    let written = run.write_report(lake, &report).await;
    let status = match (&result, &written) {
        (Err(e), _) => lake_common::telemetry::exit_status_of(e.as_ref()),
        (Ok(()), Err(_)) => lake_common::ExitStatus::Failure,
        (Ok(()), Ok(_)) => lake_common::ExitStatus::Success,
    };
    let _ = metrics(&report, started.elapsed().as_secs_f64(), status)
        .push(options.pushgateway.as_ref())
        .await;
    match written {
        Ok(path) => tracing::info!(report = %lake.url_of(&path), "Run report written"),
        Err(e) if result.is_err() => {
            tracing::warn!(error = %e, "Could not write the run report of the failed run");
        }
        Err(e) => return Err(e.context("writing the run report")),
    }
    result.map(|()| report)
}

/// The run's metrics: the series every job has, and what it collected.
fn metrics(r: &RunReport, seconds: f64, exit: lake_common::ExitStatus) -> RunMetrics {
    let mut m = RunMetrics::new(JOB, &[]);
    m.set_run(r.header.finished_at, seconds, exit as u8);
    if exit != lake_common::ExitStatus::Success {
        return m;
    }
    let (objects, bytes) = r.garbage();
    let young: u64 = r.prefixes.iter().map(|p| p.young).sum();
    let gauges: [(&'static str, &str, u64); 4] = [
        (
            "gc_deleted_objects",
            "Unreferenced objects the latest lake-maintain run deleted.",
            objects,
        ),
        (
            "gc_deleted_bytes",
            "Bytes of the objects the latest lake-maintain run deleted.",
            bytes,
        ),
        (
            "gc_young_objects",
            "Unreferenced objects younger than the grace the latest run kept.",
            young,
        ),
        (
            "gc_uploads_aborted",
            "Stale multipart uploads the latest run aborted.",
            r.uploads.stale,
        ),
    ];
    for (name, help, value) in gauges {
        m.set(name, help, &[], value as f64);
    }
    for r in r.retention.iter().chain(&r.outbox_retention) {
        m.set(
            "retain_files_removed",
            "Bronze files the latest lake-maintain run removed by retention.",
            &[("dataset", r.dataset.as_str())],
            if r.batch.is_some() {
                r.files as f64
            } else {
                0.0
            },
        );
    }
    if let Some(r) = &r.retention {
        let dataset = [("dataset", r.dataset.as_str())];
        m.set(
            "retain_held_by_silver",
            "1 when silver's unread files held bronze's retention back in the latest run.",
            &dataset,
            f64::from(u8::from(r.held_by_silver.is_some())),
        );
    }
    if let Some(r) = &r.silver_retention {
        let removed: u64 = r
            .shards
            .iter()
            .filter(|s| s.version.is_some())
            .map(|s| s.partitions)
            .sum();
        m.set(
            "retain_silver_partitions_removed",
            "Silver partitions the latest lake-maintain run removed by retention.",
            &[],
            removed as f64,
        );
    }
    if let Some(c) = &r.compaction {
        let before: u64 = c.days.iter().map(|d| d.files_before).sum();
        let after: u64 = c.days.iter().map(|d| d.files_after).sum();
        let dataset = [("dataset", c.dataset.as_str())];
        m.set(
            "compact_days",
            "Closed bronze days the latest lake-maintain run compacted.",
            &dataset,
            c.days.len() as f64,
        );
        m.set(
            "compact_files_removed",
            "Bronze files the latest compaction replaced, less the files it wrote.",
            &dataset,
            before.saturating_sub(after) as f64,
        );
        m.set(
            "compact_days_left",
            "Closed bronze days with several files left for later runs (the per-run limit).",
            &dataset,
            c.days_left as f64,
        );
    }
    m
}

async fn collect(lake: &Lake, options: &Options, report: &mut RunReport) -> anyhow::Result<()> {
    let now = Utc::now();
    let cutoff = now - options.grace;
    if let Some(days) = options.bronze_retention_days {
        let t = Instant::now();
        report.retention = Some(
            retain::retain(lake, &report.header.run_id, days, options.dry_run)
                .await
                .context("applying bronze's retention")?,
        );
        report
            .timings_ms
            .insert("retention", t.elapsed().as_millis() as u64);
    }
    if let Some(days) = options.outbox_retention_days {
        let t = Instant::now();
        report.outbox_retention = Some(
            retain::retain_outbox(lake, &report.header.run_id, days, options.dry_run)
                .await
                .context("applying the outbox's retention")?,
        );
        report
            .timings_ms
            .insert("outbox_retention", t.elapsed().as_millis() as u64);
    }
    if let Some(days) = options.silver_retention_days {
        let t = Instant::now();
        let planned = report
            .retention
            .as_ref()
            .and_then(|r| r.horizon)
            .filter(|_| options.dry_run);
        report.silver_retention = Some(
            retain::retain_silver(lake, &report.header.run_id, days, planned, options.dry_run)
                .await
                .context("applying silver's retention")?,
        );
        report
            .timings_ms
            .insert("silver_retention", t.elapsed().as_millis() as u64);
    }
    if options.compact {
        let t = Instant::now();
        report.compaction = Some(
            compact::compact(lake, &report.header.run_id, options.dry_run)
                .await
                .context("compacting closed bronze days")?,
        );
        report
            .timings_ms
            .insert("compaction", t.elapsed().as_millis() as u64);
    }
    let t = Instant::now();
    // References first, then the listings: whatever commits in between is
    // younger than the grace (see the gc module).
    let refs = gc::referenced(lake)
        .await
        .context("reading what the lake's logs reference (nothing was deleted)")?;
    report.referenced = refs.len() as u64;
    failpoint("before-sweep");
    report
        .timings_ms
        .insert("references", t.elapsed().as_millis() as u64);
    let t = Instant::now();
    for dataset in gc::SWEPT {
        let swept = gc::sweep(lake, &refs, dataset, cutoff, options.dry_run).await?;
        if swept.garbage > 0 {
            tracing::info!(
                prefix = %swept.prefix,
                objects = swept.garbage,
                bytes = swept.garbage_bytes,
                dry_run = options.dry_run,
                "Unreferenced objects older than the grace"
            );
        }
        report.prefixes.push(swept);
    }
    report
        .timings_ms
        .insert("sweep", t.elapsed().as_millis() as u64);
    let t = Instant::now();
    report.uploads =
        gc::abort_stale_uploads(lake, &refs, now - options.upload_grace, options.dry_run).await?;
    report
        .timings_ms
        .insert("uploads", t.elapsed().as_millis() as u64);
    let t = Instant::now();
    let kept = chrono::Duration::days(i64::from(options.reports_retention_days));
    report.reports = gc::expire_reports(lake, now - kept, options.dry_run).await?;
    report
        .timings_ms
        .insert("reports", t.elapsed().as_millis() as u64);
    Ok(())
}

/// The command line's run: opens the lake, runs, prints the summary.
pub async fn run_cli(
    config: LakeConfig,
    options: Options,
) -> anyhow::Result<lake_common::ExitStatus> {
    let lake = if options.dry_run {
        Lake::open_for_dry_run(&config)
    } else {
        Lake::open(&config)
    }
    .context("opening the lake")?;
    let report = run(&lake, &options).await?;
    lake_common::telemetry::emit_summary(JOB, &report.summary(), &report);
    Ok(lake_common::ExitStatus::Success)
}
