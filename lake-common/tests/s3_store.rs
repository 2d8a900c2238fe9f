//! lake-common's store against a real S3 endpoint (moto over HTTP): Parquet
//! written and read back, a multipart upload over 10 MB, conditional writes; and
//! the same multipart writer on a local lake.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use bytes::Bytes;
use std::time::Duration;

use lake_common::commit::{CommitError, Log, Mode, Stored};
use lake_common::manifest::{self, BatchManifest, BatchState, MANIFEST_FORMAT};
use lake_common::parquet_io::{self, FileWriter, WrittenFile};
use lake_common::{Dataset, Lake, LakeConfig};
use lake_testkit::TestS3;
use object_store::ObjectStoreExt;
use object_store::path::Path;

async fn lake() -> (TestS3, Lake) {
    let s3 = TestS3::start().await.unwrap();
    let bucket = s3.new_bucket().await.unwrap();
    let lake = Lake::open(&LakeConfig::from_vars(s3.env(&bucket)).unwrap()).unwrap();
    (s3, lake)
}

/// Writes `chunks` batches of 16 Ki rows of incompressible hex (~0.5 MB each
/// after compression) and checks that nothing is visible before `finish`.
async fn write_noise_file(
    lake: &Lake,
    path: &Path,
    chunks: i64,
) -> (WrittenFile, Vec<RecordBatch>) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("noise", DataType::Utf8, false),
    ]));
    let mut w = FileWriter::create(lake, path.clone(), schema.clone()).unwrap();
    let mut batches = Vec::new();
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    for chunk in 0..chunks {
        let ids: Vec<i64> = (0..16_384).map(|i| chunk * 16_384 + i).collect();
        let noise: Vec<String> = ids
            .iter()
            .map(|_| {
                let mut next = || {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state
                };
                format!(
                    "{:016x}{:016x}{:016x}{:016x}",
                    next(),
                    next(),
                    next(),
                    next()
                )
            })
            .collect();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(ids)),
                Arc::new(StringArray::from(noise)),
            ],
        )
        .unwrap();
        w.write(&batch).await.unwrap();
        batches.push(batch);
    }
    assert!(
        lake.store().head(path).await.is_err(),
        "nothing visible before the upload completes"
    );
    (w.finish().await.unwrap(), batches)
}

#[tokio::test(flavor = "multi_thread")]
async fn parquet_round_trip_with_multipart_upload() {
    let (_s3, lake) = lake().await;
    assert!(
        lake.description().starts_with("s3://test-"),
        "{}",
        lake.description()
    );
    // ~12 MB after compression: several 5 MiB parts.
    let path = Path::from("bronze/events/date=2026-01-01/part-0000000001-0000.parquet");
    let (written, _) = write_noise_file(&lake, &path, 24).await;
    assert!(
        written.bytes > 10 * 1024 * 1024,
        "file is {} bytes",
        written.bytes
    );
    let meta = lake.store().head(&path).await.unwrap();
    assert_eq!(meta.size, written.bytes);
    // A multipart upload's ETag is "<md5>-<parts>".
    assert!(
        meta.e_tag.as_deref().unwrap_or_default().contains('-'),
        "{:?}",
        meta.e_tag
    );
    let bytes = lake.get_bytes(&path).await.unwrap();
    assert_eq!(parquet_io::sha256_hex(&bytes), written.sha256);
    let batches = parquet_io::read_all(&lake, &path).await.unwrap();
    assert_eq!(
        batches.iter().map(RecordBatch::num_rows).sum::<usize>(),
        24 * 16_384
    );
    let first = batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .value(0);
    assert_eq!(first, 0);
}

/// The same writer on a local lake, whose parts are smaller (1 MiB): a file of
/// several parts comes back byte- and row-exact, with the right checksum.
#[tokio::test(flavor = "multi_thread")]
async fn local_lake_file_of_several_parts() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(
        &LakeConfig::from_vars([(
            "LAKE_URL".to_owned(),
            format!("file://{}", dir.path().display()),
        )])
        .unwrap(),
    )
    .unwrap();
    let path = Path::from("bronze/events/date=2026-01-01/part-0000000001-0000.parquet");
    let (written, batches) = write_noise_file(&lake, &path, 8).await;
    assert!(
        written.bytes > 3 * lake.upload_part_bytes() as u64,
        "{} bytes is not several parts",
        written.bytes
    );
    let bytes = lake.get_bytes(&path).await.unwrap();
    assert_eq!(written.bytes, bytes.len() as u64);
    assert_eq!(parquet_io::sha256_hex(&bytes), written.sha256);
    assert_eq!(written.rows, 8 * 16_384);
    let schema = batches[0].schema();
    assert_eq!(
        arrow::compute::concat_batches(&schema, &parquet_io::read_all(&lake, &path).await.unwrap())
            .unwrap(),
        arrow::compute::concat_batches(&schema, &batches).unwrap()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn conditional_create_is_refused_the_second_time() {
    let (_s3, lake) = lake().await;
    let p = Path::from("_smoke/probe.json");
    assert!(
        lake.create_if_absent(&p, Bytes::from_static(b"first"))
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        lake.create_if_absent(&p, Bytes::from_static(b"second"))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        lake.get_bytes(&p).await.unwrap(),
        Bytes::from_static(b"first")
    );

    // The commit protocol on S3: pin once, compare-and-swap on the ETag.
    let m = BatchManifest {
        format: MANIFEST_FORMAT,
        dataset: "bronze/events".into(),
        batch: 1,
        state: BatchState::Pending,
        h_prev: None,
        h: 10,
        xmax: 12,
        snapshot_time: chrono::Utc::now(),
        scan_from: None,
        system_identifier: "1".into(),
        timeline: None,
        wal_lsn: None,
        relfilenode: None,
        drop_captured: false,
        drop_captured_below: None,
        backfill_days: vec![],
        added_columns: vec![],
        claim: lake_common::commit::Claim {
            owner: "a".into(),
            ..Default::default()
        },
        committed_at: None,
        files: vec![],
        supersedes: vec![],
        compacted_days: vec![],
        pruned_days: vec![],
        retained_before: None,
        rows: 0,
    };
    let log = Log::new(lake.clone(), Mode::Conditional, Duration::from_secs(30));
    let path = Dataset::BronzeEvents.manifest(1);
    let a = log.pin(&path, m.clone(), "a").await.unwrap().unwrap();
    let stale_version = {
        let found = log.pin(&path, m.clone(), "b").await.unwrap();
        let found = found.expect_err("the second pin loses");
        assert_eq!(found.entry.claim.owner, "a");
        found.version
    };
    // "a" renews (an update); a takeover with the version read before it is refused.
    a.update(|m| m.rows = 1).await.unwrap();
    let stale = Stored {
        entry: m.clone(),
        version: stale_version,
    };
    let refused = log.take_over(&path, stale, "b").await;
    assert!(
        matches!(refused, Err(CommitError::Conflict { .. })),
        "{refused:?}"
    );
    let committed = a.commit(|m| m.state = BatchState::Committed).await.unwrap();
    let back = manifest::read(&lake, Dataset::BronzeEvents, 1)
        .await
        .unwrap()
        .manifest;
    assert_eq!(back, committed);
    assert_eq!((back.claim.owner.as_str(), back.rows), ("a", 1));
    assert_eq!(back.claim.lease_expires_at, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn conditional_writes_can_be_declared_absent() {
    let s3 = TestS3::start().await.unwrap();
    let bucket = s3.new_bucket().await.unwrap();
    let mut env = s3.env(&bucket);
    env.push(("S3_CONDITIONAL_WRITES".into(), "disabled".into()));
    let lake = Lake::open(&LakeConfig::from_vars(env).unwrap()).unwrap();
    assert!(!lake.capabilities().create_if_absent && !lake.capabilities().update_if_match);
    let err = lake
        .create_if_absent(&Path::from("x"), Bytes::from_static(b"1"))
        .await;
    assert!(err.is_err(), "the store refuses to pretend: {err:?}");
}

/// The exactly-once protocol needs create-if-absent to be atomic: of many
/// concurrent creates of one key, exactly one may succeed.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_creates_of_one_key_have_one_winner() {
    let (_s3, lake) = lake().await;
    for round in 0..20 {
        let p = Path::from(format!("_race/{round}.json"));
        let attempts = (0..16).map(|i| {
            let (lake, p) = (lake.clone(), p.clone());
            tokio::spawn(async move {
                lake.create_if_absent(&p, Bytes::from(format!("{i}")))
                    .await
                    .unwrap()
                    .is_some()
            })
        });
        let mut winners = 0;
        for a in attempts.collect::<Vec<_>>() {
            winners += usize::from(a.await.unwrap());
        }
        assert_eq!(winners, 1, "round {round}: {winners} creates succeeded");
    }
}
