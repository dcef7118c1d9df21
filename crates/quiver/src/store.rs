//! [`FeatureStore`]: a repository opened for use.
//!
//! An opened store keeps what every call needs and reuses it: the registry snapshot (with
//! the read plans compiled from it, see [`Snapshot`]), the offline store and one online
//! store connection (a Redis connection set, or the LMDB environment), opened on first
//! use. It notices a new `apply` — through itself at once, from another process within
//! [`REGISTRY_RECHECK`] — and serves the previous snapshot while a new one is invalid.
//!
//! Everything that does I/O is `async`. Blocking work (reading and decoding source
//! files, sorting, registry writes with their fsync) runs on tokio's blocking pool
//! ([`blocking`]), never on a runtime worker.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Instant, SystemTime};

use quiver_core::model::Source;
use quiver_core::time::now;
use quiver_offline::{files, OfflineStore};
use quiver_online::OnlineStore;
use quiver_registry::config::{OfflineStoreConfig, OnlineStoreSection};
use quiver_registry::{
    Definitions, Plan, Registry, RegistryState, RepoConfig, SourceSchema, SourceSchemas,
};
use tokio::sync::OnceCell;

use crate::snapshot::Snapshot;
use crate::{Error, Result};

/// How long a registry snapshot is used before the registry file is looked at again
/// (one `stat`): the longest an `apply` by another process goes unnoticed.
pub const REGISTRY_RECHECK: std::time::Duration = std::time::Duration::from_millis(100);

/// A feature repository opened for use. Cheap to clone: clones share the snapshot and
/// the store connections.
#[derive(Clone)]
pub struct FeatureStore {
    inner: Arc<Inner>,
}

struct Inner {
    repo: PathBuf,
    config: RepoConfig,
    backend: OnlineBackend,
    registry: Registry,
    offline: OfflineStore,
    online: OnceCell<Arc<dyn OnlineStore>>,
    snapshot: RwLock<Option<Arc<Snapshot>>>,
    /// The stamp of a registry file that loaded but could not serve (see
    /// [`Snapshot::check`]): not tried again until the file changes.
    rejected: std::sync::Mutex<Stamp>,
    /// When the registry file was last looked at, in µs since `epoch`.
    checked: AtomicU64,
    epoch: Instant,
}

/// The online store of `quiver.yaml`, its section parsed by the backend's own crate.
#[derive(Clone, Debug, PartialEq)]
pub enum OnlineBackend {
    Embedded(quiver_online::EmbeddedConfig),
    Redis(quiver_redis::RedisConfig),
}

impl OnlineBackend {
    /// Parses `online_store:` with the configuration type of the backend it names.
    pub fn from_section(section: &OnlineStoreSection) -> Result<Self> {
        let err = |e: &dyn std::fmt::Display| {
            quiver_registry::Error::Config(format!(
                "{}: online_store ({}): {e}",
                RepoConfig::FILE,
                section.kind
            ))
        };
        let fields = section.fields_value();
        Ok(match section.kind.as_str() {
            "embedded" => {
                OnlineBackend::Embedded(serde_json::from_value(fields).map_err(|e| err(&e))?)
            }
            "redis" => OnlineBackend::Redis(serde_json::from_value(fields).map_err(|e| err(&e))?),
            other => {
                return Err(quiver_registry::Error::Config(format!(
                    "{}: online_store: unknown type '{other}' (expected embedded or redis)",
                    RepoConfig::FILE
                ))
                .into())
            }
        })
    }
}

/// What identifies one version of the registry file.
pub(crate) type Stamp = Option<(SystemTime, u64)>;

fn stamp_of(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Runs blocking work (file I/O, decoding, sorting, fsync) on tokio's blocking pool.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("a blocking task failed: {e}")))?
}

/// Reads source schemas relative to a repository.
struct RepoSources<'a> {
    repo: &'a Path,
}

impl SourceSchemas for RepoSources<'_> {
    fn schema(&self, source: &Source) -> std::result::Result<SourceSchema, String> {
        let Source::File(f) = source else {
            return Err(format!("source '{}' is not read from files", source.name()));
        };
        let path = self.repo.join(&f.path);
        let all = files::expand(&path).map_err(|e| e.to_string())?;
        let first = &all[0];
        let format = files::format_of(first, f.format).map_err(|e| e.to_string())?;
        let schema = files::read_schema(first, format).map_err(|e| e.to_string())?;
        Ok(SourceSchema {
            schema,
            typed: format == quiver_core::model::FileFormat::Parquet,
        })
    }
}

impl FeatureStore {
    /// Opens the repository at `repo` (a directory with `quiver.yaml`). Reads only
    /// `quiver.yaml`; the registry and the stores are opened on first use.
    pub fn open(repo: impl AsRef<Path>) -> Result<Self> {
        let repo = repo.as_ref().to_path_buf();
        let config = RepoConfig::load(&repo)?;
        let backend = OnlineBackend::from_section(&config.online_store)?;
        let registry = Registry::new(repo.join(&config.registry));
        let OfflineStoreConfig::Delta { path } = &config.offline_store;
        let offline = OfflineStore::open(repo.join(path))?;
        Ok(FeatureStore {
            inner: Arc::new(Inner {
                repo,
                config,
                backend,
                registry,
                offline,
                online: OnceCell::new(),
                snapshot: RwLock::new(None),
                rejected: std::sync::Mutex::new(None),
                checked: AtomicU64::new(0),
                epoch: Instant::now(),
            }),
        })
    }

    /// The repository directory.
    pub fn repo(&self) -> &Path {
        &self.inner.repo
    }

    /// The repository configuration.
    pub fn config(&self) -> &RepoConfig {
        &self.inner.config
    }

    /// The project name.
    pub fn project(&self) -> &str {
        &self.inner.config.project
    }

    /// The registry.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// The offline store.
    pub fn offline(&self) -> &OfflineStore {
        &self.inner.offline
    }

    fn registry_file(&self) -> PathBuf {
        self.inner.registry.path().join("registry.json")
    }

    fn since_epoch(&self) -> u64 {
        self.inner.epoch.elapsed().as_micros() as u64 + 1
    }

    /// The registry as currently applied, with its compiled read plans. Looks at the
    /// registry file at most every [`REGISTRY_RECHECK`]; when it changed and no longer
    /// loads, the previous snapshot stays in use.
    pub fn snapshot(&self) -> Result<Arc<Snapshot>> {
        let current = self.inner.snapshot.read().expect("not poisoned").clone();
        if let Some(s) = &current {
            let last = self.inner.checked.load(Ordering::Relaxed);
            if self.since_epoch().saturating_sub(last) < REGISTRY_RECHECK.as_micros() as u64 {
                return Ok(s.clone());
            }
        }
        match self.reload(current.as_ref()) {
            Ok(s) => Ok(s),
            Err(e) => match current {
                Some(s) => {
                    tracing::warn!(error = %e, "the registry changed but does not load; \
                                                 keeping the previous one");
                    Ok(s)
                }
                None => Err(e),
            },
        }
    }

    /// Loads the registry again if its file changed; returns whether it did.
    pub fn refresh(&self) -> Result<bool> {
        let current = self.inner.snapshot.read().expect("not poisoned").clone();
        let next = self.reload(current.as_ref())?;
        Ok(current.is_none_or(|c| !Arc::ptr_eq(&c, &next)))
    }

    fn reload(&self, current: Option<&Arc<Snapshot>>) -> Result<Arc<Snapshot>> {
        let stamp = stamp_of(&self.registry_file());
        self.inner
            .checked
            .store(self.since_epoch(), Ordering::Relaxed);
        if let Some(c) = current {
            if c.stamp == stamp {
                return Ok(c.clone());
            }
            if stamp.is_some() && *self.inner.rejected.lock().expect("not poisoned") == stamp {
                return Err(Error::Invalid(
                    "the registry file changed but was rejected (see the earlier warning)".into(),
                ));
            }
        }
        let state = self.inner.registry.load_required()?;
        let next = Arc::new(Snapshot::new(state, stamp));
        // A registry replacing one in use must serve everything it declares; the first
        // one loads as it is (a plan that does not compile fails only its own reads).
        if current.is_some() {
            if let Err(e) = next.check() {
                *self.inner.rejected.lock().expect("not poisoned") = stamp;
                return Err(e);
            }
        }
        *self.inner.snapshot.write().expect("not poisoned") = Some(next.clone());
        Ok(next)
    }

    /// The registered state (after `apply`).
    pub fn state(&self) -> Result<Arc<RegistryState>> {
        Ok(self.snapshot()?.state.clone())
    }

    /// Validates the repository's definitions and computes what `apply` would change,
    /// with the state it would write.
    pub async fn plan(&self) -> Result<(Plan, RegistryState)> {
        let this = self.clone();
        blocking(move || this.plan_blocking()).await
    }

    fn plan_blocking(&self) -> Result<(Plan, RegistryState)> {
        let defs = Definitions::load(self.repo(), self.config())?;
        let previous = self.inner.registry.load()?;
        let next = quiver_registry::resolve(
            self.project(),
            &defs,
            &RepoSources { repo: self.repo() },
            previous.as_ref(),
            now(),
        )?;
        Ok((Plan::diff(previous.as_ref(), &next), next))
    }

    /// Validates everything, then writes the registry atomically. Nothing is written
    /// when any definition is invalid.
    pub async fn apply(&self) -> Result<Plan> {
        let this = self.clone();
        let plan = blocking(move || {
            let _lock = this.inner.registry.lock()?;
            let (plan, next) = this.plan_blocking()?;
            if !plan.is_empty() {
                this.inner.registry.save(&next)?;
            }
            Ok(plan)
        })
        .await?;
        self.refresh()?;
        Ok(plan)
    }

    /// Applies a change to the stored registry under its lock.
    pub(crate) async fn update_state(
        &self,
        f: impl FnOnce(&mut RegistryState) + Send + 'static,
    ) -> Result<()> {
        let this = self.clone();
        blocking(move || {
            let _lock = this.inner.registry.lock()?;
            let mut state = this.inner.registry.load_required()?;
            f(&mut state);
            // A version that got data retires the earlier ones it replaces.
            state.prune_versions();
            this.inner.registry.save(&state)?;
            Ok(())
        })
        .await?;
        self.refresh()?;
        Ok(())
    }

    /// The online store, connected on first use and shared by every later call (and
    /// every clone of this store), with the hot-key cache in front when
    /// `serving.cache_ttl` is set. Network backends connect on the runtime of the first
    /// call.
    pub async fn online(&self) -> Result<Arc<dyn OnlineStore>> {
        let store = self
            .inner
            .online
            .get_or_try_init(|| async { self.connect_online().await })
            .await?;
        Ok(store.clone())
    }

    async fn connect_online(&self) -> Result<Arc<dyn OnlineStore>> {
        let store: Arc<dyn OnlineStore> = match &self.inner.backend {
            OnlineBackend::Embedded(cfg) => {
                let (cfg, repo) = (cfg.clone(), self.repo().to_path_buf());
                Arc::new(blocking(move || Ok(cfg.open(&repo)?)).await?)
            }
            OnlineBackend::Redis(cfg) => Arc::new(quiver_redis::RedisStore::connect(cfg).await?),
        };
        Ok(match self.config().serving.cache_ttl {
            Some(ttl) if !ttl.is_zero() => Arc::new(quiver_online::CachedStore::new(
                store,
                std::time::Duration::from_micros(ttl.micros() as u64),
                self.config().serving.cache_max_bytes,
            )),
            _ => store,
        })
    }

    /// Starts loading batch sources into the offline store.
    pub fn ingest(&self) -> crate::IngestBuilder {
        crate::IngestBuilder::new(self.clone())
    }

    /// Starts a historical retrieval.
    pub fn historical(&self) -> crate::HistoricalBuilder {
        crate::HistoricalBuilder::new(self.clone())
    }

    /// Starts a materialization of `[start, end)`.
    pub fn materialize(
        &self,
        start: quiver_core::Timestamp,
        end: quiver_core::Timestamp,
    ) -> crate::MaterializeBuilder {
        crate::MaterializeBuilder::new(self.clone(), Some(start), end)
    }

    /// Starts a backfill of aggregated views: their tiles overlapping `[start, end)`
    /// (back to the view's tile retention before `end`), recomputed whole from the
    /// offline events and written over the stored ones; rerunning it leaves the same
    /// bytes. Every aggregated view by default.
    pub fn backfill(
        &self,
        start: quiver_core::Timestamp,
        end: quiver_core::Timestamp,
    ) -> crate::MaterializeBuilder {
        crate::MaterializeBuilder::new(self.clone(), Some(start), end).backfill()
    }

    /// Starts a materialization up to `end`, each view from where its last run ended.
    pub fn materialize_incremental(
        &self,
        end: quiver_core::Timestamp,
    ) -> crate::MaterializeBuilder {
        crate::MaterializeBuilder::new(self.clone(), None, end)
    }

    /// Starts an online read.
    pub fn online_features(&self) -> crate::OnlineBuilder {
        crate::OnlineBuilder::new(self.clone())
    }

    /// Starts a push of `rows` (name a feature view or a push source on the builder).
    pub fn push(&self, rows: arrow::array::RecordBatch) -> crate::PushBuilder {
        crate::PushBuilder::new(self.clone(), rows)
    }

    /// Errors when `views` names a view that does not exist.
    pub(crate) fn check_views(state: &RegistryState, views: &[String]) -> Result<()> {
        for v in views {
            state.view(v)?;
        }
        Ok(())
    }
}
