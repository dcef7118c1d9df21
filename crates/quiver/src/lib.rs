//! quiver: a feature store. This crate is the library facade over the planes — the
//! [`FeatureStore`] a user opens on a repository — with every operation as an async
//! builder (`IntoFuture`, as delta-rs's operations). It links neither the feature server
//! (`quiver-server`) nor the command line (`quiver-cli`).
//!
//! ```no_run
//! # async fn demo() -> quiver::Result<()> {
//! let store = quiver::FeatureStore::open("driver_repo")?;
//! store.apply().await?;
//! store.ingest().await?;
//! let entities = quiver::io::read_table("driver_repo/data/entities.parquet")?;
//! let training = store
//!     .historical()
//!     .entities(entities)
//!     .service("driver_activity_v1")
//!     .await?;
//! # Ok(()) }
//! ```

pub mod compact;
pub mod demo;
pub mod error;
pub mod freshness;
pub mod historical;
pub mod ingest;
pub mod io;
pub mod materialize;
pub mod online;
pub mod push;
pub mod snapshot;
pub mod store;
pub mod stream;
#[cfg(feature = "testing")]
pub mod testing;
pub mod write;

pub use compact::{CompactStats, FileCompactStats, VacuumStats};
pub use error::{Error, ErrorKind, Result};

/// The default diagnostics filter of quiver's binaries (`QUIVER_LOG` overrides it):
/// warnings of quiver's own crates only; libraries' internal logs stay quiet.
pub const DEFAULT_LOG_FILTER: &str = "quiver=warn,quiver_cli=warn,quiver_server=warn,\
quiver_offline=warn,quiver_online=warn,quiver_redis=warn,quiver_registry=warn";

/// Sends diagnostics to stderr, filtered by `QUIVER_LOG` (e.g. `QUIVER_LOG=quiver=debug`,
/// or `quiver_offline=debug` for a retrieval's phase timings), else by
/// [`DEFAULT_LOG_FILTER`]; colours only on a terminal. For binaries and the Python
/// module; does nothing when the process already has a subscriber.
pub fn init_diagnostics() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("QUIVER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

pub use historical::HistoricalBuilder;
pub use ingest::IngestBuilder;
pub use materialize::{MaterializeBuilder, MaterializeStats};
pub use online::{OnlineBuilder, OnlineResult, OnlineRow};
pub use push::{PushBuilder, PushStats};
pub use quiver_core::{DType, Duration, FeatureStatus, Timestamp, Value};
pub use quiver_online::{Columns, ReadPlan, Vectors};
pub use snapshot::Snapshot;
pub use store::{blocking, FeatureStore, OnlineBackend, REGISTRY_RECHECK};
pub use write::{NoProgress, Progress};
