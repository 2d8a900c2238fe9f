//! `just demo` end to end: the demo's printed summary matches what PostgreSQL and
//! the lake hold. Runs the real `lake-demo` binary, which runs the real jobs.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::process::Command;

#[test]
fn demo_summary_matches_postgres_and_the_lake() {
    let bin = env!("CARGO_BIN_EXE_lake-demo");
    for job in ["bronze-ingest", "silver-transform"] {
        let path = std::path::Path::new(bin).with_file_name(job);
        assert!(
            path.exists(),
            "build the jobs first: cargo build --workspace (nextest --workspace does)"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let summary_file = dir.path().join("summary.json");
    let out = Command::new(bin)
        .args(["--rows", "20000", "--lake"])
        .arg(&lake)
        .arg("--summary-file")
        .arg(&summary_file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&summary_file).unwrap()).unwrap();
    // What the person at the terminal sees: each job's summary, then the demo's.
    assert!(
        stdout.contains("committed version 1"),
        "silver's summary: {stdout}"
    );
    assert!(stdout.contains("==> Summary"), "{stdout}");
    assert!(!stdout.contains("DEMO-SUMMARY"), "no raw JSON at the end");
    // What a person reads: no Rust Debug lists, percentages to four decimals.
    assert!(!stdout.contains("[\""), "a Debug list in: {stdout}");
    let slippage = stdout
        .lines()
        .find(|l| l.contains("slippage %: average"))
        .unwrap_or_else(|| panic!("a slippage line: {stdout}"));
    let average = slippage
        .split("average ")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap();
    assert!(
        average.split('.').nth(1).is_some_and(|d| d.len() == 4),
        "{slippage}"
    );

    // 20 000 events, then 10 % more for the incremental run.
    assert_eq!(s["postgres_events"], 22_000);
    assert_eq!(s["bronze_events_rows"], s["postgres_events"], "{s}");
    assert_eq!(s["bronze_outbox_rows"], s["postgres_outbox"], "{s}");
    assert!(
        stdout.contains("bronze-ingest (run 2)") && stdout.contains("committed batch 2"),
        "{stdout}"
    );
    // Silver holds one row per execution key (quarantined ones in quarantine).
    let silver_total = s["silver_rows"].as_u64().unwrap() + s["quarantine_rows"].as_u64().unwrap();
    assert_eq!(
        silver_total,
        s["postgres_executions"].as_u64().unwrap(),
        "{s}"
    );
    assert!(stdout.contains("silver-transform (run 2)"), "{stdout}");

    // The lake on disk agrees with the summary: count the bronze rows with DuckDB.
    let python = concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin/python");
    let script = format!(
        "import duckdb\nprint(duckdb.sql(\"SELECT count(*) FROM read_parquet('{}/bronze/events/*/*.parquet', hive_partitioning=true)\").fetchall()[0][0])",
        lake.display()
    );
    let q = Command::new(python).args(["-c", &script]).output().unwrap();
    assert!(q.status.success(), "{}", String::from_utf8_lossy(&q.stderr));
    assert_eq!(
        String::from_utf8_lossy(&q.stdout).trim(),
        s["bronze_events_rows"].to_string()
    );
    let script = format!(
        "import duckdb\nprint(duckdb.sql(\"SELECT count(*) FROM read_parquet('{}/silver/stop_executions/*/*/*.parquet', hive_partitioning=true)\").fetchall()[0][0])",
        lake.display()
    );
    let q = Command::new(python).args(["-c", &script]).output().unwrap();
    assert!(q.status.success(), "{}", String::from_utf8_lossy(&q.stderr));
    assert_eq!(
        String::from_utf8_lossy(&q.stdout).trim(),
        s["silver_rows"].to_string()
    );
    assert!(stdout.contains(&format!(
        "lake written to {}",
        lake.canonicalize().unwrap().display()
    )));
}
