//! Stream ingestion's exactly-once effect (DESIGN §2, §5): events of one partition, out
//! of order in event time, are applied in random batches with random rewinds (a worker
//! that died before committing, a manual rewind) replaying ranges cut differently; the
//! values served afterwards equal the training values at the same times bit for bit,
//! every event counted once — for hop tiles and for the day tiles of long windows.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::ArrayRef;
use arrow::array::{Array, AsArray, Float64Array, Int64Array};
use proptest::prelude::*;
use quiver::stream::{apply_events, StreamEvents, StreamStats};
use quiver::testing::Block;
use quiver::write::{validate, Input, Targets};
use quiver::Value;
use quiver_core::model::ResolvedView;
use quiver_offline::normalize::NormalizedBatch;
use quiver_offline::normalize::Origin;

use crate::common::{batch, ts, Repo};

const MIN: i64 = 60_000_000;
const HOUR: i64 = 60 * MIN;
const DAY: i64 = 24 * HOUR;
const KEYS: i64 = 4;

const DEFS: &str = crate::common::user_events_view!(
    "      - { function: count_star, windows: [30m, 3d] }
      - { column: x, function: sum, windows: [1h, 2d] }
      - { column: x, function: mean, windows: [2d] }
      - { column: x, function: max, windows: [3d] }
      - { column: x, function: last, windows: [1d] }
      - { column: x, function: approx_percentile, percentile: 0.5, windows: [2d] }
"
);

/// (user, minute, x)
type Ev = (i64, i64, Option<f64>);

/// The columns of events: `user_id`, `ts` (the minute), `x`.
fn cols(evs: &[Ev]) -> Vec<(&'static str, ArrayRef)> {
    vec![
        (
            "user_id",
            Arc::new(Int64Array::from_iter_values(evs.iter().map(|e| e.0))) as _,
        ),
        ("ts", ts(evs.iter().map(|e| e.1 * MIN).collect())),
        (
            "x",
            Arc::new(Float64Array::from(
                evs.iter().map(|e| e.2).collect::<Vec<_>>(),
            )) as _,
        ),
    ]
}

/// `evs` as `view`'s validated rows, the first numbered `first_row` in messages.
fn validated(view: &ResolvedView, evs: &[Ev], first_row: usize) -> NormalizedBatch {
    let input = Input {
        timestamp_field: "ts",
        created_field: None,
        origin: Origin {
            file: "stream",
            first_row,
        },
        not_after: i64::MAX,
    };
    validate(view, &batch(cols(evs)), &input).unwrap()
}

/// Applies `evs[from..to]`, at offsets `from..to` of partition `p0`, to `view` online.
fn apply_range(
    store: &quiver::FeatureStore,
    view: &ResolvedView,
    evs: &[Ev],
    from: usize,
    to: usize,
    now: i64,
) -> StreamStats {
    let rows = validated(view, &evs[from..to], from + 1);
    let offsets: Vec<u128> = (from as u128..to as u128).collect();
    let events = StreamEvents {
        partition: b"p0",
        offsets: &offsets,
    };
    apply_events(store, view, rows, events, Targets::ONLINE, now)
        .block()
        .unwrap()
}

fn event() -> impl Strategy<Value = Ev> {
    (
        0..KEYS - 1, // the last key never has events
        0i64..4 * 1440,
        prop_oneof![
            4 => (-400i64..400).prop_map(|v| Some(v as f64 / 8.0)),
            1 => Just(None),
            1 => Just(Some(1e300)),
            1 => Just(Some(-1e300)),
        ],
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn replayed_stream_ranges_change_no_served_value(
        events in prop::collection::vec(event(), 1..50),
        // Batches: (length, rewind to this fraction of the position reached, if any).
        steps in prop::collection::vec((1usize..12, prop::option::weighted(0.3, 0.0f64..1.0)), 1..12),
        after in 0i64..3000,
    ) {
        let r = Repo::new(DEFS);
        // The history offline (what training reads); the stream writes online only.
        r.parquet("data/ev.parquet", cols(&events));
        let store = r.store();
        store.apply().block().unwrap();
        store.ingest().block().unwrap();
        let view = store.state().unwrap().serving_view("w").unwrap();
        let last = events.iter().map(|e| e.1).max().unwrap() + 1;
        let now = last * MIN;
        let (mut at, mut delivered, mut applied, mut replayed, mut late) = (0usize, 0u64, 0u64, 0u64, 0u64);
        let apply = |from: usize, to: usize| {
            let s = apply_range(&store, &view, &events, from, to, now);
            (s.events, s.applied, s.replayed, s.late)
        };
        for (len, rewind) in steps {
            let to = (at + len).min(events.len());
            if at < to {
                let (e, a, rp, l) = apply(at, to);
                delivered += e; applied += a; replayed += rp; late += l;
                at = to;
            }
            if let Some(f) = rewind {
                at = (at as f64 * f) as usize;
            }
        }
        if at < events.len() {
            let (e, a, rp, l) = apply(at, events.len());
            delivered += e; applied += a; replayed += rp; late += l;
        }
        // Every event applied or found late exactly once; the rest were replays.
        prop_assert_eq!(applied + late, events.len() as u64, "applied {} late {}", applied, late);
        prop_assert_eq!(replayed, delivered - events.len() as u64);
        let names: Vec<String> = view.aggregations.iter().map(|a| a.name.clone()).collect();
        let features: Vec<String> = names.iter().map(|n| format!("w:{n}")).collect();
        for t in [now, now + after * MIN] {
            let labels = batch(vec![
                ("user_id", Arc::new(Int64Array::from_iter_values(0..KEYS))),
                ("event_timestamp", ts(vec![t; KEYS as usize])),
            ]);
            let training = store.historical().entities(labels).features(features.clone())
                .block().unwrap();
            for k in 0..KEYS {
                let served = store.online_features().features(features.clone())
                    .entity_row(BTreeMap::from([("user_id".to_string(), Value::Int64(k))]))
                    .at(t).block().unwrap();
                for (i, name) in names.iter().enumerate() {
                    let col = training.column_by_name(name).unwrap();
                    let trained = quiver_core::value::value_at(col.as_ref(), k as usize).unwrap();
                    prop_assert_eq!(format!("{:?}", served.rows[0].values[i]), format!("{trained:?}"),
                                    "key {} {} at {}", k, name, t);
                }
            }
        }
    }
}

/// Two writers of one partition at once (a rebalance overlap), each applying the same
/// events cut into different batches: every event is counted once (the merges are a
/// compare-and-set on the positions read).
#[test]
fn two_writers_of_one_partition_count_each_event_once() {
    let r = Repo::new(DEFS);
    let events: Vec<Ev> = (0..240)
        .map(|i| (i % 3, (i * 37) % 120, Some(i as f64)))
        .collect();
    r.parquet("data/ev.parquet", cols(&events));
    let store = r.store();
    store.apply().block().unwrap();
    store.ingest().block().unwrap();
    let view = store.state().unwrap().serving_view("w").unwrap();
    let now = 121 * MIN;
    let write = |step: usize| {
        let (store, view, events) = (store.clone(), view.clone(), events.clone());
        async move {
            let (mut from, mut applied) = (0, 0);
            while from < events.len() {
                let to = (from + step).min(events.len());
                let rows = validated(&view, &events[from..to], from + 1);
                let offsets: Vec<u128> = (from as u128..to as u128).collect();
                let targets = Targets::ONLINE;
                let events = StreamEvents {
                    partition: b"p0",
                    offsets: &offsets,
                };
                let s = apply_events(&store, &view, rows, events, targets, now)
                    .await
                    .unwrap();
                applied += s.applied;
                from = to;
            }
            applied
        }
    };
    let applied = quiver::testing::runtime().block_on(async {
        let (a, b) = (tokio::spawn(write(7)), tokio::spawn(write(11)));
        a.await.unwrap() + b.await.unwrap()
    });
    // The two writers' statistics count each event applied once between them.
    assert_eq!(applied, events.len() as u64);
    let names: Vec<String> = view
        .aggregations
        .iter()
        .map(|a| format!("w:{}", a.name))
        .collect();
    let (served, trained) =
        crate::common::served_and_trained(&store, "user_id", 0..KEYS, &names, now);
    assert_eq!(served, trained);
}

/// A micro-batch holding a range twice (a Kafka rebalance resumes a partition from its
/// committed offset while what was read after it still waits to be written) stores it
/// once; the next one stores only what is past the table's newest offset; events alike
/// in every value at different offsets stay distinct.
#[test]
fn offline_micro_batches_store_each_offset_once() {
    use quiver::stream::{write_offline, OfflineEvents};
    let r = Repo::new(DEFS);
    // Every event alike: key 0, minute 1, x 2.0.
    let events: Vec<Ev> = vec![(0, 1, Some(2.0)); 20];
    r.parquet("data/ev.parquet", cols(&events[..1]));
    let store = r.store();
    store.apply().block().unwrap();
    let view = store.state().unwrap().serving_view("w").unwrap();
    let part = |from: usize, to: usize| OfflineEvents {
        rows: validated(&view, &events[from..to], 1),
        partition: b"p0".to_vec().into(),
        offsets: (from as u128..to as u128).collect(),
    };
    let rows = || store.offline().row_count(&view).block().unwrap();
    write_offline(&store, &view, vec![part(0, 10), part(5, 15)])
        .block()
        .unwrap();
    assert_eq!(rows(), 15);
    write_offline(&store, &view, vec![part(10, 20)])
        .block()
        .unwrap();
    assert_eq!(rows(), 20);
    write_offline(&store, &view, vec![part(0, 20)])
        .block()
        .unwrap();
    assert_eq!(rows(), 20, "a replay of everything stores nothing");
}

/// Writers of one offline table at once (workers of different partitions or streams):
/// a commit that loses the race is made again, and nothing is lost — for a snapshot
/// view (whose writes merge day partitions) and an aggregated one (appends).
#[test]
fn concurrent_offline_micro_batches_all_land() {
    use quiver::stream::{write_offline, OfflineEvents};
    let r = Repo::new(&format!(
        "{DEFS}  - name: snap\n    entities: [user]\n    source: ev\n    features: [{{ name: x, dtype: float64 }}]\n"
    ));
    r.parquet("data/ev.parquet", cols(&[(0, 0, Some(1.0))]));
    let store = r.store();
    store.apply().block().unwrap();
    for name in ["w", "snap"] {
        let view = store.state().unwrap().serving_view(name).unwrap();
        let part = |p: &str, k: i64, round: i64| {
            // 10 events of key k on one day, on minutes 0..10, the round's offsets.
            let evs: Vec<Ev> = (0..10).map(|m| (k, m, Some(m as f64))).collect();
            OfflineEvents {
                rows: validated(&view, &evs, 1),
                partition: p.as_bytes().to_vec().into(),
                offsets: (round as u128 * 10..round as u128 * 10 + 10).collect(),
            }
        };
        let runtime = quiver::testing::runtime();
        for round in 0..4i64 {
            let (a, b) = runtime.block_on(async {
                tokio::join!(
                    write_offline(&store, &view, vec![part("p0", 2 * round, round)]),
                    write_offline(&store, &view, vec![part("p1", 2 * round + 1, round)]),
                )
            });
            a.unwrap();
            b.unwrap();
        }
        let rows = store.offline().row_count(&view).block().unwrap();
        assert_eq!(rows, 80, "view {name}");
        if name == "w" {
            // Two writers of one partition's same range at once (a Kafka partition's
            // old owner flushing while its new one does): stored once.
            for round in 4..8i64 {
                let (a, b) = runtime.block_on(async {
                    tokio::join!(
                        write_offline(&store, &view, vec![part("p0", 100, round)]),
                        write_offline(&store, &view, vec![part("p0", 100, round)]),
                    )
                });
                a.unwrap();
                b.unwrap();
            }
            let rows = store.offline().row_count(&view).block().unwrap();
            assert_eq!(rows, 80 + 40, "each offset once");
        }
    }
}

/// A repository whose view `txn` (aggregations) and `latest` (snapshot) read the Redis
/// stream `stream_key` of the server at `url`; history in `data/tx.parquet`.
fn stream_repo(url: &str, stream_key: &str) -> Repo {
    repo_over_stream(&format!(
        "type: redis_stream, url: {url}, stream: {stream_key}"
    ))
}

/// The same repository over the stream source `source` (its type and where it is).
fn repo_over_stream(source: &str) -> Repo {
    Repo::new(&format!(
        "\
entities: [{{ name: card, join_keys: [card] }}]
sources:
  - {{ name: tx, type: file, path: data/tx.parquet, timestamp_field: ts }}
  - {{ name: tx_stream, {source}, timestamp_field: ts, batch_source: tx }}
feature_views:
  - name: txn
    entities: [card]
    source: tx_stream
    freshness_sla: 1h
    aggregations:
      - {{ function: count_star, windows: [1h, 2d] }}
      - {{ column: amount, function: sum, windows: [1h, 2d] }}
      - {{ column: amount, function: max, windows: [2d] }}
  - name: latest
    entities: [card]
    source: tx_stream
    features: [{{ name: amount, dtype: float64 }}]
"
    ))
}

/// One history row (card 3, three days before `t`, outside every window), applied and
/// ingested.
fn history_before(r: &Repo, t: i64) {
    r.parquet(
        "data/tx.parquet",
        vec![
            ("card", Arc::new(Int64Array::from(vec![3]))),
            ("ts", ts(vec![t - 3 * DAY])),
            ("amount", Arc::new(Float64Array::from(vec![1.0]))),
        ],
    );
    crate::common::cli_steps(r.path(), &[&["apply"], &["ingest"]]);
}

/// Events: (card, time, amount) as the JSON a producer writes.
fn json_event(card: i64, t: i64, amount: f64) -> String {
    format!(
        r#"{{"card": {card}, "ts": "{}", "amount": {amount}}}"#,
        quiver_core::time::format_timestamp(t)
    )
}

fn xadd(conn: &mut redis::Connection, key: &str, field: &str, payload: &str) {
    let _: String = redis::cmd("XADD")
        .arg(key)
        .arg("*")
        .arg(field)
        .arg(payload)
        .query(conn)
        .unwrap();
}

/// Served values at `t` of views `txn` (every aggregation) and `latest` for cards 0..4
/// next to the training values at `t` (which read the offline table: history plus the
/// stream's events), as text.
fn served_and_trained(store: &quiver::FeatureStore, t: i64) -> (Vec<String>, Vec<String>) {
    served_and_trained_of(store, 0..4, t)
}

/// [`served_and_trained`] for `cards`.
pub(crate) fn served_and_trained_of(
    store: &quiver::FeatureStore,
    cards: std::ops::Range<i64>,
    t: i64,
) -> (Vec<String>, Vec<String>) {
    let view = store.state().unwrap().serving_view("txn").unwrap();
    let mut features: Vec<String> = view
        .aggregations
        .iter()
        .map(|a| format!("txn:{}", a.name))
        .collect();
    features.push("latest:amount".into());
    crate::common::served_and_trained(store, "card", cards, &features, t)
}

fn stream_json(repo: &std::path::Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "--json",
        "stream",
        "--stop-when-idle",
        "--flush-interval",
        "1s",
    ];
    args.extend_from_slice(extra);
    let (ok, out, err) = crate::common::cli(repo, &args);
    assert!(ok, "quiver stream: {out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v.as_array().unwrap()[0].clone()
}

#[test]
fn redis_stream_events_are_served_once_and_bad_ones_dead_lettered() {
    let redis = quiver_redis::testing::standalone();
    let key = format!("tx-{}", std::process::id());
    let r = stream_repo(&redis.url(), &key);
    let now = quiver_core::time::now();
    let base = now - 30 * MIN;
    // History: two events of card 1 before the stream's.
    r.parquet(
        "data/tx.parquet",
        vec![
            ("card", Arc::new(Int64Array::from(vec![1, 1]))),
            ("ts", ts(vec![base - 10 * MIN, base - 9 * MIN])),
            ("amount", Arc::new(Float64Array::from(vec![2.5, -1.0]))),
        ],
    );
    let fmt = |t: i64| quiver_core::time::format_timestamp(t);
    crate::common::cli_steps(
        r.path(),
        &[
            &["apply"],
            &["ingest"],
            &["materialize", &fmt(base - DAY), &fmt(base)],
        ],
    );
    let mut conn = quiver_redis::testing::connect(&redis.url());
    let mut good = 0;
    for i in 0..60i64 {
        xadd(
            &mut conn,
            &key,
            "data",
            &json_event(i % 3, base + i * 1_000_000, i as f64 / 4.0),
        );
        good += 1;
    }
    // Bad events, each with its reason.
    let future = quiver_core::time::format_timestamp(now + 400 * DAY);
    for bad in [
        "not json".to_string(),
        r#"{"card": "seven", "ts": "2026-01-01T00:00:00Z", "amount": 1}"#.to_string(),
        format!(r#"{{"ts": "{}", "amount": 1}}"#, fmt(base)),
        format!(r#"{{"card": 1, "ts": "{future}", "amount": 1}}"#),
        format!(r#"{{"card": 1, "ts": "{}", "amount": "much"}}"#, fmt(base)),
    ] {
        xadd(&mut conn, &key, "data", &bad);
    }
    xadd(&mut conn, &key, "other", "{}");
    let s = stream_json(r.path(), &[]);
    assert_eq!(s["entries"], good + 6, "{s}");
    // Each bad entry is refused by both views; the good ones applied once by each.
    assert_eq!(s["dead_letters"], 12, "{s}");
    assert_eq!(s["applied"], 2 * good, "{s}");
    assert_eq!(s["replayed"], 0, "{s}");

    let store = r.store();
    let t = quiver_core::time::now();
    let (served, trained) = served_and_trained(&store, t);
    assert_eq!(served, trained);
    // The stream's events are served: card 0 has 20 of them in the last hour.
    assert!(
        served.contains(&"card 0 txn:count_star_1h: Int64(20)".to_string()),
        "{served:?}"
    );
    assert!(
        served.contains(&"card 1 txn:count_star_2d: Int64(22)".to_string()),
        "{served:?}"
    );

    let dead = store
        .offline()
        .read_table(&quiver_stream::dead_letter_table("tx_stream"))
        .block()
        .unwrap();
    let dead = arrow::compute::concat_batches(&dead[0].schema(), &dead).unwrap();
    assert_eq!(dead.num_rows(), 12);
    let reasons = dead.column_by_name("reason").unwrap();
    let reasons: Vec<String> = (0..dead.num_rows())
        .map(|i| {
            quiver_core::value::value_at(reasons.as_ref(), i)
                .unwrap()
                .to_string()
        })
        .collect();
    for want in [
        "no field 'data'",
        "later than the clock",
        "'card'",
        "amount",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(want)),
            "{want}: {reasons:?}"
        );
    }
    let payloads = dead.column_by_name("payload").unwrap().as_binary::<i32>();
    assert!(payloads.iter().any(|p| p == Some(b"not json".as_slice())));
    assert_eq!(
        payloads.null_count(),
        2,
        "the entries without the field, once per view"
    );

    // A rewind: the group reads every entry again, and nothing changes.
    let rows_before = store
        .offline()
        .row_count(&store.state().unwrap().serving_view("txn").unwrap())
        .block()
        .unwrap();
    let _: () = redis::cmd("XGROUP")
        .arg("SETID")
        .arg(&key)
        .arg("quiver")
        .arg("0")
        .query(&mut conn)
        .unwrap();
    let s = stream_json(r.path(), &[]);
    // The aggregated view finds every event applied; the snapshot view offers its rows
    // again, which change nothing (a row never replaces an equal or newer one).
    assert_eq!(s["replayed"], good, "{s}");
    assert_eq!(s["applied"], good, "{s}");
    let store = r.store();
    assert_eq!(served_and_trained(&store, t), (served.clone(), trained));
    let rows_after = store
        .offline()
        .row_count(&store.state().unwrap().serving_view("txn").unwrap())
        .block()
        .unwrap();
    assert_eq!(
        rows_after, rows_before,
        "a replayed event is stored once offline"
    );

    // An event alike in every value to an earlier one is another event: counted online
    // and stored offline (not taken for a replay).
    xadd(&mut conn, &key, "data", &json_event(0, base, 0.0));
    let s = stream_json(r.path(), &[]);
    assert_eq!(s["applied"], 2, "{s}");
    let store = r.store();
    let (served, trained) = served_and_trained(&store, t);
    assert_eq!(served, trained);
    assert!(
        served.contains(&"card 0 txn:count_star_1h: Int64(21)".to_string()),
        "{served:?}"
    );
    let view = store.state().unwrap().serving_view("txn").unwrap();
    assert_eq!(
        store.offline().row_count(&view).block().unwrap(),
        rows_before + 1
    );

    // An entry of two objects beside an entry of none: as many rows as entries, but
    // neither is one event — both dead letters, nothing applied.
    let two = format!("{}{}", json_event(1, base, 5.0), json_event(2, base, 6.0));
    xadd(&mut conn, &key, "data", &two);
    xadd(&mut conn, &key, "other", "{}");
    let s = stream_json(r.path(), &[]);
    assert_eq!(s["applied"], 0, "{s}");
    assert_eq!(s["dead_letters"], 4, "{s}");
    // An event cut short, whose end begins the next entry, which holds a whole one too:
    // as many rows as entries again, and neither entry is one event.
    let start = format!(r#"{{"card": 1, "ts": "{}","#, fmt(base));
    xadd(&mut conn, &key, "data", &start);
    let end = format!(r#""amount": 2}}{}"#, json_event(2, base, 6.0));
    xadd(&mut conn, &key, "data", &end);
    let s = stream_json(r.path(), &[]);
    assert_eq!(s["applied"], 0, "{s}");
    assert_eq!(s["dead_letters"], 4, "{s}");
    assert_eq!(served_and_trained(&r.store(), t).0, served);
}

/// The group's counters of `XINFO GROUPS`: (entries read, pending).
fn group_progress(conn: &mut redis::Connection, key: &str) -> (i64, i64) {
    let groups: Vec<redis::Value> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(key)
        .query(conn)
        .unwrap();
    let mut out = (0, 0);
    if let Some(redis::Value::Array(kv)) = groups.into_iter().next() {
        for pair in kv.chunks(2) {
            let name = match &pair[0] {
                redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                redis::Value::SimpleString(s) => s.clone(),
                _ => continue,
            };
            if let redis::Value::Int(n) = pair[1] {
                match name.as_str() {
                    "entries-read" => out.0 = n,
                    "pending" => out.1 = n,
                    _ => {}
                }
            }
        }
    }
    out
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_worker_killed_mid_stream_and_another_taking_over_count_every_event_once() {
    let redis = quiver_redis::testing::standalone();
    let key = format!("tx-kill-{}", std::process::id());
    let r = stream_repo(&redis.url(), &key);
    let base = quiver_core::time::now() - 40 * MIN;
    history_before(&r, base);
    let mut conn = quiver_redis::testing::connect(&redis.url());
    const N: i64 = 4000;
    let mut pipe = redis::pipe();
    for i in 0..N {
        // Out of order in event time, several on one time.
        let t = base + ((i * 7919) % N) * 500_000;
        pipe.cmd("XADD")
            .arg(&key)
            .arg("*")
            .arg("data")
            .arg(json_event(i % 4, t, ((i % 97) as f64 - 40.0) / 8.0))
            .ignore();
    }
    let _: () = pipe.query(&mut conn).unwrap();

    // A worker killed (SIGKILL) part way: some micro-batches written and acknowledged,
    // some applied online only, some read and not applied.
    let mut worker = std::process::Command::new(crate::common::quiver_bin())
        .arg("--repo")
        .arg(r.path())
        .args([
            "stream",
            "--consumer",
            "w1",
            "--lease",
            "1s",
            "--batch-size",
            "50",
            "--flush-rows",
            "300",
        ])
        .args(["--flush-interval", "50ms"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the first worker to read 1,000 entries", || {
        group_progress(&mut conn, &key).0 >= 1000
    });
    worker.kill().unwrap();
    worker.wait().unwrap();
    let (read, pending) = group_progress(&mut conn, &key);
    assert!(read < N, "killed before the end ({read} read)");

    // Another worker takes over the dead one's pending entries and reads the rest.
    let s = stream_json(r.path(), &["--consumer", "w2", "--lease", "1s"]);
    assert!(
        s["entries"].as_i64().unwrap() >= N - read + pending.min(1),
        "{s}"
    );
    assert_eq!(group_progress(&mut conn, &key).1, 0, "nothing left pending");

    let store = r.store();
    let t = quiver_core::time::now();
    let (served, trained) = served_and_trained(&store, t);
    assert_eq!(served, trained);
    for card in 0..4 {
        // (card 3's history row lies before the window)
        let want = N / 4;
        assert!(
            served.contains(&format!("card {card} txn:count_star_2d: Int64({want})")),
            "card {card}: {served:?}"
        );
    }
    let view = store.state().unwrap().serving_view("txn").unwrap();
    assert_eq!(
        store.offline().row_count(&view).block().unwrap(),
        N as u64 + 1
    );

    // SIGTERM: the worker writes what it read and exits 0.
    for i in 0..10 {
        xadd(
            &mut conn,
            &key,
            "data",
            &json_event(0, base + i * 1_000_000, 100.0),
        );
    }
    let worker = std::process::Command::new(crate::common::quiver_bin())
        .arg("--repo")
        .arg(r.path())
        .args(["stream", "--consumer", "w3", "--flush-interval", "1h"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the third worker to read the new entries", || {
        group_progress(&mut conn, &key).0 >= N + 10
    });
    let out = crate::common::stop_with_sigterm(worker);
    assert!(String::from_utf8_lossy(&out.stdout).contains("10 entries read"));
    assert_eq!(
        group_progress(&mut conn, &key).1,
        0,
        "acknowledged on the way out"
    );
    assert_eq!(
        store.offline().row_count(&view).block().unwrap(),
        N as u64 + 11
    );
}

/// Two workers on one Redis stream at once: one reads (the lease), the other stands by;
/// when the reader stops, the other takes over. Every event is counted once.
#[test]
fn two_redis_workers_read_a_stream_one_at_a_time() {
    let redis = quiver_redis::testing::standalone();
    let key = format!("tx-two-{}", std::process::id());
    let r = stream_repo(&redis.url(), &key);
    let base = quiver_core::time::now() - 40 * MIN;
    history_before(&r, base);
    let spawn = |name: &str| {
        std::process::Command::new(crate::common::quiver_bin())
            .arg("--repo")
            .arg(r.path())
            .args(["--json", "stream", "--consumer", name, "--lease", "1s"])
            .args(["--batch-size", "40", "--flush-interval", "50ms"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let stop = |w: std::process::Child| {
        let out = crate::common::stop_with_sigterm(w);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v[0]["entries"].as_i64().unwrap()
    };
    let (mut w1, w2) = (Some(spawn("w1")), spawn("w2"));
    let mut conn = quiver_redis::testing::connect(&redis.url());
    const N: i64 = 2000;
    for chunk in 0..10 {
        let mut pipe = redis::pipe();
        for i in chunk * N / 10..(chunk + 1) * N / 10 {
            let t = base + ((i * 7919) % N) * 500_000;
            pipe.cmd("XADD")
                .arg(&key)
                .arg("*")
                .arg("data")
                .arg(json_event(i % 4, t, (i % 7) as f64))
                .ignore();
        }
        let _: () = pipe.query(&mut conn).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(30));
        if chunk == 5 {
            // The reader stops part way; the other takes over what is left.
            let first = stop(w1.take().expect("stopped once"));
            assert!(first < N, "{first}");
            let w3 = spawn("w3");
            wait_for("the stream to be read", || {
                let (read, pending) = group_progress(&mut conn, &key);
                read >= N * 6 / 10 && pending == 0
            });
            let _ = stop(w3);
        }
    }
    wait_for("the stream to be read and acknowledged", || {
        let (read, pending) = group_progress(&mut conn, &key);
        read >= N && pending == 0
    });
    let _ = stop(w2);
    let store = r.store();
    let t = quiver_core::time::now();
    let (served, trained) = served_and_trained(&store, t);
    assert_eq!(served, trained);
    for card in 0..4 {
        assert!(
            served.contains(&format!("card {card} txn:count_star_2d: Int64({})", N / 4)),
            "card {card}: {served:?}"
        );
    }
    let view = store.state().unwrap().serving_view("txn").unwrap();
    assert_eq!(
        store.offline().row_count(&view).block().unwrap(),
        N as u64 + 1
    );
}

/// `--metrics-addr`: the worker's Prometheus metrics, per view and partition.
#[test]
fn the_worker_serves_its_metrics() {
    use std::io::{Read, Write};
    let redis = quiver_redis::testing::standalone();
    let key = format!("tx-metrics-{}", std::process::id());
    let r = stream_repo(&redis.url(), &key);
    let now = quiver_core::time::now();
    history_before(&r, now);
    let port = quiver_redis::testing::free_port();
    let addr = format!("127.0.0.1:{port}");
    let worker = std::process::Command::new(crate::common::quiver_bin())
        .arg("--repo")
        .arg(r.path())
        .args([
            "stream",
            "--metrics-addr",
            &addr,
            "--flush-interval",
            "50ms",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut conn = quiver_redis::testing::connect(&redis.url());
    let newest = now - 10 * MIN;
    for i in 0..5 {
        xadd(
            &mut conn,
            &key,
            "data",
            &json_event(i, newest - i * MIN, 1.0),
        );
    }
    xadd(&mut conn, &key, "data", "not json");
    wait_for("the worker to read everything", || {
        group_progress(&mut conn, &key) == (6, 0)
    });
    let scrape = || {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    let text = scrape();
    let partition = format!("redis:{key}");
    for line in [
        "quiver_stream_entries_total{source=\"tx_stream\"} 6".to_string(),
        format!(
            "quiver_stream_events_applied_total{{feature_view=\"txn\",partition=\"{partition}\"}} 5"
        ),
        format!(
            "quiver_stream_dead_letters_total{{feature_view=\"latest\",partition=\"{partition}\"}} 1"
        ),
        format!(
            "quiver_stream_newest_event_time_seconds{{feature_view=\"txn\",partition=\"{partition}\"}} {}",
            newest as f64 / 1e6
        ),
        format!("quiver_stream_lag_entries{{source=\"tx_stream\",partition=\"{partition}\"}} 0"),
    ] {
        assert!(text.contains(&line), "{line} in:\n{text}");
    }
    crate::common::stop_with_sigterm(worker);
}

#[test]
fn describe_and_status_show_what_the_workers_applied() {
    let redis = quiver_redis::testing::standalone();
    let key = format!("tx-fresh-{}", std::process::id());
    let r = stream_repo(&redis.url(), &key);
    let now = quiver_core::time::now();
    history_before(&r, now);
    let mut conn = quiver_redis::testing::connect(&redis.url());
    let newest = now - 10 * MIN;
    for i in 0..5 {
        xadd(
            &mut conn,
            &key,
            "data",
            &json_event(i, newest - i * MIN, 1.0),
        );
    }
    xadd(&mut conn, &key, "data", "not json");
    stream_json(r.path(), &[]);
    // A second worker run adds to the record of the first.
    for i in 0..3 {
        xadd(
            &mut conn,
            &key,
            "data",
            &json_event(i, newest - (10 + i) * MIN, 1.0),
        );
    }
    stream_json(r.path(), &[]);

    let json = |args: &[&str]| crate::common::cli_json(r.path(), args);
    let described = json(&["describe", "txn"]);
    let stream = &described["stream"];
    assert_eq!(stream["source"], "tx_stream", "{described}");
    let partitions = stream["partitions"].as_array().unwrap();
    assert_eq!(partitions.len(), 1, "{stream}");
    let p = &partitions[0];
    assert_eq!(p["partition"], format!("redis:{key}"), "{p}");
    assert_eq!(p["applied"], 8, "{p}");
    assert_eq!(p["dead_letters"], 1, "{p}");
    assert_eq!(p["lag_events"], 0, "{p}");
    assert_eq!(
        p["newest_event"],
        quiver_core::time::format_timestamp(newest),
        "{p}"
    );
    assert!(p["behind_seconds"].as_f64().unwrap() >= 600.0, "{p}");
    // A view over a file source has no stream section.
    let (ok, out, _) = crate::common::cli(r.path(), &["--json", "describe", "tx"]);
    assert!(ok && !out.contains("\"partitions\""), "{out}");

    // Against the SLA of 1h: within it, beyond it, beyond twice it.
    for (after, state) in [(30 * MIN, "ok"), (90 * MIN, "late"), (150 * MIN, "alert")] {
        let at = quiver_core::time::format_timestamp(newest + after);
        let status = json(&["status", "--at", &at]);
        let txn = status
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["view"] == "txn")
            .unwrap();
        assert_eq!(txn["state"], state, "at {at}: {status}");
        assert_eq!(
            txn["online_until"],
            quiver_core::time::format_timestamp(newest),
            "{txn}"
        );
        assert_eq!(
            txn["age_seconds"].as_f64().unwrap(),
            (after / 1_000_000) as f64
        );
        let latest = status
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["view"] == "latest")
            .unwrap();
        assert_eq!(latest["state"], "no_sla", "{status}");
    }
    let (ok, out, err) = crate::common::cli(r.path(), &["status"]);
    assert!(
        ok && out.contains("STATE") && out.contains("txn"),
        "{out}{err}"
    );
}

#[test]
fn micro_batch_files_are_compacted_and_every_event_kept() {
    let redis = quiver_redis::testing::standalone();
    let key = format!("tx-compact-{}", std::process::id());
    let r = stream_repo(&redis.url(), &key);
    let now = quiver_core::time::now();
    history_before(&r, now);
    let mut conn = quiver_redis::testing::connect(&redis.url());
    // 40 events of one day (identical pairs included: both are kept), read two at a
    // time, each pair its own micro-batch.
    let day_start = now - now.rem_euclid(DAY);
    let t0 = if now - day_start > 2 * HOUR {
        now - HOUR
    } else {
        day_start - 3 * HOUR
    };
    for i in 0..40 {
        xadd(
            &mut conn,
            &key,
            "data",
            &json_event(i % 4, t0 - (i / 2) * MIN, 1.0),
        );
    }
    let files = |store: &quiver::FeatureStore| {
        let view = store.state().unwrap().serving_view("txn").unwrap();
        let files = store.offline().data_files(&view).block().unwrap();
        let rows = store.offline().row_count(&view).block().unwrap();
        (files.len(), rows)
    };
    let stats = stream_json(
        r.path(),
        &[
            "--batch-size",
            "2",
            "--flush-rows",
            "2",
            "--compact-files",
            "8",
        ],
    );
    // 20 micro-batches of each view; the aggregated view's append a file each, merged
    // after 8 (8 files) and 16 (the merged one and 8 more), leaving 1 + 4 in the day
    // and the history's file (the snapshot view's micro-batches rewrite its partition).
    assert_eq!(stats["flushes"], 40, "{stats}");
    assert_eq!(stats["files_compacted"], 8 + 9, "{stats}");
    let store = r.store();
    let (n, rows) = files(&store);
    assert_eq!(n, 1 + 5);
    assert_eq!(rows, 41);
    let (served, trained) = served_and_trained(&store, now);
    assert_eq!(served, trained);

    // A compaction killed before its commit leaves the table as it was.
    crate::common::stopped_at(
        r.path(),
        &["compact", "--min-files", "2"],
        "compact.before_commit",
    );
    let store = r.store();
    assert_eq!(files(&store), (n, 41));
    assert_eq!(
        served_and_trained(&store, now),
        (served.clone(), trained.clone())
    );

    // `quiver compact` merges what is left: one file per day partition.
    let (ok, out, err) = crate::common::cli(r.path(), &["compact", "--min-files", "2"]);
    assert!(ok && out.contains("offline files merged"), "{out}{err}");
    let store = r.store();
    assert_eq!(files(&store), (2, 41));
    assert_eq!(served_and_trained(&store, now), (served, trained));
}

/// A changed definition of one tile group (here the shortest hop's, which gets a new
/// online field) keeps the stream's exactly-once effect for the others: a rewind after
/// the change replays a range whose events the unchanged groups already hold, and their
/// values stay those of each event counted once.
#[test]
fn a_rewind_after_one_group_changes_counts_no_event_twice_in_the_others() {
    const BEFORE: &str = crate::common::user_events_view!(
        "      - { function: count_star, windows: [30m] }
      - { column: x, function: sum, windows: [2d] }
"
    );
    let r = Repo::new(BEFORE);
    let events: Vec<Ev> = (0..60).map(|i| (i % 3, i * 7, Some(i as f64))).collect();
    r.parquet("data/ev.parquet", cols(&events));
    let now = 421 * MIN;
    let stream_all = |store: &quiver::FeatureStore| {
        let view = store.state().unwrap().serving_view("w").unwrap();
        apply_range(store, &view, &events, 0, events.len(), now)
    };
    let store = r.store();
    store.apply().block().unwrap();
    store.ingest().block().unwrap();
    assert_eq!(stream_all(&store).applied, events.len() as u64);
    let sum = ["w:x_sum_2d".to_string()];
    let before = crate::common::served_and_trained(&store, "user_id", 0..KEYS, &sum, now);
    assert_eq!(before.0, before.1);

    // The 30-minute group gains an aggregation; the 2-day one is unchanged.
    r.write(
        "features.yaml",
        &format!("{BEFORE}      - {{ column: x, function: max, windows: [30m] }}\n"),
    );
    let store = r.store();
    store.apply().block().unwrap();
    let replay = stream_all(&store);
    assert_eq!(replay.replayed, events.len() as u64, "{replay:?}");
    let after = crate::common::served_and_trained(&store, "user_id", 0..KEYS, &sum, now);
    assert_eq!(after.0, after.1);
}

/// A store written by versions that kept the stream position per tile layer (the first
/// group's hop layer holding it, as every layer did): a replay of what it applied is
/// left out, and events past it are applied and recorded under the view's position.
#[test]
fn positions_kept_per_tile_layer_by_earlier_versions_still_stop_replays() {
    use quiver_online::tiles::{KeyMerge, StreamPosition};
    let r = Repo::new(DEFS);
    let events: Vec<Ev> = (0..40).map(|i| (i % 3, i * 5, Some(i as f64))).collect();
    r.parquet("data/ev.parquet", cols(&events));
    let store = r.store();
    store.apply().block().unwrap();
    store.ingest().block().unwrap();
    let view = store.state().unwrap().serving_view("w").unwrap();
    let groups = view.tile_groups().unwrap();
    // Offsets 0..30 applied by an earlier version: its position under the first
    // group's hop field for every key (its tiles do not matter here).
    let online = store.online().block().unwrap();
    let keys: Vec<Vec<u8>> = (0..KEYS)
        .map(|k| {
            let mut part = Vec::new();
            let col = Int64Array::from(vec![k]);
            quiver_core::encoding::encode_key_part(&col, 0, &mut part).unwrap();
            quiver_online::entity_key(&view.project, &view.entity_set(), &part)
        })
        .collect();
    let merges: Vec<KeyMerge<'_>> = keys
        .iter()
        .map(|k| KeyMerge {
            key: k,
            view: groups[0].field,
            position: Some(StreamPosition {
                partition: b"p0",
                offset: 29,
                follows: None,
            }),
            tiles: &[],
        })
        .collect();
    let merger = |_: Option<&[u8]>, d: &[u8], out: &mut Vec<u8>| {
        out.extend_from_slice(d);
        Ok(())
    };
    online.merge_tiles(&merges, &merger).block().unwrap();

    let apply = |from: usize, to: usize| apply_range(&store, &view, &events, from, to, 250 * MIN);
    let s = apply(20, 35);
    assert_eq!((s.replayed, s.applied), (10, 5), "{s:?}");
    let s = apply(0, 40);
    assert_eq!((s.replayed, s.applied), (35, 5), "{s:?}");
    let p = online
        .stream_positions(&[&keys[0]], view.online_field(), b"p0")
        .block()
        .unwrap();
    assert_eq!(p, vec![Some(39)]);
}
