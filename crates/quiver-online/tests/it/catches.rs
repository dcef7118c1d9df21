//! The conformance suite can fail: a reference in-memory store passes it, and each of a
//! set of deliberately broken variants fails the check aimed at its flaw.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use quiver_core::encoding::row_version;
use quiver_core::Timestamp;
use quiver_online::conformance::{self, tiles as tile_checks};
use quiver_online::{
    Capabilities, FieldId, KeyMerge, MergeStats, OnlineStore, OnlineWrite, Result, TileMerger,
    WriteStats,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flaw {
    None,
    /// Every write replaces the stored row.
    AlwaysOverwrites,
    /// A row of equal version never replaces the stored one (the first stands).
    SkipsEqual,
    /// A row of equal version replaces a row stored before the batch, but within a batch
    /// the first of rows of equal version stands.
    FirstEqualOfBatchWins,
    /// Only event timestamps are compared.
    IgnoresCreatedTs,
    /// Versions compared as their little-endian bytes.
    ComparesBytes,
    /// Batch rows are compared with the state before the batch only: the last winner of
    /// a cell in the batch stands.
    LastOfBatchWins,
    /// Counts skipped rows as written.
    MiscountsSkips,
    /// Cells keyed by entity key alone.
    IgnoresField,
    /// Cells keyed by the join-key values alone (project and entity set dropped).
    IgnoresKeyPrefix,
    /// Keys cut to 503 bytes.
    TruncatesKeys,
    /// Values cut to 64 KiB.
    TruncatesValues,
    /// Cells returned field-major.
    FieldMajor,
    /// Missing cells read as empty values.
    MissingAsEmpty,
    /// `delete_older_than` deletes older rows of every field.
    DeleteIgnoresField,
    /// `delete_older_than` deletes rows at the cutoff too.
    DeleteInclusive,
    /// Stream positions are never compared: replays merge again.
    IgnoresPositions,
    /// A replay at exactly the stored position merges again.
    ReplaysAtThePosition,
    /// Positions compared as their little-endian bytes.
    ComparesPositionBytes,
    /// Positions kept per (key, partition), whatever the view.
    PositionsIgnoreView,
    /// Tiles kept per (key, start), whatever the view.
    TilesIgnoreView,
    /// The deltas of a request merged last to first.
    ReversesDeltas,
    /// Read, merge, then write in a separate step: concurrent merges overwrite each other.
    LosesConcurrentUpdates,
    /// Tiles stored one by one, so a failing merger leaves the tiles before it merged.
    PartialKeyOnFailure,
    /// Declares atomic batches but commits key by key.
    ClaimsAtomicBatches,
    /// `delete_tiles_before` deletes tiles at the cutoff too.
    DeleteTilesInclusive,
    /// `delete_tiles_before` deletes older tiles of every view.
    DeleteTilesIgnoresView,
    /// `delete_tiles_before` deletes stream positions too.
    DeleteTilesDropsPositions,
}

/// Rows by (entity key, field).
type Cells = HashMap<(Vec<u8>, FieldId), Vec<u8>>;

/// Tiles by (entity key, view, start) and positions by (entity key, view, partition).
#[derive(Clone, Default)]
struct Tiles {
    irs: HashMap<(Vec<u8>, FieldId, Timestamp), Vec<u8>>,
    positions: HashMap<(Vec<u8>, FieldId, Vec<u8>), u128>,
}

struct MemStore {
    flaw: Flaw,
    cells: Mutex<Cells>,
    tiles: Mutex<Tiles>,
}

impl MemStore {
    fn new(flaw: Flaw) -> Self {
        Self {
            flaw,
            cells: Mutex::default(),
            tiles: Mutex::default(),
        }
    }

    fn tile_key(
        &self,
        key: &[u8],
        view: FieldId,
        start: Timestamp,
    ) -> (Vec<u8>, FieldId, Timestamp) {
        let view = if self.flaw == Flaw::TilesIgnoreView {
            [0; 8]
        } else {
            view
        };
        (key.to_vec(), view, start)
    }

    fn position_key(
        &self,
        key: &[u8],
        view: FieldId,
        partition: &[u8],
    ) -> (Vec<u8>, FieldId, Vec<u8>) {
        let view = if self.flaw == Flaw::PositionsIgnoreView {
            [0; 8]
        } else {
            view
        };
        (key.to_vec(), view, partition.to_vec())
    }

    /// Whether a request at `offset` is a replay of a stored `stored`.
    fn is_replay(&self, stored: u128, offset: u128) -> bool {
        match self.flaw {
            Flaw::IgnoresPositions => false,
            Flaw::ReplaysAtThePosition => stored > offset,
            Flaw::ComparesPositionBytes => stored.to_le_bytes() >= offset.to_le_bytes(),
            _ => stored >= offset,
        }
    }

    /// Applies request `i` of the call, `m`, to `t`.
    fn apply(
        &self,
        t: &mut Tiles,
        i: usize,
        m: &KeyMerge<'_>,
        merger: &dyn TileMerger,
    ) -> Result<MergeStats> {
        let mut stats = MergeStats::default();
        if let Some(p) = &m.position {
            let pk = self.position_key(m.key, m.view, p.partition);
            let stored = t.positions.get(&pk).copied();
            if stored.is_some_and(|s| self.is_replay(s, p.offset)) {
                stats.skipped = 1;
                stats.left_out.push(i);
                return Ok(stats);
            }
            if p.follows.is_some_and(|f| f != stored) {
                stats.conflicts = 1;
                stats.left_out.push(i);
                return Ok(stats);
            }
        }
        let mut deltas: Vec<_> = m.tiles.iter().collect();
        if self.flaw == Flaw::ReversesDeltas {
            deltas.reverse();
        }
        for d in deltas {
            let tk = self.tile_key(m.key, d.layer_in(m), d.start);
            let mut out = Vec::new();
            merger.merge(t.irs.get(&tk).map(Vec::as_slice), d.ir, &mut out)?;
            if self.flaw == Flaw::LosesConcurrentUpdates {
                // Let other writers read the same stored IR before this one is written.
                std::thread::sleep(Duration::from_millis(1));
            }
            t.irs.insert(tk, out);
            stats.tiles += 1;
        }
        if let Some(p) = &m.position {
            t.positions
                .insert(self.position_key(m.key, m.view, p.partition), p.offset);
        }
        stats.applied = 1;
        Ok(stats)
    }

    fn cell(&self, key: &[u8], field: FieldId) -> (Vec<u8>, FieldId) {
        let field = if self.flaw == Flaw::IgnoresField {
            [0; 8]
        } else {
            field
        };
        let key = match self.flaw {
            Flaw::TruncatesKeys => key[..key.len().min(503)].to_vec(),
            Flaw::IgnoresKeyPrefix => {
                let mut parts = key.splitn(3, |&b| b == 0);
                parts.nth(2).unwrap_or(key).to_vec()
            }
            _ => key.to_vec(),
        };
        (key, field)
    }

    /// Whether `new` replaces `old`; `same_batch` when `old` was written by the batch
    /// of `new`.
    fn wins(&self, new: &[u8], old: &[u8], same_batch: bool) -> bool {
        let (n, o) = (row_version(new).unwrap(), row_version(old).unwrap());
        match self.flaw {
            Flaw::AlwaysOverwrites => true,
            Flaw::SkipsEqual => n > o,
            Flaw::FirstEqualOfBatchWins if same_batch => n > o,
            Flaw::IgnoresCreatedTs => n.0 >= o.0,
            Flaw::ComparesBytes => new[1..17] >= old[1..17],
            _ => n >= o,
        }
    }
}

#[async_trait]
impl OnlineStore for MemStore {
    async fn write(&self, rows: &[OnlineWrite<'_>]) -> Result<WriteStats> {
        let mut cells = self.cells.lock().unwrap();
        let before = cells.clone();
        let mut stats = WriteStats::default();
        let mut touched = std::collections::HashSet::new();
        for w in rows {
            let cell = self.cell(w.key, w.field);
            let stored = if self.flaw == Flaw::LastOfBatchWins {
                before.get(&cell)
            } else {
                cells.get(&cell)
            };
            let same_batch = touched.contains(&cell);
            if stored.is_none_or(|old| self.wins(w.row, old, same_batch)) {
                touched.insert(cell.clone());
                let mut row = w.row.to_vec();
                if self.flaw == Flaw::TruncatesValues {
                    row.truncate(1 << 16);
                }
                cells.insert(cell, row);
                stats.written += 1;
            } else if self.flaw == Flaw::MiscountsSkips {
                stats.written += 1;
            } else {
                stats.skipped += 1;
            }
        }
        Ok(stats)
    }

    async fn read(&self, keys: &[&[u8]], fields: &[FieldId]) -> Result<Vec<Option<Vec<u8>>>> {
        let cells = self.cells.lock().unwrap();
        let get = |k: &[u8], f: FieldId| match cells.get(&self.cell(k, f)) {
            None if self.flaw == Flaw::MissingAsEmpty => Some(Vec::new()),
            v => v.cloned(),
        };
        let mut out = Vec::new();
        if self.flaw == Flaw::FieldMajor {
            for &f in fields {
                for k in keys {
                    out.push(get(k, f));
                }
            }
        } else {
            for k in keys {
                for &f in fields {
                    out.push(get(k, f));
                }
            }
        }
        Ok(out)
    }

    async fn delete_older_than(&self, field: FieldId, cutoff: i64) -> Result<u64> {
        let field = self.cell(b"", field).1;
        let mut cells = self.cells.lock().unwrap();
        let before = cells.len();
        cells.retain(|(_, f), row| {
            let ts = row_version(row).unwrap().0;
            let old = if self.flaw == Flaw::DeleteInclusive {
                ts <= cutoff
            } else {
                ts < cutoff
            };
            let ours = *f == field || self.flaw == Flaw::DeleteIgnoresField;
            !(ours && old)
        });
        Ok((before - cells.len()) as u64)
    }

    async fn merge_tiles(
        &self,
        merges: &[KeyMerge<'_>],
        merger: &dyn TileMerger,
    ) -> Result<MergeStats> {
        let mut stats = MergeStats::default();
        match self.flaw {
            Flaw::LosesConcurrentUpdates => {
                // Each request merged on a copy taken under the lock, written back under it
                // later: what another writer stored in between is lost.
                for (i, m) in merges.iter().enumerate() {
                    let mut copy = self.tiles.lock().unwrap().clone();
                    let s = self.apply(&mut copy, i, m, merger)?;
                    let mut t = self.tiles.lock().unwrap();
                    for d in m.tiles {
                        let k = self.tile_key(m.key, d.layer_in(m), d.start);
                        if let Some(v) = copy.irs.remove(&k) {
                            t.irs.insert(k, v);
                        }
                    }
                    t.positions.extend(copy.positions);
                    stats.add(s);
                }
            }
            Flaw::PartialKeyOnFailure => {
                let mut t = self.tiles.lock().unwrap();
                for (i, m) in merges.iter().enumerate() {
                    stats.add(self.apply(&mut t, i, m, merger)?);
                }
            }
            Flaw::ClaimsAtomicBatches => {
                for (i, m) in merges.iter().enumerate() {
                    let mut t = self.tiles.lock().unwrap();
                    let mut copy = t.clone();
                    stats.add(self.apply(&mut copy, i, m, merger)?);
                    *t = copy;
                }
            }
            _ => {
                // The whole call on a copy, swapped in at the end: atomic batches.
                let mut t = self.tiles.lock().unwrap();
                let mut copy = t.clone();
                for (i, m) in merges.iter().enumerate() {
                    stats.add(self.apply(&mut copy, i, m, merger)?);
                }
                *t = copy;
            }
        }
        Ok(stats)
    }

    async fn read_tiles(
        &self,
        keys: &[&[u8]],
        view: FieldId,
        starts: &[Timestamp],
    ) -> Result<quiver_online::TileCells> {
        let t = self.tiles.lock().unwrap();
        let mut out = quiver_online::TileCells::default();
        for k in keys {
            for &s in starts {
                out.push(t.irs.get(&self.tile_key(k, view, s)).map(Vec::as_slice));
            }
        }
        Ok(out)
    }

    async fn stream_positions(
        &self,
        keys: &[&[u8]],
        view: FieldId,
        partition: &[u8],
    ) -> Result<Vec<Option<u128>>> {
        let t = self.tiles.lock().unwrap();
        Ok(keys
            .iter()
            .map(|k| {
                t.positions
                    .get(&self.position_key(k, view, partition))
                    .copied()
            })
            .collect())
    }

    async fn delete_tiles_before(&self, view: FieldId, cutoff: Timestamp) -> Result<u64> {
        let view = self.tile_key(b"", view, 0).1;
        let mut t = self.tiles.lock().unwrap();
        let before = t.irs.len();
        t.irs.retain(|(_, v, start), _| {
            let old = if self.flaw == Flaw::DeleteTilesInclusive {
                *start <= cutoff
            } else {
                *start < cutoff
            };
            let ours = *v == view || self.flaw == Flaw::DeleteTilesIgnoresView;
            !(ours && old)
        });
        if self.flaw == Flaw::DeleteTilesDropsPositions {
            t.positions.retain(|(_, v, _), _| *v != view);
        }
        Ok((before - t.irs.len()) as u64)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            atomic_batches: !matches!(
                self.flaw,
                Flaw::LosesConcurrentUpdates | Flaw::PartialKeyOnFailure
            ),
            atomic_per_key: true,
            shared_across_processes: false,
            shared_across_hosts: false,
            durable_writes: false,
        }
    }

    fn backend(&self) -> &'static str {
        "memory-reference"
    }
}

#[derive(Clone, Copy, Debug)]
enum Check {
    NewerWins,
    WithinBatch,
    Replay,
    Missing,
    KeyMajor,
    Prefixes,
    LongKeys,
    Delete,
    RoundTrip,
    MergeOrder,
    TilesApart,
    TileReplays,
    DeleteTiles,
    ConcurrentMerges,
    Capabilities,
}

async fn run(check: Check, store: Arc<dyn OnlineStore>) {
    let arc = &store;
    let store = &*store;
    match check {
        Check::NewerWins => conformance::newer_wins(store).await,
        Check::WithinBatch => conformance::within_batch_newest_wins(store).await,
        Check::Replay => conformance::replay_is_idempotent(store).await,
        Check::Missing => conformance::missing_cells_read_none(store).await,
        Check::KeyMajor => conformance::reads_are_key_major(store).await,
        Check::Prefixes => conformance::key_prefixes_do_not_collide(store).await,
        Check::LongKeys => conformance::long_keys(store).await,
        Check::Delete => conformance::delete_older_than_is_per_field(store).await,
        Check::RoundTrip => conformance::values_round_trip(store).await,
        Check::MergeOrder => tile_checks::merges_apply_in_order(store).await,
        Check::TilesApart => tile_checks::tiles_do_not_mix(store).await,
        Check::TileReplays => tile_checks::replays_are_no_ops(store).await,
        Check::DeleteTiles => tile_checks::delete_tiles_before_is_per_view(store).await,
        Check::ConcurrentMerges => tile_checks::concurrent_merges_lose_no_update(arc).await,
        Check::Capabilities => tile_checks::declared_capabilities_hold(arc).await,
    }
}

#[tokio::test]
async fn the_reference_store_passes_the_suite() {
    let store: Arc<dyn OnlineStore> = Arc::new(MemStore::new(Flaw::None));
    conformance::run_all(store.clone()).await;
    conformance::run_all(store).await;
}

#[tokio::test]
async fn each_flaw_fails_its_check() {
    let cases = [
        (Flaw::AlwaysOverwrites, Check::NewerWins),
        (Flaw::AlwaysOverwrites, Check::Replay),
        (Flaw::SkipsEqual, Check::NewerWins),
        (Flaw::SkipsEqual, Check::WithinBatch),
        (Flaw::SkipsEqual, Check::Replay),
        (Flaw::SkipsEqual, Check::LongKeys),
        (Flaw::FirstEqualOfBatchWins, Check::WithinBatch),
        (Flaw::IgnoresCreatedTs, Check::NewerWins),
        (Flaw::ComparesBytes, Check::NewerWins),
        (Flaw::LastOfBatchWins, Check::WithinBatch),
        (Flaw::MiscountsSkips, Check::Replay),
        (Flaw::IgnoresField, Check::NewerWins),
        (Flaw::IgnoresField, Check::KeyMajor),
        (Flaw::IgnoresField, Check::Missing),
        (Flaw::IgnoresKeyPrefix, Check::Prefixes),
        (Flaw::TruncatesKeys, Check::LongKeys),
        (Flaw::TruncatesValues, Check::RoundTrip),
        (Flaw::FieldMajor, Check::KeyMajor),
        (Flaw::MissingAsEmpty, Check::Missing),
        (Flaw::DeleteIgnoresField, Check::Delete),
        (Flaw::DeleteInclusive, Check::Delete),
        (Flaw::IgnoresPositions, Check::TileReplays),
        (Flaw::IgnoresPositions, Check::ConcurrentMerges),
        (Flaw::ReplaysAtThePosition, Check::TileReplays),
        (Flaw::ComparesPositionBytes, Check::TileReplays),
        (Flaw::PositionsIgnoreView, Check::TileReplays),
        (Flaw::TilesIgnoreView, Check::TilesApart),
        (Flaw::ReversesDeltas, Check::MergeOrder),
        (Flaw::LosesConcurrentUpdates, Check::ConcurrentMerges),
        (Flaw::PartialKeyOnFailure, Check::Capabilities),
        (Flaw::ClaimsAtomicBatches, Check::Capabilities),
        (Flaw::DeleteTilesInclusive, Check::DeleteTiles),
        (Flaw::DeleteTilesIgnoresView, Check::DeleteTiles),
        (Flaw::DeleteTilesIgnoresView, Check::TilesApart),
        (Flaw::DeleteTilesDropsPositions, Check::DeleteTiles),
    ];
    for (flaw, check) in cases {
        // The flawless store passes the check...
        let good: Arc<dyn OnlineStore> = Arc::new(MemStore::new(Flaw::None));
        let passed = tokio::spawn(async move { run(check, good).await }).await;
        assert!(passed.is_ok(), "{check:?} fails on the reference store");
        // ...and the flawed one fails it.
        let bad: Arc<dyn OnlineStore> = Arc::new(MemStore::new(flaw));
        let result = tokio::spawn(async move { run(check, bad).await }).await;
        match result {
            Err(e) if e.is_panic() => {
                let msg = e.into_panic();
                let msg = msg
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| msg.downcast_ref::<&str>().copied())
                    .unwrap_or("");
                assert!(
                    msg.contains("conformance [memory-reference]"),
                    "{flaw:?}: {msg}"
                );
            }
            other => panic!("{check:?} did not catch {flaw:?}: {other:?}"),
        }
    }
}
