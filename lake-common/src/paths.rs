//! Canonical lake paths (SPEC §3).
//!
//! The paths *are* the catalog: Spark, DuckDB and pyarrow find the data by them,
//! and the manifests name files by them. So every path is built here, by typed
//! builders, and nowhere by ad-hoc formatting at a call site. All paths are
//! relative to the lake root ([`crate::store::Lake`] adds the bucket prefix).

use std::fmt;

use chrono::{DateTime, NaiveDate, Utc};
use object_store::path::Path;

/// A dataset of the lake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dataset {
    /// `bronze/events`: one row per `stop_events` row.
    BronzeEvents,
    /// `bronze/outbox`: one row per captured `outbox` row version.
    BronzeOutbox,
    /// `silver/stop_executions`: one row per execution.
    SilverStopExecutions,
    /// `silver/_quarantine/stop_executions`: executions that broke a quality rule.
    QuarantineStopExecutions,
}

impl Dataset {
    /// The dataset's directory under the lake root.
    pub fn dir(self) -> &'static str {
        match self {
            Self::BronzeEvents => "bronze/events",
            Self::BronzeOutbox => "bronze/outbox",
            Self::SilverStopExecutions => "silver/stop_executions",
            Self::QuarantineStopExecutions => "silver/_quarantine/stop_executions",
        }
    }

    /// The dataset's root path.
    pub fn root(self) -> Path {
        Path::from(self.dir())
    }

    /// The directory of the dataset's manifests (`_`-prefixed: readers skip it).
    pub fn manifests_dir(self) -> Path {
        self.root().join("_manifests")
    }

    /// The manifest of batch (or version) `n`: `_manifests/<n:010>.json`.
    /// Zero-padding makes lexical listing order equal numeric order.
    pub fn manifest(self, n: u64) -> Path {
        self.manifests_dir().join(format!("{n:010}.json"))
    }

    /// Parses the number back out of a manifest path; `None` for other files.
    pub fn manifest_number(path: &Path) -> Option<u64> {
        let name = path.filename()?;
        let digits = name.strip_suffix(".json")?;
        (digits.len() == 10 && digits.bytes().all(|b| b.is_ascii_digit()))
            .then(|| digits.parse().ok())
            .flatten()
    }

    /// The checkpoint of the state after batch (or version) `n`:
    /// `_manifests/<n:010>.checkpoint.json` (it sorts just before the entry of
    /// `n`, so a listing that starts after that entry skips it).
    pub fn checkpoint(self, n: u64) -> Path {
        self.manifests_dir()
            .join(format!("{n:010}.checkpoint.json"))
    }

    /// Parses the number back out of a checkpoint path; `None` for other files.
    pub fn checkpoint_number(path: &Path) -> Option<u64> {
        let digits = path.filename()?.strip_suffix(".checkpoint.json")?;
        (digits.len() == 10 && digits.bytes().all(|b| b.is_ascii_digit()))
            .then(|| digits.parse().ok())
            .flatten()
    }

    /// `_state/<n>.identity`: the row-identity state after batch `n` (the
    /// last captured version of every row the source still held), which a
    /// checkpoint references and retention never removes (SPEC §5.7). A
    /// Parquet file without the `.parquet` suffix, so that the documented
    /// globs (`…/*/*.parquet`) never read it as data.
    pub fn identity_state(self, n: u64) -> Path {
        self.root().join("_state").join(format!("{n:010}.identity"))
    }

    /// `_manifests/_last_checkpoint`: a hint naming the newest checkpoint.
    pub fn last_checkpoint(self) -> Path {
        self.manifests_dir().join("_last_checkpoint")
    }

    /// A Hive partition directory of this dataset.
    pub fn partition(self, partition: &Partition) -> Path {
        let mut path = self.root();
        if let Some(client) = partition.client_id {
            path = path.join(format!("client_id={client}"));
        }
        path.join(format!("date={}", partition.date.format("%Y-%m-%d")))
    }

    /// A bronze data file: `date=…/part-<batch:010>-<n:04>.parquet`. The batch number
    /// in the name makes a re-run of a pinned batch overwrite exactly its own files.
    pub fn batch_file(self, partition: &Partition, batch: u64, n: u32) -> Path {
        self.partition(partition)
            .join(format!("part-{batch:010}-{n:04}.parquet"))
    }

    /// A bronze data file whose bytes a re-execution may not reproduce (a
    /// backfill, an outbox batch): `part-<batch:010>-<n:04>-<attempt>.parquet`. A
    /// write still in flight from an attempt that lost its lease then lands under
    /// a name no manifest lists, never on a committed file (SPEC §5.6).
    pub fn attempt_file(self, partition: &Partition, batch: u64, n: u32, attempt: &str) -> Path {
        self.partition(partition)
            .join(format!("part-{batch:010}-{n:04}-{attempt}.parquet"))
    }
}

/// The batch number in a bronze file name (`part-<batch:010>-<n>….parquet`).
pub fn batch_of_file(path: &Path) -> Option<u64> {
    let rest = path.filename()?.strip_prefix("part-")?;
    rest.get(..10)?.parse().ok()
}

impl fmt::Display for Dataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.dir())
    }
}

/// The Hive partition values of a file: always a UTC date, for silver also a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Partition {
    /// `client_id=<id>` (silver only).
    pub client_id: Option<i64>,
    /// `date=YYYY-MM-DD`, the UTC calendar date.
    pub date: NaiveDate,
}

impl Partition {
    /// A date-only (bronze) partition.
    pub fn date(date: NaiveDate) -> Self {
        Self {
            client_id: None,
            date,
        }
    }

    /// A client and date (silver) partition.
    pub fn client_date(client_id: i64, date: NaiveDate) -> Self {
        Self {
            client_id: Some(client_id),
            date,
        }
    }

    /// Parses the partition out of a data file or directory path of `dataset`.
    pub fn parse(dataset: Dataset, path: &Path) -> Option<Self> {
        let rest = path
            .as_ref()
            .strip_prefix(dataset.dir())?
            .strip_prefix('/')?;
        let mut client_id = None;
        let mut date = None;
        for segment in rest.split('/') {
            if let Some(v) = segment.strip_prefix("client_id=") {
                client_id = Some(v.parse().ok()?);
            } else if let Some(v) = segment.strip_prefix("date=") {
                date = Some(NaiveDate::parse_from_str(v, "%Y-%m-%d").ok()?);
            }
        }
        Some(Self {
            client_id,
            date: date?,
        })
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(c) = self.client_id {
            write!(f, "client_id={c}/")?;
        }
        write!(f, "date={}", self.date.format("%Y-%m-%d"))
    }
}

/// The run report of one job run: `_runs/<job>/<UTC timestamp>-<run id>.json`.
/// The compact timestamp first makes the listing chronological.
pub fn run_report(job: &str, started_at: DateTime<Utc>, run_id: &str) -> Path {
    Path::from("_runs").join(job).join(format!(
        "{}-{run_id}.json",
        started_at.format("%Y%m%dT%H%M%S%.6fZ")
    ))
}

/// The directory of the run reports of `job`.
pub fn run_reports_dir(job: &str) -> Path {
    Path::from("_runs").join(job)
}

/// Where the smoke test writes its probe objects.
pub fn smoke_dir() -> Path {
    Path::from("_smoke")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn bronze_paths() {
        let p = Partition::date(d("2026-11-01"));
        assert_eq!(
            Dataset::BronzeEvents.batch_file(&p, 42, 3).as_ref(),
            "bronze/events/date=2026-11-01/part-0000000042-0003.parquet"
        );
        assert_eq!(
            Dataset::BronzeOutbox.manifest(7).as_ref(),
            "bronze/outbox/_manifests/0000000007.json"
        );
        assert_eq!(
            Dataset::manifest_number(&Dataset::BronzeEvents.manifest(7)),
            Some(7)
        );
        assert_eq!(
            Dataset::manifest_number(&Path::from("bronze/events/_manifests/x.json")),
            None
        );
        assert_eq!(
            Dataset::manifest_number(&Path::from("a/0000000001.json.tmp")),
            None
        );
    }

    #[test]
    fn silver_paths() {
        let p = Partition::client_date(17, d("2026-01-09"));
        assert_eq!(
            Dataset::SilverStopExecutions.partition(&p).as_ref(),
            "silver/stop_executions/client_id=17/date=2026-01-09"
        );
        assert_eq!(
            Dataset::QuarantineStopExecutions
                .partition(&Partition::date(d("2026-01-09")))
                .as_ref(),
            "silver/_quarantine/stop_executions/date=2026-01-09"
        );
        assert_eq!(p.to_string(), "client_id=17/date=2026-01-09");
    }

    #[test]
    fn partitions_round_trip() {
        for (ds, p) in [
            (
                Dataset::SilverStopExecutions,
                Partition::client_date(-3, d("2024-02-29")),
            ),
            (Dataset::BronzeEvents, Partition::date(d("1999-12-31"))),
        ] {
            let file = ds.partition(&p).join("part-0000000001-abc.parquet");
            assert_eq!(Partition::parse(ds, &file), Some(p));
        }
        assert_eq!(
            Partition::parse(
                Dataset::BronzeEvents,
                &Path::from("bronze/events/_manifests/1.json")
            ),
            None
        );
        assert_eq!(
            Partition::parse(
                Dataset::BronzeEvents,
                &Path::from("bronze/outbox/date=2024-01-01/x")
            ),
            None
        );
    }

    #[test]
    fn run_report_paths_sort_by_time() {
        let t1 = Utc.with_ymd_and_hms(2026, 11, 26, 9, 5, 0).unwrap();
        let t2 = Utc.with_ymd_and_hms(2026, 11, 26, 10, 0, 0).unwrap();
        let a = run_report("bronze-ingest", t1, "zzz");
        let b = run_report("bronze-ingest", t2, "aaa");
        assert_eq!(
            a.as_ref(),
            "_runs/bronze-ingest/20261126T090500.000000Z-zzz.json"
        );
        assert!(a.as_ref() < b.as_ref());
    }
}
