//! `POST /push` / gRPC `Push`: rows for a feature view, turned into Arrow columns and
//! handed to the one write path ([`quiver::write`]): validated as an ingest validates a
//! file (types, null keys, unparsable times, with the row and column named), then
//! written with the same conditional newer-wins write as materialization (online) and
//! the same merge as an ingest (offline), on the server's runtime.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{Field, Schema};
use quiver::write::{self, Input, Targets};
use quiver_core::value::values_to_array;
use quiver_core::{DType, Value};
use quiver_offline::normalize::{key_arrow_type, Origin};
use quiver_online::Columns;

use crate::api::{self, pb};
use crate::core::{ApiError, ServerState};

/// Largest number of rows one push may carry.
pub const MAX_PUSH_ROWS: usize = 100_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Online,
    Offline,
    Both,
}

impl ServerState {
    /// Serves one `Push` request.
    #[tracing::instrument(level = "debug", skip_all, fields(view = %req.feature_view, to = %req.to))]
    pub async fn push(&self, req: pb::PushRequest) -> Result<pb::PushResponse, ApiError> {
        let snapshot = self.snapshot()?;
        let state = &snapshot.state;
        let record = state.view(&req.feature_view).map_err(quiver::Error::from)?;
        let view = state
            .resolved_view(&req.feature_view)
            .map_err(quiver::Error::from)?;
        let source = state
            .source(&record.def.source)
            .map_err(quiver::Error::from)?;
        let target = match req.to.as_str() {
            "" | "online" => Target::Online,
            "offline" => Target::Offline,
            "online_and_offline" => Target::Both,
            other => {
                return Err(ApiError::invalid(format!(
                    "'to' is {other:?}: expected online, offline or online_and_offline"
                )))
            }
        };
        if target != Target::Offline && !record.def.online {
            return Err(ApiError::invalid(format!(
                "feature view '{}' is not served online (online: false)",
                view.name
            )));
        }
        if target != Target::Online && !record.def.offline {
            return Err(ApiError::invalid(format!(
                "feature view '{}' keeps no offline history (offline: false)",
                view.name
            )));
        }
        let columns = Columns::new(
            req.data
                .iter()
                .map(|(k, v)| (k.clone(), v.values.iter().map(api::to_value).collect()))
                .collect(),
        )?;
        if columns.is_empty() {
            return Err(ApiError::invalid("'data' holds no rows"));
        }
        if columns.len() > MAX_PUSH_ROWS {
            return Err(ApiError::too_large(format!(
                "{} rows pushed; at most {MAX_PUSH_ROWS} per request",
                columns.len()
            )));
        }
        // The timestamp column may carry the source's name or the stored one.
        let ts_name = [source.def.timestamp_field(), "event_timestamp"]
            .into_iter()
            .find(|n| columns.get(n).is_some())
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "missing the event time column '{}'",
                    source.def.timestamp_field()
                ))
            })?
            .to_string();
        let created_name = [
            source.def.created_timestamp_field(),
            Some("created_timestamp"),
        ]
        .into_iter()
        .flatten()
        .find(|n| columns.get(n).is_some())
        .map(str::to_string);

        let mut fields = Vec::new();
        let mut arrays: Vec<ArrayRef> = Vec::new();
        let mut add = |name: &str, dtype: &DType, values: &[Value]| -> Result<(), ApiError> {
            let a = values_to_array(values, dtype)
                .map_err(|e| ApiError::invalid(format!("column '{name}': {e}")))?;
            fields.push(Field::new(name, a.data_type().clone(), true));
            arrays.push(a);
            Ok(())
        };
        let mut used = vec![ts_name.clone()];
        for k in &view.join_keys {
            let col = columns.get(&k.name).ok_or_else(|| {
                ApiError::invalid(format!("missing join key column '{}'", k.name))
            })?;
            let t = DType::from_arrow(&key_arrow_type(&k.dtype)).expect("key types map back");
            add(&k.name, &t, col)?;
            used.push(k.name.clone());
        }
        add(
            &ts_name,
            // As text: the write path parses it, rounding a row's time up to the
            // microsecond (DESIGN §9: no row from after T reaches a read at T).
            &DType::String,
            columns.get(&ts_name).expect("found above"),
        )?;
        if let Some(c) = &created_name {
            add(c, &DType::String, columns.get(c).expect("found above"))?;
            used.push(c.clone());
        }
        for f in &view.features {
            let col = columns.get(&f.name).ok_or_else(|| {
                ApiError::invalid(format!(
                    "missing feature column '{}' of feature view '{}' (send null values for \
                     unknown ones)",
                    f.name, view.name
                ))
            })?;
            add(&f.name, &f.dtype, col)?;
            used.push(f.name.clone());
        }
        if let Some(extra) = columns.names().find(|n| !used.iter().any(|u| u == n)) {
            return Err(ApiError::invalid(format!(
                "column '{extra}' is not a join key, time column or feature of feature view '{}'",
                view.name
            )));
        }
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
            .map_err(|e| ApiError::invalid(e.to_string()))?;
        let input = Input {
            timestamp_field: &ts_name,
            created_field: created_name.as_deref(),
            origin: Origin {
                file: "push request",
                first_row: 0,
            },
            not_after: Input::not_after(self.store.config(), self.clock.now()),
        };
        let batch = write::validate(&view, &batch, &input)?;
        let rows = batch.batch.num_rows() as u64;
        let targets = Targets {
            online: target != Target::Offline,
            offline: target != Target::Online,
        };
        let stats = write::write(&self.store, &view, vec![batch], targets).await?;
        let resp = pb::PushResponse {
            rows,
            written_online: stats.online_written,
            skipped_online: if targets.online {
                rows.saturating_sub(stats.online_written)
            } else {
                0
            },
            written_offline: stats.offline.map_or(0, |o| o.rows_in),
        };
        Ok(resp)
    }
}
