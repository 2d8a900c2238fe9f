//! Demo data: the Django source tables and a deterministic, realistic generator.
//!
//! Tests, the demo and the benchmarks all load their data through this one
//! generator, so they exercise the same shapes: executions of 2–4 events sharing an
//! `execution_token`, NULL `event_seq` and NULL tokens, 8-decimal prices, nested
//! JSON payloads, outbox rows.
//!
//! # How the data is generated
//!
//! Rows are computed in the test process and streamed with
//! `COPY … FROM STDIN (FORMAT binary)`: no per-row round trips, and generating
//! (client core) overlaps with storing (server core). Every value is a pure
//! function of the seed and the row index `i` (see `rows.rs`), so:
//!
//! * the same seed gives identical tables in any database;
//! * [`generate`] can be called again to append: it continues at the next row index
//!   (kept in `lake_testkit.demo_state`), and with the same seed, `generate(n)` then
//!   `generate(m)` yields exactly the rows of `generate(n + m)`, so an execution cut
//!   at the boundary is completed by the second call (late events of an execution,
//!   as bronze and silver see them in production). With another seed, or when
//!   hand-inserted rows hold a higher `event_seq`, it starts at the next block of
//!   12 past everything, so keys never collide.
//!
//! Row indexes come in blocks of 12; a hash of the block picks how it is cut into
//! executions of 1–4 consecutive indexes. Attributes shared by an execution are
//! hashed from the index of its first row, per-event ones from the row index.
//!
//! Each call is one transaction (so all its rows share one `xmin`). Into empty
//! tables, a load of 10 000 rows or more drops and re-creates the keys and
//! indexes around the COPY (much faster than maintaining them row by row, see
//! `bulk.rs`); otherwise, as a superuser, the per-row outbox foreign-key checks
//! are skipped. The data is the same either way.
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
//!   ±1.8 for 99 % of ordinary fills and ±5.4 for the rest; executions that end in
//!   `SLIPPAGE_BREACH` (about 2 %) fill 2.5–8 % adverse. About 95 % of `EXECUTED`
//!   events have |slippage| ≤ 2. The data breaks none of the silver rules of
//!   SPEC §7 (tests that need violations insert them).
//! * `exchange_order_id`, `fill_price`, `slippage_pct` on `EXECUTED` (and
//!   `SLIPPAGE_BREACH`); `error_message` on `FAILED`, `BLOCKED`, `CIRCUIT_BREAKER`,
//!   `KILL_SWITCH`; `request_payload_hash` on `EXECUTION_SUBMITTED`; `retry_count` 1
//!   on retried submissions.
//! * `payload_json` about 250 bytes of nested JSON: stop parameters, market tick,
//!   fill (price, slippage, order id, commission) or error, worker, attempt.
//! * Outbox rows for about 92 % of events (the rest "cleaned up"), 97 % published
//!   (the rest with `retry_count` and `last_error`); payload = a message envelope.
//! * Extra objects: schema `lake_testkit` with table `demo_state` (the generator's
//!   position); nothing else is added to `public`.

mod bulk;
mod encode;
mod rows;

use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use tokio_postgres::Client;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};

use encode::{Id, JsonText, Micros};
use rows::{BLOCK, Generator};

/// The Django tables of SPEC §2 (`stop_events`, `outbox`) with their primary and
/// unique keys, the outbox foreign key and the indexes. Idempotent
/// (`IF NOT EXISTS`).
pub const SCHEMA_SQL: &str = include_str!("demo/schema.sql");

/// End of the default time window, in seconds since the epoch:
/// 2025-06-30T00:00:00Z.
pub const DEFAULT_WINDOW_END_UNIX: u64 = 1_751_241_600;
/// Length of the default time window: 30 days.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(30 * 24 * 3600);

/// Serialises concurrent `generate` calls on one database.
const ADVISORY_LOCK_KEY: i64 = 0x6c61_6b65_6465_6d6f; // "lakedemo"

const EVENT_COLUMNS: &str = "event_id, event_seq, occurred_at, operation_id, client_id, symbol, event_type, \
     trigger_price, stop_price, quantity, side, execution_token, payload_json, request_payload_hash, \
     exchange_order_id, fill_price, slippage_pct, source, error_message, retry_count";
const OUTBOX_COLUMNS: &str = "outbox_id, aggregate_type, aggregate_id, event_type, correlation_id, event_id, \
     routing_key, exchange, payload, published, published_at, retry_count, last_error, created_at";

/// Creates the source tables and indexes ([`SCHEMA_SQL`]) if they do not exist.
pub async fn create_schema(client: &Client) -> Result<()> {
    client
        .batch_execute(SCHEMA_SQL)
        .await
        .context("creating the demo schema (stop_events, outbox)")
}

/// What to generate; [`GenerateOptions::new`] uses the default time window.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GenerateOptions {
    /// Number of `stop_events` rows to append.
    pub rows: u64,
    /// Seed; the same seed gives the same rows.
    pub seed: u64,
    /// End of the `occurred_at` window (events stay 2 minutes clear of both ends).
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

    /// Moves the window to end at `end`, for example `SystemTime::now()` when a
    /// test needs events inside a job's look-back period (the default window lies
    /// in the past). Rows then depend on `end` as well as on the seed.
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
    /// Row index of the first inserted event (0 on an empty table); its
    /// `event_seq`, when not NULL, is `first_row + 1`.
    pub first_row: u64,
    /// Seed used.
    pub seed: u64,
    /// Wall time of the call, commit included.
    pub elapsed: Duration,
}

/// Appends `rows` `stop_events` rows (and outbox rows for most of them), generated
/// deterministically from `seed` over the default 30-day window.
///
/// The schema must exist ([`create_schema`]). Runs in a transaction of its own, so
/// do not call it inside one. See the module docs for the shape of the data.
pub async fn generate(client: &Client, rows: u64, seed: u64) -> Result<GenerateReport> {
    generate_with(client, &GenerateOptions::new(rows, seed)).await
}

/// [`generate`] with explicit options.
pub async fn generate_with(client: &Client, options: &GenerateOptions) -> Result<GenerateReport> {
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
                elapsed_ms = u64::try_from(report.elapsed.as_millis()).unwrap_or(u64::MAX),
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
    client: &Client,
    options: &GenerateOptions,
) -> Result<GenerateReport> {
    // Seeds travel as bigint; wrapping keeps every u64 seed usable.
    let seed = options.seed as i64;
    client
        .batch_execute(&format!(
            "SELECT pg_advisory_xact_lock({ADVISORY_LOCK_KEY});
             CREATE SCHEMA IF NOT EXISTS lake_testkit;
             CREATE TABLE IF NOT EXISTS lake_testkit.demo_state (
                 singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
                 seed bigint NOT NULL,
                 next_row bigint NOT NULL);"
        ))
        .await
        .context("preparing the generator state")?;
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
    let mut report = GenerateReport {
        events: 0,
        outbox: 0,
        first_row,
        seed: options.seed,
        elapsed: Duration::ZERO,
    };
    if options.rows == 0 {
        return Ok(report);
    }
    let end = first_row
        .checked_add(options.rows)
        .filter(|&end| i64::try_from(end).is_ok())
        .context("row index overflows bigint")?;

    let window_end_us = options
        .window_end
        .duration_since(SystemTime::UNIX_EPOCH)
        .context("window end before 1970")?
        .as_micros();
    let generator = Generator::new(
        options.seed,
        i64::try_from(window_end_us).context("window end too far in the future")?,
        i64::try_from(options.window.as_micros()).context("window too long")?,
    );
    let deferred = bulk::defer_indexes(client, options.rows).await?;
    if deferred.is_none() {
        bulk::skip_fk_triggers(client).await?;
    }
    report.events = copy_events(client, &generator, first_row..end).await?;
    report.outbox = copy_outbox(client, &generator, first_row..end).await?;
    if let Some(deferred) = deferred {
        deferred.restore(client).await?;
    }
    client
        .execute(
            "INSERT INTO lake_testkit.demo_state (seed, next_row) VALUES ($1, $2)
             ON CONFLICT (singleton) DO UPDATE SET seed = EXCLUDED.seed, next_row = EXCLUDED.next_row",
            &[&seed, &(end as i64)],
        )
        .await
        .context("recording the generator position")?;
    Ok(report)
}

/// Where the next call starts: right after the previous one when it used the same
/// seed (so a cut execution is completed), otherwise at the next block boundary
/// past every existing row index and `event_seq` (so keys never collide, even
/// with rows inserted by hand).
fn first_row(state: Option<(i64, i64)>, max_seq: i64, seed: i64) -> u64 {
    let max_seq = u64::try_from(max_seq).unwrap_or(0);
    match state {
        Some((prev_seed, next)) => {
            let next = u64::try_from(next).unwrap_or(0);
            if prev_seed == seed && next >= max_seq {
                next
            } else {
                next.max(max_seq).next_multiple_of(BLOCK)
            }
        }
        None => max_seq.next_multiple_of(BLOCK),
    }
}

/// Opens a binary COPY into `table`, with the column types the table really has
/// (ids may be int4 on older schemas).
async fn copy_writer(client: &Client, table: &str, columns: &str) -> Result<BinaryCopyInWriter> {
    let probe = client
        .prepare(&format!("SELECT {columns} FROM {table} LIMIT 0"))
        .await
        .with_context(|| format!("reading the columns of {table} (is the schema created?)"))?;
    let types: Vec<Type> = probe.columns().iter().map(|c| c.type_().clone()).collect();
    let sink = client
        .copy_in(&format!(
            "COPY {table} ({columns}) FROM STDIN (FORMAT binary)"
        ))
        .await
        .with_context(|| format!("starting COPY into {table}"))?;
    Ok(BinaryCopyInWriter::new(sink, &types))
}

async fn copy_events(
    client: &Client,
    generator: &Generator,
    range: std::ops::Range<u64>,
) -> Result<u64> {
    let writer = copy_writer(client, "stop_events", EVENT_COLUMNS).await?;
    let mut writer = std::pin::pin!(writer);
    for index in range {
        let e = generator.event(index);
        let values: [&(dyn ToSql + Sync); 20] = [
            &e.event_id,
            &e.event_seq,
            &Micros(e.occurred_at_us),
            &Id(e.operation_id),
            &Id(e.client_id),
            &e.symbol,
            &e.event_type.as_str(),
            &e.trigger_price,
            &e.stop_price,
            &e.quantity,
            &e.side,
            &e.execution_token,
            &JsonText(&e.payload_json),
            &e.request_payload_hash,
            &e.exchange_order_id,
            &e.fill_price,
            &e.slippage_pct,
            &e.source,
            &e.error_message,
            &e.retry_count,
        ];
        writer
            .as_mut()
            .write(&values)
            .await
            .context("streaming stop_events rows")?;
    }
    writer
        .finish()
        .await
        .context("finishing COPY into stop_events")
}

async fn copy_outbox(
    client: &Client,
    generator: &Generator,
    range: std::ops::Range<u64>,
) -> Result<u64> {
    let writer = copy_writer(client, "outbox", OUTBOX_COLUMNS).await?;
    let mut writer = std::pin::pin!(writer);
    for index in range {
        let Some(o) = generator.outbox(&generator.event_with(index, false)) else {
            continue;
        };
        let values: [&(dyn ToSql + Sync); 14] = [
            &o.outbox_id,
            &o.aggregate_type,
            &Id(o.aggregate_id),
            &o.event_type,
            &o.correlation_id,
            &o.event_id,
            &o.routing_key,
            &o.exchange,
            &JsonText(&o.payload),
            &o.published,
            &o.published_at_us.map(Micros),
            &o.retry_count,
            &o.last_error,
            &Micros(o.created_at_us),
        ];
        writer
            .as_mut()
            .write(&values)
            .await
            .context("streaming outbox rows")?;
    }
    writer.finish().await.context("finishing COPY into outbox")
}

#[cfg(test)]
mod tests {
    use super::*;

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
