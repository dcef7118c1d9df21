//! Materialization: the latest row per entity key within a time range, from the
//! offline store to the online store (DESIGN §5).

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::TimestampMicrosecondType;
use indicatif::{ProgressBar, ProgressStyle};
use quiver_core::contract::{RowVersion, NO_CREATED};
use quiver_core::encoding::{encode_key_part, encode_row};
use quiver_core::model::ResolvedView;
use quiver_core::pit::BytesKeyIndex;
use quiver_core::time::{now, Timestamp};
use quiver_online::{entity_key_into, OnlineStore, OnlineWrite};
use quiver_registry::state::MaterializationState;

use crate::{Error, FeatureStore, Result};

/// Rows written per online write batch (one transaction in the embedded store).
const WRITE_BATCH: usize = 20_000;

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

impl FeatureStore {
    /// Writes, for each view (all online views when `views` is empty), the latest row
    /// per key with `start <= event_timestamp < end` to the online store, and records
    /// `end` as the view's high-water mark.
    pub fn materialize(
        &self,
        start: Timestamp,
        end: Timestamp,
        views: &[String],
        progress: bool,
    ) -> Result<Vec<MaterializeStats>> {
        if start >= end {
            return Err(Error::Invalid(format!(
                "materialize: start {} is not before end {}",
                quiver_core::time::format_timestamp(start),
                quiver_core::time::format_timestamp(end)
            )));
        }
        let state = self.state()?;
        FeatureStore::check_views(&state, views)?;
        let names = online_views(&state, views);
        let ranges: Vec<(String, Timestamp)> = names.into_iter().map(|n| (n, start)).collect();
        self.materialize_ranges(&ranges, end, progress)
    }

    /// Like [`materialize`](Self::materialize), each view starting where its last run
    /// ended (from the beginning of its history the first time).
    pub fn materialize_incremental(
        &self,
        end: Timestamp,
        views: &[String],
        progress: bool,
    ) -> Result<Vec<MaterializeStats>> {
        let state = self.state()?;
        FeatureStore::check_views(&state, views)?;
        let ranges: Vec<(String, Timestamp)> = online_views(&state, views)
            .into_iter()
            .map(|n| {
                let start = state.feature_views[&n]
                    .materialized
                    .as_ref()
                    .map_or(i64::MIN / 2, |m| m.end);
                (n, start)
            })
            .filter(|(_, s)| *s < end)
            .collect();
        self.materialize_ranges(&ranges, end, progress)
    }

    fn materialize_ranges(
        &self,
        ranges: &[(String, Timestamp)],
        end: Timestamp,
        progress: bool,
    ) -> Result<Vec<MaterializeStats>> {
        let state = self.state()?;
        let offline = self.offline()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Invalid(format!("cannot start runtime: {e}")))?;
        let online = rt.block_on(self.online_async())?;
        let mut out = Vec::new();
        for (name, start) in ranges {
            let view = state.resolved_view(name)?;
            if !offline.exists(&view) {
                return Err(Error::Invalid(format!(
                    "feature view '{name}' has no offline data yet: run `quiver ingest {name}` \
                     before materializing"
                )));
            }
            let batches = offline.read_range(&view, *start, end)?;
            let stats = rt.block_on(write_latest(&view, &batches, online.as_ref(), progress))?;
            let stats = MaterializeStats {
                view: name.clone(),
                start: *start,
                end,
                ..stats
            };
            self.update_state(|s| {
                if let Some(v) = s.feature_views.get_mut(name) {
                    v.materialized = Some(MaterializationState {
                        start: *start,
                        end,
                        at: now(),
                        rows_written: stats.written,
                    });
                }
            })?;
            out.push(stats);
        }
        Ok(out)
    }
}

fn online_views(state: &quiver_registry::RegistryState, views: &[String]) -> Vec<String> {
    if views.is_empty() {
        state
            .feature_views
            .values()
            .filter(|v| v.def.online)
            .map(|v| v.def.name.clone())
            .collect()
    } else {
        views.to_vec()
    }
}

/// Picks the newest row per key and writes them in batches.
pub async fn write_latest(
    view: &ResolvedView,
    batches: &[RecordBatch],
    online: &dyn OnlineStore,
    progress: bool,
) -> Result<MaterializeStats> {
    let nkeys = view.join_keys.len();
    let mut index = BytesKeyIndex::new();
    let mut best: Vec<(RowVersion, u32, u32)> = Vec::new();
    let mut buf = Vec::new();
    let mut rows_read = 0u64;
    for (bi, b) in batches.iter().enumerate() {
        rows_read += b.num_rows() as u64;
        let ts = b.column(nkeys).as_primitive::<TimestampMicrosecondType>();
        let created = b
            .column(nkeys + 1)
            .as_primitive::<TimestampMicrosecondType>();
        for r in 0..b.num_rows() {
            buf.clear();
            for k in 0..nkeys {
                encode_key_part(b.column(k).as_ref(), r, &mut buf)?;
            }
            let version = RowVersion {
                event_ts: ts.value(r),
                created_ts: if created.is_null(r) {
                    NO_CREATED
                } else {
                    created.value(r)
                },
            };
            let g = index.insert(&buf) as usize;
            if g == best.len() {
                best.push((version, bi as u32, r as u32));
            } else if version >= best[g].0 {
                best[g] = (version, bi as u32, r as u32);
            }
        }
    }
    let bar = if progress && best.len() > 50_000 {
        let bar = ProgressBar::new(best.len() as u64).with_message(view.name.clone());
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:>24} [{bar:40}] {pos}/{len} rows {per_sec} eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
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
        written += online.write(&writes).await?.written;
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(MaterializeStats {
        view: view.name.clone(),
        start: 0,
        end: 0,
        rows_read,
        keys: best.len() as u64,
        written,
    })
}
