//! Retention of bronze through its log (#20): old days removed by one log
//! entry, silver unchanged and not recomputed, a full refresh unchanged too,
//! the executions begun before the horizon frozen, and silver's unread files
//! holding the horizon back.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chrono::{NaiveDate, Utc};
use lake_common::manifest::BronzeLog;
use lake_common::{Dataset, Lake};
use lake_maintain::Options;
use object_store::path::Path;
use silver_transform::Mode;
use support::*;

const DAY: Duration = Duration::from_secs(24 * 3600);
const KEEP: u32 = 10;

fn retain_options() -> Options {
    Options {
        compact: false,
        bronze_retention_days: Some(KEEP),
        // Nothing of this test's lake is old enough to be collected.
        grace: Duration::from_secs(3600),
        upload_grace: Duration::from_secs(3600),
        ..Options::default()
    }
}

async fn live_days(lake: &Lake) -> Vec<NaiveDate> {
    let mut days: Vec<NaiveDate> = BronzeLog::load(lake, Dataset::BronzeEvents)
        .await
        .unwrap()
        .live_files()
        .into_iter()
        .map(|f| f.file.date)
        .collect();
    days.dedup();
    days
}

/// Events over the 20 days that ended two days ago, then the last hours
/// (seeds `seed` and `seed + 1`), each exported and read by silver.
async fn twenty_days(seed: u64) -> Harness {
    let mut h = Harness::local().await;
    h.lookback = 40 * DAY;
    h.batch_ending(3000, seed, SystemTime::now() - 2 * DAY, 20 * DAY)
        .await;
    h.batch(300, seed + 1).await;
    h
}

/// A new `FAILED` event, now, for the earliest execution of PostgreSQL that
/// began before `before`: folded, it would change that execution's status.
const LATE_FAILURE: &str = "INSERT INTO stop_events (event_id, occurred_at, operation_id, client_id, \
     symbol, event_type, execution_token, payload_json, source, retry_count) \
     SELECT $1::text::uuid, now(), operation_id, client_id, symbol, 'FAILED', execution_token, '{}', \
     source, retry_count + 1 FROM stop_events WHERE occurred_at < $2 AND execution_token IS NOT NULL \
     ORDER BY occurred_at LIMIT 1";

/// A new execution whose one event is dated `$2`.
const DATED_EVENT: &str = "INSERT INTO stop_events (event_id, occurred_at, operation_id, client_id, \
     symbol, event_type, execution_token, payload_json, source, retry_count) \
     VALUES ($1::text::uuid, $2, 7, 7, 'ETHUSDC', 'STOP_TRIGGERED', 'retention-late', '{}', 'ws', 0)";

/// #20: retention removes every file of the days before its horizon through
/// one log entry; bronze `--verify` compares the days it keeps; silver
/// consumes the entry without recomputing anything and a full refresh after it
/// changes nothing; a new event for an execution begun before the horizon is
/// counted and leaves its row as it is; a late row dated before the horizon is
/// not read, and the next retention removes it.
#[tokio::test(flavor = "multi_thread")]
async fn retention_removes_old_days_and_silver_keeps_its_history() {
    let h = twenty_days(1).await;
    let lake = h.lake();
    let days_before = live_days(&lake).await;
    let silver = silver_rows(&lake).await;
    let latest = latest_events_entry(&lake).await;
    let target = latest.snapshot_time.date_naive() - chrono::Days::new(u64::from(KEEP));
    assert!(days_before.first().unwrap() < &target, "{days_before:?}");
    let doomed: Vec<String> = BronzeLog::load(&lake, Dataset::BronzeEvents)
        .await
        .unwrap()
        .live_files()
        .into_iter()
        .filter(|f| f.file.date < target)
        .map(|f| f.file.path)
        .collect();

    let dry = lake_maintain::run(
        &lake,
        &Options {
            dry_run: true,
            ..retain_options()
        },
    )
    .await
    .unwrap();
    let planned = dry.retention.unwrap();
    assert_eq!(planned.horizon, Some(target), "{planned:?}");
    assert_eq!(planned.files, doomed.len() as u64);
    assert_eq!(
        live_days(&lake).await,
        days_before,
        "a dry run changes nothing"
    );

    let r = lake_maintain::run(&lake, &retain_options()).await.unwrap();
    let kept = r.retention.clone().unwrap();
    assert_eq!(kept.batch, Some(latest.batch + 1), "{kept:?}");
    assert_eq!(kept.horizon, Some(target));
    assert_eq!(kept.held_by_silver, None);
    assert!(
        r.summary().contains("retention of 10 days"),
        "{}",
        r.summary()
    );
    let log = BronzeLog::load(&lake, Dataset::BronzeEvents).await.unwrap();
    assert_eq!(log.retained_before(), Some(target));
    assert!(live_days(&lake).await.iter().all(|d| *d >= target));
    for path in &doomed {
        assert!(
            lake.get_bytes(&Path::from(path.as_str())).await.is_err(),
            "{path} should be deleted"
        );
    }
    h.assert_bronze_equals_postgres().await;

    // Silver consumes the retention and recomputes nothing; a full refresh
    // (which reads bronze from the horizon on) changes nothing either.
    let s = h.silver(Mode::Incremental).await;
    assert_eq!(s.new_batches, vec![[latest.batch + 1, latest.batch + 1]]);
    assert_eq!(s.partitions.recomputed, 0, "{:?}", s.partitions);
    assert_eq!(s.retained_before, Some(target));
    assert_eq!(silver_rows(&lake).await, silver);
    h.assert_full_refresh_changes_nothing().await;
    assert_eq!(silver_rows(&lake).await, silver, "history kept");

    // A new event for an execution begun before the horizon, and a new
    // execution whose event is dated before it.
    let client = h.pg.client().await.unwrap();
    let before: chrono::DateTime<Utc> = (target - chrono::Days::new(1))
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc();
    let n = client
        .execute(
            LATE_FAILURE,
            &[&"00000000-0000-0000-0000-00000000f001", &before],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    client
        .execute(
            DATED_EVENT,
            &[
                &"00000000-0000-0000-0000-00000000f002",
                &(before - chrono::Duration::days(2)),
            ],
        )
        .await
        .unwrap();
    h.bronze().await;
    let s = h.silver(Mode::Incremental).await;
    assert_eq!(s.work.frozen_executions, 1, "{:?}", s.work);
    assert_eq!(s.work.files_behind_horizon, 1, "{:?}", s.work);
    assert_eq!(
        s.quality.violations_per_rule["after_retention_horizon"], 1,
        "{:?}",
        s.quality
    );
    assert_eq!(
        silver_files(&lake).await,
        silver_files_of(&silver),
        "frozen rows unchanged"
    );
    let late = late_rows(&lake).await;
    assert_eq!(late.len(), 1, "{late:?}");
    assert_eq!((late[0].1.as_str(), late[0].2), ("FAILED", 1), "{late:?}");
    h.assert_full_refresh_changes_nothing().await;
    h.assert_bronze_equals_postgres().await;
    // A second one replaces the execution's row, folded from both.
    let n = client
        .execute(
            LATE_FAILURE,
            &[&"00000000-0000-0000-0000-00000000f003", &before],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    h.bronze().await;
    let s = h.silver(Mode::Incremental).await;
    assert_eq!(s.work.frozen_executions, 1, "{:?}", s.work);
    assert_eq!(s.partitions.recomputed, 0, "{:?}", s.partitions);
    let again = late_rows(&lake).await;
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(again[0].0, late[0].0, "the same execution");
    assert_eq!(again[0].2, 2, "{again:?}");
    assert_eq!(silver_files(&lake).await, silver_files_of(&silver));
    h.assert_full_refresh_changes_nothing().await;
    // Both later events gone from PostgreSQL and their day re-exported: the
    // row goes, and the frozen partition is as it was before them.
    client
        .execute(
            "DELETE FROM stop_events WHERE event_id IN \
             ('00000000-0000-0000-0000-00000000f001', '00000000-0000-0000-0000-00000000f003')",
            &[],
        )
        .await
        .unwrap();
    let mut backfill = h.bronze_options(false);
    backfill.datasets = bronze_ingest::Datasets::Events;
    backfill.backfill_days = vec![Utc::now().date_naive()];
    bronze_ingest::run(&h.bronze_config(), &backfill)
        .await
        .unwrap();
    let s = h.silver(Mode::Incremental).await;
    assert_eq!(s.work.frozen_executions, 1, "{:?}", s.work);
    assert_eq!(late_rows(&lake).await, vec![], "the row follows bronze");
    assert_eq!(
        silver_rows(&lake).await,
        silver,
        "as before the later events"
    );
    h.assert_full_refresh_changes_nothing().await;

    // A backfill of a day before the horizon is refused, and writes nothing:
    // silver would not read it and the next retention would remove it again.
    let entries = latest_events_entry(&lake).await.batch;
    let mut backfill = h.bronze_options(false);
    backfill.datasets = bronze_ingest::Datasets::Events;
    backfill.backfill_days = vec![target - chrono::Days::new(1)];
    let err = bronze_ingest::run(&h.bronze_config(), &backfill)
        .await
        .unwrap_err();
    assert_eq!(
        lake_common::telemetry::exit_status_of(err.as_ref()),
        lake_common::ExitStatus::Usage,
        "{err:#}"
    );
    assert!(format!("{err:#}").contains("retention horizon"), "{err:#}");
    let after = latest_events_entry(&lake).await.batch;
    assert_eq!(after, entries, "nothing written");

    // The next retention removes the late file behind the horizon.
    let again = lake_maintain::run(&lake, &retain_options()).await.unwrap();
    let r2 = again.retention.unwrap();
    assert_eq!((r2.files, r2.horizon), (1, Some(target)), "{r2:?}");
    assert!(live_days(&lake).await.iter().all(|d| *d >= target));
    let s = h.silver(Mode::Incremental).await;
    assert_eq!(s.partitions.recomputed, 0, "{:?}", s.partitions);
    assert_eq!(silver_rows(&lake).await, silver);
    h.assert_full_refresh_changes_nothing().await;
    assert_references_exist(&lake).await;
}

type Content = std::collections::BTreeSet<(i64, String, Option<String>, Option<String>)>;

/// The silver files of `content` ([`silver_rows`]), quarantine left out.
fn silver_files_of(content: &Content) -> Vec<(i64, String, Option<String>)> {
    content
        .iter()
        .map(|(c, d, s, _)| (*c, d.clone(), s.clone()))
        .collect()
}

async fn silver_files(lake: &Lake) -> Vec<(i64, String, Option<String>)> {
    silver_files_of(&silver_rows(lake).await)
}

/// The `after_retention_horizon` quarantine rows: key, status, events.
async fn late_rows(lake: &Lake) -> Vec<(String, String, i64)> {
    use arrow::array::{AsArray, RecordBatch};
    let m = silver_transform::manifest::find(lake, silver_transform::key::Shard::ALL)
        .await
        .unwrap()
        .committed
        .unwrap();
    let mut out = Vec::new();
    for p in silver_transform::partitions::read_all(lake, &m)
        .await
        .unwrap()
    {
        let Some(q) = p.quarantine else { continue };
        for b in lake_common::parquet_io::read_all(lake, &Path::from(q.path.as_str()))
            .await
            .unwrap()
        {
            let b: RecordBatch = b;
            let text = |c: &str| b.column_by_name(c).unwrap().as_string::<i32>().clone();
            let (keys, status, violation) =
                (text("execution_key"), text("status"), text("violation"));
            let events = b.column_by_name("event_count").unwrap();
            let events = events.as_primitive::<arrow::datatypes::Int64Type>();
            for i in 0..b.num_rows() {
                if violation.value(i) == "after_retention_horizon" {
                    out.push((
                        keys.value(i).to_owned(),
                        status.value(i).to_owned(),
                        events.value(i),
                    ));
                }
            }
        }
    }
    out.sort();
    out
}

/// #20: retention never removes a file silver has not read: without any
/// silver version it removes nothing, and a file of an old day that silver
/// has not consumed yet holds the horizon at that day until silver runs.
#[tokio::test(flavor = "multi_thread")]
async fn retention_waits_for_silver() {
    let mut h = Harness::local().await;
    h.lookback = 40 * DAY;
    let client = h.pg.client().await.unwrap();
    let opts = lake_testkit::demo::GenerateOptions::new(2000, 3)
        .window_end(SystemTime::now() - 2 * DAY)
        .window(20 * DAY);
    lake_testkit::demo::generate_with(&client, &opts)
        .await
        .unwrap();
    h.bronze().await;
    let lake = h.lake();
    let r = lake_maintain::run(&lake, &retain_options()).await.unwrap();
    let r = r.retention.unwrap();
    assert_eq!(r.batch, None, "{r:?}");
    assert!(r.skipped.unwrap().contains("silver has not committed"));

    h.silver(Mode::Incremental).await;
    // A late row of 15 days ago, exported after silver's run.
    let at = Utc::now() - chrono::Duration::days(15);
    client
        .execute(DATED_EVENT, &[&"00000000-0000-0000-0000-00000000f003", &at])
        .await
        .unwrap();
    h.bronze().await;
    let held = lake_maintain::run(&lake, &retain_options()).await.unwrap();
    let held = held.retention.unwrap();
    assert_eq!(held.held_by_silver, Some(at.date_naive()), "{held:?}");
    assert_eq!(held.horizon, Some(at.date_naive()));
    assert!(live_days(&lake).await.contains(&at.date_naive()));

    let s = h.silver(Mode::Incremental).await;
    assert_eq!(s.work.files_behind_horizon, 0, "{:?}", s.work);
    let full = lake_maintain::run(&lake, &retain_options()).await.unwrap();
    let full = full.retention.unwrap();
    assert_eq!(full.held_by_silver, None, "{full:?}");
    assert!(full.horizon.unwrap() > at.date_naive());
    h.silver(Mode::Incremental).await;
    h.assert_full_refresh_changes_nothing().await;
    h.assert_bronze_equals_postgres().await;
}

/// The partitions of a silver row set dated before `day`.
fn dated_from(
    rows: &std::collections::BTreeSet<(i64, String, Option<String>, Option<String>)>,
    day: NaiveDate,
) -> std::collections::BTreeSet<(i64, String, Option<String>, Option<String>)> {
    rows.iter()
        .filter(|r| r.1 >= day.to_string())
        .cloned()
        .collect()
}

/// #20: silver's retention removes the partitions of the days before its
/// horizon through one version of the shard's log, deletes their files and
/// their key-index entries, and keeps every later partition as it was; it
/// never passes bronze's horizon (nothing while bronze keeps everything, and
/// bronze's horizon when silver would keep fewer days); silver's next run
/// carries the horizon and recomputes nothing, and a full refresh agrees.
#[tokio::test(flavor = "multi_thread")]
async fn silver_retention_removes_old_partitions_and_never_passes_bronze() {
    const SILVER_KEEP: u32 = 14;
    let h = twenty_days(3).await;
    let lake = h.lake();
    let silver = silver_rows(&lake).await;
    let latest = latest_events_entry(&lake).await;
    let day = latest.snapshot_time.date_naive();
    let target = day - chrono::Days::new(u64::from(SILVER_KEEP));
    let bronze_target = day - chrono::Days::new(u64::from(KEEP));
    assert!(
        silver.iter().any(|r| r.1 < target.to_string()),
        "the lake has partitions before {target}"
    );

    // Bronze keeps everything: silver keeps everything too.
    let r = lake_maintain::run(
        &lake,
        &Options {
            bronze_retention_days: None,
            silver_retention_days: Some(SILVER_KEEP),
            ..retain_options()
        },
    )
    .await
    .unwrap();
    let s = r.silver_retention.unwrap();
    assert!(
        s.skipped
            .as_deref()
            .unwrap()
            .contains("bronze keeps every day"),
        "{s:?}"
    );
    assert_eq!(silver_rows(&lake).await, silver);

    let opts = Options {
        silver_retention_days: Some(SILVER_KEEP),
        ..retain_options()
    };
    let dry = lake_maintain::run(
        &lake,
        &Options {
            dry_run: true,
            ..opts.clone()
        },
    )
    .await
    .unwrap();
    let planned = dry.silver_retention.unwrap();
    let doomed = silver.len() - dated_from(&silver, target).len();
    assert_eq!(planned.horizon, Some(target), "{planned:?}");
    assert_eq!(planned.partitions(), doomed as u64, "{planned:?}");
    assert_eq!(
        silver_rows(&lake).await,
        silver,
        "a dry run changes nothing"
    );

    let m = silver_transform::manifest::find(&lake, silver_transform::key::Shard::ALL)
        .await
        .unwrap()
        .committed
        .unwrap();
    let doomed_files: Vec<String> = silver_transform::partitions::read_all(&lake, &m)
        .await
        .unwrap()
        .into_iter()
        .filter(|p| p.date < target)
        .flat_map(|p| [p.silver, p.quarantine])
        .flatten()
        .map(|f| f.path)
        .collect();
    assert!(!doomed_files.is_empty());
    let r = lake_maintain::run(&lake, &opts).await.unwrap();
    let s = r.silver_retention.clone().unwrap();
    assert_eq!(s.shards.len(), 1, "{s:?}");
    assert_eq!(s.shards[0].version, Some(m.version + 1), "{s:?}");
    assert_eq!(s.partitions(), doomed as u64);
    assert!(
        r.summary().contains("silver retention of 14 days"),
        "{}",
        r.summary()
    );
    let kept = dated_from(&silver, target);
    assert_eq!(silver_rows(&lake).await, kept);
    for path in &doomed_files {
        assert!(
            lake.get_bytes(&Path::from(path.as_str())).await.is_err(),
            "{path} should be deleted"
        );
    }
    let retained = |lake: Lake| async move {
        silver_transform::manifest::find(&lake, silver_transform::key::Shard::ALL)
            .await
            .unwrap()
            .committed
            .unwrap()
            .retained_before
    };
    assert_eq!(retained(lake.clone()).await, Some(target));
    // The key index keeps no execution that ended before the horizon (one of
    // a removed partition with a later event would stay: see below).
    let after = silver_transform::manifest::find(&lake, silver_transform::key::Shard::ALL)
        .await
        .unwrap()
        .committed
        .unwrap();
    assert!(
        after.index_keys < m.index_keys,
        "{} {}",
        after.index_keys,
        m.index_keys
    );
    let first_kept = silver_transform::key::day_of_date(target);
    for seg in &after.index_segments {
        let ix = silver_transform::manifest::read_index(&lake, &seg.file)
            .await
            .unwrap();
        assert!(
            ix.iter()
                .all(|(_, i)| i.partition().day >= first_kept || i.last_day >= first_kept),
            "segment {} keeps an execution that ended before the horizon",
            seg.month
        );
    }
    assert!(
        after
            .index_segments
            .iter()
            .all(|seg| seg.month >= target.format("%Y-%m").to_string() || seg.last_date >= target),
        "{:?}",
        after
            .index_segments
            .iter()
            .map(|s| &s.month)
            .collect::<Vec<_>>()
    );

    // Silver consumes bronze's retention without recomputing, and keeps the horizon.
    let run = h.silver(Mode::Incremental).await;
    assert_eq!(run.partitions.recomputed, 0, "{:?}", run.partitions);
    assert_eq!(silver_rows(&lake).await, kept);
    assert_eq!(retained(lake.clone()).await, Some(target));
    h.assert_full_refresh_changes_nothing().await;
    assert_eq!(silver_rows(&lake).await, kept);
    assert_eq!(retained(lake.clone()).await, Some(target));

    // Silver asked to keep fewer days than bronze: bronze's horizon.
    let r = lake_maintain::run(
        &lake,
        &Options {
            silver_retention_days: Some(7),
            ..retain_options()
        },
    )
    .await
    .unwrap();
    let s = r.silver_retention.clone().unwrap();
    assert_eq!(s.horizon, Some(bronze_target), "{s:?}");
    assert!(
        r.summary().contains("(bronze's horizon)"),
        "{}",
        r.summary()
    );
    let kept = dated_from(&silver, bronze_target);
    assert_eq!(silver_rows(&lake).await, kept);
    h.assert_full_refresh_changes_nothing().await;
    assert_eq!(silver_rows(&lake).await, kept);

    // Nothing left to remove: no version.
    let again = lake_maintain::run(&lake, &opts).await.unwrap();
    let s = again.silver_retention.unwrap();
    assert_eq!(s.shards[0].version, None, "{s:?}");
    assert_references_exist(&lake).await;
    h.assert_bronze_equals_postgres().await;
}

/// A new event, dated `$3`, for the execution of PostgreSQL's earliest event
/// (before `$2`): the same key, used again.
const KEY_AGAIN: &str = "INSERT INTO stop_events (event_id, occurred_at, operation_id, client_id, \
     symbol, event_type, execution_token, payload_json, source, retry_count) \
     SELECT $1::text::uuid, $3, operation_id, client_id, symbol, 'FAILED', execution_token, '{}', \
     source, retry_count + 1 FROM stop_events WHERE occurred_at < $2 AND execution_token IS NOT NULL \
     ORDER BY occurred_at LIMIT 1";

/// #17 (found by review): a key used before silver's horizon, again between
/// it and bronze's (a late event of a frozen execution), and again after
/// silver's retention removed its execution's partition. A full refresh
/// reads the two later events from bronze: the incremental run must treat
/// them the same way, so the key's index entry outlives its partition for as
/// long as bronze may hold its events.
#[tokio::test(flavor = "multi_thread")]
async fn a_key_used_again_after_silver_retention_folds_as_a_full_refresh_does() {
    key_used_again_after_silver_retention(Mode::Incremental).await;
}

/// The same when the run that first sees the late event is a full refresh
/// (review): its entry must cover that event too, or silver's retention
/// drops it while bronze holds the event.
#[tokio::test(flavor = "multi_thread")]
async fn a_late_event_first_seen_by_a_full_refresh_keeps_its_key_through_silver_retention() {
    key_used_again_after_silver_retention(Mode::FullRefresh).await;
}

async fn key_used_again_after_silver_retention(first: Mode) {
    const SILVER_KEEP: u32 = 14;
    let h = twenty_days(5).await;
    let lake = h.lake();
    let day = latest_events_entry(&lake).await.snapshot_time.date_naive();
    let silver_target = day - chrono::Days::new(u64::from(SILVER_KEEP));
    let at = |d: NaiveDate| d.and_hms_opt(12, 0, 0).unwrap().and_utc();
    // Bronze keeps 10 days: the execution of the earliest event is frozen.
    lake_maintain::run(&lake, &retain_options()).await.unwrap();
    h.silver(Mode::Incremental).await;

    let client = h.pg.client().await.unwrap();
    let n = client
        .execute(
            KEY_AGAIN,
            &[
                &"00000000-0000-0000-0000-00000000f101",
                &at(silver_target),
                &at(day - chrono::Days::new(5)),
            ],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    h.bronze().await;
    let s = h.silver(first).await;
    assert_eq!(s.work.frozen_executions, 1, "{:?}", s.work);
    // A full refresh that first sees it writes no row (docs/maintenance.md).
    let rows = usize::from(first == Mode::Incremental);
    assert_eq!(late_rows(&lake).await.len(), rows);
    h.assert_full_refresh_changes_nothing().await;

    // Silver's retention removes the execution's partition, and its late row.
    let opts = Options {
        silver_retention_days: Some(SILVER_KEEP),
        ..retain_options()
    };
    let r = lake_maintain::run(&lake, &opts).await.unwrap();
    assert!(r.silver_retention.clone().unwrap().partitions() > 0);
    assert_eq!(late_rows(&lake).await, vec![], "removed with its partition");
    h.silver(Mode::Incremental).await;
    h.assert_full_refresh_changes_nothing().await;

    // The key again, four days ago: late for an execution silver removed.
    let again = |id: &'static str, when: chrono::DateTime<Utc>| {
        let client = &client;
        async move {
            let n = client
                .execute(KEY_AGAIN, &[&id, &at(silver_target), &when])
                .await
                .unwrap();
            assert_eq!(n, 1);
        }
    };
    again(
        "00000000-0000-0000-0000-00000000f102",
        at(day - chrono::Days::new(4)),
    )
    .await;
    h.bronze().await;
    let s = h.silver(Mode::Incremental).await;
    assert_eq!(s.work.frozen_executions, 1, "{:?}", s.work);
    assert_eq!(s.work.frozen_removed, 1, "{:?}", s.work);
    assert_eq!(s.partitions.recomputed, 0, "{:?}", s.partitions);
    assert_eq!(
        late_rows(&lake).await,
        vec![],
        "no partition to hold its row"
    );
    h.assert_full_refresh_changes_nothing().await;

    // Both horizons pass its last event: the entry goes, and the key starts
    // an execution of its own (bronze holds none of its earlier events).
    let keys = index_keys(&lake).await;
    let short = Options {
        bronze_retention_days: Some(3),
        silver_retention_days: Some(3),
        ..retain_options()
    };
    let r = lake_maintain::run(&lake, &short).await.unwrap();
    assert_eq!(
        r.silver_retention.unwrap().horizon,
        Some(day - chrono::Days::new(3))
    );
    assert!(index_keys(&lake).await < keys);
    h.silver(Mode::Incremental).await;
    h.assert_full_refresh_changes_nothing().await;
    again("00000000-0000-0000-0000-00000000f103", Utc::now()).await;
    h.bronze().await;
    let s = h.silver(Mode::Incremental).await;
    assert_eq!(s.work.frozen_executions, 0, "{:?}", s.work);
    assert_eq!(s.partitions.recomputed, 1, "{:?}", s.partitions);
    h.assert_full_refresh_changes_nothing().await;
    assert_references_exist(&lake).await;
}

async fn index_keys(lake: &Lake) -> u64 {
    silver_transform::manifest::find(lake, silver_transform::key::Shard::ALL)
        .await
        .unwrap()
        .committed
        .unwrap()
        .index_keys
}

/// Runs every shard of a `count`-shard layout of silver in `mode`.
async fn silver_shards(h: &Harness, count: u32, mode: Mode) {
    for index in 0..count {
        let opts = silver_transform::Options {
            mode,
            shard: silver_transform::key::Shard { index, count },
            lease: Duration::from_secs(5),
            ..silver_transform::Options::default()
        };
        silver_transform::run(&h.lake(), &opts).await.unwrap();
    }
}

/// #20: after re-sharding silver (a full refresh of every new shard), the old
/// layout's logs, which no run writes any more, neither hold bronze's
/// retention back nor receive silver's: only the layout silver runs counts.
/// After the retention, re-sharding again is refused.
#[tokio::test(flavor = "multi_thread")]
async fn an_old_shard_layout_holds_no_retention_back() {
    let h = twenty_days(5).await;
    // A second file on each closed day, for the compaction below.
    h.batch_ending(1000, 9, SystemTime::now() - 2 * DAY, 20 * DAY)
        .await;
    let lake = h.lake();
    silver_shards(&h, 2, Mode::FullRefresh).await;
    // The closed days compacted: batches the old layout never consumes.
    let compacted = lake_maintain::run(
        &lake,
        &Options {
            compact: true,
            bronze_retention_days: None,
            silver_retention_days: None,
            ..retain_options()
        },
    )
    .await
    .unwrap();
    assert!(!compacted.compaction.unwrap().days.is_empty());
    h.batch(100, 7).await;
    silver_shards(&h, 2, Mode::Incremental).await;

    let target = latest_events_entry(&lake).await.snapshot_time.date_naive()
        - chrono::Days::new(u64::from(KEEP));
    let r = lake_maintain::run(
        &lake,
        &Options {
            silver_retention_days: Some(14),
            ..retain_options()
        },
    )
    .await
    .unwrap();
    let bronze = r.retention.unwrap();
    assert_eq!(bronze.held_by_silver, None, "{bronze:?}");
    assert_eq!(bronze.horizon, Some(target), "{bronze:?}");
    let silver = r.silver_retention.unwrap();
    let shards: Vec<&str> = silver.shards.iter().map(|s| s.shard.as_str()).collect();
    assert_eq!(shards, ["shard-0-of-2", "shard-1-of-2"], "{silver:?}");
    assert!(
        silver.shards.iter().all(|s| s.version.is_some()),
        "{silver:?}"
    );
    silver_shards(&h, 2, Mode::Incremental).await;
    assert_references_exist(&lake).await;

    // Once bronze's days are gone, a new layout cannot be rebuilt: refused,
    // nothing written.
    let data = || async {
        let mut all = objects(&lake).await;
        all.retain(|o| !o.starts_with("_runs/"));
        all
    };
    let before = data().await;
    let opts = silver_transform::Options {
        mode: Mode::FullRefresh,
        shard: silver_transform::key::Shard { index: 0, count: 3 },
        lease: Duration::from_secs(5),
        ..silver_transform::Options::default()
    };
    let err = silver_transform::run(&lake, &opts).await.unwrap_err();
    assert_eq!(
        lake_common::telemetry::exit_status_of(err.as_ref()),
        lake_common::ExitStatus::Usage,
        "{err:#}"
    );
    assert!(
        format!("{err:#}").contains("has no silver state"),
        "{err:#}"
    );
    assert!(data().await == before, "nothing written but the run report");
}

/// The live files of `bronze/outbox`: (date, path, batch).
async fn outbox_files(lake: &Lake) -> BTreeSet<(NaiveDate, String, u64)> {
    BronzeLog::load(lake, Dataset::BronzeOutbox)
        .await
        .unwrap()
        .live_files()
        .into_iter()
        .map(|f| (f.file.date, f.file.path, f.batch))
        .collect()
}

/// `[day, day + 1)` as timestamps, for SQL.
fn day_range(day: NaiveDate) -> [chrono::DateTime<Utc>; 2] {
    let start = day.and_hms_opt(0, 0, 0).unwrap().and_utc();
    [start, start + chrono::Duration::days(1)]
}

/// #20: the outbox's retention removes, of the days before its target, only
/// the files none of whose rows is the latest captured version of a row
/// PostgreSQL holds: a day whose every row was updated since loses its old
/// files (the new versions stay, on the same day), a day the cleanup deleted
/// loses all of them once a checkpoint's row-identity state has seen the
/// deletion, a day nobody touched keeps everything; `--verify` of the outbox
/// agrees with PostgreSQL before and after.
#[tokio::test(flavor = "multi_thread")]
async fn outbox_retention_keeps_every_latest_version() {
    let h = twenty_days(11).await;
    let lake = h.lake();
    let opts = Options {
        bronze_retention_days: None,
        silver_retention_days: None,
        outbox_retention_days: Some(KEEP),
        ..retain_options()
    };
    let r = lake_maintain::run(&lake, &opts).await.unwrap();
    let first = r.outbox_retention.unwrap();
    assert_eq!(first.files, 0, "only latest versions so far: {first:?}");
    let target = first.target.unwrap();
    let files = outbox_files(&lake).await;
    let old_days: BTreeSet<NaiveDate> = files
        .iter()
        .map(|(d, _, _)| *d)
        .filter(|d| *d < target)
        .collect();
    assert!(old_days.len() >= 3, "{old_days:?}");
    let mut old_days = old_days.into_iter();
    let (updated, cleaned) = (old_days.next().unwrap(), old_days.next().unwrap());

    let client = h.pg.client().await.unwrap();
    let [from, to] = day_range(updated);
    let n = client
        .execute(
            "UPDATE outbox SET retry_count = retry_count + 1 WHERE created_at >= $1 AND created_at < $2",
            &[&from, &to],
        )
        .await
        .unwrap();
    assert!(n > 0);
    let [from, to] = day_range(cleaned);
    let n = client
        .execute(
            "DELETE FROM outbox WHERE created_at >= $1 AND created_at < $2",
            &[&from, &to],
        )
        .await
        .unwrap();
    assert!(n > 0);
    h.bronze().await;
    let after_changes = BronzeLog::load(&lake, Dataset::BronzeOutbox)
        .await
        .unwrap()
        .latest_entry()
        .unwrap()
        .manifest
        .batch;
    // Until a checkpoint's state has seen the deletion, its rows count as held.
    let dry = Options {
        dry_run: true,
        ..opts.clone()
    };
    let planned = lake_maintain::run(&lake, &dry)
        .await
        .unwrap()
        .outbox_retention
        .unwrap();
    let expected_updated: BTreeSet<String> = files
        .iter()
        .filter(|(d, _, _)| *d == updated)
        .map(|(_, p, _)| p.clone())
        .collect();
    assert_eq!(planned.files, expected_updated.len() as u64, "{planned:?}");
    for seed in 0..12 {
        let state = BronzeLog::load(&lake, Dataset::BronzeOutbox)
            .await
            .unwrap()
            .identity_state()
            .map(|s| s.batch);
        if state.is_some_and(|b| b >= after_changes) {
            break;
        }
        h.batch(5, 100 + seed).await;
    }

    let r = lake_maintain::run(&lake, &opts).await.unwrap();
    let done = r.outbox_retention.clone().unwrap();
    let expected: BTreeSet<String> = files
        .iter()
        .filter(|(d, _, _)| *d == updated || *d == cleaned)
        .map(|(_, p, _)| p.clone())
        .collect();
    assert_eq!(done.files, expected.len() as u64, "{done:?}");
    assert_eq!(done.days, 2, "{done:?}");
    assert!(done.batch.is_some(), "{done:?}");
    assert!(r.summary().contains("bronze/outbox"), "{}", r.summary());
    let live = outbox_files(&lake).await;
    for (d, p, _) in &files {
        assert_eq!(
            live.iter().any(|(_, q, _)| q == p),
            !expected.contains(p),
            "{d} {p}"
        );
    }
    for p in &expected {
        assert!(
            lake.get_bytes(&Path::from(p.as_str())).await.is_err(),
            "{p} deleted"
        );
    }
    assert!(
        live.iter()
            .any(|(d, _, b)| *d == updated && *b > files.iter().map(|f| f.2).max().unwrap()),
        "the updated day keeps its new versions"
    );
    // Every row PostgreSQL holds is in bronze in its current version.
    h.assert_both_datasets_equal_postgres().await;
    // A second run has nothing left to remove.
    let again = lake_maintain::run(&lake, &opts)
        .await
        .unwrap()
        .outbox_retention
        .unwrap();
    assert_eq!(again.files, 0, "{again:?}");
    assert_references_exist(&lake).await;
}

/// A row-identity state whose digests another build computed (an earlier
/// release's: Rust's `DefaultHasher` over arrow's row format, neither stable
/// across toolchains) is not compared with. Trusted, it would make the
/// outbox's retention find no file holding a latest version, and remove
/// every old one.
#[tokio::test(flavor = "multi_thread")]
async fn outbox_retention_does_not_trust_a_state_of_another_digest() {
    use arrow::array::{Array, ArrayRef, AsArray, FixedSizeBinaryArray, RecordBatch};
    let h = twenty_days(13).await;
    let lake = h.lake();
    for seed in 0..12 {
        let log = BronzeLog::load(&lake, Dataset::BronzeOutbox).await.unwrap();
        if log.identity_state().is_some() {
            break;
        }
        h.batch(5, 300 + seed).await;
    }
    let log = BronzeLog::load(&lake, Dataset::BronzeOutbox).await.unwrap();
    let state = log.identity_state().expect("bronze wrote a state").clone();

    // The state's digests as another hash gives them, and its checkpoint
    // naming no digest, as an earlier release wrote it.
    let path = Path::from(state.path.as_str());
    let batches = lake_common::parquet_io::read_all(&lake, &path)
        .await
        .unwrap();
    let schema = batches[0].schema();
    let mut writer =
        lake_common::parquet_io::FileWriter::create(&lake, path.clone(), schema.clone()).unwrap();
    for b in &batches {
        let at = schema.index_of("contract_digest").unwrap();
        let digests = b.column(at).as_fixed_size_binary();
        let other: ArrayRef = Arc::new(
            FixedSizeBinaryArray::try_from_iter(
                (0..digests.len()).map(|i| digests.value(i).iter().map(|x| !x).collect::<Vec<_>>()),
            )
            .unwrap(),
        );
        let mut columns = b.columns().to_vec();
        columns[at] = other;
        writer
            .write(&RecordBatch::try_new(schema.clone(), columns).unwrap())
            .await
            .unwrap();
    }
    writer.finish().await.unwrap();
    let cp_path = Dataset::BronzeOutbox.checkpoint(log.checkpoint_batch().unwrap());
    let mut cp: serde_json::Value =
        serde_json::from_slice(&lake.get_bytes(&cp_path).await.unwrap()).unwrap();
    let cp_fields = cp.as_object_mut().unwrap();
    let mut legacy = cp_fields
        .remove("row_identity")
        .or_else(|| cp_fields.remove("identity_state"))
        .unwrap();
    legacy.as_object_mut().unwrap().remove("digest");
    cp_fields.insert("identity_state".into(), legacy);
    lake.put(&cp_path, serde_json::to_vec(&cp).unwrap().into())
        .await
        .unwrap();

    let files = outbox_files(&lake).await;
    let opts = Options {
        bronze_retention_days: None,
        silver_retention_days: None,
        outbox_retention_days: Some(KEEP),
        ..retain_options()
    };
    let r = lake_maintain::run(&lake, &opts)
        .await
        .unwrap()
        .outbox_retention
        .unwrap();
    assert!(
        r.target.is_some_and(|t| files.iter().any(|f| f.0 < t)),
        "{r:?}"
    );
    assert_eq!(r.files, 0, "every file holds a latest version: {r:?}");
    assert_eq!(outbox_files(&lake).await, files);
    h.assert_both_datasets_equal_postgres().await;
}
