//! Benchmark (not a test): what a run costs after 1 month, 1 year and 3 years
//! of history (#17, SPEC §10), against the real S3 endpoint (moto) and a real
//! PostgreSQL.
//!
//! ```text
//! just bench-history            # HISTORY_BENCH_MONTHS=1,12,36 HISTORY_BENCH_EVENTS_PER_DAY=3000
//! ```
//!
//! For each age, in a fresh bucket:
//!
//! 1. bronze-ingest exports what PostgreSQL holds (batch 1: the real source
//!    identity every later batch must carry);
//! 2. the history is synthesised as bronze-ingest would have written it: one
//!    batch per hour, the first of each day holding that day's events (one
//!    bronze file, generated like the demo data), the rest empty; every
//!    manifest, and the latest checkpoint holding every live file;
//! 3. silver-transform `--full-refresh` builds silver's state from it (its
//!    partition table and key index of the whole history);
//! 4. then, through the fault proxy's request log, the runs an hourly and a
//!    daily CronJob make: a bronze run with nothing new, a bronze run exporting
//!    one hour of new events, the incremental silver run folding that batch,
//!    and a silver run with nothing new. Each is measured for requests (by
//!    operation), bytes of the answers, wall time (and of it, the time spent
//!    waiting on the endpoint, listings apart) and peak RSS;
//! 5. lake-maintain's nightly run as deployed (its defaults: bronze kept 90
//!    days, silver 365, compaction, gc), the silver run that consumes it, and
//!    the four runs of 4. again: what a lake that production maintains costs.
//!
//! Environment: `HISTORY_BENCH_MONTHS` (`1,12,36`), `HISTORY_BENCH_EVENTS_PER_DAY`
//! (3 000), `HISTORY_BENCH_BRONZE` (the bronze-ingest binary; default
//! `target/release/bronze-ingest`), `HISTORY_BENCH_MAINTAIN` (lake-maintain's;
//! default `target/release/lake-maintain`), `HISTORY_BENCH_REPORT` (also write the
//! Markdown report to this file).
// Benchmark driver: a failed unwrap aborts the benchmark with its location.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use chrono::{NaiveDate, Utc};
use common::*;
use lake_common::manifest::{self, BatchManifest, BatchState};
use lake_common::{Dataset, Lake, LakeConfig};
use lake_testkit::{FaultProxy, TestPostgres, TestS3, demo};

const SILVER: &str = env!("CARGO_BIN_EXE_silver-transform");

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One measured run.
struct Run {
    job: &'static str,
    months: u32,
    /// Measured after lake-maintain's nightly run (retention, compaction).
    maintained: bool,
    requests: BTreeMap<String, usize>,
    total: usize,
    answer_bytes: u64,
    wall: Duration,
    /// The time the job waited on the endpoint (at least one request
    /// outstanding, from the proxy's log), and on its listings alone.
    endpoint: Duration,
    listing: Duration,
    rss_mib: f64,
}

impl Run {
    /// The wall time not spent waiting on the endpoint: the job's own work.
    fn own(&self) -> Duration {
        self.wall.saturating_sub(self.endpoint)
    }
}

fn measured(
    proxy: &FaultProxy,
    (job, months, maintained): (&'static str, u32, bool),
    cmd: &[&str],
    env: &[(&str, String)],
) -> Run {
    proxy.clear_log();
    let m = measure(job, cmd, env);
    let log = proxy.log();
    let mut requests = BTreeMap::new();
    for r in &log {
        *requests.entry(format!("{:?}", r.op)).or_insert(0) += 1;
    }
    let run = Run {
        job,
        months,
        maintained,
        total: log.len(),
        answer_bytes: log.iter().map(|r| r.response_bytes).sum(),
        requests,
        wall: m.wall,
        endpoint: lake_testkit::endpoint_time(&log),
        listing: lake_testkit::endpoint_time(
            &log.iter()
                .filter(|r| r.op == lake_testkit::S3Op::ListObjects)
                .cloned()
                .collect::<Vec<_>>(),
        ),
        rss_mib: m.max_rss_mib,
    };
    eprintln!(
        "{months:>2} months{}  {job:<34} {:>5} requests {:>9.1} KiB  {:>6.2} s (endpoint {:.2} s, listings {:.2} s) {:>6.0} MiB  {:?}",
        if maintained { ", maintained" } else { "" },
        run.total,
        run.answer_bytes as f64 / 1024.0,
        run.wall.as_secs_f64(),
        run.endpoint.as_secs_f64(),
        run.listing.as_secs_f64(),
        run.rss_mib,
        run.requests
    );
    for r in log
        .iter()
        .filter(|r| r.op == lake_testkit::S3Op::ListObjects)
    {
        eprintln!(
            "           {r} ({:.0} ms)",
            r.upstream.map_or(0.0, |(_, t)| t.as_secs_f64() * 1e3)
        );
    }
    run
}

/// Writes `days` days of synthetic hourly bronze batches after batch 1, as
/// bronze-ingest would have: the first batch of each day holds the day's events,
/// the others are empty; every manifest carries batch 1's source identity, and
/// the latest checkpoint lists every live file. Returns the last batch.
async fn synthesise_bronze(
    lake: &Lake,
    first: &BatchManifest,
    last_day: NaiveDate,
    days: i64,
    per_day: usize,
) -> u64 {
    let mut rng = Rng(7);
    let mut op = 1_000_000_000;
    let hours = days as u64 * 24;
    let mut manifests = Vec::with_capacity(hours as usize);
    for h in 0..hours {
        let batch = 2 + h;
        let files = if h % 24 == 0 {
            let date = last_day - chrono::Duration::days(days - 1 - (h / 24) as i64);
            let start = date
                .and_hms_opt(0, 0, 0)
                .unwrap()
                .and_utc()
                .timestamp_micros();
            let evs = generate(&mut rng, per_day, op, start, start + DAY);
            op += per_day as i64;
            write_files(lake, batch, evs).await
        } else {
            vec![]
        };
        let mut m = first.clone();
        m.batch = batch;
        m.h_prev = Some(first.h);
        m.rows = files.iter().map(|f| f.rows).sum();
        m.files = files;
        m.supersedes = vec![];
        manifests.push(m);
    }
    write_log(lake, first, &manifests).await
}

fn run_ok(cmd: &[&str], env: &[(&str, String)]) -> Duration {
    let started = Instant::now();
    let out = std::process::Command::new(cmd[0])
        .args(&cmd[1..])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    started.elapsed()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--measure") {
        measure_mode(&args[2..]);
    }
    let months: Vec<u32> = std::env::var("HISTORY_BENCH_MONTHS")
        .unwrap_or_else(|_| "1,12,36".into())
        .split(',')
        .map(|m| m.trim().parse().unwrap())
        .collect();
    let per_day: usize = env_or("HISTORY_BENCH_EVENTS_PER_DAY", 3_000);
    let bronze = std::env::var_os("HISTORY_BENCH_BRONZE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/bronze-ingest")
        });
    assert!(
        bronze.exists(),
        "{} is not built: cargo build --release -p bronze-ingest",
        bronze.display()
    );
    let bronze = bronze.to_str().unwrap().to_owned();
    let maintain = std::env::var_os("HISTORY_BENCH_MAINTAIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/lake-maintain")
        });
    assert!(
        maintain.exists(),
        "{} is not built: cargo build --release -p lake-maintain",
        maintain.display()
    );
    let maintain = maintain.to_str().unwrap().to_owned();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (pg, s3) = rt.block_on(async {
        let (pg, s3) = tokio::join!(TestPostgres::start(), TestS3::start());
        let (pg, s3) = (pg.unwrap(), s3.unwrap());
        let c = pg.client().await.unwrap();
        demo::create_schema(&c).await.unwrap();
        pg.create_role("lake_reader", "reader-pw", true)
            .await
            .unwrap();
        (pg, s3)
    });
    let yesterday = Utc::now().date_naive() - chrono::Duration::days(1);
    let mut runs = Vec::new();
    let mut setup = Vec::new();
    for (i, &age) in months.iter().enumerate() {
        let bucket = rt.block_on(s3.new_bucket()).unwrap();
        let proxy = FaultProxy::start(&s3, 1).unwrap();
        let mut direct: Vec<(String, String)> = pg.env_as("lake_reader", "reader-pw");
        direct.extend(s3.env(&bucket));
        direct.push(("LOG_FORMAT".into(), "json".into()));
        direct.push(("RUST_LOG".into(), "warn".into()));
        let direct: Vec<(&str, String)> = direct
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        let mut through: Vec<(&str, String)> = direct
            .iter()
            .filter(|(k, _)| *k != "AWS_ENDPOINT")
            .cloned()
            .collect();
        through.push(("AWS_ENDPOINT", proxy.endpoint()));
        let lake = Lake::open(&LakeConfig::from_vars(s3.env(&bucket)).unwrap()).unwrap();

        // 1. The real first batch.
        rt.block_on(async {
            let c = pg.client().await.unwrap();
            let opts = demo::GenerateOptions::new(200, 100 + i as u64)
                .window_end(SystemTime::now() - Duration::from_secs(7200))
                .window(Duration::from_secs(3600));
            demo::generate_with(&c, &opts).await.unwrap();
        });
        run_ok(&[&bronze, "--dataset", "events"], &direct);
        let first = rt
            .block_on(manifest::read(&lake, Dataset::BronzeEvents, 1))
            .unwrap()
            .manifest;
        assert_eq!(first.state, BatchState::Committed);

        // 2. and 3. The history, and silver's state of it.
        let t = Instant::now();
        let days = i64::from(age) * 30;
        let last = rt.block_on(synthesise_bronze(&lake, &first, yesterday, days, per_day));
        let synthesised = t.elapsed();
        let full = run_ok(&[SILVER, "--full-refresh"], &direct);
        eprintln!(
            "{age} months: {last} bronze batches, {} events synthesised in {:.1} s; silver --full-refresh {:.1} s",
            days as usize * per_day,
            synthesised.as_secs_f64(),
            full.as_secs_f64()
        );
        setup.push((age, last, days as usize * per_day, full));

        // 4. The measured runs; 5. lake-maintain's nightly run as deployed
        // (its defaults: bronze kept 90 days, silver 365; compaction, gc),
        // silver's run consuming its retention entry, and the runs again.
        for maintained in [false, true] {
            if maintained {
                run_ok(&[&maintain], &direct);
                run_ok(&[SILVER], &direct);
            }
            let job = |name| (name, age, maintained);
            runs.push(measured(
                &proxy,
                job("bronze, nothing new"),
                &[&bronze, "--dataset", "events"],
                &through,
            ));
            rt.block_on(async {
                let c = pg.client().await.unwrap();
                let seed = 200 + 2 * i as u64 + u64::from(maintained);
                let opts = demo::GenerateOptions::new((per_day / 24) as u64, seed)
                    .window_end(SystemTime::now())
                    .window(Duration::from_secs(3600));
                demo::generate_with(&c, &opts).await.unwrap();
            });
            runs.push(measured(
                &proxy,
                job("bronze, one hour of events"),
                &[&bronze, "--dataset", "events"],
                &through,
            ));
            runs.push(measured(
                &proxy,
                job("silver, incremental (that hour)"),
                &[SILVER],
                &through,
            ));
            runs.push(measured(
                &proxy,
                job("silver, nothing new"),
                &[SILVER],
                &through,
            ));
        }
    }

    let report = render(&runs, &setup, per_day);
    println!("{report}");
    if let Ok(path) = std::env::var("HISTORY_BENCH_REPORT") {
        std::fs::write(&path, &report).unwrap();
        eprintln!("report written to {path}");
    }
}

fn render(runs: &[Run], setup: &[(u32, u64, usize, Duration)], per_day: usize) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# Per-run cost against the lake's age (measured)\n\nWritten by `just bench-history`; \
         what the numbers mean is in docs/benchmarks.md (\"The lake's age\").\n\n\
         Input per age: hourly bronze batches (the first of each day holding {per_day} events, one file), \
         the latest checkpoint, and silver's state built by one `--full-refresh`; moto over HTTP through \
         the fault proxy's request log, PostgreSQL 15, release build, 2 CPUs, {}.\n",
        Utc::now().format("%Y-%m-%d")
    );
    o.push_str(
        "| age | bronze batches | events | silver `--full-refresh` |\n|---|---:|---:|---:|\n",
    );
    for (age, batches, events, full) in setup {
        let _ = writeln!(
            o,
            "| {age} months | {batches} | {events} | {:.1} s |",
            full.as_secs_f64()
        );
    }
    o.push_str(
        "\n| run | age | requests | by operation | answer bytes | wall | endpoint (listings) | own | peak RSS |\n\
         |---|---|---:|---|---:|---:|---:|---:|---:|\n",
    );
    for r in runs {
        let ops: Vec<String> = r.requests.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(
            o,
            "| {} | {} months{} | {} | {} | {:.1} KiB | {:.2} s | {:.2} s ({:.2} s) | {:.2} s | {:.0} MiB |",
            r.job,
            r.months,
            if r.maintained { ", maintained" } else { "" },
            r.total,
            ops.join(", "),
            r.answer_bytes as f64 / 1024.0,
            r.wall.as_secs_f64(),
            r.endpoint.as_secs_f64(),
            r.listing.as_secs_f64(),
            r.own().as_secs_f64(),
            r.rss_mib
        );
    }
    for maintained in [false, true] {
        let _ = writeln!(
            o,
            "\nOldest against youngest age{} (target: requests and time within 1.2×):\n",
            if maintained {
                ", after lake-maintain's nightly run (bronze kept 90 days, silver 365)"
            } else {
                ", without maintenance"
            }
        );
        o.push_str(
            "| run | requests | answer bytes | wall | own (wall less endpoint) | peak RSS |\n\
             |---|---:|---:|---:|---:|---:|\n",
        );
        let runs: Vec<&Run> = runs.iter().filter(|r| r.maintained == maintained).collect();
        let (young, old) = (
            runs.iter().map(|r| r.months).min().unwrap_or(0),
            runs.iter().map(|r| r.months).max().unwrap_or(0),
        );
        for y in runs.iter().filter(|r| r.months == young) {
            if let Some(x) = runs.iter().find(|r| r.months == old && r.job == y.job) {
                let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
                let _ = writeln!(
                    o,
                    "| {} | {:.2}× | {:.2}× | {:.2}× | {:.2}× | {:.2}× |",
                    y.job,
                    ratio(x.total as f64, y.total as f64),
                    ratio(x.answer_bytes as f64, y.answer_bytes as f64),
                    ratio(x.wall.as_secs_f64(), y.wall.as_secs_f64()),
                    ratio(x.own().as_secs_f64(), y.own().as_secs_f64()),
                    ratio(x.rss_mib, y.rss_mib)
                );
            }
        }
    }
    o
}
