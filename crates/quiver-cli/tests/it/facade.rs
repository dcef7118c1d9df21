//! The library facade keeps what its calls need: one opened `FeatureStore` serves many
//! reads over one online-store connection set and one compiled plan, and notices a new
//! `apply` without being reopened.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Float64Array, Int64Array};
use quiver::testing::Block;
use quiver::{FeatureStatus, Value};

use crate::common::{ts, Repo};

const DEFS: &str = r#"
entities:
  - name: driver
    join_keys: [driver_id]
sources:
  - name: drivers_src
    type: file
    path: data/drivers.parquet
    timestamp_field: ts
feature_views:
  - name: stats
    entities: [driver]
    source: drivers_src
    ttl: 0
    features:
      - { name: conv_rate, dtype: float64 }
feature_services:
  - name: svc
    features: [stats:conv_rate]
"#;

/// A repository of 100 drivers with one row each, online store given.
fn repo(online_store: &str) -> Repo {
    let r = Repo::new(DEFS);
    r.write(
        "quiver.yaml",
        &format!(
            "project: facade{}\nregistry: data/registry\n\
             offline_store: {{ type: delta, path: data/offline }}\nonline_store: {online_store}\n",
            std::process::id()
        ),
    );
    r.parquet(
        "data/drivers.parquet",
        vec![
            ("driver_id", Arc::new(Int64Array::from_iter_values(0..100))),
            ("ts", ts(vec![1_000_000; 100])),
            (
                "conv_rate",
                Arc::new(Float64Array::from_iter_values(
                    (0..100).map(|i| i as f64 / 100.0),
                )),
            ),
        ],
    );
    r
}

fn info_field(conn: &mut redis::Connection, section: &str, field: &str) -> u64 {
    let info: String = redis::cmd("INFO").arg(section).query(conn).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("INFO {section} has no {field}: {info}"))
        .trim()
        .parse()
        .unwrap()
}

fn row(id: i64) -> BTreeMap<String, Value> {
    BTreeMap::from([("driver_id".to_string(), Value::Int64(id))])
}

#[test]
fn ten_thousand_reads_share_one_redis_connection_set() {
    let redis = quiver_redis::testing::standalone();
    let r = repo(&format!("{{ type: redis, url: \"{}\" }}", redis.url()));
    let store = r.store();
    store.apply().block().unwrap();
    store.ingest().block().unwrap();
    store.materialize(0, 10_000_000).block().unwrap();

    let mut admin = quiver_redis::testing::connect(&redis.url());
    // Warm: the store's connection exists from the materialization.
    let first = store
        .online_features()
        .service("svc")
        .entity_row(row(7))
        .block();
    assert_eq!(first.unwrap().rows[0].values[0], Value::Float64(0.07));
    let received = info_field(&mut admin, "stats", "total_connections_received");
    let clients = info_field(&mut admin, "clients", "connected_clients");

    let reads = quiver::testing::runtime().block_on(async {
        let mut present = 0;
        for i in 0..10_000i64 {
            let out = store
                .online_features()
                .service("svc")
                .entity_row(row(i % 100))
                .await
                .unwrap();
            if out.rows[0].statuses[0] == FeatureStatus::Present {
                present += 1;
            }
        }
        present
    });
    assert_eq!(reads, 10_000, "every read found its row");
    assert_eq!(
        info_field(&mut admin, "stats", "total_connections_received"),
        received,
        "10,000 reads opened no new connection"
    );
    assert_eq!(
        info_field(&mut admin, "clients", "connected_clients"),
        clients,
        "the store holds the same connections after 10,000 reads"
    );
}

#[test]
fn an_opened_store_notices_a_new_apply() {
    let r = repo("{ type: embedded, path: data/online }");
    let store = r.store();
    store.apply().block().unwrap();
    store.ingest().block().unwrap();
    store.materialize(0, 10_000_000).block().unwrap();
    let read = |s: &quiver::FeatureStore, service: &str| {
        s.online_features()
            .service(service)
            .entity_row(row(3))
            .block()
    };
    assert!(read(&store, "svc").is_ok());
    assert!(read(&store, "svc2").is_err(), "no such service yet");

    // Another process (here: another opened store) applies a new service.
    r.write(
        "features.yaml",
        &format!("{DEFS}  - name: svc2\n    features: [stats:conv_rate]\n"),
    );
    quiver::FeatureStore::open(r.path())
        .unwrap()
        .apply()
        .block()
        .unwrap();
    std::thread::sleep(quiver::store::REGISTRY_RECHECK * 2);
    let out = read(&store, "svc2").expect("the new service is served");
    assert_eq!(out.rows[0].values[0], Value::Float64(0.03));
}

/// `online_store:` is parsed by the backend's own crate when the store opens: its
/// errors name quiver.yaml, the backend and the field.
#[test]
fn online_store_sections_are_parsed_by_their_backend() {
    let open = |section: &str| {
        let r = repo(section);
        quiver::FeatureStore::open(r.path()).map(|_| ())
    };
    assert!(open("{ type: embedded, path: data/online }").is_ok());
    assert!(open("{ type: redis, cluster: [redis://127.0.0.1:7000], key_ttl: 0 }").is_ok());
    for (section, want) in [
        ("{ type: redis }", "needs `url`"),
        (
            "{ type: redis, url: 127.0.0.1:6379 }",
            "not a valid Redis URL",
        ),
        (
            "{ type: redis, url: redis://a:6379, key_ttl: forever }",
            "forever",
        ),
        ("{ type: redis, url: redis://a:6379, path: x }", "path"),
        ("{ type: embedded, path: x, size: 5 }", "size"),
        ("{ type: memcache, path: x }", "unknown type 'memcache'"),
    ] {
        let e = open(section).unwrap_err().to_string();
        assert!(
            e.contains("quiver.yaml") && e.contains(want),
            "{section}: {e}"
        );
    }
}
