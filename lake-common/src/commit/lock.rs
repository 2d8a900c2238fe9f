//! The PostgreSQL advisory lock of the no-conditional-writes mode.
//!
//! Where the store cannot refuse a second create or a stale update, runs of one
//! table serialise on a session-level advisory lock held for the whole run, one
//! key per (job, table): bronze events, bronze outbox and each silver shard have
//! their own, so bronze never waits behind silver. The session is pinged every
//! few seconds; if it dies (server restart, network partition) the run is
//! fenced, because another run may now hold the lock. What this does not cover
//! (two databases, PgBouncer in transaction mode) is in docs/commit-protocol.md.

use std::time::Duration;

use deadpool_postgres::Object;
use tokio::task::JoinHandle;

use super::fence::Fence;

/// How often the lock's session is checked.
const PING_EVERY: Duration = Duration::from_secs(2);

/// The two 32-bit keys of a lock name (`pg_try_advisory_lock(int, int)`):
/// a fixed namespace for the lake and a stable hash of the name (FNV-1a).
pub fn lock_keys(name: &str) -> (i32, i32) {
    const NAMESPACE: i32 = 0x524F_4253; // "ROBS"
    let mut h: u32 = 0x811C_9DC5;
    for b in name.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    (NAMESPACE, h as i32)
}

/// A held advisory lock. Dropping it ends the session's hold (the connection
/// is discarded, not returned to the pool, so the lock cannot linger).
#[derive(Debug)]
pub struct AdvisoryLock {
    name: String,
    watcher: Option<JoinHandle<()>>,
}

/// How long a held lock is asked for again before another run is taken to
/// hold it (see [`AdvisoryLock::try_acquire`]).
pub const RELEASE_GRACE: Duration = Duration::from_secs(2);

impl AdvisoryLock {
    /// Tries to take the lock `name` on `conn` (a connection of its own, held
    /// until the lock is dropped). `Ok(None)`: another session holds it. While
    /// held, a dead session raises `fence`.
    pub async fn try_acquire(
        conn: Object,
        name: &str,
        fence: Fence,
    ) -> Result<Option<Self>, tokio_postgres::Error> {
        // Detached from the pool: dropping it closes the session, and the lock with it.
        let conn = Object::take(conn);
        let (a, b) = lock_keys(name);
        // A run that just ended may still hold it for a moment: its process is
        // gone, but the server ends its session (and the lock) only when it sees
        // the connection close. A Job's immediate retry must not take that for
        // a rival, so a held lock is asked for again for up to RELEASE_GRACE.
        let started = std::time::Instant::now();
        loop {
            let got: bool = conn
                .query_one("SELECT pg_try_advisory_lock($1, $2)", &[&a, &b])
                .await?
                .get(0);
            if got {
                break;
            }
            if started.elapsed() >= RELEASE_GRACE {
                return Ok(None);
            }
            tokio::time::sleep(RELEASE_GRACE / 10).await;
        }
        let lock_name = name.to_owned();
        let watcher = tokio::spawn(async move {
            loop {
                tokio::time::sleep(PING_EVERY).await;
                let alive = tokio::time::timeout(PING_EVERY, conn.simple_query("SELECT 1")).await;
                if !matches!(alive, Ok(Ok(_))) {
                    fence.raise(format!(
                        "the PostgreSQL session holding the advisory lock {lock_name} died"
                    ));
                    return;
                }
            }
        });
        Ok(Some(Self {
            name: name.to_owned(),
            watcher: Some(watcher),
        }))
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for AdvisoryLock {
    fn drop(&mut self) {
        // Aborting drops the task's connection (detached from the pool), which
        // closes the session and with it the lock.
        if let Some(w) = self.watcher.take() {
            w.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_and_distinct_per_table() {
        assert_eq!(
            lock_keys("bronze-ingest/bronze/events"),
            lock_keys("bronze-ingest/bronze/events")
        );
        assert_ne!(
            lock_keys("bronze-ingest/bronze/events"),
            lock_keys("bronze-ingest/bronze/outbox")
        );
        assert_eq!(lock_keys("x").0, 0x524F_4253);
    }
}
