//! `quiver.yaml`: the project and where its stores live.

use std::path::{Path, PathBuf};

use quiver_core::Duration;
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
    pub online_store: OnlineStoreSection,
    /// How online reads are served (the feature server and the `online` command).
    #[serde(default)]
    pub serving: ServingConfig,
    /// Rules every write (ingest, push, stream) applies.
    #[serde(default)]
    pub writes: WritesConfig,
}

/// `writes:` in `quiver.yaml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WritesConfig {
    /// Rows whose event time is later than the writer's clock plus this are rejected
    /// (default `5m`): online, newer wins, so one row stamped years ahead would hide
    /// every real update of its key until that date.
    #[serde(default = "default_max_future_skew")]
    pub max_future_skew: Duration,
    /// How long a materialization keeps re-sending a batch the online store failed to
    /// write (a lost connection, a timeout), with backoff, before it fails (default
    /// `30s`; `0`: no retries).
    #[serde(default = "default_retry_for")]
    pub retry_for: Duration,
}

fn default_retry_for() -> Duration {
    Duration::from_secs(30)
}

fn default_max_future_skew() -> Duration {
    Duration::from_micros(5 * 60 * 1_000_000)
}

impl Default for WritesConfig {
    fn default() -> Self {
        WritesConfig {
            max_future_skew: default_max_future_skew(),
            retry_for: default_retry_for(),
        }
    }
}

fn default_registry() -> String {
    "data/registry".into()
}

/// `serving:` in `quiver.yaml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServingConfig {
    /// With a duration (e.g. `5s`), an in-process hot-key cache keeps cells read from
    /// the online store that long; statuses are still computed from each row's own
    /// timestamps at request time, so the cache only delays seeing rows written by
    /// other processes, by at most this long. Absent or `0`: no cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_ttl: Option<Duration>,
    /// The cache's memory bound in bytes (default 64 MiB).
    #[serde(default = "default_cache_bytes")]
    pub cache_max_bytes: u64,
    /// The most entity rows one request may ask for (default 1000, at least 1).
    #[serde(default = "default_max_entity_rows", deserialize_with = "at_least_one")]
    pub max_entity_rows: usize,
    /// How long the server waits for a request's headers (default `10s`). On a
    /// kept-alive connection the wait starts after the previous response, so this is
    /// also how long an idle connection stays open.
    #[serde(default = "default_header_timeout")]
    pub header_timeout: Duration,
    /// How long the server waits for a request's body once its headers arrived
    /// (default `30s`); a slower body is answered 408.
    #[serde(default = "default_body_timeout")]
    pub body_timeout: Duration,
    /// Open HTTP connections at most (default 1024); further clients wait in the
    /// listen backlog until one closes.
    #[serde(default = "default_max_connections", deserialize_with = "at_least_one")]
    pub max_connections: usize,
}

fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_body_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_max_connections() -> usize {
    1024
}

/// A count that must be positive (0 would refuse every request).
fn at_least_one<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<usize, D::Error> {
    let n = <usize as Deserialize>::deserialize(d)?;
    if n == 0 {
        return Err(serde::de::Error::custom(
            "must be at least 1 (0 would refuse every request or connection)",
        ));
    }
    Ok(n)
}

fn default_cache_bytes() -> u64 {
    64 << 20
}

fn default_max_entity_rows() -> usize {
    1000
}

impl Default for ServingConfig {
    fn default() -> Self {
        ServingConfig {
            cache_ttl: None,
            cache_max_bytes: default_cache_bytes(),
            max_entity_rows: default_max_entity_rows(),
            header_timeout: default_header_timeout(),
            body_timeout: default_body_timeout(),
            max_connections: default_max_connections(),
        }
    }
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

/// `online_store:` in `quiver.yaml`. `type` names the backend; its other fields are the
/// backend's own section, which the backend's crate parses and checks when a store is
/// opened (`quiver_online::EmbeddedConfig` for `embedded`, `quiver_redis::RedisConfig`
/// for `redis`), so each backend's rules live in one place.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OnlineStoreSection {
    /// The backend: `embedded` or `redis`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The backend's fields, as written.
    #[serde(flatten)]
    pub fields: serde_json::Map<String, serde_json::Value>,
}

impl OnlineStoreSection {
    /// The section as a value the backend's configuration type deserializes from.
    pub fn fields_value(&self) -> serde_json::Value {
        serde_json::Value::Object(self.fields.clone())
    }
}

impl Default for OnlineStoreSection {
    fn default() -> Self {
        let mut fields = serde_json::Map::new();
        fields.insert("path".into(), "data/online".into());
        OnlineStoreSection {
            kind: "embedded".into(),
            fields,
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
        let cfg: RepoConfig =
            crate::yaml::from_str(text).map_err(|e| Error::Config(e.in_file(Self::FILE)))?;
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
        // A backend that keeps data in the repository names its directory `path`.
        if let Some(path) = self
            .online_store
            .fields
            .get("path")
            .and_then(|p| p.as_str())
        {
            dirs.push(PathBuf::from(path));
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
        assert_eq!(cfg.online_store, OnlineStoreSection::default());
        let dirs = ["data/registry", "data/offline", "data/online"].map(PathBuf::from);
        assert_eq!(cfg.data_dirs(), dirs);
    }

    #[test]
    fn parses_serving_options() {
        let cfg =
            RepoConfig::parse("project: p\nserving: { cache_ttl: 5s, max_entity_rows: 50 }\n")
                .unwrap();
        assert_eq!(cfg.serving.cache_ttl, Some(Duration::parse("5s").unwrap()));
        assert_eq!(cfg.serving.max_entity_rows, 50);
        assert_eq!(cfg.serving.header_timeout, Duration::from_secs(10));
        assert_eq!(cfg.serving.max_connections, 1024);
        let cfg = RepoConfig::parse(
            "project: p\nserving: { header_timeout: 2s, body_timeout: 500ms, max_connections: 64 }\n",
        )
        .unwrap();
        assert_eq!(cfg.serving.header_timeout, Duration::from_secs(2));
        assert_eq!(cfg.serving.body_timeout, Duration::from_micros(500_000));
        assert_eq!(cfg.serving.max_connections, 64);
        let e = RepoConfig::parse("project: p\nserving:\n  max_entity_rows: 0\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("quiver.yaml:3") && e.contains("must be at least 1"),
            "{e}"
        );
        assert_eq!(cfg.serving.cache_max_bytes, 64 << 20);
        assert_eq!(
            RepoConfig::parse("project: p\n").unwrap().serving.cache_ttl,
            None
        );
        let e = RepoConfig::parse("project: p\nserving: { cache: 5s }\n").unwrap_err();
        assert!(e.to_string().contains("cache"), "{e}");
    }

    #[test]
    fn rejects_unknown_fields() {
        let e = RepoConfig::parse("project: p\nregistyr: x\n").unwrap_err();
        assert!(e.to_string().contains("registyr"), "{e}");
        assert!(RepoConfig::parse("project: 'a b'\n").is_err());
        let e = RepoConfig::parse("project: p\nonline_store: { path: x }\n").unwrap_err();
        assert!(e.to_string().contains("type"), "{e}");
    }

    #[test]
    fn keeps_a_backend_section_as_written() {
        // The block form; the backend's crate parses the fields (quiver-redis checks
        // the addresses and the key TTL).
        let cfg = RepoConfig::parse(
            "project: p\nonline_store:\n  type: redis\n  cluster: [redis://a:1, b:2]\n  key_ttl: 30d\n",
        )
        .unwrap();
        assert_eq!(cfg.online_store.kind, "redis");
        assert_eq!(
            cfg.online_store.fields_value(),
            serde_json::json!({ "cluster": ["redis://a:1", "b:2"], "key_ttl": "30d" })
        );
        // No data directory for a network store: only the registry and the offline store.
        let dirs = ["data/registry", "data/offline"].map(PathBuf::from);
        assert_eq!(cfg.data_dirs(), dirs);
        let text = serde_saphyr::to_string(&cfg).unwrap();
        assert_eq!(RepoConfig::parse(&text).unwrap(), cfg, "{text}");
    }
}
