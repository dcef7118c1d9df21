//! Applying again carries versions, the serial and materialization progress forward;
//! a change that alters stored or computed values bumps the version of what it changes.

use std::path::Path;

use quiver_registry::RegistryState;

use crate::common::{load_and_resolve, write_fixture_data};

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
    owner: a@example.com
    features:
      - { name: rate, dtype: float64 }
      - { name: city, dtype: string }
request_sources:
  - name: trip_request
    schema: [{ name: distance_km, dtype: float64 }]
on_demand_feature_views:
  - name: trip
    sources: [request: trip_request, driver_stats]
    features:
      - { name: x, dtype: float64, expr: \"rate * distance_km\" }
feature_services:
  - name: ranking
    features: [driver_stats:rate, trip:x]
";

fn resolve_with(repo: &Path, defs: &str, previous: Option<&RegistryState>) -> RegistryState {
    std::fs::write(repo.join("features.yaml"), defs).unwrap();
    load_and_resolve(repo, previous).unwrap()
}

/// (serial, view version, on-demand view version, service version).
fn versions(s: &RegistryState) -> (u64, u32, u32, u32) {
    (
        s.serial,
        s.feature_views["driver_stats"].version,
        s.on_demand_feature_views["trip"].version,
        s.feature_services["ranking"].version,
    )
}

#[test]
fn versions_and_progress_carry_forward_until_values_change() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path();
    write_fixture_data(repo);
    std::fs::write(repo.join("quiver.yaml"), "project: p\n").unwrap();

    let mut first = resolve_with(repo, DEFS, None);
    assert_eq!(versions(&first), (1, 1, 1, 1));
    first
        .feature_views
        .get_mut("driver_stats")
        .unwrap()
        .ingested_until = Some(42);
    first.applied_at -= 1;

    // Nothing changed: same serial, same apply time, progress kept.
    let same = resolve_with(repo, DEFS, Some(&first));
    assert_eq!(versions(&same), (1, 1, 1, 1));
    assert_eq!(same.applied_at, first.applied_at);
    assert_eq!(same.feature_views["driver_stats"].ingested_until, Some(42));

    // Metadata only: a new serial, the same data versions, progress kept.
    let owner = resolve_with(repo, &DEFS.replace("owner: a@", "owner: b@"), Some(&first));
    assert_eq!(versions(&owner), (2, 1, 1, 1));
    assert_eq!(owner.feature_views["driver_stats"].ingested_until, Some(42));

    // A feature fewer: a new data version of the view, progress reset.
    let fewer = resolve_with(
        repo,
        &DEFS.replace("      - { name: city, dtype: string }\n", ""),
        Some(&first),
    );
    assert_eq!(versions(&fewer), (2, 2, 1, 1));
    assert_eq!(fewer.feature_views["driver_stats"].ingested_until, None);
    // ... while version 1, which has offline data, keeps training.
    assert_eq!(fewer.training_view("driver_stats").unwrap().version, 1);
    assert_eq!(
        fewer.training_view("driver_stats").unwrap().features.len(),
        2
    );

    // A feature appended: the same data version, progress kept.
    let more = resolve_with(
        repo,
        &DEFS.replace(
            "      - { name: city, dtype: string }\n",
            "      - { name: city, dtype: string }\n      - { name: trips, dtype: int64 }\n",
        ),
        Some(&first),
    );
    assert_eq!(versions(&more), (2, 1, 1, 1));
    assert_eq!(more.feature_views["driver_stats"].ingested_until, Some(42));
    assert!(more.feature_views["driver_stats"].earlier.is_empty());

    // A new expression: a new version of the on-demand view only.
    let expr = resolve_with(
        repo,
        &DEFS.replace("rate * distance_km", "rate * 2"),
        Some(&first),
    );
    assert_eq!(versions(&expr), (2, 1, 2, 1));
    assert!(expr.on_demand_feature_views["trip"]
        .request_fields
        .is_empty());

    // Other features served: a new version of the service only.
    let served = resolve_with(
        repo,
        &DEFS.replace("[driver_stats:rate, trip:x]", "[driver_stats:*, trip:x]"),
        Some(&first),
    );
    assert_eq!(versions(&served), (2, 1, 1, 2));
    assert_eq!(served.feature_services["ranking"].features.len(), 3);
}

#[test]
fn earlier_versions_train_and_serve_until_the_new_one_has_data() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path();
    write_fixture_data(repo);
    std::fs::write(repo.join("quiver.yaml"), "project: p\n").unwrap();
    let reorder = |d: &str| {
        d.replace(
            "      - { name: rate, dtype: float64 }\n      - { name: city, dtype: string }\n",
            "      - { name: city, dtype: string }\n      - { name: rate, dtype: float64 }\n",
        )
    };

    // Never ingested: training is an error naming the command; serving reads the
    // declared version (MISSING everywhere).
    let mut v1 = resolve_with(repo, DEFS, None);
    let err = v1.training_view("driver_stats").unwrap_err().to_string();
    assert!(err.contains("quiver ingest driver_stats"), "{err}");
    assert_eq!(v1.serving_view("driver_stats").unwrap().version, 1);

    // Version 1 ingested and materialized; a reorder makes version 2, which has none.
    let rec = v1.feature_views.get_mut("driver_stats").unwrap();
    rec.ingested_until = Some(42);
    rec.materialized = Some(quiver_registry::state::MaterializationState {
        start: 0,
        end: 50,
        at: 60,
        rows_written: 1,
        table_version: Some(0),
        tile_layout: None,
    });
    let mut v2 = resolve_with(repo, &reorder(DEFS), Some(&v1));
    assert_eq!(v2.feature_views["driver_stats"].version, 2);
    assert_eq!(v2.training_view("driver_stats").unwrap().version, 1);
    assert_eq!(v2.serving_view("driver_stats").unwrap().version, 1);
    assert_eq!(v2.resolved_view("driver_stats").unwrap().version, 2);

    // Another change before version 2 got data: version 3, version 1 still serving,
    // version 2 (which never had data) forgotten.
    let mut v3 = resolve_with(
        repo,
        &reorder(DEFS).replace("      - { name: city, dtype: string }\n", ""),
        Some(&v2),
    );
    let rec = &v3.feature_views["driver_stats"];
    assert_eq!(rec.version, 3);
    assert_eq!(
        rec.earlier.iter().map(|e| e.version).collect::<Vec<_>>(),
        vec![1]
    );

    // Ingested: version 3 trains, version 1 still serves until materialized.
    v3.feature_views
        .get_mut("driver_stats")
        .unwrap()
        .ingested_until = Some(43);
    v3.prune_versions();
    assert_eq!(v3.training_view("driver_stats").unwrap().version, 3);
    assert_eq!(v3.serving_view("driver_stats").unwrap().version, 1);
    v3.feature_views
        .get_mut("driver_stats")
        .unwrap()
        .pushed_online = true;
    v3.prune_versions();
    assert_eq!(v3.serving_view("driver_stats").unwrap().version, 3);
    assert!(v3.feature_views["driver_stats"].earlier.is_empty());

    // The plan says how to fill the new version and which one serves meanwhile.
    v2.applied_at -= 1;
    let plan = quiver_registry::Plan::diff(Some(&v1), &v2).to_string();
    assert!(
        plan.contains(
            "to fill it: quiver ingest driver_stats && quiver materialize-incremental --views \
             driver_stats (version 1 trains and serves until then)"
        ),
        "{plan}"
    );
}
