//! Test helpers (feature `testing`): a throw-away repository with an embedded store,
//! and small constructors for Arrow columns. Used by this workspace's tests.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, TimestampMicrosecondArray};
use arrow::datatypes::{Field, Schema};

use crate::FeatureStore;

/// `quiver.yaml` of a test repository: embedded stores under `data/`.
pub const QUIVER_YAML: &str = "project: test\nregistry: data/registry\n\
offline_store: { type: delta, path: data/offline }\n\
online_store: { type: embedded, path: data/online }\n";

/// A repository in a temporary directory, deleted when dropped.
pub struct Repo {
    pub dir: tempfile::TempDir,
}

impl Repo {
    /// A repository with `quiver.yaml` and the given definitions in `features.yaml`.
    pub fn new(features_yaml: &str) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        std::fs::write(dir.path().join("quiver.yaml"), QUIVER_YAML).expect("writable");
        std::fs::write(dir.path().join("features.yaml"), features_yaml).expect("writable");
        std::fs::create_dir_all(dir.path().join("data")).expect("writable");
        Repo { dir }
    }

    /// The repository directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A path inside the repository.
    pub fn file(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes a text file inside the repository.
    pub fn write(&self, rel: &str, text: &str) {
        std::fs::write(self.file(rel), text).expect("writable");
    }

    /// Opens the repository.
    pub fn store(&self) -> FeatureStore {
        FeatureStore::open(self.path()).expect("a valid quiver.yaml")
    }

    /// Writes a Parquet file of named columns.
    pub fn parquet(&self, rel: &str, cols: Vec<(&str, ArrayRef)>) {
        crate::io::write_table(self.file(rel), &batch(cols)).expect("writable");
    }
}

/// A batch of named, nullable columns.
pub fn batch(cols: Vec<(&str, ArrayRef)>) -> RecordBatch {
    let fields: Vec<Field> = cols
        .iter()
        .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
        .collect();
    RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        cols.into_iter().map(|c| c.1).collect(),
    )
    .expect("columns of one length")
}

/// A UTC timestamp column (µs).
pub fn ts(v: Vec<i64>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC"))
}

/// A nullable UTC timestamp column (µs).
pub fn ts_opt(v: Vec<Option<i64>>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC"))
}

/// Runs operations to completion from synchronous test code, on one runtime shared by
/// the whole test process (so an online store connection made by one call serves the
/// next): `store.apply().block()`.
pub trait Block: std::future::IntoFuture + Sized {
    /// Awaits the operation on the shared test runtime.
    fn block(self) -> Self::Output {
        runtime().block_on(self.into_future())
    }
}

impl<F: std::future::IntoFuture> Block for F {}

/// The shared test runtime.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::LazyLock<tokio::runtime::Runtime> = std::sync::LazyLock::new(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime")
    });
    &RT
}
