//! The last check: the NetworkPolicies are enforced, proven by an egress the
//! jobs must not have.
//!
//! A default-deny policy that the cluster does not enforce looks exactly like
//! one that it does until something goes wrong (k3s started with
//! `--disable-network-policy`, a CNI without policy support such as flannel
//! alone). So the smoke test, which runs under the jobs' policies, tries one
//! connection they forbid: to the Kubernetes API server, which every pod is
//! told about (`KUBERNETES_SERVICE_HOST`/`_PORT`) and which always listens. A
//! connection that opens means the policies are not enforced. One that times
//! out (dropped) or is refused (rejected) means they are.

use std::time::Duration;

use crate::report::CheckResult;

/// An egress the policies forbid is blocked.
pub const EGRESS_BLOCKED: &str = "network.egress_blocked";
/// The checks of this module, in order.
pub const NAMES: &[&str] = &[EGRESS_BLOCKED];

/// Long enough for any allowed in-cluster connection, short enough not to
/// slow the smoke test down when the packets are dropped.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Where the API server is, from a pod's environment (`None` outside a pod).
pub fn api_server(vars: &[(String, String)]) -> Option<(String, u16)> {
    let get = |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let host = get("KUBERNETES_SERVICE_HOST").filter(|h| !h.is_empty())?;
    let port = get("KUBERNETES_SERVICE_PORT")
        .and_then(|p| p.parse().ok())
        .unwrap_or(443);
    Some((host, port))
}

/// Tries the forbidden connection and records the result.
pub async fn check(api_server: Option<(String, u16)>, limit: Duration) -> CheckResult {
    let Some((host, port)) = api_server else {
        return CheckResult::skip(
            EGRESS_BLOCKED,
            "not in a Kubernetes pod (no KUBERNETES_SERVICE_HOST): the smoke-test Job proves \
             the NetworkPolicies are enforced",
        );
    };
    // IPv6 service addresses need brackets in a socket address.
    let target = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let wait = CONNECT_TIMEOUT.min(limit);
    match tokio::time::timeout(wait, tokio::net::TcpStream::connect(&target)).await {
        Ok(Ok(_)) => CheckResult::fail(
            EGRESS_BLOCKED,
            format!(
                "this pod reached the Kubernetes API server at {target}, an egress the \
                 default-deny NetworkPolicy forbids: the policies are not enforced"
            ),
            "enforce NetworkPolicies before running the jobs: k3s enforces them unless started \
             with --disable-network-policy; other CNIs must support them (flannel alone does \
             not); or remove the policy in analytics-jobs that allows this egress",
        ),
        Ok(Err(e)) => CheckResult::pass(
            EGRESS_BLOCKED,
            format!("the Kubernetes API server at {target} is blocked as it must be ({e})"),
        ),
        Err(_) => CheckResult::pass(
            EGRESS_BLOCKED,
            format!(
                "the Kubernetes API server at {target} is blocked as it must be (no answer within {}s)",
                wait.as_secs()
            ),
        ),
    }
}
