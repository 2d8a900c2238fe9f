//! Shared plumbing of the Robson lake jobs.
//!
//! Everything two jobs must agree on lives here, so they cannot disagree: the
//! environment they read ([`config`]), where files go ([`paths`]), what the files
//! hold ([`schema`]), how the store and the database are reached ([`store`],
//! [`postgres`]), and how a run ends ([`telemetry`]).

pub mod cli;
pub mod commit;
pub mod config;
pub mod contract;
pub mod dictionary;
pub mod failpoint;
pub mod manifest;
pub mod metrics;
pub mod parquet_io;
pub mod paths;
pub mod postgres;
pub mod report;
pub mod schema;
pub mod store;
pub mod telemetry;

/// `<crate version> (commit <git commit>)`, what every binary's `--version` says.
pub const BUILD_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("LAKE_GIT_COMMIT"),
    ")"
);

/// The exit codes of SPEC §8, for every binary's `--help`.
pub const EXIT_CODES_HELP: &str = "Exit codes:
  0  success (also \"nothing new\")
  1  runtime failure (unreachable service, I/O error, fail-closed safety stop)
  2  bad configuration, arguments or source schema
  3  data-quality threshold breached (the run report was written)
  4  another run holds the batch; this run wrote nothing";

/// The environment every job reads, for `--help` (the README has the full table).
pub const ENV_HELP: &str = "Environment (the cluster secrets' names):
  PostgreSQL  DJANGO_DB_HOST, DJANGO_DB_PORT (5432), DJANGO_DB_NAME, DJANGO_DB_USER,
              DJANGO_DB_PASSWORD, DJANGO_DB_SSLMODE (prefer: disable|prefer|require|verify-full),
              DJANGO_DB_SSLROOTCERT, DJANGO_DB_STATEMENT_TIMEOUT (30min)
  Lake        S3_BUCKET or LAKE_URL (s3://bucket/prefix, file:///path, a directory),
              AWS_ENDPOINT (AWS; https unless http:// is given), AWS_REGION (us-east-1),
              AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, S3_CONDITIONAL_WRITES (enabled),
              S3_MAX_RETRIES (10), S3_TIMEOUT_SECS (10)
  Logs        LOG_FORMAT (text on a terminal, else json), RUST_LOG (info)
  Metrics     PUSHGATEWAY_URL (unset: no pushes)
  Schedules   LAKE_BUSY_OK (false; true: exit 0, not 4, when another run holds the work)";

pub use config::{Config, ConfigError, LakeConfig, PostgresConfig, Secret, SslMode};
pub use paths::{Dataset, Partition};
pub use store::Lake;
pub use telemetry::{Classified, ExitStatus};
