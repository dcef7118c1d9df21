//! Aggregated feature views in training sets: every label row at its time T gets each
//! aggregation over `[align(T − w, hop), T)` of its key's events, in input order, next
//! to snapshot features of the same request — checked against the window folded here by
//! plain arithmetic.

use quiver::testing::Block;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int64Array, StringArray};
use arrow::datatypes::{Float64Type, Int64Type};

use crate::common::{batch, cli, cli_steps, ts, Repo};

const MIN: i64 = 60_000_000;

const DEFS: &str = "\
entities:
  - name: card
    join_keys: [card_id]
sources:
  - name: txns
    type: file
    path: data/txns.parquet
    timestamp_field: ts
  - name: cards
    type: file
    path: data/cards.parquet
    timestamp_field: ts
feature_views:
  - name: card_txn
    entities: [card]
    source: txns
    aggregations:
      - { column: amount, function: sum, windows: [1h] }
      - { function: count_star, windows: [1h] }
      - { column: amount, function: max, windows: [1d] }
      - { column: amount, function: last, windows: [1h] }
      - { column: merchant, function: last_n, n: 2, windows: [1d] }
  - name: card_profile
    entities: [card]
    source: cards
    features:
      - { name: tier, dtype: string }
on_demand_feature_views:
  - name: ratio
    sources: [card_txn]
    features:
      - { name: sum_per_event, dtype: float64, expr: \"amount_sum_1h / nullif(count_star_1h, 0)\" }
";

/// (card, minute, amount, merchant): events out of order, ties on time, nulls.
const EVENTS: &[(i64, i64, Option<f64>, &str)] = &[
    (1, 10, Some(5.0), "a"),
    (1, 3, Some(1.25), "b"),
    (1, 10, Some(2.5), "c"),
    (1, 55, None, "d"),
    (1, 65, Some(-4.0), "e"),
    (1, 120, Some(7.75), "f"),
    (2, 0, Some(100.0), "g"),
    (2, 59, Some(0.5), "h"),
];

/// (card, minute) labels, unsorted, on and off hop edges, at an event's exact time,
/// for a card with no events, repeated.
const LABELS: &[(i64, i64)] = &[
    (1, 65),
    (1, 10),
    (2, 60),
    (9, 30),
    (1, 11),
    (1, 125),
    (2, 60),
    (1, 0),
    (1, 61),
];

fn align(t: i64, hop: i64) -> i64 {
    t - t.rem_euclid(hop)
}

#[test]
fn training_sets_of_aggregated_views_fold_each_labels_window() {
    scenario(Repo::new(DEFS));
}

/// The same on Redis and on a Redis Cluster: tiles merged and read by those backends.
#[test]
fn aggregated_views_materialize_and_serve_on_redis_and_redis_cluster() {
    let redis = quiver_redis::testing::standalone();
    let cluster = quiver_redis::testing::cluster();
    let nodes: Vec<String> = cluster.nodes().iter().map(|n| format!("\"{n}\"")).collect();
    for (i, store) in [
        format!("{{ type: redis, url: \"{}\" }}", redis.url()),
        format!("{{ type: redis, cluster: [{}] }}", nodes.join(", ")),
    ]
    .iter()
    .enumerate()
    {
        let repo = Repo::new(DEFS);
        repo.write(
            "quiver.yaml",
            &format!(
                "project: agg{i}_{}_{}\nregistry: data/registry\n\
                 offline_store: {{ type: delta, path: data/offline }}\n\
                 online_store: {store}\n",
                std::process::id(),
                quiver_core::time::now()
            ),
        );
        scenario(repo);
    }
}

/// Ingest, training set, materialization and online reads of the test's views in `repo`.
fn scenario(repo: Repo) {
    repo.parquet(
        "data/txns.parquet",
        vec![
            (
                "card_id",
                Arc::new(Int64Array::from_iter_values(EVENTS.iter().map(|e| e.0))),
            ),
            ("ts", ts(EVENTS.iter().map(|e| e.1 * MIN).collect())),
            (
                "amount",
                Arc::new(Float64Array::from(
                    EVENTS.iter().map(|e| e.2).collect::<Vec<_>>(),
                )),
            ),
            (
                "merchant",
                Arc::new(StringArray::from(
                    EVENTS.iter().map(|e| e.3).collect::<Vec<_>>(),
                )),
            ),
        ],
    );
    repo.parquet(
        "data/cards.parquet",
        vec![
            ("card_id", Arc::new(Int64Array::from(vec![1, 2]))),
            ("ts", ts(vec![0, 0])),
            ("tier", Arc::new(StringArray::from(vec!["gold", "blue"]))),
        ],
    );
    let (ok, out, err) = cli(repo.path(), &["apply"]);
    assert!(ok, "{out}{err}");
    let (ok, _, err) = cli(repo.path(), &["ingest"]);
    assert!(ok, "{err}");

    let labels = batch(vec![
        (
            "card_id",
            Arc::new(Int64Array::from_iter_values(LABELS.iter().map(|l| l.0))),
        ),
        (
            "event_timestamp",
            ts(LABELS.iter().map(|l| l.1 * MIN).collect()),
        ),
    ]);
    let store = repo.store();
    let out = store
        .historical()
        .entities(labels)
        .features([
            "card_txn:amount_sum_1h",
            "card_profile:tier",
            "card_txn:count_star_1h",
            "card_txn:amount_max_1d",
            "card_txn:amount_last_1h",
            "card_txn:merchant_last_2_1d",
        ])
        .block()
        .unwrap();
    let schema = out.schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(
        names,
        [
            "card_id",
            "event_timestamp",
            "amount_sum_1h",
            "tier",
            "count_star_1h",
            "amount_max_1d",
            "amount_last_1h",
            "merchant_last_2_1d"
        ]
    );
    let sum = out.column(2).as_primitive::<Float64Type>();
    let tier = out.column(3).as_string::<i32>();
    let count = out.column(4).as_primitive::<Int64Type>();
    let max = out.column(5).as_primitive::<Float64Type>();
    let last = out.column(6).as_primitive::<Float64Type>();
    let last2 = out.column(7).as_list::<i32>();
    for (i, &(card, minute)) in LABELS.iter().enumerate() {
        let t = minute * MIN;
        let window = |w: i64, hop: i64| {
            let lo = align(t - w, hop);
            EVENTS
                .iter()
                .filter(move |e| e.0 == card && e.1 * MIN >= lo && e.1 * MIN < t)
        };
        // 1h windows: 5m hops; 1d: 1h hops (the defaults).
        let in_1h: Vec<_> = window(60 * MIN, 5 * MIN).collect();
        let amounts: Vec<f64> = in_1h.iter().filter_map(|e| e.2).collect();
        let ctx = format!("label {i} (card {card}, minute {minute})");
        if amounts.is_empty() {
            assert!(sum.is_null(i), "{ctx}");
            assert!(last.is_null(i), "{ctx}");
        } else {
            assert_eq!(sum.value(i), amounts.iter().sum::<f64>(), "{ctx}");
            // The latest event with a value; ties on time by the value.
            let latest = in_1h
                .iter()
                .filter(|e| e.2.is_some())
                .max_by(|a, b| a.1.cmp(&b.1).then(a.2.unwrap().total_cmp(&b.2.unwrap())))
                .unwrap();
            assert_eq!(last.value(i), latest.2.unwrap(), "{ctx}");
        }
        assert_eq!(count.value(i), in_1h.len() as i64, "{ctx}");
        let in_1d: Vec<_> = window(24 * 60 * MIN, 60 * MIN).collect();
        match in_1d
            .iter()
            .filter_map(|e| e.2)
            .max_by(|a, b| a.total_cmp(b))
        {
            Some(m) => assert_eq!(max.value(i), m, "{ctx}"),
            None => assert!(max.is_null(i), "{ctx}"),
        }
        let mut by_time: Vec<_> = in_1d.clone();
        by_time.sort_by(|a, b| b.1.cmp(&a.1).then(b.3.cmp(a.3)));
        let want: Vec<&str> = by_time.iter().take(2).map(|e| e.3).collect();
        let got = last2.value(i);
        let got: Vec<&str> = got.as_string::<i32>().iter().map(|s| s.unwrap()).collect();
        assert_eq!(got, want, "{ctx}");
        // The snapshot view of the same request.
        match card {
            1 => assert_eq!(tier.value(i), "gold"),
            2 => assert_eq!(tier.value(i), "blue"),
            _ => assert!(tier.is_null(i)),
        }
    }
    // Spot checks that the windows are what they say: at 1:05 the 1h window (5m hops)
    // starts at 0:05, so the events at 0:10 (5.0 and 2.5) count and the one at 0:03 not.
    assert_eq!(sum.value(0), 7.5);
    assert_eq!(count.value(0), 3);
    // An event at exactly T is not counted: at 0:10 only the 0:03 event.
    assert_eq!(sum.value(1), 1.25);
    // An unknown card: count 0, sum null.
    assert_eq!((count.value(3), sum.is_null(3)), (0, true));

    // Events equal in key and time are distinct events, all stored, and a re-ingest of
    // the same source keeps one copy of each.
    let view = store.state().unwrap().resolved_view("card_txn").unwrap();
    assert_eq!(
        store.offline().row_count(&view).block().unwrap(),
        EVENTS.len() as u64
    );
    let (ok, _, err) = cli(repo.path(), &["ingest"]);
    assert!(ok, "{err}");
    assert_eq!(
        store.offline().row_count(&view).block().unwrap(),
        EVENTS.len() as u64
    );

    // Materialized: the tiles in the online store, read at a time after every event,
    // give the training-set values bit for bit; a rerun leaves the same bytes.
    let t = 200 * MIN;
    let range = [
        "materialize",
        "1970-01-01T00:00:00Z",
        "1970-01-01T03:20:00Z",
    ];
    let (ok, _, err) = cli(repo.path(), &range);
    assert!(ok, "{err}");
    let cards = [1i64, 2, 9];
    let labels = batch(vec![
        ("card_id", Arc::new(Int64Array::from(cards.to_vec()))),
        ("event_timestamp", ts(vec![t; cards.len()])),
    ]);
    let names: Vec<String> = view.aggregations.iter().map(|a| a.name.clone()).collect();
    let training = store
        .historical()
        .entities(labels)
        .features(names.iter().map(|n| format!("card_txn:{n}")))
        .block()
        .unwrap();
    let online = store.online().block().unwrap();
    let groups = view.tile_groups().unwrap();
    let read_all = || {
        let mut raw = Vec::new();
        for (row, card) in cards.iter().enumerate() {
            let mut enc = Vec::new();
            quiver_core::encoding::encode_key_part(&Int64Array::from(vec![*card]), 0, &mut enc)
                .unwrap();
            let key = quiver_online::entity_key(&view.project, &view.entity_set(), &enc);
            for g in &groups {
                let longest = g.windows.iter().copied().max().unwrap();
                let starts = quiver_core::agg::tile::tile_starts(t, longest, g.hop);
                let stored = online
                    .read_tiles(&[key.as_slice()], g.field, &starts)
                    .block()
                    .unwrap();
                let tiles: Vec<_> = starts
                    .iter()
                    .zip(&stored)
                    .filter_map(|(s, b)| b.as_ref().map(|b| (*s, g.layout.decode(b).unwrap())))
                    .collect();
                let values =
                    quiver_core::agg::tile::values_of(&g.layout, &g.outputs, g.hop, &tiles, t);
                for (&m, v) in g.members.iter().zip(values) {
                    let name = &view.aggregations[m].name;
                    let col = training.column_by_name(name).unwrap();
                    let want = quiver_core::value::value_at(col.as_ref(), row).unwrap();
                    assert_eq!(v.unwrap(), want, "card {card}, {name}");
                }
                raw.push(stored);
            }
        }
        raw
    };
    let first = read_all();
    assert!(
        first.iter().flatten().any(|b| b.is_some()),
        "tiles were written"
    );
    let (ok, _, err) = cli(repo.path(), &range);
    assert!(ok, "{err}");
    assert_eq!(read_all(), first, "a rerun leaves the same bytes");
    // A backfill of the same range too; one of an older range leaves the high-water
    // mark; a snapshot view is not backfilled.
    let (ok, _, err) = cli(repo.path(), &["backfill", range[1], range[2]]);
    assert!(ok, "{err}");
    assert_eq!(read_all(), first, "a backfill leaves the same bytes");
    // An end inside a tile (0:32) recomputes that tile whole, never from part of it.
    let (ok, _, err) = cli(
        repo.path(),
        &[
            "backfill",
            "1970-01-01T00:00:00Z",
            "1970-01-01T00:32:00Z",
            "--views",
            "card_txn",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(
        read_all(),
        first,
        "a backfill ending inside a tile keeps it whole"
    );
    // The CLI wrote the registry: look at it now (a store notices another process's
    // write within REGISTRY_RECHECK, so a read just after may still see the last one).
    store.refresh().unwrap();
    let mark = store.state().unwrap().feature_views["card_txn"]
        .materialized
        .as_ref()
        .unwrap()
        .end;
    assert_eq!(mark, t);
    let (ok, _, err) = cli(
        repo.path(),
        &["backfill", range[1], range[2], "--views", "card_profile"],
    );
    assert!(!ok && err.contains("snapshot view"), "{err}");

    // Served: an online read at t gives the training-set values, PRESENT when the
    // window holds an event of the card and MISSING (with the empty window's value)
    // otherwise.
    let served = serve_cards(
        &store,
        names.iter().map(|n| format!("card_txn:{n}")),
        &cards,
        t,
    );
    for (row, card) in cards.iter().enumerate() {
        for (i, name) in names.iter().enumerate() {
            let col = training.column_by_name(name).unwrap();
            let want = quiver_core::value::value_at(col.as_ref(), row).unwrap();
            assert_eq!(served.rows[row].values[i], want, "card {card}, {name}");
            let (w, hop) = if name.ends_with("_1h") {
                (60 * MIN, 5 * MIN)
            } else {
                (24 * 60 * MIN, 60 * MIN)
            };
            let lo = align(t - w, hop);
            let any = EVENTS
                .iter()
                .any(|e| e.0 == *card && e.1 * MIN >= lo && e.1 * MIN < t);
            let status = if any {
                quiver::FeatureStatus::Present
            } else {
                quiver::FeatureStatus::Missing
            };
            assert_eq!(served.rows[row].statuses[i], status, "card {card}, {name}");
        }
    }

    // On-demand features over aggregated ones: served as trained.
    let labels = batch(vec![
        ("card_id", Arc::new(Int64Array::from(cards.to_vec()))),
        ("event_timestamp", ts(vec![t - 90 * MIN; cards.len()])),
    ]);
    let trained = store
        .historical()
        .entities(labels)
        .features(["ratio:sum_per_event"])
        .block()
        .unwrap();
    let served = serve_cards(&store, ["ratio:sum_per_event"], &cards, t - 90 * MIN);
    for (row, card) in cards.iter().enumerate() {
        let want = quiver_core::value::value_at(trained.column(2).as_ref(), row).unwrap();
        assert_eq!(served.rows[row].values[0], want, "card {card}");
    }
    // Card 1 at 1:50: the 1h window [0:50, 1:50) holds a null and -4.0: -4.0 / 2.
    assert_eq!(served.rows[0].values[0], quiver::Value::Float64(-2.0));

    // Pushed events go offline and online together; the tiles they fall in are
    // recomputed from the stored events, so pushing the same events again changes
    // nothing, and served values equal the training set's.
    let pushed = batch(vec![
        ("card_id", Arc::new(Int64Array::from(vec![1, 1, 3]))),
        ("ts", ts(vec![205 * MIN, 206 * MIN, 207 * MIN])),
        ("amount", Arc::new(Float64Array::from(vec![1.5, 2.5, 9.0]))),
        ("merchant", Arc::new(StringArray::from(vec!["x", "y", "z"]))),
    ]);
    let input = quiver::write::Input {
        timestamp_field: "ts",
        created_field: None,
        origin: quiver_offline::normalize::Origin {
            file: "push",
            first_row: 0,
        },
        not_after: i64::MAX,
    };
    let both = quiver::write::Targets {
        online: true,
        offline: true,
    };
    for _ in 0..2 {
        let b = quiver::write::validate(&view, &pushed, &input).unwrap();
        quiver::write::write(&store, &view, vec![b], both)
            .block()
            .unwrap();
    }
    let only_online = quiver::write::Targets {
        online: true,
        offline: false,
    };
    let b = quiver::write::validate(&view, &pushed, &input).unwrap();
    let e = quiver::write::write(&store, &view, vec![b], only_online)
        .block()
        .unwrap_err();
    assert!(e.to_string().contains("online_and_offline"), "{e}");
    let t2 = 210 * MIN;
    let cards2 = [1i64, 3];
    let labels = batch(vec![
        ("card_id", Arc::new(Int64Array::from(cards2.to_vec()))),
        ("event_timestamp", ts(vec![t2; 2])),
    ]);
    let trained = store
        .historical()
        .entities(labels)
        .features(names.iter().map(|n| format!("card_txn:{n}")))
        .block()
        .unwrap();
    for (row, card) in cards2.iter().enumerate() {
        let served = serve_cards(
            &store,
            names.iter().map(|n| format!("card_txn:{n}")),
            &[*card],
            t2,
        );
        for (i, name) in names.iter().enumerate() {
            let col = trained.column_by_name(name).unwrap();
            let want = quiver_core::value::value_at(col.as_ref(), row).unwrap();
            assert_eq!(
                served.rows[0].values[i], want,
                "pushed, card {card}, {name}"
            );
        }
    }
    let col = trained.column_by_name("count_star_1h").unwrap();
    assert_eq!(
        quiver_core::value::value_at(col.as_ref(), 0).unwrap(),
        quiver::Value::Int64(2),
        "each pushed event counted once"
    );

    // Compaction deletes the tiles no window reads at the current time (these events
    // are from 1970: all of them).
    let (ok, out, err) = cli(repo.path(), &["compact"]);
    assert!(ok, "{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with("card_txn:"))
        .unwrap_or_default();
    assert!(!line.is_empty() && !line.contains(", 0 old tiles"), "{out}");
    assert!(read_tiles_left(&store, &view, t) == 0, "every tile is gone");
}

/// An online read of `features` for `cards` (one row each, in order) at `at`.
fn serve_cards<S: Into<String>>(
    store: &quiver::FeatureStore,
    features: impl IntoIterator<Item = S>,
    cards: &[i64],
    at: i64,
) -> quiver::OnlineResult {
    let mut read = store.online_features().features(features).at(at);
    for &card in cards {
        read = read.entity_row(std::collections::BTreeMap::from([(
            "card_id".to_string(),
            quiver::Value::Int64(card),
        )]));
    }
    read.block().unwrap()
}

/// How many of `view`'s tiles a read at `t` would find, over cards 1 and 2.
fn read_tiles_left(
    store: &quiver::FeatureStore,
    view: &quiver_core::model::ResolvedView,
    t: i64,
) -> usize {
    let online = store.online().block().unwrap();
    let mut left = 0;
    for card in [1i64, 2] {
        let mut enc = Vec::new();
        quiver_core::encoding::encode_key_part(&Int64Array::from(vec![card]), 0, &mut enc).unwrap();
        let key = quiver_online::entity_key(&view.project, &view.entity_set(), &enc);
        for g in view.tile_groups().unwrap() {
            let longest = g.windows.iter().copied().max().unwrap();
            let starts = quiver_core::agg::tile::tile_starts(t, longest, g.hop);
            let got = online
                .read_tiles(&[key.as_slice()], g.field, &starts)
                .block()
                .unwrap();
            left += got.iter().filter(|b| b.is_some()).count();
        }
    }
    left
}

/// `retention:` keeps an aggregated view's tiles for reads in the past: materialization
/// writes them back to the retention and compaction deletes only older ones, so a read
/// two days back still equals the training set there. Without it, only what the
/// windows read at the current time is kept, and that read finds no tile (MISSING).
#[test]
fn retention_keeps_tiles_for_reads_in_the_past() {
    let hour = 60 * MIN;
    let now = quiver_core::time::now();
    let event = align(now - 48 * hour, hour) + 10 * MIN;
    let at = event + 30 * MIN;
    for (retention, kept) in [("    retention: 3d\n", true), ("", false)] {
        let repo = Repo::new(&format!(
            "entities:\n  - name: card\n    join_keys: [card_id]\n\
             sources:\n  - {{ name: txns, type: file, path: data/txns.parquet, timestamp_field: ts }}\n\
             feature_views:\n  - name: recent\n    entities: [card]\n    source: txns\n{retention}\
             \x20   aggregations:\n      - {{ function: count_star, windows: [1h] }}\n"
        ));
        repo.parquet(
            "data/txns.parquet",
            vec![
                ("card_id", Arc::new(Int64Array::from(vec![1i64, 1]))),
                ("ts", ts(vec![event, event + MIN])),
            ],
        );
        cli_steps(
            repo.path(),
            &[
                &["apply"],
                &["ingest"],
                &["materialize-incremental"],
                &["compact"],
            ],
        );
        let store = quiver::FeatureStore::open(repo.path()).unwrap();
        let trained = store
            .historical()
            .entities(batch(vec![
                ("card_id", Arc::new(Int64Array::from(vec![1i64]))),
                ("event_timestamp", ts(vec![at])),
            ]))
            .features(["recent:count_star_1h"])
            .block()
            .unwrap();
        let want = quiver_core::value::value_at(trained.column(2).as_ref(), 0).unwrap();
        assert_eq!(want, quiver::Value::Int64(2));
        let served = serve_cards(&store, ["recent:count_star_1h"], &[1], at);
        let row = &served.rows[0];
        if kept {
            assert_eq!(row.values[0], want, "with retention");
            assert_eq!(row.statuses[0], quiver::FeatureStatus::Present);
        } else {
            assert_eq!(row.values[0], quiver::Value::Int64(0), "without retention");
            assert_eq!(row.statuses[0], quiver::FeatureStatus::Missing);
        }
    }
}

/// Windows of several days are served from day tiles for their whole days (written by
/// materialization beside the hour tiles, kept by compaction within the retention) and
/// from hour tiles for their partial days: at reads on and off hour and day boundaries
/// every value equals the training value at the same time — beside a 30-day window,
/// whose hop is a day (no day tiles of its own).
#[test]
fn long_windows_are_served_from_day_tiles_like_training_sets() {
    let (hour, day) = (60 * MIN, 24 * 60 * MIN);
    let now = quiver_core::time::now();
    let base = align(now - day, day);
    let repo = Repo::new(
        "entities:\n  - name: card\n    join_keys: [card_id]\n\
         sources:\n  - { name: txns, type: file, path: data/txns.parquet, timestamp_field: ts }\n\
         feature_views:\n  - name: spend\n    entities: [card]\n    source: txns\n    retention: 32d\n\
         \x20   aggregations:\n      - { function: count_star, windows: [1d, 7d] }\n\
         \x20     - { column: amount, function: sum, windows: [3d, 7d] }\n\
         \x20     - { column: amount, function: mean, windows: [2d] }\n\
         \x20     - { column: amount, function: max, windows: [7d] }\n\
         \x20     - { column: amount, function: last, windows: [7d] }\n\
         \x20     - { function: count_star, windows: [30d] }\n",
    );
    // Card 1: an event every 5 hours over the 9 days before `base`; card 2: a few.
    let mut events: Vec<(i64, i64, f64)> = (0..9 * 24 / 5)
        .map(|i| {
            (
                1,
                base - 9 * day + i * 5 * hour + 7 * MIN,
                (i % 13) as f64 * 1.25 - 3.0,
            )
        })
        .collect();
    events.extend([
        (2, base - 6 * day, 1e300),
        (2, base - 2 * hour, -1e300),
        (2, base - hour, 0.5),
    ]);
    repo.parquet(
        "data/txns.parquet",
        vec![
            (
                "card_id",
                Arc::new(Int64Array::from_iter_values(events.iter().map(|e| e.0))),
            ),
            ("ts", ts(events.iter().map(|e| e.1).collect())),
            (
                "amount",
                Arc::new(Float64Array::from(
                    events.iter().map(|e| e.2).collect::<Vec<_>>(),
                )),
            ),
        ],
    );
    cli_steps(
        repo.path(),
        &[
            &["apply"],
            &["ingest"],
            &["materialize-incremental"],
            &["compact"],
        ],
    );
    let store = quiver::FeatureStore::open(repo.path()).unwrap();
    let features = [
        "spend:count_star_1d",
        "spend:count_star_7d",
        "spend:amount_sum_3d",
        "spend:amount_sum_7d",
        "spend:amount_mean_2d",
        "spend:amount_max_7d",
        "spend:amount_last_7d",
        "spend:count_star_30d",
    ];
    // Day tiles exist for the 7-day group.
    let state = store.state().unwrap();
    let view = state.resolved_view("spend").unwrap();
    let groups = view.tile_groups().unwrap();
    let days = groups
        .iter()
        .find_map(|g| g.day_field)
        .expect("a group keeps day tiles");
    let mut enc = Vec::new();
    quiver_core::encoding::encode_key_part(&Int64Array::from(vec![1i64]), 0, &mut enc).unwrap();
    let key = quiver_online::entity_key(&view.project, &view.entity_set(), &enc);
    let starts: Vec<i64> = (0..10).map(|d| base - 9 * day + d * day).collect();
    let online = store.online().block().unwrap();
    let stored = online
        .read_tiles(&[key.as_slice()], days, &starts)
        .block()
        .unwrap();
    assert!(
        stored.iter().filter(|c| c.is_some()).count() >= 8,
        "day tiles written"
    );
    for at in [
        base,
        base + 37 * MIN,
        base + 5 * hour,
        base + 23 * hour + 59 * MIN,
    ] {
        let trained = store
            .historical()
            .entities(batch(vec![
                ("card_id", Arc::new(Int64Array::from(vec![1i64, 2, 3]))),
                ("event_timestamp", ts(vec![at, at, at])),
            ]))
            .features(features)
            .block()
            .unwrap();
        let served = serve_cards(&store, features, &[1, 2, 3], at);
        for (row, served) in served.rows.iter().enumerate() {
            for (f, name) in features.iter().enumerate() {
                let col = trained
                    .column_by_name(name.split(':').nth(1).unwrap())
                    .unwrap();
                let want = quiver_core::value::value_at(col.as_ref(), row).unwrap();
                assert_eq!(served.values[f], want, "{name}, card row {row}, at {at}");
                let status = if row == 2 {
                    quiver::FeatureStatus::Missing
                } else {
                    quiver::FeatureStatus::Present
                };
                if row == 2 || f == 1 {
                    assert_eq!(
                        served.statuses[f], status,
                        "{name}, card row {row}, at {at}"
                    );
                }
            }
        }
    }
}

/// Tiles of an earlier layout (an earlier build's, which reads ignore) are recomputed
/// over the whole retention by the next incremental run, not from its high-water mark:
/// here the registry's record of the layout is removed and the online store emptied, as
/// after an upgrade, and the next `materialize-incremental` serves the training values.
#[test]
fn tiles_of_an_earlier_layout_are_recomputed_over_the_retention() {
    let (hour, day) = (60 * MIN, 24 * 60 * MIN);
    let now = quiver_core::time::now();
    let repo = Repo::new(
        "entities:\n  - name: card\n    join_keys: [card_id]\n\
         sources:\n  - { name: txns, type: file, path: data/txns.parquet, timestamp_field: ts }\n\
         feature_views:\n  - name: spend\n    entities: [card]\n    source: txns\n\
         \x20   aggregations:\n      - { function: count_star, windows: [1h, 3d] }\n",
    );
    let events: Vec<i64> = (1..60).map(|i| now - i * hour - 7 * MIN).collect();
    repo.parquet(
        "data/txns.parquet",
        vec![
            (
                "card_id",
                Arc::new(Int64Array::from(vec![1i64; events.len()])),
            ),
            ("ts", ts(events.clone())),
        ],
    );
    cli_steps(
        repo.path(),
        &[&["apply"], &["ingest"], &["materialize-incremental"]],
    );
    // As an earlier build left it: no layout recorded, no tiles it can read.
    let registry = repo.path().join("data/registry/registry.json");
    let mut state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&registry).unwrap()).unwrap();
    let record = &mut state["feature_views"]["spend"]["materialized"];
    assert!(
        record["tile_layout"].is_u64(),
        "the layout is recorded: {record}"
    );
    record.as_object_mut().unwrap().remove("tile_layout");
    std::fs::write(&registry, serde_json::to_string(&state).unwrap()).unwrap();
    std::fs::remove_dir_all(repo.path().join("data/online")).unwrap();
    cli_steps(repo.path(), &[&["materialize-incremental"]]);
    let store = quiver::FeatureStore::open(repo.path()).unwrap();
    // After every event: an online read's head tile holds only events before it.
    let at = now;
    let features = ["spend:count_star_1h", "spend:count_star_3d"];
    let served = serve_cards(&store, features, &[1], at);
    let want = events
        .iter()
        .filter(|&&t| t < at && t >= align(at - 3 * day, hour))
        .count();
    assert_eq!(served.rows[0].values[1], quiver::Value::Int64(want as i64));
}

/// Keys other than one int64 (here a string key) are grouped by their encoded bytes:
/// the same windows, labels for unknown keys get the empty window's values, rows stay
/// in input order.
#[test]
fn string_keyed_aggregations_fold_each_labels_window() {
    keyed_aggregations_fold_each_labels_window(|names| Arc::new(StringArray::from(names.to_vec())));
}

/// One int64 key is grouped by direct address over a narrow range of the labels' keys
/// (an event's key outside it belongs to no label) and by a hash map over a wide one.
#[test]
fn int_keyed_aggregations_fold_each_labels_window_narrow_and_wide() {
    for ids in [
        [("a", 1i64), ("b", 2), ("ab", 3), ("z", 4), ("q", 9)],
        [
            ("a", -5),
            ("b", 1 << 40),
            ("ab", 7),
            ("z", i64::MAX),
            ("q", i64::MIN),
        ],
    ] {
        keyed_aggregations_fold_each_labels_window(move |names| {
            Arc::new(Int64Array::from(
                names
                    .iter()
                    .map(|n| ids.iter().find(|i| i.0 == *n).unwrap().1)
                    .collect::<Vec<_>>(),
            ))
        });
    }
}

/// Events of users a, b, ab and q, labels of a, b, ab and z (no events): each label's
/// window folded, whatever the key's type (`key_array` makes a key column of names).
fn keyed_aggregations_fold_each_labels_window(key_array: impl Fn(&[&str]) -> ArrayRef) {
    let repo = Repo::new(
        "entities:\n  - name: user\n    join_keys: [user_id]\n\
         sources:\n  - { name: clicks, type: file, path: data/clicks.parquet, timestamp_field: ts }\n\
         feature_views:\n  - name: user_clicks\n    entities: [user]\n    source: clicks\n\
         \x20   aggregations:\n      - { function: count_star, windows: [1h] }\n\
         \x20     - { column: value, function: sum, windows: [1h] }\n\
         \x20     - { column: value, function: last, windows: [1h] }\n",
    );
    // (user, minute, value)
    let events = [
        ("a", 1, 1.5),
        ("b", 2, 10.0),
        ("a", 30, 2.0),
        ("a", 70, 4.0),
        ("ab", 3, 7.0),
        ("q", 4, 5.0),
    ];
    repo.parquet(
        "data/clicks.parquet",
        vec![
            (
                "user_id",
                key_array(&events.iter().map(|e| e.0).collect::<Vec<_>>()),
            ),
            ("ts", ts(events.iter().map(|e| e.1 * MIN).collect())),
            (
                "value",
                Arc::new(Float64Array::from(
                    events.iter().map(|e| e.2).collect::<Vec<_>>(),
                )),
            ),
        ],
    );
    for args in [&["apply"][..], &["ingest"]] {
        let (ok, _, err) = cli(repo.path(), args);
        assert!(ok, "{args:?}: {err}");
    }
    let labels = [
        ("a", 31),
        ("z", 31),
        ("b", 3),
        ("a", 75),
        ("a", 31),
        ("ab", 4),
    ];
    let store = repo.store();
    let out = store
        .historical()
        .entities(batch(vec![
            (
                "user_id",
                key_array(&labels.iter().map(|l| l.0).collect::<Vec<_>>()),
            ),
            (
                "event_timestamp",
                ts(labels.iter().map(|l| l.1 * MIN).collect()),
            ),
        ]))
        .features([
            "user_clicks:count_star_1h",
            "user_clicks:value_sum_1h",
            "user_clicks:value_last_1h",
        ])
        .block()
        .unwrap();
    let count = out
        .column_by_name("count_star_1h")
        .unwrap()
        .as_primitive::<Int64Type>();
    let sum = out
        .column_by_name("value_sum_1h")
        .unwrap()
        .as_primitive::<Float64Type>();
    let last = out
        .column_by_name("value_last_1h")
        .unwrap()
        .as_primitive::<Float64Type>();
    for (row, &(user, minute)) in labels.iter().enumerate() {
        let t = minute * MIN;
        let lo = align(t - 60 * MIN, 5 * MIN);
        let inside: Vec<_> = events
            .iter()
            .filter(|e| e.0 == user && e.1 * MIN >= lo && e.1 * MIN < t)
            .collect();
        assert_eq!(count.value(row), inside.len() as i64, "row {row}");
        if inside.is_empty() {
            assert!(sum.is_null(row) && last.is_null(row), "row {row}");
        } else {
            assert_eq!(
                sum.value(row),
                inside.iter().map(|e| e.2).sum::<f64>(),
                "row {row}"
            );
            let latest = inside.iter().max_by_key(|e| e.1).unwrap();
            assert_eq!(last.value(row), latest.2, "row {row}");
        }
    }
}
