//! Configuration from the environment.
//!
//! The cluster already holds secrets under the names of SPEC §8, so the jobs read
//! exactly those names. Loading is two-step: [`envy`] deserialises the raw strings,
//! then [`validate`](RawEnv) turns them into typed settings and collects *every*
//! problem, each naming its variable and saying how to fix it, so an operator fixes
//! a broken Secret in one round trip instead of one variable per crash loop.
//!
//! Secrets live in [`Secret`], whose `Debug` and `Display` print `***`: a config
//! can be logged or put into an error message without leaking anything.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use url::Url;

/// Every environment variable a job of this workspace reads, in the order of the
/// README's configuration table (a test keeps the two in step, and the deploy
/// tests check the manifests against that table).
pub const ENV_VARS: &[&str] = &[
    "DJANGO_DB_HOST",
    "DJANGO_DB_PORT",
    "DJANGO_DB_NAME",
    "DJANGO_DB_USER",
    "DJANGO_DB_PASSWORD",
    "DJANGO_DB_SSLMODE",
    "DJANGO_DB_SSLROOTCERT",
    "DJANGO_DB_STATEMENT_TIMEOUT",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_ENDPOINT",
    "AWS_REGION",
    "S3_BUCKET",
    "LAKE_URL",
    "S3_CONDITIONAL_WRITES",
    "S3_MAX_RETRIES",
    "S3_TIMEOUT_SECS",
    "LOG_FORMAT",
    "RUST_LOG",
    "BRONZE_LEASE_SECS",
    "BRONZE_LOOKBACK",
    "BRONZE_HORIZON_WARN",
    "SILVER_MAX_VIOLATION_RATIO",
    "SILVER_SHARD_COUNT",
    "SILVER_MEMORY_MB",
    "JOB_COMPLETION_INDEX",
    "PUSHGATEWAY_URL",
    "LAKE_BUSY_OK",
    "MAINTAIN_GRACE",
    "MAINTAIN_UPLOAD_GRACE",
    "MAINTAIN_BRONZE_RETENTION_DAYS",
    "MAINTAIN_SILVER_RETENTION_DAYS",
    "MAINTAIN_OUTBOX_RETENTION_DAYS",
    "MAINTAIN_REPORTS_RETENTION_DAYS",
];

/// Prefixes this project owns: a variable with one of them that is not in
/// [`ENV_VARS`] is almost certainly a typo (`DJANGO_DB_PROT`). `AWS_` is left
/// alone: the AWS tooling owns many names (`AWS_SESSION_TOKEN`, `AWS_PROFILE`).
const OWN_PREFIXES: &[&str] = &[
    "DJANGO_DB_",
    "S3_",
    "LAKE_",
    "BRONZE_",
    "SILVER_",
    "MAINTAIN_",
    "LOG_",
];

/// Names with an own prefix that are not configuration: test hooks, the
/// benchmark's knobs and the build's commit stamp.
const NOT_CONFIGURATION: &[&str] = &[
    "BRONZE_FAILPOINT",
    "MAINTAIN_FAILPOINT",
    "LAKE_GIT_COMMIT",
    "LAKE_TEST",
    "LAKE_TESTKIT",
    "SILVER_BENCH_",
    "SILVER_TEST_",
];

/// One line per variable that carries one of the project's prefixes but is not
/// one the jobs read, with the nearest known name when one is close: a typo in a
/// Secret would otherwise pass silently and leave the default in force.
pub fn unknown_variables<I, K>(names: I) -> Vec<String>
where
    I: IntoIterator<Item = K>,
    K: AsRef<str>,
{
    let mut lines: Vec<String> = names
        .into_iter()
        .filter_map(|name| {
            let name = name.as_ref();
            let own = OWN_PREFIXES.iter().any(|p| name.starts_with(p));
            let exempt = NOT_CONFIGURATION.iter().any(|p| name.starts_with(p));
            if !own || exempt || ENV_VARS.contains(&name) {
                return None;
            }
            let nearest = ENV_VARS
                .iter()
                .map(|known| (strsim::damerau_levenshtein(name, known), *known))
                .min()
                .filter(|(distance, _)| *distance <= 3)
                .map(|(_, known)| known);
            Some(match nearest {
                Some(known) => format!("{name} is not a variable the jobs read: did you mean {known}?"),
                None => format!(
                    "{name} is not a variable the jobs read (it is ignored): see the README's configuration table"
                ),
            })
        })
        .collect();
    lines.sort();
    lines
}

/// A secret string: never printed by `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that must send it (a login).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// One thing wrong with one variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The environment variable at fault (or the pair, for exclusive choices).
    pub variable: &'static str,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.variable, self.message)
    }
}

/// The configuration is unusable; lists every problem found. Maps to exit code 2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// All problems, in the order of [`ENV_VARS`].
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid configuration: ")?;
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    fn single(variable: &'static str, message: impl Into<String>) -> Self {
        Self {
            problems: vec![Problem {
                variable,
                message: message.into(),
            }],
        }
    }

    /// True if one of the problems is about `variable`.
    pub fn mentions(&self, variable: &str) -> bool {
        self.problems.iter().any(|p| p.variable == variable)
    }
}

/// How to protect the PostgreSQL connection (libpq's `sslmode` semantics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS if the server offers it, without certificate checks (libpq's default).
    Prefer,
    /// TLS or fail, without certificate checks.
    Require,
    /// TLS or fail; the certificate chain and the host name are checked.
    VerifyFull,
}

impl SslMode {
    /// The name as written in `DJANGO_DB_SSLMODE`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyFull => "verify-full",
        }
    }
}

/// Connection settings of the Django PostgreSQL database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresConfig {
    /// `DJANGO_DB_HOST`.
    pub host: String,
    /// `DJANGO_DB_PORT`, default 5432.
    pub port: u16,
    /// `DJANGO_DB_NAME`.
    pub dbname: String,
    /// `DJANGO_DB_USER`: a read-only role with SELECT on the source tables.
    pub user: String,
    /// `DJANGO_DB_PASSWORD`.
    pub password: Secret,
    /// `DJANGO_DB_SSLMODE`, default `prefer`.
    pub sslmode: SslMode,
    /// `DJANGO_DB_SSLROOTCERT`: PEM file of the CA that signed the server
    /// certificate; without it the system roots are used.
    pub sslrootcert: Option<PathBuf>,
    /// `DJANGO_DB_STATEMENT_TIMEOUT` (humantime, default 30min): a runaway query is
    /// cancelled by the server instead of holding a snapshot (and vacuum) forever.
    pub statement_timeout: Duration,
}

impl fmt::Display for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "postgresql://{}@{}:{}/{} (sslmode={})",
            self.user,
            self.host,
            self.port,
            self.dbname,
            self.sslmode.as_str()
        )
    }
}

/// Where the lake lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LakeLocation {
    /// An S3 bucket (path-style), from `S3_BUCKET` or an `s3://` `LAKE_URL`.
    S3(Box<S3Config>),
    /// A local directory (`file://` `LAKE_URL` or a plain path): the embedded default
    /// for local runs.
    Local(PathBuf),
    /// A process-local in-memory store (`memory://`), for unit tests only.
    Memory,
}

/// S3 settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    /// Bucket name.
    pub bucket: String,
    /// Key prefix inside the bucket (from an `s3://bucket/prefix` `LAKE_URL`), without slashes at either end.
    pub prefix: String,
    /// `AWS_ENDPOINT` normalised to a URL (`https://` unless it says `http://`);
    /// `None` means AWS itself.
    pub endpoint: Option<Url>,
    /// `AWS_REGION`, default `us-east-1` (Contabo accepts any region string).
    pub region: String,
    /// `AWS_ACCESS_KEY_ID`.
    pub access_key_id: String,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: Secret,
    /// `S3_CONDITIONAL_WRITES` (`enabled`/`disabled`, default enabled): whether the
    /// store enforces If-None-Match / If-Match. When disabled the jobs fall back to
    /// a PostgreSQL advisory lock (see the README's guarantees).
    pub conditional_writes: bool,
    /// `S3_MAX_RETRIES`, default 10.
    pub max_retries: usize,
    /// `S3_TIMEOUT_SECS`: per-request timeout, default 10 s: well below the
    /// 30 s lease, so a hung request fails and is retried before the lease is at risk.
    pub timeout: Duration,
}

/// Settings of the lake root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LakeConfig {
    /// The store.
    pub location: LakeLocation,
}

impl LakeConfig {
    /// Warns when an S3 request may outlive a third of `lease` (SPEC §5.4: the
    /// request timeout must stay well below the lease). Fencing still stops a
    /// run whose renewal came too late, but such a run exits 4 and its work is
    /// redone, so the operator is told which setting to change.
    pub fn warn_if_timeout_exceeds(&self, lease: Duration, lease_setting: &str) {
        if let LakeLocation::S3(s3) = &self.location
            && s3.timeout > lease / 3
        {
            tracing::warn!(
                s3_timeout_secs = s3.timeout.as_secs_f64(),
                lease_secs = lease.as_secs_f64(),
                "S3_TIMEOUT_SECS is more than a third of the lease: a slow request can outlive a renewal \
                 and make the run lose its lease; lower S3_TIMEOUT_SECS or raise {lease_setting}"
            );
        }
    }
}

impl LakeConfig {
    /// The lake root as a URL, without the endpoint: `s3://bucket/prefix`,
    /// `file:///dir` or `memory://`.
    pub fn root_url(&self) -> String {
        match &self.location {
            LakeLocation::S3(s3) if s3.prefix.is_empty() => format!("s3://{}", s3.bucket),
            LakeLocation::S3(s3) => format!("s3://{}/{}", s3.bucket, s3.prefix),
            LakeLocation::Local(p) => format!("file://{}", p.display()),
            LakeLocation::Memory => "memory://".to_owned(),
        }
    }
}

impl fmt::Display for LakeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.root_url())?;
        match &self.location {
            LakeLocation::S3(s3) if let Some(e) = &s3.endpoint => write!(f, " via {e}"),
            _ => Ok(()),
        }
    }
}

/// The whole configuration of a job that reads PostgreSQL and writes the lake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The source database.
    pub postgres: PostgresConfig,
    /// The lake.
    pub lake: LakeConfig,
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "source {} -> lake {}", self.postgres, self.lake)
    }
}

/// The raw strings, as envy reads them (field names are the lower-cased variables).
#[derive(Debug, Default, Deserialize)]
struct RawEnv {
    django_db_host: Option<String>,
    django_db_port: Option<String>,
    django_db_name: Option<String>,
    django_db_user: Option<String>,
    django_db_password: Option<Secret>,
    django_db_sslmode: Option<String>,
    django_db_sslrootcert: Option<String>,
    django_db_statement_timeout: Option<String>,
    aws_access_key_id: Option<String>,
    aws_secret_access_key: Option<Secret>,
    aws_endpoint: Option<String>,
    aws_region: Option<String>,
    s3_bucket: Option<String>,
    lake_url: Option<String>,
    s3_conditional_writes: Option<String>,
    s3_max_retries: Option<String>,
    s3_timeout_secs: Option<String>,
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

fn read_env<I>(vars: I) -> Result<RawEnv, ConfigError>
where
    I: IntoIterator<Item = (String, String)>,
{
    // Empty values count as unset: a Kubernetes Secret key left blank should read
    // as "missing", not as an empty host name.
    let vars = vars.into_iter().filter(|(_, v)| !v.trim().is_empty());
    envy::from_iter::<_, RawEnv>(vars)
        .map_err(|e| ConfigError::single("environment", format!("cannot be read: {e}")))
}

/// Collects problems while validating.
#[derive(Default)]
struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    fn problem(&mut self, variable: &'static str, message: impl Into<String>) {
        self.problems.push(Problem {
            variable,
            message: message.into(),
        });
    }

    fn required(&mut self, variable: &'static str, value: Option<String>, what: &str) -> String {
        match value {
            Some(v) => v.trim().to_owned(),
            None => {
                self.problem(variable, format!("is missing: set it to {what}"));
                String::new()
            }
        }
    }

    fn finish<T>(self, value: T) -> Result<T, ConfigError> {
        if self.problems.is_empty() {
            Ok(value)
        } else {
            Err(ConfigError {
                problems: self.problems,
            })
        }
    }
}

impl PostgresConfig {
    /// Reads `DJANGO_DB_*` from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(std::env::vars())
    }

    /// Reads `DJANGO_DB_*` from the given pairs (tests, child processes).
    pub fn from_vars<I: IntoIterator<Item = (String, String)>>(
        vars: I,
    ) -> Result<Self, ConfigError> {
        let raw = read_env(vars)?;
        let mut c = Checker::default();
        let pg = postgres_from_raw(&mut c, &raw);
        c.finish(pg)
    }
}

impl LakeConfig {
    /// Reads the lake variables from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(std::env::vars())
    }

    /// Reads the lake variables from the given pairs.
    pub fn from_vars<I: IntoIterator<Item = (String, String)>>(
        vars: I,
    ) -> Result<Self, ConfigError> {
        let raw = read_env(vars)?;
        let mut c = Checker::default();
        let lake = lake_from_raw(&mut c, &raw);
        c.finish(lake)
    }

    /// A local directory lake, the embedded default of local runs and the demo.
    pub fn local(dir: impl Into<PathBuf>) -> Self {
        Self {
            location: LakeLocation::Local(dir.into()),
        }
    }
}

impl Config {
    /// Reads everything from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(std::env::vars())
    }

    /// Reads everything from the given pairs, reporting all problems at once.
    pub fn from_vars<I: IntoIterator<Item = (String, String)>>(
        vars: I,
    ) -> Result<Self, ConfigError> {
        let raw = read_env(vars)?;
        let mut c = Checker::default();
        let postgres = postgres_from_raw(&mut c, &raw);
        let lake = lake_from_raw(&mut c, &raw);
        c.finish(Config { postgres, lake })
    }
}

fn postgres_from_raw(c: &mut Checker, raw: &RawEnv) -> PostgresConfig {
    let host = c.required(
        "DJANGO_DB_HOST",
        raw.django_db_host.clone(),
        "the PostgreSQL host name (e.g. postgres.robson.svc.cluster.local)",
    );
    let port = match raw.django_db_port.as_deref().map(str::trim) {
        None => 5432,
        Some(p) => {
            match p.parse::<u16>() {
                Ok(port) if port > 0 => port,
                _ => {
                    c.problem(
                    "DJANGO_DB_PORT",
                    format!("{p:?} is not a port number: use an integer from 1 to 65535 (default 5432)"),
                );
                    0
                }
            }
        }
    };
    let dbname = c.required(
        "DJANGO_DB_NAME",
        raw.django_db_name.clone(),
        "the database name",
    );
    let user = c.required(
        "DJANGO_DB_USER",
        raw.django_db_user.clone(),
        "the read-only role the job logs in as",
    );
    let password = match &raw.django_db_password {
        Some(p) => p.clone(),
        None => {
            c.problem(
                "DJANGO_DB_PASSWORD",
                "is missing: set it to the password of DJANGO_DB_USER",
            );
            Secret::default()
        }
    };
    let sslmode = match raw.django_db_sslmode.as_deref().map(str::trim) {
        None => SslMode::Prefer,
        Some(s) => {
            match s.to_ascii_lowercase().as_str() {
                "disable" => SslMode::Disable,
                "prefer" => SslMode::Prefer,
                "require" => SslMode::Require,
                "verify-full" => SslMode::VerifyFull,
                _ => {
                    c.problem(
                    "DJANGO_DB_SSLMODE",
                    format!("unknown sslmode {s:?}: use one of disable, prefer, require, verify-full"),
                );
                    SslMode::Prefer
                }
            }
        }
    };
    let sslrootcert = raw
        .django_db_sslrootcert
        .as_deref()
        .map(|p| PathBuf::from(p.trim()));
    if let Some(path) = &sslrootcert
        && !path.is_file()
    {
        c.problem(
            "DJANGO_DB_SSLROOTCERT",
            format!(
                "{} is not a readable file: mount the CA certificate (PEM) there",
                path.display()
            ),
        );
    }
    let statement_timeout = match raw.django_db_statement_timeout.as_deref().map(str::trim) {
        None => Duration::from_secs(30 * 60),
        Some(s) => match humantime::parse_duration(s) {
            Ok(d) if !d.is_zero() => d,
            _ => {
                c.problem(
                    "DJANGO_DB_STATEMENT_TIMEOUT",
                    format!("{s:?} is not a positive duration: write it like 30min or 2h"),
                );
                Duration::ZERO
            }
        },
    };
    PostgresConfig {
        host,
        port,
        dbname,
        user,
        password,
        sslmode,
        sslrootcert,
        statement_timeout,
    }
}

fn lake_from_raw(c: &mut Checker, raw: &RawEnv) -> LakeConfig {
    let bucket = raw.s3_bucket.as_deref().map(str::trim);
    let lake_url = raw.lake_url.as_deref().map(str::trim);
    let location = match (bucket, lake_url) {
        (Some(_), Some(_)) => {
            c.problem(
                "S3_BUCKET/LAKE_URL",
                "both are set: set S3_BUCKET for the production bucket or LAKE_URL for another root, not both",
            );
            LakeLocation::Memory
        }
        (None, None) => {
            c.problem(
                "S3_BUCKET/LAKE_URL",
                "neither is set: set S3_BUCKET (production) or LAKE_URL (e.g. file:///var/lib/lake for a local lake)",
            );
            LakeLocation::Memory
        }
        (Some(bucket), None) => {
            check_bucket_name(c, "S3_BUCKET", bucket);
            LakeLocation::S3(Box::new(s3_from_raw(
                c,
                raw,
                bucket.to_owned(),
                String::new(),
            )))
        }
        (None, Some(url)) => location_from_url(c, raw, url),
    };
    LakeConfig { location }
}

fn location_from_url(c: &mut Checker, raw: &RawEnv, url: &str) -> LakeLocation {
    if !url.contains("://") {
        // `s3:/bucket` or `file:lake` is a URL with a typo, not a directory named
        // `s3:` in the working directory.
        if let Some((scheme, _)) = url.split_once(':')
            && scheme.len() >= 2
            && scheme.chars().all(|ch| ch.is_ascii_alphanumeric())
        {
            c.problem(
                "LAKE_URL",
                format!(
                    "{url:?} looks like a URL with a missing \"//\": write s3://bucket/prefix, \
                     file:///absolute/path or a plain directory path"
                ),
            );
            return LakeLocation::Memory;
        }
        // A plain path: the friendliest spelling of a local lake.
        return LakeLocation::Local(PathBuf::from(url));
    }
    let parsed = match Url::parse(url) {
        Ok(u) => u,
        Err(e) => {
            c.problem(
                "LAKE_URL",
                format!("{url:?} is not a URL ({e}): use s3://bucket/prefix or file:///path"),
            );
            return LakeLocation::Memory;
        }
    };
    match parsed.scheme() {
        "s3" => {
            let bucket = parsed.host_str().unwrap_or_default().to_owned();
            check_bucket_name(c, "LAKE_URL", &bucket);
            let prefix = parsed.path().trim_matches('/').to_owned();
            LakeLocation::S3(Box::new(s3_from_raw(c, raw, bucket, prefix)))
        }
        "file" => match parsed.to_file_path() {
            Ok(p) => LakeLocation::Local(p),
            Err(()) => {
                c.problem(
                    "LAKE_URL",
                    format!("{url:?} is not an absolute file URL: write file:///absolute/path"),
                );
                LakeLocation::Memory
            }
        },
        "memory" => LakeLocation::Memory,
        other => {
            c.problem(
                "LAKE_URL",
                format!("unsupported scheme {other:?}: use s3://, file:// or memory://"),
            );
            LakeLocation::Memory
        }
    }
}

fn check_bucket_name(c: &mut Checker, variable: &'static str, bucket: &str) {
    let valid = (3..=63).contains(&bucket.len())
        && bucket
            .chars()
            .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-' || ch == '.')
        && bucket.starts_with(|ch: char| ch.is_ascii_alphanumeric());
    if !valid {
        c.problem(
            variable,
            format!("{bucket:?} is not a bucket name: 3-63 lowercase letters, digits, '-' or '.'"),
        );
    }
}

fn s3_from_raw(c: &mut Checker, raw: &RawEnv, bucket: String, prefix: String) -> S3Config {
    let endpoint = raw.aws_endpoint.as_deref().map(str::trim).and_then(|e| {
        let with_scheme = if e.contains("://") {
            e.to_owned()
        } else {
            format!("https://{e}")
        };
        match Url::parse(&with_scheme) {
            Ok(u) if !matches!(u.scheme(), "http" | "https") => {
                c.problem(
                    "AWS_ENDPOINT",
                    format!("{e:?} has scheme {:?}: use https:// or http://", u.scheme()),
                );
                None
            }
            Ok(u) if u.host_str().is_none_or(str::is_empty) => {
                c.problem(
                    "AWS_ENDPOINT",
                    format!("{e:?} has no host: write it like eu2.contabostorage.com"),
                );
                None
            }
            Ok(u) => Some(u),
            Err(err) => {
                let msg = if err == url::ParseError::EmptyHost {
                    format!("{e:?} has no host: write it like eu2.contabostorage.com")
                } else {
                    format!("{e:?} is not a host or URL ({err})")
                };
                c.problem("AWS_ENDPOINT", msg);
                None
            }
        }
    });
    let access_key_id = c.required(
        "AWS_ACCESS_KEY_ID",
        raw.aws_access_key_id.clone(),
        "the access key of the bucket's S3 credentials",
    );
    let secret_access_key = match &raw.aws_secret_access_key {
        Some(s) => s.clone(),
        None => {
            c.problem(
                "AWS_SECRET_ACCESS_KEY",
                "is missing: set it to the secret key of the bucket's S3 credentials",
            );
            Secret::default()
        }
    };
    let conditional_writes = match raw.s3_conditional_writes.as_deref().map(str::trim) {
        None => true,
        Some(v) => match v.to_ascii_lowercase().as_str() {
            "enabled" | "true" | "1" => true,
            "disabled" | "false" | "0" => false,
            _ => {
                c.problem(
                    "S3_CONDITIONAL_WRITES",
                    format!("{v:?} is not enabled or disabled"),
                );
                true
            }
        },
    };
    let max_retries = match raw.s3_max_retries.as_deref().map(str::trim) {
        None => 10,
        Some(v) => v.parse::<usize>().unwrap_or_else(|_| {
            c.problem(
                "S3_MAX_RETRIES",
                format!("{v:?} is not a non-negative integer"),
            );
            0
        }),
    };
    let timeout = match raw.s3_timeout_secs.as_deref().map(str::trim) {
        None => Duration::from_secs(10),
        Some(v) => match v.parse::<u64>() {
            Ok(s) if s > 0 => Duration::from_secs(s),
            _ => {
                c.problem(
                    "S3_TIMEOUT_SECS",
                    format!("{v:?} is not a positive number of seconds"),
                );
                Duration::ZERO
            }
        },
    };
    S3Config {
        bucket,
        prefix,
        endpoint,
        region: raw
            .aws_region
            .as_deref()
            .map(str::trim)
            .unwrap_or("us-east-1")
            .to_owned(),
        access_key_id,
        secret_access_key,
        conditional_writes,
        max_retries,
        timeout,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn good() -> Vec<(String, String)> {
        vars(&[
            ("DJANGO_DB_HOST", "db.internal"),
            ("DJANGO_DB_NAME", "robson"),
            ("DJANGO_DB_USER", "lake_reader"),
            ("DJANGO_DB_PASSWORD", "hunter2-very-secret"),
            ("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE"),
            ("AWS_SECRET_ACCESS_KEY", "s3-secret-key-value"),
            ("AWS_ENDPOINT", "eu2.contabostorage.com"),
            ("S3_BUCKET", "robson-lake"),
        ])
    }

    fn with(
        mut base: Vec<(String, String)>,
        key: &str,
        value: Option<&str>,
    ) -> Vec<(String, String)> {
        base.retain(|(k, _)| k != key);
        if let Some(v) = value {
            base.push((key.to_owned(), v.to_owned()));
        }
        base
    }

    fn err_for(env: Vec<(String, String)>) -> ConfigError {
        Config::from_vars(env).expect_err("config should be rejected")
    }

    #[test]
    fn good_config_has_defaults() {
        let c = Config::from_vars(good()).unwrap();
        assert_eq!(c.postgres.port, 5432);
        assert_eq!(c.postgres.sslmode, SslMode::Prefer);
        assert_eq!(c.postgres.statement_timeout, Duration::from_secs(1800));
        let LakeLocation::S3(s3) = c.lake.location else {
            panic!("not s3")
        };
        assert_eq!(
            s3.endpoint.unwrap().as_str(),
            "https://eu2.contabostorage.com/"
        );
        assert_eq!(s3.region, "us-east-1");
        assert!(s3.conditional_writes);
        assert_eq!(s3.max_retries, 10);
    }

    #[test]
    fn every_missing_required_variable_is_named() {
        for var in [
            "DJANGO_DB_HOST",
            "DJANGO_DB_NAME",
            "DJANGO_DB_USER",
            "DJANGO_DB_PASSWORD",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
        ] {
            let e = err_for(with(good(), var, None));
            assert!(e.mentions(var), "{var}: {e}");
            assert!(e.to_string().contains(&format!("{var}: is missing")), "{e}");
        }
    }

    #[test]
    fn empty_value_counts_as_missing() {
        let e = err_for(with(good(), "DJANGO_DB_HOST", Some("  ")));
        assert!(e.mentions("DJANGO_DB_HOST"));
    }

    #[test]
    fn all_problems_are_reported_together() {
        let env = with(
            with(good(), "DJANGO_DB_PORT", Some("99999")),
            "DJANGO_DB_SSLMODE",
            Some("verify"),
        );
        let e = err_for(env);
        assert_eq!(e.problems.len(), 2, "{e}");
        assert!(e.mentions("DJANGO_DB_PORT") && e.mentions("DJANGO_DB_SSLMODE"));
    }

    #[test]
    fn unknown_variables_name_the_nearest_known_one() {
        let lines = unknown_variables([
            "DJANGO_DB_PROT",
            "DJANGO_DB_PORT",
            "AWS_SESSION_TOKEN",
            "S3_BUKET",
            "LOG_FORMT",
            "SILVER_SOMETHING_ELSE_ENTIRELY",
            "LAKE_TEST_STORE",
            "PATH",
        ]);
        assert_eq!(lines.len(), 4, "{lines:#?}");
        assert!(
            lines[0].contains("DJANGO_DB_PROT")
                && lines[0].ends_with("did you mean DJANGO_DB_PORT?")
        );
        assert!(
            lines[1].ends_with("did you mean LOG_FORMAT?"),
            "{}",
            lines[1]
        );
        assert!(
            lines[2].ends_with("did you mean S3_BUCKET?"),
            "{}",
            lines[2]
        );
        assert!(
            lines[3].contains("SILVER_SOMETHING_ELSE_ENTIRELY is not a variable")
                && lines[3].contains("README")
        );
    }

    #[test]
    fn bad_port() {
        for bad in ["abc", "0", "65536", "-1"] {
            let e = err_for(with(good(), "DJANGO_DB_PORT", Some(bad)));
            assert!(e.mentions("DJANGO_DB_PORT"), "{bad}");
            assert!(e.to_string().contains("not a port number"), "{e}");
        }
        let ok = Config::from_vars(with(good(), "DJANGO_DB_PORT", Some("6432"))).unwrap();
        assert_eq!(ok.postgres.port, 6432);
    }

    #[test]
    fn sslmodes() {
        for (s, m) in [
            ("disable", SslMode::Disable),
            ("prefer", SslMode::Prefer),
            ("require", SslMode::Require),
            ("verify-full", SslMode::VerifyFull),
            ("VERIFY-FULL", SslMode::VerifyFull),
        ] {
            let c = Config::from_vars(with(good(), "DJANGO_DB_SSLMODE", Some(s))).unwrap();
            assert_eq!(c.postgres.sslmode, m);
        }
        let e = err_for(with(good(), "DJANGO_DB_SSLMODE", Some("allow-everything")));
        assert!(e.to_string().contains("unknown sslmode"), "{e}");
        assert!(e.mentions("DJANGO_DB_SSLMODE"));
    }

    #[test]
    fn missing_root_cert_file() {
        let e = err_for(with(
            good(),
            "DJANGO_DB_SSLROOTCERT",
            Some("/nonexistent/ca.pem"),
        ));
        assert!(e.mentions("DJANGO_DB_SSLROOTCERT"), "{e}");
    }

    #[test]
    fn bad_statement_timeout() {
        let e = err_for(with(good(), "DJANGO_DB_STATEMENT_TIMEOUT", Some("forever")));
        assert!(e.mentions("DJANGO_DB_STATEMENT_TIMEOUT"), "{e}");
        let c = Config::from_vars(with(good(), "DJANGO_DB_STATEMENT_TIMEOUT", Some("2h"))).unwrap();
        assert_eq!(c.postgres.statement_timeout, Duration::from_secs(7200));
    }

    #[test]
    fn endpoint_forms() {
        let s3 = |e: &str| {
            let c = Config::from_vars(with(good(), "AWS_ENDPOINT", Some(e))).unwrap();
            let LakeLocation::S3(s3) = c.lake.location else {
                panic!()
            };
            s3.endpoint.unwrap().to_string()
        };
        assert_eq!(
            s3("eu2.contabostorage.com"),
            "https://eu2.contabostorage.com/"
        );
        assert_eq!(s3("http://127.0.0.1:9000"), "http://127.0.0.1:9000/");
        assert_eq!(
            s3("https://s3.example.com:8443"),
            "https://s3.example.com:8443/"
        );
        for bad in ["https://", "http://:9000", "ftp://host"] {
            let e = err_for(with(good(), "AWS_ENDPOINT", Some(bad)));
            assert!(e.mentions("AWS_ENDPOINT"), "{bad}: {e}");
        }
        assert!(
            err_for(with(good(), "AWS_ENDPOINT", Some("https://")))
                .to_string()
                .contains("no host")
        );
    }

    #[test]
    fn bucket_and_lake_url_are_exclusive() {
        let both = with(good(), "LAKE_URL", Some("file:///tmp/lake"));
        let e = err_for(both);
        assert!(
            e.mentions("S3_BUCKET/LAKE_URL") && e.to_string().contains("both are set"),
            "{e}"
        );
        let neither = with(good(), "S3_BUCKET", None);
        let e = err_for(neither);
        assert!(
            e.mentions("S3_BUCKET/LAKE_URL") && e.to_string().contains("neither is set"),
            "{e}"
        );
    }

    #[test]
    fn lake_urls() {
        let lake = |u: &str| LakeConfig::from_vars(vars(&[("LAKE_URL", u)]));
        assert_eq!(
            lake("file:///var/lib/lake").unwrap(),
            LakeConfig::local("/var/lib/lake")
        );
        assert_eq!(lake("./lake").unwrap(), LakeConfig::local("./lake"));
        assert_eq!(lake("memory://").unwrap().location, LakeLocation::Memory);
        assert!(lake("gs://bucket").unwrap_err().mentions("LAKE_URL"));
        for typo in ["s3:/bucket", "s3:bucket", "file:/tmp/lake"] {
            let e = lake(typo).unwrap_err();
            assert!(
                e.mentions("LAKE_URL") && e.to_string().contains("missing"),
                "{typo}: {e}"
            );
        }
        // An s3 URL needs credentials like S3_BUCKET does, and keeps its prefix.
        let e = lake("s3://robson-lake/deep").unwrap_err();
        assert!(e.mentions("AWS_ACCESS_KEY_ID"), "{e}");
        let c = LakeConfig::from_vars(with(
            with(good(), "S3_BUCKET", None),
            "LAKE_URL",
            Some("s3://robson-lake/deep/"),
        ))
        .unwrap();
        let LakeLocation::S3(s3) = c.location else {
            panic!()
        };
        assert_eq!(
            (s3.bucket.as_str(), s3.prefix.as_str()),
            ("robson-lake", "deep")
        );
    }

    #[test]
    fn bad_bucket_name() {
        let e = err_for(with(good(), "S3_BUCKET", Some("Robson_Lake")));
        assert!(e.mentions("S3_BUCKET"), "{e}");
    }

    #[test]
    fn s3_tuning_variables() {
        let env = with(
            with(
                with(good(), "S3_MAX_RETRIES", Some("2")),
                "S3_TIMEOUT_SECS",
                Some("5"),
            ),
            "S3_CONDITIONAL_WRITES",
            Some("disabled"),
        );
        let LakeLocation::S3(s3) = Config::from_vars(env).unwrap().lake.location else {
            panic!()
        };
        assert_eq!(
            (s3.max_retries, s3.timeout, s3.conditional_writes),
            (2, Duration::from_secs(5), false)
        );
        for (var, bad) in [
            ("S3_MAX_RETRIES", "many"),
            ("S3_TIMEOUT_SECS", "0"),
            ("S3_CONDITIONAL_WRITES", "maybe"),
        ] {
            assert!(err_for(with(good(), var, Some(bad))).mentions(var), "{var}");
        }
    }

    #[test]
    fn secrets_never_print() {
        let c = Config::from_vars(good()).unwrap();
        for text in [
            format!("{c:?}"),
            format!("{c}"),
            format!("{:#?}", c.lake),
            format!("{}", c.postgres),
        ] {
            assert!(!text.contains("hunter2-very-secret"), "{text}");
            assert!(!text.contains("s3-secret-key-value"), "{text}");
        }
        assert!(format!("{c:?}").contains("Secret(***)"));
        // Errors carry no secret even when the secret's neighbours are wrong.
        let e = err_for(with(good(), "DJANGO_DB_PORT", Some("x")));
        assert!(!format!("{e:?}{e}").contains("hunter2"));
        assert_eq!(c.postgres.password.expose(), "hunter2-very-secret");
    }
}

#[cfg(test)]
mod documentation {
    /// The README's configuration table lists exactly [`super::ENV_VARS`], in order:
    /// it is the operators' reference, and the deploy tests check manifests against it.
    #[test]
    fn readme_configuration_table_matches_env_vars() {
        let readme = include_str!("../../README.md");
        let section = readme
            .split("## Configuration")
            .nth(1)
            .and_then(|s| s.split("\n## ").next())
            .expect("README has a Configuration section");
        let names: Vec<&str> = section
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split('`').next())
            .collect();
        assert_eq!(names, super::ENV_VARS);
    }

    /// A log line carrying the whole configuration shows no secret.
    #[test]
    fn secrets_never_reach_a_log_line() {
        use std::io::Write;
        use std::sync::{Arc, Mutex};

        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(move || writer.clone())
            .finish();
        let env: Vec<(String, String)> = [
            ("DJANGO_DB_HOST", "db"),
            ("DJANGO_DB_NAME", "robson"),
            ("DJANGO_DB_USER", "reader"),
            ("DJANGO_DB_PASSWORD", "pg-secret-123"),
            ("AWS_ACCESS_KEY_ID", "AK"),
            ("AWS_SECRET_ACCESS_KEY", "s3-secret-456"),
            ("S3_BUCKET", "lake"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let config = super::Config::from_vars(env).unwrap();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(config = ?config, shown = %config, password = %config.postgres.password, "Loaded");
        });
        let logged = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert!(logged.contains("Loaded"), "{logged}");
        assert!(
            !logged.contains("pg-secret-123") && !logged.contains("s3-secret-456"),
            "{logged}"
        );
    }
}
