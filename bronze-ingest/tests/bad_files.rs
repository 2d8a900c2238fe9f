//! Bad files in bronze seen by bronze-ingest itself (#19 item 7): a manifest
//! that does not parse stops the dataset with a line naming it, and nothing is
//! overwritten, deleted or committed after it; `--verify` names a data file that
//! is not what its manifest lists.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod support;

use bytes::Bytes;
use lake_common::Dataset;
use object_store::path::Path;
use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_manifest_that_does_not_parse_stops_its_dataset_and_is_kept() {
    let h = Harness::new().await;
    generate_recent(&h.pg, 100, 71).await;
    h.run_ok(&[]);
    let lake = h.lake();
    let manifest = Path::from("bronze/events/_manifests/0000000001.json");
    let broken = Bytes::from_static(b"{\"batch\": 1, ");
    lake.put(&manifest, broken.clone()).await.unwrap();
    generate_recent(&h.pg, 20, 72).await;

    let out = h.run(&[]);
    assert!(matches!(out.status.code(), Some(1..=2)), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("bronze/events/_manifests/0000000001.json is not a valid batch manifest")
            && err.contains("restore it"),
        "{err}"
    );
    assert_eq!(
        lake.get_bytes(&manifest).await.unwrap(),
        broken,
        "not overwritten"
    );
    assert!(
        lake.get_bytes(&Path::from("bronze/events/_manifests/0000000002.json"))
            .await
            .is_err(),
        "no batch after it"
    );
    // The outbox is independent: it went on.
    assert_eq!(h.manifests(Dataset::BronzeOutbox).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_names_a_data_file_that_is_not_what_its_manifest_lists() {
    let h = Harness::new().await;
    generate_recent(&h.pg, 100, 73).await;
    h.run_ok(&[]);
    let lake = h.lake();
    let file = h.manifests(Dataset::BronzeEvents).await[0].files[0]
        .path
        .clone();
    let path = Path::from(file.as_str());
    let size = lake.get_bytes(&path).await.unwrap().len();
    let garbage = Bytes::from(vec![0x5a; size]);
    lake.put(&path, garbage.clone()).await.unwrap();

    let out = h.run(&["--verify", "--dataset", "events", "--last-days", "7"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "bronze file {file} is not the file bronze committed"
        )) && err.contains("SHA-256 differs")
            && err.contains("restore it"),
        "names the file and the fix: {err}"
    );
    assert_eq!(
        lake.get_bytes(&path).await.unwrap(),
        garbage,
        "left as found"
    );

    // A valid Parquet file of another size (an outbox file copied over it)
    // would read fine: its size gives it away.
    let outbox = h.manifests(Dataset::BronzeOutbox).await[0].files[0]
        .path
        .clone();
    let other = lake.get_bytes(&Path::from(outbox.as_str())).await.unwrap();
    assert_ne!(other.len(), size);
    lake.put(&path, other).await.unwrap();
    let out = h.run(&["--verify", "--dataset", "events", "--last-days", "7"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!(
            "bronze file {file} is not the file bronze committed"
        )),
        "{}",
        stderr(&out)
    );
}
