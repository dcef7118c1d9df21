//! Definition changes never make values disappear. Appending a feature keeps the view's
//! data version (stored rows read the new feature as null offline and MISSING online
//! until the source is ingested again); a change of the stored data's shape creates a
//! version that trains only once it is ingested and serves only once it is
//! materialized, the previous version serving until then; `historical` on a view with
//! no data is an error naming the command that fills it.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, AsArray, Float64Array, Int32Array, Int64Array, RecordBatch};
use arrow::datatypes::{Float64Type, Int32Type, Int64Type};
use quiver::testing::Block;
use quiver::{FeatureStatus, Value};

use crate::common::{batch, cli, ts, Repo};

const DEFS: &str = r#"
entities:
  - name: driver
    join_keys: [driver_id]
sources:
  - name: src
    type: file
    path: data/drivers.parquet
    timestamp_field: ts
feature_views:
  - name: stats
    entities: [driver]
    source: src
    ttl: 0
    features:
      - { name: rate, dtype: float64 }
"#;

const S: i64 = 1_000_000;

/// Drivers 1 and 2, rate 0.1 and 0.2, trips 5 and 7 (int32), at t = 10 s and 20 s.
fn write_source(r: &Repo) {
    r.parquet(
        "data/drivers.parquet",
        vec![
            ("driver_id", Arc::new(Int64Array::from(vec![1, 2]))),
            ("ts", ts(vec![10 * S, 20 * S])),
            ("rate", Arc::new(Float64Array::from(vec![0.1, 0.2]))),
            ("trips", Arc::new(Int32Array::from(vec![5, 7]))),
        ],
    );
}

fn labels() -> RecordBatch {
    batch(vec![
        ("driver_id", Arc::new(Int64Array::from(vec![1, 2]))),
        ("event_timestamp", ts(vec![50 * S, 50 * S])),
    ])
}

fn training(store: &quiver::FeatureStore, features: &[&str]) -> RecordBatch {
    store
        .historical()
        .entities(labels())
        .features(features.iter().copied())
        .block()
        .unwrap()
}

fn online(store: &quiver::FeatureStore, feature: &str) -> (Value, FeatureStatus) {
    let res = store
        .online_features()
        .features([feature])
        .entity_row(BTreeMap::from([("driver_id".to_string(), Value::Int64(1))]))
        .at(1_000 * S)
        .block()
        .unwrap();
    (res.rows[0].values[0].clone(), res.rows[0].statuses[0])
}

/// A repository of `defs` over the source, applied, ingested and materialized up to
/// t = 100 s.
fn served(defs: &str) -> (Repo, quiver::FeatureStore) {
    let r = Repo::new(defs);
    write_source(&r);
    let store = r.store();
    store.apply().block().unwrap();
    store.ingest().block().unwrap();
    store.materialize_incremental(100 * S).block().unwrap();
    (r, store)
}

fn version(store: &quiver::FeatureStore) -> u32 {
    store.state().unwrap().feature_views["stats"].version
}

#[test]
fn appending_a_feature_keeps_the_data_and_the_version() {
    let (r, store) = served(DEFS);

    r.write(
        "features.yaml",
        &format!("{DEFS}      - {{ name: trips, dtype: int32 }}\n"),
    );
    let plan = store.apply().block().unwrap().to_string();
    assert!(plan.contains("quiver ingest stats"), "{plan}");
    assert_eq!(version(&store), 1, "appending a feature keeps the version");

    // Stored rows keep serving and training; the new feature is null offline and
    // MISSING online until the source is ingested and materialized again.
    let out = training(&store, &["stats:rate", "stats:trips"]);
    let rate = out["rate"].as_primitive::<Float64Type>();
    assert_eq!((rate.value(0), rate.value(1)), (0.1, 0.2));
    assert_eq!(out["trips"].null_count(), 2);
    assert_eq!(
        online(&store, "stats:rate"),
        (Value::Float64(0.1), FeatureStatus::Present)
    );
    assert_eq!(online(&store, "stats:trips").1, FeatureStatus::Missing);

    store.ingest().block().unwrap();
    let out = training(&store, &["stats:rate", "stats:trips"]);
    let trips = out["trips"].as_primitive::<Int32Type>();
    assert_eq!((trips.value(0), trips.value(1)), (5, 7));
    assert_eq!(out["rate"].as_primitive::<Float64Type>().value(0), 0.1);
    store.materialize_incremental(200 * S).block().unwrap();
    assert_eq!(
        online(&store, "stats:trips"),
        (Value::Int32(5), FeatureStatus::Present)
    );
    assert_eq!(version(&store), 1);
}

#[test]
fn a_changed_type_serves_the_previous_version_until_the_new_one_has_data() {
    let with_trips = format!("{DEFS}      - {{ name: trips, dtype: int32 }}\n");
    let (r, store) = served(&with_trips);

    // int32 -> int64 changes how rows are stored: a new data version.
    r.write(
        "features.yaml",
        &with_trips.replace("trips, dtype: int32", "trips, dtype: int64"),
    );
    let plan = store.apply().block().unwrap().to_string();
    assert!(plan.contains("version 1 -> 2"), "{plan}");
    assert!(plan.contains("quiver ingest stats"), "{plan}");
    assert_eq!(version(&store), 2);

    // `describe` says which versions train and serve, and how to fill the new one.
    let (ok, out, err) = cli(r.path(), &["describe", "stats", "--json"]);
    assert!(ok, "{err}");
    let d: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (d["version"].as_u64(), d["training_version"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(d["serving_version"].as_u64(), Some(1));
    assert!(
        d["fill_command"]
            .as_str()
            .unwrap()
            .contains("quiver ingest stats"),
        "{d}"
    );

    // Version 1 keeps training and serving.
    let out = training(&store, &["stats:rate", "stats:trips"]);
    assert_eq!(out["rate"].as_primitive::<Float64Type>().value(0), 0.1);
    let trips = out["trips"].as_primitive::<Int32Type>();
    assert_eq!((trips.value(0), trips.value(1)), (5, 7));
    assert_eq!(
        online(&store, "stats:trips"),
        (Value::Int32(5), FeatureStatus::Present)
    );

    // Ingested, version 2 trains; online still serves version 1 until materialized.
    store.ingest().block().unwrap();
    let out = training(&store, &["stats:trips"]);
    let trips = out["trips"].as_primitive::<Int64Type>();
    assert_eq!((trips.value(0), trips.value(1)), (5, 7));
    assert_eq!(
        online(&store, "stats:trips"),
        (Value::Int32(5), FeatureStatus::Present)
    );
    store.materialize_incremental(200 * S).block().unwrap();
    assert_eq!(
        online(&store, "stats:trips"),
        (Value::Int64(5), FeatureStatus::Present)
    );
    assert_eq!(
        online(&store, "stats:rate"),
        (Value::Float64(0.1), FeatureStatus::Present)
    );
    // Version 1 is retired: compaction deletes its two online rows, and reads stay.
    let stats = store.compact_online(&[]).block().unwrap();
    assert_eq!(stats[0].deleted, 2);
    assert_eq!(
        online(&store, "stats:trips"),
        (Value::Int64(5), FeatureStatus::Present)
    );
}

#[test]
fn historical_on_a_view_without_data_names_the_command_that_fills_it() {
    let r = Repo::new(DEFS);
    write_source(&r);
    let store = r.store();
    store.apply().block().unwrap();
    let err = store
        .historical()
        .entities(labels())
        .features(["stats:rate"])
        .block()
        .unwrap_err()
        .to_string();
    assert!(err.contains("quiver ingest stats"), "{err}");
    // The CLI says the same and fails.
    quiver::io::write_table(r.file("labels.parquet"), &labels()).unwrap();
    let (labels, out) = (r.file("labels.parquet"), r.file("out.parquet"));
    let (ok, _, stderr) = cli(
        r.path(),
        &[
            "historical",
            "--entities",
            labels.to_str().unwrap(),
            "--features",
            "stats:rate",
            "-o",
            out.to_str().unwrap(),
        ],
    );
    assert!(!ok);
    assert!(stderr.contains("quiver ingest stats"), "{stderr}");
}
