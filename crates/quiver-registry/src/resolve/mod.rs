//! Validation of definitions against each other and against their sources, and the
//! registry state they resolve to.
//!
//! [`resolve`] checks the names of every kind, then each kind in its own module, in the
//! order their references need: `entities`, `sources`, `feature_views` (which type the
//! entities' join keys from the sources), `request_sources`, `on_demand` and
//! `feature_services`. Every problem is collected; only a clean set of definitions
//! becomes a state.

use std::collections::{BTreeMap, HashMap};

use arrow::datatypes::SchemaRef;
use quiver_core::dtype::DType;
use quiver_core::model::Source;
use quiver_core::time::Timestamp;

use crate::repo::{Definitions, Located};
use crate::state::RegistryState;
use crate::{DefinitionError, Error, Result};

mod entities;
mod feature_services;
mod feature_views;
mod on_demand;
mod request_sources;
mod sources;

/// Reads the schema of a source's data (the offline plane implements it).
pub trait SourceSchemas {
    /// The Arrow schema of the source's rows, or why it cannot be read. `typed` is false
    /// for formats without column types (CSV), whose feature columns are then parsed as
    /// declared at ingest instead of checked here.
    fn schema(&self, source: &Source) -> std::result::Result<SourceSchema, String>;
}

/// A source's schema as read from its data.
#[derive(Clone, Debug)]
pub struct SourceSchema {
    pub schema: SchemaRef,
    /// Whether the column types are the data's own (Parquet) or inferred (CSV).
    pub typed: bool,
}

/// Whether `s` is a valid object name: a letter or `_`, then letters, digits, `_`.
pub fn is_identifier(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

struct Errors(Vec<DefinitionError>);

impl Errors {
    fn at<T>(&mut self, loc: &Located<T>, object: String, field: &str, message: String) {
        self.0.push(DefinitionError {
            file: loc.file.clone(),
            line: loc.line,
            column: loc.column,
            object,
            field: field.to_string(),
            message,
        });
    }
}

/// Each kind's names, each mapped to the index of its first definition.
struct Names {
    entities: BTreeMap<String, usize>,
    sources: BTreeMap<String, usize>,
    request_sources: BTreeMap<String, usize>,
    feature_views: BTreeMap<String, usize>,
    on_demand: BTreeMap<String, usize>,
}

impl Names {
    /// Checks that every name is an identifier, unique within its kind.
    fn check(errs: &mut Errors, defs: &Definitions) -> Self {
        let entities = check_names(errs, "entity", &defs.entities, |e| &e.name);
        let sources = check_names(errs, "source", &defs.sources, |s| s.name());
        let request_sources =
            check_names(errs, "request source", &defs.request_sources, |s| &s.name);
        let feature_views = check_names(errs, "feature view", &defs.feature_views, |v| &v.name);
        let on_demand = check_names(
            errs,
            "on-demand feature view",
            &defs.on_demand_feature_views,
            |v| &v.name,
        );
        // Nothing refers to a feature service: its names are only checked.
        check_names(errs, "feature service", &defs.feature_services, |s| &s.name);
        Names {
            entities,
            sources,
            request_sources,
            feature_views,
            on_demand,
        }
    }
}

/// Join key types by (entity, key), each with where it comes from (`entity 'x'` when
/// declared, else the first `source 'y'` a feature view read it from).
type KeyTypes = HashMap<(String, String), (DType, String)>;

fn check_names<T>(
    errs: &mut Errors,
    kind: &str,
    items: &[Located<T>],
    name: impl Fn(&T) -> &str,
) -> BTreeMap<String, usize> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        let n = name(&item.value);
        if !is_identifier(n) {
            errs.at(
                item,
                format!("{kind} '{n}'"),
                "name",
                "must be an identifier: a letter or _, then letters, digits or _".into(),
            );
        }
        if let Some(&first) = seen.get(n) {
            let f = &items[first];
            errs.at(
                item,
                format!("{kind} '{n}'"),
                "name",
                format!(
                    "duplicate name: also defined in {}{}",
                    f.file,
                    f.line.map(|l| format!(":{l}")).unwrap_or_default()
                ),
            );
        } else {
            seen.insert(n.to_string(), i);
        }
    }
    seen
}

/// Validates `defs` and resolves them into the next registry state. `previous` carries
/// versions and materialization progress forward. Every problem is reported at once.
pub fn resolve(
    project: &str,
    defs: &Definitions,
    schemas: &dyn SourceSchemas,
    previous: Option<&RegistryState>,
    now: Timestamp,
) -> Result<RegistryState> {
    let mut errs = Errors(Vec::new());
    let names = Names::check(&mut errs, defs);
    entities::check(defs, &mut errs);
    let checked_sources = sources::check(defs, schemas, &mut errs);
    // Aggregated views' outputs become their features for every check that follows.
    let (expanded, aggregated) = feature_views::expand(defs, &checked_sources, &mut errs);
    let defs = &expanded;
    let mut key_types = entities::declared_key_types(defs);
    let view_keys = feature_views::check(defs, &names, &checked_sources, &mut key_types, &mut errs);
    request_sources::check(defs, &names, &mut errs);
    let odfv_inputs = on_demand::check(defs, &names, &mut errs);
    let service_refs = feature_services::check(defs, &names, &mut errs);
    let entities = entities::records(defs, &key_types, &mut errs);
    if !errs.0.is_empty() {
        return Err(Error::Definitions(errs.0));
    }

    let mut state = RegistryState {
        project: project.to_string(),
        serial: 0,
        applied_at: now,
        entities,
        sources: sources::records(defs),
        feature_views: BTreeMap::new(),
        feature_services: BTreeMap::new(),
        request_sources: request_sources::records(defs),
        on_demand_feature_views: BTreeMap::new(),
    };
    feature_views::records(defs, view_keys, aggregated, previous, &mut state);
    on_demand::records(defs, odfv_inputs, previous, &mut state);
    feature_services::records(defs, service_refs, previous, &mut state);
    state.serial = match previous {
        Some(p) if same_objects(p, &state) => p.serial,
        Some(p) => p.serial + 1,
        None => 1,
    };
    if let Some(p) = previous.filter(|p| same_objects(p, &state)) {
        state.applied_at = p.applied_at;
    }
    Ok(state)
}

fn normalize_key(t: &DType) -> DType {
    match t {
        DType::Int32 => DType::Int64,
        other => other.clone(),
    }
}

fn column_list(schema: &SchemaRef) -> String {
    schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether two states register the same objects (ignoring serial and times).
pub fn same_objects(a: &RegistryState, b: &RegistryState) -> bool {
    a.project == b.project
        && a.entities == b.entities
        && a.sources == b.sources
        && a.feature_views == b.feature_views
        && a.feature_services == b.feature_services
        && a.request_sources == b.request_sources
        && a.on_demand_feature_views == b.on_demand_feature_views
}
