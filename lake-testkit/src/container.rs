//! The container backend: PostgreSQL and moto in containers of a
//! Docker-compatible engine, started with the `testcontainers` crate.
//!
//! [`Backend::current`] chooses between it and the native binaries, once per
//! process, from `LAKE_TESTKIT`:
//!
//! * `native`: the server binaries of this machine (PostgreSQL's, moto's
//!   virtualenv), as on Debian with `./dev setup`;
//! * `containers`: a container per server, for a machine with Docker (or podman's
//!   Docker API) and none of those binaries, such as a laptop running macOS;
//! * `auto` (the default): containers when an engine answers where
//!   testcontainers looks (`DOCKER_HOST`, the default socket, Docker Desktop's
//!   and rootless Docker's), else native.
//!
//! The images are `LAKE_TESTKIT_POSTGRES_IMAGE` and `LAKE_TESTKIT_S3_IMAGE`,
//! by default the public `postgres:15-bookworm` and `motoserver/moto:5.2.5`
//! (pulled on first use; CI builds local images instead, see
//! `scripts/testkit-containers.sh`). Each container publishes its service port
//! on this machine's loopback only, on a port the engine picks, so the engine
//! must publish on this machine (a local engine, Docker Desktop, colima or
//! podman do; a remote `DOCKER_HOST` does not). A container keeps its data in
//! its own writable layer and is removed, with that data, when the value that
//! started it is dropped, or when the process gets SIGINT, SIGTERM or SIGQUIT
//! (testcontainers' watchdog); containers of a process killed with SIGKILL are
//! left, with the label `org.testcontainers.managed-by=testcontainers`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result};
use testcontainers::bollard::models::PortBinding;
use testcontainers::core::{IntoContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, ContainerRequest, GenericImage, ImageExt};

/// Default PostgreSQL image (the major version the native path and production use).
const POSTGRES_IMAGE: &str = "docker.io/library/postgres:15-bookworm";
/// Default S3 image: moto at the version of `scripts/requirements.txt`.
const S3_IMAGE: &str = "docker.io/motoserver/moto:5.2.5";
/// How long an image may take to be ready (a first pull takes longer: the
/// engine pulls before this clock starts).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Which servers the harness starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The native server binaries of this machine.
    Native,
    /// Containers of a Docker-compatible engine.
    Containers,
}

impl Backend {
    /// The backend of this process, from `LAKE_TESTKIT` (`auto` when unset),
    /// decided once and logged. An unknown value is an error that says the
    /// accepted ones.
    pub fn current() -> Result<Self> {
        static CHOICE: OnceLock<Result<Backend, String>> = OnceLock::new();
        CHOICE
            .get_or_init(|| {
                let value = std::env::var("LAKE_TESTKIT").unwrap_or_default();
                let backend = Self::parse(&value, engine_answers())?;
                tracing::debug!(?backend, "lake-testkit backend");
                Ok(backend)
            })
            .clone()
            .map_err(anyhow::Error::msg)
    }

    /// `LAKE_TESTKIT`'s value, with whether an engine answers (for `auto`).
    fn parse(value: &str, engine: bool) -> Result<Self, String> {
        match value.trim() {
            "native" => Ok(Self::Native),
            "containers" => Ok(Self::Containers),
            "" | "auto" if engine => Ok(Self::Containers),
            "" | "auto" => Ok(Self::Native),
            other => Err(format!(
                "LAKE_TESTKIT={other:?} is not a backend: use native, containers or auto (the default)"
            )),
        }
    }
}

/// Whether a Docker-compatible engine accepts connections where
/// testcontainers looks for one: `DOCKER_HOST` (`unix://PATH`), else
/// `/var/run/docker.sock`, else the rootless and Docker Desktop sockets
/// (`$XDG_RUNTIME_DIR/.docker/run/`, `~/.docker/run/`, `~/.docker/desktop/`).
/// A `tcp://` `DOCKER_HOST` counts without a check (testcontainers reports a
/// dead one clearly).
fn engine_answers() -> bool {
    let answers = |path: PathBuf| std::os::unix::net::UnixStream::connect(path).is_ok();
    if let Ok(host) = std::env::var("DOCKER_HOST") {
        return host.starts_with("tcp://")
            || answers(PathBuf::from(host.strip_prefix("unix://").unwrap_or(&host)));
    }
    let home = |var: &str, rest: &str| std::env::var_os(var).map(|d| PathBuf::from(d).join(rest));
    [
        Some(PathBuf::from("/var/run/docker.sock")),
        home("XDG_RUNTIME_DIR", ".docker/run/docker.sock"),
        home("HOME", ".docker/run/docker.sock"),
        home("HOME", ".docker/desktop/docker.sock"),
    ]
    .into_iter()
    .flatten()
    .any(answers)
}

/// A running container, removed (with its data) on drop.
pub(crate) struct Container {
    /// Boxed: testcontainers' handle is large, and this sits in enums.
    inner: Option<Box<ContainerAsync<GenericImage>>>,
    /// The port of this machine that reaches the container's service.
    pub(crate) port: u16,
}

/// What to run: an image and the service port inside it.
pub(crate) struct Spec {
    /// `LAKE_TESTKIT_*_IMAGE` variable naming the image.
    pub(crate) image_var: &'static str,
    pub(crate) default_image: &'static str,
    pub(crate) container_port: u16,
    pub(crate) entrypoint: &'static str,
    /// Ready when a line containing this appears on standard error.
    pub(crate) ready_on_stderr: &'static str,
}

impl Spec {
    pub(crate) fn postgres() -> Self {
        Self {
            image_var: "LAKE_TESTKIT_POSTGRES_IMAGE",
            default_image: POSTGRES_IMAGE,
            container_port: 5432,
            entrypoint: "bash",
            ready_on_stderr: "database system is ready to accept connections",
        }
    }

    pub(crate) fn s3() -> Self {
        Self {
            image_var: "LAKE_TESTKIT_S3_IMAGE",
            default_image: S3_IMAGE,
            container_port: 5000,
            entrypoint: "moto_server",
            ready_on_stderr: "Running on",
        }
    }

    fn image(&self) -> String {
        std::env::var(self.image_var)
            .ok()
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| self.default_image.to_owned())
    }
}

impl Container {
    /// Starts `spec`'s image with its service port published on this
    /// machine's loopback only (like the native servers: moto checks no
    /// credentials), on a port the engine picks, so no port can be taken in
    /// between; `configure` adds the command, environment and files.
    pub(crate) async fn start(
        spec: Spec,
        configure: impl Fn(ContainerRequest<GenericImage>) -> ContainerRequest<GenericImage>,
    ) -> Result<Self> {
        let image = spec.image();
        let (name, tag) = split_image(&image);
        let port = spec.container_port;
        let request = GenericImage::new(name, tag)
            .with_entrypoint(spec.entrypoint)
            .with_exposed_port(port.tcp())
            .with_wait_for(WaitFor::message_on_stderr(spec.ready_on_stderr))
            .with_host_config_modifier(move |host| {
                host.publish_all_ports = Some(false);
                host.port_bindings = Some(HashMap::from([(
                    format!("{port}/tcp"),
                    Some(vec![PortBinding {
                        host_ip: Some("127.0.0.1".to_owned()),
                        host_port: Some(String::new()),
                    }]),
                )]));
            })
            .with_startup_timeout(STARTUP_TIMEOUT)
            // Whose container it is, for a clean-up after a SIGKILL.
            .with_label(
                "lake-testkit.run",
                std::env::var("LAKE_TESTKIT_RUN")
                    .unwrap_or_else(|_| std::process::id().to_string()),
            );
        let context = || {
            format!(
                "starting a container of {image} (LAKE_TESTKIT={}; set {} to another image, or \
                 LAKE_TESTKIT=native to use this machine's binaries)",
                std::env::var("LAKE_TESTKIT").unwrap_or_else(|_| "auto".into()),
                spec.image_var
            )
        };
        let inner = configure(request).start().await.with_context(context)?;
        let host_port = inner.get_host_port_ipv4(port).await.with_context(context)?;
        Ok(Self {
            inner: Some(Box::new(inner)),
            port: host_port,
        })
    }

    /// The last lines the container wrote, for error messages.
    pub(crate) async fn log_tail(&self) -> String {
        let Some(inner) = self.inner.as_ref() else {
            return String::new();
        };
        let mut log = inner.stdout_to_vec().await.unwrap_or_default();
        log.extend(inner.stderr_to_vec().await.unwrap_or_default());
        let text = String::from_utf8_lossy(&log);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// The container's id (for `docker logs`, `docker exec`).
    pub(crate) fn id(&self) -> &str {
        self.inner.as_ref().map(|c| c.id()).unwrap_or_default()
    }
}

impl std::fmt::Debug for Container {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Container")
            .field("id", &self.id())
            .field("port", &self.port)
            .finish()
    }
}

impl Drop for Container {
    /// testcontainers removes the container in its own `Drop`, which needs a
    /// tokio runtime: outside one (a value dropped after its runtime ended),
    /// a small one is made for it.
    fn drop(&mut self) {
        let Some(inner) = self.inner.take() else {
            return;
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            drop(inner);
        } else if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            runtime.block_on(async move { drop(inner) });
        }
    }
}

/// `name:tag` → (`name`, `tag`); the tag defaults to `latest`. A registry port
/// (`host:5000/name`) is not a tag.
fn split_image(image: &str) -> (&str, &str) {
    match image.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, tag),
        _ => (image, "latest"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lake_testkit_chooses_the_backend() {
        assert_eq!(Backend::parse("native", true), Ok(Backend::Native));
        assert_eq!(Backend::parse("containers", false), Ok(Backend::Containers));
        assert_eq!(Backend::parse("", true), Ok(Backend::Containers));
        assert_eq!(Backend::parse("auto", false), Ok(Backend::Native));
        let err = Backend::parse("docker", true).unwrap_err();
        assert!(err.contains("native, containers or auto"), "{err}");
    }

    #[test]
    fn the_default_moto_image_is_the_version_setup_installs() {
        let requirements = include_str!("../../scripts/requirements.txt");
        let pinned = requirements
            .lines()
            .find_map(|l| l.strip_prefix("moto[s3,server]=="))
            .expect("moto pinned in scripts/requirements.txt");
        assert_eq!(split_image(S3_IMAGE).1, pinned.trim());
    }

    #[test]
    fn image_names_split_at_the_tag() {
        assert_eq!(split_image("postgres:15"), ("postgres", "15"));
        assert_eq!(
            split_image("localhost:5000/lake/moto"),
            ("localhost:5000/lake/moto", "latest")
        );
        assert_eq!(
            split_image("docker.io/motoserver/moto:5.2.5"),
            ("docker.io/motoserver/moto", "5.2.5")
        );
    }
}
