//! Test harness shared by every test, the demo and the benchmarks of the workspace.
//!
//! The lake jobs are only as correct as their behaviour against the real systems
//! around them, so this crate provides those systems, throwaway and isolated per
//! test, instead of mocks:
//!
//! * [`TestPostgres`]: a PostgreSQL server of its own, with a database `robson`
//!   and a password-protected superuser;
//! * [`TestS3`]: a real S3 HTTP endpoint (moto), with a bucket per test;
//! * [`FaultProxy`]: a fault-injecting proxy in front of it (lost answers,
//!   `503 SlowDown`, resets, slow answers, truncated bodies, ignored
//!   conditional headers), with a request log;
//! * [`TestPushgateway`]: a Prometheus Pushgateway, for the jobs' metrics;
//! * [`terminal`]: a job run on a pseudo-terminal, and the screen it leaves;
//! * [`demo`]: the Django source tables of SPEC §2 and a deterministic generator of
//!   realistic data that loads a million rows in seconds.
//!
//! Both servers run from this machine's binaries or in containers, as
//! `LAKE_TESTKIT` chooses ([`Backend`]):
//!
//! * **native**: `TestPostgres` runs `initdb` and `postgres` of this machine
//!   (`PG_BINDIR`, `pg_config`, Debian's `/usr/lib/postgresql/*/bin`; as root
//!   as the `postgres` account) with its cluster, socket and log in a temporary
//!   directory `lake-testkit-pg-*`; `TestS3` runs `moto_server` of the
//!   workspace's `.venv` (or `MOTO_SERVER`, or `PATH`) with its log in
//!   `lake-testkit-s3-*` and its objects in memory.
//! * **containers**: the same servers, set up the same way, in containers of a
//!   Docker-compatible engine (`DOCKER_HOST` or `/var/run/docker.sock`),
//!   started with the `testcontainers` crate; their data lives in the
//!   container and goes with it. Images: `LAKE_TESTKIT_POSTGRES_IMAGE`
//!   (default `postgres:15-bookworm`) and `LAKE_TESTKIT_S3_IMAGE` (default
//!   `motoserver/moto:5.2.5`). Tests that need a data directory, the server
//!   tools, a restart, a replica or an upgrade use
//!   [`TestPostgres::start_native`].
//!
//! `auto`, the default, takes containers when an engine answers, else native.
//! Everything stops and cleans up on drop. The crate is `publish = false` and only
//! ever a dev-dependency.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use lake_testkit::{TestPostgres, TestS3, demo};
//!
//! let pg = TestPostgres::start().await?;
//! let client = pg.client().await?;
//! demo::create_schema(&client).await?;
//! let report = demo::generate(&client, 10_000, 42).await?;
//! assert_eq!(report.events, 10_000);
//!
//! let s3 = TestS3::start().await?;
//! let bucket = s3.new_bucket().await?;
//! let env = [pg.env(), s3.env(&bucket)].concat(); // pass to the job under test
//! # let _ = env;
//! # Ok(())
//! # }
//! ```

mod allocator;
mod container;
pub mod demo;
pub mod failpoint;
mod faults;
pub mod glob;
mod http;
pub mod output;
mod postgres;
mod process;
mod pushgateway;
mod s3;
pub mod terminal;
mod tls;

pub use allocator::{JemallocSettings, jemalloc_settings};
pub use container::Backend;
pub use faults::{Fault, FaultProxy, LoggedRequest, Rule, S3Op, endpoint_time};
pub use http::HttpResponse;
pub use postgres::TestPostgres;
pub use pushgateway::TestPushgateway;
pub use s3::TestS3;
pub use tls::{ServerCert, TestCa};

/// A random number from the standard library's per-process hash keys (enough for
/// unique names and throwaway passwords, without a `rand` dependency).
pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    hasher.finish()
}

/// The message of the last ERROR record a job logged as JSON (`LOG_FORMAT=json`):
/// the one line a person reads when the run fails; empty when there is none.
pub fn error_line(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .rfind(|l| l.contains("\"level\":\"ERROR\""))
        .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .and_then(|v| v["message"].as_str().map(str::to_owned))
        .unwrap_or_default()
}
