//! The offline plane: file sources, the Delta Lake offline store and point-in-time
//! historical retrieval.
//!
//! * [`files`] — reading Parquet/CSV files, directories and globs; writing outputs.
//! * [`normalize`] — validating source rows and converting them to the stored form.
//! * [`store`] — one Delta table per feature view, partitioned by day, with
//!   re-runnable ingests.
//! * [`historical`] — training sets by the time contract's snapshot rule.

pub mod aggregate;
pub mod files;
pub mod historical;
pub mod normalize;
pub mod store;

pub use historical::{HistoricalRequest, ViewRequest};
pub use store::{FileCompactStats, IngestStats, OfflineStore, VacuumStats};

/// Errors of the offline plane.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Input data is invalid; the message names the file, row and column.
    #[error("{0}")]
    Data(String),
    /// A request is invalid (unknown column, name collision…).
    #[error("{0}")]
    Invalid(String),
    /// Reading or writing files failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    #[error(transparent)]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("delta table: {0}")]
    Delta(#[from] deltalake::DeltaTableError),
    #[error(transparent)]
    Core(#[from] quiver_core::Error),
    /// A failure of quiver itself (a blocking task that panicked).
    #[error("internal error: {0}")]
    Internal(String),
}

/// Result alias for the offline plane.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_err(context: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.to_string();
    move |source| Error::Io { context, source }
}

/// Runs blocking work (decoding, sorting, file I/O) on tokio's blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("a blocking task failed: {e}")))?
}
