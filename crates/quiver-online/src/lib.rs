//! The online plane: the [`OnlineStore`] trait, its embedded backend, (with the
//! `testing` feature) the conformance suite every backend runs, and the compiled online
//! read ([`ReadPlan`]) that every reader (feature server, facade, Python) shares.
//!
//! # Logical layout (DESIGN §4), identical in every backend
//!
//! * An **entity key** is `project \0 entity_set \0 encoded join-key values` (see
//!   [`entity_key`] and `quiver_core::encoding`).
//! * Per entity key, one **row field** per feature view: an 8-byte id
//!   (`ResolvedView::online_field`, a hash of project, view and version). The field's
//!   value is a row encoded by `quiver_core::encoding::encode_row`: event timestamp,
//!   creation timestamp, then the feature values.
//! * Per entity key, one **tile field** per (aggregated view, tile start) holding the
//!   tile's IR, and one **stream position field** per (aggregated view, source
//!   partition); see [`tiles`].

use async_trait::async_trait;
use quiver_core::Timestamp;

pub mod cache;
#[cfg(feature = "testing")]
pub mod conformance;
pub mod embedded;
pub mod plan;
pub mod tiles;

pub use cache::CachedStore;
pub use embedded::{EmbeddedConfig, EmbeddedStore};
pub use plan::{Columns, ReadPlan, Vectors};
pub use tiles::{KeyMerge, MergeStats, StreamPosition, TileDelta, TileMerger};

/// Errors of the online plane.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The backing store failed (I/O, corruption, capacity): what was being done, and
    /// the backend's error when there is one.
    #[error("online store: {context}{}", .source.as_ref().map(|s| format!(": {s}")).unwrap_or_default())]
    Store {
        context: String,
        #[source]
        source: Option<BoxError>,
    },
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

/// A backend's own error, kept as the source of [`Error::Store`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

impl Error {
    /// A store failure without an underlying error.
    pub fn store(context: impl Into<String>) -> Self {
        Error::Store {
            context: context.into(),
            source: None,
        }
    }

    /// A store failure caused by the backend's error `source`.
    pub fn store_from(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::Store {
            context: context.into(),
            source: Some(source.into()),
        }
    }
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

/// What a backend guarantees beyond the guarantees every [`OnlineStore`] gives.
///
/// Code that needs one of these asks for it (`store.capabilities().atomic_batches`)
/// instead of assuming it; the conformance suite checks each capability a backend
/// declares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// A whole `write` or `merge_tiles` call is one transaction: it is stored entirely
    /// or not at all (a failure, or the writing process killed midway, leaves none of
    /// it), and a concurrent read sees all of it or none of it. Without it, only each
    /// entity key's part of a call is atomic.
    pub atomic_batches: bool,
    /// Each entity key's part of a call is applied atomically. Every backend gives it
    /// (see the [`OnlineStore`] guarantees); it is listed so that code can say which of
    /// the two atomicities it relies on.
    pub atomic_per_key: bool,
    /// Several processes may open the store at once, writing and reading, each seeing
    /// the others' writes (the embedded store: processes of one machine).
    pub shared_across_processes: bool,
    /// Processes on different machines may share the store (a network service).
    pub shared_across_hosts: bool,
    /// A call that returned survives a crash of the machine or of the store's server
    /// (the embedded store syncs every commit). Redis depends on the server's
    /// persistence settings, which the store cannot see, and does not declare it: there
    /// a crash of the server can roll tiles back (with their stream positions) behind
    /// offsets a consumer already committed, so after one the consumer must consume
    /// again from an earlier offset (the stored positions make that safe).
    pub durable_writes: bool,
}

/// A store of the latest row per (entity key, feature view) and of aggregation tiles per
/// (entity key, aggregated view, tile start).
///
/// # Guarantees of every backend
///
/// Checked by `conformance::run_all` (feature `testing`):
/// * **Newer wins, last of equals wins.** A write stores its row only if no row is stored
///   under the same (key, field) or the stored row's (event timestamp, creation
///   timestamp) is smaller or equal: a row of equal version replaces the stored one (a
///   correction re-ingested with the same timestamps, as the offline store keeps the last
///   ingested of equal rows), a strictly older row never does. Replaying a batch, or
///   writing rows out of order, leaves the newest row (a replay rewrites identical rows,
///   so the content is unchanged). Within one batch, the newest row for a (key, field)
///   wins whatever its position; among rows of equal version for it, the last in the
///   batch wins.
/// * **Atomic per key.** Each entity key's part of a `write` or `merge_tiles` call is
///   applied as one step: it is stored entirely or not at all, no other writer's change
///   to that key lands in between, and a read of the key sees all of it or none. A call
///   that fails may have applied the parts of some keys and not others (unless the
///   backend declares [`Capabilities::atomic_batches`]); retrying it converges, since
///   rows are newer-wins and merges with stream positions are idempotent.
/// * **Merges lose no update.** `merge_tiles` is a read-modify-write of each key's
///   tiles: merges from any number of concurrent callers, in any number of processes,
///   all take effect, as if applied one after the other. A merge without a stream
///   position is not idempotent: replaying it merges its deltas again.
/// * **Replays are no-ops.** A merge whose stream position is at or below the position
///   stored for its (key, view, partition) changes nothing; an applied merge stores its
///   position in the same atomic step as its tiles.
/// * **Read-your-writes.** A read that starts after a call returned sees its effects.
/// * **Whole cells.** A read never sees part of a row or of a tile.
/// * **Separate namespaces.** Rows, tiles and positions of different keys, views,
///   tile starts and partitions never mix; rows and tiles under the same field id are
///   distinct.
/// * **No deletion semantics.** Readers compute status from the stored timestamps;
///   deleting expired rows or old tiles is an optimisation, never needed for
///   correctness.
///
/// # Capabilities
///
/// What goes beyond, a backend declares in [`OnlineStore::capabilities`].
#[async_trait]
pub trait OnlineStore: Send + Sync {
    /// Writes a batch of rows conditionally (newer wins; of equal versions, the last
    /// written wins).
    async fn write(&self, rows: &[OnlineWrite<'_>]) -> Result<WriteStats>;

    /// Reads `fields` for each of `keys`: the result holds `keys.len() * fields.len()`
    /// cells, key-major (`cells[k * fields.len() + f]`), `None` where nothing is stored.
    async fn read(&self, keys: &[&[u8]], fields: &[FieldId]) -> Result<Vec<Option<Vec<u8>>>>;

    /// Deletes every row stored under `field` whose event timestamp is older than
    /// `cutoff`; returns how many were deleted. Tiles are not rows: see
    /// [`Self::delete_tiles_before`].
    async fn delete_older_than(&self, field: FieldId, cutoff: Timestamp) -> Result<u64>;

    /// Checks that the store answers (a round trip to a remote server, within its read
    /// timeout): what health and readiness checks report. Embedded stores answer
    /// whenever they are open.
    async fn ping(&self) -> Result<()> {
        Ok(())
    }

    /// Compacts the rows stored under `field` whose event time is before `cutoff`
    /// (callers pass now − the view's ttl: rows expired for every read from now on) by
    /// dropping their values and keeping their timestamps. Nothing a read at or after
    /// that time returns changes (status OUTSIDE_TTL, no value), and a newer-wins write
    /// compares against the same version. Returns how many rows were compacted; a
    /// backend that expires data by other means (Redis key TTL) keeps the default,
    /// which does nothing.
    async fn compact_expired(&self, _field: FieldId, _cutoff: Timestamp) -> Result<u64> {
        Ok(0)
    }

    /// Merges IR deltas into tiles, atomically per entity key (or for the whole call,
    /// with [`Capabilities::atomic_batches`]). The requests of one key are applied in
    /// their order in `merges`; for each: if it carries a stream position and the
    /// position stored for its (key, view, partition) is at or past it, it is skipped;
    /// otherwise each of its tiles becomes `merger.merge(stored, delta)` and its
    /// position is stored. Fails, naming the request, if the merger fails.
    async fn merge_tiles(
        &self,
        merges: &[KeyMerge<'_>],
        merger: &dyn TileMerger,
    ) -> Result<MergeStats>;

    /// Reads the tiles of `view` starting at `starts` for each of `keys`:
    /// `keys.len() * starts.len()` IRs, key-major, `None` where nothing is stored.
    async fn read_tiles(
        &self,
        keys: &[&[u8]],
        view: FieldId,
        starts: &[Timestamp],
    ) -> Result<TileCells>;

    /// Reads rows and tiles together: what [`Self::read`] returns for `keys` and
    /// `fields`, then for each of `tiles` what [`Self::read_tiles`] returns for it — in
    /// one round trip to the store where the backend can (a remote store pipelines
    /// them); the default calls the two in turn.
    async fn read_with_tiles(
        &self,
        keys: &[&[u8]],
        fields: &[FieldId],
        tiles: &[TileRead<'_>],
    ) -> Result<(Cells, Vec<TileCells>)> {
        let rows = self.read(keys, fields).await?;
        let mut out = Vec::with_capacity(tiles.len());
        for t in tiles {
            out.push(self.read_tiles(t.keys, t.view, t.starts).await?);
        }
        Ok((rows, out))
    }

    /// The stream offsets stored for (`key`, `view`, `partition`), one per key, `None`
    /// where no merge with a position of that partition was applied.
    async fn stream_positions(
        &self,
        keys: &[&[u8]],
        view: FieldId,
        partition: &[u8],
    ) -> Result<Vec<Option<u128>>>;

    /// Deletes every tile of `view` that starts before `cutoff`; returns how many were
    /// deleted. Stream positions stay, so that a replay of old events is still
    /// recognised and cannot bring a deleted tile back.
    async fn delete_tiles_before(&self, view: FieldId, cutoff: Timestamp) -> Result<u64>;

    /// What this backend guarantees beyond the trait's guarantees.
    fn capabilities(&self) -> Capabilities;

    /// A short name of the backend for messages and metrics.
    fn backend(&self) -> &'static str;

    /// Hit and miss counts, for a store with a cache in front of it.
    fn cache_stats(&self) -> Option<CacheStats> {
        None
    }
}

/// Stored cells, one per (key, field) read; `None` where nothing is stored.
pub type Cells = Vec<Option<Vec<u8>>>;

/// Stored tiles, one cell per (key, tile start) read, key-major, `None` where nothing is
/// stored: their bytes in one buffer, so that a read of many tiles allocates once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TileCells {
    bytes: Vec<u8>,
    /// Per cell: its range of `bytes`.
    spans: Vec<Option<(usize, usize)>>,
}

impl TileCells {
    /// `cells` cells, none stored.
    pub fn empty(cells: usize) -> Self {
        TileCells {
            bytes: Vec::new(),
            spans: vec![None; cells],
        }
    }

    /// Appends a cell.
    pub fn push(&mut self, cell: Option<&[u8]>) {
        let span = cell.map(|b| self.append(b));
        self.spans.push(span);
    }

    /// Stores `bytes` as cell `i`.
    pub fn set(&mut self, i: usize, bytes: &[u8]) {
        self.spans[i] = Some(self.append(bytes));
    }

    fn append(&mut self, bytes: &[u8]) -> (usize, usize) {
        let at = self.bytes.len();
        self.bytes.extend_from_slice(bytes);
        (at, at + bytes.len())
    }

    /// Cell `i`'s bytes (`None` where nothing is stored).
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        self.spans[i].map(|(a, b)| &self.bytes[a..b])
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The cells in order.
    pub fn iter(&self) -> impl Iterator<Item = Option<&[u8]>> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }

    /// The cells as vectors of their own.
    pub fn to_vecs(&self) -> Vec<Option<Vec<u8>>> {
        self.iter().map(|c| c.map(<[u8]>::to_vec)).collect()
    }
}

impl<'a> IntoIterator for &'a TileCells {
    type Item = Option<&'a [u8]>;
    type IntoIter = Box<dyn Iterator<Item = Option<&'a [u8]>> + 'a>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

impl From<Vec<Option<Vec<u8>>>> for TileCells {
    fn from(cells: Vec<Option<Vec<u8>>>) -> Self {
        let mut out = TileCells {
            bytes: Vec::with_capacity(cells.iter().flatten().map(Vec::len).sum()),
            spans: Vec::with_capacity(cells.len()),
        };
        for c in &cells {
            out.push(c.as_deref());
        }
        out
    }
}

/// The tiles a read needs of one view: those starting at `starts`, for each of `keys`.
#[derive(Clone, Copy, Debug)]
pub struct TileRead<'a> {
    pub keys: &'a [&'a [u8]],
    pub view: FieldId,
    pub starts: &'a [Timestamp],
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
