//! The hot-key cache: the conformance suite through it, hits, expiry and invalidation.

use std::sync::Arc;
use std::time::Duration;

use quiver_online::{conformance, CachedStore, EmbeddedStore, OnlineStore, OnlineWrite};

use crate::sample_row;

#[tokio::test]
async fn conformance_suite_passes_through_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let inner = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let store = CachedStore::new(inner, Duration::from_secs(60), 1 << 20);
    conformance::run_all(&store).await;
    conformance::run_all(&store).await;
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
