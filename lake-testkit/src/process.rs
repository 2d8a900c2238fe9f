//! Child-process plumbing shared by the throwaway servers.
//!
//! Both [`TestPostgres`](crate::TestPostgres) and [`TestS3`](crate::TestS3) run a
//! real server binary as a child of the test process. This module holds what they
//! share: finding executables, picking a free port, dropping root privileges for
//! PostgreSQL (which refuses to run as root), reading the tail of a server log for
//! error messages, and stopping a child reliably from `Drop`.
//!
//! Children stay in the test's process group on purpose: when cargo-nextest or a
//! terminal signals the group (timeout, Ctrl-C), the servers get the signal too
//! instead of outliving the test.

use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, User, geteuid};

/// Returns a TCP port on 127.0.0.1 that was free a moment ago.
///
/// The port is released before the server binds it, so another process can take it
/// in between; callers retry the start on "address in use".
pub(crate) fn free_port() -> Result<u16> {
    let listener =
        TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0 to find a free port")?;
    Ok(listener
        .local_addr()
        .context("reading the bound address")?
        .port())
}

/// The unprivileged account a server runs as when the tests run as root.
#[derive(Debug, Clone)]
pub(crate) struct RunAs {
    pub(crate) name: String,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

impl RunAs {
    /// `None` when the current user is not root (servers then run as the current
    /// user); otherwise the first existing account of `candidates`.
    pub(crate) fn for_root(candidates: &[&str]) -> Result<Option<Self>> {
        if !geteuid().is_root() {
            return Ok(None);
        }
        for name in candidates {
            if let Some(user) =
                User::from_name(name).with_context(|| format!("looking up user {name}"))?
            {
                return Ok(Some(Self {
                    name: (*name).to_owned(),
                    uid: user.uid.as_raw(),
                    gid: user.gid.as_raw(),
                }));
            }
        }
        anyhow::bail!(
            "running as root, but none of the accounts {candidates:?} exists to run the server as \
             (install the server package, which creates it, or run the tests as a normal user)"
        )
    }

    /// Hands `path` to this account (the server must own its data and socket dirs).
    pub(crate) fn chown(&self, path: &Path) -> Result<()> {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
            .with_context(|| format!("chown {} to {}", path.display(), self.name))
    }
}

/// Finds an executable called `name` in the directories of `PATH`.
pub(crate) fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// True if `path` is a regular file with an execute bit.
pub(crate) fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The last `max_bytes` of a log file, for error messages (empty if unreadable).
pub(crate) fn log_tail(path: &Path, max_bytes: u64) -> String {
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if file
        .seek(SeekFrom::Start(len.saturating_sub(max_bytes)))
        .is_err()
    {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = file.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// Formats a log tail as an error-message suffix.
pub(crate) fn with_log(path: &Path) -> String {
    let tail = log_tail(path, 4096);
    if tail.trim().is_empty() {
        format!("(log {} is empty)", path.display())
    } else {
        format!("last lines of {}:\n{}", path.display(), tail.trim_end())
    }
}

/// Stops `child`: sends `signal`, waits up to `grace`, then SIGKILLs and reaps it.
///
/// Never panics (it runs in `Drop`); failures are logged.
pub(crate) fn stop_child(child: &mut Child, signal: Signal, grace: Duration, what: &str) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let Ok(raw) = i32::try_from(child.id()) else {
        let _ = child.kill();
        let _ = child.wait();
        return;
    };
    // The child is not reaped yet, so its pid cannot have been reused.
    if let Err(err) = kill(Pid::from_raw(raw), signal) {
        tracing::warn!(pid = raw, %err, "Could not signal {what}");
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        match child.try_wait() {
            Ok(Some(_)) => return,
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(err) => {
                tracing::warn!(pid = raw, %err, "Could not wait for {what}");
                break;
            }
        }
    }
    tracing::warn!(pid = raw, "Killing {what} after {grace:?}");
    let _ = child.kill();
    let _ = child.wait();
}

/// Error-message hint for a port race: both servers print this when the port is taken.
pub(crate) fn looks_like_port_in_use(log: &str) -> bool {
    let log = log.to_ascii_lowercase();
    log.contains("address already in use") || log.contains("could not bind")
}

/// How a child server's start ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Started {
    /// It answers.
    Ready,
    /// It exited because its port was taken: pick another and retry.
    PortTaken,
}

/// Waits until `probe` says the server answers, the child exits (its log tail
/// then says why, or that the port was taken), or `timeout` passes. Shared by
/// the HTTP servers of the harness (moto, the Pushgateway).
pub(crate) async fn wait_started<F, Fut>(
    child: &mut Child,
    log_file: &Path,
    what: &str,
    timeout: Duration,
    mut probe: F,
) -> Result<Started>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            if looks_like_port_in_use(&log_tail(log_file, 4096)) {
                return Ok(Started::PortTaken);
            }
            anyhow::bail!(
                "{what} exited during start-up ({status}); {}",
                with_log(log_file)
            );
        }
        if probe().await {
            return Ok(Started::Ready);
        }
        if started.elapsed() > timeout {
            anyhow::bail!(
                "{what} did not answer within {timeout:?}; {}",
                with_log(log_file)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
