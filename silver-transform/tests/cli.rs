//! The binary's contract (SPEC §8): help, version, exit codes 0/2/4, dry-run.
// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

mod support;

use std::process::Command;
use std::time::Duration;

use silver_transform::key::Shard;
use silver_transform::manifest::{self, SilverManifest};
use support::*;

#[test]
fn help_and_version() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(
        version.starts_with(&format!(
            "silver-transform {} (commit ",
            env!("CARGO_PKG_VERSION")
        )),
        "{version}"
    );
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--date",
        "--from",
        "--to",
        "--full-refresh",
        "--dry-run",
        "--max-violation-ratio",
        "--shard-index",
        "--shard-count",
        "SILVER_MAX_VIOLATION_RATIO",
        "JOB_COMPLETION_INDEX",
        "DJANGO_DB_HOST",
        "Exit codes:",
        "SILVER_SHARD_COUNT",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
    assert!(!help.contains("PAUSE"), "the test-only knob is hidden");
}

#[test]
fn bad_arguments_and_configuration_exit_2() {
    let code = |args: &[&str], env: &[(&str, &str)]| {
        Command::new(BIN)
            .env_clear()
            .envs(env.iter().copied())
            .args(args)
            .output()
            .unwrap()
            .status
            .code()
    };
    let lake = [("LAKE_URL", "file:///tmp/silver-cli-test-unused")];
    assert_eq!(code(&["--max-violation-ratio", "1.5"], &lake), Some(2));
    assert_eq!(code(&["--date", "2025-13-01"], &lake), Some(2));
    assert_eq!(code(&["--from", "2025-06-01"], &lake), Some(2));
    assert_eq!(
        code(&["--shard-index", "2", "--shard-count", "2"], &lake),
        Some(2)
    );
    assert_eq!(
        code(&[], &[("JOB_COMPLETION_INDEX", "3"), lake[0]]),
        Some(2)
    );
    assert_eq!(
        code(&["--from", "2025-06-02", "--to", "2025-06-01"], &lake),
        Some(2)
    );
    assert_eq!(code(&[], &[]), Some(2), "no lake configured");
}

#[tokio::test]
async fn busy_exits_4_and_dry_run_writes_nothing() {
    let t = TestLake::new().await;
    commit_batch(
        &t.lake,
        1,
        &[Ev::new(
            1,
            "2025-06-01T08:00:00Z",
            Some("tok"),
            "STOP_TRIGGERED",
        )],
    )
    .await;

    // Dry run: computes and exits 0, writes nothing (no silver, no manifest, no report).
    let out = t.run_bin(&["--dry-run"], &[]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Silver run finished"));
    assert!(objects(&t.lake, "silver").await.is_empty());
    assert!(objects(&t.lake, "_runs").await.is_empty());
    assert!(
        manifest::find(&t.lake, Shard::ALL)
            .await
            .unwrap()
            .max_version
            == 0
    );

    // Another run holds the shard: exit 4, nothing written.
    let shard0 = Shard { index: 0, count: 2 };
    let shard0_args = ["--shard-count", "2", "--shard-index", "0"];
    let holder = manifest::Lease::pin(
        &t.lake,
        SilverManifest::pending(
            shard0,
            1,
            "other-run",
            Duration::from_secs(60),
            "incremental",
        ),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    let out = t.run_bin(&shard0_args, &[]);
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("other-run"));
    assert!(objects(&t.lake, "silver/stop_executions").await.is_empty());
    assert!(objects(&t.lake, "_runs").await.is_empty());
    // A scheduled run (LAKE_BUSY_OK, the CronJobs) leaves the work to the
    // holder and exits 0, saying so; a typo in the switch is exit 2.
    let out = t.run_bin(&shard0_args, &[("LAKE_BUSY_OK", "true")]);
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("other-run")
            && err.contains("LAKE_BUSY_OK: the run holding it does the work; exit 0"),
        "{err}"
    );
    assert!(err.contains("\"level\":\"WARN\""), "{err}");
    assert!(objects(&t.lake, "silver/stop_executions").await.is_empty());
    let out = t.run_bin(&shard0_args, &[("LAKE_BUSY_OK", "yes")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains(r#"LAKE_BUSY_OK=\"yes\" is neither true nor false"#)
    );
    // Another shard is not blocked by it.
    let out = t.run_bin(&["--shard-count", "2", "--shard-index", "1"], &[]);
    assert_eq!(out.status.code(), Some(0));
    holder.release().await;

    // Free again: the run succeeds; a second one has nothing to do.
    assert_eq!(t.run_bin(&shard0_args, &[]).status.code(), Some(0));
    assert_eq!(silver(&t.lake).await.len(), 1);
    assert_eq!(t.run_bin(&shard0_args, &[]).status.code(), Some(0));
    assert_eq!(latest_report(&t.lake).await["outcome"], "nothing_new");
}

/// What a person sees: a human summary in text mode, a loud warning when the
/// lake holds no bronze at all (a mistyped LAKE_URL or bucket), and one JSON
/// line with the report nested in JSON mode.
#[tokio::test]
async fn summary_in_text_and_json_and_a_warning_on_a_lake_without_bronze() {
    let t = TestLake::new().await;
    let out = t.run_bin(&[], &[("LOG_FORMAT", "text")]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        stdout.contains("WARNING: no committed bronze batch in this lake"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&t.bucket),
        "names the lake it looked at: {stdout}"
    );

    commit_batch(
        &t.lake,
        1,
        &[Ev::new(1, "2025-06-01T06:00:00Z", Some("tok"), "STOP_TRIGGERED").qty("1")],
    )
    .await;
    let out = t.run_bin(&[], &[("LOG_FORMAT", "json")]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let summary: serde_json::Value = stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON line"))
        .find(|v| v["message"] == "Run summary")
        .expect("summary line");
    assert_eq!(summary["report"]["committed_version"], 1);
    assert!(summary["report"]["summary"]["status_distribution"].is_object());
    assert_eq!(
        summary["report"]["source"],
        format!("s3://{}/bronze/events", t.bucket)
    );
    assert_pure_json(&out, &t.bucket);

    // Nothing new: the short path logs its own lines, JSON too.
    let out = t.run_bin(&[], &[("LOG_FORMAT", "json")]);
    assert_eq!(out.status.code(), Some(0));
    assert_pure_json(&out, &t.bucket);
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"outcome\":\"nothing_new\""));

    // Text: the start line names the lake and the mode.
    let out = t.run_bin(&["--date", "2025-06-01"], &[("LOG_FORMAT", "text")]);
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    let start = err
        .lines()
        .find(|l| l.contains("Starting silver-transform"))
        .unwrap_or_else(|| panic!("a start line: {err}"));
    for part in [
        &format!("lake=s3://{}", t.bucket),
        "mode=\"dates\"",
        "days=\"2025-06-01..=2025-06-01\"",
    ] {
        assert!(start.contains(part), "{part} in {start}");
    }
}

/// Both streams carry only JSON lines, without Rust `Debug` text; the run
/// starts with a line naming the lake and ends naming its report by full URL.
fn assert_pure_json(out: &std::process::Output, bucket: &str) {
    use lake_testkit::output::{json_lines, message};
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    for line in stdout.lines().chain(stderr.lines()) {
        for debug in ["Some(", "None", "NothingNew", "Success"] {
            assert!(!line.contains(debug), "Rust Debug text {debug:?}: {line}");
        }
    }
    for v in json_lines(&stdout).iter().chain(&json_lines(&stderr)) {
        assert_no_json_in_strings(v, &v.to_string());
        assert!(v["level"].is_string());
    }
    let start = message(&stderr, "Starting silver-transform").expect("a start line");
    assert!(
        start["lake"]
            .as_str()
            .unwrap()
            .starts_with(&format!("s3://{bucket} via http")),
        "{start}"
    );
    assert_eq!(start["mode"], "incremental");
    let written = message(&stderr, "Run report written").expect("the report's line");
    assert!(
        written["report"]
            .as_str()
            .unwrap()
            .starts_with(&format!("s3://{bucket}/_runs/silver-transform/")),
        "{written}"
    );
}

/// Nested values are JSON objects and arrays, never strings holding JSON.
fn assert_no_json_in_strings(v: &serde_json::Value, line: &str) {
    match v {
        serde_json::Value::String(s) => assert!(
            !matches!(
                serde_json::from_str::<serde_json::Value>(s),
                Ok(serde_json::Value::Object(_) | serde_json::Value::Array(_))
            ),
            "a string of JSON: {s} in {line}"
        ),
        serde_json::Value::Array(items) => items
            .iter()
            .for_each(|i| assert_no_json_in_strings(i, line)),
        serde_json::Value::Object(map) => map
            .values()
            .for_each(|i| assert_no_json_in_strings(i, line)),
        _ => {}
    }
}

/// #14: a dry run against a directory that does not exist creates nothing; a
/// reader that closes stdout early is not a panic; a bad value in a variable
/// names the variable, not the flag it sets.
#[tokio::test]
async fn a_dry_run_creates_nothing_a_closed_stdout_is_no_panic_and_a_bad_variable_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let lake_dir = dir.path().join("not/there");
    let local = |extra: &[(&str, &str)]| {
        let mut cmd = Command::new(BIN);
        cmd.env_clear()
            .env("LAKE_URL", lake_dir.to_str().unwrap())
            .env("LOG_FORMAT", "text")
            .envs(extra.iter().copied());
        cmd
    };
    let out = local(&[]).arg("--dry-run").output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!lake_dir.exists(), "--dry-run created the lake directory");

    // `silver-transform --dry-run | head -0`.
    let out = lake_testkit::output::with_stdout_closed(local(&[]).arg("--dry-run")).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    for (var, value, expect) in [
        (
            "SILVER_SHARD_COUNT",
            "abc",
            "SILVER_SHARD_COUNT=\"abc\" is not valid: invalid digit",
        ),
        (
            "SILVER_MAX_VIOLATION_RATIO",
            "5",
            "SILVER_MAX_VIOLATION_RATIO=\"5\" is not valid: 5 is not within 0..=1",
        ),
        (
            "JOB_COMPLETION_INDEX",
            "-1",
            "JOB_COMPLETION_INDEX=\"-1\" is not valid",
        ),
    ] {
        let out = local(&[(var, value)]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{var}: {err}");
        assert!(err.contains(expect), "expected {expect:?} in: {err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
    }
    // The flag itself keeps clap's wording.
    let out = local(&[]).args(["--shard-count", "abc"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("'--shard-count <SHARD_COUNT>'"));
    assert!(!lake_dir.exists());
}

/// #14: silver shows progress on a terminal (events folded, then partitions
/// published), never on a log line's line, with whole rates. Forty partitions,
/// each publish paused, keep the bar up while debug lines are logged.
#[tokio::test]
async fn on_a_terminal_progress_and_log_lines_never_share_a_line() {
    let t = TestLake::new().await;
    let events: Vec<Ev> = (0..40)
        .map(|n| {
            Ev::new(
                n + 1,
                "2025-06-01T06:00:00Z",
                Some(&format!("tok{n}")),
                "STOP_TRIGGERED",
            )
            .client(n as i64 + 1)
        })
        .collect();
    commit_batch(&t.lake, 1, &events).await;
    let mut env = t.env();
    env.retain(|(k, _)| k != "LOG_FORMAT");
    env.push(("LOG_FORMAT".into(), "text".into()));
    env.push(("SILVER_TEST_PAUSE_AFTER_PUBLISH_MS".into(), "150".into()));
    let out = lake_testkit::terminal::run_on_terminal(BIN, &[], &env).unwrap();
    let seen = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{seen}");
    let draws = lake_testkit::terminal::check_progress(&out.stdout, "shard-0-of-1 publishing")
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("the bar was drawn {draws} times");
    assert!(seen.contains("Published partition"), "{seen}");
    assert!(seen.contains("40 partitions recomputed"), "{seen}");
}

/// #18: a run pushes its metrics to the Pushgateway, one group per shard; a
/// malformed `PUSHGATEWAY_URL` is only a warning.
#[tokio::test]
async fn a_run_pushes_its_metrics_per_shard() {
    let t = TestLake::new().await;
    let gw = lake_testkit::TestPushgateway::start().await.unwrap();
    commit_batch(
        &t.lake,
        1,
        &[
            Ev::new(1, "2025-06-01T06:00:00Z", Some("a"), "STOP_TRIGGERED").qty("1"),
            Ev::new(2, "2025-06-01T07:00:00Z", Some("b"), "STOP_TRIGGERED").qty("1"),
        ],
    )
    .await;
    let url = gw.url();
    let out = t.run_bin(&["--shard-count", "1"], &[("PUSHGATEWAY_URL", &url)]);
    assert_eq!(out.status.code(), Some(0));
    let shard = [("job", "silver-transform"), ("shard", "0")];
    let value = |name: &'static str| {
        let gw = &gw;
        let shard = &shard;
        async move { gw.value(name, shard).await.unwrap() }
    };
    assert_eq!(value("robson_lake_run_exit_code").await, Some(0.0));
    assert_eq!(
        value("robson_lake_silver_executions_written").await,
        Some(2.0)
    );
    assert_eq!(
        value("robson_lake_silver_committed_version").await,
        Some(1.0)
    );
    assert!(
        value("robson_lake_last_success_timestamp_seconds")
            .await
            .is_some()
    );

    // A malformed URL is a warning naming the variable, not a failed run.
    let out = t.run_bin(&[], &[("PUSHGATEWAY_URL", "localhost:9091")]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("PUSHGATEWAY_URL"),
        "names the variable"
    );
}

/// A shard count changed on an existing lake is refused before anything is
/// written (the new shards would publish their partitions next to the old
/// shard's, and a glob reader would count every execution twice), unless the
/// new shards re-shard with --full-refresh.
#[tokio::test]
async fn a_changed_shard_count_is_refused_unless_re_sharded_by_a_full_refresh() {
    let t = TestLake::new().await;
    commit_batch(
        &t.lake,
        1,
        &[
            Ev::new(1, "2025-06-01T06:00:00Z", Some("a"), "STOP_TRIGGERED").client(1),
            Ev::new(2, "2025-06-01T07:00:00Z", Some("b"), "STOP_TRIGGERED").client(2),
        ],
    )
    .await;
    assert_eq!(t.run_bin(&[], &[]).status.code(), Some(0));
    let before = objects(&t.lake, "silver").await;
    for index in ["0", "1"] {
        let out = t.run_bin(&["--shard-count", "2", "--shard-index", index], &[]);
        assert_eq!(out.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("built with 1 shard(s)") && stderr.contains("SILVER_SHARD_COUNT=2"),
            "{stderr}"
        );
    }
    assert_eq!(objects(&t.lake, "silver").await, before, "nothing written");
    // The count it was built with still runs.
    assert_eq!(t.run_bin(&[], &[]).status.code(), Some(0));

    // Re-sharding: each new shard once with --full-refresh; it replaces the
    // old layout's objects of its clients, then incremental runs go on.
    for index in ["0", "1"] {
        let args = ["--shard-count", "2", "--shard-index", index];
        let out = t.run_bin(&[&args[..], &["--full-refresh"]].concat(), &[]);
        assert_eq!(out.status.code(), Some(0));
        assert_eq!(t.run_bin(&args, &[]).status.code(), Some(0));
    }
    let files: Vec<String> = objects(&t.lake, "silver/stop_executions")
        .await
        .into_keys()
        .filter(|k| !k.contains("/_manifests/"))
        .collect();
    assert_eq!(
        files.len(),
        2,
        "one object per partition, none left twice: {files:?}"
    );
}

/// #17: `SILVER_MEMORY_MB` sizes the fold windows (a quarter of the budget
/// over `--parallel-days` windows of ~350-byte rows) and, when a fold of
/// everything does not fit it, folds in key-hash passes whose largest fits
/// (the earlier passes' rows parked on local disk); the report says what the
/// run held by the memory model. A run made to hold more than its budget
/// (`--fold-passes 1`) warns with the fix. An explicit `--fold-window-rows`
/// still wins.
#[tokio::test]
async fn the_memory_budget_sizes_the_fold_and_a_run_over_it_warns() {
    let t = TestLake::new().await;
    let start = ts("2025-06-01T00:00:00Z");
    // 40 000 one-event executions in one day: more rows than a 64 MiB
    // budget's window (23 967), and more executions than it holds at once.
    let events: Vec<Ev> = (0..40_000u64)
        .map(|n| {
            Ev::at_micros(
                n + 1,
                start + n as i64 * 2_000_000,
                Some(&format!("t{n}")),
                "STOP_TRIGGERED",
            )
            .qty("1")
        })
        .collect();
    commit_batch(&t.lake, 1, &events).await;
    let out = t.run_bin(&[], &[("SILVER_MEMORY_MB", "64")]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = latest_report(&t.lake).await;
    let memory = &report["memory"];
    assert_eq!(memory["budget_mb"], 64);
    assert_eq!(memory["budget_source"], "setting");
    assert_eq!(memory["fold_window_rows"], (64u64 << 20) / 4 / 350 / 2);
    assert_eq!(memory["passes"], 2, "{memory}");
    let largest = memory["executions"].as_u64().unwrap();
    assert!((19_000..=21_000).contains(&largest), "{memory}");
    assert!(memory["model_peak_mb"].as_u64().unwrap() <= 64, "{memory}");
    assert_eq!(report["work"]["fold_windows"], 4, "two per pass: {report}");
    assert!(
        report["work"]["parked_bytes"].as_u64().unwrap() > 0,
        "{report}"
    );
    assert_eq!(report["rows"]["silver"], 40_000, "{report}");
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(!logs.contains("more than its memory budget"), "{logs}");
    // The log counts the executions of every pass, not the last one's.
    let recomputed = logs
        .lines()
        .find(|l| l.contains("Recomputed executions"))
        .unwrap_or_else(|| panic!("{logs}"));
    assert!(
        recomputed.contains(r#""executions":40000"#) && recomputed.contains(r#""passes":2"#),
        "{recomputed}"
    );
    let in_passes = published(&t.lake).await;

    // The same in one pass: the same files, and over the budget, which the
    // run says with the fix.
    let out = t.run_bin(
        &["--full-refresh", "--fold-passes", "1"],
        &[("SILVER_MEMORY_MB", "64")],
    );
    assert_eq!(out.status.code(), Some(0));
    let report = latest_report(&t.lake).await;
    assert_eq!(report["memory"]["passes"], 1);
    assert_eq!(report["memory"]["executions"], 40_000);
    assert!(
        report["memory"]["model_peak_mb"].as_u64().unwrap() > 64,
        "{report}"
    );
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(
        logs.contains("more than its memory budget") && logs.contains("SILVER_SHARD_COUNT"),
        "{logs}"
    );
    assert_eq!(published(&t.lake).await, in_passes);

    // The default budget (no cgroup limit here: 512 MiB) folds the day whole
    // in one pass and says nothing; --fold-window-rows overrides the budget's
    // windows.
    let out = t.run_bin(&["--full-refresh"], &[]);
    assert_eq!(out.status.code(), Some(0));
    let report = latest_report(&t.lake).await;
    assert_eq!(report["work"]["fold_windows"], 1, "{report}");
    assert_eq!(report["memory"]["passes"], 1, "{report}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("memory budget"));
    let out = t.run_bin(
        &[
            "--full-refresh",
            "--fold-window-rows",
            "10000",
            "--fold-passes",
            "1",
        ],
        &[("SILVER_MEMORY_MB", "64")],
    );
    assert_eq!(out.status.code(), Some(0));
    let report = latest_report(&t.lake).await;
    assert_eq!(report["work"]["fold_windows"], 4, "{report}");
    assert_eq!(report["memory"]["fold_window_rows"], 10_000);
}
