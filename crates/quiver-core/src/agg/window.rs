//! Windows (DESIGN §2 "Aggregation windows"): an aggregation over window `w` with hop
//! `h` at time T covers the events with `event_timestamp` in `[align(T − w, h), T)`,
//! hops aligned to the Unix epoch. Events are cut into tiles `[t, t + h)`; the value at
//! T merges the tiles wholly inside the window with the partial head tile
//! `[align(T, h), T)`, so an event at exactly T is never counted and the window's length
//! lies between `w` and `w + h`.
//!
//! [`evaluate_key`] computes every label's values for one entity key from its events,
//! building each tile once and sliding over them with a two-stack queue, so each label
//! costs an amortized constant number of merges per feature plus its head tile's
//! events — never a rescan of the window.

use crate::time::{Duration, Timestamp};
use crate::value::Value;

use super::{Aggregation, FinalizeError, Input, Ir, Order};

const MINUTE: i64 = 60_000_000;
const HOUR: i64 = 60 * MINUTE;
pub const DAY: i64 = 24 * HOUR;

/// The hop of a window when the definition gives none: 5 minutes for windows under 12
/// hours, 1 hour under 12 days, 1 day beyond.
pub fn default_hop(window: Duration) -> Duration {
    let w = window.micros();
    Duration::from_micros(if w < 12 * HOUR {
        5 * MINUTE
    } else if w < 12 * DAY {
        HOUR
    } else {
        DAY
    })
}

/// `t` rounded down to a multiple of `hop` (epoch-aligned; times before 1970 too).
pub fn align(t: Timestamp, hop: Duration) -> Timestamp {
    t - t.rem_euclid(hop.micros())
}

/// The events a window covers at `t`: `[align(t − window, hop), t)`.
pub fn window_range(t: Timestamp, window: Duration, hop: Duration) -> (Timestamp, Timestamp) {
    (align(t.saturating_sub(window.micros()), hop), t)
}

/// A window's label in output feature names: its length in the largest unit that
/// divides it (`7d`, `36h`, `90m`, `30s`), so a name reads as the window was written.
pub fn window_label(window: Duration) -> String {
    let w = window.micros();
    for (unit, len) in [
        ("d", DAY),
        ("h", HOUR),
        ("m", MINUTE),
        ("s", 1_000_000),
        ("ms", 1_000),
    ] {
        if w != 0 && w % len == 0 {
            return format!("{}{unit}", w / len);
        }
    }
    format!("{w}us")
}

/// Why a window and hop cannot be used, for the definition's error message.
pub fn check_window(window: Duration, hop: Duration) -> Result<(), String> {
    if window.micros() <= 0 {
        return Err("a window must be longer than 0".into());
    }
    if hop.micros() <= 0 {
        return Err("a hop must be longer than 0".into());
    }
    if window.micros() % hop.micros() != 0 {
        return Err(format!(
            "the window {window} is not a multiple of its hop {hop}"
        ));
    }
    Ok(())
}

/// One output feature: an aggregation of one column over one window.
#[derive(Clone, Debug)]
pub struct WindowedFeature {
    pub aggregation: Aggregation,
    /// Which of an event's values the aggregation reads (ignored by count_star).
    pub column: usize,
    pub window: Duration,
    pub hop: Duration,
}

/// One event of a key: where it sorts and its values, one per column.
#[derive(Clone, Copy, Debug)]
pub struct EventRef<'a> {
    pub order: Order,
    pub values: &'a [Input<'a>],
}

/// Computes `features` at every label time of one key. `events` must be sorted by
/// event time, `labels` ascending; `out(label, feature, value)` is called for every
/// label and feature.
pub fn evaluate_key(
    features: &[WindowedFeature],
    events: &[EventRef<'_>],
    labels: &[Timestamp],
    mut out: impl FnMut(usize, usize, Result<Value, FinalizeError>),
) {
    debug_assert!(events
        .windows(2)
        .all(|w| w[0].order.event_ts <= w[1].order.event_ts));
    debug_assert!(labels.windows(2).all(|w| w[0] <= w[1]));
    // Features of one hop share their tiles: one pass over the events per hop.
    let mut hops: Vec<Duration> = features.iter().map(|f| f.hop).collect();
    hops.sort();
    hops.dedup();
    for hop in hops {
        let members: Vec<usize> = (0..features.len())
            .filter(|&i| features[i].hop == hop)
            .collect();
        // The tiles of this hop: (start, one IR per member), ascending, built once.
        let mut tiles: Vec<(Timestamp, Vec<Ir>)> = Vec::new();
        for e in events {
            let start = align(e.order.event_ts, hop);
            if tiles.last().map(|t| t.0) != Some(start) {
                let empty = members.iter().map(|&i| features[i].aggregation.empty());
                tiles.push((start, empty.collect()));
            }
            let irs = &mut tiles.last_mut().expect("pushed").1;
            for (ir, &i) in irs.iter_mut().zip(&members) {
                let f = &features[i];
                let v = e.values.get(f.column).copied().unwrap_or(Input::Null);
                f.aggregation.update(ir, v, e.order);
            }
        }
        for (j, &fi) in members.iter().enumerate() {
            let f = &features[fi];
            let mut queue = SlidingWindow::new(&f.aggregation);
            let (mut next_tile, mut first_event) = (0usize, 0usize);
            for (li, &t) in labels.iter().enumerate() {
                let (lo, _) = window_range(t, f.window, hop);
                let head = align(t, hop);
                // Whole tiles: starts in [lo, head).
                while next_tile < tiles.len() && tiles[next_tile].0 < head {
                    queue.push(tiles[next_tile].0, tiles[next_tile].1[j].clone());
                    next_tile += 1;
                }
                queue.pop_before(lo);
                // The head: events in [head, t).
                while first_event < events.len() && events[first_event].order.event_ts < head {
                    first_event += 1;
                }
                let mut ir = queue.merged();
                for e in &events[first_event..] {
                    if e.order.event_ts >= t {
                        break;
                    }
                    let v = e.values.get(f.column).copied().unwrap_or(Input::Null);
                    f.aggregation.update(&mut ir, v, e.order);
                }
                out(li, fi, f.aggregation.finalize(&ir));
            }
        }
    }
}

/// A FIFO of tiles with the merge of its contents, by two stacks: pushes go on the
/// back (with a running merge), pops come off the front, which holds suffix merges
/// rebuilt from the back when it runs out. Amortized O(1) merges per push and pop.
struct SlidingWindow<'a> {
    agg: &'a Aggregation,
    /// (tile start, merge of this tile and every tile after it in the front stack),
    /// oldest tile last.
    front: Vec<(Timestamp, Ir)>,
    /// Tiles pushed since the front was last rebuilt, oldest first.
    back: Vec<(Timestamp, Ir)>,
    /// The merge of `back`.
    back_merged: Ir,
}

impl<'a> SlidingWindow<'a> {
    fn new(agg: &'a Aggregation) -> Self {
        SlidingWindow {
            agg,
            front: Vec::new(),
            back: Vec::new(),
            back_merged: agg.empty(),
        }
    }

    fn push(&mut self, start: Timestamp, ir: Ir) {
        self.agg.merge(&mut self.back_merged, &ir);
        self.back.push((start, ir));
    }

    /// Drops the tiles that start before `lo`.
    fn pop_before(&mut self, lo: Timestamp) {
        loop {
            if self.front.is_empty() {
                if self.back.first().is_none_or(|t| t.0 >= lo) {
                    return;
                }
                // Rebuild the front from the back: suffix merges, oldest on top.
                let mut acc = self.agg.empty();
                for (start, ir) in self.back.drain(..).rev() {
                    self.agg.merge(&mut acc, &ir);
                    self.front.push((start, acc.clone()));
                }
                self.back_merged = self.agg.empty();
            }
            match self.front.last() {
                Some(t) if t.0 < lo => {
                    self.front.pop();
                }
                _ => return,
            }
        }
    }

    /// The merge of every tile in the queue.
    fn merged(&self) -> Ir {
        let mut ir = match self.front.last() {
            Some((_, suffix)) => suffix.clone(),
            None => self.agg.empty(),
        };
        self.agg.merge(&mut ir, &self.back_merged);
        ir
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agg::{Function, Params};
    use crate::dtype::DType;
    use proptest::prelude::*;

    #[test]
    fn default_hops_and_alignment() {
        let d = |s: &str| Duration::parse(s).unwrap();
        assert_eq!(default_hop(d("1h")), d("5m"));
        assert_eq!(default_hop(d("11h")), d("5m"));
        assert_eq!(default_hop(d("12h")), d("1h"));
        assert_eq!(default_hop(d("7d")), d("1h"));
        assert_eq!(default_hop(d("12d")), d("1d"));
        assert_eq!(default_hop(d("90d")), d("1d"));
        assert_eq!(align(7 * MINUTE, d("5m")), 5 * MINUTE);
        assert_eq!(align(-1, d("5m")), -5 * MINUTE);
        assert_eq!(
            window_range(HOUR + 7 * MINUTE, d("1h"), d("5m")),
            (5 * MINUTE, HOUR + 7 * MINUTE)
        );
        assert!(check_window(d("1h"), d("7m"))
            .unwrap_err()
            .contains("not a multiple"));
        assert!(check_window(d("1h"), d("5m")).is_ok());
        assert_eq!(window_label(d("7d")), "7d");
        assert_eq!(window_label(d("1h30m")), "90m");
        assert_eq!(window_label(d("36h")), "36h");
        assert_eq!(window_label(d("90s")), "90s");
    }

    fn aggs() -> Vec<Aggregation> {
        let t = DType::Float64;
        [
            (Function::CountStar, None, Params::default()),
            (Function::Sum, Some(&t), Params::default()),
            (Function::Max, Some(&t), Params::default()),
            (Function::Last, Some(&t), Params::default()),
            (
                Function::LastN,
                Some(&t),
                Params {
                    n: Some(2),
                    ..Default::default()
                },
            ),
            (
                Function::ApproxPercentile,
                Some(&t),
                Params {
                    percentile: Some(0.5),
                    ..Default::default()
                },
            ),
        ]
        .into_iter()
        .map(|(f, c, p)| Aggregation::new(f, c, p).unwrap())
        .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        /// The sliding evaluation equals folding the window's events afresh for every
        /// label, bit for bit, labels on and off tile and window edges.
        #[test]
        fn sliding_tiles_equal_a_fresh_fold_of_each_window(
            mut times in prop::collection::vec(0i64..40, 0..50),
            values in prop::collection::vec(prop::option::of(-100i32..100), 50),
            mut labels in prop::collection::vec(0i64..48, 1..20),
            window_hops in 1i64..6,
            hop_min in prop::sample::select(vec![1i64, 2, 5]),
        ) {
            times.sort_unstable();
            labels.sort_unstable();
            let hop = Duration::from_micros(hop_min * MINUTE);
            let window = Duration::from_micros(window_hops * hop_min * MINUTE);
            let inputs: Vec<[Input<'static>; 1]> = times.iter().enumerate()
                .map(|(i, _)| [values[i].map_or(Input::Null, |v| Input::Float(v as f64 * 0.25))])
                .collect();
            let events: Vec<EventRef<'_>> = times.iter().zip(&inputs).enumerate()
                .map(|(i, (&t, v))| EventRef {
                    order: Order { event_ts: t * MINUTE, created_ts: 0, position: i as u128 },
                    values: v,
                })
                .collect();
            let label_times: Vec<Timestamp> = labels.iter().map(|&l| l * MINUTE).collect();
            let features: Vec<WindowedFeature> = aggs().into_iter()
                .map(|a| WindowedFeature { aggregation: a, column: 0, window, hop })
                .collect();
            let mut got = vec![vec![None; features.len()]; label_times.len()];
            evaluate_key(&features, &events, &label_times, |l, f, v| got[l][f] = Some(v));
            for (li, &t) in label_times.iter().enumerate() {
                let (lo, hi) = window_range(t, window, hop);
                for (fi, f) in features.iter().enumerate() {
                    let mut ir = f.aggregation.empty();
                    for e in events.iter().filter(|e| e.order.event_ts >= lo && e.order.event_ts < hi) {
                        f.aggregation.update(&mut ir, e.values[0], e.order);
                    }
                    let want = f.aggregation.finalize(&ir);
                    let g = got[li][fi].clone().expect("every label and feature");
                    prop_assert_eq!(format!("{g:?}"), format!("{want:?}"), "label {} feature {}", t, f.aggregation.function());
                }
            }
        }
    }
}
