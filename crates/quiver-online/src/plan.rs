//! The compiled online read: a [`ReadPlan`] resolves the features of a request (a feature
//! service or a list of references) once against the registry; the feature server, the
//! facade's `online_features()` and the Python bindings keep plans and run them for any
//! entity rows ([`Columns`] in, [`Vectors`] out).
//!
//! Every feature gets a status computed from its row's event time and the view's TTL
//! at the request time (DESIGN §2): `PRESENT`, `MISSING` (no row) or `OUTSIDE_TTL`
//! (the row is older than `now − ttl`; its value is not returned). A missing value is
//! null, never zero.
//!
//! A request is one store round trip: the plan encodes the entity keys of every entity
//! set it needs and asks the store for the fields of every view at once (a key is never
//! stored under another entity set's field, so the cells that pair them read as absent).

use std::collections::BTreeMap;

use quiver_core::contract::snapshot_status;
use quiver_core::encoding::{decode_row, encode_key_value};
use quiver_core::model::{FeatureRef, JoinKey, ResolvedView};
use quiver_core::time::{Duration, Timestamp};
use quiver_core::{DType, FeatureStatus, Value};
use quiver_registry::RegistryState;

use crate::{entity_key_into, Error, FieldId, OnlineStore, Result, TileCells, TileRead};

/// Columns of values, all of one length: the entity rows of a request (one column per
/// join key) or its request context.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Columns {
    columns: Vec<(String, Vec<Value>)>,
    len: usize,
}

impl Columns {
    /// Columns from `(name, values)` pairs; errors when their lengths differ or a name
    /// repeats.
    pub fn new(columns: Vec<(String, Vec<Value>)>) -> Result<Self> {
        let len = columns.first().map_or(0, |c| c.1.len());
        for (i, (name, values)) in columns.iter().enumerate() {
            if values.len() != len {
                return Err(Error::Request(format!(
                    "column '{name}' has {} values but '{}' has {len}: every column needs one \
                     value per entity row",
                    values.len(),
                    columns[0].0
                )));
            }
            if columns[..i].iter().any(|(n, _)| n == name) {
                return Err(Error::Request(format!("column '{name}' is given twice")));
            }
        }
        Ok(Columns { columns, len })
    }

    /// The number of rows.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The values of column `name`.
    pub fn get(&self, name: &str) -> Option<&[Value]> {
        self.columns
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// The column names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.columns.iter().map(|(n, _)| n.as_str())
    }

    /// Row `i` as a map (for display).
    pub fn row(&self, i: usize) -> BTreeMap<String, Value> {
        self.columns
            .iter()
            .map(|(n, v)| (n.clone(), v[i].clone()))
            .collect()
    }
}

/// Feature vectors: `rows × n_features` cells, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Vectors {
    pub n_features: usize,
    pub values: Vec<Value>,
    pub statuses: Vec<FeatureStatus>,
    /// Each value's event time, when a row exists.
    pub event_timestamps: Vec<Option<Timestamp>>,
}

impl Vectors {
    /// The number of rows.
    pub fn rows(&self) -> usize {
        self.values.len().checked_div(self.n_features).unwrap_or(0)
    }
}

/// The entity keys of one entity set.
#[derive(Clone, Debug)]
struct KeyGroup {
    /// `project \0 entity_set \0`.
    prefix: Vec<u8>,
    /// Its join keys, indexes into [`ReadPlan::keys`].
    keys: Vec<usize>,
}

/// One view's part of a read.
#[derive(Clone, Debug)]
struct ViewRead {
    name: String,
    group: usize,
    field: FieldId,
    dtypes: Vec<DType>,
    features: Vec<String>,
    ttl: Duration,
    /// (output index, feature index in the view).
    wanted: Vec<(usize, usize)>,
    /// An aggregated view's tile groups (its features are then its aggregations'
    /// outputs, read from tiles); empty for a snapshot view.
    tiles: Vec<quiver_core::model::TileGroup>,
}

/// A compiled online read: the features of a request (a feature service or a list of
/// references), resolved once against the registry, ready to run for any entity rows.
#[derive(Clone, Debug)]
pub struct ReadPlan {
    names: Vec<String>,
    /// Each output's type; `None` for a feature the served version of its view
    /// predates (always MISSING).
    dtypes: Vec<Option<DType>>,
    refs: Vec<FeatureRef>,
    service: Option<(String, u32)>,
    keys: Vec<JoinKey>,
    groups: Vec<KeyGroup>,
    views: Vec<ViewRead>,
    fields: Vec<FieldId>,
    /// The view of each stored output, by index into `views`.
    output_view: Vec<usize>,
    /// Where each output comes from; empty when every output is stored (outputs are then
    /// the stored outputs, in order).
    sources: Vec<OutputSource>,
    /// The on-demand views computed, compiled once.
    odfvs: Vec<OdfvRead>,
    /// Names of the feature views and then the on-demand views, and each output's index
    /// into them (for metrics).
    view_names: Vec<String>,
    final_view: Vec<usize>,
}

/// Where an output of a plan comes from.
#[derive(Clone, Copy, Debug)]
enum OutputSource {
    /// Stored output `i` (of the store read).
    Stored(usize),
    /// Feature `j` of on-demand view `k`.
    OnDemand(usize, usize),
}

/// One on-demand view of a read: its evaluator and where its inputs come from.
#[derive(Clone)]
struct OdfvRead {
    compiled: std::sync::Arc<quiver_ondemand::CompiledOdfv>,
    name: String,
    /// Request fields: (name, type).
    request: Vec<(String, DType)>,
    /// Stored features it reads: (input column, stored output index, type).
    deps: Vec<(String, usize, DType)>,
}

impl std::fmt::Debug for OdfvRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OdfvRead")
            .field("name", &self.name)
            .finish()
    }
}

impl ReadPlan {
    /// Compiles a read of `features` (`view:feature` references) or of a feature service.
    pub fn compile(
        state: &RegistryState,
        features: &[String],
        service: Option<&str>,
        full_names: bool,
    ) -> Result<Self> {
        let refs = state.request_refs(features, service)?;
        let service = match service {
            Some(s) => Some((s.to_string(), state.service(s)?.version)),
            None => None,
        };
        if !refs.iter().any(|r| state.is_on_demand(&r.view)) {
            return Self::build(refs, service, full_names, |name| {
                Ok(state.serving_view(name)?)
            });
        }
        // Stored features: the requested ones, then the on-demand views' inputs.
        let names = output_names(&refs, full_names)?;
        let mut stored: Vec<FeatureRef> = refs
            .iter()
            .filter(|r| !state.is_on_demand(&r.view))
            .cloned()
            .collect();
        let mut odfvs: Vec<OdfvRead> = Vec::new();
        let mut sources = Vec::with_capacity(refs.len());
        // Stored outputs' types are filled in once their plan is built.
        let mut dtypes = Vec::with_capacity(refs.len());
        for r in &refs {
            if !state.is_on_demand(&r.view) {
                let i = stored.iter().position(|s| s == r).expect("listed above");
                sources.push(OutputSource::Stored(i));
                dtypes.push(None);
                continue;
            }
            let k = match odfvs.iter().position(|o| o.name == r.view) {
                Some(k) => k,
                None => {
                    let inputs = state.on_demand_inputs(&r.view)?;
                    let compiled = inputs.compile()?;
                    let mut deps = Vec::new();
                    for d in &inputs.dependencies {
                        let i = match stored.iter().position(|s| *s == d.feature) {
                            Some(i) => i,
                            None => {
                                stored.push(d.feature.clone());
                                stored.len() - 1
                            }
                        };
                        deps.push((d.column.clone(), i, d.dtype.clone()));
                    }
                    odfvs.push(OdfvRead {
                        compiled: std::sync::Arc::new(compiled),
                        name: r.view.clone(),
                        request: inputs
                            .request_fields
                            .iter()
                            .map(|f| (f.name.clone(), f.dtype.clone()))
                            .collect(),
                        deps,
                    });
                    odfvs.len() - 1
                }
            };
            let def = &state.on_demand_view(&r.view)?.def;
            let j = def
                .features
                .iter()
                .position(|f| f.name == r.feature)
                .ok_or_else(|| {
                    Error::Request(format!(
                        "on-demand feature view '{}' has no feature '{}'",
                        r.view, r.feature
                    ))
                })?;
            sources.push(OutputSource::OnDemand(k, j));
            dtypes.push(Some(def.features[j].dtype.clone()));
        }
        // Stored outputs get internal names; only `names` is shown.
        let mut plan = Self::build(stored, service, true, |name| Ok(state.serving_view(name)?))?;
        let mut view_names: Vec<String> = plan.views.iter().map(|v| v.name.clone()).collect();
        let final_view = sources
            .iter()
            .map(|s| match s {
                OutputSource::Stored(i) => plan.output_view[*i],
                OutputSource::OnDemand(k, _) => plan.views.len() + k,
            })
            .collect();
        for (t, s) in dtypes.iter_mut().zip(&sources) {
            if let OutputSource::Stored(i) = s {
                t.clone_from(&plan.dtypes[*i]);
            }
        }
        view_names.extend(odfvs.iter().map(|o| o.name.clone()));
        plan.names = names;
        plan.dtypes = dtypes;
        plan.refs = refs;
        plan.sources = sources;
        plan.odfvs = odfvs;
        plan.view_names = view_names;
        plan.final_view = final_view;
        Ok(plan)
    }

    /// Compiles a read of `features` of views given directly (no registry): every
    /// feature of each view, named as with `full_names`.
    pub fn for_views(views: &[ResolvedView], full_names: bool) -> Result<Self> {
        let refs = views
            .iter()
            .flat_map(|v| {
                v.features.iter().map(|f| FeatureRef {
                    view: v.name.clone(),
                    feature: f.name.clone(),
                })
            })
            .collect();
        Self::build(refs, None, full_names, |name| {
            views
                .iter()
                .find(|v| v.name == name)
                .cloned()
                .ok_or_else(|| Error::Request(format!("unknown feature view '{name}'")))
        })
    }

    fn build(
        refs: Vec<FeatureRef>,
        service: Option<(String, u32)>,
        full_names: bool,
        lookup: impl Fn(&str) -> Result<ResolvedView>,
    ) -> Result<Self> {
        let names = output_names(&refs, full_names)?;
        let mut keys: Vec<JoinKey> = Vec::new();
        let mut groups: Vec<KeyGroup> = Vec::new();
        let mut views: Vec<ViewRead> = Vec::new();
        let mut output_view = Vec::with_capacity(refs.len());
        let mut dtypes = Vec::with_capacity(refs.len());
        for (out, r) in refs.iter().enumerate() {
            let vi = match views.iter().position(|v| v.name == r.view) {
                Some(vi) => vi,
                None => {
                    let view = lookup(&r.view)?;
                    let mut prefix = Vec::new();
                    entity_key_into(&view.project, &view.entity_set(), &[], &mut prefix);
                    let group = match groups.iter().position(|g| g.prefix == prefix) {
                        Some(g) => g,
                        None => {
                            let mut idx = Vec::new();
                            for k in &view.join_keys {
                                let i = match keys.iter().position(|x| x.name == k.name) {
                                    Some(i) => {
                                        if keys[i].dtype.is_numeric() != k.dtype.is_numeric() {
                                            return Err(Error::Request(format!(
                                                "join key '{}' is {} in feature view '{}' but {} \
                                                 elsewhere in the request",
                                                k.name, k.dtype, view.name, keys[i].dtype
                                            )));
                                        }
                                        i
                                    }
                                    None => {
                                        keys.push(k.clone());
                                        keys.len() - 1
                                    }
                                };
                                idx.push(i);
                            }
                            groups.push(KeyGroup { prefix, keys: idx });
                            groups.len() - 1
                        }
                    };
                    let (dtypes, features, tiles) = if view.aggregations.is_empty() {
                        (
                            view.features.iter().map(|f| f.dtype.clone()).collect(),
                            view.features.iter().map(|f| f.name.clone()).collect(),
                            Vec::new(),
                        )
                    } else {
                        let tiles = view
                            .tile_groups()
                            .map_err(|e| Error::Request(e.to_string()))?;
                        let mut dtypes = vec![DType::Int64; view.aggregations.len()];
                        for g in &tiles {
                            for (o, &m) in g.outputs.iter().zip(&g.members) {
                                dtypes[m] = o.aggregation.output_dtype();
                            }
                        }
                        let names = view.aggregations.iter().map(|a| a.name.clone()).collect();
                        (dtypes, names, tiles)
                    };
                    views.push(ViewRead {
                        name: view.name.clone(),
                        group,
                        field: view.online_field(),
                        dtypes,
                        features,
                        ttl: view.ttl,
                        wanted: Vec::new(),
                        tiles,
                    });
                    views.len() - 1
                }
            };
            // The references were checked against the declared definitions; the
            // version served may predate a feature (its reads stay MISSING).
            let fi = views[vi].features.iter().position(|f| *f == r.feature);
            if let Some(fi) = fi {
                views[vi].wanted.push((out, fi));
            }
            dtypes.push(fi.map(|fi| views[vi].dtypes[fi].clone()));
            output_view.push(vi);
        }
        let fields = views.iter().map(|v| v.field).collect();
        let view_names = views.iter().map(|v| v.name.clone()).collect();
        let final_view = output_view.clone();
        Ok(ReadPlan {
            names,
            dtypes,
            refs,
            service,
            keys,
            groups,
            views,
            fields,
            output_view,
            sources: Vec::new(),
            odfvs: Vec::new(),
            view_names,
            final_view,
        })
    }

    /// Output names of the features, in request order.
    pub fn feature_names(&self) -> &[String] {
        &self.names
    }

    /// The features' types, in request order (`None`: a feature the served version of
    /// its view predates, always MISSING).
    pub fn feature_dtypes(&self) -> &[Option<DType>] {
        &self.dtypes
    }

    /// The features, in request order.
    pub fn feature_refs(&self) -> &[FeatureRef] {
        &self.refs
    }

    /// The feature service and its version, when the plan reads one.
    pub fn service(&self) -> Option<(&str, u32)> {
        self.service.as_ref().map(|(s, v)| (s.as_str(), *v))
    }

    /// The join keys an entity row must give, with their types.
    pub fn join_keys(&self) -> &[JoinKey] {
        &self.keys
    }

    /// The feature view (or on-demand view) of output `i`.
    pub fn output_view(&self, i: usize) -> &str {
        &self.view_names[self.final_view[i]]
    }

    /// The index of output `i`'s view in [`view_names`](Self::view_names).
    pub fn output_view_index(&self, i: usize) -> usize {
        self.final_view[i]
    }

    /// The feature views read, in first-use order, then the on-demand views computed.
    pub fn view_names(&self) -> impl Iterator<Item = &str> {
        self.view_names.iter().map(|v| v.as_str())
    }

    /// The request fields the plan's on-demand views need, with their types.
    pub fn request_fields(&self) -> Vec<(&str, &DType)> {
        let mut out: Vec<(&str, &DType)> = Vec::new();
        for o in &self.odfvs {
            for (n, t) in &o.request {
                if !out.iter().any(|(m, _)| *m == n) {
                    out.push((n, t));
                }
            }
        }
        out
    }

    /// Converts each entity column to its key's type; errors name the row and key.
    fn key_columns(&self, entities: &Columns) -> Result<Vec<Vec<Value>>> {
        let mut out = Vec::with_capacity(self.keys.len());
        for k in &self.keys {
            let col = entities.get(&k.name).ok_or_else(|| {
                Error::Request(format!(
                    "missing join key '{}' (the requested features need: {})",
                    k.name,
                    self.keys
                        .iter()
                        .map(|k| k.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
            let mut typed = Vec::with_capacity(col.len());
            for (i, v) in col.iter().enumerate() {
                typed.push(coerce_key(v, &k.dtype).ok_or_else(|| {
                    Error::Request(format!(
                        "entity row {}: join key '{}' must be {}, got {}",
                        i + 1,
                        k.name,
                        k.dtype,
                        describe(v)
                    ))
                })?);
            }
            out.push(typed);
        }
        for name in entities.names() {
            if !self.keys.iter().any(|k| k.name == name) {
                return Err(Error::Request(format!(
                    "'{name}' is not a join key of the requested features (keys: {})",
                    self.keys
                        .iter()
                        .map(|k| k.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        Ok(out)
    }

    /// Reads the features of every entity row at time `at`, in one store round trip
    /// (a plan with on-demand features needs [`execute_with`](Self::execute_with)).
    pub async fn execute(
        &self,
        online: &dyn OnlineStore,
        entities: &Columns,
        at: Timestamp,
    ) -> Result<Vectors> {
        self.execute_with(online, entities, &Columns::default(), at)
            .await
    }

    /// Like [`execute`](Self::execute), with the request context on-demand features
    /// read (one column per request field, a value per entity row; other columns are
    /// ignored). On-demand features are computed by the same evaluator as in
    /// historical retrieval, over the rows of this request; the status of one is
    /// `INVALID` when its expression could not be computed for the row (an integer
    /// overflow, a division by zero, a non-finite result; the value is null),
    /// `PRESENT` when it has a value, else the worst status of its stored inputs
    /// (`OUTSIDE_TTL` over `MISSING`).
    pub async fn execute_with(
        &self,
        online: &dyn OnlineStore,
        entities: &Columns,
        request_context: &Columns,
        at: Timestamp,
    ) -> Result<Vectors> {
        let stored = self.execute_stored(online, entities, at).await?;
        if self.sources.is_empty() {
            return Ok(stored);
        }
        let n = entities.len();
        let nout = self.names.len();
        let ns = stored.n_features;
        // Every on-demand view over the rows of the request.
        let mut computed: Vec<Vec<arrow::array::ArrayRef>> = Vec::with_capacity(self.odfvs.len());
        let mut dep_status: Vec<Vec<FeatureStatus>> = Vec::with_capacity(self.odfvs.len());
        let mut invalid: Vec<Vec<quiver_ondemand::InvalidRows>> =
            Vec::with_capacity(self.odfvs.len());
        for o in &self.odfvs {
            let mut fields = Vec::new();
            let mut cols = Vec::new();
            for (name, dtype) in &o.request {
                let values = request_context.get(name).ok_or_else(|| {
                    Error::Request(format!(
                        "on-demand feature view '{}' needs request field '{name}' ({dtype}) in \
                         the request context",
                        o.name
                    ))
                })?;
                if values.len() != n {
                    return Err(Error::Request(format!(
                        "request field '{name}' has {} values for {n} entity rows",
                        values.len()
                    )));
                }
                let a = quiver_core::value::values_to_array(values, dtype)
                    .map_err(|e| Error::Request(format!("request field '{name}': {e}")))?;
                fields.push(arrow::datatypes::Field::new(
                    name,
                    a.data_type().clone(),
                    true,
                ));
                cols.push(a);
            }
            let mut worst = vec![FeatureStatus::Present; n];
            for (column, i, dtype) in &o.deps {
                let values: Vec<Value> =
                    (0..n).map(|r| stored.values[r * ns + i].clone()).collect();
                for (r, w) in worst.iter_mut().enumerate() {
                    match (stored.statuses[r * ns + i], *w) {
                        (FeatureStatus::OutsideTtl, _) => *w = FeatureStatus::OutsideTtl,
                        (FeatureStatus::Missing, FeatureStatus::Present) => {
                            *w = FeatureStatus::Missing
                        }
                        _ => {}
                    }
                }
                let a = quiver_core::value::values_to_array(&values, dtype)?;
                fields.push(arrow::datatypes::Field::new(
                    column,
                    a.data_type().clone(),
                    true,
                ));
                cols.push(a);
            }
            let batch = arrow::array::RecordBatch::try_new_with_options(
                std::sync::Arc::new(arrow::datatypes::Schema::new(fields)),
                cols,
                &arrow::array::RecordBatchOptions::new().with_row_count(Some(n)),
            )?;
            let evaluated = o.compiled.evaluate_reporting(&batch)?;
            invalid.push(evaluated.invalid);
            computed.push(evaluated.columns);
            dep_status.push(worst);
        }
        let mut out = Vectors {
            n_features: nout,
            values: Vec::with_capacity(n * nout),
            statuses: Vec::with_capacity(n * nout),
            event_timestamps: Vec::with_capacity(n * nout),
        };
        let mut stored_values = stored.values;
        #[allow(clippy::needless_range_loop)] // `r` indexes stored cells and computed arrays
        for r in 0..n {
            for src in &self.sources {
                match *src {
                    OutputSource::Stored(i) => {
                        let c = r * ns + i;
                        out.values
                            .push(std::mem::replace(&mut stored_values[c], Value::Null));
                        out.statuses.push(stored.statuses[c]);
                        out.event_timestamps.push(stored.event_timestamps[c]);
                    }
                    OutputSource::OnDemand(k, j) => {
                        let v = quiver_core::value::value_at(computed[k][j].as_ref(), r)?;
                        out.statuses
                            .push(if invalid[k][j].rows.binary_search(&r).is_ok() {
                                FeatureStatus::Invalid
                            } else if v.is_null() {
                                match dep_status[k][r] {
                                    FeatureStatus::Present => FeatureStatus::Missing,
                                    s => s,
                                }
                            } else {
                                FeatureStatus::Present
                            });
                        out.values.push(v);
                        out.event_timestamps.push(None);
                    }
                }
            }
        }
        Ok(out)
    }

    /// The stored outputs of every entity row at time `at`, in one store round trip.
    async fn execute_stored(
        &self,
        online: &dyn OnlineStore,
        entities: &Columns,
        at: Timestamp,
    ) -> Result<Vectors> {
        let n = entities.len();
        let nout = self.output_view.len();
        let key_cols = self.key_columns(entities)?;
        // Every group's keys, group-major, in one buffer.
        let mut buf = Vec::new();
        let mut spans = Vec::with_capacity(self.groups.len() * n);
        let mut enc = Vec::new();
        for g in &self.groups {
            #[allow(clippy::needless_range_loop)] // `row` indexes several key columns
            for row in 0..n {
                enc.clear();
                for &k in &g.keys {
                    encode_key_value(&key_cols[k][row], &mut enc)?;
                }
                let start = buf.len();
                buf.extend_from_slice(&g.prefix);
                buf.extend_from_slice(&enc);
                spans.push((start, buf.len()));
            }
        }
        let keys: Vec<&[u8]> = spans.iter().map(|&(a, b)| &buf[a..b]).collect();
        // Aggregated views: the tiles of each tile group's windows at `at` — every hop
        // tile of the longest, or, for a group that keeps day tiles, the hop tiles of
        // the windows' partial days and the day tiles of their whole days — read in the
        // same round trip as the rows.
        let tile_starts: Vec<(Vec<Timestamp>, Vec<Timestamp>)> = self
            .views
            .iter()
            .flat_map(|v| v.tiles.iter())
            .map(|g| match g.day_field {
                Some(_) => quiver_core::agg::tile::layered_starts(at, &g.windows, g.hop),
                None => {
                    let longest = g.windows.iter().copied().max().unwrap_or(g.hop);
                    let starts = quiver_core::agg::tile::tile_starts(at, longest, g.hop);
                    (starts, Vec::new())
                }
            })
            .collect();
        let tile_reads: Vec<TileRead<'_>> = self
            .views
            .iter()
            .flat_map(|v| v.tiles.iter().map(move |g| (v.group, g)))
            .zip(&tile_starts)
            .flat_map(|((group, g), (hops, days))| {
                let keys = &keys[group * n..(group + 1) * n];
                std::iter::once(TileRead {
                    keys,
                    view: g.field,
                    starts: hops,
                })
                .chain(g.day_field.map(|view| TileRead {
                    keys,
                    view,
                    starts: days,
                }))
            })
            .collect();
        let (cells, mut tile_cells) = online
            .read_with_tiles(&keys, &self.fields, &tile_reads)
            .await?;
        let mut tile_cells = tile_cells.drain(..);
        let mut tile_starts = tile_starts.iter();
        let nf = self.fields.len();
        let mut out = Vectors {
            n_features: nout,
            values: vec![Value::Null; n * nout],
            statuses: vec![FeatureStatus::Missing; n * nout],
            event_timestamps: vec![None; n * nout],
        };
        let mut dtypes: Vec<&DType> = Vec::new();
        for (vi, view) in self.views.iter().enumerate() {
            dtypes.clear();
            dtypes.extend(view.dtypes.iter());
            for row in 0..n {
                let cell = &cells[(view.group * n + row) * nf + vi];
                let Some(bytes) = cell else { continue };
                let mut decoded = decode_row(bytes, &dtypes)?;
                let status = snapshot_status(Some(decoded.event_ts), at, view.ttl);
                for &(o, fi) in &view.wanted {
                    // A value not stored (a row written before the feature was appended
                    // to the view, or compacted after it expired) is MISSING unless the
                    // row's time says OUTSIDE_TTL.
                    if fi >= decoded.stored && status == FeatureStatus::Present {
                        continue;
                    }
                    let c = row * nout + o;
                    out.statuses[c] = status;
                    out.event_timestamps[c] = Some(decoded.event_ts);
                    if status == FeatureStatus::Present {
                        out.values[c] = std::mem::replace(&mut decoded.values[fi], Value::Null);
                    }
                }
            }
        }
        // Aggregated views: each tile group's tiles of the window, merged at `at` by
        // the engine (the same IRs and finalizers as training sets).
        for view in self.views.iter().filter(|v| !v.tiles.is_empty()) {
            for g in &view.tiles {
                let (hop_starts, day_starts) = tile_starts.next().expect("one per tile group");
                let stored = tile_cells.next().expect("one per tile group");
                let stored_days = g
                    .day_field
                    .map(|_| tile_cells.next().expect("one per group's day tiles"));
                for row in 0..n {
                    let tiles = of_row(hop_starts, &stored, row);
                    let days = match &stored_days {
                        Some(cells) => of_row(day_starts, cells, row),
                        None => Vec::new(),
                    };
                    let values = match &stored_days {
                        Some(_) => quiver_core::agg::tile::values_of_layered(
                            &g.layout, &g.outputs, g.hop, &tiles, &days, at,
                        ),
                        None => quiver_core::agg::tile::values_of_encoded(
                            &g.layout, &g.outputs, g.hop, &tiles, at,
                        ),
                    }
                    .map_err(|e| Error::store(format!("feature view '{}': {}", view.name, e.0)))?;
                    let head = quiver_core::agg::window::align(at, g.hop);
                    for (k, v) in values.into_iter().enumerate() {
                        let m = g.members[k];
                        // PRESENT when the window holds a tile of the key, else MISSING
                        // (with the empty window's value: count 0, sum null…).
                        let (lo, _) =
                            quiver_core::agg::window::window_range(at, g.windows[k], g.hop);
                        // (A day tile read at or after `lo` is a whole day of this window.)
                        let status = if tiles.iter().any(|(s, _)| *s >= lo && *s <= head)
                            || days.iter().any(|(s, _)| *s >= lo)
                        {
                            FeatureStatus::Present
                        } else {
                            FeatureStatus::Missing
                        };
                        for &(o, _) in view.wanted.iter().filter(|w| w.1 == m) {
                            let c = row * nout + o;
                            match &v {
                                Ok(value) => {
                                    out.values[c] = value.clone();
                                    out.statuses[c] = status;
                                }
                                Err(_) => out.statuses[c] = FeatureStatus::Invalid,
                            }
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Row `row`'s stored tiles among `starts` (cells key-major: a row's `starts.len()`
/// cells in a run).
fn of_row<'a>(
    starts: &[Timestamp],
    cells: &'a TileCells,
    row: usize,
) -> Vec<(Timestamp, &'a [u8])> {
    let first = row * starts.len();
    starts
        .iter()
        .enumerate()
        .filter_map(|(i, start)| Some((*start, cells.get(first + i)?)))
        .collect()
}

/// A short description of a value for error messages.
fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::String(s) => format!("the string {s:?}"),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Float32(x) => describe_float(f64::from(*x)),
        Value::Float64(x) => describe_float(*x),
        Value::List(_) => "a list".into(),
        other => format!("{other}"),
    }
}

/// A floating-point number as sent (`1001.0`, not `1001`), with a hint when it is a
/// whole number: JSON keeps `1001` and `1001.0` apart, and integer keys take the former.
fn describe_float(x: f64) -> String {
    if x.is_finite() && x.fract() == 0.0 && x.abs() < 9.0e15 {
        format!(
            "the floating-point number {x:?} (send integer keys without a decimal point: {})",
            x as i64
        )
    } else {
        format!("the floating-point number {x:?}")
    }
}

fn output_names(refs: &[FeatureRef], full: bool) -> Result<Vec<String>> {
    let names: Vec<String> = refs.iter().map(|r| r.output_name(full)).collect();
    for (i, n) in names.iter().enumerate() {
        if names[..i].contains(n) {
            return Err(Error::Request(format!(
                "feature name '{n}' is ambiguous across views: use full feature names"
            )));
        }
    }
    Ok(names)
}

/// A key value converted to the key's registered type, if it fits.
pub fn coerce_key(v: &Value, t: &DType) -> Option<Value> {
    match (v, t) {
        (Value::Int64(_), DType::Int64 | DType::Int32) => Some(v.clone()),
        (Value::Int32(i), DType::Int64 | DType::Int32) => Some(Value::Int64(*i as i64)),
        (Value::String(_), DType::String) => Some(v.clone()),
        (Value::Bytes(_), DType::Bytes) => Some(v.clone()),
        (Value::String(s), DType::Bytes) => Some(Value::Bytes(s.as_bytes().to_vec())),
        _ => None,
    }
}
