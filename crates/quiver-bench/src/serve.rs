//! Feature-server load: `quiver serve` in its own process on a generated repository,
//! driven over loopback HTTP from this process at fixed request rates.
//!
//! Repository: 10,000 entities; view `wide` with 50 float64 features, view `ranking`
//! with 23, aggregated view `activity` with the 19 windowed features of `agg` over the
//! last 8 days' events; services `wide_v1` (1 entity × 50 features per request),
//! `ranking_v1` (50 entities × 23 features) and `activity_v1` (1 entity × 19
//! aggregations, merged from tiles at the server's clock). Backends: the embedded store, and Redis
//! (a `redis-server` started here on a free loopback port).
//!
//! Load: open loop. Request `i` is due at `start + i / rate`; a pool of keep-alive
//! connections sends each as soon as it is due and a connection is free, and its
//! latency is measured from when it was *due*, so a stall shows up in the figures
//! instead of being hidden by fewer requests (no coordinated omission).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};

pub(crate) const ENTITIES: usize = 10_000;

pub(crate) fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Kills a child process on drop.
pub(crate) struct Proc(pub(crate) Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn write_repo(dir: &Path, online_store: &str) -> Result<()> {
    std::fs::create_dir_all(dir.join("data"))?;
    std::fs::write(
        dir.join("quiver.yaml"),
        format!("project: bench\nregistry: data/registry\noffline_store: {{ type: delta, path: data/offline }}\nonline_store: {online_store}\n"),
    )?;
    let feats = |n: usize| {
        (0..n)
            .map(|i| format!("      - {{ name: f{i}, dtype: float64 }}\n"))
            .collect::<String>()
    };
    std::fs::write(
        dir.join("features.yaml"),
        format!(
            "entities:\n  - name: entity\n    join_keys: [entity_id]\n\
             sources:\n  - {{ name: wide_src, type: file, path: data/wide.parquet, timestamp_field: ts }}\n\
             \x20 - {{ name: ranking_src, type: file, path: data/ranking.parquet, timestamp_field: ts }}\n\
             feature_views:\n  - name: wide\n    entities: [entity]\n    source: wide_src\n    ttl: 0\n    features:\n{}\
             \x20 - name: ranking\n    entities: [entity]\n    source: ranking_src\n    ttl: 0\n    features:\n{}\
             \x20 - name: activity\n    entities: [entity]\n    source: activity_src\n    aggregations:\n{}\
             feature_services:\n  - {{ name: wide_v1, features: ['wide:*'] }}\n  - {{ name: ranking_v1, features: ['ranking:*'] }}\n\
             \x20 - {{ name: activity_v1, features: ['activity:*'] }}\n",
            feats(50),
            feats(23),
            crate::agg::AGGREGATIONS
        )
        .replace(
            "sources:\n",
            "sources:\n  - { name: activity_src, type: file, path: data/activity.parquet, timestamp_field: ts }\n",
        ),
    )?;
    write_activity(dir)?;
    for (name, n) in [("wide", 50), ("ranking", 23)] {
        let mut fields = vec![
            Field::new("entity_id", DataType::Int64, false),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
        ];
        let now = quiver_core::time::now();
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter_values(0..ENTITIES as i64)),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(
                    (0..ENTITIES).map(|i| now - 3_600_000_000 - i as i64),
                )
                .with_timezone("UTC"),
            ),
        ];
        for f in 0..n {
            fields.push(Field::new(format!("f{f}"), DataType::Float64, true));
            cols.push(Arc::new(Float64Array::from_iter_values(
                (0..ENTITIES).map(|i| (i * 31 + f) as f64 * 0.25),
            )));
        }
        let b = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?;
        quiver::io::write_table(dir.join(format!("data/{name}.parquet")), &b)?;
    }
    let store = quiver::FeatureStore::open(dir)?;
    crate::runtime()?.block_on(async {
        store.apply().await?;
        store.ingest().await?;
        store
            .materialize_incremental(quiver_core::time::now())
            .await?;
        Ok::<_, quiver::Error>(())
    })?;
    Ok(())
}

/// Events of the aggregated view `activity` over the 8 days before now: 40 per entity
/// on average, 2% with a null amount, so that the 1 h, 1 d and 7 d windows of a read at
/// the server's clock hold a few, dozens and hundreds of tiles.
fn write_activity(dir: &Path) -> Result<()> {
    let now = quiver_core::time::now();
    let n = ENTITIES * 40;
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let (mut ids, mut ts, mut amount) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        ids.push((i % ENTITIES) as i64);
        ts.push(now - 1 - (next() % (8 * 86_400_000_000)) as i64);
        let r = next();
        amount.push((r % 50 != 0).then_some((r % 100_000) as f64 * 0.01 - 50.0));
    }
    let schema = Schema::new(vec![
        Field::new("entity_id", DataType::Int64, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("amount", DataType::Float64, true),
    ]);
    let b = RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(Int64Array::from(ids)),
            Arc::new(TimestampMicrosecondArray::from(ts).with_timezone("UTC")),
            Arc::new(Float64Array::from(amount)),
        ],
    )?;
    quiver::io::write_table(dir.join("data/activity.parquet"), &b)?;
    Ok(())
}

pub(crate) fn quiver_bin() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("QUIVER_BIN") {
        return Ok(p.into());
    }
    let exe = std::env::current_exe()?;
    let p = exe.parent().context("no exe dir")?.join("quiver");
    if !p.exists() {
        bail!(
            "{} not found: build it first (cargo build --release -p quiver-cli) or set QUIVER_BIN",
            p.display()
        );
    }
    Ok(p)
}

pub(crate) fn wait_http(addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(mut c) = SyncConn::open(addr) {
            if c.request("GET", "/health", "").is_ok() {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("the server at {addr} did not come up")
}

struct Outcome {
    lat_us: Vec<f64>,
    errors: usize,
    secs: f64,
}

/// One blocking keep-alive HTTP/1.1 connection (one load-generator thread each).
pub(crate) struct SyncConn {
    r: std::io::BufReader<std::net::TcpStream>,
    w: std::net::TcpStream,
    line: String,
    body: Vec<u8>,
    head: Vec<u8>,
}

impl SyncConn {
    pub(crate) fn open(addr: SocketAddr) -> Result<SyncConn> {
        let s = std::net::TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        Ok(SyncConn {
            r: std::io::BufReader::new(s.try_clone()?),
            w: s,
            line: String::new(),
            body: Vec::new(),
            head: Vec::new(),
        })
    }

    /// Sends a request and reads the whole response; returns the status.
    pub(crate) fn request(&mut self, method: &str, path: &str, body: &str) -> Result<u16> {
        use std::io::{BufRead, Read, Write};
        self.head.clear();
        write!(
            self.head,
            "{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )?;
        self.head.extend_from_slice(body.as_bytes());
        self.w.write_all(&self.head)?;
        self.line.clear();
        self.r.read_line(&mut self.line)?;
        let status: u16 = self.line.get(9..12).context("bad status line")?.parse()?;
        let mut len = 0usize;
        loop {
            self.line.clear();
            self.r.read_line(&mut self.line)?;
            let l = self.line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse()?;
                }
            }
        }
        self.body.resize(len, 0);
        self.r.read_exact(&mut self.body)?;
        Ok(status)
    }

    /// The body of the last response.
    pub(crate) fn body(&self) -> &[u8] {
        &self.body
    }
}

/// Sends `rate` requests/s for `secs` seconds over `conns` connections, each driven by
/// its own thread with blocking I/O and precise pacing (a sleep, then a spin for the
/// last 150 µs; an async timer wheel would add up to a millisecond).
fn drive(
    addr: SocketAddr,
    bodies: Arc<Vec<String>>,
    rate: f64,
    secs: f64,
    conns: usize,
) -> Result<Outcome> {
    let total = (rate * secs) as usize;
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now() + Duration::from_millis(50);
    let mut threads = Vec::new();
    for _ in 0..conns {
        let (next, bodies) = (next.clone(), bodies.clone());
        let mut c = SyncConn::open(addr)?;
        threads.push(std::thread::spawn(move || {
            let mut lat = Vec::with_capacity(total / conns + 16);
            let mut errors = 0usize;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let due = start + Duration::from_secs_f64(i as f64 / rate);
                // Sleep to just before the due time, then spin: nanosleep alone wakes
                // up to its timer slack (50 µs by default) late.
                let now = Instant::now();
                if due > now + Duration::from_micros(150) {
                    std::thread::sleep(due - now - Duration::from_micros(150));
                }
                while Instant::now() < due {
                    std::hint::spin_loop();
                }
                match c.request("POST", "/get-online-features", &bodies[i % bodies.len()]) {
                    Ok(200) => lat.push(due.elapsed().as_secs_f64() * 1e6),
                    _ => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let mut lat_us = Vec::with_capacity(total);
    let mut errors = 0;
    for t in threads {
        let (l, e) = t
            .join()
            .map_err(|_| anyhow::anyhow!("load thread panicked"))?;
        lat_us.extend(l);
        errors += e;
    }
    let secs = start.elapsed().as_secs_f64();
    lat_us.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    Ok(Outcome {
        lat_us,
        errors,
        secs,
    })
}

pub(crate) fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn bodies(service: &str, batch: usize) -> Vec<String> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..2000)
        .map(|_| {
            let ids: Vec<String> = (0..batch)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    ((x % ENTITIES as u64) as i64).to_string()
                })
                .collect();
            format!(
                "{{\"feature_service\":\"{service}\",\"entities\":{{\"entity_id\":[{}]}}}}",
                ids.join(",")
            )
        })
        .collect()
}

pub fn bench_serve(secs: f64, rates: &[f64], backends: &[String]) -> Result<()> {
    let bin = quiver_bin()?;
    println!(
        "feature server load: `quiver serve` in its own process, HTTP/1.1 keep-alive over loopback, \
         open-loop at fixed rates, {secs} s per point, latency from each request's due time"
    );
    for backend in backends {
        let tmp = tempfile::tempdir()?;
        let _redis;
        let online_store = match backend.as_str() {
            "embedded" => "{ type: embedded, path: data/online }".to_string(),
            "redis" => {
                let port = free_port()?;
                let child = Command::new("redis-server")
                    .args([
                        "--port",
                        &port.to_string(),
                        "--bind",
                        "127.0.0.1",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                    ])
                    .arg("--dir")
                    .arg(tmp.path())
                    .stdout(Stdio::null())
                    .spawn()
                    .context("cannot start redis-server (apt-get install redis-server)")?;
                _redis = Proc(child);
                std::thread::sleep(Duration::from_millis(300));
                format!("{{ type: redis, url: \"redis://127.0.0.1:{port}\" }}")
            }
            other => bail!("unknown backend {other} (embedded, redis)"),
        };
        let repo = tmp.path().join("repo");
        write_repo(&repo, &online_store)?;
        let port = free_port()?;
        let server = Proc(
            Command::new(&bin)
                .arg("--repo")
                .arg(&repo)
                .args(["serve", "--no-grpc", "--port", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("cannot start quiver serve")?,
        );
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        wait_http(addr)?;
        println!("\nbackend: {backend}");
        println!(
            "  {:<28} {:>8} {:>10} {:>9} {:>9} {:>9} {:>9} {:>7}",
            "request", "rate/s", "achieved/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "errors"
        );
        for (label, service, batch, scale) in [
            ("1 entity × 50 features", "wide_v1", 1usize, 1.0),
            ("50 entities × 23 features", "ranking_v1", 50, 1.0),
            ("1 entity × 19 aggregations", "activity_v1", 1, 1.0),
        ] {
            let b = Arc::new(bodies(service, batch));
            // Warm up connections and caches.
            drive(addr, b.clone(), 500.0, 1.0, 4)?;
            for &rate in rates {
                let rate = rate * scale;
                let o = drive(addr, b.clone(), rate, secs, 16)?;
                println!(
                    "  {label:<28} {rate:>8.0} {:>10.0} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>7}",
                    o.lat_us.len() as f64 / o.secs,
                    pct(&o.lat_us, 0.5) / 1e3,
                    pct(&o.lat_us, 0.9) / 1e3,
                    pct(&o.lat_us, 0.99) / 1e3,
                    o.lat_us.last().copied().unwrap_or(f64::NAN) / 1e3,
                    o.errors
                );
            }
        }
        drop(server);
    }
    Ok(())
}
