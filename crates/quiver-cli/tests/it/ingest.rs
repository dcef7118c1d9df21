//! Ingest: validation with row and column named, nothing written on error, and re-runs
//! leave one copy of each row.

use quiver::testing::Block;
use std::sync::Arc;

use arrow::array::{Float64Array, Int64Array, StringArray};

use crate::common::{cli, stopped_at, ts, ts_opt, Repo, ONE_VIEW};

const DEFS: &str = "\
entities:
  - name: user
    join_keys: [user_id]
sources:
  - name: src
    type: file
    path: data/src.parquet
    timestamp_field: event_time
    created_timestamp_field: created
feature_views:
  - name: stats
    entities: [user]
    source: src
    features:
      - { name: score, dtype: float64 }
";

fn repo_with(
    user: Vec<Option<i64>>,
    times: Vec<i64>,
    created: Vec<Option<i64>>,
    score: Vec<Option<f64>>,
) -> Repo {
    let r = Repo::new(DEFS);
    r.parquet(
        "data/src.parquet",
        vec![
            ("user_id", Arc::new(Int64Array::from(user))),
            ("event_time", ts(times)),
            ("created", ts_opt(created)),
            ("score", Arc::new(Float64Array::from(score))),
        ],
    );
    r
}

fn stored_rows(r: &Repo) -> u64 {
    let store = r.store();
    let view = store.state().unwrap().resolved_view("stats").unwrap();
    store.offline().row_count(&view).block().unwrap()
}

#[test]
fn reingest_keeps_one_copy_and_later_values_win() {
    let s = 1_000_000;
    let r = repo_with(
        vec![Some(1), Some(1), Some(2), Some(2)],
        vec![10 * s, 10 * s, 10 * s, 86_400 * s * 3],
        vec![Some(1), Some(2), None, None],
        vec![Some(1.0), Some(2.0), Some(3.0), None],
    );
    let store = r.store();
    store.apply().block().unwrap();
    let first = store.ingest().block().unwrap();
    assert_eq!(first[0].1.rows_in, 4);
    assert_eq!(first[0].1.rows_stored, 4);
    assert_eq!(first[0].1.partitions, 2);
    for _ in 0..2 {
        let again = store.ingest().block().unwrap();
        assert_eq!(again[0].1.rows_replaced, 4, "{:?}", again);
        assert_eq!(stored_rows(&r), 4);
    }
    // A corrected row (same key and times, new value) replaces the stored one.
    r.parquet(
        "data/src.parquet",
        vec![
            ("user_id", Arc::new(Int64Array::from(vec![2]))),
            ("event_time", ts(vec![10 * s])),
            ("created", ts_opt(vec![None])),
            ("score", Arc::new(Float64Array::from(vec![30.0]))),
        ],
    );
    store.ingest().views(["stats"]).block().unwrap();
    assert_eq!(stored_rows(&r), 4);
    let labels = crate::common::batch(vec![
        ("user_id", Arc::new(Int64Array::from(vec![2, 1]))),
        ("event_timestamp", ts(vec![11 * s, 11 * s])),
    ]);
    let out = store
        .historical()
        .entities(labels)
        .features(["stats:score"])
        .block()
        .unwrap();
    let score = out
        .column_by_name("score")
        .unwrap()
        .as_any()
        .downcast_ref::<Float64Array>()
        .unwrap();
    assert_eq!(score.value(0), 30.0);
    assert_eq!(
        score.value(1),
        2.0,
        "the larger created_timestamp wins the tie"
    );
}

fn ingest_err(r: &Repo) -> String {
    let store = r.store();
    store.apply().block().unwrap();
    let e = store.ingest().block().unwrap_err().to_string();
    let view = store.state().unwrap().resolved_view("stats").unwrap();
    assert!(
        !store.offline().exists(&view) || stored_rows(r) == 0,
        "nothing may be written"
    );
    e
}

#[test]
fn duplicates_inside_a_source_are_not_reported_as_replaced_stored_rows() {
    let s = 1_000_000;
    // Rows 1 and 2 are identical in key, event and creation time.
    let r = repo_with(
        vec![Some(1), Some(1), Some(2)],
        vec![10 * s, 10 * s, 10 * s],
        vec![Some(5), Some(5), None],
        vec![Some(1.0), Some(2.0), Some(3.0)],
    );
    let store = r.store();
    store.apply().block().unwrap();
    let first = store.ingest().block().unwrap();
    let stats = &first[0].1;
    assert_eq!(
        (
            stats.rows_in,
            stats.rows_stored,
            stats.rows_replaced,
            stats.rows_duplicate
        ),
        (3, 2, 0, 1),
        "{stats:?}"
    );
    let (ok, out, err) = cli(r.path(), &["ingest"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("2 replaced a stored row")
            && out.contains("1 duplicated another row of the source"),
        "{out}"
    );
}

#[test]
fn null_keys_are_rejected_with_row_and_column() {
    let r = repo_with(
        vec![Some(1), None],
        vec![1, 2],
        vec![None, None],
        vec![Some(1.0), Some(2.0)],
    );
    let e = ingest_err(&r);
    assert!(
        e.contains("data/src.parquet: row 2, column 'user_id': join key is null"),
        "{e}"
    );
}

#[test]
fn rows_stamped_beyond_the_clock_are_rejected_with_row_and_column() {
    let day = 86_400_000_000;
    let now = quiver_core::time::now();
    let r = repo_with(
        vec![Some(1), Some(2)],
        vec![now - day, now + day],
        vec![None, None],
        vec![Some(1.0), Some(2.0)],
    );
    let e = ingest_err(&r);
    assert!(
        e.contains("data/src.parquet: row 2, column 'event_time'") && e.contains("max_future_skew"),
        "{e}"
    );
}

#[test]
fn unparsable_timestamps_are_rejected_with_row_and_column() {
    let r = Repo::new(&DEFS.replace("data/src.parquet", "data/src.csv"));
    r.write(
        "data/src.csv",
        "user_id,event_time,created,score\n1,2024-01-01 00:00:00,,1.5\n2,yesterday,,2.5\n",
    );
    let e = ingest_err(&r);
    assert!(
        e.contains("data/src.csv: row 2, column 'event_time'"),
        "{e}"
    );
    assert!(e.contains("yesterday"), "{e}");
}

#[test]
fn wrong_types_in_csv_are_rejected() {
    let r = Repo::new(&DEFS.replace("data/src.parquet", "data/src.csv"));
    r.write(
        "data/src.csv",
        "user_id,event_time,created,score\n1,2024-01-01 00:00:00,,1.5\n2,2024-01-01 00:00:00,,high\n",
    );
    let e = ingest_err(&r);
    assert!(e.contains("data/src.csv") && e.contains("high"), "{e}");
}

#[test]
fn source_changed_to_wrong_type_after_apply_is_rejected() {
    let r = repo_with(vec![Some(1)], vec![1], vec![None], vec![Some(1.0)]);
    r.store().apply().block().unwrap();
    r.parquet(
        "data/src.parquet",
        vec![
            ("user_id", Arc::new(Int64Array::from(vec![1]))),
            ("event_time", ts(vec![1])),
            ("created", ts_opt(vec![None])),
            ("score", Arc::new(StringArray::from(vec!["x"]))),
        ],
    );
    let e = r.store().ingest().block().unwrap_err().to_string();
    assert!(
        e.contains("column 'score' has type Utf8 but the feature is declared float64"),
        "{e}"
    );
}

#[test]
fn corrupt_source_file_is_named() {
    let r = repo_with(vec![Some(1)], vec![1], vec![None], vec![Some(1.0)]);
    r.store().apply().block().unwrap();
    std::fs::write(r.file("data/src.parquet"), b"PAR1 this is not parquet").unwrap();
    let (ok, _, err) = cli(r.path(), &["ingest"]);
    assert!(!ok);
    assert!(err.contains("src.parquet"), "{err}");
}

/// A source written with page checksums (pyarrow, `write_page_checksum=True`, no
/// compression): 1,000 rows of `k` (0..1000), `t` (1970-01-01T01:00Z), `x` ((k % 100) / 100).
const CHECKSUMMED: &[u8] = include_bytes!("../fixtures/checksummed.parquet");
/// Where the data page of column `x` starts in [`CHECKSUMMED`] (its column chunk
/// metadata's data_page_offset), and the chunk's length.
const X_PAGE: (usize, usize) = (16_162, 8_079);

#[test]
fn flipped_bytes_in_a_checksummed_source_fail_the_ingest_and_keep_stored_rows() {
    let r = Repo::new(ONE_VIEW);
    std::fs::create_dir_all(r.file("data")).unwrap();
    std::fs::write(r.file("data/s.parquet"), CHECKSUMMED).unwrap();
    let store = r.store();
    store.apply().block().unwrap();
    let (ok, _, err) = cli(r.path(), &["ingest"]);
    assert!(ok, "the intact file ingests: {err}");
    let view = store.state().unwrap().resolved_view("v").unwrap();
    let version = store.offline().version(&view).block().unwrap();
    assert_eq!(store.offline().row_count(&view).block().unwrap(), 1_000);

    // 4 KiB of flipped bytes inside the values of `x`: without the checksum they decode
    // as other numbers (pyarrow without verification reads -2.5e-127 for row 500).
    let mut bad = CHECKSUMMED.to_vec();
    let start = X_PAGE.0 + 2000;
    assert!(start + 4096 < X_PAGE.0 + X_PAGE.1);
    for b in &mut bad[start..start + 4096] {
        *b ^= 0xA5;
    }
    std::fs::write(r.file("data/s.parquet"), &bad).unwrap();
    let (ok, _, err) = cli(r.path(), &["ingest"]);
    assert!(!ok, "a file that fails its checksum is not ingested");
    assert!(
        err.contains("s.parquet") && err.to_lowercase().contains("checksum"),
        "{err}"
    );
    assert_eq!(store.offline().version(&view).block().unwrap(), version);
    assert_eq!(store.offline().row_count(&view).block().unwrap(), 1_000);

    // Cut short: an error naming the file, nothing replaced either.
    std::fs::write(
        r.file("data/s.parquet"),
        &CHECKSUMMED[..CHECKSUMMED.len() - 100],
    )
    .unwrap();
    let (ok, _, err) = cli(r.path(), &["ingest"]);
    assert!(!ok);
    assert!(err.contains("s.parquet"), "{err}");
    assert_eq!(store.offline().version(&view).block().unwrap(), version);
}

#[test]
fn unknown_view_is_an_error() {
    let r = repo_with(vec![Some(1)], vec![1], vec![None], vec![Some(1.0)]);
    r.store().apply().block().unwrap();
    let e = r
        .store()
        .ingest()
        .views(["stat"])
        .block()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("unknown feature view 'stat'") && e.contains("did you mean 'stats'"),
        "{e}"
    );
}

/// The Parquet files under the repository's offline store.
fn offline_files(r: &Repo) -> usize {
    fn walk(dir: &std::path::Path, n: &mut usize) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, n);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                *n += 1;
            }
        }
    }
    let mut n = 0;
    walk(&r.file("data/offline"), &mut n);
    n
}

#[test]
fn vacuum_deletes_replaced_and_uncommitted_files_and_keeps_what_is_read() {
    let s = 1_000_000;
    let r = repo_with(
        vec![Some(1), Some(2), Some(3)],
        vec![10 * s, 86_400 * s, 2 * 86_400 * s],
        vec![None, None, None],
        vec![Some(1.0), Some(2.0), Some(3.0)],
    );
    let store = r.store();
    store.apply().block().unwrap();
    for _ in 0..3 {
        store.ingest().block().unwrap();
    }
    // A re-ingest killed after writing its files, before its commit.
    stopped_at(r.path(), &["ingest"], "ingest.before_commit");
    let view = store.state().unwrap().resolved_view("stats").unwrap();
    let live = store.offline().data_files(&view).block().unwrap().len();
    assert_eq!(live, 3, "one file per day partition");
    assert_eq!(
        offline_files(&r),
        4 * live,
        "three ingests and a killed one"
    );

    // The default retention (7 days) keeps these fresh files.
    let (ok, out, err) = cli(r.path(), &["vacuum"]);
    assert!(ok, "{err}");
    assert!(out.contains("stats: 0 offline data files deleted"), "{out}");
    assert_eq!(offline_files(&r), 4 * live);

    let (ok, out, err) = cli(r.path(), &["vacuum", "--retention", "0"]);
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("stats: {} offline data files deleted", 3 * live)),
        "{out}"
    );
    assert_eq!(offline_files(&r), live);
    assert_eq!(stored_rows(&r), 3);
    let (ok, _, err) = cli(r.path(), &["vacuum", "--retention", "1 week"]);
    assert!(!ok && err.contains("1 week"), "{err}");
}
