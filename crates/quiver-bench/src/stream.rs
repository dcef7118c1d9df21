//! `stream`: events/s from a stream into the tiles of the aggregated view of the `agg`
//! benchmark (19 windowed features of `amount` per `entity_id`), through the whole
//! `quiver stream` worker (read, decode JSON, validate, merge tiles online with stream
//! positions, append offline, acknowledge), run in this process until the stream is
//! read to its end. The events are produced first (not timed): keys among 100,000, 2%
//! null amounts, event times either uniformly over the last hour, out of order (`hour`:
//! a key's events fall in different 5-minute tiles, the costliest case), or in time
//! order as a live stream of 10,000 events/s ending now (`live`). Per core: events over the process's CPU seconds
//! while the worker ran (the broker runs in its own process, not counted).

use std::time::Instant;

use anyhow::{bail, Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::runtime;

const HOUR: i64 = 3_600_000_000;

/// CPU seconds (user + system, every thread) of this process so far.
pub(crate) fn cpu_seconds() -> f64 {
    process_cpu_seconds("self")
}

/// CPU seconds (user + system, every thread) of process `pid` (or `self`) so far, from
/// `/proc/PID/stat` (in clock ticks of 1/100 s, Linux's USER_HZ).
pub(crate) fn process_cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) end at its ')'.
    let rest = stat.rsplit_once(')').map_or("", |r| r.1);
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line: 11 and 12 after the name.
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// How the benchmark's events are spread in event time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EventTimes {
    /// Uniformly over the last hour, in random order.
    Hour,
    /// In time order, 10,000 events per second, the last one now.
    Live,
}

fn events_json(n: usize, now: i64, times: EventTimes) -> Vec<(String, String)> {
    let mut rng = StdRng::seed_from_u64(7);
    (0..n)
        .map(|i| {
            let key: i64 = rng.gen_range(0..100_000);
            let t = match times {
                EventTimes::Hour => now - rng.gen_range(0..HOUR),
                // 100 µs apart: 10,000 events per second.
                EventTimes::Live => now - (n - 1 - i) as i64 * 100,
            };
            let amount = if rng.gen_bool(0.02) {
                "null".to_string()
            } else {
                format!("{:.2}", rng.gen_range(-20.0..200.0f64))
            };
            (
                key.to_string(),
                format!(
                    r#"{{"entity_id": {key}, "event_timestamp": "{}", "amount": {amount}}}"#,
                    quiver_core::time::format_timestamp(t)
                ),
            )
        })
        .collect()
}

pub(crate) fn definitions(source: &str) -> String {
    let mut aggs = String::new();
    for f in ["count", "sum", "mean", "min", "max"] {
        aggs.push_str(&format!(
            "      - {{ column: amount, function: {f}, windows: [1h, 1d, 7d] }}\n"
        ));
    }
    format!(
        "entities: [{{ name: entity, join_keys: [entity_id] }}]\n\
         sources:\n\
         \x20 - {{ name: history, type: file, path: history.parquet, timestamp_field: event_timestamp }}\n\
         \x20 - {{ name: live, {source}, timestamp_field: event_timestamp, batch_source: history }}\n\
         feature_views:\n\
         \x20 - name: activity\n\
         \x20   entities: [entity]\n\
         \x20   source: live\n\
         \x20   aggregations:\n\
         \x20     - {{ function: count_star, windows: [1h, 1d, 7d] }}\n\
         {aggs}\
         \x20     - {{ column: amount, function: last, windows: [7d] }}\n"
    )
}

/// Runs the benchmark: `events` events from `source` (redis or kafka) into the
/// `online` store (embedded or redis), their event times spread as `times` says.
pub fn run(
    events: usize,
    batch_size: usize,
    source: &str,
    online: &str,
    times: EventTimes,
) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let redis = quiver_redis::testing::Server::start(&[]);
    let now = quiver_core::time::now();
    let messages = events_json(events, now, times);
    let _broker;
    let source_def = match source {
        "redis" => {
            let mut conn = quiver_redis::testing::connect(&redis.url());
            for chunk in messages.chunks(10_000) {
                let mut pipe = redis::pipe();
                for (_, m) in chunk {
                    pipe.cmd("XADD")
                        .arg("events")
                        .arg("*")
                        .arg("data")
                        .arg(m)
                        .ignore();
                }
                let _: () = pipe.query(&mut conn)?;
            }
            format!(
                "type: redis_stream, url: \"{}\", stream: events",
                redis.url()
            )
        }
        "kafka" => {
            let broker = quiver_stream::testing::broker();
            kafka_produce(broker.brokers(), "events", &messages)?;
            let def = format!(
                "type: kafka, brokers: \"{}\", topic: events",
                broker.brokers()
            );
            _broker = broker;
            def
        }
        other => bail!("unknown source {other}: redis or kafka"),
    };
    crate::visibility::repo(dir.path(), &source_def, online, &redis.url())?;
    let store = quiver::FeatureStore::open(dir.path())?;
    let rt = runtime()?;
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let options = quiver_stream::WorkerOptions {
        consumer: "bench".into(),
        batch_size,
        stop_when_idle: true,
        ..Default::default()
    };
    let (cpu, t) = (cpu_seconds(), Instant::now());
    let stats = rt
        .block_on(quiver_stream::run(&store, &options, stopped))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let (secs, cpu) = (t.elapsed().as_secs_f64(), cpu_seconds() - cpu);
    let s = stats.get("live").context("the source's statistics")?;
    if s.applied != events as u64 {
        bail!("{} of {events} events applied: {s:?}", s.applied);
    }
    println!(
        "stream {source} → tiles ({online} online store), batches of {batch_size}, event times {}: {events} events in {secs:.2} s = {:.0} events/s; \
         CPU {cpu:.2} s = {:.0} events/s per core; {} offline writes",
        format!("{times:?}").to_lowercase(),
        events as f64 / secs,
        events as f64 / cpu,
        s.flushes
    );
    Ok(())
}

/// Creates `topic` with `partitions` partitions.
pub(crate) fn create_topic(brokers: &str, topic: &str, partitions: i32) -> Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::ClientConfig;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let rt = runtime()?;
    for r in rt.block_on(admin.create_topics(
        &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
        &AdminOptions::new(),
    ))? {
        r.map_err(|(t, e)| anyhow::anyhow!("creating topic {t}: {e}"))?;
    }
    Ok(())
}

/// Sends `(key, payload)` messages to a new topic of 4 partitions and waits until the
/// broker has them all.
fn kafka_produce(brokers: &str, topic: &str, messages: &[(String, String)]) -> Result<()> {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    use rdkafka::ClientConfig;
    create_topic(brokers, topic, 4)?;
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    for (key, payload) in messages {
        loop {
            match producer.send(BaseRecord::to(topic).key(key).payload(payload)) {
                Ok(()) => break,
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    _,
                )) => {
                    producer.poll(std::time::Duration::from_millis(10));
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
    }
    producer.flush(std::time::Duration::from_secs(120))?;
    Ok(())
}
