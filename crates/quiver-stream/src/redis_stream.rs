//! A Redis stream read with a consumer group: `XREADGROUP` for new entries (and, first,
//! for the entries this consumer was given but never acknowledged — a restart after a
//! crash), `XACK` once they are written.
//!
//! **One reader at a time.** A consumer group deals a stream's entries out among its
//! consumers, so two readers would each apply entries out of the stream's order, and
//! positions (the newest offset applied per key) would take later entries of one for
//! replays of the other. So a stream is read by one worker at a time: the one holding
//! the group's lease (a Redis key set with `NX` and an expiry, renewed on every read);
//! the others stand by and take over when it lapses — claiming (`XAUTOCLAIM`) every
//! entry the previous holder left pending and reading those before any new one. Scale
//! out with several streams (each its own source); Kafka topics scale by partitions.
//!
//! An entry's position is its id `MS-SEQ` as the 128-bit offset `MS << 64 | SEQ`, which
//! grows along the stream; the partition is `redis:` and the stream's key.

use std::time::Duration;

use quiver_core::model::{RedisStreamSource, StreamStart};
use redis::aio::MultiplexedConnection;
use redis::Value;

use std::sync::Arc;

use crate::{Entry, Error, Result};

/// The offset of an entry id `MS-SEQ`.
pub fn offset_of(id: &str) -> Option<u128> {
    let (ms, seq) = id.split_once('-')?;
    Some((u128::from(ms.parse::<u64>().ok()?) << 64) | u128::from(seq.parse::<u64>().ok()?))
}

/// A consumer of one Redis stream in a consumer group.
pub struct RedisStreamReader {
    conn: MultiplexedConnection,
    source: RedisStreamSource,
    consumer: String,
    partition: Arc<[u8]>,
    /// While the entries pending for this consumer are read again: the id after which
    /// to go on (pending entries stay pending until acknowledged, so each read of them
    /// starts past the last one returned).
    pending: Option<String>,
    /// The group's lease: its key, how long it lasts, and whether this reader holds it.
    lease_key: String,
    lease: Duration,
    holding: bool,
    /// Whether standing by was logged.
    standing_by: bool,
}

/// Renews the lease (`KEYS[1]`) when `ARGV[1]` holds it (1), takes it when free (2),
/// else leaves it (0); `ARGV[2]` is its length in milliseconds.
const LEASE: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 2
end
return 0
";

impl RedisStreamReader {
    /// Connects as `consumer`, creating the source's group when missing (at the start
    /// the source declares). The group's lease lasts `lease` (at least a second) past
    /// each read of its holder.
    pub async fn connect(
        source: &RedisStreamSource,
        consumer: &str,
        lease: Duration,
    ) -> Result<Self> {
        let client = redis::Client::open(source.url.as_str()).map_err(|e| {
            Error::Invalid(format!(
                "source '{}': url {:?}: {e}",
                source.name,
                quiver_core::model::redact_url(&source.url)
            ))
        })?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let start = match source.start {
            StreamStart::Earliest => "0",
            StreamStart::Latest => "$",
        };
        let created: redis::RedisResult<Value> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&source.stream)
            .arg(&source.group)
            .arg(start)
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match created {
            Ok(_) => {}
            Err(e) if e.code() == Some("BUSYGROUP") => {}
            Err(e) => return Err(e.into()),
        }
        Ok(RedisStreamReader {
            conn,
            partition: format!("redis:{}", source.stream).into_bytes().into(),
            source: source.clone(),
            consumer: consumer.to_string(),
            pending: Some("0".into()),
            lease_key: format!("quiver-lease:{}:{}", source.stream, source.group),
            lease: lease.max(Duration::from_secs(1)),
            holding: false,
            standing_by: false,
        })
    }

    /// Holds the group's lease: renews it, or takes it when free — then claims every
    /// entry the group's other consumers left pending, to be read before new ones.
    /// Returns whether this reader holds it.
    async fn hold_lease(&mut self) -> Result<bool> {
        let got: i64 = redis::Script::new(LEASE)
            .key(&self.lease_key)
            .arg(&self.consumer)
            .arg(self.lease.as_millis() as u64)
            .invoke_async(&mut self.conn)
            .await?;
        self.holding = got != 0;
        if got == 2 {
            let claimed = self.claim_idle(Duration::ZERO).await?;
            tracing::info!(stream = %self.source.stream, consumer = %self.consumer, claimed,
                           "took the stream's lease");
            self.pending = Some("0".into());
        }
        Ok(self.holding)
    }

    /// The partition name positions are stored under.
    pub fn partition(&self) -> &[u8] {
        &self.partition
    }

    /// Gives the lease up (after the last acknowledgement), so that a standing-by
    /// worker takes over at once.
    pub async fn release(&mut self) -> Result<()> {
        if !self.holding {
            return Ok(());
        }
        let _: i64 = redis::Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
        )
        .key(&self.lease_key)
        .arg(&self.consumer)
        .invoke_async(&mut self.conn)
        .await?;
        self.holding = false;
        Ok(())
    }

    /// Reads up to `count` entries, waiting up to `block` for new ones: first the
    /// entries pending for this consumer, then new ones.
    pub async fn read(&mut self, count: usize, block: Duration) -> Result<Vec<Entry>> {
        if !self.hold_lease().await? {
            // Another worker reads the stream: stand by.
            if !self.standing_by {
                tracing::info!(stream = %self.source.stream, consumer = %self.consumer,
                               "another worker holds the stream's lease; standing by");
                self.standing_by = true;
            }
            tokio::time::sleep(block).await;
            return Ok(Vec::new());
        }
        self.standing_by = false;
        if let Some(after) = self.pending.take() {
            let entries = self.read_from(&after, count, None).await?;
            if let Some(last) = entries.last() {
                self.pending = Some(last.id.clone());
                return Ok(entries);
            }
        }
        self.read_from(">", count, Some(block)).await
    }

    /// Whether the entries left pending (by an earlier run of this consumer, or claimed)
    /// have all been read again.
    pub fn caught_up(&self) -> bool {
        self.holding && self.pending.is_none()
    }

    async fn read_from(
        &mut self,
        id: &str,
        count: usize,
        block: Option<Duration>,
    ) -> Result<Vec<Entry>> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.source.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(count.max(1));
        if let Some(b) = block {
            cmd.arg("BLOCK").arg(b.as_millis().max(1) as u64);
        }
        cmd.arg("STREAMS").arg(&self.source.stream).arg(id);
        let reply: Value = cmd.query_async(&mut self.conn).await?;
        let mut out = Vec::new();
        for (_, entries) in pairs(reply) {
            let Value::Array(entries) = entries else {
                continue;
            };
            for e in entries {
                out.push(self.entry(e)?);
            }
        }
        Ok(out)
    }

    fn entry(&self, e: Value) -> Result<Entry> {
        let bad = || {
            Error::Invalid(format!(
                "stream '{}': an entry of an unexpected shape in XREADGROUP's reply",
                self.source.stream
            ))
        };
        let Value::Array(mut parts) = e else {
            return Err(bad());
        };
        if parts.len() != 2 {
            return Err(bad());
        }
        let fields = parts.pop().expect("two parts");
        let id = text(parts.pop().expect("two parts")).ok_or_else(bad)?;
        let offset = offset_of(&id).ok_or_else(bad)?;
        // Fields come as a flat list (RESP2) or a map (RESP3); a deleted entry's as nil.
        let mut data = None;
        let mut take = |k: Value, v: Value| {
            if text(k).as_deref() == Some(self.source.field.as_str()) {
                if let Value::BulkString(b) = v {
                    data = Some(b);
                }
            }
        };
        match fields {
            Value::Array(kv) => {
                let mut it = kv.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    take(k, v);
                }
            }
            Value::Map(kv) => kv.into_iter().for_each(|(k, v)| take(k, v)),
            _ => {}
        }
        Ok(Entry {
            id,
            partition: self.partition.clone(),
            offset,
            data,
        })
    }

    /// Acknowledges entries written — while this reader holds the lease: once another
    /// worker took it over, the entries are that worker's (it claimed them, and finds
    /// them applied and stored when it reads them).
    pub async fn ack(&mut self, entries: &[Entry]) -> Result<()> {
        if !entries.is_empty() && !self.hold_lease().await? {
            tracing::warn!(stream = %self.source.stream, entries = entries.len(),
                           "the lease passed to another worker; leaving the acknowledgement to it");
            return Ok(());
        }
        for chunk in entries.chunks(10_000) {
            let ids: Vec<&str> = chunk.iter().map(|e| e.id.as_str()).collect();
            let _: i64 = redis::cmd("XACK")
                .arg(&self.source.stream)
                .arg(&self.source.group)
                .arg(&ids)
                .query_async(&mut self.conn)
                .await?;
        }
        Ok(())
    }

    /// Takes over the entries of the group pending longer than `min_idle` with another
    /// consumer (one that died); they are read again by the next [`Self::read`]s.
    /// Returns how many were claimed.
    async fn claim_idle(&mut self, min_idle: Duration) -> Result<usize> {
        let mut start = "0-0".to_string();
        let mut claimed = 0;
        loop {
            let reply: Value = redis::cmd("XAUTOCLAIM")
                .arg(&self.source.stream)
                .arg(&self.source.group)
                .arg(&self.consumer)
                .arg(min_idle.as_millis() as u64)
                .arg(&start)
                .arg("COUNT")
                .arg(1000)
                .arg("JUSTID")
                .query_async(&mut self.conn)
                .await?;
            let Value::Array(mut parts) = reply else {
                break;
            };
            if parts.len() < 2 {
                break;
            }
            let ids = parts.swap_remove(1);
            let next = text(parts.swap_remove(0)).unwrap_or_else(|| "0-0".into());
            if let Value::Array(ids) = ids {
                claimed += ids.len();
            }
            if next == "0-0" {
                break;
            }
            start = next;
        }
        if claimed > 0 {
            self.pending = Some("0".into());
        }
        Ok(claimed)
    }

    /// The entries of the stream not yet delivered to the group (Redis 7's `lag`),
    /// when the server tells it.
    pub async fn lag(&mut self) -> Result<Option<u64>> {
        let reply: Value = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&self.source.stream)
            .query_async(&mut self.conn)
            .await?;
        let Value::Array(groups) = reply else {
            return Ok(None);
        };
        for g in groups {
            let mut name = None;
            let mut lag = None;
            for (k, v) in pairs(g) {
                match text(k).as_deref() {
                    Some("name") => name = text(v),
                    Some("lag") => {
                        lag = match v {
                            Value::Int(n) => u64::try_from(n).ok(),
                            _ => None,
                        }
                    }
                    _ => {}
                }
            }
            if name.as_deref() == Some(self.source.group.as_str()) {
                return Ok(lag);
            }
        }
        Ok(None)
    }
}

/// The (key, value) pairs of a flat list or a map reply.
fn pairs(v: Value) -> Vec<(Value, Value)> {
    match v {
        Value::Map(kv) => kv,
        Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len() / 2);
            let mut it = items.into_iter();
            while let Some(item) = it.next() {
                match item {
                    // XREADGROUP (RESP2): [[key, entries], ...]
                    Value::Array(mut pair) if pair.len() == 2 => {
                        let v = pair.pop().expect("two");
                        out.push((pair.pop().expect("two"), v));
                    }
                    // a flat [k, v, k, v]
                    k => {
                        if let Some(v) = it.next() {
                            out.push((k, v));
                        }
                    }
                }
            }
            out
        }
        _ => Vec::new(),
    }
}

fn text(v: Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}
