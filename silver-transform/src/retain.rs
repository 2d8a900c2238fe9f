//! Retention of silver's partitions (SPEC §11): one version of a shard that
//! removes the partitions of the days before a horizon and publishes nothing.
//!
//! The version goes through the same log as a silver run (pinned with a lease,
//! committed, its removed files deleted as superseded), so a run of silver and
//! a retention racing on a shard are one winner and one exit 4, and a reader of
//! the manifests never sees half a retention. Every later version carries the
//! horizon (`retained_before`).
//!
//! **Only what is frozen.** The caller (lake-maintain) never asks for a horizon
//! later than bronze's: the partitions removed hold only executions that began
//! before bronze's horizon, which silver never folds again
//! ([`crate::incremental`]), so neither an incremental run nor a full refresh
//! brings them back and "incremental equals a full recompute" still holds.
//!
//! **Their key-index entries outlive them while they have events after the
//! horizon.** Such events (late ones, of a frozen execution) are in bronze, so
//! a full refresh reads them; it would fold them into an execution of their
//! own if the entry were gone, where the incremental runs had counted them as
//! late (issue #17, `lake-maintain/tests/retain.rs`). So an entry goes only
//! once its execution's last event is before the horizon too: bronze, whose
//! horizon is no earlier, holds none of its events, and a new event for it
//! starts an execution of its own in an incremental run and a full refresh
//! alike. Later events for an execution whose partition is gone are counted
//! and written nowhere ([`crate::incremental::Request::removed_before`]).

use std::time::Duration;

use anyhow::Context;
use chrono::NaiveDate;
use lake_common::Lake;
use lake_common::telemetry::exit_status_of;
use serde::Serialize;

use crate::index::KeyIndex;
use crate::key::{PartitionKey, Shard, day_of_date};
use crate::manifest::{self, Lease, PartitionRef, SilverManifest};
use crate::partitions::PartitionTable;
use crate::segments::{self, Segments, month_of_day};

/// What the retention of one shard did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ShardRetained {
    /// The shard (`shard-<i>-of-<n>`).
    pub shard: String,
    /// The version that records it (`None`: nothing committed).
    pub version: Option<u64>,
    /// Partitions removed (a dry run: would remove).
    pub partitions: u64,
    /// Silver rows in them.
    pub rows: u64,
    /// Quarantine rows in them.
    pub quarantine_rows: u64,
    /// Bytes of their files.
    pub bytes: u64,
    /// Why nothing was removed, when nothing was.
    pub skipped: Option<String>,
}

/// Removes `shard`'s partitions of the days before `before` through one
/// version of its log; a dry run only counts them. A shard another run is
/// writing, or one a crashed run left to recover, is skipped (its next
/// retention applies): the result says why.
pub async fn retain(
    lake: &Lake,
    shard: Shard,
    before: NaiveDate,
    run_id: &str,
    lease: Duration,
    dry_run: bool,
) -> anyhow::Result<ShardRetained> {
    let mut out = ShardRetained {
        shard: shard.to_string(),
        ..ShardRetained::default()
    };
    let skip = |mut out: ShardRetained, why: String| {
        tracing::info!(%shard, "No silver retention: {why}");
        out.skipped = Some(why);
        Ok(out)
    };
    let found = manifest::find(lake, shard)
        .await
        .context("reading silver's manifests")?;
    if let Some(b) = &found.busy {
        let why = format!("run {} holds version {}", b.claim.owner, b.version);
        return skip(out, why);
    }
    if !found.abandoned.is_empty() {
        return skip(
            out,
            "a crashed run's version waits for silver's next run to recover it".into(),
        );
    }
    let Some(committed) = found.committed else {
        return skip(out, "no committed version".into());
    };
    if committed.index.is_some() {
        return skip(
            out,
            "its key index predates monthly segments: the next silver run converts it".into(),
        );
    }
    let h = day_of_date(before);
    let mut table = PartitionTable::of(&committed)?;
    let months: Vec<_> = table
        .months()
        .into_iter()
        .filter(|m| *m <= month_of_day(h))
        .collect();
    table
        .load(lake, months)
        .await
        .context("reading silver's partition table")?;
    let mut doomed: Vec<PartitionKey> = Vec::new();
    let mut superseded = Vec::new();
    for r in table.records().filter(|r| r.key().day < h) {
        doomed.push(r.key());
        out.rows += r.silver.as_ref().map_or(0, |f| f.rows);
        out.quarantine_rows += r.quarantine.as_ref().map_or(0, |f| f.rows);
        for f in [&r.silver, &r.quarantine].into_iter().flatten() {
            out.bytes += f.bytes;
            superseded.push(f.path.clone());
        }
    }
    out.partitions = doomed.len() as u64;
    let mut segments =
        Segments::from_records(&committed.index_segments, committed.bloom_pack.as_ref())?;
    let stale_index = segments.ended_before(h);
    if doomed.is_empty() && !stale_index {
        return skip(out, format!("no partition of a day before {before}"));
    }
    if dry_run {
        return Ok(out);
    }

    let version = found.max_version + 1;
    let mut pending = SilverManifest::pending(shard, version, run_id, lease, "retention");
    pending.base_version = Some(committed.version);
    let lease = match Lease::pin(lake, pending, lease).await {
        Ok(l) => l,
        Err(e) if exit_status_of(e.as_ref()) == lake_common::ExitStatus::Busy => {
            return skip(out, lake_common::telemetry::error_text(&e));
        }
        Err(e) => return Err(e),
    };
    let written = async {
        for p in &doomed {
            table.remove(p);
        }
        // An execution of a removed partition keeps its entry while it has
        // events from the horizon on: bronze may hold them, and a full
        // refresh, finding the entry, treats them as late events of a frozen
        // execution, as the incremental runs did (module docs).
        let mut index = KeyIndex::default();
        segments.retire_ended_before(h);
        let ids: Vec<_> = segments.up_to(h).collect();
        segments.load(lake, ids, &mut index).await?;
        index.retain(|i| i.partition().day >= h || i.last_day >= h);
        let segments = segments
            .write(lake, shard, version, index, false, Vec::new())
            .await?;
        let (partition_months, table_months) = table.write(lake, shard, version).await?;
        let months = &segments.months | &table_months;
        Ok::<_, anyhow::Error>((segments, partition_months, months))
    };
    let (segments, partition_months, months) = match written.await {
        Ok(w) => w,
        Err(e) => return Err(lease.fail(e).await),
    };
    let mut m = SilverManifest::pending(shard, version, run_id, Duration::ZERO, "retention");
    m.base_version = Some(committed.version);
    m.consumed_batches = committed.consumed_batches;
    m.rewritten = doomed.iter().map(|p| PartitionRef::from(*p)).collect();
    m.index_keys = segments.segments.iter().map(|s| s.keys).sum();
    m.index_segments = segments.segments;
    m.bloom_pack = segments.pack;
    m.partition_months = partition_months;
    m.superseded = superseded;
    m.retained_before = Some(committed.retained_before.map_or(before, |b| b.max(before)));
    // Test-only: the kill -9 matrix of lake-maintain, which runs this.
    lake_common::failpoint::stop("MAINTAIN_FAILPOINT", "silver-retain-before-commit");
    let committed = lease.commit(m).await?;
    out.version = Some(version);
    tracing::info!(%shard, version, %before, partitions = out.partitions, rows = out.rows, "Committed a silver retention");
    crate::delete_superseded(lake, &committed).await?;
    if let Err(e) = segments::delete_replaced(lake, shard, &months, &committed).await {
        tracing::warn!(error = %e, "Could not delete replaced key index segments and partition months; the next run that writes their months does");
    }
    if let Err(e) = manifest::prune(lake, shard, version).await {
        tracing::warn!(error = %e, "Could not prune old silver manifest versions");
    }
    Ok(out)
}
