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
    pub online_store: OnlineStoreConfig,
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
}

fn default_max_future_skew() -> Duration {
    Duration::from_micros(5 * 60 * 1_000_000)
}

impl Default for WritesConfig {
    fn default() -> Self {
        WritesConfig {
            max_future_skew: default_max_future_skew(),
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
    /// The most entity rows one request may ask for (default 1000).
    #[serde(default = "default_max_entity_rows")]
    pub max_entity_rows: usize,
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

/// The online store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum OnlineStoreConfig {
    /// The embedded store in the directory `path` (relative to the repository).
    Embedded { path: String },
    /// A Redis server (`url`, e.g. `redis://127.0.0.1:6379`) or a Redis Cluster
    /// (`cluster`, a list of node addresses such as `redis://10.0.0.1:6379` or
    /// `10.0.0.1:6379`, any subset of the nodes): exactly one of the two. With `key_ttl`
    /// (e.g. `30d`), an entity's hash expires that long after its last write; `0` or no
    /// `key_ttl` keeps keys until deleted. Expiry only frees memory: serving computes
    /// freshness from the stored timestamps.
    Redis {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        url: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cluster: Option<Vec<String>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key_ttl: Option<Duration>,
    },
}

impl OnlineStoreConfig {
    /// Checks what serde cannot: a Redis store names exactly one of `url` or `cluster`,
    /// with well-formed addresses.
    pub fn validate(&self) -> Result<()> {
        match self {
            OnlineStoreConfig::Embedded { .. } => Ok(()),
            OnlineStoreConfig::Redis { url, cluster, .. } => validate_redis(url, cluster),
        }
    }
}

fn validate_redis(url: &Option<String>, cluster: &Option<Vec<String>>) -> Result<()> {
    const SCHEMES: [&str; 4] = ["redis://", "rediss://", "redis+unix://", "unix://"];
    match (url, cluster) {
        (Some(_), Some(_)) => Err(config_err(
            "online_store: a redis store takes exactly one of `url` (one server) or \
             `cluster` (the node addresses of a Redis Cluster), not both",
        )),
        (None, None) => Err(config_err(
            "online_store: a redis store needs `url` (one server, e.g. \
             redis://127.0.0.1:6379) or `cluster` (the node addresses of a Redis Cluster, \
             e.g. [redis://10.0.0.1:6379, redis://10.0.0.2:6379])",
        )),
        (Some(url), None) => {
            let scheme_only = SCHEMES.contains(&url.as_str());
            if scheme_only || !SCHEMES.iter().any(|s| url.starts_with(s)) {
                return Err(config_err(&format!(
                    "online_store: redis `url` {url:?} must be a Redis URL such as \
                     redis://127.0.0.1:6379 (redis://, rediss://, redis+unix:// or unix://)"
                )));
            }
            Ok(())
        }
        (None, Some(nodes)) => {
            if nodes.is_empty() {
                return Err(config_err(
                    "online_store: redis `cluster` lists no node addresses",
                ));
            }
            let bad = nodes.iter().find(|n| {
                let n = n.trim();
                n.is_empty() || n.contains(char::is_whitespace)
            });
            if let Some(bad) = bad {
                return Err(config_err(&format!(
                    "online_store: redis `cluster` node address {bad:?} is not an address \
                     (expected host:port or redis://host:port)"
                )));
            }
            Ok(())
        }
    }
}

fn config_err(msg: &str) -> Error {
    Error::Config(format!("{}: {msg}", RepoConfig::FILE))
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
        let cfg: RepoConfig =
            crate::yaml::from_str(text).map_err(|e| Error::Config(e.in_file(Self::FILE)))?;
        if !crate::resolve::is_identifier(&cfg.project) {
            return Err(Error::Config(format!(
                "{}: project {:?} must be an identifier (letters, digits, _)",
                Self::FILE,
                cfg.project
            )));
        }
        cfg.online_store.validate()?;
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
            // A network store: nothing on disk.
            OnlineStoreConfig::Redis { .. } => {}
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
    fn parses_serving_options() {
        let cfg =
            RepoConfig::parse("project: p\nserving: { cache_ttl: 5s, max_entity_rows: 50 }\n")
                .unwrap();
        assert_eq!(cfg.serving.cache_ttl, Some(Duration::parse("5s").unwrap()));
        assert_eq!(cfg.serving.max_entity_rows, 50);
        assert_eq!(cfg.serving.cache_max_bytes, 64 << 20);
        assert_eq!(
            RepoConfig::parse("project: p\n").unwrap().serving.cache_ttl,
            None
        );
        let e = RepoConfig::parse("project: p\nserving: { cache: 5s }\n").unwrap_err();
        assert!(e.to_string().contains("cache"), "{e}");
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

    #[test]
    fn parses_a_redis_server() {
        let cfg = RepoConfig::parse(
            "project: p\nonline_store: { type: redis, url: redis://127.0.0.1:6379 }\n",
        )
        .unwrap();
        assert_eq!(
            cfg.online_store,
            OnlineStoreConfig::Redis {
                url: Some("redis://127.0.0.1:6379".into()),
                cluster: None,
                key_ttl: None,
            }
        );
        // No data directory for a network store: only the registry and the offline store.
        let dirs = ["data/registry", "data/offline"].map(PathBuf::from);
        assert_eq!(cfg.data_dirs(), dirs);
        // The block form, with a key TTL; and a round trip through YAML.
        let cfg = RepoConfig::parse(
            "project: p\nonline_store:\n  type: redis\n  url: redis://cache:6379/2\n  key_ttl: 30d\n",
        )
        .unwrap();
        assert_eq!(
            cfg.online_store,
            OnlineStoreConfig::Redis {
                url: Some("redis://cache:6379/2".into()),
                cluster: None,
                key_ttl: Some(Duration::from_secs(30 * 86_400)),
            }
        );
        let text = serde_saphyr::to_string(&cfg).unwrap();
        assert_eq!(RepoConfig::parse(&text).unwrap(), cfg, "{text}");
    }

    #[test]
    fn parses_a_redis_cluster() {
        let cfg = RepoConfig::parse(
            "project: p\n\
             online_store:\n  type: redis\n  key_ttl: 12h\n  cluster:\n\
             \x20   - redis://10.0.0.1:6379\n    - redis://10.0.0.2:6379\n    - 10.0.0.3:6379\n",
        )
        .unwrap();
        assert_eq!(
            cfg.online_store,
            OnlineStoreConfig::Redis {
                url: None,
                cluster: Some(vec![
                    "redis://10.0.0.1:6379".into(),
                    "redis://10.0.0.2:6379".into(),
                    "10.0.0.3:6379".into(),
                ]),
                key_ttl: Some(Duration::from_secs(12 * 3_600)),
            }
        );
        let cfg = RepoConfig::parse(
            "project: p\nonline_store: { type: redis, cluster: [redis://127.0.0.1:7000, redis://127.0.0.1:7001] }\n",
        )
        .unwrap();
        assert!(matches!(
            cfg.online_store,
            OnlineStoreConfig::Redis { cluster: Some(ref n), url: None, key_ttl: None } if n.len() == 2
        ));
    }

    #[test]
    fn rejects_bad_redis_configs() {
        let err = |yaml: &str| {
            RepoConfig::parse(&format!("project: p\nonline_store: {yaml}\n"))
                .unwrap_err()
                .to_string()
        };
        let e = err("{ type: redis }");
        assert!(e.contains("needs `url`") && e.contains("`cluster`"), "{e}");
        let e = err("{ type: redis, url: redis://a:6379, cluster: [redis://b:6379] }");
        assert!(e.contains("exactly one of `url`"), "{e}");
        let e = err("{ type: redis, cluster: [] }");
        assert!(e.contains("no node addresses"), "{e}");
        let e = err("{ type: redis, url: 127.0.0.1:6379 }");
        assert!(e.contains("must be a Redis URL"), "{e}");
        let e = err("{ type: redis, url: redis://a:6379, ttl: 1d }");
        assert!(e.contains("ttl"), "{e}");
        let e = err("{ type: redis, url: redis://a:6379, key_ttl: forever }");
        assert!(e.contains("forever"), "{e}");
        let e = err("{ type: redis, url: redis://a:6379, path: data/online }");
        assert!(e.contains("path"), "{e}");
    }
}
