//! Incremental materialization picks up every row ingested since the last run — a
//! restated row (same event time, newer created time) and a late row (an event time
//! before the last run's end) — so online agrees with the training set.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Float64Array, Int64Array};
use quiver::testing::Block;
use quiver::Value;

use crate::common::{ts, ts_opt, Repo};

const DEFS: &str = r#"
entities:
  - name: driver
    join_keys: [driver_id]
sources:
  - name: src
    type: file
    path: data/drivers.parquet
    timestamp_field: ts
    created_timestamp_field: created
feature_views:
  - name: stats
    entities: [driver]
    source: src
    ttl: 0
    features:
      - { name: rate, dtype: float64 }
"#;

const S: i64 = 1_000_000;

fn write_source(r: &Repo, rows: &[(i64, i64, i64, f64)]) {
    r.parquet(
        "data/drivers.parquet",
        vec![
            (
                "driver_id",
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
            ),
            ("ts", ts(rows.iter().map(|r| r.1 * S).collect())),
            (
                "created",
                ts_opt(rows.iter().map(|r| Some(r.2 * S)).collect()),
            ),
            (
                "rate",
                Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.3))),
            ),
        ],
    );
}

fn online(store: &quiver::FeatureStore, id: i64) -> Value {
    store
        .online_features()
        .features(["stats:rate"])
        .entity_row(BTreeMap::from([(
            "driver_id".to_string(),
            Value::Int64(id),
        )]))
        .at(1_000 * S)
        .block()
        .unwrap()
        .rows[0]
        .values[0]
        .clone()
}

#[test]
fn incremental_runs_pick_up_restated_and_late_rows() {
    let r = Repo::new(DEFS);
    // (driver, event time s, created s, rate)
    write_source(&r, &[(1, 10, 1, 0.1), (2, 20, 1, 0.2)]);
    let store = r.store();
    store.apply().block().unwrap();
    store.ingest().block().unwrap();
    store.materialize_incremental(100 * S).block().unwrap();
    assert_eq!(online(&store, 1), Value::Float64(0.1));

    // Driver 1's row at t=10 is restated (created later); driver 3's row at t=5
    // arrives late, after the run that ended at t=100.
    write_source(
        &r,
        &[
            (1, 10, 1, 0.1),
            (1, 10, 2, 0.9),
            (2, 20, 1, 0.2),
            (3, 5, 1, 0.3),
        ],
    );
    store.ingest().block().unwrap();
    store.materialize_incremental(200 * S).block().unwrap();
    assert_eq!(online(&store, 1), Value::Float64(0.9), "the restated row");
    assert_eq!(online(&store, 3), Value::Float64(0.3), "the late row");
    assert_eq!(online(&store, 2), Value::Float64(0.2));
}

/// Compaction drops the values of the rows of a view with a ttl that expired for good
/// (timestamps kept): every status and value served now stays the same.
#[test]
fn compaction_drops_expired_values_without_changing_what_is_served() {
    let r = Repo::new(&DEFS.replace("ttl: 0", "ttl: 1h"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
        / S;
    // Driver 1 expired long ago, driver 2 is fresh.
    write_source(
        &r,
        &[
            (1, now - 7200, now - 7200, 0.1),
            (2, now - 60, now - 60, 0.2),
        ],
    );
    let store = r.store();
    store.apply().block().unwrap();
    store.ingest().block().unwrap();
    let read = |store: &quiver::FeatureStore| {
        let res = store
            .online_features()
            .features(["stats:rate"])
            .entity_row(BTreeMap::from([("driver_id".into(), Value::Int64(1))]))
            .entity_row(BTreeMap::from([("driver_id".into(), Value::Int64(2))]))
            .block()
            .unwrap();
        res.rows
            .iter()
            .map(|r| (r.values[0].clone(), r.statuses[0], r.event_timestamps[0]))
            .collect::<Vec<_>>()
    };
    store.materialize(0, (now + 1) * S).block().unwrap();
    let before = read(&store);
    assert_eq!(before[0].1, quiver::FeatureStatus::OutsideTtl);
    assert_eq!(before[1].0, Value::Float64(0.2));

    let stats = store.compact_online(&[]).block().unwrap();
    assert_eq!((stats[0].compacted, stats[0].deleted), (1, 0));
    assert_eq!(read(&store), before);
    assert_eq!(store.compact_online(&[]).block().unwrap()[0].compacted, 0);

    // The compacted row keeps its version: re-materializing writes it again (equal
    // versions replace), and the reads are still the same.
    store.materialize(0, (now + 1) * S).block().unwrap();
    assert_eq!(read(&store), before);
    let (ok, out, err) = crate::common::cli(r.path(), &["compact"]);
    assert!(ok, "{err}");
    assert!(out.contains("stats: 1 expired rows compacted"), "{out}");
}
