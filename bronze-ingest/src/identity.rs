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
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, FixedSizeBinaryArray, RecordBatch, StringArray,
    UInt64Array,
};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{DataType, Field, Schema};
use chrono::NaiveDate;
use futures::{StreamExt, TryStreamExt};
use lake_common::manifest::{Checkpoint, IdentityState, LiveFile};
use lake_common::schema::{BATCH_COLUMN, INGESTED_AT_COLUMN, SourceTable};
use lake_common::{Lake, parquet_io};
use object_store::path::Path;
use sha2::{Digest as _, Sha256};

/// Columns of a state file: the key, the contract digest, and one hash column
/// per added column, named with this prefix.
const STATE_KEY: &str = "key";
const STATE_BASE: &str = "contract_digest";
const STATE_ADDED_PREFIX: &str = "added:";
/// Rows per record batch of a state file.
const STATE_CHUNK_ROWS: usize = 64 * 1024;

/// A 128-bit digest of a row's contract columns.
type Digest = [u8; 16];

/// How [`Version`]s are computed: SHA-256 over the specified encoding of
/// [`encode`]. Every state written records it ([`IdentityState::digest`]), and
/// a state of another digest is never compared with (its versions are rebuilt
/// from the live files): digests that changed under a reader would make a
/// rewrite re-capture every row, and the outbox's retention remove files that
/// hold latest versions. Change it with the encoding.
pub const DIGEST: &str = "sha256-values-1";

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
    /// The row-identity state file could not be read or written.
    #[error(
        "{action} the row-identity state {path}: {source}; it is part of the lake's checkpointed \
         state (docs/source-life.md, \"The row-identity state\"): restore it from the bucket's \
         versioning or backups rather than deleting it"
    )]
    State {
        /// Reading or writing.
        action: &'static str,
        /// The file.
        path: String,
        /// Why.
        source: parquet::errors::ParquetError,
    },
    /// PostgreSQL could not list the keys it holds.
    #[error("listing the keys PostgreSQL holds (to prune the row-identity state): {0}")]
    Source(#[from] tokio_postgres::Error),
    /// A batch lacks its key column or has it in another type (a bug).
    #[error("bronze rows without a text key column {0}")]
    Key(&'static str),
    /// Arrow refused to compare or filter the rows.
    #[error("comparing rows with the captured ones: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// A column of a type bronze never writes (a bug).
    #[error(
        "a bronze column has type {0}, which row identity has no specified digest for; \
         bronze writes none such: report it with the table's schema"
    )]
    Unsupported(DataType),
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
    /// the row-identity `state` (the outbox's; every version through its
    /// batch), then the `live` files of later batches, of days from `from` on
    /// (`None`: every day), except the days in `skip` (a backfill's, whose
    /// files it supersedes).
    pub async fn load(
        lake: &Lake,
        table: &'static SourceTable,
        state: Option<&IdentityState>,
        live: &[LiveFile],
        from: Option<NaiveDate>,
        skip: &[NaiveDate],
    ) -> Result<Self, IdentityError> {
        let mut out = Self {
            table,
            rows: HashMap::new(),
            names: Vec::new(),
        };
        let through = match state {
            Some(s) if table.updated_in_place && s.digest == DIGEST => {
                out.read_state(lake, s).await?;
                s.batch
            }
            Some(s) if table.updated_in_place => {
                tracing::warn!(
                    state = %s.path,
                    digest = %s.digest,
                    "The row-identity state was written with another digest than this release's \
                     ({DIGEST}; an earlier release's is empty): its versions are rebuilt from the \
                     live files instead, and the next checkpoint writes a state in this digest"
                );
                0
            }
            _ => 0,
        };
        // Batch order, so a later version of an outbox row replaces an earlier one.
        for LiveFile { batch, file } in live {
            if *batch <= through || from.is_some_and(|d| file.date < d) || skip.contains(&file.date)
            {
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

    /// Adds the versions of a state file (see [`Self::write_state`]).
    async fn read_state(
        &mut self,
        lake: &Lake,
        state: &IdentityState,
    ) -> Result<(), IdentityError> {
        let err = |source| IdentityError::State {
            action: "reading",
            path: state.path.clone(),
            source,
        };
        let malformed = |what: &str| {
            err(parquet::errors::ParquetError::General(format!(
                "{what} (not a row-identity state of {})",
                self.table.table
            )))
        };
        let mut stream = parquet_io::read_stream(lake, &Path::from(state.path.as_str()))
            .await
            .map_err(err)?;
        while let Some(batch) = stream.try_next().await.map_err(err)? {
            let keys = batch
                .column_by_name(STATE_KEY)
                .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                .ok_or_else(|| malformed("no text key column"))?;
            let bases = batch
                .column_by_name(STATE_BASE)
                .and_then(|c| c.as_any().downcast_ref::<FixedSizeBinaryArray>())
                .filter(|b| b.value_length() == 16)
                .ok_or_else(|| malformed("no 16-byte digest column"))?;
            let mut added = Vec::new();
            for (field, column) in batch.schema_ref().fields().iter().zip(batch.columns()) {
                if let Some(name) = field.name().strip_prefix(STATE_ADDED_PREFIX) {
                    let hashes = column
                        .as_any()
                        .downcast_ref::<UInt64Array>()
                        .ok_or_else(|| malformed("an added column's hashes are not UInt64"))?
                        .clone();
                    added.push((self.intern(name), hashes));
                }
            }
            for i in 0..batch.num_rows() {
                let mut base = [0u8; 16];
                base.copy_from_slice(bases.value(i));
                let version = Version {
                    base,
                    added: added
                        .iter()
                        .filter(|(_, h)| h.is_valid(i))
                        .map(|(id, h)| (*id, h.value(i)))
                        .collect(),
                };
                self.rows.insert(keys.value(i).to_owned(), Some(version));
            }
        }
        Ok(())
    }

    /// Writes the versions of the keys for which `holds` is true to `path`,
    /// sorted by key: one row per key with its contract digest and, per added
    /// column, the value's hash where that version holds the column (NULL
    /// where it does not). Returns how many keys it holds.
    pub async fn write_state(
        &self,
        lake: &Lake,
        path: &Path,
        holds: impl Fn(&str) -> bool,
    ) -> Result<u64, IdentityError> {
        let err = |source| IdentityError::State {
            action: "writing",
            path: path.to_string(),
            source,
        };
        let mut fields = vec![
            Field::new(STATE_KEY, DataType::Utf8, false),
            Field::new(STATE_BASE, DataType::FixedSizeBinary(16), false),
        ];
        fields.extend(
            self.names
                .iter()
                .map(|n| Field::new(format!("{STATE_ADDED_PREFIX}{n}"), DataType::UInt64, true)),
        );
        let schema = Arc::new(Schema::new(fields));
        let mut keys: Vec<(&String, &Version)> = self
            .rows
            .iter()
            .filter_map(|(k, v)| Some((k, v.as_ref()?)))
            .filter(|(k, _)| holds(k))
            .collect();
        keys.sort_unstable_by_key(|(k, _)| *k);
        let mut writer =
            parquet_io::FileWriter::create(lake, path.clone(), schema.clone()).map_err(err)?;
        for chunk in keys.chunks(STATE_CHUNK_ROWS) {
            let mut columns: Vec<ArrayRef> = vec![
                Arc::new(StringArray::from_iter_values(
                    chunk.iter().map(|(k, _)| k.as_str()),
                )),
                Arc::new(
                    FixedSizeBinaryArray::try_from_iter(chunk.iter().map(|(_, v)| v.base))
                        .map_err(|e| err(e.into()))?,
                ),
            ];
            for id in 0..self.names.len() as u16 {
                columns.push(Arc::new(UInt64Array::from_iter(chunk.iter().map(
                    |(_, v)| v.added.iter().find(|(i, _)| *i == id).map(|(_, h)| *h),
                ))));
            }
            let batch = RecordBatch::try_new(schema.clone(), columns).map_err(|e| err(e.into()))?;
            writer.write(&batch).await.map_err(err)?;
        }
        if keys.is_empty() {
            writer
                .write(&RecordBatch::new_empty(schema))
                .await
                .map_err(err)?;
        }
        writer.finish().await.map_err(err)?;
        Ok(keys.len() as u64)
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
        let rows = encode(&columns, batch.num_rows())?;
        let added = added_columns(self.table, batch);
        let added_hashes = added
            .iter()
            .zip(ids)
            .filter_map(|((_, c), id)| id.map(|id| (id, c)))
            .map(|(id, c)| {
                let values = encode(std::slice::from_ref(c), batch.num_rows())?;
                Ok((id, values.iter().map(|v| hash64(v)).collect::<Vec<_>>()))
            })
            .collect::<Result<Vec<_>, IdentityError>>()?;
        Ok(Some(
            rows.iter()
                .enumerate()
                .map(|(i, row)| Version {
                    base: digest(row),
                    added: added_hashes.iter().map(|(id, h)| (*id, h[i])).collect(),
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

/// Writes the row-identity state of `checkpoint` (the outbox's): the state it
/// carries over, plus the versions its live files added since, pruned to the
/// keys PostgreSQL still holds in the run's snapshot — a cleaned-up row can
/// never be re-inserted by a rewrite, so its versions are no longer needed to
/// recognise one. The state's size then follows the source table, not the
/// lake's history. Returns the keys written; the checkpoint then references
/// the new state.
pub async fn write_state(
    lake: &Lake,
    client: &tokio_postgres::Client,
    table: &'static SourceTable,
    checkpoint: &mut Checkpoint,
) -> Result<u64, IdentityError> {
    let captured = Captured::load(
        lake,
        table,
        checkpoint.identity_state.as_ref(),
        &checkpoint.live,
        None,
        &[],
    )
    .await?;
    let sql = format!("SELECT {}::text FROM {}", table.key, table.table);
    let holds: std::collections::HashSet<String> = client
        .query(sql.as_str(), &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let path = table.dataset.identity_state(checkpoint.batch);
    let keys = captured
        .write_state(lake, &path, |k| holds.contains(k))
        .await?;
    checkpoint.identity_state = Some(IdentityState {
        path: path.to_string(),
        batch: checkpoint.batch,
        digest: DIGEST.into(),
    });
    Ok(keys)
}

/// Each row of `columns` (`rows` of them) in a specified encoding, column
/// after column; per value a tag byte (0: NULL, 1: a value), then the value:
///
/// * fixed-width types (integers, floats, decimals, dates, times,
///   timestamps, intervals) as the Arrow columnar format lays them out:
///   their little-endian bytes;
/// * booleans as one byte (0 or 1);
/// * strings and binaries as their length (little-endian u64), then their
///   bytes; fixed-size binaries as their bytes.
///
/// Those are every type bronze writes (lake-common's type mapping); any
/// other is refused rather than digested some unspecified way.
///
/// A specification, unlike arrow's row format (not meant to be persisted) or
/// Rust's `DefaultHasher` (which may change with the toolchain): the digests
/// in a state must mean the same to every later release ([`DIGEST`]).
fn encode(columns: &[ArrayRef], rows: usize) -> Result<Vec<Vec<u8>>, IdentityError> {
    let mut out = vec![Vec::new(); rows];
    for column in columns {
        let nulls = column.logical_nulls();
        let nulls = nulls.as_ref();
        match column.data_type() {
            DataType::Boolean => {
                let a = column.as_boolean();
                put(&mut out, nulls, |i, o| o.push(u8::from(a.value(i))));
            }
            DataType::Utf8 => {
                let a = column.as_string::<i32>();
                put(&mut out, nulls, |i, o| sized(o, a.value(i).as_bytes()));
            }
            DataType::LargeUtf8 => {
                let a = column.as_string::<i64>();
                put(&mut out, nulls, |i, o| sized(o, a.value(i).as_bytes()));
            }
            DataType::Binary => {
                let a = column.as_binary::<i32>();
                put(&mut out, nulls, |i, o| sized(o, a.value(i)));
            }
            DataType::LargeBinary => {
                let a = column.as_binary::<i64>();
                put(&mut out, nulls, |i, o| sized(o, a.value(i)));
            }
            DataType::FixedSizeBinary(_) => {
                let a = column.as_fixed_size_binary();
                put(&mut out, nulls, |i, o| o.extend_from_slice(a.value(i)));
            }
            t if t.primitive_width().is_some() => {
                let width = t.primitive_width().unwrap_or_default();
                let data = column.to_data();
                let values = data.buffers()[0].as_slice();
                let first = data.offset();
                put(&mut out, nulls, |i, o| {
                    let at = (first + i) * width;
                    o.extend_from_slice(&values[at..at + width]);
                });
            }
            other => return Err(IdentityError::Unsupported(other.clone())),
        }
    }
    Ok(out)
}

/// Appends each row's tag, and its value by `value` unless NULL.
fn put(rows: &mut [Vec<u8>], nulls: Option<&NullBuffer>, value: impl Fn(usize, &mut Vec<u8>)) {
    for (i, row) in rows.iter_mut().enumerate() {
        if nulls.is_some_and(|n| n.is_null(i)) {
            row.push(0);
        } else {
            row.push(1);
            value(i, row);
        }
    }
}

/// Appends `bytes` after their length.
fn sized(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// The digest of an encoded row: the first 16 bytes of its SHA-256.
fn digest(bytes: &[u8]) -> Digest {
    let mut out = [0u8; 16];
    out.copy_from_slice(&Sha256::digest(bytes)[..16]);
    out
}

/// A 64-bit hash of one added column's encoded value (the first 8 bytes of
/// its SHA-256): it only ever tells two versions of the same key apart.
fn hash64(bytes: &[u8]) -> u64 {
    let mut out = [0u8; 8];
    out.copy_from_slice(&Sha256::digest(bytes)[..8]);
    u64::from_le_bytes(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report
    use super::*;
    use arrow::array::{Decimal128Array, Int64Array, TimestampMicrosecondArray};

    fn columns() -> Vec<ArrayRef> {
        vec![
            Arc::new(Int64Array::from(vec![Some(1), None, Some(-3)])),
            Arc::new(StringArray::from(vec![Some("a"), Some(""), None])),
            Arc::new(BooleanArray::from(vec![Some(true), Some(false), None])),
            Arc::new(TimestampMicrosecondArray::from(vec![
                Some(1_700_000_000_000_000),
                None,
                Some(0),
            ])),
            Arc::new(
                Decimal128Array::from(vec![Some(12_345), Some(-1), None])
                    .with_precision_and_scale(20, 8)
                    .unwrap(),
            ),
            Arc::new(
                FixedSizeBinaryArray::try_from_sparse_iter_with_size(
                    vec![Some([7u8; 16]), None, Some([0u8; 16])].into_iter(),
                    16,
                )
                .unwrap(),
            ),
        ]
    }

    fn hex(d: &[u8]) -> String {
        d.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The digests are a specification: a state written today must mean the
    /// same to every later release. This fails if the encoding or the hash
    /// changes; then change [`DIGEST`] too (older states are then rebuilt).
    #[test]
    fn the_digest_of_a_row_is_pinned() {
        let rows = encode(&columns(), 3).unwrap();
        let digests: Vec<String> = rows.iter().map(|r| hex(&digest(r))).collect();
        assert_eq!(
            digests, PINNED,
            "the encoding changed: change DIGEST with it"
        );
        assert_eq!(DIGEST, "sha256-values-1");
    }

    /// Computed once, and checked by hand: Python's `hashlib.sha256` over the
    /// encoding as documented gives the same first two.
    const PINNED: [&str; 3] = [
        "72e456bc31cbb5049244ef76cd69cbf3",
        "b200579376108a55d2b591733796bac3",
        "8977b6c4921d3431158c2d516be8e31d",
    ];

    #[test]
    fn nulls_empty_values_and_slices_encode_as_they_should() {
        let rows = encode(&columns(), 3).unwrap();
        // NULL and "" differ; so do a value and the next column's.
        let s: ArrayRef = Arc::new(StringArray::from(vec![None, Some("")]));
        let e = encode(&[s], 2).unwrap();
        assert_ne!(e[0], e[1]);
        let ab: ArrayRef = Arc::new(StringArray::from(vec!["ab"]));
        let (a, b): (ArrayRef, ArrayRef) = (
            Arc::new(StringArray::from(vec!["a"])),
            Arc::new(StringArray::from(vec!["b"])),
        );
        assert_ne!(
            encode(&[ab.clone(), a.clone()], 1).unwrap(),
            encode(&[a, b], 1).unwrap()
        );
        // A slice (an offset into the buffers) encodes its own values.
        let sliced: Vec<ArrayRef> = columns().iter().map(|c| c.slice(1, 2)).collect();
        assert_eq!(encode(&sliced, 2).unwrap(), rows[1..].to_vec());
        // A date is its four little-endian bytes.
        let d: ArrayRef = Arc::new(arrow::array::Date32Array::from(vec![Some(258), None]));
        let dates = encode(&[d], 2).unwrap();
        assert_eq!(dates, [vec![1, 2, 1, 0, 0], vec![0]]);
        // Another type is refused, not digested some unspecified way.
        let x: ArrayRef = Arc::new(
            ["x"]
                .into_iter()
                .collect::<arrow::array::DictionaryArray<arrow::datatypes::Int32Type>>(),
        );
        let err = encode(&[x], 1).unwrap_err();
        assert!(err.to_string().contains("Dictionary"), "{err}");
    }

    /// A state of another digest (an earlier release's) is not compared with:
    /// the versions come from the live files.
    #[tokio::test]
    async fn a_state_of_another_digest_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(&lake_common::LakeConfig::local(dir.path())).unwrap();
        let table = &lake_common::schema::OUTBOX;
        let mut captured = Captured {
            table,
            rows: HashMap::new(),
            names: Vec::new(),
        };
        let version = Version {
            base: [9; 16],
            added: Box::new([]),
        };
        captured.rows.insert("k".into(), Some(version.clone()));
        let path = Path::from("state.parquet");
        assert_eq!(
            captured.write_state(&lake, &path, |_| true).await.unwrap(),
            1
        );
        let state = |digest: &str| IdentityState {
            path: path.to_string(),
            batch: 5,
            digest: digest.into(),
        };
        let read = Captured::load(&lake, table, Some(&state(DIGEST)), &[], None, &[])
            .await
            .unwrap();
        assert_eq!(read.rows.get("k"), Some(&Some(version)));
        for other in ["", "sha256-values-0"] {
            let read = Captured::load(&lake, table, Some(&state(other)), &[], None, &[])
                .await
                .unwrap();
            assert!(read.is_empty(), "{other:?}");
        }
    }
}
