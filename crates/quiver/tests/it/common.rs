//! A throw-away repository for tests.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{Field, Schema};
use quiver::FeatureStore;

pub const QUIVER_YAML: &str = "project: test\nregistry: data/registry\n\
offline_store: { type: delta, path: data/offline }\n\
online_store: { type: embedded, path: data/online }\n";

pub struct Repo {
    pub dir: tempfile::TempDir,
}

impl Repo {
    /// A repository with `quiver.yaml` and the given definitions.
    pub fn new(features_yaml: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("quiver.yaml"), QUIVER_YAML).unwrap();
        std::fs::write(dir.path().join("features.yaml"), features_yaml).unwrap();
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        Repo { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn file(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn write(&self, rel: &str, text: &str) {
        std::fs::write(self.file(rel), text).unwrap();
    }

    pub fn store(&self) -> FeatureStore {
        FeatureStore::open(self.path()).unwrap()
    }

    /// Writes a Parquet file of named columns.
    pub fn parquet(&self, rel: &str, cols: Vec<(&str, ArrayRef)>) {
        let batch = batch(cols);
        quiver::io::write_table(self.file(rel), &batch).unwrap();
    }
}

pub fn batch(cols: Vec<(&str, ArrayRef)>) -> RecordBatch {
    let fields: Vec<Field> = cols
        .iter()
        .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
        .collect();
    RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        cols.into_iter().map(|c| c.1).collect(),
    )
    .unwrap()
}

pub fn ts(v: Vec<i64>) -> ArrayRef {
    Arc::new(arrow::array::TimestampMicrosecondArray::from(v).with_timezone("UTC"))
}

pub fn ts_opt(v: Vec<Option<i64>>) -> ArrayRef {
    Arc::new(arrow::array::TimestampMicrosecondArray::from(v).with_timezone("UTC"))
}

/// The path of the built `quiver` binary.
pub fn quiver_bin() -> &'static str {
    env!("CARGO_BIN_EXE_quiver")
}

/// Runs the CLI in `repo`; returns (success, stdout, stderr).
pub fn cli(repo: &Path, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(quiver_bin())
        .arg("--repo")
        .arg(repo)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
