//! Aggregated features over HTTP and gRPC: served from tiles at the server's clock,
//! equal to the training set at that time; a push of events updates them.

use quiver::testing::Block;
use std::sync::Arc;

use arrow::array::{Float64Array, Int64Array};
use quiver_core::time::ManualClock;
use quiver_server::api::pb;
use quiver_server::{ServeOptions, Server};
use serde_json::json;

use quiver::testing::{batch, ts, Repo};

const MIN: i64 = 60_000_000;

const DEFS: &str = r#"
entities: [{ name: card, join_keys: [card_id] }]
sources: [{ name: tx, type: file, path: data/tx.parquet, timestamp_field: ts }]
feature_views:
  - name: card_txn
    entities: [card]
    source: tx
    aggregations:
      - { function: count_star, windows: [1h] }
      - { column: amount, function: sum, windows: [1h, 1d] }
      - { column: amount, function: last_n, n: 2, windows: [1d] }
"#;

/// Applies, ingests and materializes `repo` up to `t`, and serves it (HTTP, and gRPC
/// when `grpc`) at a clock standing at `t`.
fn filled_and_served(
    repo: &Repo,
    t: i64,
    grpc: bool,
) -> (quiver::FeatureStore, tokio::runtime::Runtime, Server) {
    let store = repo.store();
    store.apply().block().unwrap();
    store.ingest().block().unwrap();
    store.materialize(0, t).block().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let clock: Arc<dyn quiver_core::time::Clock> = Arc::new(ManualClock::new(t));
    let options = ServeOptions {
        http: "127.0.0.1:0".parse().unwrap(),
        grpc: grpc.then(|| "127.0.0.1:0".parse().unwrap()),
        ..Default::default()
    };
    let server = rt
        .block_on(Server::start(repo.store(), options, Some(clock)))
        .unwrap();
    (store, rt, server)
}

/// Checks that `served` (a server's answer for cards 1, 2, 3) holds, per feature, what
/// the training set at `t` holds.
fn served_as_trained(
    store: &quiver::FeatureStore,
    served: &serde_json::Value,
    features: &[&str],
    t: i64,
) {
    let labels = batch(vec![
        ("card_id", Arc::new(Int64Array::from(vec![1, 2, 3]))),
        ("event_timestamp", ts(vec![t; 3])),
    ]);
    let trained = store
        .historical()
        .entities(labels)
        .features(features.iter().copied())
        .block()
        .unwrap();
    for (row, r) in served["results"].as_array().unwrap().iter().enumerate() {
        for f in features {
            let name = f.split(':').nth(1).unwrap();
            let want =
                quiver_core::value::value_at(trained.column_by_name(name).unwrap().as_ref(), row)
                    .unwrap();
            assert_eq!(
                r["features"][name],
                serde_json::to_value(&want).unwrap(),
                "row {row}, {name}"
            );
        }
    }
}

#[test]
fn aggregated_features_are_served_over_http_and_grpc_as_trained() {
    let repo = Repo::new(DEFS);
    repo.parquet(
        "data/tx.parquet",
        vec![
            ("card_id", Arc::new(Int64Array::from(vec![1, 1, 2, 1]))),
            ("ts", ts(vec![10 * MIN, 50 * MIN, 55 * MIN, 70 * MIN])),
            (
                "amount",
                Arc::new(Float64Array::from(vec![
                    Some(5.0),
                    None,
                    Some(1.25),
                    Some(2.5),
                ])),
            ),
        ],
    );
    let t = 100 * MIN;
    let (store, rt, server) = filled_and_served(&repo, t, true);
    let features = [
        "card_txn:count_star_1h",
        "card_txn:amount_sum_1h",
        "card_txn:amount_sum_1d",
        "card_txn:amount_last_2_1d",
    ];
    let body = json!({"features": features, "entities": {"card_id": [1, 2, 3]}}).to_string();
    let (code, text) = crate::server::raw(server.http_addr, "POST", "/get-online-features", &body);
    assert_eq!(code, 200, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    // Card 1 at 1:40: the 1h window [0:40, 1:40) holds the null at 0:50 and 2.5 at 1:10.
    assert_eq!(v["results"][0]["features"]["count_star_1h"], 2);
    assert_eq!(v["results"][0]["features"]["amount_sum_1h"], 2.5);
    assert_eq!(v["results"][0]["features"]["amount_sum_1d"], 7.5);
    assert_eq!(
        v["results"][0]["features"]["amount_last_2_1d"],
        json!([2.5, 5.0])
    );
    assert_eq!(v["results"][0]["statuses"]["amount_sum_1h"], "PRESENT");
    // A card without events: count 0 and sum null, MISSING.
    assert_eq!(v["results"][2]["features"]["count_star_1h"], 0);
    assert_eq!(v["results"][2]["features"]["amount_sum_1h"], json!(null));
    assert_eq!(v["results"][2]["statuses"]["count_star_1h"], "MISSING");

    // The training set at the same time holds the same values.
    served_as_trained(&store, &v, &features, t);

    // gRPC answers alike.
    let addr = server.grpc_addr.unwrap();
    let mut client = rt
        .block_on(pb::feature_serving_client::FeatureServingClient::connect(
            format!("http://{addr}"),
        ))
        .unwrap();
    let req = pb::GetOnlineFeaturesRequest {
        features: features.iter().map(|f| f.to_string()).collect(),
        entities: [(
            "card_id".to_string(),
            pb::ValueList {
                values: vec![pb::Value {
                    kind: Some(pb::value::Kind::Int64Value(1)),
                }],
            },
        )]
        .into(),
        ..Default::default()
    };
    let r = rt
        .block_on(client.get_online_features(req))
        .unwrap()
        .into_inner();
    let sum = &r.results[0].features["amount_sum_1d"];
    assert_eq!(
        quiver_server::api::to_value(sum),
        quiver::Value::Float64(7.5)
    );

    // A push of events (online and offline) updates the served values.
    let body = json!({"feature_view": "card_txn", "to": "online_and_offline",
                      "data": {"card_id": [1], "ts": ["1970-01-01T01:30:00Z"], "amount": [4.0]}})
    .to_string();
    let (code, text) = crate::server::raw(server.http_addr, "POST", "/push", &body);
    assert_eq!(code, 200, "{text}");
    let body =
        json!({"features": ["card_txn:amount_sum_1h"], "entities": {"card_id": [1]}}).to_string();
    let (_, text) = crate::server::raw(server.http_addr, "POST", "/get-online-features", &body);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["results"][0]["features"]["amount_sum_1h"], 6.5, "{v}");
    // Online only is refused for them.
    let body = json!({"feature_view": "card_txn", "to": "online",
                      "data": {"card_id": [1], "ts": ["1970-01-01T01:31:00Z"], "amount": [1.0]}})
    .to_string();
    let (code, text) = crate::server::raw(server.http_addr, "POST", "/push", &body);
    assert_eq!(code, 400, "{text}");
    rt.block_on(server.stop());
}

/// Over HTTP: `POST /push` of `data` to push source `tx_push`.
fn push(
    addr: std::net::SocketAddr,
    extra: serde_json::Value,
    data: serde_json::Value,
) -> (u16, serde_json::Value) {
    let mut body = json!({"push_source": "tx_push", "data": data});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let (code, text) = crate::server::raw(addr, "POST", "/push", &body.to_string());
    (code, serde_json::from_str(&text).unwrap_or(json!(text)))
}

#[test]
fn a_push_source_feeds_every_view_over_it_once_per_producer_sequence() {
    let repo = Repo::new(
        r#"
entities: [{ name: card, join_keys: [card_id] }]
sources:
  - { name: tx, type: file, path: data/tx.parquet, timestamp_field: ts }
  - { name: tx_push, type: push, timestamp_field: ts, batch_source: tx }
feature_views:
  - name: card_txn
    entities: [card]
    source: tx_push
    aggregations:
      - { function: count_star, windows: [1h] }
      - { column: amount, function: sum, windows: [1h, 1d] }
  - name: card_last
    entities: [card]
    source: tx_push
    features: [{ name: amount, dtype: float64 }]
"#,
    );
    repo.parquet(
        "data/tx.parquet",
        vec![
            ("card_id", Arc::new(Int64Array::from(vec![1, 2]))),
            ("ts", ts(vec![10 * MIN, 20 * MIN])),
            ("amount", Arc::new(Float64Array::from(vec![5.0, 1.0]))),
        ],
    );
    let t = 100 * MIN;
    let (store, rt, server) = filled_and_served(&repo, t, false);
    let addr = server.http_addr;
    let events = json!({"card_id": [1, 1, 2], "ts": ["1970-01-01T01:20:00Z",
        "1970-01-01T01:20:00Z", "1970-01-01T01:30:00Z"], "amount": [2.0, 2.0, 3.5]});
    let (code, v) = push(
        addr,
        json!({"producer": "p1", "sequence": 1}),
        events.clone(),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["rows"], 3, "{v}");
    assert_eq!(v["written_offline"], 6, "both views: {v}");
    // A retry of the same request (same producer and sequence) changes nothing.
    let (code, v) = push(addr, json!({"producer": "p1", "sequence": 1}), events);
    assert_eq!(code, 200, "{v}");
    let more = json!({"card_id": [2], "ts": ["1970-01-01T01:35:00Z"], "amount": [0.5]});
    let (code, v) = push(addr, json!({"producer": "p1", "sequence": 2}), more);
    assert_eq!(code, 200, "{v}");

    // Bad pushes are refused whole, naming what is wrong.
    for (extra, data, says) in [
        (
            // (Without a producer, the aggregated view's rule is named first.)
            json!({"producer": "p9", "sequence": 1}),
            json!({"card_id": [3], "ts": ["1970-01-01T01:36:00Z"]}),
            "missing column 'amount'",
        ),
        (
            json!({"push_source": "tx"}),
            json!({"card_id": [3]}),
            "not a push source",
        ),
        (
            json!({"feature_view": "card_last"}),
            json!({"card_id": [3]}),
            "not both",
        ),
        (
            json!({}),
            json!({"card_id": [3], "ts": ["1970-01-01T01:36:00Z"], "amount": [1.0]}),
            "need a 'producer'",
        ),
        (
            json!({"to": "online", "producer": "p1", "sequence": 3}),
            json!({"card_id": [3], "ts": ["1970-01-01T01:36:00Z"], "amount": [1.0]}),
            "written offline and online together",
        ),
    ] {
        let (code, v) = push(addr, extra, data);
        assert_eq!(code, 400, "{v}");
        assert!(v.to_string().contains(says), "{says}: {v}");
    }

    // Served (every view) = trained at the server's time: each event counted once.
    let features = [
        "card_txn:count_star_1h",
        "card_txn:amount_sum_1h",
        "card_txn:amount_sum_1d",
        "card_last:amount",
    ];
    let body = json!({"features": features, "entities": {"card_id": [1, 2, 3]}}).to_string();
    let (code, text) = crate::server::raw(addr, "POST", "/get-online-features", &body);
    assert_eq!(code, 200, "{text}");
    let served: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        served["results"][0]["features"]["count_star_1h"], 2,
        "{served}"
    );
    assert_eq!(
        served["results"][1]["features"]["amount_sum_1d"], 5.0,
        "{served}"
    );
    assert_eq!(served["results"][1]["features"]["amount"], 0.5, "{served}");
    served_as_trained(&store, &served, &features, t);
    // The aggregated view's table holds each event once (the two alike events of the
    // first push are two events).
    let view = store.state().unwrap().serving_view("card_txn").unwrap();
    assert_eq!(store.offline().row_count(&view).block().unwrap(), 2 + 3 + 1);
    rt.block_on(server.stop());
    // Stopping reported what the pushes applied (the retry applied nothing).
    let online = store.online().block().unwrap();
    let record = quiver::freshness::read(online.as_ref(), "test", "card_txn")
        .block()
        .unwrap();
    let p = &record["push:tx_push:p1"];
    assert_eq!(p.applied, 4, "{record:?}");
    assert_eq!(
        p.newest_event,
        Some(quiver_core::time::parse_timestamp("1970-01-01T01:35:00Z").unwrap())
    );
}
