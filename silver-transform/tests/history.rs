//! #17: what an incremental silver run asks of the store does not grow with
//! bronze's age. Bronze batches are committed as bronze-ingest commits them
//! (with its checkpoints) and silver runs after each; the requests of a run
//! that folds one new batch and of a no-op run are counted through the fault
//! proxy at two ages that sit at the same place between checkpoints.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod support;

use chrono::{Duration, NaiveDate};
use lake_common::manifest::CHECKPOINT_INTERVAL;
use lake_testkit::{FaultProxy, LoggedRequest, S3Op};
use object_store::ObjectStoreExt;
use silver_transform::report::Outcome;
use silver_transform::{Mode, Options};
use support::*;

/// Five executions on a day of their own per batch, so the data each run reads
/// is the same size whatever the age.
fn events_of(batch: u64) -> Vec<Ev> {
    let day = NaiveDate::from_ymd_opt(2025, 1, 1).unwrap() + Duration::days(batch as i64);
    (0..5)
        .map(|i| {
            let n = batch * 10 + i;
            Ev::new(
                n,
                &format!("{day}T06:00:00Z"),
                Some(&format!("tok-{n}")),
                "STOP_TRIGGERED",
            )
            .client(1)
            .qty("1")
        })
        .collect()
}

/// Requests other than data files, and the bytes their listings returned.
fn cost(log: &[LoggedRequest]) -> (usize, u64) {
    let log: Vec<&LoggedRequest> = log
        .iter()
        .filter(|r| !r.path.contains("/date=") && !r.path.contains("/client_id="))
        .collect();
    let listed = log
        .iter()
        .filter(|r| r.op == S3Op::ListObjects)
        .map(|r| r.response_bytes)
        .sum();
    (log.len(), listed)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_incremental_runs_requests_do_not_grow_with_bronzes_age() {
    let t = TestLake::new().await;
    let proxy = FaultProxy::start(&t.s3, 13).unwrap();
    let endpoint = proxy.endpoint();
    let env = [("AWS_ENDPOINT", endpoint.as_str())];
    let young = CHECKPOINT_INTERVAL + 2;
    let old = 3 * CHECKPOINT_INTERVAL + 2;
    let mut measured = vec![];
    for batch in 1..=old {
        commit_batch(&t.lake, batch, &events_of(batch)).await;
        // Silver runs after every batch (its log is past the versions it
        // keeps at both ages); the measured runs go through the proxy.
        if batch != young && batch != old {
            run(&t.lake, &incremental()).await;
        } else {
            proxy.clear_log();
            let out = t.run_bin(&[], &env);
            assert_eq!(out.status.code(), Some(0), "{}", proxy.log_text());
            let work = cost(&proxy.log());
            eprintln!("after {batch} batches, one new:\n{}", proxy.log_text());
            proxy.clear_log();
            let out = t.run_bin(&[], &env);
            assert_eq!(out.status.code(), Some(0));
            let noop = cost(&proxy.log());
            eprintln!("after {batch} batches, nothing new:\n{}", proxy.log_text());
            measured.push((work, noop));
        }
    }
    let ((young_work, young_noop), (old_work, old_noop)) = (measured[0], measured[1]);
    assert_eq!(old_work.0, young_work.0, "requests of a one-batch run");
    assert_eq!(old_noop.0, young_noop.0, "requests of a no-op run");
    // Silver keeps its last few versions only, bronze is listed after its
    // checkpoint: the listings return as much at both ages (give or take a
    // digit of an object size).
    assert!(
        old_work.1 <= young_work.1 + 128,
        "{young_work:?} -> {old_work:?}"
    );
    assert!(
        old_noop.1 <= young_noop.1 + 128,
        "{young_noop:?} -> {old_noop:?}"
    );
    // And the result is the whole of bronze.
    assert_eq!(silver(&t.lake).await.len(), 5 * old as usize);
}

/// #17: the key index and the partition table are kept by month; a run reads
/// only the months it touches — the month of a new execution, the month of an
/// old execution that got a late event — and rewrites only those, carrying the
/// others as they are; a run with nothing new reads none. Its result equals a
/// full recompute.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_reads_and_rewrites_only_the_months_it_touches() {
    use silver_transform::key::Shard;
    use silver_transform::manifest;
    let t = TestLake::new().await;
    let ev = |n: u64, at: &str| {
        Ev::new(n, at, Some(&format!("tok-{n}")), "STOP_TRIGGERED")
            .client(1)
            .qty("1")
    };
    // Four months, one batch each.
    for (batch, month) in (1..=4).zip(["01", "02", "03", "04"]) {
        commit_batch(
            &t.lake,
            batch,
            &[ev(batch, &format!("2025-{month}-10T06:00:00Z"))],
        )
        .await;
        run(&t.lake, &incremental()).await;
    }
    let segments = |m: &manifest::SilverManifest| -> Vec<(String, String)> {
        m.index_segments
            .iter()
            .map(|s| (s.month.clone(), s.file.path.clone()))
            .collect()
    };
    let tables = |m: &manifest::SilverManifest| -> Vec<(String, String)> {
        m.partition_months
            .iter()
            .map(|s| (s.month.clone(), s.file.path.clone()))
            .collect()
    };
    let before = manifest::find(&t.lake, Shard::ALL)
        .await
        .unwrap()
        .committed
        .unwrap();
    assert_eq!(before.index_segments.len(), 4);
    assert_eq!(before.partition_months.len(), 4);
    assert!(before.partitions.is_empty(), "no inline partition table");

    // Nothing new: no month of either is read.
    let r = run(&t.lake, &incremental()).await;
    assert_eq!(r.outcome, Outcome::NothingNew);
    assert_eq!(
        (r.work.index_segments_read, r.work.partition_months_read),
        (0, 0)
    );

    // A new execution in April: April's segment only.
    commit_batch(&t.lake, 5, &[ev(5, "2025-04-20T06:00:00Z")]).await;
    let r = run(&t.lake, &incremental()).await;
    assert_eq!(r.work.index_segments_read, 1, "{:?}", r.work);
    assert_eq!(r.work.partition_months_read, 1, "{:?}", r.work);
    assert_eq!(r.partitions.total, 5);
    let after = manifest::find(&t.lake, Shard::ALL)
        .await
        .unwrap()
        .committed
        .unwrap();
    let (old, new) = (segments(&before), segments(&after));
    assert_eq!(old[..3], new[..3], "January to March carried as they were");
    assert_ne!(old[3], new[3], "April rewritten");
    assert_eq!(after.index_segments[3].keys, 2);
    let (old_t, new_t) = (tables(&before), tables(&after));
    assert_eq!(
        old_t[..3],
        new_t[..3],
        "January to March carried as they were"
    );
    assert_ne!(old_t[3], new_t[3], "April rewritten");
    assert_eq!(after.partition_months[3].file.rows, 2);

    // A late event of January's execution (token tok-1): January's segment
    // (its Bloom filter) and nothing else.
    commit_batch(
        &t.lake,
        6,
        &[
            Ev::new(6, "2025-04-21T06:00:00Z", Some("tok-1"), "EXECUTED")
                .client(1)
                .qty("1")
                .fill("100"),
        ],
    )
    .await;
    let r = run(&t.lake, &incremental()).await;
    assert_eq!(r.work.index_segments_read, 1, "{:?}", r.work);
    assert_eq!(r.work.partition_months_read, 1, "{:?}", r.work);
    let later = manifest::find(&t.lake, Shard::ALL)
        .await
        .unwrap()
        .committed
        .unwrap();
    let latest = segments(&later);
    assert_ne!(new[0], latest[0], "January rewritten");
    assert_eq!(new[1..], latest[1..]);
    let latest_t = tables(&later);
    assert_ne!(new_t[0], latest_t[0], "January's partition rewritten");
    assert_eq!(new_t[1..], latest_t[1..]);
    assert_eq!(
        later.index_segments[0].last_date,
        NaiveDate::from_ymd_opt(2025, 4, 21).unwrap(),
        "January's execution now ends in April"
    );
    // The replaced segments and partition months are gone.
    let replaced = old
        .iter()
        .chain(&new)
        .filter(|s| !latest.contains(s))
        .chain(old_t.iter().chain(&new_t).filter(|s| !latest_t.contains(s)));
    for (_, path) in replaced {
        assert!(
            t.lake
                .get_bytes(&object_store::path::Path::from(path.as_str()))
                .await
                .is_err(),
            "{path} was replaced and should be deleted"
        );
    }

    let incremental_result = silver(&t.lake).await;
    run(&t.lake, &full_refresh()).await;
    assert_eq!(
        silver(&t.lake).await,
        incremental_result,
        "incremental == full recompute"
    );
    let rebuilt = manifest::find(&t.lake, Shard::ALL)
        .await
        .unwrap()
        .committed
        .unwrap();
    assert_eq!(rebuilt.index_segments.len(), 4);
    assert_eq!(rebuilt.index_keys, 5);
    assert_eq!(rebuilt.partition_months.len(), 4);
    assert_eq!(silver_transform::partitions::totals(&rebuilt).partitions, 5);

    // A re-run of March reads March's months only.
    let day = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
    let march = Options {
        mode: Mode::Days {
            from: day("2025-03-01"),
            to: day("2025-03-31"),
        },
        ..incremental()
    };
    let r = run(&t.lake, &march).await;
    assert_eq!(
        (r.work.index_segments_read, r.work.partition_months_read),
        (1, 1),
        "{:?}",
        r.work
    );
    assert_eq!(r.partitions.recomputed, 1);
    assert_eq!(silver(&t.lake).await, incremental_result);
}

/// #17, reads proportional to the work: an execution key used again months
/// later (an `operation:<id>` key, as Django's NULL token gives) is folded from
/// the days that hold its events, not from every day between its first and its
/// last. Before, every run that touched it read the whole span of bronze.
#[tokio::test(flavor = "multi_thread")]
async fn a_key_used_again_months_later_folds_from_its_days_not_its_span() {
    let t = TestLake::new().await;
    let start = NaiveDate::from_ymd_opt(2025, 1, 10).unwrap();
    let at = |day: i64| format!("{}T06:00:00Z", start + Duration::days(day));
    // Other executions on every fifth day of the half year between: bronze
    // holds files on 37 days.
    let mut events: Vec<Ev> = (0..37)
        .map(|i| {
            Ev::new(
                100 + i,
                &at(5 * i as i64),
                Some(&format!("tok-{i}")),
                "STOP_TRIGGERED",
            )
            .client(1)
            .qty("1")
        })
        .collect();
    // Operation 7 (no token) triggers on day 0 and again on day 180.
    events.push(
        Ev::new(1, &at(0), None, "STOP_TRIGGERED")
            .op(7)
            .client(1)
            .qty("1"),
    );
    events.push(
        Ev::new(2, &at(180), None, "EXECUTED")
            .op(7)
            .client(1)
            .fill("10"),
    );
    commit_batch(&t.lake, 1, &events).await;
    run(&t.lake, &incremental()).await;

    // A late event of operation 7 on day 181.
    commit_batch(
        &t.lake,
        2,
        &[Ev::new(3, &at(181), None, "FAILED")
            .op(7)
            .client(1)
            .error("late")],
    )
    .await;
    let r = run(&t.lake, &incremental()).await;
    // Its partition (day 0) holds one other execution (tok-0, day 0 only):
    // days 0, 180 and 181.
    assert_eq!(r.work.days_read, 3, "{:?}", r.work);

    let incremental_result = silver(&t.lake).await;
    run(&t.lake, &full_refresh()).await;
    assert_eq!(
        silver(&t.lake).await,
        incremental_result,
        "incremental == full recompute"
    );
    // The rebuilt index knows the same days: the next touch reads 3 days again.
    commit_batch(
        &t.lake,
        3,
        &[Ev::new(4, &at(181), None, "BLOCKED").op(7).client(1)],
    )
    .await;
    let r = run(&t.lake, &incremental()).await;
    assert_eq!(r.work.days_read, 3, "{:?}", r.work);
}

/// #17: the manifest every run reads does not grow with the keys of the
/// index. The segments' Bloom filters (~1.2 bytes a key) were inline in it:
/// 3 MiB after three years, read and parsed by every run, a no-op one
/// included. They live in one object per version now, which only a run that
/// looks keys up reads.
#[tokio::test(flavor = "multi_thread")]
async fn the_manifest_does_not_grow_with_the_keys_of_the_index() {
    use silver_transform::key::Shard;
    use silver_transform::manifest;
    let t = TestLake::new().await;
    let ev = |n: u64, at: &str| {
        Ev::new(n, at, Some(&format!("tok-{n}")), "STOP_TRIGGERED")
            .client(1)
            .qty("1")
    };
    let size = |m: &manifest::SilverManifest| serde_json::to_vec(m).unwrap().len();
    commit_batch(&t.lake, 1, &[ev(1, "2025-01-10T06:00:00Z")]).await;
    run(&t.lake, &incremental()).await;
    let committed = || async {
        manifest::find(&t.lake, Shard::ALL)
            .await
            .unwrap()
            .committed
            .unwrap()
    };
    let small = size(&committed().await);
    // 20 000 executions in February.
    let feb: Vec<Ev> = (0..20_000u64)
        .map(|n| {
            ev(
                100 + n,
                &format!("2025-02-10T{:02}:{:02}:00Z", n / 60 % 24, n % 60),
            )
        })
        .collect();
    commit_batch(&t.lake, 2, &feb).await;
    run(&t.lake, &incremental()).await;
    let m = committed().await;
    assert_eq!(m.index_keys, 20_001);
    let large = size(&m);
    assert!(
        large < small + 2_000,
        "one more segment record, not its keys' filter: {small} -> {large} bytes"
    );
    // Lookups still find old keys (a late event of January's execution),
    // even with the filter pack lost: its segments count as "maybe".
    let pack = m.bloom_pack.clone().expect("a filter pack");
    t.lake
        .store()
        .delete(&object_store::path::Path::from(pack.path.as_str()))
        .await
        .unwrap();
    commit_batch(
        &t.lake,
        3,
        &[
            Ev::new(3, "2025-02-11T06:00:00Z", Some("tok-1"), "EXECUTED")
                .client(1)
                .qty("1")
                .fill("1"),
        ],
    )
    .await;
    let r = run(&t.lake, &incremental()).await;
    assert_eq!(r.partitions.recomputed, 1, "{:?}", r.work);
    assert_eq!(
        r.work.index_segments_read, 2,
        "both months, the pack lost: {:?}",
        r.work
    );
    let healed = committed().await.bloom_pack.expect("a new filter pack");
    assert_ne!(healed.path, pack.path);
    let incremental_result = silver(&t.lake).await;
    run(&t.lake, &full_refresh()).await;
    assert_eq!(silver(&t.lake).await, incremental_result);
}
