//! SPEC §7 on a real S3 endpoint, through the binary: every rule sends its
//! execution to quarantine with the rule's name; a ratio above the threshold
//! exits 3 after the report is written.
//!
//! `status_in_enum` cannot be broken from bronze (silver only folds the five
//! execution event types, whose statuses are the enum); its check is unit-tested
//! in `quality.rs` and its count is reported as 0 here.
// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;

use support::*;

fn events() -> Vec<Ev> {
    let mut v = Vec::new();
    // Six clean executions.
    for i in 0..6u64 {
        let tok = format!("tok-ok-{i}");
        v.push(
            Ev::new(
                0x100 + 2 * i,
                "2025-06-01T08:00:00Z",
                Some(&tok),
                "STOP_TRIGGERED",
            )
            .client(1),
        );
        v.push(
            Ev::new(
                0x101 + 2 * i,
                "2025-06-01T08:00:01Z",
                Some(&tok),
                "EXECUTED",
            )
            .client(1)
            .fill("10")
            .slip("0.5"),
        );
    }
    v.extend([
        Ev::new(0x201, "2025-06-01T09:00:00Z", Some("tok-slip"), "EXECUTED")
            .client(1)
            .fill("10")
            .slip("50.0001"),
        Ev::new(
            0x202,
            "2025-06-01T09:00:00Z",
            Some("tok-nofill"),
            "EXECUTED",
        )
        .client(1),
        Ev::new(
            0x203,
            "2025-06-01T09:00:00Z",
            Some("tok-clients"),
            "STOP_TRIGGERED",
        )
        .client(1),
        Ev::new(0x204, "2025-06-01T09:00:01Z", Some("tok-clients"), "FAILED").client(2),
        Ev::new(
            0x205,
            "2025-06-01T09:00:00Z",
            Some("tok-symbol"),
            "EXECUTED",
        )
        .client(1)
        .symbol("btc-usdc"),
    ]);
    v
}

#[tokio::test]
async fn every_rule_quarantines_and_a_breach_exits_3_after_the_report() {
    let t = TestLake::new().await;
    commit_batch(&t.lake, 1, &events()).await;

    let out = t.run_bin(&[], &[]);
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("threshold"), "{stderr}");

    let report = latest_report(&t.lake).await;
    assert_eq!(report["outcome"], "quality_breach");
    let q = &report["quality"];
    assert_eq!(q["executions"], 10);
    assert_eq!(q["violating_executions"], 4);
    assert_eq!(q["breached"], true);
    assert_eq!(q["violations_per_rule"]["slippage_in_range"], 1);
    assert_eq!(q["violations_per_rule"]["executed_has_fill_price"], 2);
    assert_eq!(q["violations_per_rule"]["single_client"], 1);
    assert_eq!(q["violations_per_rule"]["symbol_format"], 1);
    assert_eq!(q["violations_per_rule"]["status_in_enum"], 0);
    assert_eq!(report["summary"]["executions"], 6);
    assert_eq!(report["summary"]["slippage_pct"]["avg"], "0.50000000");

    // The data was still published: clean rows in silver, violators quarantined.
    let good = silver(&t.lake).await;
    assert_eq!(good.len(), 6);
    assert!(good.keys().all(|k| k.starts_with("tok-ok-")));
    let rows: BTreeSet<(String, String, i64)> = quarantine(&t.lake)
        .await
        .into_iter()
        .map(|r| (r.execution_key, r.violation.unwrap(), r.client_id))
        .collect();
    let want: BTreeSet<(String, String, i64)> = [
        ("tok-slip", "slippage_in_range"),
        ("tok-nofill", "executed_has_fill_price"),
        ("tok-clients", "single_client"),
        ("tok-symbol", "symbol_format"),
        ("tok-symbol", "executed_has_fill_price"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned(), 1))
    .collect();
    assert_eq!(rows, want);
    let files = published(&t.lake).await;
    assert!(
        files.contains_key("silver/_quarantine/stop_executions/date=2025-06-01/client-1"),
        "{files:?}"
    );

    // A looser threshold passes (recomputing the day).
    let out = t.run_bin(
        &["--date", "2025-06-01", "--max-violation-ratio", "0.5"],
        &[],
    );
    assert_eq!(out.status.code(), Some(0));
    // And the variable works as well as the flag.
    let out = t.run_bin(
        &["--date", "2025-06-01"],
        &[("SILVER_MAX_VIOLATION_RATIO", "0.39")],
    );
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(
        published(&t.lake).await,
        files,
        "recomputing gives the same bytes"
    );
}
