//! The one write path (DESIGN §3): every way rows enter quiver — ingest of batch
//! sources, materialization, push, and next stream ingestion and backfills — goes
//! through the functions here: **validate** ([`validate`]: keys present and typed, times
//! parsable, features of an accepted type, with the file, row and column named) →
//! **conditional online write** ([`write_online_latest`]: the newest row per key, never
//! replacing a fresher stored row) → **offline merge** (the view's Delta table, re-runs
//! keep one copy). [`write`] runs the online and offline halves a request asks for.
//!
//! CSV typing lives here once too ([`read_typed`]): CSV columns carry no types, so join
//! keys, time columns and declared columns are read as the registry declares them.

use std::path::Path;

use arrow::array::{ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, TimestampMicrosecondType};
use quiver_core::contract::RowVersion;
use quiver_core::encoding::{encode_key_part, encode_row};
use quiver_core::model::{FileFormat, ResolvedView};
use quiver_core::pit::BytesKeyIndex;
use quiver_core::time::{format_timestamp, Timestamp};
use quiver_offline::files;
use quiver_offline::normalize::{normalize, stored_version, NormalizedBatch, Origin};
use quiver_offline::IngestStats;
use quiver_online::{entity_key_into, OnlineStore, OnlineWrite};

use crate::{Error, FeatureStore, Result};

/// Rows written per online write batch (one transaction in the embedded store).
const WRITE_BATCH: usize = 20_000;

/// Where validated rows go.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Targets {
    /// The online store: the newest row per key, conditionally (newer wins).
    pub online: bool,
    /// The offline store: merged into the view's table.
    pub offline: bool,
}

impl Targets {
    /// The online store only (stream events, whose offline write comes in
    /// micro-batches).
    pub const ONLINE: Targets = Targets {
        online: true,
        offline: false,
    };
    /// The offline store only.
    pub const OFFLINE: Targets = Targets {
        online: false,
        offline: true,
    };
    /// Both stores.
    pub const BOTH: Targets = Targets {
        online: true,
        offline: true,
    };
}

/// What a write did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Rows validated.
    pub rows: u64,
    /// Online: distinct entity keys offered, and rows stored (the others were not newer
    /// than the stored row).
    pub online_keys: u64,
    pub online_written: u64,
    /// Offline: what the merge did.
    pub offline: Option<IngestStats>,
}

/// Where a batch's time columns are and where it came from.
#[derive(Clone, Debug)]
pub struct Input<'a> {
    /// The event-time column (the source's `timestamp_field`).
    pub timestamp_field: &'a str,
    /// The creation-time column, when the source has one.
    pub created_field: Option<&'a str>,
    /// For messages: the file (or "push request") and the number of the batch's first row.
    pub origin: Origin<'a>,
    /// The latest event time accepted: the writer's clock plus `writes.max_future_skew`.
    pub not_after: Timestamp,
}

impl Input<'_> {
    /// The latest event time a writer whose clock reads `now` accepts under `config`.
    pub fn not_after(config: &quiver_registry::RepoConfig, now: Timestamp) -> Timestamp {
        now.saturating_add(config.writes.max_future_skew.micros())
    }
}

/// Validates a batch of source rows and converts it to the view's stored form: keys
/// present and typed, times parsable (rounded up to whole microseconds, what rounding
/// took kept so that the offline merge can refuse two rows it made equal) and not
/// beyond `input.not_after`, features of an accepted type. Errors name the file (or
/// request), row and column.
pub fn validate(
    view: &ResolvedView,
    batch: &RecordBatch,
    input: &Input<'_>,
) -> Result<NormalizedBatch> {
    let out = normalize(
        batch,
        view,
        input.timestamp_field,
        input.created_field,
        &input.origin,
    )?;
    let ts = out
        .batch
        .column(view.join_keys.len())
        .as_primitive::<TimestampMicrosecondType>();
    if let Some(i) = ts.values().iter().position(|&t| t > input.not_after) {
        return Err(Error::Invalid(format!(
            "{}: row {}, column '{}': event time {} is later than the clock allows ({}, \
             writes.max_future_skew in quiver.yaml): a future row would hide every real \
             update of its key until then",
            input.origin.file,
            input.origin.first_row + i,
            input.timestamp_field,
            format_timestamp(ts.value(i)),
            format_timestamp(input.not_after),
        )));
    }
    Ok(out)
}

/// Reads a Parquet or CSV file; CSV columns named in `types` are read as those types
/// (the others inferred).
pub fn read_typed(
    path: &Path,
    format: FileFormat,
    types: &[(String, DataType)],
) -> Result<Vec<RecordBatch>> {
    let csv_schema = match format {
        FileFormat::Parquet => None,
        FileFormat::Csv => {
            let inferred = files::read_schema(path, format)?;
            Some(files::csv_schema_with(&inferred, types))
        }
    };
    Ok(files::read_file(path, format, csv_schema)?)
}

/// The CSV types of a view's source columns: keys, features and the time columns
/// (read as text and parsed by the time contract's rules).
pub fn source_types(
    view: &ResolvedView,
    timestamp_field: &str,
    created_field: Option<&str>,
) -> Vec<(String, DataType)> {
    let mut types: Vec<(String, DataType)> = view
        .join_keys
        .iter()
        .map(|k| {
            (
                k.name.clone(),
                quiver_offline::normalize::key_csv_type(&k.dtype),
            )
        })
        .collect();
    types.extend(
        view.features
            .iter()
            .map(|f| (f.name.clone(), f.dtype.to_arrow())),
    );
    types.push((timestamp_field.to_string(), DataType::Utf8));
    if let Some(c) = created_field {
        types.push((c.to_string(), DataType::Utf8));
    }
    types
}

/// Writes validated rows (the view's stored form) to the targets: online first (the
/// newest row per key, conditionally), then the offline merge.
pub async fn write(
    store: &FeatureStore,
    view: &ResolvedView,
    batches: Vec<NormalizedBatch>,
    targets: Targets,
) -> Result<WriteStats> {
    let mut stats = WriteStats {
        rows: batches.iter().map(|b| b.batch.num_rows() as u64).sum(),
        ..Default::default()
    };
    if !view.aggregations.is_empty() {
        return write_events(store, view, batches, targets, stats).await;
    }
    if targets.online {
        let online = store.online().await?;
        let rows: Vec<RecordBatch> = batches.iter().map(|b| b.batch.clone()).collect();
        let (keys, written) =
            write_online_latest(view, &rows, online.as_ref(), &crate::NoProgress).await?;
        stats.online_keys = keys;
        stats.online_written = written;
    }
    if targets.offline {
        stats.offline = Some(store.offline().ingest(view, batches).await?);
    }
    record_data(store, view, &stats).await?;
    Ok(stats)
}

/// Writes events of an aggregated view: offline first (the event table's merge: an
/// event sent again is stored once), then its keys' tiles that the events fall in are
/// recomputed whole from the stored events, so a repeated write changes nothing and the
/// tiles stay exactly what a backfill would write.
async fn write_events(
    store: &FeatureStore,
    view: &ResolvedView,
    batches: Vec<NormalizedBatch>,
    targets: Targets,
    mut stats: WriteStats,
) -> Result<WriteStats> {
    if !targets.offline {
        return Err(Error::Invalid(format!(
            "feature view '{}' is an aggregated view: its events are written offline and \
             online together (to: online_and_offline), its tiles being computed from the \
             stored events",
            view.name
        )));
    }
    let nkeys = view.join_keys.len();
    let mut keys = std::collections::HashSet::new();
    let (mut lo, mut hi) = (Timestamp::MAX, Timestamp::MIN);
    for b in &batches {
        let ts = b
            .batch
            .column(nkeys)
            .as_primitive::<TimestampMicrosecondType>();
        for r in 0..b.batch.num_rows() {
            let mut k = Vec::new();
            for c in 0..nkeys {
                encode_key_part(b.batch.column(c).as_ref(), r, &mut k)?;
            }
            keys.insert(k);
            lo = lo.min(ts.value(r));
            hi = hi.max(ts.value(r));
        }
    }
    stats.offline = Some(store.offline().ingest(view, batches).await?);
    if targets.online && !keys.is_empty() {
        use quiver_core::agg::window::align;
        let from = view
            .aggregations
            .iter()
            .map(|a| align(lo, a.hop))
            .min()
            .unwrap_or(lo);
        let to = view
            .aggregations
            .iter()
            .map(|a| align(hi, a.hop).saturating_add(a.hop.micros()))
            .max()
            .unwrap_or(hi);
        let mut events = Vec::new();
        for b in store.offline().read_range(view, from, to).await? {
            let mut mask = Vec::with_capacity(b.num_rows());
            for r in 0..b.num_rows() {
                let mut k = Vec::new();
                for c in 0..nkeys {
                    encode_key_part(b.column(c).as_ref(), r, &mut k)?;
                }
                mask.push(keys.contains(&k));
            }
            events.push(arrow::compute::filter_record_batch(&b, &mask.into())?);
        }
        let online = store.online().await?;
        let retry_for = store.config().writes.retry_for.to_std();
        let (k, _tiles) = write_tiles(
            view,
            &events,
            online.as_ref(),
            &crate::NoProgress,
            retry_for,
        )
        .await?;
        // Every event is in its tiles online (the tiles were recomputed with it).
        stats.online_keys = k;
        stats.online_written = stats.rows;
    }
    record_data(store, view, &stats).await?;
    Ok(stats)
}

/// Records in the registry that the written version has data, so that training and
/// serving move to it (see `RegistryState::training_view` and `serving_view`): the
/// newest event time ingested offline, and that rows were pushed online. The registry
/// is written only when a marker changes.
pub(crate) async fn record_data(
    store: &FeatureStore,
    view: &ResolvedView,
    stats: &WriteStats,
) -> Result<()> {
    let max = stats.offline.as_ref().and_then(|o| o.max_event_ts);
    let pushed = stats.online_written > 0;
    let state = store.state()?;
    let record = state.view(&view.name)?;
    let newer_offline = max.is_some_and(|m| record.ingested_until.is_none_or(|u| u < m));
    let first_online = pushed && !record.has_online_data();
    if record.version != view.version || !(newer_offline || first_online) {
        return Ok(());
    }
    let (name, version) = (view.name.clone(), view.version);
    store
        .update_state(move |s| {
            if let Some(v) = s
                .feature_views
                .get_mut(&name)
                .filter(|v| v.version == version)
            {
                if let Some(m) = max {
                    v.ingested_until = Some(v.ingested_until.map_or(m, |u| u.max(m)));
                }
                if pushed && !v.has_online_data() {
                    v.pushed_online = true;
                }
            }
        })
        .await
}

/// Reports progress of long writes (the CLI draws a bar).
pub trait Progress: Send + Sync {
    /// A write of `total` rows to `view` starts.
    fn start(&self, view: &str, total: u64);
    /// `n` more rows are done.
    fn advance(&self, n: u64);
    /// The write is over.
    fn finish(&self);
}

/// No progress reporting.
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _: &str, _: u64) {}
    fn advance(&self, _: u64) {}
    fn finish(&self) {}
}

/// Picks the newest row per entity key of validated batches and writes them online in
/// batches of conditional writes (a stored row that is newer stays). Returns (distinct
/// keys, rows stored).
pub async fn write_online_latest(
    view: &ResolvedView,
    batches: &[RecordBatch],
    online: &dyn OnlineStore,
    progress: &dyn Progress,
) -> Result<(u64, u64)> {
    write_online_latest_retrying(view, batches, online, progress, std::time::Duration::ZERO).await
}

/// [`write_online_latest`], re-sending a batch the store failed to write (a connection
/// lost, a timeout) with backoff for up to `retry_for` in all. Writes are conditional
/// (newer wins, equal versions rewrite the same bytes), so rows of a batch that did
/// reach the store before the failure are not applied twice: re-sent, they change
/// nothing.
pub async fn write_online_latest_retrying(
    view: &ResolvedView,
    batches: &[RecordBatch],
    online: &dyn OnlineStore,
    progress: &dyn Progress,
    retry_for: std::time::Duration,
) -> Result<(u64, u64)> {
    let nkeys = view.join_keys.len();
    let mut index = BytesKeyIndex::new();
    let mut best: Vec<(RowVersion, u32, u32)> = Vec::new();
    let mut buf = Vec::new();
    for (bi, b) in batches.iter().enumerate() {
        for r in 0..b.num_rows() {
            buf.clear();
            for k in 0..nkeys {
                encode_key_part(b.column(k).as_ref(), r, &mut buf)?;
            }
            let version = stored_version(b, nkeys, r);
            let g = index.insert(&buf) as usize;
            if g == best.len() {
                best.push((version, bi as u32, r as u32));
            } else if version >= best[g].0 {
                best[g] = (version, bi as u32, r as u32);
            }
        }
    }
    progress.start(&view.name, best.len() as u64);
    let field = view.online_field();
    let entity_set = view.entity_set();
    let feature_cols: Vec<Vec<ArrayRef>> = batches
        .iter()
        .map(|b| b.columns()[nkeys + 2..nkeys + 2 + view.features.len()].to_vec())
        .collect();
    let mut written = 0;
    let mut keys_buf: Vec<u8> = Vec::new();
    let mut rows_buf: Vec<u8> = Vec::new();
    let mut spans: Vec<(usize, usize, usize, usize)> = Vec::with_capacity(WRITE_BATCH);
    let mut key = Vec::new();
    for chunk in best.chunks(WRITE_BATCH) {
        keys_buf.clear();
        rows_buf.clear();
        spans.clear();
        for &(version, bi, r) in chunk {
            let (bi, r) = (bi as usize, r as usize);
            let b = &batches[bi];
            buf.clear();
            for k in 0..nkeys {
                encode_key_part(b.column(k).as_ref(), r, &mut buf)?;
            }
            entity_key_into(&view.project, &entity_set, &buf, &mut key);
            let (k0, r0) = (keys_buf.len(), rows_buf.len());
            keys_buf.extend_from_slice(&key);
            encode_row(
                version.event_ts,
                version.created_ts,
                &feature_cols[bi],
                r,
                &mut rows_buf,
            )?;
            spans.push((k0, keys_buf.len(), r0, rows_buf.len()));
        }
        let writes: Vec<OnlineWrite<'_>> = spans
            .iter()
            .map(|&(k0, k1, r0, r1)| OnlineWrite {
                key: &keys_buf[k0..k1],
                field,
                row: &rows_buf[r0..r1],
            })
            .collect();
        written += write_with_retries(online, &writes, retry_for)
            .await?
            .written;
        progress.advance(chunk.len() as u64);
        quiver_core::fault::crash_point("write.after_online_batch");
    }
    progress.finish();
    Ok((best.len() as u64, written))
}

/// One conditional batch write, re-sent after store failures with exponential backoff
/// (50 ms doubling to 2 s) while `retry_for` allows.
async fn write_with_retries(
    online: &dyn OnlineStore,
    writes: &[OnlineWrite<'_>],
    retry_for: std::time::Duration,
) -> Result<quiver_online::WriteStats> {
    retrying(retry_for, || online.write(writes)).await
}

/// Runs a store call, calling it again after store failures (a connection lost, a
/// timeout) with exponential backoff (50 ms doubling to 2 s) while `retry_for` allows.
/// The calls retried are idempotent (conditional row writes, whole-tile replacements).
pub(crate) async fn retrying<T, F, Fut>(retry_for: std::time::Duration, mut call: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = quiver_online::Result<T>>,
{
    let started = std::time::Instant::now();
    let mut delay = std::time::Duration::from_millis(50);
    loop {
        match call().await {
            Ok(v) => return Ok(v),
            Err(e @ quiver_online::Error::Store { .. })
                if started.elapsed() + delay <= retry_for =>
            {
                tracing::warn!(
                    error = %e,
                    retry_in_ms = delay.as_millis() as u64,
                    "online write failed; sending the batch again"
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(2));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// For each tile group of `view`, the column of each stored slot in the view's stored
/// batches (keys, event time, creation time, then the features; `None` for
/// count_star).
pub(crate) fn group_columns(
    view: &ResolvedView,
    groups: &[quiver_core::model::TileGroup],
) -> Vec<Vec<Option<usize>>> {
    let nkeys = view.join_keys.len();
    groups
        .iter()
        .map(|g| {
            g.columns
                .iter()
                .map(|c| {
                    c.as_ref()
                        .and_then(|c| view.features.iter().position(|f| &f.name == c))
                        .map(|i| nkeys + 2 + i)
                })
                .collect()
        })
        .collect()
}

/// Row `r`'s inputs to a tile group's slots into `out` (cleared first): the values of
/// the slots' `columns` in `batch` ([`group_columns`]), null for count_star.
pub(crate) fn group_inputs<'a>(
    batch: &'a RecordBatch,
    columns: &[Option<usize>],
    r: usize,
    out: &mut Vec<quiver_core::agg::Input<'a>>,
) {
    out.clear();
    out.extend(columns.iter().map(|ci| match ci {
        Some(ci) => quiver_offline::aggregate::input_at(batch.column(*ci).as_ref(), r),
        None => quiver_core::agg::Input::Null,
    }));
}

/// Tiles written per `merge_tiles` call.
const TILE_BATCH: usize = 5_000;

/// Writes an aggregated view's tiles computed from its stored events in `batches`,
/// which must hold every event of each tile they touch (of the keys they hold): each
/// tile is computed whole and replaces the stored one, so a rerun over the same events
/// leaves the same bytes. Returns (keys, tiles written).
pub async fn write_tiles(
    view: &ResolvedView,
    batches: &[RecordBatch],
    online: &dyn OnlineStore,
    progress: &dyn Progress,
    retry_for: std::time::Duration,
) -> Result<(u64, u64)> {
    use quiver_core::agg::window::align;
    use quiver_core::agg::{Input, Ir, Order};
    use quiver_online::tiles::{KeyMerge, TileDelta};
    use rayon::prelude::*;
    use std::collections::{BTreeMap, HashMap};

    let nkeys = view.join_keys.len();
    let groups = view.tile_groups()?;
    let entity_set = view.entity_set();
    // What is written: each group's hop tiles, and its day tiles when it keeps them —
    // (group, whether day tiles, field).
    let day = quiver_core::time::Duration::from_micros(quiver_core::agg::window::DAY);
    // Day tiles first: should a run stop between the two, a window's whole days are
    // read from day tiles that are never older than the hop tiles beside them.
    let layers: Vec<(usize, bool, [u8; 8])> = groups
        .iter()
        .enumerate()
        .flat_map(|(gi, g)| {
            g.day_field
                .map(|f| (gi, true, f))
                .into_iter()
                .chain(std::iter::once((gi, false, g.field)))
        })
        .collect();
    // Per group, per key: tile start → IRs.
    type Tiles = BTreeMap<i64, Vec<Ir>>;
    // (entity key, its tiles as (start, bytes)).
    type KeyTiles = (Vec<u8>, Vec<(i64, Vec<u8>)>);
    let column_index = group_columns(view, &groups);
    // Tiles are built and encoded in shards of the keys (by a hash of the key), shards
    // in parallel: each reads every event and keeps its own keys'.
    let shards = rayon::current_num_threads().max(1) as u64;
    let build = |shard: u64| -> Result<Vec<Vec<KeyTiles>>> {
        let mut per_layer: Vec<HashMap<Vec<u8>, Tiles>> = vec![HashMap::new(); layers.len()];
        let mut buf = Vec::new();
        let mut values: Vec<Input<'_>> = Vec::new();
        for b in batches {
            for r in 0..b.num_rows() {
                buf.clear();
                for k in 0..nkeys {
                    encode_key_part(b.column(k).as_ref(), r, &mut buf)?;
                }
                if shards > 1 && xxhash_rust::xxh3::xxh3_64(&buf) % shards != shard {
                    continue;
                }
                let order: Order = stored_version(b, nkeys, r).into();
                for (li, &(gi, is_day, _)) in layers.iter().enumerate() {
                    if is_day {
                        continue; // day tiles are merged from the hop tiles below
                    }
                    let g = &groups[gi];
                    group_inputs(b, &column_index[gi], r, &mut values);
                    let tiles = match per_layer[li].get_mut(buf.as_slice()) {
                        Some(t) => t,
                        None => per_layer[li].entry(buf.clone()).or_default(),
                    };
                    let irs = tiles
                        .entry(align(order.event_ts, g.hop))
                        .or_insert_with(|| g.layout.empty());
                    g.layout.update(irs, &values, order);
                }
            }
        }
        // Day tiles, each the merge of its day's hop tiles (merges are exact: the same
        // IRs as updating it with the day's events): one for every day with events, so
        // that a read of a window's whole days asks for day tiles only.
        for (li, &(gi, is_day, _)) in layers.iter().enumerate() {
            if !is_day {
                continue;
            }
            let g = &groups[gi];
            let hops = layers
                .iter()
                .position(|l| l.0 == gi && !l.1)
                .expect("a group's hop tiles");
            let mut days: HashMap<Vec<u8>, Tiles> = HashMap::new();
            for (k, hop_tiles) in &per_layer[hops] {
                let mut of_key = Tiles::new();
                let mut at = hop_tiles.iter().peekable();
                while let Some((&start, irs)) = at.next() {
                    let d = align(start, day);
                    let mut merged = irs.clone();
                    while let Some((_, more)) = at.next_if(|(&next, _)| align(next, day) == d) {
                        for ((a, ir), o) in g.layout.aggregations.iter().zip(&mut merged).zip(more)
                        {
                            a.merge(ir, o);
                        }
                    }
                    of_key.insert(d, merged);
                }
                if !of_key.is_empty() {
                    days.insert(k.clone(), of_key);
                }
            }
            per_layer[li] = days;
        }
        // Encoded, each key's tile maps freed as it goes.
        let mut key = Vec::new();
        Ok(layers
            .iter()
            .zip(per_layer)
            .map(|(&(gi, _, _), map)| {
                let g = &groups[gi];
                map.into_iter()
                    .map(|(k, tiles)| {
                        entity_key_into(&view.project, &entity_set, &k, &mut key);
                        let encoded = g.layout.encode_tiles(&tiles);
                        (key.clone(), encoded)
                    })
                    .collect()
            })
            .collect())
    };
    let built: Vec<Vec<Vec<KeyTiles>>> = (0..shards)
        .into_par_iter()
        .map(build)
        .collect::<Result<_>>()?;
    // Per layer, every shard's keys.
    let mut per_layer: Vec<Vec<KeyTiles>> = (0..layers.len()).map(|_| Vec::new()).collect();
    for shard in built {
        for (all, entries) in per_layer.iter_mut().zip(shard) {
            all.extend(entries);
        }
    }
    let keys: u64 = per_layer.first().map_or(0, |e| e.len() as u64);
    let total: u64 = per_layer
        .iter()
        .map(|e| e.iter().map(|(_, t)| t.len() as u64).sum::<u64>())
        .sum();
    progress.start(&view.name, total);
    // Whole tiles replace the stored ones: the merge keeps the delta.
    let replace = |_: Option<&[u8]>, delta: &[u8], out: &mut Vec<u8>| {
        out.extend_from_slice(delta);
        Ok(())
    };
    let mut written = 0u64;
    for (&(_, _, field), mut entries) in layers.iter().zip(per_layer) {
        // In key order: consecutive writes land on the same pages of the embedded
        // store's tree instead of one page (copied on write) per tile.
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut start = 0;
        while start < entries.len() {
            // Whole keys per call, about TILE_BATCH tiles.
            let mut end = start;
            let mut n = 0;
            while end < entries.len() && (n == 0 || n + entries[end].1.len() <= TILE_BATCH) {
                n += entries[end].1.len();
                end += 1;
            }
            let deltas: Vec<Vec<TileDelta<'_>>> = entries[start..end]
                .iter()
                .map(|(_, t)| {
                    t.iter()
                        .map(|(s, ir)| TileDelta {
                            layer: None,
                            start: *s,
                            ir,
                        })
                        .collect()
                })
                .collect();
            let merges: Vec<KeyMerge<'_>> = entries[start..end]
                .iter()
                .zip(&deltas)
                .map(|((k, _), d)| KeyMerge {
                    key: k,
                    view: field,
                    position: None,
                    tiles: d,
                })
                .collect();
            written += retrying(retry_for, || online.merge_tiles(&merges, &replace))
                .await?
                .tiles;
            progress.advance(n as u64);
            start = end;
        }
    }
    progress.finish();
    Ok((keys, written))
}
