//! CSV join keys: a key column is typed by inference only when its text is the plain
//! form of integers, so `007` and `7` never become one entity.

use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use quiver_core::model::FileFormat;
use quiver_core::DType;
use quiver_offline::files::read_schema;
use quiver_offline::{HistoricalRequest, OfflineStore, ViewRequest};

use crate::{ingest_source, resolve_repo, write};

const DEFINITIONS: &str = "
entities:
  - name: driver
    join_keys: [driver_id]
sources:
  - name: trips_source
    type: file
    path: trips.csv
    timestamp_field: event_timestamp
feature_views:
  - name: trips
    entities: [driver]
    source: trips_source
    ttl: 0
    features:
      - { name: n_trips, dtype: int64 }
";

#[test]
fn keys_written_with_leading_zeros_or_a_signed_zero_are_distinct_string_entities() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "trips.csv",
        "driver_id,event_timestamp,n_trips\n\
         7,2024-05-01T00:00:00Z,1\n\
         007,2024-05-01T00:00:00Z,2\n\
         0,2024-05-01T00:00:00Z,3\n\
         -0,2024-05-01T00:00:00Z,4\n",
    );
    let state = resolve_repo(dir.path(), DEFINITIONS);
    let view = state.resolved_view("trips").unwrap();
    assert_eq!(
        view.join_keys[0].dtype,
        DType::String,
        "a key column holding 007 must be inferred as text"
    );

    let store = OfflineStore::open(dir.path().join("offline")).unwrap();
    let stats = ingest_source(dir.path(), &state, &store, "trips").unwrap();
    assert_eq!(
        stats.rows_stored, 4,
        "four spellings, four entities: {stats:?}"
    );

    let keys = ["7", "007", "0", "-0"];
    let labels = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("driver_id", DataType::Utf8, false),
            Field::new("event_timestamp", DataType::Utf8, false),
        ])),
        vec![
            Arc::new(StringArray::from(keys.to_vec())),
            Arc::new(StringArray::from(vec!["2024-05-02T00:00:00Z"; 4])),
        ],
    )
    .unwrap();
    let out = crate::block_on(store.historical(HistoricalRequest {
        entities: vec![labels],
        timestamp_column: "event_timestamp".into(),
        views: vec![ViewRequest {
            view,
            features: vec![("n_trips".into(), "n_trips".into())],
        }],
    }))
    .unwrap();
    let n = out
        .column_by_name("n_trips")
        .unwrap()
        .as_primitive::<Int64Type>();
    let got: Vec<Option<i64>> = (0..n.len())
        .map(|i| n.is_valid(i).then(|| n.value(i)))
        .collect();
    assert_eq!(
        got,
        vec![Some(1), Some(2), Some(3), Some(4)],
        "keys {keys:?}"
    );
}

#[test]
fn plain_integers_are_still_inferred_as_integers() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "k.csv",
        "plain,zero_padded,huge,with_null\n\
         1,01,1,1\n\
         -42,2,99999999999999999999,\n\
         0,3,3,3\n",
    );
    let schema = read_schema(&p, FileFormat::Csv).unwrap();
    let types: Vec<(&str, &DataType)> = schema
        .fields()
        .iter()
        .map(|f| (f.name().as_str(), f.data_type()))
        .collect();
    assert_eq!(
        types,
        vec![
            ("plain", &DataType::Int64),
            ("zero_padded", &DataType::Utf8),
            ("huge", &DataType::Utf8),
            ("with_null", &DataType::Int64),
        ]
    );
}

#[test]
fn a_zero_padded_key_after_the_inference_rows_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    // The first 1000 rows, which inference reads, hold plain integers; row 1002 holds 007.
    let mut csv = String::from("driver_id,event_timestamp,n_trips\n");
    for i in 1..=1001 {
        csv.push_str(&format!("{i},2024-05-01T00:00:00Z,{i}\n"));
    }
    csv.push_str("007,2024-05-01T00:00:00Z,0\n");
    write(dir.path(), "trips.csv", &csv);
    let state = resolve_repo(dir.path(), DEFINITIONS);
    assert_eq!(
        state.resolved_view("trips").unwrap().join_keys[0].dtype,
        DType::Int64
    );
    let store = OfflineStore::open(dir.path().join("offline")).unwrap();
    let e = ingest_source(dir.path(), &state, &store, "trips")
        .expect_err("007 must not be read as driver 7")
        .to_string();
    for part in ["trips.csv: row 1002", "driver_id", "'007'", "dtype: string"] {
        assert!(e.contains(part), "{part:?} not in: {e}");
    }
}
