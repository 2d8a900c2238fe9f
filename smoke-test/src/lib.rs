//! `smoke-test`: proves, from where the jobs run, that they will work.
//!
//! Existence checks ("the bucket has objects") pass on deployments that cannot
//! ingest a single row. This binary instead does what the jobs do, on a small
//! scale and with the jobs' own code paths: it loads the configuration with the
//! jobs' loader, connects to PostgreSQL with the configured sslmode, checks the
//! source tables against the bronze contract, opens a REPEATABLE READ snapshot,
//! writes, reads, multipart-uploads and conditionally creates objects in the lake,
//! and reads the manifests. Last, it proves the NetworkPolicies are enforced by
//! trying an egress they forbid. Every finding is one line with a fix.
//!
//! With `--cluster` it checks the Kubernetes side instead, from a workstation with
//! a kubeconfig: namespaces, quotas, default-deny policies, Secrets (by name), and
//! the analytics node.
//!
//! Every check runs under its own timeout, so a black-holed endpoint is a `FAIL`
//! line, never a hang.

pub mod checks;
pub mod cli;
pub mod report;
pub mod status;

use std::time::Duration;

use clap::Parser;

pub use report::{CheckResult, Report, Status};

/// Command-line arguments.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "smoke-test",
    version,
    about = "Checks that the lake jobs can reach and use PostgreSQL and S3 from here; prints a fix for every failure",
    after_help = "Checks: config, dns.*, postgres.*, s3.*, lake.*, network.egress_blocked (or cluster.* with --cluster).\n\
                  Each prints PASS, WARN, FAIL or SKIP (not run because a check it needs failed).\n\
                  Exit codes: 0 no failure (warnings allowed), 1 a check failed, 2 bad configuration or arguments.\n\
                  Configuration: the environment of the jobs (DJANGO_DB_*, AWS_*, S3_BUCKET or LAKE_URL; see the README)."
)]
pub struct Args {
    /// Print a JSON array with one {name, status, detail, fix} object per check
    /// instead of the table.
    #[arg(long)]
    pub json: bool,

    /// Check the Kubernetes side with kubectl instead (namespaces, ResourceQuotas,
    /// default-deny NetworkPolicies, Secrets by name, the analytics node); meant for
    /// a workstation with a kubeconfig, needs no DJANGO_DB_* or S3 settings.
    #[arg(long)]
    pub cluster: bool,

    /// Only check the configuration and DNS; open no connection and write nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Seconds each check may take before it fails as timed out.
    #[arg(long, value_name = "SECS", default_value_t = 20,
          value_parser = clap::value_parser!(u64).range(1..=600))]
    pub timeout: u64,
}

impl Args {
    /// The per-check time limit.
    pub fn check_timeout(&self) -> Duration {
        Duration::from_secs(self.timeout)
    }
}

/// Runs the checks selected by `args` against the configuration in `vars` (the
/// process environment in production) and returns their results.
pub async fn run(args: &Args, vars: Vec<(String, String)>) -> Report {
    let mut report = Report::default();
    let limit = args.check_timeout();
    if args.cluster {
        checks::cluster::run(limit, args.dry_run, &mut report).await;
        return report;
    }

    let api_server = checks::network::api_server(&vars);
    let (result, config) = checks::config::check(vars);
    report.push(result);
    let Some(config) = config else {
        let why = format!("not run: {} failed", checks::config::NAME);
        report.skip_all(checks::dns::NAMES, &why);
        report.skip_all(checks::postgres::NAMES, &why);
        report.skip_all(checks::s3::NAMES, &why);
        report.skip_all(checks::lake::NAMES, &why);
        report.skip_all(checks::network::NAMES, &why);
        return report;
    };

    checks::dns::run(&config, limit, &mut report).await;
    if args.dry_run {
        let why = "not run: --dry-run";
        report.skip_all(checks::postgres::NAMES, why);
        report.skip_all(checks::s3::NAMES, why);
        report.skip_all(checks::lake::NAMES, why);
        report.skip_all(checks::network::NAMES, why);
        return report;
    }

    // PostgreSQL and the lake are independent: check them side by side so a
    // black-holed endpoint costs one timeout, not two.
    let mut pg_report = Report::default();
    let mut lake_report = Report::default();
    // dns.s3 is skipped for a local lake, which still gets the store checks.
    let dns_pg = !report.failed(checks::dns::POSTGRES);
    let dns_s3 = !report.failed(checks::dns::S3);
    let (_, _, network) = tokio::join!(
        async {
            if dns_pg {
                checks::postgres::run(&config.postgres, limit, &mut pg_report).await;
            } else {
                let why = format!("not run: {} failed", checks::dns::POSTGRES);
                pg_report.skip_all(checks::postgres::NAMES, &why);
            }
        },
        async {
            if dns_s3 {
                let lake = checks::s3::run(&config.lake, limit, &mut lake_report).await;
                checks::lake::run(lake.as_ref(), limit, &mut lake_report).await;
            } else {
                let why = format!("not run: {} failed", checks::dns::S3);
                lake_report.skip_all(checks::s3::NAMES, &why);
                lake_report.skip_all(checks::lake::NAMES, &why);
            }
        },
        checks::network::check(api_server, limit)
    );
    for r in pg_report.results().iter().chain(lake_report.results()) {
        report.push(r.clone());
    }
    report.push(network);
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        Args::parse_from(std::iter::once("smoke-test").chain(extra.iter().copied()))
    }

    /// A local lake has no endpoint to resolve, and every store and lake check
    /// still runs against it; PostgreSQL failing does not stop them.
    #[tokio::test]
    async fn local_lake_runs_the_store_checks_without_dns() {
        let dir = tempfile::tempdir().unwrap();
        let vars: Vec<(String, String)> = [
            ("DJANGO_DB_HOST", "127.0.0.1"),
            ("DJANGO_DB_PORT", "1"),
            ("DJANGO_DB_NAME", "robson"),
            ("DJANGO_DB_USER", "reader"),
            ("DJANGO_DB_PASSWORD", "pw"),
            ("DJANGO_DB_SSLMODE", "disable"),
            ("LAKE_URL", &format!("file://{}", dir.path().display())),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let report = run(&args(&["--timeout", "5"]), vars).await;
        let status = |n: &str| report.get(n).map(|r| r.status);
        assert_eq!(status("dns.s3"), Some(Status::Skip));
        assert_eq!(status("postgres.connect"), Some(Status::Fail));
        for name in checks::s3::NAMES {
            assert_eq!(
                status(name),
                Some(Status::Pass),
                "{name}: {:?}",
                report.get(name)
            );
        }
        assert_eq!(status("lake.manifests"), Some(Status::Pass));
        assert_eq!(status("lake.bronze_freshness"), Some(Status::Warn));
        assert_eq!(report.exit_status(), lake_common::ExitStatus::Failure);
    }
}
