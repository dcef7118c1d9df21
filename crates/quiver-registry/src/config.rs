//! `quiver.yaml`: the project and where its stores live.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The repository's `quiver.yaml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoConfig {
    /// The project name: a namespace for every object and online key.
    pub project: String,
    /// The embedded registry's directory, relative to the repository.
    #[serde(default = "default_registry")]
    pub registry: String,
    #[serde(default)]
    pub offline_store: OfflineStoreConfig,
    #[serde(default)]
    pub online_store: OnlineStoreConfig,
}

fn default_registry() -> String {
    "data/registry".into()
}

/// The offline store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum OfflineStoreConfig {
    /// Delta Lake tables under `path` (a directory relative to the repository).
    Delta { path: String },
}

impl Default for OfflineStoreConfig {
    fn default() -> Self {
        OfflineStoreConfig::Delta {
            path: "data/offline".into(),
        }
    }
}

/// The online store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum OnlineStoreConfig {
    /// The embedded store in the directory `path` (relative to the repository).
    Embedded { path: String },
}

impl Default for OnlineStoreConfig {
    fn default() -> Self {
        OnlineStoreConfig::Embedded {
            path: "data/online".into(),
        }
    }
}

impl RepoConfig {
    /// The file name of the repository configuration.
    pub const FILE: &'static str = "quiver.yaml";

    /// Reads `quiver.yaml` from the repository directory.
    pub fn load(repo: &Path) -> Result<Self> {
        let path = repo.join(Self::FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            Error::Config(format!(
                "cannot read {}: {e} (is {} a quiver repository? `quiver init` creates one)",
                path.display(),
                repo.display()
            ))
        })?;
        Self::parse(&text)
    }

    /// Parses the text of `quiver.yaml`.
    pub fn parse(text: &str) -> Result<Self> {
        let cfg: RepoConfig = serde_yaml::from_str(text)
            .map_err(|e| Error::Config(format!("{}: {e}", Self::FILE)))?;
        if !crate::resolve::is_identifier(&cfg.project) {
            return Err(Error::Config(format!(
                "{}: project {:?} must be an identifier (letters, digits, _)",
                Self::FILE,
                cfg.project
            )));
        }
        Ok(cfg)
    }

    /// The directories (relative to the repository) that hold store data and are never
    /// scanned for definitions.
    pub fn data_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = vec![PathBuf::from(&self.registry)];
        match &self.offline_store {
            OfflineStoreConfig::Delta { path } => dirs.push(PathBuf::from(path)),
        }
        match &self.online_store {
            OnlineStoreConfig::Embedded { path } => dirs.push(PathBuf::from(path)),
        }
        dirs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_shape() {
        let cfg = RepoConfig::parse(
            "project: driver_demo\nregistry: data/registry\n\
             offline_store: { type: delta, path: data/offline }\n\
             online_store:  { type: embedded, path: data/online }\n",
        )
        .unwrap();
        assert_eq!(cfg.project, "driver_demo");
        assert_eq!(
            cfg.online_store,
            OnlineStoreConfig::Embedded {
                path: "data/online".into()
            }
        );
    }

    #[test]
    fn rejects_unknown_fields_and_backends() {
        let e = RepoConfig::parse("project: p\nregistyr: x\n").unwrap_err();
        assert!(e.to_string().contains("registyr"), "{e}");
        let e = RepoConfig::parse("project: p\nonline_store: { type: memcache, path: x }\n")
            .unwrap_err();
        assert!(e.to_string().contains("memcache"), "{e}");
        assert!(RepoConfig::parse("project: 'a b'\n").is_err());
    }
}
