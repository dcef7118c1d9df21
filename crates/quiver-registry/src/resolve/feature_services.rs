//! Feature services: references to features of feature views and on-demand views that
//! exist, `view:*` expanded.

use std::collections::BTreeMap;

use quiver_core::model::FeatureRef;

use super::{Errors, Names};
use crate::repo::Definitions;
use crate::state::{suggest, RegistryState, ServiceRecord};

/// Checks every feature service and returns the features each one serves.
pub(super) fn check(
    defs: &Definitions,
    names: &Names,
    errs: &mut Errors,
) -> BTreeMap<String, Vec<FeatureRef>> {
    let Names {
        feature_views: view_idx,
        on_demand: odfv_idx,
        ..
    } = names;
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
        let mut refs: Vec<FeatureRef> = Vec::new();
        // Where each feature was first listed, for the error on a repeat (a read would
        // return two columns of one name).
        let mut listed: BTreeMap<(String, String), usize> = BTreeMap::new();
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
            let expanded: Vec<FeatureRef> = if r.feature == "*" {
                names
                    .iter()
                    .map(|f| FeatureRef {
                        view: r.view.clone(),
                        feature: f.to_string(),
                    })
                    .collect()
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
                continue;
            } else {
                vec![r]
            };
            for r in expanded {
                match listed.entry((r.view.clone(), r.feature.clone())) {
                    std::collections::btree_map::Entry::Occupied(first) => errs.at(
                        s,
                        obj.clone(),
                        &field,
                        format!(
                            "lists feature '{}:{}' twice (also features[{}]); list each \
                             feature once",
                            r.view,
                            r.feature,
                            first.get()
                        ),
                    ),
                    std::collections::btree_map::Entry::Vacant(slot) => {
                        slot.insert(i);
                        refs.push(r);
                    }
                }
            }
        }
        service_refs.insert(s.value.name.clone(), refs);
    }
    service_refs
}

/// Adds the feature services to `state`, each with its version: the previous one while
/// it serves the same features, else the next.
pub(super) fn records(
    defs: &Definitions,
    mut service_refs: BTreeMap<String, Vec<FeatureRef>>,
    previous: Option<&RegistryState>,
    state: &mut RegistryState,
) {
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
}
