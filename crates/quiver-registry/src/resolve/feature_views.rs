//! Feature views: entities and a source that exist, join keys that are columns of the
//! source with one type per key, and features that are typed columns of the source.

use std::collections::BTreeMap;

use quiver_core::agg::window::{check_window, default_hop, window_label};
use quiver_core::agg::{output_name, Aggregation};
use quiver_core::dtype::DType;
use quiver_core::model::{Feature, JoinKey, ResolvedAggregation};

use super::sources::CheckedSources;
use super::{column_list, is_identifier, normalize_key, Errors, KeyTypes, Names};
use crate::repo::Definitions;
use crate::state::{suggest, RegistryState, ViewRecord};

/// Checks every feature view and returns each one's join keys, typed. The key types read
/// from the sources are added to `key_types`.
pub(super) fn check(
    defs: &Definitions,
    names: &Names,
    sources: &CheckedSources<'_>,
    key_types: &mut KeyTypes,
    errs: &mut Errors,
) -> BTreeMap<String, Vec<JoinKey>> {
    let Names {
        entities: ent_idx,
        sources: src_idx,
        ..
    } = names;
    let CheckedSources {
        schemas: source_schemas,
        untyped,
    } = sources;
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
        if def.features.is_empty() && def.aggregations.is_empty() {
            errs.at(
                v,
                obj.clone(),
                "features",
                "needs at least one feature (or aggregations)".into(),
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
        // An aggregated view's features are its outputs, checked by `expand`.
        let features: &[Feature] = if def.aggregations.is_empty() {
            &def.features
        } else {
            &[]
        };
        for (i, f) in features.iter().enumerate() {
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
            if f.allow_non_finite && !f.dtype.is_float() {
                errs.at(
                    v,
                    obj.clone(),
                    &format!("{field}.allow_non_finite"),
                    format!(
                        "only a float feature can hold NaN or infinity; '{}' is {}",
                        f.name, f.dtype
                    ),
                );
            }
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
    view_keys
}

/// What an aggregated view stores and outputs.
#[derive(Debug, Default)]
pub(super) struct Aggregated {
    /// The source columns its aggregations read, typed from the source.
    pub columns: Vec<Feature>,
    /// One per output feature, in definition order.
    pub aggregations: Vec<ResolvedAggregation>,
}

/// Checks every aggregated view's aggregations against its source's columns and
/// resolves them: each (aggregation, window) is one output feature, named by
/// [`output_name`], with the function's output type. Returns the definitions with each
/// aggregated view's `features` set to its outputs (so that services, on-demand views
/// and references see them like any features) and what each aggregated view stores.
pub(super) fn expand(
    defs: &Definitions,
    sources: &CheckedSources<'_>,
    errs: &mut Errors,
) -> (Definitions, BTreeMap<String, Aggregated>) {
    let mut out = defs.clone();
    let mut aggregated = BTreeMap::new();
    for (vi, v) in defs.feature_views.iter().enumerate() {
        let def = &v.value;
        if def.aggregations.is_empty() {
            if def.retention.is_some() {
                errs.at(
                    v,
                    format!("feature view '{}'", def.name),
                    "retention",
                    "only an aggregated view keeps tiles to retain; a snapshot view's rows \
                     are valid for its ttl"
                        .into(),
                );
            }
            continue;
        }
        let obj = format!("feature view '{}'", def.name);
        if !def.features.is_empty() {
            errs.at(
                v,
                obj,
                "features",
                "a feature view declares either features (a snapshot view) or aggregations \
                 (an aggregated view), not both"
                    .into(),
            );
            continue;
        }
        let schema = sources.schemas.get(def.source.as_str());
        let source = defs.sources.iter().find(|s| s.value.name() == def.source);
        let reserved: Vec<&str> = source
            .map(|s| {
                vec![
                    s.value.timestamp_field(),
                    s.value.created_timestamp_field().unwrap_or(""),
                ]
            })
            .unwrap_or_default();
        let mut result = Aggregated::default();
        let mut outputs: Vec<Feature> = Vec::new();
        for (i, a) in def.aggregations.iter().enumerate() {
            let field = format!("aggregations[{i}]");
            let dtype = match (&a.column, schema) {
                (None, _) => None,
                (Some(c), _) if reserved.contains(&c.as_str()) => {
                    errs.at(
                        v,
                        obj.clone(),
                        &format!("{field}.column"),
                        format!("'{c}' is the source's time column and cannot be aggregated"),
                    );
                    continue;
                }
                (Some(_), None) => continue, // the source's own error is reported
                (Some(c), Some(schema)) => match schema.field_with_name(c) {
                    Err(_) => {
                        errs.at(
                            v,
                            obj.clone(),
                            &format!("{field}.column"),
                            format!(
                                "column '{c}' is not in source '{}' (columns: {}){}",
                                def.source,
                                column_list(schema),
                                suggest(c, schema.fields().iter().map(|f| f.name()))
                            ),
                        );
                        continue;
                    }
                    Ok(col) => match DType::from_arrow(col.data_type()) {
                        Some(t) => Some(t),
                        None => {
                            errs.at(
                                v,
                                obj.clone(),
                                &format!("{field}.column"),
                                format!(
                                    "column '{c}' of source '{}' has type {}, which cannot be \
                                     aggregated",
                                    def.source,
                                    col.data_type()
                                ),
                            );
                            continue;
                        }
                    },
                },
            };
            let agg = match Aggregation::new(a.function, dtype.as_ref(), a.params()) {
                Ok(agg) => agg,
                Err(p) => {
                    errs.at(v, obj.clone(), &format!("{field}.{}", p.field), p.message);
                    continue;
                }
            };
            if let (Some(c), Some(t)) = (&a.column, &dtype) {
                if !result.columns.iter().any(|f| &f.name == c) {
                    result.columns.push(Feature {
                        name: c.clone(),
                        dtype: t.clone(),
                        description: String::new(),
                        allow_non_finite: false,
                    });
                }
            }
            if a.windows.is_empty() {
                errs.at(
                    v,
                    obj.clone(),
                    &format!("{field}.windows"),
                    "needs at least one window, e.g. windows: [1h, 1d]".into(),
                );
            }
            for (j, &w) in a.windows.iter().enumerate() {
                let hop = a.hop.unwrap_or_else(|| default_hop(w));
                if let Err(m) = check_window(w, hop) {
                    let at = if a.hop.is_some() {
                        format!("{field}.hop")
                    } else {
                        format!("{field}.windows[{j}]")
                    };
                    errs.at(v, obj.clone(), &at, m);
                    continue;
                }
                let name = output_name(a.column.as_deref(), &agg, &window_label(w));
                if outputs.iter().any(|f| f.name == name) {
                    errs.at(
                        v,
                        obj.clone(),
                        &format!("{field}.windows[{j}]"),
                        format!("the output feature '{name}' is produced twice"),
                    );
                    continue;
                }
                outputs.push(Feature {
                    name: name.clone(),
                    dtype: agg.output_dtype(),
                    description: String::new(),
                    allow_non_finite: false,
                });
                result.aggregations.push(ResolvedAggregation {
                    name,
                    column: a.column.clone(),
                    function: a.function,
                    window: w,
                    hop,
                    n: a.n,
                    percentile: a.percentile,
                    max_distinct: a.max_distinct,
                });
            }
        }
        if let Some(r) = def.retention {
            // The oldest tile any window reads is its window plus a hop back.
            if let Some(a) = result
                .aggregations
                .iter()
                .max_by_key(|a| a.window.micros() + a.hop.micros())
                .filter(|a| a.window.micros() + a.hop.micros() > r.micros())
            {
                errs.at(
                    v,
                    obj.clone(),
                    "retention",
                    format!(
                        "retention {r} is shorter than what '{}' reads: its window {} plus \
                         its hop {}",
                        a.name, a.window, a.hop
                    ),
                );
            }
        }
        out.feature_views[vi].value.features = outputs;
        aggregated.insert(def.name.clone(), result);
    }
    (out, aggregated)
}

/// Adds the feature views to `state` (whose sources are set), each with its version.
///
/// The version stays while stored rows keep their meaning: same join keys, entities,
/// source and time columns, and the previous features a prefix of the new ones (an
/// appended feature reads as null offline and MISSING online in rows stored before
/// it). Any other change of the features (a type, a removal, an order) gives the next
/// version; the previous one is kept as an earlier version that trains and serves
/// until the new one has data of its own.
pub(super) fn records(
    defs: &Definitions,
    mut view_keys: BTreeMap<String, Vec<JoinKey>>,
    mut aggregated: BTreeMap<String, Aggregated>,
    previous: Option<&RegistryState>,
    state: &mut RegistryState,
) {
    for v in &defs.feature_views {
        let def = v.value.clone();
        let Aggregated {
            columns,
            aggregations,
        } = aggregated.remove(&def.name).unwrap_or_default();
        // What the offline table stores besides keys and times.
        let stored: &[Feature] = if aggregations.is_empty() {
            &def.features
        } else {
            &columns
        };
        let join_keys = view_keys.remove(&def.name).unwrap_or_default();
        let source = state.sources.get(&def.source).map(|s| &s.def);
        let prev = previous.and_then(|p| p.feature_views.get(&def.name));
        let prev_source = previous
            .and_then(|p| prev.and_then(|pv| p.sources.get(&pv.def.source)))
            .map(|s| &s.def);
        let same_data = prev.is_some_and(|p| {
            p.join_keys == join_keys
                && p.def.entities == def.entities
                && p.is_aggregated() != aggregations.is_empty()
                && p.stored_columns().len() <= stored.len()
                && p.stored_columns()
                    .iter()
                    .zip(stored)
                    .all(|(a, b)| a.name == b.name && a.dtype == b.dtype)
                && p.def.source == def.source
                && prev_source.map(|s| (s.timestamp_field(), s.created_timestamp_field()))
                    == source.map(|s| (s.timestamp_field(), s.created_timestamp_field()))
        });
        let mut record = ViewRecord {
            def,
            version: 1,
            join_keys,
            file: v.file.clone(),
            materialized: None,
            ingested_until: None,
            pushed_online: false,
            earlier: Vec::new(),
            columns,
            aggregations,
        };
        match prev {
            Some(p) if same_data => {
                record.version = p.version;
                record.materialized = p.materialized.clone();
                record.ingested_until = p.ingested_until;
                record.pushed_online = p.pushed_online;
                record.earlier = p.earlier.clone();
            }
            Some(p) => {
                record.version = p.version + 1;
                record.earlier = std::iter::once(p.as_earlier())
                    .chain(p.earlier.iter().cloned())
                    .collect();
            }
            None => {}
        }
        record.prune_earlier();
        state.feature_views.insert(record.def.name.clone(), record);
    }
}
