//! Logging set-up and the exit-code contract shared by every binary.
//!
//! Logs go to stderr: human-readable on a terminal, JSON lines otherwise (what the
//! cluster's log pipeline parses). `LOG_FORMAT=json|text` overrides the guess and
//! `RUST_LOG` the level. Exit codes are SPEC §8's, decided in one place
//! ([`exit_status_of`]) from the error chain, so every binary maps failures the same.

use std::io::IsTerminal;
use std::process::ExitCode;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

use crate::config::ConfigError;
use crate::contract::ContractError;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Compact human-readable lines (with colours on a terminal).
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// `LOG_FORMAT` if set to `json` or `text`, else text on a terminal and JSON otherwise.
    pub fn from_env() -> Self {
        match std::env::var("LOG_FORMAT").map(|v| v.to_ascii_lowercase()) {
            Ok(v) if v == "json" => Self::Json,
            Ok(v) if v == "text" => Self::Text,
            _ if std::io::stderr().is_terminal() => Self::Text,
            _ => Self::Json,
        }
    }
}

/// Checks what the environment says before a job reads its configuration:
/// refuses a `LOG_FORMAT` that is neither `json` nor `text` (a typo would
/// otherwise silently pick the automatic format), and warns about every variable
/// with one of the project's prefixes that no job reads, naming the nearest
/// known one. Call it after [`init`], so the warnings go through the log.
pub fn check_environment() -> Result<(), Classified> {
    let names = std::env::vars_os().filter_map(|(k, _)| k.into_string().ok());
    for line in crate::config::unknown_variables(names) {
        tracing::warn!("{line}");
    }
    check_log_format()?;
    busy_is_success().map(|_| ())
}

/// `LAKE_BUSY_OK=true` (the CronJobs set it): a run that finds its work held
/// by another live run exits 0 instead of 4. For a scheduled trigger that is
/// the right answer: the holder does the work, and the next schedule catches
/// up; a retry with back-off would only fail the Job after its backoffLimit
/// while a long manual run holds the batch. The metrics (`exit_code` 4), the
/// warning line and bronze's run report (`busy`) still say what happened.
fn busy_is_success() -> Result<bool, Classified> {
    match std::env::var("LAKE_BUSY_OK").map(|v| v.to_ascii_lowercase()) {
        Err(_) => Ok(false),
        Ok(v) if matches!(v.as_str(), "true" | "1") => Ok(true),
        Ok(v) if matches!(v.as_str(), "false" | "0" | "") => Ok(false),
        Ok(v) => Err(Classified::new(
            ExitStatus::Usage,
            format!("LAKE_BUSY_OK={v:?} is neither true nor false: set one of them, or unset it"),
        )),
    }
}

fn check_log_format() -> Result<(), Classified> {
    match std::env::var("LOG_FORMAT") {
        Ok(v) if !matches!(v.to_ascii_lowercase().as_str(), "json" | "text") => {
            Err(Classified::new(
                ExitStatus::Usage,
                format!(
                    "LOG_FORMAT={v:?} is neither json nor text: set one of them, or unset it for the automatic choice"
                ),
            ))
        }
        _ => Ok(()),
    }
}

/// Installs the global subscriber. Safe to call twice (the second call is a no-op),
/// so tests can call it freely.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(StderrAboveBars)
        .with_span_events(FmtSpan::NONE);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder
            .compact()
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(false)
            .try_init(),
    };
}

/// Peak resident set size of this process (Linux `VmHWM`), for run reports and
/// the memory budget of SPEC §10.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Prints a run's summary on stdout: the human text on a terminal or with text
/// logs; with JSON logs one JSON line (`message: "Run summary"`, the report as
/// a nested object), so a pod's merged streams stay pure JSON. A closed stdout
/// (`| head`) is not an error: the summary is also in the run report.
pub fn emit_summary(job: &str, text: &str, report: &impl serde::Serialize) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = match LogFormat::from_env() {
        LogFormat::Text => out.write_all(text.as_bytes()),
        LogFormat::Json => {
            let line = serde_json::json!({
                "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                "level": "INFO",
                "message": "Run summary",
                "job": job,
                "report": report,
            });
            writeln!(out, "{line}")
        }
    };
    let _ = out.flush();
}

/// Every progress bar of the process, drawn on stderr. Log lines go through
/// [`StderrAboveBars`], which clears the bars, writes the line and redraws
/// them, so a log line never lands on the bar's line.
static BARS: std::sync::LazyLock<indicatif::MultiProgress> =
    std::sync::LazyLock::new(indicatif::MultiProgress::new);

/// The log writer: stderr, one whole formatted event per write, with the
/// progress bars suspended around it.
#[derive(Debug, Clone, Copy, Default)]
pub struct StderrAboveBars;

impl std::io::Write for StderrAboveBars {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        BARS.suspend(|| std::io::stderr().lock().write_all(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for StderrAboveBars {
    type Writer = Self;

    fn make_writer(&'a self) -> Self::Writer {
        *self
    }
}

/// Progress of a long step on a terminal: `label: 1,234,567 rows (105,000/s, 12s)`,
/// redrawn five times a second; hidden with JSON logs or when stderr is not a
/// terminal (a log pipeline gets the run's log lines and summary instead).
#[derive(Debug, Clone)]
pub struct Progress(indicatif::ProgressBar);

impl Progress {
    /// A spinner counting `unit` for `label`, shown only on a terminal with text logs.
    pub fn new(label: &str, unit: &str) -> Self {
        if LogFormat::from_env() != LogFormat::Text || !std::io::stderr().is_terminal() {
            return Self::hidden();
        }
        // Cleared when the last handle drops, also on an error path.
        let bar = BARS.add(
            indicatif::ProgressBar::new_spinner().with_finish(indicatif::ProgressFinish::AndClear),
        );
        let progress = Self(bar);
        progress.stage(label, unit);
        progress
    }

    /// A progress that shows nothing (tests, library callers).
    pub fn hidden() -> Self {
        Self(indicatif::ProgressBar::hidden())
    }

    /// Starts counting another kind of thing from zero (silver: events folded,
    /// then partitions written).
    pub fn stage(&self, label: &str, unit: &str) {
        let template = format!("{{spinner}} {label}: {{count}} {unit} ({{rate}}, {{elapsed}})");
        if let Ok(style) = indicatif::ProgressStyle::with_template(&template) {
            self.0.set_style(
                style
                    .with_key(
                        "count",
                        |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                            let _ = write!(w, "{}", indicatif::HumanCount(s.pos()));
                        },
                    )
                    .with_key(
                        "rate",
                        |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                            let _ = write!(
                                w,
                                "{}/s",
                                indicatif::HumanCount(s.per_sec().round() as u64)
                            );
                        },
                    ),
            );
        }
        self.0.reset();
        self.0
            .enable_steady_tick(std::time::Duration::from_millis(200));
    }

    /// Sets the count.
    pub fn set(&self, n: u64) {
        self.0.set_position(n);
    }

    /// Adds to the count.
    pub fn add(&self, n: u64) {
        self.0.inc(n);
    }

    /// Removes the bar from the terminal.
    pub fn finish(&self) {
        self.0.finish_and_clear();
    }
}

/// The process exit statuses of SPEC §8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitStatus {
    /// Success, including "nothing new".
    Success = 0,
    /// A runtime failure (unreachable service, I/O error, fail-closed safety stop).
    Failure = 1,
    /// Bad configuration or arguments, or a source schema that broke the contract.
    Usage = 2,
    /// A data-quality threshold was breached (the report was still written).
    Quality = 3,
    /// Another run holds the batch; this run wrote nothing.
    Busy = 4,
}

impl From<ExitStatus> for ExitCode {
    fn from(s: ExitStatus) -> Self {
        ExitCode::from(s as u8)
    }
}

/// An error that knows its exit status. Jobs wrap errors that are not
/// [`Failure`](ExitStatus::Failure) in it; [`exit_status_of`] finds it anywhere
/// in the chain, under any amount of `anyhow` context.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Classified {
    /// The exit status this error maps to.
    pub status: ExitStatus,
    /// The one-line explanation.
    pub message: String,
}

impl Classified {
    /// A classified error.
    pub fn new(status: ExitStatus, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

/// The exit status for an error: the first [`Classified`], [`ConfigError`] or
/// [`ContractError`] (schema drift) in its
/// chain decides; anything else is a runtime failure.
pub fn exit_status_of(err: &(dyn std::error::Error + 'static)) -> ExitStatus {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(c) = e.downcast_ref::<Classified>() {
            return c.status;
        }
        if e.downcast_ref::<ConfigError>().is_some() || e.downcast_ref::<ContractError>().is_some()
        {
            return ExitStatus::Usage;
        }
        // A run that lost its claim stopped writing: another run holds the work
        // (SPEC §5.4), whichever write found out first.
        if e.is::<crate::commit::fence::Fenced>() {
            return ExitStatus::Busy;
        }
        cur = e.source();
    }
    ExitStatus::Failure
}

/// An error and its causes on one line, each cause once: many errors (the
/// parquet writer's, object_store's, tokio-postgres's) already print their
/// source in their own message, so `{:#}` would repeat it at every level.
///
/// An object store's answer is shortened to its S3 error code and message (the
/// XML body, request and host ids go), and the line ends with what to check
/// for that code: an operator fixes `S3_BUCKET` or the credentials from the
/// one line, without reading 2 KB of XML five times.
pub fn error_text(err: &anyhow::Error) -> String {
    let mut out = String::new();
    let mut hint = None;
    for e in err.chain() {
        hint = hint.or_else(|| postgres_hint(e));
        let msg = e.to_string();
        let (msg, h) = tidy_store_answer(&msg);
        hint = hint.or(h);
        if msg.is_empty() || out.contains(msg.as_str()) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&msg);
    }
    if let Some(h) = hint
        && !out.contains(h)
    {
        out.push_str(" (");
        out.push_str(h);
        out.push(')');
    }
    out
}

/// What to do about a PostgreSQL error, by its SQLSTATE (the server's message
/// may be translated; the code is not).
fn postgres_hint(e: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    use tokio_postgres::error::SqlState;
    let pg = e.downcast_ref::<tokio_postgres::Error>()?;
    if pg.is_closed() {
        // The server's reason went to the connection, not to the query.
        return Some(
            "the connection to PostgreSQL closed: the network or a proxy dropped it, the server \
             restarted or failed over, a standby ended the session to replay WAL (set \
             hot_standby_feedback = on there), an administrator ended it, or it sat idle in its \
             transaction longer than DJANGO_DB_STATEMENT_TIMEOUT (which bounds that too); the run \
             report says what was committed, the Job retries the rest",
        );
    }
    let code = pg.code()?;
    if *code == SqlState::QUERY_CANCELED {
        Some(
            "a statement was cancelled, by DJANGO_DB_STATEMENT_TIMEOUT (raise it, e.g. to 2h for the \
             first export of a large table) or by an administrator; the Job retries",
        )
    } else if *code == SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT {
        Some(
            "the server ended the session after it sat idle in its transaction longer than \
             DJANGO_DB_STATEMENT_TIMEOUT (which bounds that too): raise it; the Job retries",
        )
    } else if *code == SqlState::T_R_SERIALIZATION_FAILURE {
        Some(
            "a standby cancelled the export's snapshot to replay WAL: set hot_standby_feedback = on on \
             the standby or raise its max_standby_streaming_delay, or read from the primary; the Job retries",
        )
    } else if [
        SqlState::ADMIN_SHUTDOWN,
        SqlState::CRASH_SHUTDOWN,
        SqlState::CANNOT_CONNECT_NOW,
    ]
    .contains(code)
    {
        Some(
            "the server shut down or restarted, or an administrator ended the session; the run \
             report says what was committed, the Job retries the rest",
        )
    } else {
        None
    }
}

/// Replaces an S3 XML error body in `msg` by `S3 error <Code>: <Message>` and
/// names what to check for that code (or for a store that cannot be reached).
fn tidy_store_answer(msg: &str) -> (String, Option<&'static str>) {
    let tag = |body: &str, name: &str| -> Option<String> {
        let open = format!("<{name}>");
        let start = body.find(&open)? + open.len();
        let len = body[start..].find(&format!("</{name}>"))?;
        Some(body[start..start + len].to_owned())
    };
    let (text, code) = match msg.find("<?xml").or_else(|| msg.find("<Error>")) {
        Some(at) => {
            let body = &msg[at..];
            let code = tag(body, "Code");
            let head = msg[..at].trim_end().trim_end_matches(':');
            let text = match (&code, tag(body, "Message")) {
                (Some(c), Some(m)) => format!("{head}: S3 error {c}: {m}"),
                (Some(c), None) => format!("{head}: S3 error {c}"),
                _ => head.to_owned(),
            };
            (text, code)
        }
        None => (msg.to_owned(), None),
    };
    let hint = match code.as_deref() {
        Some("NoSuchBucket") => Some("check S3_BUCKET (or LAKE_URL): the bucket must exist"),
        Some(
            "InvalidAccessKeyId"
            | "SignatureDoesNotMatch"
            | "AccessDenied"
            | "InvalidToken"
            | "ExpiredToken",
        ) => Some(
            "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, and that the key may use the bucket",
        ),
        // Not PreconditionFailed: that is how a store that does support
        // conditional writes answers a lost race.
        Some("NotImplemented") => Some(
            "if the store does not support conditional writes, set S3_CONDITIONAL_WRITES=disabled",
        ),
        Some(
            "PermanentRedirect"
            | "AuthorizationHeaderMalformed"
            | "IllegalLocationConstraintException",
        ) => Some("check AWS_REGION and AWS_ENDPOINT"),
        // Only object_store's own errors: a PostgreSQL "Connection refused"
        // has its own hint (DJANGO_DB_HOST).
        _ if msg.contains("S3 error")
            && (msg.contains("error sending request")
                || msg.contains("Connection refused")
                || msg.contains("dns error")
                || msg.contains("connection error")) =>
        {
            Some("check AWS_ENDPOINT: the store did not answer")
        }
        _ => None,
    };
    (text, hint)
}

/// Ends a binary: logs the error chain on one line ([`error_text`]) and returns the exit
/// code of SPEC §8. The error is also printed to stderr plainly, so an operator
/// reading `kubectl logs` sees it even with JSON logs.
pub fn finish(result: Result<ExitStatus, anyhow::Error>) -> ExitCode {
    match result {
        Ok(status) => status.into(),
        Err(err) => {
            let status = exit_status_of(err.as_ref());
            let text = error_text(&err);
            if status == ExitStatus::Busy && busy_is_success().unwrap_or(false) {
                tracing::warn!(
                    exit_code = 0,
                    "{text} (LAKE_BUSY_OK: the run holding it does the work; exit 0)"
                );
                return ExitCode::SUCCESS;
            }
            tracing::error!(exit_code = status as u8, "{text}");
            if !tracing::enabled!(tracing::Level::ERROR) {
                eprintln!("error: {text}");
            }
            status.into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn an_s3_answer_is_its_code_and_what_to_check() {
        let raw = "object store error on bronze/events/_manifests: Generic S3 error: Error performing list request: \
                   Server returned non-2xx status code: 404 Not Found: <?xml version=\"1.0\" encoding=\"utf-8\"?>\n\
                   <Error><Code>NoSuchBucket</Code><Message>The specified bucket does not exist</Message>\
                   <BucketName>b</BucketName><RequestId>r</RequestId><HostId>h</HostId></Error>";
        let text = error_text(&anyhow::anyhow!(raw.to_owned()));
        assert!(!text.contains('<'), "{text}");
        assert!(
            text.contains(
                "404 Not Found: S3 error NoSuchBucket: The specified bucket does not exist"
            ),
            "{text}"
        );
        assert!(
            text.ends_with("(check S3_BUCKET (or LAKE_URL): the bucket must exist)"),
            "{text}"
        );
        let denied = error_text(&anyhow::anyhow!(
            "put x: 403 Forbidden: <Error><Code>SignatureDoesNotMatch</Code><Message>no</Message></Error>"
        ));
        assert!(
            denied.contains("S3 error SignatureDoesNotMatch")
                && denied.contains("check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
            "{denied}"
        );
        let pg = error_text(&anyhow::anyhow!(
            "cannot connect to PostgreSQL at db:5432: Connection refused (os error 111)"
        ));
        assert!(!pg.contains("AWS_ENDPOINT"), "{pg}");
        let raced = error_text(&anyhow::anyhow!(
            "put m: 412: <Error><Code>PreconditionFailed</Code><Message>At least one of the pre-conditions you specified did not hold</Message></Error>"
        ));
        assert!(!raced.contains("S3_CONDITIONAL_WRITES"), "{raced}");
        let plain = error_text(&anyhow::anyhow!("no store problem here"));
        assert_eq!(plain, "no store problem here");
    }

    #[test]
    fn each_cause_is_printed_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("cannot write x: {0}")]
        struct Outer(#[source] std::io::Error);
        let err =
            anyhow::Error::new(Outer(std::io::Error::other("disk full"))).context("publishing");
        assert_eq!(error_text(&err), "publishing: cannot write x: disk full");
        assert_eq!(
            format!("{err:#}"),
            "publishing: cannot write x: disk full: disk full"
        );
    }

    #[test]
    fn a_fenced_write_is_busy() {
        let fenced = object_store::Error::Generic {
            store: "fence",
            source: Box::new(crate::commit::fence::Fenced("lease lost".into())),
        };
        let err = anyhow::Error::new(fenced).context("writing a partition");
        assert_eq!(exit_status_of(err.as_ref()), ExitStatus::Busy);
    }

    #[test]
    fn statuses_are_found_under_context() {
        let busy = anyhow::Error::new(Classified::new(ExitStatus::Busy, "held"))
            .context("running batch 7");
        assert_eq!(exit_status_of(busy.as_ref()), ExitStatus::Busy);
        let cfg: anyhow::Result<()> = Err(crate::config::Config::from_vars(Vec::new())
            .unwrap_err()
            .into());
        let cfg = cfg.context("loading configuration").unwrap_err();
        assert_eq!(exit_status_of(cfg.as_ref()), ExitStatus::Usage);
        let other = anyhow::anyhow!("disk on fire");
        assert_eq!(exit_status_of(other.as_ref()), ExitStatus::Failure);
        assert_eq!(ExitCode::from(ExitStatus::Quality), ExitCode::from(3));
    }
}
