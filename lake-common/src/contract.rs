//! Checking a live source table against its contract ([`crate::schema::SourceTable`]).
//!
//! Bronze must fail closed when Django's migrations change a column the lake
//! depends on: a dropped or retyped column would otherwise become silent NULLs or
//! a wrong decimal scale. The check reads the catalog inside the run's snapshot,
//! so what it validates is exactly what the run exports.

use std::fmt;

use crate::schema::{
    AddedColumn, BATCH_COLUMN, INGESTED_AT_COLUMN, PARTITION_COLUMN, PgType, SourceTable,
};

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
    /// A column the contract does not name has a type bronze has no mapping for.
    Unmapped {
        /// Column.
        column: String,
        /// The live type.
        found: String,
    },
    /// A column the contract does not name would be read as another: a name
    /// bronze adds itself (`_batch`, `_ingested_at`, the `date` partition key),
    /// or one that differs from another column only in case (DuckDB, Spark and
    /// Hive match names case-insensitively).
    Clashes {
        /// Column.
        column: String,
        /// The name it clashes with.
        with: String,
    },
    /// A column captured by earlier batches (not in the contract) is gone or
    /// changed its Parquet type.
    AddedChanged {
        /// Column.
        column: String,
        /// What it was captured as.
        was: String,
        /// What it is now (`None`: dropped or renamed).
        now: Option<String>,
    },
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
            Self::Unmapped { column, found } => write!(
                f,
                "added column {column} is {found}, a type bronze has no mapping for \
                 (docs/tables.md, \"Columns added to a source table\")"
            ),
            Self::Clashes { column, with } => write!(
                f,
                "added column {column} would be read as {with} (a lineage or partition column, \
                 or the same name in another case)"
            ),
            Self::AddedChanged { column, was, now } => match now {
                None => write!(
                    f,
                    "column {column} (captured as {was}) was dropped or renamed"
                ),
                Some(now) => write!(
                    f,
                    "column {column} was captured as {was} and is now {now}, another Parquet type"
                ),
            },
        }
    }
}

/// The source schema broke the contract. Maps to exit code 2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "source table {table} no longer matches the bronze contract: {}; {}",
    .drift.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
    procedure(.drift)
)]
pub struct ContractError {
    /// The table.
    pub table: &'static str,
    /// Every departure found.
    pub drift: Vec<Drift>,
}

/// What the operator does about `drift` (docs/source-life.md, "Schema
/// changes"): one piece of advice per kind of departure found.
fn procedure(drift: &[Drift]) -> String {
    let mut advice = Vec::new();
    if drift.iter().any(|d| {
        matches!(
            d,
            Drift::MissingTable
                | Drift::MissingColumn(_)
                | Drift::Retyped { .. }
                | Drift::Nullable(_)
        )
    }) {
        advice.push(
            "fix the schema or update the contract (lake-common/src/schema.rs) in a new release",
        );
    }
    if drift.iter().any(|d| matches!(d, Drift::Unmapped { .. })) {
        advice.push(
            "change the column's type to a mapped one (or cast it in a release that maps the type)",
        );
    }
    if drift.iter().any(|d| matches!(d, Drift::Clashes { .. })) {
        advice.push("rename the added column in the source (ALTER TABLE … RENAME COLUMN)");
    }
    if drift
        .iter()
        .any(|d| matches!(d, Drift::AddedChanged { .. }))
    {
        advice.push(
            "after deciding that the lake follows the table as it is now, run bronze-ingest once \
             with --accept-schema: later files hold the columns as they are now, earlier files keep theirs",
        );
    }
    advice.join("; ")
}

/// A live column: name, `format_type()` text, NOT NULL, `pg_type.typcategory`.
pub type LiveColumn = (String, String, bool, String);

/// The catalog query: name, formatted type, NOT NULL and type category of every live column.
pub const COLUMNS_SQL: &str = "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull, \
     t.typcategory::text \
     FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
     WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped \
     ORDER BY a.attnum";

/// Compares live columns with the contract; the columns the contract does not
/// name are returned with their mapping, or are drift when they have none.
pub fn compare(table: &SourceTable, live: &[LiveColumn]) -> (Vec<Drift>, Vec<AddedColumn>) {
    if live.is_empty() {
        return (vec![Drift::MissingTable], vec![]);
    }
    let mut drift = Vec::new();
    for col in table.columns {
        match live.iter().find(|(name, ..)| name == col.name) {
            None => drift.push(Drift::MissingColumn(col.name)),
            Some((_, ty, not_null, _)) => {
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
    let mut added = Vec::new();
    for (name, ty, _, category) in live {
        if table.column(name).is_some() {
            continue;
        }
        let reserved = [BATCH_COLUMN, INGESTED_AT_COLUMN, PARTITION_COLUMN]
            .into_iter()
            .map(str::to_owned);
        let others = live.iter().map(|(n, ..)| n).filter(|n| *n != name).cloned();
        if let Some(with) = reserved
            .chain(others)
            .find(|other| other.to_lowercase() == name.to_lowercase())
        {
            drift.push(Drift::Clashes {
                column: name.clone(),
                with,
            });
            continue;
        }
        match PgType::for_added(ty, category) {
            Some(stored_as) => added.push(AddedColumn {
                name: name.clone(),
                pg_type: ty.clone(),
                stored_as,
            }),
            None => drift.push(Drift::Unmapped {
                column: name.clone(),
                found: ty.clone(),
            }),
        }
    }
    (drift, added)
}

/// Compares the added columns a batch would export with those an earlier batch
/// captured: each must still be there with the same Parquet type (SPEC §5.8).
pub fn compare_added(captured: &[AddedColumn], live: &[AddedColumn]) -> Vec<Drift> {
    captured
        .iter()
        .filter_map(|was| {
            let now = live.iter().find(|c| c.name == was.name);
            match now {
                Some(now) if now.same_storage(was) => None,
                now => Some(Drift::AddedChanged {
                    column: was.name.clone(),
                    was: was.pg_type.clone(),
                    now: now.map(|c| c.pg_type.clone()),
                }),
            }
        })
        .collect()
}

/// Reads the live columns of `table`, checks them against the contract and
/// returns the columns it does not name.
pub async fn check(
    client: &tokio_postgres::Client,
    table: &'static SourceTable,
) -> Result<Result<Vec<AddedColumn>, ContractError>, tokio_postgres::Error> {
    let rows = client.query(COLUMNS_SQL, &[&table.table]).await?;
    let live: Vec<LiveColumn> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let (drift, added) = compare(table, &live);
    Ok(if drift.is_empty() {
        Ok(added)
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

    fn live() -> Vec<LiveColumn> {
        STOP_EVENTS
            .columns
            .iter()
            .map(|c| {
                let ty = match c.pg {
                    crate::schema::PgType::Text => "character varying(20)".to_string(),
                    crate::schema::PgType::Id => "integer".to_string(),
                    other => other.describe(),
                };
                (c.name.to_string(), ty, !c.nullable, "S".to_string())
            })
            .collect()
    }

    #[test]
    fn matching_table_has_no_drift() {
        assert_eq!(compare(&STOP_EVENTS, &live()), (vec![], vec![]));
    }

    #[test]
    fn each_drift_names_the_column() {
        let mut l = live();
        l.retain(|(n, ..)| n != "quantity");
        l.iter_mut().find(|(n, ..)| n == "fill_price").unwrap().1 = "double precision".into();
        l.iter_mut().find(|(n, ..)| n == "client_id").unwrap().2 = false;
        let (drift, added) = compare(&STOP_EVENTS, &l);
        assert!(added.is_empty());
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
        assert!(e.contains("update the contract"), "{e}");
        assert_eq!(compare(&STOP_EVENTS, &[]).0, vec![Drift::MissingTable]);
    }

    #[test]
    fn added_columns_are_mapped_or_named() {
        let mut l = live();
        for (name, ty, cat) in [
            ("venue", "character varying(40)", "S"),
            ("fee", "numeric(12,4)", "N"),
            ("tags", "text[]", "A"),
            ("Mixed Case", "interval", "T"),
            ("area", "point", "G"),
            ("window", "tstzrange", "R"),
        ] {
            l.push((name.into(), ty.into(), false, cat.into()));
        }
        let (drift, added) = compare(&STOP_EVENTS, &l);
        let stored: Vec<(&str, PgType)> = added
            .iter()
            .map(|c| (c.name.as_str(), c.stored_as))
            .collect();
        assert_eq!(
            stored,
            [
                ("venue", PgType::Text),
                ("fee", PgType::Numeric(12, 4)),
                ("tags", PgType::AsText),
                ("Mixed Case", PgType::AsText)
            ]
        );
        let e = ContractError {
            table: "stop_events",
            drift,
        }
        .to_string();
        assert!(
            e.contains("added column area is point, a type bronze has no mapping for"),
            "{e}"
        );
        assert!(e.contains("added column window is tstzrange"), "{e}");
        assert!(
            e.contains("change the column's type to a mapped one"),
            "{e}"
        );

        // Widening a varchar keeps the Parquet type; a new precision does not.
        let mut later = added.clone();
        later[0].pg_type = "text".into();
        later[1] = AddedColumn {
            name: "fee".into(),
            pg_type: "numeric(14,4)".into(),
            stored_as: PgType::Numeric(14, 4),
        };
        later.remove(2);
        let drift = compare_added(&added, &later);
        assert_eq!(drift.len(), 2, "{drift:?}");
        let e = ContractError {
            table: "stop_events",
            drift,
        }
        .to_string();
        assert!(
            e.contains("column fee was captured as numeric(12,4) and is now numeric(14,4)"),
            "{e}"
        );
        assert!(
            e.contains("column tags (captured as text[]) was dropped or renamed"),
            "{e}"
        );
        assert!(e.contains("--accept-schema"), "{e}");
    }

    #[test]
    fn added_names_that_readers_would_confuse_fail_closed() {
        let mut l = live();
        for name in ["_batch", "Fill_Price", "date", "venue", "Venue"] {
            l.push((name.into(), "text".into(), false, "S".into()));
        }
        l.retain(|(n, ..)| n != "quantity");
        let (drift, added) = compare(&STOP_EVENTS, &l);
        assert!(added.is_empty(), "{added:?}");
        let clashes: Vec<(&str, &str)> = drift
            .iter()
            .filter_map(|d| match d {
                Drift::Clashes { column, with } => Some((column.as_str(), with.as_str())),
                _ => None,
            })
            .collect();
        assert_eq!(
            clashes,
            [
                ("_batch", "_batch"),
                ("Fill_Price", "fill_price"),
                ("date", "date"),
                ("venue", "Venue"),
                ("Venue", "venue")
            ]
        );
        // Each kind of departure keeps its own advice.
        let mut drift = drift;
        drift.push(Drift::AddedChanged {
            column: "note".into(),
            was: "text".into(),
            now: None,
        });
        let e = ContractError {
            table: "stop_events",
            drift,
        }
        .to_string();
        assert!(e.contains("column quantity is missing"), "{e}");
        assert!(e.contains("update the contract"), "{e}");
        assert!(e.contains("RENAME COLUMN"), "{e}");
        assert!(e.contains("--accept-schema"), "{e}");
    }
}
