//! The point-in-time join kernel (DESIGN §2, snapshot lookup), used by historical
//! retrieval.
//!
//! The kernel is independent of where rows live. The caller
//! 1. maps each label row's join-key values to a dense *group* with a key index
//!    ([`IntKeyIndex`] for a single integer key, [`BytesKeyIndex`] for any other key),
//! 2. builds a [`LabelIndex`] from the labels' groups and times,
//! 3. streams feature rows (in any order, from any number of files), keeps those for
//!    which [`LabelIndex::slot`] finds a label as [`Candidate`]s with an opaque
//!    location,
//! 4. calls [`LabelIndex::resolve`], which returns per label the location of the row
//!    the time contract selects, or none.
//!
//! Step 3 prunes every row that cannot be the answer for any label (no label of its key
//! at or after it within the TTL), so memory grows with the labels and the rows that
//! matter, not with the whole history. A kept row's *slot* is the first label of its
//! key at or after it (labels in (group, time) order): the row can answer that label
//! and every later one of the key, no earlier one. Step 4 keeps the greatest row per
//! slot, then sweeps each key's labels in time order carrying the greatest row so far:
//! linear in candidates and labels, with no sort, whatever the skew.
//!
//! When the rows are no more than the labels (a training set of many labels over a
//! short history) and the labels come grouped by key, the join is cheaper the other
//! way round: a [`RowIndex`] groups the rows by key and orders each group by (event
//! time, creation time, location), and each label's answer is its key's last row at or
//! before its time — one search per label, labels independent of each other, no sort
//! of the labels (labels in no order would make every search a cache miss; the caller
//! chooses). Both ways give the same answer (checked against a brute-force reference);
//! memory stays bounded by the labels either way.

use std::sync::atomic::{AtomicU64, Ordering};

use rayon::iter::{
    IndexedParallelIterator, IntoParallelIterator, IntoParallelRefIterator, ParallelIterator,
};
use rayon::slice::ParallelSliceMut;

use crate::contract::within_ttl;
use crate::time::{Duration, Timestamp};

/// The group of a label whose key is null or otherwise unmatched: it never matches.
pub const NO_GROUP: u32 = u32::MAX;
/// The location returned for a label without a value.
pub const NO_MATCH: u64 = u64::MAX;

/// A feature row that may be the answer for some label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The first label, in (group, time) order, that the row can answer
    /// ([`LabelIndex::slot`]).
    pub slot: u32,
    /// The row's event time.
    pub ts: Timestamp,
    /// The row's creation time, [`crate::contract::NO_CREATED`] when absent.
    pub created: Timestamp,
    /// Where the row lives; opaque to the kernel (e.g. file index << 32 | row index).
    /// Among rows equal in event and creation time the greatest location wins.
    pub loc: u64,
}

/// Sorted, de-duplicated 64-bit integer keys; a key's group is its position.
///
/// When the keys are dense (their range at most [`DENSE_FACTOR`] times their number, as
/// sequential ids are), a table from `key − min` to group answers
/// each lookup with one memory access and no dependency on the previous lookup, so a
/// scan of feature rows overlaps its cache misses.
#[derive(Clone, Debug, Default)]
pub struct IntKeyIndex {
    keys: Vec<i64>,
    dense: Option<DenseTable>,
    /// Key to group for sparse keys looked up in no particular order ([`Self::hashed`]).
    map: Option<hashbrown::HashMap<i64, u32>>,
}

/// How much larger than the number of keys their range may be for a direct table.
pub const DENSE_FACTOR: u64 = 4;

/// Group by `key − min`, [`NO_GROUP`] for keys without labels.
#[derive(Clone, Debug)]
struct DenseTable {
    min: i64,
    groups: Vec<u32>,
}

impl DenseTable {
    #[inline]
    fn get(&self, k: i64) -> Option<u32> {
        // Keys below `min` wrap to slots past the end.
        let slot = usize::try_from(k.wrapping_sub(self.min) as u64).ok()?;
        self.groups.get(slot).copied().filter(|&g| g != NO_GROUP)
    }
}

impl IntKeyIndex {
    /// Builds the index from label keys (nulls skipped by the caller).
    pub fn new(mut keys: Vec<i64>) -> Self {
        keys.par_sort_unstable();
        keys.dedup();
        IntKeyIndex::with_table(keys)
    }

    /// Builds the index from label keys and returns each label's group
    /// ([`NO_GROUP`] where `valid` is false). Sorting (key, label) pairs once is much
    /// faster than a search per label when the labels are many.
    pub fn from_labels(keys: &[i64], valid: impl Fn(usize) -> bool) -> (Self, Vec<u32>) {
        if let Some(dense) = Self::from_dense_labels(keys, &valid) {
            return dense;
        }
        let mut pairs: Vec<(i64, u32)> = keys
            .iter()
            .enumerate()
            .filter(|(i, _)| valid(*i))
            .map(|(i, &k)| (k, i as u32))
            .collect();
        pairs.par_sort_unstable();
        let mut groups = vec![NO_GROUP; keys.len()];
        let mut uniq: Vec<i64> = Vec::new();
        for &(k, i) in &pairs {
            if uniq.last() != Some(&k) {
                uniq.push(k);
            }
            groups[i as usize] = (uniq.len() - 1) as u32;
        }
        (IntKeyIndex::with_table(uniq), groups)
    }

    /// [`from_labels`](Self::from_labels) for dense keys (a range at most
    /// [`DENSE_FACTOR`] times the labels, as sequential ids): the keys present are
    /// marked in a table over their range, which then numbers them in order — linear,
    /// where sorting every (key, label) pair is not. `None` when the keys are sparse.
    fn from_dense_labels(keys: &[i64], valid: &impl Fn(usize) -> bool) -> Option<(Self, Vec<u32>)> {
        let (min, range, _) = dense_range(keys, valid)?;
        let mut slot_group = vec![NO_GROUP; range];
        for (i, &k) in keys.iter().enumerate() {
            if valid(i) {
                slot_group[(k - min) as usize] = 0;
            }
        }
        let mut uniq = Vec::new();
        for (slot, g) in slot_group.iter_mut().enumerate() {
            if *g != NO_GROUP {
                *g = uniq.len() as u32;
                uniq.push(min + slot as i64);
            }
        }
        let groups = keys
            .iter()
            .enumerate()
            .map(|(i, &k)| {
                if valid(i) {
                    slot_group[(k - min) as usize]
                } else {
                    NO_GROUP
                }
            })
            .collect();
        Some((IntKeyIndex::with_table(uniq), groups))
    }

    /// The index of sorted, distinct `keys`, with a direct table when they are dense.
    fn with_table(keys: Vec<i64>) -> Self {
        let (Some(&min), Some(&max)) = (keys.first(), keys.last()) else {
            return IntKeyIndex {
                keys,
                dense: None,
                map: None,
            };
        };
        let range = max as i128 - min as i128 + 1;
        if range > (keys.len() as u64 * DENSE_FACTOR).max(1024) as i128 {
            return IntKeyIndex {
                keys,
                dense: None,
                map: None,
            };
        }
        let mut groups = vec![NO_GROUP; range as usize];
        for (g, &k) in keys.iter().enumerate() {
            groups[(k - min) as usize] = g as u32;
        }
        IntKeyIndex {
            keys,
            dense: Some(DenseTable { min, groups }),
            map: None,
        }
    }

    /// The index with a hash table from key to group when it has no direct table: for
    /// many lookups in no particular order, where a search would cost one cache miss
    /// per halving of the keys.
    pub fn hashed(mut self) -> Self {
        if self.dense.is_none() {
            let map = self
                .keys
                .iter()
                .enumerate()
                .map(|(g, &k)| (k, g as u32))
                .collect();
            self.map = Some(map);
        }
        self
    }

    /// The number of groups.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The group of `k`.
    #[inline]
    pub fn get(&self, k: i64) -> Option<u32> {
        if let Some(d) = &self.dense {
            return d.get(k);
        }
        if let Some(m) = &self.map {
            return m.get(&k).copied();
        }
        self.keys.binary_search(&k).ok().map(|p| p as u32)
    }

    /// Whether lookups go through a direct table (see the type's doc).
    pub fn is_dense(&self) -> bool {
        self.dense.is_some()
    }

    /// The group of `k`, searching forward from `hint` (exponential search) when `k` is
    /// not smaller than the previous key looked up with the same hint. Sequences of
    /// ascending keys (the offline store writes files sorted by key) cost O(log gap).
    #[inline]
    pub fn find_from(&self, k: i64, hint: &mut usize) -> Option<u32> {
        if let Some(d) = &self.dense {
            return d.get(k);
        }
        let keys = &self.keys;
        let len = keys.len();
        let h = *hint;
        let start = if h <= len && (h == 0 || keys[h - 1] < k) {
            h
        } else {
            0
        };
        let mut bound = 1;
        while start + bound < len && keys[start + bound] < k {
            bound *= 2;
        }
        let end = (start + bound + 1).min(len);
        let p = start + keys[start..end].partition_point(|&x| x < k);
        *hint = p;
        if p < len && keys[p] == k {
            Some(p as u32)
        } else {
            None
        }
    }
}

/// The smallest valid key, the range of the valid keys and their number, when the
/// range is at most [`DENSE_FACTOR`] times their number (or 1024); `None` otherwise.
fn dense_range(keys: &[i64], valid: &impl Fn(usize) -> bool) -> Option<(i64, usize, u64)> {
    let (mut min, mut max, mut n) = (i64::MAX, i64::MIN, 0u64);
    for (i, &k) in keys.iter().enumerate() {
        if valid(i) {
            (min, max, n) = (min.min(k), max.max(k), n + 1);
        }
    }
    let range = usize::try_from(max as i128 - min as i128 + 1).ok()?;
    (n > 0 && range as u64 <= (n * DENSE_FACTOR).max(1024)).then_some((min, range, n))
}

/// Keys of any type, by their [`crate::encoding`] bytes; groups in insertion order.
#[derive(Clone, Debug, Default)]
pub struct BytesKeyIndex {
    map: hashbrown::HashMap<Box<[u8]>, u32>,
}

impl BytesKeyIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }
    /// The group of `key`, adding it if new.
    pub fn insert(&mut self, key: &[u8]) -> u32 {
        if let Some(&g) = self.map.get(key) {
            return g;
        }
        let g = self.map.len() as u32;
        self.map.insert(key.into(), g);
        g
    }
    /// The group of `key`.
    #[inline]
    pub fn get(&self, key: &[u8]) -> Option<u32> {
        self.map.get(key).copied()
    }
    /// The number of groups.
    pub fn len(&self) -> usize {
        self.map.len()
    }
    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Calls `f(start, part)` on each group's part of `items` (`offsets[g]..offsets[g + 1]`,
/// `start` being `offsets[g]`), groups split between rayon's threads.
fn for_each_group<T: Send>(
    items: &mut [T],
    offsets: &[u32],
    f: &(impl Fn(usize, &mut [T]) + Sync),
) {
    /// Groups below which one thread does the rest.
    const SEQUENTIAL: usize = 8192;
    let groups = offsets.len().saturating_sub(1);
    let base = offsets.first().copied().unwrap_or(0);
    if groups <= SEQUENTIAL {
        for w in offsets.windows(2) {
            f(
                w[0] as usize,
                &mut items[(w[0] - base) as usize..(w[1] - base) as usize],
            );
        }
        return;
    }
    let mid = groups / 2;
    let (a, b) = items.split_at_mut((offsets[mid] - base) as usize);
    rayon::join(
        || for_each_group(a, &offsets[..=mid], f),
        || for_each_group(b, &offsets[mid..], f),
    );
}

/// Where each group's items go when items are grouped by `groups` (those of
/// [`NO_GROUP`] left out): `offsets[g]..offsets[g + 1]` for group `g` < `n_groups`.
fn group_offsets(groups: &[u32], n_groups: usize) -> Vec<u32> {
    let mut offsets = vec![0u32; n_groups + 1];
    for &g in groups.iter().filter(|&&g| g != NO_GROUP) {
        offsets[g as usize + 1] += 1;
    }
    for g in 0..n_groups {
        offsets[g + 1] += offsets[g];
    }
    offsets
}

/// Labels grouped by key group and sorted by time within each group.
#[derive(Clone, Debug)]
pub struct LabelIndex {
    n_labels: usize,
    /// `offsets[g]..offsets[g + 1]` is group `g`'s range in `order` and `times`.
    offsets: Vec<u32>,
    /// Label row indices, by (group, time, row).
    order: Vec<u32>,
    /// The time of each entry of `order`.
    times: Vec<Timestamp>,
}

impl LabelIndex {
    /// Groups labels: `groups[i]` is label `i`'s group (or [`NO_GROUP`]), `times[i]`
    /// its time; `n_groups` bounds the groups.
    pub fn new(groups: &[u32], times: &[Timestamp], n_groups: usize) -> Self {
        assert_eq!(groups.len(), times.len());
        let n_labels = groups.len();
        let offsets = group_offsets(groups, n_groups);
        let total = offsets[n_groups] as usize;
        let mut fill = offsets.clone();
        let mut order = vec![0u32; total];
        for (i, &g) in groups.iter().enumerate() {
            if g != NO_GROUP {
                let slot = &mut fill[g as usize];
                order[*slot as usize] = i as u32;
                *slot += 1;
            }
        }
        // Counting sort kept row order within a group, so sorting a group's (time, row)
        // pairs is the stable sort by time — without reading each time through its row
        // in every comparison.
        let pairs: Vec<(Timestamp, u32)> =
            order.par_iter().map(|&i| (times[i as usize], i)).collect();
        drop(order);
        LabelIndex::from_grouped_pairs(n_labels, offsets, pairs)
    }

    /// Builds the key index and the label index of labels keyed by one integer in one
    /// sort of (key, time, row) — the fast path of [`IntKeyIndex::from_labels`] followed
    /// by [`LabelIndex::new`]. Labels where `valid` is false never match.
    pub fn from_int_labels(
        keys: &[i64],
        times: &[Timestamp],
        valid: impl Fn(usize) -> bool + Sync,
    ) -> (IntKeyIndex, LabelIndex) {
        if let Some(dense) = Self::from_dense_int_labels(keys, times, &valid) {
            return dense;
        }
        let mut triples: Vec<(i64, Timestamp, u32)> = keys
            .iter()
            .zip(times)
            .enumerate()
            .filter(|(i, _)| valid(*i))
            .map(|(i, (&k, &t))| (k, t, i as u32))
            .collect();
        triples.par_sort_unstable();
        let mut uniq: Vec<i64> = Vec::new();
        let mut offsets: Vec<u32> = vec![0];
        let mut order = Vec::with_capacity(triples.len());
        let mut sorted_times = Vec::with_capacity(triples.len());
        for (pos, &(k, t, i)) in triples.iter().enumerate() {
            if uniq.last() != Some(&k) {
                if !uniq.is_empty() {
                    offsets.push(pos as u32);
                }
                uniq.push(k);
            }
            order.push(i);
            sorted_times.push(t);
        }
        if !uniq.is_empty() {
            offsets.push(triples.len() as u32);
        }
        (
            IntKeyIndex::with_table(uniq),
            LabelIndex {
                n_labels: keys.len(),
                offsets,
                order,
                times: sorted_times,
            },
        )
    }

    /// [`Self::from_int_labels`] for dense keys (a range at most [`DENSE_FACTOR`] times
    /// the labels, as sequential ids): one counting sort over the key range puts each
    /// label's (time, row) at its place among its key's labels — in row order, so that
    /// sorting a key's pairs is the stable sort by time — with no sort across keys and
    /// no per-label group array. `None` when the keys are sparse.
    fn from_dense_int_labels(
        keys: &[i64],
        times: &[Timestamp],
        valid: &(impl Fn(usize) -> bool + Sync),
    ) -> Option<(IntKeyIndex, LabelIndex)> {
        let (min, range, n) = dense_range(keys, valid)?;
        // Labels per key (at its slot + 1), then each present key's first position.
        let mut next = vec![0u32; range + 1];
        for (i, &k) in keys.iter().enumerate() {
            if valid(i) {
                next[(k - min) as usize + 1] += 1;
            }
        }
        let mut uniq = Vec::new();
        let mut offsets = vec![0u32];
        for slot in 0..range {
            let count = next[slot + 1];
            next[slot + 1] += next[slot];
            if count > 0 {
                uniq.push(min + slot as i64);
                offsets.push(next[slot + 1]);
            }
        }
        // The scatter's writes land anywhere in the pairs: with many labels it runs in
        // parts of the key range, one per thread, each reading every label and writing
        // those of its keys to its own span of the pairs — so that the writes' cache
        // misses and the pairs' first touch are shared between threads.
        let n = n as usize;
        let parts = if n >= PARALLEL_MIN {
            rayon::current_num_threads().clamp(1, MAX_SCATTER_PARTS)
        } else {
            1
        };
        // Part p's keys: slots bounds[p]..bounds[p + 1], about n / parts labels.
        let mut bounds = vec![0usize];
        for p in 1..parts {
            let target = (n * p / parts) as u32;
            let at = next[..range].partition_point(|&x| x < target);
            bounds.push(at.max(bounds[p - 1]));
        }
        bounds.push(range);
        // Where each part's span starts (`next[range]` is `n`).
        let starts: Vec<usize> = bounds.iter().map(|&b| next[b] as usize).collect();
        let mut pairs = vec![(0 as Timestamp, 0u32); n];
        let mut jobs = Vec::with_capacity(parts);
        let (mut cursors, mut spans) = (&mut next[..range], &mut pairs[..]);
        for (w, s) in bounds.windows(2).zip(starts.windows(2)) {
            let (c, rest) = cursors.split_at_mut(w[1] - w[0]);
            cursors = rest;
            let (span, rest) = spans.split_at_mut(s[1] - s[0]);
            spans = rest;
            jobs.push((w[0], c, s[0], span));
        }
        jobs.into_par_iter()
            .for_each(|(first, cursors, base, span)| {
                let slots = first..first + cursors.len();
                for (i, (&k, &t)) in keys.iter().zip(times).enumerate() {
                    if valid(i) {
                        let slot = (k - min) as usize;
                        if slots.contains(&slot) {
                            let at = &mut cursors[slot - first];
                            span[*at as usize - base] = (t, i as u32);
                            *at += 1;
                        }
                    }
                }
            });
        drop(next);
        Some((
            IntKeyIndex::with_table(uniq),
            LabelIndex::from_grouped_pairs(keys.len(), offsets, pairs),
        ))
    }

    /// The index of labels whose (time, row) pairs are grouped (`offsets`), each group
    /// in row order: sorting a group's pairs is then the stable sort by time (none
    /// where a group is in order already, a reversal where its times decrease).
    fn from_grouped_pairs(
        n_labels: usize,
        offsets: Vec<u32>,
        mut pairs: Vec<(Timestamp, u32)>,
    ) -> Self {
        for_each_group(
            &mut pairs,
            &offsets,
            &|_, group: &mut [(Timestamp, u32)]| {
                if group.is_sorted_by(|a, b| a.0 > b.0) {
                    // Times strictly decreasing (labels listed newest first): reversed,
                    // they increase with no two equal, as the stable sort puts them.
                    group.reverse();
                } else if !group.is_sorted() {
                    group.sort_unstable();
                }
            },
        );
        let (times, order) = pairs.into_par_iter().unzip();
        LabelIndex {
            n_labels,
            offsets,
            order,
            times,
        }
    }

    /// The number of label rows.
    pub fn len(&self) -> usize {
        self.n_labels
    }

    /// Whether there are no labels.
    pub fn is_empty(&self) -> bool {
        self.n_labels == 0
    }

    #[inline]
    fn group_times(&self, group: u32) -> &[Timestamp] {
        let g = group as usize;
        &self.times[self.offsets[g] as usize..self.offsets[g + 1] as usize]
    }

    /// The slot of a row of `group` with event time `ts`: the first label of the group
    /// at or after `ts` (by position in (group, time) order), when the row is within
    /// `ttl` of it; `None` when the row can answer no label.
    #[inline]
    pub fn slot(&self, group: u32, ts: Timestamp, ttl: Duration) -> Option<u32> {
        let times = self.group_times(group);
        let p = times.partition_point(|&t| t < ts);
        (p < times.len() && within_ttl(ts, times[p], ttl))
            .then(|| self.offsets[group as usize] + p as u32)
    }

    /// Applies the snapshot rule: for each label, the location of the row with the
    /// greatest (event time, creation time, location) at or before the label time,
    /// if it lies within `ttl` of the label time; [`NO_MATCH`] otherwise. The
    /// candidates come in batches (e.g. one per file batch); large inputs are resolved
    /// in parallel.
    pub fn resolve(&self, batches: &[&[Candidate]], ttl: Duration) -> Vec<u64> {
        self.resolve_with(batches, ttl, PARALLEL_MIN)
    }

    /// [`Self::resolve`], on one thread below `parallel_min` candidates (or labels).
    fn resolve_with(
        &self,
        batches: &[&[Candidate]],
        ttl: Duration,
        parallel_min: usize,
    ) -> Vec<u64> {
        let total: usize = batches.iter().map(|b| b.len()).sum();
        let at = |packed: u64| candidate_at(batches, packed);
        let key = |c: &Candidate| (c.ts, c.created, c.loc);
        // The greatest candidate per slot, packed (`NO_MATCH`: none).
        let mut best = if total < parallel_min {
            let mut best = vec![NO_MATCH; self.order.len()];
            for (bi, batch) in batches.iter().enumerate() {
                for (i, c) in batch.iter().enumerate() {
                    let b = &mut best[c.slot as usize];
                    if *b == NO_MATCH || key(c) > key(at(*b)) {
                        *b = (bi as u64) << 32 | i as u64;
                    }
                }
            }
            best
        } else {
            self.best_in_parallel(batches)
        };
        // Each group's labels in time order: the greatest row of the slots so far is
        // the greatest at or before the label (groups in parallel, in place: each
        // slot's packed candidate becomes its label's location).
        for_each_group(&mut best, &self.offsets, &|start, group| {
            let mut so_far: Option<&Candidate> = None;
            for (k, b) in (start..).zip(group.iter_mut()) {
                if *b != NO_MATCH {
                    let c = at(*b);
                    if so_far.is_none_or(|s| key(c) > key(s)) {
                        so_far = Some(c);
                    }
                }
                *b = match so_far {
                    Some(s) if within_ttl(s.ts, self.times[k], ttl) => s.loc,
                    _ => NO_MATCH,
                };
            }
        });
        if self.n_labels < parallel_min {
            let mut out = vec![NO_MATCH; self.n_labels];
            for (&label, &loc) in self.order.iter().zip(&best) {
                out[label as usize] = loc;
            }
            return out;
        }
        // Each label's match to its place, in parallel (labels are distinct).
        let out: Vec<AtomicU64> = (0..self.n_labels)
            .into_par_iter()
            .map(|_| AtomicU64::new(NO_MATCH))
            .collect();
        self.order
            .par_iter()
            .zip(&best)
            .for_each(|(&label, &loc)| out[label as usize].store(loc, Ordering::Relaxed));
        out.into_iter().map(AtomicU64::into_inner).collect()
    }

    /// The greatest candidate per slot, batches in parallel: each slot holds the
    /// packed (batch, index) of its greatest candidate so far ([`NO_MATCH`]: none),
    /// replaced by compare-and-swap (candidates are distinct in location, so the
    /// result does not depend on the order).
    fn best_in_parallel(&self, batches: &[&[Candidate]]) -> Vec<u64> {
        const NONE: u64 = NO_MATCH;
        let at = |packed: u64| candidate_at(batches, packed);
        let slots: Vec<AtomicU64> = (0..self.order.len())
            .into_par_iter()
            .map(|_| AtomicU64::new(NONE))
            .collect();
        batches.par_iter().enumerate().for_each(|(bi, batch)| {
            for (i, c) in batch.iter().enumerate() {
                let me = (bi as u64) << 32 | i as u64;
                let cell = &slots[c.slot as usize];
                let mut cur = cell.load(Ordering::Relaxed);
                loop {
                    if cur != NONE {
                        let o = at(cur);
                        if (o.ts, o.created, o.loc) >= (c.ts, c.created, c.loc) {
                            break;
                        }
                    }
                    match cell.compare_exchange_weak(cur, me, Ordering::Relaxed, Ordering::Relaxed)
                    {
                        Ok(_) => break,
                        Err(now) => cur = now,
                    }
                }
            }
        });
        slots.into_iter().map(AtomicU64::into_inner).collect()
    }
}

/// Feature rows grouped by key group, each group in (event time, creation time,
/// location) order: the join seen from the rows' side, for when the rows are no more
/// than the labels. A label's answer is then its key's last row at or before its time
/// (one search), within the TTL: no sort of the labels, no candidates, no resolve, and
/// labels answered independently, in any order.
#[derive(Clone, Debug)]
pub struct RowIndex {
    /// `offsets[g]..offsets[g + 1]` is group `g`'s range in `times` and `locs`.
    offsets: Vec<u32>,
    times: Vec<Timestamp>,
    locs: Vec<u64>,
}

/// A row's (event time, creation time, location): the greatest wins.
type Version = (Timestamp, Timestamp, u64);

impl RowIndex {
    /// Indexes rows: row `i` of group `groups[i]` ([`NO_GROUP`]: never matches) with
    /// event time `times[i]`, creation time `created[i]` ([`crate::contract::NO_CREATED`]
    /// when absent) and location `locs[i]` (distinct; among rows equal in both times
    /// the greatest wins). `n_groups` bounds the groups.
    pub fn new(
        groups: &[u32],
        times: &[Timestamp],
        created: &[Timestamp],
        locs: &[u64],
        n_groups: usize,
    ) -> Self {
        assert!(groups.len() == times.len() && times.len() == created.len());
        assert_eq!(created.len(), locs.len());
        let offsets = group_offsets(groups, n_groups);
        let mut fill = offsets.clone();
        let mut rows: Vec<Version> = vec![(0, 0, 0); offsets[n_groups] as usize];
        for (i, &g) in groups.iter().enumerate() {
            if g != NO_GROUP {
                let at = &mut fill[g as usize];
                rows[*at as usize] = (times[i], created[i], locs[i]);
                *at += 1;
            }
        }
        drop(fill);
        // Data files are mostly written in key and time order: most groups are sorted.
        for_each_group(&mut rows, &offsets, &|_, group: &mut [Version]| {
            if !group.is_sorted() {
                group.sort_unstable();
            }
        });
        let (times, locs) = rows.into_par_iter().map(|(t, _, l)| (t, l)).unzip();
        RowIndex {
            offsets,
            times,
            locs,
        }
    }

    /// The location of the row that answers a label of `group` at time `t` — the
    /// group's greatest (event time, creation time, location) at or before `t` — if
    /// it lies within `ttl` of `t`; [`NO_MATCH`] otherwise.
    #[inline]
    pub fn lookup(&self, group: u32, t: Timestamp, ttl: Duration) -> u64 {
        let Some(range) = self.offsets.get(group as usize..group as usize + 2) else {
            return NO_MATCH;
        };
        let (start, end) = (range[0] as usize, range[1] as usize);
        let times = &self.times[start..end];
        match times.partition_point(|&x| x <= t) {
            0 => NO_MATCH,
            p if within_ttl(times[p - 1], t, ttl) => self.locs[start + p - 1],
            _ => NO_MATCH,
        }
    }
}

/// The candidate at a packed (batch, index in the batch).
fn candidate_at<'a>(batches: &[&'a [Candidate]], packed: u64) -> &'a Candidate {
    &batches[(packed >> 32) as usize][(packed & 0xffff_ffff) as usize]
}

/// Candidates (or labels) below which [`LabelIndex::resolve`] (or the dense label
/// index's scatter) stays on one thread.
const PARALLEL_MIN: usize = 1 << 16;

/// Parts of the dense label index's scatter at most (each reads every label).
const MAX_SCATTER_PARTS: usize = 8;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fused_int_label_index_equals_the_two_step_one() {
        let keys = [5, 1, 5, 9, 1, 5];
        let times = [30, 10, 20, 5, 10, 20];
        let valid = |i: usize| i != 3;
        let (a_idx, a_labels) = LabelIndex::from_int_labels(&keys, &times, valid);
        let (b_idx, groups) = IntKeyIndex::from_labels(&keys, valid);
        let b_labels = LabelIndex::new(&groups, &times, b_idx.len());
        assert_eq!(a_idx.keys, b_idx.keys);
        assert_eq!(a_labels.offsets, b_labels.offsets);
        assert_eq!(a_labels.order, b_labels.order);
        assert_eq!(a_labels.times, b_labels.times);
        let (idx, labels) = LabelIndex::from_int_labels(&[], &[], |_| true);
        assert!(idx.is_empty() && labels.is_empty());
    }

    proptest! {
        #[test]
        fn dense_and_sorted_int_label_indexes_agree(
            labels in prop::collection::vec((0i64..30, 0i64..20, any::<bool>()), 0..80),
            spread in prop::sample::select(vec![1i64, 1 << 40]),
            probes in prop::collection::vec(-5i64..35, 0..40),
        ) {
            // `spread` 1 keeps the keys dense (a direct table), 2^40 makes them sparse.
            let keys: Vec<i64> = labels.iter().map(|l| l.0 * spread - 7).collect();
            let times: Vec<i64> = labels.iter().map(|l| l.1).collect();
            let valid = |i: usize| labels[i].2;
            let (idx, index) = LabelIndex::from_int_labels(&keys, &times, valid);
            let mut uniq: Vec<i64> = (0..keys.len()).filter(|&i| valid(i)).map(|i| keys[i]).collect();
            uniq.sort_unstable();
            uniq.dedup();
            let dense = match (uniq.first(), uniq.last()) {
                (Some(&a), Some(&b)) => (b - a + 1) as u64 <= (uniq.len() as u64 * DENSE_FACTOR).max(1024),
                _ => false,
            };
            prop_assert_eq!(idx.is_dense(), dense);
            // Sparse keys with more than one distinct value never get a table.
            prop_assert!(!(spread > 1 && uniq.len() > 1 && idx.is_dense()));
            // The reference: one sort of every valid (key, time, row).
            let mut triples: Vec<(i64, i64, u32)> = (0..keys.len())
                .filter(|&i| valid(i))
                .map(|i| (keys[i], times[i], i as u32))
                .collect();
            triples.sort_unstable();
            let mut offsets = vec![0u32];
            for (p, w) in triples.windows(2).enumerate() {
                if w[0].0 != w[1].0 {
                    offsets.push(p as u32 + 1);
                }
            }
            if !triples.is_empty() {
                offsets.push(triples.len() as u32);
            }
            prop_assert_eq!(&idx.keys, &uniq);
            prop_assert_eq!(&index.offsets, &offsets);
            prop_assert_eq!(&index.order, &triples.iter().map(|t| t.2).collect::<Vec<_>>());
            prop_assert_eq!(&index.times, &triples.iter().map(|t| t.1).collect::<Vec<_>>());
            // The two-step build gives the same index.
            let (b_idx, groups) = IntKeyIndex::from_labels(&keys, valid);
            let b_index = LabelIndex::new(&groups, &times, b_idx.len());
            prop_assert_eq!(&idx.keys, &b_idx.keys);
            prop_assert_eq!(&index.order, &b_index.order);
            let mut hint = 0;
            for p in probes {
                let k = p * spread - 7;
                prop_assert_eq!(idx.find_from(k, &mut hint), b_idx.get(k));
                prop_assert_eq!(idx.get(k), b_idx.get(k));
                prop_assert_eq!(idx.clone().hashed().get(k), b_idx.get(k));
            }
            prop_assert_eq!(idx.get(i64::MIN), None);
            prop_assert_eq!(idx.get(i64::MAX), None);
        }
    }

    /// The dense label index built in parts of the key range (many labels, several
    /// threads; a hot key holding most labels leaves some parts empty) equals the
    /// two-step build.
    #[test]
    fn dense_label_index_in_parts_equals_the_two_step_one() {
        let n = 200_000usize;
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for hot in [false, true] {
            let keys: Vec<i64> = (0..n)
                .map(|_| {
                    let r = next();
                    if hot && r % 10 < 6 {
                        5_000
                    } else {
                        (r >> 8) as i64 % 40_000 - 7
                    }
                })
                .collect();
            let times: Vec<i64> = (0..n).map(|_| (next() % 1_000) as i64).collect();
            let valid = |i: usize| i % 97 != 3;
            for threads in [1, 2, 5] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let (idx, index) =
                    pool.install(|| LabelIndex::from_int_labels(&keys, &times, valid));
                assert!(idx.is_dense());
                let (b_idx, groups) = IntKeyIndex::from_labels(&keys, valid);
                let b_index = LabelIndex::new(&groups, &times, b_idx.len());
                assert_eq!(idx.keys, b_idx.keys, "hot {hot}, {threads} threads");
                assert_eq!(
                    index.offsets, b_index.offsets,
                    "hot {hot}, {threads} threads"
                );
                assert!(index.order == b_index.order, "hot {hot}, {threads} threads");
                assert!(index.times == b_index.times, "hot {hot}, {threads} threads");
            }
        }
    }

    #[test]
    fn for_each_group_gives_each_group_its_range_once() {
        // Groups of 0 to 4 items, enough of them to be split between threads.
        let sizes: Vec<u32> = (0..50_000u32)
            .map(|g| g.wrapping_mul(2_654_435_761) % 5)
            .collect();
        let mut offsets = vec![0u32];
        for s in &sizes {
            offsets.push(offsets.last().unwrap() + s);
        }
        let mut items: Vec<u64> = Vec::new();
        for (g, &s) in sizes.iter().enumerate() {
            items.extend(std::iter::repeat_n(g as u64, s as usize));
        }
        for_each_group(&mut items, &offsets, &|start, group: &mut [u64]| {
            assert!(group.iter().all(|&x| x == group[0]), "one group per call");
            let g = offsets.partition_point(|&o| (o as usize) <= start) - 1;
            assert!(
                group.is_empty() || group[0] == g as u64,
                "group {g} starts at {start}"
            );
            group.iter_mut().for_each(|x| *x += 1 << 32);
        });
        let mut i = 0;
        for (g, &s) in sizes.iter().enumerate() {
            for _ in 0..s {
                assert_eq!(
                    items[i],
                    (1 << 32) + g as u64,
                    "item {i} visited once, in group {g}"
                );
                i += 1;
            }
        }
    }

    #[test]
    fn int_index_from_labels() {
        let (idx, groups) = IntKeyIndex::from_labels(&[5, 1, 5, 9, 1], |i| i != 3);
        assert_eq!(idx.len(), 2);
        assert_eq!(groups, vec![1, 0, 1, NO_GROUP, 0]);
        assert_eq!(idx.get(5), Some(1));
        assert_eq!(idx.get(9), None);
    }

    #[test]
    fn int_index_finds_from_any_hint() {
        let idx = IntKeyIndex::new(vec![10, 3, 7, 7, 20, 15]);
        assert_eq!(idx.len(), 5);
        let mut hint = 0;
        let found: Vec<_> = [1, 3, 7, 8, 15, 20, 21, 3, 10]
            .iter()
            .map(|&k| idx.find_from(k, &mut hint))
            .collect();
        assert_eq!(
            found,
            vec![
                None,
                Some(0),
                Some(1),
                None,
                Some(3),
                Some(4),
                None,
                Some(0),
                Some(2)
            ]
        );
    }

    /// Brute force: scan every row for each label.
    fn reference(
        label_groups: &[u32],
        label_times: &[i64],
        rows: &[Candidate],
        ttl: Duration,
    ) -> Vec<u64> {
        label_groups
            .iter()
            .zip(label_times)
            .map(|(&g, &t)| {
                rows.iter()
                    .filter(|r| r.slot == g && r.ts <= t)
                    .max_by_key(|r| (r.ts, r.created, r.loc))
                    .filter(|r| within_ttl(r.ts, t, ttl))
                    .map_or(NO_MATCH, |r| r.loc)
            })
            .collect()
    }

    proptest! {
        #[test]
        fn resolve_matches_brute_force(
            labels in prop::collection::vec((0u32..6, 0i64..40), 0..60),
            rows in prop::collection::vec((0u32..6, 0i64..40, 0i64..3), 0..80),
            ttl in 0i64..12,
        ) {
            let ttl = Duration::from_micros(ttl);
            let groups: Vec<u32> = labels.iter().map(|l| if l.0 == 5 { NO_GROUP } else { l.0 }).collect();
            let times: Vec<i64> = labels.iter().map(|l| l.1).collect();
            // (group, time, created, location); `slot` holds the group for the reference.
            let rows: Vec<Candidate> = rows.iter().enumerate().map(|(i, r)| Candidate {
                slot: r.0.min(4), ts: r.1, created: r.2, loc: i as u64 }).collect();
            let index = LabelIndex::new(&groups, &times, 5);
            let kept: Vec<Candidate> = rows.iter()
                .filter_map(|r| Some(Candidate { slot: index.slot(r.slot, r.ts, ttl)?, ..*r }))
                .collect();
            let want = reference(&groups, &times, &rows, ttl);
            prop_assert_eq!(index.resolve(&[&kept], ttl), want.clone());
            // In parallel, the candidates cut into batches (one empty).
            let cut = kept.len() / 3;
            let batches: [&[Candidate]; 4] = [&kept[..cut], &[], &kept[cut..2 * cut], &kept[2 * cut..]];
            prop_assert_eq!(index.resolve_with(&batches, ttl, 0), want.clone());
            // On one thread, the same batches.
            prop_assert_eq!(index.resolve_with(&batches, ttl, usize::MAX), want.clone());
            // From the rows' side: each label's search among its key's rows.
            let groups_of_rows: Vec<u32> = rows.iter().map(|r| r.slot).collect();
            let row_times: Vec<i64> = rows.iter().map(|r| r.ts).collect();
            let created: Vec<i64> = rows.iter().map(|r| r.created).collect();
            let locs: Vec<u64> = rows.iter().map(|r| r.loc).collect();
            let by_rows = RowIndex::new(&groups_of_rows, &row_times, &created, &locs, 5);
            let found: Vec<u64> = groups.iter().zip(&times)
                .map(|(&g, &t)| by_rows.lookup(g, t, ttl))
                .collect();
            prop_assert_eq!(found, want);
        }

        #[test]
        fn row_index_matches_brute_force(
            labels in prop::collection::vec((0u32..7, -5i64..40), 0..60),
            rows in prop::collection::vec((0u32..7, 0i64..40, 0i64..3, any::<u16>()), 0..80),
            ttl in 0i64..12,
        ) {
            // Groups 5 and 6 stand for no group; locations in no particular order, the
            // rows in no particular order, with ties in both times.
            let ttl = Duration::from_micros(ttl);
            let group = |g: u32| if g >= 5 { NO_GROUP } else { g };
            let mut seen = std::collections::HashSet::new();
            let rows: Vec<Candidate> = rows.iter()
                .filter(|r| seen.insert(r.3))
                .map(|r| Candidate { slot: group(r.0), ts: r.1, created: r.2, loc: r.3 as u64 })
                .collect();
            let label_groups: Vec<u32> = labels.iter().map(|l| group(l.0)).collect();
            let label_times: Vec<i64> = labels.iter().map(|l| l.1).collect();
            let index = RowIndex::new(
                &rows.iter().map(|r| r.slot).collect::<Vec<_>>(),
                &rows.iter().map(|r| r.ts).collect::<Vec<_>>(),
                &rows.iter().map(|r| r.created).collect::<Vec<_>>(),
                &rows.iter().map(|r| r.loc).collect::<Vec<_>>(),
                5,
            );
            let found: Vec<u64> = label_groups.iter().zip(&label_times)
                .map(|(&g, &t)| index.lookup(g, t, ttl))
                .collect();
            let mut want = reference(&label_groups, &label_times, &rows, ttl);
            // The reference matches a no-group label to no-group rows; the index never.
            for (w, &g) in want.iter_mut().zip(&label_groups) {
                if g == NO_GROUP {
                    *w = NO_MATCH;
                }
            }
            prop_assert_eq!(found, want);
        }
    }
}
