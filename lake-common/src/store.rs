//! The lake root: an object store plus a key prefix.
//!
//! Jobs talk to [`Lake`], never to a concrete store, so the same code runs on
//! Contabo (S3, path-style), a local directory (the embedded default) and the
//! in-memory store of unit tests. [`Lake::capabilities`] says which conditional
//! writes the store enforces, because exactly-once ingestion depends on them.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    PutResult, RetryConfig,
};

use crate::config::{LakeConfig, LakeLocation, S3Config};

/// Which conditional writes the store enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Create-if-absent (`If-None-Match: *`) is refused when the object exists.
    pub create_if_absent: bool,
    /// Compare-and-swap on the ETag (`If-Match`).
    pub update_if_match: bool,
}

/// Errors of building or using the lake store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store could not be built from the configuration.
    #[error("cannot open the lake at {location}: {source}")]
    Open {
        /// Where.
        location: String,
        /// Why.
        source: object_store::Error,
    },
    /// The local lake directory could not be created.
    #[error("cannot create the local lake directory {path}: {source}")]
    LocalDir {
        /// Which directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Upload part size on S3: its minimum for every part but the last. Each part is
/// buffered in memory before it is sent, so the smallest part is the cheapest.
pub const S3_PART_BYTES: usize = 5 * 1024 * 1024;

/// Upload part size of the local and in-memory stores, which have no minimum: a
/// part there is only a write into a staging file, so parts are kept small (a
/// file being written holds the part being filled, one in flight and, right
/// after a row group flush, that row group's parts in memory).
pub const LOCAL_PART_BYTES: usize = 256 * 1024;

/// The lake root every job reads and writes.
#[derive(Debug, Clone)]
pub struct Lake {
    store: Arc<dyn ObjectStore>,
    description: String,
    /// The root as a URL (`s3://bucket/prefix`, `file:///dir`), for naming objects.
    root: String,
    capabilities: Capabilities,
    part_bytes: usize,
    /// The S3 store itself, for what `ObjectStore` cannot do (open uploads).
    s3: Option<S3Uploads>,
}

/// Listing and aborting multipart uploads on S3. object_store neither aborts
/// an upload whose writer was dropped (a killed pod, a fenced run) nor can it
/// list open uploads, and an upload whose `CreateMultipartUpload` answer was
/// lost is known to nobody: each keeps its parts (billed storage) forever.
#[derive(Debug, Clone)]
struct S3Uploads {
    store: Arc<object_store::aws::AmazonS3>,
    /// The lake's prefix inside the bucket (`""` or `a/b/`).
    prefix: String,
    http: reqwest::Client,
}

/// One open multipart upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenUpload {
    /// The object key, relative to the lake root.
    pub path: Path,
    /// The upload id.
    pub upload_id: String,
    /// When it was started (`None`: the store did not say).
    pub initiated: Option<chrono::DateTime<chrono::Utc>>,
}

impl Lake {
    /// Opens the lake described by `config`.
    pub fn open(config: &LakeConfig) -> Result<Self, StoreError> {
        let description = config.to_string();
        let root = config.root_url();
        match &config.location {
            LakeLocation::S3(s3) => {
                let store = build_s3(s3).map_err(|source| StoreError::Open {
                    location: description.clone(),
                    source,
                })?;
                let raw = Arc::new(store);
                let store: Arc<dyn ObjectStore> = if s3.prefix.is_empty() {
                    raw.clone()
                } else {
                    Arc::new(PrefixStore::new(raw.clone(), s3.prefix.as_str()))
                };
                let uploads = S3Uploads {
                    store: raw,
                    prefix: if s3.prefix.is_empty() {
                        String::new()
                    } else {
                        format!("{}/", s3.prefix.trim_end_matches('/'))
                    },
                    http: reqwest::Client::builder()
                        .timeout(s3.timeout)
                        .build()
                        .map_err(|e| StoreError::Open {
                            location: description.clone(),
                            source: object_store::Error::Generic {
                                store: "S3",
                                source: Box::new(e),
                            },
                        })?,
                };
                let cond = s3.conditional_writes;
                Ok(Self {
                    store,
                    description,
                    root: root.clone(),
                    capabilities: Capabilities {
                        create_if_absent: cond,
                        update_if_match: cond,
                    },
                    part_bytes: S3_PART_BYTES,
                    s3: Some(uploads),
                })
            }
            LakeLocation::Local(dir) => {
                std::fs::create_dir_all(dir).map_err(|source| StoreError::LocalDir {
                    path: dir.display().to_string(),
                    source,
                })?;
                let store = LocalFileSystem::new_with_prefix(dir)
                    .map_err(|source| StoreError::Open {
                        location: description.clone(),
                        source,
                    })?
                    // Directories emptied by a backfill or a partition rewrite go too,
                    // so the lake does not fill with empty partitions.
                    .with_automatic_cleanup(true);
                Ok(Self {
                    store: Arc::new(store),
                    description,
                    root: root.clone(),
                    // The local store creates files with a hard link (atomic, refused
                    // if present) but has no ETag compare-and-swap.
                    capabilities: Capabilities {
                        create_if_absent: true,
                        update_if_match: false,
                    },
                    part_bytes: LOCAL_PART_BYTES,
                    s3: None,
                })
            }
            LakeLocation::Memory => Ok(Self::in_memory()),
        }
    }

    /// [`Lake::open`] for a run that writes nothing (`--dry-run`): a local lake
    /// directory that does not exist yet is not created — the run sees the
    /// empty lake it would find, held in memory.
    pub fn open_for_dry_run(config: &LakeConfig) -> Result<Self, StoreError> {
        if let LakeLocation::Local(dir) = &config.location
            && !dir.exists()
        {
            tracing::info!(path = %dir.display(), "The lake directory does not exist yet; a dry run does not create it");

            return Ok(Self {
                description: format!("{config} (does not exist yet)"),
                root: config.root_url(),
                ..Self::in_memory()
            });
        }
        Self::open(config)
    }

    /// A fresh in-memory lake (unit tests of pure logic only).
    pub fn in_memory() -> Self {
        Self {
            store: Arc::new(InMemory::new()),
            description: "memory://".into(),
            root: "memory://".into(),
            capabilities: Capabilities {
                create_if_absent: true,
                update_if_match: true,
            },
            part_bytes: LOCAL_PART_BYTES,
            s3: None,
        }
    }

    /// The same lake with every write going through `fence`
    /// ([`crate::commit::fence::FencedStore`]).
    pub fn fenced(&self, fence: crate::commit::fence::Fence) -> Self {
        Self {
            store: Arc::new(crate::commit::fence::FencedStore::new(
                self.store.clone(),
                fence,
            )),
            ..self.clone()
        }
    }

    /// The object store, rooted at the lake root.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Human-readable location, without secrets (`s3://bucket via https://endpoint`).
    pub fn description(&self) -> &str {
        &self.description
    }

    /// The full address of `path` (`s3://bucket/prefix/_runs/…`), for messages that
    /// name an object a person will look up.
    pub fn url_of(&self, path: &Path) -> String {
        format!("{}/{path}", self.root.trim_end_matches('/'))
    }

    /// The multipart uploads open under `prefix` (S3 `ListMultipartUploads`,
    /// through a presigned request; empty on stores without multipart uploads).
    pub async fn open_uploads(&self, prefix: &Path) -> object_store::Result<Vec<OpenUpload>> {
        let Some(s3) = &self.s3 else {
            return Ok(Vec::new());
        };
        let generic = |what: String| object_store::Error::Generic {
            store: "S3",
            source: what.into(),
        };
        let full = format!("{}{}/", s3.prefix, prefix.as_ref().trim_end_matches('/'));
        let mut out = Vec::new();
        let mut markers: Option<(String, String)> = None;
        loop {
            let mut query = vec![
                ("uploads".to_owned(), String::new()),
                ("prefix".to_owned(), full.clone()),
            ];
            if let Some((key, id)) = &markers {
                query.push(("key-marker".to_owned(), key.clone()));
                query.push(("upload-id-marker".to_owned(), id.clone()));
            }
            let url = object_store::signer::Signer::signed_url_opts(
                s3.store.as_ref(),
                reqwest::Method::GET,
                &Path::from(""),
                Duration::from_secs(300),
                &object_store::signer::SignedUrlOptions::default().with_query(query),
            )
            .await?;
            let response = s3.http.get(url).send().await.map_err(|e| {
                generic(format!(
                    "listing the open multipart uploads under {full}: {e}"
                ))
            })?;
            let status = response.status();
            let body = response.text().await.map_err(|e| {
                generic(format!(
                    "listing the open multipart uploads under {full}: {e}"
                ))
            })?;
            if !status.is_success() {
                return Err(generic(format!(
                    "listing the open multipart uploads under {full}: {status}: {}",
                    body.chars().take(300).collect::<String>()
                )));
            }
            let page: ListUploads = quick_xml::de::from_str(&body)
                .map_err(|e| generic(format!("an unreadable ListMultipartUploads answer ({e})")))?;
            for u in page.uploads {
                let Some(rel) = u.key.strip_prefix(s3.prefix.as_str()) else {
                    continue;
                };
                out.push(OpenUpload {
                    path: Path::from(rel),
                    upload_id: u.upload_id,
                    initiated: u
                        .initiated
                        .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
                        .map(|t| t.to_utc()),
                });
            }
            match (
                page.is_truncated,
                page.next_key_marker,
                page.next_upload_id_marker,
            ) {
                (true, Some(k), Some(i)) if markers.as_ref() != Some(&(k.clone(), i.clone())) => {
                    markers = Some((k, i));
                }
                _ => return Ok(out),
            }
        }
    }

    /// Aborts every multipart upload open under `prefix` (a dataset's folder):
    /// uploads of runs that died, were fenced, or never learnt their upload id
    /// (a lost `CreateMultipartUpload` answer). Only a run that holds the
    /// dataset (its lease or advisory lock) calls it, before its own uploads,
    /// so every upload it finds belongs to no live writer. Returns how many it
    /// aborted; a no-op on stores without multipart uploads.
    pub async fn abort_open_uploads(&self, prefix: &Path) -> object_store::Result<usize> {
        if self.s3.is_none() {
            return Ok(0);
        }
        let open = self.open_uploads(prefix).await?;
        for u in &open {
            self.abort_upload(u).await?;
            tracing::warn!(path = %u.path, upload_id = %u.upload_id, "Aborted a multipart upload a failed run left open");
        }
        Ok(open.len())
    }

    /// Aborts one open multipart upload (its parts are deleted).
    pub async fn abort_upload(&self, upload: &OpenUpload) -> object_store::Result<()> {
        let Some(s3) = &self.s3 else {
            return Ok(());
        };
        let key = Path::from(format!("{}{}", s3.prefix, upload.path));
        object_store::multipart::MultipartStore::abort_multipart(
            s3.store.as_ref(),
            &key,
            &upload.upload_id,
        )
        .await
    }

    /// Bytes per part of a multipart upload (files up to this size are one PUT).
    pub fn upload_part_bytes(&self) -> usize {
        self.part_bytes
    }

    /// The conditional writes the store enforces.
    pub fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    /// Creates `path` only if it does not exist yet. Returns `Ok(None)` when it
    /// already existed (the caller lost a race), never overwriting it.
    pub async fn create_if_absent(
        &self,
        path: &Path,
        bytes: Bytes,
    ) -> object_store::Result<Option<PutResult>> {
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .store
            .put_opts(path, PutPayload::from(bytes), opts)
            .await
        {
            Ok(r) => Ok(Some(r)),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Overwrites `path` unconditionally (atomic on S3 and on the local store).
    pub async fn put(&self, path: &Path, bytes: Bytes) -> object_store::Result<PutResult> {
        self.store.put(path, PutPayload::from(bytes)).await
    }

    /// Deletes `paths` (bulk requests where the store has them: S3's
    /// `DeleteObjects` takes 1,000 keys per request). An object already gone
    /// counts as deleted, so a clean-up interrupted half-way is simply run again.
    /// Returns how many paths were deleted.
    pub async fn delete_all(&self, paths: Vec<Path>) -> object_store::Result<usize> {
        use futures::{StreamExt, TryStreamExt};
        if paths.is_empty() {
            return Ok(0);
        }
        let stream = futures::stream::iter(paths.into_iter().map(Ok)).boxed();
        self.store
            .delete_stream(stream)
            .or_else(|e| async move {
                match e {
                    object_store::Error::NotFound { path, .. } => Ok(Path::from(path)),
                    e => Err(e),
                }
            })
            .try_fold(0, |n, _| async move { Ok(n + 1) })
            .await
    }

    /// Reads a whole (small) object.
    pub async fn get_bytes(&self, path: &Path) -> object_store::Result<Bytes> {
        self.store.get(path).await?.bytes().await
    }
}

fn build_s3(s3: &S3Config) -> object_store::Result<object_store::aws::AmazonS3> {
    let mut builder = AmazonS3Builder::new()
        .with_bucket_name(&s3.bucket)
        .with_region(&s3.region)
        .with_access_key_id(&s3.access_key_id)
        .with_secret_access_key(s3.secret_access_key.expose())
        // Contabo (Ceph RGW) only serves path-style requests.
        .with_virtual_hosted_style_request(false)
        .with_conditional_put(if s3.conditional_writes {
            S3ConditionalPut::ETagMatch
        } else {
            S3ConditionalPut::Disabled
        })
        .with_client_options(
            ClientOptions::new()
                .with_timeout(s3.timeout)
                .with_connect_timeout(Duration::from_secs(5).min(s3.timeout)),
        )
        .with_retry(RetryConfig {
            max_retries: s3.max_retries,
            // Bounded by attempts, then by time: a dead endpoint fails the run in
            // well under a minute with the defaults instead of hanging it.
            retry_timeout: s3.timeout * (s3.max_retries as u32 + 1),
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(5),
                base: 2.0,
            },
        });
    if let Some(endpoint) = &s3.endpoint {
        let allow_http = endpoint.scheme() == "http";
        builder = builder
            .with_endpoint(endpoint.as_str().trim_end_matches('/'))
            .with_allow_http(allow_http);
    }
    builder.build()
}

/// The part of a `ListMultipartUploadsResult` the sweep reads.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListUploads {
    #[serde(default)]
    is_truncated: bool,
    next_key_marker: Option<String>,
    next_upload_id_marker: Option<String>,
    #[serde(default, rename = "Upload")]
    uploads: Vec<ListedUpload>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListedUpload {
    key: String,
    upload_id: String,
    initiated: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn create_if_absent_refuses_second_create_in_memory() {
        let lake = Lake::in_memory();
        let p = Path::from("x/_manifests/0000000001.json");
        assert!(
            lake.create_if_absent(&p, Bytes::from_static(b"a"))
                .await
                .unwrap()
                .is_some()
        );
        assert!(
            lake.create_if_absent(&p, Bytes::from_static(b"b"))
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(lake.get_bytes(&p).await.unwrap(), Bytes::from_static(b"a"));
    }

    #[tokio::test]
    async fn local_lake_is_created_and_refuses_second_create() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("nested/lake");
        let lake = Lake::open(&LakeConfig::local(&root)).unwrap();
        assert!(root.is_dir());
        assert!(lake.capabilities().create_if_absent && !lake.capabilities().update_if_match);
        let p = Path::from("a/b.json");
        assert!(
            lake.create_if_absent(&p, Bytes::from_static(b"1"))
                .await
                .unwrap()
                .is_some()
        );
        assert!(
            lake.create_if_absent(&p, Bytes::from_static(b"2"))
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(std::fs::read(root.join("a/b.json")).unwrap(), b"1");
    }
}
