//! The command line: parse arguments, set up logging, load the configuration,
//! run, map the outcome to SPEC §8's exit codes. Shared by the `bronze-ingest`
//! binary and the `robson-lake` multi-call binary of the container image.

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::Duration;

use crate::{Datasets, Options};
use chrono::NaiveDate;
use clap::{Parser, ValueEnum};
use lake_common::telemetry::{self, LogFormat};

/// Export the Django event tables to bronze Parquet, exactly once.
#[derive(Debug, Parser)]
#[command(
    version = lake_common::BUILD_VERSION,
    about,
    long_about = None,
    after_help = after_help()
)]
struct Cli {
    /// Which dataset to export.
    #[arg(long, value_enum, default_value_t = DatasetArg::All)]
    dataset: DatasetArg,
    /// Read and report, but write nothing to the lake.
    #[arg(long)]
    dry_run: bool,
    /// Re-export one whole UTC day (backfill); supersedes the day's earlier files.
    /// With --verify: audit only that day.
    #[arg(long, conflicts_with_all = ["from", "to"])]
    date: Option<NaiveDate>,
    /// First day of a backfill range (with --to); with --verify, of the audit.
    #[arg(long, requires = "to")]
    from: Option<NaiveDate>,
    /// Last day of a backfill range (inclusive).
    #[arg(long, requires = "from")]
    to: Option<NaiveDate>,
    /// Compare per-day counts and sums between PostgreSQL and the lake; exit 3 on a mismatch.
    #[arg(long)]
    verify: bool,
    /// With --verify: audit only the last N UTC days, today included (what the
    /// daily verify CronJob runs: a window that does not grow with the lake).
    #[arg(
        long,
        requires = "verify",
        conflicts_with_all = ["date", "from", "to"],
        value_parser = clap::value_parser!(u32).range(1..=400)
    )]
    last_days: Option<u32>,
    /// Start the next batch over from the whole table (as a first batch does),
    /// committing only rows bronze does not hold yet; what to run once after a
    /// batch was refused because 2^31 transactions passed since the last one.
    #[arg(long, conflicts_with_all = ["date", "from", "verify"])]
    rebase: bool,
    /// Accept that columns captured earlier but not in the contract were
    /// dropped, renamed or changed their Parquet type: later files follow the
    /// table as it is now, earlier files keep theirs (docs/source-life.md).
    #[arg(long, conflicts_with = "verify")]
    accept_schema: bool,
    /// The incremental scan starts this long before the previous batch's snapshot.
    #[arg(long, env = "BRONZE_LOOKBACK", default_value = "24h", value_parser = humantime::parse_duration)]
    lookback: Duration,
    /// Warn when the transaction horizon has not moved for this long (an open
    /// transaction holds back every row committed after it).
    #[arg(long, env = "BRONZE_HORIZON_WARN", default_value = "1h", value_parser = humantime::parse_duration)]
    horizon_warn: Duration,
    /// Lease of a pending batch, in seconds (renewed every third of it).
    #[arg(long, env = "BRONZE_LEASE_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(3..))]
    lease_secs: u64,
}

fn after_help() -> String {
    format!(
        "Each run exports what committed since the last batch of each dataset (stop_events ->\n\
         bronze/events, outbox -> bronze/outbox) and writes a run report under _runs/.\n\
         bronze-ingest also reads BRONZE_LOOKBACK (24h), BRONZE_HORIZON_WARN (1h) and\n\
         BRONZE_LEASE_SECS (30).\n\n{}\n\n{}",
        lake_common::ENV_HELP,
        lake_common::EXIT_CODES_HELP
    )
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DatasetArg {
    Events,
    Outbox,
    All,
}

/// Runs the command line with these arguments (the first is the program name).
pub fn main_from<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let parsed = lake_common::cli::parse::<Cli, _, _>(args);
    telemetry::init(LogFormat::from_env());
    let result = (|| {
        let cli = parsed?;
        telemetry::check_environment()?;
        let (from, to) = match cli.last_days {
            Some(n) => {
                let today = chrono::Utc::now().date_naive();
                (
                    today.checked_sub_days(chrono::Days::new(u64::from(n) - 1)),
                    Some(today),
                )
            }
            None => (cli.from, cli.to),
        };
        let days = crate::days(cli.date, from, to)?;
        let config = lake_common::Config::from_env()?;
        let opts = Options {
            datasets: match cli.dataset {
                DatasetArg::Events => Datasets::Events,
                DatasetArg::Outbox => Datasets::Outbox,
                DatasetArg::All => Datasets::All,
            },
            dry_run: cli.dry_run,
            backfill_days: days,
            verify: cli.verify,
            rebase: cli.rebase,
            accept_schema: cli.accept_schema,
            horizon_warn: cli.horizon_warn,
            lookback: cli.lookback,
            lease: Duration::from_secs(cli.lease_secs),
        };
        let rt = tokio::runtime::Runtime::new()?;
        rt.block_on(crate::run(&config, &opts))
    })();
    telemetry::finish(result)
}
