//! In-process online read and materialization benchmarks on the embedded store.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use quiver_core::model::{Feature, JoinKey, ResolvedView};
use quiver_core::{DType, Duration, Value};
use quiver_online::EmbeddedStore;

fn view(name: &str, features: usize) -> ResolvedView {
    ResolvedView {
        name: name.into(),
        version: 1,
        project: "bench".into(),
        entities: vec!["entity".into()],
        join_keys: vec![JoinKey {
            name: "entity_id".into(),
            dtype: DType::Int64,
        }],
        features: (0..features)
            .map(|i| Feature {
                name: format!("f{i}"),
                dtype: DType::Float64,
                description: String::new(),
                allow_non_finite: false,
            })
            .collect(),
        ttl: Duration::from_secs(86_400),
        aggregations: Vec::new(),
        retention: None,
    }
}

/// Offline-shaped rows: `per_entity` rows for each of `entities` keys.
fn rows(view: &ResolvedView, entities: usize, per_entity: usize, now: i64) -> Result<RecordBatch> {
    let n = entities * per_entity;
    let ts = |i: usize| now - ((i % per_entity) as i64 + 1) * 60_000_000;
    let tsf = |name: &str, nullable| {
        Field::new(
            name,
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            nullable,
        )
    };
    let mut fields = vec![
        Field::new("entity_id", DataType::Int64, false),
        tsf("event_timestamp", false),
        tsf("created_timestamp", true),
    ];
    fields.extend(
        view.features
            .iter()
            .map(|f| Field::new(&f.name, DataType::Float64, true)),
    );
    let mut cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(
            (0..n).map(|i| (i / per_entity) as i64),
        )),
        Arc::new(TimestampMicrosecondArray::from_iter_values((0..n).map(ts)).with_timezone("UTC")),
        Arc::new(TimestampMicrosecondArray::from_iter_values((0..n).map(ts)).with_timezone("UTC")),
    ];
    for f in 0..view.features.len() {
        cols.push(Arc::new(Float64Array::from_iter_values(
            (0..n).map(|i| (i * 31 + f) as f64 * 0.5),
        )));
    }
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?)
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// Reads `requests` vectors of `batch` entities from `view` and prints latencies.
async fn measure(
    store: &EmbeddedStore,
    v: &ResolvedView,
    entities: usize,
    batch: usize,
    requests: usize,
    label: &str,
) -> Result<()> {
    let plan = quiver::ReadPlan::for_views(std::slice::from_ref(v), false)?;
    let now = quiver_core::time::now();
    let mut lat = Vec::with_capacity(requests);
    let mut present = 0usize;
    let start = Instant::now();
    for r in 0..requests {
        let ids: Vec<Value> = (0..batch)
            .map(|j| Value::Int64(((r * 7919 + j * 104_729) % entities) as i64))
            .collect();
        let t = Instant::now();
        let rows = quiver::Columns::new(vec![("entity_id".to_string(), ids)])?;
        let out = plan.execute(store, &rows, now).await?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
        present += out
            .statuses
            .chunks(out.n_features)
            .filter(|s| s[0] == quiver_core::FeatureStatus::Present)
            .count();
    }
    let total = start.elapsed().as_secs_f64();
    lat.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    println!(
        "  {label:<24} p50 {:7.1} µs   p99 {:7.1} µs   max {:8.1} µs   {:9.0} vectors/s   ({} of {} entity rows PRESENT)",
        percentile(&lat, 0.5), percentile(&lat, 0.99), lat[lat.len() - 1],
        (requests * batch) as f64 / total, present, requests * batch
    );
    Ok(())
}

pub fn bench_online(requests: usize) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = EmbeddedStore::open(dir.path())?;
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    let entities = 10_000;
    let now = quiver_core::time::now();
    let v50 = view("wide", 50);
    let v23 = view("ranking", 23);
    println!(
        "online reads, embedded store, in-process, {entities} entities, {requests} requests each"
    );
    rt.block_on(async {
        for v in [&v50, &v23] {
            let b = rows(v, entities, 1, now)?;
            quiver::write::write_online_latest(v, &[b], &store, &quiver::NoProgress).await?;
        }
        measure(
            &store,
            &v50,
            entities,
            1,
            requests,
            "1 entity × 50 features",
        )
        .await?;
        measure(
            &store,
            &v23,
            entities,
            50,
            requests / 10,
            "50 entities × 23 features",
        )
        .await?;
        Ok(())
    })
}

/// Reads through the facade — `store.online_features().service(..).entity_row(..)` —
/// on one opened `FeatureStore` (registry snapshot, compiled plans and the store
/// connection reused across calls), embedded store.
pub fn bench_facade(requests: usize) -> Result<()> {
    let dir = tempfile::tempdir()?;
    crate::serve::write_repo(dir.path(), "{ type: embedded, path: data/online }")?;
    let rt = crate::runtime()?;
    let store = quiver::FeatureStore::open(dir.path())?;
    let entities = crate::serve::ENTITIES;
    println!(
        "online reads through the facade (FeatureStore::online_features), embedded store, \
         {entities} entities"
    );
    rt.block_on(async {
        for (service, batch, n, label) in [
            ("wide_v1", 1usize, requests, "1 entity × 50 features"),
            ("ranking_v1", 50, requests / 10, "50 entities × 23 features"),
        ] {
            let mut lat = Vec::with_capacity(n);
            let mut present = 0usize;
            let start = Instant::now();
            for r in 0..n {
                let ids: Vec<Value> = (0..batch)
                    .map(|j| Value::Int64(((r * 7919 + j * 104_729) % entities) as i64))
                    .collect();
                let t = Instant::now();
                let mut b = store.online_features().service(service);
                for id in ids {
                    b = b.entity_row(std::iter::once(("entity_id".to_string(), id)).collect());
                }
                let out = b.await?;
                lat.push(t.elapsed().as_secs_f64() * 1e6);
                present += out
                    .rows
                    .iter()
                    .filter(|row| row.statuses[0] == quiver_core::FeatureStatus::Present)
                    .count();
            }
            let total = start.elapsed().as_secs_f64();
            lat.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
            println!(
                "  {label:<24} p50 {:7.1} µs   p99 {:7.1} µs   max {:8.1} µs   {:9.0} vectors/s   ({present} of {} entity rows PRESENT)",
                percentile(&lat, 0.5), percentile(&lat, 0.99), lat[lat.len() - 1],
                (n * batch) as f64 / total, n * batch
            );
        }
        Ok::<_, anyhow::Error>(())
    })
}

pub fn bench_materialize(entities: usize) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = EmbeddedStore::open(dir.path())?;
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    let v = view("mat", 10);
    let per = 5;
    let now = quiver_core::time::now();
    let b = rows(&v, entities, per, now)?;
    println!("materialization, embedded store: {} offline rows ({entities} keys × {per}), 10 float64 features", b.num_rows());
    rt.block_on(async {
        let t = Instant::now();
        let (_, written) = quiver::write::write_online_latest(
            &v,
            std::slice::from_ref(&b),
            &store,
            &quiver::NoProgress,
        )
        .await?;
        let secs = t.elapsed().as_secs_f64();
        println!(
            "  first run   {secs:6.2} s   {:10.0} offline rows/s   {:9.0} keys written/s",
            b.num_rows() as f64 / secs,
            written as f64 / secs
        );
        let t = Instant::now();
        let (_, written) = quiver::write::write_online_latest(
            &v,
            std::slice::from_ref(&b),
            &store,
            &quiver::NoProgress,
        )
        .await?;
        let secs = t.elapsed().as_secs_f64();
        println!(
            "  re-run      {secs:6.2} s   {:10.0} offline rows/s   ({} rows of equal version re-stored, none older)",
            b.num_rows() as f64 / secs,
            written
        );
        Ok(())
    })
}
