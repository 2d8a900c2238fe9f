//! The checks, one module per thing the jobs depend on.
//!
//! Each module exports `NAMES` (its check names, in order) and a `run` that pushes
//! exactly one result per name, so the report always has the same lines.

pub mod cluster;
pub mod config;
pub mod dns;
pub mod lake;
pub mod network;
pub mod postgres;
pub mod s3;

use std::future::Future;
use std::time::Duration;

use crate::report::CheckResult;

/// Runs `check` under `limit`. On timeout the result is a `FAIL` of `name` that
/// says so, with `fix` (which should name what can black-hole this check).
pub(crate) async fn timed<F>(
    name: &'static str,
    limit: Duration,
    fix: &str,
    check: F,
) -> CheckResult
where
    F: Future<Output = CheckResult>,
{
    match tokio::time::timeout(limit, check).await {
        Ok(result) => result,
        Err(_) => CheckResult::fail(
            name,
            format!("timed out after {}", human_duration(limit)),
            fix,
        ),
    }
}

/// An error and its sources on one line.
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    lake_common::postgres::error_chain(err)
}

/// A duration as a person reads it: `45s`, `12m`, `3h 05m`, `2d 4h`.
pub(crate) fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {}h", s / 86400, (s % 86400) / 3600),
    }
}

/// Joins names as `a, b and c`.
pub(crate) fn join_and(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(human_duration(Duration::from_secs(5)), "5s");
        assert_eq!(human_duration(Duration::from_secs(125)), "2m");
        assert_eq!(
            human_duration(Duration::from_secs(3 * 3600 + 5 * 60)),
            "3h 05m"
        );
        assert_eq!(
            human_duration(Duration::from_secs(2 * 86400 + 4 * 3600)),
            "2d 4h"
        );
    }

    #[test]
    fn joins() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(join_and(&s(&["a"])), "a");
        assert_eq!(join_and(&s(&["a", "b", "c"])), "a, b and c");
    }

    #[tokio::test]
    async fn timeouts_become_failures() {
        let r = timed("x", Duration::from_millis(10), "check the network", async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            CheckResult::pass("x", "never")
        })
        .await;
        assert_eq!(r.status, crate::Status::Fail);
        assert_eq!(r.detail, "timed out after 0s");
    }
}
