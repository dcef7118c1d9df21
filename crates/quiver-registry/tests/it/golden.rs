//! Golden files for definition errors: every directory under `tests/golden/` is a small
//! repository with (usually) one mistake, and its `expected.txt` holds what resolving it
//! reports, exactly as rendered. `UPDATE_GOLDEN=1 cargo nextest run -p quiver-registry`
//! rewrites the expected files from the current output (review the diff before
//! committing it). See `tests/golden/README.md` for the layout of a case.

use std::fmt::Write as _;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::TimestampMicrosecondArray;
use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use quiver_core::model::{FileFormat, Source};
use quiver_registry::{
    resolve, Definitions, Plan, RegistryState, RepoConfig, SourceSchema, SourceSchemas,
};

/// The file of a case that holds its expected output; every other file is the repository.
const EXPECTED: &str = "expected.txt";

/// The time every case is resolved at (2024-01-01T00:00:00Z).
const NOW: i64 = 1_704_067_200_000_000;

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

#[test]
fn definition_errors_match_golden_files() {
    let update = std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(cases_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(cases.len() >= 12, "only {} golden cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let repo = tempfile::tempdir().unwrap();
        write_fixture_data(repo.path());
        copy_case(case, repo.path());
        let got = render(repo.path());
        let expected_path = case.join(EXPECTED);
        if update {
            std::fs::write(&expected_path, &got).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (UPDATE_GOLDEN=1 writes it)",
                expected_path.display()
            )
        });
        if got != expected {
            failures.push(format!(
                "case {name}:\n--- expected ({})\n{expected}--- got\n{got}",
                expected_path.display()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} golden case(s) differ (UPDATE_GOLDEN=1 rewrites the expected files):\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// Loads and resolves the repository at `repo` as `quiver plan` would, and renders the
/// outcome: the error as displayed, or for a valid repository the plan and the key types.
fn render(repo: &Path) -> String {
    match load_and_resolve(repo) {
        Err(e) => format!("{e}\n"),
        Ok(state) => {
            let mut out = format!("ok\n{}", Plan::diff(None, &state));
            for (name, e) in &state.entities {
                let keys: Vec<String> = e
                    .join_keys
                    .iter()
                    .map(|k| format!("{} {}", k.name, k.dtype))
                    .collect();
                writeln!(out, "entity '{name}': {}", keys.join(", ")).unwrap();
            }
            for (name, o) in &state.on_demand_feature_views {
                let deps: Vec<String> = o.dependencies.iter().map(|d| d.to_string()).collect();
                writeln!(
                    out,
                    "on-demand feature view '{name}': request fields [{}], dependencies [{}]",
                    o.request_fields.join(", "),
                    deps.join(", ")
                )
                .unwrap();
            }
            out
        }
    }
}

fn load_and_resolve(repo: &Path) -> quiver_registry::Result<RegistryState> {
    let config = RepoConfig::load(repo)?;
    let defs = Definitions::load(repo, &config)?;
    resolve(&config.project, &defs, &FileSchemas { repo }, None, NOW)
}

/// Reads a source's schema from its file, as the offline plane does: Parquet with its own
/// types, CSV with types inferred (so untyped).
struct FileSchemas<'a> {
    repo: &'a Path,
}

impl SourceSchemas for FileSchemas<'_> {
    fn schema(&self, source: &Source) -> Result<SourceSchema, String> {
        let Source::File(f) = source;
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

/// Copies a case's files (all but the expected output) into `repo`.
fn copy_case(from: &Path, repo: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let (src, name) = (entry.path(), entry.file_name());
        let dst = repo.join(&name);
        if src.is_dir() {
            std::fs::create_dir_all(&dst).unwrap();
            copy_case(&src, &dst);
        } else if name != EXPECTED {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

/// The data every case can read: `data/stats.parquet` with typed columns (a case may add
/// its own files, CSV ones included, under `data/`).
fn write_fixture_data(repo: &Path) {
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
