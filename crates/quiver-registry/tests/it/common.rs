//! What the tests share: a repository's fixture data and resolving a repository as
//! `quiver plan` does.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow::array::TimestampMicrosecondArray;
use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use quiver_core::model::{FileFormat, Source};
use quiver_registry::{
    resolve, Definitions, RegistryState, RepoConfig, SourceSchema, SourceSchemas,
};

/// The time repositories are resolved at (2024-01-01T00:00:00Z).
pub const NOW: i64 = 1_704_067_200_000_000;

/// Loads the repository at `repo` and resolves it against its source files, with the
/// state of a previous apply.
pub fn load_and_resolve(
    repo: &Path,
    previous: Option<&RegistryState>,
) -> quiver_registry::Result<RegistryState> {
    let config = RepoConfig::load(repo)?;
    let defs = Definitions::load(repo, &config)?;
    resolve(&config.project, &defs, &FileSchemas { repo }, previous, NOW)
}

/// Reads a source's schema from its file, as the offline plane does: Parquet with its own
/// types, CSV with types inferred (so untyped).
pub struct FileSchemas<'a> {
    pub repo: &'a Path,
}

impl SourceSchemas for FileSchemas<'_> {
    fn schema(&self, source: &Source) -> Result<SourceSchema, String> {
        let Source::File(f) = source else {
            return Err("not a file source".into());
        };
        let path = self.repo.join(&f.path);
        let format = f
            .format
            .or_else(|| FileFormat::from_path(&f.path))
            .ok_or_else(|| format!("cannot tell the format of {}", f.path))?;
        let file = File::open(&path).map_err(|_| format!("{} does not exist", f.path))?;
        match format {
            FileFormat::Parquet => Ok(SourceSchema {
                schema: ParquetRecordBatchReaderBuilder::try_new(file)
                    .map_err(|e| format!("{}: not a readable Parquet file: {e}", f.path))?
                    .schema()
                    .clone(),
                typed: true,
            }),
            FileFormat::Csv => {
                let (schema, _) = arrow::csv::reader::Format::default()
                    .with_header(true)
                    .infer_schema(file, Some(1000))
                    .map_err(|e| format!("{}: {e}", f.path))?;
                Ok(SourceSchema {
                    schema: Arc::new(schema),
                    typed: false,
                })
            }
        }
    }
}

/// The data every case can read: `data/stats.parquet` with typed columns (a case may add
/// its own files, CSV ones included, under `data/`).
pub fn write_fixture_data(repo: &Path) {
    let dir = repo.join("data");
    std::fs::create_dir_all(&dir).unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("driver_id", DataType::Int64, false),
        Field::new("customer_id", DataType::Utf8, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("rate", DataType::Float64, true),
        Field::new("city", DataType::Utf8, true),
        Field::new("trips", DataType::Int64, true),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(vec![1, 2])),
        Arc::new(StringArray::from(vec!["c1", "c2"])),
        Arc::new(
            TimestampMicrosecondArray::from(vec![NOW - 7_200_000_000, NOW - 3_600_000_000])
                .with_timezone("UTC"),
        ),
        Arc::new(Float64Array::from(vec![0.5, 0.7])),
        Arc::new(StringArray::from(vec!["a", "b"])),
        Arc::new(Int64Array::from(vec![10, 20])),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
    let file = File::create(dir.join("stats.parquet")).unwrap();
    let mut writer = ArrowWriter::try_new(file, schema, None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}
