//! Historical retrieval as a builder: `store.historical().entities(..).features(..).await`.
//!
//! Features of feature views come from the point-in-time join of the offline store.
//! Features of on-demand feature views are computed after it, by the same evaluator as
//! online ([`quiver_ondemand`]), over the whole training set: their source views'
//! features are joined too (even when not requested, and dropped afterwards) and their
//! request fields are read from the entity rows' columns of the same names.

use std::collections::HashMap;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use quiver_core::dtype::DType;
use quiver_core::model::FeatureRef;
use quiver_offline::{HistoricalRequest, ViewRequest};
use quiver_ondemand::InvalidRows;
use quiver_registry::state::OnDemandInputs;

use crate::{Error, FeatureStore, Result};

/// Builds a point-in-time-correct training set.
#[must_use = "a retrieval does nothing until awaited"]
pub struct HistoricalBuilder {
    store: FeatureStore,
    entities: Vec<RecordBatch>,
    features: Vec<String>,
    service: Option<String>,
    full_names: bool,
    timestamp_column: String,
}

impl HistoricalBuilder {
    pub(crate) fn new(store: FeatureStore) -> Self {
        HistoricalBuilder {
            store,
            entities: Vec::new(),
            features: Vec::new(),
            service: None,
            full_names: false,
            timestamp_column: "event_timestamp".into(),
        }
    }

    /// The entity rows: join keys, `event_timestamp`, the request fields of requested
    /// on-demand features, and any other columns.
    pub fn entities(mut self, batch: RecordBatch) -> Self {
        self.entities.push(batch);
        self
    }

    /// The entity rows as several batches of one schema (e.g. a file's row groups),
    /// read as one table without first being copied into one batch.
    pub fn entity_batches(mut self, batches: impl IntoIterator<Item = RecordBatch>) -> Self {
        self.entities.extend(batches);
        self
    }

    /// Feature references, `view:feature` (or `view:*`), of feature views or on-demand
    /// feature views.
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

    /// Runs the retrieval: every entity row, in input order, followed by one column
    /// per requested feature, in the order requested.
    async fn run(self) -> Result<RecordBatch> {
        let state = self.store.state()?;
        let refs = state.request_refs(&self.features, self.service.as_deref())?;
        let input_names: Vec<String> = self
            .entities
            .first()
            .map(|b| {
                b.schema()
                    .fields()
                    .iter()
                    .map(|f| f.name().clone())
                    .collect()
            })
            .unwrap_or_default();
        let out_names: Vec<String> = refs
            .iter()
            .map(|r| r.output_name(self.full_names))
            .collect();
        let mut seen: Vec<&str> = input_names.iter().map(|s| s.as_str()).collect();
        for n in &out_names {
            if seen.contains(&n.as_str()) {
                return Err(Error::Invalid(format!(
                    "output column '{n}' appears twice (a feature name shared by several \
                     views, or an input column): use full feature names (view__feature)"
                )));
            }
            seen.push(n);
        }

        // The on-demand views requested, in order of first request, compiled once.
        let mut odfvs: Vec<(OnDemandInputs, quiver_ondemand::CompiledOdfv)> = Vec::new();
        for r in &refs {
            if state.is_on_demand(&r.view) && !odfvs.iter().any(|(i, _)| i.def.name == r.view) {
                let inputs = state.on_demand_inputs(&r.view)?;
                let compiled = inputs.compile()?;
                odfvs.push((inputs, compiled));
            }
        }

        // What the join fetches: the requested stored features under their output
        // names, then the on-demand views' dependencies not requested, under names that
        // collide with nothing.
        let mut fetched: Vec<(FeatureRef, String)> = refs
            .iter()
            .zip(&out_names)
            .filter(|(r, _)| !state.is_on_demand(&r.view))
            .map(|(r, n)| (r.clone(), n.clone()))
            .collect();
        for (inputs, _) in &odfvs {
            for d in &inputs.dependencies {
                if fetched.iter().any(|(r, _)| r == &d.feature) {
                    continue;
                }
                let mut name = format!("__quiver_input__{}", d.column);
                while seen.contains(&name.as_str()) || fetched.iter().any(|(_, n)| n == &name) {
                    name.push('_');
                }
                fetched.push((d.feature.clone(), name));
            }
        }
        // Each view is read at the version that trains: the declared one once ingested,
        // else the earlier one still holding data.
        let mut views: Vec<ViewRequest> = Vec::new();
        // Aggregated views are computed from their events after the join.
        let mut aggregated: Vec<ViewRequest> = Vec::new();
        for (r, out) in &fetched {
            let pair = (r.feature.clone(), out.clone());
            let training = state.training_view(&r.view)?;
            if !training.aggregations.is_empty() {
                match aggregated.iter_mut().find(|v| v.view.name == r.view) {
                    Some(v) => v.features.push(pair),
                    None => aggregated.push(ViewRequest {
                        view: training,
                        features: vec![pair],
                    }),
                }
                continue;
            }
            let i = match views.iter().position(|v| v.view.name == r.view) {
                Some(i) => i,
                None => {
                    views.push(ViewRequest {
                        view: state.training_view(&r.view)?,
                        features: Vec::new(),
                    });
                    views.len() - 1
                }
            };
            let view = &views[i].view;
            if view.feature_index(&r.feature).is_none() {
                let record = state.view(&r.view)?;
                return Err(Error::Registry(quiver_registry::Error::NoData(format!(
                    "feature '{}' of feature view '{}' has no offline data: version {} \
                     trains until version {} is ingested; run `quiver ingest {}`",
                    r.feature, r.view, view.version, record.version, r.view
                ))));
            }
            views[i].features.push(pair);
        }
        let req = HistoricalRequest {
            entities: self.entities,
            timestamp_column: self.timestamp_column.clone(),
            views,
        };
        let mut joined = self.store.offline().historical(req).await?;
        if !aggregated.is_empty() {
            let mut fields: Vec<Field> = joined
                .schema()
                .fields()
                .iter()
                .map(|f| f.as_ref().clone())
                .collect();
            let mut columns = joined.columns().to_vec();
            for v in &aggregated {
                let computed = self
                    .store
                    .offline()
                    .aggregate(&joined, &self.timestamp_column, &v.view, &v.features)
                    .await?;
                for (name, col) in computed {
                    fields.push(Field::new(name, col.data_type().clone(), true));
                    columns.push(col);
                }
            }
            joined = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
        }
        // On-demand features over the whole training set: CPU work, off the runtime.
        crate::store::blocking(move || assemble(joined, &refs, &out_names, &odfvs, &fetched)).await
    }
}

impl IntoFuture for HistoricalBuilder {
    type Output = Result<RecordBatch>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.run())
    }
}

/// Field metadata of an on-demand feature some rows of which could not be computed
/// (null in the training set, `INVALID` online; [`quiver_core::finite`]): how many.
pub const INVALID_ROWS: &str = "quiver.invalid_rows";
/// Field metadata next to [`INVALID_ROWS`]: why the first of them failed.
pub const INVALID_REASON: &str = "quiver.invalid_reason";

/// The on-demand features of a training set with rows that could not be computed:
/// (column, how many rows, why the first failed).
pub fn invalid_rows(batch: &RecordBatch) -> Vec<(String, u64, String)> {
    batch
        .schema()
        .fields()
        .iter()
        .filter_map(|f| {
            let n = f.metadata().get(INVALID_ROWS)?.parse().ok()?;
            let why = f
                .metadata()
                .get(INVALID_REASON)
                .cloned()
                .unwrap_or_default();
            Some((f.name().clone(), n, why))
        })
        .collect()
}

/// The training set from the join's output: the entity rows' columns, then every
/// requested feature in request order (on-demand ones computed here); dependencies
/// fetched only for on-demand views are left out.
fn assemble(
    joined: RecordBatch,
    refs: &[FeatureRef],
    out_names: &[String],
    odfvs: &[(OnDemandInputs, quiver_ondemand::CompiledOdfv)],
    fetched: &[(FeatureRef, String)],
) -> Result<RecordBatch> {
    let n_inputs = joined.num_columns() - fetched.len();
    let column = |name: &str| -> ArrayRef {
        joined
            .column_by_name(name)
            .cloned()
            .expect("the join returns every requested column")
    };

    // On-demand features, over the whole training set.
    let mut computed: HashMap<FeatureRef, (ArrayRef, quiver_ondemand::InvalidRows)> =
        HashMap::new();
    for (inputs, compiled) in odfvs {
        let mut fields = Vec::new();
        let mut columns = Vec::new();
        for f in &inputs.request_fields {
            let col = request_column(&joined, n_inputs, &inputs.def.name, &f.name, &f.dtype)?;
            fields.push(Field::new(&f.name, col.data_type().clone(), true));
            columns.push(col);
        }
        for d in &inputs.dependencies {
            let (_, name) = fetched
                .iter()
                .find(|(r, _)| r == &d.feature)
                .expect("dependencies are fetched");
            let col = column(name);
            fields.push(Field::new(&d.column, col.data_type().clone(), true));
            columns.push(col);
        }
        let batch = RecordBatch::try_new_with_options(
            Arc::new(Schema::new(fields)),
            columns,
            &arrow::array::RecordBatchOptions::new().with_row_count(Some(joined.num_rows())),
        )?;
        let values = compiled.evaluate_reporting(&batch)?;
        for ((f, v), bad) in inputs
            .def
            .features
            .iter()
            .zip(values.columns)
            .zip(values.invalid)
        {
            computed.insert(
                FeatureRef {
                    view: inputs.def.name.clone(),
                    feature: f.name.clone(),
                },
                (v, bad),
            );
        }
    }

    // The entity rows' columns, then every requested feature in request order;
    // dependencies fetched only for on-demand views are left out.
    let schema = joined.schema();
    let mut fields: Vec<Field> = schema.fields()[..n_inputs]
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    let mut columns: Vec<ArrayRef> = joined.columns()[..n_inputs].to_vec();
    for (r, name) in refs.iter().zip(out_names) {
        let (col, bad) = match computed.get(r) {
            Some((c, bad)) => (Arc::clone(c), Some(bad)),
            None => (column(name), None),
        };
        let mut field = Field::new(name, col.data_type().clone(), true);
        if let Some(InvalidRows {
            rows,
            first_reason: Some(why),
        }) = bad
        {
            field = field.with_metadata(HashMap::from([
                (INVALID_ROWS.to_string(), rows.len().to_string()),
                (INVALID_REASON.to_string(), why.clone()),
            ]));
        }
        fields.push(field);
        columns.push(col);
    }
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

/// The entity rows' column for request field `field` of on-demand view `view`, as the
/// field's declared type, by the one request coercion rule ([`DType::accepts_request`]).
fn request_column(
    joined: &RecordBatch,
    n_inputs: usize,
    view: &str,
    field: &str,
    dtype: &DType,
) -> Result<ArrayRef> {
    let schema = joined.schema();
    let inputs = &schema.fields()[..n_inputs];
    let list = || {
        inputs
            .iter()
            .map(|f| f.name().as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Some(pos) = inputs.iter().position(|f| f.name() == field) else {
        return Err(Error::Invalid(format!(
            "on-demand feature view '{view}' reads request field '{field}' ({dtype}), but the \
             entity rows have no column '{field}'{} (columns: {})",
            quiver_core::names::suggest(field, inputs.iter().map(|f| f.name())),
            list()
        )));
    };
    let col = joined.column(pos);
    let want = dtype.to_arrow();
    if col.data_type() == &want {
        return Ok(Arc::clone(col));
    }
    let have = DType::from_arrow(col.data_type());
    let fits = col.data_type() == &DataType::Null
        || have.as_ref().is_some_and(|h| dtype.accepts_request(h));
    if !fits {
        return Err(Error::Invalid(format!(
            "on-demand feature view '{view}' reads request field '{field}' as {dtype}, but \
             column '{field}' of the entity rows is {} (columns: {})",
            have.map(|t| t.to_string())
                .unwrap_or_else(|| col.data_type().to_string()),
            list()
        )));
    }
    // Checked: an integer that does not fit the declared type is an error, as online.
    let options = arrow::compute::CastOptions {
        safe: false,
        ..Default::default()
    };
    let cast = arrow::compute::cast_with_options(col, &want, &options).map_err(|e| {
        Error::Invalid(format!(
            "on-demand feature view '{view}': column '{field}' of the entity rows does not \
             fit request field '{field}' ({dtype}): {e}"
        ))
    })?;
    // As online: a float64 beyond float32's range is an error, never an infinity.
    if let Some((row, x)) = quiver_core::finite::first_overflow_to_f32(col, cast.as_ref()) {
        return Err(Error::Invalid(format!(
            "on-demand feature view '{view}': row {row} of column '{field}' of the entity \
             rows, {x:e}, is beyond the range of float32 (request field '{field}' is {dtype})"
        )));
    }
    Ok(cast)
}
