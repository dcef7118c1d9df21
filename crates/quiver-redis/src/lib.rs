//! The Redis online store: an [`OnlineStore`] on one Redis server or on a Redis Cluster.
//!
//! # Layout (DESIGN §4)
//!
//! The layout DoorDash measured for its feature store on Redis: **one hash per entity
//! key**, **short binary field names**, **binary values**, and **one pipelined `HMGET`
//! per entity** on reads.
//!
//! * **Redis key** = `q{` ++ xxh3-64(entity key) as 16 lowercase hex digits ++ `}` ++ the
//!   entity key bytes ([`redis_key`]). The part between the braces is a Redis Cluster
//!   *hash tag*: the slot of the key is computed from the 16 hex digits alone. Every
//!   field of an entity is in its one hash anyway; the tag makes the slot a uniform hash
//!   of the entity key (so entities spread evenly over the shards, whatever bytes the
//!   entity keys share or contain: a `{` or `}` inside an entity key never becomes the
//!   tag, since the first `}` of the key is the one after the digits). Keeping the full
//!   entity key after the tag makes the key exact (no reliance on the hash being
//!   collision-free) and lets [`entity_key_of`] recognise the store's own keys.
//! * **Hash field** = the 8-byte field id of the feature view (raw bytes): a few bytes
//!   per field instead of a feature-view name, which is most of the memory saving of the
//!   layout. Redis stores small hashes as a compact listpack.
//! * **Value** = the encoded row (`quiver_core::encoding::encode_row`), binary, as given:
//!   a format byte, the event and creation timestamps (little-endian i64), the values.
//! * **Tiles and stream positions** are fields of the same hash, in the layout of
//!   [`quiver_online::tiles`]: 16-byte tile fields (view id, tile start) holding IRs,
//!   17-byte position fields. One more field, [`VERSION_FIELD`] (`v`, 1 byte), counts
//!   the tile merges and deletions applied to the hash (see below).
//!
//! A read of `k` keys and `f` fields is `k` `HMGET key f1 .. ff` sent as one pipeline:
//! one round trip on a single server. In cluster mode each `HMGET` is routed to the
//! shard owning its slot; the commands are issued concurrently over one multiplexed
//! connection per shard, so a read costs about one round trip per shard involved, in
//! parallel.
//!
//! # Conditional writes, server side
//!
//! Newer-wins is decided inside Redis by a Lua script ([`WRITE_SCRIPT`], run by
//! `EVALSHA`, loaded again and retried when the server answers `NOSCRIPT`), so a
//! concurrent writer can never slip between the comparison and the write. A batch is
//! first resolved on the client as the embedded store does (per (key, field) the newest
//! row, of equal versions the last in the batch), then sent as one script call per
//! entity key carrying all of that entity's winning rows. The script reads the stored
//! rows' headers, stores each new row unless a strictly newer one is stored (equal
//! versions replace: the last written wins), sets the key's expiry if a TTL is
//! configured and returns how many rows it stored.
//!
//! Versions are compared on the header bytes, exactly as signed 64-bit integers. Lua
//! numbers are doubles, so decoding the timestamps (e.g. with the `struct` library) would
//! be exact only up to 2^53 microseconds (the year 2255) and would confuse rows near
//! `i64::MIN` / `i64::MAX`, which are valid rows.
//!
//! # Tile merges: read, merge in Rust, compare-and-set
//!
//! IRs are merged by the caller's [`TileMerger`], in Rust; no IR logic runs in Redis. A
//! `merge_tiles` call groups its requests by entity key and, per key:
//!
//! 1. reads the hash's version field, the tiles the requests touch and their stream
//!    positions with one `HMGET` (all keys' `HMGET`s in one pipeline, or spread over
//!    the shards in cluster mode);
//! 2. applies the requests in memory ([`quiver_online::tiles::KeyMergePlan`]): a request
//!    at or below the stored position of its partition is skipped, the others merge
//!    their deltas and set their positions;
//! 3. writes the changed fields with [`MERGE_SCRIPT`], which stores them and increments
//!    the version only if the version is still the one read in step 1 (again one
//!    pipeline for all keys).
//!
//! A key whose version changed in between (another writer merged into it, or deleted
//! tiles) is read and merged again, with a randomised backoff, up to [`MERGE_ATTEMPTS`]
//! times. Since every change to a key's tiles or positions increments its version, a
//! successful compare-and-set means the merge was computed from the key's current
//! state: concurrent merges are serialised per key and none is lost. A key whose
//! requests were all replays is not written at all. A hash tag keeps each key on one
//! shard, so a key's merge is always a single-shard operation.
//!
//! # Expiry and deletion
//!
//! With a key TTL ([`RedisConfig::key_ttl`]), each script call that stores a row sets
//! the entity hash to expire that long after the write (`PEXPIRE`). The whole hash
//! expires, all views at once: pick a TTL longer than the longest view TTL. Correctness
//! never depends on it: readers compute freshness from the stored timestamps.
//! [`OnlineStore::delete_older_than`] scans the store's keys (`SCAN`, on every primary
//! in cluster mode) and removes the field from each hash whose row is older than the
//! cutoff, with a script ([`DELETE_SCRIPT`]) that re-checks the stored row, so a row
//! overwritten with a newer one during the scan is never deleted.
//! [`OnlineStore::delete_tiles_before`] scans the same way, lists each hash's fields
//! (`HKEYS`), picks the view's tile fields that start before the cutoff, and deletes
//! them with [`DELETE_TILES_SCRIPT`], which also increments the version so that a merge
//! that read a deleted tile merges again instead of writing it back.
//!
//! # What Redis guarantees
//!
//! See [`RedisStore::capabilities`](OnlineStore::capabilities): everything is atomic
//! per entity key, nothing across keys.

#[cfg(feature = "testing")]
pub mod testing;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::{self, StreamExt};
use quiver_core::encoding::row_version;
use quiver_core::Timestamp;
use quiver_online::tiles::{
    decode_position, group_by_key, parse_tile_field, position_field, tile_field, validate_merges,
    KeyMergeOutcome, KeyMergePlan,
};
use quiver_online::{
    Capabilities, Cells, Error, FieldId, KeyMerge, MergeStats, OnlineStore, OnlineWrite, Result,
    TileCells, TileMerger, TileRead, WriteStats,
};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, ErrorKind, RedisError, RedisResult, Script, ServerErrorKind, Value};
use serde::{Deserialize, Serialize};

/// The first bytes of every key of the store (then the hash tag's hex digits and `}`).
pub const KEY_PREFIX: &[u8] = b"q{";

/// Length of the key prefix `q{` ++ 16 hex digits ++ `}`.
const TAGGED_PREFIX_LEN: usize = KEY_PREFIX.len() + 16 + 1;

/// Commands per pipeline on a single server.
const PIPELINE_COMMANDS: usize = 1024;

/// Bytes of arguments per pipeline on a single server (a pipeline is cut before it
/// grows past this, so one huge batch does not become one huge request).
const PIPELINE_BYTES: usize = 8 << 20;

/// Requests in flight at once in cluster mode.
const CLUSTER_IN_FLIGHT: usize = 512;

/// Keys asked of `SCAN` per call.
const SCAN_COUNT: usize = 1000;

/// The hash field counting the tile merges and deletions applied to an entity hash (its
/// length, 1 byte, is that of no row, tile or position field).
pub const VERSION_FIELD: &[u8] = b"v";

/// How many times a merge reads and merges a key again after another writer changed it
/// in between, before the call fails.
pub const MERGE_ATTEMPTS: u32 = 64;

/// The longest wait between two attempts of a merge.
const MERGE_BACKOFF_MAX: Duration = Duration::from_millis(50);

/// Tile fields deleted per script call.
const DELETE_TILES_CHUNK: usize = 1000;

/// The Lua function both scripts compare versions with: `cmp_i64(a, pa, b, pb)` orders
/// the little-endian signed 64-bit integers at 1-based offsets `pa` of `a` and `pb` of
/// `b` exactly (-1, 0, 1).
macro_rules! lua_cmp_i64 {
    () => {
        r#"
local function cmp_i64(a, pa, b, pb)
  -- most significant byte first, its sign bit flipped so that negatives order first
  local x = (string.byte(a, pa + 7) + 128) % 256
  local y = (string.byte(b, pb + 7) + 128) % 256
  if x ~= y then
    if x < y then return -1 else return 1 end
  end
  for i = 6, 0, -1 do
    x, y = string.byte(a, pa + i), string.byte(b, pb + i)
    if x ~= y then
      if x < y then return -1 else return 1 end
    end
  end
  return 0
end
"#
    };
}

/// The conditional write of one entity's rows. `KEYS[1]`: the entity's hash;
/// `ARGV[1]`: the key TTL in milliseconds (`0`: none); then pairs of a field id and an
/// encoded row, one pair per field (the client sends each field once). Returns the
/// number of rows stored.
pub const WRITE_SCRIPT: &str = concat!(
    r#"
-- quiver-redis: newer-wins write of one entity's rows.
-- A row is the format byte, then event_ts and created_ts as little-endian signed
-- 64-bit integers (bytes 2..9 and 10..17, 1-based), then the values. Versions are
-- compared on these bytes, exactly: Lua numbers are doubles, exact only below 2^53
-- (microseconds: the year 2255), and rows at i64::MIN / i64::MAX are valid."#,
    lua_cmp_i64!(),
    r#"
local key = KEYS[1]
local n = (#ARGV - 1) / 2
-- Check every stored row before changing anything: a script that fails midway keeps
-- the writes it made.
local stored = {}
for k = 1, n do
  local s = redis.call('HGET', key, ARGV[2 * k])
  if s and #s < 17 then
    return redis.error_reply('QUIVER a field of ' .. key .. ' holds ' .. #s ..
      ' bytes, which is not an encoded row')
  end
  stored[k] = s
end
local written = 0
for k = 1, n do
  local s, row = stored[k], ARGV[2 * k + 1]
  local c = 0
  if s then
    c = cmp_i64(s, 2, row, 2)
    if c == 0 then c = cmp_i64(s, 10, row, 10) end
  end
  -- stored <= new: equal versions replace (the last written wins)
  if c <= 0 then
    redis.call('HSET', key, ARGV[2 * k], row)
    written = written + 1
  end
end
if written > 0 and ARGV[1] ~= '0' then
  redis.call('PEXPIRE', key, ARGV[1])
end
return written
"#
);

/// The conditional delete of one field. `KEYS[1]`: an entity's hash; `ARGV[1]`: a
/// field id; `ARGV[2]`: the cutoff, a little-endian signed 64-bit integer (8 bytes).
/// Deletes the field when the row stored there has an event timestamp below the
/// cutoff; returns 1 if it deleted it, else 0.
pub const DELETE_SCRIPT: &str = concat!(
    r#"
-- quiver-redis: delete one field if its row is older than a cutoff, re-checked here so
-- that a row overwritten with a newer one since the scan is never deleted."#,
    lua_cmp_i64!(),
    r#"
local key = KEYS[1]
if redis.call('TYPE', key)['ok'] ~= 'hash' then
  return 0
end
local s = redis.call('HGET', key, ARGV[1])
if not s then
  return 0
end
if #s < 17 then
  return redis.error_reply('QUIVER a field of ' .. key .. ' holds ' .. #s ..
    ' bytes, which is not an encoded row')
end
if cmp_i64(s, 2, ARGV[2], 1) < 0 then
  redis.call('HDEL', key, ARGV[1])
  return 1
end
return 0
"#
);

/// The compare-and-set write of one entity's merged tiles and stream positions.
/// `KEYS[1]`: the entity's hash; `ARGV[1]`: the hash's version as read with the tiles
/// (empty if it had none); `ARGV[2]`: the key TTL in milliseconds (`0`: none); then
/// pairs of a field and its new value. Writes the fields and increments the version if
/// the version is unchanged, returning 1; returns 0, writing nothing, if it changed.
/// The merge itself was computed by the client: the script only checks and stores.
pub const MERGE_SCRIPT: &str = r#"
-- quiver-redis: compare-and-set write of one entity's merged tiles and positions.
local key = KEYS[1]
local version = redis.call('HGET', key, 'v')
if (version or '') ~= ARGV[1] then
  return 0
end
for i = 3, #ARGV, 2 do
  redis.call('HSET', key, ARGV[i], ARGV[i + 1])
end
redis.call('HINCRBY', key, 'v', 1)
if ARGV[2] ~= '0' then
  redis.call('PEXPIRE', key, ARGV[2])
end
return 1
"#;

/// The deletion of tile fields of one entity. `KEYS[1]`: the entity's hash; `ARGV`: the
/// fields. Deletes them and, if any was there, increments the hash's version (so that a
/// merge that read one of them merges again); returns how many were deleted.
pub const DELETE_TILES_SCRIPT: &str = r#"
-- quiver-redis: delete tile fields, invalidating merges that read them.
local key = KEYS[1]
local n = 0
for i = 1, #ARGV do
  n = n + redis.call('HDEL', key, ARGV[i])
end
if n > 0 then
  redis.call('HINCRBY', key, 'v', 1)
end
return n
"#;

static WRITE: LazyLock<Script> = LazyLock::new(|| Script::new(WRITE_SCRIPT));
static DELETE: LazyLock<Script> = LazyLock::new(|| Script::new(DELETE_SCRIPT));
static MERGE: LazyLock<Script> = LazyLock::new(|| Script::new(MERGE_SCRIPT));
static DELETE_TILES: LazyLock<Script> = LazyLock::new(|| Script::new(DELETE_TILES_SCRIPT));

/// Where the store is and how it behaves.
///
/// It is also the `online_store: { type: redis, … }` section of `quiver.yaml`: it
/// deserialises from the fields `url`, `cluster`, `key_ttl` (a duration such as `30d`;
/// `0` means no expiry), `connect_timeout`, `read_timeout` and `write_timeout`
/// (durations), rejects any other field, and checks the addresses while parsing (see
/// [`RedisConfig::check`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RedisSection", into = "RedisSection")]
pub struct RedisConfig {
    /// The URL of a single server (`redis://[user:password@]host:port[/db]`,
    /// `redis+unix:///path`). Exactly one of `url` and `cluster` is set.
    pub url: Option<String>,
    /// The addresses of Redis Cluster nodes (`redis://host:port` or `host:port`); any
    /// subset of the nodes, the client discovers the others.
    pub cluster: Vec<String>,
    /// When set, an entity hash expires this long after the last write that stored a row
    /// in it (rounded up to whole milliseconds).
    pub key_ttl: Option<Duration>,
    /// How long to wait for a connection to a server.
    pub connect_timeout: Duration,
    /// How long to wait for the answer to one request (one pipeline of up to 1,024
    /// commands on a single server, one command in cluster mode): the bound of writes.
    pub response_timeout: Duration,
    /// How long an online read (all its keys) may take before it fails: serving reads
    /// must fail fast when the server is stuck, not hang a request.
    pub read_timeout: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: None,
            cluster: Vec::new(),
            key_ttl: None,
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_millis(250),
        }
    }
}

impl RedisConfig {
    /// A single server at `url`.
    pub fn standalone(url: impl Into<String>) -> Self {
        Self {
            url: Some(url.into()),
            ..Self::default()
        }
    }

    /// A Redis Cluster reached through `nodes`.
    pub fn cluster<S: Into<String>>(nodes: impl IntoIterator<Item = S>) -> Self {
        Self {
            cluster: nodes.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    /// Sets the key TTL.
    pub fn with_key_ttl(mut self, ttl: Duration) -> Self {
        self.key_ttl = Some(ttl);
        self
    }

    /// The configuration of `online_store: { type: redis, url | cluster, key_ttl }` in
    /// `quiver.yaml` (a `key_ttl` of zero means no expiry).
    pub fn from_repo_config(
        url: Option<String>,
        cluster: Option<Vec<String>>,
        key_ttl: Option<quiver_core::Duration>,
    ) -> Result<Self> {
        Self::try_from(RedisSection {
            url,
            cluster,
            key_ttl,
            connect_timeout: None,
            read_timeout: None,
            write_timeout: None,
        })
    }

    /// Checks that exactly one of `url` and `cluster` is set, that `url` is a Redis URL
    /// (`redis://`, `rediss://`, `redis+unix://` or `unix://`) and that the cluster's
    /// node addresses are addresses.
    pub fn check(&self) -> Result<()> {
        const SCHEMES: [&str; 4] = ["redis://", "rediss://", "redis+unix://", "unix://"];
        match (&self.url, self.cluster.is_empty()) {
            (Some(_), false) => Err(Error::Invalid(
                "a redis store takes exactly one of `url` (one server) or `cluster` (node \
                 addresses), not both"
                    .into(),
            )),
            (None, true) => Err(Error::Invalid(
                "a redis store needs `url` (one server, e.g. redis://127.0.0.1:6379) or \
                 `cluster` (the addresses of Redis Cluster nodes)"
                    .into(),
            )),
            (Some(url), true) => {
                let scheme_only = SCHEMES.contains(&url.as_str());
                if scheme_only || !SCHEMES.iter().any(|s| url.starts_with(s)) {
                    return Err(Error::Invalid(format!(
                        "redis {}: not a valid Redis URL: expected one such as \
                         redis://127.0.0.1:6379 (redis://, rediss://, redis+unix:// or \
                         unix://)",
                        redact(url)
                    )));
                }
                Ok(())
            }
            (None, false) => {
                let bad = self.cluster.iter().find(|n| {
                    let n = n.trim();
                    n.is_empty() || n.contains(char::is_whitespace)
                });
                match bad {
                    Some(bad) => Err(Error::Invalid(format!(
                        "redis `cluster` node address {:?} is not an address (expected \
                         host:port or redis://host:port)",
                        redact(bad)
                    ))),
                    None => Ok(()),
                }
            }
        }
    }

    /// The key TTL in milliseconds, `0` for none.
    fn ttl_millis(&self) -> u64 {
        match self.key_ttl {
            Some(d) if !d.is_zero() => {
                let ms = d.as_micros().div_ceil(1000);
                ms.clamp(1, i64::MAX as u128) as u64
            }
            _ => 0,
        }
    }
}

/// `online_store: { type: redis, … }` as written in `quiver.yaml`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RedisSection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cluster: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key_ttl: Option<quiver_core::Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    connect_timeout: Option<quiver_core::Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    read_timeout: Option<quiver_core::Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    write_timeout: Option<quiver_core::Duration>,
}

/// A positive duration of the section, or an error naming the field.
fn positive(name: &str, d: Option<quiver_core::Duration>) -> Result<Option<Duration>> {
    match d {
        None => Ok(None),
        Some(d) if d.micros() <= 0 => Err(Error::Invalid(format!(
            "redis {name} must be positive, not {d}"
        ))),
        Some(d) => Ok(Some(Duration::from_micros(d.micros() as u64))),
    }
}

fn section_duration(d: Duration) -> quiver_core::Duration {
    quiver_core::Duration::from_micros(d.as_micros().min(i64::MAX as u128) as i64)
}

impl TryFrom<RedisSection> for RedisConfig {
    type Error = Error;

    fn try_from(section: RedisSection) -> Result<Self> {
        if section.cluster.as_ref().is_some_and(Vec::is_empty) {
            return Err(Error::Invalid(
                "redis `cluster` lists no node addresses".into(),
            ));
        }
        let key_ttl = match section.key_ttl {
            Some(d) if d.micros() < 0 => {
                return Err(Error::Invalid(format!("redis key_ttl {d} is negative")))
            }
            Some(d) if !d.is_zero() => Some(Duration::from_micros(d.micros() as u64)),
            _ => None,
        };
        let defaults = Self::default();
        let cfg = Self {
            url: section.url,
            cluster: section.cluster.unwrap_or_default(),
            key_ttl,
            connect_timeout: positive("connect_timeout", section.connect_timeout)?
                .unwrap_or(defaults.connect_timeout),
            read_timeout: positive("read_timeout", section.read_timeout)?
                .unwrap_or(defaults.read_timeout),
            response_timeout: positive("write_timeout", section.write_timeout)?
                .unwrap_or(defaults.response_timeout),
        };
        cfg.check()?;
        Ok(cfg)
    }
}

impl From<RedisConfig> for RedisSection {
    fn from(cfg: RedisConfig) -> Self {
        RedisSection {
            url: cfg.url,
            cluster: (!cfg.cluster.is_empty()).then_some(cfg.cluster),
            key_ttl: cfg.key_ttl.map(section_duration),
            connect_timeout: Some(section_duration(cfg.connect_timeout)),
            read_timeout: Some(section_duration(cfg.read_timeout)),
            write_timeout: Some(section_duration(cfg.response_timeout)),
        }
    }
}

/// The Redis key of an entity key: `q{` ++ xxh3-64 as 16 hex digits ++ `}` ++ the
/// entity key (see the module documentation).
pub fn redis_key(entity_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(TAGGED_PREFIX_LEN + entity_key.len());
    redis_key_into(entity_key, &mut k);
    k
}

/// Like [`redis_key`], into a reused buffer (cleared first).
pub fn redis_key_into(entity_key: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(KEY_PREFIX);
    let h = xxhash_rust::xxh3::xxh3_64(entity_key);
    out.extend_from_slice(format!("{h:016x}").as_bytes());
    out.push(b'}');
    out.extend_from_slice(entity_key);
}

/// The entity key stored under a Redis key, when the key is one of the store's (right
/// prefix, hash tag matching the entity key); `None` for any other key.
pub fn entity_key_of(redis_key: &[u8]) -> Option<&[u8]> {
    let rest = redis_key.strip_prefix(KEY_PREFIX)?;
    if rest.len() < 17 || rest[16] != b'}' {
        return None;
    }
    let (hex, entity) = (&rest[..16], &rest[17..]);
    let h = xxhash_rust::xxh3::xxh3_64(entity);
    (format!("{h:016x}").as_bytes() == hex).then_some(entity)
}

/// Where a scan of the store's keys is: the nodes to scan, the node being scanned and
/// its cursor.
struct KeyScan {
    nodes: Vec<Option<(String, u16)>>,
    node: usize,
    cursor: u64,
}

/// The connection: a reconnecting multiplexed connection to one server, or a cluster
/// connection (one multiplexed connection per node, routing by slot, following
/// `MOVED` / `ASK`).
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

struct Inner {
    conn: Conn,
    /// For messages: the URL (password hidden) or the cluster's seed nodes.
    addr: String,
    ttl_millis: u64,
    read_timeout: Duration,
}

/// The Redis online store. Cheap to clone: clones share the connection.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("backend", &self.backend())
            .field("addr", &self.inner.addr)
            .finish_non_exhaustive()
    }
}

/// `url` with any password replaced by `***`, for messages.
fn redact(url: &str) -> String {
    quiver_core::model::redact_url(url)
}

/// A cluster node address as the client takes it (`host:port` gets `redis://`).
fn node_url(node: &str) -> String {
    let node = node.trim();
    if node.contains("://") {
        node.to_string()
    } else {
        format!("redis://{node}")
    }
}

/// The wait before merge attempt `attempt + 1`: random, up to a bound that doubles with
/// each attempt (from 1 ms to [`MERGE_BACKOFF_MAX`]), so that writers that collided
/// spread out.
fn backoff(attempt: u32) -> Duration {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let bound = Duration::from_millis(1)
        .saturating_mul(1 << attempt.min(16))
        .min(MERGE_BACKOFF_MAX);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut seed = [0u8; 12];
    seed[..4].copy_from_slice(&nanos.to_le_bytes());
    seed[4..].copy_from_slice(&n.to_le_bytes());
    let r = xxhash_rust::xxh3::xxh3_64(&seed);
    bound.mul_f64((r >> 11) as f64 / (1u64 << 53) as f64)
}

fn is_noscript(e: &RedisError) -> bool {
    e.kind() == ErrorKind::Server(ServerErrorKind::NoScript)
}

fn args_len(cmd: &Cmd) -> usize {
    cmd.args_iter()
        .map(|a| match a {
            redis::Arg::Simple(b) => b.len(),
            _ => 0,
        })
        .sum()
}

impl RedisStore {
    /// Connects to the server or cluster of `config`, checks that it answers and loads
    /// the store's scripts.
    pub async fn connect(config: &RedisConfig) -> Result<RedisStore> {
        config.check()?;
        let (conn, addr) = match &config.url {
            Some(url) => {
                let addr = redact(url);
                let client = redis::Client::open(url.as_str()).map_err(|e| {
                    Error::Invalid(format!("redis {addr}: not a valid Redis URL: {e}"))
                })?;
                let manager_config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(config.connect_timeout))
                    .set_response_timeout(Some(config.response_timeout))
                    // Reconnection attempts after a lost connection; the first connection
                    // fails fast so that a wrong address is reported at once.
                    .set_number_of_retries(3)
                    .set_max_delay(Duration::from_secs(2));
                let manager = ConnectionManager::new_with_config(client, manager_config)
                    .await
                    .map_err(|e| Error::store_from(format!("redis {addr}: cannot connect"), e))?;
                (Conn::Single(manager), addr)
            }
            None => {
                let nodes: Vec<String> = config.cluster.iter().map(|n| node_url(n)).collect();
                let addr = format!(
                    "cluster {}",
                    nodes
                        .iter()
                        .map(|n| redact(n))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                let client = ClusterClientBuilder::new(nodes)
                    .connection_timeout(config.connect_timeout)
                    .response_timeout(config.response_timeout)
                    .build()
                    .map_err(|e| {
                        Error::Invalid(format!("redis {addr}: invalid node addresses: {e}"))
                    })?;
                let conn = client
                    .get_async_connection()
                    .await
                    .map_err(|e| Error::store_from(format!("redis {addr}: cannot connect"), e))?;
                (Conn::Cluster(conn), addr)
            }
        };
        let store = RedisStore {
            inner: Arc::new(Inner {
                conn,
                addr,
                ttl_millis: config.ttl_millis(),
                read_timeout: config.read_timeout,
            }),
        };
        store.load_scripts().await?;
        Ok(store)
    }

    /// Whether the store is on a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.inner.conn, Conn::Cluster(_))
    }

    /// The address of the store, for messages (passwords hidden).
    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    fn err(&self, context: &str, e: impl Into<quiver_online::BoxError>) -> Error {
        Error::store_from(format!("redis {}: {context}", self.inner.addr), e)
    }

    /// `call`, failed with an error naming the read timeout when it takes longer: what
    /// reads and health checks wait at most, however stuck the server is.
    async fn within_read_timeout<T>(
        &self,
        call: impl std::future::Future<Output = Result<T>>,
        context: &str,
    ) -> Result<T> {
        let timeout = self.inner.read_timeout;
        tokio::time::timeout(timeout, call).await.map_err(|_| {
            self.err(
                context,
                format!(
                    "no answer within the read timeout of {} ms (online_store.read_timeout)",
                    timeout.as_millis()
                ),
            )
        })?
    }

    /// Loads the scripts (on every primary in cluster mode).
    async fn load_scripts(&self) -> Result<()> {
        for (name, script) in [
            ("write", &*WRITE),
            ("delete", &*DELETE),
            ("merge", &*MERGE),
            ("tile delete", &*DELETE_TILES),
        ] {
            let context = format!("cannot load the {name} script");
            let loaded = match self.inner.conn.clone() {
                Conn::Single(mut c) => script.load_async(&mut c).await,
                Conn::Cluster(mut c) => script.load_async(&mut c).await,
            };
            loaded.map_err(|e| self.err(&context, e))?;
        }
        Ok(())
    }

    /// Sends single-key commands and returns their answers in order, each command's error
    /// in its place. On a single server the commands go in pipelines of up to
    /// [`PIPELINE_COMMANDS`] commands / [`PIPELINE_BYTES`] bytes, one after the other (a
    /// failed pipeline fails the call); on a cluster each goes to its key's shard, up to
    /// [`CLUSTER_IN_FLIGHT`] at once.
    async fn send(&self, cmds: &[Cmd], context: &str) -> Result<Vec<RedisResult<Value>>> {
        let mut out = Vec::with_capacity(cmds.len());
        match self.inner.conn.clone() {
            Conn::Single(mut conn) => {
                let mut start = 0;
                while start < cmds.len() {
                    let mut end = start;
                    let mut bytes = 0;
                    while end < cmds.len()
                        && end - start < PIPELINE_COMMANDS
                        && (end == start || bytes < PIPELINE_BYTES)
                    {
                        bytes += args_len(&cmds[end]);
                        end += 1;
                    }
                    let mut pipe = redis::Pipeline::with_capacity(end - start);
                    for c in &cmds[start..end] {
                        pipe.add_command(c.clone());
                    }
                    let answers: Vec<RedisResult<Value>> = pipe
                        .ignore_errors()
                        .query_async(&mut conn)
                        .await
                        .map_err(|e| self.err(context, e))?;
                    if answers.len() != end - start {
                        return Err(self.err(
                            context,
                            format!(
                                "{} answers to a pipeline of {} commands",
                                answers.len(),
                                end - start
                            ),
                        ));
                    }
                    out.extend(answers);
                    start = end;
                }
            }
            Conn::Cluster(conn) => {
                // Each command goes to the shard of its key; the requests are issued
                // concurrently, so each shard's connection carries them pipelined.
                let requests: Vec<_> = cmds
                    .iter()
                    .map(|cmd| {
                        let mut conn = conn.clone();
                        async move { conn.req_packed_command(cmd).await }
                    })
                    .collect();
                out = stream::iter(requests)
                    .buffered(CLUSTER_IN_FLIGHT)
                    .collect()
                    .await;
            }
        }
        Ok(out)
    }

    /// Runs single-key commands (scripts by `EVALSHA` among them) and returns their
    /// answers in order. Commands answered `NOSCRIPT` (a restarted or failed-over server,
    /// `SCRIPT FLUSH`) are sent again once after loading the scripts; any other error
    /// fails the call.
    async fn run(&self, cmds: &[Cmd], context: &str) -> Result<Vec<Value>> {
        let mut answers = self.send(cmds, context).await?;
        let missing: Vec<usize> = answers
            .iter()
            .enumerate()
            .filter(|(_, a)| matches!(a, Err(e) if is_noscript(e)))
            .map(|(i, _)| i)
            .collect();
        if !missing.is_empty() {
            self.load_scripts().await?;
            let again: Vec<Cmd> = missing.iter().map(|&i| cmds[i].clone()).collect();
            let retried = self.send(&again, context).await?;
            for (i, a) in missing.into_iter().zip(retried) {
                answers[i] = a;
            }
        }
        answers
            .into_iter()
            .map(|a| a.map_err(|e| self.err(context, e)))
            .collect()
    }

    /// The values of one `HMGET` of `n` fields, `None` for missing ones.
    fn hmget_values(&self, answer: Value, n: usize, context: &str) -> Result<Vec<Option<Vec<u8>>>> {
        let values = match answer {
            Value::Array(v) if v.len() == n => v,
            other => {
                return Err(self.err(context, format!("HMGET of {n} fields answered {other:?}")))
            }
        };
        values
            .into_iter()
            .map(|v| match v {
                Value::Nil => Ok(None),
                Value::BulkString(b) => Ok(Some(b)),
                other => Err(self.err(context, format!("HMGET answered {other:?} for a field"))),
            })
            .collect()
    }

    /// A scan of the store's keys: `SCAN` on the server, or on every primary in
    /// cluster mode, page by page with [`Self::next_page`].
    async fn scan_keys(&self) -> Result<KeyScan> {
        let nodes: Vec<Option<(String, u16)>> = match self.inner.conn.clone() {
            Conn::Single(_) => vec![None],
            Conn::Cluster(mut c) => self
                .primaries(&mut c)
                .await?
                .into_iter()
                .map(Some)
                .collect(),
        };
        Ok(KeyScan {
            nodes,
            node: 0,
            cursor: 0,
        })
    }

    /// The next page of a scan: the store's keys among those `SCAN` returned (possibly
    /// none); `None` at the end. A key may be seen twice (`SCAN` promises every key
    /// that exists throughout at least once).
    async fn next_page(&self, scan: &mut KeyScan) -> Result<Option<Vec<Vec<u8>>>> {
        let Some(node) = scan.nodes.get(scan.node) else {
            return Ok(None);
        };
        let (next, mut keys) = self.scan_step(node.as_ref(), scan.cursor).await?;
        if next == 0 {
            scan.node += 1;
        }
        scan.cursor = next;
        keys.retain(|k| entity_key_of(k).is_some());
        Ok(Some(keys))
    }

    /// The primaries of the cluster, as (host, port), from `CLUSTER SLOTS`.
    async fn primaries(&self, conn: &mut ClusterConnection) -> Result<Vec<(String, u16)>> {
        let context = "cannot list the cluster's primaries (CLUSTER SLOTS)";
        let slots = conn
            .route_command(
                redis::cmd("CLUSTER").arg("SLOTS").clone(),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
            )
            .await
            .map_err(|e| self.err(context, e))?;
        let bad = |what: &str| self.err(context, format!("unexpected answer: {what}"));
        let Value::Array(ranges) = slots else {
            return Err(bad("not an array"));
        };
        let mut nodes: Vec<(String, u16)> = Vec::new();
        for range in ranges {
            let Value::Array(parts) = range else {
                return Err(bad("a slot range is not an array"));
            };
            let Some(Value::Array(primary)) = parts.get(2) else {
                return Err(bad("a slot range has no primary"));
            };
            let host = match primary.first() {
                Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                Some(Value::SimpleString(s)) => s.clone(),
                _ => return Err(bad("a primary has no host")),
            };
            let port = match primary.get(1) {
                Some(Value::Int(p)) => u16::try_from(*p).map_err(|_| bad("a port"))?,
                _ => return Err(bad("a primary has no port")),
            };
            if !nodes.iter().any(|(h, p)| *h == host && *p == port) {
                nodes.push((host, port));
            }
        }
        Ok(nodes)
    }

    /// One `SCAN` step of the store's keys on one server: the next cursor and the keys.
    async fn scan_step(
        &self,
        node: Option<&(String, u16)>,
        cursor: u64,
    ) -> Result<(u64, Vec<Vec<u8>>)> {
        let mut pattern = KEY_PREFIX.to_vec();
        pattern.push(b'*');
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(SCAN_COUNT);
        let answer = match (self.inner.conn.clone(), node) {
            (Conn::Single(mut c), _) => c.req_packed_command(&cmd).await,
            (Conn::Cluster(mut c), Some((host, port))) => {
                let route = SingleNodeRoutingInfo::ByAddress {
                    host: host.clone(),
                    port: *port,
                };
                c.route_command(cmd, RoutingInfo::SingleNode(route)).await
            }
            (Conn::Cluster(_), None) => unreachable!("cluster scans name their node"),
        };
        let context = match node {
            Some((host, port)) => format!("cannot scan node {host}:{port}"),
            None => "cannot scan".to_string(),
        };
        let answer = answer.map_err(|e| self.err(&context, e))?;
        redis::from_redis_value::<(u64, Vec<Vec<u8>>)>(answer).map_err(|e| self.err(&context, e))
    }
}

/// Redis gives every guarantee of [`OnlineStore`]; of the capabilities, it is shared
/// across processes and hosts, but neither atomic across keys nor (as far as the store
/// can tell) durable:
///
/// * **Newer wins, last of equals wins**: the batch is resolved on the client (per
///   (key, field) the newest row, of equal versions the last in the batch), and each
///   entity's winning rows are compared with the stored ones and written by one Lua
///   script, which Redis runs atomically: no other command runs between the comparison
///   and the write.
/// * **Atomic per key, not per batch.** A `write` is one script call per entity key, a
///   `merge_tiles` one compare-and-set per entity key, pipelined (on a cluster, spread
///   over the shards); a call is not a transaction. If it fails midway (a lost
///   connection, a shard down, a timeout) some entities may have their part and others
///   not, and the call returns an error. Replaying a `write` is idempotent
///   (newer-wins), and so is replaying a merge with stream positions, so a job that
///   retries a failed call converges. A failure may also hide whether a call was
///   applied: a retried `write` then counts the rows again (as written, as equal
///   versions replace).
/// * **Merges lose no update**: see the module documentation (compare-and-set on a
///   per-key version).
/// * **Not durable**: with `appendonly` off, a Redis crash loses recent writes (it can
///   then roll a cell back to an older row, or a tile and its position back together,
///   which a replay restores).
/// * **Read-your-writes**: yes, reading from the primaries (replicas are not read).
/// * **Whole cells; reads per key**: a read sees each key's fields (one `HMGET`) as of one
///   moment; a read of many keys may see some of a concurrent call and not the rest.
/// * **No deletion semantics**: key expiry, `delete_older_than` and
///   `delete_tiles_before` only free memory.
#[async_trait]
impl OnlineStore for RedisStore {
    async fn write(&self, rows: &[OnlineWrite<'_>]) -> Result<WriteStats> {
        if rows.is_empty() {
            return Ok(WriteStats::default());
        }
        // Validate every row before sending anything, so that a bad row fails the batch
        // without a partial write.
        let mut versions = Vec::with_capacity(rows.len());
        for (index, w) in rows.iter().enumerate() {
            let version = row_version(w.row).map_err(|e| {
                Error::Invalid(format!(
                    "row {index} of the batch is not an encoded row: {e}"
                ))
            })?;
            versions.push(version);
        }
        // By key and field, then newest first; among equal versions the latest in the
        // batch comes first and wins.
        let mut order: Vec<usize> = (0..rows.len()).collect();
        order.sort_unstable_by(|&a, &b| {
            rows[a]
                .key
                .cmp(rows[b].key)
                .then(rows[a].field.cmp(&rows[b].field))
                .then(versions[b].cmp(&versions[a]))
                .then(b.cmp(&a))
        });
        let ttl = self.inner.ttl_millis.to_string();
        let sha = WRITE.get_hash();
        let mut cmds: Vec<Cmd> = Vec::new();
        let mut i = 0;
        let mut key_buf = Vec::new();
        while i < order.len() {
            let key = rows[order[i]].key;
            redis_key_into(key, &mut key_buf);
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(sha).arg(1).arg(&key_buf[..]).arg(&ttl);
            let mut last_field: Option<FieldId> = None;
            while i < order.len() && rows[order[i]].key == key {
                let w = &rows[order[i]];
                if last_field != Some(w.field) {
                    cmd.arg(&w.field[..]).arg(w.row);
                    last_field = Some(w.field);
                }
                i += 1;
            }
            cmds.push(cmd);
        }
        let answers = self.run(&cmds, "conditional write failed").await?;
        let mut written = 0u64;
        for a in answers {
            match a {
                Value::Int(n) if n >= 0 => written += n as u64,
                other => {
                    return Err(self.err(
                        "conditional write failed",
                        format!("the write script answered {other:?}"),
                    ))
                }
            }
        }
        Ok(WriteStats {
            written,
            skipped: rows.len() as u64 - written,
        })
    }

    async fn read(&self, keys: &[&[u8]], fields: &[FieldId]) -> Result<Vec<Option<Vec<u8>>>> {
        Ok(self.read_with_tiles(keys, fields, &[]).await?.0)
    }

    /// One pipeline: an `HMGET` of the row fields per key, then one of the tile fields
    /// per key and tile read.
    async fn read_with_tiles(
        &self,
        keys: &[&[u8]],
        fields: &[FieldId],
        tiles: &[TileRead<'_>],
    ) -> Result<(Cells, Vec<TileCells>)> {
        let mut key_buf = Vec::new();
        let hmget = |key: &[u8], fields: &mut dyn Iterator<Item = &[u8]>, key_buf: &mut Vec<u8>| {
            redis_key_into(key, key_buf);
            let mut cmd = redis::cmd("HMGET");
            cmd.arg(&key_buf[..]);
            for f in fields {
                cmd.arg(f);
            }
            cmd
        };
        let mut cmds: Vec<Cmd> = Vec::new();
        if !fields.is_empty() {
            for k in keys {
                cmds.push(hmget(k, &mut fields.iter().map(|f| &f[..]), &mut key_buf));
            }
        }
        let tile_fields: Vec<Vec<[u8; 16]>> = tiles
            .iter()
            .map(|t| t.starts.iter().map(|&s| tile_field(&t.view, s)).collect())
            .collect();
        for (t, tf) in tiles.iter().zip(&tile_fields) {
            if !tf.is_empty() {
                for k in t.keys {
                    cmds.push(hmget(k, &mut tf.iter().map(|f| &f[..]), &mut key_buf));
                }
            }
        }
        let mut rows = Vec::with_capacity(keys.len() * fields.len());
        let mut tile_cells: Vec<TileCells> = Vec::with_capacity(tiles.len());
        if cmds.is_empty() {
            tile_cells.resize_with(tiles.len(), TileCells::default);
            return Ok((rows, tile_cells));
        }
        let answers = self
            .within_read_timeout(self.run(&cmds, "read failed"), "read failed")
            .await?;
        let mut answers = answers.into_iter();
        if !fields.is_empty() {
            for a in answers.by_ref().take(keys.len()) {
                rows.extend(self.hmget_values(a, fields.len(), "read failed")?);
            }
        }
        for (t, tf) in tiles.iter().zip(&tile_fields) {
            let mut cells = Vec::with_capacity(t.keys.len() * tf.len());
            if !tf.is_empty() {
                for a in answers.by_ref().take(t.keys.len()) {
                    cells.extend(self.hmget_values(a, tf.len(), "tile read failed")?);
                }
            }
            tile_cells.push(cells.into());
        }
        Ok((rows, tile_cells))
    }

    async fn ping(&self) -> Result<()> {
        self.within_read_timeout(
            self.run(&[redis::cmd("PING")], "ping failed"),
            "ping failed",
        )
        .await?;
        Ok(())
    }

    async fn delete_older_than(&self, field: FieldId, cutoff: Timestamp) -> Result<u64> {
        let sha = DELETE.get_hash();
        let cutoff = cutoff.to_le_bytes();
        let mut deleted = 0u64;
        let mut scan = self.scan_keys().await?;
        while let Some(keys) = self.next_page(&mut scan).await? {
            let cmds: Vec<Cmd> = keys
                .iter()
                .map(|k| {
                    let mut cmd = redis::cmd("EVALSHA");
                    cmd.arg(sha)
                        .arg(1)
                        .arg(&k[..])
                        .arg(&field[..])
                        .arg(&cutoff[..]);
                    cmd
                })
                .collect();
            for a in self.run(&cmds, "delete failed").await? {
                match a {
                    Value::Int(n @ (0 | 1)) => deleted += n as u64,
                    other => {
                        return Err(self.err(
                            "delete failed",
                            format!("the delete script answered {other:?}"),
                        ))
                    }
                }
            }
        }
        Ok(deleted)
    }

    async fn merge_tiles(
        &self,
        merges: &[KeyMerge<'_>],
        merger: &dyn TileMerger,
    ) -> Result<MergeStats> {
        validate_merges(merges)?;
        let mut stats = MergeStats::default();
        if merges.is_empty() {
            return Ok(stats);
        }
        let (order, groups) = group_by_key(merges);
        let group = |g: usize| order[groups[g].clone()].iter().map(|&i| &merges[i]);
        let plans: Vec<KeyMergePlan> = (0..groups.len())
            .map(|g| KeyMergePlan::new(group(g)))
            .collect();
        let redis_keys: Vec<Vec<u8>> = groups
            .iter()
            .map(|r| redis_key(merges[order[r.start]].key))
            .collect();
        let ttl = self.inner.ttl_millis.to_string();
        let sha = MERGE.get_hash();
        let mut pending: Vec<usize> = (0..groups.len()).collect();
        let mut attempt = 0;
        loop {
            attempt += 1;
            // 1. Read each pending key's version, tiles and positions: one HMGET per key.
            let reads: Vec<Cmd> = pending
                .iter()
                .map(|&g| {
                    let mut cmd = redis::cmd("HMGET");
                    cmd.arg(&redis_keys[g][..]).arg(VERSION_FIELD);
                    for f in plans[g].fields() {
                        cmd.arg(f.as_bytes());
                    }
                    cmd
                })
                .collect();
            let answers = self.run(&reads, "merge failed").await?;
            // 2. Merge in memory; 3. compare-and-set what changed.
            let mut writes: Vec<Cmd> = Vec::new();
            let mut writing: Vec<(usize, KeyMergeOutcome)> = Vec::new();
            for (&g, answer) in pending.iter().zip(answers) {
                let plan = &plans[g];
                let values = self.hmget_values(answer, 1 + plan.fields().len(), "merge failed")?;
                let stored: Vec<Option<&[u8]>> = values[1..].iter().map(|v| v.as_deref()).collect();
                let outcome = plan.apply(group(g), &stored, merger)?;
                if outcome.changed.is_empty() {
                    // Nothing to write (every request a replay): the read decided it.
                    stats.add_key(&outcome, &order[groups[g].clone()]);
                    continue;
                }
                let mut cmd = redis::cmd("EVALSHA");
                cmd.arg(sha)
                    .arg(1)
                    .arg(&redis_keys[g][..])
                    .arg(values[0].as_deref().unwrap_or_default())
                    .arg(&ttl);
                for (c, (i, _)) in outcome.changed.iter().enumerate() {
                    cmd.arg(plan.fields()[*i].as_bytes()).arg(outcome.value(c));
                }
                writes.push(cmd);
                writing.push((g, outcome));
            }
            let answers = self.run(&writes, "merge failed").await?;
            let mut conflicts = Vec::new();
            for ((g, outcome), answer) in writing.into_iter().zip(answers) {
                match answer {
                    Value::Int(1) => stats.add_key(&outcome, &order[groups[g].clone()]),
                    Value::Int(0) => conflicts.push(g),
                    other => {
                        return Err(self.err(
                            "merge failed",
                            format!("the merge script answered {other:?}"),
                        ))
                    }
                }
            }
            if conflicts.is_empty() {
                return Ok(stats);
            }
            if attempt >= MERGE_ATTEMPTS {
                return Err(self.err(
                    "merge failed",
                    format!(
                        "{} entity keys kept changing under concurrent writers; gave up \
                         after {attempt} attempts (first key {:?})",
                        conflicts.len(),
                        String::from_utf8_lossy(&redis_keys[conflicts[0]])
                    ),
                ));
            }
            stats.retries += conflicts.len() as u64;
            tokio::time::sleep(backoff(attempt)).await;
            pending = conflicts;
        }
    }

    async fn read_tiles(
        &self,
        keys: &[&[u8]],
        view: FieldId,
        starts: &[Timestamp],
    ) -> Result<TileCells> {
        let read = TileRead { keys, view, starts };
        let (_, mut tiles) = self.read_with_tiles(&[], &[], &[read]).await?;
        Ok(tiles.pop().unwrap_or_default())
    }

    async fn stream_positions(
        &self,
        keys: &[&[u8]],
        view: FieldId,
        partition: &[u8],
    ) -> Result<Vec<Option<u128>>> {
        let field = position_field(&view, partition);
        let mut key_buf = Vec::new();
        let cmds: Vec<Cmd> = keys
            .iter()
            .map(|k| {
                redis_key_into(k, &mut key_buf);
                let mut cmd = redis::cmd("HMGET");
                cmd.arg(&key_buf[..]).arg(&field[..]);
                cmd
            })
            .collect();
        let context = "stream position read failed";
        let answers = self.run(&cmds, context).await?;
        let mut out = Vec::with_capacity(keys.len());
        for a in answers {
            let value = self.hmget_values(a, 1, context)?.pop().flatten();
            out.push(value.map(|v| decode_position(&v, partition)).transpose()?);
        }
        Ok(out)
    }

    async fn delete_tiles_before(&self, view: FieldId, cutoff: Timestamp) -> Result<u64> {
        let sha = DELETE_TILES.get_hash();
        let context = "tile delete failed";
        let mut deleted = 0u64;
        let mut scan = self.scan_keys().await?;
        while let Some(keys) = self.next_page(&mut scan).await? {
            let listings: Vec<Cmd> = keys
                .iter()
                .map(|k| {
                    let mut cmd = redis::cmd("HKEYS");
                    cmd.arg(&k[..]);
                    cmd
                })
                .collect();
            let mut cmds: Vec<Cmd> = Vec::new();
            for (k, listing) in keys.iter().zip(self.run(&listings, context).await?) {
                let fields: Vec<Vec<u8>> =
                    redis::from_redis_value(listing).map_err(|e| self.err(context, e))?;
                let doomed: Vec<&Vec<u8>> = fields
                    .iter()
                    .filter(|f| {
                        matches!(parse_tile_field(f), Some((v, start)) if v == view && start < cutoff)
                    })
                    .collect();
                for chunk in doomed.chunks(DELETE_TILES_CHUNK) {
                    let mut cmd = redis::cmd("EVALSHA");
                    cmd.arg(sha).arg(1).arg(&k[..]);
                    for f in chunk {
                        cmd.arg(&f[..]);
                    }
                    cmds.push(cmd);
                }
            }
            for a in self.run(&cmds, context).await? {
                match a {
                    Value::Int(n) if n >= 0 => deleted += n as u64,
                    other => {
                        return Err(self.err(
                            context,
                            format!("the tile delete script answered {other:?}"),
                        ))
                    }
                }
            }
        }
        Ok(deleted)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            atomic_batches: false,
            atomic_per_key: true,
            shared_across_processes: true,
            shared_across_hosts: true,
            durable_writes: false,
        }
    }

    fn backend(&self) -> &'static str {
        match self.inner.conn {
            Conn::Single(_) => "redis",
            Conn::Cluster(_) => "redis-cluster",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_a_hash_tag_and_round_trip() {
        let e = b"proj\0driver\0\x01\x00\x00\x00\x00\x00\x00\x00\x2a";
        let k = redis_key(e);
        assert!(k.starts_with(b"q{"));
        assert_eq!(k[18], b'}');
        assert!(k[2..18].iter().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(entity_key_of(&k), Some(&e[..]));
        // Braces inside the entity key do not move the tag.
        let odd = b"p\0s\0}{x}";
        assert_eq!(entity_key_of(&redis_key(odd)), Some(&odd[..]));
        // Foreign keys are not the store's.
        assert_eq!(entity_key_of(b"q{0000000000000000}abc"), None);
        assert_eq!(entity_key_of(b"q{short}"), None);
        assert_eq!(entity_key_of(b"other"), None);
        let mut tampered = redis_key(e);
        tampered.push(b'x');
        assert_eq!(entity_key_of(&tampered), None);
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(
            redact("redis://user:secret@host:6379/2"),
            "redis://user:***@host:6379/2"
        );
        assert_eq!(
            redact("redis://:secret@host:6379"),
            "redis://:***@host:6379"
        );
        assert_eq!(node_url("10.0.0.1:7000"), "redis://10.0.0.1:7000");
    }

    #[test]
    fn config_checks_and_ttl() {
        assert!(RedisConfig::default().check().is_err());
        let mut both = RedisConfig::standalone("redis://a:1");
        both.cluster = vec!["b:2".into()];
        assert!(both.check().is_err());
        let c = RedisConfig::from_repo_config(
            Some("redis://a:1".into()),
            None,
            Some(quiver_core::Duration::from_micros(1_500)),
        )
        .unwrap();
        assert_eq!(c.ttl_millis(), 2);
        let c = RedisConfig::from_repo_config(
            None,
            Some(vec!["a:1".into()]),
            Some(quiver_core::Duration::ZERO),
        )
        .unwrap();
        assert_eq!(c.key_ttl, None);
        assert_eq!(c.ttl_millis(), 0);
        let e = RedisConfig::from_repo_config(
            Some("redis://a:1".into()),
            None,
            Some(quiver_core::Duration::from_micros(-1)),
        )
        .unwrap_err();
        assert!(e.to_string().contains("negative"), "{e}");
    }

    /// The section of `quiver.yaml`, as the facade would parse it: a tagged enum of the
    /// backends' own configuration types.
    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
    enum OnlineStoreSection {
        Embedded(quiver_online::EmbeddedConfig),
        Redis(RedisConfig),
    }

    fn parse(yaml: &str) -> std::result::Result<OnlineStoreSection, String> {
        serde_saphyr::from_str(yaml).map_err(|e| e.to_string())
    }

    #[test]
    fn the_config_section_parses_into_redis_config() {
        assert_eq!(
            parse("{ type: redis, url: redis://127.0.0.1:6379 }").unwrap(),
            OnlineStoreSection::Redis(RedisConfig::standalone("redis://127.0.0.1:6379"))
        );
        let cfg = parse(
            "type: redis\nkey_ttl: 12h\ncluster:\n  - redis://10.0.0.1:6379\n  - 10.0.0.2:6379\n",
        )
        .unwrap();
        let want = RedisConfig::cluster(["redis://10.0.0.1:6379", "10.0.0.2:6379"])
            .with_key_ttl(Duration::from_secs(12 * 3600));
        assert_eq!(cfg, OnlineStoreSection::Redis(want.clone()));
        // `0` means no expiry; the timeouts keep their defaults.
        let OnlineStoreSection::Redis(c) =
            parse("{ type: redis, url: 'redis://a:1/2', key_ttl: 0 }").unwrap()
        else {
            panic!("a redis section")
        };
        assert_eq!(c.key_ttl, None);
        assert_eq!(c.connect_timeout, RedisConfig::default().connect_timeout);
        assert_eq!(c.read_timeout, Duration::from_millis(250));
        let OnlineStoreSection::Redis(c) = parse(
            "{ type: redis, url: 'redis://a:1', connect_timeout: 2s, read_timeout: 50ms, write_timeout: 10s }",
        )
        .unwrap() else {
            panic!("a redis section")
        };
        assert_eq!(
            (c.connect_timeout, c.read_timeout, c.response_timeout),
            (
                Duration::from_secs(2),
                Duration::from_millis(50),
                Duration::from_secs(10)
            )
        );
        // A round trip through YAML.
        let text = serde_saphyr::to_string(&want).unwrap();
        assert_eq!(
            serde_saphyr::from_str::<RedisConfig>(&text).unwrap(),
            want,
            "{text}"
        );
    }

    #[test]
    fn bad_redis_sections_are_rejected_with_the_reason() {
        let cases = [
            ("{ type: redis, url: redis://a:1, urll: x }", "urll"),
            (
                "{ type: redis, url: redis://a:1, connect_timeout: 5 }",
                "give a unit",
            ),
            (
                "{ type: redis, url: redis://a:1, read_timeout: 0 }",
                "read_timeout must be positive",
            ),
            ("{ type: redis }", "needs `url`"),
            (
                "{ type: redis, url: redis://a:1, cluster: [b:2] }",
                "not both",
            ),
            ("{ type: redis, cluster: [] }", "lists no node addresses"),
            ("{ type: redis, cluster: ['a b:1'] }", "is not an address"),
            (
                "{ type: redis, url: 'localhost:6379' }",
                "not a valid Redis URL",
            ),
            ("{ type: redis, url: 'redis://' }", "not a valid Redis URL"),
            (
                "{ type: redis, url: redis://a:1, key_ttl: 5 }",
                "give a unit",
            ),
        ];
        for (yaml, want) in cases {
            let e = parse(yaml).unwrap_err();
            assert!(e.contains(want), "{yaml}: {e}");
        }
        // Passwords stay out of messages.
        let e = parse("{ type: redis, url: 'http://u:secret@a:1' }").unwrap_err();
        assert!(!e.contains("secret"), "{e}");
    }

    #[test]
    fn scripts_use_the_version_field() {
        assert_eq!(VERSION_FIELD, b"v");
        for script in [MERGE_SCRIPT, DELETE_TILES_SCRIPT] {
            assert!(script.contains("HINCRBY', key, 'v', 1"), "{script}");
        }
    }
}
