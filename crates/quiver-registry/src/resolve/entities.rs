//! Entities: join keys present, unique and of a key type when declared; once the feature
//! views have typed them, every key's type known.

use std::collections::{BTreeMap, HashMap};

use quiver_core::model::JoinKey;

use super::{is_identifier, normalize_key, Errors, KeyTypes};
use crate::repo::Definitions;
use crate::state::EntityRecord;

/// Checks each entity's own join keys.
pub(super) fn check(defs: &Definitions, errs: &mut Errors) {
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
}

/// The key types the entities declare, by (entity, key), each with where it was declared.
pub(super) fn declared_key_types(defs: &Definitions) -> KeyTypes {
    let mut key_types: KeyTypes = HashMap::new();
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
    key_types
}

/// The entities' records with their key types, as declared or read from the sources by
/// the feature views. A key typed by neither is an error.
pub(super) fn records(
    defs: &Definitions,
    key_types: &KeyTypes,
    errs: &mut Errors,
) -> BTreeMap<String, EntityRecord> {
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
    entities
}
