//! Streaming a batch's rows out of PostgreSQL as Arrow record batches.
//!
//! One `COPY (SELECT … ORDER BY time, key) TO STDOUT (FORMAT binary)` per dataset,
//! inside the run's snapshot: binary COPY is PostgreSQL's fastest way out and its
//! values decode without text parsing ([`crate::decode`]). Rows are cut into
//! chunks of [`CHUNK_ROWS`] and at every UTC date boundary, so a chunk belongs to
//! exactly one partition; chunks go through a bounded channel to the writer, which
//! bounds memory and lets decoding and Parquet encoding run on both cores.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, TimestampMicrosecondArray};
use chrono::{DateTime, NaiveDate, Utc};
use futures::{StreamExt, pin_mut};
use lake_common::schema::{ExportSchema, SourceTable};
use tokio::sync::mpsc;
use tokio_postgres::Client;
use tokio_postgres::binary_copy::BinaryCopyOutStream;
use tokio_postgres::types::{FromSql, Type};

use crate::decode::{Appended, ColumnBuilder, DecodeError};

/// Rows per record batch handed to the writer. Chunks in flight (the one being
/// decoded, those queued, the one being encoded) are a large part of the
/// export's memory besides the row group being encoded, so they are kept small:
/// 512 rows took 2 MiB less than 1 Ki rows at any size, and 4 Ki rows cost
/// 12 MiB more; the writer's per-batch overhead is negligible at this size.
pub const CHUNK_ROWS: usize = 512;

/// Chunks queued between the decoder and the writer: enough to absorb a row
/// group flush without stalling the COPY, few enough to bound memory.
pub const CHANNEL_CHUNKS: usize = 2;

/// What to export: the xid predicate plus optional time bounds and backfilled days.
#[derive(Debug, Clone)]
pub struct Selection {
    /// Predicate on `xmin` for the incremental range ([`crate::horizon::predicate`]).
    pub range: String,
    /// Lower bound on the time column for the incremental range (index-friendly).
    pub scan_from: Option<DateTime<Utc>>,
    /// Whole days re-exported (backfill) with their own predicate (all finished rows).
    pub backfill: Option<(Vec<NaiveDate>, String)>,
}

fn ts_literal(t: DateTime<Utc>) -> String {
    format!("'{}'::timestamptz", t.format("%Y-%m-%d %H:%M:%S%.6f+00"))
}

/// The SELECT of a batch, ordered by (time column, key) for deterministic files.
pub fn select_sql(schema: &ExportSchema, sel: &Selection) -> String {
    let table = schema.table;
    let time = table.time_column;
    let mut range = format!("({})", sel.range);
    if let Some(from) = sel.scan_from {
        range = format!("({range} AND {time} >= {})", ts_literal(from));
    }
    let filter = match &sel.backfill {
        None => range,
        Some((days, finished)) => {
            let days_sql: Vec<String> = days
                .iter()
                .map(|d| {
                    let start = d
                        .and_hms_opt(0, 0, 0)
                        .map(|t| t.and_utc())
                        .unwrap_or_default();
                    let end = start + chrono::Duration::days(1);
                    format!(
                        "({time} >= {} AND {time} < {})",
                        ts_literal(start),
                        ts_literal(end)
                    )
                })
                .collect();
            format!("{range} OR (({}) AND {finished})", days_sql.join(" OR "))
        }
    };
    format!(
        "SELECT {} FROM {} WHERE {filter} ORDER BY {time}, {}",
        schema.select_list(),
        table.table,
        table.key
    )
}

/// A raw binary value; decoding is ours ([`crate::decode`]).
struct Raw<'a>(&'a [u8]);

impl<'a> FromSql<'a> for Raw<'a> {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(raw))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// Findings of the extraction (SPEC §7, bronze).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Findings {
    /// Values Parquet cannot hold (`NaN`/Infinity numerics, ±infinity dates and
    /// timestamps) stored as NULL, per column.
    pub nan_to_null: BTreeMap<String, u64>,
    /// Rows whose key repeated its predecessor (cannot happen with a primary key).
    pub duplicate_keys: u64,
}

/// The extraction failed.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// PostgreSQL failed.
    #[error("reading {table} from PostgreSQL failed: {source}")]
    Postgres {
        /// Table.
        table: &'static str,
        /// Error.
        source: tokio_postgres::Error,
    },
    /// A value broke the contract.
    #[error(
        "malformed row in {table} ({key} = {key_value}), column {column}: {source}; nothing was committed"
    )]
    Decode {
        /// Table.
        table: &'static str,
        /// Key column.
        key: &'static str,
        /// The row's key.
        key_value: String,
        /// Column.
        column: String,
        /// What is wrong.
        source: DecodeError,
    },
    /// The writer hung up (it failed; its error is the one to report).
    #[error("the writer stopped")]
    WriterGone,
}

/// A chunk of rows of one UTC date.
#[derive(Debug)]
pub struct Chunk {
    /// The partition date.
    pub date: NaiveDate,
    /// The rows, in the bronze schema (lineage columns included).
    pub batch: RecordBatch,
}

/// Runs the COPY and sends chunks to `tx`. Returns rows read and findings.
pub async fn extract(
    client: &Client,
    schema: &ExportSchema,
    sel: &Selection,
    batch_no: u64,
    ingested_at: DateTime<Utc>,
    tx: mpsc::Sender<Chunk>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(u64, Findings), ExtractError> {
    let table: &SourceTable = schema.table;
    let columns = schema.columns();
    let pg_err = |source| ExtractError::Postgres {
        table: table.table,
        source,
    };
    let copy = format!(
        "COPY ({}) TO STDOUT (FORMAT binary)",
        select_sql(schema, sel)
    );
    tracing::debug!(sql = %copy, "Starting COPY");
    let stream = client.copy_out(copy.as_str()).await.map_err(pg_err)?;
    let types = vec![Type::BYTEA; columns.len()];
    let rows = BinaryCopyOutStream::new(stream, &types);
    pin_mut!(rows);

    let arrow_schema = schema.arrow_schema();
    let time_idx = columns
        .iter()
        .position(|c| c.name == table.time_column)
        .unwrap_or(0);
    let key_idx = columns
        .iter()
        .position(|c| c.name == table.key)
        .unwrap_or(0);
    let mut builders: Vec<ColumnBuilder> = columns
        .iter()
        .map(|c| ColumnBuilder::new(c, CHUNK_ROWS))
        .collect();
    let mut findings = Findings::default();
    let mut current_date: Option<NaiveDate> = None;
    let mut prev_key: Vec<u8> = Vec::new();
    let mut total = 0u64;

    let flush = |builders: &mut Vec<ColumnBuilder>,
                 date: NaiveDate|
     -> Result<Chunk, ExtractError> {
        let n = builders[0].len();
        let mut cols: Vec<ArrayRef> = builders.iter_mut().map(ColumnBuilder::finish).collect();
        cols.push(Arc::new(Int64Array::from(vec![batch_no as i64; n])));
        cols.push(Arc::new(
            TimestampMicrosecondArray::from(vec![ingested_at.timestamp_micros(); n])
                .with_timezone("UTC"),
        ));
        let batch =
            RecordBatch::try_new(arrow_schema.clone(), cols).map_err(|e| ExtractError::Decode {
                table: table.table,
                key: table.key,
                key_value: "?".into(),
                column: "?".into(),
                source: DecodeError(e.to_string()),
            })?;
        Ok(Chunk { date, batch })
    };

    while let Some(row) = rows.next().await {
        let row = row.map_err(pg_err)?;
        let get = |i: usize| row.try_get::<Option<Raw>>(i).map(|o| o.map(|r| r.0));
        let key_raw = get(key_idx).map_err(pg_err)?.unwrap_or_default();
        let time_raw = get(time_idx).map_err(pg_err)?;
        let decode_err = |column: &str, source: DecodeError| ExtractError::Decode {
            table: table.table,
            key: table.key,
            key_value: key_text(key_raw),
            column: column.to_owned(),
            source,
        };
        let micros = match time_raw {
            Some(raw) => {
                crate::decode::timestamptz(raw).map_err(|e| decode_err(table.time_column, e))?
            }
            None => return Err(decode_err(table.time_column, DecodeError("is NULL".into()))),
        };
        let date = DateTime::from_timestamp_micros(micros)
            .unwrap_or_default()
            .date_naive();
        if let Some(d) = current_date
            && (d != date || builders[0].len() >= CHUNK_ROWS)
            && !builders[0].is_empty()
        {
            tx.send(flush(&mut builders, d)?)
                .await
                .map_err(|_| ExtractError::WriterGone)?;
        }
        current_date = Some(date);
        if prev_key == key_raw {
            findings.duplicate_keys += 1;
        }
        prev_key.clear();
        prev_key.extend_from_slice(key_raw);
        for (i, (b, col)) in builders.iter_mut().zip(&columns).enumerate() {
            let raw = get(i).map_err(pg_err)?;
            if raw.is_none() && !col.nullable {
                return Err(decode_err(
                    col.name,
                    DecodeError("is NULL but the contract says NOT NULL".into()),
                ));
            }
            match b.append(raw).map_err(|e| decode_err(col.name, e))? {
                Appended::Ok => {}
                Appended::Infinite if !col.nullable => {
                    return Err(decode_err(
                        col.name,
                        DecodeError(
                            "is ±infinity, which Parquet cannot hold, and the contract says NOT NULL"
                                .into(),
                        ),
                    ));
                }
                Appended::NaN | Appended::Infinite => {
                    *findings.nan_to_null.entry(col.name.to_owned()).or_default() += 1;
                }
            }
        }
        total += 1;
        if total.is_multiple_of(4_096) {
            progress(total);
        }
    }
    if let Some(d) = current_date
        && !builders[0].is_empty()
    {
        tx.send(flush(&mut builders, d)?)
            .await
            .map_err(|_| ExtractError::WriterGone)?;
    }
    progress(total);
    Ok((total, findings))
}

fn key_text(raw: &[u8]) -> String {
    let mut s = String::new();
    if crate::decode::uuid(raw, &mut s).is_ok() {
        s
    } else {
        String::from_utf8_lossy(raw).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lake_common::schema::STOP_EVENTS;

    #[test]
    fn sql_orders_and_bounds() {
        let sel = Selection {
            range: "R".into(),
            scan_from: Some(DateTime::from_timestamp(1_700_000_000, 0).unwrap()),
            backfill: None,
        };
        let sql = select_sql(&ExportSchema::contract(&STOP_EVENTS), &sel);
        assert!(
            sql.starts_with("SELECT event_id, event_seq, occurred_at,"),
            "{sql}"
        );
        assert!(sql.ends_with("WHERE ((R) AND occurred_at >= '2023-11-14 22:13:20.000000+00'::timestamptz) ORDER BY occurred_at, event_id"), "{sql}");
        let sel = Selection {
            range: "R".into(),
            scan_from: None,
            backfill: Some((
                vec![NaiveDate::from_ymd_opt(2026, 1, 2).unwrap()],
                "F".into(),
            )),
        };
        let sql = select_sql(&ExportSchema::contract(&STOP_EVENTS), &sel);
        assert!(
            sql.contains("WHERE (R) OR (((occurred_at >= '2026-01-02 00:00:00.000000+00'::timestamptz AND occurred_at < '2026-01-03 00:00:00.000000+00'::timestamptz)) AND F)"),
            "{sql}"
        );
    }
}
