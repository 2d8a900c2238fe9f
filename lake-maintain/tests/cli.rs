//! The `lake-maintain` binary: its arguments, its summary, its report and
//! metrics, against moto and the Pushgateway.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::process::{Command, Output, Stdio};

use lake_testkit::{TestPushgateway, TestS3};

const BIN: &str = env!("CARGO_BIN_EXE_lake-maintain");

fn run(env: &[(String, String)], args: &[&str]) -> Output {
    let out = Command::new(BIN)
        .env_clear()
        .envs(env.iter().cloned())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    eprintln!(
        "lake-maintain {args:?} -> {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A grace under an hour, given as a flag or through its variable, is a usage
/// error (exit 2) on one line that names it; nothing is read.
#[test]
fn a_grace_under_an_hour_is_refused() {
    let env = vec![("LAKE_URL".to_owned(), "file:///nonexistent/lake".to_owned())];
    let out = run(&env, &["--grace", "10m"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--grace (MAINTAIN_GRACE) is 10m but must be at least 1h"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    let mut env = env;
    env.push(("MAINTAIN_UPLOAD_GRACE".into(), "soon".into()));
    let out = run(&env, &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("MAINTAIN_UPLOAD_GRACE"), "{err}");
}

/// A run on an empty lake succeeds, says what it did on one summary line,
/// writes its report and pushes its metrics; a dry run writes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_reports_and_pushes_its_metrics() {
    let (s3, gw) = tokio::join!(TestS3::start(), TestPushgateway::start());
    let (s3, gw) = (s3.unwrap(), gw.unwrap());
    let bucket = s3.new_bucket().await.unwrap();
    let mut env = s3.env(&bucket);
    env.push(("LOG_FORMAT".into(), "text".into()));
    env.push(("PUSHGATEWAY_URL".into(), gw.url()));

    let out = run(&env, &["--dry-run"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(
            "lake-maintain (dry run): no retention (bronze has no batch yet); no silver retention \
             (bronze has no batch yet); no retention of bronze/outbox (bronze has no batch yet); no \
             compaction (bronze has no batch yet); 0 objects under 4 prefixes"
        ),
        "{text}"
    );
    assert!(text.contains("would delete 0"), "{text}");
    let lake =
        lake_common::Lake::open(&lake_common::LakeConfig::from_vars(s3.env(&bucket)).unwrap())
            .unwrap();
    let listed = |lake: &lake_common::Lake| {
        let lake = lake.clone();
        async move {
            use futures::TryStreamExt;
            lake.store()
                .list(None)
                .map_ok(|m| m.location.to_string())
                .try_collect::<Vec<_>>()
                .await
                .unwrap()
        }
    };
    assert!(listed(&lake).await.is_empty(), "a dry run writes nothing");
    assert_eq!(
        gw.value("robson_lake_run_exit_code", &[("job", "lake-maintain")])
            .await
            .unwrap(),
        None
    );

    let out = run(&env, &[]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("deleted 0 unreferenced objects older than 2days"),
        "{text}"
    );
    assert!(
        text.contains("deleted 0 of 0 run reports older than 365 days"),
        "{text}"
    );
    let objects = listed(&lake).await;
    assert_eq!(objects.len(), 1, "{objects:?}");
    assert!(
        objects[0].starts_with("_runs/lake-maintain/"),
        "{objects:?}"
    );
    let job = [("job", "lake-maintain")];
    assert_eq!(
        gw.value("robson_lake_run_exit_code", &job).await.unwrap(),
        Some(0.0)
    );
    assert_eq!(
        gw.value("robson_lake_gc_deleted_objects", &job)
            .await
            .unwrap(),
        Some(0.0)
    );
    assert_eq!(
        gw.value(
            "robson_lake_retain_files_removed",
            &[("job", "lake-maintain"), ("dataset", "bronze/events")]
        )
        .await
        .unwrap(),
        Some(0.0)
    );
}
