//! `smoke-test`: see the library docs. Parses arguments, runs the checks, prints
//! the table (or JSON) on stdout and exits 0, 1 or 2 (SPEC §8).

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use lake_common::telemetry::{self, LogFormat};
use smoke_test::Args;

fn main() -> ExitCode {
    let args = Args::parse();
    telemetry::init(LogFormat::from_env());
    telemetry::finish(run(&args))
}

fn run(args: &Args) -> anyhow::Result<lake_common::ExitStatus> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Like std::env::vars(), without panicking on a variable that is not UTF-8
    // (the config check then reports it as missing).
    let vars = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let report = runtime.block_on(smoke_test::run(args, vars));
    let out = if args.json {
        report.to_json() + "\n"
    } else {
        report.to_table()
    };
    std::io::stdout().lock().write_all(out.as_bytes())?;
    let status = report.exit_status();
    tracing::debug!(
        exit_code = status as u8,
        failed = report.count(smoke_test::Status::Fail),
        warnings = report.count(smoke_test::Status::Warn),
        "Smoke test finished"
    );
    Ok(status)
}
