//! A real S3 HTTP endpoint per test, served by moto.
//!
//! The lake writes through `object_store`'s S3 client, and the properties that
//! matter (multipart uploads, conditional `If-None-Match`/`If-Match` writes,
//! path-style addressing) only show over real HTTP. moto is used because it passes
//! `object_store`'s own conformance suite; MinIO is not an option for this project.
//! Its conditional PUTs are made atomic at start-up (see [`ATOMIC_PUTS`]).
//! [`TestS3::start`] runs `moto_server` on a free port (natively, or in a
//! container: see [`Backend`](crate::Backend)) and waits until it answers;
//! dropping the value kills it (moto keeps everything in memory, so nothing is
//! left behind).
//!
//! Tests get a bucket of their own with [`TestS3::new_bucket`] and the environment
//! of SPEC §8 with [`TestS3::env`], including short retry and timeout settings so a
//! failing test fails fast.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::Signal;
use tempfile::TempDir;
use testcontainers::ImageExt;

use crate::container::{Backend, Container, Spec};
use crate::http::{self, HttpResponse};
use crate::process;

/// How long moto may take to answer HTTP (Python start-up is slow on a busy CI box).
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Loaded by moto's Python at start-up (`sitecustomize` on `PYTHONPATH`): makes
/// each object PUT atomic. moto checks `If-None-Match`/`If-Match` and then stores
/// the object in two steps without a lock, so under load two concurrent
/// conditional creates could both succeed (seen once in CI: two bronze runs both
/// pinned batch 1). S3 makes them atomic, and the lake's exactly-once protocol
/// relies on that, so the emulator must too.
const ATOMIC_PUTS: &str = r#"
import threading

from moto.s3.responses import S3Response

_lock = threading.Lock()
_put_object = S3Response.put_object


def _atomic_put_object(self, *args, **kwargs):
    with _lock:
        return _put_object(self, *args, **kwargs)


S3Response.put_object = _atomic_put_object
"#;

/// Timeout of one harness HTTP request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Start attempts, to survive another process grabbing the free port first.
const PORT_ATTEMPTS: usize = 3;
/// Credentials moto accepts (it checks none).
const ACCESS_KEY: &str = "testing";
const SECRET_KEY: &str = "testing";
const REGION: &str = "us-east-1";

/// A moto S3 server of its own for one test, on a free 127.0.0.1 port.
///
/// Drop kills the server.
#[derive(Debug)]
pub struct TestS3 {
    child: Option<Child>,
    /// Set instead of `child` on the container backend.
    container: Option<Container>,
    port: u16,
    /// Holds the server log; removed after the server is killed.
    dir: Option<TempDir>,
    log_file: PathBuf,
}

impl TestS3 {
    /// Starts `moto_server` on a free port and waits until it answers HTTP,
    /// with the backend `LAKE_TESTKIT` chooses.
    ///
    /// The native executable is `$MOTO_SERVER`, else
    /// `<workspace>/.venv/bin/moto_server` (created by `just setup`), else
    /// `moto_server` on `PATH`.
    pub async fn start() -> Result<Self> {
        if Backend::current()? == Backend::Containers {
            return Self::start_container().await;
        }
        let program = find_moto_server()?;
        let dir = tempfile::Builder::new()
            .prefix("lake-testkit-s3-")
            .tempdir()
            .context("creating a temporary directory for the moto log")?;
        let site = dir.path().to_path_buf();
        std::fs::write(site.join("sitecustomize.py"), ATOMIC_PUTS)
            .context("writing moto's sitecustomize.py")?;
        let mut s3 = Self {
            child: None,
            container: None,
            port: 0,
            log_file: dir.path().join("moto.log"),
            dir: Some(dir),
        };
        for attempt in 1..=PORT_ATTEMPTS {
            s3.port = process::free_port()?;
            let log = std::fs::File::create(&s3.log_file).context("creating the moto log")?;
            let child = Command::new(&program)
                .args(["-H", "127.0.0.1", "-p", &s3.port.to_string()])
                .env("PYTHONPATH", &site)
                .stdin(Stdio::null())
                .stdout(log.try_clone().context("duplicating the log handle")?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("spawning {}", program.display()))?;
            s3.child = Some(child);
            match s3.wait_ready().await {
                Ok(()) => return Ok(s3),
                Err(Some(err)) => return Err(err),
                Err(None) if attempt < PORT_ATTEMPTS => {
                    tracing::debug!(port = s3.port, "Port taken, retrying moto start");
                    s3.stop();
                }
                Err(None) => break,
            }
        }
        bail!(
            "moto_server could not bind a free port in {PORT_ATTEMPTS} attempts; {}",
            process::with_log(&s3.log_file)
        )
    }

    /// moto in a container (`LAKE_TESTKIT_S3_IMAGE`), with the same atomic
    /// PUTs: the `sitecustomize.py` is copied in and put on `PYTHONPATH`.
    async fn start_container() -> Result<Self> {
        let container = Container::start(Spec::s3(), |request| {
            request
                .with_copy_to(
                    "/lake-testkit/sitecustomize.py",
                    ATOMIC_PUTS.as_bytes().to_vec(),
                )
                .with_env_var("PYTHONPATH", "/lake-testkit")
                .with_cmd(["-H", "0.0.0.0", "-p", "5000"])
        })
        .await?;
        let s3 = Self {
            child: None,
            port: container.port,
            container: Some(container),
            dir: None,
            log_file: PathBuf::new(),
        };
        // The published port can lag moto's "Running on" by a moment.
        let started = std::time::Instant::now();
        while let Err(err) = http::request(s3.port, "GET", "/", Duration::from_secs(2)).await {
            if started.elapsed() > READY_TIMEOUT {
                let log = match s3.container.as_ref() {
                    Some(c) => c.log_tail().await,
                    None => String::new(),
                };
                return Err(err.context(format!(
                    "the moto container did not answer within {READY_TIMEOUT:?}; its log:\n{log}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(s3)
    }

    /// The endpoint URL, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// TCP port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Server log file (deleted on drop); empty on the container backend
    /// (`docker logs` of the container).
    pub fn log_file(&self) -> &std::path::Path {
        &self.log_file
    }

    /// Creates bucket `name` (an unsigned `PUT /name`; moto checks no signatures).
    pub async fn create_bucket(&self, name: &str) -> Result<()> {
        let response = self.request("PUT", &format!("/{name}")).await?;
        if !response.is_success() {
            bail!(
                "creating bucket {name} failed with HTTP {}: {}",
                response.status,
                response.body
            );
        }
        Ok(())
    }

    /// Creates a bucket with a name unique to this call,
    /// `test-<pid>-<counter>-<random>`, and returns the name.
    pub async fn new_bucket(&self) -> Result<String> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!(
            "test-{}-{n}-{:08x}",
            std::process::id(),
            crate::random_u64() as u32
        );
        self.create_bucket(&name).await?;
        Ok(name)
    }

    /// The S3 variables of SPEC §8 for `bucket` on this server, with one retry and
    /// a 10 s timeout so failures surface quickly:
    /// `AWS_ENDPOINT`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
    /// `S3_BUCKET`, `S3_MAX_RETRIES`, `S3_TIMEOUT_SECS`.
    pub fn env(&self, bucket: &str) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_owned()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_owned()),
            ("AWS_REGION", REGION.to_owned()),
            ("S3_BUCKET", bucket.to_owned()),
            ("S3_MAX_RETRIES", "1".to_owned()),
            ("S3_TIMEOUT_SECS", "10".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// Keys of the multipart uploads started in `bucket` and neither completed
    /// nor aborted (`ListMultipartUploads`, straight to moto): what a failed
    /// writer must not leave behind.
    pub async fn incomplete_uploads(&self, bucket: &str) -> Result<Vec<String>> {
        let r = self.request("GET", &format!("/{bucket}?uploads")).await?;
        if !r.is_success() {
            bail!(
                "listing the multipart uploads of {bucket}: HTTP {}: {}",
                r.status,
                r.body
            );
        }
        Ok(r.body
            .split("<Upload>")
            .skip(1)
            .filter_map(|u| {
                let key = u.split("<Key>").nth(1)?.split("</Key>").next()?;
                Some(key.to_owned())
            })
            .collect())
    }

    /// Sends an unsigned request with an empty body, e.g. `request("GET",
    /// "/bucket?list-type=2")` to list a bucket, and returns status and body.
    ///
    /// Meant for assertions that should not go through the code under test.
    pub async fn request(&self, method: &str, path_and_query: &str) -> Result<HttpResponse> {
        http::request(self.port, method, path_and_query, REQUEST_TIMEOUT).await
    }

    /// Waits until moto answers. `Err(None)` means the port was taken.
    async fn wait_ready(&mut self) -> Result<(), Option<anyhow::Error>> {
        let Some(child) = self.child.as_mut() else {
            return Err(Some(anyhow!("moto_server is not running")));
        };
        let port = self.port;
        let started = process::wait_started(
            child,
            &self.log_file,
            "moto_server",
            READY_TIMEOUT,
            || async move {
                http::request(port, "GET", "/", Duration::from_secs(2))
                    .await
                    .is_ok()
            },
        )
        .await
        .map_err(Some)?;
        match started {
            process::Started::Ready => Ok(()),
            process::Started::PortTaken => Err(None),
        }
    }

    fn stop(&mut self) {
        // A container is removed by its own drop.
        drop(self.container.take());
        if let Some(mut child) = self.child.take() {
            // moto holds nothing worth a graceful shutdown.
            process::stop_child(
                &mut child,
                Signal::SIGKILL,
                Duration::from_secs(5),
                "moto_server",
            );
        }
    }
}

impl Drop for TestS3 {
    fn drop(&mut self) {
        self.stop();
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
    }
}

/// `$MOTO_SERVER`, else the workspace virtualenv, else `PATH`.
fn find_moto_server() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("MOTO_SERVER").map(PathBuf::from) {
        if process::is_executable(&path) {
            return Ok(path);
        }
        bail!("MOTO_SERVER={} is not an executable file", path.display());
    }
    let venv = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../.venv/bin/moto_server"
    ));
    if process::is_executable(&venv) {
        return Ok(venv);
    }
    if let Some(path) = process::find_on_path("moto_server") {
        return Ok(path);
    }
    bail!(
        "moto_server not found (looked at $MOTO_SERVER, {} and PATH); run `just setup`, \
         which creates the virtualenv with `python3 -m venv .venv && .venv/bin/pip install 'moto[server]'`; \
         or run it in a container: LAKE_TESTKIT=containers with a Docker engine",
        venv.display()
    )
}
