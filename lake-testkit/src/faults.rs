//! A fault-injecting HTTP proxy in front of the S3 endpoint.
//!
//! The commit protocol is only as good as its behaviour when the object store
//! misbehaves, and the interesting failures cannot be produced by a healthy
//! endpoint: a write that took effect but whose answer was lost, a `503
//! SlowDown`, a connection reset, an answer slower than the request timeout, a
//! body cut short, a store that ignores conditional headers. [`FaultProxy`]
//! forwards every request to a real [`TestS3`](crate::TestS3) and applies the
//! [`Rule`]s a test gives it, targeted by S3 operation ([`S3Op`]) and key, and
//! keeps a log of every request with the fault it got.
//!
//! Decisions are deterministic: a rule fires on its n-th matching request, on
//! every one, or with a probability drawn from a generator seeded by the test,
//! in the order the requests arrive. The proxy runs on a thread and runtime of
//! its own, so it keeps serving while a test blocks on a child process (a job
//! binary) or runs on a single-threaded runtime; dropping it stops the thread.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use lake_testkit::{Fault, FaultProxy, Rule, S3Op, TestS3};
//!
//! let s3 = TestS3::start().await?;
//! let bucket = s3.new_bucket().await?;
//! let proxy = FaultProxy::start(&s3, 42)?;
//! // The first manifest write takes effect, but its answer never arrives.
//! proxy.add_rule(Rule::new(Fault::LoseResponse).op(S3Op::PutObject).key_contains("/_manifests/").nth(1));
//! let env = proxy.env(&s3, &bucket); // the job under test talks to the proxy
//! # let _ = env;
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::TestS3;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ProxyBody = BoxBody<Bytes, BoxError>;

/// The S3 operation of a request, from its method, query and headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum S3Op {
    /// `GET /bucket/key`.
    GetObject,
    /// `HEAD /bucket/key`.
    HeadObject,
    /// `PUT /bucket/key` with a body (plain and conditional writes).
    PutObject,
    /// `PUT /bucket/key` with `x-amz-copy-source`.
    CopyObject,
    /// `DELETE /bucket/key`.
    DeleteObject,
    /// `POST /bucket?delete` (bulk delete).
    DeleteObjects,
    /// `POST /bucket/key?uploads`.
    CreateMultipartUpload,
    /// `PUT /bucket/key?partNumber=…&uploadId=…`.
    UploadPart,
    /// `POST /bucket/key?uploadId=…`.
    CompleteMultipartUpload,
    /// `DELETE /bucket/key?uploadId=…`.
    AbortMultipartUpload,
    /// `GET /bucket?list-type=2…` (or any listing of a bucket).
    ListObjects,
    /// `GET /bucket?uploads`.
    ListMultipartUploads,
    /// Anything else (bucket creation, `GET /`).
    Other,
}

impl S3Op {
    /// Classifies a path-style request.
    pub fn classify(method: &Method, path: &str, query: &str, headers: &HeaderMap) -> Self {
        let has = |name: &str| {
            query
                .split('&')
                .any(|kv| kv.split('=').next() == Some(name))
        };
        // Path-style: `/bucket` addresses the bucket, `/bucket/key…` an object.
        let is_object = path.trim_start_matches('/').contains('/');
        match (method.as_str(), is_object) {
            ("GET", true) => Self::GetObject,
            ("HEAD", true) => Self::HeadObject,
            ("PUT", true) if has("uploadId") => Self::UploadPart,
            ("PUT", true) if headers.contains_key("x-amz-copy-source") => Self::CopyObject,
            ("PUT", true) => Self::PutObject,
            ("POST", true) if has("uploads") => Self::CreateMultipartUpload,
            ("POST", true) if has("uploadId") => Self::CompleteMultipartUpload,
            ("DELETE", true) if has("uploadId") => Self::AbortMultipartUpload,
            ("DELETE", true) => Self::DeleteObject,
            ("POST", false) if has("delete") => Self::DeleteObjects,
            ("GET", false) if has("uploads") => Self::ListMultipartUploads,
            ("GET", false) if !path.trim_matches('/').is_empty() => Self::ListObjects,
            _ => Self::Other,
        }
    }
}

/// What the proxy does to a request a rule matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Answers with this status and an S3 error body (`500` → `InternalError`);
    /// the request is not forwarded, so it has no effect.
    Status(u16),
    /// Answers `503 SlowDown`, as S3 does when throttling; not forwarded.
    SlowDown,
    /// Closes the connection before forwarding: the request has no effect and
    /// the client sees the connection drop.
    Reset,
    /// Forwards the request (it takes effect), then closes the connection
    /// without answering: the client cannot know that it succeeded.
    LoseResponse,
    /// Waits this long, then forwards and answers: past the client's request
    /// timeout the request takes effect although the client gave up on it.
    Delay(Duration),
    /// Forwards, then sends the answer's headers and half of its body, then
    /// closes the connection.
    TruncateBody,
    /// Removes `If-None-Match` and `If-Match` before forwarding: a store that
    /// ignores conditional writes (every write succeeds and overwrites).
    StripConditionalHeaders,
}

impl Fault {
    /// A short name for logs and counts (`lose-response`, `status-500`, …).
    pub fn name(&self) -> String {
        match self {
            Self::Status(code) => format!("status-{code}"),
            Self::SlowDown => "slow-down".into(),
            Self::Reset => "reset".into(),
            Self::LoseResponse => "lose-response".into(),
            Self::Delay(d) => format!("delay-{}ms", d.as_millis()),
            Self::TruncateBody => "truncate-body".into(),
            Self::StripConditionalHeaders => "strip-conditional".into(),
        }
    }
}

/// When a rule fires among the requests it matches.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Trigger {
    Always,
    /// The n-th matching request (1-based).
    Nth(u64),
    /// Each matching request with this probability (seeded generator).
    Probability(f64),
}

/// A fault and the requests it applies to. All conditions must hold; a rule
/// with none matches every request.
#[derive(Debug, Clone)]
pub struct Rule {
    fault: Fault,
    ops: Vec<S3Op>,
    method: Option<Method>,
    key_contains: Option<String>,
    trigger: Trigger,
    /// How many more times the rule may fire (`None`: unlimited).
    remaining: Option<u64>,
    /// Matching requests seen so far.
    matched: u64,
}

impl Rule {
    /// A rule that applies `fault` to every request (narrow it with the builders).
    pub fn new(fault: Fault) -> Self {
        Self {
            fault,
            ops: Vec::new(),
            method: None,
            key_contains: None,
            trigger: Trigger::Always,
            remaining: None,
            matched: 0,
        }
    }

    /// Only requests of this operation (may be given several times: any of them).
    pub fn op(mut self, op: S3Op) -> Self {
        self.ops.push(op);
        self
    }

    /// Only requests with this HTTP method.
    pub fn method(mut self, method: Method) -> Self {
        self.method = Some(method);
        self
    }

    /// Only requests whose path (`/bucket/key`) contains `fragment`, such as
    /// `"/_manifests/"`.
    pub fn key_contains(mut self, fragment: &str) -> Self {
        self.key_contains = Some(fragment.to_owned());
        self
    }

    /// Fires on the n-th matching request only (1-based).
    pub fn nth(mut self, n: u64) -> Self {
        self.trigger = Trigger::Nth(n.max(1));
        self
    }

    /// Fires on each matching request with probability `p` (0.0–1.0), drawn
    /// from the proxy's seeded generator.
    pub fn probability(mut self, p: f64) -> Self {
        self.trigger = Trigger::Probability(p.clamp(0.0, 1.0));
        self
    }

    /// Fires at most `n` times.
    pub fn times(mut self, n: u64) -> Self {
        self.remaining = Some(n);
        self
    }

    fn matches(&self, req: &RequestInfo) -> bool {
        (self.ops.is_empty() || self.ops.contains(&req.op))
            && self.method.as_ref().is_none_or(|m| *m == req.method)
            && self
                .key_contains
                .as_deref()
                .is_none_or(|f| req.path.contains(f))
    }
}

/// One request as the proxy saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedRequest {
    /// Arrival order, from 1.
    pub seq: u64,
    /// The S3 operation.
    pub op: S3Op,
    /// HTTP method.
    pub method: String,
    /// Path (`/bucket/key`), without the query.
    pub path: String,
    /// Query string, possibly empty.
    pub query: String,
    /// The fault applied, if any.
    pub fault: Option<Fault>,
    /// The status sent to the client (`None`: the connection was closed
    /// without an answer, or the answer was cut short).
    pub status: Option<u16>,
    /// Bytes of the response body forwarded whole (0 for injected answers): how
    /// much a listing or a read cost, which the request count alone hides.
    pub response_bytes: u64,
    /// When it was forwarded to the endpoint, and how long the endpoint took
    /// to answer it whole (`None` for injected answers; an injected delay is
    /// not counted): a benchmark tells the time its job spent waiting on the
    /// store from its own ([`endpoint_time`]).
    pub upstream: Option<(std::time::Instant, Duration)>,
}

/// The time during which at least one of `log`'s requests was waiting on the
/// endpoint (overlapping requests count once).
pub fn endpoint_time(log: &[LoggedRequest]) -> Duration {
    let mut spans: Vec<_> = log
        .iter()
        .filter_map(|r| r.upstream)
        .map(|(at, took)| (at, at + took))
        .collect();
    spans.sort();
    let mut total = Duration::ZERO;
    let mut open: Option<(std::time::Instant, std::time::Instant)> = None;
    for (start, end) in spans {
        open = match open {
            Some((s, e)) if start <= e => Some((s, e.max(end))),
            Some((s, e)) => {
                total += e - s;
                Some((start, end))
            }
            None => Some((start, end)),
        };
    }
    total + open.map_or(Duration::ZERO, |(s, e)| e - s)
}

impl fmt::Display for LoggedRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "#{} {:?} {} {}",
            self.seq, self.op, self.method, self.path
        )?;
        if !self.query.is_empty() {
            write!(f, "?{}", self.query)?;
        }
        match self.status {
            Some(s) => write!(f, " -> {s}")?,
            None => write!(f, " -> (no answer)")?,
        }
        if let Some(fault) = &self.fault {
            write!(f, " [{}]", fault.name())?;
        }
        Ok(())
    }
}

/// What the decision needs to know of a request.
#[derive(Debug, Clone)]
struct RequestInfo {
    op: S3Op,
    method: Method,
    path: String,
}

/// The rules, the generator and the log, shared with the serving thread.
#[derive(Debug)]
struct Plan {
    rules: Vec<Rule>,
    rng: SplitMix64,
    log: Vec<LoggedRequest>,
}

impl Plan {
    /// Records the request and picks its fault: the first rule that matches and
    /// fires wins. Every probability rule that matches draws a number, fired or
    /// not, so a rule's decisions depend only on the seed and the request order.
    fn decide(&mut self, req: &RequestInfo, query: &str) -> (u64, Option<Fault>) {
        let mut chosen = None;
        for rule in &mut self.rules {
            if !rule.matches(req) {
                continue;
            }
            rule.matched += 1;
            let fires = match rule.trigger {
                Trigger::Always => true,
                Trigger::Nth(n) => rule.matched == n,
                Trigger::Probability(p) => self.rng.next_f64() < p,
            };
            let allowed = rule.remaining.is_none_or(|n| n > 0);
            if fires && allowed && chosen.is_none() {
                if let Some(n) = rule.remaining.as_mut() {
                    *n -= 1;
                }
                chosen = Some(rule.fault);
            }
        }
        let seq = self.log.len() as u64 + 1;
        self.log.push(LoggedRequest {
            seq,
            op: req.op,
            method: req.method.to_string(),
            path: req.path.clone(),
            query: query.to_owned(),
            fault: chosen,
            status: None,
            response_bytes: 0,
            upstream: None,
        });
        (seq, chosen)
    }

    fn answered(
        &mut self,
        seq: u64,
        status: u16,
        response_bytes: u64,
        upstream: Option<(std::time::Instant, Duration)>,
    ) {
        if let Some(entry) = seq
            .checked_sub(1)
            .and_then(|i| self.log.get_mut(i as usize))
        {
            entry.status = Some(status);
            entry.response_bytes = response_bytes;
            entry.upstream = upstream;
        }
    }
}

/// SplitMix64: a tiny, well-known deterministic generator (no `rand` needed).
#[derive(Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Debug)]
struct Shared {
    plan: Mutex<Plan>,
    upstream: SocketAddr,
}

impl Shared {
    fn plan(&self) -> MutexGuard<'_, Plan> {
        // A test thread that panicked while holding the lock leaves a plan that
        // is still consistent (each update is a single push or assignment).
        self.plan.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A fault-injecting proxy on a free `127.0.0.1` port, forwarding to a
/// [`TestS3`]. Drop stops it.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts a proxy in front of `upstream`, with no rules yet (every request
    /// passes through) and the generator seeded with `seed`.
    pub fn start(upstream: &TestS3, seed: u64) -> Result<Self> {
        let upstream: SocketAddr = ([127, 0, 0, 1], upstream.port()).into();
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .context("binding the fault proxy to a free port")?;
        listener
            .set_nonblocking(true)
            .context("making the fault proxy's socket non-blocking")?;
        let addr = listener.local_addr().context("the fault proxy's address")?;
        let shared = Arc::new(Shared {
            plan: Mutex::new(Plan {
                rules: Vec::new(),
                rng: SplitMix64(seed),
                log: Vec::new(),
            }),
            upstream,
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fault-proxy")
            .enable_all()
            .build()
            .context("building the fault proxy's runtime")?;
        let (tx, rx) = oneshot::channel();
        let serving = shared.clone();
        let thread = std::thread::Builder::new()
            .name("fault-proxy".into())
            .spawn(move || runtime.block_on(serve(listener, serving, rx)))
            .context("spawning the fault proxy thread")?;
        Ok(Self {
            addr,
            shared,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    /// The proxy's endpoint URL, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// [`TestS3::env`] for `bucket` with `AWS_ENDPOINT` pointing at the proxy.
    pub fn env(&self, s3: &TestS3, bucket: &str) -> Vec<(String, String)> {
        let mut env = s3.env(bucket);
        for (k, v) in &mut env {
            if k == "AWS_ENDPOINT" {
                *v = self.endpoint();
            }
        }
        env
    }

    /// Adds a rule after the existing ones (the first rule that fires wins).
    pub fn add_rule(&self, rule: Rule) {
        self.shared.plan().rules.push(rule);
    }

    /// Removes every rule: requests pass through again.
    pub fn clear_rules(&self) {
        self.shared.plan().rules.clear();
    }

    /// Every request so far, in arrival order.
    pub fn log(&self) -> Vec<LoggedRequest> {
        self.shared.plan().log.clone()
    }

    /// Forgets the log (rules and their counts stay).
    pub fn clear_log(&self) {
        self.shared.plan().log.clear();
    }

    /// How many faults of each kind were injected, by [`Fault::name`].
    pub fn fault_counts(&self) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        for entry in &self.shared.plan().log {
            if let Some(f) = entry.fault {
                *counts.entry(f.name()).or_insert(0) += 1;
            }
        }
        counts
    }

    /// The log as text, one request a line (for assertion messages).
    pub fn log_text(&self) -> String {
        self.log()
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    mut stop: oneshot::Receiver<()>,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "Fault proxy cannot listen");
            return;
        }
    };
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    loop {
        let stream = tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "Fault proxy accept failed");
                    continue;
                }
            },
        };
        let shared = shared.clone();
        let client = client.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(req, shared.clone(), client.clone()));
            // A connection closed on purpose (a fault) ends here with an error.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The error that makes hyper close the connection without an answer.
#[derive(Debug)]
struct Dropped(&'static str);

impl fmt::Display for Dropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fault proxy: {}", self.0)
    }
}

impl std::error::Error for Dropped {}

async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    client: Client<HttpConnector, Full<Bytes>>,
) -> Result<Response<ProxyBody>, BoxError> {
    // S3 clients percent-encode keys (`date=` arrives as `date%3D`): rules and
    // the log see the key as written.
    let path = percent_decode(req.uri().path());
    let query = req.uri().query().unwrap_or_default().to_owned();
    let info = RequestInfo {
        op: S3Op::classify(req.method(), &path, &query, req.headers()),
        method: req.method().clone(),
        path,
    };
    let (seq, fault) = shared.plan().decide(&info, &query);
    let answer = |status: u16| shared.plan().answered(seq, status, 0, None);

    match fault {
        Some(Fault::Status(code)) => {
            answer(code);
            return Ok(s3_error(
                code,
                "InternalError",
                "injected by the fault proxy",
            ));
        }
        Some(Fault::SlowDown) => {
            answer(503);
            return Ok(s3_error(
                503,
                "SlowDown",
                "Please reduce your request rate.",
            ));
        }
        Some(Fault::Reset) => return Err(Box::new(Dropped("connection reset"))),
        _ => {}
    }

    let (mut parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    strip_hop_by_hop(&mut parts.headers);
    if fault == Some(Fault::StripConditionalHeaders) {
        parts.headers.remove(header::IF_NONE_MATCH);
        parts.headers.remove(header::IF_MATCH);
    }
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    parts.uri = format!("http://{}{path_and_query}", shared.upstream).parse()?;
    // Forwarded on a task of its own: a client that gives up (its timeout) closes
    // the connection and hyper drops this handler, but a request that reached a
    // real store would still take effect, so this one must too.
    let delay = match fault {
        Some(Fault::Delay(d)) => d,
        _ => Duration::ZERO,
    };
    let forwarded = tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let started = std::time::Instant::now();
        let response = client
            .request(Request::from_parts(parts, Full::new(body)))
            .await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok::<_, BoxError>((parts, body, (started, started.elapsed())))
    });
    let (mut parts, body, upstream) = match forwarded.await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            answer(502);
            return Ok(s3_error(502, "BadGateway", &format!("upstream: {e}")));
        }
        Err(e) => return Err(Box::new(e)),
    };
    let status = parts.status.as_u16();

    match fault {
        Some(Fault::LoseResponse) => Err(Box::new(Dropped("response lost after the write"))),
        Some(Fault::TruncateBody) => {
            // Headers promise the whole body; half arrives, then the connection dies.
            let half = body.slice(..body.len() / 2);
            let frames = futures::stream::iter([
                Ok(Frame::data(half)),
                Err::<Frame<Bytes>, BoxError>(Box::new(Dropped("body truncated"))),
            ]);
            fix_length(&mut parts.headers, &body);
            Ok(Response::from_parts(
                parts,
                BodyExt::boxed(StreamBody::new(frames)),
            ))
        }
        _ => {
            shared
                .plan()
                .answered(seq, status, body.len() as u64, Some(upstream));
            fix_length(&mut parts.headers, &body);
            Ok(Response::from_parts(parts, full(body)))
        }
    }
}

/// Decodes `%XX` escapes (invalid ones are kept as they are).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Headers that describe one connection or one encoding, not the message: the
/// proxy re-frames every body with a plain `Content-Length`.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for name in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::TE,
        header::TRAILER,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
}

/// A response re-framed from a chunked one gets the length of its body; a
/// `HEAD` answer keeps the object's length although its body is empty.
fn fix_length(headers: &mut HeaderMap, body: &Bytes) {
    let chunked = headers.remove(header::TRANSFER_ENCODING).is_some();
    headers.remove(header::CONNECTION);
    if chunked || !headers.contains_key(header::CONTENT_LENGTH) {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
}

fn full(body: Bytes) -> ProxyBody {
    BodyExt::boxed(Full::new(body).map_err(|e: Infallible| match e {}))
}

fn s3_error(status: u16, code: &str, message: &str) -> Response<ProxyBody> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    );
    let mut response = Response::new(full(Bytes::from(body)));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/xml"),
    );
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn info(op: S3Op, path: &str) -> RequestInfo {
        RequestInfo {
            op,
            method: Method::PUT,
            path: path.into(),
        }
    }

    #[test]
    fn overlapping_requests_count_once_in_the_endpoint_time() {
        let t0 = std::time::Instant::now();
        let ms = Duration::from_millis;
        let logged = |at: u64, took: Option<u64>| LoggedRequest {
            seq: 0,
            op: S3Op::GetObject,
            method: "GET".into(),
            path: "/b/k".into(),
            query: String::new(),
            fault: None,
            status: Some(200),
            response_bytes: 0,
            upstream: took.map(|t| (t0 + ms(at), ms(t))),
        };
        // 0-10 and 5-20 overlap (20 ms), 30-35 apart (5 ms), 31-33 inside it,
        // and an injected answer (no time).
        let log = [
            logged(30, Some(5)),
            logged(0, Some(10)),
            logged(5, Some(15)),
            logged(31, Some(2)),
            logged(40, None),
        ];
        assert_eq!(endpoint_time(&log), ms(25));
        assert_eq!(endpoint_time(&[]), Duration::ZERO);
    }

    #[test]
    fn keys_are_matched_decoded() {
        assert_eq!(
            percent_decode("/b/events/date%3D2026-01-01/x%2"),
            "/b/events/date=2026-01-01/x%2"
        );
    }

    #[test]
    fn classifies_the_s3_operations_the_lake_uses() {
        let h = HeaderMap::new();
        let mut copy = HeaderMap::new();
        copy.insert("x-amz-copy-source", HeaderValue::from_static("/b/a"));
        let c = |m: Method, p: &str, q: &str, h: &HeaderMap| S3Op::classify(&m, p, q, h);
        assert_eq!(c(Method::GET, "/b/k/x.parquet", "", &h), S3Op::GetObject);
        assert_eq!(c(Method::HEAD, "/b/k", "", &h), S3Op::HeadObject);
        assert_eq!(c(Method::PUT, "/b/k", "", &h), S3Op::PutObject);
        assert_eq!(c(Method::PUT, "/b/k", "", &copy), S3Op::CopyObject);
        assert_eq!(
            c(Method::PUT, "/b/k", "partNumber=1&uploadId=u", &h),
            S3Op::UploadPart
        );
        assert_eq!(
            c(Method::POST, "/b/k", "uploads", &h),
            S3Op::CreateMultipartUpload
        );
        assert_eq!(
            c(Method::POST, "/b/k", "uploadId=u", &h),
            S3Op::CompleteMultipartUpload
        );
        assert_eq!(
            c(Method::DELETE, "/b/k", "uploadId=u", &h),
            S3Op::AbortMultipartUpload
        );
        assert_eq!(c(Method::DELETE, "/b/k", "", &h), S3Op::DeleteObject);
        assert_eq!(c(Method::POST, "/b", "delete", &h), S3Op::DeleteObjects);
        assert_eq!(
            c(Method::GET, "/b", "list-type=2&prefix=x", &h),
            S3Op::ListObjects
        );
        assert_eq!(
            c(Method::GET, "/b", "uploads", &h),
            S3Op::ListMultipartUploads
        );
        assert_eq!(c(Method::PUT, "/b", "", &h), S3Op::Other);
        assert_eq!(c(Method::GET, "/", "", &h), S3Op::Other);
    }

    fn plan(seed: u64, rules: Vec<Rule>) -> Plan {
        Plan {
            rules,
            rng: SplitMix64(seed),
            log: Vec::new(),
        }
    }

    #[test]
    fn nth_targets_one_matching_request_and_times_limits_a_rule() {
        let mut p = plan(
            1,
            vec![
                Rule::new(Fault::LoseResponse)
                    .op(S3Op::PutObject)
                    .key_contains("/_manifests/")
                    .nth(2),
                Rule::new(Fault::SlowDown).op(S3Op::GetObject).times(1),
            ],
        );
        let m = info(
            S3Op::PutObject,
            "/b/bronze/events/_manifests/0000000001.json",
        );
        let d = info(
            S3Op::PutObject,
            "/b/bronze/events/date=2026-01-01/part.parquet",
        );
        let g = info(S3Op::GetObject, "/b/x");
        let faults: Vec<_> = [&d, &m, &d, &m, &m, &g, &g]
            .iter()
            .map(|r| p.decide(r, "").1)
            .collect();
        assert_eq!(
            faults,
            [
                None,
                None,
                None,
                Some(Fault::LoseResponse),
                None,
                Some(Fault::SlowDown),
                None
            ]
        );
        assert_eq!(p.log.len(), 7);
        assert_eq!(p.log[3].seq, 4);
    }

    #[test]
    fn probability_rules_follow_the_seed() {
        let decisions = |seed: u64| {
            let mut p = plan(seed, vec![Rule::new(Fault::Status(500)).probability(0.1)]);
            (0..2000)
                .map(|i| {
                    p.decide(&info(S3Op::GetObject, &format!("/b/{i}")), "")
                        .1
                        .is_some()
                })
                .collect::<Vec<_>>()
        };
        let a = decisions(7);
        assert_eq!(a, decisions(7), "same seed, same decisions");
        assert_ne!(a, decisions(8), "another seed, other decisions");
        let fired = a.iter().filter(|f| **f).count();
        assert!((140..=260).contains(&fired), "~10 % of 2000, got {fired}");
    }
}
