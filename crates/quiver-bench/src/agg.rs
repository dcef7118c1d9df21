//! `agg`: training sets of an aggregated feature view, whole process (a repository,
//! events ingested, labels Parquet in, training set Parquet out), each phase in a fresh
//! process with its seconds and peak RSS.
//!
//! Events: entity_id int64, event_timestamp, seq int64, amount float64 (2% null, 5%
//! negative), over 90 days, shuffled; ~5% share (entity, time) with another event; 1% go
//! to 10 hot entities. Labels: uniform keys and times, 20% exactly on an event's time,
//! 5% on hop boundaries (whole hours), 1% unknown keys, 1% duplicated rows. Features:
//! count_star, count, sum, mean, min, max of amount over 1h, 1d, 7d (hops 5m, 1h, 1h)
//! and last(amount) over 7d — 19 columns.

use std::future::IntoFuture;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::{run_phase_of, runtime, ts_field};

const DAY: i64 = 86_400_000_000;
const HOUR: i64 = 3_600_000_000;
const START: i64 = 1_704_067_200_000_000; // 2024-01-01T00:00:00Z
const SPAN: i64 = 90 * DAY;

/// The benchmark's 19 aggregated features (also served by `quiver-bench serve`).
pub(crate) const AGGREGATIONS: &str = "      - { function: count_star, windows: [1h, 1d, 7d] }
      - { column: amount, function: count, windows: [1h, 1d, 7d] }
      - { column: amount, function: sum, windows: [1h, 1d, 7d] }
      - { column: amount, function: mean, windows: [1h, 1d, 7d] }
      - { column: amount, function: min, windows: [1h, 1d, 7d] }
      - { column: amount, function: max, windows: [1h, 1d, 7d] }
      - { column: amount, function: last, windows: [7d] }
";

fn defs() -> String {
    format!(
        "\
entities:
  - name: entity
    join_keys: [entity_id]
sources:
  - name: events
    type: file
    path: events.parquet
    timestamp_field: event_timestamp
feature_views:
  - name: activity
    entities: [entity]
    source: events
    aggregations:
{AGGREGATIONS}"
    )
}

/// (events, entities, labels) of a scale.
pub fn scale(name: &str) -> Result<(usize, usize, usize)> {
    Ok(match name {
        "XS" => (100_000, 10_000, 100_000),
        "S" => (1_000_000, 100_000, 1_000_000),
        "M" => (10_000_000, 1_000_000, 5_000_000),
        "L" => (50_000_000, 5_000_000, 10_000_000),
        other => bail!("unknown scale {other}: XS, S, M or L"),
    })
}

fn generate(dir: &Path, events: usize, entities: usize, labels: usize) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(11);
    let mut rows: Vec<(i64, i64)> = Vec::with_capacity(events);
    for _ in 0..events {
        // ~5% repeat an earlier event's (entity, time); 1% go to 10 hot entities.
        if !rows.is_empty() && rng.gen_bool(0.05) {
            let r = rows[rng.gen_range(0..rows.len())];
            rows.push(r);
            continue;
        }
        let e = if rng.gen_bool(0.01) {
            rng.gen_range(0..10)
        } else {
            rng.gen_range(0..entities as i64)
        };
        rows.push((e, START + rng.gen_range(0..SPAN)));
    }
    rows.shuffle(&mut rng);
    let amounts: Vec<Option<f64>> = (0..events)
        .map(|_| {
            if rng.gen_bool(0.02) {
                None
            } else {
                let a = (rng.gen::<f64>() * 500.0 * 100.0).round() / 100.0;
                Some(if rng.gen_bool(0.05) { -a } else { a })
            }
        })
        .collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("entity_id", DataType::Int64, false),
        ts_field("event_timestamp"),
        Field::new("seq", DataType::Int64, false),
        Field::new("amount", DataType::Float64, true),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.1))
                .with_timezone("UTC"),
        ),
        Arc::new(Int64Array::from_iter_values(0..events as i64)),
        Arc::new(Float64Array::from(amounts)),
    ];
    let batch = RecordBatch::try_new(schema.clone(), cols)?;
    quiver_offline::files::write_file(&dir.join("events.parquet"), schema, &[batch])?;

    let mut lrows: Vec<(i64, i64)> = Vec::with_capacity(labels);
    for i in 0..labels {
        let k = i % 100;
        lrows.push(if k < 20 {
            rows[rng.gen_range(0..rows.len())]
        } else if k < 25 {
            let t = START + rng.gen_range(0..SPAN);
            (rng.gen_range(0..entities as i64), t - t.rem_euclid(HOUR))
        } else if k < 26 {
            (
                entities as i64 + rng.gen_range(0..1_000_000),
                START + rng.gen_range(0..SPAN),
            )
        } else if k < 27 && !lrows.is_empty() {
            lrows[rng.gen_range(0..lrows.len())]
        } else {
            (
                rng.gen_range(0..entities as i64),
                START + rng.gen_range(0..SPAN),
            )
        });
    }
    lrows.shuffle(&mut rng);
    let lschema = Arc::new(Schema::new(vec![
        Field::new("entity_id", DataType::Int64, false),
        ts_field("event_timestamp"),
    ]));
    let batch = RecordBatch::try_new(
        lschema.clone(),
        vec![
            Arc::new(Int64Array::from_iter_values(lrows.iter().map(|r| r.0))),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(lrows.iter().map(|r| r.1))
                    .with_timezone("UTC"),
            ),
        ],
    )?;
    quiver_offline::files::write_file(&dir.join("labels.parquet"), lschema, &[batch])?;
    std::fs::write(dir.join("features.yaml"), defs())?;
    std::fs::write(
        dir.join("quiver.yaml"),
        "project: bench\nregistry: data/registry\n\
         offline_store: { type: delta, path: data/offline }\n\
         online_store: { type: embedded, path: data/online }\n",
    )?;
    Ok(())
}

fn features() -> Vec<String> {
    let mut out = Vec::new();
    for w in ["1h", "1d", "7d"] {
        out.push(format!("activity:count_star_{w}"));
        for f in ["count", "sum", "mean", "min", "max"] {
            out.push(format!("activity:amount_{f}_{w}"));
        }
    }
    out.push("activity:amount_last_7d".into());
    out
}

fn ingest(dir: &Path) -> Result<String> {
    let store = quiver::FeatureStore::open(dir)?;
    let rt = runtime()?;
    rt.block_on(store.apply().into_future())?;
    let stats = rt.block_on(store.ingest().into_future())?;
    Ok(format!("views={}", stats.len()))
}

fn train(dir: &Path) -> Result<String> {
    let store = quiver::FeatureStore::open(dir)?;
    let state = store.state()?;
    let t = Instant::now();
    let labels = quiver::io::read_entities(dir.join("labels.parquet"), &state, "event_timestamp")?;
    eprintln!("labels read: {:.3} s", t.elapsed().as_secs_f64());
    let rt = runtime()?;
    let out = rt.block_on(
        store
            .historical()
            .entity_batches(labels)
            .features(features())
            .into_future(),
    )?;
    let path = dir.join("training.parquet");
    let t = Instant::now();
    quiver::io::write_table(&path, &out)?;
    eprintln!("training set written: {:.3} s", t.elapsed().as_secs_f64());
    let nonzero = {
        use arrow::array::AsArray;
        let c = out
            .column_by_name("count_star_7d")
            .context("count_star_7d")?
            .as_primitive::<arrow::datatypes::Int64Type>();
        c.values().iter().filter(|&&v| v > 0).count()
    };
    Ok(format!(
        "rows={} columns={} with_events_7d={nonzero}",
        out.num_rows(),
        out.num_columns()
    ))
}

/// The I/O alone of a training set, for comparison with `train`: the labels and the
/// events read, and a table of the training set's shape (the last `train` output, read
/// untimed) written, with the same readers and writer and no computation.
fn io(dir: &Path) -> Result<String> {
    use quiver_core::model::FileFormat::Parquet;
    let shape = quiver_offline::files::read_file(&dir.join("training.parquet"), Parquet, None)
        .context("run the train phase first (it writes training.parquet)")?;
    let t = Instant::now();
    let labels = quiver_offline::files::read_file(&dir.join("labels.parquet"), Parquet, None)?;
    let events = quiver_offline::files::read_file(&dir.join("events.parquet"), Parquet, None)?;
    let read = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let path = dir.join("io-floor.parquet");
    quiver_offline::files::write_file(&path, shape[0].schema(), &shape)?;
    let written = t.elapsed().as_secs_f64();
    std::fs::remove_file(&path)?;
    Ok(format!(
        "read labels + events {read:.3} s, write the training set {written:.3} s ({} + {} rows in, {} out)",
        labels.iter().map(RecordBatch::num_rows).sum::<usize>(),
        events.iter().map(RecordBatch::num_rows).sum::<usize>(),
        shape.iter().map(RecordBatch::num_rows).sum::<usize>(),
    ))
}

/// The end of the events' span: materialization's end and the online reads' time.
const END: i64 = START + SPAN;

fn materialize(dir: &Path) -> Result<String> {
    let store = quiver::FeatureStore::open(dir)?;
    let stats = runtime()?.block_on(store.materialize(START, END).into_future())?;
    let s = &stats[0];
    Ok(format!(
        "events read={} keys={} tiles written={}",
        s.rows_read, s.keys, s.written
    ))
}

/// In-process reads of 1 entity × the 19 features at the end of the span, from the
/// embedded store: latency percentiles.
fn online(dir: &Path) -> Result<String> {
    let store = quiver::FeatureStore::open(dir)?;
    let rt = runtime()?;
    // Keys among 1,000 (most with a few tiles), then the 10 hot entities alone (every
    // tile of every window stored: the most a read merges).
    let mut parts = Vec::new();
    for (keys, what) in [(1_000i64, "keys among 1,000"), (10, "the 10 hot keys")] {
        let mut rng = StdRng::seed_from_u64(3);
        let mut lat = Vec::with_capacity(20_000);
        let mut present = 0usize;
        for i in 0..22_000 {
            let key = rng.gen_range(0..keys);
            let t = Instant::now();
            let r = rt.block_on(
                store
                    .online_features()
                    .features(features())
                    .entity_row(std::collections::BTreeMap::from([(
                        "entity_id".to_string(),
                        quiver::Value::Int64(key),
                    )]))
                    .at(END)
                    .into_future(),
            )?;
            let us = t.elapsed().as_secs_f64() * 1e6;
            if i >= 2_000 {
                lat.push(us);
                present += r.rows[0]
                    .statuses
                    .iter()
                    .filter(|s| **s == quiver::FeatureStatus::Present)
                    .count();
            }
        }
        lat.sort_by(|a, b| a.total_cmp(b));
        let p = |q: f64| crate::online::percentile(&lat, q);
        parts.push(format!(
            "{what}: p50 {:.1} µs   p99 {:.1} µs   max {:.1} µs   ({:.1} of 19 PRESENT on average)",
            p(0.5),
            p(0.99),
            lat[lat.len() - 1],
            present as f64 / lat.len() as f64
        ));
    }
    Ok(format!(
        "1 entity × 19 features, in-process, embedded: {}",
        parts.join(";   ")
    ))
}

/// Runs the benchmark (or, with `phase`, one phase in this process).
pub fn run(
    s: &str,
    dir: Option<std::path::PathBuf>,
    reuse: bool,
    phase: Option<String>,
) -> Result<()> {
    let (events, entities, labels) = scale(s)?;
    let dir = dir.unwrap_or_else(|| std::env::temp_dir().join(format!("quiver-bench-agg-{s}")));
    if let Some(phase) = phase {
        let t = Instant::now();
        let info = match phase.as_str() {
            "generate" => {
                generate(&dir, events, entities, labels)?;
                String::new()
            }
            "ingest" => ingest(&dir)?,
            "train" => train(&dir)?,
            "io" => io(&dir)?,
            "materialize" => materialize(&dir)?,
            "online" => online(&dir)?,
            other => bail!("unknown phase {other}"),
        };
        crate::print_result(t, &info);
        return Ok(());
    }
    let have = dir.join("data/offline").exists();
    if !reuse {
        let _ = std::fs::remove_dir_all(&dir);
    }
    std::fs::create_dir_all(&dir)?;
    println!(
        "quiver agg benchmark, scale {s}: {events} events, {entities} entities, {labels} labels, 90 days, 19 features"
    );
    println!("data in {}", dir.display());
    if !(reuse && have) {
        let (secs, _, _) = run_phase_of("agg", &dir, s, "generate", &[])?;
        println!("  generate   {secs:8.2} s   (not part of the figures)");
        let (secs, rss, info) = run_phase_of("agg", &dir, s, "ingest", &[])?;
        println!(
            "  ingest     {secs:8.2} s   peak RSS {rss:8.0} MiB   {:.0} events/s   {info}",
            events as f64 / secs
        );
    }
    let (secs, rss, info) = run_phase_of("agg", &dir, s, "train", &[])?;
    println!(
        "  historical {secs:8.2} s   peak RSS {rss:8.0} MiB   {:.0} label rows/s   {info}   (labels file → training set file)",
        labels as f64 / secs
    );
    let (_, _, info) = run_phase_of("agg", &dir, s, "io", &[])?;
    println!("  I/O alone  {info}   (the same files, no computation: the floor under historical)");
    let (secs, rss, info) = run_phase_of("agg", &dir, s, "materialize", &[])?;
    println!("  materialize {secs:7.2} s   peak RSS {rss:8.0} MiB   {info}   (tiles of the last 7 days + 1 hop, embedded store)");
    let (_, _, info) = run_phase_of("agg", &dir, s, "online", &[])?;
    println!("  online     {info}");
    Ok(())
}
