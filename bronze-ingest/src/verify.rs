//! `--verify`: an audit of the lake against PostgreSQL, per day and dataset.
//!
//! The incremental scan may be bounded in time (`BRONZE_LOOKBACK`); the audit is
//! not. It compares, per UTC day, what PostgreSQL holds below the last committed
//! horizon with what the committed bronze files hold:
//!
//! * events (append-only): row count and `sum(quantity)` (NaN and infinities,
//!   which bronze stores as NULL, left out of both sums), reading only the sum
//!   column;
//! * the outbox (rows updated in place, deleted by its cleanup): every row
//!   PostgreSQL still holds must be in bronze *in its current version*; rows the
//!   cleanup deleted are not flagged (bronze keeps them, by design). PostgreSQL's
//!   rows are streamed through the export's own decoder and compared with the
//!   last captured version of each `outbox_id` ([`crate::identity`]).

use std::collections::BTreeMap;

use arrow::array::{Array, Decimal128Array};
use chrono::NaiveDate;
use futures::TryStreamExt;
use lake_common::contract::{self, ContractError};
use lake_common::manifest;
use lake_common::schema::{AddedColumn, ExportSchema, SourceTable};
use lake_common::{Lake, parquet_io};
use object_store::path::Path;
use serde::Serialize;
use tokio_postgres::Client;

use crate::horizon;

/// One day's numbers on both sides.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DayCheck {
    /// Rows (events) or distinct ids (outbox) in PostgreSQL.
    pub postgres_rows: u64,
    /// The same in the lake.
    pub lake_rows: u64,
    /// `sum(quantity)` in PostgreSQL, as an exact decimal string (events only).
    pub postgres_sum: Option<String>,
    /// `sum(quantity)` in the lake.
    pub lake_sum: Option<String>,
}

/// A day whose numbers differ.
#[derive(Debug, Clone, Serialize)]
pub struct Mismatch {
    /// Dataset.
    pub dataset: String,
    /// Day.
    pub date: NaiveDate,
    /// The numbers.
    #[serde(flatten)]
    pub check: DayCheck,
}

/// Audits one dataset; returns the days that differ.
pub async fn verify_dataset(
    lake: &Lake,
    client: &Client,
    table: &'static SourceTable,
    live_added: Vec<AddedColumn>,
    xmax: u64,
    only: &[NaiveDate],
) -> anyhow::Result<(usize, Vec<Mismatch>)> {
    let history = manifest::BronzeLog::load(lake, table.dataset).await?;
    let live: Vec<manifest::DataFile> = history.live_files().into_iter().map(|f| f.file).collect();
    let Some(last) = history.latest_committed() else {
        tracing::info!(dataset = %table.dataset, "Nothing committed yet; nothing to verify");
        return Ok((0, vec![]));
    };
    let drift = contract::compare_added(&last.added_columns, &live_added);
    if !drift.is_empty() {
        return Err(ContractError {
            table: table.table,
            drift,
        }
        .into());
    }
    let finished = horizon::finished_before(last.h, xmax)?;
    if table.updated_in_place {
        // The columns as they are now (a retype that kept the Parquet type may
        // have changed the wire format); a version is compared on the columns
        // both PostgreSQL and bronze hold.
        let schema = ExportSchema {
            table,
            added: live_added,
        };
        let state = history.identity_state();
        let live = history.live_files();
        return verify_versions(lake, client, &schema, state, &live, finished, only).await;
    }
    let mut days: BTreeMap<NaiveDate, DayCheck> = BTreeMap::new();

    // PostgreSQL: everything finished below the last committed horizon. Bronze
    // stores NaN and ±Infinity as NULL (a quality finding): not in the sums.
    let time = table.time_column;
    let measure = match table.verify_sum_column {
        Some(col) => format!(
            "count(*), (sum({col}) FILTER (WHERE {col} NOT IN ('NaN', 'Infinity', '-Infinity')))::text"
        ),
        None => "count(*), NULL::text".to_owned(),
    };
    let sql = format!(
        "SELECT ({time} AT TIME ZONE 'UTC')::date, {measure} FROM {} WHERE {finished} \
         AND (cardinality($1::date[]) = 0 OR ({time} AT TIME ZONE 'UTC')::date = ANY($1::date[])) \
         GROUP BY 1",
        table.table
    );
    let only_days: Vec<NaiveDate> = only.to_vec();
    for row in client.query(sql.as_str(), &[&only_days]).await? {
        let date: NaiveDate = row.get(0);
        let d = days.entry(date).or_default();
        d.postgres_rows = row.get::<_, i64>(1) as u64;
        d.postgres_sum = row
            .get::<_, Option<String>>(2)
            .map(|s| normalise_decimal(&s));
    }

    // Lake: the committed, non-superseded files; rows from the footers, the
    // sum from its one column.
    let scale = table
        .verify_sum_column
        .and_then(|c| table.column(c))
        .map(|c| match c.pg {
            lake_common::schema::PgType::Numeric(_, s) => s,
            _ => 0,
        })
        .unwrap_or(0);
    let mut sums: BTreeMap<NaiveDate, (i128, bool)> = BTreeMap::new();
    let columns: Vec<&str> = table.verify_sum_column.into_iter().collect();
    for file in &live {
        if !only.is_empty() && !only.contains(&file.date) {
            continue;
        }
        let path = Path::from(file.path.as_str());
        days.entry(file.date).or_default().lake_rows += file.rows;
        if columns.is_empty() {
            continue;
        }
        // Read at the listed size: an object of another size (even valid
        // Parquet, which would only show as a day with wrong numbers) fails.
        let read = async {
            let mut stream =
                parquet_io::read_listed_columns(lake, &path, file.bytes, &columns).await?;
            while let Some(batch) = stream.try_next().await? {
                if let Some(col) = batch.column(0).as_any().downcast_ref::<Decimal128Array>() {
                    let e = sums.entry(file.date).or_default();
                    e.0 += col.iter().flatten().sum::<i128>();
                    e.1 |= col.null_count() < col.len();
                }
            }
            Ok::<_, parquet::errors::ParquetError>(())
        };
        if let Err(err) = read.await {
            let hash = !matches!(err, parquet::errors::ParquetError::External(_));
            if let Some(why) =
                parquet_io::differs_from_listed(lake, &path, file.bytes, &file.sha256, hash).await
            {
                anyhow::bail!(
                    "bronze file {} is not the file bronze committed: {why} ({err}); restore it (a \
                     backup, the bucket's versioning), or re-export its day with --date {}",
                    file.path,
                    file.date
                );
            }
            return Err(
                anyhow::Error::new(err).context(format!("reading bronze file {}", file.path))
            );
        }
    }
    for (date, (sum, any)) in sums {
        if any {
            days.entry(date).or_default().lake_sum = Some(format_decimal(sum, scale));
        }
    }
    // The days before the retention horizon were removed on purpose
    // (lake-maintain); a late row for one of them lands and is removed again.
    if let Some(kept_from) = history.retained_before() {
        days.retain(|date, _| *date >= kept_from);
    }
    Ok(differing(table, days))
}

/// The days checked, and those whose numbers differ.
fn differing(table: &SourceTable, days: BTreeMap<NaiveDate, DayCheck>) -> (usize, Vec<Mismatch>) {
    let checked = days.len();
    let mismatches = days
        .into_iter()
        .filter(|(_, c)| c.postgres_rows != c.lake_rows || c.postgres_sum != c.lake_sum)
        .map(|(date, check)| Mismatch {
            dataset: table.dataset.to_string(),
            date,
            check,
        })
        .collect();
    (checked, mismatches)
}

/// The outbox audit: per day, PostgreSQL's rows finished before the horizon,
/// and how many of them bronze holds in their current version.
async fn verify_versions(
    lake: &Lake,
    client: &Client,
    schema: &ExportSchema,
    state: Option<&manifest::IdentityState>,
    live: &[manifest::LiveFile],
    finished: String,
    only: &[NaiveDate],
) -> anyhow::Result<(usize, Vec<Mismatch>)> {
    let table = schema.table;
    let from = only.iter().min().copied();
    let captured = crate::identity::Captured::load(lake, table, state, live, from, &[]).await?;
    // Only some days: the days' rows alone (the backfill form of the SELECT).
    let sel = if only.is_empty() {
        crate::extract::Selection {
            range: finished,
            scan_from: None,
            backfill: None,
        }
    } else {
        crate::extract::Selection {
            range: "false".into(),
            scan_from: None,
            backfill: Some((only.to_vec(), finished)),
        }
    };
    let (tx, mut rx) =
        tokio::sync::mpsc::channel::<crate::extract::Chunk>(crate::extract::CHANNEL_CHUNKS);
    let count = async {
        let mut days: BTreeMap<NaiveDate, DayCheck> = BTreeMap::new();
        while let Some(chunk) = rx.recv().await {
            let held = captured.captured(&chunk.batch)?;
            let d = days.entry(chunk.date).or_default();
            d.postgres_rows += held.len() as u64;
            d.lake_rows += held.iter().filter(|h| **h).count() as u64;
        }
        Ok::<_, crate::identity::IdentityError>(days)
    };
    let export = crate::extract::extract(client, schema, &sel, 0, chrono::Utc::now(), tx, &|_| {});
    let (exported, days) = tokio::join!(export, count);
    exported?;
    Ok(differing(table, days?))
}

/// Renders a scaled integer as a decimal string without trailing zeros.
pub fn format_decimal(v: i128, scale: i8) -> String {
    let neg = v < 0;
    let digits = v.unsigned_abs().to_string();
    let scale = scale.max(0) as usize;
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    normalise_decimal(&format!("{}{int}.{frac}", if neg { "-" } else { "" }))
}

/// Strips trailing fractional zeros (`12.50000000` → `12.5`, `3.000` → `3`).
pub fn normalise_decimal(s: &str) -> String {
    if !s.contains('.') {
        return s.to_owned();
    }
    let t = s.trim_end_matches('0').trim_end_matches('.');
    if t == "-0" { "0".into() } else { t.to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_render_exactly() {
        assert_eq!(format_decimal(150_000_000, 8), "1.5");
        assert_eq!(format_decimal(-1, 8), "-0.00000001");
        assert_eq!(
            format_decimal(99_999_999_999_999_999_999, 8),
            "999999999999.99999999"
        );
        assert_eq!(format_decimal(0, 8), "0");
        assert_eq!(normalise_decimal("12.50000000"), "12.5");
        assert_eq!(normalise_decimal("300"), "300");
    }
}
