//! `POST /push` / gRPC `Push`: rows for a feature view, turned into Arrow columns and
//! handed to the one write path ([`quiver::write`]): validated as an ingest validates a
//! file (types, null keys, unparsable times, with the row and column named), then
//! written with the same conditional newer-wins write as materialization (online) and
//! the same merge as an ingest (offline), on the server's runtime.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{Field, Schema};
use quiver::push::{self, MAX_PUSH_ROWS};
use quiver::stream;
use quiver::write::{self, Input, Targets};
use quiver::FeatureStore;
use quiver_core::model::{ResolvedView, Source};
use quiver_core::value::values_to_array;
use quiver_core::DType;
use quiver_offline::normalize::{NormalizedBatch, Origin};
use quiver_online::Columns;
use tokio::sync::{mpsc, oneshot};

use crate::api::{self, pb};
use crate::core::{ApiError, ServerState};

/// Largest number of rows one push may carry.
/// The request's rows as one view's columns ([`push::columns_of`]): its join keys, the
/// event time (as text, parsed by the write path), the creation time if sent, and its
/// features, each converted to the type the view stores.
fn view_batch(
    view: &ResolvedView,
    source: &Source,
    columns: &Columns,
    strict: bool,
) -> Result<(RecordBatch, String, Option<String>), ApiError> {
    let names: Vec<&str> = columns.names().collect();
    let wanted = push::columns_of(view, source, &names, strict)?;
    let mut fields = Vec::with_capacity(wanted.len());
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(wanted.len());
    for (name, role) in &wanted {
        let dtype = match role {
            push::Role::Key(t) => DType::from_arrow(t).expect("key types map back"),
            // As text: the write path parses it, rounding a row's time up to the
            // microsecond (DESIGN §9: no row from after T reaches a read at T).
            push::Role::Time => DType::String,
            push::Role::Feature(t) => t.clone(),
        };
        let values = columns.get(name).expect("checked by columns_of");
        let a = values_to_array(values, &dtype)
            .map_err(|e| ApiError::invalid(format!("column '{name}': {e}")))?;
        fields.push(Field::new(name, a.data_type().clone(), true));
        arrays.push(a);
    }
    let k = view.join_keys.len();
    let ts_name = wanted[k].0.clone();
    let created_name = wanted
        .get(k + 1)
        .filter(|(_, r)| *r == push::Role::Time)
        .map(|(n, _)| n.clone());
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    Ok((batch, ts_name, created_name))
}

impl ServerState {
    /// Serves one `Push` request.
    #[tracing::instrument(level = "debug", skip_all, fields(view = %req.feature_view, source = %req.push_source, to = %req.to))]
    pub async fn push(&self, req: pb::PushRequest) -> Result<pb::PushResponse, ApiError> {
        let snapshot = self.snapshot()?;
        let target = push::PushTarget {
            feature_view: &req.feature_view,
            push_source: &req.push_source,
            producer: &req.producer,
            to: &req.to,
        };
        let plan = push::plan(&snapshot.state, &target)?;
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
        let mut prepared = Vec::with_capacity(plan.views.len());
        for view in &plan.views {
            let (batch, ts_name, created_name) =
                view_batch(view, plan.source, &columns, req.push_source.is_empty())?;
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
            prepared.push(write::validate(view, &batch, &input)?);
        }
        let rows = columns.len() as u64;
        let targets = plan.targets;
        let mut resp = pb::PushResponse {
            rows,
            ..Default::default()
        };
        for (view, batch) in plan.views.iter().zip(prepared) {
            let newest = push::newest(view, &batch);
            let (online_written, offline) = if req.producer.is_empty() {
                let stats = write::write(&self.store, view, vec![batch], targets).await?;
                (stats.online_written, stats.offline.map_or(0, |o| o.rows_in))
            } else {
                self.push_events(view, batch, &req, targets, now).await?
            };
            resp.written_online += online_written;
            if targets.online {
                resp.skipped_online += rows.saturating_sub(online_written);
            }
            resp.written_offline += offline;
            if targets.online {
                // For `quiver status` / `describe`: reported with the next round.
                let partition = push::partition(&target, &view.name);
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

    /// Writes a producer's request as stream events ([`push::offsets`]), so that a
    /// retried request finds its events applied (online positions, offline offsets)
    /// and changes nothing; offline through the view's group-commit writer. Returns the
    /// rows written online and offline.
    async fn push_events(
        &self,
        view: &ResolvedView,
        batch: NormalizedBatch,
        req: &pb::PushRequest,
        targets: Targets,
        now: quiver_core::Timestamp,
    ) -> Result<(u64, u64), ApiError> {
        let target = push::PushTarget {
            push_source: &req.push_source,
            producer: &req.producer,
            ..Default::default()
        };
        let partition: Arc<[u8]> = push::partition(&target, &view.name).into_bytes().into();
        let offsets = push::offsets(req.sequence, batch.batch.num_rows());
        let mut online = 0;
        if targets.online {
            online =
                push::apply_online(&self.store, view, &batch, &partition, &offsets, now).await?;
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
