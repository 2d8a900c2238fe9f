//! #17: what a run asks of the store does not grow with the dataset's age. The
//! requests of a no-op run and of a one-batch run are counted through the fault
//! proxy (no faults) at two ages that sit at the same place between checkpoints,
//! so every difference would be growth.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod support;

use lake_common::Dataset;
use lake_common::manifest::{self, CHECKPOINT_INTERVAL};
use lake_testkit::{FaultProxy, LoggedRequest, S3Op};
use support::*;

/// What a run cost, data files aside (their number follows the rows, not the age).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cost {
    requests: usize,
    listed_bytes: u64,
}

fn cost(log: &[LoggedRequest]) -> Cost {
    let log: Vec<&LoggedRequest> = log.iter().filter(|r| !r.path.contains("/date=")).collect();
    Cost {
        requests: log.len(),
        listed_bytes: log
            .iter()
            .filter(|r| r.op == S3Op::ListObjects)
            .map(|r| r.response_bytes)
            .sum(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_runs_requests_do_not_grow_with_the_datasets_age() {
    let mut h = Harness::new().await;
    let proxy = FaultProxy::start(&h.s3, 11).unwrap();
    h.extra_env.push(("AWS_ENDPOINT".into(), proxy.endpoint()));
    let young = CHECKPOINT_INTERVAL + 2;
    let old = 3 * CHECKPOINT_INTERVAL + 2;
    let mut measured = vec![];
    for round in 1..=old {
        generate_recent(&h.pg, 10, round).await;
        proxy.clear_log();
        h.run_ok(&["--dataset", "events"]);
        let batch = cost(&proxy.log());
        proxy.clear_log();
        h.run_ok(&["--dataset", "events"]);
        let noop = cost(&proxy.log());
        if round == young || round == old {
            eprintln!("after {round} batches: one batch {batch:?}, no-op {noop:?}");
            eprintln!("{}", proxy.log_text());
            measured.push((batch, noop));
        }
    }
    let (young_batch, young_noop) = measured[0];
    let (old_batch, old_noop) = measured[1];
    assert_eq!(old_noop.requests, young_noop.requests, "no-op run");
    assert_eq!(old_batch.requests, young_batch.requests, "one-batch run");
    // Listings return the entries after the checkpoint, never the history:
    // the same keys but for their numbers (object sizes may differ by a digit).
    for (what, young, old) in [
        ("no-op run", young_noop, old_noop),
        ("one-batch run", young_batch, old_batch),
    ] {
        assert!(
            old.listed_bytes <= young.listed_bytes + 64,
            "{what}: listings grew from {} to {} bytes",
            young.listed_bytes,
            old.listed_bytes
        );
    }
    // And the state read that way is the state of the whole log.
    let log = manifest::BronzeLog::load(&h.lake(), Dataset::BronzeEvents)
        .await
        .unwrap();
    assert_eq!(log.checkpoint_batch(), Some(3 * CHECKPOINT_INTERVAL));
    let all = h.manifests(Dataset::BronzeEvents).await;
    let via: Vec<_> = log.live_files().into_iter().map(|f| f.file).collect();
    assert_eq!(via, manifest::live_files(&all));
    h.assert_lake_equals_postgres().await;
}
