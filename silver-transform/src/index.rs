//! The key index: for every execution key bronze holds, where its execution lives.
//!
//! Incremental runs must find the *old* partition of an execution that receives a
//! late event, and the bronze days that hold all of its events, without reading
//! all of bronze. The index answers both from a few dozen bytes per execution:
//! the order key and client of its first event (so the partition, and whether a
//! new earlier event moves it), the day of its last event and the longest run
//! of days without events between the two (so the days holding its events: a
//! key used again months later, as an `operation:<id>` key is, reads the days
//! of its events and not the months between).
//!
//! Entries merge commutatively ([`KeyInfo::merge`]), so the index after a batch is
//! the index before it merged with what the batch holds. Each shard keeps an
//! index of *all* keys (an execution whose events carry several clients can move
//! between shards), persisted in monthly segments ([`crate::segments`]) of which
//! a run loads only those it touches.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Date32Array, FixedSizeBinaryBuilder, Int64Array,
    RecordBatch, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Date32Type, Field, Int64Type, Schema, SchemaRef};
use bytes::Bytes;
use lake_common::schema::utc_micros;
use rustc_hash::FxHashMap;

use crate::key::{KeyHash, OrderKey, PartitionKey, day_of};

/// What the index knows about one execution key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyInfo {
    /// Order key of the execution's first event.
    pub first: OrderKey,
    /// `client_id` of the first event.
    pub client_id: i64,
    /// Whether the events carry more than one `client_id`.
    pub multi_client: bool,
    /// UTC day of the latest event.
    pub last_day: i32,
    /// Days between the first and the last event's day without any event:
    /// the longest such run (the earliest of equally long ones), exact for a
    /// folded execution, a subset of the true gaps after [`KeyInfo::merge`].
    pub gap: Gap,
}

/// A run of UTC days `from .. from + len` (none when `len` is 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Gap {
    /// First day of the run.
    pub from: i32,
    /// Days in the run.
    pub len: u32,
}

impl Gap {
    /// No days.
    pub const NONE: Gap = Gap { from: 0, len: 0 };

    /// The days strictly between `a` and `b` (none unless `b > a + 1`).
    pub fn between(a: i32, b: i32) -> Gap {
        if b > a + 1 {
            Gap {
                from: a + 1,
                len: (b - a - 1) as u32,
            }
        } else {
            Gap::NONE
        }
    }

    /// Keeps `other` if it is longer (so the earliest of equally long runs
    /// stays when runs are offered in day order).
    pub fn keep_longer(&mut self, other: Gap) {
        if other.len > self.len {
            *self = other;
        }
    }

    /// Whether `day` is in the run.
    pub fn contains(&self, day: i32) -> bool {
        day >= self.from && i64::from(day) < i64::from(self.from) + i64::from(self.len)
    }

    /// The last day of the run (`None` for no run).
    pub fn last(&self) -> Option<i32> {
        (self.len > 0).then(|| self.from + self.len as i32 - 1)
    }
}

impl KeyInfo {
    /// The info of a single event.
    pub fn event(order: OrderKey, client_id: i64) -> Self {
        Self {
            first: order,
            client_id,
            multi_client: false,
            last_day: day_of(order.at),
            gap: Gap::NONE,
        }
    }

    /// Adds what `other` knows about the same key. Commutative; the days it
    /// keeps always include every day either side holds (the gap is the
    /// longest run of days neither holds, so merging in another order may
    /// keep a shorter one, never a wrong one).
    pub fn merge(&mut self, other: &KeyInfo) {
        self.multi_client |= other.multi_client || other.client_id != self.client_id;
        // The days each side may hold, as at most two runs each, by first day.
        let mut held: Vec<(i32, i32)> = Vec::with_capacity(4);
        for info in [&*self, other] {
            let (first, last) = (day_of(info.first.at), info.last_day);
            match info.gap.last() {
                Some(g_last) => {
                    held.push((first, info.gap.from - 1));
                    held.push((g_last + 1, last));
                }
                None => held.push((first, last)),
            }
        }
        held.sort_unstable();
        let mut gap = Gap::NONE;
        let mut end = held[0].1;
        for &(from, to) in &held[1..] {
            gap.keep_longer(Gap::between(end, from));
            end = end.max(to);
        }
        if other.first < self.first {
            self.first = other.first;
            self.client_id = other.client_id;
        }
        self.last_day = end;
        self.gap = gap;
    }

    /// The execution's partition.
    pub fn partition(&self) -> PartitionKey {
        PartitionKey::of(self.client_id, self.first.at)
    }

    /// The UTC days that may hold the execution's events: from its first to
    /// its last event's day, less the gap.
    pub fn days(&self) -> impl Iterator<Item = i32> + use<> {
        let gap = self.gap;
        (day_of(self.first.at)..=self.last_day).filter(move |d| !gap.contains(*d))
    }
}

/// Errors of reading a stored index.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IndexError {
    /// The Parquet could not be decoded.
    #[error("cannot decode the key index: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    /// The file is not a key index.
    #[error("the key index has an unexpected layout: {0}")]
    Layout(String),
}

/// Every execution key of bronze and what is known about it.
///
/// Stored as a vector sorted by key (exactly sized: 80 bytes per key, half
/// of a hash table's footprint) plus a small table of changes made during a run;
/// [`KeyIndex::finish`] merges both with the entries of the folded executions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyIndex {
    sorted: Vec<(KeyHash, KeyInfo)>,
    /// Changes not merged into `sorted` yet; `None` removes the key.
    changes: FxHashMap<KeyHash, Option<KeyInfo>>,
}

static SCHEMA: std::sync::LazyLock<SchemaRef> = std::sync::LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("key_hash", DataType::FixedSizeBinary(16), false),
        Field::new("first_at", utc_micros(), false),
        Field::new("first_seq", DataType::Int64, true),
        Field::new("first_event_id", DataType::FixedSizeBinary(16), false),
        Field::new("client_id", DataType::Int64, false),
        Field::new("multi_client", DataType::Boolean, false),
        Field::new("last_date", DataType::Date32, false),
        Field::new("gap_first_date", DataType::Date32, true),
        Field::new("gap_last_date", DataType::Date32, true),
    ]))
});

/// The columns of indexes written before the gap (manifest formats 1 to 3):
/// read as executions without one, which reads their whole span as before.
const COLUMNS_WITHOUT_GAP: usize = 7;

impl KeyIndex {
    /// Number of keys.
    pub fn len(&self) -> usize {
        let mut n = self.sorted.len();
        for (k, c) in &self.changes {
            match (self.find(k).is_some(), c.is_some()) {
                (true, false) => n -= 1,
                (false, true) => n += 1,
                _ => {}
            }
        }
        n
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn find(&self, key: &KeyHash) -> Option<&KeyInfo> {
        self.sorted
            .binary_search_by_key(key, |(k, _)| *k)
            .ok()
            .map(|i| &self.sorted[i].1)
    }

    /// The entry of a key.
    pub fn get(&self, key: &KeyHash) -> Option<&KeyInfo> {
        match self.changes.get(key) {
            Some(change) => change.as_ref(),
            None => self.find(key),
        }
    }

    /// Sets the entry of a key.
    pub fn insert(&mut self, key: KeyHash, info: KeyInfo) {
        self.changes.insert(key, Some(info));
    }

    /// Removes a key (its events are gone from bronze).
    pub fn remove(&mut self, key: &KeyHash) {
        self.changes.insert(*key, None);
    }

    /// Keeps only the entries `keep` accepts.
    pub fn retain(&mut self, keep: impl Fn(&KeyInfo) -> bool) {
        let mut merged = std::mem::take(self).finish(vec![]);
        merged.sorted.retain(|(_, i)| keep(i));
        *self = merged;
    }

    /// All entries, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&KeyHash, &KeyInfo)> {
        self.sorted
            .iter()
            .filter(|(k, _)| !self.changes.contains_key(k))
            .map(|(k, i)| (k, i))
            .chain(
                self.changes
                    .iter()
                    .filter_map(|(k, c)| c.as_ref().map(|i| (k, i))),
            )
    }

    /// Adds the entries of `other`, whose keys this index does not hold (a
    /// segment of another month, [`crate::segments`]); on a shared key this
    /// index's entry and its pending changes win.
    pub fn absorb(&mut self, other: KeyIndex) {
        let other = other.finish(vec![]).sorted;
        if self.sorted.is_empty() {
            self.sorted = other;
            return;
        }
        let mut out = Vec::with_capacity(self.sorted.len() + other.len());
        let mut theirs = other.into_iter().peekable();
        for entry in std::mem::take(&mut self.sorted) {
            while let Some(t) = theirs.next_if(|(k, _)| *k < entry.0) {
                out.push(t);
            }
            theirs.next_if(|(k, _)| *k == entry.0);
            out.push(entry);
        }
        out.extend(theirs);
        self.sorted = out;
    }

    /// Merges the pending changes and then `entries` (which win over everything)
    /// into one sorted vector.
    pub fn finish(self, mut entries: Vec<(KeyHash, KeyInfo)>) -> Self {
        let Self {
            sorted,
            mut changes,
        } = self;
        if sorted.is_empty() && changes.is_empty() {
            // A full refresh: the entries are the index.
            entries.sort_unstable_by_key(|(k, _)| *k);
            entries.dedup_by_key(|(k, _)| *k);
            return Self {
                sorted: entries,
                changes,
            };
        }
        changes.extend(entries.into_iter().map(|(k, i)| (k, Some(i))));
        let mut updates: Vec<(KeyHash, Option<KeyInfo>)> = changes.into_iter().collect();
        updates.sort_unstable_by_key(|(k, _)| *k);
        let mut out = Vec::with_capacity(sorted.len() + updates.len());
        let mut old = sorted.into_iter().peekable();
        for (k, change) in updates {
            while let Some(entry) = old.next_if(|(o, _)| *o < k) {
                out.push(entry);
            }
            old.next_if(|(o, _)| *o == k);
            if let Some(info) = change {
                out.push((k, info));
            }
        }
        out.extend(old);
        Self {
            sorted: out,
            changes: FxHashMap::default(),
        }
    }

    /// The entries, sorted by key (pending changes merged).
    pub fn into_sorted(self) -> Vec<(KeyHash, KeyInfo)> {
        self.finish(vec![]).sorted
    }

    /// The Arrow schema of the stored index.
    pub fn schema() -> SchemaRef {
        SCHEMA.clone()
    }

    /// The index as one record batch, sorted by key hash (deterministic bytes).
    pub fn to_batch(&self) -> Result<RecordBatch, arrow::error::ArrowError> {
        let mut rows: Vec<(&KeyHash, &KeyInfo)> = self.iter().collect();
        if !self.changes.is_empty() {
            rows.sort_unstable_by_key(|(k, _)| **k);
        }
        let fixed =
            |it: &mut dyn Iterator<Item = [u8; 16]>| -> Result<ArrayRef, arrow::error::ArrowError> {
                let mut b = FixedSizeBinaryBuilder::with_capacity(rows.len(), 16);
                for v in it {
                    b.append_value(v)?;
                }
                Ok(Arc::new(b.finish()))
            };
        let cols: Vec<ArrayRef> = vec![
            fixed(&mut rows.iter().map(|(k, _)| k.0))?,
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(rows.iter().map(|(_, i)| i.first.at))
                    .with_timezone("UTC"),
            ),
            Arc::new(Int64Array::from_iter(rows.iter().map(|(_, i)| i.first.seq))),
            fixed(&mut rows.iter().map(|(_, i)| i.first.id))?,
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|(_, i)| i.client_id),
            )),
            Arc::new(BooleanArray::from_iter(
                rows.iter().map(|(_, i)| Some(i.multi_client)),
            )),
            Arc::new(Date32Array::from_iter_values(
                rows.iter().map(|(_, i)| i.last_day),
            )),
            Arc::new(Date32Array::from_iter(
                rows.iter().map(|(_, i)| i.gap.last().map(|_| i.gap.from)),
            )),
            Arc::new(Date32Array::from_iter(
                rows.iter().map(|(_, i)| i.gap.last()),
            )),
        ];
        RecordBatch::try_new(Self::schema(), cols)
    }

    /// Reads a stored index (the bytes of its Parquet file).
    pub fn from_parquet(bytes: Bytes) -> Result<Self, IndexError> {
        let mut sorted: Vec<(KeyHash, KeyInfo)> = Vec::new();
        for batch in lake_common::parquet_io::read_bytes(bytes)? {
            let fields = batch.schema().fields().clone();
            let expected = Self::schema();
            let with_gap = fields == *expected.fields();
            if !with_gap && fields[..] != expected.fields()[..COLUMNS_WITHOUT_GAP] {
                return Err(IndexError::Layout(format!("{:?}", batch.schema())));
            }
            let fixed = |i: usize| batch.column(i).as_fixed_size_binary();
            let (keys, ids) = (fixed(0), fixed(3));
            let at = batch
                .column(1)
                .as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
            let seq = batch.column(2).as_primitive::<Int64Type>();
            let client = batch.column(4).as_primitive::<Int64Type>();
            let multi = batch.column(5).as_boolean();
            let last = batch.column(6).as_primitive::<Date32Type>();
            let gap = with_gap.then(|| {
                (
                    batch.column(7).as_primitive::<Date32Type>(),
                    batch.column(8).as_primitive::<Date32Type>(),
                )
            });
            sorted.reserve(batch.num_rows());
            for r in 0..batch.num_rows() {
                let mut k = [0u8; 16];
                k.copy_from_slice(keys.value(r));
                let mut id = [0u8; 16];
                id.copy_from_slice(ids.value(r));
                sorted.push((
                    KeyHash(k),
                    KeyInfo {
                        first: OrderKey {
                            at: at.value(r),
                            seq: (!seq.is_null(r)).then(|| seq.value(r)),
                            id,
                        },
                        client_id: client.value(r),
                        multi_client: multi.value(r),
                        last_day: last.value(r),
                        gap: match gap {
                            Some((from, to)) if !from.is_null(r) && !to.is_null(r) => {
                                Gap::between(from.value(r) - 1, to.value(r) + 1)
                            }
                            _ => Gap::NONE,
                        },
                    },
                ));
            }
        }
        let inside = |i: &KeyInfo| {
            i.gap
                .last()
                .is_none_or(|last| i.gap.from > crate::key::day_of(i.first.at) && last < i.last_day)
        };
        if let Some((k, _)) = sorted.iter().find(|(_, i)| !inside(i)) {
            return Err(IndexError::Layout(format!(
                "the gap of key {k:?} is not between its first and last day"
            )));
        }
        if !sorted.is_sorted_by(|a, b| a.0 < b.0) {
            return Err(IndexError::Layout("keys are not sorted and unique".into()));
        }
        Ok(Self {
            sorted,
            changes: FxHashMap::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::MICROS_PER_DAY;

    fn order(at: i64, n: u8) -> OrderKey {
        let mut id = [0u8; 16];
        id[15] = n;
        OrderKey { at, seq: None, id }
    }

    #[test]
    fn merge_is_order_independent() {
        let a = KeyInfo::event(order(5 * MICROS_PER_DAY, 1), 1);
        let b = KeyInfo::event(order(3 * MICROS_PER_DAY, 2), 2);
        let c = KeyInfo::event(order(9 * MICROS_PER_DAY, 3), 1);
        let mut x = a;
        x.merge(&b);
        x.merge(&c);
        let mut y = c;
        y.merge(&a);
        y.merge(&b);
        assert_eq!(x, y);
        assert_eq!(x.client_id, 2);
        assert!(x.multi_client);
        assert_eq!(x.days().collect::<Vec<_>>(), [3, 4, 5, 9]);
        let mut single = a;
        single.merge(&c);
        assert!(!single.multi_client);
    }

    #[test]
    fn merging_keeps_every_day_either_side_holds() {
        let day = |d: i64, n: u8| KeyInfo::event(order(d * MICROS_PER_DAY, n), 1);
        let days = |i: &KeyInfo| i.days().collect::<Vec<_>>();
        // A key used on day 0 and again on day 180: two days, not 181.
        let mut reused = day(0, 1);
        reused.merge(&day(180, 2));
        assert_eq!(days(&reused), [0, 180]);
        assert_eq!(reused.gap, Gap { from: 1, len: 179 });
        // Another event inside the gap splits it; the longer part stays out.
        reused.merge(&day(30, 3));
        assert_eq!(reused.gap, Gap { from: 31, len: 149 });
        assert!(days(&reused).starts_with(&[0, 1, 2]));
        assert!(days(&reused).contains(&30) && !days(&reused).contains(&31));
        // Two entries with gaps (old index entry, scanned batch): every day
        // either holds stays, whatever the order.
        let mut a = day(0, 1);
        a.merge(&day(100, 2));
        let mut b = day(50, 3);
        b.merge(&day(60, 4));
        let (mut ab, mut ba) = (a, b);
        ab.merge(&b);
        ba.merge(&a);
        assert_eq!(ab, ba);
        for d in [0, 50, 60, 100] {
            assert!(days(&ab).contains(&d), "day {d} in {ab:?}");
        }
        assert_eq!(ab.gap, Gap { from: 1, len: 49 }, "the earliest longest run");
        // Contiguous days: no gap.
        let mut c = day(3, 1);
        c.merge(&day(4, 2));
        assert_eq!(c.gap, Gap::NONE);
        assert_eq!(days(&c), [3, 4]);
    }

    #[test]
    fn changes_and_entries_merge_into_one_sorted_index() {
        let info = |n: u8| KeyInfo::event(order(i64::from(n), n), 1);
        let k = |n: u8| KeyHash([n; 16]);
        let base =
            KeyIndex::default().finish(vec![(k(5), info(5)), (k(1), info(1)), (k(3), info(3))]);
        assert_eq!(base.len(), 3);
        let mut ix = base.clone();
        ix.remove(&k(3));
        ix.insert(k(4), info(4));
        ix.insert(k(1), info(9));
        assert_eq!(ix.len(), 3);
        assert_eq!(ix.get(&k(3)), None);
        assert_eq!(ix.get(&k(1)), Some(&info(9)));
        assert_eq!(ix.get(&k(5)), Some(&info(5)));
        let done = ix.finish(vec![(k(2), info(2)), (k(5), info(7))]);
        let all: Vec<_> = done.iter().map(|(k, i)| (*k, *i)).collect();
        assert_eq!(
            all,
            vec![
                (k(1), info(9)),
                (k(2), info(2)),
                (k(4), info(4)),
                (k(5), info(7))
            ]
        );
        assert_eq!(done.len(), 4);
    }

    #[test]
    fn absorbing_a_disjoint_index_keeps_one_sorted_vector() {
        let info = |n: u8| KeyInfo::event(order(i64::from(n), n), 1);
        let k = |n: u8| KeyHash([n; 16]);
        let mut a = KeyIndex::default().finish(vec![(k(1), info(1)), (k(5), info(5))]);
        a.insert(k(9), info(9));
        a.absorb(KeyIndex::default().finish(vec![
            (k(3), info(3)),
            (k(7), info(7)),
            (k(5), info(0)),
        ]));
        assert_eq!(a.get(&k(5)), Some(&info(5)), "the index's own entry wins");
        let keys: Vec<u8> = a.finish(vec![]).iter().map(|(k, _)| k.0[0]).collect();
        assert_eq!(keys, [1, 3, 5, 7, 9]);
    }

    #[test]
    fn an_entry_is_80_bytes() {
        // What docs/silver.md ("Memory and speed") counts per indexed key.
        assert_eq!(std::mem::size_of::<(KeyHash, KeyInfo)>(), 80);
    }

    #[test]
    fn empty_index_round_trips() {
        let batch = KeyIndex::default().to_batch().unwrap();
        assert_eq!(batch.num_rows(), 0);
    }

    #[test]
    fn parquet_round_trip() {
        let mut index = KeyIndex::default();
        for n in 0..50u8 {
            let mut info = KeyInfo::event(order(i64::from(n) * 1000 - 7, n), i64::from(n % 3));
            info.first.seq = (n % 2 == 0).then_some(i64::from(n));
            info.multi_client = n % 5 == 0;
            if n % 4 == 0 {
                info.merge(&KeyInfo::event(
                    order(info.first.at + 40 * MICROS_PER_DAY, n),
                    info.client_id,
                ));
            }
            index.insert(KeyHash::of(&n.to_string()), info);
        }
        let index = index.finish(vec![]);
        let batch = index.to_batch().unwrap();
        let mut buf = Vec::new();
        let mut w = parquet::arrow::ArrowWriter::try_new(
            &mut buf,
            KeyIndex::schema(),
            Some(lake_common::schema::writer_properties()),
        )
        .unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let read = KeyIndex::from_parquet(Bytes::from(buf)).unwrap();
        assert_eq!(read, index);
        assert!(read.iter().any(|(_, i)| i.gap.len > 0));
    }

    /// Segments written before the gap column (formats 1 to 3) still read:
    /// their executions without a gap, their whole span.
    #[test]
    fn an_index_without_the_gap_columns_reads_as_spans() {
        let mut index = KeyIndex::default();
        let mut info = KeyInfo::event(order(0, 1), 1);
        info.merge(&KeyInfo::event(order(9 * MICROS_PER_DAY, 2), 1));
        index.insert(KeyHash::of("k"), info);
        let batch = index.finish(vec![]).to_batch().unwrap();
        let old = batch
            .project(&(0..COLUMNS_WITHOUT_GAP).collect::<Vec<_>>())
            .unwrap();
        let mut buf = Vec::new();
        let mut w = parquet::arrow::ArrowWriter::try_new(&mut buf, old.schema(), None).unwrap();
        w.write(&old).unwrap();
        w.close().unwrap();
        let read = KeyIndex::from_parquet(Bytes::from(buf)).unwrap();
        let (_, got) = read.iter().next().unwrap();
        assert_eq!(got.gap, Gap::NONE);
        assert_eq!(got.days().count(), 10);
    }
}
