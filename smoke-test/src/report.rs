//! Check results and how they are shown.
//!
//! A smoke test is read by a person in `kubectl logs` and by scripts (`just
//! deploy`, CI), so every result is exactly one line in the table and one object
//! in the JSON array, always with the same names in the same order: a script can
//! look up `postgres.contract` without knowing which other checks failed. Checks
//! that could not run because something they need failed (or because of
//! `--dry-run`) are listed as `SKIP` with the reason, so one cause gives one
//! `FAIL`, not a cascade.

use std::fmt::Write as _;

use lake_common::ExitStatus;
use serde::Serialize;

/// The verdict of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    /// Works as the jobs need it.
    Pass,
    /// Works, but something will bite later (stale data, too many privileges, no
    /// conditional writes); the exit code stays 0.
    Warn,
    /// The jobs will fail; the exit code is non-zero.
    Fail,
    /// Not run: a check it depends on failed, or `--dry-run`.
    Skip,
}

impl Status {
    /// `PASS`, `WARN`, `FAIL` or `SKIP`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "PASS",
            Self::Warn => "WARN",
            Self::Fail => "FAIL",
            Self::Skip => "SKIP",
        }
    }
}

/// The result of one check: one line of the table, one object of `--json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckResult {
    /// Stable dotted name, e.g. `postgres.contract`.
    pub name: &'static str,
    /// The verdict.
    pub status: Status,
    /// What was found, on one line, without secrets.
    pub detail: String,
    /// What to do about it (WARN and FAIL), on one line.
    pub fix: Option<String>,
}

impl CheckResult {
    /// A passed check.
    pub fn pass(name: &'static str, detail: impl Into<String>) -> Self {
        Self::new(name, Status::Pass, detail.into(), None)
    }

    /// A warning with its fix.
    pub fn warn(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::new(name, Status::Warn, detail.into(), Some(fix.into()))
    }

    /// A failure with its fix.
    pub fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::new(name, Status::Fail, detail.into(), Some(fix.into()))
    }

    /// A check that did not run, and why.
    pub fn skip(name: &'static str, why: impl Into<String>) -> Self {
        Self::new(name, Status::Skip, why.into(), None)
    }

    fn new(name: &'static str, status: Status, detail: String, fix: Option<String>) -> Self {
        Self {
            name,
            status,
            detail: one_line(&detail),
            fix: fix.map(|f| one_line(&f)),
        }
    }
}

/// Collapses whitespace runs (newlines from server messages included) into
/// single spaces, so every result stays on one line.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// All results of one smoke-test run, in check order.
#[derive(Debug, Clone, Default)]
pub struct Report {
    results: Vec<CheckResult>,
}

impl Report {
    /// Appends a result.
    pub fn push(&mut self, result: CheckResult) {
        self.results.push(result);
    }

    /// Appends a `SKIP` for each of `names`.
    pub fn skip_all(&mut self, names: &[&'static str], why: &str) {
        for name in names {
            self.push(CheckResult::skip(name, why));
        }
    }

    /// The results, in check order.
    pub fn results(&self) -> &[CheckResult] {
        &self.results
    }

    /// The result of check `name`, if it was recorded.
    pub fn get(&self, name: &str) -> Option<&CheckResult> {
        self.results.iter().find(|r| r.name == name)
    }

    /// True if check `name` ran and did not fail (PASS or WARN).
    pub fn usable(&self, name: &str) -> bool {
        self.get(name)
            .is_some_and(|r| matches!(r.status, Status::Pass | Status::Warn))
    }

    /// True if check `name` ran and failed (a skipped check has not failed).
    pub fn failed(&self, name: &str) -> bool {
        self.get(name).is_some_and(|r| r.status == Status::Fail)
    }

    /// Number of results with `status`.
    pub fn count(&self, status: Status) -> usize {
        self.results.iter().filter(|r| r.status == status).count()
    }

    /// SPEC §8: 0 without failures; 2 when the configuration is what failed
    /// (nothing else could be checked); 1 for any other failure. Warnings do not
    /// change the exit code.
    pub fn exit_status(&self) -> ExitStatus {
        if self
            .get(crate::checks::config::NAME)
            .is_some_and(|r| r.status == Status::Fail)
        {
            ExitStatus::Usage
        } else if self.count(Status::Fail) > 0 {
            ExitStatus::Failure
        } else {
            ExitStatus::Success
        }
    }

    /// The human table: one line per check, `STATUS  name  detail; fix: …`,
    /// then a summary line.
    pub fn to_table(&self) -> String {
        let width = self.results.iter().map(|r| r.name.len()).max().unwrap_or(0);
        let mut out = String::new();
        for r in &self.results {
            let _ = write!(
                out,
                "{:<4}  {:<width$}  {}",
                r.status.as_str(),
                r.name,
                r.detail
            );
            if let Some(fix) = &r.fix {
                let _ = write!(out, "; fix: {fix}");
            }
            out.push('\n');
        }
        let verdict = match self.exit_status() {
            ExitStatus::Success => "OK",
            _ => "FAILED",
        };
        let _ = writeln!(
            out,
            "\nsmoke-test {verdict}: {} passed, {} warnings, {} failed, {} skipped",
            self.count(Status::Pass),
            self.count(Status::Warn),
            self.count(Status::Fail),
            self.count(Status::Skip)
        );
        out
    }

    /// The `--json` output: an array with one `{name, status, detail, fix}` object
    /// per check (`fix` is `null` when there is nothing to fix).
    pub fn to_json(&self) -> String {
        // A Vec of plain structs always serialises.
        serde_json::to_string_pretty(&self.results).unwrap_or_else(|_| "[]".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        let mut r = Report::default();
        r.push(CheckResult::pass("config", "all set"));
        r.push(CheckResult::warn(
            "lake.bronze_freshness",
            "last batch\n3 h ago",
            "check the CronJob",
        ));
        r.push(CheckResult::fail(
            "s3.bucket",
            "no such bucket",
            "create it",
        ));
        r.push(CheckResult::skip("s3.objects", "not run: s3.bucket failed"));
        r
    }

    #[test]
    fn table_has_one_line_per_check_and_a_summary() {
        let table = sample().to_table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "PASS  config                 all set");
        assert_eq!(
            lines[1],
            "WARN  lake.bronze_freshness  last batch 3 h ago; fix: check the CronJob"
        );
        assert_eq!(
            lines[2],
            "FAIL  s3.bucket              no such bucket; fix: create it"
        );
        assert!(lines[3].starts_with("SKIP  s3.objects"));
        assert_eq!(
            lines[5],
            "smoke-test FAILED: 1 passed, 1 warnings, 1 failed, 1 skipped"
        );
    }

    #[test]
    fn json_is_an_array_of_name_status_detail_fix() {
        let v: serde_json::Value = serde_json::from_str(&sample().to_json()).unwrap();
        let arr = v.as_array().unwrap();
        assert_eq!(arr.len(), 4);
        assert_eq!(arr[0]["status"], "PASS");
        assert!(arr[0]["fix"].is_null());
        assert_eq!(arr[2]["name"], "s3.bucket");
        assert_eq!(arr[2]["fix"], "create it");
        assert_eq!(arr[3]["status"], "SKIP");
    }

    #[test]
    fn exit_codes() {
        assert_eq!(sample().exit_status(), ExitStatus::Failure);
        let mut ok = Report::default();
        ok.push(CheckResult::pass("config", "x"));
        ok.push(CheckResult::warn("lake.silver_freshness", "old", "run it"));
        assert_eq!(ok.exit_status(), ExitStatus::Success);
        let mut cfg = Report::default();
        cfg.push(CheckResult::fail(
            "config",
            "DJANGO_DB_HOST missing",
            "set it",
        ));
        cfg.push(CheckResult::skip("dns.postgres", "not run"));
        assert_eq!(cfg.exit_status(), ExitStatus::Usage);
    }
}
