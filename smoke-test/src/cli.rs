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
