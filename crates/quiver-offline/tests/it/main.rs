//! Integration tests of quiver-offline: source files through the registry's inference,
//! normalization, ingest and historical retrieval.

mod bad_files;
mod csv_keys;
mod parquet_out;
mod time_rounding;

use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use arrow::datatypes::DataType;
use quiver_core::model::{FileFormat, ResolvedView, Source};
use quiver_offline::files;
use quiver_offline::normalize::{key_csv_type, normalize, Origin};
use quiver_offline::{IngestStats, OfflineStore};
use quiver_registry::{resolve, Definitions, RegistryState, SourceSchema, SourceSchemas};

/// Source schemas as a repository reads them: the first file of each source, CSV typed
/// by inference.
pub struct RepoSources<'a>(pub &'a Path);

impl SourceSchemas for RepoSources<'_> {
    fn schema(&self, source: &Source) -> Result<SourceSchema, String> {
        let Source::File(f) = source else {
            return Err("not a file source".into());
        };
        let all = files::expand(&self.0.join(&f.path)).map_err(|e| e.to_string())?;
        let format = files::format_of(&all[0], f.format).map_err(|e| e.to_string())?;
        let schema = files::read_schema(&all[0], format).map_err(|e| e.to_string())?;
        Ok(SourceSchema {
            schema,
            typed: format == FileFormat::Parquet,
        })
    }
}

/// Resolves the definitions in `yaml` against the sources under `repo`.
pub fn resolve_repo(repo: &Path, yaml: &str) -> RegistryState {
    let mut defs = Definitions::default();
    defs.add_file("features.yaml", yaml)
        .expect("definitions parse");
    resolve("test", &defs, &RepoSources(repo), None, 0)
        .unwrap_or_else(|e| panic!("definitions resolve: {e}"))
}

/// Ingests every file of `view`'s source into `store` as a repository does: CSV join
/// keys read as text (integers checked to be plain), features as registered, times as
/// text, the time contract's normalization, then one ingest.
pub fn ingest_source(
    repo: &Path,
    state: &RegistryState,
    store: &OfflineStore,
    view: &str,
) -> quiver_offline::Result<IngestStats> {
    let resolved: ResolvedView = state.resolved_view(view).expect("view resolves");
    let record = state.view(view).expect("view exists");
    let src = state
        .file_source(&record.def.source)
        .expect("a file source");
    let mut batches = Vec::new();
    for file in files::expand(&repo.join(&src.path))? {
        let format = files::format_of(&file, src.format)?;
        let csv_schema = match format {
            FileFormat::Parquet => None,
            FileFormat::Csv => {
                let inferred = files::read_schema(&file, format)?;
                let mut overrides: Vec<(String, DataType)> = resolved
                    .join_keys
                    .iter()
                    .map(|k| (k.name.clone(), key_csv_type(&k.dtype)))
                    .collect();
                overrides.extend(
                    resolved
                        .features
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
        let name = file.display().to_string();
        let mut first_row = 1;
        for b in files::read_file(&file, format, csv_schema)? {
            let origin = Origin {
                file: &name,
                first_row,
            };
            batches.push(normalize(
                &b,
                &resolved,
                &src.timestamp_field,
                src.created_timestamp_field.as_deref(),
                &origin,
            )?);
            first_row += b.num_rows();
        }
    }
    block_on(store.ingest(&resolved, batches))
}

/// Runs an async store operation from a test.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("test file written");
    p
}

/// One batch of all `batches` (which share a schema).
pub fn concat(batches: &[RecordBatch]) -> RecordBatch {
    arrow::compute::concat_batches(&batches[0].schema(), batches).expect("batches concatenate")
}
