//! Stream ingestion's write (DESIGN §2 "a replayed event must not be counted twice", §5
//! "stream ingestion"): a batch of events read from one partition of a stream, each with
//! its offset, applied to a feature view through the one write path — validated rows
//! (see [`crate::write::validate`]) → online (tile merges for an aggregated view, the
//! conditional newest-row write for a snapshot view) → offline merge.
//!
//! **Exactly-once effect.** An aggregated view stores, per entity key and partition,
//! the last offset it applied, in the same atomic write as the tiles of all its layers
//! (its tile groups' hop tiles, and their day tiles when they keep them): one merge per
//! key covers every layer. A batch first reads those positions and leaves out every
//! event at or before its key's position, then merges the rest with the key's newest
//! offset as the new position (a merge whose position is not past the stored one is
//! skipped by the store). So a replay — a worker that died before committing its
//! consumer offsets, a rewind — changes no value, however the replayed range is cut into
//! batches. The position is kept under the view's own online field, which a changed
//! tile group's definition leaves as it is (so a rewind after a change counts no event
//! twice in the unchanged groups; a changed group starts with fresh tiles, which a
//! materialization fills from the offline table). Versions before kept one position per
//! tile layer, always equal (every layer of a key was merged in one atomic write): for a
//! key without a position of the view, the first group's hop layer's is read instead.
//! Snapshot rows need no positions: the
//! online write never replaces a newer row, and an equal one rewrites the same bytes.
//!
//! **Late events.** An event older than the oldest tile a group keeps (the view's
//! retention, else the group's longest window: what compaction keeps) is not merged into
//! that group's tiles, which no read uses any more; one that no group keeps is counted in
//! [`StreamStats::late`] and logged, and still written offline.

use std::collections::HashMap;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::TimestampMicrosecondType;
use quiver_core::agg::window::{align, DAY};
use quiver_core::agg::{Input, Ir, Order};
use quiver_core::encoding::encode_key_part;
use quiver_core::model::{ResolvedView, TileGroup};
use quiver_core::{Duration, Timestamp};
use quiver_offline::normalize::{stored_version, NormalizedBatch};
use quiver_offline::IngestStats;
use quiver_online::tiles::{KeyMerge, StreamPosition, TileDelta};
use quiver_online::{entity_key_into, OnlineStore};

use crate::write::{record_data, retrying, write_online_latest, Targets, WriteStats};
use crate::{Error, FeatureStore, Result};

/// Where a batch of events came from: a partition of a stream and each row's offset.
#[derive(Clone, Copy, Debug)]
pub struct StreamEvents<'a> {
    /// The partition's name (e.g. `kafka:topic:3`, `redis:stream-key`), opaque bytes.
    pub partition: &'a [u8],
    /// Each row's offset in the partition, in row order.
    pub offsets: &'a [u128],
}

/// What applying a batch of stream events did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Events in the batch.
    pub events: u64,
    /// Events merged into tiles (aggregated views; counted once per event), or offered
    /// to the newest-row write (snapshot views).
    pub applied: u64,
    /// Events at or before their key's stored position: already applied, left out.
    pub replayed: u64,
    /// Events older than every tile the view keeps: not applied online.
    pub late: u64,
    /// Distinct entity keys in the batch.
    pub keys: u64,
    /// Tiles merged (aggregated views) or rows stored (snapshot views) online.
    pub online_written: u64,
    /// The newest event time applied online.
    pub newest_event: Option<Timestamp>,
    /// The offline merge, when written offline.
    pub offline: Option<IngestStats>,
}

/// Applies a validated batch of stream events (the view's stored form, from
/// [`crate::write::validate`]) whose row `i` sits at `events.offsets[i]` of
/// `events.partition`: online first (exactly once per event, see the module docs), then
/// offline. `now` is the clock that decides which events are late.
pub async fn apply_events(
    store: &FeatureStore,
    view: &ResolvedView,
    batch: NormalizedBatch,
    events: StreamEvents<'_>,
    targets: Targets,
    now: Timestamp,
) -> Result<StreamStats> {
    let rows = batch.batch.num_rows();
    if events.offsets.len() != rows {
        return Err(Error::Invalid(format!(
            "{} offsets for {rows} events of feature view '{}'",
            events.offsets.len(),
            view.name
        )));
    }
    let mut stats = StreamStats {
        events: rows as u64,
        ..Default::default()
    };
    if targets.online && rows > 0 {
        let online = store.online().await?;
        if view.aggregations.is_empty() {
            let (keys, written) = write_online_latest(
                view,
                std::slice::from_ref(&batch.batch),
                online.as_ref(),
                &crate::NoProgress,
            )
            .await?;
            stats.keys = keys;
            stats.applied = rows as u64;
            stats.online_written = written;
            let ts = batch
                .batch
                .column(view.join_keys.len())
                .as_primitive::<TimestampMicrosecondType>();
            stats.newest_event = ts.values().iter().copied().max();
        } else {
            let retry_for = store.config().writes.retry_for.to_std();
            merge_events(
                view,
                &batch.batch,
                events,
                online.as_ref(),
                now,
                retry_for,
                &mut stats,
            )
            .await?;
        }
    }
    if targets.offline && rows > 0 {
        stats.offline = Some(store.offline().ingest(view, vec![batch]).await?);
    }
    let written = WriteStats {
        rows: stats.events,
        online_keys: stats.keys,
        online_written: stats.online_written,
        offline: stats.offline.clone(),
    };
    record_data(store, view, &written).await?;
    Ok(stats)
}

/// A key's merge: the key's index, its newest offset, the position read before (which
/// the merge follows), and its tiles' range in [`BuiltTiles::tiles`].
struct KeyTiles {
    key: usize,
    newest: u128,
    follows: Option<u128>,
    tiles: std::ops::Range<usize>,
}

/// The tiles built from a batch: per key its merge, the tiles as (layer, start, range
/// of their IR bytes in `bytes`), the bytes back to back.
#[derive(Default)]
struct BuiltTiles {
    keys: Vec<KeyTiles>,
    tiles: Vec<([u8; 8], Timestamp, std::ops::Range<usize>)>,
    bytes: Vec<u8>,
}

/// One tile layer of a group: its online field and its tile length (the hop, or a day).
struct Layer {
    field: [u8; 8],
    length: Duration,
}

/// Merges the events of `batch` into the tiles of every group of `view`, each layer
/// exactly once per event (module docs).
async fn merge_events(
    view: &ResolvedView,
    batch: &RecordBatch,
    events: StreamEvents<'_>,
    online: &dyn OnlineStore,
    now: Timestamp,
    retry_for: std::time::Duration,
    stats: &mut StreamStats,
) -> Result<()> {
    let nkeys = view.join_keys.len();
    let ts = batch
        .column(nkeys)
        .as_primitive::<TimestampMicrosecondType>();
    // The rows of each entity key (full online keys), keys in order of first appearance.
    let entity_set = view.entity_set();
    let mut keys: Vec<Vec<u8>> = Vec::new();
    let mut rows_of: Vec<Vec<usize>> = Vec::new();
    {
        let mut index: HashMap<Vec<u8>, usize> = HashMap::new();
        let (mut part, mut key) = (Vec::new(), Vec::new());
        for r in 0..batch.num_rows() {
            part.clear();
            for c in 0..nkeys {
                encode_key_part(batch.column(c).as_ref(), r, &mut part)?;
            }
            entity_key_into(&view.project, &entity_set, &part, &mut key);
            let i = match index.get(key.as_slice()) {
                Some(&i) => i,
                None => {
                    index.insert(key.clone(), keys.len());
                    keys.push(key.clone());
                    rows_of.push(Vec::new());
                    keys.len() - 1
                }
            };
            rows_of[i].push(r);
        }
    }
    stats.keys = keys.len() as u64;
    let key_refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    let groups = view.tile_groups()?;
    // Per event: whether some layer applied it, and whether some group found it late.
    let mut applied = vec![false; batch.num_rows()];
    let mut late = vec![false; batch.num_rows()];
    let mut replayed = vec![true; batch.num_rows()];
    let mut values: Vec<Input<'_>> = Vec::new();
    let columns = crate::write::group_columns(view, &groups);
    // One key's tiles of a group while they are built, per layer of the group: (start,
    // index into `pool`), the IRs kept between keys with their buffers.
    let mut building: [Vec<(Timestamp, usize)>; 2] = Default::default();
    let mut pool: Vec<Vec<Ir>> = Vec::new();
    // Each group's layers: its hop tiles, and its day tiles when it keeps them.
    let layers: Vec<Vec<Layer>> = groups
        .iter()
        .map(|g| {
            std::iter::once(Layer {
                field: g.field,
                length: g.hop,
            })
            .chain(g.day_field.map(|field| Layer {
                field,
                length: Duration::from_micros(DAY),
            }))
            .collect()
        })
        .collect();
    let oldest: Vec<Timestamp> = groups
        .iter()
        .map(|g| crate::compact::oldest_tile(view, g, now))
        .collect();
    // The view's own field: unlike a tile group's, it does not change when a group's
    // definition does, so the other groups keep their exactly-once effect.
    let position_field = view.online_field();
    // Where versions before it kept the position (one per tile layer, all equal): the
    // first group's hop layer, read for keys that have no position of the view yet.
    let legacy_field = groups[0].field;
    // Built from the positions read, merged (every layer in one call) only where they
    // are still stored (compare-and-set); keys another writer moved on meanwhile are
    // built again from the positions it left (its events then count as replays), the
    // others kept as they were.
    let mut pending: Vec<usize> = (0..keys.len()).collect();
    let mut attempt = 0;
    loop {
        let pending_keys: Vec<&[u8]> = pending.iter().map(|&ki| key_refs[ki]).collect();
        let stored = retrying(retry_for, || {
            online.stream_positions(&pending_keys, position_field, events.partition)
        })
        .await?;
        let legacy = legacy_positions(
            online,
            &pending_keys,
            &stored,
            legacy_field,
            events.partition,
            retry_for,
        )
        .await?;
        let mut built = BuiltTiles::default();
        // The key's events past its stored position, each with its order.
        let mut fresh: Vec<(usize, Order)> = Vec::new();
        for (pi, &ki) in pending.iter().enumerate() {
            let rows = &rows_of[ki];
            fresh.clear();
            let position = stored[pi].or(legacy[pi]);
            for &r in rows {
                if position.is_none_or(|s| events.offsets[r] > s) {
                    replayed[r] = false;
                    fresh.push((r, stored_version(batch, nkeys, r).into()));
                }
            }
            let Some(newest) = fresh.iter().map(|&(r, _)| events.offsets[r]).max() else {
                continue;
            };
            let first = built.tiles.len();
            for (gi, g) in groups.iter().enumerate() {
                let mut used = 0;
                for b in &mut building {
                    b.clear();
                }
                for &(r, order) in &fresh {
                    let t = ts.value(r);
                    if t < oldest[gi] {
                        late[r] = true;
                        continue;
                    }
                    crate::write::group_inputs(batch, &columns[gi], r, &mut values);
                    for (layer, building) in layers[gi].iter().zip(&mut building) {
                        let start = align(t, layer.length);
                        let slot = match building.iter().find(|(s, _)| *s == start) {
                            Some(&(_, slot)) => slot,
                            None => {
                                if pool.len() == used {
                                    pool.push(Vec::new());
                                }
                                g.layout.reset(&mut pool[used]);
                                building.push((start, used));
                                used += 1;
                                used - 1
                            }
                        };
                        g.layout.update(&mut pool[slot], &values, order);
                    }
                    applied[r] = true;
                }
                for (layer, building) in layers[gi].iter().zip(&mut building) {
                    building.sort_unstable_by_key(|(start, _)| *start);
                    for &(start, slot) in building.iter() {
                        let at = built.bytes.len();
                        g.layout.encode(&pool[slot], &mut built.bytes);
                        built
                            .tiles
                            .push((layer.field, start, at..built.bytes.len()));
                    }
                }
            }
            built.keys.push(KeyTiles {
                key: ki,
                newest,
                follows: stored[pi],
                tiles: first..built.tiles.len(),
            });
        }
        let merged = merge_keys(
            &groups,
            &built,
            position_field,
            &key_refs,
            events,
            online,
            retry_for,
        )
        .await?;
        stats.online_written += merged.tiles;
        if merged.left_out.is_empty() {
            break;
        }
        // Keys whose merge was left out (another writer moved their position since it
        // was read) are built again from the position stored now, their events'
        // accounting started over (those the other writer applied become replays).
        pending = merged.left_out.iter().map(|&m| built.keys[m].key).collect();
        pending.sort_unstable();
        for &ki in &pending {
            for &r in &rows_of[ki] {
                (applied[r], late[r], replayed[r]) = (false, false, true);
            }
        }
        attempt += 1;
        if attempt == 16 {
            return Err(Error::Online(quiver_online::Error::store(format!(
                "feature view '{}': another writer kept moving the stream positions of \
             partition {} (16 attempts)",
                view.name,
                quiver_online::tiles::describe_partition(events.partition)
            ))));
        }
    }
    for r in 0..batch.num_rows() {
        if applied[r] {
            let t = ts.value(r);
            stats.newest_event = Some(stats.newest_event.map_or(t, |n| n.max(t)));
        }
        stats.applied += u64::from(applied[r]);
        stats.replayed += u64::from(replayed[r]);
        // Late only where no group keeps its tile (an event older than a short window's
        // tiles still counts in the long windows of another group).
        stats.late += u64::from(late[r] && !applied[r] && !replayed[r]);
    }
    if stats.late > 0 {
        tracing::warn!(
            view = %view.name,
            partition = %quiver_online::tiles::describe_partition(events.partition),
            late = stats.late,
            "events older than the tiles the view keeps (its retention or longest window) \
             were not applied online"
        );
    }
    Ok(())
}

/// The positions kept by versions that stored one per tile layer, under `field`, of the
/// keys with no position of the view (`stored`); `None` for the others. Those positions
/// are no longer written, so the merge's compare-and-set stays on the view's position.
async fn legacy_positions(
    online: &dyn OnlineStore,
    keys: &[&[u8]],
    stored: &[Option<u128>],
    field: [u8; 8],
    partition: &[u8],
    retry_for: std::time::Duration,
) -> Result<Vec<Option<u128>>> {
    let missing: Vec<&[u8]> = keys
        .iter()
        .zip(stored)
        .filter(|(_, s)| s.is_none())
        .map(|(k, _)| *k)
        .collect();
    let mut out = vec![None; keys.len()];
    if missing.is_empty() {
        return Ok(out);
    }
    let found = retrying(retry_for, || {
        online.stream_positions(&missing, field, partition)
    })
    .await?;
    let mut found = found.into_iter();
    for (o, s) in out.iter_mut().zip(stored) {
        if s.is_none() {
            *o = found.next().flatten();
        }
    }
    Ok(out)
}

/// Writes the built tiles of every layer in one `merge_tiles` call (one transaction of
/// the embedded store, one round trip per key group on Redis): one merge per key, with
/// its newest offset and the position it follows, its tiles naming their layers; the
/// merger takes each tile's layout from its layer.
async fn merge_keys(
    groups: &[TileGroup],
    built: &BuiltTiles,
    position_field: [u8; 8],
    keys: &[&[u8]],
    events: StreamEvents<'_>,
    online: &dyn OnlineStore,
    retry_for: std::time::Duration,
) -> Result<quiver_online::MergeStats> {
    let deltas: Vec<TileDelta<'_>> = built
        .tiles
        .iter()
        .map(|(layer, start, ir)| TileDelta {
            start: *start,
            ir: &built.bytes[ir.clone()],
            layer: Some(*layer),
        })
        .collect();
    let merges: Vec<KeyMerge<'_>> = built
        .keys
        .iter()
        .map(|k| KeyMerge {
            key: keys[k.key],
            view: position_field,
            position: Some(StreamPosition {
                partition: events.partition,
                offset: k.newest,
                follows: Some(k.follows),
            }),
            tiles: &deltas[k.tiles.clone()],
        })
        .collect();
    if merges.is_empty() {
        return Ok(quiver_online::MergeStats::default());
    }
    let merger = LayoutsByField(
        groups
            .iter()
            .flat_map(|g| {
                std::iter::once((g.field, &g.layout)).chain(g.day_field.map(|f| (f, &g.layout)))
            })
            .collect(),
    );
    retrying(retry_for, || online.merge_tiles(&merges, &merger)).await
}

/// A merger of the tiles of several tile groups: each view field's layout.
struct LayoutsByField<'a>(Vec<([u8; 8], &'a quiver_core::agg::tile::TileLayout)>);

impl quiver_online::TileMerger for LayoutsByField<'_> {
    fn merge(&self, _: Option<&[u8]>, _: &[u8], _: &mut Vec<u8>) -> quiver_online::Result<()> {
        Err(quiver_online::Error::Invalid(
            "a merge of several tile groups needs the tile's view".into(),
        ))
    }

    fn merge_for(
        &self,
        view: &[u8; 8],
        stored: Option<&[u8]>,
        delta: &[u8],
        out: &mut Vec<u8>,
    ) -> quiver_online::Result<()> {
        let (_, layout) = self
            .0
            .iter()
            .find(|(f, _)| f == view)
            .ok_or_else(|| quiver_online::Error::Invalid("a tile of an unknown view".into()))?;
        layout
            .merge_bytes(stored, delta, out)
            .map_err(|e| quiver_online::Error::Invalid(e.0))
    }
}

/// Events of one stream partition waiting for the offline table.
#[derive(Clone, Debug)]
pub struct OfflineEvents {
    /// The events, validated (the view's stored form).
    pub rows: NormalizedBatch,
    /// Their partition.
    pub partition: std::sync::Arc<[u8]>,
    /// Each row's offset in it.
    pub offsets: Vec<u128>,
}

/// Writes stream events (already applied online, [`apply_events`] with `online` only)
/// to the view's offline table — a stream worker's micro-batch — and records the newest
/// event time in the registry. An aggregated view's events are appended exactly once:
/// those at or before the newest offset of their partition already in the table (a
/// replay) are left out, and the new newest offsets are committed with the rows
/// ([`quiver_offline::OfflineStore::append_events`]); two events alike in every value
/// stay two. A snapshot view's rows are merged as an ingest merges them (a row equal in
/// key and times to a stored one replaces it).
pub async fn write_offline(
    store: &FeatureStore,
    view: &ResolvedView,
    parts: Vec<OfflineEvents>,
) -> Result<IngestStats> {
    // Another writer of the table (a worker of another partition or stream, an ingest)
    // may commit first: Delta refuses the later commit as a whole, and the write is
    // made again over the new table version (re-reading the stored offsets).
    let mut attempt = 1u32;
    loop {
        match write_offline_once(store, view, parts.clone()).await {
            Err(crate::Error::Offline(quiver_offline::Error::Delta(e))) if attempt < 8 => {
                tracing::warn!(view = %view.name, attempt, error = %e,
                               "offline commit refused; writing again");
                tokio::time::sleep(std::time::Duration::from_millis(10 << attempt)).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

async fn write_offline_once(
    store: &FeatureStore,
    view: &ResolvedView,
    parts: Vec<OfflineEvents>,
) -> Result<IngestStats> {
    let stats = if view.aggregations.is_empty() {
        let batches: Vec<NormalizedBatch> = parts.into_iter().map(|p| p.rows).collect();
        store.offline().ingest(view, batches).await?
    } else {
        let mut names: Vec<std::sync::Arc<[u8]>> = Vec::new();
        for p in &parts {
            if !names.iter().any(|n| **n == *p.partition) {
                names.push(p.partition.clone());
            }
        }
        let refs: Vec<&[u8]> = names.iter().map(|n| &**n).collect();
        let (stored, read_at) = store.offline().stream_offsets(view, &refs).await?;
        // Per partition, the newest offset stored or kept so far: an event at or before
        // it is a replay — of a range already in the table, or of one read twice within
        // this micro-batch (a Kafka rebalance resumes a partition from its committed
        // offset while what was read after it still waits here).
        let mut high = stored.clone();
        let mut batches = Vec::new();
        for p in parts {
            let i = names
                .iter()
                .position(|n| **n == *p.partition)
                .expect("every partition is named");
            let keep: Vec<bool> = p
                .offsets
                .iter()
                .map(|&o| {
                    let new = high[i].is_none_or(|h| o > h);
                    if new {
                        high[i] = Some(o);
                    }
                    new
                })
                .collect();
            if keep.iter().all(|k| *k) {
                batches.push(p.rows);
            } else if keep.iter().any(|k| *k) {
                let mask = arrow::array::BooleanArray::from(keep);
                batches.push(NormalizedBatch::from(arrow::compute::filter_record_batch(
                    &p.rows.batch,
                    &mask,
                )?));
            }
        }
        let offsets: Vec<(&[u8], u128)> = refs
            .iter()
            .zip(high.iter().zip(&stored))
            .filter(|(_, (h, s))| h != s)
            .filter_map(|(p, (h, _))| h.map(|h| (*p, h)))
            .collect();
        if batches.is_empty() {
            return Ok(IngestStats::default());
        }
        store
            .offline()
            .append_events(view, batches, &offsets, read_at)
            .await?
    };
    let written = WriteStats {
        rows: stats.rows_in,
        offline: Some(stats.clone()),
        ..Default::default()
    };
    record_data(store, view, &written).await?;
    Ok(stats)
}
