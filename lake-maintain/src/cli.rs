//! The command line, kept out of `main.rs` so the multi-call binary shares it.

use std::time::Duration;

use clap::Parser;
use lake_common::{Classified, ExitStatus};

use crate::Options;

/// The shortest grace either period may have: a shorter one could delete what
/// a run is still writing (the jobs' deadlines are an hour or less).
const MIN_GRACE: Duration = Duration::from_secs(3600);

fn after_help() -> String {
    format!(
        "lake-maintain reads only the lake. It removes the days of bronze/events older than\n\
         --bronze-retention-days through bronze's log, the files of bronze/outbox older than\n\
         --outbox-retention-days that hold no latest version of a row PostgreSQL holds, the partitions of silver older than\n\
         --silver-retention-days (never past bronze's horizon) through silver's, compacts closed bronze days, deletes the\n\
         objects of bronze/ and silver/ that no manifest references and that are older than --grace,\n\
         aborts multipart uploads started longer ago than --upload-grace and deletes run reports\n\
         older than --reports-retention-days (docs/maintenance.md).\n\n{}\n\n{}",
        lake_common::ENV_HELP,
        lake_common::EXIT_CODES_HELP
    )
}

/// The lake's upkeep: garbage collection of objects no manifest references.
#[derive(Debug, Parser)]
#[command(
    name = "lake-maintain",
    version = lake_common::BUILD_VERSION,
    about,
    long_about = None,
    after_help = after_help()
)]
pub struct Args {
    /// Count what would be deleted and aborted; delete nothing, write no report.
    #[arg(long)]
    pub dry_run: bool,
    /// Delete an unreferenced object only once it is older than this (at least 1h;
    /// keep it longer than any job's deadline).
    #[arg(long, env = "MAINTAIN_GRACE", default_value = "48h", value_parser = humantime::parse_duration)]
    pub grace: Duration,
    /// Abort a multipart upload only once it was started longer ago than this (at least 1h).
    #[arg(long, env = "MAINTAIN_UPLOAD_GRACE", default_value = "24h", value_parser = humantime::parse_duration)]
    pub upload_grace: Duration,
    /// Collect garbage only; leave the closed bronze days as they are.
    #[arg(long)]
    pub no_compaction: bool,
    /// Days of bronze/events kept (at least 7); older days are removed through
    /// bronze's log once silver has read them.
    #[arg(long, env = "MAINTAIN_BRONZE_RETENTION_DAYS", default_value_t = crate::retain::DEFAULT_BRONZE_DAYS)]
    pub bronze_retention_days: u32,
    /// Days of silver partitions kept (at least 7); older partitions are
    /// removed through silver's log, never past bronze's horizon.
    #[arg(long, env = "MAINTAIN_SILVER_RETENTION_DAYS", default_value_t = crate::retain::DEFAULT_SILVER_DAYS)]
    pub silver_retention_days: u32,
    /// Days of bronze/outbox kept (at least 7); files of older days are
    /// removed once none of their rows is the latest captured version of a
    /// row PostgreSQL holds.
    #[arg(long, env = "MAINTAIN_OUTBOX_RETENTION_DAYS", default_value_t = crate::retain::DEFAULT_BRONZE_DAYS)]
    pub outbox_retention_days: u32,
    /// Keep every day of bronze and of silver (no retention).
    #[arg(long)]
    pub no_retention: bool,
    /// Days of run reports (_runs/) kept (at least 1).
    #[arg(long, env = "MAINTAIN_REPORTS_RETENTION_DAYS", default_value_t = crate::DEFAULT_REPORTS_DAYS)]
    pub reports_retention_days: u32,
}

impl Args {
    /// Checks what clap cannot and builds the run options.
    pub fn into_options(self) -> anyhow::Result<Options> {
        for (name, value) in [
            ("--grace (MAINTAIN_GRACE)", self.grace),
            ("--upload-grace (MAINTAIN_UPLOAD_GRACE)", self.upload_grace),
        ] {
            if value < MIN_GRACE {
                return Err(usage(format!(
                    "{name} is {} but must be at least 1h: a shorter one could delete what a run \
                     is still writing",
                    humantime::format_duration(value)
                )));
            }
        }
        if self.bronze_retention_days < crate::retain::MIN_BRONZE_DAYS {
            return Err(usage(format!(
                "--bronze-retention-days (MAINTAIN_BRONZE_RETENTION_DAYS) is {} but must be at least {}: \
                 bronze's look-back and the compaction of closed days need the last days; use \
                 --no-retention to keep everything",
                self.bronze_retention_days,
                crate::retain::MIN_BRONZE_DAYS
            )));
        }
        if self.silver_retention_days < crate::retain::MIN_SILVER_DAYS {
            return Err(usage(format!(
                "--silver-retention-days (MAINTAIN_SILVER_RETENTION_DAYS) is {} but must be at least {}; \
                 use --no-retention to keep everything",
                self.silver_retention_days,
                crate::retain::MIN_SILVER_DAYS
            )));
        }
        if self.outbox_retention_days < crate::retain::MIN_BRONZE_DAYS {
            return Err(usage(format!(
                "--outbox-retention-days (MAINTAIN_OUTBOX_RETENTION_DAYS) is {} but must be at least {}; \
                 use --no-retention to keep everything",
                self.outbox_retention_days,
                crate::retain::MIN_BRONZE_DAYS
            )));
        }
        if self.reports_retention_days == 0 {
            return Err(usage(
                "--reports-retention-days (MAINTAIN_REPORTS_RETENTION_DAYS) must be at least 1"
                    .into(),
            ));
        }
        Ok(Options {
            dry_run: self.dry_run,
            grace: self.grace,
            upload_grace: self.upload_grace,
            pushgateway: lake_common::metrics::Pushgateway::from_env_or_warn(),
            compact: !self.no_compaction,
            bronze_retention_days: (!self.no_retention).then_some(self.bronze_retention_days),
            silver_retention_days: (!self.no_retention).then_some(self.silver_retention_days),
            outbox_retention_days: (!self.no_retention).then_some(self.outbox_retention_days),
            reports_retention_days: self.reports_retention_days,
        })
    }
}

fn usage(message: String) -> anyhow::Error {
    anyhow::Error::new(Classified::new(ExitStatus::Usage, message))
}

/// Runs the command line with these arguments (the first is the program name).
/// Shared by the `lake-maintain` binary and the `robson-lake` multi-call binary.
pub fn main_from<I, T>(args: I) -> std::process::ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use lake_common::telemetry::{self, LogFormat};
    let parsed = lake_common::cli::parse::<Args, _, _>(args);
    telemetry::init(LogFormat::from_env());
    let result = (|| {
        let options = parsed?.into_options()?;
        telemetry::check_environment()?;
        let config = lake_common::LakeConfig::from_env()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(crate::run_cli(config, options))
    })();
    telemetry::finish(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("lake-maintain").chain(args.iter().copied()))
    }

    #[test]
    fn graces_parse_and_are_at_least_an_hour() {
        let o = parse(&[]).unwrap().into_options().unwrap();
        assert_eq!(o.grace, Duration::from_secs(48 * 3600));
        assert!(!o.dry_run);
        let o = parse(&["--grace", "3d", "--dry-run"])
            .unwrap()
            .into_options()
            .unwrap();
        assert_eq!((o.grace, o.dry_run), (Duration::from_secs(3 * 86400), true));
        assert!(parse(&["--grace", "soon"]).is_err());
        let e = parse(&["--upload-grace", "10m"])
            .unwrap()
            .into_options()
            .unwrap_err();
        assert_eq!(
            lake_common::telemetry::exit_status_of(e.as_ref()),
            ExitStatus::Usage
        );
        assert!(e.to_string().contains("MAINTAIN_UPLOAD_GRACE"), "{e}");
    }

    #[test]
    fn retention_defaults_and_bounds() {
        let o = parse(&[]).unwrap().into_options().unwrap();
        assert_eq!(o.bronze_retention_days, Some(90));
        assert_eq!(o.outbox_retention_days, Some(90));
        assert_eq!(o.reports_retention_days, 365);
        let o = parse(&["--no-retention", "--reports-retention-days", "30"])
            .unwrap()
            .into_options()
            .unwrap();
        assert_eq!(
            (
                o.bronze_retention_days,
                o.outbox_retention_days,
                o.reports_retention_days
            ),
            (None, None, 30)
        );
        let e = parse(&["--bronze-retention-days", "3"])
            .unwrap()
            .into_options()
            .unwrap_err();
        assert_eq!(
            lake_common::telemetry::exit_status_of(e.as_ref()),
            ExitStatus::Usage
        );
        assert!(
            e.to_string().contains("MAINTAIN_BRONZE_RETENTION_DAYS"),
            "{e}"
        );
    }
}
