//! Test-only fail points, so a crash test can kill a job at an exact phase.
//!
//! A job names its points and the variable that selects one
//! (`BRONZE_FAILPOINT`, `MAINTAIN_FAILPOINT`). Unset, a point costs one
//! environment lookup; a production pod never sets it.

use std::time::Duration;

/// With `var=<name>` the process announces the point on stderr
/// (`FAILPOINT <name> reached`) and stops there for good, so a test can
/// SIGKILL it at that exact phase.
pub fn stop(var: &str, name: &str) {
    if std::env::var(var).is_ok_and(|v| v == name) {
        eprintln!("FAILPOINT {name} reached");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
}

/// With `var=<name>:<seconds>` the process announces the point and waits that
/// long before going on, so a test can let another run commit in between.
pub async fn pause(var: &str, name: &str) {
    let Ok(v) = std::env::var(var) else {
        return;
    };
    if let Some(secs) = v
        .strip_prefix(name)
        .and_then(|r| r.strip_prefix(':'))
        .and_then(|s| s.parse::<u64>().ok())
    {
        eprintln!("FAILPOINT {name} reached");
        tokio::time::sleep(Duration::from_secs(secs)).await;
    }
}
