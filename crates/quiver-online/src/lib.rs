//! The online plane: the [`OnlineStore`] trait, its embedded backend, (with the
//! `testing` feature) the conformance suite every backend runs, and the compiled online
//! read ([`ReadPlan`]) that every reader (feature server, facade, Python) shares.
//!
//! # Logical layout (DESIGN §4), identical in every backend
//!
//! * An **entity key** is `project \0 entity_set \0 encoded join-key values` (see
//!   [`entity_key`] and `quiver_core::encoding`).
//! * Per entity key, one **field** per feature view: an 8-byte id
//!   (`ResolvedView::online_field`, a hash of project, view and version).
//! * The field's value is a row encoded by `quiver_core::encoding::encode_row`: event
//!   timestamp, creation timestamp, then the feature values.

use async_trait::async_trait;

pub mod cache;
#[cfg(feature = "testing")]
pub mod conformance;
pub mod embedded;
pub mod plan;

pub use cache::CachedStore;
pub use embedded::EmbeddedStore;
pub use plan::{Columns, ReadPlan, Vectors};

/// Errors of the online plane.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The backing store failed (I/O, corruption, capacity).
    #[error("online store: {0}")]
    Store(String),
    /// A request is invalid (e.g. a key too long for the backend).
    #[error("online store: {0}")]
    Invalid(String),
    /// Stored bytes could not be decoded.
    #[error(transparent)]
    Core(#[from] quiver_core::Error),
    /// A read request is invalid (unknown feature, wrong key type, ragged columns…).
    #[error("{0}")]
    Request(String),
    /// A read names something the registry does not have.
    #[error(transparent)]
    Registry(#[from] quiver_registry::Error),
    /// An on-demand feature cannot be computed.
    #[error(transparent)]
    OnDemand(#[from] quiver_ondemand::Error),
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
}

/// Result alias for the online plane.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An 8-byte field id: one per (project, feature view, version).
pub type FieldId = [u8; 8];

/// One conditional write: store `row` under (`key`, `field`) unless the stored row there
/// is strictly newer.
#[derive(Clone, Copy, Debug)]
pub struct OnlineWrite<'a> {
    /// The full entity key ([`entity_key`]).
    pub key: &'a [u8],
    pub field: FieldId,
    /// An encoded row (`quiver_core::encoding::encode_row`).
    pub row: &'a [u8],
}

/// What a batch write did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Rows stored.
    pub written: u64,
    /// Rows not stored because the stored row was strictly newer, or because a row of the
    /// same batch superseded them.
    pub skipped: u64,
}

/// A store of the latest row per (entity key, feature view).
///
/// Guarantees every backend gives, checked by [`conformance::run_all`]:
/// * **Newer wins, last of equals wins.** A write stores its row only if no row is stored
///   under the same (key, field) or the stored row's (event timestamp, creation
///   timestamp) is smaller or equal: a row of equal version replaces the stored one (a
///   correction re-ingested with the same timestamps, as the offline store keeps the last
///   ingested of equal rows), a strictly older row never does. Replaying a batch, or
///   writing rows out of order, leaves the newest row (a replay rewrites identical rows,
///   so the content is unchanged). Within one batch, the newest row for a (key, field)
///   wins whatever its position; among rows of equal version for it, the last in the
///   batch wins.
/// * **Atomic batches.** A `write` either stores all of its rows that win or none of
///   them; a process killed during a write leaves the previous committed state readable.
/// * **Read-your-writes.** A `read` that starts after a `write` returned sees its rows.
/// * **Concurrent readers.** Reads proceed while a write is in progress and see either
///   the state before or after it, never a mix within one row.
/// * **No deletion semantics.** Readers compute status from the stored timestamps;
///   deleting expired rows is an optimisation, never needed for correctness.
#[async_trait]
pub trait OnlineStore: Send + Sync {
    /// Writes a batch of rows conditionally (newer wins; of equal versions, the last
    /// written wins).
    async fn write(&self, rows: &[OnlineWrite<'_>]) -> Result<WriteStats>;

    /// Reads `fields` for each of `keys`: the result holds `keys.len() * fields.len()`
    /// cells, key-major (`cells[k * fields.len() + f]`), `None` where nothing is stored.
    async fn read(&self, keys: &[&[u8]], fields: &[FieldId]) -> Result<Vec<Option<Vec<u8>>>>;

    /// Deletes every row stored under `field` whose event timestamp is older than
    /// `cutoff`; returns how many were deleted.
    async fn delete_older_than(&self, field: FieldId, cutoff: i64) -> Result<u64>;

    /// A short name of the backend for messages and metrics.
    fn backend(&self) -> &'static str;

    /// Hit and miss counts, for a store with a cache in front of it.
    fn cache_stats(&self) -> Option<CacheStats> {
        None
    }
}

/// Counters of a read cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Cells served from the cache.
    pub hits: u64,
    /// Cells read from the store behind it.
    pub misses: u64,
}

/// Builds the full entity key: `project \0 entity_set \0 encoded_values`.
pub fn entity_key(project: &str, entity_set: &str, encoded_values: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(project.len() + entity_set.len() + 2 + encoded_values.len());
    entity_key_into(project, entity_set, encoded_values, &mut k);
    k
}

/// Like [`entity_key`], into a reused buffer (cleared first).
pub fn entity_key_into(project: &str, entity_set: &str, encoded_values: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(project.as_bytes());
    out.push(0);
    out.extend_from_slice(entity_set.as_bytes());
    out.push(0);
    out.extend_from_slice(encoded_values);
}
