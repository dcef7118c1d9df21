//! The feature server end to end over HTTP and gRPC: reads by service and by feature
//! list, statuses under an injected clock, push, registry reload, and every kind of bad
//! request answered with a JSON error while the server keeps serving.

use quiver::testing::Block;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;

use arrow::array::{Array, Float64Array, Int64Array, StringArray};
use quiver_core::time::{parse_timestamp, ManualClock};
use quiver_server::api::pb;
use quiver_server::{ConnectionLimits, ServeOptions, Server};
use serde_json::{json, Value as Json};

use quiver::testing::{ts, Repo};

const DEFS: &str = r#"
entities:
  - name: driver
    join_keys: [driver_id]
  - name: customer
    join_keys: [customer_id]
sources:
  - name: drivers_src
    type: file
    path: data/drivers.parquet
    timestamp_field: ts
  - name: customers_src
    type: file
    path: data/customers.parquet
    timestamp_field: ts
feature_views:
  - name: driver_stats
    entities: [driver]
    source: drivers_src
    ttl: 1h
    features:
      - { name: conv_rate, dtype: float64 }
      - { name: trips, dtype: int64 }
  - name: customer_profile
    entities: [customer]
    source: customers_src
    ttl: 0
    features:
      - { name: tier, dtype: string }
feature_services:
  - name: ranking
    features: [driver_stats:conv_rate, driver_stats:trips, customer_profile:tier]
"#;

/// A time on the day of the rows.
fn t(hms: &str) -> i64 {
    parse_timestamp(&format!("2025-01-01T{hms}Z")).unwrap()
}

/// The online store a fixture serves from.
#[derive(Clone, Copy, Debug)]
enum Backend {
    Embedded,
    Redis,
    RedisCluster,
}

/// A Redis server or cluster kept alive (until dropped) for a fixture.
#[allow(dead_code)] // held for its Drop
enum RedisGuard {
    Standalone(quiver_redis::testing::Standalone),
    Cluster(quiver_redis::testing::Cluster),
}

struct Fixture {
    _redis: Option<RedisGuard>,
    repo: Repo,
    rt: tokio::runtime::Runtime,
    server: Option<Server>,
    clock: Arc<ManualClock>,
}

impl Fixture {
    fn new(backend: Backend) -> Self {
        Self::with_limits(backend, ConnectionLimits::default())
    }

    /// A fixture whose HTTP listener has the given timeouts and connection limit.
    fn with_limits(backend: Backend, limits: ConnectionLimits) -> Self {
        let repo = Repo::new(DEFS);
        let redis = match backend {
            Backend::Embedded => None,
            Backend::Redis | Backend::RedisCluster => {
                // A project of its own, so a shared server (QUIVER_REDIS_URL) is fine.
                static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                let project = format!(
                    "t{}_{}_{}",
                    std::process::id(),
                    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                    quiver_core::time::now()
                );
                let (store, guard) = if matches!(backend, Backend::Redis) {
                    let r = quiver_redis::testing::standalone();
                    (
                        format!("{{ type: redis, url: \"{}\" }}", r.url()),
                        RedisGuard::Standalone(r),
                    )
                } else {
                    let c = quiver_redis::testing::cluster();
                    let nodes: Vec<String> = c.nodes().iter().map(|n| format!("\"{n}\"")).collect();
                    (
                        format!("{{ type: redis, cluster: [{}] }}", nodes.join(", ")),
                        RedisGuard::Cluster(c),
                    )
                };
                repo.write(
                    "quiver.yaml",
                    &format!(
                        "project: {project}\nregistry: data/registry\n\
                         offline_store: {{ type: delta, path: data/offline }}\n\
                         online_store: {store}\n"
                    ),
                );
                Some(guard)
            }
        };
        prepare(&repo, "12:00:00");
        let clock = Arc::new(ManualClock::new(t("10:30:00")));
        let rt = runtime();
        let options = ServeOptions {
            http: "127.0.0.1:0".parse().unwrap(),
            grpc: Some("127.0.0.1:0".parse().unwrap()),
            max_entity_rows: 100,
            reload_interval: std::time::Duration::from_millis(50),
            limits,
            ..Default::default()
        };
        let c: Arc<dyn quiver_core::time::Clock> = clock.clone();
        let server = rt
            .block_on(Server::start(repo.store(), options, Some(c)))
            .unwrap();
        Fixture {
            _redis: redis,
            repo,
            rt,
            server: Some(server),
            clock,
        }
    }

    fn http(&self) -> SocketAddr {
        self.server.as_ref().unwrap().http_addr
    }

    /// Asserts that a plain read of driver 1's trips is answered (with 4).
    fn assert_serves(&self) {
        let (code, v) = self.post(
            "/get-online-features",
            &json!({"features": ["driver_stats:trips"], "entities": {"driver_id": [1]}})
                .to_string(),
        );
        assert_eq!(
            (code, &v["results"][0]["features"]["trips"]),
            (200, &json!(4))
        );
    }

    fn post(&self, path: &str, body: &str) -> (u16, Json) {
        http(self.http(), "POST", path, body)
    }

    fn get(&self, path: &str) -> (u16, String) {
        let (code, body) = raw(self.http(), "GET", path, "");
        (code, body)
    }

    fn grpc(&self) -> pb::feature_serving_client::FeatureServingClient<tonic::transport::Channel> {
        let addr = self.server.as_ref().unwrap().grpc_addr.unwrap();
        self.rt
            .block_on(pb::feature_serving_client::FeatureServingClient::connect(
                format!("http://{addr}"),
            ))
            .unwrap()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            self.rt.block_on(s.stop());
        }
    }
}

/// Applies the fixture's definitions to `repo`, ingests its sources and materializes
/// them up to `until`.
fn prepare(repo: &Repo, until: &str) {
    sample_data(repo);
    let store = repo.store();
    store.apply().block().unwrap();
    store.ingest().block().unwrap();
    store.materialize(t("00:00:00"), t(until)).block().unwrap();
}

/// The runtime a test serves from.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The fixture's sources. Driver 1: rows at 09:00 and 10:00; driver 2: a row at 08:00;
/// driver 3: none.
fn sample_data(repo: &Repo) {
    repo.parquet(
        "data/drivers.parquet",
        vec![
            ("driver_id", Arc::new(Int64Array::from(vec![1, 1, 2]))),
            ("ts", ts(vec![t("09:00:00"), t("10:00:00"), t("08:00:00")])),
            (
                "conv_rate",
                Arc::new(Float64Array::from(vec![Some(0.1), Some(0.25), None])),
            ),
            ("trips", Arc::new(Int64Array::from(vec![3, 4, 7]))),
        ],
    );
    repo.parquet(
        "data/customers.parquet",
        vec![
            ("customer_id", Arc::new(StringArray::from(vec!["c1", "c2"]))),
            ("ts", ts(vec![t("01:00:00"), t("02:00:00")])),
            ("tier", Arc::new(StringArray::from(vec!["gold", "silver"]))),
        ],
    );
}

/// One HTTP/1.1 request on a fresh connection; returns the status and the body.
pub(crate) fn raw(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    quiver_server::fuzz::exchange(addr, request.as_bytes(), false)
        .unwrap_or_else(|| panic!("no answer to {method} {path}"))
}

fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, Json) {
    let (code, body) = raw(addr, method, path, body);
    let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    (code, v)
}

fn http_reads_a_service_with_statuses_in_request_order(backend: Backend) {
    let f = Fixture::new(backend);
    let (code, v) = f.post(
        "/get-online-features",
        &json!({"feature_service": "ranking",
                "entities": {"driver_id": [2, 1, 3], "customer_id": ["c2", "c1", "zz"]}})
        .to_string(),
    );
    assert_eq!(code, 200, "{v}");
    let r = &v["results"];
    assert_eq!(r.as_array().unwrap().len(), 3);
    // Request order is kept; driver 1's newest row (10:00) wins.
    assert_eq!(r[1]["entities"]["driver_id"], 1);
    assert_eq!(r[1]["features"]["conv_rate"], 0.25);
    assert_eq!(r[1]["features"]["trips"], 4);
    assert_eq!(r[1]["features"]["tier"], "gold");
    assert_eq!(r[1]["statuses"]["conv_rate"], "PRESENT");
    // Driver 2's row is 2.5 h old with a 1 h ttl: no value, OUTSIDE_TTL; ttl 0 never expires.
    assert!(r[0]["features"]["conv_rate"].is_null());
    assert_eq!(r[0]["statuses"]["trips"], "OUTSIDE_TTL");
    assert_eq!(r[0]["features"]["tier"], "silver");
    // Unknown entities: null, MISSING — never zero.
    assert!(r[2]["features"]["trips"].is_null());
    assert_eq!(r[2]["statuses"]["trips"], "MISSING");
    assert_eq!(r[2]["statuses"]["tier"], "MISSING");
    let m = &v["metadata"];
    assert_eq!(m["feature_service"], "ranking");
    assert_eq!(m["feature_service_version"], 1);
    assert_eq!(m["feature_names"], json!(["conv_rate", "trips", "tier"]));
    assert!(m["latency_ms"].as_f64().unwrap() >= 0.0);

    // The injected clock moves: at 11:00:01 driver 1's 10:00 row is outside its 1 h ttl.
    f.clock.set(t("11:00:01"));
    let (_, v) = f.post(
        "/get-online-features",
        &json!({"features": ["driver_stats:conv_rate"], "entities": {"driver_id": [1]},
                "full_feature_names": true})
        .to_string(),
    );
    assert_eq!(
        v["results"][0]["statuses"]["driver_stats__conv_rate"],
        "OUTSIDE_TTL"
    );
    f.clock.set(t("11:00:00"));
    let (_, v) = f.post(
        "/get-online-features",
        &json!({"features": ["driver_stats:conv_rate"], "entities": {"driver_id": [1]}})
            .to_string(),
    );
    assert_eq!(
        v["results"][0]["statuses"]["conv_rate"], "PRESENT",
        "exactly ttl old is kept"
    );

    let (code, health) = f.post("/health", "");
    assert_eq!((code, &health["code"]), (405, &json!("METHOD_NOT_ALLOWED")));
    let (code, body) = f.get("/health");
    assert_eq!(code, 200);
    let health: Json = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "ok");
    let expected = match backend {
        Backend::Embedded => "embedded",
        Backend::Redis => "redis",
        Backend::RedisCluster => "redis-cluster",
    };
    assert_eq!(health["online_store"], expected);

    let (code, metrics) = f.get("/metrics");
    assert_eq!(code, 200);
    assert!(
        metrics.contains(
            "quiver_feature_values_total{feature_view=\"driver_stats\",status=\"OUTSIDE_TTL\"}"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("quiver_request_duration_seconds_bucket"),
        "{metrics}"
    );

    let (code, body) = f.get("/registry/feature-services");
    assert_eq!(code, 200);
    assert!(body.contains("ranking"), "{body}");
    let (code, body) = f.get("/registry/feature-views/driver_stats");
    assert_eq!(code, 200);
    assert!(body.contains("conv_rate"), "{body}");
    let (code, _) = f.get("/registry/feature-views/nope");
    assert_eq!(code, 404);
}

fn grpc_answers_like_http(backend: Backend) {
    let f = Fixture::new(backend);
    let body = json!({"feature_service": "ranking",
                      "entities": {"driver_id": [1, 2, 3], "customer_id": ["c1", "c2", "c3"]}});
    let (_, http_resp) = f.post("/get-online-features", &body.to_string());
    let req: pb::GetOnlineFeaturesRequest = serde_json::from_value(body).unwrap();
    let mut client = f.grpc();
    let resp =
        f.rt.block_on(client.get_online_features(req))
            .unwrap()
            .into_inner();
    let grpc_json = serde_json::to_value(&resp).unwrap();
    assert_eq!(grpc_json["results"], http_resp["results"]);
    assert_eq!(
        grpc_json["metadata"]["feature_names"],
        http_resp["metadata"]["feature_names"]
    );
    assert_eq!(
        resp.results[0].statuses["conv_rate"],
        pb::FeatureStatus::Present as i32
    );

    let bad = pb::GetOnlineFeaturesRequest {
        feature_service: Some("rankin".into()),
        ..Default::default()
    };
    let e = f.rt.block_on(client.get_online_features(bad)).unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    assert!(
        e.message().contains("ranking"),
        "did-you-mean: {}",
        e.message()
    );
    let health =
        f.rt.block_on(client.health(pb::HealthRequest {}))
            .unwrap()
            .into_inner();
    assert_eq!(health.status, "ok");

    // Push over gRPC, then read the row back over gRPC.
    let push: pb::PushRequest = serde_json::from_value(json!({
        "feature_view": "driver_stats",
        "data": {"driver_id": [3], "ts": ["2025-01-01T10:05:00Z"], "conv_rate": [0.75], "trips": [8]}
    }))
    .unwrap();
    let pushed = f.rt.block_on(client.push(push)).unwrap().into_inner();
    assert_eq!((pushed.rows, pushed.written_online), (1, 1));
    let read: pb::GetOnlineFeaturesRequest = serde_json::from_value(json!({
        "features": ["driver_stats:trips"], "entities": {"driver_id": [3]}
    }))
    .unwrap();
    let resp =
        f.rt.block_on(client.get_online_features(read))
            .unwrap()
            .into_inner();
    assert_eq!(
        quiver_server::api::to_value(&resp.results[0].features["trips"]),
        quiver::Value::Int64(8)
    );
    let bad: pb::PushRequest = serde_json::from_value(json!({
        "feature_view": "driver_stats", "data": {"driver_id": ["x"]}
    }))
    .unwrap();
    let e = f.rt.block_on(client.push(bad)).unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
}

fn bad_requests_get_json_errors_and_the_server_keeps_serving(backend: Backend) {
    let f = Fixture::new(backend);
    let cases: Vec<(String, u16, &str)> = vec![
        ("{not json".into(), 400, "malformed"),
        (json!({"feature_service": "nope", "entities": {"driver_id": [1]}}).to_string(), 404, "nope"),
        (json!({"features": ["driver_stats:nope"], "entities": {"driver_id": [1]}}).to_string(), 404, "nope"),
        (json!({"features": ["driver_stats"], "entities": {"driver_id": [1]}}).to_string(), 404, "view:feature"),
        (json!({"feature_service": "ranking", "features": ["driver_stats:trips"], "entities": {"driver_id": [1]}}).to_string(), 400, "not both"),
        (json!({"features": ["driver_stats:trips"], "entities": {"driver_id": ["one"]}}).to_string(), 400, "driver_id"),
        (json!({"features": ["driver_stats:trips"], "entities": {"driver_id": [1.5]}}).to_string(), 400, "int64"),
        (json!({"features": ["driver_stats:trips"], "entities": {"driver_id": [1001.0]}}).to_string(), 400, "the floating-point number 1001.0 (send integer keys without a decimal point: 1001)"),
        (json!({"feature_service": "ranking", "entities": {"driver_id": [1, 2], "customer_id": ["c1"]}}).to_string(), 400, "customer_id"),
        (json!({"feature_service": "ranking", "entities": {"driver_id": [1]}}).to_string(), 400, "customer_id"),
        (json!({"features": ["driver_stats:trips"], "entities": {"driver_id": [1], "rider": [2]}}).to_string(), 400, "rider"),
        (json!({"features": ["driver_stats:trips"], "entities": {}}).to_string(), 400, "driver_id"),
        (json!({"features": ["driver_stats:trips"], "entities": {"driver_id": []}}).to_string(), 400, "no rows"),
        (json!({"features": ["driver_stats:trips"], "entities": {"driver_id": [null]}}).to_string(), 400, "null"),
        (json!({"features": ["driver_stats:trips"], "entitis": {"driver_id": [1]}}).to_string(), 400, "entitis"),
        (r#"{"features": ["driver_stats:trips"], "entities": {"driver_id": [1], "driver_id": [2]}}"#.into(), 400, "'driver_id' appears twice"),
        (r#"{"feature_service": "ranking", "entities": {"driver_id": [1], "customer_id": ["c1"]}, "request_context": {"x": [1], "x": [2]}}"#.into(), 400, "'x' appears twice"),
        (json!({"features": ["driver_stats:trips"], "entities": {"driver_id": (0..101).collect::<Vec<_>>()}}).to_string(), 413, "at most 100"),
    ];
    for (body, code, needle) in cases {
        let (got, v) = f.post("/get-online-features", &body);
        assert_eq!(got, code, "{body} -> {v}");
        let msg = v["message"]
            .as_str()
            .unwrap_or_else(|| panic!("no message: {v}"));
        assert!(v["code"].is_string(), "{v}");
        assert!(
            msg.contains(needle),
            "{body}: {msg:?} should mention {needle:?}"
        );
    }
    // A body over the size limit is refused before parsing.
    let huge = format!("{{\"features\":[\"{}\"]}}", "x".repeat(5 << 20));
    for path in ["/get-online-features", "/push"] {
        let (code, body) = raw(f.http(), "POST", path, &huge);
        assert_eq!(code, 413);
        let v: Json = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{path}: a JSON error, not {body:?}: {e}"));
        assert_eq!(v["code"], "PAYLOAD_TOO_LARGE", "{v}");
        assert!(
            v["message"].as_str().unwrap().contains("bytes allowed"),
            "{v}"
        );
    }
    let (code, v) = f.post("/no-such-endpoint", "{}");
    assert_eq!((code, v["code"].as_str()), (404, Some("NOT_FOUND")));
    // Still serving.
    f.assert_serves();
}

fn push_writes_newer_rows_online_and_offline(backend: Backend) {
    let f = Fixture::new(backend);
    let read = |id: i64| {
        let (_, v) = f.post(
            "/get-online-features",
            &json!({"features": ["driver_stats:conv_rate", "driver_stats:trips"],
                    "entities": {"driver_id": [id]}})
            .to_string(),
        );
        v["results"][0]["features"].clone()
    };
    // A newer row for driver 1 and a first one for driver 9.
    let (code, v) = f.post(
        "/push",
        &json!({"feature_view": "driver_stats", "to": "online_and_offline",
                "data": {"driver_id": [1, 9], "ts": ["2025-01-01T10:20:00Z", "2025-01-01T10:10:00Z"],
                         "conv_rate": [0.5, null], "trips": [5, 1]}})
        .to_string(),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        (v["rows"].as_u64(), v["written_online"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(v["written_offline"], 2);
    assert_eq!(read(1), json!({"conv_rate": 0.5, "trips": 5}));
    assert_eq!(read(9), json!({"conv_rate": null, "trips": 1}));
    // An older row never rolls a value back.
    let (_, v) = f.post(
        "/push",
        &json!({"feature_view": "driver_stats",
                "data": {"driver_id": [1], "ts": ["2025-01-01T09:30:00Z"], "conv_rate": [0.9], "trips": [99]}})
        .to_string(),
    );
    assert_eq!(
        (v["written_online"].as_u64(), v["skipped_online"].as_u64()),
        (Some(0), Some(1))
    );
    assert_eq!(read(1)["trips"], 5);
    // Offline: the pushed row is in the history a training set reads.
    let labels = quiver::testing::batch(vec![
        ("driver_id", Arc::new(Int64Array::from(vec![1, 1]))),
        ("event_timestamp", ts(vec![t("10:15:00"), t("10:25:00")])),
    ]);
    let training = f
        .repo
        .store()
        .historical()
        .entities(labels)
        .features(["driver_stats:trips"])
        .block()
        .unwrap();
    let trips = training
        .column_by_name("trips")
        .unwrap()
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap();
    assert_eq!((trips.value(0), trips.value(1)), (4, 5));

    // Bad pushes name what is wrong.
    for (body, needle) in [
        (json!({"feature_view": "nope", "data": {}}), "nope"),
        (
            json!({"feature_view": "driver_stats", "data": {"driver_id": [1], "ts": ["2025-01-01T10:00:00Z"], "conv_rate": ["high"], "trips": [1]}}),
            "conv_rate",
        ),
        (
            json!({"feature_view": "driver_stats", "data": {"driver_id": [1], "ts": ["yesterday"], "conv_rate": [1.0], "trips": [1]}}),
            "ts",
        ),
        (
            json!({"feature_view": "driver_stats", "data": {"driver_id": [null], "ts": ["2025-01-01T10:00:00Z"], "conv_rate": [1.0], "trips": [1]}}),
            "driver_id",
        ),
        (
            json!({"feature_view": "driver_stats", "data": {"driver_id": [1], "ts": ["2025-01-01T10:00:00Z"], "conv_rate": [1.0]}}),
            "trips",
        ),
        (
            json!({"feature_view": "driver_stats", "data": {"driver_id": [1], "ts": ["2025-01-01T10:00:00Z"], "conv_rate": [1.0], "trips": [1], "extra": [1]}}),
            "extra",
        ),
        (
            json!({"feature_view": "driver_stats", "to": "everywhere", "data": {"driver_id": [1]}}),
            "everywhere",
        ),
    ] {
        let (code, v) = f.post("/push", &body.to_string());
        assert!(code == 400 || code == 404, "{body} -> {code} {v}");
        assert!(
            v["message"].as_str().unwrap().contains(needle),
            "{body} -> {v}"
        );
    }
    assert_eq!(read(1)["trips"], 5, "failed pushes wrote nothing");
}

fn concurrent_pushes_keep_the_newest_row(backend: Backend) {
    let f = Fixture::new(backend);
    let addr = f.http();
    // The pushed rows are not in the future of the server's clock.
    f.clock.set(t("11:00:00"));
    // 4 writers push interleaved versions of one key; the newest (10:59) must win.
    let handles: Vec<_> = (0..4)
        .map(|w| {
            std::thread::spawn(move || {
                for i in 0..15 {
                    let minute = i * 4 + w; // 0..59, each once
                    let body = json!({"feature_view": "driver_stats",
                        "data": {"driver_id": [5], "ts": [format!("2025-01-01T10:{minute:02}:00Z")],
                                 "conv_rate": [minute as f64], "trips": [minute]}});
                    let (code, v) = http(addr, "POST", "/push", &body.to_string());
                    assert_eq!(code, 200, "{v}");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    f.clock.set(t("11:30:00"));
    let (_, v) = f.post(
        "/get-online-features",
        &json!({"features": ["driver_stats:trips"], "entities": {"driver_id": [5]}}).to_string(),
    );
    assert_eq!(v["results"][0]["features"]["trips"], 59, "{v}");
}

fn registry_changes_are_served_without_restart(backend: Backend) {
    let f = Fixture::new(backend);
    let before = f.server.as_ref().unwrap().state.registry_serial();
    let (code, _) = f.post(
        "/get-online-features",
        &json!({"feature_service": "tiers", "entities": {"customer_id": ["c1"]}}).to_string(),
    );
    assert_eq!(code, 404);
    f.repo.write(
        "features.yaml",
        &format!("{DEFS}  - name: tiers\n    features: [customer_profile:tier]\n"),
    );
    f.repo.store().apply().block().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (code, v) = f.post(
            "/get-online-features",
            &json!({"feature_service": "tiers", "entities": {"customer_id": ["c1"]}}).to_string(),
        );
        if code == 200 {
            assert_eq!(v["results"][0]["features"]["tier"], "gold");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not reloaded: {v}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(f.server.as_ref().unwrap().state.registry_serial() > before);
}

fn future_stamped_pushes_are_rejected(backend: Backend) {
    // The fixture's clock reads 10:30; writes.max_future_skew defaults to 5 minutes.
    let f = Fixture::new(backend);
    let (code, v) = f.post(
        "/push",
        &json!({"feature_view": "driver_stats",
                "data": {"driver_id": [1, 1], "ts": ["2025-01-01T10:31:00Z", "2030-01-01T00:00:00Z"],
                         "conv_rate": [0.7, 0.8], "trips": [8, 9]}})
        .to_string(),
    );
    assert_eq!(code, 400, "{v}");
    let msg = v["message"].as_str().unwrap();
    assert!(
        msg.contains("row 1") && msg.contains("max_future_skew") && msg.contains("2030-01-01"),
        "{msg}"
    );
    // Nothing of the rejected request was written; a row within the skew is accepted
    // and later real updates still win.
    let read = || {
        let (_, v) = f.post(
            "/get-online-features",
            &json!({"features": ["driver_stats:trips"], "entities": {"driver_id": [1]}})
                .to_string(),
        );
        v["results"][0]["features"]["trips"].clone()
    };
    assert_eq!(read(), 4);
    let (code, v) = f.post(
        "/push",
        &json!({"feature_view": "driver_stats",
                "data": {"driver_id": [1], "ts": ["2025-01-01T10:34:00Z"], "conv_rate": [0.7], "trips": [8]}})
        .to_string(),
    );
    assert_eq!(code, 200, "{v}");
    f.clock.set(t("10:35:00"));
    assert_eq!(read(), 8);
}

fn pushed_sub_microsecond_times_round_up(backend: Backend) {
    let f = Fixture::new(backend);
    // A row 800 ns after 10:20:00 must not be visible at 10:20:00, online or offline.
    let (code, v) = f.post(
        "/push",
        &json!({"feature_view": "driver_stats", "to": "online_and_offline",
                "data": {"driver_id": [7], "ts": ["2025-01-01T10:20:00.000000800Z"],
                         "conv_rate": [0.5], "trips": [5]}})
        .to_string(),
    );
    assert_eq!(code, 200, "{v}");
    f.clock.set(t("10:20:00"));
    let (_, v) = f.post(
        "/get-online-features",
        &json!({"features": ["driver_stats:trips"], "entities": {"driver_id": [7]}}).to_string(),
    );
    assert_eq!(v["results"][0]["features"]["trips"], Json::Null, "{v}");
    let labels = quiver::testing::batch(vec![
        ("driver_id", Arc::new(Int64Array::from(vec![7, 7]))),
        (
            "event_timestamp",
            ts(vec![t("10:20:00"), t("10:20:00") + 1]),
        ),
    ]);
    let training = f
        .repo
        .store()
        .historical()
        .entities(labels)
        .features(["driver_stats:trips"])
        .block()
        .unwrap();
    let trips = training.column_by_name("trips").unwrap();
    assert!(
        trips.is_null(0),
        "a label at 10:20:00 does not see a row 800 ns later"
    );
    assert!(trips.is_valid(1), "a label 1 µs later does");
}

/// Each scenario against both backends.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(#[test] fn $name() { super::$name(super::Backend::Embedded) })*
        }
        mod redis {
            $(#[test] fn $name() { super::$name(super::Backend::Redis) })*
        }
    };
}

/// Reads across the shards of a real 3-node Redis Cluster.
mod redis_cluster {
    #[test]
    fn http_reads_a_service_with_statuses_in_request_order() {
        super::http_reads_a_service_with_statuses_in_request_order(super::Backend::RedisCluster)
    }
    #[test]
    fn push_writes_newer_rows_online_and_offline() {
        super::push_writes_newer_rows_online_and_offline(super::Backend::RedisCluster)
    }
}

on_both_backends!(
    http_reads_a_service_with_statuses_in_request_order,
    grpc_answers_like_http,
    bad_requests_get_json_errors_and_the_server_keeps_serving,
    push_writes_newer_rows_online_and_offline,
    concurrent_pushes_keep_the_newest_row,
    registry_changes_are_served_without_restart,
    future_stamped_pushes_are_rejected,
    pushed_sub_microsecond_times_round_up,
);

/// Reads from `s` until the server closes it (or `within` passes); returns what arrived
/// and whether it was closed.
fn read_until_closed(s: &mut TcpStream, within: std::time::Duration) -> (String, bool) {
    s.set_read_timeout(Some(within)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&got).into_owned(), true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return (String::from_utf8_lossy(&got).into_owned(), true)
            }
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), false),
        }
    }
}

/// Limits small enough for a test to outlast: 300 ms timeouts, 4 connections.
fn tight_limits() -> ConnectionLimits {
    let ms = std::time::Duration::from_millis;
    ConnectionLimits {
        header_timeout: ms(300),
        body_timeout: ms(300),
        max_connections: 4,
    }
}

#[test]
fn stalled_and_idle_connections_are_closed_and_do_not_deny_service() {
    let ms = std::time::Duration::from_millis;
    let f = Fixture::with_limits(Backend::Embedded, tight_limits());
    // More half-sent requests than the server takes connections: headers never end.
    let mut stalled: Vec<TcpStream> = (0..12)
        .map(|_| {
            let mut s = TcpStream::connect(f.http()).unwrap();
            s.write_all(b"POST /get-online-features HTTP/1.1\r\nHost: t\r\n")
                .unwrap();
            s
        })
        .collect();
    // A well-behaved client is still served: stalled connections time out and free
    // their slots, and the waiting ones are taken in turn.
    f.assert_serves();
    for (i, s) in stalled.iter_mut().enumerate() {
        let (_, closed) = read_until_closed(s, ms(20_000));
        assert!(closed, "stalled connection {i} was closed by the server");
    }

    // A body that stops halfway is answered 408 with the API's JSON error.
    let mut s = TcpStream::connect(f.http()).unwrap();
    s.write_all(
        b"POST /get-online-features HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
          Content-Length: 100\r\n\r\n{\"features\": ",
    )
    .unwrap();
    let (resp, _) = read_until_closed(&mut s, ms(20_000));
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
    assert!(
        resp.contains("REQUEST_TIMEOUT") && resp.contains("body_timeout"),
        "{resp}"
    );

    // A kept-alive connection left idle is closed after the header timeout.
    let mut s = TcpStream::connect(f.http()).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let (resp, closed) = read_until_closed(&mut s, ms(20_000));
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(closed, "the idle keep-alive connection was closed");
}

#[test]
fn stalled_grpc_connections_are_closed_and_do_not_deny_service() {
    let ms = std::time::Duration::from_millis;
    let f = Fixture::with_limits(Backend::Embedded, tight_limits());
    let addr = f.server.as_ref().unwrap().grpc_addr.unwrap();
    // More stalled connections than the listener takes: silent ones, and ones that stop
    // in the middle of the HTTP/2 preface.
    let mut stalled: Vec<TcpStream> = (0..12)
        .map(|i| {
            let mut s = TcpStream::connect(addr).unwrap();
            if i % 2 == 1 {
                s.write_all(b"PRI * HTTP/2.0\r\n").unwrap();
            }
            s
        })
        .collect();
    // A real client is still served.
    let mut client = f.grpc();
    let read = || pb::GetOnlineFeaturesRequest {
        features: vec!["driver_stats:trips".into()],
        entities: [(
            "driver_id".to_string(),
            pb::ValueList {
                values: vec![pb::Value {
                    kind: Some(pb::value::Kind::Int64Value(1)),
                }],
            },
        )]
        .into(),
        ..Default::default()
    };
    let r = f.rt.block_on(client.get_online_features(read())).unwrap();
    assert_eq!(r.get_ref().results.len(), 1);
    for (i, s) in stalled.iter_mut().enumerate() {
        let (_, closed) = read_until_closed(s, ms(20_000));
        assert!(
            closed,
            "stalled gRPC connection {i} was closed by the server"
        );
    }
}

#[test]
fn a_frozen_redis_fails_reads_fast_is_reported_by_health_and_materialization_waits_for_it() {
    use std::collections::BTreeMap;
    let redis = quiver_redis::testing::Server::start(&[]);
    let repo = Repo::new(DEFS);
    repo.write(
        "quiver.yaml",
        &format!(
            "project: frozen\nregistry: data/registry\n\
             offline_store: {{ type: delta, path: data/offline }}\n\
             online_store: {{ type: redis, url: \"{}\", read_timeout: 200ms, write_timeout: 300ms }}\n",
            redis.url()
        ),
    );
    prepare(&repo, "09:30:00");
    let store = repo.store();
    // Driver stats have a ttl of 1h: read at 09:30 the 09:00 row, at 10:30 the 10:00 one.
    let read = |at: &str| {
        store
            .online_features()
            .features(["driver_stats:trips"])
            .at(t(at))
            .entity_row(BTreeMap::from([(
                "driver_id".to_string(),
                quiver::Value::Int64(1),
            )]))
            .block()
    };
    assert_eq!(
        read("09:30:00").unwrap().rows[0].values[0],
        quiver::Value::Int64(3)
    );

    let rt = runtime();
    let options = ServeOptions {
        http: "127.0.0.1:0".parse().unwrap(),
        grpc: None,
        ..Default::default()
    };
    let server = rt
        .block_on(Server::start(repo.store(), options, None))
        .unwrap();
    let addr = server.http_addr;
    let (code, body) = raw(addr, "GET", "/health", "");
    assert_eq!(code, 200, "{body}");
    assert_eq!(raw(addr, "GET", "/ready", "").0, 200);

    redis.freeze();
    // Reads fail within the read timeout instead of waiting for the server.
    let e = read("09:30:00").unwrap_err().to_string();
    assert!(e.contains("read timeout of 200 ms"), "{e}");
    let (code, body) = raw(addr, "GET", "/health", "");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("unavailable: online store"), "{body}");
    let (code, body) = raw(addr, "GET", "/ready", "");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("not ready"), "{body}");

    // A materialization started while Redis is frozen re-sends its batch until Redis
    // answers again (here after 1.5 s), then completes.
    std::thread::scope(|scope| {
        scope.spawn(|| {
            std::thread::sleep(std::time::Duration::from_millis(1_500));
            redis.thaw();
        });
        store
            .materialize(t("00:00:00"), t("12:00:00"))
            .block()
            .expect("the materialization outlasts a 1.5 s freeze");
    });
    assert_eq!(
        read("10:30:00").unwrap().rows[0].values[0],
        quiver::Value::Int64(4)
    );
    assert_eq!(raw(addr, "GET", "/health", "").0, 200);
    assert_eq!(raw(addr, "GET", "/ready", "").0, 200);
    rt.block_on(server.stop());
}
