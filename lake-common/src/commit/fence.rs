//! Fencing: a run that may have lost its claim on a log entry stops writing.
//!
//! A [`Fence`] is raised when the owner can no longer prove it holds its lease
//! (the deadline passed without a confirmed renewal, another run's write was
//! found on the entry, the advisory lock's session died). From then on every
//! write through a [`FencedStore`] is refused, and every write in flight is cut
//! off, so a stalled run that wakes up after a takeover cannot write over the new
//! owner's files. The deadline is watched by a thread of its own, so a busy async
//! runtime cannot delay the fence; a frozen process (SIGSTOP) checks the deadline
//! again before each request when it wakes up.

use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, UploadPart,
};
use tokio::sync::Notify;

/// The error a fenced write fails with (inside `object_store::Error::Generic`).
#[derive(Debug, Clone, thiserror::Error)]
#[error("this run no longer holds its claim on the log entry ({0}); it stopped writing")]
pub struct Fenced(pub String);

#[derive(Debug)]
struct State {
    fenced: AtomicBool,
    reason: Mutex<Option<String>>,
    /// Monotonic deadline in microseconds after `base`; `u64::MAX`: none.
    deadline: AtomicU64,
    base: Instant,
    notify: Notify,
    /// Set when the owner is done: the watchdog thread exits.
    closed: AtomicBool,
}

/// Raised once, never lowered. Cheap to clone; all clones share the state.
#[derive(Debug, Clone)]
pub struct Fence(Arc<State>);

/// Two fences are equal when they are the same fence (clones of one another).
impl PartialEq for Fence {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Default for Fence {
    fn default() -> Self {
        Self::new()
    }
}

impl Fence {
    /// A fence without a deadline (raised only by [`Fence::raise`]).
    pub fn new() -> Self {
        Self(Arc::new(State {
            fenced: AtomicBool::new(false),
            reason: Mutex::new(None),
            deadline: AtomicU64::new(u64::MAX),
            base: Instant::now(),
            notify: Notify::new(),
            closed: AtomicBool::new(false),
        }))
    }

    /// Raises the fence (the first reason is kept).
    pub fn raise(&self, reason: impl Into<String>) {
        {
            let mut r = self.0.reason.lock().unwrap_or_else(|e| e.into_inner());
            if r.is_none() {
                *r = Some(reason.into());
            }
        }
        self.0.fenced.store(true, Ordering::SeqCst);
        self.0.notify.notify_waiters();
    }

    /// Sets the instant after which the fence raises itself.
    pub fn set_deadline(&self, at: Instant) {
        let micros = at.saturating_duration_since(self.0.base).as_micros();
        self.0
            .deadline
            .store(u64::try_from(micros).unwrap_or(u64::MAX), Ordering::SeqCst);
    }

    fn past_deadline(&self) -> bool {
        let now = self.0.base.elapsed().as_micros();
        u128::from(self.0.deadline.load(Ordering::SeqCst)) <= now
    }

    /// Whether the fence is raised (checking the deadline too).
    pub fn is_raised(&self) -> bool {
        if !self.0.fenced.load(Ordering::SeqCst) && self.past_deadline() {
            self.raise("its lease ran out before a renewal was confirmed");
        }
        self.0.fenced.load(Ordering::SeqCst)
    }

    /// `Err` once raised.
    pub fn check(&self) -> Result<(), Fenced> {
        if self.is_raised() {
            return Err(Fenced(self.reason()));
        }
        Ok(())
    }

    /// Why it was raised.
    pub fn reason(&self) -> String {
        self.0
            .reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_default()
    }

    /// Completes when the fence is raised.
    pub async fn raised(&self) {
        loop {
            let notified = self.0.notify.notified();
            if self.is_raised() {
                return;
            }
            notified.await;
        }
    }

    /// Starts the watchdog thread that raises the fence at its deadline, even
    /// while the async runtime is busy. It ends when [`Fence::close`] is called.
    pub fn watch_deadline(&self) {
        let fence = self.clone();
        let spawned = std::thread::Builder::new()
            .name("lease-watchdog".into())
            .spawn(move || {
                while !fence.0.closed.load(Ordering::SeqCst) && !fence.is_raised() {
                    std::thread::sleep(Duration::from_millis(50));
                }
            });
        if let Err(e) = spawned {
            // Without the thread the deadline is still checked before every write.
            tracing::warn!(error = %e, "Could not start the lease watchdog thread");
        }
    }

    /// The owner is done (committed or released): stops the watchdog.
    pub fn close(&self) {
        self.0.closed.store(true, Ordering::SeqCst);
        self.0.deadline.store(u64::MAX, Ordering::SeqCst);
    }

    fn error(&self) -> object_store::Error {
        object_store::Error::Generic {
            store: "fence",
            source: Box::new(Fenced(self.reason())),
        }
    }

    /// Runs `fut` unless the fence is raised before or while it runs.
    async fn guard<T>(
        &self,
        fut: impl Future<Output = object_store::Result<T>>,
    ) -> object_store::Result<T> {
        if self.is_raised() {
            return Err(self.error());
        }
        tokio::select! {
            biased;
            _ = self.raised() => Err(self.error()),
            r = fut => r,
        }
    }
}

/// True if `err` (or its source chain) is a fenced write.
pub fn is_fenced(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if e.is::<Fenced>() {
            return true;
        }
        cur = e.source();
    }
    false
}

/// An [`ObjectStore`] whose writes stop when the fence is raised. Reads pass.
#[derive(Debug)]
pub struct FencedStore {
    inner: Arc<dyn ObjectStore>,
    fence: Fence,
}

impl FencedStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn ObjectStore>, fence: Fence) -> Self {
        Self { inner, fence }
    }
}

impl fmt::Display for FencedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fenced({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for FencedStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.fence
            .guard(self.inner.put_opts(location, payload, opts))
            .await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let inner = self
            .fence
            .guard(self.inner.put_multipart_opts(location, opts))
            .await?;
        Ok(Box::new(FencedUpload {
            inner,
            fence: self.fence.clone(),
        }))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let fence = self.fence.clone();
        let checked = locations
            .map(move |l| match fence.check() {
                Ok(()) => l,
                Err(_) => Err(fence.error()),
            })
            .boxed();
        // Raced against the fence like every other write: once it is raised the
        // bulk requests in flight are dropped and none is retried. A late delete
        // is not harmless the way a late identical PUT is: it could remove a
        // file a takeover has since written under the same name and committed.
        let (cut, tail) = (self.fence.clone(), self.fence.clone());
        self.inner
            .delete_stream(checked)
            .take_until(async move { cut.raised().await })
            .chain(
                futures::stream::once(async move { tail.is_raised().then(|| Err(tail.error())) })
                    .filter_map(futures::future::ready),
            )
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.fence
            .guard(self.inner.copy_opts(from, to, options))
            .await
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.fence
            .guard(self.inner.rename_opts(from, to, options))
            .await
    }
}

/// A multipart upload whose parts and completion stop at the fence; aborting
/// is always allowed (it only removes what the run wrote).
#[derive(Debug)]
struct FencedUpload {
    inner: Box<dyn MultipartUpload>,
    fence: Fence,
}

#[async_trait]
impl MultipartUpload for FencedUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let fence = self.fence.clone();
        let part = self.inner.put_part(data);
        Box::pin(async move { fence.guard(part).await })
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let fence = self.fence.clone();
        fence.guard(self.inner.complete()).await
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.inner.abort().await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use object_store::ObjectStoreExt;
    use object_store::memory::InMemory;

    #[tokio::test]
    async fn writes_stop_at_the_fence_and_reads_go_on() {
        let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let fence = Fence::new();
        let store = FencedStore::new(inner.clone(), fence.clone());
        let p = Path::from("a");
        store.put(&p, PutPayload::from_static(b"1")).await.unwrap();
        fence.raise("taken over by run B");
        let err = store
            .put(&p, PutPayload::from_static(b"2"))
            .await
            .unwrap_err();
        assert!(is_fenced(&err), "{err}");
        assert!(err.to_string().contains("taken over by run B"), "{err}");
        assert!(store.put_multipart(&Path::from("b")).await.is_err());
        assert_eq!(store.get(&p).await.unwrap().bytes().await.unwrap(), "1");
    }

    #[tokio::test]
    async fn a_passed_deadline_raises_the_fence_without_the_runtime() {
        let fence = Fence::new();
        fence.set_deadline(Instant::now() + Duration::from_millis(100));
        fence.watch_deadline();
        assert!(fence.check().is_ok());
        // Block this thread (as a CPU-bound fold would): the watchdog still fires.
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            fence.0.fenced.load(Ordering::SeqCst),
            "raised by the watchdog"
        );
        assert!(fence.check().unwrap_err().0.contains("lease ran out"));
        fence.close();
    }

    #[tokio::test]
    async fn an_upload_in_flight_is_cut_off_when_the_fence_rises() {
        let fence = Fence::new();
        let f2 = fence.clone();
        let never = async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<(), object_store::Error>(())
        };
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            f2.raise("lost");
        });
        let started = Instant::now();
        let err = fence.guard(never).await.unwrap_err();
        assert!(is_fenced(&err));
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
