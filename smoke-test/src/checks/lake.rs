//! Check 5: what is already in the lake is readable and fresh.
//!
//! The jobs refuse to run over a manifest they cannot parse, so a manifest
//! written by hand or by an incompatible version is a failure now rather than at
//! 3 a.m. Freshness compares the newest committed bronze batch (its snapshot time:
//! the data is complete up to then) with the bronze SLA, and the newest silver run
//! report with the silver SLA; staleness is a warning, because the deployment
//! works, the schedule does not.

use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use lake_common::Dataset;
use lake_common::manifest::{self, BatchManifest, BatchState, ManifestError};
use lake_common::paths::run_reports_dir;
use lake_common::store::Lake;

use super::{error_chain, human_duration, timed};
use crate::report::{CheckResult, Report};

/// Every manifest parses.
pub const MANIFESTS: &str = "lake.manifests";
/// The newest committed bronze batch is within the bronze SLA.
pub const BRONZE_FRESHNESS: &str = "lake.bronze_freshness";
/// The newest silver run is within the silver SLA.
pub const SILVER_FRESHNESS: &str = "lake.silver_freshness";
/// The checks of this module, in order.
pub const NAMES: &[&str] = &[MANIFESTS, BRONZE_FRESHNESS, SILVER_FRESHNESS];

/// Bronze freshness SLA: the CronJob runs hourly, so two hours means a run was missed.
pub const BRONZE_SLA: Duration = Duration::from_secs(2 * 3600);
/// Silver freshness SLA: the CronJob runs daily; two hours of slack.
pub const SILVER_SLA: Duration = Duration::from_secs(26 * 3600);

/// The bronze datasets, whose manifests this check reads.
const BRONZE: [Dataset; 2] = [Dataset::BronzeEvents, Dataset::BronzeOutbox];
/// The job whose run reports date silver.
const SILVER_JOB: &str = "silver-transform";

const TIMEOUT_FIX: &str = "listing the lake is too slow: check the endpoint's health; a lake with very many \
                           manifests needs compaction (SPEC section 11)";

/// Runs the lake checks; `lake` is `None` when the store is unreachable.
pub async fn run(lake: Option<&Lake>, limit: Duration, report: &mut Report) {
    let Some(lake) = lake else {
        report.skip_all(NAMES, "not run: the lake is not reachable (s3.bucket)");
        return;
    };
    let read = tokio::time::timeout(limit, read_manifests(lake)).await;
    let manifests = match read {
        Ok(Ok((manifests, silver))) => {
            report.push(CheckResult::pass(MANIFESTS, describe(&manifests, silver)));
            Some(manifests)
        }
        Ok(Err(result)) => {
            report.push(*result);
            None
        }
        Err(_) => {
            report.push(CheckResult::fail(
                MANIFESTS,
                format!("timed out after {}", human_duration(limit)),
                TIMEOUT_FIX,
            ));
            None
        }
    };
    let now = Utc::now();
    match manifests {
        Some(m) => report.push(bronze_freshness(&m, now)),
        None => report.push(CheckResult::skip(
            BRONZE_FRESHNESS,
            format!("not run: {MANIFESTS} failed"),
        )),
    }
    report.push(
        timed(
            SILVER_FRESHNESS,
            limit,
            TIMEOUT_FIX,
            silver_freshness(lake, now),
        )
        .await,
    );
}

/// Per bronze dataset: the number of manifests and the newest ones, parsed.
type Manifests = Vec<(Dataset, usize, Vec<BatchManifest>)>;

/// How many of the newest manifests of a dataset are parsed. A year of hourly
/// batches is almost 9000 manifests; what can break a run is a recent one (an
/// incompatible writer), and freshness needs only the newest committed.
const PARSED_PER_DATASET: usize = 100;

fn read_failure(dataset: Dataset, err: &ManifestError) -> Box<CheckResult> {
    Box::new(CheckResult::fail(
        MANIFESTS,
        format!(
            "cannot read the manifests of {dataset}: {}",
            error_chain(err)
        ),
        "the key needs read and list on the whole bucket, not only on _smoke/",
    ))
}

/// Reads the newest [`PARSED_PER_DATASET`] manifests of each bronze dataset (and
/// counts all of them) and checks that the silver ones are JSON (their format
/// belongs to silver-transform). Returns the parsed bronze manifests with each
/// dataset's total, and the number of silver manifests.
async fn read_manifests(lake: &Lake) -> Result<(Manifests, usize), Box<CheckResult>> {
    let mut all = Vec::new();
    for dataset in BRONZE {
        let batches = manifest::list_batches(lake, dataset)
            .await
            .map_err(|err| read_failure(dataset, &err))?;
        let newest = &batches[batches.len().saturating_sub(PARSED_PER_DATASET)..];
        let parsed: Vec<BatchManifest> = futures::stream::iter(newest.iter().copied())
            .map(|b| async move { manifest::read(lake, dataset, b).await.map(|v| v.manifest) })
            .buffered(16)
            .try_collect()
            .await
            .map_err(|err| match err {
                ManifestError::Parse { path, source } => Box::new(CheckResult::fail(
                    MANIFESTS,
                    format!("{path} is not a valid batch manifest: {source}"),
                    format!(
                        "the jobs refuse to run over it: restore the file from the store's versioning or move it \
                         out of {dataset}/_manifests/ after checking what wrote it"
                    ),
                )),
                other => read_failure(dataset, &other),
            })?;
        all.push((dataset, batches.len(), parsed));
    }
    let silver_dir = Dataset::SilverStopExecutions.manifests_dir();
    let store = lake.store();
    let silver: Vec<_> = store
        .list(Some(&silver_dir))
        .try_collect()
        .await
        .map_err(|err| {
            Box::new(CheckResult::fail(
                MANIFESTS,
                format!("cannot list {silver_dir}: {}", error_chain(&err)),
                "the key needs read and list on the whole bucket",
            ))
        })?;
    let mut count = 0;
    for meta in silver
        .iter()
        .filter(|m| m.location.as_ref().ends_with(".json"))
    {
        let bytes = match lake.get_bytes(&meta.location).await {
            Ok(b) => b,
            Err(err) => {
                return Err(Box::new(CheckResult::fail(
                    MANIFESTS,
                    format!("cannot read {}: {}", meta.location, error_chain(&err)),
                    "the key needs read on the whole bucket",
                )));
            }
        };
        if let Err(err) = serde_json::from_slice::<serde_json::Value>(&bytes) {
            return Err(Box::new(CheckResult::fail(
                MANIFESTS,
                format!("{} is not JSON: {err}", meta.location),
                "silver-transform refuses to run over it: restore the file or move it out of _manifests/",
            )));
        }
        count += 1;
    }
    Ok((all, count))
}

fn describe(manifests: &Manifests, silver: usize) -> String {
    let mut parts: Vec<String> = manifests
        .iter()
        .map(|(dataset, total, m)| {
            let pending = m.iter().filter(|b| b.state == BatchState::Pending).count();
            let scope = if *total > m.len() {
                format!(", newest {} parsed", m.len())
            } else {
                String::new()
            };
            match (total, pending) {
                (0, _) => format!("{dataset}: no batch yet"),
                (n, 0) => format!("{dataset}: {n} batches{scope}, none pending"),
                (n, p) => format!("{dataset}: {n} batches{scope}, {p} pending"),
            }
        })
        .collect();
    parts.push(format!("silver/stop_executions: {silver} manifests"));
    format!("manifests parse: {}", parts.join("; "))
}

fn bronze_freshness(manifests: &Manifests, now: DateTime<Utc>) -> CheckResult {
    let mut lines = Vec::new();
    let mut stale = Vec::new();
    let mut never = Vec::new();
    for (dataset, _, m) in manifests {
        let newest = m
            .iter()
            .filter(|b| b.state == BatchState::Committed)
            .max_by_key(|b| b.snapshot_time);
        match newest {
            None => never.push(dataset.to_string()),
            Some(b) => {
                let age = (now - b.snapshot_time).to_std().unwrap_or_default();
                lines.push(format!(
                    "{dataset} batch {} as of {} ({} ago)",
                    b.batch,
                    b.snapshot_time.format("%Y-%m-%dT%H:%M:%SZ"),
                    human_duration(age)
                ));
                if age > BRONZE_SLA {
                    stale.push(dataset.to_string());
                }
            }
        }
    }
    let sla = human_duration(BRONZE_SLA);
    if !never.is_empty() {
        lines.push(format!("no committed batch in {}", never.join(", ")));
        return CheckResult::warn(
            BRONZE_FRESHNESS,
            lines.join("; "),
            "run bronze-ingest once (kubectl apply -k deploy/jobs -l app.kubernetes.io/name=bronze-ingest); the hourly CronJob \
             keeps it fresh after that",
        );
    }
    if !stale.is_empty() {
        return CheckResult::warn(
            BRONZE_FRESHNESS,
            format!("older than the {sla} SLA: {}", lines.join("; ")),
            "look at the bronze-ingest CronJob's last runs: kubectl -n analytics-jobs get jobs \
             -l app.kubernetes.io/name=bronze-ingest, then kubectl logs on the newest",
        );
    }
    CheckResult::pass(
        BRONZE_FRESHNESS,
        format!("within the {sla} SLA: {}", lines.join("; ")),
    )
}

/// The start time in a run report's name, `<%Y%m%dT%H%M%S%.6fZ>-<id>.json`
/// (`lake_common::paths::run_report`).
pub(crate) fn report_time(file_name: &str) -> Option<DateTime<Utc>> {
    let stamp = file_name.split_once('-')?.0;
    NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%S%.fZ")
        .ok()
        .map(|t| t.and_utc())
}

async fn silver_freshness(lake: &Lake, now: DateTime<Utc>) -> CheckResult {
    let dir = run_reports_dir(SILVER_JOB);
    let listed: Result<Vec<_>, _> = lake.store().list(Some(&dir)).try_collect().await;
    let metas = match listed {
        Ok(m) => m,
        Err(err) => {
            return CheckResult::fail(
                SILVER_FRESHNESS,
                format!("cannot list {dir}: {}", error_chain(&err)),
                "the key needs read and list on the whole bucket",
            );
        }
    };
    let newest = metas
        .iter()
        .filter_map(|m| {
            let name = m.location.filename()?;
            report_time(name.strip_suffix(".json")?)
        })
        .max();
    let sla = human_duration(SILVER_SLA);
    match newest {
        None => CheckResult::warn(
            SILVER_FRESHNESS,
            format!("no silver-transform run report in {dir}/"),
            "run silver-transform once after bronze (kubectl apply -k deploy/jobs -l app.kubernetes.io/name=silver-transform); the \
             daily CronJob keeps it fresh after that",
        ),
        Some(t) => {
            let age = (now - t).to_std().unwrap_or_default();
            let line = format!(
                "last silver-transform run started {} ({} ago)",
                t.format("%Y-%m-%dT%H:%M:%SZ"),
                human_duration(age)
            );
            if age > SILVER_SLA {
                CheckResult::warn(
                    SILVER_FRESHNESS,
                    format!("{line}, older than the {sla} SLA"),
                    "look at the silver-transform CronJob's last runs: kubectl -n analytics-jobs get jobs \
                     -l app.kubernetes.io/name=silver-transform, then kubectl logs on the newest",
                )
            } else {
                CheckResult::pass(SILVER_FRESHNESS, format!("{line}, within the {sla} SLA"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Status;
    use chrono::TimeZone;

    #[test]
    fn run_report_names_parse() {
        let t = Utc.with_ymd_and_hms(2026, 11, 26, 9, 5, 0).unwrap();
        let path = lake_common::paths::run_report("silver-transform", t, "abc123");
        let name = path.filename().unwrap().strip_suffix(".json").unwrap();
        assert_eq!(report_time(name), Some(t));
        assert_eq!(report_time("notes.txt"), None);
    }

    fn batch(n: u64, state: BatchState, at: DateTime<Utc>) -> BatchManifest {
        BatchManifest {
            format: manifest::MANIFEST_FORMAT,
            dataset: "bronze/events".into(),
            batch: n,
            state,
            h_prev: None,
            h: 10,
            xmax: 10,
            snapshot_time: at,
            scan_from: None,
            system_identifier: "1".into(),
            timeline: None,
            wal_lsn: None,
            relfilenode: None,
            drop_captured: false,
            drop_captured_below: None,
            backfill_days: vec![],
            added_columns: vec![],
            claim: lake_common::commit::Claim {
                owner: "r".into(),
                ..Default::default()
            },
            committed_at: Some(at),
            files: vec![],
            supersedes: vec![],
            compacted_days: vec![],
            pruned_days: vec![],
            retained_before: None,
            rows: 0,
        }
    }

    #[test]
    fn bronze_freshness_uses_the_newest_committed_batch() {
        let now = Utc::now();
        let fresh = now - chrono::Duration::minutes(30);
        let old = now - chrono::Duration::hours(5);
        let m = vec![
            (
                Dataset::BronzeEvents,
                3,
                vec![
                    batch(1, BatchState::Committed, old),
                    batch(2, BatchState::Committed, fresh),
                    batch(3, BatchState::Pending, now),
                ],
            ),
            (
                Dataset::BronzeOutbox,
                1,
                vec![batch(1, BatchState::Committed, fresh)],
            ),
        ];
        let r = bronze_freshness(&m, now);
        assert_eq!(r.status, Status::Pass, "{r:?}");
        assert!(r.detail.contains("bronze/events batch 2"), "{}", r.detail);

        let m = vec![(
            Dataset::BronzeEvents,
            1,
            vec![batch(1, BatchState::Committed, old)],
        )];
        let r = bronze_freshness(&m, now);
        assert_eq!(r.status, Status::Warn);
        assert!(
            r.detail.contains("older than the 2h 00m SLA"),
            "{}",
            r.detail
        );

        let m = vec![(
            Dataset::BronzeEvents,
            1,
            vec![batch(1, BatchState::Pending, now)],
        )];
        let r = bronze_freshness(&m, now);
        assert_eq!(r.status, Status::Warn);
        assert!(
            r.detail.contains("no committed batch in bronze/events"),
            "{}",
            r.detail
        );
    }
}
