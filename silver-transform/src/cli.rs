//! The command line (SPEC §8), kept out of `main.rs` so tests can parse it too.

use std::time::Duration;

use chrono::NaiveDate;
use clap::Parser;
use lake_common::{Classified, ExitStatus};

use crate::key::Shard;
use crate::{Mode, Options};

fn after_help() -> String {
    format!(
        "silver-transform reads only the lake (no database), except on a store without\n\
         conditional writes, where it holds a PostgreSQL advisory lock per shard and needs\n\
         the DJANGO_DB_* settings. It also reads SILVER_MAX_VIOLATION_RATIO (0.01),\n\
         SILVER_SHARD_COUNT (1) and JOB_COMPLETION_INDEX (0).\n\n{}\n\n{}",
        lake_common::ENV_HELP,
        lake_common::EXIT_CODES_HELP
    )
}

/// Build silver.stop_executions from bronze.events: incremental, validated,
/// quarantined, summarised.
///
/// By default the run reads the bronze batches committed since the last silver
/// run and recomputes exactly the partitions they affect.
#[derive(Debug, Parser)]
#[command(
    name = "silver-transform",
    version = lake_common::BUILD_VERSION,
    about,
    long_about = None,
    after_help = after_help()
)]
pub struct Args {
    /// Also recompute every partition of this UTC day.
    #[arg(long, conflicts_with_all = ["from", "to", "full_refresh"])]
    pub date: Option<NaiveDate>,
    /// First day of a range to recompute (with --to).
    #[arg(long, requires = "to", conflicts_with = "full_refresh")]
    pub from: Option<NaiveDate>,
    /// Last day (inclusive) of a range to recompute.
    #[arg(long, requires = "from", conflicts_with = "full_refresh")]
    pub to: Option<NaiveDate>,
    /// Ignore silver's state and rebuild the shard's partitions from all of bronze.
    #[arg(long)]
    pub full_refresh: bool,
    /// Compute and report everything, but write nothing to the lake.
    #[arg(long)]
    pub dry_run: bool,
    /// Fail (exit 3) when more than this share of executions breaks a quality rule.
    #[arg(
        long,
        env = "SILVER_MAX_VIOLATION_RATIO",
        default_value_t = 0.01,
        value_parser = parse_ratio
    )]
    pub max_violation_ratio: f64,
    /// This shard's index (an Indexed Job sets JOB_COMPLETION_INDEX).
    #[arg(long, env = "JOB_COMPLETION_INDEX", default_value_t = 0)]
    pub shard_index: u32,
    /// Number of shards; clients are split by client_id modulo this.
    #[arg(long, env = "SILVER_SHARD_COUNT", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub shard_count: u32,
    /// Lease of the pending silver version, in seconds (renewed every third of it).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(2..))]
    pub lease_secs: u64,
    /// Days folded concurrently (memory grows with it).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub parallel_days: u64,
    /// Bronze rows read and folded at a time: a day holding more is folded in
    /// time windows. Memory follows it (~350 bytes a row, --parallel-days
    /// windows in flight). Default: a quarter of the memory budget.
    #[arg(long, value_parser = clap::value_parser!(u64).range(crate::memory::MIN_WINDOW_ROWS..=1 << 40))]
    pub fold_window_rows: Option<u64>,
    /// Fold everything in this many key-hash passes, each reading bronze
    /// again (the earlier passes' rows wait under TMPDIR). Default: the fewest
    /// the memory budget needs, 1 unless a full refresh's executions do not
    /// fit it (docs/silver.md, "Memory and speed").
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::memory::MAX_PASSES)))]
    pub fold_passes: Option<u32>,
    /// The memory the run may use, MiB. Default: 80 % of the container's
    /// memory limit (cgroup), else 512. Sizes the fold windows; a run that
    /// held more warns and reports it (docs/silver.md, "Memory and speed").
    #[arg(long, env = "SILVER_MEMORY_MB", value_parser = clap::value_parser!(u64).range(64..=1 << 24))]
    pub memory_mb: Option<u64>,
    /// TEST ONLY: sleep this long after publishing each partition, so a test can
    /// kill the process in the middle of a rewrite. Never set it in production.
    #[arg(long, env = "SILVER_TEST_PAUSE_AFTER_PUBLISH_MS", hide = true)]
    pub test_pause_after_publish_ms: Option<u64>,
}

fn parse_ratio(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number; use a ratio such as 0.01 for 1 %"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!(
            "{v} is not within 0..=1; use a ratio such as 0.01 for 1 %"
        ))
    }
}

fn usage(msg: String) -> anyhow::Error {
    anyhow::Error::new(Classified::new(ExitStatus::Usage, msg))
}

impl Args {
    /// Checks the combinations clap cannot express and builds the run options.
    pub fn into_options(self) -> anyhow::Result<Options> {
        if self.shard_index >= self.shard_count {
            return Err(usage(format!(
                "--shard-index (JOB_COMPLETION_INDEX) is {} but must be below --shard-count (SILVER_SHARD_COUNT) {}",
                self.shard_index, self.shard_count
            )));
        }
        let mode = match (self.full_refresh, self.date, self.from, self.to) {
            (true, ..) => Mode::FullRefresh,
            (false, Some(d), _, _) => Mode::Days { from: d, to: d },
            (false, None, Some(from), Some(to)) if from <= to => Mode::Days { from, to },
            (false, None, Some(from), Some(to)) => {
                return Err(usage(format!("--from {from} is after --to {to}")));
            }
            _ => Mode::Incremental,
        };
        let memory = crate::memory::Budget::detect(self.memory_mb);
        let parallel_days = self.parallel_days as usize;
        Ok(Options {
            mode,
            dry_run: self.dry_run,
            max_violation_ratio: self.max_violation_ratio,
            shard: Shard {
                index: self.shard_index,
                count: self.shard_count,
            },
            lease: Duration::from_secs(self.lease_secs),
            parallel_days,
            pause_after_publish: self.test_pause_after_publish_ms.map(Duration::from_millis),
            pushgateway: lake_common::metrics::Pushgateway::from_env_or_warn(),
            window_rows: self
                .fold_window_rows
                .unwrap_or_else(|| memory.window_rows(parallel_days)),
            fold_passes: self.fold_passes,
            memory,
            ..Options::default()
        })
    }
}

/// Runs the command line with these arguments (the first is the program name):
/// parse, set up logging, load the lake configuration, run, map the outcome to
/// SPEC §8's exit codes. Shared by the `silver-transform` binary and the
/// `robson-lake` multi-call binary of the container image.
pub fn main_from<I, T>(args: I) -> std::process::ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use lake_common::telemetry::{self, LogFormat};
    let parsed = lake_common::cli::parse::<Args, _, _>(args);
    telemetry::init(LogFormat::from_env());
    let result = (|| {
        let args = parsed?;
        telemetry::check_environment()?;
        let options = args.into_options()?;
        let config = lake_common::LakeConfig::from_env()?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        rt.block_on(crate::run_cli(config, options))
    })();
    telemetry::finish(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("silver-transform").chain(args.iter().copied()))
    }

    #[test]
    fn modes() {
        let o = parse(&[]).unwrap().into_options().unwrap();
        assert_eq!(o.mode, Mode::Incremental);
        assert_eq!(o.shard, Shard::ALL);
        let o = parse(&["--date", "2025-06-01"])
            .unwrap()
            .into_options()
            .unwrap();
        assert!(matches!(o.mode, Mode::Days { from, to } if from == to));
        let o = parse(&["--full-refresh", "--dry-run"])
            .unwrap()
            .into_options()
            .unwrap();
        assert_eq!(o.mode, Mode::FullRefresh);
        assert!(o.dry_run);
    }

    #[test]
    fn bad_arguments_are_usage_errors() {
        assert!(parse(&["--date", "2025-06-01", "--full-refresh"]).is_err());
        assert!(parse(&["--from", "2025-06-01"]).is_err());
        assert!(parse(&["--max-violation-ratio", "2"]).is_err());
        assert!(parse(&["--shard-count", "0"]).is_err());
        let e = parse(&["--shard-index", "2", "--shard-count", "2"])
            .unwrap()
            .into_options()
            .unwrap_err();
        assert_eq!(
            lake_common::telemetry::exit_status_of(e.as_ref()),
            ExitStatus::Usage
        );
        let e = parse(&["--from", "2025-06-02", "--to", "2025-06-01"])
            .unwrap()
            .into_options()
            .unwrap_err();
        assert!(e.to_string().contains("after"));
    }
}
