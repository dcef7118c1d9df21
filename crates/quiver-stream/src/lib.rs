//! Stream ingestion (DESIGN §5): stream sources consumed into feature views through the
//! one write path, with an exactly-once effect on the online store.
//!
//! * [`redis_stream`] — a Redis stream read with a consumer group.
//! * [`kafka`] — a Kafka topic read with a consumer group.
//! * [`decode`] — events (JSON) decoded and validated into a view's rows; bad events
//!   become dead letters instead of stopping the worker.
//! * [`worker`] — `quiver stream`: consume, apply online, merge offline in
//!   micro-batches, acknowledge.

pub mod decode;
pub mod kafka;
pub mod metrics;
pub mod redis_stream;
#[cfg(feature = "testing")]
pub mod testing;
pub mod worker;

use std::sync::Arc;

/// One event read from a stream, with where it sits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// How the stream names it (a Redis entry id, `topic:partition@offset` for Kafka).
    pub id: String,
    /// The partition it was read from (`redis:KEY`, `kafka:TOPIC:N`): stream positions
    /// are stored per partition.
    pub partition: Arc<[u8]>,
    /// Its offset in the partition, growing along it.
    pub offset: u128,
    /// The encoded event (`None` when the entry holds none).
    pub data: Option<Vec<u8>>,
}

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
    /// The Kafka client failed (brokers unreachable, a commit refused).
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
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
