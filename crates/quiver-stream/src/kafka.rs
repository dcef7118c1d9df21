//! A Kafka topic read with a consumer group (librdkafka through `rdkafka`): workers of
//! one group split the topic's partitions, and a worker joining or leaving rebalances
//! them. Offsets are never committed automatically: [`KafkaReader::ack`] commits, per
//! partition, the offset after the last event written online and offline. Events a
//! worker applied but did not commit (it died, or lost the partition in a rebalance)
//! are read again by the partition's next owner; applying them again changes nothing
//! online (stream positions) and stores them once offline (the merge).
//!
//! An event's partition is `kafka:TOPIC:N`, its offset the message's offset.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use quiver_core::model::{KafkaSource, StreamStart};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use crate::{Entry, Error, Result};

/// A consumer of one Kafka topic in a consumer group.
pub struct KafkaReader {
    consumer: Arc<StreamConsumer>,
    source: KafkaSource,
    /// Partition number → its name (`kafka:TOPIC:N`).
    partitions: BTreeMap<i32, Arc<[u8]>>,
}

impl KafkaReader {
    /// Joins the source's group as `consumer` and subscribes to its topic.
    pub fn connect(source: &KafkaSource, consumer: &str) -> Result<Self> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &source.brokers)
            .set("group.id", &source.group)
            .set("client.id", consumer)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // Freshness first: a fetch that finds nothing new returns after 100 ms
            // (librdkafka waits 500 ms), which bounds how long a new event can wait
            // at a broker that answers only when the wait ends. `options` may change it.
            .set("fetch.wait.max.ms", "100")
            .set(
                "auto.offset.reset",
                match source.start {
                    StreamStart::Earliest => "earliest",
                    StreamStart::Latest => "latest",
                },
            );
        for (k, v) in &source.options {
            config.set(k, v);
        }
        let c: StreamConsumer = config.create().map_err(|e| {
            Error::Invalid(format!(
                "source '{}': cannot create a consumer: {e}",
                source.name
            ))
        })?;
        c.subscribe(&[source.topic.as_str()])?;
        Ok(KafkaReader {
            consumer: Arc::new(c),
            source: source.clone(),
            partitions: BTreeMap::new(),
        })
    }

    fn partition(&mut self, p: i32) -> Arc<[u8]> {
        let topic = &self.source.topic;
        self.partitions
            .entry(p)
            .or_insert_with(|| format!("kafka:{topic}:{p}").into_bytes().into())
            .clone()
    }

    /// Reads up to `count` events, waiting up to `block` for the first one; after it,
    /// only what the client already holds.
    pub async fn read(&mut self, count: usize, block: Duration) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        let deadline = Instant::now() + block;
        while out.len() < count {
            let consumer = self.consumer.clone();
            let message = if out.is_empty() {
                let wait = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(wait, consumer.recv()).await {
                    Ok(m) => m,
                    Err(_) => break,
                }
            } else {
                match consumer.recv().now_or_never() {
                    Some(m) => m,
                    None => break,
                }
            };
            let m = message?;
            let partition = self.partition(m.partition());
            out.push(Entry {
                id: format!("{}:{}@{}", m.topic(), m.partition(), m.offset()),
                partition,
                offset: u128::try_from(m.offset()).unwrap_or(0),
                data: m.payload().map(<[u8]>::to_vec),
            });
        }
        Ok(out)
    }

    /// Commits, per partition, the offset after the last of `entries` (in order along
    /// each partition).
    pub async fn ack(&mut self, entries: &[Entry]) -> Result<()> {
        let mut next: BTreeMap<i32, i64> = BTreeMap::new();
        for e in entries {
            let p = self
                .partitions
                .iter()
                .find(|(_, name)| Arc::ptr_eq(name, &e.partition))
                .map(|(p, _)| *p);
            if let Some(p) = p {
                let o = i64::try_from(e.offset).unwrap_or(i64::MAX - 1) + 1;
                let n = next.entry(p).or_insert(o);
                *n = (*n).max(o);
            }
        }
        if next.is_empty() {
            return Ok(());
        }
        let consumer = self.consumer.clone();
        let topic = self.source.topic.clone();
        let committed = tokio::task::spawn_blocking(move || -> Result<()> {
            // Only partitions still assigned: one lost in a rebalance is read again from
            // its committed offset by its new owner (which changes nothing), and a
            // commit for it could move the group's offset back.
            let assigned = consumer.assignment()?;
            let mut list = TopicPartitionList::new();
            for (p, o) in next {
                if assigned.find_partition(&topic, p).is_some() {
                    list.add_partition_offset(&topic, p, Offset::Offset(o))?;
                }
            }
            if list.count() > 0 {
                consumer.commit(&list, CommitMode::Sync)?;
            }
            Ok(())
        })
        .await
        .map_err(|e| Error::Invalid(format!("a commit task failed: {e}")))?;
        if let Err(e) = committed {
            // A rebalance under way refuses commits; the events are written, and their
            // partitions' next owners read them again, which changes nothing.
            tracing::warn!(topic = %self.source.topic, error = %e,
                           "offsets not committed; the events will be read again");
        }
        Ok(())
    }

    /// Whether every partition assigned to this consumer is read to its end (false
    /// while none is assigned: the group may still be forming).
    pub async fn caught_up(&mut self) -> Result<bool> {
        let lags = self.lags().await?;
        Ok(!lags.is_empty() && lags.iter().all(|(_, lag)| *lag == 0))
    }

    /// Per partition assigned to this consumer: the events after where reading goes on
    /// (the fetch position, else the committed offset, else the partition's start).
    pub async fn lags(&mut self) -> Result<Vec<(Arc<[u8]>, u64)>> {
        let consumer = self.consumer.clone();
        let topic = self.source.topic.clone();
        let lags = tokio::task::spawn_blocking(move || -> Result<Vec<(i32, u64)>> {
            let assigned = consumer.assignment()?;
            let position = consumer.position()?;
            let committed = consumer.committed(Duration::from_secs(1))?;
            let offset = |list: &TopicPartitionList, p: i32| {
                list.find_partition(&topic, p)
                    .and_then(|e| match e.offset() {
                        Offset::Offset(o) => Some(o),
                        _ => None,
                    })
            };
            let mut out = Vec::new();
            for e in assigned.elements() {
                let p = e.partition();
                let (low, high) = consumer.fetch_watermarks(&topic, p, Duration::from_secs(1))?;
                let at = offset(&position, p)
                    .or_else(|| offset(&committed, p))
                    .unwrap_or(low);
                out.push((p, u64::try_from(high - at).unwrap_or(0)));
            }
            Ok(out)
        })
        .await
        .map_err(|e| Error::Invalid(format!("a watermark task failed: {e}")))??;
        Ok(lags
            .into_iter()
            .map(|(p, lag)| (self.partition(p), lag))
            .collect())
    }
}
