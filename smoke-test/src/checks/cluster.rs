//! Check 6 (`--cluster`): the Kubernetes side of a deployment, through `kubectl`.
//!
//! Run from a workstation with a kubeconfig, before or after `just deploy`. It
//! checks what the manifests in `deploy/` should have created and what they
//! assume exists: the two namespaces, their ResourceQuotas (and LimitRanges), a
//! default-deny NetworkPolicy in each, the Secrets the jobs load (by name and key
//! names only: a Go template prints the keys, values never reach this process),
//! and a Ready node labelled and tainted for analytics.
//!
//! `kubectl` is a child process with a request timeout and a hard deadline; a
//! missing binary or an unreachable cluster is one `FAIL` line saying so.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use super::{human_duration, join_and};
use crate::report::{CheckResult, Report};

/// kubectl exists and reaches a cluster.
pub const API: &str = "cluster.api";
/// Both namespaces exist.
pub const NAMESPACES: &str = "cluster.namespaces";
/// ResourceQuota (and LimitRange) in each namespace.
pub const QUOTAS: &str = "cluster.quotas";
/// A default-deny NetworkPolicy in each namespace.
pub const NETWORK_POLICIES: &str = "cluster.network_policies";
/// The jobs' Secrets exist with the keys they need.
pub const SECRETS: &str = "cluster.secrets";
/// A Ready node labelled and tainted for analytics.
pub const ANALYTICS_NODE: &str = "cluster.analytics_node";
/// The checks of this module, in order.
pub const NAMES: &[&str] = &[
    API,
    NAMESPACES,
    QUOTAS,
    NETWORK_POLICIES,
    SECRETS,
    ANALYTICS_NODE,
];

/// The lake's namespaces (deploy/base/namespaces).
pub const NAMESPACE_NAMES: [&str; 2] = ["analytics-jobs", "datalake-system"];
/// Where the jobs run and their Secrets live.
pub const JOBS_NAMESPACE: &str = "analytics-jobs";

/// A Secret the jobs load with `envFrom` and the keys it must have (each entry is
/// a set of alternatives, e.g. `S3_BUCKET` or `LAKE_URL`).
#[derive(Debug)]
pub struct SecretSpec {
    /// Secret name, as in deploy/jobs and deploy/cronjobs.
    pub name: &'static str,
    /// Required keys; an entry with several names needs one of them.
    pub required: &'static [&'static [&'static str]],
}

/// The Secrets of deploy/base/secrets (a test keeps them in step with deploy/).
pub const SECRET_SPECS: [SecretSpec; 2] = [
    SecretSpec {
        name: "lake-postgres",
        required: &[
            &["DJANGO_DB_HOST"],
            &["DJANGO_DB_NAME"],
            &["DJANGO_DB_USER"],
            &["DJANGO_DB_PASSWORD"],
        ],
    },
    SecretSpec {
        name: "lake-s3",
        required: &[
            &["AWS_ACCESS_KEY_ID"],
            &["AWS_SECRET_ACCESS_KEY"],
            &["S3_BUCKET", "LAKE_URL"],
        ],
    },
];

/// Label of the analytics node (SPEC §1).
pub const NODE_LABEL: (&str, &str) = ("robson.io/pool", "analytics");
/// Taint of the analytics node: key, value, effect.
pub const NODE_TAINT: (&str, &str, &str) = ("robson.io/dedicated", "analytics", "NoSchedule");

/// Runs the cluster checks. With `dry_run` only kubectl's presence is checked.
pub async fn run(limit: Duration, dry_run: bool, report: &mut Report) {
    let kubectl = Kubectl { limit };
    if dry_run {
        report.push(
            match kubectl.json(&["version", "--client", "-o", "json"]).await {
                Ok(v) => CheckResult::pass(
                    API,
                    format!(
                        "kubectl {} found (--dry-run: the cluster was not contacted)",
                        v["clientVersion"]["gitVersion"].as_str().unwrap_or("?")
                    ),
                ),
                Err(e) => e.into_result(API, "running kubectl"),
            },
        );
        report.skip_all(&NAMES[1..], "not run: --dry-run");
        return;
    }
    let api = api(&kubectl).await;
    let reachable = api.status == crate::Status::Pass;
    report.push(api);
    if !reachable {
        report.skip_all(&NAMES[1..], &format!("not run: {API} failed"));
        return;
    }
    report.push(namespaces(&kubectl).await);
    report.push(quotas(&kubectl).await);
    report.push(network_policies(&kubectl).await);
    report.push(secrets(&kubectl).await);
    report.push(analytics_node(&kubectl).await);
}

/// A `kubectl` child process with a deadline.
#[derive(Debug)]
struct Kubectl {
    limit: Duration,
}

/// Why a kubectl call gave no usable answer.
#[derive(Debug)]
enum KubectlError {
    /// No kubectl on PATH.
    Missing,
    /// kubectl ran and failed; the first lines of its stderr.
    Failed(String),
    /// No answer within the limit.
    Timeout(Duration),
    /// The output is not what was asked for.
    BadOutput(String),
}

impl KubectlError {
    fn into_result(self, name: &'static str, what: &str) -> CheckResult {
        match self {
            Self::Missing => CheckResult::fail(
                name,
                "kubectl is not installed (not found on PATH)",
                "install kubectl (https://kubernetes.io/docs/tasks/tools/) or run the smoke test without --cluster",
            ),
            Self::Failed(msg) => {
                let fix = if msg.contains("Forbidden") || msg.contains("forbidden") {
                    "use a kubeconfig whose user may read namespaces, quotas, network policies, secrets and \
                     nodes"
                } else {
                    "check the kubeconfig (KUBECONFIG, kubectl config current-context) and that the API server \
                     is reachable from here"
                };
                CheckResult::fail(name, format!("{what}: {msg}"), fix)
            }
            Self::Timeout(limit) => CheckResult::fail(
                name,
                format!("{what}: no answer within {}", human_duration(limit)),
                "the API server does not answer: check the kubeconfig's server address, VPN and firewall",
            ),
            Self::BadOutput(msg) => CheckResult::fail(
                name,
                format!("{what}: unexpected kubectl output: {msg}"),
                "use a kubectl within one minor version of the cluster",
            ),
        }
    }
}

impl Kubectl {
    async fn text(&self, args: &[&str]) -> Result<String, KubectlError> {
        let timeout_arg = format!("--request-timeout={}s", self.limit.as_secs().max(1));
        let child = tokio::process::Command::new("kubectl")
            .args(args)
            .arg(&timeout_arg)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output();
        let output = match tokio::time::timeout(self.limit + Duration::from_secs(2), child).await {
            Err(_) => return Err(KubectlError::Timeout(self.limit)),
            Ok(Err(err)) if err.kind() == std::io::ErrorKind::NotFound => {
                return Err(KubectlError::Missing);
            }
            Ok(Err(err)) => return Err(KubectlError::Failed(format!("cannot run kubectl: {err}"))),
            Ok(Ok(output)) => output,
        };
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let lines: Vec<&str> = stderr
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .take(2)
                .collect();
            let msg = if lines.is_empty() {
                format!("kubectl exited with {}", output.status)
            } else {
                lines.join(" ")
            };
            return Err(KubectlError::Failed(msg));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    async fn json(&self, args: &[&str]) -> Result<Value, KubectlError> {
        let text = self.text(args).await?;
        serde_json::from_str(&text).map_err(|e| KubectlError::BadOutput(e.to_string()))
    }

    /// The items of a `kubectl get … -o json` list.
    async fn items(&self, args: &[&str]) -> Result<Vec<Value>, KubectlError> {
        let v = self.json(args).await?;
        match v.get("items").and_then(Value::as_array) {
            Some(items) => Ok(items.clone()),
            None => Err(KubectlError::BadOutput("no items in the list".to_owned())),
        }
    }
}

async fn api(kubectl: &Kubectl) -> CheckResult {
    let version = match kubectl.json(&["version", "-o", "json"]).await {
        Ok(v) => v,
        Err(e) => return e.into_result(API, "kubectl cannot reach a cluster"),
    };
    let Some(server) = version["serverVersion"]["gitVersion"].as_str() else {
        return CheckResult::fail(
            API,
            "kubectl cannot reach a cluster: no server version in its answer",
            "check the kubeconfig (KUBECONFIG, kubectl config current-context)",
        );
    };
    let context = kubectl
        .text(&["config", "current-context"])
        .await
        .map(|c| c.trim().to_owned())
        .unwrap_or_else(|_| "?".to_owned());
    CheckResult::pass(API, format!("context {context}, server {server}"))
}

fn name_of(item: &Value) -> String {
    item["metadata"]["name"].as_str().unwrap_or("?").to_owned()
}

async fn namespaces(kubectl: &Kubectl) -> CheckResult {
    let mut missing = Vec::new();
    let mut unrestricted = Vec::new();
    for ns in NAMESPACE_NAMES {
        let text = match kubectl
            .text(&["get", "namespace", ns, "--ignore-not-found", "-o", "json"])
            .await
        {
            Ok(t) => t,
            Err(e) => return e.into_result(NAMESPACES, &format!("reading namespace {ns}")),
        };
        if text.trim().is_empty() {
            missing.push(ns.to_owned());
            continue;
        }
        let v: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => {
                return KubectlError::BadOutput(e.to_string())
                    .into_result(NAMESPACES, &format!("reading namespace {ns}"));
            }
        };
        if v["metadata"]["labels"]["pod-security.kubernetes.io/enforce"].as_str()
            != Some("restricted")
        {
            unrestricted.push(ns.to_owned());
        }
    }
    if !missing.is_empty() {
        return CheckResult::fail(
            NAMESPACES,
            format!("namespace {} missing", join_and(&missing)),
            "just deploy (or kubectl apply -k deploy/base/namespaces)",
        );
    }
    if !unrestricted.is_empty() {
        return CheckResult::warn(
            NAMESPACES,
            format!(
                "{} exist, but {} does not enforce Pod Security restricted",
                NAMESPACE_NAMES.join(" and "),
                join_and(&unrestricted)
            ),
            "kubectl apply -k deploy/base/namespaces (the label pod-security.kubernetes.io/enforce=restricted)",
        );
    }
    CheckResult::pass(
        NAMESPACES,
        format!(
            "{} exist, Pod Security restricted",
            NAMESPACE_NAMES.join(" and ")
        ),
    )
}

async fn quotas(kubectl: &Kubectl) -> CheckResult {
    let mut found = Vec::new();
    let mut no_quota = Vec::new();
    let mut no_limits = Vec::new();
    for ns in NAMESPACE_NAMES {
        let items = match kubectl
            .items(&["get", "resourcequota,limitrange", "-n", ns, "-o", "json"])
            .await
        {
            Ok(i) => i,
            Err(e) => return e.into_result(QUOTAS, &format!("listing the quotas of {ns}")),
        };
        let of = |kind: &str| -> Vec<String> {
            items
                .iter()
                .filter(|i| i["kind"].as_str() == Some(kind))
                .map(name_of)
                .collect()
        };
        let (quotas, limits) = (of("ResourceQuota"), of("LimitRange"));
        if quotas.is_empty() {
            no_quota.push(ns.to_owned());
        }
        if limits.is_empty() {
            no_limits.push(ns.to_owned());
        }
        found.push(format!(
            "{ns}: ResourceQuota {} LimitRange {}",
            if quotas.is_empty() {
                "-".to_owned()
            } else {
                quotas.join(",")
            },
            if limits.is_empty() {
                "-".to_owned()
            } else {
                limits.join(",")
            }
        ));
    }
    let detail = found.join("; ");
    if !no_quota.is_empty() {
        CheckResult::fail(
            QUOTAS,
            format!("no ResourceQuota in {}: {detail}", join_and(&no_quota)),
            "kubectl apply -k deploy/base/namespaces (a runaway job must not starve the analytics node)",
        )
    } else if !no_limits.is_empty() {
        CheckResult::warn(
            QUOTAS,
            format!("no LimitRange in {}: {detail}", join_and(&no_limits)),
            "kubectl apply -k deploy/base/namespaces (pods without resources get defaults from it)",
        )
    } else {
        CheckResult::pass(QUOTAS, detail)
    }
}

/// A policy selecting every pod, for ingress and egress, allowing nothing.
fn is_default_deny(policy: &Value) -> bool {
    let spec = &policy["spec"];
    // `podSelector: {}` (or with empty matchLabels / matchExpressions) selects every pod.
    let selects_all = spec["podSelector"].as_object().is_some_and(|s| {
        s.values().all(|v| {
            v.as_object().is_some_and(|m| m.is_empty())
                || v.as_array().is_some_and(|a| a.is_empty())
        })
    });
    let types: BTreeSet<&str> = spec["policyTypes"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let empty = |rules: &Value| rules.is_null() || rules.as_array().is_some_and(|a| a.is_empty());
    selects_all
        && types.contains("Ingress")
        && types.contains("Egress")
        && empty(&spec["ingress"])
        && empty(&spec["egress"])
}

async fn network_policies(kubectl: &Kubectl) -> CheckResult {
    let mut found = Vec::new();
    let mut without = Vec::new();
    for ns in NAMESPACE_NAMES {
        let items = match kubectl
            .items(&["get", "networkpolicy", "-n", ns, "-o", "json"])
            .await
        {
            Ok(i) => i,
            Err(e) => {
                return e.into_result(NETWORK_POLICIES, &format!("listing the policies of {ns}"));
            }
        };
        match items.iter().find(|p| is_default_deny(p)) {
            Some(p) => found.push(format!("{ns}: {} (+{} allow)", name_of(p), items.len() - 1)),
            None => without.push(ns.to_owned()),
        }
    }
    if without.is_empty() {
        CheckResult::pass(
            NETWORK_POLICIES,
            format!("default deny of ingress and egress: {}", found.join("; ")),
        )
    } else {
        CheckResult::fail(
            NETWORK_POLICIES,
            format!(
                "no default-deny NetworkPolicy (all pods, Ingress and Egress, no rules) in {}",
                join_and(&without)
            ),
            "kubectl apply -k deploy/base/network-policies (and make sure the CNI enforces NetworkPolicies)",
        )
    }
}

async fn secrets(kubectl: &Kubectl) -> CheckResult {
    // Prints key names only; the values never leave kubectl.
    const KEYS: &str = "go-template={{range $k, $v := .data}}{{$k}}{{\"\\n\"}}{{end}}";
    let mut missing_secrets = Vec::new();
    let mut missing_keys = Vec::new();
    let mut unknown_keys = Vec::new();
    let mut found = Vec::new();
    for spec in &SECRET_SPECS {
        let text = match kubectl
            .text(&[
                "get",
                "secret",
                spec.name,
                "-n",
                JOBS_NAMESPACE,
                "--ignore-not-found",
                "-o",
                KEYS,
            ])
            .await
        {
            Ok(t) => t,
            Err(e) => return e.into_result(SECRETS, &format!("reading Secret {}", spec.name)),
        };
        // --ignore-not-found prints nothing for a missing Secret; an existing one
        // without data prints nothing too, and fails the key check below anyway.
        let keys: BTreeSet<&str> = text
            .lines()
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .collect();
        if keys.is_empty() {
            missing_secrets.push(spec.name.to_owned());
            continue;
        }
        for alternatives in spec.required {
            if !alternatives.iter().any(|k| keys.contains(k)) {
                missing_keys.push(format!("{} lacks {}", spec.name, alternatives.join(" or ")));
            }
        }
        for key in &keys {
            if !lake_common::config::ENV_VARS.contains(key) {
                unknown_keys.push(format!("{}/{key}", spec.name));
            }
        }
        found.push(format!("{} ({} keys)", spec.name, keys.len()));
    }
    if !missing_secrets.is_empty() || !missing_keys.is_empty() {
        let mut problems = Vec::new();
        if !missing_secrets.is_empty() {
            problems.push(format!(
                "Secret {} missing (or empty) in {JOBS_NAMESPACE}",
                join_and(&missing_secrets)
            ));
        }
        problems.extend(missing_keys);
        return CheckResult::fail(
            SECRETS,
            problems.join("; "),
            "create them from deploy/base/secrets/*.template.yaml (docs/deploy.md section 4)",
        );
    }
    if !unknown_keys.is_empty() {
        return CheckResult::warn(
            SECRETS,
            format!(
                "{} present; keys no lake binary reads (typos?): {}",
                join_and(&found),
                unknown_keys.join(", ")
            ),
            "rename or remove those keys (the names are the variables of the README's configuration table)",
        );
    }
    CheckResult::pass(
        SECRETS,
        format!(
            "{} present in {JOBS_NAMESPACE} with the required keys",
            join_and(&found)
        ),
    )
}

fn has_taint(node: &Value) -> bool {
    let (key, value, effect) = NODE_TAINT;
    node["spec"]["taints"].as_array().is_some_and(|taints| {
        taints.iter().any(|t| {
            t["key"].as_str() == Some(key)
                && t["value"].as_str() == Some(value)
                && t["effect"].as_str() == Some(effect)
        })
    })
}

fn is_ready(node: &Value) -> bool {
    node["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"].as_str() == Some("Ready") && c["status"].as_str() == Some("True"))
    })
}

async fn analytics_node(kubectl: &Kubectl) -> CheckResult {
    let (label_key, label_value) = NODE_LABEL;
    let (taint_key, taint_value, taint_effect) = NODE_TAINT;
    let selector = format!("{label_key}={label_value}");
    let taint = format!("{taint_key}={taint_value}:{taint_effect}");
    let nodes = match kubectl
        .items(&["get", "nodes", "-l", &selector, "-o", "json"])
        .await
    {
        Ok(n) => n,
        Err(e) => return e.into_result(ANALYTICS_NODE, "listing the nodes"),
    };
    if nodes.is_empty() {
        return CheckResult::fail(
            ANALYTICS_NODE,
            format!("no node is labelled {selector}: the jobs' pods cannot be scheduled"),
            format!(
                "kubectl label node <analytics node> {selector} && kubectl taint node <analytics node> {taint}"
            ),
        );
    }
    let names: Vec<String> = nodes.iter().map(name_of).collect();
    let ready: Vec<&Value> = nodes.iter().filter(|n| is_ready(n)).collect();
    if ready.is_empty() {
        return CheckResult::fail(
            ANALYTICS_NODE,
            format!("{} labelled {selector}, but not Ready", join_and(&names)),
            "kubectl describe node on it: the jobs stay Pending until it is Ready",
        );
    }
    let untainted: Vec<String> = ready
        .iter()
        .filter(|n| !has_taint(n))
        .map(|n| name_of(n))
        .collect();
    if !untainted.is_empty() {
        return CheckResult::warn(
            ANALYTICS_NODE,
            format!(
                "{} labelled {selector} but not tainted {taint}: other workloads can land on the analytics node",
                join_and(&untainted)
            ),
            format!("kubectl taint node {} {taint}", untainted.join(" ")),
        );
    }
    CheckResult::pass(
        ANALYTICS_NODE,
        format!(
            "{} Ready, labelled {selector}, tainted {taint}",
            join_and(&names)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn default_deny_is_recognised() {
        let deny = json!({"metadata": {"name": "d"}, "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}});
        assert!(is_default_deny(&deny));
        let ingress_only = json!({"spec": {"podSelector": {}, "policyTypes": ["Ingress"]}});
        assert!(!is_default_deny(&ingress_only));
        let allow_dns = json!({"spec": {"podSelector": {}, "policyTypes": ["Egress", "Ingress"],
            "egress": [{"ports": [{"port": 53, "protocol": "UDP"}]}]}});
        assert!(!is_default_deny(&allow_dns));
        let some_pods = json!({"spec": {"podSelector": {"matchLabels": {"a": "b"}}, "policyTypes": ["Ingress", "Egress"]}});
        assert!(!is_default_deny(&some_pods));
    }

    /// The Secret names and the node label/taint are the ones deploy/ uses.
    #[test]
    fn constants_match_the_deploy_manifests() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
        let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap_or_default();
        let job = read("jobs/smoke-test.yaml");
        if job.is_empty() {
            eprintln!("deploy/jobs/smoke-test.yaml not found; skipping");
            return;
        }
        for spec in &SECRET_SPECS {
            assert!(
                job.contains(&format!("name: {}", spec.name)),
                "{} not in the smoke-test Job",
                spec.name
            );
            let template = read(&format!("base/secrets/{}.template.yaml", spec.name));
            assert!(template.contains(&format!("name: {}", spec.name)));
            for alternatives in spec.required {
                assert!(
                    alternatives
                        .iter()
                        .any(|k| template.contains(&format!("{k}:"))),
                    "{alternatives:?} not in the {} template",
                    spec.name
                );
            }
        }
        assert!(job.contains(&format!("{}: {}", NODE_LABEL.0, NODE_LABEL.1)));
        assert!(job.contains(&format!("key: {}", NODE_TAINT.0)));
        assert!(job.contains(&format!("namespace: {JOBS_NAMESPACE}")));
        let namespaces = read("base/namespaces/namespaces.yaml");
        for ns in NAMESPACE_NAMES {
            assert!(namespaces.contains(&format!("name: {ns}")), "{ns}");
        }
    }
}
