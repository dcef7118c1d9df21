//! On-demand feature views: sources that exist, names that are unambiguous, and
//! expressions that compile against the sources' types.

use std::collections::BTreeMap;

use quiver_core::model::{FeatureRef, OnDemandSource};

use super::{is_identifier, Errors, Names};
use crate::repo::Definitions;
use crate::state::{odfv_schema, suggest, OnDemandViewRecord, RegistryState};

/// Per on-demand view: the request fields and the source views' features its
/// expressions read.
pub(super) type Inputs = BTreeMap<String, (Vec<String>, Vec<FeatureRef>)>;

/// Checks and compiles every on-demand feature view.
pub(super) fn check(defs: &Definitions, names: &Names, errs: &mut Errors) -> Inputs {
    let Names {
        sources: src_idx,
        request_sources: req_idx,
        feature_views: view_idx,
        on_demand: odfv_idx,
        ..
    } = names;
    let mut odfv_inputs: Inputs = BTreeMap::new();
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
            if f.allow_non_finite && !f.dtype.is_float() {
                errs.at(
                    o,
                    obj.clone(),
                    &format!("features[{i}].allow_non_finite"),
                    format!(
                        "only a float feature can hold NaN or infinity; '{}' is {}",
                        f.name, f.dtype
                    ),
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
    odfv_inputs
}

/// Adds the on-demand views to `state`, each with its version: the previous one while
/// its sources and features are unchanged, else the next.
pub(super) fn records(
    defs: &Definitions,
    mut odfv_inputs: Inputs,
    previous: Option<&RegistryState>,
    state: &mut RegistryState,
) {
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
