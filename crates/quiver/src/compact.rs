//! Online compaction: what the online store holds that no read can return any more.
//!
//! Rows of a view with a ttl that expired for every read from now on keep only their
//! timestamps (`OnlineStore::compact_expired`: statuses stay OUTSIDE_TTL and newer-wins
//! writes compare as before), and rows of data versions that neither serve nor wait to
//! serve are deleted. Reads at the current time return exactly what they returned
//! before; a read with an explicit time in the past (`--at`) may find a compacted row's
//! value gone (MISSING).

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
