//! Historical retrieval as a builder: `store.historical().entities(..).features(..).run()`.

use arrow::array::RecordBatch;
use quiver_core::model::FeatureRef;
use quiver_offline::{HistoricalRequest, ViewRequest};

use crate::{Error, FeatureStore, Result};

/// Builds a point-in-time-correct training set.
pub struct HistoricalBuilder<'a> {
    store: &'a FeatureStore,
    entities: Vec<RecordBatch>,
    features: Vec<String>,
    service: Option<String>,
    full_names: bool,
    timestamp_column: String,
}

impl<'a> HistoricalBuilder<'a> {
    pub(crate) fn new(store: &'a FeatureStore) -> Self {
        HistoricalBuilder {
            store,
            entities: Vec::new(),
            features: Vec::new(),
            service: None,
            full_names: false,
            timestamp_column: "event_timestamp".into(),
        }
    }

    /// The entity rows: join keys, `event_timestamp`, and any other columns.
    pub fn entities(mut self, batch: RecordBatch) -> Self {
        self.entities.push(batch);
        self
    }

    /// Feature references, `view:feature` (or `view:*`).
    pub fn features<S: Into<String>>(mut self, refs: impl IntoIterator<Item = S>) -> Self {
        self.features.extend(refs.into_iter().map(Into::into));
        self
    }

    /// The features of a feature service.
    pub fn service(mut self, name: impl Into<String>) -> Self {
        self.service = Some(name.into());
        self
    }

    /// Names output columns `view__feature` instead of `feature`.
    pub fn full_names(mut self, yes: bool) -> Self {
        self.full_names = yes;
        self
    }

    /// The name of the entity rows' time column (default `event_timestamp`).
    pub fn timestamp_column(mut self, name: impl Into<String>) -> Self {
        self.timestamp_column = name.into();
        self
    }

    /// Runs the retrieval.
    pub fn run(self) -> Result<RecordBatch> {
        let state = self.store.state()?;
        let refs = resolve_refs(&state, &self.features, self.service.as_deref())?;
        let mut views: Vec<ViewRequest> = Vec::new();
        for r in &refs {
            let out = r.output_name(self.full_names);
            match views.iter_mut().find(|v| v.view.name == r.view) {
                Some(v) => v.features.push((r.feature.clone(), out)),
                None => views.push(ViewRequest {
                    view: state.resolved_view(&r.view)?,
                    features: vec![(r.feature.clone(), out)],
                }),
            }
        }
        let req = HistoricalRequest {
            entities: self.entities,
            timestamp_column: self.timestamp_column,
            views,
        };
        Ok(self.store.offline()?.historical(&req)?)
    }
}

/// The feature references of a request: explicit ones or a service's, not both.
pub(crate) fn resolve_refs(
    state: &quiver_registry::RegistryState,
    features: &[String],
    service: Option<&str>,
) -> Result<Vec<FeatureRef>> {
    let refs = match (service, features.is_empty()) {
        (Some(_), false) => {
            return Err(Error::Invalid(
                "give either features or a feature service, not both".into(),
            ))
        }
        (Some(s), true) => state.service(s)?.features.clone(),
        (None, false) => state.expand_refs(features)?,
        (None, true) => {
            return Err(Error::Invalid(
                "no features requested: give features (view:feature) or a feature service".into(),
            ))
        }
    };
    let mut seen = std::collections::HashSet::new();
    for r in &refs {
        if !seen.insert(r) {
            return Err(Error::Invalid(format!("feature {r} is requested twice")));
        }
    }
    Ok(refs)
}
