//! Row identity, the second line of defence (SPEC §5.7).
//!
//! xmin names the inserting transaction only until a command re-inserts every
//! row of the table (`ALTER COLUMN … TYPE` with a conversion, `ADD COLUMN` with a
//! volatile default, a pg_repack-style swap): then every row carries the
//! rewriting transaction's xid and falls into the next batch's range. Bronze
//! notices such a rewrite by the table's file node (recorded per batch; a
//! rewrite always writes a new one) and the batch after it drops every row
//! already captured:
//!
//! * `stop_events` (append-only): a row whose `event_id` is already committed;
//! * the outbox (updated in place): a row equal, column by column, to the last
//!   captured version of its `outbox_id` — a real update is a new version. A
//!   column added since that version was captured is not compared: the
//!   rewrite of `ADD COLUMN … DEFAULT random()` gives every row a value no
//!   captured version holds, and is no update. (The cost: an update of that
//!   column alone, committed in the rewrite's batch, is not captured until
//!   the row changes again.)
//!
//! `VACUUM FULL` and `CLUSTER` also write a new file node but keep xmin, so the
//! batch after them simply finds nothing to drop. The cost is paid only after a
//! file-node change: the key (and, for the outbox, a 16-byte digest of the row) of
//! every committed row the batch can select — the look-back window for events
//! (the scan is bounded by it), all captured versions for the outbox (its scan is
//! not bounded) — held in memory for that one batch.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, StringArray};
use arrow::row::{RowConverter, Rows, SortField};
use chrono::NaiveDate;
use futures::{StreamExt, TryStreamExt};
use lake_common::manifest::DataFile;
use lake_common::schema::{BATCH_COLUMN, INGESTED_AT_COLUMN, SourceTable};
use lake_common::{Lake, parquet_io};
use object_store::path::Path;

/// A 128-bit digest of a row's contract columns.
type Digest = [u8; 16];

/// What identifies one version of an outbox row: its contract columns, and
/// each added column its file holds (an interned name and a hash of the value,
/// NULL included). Two versions are equal when they agree on every column
/// both hold (SPEC §5.8): a version captured before a column was added equals
/// its re-insertion after the column came with a default — `ADD COLUMN … DEFAULT
/// random()` rewrites the table and must not re-capture every row.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Version {
    base: Digest,
    added: Box<[(u16, u64)]>,
}

impl Version {
    /// Whether `self` (captured) and `new` agree on the columns both hold.
    fn same_as(&self, new: &Version) -> bool {
        self.base == new.base
            && self.added.iter().all(|(id, hash)| {
                new.added
                    .iter()
                    .find(|(other, _)| other == id)
                    .is_none_or(|(_, h)| h == hash)
            })
    }
}

/// Errors of reading or applying the captured row identities.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// A committed bronze file could not be read.
    #[error(
        "reading the captured rows of {path} (to drop rows a table rewrite re-inserted): {source}"
    )]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: parquet::errors::ParquetError,
    },
    /// A batch lacks its key column or has it in another type (a bug).
    #[error("bronze rows without a text key column {0}")]
    Key(&'static str),
    /// Arrow refused to compare or filter the rows.
    #[error("comparing rows with the captured ones: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
}

/// The rows already captured, by key.
#[derive(Debug)]
pub struct Captured {
    table: &'static SourceTable,
    /// Key → its last captured version (`None` for append-only tables, where
    /// the key alone decides).
    rows: HashMap<String, Option<Version>>,
    /// The added columns' names, interned for [`Version::added`].
    names: Vec<String>,
}

impl Captured {
    /// Reads the committed rows of `table` that a batch may select again:
    /// those of days from `from` on (`None`: every day), except the days in
    /// `skip` (a backfill's, whose files it supersedes).
    pub async fn load(
        lake: &Lake,
        table: &'static SourceTable,
        live: &[DataFile],
        from: Option<NaiveDate>,
        skip: &[NaiveDate],
    ) -> Result<Self, IdentityError> {
        let mut out = Self {
            table,
            rows: HashMap::new(),
            names: Vec::new(),
        };
        // Batch order, so a later version of an outbox row replaces an earlier one.
        for file in live {
            if from.is_some_and(|d| file.date < d) || skip.contains(&file.date) {
                continue;
            }
            let path = Path::from(file.path.as_str());
            let read_err = |source| IdentityError::Read {
                path: file.path.clone(),
                source,
            };
            // Append-only tables need the key alone; the outbox, whole versions.
            let mut stream = if table.updated_in_place {
                parquet_io::read_stream(lake, &path)
                    .await
                    .map_err(read_err)?
                    .boxed()
            } else {
                parquet_io::read_columns(lake, &path, &[table.key])
                    .await
                    .map_err(read_err)?
                    .boxed()
            };
            while let Some(batch) = stream.try_next().await.map_err(read_err)? {
                let keys = out.keys(&batch)?;
                let ids: Vec<Option<u16>> = added_columns(table, &batch)
                    .iter()
                    .map(|(name, _)| Some(out.intern(name)))
                    .collect();
                let mut versions = out.versions(&batch, &ids)?.map(Vec::into_iter);
                for key in keys.iter() {
                    let version = versions.as_mut().and_then(Iterator::next);
                    if let Some(k) = key {
                        out.rows.insert(k.to_owned(), version);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Committed keys held.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether no row is held.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Whether each row of `batch` is captured already: its key (append-only
    /// tables), or this very version as the last one of its key (the outbox).
    pub fn captured(&self, batch: &RecordBatch) -> Result<Vec<bool>, IdentityError> {
        let keys = self.keys(batch)?;
        // A column no captured version holds cannot tell versions apart.
        let ids: Vec<Option<u16>> = added_columns(self.table, batch)
            .iter()
            .map(|(name, _)| self.names.iter().position(|n| n == name).map(|i| i as u16))
            .collect();
        let versions = self.versions(batch, &ids)?;
        Ok((0..batch.num_rows())
            .map(|i| {
                let seen = keys
                    .is_valid(i)
                    .then(|| self.rows.get(keys.value(i)))
                    .flatten();
                match (seen, &versions) {
                    (None, _) => false,
                    (Some(_), None) => true,
                    (Some(last), Some(v)) => last.as_ref().is_some_and(|l| l.same_as(&v[i])),
                }
            })
            .collect())
    }

    /// `batch` without the rows already captured; and how many were dropped.
    pub fn drop_captured(&self, batch: RecordBatch) -> Result<(RecordBatch, u64), IdentityError> {
        let keep: BooleanArray = self
            .captured(&batch)?
            .into_iter()
            .map(|c| Some(!c))
            .collect();
        let dropped = keep.false_count() as u64;
        if dropped == 0 {
            return Ok((batch, 0));
        }
        Ok((arrow::compute::filter_record_batch(&batch, &keep)?, dropped))
    }

    fn keys(&self, batch: &RecordBatch) -> Result<StringArray, IdentityError> {
        batch
            .column_by_name(self.table.key)
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
            .cloned()
            .ok_or(IdentityError::Key(self.table.key))
    }

    fn intern(&mut self, name: &str) -> u16 {
        match self.names.iter().position(|n| n == name) {
            Some(i) => i as u16,
            None => {
                self.names.push(name.to_owned());
                (self.names.len() - 1) as u16
            }
        }
    }

    /// The versions of `batch`'s rows: a digest of the contract columns
    /// (lineage columns differ between versions by construction) and a hash of
    /// each added column with an id in `ids` (aligned with
    /// [`added_columns`]); `None` for append-only tables.
    fn versions(
        &self,
        batch: &RecordBatch,
        ids: &[Option<u16>],
    ) -> Result<Option<Vec<Version>>, IdentityError> {
        if !self.table.updated_in_place {
            return Ok(None);
        }
        let columns: Vec<_> = self
            .table
            .columns
            .iter()
            .filter_map(|c| batch.column_by_name(c.name).cloned())
            .collect();
        let rows = row_bytes(&columns)?;
        let added = added_columns(self.table, batch);
        let added_rows = added
            .iter()
            .zip(ids)
            .filter_map(|((_, c), id)| id.map(|id| (id, c)))
            .map(|(id, c)| Ok((id, row_bytes(std::slice::from_ref(c))?)))
            .collect::<Result<Vec<_>, IdentityError>>()?;
        Ok(Some(
            rows.iter()
                .enumerate()
                .map(|(i, row)| Version {
                    base: digest(row.as_ref()),
                    added: added_rows
                        .iter()
                        .map(|(id, r)| (*id, hash64(r.row(i).as_ref())))
                        .collect(),
                })
                .collect(),
        ))
    }
}

/// The columns of `batch` the contract does not name, lineage excluded.
fn added_columns<'a>(table: &SourceTable, batch: &'a RecordBatch) -> Vec<(&'a str, &'a ArrayRef)> {
    batch
        .schema_ref()
        .fields()
        .iter()
        .zip(batch.columns())
        .filter(|(f, _)| {
            table.column(f.name()).is_none()
                && ![BATCH_COLUMN, INGESTED_AT_COLUMN].contains(&f.name().as_str())
        })
        .map(|(f, c)| (f.name().as_str(), c))
        .collect()
}

/// The row format of `columns` (comparable bytes per row).
fn row_bytes(columns: &[ArrayRef]) -> Result<Rows, IdentityError> {
    let converter = RowConverter::new(
        columns
            .iter()
            .map(|c| SortField::new(c.data_type().clone()))
            .collect(),
    )?;
    Ok(converter.convert_columns(columns)?)
}

fn digest(bytes: &[u8]) -> Digest {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&salted(0, bytes).to_le_bytes());
    out[8..].copy_from_slice(&salted(1, bytes).to_le_bytes());
    out
}

/// A 64-bit hash of one added column's value: it only ever tells two versions
/// of the same key apart.
fn hash64(bytes: &[u8]) -> u64 {
    salted(2, bytes)
}

fn salted(salt: u8, bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    salt.hash(&mut h);
    bytes.hash(&mut h);
    h.finish()
}
