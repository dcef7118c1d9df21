//! `POST /push` / gRPC `Push`: rows for a feature view, turned into Arrow columns and
//! handed to the one write path ([`quiver::write`]): validated as an ingest validates a
//! file (types, null keys, unparsable times, with the row and column named), then
//! written with the same conditional newer-wins write as materialization (online) and
//! the same merge as an ingest (offline), on the server's runtime.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::TimestampMicrosecondType;
use arrow::datatypes::{Field, Schema};
use quiver::stream;
use quiver::write::{self, Input, Targets};
use quiver::FeatureStore;
use quiver_core::model::{ResolvedView, Source};
use quiver_core::value::values_to_array;
use quiver_core::{DType, Value};
use quiver_offline::normalize::{key_arrow_type, NormalizedBatch, Origin};
use quiver_online::Columns;
use tokio::sync::{mpsc, oneshot};

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

/// The request's rows as one view's columns: its join keys, the event time (as text,
/// parsed by the write path), the creation time if sent, and its features. With
/// `strict`, a column the view does not use is an error (a push to one view); else it
/// is left for the source's other views.
fn view_batch(
    view: &ResolvedView,
    source: &Source,
    columns: &Columns,
    strict: bool,
) -> Result<(RecordBatch, String, Option<String>), ApiError> {
    // The timestamp column may carry the source's name or the stored one.
    let ts_name = [source.timestamp_field(), "event_timestamp"]
        .into_iter()
        .find(|n| columns.get(n).is_some())
        .ok_or_else(|| {
            ApiError::invalid(format!(
                "missing the event time column '{}'",
                source.timestamp_field()
            ))
        })?
        .to_string();
    let created_name = [source.created_timestamp_field(), Some("created_timestamp")]
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
        let col = columns
            .get(&k.name)
            .ok_or_else(|| ApiError::invalid(format!("missing join key column '{}'", k.name)))?;
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
    // A snapshot view's features; an aggregated view's source columns its
    // aggregations read.
    for f in &view.features {
        let (name, dtype) = (f.name.as_str(), &f.dtype);
        let col = columns.get(name).ok_or_else(|| {
            ApiError::invalid(format!(
                "missing column '{name}' of feature view '{}' (send null values for unknown \
                 ones)",
                view.name
            ))
        })?;
        add(name, dtype, col)?;
        used.push(name.to_string());
    }
    if strict {
        if let Some(extra) = columns.names().find(|n| !used.iter().any(|u| u == n)) {
            return Err(ApiError::invalid(format!(
                "column '{extra}' is not a join key, time column or feature of feature view \
                 '{}'",
                view.name
            )));
        }
    }
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    Ok((batch, ts_name, created_name))
}

impl ServerState {
    /// Serves one `Push` request.
    #[tracing::instrument(level = "debug", skip_all, fields(view = %req.feature_view, source = %req.push_source, to = %req.to))]
    pub async fn push(&self, req: pb::PushRequest) -> Result<pb::PushResponse, ApiError> {
        let snapshot = self.snapshot()?;
        let state = &snapshot.state;
        let target = match req.to.as_str() {
            // A push source is a stream: its events go where a stream worker writes
            // them, online and offline.
            "" if !req.push_source.is_empty() => Target::Both,
            "" | "online" => Target::Online,
            "offline" => Target::Offline,
            "online_and_offline" => Target::Both,
            other => {
                return Err(ApiError::invalid(format!(
                    "'to' is {other:?}: expected online, offline or online_and_offline"
                )))
            }
        };
        // The views written: the one named, or every view over the push source.
        let (source, names): (&Source, Vec<&str>) =
            match (req.feature_view.as_str(), req.push_source.as_str()) {
                ("", "") => {
                    return Err(ApiError::invalid(
                        "name a 'feature_view' or a 'push_source' to push to",
                    ))
                }
                (v, "") => {
                    let record = state.view(v).map_err(quiver::Error::from)?;
                    let source = state
                        .source(&record.def.source)
                        .map_err(quiver::Error::from)?;
                    (&source.def, vec![v])
                }
                ("", p) => {
                    let source = state.source(p).map_err(quiver::Error::from)?;
                    if !matches!(source.def, Source::Push(_)) {
                        return Err(ApiError::invalid(format!(
                            "source '{p}' is not a push source (type: push)"
                        )));
                    }
                    let names: Vec<&str> = state
                        .feature_views
                        .iter()
                        .filter(|(_, r)| r.def.source == p)
                        .map(|(n, _)| n.as_str())
                        .collect();
                    if names.is_empty() {
                        return Err(ApiError::invalid(format!(
                            "no feature view reads push source '{p}'"
                        )));
                    }
                    (&source.def, names)
                }
                _ => {
                    return Err(ApiError::invalid(
                        "name either a 'feature_view' or a 'push_source', not both",
                    ))
                }
            };
        if !req.producer.is_empty() && req.push_source.is_empty() {
            return Err(ApiError::invalid(
                "'producer' and 'sequence' make pushes to a 'push_source' idempotent; \
                 a push to a 'feature_view' takes neither",
            ));
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
        let now = self.clock.now();
        let mut prepared = Vec::with_capacity(names.len());
        for name in &names {
            let record = state.view(name).map_err(quiver::Error::from)?;
            if target != Target::Offline && !record.def.online {
                return Err(ApiError::invalid(format!(
                    "feature view '{name}' is not served online (online: false)"
                )));
            }
            if target != Target::Online && !record.def.offline {
                return Err(ApiError::invalid(format!(
                    "feature view '{name}' keeps no offline history (offline: false)"
                )));
            }
            let view = state.resolved_view(name).map_err(quiver::Error::from)?;
            if !view.aggregations.is_empty()
                && !req.push_source.is_empty()
                && req.producer.is_empty()
            {
                // Without positions its tiles would be recomputed from the offline
                // table, dropping what producers' pushes applied and have not yet
                // committed there.
                return Err(ApiError::invalid(format!(
                    "feature view '{name}' is an aggregated view: pushes to push source '{}' \
                     need a 'producer' and a growing 'sequence' (each event is applied once)",
                    req.push_source
                )));
            }
            if !view.aggregations.is_empty() && target == Target::Online {
                return Err(ApiError::invalid(format!(
                    "feature view '{name}' is an aggregated view: its events are written \
                     offline and online together (to: online_and_offline), so that training \
                     sets count what is served"
                )));
            }
            let (batch, ts_name, created_name) =
                view_batch(&view, source, &columns, req.push_source.is_empty())?;
            let input = Input {
                timestamp_field: &ts_name,
                created_field: created_name.as_deref(),
                origin: Origin {
                    file: "push request",
                    first_row: 0,
                },
                not_after: Input::not_after(self.store.config(), now),
            };
            // Every view's rows are checked before any is written.
            let batch = write::validate(&view, &batch, &input)?;
            prepared.push((view, batch));
        }
        let rows = columns.len() as u64;
        let targets = Targets {
            online: target != Target::Offline,
            offline: target != Target::Online,
        };
        let mut resp = pb::PushResponse {
            rows,
            ..Default::default()
        };
        for (view, batch) in prepared {
            let newest = batch
                .batch
                .column(view.join_keys.len())
                .as_primitive::<TimestampMicrosecondType>()
                .values()
                .iter()
                .copied()
                .max();
            let (online_written, offline) = if req.producer.is_empty() {
                let stats = write::write(&self.store, &view, vec![batch], targets).await?;
                (stats.online_written, stats.offline.map_or(0, |o| o.rows_in))
            } else {
                self.push_events(&view, batch, &req, targets, now).await?
            };
            resp.written_online += online_written;
            if targets.online {
                resp.skipped_online += rows.saturating_sub(online_written);
            }
            resp.written_offline += offline;
            if targets.online {
                // For `quiver status` / `describe`: reported with the next round.
                let partition = match (req.push_source.as_str(), req.producer.as_str()) {
                    ("", _) => format!("push:{}", view.name),
                    (s, "") => format!("push:{s}"),
                    (s, p) => format!("push:{s}:{p}"),
                };
                let mut reports = self.push_reports.lock().expect("not poisoned");
                let r = reports
                    .entry(view.name.clone())
                    .or_default()
                    .entry(partition)
                    .or_default();
                // Events applied (an aggregated view) or rows stored (a snapshot view).
                r.applied += online_written;
                r.newest_event = r.newest_event.max(newest);
            }
        }
        Ok(resp)
    }

    /// Writes a producer's request as stream events: row `i` sits at offset
    /// `sequence << 32 | i` of partition `push:SOURCE:PRODUCER`, so that a retried
    /// request finds its events applied (online positions, offline offsets) and changes
    /// nothing. Returns the rows written online and offline.
    async fn push_events(
        &self,
        view: &ResolvedView,
        batch: NormalizedBatch,
        req: &pb::PushRequest,
        targets: Targets,
        now: quiver_core::Timestamp,
    ) -> Result<(u64, u64), ApiError> {
        let partition: Arc<[u8]> = format!("push:{}:{}", req.push_source, req.producer)
            .into_bytes()
            .into();
        let offsets: Vec<u128> = (0..batch.batch.num_rows() as u128)
            .map(|i| (req.sequence as u128) << 32 | i)
            .collect();
        let mut online = 0;
        if targets.online {
            let s = stream::apply_events(
                &self.store,
                view,
                batch.clone(),
                stream::StreamEvents {
                    partition: &partition,
                    offsets: &offsets,
                },
                Targets::ONLINE,
                now,
            )
            .await?;
            // Events applied (an aggregated view), or rows stored (a snapshot view).
            online = if view.aggregations.is_empty() {
                s.online_written
            } else {
                s.applied
            };
        }
        let mut offline = 0;
        if targets.offline {
            offline = self
                .offline_commits
                .write(
                    &self.store,
                    view,
                    stream::OfflineEvents {
                        rows: batch,
                        partition,
                        offsets,
                    },
                )
                .await?;
        }
        Ok((online, offline))
    }
}

/// One push request's events waiting for its view's offline writer.
struct OfflineJob {
    events: stream::OfflineEvents,
    done: oneshot::Sender<Result<u64, ApiError>>,
}

/// Group commit of pushed events to the offline tables: one writer task per view
/// version takes every request waiting when it is free and writes them in one Delta
/// commit ([`stream::write_offline`], exactly once per producer and sequence), then
/// answers each. Concurrent pushes to a view thus share commits instead of each
/// committing (and conflicting) on its own; a request still returns only once its
/// events are stored.
#[derive(Default)]
pub(crate) struct OfflineCommits {
    writers: std::sync::Mutex<HashMap<WriterKey, mpsc::UnboundedSender<OfflineJob>>>,
}

/// A view's name, version and stored columns.
type WriterKey = (String, u32, Vec<quiver_core::model::Feature>);

/// The most requests one commit takes.
const MAX_GROUP: usize = 1024;

impl OfflineCommits {
    async fn write(
        &self,
        store: &FeatureStore,
        view: &ResolvedView,
        events: stream::OfflineEvents,
    ) -> Result<u64, ApiError> {
        let (done, answer) = oneshot::channel();
        let mut job = OfflineJob { events, done };
        {
            let mut writers = self.writers.lock().expect("not poisoned");
            // A view appended to keeps its version: its columns tell it apart.
            let key = (view.name.clone(), view.version, view.features.clone());
            let writer = writers
                .entry(key)
                .or_insert_with(|| spawn_writer(store.clone(), view.clone()));
            if let Err(mpsc::error::SendError(j)) = writer.send(job) {
                // The writer ended (its runtime is shutting down): start another.
                job = j;
                *writer = spawn_writer(store.clone(), view.clone());
                writer
                    .send(job)
                    .map_err(|_| ApiError::internal("the offline writer did not start"))?;
            }
        }
        answer
            .await
            .map_err(|_| ApiError::internal("the offline writer stopped"))?
    }
}

fn spawn_writer(store: FeatureStore, view: ResolvedView) -> mpsc::UnboundedSender<OfflineJob> {
    let (tx, mut rx) = mpsc::unbounded_channel::<OfflineJob>();
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut jobs = vec![first];
            while jobs.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            let parts: Vec<_> = jobs.iter().map(|j| j.events.clone()).collect();
            let result = stream::write_offline(&store, &view, parts).await;
            if result.is_ok() || jobs.len() == 1 {
                let result = result.map_err(ApiError::from);
                for j in jobs {
                    let rows = j.events.rows.batch.num_rows() as u64;
                    let _ = j.done.send(result.clone().map(|_| rows));
                }
                continue;
            }
            // One request's rows may be what failed (e.g. two producers' rows equal
            // after rounding): each is written alone and answered with its own result.
            for j in jobs {
                let rows = j.events.rows.batch.num_rows() as u64;
                let r = stream::write_offline(&store, &view, vec![j.events])
                    .await
                    .map(|_| rows)
                    .map_err(ApiError::from);
                let _ = j.done.send(r);
            }
        }
    });
    tx
}
