//! The request fuzz target's property, shared by the bounded property test run in CI
//! (`tests/it/fuzz.rs`) and the cargo-fuzz target (`fuzz/fuzz_targets/request_json.rs`):
//! whatever bytes a client sends — as the JSON body of a read or a push, or as a whole
//! HTTP request — the server answers with a 2xx or 4xx (a JSON `{code, message}` from
//! quiver's own handlers), never a 5xx or a dropped connection without an answer to a
//! complete request, and goes on serving.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::TimestampMicrosecondArray;
use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use quiver::FeatureStore;

use crate::{ServeOptions, Server};

/// The served repository's definitions: two views (int and string keys), a request
/// source, an on-demand view and a service.
pub const DEFINITIONS: &str = r#"
entities:
  - { name: driver, join_keys: [driver_id] }
  - { name: customer, join_keys: [customer_id] }
sources:
  - { name: drivers, type: file, path: data/drivers.parquet, timestamp_field: ts }
  - { name: customers, type: file, path: data/customers.parquet, timestamp_field: ts }
feature_views:
  - name: driver_stats
    entities: [driver]
    source: drivers
    ttl: 0
    features:
      - { name: conv_rate, dtype: float64, allow_non_finite: true }
      - { name: trips, dtype: int64 }
  - name: customer_profile
    entities: [customer]
    source: customers
    ttl: 0
    features:
      - { name: tier, dtype: string }
request_sources:
  - name: trip
    schema:
      - { name: n, dtype: int64 }
      - { name: km, dtype: float32 }
on_demand_feature_views:
  - name: od
    sources: [request: trip, driver_stats]
    features:
      - { name: per_trip, dtype: int64, expr: "n / trips" }
      - { name: scaled, dtype: float64, expr: "conv_rate * km" }
feature_services:
  - name: ranking
    features: [driver_stats:conv_rate, driver_stats:trips, customer_profile:tier, od:*]
"#;

/// A served repository on a loopback port.
pub struct Harness {
    rt: tokio::runtime::Runtime,
    server: Option<Server>,
    addr: SocketAddr,
}

impl Harness {
    /// Builds the repository in `dir` (empty), ingests, materializes and serves it.
    pub fn new(dir: &Path) -> Result<Self, Box<dyn std::error::Error>> {
        std::fs::write(
            dir.join("quiver.yaml"),
            "project: fuzz\nregistry: data/registry\n\
             offline_store: { type: delta, path: data/offline }\n\
             online_store: { type: embedded, path: data/online }\n",
        )?;
        std::fs::write(dir.join("features.yaml"), DEFINITIONS)?;
        std::fs::create_dir_all(dir.join("data"))?;
        let t = |h: i64| h * 3_600_000_000;
        let table = |cols: Vec<(&str, ArrayRef)>| RecordBatch::try_from_iter(cols);
        let ts = |v: Vec<i64>| -> ArrayRef {
            Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC"))
        };
        quiver::io::write_table(
            dir.join("data/drivers.parquet"),
            &table(vec![
                ("driver_id", Arc::new(Int64Array::from(vec![1, 2, 3]))),
                ("ts", ts(vec![t(1), t(2), t(3)])),
                (
                    "conv_rate",
                    Arc::new(Float64Array::from(vec![
                        Some(0.5),
                        None,
                        Some(f64::INFINITY),
                    ])),
                ),
                (
                    "trips",
                    Arc::new(Int64Array::from(vec![Some(4), Some(0), None])),
                ),
            ])?,
        )?;
        quiver::io::write_table(
            dir.join("data/customers.parquet"),
            &table(vec![
                ("customer_id", Arc::new(StringArray::from(vec!["c1", "c2"]))),
                ("ts", ts(vec![t(1), t(2)])),
                ("tier", Arc::new(StringArray::from(vec!["gold", "silver"]))),
            ])?,
        )?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let store = FeatureStore::open(dir)?;
        let server = rt.block_on(async {
            store.apply().await?;
            store.ingest().await?;
            store.materialize(0, t(4)).await?;
            let options = ServeOptions {
                http: "127.0.0.1:0".parse().expect("an address"),
                grpc: None,
                max_entity_rows: 100,
                max_body_bytes: 64 << 10,
                ..Default::default()
            };
            Server::start(store, options, None).await
        })?;
        let addr = server.http_addr;
        Ok(Harness {
            rt,
            server: Some(server),
            addr,
        })
    }

    /// Sends `body` as the JSON body of `POST path` and checks the answer.
    pub fn check_json(&self, path: &str, body: &[u8]) {
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: fuzz\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        let (status, text) =
            exchange(self.addr, &request, false).expect("a complete request is answered");
        assert!(
            (200..500).contains(&status),
            "{path} with {:?}: status {status}\n{text}",
            String::from_utf8_lossy(body)
        );
        if status >= 400 {
            let v: serde_json::Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("a JSON error body ({e}): {text}"));
            assert!(
                v["code"].is_string() && v["message"].is_string(),
                "{{code, message}}: {text}"
            );
        }
        self.check_serving();
    }

    /// Sends `request` as raw bytes (then closes the sending side) and checks that any
    /// answer is not a 5xx and that the server goes on serving.
    pub fn check_raw(&self, request: &[u8]) {
        if let Some((status, text)) = exchange(self.addr, request, true) {
            assert!(
                status < 500,
                "{:?}: status {status}\n{text}",
                String::from_utf8_lossy(request)
            );
        }
        self.check_serving();
    }

    /// A plain read is answered with driver 1's trips.
    fn check_serving(&self) {
        let body = br#"{"features": ["driver_stats:trips"], "entities": {"driver_id": [1]}}"#;
        let mut request = format!(
            "POST /get-online-features HTTP/1.1\r\nHost: fuzz\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        let (status, text) =
            exchange(self.addr, &request, false).expect("the server still answers");
        assert_eq!(status, 200, "the server still serves: {text}");
        assert!(text.contains("\"trips\":4"), "{text}");
    }
}

/// Writes `request` to `addr` on a fresh connection (then, with `half_close`, closes
/// the sending side, so that an incomplete request ends instead of waiting for the
/// header timeout) and reads the answer: (status, body with any chunked encoding
/// undone), or `None` when the server closed without a status line. A failed write is
/// not the answer (the server may answer, a 413, before reading everything): what
/// arrives is.
pub fn exchange(addr: SocketAddr, request: &[u8], half_close: bool) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).expect("the server accepts");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("a timeout");
    let _ = s.write_all(request);
    if half_close {
        let _ = s.shutdown(Shutdown::Write);
    }
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    Some((
        status,
        if chunked {
            dechunk(body)
        } else {
            body.to_string()
        },
    ))
}

/// The body of a response as sent (chunked transfer decoded).
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    loop {
        let Some((size, after)) = rest.split_once("\r\n") else {
            return body.to_string();
        };
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            return body.to_string();
        };
        if n == 0 || after.len() < n {
            return if n == 0 { out } else { body.to_string() };
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            self.rt.block_on(s.stop());
        }
    }
}
