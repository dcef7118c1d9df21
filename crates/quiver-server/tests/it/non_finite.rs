//! The one rule for non-finite and out-of-range numbers (`quiver_core::finite`), end to
//! end: rejected at ingest and push unless a feature allows them, written distinctly in
//! JSON, and on-demand rows that cannot be computed served as INVALID and null in the
//! training set, the other rows untouched, the same offline and online.

use quiver::testing::Block;
use std::sync::Arc;

use arrow::array::{Array, AsArray, Float32Array, Float64Array, Int64Array};
use arrow::datatypes::{Float64Type, Int64Type};
use quiver_core::time::{parse_timestamp, ManualClock};
use quiver_server::{ServeOptions, Server};
use serde_json::json;

use quiver::testing::{batch, ts, Repo};

const DEFS: &str = r#"
entities:
  - name: meter
    join_keys: [meter_id]
sources:
  - name: readings
    type: file
    path: data/readings.parquet
    timestamp_field: ts
feature_views:
  - name: m
    entities: [meter]
    source: readings
    ttl: 0
    features:
      - { name: x, dtype: float64 }
      - { name: y, dtype: float32 }
      - { name: z, dtype: float64, allow_non_finite: true }
request_sources:
  - name: req
    schema:
      - { name: n, dtype: int64 }
on_demand_feature_views:
  - name: od
    sources: [request: req, m]
    features:
      - { name: big, dtype: int64, expr: "n * 4611686018427387904" }
      - { name: q, dtype: int64, expr: "100 / n" }
      - { name: root, dtype: float64, expr: "sqrt(x - 1.0)" }
"#;

fn t(hms: &str) -> i64 {
    parse_timestamp(&format!("2025-01-01T{hms}Z")).unwrap()
}

fn readings(repo: &Repo, x: Vec<f64>) {
    repo.parquet(
        "data/readings.parquet",
        vec![
            ("meter_id", Arc::new(Int64Array::from(vec![1, 2]))),
            ("ts", ts(vec![t("09:00:00"), t("09:00:00")])),
            ("x", Arc::new(Float64Array::from(x))),
            ("y", Arc::new(Float32Array::from(vec![1.5, 2.5]))),
            (
                "z",
                Arc::new(Float64Array::from(vec![f64::INFINITY, f64::NAN])),
            ),
        ],
    );
}

#[test]
fn non_finite_values_follow_one_rule_offline_and_online() {
    let repo = Repo::new(DEFS);
    let store = repo.store();
    // A NaN in a feature that does not allow it: the ingest fails naming the row and
    // column, and stores nothing.
    readings(&repo, vec![0.5, f64::NAN]);
    store.apply().block().unwrap();
    let e = store.ingest().block().unwrap_err().to_string();
    assert!(
        e.contains("row 2") && e.contains("'x'") && e.contains("not a finite number"),
        "{e}"
    );
    assert!(e.contains("allow_non_finite"), "{e}");

    // Finite x; z (allowed) holds +inf and NaN, kept as they are.
    readings(&repo, vec![0.5, 2.0]);
    store.ingest().block().unwrap();
    store
        .materialize(t("00:00:00"), t("10:00:00"))
        .block()
        .unwrap();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let clock: Arc<dyn quiver_core::time::Clock> = Arc::new(ManualClock::new(t("10:00:00")));
    let options = ServeOptions {
        http: "127.0.0.1:0".parse().unwrap(),
        grpc: None,
        ..Default::default()
    };
    let server = rt
        .block_on(Server::start(repo.store(), options, Some(clock)))
        .unwrap();
    let addr = server.http_addr;
    let post = |path: &str, body: serde_json::Value| {
        let (code, text) = crate::server::raw(addr, "POST", path, &body.to_string());
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or(json!(text));
        (code, v)
    };

    // Allowed non-finite values are served as the protobuf JSON names, never as null.
    let (code, v) = post(
        "/get-online-features",
        json!({"features": ["m:z", "m:x"], "entities": {"meter_id": [1, 2]}}),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["results"][0]["features"]["z"], "Infinity");
    assert_eq!(v["results"][1]["features"]["z"], "NaN");
    assert_eq!(v["results"][1]["statuses"]["z"], "PRESENT");

    // Pushes: a float64 beyond float32 is rejected, as is NaN where not allowed; an
    // allowed -Infinity is stored and served.
    let (code, v) = post(
        "/push",
        json!({"feature_view": "m", "data": {"meter_id": [1], "ts": ["2025-01-01T09:30:00Z"],
               "x": [1.0], "y": [1e300], "z": [0.0]}}),
    );
    assert_eq!(code, 400, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("range of float32"),
        "{v}"
    );
    let (code, v) = post(
        "/push",
        json!({"feature_view": "m", "data": {"meter_id": [1], "ts": ["2025-01-01T09:30:00Z"],
               "x": ["NaN"], "y": [1.0], "z": [0.0]}}),
    );
    assert_eq!(code, 400, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("not a finite number"),
        "{v}"
    );
    let (code, v) = post(
        "/push",
        json!({"feature_view": "m", "to": "online_and_offline",
               "data": {"meter_id": [3], "ts": ["2025-01-01T09:30:00Z"],
                        "x": [4.0], "y": [1.0], "z": ["-Infinity"]}}),
    );
    assert_eq!(code, 200, "{v}");
    let (_, v) = post(
        "/get-online-features",
        json!({"features": ["m:z"], "entities": {"meter_id": [3]}}),
    );
    assert_eq!(v["results"][0]["features"]["z"], "-Infinity");

    // On-demand rows that cannot be computed: INVALID and null, the others served.
    // (meter, n): x = 0.5 for meter 1 (sqrt of a negative), 2.0 for meter 2.
    let meters = [2i64, 1, 2];
    let n = [1i64, 2, 0];
    let (code, v) = post(
        "/get-online-features",
        json!({"features": ["od:big", "od:q", "od:root"], "entities": {"meter_id": meters},
               "request_context": {"n": n}}),
    );
    assert_eq!(code, 200, "{v}");
    let r = &v["results"];
    let cell = |i: usize, f: &str| (r[i]["features"][f].clone(), r[i]["statuses"][f].clone());
    assert_eq!(cell(0, "big"), (json!(1i64 << 62), json!("PRESENT")));
    assert_eq!(cell(1, "big"), (json!(null), json!("INVALID")));
    assert_eq!(cell(2, "big"), (json!(0), json!("PRESENT")));
    assert_eq!(cell(0, "q"), (json!(100), json!("PRESENT")));
    assert_eq!(cell(2, "q"), (json!(null), json!("INVALID")));
    assert_eq!(cell(0, "root"), (json!(1.0), json!("PRESENT")));
    assert_eq!(cell(1, "root"), (json!(null), json!("INVALID")));

    let (_, metrics) = crate::server::raw(addr, "GET", "/metrics", "");
    assert!(
        metrics.contains("quiver_feature_values_total{feature_view=\"od\",status=\"INVALID\"} 3"),
        "{metrics}"
    );
    rt.block_on(server.stop());

    // The training set at the same time: the same values, null where INVALID, and the
    // count of rows that could not be computed in the columns' metadata.
    let labels = batch(vec![
        ("meter_id", Arc::new(Int64Array::from(meters.to_vec()))),
        ("event_timestamp", ts(vec![t("10:00:00"); 3])),
        ("n", Arc::new(Int64Array::from(n.to_vec()))),
    ]);
    let training = store
        .historical()
        .entities(labels)
        .features(["od:big", "od:q", "od:root", "m:z"])
        .block()
        .unwrap();
    let col = |name: &str| training.column_by_name(name).unwrap().clone();
    let big = col("big");
    let big = big.as_primitive::<Int64Type>();
    assert_eq!(
        big.iter().collect::<Vec<_>>(),
        vec![Some(1 << 62), None, Some(0)]
    );
    let q = col("q");
    assert_eq!(
        q.as_primitive::<Int64Type>().iter().collect::<Vec<_>>(),
        vec![Some(100), Some(50), None]
    );
    let root = col("root");
    let root = root.as_primitive::<Float64Type>();
    assert_eq!((root.value(0), root.is_null(1)), (1.0, true));
    let z = col("z");
    let z = z.as_primitive::<Float64Type>();
    assert_eq!(z.value(1), f64::INFINITY);
    assert!(z.value(0).is_nan());
    let invalid = quiver::historical::invalid_rows(&training);
    let counts: Vec<(&str, u64)> = invalid.iter().map(|(c, n, _)| (c.as_str(), *n)).collect();
    assert_eq!(counts, vec![("big", 1), ("q", 1), ("root", 1)]);
    assert!(invalid[0].2.starts_with("row 1: "), "{invalid:?}");
}
