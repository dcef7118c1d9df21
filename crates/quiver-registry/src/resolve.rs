//! Validation of definitions against each other and against their sources, and the
//! registry state they resolve to.

use std::collections::{BTreeMap, HashMap};

use arrow::datatypes::{DataType, SchemaRef};
use quiver_core::dtype::DType;
use quiver_core::model::{FeatureRef, JoinKey, OnDemandSource, Source};
use quiver_core::time::Timestamp;

use crate::repo::{Definitions, Located};
use crate::state::{
    odfv_schema, suggest, EntityRecord, OnDemandViewRecord, RegistryState, RequestSourceRecord,
    ServiceRecord, SourceRecord, ViewRecord,
};
use crate::{DefinitionError, Error, Result};

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
            object,
            field: field.to_string(),
            message,
        });
    }
}

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

fn is_time_type(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Timestamp(_, _)
            | DataType::Date32
            | DataType::Date64
            | DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
            | DataType::Null
    )
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
    let ent_idx = check_names(&mut errs, "entity", &defs.entities, |e| &e.name);
    let src_idx = check_names(&mut errs, "source", &defs.sources, |s| s.name());
    let req_idx = check_names(&mut errs, "request source", &defs.request_sources, |s| {
        &s.name
    });
    let view_idx = check_names(&mut errs, "feature view", &defs.feature_views, |v| &v.name);
    let odfv_idx = check_names(
        &mut errs,
        "on-demand feature view",
        &defs.on_demand_feature_views,
        |v| &v.name,
    );
    let svc_idx = check_names(&mut errs, "feature service", &defs.feature_services, |s| {
        &s.name
    });

    // Entities: keys present, unique, of a key type when declared.
    for e in &defs.entities {
        let obj = format!("entity '{}'", e.value.name);
        if e.value.join_keys.is_empty() {
            errs.at(
                e,
                obj.clone(),
                "join_keys",
                "needs at least one join key".into(),
            );
        }
        let mut seen = Vec::new();
        for (i, k) in e.value.join_keys.iter().enumerate() {
            if !is_identifier(k.name()) {
                errs.at(
                    e,
                    obj.clone(),
                    &format!("join_keys[{i}]"),
                    "must be an identifier".into(),
                );
            }
            if seen.contains(&k.name()) {
                errs.at(
                    e,
                    obj.clone(),
                    &format!("join_keys[{i}]"),
                    format!("duplicate join key '{}'", k.name()),
                );
            }
            seen.push(k.name());
            if let Some(t) = k.dtype() {
                if !t.is_key_type() {
                    errs.at(
                        e,
                        obj.clone(),
                        &format!("join_keys[{i}].dtype"),
                        format!("{t} cannot be a join key: use int32, int64, string or bytes"),
                    );
                }
            }
        }
    }

    // Sources: a readable schema with usable time columns.
    let mut source_schemas: HashMap<&str, SchemaRef> = HashMap::new();
    let mut untyped: Vec<&str> = Vec::new();
    for s in &defs.sources {
        let obj = format!("source '{}'", s.value.name());
        match schemas.schema(&s.value) {
            Err(msg) => errs.at(s, obj, "path", msg),
            Ok(SourceSchema { schema, typed }) => {
                if !typed {
                    untyped.push(s.value.name());
                }
                let mut ok = true;
                let fields = [
                    ("timestamp_field", Some(s.value.timestamp_field())),
                    ("created_timestamp_field", s.value.created_timestamp_field()),
                ];
                for (field, col) in fields {
                    let Some(col) = col else { continue };
                    match schema.field_with_name(col) {
                        Err(_) => {
                            ok = false;
                            errs.at(
                                s,
                                obj.clone(),
                                field,
                                format!(
                                    "column '{col}' is not in the source (columns: {})",
                                    column_list(&schema)
                                ),
                            );
                        }
                        Ok(f) if !is_time_type(f.data_type()) => {
                            ok = false;
                            errs.at(
                                s,
                                obj.clone(),
                                field,
                                format!(
                                "column '{col}' has type {}, expected a timestamp, date or string",
                                f.data_type()),
                            );
                        }
                        Ok(_) => {}
                    }
                }
                if ok {
                    source_schemas.insert(s.value.name(), schema);
                }
            }
        }
    }

    // Feature views.
    let mut key_types: HashMap<(String, String), (DType, String)> = HashMap::new();
    for e in &defs.entities {
        for k in &e.value.join_keys {
            if let Some(t) = k.dtype() {
                key_types.insert(
                    (e.value.name.clone(), k.name().to_string()),
                    (normalize_key(t), format!("entity '{}'", e.value.name)),
                );
            }
        }
    }
    let mut view_keys: BTreeMap<String, Vec<JoinKey>> = BTreeMap::new();
    for v in &defs.feature_views {
        let def = &v.value;
        let obj = format!("feature view '{}'", def.name);
        if def.entities.is_empty() {
            errs.at(
                v,
                obj.clone(),
                "entities",
                "needs at least one entity".into(),
            );
        }
        if def.features.is_empty() {
            errs.at(
                v,
                obj.clone(),
                "features",
                "needs at least one feature".into(),
            );
        }
        let source = defs.sources.iter().find(|s| s.value.name() == def.source);
        if source.is_none() {
            errs.at(
                v,
                obj.clone(),
                "source",
                format!(
                    "unknown source '{}'{}",
                    def.source,
                    suggest(&def.source, src_idx.keys())
                ),
            );
        }
        let schema = source.and_then(|s| source_schemas.get(s.value.name()));
        let mut keys: Vec<JoinKey> = Vec::new();
        let mut used_entities = Vec::new();
        for (i, ent) in def.entities.iter().enumerate() {
            let field = format!("entities[{i}]");
            if used_entities.contains(&ent) {
                errs.at(
                    v,
                    obj.clone(),
                    &field,
                    format!("entity '{ent}' is listed twice"),
                );
                continue;
            }
            used_entities.push(ent);
            let Some(&ei) = ent_idx.get(ent) else {
                errs.at(
                    v,
                    obj.clone(),
                    &field,
                    format!("unknown entity '{ent}'{}", suggest(ent, ent_idx.keys())),
                );
                continue;
            };
            for k in &defs.entities[ei].value.join_keys {
                if keys.iter().any(|x| x.name == k.name()) {
                    errs.at(v, obj.clone(), &field, format!(
                        "join key '{}' of entity '{ent}' is also a key of another entity of this view",
                        k.name()));
                    continue;
                }
                let Some(schema) = schema else { continue };
                let Ok(col) = schema.field_with_name(k.name()) else {
                    errs.at(v, obj.clone(), &field, format!(
                        "join key '{}' of entity '{ent}' is not a column of source '{}' (columns: {})",
                        k.name(), def.source, column_list(schema)));
                    continue;
                };
                let Some(src_t) = DType::from_arrow(col.data_type()).filter(|t| t.is_key_type())
                else {
                    errs.at(v, obj.clone(), &field, format!(
                        "join key '{}' has type {} in source '{}'; join keys must be integers, strings or bytes",
                        k.name(), col.data_type(), def.source));
                    continue;
                };
                let slot = (ent.clone(), k.name().to_string());
                // CSV columns carry no type: a declared key type is read as declared.
                let src_t = match key_types.get(&slot) {
                    Some((t, _)) if untyped.contains(&def.source.as_str()) => t.clone(),
                    _ => normalize_key(&src_t),
                };
                match key_types.get(&slot) {
                    Some((t, from)) if *t != src_t => errs.at(
                        v,
                        obj.clone(),
                        &field,
                        format!(
                            "join key '{}' is {src_t} in source '{}' but {t} in {from}",
                            k.name(),
                            def.source
                        ),
                    ),
                    Some(_) => {}
                    None => {
                        key_types.insert(slot, (src_t.clone(), format!("source '{}'", def.source)));
                    }
                }
                keys.push(JoinKey {
                    name: k.name().to_string(),
                    dtype: src_t,
                });
            }
        }
        let mut names: Vec<&str> = Vec::new();
        let reserved: Vec<&str> = source
            .map(|s| {
                vec![
                    s.value.timestamp_field(),
                    s.value.created_timestamp_field().unwrap_or(""),
                ]
            })
            .unwrap_or_default();
        for (i, f) in def.features.iter().enumerate() {
            let field = format!("features[{i}]");
            if !is_identifier(&f.name) {
                errs.at(
                    v,
                    obj.clone(),
                    &format!("{field}.name"),
                    format!("'{}' must be an identifier", f.name),
                );
            }
            if names.contains(&f.name.as_str()) {
                errs.at(
                    v,
                    obj.clone(),
                    &format!("{field}.name"),
                    format!("duplicate feature '{}'", f.name),
                );
            }
            names.push(&f.name);
            if keys.iter().any(|k| k.name == f.name)
                || reserved.contains(&f.name.as_str())
                || ["event_timestamp", "created_timestamp"].contains(&f.name.as_str())
            {
                errs.at(
                    v,
                    obj.clone(),
                    &format!("{field}.name"),
                    format!(
                        "'{}' is a join key or timestamp column and cannot be a feature",
                        f.name
                    ),
                );
            }
            let Some(schema) = schema else { continue };
            match schema.field_with_name(&f.name) {
                Err(_) => errs.at(
                    v,
                    obj.clone(),
                    &format!("{field}.name"),
                    format!(
                        "column '{}' is not in source '{}' (columns: {})",
                        f.name,
                        def.source,
                        column_list(schema)
                    ),
                ),
                Ok(_) if untyped.contains(&def.source.as_str()) => {}
                Ok(col) => match DType::from_arrow(col.data_type()) {
                    Some(t) if f.dtype.accepts(&t) => {}
                    other => errs.at(
                        v,
                        obj.clone(),
                        &format!("{field}.dtype"),
                        format!(
                            "declared {} but column '{}' of source '{}' is {}",
                            f.dtype,
                            f.name,
                            def.source,
                            other
                                .map(|t| t.to_string())
                                .unwrap_or_else(|| col.data_type().to_string())
                        ),
                    ),
                },
            }
        }
        view_keys.insert(def.name.clone(), keys);
    }

    // Request sources: typed fields with unique identifier names.
    for r in &defs.request_sources {
        let obj = format!("request source '{}'", r.value.name);
        if let Some(&si) = src_idx.get(&r.value.name) {
            let s = &defs.sources[si];
            errs.at(
                r,
                obj.clone(),
                "name",
                format!(
                    "the name is also a source's ({}{}): sources and request sources share one namespace",
                    s.file,
                    s.line.map(|l| format!(":{l}")).unwrap_or_default()
                ),
            );
        }
        if r.value.schema.is_empty() {
            errs.at(r, obj.clone(), "schema", "needs at least one field".into());
        }
        for (i, f) in r.value.schema.iter().enumerate() {
            if !is_identifier(&f.name) {
                errs.at(
                    r,
                    obj.clone(),
                    &format!("schema[{i}].name"),
                    format!("'{}' must be an identifier", f.name),
                );
            }
            if r.value.schema[..i].iter().any(|g| g.name == f.name) {
                errs.at(
                    r,
                    obj.clone(),
                    &format!("schema[{i}].name"),
                    format!("duplicate field '{}'", f.name),
                );
            }
        }
    }

    // On-demand feature views: sources that exist, names that are unambiguous, and
    // expressions that compile against the sources' types.
    let mut odfv_inputs: BTreeMap<String, (Vec<String>, Vec<FeatureRef>)> = BTreeMap::new();
    for o in &defs.on_demand_feature_views {
        let def = &o.value;
        let obj = format!("on-demand feature view '{}'", def.name);
        if let Some(&vi) = view_idx.get(&def.name) {
            let v = &defs.feature_views[vi];
            errs.at(
                o,
                obj.clone(),
                "name",
                format!(
                    "the name is also a feature view's ({}{}): feature views and on-demand feature views share one namespace",
                    v.file,
                    v.line.map(|l| format!(":{l}")).unwrap_or_default()
                ),
            );
        }
        if def.sources.is_empty() {
            errs.at(
                o,
                obj.clone(),
                "sources",
                "needs at least one source: a feature view or { request: NAME }".into(),
            );
        }
        if def.features.is_empty() {
            errs.at(
                o,
                obj.clone(),
                "features",
                "needs at least one feature".into(),
            );
        }
        let mut sources_ok = true;
        // Request field name → (source index, request source name).
        let mut fields: BTreeMap<&str, (usize, &str)> = BTreeMap::new();
        for (i, src) in def.sources.iter().enumerate() {
            let field = format!("sources[{i}]");
            if def.sources[..i].contains(src) {
                errs.at(o, obj.clone(), &field, format!("{src} is listed twice"));
                continue;
            }
            match src {
                OnDemandSource::Request(r) => {
                    let Some(&ri) = req_idx.get(r) else {
                        sources_ok = false;
                        let hint = if src_idx.contains_key(r) {
                            format!(" ('{r}' is a batch source: list a feature view that reads it)")
                        } else {
                            suggest(r, req_idx.keys())
                        };
                        errs.at(
                            o,
                            obj.clone(),
                            &field,
                            format!("unknown request source '{r}'{hint}"),
                        );
                        continue;
                    };
                    for f in &defs.request_sources[ri].value.schema {
                        if let Some((_, other)) = fields.get(f.name.as_str()) {
                            errs.at(
                                o,
                                obj.clone(),
                                &field,
                                format!(
                                    "request field '{}' is in both request source '{other}' and request source '{r}'",
                                    f.name
                                ),
                            );
                        } else {
                            fields.insert(&f.name, (i, r));
                        }
                    }
                }
                OnDemandSource::View(v) => {
                    if view_idx.contains_key(v) {
                        continue;
                    }
                    sources_ok = false;
                    let message = if odfv_idx.contains_key(v) {
                        format!(
                            "'{v}' is an on-demand feature view; the sources of one are feature views and request sources"
                        )
                    } else if req_idx.contains_key(v) {
                        format!("'{v}' is a request source: write {{ request: {v} }}")
                    } else {
                        format!("unknown feature view '{v}'{}", suggest(v, view_idx.keys()))
                    };
                    errs.at(o, obj.clone(), &field, message);
                }
            }
        }
        // A request field and a source view's feature with the same name could not be
        // told apart in an expression.
        for (i, src) in def.sources.iter().enumerate() {
            let OnDemandSource::View(v) = src else {
                continue;
            };
            let Some(&vi) = view_idx.get(v) else { continue };
            for f in &defs.feature_views[vi].value.features {
                let column = quiver_ondemand::input_column(v, &f.name);
                for name in [f.name.as_str(), column.as_str()] {
                    if let Some((_, r)) = fields.get(name) {
                        sources_ok = false;
                        errs.at(
                            o,
                            obj.clone(),
                            &format!("sources[{i}]"),
                            format!(
                                "request field '{name}' of request source '{r}' has the name of feature '{}' of feature view '{v}' in expressions: rename one",
                                f.name
                            ),
                        );
                    }
                }
            }
        }
        for (i, f) in def.features.iter().enumerate() {
            let field = format!("features[{i}].name");
            if !is_identifier(&f.name) {
                errs.at(
                    o,
                    obj.clone(),
                    &field,
                    format!("'{}' must be an identifier", f.name),
                );
            }
            if def.features[..i].iter().any(|g| g.name == f.name) {
                errs.at(
                    o,
                    obj.clone(),
                    &field,
                    format!("duplicate feature '{}'", f.name),
                );
            }
        }
        if !sources_ok {
            continue;
        }
        let Some((schema, columns)) = odfv_schema(
            def,
            |r| req_idx.get(r).map(|&i| &defs.request_sources[i].value),
            |v| view_idx.get(v).map(|&i| &defs.feature_views[i].value),
        ) else {
            continue;
        };
        match quiver_ondemand::CompiledOdfv::compile(def, &schema) {
            Ok(compiled) => {
                let mut request_fields = Vec::new();
                let mut dependencies = Vec::new();
                for c in compiled.input_columns() {
                    match columns.iter().find(|(n, _, _)| n == c).map(|x| &x.2) {
                        Some(Ok(_)) => request_fields.push(c.clone()),
                        Some(Err(feature)) => dependencies.push(feature.clone()),
                        None => {}
                    }
                }
                odfv_inputs.insert(def.name.clone(), (request_fields, dependencies));
            }
            Err(quiver_ondemand::Error::Invalid { errors, .. }) => {
                for e in errors.iter().filter(|e| e.field != "name") {
                    let i = def
                        .features
                        .iter()
                        .position(|f| f.name == e.feature)
                        .unwrap_or(0);
                    errs.at(
                        o,
                        obj.clone(),
                        &format!("features[{i}].{}", e.field),
                        e.message.clone(),
                    );
                }
            }
            Err(e) => errs.at(o, obj.clone(), "sources", e.to_string()),
        }
    }

    // Feature services.
    let mut service_refs: BTreeMap<String, Vec<FeatureRef>> = BTreeMap::new();
    for s in &defs.feature_services {
        let obj = format!("feature service '{}'", s.value.name);
        if s.value.features.is_empty() {
            errs.at(
                s,
                obj.clone(),
                "features",
                "needs at least one feature".into(),
            );
        }
        let mut refs = Vec::new();
        for (i, r) in s.value.features.iter().enumerate() {
            let field = format!("features[{i}]");
            let r = match FeatureRef::parse(r) {
                Ok(r) => r,
                Err(e) => {
                    errs.at(s, obj.clone(), &field, e.to_string());
                    continue;
                }
            };
            let (kind, names): (&str, Vec<&String>) = if let Some(&vi) = view_idx.get(&r.view) {
                (
                    "feature view",
                    defs.feature_views[vi]
                        .value
                        .features
                        .iter()
                        .map(|f| &f.name)
                        .collect(),
                )
            } else if let Some(&oi) = odfv_idx.get(&r.view) {
                (
                    "on-demand feature view",
                    defs.on_demand_feature_views[oi]
                        .value
                        .features
                        .iter()
                        .map(|f| &f.name)
                        .collect(),
                )
            } else {
                errs.at(
                    s,
                    obj.clone(),
                    &field,
                    format!(
                        "unknown feature view '{}'{}",
                        r.view,
                        suggest(&r.view, view_idx.keys().chain(odfv_idx.keys()))
                    ),
                );
                continue;
            };
            if r.feature == "*" {
                refs.extend(names.iter().map(|f| FeatureRef {
                    view: r.view.clone(),
                    feature: f.to_string(),
                }));
            } else if !names.contains(&&r.feature) {
                errs.at(
                    s,
                    obj.clone(),
                    &field,
                    format!(
                        "{kind} '{}' has no feature '{}'{}",
                        r.view,
                        r.feature,
                        suggest(&r.feature, names.into_iter())
                    ),
                );
            } else {
                refs.push(r);
            }
        }
        service_refs.insert(s.value.name.clone(), refs);
    }

    // Entity key types must be known.
    let mut entities = BTreeMap::new();
    for e in &defs.entities {
        let mut keys = Vec::new();
        for k in &e.value.join_keys {
            match key_types.get(&(e.value.name.clone(), k.name().to_string())) {
                Some((t, _)) => keys.push(JoinKey {
                    name: k.name().to_string(),
                    dtype: t.clone(),
                }),
                // A view reads this entity but its source failed: that error is reported.
                None if defs
                    .feature_views
                    .iter()
                    .any(|v| v.value.entities.contains(&e.value.name)) => {}
                None => errs.at(
                    e,
                    format!("entity '{}'", e.value.name),
                    "join_keys",
                    format!(
                    "the type of join key '{}' is unknown: no feature view reads it from a source; \
                     declare it as {{ name: {}, dtype: int64 }}", k.name(), k.name()),
                ),
            }
        }
        entities.insert(
            e.value.name.clone(),
            EntityRecord {
                def: e.value.clone(),
                join_keys: keys,
                file: e.file.clone(),
            },
        );
    }
    let _ = svc_idx;
    if !errs.0.is_empty() {
        return Err(Error::Definitions(errs.0));
    }

    let mut state = RegistryState {
        project: project.to_string(),
        serial: 0,
        applied_at: now,
        entities,
        sources: defs
            .sources
            .iter()
            .map(|s| {
                (
                    s.value.name().to_string(),
                    SourceRecord {
                        def: s.value.clone(),
                        file: s.file.clone(),
                    },
                )
            })
            .collect(),
        feature_views: BTreeMap::new(),
        feature_services: BTreeMap::new(),
        request_sources: defs
            .request_sources
            .iter()
            .map(|r| {
                (
                    r.value.name.clone(),
                    RequestSourceRecord {
                        def: r.value.clone(),
                        file: r.file.clone(),
                    },
                )
            })
            .collect(),
        on_demand_feature_views: BTreeMap::new(),
    };
    for v in &defs.feature_views {
        let def = v.value.clone();
        let join_keys = view_keys.remove(&def.name).unwrap_or_default();
        let source = state.sources.get(&def.source).map(|s| &s.def);
        let prev = previous.and_then(|p| p.feature_views.get(&def.name));
        let prev_source = previous
            .and_then(|p| prev.and_then(|pv| p.sources.get(&pv.def.source)))
            .map(|s| &s.def);
        let same_data = prev.is_some_and(|p| {
            p.join_keys == join_keys
                && p.def
                    .features
                    .iter()
                    .map(|f| (&f.name, &f.dtype))
                    .eq(def.features.iter().map(|f| (&f.name, &f.dtype)))
                && p.def.source == def.source
                && prev_source.map(|s| (s.timestamp_field(), s.created_timestamp_field()))
                    == source.map(|s| (s.timestamp_field(), s.created_timestamp_field()))
        });
        let (version, materialized, ingested_until) = match prev {
            Some(p) if same_data => (p.version, p.materialized.clone(), p.ingested_until),
            Some(p) => (p.version + 1, None, None),
            None => (1, None, None),
        };
        state.feature_views.insert(
            def.name.clone(),
            ViewRecord {
                def,
                version,
                join_keys,
                file: v.file.clone(),
                materialized,
                ingested_until,
            },
        );
    }
    for o in &defs.on_demand_feature_views {
        let def = o.value.clone();
        let (request_fields, dependencies) = odfv_inputs.remove(&def.name).unwrap_or_default();
        let prev = previous.and_then(|p| p.on_demand_feature_views.get(&def.name));
        let version = match prev {
            Some(p) if p.def.sources == def.sources && same_odfv_features(&p.def, &def) => {
                p.version
            }
            Some(p) => p.version + 1,
            None => 1,
        };
        state.on_demand_feature_views.insert(
            def.name.clone(),
            OnDemandViewRecord {
                def,
                version,
                request_fields,
                dependencies,
                file: o.file.clone(),
            },
        );
    }
    for s in &defs.feature_services {
        let features = service_refs.remove(&s.value.name).unwrap_or_default();
        let prev = previous.and_then(|p| p.feature_services.get(&s.value.name));
        let version = match prev {
            Some(p) if p.features == features => p.version,
            Some(p) => p.version + 1,
            None => 1,
        };
        state.feature_services.insert(
            s.value.name.clone(),
            ServiceRecord {
                def: s.value.clone(),
                version,
                features,
                file: s.file.clone(),
            },
        );
    }
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

/// Whether two on-demand views compute the same values: the same features, types and
/// expressions, in the same order.
fn same_odfv_features(
    a: &quiver_core::model::OnDemandFeatureView,
    b: &quiver_core::model::OnDemandFeatureView,
) -> bool {
    a.features
        .iter()
        .map(|f| (&f.name, &f.dtype, &f.expr))
        .eq(b.features.iter().map(|f| (&f.name, &f.dtype, &f.expr)))
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
