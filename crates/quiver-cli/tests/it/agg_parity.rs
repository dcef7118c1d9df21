//! The parity proof for aggregated views (DESIGN §2 "Parity by construction"), through
//! the real stores: random event histories — out of order, several events on one time,
//! nulls, negative and huge values (1e300 with −1e300), keys without events, label
//! times on hop and window edges — reach the online store split at random between a
//! backfill and per-event tile merges (a stream), while the training set reads every
//! event offline. For every function and window, the value served at T equals the
//! training value at T bit for bit, and both equal a fold of the window's events.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Float64Array, Int64Array};
use proptest::prelude::*;
use quiver::testing::Block;
use quiver::Value;
use quiver_core::agg::window::align;
use quiver_core::agg::{Input, Order};

use crate::common::{batch, ts, Repo};

const MIN: i64 = 60_000_000;
const KEYS: i64 = 4;

const DEFS: &str = crate::common::user_events_view!(
    "      - { function: count_star, windows: [10m, 30m] }
      - { column: x, function: count, windows: [30m] }
      - { column: x, function: sum, windows: [10m, 60m] }
      - { column: x, function: mean, windows: [30m] }
      - { column: x, function: min, windows: [30m] }
      - { column: x, function: max, windows: [60m], hop: 20m }
      - { column: x, function: variance, windows: [60m] }
      - { column: x, function: last, windows: [30m] }
      - { column: x, function: first_n, n: 2, windows: [60m] }
      - { column: x, function: count_distinct, windows: [60m] }
      - { column: x, function: approx_percentile, percentile: 0.5, windows: [60m] }
"
);

/// (user, minute, x)
type Ev = (i64, i64, Option<f64>);

fn event() -> impl Strategy<Value = Ev> {
    (
        0..KEYS - 1, // the last key never has events
        0i64..120,
        prop_oneof![
            4 => (-400i64..400).prop_map(|v| Some(v as f64 / 8.0)),
            1 => Just(None),
            1 => Just(Some(1e300)),
            1 => Just(Some(-1e300)),
        ],
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn served_aggregations_equal_training_values_however_tiles_were_written(
        events in prop::collection::vec(event(), 1..60),
        split in 0i64..7,
        after in 0i64..40,
    ) {
        let r = Repo::new(DEFS);
        r.parquet(
            "data/ev.parquet",
            vec![
                ("user_id", Arc::new(Int64Array::from_iter_values(events.iter().map(|e| e.0)))),
                ("ts", ts(events.iter().map(|e| e.1 * MIN).collect())),
                ("x", Arc::new(Float64Array::from(events.iter().map(|e| e.2).collect::<Vec<_>>()))),
            ],
        );
        let store = r.store();
        store.apply().block().unwrap();
        store.ingest().block().unwrap();
        // Tiles before `cut` (a multiple of every hop) by backfill, the rest by
        // one-event merges, in the order the events come.
        let cut = split * 20 * MIN;
        if cut > 0 {
            store.backfill(0, cut).block().unwrap();
        }
        let view = store.state().unwrap().resolved_view("w").unwrap();
        let groups = view.tile_groups().unwrap();
        let online = store.online().block().unwrap();
        for e in events.iter().filter(|e| e.1 * MIN >= cut) {
            let mut enc = Vec::new();
            quiver_core::encoding::encode_key_part(&Int64Array::from(vec![e.0]), 0, &mut enc).unwrap();
            let key = quiver_online::entity_key(&view.project, &view.entity_set(), &enc);
            let order = Order { event_ts: e.1 * MIN, created_ts: quiver_core::contract::NO_CREATED, position: 0 };
            for g in &groups {
                let value = e.2.map_or(Input::Null, Input::Float);
                let values = vec![value; g.layout.aggregations.len()];
                let mut irs = g.layout.empty();
                g.layout.update(&mut irs, &values, order);
                let mut delta = Vec::new();
                g.layout.encode(&irs, &mut delta);
                let layout = g.layout.clone();
                let merger = move |stored: Option<&[u8]>, d: &[u8], out: &mut Vec<u8>| {
                    layout.merge_bytes(stored, d, out)
                        .map_err(|e| quiver_online::Error::Invalid(e.0))
                };
                let tiles = [quiver_online::tiles::TileDelta { layer: None, start: align(order.event_ts, g.hop), ir: &delta }];
                let merge = quiver_online::tiles::KeyMerge { key: &key, view: g.field, position: None, tiles: &tiles };
                online.merge_tiles(&[merge], &merger).block().unwrap();
            }
        }
        // Times after every event and the backfill's end (online, T is the clock, later
        // than what was written): just after, on a tile edge, later.
        let last = (events.iter().map(|e| e.1).max().unwrap_or(0) + 1).max(cut / MIN);
        let times = [last * MIN, (last + after) * MIN, align((last + after) * MIN, quiver::Duration::from_micros(20 * MIN)) + 20 * MIN];
        let names: Vec<String> = view.aggregations.iter().map(|a| a.name.clone()).collect();
        for t in times {
            let labels = batch(vec![
                ("user_id", Arc::new(Int64Array::from_iter_values(0..KEYS))),
                ("event_timestamp", ts(vec![t; KEYS as usize])),
            ]);
            let training = store.historical().entities(labels)
                .features(names.iter().map(|n| format!("w:{n}"))).block().unwrap();
            for k in 0..KEYS {
                let served = store.online_features()
                    .features(names.iter().map(|n| format!("w:{n}")))
                    .entity_row(BTreeMap::from([("user_id".to_string(), Value::Int64(k))]))
                    .at(t).block().unwrap();
                for (i, (name, a)) in names.iter().zip(&view.aggregations).enumerate() {
                    let col = training.column_by_name(name).unwrap();
                    let trained = quiver_core::value::value_at(col.as_ref(), k as usize).unwrap();
                    let got = &served.rows[0].values[i];
                    prop_assert_eq!(format!("{got:?}"), format!("{trained:?}"), "key {} {} at {}", k, name, t);
                    // A plain fold of the window's events, for the exact functions.
                    let lo = align(t - a.window.micros(), a.hop);
                    let xs: Vec<f64> = events.iter()
                        .filter(|e| e.0 == k && e.1 * MIN >= lo && e.1 * MIN < t)
                        .filter_map(|e| e.2).collect();
                    let n_events = events.iter().filter(|e| e.0 == k && e.1 * MIN >= lo && e.1 * MIN < t).count();
                    match a.function {
                        quiver_core::agg::Function::CountStar =>
                            prop_assert_eq!(got, &Value::Int64(n_events as i64)),
                        quiver_core::agg::Function::Count =>
                            prop_assert_eq!(got, &Value::Int64(xs.len() as i64)),
                        quiver_core::agg::Function::Max => {
                            let m = xs.iter().copied().max_by(|a, b| a.total_cmp(b));
                            prop_assert_eq!(got, &m.map_or(Value::Null, Value::Float64));
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}
