//! The key index in monthly segments, so a run reads and rewrites only the
//! part of history it touches (SPEC §10, issue #17).
//!
//! Each segment holds the index entries of the executions whose partition day
//! (the day of their first event) falls in one UTC month. The manifest lists
//! every segment with its key count and the latest event day of its
//! executions, and the version's *filter pack* holds a Bloom filter of each
//! segment's keys, so a run decides which segments to read without reading
//! any:
//!
//! * a key seen in new bronze files lives in a segment whose filter says yes
//!   (no false negatives; ~1 % false positives);
//! * the executions of a recomputed partition live in that partition's month;
//! * the executions with an event on a superseded day `d` live in a month up to
//!   `d`'s whose latest event day is at least `d`.
//!
//! Only the segments so found are loaded, and only the months whose entries
//! change are written again (as new objects, named by version); the others are
//! carried to the next manifest as they are. A run over the newest hour of a
//! three-year lake reads the current month's segment and those of the few old
//! executions that got a late event. A rebuild (full refresh, whole shard)
//! replaces every segment.
//!
//! The filters are ~1.2 bytes per key, so they grow with history (3 MiB after
//! three years of 3 000 executions a day). Kept in the manifest (formats 2
//! and 3, still read), they made every run, one with nothing new included,
//! read and parse them; in one object per version (`filters/<v:010>.bloom`,
//! its path and checksum in the manifest), a run with nothing new reads none,
//! a run with work reads the pack once and a commit writes a new one (a
//! pack per segment would make that follow the months touched; not yet).
//! A pack that is missing or damaged loses nothing: its filters count as
//! "maybe", so the segments they would have ruled out are read, and the
//! next commit rewrites those segments with new filters.
//!
//! **Large months are split by key hash** (format 5): a month of more than
//! [`SEGMENT_KEYS`] entries (~20 MiB held, a day of ~3 M events) is kept as
//! segments that each hold the keys whose hash begins with given bits
//! ([`IndexSegment::hash`]). A key is looked up in the one segment of each
//! month whose range holds it, a write holds and rewrites one segment at a
//! time and splits one that outgrew the limit, and a rebuild in key-hash
//! passes writes each segment as soon as the passes holding its keys end
//! ([`Rebuild`]), so a fold in passes holds one pass's entries, not all.
//! A month that is not split is one segment, as before.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use chrono::{Datelike, NaiveDate};
use futures::TryStreamExt;
use lake_common::{Dataset, Lake};
use object_store::path::Path;
use parquet::bloom_filter::Sbbf;
use serde::{Deserialize, Serialize};

use crate::index::{KeyIndex, KeyInfo};
use crate::key::{KeyHash, Shard, date_of_day, day_of_date};
use crate::publish::FileRecord;

/// A UTC month as `year * 12 + month0`.
pub type Month = i32;

/// The false-positive rate of the segments' Bloom filters: one key in a
/// hundred that a segment does not hold makes the run read that segment.
const BLOOM_FPP: f64 = 0.01;

/// The month of a day (days since 1970-01-01).
pub fn month_of_day(day: i32) -> Month {
    let d = date_of_day(day);
    d.year() * 12 + d.month0() as i32
}

pub(crate) fn month_name(m: Month) -> String {
    format!("{:04}-{:02}", m.div_euclid(12), m.rem_euclid(12) + 1)
}

pub(crate) fn parse_month(s: &str) -> Option<Month> {
    let (y, m) = s.split_once('-')?;
    let (y, m): (i32, u32) = (y.parse().ok()?, m.parse().ok()?);
    (1..=12).contains(&m).then(|| y * 12 + m as i32 - 1)
}

/// A segment's place among the shard's: its month and the first key-hash
/// head it holds ([`head`]; how many follow is its record's `hash` bits).
pub type SegId = (Month, u32);

/// Entries a segment holds at most: a write splits a larger one by key hash,
/// so a run holds one segment at a time when it writes (~20 MiB) and loads
/// only the parts of a large month its keys fall in.
pub const SEGMENT_KEYS: u64 = 1 << 18;
/// Most key-hash bits a segment is split by.
const MAX_BITS: u32 = 16;

/// The first 32 bits of a key hash: segments split a month by them.
pub fn head(k: &KeyHash) -> u32 {
    u32::from_be_bytes([k.0[0], k.0[1], k.0[2], k.0[3]])
}

/// The end (exclusive) of the heads of a segment of `bits` bits from `start`.
fn end_of(start: u32, bits: u32) -> u64 {
    u64::from(start) + (1u64 << (32 - bits))
}

/// The key-hash bits that split `n` entries into segments of at most `max`
/// ([`SEGMENT_KEYS`]), and, when a rebuild runs in `passes` (and the month
/// is large enough: segments of at least a sixteenth of `max`), into at
/// least one segment per pass, so each segment is written when the passes
/// that hold its keys end.
fn bits_for(n: u64, passes: u32, max: u64) -> u32 {
    let max = max.max(1);
    let mut bits = 0;
    while n >> bits > max && bits < MAX_BITS {
        bits += 1;
    }
    let min_split = (max / 16).max(1);
    let mut by_pass = 0;
    while (1u32 << by_pass) < passes && n >> (by_pass + 1) >= min_split {
        by_pass += 1;
    }
    bits.max(by_pass).min(MAX_BITS)
}

/// What a manifest records of one segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexSegment {
    /// `YYYY-MM`: the month of its executions' partition days.
    pub month: String,
    /// The key hashes it holds of that month: `[bits, value]`, those whose
    /// first `bits` bits are `value` (none: all of them, as before format 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<[u32; 2]>,
    /// The Parquet file of its entries.
    pub file: FileRecord,
    /// Entries.
    pub keys: u64,
    /// The latest event day of its executions.
    pub last_date: NaiveDate,
    /// Its keys' Bloom filter (Parquet's split-block filter), base64, as
    /// manifests before the filter pack kept it (read, never written).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub bloom: String,
    /// Where its filter lies in the version's filter pack: offset and length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bloom_at: Option<[u64; 2]>,
}

/// Errors of reading segment records.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SegmentError {
    /// A record names no month.
    #[error("key index segment {0:?} names no month (YYYY-MM)")]
    Month(String),
    /// A record's key-hash range is not one.
    #[error("key index segment of {0} has no valid key-hash range")]
    Hash(String),
    /// Two records claim the same keys.
    #[error("key index segments of {0} overlap")]
    Overlap(String),
}

struct Stored {
    record: IndexSegment,
    bits: u32,
    last_day: i32,
    /// `None` until the filter pack is read ([`Segments::load_filters`]), or
    /// if it was lost: then the segment may hold any key.
    bloom: Option<Sbbf>,
}

impl Stored {
    fn holds_head(&self, start: u32, h: u32) -> bool {
        h >= start && u64::from(h) < end_of(start, self.bits)
    }
}

/// A segment written by this run, with its filter's bits for the pack.
#[derive(Debug)]
pub struct Piece {
    id: SegId,
    record: IndexSegment,
    bitset: Vec<u8>,
}

/// The shard's segments as the latest committed manifest lists them, and
/// which of them this run has loaded.
#[derive(Default)]
pub struct Segments {
    stored: BTreeMap<SegId, Stored>,
    /// The committed version's filter pack (`None` once read, or lost).
    pack: Option<FileRecord>,
    loaded: BTreeSet<SegId>,
    /// Months whose stored segments a rebuild replaces (none of them is read).
    replaced: BTreeSet<Month>,
    /// Segments read by this run (for the run report).
    pub reads: u64,
    /// Entries a written segment holds at most (0: [`SEGMENT_KEYS`]).
    max_keys: u64,
}

impl std::fmt::Debug for Segments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segments")
            .field("stored", &self.stored.len())
            .field("loaded", &self.loaded.len())
            .finish()
    }
}

impl Segments {
    /// The segments a manifest lists (`pack`: its filter pack).
    pub fn from_records(
        records: &[IndexSegment],
        pack: Option<&FileRecord>,
    ) -> Result<Self, SegmentError> {
        let mut stored: BTreeMap<SegId, Stored> = BTreeMap::new();
        for r in records {
            let month =
                parse_month(&r.month).ok_or_else(|| SegmentError::Month(r.month.clone()))?;
            let (bits, start) = match r.hash {
                None => (0, 0),
                Some([bits, value]) if (1..=MAX_BITS).contains(&bits) && value >> bits == 0 => {
                    (bits, value << (32 - bits))
                }
                Some(_) => return Err(SegmentError::Hash(r.month.clone())),
            };
            // No inline filter: in the pack (or lost: "maybe").
            let bloom = if r.bloom.is_empty() {
                None
            } else {
                // Inline (formats 2 and 3); one that does not decode to whole
                // 32-byte blocks counts as lost, like a damaged pack's.
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(&r.bloom)
                    .ok()
                    .filter(|b| !b.is_empty() && b.len() % 32 == 0);
                if bytes.is_none() {
                    lost_pack(
                        &Path::from("(inline)"),
                        &format!("the filter of {} does not decode", r.month),
                    );
                }
                bytes.map(|b| Sbbf::new(&b))
            };
            let s = Stored {
                record: r.clone(),
                bits,
                last_day: day_of_date(r.last_date),
                bloom,
            };
            // The segments of a month hold disjoint ranges of key hashes.
            let overlaps = stored
                .range((month, 0)..=(month, start))
                .next_back()
                .is_some_and(|((_, st), o)| o.holds_head(*st, start))
                || stored
                    .range((month, start)..(month + 1, 0))
                    .next()
                    .is_some_and(|((_, st), _)| u64::from(*st) < end_of(start, bits));
            if overlaps {
                return Err(SegmentError::Overlap(r.month.clone()));
            }
            stored.insert((month, start), s);
        }
        Ok(Self {
            stored,
            pack: pack.cloned(),
            ..Self::default()
        })
    }

    /// Reads the filter pack if a stored segment's filter is not known yet
    /// (one request per run at most). A pack that is missing or does not
    /// match the manifest is not an error: its filters stay unknown, so
    /// [`Segments::maybe_holding`] names their segments and
    /// [`Segments::write`] rewrites them with new filters.
    pub async fn load_filters(&mut self, lake: &Lake) -> anyhow::Result<()> {
        if self.stored.values().all(|s| s.bloom.is_some()) {
            return Ok(());
        }
        let Some(pack) = self.pack.take() else {
            return Ok(());
        };
        let path = Path::from(pack.path.as_str());
        let bytes = match lake.get_bytes(&path).await {
            Ok(b) => b,
            Err(object_store::Error::NotFound { .. }) => {
                lost_pack(&path, "it is gone");
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        if bytes.len() as u64 != pack.bytes
            || lake_common::parquet_io::sha256_hex(&bytes) != pack.sha256
        {
            lost_pack(&path, "it does not match the manifest's size or checksum");
            return Ok(());
        }
        for s in self.stored.values_mut().filter(|s| s.bloom.is_none()) {
            // A split-block filter is whole 32-byte blocks, at least one.
            let slice = s.record.bloom_at.and_then(|[at, len]| {
                let from = usize::try_from(at).ok()?;
                let to = from.checked_add(usize::try_from(len).ok()?)?;
                (len >= 32 && len % 32 == 0 && to <= bytes.len()).then(|| &bytes[from..to])
            });
            match slice {
                Some(b) => s.bloom = Some(Sbbf::new(b)),
                None => lost_pack(&path, &format!("it holds no filter of {}", s.record.month)),
            }
        }
        Ok(())
    }

    /// Writes segments of at most `max` entries (tests use a few, so that
    /// months split; [`SEGMENT_KEYS`] otherwise).
    pub fn with_max_keys(mut self, max: u64) -> Self {
        self.max_keys = max;
        self
    }

    fn max_keys(&self) -> u64 {
        if self.max_keys == 0 {
            SEGMENT_KEYS
        } else {
            self.max_keys
        }
    }

    fn months(&self) -> BTreeSet<Month> {
        self.stored.keys().map(|(m, _)| *m).collect()
    }

    fn remove_months(&mut self, months: impl IntoIterator<Item = Month>) {
        for m in months {
            let ids: Vec<SegId> = self.of_month(m).collect();
            for id in ids {
                self.stored.remove(&id);
            }
            self.replaced.insert(m);
        }
    }

    fn of_month(&self, m: Month) -> impl Iterator<Item = SegId> + '_ {
        self.stored.range((m, 0)..(m + 1, 0)).map(|(id, _)| *id)
    }

    /// Every stored segment of `months`.
    pub fn of_months(&self, months: impl IntoIterator<Item = Month>) -> BTreeSet<SegId> {
        months.into_iter().flat_map(|m| self.of_month(m)).collect()
    }

    /// The stored segment of month `m` whose key hashes hold `k`'s.
    fn covering(&self, m: Month, k: &KeyHash) -> Option<SegId> {
        let h = head(k);
        self.stored
            .range((m, 0)..=(m, h))
            .next_back()
            .filter(|((_, start), s)| s.holds_head(*start, h))
            .map(|(id, _)| *id)
    }

    /// Forgets every stored segment without reading it: the index is being
    /// rebuilt from all of bronze (a full refresh), and [`Segments::write`]
    /// then replaces them all, so [`delete_replaced`] removes their objects.
    pub fn replace_all(&mut self) {
        self.replaced.extend(self.months());
        self.stored.clear();
    }

    /// Forgets, without reading them, the stored segments of the months after
    /// `month`: a full refresh that keeps the executions begun before the
    /// retention horizon rebuilds only those (see [`Segments::replace_all`]).
    pub fn replace_after(&mut self, month: Month) {
        let later: Vec<Month> = self.months().into_iter().filter(|m| *m > month).collect();
        self.remove_months(later);
    }

    /// The latest event day of each stored month's executions.
    fn last_days(&self) -> BTreeMap<Month, i32> {
        let mut out: BTreeMap<Month, i32> = BTreeMap::new();
        for ((m, _), s) in &self.stored {
            let e = out.entry(*m).or_insert(s.last_day);
            *e = (*e).max(s.last_day);
        }
        out
    }

    /// Forgets, without reading them, the stored segments of the months
    /// before `day`'s whose executions all ended before `day`: silver's
    /// retention removed every one of them ([`crate::retain`]), and bronze
    /// holds none of their events; [`delete_replaced`] removes their objects.
    pub fn retire_ended_before(&mut self, day: i32) {
        let ended: Vec<Month> = self
            .last_days()
            .into_iter()
            .filter(|(m, last)| *m < month_of_day(day) && *last < day)
            .map(|(m, _)| m)
            .collect();
        self.remove_months(ended);
    }

    /// Whether a stored month before `day`'s holds only executions that
    /// ended before `day` ([`Segments::retire_ended_before`]).
    pub fn ended_before(&self, day: i32) -> bool {
        self.last_days()
            .into_iter()
            .any(|(m, last)| m < month_of_day(day) && last < day)
    }

    /// The stored segments of the months up to `day`'s: those that may hold
    /// executions begun before `day`.
    pub fn up_to(&self, day: i32) -> impl Iterator<Item = SegId> + '_ {
        self.stored
            .range(..(month_of_day(day) + 1, 0))
            .map(|(id, _)| *id)
    }

    /// Entries over every stored segment.
    pub fn total_keys(&self) -> u64 {
        self.stored.values().map(|s| s.record.keys).sum()
    }

    /// Entries after this run if `index` (the loaded part, changed) were
    /// written: the segments not loaded keep theirs.
    pub fn keys_with(&self, index: &KeyIndex, rebuilt: bool) -> u64 {
        let untouched: u64 = self
            .stored
            .iter()
            .filter(|(id, _)| !rebuilt && !self.loaded.contains(id))
            .map(|(_, s)| s.record.keys)
            .sum();
        untouched + index.len() as u64
    }

    /// The stored segments whose filter may hold one of `keys` (the filter
    /// pack is read first if needed). A key is looked up only in the
    /// segments whose key-hash range holds it.
    pub async fn maybe_holding<'a>(
        &mut self,
        lake: &Lake,
        keys: impl Iterator<Item = &'a KeyHash>,
    ) -> anyhow::Result<BTreeSet<SegId>> {
        let mut found = BTreeSet::new();
        if self.stored.keys().all(|id| self.loaded.contains(id)) {
            return Ok(found);
        }
        self.load_filters(lake).await?;
        let mut keys = keys.peekable();
        if keys.peek().is_none() {
            // No key to look up: an unknown filter names nothing either.
            return Ok(found);
        }
        // Per month, its unloaded segments by first head.
        let mut candidates: BTreeMap<Month, Vec<(u32, &Stored)>> = BTreeMap::new();
        for (id, s) in self
            .stored
            .iter()
            .filter(|(id, _)| !self.loaded.contains(id))
        {
            match &s.bloom {
                Some(_) => candidates.entry(id.0).or_default().push((id.1, s)),
                // A lost filter may hold any key.
                None => {
                    found.insert(*id);
                }
            }
        }
        for k in keys {
            let h = head(k);
            for (m, segs) in &candidates {
                let i = segs.partition_point(|(start, _)| *start <= h);
                let Some((start, s)) = i.checked_sub(1).map(|i| segs[i]) else {
                    continue;
                };
                if s.holds_head(start, h)
                    && !found.contains(&(*m, start))
                    && s.bloom.as_ref().is_some_and(|b| b.check(&k.0[..]))
                {
                    found.insert((*m, start));
                }
            }
        }
        Ok(found)
    }

    /// The stored segments that may hold an execution with an event on `day`.
    pub fn spanning(&self, day: i32) -> impl Iterator<Item = SegId> + '_ {
        self.stored
            .range(..(month_of_day(day) + 1, 0))
            .filter(move |(_, s)| s.last_day >= day)
            .map(|(id, _)| *id)
    }

    /// The stored segments of partition days `from ..= to`.
    pub fn within(&self, from: i32, to: i32) -> impl Iterator<Item = SegId> + '_ {
        self.stored
            .range((month_of_day(from), 0)..(month_of_day(to) + 1, 0))
            .map(|(id, _)| *id)
    }

    /// Loads the stored segments `ids` that are not loaded yet into `into`
    /// (segments hold disjoint keys).
    pub async fn load(
        &mut self,
        lake: &Lake,
        ids: impl IntoIterator<Item = SegId>,
        into: &mut KeyIndex,
    ) -> anyhow::Result<()> {
        for id in ids {
            if !self.loaded.insert(id) {
                continue;
            }
            if let Some(s) = self.stored.get(&id) {
                let part = crate::manifest::read_index(lake, &s.record.file).await?;
                into.absorb(part);
                self.reads += 1;
            }
        }
        Ok(())
    }

    /// Writes the segments whose entries may have changed and returns the
    /// records of the next manifest: every segment this run loaded or gave
    /// an entry (all of them after a `rebuilt` index), from `index`, split by
    /// key hash when larger than [`SEGMENT_KEYS`]; the others as they were.
    /// A segment that gains an entry is loaded first, so its new one is
    /// complete. `built` are the segments a [`Rebuild`] wrote already.
    pub async fn write(
        mut self,
        lake: &Lake,
        shard: Shard,
        version: u64,
        mut index: KeyIndex,
        rebuilt: bool,
        built: Vec<Piece>,
    ) -> anyhow::Result<Written> {
        if rebuilt {
            self.replace_all();
        }
        // The carried segments' filters go into the new pack; a carried
        // segment whose filter was lost is loaded and rewritten instead,
        // which rebuilds it.
        if self.stored.keys().any(|id| !self.loaded.contains(id)) {
            self.load_filters(lake).await?;
        }
        let lost: Vec<SegId> = self
            .stored
            .iter()
            .filter(|(id, s)| !self.loaded.contains(id) && s.bloom.is_none())
            .map(|(id, _)| *id)
            .collect();
        self.load(lake, lost, &mut index).await?;
        // The segments an entry goes to. A month whose segments do not cover
        // an entry (one emptied part of a split month) is read whole and
        // split again.
        let mut gained: BTreeSet<SegId> = BTreeSet::new();
        let mut resplit: BTreeSet<Month> = BTreeSet::new();
        for (k, i) in index.iter() {
            let m = month_of_day(i.partition().day);
            match self.covering(m, k) {
                Some(id) => {
                    gained.insert(id);
                }
                None if self.of_month(m).next().is_some() => {
                    resplit.insert(m);
                }
                None => {}
            }
        }
        let whole = self.of_months(resplit.iter().copied());
        self.load(lake, gained.into_iter().chain(whole), &mut index)
            .await?;
        let mut by_month: BTreeMap<Month, Vec<(KeyHash, KeyInfo)>> = BTreeMap::new();
        for (k, i) in index.into_sorted() {
            by_month
                .entry(month_of_day(i.partition().day))
                .or_default()
                .push((k, i));
        }
        let mut written: BTreeSet<Month> = self.replaced.clone();
        written.extend(self.loaded.iter().map(|(m, _)| *m));
        written.extend(by_month.keys().copied());
        let max = self.max_keys();
        let mut out: Vec<Piece> = built;
        for piece in &out {
            written.insert(piece.id.0);
        }
        let stored = std::mem::take(&mut self.stored);
        let mut months: BTreeMap<Month, Vec<(u32, Stored)>> = BTreeMap::new();
        for ((m, start), s) in stored {
            months.entry(m).or_default().push((start, s));
        }
        for m in by_month.keys() {
            months.entry(*m).or_default();
        }
        for (m, segs) in months {
            let mut entries = by_month.remove(&m).unwrap_or_default();
            let whole = segs.is_empty() || resplit.contains(&m);
            if whole {
                for (start, bits, part) in split(0, 0, entries, max) {
                    out.push(write_piece(lake, shard, version, m, bits, start, part).await?);
                }
                continue;
            }
            // Entries are sorted by key, segments by first head: walk both.
            let mut rest = entries.drain(..).peekable();
            for (start, s) in segs {
                let end = end_of(start, s.bits);
                let mut mine = Vec::new();
                while let Some(e) = rest.next_if(|(k, _)| u64::from(head(k)) < end) {
                    mine.push(e);
                }
                if !self.loaded.contains(&(m, start)) {
                    // Not loaded, so no entry of it (`gained` loads those):
                    // never carry it over entries, which would drop them.
                    if !mine.is_empty() {
                        anyhow::bail!(
                            "key index segment of {} was not loaded but gains entries",
                            s.record.month
                        );
                    }
                    let Some(bloom) = &s.bloom else {
                        anyhow::bail!(
                            "key index segment {} was carried without its filter",
                            s.record.month
                        );
                    };
                    let mut bitset = Vec::new();
                    bloom.write_bitset(&mut bitset)?;
                    out.push(Piece {
                        id: (m, start),
                        record: s.record,
                        bitset,
                    });
                    continue;
                }
                for (start, bits, part) in split(start, s.bits, mine, max) {
                    out.push(write_piece(lake, shard, version, m, bits, start, part).await?);
                }
            }
            // Every entry has a segment (`resplit` otherwise): never drop one.
            if rest.next().is_some() {
                anyhow::bail!(
                    "an entry of key index month {} is outside its segments",
                    month_name(m)
                );
            }
        }
        out.sort_by_key(|p| p.id);
        finish_pack(lake, shard, version, out, written).await
    }
}

/// A planned segment: its first head, its bits and its entries (by key).
type Part = (u32, u32, Vec<(KeyHash, KeyInfo)>);

/// Splits sorted `entries` of the key-hash range (`start`, `bits`) into
/// segments of at most `max`: `(start, bits, entries)`, the empty
/// ones left out (a later entry in their range makes a write split the month
/// again, see [`Segments::write`]).
fn split(start: u32, bits: u32, entries: Vec<(KeyHash, KeyInfo)>, max: u64) -> Vec<Part> {
    let n = entries.len() as u64;
    if n == 0 {
        return vec![];
    }
    let more = bits_for(n, 1, max).min(MAX_BITS - bits.min(MAX_BITS));
    if more == 0 {
        return vec![(start, bits, entries)];
    }
    let child = bits + more;
    let mut parts: Vec<Part> = Vec::new();
    for e in entries {
        let s = head(&e.0) & !(u32::MAX >> child);
        match parts.last_mut() {
            Some((cs, _, v)) if *cs == s => v.push(e),
            _ => parts.push((s, child, vec![e])),
        }
    }
    // Hashes are uniform, not even: a part over the limit splits again.
    parts
        .into_iter()
        .flat_map(|(s, b, v)| {
            if v.len() as u64 > max && b < MAX_BITS {
                split(s, b, v, max)
            } else {
                vec![(s, b, v)]
            }
        })
        .collect()
}

/// Writes one segment (its entries sorted by key).
async fn write_piece(
    lake: &Lake,
    shard: Shard,
    version: u64,
    m: Month,
    bits: u32,
    start: u32,
    entries: Vec<(KeyHash, KeyInfo)>,
) -> anyhow::Result<Piece> {
    let keys = entries.len() as u64;
    let mut bloom = Sbbf::new_with_ndv_fpp(keys.max(1), BLOOM_FPP)?;
    for (k, _) in &entries {
        bloom.insert(&k.0[..]);
    }
    let mut bitset = Vec::new();
    bloom.write_bitset(&mut bitset)?;
    let last_day = entries
        .iter()
        .map(|(_, i)| i.last_day)
        .max()
        .unwrap_or_default();
    let part = KeyIndex::default().finish(entries);
    let hash = (bits > 0).then(|| [bits, start >> (32 - bits)]);
    let path = segment_path(shard, m, version, hash);
    let file = crate::write_index(lake, path, &part).await?;
    Ok(Piece {
        id: (m, start),
        record: IndexSegment {
            month: month_name(m),
            hash,
            file,
            keys,
            last_date: date_of_day(last_day),
            bloom: String::new(),
            bloom_at: None,
        },
        bitset,
    })
}

/// One pack of every segment's filter, in segment order, and the records.
async fn finish_pack(
    lake: &Lake,
    shard: Shard,
    version: u64,
    pieces: Vec<Piece>,
    months: BTreeSet<Month>,
) -> anyhow::Result<Written> {
    let mut pack = Vec::new();
    let mut records = Vec::with_capacity(pieces.len());
    for Piece {
        mut record, bitset, ..
    } in pieces
    {
        record.bloom = String::new();
        record.bloom_at = Some([pack.len() as u64, bitset.len() as u64]);
        pack.extend_from_slice(&bitset);
        records.push(record);
    }
    let pack = if records.is_empty() {
        None
    } else {
        let path = pack_path(shard, version);
        let rows = records.len() as u64;
        Some(FileRecord::put(lake, &path, rows, pack.into()).await?)
    };
    Ok(Written {
        segments: records,
        pack,
        months,
    })
}

/// Writes the segments of a rebuilt index while a fold's key-hash passes
/// end ([`crate::fold::part_of`]: each pass holds a range of key hashes,
/// in order), so a fold in passes holds the index entries of one pass, not
/// of all: a month's entries go to segments by key hash, and a segment is
/// written once the passes that hold its range are done. A month's split is
/// chosen when it is first seen, from that pass's count of it times the
/// passes left (key hashes are uniform).
#[derive(Debug)]
pub struct Rebuild {
    shard: Shard,
    /// `None`: a dry run, which counts and writes nothing.
    version: Option<u64>,
    passes: u32,
    max_keys: u64,
    done: u32,
    bits: BTreeMap<Month, u32>,
    /// Per month, the segment being filled: its first head and entries.
    open: BTreeMap<Month, (u32, Vec<(KeyHash, KeyInfo)>)>,
    pieces: Vec<Piece>,
    /// Entries added.
    pub keys: u64,
}

impl Rebuild {
    /// A rebuild in `passes` for version `version` (`None`: a dry run),
    /// in segments of at most `max_keys` entries ([`SEGMENT_KEYS`]).
    pub fn new(shard: Shard, version: Option<u64>, passes: u32, max_keys: u64) -> Self {
        Self {
            shard,
            version,
            passes: passes.max(1),
            max_keys: if max_keys == 0 {
                SEGMENT_KEYS
            } else {
                max_keys
            },
            done: 0,
            bits: BTreeMap::new(),
            open: BTreeMap::new(),
            pieces: Vec::new(),
            keys: 0,
        }
    }

    /// Adds the entries of the next pass (all of its executions).
    pub async fn add(
        &mut self,
        lake: &Lake,
        mut entries: Vec<(KeyHash, KeyInfo)>,
    ) -> anyhow::Result<()> {
        entries.sort_unstable_by_key(|(k, _)| *k);
        let mut counts: BTreeMap<Month, u64> = BTreeMap::new();
        for (_, i) in &entries {
            *counts.entry(month_of_day(i.partition().day)).or_default() += 1;
        }
        let left = self.passes.saturating_sub(self.done).max(1);
        for (m, n) in counts {
            self.bits
                .entry(m)
                .or_insert_with(|| bits_for(n * u64::from(left), self.passes, self.max_keys));
        }
        self.keys += entries.len() as u64;
        for (k, i) in entries {
            let m = month_of_day(i.partition().day);
            let bits = self.bits[&m];
            let start = if bits == 0 {
                0
            } else {
                head(&k) & !(u32::MAX >> bits)
            };
            if self.open.get(&m).is_some_and(|(s, _)| *s != start) {
                self.close(lake, m).await?;
            }
            self.open
                .entry(m)
                .or_insert_with(|| (start, Vec::new()))
                .1
                .push((k, i));
        }
        self.done += 1;
        // Segments that end before the next pass's keys are complete.
        let next = (u128::from(self.done) << 64).div_ceil(u128::from(self.passes));
        let complete: Vec<Month> = self
            .open
            .iter()
            .filter(|(m, (start, _))| u128::from(end_of(*start, self.bits[m])) << 32 <= next)
            .map(|(m, _)| *m)
            .collect();
        for m in complete {
            self.close(lake, m).await?;
        }
        Ok(())
    }

    async fn close(&mut self, lake: &Lake, m: Month) -> anyhow::Result<()> {
        let Some((start, entries)) = self.open.remove(&m) else {
            return Ok(());
        };
        if let Some(version) = self.version {
            let bits = self.bits[&m];
            let piece = write_piece(lake, self.shard, version, m, bits, start, entries).await?;
            self.pieces.push(piece);
        }
        Ok(())
    }

    /// Entries of the segments being filled (held until their passes end).
    pub fn open_keys(&self) -> u64 {
        self.open.values().map(|(_, e)| e.len() as u64).sum()
    }

    /// Writes the segments still being filled; the pieces for
    /// [`Segments::write`].
    pub async fn finish(mut self, lake: &Lake) -> anyhow::Result<Vec<Piece>> {
        let months: Vec<Month> = self.open.keys().copied().collect();
        for m in months {
            self.close(lake, m).await?;
        }
        Ok(self.pieces)
    }
}

fn lost_pack(path: &Path, why: &str) {
    tracing::warn!(
        pack = %path,
        "The key index's filter pack cannot be used ({why}): the segments it would rule out are read \
         instead, and this run's commit rewrites them with new filters; nothing is lost"
    );
}

/// What [`Segments::write`] wrote, for the next manifest.
#[derive(Debug)]
pub struct Written {
    /// Every segment's record.
    pub segments: Vec<IndexSegment>,
    /// The filter pack (`None`: no segment).
    pub pack: Option<FileRecord>,
    /// The months whose segments were written or emptied.
    pub months: BTreeSet<Month>,
}

/// Where version `version` writes its filter pack.
pub fn pack_path(shard: Shard, version: u64) -> Path {
    filters_dir(shard).join(format!("{version:010}.bloom"))
}

fn filters_dir(shard: Shard) -> Path {
    Dataset::SilverStopExecutions
        .manifests_dir()
        .join("segments")
        .join(shard.to_string())
        .join("filters")
}

/// The folder of month `m`'s segments: outside the shard's manifest folder,
/// whose listing every run reads, so that listing does not grow with history.
pub(crate) fn month_dir(shard: Shard, m: Month) -> Path {
    Dataset::SilverStopExecutions
        .manifests_dir()
        .join("segments")
        .join(shard.to_string())
        .join(month_name(m))
}

/// Where version `version` writes its segment of month `m` (of the key
/// hashes `hash`, [`IndexSegment::hash`]).
pub fn segment_path(shard: Shard, m: Month, version: u64, hash: Option<[u32; 2]>) -> Path {
    let name = match hash {
        None => format!("{version:010}.index"),
        Some([bits, value]) => format!("{version:010}-{bits:02}-{value:05x}.index"),
    };
    month_dir(shard, m).join(name)
}

/// The version in the name of a segment or of a month's partition file.
pub fn version_of_segment(path: &Path) -> Option<u64> {
    let name = path.filename()?;
    let digits = name
        .strip_suffix(".index")
        .map(|n| n.split_once('-').map_or(n, |(v, _)| v))
        .or_else(|| name.strip_suffix(".bloom"))
        .or_else(|| name.strip_suffix(crate::partitions::SUFFIX))?;
    (digits.len() == 10).then(|| digits.parse().ok()).flatten()
}

/// After `committed` was committed: deletes, in each month it wrote or
/// emptied, the segments and partition files of earlier versions (the ones it
/// replaced, those of crashed runs), and the earlier versions' filter packs.
/// One listing per such month and one of the packs, a handful of objects each.
pub async fn delete_replaced(
    lake: &Lake,
    shard: Shard,
    months: &BTreeSet<Month>,
    committed: &crate::manifest::SilverManifest,
) -> object_store::Result<usize> {
    let listed: BTreeSet<&str> = committed
        .index_segments
        .iter()
        .map(|s| &s.file)
        .chain(committed.partition_months.iter().map(|m| &m.file))
        .chain(committed.bloom_pack.as_ref())
        .map(|f| f.path.as_str())
        .collect();
    let mut stale = Vec::new();
    let dirs = months
        .iter()
        .map(|m| month_dir(shard, *m))
        .chain(std::iter::once(filters_dir(shard)));
    for dir in dirs {
        let found: Vec<_> = lake.store().list(Some(&dir)).try_collect().await?;
        stale.extend(found.into_iter().map(|o| o.location).filter(|p| {
            version_of_segment(p).is_some_and(|v| v < committed.version)
                && !listed.contains(p.as_ref())
        }));
    }
    lake.delete_all(stale).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{MICROS_PER_DAY, OrderKey};

    #[test]
    fn months_name_and_parse() {
        let day = day_of_date(NaiveDate::from_ymd_opt(2025, 6, 30).unwrap());
        assert_eq!(month_name(month_of_day(day)), "2025-06");
        assert_eq!(month_of_day(day + 1), month_of_day(day) + 1);
        assert_eq!(parse_month("2025-06"), Some(month_of_day(day)));
        assert_eq!(parse_month("2025-13"), None);
        let shard = Shard { index: 0, count: 1 };
        let p = segment_path(shard, month_of_day(day), 12, None);
        assert_eq!(version_of_segment(&p), Some(12));
        assert_eq!(
            p.as_ref(),
            "silver/stop_executions/_manifests/segments/shard-0-of-1/2025-06/0000000012.index"
        );
    }

    fn info(day: i32, last: i32, n: u8) -> KeyInfo {
        let mut id = [0u8; 16];
        id[15] = n;
        let mut i = KeyInfo::event(
            OrderKey {
                at: i64::from(day) * MICROS_PER_DAY,
                seq: None,
                id,
            },
            1,
        );
        i.last_day = last;
        i
    }

    /// Manifests of formats 2 and 3 carry each filter inline: still read, and
    /// a run writes them into a pack. A pack that is missing or damaged
    /// loses nothing: its segments count as "maybe" and the next write
    /// rebuilds their filters.
    #[tokio::test]
    async fn inline_filters_still_read_and_a_damaged_pack_loses_nothing() {
        let lake = Lake::in_memory();
        let shard = Shard { index: 0, count: 1 };
        let k = |n: u8| KeyHash([n; 16]);
        let mut index = KeyIndex::default();
        index.insert(k(1), info(20_000, 20_000, 1));
        let w = Segments::default()
            .write(&lake, shard, 1, index, true, vec![])
            .await
            .unwrap();
        let pack_path = Path::from(w.pack.as_ref().unwrap().path.as_str());
        let pack = lake.get_bytes(&pack_path).await.unwrap();
        let mut inline = w.segments.clone();
        let [at, len] = inline[0].bloom_at.take().unwrap();
        inline[0].bloom = base64::engine::general_purpose::STANDARD
            .encode(&pack[at as usize..(at + len) as usize]);
        let mut old = Segments::from_records(&inline, None).unwrap();
        let found = old.maybe_holding(&lake, [k(1)].iter()).await.unwrap();
        assert_eq!(found.len(), 1);
        let none = old.maybe_holding(&lake, [k(9)].iter()).await.unwrap();
        assert!(none.is_empty(), "the inline filter rules the key out");

        lake.put(&pack_path, bytes::Bytes::from_static(b"not a pack"))
            .await
            .unwrap();
        let mut damaged = Segments::from_records(&w.segments, w.pack.as_ref()).unwrap();
        let maybe = damaged.maybe_holding(&lake, [k(9)].iter()).await.unwrap();
        assert_eq!(maybe.len(), 1, "a lost filter may hold any key");
        // A write that touches nothing rewrites the month, with a new filter.
        let damaged = Segments::from_records(&w.segments, w.pack.as_ref()).unwrap();
        let again = damaged
            .write(&lake, shard, 2, KeyIndex::default(), false, vec![])
            .await
            .unwrap();
        assert_eq!(again.segments.len(), 1);
        assert_eq!(again.segments[0].keys, 1, "its entries kept");
        assert_ne!(again.segments[0].file, w.segments[0].file, "rewritten");
        let mut healed = Segments::from_records(&again.segments, again.pack.as_ref()).unwrap();
        assert_eq!(
            healed
                .maybe_holding(&lake, [k(1)].iter())
                .await
                .unwrap()
                .len(),
            1
        );
        assert!(
            healed
                .maybe_holding(&lake, [k(9)].iter())
                .await
                .unwrap()
                .is_empty()
        );
        // No pack at all: the same.
        let mut gone = Segments::from_records(&w.segments, None).unwrap();
        assert_eq!(
            gone.maybe_holding(&lake, [k(9)].iter())
                .await
                .unwrap()
                .len(),
            1
        );
    }

    /// Written segments are found again by key (Bloom), by partition month and
    /// by the days their executions span; unchanged months are carried.
    #[tokio::test]
    async fn segments_are_found_by_key_month_and_span_and_carried_when_untouched() {
        let lake = Lake::in_memory();
        let shard = Shard { index: 0, count: 1 };
        let d = |m: u32, day: u32| day_of_date(NaiveDate::from_ymd_opt(2025, m, day).unwrap());
        let k = |n: u8| KeyHash([n; 16]);
        let mut index = KeyIndex::default();
        index.insert(k(1), info(d(5, 3), d(5, 3), 1));
        index.insert(k(2), info(d(5, 20), d(7, 2), 2)); // spans into July
        index.insert(k(3), info(d(6, 1), d(6, 1), 3));
        index.insert(k(4), info(d(7, 9), d(7, 9), 4));
        let first = Segments::default()
            .write(&lake, shard, 1, index, true, vec![])
            .await
            .unwrap();
        let records = first.segments;
        assert!(
            records.iter().all(|r| r.bloom.is_empty()),
            "no filter inline"
        );
        let months: Vec<&str> = records.iter().map(|r| r.month.as_str()).collect();
        assert_eq!(months, ["2025-05", "2025-06", "2025-07"]);
        assert_eq!(records[0].keys, 2);
        assert_eq!(
            records[0].last_date,
            NaiveDate::from_ymd_opt(2025, 7, 2).unwrap()
        );

        let mut seg = Segments::from_records(&records, first.pack.as_ref()).unwrap();
        assert_eq!(seg.total_keys(), 4);
        let found = seg.maybe_holding(&lake, [k(3)].iter()).await.unwrap();
        assert!(
            found.contains(&(month_of_day(d(6, 1)), 0)),
            "no false negative"
        );
        let spanning: Vec<Month> = seg.spanning(d(7, 1)).map(|(m, _)| m).collect();
        // May's k2 spans July 1st; July's own may; June ended before.
        assert_eq!(spanning, [month_of_day(d(5, 1)), month_of_day(d(7, 1))]);
        let within: Vec<SegId> = seg.within(d(6, 10), d(7, 1)).collect();
        assert_eq!(within.len(), 2);

        // Load June only, move k3 to July (an earlier event would move it the
        // other way; any move): June is rewritten empty (dropped), July gains
        // k3 and is loaded and rewritten whole, May is carried as it was.
        let mut loaded = KeyIndex::default();
        seg.load(&lake, [(month_of_day(d(6, 1)), 0)], &mut loaded)
            .await
            .unwrap();
        assert_eq!(seg.reads, 1);
        assert_eq!(loaded.len(), 1);
        loaded.insert(k(3), info(d(7, 20), d(7, 20), 3));
        let second = seg
            .write(&lake, shard, 2, loaded, false, vec![])
            .await
            .unwrap();
        let (next, written) = (second.segments, second.months);
        let june = month_of_day(d(6, 1));
        assert_eq!(
            written,
            [june, june + 1].into(),
            "June emptied, July rewritten"
        );
        let months: Vec<&str> = next.iter().map(|r| r.month.as_str()).collect();
        assert_eq!(months, ["2025-05", "2025-07"]);
        assert_eq!(
            next[0].file, records[0].file,
            "May untouched: the same object"
        );
        // Its filter was carried into version 2's pack: still found.
        let mut again = Segments::from_records(&next, second.pack.as_ref()).unwrap();
        let may = again.maybe_holding(&lake, [k(1)].iter()).await.unwrap();
        assert!(
            may.contains(&(month_of_day(d(5, 3)), 0)),
            "no false negative"
        );
        assert_eq!(next[1].keys, 2);
        assert_eq!(
            version_of_segment(&Path::from(next[1].file.path.as_str())),
            Some(2)
        );

        // A rebuild with only June left replaces every month: May's and July's
        // segments are written or emptied, June's is new.
        let mut rebuild = Segments::from_records(&next, second.pack.as_ref()).unwrap();
        rebuild.replace_all();
        assert_eq!(rebuild.total_keys(), 0, "nothing is read");
        let mut only_june = KeyIndex::default();
        only_june.insert(k(3), info(d(6, 1), d(6, 1), 3));
        let third = rebuild
            .write(&lake, shard, 3, only_june, false, vec![])
            .await
            .unwrap();
        let (rebuilt, months) = (third.segments, third.months);
        assert_eq!(rebuilt.len(), 1);
        assert_eq!(
            months,
            [june - 1, june, june + 1].into(),
            "May and July emptied"
        );

        // After the commit of version 2: July's version-1 segment and the
        // version-1 filter pack go, May's (carried) and July's new one stay.
        // (Version 3 is newer than the committed one: it stays.)
        let mut committed = crate::manifest::SilverManifest::pending(
            shard,
            2,
            "r",
            std::time::Duration::from_secs(1),
            "incremental",
        );
        committed.index_segments = next.clone();
        committed.bloom_pack = second.pack.clone();
        assert_eq!(
            delete_replaced(&lake, shard, &written, &committed)
                .await
                .unwrap(),
            3
        );
        let pack = |w: &Option<FileRecord>| Path::from(w.as_ref().unwrap().path.as_str());
        assert!(lake.get_bytes(&pack(&first.pack)).await.is_err());
        lake.get_bytes(&pack(&second.pack)).await.unwrap();
        for r in &next {
            lake.get_bytes(&Path::from(r.file.path.as_str()))
                .await
                .unwrap();
        }
    }

    /// A key hash by number, uniform like the real ones.
    fn key(n: u32) -> KeyHash {
        KeyHash::of(&format!("key-{n}"))
    }

    fn entries_of(records: &[IndexSegment]) -> u64 {
        records.iter().map(|r| r.keys).sum()
    }

    /// A month larger than a segment is split by key hash; a key is looked
    /// up in the one segment whose range holds it; a write rewrites only
    /// the segments it changed, splits one that grew, and a month whose
    /// segments no longer cover a new entry (one emptied) is split again.
    #[tokio::test]
    async fn a_large_month_is_split_by_key_hash_and_written_a_segment_at_a_time() {
        let lake = Lake::in_memory();
        let shard = Shard { index: 0, count: 1 };
        let day = day_of_date(NaiveDate::from_ymd_opt(2025, 5, 3).unwrap());
        let mut index = KeyIndex::default();
        for n in 0..40 {
            index.insert(key(n), info(day, day, n as u8));
        }
        let first = Segments::default()
            .with_max_keys(8)
            .write(&lake, shard, 1, index, true, vec![])
            .await
            .unwrap();
        let recs = first.segments;
        assert!(recs.len() >= 5, "{} segments", recs.len());
        assert!(recs.iter().all(|r| r.keys <= 8 && r.hash.is_some()));
        assert_eq!(entries_of(&recs), 40);
        let mut seg = Segments::from_records(&recs, first.pack.as_ref())
            .unwrap()
            .with_max_keys(8);
        // One key: one segment (its range), no other.
        let found = seg.maybe_holding(&lake, [key(7)].iter()).await.unwrap();
        assert_eq!(found.len(), 1);
        let mut loaded = KeyIndex::default();
        seg.load(&lake, found.iter().copied(), &mut loaded)
            .await
            .unwrap();
        assert!(loaded.get(&key(7)).is_some());
        assert!(loaded.len() <= 8);
        let (m, start) = *found.iter().next().unwrap();
        // New keys in that segment's range: it splits, the others stay.
        let bits = recs
            .iter()
            .find(|r| r.hash.is_some_and(|[b, v]| v << (32 - b) == start))
            .unwrap()
            .hash
            .unwrap()[0];
        let same: Vec<KeyHash> = (1000..200_000)
            .map(key)
            .filter(|k| head(k) >= start && u64::from(head(k)) < end_of(start, bits))
            .take(12)
            .collect();
        for (n, k) in same.iter().enumerate() {
            loaded.insert(*k, info(day, day, n as u8));
        }
        let second = seg
            .write(&lake, shard, 2, loaded, false, vec![])
            .await
            .unwrap();
        let recs2 = second.segments;
        assert_eq!(entries_of(&recs2), 52);
        assert!(recs2.iter().all(|r| r.keys <= 8));
        let carried = recs2
            .iter()
            .filter(|r| recs.iter().any(|o| o.file == r.file))
            .count();
        assert_eq!(
            carried,
            recs.len() - 1,
            "only the changed segment rewritten"
        );
        assert_eq!(second.months, [m].into());

        // Empty one segment: it goes, leaving its range to no segment; an
        // entry there later makes the write split the month again.
        let mut seg = Segments::from_records(&recs2, second.pack.as_ref())
            .unwrap()
            .with_max_keys(8);
        let victim = seg.maybe_holding(&lake, same[..1].iter()).await.unwrap();
        let mut loaded = KeyIndex::default();
        seg.load(&lake, victim, &mut loaded).await.unwrap();
        let gone: Vec<KeyHash> = loaded.iter().map(|(k, _)| *k).collect();
        for k in &gone {
            loaded.remove(k);
        }
        let third = seg
            .write(&lake, shard, 3, loaded, false, vec![])
            .await
            .unwrap();
        assert_eq!(third.segments.len(), recs2.len() - 1);
        assert_eq!(entries_of(&third.segments), 52 - gone.len() as u64);
        let seg = Segments::from_records(&third.segments, third.pack.as_ref())
            .unwrap()
            .with_max_keys(8);
        let mut back = KeyIndex::default();
        back.insert(gone[0], info(day, day, 1));
        let fourth = seg
            .write(&lake, shard, 4, back, false, vec![])
            .await
            .unwrap();
        assert_eq!(entries_of(&fourth.segments), 53 - gone.len() as u64);
        let mut seg = Segments::from_records(&fourth.segments, fourth.pack.as_ref()).unwrap();
        let mut all = KeyIndex::default();
        let ids: Vec<SegId> = seg.of_months([m]).into_iter().collect();
        seg.load(&lake, ids, &mut all).await.unwrap();
        assert_eq!(all.len() as u64, 53 - gone.len() as u64);
        assert!(all.get(&gone[0]).is_some() && all.get(&key(7)).is_some());
    }

    /// Records that claim the same keys are refused, not merged.
    #[test]
    fn overlapping_segments_are_refused() {
        let file = FileRecord {
            path: "x".into(),
            rows: 1,
            bytes: 1,
            sha256: String::new(),
        };
        let rec = |hash| IndexSegment {
            month: "2025-05".into(),
            hash,
            file: file.clone(),
            keys: 1,
            last_date: NaiveDate::from_ymd_opt(2025, 5, 3).unwrap(),
            bloom: String::new(),
            bloom_at: None,
        };
        assert!(Segments::from_records(&[rec(Some([1, 0])), rec(Some([1, 1]))], None).is_ok());
        assert!(matches!(
            Segments::from_records(&[rec(Some([1, 0])), rec(Some([2, 1]))], None),
            Err(SegmentError::Overlap(_))
        ));
        assert!(matches!(
            Segments::from_records(&[rec(None), rec(Some([2, 3]))], None),
            Err(SegmentError::Overlap(_))
        ));
        assert!(matches!(
            Segments::from_records(&[rec(Some([2, 4]))], None),
            Err(SegmentError::Hash(_))
        ));
    }

    /// A rebuild in passes writes a month's segments as the passes that
    /// hold their keys end, holding about one pass of entries at a time;
    /// what it wrote is the whole index.
    #[tokio::test]
    async fn a_rebuild_in_passes_writes_segments_as_the_passes_end() {
        let lake = Lake::in_memory();
        let shard = Shard { index: 0, count: 1 };
        let may = day_of_date(NaiveDate::from_ymd_opt(2025, 5, 3).unwrap());
        let june = day_of_date(NaiveDate::from_ymd_opt(2025, 6, 9).unwrap());
        let passes = 4;
        let mut by_pass: Vec<Vec<(KeyHash, KeyInfo)>> = vec![Vec::new(); passes as usize];
        for n in 0..400 {
            let d = if n % 100 == 0 { june } else { may };
            let k = key(n);
            by_pass[crate::fold::part_of(k, passes) as usize].push((k, info(d, d, n as u8)));
        }
        let mut r = Rebuild::new(shard, Some(5), passes, 32);
        let mut most_open = 0;
        for (p, entries) in by_pass.into_iter().enumerate() {
            r.add(&lake, entries).await.unwrap();
            most_open = most_open.max(r.open_keys());
            if p == 0 {
                assert!(
                    !r.pieces.is_empty(),
                    "segments written after the first pass"
                );
            }
        }
        assert!(most_open <= 150, "held {most_open} of 400");
        assert_eq!(r.keys, 400);
        let built = r.finish(&lake).await.unwrap();
        let w = Segments::default()
            .write(&lake, shard, 5, KeyIndex::default(), true, built)
            .await
            .unwrap();
        assert_eq!(entries_of(&w.segments), 400);
        let mut seg = Segments::from_records(&w.segments, w.pack.as_ref()).unwrap();
        for n in [0, 1, 99, 100, 399] {
            let found = seg.maybe_holding(&lake, [key(n)].iter()).await.unwrap();
            let mut got = KeyIndex::default();
            seg.load(&lake, found, &mut got).await.unwrap();
            assert!(got.get(&key(n)).is_some(), "key {n}");
        }
        // A dry run counts and writes nothing.
        let mut dry = Rebuild::new(shard, None, 1, 32);
        dry.add(&lake, vec![(key(1), info(may, may, 1))])
            .await
            .unwrap();
        assert_eq!(dry.keys, 1);
        assert!(dry.finish(&lake).await.unwrap().is_empty());
    }
}
