//! A throwaway PostgreSQL server per test.
//!
//! Bronze ingestion depends on real PostgreSQL behaviour (snapshots, `xmin`,
//! `pg_current_snapshot()`, roles and scram authentication), so tests run against a
//! real server rather than a mock. [`TestPostgres::start`] creates a fresh cluster
//! in a temporary directory with the native server binaries, starts it on a free
//! 127.0.0.1 port with durability switched off (fast, and nothing here needs to
//! survive a crash), and creates the database `robson`. Dropping the value stops
//! the server (immediate shutdown) and deletes the cluster.
//!
//! As root (CI), the server runs as the `postgres` account, because PostgreSQL
//! refuses to run as root. Authentication is `trust` on the private unix socket and
//! `scram-sha-256` over TCP, so tests connecting over TCP exercise passwords,
//! including wrong ones.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::Signal;
use tempfile::TempDir;
use testcontainers::ImageExt;
use tokio_postgres::NoTls;

use crate::container::{Backend, Container, Spec};
use crate::process::{self, RunAs};

/// Name of the database created in every test cluster.
const DATABASE: &str = "robson";
/// Name of the superuser created by `initdb`.
const SUPERUSER: &str = "postgres";
/// How long the server may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Start attempts, to survive another process grabbing the free port first.
const PORT_ATTEMPTS: usize = 3;
/// Server settings of every test server: durability off (fast; nothing here
/// needs to survive a crash), UTC, and few checkpoints during bulk demo loads
/// with bounded disk use.
const SETTINGS: &[&str] = &[
    "fsync=off",
    "full_page_writes=off",
    "synchronous_commit=off",
    "TimeZone=UTC",
    "max_wal_size=1GB",
    "checkpoint_timeout=1h",
    "shared_buffers=512MB",
];
/// What a container runs (`bash -c`, as the image's `postgres` user; followed
/// by the `-c` settings): the cluster `initdb` makes natively, with the
/// password of `LAKE_TESTKIT_PASSWORD` and `scram-sha-256` from any address
/// (connections arrive from the engine's bridge), then the server in the
/// foreground. The binaries are found on `PATH` or in Debian's directory, so
/// the public image and one built from Debian's packages both work.
const CONTAINER_SCRIPT: &str = r#"set -e
export PATH="$PATH:$(ls -d /usr/lib/postgresql/*/bin | tail -n 1)"
initdb --pgdata=/tmp/pgdata --username=postgres --pwfile=<(printf %s "$LAKE_TESTKIT_PASSWORD") \
  --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 --locale=C --no-sync >/dev/null
echo 'host all all all scram-sha-256' >> /tmp/pgdata/pg_hba.conf
exec postgres -D /tmp/pgdata -k /tmp -c listen_addresses='*' "$@""#;

/// A PostgreSQL server of its own for one test, on a free 127.0.0.1 port.
///
/// The cluster has a database `robson` and a password-protected superuser. Drop
/// stops the server and removes its data directory. `Debug` leaves the password
/// out.
pub struct TestPostgres {
    server: Server,
    host: String,
    port: u16,
    user: String,
    password: String,
    database: String,
}

/// Where the server runs.
enum Server {
    Native(Native),
    Container(Container),
}

/// A server of this machine's binaries, in a temporary directory of its own.
struct Native {
    child: Option<Child>,
    /// Removed explicitly in `Drop` once the server is gone.
    dir: Option<TempDir>,
    data_dir: PathBuf,
    log_file: PathBuf,
    bin_dir: PathBuf,
}

impl Native {
    fn new(dir: TempDir, bin_dir: PathBuf) -> Self {
        Self {
            child: None,
            data_dir: dir.path().join("data"),
            log_file: dir.path().join("postgres.log"),
            dir: Some(dir),
            bin_dir,
        }
    }
}

impl TestPostgres {
    /// Creates a fresh cluster, starts it on a free port and creates the database
    /// `robson`, with the backend `LAKE_TESTKIT` chooses (see
    /// [`Backend`](crate::Backend)).
    ///
    /// Fails with instructions if no PostgreSQL server binaries are installed, and
    /// with the tail of the server log if the server does not come up within 20 s.
    pub async fn start() -> Result<Self> {
        match Backend::current()? {
            Backend::Native => Self::start_native().await,
            Backend::Containers => Self::start_container().await,
        }
    }

    /// Like [`start`](Self::start), always with this machine's binaries: for
    /// tests that use the data directory, the server tools, a restart, a
    /// replica or an upgrade.
    pub async fn start_native() -> Result<Self> {
        let bin_dir = find_bin_dir()?;
        let run_as = RunAs::for_root(&["postgres"])?;
        let dir = tempfile::Builder::new()
            .prefix("lake-testkit-pg-")
            .tempdir()
            .context("creating a temporary directory for the PostgreSQL cluster")?;
        let mut pg = Self::new(Server::Native(Native::new(dir, bin_dir)));
        // On any error below, `pg` is dropped, which stops what was started.
        pg.init_cluster(run_as.as_ref()).await?;
        pg.start_server(run_as.as_ref()).await?;
        pg.create_database().await?;
        Ok(pg)
    }

    /// A server in a container (`LAKE_TESTKIT_POSTGRES_IMAGE`), set up as the
    /// native one is: the same settings, authentication and database.
    async fn start_container() -> Result<Self> {
        let password = new_password();
        // `bash -c SCRIPT $0 $1…`: the settings become the script's "$@".
        let mut cmd = vec!["-c", CONTAINER_SCRIPT, "lake-testkit"];
        cmd.extend(SETTINGS.iter().flat_map(|s| ["-c", *s]));
        let container = Container::start(Spec::postgres(), |request| {
            request
                .with_user("postgres")
                .with_env_var("LAKE_TESTKIT_PASSWORD", &password)
                // Parallel queries use /dev/shm; Docker's default is 64 MB.
                .with_shm_size(256 << 20)
                .with_cmd(cmd.iter().copied())
        })
        .await?;
        let port = container.port;
        let mut pg = Self::new(Server::Container(container));
        pg.port = port;
        pg.password = password;
        // Published ports can lag the server's start-up by a moment.
        let started = Instant::now();
        loop {
            match pg.connect_to("postgres", &pg.user, &pg.password).await {
                Ok(_) => break,
                Err(err) if started.elapsed() > READY_TIMEOUT => {
                    let log = match &pg.server {
                        Server::Container(c) => c.log_tail().await,
                        Server::Native(_) => String::new(),
                    };
                    return Err(err.context(format!(
                        "the PostgreSQL container did not accept connections within \
                         {READY_TIMEOUT:?}; its log:\n{log}"
                    )));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        pg.create_database().await?;
        Ok(pg)
    }

    fn new(server: Server) -> Self {
        Self {
            server,
            host: "127.0.0.1".to_owned(),
            port: 0,
            user: SUPERUSER.to_owned(),
            password: new_password(),
            database: DATABASE.to_owned(),
        }
    }

    /// A native server of this one's binaries and credentials, not yet
    /// created, in `dir` (a replica, an upgraded cluster).
    fn sibling(&self, dir: TempDir) -> Self {
        Self {
            server: Server::Native(Native::new(dir, self.bin_dir().to_owned())),
            host: self.host.clone(),
            port: 0,
            user: self.user.clone(),
            password: self.password.clone(),
            database: self.database.clone(),
        }
    }

    async fn create_database(&self) -> Result<()> {
        let admin = self
            .connect_to("postgres", &self.user, &self.password)
            .await?;
        admin
            .batch_execute(&format!("CREATE DATABASE {DATABASE}"))
            .await
            .context("creating database robson")
    }

    /// The native server, for what only it has (files, tools, restarts).
    /// Calling this on a container is a mistake in the test, hence the panic
    /// that names the fix.
    fn native(&self) -> &Native {
        match &self.server {
            Server::Native(native) => native,
            Server::Container(_) => panic!("{NATIVE_ONLY}"),
        }
    }

    fn native_mut(&mut self) -> &mut Native {
        match &mut self.server {
            Server::Native(native) => native,
            Server::Container(_) => panic!("{NATIVE_ONLY}"),
        }
    }

    /// Host to connect to (always `127.0.0.1`).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// TCP port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Name of the test database (`robson`).
    pub fn database(&self) -> &str {
        &self.database
    }

    /// Superuser name (`postgres`).
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Superuser password (random per server; required over TCP).
    pub fn password(&self) -> &str {
        &self.password
    }

    /// Data directory of the cluster (deleted on drop). Native backend only.
    pub fn data_dir(&self) -> &Path {
        &self.native().data_dir
    }

    /// Server log file, useful when a test fails (deleted on drop). Native
    /// backend only.
    pub fn log_file(&self) -> &Path {
        &self.native().log_file
    }

    /// Directory of the server binaries in use (`psql`, `pg_dump`, ... live
    /// there too). Native backend only.
    pub fn bin_dir(&self) -> &Path {
        &self.native().bin_dir
    }

    /// The `DJANGO_DB_*` variables of SPEC §8 pointing at this server as the
    /// superuser, with `DJANGO_DB_SSLMODE=disable` (the test server has no TLS).
    pub fn env(&self) -> Vec<(String, String)> {
        self.env_as(&self.user, &self.password)
    }

    /// Like [`env`](Self::env), but connecting as `user` (for example a role made
    /// with [`create_role`](Self::create_role)).
    pub fn env_as(&self, user: &str, password: &str) -> Vec<(String, String)> {
        [
            ("DJANGO_DB_HOST", self.host.clone()),
            ("DJANGO_DB_PORT", self.port.to_string()),
            ("DJANGO_DB_NAME", self.database.clone()),
            ("DJANGO_DB_USER", user.to_owned()),
            ("DJANGO_DB_PASSWORD", password.to_owned()),
            ("DJANGO_DB_SSLMODE", "disable".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// A `tokio_postgres` configuration for the test database as the superuser.
    pub fn config(&self) -> tokio_postgres::Config {
        self.config_for(&self.database, &self.user, &self.password)
    }

    /// A superuser connection to the test database; its connection task is spawned
    /// on the current tokio runtime.
    pub async fn client(&self) -> Result<tokio_postgres::Client> {
        self.connect_to(&self.database, &self.user, &self.password)
            .await
    }

    /// A connection to the test database as `user` (over TCP, so the password is
    /// checked).
    pub async fn connect_as(&self, user: &str, password: &str) -> Result<tokio_postgres::Client> {
        self.connect_to(&self.database, user, password).await
    }

    /// Creates a `LOGIN` role with `password`.
    ///
    /// With `readonly_on_source_tables`, the role gets `SELECT` on `stop_events` and
    /// `outbox` (and `USAGE` on schema `public`) and nothing else, like the
    /// production ingest role; the tables must exist, so call this after
    /// [`demo::create_schema`](crate::demo::create_schema). Without it, the role has
    /// no privileges at all (for permission-denied tests).
    pub async fn create_role(
        &self,
        name: &str,
        password: &str,
        readonly_on_source_tables: bool,
    ) -> Result<()> {
        let client = self.client().await?;
        // Let the server quote the identifier and the literal.
        let create: String = client
            .query_one(
                "SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', $1::text, $2::text)",
                &[&name, &password],
            )
            .await?
            .get(0);
        client
            .batch_execute(&create)
            .await
            .with_context(|| format!("creating role {name}"))?;
        if readonly_on_source_tables {
            let grant: String = client
                .query_one(
                    "SELECT format('GRANT USAGE ON SCHEMA public TO %1$I; \
                     GRANT SELECT ON TABLE public.stop_events, public.outbox TO %1$I', $1::text)",
                    &[&name],
                )
                .await?
                .get(0);
            client.batch_execute(&grant).await.with_context(|| {
                format!(
                    "granting SELECT on stop_events and outbox to {name} (create the schema first)"
                )
            })?;
        }
        Ok(())
    }

    /// Turns TLS on with `cert` (copied into the data directory, readable by the
    /// server only, as PostgreSQL requires of the key) and reloads; calling it
    /// again with another certificate (other file names) replaces it. Plain
    /// connections keep working (`pg_hba.conf`'s `host` lines match both).
    ///
    /// It waits until new sessions see the new file names, which proves the
    /// reload happened, not that the certificate loaded: a certificate the
    /// server rejects leaves the previous one in use (see the server log), and
    /// the test's handshakes then show it.
    pub async fn enable_tls(&self, cert: &crate::ServerCert) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let run_as = RunAs::for_root(&["postgres"])?;
        // Named after the certificate, so that a new session showing the new
        // name proves the postmaster has reloaded (and loaded this one).
        let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
        let (Some(cert_name), Some(key_name)) = (name(&cert.cert), name(&cert.key)) else {
            bail!("certificate paths without a file name");
        };
        for (from, to) in [(&cert.cert, &cert_name), (&cert.key, &key_name)] {
            let dest = self.data_dir().join(to);
            std::fs::copy(from, &dest)
                .with_context(|| format!("copying {} into the data directory", from.display()))?;
            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("chmod 600 {}", dest.display()))?;
            if let Some(run_as) = run_as.as_ref() {
                run_as.chown(&dest)?;
            }
        }
        let client = self.client().await?;
        // One statement at a time: ALTER SYSTEM refuses a transaction block.
        for sql in [
            "ALTER SYSTEM SET ssl = on".to_owned(),
            format!("ALTER SYSTEM SET ssl_cert_file = '{cert_name}'"),
            format!("ALTER SYSTEM SET ssl_key_file = '{key_name}'"),
            "SELECT pg_reload_conf()".to_owned(),
        ] {
            client.batch_execute(&sql).await.context("turning ssl on")?;
        }
        for _ in 0..50 {
            let row = self
                .client()
                .await?
                .query_one(
                    "SELECT current_setting('ssl'), current_setting('ssl_cert_file')",
                    &[],
                )
                .await?;
            if row.get::<_, String>(0) == "on" && row.get::<_, String>(1) == cert_name {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "ssl with {cert_name} did not take effect; see the server log {}",
            self.log_file().display()
        )
    }

    /// A streaming replica of `primary`: a base backup (`pg_basebackup -R`,
    /// WAL streamed) of its own temporary directory, started as a hot standby on
    /// a free port. Same roles, databases and passwords as the primary.
    pub async fn replica_of(primary: &TestPostgres) -> Result<Self> {
        let run_as = RunAs::for_root(&["postgres"])?;
        let dir = tempfile::Builder::new()
            .prefix("lake-testkit-pg-replica-")
            .tempdir()
            .context("creating a temporary directory for the replica")?;
        if let Some(run_as) = run_as.as_ref() {
            run_as.chown(dir.path())?;
        }
        let mut pg = primary.sibling(dir);
        let mut cmd = tokio::process::Command::new(pg.bin_dir().join("pg_basebackup"));
        cmd.arg("--pgdata")
            .arg(pg.data_dir())
            .args([
                "--write-recovery-conf",
                "--wal-method=stream",
                "--checkpoint=fast",
                "--no-sync",
            ])
            .args(["--host", &primary.host, "--port", &primary.port.to_string()])
            .args(["--username", &primary.user])
            .env("PGPASSWORD", &primary.password)
            .env_remove("PGDATA")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if let Some(run_as) = run_as.as_ref() {
            cmd.uid(run_as.uid).gid(run_as.gid);
        }
        let out = cmd.output().await.context("running pg_basebackup")?;
        if !out.status.success() {
            bail!(
                "pg_basebackup failed ({}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        pg.start_server(run_as.as_ref()).await?;
        Ok(pg)
    }

    /// Upgrades this cluster into a new one with `pg_upgrade`, as a major-version
    /// upgrade does (here 15 → 15, the one version installed): a new
    /// `system_identifier`, the same rows with the same xmins, xid counter and
    /// file nodes, the same roles and passwords. This server is stopped cleanly
    /// first (pg_upgrade refuses a crashed one); the new one runs on a fresh
    /// port.
    pub async fn upgrade_into_new_cluster(&mut self) -> Result<TestPostgres> {
        let run_as = RunAs::for_root(&["postgres"])?;
        let dir = tempfile::Builder::new()
            .prefix("lake-testkit-pg-upgraded-")
            .tempdir()
            .context("creating a temporary directory for the upgraded cluster")?;
        let work = dir.path().join("pg_upgrade");
        let mut new = self.sibling(dir);
        new.init_cluster(run_as.as_ref()).await?;
        std::fs::create_dir_all(&work).context("creating pg_upgrade's working directory")?;
        if let Some(run_as) = run_as.as_ref() {
            run_as.chown(&work)?;
        }
        self.stop();
        // Its own ports: the defaults (50432, 50433) would collide with
        // another test upgrading at the same time.
        let (old_port, new_port) = (process::free_port()?, process::free_port()?);
        let mut cmd = tokio::process::Command::new(self.bin_dir().join("pg_upgrade"));
        cmd.arg("--old-datadir")
            .arg(self.data_dir())
            .arg("--new-datadir")
            .arg(new.data_dir())
            .arg("--old-bindir")
            .arg(self.bin_dir())
            .arg("--new-bindir")
            .arg(self.bin_dir())
            .arg("--socketdir")
            .arg(&work)
            .args(["--old-port", &old_port.to_string()])
            .args(["--new-port", &new_port.to_string()])
            .args(["--username", &self.user])
            .current_dir(&work)
            .env_remove("PGDATA")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if let Some(run_as) = run_as.as_ref() {
            cmd.uid(run_as.uid).gid(run_as.gid);
        }
        let out = cmd.output().await.context("running pg_upgrade")?;
        if !out.status.success() {
            bail!(
                "pg_upgrade failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        new.start_server(run_as.as_ref()).await?;
        Ok(new)
    }

    /// Promotes a standby to primary (`pg_promote()`, waiting for it to finish).
    pub async fn promote(&self) -> Result<()> {
        let client = self
            .connect_to("postgres", &self.user, &self.password)
            .await?;
        let done: bool = client
            .query_one("SELECT pg_promote(true, 60)", &[])
            .await
            .context("promoting the standby")?
            .get(0);
        anyhow::ensure!(done, "the standby did not finish promotion within 60 s");
        Ok(())
    }

    /// Waits until this standby has replayed `primary`'s current WAL position.
    pub async fn wait_caught_up(&self, primary: &TestPostgres) -> Result<()> {
        let target: String = primary
            .client()
            .await?
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await?
            .get(0);
        let me = self.client().await?;
        let started = Instant::now();
        loop {
            let caught_up: bool = me
                .query_one(
                    "SELECT coalesce(pg_last_wal_replay_lsn() >= $1::text::pg_lsn, false)",
                    &[&target],
                )
                .await?
                .get(0);
            if caught_up {
                return Ok(());
            }
            if started.elapsed() > READY_TIMEOUT {
                bail!("the standby did not replay up to {target} within {READY_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the server cleanly (a fast shutdown, which writes a shutdown
    /// checkpoint), as tools such as `pg_resetwal` require. [`restart`](Self::restart)
    /// starts it again.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.native_mut().child.take() {
            process::stop_child(
                &mut child,
                Signal::SIGINT,
                Duration::from_secs(30),
                "postgres",
            );
        }
    }

    /// Runs a server tool of [`bin_dir`](Self::bin_dir) (`pg_resetwal`,
    /// `pg_controldata`, …) with `args` as the server's account (pass the
    /// cluster as `-D` [`data_dir`](Self::data_dir)). Returns its standard
    /// output; fails with its output.
    pub async fn run_tool(&self, tool: &str, args: &[&str]) -> Result<String> {
        let run_as = RunAs::for_root(&["postgres"])?;
        let mut cmd = tokio::process::Command::new(self.bin_dir().join(tool));
        cmd.args(args)
            .env_remove("PGDATA")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if let Some(run_as) = run_as.as_ref() {
            cmd.uid(run_as.uid).gid(run_as.gid);
        }
        let out = cmd
            .output()
            .await
            .with_context(|| format!("running {tool}"))?;
        if !out.status.success() {
            bail!(
                "{tool} {args:?} failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts a server stopped by [`stop`](Self::stop) again, on a fresh free
    /// port (read [`port`](Self::port) and [`env`](Self::env) again).
    pub async fn restart(&mut self) -> Result<()> {
        self.stop();
        let run_as = RunAs::for_root(&["postgres"])?;
        self.start_server(run_as.as_ref()).await
    }

    fn config_for(&self, database: &str, user: &str, password: &str) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&self.host)
            .port(self.port)
            .dbname(database)
            .user(user)
            .password(password)
            .application_name("lake-testkit")
            .connect_timeout(Duration::from_secs(5));
        config
    }

    async fn connect_to(
        &self,
        database: &str,
        user: &str,
        password: &str,
    ) -> Result<tokio_postgres::Client> {
        let (client, connection) = self
            .config_for(database, user, password)
            .connect(NoTls)
            .await
            .with_context(|| {
                format!(
                    "connecting to {}:{}/{database} as {user}",
                    self.host, self.port
                )
            })?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%err, "Test PostgreSQL connection ended");
            }
        });
        Ok(client)
    }

    /// Runs `initdb` (as `run_as` when root).
    async fn init_cluster(&self, run_as: Option<&RunAs>) -> Result<()> {
        let dir = self
            .native()
            .dir
            .as_ref()
            .map(TempDir::path)
            .context("cluster directory already removed")?;
        let pwfile = dir.join("pwfile");
        std::fs::write(&pwfile, &self.password).context("writing the initdb password file")?;
        if let Some(run_as) = run_as {
            run_as.chown(dir)?;
            run_as.chown(&pwfile)?;
        }
        let mut cmd = tokio::process::Command::new(self.bin_dir().join("initdb"));
        cmd.arg("--pgdata")
            .arg(self.data_dir())
            .arg("--username")
            .arg(&self.user)
            .arg(format!("--pwfile={}", pwfile.display()))
            .args([
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .current_dir(dir)
            .env_remove("PGDATA")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if let Some(run_as) = run_as {
            cmd.uid(run_as.uid).gid(run_as.gid);
        }
        let output = cmd.output().await.context("running initdb")?;
        let _ = std::fs::remove_file(&pwfile);
        if !output.status.success() {
            bail!(
                "initdb failed ({}):\n{}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }

    /// Starts the server on a free port and waits until it accepts connections.
    async fn start_server(&mut self, run_as: Option<&RunAs>) -> Result<()> {
        let dir = self
            .native()
            .dir
            .as_ref()
            .map(|d| d.path().to_owned())
            .context("cluster directory already removed")?;
        let socket_dir = dir.join("socket");
        std::fs::create_dir_all(&socket_dir).context("creating the socket directory")?;
        if let Some(run_as) = run_as {
            run_as.chown(&socket_dir)?;
        }
        for attempt in 1..=PORT_ATTEMPTS {
            self.port = process::free_port()?;
            let log = std::fs::File::create(self.log_file()).context("creating the server log")?;
            let mut cmd = Command::new(self.bin_dir().join("postgres"));
            cmd.arg("-D")
                .arg(self.data_dir())
                .arg("-p")
                .arg(self.port.to_string())
                .arg("-k")
                .arg(&socket_dir)
                .args(["-c", "listen_addresses=127.0.0.1"])
                .args(SETTINGS.iter().flat_map(|s| ["-c", s]))
                .current_dir(&dir)
                .env_remove("PGDATA")
                .stdin(Stdio::null())
                .stdout(log.try_clone().context("duplicating the log handle")?)
                .stderr(log);
            if let Some(run_as) = run_as {
                use std::os::unix::process::CommandExt;
                cmd.uid(run_as.uid).gid(run_as.gid);
            }
            self.native_mut().child = Some(cmd.spawn().context("spawning postgres")?);
            match self.wait_ready().await {
                Ok(()) => return Ok(()),
                Err(StartError::PortInUse) => {
                    tracing::debug!(
                        port = self.port,
                        attempt,
                        "Port taken, retrying PostgreSQL start"
                    );
                    self.stop_child();
                }
                Err(StartError::Other(err)) => return Err(err),
            }
        }
        bail!(
            "PostgreSQL could not bind a free port in {PORT_ATTEMPTS} attempts; {}",
            process::with_log(self.log_file())
        )
    }

    async fn wait_ready(&mut self) -> Result<(), StartError> {
        let started = Instant::now();
        loop {
            let native = self.native_mut();
            if let Some(child) = native.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                let log = process::log_tail(&native.log_file, 4096);
                if process::looks_like_port_in_use(&log) {
                    return Err(StartError::PortInUse);
                }
                return Err(StartError::Other(anyhow!(
                    "postgres exited during start-up ({status}); {}",
                    process::with_log(&native.log_file)
                )));
            }
            let last_error = match self
                .config_for("postgres", &self.user, &self.password)
                .connect(NoTls)
                .await
            {
                Ok(_) => return Ok(()),
                Err(err) => err,
            };
            if started.elapsed() > READY_TIMEOUT {
                return Err(StartError::Other(anyhow!(
                    "PostgreSQL did not accept connections on 127.0.0.1:{} within {READY_TIMEOUT:?} \
                     (last error: {last_error}); {}",
                    self.port,
                    process::with_log(self.log_file())
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn stop_child(&mut self) {
        self.native_mut().stop_now();
    }
}

impl Native {
    /// Stops the server at once, if it runs: SIGQUIT is PostgreSQL's
    /// immediate shutdown (no checkpoint, children are told to exit at once).
    fn stop_now(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::stop_child(
                &mut child,
                Signal::SIGQUIT,
                Duration::from_secs(10),
                "postgres",
            );
        }
    }
}

impl std::fmt::Debug for TestPostgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPostgres")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("database", &self.database)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Native(native) => f
                .debug_struct("Native")
                .field("data_dir", &native.data_dir)
                .field("pid", &native.child.as_ref().map(Child::id))
                .finish(),
            Self::Container(container) => container.fmt(f),
        }
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        // A container is removed by its own drop.
        let Server::Native(native) = &mut self.server else {
            return;
        };
        native.stop_now();
        if let Some(dir) = native.dir.take() {
            let path = dir.path().to_owned();
            if let Err(err) = dir.close() {
                tracing::warn!(path = %path.display(), %err, "Could not remove the test cluster");
            }
        }
    }
}

/// Why a container-backed server cannot do what a test asked.
const NATIVE_ONLY: &str =
    "this test needs the native PostgreSQL backend: start it with TestPostgres::start_native()";

/// A throwaway password, random per server.
fn new_password() -> String {
    format!("pw-{:016x}", crate::random_u64())
}

enum StartError {
    PortInUse,
    Other(anyhow::Error),
}

/// Locates a directory holding `postgres` and `initdb`.
///
/// Order: `$PG_BINDIR`, `pg_config --bindir`, the highest
/// `/usr/lib/postgresql/<version>/bin`, then `postgres` on `PATH`. Debian's
/// `pg_config` may belong to the client package only, hence the check that the
/// server binary is really there.
fn find_bin_dir() -> Result<PathBuf> {
    let has_server = |dir: &Path| {
        process::is_executable(&dir.join("postgres")) && process::is_executable(&dir.join("initdb"))
    };
    let mut looked = Vec::new();

    if let Some(dir) = std::env::var_os("PG_BINDIR").map(PathBuf::from) {
        if has_server(&dir) {
            return Ok(dir);
        }
        looked.push(format!("$PG_BINDIR={}", dir.display()));
    }
    if let Ok(output) = Command::new("pg_config")
        .arg("--bindir")
        .stderr(Stdio::null())
        .output()
        && output.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if has_server(&dir) {
            return Ok(dir);
        }
        looked.push(format!("`pg_config --bindir`={}", dir.display()));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let dir = entry.path().join("bin");
            has_server(&dir).then_some((version, dir))
        })
        .collect();
    versions.sort();
    if let Some((_, dir)) = versions.pop() {
        return Ok(dir);
    }
    looked.push("/usr/lib/postgresql/*/bin".to_owned());
    if let Some(dir) =
        process::find_on_path("postgres").and_then(|p| p.parent().map(Path::to_owned))
        && has_server(&dir)
    {
        return Ok(dir);
    }
    looked.push("PATH".to_owned());
    bail!(
        "no PostgreSQL server binaries (postgres + initdb) found; looked in: {}. \
         Install them with `just setup` (Debian/Ubuntu: `apt-get install -y postgresql`; macOS: \
         `brew install postgresql@15`) or point PG_BINDIR at their directory; or run it in a \
         container: LAKE_TESTKIT=containers with a Docker engine (set DOCKER_HOST if it has no \
         default socket)",
        looked.join(", ")
    )
}
