//! S3 faults: the bucket, the credentials, and conditional writes.

use crate::util::{Green, IgnoringProxy, enable_moto_auth, moto_s3_user, smoke, with};

const FRESHNESS: [(&str, &str); 2] = [
    ("lake.bronze_freshness", "WARN"),
    ("lake.silver_freshness", "WARN"),
];

const AFTER_BUCKET: [&str; 7] = [
    "s3.objects",
    "s3.multipart",
    "s3.conditional",
    "s3.read_after_write",
    "lake.manifests",
    "lake.bronze_freshness",
    "lake.silver_freshness",
];

#[tokio::test]
async fn missing_bucket_and_wrong_credentials_fail_the_bucket_line() {
    let green = Green::start().await;

    let env = with(&green.env(), "S3_BUCKET", Some("no-such-bucket-4f1e"));
    let out = smoke(&env, &[]).await;
    out.assert_code(1);
    out.assert_line(
        "s3.bucket",
        "FAIL",
        &[
            "s3://no-such-bucket-4f1e",
            "NoSuchBucket",
            "fix: bucket no-such-bucket-4f1e does not exist",
            "S3_BUCKET",
        ],
    );
    for name in AFTER_BUCKET {
        out.assert_line(name, "SKIP", &["not run"]);
    }
    // PostgreSQL is unaffected.
    let mut expected = vec![("s3.bucket", "FAIL")];
    expected.extend(AFTER_BUCKET.iter().map(|n| (*n, "SKIP")));
    out.assert_others_pass(&expected);

    // From here on moto checks credentials like a real endpoint: a key of its
    // IAM with the right secret passes everything, the wrong secret or an
    // unknown key fail the bucket line.
    let (key, secret) = moto_s3_user(&green.s3).await;
    enable_moto_auth(&green.s3).await;
    let authed = with(
        &with(&green.env(), "AWS_ACCESS_KEY_ID", Some(&key)),
        "AWS_SECRET_ACCESS_KEY",
        Some(&secret),
    );
    let out = smoke(&authed, &[]).await;
    out.assert_code(0);
    out.assert_others_pass(&[FRESHNESS[0], FRESHNESS[1]]);
    out.assert_never_shows(&secret);

    let env = with(&authed, "AWS_SECRET_ACCESS_KEY", Some("wrong-secret-8a2f"));
    let out = smoke(&env, &[]).await;
    out.assert_code(1);
    out.assert_line(
        "s3.bucket",
        "FAIL",
        &[
            "SignatureDoesNotMatch",
            "fix: the request signature is wrong: check AWS_SECRET_ACCESS_KEY",
        ],
    );
    out.assert_others_pass(&expected);
    out.assert_never_shows("wrong-secret-8a2f");

    let env = with(&authed, "AWS_ACCESS_KEY_ID", Some("AKIAUNKNOWN000000000"));
    let out = smoke(&env, &[]).await;
    out.assert_code(1);
    out.assert_line(
        "s3.bucket",
        "FAIL",
        &[
            "InvalidAccessKeyId",
            "fix: the endpoint does not know this access key",
            "AWS_ACCESS_KEY_ID",
        ],
    );
    out.assert_others_pass(&expected);
}

#[tokio::test]
async fn conditional_writes_disabled_or_ignored_is_a_warning_with_the_fallback() {
    let green = Green::start().await;

    // The operator switched them off: the jobs use the advisory lock, and the
    // probe tells that this endpoint could do better.
    let env = with(&green.env(), "S3_CONDITIONAL_WRITES", Some("disabled"));
    let out = smoke(&env, &[]).await;
    out.assert_code(0);
    out.assert_line(
        "s3.conditional",
        "WARN",
        &[
            "S3_CONDITIONAL_WRITES=disabled",
            "PostgreSQL advisory lock",
            "this endpoint does enforce If-None-Match and If-Match (probed)",
            "fix: remove S3_CONDITIONAL_WRITES",
        ],
    );
    out.assert_others_pass(&[("s3.conditional", "WARN"), FRESHNESS[0], FRESHNESS[1]]);

    // A store that silently ignores the conditions (a proxy drops the headers).
    let proxy = IgnoringProxy::start(green.s3.port()).await;
    let env = with(
        &green.env(),
        "AWS_ENDPOINT",
        Some(&format!("http://127.0.0.1:{}", proxy.port)),
    );
    let out = smoke(&env, &[]).await;
    out.assert_code(0);
    out.assert_line(
        "s3.conditional",
        "WARN",
        &[
            "does not enforce conditional writes",
            "a second create-if-absent of the same object succeeded",
            "two concurrent runs could both pin the same batch",
            "fix: set S3_CONDITIONAL_WRITES=disabled",
            "advisory lock",
        ],
    );
    out.assert_others_pass(&[("s3.conditional", "WARN"), FRESHNESS[0], FRESHNESS[1]]);

    // Behind the same proxy with conditional writes disabled: keep them disabled.
    let env = with(&env, "S3_CONDITIONAL_WRITES", Some("disabled"));
    let out = smoke(&env, &[]).await;
    out.assert_code(0);
    out.assert_line(
        "s3.conditional",
        "WARN",
        &[
            "the endpoint does not enforce them either",
            "fix: keep S3_CONDITIONAL_WRITES=disabled",
        ],
    );
}
