//! Golden cases written by hand, one per rule of SPEC §6, on a real S3 endpoint:
//! bronze batches in, silver rows out, compared field by field.
// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;

use silver_transform::key::Shard;
use silver_transform::manifest;
use silver_transform::report::Outcome;
use support::*;

const D1: &str = "2025-06-01";

fn base(client: i64, date: &str, key: &str, id: u64, op: i64) -> SilverRow {
    SilverRow {
        client_id: client,
        date: date.into(),
        execution_id: uuid(id),
        execution_key: key.into(),
        operation_id: op,
        symbol: "BTCUSDC".into(),
        side: None,
        status: String::new(),
        triggered_at: None,
        submitted_at: None,
        executed_at: None,
        failed_at: None,
        blocked_at: None,
        stop_price: None,
        trigger_price: None,
        quantity: None,
        exchange_order_id: None,
        fill_price: None,
        slippage_pct: None,
        source: "ws".into(),
        error_message: None,
        retry_count: 0,
        event_count: 0,
        first_event_at: 0,
        last_event_at: 0,
        last_event_id: String::new(),
        violation: None,
    }
}

fn batch1() -> Vec<Ev> {
    let ties = "2025-06-01T11:00:00.000001Z";
    vec![
        // A. NULL token → operation key; other event types are ignored.
        Ev::new(0x101, "2025-06-01T10:00:00Z", None, "STOP_TRIGGERED")
            .op(500)
            .side("SELL")
            .stop("100.5")
            .trigger("101")
            .qty("0.25"),
        Ev::new(0x102, "2025-06-01T10:00:01Z", None, "EXECUTED")
            .op(500)
            .fill("100.4")
            .slip("-0.0995")
            .exch("EX-1"),
        Ev::new(0x103, "2025-06-01T10:00:02Z", None, "SLIPPAGE_BREACH").op(500),
        // B. Ties on occurred_at: event_seq NULLS LAST, then event_id.
        Ev::new(0x201, ties, Some("tok-ties"), "EXECUTION_SUBMITTED")
            .op(510)
            .client(2)
            .stop("2"),
        Ev::new(0x202, ties, Some("tok-ties"), "FAILED")
            .op(510)
            .client(2)
            .error("rejected")
            .source("cron"),
        Ev::new(0x205, ties, Some("tok-ties"), "STOP_TRIGGERED")
            .op(510)
            .client(2)
            .seq(7)
            .stop("1")
            .side("SELL"),
        Ev::new(0x209, ties, Some("tok-ties"), "STOP_TRIGGERED")
            .op(510)
            .client(2)
            .seq(3)
            .qty("5")
            .side("BUY"),
        // C. An execution crossing midnight stays in its first day's partition.
        Ev::new(
            0x301,
            "2025-06-01T23:59:59.900000Z",
            Some("tok-midnight"),
            "STOP_TRIGGERED",
        )
        .op(520)
        .trigger("65000.5")
        .stop("64999.99999999")
        .qty("0.00000001"),
        Ev::new(
            0x302,
            "2025-06-02T00:00:00.100000Z",
            Some("tok-midnight"),
            "EXECUTION_SUBMITTED",
        )
        .op(520),
        Ev::new(
            0x303,
            "2025-06-02T00:00:01.000001Z",
            Some("tok-midnight"),
            "EXECUTED",
        )
        .op(520)
        .fill("64999.12345678")
        .slip("0.0001")
        .exch("EX-3")
        .source("cron"),
        Ev::new(
            0x304,
            "2025-06-02T00:00:02Z",
            Some("tok-midnight"),
            "SLIPPAGE_BREACH",
        )
        .op(520),
        // D. Spread over two bronze batches (first half).
        Ev::new(
            0x401,
            "2025-06-01T12:00:00Z",
            Some("tok-two-batches"),
            "STOP_TRIGGERED",
        )
        .op(530)
        .client(3)
        .qty("1.5"),
        Ev::new(
            0x402,
            "2025-06-01T12:00:01Z",
            Some("tok-two-batches"),
            "EXECUTION_SUBMITTED",
        )
        .op(530)
        .client(3)
        .retry(1),
        // E. FAILED now, EXECUTED arrives in the next batch.
        Ev::new(
            0x501,
            "2025-06-01T13:00:00Z",
            Some("tok-late"),
            "STOP_TRIGGERED",
        )
        .op(540)
        .client(3),
        Ev::new(0x502, "2025-06-01T13:00:02Z", Some("tok-late"), "FAILED")
            .op(540)
            .client(3)
            .error("timeout")
            .retry(2),
        Ev::new(
            0x511,
            "2025-06-01T14:00:00Z",
            Some("tok-late-before"),
            "STOP_TRIGGERED",
        )
        .op(541)
        .client(3),
        Ev::new(
            0x512,
            "2025-06-01T14:00:03Z",
            Some("tok-late-before"),
            "FAILED",
        )
        .op(541)
        .client(3)
        .error("no liquidity"),
        // F. Several executions of one operation.
        Ev::new(
            0x601,
            "2025-06-01T15:00:00Z",
            Some("tok-f1"),
            "STOP_TRIGGERED",
        )
        .op(900)
        .client(4),
        Ev::new(0x602, "2025-06-01T15:00:01Z", Some("tok-f1"), "BLOCKED")
            .op(900)
            .client(4)
            .error("kill switch"),
        Ev::new(
            0x603,
            "2025-06-01T15:05:00Z",
            Some("tok-f2"),
            "STOP_TRIGGERED",
        )
        .op(900)
        .client(4),
        Ev::new(0x604, "2025-06-01T15:05:01Z", Some("tok-f2"), "EXECUTED")
            .op(900)
            .client(4)
            .fill("2")
            .slip("0"),
        Ev::new(0x605, "2025-06-01T15:10:00Z", None, "STOP_TRIGGERED")
            .op(900)
            .client(4),
        Ev::new(0x606, "2025-06-01T15:10:01Z", None, "FAILED")
            .op(900)
            .client(4)
            .error("x"),
        // G. Its first known event is after midnight (for now).
        Ev::new(
            0x701,
            "2025-06-02T00:00:00.500000Z",
            Some("tok-move"),
            "EXECUTION_SUBMITTED",
        )
        .op(550)
        .client(5)
        .symbol("ETHUSDC")
        .side("BUY"),
    ]
}

fn batch2() -> Vec<Ev> {
    vec![
        Ev::new(
            0x403,
            "2025-06-01T12:00:02Z",
            Some("tok-two-batches"),
            "EXECUTED",
        )
        .op(530)
        .client(3)
        .fill("3000")
        .slip("0.25")
        .exch("EX-4"),
        Ev::new(0x503, "2025-06-01T13:00:05Z", Some("tok-late"), "EXECUTED")
            .op(540)
            .client(3)
            .fill("10")
            .slip("0.5")
            .exch("EX-5"),
        // Committed late but it happened before the FAILED event.
        Ev::new(
            0x513,
            "2025-06-01T14:00:01Z",
            Some("tok-late-before"),
            "EXECUTED",
        )
        .op(541)
        .client(3)
        .fill("11")
        .exch("EX-51"),
        // An earlier event moves tok-move into the previous day's partition.
        Ev::new(
            0x700,
            "2025-06-01T23:59:59Z",
            Some("tok-move"),
            "STOP_TRIGGERED",
        )
        .op(550)
        .client(5)
        .symbol("ETHUSDC")
        .side("SELL"),
    ]
}

fn common_rows() -> Vec<SilverRow> {
    let ties = ts("2025-06-01T11:00:00.000001Z");
    let t = ts;
    vec![
        SilverRow {
            side: Some("SELL".into()),
            status: "EXECUTED".into(),
            triggered_at: Some(t("2025-06-01T10:00:00Z")),
            executed_at: Some(t("2025-06-01T10:00:01Z")),
            stop_price: Some(dec("100.5", 8)),
            trigger_price: Some(dec("101", 8)),
            quantity: Some(dec("0.25", 8)),
            exchange_order_id: Some("EX-1".into()),
            fill_price: Some(dec("100.4", 8)),
            slippage_pct: Some(dec("-0.0995", 4)),
            event_count: 2,
            first_event_at: t("2025-06-01T10:00:00Z"),
            last_event_at: t("2025-06-01T10:00:01Z"),
            last_event_id: uuid(0x102),
            ..base(1, D1, "operation:500", 0x101, 500)
        },
        SilverRow {
            side: Some("BUY".into()),
            status: "FAILED".into(),
            triggered_at: Some(ties),
            submitted_at: Some(ties),
            failed_at: Some(ties),
            stop_price: Some(dec("2", 8)),
            quantity: Some(dec("5", 8)),
            source: "cron".into(),
            error_message: Some("rejected".into()),
            event_count: 4,
            first_event_at: ties,
            last_event_at: ties,
            last_event_id: uuid(0x202),
            ..base(2, D1, "tok-ties", 0x209, 510)
        },
        SilverRow {
            status: "EXECUTED".into(),
            triggered_at: Some(t("2025-06-01T23:59:59.9Z")),
            submitted_at: Some(t("2025-06-02T00:00:00.1Z")),
            executed_at: Some(t("2025-06-02T00:00:01.000001Z")),
            stop_price: Some(dec("64999.99999999", 8)),
            trigger_price: Some(dec("65000.5", 8)),
            quantity: Some(dec("0.00000001", 8)),
            exchange_order_id: Some("EX-3".into()),
            fill_price: Some(dec("64999.12345678", 8)),
            slippage_pct: Some(dec("0.0001", 4)),
            source: "cron".into(),
            event_count: 3,
            first_event_at: t("2025-06-01T23:59:59.9Z"),
            last_event_at: t("2025-06-02T00:00:01.000001Z"),
            last_event_id: uuid(0x303),
            ..base(1, D1, "tok-midnight", 0x301, 520)
        },
        SilverRow {
            status: "BLOCKED".into(),
            triggered_at: Some(t("2025-06-01T15:00:00Z")),
            blocked_at: Some(t("2025-06-01T15:00:01Z")),
            error_message: Some("kill switch".into()),
            event_count: 2,
            first_event_at: t("2025-06-01T15:00:00Z"),
            last_event_at: t("2025-06-01T15:00:01Z"),
            last_event_id: uuid(0x602),
            ..base(4, D1, "tok-f1", 0x601, 900)
        },
        SilverRow {
            status: "EXECUTED".into(),
            triggered_at: Some(t("2025-06-01T15:05:00Z")),
            executed_at: Some(t("2025-06-01T15:05:01Z")),
            fill_price: Some(dec("2", 8)),
            slippage_pct: Some(0),
            event_count: 2,
            first_event_at: t("2025-06-01T15:05:00Z"),
            last_event_at: t("2025-06-01T15:05:01Z"),
            last_event_id: uuid(0x604),
            ..base(4, D1, "tok-f2", 0x603, 900)
        },
        SilverRow {
            status: "FAILED".into(),
            triggered_at: Some(t("2025-06-01T15:10:00Z")),
            failed_at: Some(t("2025-06-01T15:10:01Z")),
            error_message: Some("x".into()),
            event_count: 2,
            first_event_at: t("2025-06-01T15:10:00Z"),
            last_event_at: t("2025-06-01T15:10:01Z"),
            last_event_id: uuid(0x606),
            ..base(4, D1, "operation:900", 0x605, 900)
        },
    ]
}

fn expected_after_batch1() -> BTreeMap<String, SilverRow> {
    let t = ts;
    let mut rows = common_rows();
    rows.extend([
        SilverRow {
            status: "SUBMITTED".into(),
            triggered_at: Some(t("2025-06-01T12:00:00Z")),
            submitted_at: Some(t("2025-06-01T12:00:01Z")),
            quantity: Some(dec("1.5", 8)),
            retry_count: 1,
            event_count: 2,
            first_event_at: t("2025-06-01T12:00:00Z"),
            last_event_at: t("2025-06-01T12:00:01Z"),
            last_event_id: uuid(0x402),
            ..base(3, D1, "tok-two-batches", 0x401, 530)
        },
        SilverRow {
            status: "FAILED".into(),
            triggered_at: Some(t("2025-06-01T13:00:00Z")),
            failed_at: Some(t("2025-06-01T13:00:02Z")),
            error_message: Some("timeout".into()),
            retry_count: 2,
            event_count: 2,
            first_event_at: t("2025-06-01T13:00:00Z"),
            last_event_at: t("2025-06-01T13:00:02Z"),
            last_event_id: uuid(0x502),
            ..base(3, D1, "tok-late", 0x501, 540)
        },
        SilverRow {
            status: "FAILED".into(),
            triggered_at: Some(t("2025-06-01T14:00:00Z")),
            failed_at: Some(t("2025-06-01T14:00:03Z")),
            error_message: Some("no liquidity".into()),
            event_count: 2,
            first_event_at: t("2025-06-01T14:00:00Z"),
            last_event_at: t("2025-06-01T14:00:03Z"),
            last_event_id: uuid(0x512),
            ..base(3, D1, "tok-late-before", 0x511, 541)
        },
        SilverRow {
            symbol: "ETHUSDC".into(),
            side: Some("BUY".into()),
            status: "SUBMITTED".into(),
            submitted_at: Some(t("2025-06-02T00:00:00.5Z")),
            event_count: 1,
            first_event_at: t("2025-06-02T00:00:00.5Z"),
            last_event_at: t("2025-06-02T00:00:00.5Z"),
            last_event_id: uuid(0x701),
            ..base(5, "2025-06-02", "tok-move", 0x701, 550)
        },
    ]);
    rows.into_iter()
        .map(|r| (r.execution_key.clone(), r))
        .collect()
}

fn expected_after_batch2() -> BTreeMap<String, SilverRow> {
    let t = ts;
    let mut rows = common_rows();
    rows.extend([
        SilverRow {
            status: "EXECUTED".into(),
            triggered_at: Some(t("2025-06-01T12:00:00Z")),
            submitted_at: Some(t("2025-06-01T12:00:01Z")),
            executed_at: Some(t("2025-06-01T12:00:02Z")),
            quantity: Some(dec("1.5", 8)),
            exchange_order_id: Some("EX-4".into()),
            fill_price: Some(dec("3000", 8)),
            slippage_pct: Some(dec("0.25", 4)),
            retry_count: 1,
            event_count: 3,
            first_event_at: t("2025-06-01T12:00:00Z"),
            last_event_at: t("2025-06-01T12:00:02Z"),
            last_event_id: uuid(0x403),
            ..base(3, D1, "tok-two-batches", 0x401, 530)
        },
        SilverRow {
            status: "EXECUTED".into(),
            triggered_at: Some(t("2025-06-01T13:00:00Z")),
            failed_at: Some(t("2025-06-01T13:00:02Z")),
            executed_at: Some(t("2025-06-01T13:00:05Z")),
            exchange_order_id: Some("EX-5".into()),
            fill_price: Some(dec("10", 8)),
            slippage_pct: Some(dec("0.5", 4)),
            error_message: Some("timeout".into()),
            retry_count: 2,
            event_count: 3,
            first_event_at: t("2025-06-01T13:00:00Z"),
            last_event_at: t("2025-06-01T13:00:05Z"),
            last_event_id: uuid(0x503),
            ..base(3, D1, "tok-late", 0x501, 540)
        },
        SilverRow {
            status: "FAILED".into(),
            triggered_at: Some(t("2025-06-01T14:00:00Z")),
            executed_at: Some(t("2025-06-01T14:00:01Z")),
            failed_at: Some(t("2025-06-01T14:00:03Z")),
            exchange_order_id: Some("EX-51".into()),
            fill_price: Some(dec("11", 8)),
            error_message: Some("no liquidity".into()),
            event_count: 3,
            first_event_at: t("2025-06-01T14:00:00Z"),
            last_event_at: t("2025-06-01T14:00:03Z"),
            last_event_id: uuid(0x512),
            ..base(3, D1, "tok-late-before", 0x511, 541)
        },
        SilverRow {
            symbol: "ETHUSDC".into(),
            side: Some("SELL".into()),
            status: "SUBMITTED".into(),
            triggered_at: Some(t("2025-06-01T23:59:59Z")),
            submitted_at: Some(t("2025-06-02T00:00:00.5Z")),
            event_count: 2,
            first_event_at: t("2025-06-01T23:59:59Z"),
            last_event_at: t("2025-06-02T00:00:00.5Z"),
            last_event_id: uuid(0x701),
            ..base(5, D1, "tok-move", 0x700, 550)
        },
    ]);
    rows.into_iter()
        .map(|r| (r.execution_key.clone(), r))
        .collect()
}

fn assert_rows(actual: &BTreeMap<String, SilverRow>, expected: &BTreeMap<String, SilverRow>) {
    for (k, e) in expected {
        match actual.get(k) {
            Some(a) => assert_eq!(a, e, "execution {k}"),
            None => panic!("execution {k} is missing"),
        }
    }
    let extra: Vec<_> = actual
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .collect();
    assert!(extra.is_empty(), "unexpected executions {extra:?}");
}

#[tokio::test]
async fn golden_cases_incrementally_and_in_full() {
    let t = TestLake::new().await;
    let lake = &t.lake;

    commit_batch(lake, 1, &batch1()).await;
    let r1 = run(lake, &incremental()).await;
    assert_eq!(r1.outcome, Outcome::Success);
    assert_eq!(r1.committed_version, Some(1));
    assert_rows(&silver(lake).await, &expected_after_batch1());
    assert!(quarantine(lake).await.is_empty());

    // A pending bronze batch is invisible to silver.
    pending_batch(
        lake,
        3,
        &[Ev::new(
            0x999,
            "2025-06-01T12:00:03Z",
            Some("tok-two-batches"),
            "FAILED",
        )
        .client(3)],
    )
    .await;
    commit_batch(lake, 2, &batch2()).await;
    let r2 = run(lake, &incremental()).await;
    assert_eq!(r2.new_batches, vec![[2, 2]]);
    let after2 = silver(lake).await;
    assert_rows(&after2, &expected_after_batch2());
    // Only the partitions batch 2 touched were recomputed, tok-move's old one deleted.
    assert_eq!(r2.partitions.recomputed, 3, "{:?}", r2.partitions);
    assert_eq!(r2.partitions.deleted, 1);
    let files = published(lake).await;
    assert!(
        !files
            .keys()
            .any(|p| p.contains("client_id=5/date=2025-06-02")),
        "{files:?}"
    );

    // The manifest records the batches each partition version consumed.
    let found = manifest::find(lake, Shard::ALL).await.unwrap();
    let m = found.committed.unwrap();
    assert_eq!(m.version, 2);
    assert_eq!(m.consumed_batches, vec![[1, 2]]);
    let parts = silver_transform::partitions::read_all(lake, &m)
        .await
        .unwrap();
    let p3 = parts.iter().find(|p| p.client_id == 3).unwrap();
    assert_eq!((p3.version, p3.batches.clone()), (2, vec![[1, 2]]));
    let p1 = parts.iter().find(|p| p.client_id == 1).unwrap();
    assert_eq!((p1.version, p1.batches.clone()), (1, vec![[1, 1]]));
    assert_eq!(m.index_keys, 10);

    // No new batch: nothing changes.
    let r3 = run(lake, &incremental()).await;
    assert_eq!(r3.outcome, Outcome::NothingNew);
    assert_eq!(published(lake).await, files);
    assert_eq!(
        manifest::find(lake, Shard::ALL)
            .await
            .unwrap()
            .committed
            .unwrap()
            .version,
        2
    );

    // One full recompute from the same bronze gives the same bytes.
    let other = t.other_bucket().await;
    commit_batch(&other, 1, &batch1()).await;
    commit_batch(&other, 2, &batch2()).await;
    run(&other, &full_refresh()).await;
    let other_files: Vec<(String, String)> = published(&other).await.into_iter().collect();
    assert_eq!(other_files, files.clone().into_iter().collect::<Vec<_>>());

    // A full refresh in place changes nothing either.
    run(lake, &full_refresh()).await;
    assert_eq!(published(lake).await, files);

    // The report carries the summary.
    let report = latest_report(lake).await;
    assert_eq!(report["outcome"], "success");
    assert_eq!(report["summary"]["executions"], 10);
    assert_eq!(report["summary"]["status_distribution"]["EXECUTED"], 5);
    assert_eq!(report["summary"]["slippage_pct"]["count"], 5);
    assert_eq!(report["summary"]["slippage_pct"]["median"], "0.0001");
}

#[tokio::test]
async fn backfill_superseding_a_day_is_followed() {
    let t = TestLake::new().await;
    let lake = &t.lake;
    let day1: Vec<Ev> = batch1()
        .into_iter()
        .filter(|e| e.date().to_string() == D1)
        .collect();
    commit_batch(lake, 1, &batch1()).await;
    run(lake, &incremental()).await;
    // Re-export 2025-06-01 whole, now with batch 2's events of that day.
    let mut redo = day1.clone();
    redo.extend(batch2().into_iter().filter(|e| e.date().to_string() == D1));
    let d1 = redo[0].date();
    commit_backfill(lake, 2, &[d1], &redo).await;
    let r = run(lake, &incremental()).await;
    assert_eq!(r.superseded_days, vec![d1]);
    assert_rows(&silver(lake).await, &expected_after_batch2());

    let other = t.other_bucket().await;
    commit_batch(&other, 1, &batch1()).await;
    commit_backfill(&other, 2, &[d1], &redo).await;
    run(&other, &full_refresh()).await;
    assert_eq!(published(&other).await, published(lake).await);
}
