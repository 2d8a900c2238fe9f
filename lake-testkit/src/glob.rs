//! A glob reader for the tests: DuckDB polling `read_parquet(<glob>)` over a
//! local lake in a Python process of its own, as an analyst's notebook would,
//! while the jobs are killed and retried. Each poll records when it ran and
//! what it counted, so a test can tell the polls inside a run's publish window
//! from those outside it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

const POLLER: &str = r#"
import os, sys, time, duckdb
glob, column, stop = sys.argv[1], sys.argv[2], sys.argv[3]
con = duckdb.connect()
q = f"SELECT count(*), count(DISTINCT {column}) FROM read_parquet('{glob}')"
while not os.path.exists(stop):
    t0 = time.time()
    try:
        n, d = con.execute(q).fetchone()
        print(f"ok {t0:.6f} {time.time():.6f} {n} {d}", flush=True)
    except Exception as e:
        print(f"err {t0:.6f} {time.time():.6f} " + str(e).replace("\n", " "), flush=True)
    time.sleep(0.005)
"#;

/// The Python of the independent readers: `LAKE_TEST_PYTHON`, else the
/// workspace venv's.
pub fn python() -> PathBuf {
    std::env::var_os("LAKE_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin/python"))
        })
}

/// Whether [`python`] can import `module`.
pub fn has_module(module: &str) -> bool {
    Command::new(python())
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Seconds since the epoch, the clock the poller's times use.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// What one poll saw.
#[derive(Debug, Clone, PartialEq)]
pub struct Poll {
    /// When the query started and ended ([`now`]'s clock).
    pub started: f64,
    /// When the query ended.
    pub ended: f64,
    /// `Ok((rows, distinct values of the column))`, or DuckDB's error.
    pub seen: Result<(u64, u64), String>,
}

impl Poll {
    /// Whether the poll overlaps `[from, to]`.
    pub fn overlaps(&self, from: f64, to: f64) -> bool {
        self.ended >= from && self.started <= to
    }

    /// A failure that only says a file was deleted between DuckDB's listing and
    /// its read (a superseded object removed after a commit), not a torn file.
    pub fn vanished_file(&self) -> bool {
        self.seen
            .as_ref()
            .is_err_and(|e| e.contains("No such file") || e.contains("No files found"))
    }
}

/// A running poller; killed when dropped (a failing test leaves none behind).
#[derive(Debug)]
pub struct GlobPoller {
    child: Child,
    stop: PathBuf,
    out: PathBuf,
}

impl GlobPoller {
    /// Starts polling `glob` (rows and distinct `column` values); `scratch` is
    /// a directory for the poller's files.
    pub fn start(glob: &str, column: &str, scratch: &Path) -> std::io::Result<Self> {
        let stop = scratch.join("poller.stop");
        let out = scratch.join("poller.out");
        let child = Command::new(python())
            .arg("-c")
            .arg(POLLER)
            .arg(glob)
            .arg(column)
            .arg(&stop)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out)?)
            .spawn()?;
        Ok(Self { child, stop, out })
    }

    /// Stops the poller and returns its polls in order.
    pub fn finish(mut self) -> std::io::Result<Vec<Poll>> {
        std::fs::write(&self.stop, b"")?;
        self.child.wait()?;
        let text = std::fs::read_to_string(&self.out)?;
        Ok(text.lines().filter_map(parse).collect())
    }
}

impl Drop for GlobPoller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn parse(line: &str) -> Option<Poll> {
    let mut f = line.splitn(4, ' ');
    let (kind, t0, t1, rest) = (f.next()?, f.next()?, f.next()?, f.next().unwrap_or(""));
    let seen = match kind {
        "ok" => {
            let (n, d) = rest.split_once(' ')?;
            Ok((n.parse().ok()?, d.parse().ok()?))
        }
        _ => Err(rest.to_owned()),
    };
    Some(Poll {
        started: t0.parse().ok()?,
        ended: t1.parse().ok()?,
        seen,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_are_parsed_with_their_times() {
        let ok = parse("ok 1.5 2.0 10 9").unwrap();
        assert_eq!(ok.seen, Ok((10, 9)));
        assert!(ok.overlaps(1.9, 3.0) && !ok.overlaps(2.1, 3.0));
        let err = parse("err 1.0 1.1 IO Error: No such file or directory").unwrap();
        assert!(err.vanished_file());
        assert!(
            !parse("err 1.0 1.1 Invalid Input Error: not a parquet file")
                .unwrap()
                .vanished_file()
        );
    }
}
