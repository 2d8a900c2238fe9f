//! Fast paths for loading many demo rows.
//!
//! Inserting a million rows into tables with six and four B-tree indexes on
//! random keys (UUIDs, tokens, timestamps) costs PostgreSQL a few microseconds per
//! index entry, and the outbox foreign key another per-row check at commit; that
//! is most of the load time. Two remedies, both invisible in the result:
//!
//! * **Deferred indexes** when both tables are empty and the load is large: inside
//!   the generator's transaction, the keys, indexes and foreign keys of
//!   `stop_events` and `outbox` are dropped, the rows are copied, and the same
//!   definitions (from `pg_get_constraintdef` / `pg_get_indexdef`, same names) are
//!   re-created: sorting builds the indexes far faster, and the foreign key is
//!   validated by one join. This takes `ACCESS EXCLUSIVE` locks, so when another
//!   session uses the tables it is skipped after waiting at most a second.
//! * **No per-row foreign-key triggers** otherwise, when the connection is a
//!   superuser (`session_replication_role = replica` for the transaction): every
//!   generated outbox row points at an event generated in the same transaction.

use anyhow::{Context, Result};
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

/// Loads smaller than this keep the indexes (their maintenance is cheap enough,
/// and the exclusive locks are not worth taking).
const MIN_ROWS: u64 = 10_000;

/// Drop and re-create statements of the deferred constraints and indexes:
/// (step, drop, create). Steps: 1 foreign keys, 2 primary/unique keys, 3 indexes.
const DEFINITIONS_SQL: &str = "
WITH t(rel) AS (VALUES ('stop_events'::regclass), ('outbox'::regclass))
SELECT CASE c.contype WHEN 'f' THEN 1 ELSE 2 END AS step,
       format('ALTER TABLE %s DROP CONSTRAINT %I', c.conrelid::regclass, c.conname),
       format('ALTER TABLE %s ADD CONSTRAINT %I %s', c.conrelid::regclass, c.conname, pg_get_constraintdef(c.oid))
FROM pg_constraint c
WHERE (c.contype = 'f' AND (c.conrelid IN (SELECT rel FROM t) OR c.confrelid IN (SELECT rel FROM t)))
   OR (c.contype IN ('p', 'u') AND c.conrelid IN (SELECT rel FROM t))
UNION ALL
SELECT 3, format('DROP INDEX %s', i.indexrelid::regclass), pg_get_indexdef(i.indexrelid)
FROM pg_index i
WHERE i.indrelid IN (SELECT rel FROM t)
  AND NOT EXISTS (SELECT 1 FROM pg_constraint c
                  WHERE c.conindid = i.indexrelid AND c.conrelid = i.indrelid AND c.contype IN ('p', 'u', 'x'))
ORDER BY 1, 2";

/// Constraints and indexes dropped for a bulk load, to re-create afterwards.
#[derive(Debug)]
pub(crate) struct DeferredIndexes {
    /// `CREATE` statements in the order to run them.
    restore: Vec<String>,
}

/// Drops the keys, indexes and foreign keys of both tables if they are empty, the
/// load is large and the tables can be locked at once. `None` means "load
/// normally". Must run inside the generator's transaction.
pub(crate) async fn defer_indexes(client: &Client, rows: u64) -> Result<Option<DeferredIndexes>> {
    if rows < MIN_ROWS {
        return Ok(None);
    }
    client
        .batch_execute("SAVEPOINT lake_testkit_bulk; SET LOCAL lock_timeout = '1s'")
        .await?;
    match client
        .batch_execute("LOCK TABLE stop_events, outbox IN ACCESS EXCLUSIVE MODE")
        .await
    {
        Ok(()) => {}
        Err(err) if err.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => {
            tracing::debug!("Tables in use; loading demo rows with their indexes in place");
            client
                .batch_execute("ROLLBACK TO SAVEPOINT lake_testkit_bulk")
                .await?;
            return Ok(None);
        }
        Err(err) => return Err(err).context("locking stop_events and outbox"),
    }
    let empty: bool = client
        .query_one(
            "SELECT NOT EXISTS (SELECT FROM stop_events) AND NOT EXISTS (SELECT FROM outbox)",
            &[],
        )
        .await?
        .get(0);
    if !empty {
        client
            .batch_execute("ROLLBACK TO SAVEPOINT lake_testkit_bulk")
            .await?;
        return Ok(None);
    }
    let definitions = client
        .query(DEFINITIONS_SQL, &[])
        .await
        .context("reading index definitions")?;
    let mut drops = Vec::with_capacity(definitions.len());
    let mut creates: Vec<(i32, String)> = Vec::with_capacity(definitions.len());
    for row in &definitions {
        drops.push(row.get::<_, String>(1));
        creates.push((row.get(0), row.get(2)));
    }
    client
        .batch_execute(&drops.join(";\n"))
        .await
        .context("dropping indexes for the bulk load")?;
    client
        .batch_execute("RELEASE SAVEPOINT lake_testkit_bulk; SET LOCAL lock_timeout TO DEFAULT")
        .await?;
    // Keys first (foreign keys need the referenced key), then indexes, then foreign keys.
    creates.sort_by_key(|(step, _)| match step {
        2 => 0,
        3 => 1,
        _ => 2,
    });
    Ok(Some(DeferredIndexes {
        restore: creates.into_iter().map(|(_, sql)| sql).collect(),
    }))
}

impl DeferredIndexes {
    /// Re-creates what [`defer_indexes`] dropped, with a large sort memory.
    pub(crate) async fn restore(self, client: &Client) -> Result<()> {
        client
            .batch_execute("SET LOCAL maintenance_work_mem = '256MB'")
            .await?;
        for sql in &self.restore {
            client
                .batch_execute(sql)
                .await
                .with_context(|| format!("re-creating after the bulk load: {sql}"))?;
        }
        Ok(())
    }
}

/// Switches off per-row foreign-key triggers for the rest of the transaction when
/// the connection is a superuser; returns whether it did.
pub(crate) async fn skip_fk_triggers(client: &Client) -> Result<bool> {
    let superuser: bool = client
        .query_one("SELECT current_setting('is_superuser') = 'on'", &[])
        .await?
        .get(0);
    if superuser {
        client
            .batch_execute("SET LOCAL session_replication_role = replica")
            .await?;
    }
    Ok(superuser)
}
