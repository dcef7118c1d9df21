//! Materialization: the latest row per entity key within a time range, from the
//! offline store to the online store (DESIGN §5), through the one write path's
//! conditional online write ([`crate::write::write_online_latest`]).
//!
//! `store.materialize(start, end).views([..]).await`, or
//! `store.materialize_incremental(end).await`: each view from where its last run ended by
//! event time, plus every row ingested since that run whatever its event time
//! (restatements and late rows, found by Delta table version), with newer-wins writes.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;

use quiver_core::time::{format_timestamp, now, Timestamp};
use quiver_registry::state::MaterializationState;
use tracing::Instrument;

use crate::write::{write_online_latest_retrying, NoProgress, Progress};
use crate::{Error, FeatureStore, Result};

/// What materializing one view did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MaterializeStats {
    pub view: String,
    pub start: Timestamp,
    pub end: Timestamp,
    /// Offline rows in the range.
    pub rows_read: u64,
    /// Distinct entity keys (rows offered to the online store).
    pub keys: u64,
    /// Rows stored online (the others were not newer than what was stored).
    pub written: u64,
}

/// Writes, for each view (all online views by default), the latest row per key with
/// `start <= event_timestamp < end` to the online store, and records `end` as the
/// view's high-water mark.
#[must_use = "a materialization does nothing until awaited"]
pub struct MaterializeBuilder {
    store: FeatureStore,
    /// `None`: from each view's last high-water mark.
    start: Option<Timestamp>,
    end: Timestamp,
    views: Vec<String>,
    progress: Arc<dyn Progress>,
    /// A backfill: aggregated views only (all of them by default).
    backfill: bool,
}

impl MaterializeBuilder {
    pub(crate) fn new(store: FeatureStore, start: Option<Timestamp>, end: Timestamp) -> Self {
        MaterializeBuilder {
            store,
            start,
            end,
            views: Vec::new(),
            progress: Arc::new(NoProgress),
            backfill: false,
        }
    }

    /// Makes this a backfill: the aggregated views' tiles of the range, recomputed from
    /// the offline events (every aggregated view by default; a snapshot view is an
    /// error).
    pub(crate) fn backfill(mut self) -> Self {
        self.backfill = true;
        self
    }

    /// The views to materialize (default: every online view).
    pub fn views<S: Into<String>>(mut self, views: impl IntoIterator<Item = S>) -> Self {
        self.views.extend(views.into_iter().map(Into::into));
        self
    }

    /// Reports the progress of each view's online write.
    pub fn with_progress(mut self, progress: Arc<dyn Progress>) -> Self {
        self.progress = progress;
        self
    }

    async fn run(self) -> Result<Vec<MaterializeStats>> {
        let state = self.store.state()?;
        FeatureStore::check_views(&state, &self.views)?;
        if let Some(start) = self.start {
            if start >= self.end {
                return Err(Error::Invalid(format!(
                    "materialize: start {} is not before end {}",
                    format_timestamp(start),
                    format_timestamp(self.end)
                )));
            }
        }
        let names: Vec<String> = if self.views.is_empty() {
            state
                .feature_views
                .values()
                .filter(|v| v.def.online && (!self.backfill || v.is_aggregated()))
                .map(|v| v.def.name.clone())
                .collect()
        } else {
            if self.backfill {
                if let Some(v) = self
                    .views
                    .iter()
                    .find(|v| !state.feature_views[*v].is_aggregated())
                {
                    return Err(Error::Invalid(format!(
                        "feature view '{v}' is a snapshot view: backfill computes aggregated \
                         views' tiles; use `quiver materialize` for it"
                    )));
                }
            }
            self.views.clone()
        };
        let mut out = Vec::new();
        for name in names {
            let start = match self.start {
                Some(s) => s,
                None => state.feature_views[&name]
                    .materialized
                    .as_ref()
                    .map_or(i64::MIN / 2, |m| m.end),
            };
            if start >= self.end {
                continue;
            }
            let span = tracing::info_span!("materialize", view = %name);
            let stats = self.view(&name, start).instrument(span).await?;
            out.push(stats);
        }
        Ok(out)
    }

    async fn view(&self, name: &str, start: Timestamp) -> Result<MaterializeStats> {
        let end = self.end;
        let view = self.store.state()?.resolved_view(name)?;
        let offline = self.store.offline();
        // A table without data files (a first ingest stopped before its commit) is
        // reported like a missing one: no high-water mark moves over data not there.
        let exists = offline.exists(&view);
        if !exists || offline.data_files(&view).await?.is_empty() {
            let why = if exists {
                " (its table is empty: an ingest that did not finish?)"
            } else {
                " yet"
            };
            return Err(Error::Registry(quiver_registry::Error::NoData(format!(
                "feature view '{name}' has no offline data{why}: run `quiver ingest {name}` \
                 before materializing"
            ))));
        }
        // The version read is recorded, so that the next incremental run also reads
        // every file committed after it (corrections, late rows).
        let version = offline.version(&view).await?;
        if !view.aggregations.is_empty() {
            return self.tiles(&view, start, version).await;
        }
        let mut batches = offline.read_range(&view, start, end).await?;
        if self.start.is_none() {
            let since = self.store.state()?.feature_views[name]
                .materialized
                .as_ref()
                .and_then(|m| m.table_version);
            if let Some(since) = since {
                // Rows at or after `start` came with the range read above; only files
                // of days up to `start`'s, committed since, can hold rows it missed.
                let first_day = quiver_core::time::day_of(start);
                let files = offline
                    .files_since(&view, since)
                    .await?
                    .into_iter()
                    .filter(|f| f.day.is_none_or(|d| d <= first_day))
                    .collect();
                batches.extend(
                    offline
                        .read_files(&view, files, i64::MIN / 2, start)
                        .await?,
                );
            }
        }
        let rows_read = batches.iter().map(|b| b.num_rows() as u64).sum();
        let online = self.store.online().await?;
        // Key indexing, row encoding and (embedded) LMDB commits are blocking work: the
        // whole write runs on a blocking thread, driving its store calls from there.
        let (progress, v, handle) = (
            self.progress.clone(),
            view.clone(),
            tokio::runtime::Handle::current(),
        );
        let retry_for = self.store.config().writes.retry_for.to_std();
        let (keys, written) = crate::store::blocking(move || {
            handle.block_on(write_online_latest_retrying(
                &v,
                &batches,
                online.as_ref(),
                progress.as_ref(),
                retry_for,
            ))
        })
        .await?;
        let stats = MaterializeStats {
            view: name.to_string(),
            start,
            end,
            rows_read,
            keys,
            written,
        };
        self.record(name, &stats, version, None).await?;
        Ok(stats)
    }

    /// Materializes an aggregated view: the tiles of every hop that overlap `[start,
    /// end)` — back to the view's tile retention before `end` at most — computed
    /// whole from the offline events and written over the stored ones. An incremental
    /// run also recomputes the tiles of late events committed since the last run.
    async fn tiles(
        &self,
        view: &quiver_core::model::ResolvedView,
        start: Timestamp,
        version: Option<u64>,
    ) -> Result<MaterializeStats> {
        use arrow::array::AsArray;
        use quiver_core::agg::window::align;
        let end = self.end;
        let offline = self.store.offline();
        let oldest = end.saturating_sub(view.tile_retention().micros());
        let mut from = start.max(oldest);
        let groups = view.tile_groups()?;
        let last = self.store.state()?.feature_views[&view.name]
            .materialized
            .clone();
        // Tiles written in another layout (by an earlier build) are not read: the first
        // run after the change recomputes the whole retention.
        let layout = tile_layout(&groups);
        if last.as_ref().is_some_and(|m| m.tile_layout != Some(layout)) {
            from = oldest;
        }
        if self.start.is_none() {
            if let Some(since) = last.and_then(|m| m.table_version) {
                let files = offline.files_since(view, since).await?;
                for b in offline.read_files(view, files, oldest, end).await? {
                    let ts = b
                        .column(view.join_keys.len())
                        .as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
                    if let Some(&t) = ts.values().iter().min() {
                        from = from.min(t.max(oldest));
                    }
                }
            }
        }
        // Whole tiles of every length written (each hop, and a day for groups that keep
        // day tiles): from the earliest tile start among them.
        let mut lengths: Vec<quiver_core::time::Duration> =
            view.aggregations.iter().map(|a| a.hop).collect();
        if groups.iter().any(|g| g.day_field.is_some()) {
            lengths.push(quiver_core::time::Duration::from_micros(
                quiver_core::agg::window::DAY,
            ));
        }
        let from = lengths
            .iter()
            .map(|&l| align(from, l))
            .min()
            .unwrap_or(from);
        // Whole tiles at the end too: a tile is never overwritten by part of itself
        // (the events of the last tile after `end` are read as well).
        let to = lengths
            .iter()
            .map(|&l| align(end.saturating_sub(1), l).saturating_add(l.micros()))
            .max()
            .unwrap_or(end);
        let batches = offline.read_range(view, from, to).await?;
        let rows_read = batches.iter().map(|b| b.num_rows() as u64).sum();
        let online = self.store.online().await?;
        let (progress, v, handle) = (
            self.progress.clone(),
            view.clone(),
            tokio::runtime::Handle::current(),
        );
        let retry_for = self.store.config().writes.retry_for.to_std();
        let (keys, written) = crate::store::blocking(move || {
            handle.block_on(crate::write::write_tiles(
                &v,
                &batches,
                online.as_ref(),
                progress.as_ref(),
                retry_for,
            ))
        })
        .await?;
        let stats = MaterializeStats {
            view: view.name.clone(),
            start: from,
            end,
            rows_read,
            keys,
            written,
        };
        self.record(&view.name, &stats, version, Some(layout))
            .await?;
        Ok(stats)
    }

    /// Records a finished run in the registry: its end as the view's high-water mark
    /// and the table version it read.
    async fn record(
        &self,
        name: &str,
        stats: &MaterializeStats,
        version: Option<u64>,
        tile_layout: Option<u64>,
    ) -> Result<()> {
        let MaterializeStats {
            start,
            end,
            rows_read,
            keys,
            written,
            ..
        } = *stats;
        quiver_core::fault::crash_point("materialize.before_state");
        let name = name.to_string();
        self.store
            .update_state(move |s| {
                if let Some(v) = s.feature_views.get_mut(&name) {
                    // Tiles are recomputed whole, so an aggregated view's high-water mark
                    // never moves back (a backfill of an older range leaves it).
                    if v.is_aggregated() && v.materialized.as_ref().is_some_and(|m| m.end > end) {
                        return;
                    }
                    v.materialized = Some(MaterializationState {
                        start,
                        end,
                        at: now(),
                        rows_written: written,
                        table_version: version,
                        tile_layout,
                    });
                }
            })
            .await?;
        tracing::info!(rows_read, keys, written, "materialized");
        Ok(())
    }
}

/// The layout of an aggregated view's online tiles: a hash of its tile groups' fields
/// (hop and day tiles), which change with the stored layout.
fn tile_layout(groups: &[quiver_core::model::TileGroup]) -> u64 {
    let mut fields = Vec::new();
    for g in groups {
        fields.extend_from_slice(&g.field);
        fields.extend_from_slice(&g.day_field.unwrap_or_default());
    }
    xxhash_rust::xxh3::xxh3_64(&fields)
}

impl IntoFuture for MaterializeBuilder {
    type Output = Result<Vec<MaterializeStats>>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.run())
    }
}
