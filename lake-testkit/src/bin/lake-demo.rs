//! `just demo`: the main job end to end on embedded defaults.
//!
//! A throwaway PostgreSQL with realistic demo data, bronze-ingest and then
//! silver-transform into a local lake directory, a readable summary, then more
//! events and a second (incremental) run. The jobs run as the real binaries, with
//! the same environment variables as in production, so what the demo shows is what
//! the CronJobs do.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use clap::Parser;
use lake_common::manifest::{self, BatchState};
use lake_common::{Dataset, Lake, LakeConfig, parquet_io};
use lake_testkit::{TestPostgres, demo};

/// Run the lake jobs end to end on a throwaway PostgreSQL and a local lake.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Demo events to generate (then 10 % more for the incremental run).
    #[arg(long, env = "DEMO_ROWS", default_value_t = 200_000)]
    rows: u64,
    /// The local lake directory (emptied first).
    #[arg(long, default_value = "lake")]
    lake: PathBuf,
    /// Seed of the demo data.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Keep the demo's PostgreSQL running afterwards (until Ctrl-C) and print
    /// the variables that point the jobs at it and at the lake.
    #[arg(long)]
    keep: bool,
    /// Also write the summary as JSON to this file (the demo's test reads it).
    #[arg(long)]
    summary_file: Option<PathBuf>,
}

/// What the demo did, printed at the end (and checked by the demo's test).
#[derive(Debug, Default, serde::Serialize)]
struct Summary {
    postgres_events: i64,
    postgres_outbox: i64,
    /// Distinct execution keys among execution events, by SQL (what silver must hold).
    postgres_executions: i64,
    bronze_events_rows: u64,
    bronze_outbox_rows: u64,
    bronze_files: usize,
    bronze_bytes: u64,
    silver_rows: u64,
    silver_files: usize,
    silver_bytes: u64,
    quarantine_files: usize,
    quarantine_rows: u64,
    seconds_bronze: Vec<f64>,
    seconds_silver: Vec<f64>,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(run(cli))
}

fn job_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.with_file_name(name);
    if !path.exists() {
        bail!(
            "{} is not built: run `cargo build --bin {name}` (`just demo` does)",
            path.display()
        );
    }
    Ok(path)
}

/// Runs a job binary with the demo's environment, echoing its summary.
fn run_job(name: &str, env: &[(String, String)]) -> Result<f64> {
    let started = Instant::now();
    let out = Command::new(job_binary(name)?)
        .env_clear()
        .envs(env.iter().cloned())
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("LOG_FORMAT", "text")
        .env("RUST_LOG", "warn")
        .output()
        .with_context(|| format!("starting {name}"))?;
    let secs = started.elapsed().as_secs_f64();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("    {line}");
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("{name} exited with {:?}:\n{stderr}", out.status.code());
    }
    Ok(secs)
}

async fn run(cli: Cli) -> Result<()> {
    let started = Instant::now();
    // Both jobs up front: a demo that silently skips a job would pass for one that works.
    for job in ["bronze-ingest", "silver-transform"] {
        job_binary(job)?;
    }
    prepare_lake_dir(&cli.lake)?;
    let lake_dir = std::fs::canonicalize(&cli.lake)?;

    let backend = match lake_testkit::Backend::current()? {
        lake_testkit::Backend::Native => "this machine's binaries",
        lake_testkit::Backend::Containers => "a container",
    };
    println!("==> Starting a throwaway PostgreSQL ({backend}; LAKE_TESTKIT chooses)");
    let pg = TestPostgres::start().await?;
    let client = pg.client().await?;
    demo::create_schema(&client).await?;
    pg.create_role("lake_reader", "demo-reader", true).await?;

    println!(
        "==> Generating {} demo events (seed {})",
        cli.rows, cli.seed
    );
    let now = SystemTime::now();
    let opts = demo::GenerateOptions::new(cli.rows, cli.seed).window_end(now);
    let g = demo::generate_with(&client, &opts).await?;
    println!(
        "    {} events and {} outbox rows in {:.1}s",
        g.events,
        g.outbox,
        g.elapsed.as_secs_f64()
    );

    let mut env = pg.env_as("lake_reader", "demo-reader");
    env.push(("LAKE_URL".into(), format!("file://{}", lake_dir.display())));
    let mut summary = Summary::default();

    for round in 1..=2 {
        if round == 2 {
            let more = (cli.rows / 10).max(1);
            println!("\n==> Inserting {more} more events, then the incremental run");
            let opts = demo::GenerateOptions::new(more, cli.seed + 1)
                .window_end(SystemTime::now())
                .window(Duration::from_secs(3600));
            demo::generate_with(&client, &opts).await?;
        }
        println!("\n==> bronze-ingest (run {round})");
        summary.seconds_bronze.push(run_job("bronze-ingest", &env)?);
        println!("\n==> silver-transform (run {round})");
        summary
            .seconds_silver
            .push(run_job("silver-transform", &env)?);
    }

    summary.postgres_events = client
        .query_one("SELECT count(*) FROM stop_events", &[])
        .await?
        .get(0);
    summary.postgres_outbox = client
        .query_one("SELECT count(*) FROM outbox", &[])
        .await?
        .get(0);
    summary.postgres_executions = client
        .query_one(
            "SELECT count(DISTINCT coalesce(nullif(execution_token, ''), 'operation:' || operation_id)) FROM stop_events \
             WHERE event_type IN ('STOP_TRIGGERED','EXECUTION_SUBMITTED','EXECUTED','FAILED','BLOCKED')",
            &[],
        )
        .await?
        .get(0);
    let lake = Lake::open(&LakeConfig::local(&lake_dir))?;
    for (ds, rows) in [
        (Dataset::BronzeEvents, &mut summary.bronze_events_rows),
        (Dataset::BronzeOutbox, &mut summary.bronze_outbox_rows),
    ] {
        let log = manifest::BronzeLog::load(&lake, ds).await?;
        anyhow::ensure!(
            log.latest()
                .is_none_or(|m| m.state == BatchState::Committed),
            "{ds}: a batch is pending"
        );
        for f in log.live_files().into_iter().map(|f| f.file) {
            *rows += f.rows;
            summary.bronze_files += 1;
            summary.bronze_bytes += f.bytes;
        }
    }
    let silver_files = parquet_files(&lake_dir.join(Dataset::SilverStopExecutions.dir()));
    summary.silver_files = silver_files.len();
    summary.silver_bytes = silver_files.iter().map(|(_, b)| b).sum();
    summary.silver_rows =
        parquet_io::count_rows(&lake, lake_paths(&lake_dir, &silver_files)).await?;
    let quarantine = parquet_files(&lake_dir.join(Dataset::QuarantineStopExecutions.dir()));
    summary.quarantine_files = quarantine.len();
    summary.quarantine_rows =
        parquet_io::count_rows(&lake, lake_paths(&lake_dir, &quarantine)).await?;

    print_summary(&summary, &lake_dir, started.elapsed());
    if cli.keep {
        println!("\n==> PostgreSQL stays up until Ctrl-C. In another shell:");
        for (k, v) in &env {
            println!("    export {k}='{v}'");
        }
        println!(
            "    target/debug/bronze-ingest --help   # then bronze-ingest, silver-transform, ..."
        );
        tokio::signal::ctrl_c().await?;
    }
    if let Some(path) = &cli.summary_file {
        std::fs::write(path, serde_json::to_vec_pretty(&summary)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Empties the lake directory, refusing to touch one that does not look like a lake.
fn prepare_lake_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        let looks_like_lake = std::fs::read_dir(dir)?.filter_map(|e| e.ok()).all(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            matches!(name.as_str(), "bronze" | "silver" | "_runs" | "_smoke")
        });
        if !looks_like_lake {
            bail!(
                "{} holds other files than a lake: choose another --lake directory",
                dir.display()
            );
        }
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    Ok(())
}

fn parquet_files(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                if !e.file_name().to_string_lossy().starts_with('_') {
                    stack.push(p);
                }
            } else if p.extension().is_some_and(|x| x == "parquet") {
                out.push((p, e.metadata().map(|m| m.len()).unwrap_or(0)));
            }
        }
    }
    out.sort();
    out
}

/// Local files as paths relative to the lake root.
fn lake_paths(root: &Path, files: &[(PathBuf, u64)]) -> Vec<object_store::path::Path> {
    files
        .iter()
        .filter_map(|(p, _)| p.strip_prefix(root).ok())
        .map(|p| object_store::path::Path::from(p.to_string_lossy().as_ref()))
        .collect()
}

fn print_summary(s: &Summary, lake: &Path, took: Duration) {
    let mb = |b: u64| b as f64 / 1_048_576.0;
    println!("\n==> Summary ({:.1}s in all)", took.as_secs_f64());
    println!(
        "    PostgreSQL       {:>9} events, {:>9} outbox rows",
        s.postgres_events, s.postgres_outbox
    );
    println!(
        "    bronze           {:>9} events, {:>9} outbox row versions in {} files ({:.1} MiB)",
        s.bronze_events_rows,
        s.bronze_outbox_rows,
        s.bronze_files,
        mb(s.bronze_bytes)
    );
    println!(
        "    silver           {:>9} executions in {} files ({:.1} MiB); {} quarantined in {} files \
         (PostgreSQL has {} execution keys)",
        s.silver_rows,
        s.silver_files,
        mb(s.silver_bytes),
        s.quarantine_rows,
        s.quarantine_files,
        s.postgres_executions
    );
    println!(
        "    bronze-ingest runs took {} s; silver-transform runs {} s",
        secs(&s.seconds_bronze),
        secs(&s.seconds_silver)
    );
    println!("    lake written to {}", lake.display());
    println!(
        "\nQuery it:\n  DuckDB:  SELECT status, count(*) FROM read_parquet('{0}/silver/stop_executions/*/*/*.parquet', hive_partitioning=true) GROUP BY 1;\n  \
         pyarrow: pyarrow.dataset.dataset('{0}/bronze/events', format='parquet', partitioning='hive').to_table()\n  \
         Spark:   spark.read.parquet('file://{0}/silver/stop_executions').groupBy('status').count().show()",
        lake.display()
    );
}

fn secs(v: &[f64]) -> String {
    let each: Vec<String> = v.iter().map(|s| format!("{s:.2}")).collect();
    each.join(" and ")
}
