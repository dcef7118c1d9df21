//! Invalid definitions are rejected with the file, object and field named, and a
//! failed apply leaves the registry as it was.

use std::sync::Arc;

use arrow::array::{Float64Array, Int64Array, StringArray};

use crate::common::{cli, ts, Repo};

const GOOD: &str = "\
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
    ttl: 1d
    owner: a@example.com
    tags: { team: x }
    features:
      - { name: rate, dtype: float64 }
      - { name: city, dtype: string }
feature_services:
  - name: svc
    features: [driver_stats:rate]
";

fn repo(yaml: &str) -> Repo {
    let r = Repo::new(yaml);
    r.parquet(
        "data/stats.parquet",
        vec![
            ("driver_id", Arc::new(Int64Array::from(vec![1, 2]))),
            ("ts", ts(vec![1_000_000, 2_000_000])),
            ("rate", Arc::new(Float64Array::from(vec![0.5, 0.7]))),
            ("city", Arc::new(StringArray::from(vec!["a", "b"]))),
        ],
    );
    r
}

/// Applies `yaml` and returns the error text.
fn apply_err(yaml: &str) -> String {
    let r = repo(yaml);
    match r.store().apply() {
        Ok(_) => panic!("apply accepted an invalid definition:\n{yaml}"),
        Err(e) => e.to_string(),
    }
}

fn assert_mentions(err: &str, parts: &[&str]) {
    for p in parts {
        assert!(err.contains(p), "error does not mention {p:?}:\n{err}");
    }
}

#[test]
fn good_definitions_apply_and_plan_is_then_empty() {
    let r = repo(GOOD);
    let plan = r.store().apply().unwrap();
    assert_eq!(plan.changes.len(), 4, "{plan}");
    let (plan, _) = r.store().plan().unwrap();
    assert!(plan.is_empty(), "{plan}");
    let state = r.store().state().unwrap();
    assert_eq!(
        state.feature_views["driver_stats"].join_keys[0]
            .dtype
            .to_string(),
        "int64"
    );
    assert_eq!(state.services_using("driver_stats", "rate"), vec!["svc"]);
    assert!(state.services_using("driver_stats", "city").is_empty());
}

#[test]
fn unknown_field_names_file_and_line() {
    let e = apply_err(&GOOD.replace("    ttl: 1d\n", "    ttl: 1d\n    tll: 2d\n"));
    assert_mentions(&e, &["features.yaml:", "tll"]);
}

#[test]
fn dangling_references_are_named() {
    let e = apply_err(&GOOD.replace("source: stats", "source: stat"));
    assert_mentions(
        &e,
        &[
            "features.yaml",
            "feature view 'driver_stats'",
            "field 'source'",
            "unknown source 'stat'",
            "did you mean 'stats'",
        ],
    );
    let e = apply_err(&GOOD.replace("entities: [driver]", "entities: [drivr]"));
    assert_mentions(
        &e,
        &[
            "feature view 'driver_stats'",
            "entities[0]",
            "unknown entity 'drivr'",
        ],
    );
    let e = apply_err(&GOOD.replace("[driver_stats:rate]", "[driver_stats:rat]"));
    assert_mentions(
        &e,
        &["feature service 'svc'", "features[0]", "no feature 'rat'"],
    );
    let e = apply_err(&GOOD.replace("[driver_stats:rate]", "[nope:rate]"));
    assert_mentions(&e, &["unknown feature view 'nope'"]);
}

#[test]
fn duplicates_are_rejected() {
    let dup_view = GOOD.replace(
        "feature_services:",
        "  - name: driver_stats\n    entities: [driver]\n    source: stats\n    features: [{ name: rate, dtype: float64 }]\nfeature_services:",
    );
    let e = apply_err(&dup_view);
    assert_mentions(&e, &["feature view 'driver_stats'", "duplicate name"]);
    let e = apply_err(&GOOD.replace(
        "- { name: city, dtype: string }",
        "- { name: rate, dtype: float64 }",
    ));
    assert_mentions(&e, &["features[1].name", "duplicate feature 'rate'"]);
}

#[test]
fn duplicates_across_files_name_both_files() {
    let r = repo(GOOD);
    r.write(
        "more.yaml",
        "entities:\n  - name: driver\n    join_keys: [driver_id]\n",
    );
    let e = r.store().apply().unwrap_err().to_string();
    assert_mentions(
        &e,
        &[
            "more.yaml:2",
            "entity 'driver'",
            "also defined in features.yaml:2",
        ],
    );
}

#[test]
fn type_mismatches_with_the_source_are_rejected() {
    let e = apply_err(&GOOD.replace(
        "{ name: city, dtype: string }",
        "{ name: city, dtype: int64 }",
    ));
    assert_mentions(
        &e,
        &[
            "features[1].dtype",
            "declared int64",
            "column 'city'",
            "is string",
        ],
    );
    let e = apply_err(&GOOD.replace(
        "{ name: rate, dtype: float64 }",
        "{ name: rate, dtype: float32 }",
    ));
    assert_mentions(&e, &["features[0].dtype", "declared float32"]);
    let e = apply_err(&GOOD.replace(
        "{ name: rate, dtype: float64 }",
        "{ name: speed, dtype: float64 }",
    ));
    assert_mentions(&e, &["column 'speed' is not in source 'stats'"]);
    let e = apply_err(&GOOD.replace("timestamp_field: ts", "timestamp_field: time"));
    assert_mentions(&e, &["source 'stats'", "timestamp_field", "column 'time'"]);
    let e = apply_err(&GOOD.replace(
        "join_keys: [driver_id]",
        "join_keys: [{ name: driver_id, dtype: string }]",
    ));
    assert_mentions(
        &e,
        &["join key 'driver_id' is int64 in source 'stats' but string in entity 'driver'"],
    );
    let e = apply_err(&GOOD.replace("dtype: float64 }", "dtype: float65 }"));
    assert_mentions(&e, &["features.yaml", "unknown dtype \"float65\""]);
    let e = apply_err(&GOOD.replace("ttl: 1d", "ttl: 1 day"));
    assert_mentions(&e, &["invalid duration"]);
}

#[test]
fn missing_source_file_is_named() {
    let e = apply_err(&GOOD.replace("data/stats.parquet", "data/nothing.parquet"));
    assert_mentions(&e, &["source 'stats'", "field 'path'", "nothing.parquet"]);
}

#[test]
fn failed_apply_leaves_the_registry_intact() {
    let r = repo(GOOD);
    r.store().apply().unwrap();
    let before = std::fs::read(r.file("data/registry/registry.json")).unwrap();
    r.write(
        "features.yaml",
        &GOOD.replace("source: stats", "source: missing"),
    );
    assert!(r.store().apply().is_err());
    let after = std::fs::read(r.file("data/registry/registry.json")).unwrap();
    assert_eq!(before, after);
    // The CLI reports the same error and exits non-zero.
    let (ok, _, err) = cli(r.path(), &["apply"]);
    assert!(!ok);
    assert!(err.contains("unknown source 'missing'"), "{err}");
}

#[test]
fn changing_features_bumps_the_view_version_and_plan_says_so() {
    let r = repo(GOOD);
    r.store().apply().unwrap();
    r.write(
        "features.yaml",
        &GOOD.replace("      - { name: city, dtype: string }\n", ""),
    );
    let (plan, _) = r.store().plan().unwrap();
    let text = plan.to_string();
    assert!(
        text.contains("~ feature view 'driver_stats' (features) [version 1 -> 2"),
        "{text}"
    );
    r.store().apply().unwrap();
    assert_eq!(
        r.store().state().unwrap().feature_views["driver_stats"].version,
        2
    );
    // Metadata-only changes keep the version.
    r.write(
        "features.yaml",
        &GOOD
            .replace("      - { name: city, dtype: string }\n", "")
            .replace("owner: a@", "owner: b@"),
    );
    r.store().apply().unwrap();
    assert_eq!(
        r.store().state().unwrap().feature_views["driver_stats"].version,
        2
    );
}

#[test]
fn list_and_describe_show_owners_and_usage() {
    let r = repo(GOOD);
    r.store().apply().unwrap();
    let (ok, out, err) = cli(r.path(), &["list"]);
    assert!(ok, "{err}");
    assert_mentions(
        &out,
        &["driver_stats", "a@example.com", "team=x", "1d", "svc"],
    );
    let (ok, out, _) = cli(r.path(), &["describe", "driver_stats", "--json"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["features"][0]["used_by"][0], "svc");
    assert_eq!(v["ttl"], "1d");
    let (ok, _, err) = cli(r.path(), &["describe", "driver_stat"]);
    assert!(!ok);
    assert!(err.contains("did you mean 'driver_stats'"), "{err}");
}
