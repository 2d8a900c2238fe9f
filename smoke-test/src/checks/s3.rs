//! Check 4: the lake's object store does what the jobs need.
//!
//! Through the jobs' own [`Lake`] (same client, path-style, same conditional-put
//! mode), under `_smoke/<probe id>/` only:
//!
//! * the bucket answers a listing (credentials, endpoint, bucket name, region);
//! * a small object can be written, read back and deleted (permissions);
//! * a two-part multipart upload of more than 5 MiB completes (the Parquet writer
//!   streams every data file this way);
//! * a second create-if-absent of the same object is refused and a stale `If-Match`
//!   update too: exactly-once pinning of batches depends on it (SPEC §5.4). A store
//!   that ignores them is a `WARN` pointing at the advisory-lock fallback;
//! * an overwrite is visible to the next read and listing, and a delete too.
//!
//! Retries are capped at 2 and the request timeout at the check timeout, so a
//! broken endpoint shows its real error instead of a retry loop.

use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use lake_common::config::{LakeConfig, LakeLocation};
use lake_common::paths::smoke_dir;
use lake_common::store::Lake;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};

use super::{error_chain, timed};
use crate::report::{CheckResult, Report};

/// The bucket answers a listing.
pub const BUCKET: &str = "s3.bucket";
/// Put, get and delete a probe object.
pub const OBJECTS: &str = "s3.objects";
/// A two-part multipart upload of more than 5 MiB.
pub const MULTIPART: &str = "s3.multipart";
/// Create-if-absent and If-Match are enforced.
pub const CONDITIONAL: &str = "s3.conditional";
/// Overwrites and deletes are visible at once.
pub const READ_AFTER_WRITE: &str = "s3.read_after_write";
/// The checks of this module, in order.
pub const NAMES: &[&str] = &[BUCKET, OBJECTS, MULTIPART, CONDITIONAL, READ_AFTER_WRITE];

/// S3's minimum size of every part but the last.
const MIN_PART: usize = 5 * 1024 * 1024;
/// The smoke test's retry cap (the jobs' default is 10).
const MAX_RETRIES: usize = 2;

const NETWORK_FIX: &str = "the endpoint does not answer: check AWS_ENDPOINT (scheme, host, port) and that the \
                           allow-s3 NetworkPolicy lets the pod reach the endpoint's addresses (ipBlock, 443)";

/// Runs the store checks, one result per name in [`NAMES`]. Returns the lake when
/// the bucket is reachable, for the lake checks.
pub async fn run(config: &LakeConfig, limit: Duration, report: &mut Report) -> Option<Lake> {
    let target = Target::of(config);
    let lake = match Lake::open(&probe_config(config, limit, None)) {
        Ok(lake) => lake,
        Err(err) => {
            report.push(CheckResult::fail(
                BUCKET,
                format!("cannot open the lake: {}", error_chain(&err)),
                "check AWS_ENDPOINT, S3_BUCKET / LAKE_URL",
            ));
            report.skip_all(&NAMES[1..], &format!("not run: {BUCKET} failed"));
            return None;
        }
    };
    report.push(timed(BUCKET, limit, NETWORK_FIX, bucket(&lake, &target)).await);
    if !report.usable(BUCKET) {
        report.skip_all(&NAMES[1..], &format!("not run: {BUCKET} failed"));
        return None;
    }

    let dir = smoke_dir().join(probe_id());
    report.push(timed(OBJECTS, limit, NETWORK_FIX, objects(&lake, &target, &dir)).await);
    if report.usable(OBJECTS) {
        // Two 5 MiB-class requests: give them the time of three checks.
        report.push(
            timed(
                MULTIPART,
                limit * 3,
                NETWORK_FIX,
                multipart(&lake, &target, &dir),
            )
            .await,
        );
        report.push(
            timed(
                CONDITIONAL,
                limit,
                NETWORK_FIX,
                conditional(&lake, config, limit, &target, &dir),
            )
            .await,
        );
        report.push(
            timed(
                READ_AFTER_WRITE,
                limit,
                NETWORK_FIX,
                read_after_write(&lake, &target, &dir),
            )
            .await,
        );
    } else {
        report.skip_all(&NAMES[2..], &format!("not run: {OBJECTS} failed"));
    }
    // Best effort: a leftover probe is small, named by date, and harmless.
    let _ = tokio::time::timeout(limit, clean_up(&lake, &dir)).await;
    Some(lake)
}

/// The lake configuration of the probes: the jobs' settings with retries and the
/// request timeout capped, and optionally another conditional-write mode.
fn probe_config(config: &LakeConfig, limit: Duration, conditional: Option<bool>) -> LakeConfig {
    let mut config = config.clone();
    if let LakeLocation::S3(s3) = &mut config.location {
        s3.max_retries = s3.max_retries.min(MAX_RETRIES);
        s3.timeout = s3.timeout.min(limit);
        if let Some(c) = conditional {
            s3.conditional_writes = c;
        }
    }
    config
}

/// `<UTC time>-<random>`: unique, and a leftover says when it was made.
fn probe_id() -> String {
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!(
        "{}-{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ"),
        &random[..8]
    )
}

/// What the messages call the store.
struct Target {
    /// `s3://bucket via endpoint` or `file:///…`.
    description: String,
    /// The bucket name (S3 only).
    bucket: Option<String>,
}

impl Target {
    fn of(config: &LakeConfig) -> Self {
        Self {
            description: config.to_string(),
            bucket: match &config.location {
                LakeLocation::S3(s3) => Some(s3.bucket.clone()),
                _ => None,
            },
        }
    }

    /// A failure of `what` on the store: the error's gist and the fix.
    fn fail(&self, name: &'static str, what: &str, err: &object_store::Error) -> CheckResult {
        let (detail, fix) = self.explain(err);
        CheckResult::fail(
            name,
            format!("{what} failed on {}: {detail}", self.description),
            fix,
        )
    }

    /// Classifies a store error by the S3 error code or transport failure in it.
    fn explain(&self, err: &object_store::Error) -> (String, String) {
        let text = error_chain(err);
        let code = between(&text, "<Code>", "</Code>");
        let message = between(&text, "<Message>", "</Message>");
        let bucket = self.bucket.as_deref().unwrap_or("the lake");
        let gist = match (code, message) {
            (Some(c), Some(m)) => format!("{c}: {m}"),
            (Some(c), None) => c.to_owned(),
            _ => shorten(&text, 300),
        };
        let lower = text.to_ascii_lowercase();
        let fix = match code.unwrap_or_default() {
            "NoSuchBucket" => format!(
                "bucket {bucket} does not exist at this endpoint: create it, or fix S3_BUCKET (and AWS_ENDPOINT / \
                 AWS_REGION if it lives elsewhere)"
            ),
            "InvalidAccessKeyId" | "InvalidClientTokenId" => {
                "the endpoint does not know this access key: check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in \
                 the Secret lake-s3"
                    .to_owned()
            }
            "SignatureDoesNotMatch" => {
                "the request signature is wrong: check AWS_SECRET_ACCESS_KEY (and AWS_REGION, which is part of \
                 the signature)"
                    .to_owned()
            }
            "AuthorizationHeaderMalformed" | "PermanentRedirect" | "IllegalLocationConstraintException" => {
                "set AWS_REGION to the region this endpoint expects".to_owned()
            }
            "AccessDenied" | "AllAccessDisabled" => format!(
                "the key may not do this: give it list, read, write and delete on bucket {bucket} (and \
                 multipart uploads)"
            ),
            "EntityTooSmall" => "the endpoint rejects 5 MiB parts: it is not S3-compatible enough for the \
                                 Parquet writer"
                .to_owned(),
            _ if lower.contains("dns error") || lower.contains("failed to lookup") => {
                "check the host of AWS_ENDPOINT and that the pod can reach kube-dns".to_owned()
            }
            _ if lower.contains("certificate") || lower.contains("tls") || lower.contains("ssl") => {
                "the TLS connection failed: check that AWS_ENDPOINT is https:// with a publicly trusted \
                 certificate (or http:// for a plain endpoint)"
                    .to_owned()
            }
            _ if lower.contains("403") => format!(
                "access denied: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the key's rights on {bucket}"
            ),
            _ if lower.contains("404") => format!(
                "not found: check S3_BUCKET ({bucket}) and AWS_ENDPOINT (path-style, no bucket in the host)"
            ),
            _ if lower.contains("connect")
                || lower.contains("timed out")
                || lower.contains("timeout")
                || lower.contains("error sending request") =>
            {
                NETWORK_FIX.to_owned()
            }
            _ => "check AWS_ENDPOINT, S3_BUCKET and the credentials in the Secret lake-s3".to_owned(),
        };
        (gist, fix)
    }
}

/// The text between the first `open` and the next `close`.
fn between<'a>(text: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = text.find(open)? + open.len();
    let len = text[start..].find(close)?;
    Some(text[start..start + len].trim())
}

fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let cut: String = text.chars().take(max).collect();
    format!("{cut}...")
}

async fn bucket(lake: &Lake, target: &Target) -> CheckResult {
    match lake.store().list_with_delimiter(None).await {
        Ok(list) => {
            let mut top: Vec<String> = list
                .common_prefixes
                .iter()
                .map(|p| format!("{p}/"))
                .collect();
            top.sort();
            let content = if top.is_empty() && list.objects.is_empty() {
                "empty".to_owned()
            } else {
                format!("top level: {}", top.join(" "))
            };
            CheckResult::pass(
                BUCKET,
                format!("{} is listable ({content})", target.description),
            )
        }
        Err(err) => target.fail(BUCKET, "listing the bucket", &err),
    }
}

async fn objects(lake: &Lake, target: &Target, dir: &Path) -> CheckResult {
    let path = dir.clone().join("probe.txt");
    let body = Bytes::from(format!("smoke-test probe {path}\n"));
    let store = lake.store();
    if let Err(err) = store.put(&path, PutPayload::from(body.clone())).await {
        return target.fail(OBJECTS, &format!("put {path}"), &err);
    }
    match lake.get_bytes(&path).await {
        Ok(read) if read == body => {}
        Ok(_) => {
            return CheckResult::fail(
                OBJECTS,
                format!("get {path} returned other bytes than were put"),
                "the endpoint corrupts or caches objects: check any proxy between the pod and the store",
            );
        }
        Err(err) => return target.fail(OBJECTS, &format!("get {path}"), &err),
    }
    if let Err(err) = store.delete(&path).await {
        return target.fail(OBJECTS, &format!("delete {path}"), &err);
    }
    CheckResult::pass(OBJECTS, format!("put, get and delete of {path}"))
}

/// Deterministic, position-dependent bytes, so a reordered or truncated part shows.
fn pattern(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i % 251) as u8 ^ seed)
        .collect::<Vec<u8>>()
        .into()
}

async fn multipart(lake: &Lake, target: &Target, dir: &Path) -> CheckResult {
    let path = dir.clone().join("multipart.bin");
    let first = pattern(MIN_PART, 0x5a);
    let second = pattern(1024 * 1024, 0xa5);
    let total = first.len() + second.len();
    let store = lake.store();
    let mut upload = match store.put_multipart(&path).await {
        Ok(u) => u,
        Err(err) => return target.fail(MULTIPART, "starting a multipart upload", &err),
    };
    let parts = async {
        upload.put_part(PutPayload::from(first.clone())).await?;
        upload.put_part(PutPayload::from(second.clone())).await?;
        upload.complete().await
    }
    .await;
    if let Err(err) = parts {
        let _ = upload.abort().await;
        return target.fail(MULTIPART, "a 2-part multipart upload", &err);
    }
    let meta = match store.head(&path).await {
        Ok(m) => m,
        Err(err) => return target.fail(MULTIPART, "reading the uploaded object's size", &err),
    };
    // The bytes around the part boundary prove both parts landed, in order.
    let boundary = MIN_PART as u64;
    let around = match store.get_range(&path, boundary - 8..boundary + 8).await {
        Ok(b) => b,
        Err(err) => return target.fail(MULTIPART, "reading the uploaded object back", &err),
    };
    let expected: Vec<u8> = first[MIN_PART - 8..]
        .iter()
        .chain(&second[..8])
        .copied()
        .collect();
    let _ = store.delete(&path).await;
    if meta.size != total as u64 || around.as_ref() != expected.as_slice() {
        return CheckResult::fail(
            MULTIPART,
            format!(
                "the completed upload is wrong: {} bytes instead of {total}, or its parts are out of order",
                meta.size
            ),
            "the endpoint's multipart support is broken: report it to the provider; the jobs cannot write \
             Parquet files there",
        );
    }
    CheckResult::pass(
        MULTIPART,
        format!(
            "2-part upload of {} MiB ({} MiB + 1 MiB) completed and read back",
            total / (1024 * 1024),
            MIN_PART / (1024 * 1024)
        ),
    )
}

/// What the conditional-write probe found.
#[derive(Debug)]
enum Conditional {
    /// A second create was refused; `cas` is whether a stale If-Match update was
    /// refused too (`None`: the store has no compare-and-swap to test).
    Enforced { cas: Option<bool> },
    /// A second create overwrote the first.
    CreateIgnored,
    /// The store refuses conditional requests altogether.
    Unsupported(String),
    /// Something else unexpected (e.g. an update with the current ETag refused).
    Odd(String),
}

fn is_unsupported(err: &object_store::Error) -> bool {
    matches!(
        err,
        object_store::Error::NotImplemented { .. } | object_store::Error::NotSupported { .. }
    ) || {
        let text = error_chain(err);
        text.contains("501") || text.contains("NotImplemented")
    }
}

async fn probe_conditional(lake: &Lake, path: &Path) -> Result<Conditional, object_store::Error> {
    let first = match lake
        .create_if_absent(path, Bytes::from_static(b"first"))
        .await
    {
        Ok(Some(put)) => put,
        Ok(None) => {
            return Ok(Conditional::Odd(format!(
                "a create-if-absent of the new object {path} was refused"
            )));
        }
        Err(err) if is_unsupported(&err) => return Ok(Conditional::Unsupported(error_chain(&err))),
        Err(err) => return Err(err),
    };
    match lake
        .create_if_absent(path, Bytes::from_static(b"second"))
        .await
    {
        Ok(None) => {}
        Ok(Some(_)) => return Ok(Conditional::CreateIgnored),
        Err(err) if is_unsupported(&err) => return Ok(Conditional::Unsupported(error_chain(&err))),
        Err(err) => return Err(err),
    }
    if lake.get_bytes(path).await? != Bytes::from_static(b"first") {
        return Ok(Conditional::CreateIgnored);
    }
    if !lake.capabilities().update_if_match || first.e_tag.is_none() {
        return Ok(Conditional::Enforced { cas: None });
    }
    let read_version = UpdateVersion {
        e_tag: first.e_tag,
        version: first.version,
    };
    let update = |body: &'static [u8], version: UpdateVersion| {
        let opts = PutOptions {
            mode: PutMode::Update(version),
            ..Default::default()
        };
        lake.store()
            .put_opts(path, PutPayload::from_static(body), opts)
    };
    match update(b"third", read_version.clone()).await {
        Ok(_) => {}
        Err(object_store::Error::Precondition { .. }) => {
            return Ok(Conditional::Odd(
                "an If-Match update with the object's current ETag was refused".to_owned(),
            ));
        }
        Err(err) if is_unsupported(&err) => return Ok(Conditional::Unsupported(error_chain(&err))),
        Err(err) => return Err(err),
    }
    // The version read before "third" is stale now: a second writer holding it must lose.
    match update(b"fourth", read_version).await {
        Err(object_store::Error::Precondition { .. }) => {
            Ok(Conditional::Enforced { cas: Some(true) })
        }
        Ok(_) => Ok(Conditional::Enforced { cas: Some(false) }),
        Err(err) if is_unsupported(&err) => Ok(Conditional::Unsupported(error_chain(&err))),
        Err(err) => Err(err),
    }
}

const FALLBACK: &str = "the jobs then pin batches under a PostgreSQL advisory lock instead (the fallback; the \
                        README says what it does not guarantee)";

async fn conditional(
    lake: &Lake,
    config: &LakeConfig,
    limit: Duration,
    target: &Target,
    dir: &Path,
) -> CheckResult {
    let disabled = matches!(&config.location, LakeLocation::S3(s3) if !s3.conditional_writes);
    if disabled {
        // The jobs will not send conditional requests; find out whether they could.
        let probe_lake = match Lake::open(&probe_config(config, limit, Some(true))) {
            Ok(l) => l,
            Err(err) => {
                return CheckResult::fail(
                    CONDITIONAL,
                    format!("cannot open the lake: {}", error_chain(&err)),
                    "check AWS_ENDPOINT and S3_BUCKET",
                );
            }
        };
        let probed =
            probe_conditional(&probe_lake, &dir.clone().join("conditional-probe.txt")).await;
        let detail = "S3_CONDITIONAL_WRITES=disabled: the jobs pin batches under a PostgreSQL advisory lock \
                      (fallback) instead of create-if-absent, so exactly-once depends on every run reaching the \
                      same database";
        return match probed {
            Ok(Conditional::Enforced { cas: Some(true) }) => CheckResult::warn(
                CONDITIONAL,
                format!(
                    "{detail}; yet this endpoint does enforce If-None-Match and If-Match (probed)"
                ),
                "remove S3_CONDITIONAL_WRITES (or set it to enabled) to let the store pin batches",
            ),
            Ok(found) => CheckResult::warn(
                CONDITIONAL,
                format!(
                    "{detail}; the endpoint does not enforce them either (probed: {})",
                    describe(&found)
                ),
                "keep S3_CONDITIONAL_WRITES=disabled on this endpoint, and never point two deployments at \
                 the same lake with different databases",
            ),
            Err(err) => target.fail(CONDITIONAL, "the conditional-write probe", &err),
        };
    }
    match probe_conditional(lake, &dir.clone().join("conditional.txt")).await {
        Ok(Conditional::Enforced { cas: Some(true) }) => CheckResult::pass(
            CONDITIONAL,
            "a second create of the same object was refused (If-None-Match) and a stale update too (If-Match): \
             the store pins batches",
        ),
        Ok(Conditional::Enforced { cas: None }) => CheckResult::pass(
            CONDITIONAL,
            "a second create of the same object was refused (create-if-absent); this store has no ETag \
             compare-and-swap",
        ),
        Ok(found) => CheckResult::warn(
            CONDITIONAL,
            format!(
                "the store does not enforce conditional writes ({}): two concurrent runs could both pin the \
                 same batch or take over the same lease",
                describe(&found)
            ),
            format!("set S3_CONDITIONAL_WRITES=disabled: {FALLBACK}"),
        ),
        Err(err) => target.fail(CONDITIONAL, "the conditional-write probe", &err),
    }
}

fn describe(found: &Conditional) -> String {
    match found {
        Conditional::Enforced { cas: Some(true) } => "both enforced".to_owned(),
        Conditional::Enforced { cas: Some(false) } => {
            "a second create was refused, but a stale If-Match update was accepted".to_owned()
        }
        Conditional::Enforced { cas: None } => {
            "create-if-absent enforced, no compare-and-swap".to_owned()
        }
        Conditional::CreateIgnored => {
            "a second create-if-absent of the same object succeeded and overwrote it".to_owned()
        }
        Conditional::Unsupported(e) => {
            format!("conditional requests are rejected: {}", shorten(e, 200))
        }
        Conditional::Odd(e) => e.clone(),
    }
}

async fn read_after_write(lake: &Lake, target: &Target, dir: &Path) -> CheckResult {
    let path = dir.clone().join("read-after-write.txt");
    let store = lake.store();
    let stale = |what: String| {
        CheckResult::fail(
            READ_AFTER_WRITE,
            what,
            "the store is not read-after-write consistent, and the jobs' manifests rely on it: use a strongly \
             consistent endpoint (and no caching proxy in between)",
        )
    };
    for version in ["v1", "v2"] {
        if let Err(err) = store
            .put(&path, PutPayload::from_static(version.as_bytes()))
            .await
        {
            return target.fail(READ_AFTER_WRITE, &format!("put {path}"), &err);
        }
        match lake.get_bytes(&path).await {
            Ok(b) if b.as_ref() == version.as_bytes() => {}
            Ok(b) => {
                return stale(format!(
                    "a read right after writing {version} of {path} returned {:?}",
                    String::from_utf8_lossy(&b)
                ));
            }
            Err(err) => return target.fail(READ_AFTER_WRITE, &format!("get {path}"), &err),
        }
    }
    let listed = |store: &std::sync::Arc<dyn object_store::ObjectStore>| {
        let dir = dir.clone();
        let path = path.clone();
        let store = store.clone();
        async move {
            let metas: Vec<_> = store.list(Some(&dir)).try_collect().await?;
            Ok::<_, object_store::Error>(metas.iter().any(|m| m.location == path))
        }
    };
    match listed(store).await {
        Ok(true) => {}
        Ok(false) => {
            return stale(format!(
                "a listing right after writing {path} does not show it"
            ));
        }
        Err(err) => return target.fail(READ_AFTER_WRITE, &format!("list {dir}"), &err),
    }
    if let Err(err) = store.delete(&path).await {
        return target.fail(READ_AFTER_WRITE, &format!("delete {path}"), &err);
    }
    match store.head(&path).await {
        Err(object_store::Error::NotFound { .. }) => {}
        Ok(_) => return stale(format!("{path} is still readable right after its delete")),
        Err(err) => return target.fail(READ_AFTER_WRITE, &format!("head {path}"), &err),
    }
    match listed(store).await {
        Ok(false) => {}
        Ok(true) => {
            return stale(format!(
                "a listing right after deleting {path} still shows it"
            ));
        }
        Err(err) => return target.fail(READ_AFTER_WRITE, &format!("list {dir}"), &err),
    }
    CheckResult::pass(
        READ_AFTER_WRITE,
        "an overwrite was visible to the next read and listing, and a delete too",
    )
}

async fn clean_up(lake: &Lake, dir: &Path) {
    let store = lake.store();
    let Ok(left) = store.list(Some(dir)).try_collect::<Vec<_>>().await else {
        return;
    };
    for meta in left {
        let _ = store.delete(&meta.location).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Status;

    fn local(dir: &std::path::Path) -> LakeConfig {
        LakeConfig::local(dir)
    }

    #[tokio::test]
    async fn a_local_lake_passes_every_store_check_and_is_left_clean() {
        let tmp = tempfile::tempdir().unwrap();
        let mut report = Report::default();
        let lake = run(&local(tmp.path()), Duration::from_secs(20), &mut report).await;
        assert!(lake.is_some());
        let names: Vec<_> = report.results().iter().map(|r| r.name).collect();
        assert_eq!(names, NAMES);
        for r in report.results() {
            assert_eq!(r.status, Status::Pass, "{r:?}");
        }
        assert!(
            report
                .get(CONDITIONAL)
                .unwrap()
                .detail
                .contains("no ETag compare-and-swap"),
            "{:?}",
            report.get(CONDITIONAL)
        );
        let leftovers: Vec<_> = walk(tmp.path());
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let p = entry.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
        out
    }

    #[test]
    fn s3_error_codes_are_found() {
        let text = "Generic S3 error: Error performing list request: Server returned non-2xx status code: \
                    404 Not Found: <?xml version=\"1.0\"?><Error><Code>NoSuchBucket</Code>\
                    <Message>The specified bucket does not exist</Message></Error>";
        assert_eq!(between(text, "<Code>", "</Code>"), Some("NoSuchBucket"));
        assert_eq!(
            between(text, "<Message>", "</Message>"),
            Some("The specified bucket does not exist")
        );
        assert_eq!(between("no xml", "<Code>", "</Code>"), None);
    }

    #[test]
    fn the_pattern_differs_across_the_boundary() {
        let a = pattern(MIN_PART, 0x5a);
        let b = pattern(16, 0xa5);
        assert_ne!(a[MIN_PART - 8..], b[..8]);
    }
}
