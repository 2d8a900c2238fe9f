//! `lake status`: what the lake holds and whether it is fresh, for a person at a
//! terminal and for a CronJob (`--json`, non-zero exit when stale).
//!
//! It reads what the jobs themselves read, and only that: each bronze
//! dataset's log through its checkpoint (a handful of requests whatever the
//! lake's age), each silver shard's newest manifests (a shard keeps only its
//! last few versions), and the newest run report of each job, listed from a
//! week back (report names start with their time). It writes nothing.

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
    /// Set when the newest run saw the transaction horizon held (an open
    /// transaction in PostgreSQL): since when it has not moved. Rows committed
    /// after it wait for it; bronze is complete only up to then.
    pub horizon_held_since: Option<DateTime<Utc>>,
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

/// One silver shard's committed state (its manifest log).
#[derive(Debug, Serialize)]
pub struct SilverShardStatus {
    /// `shard-<i>-of-<n>`.
    pub shard: String,
    /// The latest committed version.
    pub committed_version: Option<u64>,
    /// When it was committed.
    pub committed_at: Option<DateTime<Utc>>,
    /// The newest bronze batch it has consumed (bronze's newest committed
    /// batch of `bronze/events` is in `bronze`: the difference is silver's lag).
    pub bronze_batch_consumed: Option<u64>,
    /// Partitions (client × day).
    pub partitions: u64,
    /// Silver files, their executions and bytes.
    pub files: u64,
    /// Executions in silver.
    pub rows: u64,
    /// Bytes of the silver files.
    pub bytes: u64,
    /// Quarantined rows (one per broken rule).
    pub quarantine_rows: u64,
    /// A version pinned by a run still holding its lease.
    pub pending: Option<SilverPending>,
}

/// A silver version pinned and not committed yet.
#[derive(Debug, Serialize)]
pub struct SilverPending {
    /// Its number.
    pub version: u64,
    /// The run that pinned it.
    pub owner: String,
    /// Until when that run may write.
    pub lease_expires_at: Option<DateTime<Utc>>,
}

/// `lease until <time>`, or `no lease`.
fn lease_text(until: Option<DateTime<Utc>>) -> String {
    until.map_or("no lease".to_owned(), |t| format!("lease until {t}"))
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
    /// When a run last succeeded (for silver: the oldest of its shards' last
    /// successes), within a week.
    pub last_success: Option<DateTime<Utc>>,
    /// For silver: a shard without a success within its SLA.
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
    /// Silver, per shard of the lake's layout.
    pub silver: Vec<SilverShardStatus>,
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
            if let Some(t) = d.horizon_held_since {
                let _ = write!(o, "; horizon HELD since {} by an open transaction", at(t));
            }
            if let Some(p) = &d.pending {
                let lease = lease_text(p.lease_expires_at);
                let _ = write!(o, "; batch {} pending ({}, {lease})", p.batch, p.owner);
            }
            o.push('\n');
        }
        for s in &self.silver {
            let committed = match (s.committed_version, s.committed_at) {
                (Some(v), Some(t)) => format!(
                    "version {v} committed {}, bronze batches up to {}",
                    at(t),
                    s.bronze_batch_consumed
                        .map_or("none".to_owned(), |b| b.to_string())
                ),
                _ => "no committed version".to_owned(),
            };
            let _ = write!(
                o,
                "  silver {:<9} {committed}; {} partitions, {} executions in {} files, {:.1} MiB; {} quarantined",
                s.shard,
                s.partitions,
                s.rows,
                s.files,
                s.bytes as f64 / 1048576.0,
                s.quarantine_rows
            );
            if let Some(p) = &s.pending {
                let lease = lease_text(p.lease_expires_at);
                let _ = write!(o, "; version {} pending ({}, {lease})", p.version, p.owner);
            }
            o.push('\n');
        }
        for j in &self.jobs {
            let line = match (j.started_at, &j.outcome) {
                (Some(t), outcome) => format!(
                    "last run {}: {}{}{}",
                    at(t),
                    outcome.as_deref().unwrap_or("unknown"),
                    j.error
                        .as_deref()
                        .map(|e| format!(" — {e}"))
                        .unwrap_or_default(),
                    match j.last_success {
                        Some(s) if s != t => format!("; last success {}", at(s)),
                        None => "; no success within a week".to_owned(),
                        _ => String::new(),
                    }
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
        silver: Vec::new(),
        jobs: Vec::new(),
        stale: Vec::new(),
    };
    let mut bronze_reports = Reports::list(lake, "bronze-ingest", now).await?;
    let mut silver_reports = Reports::list(lake, "silver-transform", now).await?;
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
        // Complete up to the newest committed batch, or to a later run that
        // found nothing new (a quiet source writes no batch), unless that run
        // saw the horizon held: then only up to the batch that reached it.
        let newest_run = bronze_reports
            .newest(lake, |r| {
                let d = r["datasets"]
                    .as_array()?
                    .iter()
                    .find(|d| d["dataset"] == dataset.to_string())?;
                match (d["outcome"].as_str()?, d.get("horizon_held")) {
                    ("committed" | "nothing_new", Some(h)) => Some((time(&h["since"])?, true)),
                    ("committed" | "nothing_new", None) => {
                        Some((time(&r["snapshot_time"])?, false))
                    }
                    _ => None,
                }
            })
            .await?;
        let quiet = newest_run.map(|(t, _)| t);
        let horizon_held_since = newest_run.and_then(|(t, held)| held.then_some(t));
        let fresh_as_of = committed.map(|m| m.snapshot_time).max(quiet);
        let stale = fresh_as_of.is_none_or(|t| age(now, t) > BRONZE_SLA);
        if stale {
            status.stale.push(match fresh_as_of {
                Some(t) => format!(
                    "{dataset} complete only up to {} ago (SLA {})",
                    human_duration(age(now, t)),
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
            horizon_held_since,
            files: live.len() as u64,
            bytes: live.iter().map(|f| f.file.bytes).sum(),
            stale,
        });
    }
    status.silver = silver_shards(lake).await?;
    for (job, reports) in [
        ("bronze-ingest", &mut bronze_reports),
        ("silver-transform", &mut silver_reports),
    ] {
        let newest = reports.read_newest(lake).await?;
        let field = |name: &str| {
            newest
                .as_ref()
                .and_then(|(_, r)| r.get(name)?.as_str().map(str::to_owned))
        };
        let success = |r: &serde_json::Value| {
            matches!(r["outcome"].as_str(), Some("success" | "nothing_new"))
        };
        let (last_success, stale) = if job == "silver-transform" {
            // Every shard must have succeeded within the SLA.
            let count = newest
                .as_ref()
                .and_then(|(_, r)| r["shard"]["count"].as_u64())
                .unwrap_or(1);
            let mut oldest: Option<DateTime<Utc>> = None;
            let mut missing = Vec::new();
            for shard in 0..count {
                let t = reports
                    .newest(lake, |r| {
                        (r["shard"]["index"].as_u64().unwrap_or(0) == shard && success(r))
                            .then(|| time(&r["started_at"]))?
                    })
                    .await?;
                match t {
                    Some(t) if age(now, t) <= SILVER_SLA => {
                        oldest = Some(oldest.map_or(t, |o| o.min(t)));
                    }
                    Some(t) => {
                        oldest = Some(oldest.map_or(t, |o| o.min(t)));
                        missing.push(format!("shard {shard}"));
                    }
                    None => missing.push(format!("shard {shard}")),
                }
            }
            if !missing.is_empty() {
                status.stale.push(format!(
                    "no successful {job} run of {} within its SLA of {}",
                    missing.join(", "),
                    human_duration(SILVER_SLA)
                ));
            }
            (oldest, !missing.is_empty())
        } else {
            let t = reports
                .newest(lake, |r| success(r).then(|| time(&r["started_at"]))?)
                .await?;
            (t, false)
        };
        status.jobs.push(JobStatus {
            job: job.to_owned(),
            started_at: newest.as_ref().map(|(t, _)| *t),
            outcome: field("outcome"),
            error: field("error"),
            last_success,
            stale,
        });
    }
    Ok(status)
}

/// Every shard of the lake's current shard layout: the latest committed
/// manifest of each. A re-sharding leaves the old layout's logs behind (their
/// partitions deleted): the current layout is the one committed last.
async fn silver_shards(lake: &Lake) -> anyhow::Result<Vec<SilverShardStatus>> {
    use silver_transform::key::Shard;
    use silver_transform::manifest;
    let mut layouts = Vec::new();
    for count in manifest::shard_counts(lake).await? {
        let mut out = Vec::new();
        for index in 0..count {
            let shard = Shard { index, count };
            let found = manifest::find(lake, shard).await?;
            let c = found.committed.as_ref();
            let t = c
                .map(silver_transform::partitions::totals)
                .unwrap_or_default();
            out.push(SilverShardStatus {
                shard: shard.to_string(),
                committed_version: c.map(|m| m.version),
                committed_at: c.and_then(|m| m.committed_at),
                bronze_batch_consumed: c
                    .and_then(|m| m.consumed_batches.iter().map(|r| r[1]).max()),
                partitions: t.partitions,
                files: t.silver_files,
                rows: t.silver_rows,
                bytes: t.silver_bytes,
                quarantine_rows: t.quarantine_rows,
                pending: found.busy.as_ref().map(|m| SilverPending {
                    version: m.version,
                    owner: m.claim.owner.clone(),
                    lease_expires_at: m.claim.lease_expires_at,
                }),
            });
        }
        let newest = out.iter().filter_map(|s| s.committed_at).max();
        layouts.push((newest, out));
    }
    Ok(layouts
        .into_iter()
        .max_by_key(|(newest, _)| *newest)
        .map(|(_, shards)| shards)
        .unwrap_or_default())
}

fn age(now: DateTime<Utc>, t: DateTime<Utc>) -> Duration {
    (now - t).to_std().unwrap_or_default()
}

fn time(v: &serde_json::Value) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(v.as_str()?)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// How many of a job's newest reports are read at most to find a success.
const MAX_REPORTS_READ: usize = 48;

/// A job's run reports of the last [`REPORTS_SINCE`], newest first. Each is
/// fetched at most once, on first use, however many questions are asked of it.
struct Reports {
    listed: Vec<(DateTime<Utc>, object_store::path::Path)>,
    read: Vec<serde_json::Value>,
}

impl Reports {
    /// Lists them from a week back (names start with the start time, so the
    /// listing does not grow with the lake's age).
    async fn list(lake: &Lake, job: &str, now: DateTime<Utc>) -> anyhow::Result<Self> {
        let since = now - chrono::Duration::from_std(REPORTS_SINCE)?;
        let offset = run_report(job, since, "");
        let dir = run_reports_dir(job);
        let found: Vec<_> = lake
            .store()
            .list_with_offset(Some(&dir), &offset)
            .try_collect()
            .await?;
        let mut listed: Vec<_> = found
            .iter()
            .filter_map(|m| {
                let name = m.location.filename()?.strip_suffix(".json")?;
                Some((crate::checks::lake::report_time(name)?, m.location.clone()))
            })
            .collect();
        listed.sort_by_key(|r| std::cmp::Reverse(r.0));
        Ok(Self {
            listed,
            read: Vec::new(),
        })
    }

    /// The `i`-th newest report, fetched if it was not yet.
    async fn get(&mut self, lake: &Lake, i: usize) -> anyhow::Result<&serde_json::Value> {
        while self.read.len() <= i {
            let path = &self.listed[self.read.len()].1;
            self.read
                .push(serde_json::from_slice(&lake.get_bytes(path).await?)?);
        }
        Ok(&self.read[i])
    }

    /// The newest report, with its start time.
    async fn read_newest(
        &mut self,
        lake: &Lake,
    ) -> anyhow::Result<Option<(DateTime<Utc>, serde_json::Value)>> {
        let Some(&(t, _)) = self.listed.first() else {
            return Ok(None);
        };
        Ok(Some((t, self.get(lake, 0).await?.clone())))
    }

    /// `pick` of the newest report (of the [`MAX_REPORTS_READ`] newest) for
    /// which it gives something.
    async fn newest<T>(
        &mut self,
        lake: &Lake,
        pick: impl Fn(&serde_json::Value) -> Option<T>,
    ) -> anyhow::Result<Option<T>> {
        for i in 0..self.listed.len().min(MAX_REPORTS_READ) {
            if let Some(found) = pick(self.get(lake, i).await?) {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }
}
