//! [`FeatureStore`]: a repository opened for use.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::DataType;
use quiver_core::model::{FileFormat, ResolvedView, Source};
use quiver_core::time::now;
use quiver_offline::files;
use quiver_offline::normalize::{key_arrow_type, normalize_batch, Origin};
use quiver_offline::{IngestStats, OfflineStore};
use quiver_online::{EmbeddedStore, OnlineStore};
use quiver_registry::config::{OfflineStoreConfig, OnlineStoreConfig};
use quiver_registry::{
    Definitions, Plan, Registry, RegistryState, RepoConfig, SourceSchema, SourceSchemas,
};

use crate::{Error, Result};

/// A feature repository opened for use: its configuration, registry and stores.
pub struct FeatureStore {
    repo: PathBuf,
    config: RepoConfig,
    registry: Registry,
}

/// Reads source schemas relative to a repository.
struct RepoSources<'a> {
    repo: &'a Path,
}

impl SourceSchemas for RepoSources<'_> {
    fn schema(&self, source: &Source) -> std::result::Result<SourceSchema, String> {
        let Source::File(f) = source;
        let path = self.repo.join(&f.path);
        let all = files::expand(&path).map_err(|e| e.to_string())?;
        let first = &all[0];
        let format = files::format_of(first, f.format).map_err(|e| e.to_string())?;
        let schema = files::read_schema(first, format).map_err(|e| e.to_string())?;
        Ok(SourceSchema {
            schema,
            typed: format == FileFormat::Parquet,
        })
    }
}

impl FeatureStore {
    /// Opens the repository at `repo` (a directory with `quiver.yaml`).
    pub fn open(repo: impl AsRef<Path>) -> Result<Self> {
        let repo = repo.as_ref().to_path_buf();
        let config = RepoConfig::load(&repo)?;
        let registry = Registry::new(repo.join(&config.registry));
        Ok(FeatureStore {
            repo,
            config,
            registry,
        })
    }

    /// The repository directory.
    pub fn repo(&self) -> &Path {
        &self.repo
    }

    /// The repository configuration.
    pub fn config(&self) -> &RepoConfig {
        &self.config
    }

    /// The project name.
    pub fn project(&self) -> &str {
        &self.config.project
    }

    /// The registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The registered state (after `apply`).
    pub fn state(&self) -> Result<RegistryState> {
        Ok(self.registry.load_required()?)
    }

    /// Validates the repository's definitions and computes what `apply` would change,
    /// with the state it would write.
    pub fn plan(&self) -> Result<(Plan, RegistryState)> {
        let defs = Definitions::load(&self.repo, &self.config)?;
        let previous = self.registry.load()?;
        let next = quiver_registry::resolve(
            &self.config.project,
            &defs,
            &RepoSources { repo: &self.repo },
            previous.as_ref(),
            now(),
        )?;
        Ok((Plan::diff(previous.as_ref(), &next), next))
    }

    /// Validates everything, then writes the registry atomically. Nothing is written
    /// when any definition is invalid.
    pub fn apply(&self) -> Result<Plan> {
        let _lock = self.registry.lock()?;
        let (plan, next) = self.plan()?;
        if !plan.is_empty() {
            self.registry.save(&next)?;
        }
        Ok(plan)
    }

    /// Applies a change to the stored registry under its lock.
    pub(crate) fn update_state(&self, f: impl FnOnce(&mut RegistryState)) -> Result<()> {
        let _lock = self.registry.lock()?;
        let mut state = self.registry.load_required()?;
        f(&mut state);
        self.registry.save(&state)?;
        Ok(())
    }

    /// The offline store.
    pub fn offline(&self) -> Result<OfflineStore> {
        let OfflineStoreConfig::Delta { path } = &self.config.offline_store;
        Ok(OfflineStore::open(self.repo.join(path))?)
    }

    /// The online store, opened from async code (network backends connect here, and
    /// their connections live on the runtime that opened them), with the hot-key cache
    /// in front when `serving.cache_ttl` is set.
    pub async fn online_async(&self) -> Result<Arc<dyn OnlineStore>> {
        let store: Arc<dyn OnlineStore> = match &self.config.online_store {
            OnlineStoreConfig::Embedded { path } => {
                Arc::new(EmbeddedStore::open(&self.repo.join(path))?)
            }
            OnlineStoreConfig::Redis {
                url,
                cluster,
                key_ttl,
            } => {
                let cfg = quiver_redis::RedisConfig::from_repo_config(
                    url.clone(),
                    cluster.clone(),
                    *key_ttl,
                )?;
                Arc::new(quiver_redis::RedisStore::connect(&cfg).await?)
            }
        };
        Ok(match self.config.serving.cache_ttl {
            Some(ttl) if !ttl.is_zero() => Arc::new(quiver_online::CachedStore::new(
                store,
                std::time::Duration::from_micros(ttl.micros() as u64),
                self.config.serving.cache_max_bytes,
            )),
            _ => store,
        })
    }

    /// The resolved view `name`.
    pub fn view(&self, state: &RegistryState, name: &str) -> Result<ResolvedView> {
        Ok(state.resolved_view(name)?)
    }

    /// Loads the batch sources of `views` (all views with an offline store when empty)
    /// into the offline store. Each view's source is read and validated completely
    /// before anything is written; re-running leaves one copy of each row.
    pub fn ingest(&self, views: &[String]) -> Result<Vec<(String, IngestStats)>> {
        let state = self.state()?;
        let names: Vec<String> = if views.is_empty() {
            state
                .feature_views
                .values()
                .filter(|v| v.def.offline || v.def.online)
                .map(|v| v.def.name.clone())
                .collect()
        } else {
            for v in views {
                state.view(v)?;
            }
            views.to_vec()
        };
        let offline = self.offline()?;
        let mut out = Vec::new();
        for name in names {
            let view = state.resolved_view(&name)?;
            let record = state.view(&name)?;
            let Source::File(src) = &state.source(&record.def.source)?.def;
            let path = self.repo.join(&src.path);
            let mut batches = Vec::new();
            for file in files::expand(&path)? {
                let format = files::format_of(&file, src.format)?;
                let csv_schema = match format {
                    FileFormat::Parquet => None,
                    FileFormat::Csv => {
                        let inferred = files::read_schema(&file, format)?;
                        let mut overrides: Vec<(String, DataType)> = view
                            .join_keys
                            .iter()
                            .map(|k| (k.name.clone(), key_arrow_type(&k.dtype)))
                            .collect();
                        overrides.extend(
                            view.features
                                .iter()
                                .map(|f| (f.name.clone(), f.dtype.to_arrow())),
                        );
                        overrides.push((src.timestamp_field.clone(), DataType::Utf8));
                        if let Some(c) = &src.created_timestamp_field {
                            overrides.push((c.clone(), DataType::Utf8));
                        }
                        Some(files::csv_schema_with(&inferred, &overrides))
                    }
                };
                let display = file
                    .strip_prefix(&self.repo)
                    .unwrap_or(&file)
                    .display()
                    .to_string();
                let mut first_row = 1;
                for b in files::read_file(&file, format, csv_schema)? {
                    let origin = Origin {
                        file: &display,
                        first_row,
                    };
                    batches.push(normalize_batch(
                        &b,
                        &view,
                        &src.timestamp_field,
                        src.created_timestamp_field.as_deref(),
                        &origin,
                    )?);
                    first_row += b.num_rows();
                }
            }
            let stats = offline.ingest(&view, batches)?;
            if let Some(max) = stats.max_event_ts {
                self.update_state(|s| {
                    if let Some(v) = s.feature_views.get_mut(&name) {
                        v.ingested_until = Some(v.ingested_until.map_or(max, |m| m.max(max)));
                    }
                })?;
            }
            out.push((name, stats));
        }
        Ok(out)
    }

    /// Starts a historical retrieval.
    pub fn historical(&self) -> crate::HistoricalBuilder<'_> {
        crate::HistoricalBuilder::new(self)
    }

    /// Starts an online read.
    pub fn online_features(&self) -> crate::OnlineBuilder<'_> {
        crate::OnlineBuilder::new(self)
    }

    /// Errors when `views` names a view that does not exist.
    pub(crate) fn check_views(state: &RegistryState, views: &[String]) -> Result<()> {
        for v in views {
            state.view(v)?;
        }
        Ok(())
    }
}

impl From<&str> for Error {
    fn from(s: &str) -> Self {
        Error::Invalid(s.to_string())
    }
}
