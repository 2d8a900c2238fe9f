//! Crashes, concurrent runs and byte-identical re-execution of a pinned batch.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use lake_common::Dataset;
use lake_common::manifest::BatchState;
use support::*;

const LEASE: u64 = 3;

/// Starts the binary stopped at `point` and waits until it says it got there.
fn run_to_failpoint(h: &Harness, point: &str) -> Child {
    let mut env = h.env();
    env.push(("BRONZE_FAILPOINT".into(), point.into()));
    env.push(("BRONZE_LEASE_SECS".into(), LEASE.to_string()));
    lake_testkit::failpoint::spawn_to(&mut h.command_with(&env, &[]), point).unwrap()
}

fn sigkill(child: Child) {
    lake_testkit::failpoint::sigkill(child).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_every_phase_then_rerun_converges() {
    let h = Harness::new().await;
    let client = h.pg.client().await.unwrap();
    lake_testkit::demo::generate(&client, 5_000, 1)
        .await
        .unwrap();
    for (i, point) in ["after-pin", "after-file", "before-commit", "after-commit"]
        .into_iter()
        .enumerate()
    {
        sigkill(run_to_failpoint(&h, point));
        if point != "after-commit" {
            let last = h.manifests(Dataset::BronzeEvents).await.pop().unwrap();
            assert_eq!(
                last.state,
                BatchState::Pending,
                "{point}: the killed batch stays pending"
            );
            // The killed run's lease (3 s) is still live but ends within
            // LEASE_WAIT: the next run waits for it, then resumes the batch.
            let started = Instant::now();
            let out = h.run(&[]);
            assert_eq!(out.status.code(), Some(0), "{point}: waits, then resumes");
            assert!(
                started.elapsed() >= Duration::from_secs(LEASE),
                "{point}: it did not take over a live lease"
            );
            h.assert_lake_equals_postgres().await;
        }
        h.run_ok(&[]);
        h.assert_lake_equals_postgres().await;
        generate_recent(&h.pg, 500, 100 + i as u64).await;
    }
    h.run_ok(&[]);
    h.assert_lake_equals_postgres().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lease_far_from_its_end_makes_the_next_run_exit_4() {
    let h = Harness::new().await;
    let client = h.pg.client().await.unwrap();
    lake_testkit::demo::generate(&client, 2_000, 1)
        .await
        .unwrap();
    let mut env = h.env();
    env.push(("BRONZE_FAILPOINT".into(), "after-pin".into()));
    env.push(("BRONZE_LEASE_SECS".into(), "120".into()));
    let mut child = h
        .command_with(&env, &[])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    BufReader::new(stderr)
        .lines()
        .map(|l| l.unwrap())
        .find(|l| l.contains("FAILPOINT after-pin reached"))
        .expect("fail point reached");
    let started = Instant::now();
    let out = h.run(&["--dataset", "events"]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "a live lease is another run's batch"
    );
    // Without conditional writes the holder's advisory lock answers first.
    let expected = if support::fallback_mode() {
        "holds the advisory lock"
    } else {
        "is being written by run"
    };
    assert!(
        support::stderr(&out).contains(expected),
        "{}",
        support::stderr(&out)
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "no waiting for a far lease"
    );
    sigkill(child);
}

/// A run whose snapshot is older than a batch another run committed while it
/// started is busy (exit 4, nothing written), not a database that went back in
/// time (exit 2, which fails the Job): `two_runs_started_together_commit_once`
/// hit that once in CI. The slow run waits after its snapshot
/// (`BRONZE_FAILPOINT=after-snapshot:<secs>`) while the other commits.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_overtaken_after_its_snapshot_is_busy_not_a_failover() {
    if fallback_mode() {
        // Under the advisory lock the slow run holds the dataset: the other
        // one is the busy one, and nothing can overtake.
        return;
    }
    let h = Harness::new().await;
    generate_recent(&h.pg, 200, 1).await;
    h.run_ok(&["--dataset", "events"]);
    generate_recent(&h.pg, 50, 2).await;
    let mut env = h.env();
    env.push(("BRONZE_FAILPOINT".into(), "after-snapshot:5".into()));
    let mut slow = h
        .command_with(&env, &["--dataset", "events"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(slow.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("FAILPOINT after-snapshot reached") {
            break;
        }
    }
    assert!(seen.contains("FAILPOINT after-snapshot reached"), "{seen}");
    // Another run exports newer rows and commits batch 2 meanwhile.
    generate_recent(&h.pg, 50, 3).await;
    h.run_ok(&["--dataset", "events"]);
    for line in lines {
        seen.push_str(&line.unwrap());
        seen.push('\n');
    }
    let status = slow.wait().unwrap();
    assert_eq!(status.code(), Some(4), "{seen}");
    assert!(seen.contains("was taken from a newer snapshot"), "{seen}");
    assert!(!seen.contains("went back"), "{seen}");
    // The next run goes on; bronze holds every row once.
    h.run_ok(&["--dataset", "events"]);
    assert_eq!(h.manifests(Dataset::BronzeEvents).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_runs_started_together_commit_once() {
    let h = Harness::new().await;
    let client = h.pg.client().await.unwrap();
    lake_testkit::demo::generate(&client, 30_000, 2)
        .await
        .unwrap();
    let a = h
        .command(&[])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let b = h
        .command(&[])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    // Datasets are independent: each run may win one dataset and lose the
    // other (exit 4 for the loss), but every dataset is committed exactly once.
    // Under the advisory lock the loser asks again for a moment (a session that
    // just ended may still hold it), so it may find the work done instead: 0.
    let codes = [a.status.code(), b.status.code()];
    assert!(
        codes.iter().all(|c| matches!(c, Some(0) | Some(4)))
            && (codes.contains(&Some(4)) || fallback_mode()),
        "{codes:?}\na: {}\nb: {}",
        stderr(&a),
        stderr(&b)
    );
    if codes.contains(&Some(4)) {
        let (loser, winner) = if a.status.code() == Some(4) {
            (&a, &b)
        } else {
            (&b, &a)
        };
        assert!(
            stderr(loser).contains("exiting without writing"),
            "loser: {}\nwinner: {}",
            stderr(loser),
            stderr(winner)
        );
    }
    for ds in [Dataset::BronzeEvents, Dataset::BronzeOutbox] {
        assert_eq!(h.manifests(ds).await.len(), 1, "{ds}: one batch");
    }
    h.assert_lake_equals_postgres().await;
    // Every run writes its report, the one that lost a race too.
    assert_eq!(h.run_reports().await.len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pinned_batch_reruns_byte_identical() {
    let h = Harness::new().await;
    let client = h.pg.client().await.unwrap();
    lake_testkit::demo::generate(&client, 20_000, 3)
        .await
        .unwrap();
    sigkill(run_to_failpoint(&h, "before-commit"));
    let before = h.checksums(Dataset::BronzeEvents).await;
    assert!(before.len() > 20);
    // New rows in the meantime must not leak into the pinned batch.
    generate_recent(&h.pg, 300, 4).await;
    std::thread::sleep(Duration::from_secs(LEASE + 1));
    let out = h.run_text_ok(&["--dataset", "events"]);
    assert!(
        stdout(&out).contains("resumed the batch of a run that stopped"),
        "{}",
        stdout(&out)
    );
    let m = h.manifests(Dataset::BronzeEvents).await;
    assert_eq!(m[0].state, BatchState::Committed);
    let committed: std::collections::BTreeMap<String, String> = m[0]
        .files
        .iter()
        .map(|f| (f.path.clone(), f.sha256.clone()))
        .collect();
    assert_eq!(committed, before, "same names, same bytes");
    assert_eq!(m[0].rows, 20_000);
}

/// A migration that rewrites the table while a pinned first export waits to be
/// resumed (its run killed; the rewrite had waited for the run's lock): every
/// row now carries the migration's xid, above the pinned horizon. The resume
/// re-plans on the table as it is, so nothing is lost — not even the rows
/// older than the look-back window, which the next batch's scan would skip.
#[tokio::test(flavor = "multi_thread")]
async fn a_rewrite_while_the_first_batch_waits_to_be_resumed_loses_nothing() {
    let h = Harness::new().await;
    let client = h.pg.client().await.unwrap();
    // A month of events: most of them older than BRONZE_LOOKBACK (24 h).
    lake_testkit::demo::generate(&client, 3_000, 7)
        .await
        .unwrap();
    sigkill(run_to_failpoint(&h, "after-pin"));
    client
        .batch_execute("ALTER TABLE stop_events ALTER COLUMN error_message TYPE varchar(700)")
        .await
        .unwrap();
    client
        .batch_execute("ALTER TABLE outbox ALTER COLUMN last_error TYPE varchar(700)")
        .await
        .unwrap();
    // The retry (waits out the killed run's short lease), then the next batch.
    let out = h.run_ok(&[]);
    assert!(
        stderr(&out).contains("re-planning it on the table as it is now"),
        "{}",
        stderr(&out)
    );
    h.run_ok(&[]);
    h.assert_lake_equals_postgres().await;
    let outbox_rows = h.pg_count("SELECT count(*) FROM outbox").await;
    let captured = h.committed_keys(Dataset::BronzeOutbox, "outbox_id").await;
    assert_eq!(captured.len() as i64, outbox_rows, "every outbox row once");
}

/// A retype that keeps the Parquet type but not PostgreSQL's wire format
/// (text → uuid) committed while a batch that exports the column waits to be
/// resumed: the resume re-plans on the live columns instead of decoding uuids
/// with the pinned text mapping.
#[tokio::test(flavor = "multi_thread")]
async fn a_retype_while_a_batch_waits_re_plans_on_the_live_columns() {
    let h = Harness::new().await;
    let client = h.pg.client().await.unwrap();
    generate_recent(&h.pg, 300, 11).await;
    client
        .batch_execute("ALTER TABLE stop_events ADD COLUMN ref text")
        .await
        .unwrap();
    h.run_ok(&[]);
    client
        .batch_execute("CREATE TABLE captured_ids AS SELECT event_id FROM stop_events")
        .await
        .unwrap();
    generate_recent(&h.pg, 200, 12).await;
    client
        .batch_execute(
            "UPDATE stop_events SET ref = gen_random_uuid()::text \
             WHERE event_id NOT IN (SELECT event_id FROM captured_ids)",
        )
        .await
        .unwrap();
    sigkill(run_to_failpoint(&h, "after-pin"));
    let pinned = h.manifests(Dataset::BronzeEvents).await;
    assert_eq!(pinned[1].state, BatchState::Pending);
    assert_eq!(pinned[1].added_columns[0].pg_type, "text");
    client
        .batch_execute("ALTER TABLE stop_events ALTER COLUMN ref TYPE uuid USING ref::uuid")
        .await
        .unwrap();
    h.run_ok(&[]);
    h.assert_lake_equals_postgres().await;
    let ms = h.manifests(Dataset::BronzeEvents).await;
    assert_eq!(ms[1].added_columns[0].pg_type, "uuid");
    let mut lake_refs = h.committed_keys(Dataset::BronzeEvents, "ref").await;
    lake_refs.sort();
    let pg_refs: Vec<String> = client
        .query(
            "SELECT ref::text FROM stop_events WHERE ref IS NOT NULL ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(pg_refs.len(), 200);
    assert_eq!(lake_refs, pg_refs, "the uuids as PostgreSQL prints them");
}

/// A glob reader of bronze (DuckDB over a local lake) while backfills of one
/// day are SIGKILLed after writing their file and retried (#16 item 5):
/// outside each backfill's window (its start to its retry's end) every poll
/// counts each event exactly once, none reads a torn file, and after each
/// retry the glob holds exactly PostgreSQL's rows.
#[tokio::test(flavor = "multi_thread")]
async fn a_glob_reader_sees_each_event_once_outside_the_backfill_windows() {
    use lake_testkit::glob::{GlobPoller, has_module, now, python};
    assert!(
        has_module("duckdb"),
        "DuckDB is missing from {}: run `./dev setup` (pip install duckdb)",
        python().display()
    );
    let h = Harness::new().await;
    let client = h.pg.client().await.unwrap();
    lake_testkit::demo::generate(&client, 20_000, 12)
        .await
        .unwrap();
    let day: chrono::NaiveDate = client
        .query_one(
            "SELECT (occurred_at AT TIME ZONE 'UTC')::date FROM stop_events
             GROUP BY 1 ORDER BY count(*) DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let total: i64 = client
        .query_one("SELECT count(*) FROM stop_events", &[])
        .await
        .unwrap()
        .get(0);
    let total = total as u64;
    let dir = tempfile::tempdir().unwrap();
    let lake_dir = dir.path().join("lake");
    let mut env = h.local_lake_env(&lake_dir);
    env.push(("BRONZE_LEASE_SECS".into(), LEASE.to_string()));
    let backfill = ["--dataset", "events", "--date", &day.to_string()];
    let run_ok = |args: &[&str]| {
        let out = h.command_with(&env, args).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    };
    run_ok(&["--dataset", "events"]);

    let poller = GlobPoller::start(
        &format!("{}/bronze/events/*/*.parquet", lake_dir.display()),
        "event_id",
        dir.path(),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let mut windows = Vec::new();
    for _ in 0..3 {
        let started = now();
        let mut killed_env = env.clone();
        killed_env.push(("BRONZE_FAILPOINT".into(), "after-file".into()));
        let mut child = h
            .command_with(&killed_env, &backfill)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stderr.take().unwrap()).lines();
        assert!(
            lines
                .map_while(Result::ok)
                .any(|l| l.contains("FAILPOINT after-file reached")),
            "the backfill never wrote its file"
        );
        sigkill(child);
        std::thread::sleep(Duration::from_millis(300)); // the crash, seen by the poller
        run_ok(&backfill); // the Job's retry: resumes the killed backfill
        windows.push((started, now()));
        std::thread::sleep(Duration::from_millis(500));
    }
    let polls = poller.finish().unwrap();
    let (mut quiet, mut busy, mut vanished) = (0, 0, 0);
    for p in &polls {
        let window = windows.iter().any(|(s, e)| p.overlaps(*s, *e));
        match (&p.seen, window) {
            (Ok(seen), false) => {
                assert_eq!(*seen, (total, total), "a quiet poll: {p:?}");
                quiet += 1;
            }
            (Ok(_), true) => busy += 1,
            (Err(_), true) if p.vanished_file() => vanished += 1,
            _ => panic!("a glob read failed: {p:?}"),
        }
    }
    eprintln!("{quiet} quiet polls, {busy} during the windows, {vanished} vanished files");
    // Polls after every retry, and polls inside the windows.
    for (_, end) in &windows {
        assert!(
            polls.iter().any(|p| p.started > *end && p.seen.is_ok()),
            "no poll after the retry that ended at {end}"
        );
    }
    assert!(
        busy >= 3,
        "the poller saw too little: {quiet} quiet, {busy} busy"
    );
}
