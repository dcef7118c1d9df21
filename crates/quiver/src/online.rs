//! Online reads: `store.online_features().service(..).entity_row(..).get()`.
//!
//! Every feature gets a status computed from its row's event time and the view's TTL
//! at the request time (DESIGN §2): `PRESENT`, `MISSING` (no row) or `OUTSIDE_TTL`
//! (the row is older than `now − ttl`; its value is not returned). A missing value is
//! null, never zero.

use std::collections::BTreeMap;

use quiver_core::contract::snapshot_status;
use quiver_core::encoding::{decode_row, encode_key_value};
use quiver_core::model::{FeatureRef, ResolvedView};
use quiver_core::time::{now, Timestamp};
use quiver_core::{DType, FeatureStatus, Value};
use quiver_online::{entity_key, OnlineStore};
use serde::Serialize;

use crate::historical::resolve_refs;
use crate::{Error, FeatureStore, Result};

/// Builds an online read.
pub struct OnlineBuilder<'a> {
    store: &'a FeatureStore,
    features: Vec<String>,
    service: Option<String>,
    rows: Vec<BTreeMap<String, Value>>,
    text_rows: Vec<BTreeMap<String, String>>,
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

impl<'a> OnlineBuilder<'a> {
    pub(crate) fn new(store: &'a FeatureStore) -> Self {
        OnlineBuilder {
            store,
            features: vec![],
            service: None,
            rows: vec![],
            text_rows: vec![],
            full_names: false,
            at: None,
        }
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
    pub fn get(self) -> Result<OnlineResult> {
        let state = self.store.state()?;
        let refs = resolve_refs(&state, &self.features, self.service.as_deref())?;
        let service = match &self.service {
            Some(s) => Some((s.clone(), state.service(s)?.version)),
            None => None,
        };
        let mut views: Vec<(ResolvedView, Vec<(usize, usize)>)> = Vec::new();
        for (out_idx, r) in refs.iter().enumerate() {
            let view = state.resolved_view(&r.view)?;
            let fi = view.feature_index(&r.feature).expect("refs are validated");
            match views.iter_mut().find(|(v, _)| v.name == r.view) {
                Some((_, list)) => list.push((out_idx, fi)),
                None => views.push((view, vec![(out_idx, fi)])),
            }
        }
        let names = output_names(&refs, self.full_names)?;
        let key_types: BTreeMap<&str, &DType> = views
            .iter()
            .flat_map(|(v, _)| v.join_keys.iter().map(|k| (k.name.as_str(), &k.dtype)))
            .collect();
        let mut rows = self.rows;
        for tr in self.text_rows {
            let mut row = BTreeMap::new();
            for (k, v) in tr {
                let t = key_types.get(k.as_str()).ok_or_else(|| {
                    Error::Invalid(format!(
                        "'{k}' is not a join key of the requested features (keys: {})",
                        key_types.keys().copied().collect::<Vec<_>>().join(", ")
                    ))
                })?;
                row.insert(k, Value::parse_as(&v, t)?);
            }
            rows.push(row);
        }
        if rows.is_empty() {
            return Err(Error::Invalid("no entity rows given".into()));
        }
        let at = self.at.unwrap_or_else(now);
        let online = self.store.online()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(|e| Error::Invalid(format!("cannot start runtime: {e}")))?;
        let result = rt.block_on(read(online.as_ref(), &views, &rows, names.len(), at))?;
        Ok(OnlineResult {
            feature_names: names,
            rows: rows
                .into_iter()
                .zip(result)
                .map(
                    |(entities, (values, statuses, event_timestamps))| OnlineRow {
                        entities,
                        values,
                        statuses,
                        event_timestamps,
                    },
                )
                .collect(),
            feature_service: service,
            at,
        })
    }
}

fn output_names(refs: &[FeatureRef], full: bool) -> Result<Vec<String>> {
    let names: Vec<String> = refs.iter().map(|r| r.output_name(full)).collect();
    for (i, n) in names.iter().enumerate() {
        if names[..i].contains(n) {
            return Err(Error::Invalid(format!(
                "feature name '{n}' is ambiguous across views: use full feature names"
            )));
        }
    }
    Ok(names)
}

/// Values, statuses and event times of one entity row.
pub type RowResult = (Vec<Value>, Vec<FeatureStatus>, Vec<Option<Timestamp>>);

/// Reads each view's field for every entity row and applies the snapshot rule at `at`.
pub async fn read(
    online: &dyn OnlineStore,
    views: &[(ResolvedView, Vec<(usize, usize)>)],
    rows: &[BTreeMap<String, Value>],
    n_out: usize,
    at: Timestamp,
) -> Result<Vec<RowResult>> {
    let mut out: Vec<RowResult> = rows
        .iter()
        .map(|_| {
            (
                vec![Value::Null; n_out],
                vec![FeatureStatus::Missing; n_out],
                vec![None; n_out],
            )
        })
        .collect();
    for (view, wanted) in views {
        let mut keys = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            let mut enc = Vec::new();
            for k in &view.join_keys {
                let v = row.get(&k.name).ok_or_else(|| {
                    Error::Invalid(format!(
                        "entity row {} has no value for join key '{}' (feature view '{}')",
                        i + 1,
                        k.name,
                        view.name
                    ))
                })?;
                let v = coerce_key(v, &k.dtype).ok_or_else(|| {
                    Error::Invalid(format!(
                        "entity row {}: join key '{}' must be {}, got {v:?}",
                        i + 1,
                        k.name,
                        k.dtype
                    ))
                })?;
                encode_key_value(&v, &mut enc)?;
            }
            keys.push(entity_key(&view.project, &view.entity_set(), &enc));
        }
        let key_refs: Vec<&[u8]> = keys.iter().map(|k| k.as_slice()).collect();
        let cells = online.read(&key_refs, &[view.online_field()]).await?;
        let dtypes: Vec<&DType> = view.features.iter().map(|f| &f.dtype).collect();
        for (i, cell) in cells.into_iter().enumerate() {
            let Some(bytes) = cell else { continue };
            let row = decode_row(&bytes, &dtypes)?;
            let status = snapshot_status(Some(row.event_ts), at, view.ttl);
            let (values, statuses, times) = &mut out[i];
            for &(o, fi) in wanted {
                statuses[o] = status;
                times[o] = Some(row.event_ts);
                if status == FeatureStatus::Present {
                    values[o] = row.values[fi].clone();
                }
            }
        }
    }
    Ok(out)
}

/// A key value converted to the key's registered type, if it fits.
fn coerce_key(v: &Value, t: &DType) -> Option<Value> {
    match (v, t) {
        (Value::Int64(_), DType::Int64 | DType::Int32) => Some(v.clone()),
        (Value::Int32(i), DType::Int64 | DType::Int32) => Some(Value::Int64(*i as i64)),
        (Value::String(_), DType::String) => Some(v.clone()),
        (Value::Bytes(_), DType::Bytes) => Some(v.clone()),
        (Value::String(s), DType::Bytes) => Some(Value::Bytes(s.as_bytes().to_vec())),
        _ => None,
    }
}
