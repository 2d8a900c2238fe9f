//! Driving a job binary to one of its fail points ([`lake_common::failpoint`]),
//! so a crash test can SIGKILL it at an exact phase.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Starts `cmd` (whose environment selects `point`) and returns once it says
/// it reached the point, within a minute; an error if it ends or takes longer.
pub fn spawn_to(cmd: &mut Command, point: &str) -> Result<Child> {
    let mut child = cmd
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .context("starting the job")?;
    let stderr = child.stderr.take().context("the job's stderr")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let wanted = format!("FAILPOINT {point} reached");
    for line in BufReader::new(stderr).lines() {
        if line.context("reading the job's stderr")?.contains(&wanted) {
            return Ok(child);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("fail point {point} not reached within a minute");
        }
    }
    bail!(
        "the job exited before fail point {point}: {:?}",
        child.wait()
    );
}

/// SIGKILLs a child and reaps it.
pub fn sigkill(mut child: Child) -> Result<()> {
    child.kill().context("killing the job")?;
    child.wait().context("reaping the job")?;
    Ok(())
}
