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
