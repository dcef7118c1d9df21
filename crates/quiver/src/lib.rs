//! quiver: a feature store. This crate is the facade over the planes — the
//! [`FeatureStore`] a user opens on a repository — and the `quiver` command line.
//!
//! ```no_run
//! # fn main() -> quiver::Result<()> {
//! let store = quiver::FeatureStore::open("driver_repo")?;
//! store.apply()?;
//! store.ingest(&[])?;
//! let entities = quiver::io::read_table("driver_repo/data/entities.parquet")?;
//! let training = store
//!     .historical()
//!     .entities(entities)
//!     .service("driver_activity_v1")
//!     .run()?;
//! # Ok(()) }
//! ```

pub mod cli_views;
pub mod demo;
pub mod error;
pub mod historical;
pub mod io;
pub mod materialize;
pub mod online;
pub mod server;
pub mod store;

pub use error::{Error, Result};
pub use historical::HistoricalBuilder;
pub use materialize::MaterializeStats;
pub use online::{OnlineBuilder, OnlineResult};
pub use quiver_core::{DType, Duration, FeatureStatus, Timestamp, Value};
pub use store::FeatureStore;
