//! Run reports: one JSON document per job run under `_runs/<job>/`.
//!
//! The report is the durable record of what a run did (rows, files, horizons,
//! findings, timings); logs rotate away, the report stays next to the data.

use chrono::{DateTime, Utc};
use object_store::path::Path;
use serde::Serialize;

use crate::paths;
use crate::store::Lake;

/// The fields every job's run report starts with (one schema for all jobs,
/// flattened into each report): who ran, from which source into which lake,
/// when, and the error of a failed run. Each job adds its own `outcome` and
/// counters after them.
#[derive(Debug, Clone, Serialize)]
pub struct Header {
    /// Job (binary) name.
    pub job: &'static str,
    /// Binary version (the workspace's: every job shares it).
    pub version: &'static str,
    /// The git commit it was built from.
    pub commit: &'static str,
    /// Run id (also the owner of its pending manifests).
    pub run_id: String,
    /// Start.
    pub started_at: DateTime<Utc>,
    /// End (the start until the run ends).
    pub finished_at: DateTime<Utc>,
    /// The lake, without secrets.
    pub lake: String,
    /// What the run read, without secrets (a database, or the bronze dataset).
    pub source: String,
    /// Whether nothing was written.
    pub dry_run: bool,
    /// The error line of a failed run (`null` otherwise).
    pub error: Option<String>,
}

/// Identity of one run of a job.
#[derive(Debug, Clone)]
pub struct Run {
    /// Job (binary) name.
    pub job: &'static str,
    /// Unique id of the run (also the owner name in pending manifests).
    pub id: String,
    /// When the run started.
    pub started_at: DateTime<Utc>,
}

impl Run {
    /// Starts a new run of `job` with a fresh random id.
    pub fn start(job: &'static str) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Self {
            job,
            id: id[..12].to_owned(),
            started_at: Utc::now(),
        }
    }

    /// The report header of this run in `lake`, reading `source`.
    pub fn header(&self, lake: &Lake, source: String, dry_run: bool) -> Header {
        Header {
            job: self.job,
            version: env!("CARGO_PKG_VERSION"),
            commit: env!("LAKE_GIT_COMMIT"),
            run_id: self.id.clone(),
            started_at: self.started_at,
            finished_at: self.started_at,
            lake: lake.description().to_owned(),
            source,
            dry_run,
            error: None,
        }
    }

    /// Where this run's report goes.
    pub fn report_path(&self) -> Path {
        paths::run_report(self.job, self.started_at, &self.id)
    }

    /// Writes the report; returns its path.
    pub async fn write_report<T: Serialize>(
        &self,
        lake: &Lake,
        report: &T,
    ) -> anyhow::Result<Path> {
        let path = self.report_path();
        let bytes = serde_json::to_vec_pretty(report)?;
        lake.put(&path, bytes.into()).await?;
        Ok(path)
    }
}
