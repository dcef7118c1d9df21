//! On-demand features in training sets: computed after the point-in-time join from the
//! joined features and the entity rows' request columns, checked against the same
//! arithmetic done here on the joined values.

use quiver::testing::Block;
use std::sync::Arc;

use arrow::array::{Array, AsArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{Float64Type, Int64Type};

use crate::common::{batch, ts, Repo};

const S: i64 = 1_000_000;

const DEFS: &str = "\
entities:
  - name: driver
    join_keys: [driver_id]
sources:
  - name: stats
    type: file
    path: data/stats.parquet
    timestamp_field: ts
feature_views:
  - name: driver_stats
    entities: [driver]
    source: stats
    ttl: 0
    features:
      - { name: rate, dtype: float64 }
      - { name: trips, dtype: int64 }
request_sources:
  - name: trip_request
    schema:
      - { name: distance_km, dtype: float64 }
      - { name: passengers, dtype: int64 }
on_demand_feature_views:
  - name: trip
    sources: [request: trip_request, driver_stats]
    features:
      - { name: score, dtype: float64, expr: \"rate * distance_km\" }
      - { name: band, dtype: string, expr: \"CASE WHEN distance_km >= 10 THEN 'long' ELSE 'short' END\" }
      - { name: load, dtype: int64, expr: \"coalesce(trips, 0) + passengers\" }
feature_services:
  - name: ranking
    features: [driver_stats:trips, trip:*]
";

/// A repository whose driver 1 has rate 0.5 from t=10s and 0.8 from t=20s, driver 2 a
/// null rate from t=10s, driver 3 nothing.
pub fn repo() -> Repo {
    let r = Repo::new(DEFS);
    r.parquet(
        "data/stats.parquet",
        vec![
            ("driver_id", Arc::new(Int64Array::from(vec![1, 1, 2]))),
            ("ts", ts(vec![10 * S, 20 * S, 10 * S])),
            (
                "rate",
                Arc::new(Float64Array::from(vec![Some(0.5), Some(0.8), None])),
            ),
            ("trips", Arc::new(Int64Array::from(vec![4, 6, 9]))),
        ],
    );
    let store = r.store();
    store.apply().block().unwrap();
    store.ingest().block().unwrap();
    r
}

/// Entity rows: (driver, time s, distance, passengers).
fn entities() -> RecordBatch {
    let rows: [(i64, i64, Option<f64>, i64); 7] = [
        (1, 15, Some(3.0), 1),
        (1, 25, Some(12.5), 2),
        (1, 5, Some(4.0), 1),   // before any row: rate missing
        (2, 15, Some(8.0), 3),  // the row's rate is null
        (3, 15, Some(2.0), 1),  // unknown driver
        (1, 30, None, 1),       // no distance
        (1, 25, Some(12.5), 2), // a duplicate label stays a separate row
    ];
    batch(vec![
        (
            "driver_id",
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
        ),
        (
            "event_timestamp",
            ts(rows.iter().map(|r| r.1 * S).collect()),
        ),
        (
            "distance_km",
            Arc::new(Float64Array::from(
                rows.iter().map(|r| r.2).collect::<Vec<_>>(),
            )),
        ),
        (
            "passengers",
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.3))),
        ),
        (
            "label",
            Arc::new(Int64Array::from_iter_values(0..rows.len() as i64)),
        ),
    ])
}

fn names(b: &RecordBatch) -> Vec<String> {
    b.schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect()
}

#[test]
fn training_set_with_on_demand_features_matches_the_joined_values() {
    let r = repo();
    let store = r.store();
    let input = entities();
    // The features the expressions read, joined directly: the reference.
    let joined = store
        .historical()
        .entities(input.clone())
        .features(["driver_stats:rate", "driver_stats:trips"])
        .block()
        .unwrap();
    let out = store
        .historical()
        .entities(input.clone())
        .features(["trip:score", "driver_stats:trips", "trip:band", "trip:load"])
        .block()
        .unwrap();
    // Input columns, then the features in the order asked; `rate` was only a
    // dependency and is not in the output.
    assert_eq!(
        names(&out),
        vec![
            "driver_id",
            "event_timestamp",
            "distance_km",
            "passengers",
            "label",
            "score",
            "trips",
            "band",
            "load"
        ]
    );
    assert_eq!(out.num_rows(), input.num_rows());
    let label = out
        .column_by_name("label")
        .unwrap()
        .as_primitive::<Int64Type>();
    assert!((0..out.num_rows()).all(|i| label.value(i) == i as i64));

    let rate = joined
        .column_by_name("rate")
        .unwrap()
        .as_primitive::<Float64Type>();
    let trips = joined
        .column_by_name("trips")
        .unwrap()
        .as_primitive::<Int64Type>();
    let dist = input
        .column_by_name("distance_km")
        .unwrap()
        .as_primitive::<Float64Type>();
    let pax = input
        .column_by_name("passengers")
        .unwrap()
        .as_primitive::<Int64Type>();
    let score = out
        .column_by_name("score")
        .unwrap()
        .as_primitive::<Float64Type>();
    let band = out.column_by_name("band").unwrap().as_string::<i32>();
    let load = out
        .column_by_name("load")
        .unwrap()
        .as_primitive::<Int64Type>();
    let out_trips = out
        .column_by_name("trips")
        .unwrap()
        .as_primitive::<Int64Type>();
    for i in 0..out.num_rows() {
        let r = rate.is_valid(i).then(|| rate.value(i));
        let d = dist.is_valid(i).then(|| dist.value(i));
        let want = r.zip(d).map(|(r, d)| r * d);
        let got = score.is_valid(i).then(|| score.value(i));
        assert_eq!(got, want, "score, row {i}");
        let want_band = d.map(|d| if d >= 10.0 { "long" } else { "short" });
        // A null distance makes the condition unknown: ELSE, as SQL says.
        assert_eq!(
            Some(band.value(i)),
            Some(want_band.unwrap_or("short")),
            "band, row {i}"
        );
        let t = trips.is_valid(i).then(|| trips.value(i));
        assert_eq!(
            load.value(i),
            t.unwrap_or(0) + pax.value(i),
            "load, row {i}"
        );
        assert_eq!(out_trips.is_valid(i), trips.is_valid(i));
    }
    // The cases the data were made for, spelled out.
    assert_eq!(score.value(0), 0.5 * 3.0);
    assert_eq!(score.value(1), 0.8 * 12.5);
    for (row, why) in [
        (2, "no feature row yet"),
        (3, "null feature value"),
        (4, "unknown entity"),
        (5, "null request field"),
    ] {
        assert!(
            score.is_null(row),
            "row {row} ({why}) must be null, not {}",
            score.value(row)
        );
    }
    assert_eq!(score.value(6), score.value(1));
    assert!(band.is_valid(5));
}

#[test]
fn services_full_names_and_column_types() {
    let r = repo();
    let store = r.store();
    let out = store
        .historical()
        .entities(entities())
        .service("ranking")
        .full_names(true)
        .block()
        .unwrap();
    assert_eq!(out.num_rows(), 7);
    assert_eq!(
        names(&out)[5..],
        [
            "driver_stats__trips",
            "trip__score",
            "trip__band",
            "trip__load"
        ]
    );
    assert_eq!(
        out.column_by_name("trip__band").unwrap().data_type(),
        &arrow::datatypes::DataType::Utf8
    );
    // Request fields in another numeric type are widened: an int64 distance column.
    let input = entities();
    let int_dist = batch(vec![
        ("driver_id", input.column(0).clone()),
        ("event_timestamp", input.column(1).clone()),
        (
            "distance_km",
            Arc::new(Int64Array::from(vec![3, 12, 4, 8, 2, 1, 12])),
        ),
        ("passengers", input.column(3).clone()),
    ]);
    let out = store
        .historical()
        .entities(int_dist)
        .features(["trip:score"])
        .block()
        .unwrap();
    let score = out
        .column_by_name("score")
        .unwrap()
        .as_primitive::<Float64Type>();
    assert_eq!(score.value(0), 0.5 * 3.0);
    assert_eq!(score.value(1), 0.8 * 12.0);
}

#[test]
fn a_dependency_that_is_also_requested_is_joined_once_and_kept() {
    let r = repo();
    let out = r
        .store()
        .historical()
        .entities(entities())
        .features(["driver_stats:rate", "trip:score"])
        .full_names(true)
        .block()
        .unwrap();
    assert_eq!(names(&out)[5..], ["driver_stats__rate", "trip__score"]);
    let rate = out.column(5).as_primitive::<Float64Type>();
    let score = out.column(6).as_primitive::<Float64Type>();
    assert_eq!(score.value(1), rate.value(1) * 12.5);
}

#[test]
fn missing_or_mistyped_request_columns_are_clear_errors() {
    let r = repo();
    let store = r.store();
    let input = entities();
    let no_distance = batch(vec![
        ("driver_id", input.column(0).clone()),
        ("event_timestamp", input.column(1).clone()),
        ("distance_kn", input.column(2).clone()),
        ("passengers", input.column(3).clone()),
    ]);
    let e = store
        .historical()
        .entities(no_distance)
        .features(["trip:score"])
        .block()
        .unwrap_err()
        .to_string();
    for part in [
        "on-demand feature view 'trip'",
        "request field 'distance_km'",
        "no column 'distance_km'",
        "did you mean 'distance_kn'",
        "columns: driver_id, event_timestamp, distance_kn, passengers",
    ] {
        assert!(e.contains(part), "missing {part:?} in: {e}");
    }
    let text_distance = batch(vec![
        ("driver_id", input.column(0).clone()),
        ("event_timestamp", input.column(1).clone()),
        (
            "distance_km",
            Arc::new(StringArray::from(vec!["1", "2", "3", "4", "5", "6", "7"])),
        ),
        ("passengers", input.column(3).clone()),
    ]);
    let e = store
        .historical()
        .entities(text_distance)
        .features(["trip:score"])
        .block()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("request field 'distance_km' as float64")
            && e.contains("column 'distance_km' of the entity rows is string"),
        "{e}"
    );
    // An output name that collides with an input column asks for full names.
    let clash = batch(vec![
        ("driver_id", input.column(0).clone()),
        ("event_timestamp", input.column(1).clone()),
        ("distance_km", input.column(2).clone()),
        ("passengers", input.column(3).clone()),
        ("score", input.column(2).clone()),
    ]);
    let e = store
        .historical()
        .entities(clash)
        .features(["trip:score"])
        .block()
        .unwrap_err()
        .to_string();
    assert!(e.contains("output column 'score' appears twice"), "{e}");
}

#[test]
fn the_command_line_reads_request_fields_of_csv_entity_rows_as_declared() {
    let r = repo();
    // `distance_km` holds only integers: read as the declared float64, not inferred.
    r.write(
        "data/entities.csv",
        "driver_id,event_timestamp,distance_km,passengers\n\
         1,1970-01-01T00:00:15Z,3,1\n\
         1,1970-01-01T00:00:25Z,,2\n\
         2,1970-01-01T00:00:25Z,4,2\n",
    );
    let out = r.file("data/training.parquet");
    let (ok, stdout, err) = crate::common::cli(
        r.path(),
        &[
            "historical",
            "--entities",
            r.file("data/entities.csv").to_str().unwrap(),
            "--features",
            "trip:score,driver_stats:rate",
            "--output",
            out.to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    assert!(stdout.contains("3 rows"), "{stdout}");
    let t = quiver::io::read_table(&out).unwrap();
    assert_eq!(names(&t)[4..], ["score", "rate"]);
    let score = t
        .column_by_name("score")
        .unwrap()
        .as_primitive::<Float64Type>();
    assert_eq!(score.value(0), 0.5 * 3.0);
    assert!(score.is_null(1) && score.is_null(2));
}

/// One coercion rule for request fields: an int64 entity column for a field declared
/// int32 is read as the online request context is (values that fit), offline too.
#[test]
fn request_fields_coerce_offline_as_online() {
    let r = Repo::new(&DEFS.replace(
        "{ name: passengers, dtype: int64 }",
        "{ name: passengers, dtype: int32 }",
    ));
    r.parquet(
        "data/stats.parquet",
        vec![
            ("driver_id", Arc::new(Int64Array::from(vec![1]))),
            ("ts", ts(vec![10 * S])),
            ("rate", Arc::new(Float64Array::from(vec![0.5]))),
            ("trips", Arc::new(Int64Array::from(vec![4]))),
        ],
    );
    let store = r.store();
    store.apply().block().unwrap();
    store.ingest().block().unwrap();
    store.materialize(0, 100 * S).block().unwrap();
    let labels = |passengers: i64| {
        batch(vec![
            ("driver_id", Arc::new(Int64Array::from(vec![1]))),
            ("event_timestamp", ts(vec![50 * S])),
            ("distance_km", Arc::new(Float64Array::from(vec![2.0]))),
            ("passengers", Arc::new(Int64Array::from(vec![passengers]))),
        ])
    };
    let training = store
        .historical()
        .entities(labels(3))
        .features(["trip:load"])
        .block()
        .unwrap();
    let offline = training
        .column_by_name("load")
        .unwrap()
        .as_primitive::<Int64Type>()
        .value(0);
    let online = store
        .online_features()
        .features(["trip:load"])
        .entity_row([("driver_id".to_string(), quiver::Value::Int64(1))].into())
        .request_row_text([("passengers".to_string(), "3".to_string())].into())
        .at(50 * S)
        .block()
        .unwrap();
    assert_eq!(offline, 7);
    assert_eq!(online.rows[0].values[0], quiver::Value::Int64(offline));
    // A value that does not fit int32 is an error naming the column, never a wrap.
    let e = store
        .historical()
        .entities(labels(1 << 40))
        .features(["trip:load"])
        .block()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("column 'passengers'") && e.contains("int32"),
        "{e}"
    );
}
