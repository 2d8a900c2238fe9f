//! Run reports: one JSON document per job run under `_runs/<job>/`.
//!
//! The report is the durable record of what a run did (rows, files, horizons,
//! findings, timings); logs rotate away, the report stays next to the data.

use chrono::{DateTime, Utc};
use object_store::path::Path;
use serde::Serialize;

use crate::paths;
use crate::store::Lake;

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
