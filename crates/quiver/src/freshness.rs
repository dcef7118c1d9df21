//! How fresh a feature view fed by a stream is, per partition (DESIGN §8): what stream
//! workers applied (events, replays, late events, dead letters), the newest event time
//! applied online, the lag behind the stream's end and the rate, kept in the online
//! store beside the view's data so that every worker, on any machine, adds to one record
//! and `quiver describe` / `quiver status` read it wherever they run.
//!
//! The record is one cell per view, updated by a tile merge (a read-modify-write that
//! loses no concurrent update, see [`OnlineStore::merge_tiles`]): counts add up, the
//! newest event time only grows, and the lag, rate and consumer are the latest report's.
//! Counts are monitoring figures: a worker killed after applying events and before its
//! report loses that report's counts (the events themselves are applied exactly once).

use std::collections::BTreeMap;

use quiver_core::model::ResolvedView;
use quiver_core::Timestamp;
use quiver_online::tiles::{KeyMerge, TileDelta};
use quiver_online::{entity_key, FieldId, OnlineStore};
use serde::{Deserialize, Serialize};

use crate::{FeatureStore, Result};

/// What the stream workers report for one partition of a view's stream.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PartitionFreshness {
    /// Events applied online (over all reports).
    pub applied: u64,
    /// Events found already applied (replays).
    pub replayed: u64,
    /// Events older than every tile the view keeps.
    pub late: u64,
    /// Events written to the dead-letter table.
    pub dead_letters: u64,
    /// The newest event time applied online, µs since the epoch.
    pub newest_event: Option<Timestamp>,
    /// Events in the partition not yet read by the group, at the last report.
    pub lag_events: Option<u64>,
    /// Events applied per second between the last two reports of its worker.
    pub events_per_s: f64,
    /// The worker that reported last.
    pub consumer: String,
    /// When the last report was made, µs since the epoch.
    pub reported_at: Timestamp,
}

impl PartitionFreshness {
    /// Adds a later report to this record.
    fn absorb(&mut self, later: PartitionFreshness) {
        self.applied += later.applied;
        self.replayed += later.replayed;
        self.late += later.late;
        self.dead_letters += later.dead_letters;
        self.newest_event = self.newest_event.max(later.newest_event);
        if later.reported_at >= self.reported_at {
            if later.lag_events.is_some() {
                self.lag_events = later.lag_events;
            }
            self.events_per_s = later.events_per_s;
            self.consumer = later.consumer;
            self.reported_at = later.reported_at;
        }
    }
}

/// A view's freshness record, by partition name.
pub type Freshness = BTreeMap<String, PartitionFreshness>;

/// Where a view's record lives online: a key no entity set can produce (entity set
/// names are identifiers, without `\0`) and a field of its own.
fn location(project: &str, view: &str) -> (Vec<u8>, FieldId) {
    let key = entity_key(project, "\0freshness", view.as_bytes());
    let field = xxhash_rust::xxh3::xxh3_64(format!("{project}\0{view}\0freshness").as_bytes())
        .to_le_bytes();
    (key, field)
}

fn decode(bytes: &[u8]) -> quiver_online::Result<Freshness> {
    serde_json::from_slice(bytes).map_err(|e| {
        quiver_online::Error::Invalid(format!("a stream freshness record does not decode: {e}"))
    })
}

/// Adds the reports `by_partition` to the freshness record of `view`.
pub async fn report(
    store: &FeatureStore,
    view: &ResolvedView,
    by_partition: Freshness,
) -> Result<()> {
    report_named(store, &view.project, &view.name, by_partition).await
}

/// Adds the reports `by_partition` to the freshness record of view `view` of `project`.
pub async fn report_named(
    store: &FeatureStore,
    project: &str,
    view: &str,
    by_partition: Freshness,
) -> Result<()> {
    if by_partition.is_empty() {
        return Ok(());
    }
    let (key, field) = location(project, view);
    let delta = serde_json::to_vec(&by_partition).expect("serializable");
    let tiles = [TileDelta {
        layer: None,
        start: 0,
        ir: &delta,
    }];
    let merge = KeyMerge {
        key: &key,
        view: field,
        position: None,
        tiles: &tiles,
    };
    let merger = |stored: Option<&[u8]>, delta: &[u8], out: &mut Vec<u8>| {
        // A stored record that no longer decodes starts over rather than stopping
        // every later report.
        let mut record = stored.and_then(|s| decode(s).ok()).unwrap_or_default();
        for (p, r) in decode(delta)? {
            record.entry(p).or_default().absorb(r);
        }
        serde_json::to_writer(out, &record).expect("serializable");
        Ok(())
    };
    let online = store.online().await?;
    online
        .merge_tiles(std::slice::from_ref(&merge), &merger)
        .await?;
    Ok(())
}

/// The freshness record of view `view` of `project` (empty when no worker reported).
pub async fn read(online: &dyn OnlineStore, project: &str, view: &str) -> Result<Freshness> {
    let (key, field) = location(project, view);
    let cells = online.read_tiles(&[key.as_slice()], field, &[0]).await?;
    Ok(match cells.get(0) {
        Some(bytes) => decode(bytes)?,
        None => Freshness::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(
        applied: u64,
        newest: Option<Timestamp>,
        lag: Option<u64>,
        at: Timestamp,
    ) -> PartitionFreshness {
        PartitionFreshness {
            applied,
            newest_event: newest,
            lag_events: lag,
            consumer: format!("w{at}"),
            reported_at: at,
            ..Default::default()
        }
    }

    #[test]
    fn counts_add_and_the_latest_report_gives_lag_and_consumer() {
        let mut r = report(5, Some(100), Some(7), 10);
        r.absorb(report(3, Some(90), Some(2), 20));
        assert_eq!(
            (r.applied, r.newest_event, r.lag_events),
            (8, Some(100), Some(2))
        );
        assert_eq!(r.consumer, "w20");
        // A report made earlier (a slower worker) adds its counts but not its lag.
        r.absorb(report(1, Some(120), Some(50), 15));
        assert_eq!(
            (r.applied, r.newest_event, r.lag_events),
            (9, Some(120), Some(2))
        );
        assert_eq!(r.consumer, "w20");
        // No lag known: the last known stays.
        r.absorb(report(0, None, None, 30));
        assert_eq!((r.lag_events, r.newest_event), (Some(2), Some(120)));
    }
}
