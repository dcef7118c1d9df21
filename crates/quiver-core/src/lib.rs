//! quiver-core: the object model, the time contract and the value encodings of quiver.
//!
//! This crate performs no I/O. Every code path that evaluates features (historical
//! retrieval, materialization, online reads) calls the functions defined here, so the
//! offline and the online answer for a key at time `T` are computed by the same code.
//!
//! * [`time`] — timestamps (UTC microseconds), durations and their text form.
//! * [`dtype`] — the feature value types and their Arrow representation.
//! * [`model`] — entities, sources, feature views, on-demand feature views, request
//!   sources, feature services.
//! * [`contract`] — the snapshot-lookup rule of DESIGN §2 — status and TTL.
//! * [`pit`] — the point-in-time join kernel used by historical retrieval.
//! * [`encoding`] — entity-key and row encodings shared by every online backend.
//! * [`value`] — a typed scalar for online results.
//! * [`names`] — did-you-mean suggestions for misspelt names.
//! * [`fault`] — crash points for fault-injection tests.

pub mod agg;
pub mod contract;
pub mod dtype;
pub mod encoding;
pub mod error;
pub mod fault;
pub mod finite;
pub mod model;
pub mod names;
pub mod pit;
pub mod time;
pub mod value;

pub use contract::FeatureStatus;
pub use dtype::DType;
pub use error::{Error, Result};
pub use time::{Duration, Timestamp};
pub use value::Value;
