//! kill -9 of `lake-maintain` at each phase (#20): the next run converges on
//! the state an uninterrupted run leaves, nothing referenced is lost, silver is
//! unchanged, and what the killed run left is garbage the collection removes.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod support;

use std::process::Command;
use std::time::{Duration, SystemTime};

use lake_common::Dataset;
use lake_common::manifest::BronzeLog;
use lake_maintain::Options;
use lake_testkit::failpoint::{sigkill, spawn_to};
use silver_transform::Mode;
use support::*;

const MAINTAIN: &str = env!("CARGO_BIN_EXE_lake-maintain");
const DAY: Duration = Duration::from_secs(24 * 3600);
const KEEP: u32 = 10;

/// The phases, with the arguments of the killed run.
const CASES: [(&str, &[&str]); 5] = [
    // Retention planned, its entry not written.
    ("retain-before-commit", &[]),
    // Retention committed, the files it removed not deleted yet.
    ("after-rewrite-commit", &[]),
    // Compaction's files written, its entry not.
    ("compact-before-commit", &["--no-retention"]),
    // Compaction committed, the files it replaced not deleted yet.
    ("after-rewrite-commit", &["--no-retention"]),
    // Retention and compaction done, references read, nothing swept.
    ("before-sweep", &[]),
];

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_every_phase_then_the_next_run_converges() {
    for (point, args) in CASES {
        let mut h = Harness::local().await;
        h.lookback = 40 * DAY;
        // Three files on each of 20 closed days, then the last hours.
        let end = SystemTime::now() - 3 * DAY;
        for seed in 1..=3 {
            h.batch_ending(800, seed, end, 20 * DAY).await;
        }
        h.batch(200, 9).await;
        let lake = h.lake();
        let silver = silver_rows(&lake).await;

        let mut cmd = Command::new(MAINTAIN);
        cmd.args(args)
            .envs(h.lake_env.iter().cloned())
            .env("MAINTAIN_FAILPOINT", point)
            .env("MAINTAIN_BRONZE_RETENTION_DAYS", KEEP.to_string())
            .env("LOG_FORMAT", "json");
        sigkill(spawn_to(&mut cmd, point).unwrap()).unwrap();

        // The next run does what is left.
        let next = Options {
            bronze_retention_days: Some(KEEP),
            ..options(Duration::from_secs(3600), false)
        };
        let r = lake_maintain::run(
            &lake,
            &Options {
                compact: true,
                ..next.clone()
            },
        )
        .await
        .unwrap();
        let log = BronzeLog::load(&lake, Dataset::BronzeEvents).await.unwrap();
        let latest = log.latest_committed().unwrap().snapshot_time.date_naive();
        let horizon = latest - chrono::Days::new(u64::from(KEEP));
        assert_eq!(
            log.retained_before(),
            Some(horizon),
            "{point} {args:?}: {r:?}"
        );
        let closed = latest - chrono::Days::new(lake_maintain::compact::CLOSED_AFTER_DAYS);
        let mut per_day = std::collections::BTreeMap::<_, u32>::new();
        for f in log.live_files() {
            assert!(f.file.date >= horizon, "{point}: {} kept", f.file.path);
            *per_day.entry(f.file.date).or_default() += 1;
        }
        assert!(
            per_day.iter().all(|(d, n)| *d >= closed || *n == 1),
            "{point} {args:?}: a closed day with several files: {per_day:?}"
        );
        h.assert_bronze_equals_postgres().await;
        assert_references_exist(&lake).await;
        let s = h.silver(Mode::Incremental).await;
        assert_eq!(s.partitions.recomputed, 0, "{point}: {:?}", s.partitions);
        assert_eq!(
            silver_rows(&lake).await,
            silver,
            "{point}: silver unchanged"
        );
        h.assert_full_refresh_changes_nothing().await;

        // What the killed run left is unreferenced: collected after the grace,
        // and then nothing unreferenced is left.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let gc = lake_maintain::run(&lake, &options(Duration::from_secs(1), false))
            .await
            .unwrap();
        // Only the compaction killed before its commit leaves files no job
        // deletes; what a killed rewrite superseded, bronze's own clean-up
        // (its --verify run above) or this collection deletes.
        match point {
            "compact-before-commit" => assert!(gc.garbage().0 > 0, "{point}: {:#?}", gc.prefixes),
            "after-rewrite-commit" => {}
            _ => assert_eq!(gc.garbage().0, 0, "{point}: {:#?}", gc.prefixes),
        }
        let again = lake_maintain::run(&lake, &options(Duration::from_secs(1), false))
            .await
            .unwrap();
        assert_eq!(again.garbage().0, 0, "{point}: {:#?}", again.prefixes);
        assert_references_exist(&lake).await;
    }
}

/// kill -9 of silver's retention after it pinned and wrote the shard's next
/// version, before the commit: silver's next run waits for the lease, finds
/// the version abandoned and recomputes nothing; the next retention applies
/// it; what the killed run wrote is garbage the collection removes.
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_in_silver_retention_then_silver_and_the_next_run_converge() {
    const SILVER_KEEP: u32 = 14;
    let point = "silver-retain-before-commit";
    let mut h = Harness::local().await;
    h.lookback = 40 * DAY;
    h.batch_ending(2000, 1, SystemTime::now() - 2 * DAY, 20 * DAY)
        .await;
    h.batch(200, 2).await;
    let lake = h.lake();
    let silver = silver_rows(&lake).await;

    let mut cmd = Command::new(MAINTAIN);
    cmd.args(["--no-compaction"])
        .envs(h.lake_env.iter().cloned())
        .env("MAINTAIN_FAILPOINT", point)
        .env("MAINTAIN_BRONZE_RETENTION_DAYS", KEEP.to_string())
        .env("MAINTAIN_SILVER_RETENTION_DAYS", SILVER_KEEP.to_string())
        .env("LOG_FORMAT", "json");
    sigkill(spawn_to(&mut cmd, point).unwrap()).unwrap();
    assert_eq!(silver_rows(&lake).await, silver, "nothing committed");
    // The killed run wrote its version's key index and partition months.
    let killed = silver_transform::manifest::find(&lake, silver_transform::key::Shard::ALL)
        .await
        .unwrap()
        .max_version;
    let of_killed = |objects: std::collections::BTreeSet<String>| -> Vec<String> {
        objects
            .into_iter()
            .filter(|o| o.contains("/segments/") && o.contains(&format!("{killed:010}.")))
            .collect()
    };
    assert!(
        !of_killed(objects(&lake).await).is_empty(),
        "version {killed}"
    );

    let s = h.silver(Mode::Incremental).await;
    assert_eq!(s.partitions.recomputed, 0, "{:?}", s.partitions);
    assert_eq!(silver_rows(&lake).await, silver);

    let r = lake_maintain::run(
        &lake,
        &Options {
            bronze_retention_days: Some(KEEP),
            silver_retention_days: Some(SILVER_KEEP),
            ..options(Duration::from_secs(3600), false)
        },
    )
    .await
    .unwrap();
    let retained = r.silver_retention.unwrap();
    let horizon = retained.horizon.unwrap();
    assert!(retained.shards[0].version.is_some(), "{retained:?}");
    let kept: std::collections::BTreeSet<_> = silver
        .iter()
        .filter(|p| p.1 >= horizon.to_string())
        .cloned()
        .collect();
    assert!(kept.len() < silver.len());
    assert_eq!(silver_rows(&lake).await, kept);
    h.silver(Mode::Incremental).await;
    h.assert_full_refresh_changes_nothing().await;
    assert_eq!(silver_rows(&lake).await, kept);
    assert_references_exist(&lake).await;

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let gc = lake_maintain::run(&lake, &options(Duration::from_secs(1), false))
        .await
        .unwrap();
    assert_eq!(gc.garbage().0, 0, "{:#?}", gc.prefixes);
    assert_eq!(of_killed(objects(&lake).await), Vec::<String>::new());
    let again = lake_maintain::run(&lake, &options(Duration::from_secs(1), false))
        .await
        .unwrap();
    assert_eq!(again.garbage().0, 0, "{:#?}", again.prefixes);
    assert_references_exist(&lake).await;
    assert_eq!(silver_rows(&lake).await, kept);
}

/// kill -9 of the outbox's retention right after its entry committed, before
/// it deleted the files it removed: the next run has nothing left to remove,
/// `--verify` of both datasets agrees, and bronze's next run deletes the
/// removed files (as after any rewrite), leaving nothing to collect.
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_after_the_outbox_retention_commit_converges() {
    let point = "after-rewrite-commit";
    let mut h = Harness::local().await;
    h.lookback = 40 * DAY;
    h.batch_ending(2000, 1, SystemTime::now() - 2 * DAY, 20 * DAY)
        .await;
    // Every outbox row of the days before the target gets a new version: the
    // old files hold superseded versions only.
    let target = chrono::Utc::now().date_naive() - chrono::Days::new(u64::from(KEEP) + 1);
    let before = target.and_hms_opt(0, 0, 0).unwrap().and_utc();
    let n =
        h.pg.client()
            .await
            .unwrap()
            .execute(
                "UPDATE outbox SET retry_count = retry_count + 1 WHERE created_at < $1",
                &[&before],
            )
            .await
            .unwrap();
    assert!(n > 0);
    h.bronze().await;
    let lake = h.lake();
    let outbox = || async {
        BronzeLog::load(&lake, Dataset::BronzeOutbox)
            .await
            .unwrap()
            .live_files()
    };
    let live = outbox().await;

    let mut cmd = Command::new(MAINTAIN);
    cmd.args(["--no-compaction"])
        .envs(h.lake_env.iter().cloned())
        .env("MAINTAIN_FAILPOINT", point)
        // Nothing of bronze/events or silver is old enough: the outbox's entry
        // is the run's only one.
        .env("MAINTAIN_BRONZE_RETENTION_DAYS", "3650")
        .env("MAINTAIN_OUTBOX_RETENTION_DAYS", KEEP.to_string())
        .env("LOG_FORMAT", "json");
    sigkill(spawn_to(&mut cmd, point).unwrap()).unwrap();
    let after = outbox().await;
    let removed: Vec<String> = live
        .iter()
        .filter(|f| !after.iter().any(|a| a.file.path == f.file.path))
        .map(|f| f.file.path.clone())
        .collect();
    assert!(!removed.is_empty(), "the entry committed");
    assert!(removed.iter().all(|p| {
        live.iter()
            .any(|f| &f.file.path == p && f.file.date < target)
    }));
    let left = objects(&lake).await;
    assert!(
        removed.iter().any(|p| left.contains(p)),
        "killed before its deletes"
    );

    let next = Options {
        outbox_retention_days: Some(KEEP),
        ..options(Duration::from_secs(3600), false)
    };
    let r = lake_maintain::run(&lake, &next).await.unwrap();
    assert_eq!(
        r.outbox_retention.unwrap().files,
        0,
        "nothing left to remove"
    );
    h.assert_both_datasets_equal_postgres().await;
    // Bronze's next run re-runs the latest entry's clean-up first.
    h.bronze().await;
    let left = objects(&lake).await;
    assert!(removed.iter().all(|p| !left.contains(p)), "deleted");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let gc = lake_maintain::run(&lake, &options(Duration::from_secs(1), false))
        .await
        .unwrap();
    assert_eq!(gc.garbage().0, 0, "{:#?}", gc.prefixes);
    assert_references_exist(&lake).await;
}
