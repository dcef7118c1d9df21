//! quiver's benchmark suite. Prints figures a reader can compare; asserts nothing.
//!
//! ```text
//! cargo run --release -p quiver-bench -- pit --scale M
//! cargo run --release -p quiver-bench -- agg --scale S
//! cargo run --release -p quiver-bench -- online
//! cargo run --release -p quiver-bench -- materialize
//! cargo run --release -p quiver-bench -- engines
//! cargo run --release -p quiver-bench -- serve      # after cargo build --release -p quiver
//! ```
//!
//! `pit` generates data (features: entity_id int64, event_timestamp,
//! created_timestamp, 10 float64 features, 10 rows per entity at random times over a
//! year, ~10% of rows sharing (entity, event_timestamp) with another, shuffled; labels:
//! entity ids and times uniform, 10% exactly on a feature row; ttl 30 days), then runs
//! the ingest and the historical retrieval each in a fresh process and prints seconds
//! and peak RSS per phase.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use clap::{Parser, Subcommand};
use quiver_core::model::{Feature, JoinKey, ResolvedView};
use quiver_core::{DType, Duration};
use quiver_offline::normalize::{normalize_batch, Origin};
use quiver_offline::{HistoricalRequest, OfflineStore, ViewRequest};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

mod agg;
mod engines;
mod online;
mod serve;
mod stream;
mod visibility;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Point-in-time retrieval: generate, ingest, retrieve.
    Pit {
        /// S (100k entities / 1M labels), M (1M / 5M), L (5M / 10M), or XS for a smoke run.
        #[arg(long, default_value = "S")]
        scale: String,
        /// Working directory (default: a directory under the system temp dir).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Reuse generated data and the ingested store when present.
        #[arg(long)]
        reuse: bool,
        #[arg(long, hide = true)]
        phase: Option<String>,
        /// Codec of the file-to-file output (as `quiver historical --compression`).
        #[arg(long, default_value = "snappy")]
        compression: String,
        /// Rows per row group of the file-to-file output.
        #[arg(long, default_value_t = 1 << 20)]
        row_group_size: usize,
    },
    /// Training sets of an aggregated view (19 windowed features): generate, ingest,
    /// retrieve file to file.
    Agg {
        /// XS (100k events), S (1M events / 100k entities / 1M labels), M (10M / 1M / 5M),
        /// L (50M / 5M / 10M).
        #[arg(long, default_value = "S")]
        scale: String,
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Reuse generated data and the ingested store when present.
        #[arg(long)]
        reuse: bool,
        #[arg(long, hide = true)]
        phase: Option<String>,
    },
    /// In-process online reads: 1 entity × 50 features and 50 entities × 23 features.
    Online {
        #[arg(long, default_value_t = 20_000)]
        requests: usize,
    },
    /// The embedded engine choice: LMDB (used) against redb on the online workload.
    Engines {
        #[arg(long, default_value_t = 200_000)]
        keys: u64,
        #[arg(long, default_value_t = 100_000)]
        reads: usize,
    },
    /// Feature-server load over loopback: `quiver serve` (embedded and Redis) at fixed
    /// request rates; build the server first (`cargo build --release -p quiver`).
    Serve {
        /// Seconds per measured point.
        #[arg(long, default_value_t = 10.0)]
        secs: f64,
        /// Request rates to drive, per second.
        #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
        rates: Vec<f64>,
        /// Backends: embedded, redis.
        #[arg(long, value_delimiter = ',', default_value = "embedded,redis")]
        backends: Vec<String>,
    },
    /// Stream ingestion: events/s from a stream into the tiles of the `agg` view, through
    /// the whole `quiver stream` worker.
    Stream {
        #[arg(long, default_value_t = 500_000)]
        events: usize,
        /// Events read per call (as `quiver stream --batch-size`).
        #[arg(long, default_value_t = 20000)]
        batch_size: usize,
        /// Where the events come from: redis, kafka.
        #[arg(long, value_delimiter = ',', default_value = "kafka,redis")]
        sources: Vec<String>,
        /// Online stores: embedded, redis.
        #[arg(long, value_delimiter = ',', default_value = "embedded,redis")]
        online: Vec<String>,
        /// The events' times: over the last hour out of order, or in order as a live
        /// stream of 10,000 events/s.
        #[arg(long, value_enum, default_value = "hour")]
        event_times: stream::EventTimes,
    },
    /// End-to-end visibility: events appended to a Redis stream at a steady rate, the
    /// time until `quiver serve` answers with them counted (`quiver stream` between).
    Visibility {
        /// Events per second.
        #[arg(long, default_value_t = 10_000.0)]
        rate: f64,
        #[arg(long, default_value_t = 20.0)]
        secs: f64,
        /// Where the events come from: redis, kafka.
        #[arg(long, value_delimiter = ',', default_value = "redis,kafka")]
        sources: Vec<String>,
        /// Online stores: embedded, redis.
        #[arg(long, value_delimiter = ',', default_value = "embedded,redis")]
        online: Vec<String>,
    },
    /// `POST /push` throughput into the aggregated view of `agg` (a push source).
    Push {
        #[arg(long, default_value_t = 200_000)]
        events: usize,
        /// Events per request.
        #[arg(long, default_value_t = 100)]
        batch: usize,
        /// Concurrent connections.
        #[arg(long, default_value_t = 4)]
        conns: usize,
        /// Online stores: embedded, redis.
        #[arg(long, value_delimiter = ',', default_value = "embedded,redis")]
        online: Vec<String>,
    },
    /// Materialization throughput (offline rows → latest per key → embedded store).
    Materialize {
        #[arg(long, default_value_t = 200_000)]
        entities: usize,
    },
}

fn scale(name: &str) -> Result<(usize, usize)> {
    Ok(match name {
        "XS" => (10_000, 100_000),
        "S" => (100_000, 1_000_000),
        "M" => (1_000_000, 5_000_000),
        "L" => (5_000_000, 10_000_000),
        other => bail!("unknown scale {other}: XS, S, M or L"),
    })
}

const FEATURES: usize = 10;
const YEAR_START: i64 = 1_704_067_200_000_000; // 2024-01-01T00:00:00Z
const YEAR: i64 = 366 * 86_400_000_000;

fn bench_view() -> ResolvedView {
    ResolvedView {
        name: "bench".into(),
        version: 1,
        project: "bench".into(),
        entities: vec!["entity".into()],
        join_keys: vec![JoinKey {
            name: "entity_id".into(),
            dtype: DType::Int64,
        }],
        features: (0..FEATURES)
            .map(|i| Feature {
                name: format!("f{i}"),
                dtype: DType::Float64,
                description: String::new(),
                allow_non_finite: false,
            })
            .collect(),
        ttl: Duration::from_secs(30 * 86_400),
        aggregations: Vec::new(),
        retention: None,
    }
}

pub(crate) fn ts_field(name: &str) -> Field {
    Field::new(
        name,
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        false,
    )
}

pub(crate) fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn generate(dir: &Path, entities: usize, labels: usize) -> Result<()> {
    let src = dir.join("features");
    std::fs::create_dir_all(&src)?;
    let mut rng = StdRng::seed_from_u64(7);
    let chunks = 8.max(entities / 250_000);
    let per = entities.div_ceil(chunks);
    let schema = Arc::new(Schema::new(
        [
            Field::new("entity_id", DataType::Int64, false),
            ts_field("event_timestamp"),
            ts_field("created_timestamp"),
        ]
        .into_iter()
        .chain((0..FEATURES).map(|i| Field::new(format!("f{i}"), DataType::Float64, true)))
        .collect::<Vec<_>>(),
    ));
    let exact_per_chunk = labels / 10 / chunks;
    let mut label_rows: Vec<(i64, i64)> = Vec::with_capacity(labels);
    for c in 0..chunks {
        let (e0, e1) = (c * per, ((c + 1) * per).min(entities));
        let mut rows: Vec<(i64, i64, i64)> = Vec::with_capacity((e1 - e0) * 10);
        for e in e0..e1 {
            let mut last = 0;
            for r in 0..10 {
                // ~10% of rows repeat the previous row's event time (a restatement).
                let ts = if r > 0 && rng.gen_bool(0.1) {
                    last
                } else {
                    YEAR_START + rng.gen_range(0..YEAR)
                };
                let created = ts + rng.gen_range(0..3_600_000_000);
                rows.push((e as i64, ts, created));
                last = ts;
            }
        }
        rows.shuffle(&mut rng);
        for _ in 0..exact_per_chunk {
            let r = rows[rng.gen_range(0..rows.len())];
            label_rows.push((r.0, r.1));
        }
        let n = rows.len();
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.1))
                    .with_timezone("UTC"),
            ),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.2))
                    .with_timezone("UTC"),
            ),
        ];
        for _ in 0..FEATURES {
            cols.push(Arc::new(Float64Array::from_iter_values(
                (0..n).map(|_| rng.gen::<f64>()),
            )));
        }
        let batch = RecordBatch::try_new(schema.clone(), cols)?;
        quiver_offline::files::write_file(
            &src.join(format!("part-{c:03}.parquet")),
            schema.clone(),
            &[batch],
        )?;
    }
    while label_rows.len() < labels {
        label_rows.push((
            rng.gen_range(0..entities as i64),
            YEAR_START + rng.gen_range(0..YEAR),
        ));
    }
    label_rows.shuffle(&mut rng);
    let lschema = Arc::new(Schema::new(vec![
        Field::new("entity_id", DataType::Int64, false),
        ts_field("event_timestamp"),
        Field::new("label", DataType::Int64, false),
    ]));
    let batch = RecordBatch::try_new(
        lschema.clone(),
        vec![
            Arc::new(Int64Array::from_iter_values(label_rows.iter().map(|r| r.0))),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(label_rows.iter().map(|r| r.1))
                    .with_timezone("UTC"),
            ),
            Arc::new(Int64Array::from_iter_values(
                (0..label_rows.len()).map(|i| (i % 2) as i64),
            )),
        ],
    )?;
    quiver_offline::files::write_file(&dir.join("labels.parquet"), lschema, &[batch])?;
    Ok(())
}

fn ingest(dir: &Path) -> Result<u64> {
    let view = bench_view();
    let store = OfflineStore::open(dir.join("offline"))?;
    let mut batches = Vec::new();
    let files = quiver_offline::files::expand(&dir.join("features"))?;
    for f in &files {
        let name = f.display().to_string();
        for b in quiver_offline::files::read_file(f, quiver_core::model::FileFormat::Parquet, None)?
        {
            batches.push(normalize_batch(
                &b,
                &view,
                "event_timestamp",
                Some("created_timestamp"),
                &Origin {
                    file: &name,
                    first_row: 1,
                },
            )?);
        }
    }
    let stats = runtime()?.block_on(store.ingest(&view, batches))?;
    Ok(stats.rows_stored)
}

/// The bench's training set: the labels Parquet file read once (its batches, not
/// concatenated) and every feature of the view joined point in time.
fn training_set(dir: &Path) -> Result<arrow::array::RecordBatch> {
    let view = bench_view();
    let store = OfflineStore::open(dir.join("offline"))?;
    let labels = quiver_offline::files::read_file(
        &dir.join("labels.parquet"),
        quiver_core::model::FileFormat::Parquet,
        None,
    )?;
    let features = view
        .features
        .iter()
        .map(|f| (f.name.clone(), f.name.clone()))
        .collect();
    let req = HistoricalRequest {
        entities: labels,
        timestamp_column: "event_timestamp".into(),
        views: vec![ViewRequest { view, features }],
    };
    Ok(runtime()?.block_on(store.historical(req))?)
}

fn retrieve(dir: &Path) -> Result<(usize, usize)> {
    let out = training_set(dir)?;
    let matched = out.num_rows()
        - arrow::array::Array::null_count(out.column_by_name("f0").context("f0")?.as_ref());
    Ok((out.num_rows(), matched))
}

/// File to file, as `quiver historical` does it: [`training_set`], then the output
/// written as Parquet with `options` (row groups and columns encoded in parallel).
/// Returns the rows, the output's size and the seconds the write took.
fn retrieve_to_file(dir: &Path, options: &quiver::io::ParquetOptions) -> Result<(usize, u64, f64)> {
    let out = training_set(dir)?;
    let path = dir.join("training.parquet");
    let t = Instant::now();
    quiver::io::write_table_with(&path, &out, options)?;
    let write = t.elapsed().as_secs_f64();
    Ok((out.num_rows(), std::fs::metadata(&path)?.len(), write))
}

fn run_phase(
    dir: &Path,
    scale_name: &str,
    phase: &str,
    extra: &[String],
) -> Result<(f64, f64, String)> {
    run_phase_of("pit", dir, scale_name, phase, extra)
}

/// Runs `phase` of benchmark `cmd` in a fresh process of this binary: (seconds, peak
/// RSS in MiB, what the phase reported).
/// Prints a phase's result line (seconds since `started`, peak RSS in MiB, `info`),
/// which [`run_phase_of`] reads.
pub(crate) fn print_result(started: Instant, info: &str) {
    println!(
        "RESULT {:.3} {:.1} {info}",
        started.elapsed().as_secs_f64(),
        peak_rss_mib()
    );
}

pub(crate) fn run_phase_of(
    cmd: &str,
    dir: &Path,
    scale_name: &str,
    phase: &str,
    extra: &[String],
) -> Result<(f64, f64, String)> {
    let exe = std::env::current_exe()?;
    let out = Command::new(exe)
        .args([cmd, "--scale", scale_name, "--dir"])
        .arg(dir)
        .args(["--phase", phase])
        .args(extra)
        .output()?;
    if !out.status.success() {
        bail!(
            "phase {phase} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let line = text
        .lines()
        .find(|l| l.starts_with("RESULT "))
        .context("no RESULT line")?;
    let parts: Vec<&str> = line.split_whitespace().collect();
    Ok((parts[1].parse()?, parts[2].parse()?, parts[3..].join(" ")))
}

/// A runtime for the async library calls of a benchmark.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// The allocator of the `quiver` binary, so that figures are those of the CLI.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<()> {
    let cli = Cli::parse();
    // Phase timings and other diagnostics: QUIVER_LOG=quiver_offline=debug.
    quiver::init_diagnostics();
    match cli.cmd {
        Cmd::Pit {
            scale: s,
            dir,
            reuse,
            phase,
            compression,
            row_group_size,
        } => {
            let options = quiver::io::ParquetOptions {
                compression: quiver::io::ParquetOptions::parse_compression(&compression)?,
                row_group_rows: row_group_size,
            };
            let extra = [
                "--compression".to_string(),
                compression.clone(),
                "--row-group-size".to_string(),
                row_group_size.to_string(),
            ];
            let (entities, labels) = scale(&s)?;
            let dir =
                dir.unwrap_or_else(|| std::env::temp_dir().join(format!("quiver-bench-pit-{s}")));
            if let Some(phase) = phase {
                let t = Instant::now();
                let info = match phase.as_str() {
                    "generate" => {
                        generate(&dir, entities, labels)?;
                        String::new()
                    }
                    "ingest" => format!("rows_stored={}", ingest(&dir)?),
                    "retrieve" => {
                        let (rows, matched) = retrieve(&dir)?;
                        format!("rows={rows} matched={matched}")
                    }
                    "file" => {
                        let (rows, bytes, write) = retrieve_to_file(&dir, &options)?;
                        format!(
                            "rows={rows} output={:.0}MiB write={write:.2}s",
                            bytes as f64 / (1 << 20) as f64
                        )
                    }
                    other => bail!("unknown phase {other}"),
                };
                print_result(t, &info);
                return Ok(());
            }
            let have_data = dir.join("labels.parquet").exists();
            let have_store = dir.join("offline").exists();
            if !reuse {
                let _ = std::fs::remove_dir_all(&dir);
            }
            std::fs::create_dir_all(&dir)?;
            println!("quiver pit benchmark, scale {s}: {entities} entities × 10 rows, {labels} labels, ttl 30d");
            println!("data in {}", dir.display());
            if !(reuse && have_data) {
                let (secs, _, _) = run_phase(&dir, &s, "generate", &extra)?;
                println!("  generate   {secs:8.2} s   (not part of the figures)");
            }
            if !(reuse && have_store) {
                let (secs, rss, info) = run_phase(&dir, &s, "ingest", &extra)?;
                println!(
                    "  ingest     {secs:8.2} s   peak RSS {rss:8.0} MiB   {:.0} rows/s   {info}",
                    (entities * 10) as f64 / secs
                );
            }
            let (secs, rss, info) = run_phase(&dir, &s, "retrieve", &extra)?;
            println!(
                "  historical {secs:8.2} s   peak RSS {rss:8.0} MiB   {:.0} label rows/s   {info}   (labels file → training set in memory)",
                labels as f64 / secs
            );
            let (secs, rss, info) = run_phase(&dir, &s, "file", &extra)?;
            println!(
                "  historical {secs:8.2} s   peak RSS {rss:8.0} MiB   {:.0} label rows/s   {info}   (labels file → training set file)",
                labels as f64 / secs
            );
        }
        Cmd::Agg {
            scale: s,
            dir,
            reuse,
            phase,
        } => agg::run(&s, dir, reuse, phase)?,
        Cmd::Online { requests } => {
            online::bench_online(requests)?;
            online::bench_facade(requests)?;
        }
        Cmd::Materialize { entities } => online::bench_materialize(entities)?,
        Cmd::Engines { keys, reads } => engines::bench_engines(keys, reads)?,
        Cmd::Serve {
            secs,
            rates,
            backends,
        } => serve::bench_serve(secs, &rates, &backends)?,
        Cmd::Visibility {
            rate,
            secs,
            sources,
            online,
        } => {
            for source in &sources {
                for store in &online {
                    visibility::visibility(rate, secs, source, store)?;
                }
            }
        }
        Cmd::Push {
            events,
            batch,
            conns,
            online,
        } => {
            for store in &online {
                visibility::push(events, batch, conns, store)?;
            }
        }
        Cmd::Stream {
            events,
            batch_size,
            sources,
            online,
            event_times,
        } => {
            for source in &sources {
                for store in &online {
                    stream::run(events, batch_size, source, store, event_times)?;
                }
            }
        }
    }
    Ok(())
}
