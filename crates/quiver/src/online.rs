//! Online reads through the facade: `store.online_features().service(..).entity_row(..).await`.
//!
//! The read plan comes from the store's snapshot (compiled once per registry version)
//! and the online store connection is the store's one, so repeated reads cost a store
//! round trip and nothing else. Every feature gets a status computed from its row's
//! event time and the view's TTL at the request time (DESIGN §2): `PRESENT`, `MISSING`
//! (no row) or `OUTSIDE_TTL` (the row is older than `now − ttl`; its value is not
//! returned). A missing value is null, never zero.

use std::collections::BTreeMap;
use std::future::{Future, IntoFuture};
use std::pin::Pin;

use quiver_core::time::{now, Timestamp};
use quiver_core::{FeatureStatus, Value};
use quiver_online::Columns;
use serde::Serialize;

use crate::{Error, FeatureStore, Result};

/// Builds an online read.
#[must_use = "a read does nothing until awaited"]
pub struct OnlineBuilder {
    store: FeatureStore,
    features: Vec<String>,
    service: Option<String>,
    rows: Vec<BTreeMap<String, Value>>,
    text_rows: Vec<BTreeMap<String, String>>,
    request_text: Vec<BTreeMap<String, String>>,
    full_names: bool,
    at: Option<Timestamp>,
}

/// One entity row's result.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OnlineRow {
    /// The entity's join-key values.
    pub entities: BTreeMap<String, Value>,
    /// Feature values, by output name, in request order.
    pub values: Vec<Value>,
    pub statuses: Vec<FeatureStatus>,
    /// Each value's event time, when a row exists.
    pub event_timestamps: Vec<Option<Timestamp>>,
}

/// The result of an online read.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OnlineResult {
    /// Output names of the features, in request order.
    pub feature_names: Vec<String>,
    pub rows: Vec<OnlineRow>,
    /// The feature service asked for and its version.
    pub feature_service: Option<(String, u32)>,
    /// The time statuses were computed at.
    pub at: Timestamp,
}

impl OnlineBuilder {
    pub(crate) fn new(store: FeatureStore) -> Self {
        OnlineBuilder {
            store,
            features: vec![],
            service: None,
            rows: vec![],
            text_rows: vec![],
            request_text: vec![],
            full_names: false,
            at: None,
        }
    }

    /// Adds the request fields of the next entity row, as text (parsed with the
    /// declared types): what on-demand features read. Give one per entity row, in order.
    pub fn request_row_text(mut self, row: BTreeMap<String, String>) -> Self {
        self.request_text.push(row);
        self
    }

    /// Feature references, `view:feature`.
    pub fn features<S: Into<String>>(mut self, refs: impl IntoIterator<Item = S>) -> Self {
        self.features.extend(refs.into_iter().map(Into::into));
        self
    }

    /// The features of a feature service.
    pub fn service(mut self, name: impl Into<String>) -> Self {
        self.service = Some(name.into());
        self
    }

    /// Adds an entity row of typed join-key values.
    pub fn entity_row(mut self, row: BTreeMap<String, Value>) -> Self {
        self.rows.push(row);
        self
    }

    /// Adds an entity row of join-key values as text (parsed with the registered key
    /// types), e.g. from a command line.
    pub fn entity_row_text(mut self, row: BTreeMap<String, String>) -> Self {
        self.text_rows.push(row);
        self
    }

    /// Names outputs `view__feature`.
    pub fn full_names(mut self, yes: bool) -> Self {
        self.full_names = yes;
        self
    }

    /// Computes statuses at `t` instead of the current time (an injected clock).
    pub fn at(mut self, t: Timestamp) -> Self {
        self.at = Some(t);
        self
    }

    /// Reads the features.
    async fn run(self) -> Result<OnlineResult> {
        let plan = self.store.snapshot()?.plan(
            self.service.as_deref(),
            &self.features,
            self.full_names,
        )?;
        let mut rows = self.rows;
        for tr in self.text_rows {
            let mut row = BTreeMap::new();
            for (k, v) in tr {
                let key = plan
                    .join_keys()
                    .iter()
                    .find(|j| j.name == k)
                    .ok_or_else(|| {
                        Error::Invalid(format!(
                            "'{k}' is not a join key of the requested features (keys: {})",
                            plan.join_keys()
                                .iter()
                                .map(|k| k.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ))
                    })?;
                row.insert(k, Value::parse_as(&v, &key.dtype)?);
            }
            rows.push(row);
        }
        if rows.is_empty() {
            return Err(Error::Invalid("no entity rows given".into()));
        }
        let mut cols: Vec<(String, Vec<Value>)> = Vec::new();
        for (i, row) in rows.iter().enumerate() {
            for k in plan.join_keys() {
                let v = row.get(&k.name).ok_or_else(|| {
                    Error::Invalid(format!(
                        "entity row {} has no value for join key '{}'",
                        i + 1,
                        k.name
                    ))
                })?;
                match cols.iter_mut().find(|(n, _)| *n == k.name) {
                    Some((_, c)) => c.push(v.clone()),
                    None => cols.push((k.name.clone(), vec![v.clone()])),
                }
            }
            for k in row.keys() {
                if !plan.join_keys().iter().any(|j| &j.name == k) {
                    return Err(Error::Invalid(format!(
                        "'{k}' is not a join key of the requested features"
                    )));
                }
            }
        }
        let entities = Columns::new(cols)?;
        let mut context = Columns::default();
        if !self.request_text.is_empty() {
            if self.request_text.len() != rows.len() {
                return Err(Error::Invalid(format!(
                    "{} request rows for {} entity rows: give one per entity row",
                    self.request_text.len(),
                    rows.len()
                )));
            }
            let fields = plan.request_fields();
            let mut cols: Vec<(String, Vec<Value>)> = fields
                .iter()
                .map(|(n, _)| (n.to_string(), Vec::with_capacity(rows.len())))
                .collect();
            for (i, row) in self.request_text.iter().enumerate() {
                for k in row.keys() {
                    if !fields.iter().any(|(n, _)| n == k) {
                        return Err(Error::Invalid(format!(
                            "'{k}' is not a request field of the requested features (fields: {})",
                            fields
                                .iter()
                                .map(|(n, _)| *n)
                                .collect::<Vec<_>>()
                                .join(", ")
                        )));
                    }
                }
                for (c, (name, dtype)) in fields.iter().enumerate() {
                    let v = match row.get(*name) {
                        Some(t) => Value::parse_as(t, dtype).map_err(|e| {
                            Error::Invalid(format!("request row {}: '{name}': {e}", i + 1))
                        })?,
                        None => Value::Null,
                    };
                    cols[c].1.push(v);
                }
            }
            context = Columns::new(cols)?;
        }
        let at = self.at.unwrap_or_else(now);
        let online = self.store.online().await?;
        let v = plan
            .execute_with(online.as_ref(), &entities, &context, at)
            .await?;
        let nout = v.n_features;
        Ok(OnlineResult {
            feature_names: plan.feature_names().to_vec(),
            rows: rows
                .into_iter()
                .enumerate()
                .map(|(i, entities)| OnlineRow {
                    entities,
                    values: v.values[i * nout..(i + 1) * nout].to_vec(),
                    statuses: v.statuses[i * nout..(i + 1) * nout].to_vec(),
                    event_timestamps: v.event_timestamps[i * nout..(i + 1) * nout].to_vec(),
                })
                .collect(),
            feature_service: plan.service().map(|(s, v)| (s.to_string(), v)),
            at,
        })
    }
}

impl IntoFuture for OnlineBuilder {
    type Output = Result<OnlineResult>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.run())
    }
}
