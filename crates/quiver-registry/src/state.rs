//! The registry's stored form and its atomic storage.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use arrow::datatypes::{Field, Schema, SchemaRef};
use quiver_core::dtype::DType;
use quiver_core::model::{
    Entity, Feature, FeatureRef, FeatureService, FeatureView, JoinKey, OnDemandFeatureView,
    RequestSource, ResolvedAggregation, ResolvedView, Source,
};
use quiver_core::time::Timestamp;
use serde::{Deserialize, Serialize};

pub use quiver_core::names::suggest;

use crate::{Error, Result};

/// A registered entity with its resolved key types.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EntityRecord {
    pub def: Entity,
    pub join_keys: Vec<JoinKey>,
    pub file: String,
}

/// A registered source.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SourceRecord {
    pub def: Source,
    pub file: String,
}

/// A registered request source.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestSourceRecord {
    pub def: RequestSource,
    pub file: String,
}

/// A registered on-demand feature view.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OnDemandViewRecord {
    pub def: OnDemandFeatureView,
    /// Bumped whenever its sources or its features (names, dtypes, expressions) change.
    pub version: u32,
    /// The request fields its expressions read, in input order.
    #[serde(default)]
    pub request_fields: Vec<String>,
    /// The source-view features its expressions read, in input order: what must be
    /// fetched to compute it.
    #[serde(default)]
    pub dependencies: Vec<FeatureRef>,
    pub file: String,
}

/// What an on-demand feature view reads, for a data path that computes it: fetch the
/// [`dependencies`](Self::dependencies), take the
/// [`request_fields`](Self::request_fields) from the request (online) or the entity rows
/// (offline), put them in a batch under their input column names, and evaluate.
#[derive(Clone, Debug, PartialEq)]
pub struct OnDemandInputs {
    pub def: OnDemandFeatureView,
    /// The schema to compile against: every field of its request sources (by name),
    /// then every feature of its source views (as `view__feature`), typed by
    /// [`DType::to_arrow`].
    pub schema: SchemaRef,
    /// The request fields the expressions read, in input order.
    pub request_fields: Vec<RequestInput>,
    /// The source-view features the expressions read, in input order.
    pub dependencies: Vec<FeatureInput>,
}

/// A request field an on-demand view reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestInput {
    /// The request source declaring it.
    pub source: String,
    /// The field's name: its input column, its key in a request's context online and
    /// its column in the entity rows offline.
    pub name: String,
    pub dtype: DType,
}

/// A feature of a feature view that an on-demand view reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeatureInput {
    pub feature: FeatureRef,
    /// Its input column name: `view__feature`.
    pub column: String,
    pub dtype: DType,
}

impl OnDemandInputs {
    /// Compiles the view against [`schema`](Self::schema).
    pub fn compile(&self) -> Result<quiver_ondemand::CompiledOdfv, quiver_ondemand::Error> {
        quiver_ondemand::CompiledOdfv::compile(&self.def, &self.schema)
    }
}

/// One input column of an on-demand view: its name, type and origin (`Ok(request
/// source)` or `Err(feature of a view)`).
pub(crate) type InputColumn = (String, DType, std::result::Result<String, FeatureRef>);

/// The schema an on-demand view is compiled against, from the fields of its request
/// sources and the features of its source views (looked up by name), with each
/// column's origin. `None` when a source is not found.
pub(crate) fn odfv_schema<'a>(
    def: &OnDemandFeatureView,
    request_source: impl Fn(&str) -> Option<&'a RequestSource>,
    view: impl Fn(&str) -> Option<&'a FeatureView>,
) -> Option<(SchemaRef, Vec<InputColumn>)> {
    let mut cols: Vec<InputColumn> = Vec::new();
    for r in def.request_sources() {
        for f in &request_source(r)?.schema {
            cols.push((f.name.clone(), f.dtype.clone(), Ok(r.to_string())));
        }
    }
    for v in def.source_views() {
        for f in &view(v)?.features {
            cols.push((
                quiver_ondemand::input_column(v, &f.name),
                f.dtype.clone(),
                Err(FeatureRef {
                    view: v.to_string(),
                    feature: f.name.clone(),
                }),
            ));
        }
    }
    let schema = Schema::new(
        cols.iter()
            .map(|(n, t, _)| Field::new(n, t.to_arrow(), true))
            .collect::<Vec<_>>(),
    );
    Some((Arc::new(schema), cols))
}

/// How far a view has been materialized to the online store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaterializationState {
    /// Rows with event time in `[start, end)` have been written, per the last run.
    pub start: Timestamp,
    /// The high-water mark: the next incremental run starts here.
    pub end: Timestamp,
    /// When the last run finished.
    pub at: Timestamp,
    /// Rows written online by the last run.
    pub rows_written: u64,
    /// The offline table version the last run read: the next incremental run also
    /// reads every file committed after it (corrections and late rows, whatever their
    /// event time).
    #[serde(default)]
    pub table_version: Option<u64>,
    /// For an aggregated view: the layout of the online tiles the last run wrote (a
    /// hash of their fields). A run that finds another — tiles of an earlier build,
    /// which reads ignore — recomputes the view's whole retention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tile_layout: Option<u64>,
}

/// A registered feature view.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ViewRecord {
    pub def: FeatureView,
    /// The stored data's version; bumped when keys, source columns or features change.
    pub version: u32,
    pub join_keys: Vec<JoinKey>,
    pub file: String,
    #[serde(default)]
    pub materialized: Option<MaterializationState>,
    /// The newest event time ingested offline, if any.
    #[serde(default)]
    pub ingested_until: Option<Timestamp>,
    /// Whether rows were written online to this version other than by materialization
    /// (a push): it has online data to serve.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pushed_online: bool,
    /// Earlier versions that still train or serve while this one has no data of its
    /// own, newest first (see [`RegistryState::training_view`],
    /// [`RegistryState::serving_view`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier: Vec<EarlierVersion>,
    /// An aggregated view's stored columns (the source columns its aggregations read,
    /// typed from the source); empty for a snapshot view, whose features are stored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<Feature>,
    /// An aggregated view's outputs, resolved (window, hop); `def.features` lists the
    /// same outputs with their types.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aggregations: Vec<ResolvedAggregation>,
}

/// An earlier data version of a feature view, kept while the declared version has no
/// data: until the new version is ingested the earlier one trains, and until it is
/// materialized (or pushed to) the earlier one serves. No apply makes values disappear.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EarlierVersion {
    pub version: u32,
    pub entities: Vec<String>,
    pub join_keys: Vec<JoinKey>,
    pub features: Vec<Feature>,
    #[serde(default)]
    pub materialized: Option<MaterializationState>,
    #[serde(default)]
    pub ingested_until: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pushed_online: bool,
    /// An aggregated version's outputs (`features` are then its stored columns).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aggregations: Vec<ResolvedAggregation>,
}

impl EarlierVersion {
    /// Whether this version has offline data (it can train).
    pub fn has_offline_data(&self) -> bool {
        self.ingested_until.is_some()
    }

    /// Whether this version has online data (it can serve).
    pub fn has_online_data(&self) -> bool {
        self.materialized.is_some() || self.pushed_online
    }
}

impl ViewRecord {
    /// The columns the offline table stores besides keys and times: an aggregated
    /// view's aggregated columns, else its features.
    pub fn stored_columns(&self) -> &[Feature] {
        if self.aggregations.is_empty() {
            &self.def.features
        } else {
            &self.columns
        }
    }

    /// Whether this is an aggregated view.
    pub fn is_aggregated(&self) -> bool {
        !self.aggregations.is_empty()
    }

    /// Whether the declared version has offline data.
    pub fn has_offline_data(&self) -> bool {
        self.ingested_until.is_some()
    }

    /// Whether the declared version has online data.
    pub fn has_online_data(&self) -> bool {
        self.materialized.is_some() || self.pushed_online
    }

    /// This version as an earlier one, for the record of the next version.
    pub fn as_earlier(&self) -> EarlierVersion {
        EarlierVersion {
            version: self.version,
            entities: self.def.entities.clone(),
            join_keys: self.join_keys.clone(),
            features: self.stored_columns().to_vec(),
            aggregations: self.aggregations.clone(),
            materialized: self.materialized.clone(),
            ingested_until: self.ingested_until,
            pushed_online: self.pushed_online,
        }
    }

    /// Drops the earlier versions nothing reads any more: one is kept only while it is
    /// the newest with offline data and the declared version has none, or the newest
    /// with online data and the declared version has none.
    pub fn prune_earlier(&mut self) {
        let mut need_offline = !self.has_offline_data();
        let mut need_online = !self.has_online_data();
        self.earlier.retain(|e| {
            let offline = need_offline && e.has_offline_data();
            let online = need_online && e.has_online_data();
            need_offline &= !offline;
            need_online &= !online;
            offline || online
        });
    }

    /// The command that fills the declared version with data.
    pub fn fill_command(&self) -> String {
        let name = &self.def.name;
        if self.def.online {
            format!("quiver ingest {name} && quiver materialize-incremental --views {name}")
        } else {
            format!("quiver ingest {name}")
        }
    }
}

/// Where a version's data is read from.
#[derive(Clone, Copy)]
enum Plane {
    Offline,
    Online,
}

/// A registered feature service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceRecord {
    pub def: FeatureService,
    /// Bumped whenever its list of features changes.
    pub version: u32,
    /// The features, with `view:*` expanded, in order.
    pub features: Vec<FeatureRef>,
    pub file: String,
}

/// Everything registered for a project.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RegistryState {
    pub project: String,
    /// Bumped by every apply that changes something.
    pub serial: u64,
    pub applied_at: Timestamp,
    pub entities: BTreeMap<String, EntityRecord>,
    pub sources: BTreeMap<String, SourceRecord>,
    pub feature_views: BTreeMap<String, ViewRecord>,
    pub feature_services: BTreeMap<String, ServiceRecord>,
    #[serde(default)]
    pub request_sources: BTreeMap<String, RequestSourceRecord>,
    #[serde(default)]
    pub on_demand_feature_views: BTreeMap<String, OnDemandViewRecord>,
}

impl RegistryState {
    /// The view named `name`.
    pub fn view(&self, name: &str) -> Result<&ViewRecord> {
        self.feature_views.get(name).ok_or_else(|| {
            Error::NotFound(format!(
                "unknown feature view '{name}'{}",
                suggest(name, self.feature_views.keys())
            ))
        })
    }

    /// The on-demand feature view named `name`.
    pub fn on_demand_view(&self, name: &str) -> Result<&OnDemandViewRecord> {
        self.on_demand_feature_views.get(name).ok_or_else(|| {
            Error::NotFound(format!(
                "unknown on-demand feature view '{name}'{}",
                suggest(name, self.on_demand_feature_views.keys())
            ))
        })
    }

    /// Whether `name` is an on-demand feature view: its features are computed by
    /// expressions, not read from a store.
    pub fn is_on_demand(&self, name: &str) -> bool {
        self.on_demand_feature_views.contains_key(name)
    }

    /// The request source named `name`.
    pub fn request_source(&self, name: &str) -> Result<&RequestSourceRecord> {
        self.request_sources.get(name).ok_or_else(|| {
            Error::NotFound(format!(
                "unknown request source '{name}'{}",
                suggest(name, self.request_sources.keys())
            ))
        })
    }

    /// What the on-demand feature view `name` reads, and the schema to compile it
    /// against (see [`OnDemandInputs`]).
    pub fn on_demand_inputs(&self, name: &str) -> Result<OnDemandInputs> {
        let rec = self.on_demand_view(name)?;
        let (schema, cols) = odfv_schema(
            &rec.def,
            |r| self.request_sources.get(r).map(|x| &x.def),
            |v| self.feature_views.get(v).map(|x| &x.def),
        )
        .ok_or_else(|| {
            Error::NotFound(format!(
                "on-demand feature view '{name}' reads a source that is not registered"
            ))
        })?;
        let mut request_fields = Vec::new();
        let mut dependencies = Vec::new();
        for (column, dtype, origin) in cols {
            match origin {
                Ok(source) if rec.request_fields.contains(&column) => {
                    request_fields.push(RequestInput {
                        source,
                        name: column,
                        dtype,
                    })
                }
                Err(feature) if rec.dependencies.contains(&feature) => {
                    dependencies.push(FeatureInput {
                        feature,
                        column,
                        dtype,
                    })
                }
                _ => {}
            }
        }
        Ok(OnDemandInputs {
            def: rec.def.clone(),
            schema,
            request_fields,
            dependencies,
        })
    }

    /// The service named `name`.
    pub fn service(&self, name: &str) -> Result<&ServiceRecord> {
        self.feature_services.get(name).ok_or_else(|| {
            Error::NotFound(format!(
                "unknown feature service '{name}'{}",
                suggest(name, self.feature_services.keys())
            ))
        })
    }

    /// The source named `name`.
    pub fn source(&self, name: &str) -> Result<&SourceRecord> {
        self.sources
            .get(name)
            .ok_or_else(|| Error::NotFound(format!("unknown source '{name}'")))
    }

    /// The file source whose files hold source `name`'s rows: the source itself, or a
    /// stream's batch source.
    pub fn file_source(&self, name: &str) -> Result<&quiver_core::model::FileSource> {
        let record = self.source(name)?;
        let file = match record.def.batch_source() {
            None => &record.def,
            Some(batch) => &self.source(batch)?.def,
        };
        match file {
            quiver_core::model::Source::File(f) => Ok(f),
            other => Err(Error::Invalid(format!(
                "source '{}' is not a file source",
                other.name()
            ))),
        }
    }

    /// The version of view `name` training sets read: the declared one once it has
    /// offline data, else the newest earlier version that has, else an error naming the
    /// command that fills it.
    pub fn training_view(&self, name: &str) -> Result<ResolvedView> {
        self.version_with_data(name, Plane::Offline)?
            .ok_or_else(|| {
                Error::NoData(format!(
                    "feature view '{name}' has no offline data (version {}): run `quiver \
                     ingest {name}`",
                    self.feature_views[name].version
                ))
            })
    }

    /// The version of view `name` online reads use: the declared one once it has
    /// online data, else the newest earlier version that has; the declared one when
    /// none has (its reads are MISSING).
    pub fn serving_view(&self, name: &str) -> Result<ResolvedView> {
        match self.version_with_data(name, Plane::Online)? {
            Some(v) => Ok(v),
            None => self.resolved_view(name),
        }
    }

    /// The newest version of view `name` (declared, then earlier ones) with data in
    /// `plane`.
    fn version_with_data(&self, name: &str, plane: Plane) -> Result<Option<ResolvedView>> {
        let v = self.view(name)?;
        let has = |offline: bool, online: bool| match plane {
            Plane::Offline => offline,
            Plane::Online => online,
        };
        if has(v.has_offline_data(), v.has_online_data()) {
            return self.resolved_view(name).map(Some);
        }
        Ok(v.earlier
            .iter()
            .find(|e| has(e.has_offline_data(), e.has_online_data()))
            .map(|e| self.earlier_view(v, e)))
    }

    fn earlier_view(&self, v: &ViewRecord, e: &EarlierVersion) -> ResolvedView {
        ResolvedView {
            name: v.def.name.clone(),
            version: e.version,
            project: self.project.clone(),
            entities: e.entities.clone(),
            join_keys: e.join_keys.clone(),
            features: e.features.clone(),
            ttl: v.def.ttl,
            aggregations: e.aggregations.clone(),
            retention: v.def.retention,
        }
    }

    /// Drops every view's earlier versions that nothing reads any more.
    pub fn prune_versions(&mut self) {
        for v in self.feature_views.values_mut() {
            v.prune_earlier();
        }
    }

    /// The declared version of a view, with everything the data paths need: what
    /// ingest, materialization and push write.
    pub fn resolved_view(&self, name: &str) -> Result<ResolvedView> {
        let v = self.view(name)?;
        Ok(ResolvedView {
            name: v.def.name.clone(),
            version: v.version,
            project: self.project.clone(),
            entities: v.def.entities.clone(),
            join_keys: v.join_keys.clone(),
            features: v.stored_columns().to_vec(),
            ttl: v.def.ttl,
            aggregations: v.aggregations.clone(),
            retention: v.def.retention,
        })
    }

    /// The feature references of a request: explicit ones (`view:feature`, `view:*`) or a
    /// feature service's, not both, each at most once.
    pub fn request_refs(
        &self,
        features: &[String],
        service: Option<&str>,
    ) -> Result<Vec<FeatureRef>> {
        let refs = match (service, features.is_empty()) {
            (Some(_), false) => {
                return Err(Error::Invalid(
                    "give either features or a feature service, not both".into(),
                ))
            }
            (Some(s), true) => self.service(s)?.features.clone(),
            (None, false) => self.expand_refs(features)?,
            (None, true) => {
                return Err(Error::Invalid(
                    "no features requested: give features (view:feature) or a feature service"
                        .into(),
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

    /// Checks feature references against the registry: each `view:feature` must be a
    /// feature of a feature view or of an on-demand feature view; `view:*` expands to
    /// all of the view's features.
    pub fn expand_refs(&self, refs: &[String]) -> Result<Vec<FeatureRef>> {
        let mut out = Vec::new();
        for r in refs {
            let r = FeatureRef::parse(r).map_err(|e| Error::NotFound(e.to_string()))?;
            let (kind, names): (&str, Vec<&String>) =
                if let Some(v) = self.feature_views.get(&r.view) {
                    (
                        "feature view",
                        v.def.features.iter().map(|f| &f.name).collect(),
                    )
                } else if let Some(v) = self.on_demand_feature_views.get(&r.view) {
                    (
                        "on-demand feature view",
                        v.def.features.iter().map(|f| &f.name).collect(),
                    )
                } else {
                    return Err(Error::NotFound(format!(
                        "unknown feature view '{}'{}",
                        r.view,
                        suggest(
                            &r.view,
                            self.feature_views
                                .keys()
                                .chain(self.on_demand_feature_views.keys())
                        )
                    )));
                };
            if r.feature == "*" {
                out.extend(names.iter().map(|f| FeatureRef {
                    view: r.view.clone(),
                    feature: f.to_string(),
                }));
            } else if !names.contains(&&r.feature) {
                return Err(Error::NotFound(format!(
                    "{kind} '{}' has no feature '{}'{}",
                    r.view,
                    r.feature,
                    suggest(&r.feature, names.into_iter())
                )));
            } else {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// The feature services that use `view:feature` (of a feature view or an on-demand
    /// feature view).
    pub fn services_using(&self, view: &str, feature: &str) -> Vec<&str> {
        self.feature_services
            .values()
            .filter(|s| {
                s.features
                    .iter()
                    .any(|r| r.view == view && r.feature == feature)
            })
            .map(|s| s.def.name.as_str())
            .collect()
    }
}

/// The embedded registry: one JSON document in a directory, replaced atomically (written
/// to a temporary file, synced, renamed over the old one, directory synced), with an
/// exclusive lock held for read-modify-write cycles.
#[derive(Clone, Debug)]
pub struct Registry {
    dir: PathBuf,
}

/// A held registry lock; released on drop.
pub struct RegistryLock {
    _file: std::fs::File,
}

impl Registry {
    const FILE: &'static str = "registry.json";

    /// The registry in directory `dir` (created on first save).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Registry { dir: dir.into() }
    }

    fn storage_err(&self, e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
        Error::Storage {
            path: self.dir.join(Self::FILE).display().to_string(),
            source: e.into(),
        }
    }

    /// Takes the exclusive lock that serialises writers (apply, materialize).
    pub fn lock(&self) -> Result<RegistryLock> {
        std::fs::create_dir_all(&self.dir).map_err(|e| self.storage_err(e))?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join("registry.lock"))
            .map_err(|e| self.storage_err(e))?;
        file.lock().map_err(|e| self.storage_err(e))?;
        Ok(RegistryLock { _file: file })
    }

    /// The stored state, or `None` before the first apply.
    pub fn load(&self) -> Result<Option<RegistryState>> {
        let path = self.dir.join(Self::FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| self.storage_err(format!("corrupt registry: {e}"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.storage_err(e)),
        }
    }

    /// The stored state; an error telling the user to apply when there is none.
    pub fn load_required(&self) -> Result<RegistryState> {
        self.load()?.ok_or_else(|| {
            Error::NotFound("the registry is empty: run `quiver apply` first".to_string())
        })
    }

    /// Replaces the stored state atomically: a crash at any point leaves either the old
    /// or the new state, never a mix.
    pub fn save(&self, state: &RegistryState) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(|e| self.storage_err(e))?;
        let bytes = serde_json::to_vec_pretty(state).map_err(|e| self.storage_err(e))?;
        let tmp = self
            .dir
            .join(format!(".{}.tmp-{}", Self::FILE, std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, self.dir.join(Self::FILE))?;
            std::fs::File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            self.storage_err(e)
        })
    }

    /// Where the registry lives.
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_round_trip_and_suggestions() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::new(dir.path().join("reg"));
        assert!(reg.load().unwrap().is_none());
        let state = RegistryState {
            project: "p".into(),
            serial: 3,
            ..Default::default()
        };
        let _lock = reg.lock().unwrap();
        reg.save(&state).unwrap();
        assert_eq!(reg.load().unwrap(), Some(state));
        let names = ["driver_stats".to_string(), "customer".to_string()];
        assert_eq!(
            suggest("driver_stat", names.iter()),
            " (did you mean 'driver_stats'?)"
        );
        assert_eq!(suggest("zzz", names.iter()), "");
    }

    #[test]
    fn a_registry_written_before_on_demand_views_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let state = RegistryState {
            project: "p".into(),
            serial: 2,
            ..Default::default()
        };
        let mut json = serde_json::to_value(&state).unwrap();
        let obj = json.as_object_mut().unwrap();
        assert!(obj.remove("request_sources").is_some());
        assert!(obj.remove("on_demand_feature_views").is_some());
        std::fs::write(
            dir.path().join("registry.json"),
            serde_json::to_vec(&json).unwrap(),
        )
        .unwrap();
        let loaded = Registry::new(dir.path()).load().unwrap().unwrap();
        assert_eq!(loaded, state);
        assert!(loaded.on_demand_feature_views.is_empty());
        assert!(!loaded.is_on_demand("anything"));
    }

    #[test]
    fn corrupt_registry_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("registry.json"), b"{not json").unwrap();
        let e = Registry::new(dir.path()).load().unwrap_err();
        assert!(e.to_string().contains("corrupt registry"), "{e}");
    }
}
