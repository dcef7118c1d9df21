//! A materialization killed mid-way leaves the online store readable with the previous
//! committed values; a rerun completes. An ingest killed before its first commit
//! leaves an empty table that materialization reports instead of skipping it.

use quiver::testing::Block;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Float64Array, Int64Array};
use quiver::{FeatureStatus, Value};

use crate::common::{cli, quiver_bin, stopped_at, ts, Repo, ONE_VIEW};

const KEYS: i64 = 300_000;
const HOUR: i64 = 3_600_000_000;

fn value_of(repo: &Repo, key: i64) -> Option<f64> {
    let store = repo.store();
    let r = store
        .online_features()
        .features(["v:x"])
        .at(10 * HOUR)
        .entity_row(BTreeMap::from([("k".to_string(), Value::Int64(key))]))
        .block()
        .unwrap();
    match (&r.rows[0].values[0], r.rows[0].statuses[0]) {
        (Value::Float64(v), FeatureStatus::Present) => Some(*v),
        _ => None,
    }
}

#[test]
fn killed_materialization_leaves_previous_state_readable() {
    let repo = Repo::new(ONE_VIEW);
    // Two rows per key: x = 1 at 1h, x = 2 at 3h.
    let keys: Vec<i64> = (0..KEYS).chain(0..KEYS).collect();
    let times: Vec<i64> = (0..2 * KEYS)
        .map(|i| if i < KEYS { HOUR } else { 3 * HOUR })
        .collect();
    let xs: Vec<f64> = (0..2 * KEYS)
        .map(|i| if i < KEYS { 1.0 } else { 2.0 })
        .collect();
    repo.parquet(
        "data/s.parquet",
        vec![
            ("k", Arc::new(Int64Array::from(keys))),
            ("t", ts(times)),
            ("x", Arc::new(Float64Array::from(xs))),
        ],
    );
    let store = repo.store();
    store.apply().block().unwrap();
    store.ingest().block().unwrap();
    store.materialize(0, 2 * HOUR).block().unwrap();
    assert_eq!(value_of(&repo, 0), Some(1.0));
    assert_eq!(value_of(&repo, KEYS - 1), Some(1.0));

    let mut child = std::process::Command::new(quiver_bin())
        .arg("--repo")
        .arg(repo.path())
        .args([
            "materialize",
            "1970-01-01T00:00:00Z",
            "1970-01-01T04:00:00Z",
            "--json",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the child has committed its first write batch, then kill it.
    let deadline = Instant::now() + Duration::from_secs(120);
    while value_of(&repo, 0) != Some(2.0) && Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    let _ = child.wait();

    // Every key is readable and holds either the old or the new value.
    let mut new = 0;
    for k in (0..KEYS).step_by(997).chain([KEYS - 1]) {
        match value_of(&repo, k) {
            Some(1.0) => {}
            Some(2.0) => new += 1,
            other => panic!("key {k}: unexpected {other:?}"),
        }
    }
    assert!(new > 0, "the first batch was committed before the kill");
    // The registry still records the previous run (the killed one did not finish).
    let state = store.state().unwrap();
    assert_eq!(
        state.feature_views["v"].materialized.as_ref().unwrap().end,
        2 * HOUR
    );

    // A rerun completes.
    store.materialize(0, 4 * HOUR).block().unwrap();
    assert_eq!(value_of(&repo, 0), Some(2.0));
    assert_eq!(value_of(&repo, KEYS - 1), Some(2.0));
}

#[test]
fn killed_first_ingest_is_reported_and_the_reingest_materialized_in_full() {
    const N: i64 = 2_000;
    for point in ["ingest.after_create", "ingest.before_commit"] {
        let repo = Repo::new(ONE_VIEW);
        repo.parquet(
            "data/s.parquet",
            vec![
                ("k", Arc::new(Int64Array::from_iter_values(0..N))),
                ("t", ts(vec![HOUR; N as usize])),
                ("x", Arc::new(Float64Array::from(vec![1.0; N as usize]))),
            ],
        );
        let store = repo.store();
        store.apply().block().unwrap();
        stopped_at(repo.path(), &["ingest"], point);
        assert!(
            repo.path().join("data/offline").exists(),
            "{point}: the run got as far as creating the offline table"
        );

        // The empty table is reported, and no high-water mark moves over it.
        let (ok, out, err) = cli(repo.path(), &["materialize-incremental"]);
        assert!(!ok, "{point}: materializing an empty table fails\n{out}");
        assert!(
            err.contains("feature view 'v'") && err.contains("quiver ingest v"),
            "{point}: {err}"
        );
        assert_eq!(store.state().unwrap().feature_views["v"].materialized, None);

        // After a successful ingest every key is materialized.
        let (ok, _, err) = cli(repo.path(), &["ingest"]);
        assert!(ok, "{point}: {err}");
        let (ok, _, err) = cli(repo.path(), &["materialize-incremental"]);
        assert!(ok, "{point}: {err}");
        for k in (0..N).step_by(97).chain([N - 1]) {
            assert_eq!(value_of(&repo, k), Some(1.0), "{point}: key {k}");
        }
    }
}
