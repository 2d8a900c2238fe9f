//! Source identity (SPEC §5.5): is this still the database the lake's last
//! batch came from, with everything that batch saw?
//!
//! Each batch records the cluster's `system_identifier`, its timeline and the
//! WAL position of its snapshot. Before a new batch:
//!
//! * another `system_identifier` (pg_upgrade, a restore into a new cluster, the
//!   wrong database) stops the run;
//! * a WAL position behind the last batch's (a restore, a failover to a replica
//!   that lagged: its xids above the promotion point are reused, so horizons
//!   alone cannot see it) stops the run;
//! * a new timeline (a promotion) is accepted if the new primary holds every row
//!   of the latest committed events batch with rows — a planned switchover that
//!   lost nothing goes on — and stops the run otherwise (also when there is no
//!   such batch to check against).
//!
//! Each stop is a configuration error (exit 2: the Job is not retried) whose
//! message says what changed and what to do: after checking, `--rebase` adopts
//! the source as it is now and commits only the rows bronze does not hold yet
//! (row identity), so nothing is lost that the source still has and nothing is
//! duplicated over the overlap.

use lake_common::manifest::{self, BatchManifest};
use lake_common::schema::SourceTable;
use lake_common::{Classified, Dataset, ExitStatus, Lake, parquet_io};
use object_store::path::Path;
use tokio_postgres::Client;

use crate::horizon::{Snapshot, lsn_value};

/// What to run after deciding the new source is the lake's source.
const ADOPT: &str = "If it is the lake's source (after an upgrade, a restore or a failover), run \
                     `bronze-ingest --rebase` once: it adopts the source as it is now and commits \
                     only rows bronze does not hold yet; otherwise point the job at the right \
                     database or at a new lake";

fn stop(message: String) -> anyhow::Error {
    Classified::new(ExitStatus::Usage, message).into()
}

/// Exit 4 when `last` (the latest batch) was taken from a newer snapshot than
/// `snapshot` (the server's own clock): another run exported while this one
/// started. Its WAL position or horizon being ahead of this snapshot's is then
/// no rollback of the database (a restored or promoted server's snapshot is
/// newer than the last batch, its position older).
pub(crate) fn overtaken(
    dataset: Dataset,
    last: &BatchManifest,
    snapshot: &Snapshot,
) -> Option<anyhow::Error> {
    (last.snapshot_time > snapshot.time).then(|| {
        Classified::new(
            ExitStatus::Busy,
            format!(
                "{dataset}: batch {} was taken from a newer snapshot ({}) by another run than this run's ({}); exiting without writing",
                last.batch, last.snapshot_time, snapshot.time
            ),
        )
        .into()
    })
}

/// Checks that `snapshot` comes from the source of `last` (the dataset's
/// latest batch). On a new timeline the latest committed events batch with
/// rows (whichever dataset runs: both come from the one database) must still
/// be whole in the source.
pub async fn check(
    lake: &Lake,
    client: &Client,
    table: &SourceTable,
    last: &BatchManifest,
    snapshot: &Snapshot,
) -> anyhow::Result<()> {
    let dataset = table.dataset;
    if last.system_identifier != snapshot.system_identifier {
        return Err(stop(format!(
            "{dataset}: the database is another cluster (system_identifier {}; batch {} came from {}). {ADOPT}",
            snapshot.system_identifier, last.batch, last.system_identifier
        )));
    }
    if let (Some(before), Some(now)) = (&last.wal_lsn, &snapshot.wal_lsn)
        && lsn_value(now) < lsn_value(before)
    {
        // A rollback of the database, or only a run overtaken since its snapshot?
        if let Some(e) = overtaken(dataset, last, snapshot) {
            return Err(e);
        }
        return Err(stop(format!(
            "{dataset}: the database's WAL position went back from {before} (batch {}) to {now}: it was \
             restored or failed over to a replica that lagged, and rows of batch {} may be gone. {ADOPT}",
            last.batch, last.batch
        )));
    }
    let (Some(before), Some(now)) = (last.timeline, snapshot.timeline) else {
        return Ok(());
    };
    if before == now {
        return Ok(());
    }
    // A promotion. Did the new primary replay everything the last batch saw?
    let Some(events) = latest_events_with_rows(lake).await? else {
        return Err(stop(format!(
            "{dataset}: the database is on a new timeline ({before} -> {now}: a failover or a \
             switchover) and the lake has no committed events batch to check it against. {ADOPT}"
        )));
    };
    let (present, expected) = keys_present(lake, client, &events).await?;
    if present < expected {
        return Err(stop(format!(
            "{dataset}: the database is on a new timeline ({before} -> {now}: a failover) and lacks {} of \
             the {expected} rows of events batch {}: the replica it promoted had not received them. {ADOPT}",
            expected - present,
            events.batch
        )));
    }
    tracing::info!(
        dataset = %dataset, before, now, rows_checked = expected,
        "New timeline (a switchover): the new primary holds every row of the last batch; going on"
    );
    Ok(())
}

/// The latest committed events batch that has rows (read newest first; the
/// latest usually has them).
async fn latest_events_with_rows(lake: &Lake) -> anyhow::Result<Option<BatchManifest>> {
    let history = manifest::BronzeLog::load(lake, Dataset::BronzeEvents).await?;
    Ok(history.latest_with_files().cloned())
}

/// How many of the events of `batch` the database still holds, of how many.
async fn keys_present(
    lake: &Lake,
    client: &Client,
    batch: &BatchManifest,
) -> anyhow::Result<(u64, u64)> {
    use arrow::array::{Array, StringArray};
    let mut keys: Vec<String> = Vec::new();
    for f in &batch.files {
        for b in parquet_io::read_all(lake, &Path::from(f.path.as_str())).await? {
            let col = b
                .column_by_name("event_id")
                .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                .ok_or_else(|| anyhow::anyhow!("{}: no event_id column", f.path))?;
            keys.extend(col.iter().flatten().map(str::to_owned));
        }
    }
    let expected = keys.len() as u64;
    let present: i64 = client
        .query_one(
            "SELECT count(*) FROM stop_events WHERE event_id = ANY($1::text[]::uuid[])",
            &[&keys],
        )
        .await?
        .get(0);
    Ok((present as u64, expected))
}
