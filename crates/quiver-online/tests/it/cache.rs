//! The hot-key cache: the conformance suite through it, hits, expiry, invalidation and
//! its ordering against a concurrent miss.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use quiver_online::{
    conformance, CachedStore, EmbeddedStore, FieldId, OnlineStore, OnlineWrite, WriteStats,
};
use tokio::sync::oneshot;

use crate::sample_row;

#[tokio::test]
async fn conformance_suite_passes_through_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let inner = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let store: Arc<dyn OnlineStore> =
        Arc::new(CachedStore::new(inner, Duration::from_secs(60), 1 << 20));
    conformance::run_all(store.clone()).await;
    conformance::run_all(store.clone()).await;
    let stats = store.cache_stats().unwrap();
    assert!(stats.misses > 0, "{stats:?}");
}

#[tokio::test]
async fn cached_cells_expire_and_writes_through_the_cache_invalidate() {
    let dir = tempfile::tempdir().unwrap();
    let inner = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let cached = CachedStore::new(inner.clone(), Duration::from_millis(200), 1 << 20);
    let key: &[u8] = b"p\0e\0k1";
    let field = [7u8; 8];
    let v1 = sample_row(100, 1, 0);
    let v2 = sample_row(200, 1, 1);
    let v3 = sample_row(300, 1, 0);
    inner
        .write(&[OnlineWrite {
            key,
            field,
            row: &v1,
        }])
        .await
        .unwrap();
    assert_eq!(
        cached.read(&[key], &[field]).await.unwrap()[0],
        Some(v1.clone())
    );
    assert_eq!(cached.cache_stats().unwrap().misses, 1);
    // Another writer (straight to the store): the cache still serves its copy…
    inner
        .write(&[OnlineWrite {
            key,
            field,
            row: &v2,
        }])
        .await
        .unwrap();
    assert_eq!(
        cached.read(&[key], &[field]).await.unwrap()[0],
        Some(v1.clone())
    );
    assert_eq!(cached.cache_stats().unwrap().hits, 1);
    // …until its entry is older than the cache ttl, when the store is read again.
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        cached.read(&[key], &[field]).await.unwrap()[0],
        Some(v2.clone())
    );
    // A write through the cache is read back at once.
    cached
        .write(&[OnlineWrite {
            key,
            field,
            row: &v3,
        }])
        .await
        .unwrap();
    assert_eq!(cached.read(&[key], &[field]).await.unwrap()[0], Some(v3));
    // Absence is cached too, and bounded memory evicts rather than grows.
    let small = CachedStore::new(inner.clone(), Duration::from_secs(60), 4096);
    let keys: Vec<Vec<u8>> = (0..1000)
        .map(|i| format!("p\0e\0{i}").into_bytes())
        .collect();
    let refs: Vec<&[u8]> = keys.iter().map(|k| k.as_slice()).collect();
    let cells = small.read(&refs, &[field]).await.unwrap();
    assert!(cells.iter().all(|c| c.is_none()));
    let again = small.read(&refs, &[field]).await.unwrap();
    assert!(again.iter().all(|c| c.is_none()));
    let s = small.cache_stats().unwrap();
    assert!(
        s.misses > 1000,
        "a 4 KiB cache cannot hold 1000 cells: {s:?}"
    );
}

/// A store whose first `read` pauses after fetching from the inner store: it reports the
/// fetch on `fetched` and returns only when `release` fires, so a test can run a write
/// between a cache miss's fetch and its insert.
struct PausedRead {
    inner: Arc<EmbeddedStore>,
    gate: Mutex<Option<(oneshot::Sender<()>, oneshot::Receiver<()>)>>,
}

#[async_trait]
impl OnlineStore for PausedRead {
    async fn write(&self, rows: &[OnlineWrite<'_>]) -> quiver_online::Result<WriteStats> {
        self.inner.write(rows).await
    }

    async fn read(
        &self,
        keys: &[&[u8]],
        fields: &[FieldId],
    ) -> quiver_online::Result<Vec<Option<Vec<u8>>>> {
        let cells = self.inner.read(keys, fields).await?;
        let gate = self.gate.lock().unwrap().take();
        if let Some((fetched, release)) = gate {
            fetched.send(()).unwrap();
            release.await.unwrap();
        }
        Ok(cells)
    }

    async fn delete_older_than(&self, field: FieldId, cutoff: i64) -> quiver_online::Result<u64> {
        self.inner.delete_older_than(field, cutoff).await
    }

    async fn merge_tiles(
        &self,
        merges: &[quiver_online::KeyMerge<'_>],
        merger: &dyn quiver_online::TileMerger,
    ) -> quiver_online::Result<quiver_online::MergeStats> {
        self.inner.merge_tiles(merges, merger).await
    }

    async fn read_tiles(
        &self,
        keys: &[&[u8]],
        view: FieldId,
        starts: &[i64],
    ) -> quiver_online::Result<quiver_online::TileCells> {
        self.inner.read_tiles(keys, view, starts).await
    }

    async fn stream_positions(
        &self,
        keys: &[&[u8]],
        view: FieldId,
        partition: &[u8],
    ) -> quiver_online::Result<Vec<Option<u128>>> {
        self.inner.stream_positions(keys, view, partition).await
    }

    async fn delete_tiles_before(&self, view: FieldId, cutoff: i64) -> quiver_online::Result<u64> {
        self.inner.delete_tiles_before(view, cutoff).await
    }

    fn capabilities(&self) -> quiver_online::Capabilities {
        self.inner.capabilities()
    }

    fn backend(&self) -> &'static str {
        "paused"
    }
}

#[tokio::test]
async fn a_write_during_a_miss_is_not_hidden_by_the_miss_inserting_the_old_cell() {
    let dir = tempfile::tempdir().unwrap();
    let embedded = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let (fetched_tx, fetched_rx) = oneshot::channel();
    let (release_tx, release_rx) = oneshot::channel();
    let inner = Arc::new(PausedRead {
        inner: embedded,
        gate: Mutex::new(Some((fetched_tx, release_rx))),
    });
    let cached = CachedStore::new(inner, Duration::from_secs(3600), 1 << 20);
    let key: &[u8] = b"p\0e\0k1";
    let other: &[u8] = b"p\0e\0k2";
    let field = [7u8; 8];
    let v1 = sample_row(100, 1, 0);
    let v2 = sample_row(200, 1, 1);
    let w1 = sample_row(100, 1, 1);
    cached
        .write(&[
            OnlineWrite {
                key,
                field,
                row: &v1,
            },
            OnlineWrite {
                key: other,
                field,
                row: &w1,
            },
        ])
        .await
        .unwrap();
    // A miss fetches v1 (and the other key), then pauses before caching; meanwhile a write
    // through the cache stores v2 and returns.
    let (both, fields) = ([key, other], [field]);
    let (missed, ()) = tokio::join!(cached.read(&both, &fields), async {
        fetched_rx.await.unwrap();
        cached
            .write(&[OnlineWrite {
                key,
                field,
                row: &v2,
            }])
            .await
            .unwrap();
        release_tx.send(()).unwrap();
    });
    // The paused read began before the write returned: either value is correct for it.
    let missed = missed.unwrap();
    assert!(missed[0] == Some(v1.clone()) || missed[0] == Some(v2.clone()));
    assert_eq!(missed[1], Some(w1.clone()));
    // A read that starts after the write returned sees it (read-your-writes), now and on
    // every read within the cache ttl.
    for round in 0..3 {
        let cells = cached.read(&both, &fields).await.unwrap();
        assert_eq!(cells[0], Some(v2.clone()), "read {round} after the write");
        assert_eq!(
            cells[1],
            Some(w1.clone()),
            "read {round} of the untouched key"
        );
    }
    // The untouched key and, after its first fetch, the written one are served from the
    // cache: the race costs misses, never correctness.
    let stats = cached.cache_stats().unwrap();
    assert!(stats.hits >= 4, "{stats:?}");
}
