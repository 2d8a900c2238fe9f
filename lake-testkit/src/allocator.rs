//! Which allocator settings a job binary runs with.
//!
//! The jobs allocate with jemalloc, configured at build time through
//! `JEMALLOC_SYS_WITH_MALLOC_CONF` in `.cargo/config.toml` (robson-lake's
//! `main.rs` says why). Both halves are easy to lose without any test failing:
//! a `main.rs` without the `#[global_allocator]`, or a build that does not see
//! the setting. jemalloc reports its configuration when asked to print its
//! statistics at exit, which is what this reads.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// jemalloc's settings in a run of `bin args…`: the compiled-in configuration
/// string (`config.malloc_conf`) and the arena count in effect (`opt.narenas`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JemallocSettings {
    /// The configuration compiled into the binary.
    pub malloc_conf: String,
    /// The number of arenas the run used.
    pub narenas: u32,
}

/// Runs `bin args…` with jemalloc's statistics printed at exit and reads its
/// settings from them; `run_time_conf` is passed in `_RJEM_MALLOC_CONF` as an
/// operator would. Fails if the binary does not allocate with this workspace's
/// jemalloc (no statistics appear).
pub fn jemalloc_settings(
    bin: &Path,
    args: &[&str],
    run_time_conf: Option<&str>,
) -> Result<JemallocSettings> {
    let conf = match run_time_conf {
        Some(conf) => format!("{conf},stats_print:true"),
        None => "stats_print:true".to_owned(),
    };
    let out = Command::new(bin)
        .args(args)
        .env("_RJEM_MALLOC_CONF", conf)
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    let stats = String::from_utf8_lossy(&out.stderr);
    let value = |key: &str| {
        stats
            .lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .map(|v| v.trim().to_owned())
    };
    let (Some(conf), Some(narenas)) = (value("config.malloc_conf:"), value("opt.narenas:")) else {
        bail!(
            "{} {} printed no jemalloc statistics: it does not allocate with jemalloc \
             (is `#[global_allocator]` missing from its main.rs?)",
            bin.display(),
            args.join(" ")
        );
    };
    Ok(JemallocSettings {
        malloc_conf: conf.trim_matches('"').to_owned(),
        narenas: narenas.parse().context("parsing opt.narenas")?,
    })
}
