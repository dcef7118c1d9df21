//! A hot-key read cache in front of any [`OnlineStore`] (`serving: { cache_ttl: 5s }`).
//!
//! It caches cells — the stored bytes of one (entity key, field), or their absence —
//! for at most `ttl`, in a memory-bounded map (quick_cache, weighted by bytes, evicting
//! cold entries first). It never changes what a status means: statuses are computed by
//! the reader from the row's own timestamps at request time, so a cached row turns
//! `OUTSIDE_TTL` exactly when a stored one would. What it changes is how soon a newer
//! row written by *another* process is seen: at most `ttl` later. Writes through the
//! cache invalidate the cells they touch, so a process reads its own writes.
//!
//! **Ordering of a miss against a write.** A miss reads the store, then caches what it
//! read; a write through the cache stores, then invalidates. If the write's
//! invalidation fell between the miss's read and its insert, the old cell would be
//! cached after the write returned. So every entity key hashes to one of a fixed set of
//! generation counters: a write bumps the counters of its keys before invalidating, a
//! miss notes its key's counter before reading the store and caches the cell as
//! *unconfirmed*, then confirms it only if the counter has not moved. An unconfirmed
//! cell is served only while its counter still holds the noted value, so a cell read
//! before a write is never served after that write returns. A write to another key
//! sharing the counter costs a miss, never a wrong value.
//!
//! Only rows are cached: tiles and stream positions are read from the store behind, and
//! tile merges and deletions go straight to it (they touch no row, so they invalidate
//! nothing).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use quick_cache::sync::Cache;
use quick_cache::Weighter;

use quiver_core::Timestamp;

use crate::{
    CacheStats, Capabilities, Cells, FieldId, KeyMerge, MergeStats, OnlineStore, OnlineWrite,
    Result, TileCells, TileMerger, TileRead, WriteStats,
};

/// The cache key: a 128-bit hash of the entity key and the field. The entry keeps the
/// full key and a hit is checked against it, so a hash collision is a miss, never a
/// wrong value.
type Slot = (u128, FieldId);

#[derive(Clone)]
struct Entry {
    key: Arc<[u8]>,
    cell: Option<Arc<[u8]>>,
    at: Instant,
    /// The key's generation noted before the store was read.
    generation: u64,
    /// Set once the generation was seen unchanged after the insert (shared by the cells
    /// of one miss); until then the cell is served only while the generation holds.
    confirmed: Arc<AtomicBool>,
}

/// The number of generation counters (a power of two).
const GENERATIONS: usize = 4096;

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
    /// Per group of entity keys, the number of writes through the cache that touched it.
    generations: Box<[AtomicU64]>,
    hits: AtomicU64,
    misses: AtomicU64,
}

fn slot(key: &[u8], field: &FieldId) -> Slot {
    (xxhash_rust::xxh3::xxh3_128(key), *field)
}

/// The generation counter of the key hashed to `hash` (the first half of its [`Slot`]).
fn generation_of(hash: u128) -> usize {
    (hash >> 64) as usize & (GENERATIONS - 1)
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
            generations: (0..GENERATIONS).map(|_| AtomicU64::new(0)).collect(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn generation(&self, hash: u128) -> &AtomicU64 {
        &self.generations[generation_of(hash)]
    }

    fn lookup(&self, key: &[u8], field: &FieldId, now: Instant) -> Option<Option<Vec<u8>>> {
        let s = slot(key, field);
        let e = self.cache.get(&s)?;
        if &*e.key != key || now.duration_since(e.at) >= self.ttl {
            return None;
        }
        if !e.confirmed.load(Ordering::Acquire)
            && self.generation(s.0).load(Ordering::Acquire) != e.generation
        {
            return None;
        }
        Some(e.cell.as_ref().map(|c| c.to_vec()))
    }
}

/// A key the cache missed: (its index, its generation counter, the counter before the
/// store is read).
type Missed = (usize, usize, u64);

impl CachedStore {
    /// The cells the cache holds (`None` where it misses), and the keys it missed:
    /// (key index, its generation counter, the counter before the store is read).
    fn lookup_all(&self, keys: &[&[u8]], fields: &[FieldId]) -> (Cells, Vec<Missed>) {
        let nf = fields.len();
        let now = Instant::now();
        let mut cells: Vec<Option<Vec<u8>>> = Vec::with_capacity(keys.len() * nf);
        let mut missing_keys: Vec<(usize, usize, u64)> = Vec::new();
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
                let gi = generation_of(xxhash_rust::xxh3::xxh3_128(key));
                let g = self.generations[gi].load(Ordering::Acquire);
                missing_keys.push((ki, gi, g));
            }
        }
        self.hits.fetch_add(hits, Ordering::Relaxed);
        self.misses.fetch_add(misses, Ordering::Relaxed);
        (cells, missing_keys)
    }

    /// Caches the cells read from the store for the missed keys and puts them in place.
    fn fill(
        &self,
        keys: &[&[u8]],
        fields: &[FieldId],
        missing_keys: &[Missed],
        fetched: &[Option<Vec<u8>>],
        cells: &mut [Option<Vec<u8>>],
    ) {
        let nf = fields.len();
        let at = Instant::now();
        let confirmed = Arc::new(AtomicBool::new(false));
        for (si, &(ki, _, generation)) in missing_keys.iter().enumerate() {
            let key: Arc<[u8]> = Arc::from(keys[ki]);
            for (fi, f) in fields.iter().enumerate() {
                let cell = &fetched[si * nf + fi];
                self.cache.insert(
                    slot(keys[ki], f),
                    Entry {
                        key: key.clone(),
                        cell: cell.as_deref().map(Arc::from),
                        at,
                        generation,
                        confirmed: confirmed.clone(),
                    },
                );
                cells[ki * nf + fi] = cell.clone();
            }
        }
        // Confirm the cells if no write touched their keys since they were read; else
        // they stay unconfirmed, served only until their generation moves (it has).
        let unchanged = missing_keys
            .iter()
            .all(|&(_, gi, generation)| self.generations[gi].load(Ordering::Acquire) == generation);
        if unchanged {
            confirmed.store(true, Ordering::Release);
        }
    }
}

#[async_trait]
impl OnlineStore for CachedStore {
    async fn write(&self, rows: &[OnlineWrite<'_>]) -> Result<WriteStats> {
        let r = self.inner.write(rows).await;
        // Invalidate even when the write failed: part of it may have landed. The
        // generation moves first, so a miss that read the store before this write either
        // sees it move or inserted before the removal below.
        for w in rows {
            let s = slot(w.key, &w.field);
            self.generation(s.0).fetch_add(1, Ordering::AcqRel);
            self.cache.remove(&s);
        }
        r
    }

    async fn read(&self, keys: &[&[u8]], fields: &[FieldId]) -> Result<Vec<Option<Vec<u8>>>> {
        let (mut cells, missing) = self.lookup_all(keys, fields);
        if !missing.is_empty() {
            let sub: Vec<&[u8]> = missing.iter().map(|&(k, _, _)| keys[k]).collect();
            let fetched = self.inner.read(&sub, fields).await?;
            self.fill(keys, fields, &missing, &fetched, &mut cells);
        }
        Ok(cells)
    }

    /// Rows from the cache (what it misses read in the same round trip as the tiles,
    /// which are not cached).
    async fn read_with_tiles(
        &self,
        keys: &[&[u8]],
        fields: &[FieldId],
        tiles: &[TileRead<'_>],
    ) -> Result<(Cells, Vec<TileCells>)> {
        let (mut cells, missing) = self.lookup_all(keys, fields);
        let sub: Vec<&[u8]> = missing.iter().map(|&(k, _, _)| keys[k]).collect();
        let (fetched, tiles) = self.inner.read_with_tiles(&sub, fields, tiles).await?;
        if !missing.is_empty() {
            self.fill(keys, fields, &missing, &fetched, &mut cells);
        }
        Ok((cells, tiles))
    }

    async fn delete_older_than(&self, field: FieldId, cutoff: i64) -> Result<u64> {
        let n = self.inner.delete_older_than(field, cutoff).await;
        self.cache.clear();
        n
    }

    async fn compact_expired(&self, field: FieldId, cutoff: i64) -> Result<u64> {
        let n = self.inner.compact_expired(field, cutoff).await;
        self.cache.clear();
        n
    }

    async fn merge_tiles(
        &self,
        merges: &[KeyMerge<'_>],
        merger: &dyn TileMerger,
    ) -> Result<MergeStats> {
        self.inner.merge_tiles(merges, merger).await
    }

    async fn read_tiles(
        &self,
        keys: &[&[u8]],
        view: FieldId,
        starts: &[Timestamp],
    ) -> Result<TileCells> {
        self.inner.read_tiles(keys, view, starts).await
    }

    async fn stream_positions(
        &self,
        keys: &[&[u8]],
        view: FieldId,
        partition: &[u8],
    ) -> Result<Vec<Option<u128>>> {
        self.inner.stream_positions(keys, view, partition).await
    }

    async fn delete_tiles_before(&self, view: FieldId, cutoff: Timestamp) -> Result<u64> {
        self.inner.delete_tiles_before(view, cutoff).await
    }

    /// The store's, except `atomic_batches`: cached rows are served cell by cell, each up
    /// to `ttl` old, so a read through the cache may see part of a call (rows written
    /// by other processes may even mix within a key for that long).
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            atomic_batches: false,
            ..self.inner.capabilities()
        }
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
