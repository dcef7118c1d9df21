//! Pushing rows: to one feature view, or as events of a push source (`type: push`) to
//! every view reading it. The feature server's `POST /push` and the Python SDK's
//! `push` share the rules here: which views a push writes, where (online, offline or
//! both), which columns it reads, and how a producer's sequence makes a retry a no-op.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, TimestampMicrosecondType};
use quiver_core::model::{ResolvedView, Source};
use quiver_core::{DType, Timestamp};
use quiver_offline::normalize::{key_arrow_type, NormalizedBatch, Origin};
use quiver_registry::RegistryState;

use crate::stream;
use crate::write::{self, Input, Targets};
use crate::{Error, FeatureStore, Result};

/// At most this many rows per push.
pub const MAX_PUSH_ROWS: usize = 100_000;

/// What a push names: a view or a push source, and, for idempotent pushes to a push
/// source, the producer.
#[derive(Clone, Copy, Debug, Default)]
pub struct PushTarget<'a> {
    /// The feature view pushed to (or empty).
    pub feature_view: &'a str,
    /// The push source pushed to (or empty).
    pub push_source: &'a str,
    /// The producer, whose growing sequence makes each event applied once (or empty).
    pub producer: &'a str,
    /// `online`, `offline`, `online_and_offline`, or empty for the default (a push
    /// source: both; a view: online).
    pub to: &'a str,
}

/// The views a push writes and where.
pub struct PushPlan<'s> {
    /// The source whose column names the rows use.
    pub source: &'s Source,
    pub views: Vec<ResolvedView>,
    pub targets: Targets,
}

/// Checks a push's names against the registry: the views it writes, where, and that
/// each of them may take it.
pub fn plan<'s>(state: &'s RegistryState, t: &PushTarget<'_>) -> Result<PushPlan<'s>> {
    let targets = match t.to {
        // A push source is a stream: its events go where a stream worker writes them,
        // online and offline.
        "" if !t.push_source.is_empty() => Targets::BOTH,
        "" | "online" => Targets::ONLINE,
        "offline" => Targets::OFFLINE,
        "online_and_offline" => Targets::BOTH,
        other => {
            return Err(Error::Invalid(format!(
                "'to' is {other:?}: expected online, offline or online_and_offline"
            )))
        }
    };
    let (source, names): (&Source, Vec<&str>) = match (t.feature_view, t.push_source) {
        ("", "") => {
            return Err(Error::Invalid(
                "name a 'feature_view' or a 'push_source' to push to".into(),
            ))
        }
        (v, "") => {
            let record = state.view(v)?;
            (&state.source(&record.def.source)?.def, vec![v])
        }
        ("", p) => {
            let source = state.source(p)?;
            if !matches!(source.def, Source::Push(_)) {
                return Err(Error::Invalid(format!(
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
                return Err(Error::Invalid(format!(
                    "no feature view reads push source '{p}'"
                )));
            }
            (&source.def, names)
        }
        _ => {
            return Err(Error::Invalid(
                "name either a 'feature_view' or a 'push_source', not both".into(),
            ))
        }
    };
    if !t.producer.is_empty() && t.push_source.is_empty() {
        return Err(Error::Invalid(
            "'producer' and 'sequence' make pushes to a 'push_source' idempotent; a push to \
             a 'feature_view' takes neither"
                .into(),
        ));
    }
    let mut views = Vec::with_capacity(names.len());
    for name in names {
        let record = state.view(name)?;
        if targets.online && !record.def.online {
            return Err(Error::Invalid(format!(
                "feature view '{name}' is not served online (online: false)"
            )));
        }
        if targets.offline && !record.def.offline {
            return Err(Error::Invalid(format!(
                "feature view '{name}' keeps no offline history (offline: false)"
            )));
        }
        let view = state.resolved_view(name)?;
        if !view.aggregations.is_empty() && !t.push_source.is_empty() && t.producer.is_empty() {
            // Without positions its tiles would be recomputed from the offline table,
            // dropping what producers' pushes applied and have not yet committed there.
            return Err(Error::Invalid(format!(
                "feature view '{name}' is an aggregated view: pushes to push source '{}' need \
                 a 'producer' and a growing 'sequence' (each event is applied once)",
                t.push_source
            )));
        }
        if !view.aggregations.is_empty() && !targets.offline {
            return Err(Error::Invalid(format!(
                "feature view '{name}' is an aggregated view: its events are written offline \
                 and online together (to: online_and_offline), so that training sets count \
                 what is served"
            )));
        }
        views.push(view);
    }
    Ok(PushPlan {
        source,
        views,
        targets,
    })
}

/// The partition a push's events are reported under (freshness), and, with a
/// producer, stored under (stream positions and offsets).
pub fn partition(t: &PushTarget<'_>, view: &str) -> String {
    match (t.push_source, t.producer) {
        ("", _) => format!("push:{view}"),
        (s, "") => format!("push:{s}"),
        (s, p) => format!("push:{s}:{p}"),
    }
}

/// Row `i` of a producer's request `sequence` sits at offset `sequence << 32 | i` of
/// its partition.
pub fn offsets(sequence: u64, rows: usize) -> Vec<u128> {
    (0..rows as u128)
        .map(|i| (sequence as u128) << 32 | i)
        .collect()
}

/// What a view reads of a push's columns.
#[derive(Clone, Debug, PartialEq)]
pub enum Role {
    /// A join key, of this type as stored.
    Key(DataType),
    /// The event time or creation time: parsed by the write path.
    Time,
    /// A feature (a snapshot view) or a column its aggregations read.
    Feature(DType),
}

/// The columns of a push one view reads, in the view's order: its join keys, the
/// event time (named as the source's `timestamp_field` or `event_timestamp`), the
/// creation time when sent, and its features. With `strict`, a column the view does
/// not use is an error (a push to one view); else it is left to the source's other
/// views.
pub fn columns_of(
    view: &ResolvedView,
    source: &Source,
    names: &[&str],
    strict: bool,
) -> Result<Vec<(String, Role)>> {
    let has = |n: &str| names.contains(&n);
    let ts = [source.timestamp_field(), "event_timestamp"]
        .into_iter()
        .find(|n| has(n))
        .ok_or_else(|| {
            Error::Invalid(format!(
                "missing the event time column '{}'",
                source.timestamp_field()
            ))
        })?;
    let created = [source.created_timestamp_field(), Some("created_timestamp")]
        .into_iter()
        .flatten()
        .find(|n| has(n));
    let mut out = Vec::with_capacity(view.join_keys.len() + view.features.len() + 2);
    for k in &view.join_keys {
        if !has(&k.name) {
            return Err(Error::Invalid(format!(
                "missing join key column '{}'",
                k.name
            )));
        }
        out.push((k.name.clone(), Role::Key(key_arrow_type(&k.dtype))));
    }
    out.push((ts.to_string(), Role::Time));
    if let Some(c) = created {
        out.push((c.to_string(), Role::Time));
    }
    for f in &view.features {
        if !has(&f.name) {
            return Err(Error::Invalid(format!(
                "missing column '{}' of feature view '{}' (send null values for unknown ones)",
                f.name, view.name
            )));
        }
        out.push((f.name.clone(), Role::Feature(f.dtype.clone())));
    }
    if strict {
        if let Some(extra) = names.iter().find(|n| !out.iter().any(|(u, _)| u == *n)) {
            return Err(Error::Invalid(format!(
                "column '{extra}' is not a join key, time column or feature of feature view \
                 '{}'",
                view.name
            )));
        }
    }
    Ok(out)
}

/// What a push did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PushStats {
    /// Rows pushed.
    pub rows: u64,
    /// Rows stored online (snapshot views) or events applied (aggregated views), over
    /// the views written.
    pub written_online: u64,
    /// Rows not stored online because a fresher row was (or the event was applied
    /// before).
    pub skipped_online: u64,
    /// Rows written to offline tables, over the views written.
    pub written_offline: u64,
    /// Per view: (name, newest event time pushed), for freshness reports.
    #[serde(skip)]
    pub newest: Vec<(String, Option<Timestamp>)>,
}

/// Pushes Arrow rows ([`FeatureStore::push`]).
#[must_use = "a push does nothing until awaited"]
pub struct PushBuilder {
    store: FeatureStore,
    feature_view: String,
    push_source: String,
    producer: String,
    sequence: u64,
    to: String,
    rows: Option<RecordBatch>,
    now: Option<Timestamp>,
}

impl PushBuilder {
    pub(crate) fn new(store: FeatureStore, rows: RecordBatch) -> Self {
        PushBuilder {
            store,
            feature_view: String::new(),
            push_source: String::new(),
            producer: String::new(),
            sequence: 0,
            to: String::new(),
            rows: Some(rows),
            now: None,
        }
    }

    /// Pushes to one feature view (its source's column names).
    pub fn feature_view(mut self, name: impl Into<String>) -> Self {
        self.feature_view = name.into();
        self
    }

    /// Pushes to a push source: every view reading it.
    pub fn push_source(mut self, name: impl Into<String>) -> Self {
        self.push_source = name.into();
        self
    }

    /// `online`, `offline` or `online_and_offline` (default: a push source both, a view
    /// online).
    pub fn to(mut self, to: impl Into<String>) -> Self {
        self.to = to.into();
        self
    }

    /// The producer and this push's sequence number (growing per producer): a push
    /// repeated with the same sequence changes nothing.
    pub fn producer(mut self, producer: impl Into<String>, sequence: u64) -> Self {
        self.producer = producer.into();
        self.sequence = sequence;
        self
    }

    /// The clock (the latest event time accepted is derived from it).
    pub fn at(mut self, now: Timestamp) -> Self {
        self.now = Some(now);
        self
    }

    async fn run(mut self) -> Result<PushStats> {
        let rows = self.rows.take().expect("set at construction");
        if rows.num_rows() == 0 {
            return Err(Error::Invalid("the pushed table holds no rows".into()));
        }
        if rows.num_rows() > MAX_PUSH_ROWS {
            return Err(Error::Invalid(format!(
                "{} rows pushed; at most {MAX_PUSH_ROWS} per push (split it)",
                rows.num_rows()
            )));
        }
        let snapshot = self.store.snapshot()?;
        let t = PushTarget {
            feature_view: &self.feature_view,
            push_source: &self.push_source,
            producer: &self.producer,
            to: &self.to,
        };
        let plan = plan(&snapshot.state, &t)?;
        let schema = rows.schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        let now = self.now.unwrap_or_else(quiver_core::time::now);
        let mut prepared = Vec::with_capacity(plan.views.len());
        for view in &plan.views {
            let cols = columns_of(view, plan.source, &names, t.push_source.is_empty())?;
            let fields: Vec<Field> = cols
                .iter()
                .map(|(n, _)| schema.field_with_name(n).expect("listed").clone())
                .collect();
            let arrays: Vec<ArrayRef> = cols
                .iter()
                .map(|(n, _)| rows.column_by_name(n).expect("listed").clone())
                .collect();
            let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)?;
            let created = cols[view.join_keys.len() + 1..]
                .iter()
                .find(|(_, r)| *r == Role::Time)
                .map(|(n, _)| n.as_str());
            let input = Input {
                timestamp_field: &cols[view.join_keys.len()].0,
                created_field: created,
                origin: Origin {
                    file: "pushed rows",
                    first_row: 0,
                },
                not_after: Input::not_after(self.store.config(), now),
            };
            // Every view's rows are checked before any is written.
            prepared.push(write::validate(view, &batch, &input)?);
        }
        let mut stats = PushStats {
            rows: rows.num_rows() as u64,
            ..Default::default()
        };
        for (view, batch) in plan.views.iter().zip(prepared) {
            stats.newest.push((view.name.clone(), newest(view, &batch)));
            let (online, offline) = if t.producer.is_empty() {
                let w = write::write(&self.store, view, vec![batch], plan.targets).await?;
                (w.online_written, w.offline.map_or(0, |o| o.rows_in))
            } else {
                let offsets = offsets(self.sequence, batch.batch.num_rows());
                let part: Arc<[u8]> = partition(&t, &view.name).into_bytes().into();
                let mut online = 0;
                if plan.targets.online {
                    online = apply_online(&self.store, view, &batch, &part, &offsets, now).await?;
                }
                let mut offline = 0;
                if plan.targets.offline {
                    let events = stream::OfflineEvents {
                        rows: batch,
                        partition: part,
                        offsets,
                    };
                    offline = stream::write_offline(&self.store, view, vec![events])
                        .await?
                        .rows_in;
                }
                (online, offline)
            };
            stats.written_online += online;
            if plan.targets.online {
                stats.skipped_online += stats.rows.saturating_sub(online);
            }
            stats.written_offline += offline;
        }
        Ok(stats)
    }
}

/// The newest event time of a view's validated rows.
pub fn newest(view: &ResolvedView, batch: &NormalizedBatch) -> Option<Timestamp> {
    batch
        .batch
        .column(view.join_keys.len())
        .as_primitive::<TimestampMicrosecondType>()
        .values()
        .iter()
        .copied()
        .max()
}

/// Applies a producer's events online as stream events (each once per offset); returns
/// the events applied (an aggregated view) or rows stored (a snapshot view).
pub async fn apply_online(
    store: &FeatureStore,
    view: &ResolvedView,
    batch: &NormalizedBatch,
    partition: &[u8],
    offsets: &[u128],
    now: Timestamp,
) -> Result<u64> {
    let s = stream::apply_events(
        store,
        view,
        batch.clone(),
        stream::StreamEvents { partition, offsets },
        Targets::ONLINE,
        now,
    )
    .await?;
    Ok(if view.aggregations.is_empty() {
        s.online_written
    } else {
        s.applied
    })
}

impl IntoFuture for PushBuilder {
    type Output = Result<PushStats>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.run())
    }
}
