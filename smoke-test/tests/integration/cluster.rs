//! `--cluster`: the Kubernetes checks, against a scripted `kubectl` that answers
//! like a real one, and against a `kubectl` that is missing or has no cluster.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::{Value, json};

use crate::util::smoke;

const CLUSTER_CHECKS: [&str; 6] = [
    "cluster.api",
    "cluster.namespaces",
    "cluster.quotas",
    "cluster.network_policies",
    "cluster.secrets",
    "cluster.analytics_node",
];

/// A `kubectl` that prints `<dir>/<file>` for each command the smoke test runs
/// (nothing when the file is absent, like `--ignore-not-found`).
const FAKE_KUBECTL: &str = r#"#!/bin/sh
dir=$(dirname "$0")
case "$*" in
  "version --client -o json "*) f=client-version.json ;;
  "version -o json "*) f=version.json ;;
  "config current-context "*) f=context.txt ;;
  "get namespace analytics-jobs "*) f=ns-analytics-jobs.json ;;
  "get namespace datalake-system "*) f=ns-datalake-system.json ;;
  "get resourcequota,limitrange -n analytics-jobs "*) f=quota-analytics-jobs.json ;;
  "get resourcequota,limitrange -n datalake-system "*) f=quota-datalake-system.json ;;
  "get networkpolicy -n analytics-jobs "*) f=netpol-analytics-jobs.json ;;
  "get networkpolicy -n datalake-system "*) f=netpol-datalake-system.json ;;
  "get secret lake-postgres -n analytics-jobs --ignore-not-found -o go-template="*) f=secret-lake-postgres.txt ;;
  "get secret lake-s3 -n analytics-jobs --ignore-not-found -o go-template="*) f=secret-lake-s3.txt ;;
  "get nodes -l robson.io/pool=analytics -o json "*) f=nodes.json ;;
  *) echo "fake kubectl: unexpected arguments: $*" >&2; exit 1 ;;
esac
[ -f "$dir/$f" ] || exit 0
exec cat "$dir/$f"
"#;

fn write(dir: &Path, file: &str, content: impl AsRef<[u8]>) {
    std::fs::write(dir.join(file), content).unwrap();
}

fn list(items: Vec<Value>) -> String {
    json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string()
}

fn namespace(name: &str) -> String {
    json!({"kind": "Namespace", "metadata": {"name": name,
        "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})
    .to_string()
}

fn deny_all() -> Value {
    json!({"kind": "NetworkPolicy", "metadata": {"name": "default-deny-all"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}})
}

fn allow_dns() -> Value {
    json!({"kind": "NetworkPolicy", "metadata": {"name": "allow-dns"},
        "spec": {"podSelector": {}, "policyTypes": ["Egress"],
                 "egress": [{"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}]}})
}

fn node(tainted: bool) -> Value {
    let taints = if tainted {
        json!([{"key": "robson.io/dedicated", "value": "analytics", "effect": "NoSchedule"}])
    } else {
        json!([])
    };
    json!({"kind": "Node", "metadata": {"name": "vps-analytics-1", "labels": {"robson.io/pool": "analytics"}},
        "spec": {"taints": taints},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]}})
}

/// A directory with the fake kubectl and the answers of a healthy cluster.
fn healthy_cluster() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let kubectl = d.join("kubectl");
    std::fs::write(&kubectl, FAKE_KUBECTL).unwrap();
    std::fs::set_permissions(&kubectl, std::fs::Permissions::from_mode(0o755)).unwrap();
    write(
        d,
        "client-version.json",
        json!({"clientVersion": {"gitVersion": "v1.31.4"}}).to_string(),
    );
    write(
        d,
        "version.json",
        json!({"clientVersion": {"gitVersion": "v1.31.4"}, "serverVersion": {"gitVersion": "v1.31.4+k3s1"}}).to_string(),
    );
    write(d, "context.txt", "robson-prod\n");
    for ns in ["analytics-jobs", "datalake-system"] {
        write(d, &format!("ns-{ns}.json"), namespace(ns));
        write(
            d,
            &format!("quota-{ns}.json"),
            list(vec![
                json!({"kind": "ResourceQuota", "metadata": {"name": "lake-jobs-quota"}}),
                json!({"kind": "LimitRange", "metadata": {"name": "lake-jobs-limits"}}),
            ]),
        );
        write(
            d,
            &format!("netpol-{ns}.json"),
            list(vec![deny_all(), allow_dns()]),
        );
    }
    write(
        d,
        "secret-lake-postgres.txt",
        "DJANGO_DB_HOST\nDJANGO_DB_NAME\nDJANGO_DB_PASSWORD\nDJANGO_DB_PORT\nDJANGO_DB_SSLMODE\nDJANGO_DB_USER\n",
    );
    write(
        d,
        "secret-lake-s3.txt",
        "AWS_ACCESS_KEY_ID\nAWS_ENDPOINT\nAWS_REGION\nAWS_SECRET_ACCESS_KEY\nS3_BUCKET\n",
    );
    write(d, "nodes.json", list(vec![node(true)]));
    dir
}

fn env_with_path(dir: &Path) -> Vec<(String, String)> {
    vec![(
        "PATH".to_owned(),
        format!("{}:/usr/bin:/bin", dir.display()),
    )]
}

#[tokio::test]
async fn a_healthy_cluster_passes() {
    let dir = healthy_cluster();
    let out = smoke(&env_with_path(dir.path()), &["--cluster"]).await;
    out.assert_code(0);
    assert_eq!(out.names(), CLUSTER_CHECKS, "{}", out.stdout);
    out.assert_others_pass(&[]);
    out.assert_line(
        "cluster.api",
        "PASS",
        &["context robson-prod", "v1.31.4+k3s1"],
    );
    out.assert_line(
        "cluster.network_policies",
        "PASS",
        &["analytics-jobs: default-deny-all (+1 allow)"],
    );
    out.assert_line(
        "cluster.secrets",
        "PASS",
        &["lake-postgres (6 keys) and lake-s3 (5 keys) present"],
    );
    out.assert_line(
        "cluster.analytics_node",
        "PASS",
        &["vps-analytics-1 Ready, labelled robson.io/pool=analytics, tainted robson.io/dedicated=analytics:NoSchedule"],
    );

    let out = smoke(
        &env_with_path(dir.path()),
        &["--cluster", "--dry-run", "--json"],
    )
    .await;
    out.assert_code(0);
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    let entries = v.as_array().unwrap();
    assert_eq!(entries.len(), CLUSTER_CHECKS.len());
    assert_eq!(entries[0]["status"], "PASS");
    assert!(
        entries[0]["detail"]
            .as_str()
            .unwrap()
            .contains("kubectl v1.31.4 found")
    );
    assert!(entries[1..].iter().all(|e| e["status"] == "SKIP"));
}

#[tokio::test]
async fn a_half_deployed_cluster_fails_with_fixes() {
    let dir = healthy_cluster();
    let d = dir.path();
    std::fs::remove_file(d.join("ns-datalake-system.json")).unwrap();
    write(
        d,
        "quota-analytics-jobs.json",
        list(vec![
            json!({"kind": "LimitRange", "metadata": {"name": "lake-jobs-limits"}}),
        ]),
    );
    write(d, "netpol-datalake-system.json", list(vec![allow_dns()]));
    write(
        d,
        "secret-lake-s3.txt",
        "AWS_ACCESS_KEY_ID\nS3_BUCKET\nS3_BUKET\n",
    );
    std::fs::remove_file(d.join("secret-lake-postgres.txt")).unwrap();
    write(d, "nodes.json", list(vec![node(false)]));
    let out = smoke(&env_with_path(d), &["--cluster"]).await;
    out.assert_code(1);
    out.assert_line(
        "cluster.namespaces",
        "FAIL",
        &["namespace datalake-system missing", "fix: just deploy"],
    );
    out.assert_line(
        "cluster.quotas",
        "FAIL",
        &["no ResourceQuota in analytics-jobs"],
    );
    out.assert_line(
        "cluster.network_policies",
        "FAIL",
        &[
            "no default-deny NetworkPolicy",
            "in datalake-system",
            "fix: kubectl apply -k deploy/base/network-policies",
        ],
    );
    out.assert_line(
        "cluster.secrets",
        "FAIL",
        &[
            "Secret lake-postgres missing",
            "lake-s3 lacks AWS_SECRET_ACCESS_KEY",
            "deploy/base/secrets",
        ],
    );
    out.assert_line(
        "cluster.analytics_node",
        "WARN",
        &[
            "not tainted robson.io/dedicated=analytics:NoSchedule",
            "fix: kubectl taint node vps-analytics-1",
        ],
    );

    // Only an unknown key left: a warning naming it.
    let dir = healthy_cluster();
    write(
        dir.path(),
        "secret-lake-s3.txt",
        "AWS_ACCESS_KEY_ID\nAWS_SECRET_ACCESS_KEY\nS3_BUCKET\nS3_BUKET\n",
    );
    let out = smoke(&env_with_path(dir.path()), &["--cluster"]).await;
    out.assert_code(0);
    out.assert_line("cluster.secrets", "WARN", &["lake-s3/S3_BUKET"]);
}

#[tokio::test]
async fn no_kubectl_or_no_cluster_is_one_failure() {
    let empty = tempfile::tempdir().unwrap();
    let out = smoke(
        &[("PATH".to_owned(), empty.path().display().to_string())],
        &["--cluster"],
    )
    .await;
    out.assert_code(1);
    out.assert_line(
        "cluster.api",
        "FAIL",
        &["kubectl is not installed", "fix: install kubectl"],
    );
    for name in &CLUSTER_CHECKS[1..] {
        out.assert_line(name, "SKIP", &["not run: cluster.api failed"]);
    }

    // The real kubectl, if this machine has one, pointed at no cluster.
    if Path::new("/usr/bin/kubectl").exists() || Path::new("/usr/local/bin/kubectl").exists() {
        let home = tempfile::tempdir().unwrap();
        let env = vec![
            ("PATH".to_owned(), "/usr/local/bin:/usr/bin:/bin".to_owned()),
            ("HOME".to_owned(), home.path().display().to_string()),
            (
                "KUBECONFIG".to_owned(),
                home.path().join("no-config").display().to_string(),
            ),
        ];
        let out = smoke(&env, &["--cluster", "--timeout", "5"]).await;
        out.assert_code(1);
        out.assert_line(
            "cluster.api",
            "FAIL",
            &[
                "kubectl cannot reach a cluster",
                "fix: check the kubeconfig",
            ],
        );
        assert_eq!(
            out.lines().values().filter(|l| l.status == "FAIL").count(),
            1,
            "{}",
            out.stdout
        );
    }
}
