//! Request sources: typed fields with unique identifier names, in the namespace of the
//! sources.

use std::collections::BTreeMap;

use super::{is_identifier, Errors, Names};
use crate::repo::Definitions;
use crate::state::RequestSourceRecord;

/// Checks every request source.
pub(super) fn check(defs: &Definitions, names: &Names, errs: &mut Errors) {
    let src_idx = &names.sources;
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
}

/// The request sources' records.
pub(super) fn records(defs: &Definitions) -> BTreeMap<String, RequestSourceRecord> {
    defs.request_sources
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
        .collect()
}
