//! Online compaction: what the online store holds that no read can return any more.
//!
//! Rows of a view with a ttl that expired for every read from now on keep only their
//! timestamps (`OnlineStore::compact_expired`: statuses stay OUTSIDE_TTL and newer-wins
//! writes compare as before), and rows of data versions that neither serve nor wait to
//! serve are deleted. Reads at the current time return exactly what they returned
//! before; a read with an explicit time in the past (`--at`) may find a compacted row's
//! value gone (MISSING). An aggregated view's tiles older than its `retention` are
//! deleted; without one, those that start before the longest window of their hop at the
//! current time (no read at or after now uses them).

use serde::Serialize;

use crate::{FeatureStore, Result};

/// What compaction did for one feature view.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CompactStats {
    pub view: String,
    /// Expired rows whose values were dropped.
    pub compacted: u64,
    /// Rows of retired data versions deleted.
    pub deleted: u64,
    /// Tiles of an aggregated view older than any window reads, deleted.
    pub tiles_deleted: u64,
}

/// The start of the oldest tile of group `g` of `view` kept at `now`: its retention's,
/// else that of the longest window of the group. Compaction deletes tiles before it;
/// stream ingestion applies no event before it (such an event is late).
pub(crate) fn oldest_tile(
    view: &quiver_core::model::ResolvedView,
    g: &quiver_core::model::TileGroup,
    now: quiver_core::Timestamp,
) -> quiver_core::Timestamp {
    let longest = g.windows.iter().copied().max().unwrap_or(g.hop);
    let keep = view.retention.unwrap_or(longest).max(longest);
    quiver_core::agg::window::window_range(now, keep, g.hop).0
}

impl FeatureStore {
    /// Compacts the online rows of `views` (all online views when empty).
    pub async fn compact_online(&self, views: &[String]) -> Result<Vec<CompactStats>> {
        let state = self.state()?;
        FeatureStore::check_views(&state, views)?;
        let online = self.online().await?;
        let now = quiver_core::time::now();
        let mut out = Vec::new();
        for (name, record) in &state.feature_views {
            if !record.def.online || !(views.is_empty() || views.contains(name)) {
                continue;
            }
            let mut stats = CompactStats {
                view: name.clone(),
                ..Default::default()
            };
            // Every version that serves or may serve keeps its rows; only the version
            // that serves has its expired rows compacted.
            let serving = state.serving_view(name)?;
            if !serving.ttl.is_zero() {
                let cutoff = now.saturating_sub(serving.ttl.micros());
                stats.compacted = online
                    .compact_expired(serving.online_field(), cutoff)
                    .await?;
            }
            // Tiles beyond the view's declared retention, else those no window of their
            // hop reads any more at the current time.
            for g in serving.tile_groups()? {
                let oldest = oldest_tile(&serving, &g, now);
                stats.tiles_deleted += online.delete_tiles_before(g.field, oldest).await?;
                // A day tile before `oldest` lies before every window's whole days.
                if let Some(days) = g.day_field {
                    stats.tiles_deleted += online.delete_tiles_before(days, oldest).await?;
                }
            }
            let mut retired = state.resolved_view(name)?;
            for version in 1..record.version {
                if version == serving.version || record.earlier.iter().any(|e| e.version == version)
                {
                    continue;
                }
                retired.version = version;
                stats.deleted += online
                    .delete_older_than(retired.online_field(), i64::MAX)
                    .await?;
            }
            tracing::info!(view = %name, compacted = stats.compacted, deleted = stats.deleted,
                           "compacted");
            out.push(stats);
        }
        Ok(out)
    }
}

/// What a compaction of one feature view's offline data files did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FileCompactStats {
    pub view: String,
    /// Day partitions rewritten.
    pub partitions: u64,
    /// Small files merged.
    pub files_removed: u64,
    /// Files written in their place (one per partition).
    pub files_written: u64,
}

impl FeatureStore {
    /// Merges the data files of every day partition of `views`' offline tables (all
    /// views when empty) that holds at least `min_files` files — what stream
    /// micro-batches leave, one file each — into one file per partition (see
    /// `OfflineStore::compact_files`). Training sets read the same rows before and
    /// after; the replaced files go with the next `vacuum`.
    pub async fn compact_files(
        &self,
        views: &[String],
        min_files: usize,
    ) -> Result<Vec<FileCompactStats>> {
        let state = self.state()?;
        FeatureStore::check_views(&state, views)?;
        let mut out = Vec::new();
        for (name, record) in &state.feature_views {
            if !record.def.offline || !(views.is_empty() || views.contains(name)) {
                continue;
            }
            let view = state.resolved_view(name)?;
            let s = self.offline().compact_files(&view, min_files).await?;
            if s.files_removed > 0 {
                tracing::info!(view = %name, files_removed = s.files_removed,
                               files_written = s.files_written, "offline files compacted");
            }
            out.push(FileCompactStats {
                view: name.clone(),
                partitions: s.partitions,
                files_removed: s.files_removed,
                files_written: s.files_written,
            });
        }
        Ok(out)
    }
}

/// What a vacuum did for one feature view's offline table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct VacuumStats {
    pub view: String,
    /// Data files deleted.
    pub files_deleted: u64,
}

impl FeatureStore {
    /// Deletes offline data files that no table version within `retention` reads:
    /// those replaced by later ingests and those of ingests that never committed, once
    /// older than `retention`, for `views` (all when empty) and the earlier data
    /// versions they keep. Training sets read now are unchanged; time travel reaches
    /// back `retention`.
    pub async fn vacuum(
        &self,
        views: &[String],
        retention: quiver_core::Duration,
    ) -> Result<Vec<VacuumStats>> {
        let state = self.state()?;
        FeatureStore::check_views(&state, views)?;
        let mut out = Vec::new();
        for (name, record) in &state.feature_views {
            if !(views.is_empty() || views.contains(name)) {
                continue;
            }
            let mut stats = VacuumStats {
                view: name.clone(),
                ..Default::default()
            };
            let mut view = state.resolved_view(name)?;
            let versions: Vec<u32> = std::iter::once(record.version)
                .chain(record.earlier.iter().map(|e| e.version))
                .collect();
            for version in versions {
                view.version = version;
                stats.files_deleted += self.offline().vacuum(&view, retention).await?.files_deleted;
            }
            tracing::info!(view = %name, files_deleted = stats.files_deleted, "vacuumed");
            out.push(stats);
        }
        Ok(out)
    }
}
