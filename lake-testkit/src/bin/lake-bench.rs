//! `just bench-bronze`: bronze-ingest against PostgreSQL's own binary COPY.
//!
//! For each size: generate the rows with the testkit, time
//! `COPY (SELECT * FROM stop_events) TO STDOUT (FORMAT binary)` drained by a
//! client (the floor: the source cannot hand rows out faster), then time a full
//! bronze-ingest export of the same table to a local lake and read its peak RSS
//! from its run report. Results go to a Markdown table. This is a benchmark, not
//! a test: it asserts nothing.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use futures::StreamExt;
use lake_testkit::{TestPostgres, demo};

#[derive(Debug, Parser)]
#[command(about = "Benchmarks of the lake jobs")]
struct Cli {
    #[command(subcommand)]
    command: Bench,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// bronze-ingest vs binary COPY at several sizes.
    Bronze {
        /// The headline size; 100 000 and 3 000 000 rows are measured too for the memory comparison.
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
        /// Where to write the Markdown report (the bronze section is replaced).
        #[arg(long)]
        report: Option<PathBuf>,
        /// Only the headline size.
        #[arg(long)]
        quick: bool,
        /// The bronze-ingest executable to measure [default: the one next to lake-bench].
        #[arg(long)]
        bin: Option<PathBuf>,
        /// The report's section (its `## ` heading) to replace.
        #[arg(long, default_value = "bronze-ingest")]
        section: String,
    },
    /// Several bronze-ingest executables on the same export, interleaved round
    /// by round on one server (`just bench-bronze-image`): whether the image's
    /// binary is as fast as the host build, with the machine's drift spread
    /// over all of them.
    Binaries {
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
        /// Rounds; each runs every executable once, in turn.
        #[arg(long, default_value_t = 5)]
        rounds: u32,
        /// `NAME=PATH`, repeated; the first is the reference of the ratios.
        #[arg(long = "bin", required = true)]
        bins: Vec<String>,
        /// Where to write the Markdown report (its section is replaced).
        #[arg(long)]
        report: Option<PathBuf>,
        /// The report's section (its `## ` heading) to replace.
        #[arg(
            long,
            default_value = "bronze-ingest, the image's binary against the host build"
        )]
        section: String,
    },
}

#[derive(Debug)]
struct Measure {
    rows: u64,
    layout: Layout,
    copy_secs: f64,
    sorted_copy_secs: f64,
    bronze_secs: f64,
    peak_rss: u64,
    bytes: u64,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new()?;
    match cli.command {
        Bench::Bronze {
            rows,
            report,
            quick,
            bin,
            section,
        } => rt.block_on(bronze(rows, report, quick, bin, &section)),
        Bench::Binaries {
            rows,
            rounds,
            bins,
            report,
            section,
        } => rt.block_on(binaries(rows, rounds, &bins, report, &section)),
    }
}

async fn bronze(
    rows: u64,
    report: Option<PathBuf>,
    quick: bool,
    bin: Option<PathBuf>,
    section: &str,
) -> Result<()> {
    let bin = match bin {
        Some(bin) if bin.exists() => bin,
        Some(bin) => bail!("--bin {}: no such file", bin.display()),
        None => {
            let bin = std::env::current_exe()?.with_file_name("bronze-ingest");
            if !bin.exists() {
                bail!(
                    "{} is not built: cargo build --release -p bronze-ingest",
                    bin.display()
                );
            }
            bin
        }
    };
    let mut sizes = vec![rows];
    if !quick {
        sizes = vec![100_000, rows, 3_000_000];
        sizes.sort_unstable();
        sizes.dedup();
    }
    let mut results = Vec::new();
    for n in sizes {
        eprintln!("==> {n} rows");
        let pg = TestPostgres::start().await?;
        let client = pg.client().await?;
        demo::create_schema(&client).await?;
        let g = demo::generate(&client, n, 7).await?;
        eprintln!("    generated in {:.1}s", g.elapsed.as_secs_f64());
        client.batch_execute("VACUUM ANALYZE stop_events").await?;
        // The generator inserts events in random time order, the worst case for
        // the sorted read: measured once, at the headline size.
        if n == rows {
            results.push(measure(&bin, &pg, &client, n, Layout::Random).await?);
        }
        // An append-only event table lies on disk in time order (rows are
        // inserted as they occur), which CLUSTER reproduces.
        client
            .batch_execute("CLUSTER stop_events USING stop_events_occurred_at_idx")
            .await?;
        client.batch_execute("VACUUM ANALYZE stop_events").await?;
        results.push(measure(&bin, &pg, &client, n, Layout::TimeOrdered).await?);
    }
    let heading = format!("## {section}");
    let table = render(&heading, &bin, &results);
    println!("{table}");
    if let Some(path) = report {
        replace_section(&path, &heading, &table)?;
        eprintln!("==> written to {}", path.display());
    }
    Ok(())
}

/// How the table's rows lie on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// In time order, as in production.
    TimeOrdered,
    /// As generated, in random time order.
    Random,
}

/// COPY, sorted COPY (best of three each, warm cache) and bronze-ingest (best of two).
async fn measure(
    bin: &std::path::Path,
    pg: &TestPostgres,
    client: &tokio_postgres::Client,
    n: u64,
    layout: Layout,
) -> Result<Measure> {
    let copy_secs = best_copy(client, "SELECT * FROM stop_events").await?;
    let sorted_copy_secs = best_copy(
        client,
        "SELECT * FROM stop_events ORDER BY occurred_at, event_id",
    )
    .await?;
    let mut best: Option<Measure> = None;
    for _ in 0..2 {
        let run = run_bronze(bin, pg)?;
        let secs = run.secs;
        let m = Measure {
            rows: n,
            layout,
            copy_secs,
            sorted_copy_secs,
            bronze_secs: secs,
            peak_rss: run.peak_rss,
            bytes: run.bytes,
        };
        eprintln!(
            "    {layout:?}: COPY {copy_secs:.2}s, sorted {sorted_copy_secs:.2}s, bronze-ingest {secs:.2}s, peak RSS {} MiB",
            m.peak_rss >> 20
        );
        if best.as_ref().is_none_or(|b| m.bronze_secs < b.bronze_secs) {
            best = Some(m);
        }
    }
    best.context("no measurement")
}

/// One timed bronze-ingest run.
struct Run {
    secs: f64,
    peak_rss: u64,
    bytes: u64,
}

/// A whole first-batch export of `--dataset events` into a fresh local lake,
/// from process start to exit; peak RSS and bytes from its run report.
fn run_bronze(bin: &std::path::Path, pg: &TestPostgres) -> Result<Run> {
    let lake = tempfile::tempdir()?;
    let t = Instant::now();
    let mut cmd = Command::new(bin);
    cmd.env_clear();
    // jemalloc's run-time settings pass through, so their effect can be measured.
    if let Ok(conf) = std::env::var("_RJEM_MALLOC_CONF") {
        cmd.env("_RJEM_MALLOC_CONF", conf);
    }
    let out = cmd
        .envs(pg.env())
        .env("LAKE_URL", format!("file://{}", lake.path().display()))
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "warn")
        .args(["--dataset", "events"])
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    let secs = t.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let report = std::fs::read_dir(lake.path().join("_runs/bronze-ingest"))?
        .flatten()
        .next()
        .context("no run report")?;
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(report.path())?)?;
    Ok(Run {
        secs,
        peak_rss: json["peak_rss_bytes"].as_u64().unwrap_or_default(),
        bytes: json["datasets"][0]["bytes"].as_u64().unwrap_or_default(),
    })
}

/// `lake-bench binaries`: every executable exports the same time-ordered
/// table once per round, in turn; the table gives each one's best and median
/// and their ratios to the first.
async fn binaries(
    rows: u64,
    rounds: u32,
    bins: &[String],
    report: Option<PathBuf>,
    section: &str,
) -> Result<()> {
    let bins: Vec<(String, PathBuf)> = bins
        .iter()
        .map(|b| {
            let (name, path) = b
                .split_once('=')
                .with_context(|| format!("--bin {b}: expected NAME=PATH"))?;
            let path = PathBuf::from(path);
            if !path.exists() {
                bail!("--bin {b}: no such file {}", path.display());
            }
            Ok((name.to_owned(), path))
        })
        .collect::<Result<_>>()?;
    let pg = TestPostgres::start().await?;
    let client = pg.client().await?;
    demo::create_schema(&client).await?;
    demo::generate(&client, rows, 7).await?;
    client
        .batch_execute("CLUSTER stop_events USING stop_events_occurred_at_idx")
        .await?;
    client.batch_execute("VACUUM ANALYZE stop_events").await?;
    let copy_secs = best_copy(&client, "SELECT * FROM stop_events").await?;
    // One warm-up run each: the first run after generating pays for the cache.
    for (_, bin) in &bins {
        run_bronze(bin, &pg)?;
    }
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); bins.len()];
    let mut rss = vec![0u64; bins.len()];
    for round in 1..=rounds {
        for (i, (name, bin)) in bins.iter().enumerate() {
            let run = run_bronze(bin, &pg)?;
            eprintln!("    round {round}: {name} {:.2}s", run.secs);
            times[i].push(run.secs);
            rss[i] = rss[i].max(run.peak_rss);
        }
    }
    let stats: Vec<(f64, f64)> = times
        .iter_mut()
        .map(|t| {
            t.sort_by(f64::total_cmp);
            (t[0], t[t.len() / 2])
        })
        .collect();
    let heading = format!("## {section}");
    let mut s = format!("{heading}\n\n");
    let _ = writeln!(
        s,
        "`lake-bench binaries` on {}, {}: a whole first-batch export of {rows} time-ordered \
         rows (`--dataset events`, process start to exit) by each executable in turn, {rounds} \
         rounds after one warm-up run each, on one PostgreSQL 15 server and a local lake. \
         COPY of the same table: {copy_secs:.2} s. Ratios are to `{}`.\n",
        machine(),
        chrono::Utc::now().format("%Y-%m-%d"),
        bins[0].0,
    );
    s.push_str("| executable | best | median | best / reference | median / reference | median / COPY | peak RSS |\n");
    s.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
    for (i, (name, _)) in bins.iter().enumerate() {
        let (best, median) = stats[i];
        let _ = writeln!(
            s,
            "| {name} | {best:.2} s | {median:.2} s | {:.3}× | {:.3}× | {:.2}× | {} MiB |",
            best / stats[0].0,
            median / stats[0].1,
            median / copy_secs,
            rss[i] >> 20
        );
    }
    s.push('\n');
    println!("{s}");
    if let Some(path) = report {
        replace_section(&path, &heading, &s)?;
        eprintln!("==> written to {}", path.display());
    }
    Ok(())
}

/// "2 cores (CPU model)", for the reports.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    format!(
        "{} cores ({cpu})",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    )
}

/// Best wall time of three `COPY (query) TO STDOUT (FORMAT binary)` drained by a client.
async fn best_copy(client: &tokio_postgres::Client, query: &str) -> Result<f64> {
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let stream = client
            .copy_out(format!("COPY ({query}) TO STDOUT (FORMAT binary)").as_str())
            .await?;
        futures::pin_mut!(stream);
        let mut bytes = 0usize;
        while let Some(chunk) = stream.next().await {
            bytes += chunk?.len();
        }
        std::hint::black_box(bytes);
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

fn render(heading: &str, bin: &std::path::Path, results: &[Measure]) -> String {
    let mut s = format!("{heading}\n\n");
    let _ = writeln!(
        s,
        "`lake-bench bronze` on {}, {}: `{}` (release build), demo rows generated \
         by lake-testkit, PostgreSQL 15 on the same machine, lake in a local directory (`file://`). \
         *COPY* is `COPY (SELECT * FROM stop_events) TO STDOUT (FORMAT binary)` drained by a client \
         (best of 3, warm cache); *sorted* adds the `ORDER BY occurred_at, event_id` that bronze \
         needs for deterministic files; *bronze-ingest* is a whole first-batch run of `--dataset events` \
         (process start to exit: snapshot, sorted COPY, decoding, Parquet + zstd, manifest, run report; \
         best of 2); the ratio is bronze-ingest over COPY. *Time-ordered* is the table after \
         `CLUSTER … USING stop_events_occurred_at_idx`, how an append-only event table lies on disk; \
         *random* is the generator's random insertion order, a worst case for the sorted read. \
         Peak RSS is the process's VmHWM.\n",
        machine(),
        chrono::Utc::now().format("%Y-%m-%d"),
        bin.strip_prefix(std::env::current_dir().unwrap_or_default())
            .unwrap_or(bin)
            .display(),
    );
    s.push_str(
        "| rows | on-disk order | COPY | sorted | bronze-ingest | ratio | rows/s | peak RSS | Parquet size |\n",
    );
    s.push_str("|---:|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for m in results {
        let _ = writeln!(
            s,
            "| {} | {} | {:.2} s | {:.2} s | {:.2} s | {:.2}× | {:.0} | {} MiB | {:.1} MiB |",
            m.rows,
            match m.layout {
                Layout::TimeOrdered => "time-ordered",
                Layout::Random => "random",
            },
            m.copy_secs,
            m.sorted_copy_secs,
            m.bronze_secs,
            m.bronze_secs / m.copy_secs,
            m.rows as f64 / m.bronze_secs,
            m.peak_rss >> 20,
            m.bytes as f64 / 1_048_576.0
        );
    }
    s.push_str("\nTargets (issue #3): within 1.3× of COPY, peak RSS under 150 MB, and the same peak RSS (±20 %) at 100 000 and 3 000 000 rows.\n\n");
    s
}

/// Replaces the section starting with `heading` (up to the next `## `) in a
/// Markdown file, or appends it.
fn replace_section(path: &PathBuf, heading: &str, body: &str) -> Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n\n".into());
    let new = match old.find(heading) {
        Some(start) => {
            let rest = &old[start + heading.len()..];
            let end = rest
                .find("\n## ")
                .map_or(old.len(), |i| start + heading.len() + i + 1);
            format!("{}{}{}", &old[..start], body, &old[end..])
        }
        None => format!("{}\n{}", old.trim_end(), format_args!("\n\n{body}")),
    };
    std::fs::write(path, new)?;
    Ok(())
}
