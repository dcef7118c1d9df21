//! Invalid definitions are rejected with the file, object and field named, and a
//! failed apply leaves the registry as it was.

use quiver::testing::Block;
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
    match r.store().apply().block() {
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
    let plan = r.store().apply().block().unwrap();
    assert_eq!(plan.changes.len(), 4, "{plan}");
    let (plan, _) = r.store().plan().block().unwrap();
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
    let e = r.store().apply().block().unwrap_err().to_string();
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
    r.store().apply().block().unwrap();
    let before = std::fs::read(r.file("data/registry/registry.json")).unwrap();
    r.write(
        "features.yaml",
        &GOOD.replace("source: stats", "source: missing"),
    );
    assert!(r.store().apply().block().is_err());
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
    r.store().apply().block().unwrap();
    r.write(
        "features.yaml",
        &GOOD.replace("      - { name: city, dtype: string }\n", ""),
    );
    let (plan, _) = r.store().plan().block().unwrap();
    let text = plan.to_string();
    assert!(
        text.contains("~ feature view 'driver_stats' (features) [version 1 -> 2"),
        "{text}"
    );
    r.store().apply().block().unwrap();
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
    r.store().apply().block().unwrap();
    assert_eq!(
        r.store().state().unwrap().feature_views["driver_stats"].version,
        2
    );
}

#[test]
fn list_and_describe_show_owners_and_usage() {
    let r = repo(GOOD);
    r.store().apply().block().unwrap();
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

/// GOOD plus a request source, an on-demand view over it and `driver_stats`, and a
/// service using the on-demand feature.
fn good_odfv() -> String {
    GOOD.replace(
        "feature_services:\n",
        "feature_services:\n  - name: svc2\n    features: [driver_stats:rate, trip:x]\n",
    ) + "\
request_sources:
  - name: trip_request
    owner: r@example.com
    schema:
      - { name: distance_km, dtype: float64 }
      - { name: passengers, dtype: int64 }
on_demand_feature_views:
  - name: trip
    sources: [request: trip_request, driver_stats]
    owner: o@example.com
    tags: { team: y }
    features:
      - { name: x, dtype: float64, expr: \"rate * distance_km\" }
      - { name: far, dtype: bool, expr: \"distance_km > 10\" }
"
}

/// The 1-based line of the first line of `yaml` that is `line`.
fn line_of(yaml: &str, line: &str) -> usize {
    yaml.lines().position(|l| l == line).unwrap() + 1
}

#[test]
fn on_demand_views_apply_and_are_listed_described_and_planned() {
    let yaml = good_odfv();
    let r = repo(&yaml);
    let plan = r.store().apply().block().unwrap();
    let text = plan.to_string();
    assert!(text.contains("+ request source 'trip_request'"), "{text}");
    assert!(text.contains("+ on-demand feature view 'trip'"), "{text}");
    let (plan, _) = r.store().plan().block().unwrap();
    assert!(plan.is_empty(), "{plan}");

    let state = r.store().state().unwrap();
    let odfv = &state.on_demand_feature_views["trip"];
    assert_eq!(odfv.version, 1);
    // Only what the expressions read: not `city`, not `passengers`.
    assert_eq!(odfv.request_fields, vec!["distance_km"]);
    assert_eq!(
        odfv.dependencies
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>(),
        vec!["driver_stats:rate"]
    );
    assert_eq!(state.services_using("trip", "x"), vec!["svc2"]);
    assert!(state.services_using("trip", "far").is_empty());
    assert_eq!(
        state.feature_services["svc2"].features[1].to_string(),
        "trip:x"
    );
    let refs = state.expand_refs(&["trip:*".to_string()]).unwrap();
    assert_eq!(
        refs.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
        vec!["trip:x", "trip:far"]
    );
    let e = state.expand_refs(&["trip:y".to_string()]).unwrap_err();
    assert_mentions(
        &e.to_string(),
        &["on-demand feature view 'trip' has no feature 'y'"],
    );
    let e = state.expand_refs(&["tri:x".to_string()]).unwrap_err();
    assert_mentions(
        &e.to_string(),
        &["unknown feature view 'tri'", "did you mean 'trip'"],
    );

    // The inputs a data path needs, and a compile against them.
    let inputs = state.on_demand_inputs("trip").unwrap();
    let names: Vec<&str> = inputs
        .schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    assert_eq!(
        names,
        vec![
            "distance_km",
            "passengers",
            "driver_stats__rate",
            "driver_stats__city"
        ]
    );
    assert_eq!(inputs.request_fields[0].name, "distance_km");
    assert_eq!(inputs.request_fields[0].source, "trip_request");
    assert_eq!(inputs.dependencies.len(), 1);
    assert_eq!(inputs.dependencies[0].column, "driver_stats__rate");
    let compiled = inputs.compile().unwrap();
    assert_eq!(
        compiled.input_columns(),
        ["distance_km", "driver_stats__rate"]
    );

    let (ok, out, err) = cli(r.path(), &["list"]);
    assert!(ok, "{err}");
    assert_mentions(
        &out,
        &[
            "REQUEST-SOURCES",
            "distance_km:float64,passengers:int64",
            "ON-DEMAND-FEATURE-VIEWS",
            "request:trip_request,driver_stats",
            "o@example.com",
            "team=y",
        ],
    );
    let (ok, out, err) = cli(r.path(), &["list", "on-demand-feature-views", "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["on-demand-feature-views"]["trip"]["def"]["features"][0]["expr"],
        "rate * distance_km"
    );
    let (ok, out, _) = cli(r.path(), &["describe", "trip", "--json"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["kind"], "on_demand_feature_view");
    assert_eq!(v["sources"][0]["request"], "trip_request");
    assert_eq!(v["sources"][1], "driver_stats");
    assert_eq!(v["features"][0]["used_by"][0], "svc2");
    assert_eq!(v["dependencies"][0], "driver_stats:rate");
    let (ok, out, _) = cli(r.path(), &["describe", "trip_request", "--json"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["kind"], "request_source");
    assert_eq!(v["on_demand_feature_views"][0], "trip");
    assert_eq!(v["schema"][1]["dtype"], "int64");
    let (ok, out, _) = cli(r.path(), &["describe", "driver_stats", "--json"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["on_demand_feature_views"][0], "trip");
    let (ok, _, err) = cli(r.path(), &["describe", "tripp"]);
    assert!(!ok && err.contains("did you mean 'trip'"), "{err}");

    // A new expression is a new version; an owner change is not; removal is planned.
    r.write(
        "features.yaml",
        &yaml.replace("rate * distance_km", "rate * distance_km * 2"),
    );
    let (plan, _) = r.store().plan().block().unwrap();
    assert!(
        plan.to_string()
            .contains("~ on-demand feature view 'trip' (features) [version 1 -> 2"),
        "{plan}"
    );
    r.store().apply().block().unwrap();
    r.write(
        "features.yaml",
        &yaml
            .replace("rate * distance_km", "rate * distance_km * 2")
            .replace("owner: o@", "owner: p@"),
    );
    r.store().apply().block().unwrap();
    assert_eq!(
        r.store().state().unwrap().on_demand_feature_views["trip"].version,
        2
    );
    let without = GOOD.to_string();
    r.write("features.yaml", &without);
    let (plan, _) = r.store().plan().block().unwrap();
    let text = plan.to_string();
    assert!(text.contains("- on-demand feature view 'trip'"), "{text}");
    assert!(text.contains("- request source 'trip_request'"), "{text}");
    assert!(text.contains("- feature service 'svc2'"), "{text}");
}

#[test]
fn on_demand_dangling_sources_are_named_with_file_and_line() {
    let yaml = good_odfv();
    let line = line_of(&yaml, "  - name: trip").to_string();
    let bad = yaml.replace("[request: trip_request,", "[request: trip_reqest,");
    let e = apply_err(&bad);
    assert_mentions(
        &e,
        &[
            &format!("features.yaml:{}", line_of(&bad, "  - name: trip")),
            "on-demand feature view 'trip'",
            "field 'sources[0]'",
            "unknown request source 'trip_reqest'",
            "did you mean 'trip_request'",
        ],
    );
    assert!(e.contains(&format!("features.yaml:{line}")), "{e}");
    let e = apply_err(&yaml.replace("trip_request, driver_stats]", "trip_request, driver_stat]"));
    assert_mentions(
        &e,
        &[
            "field 'sources[1]'",
            "unknown feature view 'driver_stat'",
            "did you mean 'driver_stats'",
        ],
    );
    // A batch source, a request source written as a view, an on-demand view as a source.
    let e = apply_err(&yaml.replace("[request: trip_request,", "[request: stats,"));
    assert_mentions(&e, &["unknown request source 'stats'", "is a batch source"]);
    let e = apply_err(&yaml.replace("[request: trip_request,", "[trip_request,"));
    assert_mentions(
        &e,
        &["'trip_request' is a request source: write { request: trip_request }"],
    );
    let chained = yaml.clone()
        + "  - name: trip2\n    sources: [trip]\n    features:\n      - { name: y, dtype: float64, expr: \"x\" }\n";
    let e = apply_err(&chained);
    assert_mentions(
        &e,
        &[
            "on-demand feature view 'trip2'",
            "sources[0]",
            "'trip' is an on-demand feature view",
        ],
    );
    // Services name on-demand features like any other.
    let e = apply_err(&yaml.replace(
        "[driver_stats:rate, trip:x]",
        "[driver_stats:rate, trip:xx]",
    ));
    assert_mentions(
        &e,
        &[
            "feature service 'svc2'",
            "features[1]",
            "on-demand feature view 'trip' has no feature 'xx'",
            "did you mean 'x'",
        ],
    );
    let e = apply_err(&yaml.replace("[driver_stats:rate, trip:x]", "[driver_stats:rate, trp:x]"));
    assert_mentions(&e, &["unknown feature view 'trp'", "did you mean 'trip'"]);
    let e = apply_err(&yaml.replace(
        "sources: [request: trip_request, driver_stats]",
        "sources: []",
    ));
    assert_mentions(&e, &["field 'sources'", "needs at least one source"]);
}

#[test]
fn on_demand_names_must_not_clash() {
    let yaml = good_odfv();
    // An on-demand view named like a feature view.
    let e = apply_err(&yaml.replace("  - name: trip\n", "  - name: driver_stats\n"));
    assert_mentions(
        &e,
        &[
            "on-demand feature view 'driver_stats'",
            "field 'name'",
            "also a feature view's (features.yaml:10)",
        ],
    );
    // Two on-demand views of one name, in two files.
    let r = repo(&yaml);
    r.write(
        "more.yaml",
        "on_demand_feature_views:\n  - name: trip\n    sources: [driver_stats]\n    features:\n      - { name: z, dtype: float64, expr: \"rate\" }\n",
    );
    let e = r.store().apply().block().unwrap_err().to_string();
    assert_mentions(
        &e,
        &[
            "more.yaml:2",
            "on-demand feature view 'trip'",
            "duplicate name: also defined in features.yaml",
        ],
    );
    // Duplicate features, duplicate request fields, a request source named like a source.
    let e = apply_err(&yaml.replace("{ name: far, dtype: bool", "{ name: x, dtype: bool"));
    assert_mentions(&e, &["features[1].name", "duplicate feature 'x'"]);
    let e = apply_err(&yaml.replace(
        "{ name: passengers, dtype: int64 }",
        "{ name: distance_km, dtype: int64 }",
    ));
    assert_mentions(
        &e,
        &[
            "request source 'trip_request'",
            "schema[1].name",
            "duplicate field 'distance_km'",
        ],
    );
    let e = apply_err(
        &yaml
            .replace("  - name: trip_request\n", "  - name: stats\n")
            .replace("request: trip_request", "request: stats"),
    );
    assert_mentions(&e, &["request source 'stats'", "also a source's"]);
    // A request field named like a feature of a source view is ambiguous in expressions.
    let e = apply_err(&yaml.replace(
        "{ name: passengers, dtype: int64 }",
        "{ name: rate, dtype: float64 }",
    ));
    assert_mentions(
        &e,
        &[
            "on-demand feature view 'trip'",
            "sources[1]",
            "request field 'rate' of request source 'trip_request'",
            "feature 'rate' of feature view 'driver_stats'",
        ],
    );
}

#[test]
fn expression_errors_name_the_feature_and_field() {
    let yaml = good_odfv();
    let at = format!("features.yaml:{}", line_of(&yaml, "  - name: trip"));
    let e = apply_err(&yaml.replace("rate * distance_km", "rate * "));
    assert_mentions(
        &e,
        &[
            &at,
            "on-demand feature view 'trip'",
            "field 'features[0].expr'",
            "syntax error",
        ],
    );
    let e = apply_err(&yaml.replace("rate * distance_km", "rat * distance_km"));
    assert_mentions(
        &e,
        &[
            "field 'features[0].expr'",
            "unknown column 'rat'",
            "did you mean 'rate'",
            "inputs: distance_km, passengers, rate, city",
        ],
    );
    let e = apply_err(&yaml.replace("distance_km > 10", "city > 10 AND city"));
    assert_mentions(&e, &["field 'features[1].expr'"]);
    let e = apply_err(&yaml.replace("rate * distance_km", "rate * city"));
    assert_mentions(&e, &["field 'features[0].expr'", "Float64", "Utf8"]);
    let e = apply_err(&yaml.replace("rate * distance_km", "sqroot(rate)"));
    assert_mentions(&e, &["unknown function 'sqroot'", "did you mean 'sqrt'"]);
    let e = apply_err(&yaml.replace("expr: \"rate * distance_km\"", "expr: \"city\""));
    assert_mentions(
        &e,
        &[
            "field 'features[0].dtype'",
            "type is string",
            "declared float64",
        ],
    );
    // Every broken feature is reported, not just the first.
    let e = apply_err(
        &yaml
            .replace("rate * distance_km", "rat")
            .replace("distance_km > 10", "distance_km >"),
    );
    assert_mentions(
        &e,
        &[
            "features[0].expr",
            "features[1].expr",
            "2 invalid definition(s)",
        ],
    );
}

#[test]
fn bare_feature_names_shared_by_two_source_views_are_ambiguous() {
    let yaml = good_odfv().replace(
        "feature_services:\n",
        "  - name: driver_stats_b\n    entities: [driver]\n    source: stats\n    features: [{ name: rate, dtype: float64 }]\nfeature_services:\n",
    );
    let two = yaml.replace(
        "sources: [request: trip_request, driver_stats]",
        "sources: [request: trip_request, driver_stats, driver_stats_b]",
    );
    let e = apply_err(&two);
    assert_mentions(
        &e,
        &[
            "field 'features[0].expr'",
            "'rate' is ambiguous",
            "driver_stats__rate or driver_stats_b__rate",
        ],
    );
    // Full names resolve it.
    let r = repo(&two.replace("rate * distance_km", "driver_stats_b__rate * distance_km"));
    r.store().apply().block().unwrap();
    let state = r.store().state().unwrap();
    assert_eq!(
        state.on_demand_feature_views["trip"].dependencies[0].to_string(),
        "driver_stats_b:rate"
    );
}
