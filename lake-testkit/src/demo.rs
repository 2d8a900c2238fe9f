//! Demo data: the Django source tables and a deterministic, realistic generator.
//!
//! Tests, the demo and the benchmarks all load their data through this one
//! generator, so they exercise the same shapes: executions of 2–4 events sharing an
//! `execution_token`, NULL `event_seq` and NULL tokens, 8-decimal prices, nested
//! JSON payloads, outbox rows.
//!
//! # How the data is generated
//!
//! Everything happens server-side in one `INSERT … SELECT` over `generate_series`
//! (no per-row round trips; a million rows load in seconds). Every value is a pure
//! function of the seed and the row index `i`, built from
//! `hashint8extended(key, seed)`, so:
//!
//! * the same seed gives byte-identical tables in any database;
//! * [`generate`] can be called again to append: it continues at the next row index
//!   (kept in `lake_testkit.demo_state`), and with the same seed, `generate(n)` then
//!   `generate(m)` yields exactly the rows of `generate(n + m)`, so an execution cut
//!   at the boundary is completed by the second call (late events of an execution,
//!   as bronze and silver see them in production).
//!
//! Row indexes come in blocks of 12; a hash of the block picks how it is cut into
//! executions of 1–4 consecutive indexes. Attributes shared by an execution are
//! hashed from the index of its first row, per-event ones from the row index.
//!
//! # What the data looks like
//!
//! * 20 clients (ids 1–20, skewed towards low ids), 25 USDC symbols (skewed towards
//!   BTC, ETH, SOL; PEPE and SHIB have prices below 0.0001).
//! * Lifecycles, one execution per group of events with a shared `execution_token`,
//!   `operation_id`, `client_id`, `symbol` and `side`:
//!   `STOP_TRIGGERED → BLOCKED`, `STOP_TRIGGERED → FAILED`,
//!   `STOP_TRIGGERED → EXECUTION_SUBMITTED → EXECUTED | FAILED`,
//!   `… → EXECUTION_SUBMITTED → EXECUTION_SUBMITTED (retry) → EXECUTED | FAILED`,
//!   `… → EXECUTED → SLIPPAGE_BREACH`; plus about 3.5 % stand-alone
//!   `STALE_PRICE`, `SLIPPAGE_BREACH`, `CIRCUIT_BREAKER` and `KILL_SWITCH` alerts
//!   (without token).
//! * `execution_token` NULL for about 3 % of executions and for all alerts
//!   (about 6 % of events); `operation_id` is unique per execution, so
//!   `operation:<id>` is a valid fallback key.
//! * `event_seq` NULL for 10 % of events, otherwise unique (`i + 1`).
//! * `occurred_at` uniform over a window (default: 30 days ending
//!   2025-06-30T00:00:00Z); the events of one execution follow each other 0.5–2.5 s
//!   apart, in lifecycle order, with microseconds. Row order is not time order.
//! * Prices `numeric(20,8)` with 8 decimals; `slippage_pct` `numeric(10,4)`, within
//!   ±1.8 for 99 % of fills, ±5.4 for the rest, and 2.5–8 % adverse on
//!   `SLIPPAGE_BREACH`. The data breaks none of the silver rules of SPEC §7.
//! * `exchange_order_id`, `fill_price`, `slippage_pct` on `EXECUTED` (and
//!   `SLIPPAGE_BREACH`); `error_message` on `FAILED`, `BLOCKED`, `CIRCUIT_BREAKER`,
//!   `KILL_SWITCH`; `request_payload_hash` on `EXECUTION_SUBMITTED`; `retry_count` 1
//!   on retried submissions.
//! * Outbox rows for about 92 % of events (the rest "cleaned up"); 97 % published.

use std::fmt::Write as _;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};

/// The Django tables of SPEC §2 (`stop_events`, `outbox`) with their primary and
/// unique keys, the outbox foreign key and the indexes. Idempotent
/// (`IF NOT EXISTS`).
pub const SCHEMA_SQL: &str = include_str!("demo/schema.sql");

/// The generator statement; see the module docs. Placeholders are filled by
/// [`generator_sql`].
const GENERATE_SQL: &str = include_str!("demo/generate.sql");

/// How blocks of 12 row indexes are cut into executions (sizes 1–4, 1 = alert).
const PATTERNS: [&[i32]; 12] = [
    &[3, 3, 3, 3],
    &[3, 3, 2, 4],
    &[4, 3, 3, 2],
    &[2, 3, 3, 3, 1],
    &[3, 4, 3, 2],
    &[3, 3, 3, 2, 1],
    &[4, 4, 3, 1],
    &[3, 2, 3, 4],
    &[2, 2, 3, 3, 2],
    &[3, 3, 4, 2],
    &[1, 3, 3, 3, 2],
    &[3, 4, 4, 1],
];
/// Rows per block; every pattern sums to this.
const BLOCK: u64 = 12;

/// Serialises concurrent `generate` calls on one database.
const ADVISORY_LOCK_KEY: i64 = 0x6c61_6b65_6465_6d6f; // "lakedemo"

/// End of the default time window: 2025-06-30T00:00:00Z.
pub const DEFAULT_WINDOW_END_UNIX: u64 = 1_751_241_600;
/// Length of the default time window: 30 days.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(30 * 24 * 3600);

/// Creates the source tables and indexes ([`SCHEMA_SQL`]) if they do not exist.
pub async fn create_schema(client: &tokio_postgres::Client) -> Result<()> {
    client
        .batch_execute(SCHEMA_SQL)
        .await
        .context("creating the demo schema (stop_events, outbox)")
}

/// What to generate; [`GenerateOptions::new`] fills in the default time window.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GenerateOptions {
    /// Number of `stop_events` rows to append.
    pub rows: u64,
    /// Seed; the same seed gives the same rows.
    pub seed: u64,
    /// End of the `occurred_at` window (exclusive, minus a 2-minute margin).
    pub window_end: SystemTime,
    /// Length of the `occurred_at` window; must be longer than 5 minutes.
    pub window: Duration,
}

impl GenerateOptions {
    /// `rows` rows from `seed` over the default window (30 days ending
    /// 2025-06-30T00:00:00Z).
    pub fn new(rows: u64, seed: u64) -> Self {
        Self {
            rows,
            seed,
            window_end: SystemTime::UNIX_EPOCH + Duration::from_secs(DEFAULT_WINDOW_END_UNIX),
            window: DEFAULT_WINDOW,
        }
    }

    /// Moves the window to end at `end` (for example `SystemTime::now()`, when a
    /// test needs events inside a job's look-back period). Rows then depend on
    /// `end` as well as on the seed.
    pub fn window_end(mut self, end: SystemTime) -> Self {
        self.window_end = end;
        self
    }

    /// Changes the window length.
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }
}

/// What a [`generate`] call inserted.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GenerateReport {
    /// `stop_events` rows inserted.
    pub events: u64,
    /// `outbox` rows inserted.
    pub outbox: u64,
    /// Row index of the first inserted event (0 on an empty table).
    pub first_row: u64,
    /// Seed used.
    pub seed: u64,
    /// Wall time of the call, commit included.
    pub elapsed: Duration,
}

/// Appends `rows` `stop_events` rows (and outbox rows for most of them), generated
/// deterministically from `seed` over the default 30-day window.
///
/// The schema must exist ([`create_schema`]). Runs in its own transaction (do not
/// call it inside one). See the module docs for the shape of the data.
pub async fn generate(
    client: &tokio_postgres::Client,
    rows: u64,
    seed: u64,
) -> Result<GenerateReport> {
    generate_with(client, &GenerateOptions::new(rows, seed)).await
}

/// [`generate`] with explicit options.
pub async fn generate_with(
    client: &tokio_postgres::Client,
    options: &GenerateOptions,
) -> Result<GenerateReport> {
    let started = Instant::now();
    anyhow::ensure!(
        options.window > Duration::from_secs(300),
        "the generator's time window must be longer than 5 minutes, got {:?}",
        options.window
    );
    client
        .batch_execute("BEGIN")
        .await
        .context("starting the generator transaction")?;
    match generate_in_transaction(client, options).await {
        Ok(mut report) => {
            client
                .batch_execute("COMMIT")
                .await
                .context("committing the demo data")?;
            report.elapsed = started.elapsed();
            tracing::info!(
                events = report.events,
                outbox = report.outbox,
                first_row = report.first_row,
                seed = report.seed,
                elapsed_ms = report.elapsed.as_millis() as u64,
                "Generated demo data"
            );
            Ok(report)
        }
        Err(err) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(err)
        }
    }
}

async fn generate_in_transaction(
    client: &tokio_postgres::Client,
    options: &GenerateOptions,
) -> Result<GenerateReport> {
    // The seed and row indexes travel as bigint; wrapping keeps all u64 seeds usable.
    let seed = options.seed as i64;
    client
        .batch_execute(&format!(
            "SELECT pg_advisory_xact_lock({ADVISORY_LOCK_KEY});
             SET LOCAL work_mem = '64MB';
             CREATE SCHEMA IF NOT EXISTS lake_testkit;
             CREATE TABLE IF NOT EXISTS lake_testkit.demo_state (
                 singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
                 seed bigint NOT NULL,
                 next_row bigint NOT NULL);
             CREATE OR REPLACE FUNCTION pg_temp.demo_u(k bigint, salt bigint, seed bigint)
                 RETURNS float8 LANGUAGE sql IMMUTABLE PARALLEL SAFE
                 AS $$ SELECT (hashint8extended(k, seed # salt) & 4503599627370495)::float8
                              / 4503599627370496::float8 $$;"
        ))
        .await
        .context("preparing the generator (is the schema created?)")?;

    let state = client
        .query_opt("SELECT seed, next_row FROM lake_testkit.demo_state", &[])
        .await?
        .map(|row| (row.get::<_, i64>(0), row.get::<_, i64>(1)));
    let max_seq: i64 = client
        .query_one("SELECT COALESCE(max(event_seq), 0) FROM stop_events", &[])
        .await
        .context("reading max(event_seq) (is the schema created?)")?
        .get(0);
    let first_row = first_row(state, max_seq, seed);

    if options.rows == 0 {
        return Ok(GenerateReport {
            events: 0,
            outbox: 0,
            first_row,
            seed: options.seed,
            elapsed: Duration::ZERO,
        });
    }
    let first = i64::try_from(first_row).context("row index overflows bigint")?;
    let rows = i64::try_from(options.rows).context("row count overflows bigint")?;
    let last = first
        .checked_add(rows - 1)
        .context("row index overflows bigint")?;
    let outbox = client
        .execute(
            &generator_sql(),
            &[
                &first,
                &last,
                &seed,
                &options.window_end,
                &options.window.as_secs_f64(),
            ],
        )
        .await
        .context("generating demo rows")?;
    client
        .execute(
            "INSERT INTO lake_testkit.demo_state (seed, next_row) VALUES ($1, $2)
             ON CONFLICT (singleton) DO UPDATE SET seed = EXCLUDED.seed, next_row = EXCLUDED.next_row",
            &[&seed, &(last + 1)],
        )
        .await
        .context("recording the generator position")?;
    Ok(GenerateReport {
        events: options.rows,
        outbox,
        first_row,
        seed: options.seed,
        elapsed: Duration::ZERO,
    })
}

/// Where the next call starts: right after the previous one when it used the same
/// seed (so a cut execution is completed), otherwise at the next block boundary
/// past every existing row index and `event_seq` (so keys never collide, even
/// with rows inserted by hand).
fn first_row(state: Option<(i64, i64)>, max_seq: i64, seed: i64) -> u64 {
    let max_seq = u64::try_from(max_seq).unwrap_or(0);
    match state {
        Some((prev_seed, next))
            if prev_seed == seed && u64::try_from(next).unwrap_or(0) >= max_seq =>
        {
            u64::try_from(next).unwrap_or(0)
        }
        Some((_, next)) => u64::try_from(next)
            .unwrap_or(0)
            .max(max_seq)
            .next_multiple_of(BLOCK),
        None => max_seq.next_multiple_of(BLOCK),
    }
}

/// [`GENERATE_SQL`] with the block patterns spelled out as SQL arrays.
fn generator_sql() -> String {
    let mut pos = String::from("ARRAY[");
    let mut size = String::from("ARRAY[");
    for (n, pattern) in PATTERNS.iter().enumerate() {
        debug_assert_eq!(pattern.iter().sum::<i32>() as u64, BLOCK);
        let sep = if n == 0 { "" } else { "," };
        let (mut p, mut s) = (Vec::new(), Vec::new());
        for &len in *pattern {
            for k in 0..len {
                p.push(k.to_string());
                s.push(len.to_string());
            }
        }
        let _ = write!(pos, "{sep}[{}]", p.join(","));
        let _ = write!(size, "{sep}[{}]", s.join(","));
    }
    pos.push(']');
    size.push(']');
    GENERATE_SQL
        .replace("__NCOMP__", &PATTERNS.len().to_string())
        .replace("__POS__", &pos)
        .replace("__SIZE__", &size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_fill_blocks() {
        for pattern in PATTERNS {
            assert_eq!(pattern.iter().sum::<i32>(), 12);
            assert!(pattern.iter().all(|&n| (1..=4).contains(&n)));
        }
        let sql = generator_sql();
        assert!(!sql.contains("__"));
        assert!(sql.contains("ARRAY[[0,1,2,0,1,2,0,1,2,0,1,2],"));
    }

    #[test]
    fn appends_continue_or_realign() {
        assert_eq!(first_row(None, 0, 7), 0);
        assert_eq!(
            first_row(Some((7, 100)), 99, 7),
            100,
            "same seed continues mid-block"
        );
        assert_eq!(
            first_row(Some((8, 100)), 99, 7),
            108,
            "another seed starts a new block"
        );
        assert_eq!(
            first_row(Some((7, 100)), 250, 7),
            252,
            "hand-inserted event_seq is skipped"
        );
        assert_eq!(first_row(None, 13, 7), 24);
    }
}
