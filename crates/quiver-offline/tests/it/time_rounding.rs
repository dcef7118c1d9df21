//! Nanosecond input: feature rows' times round up, labels' times round down, and two
//! rows of one key that differ only below a microsecond are an error, never merged.

use std::sync::Arc;

use arrow::array::TimestampNanosecondArray;
use arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, TimeUnit};
use quiver_core::model::{Feature, JoinKey, ResolvedView};
use quiver_core::time::{parse_timestamp, Duration};
use quiver_core::DType;
use quiver_offline::normalize::{normalize_batch, Origin};
use quiver_offline::{HistoricalRequest, OfflineStore, ViewRequest};

use crate::{ingest_source, resolve_repo, write};

const T: &str = "2024-05-01T00:00:00Z";

fn view() -> ResolvedView {
    ResolvedView {
        name: "stats".into(),
        version: 1,
        project: "test".into(),
        entities: vec!["driver".into()],
        join_keys: vec![JoinKey {
            name: "driver_id".into(),
            dtype: DType::Int64,
        }],
        features: vec![Feature {
            name: "v".into(),
            dtype: DType::Int64,
            description: String::new(),
            allow_non_finite: false,
        }],
        ttl: Duration::ZERO,
        aggregations: Vec::new(),
        retention: None,
    }
}

fn nanos(offset_ns: i64) -> i64 {
    parse_timestamp(T).unwrap() * 1_000 + offset_ns
}

/// A source batch of (driver_id, event time in ns after T, v).
fn source(rows: &[(i64, i64, i64)]) -> RecordBatch {
    RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("driver_id", DataType::Int64, false),
            Field::new(
                "event_timestamp",
                DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
                false,
            ),
            Field::new("v", DataType::Int64, true),
        ])),
        vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(
                TimestampNanosecondArray::from_iter_values(rows.iter().map(|r| nanos(r.1)))
                    .with_timezone("UTC"),
            ),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2))),
        ],
    )
    .unwrap()
}

fn origin(file: &str) -> Origin<'_> {
    Origin { file, first_row: 1 }
}

/// `v` for driver 1 at each label time (`column` built by `labels`).
fn values_at(store: &OfflineStore, view: &ResolvedView, times: ArrayRef) -> Vec<Option<i64>> {
    let n = times.len();
    let labels = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("driver_id", DataType::Int64, false),
            Field::new("event_timestamp", times.data_type().clone(), false),
        ])),
        vec![Arc::new(Int64Array::from(vec![1; n])), times],
    )
    .unwrap();
    let out = crate::block_on(store.historical(HistoricalRequest {
        entities: vec![labels],
        timestamp_column: "event_timestamp".into(),
        views: vec![ViewRequest {
            view: view.clone(),
            features: vec![("v".into(), "v".into())],
        }],
    }))
    .unwrap();
    let v = out.column_by_name("v").unwrap().as_primitive::<Int64Type>();
    (0..n).map(|i| v.is_valid(i).then(|| v.value(i))).collect()
}

#[test]
fn a_row_800_ns_after_a_label_does_not_reach_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = OfflineStore::open(dir.path()).unwrap();
    let view = view();
    // v = 10 a microsecond before T; v = 20 at T + 800 ns.
    let batch = normalize_batch(
        &source(&[(1, -1_000, 10), (1, 800, 20)]),
        &view,
        "event_timestamp",
        None,
        &origin("stats.parquet"),
    )
    .unwrap();
    crate::block_on(store.ingest(&view, vec![batch])).unwrap();
    // Labels in nanoseconds: at T, at T + 800 ns (the row's own time, rounded down to T
    // while the row rounds up to T + 1 µs) and at T + 1 µs.
    let labels = Arc::new(
        TimestampNanosecondArray::from(vec![nanos(0), nanos(800), nanos(1_000)])
            .with_timezone("UTC"),
    );
    assert_eq!(
        values_at(&store, &view, labels),
        vec![Some(10), Some(10), Some(20)]
    );
    // The same with labels written as text.
    let labels = Arc::new(StringArray::from(vec![
        "2024-05-01T00:00:00Z",
        "2024-05-01T00:00:00.000000800Z",
        "2024-05-01T00:00:00.000001Z",
    ]));
    assert_eq!(
        values_at(&store, &view, labels),
        vec![Some(10), Some(10), Some(20)]
    );
}

const DEFINITIONS: &str = "
entities:
  - name: driver
    join_keys: [driver_id]
sources:
  - name: stats_source
    type: file
    path: stats
    timestamp_field: event_timestamp
feature_views:
  - name: stats
    entities: [driver]
    source: stats_source
    ttl: 0
    features:
      - { name: v, dtype: int64 }
";

#[test]
fn csv_times_with_nine_fractional_digits_round_up_for_rows() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("stats")).unwrap();
    write(
        &dir.path().join("stats"),
        "a.csv",
        "driver_id,event_timestamp,v\n\
         1,2024-04-30T23:59:59.999999Z,10\n\
         1,2024-05-01T00:00:00.000000800Z,20\n",
    );
    let state = resolve_repo(dir.path(), DEFINITIONS);
    let store = OfflineStore::open(dir.path().join("offline")).unwrap();
    ingest_source(dir.path(), &state, &store, "stats").unwrap();
    let view = state.resolved_view("stats").unwrap();
    let labels = Arc::new(StringArray::from(vec![
        "2024-05-01T00:00:00Z",
        "2024-05-01T00:00:00.000000999Z",
        "2024-05-01T00:00:00.000001Z",
    ]));
    assert_eq!(
        values_at(&store, &view, labels),
        vec![Some(10), Some(10), Some(20)]
    );
}

#[test]
fn rows_of_one_key_within_one_microsecond_are_an_error_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let store = OfflineStore::open(dir.path()).unwrap();
    let view = view();
    // In one batch: T + 100 ns and T + 900 ns both round up to T + 1 µs.
    let e = normalize_batch(
        &source(&[(2, 0, 1), (1, 100, 10), (1, 900, 20)]),
        &view,
        "event_timestamp",
        None,
        &origin("stats.parquet"),
    )
    .expect_err("rows 2 and 3 differ only below a microsecond")
    .to_string();
    for part in [
        "stats.parquet: row 2",
        "stats.parquet: row 3",
        "driver_id=1",
        "2024-05-01T00:00:00.000000100Z",
        "2024-05-01T00:00:00.000000900Z",
    ] {
        assert!(e.contains(part), "{part:?} not in: {e}");
    }
    // An exact microsecond and a time 1 ns before it collide too.
    assert!(normalize_batch(
        &source(&[(1, 999, 10), (1, 1_000, 20)]),
        &view,
        "event_timestamp",
        None,
        &origin("stats.parquet"),
    )
    .is_err());
    assert_eq!(
        crate::block_on(store.row_count(&view)).unwrap(),
        0,
        "nothing was stored"
    );
}

#[test]
fn rows_of_one_key_within_one_microsecond_in_two_files_of_one_ingest_are_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("stats");
    std::fs::create_dir(&src).unwrap();
    write(
        &src,
        "a.csv",
        "driver_id,event_timestamp,v\n1,2024-05-01T00:00:00.000000100Z,10\n",
    );
    write(
        &src,
        "b.csv",
        "driver_id,event_timestamp,v\n2,2024-05-01T00:00:00Z,5\n1,2024-05-01T00:00:00.000000900Z,20\n",
    );
    let state = resolve_repo(dir.path(), DEFINITIONS);
    let store = OfflineStore::open(dir.path().join("offline")).unwrap();
    let e = ingest_source(dir.path(), &state, &store, "stats")
        .expect_err("the two files' rows differ only below a microsecond")
        .to_string();
    assert!(e.contains("a.csv: row 1"), "{e}");
    assert!(e.contains("b.csv: row 2"), "{e}");
    let view = state.resolved_view("stats").unwrap();
    assert_eq!(
        crate::block_on(store.row_count(&view)).unwrap(),
        0,
        "nothing was stored"
    );
}

#[test]
fn repeated_and_re_ingested_rows_with_nanoseconds_are_not_collisions() {
    let dir = tempfile::tempdir().unwrap();
    let store = OfflineStore::open(dir.path()).unwrap();
    let view = view();
    let rows = [(1, 100, 10), (1, 100, 10), (1, 2_500, 20), (2, 100, 30)];
    for round in 0..2 {
        let batch = normalize_batch(
            &source(&rows),
            &view,
            "event_timestamp",
            None,
            &origin("stats.parquet"),
        )
        .unwrap_or_else(|e| panic!("round {round}: {e}"));
        let stats = crate::block_on(store.ingest(&view, vec![batch])).unwrap();
        assert_eq!(stats.rows_stored, 3, "round {round}: {stats:?}");
    }
}

#[test]
fn times_outside_years_1_to_9999_are_errors_naming_row_and_column() {
    use arrow::array::TimestampMicrosecondArray;
    use quiver_core::time::{MAX_TIMESTAMP, MIN_TIMESTAMP};
    let batch = |t: i64| {
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("driver_id", DataType::Int64, false),
                Field::new(
                    "event_timestamp",
                    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                    false,
                ),
                Field::new("v", DataType::Int64, true),
            ])),
            vec![
                Arc::new(Int64Array::from(vec![1, 2])),
                Arc::new(TimestampMicrosecondArray::from(vec![0, t]).with_timezone("UTC")),
                Arc::new(Int64Array::from(vec![1, 2])),
            ],
        )
        .unwrap()
    };
    // Year ±270,000 (valid int64 µs, beyond what dates represent), and just past each end.
    for t in [
        270_000 * 366 * 86_400 * 1_000_000,
        -270_000 * 366 * 86_400 * 1_000_000,
        MAX_TIMESTAMP + 1,
        MIN_TIMESTAMP - 1,
        i64::MAX,
    ] {
        let e = normalize_batch(
            &batch(t),
            &view(),
            "event_timestamp",
            None,
            &origin("s.parquet"),
        )
        .expect_err("out of range")
        .to_string();
        assert!(
            e.contains("s.parquet: row 2, column 'event_timestamp'") && e.contains("1–9999"),
            "{e}"
        );
    }
    for t in [MAX_TIMESTAMP, MIN_TIMESTAMP] {
        normalize_batch(
            &batch(t),
            &view(),
            "event_timestamp",
            None,
            &origin("s.parquet"),
        )
        .expect("the ends are stored");
    }
    // Ingesting the last representable microsecond works end to end.
    let dir = tempfile::tempdir().unwrap();
    let store = OfflineStore::open(dir.path()).unwrap();
    let b = normalize_batch(
        &batch(MAX_TIMESTAMP),
        &view(),
        "event_timestamp",
        None,
        &origin("s.parquet"),
    )
    .unwrap();
    crate::block_on(store.ingest(&view(), vec![b])).unwrap();
    assert_eq!(crate::block_on(store.row_count(&view())).unwrap(), 2);
}

/// A table written by many small commits (stream micro-batches, pushes) gets Delta
/// checkpoints, so that opening it reads one checkpoint and the commits after it
/// instead of every commit since the table was created.
#[test]
fn many_commits_leave_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let store = OfflineStore::open(dir.path()).unwrap();
    let view = view();
    crate::block_on(async {
        for i in 0..101 {
            let b = normalize_batch(
                &source(&[(1, i * 1_000, i)]),
                &view,
                "event_timestamp",
                None,
                &origin("s"),
            )
            .unwrap();
            if i < 50 {
                store.ingest(&view, vec![b]).await.unwrap();
            } else {
                // Stream appends: their offsets are application transactions, which
                // the checkpoint carries.
                let (_, at) = store.stream_offsets(&view, &[b"p"]).await.unwrap();
                let offsets: [(&[u8], u128); 1] = [(b"p", i as u128)];
                store
                    .append_events(&view, vec![b.into()], &offsets, at)
                    .await
                    .unwrap();
            }
        }
    });
    let (offsets, _) = crate::block_on(store.stream_offsets(&view, &[b"p"])).unwrap();
    assert_eq!(offsets, vec![Some(100)]);
    let log = store.table_path(&view).join("_delta_log");
    assert!(
        log.join("00000000000000000099.checkpoint.parquet").exists()
            && log.join("00000000000000000009.checkpoint.parquet").exists(),
        "no checkpoint in {}",
        log.display()
    );
    assert_eq!(crate::block_on(store.row_count(&view)).unwrap(), 101);
}
