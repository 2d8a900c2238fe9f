//! A Prometheus Pushgateway of its own for one test (Debian's
//! `prometheus-pushgateway`), to check what the jobs push end to end.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::Signal;
use tempfile::TempDir;

use crate::{http, process};

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const PORT_ATTEMPTS: usize = 3;

/// A Pushgateway on a free 127.0.0.1 port, in memory only. Drop stops it.
#[derive(Debug)]
pub struct TestPushgateway {
    child: Option<Child>,
    port: u16,
    _dir: TempDir,
    log_file: PathBuf,
}

impl TestPushgateway {
    /// Starts the Pushgateway (`$PUSHGATEWAY_BIN`, else Debian's
    /// `prometheus-pushgateway` or Homebrew's `pushgateway` on `PATH`; `just
    /// setup` installs it on Debian) and waits until it is ready.
    pub async fn start() -> Result<Self> {
        let program = match std::env::var_os("PUSHGATEWAY_BIN") {
            Some(p) => PathBuf::from(p),
            None => process::find_on_path("prometheus-pushgateway")
                .or_else(|| process::find_on_path("pushgateway"))
                .ok_or_else(|| {
                    anyhow!(
                        "prometheus-pushgateway not found on PATH; run `just setup` (Debian: \
                         apt-get install prometheus-pushgateway; macOS: brew install pushgateway) \
                         or set PUSHGATEWAY_BIN"
                    )
                })?,
        };
        let dir = tempfile::Builder::new()
            .prefix("lake-testkit-pushgateway-")
            .tempdir()
            .context("creating a directory for the Pushgateway log")?;
        let log_file = dir.path().join("pushgateway.log");
        let mut gw = Self {
            child: None,
            port: 0,
            _dir: dir,
            log_file,
        };
        for _ in 0..PORT_ATTEMPTS {
            gw.port = process::free_port()?;
            let log = std::fs::File::create(&gw.log_file).context("creating the log")?;
            let child = Command::new(&program)
                .arg(format!("--web.listen-address=127.0.0.1:{}", gw.port))
                // Memory only: Debian's build persists to one file in
                // /var/lib/prometheus by default, which every test's gateway
                // would then share (a test saw another's pushes).
                .arg("--persistence.file=")
                .stdin(Stdio::null())
                .stdout(log.try_clone().context("duplicating the log handle")?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("spawning {}", program.display()))?;
            gw.child = Some(child);
            if gw.wait_ready().await? {
                return Ok(gw);
            }
            gw.stop();
        }
        bail!(
            "the Pushgateway could not bind a free port; {}",
            process::with_log(&gw.log_file)
        )
    }

    /// `http://127.0.0.1:PORT`, what `PUSHGATEWAY_URL` is set to.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every series it holds, in the text format (`GET /metrics`).
    pub async fn metrics(&self) -> Result<String> {
        let r = http::request(self.port, "GET", "/metrics", Duration::from_secs(10)).await?;
        if !r.is_success() {
            bail!("GET /metrics: {}", r.status);
        }
        Ok(r.body)
    }

    /// The value of series `name` whose labels include every pair of `labels`,
    /// if the gateway holds one.
    pub async fn value(&self, name: &str, labels: &[(&str, &str)]) -> Result<Option<f64>> {
        let text = self.metrics().await?;
        Ok(text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
                let all = rest.strip_suffix('}')?;
                let has = |(k, v): &(&str, &str)| {
                    all.split(',').any(|pair| pair == format!("{k}=\"{v}\""))
                };
                (n == name && labels.iter().all(has)).then(|| value.parse().ok())?
            }))
    }

    /// `Ok(false)`: the port was taken.
    async fn wait_ready(&mut self) -> Result<bool> {
        let Some(child) = self.child.as_mut() else {
            bail!("the Pushgateway is not running");
        };
        let port = self.port;
        let started = process::wait_started(
            child,
            &self.log_file,
            "the Pushgateway",
            READY_TIMEOUT,
            || async move {
                http::request(port, "GET", "/-/ready", Duration::from_secs(2))
                    .await
                    .is_ok_and(|r| r.is_success())
            },
        )
        .await?;
        Ok(started == process::Started::Ready)
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::stop_child(
                &mut child,
                Signal::SIGTERM,
                Duration::from_secs(5),
                "pushgateway",
            );
        }
    }
}

impl Drop for TestPushgateway {
    fn drop(&mut self) {
        self.stop();
    }
}
