//! On-demand features served: the feature server computes them with the same evaluator
//! as historical retrieval, so for the same stored rows, request fields and time the
//! served values equal the training-set values bit for bit.

use quiver::testing::Block;
use std::sync::Arc;

use arrow::array::{Array, AsArray, Float64Array, Int64Array};
use arrow::datatypes::{Float64Type, Int64Type};
use quiver_core::time::ManualClock;
use quiver_server::api::pb;
use quiver_server::{ServeOptions, Server};
use serde_json::json;

use crate::common::{batch, ts};

const S: i64 = 1_000_000;

#[test]
fn served_on_demand_features_equal_the_training_set_bit_for_bit() {
    let r = crate::on_demand::repo();
    let store = r.store();
    store.materialize(0, 1000 * S).block().unwrap();
    // Labels at t=25s and t=100s (after the newest stored row, so online and offline
    // see the same row), with awkward distances.
    let drivers = [1i64, 2, 3, 1, 1, 2];
    let times = [25i64, 25, 25, 100, 100, 100];
    let dist = [
        Some(0.1),
        Some(7.3),
        Some(2.0),
        None,
        Some(1e-9),
        Some(123.456),
    ];
    let pass = [1i64, 2, 3, 4, 5, 6];
    let labels = batch(vec![
        ("driver_id", Arc::new(Int64Array::from(drivers.to_vec()))),
        ("event_timestamp", ts(times.iter().map(|t| t * S).collect())),
        ("distance_km", Arc::new(Float64Array::from(dist.to_vec()))),
        ("passengers", Arc::new(Int64Array::from(pass.to_vec()))),
    ]);
    let training = store
        .historical()
        .entities(labels)
        .service("ranking")
        .block()
        .unwrap();
    let score = training
        .column_by_name("score")
        .unwrap()
        .as_primitive::<Float64Type>()
        .clone();
    let load = training
        .column_by_name("load")
        .unwrap()
        .as_primitive::<Int64Type>()
        .clone();
    let band = training
        .column_by_name("band")
        .unwrap()
        .as_string::<i32>()
        .clone();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let clock = Arc::new(ManualClock::new(25 * S));
    let c: Arc<dyn quiver_core::time::Clock> = clock.clone();
    let options = ServeOptions {
        http: "127.0.0.1:0".parse().unwrap(),
        grpc: None,
        ..Default::default()
    };
    let server = rt
        .block_on(Server::start(r.store(), options, Some(c)))
        .unwrap();
    let mut checked = 0;
    for t in [25i64, 100] {
        clock.set(t * S);
        let rows: Vec<usize> = (0..drivers.len()).filter(|&i| times[i] == t).collect();
        let req = json!({
            "feature_service": "ranking",
            "entities": {"driver_id": rows.iter().map(|&i| drivers[i]).collect::<Vec<_>>()},
            "request_context": {
                "distance_km": rows.iter().map(|&i| dist[i]).collect::<Vec<_>>(),
                "passengers": rows.iter().map(|&i| pass[i]).collect::<Vec<_>>(),
            }
        });
        let req: pb::GetOnlineFeaturesRequest = serde_json::from_value(req).unwrap();
        let resp = rt.block_on(server.state.get_online_features(req)).unwrap();
        for (k, &i) in rows.iter().enumerate() {
            let f = &resp.results[k].features;
            let st = &resp.results[k].statuses;
            let served = quiver_server::api::to_value(&f["score"]);
            match served {
                quiver::Value::Float64(x) => {
                    assert!(!score.is_null(i), "row {i}: served {x}, trained null");
                    assert_eq!(x.to_bits(), score.value(i).to_bits(), "row {i}");
                    assert_eq!(st["score"], pb::FeatureStatus::Present as i32);
                }
                quiver::Value::Null => {
                    assert!(
                        score.is_null(i),
                        "row {i}: served null, trained {}",
                        score.value(i)
                    );
                    assert_ne!(st["score"], pb::FeatureStatus::Present as i32);
                }
                other => panic!("row {i}: score {other:?}"),
            }
            assert_eq!(
                quiver_server::api::to_value(&f["load"]),
                if load.is_null(i) {
                    quiver::Value::Null
                } else {
                    quiver::Value::Int64(load.value(i))
                },
                "row {i}"
            );
            assert_eq!(
                quiver_server::api::to_value(&f["band"]),
                if band.is_null(i) {
                    quiver::Value::Null
                } else {
                    quiver::Value::String(band.value(i).to_string())
                },
                "row {i}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, drivers.len());

    // Over HTTP, a missing request field is a 400 naming it.
    let addr = server.http_addr;
    let body = json!({"feature_service": "ranking", "entities": {"driver_id": [1]},
                      "request_context": {"distance_km": [1.0]}})
    .to_string();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    use std::io::{Read, Write};
    write!(
        s,
        "POST /get-online-features HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert!(resp.contains("passengers"), "{resp}");
    rt.block_on(server.stop());
}

/// Reads the `ranking` service for driver 1 at t=25s with a distance of 2 km.
fn ranking(store: &quiver::FeatureStore) -> quiver::Result<String> {
    use std::collections::BTreeMap;
    let r = store
        .online_features()
        .service("ranking")
        .at(25 * S)
        .entity_row(BTreeMap::from([(
            "driver_id".to_string(),
            quiver::Value::Int64(1),
        )]))
        .request_row_text(BTreeMap::from([
            ("distance_km".to_string(), "2".to_string()),
            ("passengers".to_string(), "1".to_string()),
        ]))
        .block()?;
    Ok(format!("{:?}", r.rows))
}

#[test]
fn a_registry_that_cannot_serve_does_not_replace_the_one_in_use() {
    let r = crate::on_demand::repo();
    let store = r.store();
    store.materialize(0, 1000 * S).block().unwrap();
    let before = ranking(&store).unwrap();
    assert!(before.contains("1.6"), "score = 0.8 × 2: {before}");

    // Another writer leaves a registry whose expression has 800 terms (far beyond what
    // `apply` accepts; compiling it unbounded overflowed a server thread's stack).
    let path = r.file("data/registry/registry.json");
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let expr = &mut json["on_demand_feature_views"]["trip"]["def"]["features"][0]["expr"];
    assert_eq!(expr.as_str(), Some("rate * distance_km"));
    *expr = serde_json::Value::String(vec!["rate"; 800].join(" + "));
    std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
    std::thread::sleep(quiver::REGISTRY_RECHECK * 3);

    // The store keeps serving the registry it had, on a thread with a tokio worker's
    // stack, and a store opened afresh reports the expression instead of crashing.
    let again = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || (ranking(&store), ranking(&store)))
        .unwrap()
        .join()
        .expect("no stack overflow");
    assert_eq!(again.0.unwrap(), before);
    assert_eq!(again.1.unwrap(), before);
    let e = ranking(&r.store()).unwrap_err().to_string();
    assert!(e.contains("score") && e.contains("tokens"), "{e}");
}
