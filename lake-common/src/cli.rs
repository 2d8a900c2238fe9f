//! Parsing a job's command line so that a bad value from the environment names
//! the variable that holds it.
//!
//! clap reports `BRONZE_LOOKBACK=abc` as "invalid value 'abc' for '--lookback'":
//! the person who set the variable in a CronJob never typed `--lookback` and
//! looks in the wrong place. [`parse`] rewrites exactly that case; every other
//! clap outcome (`--help`, `--version`, a bad flag) is clap's own.

use std::ffi::OsString;

use clap::Parser;
use clap::error::{ContextKind, ContextValue, ErrorKind};

use crate::{Classified, ExitStatus};

/// Parses `args` (the first is the program name). `--help`, `--version` and
/// errors in the arguments themselves print and exit as clap does (exit 2 for a
/// usage error); a bad value taken from an environment variable is returned as
/// a usage error naming the variable, for the caller to report through its logs.
pub fn parse<C, I, T>(args: I) -> Result<C, Classified>
where
    C: Parser,
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    match C::try_parse_from(&args) {
        Ok(parsed) => Ok(parsed),
        Err(err) => match blame_variable(&C::command(), &args, &err, |var| std::env::var_os(var)) {
            Some(message) => Err(Classified::new(ExitStatus::Usage, message)),
            None => err.exit(),
        },
    }
}

/// The message for `err` when the bad value came from an environment variable
/// (the flag is not on the command line and the variable is set), else `None`.
fn blame_variable(
    cmd: &clap::Command,
    args: &[OsString],
    err: &clap::Error,
    env: impl Fn(&str) -> Option<OsString>,
) -> Option<String> {
    if !matches!(
        err.kind(),
        ErrorKind::ValueValidation | ErrorKind::InvalidValue
    ) {
        return None;
    }
    let Some(ContextValue::String(invalid_arg)) = err.get(ContextKind::InvalidArg) else {
        return None;
    };
    let arg = cmd.get_arguments().find(|a| {
        a.get_long()
            .is_some_and(|long| invalid_arg.split([' ', '=']).next() == Some(&format!("--{long}")))
    })?;
    let long = format!("--{}", arg.get_long()?);
    // Every spelling of the flag: `--name`, `--name=v`, its aliases, `-n`, `-nv`.
    let longs: Vec<String> = std::iter::once(long.clone())
        .chain(
            arg.get_all_aliases()
                .into_iter()
                .flatten()
                .map(|a| format!("--{a}")),
        )
        .collect();
    let shorts: Vec<char> = arg
        .get_short()
        .into_iter()
        .chain(arg.get_all_short_aliases().into_iter().flatten())
        .collect();
    let on_command_line = args.iter().skip(1).filter_map(|a| a.to_str()).any(|a| {
        longs
            .iter()
            .any(|l| a == l || a.starts_with(&format!("{l}=")))
            || (!a.starts_with("--")
                && a.strip_prefix('-')
                    .is_some_and(|rest| rest.chars().next().is_some_and(|c| shorts.contains(&c))))
    });
    if on_command_line {
        return None;
    }
    let var = arg.get_env()?.to_str()?;
    let value = env(var)?;
    let reason = match err.get(ContextKind::ValidValue) {
        Some(ContextValue::Strings(valid)) => format!("use one of {}", valid.join(", ")),
        _ => std::error::Error::source(err)
            .map(ToString::to_string)
            .unwrap_or_else(|| "not a valid value".to_owned()),
    };
    Some(format!(
        "{var}={:?} is not valid: {reason} (it sets {long}; fix or unset the variable)",
        value.to_string_lossy()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[derive(Debug, Parser)]
    struct Cli {
        #[arg(short, long, visible_alias = "look-back", env = "TEST_CLI_LOOKBACK", default_value = "1h", value_parser = humantime::parse_duration)]
        lookback: std::time::Duration,
    }

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    /// clap's error for `--lookback abc`, the same error it raises for the
    /// variable (the environment is not touched: `unsafe_code` is forbidden).
    fn lookback_error() -> clap::Error {
        Cli::try_parse_from(os(&["job", "--lookback", "abc"])).unwrap_err()
    }

    fn variable(name: &str) -> Option<OsString> {
        (name == "TEST_CLI_LOOKBACK").then(|| OsString::from("abc"))
    }

    #[test]
    fn a_bad_value_on_the_command_line_is_clap_s_own_error() {
        let err = lookback_error();
        for args in [
            &["job", "--lookback", "abc"][..],
            &["job", "--lookback=abc"],
            &["job", "--look-back", "abc"],
            &["job", "-l", "abc"],
            &["job", "-labc"],
        ] {
            assert_eq!(
                blame_variable(&Cli::command(), &os(args), &err, variable),
                None
            );
        }
        // Not from the environment either: clap's own error.
        assert_eq!(
            blame_variable(&Cli::command(), &os(&["job"]), &err, |_| None),
            None
        );
    }

    #[test]
    fn a_bad_value_from_the_environment_names_the_variable_and_the_reason() {
        let msg =
            blame_variable(&Cli::command(), &os(&["job"]), &lookback_error(), variable).unwrap();
        assert!(
            msg.starts_with("TEST_CLI_LOOKBACK=\"abc\" is not valid: expected number"),
            "{msg}"
        );
        assert!(msg.contains("(it sets --lookback;"), "{msg}");
    }
}
