//! Check 1: the configuration, loaded exactly as the jobs load it.
//!
//! Using [`lake_common::Config`] (not a re-implementation) is the point: if the
//! smoke test accepts the environment, so do the jobs, and a broken Secret is
//! reported with every problem at once, each naming its variable.

use lake_common::Config;
use lake_common::config::LakeLocation;

use crate::report::CheckResult;

/// The check's name.
pub const NAME: &str = "config";

/// Loads the configuration from `vars`; the config is returned when it is valid.
pub fn check(vars: Vec<(String, String)>) -> (CheckResult, Option<Config>) {
    match Config::from_vars(vars) {
        Ok(config) => {
            let mut detail = config.to_string();
            if let LakeLocation::S3(s3) = &config.lake.location {
                detail.push_str(if s3.conditional_writes {
                    ", conditional writes enabled"
                } else {
                    ", conditional writes disabled (S3_CONDITIONAL_WRITES)"
                });
            }
            (CheckResult::pass(NAME, detail), Some(config))
        }
        Err(err) => {
            let n = err.problems.len();
            let problems: Vec<String> = err.problems.iter().map(ToString::to_string).collect();
            let detail = format!(
                "{n} problem{}: {}",
                if n == 1 { "" } else { "s" },
                problems.join("; ")
            );
            let fix = "set the variables named here in the Secrets lake-postgres and lake-s3 \
                       (keys = variable names, docs/deploy.md section 4), then run the smoke test again";
            (CheckResult::fail(NAME, detail, fix), None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Status;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_problem_is_named_and_no_secret_is_shown() {
        let (r, c) = check(vars(&[
            ("DJANGO_DB_PASSWORD", "hunter2-secret"),
            ("DJANGO_DB_PORT", "nope"),
        ]));
        assert!(c.is_none());
        assert_eq!(r.status, Status::Fail);
        for var in ["DJANGO_DB_HOST", "DJANGO_DB_PORT", "S3_BUCKET/LAKE_URL"] {
            assert!(r.detail.contains(var), "{var}: {}", r.detail);
        }
        assert!(!r.detail.contains("hunter2"));
    }

    #[test]
    fn valid_config_is_described_without_secrets() {
        let (r, c) = check(vars(&[
            ("DJANGO_DB_HOST", "db"),
            ("DJANGO_DB_NAME", "robson"),
            ("DJANGO_DB_USER", "reader"),
            ("DJANGO_DB_PASSWORD", "hunter2-secret"),
            ("AWS_ACCESS_KEY_ID", "AK"),
            ("AWS_SECRET_ACCESS_KEY", "s3-secret"),
            ("S3_BUCKET", "robson-lake"),
            ("S3_CONDITIONAL_WRITES", "disabled"),
        ]));
        assert!(c.is_some());
        assert_eq!(r.status, Status::Pass);
        assert!(r.detail.contains("s3://robson-lake"), "{}", r.detail);
        assert!(
            r.detail.contains("conditional writes disabled"),
            "{}",
            r.detail
        );
        assert!(!r.detail.contains("secret"), "{}", r.detail);
    }
}
