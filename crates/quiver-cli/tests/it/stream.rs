//! Stream ingestion's exactly-once effect (DESIGN §2, §5): events of one partition, out
//! of order in event time, are applied in random batches with random rewinds (a worker
//! that died before committing, a manual rewind) replaying ranges cut differently; the
//! values served afterwards equal the training values at the same times bit for bit,
//! every event counted once — for hop tiles and for the day tiles of long windows.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Float64Array, Int64Array};
use proptest::prelude::*;
use quiver::stream::{apply_events, StreamEvents};
use quiver::testing::Block;
use quiver::write::{validate, Input, Targets};
use quiver::Value;
use quiver_offline::normalize::Origin;

use crate::common::{batch, ts, Repo};

const MIN: i64 = 60_000_000;
const KEYS: i64 = 4;

const DEFS: &str = "\
entities: [{ name: user, join_keys: [user_id] }]
sources: [{ name: ev, type: file, path: data/ev.parquet, timestamp_field: ts }]
feature_views:
  - name: w
    entities: [user]
    source: ev
    aggregations:
      - { function: count_star, windows: [30m, 3d] }
      - { column: x, function: sum, windows: [1h, 2d] }
      - { column: x, function: mean, windows: [2d] }
      - { column: x, function: max, windows: [3d] }
      - { column: x, function: last, windows: [1d] }
      - { column: x, function: approx_percentile, percentile: 0.5, windows: [2d] }
";

/// (user, minute, x)
type Ev = (i64, i64, Option<f64>);

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
        let cols = |evs: &[Ev]| vec![
            ("user_id", Arc::new(Int64Array::from_iter_values(evs.iter().map(|e| e.0))) as _),
            ("ts", ts(evs.iter().map(|e| e.1 * MIN).collect())),
            ("x", Arc::new(Float64Array::from(evs.iter().map(|e| e.2).collect::<Vec<_>>())) as _),
        ];
        // The history offline (what training reads); the stream writes online only.
        r.parquet("data/ev.parquet", cols(&events));
        let store = r.store();
        store.apply().block().unwrap();
        store.ingest().block().unwrap();
        let view = store.state().unwrap().serving_view("w").unwrap();
        let last = events.iter().map(|e| e.1).max().unwrap() + 1;
        let now = last * MIN;
        let targets = Targets { online: true, offline: false };
        let (mut at, mut delivered, mut applied, mut replayed, mut late) = (0usize, 0u64, 0u64, 0u64, 0u64);
        let apply = |from: usize, to: usize| {
            let part = &events[from..to];
            let b = batch(cols(part));
            let input = Input { timestamp_field: "ts", created_field: None,
                                origin: Origin { file: "stream", first_row: from + 1 },
                                not_after: i64::MAX };
            let normalized = validate(&view, &b, &input).unwrap();
            let offsets: Vec<u128> = (from as u128..to as u128).collect();
            let s = apply_events(&store, &view, normalized,
                                 StreamEvents { partition: b"p0", offsets: &offsets }, targets, now)
                .block().unwrap();
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
