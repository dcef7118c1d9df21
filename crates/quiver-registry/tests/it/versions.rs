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
