//! `lake status`: what the lake holds and whether it is fresh, for a person at a
//! terminal and for a CronJob (`--json`, non-zero exit when stale).
//!
//! It reads what the jobs themselves read, and only that: each bronze
//! dataset's log through its checkpoint (a handful of requests whatever the
//! lake's age), and the newest run report of each job, listed from a week back
//! (report names start with their time). It writes nothing.

use std::fmt::Write as _;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use lake_common::manifest::{BatchState, BronzeLog};
use lake_common::paths::{run_report, run_reports_dir};
use lake_common::{Dataset, ExitStatus, Lake};
use serde::Serialize;

use crate::checks::human_duration;
use crate::checks::lake::{BRONZE_SLA, SILVER_SLA};

/// How far back the newest run report is looked for.
const REPORTS_SINCE: Duration = Duration::from_secs(8 * 86_400);

/// One bronze dataset.
#[derive(Debug, Serialize)]
pub struct DatasetStatus {
    /// `bronze/events`, `bronze/outbox`.
    pub dataset: String,
    /// The newest committed batch.
    pub committed_batch: Option<u64>,
    /// Its snapshot: the dataset is complete up to then.
    pub fresh_as_of: Option<DateTime<Utc>>,
    /// A batch pinned and not committed yet, with its owner and lease.
    pub pending: Option<Pending>,
    /// Live data files and their bytes.
    pub files: u64,
    /// Bytes of the live files.
    pub bytes: u64,
    /// Older than the SLA (or never committed).
    pub stale: bool,
}

/// A pending batch.
#[derive(Debug, Serialize)]
pub struct Pending {
    /// Its number.
    pub batch: u64,
    /// The run that pinned it.
    pub owner: String,
    /// Until when that run may write (past: the next run takes it over).
    pub lease_expires_at: Option<DateTime<Utc>>,
}

/// The newest run of one job.
#[derive(Debug, Serialize)]
pub struct JobStatus {
    /// `bronze-ingest`, `silver-transform`.
    pub job: String,
    /// When its newest run (within a week) started.
    pub started_at: Option<DateTime<Utc>>,
    /// Its `outcome`, as the report says.
    pub outcome: Option<String>,
    /// Its `error`, if it failed.
    pub error: Option<String>,
    /// For silver: older than its SLA, or no run within a week.
    pub stale: bool,
}

/// The whole status.
#[derive(Debug, Serialize)]
pub struct LakeStatus {
    /// The lake, without secrets.
    pub lake: String,
    /// When it was read.
    pub checked_at: DateTime<Utc>,
    /// Bronze, per dataset.
    pub bronze: Vec<DatasetStatus>,
    /// The newest run of each job.
    pub jobs: Vec<JobStatus>,
    /// What is stale, one line each (empty: fresh).
    pub stale: Vec<String>,
}

impl LakeStatus {
    /// 0 when fresh, 1 when something is stale (SPEC §8's runtime failure: a
    /// CronJob running `lake status` then fails and alerts).
    pub fn exit_status(&self) -> ExitStatus {
        if self.stale.is_empty() {
            ExitStatus::Success
        } else {
            ExitStatus::Failure
        }
    }

    /// The human text.
    pub fn to_text(&self) -> String {
        let mut o = String::new();
        let at = |t: DateTime<Utc>| {
            let age = (self.checked_at - t).to_std().unwrap_or_default();
            format!(
                "{} ({} ago)",
                t.format("%Y-%m-%dT%H:%M:%SZ"),
                human_duration(age)
            )
        };
        let _ = writeln!(
            o,
            "lake {} at {}",
            self.lake,
            self.checked_at.format("%Y-%m-%dT%H:%M:%SZ")
        );
        for d in &self.bronze {
            let committed = match (d.committed_batch, d.fresh_as_of) {
                (Some(b), Some(t)) => format!("batch {b}, complete up to {}", at(t)),
                _ => "no committed batch".to_owned(),
            };
            let _ = write!(
                o,
                "  {:<16} {committed}; {} files, {:.1} MiB",
                d.dataset,
                d.files,
                d.bytes as f64 / 1048576.0
            );
            if let Some(p) = &d.pending {
                let lease = p
                    .lease_expires_at
                    .map_or("no lease".to_owned(), |t| format!("lease until {t}"));
                let _ = write!(o, "; batch {} pending ({}, {lease})", p.batch, p.owner);
            }
            o.push('\n');
        }
        for j in &self.jobs {
            let line = match (j.started_at, &j.outcome) {
                (Some(t), outcome) => format!(
                    "last run {}: {}{}",
                    at(t),
                    outcome.as_deref().unwrap_or("unknown"),
                    j.error
                        .as_deref()
                        .map(|e| format!(" — {e}"))
                        .unwrap_or_default()
                ),
                (None, _) => "no run in the last week".to_owned(),
            };
            let _ = writeln!(o, "  {:<16} {line}", j.job);
        }
        if self.stale.is_empty() {
            let _ = writeln!(
                o,
                "status: fresh (bronze within {}, silver within {})",
                human_duration(BRONZE_SLA),
                human_duration(SILVER_SLA)
            );
        } else {
            let _ = writeln!(o, "status: STALE: {}", self.stale.join("; "));
        }
        o
    }
}

/// Reads the status of `lake` as of `now`.
pub async fn read(lake: &Lake, now: DateTime<Utc>) -> anyhow::Result<LakeStatus> {
    let mut status = LakeStatus {
        lake: lake.description().to_owned(),
        checked_at: now,
        bronze: Vec::new(),
        jobs: Vec::new(),
        stale: Vec::new(),
    };
    for dataset in [Dataset::BronzeEvents, Dataset::BronzeOutbox] {
        let log = BronzeLog::load(lake, dataset).await?;
        let committed = log.latest_committed();
        let live = log.live_files();
        let pending = log
            .latest()
            .filter(|m| m.state == BatchState::Pending)
            .map(|m| Pending {
                batch: m.batch,
                owner: m.claim.owner.clone(),
                lease_expires_at: m.claim.lease_expires_at,
            });
        let fresh_as_of = committed.map(|m| m.snapshot_time);
        let stale = fresh_as_of.is_none_or(|t| (now - t).to_std().unwrap_or_default() > BRONZE_SLA);
        if stale {
            status.stale.push(match fresh_as_of {
                Some(t) => format!(
                    "{dataset} complete only up to {} ago (SLA {})",
                    human_duration((now - t).to_std().unwrap_or_default()),
                    human_duration(BRONZE_SLA)
                ),
                None => format!("{dataset} has no committed batch"),
            });
        }
        status.bronze.push(DatasetStatus {
            dataset: dataset.to_string(),
            committed_batch: committed.map(|m| m.batch),
            fresh_as_of,
            pending,
            files: live.len() as u64,
            bytes: live.iter().map(|f| f.file.bytes).sum(),
            stale,
        });
    }
    for job in ["bronze-ingest", "silver-transform"] {
        let newest = newest_report(lake, job, now).await?;
        let field = |name: &str| {
            newest
                .as_ref()
                .and_then(|(_, r)| r.get(name)?.as_str().map(str::to_owned))
        };
        let started_at = newest.as_ref().map(|(t, _)| *t);
        let stale = job == "silver-transform"
            && started_at.is_none_or(|t| (now - t).to_std().unwrap_or_default() > SILVER_SLA);
        if stale {
            status.stale.push(format!(
                "no {job} run within its SLA of {}",
                human_duration(SILVER_SLA)
            ));
        }
        status.jobs.push(JobStatus {
            job: job.to_owned(),
            started_at,
            outcome: field("outcome"),
            error: field("error"),
            stale,
        });
    }
    Ok(status)
}

/// The newest run report of `job` started within [`REPORTS_SINCE`], with its
/// start time (from its name) and content.
async fn newest_report(
    lake: &Lake,
    job: &str,
    now: DateTime<Utc>,
) -> anyhow::Result<Option<(DateTime<Utc>, serde_json::Value)>> {
    let since = now - chrono::Duration::from_std(REPORTS_SINCE)?;
    let offset = run_report(job, since, "");
    let dir = run_reports_dir(job);
    let listed: Vec<_> = lake
        .store()
        .list_with_offset(Some(&dir), &offset)
        .try_collect()
        .await?;
    let Some(newest) = listed
        .iter()
        .filter_map(|m| {
            let name = m.location.filename()?.strip_suffix(".json")?;
            Some((crate::checks::lake::report_time(name)?, m.location.clone()))
        })
        .max_by_key(|(t, _)| *t)
    else {
        return Ok(None);
    };
    let bytes = lake.get_bytes(&newest.1).await?;
    Ok(Some((newest.0, serde_json::from_slice(&bytes)?)))
}
