//! Stream ingestion (DESIGN §5): stream sources consumed into feature views through the
//! one write path, with an exactly-once effect on the online store.
//!
//! * [`redis_stream`] — a Redis stream read with a consumer group.
//! * [`decode`] — events (JSON) decoded and validated into a view's rows; bad events
//!   become dead letters instead of stopping the worker.
//! * [`worker`] — `quiver stream`: consume, apply online, merge offline in
//!   micro-batches, acknowledge.

pub mod decode;
pub mod redis_stream;
pub mod worker;

pub use worker::{dead_letter_table, run, SourceStats, WorkerOptions};

/// Errors of stream ingestion.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request or definition that cannot be served.
    #[error("{0}")]
    Invalid(String),
    /// The stream's server failed or refused a command.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Writing failed.
    #[error(transparent)]
    Quiver(#[from] quiver::Error),
    #[error(transparent)]
    Offline(#[from] quiver_offline::Error),
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
}

impl From<quiver_registry::Error> for Error {
    fn from(e: quiver_registry::Error) -> Self {
        Error::Quiver(e.into())
    }
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
