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

/// What a manifest records of one segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexSegment {
    /// `YYYY-MM`: the month of its executions' partition days.
    pub month: String,
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
}

struct Stored {
    record: IndexSegment,
    last_day: i32,
    /// `None` until the filter pack is read ([`Segments::load_filters`]), or
    /// if it was lost: then the segment may hold any key.
    bloom: Option<Sbbf>,
}

/// The shard's segments as the latest committed manifest lists them, and
/// which of them this run has loaded.
#[derive(Default)]
pub struct Segments {
    stored: BTreeMap<Month, Stored>,
    /// The committed version's filter pack (`None` once read, or lost).
    pack: Option<FileRecord>,
    loaded: BTreeSet<Month>,
    /// Months whose stored segments a rebuild replaces (none of them is read).
    replaced: BTreeSet<Month>,
    /// Segments read by this run (for the run report).
    pub reads: u64,
}

impl std::fmt::Debug for Segments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segments")
            .field(
                "stored",
                &self
                    .stored
                    .keys()
                    .map(|m| month_name(*m))
                    .collect::<Vec<_>>(),
            )
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
        let mut stored = BTreeMap::new();
        for r in records {
            let month =
                parse_month(&r.month).ok_or_else(|| SegmentError::Month(r.month.clone()))?;
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
            stored.insert(
                month,
                Stored {
                    record: r.clone(),
                    last_day: day_of_date(r.last_date),
                    bloom,
                },
            );
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

    /// Forgets every stored segment without reading it: the index is being
    /// rebuilt from all of bronze (a full refresh), and [`Segments::write`]
    /// then replaces them all, so [`delete_replaced`] removes their objects.
    pub fn replace_all(&mut self) {
        self.replaced.extend(self.stored.keys().copied());
        self.stored.clear();
    }

    /// Forgets, without reading them, the stored segments of the months after
    /// `month`: a full refresh that keeps the executions begun before the
    /// retention horizon rebuilds only those (see [`Segments::replace_all`]).
    pub fn replace_after(&mut self, month: Month) {
        let later: Vec<Month> = self
            .stored
            .range(month..)
            .map(|(m, _)| *m)
            .filter(|m| *m > month)
            .collect();
        for m in later {
            self.stored.remove(&m);
            self.replaced.insert(m);
        }
    }

    /// Forgets, without reading them, the stored segments of the months
    /// before `day`'s whose executions all ended before `day`: silver's
    /// retention removed every one of them ([`crate::retain`]), and bronze
    /// holds none of their events; [`delete_replaced`] removes their objects.
    pub fn retire_ended_before(&mut self, day: i32) {
        let ended: Vec<Month> = self
            .stored
            .range(..month_of_day(day))
            .filter(|(_, s)| s.last_day < day)
            .map(|(m, _)| *m)
            .collect();
        for m in ended {
            self.stored.remove(&m);
            self.replaced.insert(m);
        }
    }

    /// Whether a stored segment of a month before `day`'s holds only
    /// executions that ended before `day` ([`Segments::retire_ended_before`]).
    pub fn ended_before(&self, day: i32) -> bool {
        self.stored
            .range(..month_of_day(day))
            .any(|(_, s)| s.last_day < day)
    }

    /// The stored months up to `day`'s: those that may hold executions begun
    /// before `day`.
    pub fn up_to(&self, day: i32) -> impl Iterator<Item = Month> + '_ {
        self.stored.range(..=month_of_day(day)).map(|(m, _)| *m)
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
            .filter(|(m, _)| !rebuilt && !self.loaded.contains(m))
            .map(|(_, s)| s.record.keys)
            .sum();
        untouched + index.len() as u64
    }

    /// The stored months whose filter may hold one of `keys` (the filter
    /// pack is read first if needed).
    pub async fn maybe_holding<'a>(
        &mut self,
        lake: &Lake,
        keys: impl Iterator<Item = &'a KeyHash>,
    ) -> anyhow::Result<BTreeSet<Month>> {
        let mut months = BTreeSet::new();
        if self.stored.keys().all(|m| self.loaded.contains(m)) {
            return Ok(months);
        }
        self.load_filters(lake).await?;
        let mut candidates: Vec<(&Month, &Sbbf)> = Vec::new();
        for (m, s) in self.stored.iter().filter(|(m, _)| !self.loaded.contains(m)) {
            match &s.bloom {
                Some(b) => candidates.push((m, b)),
                // A lost filter may hold any key.
                None => {
                    months.insert(*m);
                }
            }
        }
        let mut keys = keys.peekable();
        if keys.peek().is_none() {
            // No key to look up: an unknown filter names nothing either.
            return Ok(BTreeSet::new());
        }
        for k in keys {
            for (m, bloom) in &candidates {
                if !months.contains(*m) && bloom.check(&k.0[..]) {
                    months.insert(**m);
                }
            }
        }
        Ok(months)
    }

    /// The stored months that may hold an execution with an event on `day`.
    pub fn spanning(&self, day: i32) -> impl Iterator<Item = Month> + '_ {
        self.stored
            .range(..=month_of_day(day))
            .filter(move |(_, s)| s.last_day >= day)
            .map(|(m, _)| *m)
    }

    /// The stored months of partition days `from ..= to`.
    pub fn within(&self, from: i32, to: i32) -> impl Iterator<Item = Month> + '_ {
        self.stored
            .range(month_of_day(from)..=month_of_day(to))
            .map(|(m, _)| *m)
    }

    /// Loads the stored segments of `months` that are not loaded yet into
    /// `into` (segments hold disjoint keys).
    pub async fn load(
        &mut self,
        lake: &Lake,
        months: impl IntoIterator<Item = Month>,
        into: &mut KeyIndex,
    ) -> anyhow::Result<()> {
        for m in months {
            if !self.loaded.insert(m) {
                continue;
            }
            if let Some(s) = self.stored.get(&m) {
                let part = crate::manifest::read_index(lake, &s.record.file).await?;
                into.absorb(part);
                self.reads += 1;
            }
        }
        Ok(())
    }

    /// Writes the segments whose entries may have changed and returns the
    /// records of the next manifest: every month this run loaded or gave an
    /// entry (all of them after a `rebuilt` index), from `index`; the others as
    /// they were. A month that gained entries from another is loaded first, so
    /// its new segment is complete.
    pub async fn write(
        mut self,
        lake: &Lake,
        shard: Shard,
        version: u64,
        mut index: KeyIndex,
        rebuilt: bool,
    ) -> anyhow::Result<Written> {
        if rebuilt {
            self.replace_all();
        }
        // The carried segments' filters go into the new pack; a carried
        // segment whose filter was lost is loaded and rewritten instead,
        // which rebuilds it.
        if self.stored.keys().any(|m| !self.loaded.contains(m)) {
            self.load_filters(lake).await?;
        }
        let lost: Vec<Month> = self
            .stored
            .iter()
            .filter(|(m, s)| !self.loaded.contains(m) && s.bloom.is_none())
            .map(|(m, _)| *m)
            .collect();
        self.load(lake, lost, &mut index).await?;
        let mut by_month: BTreeMap<Month, Vec<(KeyHash, KeyInfo)>> = BTreeMap::new();
        let gained: BTreeSet<Month> = index
            .iter()
            .map(|(_, i)| month_of_day(i.partition().day))
            .filter(|m| !self.loaded.contains(m))
            .collect();
        self.load(lake, gained, &mut index).await?;
        for (k, i) in index.finish(vec![]).iter() {
            by_month
                .entry(month_of_day(i.partition().day))
                .or_default()
                .push((*k, *i));
        }
        let mut out: Vec<(Month, IndexSegment, Vec<u8>)> = Vec::new();
        for (m, s) in std::mem::take(&mut self.stored) {
            if !self.loaded.contains(&m) && !by_month.contains_key(&m) {
                let Some(bloom) = &s.bloom else {
                    anyhow::bail!(
                        "key index segment {} was carried without its filter",
                        s.record.month
                    );
                };
                let mut bitset = Vec::new();
                bloom.write_bitset(&mut bitset)?;
                out.push((m, s.record, bitset));
            }
        }
        let mut written: BTreeSet<Month> = &self.loaded | &self.replaced;
        written.extend(by_month.keys().copied());
        for (m, entries) in by_month {
            let mut bloom = Sbbf::new_with_ndv_fpp(entries.len() as u64, BLOOM_FPP)?;
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
            let keys = entries.len() as u64;
            let part = KeyIndex::default().finish(entries);
            let path = segment_path(shard, m, version);
            let file = crate::write_index(lake, path, &part).await?;
            let record = IndexSegment {
                month: month_name(m),
                file,
                keys,
                last_date: date_of_day(last_day),
                bloom: String::new(),
                bloom_at: None,
            };
            out.push((m, record, bitset));
        }
        out.sort_by_key(|(m, ..)| *m);
        // One pack of every segment's filter, in month order.
        let mut pack = Vec::new();
        let mut records = Vec::with_capacity(out.len());
        for (_, mut record, bitset) in out {
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
            months: written,
        })
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

/// Where version `version` writes its segment of month `m`.
pub fn segment_path(shard: Shard, m: Month, version: u64) -> Path {
    month_dir(shard, m).join(format!("{version:010}.index"))
}

/// The version in the name of a segment or of a month's partition file.
pub fn version_of_segment(path: &Path) -> Option<u64> {
    let name = path.filename()?;
    let digits = name
        .strip_suffix(".index")
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
        let p = segment_path(shard, month_of_day(day), 12);
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
            .write(&lake, shard, 1, index, true)
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
            .write(&lake, shard, 2, KeyIndex::default(), false)
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
            .write(&lake, shard, 1, index, true)
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
        assert!(found.contains(&month_of_day(d(6, 1))), "no false negative");
        let spanning: Vec<Month> = seg.spanning(d(7, 1)).collect();
        // May's k2 spans July 1st; July's own may; June ended before.
        assert_eq!(spanning, [month_of_day(d(5, 1)), month_of_day(d(7, 1))]);
        let within: Vec<Month> = seg.within(d(6, 10), d(7, 1)).collect();
        assert_eq!(within.len(), 2);

        // Load June only, move k3 to July (an earlier event would move it the
        // other way; any move): June is rewritten empty (dropped), July gains
        // k3 and is loaded and rewritten whole, May is carried as it was.
        let mut loaded = KeyIndex::default();
        seg.load(&lake, [month_of_day(d(6, 1))], &mut loaded)
            .await
            .unwrap();
        assert_eq!(seg.reads, 1);
        assert_eq!(loaded.len(), 1);
        loaded.insert(k(3), info(d(7, 20), d(7, 20), 3));
        let second = seg.write(&lake, shard, 2, loaded, false).await.unwrap();
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
        assert!(may.contains(&month_of_day(d(5, 3))), "no false negative");
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
            .write(&lake, shard, 3, only_june, false)
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
}
