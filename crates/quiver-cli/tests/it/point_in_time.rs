//! Point-in-time retrieval through the Delta offline store against a brute-force
//! reference over random histories: ties on event time, rows exactly at the TTL bound,
//! labels exactly on feature timestamps, duplicate labels, unknown entities, null
//! feature values, a composite-key view, and several views in one request.

use quiver::testing::Block;
use std::sync::Arc;

use arrow::array::{Array, AsArray, Float64Array, Int64Array, StringArray};
use arrow::datatypes::{Float64Type, Int64Type};
use proptest::prelude::*;

use crate::common::{batch, ts, ts_opt, Repo};

const S: i64 = 1_000_000;

fn defs(ttl_a: &str) -> String {
    format!(
        "\
entities:
  - name: user
    join_keys: [user_id]
  - name: item
    join_keys: [item]
sources:
  - name: a
    type: file
    path: data/a.parquet
    timestamp_field: ts
    created_timestamp_field: created
  - name: b
    type: file
    path: data/b.parquet
    timestamp_field: ts
feature_views:
  - name: va
    entities: [user]
    source: a
    ttl: {ttl_a}
    features:
      - {{ name: x, dtype: float64 }}
      - {{ name: n, dtype: int64 }}
  - name: vb
    entities: [user, item]
    source: b
    ttl: 3s
    features:
      - {{ name: y, dtype: float64 }}
"
    )
}

#[derive(Clone, Debug)]
struct RowA {
    user: i64,
    t: i64,
    created: Option<i64>,
    x: Option<f64>,
}

#[derive(Clone, Debug)]
struct RowB {
    user: i64,
    item: &'static str,
    t: i64,
    y: f64,
}

const ITEMS: [&str; 3] = ["p", "q", "r"];

fn row_a() -> impl Strategy<Value = RowA> {
    (
        0i64..5,
        0i64..20,
        prop::option::of(0i64..3),
        prop::option::of(-5.0f64..5.0),
    )
        .prop_map(|(user, t, created, x)| RowA {
            user,
            t: t * S,
            created: created.map(|c| c * S),
            x,
        })
}

fn row_b() -> impl Strategy<Value = RowB> {
    (0i64..5, 0usize..3, 0i64..20, -5.0f64..5.0).prop_map(|(user, i, t, y)| RowB {
        user,
        item: ITEMS[i],
        t: t * S,
        y,
    })
}

fn within(row_t: i64, t: i64, ttl: i64) -> bool {
    ttl == 0 || row_t >= t - ttl
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn historical_matches_brute_force(
        a in prop::collection::vec(row_a(), 1..40),
        b in prop::collection::vec(row_b(), 1..30),
        labels in prop::collection::vec((0i64..6, 0usize..3, 0i64..24), 1..40),
        ttl_a in prop_oneof![Just(0i64), Just(5i64)],
    ) {
        let repo = Repo::new(&defs(if ttl_a == 0 { "0" } else { "5s" }));
        repo.parquet("data/a.parquet", vec![
            ("user_id", Arc::new(Int64Array::from_iter_values(a.iter().map(|r| r.user)))),
            ("ts", ts(a.iter().map(|r| r.t).collect())),
            ("created", ts_opt(a.iter().map(|r| r.created).collect())),
            ("x", Arc::new(Float64Array::from(a.iter().map(|r| r.x).collect::<Vec<_>>()))),
            ("n", Arc::new(Int64Array::from_iter_values(a.iter().enumerate().map(|(i, _)| i as i64)))),
        ]);
        repo.parquet("data/b.parquet", vec![
            ("user_id", Arc::new(Int64Array::from_iter_values(b.iter().map(|r| r.user)))),
            ("item", Arc::new(StringArray::from_iter_values(b.iter().map(|r| r.item)))),
            ("ts", ts(b.iter().map(|r| r.t).collect())),
            ("y", Arc::new(Float64Array::from_iter_values(b.iter().map(|r| r.y)))),
        ]);
        let store = repo.store();
        store.apply().block().unwrap();
        store.ingest().block().unwrap();
        // The labels as drawn (mostly the labels indexed), and each repeated 80 times (more
        // labels than rows, grouped by key: the rows indexed).
        let repeated: Vec<(i64, usize, i64)> =
            labels.iter().flat_map(|&l| std::iter::repeat_n(l, 80)).collect();
        for labels in [&labels[..], &repeated[..]] {
            let entity_rows = batch(vec![
                ("user_id", Arc::new(Int64Array::from_iter_values(labels.iter().map(|l| l.0)))),
                ("item", Arc::new(StringArray::from_iter_values(labels.iter().map(|l| ITEMS[l.1])))),
                ("event_timestamp", ts(labels.iter().map(|l| l.2 * S).collect())),
                ("label", Arc::new(Int64Array::from_iter_values(0..labels.len() as i64))),
            ]);
            let out = store
                .historical()
                .entities(entity_rows)
                .features(["va:x", "va:n", "vb:y"])
                .full_names(true)
                .block()
                .unwrap();
            prop_assert_eq!(out.num_rows(), labels.len());
            let label = out.column_by_name("label").unwrap().as_primitive::<Int64Type>();
            let x = out.column_by_name("va__x").unwrap().as_primitive::<Float64Type>();
            let n = out.column_by_name("va__n").unwrap().as_primitive::<Int64Type>();
            let y = out.column_by_name("vb__y").unwrap().as_primitive::<Float64Type>();
            for (i, &(user, item, t)) in labels.iter().enumerate() {
                let t = t * S;
                prop_assert_eq!(label.value(i), i as i64, "input order is kept");
                // Reference for va: the greatest (ts, created, position) at or before t.
                let best_a = a.iter().enumerate()
                    .filter(|(_, r)| r.user == user && r.t <= t)
                    .max_by_key(|(j, r)| (r.t, r.created.unwrap_or(i64::MIN), *j))
                    .filter(|(_, r)| within(r.t, t, ttl_a * S));
                match best_a {
                    None => {
                        prop_assert!(x.is_null(i) && n.is_null(i), "row {i}: expected no va value");
                    }
                    Some((j, r)) => {
                        prop_assert_eq!(n.is_null(i), false, "row {}: expected va row {}", i, j);
                        prop_assert_eq!(n.value(i), j as i64, "row {}", i);
                        match r.x {
                            None => prop_assert!(x.is_null(i), "a null value stays null"),
                            Some(v) => prop_assert_eq!(x.value(i).to_bits(), v.to_bits()),
                        }
                    }
                }
                let best_b = b.iter().enumerate()
                    .filter(|(_, r)| r.user == user && r.item == ITEMS[item] && r.t <= t)
                    .max_by_key(|(j, r)| (r.t, *j))
                    .filter(|(_, r)| within(r.t, t, 3 * S));
                match best_b {
                    None => prop_assert!(y.is_null(i), "row {i}: expected no vb value"),
                    Some((_, r)) => prop_assert_eq!(y.value(i).to_bits(), r.y.to_bits()),
                }
            }
        }
    }
}

#[test]
fn name_collisions_need_full_names() {
    let repo = Repo::new(&defs("0").replace("name: y,", "name: x,"));
    repo.parquet(
        "data/a.parquet",
        vec![
            ("user_id", Arc::new(Int64Array::from(vec![1]))),
            ("ts", ts(vec![S])),
            ("created", ts_opt(vec![None])),
            ("x", Arc::new(Float64Array::from(vec![1.0]))),
            ("n", Arc::new(Int64Array::from(vec![1]))),
        ],
    );
    repo.parquet(
        "data/b.parquet",
        vec![
            ("user_id", Arc::new(Int64Array::from(vec![1]))),
            ("item", Arc::new(StringArray::from(vec!["p"]))),
            ("ts", ts(vec![S])),
            ("x", Arc::new(Float64Array::from(vec![2.0]))),
        ],
    );
    let store = repo.store();
    store.apply().block().unwrap();
    store.ingest().block().unwrap();
    let rows = || {
        batch(vec![
            ("user_id", Arc::new(Int64Array::from(vec![1]))),
            ("item", Arc::new(StringArray::from(vec!["p"]))),
            ("event_timestamp", ts(vec![2 * S])),
        ])
    };
    let e = store
        .historical()
        .entities(rows())
        .features(["va:x", "vb:x"])
        .block()
        .unwrap_err();
    assert!(e.to_string().contains("full feature names"), "{e}");
    let out = store
        .historical()
        .entities(rows())
        .features(["va:x", "vb:x"])
        .full_names(true)
        .block()
        .unwrap();
    assert_eq!(
        out.column_by_name("vb__x")
            .unwrap()
            .as_primitive::<Float64Type>()
            .value(0),
        2.0
    );
    // A missing join key column is named.
    let no_item = batch(vec![
        ("user_id", Arc::new(Int64Array::from(vec![1]))),
        ("event_timestamp", ts(vec![2 * S])),
    ]);
    let e = store
        .historical()
        .entities(no_item)
        .features(["vb:x"])
        .block()
        .unwrap_err();
    assert!(e.to_string().contains("no column 'item'"), "{e}");
    let _ = out.column(0).len();
}

#[test]
fn entity_with_two_join_keys_through_csv_in_and_out() {
    let repo = Repo::new(
        "entities: [{ name: route, join_keys: [origin, dest] }]\n\
         sources: [{ name: s, type: file, path: data/routes.csv, timestamp_field: at }]\n\
         feature_views: [{ name: routes, entities: [route], source: s, ttl: 1h,\n\
           features: [{ name: eta_min, dtype: float64 }, { name: busy, dtype: bool }] }]\n",
    );
    repo.write(
        "data/routes.csv",
        "origin,dest,at,eta_min,busy\n\
         1,ams,2024-01-01 10:00:00,12.5,true\n\
         1,ams,2024-01-01 11:00:00,14.0,false\n\
         1,ber,2024-01-01 10:30:00,99.0,true\n\
         2,ams,2024-01-01 10:00:00,,false\n",
    );
    repo.write(
        "data/labels.csv",
        "origin,dest,event_timestamp,y\n\
         1,ams,2024-01-01T10:59:59Z,a\n\
         1,ams,2024-01-01T11:00:00Z,b\n\
         1,ber,2024-01-01T11:31:00Z,c\n\
         2,ams,2024-01-01T10:00:00+00:00,d\n\
         3,ams,2024-01-01T10:00:00Z,e\n",
    );
    let store = repo.store();
    store.apply().block().unwrap();
    store.ingest().block().unwrap();
    let labels = repo.file("data/labels.csv");
    let out = repo.file("data/out.csv");
    let (ok, _, err) = crate::common::cli(
        repo.path(),
        &[
            "historical",
            "--entities",
            labels.to_str().unwrap(),
            "--features",
            "routes:eta_min,routes:busy",
            "--output",
            out.to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    let text = std::fs::read_to_string(out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "origin,dest,event_timestamp,y,eta_min,busy");
    assert!(lines[1].ends_with(",a,12.5,true"), "{}", lines[1]);
    assert!(
        lines[2].ends_with(",b,14.0,false"),
        "row exactly on a feature timestamp: {}",
        lines[2]
    );
    assert!(
        lines[3].ends_with(",c,,"),
        "61 minutes after the row, outside the 1h ttl: {}",
        lines[3]
    );
    assert!(
        lines[4].ends_with(",d,,false"),
        "a null value stays null: {}",
        lines[4]
    );
    assert!(
        lines[5].ends_with(",e,,"),
        "an unknown entity: {}",
        lines[5]
    );
}

/// Files of several batches (the reader's 64k rows) over several day partitions, with a
/// text feature: each label's row found by a sorted reference.
#[test]
fn large_files_of_several_batches_match_a_reference() {
    use rand::{Rng, SeedableRng};
    const DAY: i64 = 86_400 * S;
    const ROWS: usize = 300_000;
    const USERS: i64 = 5_000;
    let repo = Repo::new(
        "\
entities:
  - name: user
    join_keys: [user_id]
sources:
  - { name: a, type: file, path: data/a.parquet, timestamp_field: ts }
feature_views:
  - name: va
    entities: [user]
    source: a
    ttl: 1d
    features:
      - { name: n, dtype: int64 }
      - { name: s, dtype: string }
",
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    // Three days of rows (three files of 100,000), times whole seconds.
    let rows: Vec<(i64, i64)> = (0..ROWS)
        .map(|_| (rng.gen_range(0..USERS), rng.gen_range(0..3 * 86_400) * S))
        .collect();
    repo.parquet(
        "data/a.parquet",
        vec![
            (
                "user_id",
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
            ),
            ("ts", ts(rows.iter().map(|r| r.1).collect())),
            ("n", Arc::new(Int64Array::from_iter_values(0..ROWS as i64))),
            (
                "s",
                Arc::new(StringArray::from_iter_values(
                    (0..ROWS).map(|i| format!("row {i}")),
                )),
            ),
        ],
    );
    let store = repo.store();
    store.apply().block().unwrap();
    store.ingest().block().unwrap();
    // Reference: each user's rows by (time, row); the last at or before t wins.
    let mut by_user: Vec<Vec<(i64, usize)>> = vec![Vec::new(); USERS as usize];
    for (i, &(u, t)) in rows.iter().enumerate() {
        by_user[u as usize].push((t, i));
    }
    for v in &mut by_user {
        v.sort_unstable();
    }
    let labels: Vec<(i64, i64)> = (0..20_000)
        .map(|_| {
            (
                rng.gen_range(0..USERS + 10),
                rng.gen_range(0..4 * 86_400) * S + S / 2,
            )
        })
        .collect();
    // Fewer labels than rows (the labels indexed), then each of the first 10,000
    // repeated 60 times (twice the rows, grouped by key: the rows indexed).
    let repeated: Vec<(i64, i64)> = labels[..10_000]
        .iter()
        .flat_map(|&l| std::iter::repeat_n(l, 60))
        .collect();
    for labels in [labels, repeated] {
        join_and_check(&store, &labels, &by_user, DAY);
    }
}

/// Checks the training set of `labels` (user, time) against `by_user` (each user's
/// (time, row) in order) and the view's `ttl`.
fn join_and_check(
    store: &quiver::FeatureStore,
    labels: &[(i64, i64)],
    by_user: &[Vec<(i64, usize)>],
    ttl: i64,
) {
    let out = store
        .historical()
        .entities(batch(vec![
            (
                "user_id",
                Arc::new(Int64Array::from_iter_values(labels.iter().map(|l| l.0))),
            ),
            ("event_timestamp", ts(labels.iter().map(|l| l.1).collect())),
        ]))
        .features(["va:n", "va:s"])
        .block()
        .unwrap();
    let n = out.column_by_name("n").unwrap().as_primitive::<Int64Type>();
    let s = out.column_by_name("s").unwrap().as_string::<i32>();
    let mut matched = 0;
    for (i, &(u, t)) in labels.iter().enumerate() {
        let want = by_user
            .get(u as usize)
            .and_then(|v| v[..v.partition_point(|r| r.0 <= t)].last())
            .filter(|r| r.0 >= t - ttl)
            .map(|r| r.1);
        match want {
            None => assert!(n.is_null(i) && s.is_null(i), "label {i}: expected nothing"),
            Some(row) => {
                matched += 1;
                assert_eq!(n.value(i), row as i64, "label {i}");
                assert_eq!(s.value(i), format!("row {row}"), "label {i}");
            }
        }
    }
    assert!(
        matched > labels.len() / 2,
        "only {matched} of {} labels matched",
        labels.len()
    );
}

/// Histories larger than a read batch and labels more than a scatter task holds: a
/// day's file of two batches (120k rows) next to one of one, 200k labels in no order
/// (the labels indexed) and 400k grouped by user (more than twice the rows: the rows
/// indexed) — unknown entities, labels before any row, null values — checked row by
/// row against the answer the data is built to give.
#[test]
fn large_histories_and_many_labels_join_row_for_row() {
    const USERS: i64 = 60_000;
    const H: i64 = 3_600 * S;
    const DAY: i64 = 24 * H;
    let repo = Repo::new(&defs("0"));
    // Row j: user j / 3, at day 0 10:00, day 1 10:00 or day 1 12:00; x null every 7th.
    let rows = 3 * USERS;
    let at = |j: i64| [10 * H, DAY + 10 * H, DAY + 12 * H][(j % 3) as usize];
    let x = |j: i64| (j % 7 != 0).then_some(j as f64 * 0.5);
    repo.parquet(
        "data/a.parquet",
        vec![
            (
                "user_id",
                Arc::new(Int64Array::from_iter_values((0..rows).map(|j| j / 3))),
            ),
            ("ts", ts((0..rows).map(at).collect())),
            ("created", ts_opt(vec![None; rows as usize])),
            (
                "x",
                Arc::new(Float64Array::from((0..rows).map(x).collect::<Vec<_>>())),
            ),
            ("n", Arc::new(Int64Array::from_iter_values(0..rows))),
        ],
    );
    repo.parquet(
        "data/b.parquet",
        vec![
            ("user_id", Arc::new(Int64Array::from(vec![0]))),
            ("item", Arc::new(StringArray::from(vec!["p"]))),
            ("ts", ts(vec![0])),
            ("y", Arc::new(Float64Array::from(vec![0.0]))),
        ],
    );
    let store = repo.store();
    store.apply().block().unwrap();
    store.ingest().block().unwrap();
    // Label i: a user (some unknown) at 09:00 (before any row), 11:00, day 1 11:00 or
    // day 1 13:00; `per_user` consecutive labels share a user.
    let label_at = |i: i64| [9 * H, 11 * H, DAY + 11 * H, DAY + 13 * H][(i % 4) as usize];
    for (labels, per_user) in [(200_000i64, 1), (400_000, 4)] {
        let user = |i: i64| (i / per_user * 7_919) % (USERS + 1_000);
        let entity_rows = batch(vec![
            (
                "user_id",
                Arc::new(Int64Array::from_iter_values((0..labels).map(user))),
            ),
            ("event_timestamp", ts((0..labels).map(label_at).collect())),
        ]);
        let out = store
            .historical()
            .entities(entity_rows)
            .features(["va:x", "va:n"])
            .block()
            .unwrap();
        assert_eq!(out.num_rows(), labels as usize);
        let xs = out
            .column_by_name("x")
            .unwrap()
            .as_primitive::<Float64Type>();
        let ns = out.column_by_name("n").unwrap().as_primitive::<Int64Type>();
        for i in 0..labels {
            let (u, k) = (user(i), i as usize);
            // The row answering: none before 10:00 or for an unknown user; else the
            // user's latest row at or before the label.
            let j = (u < USERS && i % 4 != 0).then(|| 3 * u + (i % 4 - 1));
            assert_eq!(ns.is_valid(k), j.is_some(), "label {i}: user {u}");
            if let Some(j) = j {
                assert_eq!(ns.value(k), j, "label {i}: user {u}");
                assert_eq!(xs.is_valid(k), x(j).is_some(), "label {i}: row {j}");
                if let Some(v) = x(j) {
                    assert_eq!(xs.value(k), v, "label {i}: row {j}");
                }
            } else {
                assert!(xs.is_null(k), "label {i}");
            }
        }
    }
}
