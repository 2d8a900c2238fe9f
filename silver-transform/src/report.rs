//! The run report written to `_runs/silver-transform/` (and logged).

use std::collections::BTreeMap;

use chrono::NaiveDate;
use lake_common::report::Header;
use serde::Serialize;

use crate::incremental::WorkStats;
use crate::quality::QualityReport;
use crate::summary::Summary;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Still running (never written).
    Running,
    /// Partitions were recomputed and committed.
    Success,
    /// No new bronze batch and nothing forced: nothing was written but this report.
    NothingNew,
    /// Published and committed, but the violation ratio exceeded the threshold (exit 3).
    QualityBreach,
    /// The run failed (exit 1 or 2); `error` says why.
    Failed,
}

impl Outcome {
    /// The name in reports and logs (as serialised).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Success => "success",
            Self::NothingNew => "nothing_new",
            Self::QualityBreach => "quality_breach",
            Self::Failed => "failed",
        }
    }
}

/// The shard of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ShardReport {
    /// Index.
    pub index: u32,
    /// Count.
    pub count: u32,
}

/// Partition counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PartitionCounts {
    /// Partitions recomputed.
    pub recomputed: u64,
    /// Silver partition files written.
    pub silver_files_written: u64,
    /// Quarantine files written.
    pub quarantine_files_written: u64,
    /// Partitions left empty and deleted.
    pub deleted: u64,
    /// Objects of crashed runs that no manifest listed, deleted before publishing.
    pub orphans_deleted: u64,
    /// The shard's partitions after the run.
    pub total: u64,
}

/// Row counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RowCounts {
    /// Executions written to silver.
    pub silver: u64,
    /// Quarantine rows written (one per broken rule).
    pub quarantine_rows: u64,
    /// Executions in the key index after the run.
    pub index_keys: u64,
}

/// The durable record of one run.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// Job, version, run id, times, lake, source (bronze), dry run, error.
    #[serde(flatten)]
    pub header: Header,
    /// `incremental`, `dates` or `full_refresh`.
    pub mode: String,
    /// Days forced by `--date` / `--from --to`.
    pub days: Option<(NaiveDate, NaiveDate)>,
    /// Shard.
    pub shard: ShardReport,
    /// Outcome.
    pub outcome: Outcome,
    /// The committed silver version the run started from.
    pub base_version: Option<u64>,
    /// The version the run committed.
    pub committed_version: Option<u64>,
    /// Bronze batches committed when the run looked.
    pub bronze_committed_batches: u64,
    /// Batches consumed for the first time (inclusive ranges).
    pub new_batches: Vec<[u64; 2]>,
    /// Days whose earlier bronze files a backfill superseded.
    pub superseded_days: Vec<NaiveDate>,
    /// Bronze's retention horizon: the executions begun before it are kept
    /// as they are (docs/maintenance.md, "Retention").
    pub retained_before: Option<NaiveDate>,
    /// Partitions of crashed runs recomputed again.
    pub recovered_partitions: u64,
    /// Work counters.
    pub work: WorkStats,
    /// What the run held at its largest, by the memory model, against its
    /// budget (`SILVER_MEMORY_MB`).
    pub memory: crate::memory::Held,
    /// Partition counters.
    pub partitions: PartitionCounts,
    /// Row counters.
    pub rows: RowCounts,
    /// Quality outcome (SPEC §7).
    pub quality: QualityReport,
    /// Summary statistics of the silver rows written.
    pub summary: Summary,
    /// Wall time per phase, milliseconds.
    pub timings_ms: BTreeMap<&'static str, u64>,
}
