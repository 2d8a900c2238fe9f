//! Transaction-id horizons (SPEC §5): which rows belong to which batch.
//!
//! A timestamp or sequence cursor loses rows whose transaction commits after a
//! later row was read. Instead, a batch is the half-open range `[h_prev, h)` of
//! *inserting transaction ids*, where `h = pg_snapshot_xmin` of the run's snapshot:
//! every transaction below `h` has finished, so the range's content can never
//! change again (for append-only tables) and a re-run exports exactly the same rows.
//!
//! Row `xmin` is a 32-bit xid that wraps; the horizons are 64-bit `xid8`. Rows
//! are matched modulo 2^32, which is exact while a range spans fewer than 2^31
//! transactions (refused otherwise).

use std::collections::BTreeMap;

use anyhow::Context;
use chrono::{DateTime, Utc};
use lake_common::postgres::missing_function_grant;
use lake_common::schema::SourceTable;
use tokio_postgres::Client;

/// The snapshot a run reads everything from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// `pg_snapshot_xmin`: all transactions below it have finished.
    pub xmin: u64,
    /// `pg_snapshot_xmax`: transactions at or above it had not started.
    pub xmax: u64,
    /// `now()` of the transaction.
    pub time: DateTime<Utc>,
    /// The cluster's `system_identifier` (a restore or another cluster changes it).
    pub system_identifier: String,
    /// The server's timeline (a promotion starts a new one).
    pub timeline: Option<u32>,
    /// The WAL position: `pg_current_wal_lsn()`, or on a standby
    /// `pg_last_wal_replay_lsn()` (`X/Y`, hexadecimal).
    pub wal_lsn: Option<String>,
    /// `pg_relation_filenode` of each locked source table: a command that
    /// rewrites the table (and re-inserts its rows under a new xmin) changes it.
    pub filenodes: BTreeMap<String, u64>,
}

/// How long the run waits for its `ACCESS SHARE` lock behind a migration's
/// exclusive one before it gives up (exit 1; the Job retries).
pub const LOCK_TIMEOUT_SECS: u64 = 120;

/// Opens the run's `REPEATABLE READ READ ONLY` transaction and reads its snapshot.
///
/// The source tables (`lock`) are locked `IN ACCESS SHARE MODE` first: `LOCK`
/// takes no snapshot, so a table rewrite either committed before the lock (the
/// snapshot sees the rewritten table and its new file node) or waits for the
/// run to end — it can neither make the table look empty to the run nor hide
/// itself (SPEC §5.1). The snapshot query is then the first statement that
/// needs a snapshot, so it *is* the snapshot every later statement sees.
///
/// The output settings are fixed too: columns bronze stores as PostgreSQL's
/// text (intervals, arrays, money…) must read the same whatever the role's or
/// the database's defaults (`ALTER ROLE … SET IntervalStyle`), or a re-executed
/// batch and an older file would disagree on one value.
pub async fn begin(client: &Client, role: &str, lock: &[&SourceTable]) -> anyhow::Result<Snapshot> {
    client
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET LOCAL TIME ZONE 'UTC'; \
             SET LOCAL lock_timeout = '{LOCK_TIMEOUT_SECS}s'; SET LOCAL DateStyle = 'ISO, YMD'; \
             SET LOCAL IntervalStyle = 'postgres'; SET LOCAL extra_float_digits = 1; \
             SET LOCAL bytea_output = 'hex'"
        ))
        .await?;
    if !lock.is_empty() {
        let names: Vec<&str> = lock.iter().map(|t| t.table).collect();
        client
            .batch_execute(&format!(
                "LOCK TABLE {} IN ACCESS SHARE MODE",
                names.join(", ")
            ))
            .await
            .with_context(|| {
                format!(
                    "locking {} IN ACCESS SHARE MODE (a migration holding an exclusive lock for more \
                     than {LOCK_TIMEOUT_SECS} s makes this time out; the next run retries)",
                    names.join(", ")
                )
            })?;
    }
    let row = client
        .query_one(
            "SELECT pg_snapshot_xmin(s)::text, pg_snapshot_xmax(s)::text, now(), \
                    (SELECT system_identifier::text FROM pg_control_system()) \
             FROM pg_current_snapshot() AS s",
            &[],
        )
        .await
        .map_err(|e| missing_function_grant(e, role))
        .context("reading the snapshot")?;
    let parse = |i: usize| -> anyhow::Result<u64> {
        let text: String = row.get(i);
        text.parse()
            .map_err(|_| anyhow::anyhow!("PostgreSQL returned a non-numeric xid8 {text:?}"))
    };
    // PUBLIC may call these by default (pg_control_checkpoint, pg_walfile_name,
    // pg_current_wal_lsn, pg_last_wal_replay_lsn, pg_is_in_recovery); a role
    // stripped of them fails with PostgreSQL's "permission denied for function
    // …", which names the one to grant back (`missing_function_grant`).
    let position = client
        .query_one(
            // A primary's timeline is in its current WAL file's name (the
            // checkpoint's lags a promotion until the next checkpoint); a
            // standby replays the timeline of its latest checkpoint.
            "SELECT CASE WHEN pg_is_in_recovery() \
                         THEN (SELECT timeline_id FROM pg_control_checkpoint())::bigint \
                         ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint END, \
                    (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() \
                          ELSE pg_current_wal_lsn() END)::text",
            &[],
        )
        .await
        .map_err(|e| missing_function_grant(e, role))
        .context("reading the timeline and the WAL position")?;
    let mut filenodes = BTreeMap::new();
    for t in lock {
        let row = client
            .query_one(
                "SELECT pg_relation_filenode($1::text::regclass)::bigint",
                &[&t.table],
            )
            .await
            .map_err(|e| missing_function_grant(e, role))
            .with_context(|| format!("reading the file node of {}", t.table))?;
        if let Some(node) = row.get::<_, Option<i64>>(0) {
            filenodes.insert(t.table.to_owned(), node as u64);
        }
    }
    Ok(Snapshot {
        xmin: parse(0)?,
        xmax: parse(1)?,
        time: row.get(2),
        system_identifier: row.get(3),
        timeline: position.get::<_, Option<i64>>(0).map(|t| t as u32),
        wal_lsn: position.get(1),
        filenodes,
    })
}

/// A transaction that holds the horizon back, as far as the run's role can see
/// it: for other users' sessions PostgreSQL shows a plain role the pid, user,
/// `application_name` and xid (not the query or the start time).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Holder {
    /// `session` (pg_stat_activity) or `prepared` (pg_prepared_xacts).
    pub kind: String,
    /// Backend pid (sessions).
    pub pid: Option<i32>,
    /// Role that runs or prepared it.
    pub user: Option<String>,
    /// `application_name` (sessions).
    pub application_name: Option<String>,
    /// Its transaction id (32-bit).
    pub xid: String,
    /// When it started (a session's own role, or a superuser, sees it) or was prepared.
    pub since: Option<DateTime<Utc>>,
    /// The global id of a prepared transaction.
    pub gid: Option<String>,
}

/// The transactions whose xid is the snapshot's `xmin`: what holds `H` back.
pub async fn holders(client: &Client, xmin: u64) -> anyhow::Result<Vec<Holder>> {
    let xid = (xmin % WRAP) as i64;
    let rows = client
        .query(
            "SELECT 'session', pid, usename::text, application_name, backend_xid::text, \
                    xact_start, NULL::text \
             FROM pg_stat_activity \
             WHERE backend_xid IS NOT NULL AND backend_xid::text::bigint = $1 \
             UNION ALL \
             SELECT 'prepared', NULL, owner::text, NULL, transaction::text, prepared, gid \
             FROM pg_prepared_xacts WHERE transaction::text::bigint = $1",
            &[&xid],
        )
        .await
        .context("looking up the transaction that holds the horizon")?;
    Ok(rows
        .iter()
        .map(|r| Holder {
            kind: r.get(0),
            pid: r.get(1),
            user: r.get(2),
            application_name: r.get(3),
            xid: r.get(4),
            since: r.get(5),
            gid: r.get(6),
        })
        .collect())
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.gid, self.pid) {
            (Some(gid), _) => write!(f, "prepared transaction {gid:?} (xid {})", self.xid)?,
            (None, Some(pid)) => write!(f, "pid {pid} (xid {})", self.xid)?,
            (None, None) => write!(f, "xid {}", self.xid)?,
        }
        if let Some(u) = &self.user {
            write!(f, " of {u}")?;
        }
        match self.application_name.as_deref() {
            Some(app) if !app.is_empty() => write!(f, " ({app})"),
            _ => Ok(()),
        }
    }
}

/// Why a range of transaction ids cannot be exported safely.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HorizonError {
    /// The horizon moved backwards: a restore or a failover to a lagging replica.
    #[error(
        "the transaction horizon went backwards (previous batch ended at xid {h_prev}, the database is now at {h}): \
         the database was restored or failed over to a lagging replica; nothing was exported. After checking that \
         this is the lake's source, run `bronze-ingest --rebase` once: it adopts the source as it is now and \
         commits only rows bronze does not hold yet"
    )]
    Backwards {
        /// End of the previous batch.
        h_prev: u64,
        /// Current horizon.
        h: u64,
    },
    /// The range is too wide to compare 32-bit xids unambiguously.
    #[error(
        "{span} transactions passed since the last batch, more than the 2^31 that 32-bit xids can tell apart"
    )]
    TooWide {
        /// Width of the range.
        span: u64,
    },
}

const WRAP: u64 = 1 << 32;

/// A WAL position (`X/Y`, two hexadecimal halves) as a number, to compare.
pub fn lsn_value(lsn: &str) -> Option<u64> {
    let (hi, lo) = lsn.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// The SQL predicate selecting rows whose xmin lies in `[lo, lo + span)` modulo 2^32.
fn xmin_in(lo: u64, span: u64) -> String {
    format!(
        "((xmin::text::bigint - {} + {WRAP}) % {WRAP}) < {span}",
        lo % WRAP
    )
}

/// The predicate on `xmin` of the batch `[h_prev, h)`; for the first batch
/// (`h_prev = None`) every row finished below `h` ([`finished_before`]), where
/// `xmax` is `pg_snapshot_xmax` of the snapshot the statement runs in.
pub fn predicate(h_prev: Option<u64>, h: u64, xmax: u64) -> Result<String, HorizonError> {
    match h_prev {
        Some(h_prev) => {
            if h < h_prev {
                return Err(HorizonError::Backwards { h_prev, h });
            }
            let span = h - h_prev;
            if span >= 1 << 31 {
                return Err(HorizonError::TooWide { span });
            }
            Ok(format!(
                "{} AND xmin::text::bigint >= 3",
                xmin_in(h_prev, span)
            ))
        }
        None => finished_before(h, xmax),
    }
}

/// The rows a snapshot (`pg_snapshot_xmax` = `xmax`) sees that were inserted
/// by transactions before `h` (`h` ≤ the snapshot's own xmin, or an earlier
/// horizon): every visible row except those whose xmin lies in `[h, xmax)`.
///
/// This needs no lower bound and no guess about frozen rows, which keep their
/// raw xmin (PostgreSQL ≥ 9.4): on a cluster whose xid counter has passed 2^31
/// beyond its oldest rows, those rows' raw xmins fall anywhere on the 32-bit
/// circle, and only `[h, xmax)` — the transactions a snapshot cannot yet call
/// finished below `h` — is excluded. Rows of later transactions are invisible to
/// the snapshot anyway, so re-executing a pinned first batch (or a backfilled
/// day) in a later snapshot selects the same rows. `xmax − h` is refused at
/// 2^31 (a pending batch left for two billion transactions).
pub fn finished_before(h: u64, xmax: u64) -> Result<String, HorizonError> {
    let span = xmax.saturating_sub(h);
    if span >= 1 << 31 {
        return Err(HorizonError::TooWide { span });
    }
    Ok(format!(
        "(xmin::text::bigint < 3 OR NOT ({}))",
        xmin_in(h, span)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Evaluates the modular range test the way the SQL does.
    fn in_range(xmin32: u64, lo: u64, span: u64) -> bool {
        ((xmin32 + WRAP - lo % WRAP) % WRAP) < span
    }

    #[test]
    fn ranges_wrap_around_the_32_bit_boundary() {
        let lo = (5 << 32) + WRAP - 10; // 10 below an epoch boundary
        let span = 20;
        assert!(in_range(WRAP - 10, lo, span));
        assert!(in_range(5, lo, span), "after the wrap");
        assert!(!in_range(10, lo, span), "past the end");
        assert!(!in_range(WRAP - 11, lo, span), "before the start");
    }

    #[test]
    fn finished_before_excludes_only_the_unfinished_window() {
        let h = (3 << 32) + 1000;
        let xmax = h + 50;
        let past = |x: u64| x < 3 || !in_range(x, h, xmax - h);
        assert!(
            past(999) && past(2) && past(WRAP - 5),
            "older xids, frozen, and wrapped-around older xids"
        );
        assert!(
            past(1000 + (1 << 30)) && past(1000 + (1 << 31) + 7),
            "raw xmins of rows frozen more than 2^31 xids ago (they land anywhere)"
        );
        assert!(
            !past(1000) && !past(1049),
            "the transactions the snapshot cannot call finished below h"
        );
    }

    #[test]
    fn lsns_compare_as_numbers() {
        assert_eq!(lsn_value("0/16B3748"), Some(0x16B3748));
        assert!(lsn_value("1/0").unwrap() > lsn_value("0/FFFFFFFF").unwrap());
        assert_eq!(lsn_value("junk"), None);
    }

    #[test]
    fn predicates() {
        assert_eq!(
            predicate(Some(100), 150, 160).unwrap(),
            "((xmin::text::bigint - 100 + 4294967296) % 4294967296) < 50 AND xmin::text::bigint >= 3"
        );
        assert_eq!(
            predicate(None, 150, 160).unwrap(),
            "(xmin::text::bigint < 3 OR NOT (((xmin::text::bigint - 150 + 4294967296) % 4294967296) < 10))"
        );
        assert_eq!(
            predicate(Some(200), 150, 160),
            Err(HorizonError::Backwards {
                h_prev: 200,
                h: 150
            })
        );
        assert!(matches!(
            predicate(Some(0), 1 << 31, 1 << 31),
            Err(HorizonError::TooWide { .. })
        ));
        assert!(predicate(Some(0), (1 << 31) - 1, 1 << 31).is_ok());
        assert!(matches!(
            predicate(None, 10, 10 + (1 << 31)),
            Err(HorizonError::TooWide { .. })
        ));
    }
}
