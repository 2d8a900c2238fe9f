//! The whole binary: the green case in both output formats, the dry run, bad
//! configuration and arguments, and black-holed endpoints.

use std::time::Duration;

use crate::util::{ALL_CHECKS, Green, READER_PASSWORD, smoke, with};

#[tokio::test]
async fn all_green_passes_every_check_but_freshness_and_json_has_one_entry_per_check() {
    let green = Green::start().await;
    let out = smoke(&green.env(), &[]).await;
    out.assert_code(0);
    assert_eq!(out.names(), ALL_CHECKS, "{}", out.stdout);
    // The lake is new: no batch and no silver run yet are the only warnings.
    out.assert_others_pass(&[
        ("lake.bronze_freshness", "WARN"),
        ("lake.silver_freshness", "WARN"),
    ]);
    out.assert_line(
        "postgres.connect",
        "PASS",
        &["lake_reader@127.0.0.1", "sslmode=disable", "TLS off"],
    );
    out.assert_line(
        "postgres.contract",
        "PASS",
        &["stop_events (20 columns) and outbox (14 columns) match"],
    );
    out.assert_line(
        "postgres.snapshot",
        "PASS",
        &["horizon", "system identifier"],
    );
    out.assert_line("postgres.privileges", "PASS", &["lake_reader is read-only"]);
    out.assert_line("s3.multipart", "PASS", &["2-part upload of 6 MiB"]);
    out.assert_line(
        "network.egress_blocked",
        "PASS",
        &[
            "Kubernetes API server at 127.0.0.1:",
            "blocked as it must be",
        ],
    );
    out.assert_line(
        "s3.conditional",
        "PASS",
        &["refused (If-None-Match)", "(If-Match)"],
    );
    out.assert_line(
        "lake.bronze_freshness",
        "WARN",
        &["no committed batch", "fix: run bronze-ingest"],
    );
    out.assert_line(
        "lake.silver_freshness",
        "WARN",
        &["no silver-transform run report"],
    );
    assert!(
        out.stdout
            .contains("smoke-test OK: 16 passed, 2 warnings, 0 failed"),
        "{}",
        out.stdout
    );
    out.assert_never_shows(READER_PASSWORD);

    // The probes cleaned up after themselves.
    let listing = green
        .s3
        .request("GET", &format!("/{}?list-type=2", green.bucket))
        .await
        .unwrap();
    assert!(
        !listing.body.contains("<Key>"),
        "objects left behind: {}",
        listing.body
    );

    let out = smoke(&green.env(), &["--json"]).await;
    out.assert_code(0);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("--json output parses");
    let entries = v.as_array().expect("an array");
    let names: Vec<&str> = entries
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ALL_CHECKS);
    for e in entries {
        let obj = e.as_object().unwrap();
        let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["detail", "fix", "name", "status"]);
        assert!(e["detail"].as_str().is_some_and(|d| !d.is_empty()), "{e}");
        match e["status"].as_str().unwrap() {
            "PASS" => assert!(e["fix"].is_null(), "{e}"),
            "WARN" => assert!(e["fix"].as_str().is_some_and(|f| !f.is_empty()), "{e}"),
            other => panic!("unexpected status {other}: {e}"),
        }
    }
    out.assert_never_shows(READER_PASSWORD);
}

/// A configuration of hosts that resolve but serve nothing.
fn offline_env() -> Vec<(String, String)> {
    [
        ("DJANGO_DB_HOST", "localhost"),
        ("DJANGO_DB_PORT", "1"),
        ("DJANGO_DB_NAME", "robson"),
        ("DJANGO_DB_USER", "lake_reader"),
        ("DJANGO_DB_PASSWORD", "never-shown-pw"),
        ("DJANGO_DB_SSLMODE", "disable"),
        ("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE"),
        ("AWS_SECRET_ACCESS_KEY", "never-shown-secret"),
        ("AWS_ENDPOINT", "http://localhost:1"),
        ("S3_BUCKET", "robson-lake"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

#[tokio::test]
async fn dry_run_checks_config_and_dns_only() {
    let out = smoke(&offline_env(), &["--dry-run"]).await;
    out.assert_code(0);
    assert_eq!(out.names(), ALL_CHECKS);
    out.assert_line(
        "config",
        "PASS",
        &[
            "postgresql://lake_reader@localhost:1/robson",
            "s3://robson-lake",
        ],
    );
    out.assert_line("dns.postgres", "PASS", &["localhost resolves to"]);
    out.assert_line("dns.s3", "PASS", &["localhost resolves to"]);
    for name in &ALL_CHECKS[3..] {
        out.assert_line(name, "SKIP", &["not run: --dry-run"]);
    }
    out.assert_never_shows("never-shown");

    // An unresolvable host is a DNS failure, and its checks are skipped, not failed.
    let env = with(&offline_env(), "DJANGO_DB_HOST", Some("no-such-db.invalid"));
    let out = smoke(&env, &["--dry-run"]).await;
    out.assert_code(1);
    out.assert_line(
        "dns.postgres",
        "FAIL",
        &[
            "no-such-db.invalid (DJANGO_DB_HOST) does not resolve",
            "fix:",
        ],
    );
}

/// The smoke-test Job runs under the jobs' NetworkPolicies: a connection to
/// the API server that opens means they are not enforced. Reproduced with a
/// listener standing in for an unprotected API server; a refused connection
/// (a rejecting policy) passes; outside a pod the check is skipped.
#[tokio::test]
async fn an_egress_the_policies_forbid_must_be_blocked() {
    let open = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = open.local_addr().unwrap().port().to_string();
    let env = with(&offline_env(), "KUBERNETES_SERVICE_HOST", Some("127.0.0.1"));
    let out = smoke(&with(&env, "KUBERNETES_SERVICE_PORT", Some(&port)), &[]).await;
    out.assert_code(1);
    out.assert_line(
        "network.egress_blocked",
        "FAIL",
        &[
            "reached the Kubernetes API server at 127.0.0.1:",
            "not enforced",
            "fix:",
            "--disable-network-policy",
        ],
    );
    drop(open);

    // (A dropped connection, the timeout branch, cannot be staged here: this
    // machine's network answers connections to any outside address on 443.)
    let env = crate::util::blocked_api_server();
    let out = smoke(&[offline_env(), env].concat(), &[]).await;
    out.assert_line("network.egress_blocked", "PASS", &["blocked as it must be"]);

    let out = smoke(&offline_env(), &[]).await;
    out.assert_line(
        "network.egress_blocked",
        "SKIP",
        &["not in a Kubernetes pod"],
    );
}

#[tokio::test]
async fn bad_configuration_exits_2_naming_every_variable() {
    let env = with(&offline_env(), "DJANGO_DB_HOST", None);
    let env = with(&env, "DJANGO_DB_SSLMODE", Some("sometimes"));
    let out = smoke(&env, &[]).await;
    out.assert_code(2);
    out.assert_line(
        "config",
        "FAIL",
        &[
            "2 problems",
            "DJANGO_DB_HOST: is missing",
            "DJANGO_DB_SSLMODE",
            "fix: set the variables",
        ],
    );
    for name in &ALL_CHECKS[1..] {
        out.assert_line(name, "SKIP", &["not run: config failed"]);
    }
    out.assert_never_shows("never-shown");

    let out = smoke(&[], &["--json"]).await;
    out.assert_code(2);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), ALL_CHECKS.len());
    assert_eq!(v[0]["status"], "FAIL");
}

#[tokio::test]
async fn arguments_help_and_version() {
    let out = smoke(&[], &["--no-such-flag"]).await;
    out.assert_code(2);
    assert!(out.stderr.contains("--no-such-flag"), "{}", out.stderr);
    let out = smoke(&[], &["--version"]).await;
    out.assert_code(0);
    assert_eq!(
        out.stdout.trim(),
        format!("smoke-test {}", env!("CARGO_PKG_VERSION"))
    );
    let out = smoke(&[], &["--help"]).await;
    out.assert_code(0);
    for flag in [
        "--json",
        "--cluster",
        "--dry-run",
        "--timeout",
        "Exit codes",
    ] {
        assert!(
            out.stdout.contains(flag),
            "{flag} not in --help:\n{}",
            out.stdout
        );
    }
}

#[tokio::test]
async fn black_holed_endpoints_fail_within_the_timeout() {
    // Listening sockets that never accept: connections are established by the
    // kernel and then nothing answers, like a policy that drops packets.
    let pg = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let s3 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let env = with(
        &offline_env(),
        "DJANGO_DB_PORT",
        Some(&pg.local_addr().unwrap().port().to_string()),
    );
    let env = with(&env, "DJANGO_DB_HOST", Some("127.0.0.1"));
    let env = with(
        &env,
        "AWS_ENDPOINT",
        Some(&format!(
            "http://127.0.0.1:{}",
            s3.local_addr().unwrap().port()
        )),
    );
    let out = smoke(&env, &["--timeout", "2"]).await;
    out.assert_code(1);
    out.assert_line(
        "postgres.connect",
        "FAIL",
        &["no answer from 127.0.0.1", "within 2s", "allow-postgres"],
    );
    out.assert_line("s3.bucket", "FAIL", &["allow-s3"]);
    out.assert_line(
        "postgres.contract",
        "SKIP",
        &["not run: postgres.connect failed"],
    );
    out.assert_line("lake.manifests", "SKIP", &[]);
    // PostgreSQL and S3 time out side by side.
    assert!(
        out.elapsed < Duration::from_secs(10),
        "took {:?}",
        out.elapsed
    );
    drop((pg, s3));
}
