//! The partition table in monthly files, so a run reads and rewrites only the
//! months it publishes (SPEC §10, issue #17).
//!
//! The partition table (one record per client and day: its silver and
//! quarantine files, the version that wrote them, the bronze batches they came
//! from) grows by a few hundred bytes for every client and day of history.
//! Held inline in the manifest it was read by every run and rewritten by every
//! commit: megabytes after a few years, most of what an hourly run read.
//!
//! Each month's records are one JSON file next to that month's key index
//! segment (`…/segments/shard-<i>-of-<n>/YYYY-MM/<version>.partitions.json`);
//! the manifest keeps one [`PartitionMonth`] per month: the file, its checksum
//! and the month's totals (what `lake status` shows, without reading any file).
//! A run loads the months of the partitions it plans (and all of them for a
//! full refresh or a whole-shard recompute), changes them, writes the changed
//! months as new objects named by its version, and carries the other records
//! unchanged. A month file a version no longer lists is deleted after its
//! commit with the key index segments ([`crate::segments::delete_replaced`]).

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use lake_common::Lake;
use object_store::path::Path;
use serde::{Deserialize, Serialize};

use crate::key::{PartitionKey, Shard};
use crate::manifest::{PartitionRecord, SilverManifest};
use crate::publish::FileRecord;
use crate::segments::{Month, month_dir, month_name, month_of_day, parse_month};

/// The suffix of a month's partition file.
pub const SUFFIX: &str = ".partitions.json";

/// What a manifest records of one month of the partition table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionMonth {
    /// `YYYY-MM`: the month of its partitions' dates.
    pub month: String,
    /// The JSON file of its records (`rows`: the partitions).
    pub file: FileRecord,
    /// Partitions with a silver file.
    pub silver_files: u64,
    /// Silver rows.
    pub silver_rows: u64,
    /// Bytes of the silver files.
    pub silver_bytes: u64,
    /// Quarantine rows.
    pub quarantine_rows: u64,
}

/// Errors of the partition table.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PartitionsError {
    /// A record names no month.
    #[error("partition month {0:?} of the silver manifest names no month (YYYY-MM)")]
    Month(String),
    /// The store failed.
    #[error("reading the partition table {path}: {source}")]
    Store {
        /// The file.
        path: String,
        /// Why.
        source: object_store::Error,
    },
    /// A month's file is not the one its manifest recorded.
    #[error(
        "partition table {0} does not match its manifest (size or checksum); run with --full-refresh to rebuild it"
    )]
    Checksum(String),
    /// A month's file does not parse.
    #[error("partition table {path} is not valid: {source}")]
    Parse {
        /// The file.
        path: String,
        /// Why.
        source: serde_json::Error,
    },
}

/// The shard's partition table as the latest committed manifest lists it, and
/// the months of it this run has loaded (and changed).
#[derive(Debug, Default)]
pub struct PartitionTable {
    stored: BTreeMap<Month, PartitionMonth>,
    loaded: BTreeSet<Month>,
    records: BTreeMap<PartitionKey, PartitionRecord>,
    /// Loaded months whose records changed: written again by [`Self::write`].
    changed: BTreeSet<Month>,
    /// Month files read by this run (for the run report).
    pub reads: u64,
}

impl PartitionTable {
    /// The table of `m`: its month records, or (a manifest of format 2 or
    /// older) its inline records, all loaded and written as months next time.
    pub fn of(m: &SilverManifest) -> Result<Self, PartitionsError> {
        let mut table = Self::default();
        for r in &m.partition_months {
            let month =
                parse_month(&r.month).ok_or_else(|| PartitionsError::Month(r.month.clone()))?;
            table.stored.insert(month, r.clone());
        }
        for r in &m.partitions {
            let month = month_of_day(r.key().day);
            table.loaded.insert(month);
            table.changed.insert(month);
            table.records.insert(r.key(), r.clone());
        }
        Ok(table)
    }

    /// Partitions over every month, loaded or not.
    pub fn total(&self) -> u64 {
        let unloaded: u64 = self
            .stored
            .iter()
            .filter(|(m, _)| !self.loaded.contains(m))
            .map(|(_, r)| r.file.rows)
            .sum();
        unloaded + self.records.len() as u64
    }

    /// The stored months of partition days `from ..= to`.
    pub fn within(&self, from: i32, to: i32) -> BTreeSet<Month> {
        self.stored
            .range(month_of_day(from)..=month_of_day(to))
            .map(|(m, _)| *m)
            .collect()
    }

    /// Every stored month.
    pub fn months(&self) -> BTreeSet<Month> {
        self.stored.keys().copied().collect()
    }

    /// Loads the months of these partitions.
    pub async fn load_for(
        &mut self,
        lake: &Lake,
        partitions: impl IntoIterator<Item = &PartitionKey>,
    ) -> Result<(), PartitionsError> {
        let months: BTreeSet<Month> = partitions
            .into_iter()
            .map(|p| month_of_day(p.day))
            .collect();
        self.load(lake, months).await
    }

    /// Loads the stored months of `months` not loaded yet.
    pub async fn load(
        &mut self,
        lake: &Lake,
        months: impl IntoIterator<Item = Month>,
    ) -> Result<(), PartitionsError> {
        for m in months {
            if !self.loaded.insert(m) {
                continue;
            }
            if let Some(r) = self.stored.get(&m) {
                for rec in read(lake, &r.file).await? {
                    self.records.insert(rec.key(), rec);
                }
                self.reads += 1;
            }
        }
        Ok(())
    }

    fn assert_loaded(&self, p: &PartitionKey) {
        debug_assert!(
            self.loaded.contains(&month_of_day(p.day)),
            "partition {p} of a month not loaded"
        );
    }

    /// A partition's record (its month must be loaded).
    pub fn get(&self, p: &PartitionKey) -> Option<&PartitionRecord> {
        self.assert_loaded(p);
        self.records.get(p)
    }

    /// Sets a partition's record (its month must be loaded).
    pub fn insert(&mut self, rec: PartitionRecord) {
        let p = rec.key();
        self.assert_loaded(&p);
        self.changed.insert(month_of_day(p.day));
        self.records.insert(p, rec);
    }

    /// Removes a partition (its month must be loaded).
    pub fn remove(&mut self, p: &PartitionKey) {
        self.assert_loaded(p);
        if self.records.remove(p).is_some() {
            self.changed.insert(month_of_day(p.day));
        }
    }

    /// The loaded partitions.
    pub fn keys(&self) -> impl Iterator<Item = PartitionKey> + '_ {
        self.records.keys().copied()
    }

    /// The loaded records.
    pub fn records(&self) -> impl Iterator<Item = &PartitionRecord> {
        self.records.values()
    }

    /// Writes the months whose records changed and returns the next
    /// manifest's month records (the others as they were) and the months
    /// written or emptied, whose older files [`crate::segments::delete_replaced`]
    /// removes after the commit.
    pub async fn write(
        mut self,
        lake: &Lake,
        shard: Shard,
        version: u64,
    ) -> anyhow::Result<(Vec<PartitionMonth>, BTreeSet<Month>)> {
        let mut by_month: BTreeMap<Month, Vec<PartitionRecord>> = BTreeMap::new();
        for (p, rec) in std::mem::take(&mut self.records) {
            let m = month_of_day(p.day);
            if self.changed.contains(&m) {
                by_month.entry(m).or_default().push(rec);
            }
        }
        let mut out: BTreeMap<Month, PartitionMonth> = std::mem::take(&mut self.stored)
            .into_iter()
            .filter(|(m, _)| !self.changed.contains(m))
            .collect();
        for (m, records) in by_month {
            let path = month_dir(shard, m).join(format!("{version:010}{SUFFIX}"));
            let bytes = Bytes::from(serde_json::to_vec(&records)?);
            let file = FileRecord::put(lake, &path, records.len() as u64, bytes).await?;
            let silver = || records.iter().filter_map(|r| r.silver.as_ref());
            out.insert(
                m,
                PartitionMonth {
                    month: month_name(m),
                    file,
                    silver_files: silver().count() as u64,
                    silver_rows: silver().map(|f| f.rows).sum(),
                    silver_bytes: silver().map(|f| f.bytes).sum(),
                    quarantine_rows: records
                        .iter()
                        .filter_map(|r| r.quarantine.as_ref())
                        .map(|f| f.rows)
                        .sum(),
                },
            );
        }
        Ok((out.into_values().collect(), self.changed))
    }
}

/// Reads one month's records, checked against its manifest record.
async fn read(lake: &Lake, file: &FileRecord) -> Result<Vec<PartitionRecord>, PartitionsError> {
    let path = Path::from(file.path.as_str());
    let bytes = lake
        .get_bytes(&path)
        .await
        .map_err(|source| PartitionsError::Store {
            path: file.path.clone(),
            source,
        })?;
    if bytes.len() as u64 != file.bytes
        || lake_common::parquet_io::sha256_hex(&bytes) != file.sha256
    {
        return Err(PartitionsError::Checksum(file.path.clone()));
    }
    serde_json::from_slice(&bytes).map_err(|source| PartitionsError::Parse {
        path: file.path.clone(),
        source,
    })
}

/// A version's totals over its partitions, from the manifest alone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Partitions.
    pub partitions: u64,
    /// Partitions with a silver file.
    pub silver_files: u64,
    /// Silver rows.
    pub silver_rows: u64,
    /// Bytes of the silver files.
    pub silver_bytes: u64,
    /// Quarantine rows.
    pub quarantine_rows: u64,
}

/// The totals of `m`: summed over its month records (and its inline records,
/// format 2 or older), reading no file.
pub fn totals(m: &SilverManifest) -> Totals {
    let mut t = Totals::default();
    for r in &m.partition_months {
        t.partitions += r.file.rows;
        t.silver_files += r.silver_files;
        t.silver_rows += r.silver_rows;
        t.silver_bytes += r.silver_bytes;
        t.quarantine_rows += r.quarantine_rows;
    }
    for r in &m.partitions {
        t.partitions += 1;
        if let Some(f) = &r.silver {
            t.silver_files += 1;
            t.silver_rows += f.rows;
            t.silver_bytes += f.bytes;
        }
        t.quarantine_rows += r.quarantine.as_ref().map_or(0, |f| f.rows);
    }
    t
}

/// Every partition record of a committed version, in partition order: what a
/// reader that follows the manifest lists (one GET per month).
pub async fn read_all(
    lake: &Lake,
    m: &SilverManifest,
) -> Result<Vec<PartitionRecord>, PartitionsError> {
    let mut table = PartitionTable::of(m)?;
    let months = table.months();
    table.load(lake, months).await?;
    Ok(table.records.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::day_of_date;
    use chrono::NaiveDate;

    fn record(client_id: i64, date: NaiveDate, rows: u64) -> PartitionRecord {
        PartitionRecord {
            client_id,
            date,
            version: 1,
            silver: Some(FileRecord {
                path: format!("silver/{client_id}/{date}.parquet"),
                rows,
                bytes: rows * 100,
                sha256: String::new(),
            }),
            quarantine: None,
            batches: vec![[1, 1]],
        }
    }

    /// Months are written whole, carried when untouched, re-read by month, and
    /// a month left without partitions disappears from the table.
    #[tokio::test]
    async fn months_are_written_carried_and_emptied() {
        let lake = Lake::in_memory();
        let shard = Shard { index: 0, count: 1 };
        let d = |m: u32, day: u32| NaiveDate::from_ymd_opt(2025, m, day).unwrap();
        let mut legacy = SilverManifest::pending(
            shard,
            1,
            "run",
            std::time::Duration::from_secs(30),
            "full_refresh",
        );
        legacy.partitions = vec![
            record(1, d(5, 3), 10),
            record(2, d(5, 9), 5),
            record(1, d(6, 1), 7),
        ];
        let table = PartitionTable::of(&legacy).unwrap();
        assert_eq!(table.total(), 3);
        let (months, written) = table.write(&lake, shard, 1).await.unwrap();
        assert_eq!(written.len(), 2);
        assert_eq!(
            months.iter().map(|m| m.month.as_str()).collect::<Vec<_>>(),
            ["2025-05", "2025-06"]
        );
        assert_eq!((months[0].file.rows, months[0].silver_rows), (2, 15));
        let mut m1 = legacy.clone();
        let inline = totals(&m1);
        m1.partitions.clear();
        m1.partition_months = months.clone();
        assert_eq!(totals(&m1), inline, "the months' totals are the records'");
        assert_eq!((inline.partitions, inline.silver_bytes), (3, 2200));
        assert_eq!(
            months[1].file.path,
            "silver/stop_executions/_manifests/segments/shard-0-of-1/2025-06/0000000001.partitions.json"
        );

        // Version 2 changes June only: May's file is carried.
        let mut m2 = legacy.clone();
        m2.partitions.clear();
        m2.partition_months = months.clone();
        let mut table = PartitionTable::of(&m2).unwrap();
        assert_eq!(table.total(), 3);
        let june = PartitionKey::from_date(1, d(6, 1));
        table.load_for(&lake, [&june]).await.unwrap();
        assert_eq!((table.reads, table.total()), (1, 3));
        assert_eq!(table.get(&june).unwrap().silver.as_ref().unwrap().rows, 7);
        table.remove(&june);
        let (next, written) = table.write(&lake, shard, 2).await.unwrap();
        assert_eq!(next, vec![months[0].clone()], "June emptied, May carried");
        assert_eq!(
            written,
            [month_of_day(day_of_date(d(6, 1)))].into_iter().collect()
        );

        m2.partition_months = next;
        let all = read_all(&lake, &m2).await.unwrap();
        assert_eq!(all, vec![record(1, d(5, 3), 10), record(2, d(5, 9), 5)]);
    }

    /// A month file that is not the one the manifest recorded is refused.
    #[tokio::test]
    async fn a_changed_month_file_is_refused() {
        let lake = Lake::in_memory();
        let shard = Shard { index: 0, count: 1 };
        let mut m = SilverManifest::pending(
            shard,
            1,
            "run",
            std::time::Duration::from_secs(30),
            "full_refresh",
        );
        m.partitions = vec![record(1, NaiveDate::from_ymd_opt(2025, 5, 3).unwrap(), 1)];
        let (months, _) = PartitionTable::of(&m)
            .unwrap()
            .write(&lake, shard, 1)
            .await
            .unwrap();
        lake.put(
            &Path::from(months[0].file.path.as_str()),
            Bytes::from_static(b"[]"),
        )
        .await
        .unwrap();
        m.partitions.clear();
        m.partition_months = months;
        let err = read_all(&lake, &m).await.unwrap_err();
        assert!(matches!(err, PartitionsError::Checksum(_)), "{err}");
        assert!(err.to_string().contains("--full-refresh"), "{err}");
    }
}
