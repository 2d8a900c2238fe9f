//! The fault proxy against the real S3 endpoint, through `object_store`'s S3
//! client (what the jobs use): each fault does to the client what the commit
//! protocol has to survive, and the request log says what happened.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use lake_testkit::{Fault, FaultProxy, Rule, S3Op, TestS3};
use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    RetryConfig, WriteMultipart,
};

struct Setup {
    s3: TestS3,
    bucket: String,
    proxy: FaultProxy,
}

async fn setup() -> Setup {
    let s3 = TestS3::start().await.unwrap();
    let bucket = s3.new_bucket().await.unwrap();
    let proxy = FaultProxy::start(&s3, 42).unwrap();
    Setup { s3, bucket, proxy }
}

/// An S3 client through the proxy with `retries` retries and a request timeout.
fn store(s: &Setup, retries: usize, timeout: Duration) -> Arc<dyn ObjectStore> {
    client(&s.proxy.endpoint(), &s.bucket, retries, timeout)
}

fn client(endpoint: &str, bucket: &str, retries: usize, timeout: Duration) -> Arc<dyn ObjectStore> {
    Arc::new(
        AmazonS3Builder::new()
            .with_endpoint(endpoint)
            .with_bucket_name(bucket)
            .with_region("us-east-1")
            .with_access_key_id("testing")
            .with_secret_access_key("testing")
            .with_virtual_hosted_style_request(false)
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            .with_client_options(
                // Replaces every client option, so `allow_http` goes here too.
                ClientOptions::new()
                    .with_timeout(timeout)
                    .with_allow_http(true),
            )
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(10),
                    max_backoff: Duration::from_millis(50),
                    base: 2.0,
                },
                max_retries: retries,
                retry_timeout: Duration::from_secs(30),
            })
            .build()
            .unwrap(),
    )
}

/// The object's body read straight from moto, bypassing the proxy (moto refuses
/// unsigned reads of objects, so this is a second, fault-free S3 client).
async fn direct_get(s: &Setup, key: &str) -> Option<String> {
    let direct = client(&s.s3.endpoint(), &s.bucket, 0, Duration::from_secs(10));
    match direct.get(&Path::from(key)).await {
        Ok(r) => Some(String::from_utf8(r.bytes().await.unwrap().to_vec()).unwrap()),
        Err(object_store::Error::NotFound { .. }) => None,
        Err(e) => panic!("direct GET {key}: {e}"),
    }
}

fn create() -> PutOptions {
    PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    }
}

#[tokio::test]
async fn passes_every_operation_through_and_logs_its_kind() {
    let s = setup().await;
    let store = store(&s, 0, Duration::from_secs(10));
    let a = Path::from("bronze/events/_manifests/0000000001.json");
    store.put(&a, PutPayload::from_static(b"{}")).await.unwrap();
    assert_eq!(
        store.get(&a).await.unwrap().bytes().await.unwrap(),
        Bytes::from_static(b"{}")
    );
    assert_eq!(store.head(&a).await.unwrap().size, 2);
    let big = Path::from("bronze/events/date=2026-01-01/part-0000000001-0000.parquet");
    let mut upload = WriteMultipart::new(store.put_multipart(&big).await.unwrap());
    upload.write(&vec![7u8; 6 * 1024 * 1024]);
    upload.finish().await.unwrap();
    assert_eq!(store.head(&big).await.unwrap().size, 6 * 1024 * 1024);
    use futures::TryStreamExt;
    let listed: Vec<_> = store
        .list(Some(&Path::from("bronze")))
        .try_collect()
        .await
        .unwrap();
    assert_eq!(listed.len(), 2);
    store.delete(&a).await.unwrap();
    assert_eq!(direct_get(&s, a.as_ref()).await, None);

    let ops: Vec<S3Op> = s.proxy.log().iter().map(|r| r.op).collect();
    for op in [
        S3Op::PutObject,
        S3Op::GetObject,
        S3Op::HeadObject,
        S3Op::CreateMultipartUpload,
        S3Op::UploadPart,
        S3Op::CompleteMultipartUpload,
        S3Op::ListObjects,
    ] {
        assert!(
            ops.contains(&op),
            "{op:?} missing from\n{}",
            s.proxy.log_text()
        );
    }
    assert!(
        ops.contains(&S3Op::DeleteObject) || ops.contains(&S3Op::DeleteObjects),
        "{}",
        s.proxy.log_text()
    );
    assert!(
        s.proxy
            .log()
            .iter()
            .all(|r| r.fault.is_none() && r.status.is_some())
    );
    assert!(s.proxy.fault_counts().is_empty());
}

/// The failure mode behind "a lost answer looks like a rival": the create took
/// effect, its answer was lost, the retry meets the client's own object.
#[tokio::test]
async fn a_lost_response_leaves_the_write_in_place_and_its_retry_sees_a_conflict() {
    let s = setup().await;
    s.proxy.add_rule(
        Rule::new(Fault::LoseResponse)
            .op(S3Op::PutObject)
            .key_contains("/_manifests/")
            .nth(1),
    );
    let key = Path::from("bronze/events/_manifests/0000000007.json");
    let err = store(&s, 0, Duration::from_secs(10))
        .put_opts(&key, PutPayload::from_static(b"pending"), create())
        .await
        .unwrap_err();
    assert!(
        !matches!(err, object_store::Error::AlreadyExists { .. }),
        "{err}"
    );
    assert_eq!(
        direct_get(&s, key.as_ref()).await.as_deref(),
        Some("pending")
    );

    // With a retry, the same loss surfaces as "already exists": the client cannot
    // tell its own earlier write from a rival's without reading the object.
    s.proxy.add_rule(
        Rule::new(Fault::LoseResponse)
            .op(S3Op::PutObject)
            .key_contains("0000000008")
            .nth(1),
    );
    let other = Path::from("bronze/events/_manifests/0000000008.json");
    let err = store(&s, 1, Duration::from_secs(10))
        .put_opts(&other, PutPayload::from_static(b"mine"), create())
        .await
        .unwrap_err();
    assert!(
        matches!(err, object_store::Error::AlreadyExists { .. }),
        "{err}"
    );
    assert_eq!(
        direct_get(&s, other.as_ref()).await.as_deref(),
        Some("mine")
    );
    let log = s.proxy.log();
    let puts: Vec<_> = log
        .iter()
        .filter(|r| r.path.ends_with("0000000008.json"))
        .collect();
    assert_eq!(puts.len(), 2, "{}", s.proxy.log_text());
    assert_eq!(puts[0].fault, Some(Fault::LoseResponse));
    assert_eq!(puts[1].status, Some(412));
}

#[tokio::test]
async fn slow_down_and_server_errors_are_answered_without_effect_and_retried() {
    let s = setup().await;
    s.proxy
        .add_rule(Rule::new(Fault::SlowDown).op(S3Op::PutObject).times(1));
    s.proxy
        .add_rule(Rule::new(Fault::Status(500)).op(S3Op::PutObject).times(1));
    let key = Path::from("x/a.json");
    // No retries: the 503 reaches the caller and nothing was written.
    let err = store(&s, 0, Duration::from_secs(10))
        .put(&key, PutPayload::from_static(b"a"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("SlowDown"), "{err}");
    assert_eq!(direct_get(&s, key.as_ref()).await, None);
    // Two retries get past the 500 and succeed.
    store(&s, 2, Duration::from_secs(10))
        .put(&key, PutPayload::from_static(b"a"))
        .await
        .unwrap();
    assert_eq!(direct_get(&s, key.as_ref()).await.as_deref(), Some("a"));
    let statuses: Vec<_> = s.proxy.log().iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [Some(503), Some(500), Some(200)],
        "{}",
        s.proxy.log_text()
    );
    assert_eq!(s.proxy.fault_counts().get("slow-down"), Some(&1));
    assert_eq!(s.proxy.fault_counts().get("status-500"), Some(&1));
}

#[tokio::test]
async fn a_reset_connection_never_reaches_the_store() {
    let s = setup().await;
    s.proxy
        .add_rule(Rule::new(Fault::Reset).op(S3Op::PutObject));
    let key = Path::from("x/reset.json");
    store(&s, 0, Duration::from_secs(10))
        .put(&key, PutPayload::from_static(b"a"))
        .await
        .unwrap_err();
    assert_eq!(direct_get(&s, key.as_ref()).await, None);
    assert_eq!(s.proxy.log()[0].status, None);
}

#[tokio::test]
async fn a_truncated_body_is_an_error_not_a_short_object() {
    let s = setup().await;
    let key = Path::from("x/data.bin");
    let store = store(&s, 0, Duration::from_secs(10));
    store
        .put(&key, PutPayload::from(vec![1u8; 100_000]))
        .await
        .unwrap();
    s.proxy
        .add_rule(Rule::new(Fault::TruncateBody).op(S3Op::GetObject).nth(1));
    let read = match store.get(&key).await {
        Ok(r) => r.bytes().await,
        Err(e) => Err(e),
    };
    assert!(
        read.is_err(),
        "a cut body must not read as {:?} bytes",
        read.map(|b| b.len())
    );
    // The next read is whole again.
    assert_eq!(
        store.get(&key).await.unwrap().bytes().await.unwrap().len(),
        100_000
    );
}

#[tokio::test]
async fn a_slow_answer_times_out_but_the_write_still_lands() {
    let s = setup().await;
    s.proxy
        .add_rule(Rule::new(Fault::Delay(Duration::from_millis(1500))).op(S3Op::PutObject));
    let key = Path::from("x/slow.json");
    let started = std::time::Instant::now();
    store(&s, 0, Duration::from_millis(500))
        .put(&key, PutPayload::from_static(b"late"))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_millis(1400),
        "gave up at its timeout"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(direct_get(&s, key.as_ref()).await.as_deref(), Some("late"));
}

/// A store that ignores conditional headers, as some S3-compatible stores do:
/// create-if-absent overwrites. The no-conditional-writes mode is tested on this.
#[tokio::test]
async fn stripping_conditional_headers_makes_create_if_absent_overwrite() {
    let s = setup().await;
    let key = Path::from("x/pin.json");
    let store = store(&s, 0, Duration::from_secs(10));
    store
        .put_opts(&key, PutPayload::from_static(b"one"), create())
        .await
        .unwrap();
    let err = store
        .put_opts(&key, PutPayload::from_static(b"two"), create())
        .await
        .unwrap_err();
    assert!(
        matches!(err, object_store::Error::AlreadyExists { .. }),
        "moto honours it: {err}"
    );

    s.proxy.add_rule(Rule::new(Fault::StripConditionalHeaders));
    store
        .put_opts(&key, PutPayload::from_static(b"two"), create())
        .await
        .unwrap();
    assert_eq!(direct_get(&s, key.as_ref()).await.as_deref(), Some("two"));
}
