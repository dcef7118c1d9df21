//! `visibility` and `push`: the stream path measured end to end, with `quiver stream`
//! and `quiver serve` in their own processes on the aggregated view of `agg` (19
//! windowed features of `amount` per `entity_id`), over the embedded or the Redis online
//! store.
//!
//! * **visibility** — a producer appends events to a Redis stream or a Kafka topic (4
//!   partitions) at a steady rate
//!   (every 10 ms, `rate / 100` events over 100,000 keys); 20 times a second one of them
//!   is a probe, the first event of a key of its own. A poller asks the server for the
//!   probes not yet seen (`count_star_1h` of their key, one request each, in turn) and
//!   records, per probe, the time from its append to the first answer counting it: what
//!   a prediction service sees. The poll loop adds its own round (well under a
//!   millisecond per outstanding probe) to each figure.
//! * **push** — `POST /push` to a push source over the same view, `batch` events per
//!   request (idempotent: a producer and sequence per connection), from `conns`
//!   connections as fast as the server answers: events/s, the server's CPU per event,
//!   and request latency.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use arrow::array::{Float64Array, Int64Array, RecordBatch, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::serve::{free_port, pct, quiver_bin, wait_http, Proc, SyncConn};
use crate::stream::{definitions, process_cpu_seconds};

const DAY: i64 = 86_400_000_000;

/// Writes the repository (the `agg` view over `source`, history in a one-row file) and
/// applies it.
pub(crate) fn repo(dir: &Path, source: &str, online: &str, redis_url: &str) -> Result<()> {
    let online_def = match online {
        "embedded" => "{ type: embedded, path: data/online }".to_string(),
        "redis" => format!("{{ type: redis, url: \"{redis_url}\" }}"),
        other => bail!("unknown online store {other}: embedded or redis"),
    };
    std::fs::write(
        dir.join("quiver.yaml"),
        format!(
            "project: bench\nregistry: data/registry\n\
             offline_store: {{ type: delta, path: data/offline }}\n\
             online_store: {online_def}\n"
        ),
    )?;
    std::fs::write(dir.join("features.yaml"), definitions(source))?;
    let schema = Arc::new(Schema::new(vec![
        Field::new("entity_id", DataType::Int64, false),
        Field::new(
            "event_timestamp",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("amount", DataType::Float64, true),
    ]));
    let history = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from(vec![0])),
            Arc::new(
                TimestampMicrosecondArray::from(vec![quiver_core::time::now() - 30 * DAY])
                    .with_timezone("UTC"),
            ),
            Arc::new(Float64Array::from(vec![1.0])),
        ],
    )?;
    quiver_offline::files::write_file(&dir.join("history.parquet"), schema, &[history])?;
    let store = quiver::FeatureStore::open(dir)?;
    crate::runtime()?.block_on(std::future::IntoFuture::into_future(store.apply()))?;
    Ok(())
}

/// Starts `quiver serve` (HTTP only) on `dir`; returns the process and its address.
fn serve(dir: &Path) -> Result<(Proc, SocketAddr)> {
    let port = free_port()?;
    let child = Command::new(quiver_bin()?)
        .arg("--repo")
        .arg(dir)
        .args(["serve", "--no-grpc", "--port", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting quiver serve")?;
    let server = Proc(child);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    wait_http(addr)?;
    Ok((server, addr))
}

fn event(key: i64, t: i64, amount: f64) -> String {
    format!(
        r#"{{"entity_id": {key}, "event_timestamp": "{}", "amount": {amount:.2}}}"#,
        quiver_core::time::format_timestamp(t)
    )
}

/// The `count_star_1h` a response of the server holds for its one entity.
fn count_in(body: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(body).ok()?;
    let at = text.find("\"count_star_1h\":")? + "\"count_star_1h\":".len();
    let digits: String = text[at..]
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// Where the benchmark appends events: a Redis stream or a Kafka topic.
enum Producer {
    Redis(redis::Connection),
    Kafka(rdkafka::producer::BaseProducer, &'static str),
}

impl Producer {
    /// Appends `(key, payload)` events: returns once the stream holds them (Redis), or
    /// once the client has queued them (Kafka: `linger.ms` 5, sent by its own thread).
    fn send(&mut self, events: &[(i64, String)]) -> Result<()> {
        match self {
            Producer::Redis(conn) => {
                let mut pipe = redis::pipe();
                for (_, e) in events {
                    pipe.cmd("XADD")
                        .arg("events")
                        .arg("*")
                        .arg("data")
                        .arg(e)
                        .ignore();
                }
                let _: () = pipe.query(conn)?;
            }
            Producer::Kafka(p, topic) => {
                use rdkafka::producer::BaseRecord;
                for (k, e) in events {
                    let key = k.to_string();
                    p.send(BaseRecord::to(topic).key(&key).payload(e))
                        .map_err(|(e, _)| e)?;
                }
                // Serves delivery reports; the client sends on its own thread.
                p.poll(Duration::ZERO);
            }
        }
        Ok(())
    }
}

/// The `count_star_1h` the server serves for `key` (0 when it answers none).
fn served_count(c: &mut SyncConn, key: i64) -> Result<i64> {
    let body =
        format!(r#"{{"features":["activity:count_star_1h"],"entities":{{"entity_id":[{key}]}}}}"#);
    let status = c.request("POST", "/get-online-features", &body)?;
    if status != 200 {
        bail!("the server answered {status}");
    }
    Ok(count_in(c.body()).unwrap_or(0))
}

/// End-to-end visibility at a steady `rate` events/s for `secs` seconds from `source`
/// (redis or kafka).
pub fn visibility(rate: f64, secs: f64, source: &str, online: &str) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let redis = quiver_redis::testing::Server::start(&[]);
    let _broker;
    let (source_def, mut producer) = match source {
        "redis" => (
            format!(
                "type: redis_stream, url: \"{}\", stream: events",
                redis.url()
            ),
            Producer::Redis(quiver_redis::testing::connect(&redis.url())),
        ),
        "kafka" => {
            let broker = quiver_stream::testing::broker();
            crate::stream::create_topic(broker.brokers(), "events", 4)?;
            let p: rdkafka::producer::BaseProducer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", broker.brokers())
                .set("linger.ms", "5")
                .set("queue.buffering.max.messages", "1000000")
                .create()?;
            let def = format!(
                "type: kafka, brokers: \"{}\", topic: events",
                broker.brokers()
            );
            _broker = broker;
            (def, Producer::Kafka(p, "events"))
        }
        other => bail!("unknown source {other}: redis or kafka"),
    };
    repo(dir.path(), &source_def, online, &redis.url())?;
    let (_server, addr) = serve(dir.path())?;
    let worker = Proc(
        Command::new(quiver_bin()?)
            .arg("--repo")
            .arg(dir.path())
            .args(["stream", "--flush-interval", "5s"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting quiver stream")?,
    );
    let worker_pid = worker.0.id().to_string();
    let mut poll = SyncConn::open(addr)?;
    // Warm-up: the worker has joined its group once an event is served.
    let warm = Instant::now();
    producer.send(&[(999_999, event(999_999, quiver_core::time::now(), 1.0))])?;
    while served_count(&mut poll, 999_999)? < 1 {
        if warm.elapsed() > Duration::from_secs(60) {
            bail!("the stream worker did not serve a first event within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    // Probes appended and not yet seen: (key, when appended).
    let pending: Arc<Mutex<Vec<(i64, Instant)>>> = Arc::default();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = {
        let (pending, done) = (pending.clone(), done.clone());
        let mut c = SyncConn::open(addr)?;
        std::thread::spawn(move || -> Result<Vec<f64>> {
            let mut seen_ms = Vec::new();
            let mut i = 0usize;
            loop {
                let probe = {
                    let p = pending.lock().expect("not poisoned");
                    if p.is_empty() {
                        None
                    } else {
                        i = (i + 1) % p.len();
                        Some(p[i])
                    }
                };
                let Some((key, at)) = probe else {
                    if done.load(std::sync::atomic::Ordering::Relaxed) {
                        return Ok(seen_ms);
                    }
                    std::thread::sleep(Duration::from_micros(200));
                    continue;
                };
                if served_count(&mut c, key)? >= 1 {
                    seen_ms.push(at.elapsed().as_secs_f64() * 1e3);
                    pending
                        .lock()
                        .expect("not poisoned")
                        .retain(|(k, _)| *k != key);
                }
            }
        })
    };

    let mut rng = StdRng::seed_from_u64(11);
    let per_tick = ((rate / 100.0).round() as usize).max(1);
    let ticks = (secs * 100.0) as usize;
    let start = Instant::now();
    let cpu0 = process_cpu_seconds(&worker_pid);
    let mut sent = 0usize;
    let mut events = Vec::with_capacity(per_tick + 1);
    for tick in 0..ticks {
        let due = start + Duration::from_millis(10 * tick as u64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let now = quiver_core::time::now();
        events.clear();
        for _ in 0..per_tick {
            let key: i64 = rng.gen_range(0..100_000);
            events.push((key, event(key, now, rng.gen_range(-20.0..200.0))));
        }
        let probe = (tick % 5 == 0).then_some(1_000_000 + tick as i64);
        if let Some(key) = probe {
            events.push((key, event(key, now, 1.0)));
        }
        let appended = Instant::now();
        producer.send(&events)?;
        if let Some(key) = probe {
            // From when the append began.
            pending.lock().expect("not poisoned").push((key, appended));
        }
        sent += events.len();
    }
    let produced_secs = start.elapsed().as_secs_f64();
    // Wait for the last probes (at most 30 s).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !pending.lock().expect("not poisoned").is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let worker_cpu = process_cpu_seconds(&worker_pid) - cpu0;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let unseen = pending.lock().expect("not poisoned").len();
    pending.lock().expect("not poisoned").clear();
    let mut seen = poller
        .join()
        .map_err(|_| anyhow::anyhow!("the poller panicked"))??;
    drop(worker);
    seen.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    println!(
        "visibility, {source} → quiver stream → {online} online store → quiver serve: \
         {sent} events at {:.0}/s for {produced_secs:.1} s (worker CPU {:.0}%); \
         {} probes: append → served p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms{}",
        sent as f64 / produced_secs,
        100.0 * worker_cpu / produced_secs,
        seen.len(),
        pct(&seen, 0.5),
        pct(&seen, 0.99),
        seen.last().copied().unwrap_or(f64::NAN),
        if unseen > 0 {
            format!("; {unseen} NOT SEEN within 30 s")
        } else {
            String::new()
        }
    );
    Ok(())
}

/// `POST /push` throughput: `events` events in requests of `batch` from `conns`
/// connections.
pub fn push(events: usize, batch: usize, conns: usize, online: &str) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let redis = quiver_redis::testing::Server::start(&[]);
    repo(dir.path(), "type: push", online, &redis.url())?;
    let (server, addr) = serve(dir.path())?;
    let server_pid = server.0.id().to_string();
    let requests = events / batch;
    let now = quiver_core::time::now();
    // Bodies built before timing: per connection its requests, with growing sequences.
    let mut rng = StdRng::seed_from_u64(13);
    let mut bodies: Vec<Vec<String>> = vec![Vec::new(); conns];
    for r in 0..requests {
        let (mut keys, mut times, mut amounts) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..batch {
            keys.push(rng.gen_range(0..100_000i64).to_string());
            times.push(format!(
                "\"{}\"",
                quiver_core::time::format_timestamp(now - rng.gen_range(0..3_600_000_000i64))
            ));
            amounts.push(format!("{:.2}", rng.gen_range(-20.0..200.0f64)));
        }
        let c = r % conns;
        let sequence = bodies[c].len();
        bodies[c].push(format!(
            r#"{{"push_source":"live","producer":"bench-{c}","sequence":{},"data":{{"entity_id":[{}],"event_timestamp":[{}],"amount":[{}]}}}}"#,
            sequence,
            keys.join(","),
            times.join(","),
            amounts.join(",")
        ));
    }
    let cpu0 = process_cpu_seconds(&server_pid);
    let start = Instant::now();
    let mut threads = Vec::new();
    for b in bodies {
        let mut c = SyncConn::open(addr)?;
        threads.push(std::thread::spawn(move || -> Result<Vec<f64>> {
            let mut lat = Vec::with_capacity(b.len());
            for body in &b {
                let t = Instant::now();
                let status = c.request("POST", "/push", body)?;
                if status != 200 {
                    bail!(
                        "push answered {status}: {}",
                        String::from_utf8_lossy(c.body())
                    );
                }
                lat.push(t.elapsed().as_secs_f64() * 1e3);
            }
            Ok(lat)
        }));
    }
    let mut lat = Vec::new();
    for t in threads {
        lat.extend(
            t.join()
                .map_err(|_| anyhow::anyhow!("a push thread panicked"))??,
        );
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds(&server_pid) - cpu0;
    lat.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    let sent = requests * batch;
    println!(
        "push → tiles + offline ({online} online store), {conns} connections, {batch} events \
         per request: {sent} events in {secs:.2} s = {:.0} events/s ({:.0} requests/s); \
         server CPU {cpu:.2} s = {:.0} events/s per core; request p50 {:.1} ms, p99 {:.1} ms",
        sent as f64 / secs,
        requests as f64 / secs,
        sent as f64 / cpu,
        pct(&lat, 0.5),
        pct(&lat, 0.99),
    );
    Ok(())
}
