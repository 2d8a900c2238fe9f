//! TLS to PostgreSQL with each `DJANGO_DB_SSLMODE`, against a real server whose
//! certificates come from a test CA made with openssl (lake_testkit::TestCa).
//!
//! `verify-full` must check the chain and the host name and refuse an expired
//! certificate; `require` must refuse a server without TLS; `prefer` falls back
//! to a clear connection. Each refusal is one line that names the cause and the
//! setting to fix, and the run writes nothing.

mod support;

use lake_testkit::{TestCa, error_line};
use support::Harness;

fn with_tls(h: &Harness, mode: &str, root: Option<&std::path::Path>) -> Vec<(String, String)> {
    let mut env = h.env();
    env.push(("DJANGO_DB_SSLMODE".into(), mode.into()));
    if let Some(root) = root {
        env.push(("DJANGO_DB_SSLROOTCERT".into(), root.display().to_string()));
    }
    env
}

/// A refused connection: exit 1, one line with `what` and the fix, no batch.
async fn assert_refused(h: &Harness, env: &[(String, String)], what: &[&str]) {
    let out = h.run_with(env, &["--dataset", "events"]);
    assert_eq!(out.status.code(), Some(1));
    let line = error_line(&out);
    for w in what {
        assert!(line.contains(w), "{w:?} missing from: {line}");
    }
    assert!(line.contains("DJANGO_DB_SSL"), "names the setting: {line}");
    assert!(!line.contains('\n'));
    assert!(
        h.manifests(lake_common::Dataset::BronzeEvents)
            .await
            .is_empty(),
        "nothing committed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sslmodes_against_a_server_with_and_without_tls() {
    let h = Harness::native().await;
    support::generate_recent(&h.pg, 200, 1).await;
    let ca = TestCa::new("lake-test-ca").unwrap();
    let other_ca = TestCa::new("someone-else").unwrap();

    // No TLS on the server yet.
    assert_refused(
        &h,
        &with_tls(&h, "require", None),
        &[
            "does not support TLS",
            "inside the cluster only, set DJANGO_DB_SSLMODE=prefer",
        ],
    )
    .await;
    // verify-full is never told to fall back.
    let out = h.run_with(
        &with_tls(&h, "verify-full", Some(&ca.cert())),
        &["--dataset", "events"],
    );
    assert_eq!(out.status.code(), Some(1));
    let line = error_line(&out);
    assert!(
        line.contains("verify-full requires it: turn ssl on") && !line.contains("=prefer"),
        "{line}"
    );
    let out = h.run_with(&with_tls(&h, "prefer", None), &["--dry-run"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "prefer falls back to a clear connection"
    );

    // A certificate for the address the jobs connect to.
    let good = ca.server_cert("db-good", "IP:127.0.0.1", None).unwrap();
    h.pg.enable_tls(&good).await.unwrap();
    assert_refused(
        &h,
        &with_tls(&h, "verify-full", Some(&other_ca.cert())),
        &[
            "certificate is not signed by a CA the job trusts",
            "DJANGO_DB_SSLROOTCERT",
        ],
    )
    .await;
    let out = h.run_with(
        &with_tls(&h, "verify-full", Some(&ca.cert())),
        &["--dataset", "events"],
    );
    assert_eq!(out.status.code(), Some(0), "verify-full with the right CA");

    // A certificate for another host.
    let elsewhere = ca
        .server_cert("db-elsewhere", "IP:127.0.0.2", None)
        .unwrap();
    h.pg.enable_tls(&elsewhere).await.unwrap();
    let env = with_tls(&h, "verify-full", Some(&ca.cert()));
    let out = h.run_with(&env, &["--dataset", "outbox"]);
    assert_eq!(out.status.code(), Some(1));
    let line = error_line(&out);
    assert!(
        line.contains(
            "not valid for 127.0.0.1: set DJANGO_DB_HOST to a name the certificate lists"
        ),
        "{line}"
    );
    // `require` encrypts without checking, as libpq does.
    let out = h.run_with(&with_tls(&h, "require", None), &["--dry-run"]);
    assert_eq!(out.status.code(), Some(0));

    // An expired certificate.
    let expired = ca
        .server_cert(
            "db-expired",
            "IP:127.0.0.1",
            Some(("20200101000000Z", "20210101000000Z")),
        )
        .unwrap();
    h.pg.enable_tls(&expired).await.unwrap();
    let out = h.run_with(&env, &["--dataset", "outbox"]);
    assert_eq!(out.status.code(), Some(1));
    let line = error_line(&out);
    assert!(line.contains("certificate has expired: renew it"), "{line}");
}
