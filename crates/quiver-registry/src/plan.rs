//! What `apply` would change: objects added, changed (with the fields that differ and
//! whether the stored data's version is bumped) and removed.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::state::RegistryState;

/// The kind of change to one object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Add,
    Change,
    Remove,
}

/// One object's change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    pub action: Action,
    /// `entity`, `source`, `request source`, `feature view`, `on-demand feature view`
    /// or `feature service`.
    pub kind: &'static str,
    pub name: String,
    /// For changes: the top-level fields that differ.
    pub fields: Vec<String>,
    /// For views, on-demand views and services: the version before and after, when it
    /// changes.
    pub version: Option<(u32, u32)>,
    /// For feature views added, or whose features changed: the command that fills the
    /// declared version with data, and the version that serves until then (if any).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fill: Option<Fill>,
}

/// What to run after an apply so that a feature view's declared version has data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Fill {
    pub command: String,
    /// The earlier version that trains and serves until then.
    pub serving: Option<u32>,
}

/// The difference between the registered state and the repository.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub changes: Vec<Change>,
}

impl Plan {
    /// Computes the plan from `old` (none before the first apply) to `new`.
    pub fn diff(old: Option<&RegistryState>, new: &RegistryState) -> Self {
        let empty = RegistryState::default();
        let old = old.unwrap_or(&empty);
        let mut changes = Vec::new();
        diff_map(
            &mut changes,
            "entity",
            &old.entities,
            &new.entities,
            |_| None,
            |r| serde_json::to_value(&r.def),
        );
        diff_map(
            &mut changes,
            "source",
            &old.sources,
            &new.sources,
            |_| None,
            |r| serde_json::to_value(&r.def),
        );
        diff_map(
            &mut changes,
            "request source",
            &old.request_sources,
            &new.request_sources,
            |_| None,
            |r| serde_json::to_value(&r.def),
        );
        diff_map(
            &mut changes,
            "feature view",
            &old.feature_views,
            &new.feature_views,
            |r| Some(r.version),
            |r| serde_json::to_value(&r.def),
        );
        for c in changes.iter_mut().filter(|c| c.kind == "feature view") {
            let Some(v) = new.feature_views.get(&c.name) else {
                continue;
            };
            let new_features = c.action == Action::Add
                || c.version.is_some()
                || c.fields.iter().any(|f| f == "features");
            if new_features && c.action != Action::Remove {
                c.fill = Some(Fill {
                    command: v.fill_command(),
                    serving: v.earlier.first().map(|e| e.version),
                });
            }
        }
        diff_map(
            &mut changes,
            "on-demand feature view",
            &old.on_demand_feature_views,
            &new.on_demand_feature_views,
            |r| Some(r.version),
            |r| serde_json::to_value(&r.def),
        );
        diff_map(
            &mut changes,
            "feature service",
            &old.feature_services,
            &new.feature_services,
            |r| Some(r.version),
            |r| serde_json::to_value(&r.def),
        );
        Plan { changes }
    }

    /// Whether nothing would change.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
}

fn diff_map<R>(
    out: &mut Vec<Change>,
    kind: &'static str,
    old: &BTreeMap<String, R>,
    new: &BTreeMap<String, R>,
    version: impl Fn(&R) -> Option<u32>,
    json: impl Fn(&R) -> serde_json::Result<serde_json::Value>,
) {
    for (name, n) in new {
        match old.get(name) {
            None => out.push(Change {
                action: Action::Add,
                kind,
                name: name.clone(),
                fields: vec![],
                version: None,
                fill: None,
            }),
            Some(o) => {
                let (a, b) = (json(o).unwrap_or_default(), json(n).unwrap_or_default());
                let mut fields: Vec<String> = match (a.as_object(), b.as_object()) {
                    (Some(a), Some(b)) => a
                        .keys()
                        .chain(b.keys())
                        .filter(|k| a.get(*k) != b.get(*k))
                        .cloned()
                        .collect(),
                    _ => vec![],
                };
                fields.sort();
                fields.dedup();
                let v = match (version(o), version(n)) {
                    (Some(x), Some(y)) if x != y => Some((x, y)),
                    _ => None,
                };
                if !fields.is_empty() || v.is_some() {
                    out.push(Change {
                        action: Action::Change,
                        kind,
                        name: name.clone(),
                        fields,
                        version: v,
                        fill: None,
                    });
                }
            }
        }
    }
    for name in old.keys().filter(|k| !new.contains_key(*k)) {
        out.push(Change {
            action: Action::Remove,
            kind,
            name: name.clone(),
            fields: vec![],
            version: None,
            fill: None,
        });
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.changes.is_empty() {
            return writeln!(f, "No changes: the registry matches the repository.");
        }
        for c in &self.changes {
            let sign = match c.action {
                Action::Add => "+",
                Action::Change => "~",
                Action::Remove => "-",
            };
            write!(f, "  {sign} {} '{}'", c.kind, c.name)?;
            if !c.fields.is_empty() {
                write!(f, " ({})", c.fields.join(", "))?;
            }
            if let Some((a, b)) = c.version {
                write!(f, " [version {a} -> {b}: new data version]")?;
            }
            writeln!(f)?;
            if let Some(fill) = &c.fill {
                write!(f, "      to fill it: {}", fill.command)?;
                if let Some(v) = fill.serving {
                    write!(f, " (version {v} trains and serves until then)")?;
                }
                writeln!(f)?;
            }
        }
        let count = |a: Action| self.changes.iter().filter(|c| c.action == a).count();
        writeln!(
            f,
            "{} to add, {} to change, {} to remove.",
            count(Action::Add),
            count(Action::Change),
            count(Action::Remove)
        )
    }
}
