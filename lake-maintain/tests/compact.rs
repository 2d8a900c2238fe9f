//! Compaction of closed bronze days (#20): the same rows in fewer files, silver
//! unchanged and not recomputed, DuckDB reading the same, bronze going on; and
//! compaction racing exports.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use chrono::NaiveDate;
use lake_common::manifest::BronzeLog;
use lake_common::{Dataset, Lake, parquet_io};
use lake_maintain::Options;
use object_store::path::Path;
use silver_transform::Mode;
use support::*;

const DAY: Duration = Duration::from_secs(24 * 3600);

fn compact_options() -> Options {
    Options {
        compact: true,
        // Nothing of this test's lake is old enough to be collected.
        grace: Duration::from_secs(3600),
        upload_grace: Duration::from_secs(3600),
        ..Options::default()
    }
}

/// Every row of bronze's live event files, every column (in Arrow's row
/// format, byte for byte), sorted: the content a reader of the manifests sees,
/// whatever the files.
async fn bronze_rows(lake: &Lake) -> Vec<(NaiveDate, Vec<u8>)> {
    use arrow::row::{RowConverter, SortField};
    let log = BronzeLog::load(lake, Dataset::BronzeEvents).await.unwrap();
    let mut rows = Vec::new();
    for f in log.live_files() {
        for batch in parquet_io::read_all(lake, &Path::from(f.file.path.as_str()))
            .await
            .unwrap()
        {
            let converter = RowConverter::new(
                batch
                    .schema()
                    .fields()
                    .iter()
                    .map(|c| SortField::new(c.data_type().clone()))
                    .collect(),
            )
            .unwrap();
            let converted = converter.convert_columns(batch.columns()).unwrap();
            rows.extend(converted.iter().map(|r| (f.file.date, r.as_ref().to_vec())));
        }
    }
    rows.sort();
    rows
}

/// Live files per day.
async fn files_per_day(lake: &Lake) -> BTreeMap<NaiveDate, Vec<String>> {
    let mut out: BTreeMap<NaiveDate, Vec<String>> = BTreeMap::new();
    for f in BronzeLog::load(lake, Dataset::BronzeEvents)
        .await
        .unwrap()
        .live_files()
    {
        out.entry(f.file.date).or_default().push(f.file.path);
    }
    out
}

/// DuckDB over the local lake's bronze files (a glob reader).
fn duckdb_summary(dir: &std::path::Path) -> String {
    use lake_testkit::glob::{has_module, python};
    assert!(has_module("duckdb"), "DuckDB is missing: run `just setup`");
    let script = format!(
        "import duckdb\n\
         r = duckdb.sql(\"SELECT count(*), count(DISTINCT event_id), sum(quantity)::VARCHAR, \
             epoch_us(min(occurred_at)), epoch_us(max(occurred_at)), count(DISTINCT date) \
             FROM read_parquet('{}/bronze/events/*/*.parquet', hive_partitioning=true)\").fetchall()[0]\n\
         print('|'.join(str(x) for x in r))\n",
        dir.display()
    );
    let out = std::process::Command::new(python())
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Three exports of events of 3 to 6 days ago (three files on each of those
/// days), then one of the last hours: the old days are closed.
async fn three_files_a_day(h: &Harness) {
    let end = SystemTime::now() - 3 * DAY;
    for seed in 1..=3 {
        h.batch_ending(1500, seed, end, 3 * DAY).await;
    }
    h.batch(300, 9).await;
}

/// #20: a compaction keeps bronze's rows exactly (every column, lineage
/// included) in one file per closed day, deletes the old files, and DuckDB
/// reads the same; silver consumes it without recomputing anything and stays
/// equal to a full recompute; bronze's exports go on after it.
#[tokio::test(flavor = "multi_thread")]
async fn compaction_keeps_every_row_and_silver_recomputes_nothing() {
    let mut h = Harness::local().await;
    h.lookback = 10 * DAY;
    three_files_a_day(&h).await;
    let lake = h.lake();
    let rows = bronze_rows(&lake).await;
    let before = files_per_day(&lake).await;
    let duck = duckdb_summary(h.dir());
    let silver = silver_rows(&lake).await;
    let latest = latest_events_entry(&lake).await.batch;

    let dry = lake_maintain::run(
        &lake,
        &Options {
            dry_run: true,
            ..compact_options()
        },
    )
    .await
    .unwrap();
    let planned = dry.compaction.unwrap();
    assert!(planned.days.len() >= 3, "{planned:?}");
    assert_eq!(
        files_per_day(&lake).await,
        before,
        "a dry run changes nothing"
    );

    let r = lake_maintain::run(&lake, &compact_options()).await.unwrap();
    let c = r.compaction.clone().unwrap();
    assert_eq!(c.batch, Some(latest + 1), "{c:?}");
    assert_eq!(c.days.len(), planned.days.len());
    assert!(r.summary().contains("compacted"), "{}", r.summary());
    let after = files_per_day(&lake).await;
    for day in &c.days {
        assert!(day.files_before >= 2, "{day:?}");
        assert_eq!(day.files_after, 1, "{day:?}");
        assert_eq!(after[&day.date].len(), 1, "{day:?}");
        assert_eq!(day.files_before as usize, before[&day.date].len());
        // The replaced files are gone (a glob reader sees each row once).
        for old in &before[&day.date] {
            assert!(
                lake.get_bytes(&Path::from(old.as_str())).await.is_err(),
                "{old} should be deleted"
            );
        }
    }
    assert_eq!(
        bronze_rows(&lake).await,
        rows,
        "the same rows, every column"
    );
    assert_eq!(duckdb_summary(h.dir()), duck, "DuckDB reads the same");

    // Silver consumes the compaction and recomputes nothing.
    let s = h.silver(Mode::Incremental).await;
    assert_eq!(s.new_batches, vec![[latest + 1, latest + 1]]);
    assert_eq!(s.partitions.recomputed, 0, "{:?}", s.partitions);
    assert_eq!(s.work.new_files, 0, "{:?}", s.work);
    assert_eq!(silver_rows(&lake).await, silver);

    // Bronze goes on from the batch before the compaction's horizon; a late
    // event of a compacted day lands as a new file, and the next compaction
    // merges it in.
    h.batch_ending(50, 21, SystemTime::now() - 4 * DAY, DAY / 2)
        .await;
    h.batch(200, 10).await;
    h.assert_bronze_equals_postgres().await;
    let again = lake_maintain::run(&lake, &compact_options()).await.unwrap();
    let c2 = again.compaction.unwrap();
    assert!(
        c2.days
            .iter()
            .all(|d| d.files_before == 2 && d.files_after == 1),
        "{c2:?}"
    );
    h.assert_bronze_equals_postgres().await;
    h.silver(Mode::Incremental).await;
    h.assert_full_refresh_changes_nothing().await;
}

/// #20: compaction racing bronze's exports: exactly one of them takes each
/// batch number; bronze stays equal to PostgreSQL and silver to a full
/// recompute.
#[tokio::test(flavor = "multi_thread")]
async fn compaction_racing_exports_loses_and_duplicates_nothing() {
    let mut h = Harness::new().await;
    h.lookback = 10 * DAY;
    three_files_a_day(&h).await;
    let lake = h.lake();
    let client = h.pg.client().await.unwrap();
    let mut compacted = 0;
    for seed in 30..34 {
        // Late events of the closed days and new ones: both sides have work.
        for (end, window) in [
            (SystemTime::now() - 4 * DAY, DAY),
            (SystemTime::now(), Duration::from_secs(3600)),
        ] {
            let opts = lake_testkit::demo::GenerateOptions::new(100, seed)
                .window_end(end)
                .window(window);
            lake_testkit::demo::generate_with(&client, &opts)
                .await
                .unwrap();
        }
        let opts = compact_options();
        let (m, b) = tokio::join!(lake_maintain::run(&lake, &opts), h.bronze_status());
        let m = m.unwrap();
        compacted += u64::from(m.compaction.is_some_and(|c| c.batch.is_some()));
        assert!(
            matches!(
                b,
                lake_common::ExitStatus::Success | lake_common::ExitStatus::Busy
            ),
            "{b:?}"
        );
    }
    // Compaction usually loses the race (an export is quicker to take the
    // number); alone, it commits.
    h.bronze().await;
    let alone = lake_maintain::run(&lake, &compact_options()).await.unwrap();
    compacted += u64::from(alone.compaction.is_some_and(|c| c.batch.is_some()));
    assert!(compacted >= 1, "no compaction committed");
    h.batch(100, 40).await;
    h.assert_bronze_equals_postgres().await;
    assert_references_exist(&lake).await;
    h.silver(Mode::Incremental).await;
    h.assert_full_refresh_changes_nothing().await;
}
