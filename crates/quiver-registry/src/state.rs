//! The registry's stored form and its atomic storage.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use quiver_core::model::{
    Entity, FeatureRef, FeatureService, FeatureView, JoinKey, ResolvedView, Source,
};
use quiver_core::time::Timestamp;
use serde::{Deserialize, Serialize};

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

    /// The view with everything the data paths need.
    pub fn resolved_view(&self, name: &str) -> Result<ResolvedView> {
        let v = self.view(name)?;
        Ok(ResolvedView {
            name: v.def.name.clone(),
            version: v.version,
            project: self.project.clone(),
            entities: v.def.entities.clone(),
            join_keys: v.join_keys.clone(),
            features: v.def.features.clone(),
            ttl: v.def.ttl,
        })
    }

    /// Checks feature references against the registry (each `view:feature` must exist;
    /// `view:*` expands to all of the view's features).
    pub fn expand_refs(&self, refs: &[String]) -> Result<Vec<FeatureRef>> {
        let mut out = Vec::new();
        for r in refs {
            let r = FeatureRef::parse(r).map_err(|e| Error::NotFound(e.to_string()))?;
            let view = self.view(&r.view)?;
            if r.feature == "*" {
                out.extend(view.def.features.iter().map(|f| FeatureRef {
                    view: r.view.clone(),
                    feature: f.name.clone(),
                }));
            } else if view.def.feature(&r.feature).is_none() {
                return Err(Error::NotFound(format!(
                    "feature view '{}' has no feature '{}'{}",
                    r.view,
                    r.feature,
                    suggest(&r.feature, view.def.features.iter().map(|f| &f.name))
                )));
            } else {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// The feature services that use `view:feature`.
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

/// ", did you mean 'x'?" when a known name is close to `name`.
pub fn suggest<'a>(name: &str, known: impl Iterator<Item = &'a String>) -> String {
    let best = known
        .map(|k| (edit_distance(name, k), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min();
    match best {
        Some((_, k)) => format!(" (did you mean '{k}'?)"),
        None => String::new(),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
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

    fn storage_err(&self, e: impl std::fmt::Display) -> Error {
        Error::Storage {
            path: self.dir.join(Self::FILE).display().to_string(),
            message: e.to_string(),
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
    fn corrupt_registry_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("registry.json"), b"{not json").unwrap();
        let e = Registry::new(dir.path()).load().unwrap_err();
        assert!(e.to_string().contains("corrupt registry"), "{e}");
    }
}
