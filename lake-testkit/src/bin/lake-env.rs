//! `lake-env -- COMMAND…`: runs a command against a throwaway PostgreSQL (demo
//! schema, demo rows, a read-only role) and a real S3 endpoint with a fresh
//! bucket, passing the jobs' environment variables (SPEC §8) to it. Used by the
//! container image test, which runs the jobs inside podman on the host network.

use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};
use clap::Parser;
use lake_testkit::{TestPostgres, TestS3, demo};

#[derive(Debug, Parser)]
#[command(
    about = "Run a command with DJANGO_DB_* and AWS_*/S3_BUCKET pointing at throwaway services"
)]
struct Cli {
    /// Demo events to generate.
    #[arg(long, default_value_t = 5_000)]
    rows: u64,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, required = true)]
    command: Vec<String>,
}

fn main() -> Result<ExitCode> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let (pg, s3) = tokio::join!(TestPostgres::start(), TestS3::start());
        let (pg, s3) = (pg?, s3?);
        let client = pg.client().await?;
        demo::create_schema(&client).await?;
        demo::generate(&client, cli.rows, 1).await?;
        pg.create_role("lake_reader", "lake-env-reader", true)
            .await?;
        let bucket = s3.new_bucket().await?;
        let Some((program, args)) = cli.command.split_first() else {
            bail!("no command given")
        };
        let status = Command::new(program)
            .args(args)
            .envs(pg.env_as("lake_reader", "lake-env-reader"))
            .envs(s3.env(&bucket))
            .status()
            .with_context(|| format!("running {program}"))?;
        Ok(ExitCode::from(
            status.code().unwrap_or(1).clamp(0, 255) as u8
        ))
    })
}
