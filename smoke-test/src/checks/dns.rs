//! Check 2: the database host and the S3 endpoint resolve.
//!
//! In the cluster, DNS is the first thing a default-deny NetworkPolicy breaks
//! (egress to kube-dns must be allowed explicitly), and a resolver that is
//! black-holed does not fail, it hangs; so the lookup runs under the check timeout
//! and its failure says which policy to look at. Runs in `--dry-run` too.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use lake_common::Config;
use lake_common::config::LakeLocation;

use super::{error_chain, timed};
use crate::report::{CheckResult, Report};

/// `DJANGO_DB_HOST` resolves.
pub const POSTGRES: &str = "dns.postgres";
/// The S3 endpoint's host resolves.
pub const S3: &str = "dns.s3";
/// The checks of this module, in order.
pub const NAMES: &[&str] = &[POSTGRES, S3];

const TIMEOUT_FIX: &str = "DNS does not answer: allow egress to kube-dns (UDP and TCP 53) \
                           in the allow-dns NetworkPolicy, and check the node's resolver";

/// Resolves the two hosts and records one result for each.
pub async fn run(config: &Config, limit: Duration, report: &mut Report) {
    let pg = &config.postgres;
    let pg_result = timed(
        POSTGRES,
        limit,
        TIMEOUT_FIX,
        resolve(POSTGRES, "DJANGO_DB_HOST", &pg.host, pg.port),
    );
    let s3_result = async {
        match &config.lake.location {
            LakeLocation::S3(s3) => {
                let (host, port, variable) = match &s3.endpoint {
                    Some(url) => (
                        url.host_str().unwrap_or_default().to_owned(),
                        url.port_or_known_default().unwrap_or(443),
                        "AWS_ENDPOINT",
                    ),
                    None => (format!("s3.{}.amazonaws.com", s3.region), 443, "AWS_REGION"),
                };
                timed(S3, limit, TIMEOUT_FIX, resolve(S3, variable, &host, port)).await
            }
            other => CheckResult::skip(
                S3,
                format!(
                    "the lake is {}: no S3 endpoint",
                    match other {
                        LakeLocation::Local(p) => format!("local (file://{})", p.display()),
                        _ => "in memory".to_owned(),
                    }
                ),
            ),
        }
    };
    let (a, b) = tokio::join!(pg_result, s3_result);
    report.push(a);
    report.push(b);
}

async fn resolve(name: &'static str, variable: &str, host: &str, port: u16) -> CheckResult {
    // IPv6 literals come bracketed from URLs.
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<IpAddr>().is_ok() {
        return CheckResult::pass(name, format!("{host} is an IP address ({variable})"));
    }
    if host.starts_with('/') {
        return CheckResult::pass(
            name,
            format!("{host} is a unix socket directory ({variable})"),
        );
    }
    match tokio::net::lookup_host((host, port)).await {
        Ok(addrs) => {
            let ips: BTreeSet<IpAddr> = addrs.map(|a: SocketAddr| a.ip()).collect();
            if ips.is_empty() {
                return CheckResult::fail(
                    name,
                    format!("{host} ({variable}) resolves to no address"),
                    format!("check {variable} and the DNS records of {host}"),
                );
            }
            let shown: Vec<String> = ips.iter().take(4).map(ToString::to_string).collect();
            let more = if ips.len() > 4 { ", ..." } else { "" };
            CheckResult::pass(
                name,
                format!("{host} resolves to {}{more}", shown.join(", ")),
            )
        }
        Err(err) => CheckResult::fail(
            name,
            format!(
                "{host} ({variable}) does not resolve: {}",
                error_chain(&err)
            ),
            format!(
                "check the spelling of {variable} (in-cluster services are <service>.<namespace>.svc.cluster.local) \
                 and that the allow-dns NetworkPolicy lets the pod reach kube-dns"
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Status;

    #[tokio::test]
    async fn literals_and_localhost_pass_and_nonsense_fails() {
        assert_eq!(
            resolve(POSTGRES, "X", "127.0.0.1", 5432).await.status,
            Status::Pass
        );
        assert_eq!(resolve(S3, "X", "[::1]", 443).await.status, Status::Pass);
        let local = resolve(POSTGRES, "X", "localhost", 5432).await;
        assert_eq!(local.status, Status::Pass, "{local:?}");
        let bad = resolve(POSTGRES, "DJANGO_DB_HOST", "no-such-host.invalid", 5432).await;
        assert_eq!(bad.status, Status::Fail);
        assert!(
            bad.detail
                .contains("no-such-host.invalid (DJANGO_DB_HOST) does not resolve"),
            "{}",
            bad.detail
        );
    }
}
