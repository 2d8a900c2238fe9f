//! What the silver benchmarks share: a generator of bronze events shaped like
//! the demo data, the bronze files bronze-ingest would write for them, and
//! child processes measured for wall time and peak RSS.
#![allow(dead_code)] // each benchmark uses part of it

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{
    ArrayRef, Decimal128Builder, Int32Array, Int64Array, Int64Builder, RecordBatch, StringBuilder,
    TimestampMicrosecondArray,
};
use chrono::NaiveDate;
use futures::{StreamExt, TryStreamExt};
use lake_common::manifest::{
    self, BatchManifest, CHECKPOINT_FORMAT, CHECKPOINT_INTERVAL, Checkpoint, DataFile, LiveFile,
};
use lake_common::parquet_io::FileWriter;
use lake_common::schema::{ExportSchema, STOP_EVENTS};
use lake_common::{Dataset, Lake, Partition};

pub const DAY: i64 = 86_400_000_000;

pub const WINDOW_END: i64 = 1_751_241_600_000_000; // 2025-06-30T00:00:00Z
const SYMBOLS: [&str; 25] = [
    "BTCUSDC",
    "ETHUSDC",
    "SOLUSDC",
    "BNBUSDC",
    "XRPUSDC",
    "ADAUSDC",
    "DOGEUSDC",
    "AVAXUSDC",
    "DOTUSDC",
    "LINKUSDC",
    "MATICUSDC",
    "LTCUSDC",
    "TRXUSDC",
    "ATOMUSDC",
    "NEARUSDC",
    "APTUSDC",
    "ARBUSDC",
    "OPUSDC",
    "SUIUSDC",
    "INJUSDC",
    "TIAUSDC",
    "SEIUSDC",
    "FILUSDC",
    "PEPEUSDC",
    "SHIBUSDC",
];
/// Index standing for a malformed symbol.
const BAD_SYMBOL: u8 = 255;
const LIFECYCLES: [&[&str]; 6] = [
    &["STOP_TRIGGERED", "BLOCKED"],
    &["STOP_TRIGGERED", "FAILED"],
    &["STOP_TRIGGERED", "EXECUTION_SUBMITTED", "EXECUTED"],
    &["STOP_TRIGGERED", "EXECUTION_SUBMITTED", "FAILED"],
    &[
        "STOP_TRIGGERED",
        "EXECUTION_SUBMITTED",
        "EXECUTION_SUBMITTED",
        "EXECUTED",
    ],
    &[
        "STOP_TRIGGERED",
        "EXECUTION_SUBMITTED",
        "EXECUTED",
        "SLIPPAGE_BREACH",
    ],
];
const ALERTS: [&str; 4] = [
    "STALE_PRICE",
    "SLIPPAGE_BREACH",
    "CIRCUIT_BREAKER",
    "KILL_SWITCH",
];

pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One generated event (only what varies; the rest is derived when writing).
#[derive(Clone)]
pub struct Ev {
    pub id: u128,
    pub seq: Option<i64>,
    pub at: i64,
    pub op: i64,
    pub client: i64,
    pub symbol: u8,
    pub ty: &'static str,
    pub token: Option<u64>,
    pub side: bool,
    pub price: i128,
    pub slip: i128,
    pub retry: i32,
}

/// `events` events of executions starting in `[start, end)` (minus 2 minutes).
pub fn generate(rng: &mut Rng, events: usize, first_op: i64, start: i64, end: i64) -> Vec<Ev> {
    let mut out = Vec::with_capacity(events + 4);
    let mut op = first_op;
    while out.len() < events {
        op += 1;
        let client = {
            let r = rng.below(400);
            1 + (r * r / 8000) as i64 // skewed towards low ids, 1..=20
        };
        // About 0.1 % of executions carry a malformed symbol (quarantined).
        let symbol = if rng.below(1000) == 0 {
            BAD_SYMBOL
        } else {
            (rng.below(25).min(rng.below(25))) as u8
        };
        let mut at = start + rng.below((end - start) as u64 - 120_000_000) as i64;
        let base = 1_000_000_000 + rng.below(9_000_000_000_000) as i128;
        let side = rng.below(2) == 0;
        if rng.below(1000) < 35 {
            let alert = ALERTS[rng.below(4) as usize];
            out.push(event(rng, at, op, client, symbol, alert, None, side, base));
            continue;
        }
        let token = (rng.below(100) >= 3).then(|| rng.next());
        for (k, ty) in LIFECYCLES[rng.below(6) as usize].iter().enumerate() {
            if k > 0 {
                at += 500_000 + rng.below(2_000_000) as i64;
            }
            out.push(event(rng, at, op, client, symbol, ty, token, side, base));
        }
    }
    out
}

#[allow(clippy::too_many_arguments)]
pub fn event(
    rng: &mut Rng,
    at: i64,
    op: i64,
    client: i64,
    symbol: u8,
    ty: &'static str,
    token: Option<u64>,
    side: bool,
    price: i128,
) -> Ev {
    let id = (u128::from(rng.next()) << 64 | u128::from(rng.next())) & !(0xf000u128 << 64)
        | (0x4000u128 << 64);
    // ±1.8 % mostly, ±5.4 % for 1 %, and one in 2 000 beyond ±50 % (quarantined).
    let slip = match rng.below(2000) {
        0 => 900_000,
        1..=20 => 54_000,
        _ => 18_000,
    };
    Ev {
        id,
        seq: (rng.below(10) != 0).then(|| rng.next() as i64 & 0x7fff_ffff_ffff),
        at,
        op,
        client,
        symbol,
        ty,
        token,
        side,
        price,
        slip: rng.below(2 * slip) as i128 - slip as i128,
        retry: i32::from(ty == "EXECUTION_SUBMITTED" && rng.below(4) == 0),
    }
}

pub fn uuid(id: u128) -> String {
    let h = format!("{id:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

pub fn bronze_batch(evs: &[Ev], batch: u64) -> RecordBatch {
    let schema = STOP_EVENTS.arrow_schema();
    let n = evs.len();
    let text = |f: &dyn Fn(&Ev) -> Option<String>| -> ArrayRef {
        let mut b = StringBuilder::new();
        for e in evs {
            b.append_option(f(e));
        }
        Arc::new(b.finish())
    };
    let dec = |f: &dyn Fn(&Ev) -> Option<i128>, p: u8, s: i8| -> ArrayRef {
        let mut b = Decimal128Builder::with_capacity(n);
        for e in evs {
            b.append_option(f(e));
        }
        Arc::new(b.finish().with_precision_and_scale(p, s).unwrap())
    };
    let executed = |e: &Ev| e.ty == "EXECUTED" || e.ty == "SLIPPAGE_BREACH";
    let cols: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .map(|f| -> ArrayRef {
            match f.name().as_str() {
                "event_id" => text(&|e| Some(uuid(e.id))),
                "event_seq" => {
                    let mut b = Int64Builder::with_capacity(n);
                    evs.iter().for_each(|e| b.append_option(e.seq));
                    Arc::new(b.finish())
                }
                "occurred_at" => Arc::new(
                    TimestampMicrosecondArray::from_iter_values(evs.iter().map(|e| e.at))
                        .with_timezone("UTC"),
                ),
                "operation_id" => Arc::new(Int64Array::from_iter_values(evs.iter().map(|e| e.op))),
                "client_id" => Arc::new(Int64Array::from_iter_values(evs.iter().map(|e| e.client))),
                "symbol" => text(&|e| {
                    Some(SYMBOLS.get(e.symbol as usize).copied().unwrap_or("btc-usdc").to_owned())
                }),
                "event_type" => text(&|e| Some(e.ty.to_owned())),
                "trigger_price" => dec(&|e| Some(e.price), 20, 8),
                "stop_price" => dec(&|e| Some(e.price - e.price / 100), 20, 8),
                "quantity" => dec(&|e| Some(e.price / 1000 + 1), 20, 8),
                "side" => text(&|e| Some(if e.side { "BUY" } else { "SELL" }.to_owned())),
                "execution_token" => text(&|e| e.token.map(|t| format!("{t:032x}"))),
                "payload_json" => text(&|e| {
                    Some(format!(
                        "{{\"event\":\"{}\",\"operation\":{},\"client\":{},\"meta\":{{\"strategy\":\"trailing\",\"levels\":[1,2,3],\"note\":\"generated for the silver benchmark\"}}}}",
                        e.ty, e.op, e.client
                    ))
                }),
                "request_payload_hash" => text(&|e| (e.ty == "EXECUTION_SUBMITTED").then(|| format!("{:064x}", e.id))),
                "exchange_order_id" => text(&|e| executed(e).then(|| format!("ord-{}", e.op))),
                "fill_price" => dec(&|e| executed(e).then_some(e.price + e.price * e.slip / 1_000_000), 20, 8),
                "slippage_pct" => dec(&|e| executed(e).then_some(e.slip), 10, 4),
                "source" => text(&|e| Some(["ws", "cron", "manual"][(e.op % 3) as usize].to_owned())),
                "error_message" => text(&|e| {
                    matches!(e.ty, "FAILED" | "BLOCKED" | "CIRCUIT_BREAKER" | "KILL_SWITCH")
                        .then(|| format!("{} on operation {}", e.ty.to_lowercase(), e.op))
                }),
                "retry_count" => Arc::new(Int32Array::from_iter_values(evs.iter().map(|e| e.retry))),
                "_batch" => Arc::new(Int64Array::from_iter_values(std::iter::repeat_n(batch as i64, n))),
                "_ingested_at" => Arc::new(
                    TimestampMicrosecondArray::from_iter_values(std::iter::repeat_n(WINDOW_END, n))
                        .with_timezone("UTC"),
                ),
                other => panic!("unknown column {other}"),
            }
        })
        .collect();
    RecordBatch::try_new(schema, cols).unwrap()
}

/// Writes `evs` as batch `batch`'s files, one per UTC day, sorted as bronze-ingest sorts.
pub async fn write_files(lake: &Lake, batch: u64, mut evs: Vec<Ev>) -> Vec<DataFile> {
    evs.sort_by_key(|e| (e.at, e.id));
    let mut by_day: BTreeMap<i64, Vec<Ev>> = BTreeMap::new();
    for e in evs {
        by_day
            .entry(e.at.div_euclid(86_400_000_000))
            .or_default()
            .push(e);
    }
    let mut files = Vec::new();
    for (day, evs) in by_day {
        let date = NaiveDate::from_num_days_from_ce_opt(day as i32 + 719_163).unwrap();
        let path = Dataset::BronzeEvents.batch_file(&Partition::date(date), batch, 0);
        let mut w = FileWriter::bronze(lake, &ExportSchema::contract(&STOP_EVENTS), path).unwrap();
        for chunk in evs.chunks(64 * 1024) {
            w.write(&bronze_batch(chunk, batch)).await.unwrap();
        }
        files.push(DataFile::new(date, w.finish().await.unwrap()));
    }
    files
}

/// Commits `manifests` (the batches after `first`, ascending, without gaps)
/// as bronze-ingest would have, and the latest checkpoint due, holding every
/// live file (none of them supersedes anything). Returns the last batch.
pub async fn write_log(lake: &Lake, first: &BatchManifest, manifests: &[BatchManifest]) -> u64 {
    futures::stream::iter(manifests.iter())
        .map(|m| async move { manifest::create(lake, m).await.map(|_| ()) })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await
        .unwrap();
    let last = manifests.last().map_or(first.batch, |m| m.batch);
    let at = last / CHECKPOINT_INTERVAL * CHECKPOINT_INTERVAL;
    let upto = |b: u64| {
        std::iter::once(first)
            .chain(manifests.iter())
            .filter(move |m| m.batch <= b)
    };
    let checkpoint = Checkpoint {
        format: CHECKPOINT_FORMAT,
        dataset: first.dataset.clone(),
        batch: at,
        last: upto(at).next_back().unwrap().clone(),
        last_with_files: upto(at).rfind(|m| !m.files.is_empty()).cloned(),
        live: upto(at)
            .flat_map(|m| {
                m.files.iter().map(|f| LiveFile {
                    batch: m.batch,
                    file: f.clone(),
                })
            })
            .collect(),
        identity_state: None,
        retained_before: None,
    };
    manifest::write_checkpoint(lake, &checkpoint).await.unwrap();
    last
}

/// A measured child process.
pub struct Measured {
    pub wall: Duration,
    pub max_rss_mib: f64,
}

/// Runs `cmd` under this binary in `--measure` mode, so `getrusage(CHILDREN)`
/// sees that one process only.
pub fn measure(label: &str, cmd: &[&str], env: &[(&str, String)]) -> Measured {
    let me = std::env::current_exe().unwrap();
    let started = Instant::now();
    let out = Command::new(me)
        .arg("--measure")
        .args(cmd)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    let wall = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{label} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rss_kib: f64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("maxrss_kib "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    Measured {
        wall,
        max_rss_mib: rss_kib / 1024.0,
    }
}

pub fn measure_mode(args: &[String]) -> ! {
    let status = Command::new(&args[0]).args(&args[1..]).status().unwrap();
    let usage =
        nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN).unwrap();
    println!("maxrss_kib {}", usage.max_rss());
    std::process::exit(status.code().unwrap_or(1));
}
