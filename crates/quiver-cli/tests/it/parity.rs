//! Online/offline parity over random histories (DESIGN §9): corrections (same event
//! time, newer created time), late rows (ingested after a materialization with an
//! older event time), rows beyond the materialization's end, pushes, and ttl edges. At
//! any time T at or after the newest row written online, the value read online at T
//! equals the training-set value for a label at T, bit for bit.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, AsArray, Float64Array, Int64Array};
use arrow::datatypes::{Float64Type, Int64Type};
use proptest::prelude::*;
use quiver::testing::Block;
use quiver::write::{Input, Targets};
use quiver::Value;
use quiver_offline::normalize::Origin;

use crate::common::{batch, ts, ts_opt, Repo};

const S: i64 = 1_000_000;
const KEYS: i64 = 5;

fn defs(ttl: i64) -> String {
    format!(
        "entities:\n  - name: user\n    join_keys: [user_id]\n\
         sources:\n  - {{ name: src, type: file, path: data/src.parquet, timestamp_field: ts, \
         created_timestamp_field: created }}\n\
         feature_views:\n  - name: v\n    entities: [user]\n    source: src\n    ttl: {}\n\
         \x20   features:\n      - {{ name: x, dtype: float64 }}\n      - {{ name: n, dtype: int64 }}\n",
        if ttl == 0 { "0".to_string() } else { format!("{ttl}s") }
    )
}

/// (user, event time s, created s, x)
type Row = (i64, i64, Option<i64>, Option<f64>);

fn row(max_t: i64) -> impl Strategy<Value = Row> {
    (
        0..KEYS - 1,
        0..max_t,
        prop::option::of(0i64..3),
        prop::option::weighted(0.8, -10.0f64..10.0),
    )
}

fn source(r: &Repo, rows: &[Row]) {
    r.parquet("data/src.parquet", columns(rows, 0));
}

/// Columns of rows; `n` numbers them from `first`.
fn columns(rows: &[Row], first: i64) -> Vec<(&'static str, arrow::array::ArrayRef)> {
    vec![
        (
            "user_id",
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
        ),
        ("ts", ts(rows.iter().map(|r| r.1 * S).collect())),
        (
            "created",
            ts_opt(rows.iter().map(|r| r.2.map(|c| c * S)).collect()),
        ),
        (
            "x",
            Arc::new(Float64Array::from(
                rows.iter().map(|r| r.3).collect::<Vec<_>>(),
            )),
        ),
        (
            "n",
            Arc::new(Int64Array::from_iter_values(
                first..first + rows.len() as i64,
            )),
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn online_equals_offline_at_every_time(
        first in prop::collection::vec(row(100), 1..25),
        late in prop::collection::vec(row(100), 0..10),
        pushed in prop::collection::vec(row(120), 0..6),
        cut1 in 20i64..80,
        extra in 0i64..40,
        offsets in prop::collection::vec(0i64..60, 1..4),
        ttl in prop_oneof![Just(0i64), Just(15), Just(40)],
    ) {
        let cut2 = cut1 + extra + 1;
        let r = Repo::new(&defs(ttl));
        source(&r, &first);
        let store = r.store();
        store.apply().block().unwrap();
        store.ingest().block().unwrap();
        store.materialize_incremental(cut1 * S).block().unwrap();
        // Corrections and late rows arrive; the source now holds both batches.
        let mut all = first.clone();
        all.extend(late.iter().cloned());
        source(&r, &all);
        store.ingest().block().unwrap();
        store.materialize_incremental(cut2 * S).block().unwrap();
        // Pushed rows (before cut2) go online and offline through the write path.
        let pushed: Vec<Row> = pushed.into_iter().filter(|p| p.1 < cut2).collect();
        if !pushed.is_empty() {
            let view = store.state().unwrap().resolved_view("v").unwrap();
            let input = Input {
                timestamp_field: "ts",
                created_field: Some("created"),
                origin: Origin { file: "push", first_row: 0 },
                not_after: i64::MAX,
            };
            let b = quiver::write::validate(&view, &batch(columns(&pushed, 1000)), &input).unwrap();
            let targets = Targets { online: true, offline: true };
            quiver::write::write(&store, &view, vec![b], targets).block().unwrap();
            all.extend(pushed.iter().cloned());
        }
        // Times at or after the newest row online, with no offline row between cut2 and T
        // (the online store keeps only the newest row per key, DESIGN §4).
        let newest_online = all.iter().filter(|r| r.1 < cut2).map(|r| r.1).max().unwrap_or(0);
        let mut times: Vec<i64> = vec![cut2 * S - 1];
        for o in offsets {
            let t = (newest_online + o) * S;
            if t >= newest_online * S && !all.iter().any(|r| r.1 >= cut2 && r.1 * S <= t) {
                times.push(t);
            }
        }
        for t in times {
            let labels = batch(vec![
                ("user_id", Arc::new(Int64Array::from_iter_values(0..KEYS))),
                ("event_timestamp", ts(vec![t; KEYS as usize])),
            ]);
            let training = store.historical().entities(labels).features(["v:x", "v:n"])
                .block().unwrap();
            let x = training.column_by_name("x").unwrap().as_primitive::<Float64Type>();
            let n = training.column_by_name("n").unwrap().as_primitive::<Int64Type>();
            for k in 0..KEYS {
                let online = store.online_features().features(["v:x", "v:n"])
                    .entity_row(BTreeMap::from([("user_id".to_string(), Value::Int64(k))]))
                    .at(t).block().unwrap();
                let (ox, on) = (&online.rows[0].values[0], &online.rows[0].values[1]);
                let i = k as usize;
                let want_n = if n.is_null(i) { Value::Null } else { Value::Int64(n.value(i)) };
                prop_assert_eq!(on, &want_n, "key {} at {}: n", k, t);
                match ox {
                    Value::Float64(v) => prop_assert!(
                        x.is_valid(i) && x.value(i).to_bits() == v.to_bits(),
                        "key {} at {}: x online {} offline {:?}", k, t, v,
                        x.is_valid(i).then(|| x.value(i))
                    ),
                    Value::Null => prop_assert!(x.is_null(i), "key {} at {}: x null online", k, t),
                    other => prop_assert!(false, "unexpected {:?}", other),
                }
            }
        }
    }
}
