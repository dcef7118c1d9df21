//! Ingest: `store.ingest().views(["v"]).await` loads feature views' batch sources into
//! the offline store, through the one write path ([`crate::write`]). Each view's source
//! is read and validated completely before anything is written; re-running leaves one
//! copy of each row.

use std::future::{Future, IntoFuture};
use std::pin::Pin;

use quiver_offline::normalize::Origin;
use quiver_offline::{files, IngestStats};
use tracing::Instrument;

use crate::store::blocking;
use crate::write::{self, Input, Targets};
use crate::{FeatureStore, Result};

/// Loads batch sources into the offline store.
#[must_use = "an ingest does nothing until awaited"]
pub struct IngestBuilder {
    store: FeatureStore,
    views: Vec<String>,
}

impl IngestBuilder {
    pub(crate) fn new(store: FeatureStore) -> Self {
        IngestBuilder {
            store,
            views: Vec::new(),
        }
    }

    /// The views to ingest (default: every view with an offline or online store).
    pub fn views<S: Into<String>>(mut self, views: impl IntoIterator<Item = S>) -> Self {
        self.views.extend(views.into_iter().map(Into::into));
        self
    }

    async fn run(self) -> Result<Vec<(String, IngestStats)>> {
        let store = self.store;
        let state = store.state()?;
        let names: Vec<String> = if self.views.is_empty() {
            state
                .feature_views
                .values()
                .filter(|v| v.def.offline || v.def.online)
                .map(|v| v.def.name.clone())
                .collect()
        } else {
            FeatureStore::check_views(&state, &self.views)?;
            self.views
        };
        let mut out = Vec::new();
        for name in names {
            let span = tracing::info_span!("ingest", view = %name);
            let stats = ingest_view(&store, &state, &name).instrument(span).await?;
            out.push((name, stats));
        }
        Ok(out)
    }
}

async fn ingest_view(
    store: &FeatureStore,
    state: &quiver_registry::RegistryState,
    name: &str,
) -> Result<IngestStats> {
    let view = state.resolved_view(name)?;
    let record = state.view(name)?;
    let src = state.file_source(&record.def.source)?;
    let (src, repo, v) = (src.clone(), store.repo().to_path_buf(), view.clone());
    let not_after = Input::not_after(store.config(), quiver_core::time::now());
    // Read and validate the whole source before writing anything.
    let batches = blocking(move || {
        let types = write::source_types(
            &v,
            &src.timestamp_field,
            src.created_timestamp_field.as_deref(),
        );
        let mut batches = Vec::new();
        for file in files::expand(&repo.join(&src.path))? {
            let format = files::format_of(&file, src.format)?;
            let display = file
                .strip_prefix(&repo)
                .unwrap_or(&file)
                .display()
                .to_string();
            let mut first_row = 1;
            for b in write::read_typed(&file, format, &types)? {
                let input = Input {
                    timestamp_field: &src.timestamp_field,
                    created_field: src.created_timestamp_field.as_deref(),
                    origin: Origin {
                        file: &display,
                        first_row,
                    },
                    not_after,
                };
                batches.push(write::validate(&v, &b, &input)?);
                first_row += b.num_rows();
            }
        }
        Ok(batches)
    })
    .await?;
    let stats = write::write(
        store,
        &view,
        batches,
        Targets {
            online: false,
            offline: true,
        },
    )
    .await?
    .offline
    .unwrap_or_default();
    tracing::info!(
        rows = stats.rows_in,
        partitions = stats.partitions,
        "ingested"
    );
    Ok(stats)
}

impl IntoFuture for IngestBuilder {
    type Output = Result<Vec<(String, IngestStats)>>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.run())
    }
}
