//! Property: random event streams, split at random into bronze batches (with the
//! occasional backfill), processed incrementally after every batch — unsharded
//! and with two shards — give exactly the files one full recompute gives, and that
//! full recompute equals an independent, naive implementation of SPEC §6 and §7.
// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};

use chrono::NaiveDate;
use lake_common::{Lake, LakeConfig};
use silver_transform::Options;
use silver_transform::key::Shard;
use support::*;

const DAY: i64 = 86_400_000_000;

/// A random stream of events over three days, shaped to hit every rule: NULL
/// tokens sharing operations, ties, NULL event_seq, midnight crossings, events
/// earlier than their execution's first, several clients, bad values.
fn generate(rng: &mut Rng, executions: usize) -> Vec<Ev> {
    // The last day of a month and two of the next: executions cross between
    // key index segments (months) too.
    let start = ts("2025-05-31T00:00:00Z");
    let mut ids = BTreeSet::new();
    let mut seqs = BTreeSet::new();
    let mut out = Vec::new();
    for x in 0..executions {
        // Some tokens NULL, some '' (Django's default for "never set"): both
        // mean "no token".
        let token = if rng.percent(12) {
            None
        } else if rng.percent(5) {
            Some(String::new())
        } else {
            Some(format!("tok-{x}-{}", rng.below(1000)))
        };
        let op = 1000 + rng.below(executions as u64 / 2 + 1) as i64;
        let client = 1 + rng.below(5) as i64;
        let symbol = *rng.pick(&["BTCUSDC", "ETHUSDC", "SOLUSDC", "PEPEUSDC"]);
        // Many executions start close to a midnight.
        let t0 = if rng.percent(30) {
            start + DAY * (1 + rng.below(2) as i64) - rng.below(5_000_000) as i64
        } else {
            start + rng.below(3 * DAY as u64) as i64
        };
        let n = 1 + rng.below(5);
        let mut t = t0;
        for k in 0..n {
            let at = if k > 0 && rng.percent(4) {
                // The key used again days later: a run of days without its
                // events, which its folds skip (#17).
                t0 + DAY * (3 + rng.below(4) as i64)
            } else if k > 0 && rng.percent(15) {
                t // a tie
            } else if k > 0 && rng.percent(8) {
                t0 - rng.below(3_000_000) as i64 // earlier than the first so far
            } else {
                t += rng.below(4_000_000) as i64;
                t
            };
            let mut id;
            loop {
                id = rng.below(1 << 40);
                if ids.insert(id) {
                    break;
                }
            }
            let ty = if rng.percent(6) {
                "SLIPPAGE_BREACH"
            } else {
                *rng.pick(&TYPES)
            };
            let mut e = Ev::at_micros(id, at, token.as_deref(), ty)
                .op(op)
                .client(if rng.percent(3) { client + 1 } else { client })
                .symbol(if rng.percent(2) { "bad-sym" } else { symbol })
                .source(rng.pick::<&str>(&["ws", "cron", "manual"]));
            if rng.percent(60) {
                let mut s;
                loop {
                    s = rng.below(1 << 30) as i64;
                    if seqs.insert(s) {
                        break;
                    }
                }
                e = e.seq(s);
            }
            if rng.percent(70) {
                e.side = Some(rng.pick(&["BUY", "SELL"]).to_string());
            }
            let price = |rng: &mut Rng| Some(rng.below(10_000_000_000_000) as i128);
            if rng.percent(50) {
                e.stop_price = price(rng);
            }
            if rng.percent(50) {
                e.trigger_price = price(rng);
            }
            if rng.percent(50) {
                e.quantity = price(rng);
            }
            if rng.percent(if ty == "EXECUTED" { 94 } else { 20 }) {
                e.fill_price = price(rng);
            }
            if rng.percent(60) {
                let limit = if rng.percent(3) { 900_000 } else { 500_000 };
                e.slippage_pct = Some(rng.below(2 * limit) as i128 - limit as i128);
            }
            if rng.percent(40) {
                e.exchange_order_id = Some(format!("EX-{}", rng.below(1_000_000)));
            }
            if rng.percent(30) {
                e.error_message = Some(format!("err {}", rng.below(100)));
            }
            e.retry_count = rng.below(4) as i32;
            out.push(e);
        }
    }
    out
}

/// A bronze history: batches of events and, sometimes, a backfill of one day.
enum Step {
    Batch(Vec<Ev>),
    Backfill(NaiveDate, Vec<Ev>),
}

/// Returns the steps and the events live in bronze at the end.
fn history(rng: &mut Rng, events: Vec<Ev>) -> (Vec<Step>, Vec<Ev>) {
    let mut events = events;
    // Shuffle: commit order is unrelated to event time.
    for i in (1..events.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        events.swap(i, j);
    }
    // Some histories are long enough for bronze checkpoints (every ten
    // batches), with silver running only now and then (below), so batches a
    // checkpoint folded in are still new to silver.
    let batches = if rng.percent(30) {
        12 + rng.below(14)
    } else {
        2 + rng.below(4)
    };
    let mut steps = Vec::new();
    let mut rest = events;
    let mut committed: Vec<Ev> = Vec::new();
    for b in 0..batches {
        let take = if b + 1 == batches {
            rest.len()
        } else {
            rng.below(rest.len() as u64 + 1) as usize
        };
        let batch: Vec<Ev> = rest.drain(..take).collect();
        committed.extend(batch.iter().cloned());
        steps.push(Step::Batch(batch));
        if rng.percent(35) && !committed.is_empty() {
            // Re-export one day whole, pulling that day's future events forward.
            let day = rng.pick(&committed).date();
            let (pulled, keep): (Vec<Ev>, Vec<Ev>) = rest.drain(..).partition(|e| e.date() == day);
            rest = keep;
            committed.extend(pulled);
            // Sometimes the re-export holds fewer events (bronze lost some): silver
            // must follow, even when that moves executions between partitions.
            let lossy = rng.percent(40);
            let mut all_of_day = Vec::new();
            committed.retain(|e| {
                if e.date() != day {
                    return true;
                }
                let keep = !(lossy && rng.percent(20));
                if keep {
                    all_of_day.push(e.clone());
                }
                keep
            });
            steps.push(Step::Backfill(day, all_of_day));
        }
    }
    (steps, committed)
}

async fn apply(lake: &Lake, batch: u64, step: &Step) {
    match step {
        Step::Batch(evs) => {
            commit_batch(lake, batch, evs).await;
        }
        Step::Backfill(day, evs) => {
            commit_backfill(lake, batch, &[*day], evs).await;
        }
    }
}

/// The sharded runs fold in tiny time windows (a few events each): the
/// windows of a large day must give the same files as whole days.
fn sharded(index: u32) -> Options {
    Options {
        shard: Shard { index, count: 2 },
        window_rows: 5,
        index_segment_keys: SEGMENT_KEYS,
        ..incremental()
    }
}

/// Key index segments of a few entries, so that the incremental runs split
/// months by key hash, look keys up in parts of them, and rewrite parts
/// (the reference keeps whole months).
const SEGMENT_KEYS: u64 = 6;

/// What a seed exercised besides the result.
#[derive(Default)]
struct Covered {
    /// Bronze was read through a checkpoint.
    checkpoint: bool,
    /// A run folded a day in several time windows.
    windows: bool,
    /// An execution key's events lie on days with days without them between.
    gaps: bool,
    /// A fold of everything ran in several key-hash passes and parked rows.
    passes: bool,
    /// The incremental lake's key index holds a month in several segments.
    split: bool,
}

/// A full refresh folding in `passes` key-hash passes (the earlier passes'
/// rows parked on local disk): the same files as one pass.
fn full_refresh_in(passes: u32) -> Options {
    Options {
        fold_passes: Some(passes),
        ..full_refresh()
    }
}

/// Whether some execution key's live events leave a day without them between
/// their first and last day.
fn some_key_has_a_gap(live: &[Ev]) -> bool {
    let mut days: BTreeMap<String, BTreeSet<i64>> = BTreeMap::new();
    for e in live
        .iter()
        .filter(|e| TYPES.contains(&e.event_type.as_str()))
    {
        let key = match e.execution_token.as_deref() {
            Some(t) if !t.is_empty() => t.to_owned(),
            _ => format!("operation:{}", e.operation_id),
        };
        days.entry(key)
            .or_default()
            .insert(e.occurred_at.div_euclid(DAY));
    }
    days.values()
        .any(|d| d.iter().zip(d.iter().skip(1)).any(|(a, b)| b - a > 1))
}

async fn check_seed(seed: u64, executions: usize, lakes: [Lake; 3]) -> Covered {
    let mut covered = Covered::default();
    let [inc, shards, full] = lakes;
    let mut rng = Rng(seed);
    let events = generate(&mut rng, executions);
    let (steps, live) = history(&mut rng, events.clone());
    covered.gaps = some_key_has_a_gap(&live);
    // Long histories: silver runs after about a third of the steps (and the last).
    let long = steps.len() > 10;
    let mut when = Rng(seed ^ 0x5EED);
    for (i, step) in steps.iter().enumerate() {
        let batch = i as u64 + 1;
        apply(&inc, batch, step).await;
        apply(&shards, batch, step).await;
        apply(&full, batch, step).await;
        if long && i + 1 < steps.len() && !when.percent(30) {
            continue;
        }
        // Even seeds never take the whole-shard shortcut, odd seeds take it when
        // most executions are affected: both paths must give the same files.
        let whole_shard_ratio = if seed.is_multiple_of(2) {
            f64::INFINITY
        } else {
            0.5
        };
        // An incremental run that takes the shortcut folds in passes.
        let r = run(
            &inc,
            &Options {
                whole_shard_ratio,
                fold_passes: Some(2),
                index_segment_keys: SEGMENT_KEYS,
                ..incremental()
            },
        )
        .await;
        covered.passes |= r.work.parked_bytes > 0;
        for index in [0, 1] {
            let r = run(&shards, &sharded(index)).await;
            covered.windows |= r.work.fold_windows > r.work.days_read;
        }
    }
    // The reference folds in 1 to 4 passes.
    let r = run(&full, &full_refresh_in(1 + (seed % 4) as u32)).await;
    covered.passes |= r.work.parked_bytes > 0;

    let (want_silver, want_quarantine) = reference(&live.iter().collect::<Vec<_>>());
    let got = silver(&full).await;
    for (k, want) in &want_silver {
        assert_eq!(got.get(k), Some(want), "seed {seed}: execution {k}");
    }
    assert_eq!(got.len(), want_silver.len(), "seed {seed}: executions");
    assert_eq!(
        quarantine(&full).await,
        want_quarantine,
        "seed {seed}: quarantine"
    );

    let reference_files = published(&full).await;
    assert_eq!(
        published(&inc).await,
        reference_files,
        "seed {seed}: incremental"
    );
    assert_eq!(
        published(&shards).await,
        reference_files,
        "seed {seed}: two shards"
    );
    eprintln!(
        "seed {seed}: {} events ({} live), {} steps, {} executions, {} quarantined rows, {} files: equal",
        events.len(),
        live.len(),
        steps.len(),
        want_silver.len(),
        want_quarantine.len(),
        reference_files.len()
    );
    covered.checkpoint =
        lake_common::manifest::BronzeLog::load(&inc, lake_common::Dataset::BronzeEvents)
            .await
            .unwrap()
            .checkpoint_batch()
            .is_some();
    let found = silver_transform::manifest::find(&inc, Shard::ALL)
        .await
        .unwrap();
    covered.split = found
        .committed
        .unwrap()
        .index_segments
        .iter()
        .any(|s| s.hash.is_some());
    covered
}

/// #20: the same histories with bronze's retention applied half-way (after
/// silver read everything): the executions begun before the horizon keep the
/// silver files they had, whatever arrives later (their events, late rows
/// dated before the horizon, backfills; their later events go to the frozen
/// partitions' quarantine); incremental unsharded equals two shards;
/// and a full refresh, unsharded and per shard, changes nothing. Returns the
/// executions runs found frozen and the rows they quarantined for them.
async fn check_retention(seed: u64, executions: usize, lakes: [Lake; 2]) -> (u64, u64) {
    let [inc, shards] = lakes;
    let mut rng = Rng(seed);
    let events = generate(&mut rng, executions);
    let (steps, _) = history(&mut rng, events);
    let horizon = NaiveDate::from_ymd_opt(2025, 6, 1 + (seed % 2) as u32).unwrap();
    let at = steps.len() / 2;
    // Silver's frozen partitions (their quarantine gets later events).
    let behind = |dir: &str| {
        !dir.contains("_quarantine")
            && dir
                .split_once("date=")
                .and_then(|(_, d)| NaiveDate::parse_from_str(&d[..10], "%Y-%m-%d").ok())
                .is_some_and(|d| d < horizon)
    };
    let whole_shard_ratio = if seed.is_multiple_of(2) {
        f64::INFINITY
    } else {
        0.5
    };
    let mut frozen_files = BTreeMap::new();
    let (mut frozen, mut late) = (0, 0);
    let mut batch = 0;
    for (i, step) in steps.iter().enumerate() {
        batch += 1;
        apply(&inc, batch, step).await;
        apply(&shards, batch, step).await;
        let r = run(
            &inc,
            &Options {
                whole_shard_ratio,
                ..incremental()
            },
        )
        .await;
        frozen += r.work.frozen_executions;
        late += r.quality.violations_per_rule["after_retention_horizon"];
        for index in [0, 1] {
            run(&shards, &sharded(index)).await;
        }
        if i == at {
            batch += 1;
            commit_retention(&inc, batch, horizon).await;
            commit_retention(&shards, batch, horizon).await;
            frozen_files = published(&inc).await;
            frozen_files.retain(|dir, _| behind(dir));
        }
    }
    let before = published(&inc).await;
    assert_eq!(published(&shards).await, before, "seed {seed}: two shards");
    let mut kept = before.clone();
    kept.retain(|dir, _| behind(dir));
    assert_eq!(
        kept, frozen_files,
        "seed {seed}: frozen partitions unchanged"
    );
    let r = run(&inc, &full_refresh_in(1 + (seed % 3) as u32)).await;
    assert_eq!(
        r.work.fold_passes,
        1 + seed % 3,
        "seed {seed}: passes of the full refresh"
    );
    assert_eq!(published(&inc).await, before, "seed {seed}: full refresh");
    for index in [0, 1] {
        run(
            &shards,
            &Options {
                mode: silver_transform::Mode::FullRefresh,
                ..sharded(index)
            },
        )
        .await;
    }
    assert_eq!(
        published(&shards).await,
        before,
        "seed {seed}: full refresh of two shards"
    );
    (frozen, late)
}

#[tokio::test]
async fn retention_keeps_history_and_full_refresh_agrees_on_local_lakes() {
    let dir = tempfile::tempdir().unwrap();
    let (mut frozen, mut late) = (0, 0);
    for seed in 200..216 {
        let lakes = ["inc", "shards"].map(|n| {
            Lake::open(&LakeConfig::local(dir.path().join(format!("{seed}-{n}")))).unwrap()
        });
        let (f, l) = check_retention(seed, 40 + (seed as usize % 4) * 20, lakes).await;
        (frozen, late) = (frozen + f, late + l);
    }
    assert!(frozen > 0, "some events arrived for frozen executions");
    assert!(late > 0, "and went to quarantine");
}

#[tokio::test]
async fn incremental_equals_full_recompute_on_s3() {
    let t = TestLake::new().await;
    let (mut checkpointed, mut windowed, mut gapped, mut passes, mut split) = (0, 0, 0, 0, 0);
    for seed in [1, 2, 3, 4] {
        let lakes = [
            t.other_bucket().await,
            t.other_bucket().await,
            t.other_bucket().await,
        ];
        let c = check_seed(seed, 60, lakes).await;
        checkpointed += usize::from(c.checkpoint);
        windowed += usize::from(c.windows);
        gapped += usize::from(c.gaps);
        passes += usize::from(c.passes);
        split += usize::from(c.split);
    }
    assert!(
        checkpointed > 0,
        "some history is long enough for a checkpoint"
    );
    assert!(windowed > 0, "some run folded a day in windows");
    assert!(
        gapped > 0,
        "some key's events have days without them between"
    );
    assert!(passes > 0, "some fold ran in passes and parked rows");
    assert!(split > 0, "some key index month was split by key hash");
}

#[tokio::test]
async fn incremental_equals_full_recompute_on_local_lakes() {
    let dir = tempfile::tempdir().unwrap();
    let (mut checkpointed, mut windowed, mut gapped, mut passes, mut split) = (0, 0, 0, 0, 0);
    for seed in 100..130 {
        let lakes = ["inc", "shards", "full"].map(|n| {
            Lake::open(&LakeConfig::local(dir.path().join(format!("{seed}-{n}")))).unwrap()
        });
        let c = check_seed(seed, 40 + (seed as usize % 5) * 20, lakes).await;
        checkpointed += usize::from(c.checkpoint);
        windowed += usize::from(c.windows);
        gapped += usize::from(c.gaps);
        passes += usize::from(c.passes);
        split += usize::from(c.split);
    }
    assert!(
        checkpointed >= 3,
        "{checkpointed} histories long enough for a checkpoint"
    );
    assert!(windowed >= 3, "{windowed} seeds folded days in windows");
    assert!(
        gapped >= 10,
        "{gapped} seeds have keys with days without events between"
    );
    assert!(
        passes >= 10,
        "{passes} seeds folded in passes and parked rows"
    );
    assert!(split >= 10, "{split} seeds split a key index month");
}
