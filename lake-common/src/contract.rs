//! Checking a live source table against its contract ([`crate::schema::SourceTable`]).
//!
//! Bronze must fail closed when Django's migrations change a column the lake
//! depends on: a dropped or retyped column would otherwise become silent NULLs or
//! a wrong decimal scale. The check reads the catalog inside the run's snapshot,
//! so what it validates is exactly what the run exports.

use std::fmt;

use crate::schema::SourceTable;

/// One way the live table departs from the contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drift {
    /// The table does not exist (or the role cannot see it).
    MissingTable,
    /// A contract column is gone.
    MissingColumn(&'static str),
    /// A contract column has another type.
    Retyped {
        /// Column.
        column: &'static str,
        /// The live type (`format_type` output).
        found: String,
        /// The contract type.
        expected: String,
    },
    /// A column the contract declares NOT NULL accepts NULL.
    Nullable(&'static str),
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingTable => f.write_str("table is missing or not readable"),
            Self::MissingColumn(c) => write!(f, "column {c} is missing"),
            Self::Retyped {
                column,
                found,
                expected,
            } => write!(
                f,
                "column {column} is {found}, the contract needs {expected}"
            ),
            Self::Nullable(c) => write!(f, "column {c} allows NULL, the contract needs NOT NULL"),
        }
    }
}

/// The source schema broke the contract. Maps to exit code 2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "source table {table} no longer matches the bronze contract: {}; fix the schema or update the contract (lake-common/src/schema.rs) in a new release",
    .drift.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
)]
pub struct ContractError {
    /// The table.
    pub table: &'static str,
    /// Every departure found.
    pub drift: Vec<Drift>,
}

/// The catalog query: name, formatted type and NOT NULL of every live column.
pub const COLUMNS_SQL: &str = "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull \
     FROM pg_attribute a WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped \
     ORDER BY a.attnum";

/// Compares live columns `(name, format_type, not_null)` with the contract.
pub fn compare(table: &SourceTable, live: &[(String, String, bool)]) -> Vec<Drift> {
    if live.is_empty() {
        return vec![Drift::MissingTable];
    }
    let mut drift = Vec::new();
    for col in table.columns {
        match live.iter().find(|(name, _, _)| name == col.name) {
            None => drift.push(Drift::MissingColumn(col.name)),
            Some((_, ty, not_null)) => {
                if !col.pg.accepts(ty) {
                    drift.push(Drift::Retyped {
                        column: col.name,
                        found: ty.clone(),
                        expected: col.pg.describe(),
                    });
                } else if !col.nullable && !not_null {
                    drift.push(Drift::Nullable(col.name));
                }
            }
        }
    }
    drift
}

/// Reads the live columns of `table` and checks them against the contract.
pub async fn check(
    client: &tokio_postgres::Client,
    table: &SourceTable,
) -> Result<Result<(), ContractError>, tokio_postgres::Error> {
    let rows = client.query(COLUMNS_SQL, &[&table.table]).await?;
    let live: Vec<(String, String, bool)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let drift = compare(table, &live);
    Ok(if drift.is_empty() {
        Ok(())
    } else {
        Err(ContractError {
            table: table.table,
            drift,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::STOP_EVENTS;

    fn live() -> Vec<(String, String, bool)> {
        STOP_EVENTS
            .columns
            .iter()
            .map(|c| {
                let ty = match c.pg {
                    crate::schema::PgType::Text => "character varying(20)".to_string(),
                    crate::schema::PgType::Id => "integer".to_string(),
                    other => other.describe(),
                };
                (c.name.to_string(), ty, !c.nullable)
            })
            .collect()
    }

    #[test]
    fn matching_table_has_no_drift() {
        assert!(compare(&STOP_EVENTS, &live()).is_empty());
    }

    #[test]
    fn each_drift_names_the_column() {
        let mut l = live();
        l.retain(|(n, _, _)| n != "quantity");
        l.iter_mut().find(|(n, _, _)| n == "fill_price").unwrap().1 = "double precision".into();
        l.iter_mut().find(|(n, _, _)| n == "client_id").unwrap().2 = false;
        let drift = compare(&STOP_EVENTS, &l);
        assert_eq!(drift.len(), 3, "{drift:?}");
        let e = ContractError {
            table: "stop_events",
            drift,
        }
        .to_string();
        assert!(e.contains("column quantity is missing"), "{e}");
        assert!(
            e.contains("column fill_price is double precision, the contract needs numeric(20,8)"),
            "{e}"
        );
        assert!(e.contains("column client_id allows NULL"), "{e}");
        assert_eq!(compare(&STOP_EVENTS, &[]), vec![Drift::MissingTable]);
    }
}
