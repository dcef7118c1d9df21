//! The demo repository end to end through the command line and the API: init, apply,
//! ingest, historical, materialize, online — and online/offline parity.

use quiver::testing::Block;
use std::collections::BTreeMap;

use arrow::array::{Array, AsArray, Int64Array};
use arrow::datatypes::{Float64Type, Int64Type};
use quiver::{FeatureStatus, Value};
use quiver_core::time::parse_timestamp;

use crate::common::{batch, cli, ts};

const ANCHOR: &str = "2025-03-01T12:00:00Z";

fn demo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("demo");
    let (ok, _, err) = cli(
        dir.path(),
        &["init", repo.to_str().unwrap(), "--anchor", ANCHOR],
    );
    assert!(ok, "{err}");
    for args in [&["apply"][..], &["ingest"][..]] {
        let (ok, out, err) = cli(&repo, args);
        assert!(ok, "{args:?}: {err}");
        assert!(!out.is_empty());
    }
    dir
}

#[test]
fn demo_runs_end_to_end_with_parity() {
    let dir = demo();
    let repo = dir.path().join("demo");
    // A second init into the same place is refused.
    let (ok, _, err) = cli(dir.path(), &["init", repo.to_str().unwrap()]);
    assert!(!ok && err.contains("already"), "{err}");

    let entities = repo.join("data/entities.parquet");
    let output = repo.join("data/training.parquet");
    let (ok, out, err) = cli(
        &repo,
        &[
            "historical",
            "--entities",
            entities.to_str().unwrap(),
            "--service",
            "ride_ranking_v1",
            "--output",
            output.to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("10000 rows"), "{out}");
    // An output the command cannot write is refused before any work: here the entity
    // file does not even exist, and the error is about the output.
    let (ok, _, err) = cli(
        &repo,
        &[
            "historical",
            "--entities",
            "no-such-file.parquet",
            "--service",
            "ride_ranking_v1",
            "--output",
            "training.json",
        ],
    );
    assert!(!ok);
    assert!(
        err.contains("training.json") && err.contains("cannot tell the format"),
        "{err}"
    );
    let training = quiver::io::read_table(repo.join("data/training.parquet")).unwrap();
    assert_eq!(training.num_rows(), 10_000);
    for c in [
        "driver_id",
        "customer_id",
        "event_timestamp",
        "trip_completed",
        "conv_rate",
        "acc_rate",
        "avg_daily_trips",
        "current_balance",
        "trips_together",
    ] {
        assert!(training.column_by_name(c).is_some(), "missing column {c}");
    }
    // Labels before the first feature row get nulls, never zeros.
    let conv = training.column_by_name("conv_rate").unwrap();
    assert!(arrow::array::Array::null_count(conv.as_ref()) > 0);

    // ride_ranking_v2 adds on-demand features from the rows' trip distance.
    let store = quiver::FeatureStore::open(&repo).unwrap();
    let v2 = store
        .historical()
        .entities(quiver::io::read_table(&entities).unwrap())
        .service("ride_ranking_v2")
        .block()
        .unwrap();
    assert_eq!(v2.num_rows(), 10_000);
    let conv = v2
        .column_by_name("conv_rate")
        .unwrap()
        .as_primitive::<Float64Type>();
    let dist = v2
        .column_by_name("distance_km")
        .unwrap()
        .as_primitive::<Float64Type>();
    let x = v2
        .column_by_name("conv_rate_x_distance")
        .unwrap()
        .as_primitive::<Float64Type>();
    let long = v2.column_by_name("long_trip").unwrap().as_boolean();
    let mut nulls = 0;
    for i in 0..v2.num_rows() {
        let want = (conv.is_valid(i) && dist.is_valid(i)).then(|| conv.value(i) * dist.value(i));
        assert_eq!(x.is_valid(i).then(|| x.value(i)), want, "row {i}");
        assert_eq!(long.is_valid(i), dist.is_valid(i), "row {i}");
        nulls += usize::from(want.is_none());
    }
    assert!(nulls > 0 && nulls < 10_000, "{nulls}");

    // Materialize up to the anchor, then read online at the anchor.
    let (ok, out, err) = cli(&repo, &["materialize-incremental", ANCHOR]);
    assert!(ok, "{err}");
    assert!(out.contains("driver_hourly_stats: "), "{out}");
    let (ok, out, _) = cli(&repo, &["materialize-incremental", ANCHOR]);
    assert!(ok);
    assert!(out.contains("up to date"), "{out}");

    let store = quiver::FeatureStore::open(&repo).unwrap();
    let t = parse_timestamp(ANCHOR).unwrap();
    let drivers: Vec<i64> = (1001..1011).collect();
    let customers: Vec<i64> = (5001..5011).collect();
    let mut online = store.online_features().service("ride_ranking_v1").at(t);
    for (d, c) in drivers.iter().zip(&customers) {
        online = online.entity_row(BTreeMap::from([
            ("driver_id".to_string(), Value::Int64(*d)),
            ("customer_id".to_string(), Value::Int64(*c)),
        ]));
    }
    let online = online.block().unwrap();
    assert_eq!(
        online.feature_service,
        Some(("ride_ranking_v1".to_string(), 1))
    );
    // The same keys as training rows labelled at the anchor (exclusive of events at the
    // anchor itself is not a concern: materialization covers [.., anchor)).
    let labels = batch(vec![
        (
            "driver_id",
            std::sync::Arc::new(Int64Array::from(drivers.clone())),
        ),
        (
            "customer_id",
            std::sync::Arc::new(Int64Array::from(customers.clone())),
        ),
        ("event_timestamp", ts(vec![t - 1; drivers.len()])),
    ]);
    let offline = store
        .historical()
        .entities(labels)
        .service("ride_ranking_v1")
        .block()
        .unwrap();
    let conv = offline
        .column_by_name("conv_rate")
        .unwrap()
        .as_primitive::<Float64Type>();
    let trips = offline
        .column_by_name("avg_daily_trips")
        .unwrap()
        .as_primitive::<Int64Type>();
    let ci = online
        .feature_names
        .iter()
        .position(|n| n == "conv_rate")
        .unwrap();
    let ti = online
        .feature_names
        .iter()
        .position(|n| n == "avg_daily_trips")
        .unwrap();
    for (i, row) in online.rows.iter().enumerate() {
        assert_eq!(row.statuses[ci], FeatureStatus::Present);
        assert_eq!(
            row.values[ci],
            Value::Float64(conv.value(i)),
            "online/offline parity, row {i}"
        );
        assert_eq!(
            row.values[ti],
            Value::Int64(trips.value(i)),
            "online/offline parity, row {i}"
        );
    }

    // ride_ranking_v3's windowed aggregations over the trip events: served at the
    // anchor as trained at the anchor, bit for bit.
    let mut online = store.online_features().service("ride_ranking_v3").at(t);
    for (d, c) in drivers.iter().zip(&customers) {
        online = online.entity_row(BTreeMap::from([
            ("driver_id".to_string(), Value::Int64(*d)),
            ("customer_id".to_string(), Value::Int64(*c)),
        ]));
    }
    let online = online.block().unwrap();
    let labels = batch(vec![
        (
            "driver_id",
            std::sync::Arc::new(Int64Array::from(drivers.clone())),
        ),
        (
            "customer_id",
            std::sync::Arc::new(Int64Array::from(customers.clone())),
        ),
        ("event_timestamp", ts(vec![t; drivers.len()])),
    ]);
    let offline = store
        .historical()
        .entities(labels)
        .service("ride_ranking_v3")
        .block()
        .unwrap();
    let mut checked = 0;
    for (j, name) in online.feature_names.iter().enumerate() {
        if !(name.starts_with("count_star_") || name.starts_with("fare_")) {
            continue;
        }
        let col = offline.column_by_name(name).unwrap();
        for (i, row) in online.rows.iter().enumerate() {
            let want = quiver_core::value::value_at(col.as_ref(), i).unwrap();
            assert_eq!(row.values[j], want, "{name}, driver {}", drivers[i]);
            checked += 1;
        }
    }
    assert_eq!(checked, 7 * drivers.len(), "{:?}", online.feature_names);
    let sum_7d = offline.column_by_name("fare_sum_7d").unwrap();
    assert!(arrow::array::Array::null_count(sum_7d.as_ref()) < drivers.len());

    // Statuses: OUTSIDE_TTL after the TTL (1d for driver stats), MISSING for unknown keys.
    let (ok, out, err) = cli(
        &repo,
        &[
            "online",
            "--service",
            "driver_activity_v1",
            "--entity",
            "driver_id=1001",
            "--entity",
            "driver_id=999",
            "--at",
            "2025-03-03T12:00:00Z",
            "--json",
        ],
    );
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["results"][0]["statuses"]["conv_rate"], "OUTSIDE_TTL");
    assert!(v["results"][0]["features"]["conv_rate"].is_null());
    assert_eq!(v["results"][1]["statuses"]["conv_rate"], "MISSING");
    assert!(v["results"][1]["features"]["conv_rate"].is_null());
    // The JSON carries the event times the table shows: the expired row's, none for the
    // unknown key.
    let t = v["results"][0]["event_timestamps"]["conv_rate"]
        .as_str()
        .unwrap_or_else(|| panic!("an event time: {v}"));
    assert!(
        parse_timestamp(t).unwrap() < parse_timestamp("2025-03-02T12:00:00Z").unwrap(),
        "{t}"
    );
    assert!(v["results"][1]["event_timestamps"]["conv_rate"].is_null());
    assert_eq!(v["metadata"]["feature_service_version"], 1);

    // Bad online requests get clear errors.
    let (ok, _, err) = cli(
        &repo,
        &[
            "online",
            "--service",
            "driver_activity_v1",
            "--entity",
            "driver_id=abc",
        ],
    );
    assert!(!ok && err.contains("\"abc\" is not a valid int64"), "{err}");
    let (ok, _, err) = cli(
        &repo,
        &[
            "online",
            "--service",
            "ride_ranking_v1",
            "--entity",
            "driver_id=1001",
        ],
    );
    assert!(
        !ok && err.contains("no value for join key 'customer_id'"),
        "{err}"
    );
    let (ok, _, err) = cli(
        &repo,
        &["online", "--service", "nope", "--entity", "driver_id=1"],
    );
    assert!(
        !ok && err.contains("unknown feature service 'nope'"),
        "{err}"
    );
}
