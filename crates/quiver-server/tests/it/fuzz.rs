//! The request fuzz target (`quiver_server::fuzz::Harness`) run for a bounded number of
//! cases in CI: random and edited JSON bodies for reads and pushes, and random raw HTTP
//! requests. The unbounded run is `cargo +nightly fuzz run request_json` in `fuzz/`.

use proptest::prelude::*;
use quiver_server::fuzz::Harness;

thread_local! {
    static HARNESS: (tempfile::TempDir, Harness) = {
        let dir = tempfile::tempdir().unwrap();
        let h = Harness::new(dir.path()).unwrap();
        (dir, h)
    };
}

fn with<R>(f: impl FnOnce(&Harness) -> R) -> R {
    HARNESS.with(|(_, h)| f(h))
}

/// Valid requests to edit.
const SEEDS: &[&str] = &[
    r#"{"feature_service": "ranking", "entities": {"driver_id": [1, 2, 3], "customer_id": ["c1", "c2", "c9"]}, "request_context": {"n": [8, 1, -9223372036854775808], "km": [1.5, 3e38, 0]}}"#,
    r#"{"features": ["driver_stats:conv_rate", "od:per_trip"], "entities": {"driver_id": [2]}, "request_context": {"n": [5], "km": [1.0]}, "full_feature_names": true}"#,
    r#"{"features": ["customer_profile:tier"], "entities": {"customer_id": ["c1"]}}"#,
];
const PUSH_SEEDS: &[&str] = &[
    r#"{"feature_view": "driver_stats", "to": "online_and_offline", "data": {"driver_id": [7], "ts": ["1970-01-01T05:00:00Z"], "conv_rate": ["Infinity"], "trips": [3]}}"#,
    r#"{"feature_view": "customer_profile", "data": {"customer_id": ["c3"], "ts": [3600000000], "tier": ["bronze"]}}"#,
];
/// Tokens an edit may insert.
const TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "null",
    "true",
    "1e309",
    "-1",
    "1.0",
    "\"NaN\"",
    "9223372036854775808",
    "\"driver_id\"",
    "\"entities\"",
    "\"features\"",
    "\"od:*\"",
    "\"request_context\"",
    "\"n\"",
    "\"km\"",
    "[[[[[[[[",
    "\"\\u0000\"",
    "\"\\ud800\"",
    "🦀",
    "\"9999-12-31T23:59:59Z\"",
    "\"10000-01-01T00:00:00Z\"",
    "{\"driver_id\": 1}",
];

fn edit(text: &str, edits: &[(u8, f64, usize, usize)]) -> String {
    let mut s: Vec<char> = text.chars().collect();
    for &(kind, at, len, tok) in edits {
        let i = ((s.len() as f64) * at) as usize;
        let j = (i + len).min(s.len());
        let insert: Vec<char> = match kind % 3 {
            0 => vec![],
            1 => TOKENS[tok % TOKENS.len()].chars().collect(),
            _ => s[i..j].iter().chain(&s[i..j]).copied().collect(),
        };
        s.splice(i..j, insert);
    }
    s.into_iter().collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn edited_reads_and_pushes_get_2xx_or_json_4xx(
        seed in 0usize..5,
        edits in prop::collection::vec((any::<u8>(), 0.0f64..1.0, 0usize..12, any::<usize>()), 0..5),
    ) {
        let (path, text) = if seed < SEEDS.len() {
            ("/get-online-features", SEEDS[seed])
        } else {
            ("/push", PUSH_SEEDS[seed - SEEDS.len()])
        };
        with(|h| h.check_json(path, edit(text, &edits).as_bytes()));
    }

    #[test]
    fn random_bodies_get_json_4xx(body in prop::collection::vec(any::<u8>(), 0..300), push in any::<bool>()) {
        with(|h| h.check_json(if push { "/push" } else { "/get-online-features" }, &body));
    }

    #[test]
    fn random_raw_requests_never_get_5xx(
        line in prop::sample::select(vec!["POST /get-online-features HTTP/1.1", "POST /push HTTP/1.1", "GET /health HTTP/1.1", "GET /registry/feature_views/x HTTP/1.1", "PUT / HTTP/1.0", ""]),
        headers in prop::collection::vec(prop::sample::select(vec![
            "Content-Length: -1", "Content-Length: 5", "Content-Length: 99999999999", "Transfer-Encoding: chunked",
            "Content-Length: 2", "Host: x", "Connection: keep-alive", "Expect: 100-continue", "X: \u{7f}",
        ]), 0..4),
        body in "\\PC{0,40}",
    ) {
        let request = format!("{line}\r\n{}\r\n\r\n{body}", headers.join("\r\n"));
        with(|h| h.check_raw(request.as_bytes()));
    }
}
