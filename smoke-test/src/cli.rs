//! The command line: parses arguments, runs the checks, prints the table (or
//! JSON) on stdout and exits 0, 1 or 2 (SPEC §8). Shared by the `smoke-test`
//! binary and the `robson-lake` multi-call binary of the container image.

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;

use crate::Args;
use clap::Parser;
use lake_common::telemetry::{self, LogFormat};

/// Runs the command line with these arguments (the first is the program name).
pub fn main_from<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = Args::parse_from(args);
    telemetry::init(LogFormat::from_env());
    telemetry::finish(run(&args))
}

fn run(args: &Args) -> anyhow::Result<lake_common::ExitStatus> {
    telemetry::check_environment()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Like std::env::vars(), without panicking on a variable that is not UTF-8
    // (the config check then reports it as missing).
    let vars = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let report = runtime.block_on(crate::run(args, vars));
    let out = if args.json {
        report.to_json() + "\n"
    } else {
        report.to_table()
    };
    std::io::stdout().lock().write_all(out.as_bytes())?;
    let status = report.exit_status();
    tracing::debug!(
        exit_code = status as u8,
        failed = report.count(crate::Status::Fail),
        warnings = report.count(crate::Status::Warn),
        "Smoke test finished"
    );
    Ok(status)
}

/// `lake`: the lake's operator commands (today: `lake status`).
#[derive(Debug, Parser)]
#[command(
    name = "lake",
    version = lake_common::BUILD_VERSION,
    about = "Operator commands for the Robson lake",
    after_help = "Reads the lake named by S3_BUCKET or LAKE_URL (and AWS_*), as the jobs do; writes nothing.\n\
                  Exit codes: 0 fresh, 1 stale (or the lake could not be read), 2 bad configuration or arguments."
)]
struct LakeCli {
    #[command(subcommand)]
    command: LakeCommand,
}

#[derive(Debug, clap::Subcommand)]
enum LakeCommand {
    /// Per bronze dataset the newest committed batch, how fresh it is, a pending
    /// batch and its lease, files and bytes; the newest run of each job and its
    /// outcome. Exits 1 when bronze is older than 2 h or silver's last run than
    /// 26 h, so a CronJob running it fails and alerts.
    Status {
        /// One JSON object instead of the text.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `lake …` with these arguments (the first is the program name).
pub fn lake_main_from<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = LakeCli::parse_from(args);
    telemetry::init(LogFormat::from_env());
    telemetry::finish(lake_run(&cli))
}

fn lake_run(cli: &LakeCli) -> anyhow::Result<lake_common::ExitStatus> {
    use anyhow::Context as _;
    telemetry::check_environment()?;
    let LakeCommand::Status { json } = cli.command;
    let config = lake_common::LakeConfig::from_env()?;
    // Opened like a dry run: reading never creates a local lake's directory.
    let lake = lake_common::Lake::open_for_dry_run(&config)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let status = runtime
        .block_on(crate::status::read(&lake, chrono::Utc::now()))
        .with_context(|| format!("reading the status of {}", lake.description()))?;
    let out = if json {
        serde_json::to_string(&status)? + "\n"
    } else {
        status.to_text()
    };
    // A closed stdout (`| head`) is not an error.
    let _ = std::io::stdout().lock().write_all(out.as_bytes());
    Ok(status.exit_status())
}
