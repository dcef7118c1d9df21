//! A hot-key read cache in front of any [`OnlineStore`] (`serving: { cache_ttl: 5s }`).
//!
//! It caches cells — the stored bytes of one (entity key, field), or their absence —
//! for at most `ttl`, in a memory-bounded map (quick_cache, weighted by bytes, evicting
//! cold entries first). It never changes what a status means: statuses are computed by
//! the reader from the row's own timestamps at request time, so a cached row turns
//! `OUTSIDE_TTL` exactly when a stored one would. What it changes is how soon a newer
//! row written by *another* process is seen: at most `ttl` later. Writes through the
//! cache invalidate the cells they touch, so a process reads its own writes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use quick_cache::sync::Cache;
use quick_cache::Weighter;

use crate::{CacheStats, FieldId, OnlineStore, OnlineWrite, Result, WriteStats};

/// The cache key: a 128-bit hash of the entity key and the field. The entry keeps the
/// full key and a hit is checked against it, so a hash collision is a miss, never a
/// wrong value.
type Slot = (u128, FieldId);

#[derive(Clone)]
struct Entry {
    key: Arc<[u8]>,
    cell: Option<Arc<[u8]>>,
    at: Instant,
}

#[derive(Clone)]
struct Bytes;

impl Weighter<Slot, Entry> for Bytes {
    fn weight(&self, _: &Slot, e: &Entry) -> u64 {
        (e.key.len() + e.cell.as_ref().map_or(0, |c| c.len()) + 64) as u64
    }
}

/// An [`OnlineStore`] with a bounded read cache in front.
pub struct CachedStore {
    inner: Arc<dyn OnlineStore>,
    ttl: Duration,
    cache: Cache<Slot, Entry, Bytes>,
    hits: AtomicU64,
    misses: AtomicU64,
}

fn slot(key: &[u8], field: &FieldId) -> Slot {
    (xxhash_rust::xxh3::xxh3_128(key), *field)
}

impl CachedStore {
    /// Caches reads of `inner` for `ttl`, in at most `max_bytes` of memory.
    pub fn new(inner: Arc<dyn OnlineStore>, ttl: Duration, max_bytes: u64) -> Self {
        // quick_cache sizes its shards from an estimate of the item count.
        let estimate = (max_bytes / 512).clamp(16, 1 << 24) as usize;
        CachedStore {
            inner,
            ttl,
            cache: Cache::with_weighter(estimate, max_bytes, Bytes),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn lookup(&self, key: &[u8], field: &FieldId, now: Instant) -> Option<Option<Vec<u8>>> {
        let e = self.cache.get(&slot(key, field))?;
        if &*e.key != key || now.duration_since(e.at) >= self.ttl {
            return None;
        }
        Some(e.cell.as_ref().map(|c| c.to_vec()))
    }
}

#[async_trait]
impl OnlineStore for CachedStore {
    async fn write(&self, rows: &[OnlineWrite<'_>]) -> Result<WriteStats> {
        let r = self.inner.write(rows).await;
        // Invalidate even when the write failed: part of it may have landed.
        for w in rows {
            self.cache.remove(&slot(w.key, &w.field));
        }
        r
    }

    async fn read(&self, keys: &[&[u8]], fields: &[FieldId]) -> Result<Vec<Option<Vec<u8>>>> {
        let nf = fields.len();
        let now = Instant::now();
        let mut cells: Vec<Option<Vec<u8>>> = Vec::with_capacity(keys.len() * nf);
        let mut missing_keys: Vec<usize> = Vec::new();
        let (mut hits, mut misses) = (0u64, 0u64);
        for (ki, key) in keys.iter().enumerate() {
            let mut key_missed = false;
            for f in fields {
                match self.lookup(key, f, now) {
                    Some(cell) => {
                        hits += 1;
                        cells.push(cell);
                    }
                    None => {
                        misses += 1;
                        key_missed = true;
                        cells.push(None);
                    }
                }
            }
            if key_missed {
                missing_keys.push(ki);
            }
        }
        self.hits.fetch_add(hits, Ordering::Relaxed);
        self.misses.fetch_add(misses, Ordering::Relaxed);
        if missing_keys.is_empty() {
            return Ok(cells);
        }
        let sub: Vec<&[u8]> = missing_keys.iter().map(|&k| keys[k]).collect();
        let fetched = self.inner.read(&sub, fields).await?;
        let at = Instant::now();
        for (si, &ki) in missing_keys.iter().enumerate() {
            let key: Arc<[u8]> = Arc::from(keys[ki]);
            for (fi, f) in fields.iter().enumerate() {
                let cell = &fetched[si * nf + fi];
                self.cache.insert(
                    slot(keys[ki], f),
                    Entry {
                        key: key.clone(),
                        cell: cell.as_deref().map(Arc::from),
                        at,
                    },
                );
                cells[ki * nf + fi] = cell.clone();
            }
        }
        Ok(cells)
    }

    async fn delete_older_than(&self, field: FieldId, cutoff: i64) -> Result<u64> {
        let n = self.inner.delete_older_than(field, cutoff).await;
        self.cache.clear();
        n
    }

    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn cache_stats(&self) -> Option<CacheStats> {
        Some(CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        })
    }
}
