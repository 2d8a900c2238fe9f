//! `TestS3`: moto answers over HTTP, buckets are created and listable, drop kills it.

use lake_testkit::TestS3;

#[tokio::test]
async fn moto_serves_fresh_buckets_over_http() {
    let s3 = TestS3::start().await.unwrap();
    assert_eq!(s3.endpoint(), format!("http://127.0.0.1:{}", s3.port()));

    let bucket = s3.new_bucket().await.unwrap();
    let other = s3.new_bucket().await.unwrap();
    assert_ne!(bucket, other);
    assert!(
        bucket.starts_with(&format!("test-{}-", std::process::id())),
        "{bucket}"
    );
    assert!(
        bucket.len() <= 63
            && bucket
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    );

    let listing = s3
        .request("GET", &format!("/{bucket}?list-type=2"))
        .await
        .unwrap();
    assert_eq!(listing.status, 200, "{}", listing.body);
    assert!(
        listing.body.contains(&format!("<Name>{bucket}</Name>")),
        "{}",
        listing.body
    );
    assert!(
        listing.body.contains("<KeyCount>0</KeyCount>"),
        "{}",
        listing.body
    );

    let put = s3
        .request("PUT", &format!("/{bucket}/bronze/hello.txt"))
        .await
        .unwrap();
    assert!(put.is_success(), "{put:?}");
    let listing = s3
        .request("GET", &format!("/{bucket}?list-type=2"))
        .await
        .unwrap();
    assert!(
        listing.body.contains("<Key>bronze/hello.txt</Key>"),
        "{}",
        listing.body
    );

    let missing = s3
        .request("GET", "/no-such-bucket?list-type=2")
        .await
        .unwrap();
    assert_eq!(missing.status, 404);

    let env = s3.env(&bucket);
    let get = |k: &str| env.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    assert_eq!(get("AWS_ENDPOINT"), Some(s3.endpoint()));
    assert_eq!(get("S3_BUCKET"), Some(bucket.clone()));
    assert_eq!(get("AWS_REGION").as_deref(), Some("us-east-1"));
    assert_eq!(get("AWS_ACCESS_KEY_ID").as_deref(), Some("testing"));
    assert_eq!(get("AWS_SECRET_ACCESS_KEY").as_deref(), Some("testing"));
    assert_eq!(get("S3_MAX_RETRIES").as_deref(), Some("1"));
    assert_eq!(get("S3_TIMEOUT_SECS").as_deref(), Some("10"));

    let port = s3.port();
    drop(s3);
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err(),
        "moto still listens after drop"
    );
}
