//! Kafka end to end, against a real broker (tansu): events produced to a topic of four
//! partitions are consumed by two `quiver stream` workers of one group, which split the
//! partitions, and a third joining takes some over; every event is served once, equal
//! to the training value, and stored once offline; bad events are dead-lettered.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Float64Array, Int64Array};
use quiver::testing::Block;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::common::{ts, Repo};

const MIN: i64 = 60_000_000;
const PARTITIONS: i32 = 4;

fn create_topic(brokers: &str, topic: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let new = NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(1));
    let results = admin
        .create_topics(&[new], &AdminOptions::new())
        .block()
        .unwrap();
    for r in results {
        r.unwrap();
    }
}

/// Sends `(key, payload)` messages and waits until the broker has them all.
fn produce(brokers: &str, topic: &str, messages: &[(String, String)]) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    for (key, payload) in messages {
        loop {
            match producer.send(BaseRecord::to(topic).key(key).payload(payload)) {
                Ok(()) => break,
                Err((e, _)) => {
                    assert!(
                        matches!(
                            e,
                            rdkafka::error::KafkaError::MessageProduction(
                                rdkafka::types::RDKafkaErrorCode::QueueFull
                            )
                        ),
                        "{e}"
                    );
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

/// The offsets the group committed, summed over the topic's partitions.
fn committed(brokers: &str, topic: &str) -> i64 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "quiver")
        .create()
        .unwrap();
    let mut list = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        list.add_partition(topic, p);
    }
    let committed = c.committed_offsets(list, Duration::from_secs(10)).unwrap();
    let mut sum = 0;
    for e in committed.elements() {
        if let Offset::Offset(o) = e.offset() {
            sum += o;
        }
    }
    sum
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn spawn_worker(repo: &std::path::Path, name: &str) -> std::process::Child {
    std::process::Command::new(crate::common::quiver_bin())
        .arg("--repo")
        .arg(repo)
        .args([
            "--json",
            "stream",
            "--consumer",
            name,
            "--flush-interval",
            "100ms",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Stops a worker with SIGTERM; returns its statistics.
fn stop_worker(w: std::process::Child) -> serde_json::Value {
    let out = crate::common::stop_with_sigterm(w);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array().unwrap()[0].clone()
}

fn event(card: i64, t: i64, amount: f64) -> (String, String) {
    (
        card.to_string(),
        format!(
            r#"{{"card": {card}, "ts": "{}", "amount": {amount}}}"#,
            quiver_core::time::format_timestamp(t)
        ),
    )
}

#[test]
fn kafka_workers_of_one_group_split_partitions_and_serve_every_event_once() {
    let broker = quiver_stream::testing::broker();
    let topic = format!("tx-{}", std::process::id());
    create_topic(broker.brokers(), &topic);
    let r = Repo::new(&format!(
        "\
entities: [{{ name: card, join_keys: [card] }}]
sources:
  - {{ name: tx, type: file, path: data/tx.parquet, timestamp_field: ts }}
  - {{ name: tx_stream, type: kafka, brokers: \"{}\", topic: {topic}, timestamp_field: ts, batch_source: tx }}
feature_views:
  - name: txn
    entities: [card]
    source: tx_stream
    aggregations:
      - {{ function: count_star, windows: [1h] }}
      - {{ column: amount, function: sum, windows: [1h, 2d] }}
  - name: latest
    entities: [card]
    source: tx_stream
    features: [{{ name: amount, dtype: float64 }}]
",
        broker.brokers()
    ));
    let now = quiver_core::time::now();
    let base = now - 40 * MIN;
    r.parquet(
        "data/tx.parquet",
        vec![
            ("card", Arc::new(Int64Array::from(vec![0]))),
            ("ts", ts(vec![base - 100 * MIN])),
            ("amount", Arc::new(Float64Array::from(vec![1.0]))),
        ],
    );
    let fmt = quiver_core::time::format_timestamp;
    crate::common::cli_steps(
        r.path(),
        &[
            &["apply"],
            &["ingest"],
            &["materialize", &fmt(base - 1440 * MIN), &fmt(base)],
        ],
    );

    // Two workers join the group, then the events come.
    let w1 = spawn_worker(r.path(), "w1");
    let w2 = spawn_worker(r.path(), "w2");
    std::thread::sleep(Duration::from_secs(3));
    const N: i64 = 2000;
    let mut messages: Vec<(String, String)> = (0..N)
        .map(|i| {
            event(
                i % 8,
                base + ((i * 7919) % N) * 1_000_000,
                (i % 13) as f64 - 6.0,
            )
        })
        .collect();
    messages.push(("9".into(), "{\"card\": 9, \"ts\": \"yesterday\"}".into()));
    messages.push(("9".into(), "[1, 2]".into()));
    produce(broker.brokers(), &topic, &messages);
    let total = messages.len() as i64;
    wait_for("the two workers to commit every event", || {
        committed(broker.brokers(), &topic) == total
    });

    // A third worker joins: the group rebalances and it gets partitions of its own.
    let w3 = spawn_worker(r.path(), "w3");
    std::thread::sleep(Duration::from_secs(3));
    let more: Vec<(String, String)> = (0..400)
        .map(|i| event(i % 8, base + i * 2_000_000, 1.0))
        .collect();
    produce(broker.brokers(), &topic, &more);
    let total = total + more.len() as i64;
    wait_for("the three workers to commit every event", || {
        committed(broker.brokers(), &topic) == total
    });
    let stats: Vec<serde_json::Value> = [w1, w2, w3].into_iter().map(stop_worker).collect();
    let read: Vec<i64> = stats
        .iter()
        .map(|s| s["entries"].as_i64().unwrap())
        .collect();
    assert!(
        read.iter().all(|&n| n > 0),
        "every worker read a share: {stats:?}"
    );
    assert!(read.iter().sum::<i64>() >= total, "{stats:?}");
    // Two bad events, refused by each view: four dead letters, or more where a
    // rebalance made a worker read a range again (written again, see README limits).
    let replayed: i64 = stats.iter().map(|s| s["replayed"].as_i64().unwrap()).sum();
    let dead: i64 = stats
        .iter()
        .map(|s| s["dead_letters"].as_i64().unwrap())
        .sum();
    assert!(dead == 4 || (dead > 4 && replayed > 0), "{stats:?}");
    let table = r
        .store()
        .offline()
        .read_table(&quiver_stream::dead_letter_table("tx_stream"))
        .block()
        .unwrap();
    let mut distinct = std::collections::BTreeSet::new();
    for b in &table {
        let (views, positions) = (
            b.column_by_name("feature_view").unwrap(),
            b.column_by_name("position").unwrap(),
        );
        for i in 0..b.num_rows() {
            distinct.insert((
                quiver_core::value::value_at(views.as_ref(), i)
                    .unwrap()
                    .to_string(),
                quiver_core::value::value_at(positions.as_ref(), i)
                    .unwrap()
                    .to_string(),
            ));
        }
    }
    assert_eq!(distinct.len(), 2 * 2, "{distinct:?}");

    // What the workers reported: every partition read to its end, every good event
    // applied once (a rebalance may replay some: those count as replayed).
    let described = crate::common::cli_json(r.path(), &["describe", "txn"]);
    let partitions = described["stream"]["partitions"].as_array().unwrap();
    assert!(partitions.len() > 1, "{described}");
    let applied: i64 = partitions
        .iter()
        .map(|p| p["applied"].as_i64().unwrap())
        .sum();
    assert_eq!(applied, total - 2, "{described}");
    for p in partitions {
        assert_eq!(p["lag_events"], 0, "{p}");
        assert!(
            p["partition"].as_str().unwrap().starts_with("kafka:"),
            "{p}"
        );
    }

    let store = r.store();
    let t = quiver_core::time::now();
    let view = store.state().unwrap().serving_view("txn").unwrap();
    // The aggregations, and the newest amount (a snapshot view: its offline table is
    // merged by every worker, whose commits may collide and are made again).
    let (served, trained) = crate::stream::served_and_trained_of(&store, 0..8, t);
    assert_eq!(served, trained);
    for card in 0..8 {
        let want = format!("card {card} txn:count_star_1h: Int64({})", (N + 400) / 8);
        assert!(served.contains(&want), "{want}: {served:?}");
    }
    assert_eq!(
        store.offline().row_count(&view).block().unwrap(),
        (N + 400 + 1) as u64
    );
}
