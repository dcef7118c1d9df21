//! Stored tiles (DESIGN §2 "Tiles"): the aggregations of one view that share a hop
//! share a tile, whose bytes hold each one's IR. [`TileLayout::merge_bytes`] is the merge
//! the online store applies (backfills, materialization and streams all write through
//! it), and [`values_of_encoded`] is what an online read computes from a key's stored
//! tiles ([`values_of`] from decoded ones) — the same
//! IRs, merges and finalizers as training sets, so a served value equals the training
//! value at the same time bit for bit.

use crate::time::{Duration, Timestamp};
use crate::value::Value;

use super::exact::{get_uvarint, put_uvarint};
use super::window::{align, window_range, DAY};
use super::{Aggregation, FinalizeError, Input, Ir, Order};

/// The aggregations stored in one tile, in order.
#[derive(Clone, Debug)]
pub struct TileLayout {
    pub aggregations: Vec<Aggregation>,
}

impl TileLayout {
    /// The IRs of an empty tile.
    pub fn empty(&self) -> Vec<Ir> {
        self.aggregations.iter().map(|a| a.empty()).collect()
    }

    /// Makes `irs` an empty tile's IRs ([`Self::empty`]), keeping their buffers.
    pub fn reset(&self, irs: &mut Vec<Ir>) {
        irs.truncate(self.aggregations.len());
        for (a, ir) in self.aggregations.iter().zip(irs.iter_mut()) {
            a.reset(ir);
        }
        for a in &self.aggregations[irs.len()..] {
            irs.push(a.empty());
        }
    }

    /// Adds one event; `values[i]` is aggregation i's column value.
    pub fn update(&self, irs: &mut [Ir], values: &[Input<'_>], order: Order) {
        for ((a, ir), v) in self.aggregations.iter().zip(irs).zip(values) {
            a.update(ir, *v, order);
        }
    }

    /// Tiles (start → IRs, in start order) encoded, each as (start, bytes).
    pub fn encode_tiles<'a>(
        &self,
        tiles: impl IntoIterator<Item = (&'a i64, &'a Vec<Ir>)>,
    ) -> Vec<(i64, Vec<u8>)> {
        tiles
            .into_iter()
            .map(|(start, irs)| {
                let mut bytes = Vec::new();
                self.encode(irs, &mut bytes);
                (*start, bytes)
            })
            .collect()
    }

    /// Appends the tile's bytes: the number of IRs, then each IR's encoding with its
    /// length.
    pub fn encode(&self, irs: &[Ir], out: &mut Vec<u8>) {
        put_uvarint(out, irs.len() as u64);
        for (a, ir) in self.aggregations.iter().zip(irs) {
            // The IR goes straight after a one-byte length, moved along in the rare
            // case that its length takes more bytes.
            let at = out.len();
            out.push(0);
            a.encode(ir, out);
            let len = out.len() - at - 1;
            if len < 0x80 {
                out[at] = len as u8;
            } else {
                let mut prefix = Vec::with_capacity(10);
                put_uvarint(&mut prefix, len as u64);
                out.splice(at..at + 1, prefix);
            }
        }
    }

    /// Reads a tile's bytes.
    pub fn decode(&self, bytes: &[u8]) -> Result<Vec<Ir>, FinalizeError> {
        let mut parts = Vec::with_capacity(self.aggregations.len());
        self.split(bytes, &mut parts)?;
        self.aggregations
            .iter()
            .zip(parts)
            .map(|(a, part)| a.decode(part))
            .collect()
    }

    /// Appends to `parts` the bytes of each IR of a tile, in slot order.
    pub fn split<'a>(
        &self,
        bytes: &'a [u8],
        parts: &mut Vec<&'a [u8]>,
    ) -> Result<(), FinalizeError> {
        self.for_each_part(bytes, |_, part| {
            parts.push(part);
            Ok(())
        })
    }

    /// Calls `f(slot, bytes)` for each IR of a tile's bytes, in slot order, after
    /// checking that the tile holds this layout's number of IRs.
    fn for_each_part<'a>(
        &self,
        bytes: &'a [u8],
        mut f: impl FnMut(usize, &'a [u8]) -> Result<(), FinalizeError>,
    ) -> Result<(), FinalizeError> {
        let bad = || FinalizeError("a stored tile does not decode".into());
        let mut input = bytes;
        let n = get_uvarint(&mut input).ok_or_else(bad)? as usize;
        if n != self.aggregations.len() {
            return Err(FinalizeError(format!(
                "a stored tile holds {n} aggregations, the view has {} (written by another \
                 version of its definition?)",
                self.aggregations.len()
            )));
        }
        for slot in 0..n {
            let len = get_uvarint(&mut input).ok_or_else(bad)? as usize;
            if input.len() < len {
                return Err(bad());
            }
            f(slot, &input[..len])?;
            input = &input[len..];
        }
        if !input.is_empty() {
            return Err(bad());
        }
        Ok(())
    }

    /// Appends `merge(stored, delta)`: the online store's tile merge. A tile not stored
    /// yet takes the delta's bytes as they are (merging into empty IRs is the identity,
    /// and encodings are canonical) once they are checked to split into this layout's
    /// IRs; otherwise both are decoded into IRs kept per thread, merged and encoded.
    pub fn merge_bytes(
        &self,
        stored: Option<&[u8]>,
        delta: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), FinalizeError> {
        let Some(stored) = stored else {
            self.for_each_part(delta, |_, _| Ok(()))?;
            out.extend_from_slice(delta);
            return Ok(());
        };
        MERGE_SCRATCH.with_borrow_mut(|(irs, other)| {
            self.decode_all_into(stored, irs)?;
            self.decode_all_into(delta, other)?;
            for ((a, ir), d) in self.aggregations.iter().zip(irs.iter_mut()).zip(&*other) {
                a.merge(ir, d);
            }
            self.encode(&irs[..self.aggregations.len()], out);
            Ok(())
        })
    }

    /// Decodes a tile's bytes into `irs` (grown as needed), reusing their buffers.
    fn decode_all_into(&self, bytes: &[u8], irs: &mut Vec<Ir>) -> Result<(), FinalizeError> {
        while irs.len() < self.aggregations.len() {
            irs.push(Ir::Count(0));
        }
        self.for_each_part(bytes, |slot, part| {
            self.aggregations[slot].decode_into(part, &mut irs[slot])
        })
    }
}

thread_local! {
    /// [`TileLayout::merge_bytes`]'s decoded IRs, kept between calls with their buffers.
    static MERGE_SCRATCH: std::cell::RefCell<(Vec<Ir>, Vec<Ir>)> = Default::default();
}

/// The tile starts a read at `t` needs for windows up to `longest`: from
/// `align(t − longest, hop)` to `align(t, hop)` (the head tile) inclusive.
pub fn tile_starts(t: Timestamp, longest: Duration, hop: Duration) -> Vec<Timestamp> {
    let (lo, _) = window_range(t, longest, hop);
    let head = align(t, hop);
    let h = hop.micros();
    (0..=((head - lo) / h)).map(|i| lo + i * h).collect()
}

/// Whether a tile group of hop `hop` whose longest window is `longest` also keeps day
/// tiles: the hop divides a day and the longest window spans at least two, so that a
/// read of it merges a day tile for each whole day instead of that day's hop tiles.
pub fn keeps_day_tiles(hop: Duration, longest: Duration) -> bool {
    let h = hop.micros();
    h > 0 && h < DAY && DAY % h == 0 && longest.micros() >= 2 * DAY
}

/// How an output's window at `t` is read from hop and day tiles: its start `lo`, and,
/// when whole days lie inside it, the first of them `d1` (day tiles cover `[d1, d2)`,
/// `d2 = align(t, day)`; hop tiles cover `[lo, d1)` and `[d2, head]`).
fn window_days(t: Timestamp, window: Duration, hop: Duration) -> (Timestamp, Option<Timestamp>) {
    let day = Duration::from_micros(DAY);
    let lo = window_range(t, window, hop).0;
    let d1 = if lo.rem_euclid(DAY) == 0 {
        lo
    } else {
        align(lo, day).saturating_add(DAY)
    };
    (lo, (d1 < align(t, day)).then_some(d1))
}

/// The hop-tile and day-tile starts a read at `t` of `windows` needs when the group keeps
/// day tiles (one for every day with events): the hop tiles of each window's partial
/// days, the day tiles of its whole days.
pub fn layered_starts(
    t: Timestamp,
    windows: &[Duration],
    hop: Duration,
) -> (Vec<Timestamp>, Vec<Timestamp>) {
    let (h, head, d2) = (
        hop.micros(),
        align(t, hop),
        align(t, Duration::from_micros(DAY)),
    );
    let mut hops = Vec::new();
    let mut days = Vec::new();
    for &w in windows {
        let (lo, d1) = window_days(t, w, hop);
        match d1 {
            Some(d1) => {
                hops.extend((0..(d1 - lo) / h).map(|i| lo + i * h));
                hops.extend((0..=(head - d2) / h).map(|i| d2 + i * h));
                days.extend((0..(d2 - d1) / DAY).map(|i| d1 + i * DAY));
            }
            None => hops.extend((0..=(head - lo) / h).map(|i| lo + i * h)),
        }
    }
    for v in [&mut hops, &mut days] {
        v.sort_unstable();
        v.dedup();
    }
    (hops, days)
}

/// [`values_of_encoded`] for a group that keeps day tiles: each output's window from the
/// hop tiles of its partial days, and for each whole day its day tile (a whole day's hop
/// tiles, when given, count only for a day without a day tile). Per slot the hop tiles of the current day are merged
/// once, then each output's own part into a copy; every sequence newest first. Merges
/// are exact, so the values are those of the hop tiles alone, bit for bit.
pub fn values_of_layered(
    layout: &TileLayout,
    outputs: &[TileOutput],
    hop: Duration,
    hop_tiles: &[(Timestamp, &[u8])],
    day_tiles: &[(Timestamp, &[u8])],
    t: Timestamp,
) -> Result<Vec<Result<Value, FinalizeError>>, FinalizeError> {
    let slots = layout.aggregations.len();
    // Each tile's slots, split when the tile is first merged (most hop tiles of a long
    // window are not: their days are read from day tiles).
    let mut parts_of: [Vec<Option<Vec<&[u8]>>>; 2] =
        [vec![None; hop_tiles.len()], vec![None; day_tiles.len()]];
    let mut newest_first: [Vec<usize>; 2] = [
        (0..hop_tiles.len()).collect(),
        (0..day_tiles.len()).collect(),
    ];
    newest_first[0].sort_by_key(|&i| std::cmp::Reverse(hop_tiles[i].0));
    newest_first[1].sort_by_key(|&i| std::cmp::Reverse(day_tiles[i].0));
    let starts = [hop_tiles, day_tiles];
    let mut scratch = layout.empty();
    let head = align(t, hop);
    let day = Duration::from_micros(DAY);
    let d2 = align(t, day);
    let mut stored_days: Vec<Timestamp> = day_tiles.iter().map(|t| t.0).collect();
    stored_days.sort_unstable();
    let has_day = |d: Timestamp| stored_days.binary_search(&d).is_ok();
    // Merges into `ir` slot `slot` of the tiles in `parts` — (layer, [from, to], whether
    // only hop tiles of days without a day tile count) — all together newest first, so
    // that a slot complete for earlier tiles stops at the right one.
    let mut picked: Vec<(Timestamp, usize, usize)> = Vec::new();
    let mut merge = |slot: usize,
                     parts: &[(usize, Timestamp, Timestamp, bool)],
                     ir: &mut Ir|
     -> Result<(), FinalizeError> {
        let agg = &layout.aggregations[slot];
        picked.clear();
        for &(layer, from, to, whole_days) in parts {
            for &i in &newest_first[layer] {
                let start = starts[layer][i].0;
                if start >= from && start <= to && !(whole_days && has_day(align(start, day))) {
                    picked.push((start, layer, i));
                }
            }
        }
        picked.sort_unstable_by(|a, b| b.cmp(a));
        for &(_, layer, i) in picked.iter() {
            if agg.complete_for_earlier_tiles(ir) {
                break;
            }
            let split = match &mut parts_of[layer][i] {
                Some(split) => split,
                slot_parts @ None => {
                    let mut split = Vec::with_capacity(slots);
                    layout.split(starts[layer][i].1, &mut split)?;
                    slot_parts.insert(split)
                }
            };
            agg.decode_into(split[slot], &mut scratch[slot])?;
            agg.merge(ir, &scratch[slot]);
        }
        Ok(())
    };
    let mut values: Vec<Option<Result<Value, FinalizeError>>> = vec![None; outputs.len()];
    for (slot, agg) in layout.aggregations.iter().enumerate() {
        let members: Vec<usize> = (0..outputs.len())
            .filter(|&i| outputs[i].slot == slot)
            .collect();
        if members.is_empty() {
            continue;
        }
        // The hop tiles of the current day, shared by every window reaching before it.
        let mut today = agg.empty();
        merge(slot, &[(0, d2, head, false)], &mut today)?;
        for i in members {
            let (lo, d1) = window_days(t, outputs[i].window, hop);
            let ir = if lo >= d2 {
                let mut ir = agg.empty();
                merge(slot, &[(0, lo, head, false)], &mut ir)?;
                ir
            } else {
                let mut ir = today.clone();
                match d1 {
                    // Whole days: day tiles, and the hop tiles of days without one.
                    Some(d1) => merge(
                        slot,
                        &[
                            (1, d1, d2 - 1, false),
                            (0, d1, d2 - 1, true),
                            (0, lo, d1 - 1, false),
                        ],
                        &mut ir,
                    )?,
                    None => merge(slot, &[(0, lo, d2 - 1, false)], &mut ir)?,
                }
                ir
            };
            values[i] = Some(outputs[i].aggregation.finalize(&ir));
        }
    }
    Ok(values
        .into_iter()
        .map(|v| v.expect("every output reads a slot"))
        .collect())
}

/// One output of a tile group: the aggregation finalizing it, the tile slot (IR) it
/// reads and its window. Outputs whose IRs are the same ([`Aggregation::shares_ir`]:
/// `sum` and `mean` of a column, or one function over several windows) read one slot.
#[derive(Clone, Debug)]
pub struct TileOutput {
    pub slot: usize,
    pub aggregation: Aggregation,
    pub window: Duration,
}

/// Each aggregation's value at `t` from a key's tiles of one hop, one slot per output:
/// see [`values_of`].
pub fn values_at(
    layout: &TileLayout,
    windows: &[Duration],
    hop: Duration,
    tiles: &[(Timestamp, Vec<Ir>)],
    t: Timestamp,
) -> Vec<Result<Value, FinalizeError>> {
    let outputs: Vec<TileOutput> = layout
        .aggregations
        .iter()
        .zip(windows)
        .enumerate()
        .map(|(slot, (a, &window))| TileOutput {
            slot,
            aggregation: a.clone(),
            window,
        })
        .collect();
    values_of(layout, &outputs, hop, tiles, t)
}

/// Each output's value at `t` from a key's tiles of one hop: `tiles` are (start, IRs)
/// in any order. Tiles wholly inside the output's window and the head tile
/// `align(t, hop)` are merged: the head tile must hold only events before `t` (online,
/// `t` is the read time, after every stored event). Each slot's tiles are merged once,
/// newest first, each output finalized when its window's oldest tile is in — merges
/// are exact, so the order does not change a value.
pub fn values_of(
    layout: &TileLayout,
    outputs: &[TileOutput],
    hop: Duration,
    tiles: &[(Timestamp, Vec<Ir>)],
    t: Timestamp,
) -> Vec<Result<Value, FinalizeError>> {
    let starts: Vec<Timestamp> = tiles.iter().map(|(s, _)| *s).collect();
    merged(layout, outputs, hop, &starts, t, |tile, slot, agg, ir| {
        agg.merge(ir, &tiles[tile].1[slot]);
        Ok(())
    })
    .expect("decoded tiles merge")
}

/// [`values_of`] from the tiles as stored (start, bytes): each slot of each tile is
/// decoded into one reused IR and merged, so that a read allocates per slot, not per
/// tile. An error when a tile's framing, or a slot merged, does not decode (slots no
/// window merges are not decoded).
pub fn values_of_encoded(
    layout: &TileLayout,
    outputs: &[TileOutput],
    hop: Duration,
    tiles: &[(Timestamp, &[u8])],
    t: Timestamp,
) -> Result<Vec<Result<Value, FinalizeError>>, FinalizeError> {
    let slots = layout.aggregations.len();
    let mut parts = Vec::with_capacity(tiles.len() * slots);
    for (_, bytes) in tiles {
        layout.split(bytes, &mut parts)?;
    }
    let mut scratch = layout.empty();
    let starts: Vec<Timestamp> = tiles.iter().map(|(s, _)| *s).collect();
    merged(layout, outputs, hop, &starts, t, |tile, slot, agg, ir| {
        agg.decode_into(parts[tile * slots + slot], &mut scratch[slot])?;
        agg.merge(ir, &scratch[slot]);
        Ok(())
    })
}

/// The outputs' values at `t`, merging slot `slot` of tile `i` (start `starts[i]`) into
/// an IR by `merge(i, slot, aggregation, ir)`: each slot's tiles newest first, each
/// output finalized when its window's oldest tile is in; a slot whose IR earlier tiles
/// cannot change (last, last_n once full) merges no more.
fn merged(
    layout: &TileLayout,
    outputs: &[TileOutput],
    hop: Duration,
    starts: &[Timestamp],
    t: Timestamp,
    mut merge: impl FnMut(usize, usize, &Aggregation, &mut Ir) -> Result<(), FinalizeError>,
) -> Result<Vec<Result<Value, FinalizeError>>, FinalizeError> {
    let head = align(t, hop);
    let mut newest_first: Vec<usize> = (0..starts.len()).filter(|&i| starts[i] <= head).collect();
    newest_first.sort_by_key(|&i| std::cmp::Reverse(starts[i]));
    let mut values: Vec<Option<Result<Value, FinalizeError>>> = vec![None; outputs.len()];
    let mut members: Vec<(Timestamp, usize)> = Vec::new();
    for (slot, agg) in layout.aggregations.iter().enumerate() {
        // This slot's outputs by window start, latest (shortest window) first.
        members.clear();
        members.extend(
            outputs
                .iter()
                .enumerate()
                .filter(|(_, o)| o.slot == slot)
                .map(|(i, o)| (window_range(t, o.window, hop).0, i)),
        );
        if members.is_empty() {
            continue;
        }
        members.sort_by_key(|&(lo, i)| (std::cmp::Reverse(lo), i));
        let mut ir = agg.empty();
        let mut next = 0;
        for &(lo, i) in &members {
            while next < newest_first.len() && starts[newest_first[next]] >= lo {
                if !agg.complete_for_earlier_tiles(&ir) {
                    merge(newest_first[next], slot, agg, &mut ir)?;
                }
                next += 1;
            }
            values[i] = Some(outputs[i].aggregation.finalize(&ir));
        }
    }
    Ok(values
        .into_iter()
        .map(|v| v.expect("every output reads a slot"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agg::window::{evaluate_key, EventRef, WindowedFeature};
    use crate::agg::{Function, Params};
    use crate::dtype::DType;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const MINUTE: i64 = 60_000_000;

    fn layout() -> (TileLayout, Vec<Duration>) {
        let f = DType::Float64;
        let aggs = [
            (Function::CountStar, None, Params::default(), 60),
            (Function::Sum, Some(&f), Params::default(), 60),
            (Function::Sum, Some(&f), Params::default(), 15),
            (Function::Mean, Some(&f), Params::default(), 30),
            (Function::Min, Some(&f), Params::default(), 60),
            (Function::Last, Some(&f), Params::default(), 60),
            (
                Function::LastN,
                Some(&f),
                Params {
                    n: Some(3),
                    ..Default::default()
                },
                60,
            ),
            (Function::Stddev, Some(&f), Params::default(), 60),
            (
                Function::ApproxPercentile,
                Some(&f),
                Params {
                    percentile: Some(0.5),
                    ..Default::default()
                },
                60,
            ),
            (
                Function::ApproxCountDistinct,
                Some(&f),
                Params::default(),
                60,
            ),
        ];
        let windows = aggs
            .iter()
            .map(|a| Duration::from_micros(a.3 * MINUTE))
            .collect();
        let layout = TileLayout {
            aggregations: aggs
                .into_iter()
                .map(|(f, c, p, _)| Aggregation::new(f, c, p).unwrap())
                .collect(),
        };
        (layout, windows)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        /// A group that keeps day tiles reads each window's whole days from them and its
        /// partial days from hop tiles: the same values, bit for bit, as reading every
        /// hop tile — for windows shorter than, as long as and longer than a day, read at
        /// times on and off hop and day boundaries.
        #[test]
        fn day_tiles_read_like_hop_tiles(
            events in prop::collection::vec((0i64..10 * 24 * 60, prop::option::of(-1000i64..1000)), 0..150),
            t_minute in 9i64 * 24 * 60..11 * 24 * 60,
            t_edge in 0u8..3,
        ) {
            let (layout, _) = layout();
            let hop = Duration::from_micros(60 * MINUTE);
            let day = 24 * 60;
            let t = match t_edge {
                0 => t_minute,
                1 => t_minute - t_minute % 60,
                _ => t_minute - t_minute % day,
            } * MINUTE;
            let windows: Vec<Duration> = [60, 7 * day, day, 2 * day + 300, 3 * day, 10 * day, 5 * day, 4 * day, day + 60, 2 * day]
                .iter()
                .map(|m| Duration::from_micros(m * MINUTE))
                .collect();
            let outputs: Vec<TileOutput> = layout
                .aggregations
                .iter()
                .zip(&windows)
                .enumerate()
                .map(|(slot, (a, &window))| TileOutput { slot, aggregation: a.clone(), window })
                .collect();
            // Hop tiles and day tiles of the events before t.
            let mut hours: BTreeMap<Timestamp, Vec<Ir>> = BTreeMap::new();
            let mut days: BTreeMap<Timestamp, Vec<Ir>> = BTreeMap::new();
            for (i, e) in events.iter().enumerate().filter(|(_, e)| e.0 * MINUTE < t) {
                let order = Order { event_ts: e.0 * MINUTE, created_ts: 0, position: i as u128 };
                let vals = vec![e.1.map_or(Input::Null, |v| Input::Float(v as f64 / 8.0)); layout.aggregations.len()];
                for (tiles, len) in [(&mut hours, hop), (&mut days, Duration::from_micros(DAY))] {
                    let irs = tiles.entry(align(order.event_ts, len)).or_insert_with(|| layout.empty());
                    layout.update(irs, &vals, order);
                }
            }
            let encode = |tiles: &BTreeMap<Timestamp, Vec<Ir>>| -> BTreeMap<Timestamp, Vec<u8>> {
                tiles.iter().map(|(s, irs)| {
                    let mut b = Vec::new();
                    layout.encode(irs, &mut b);
                    (*s, b)
                }).collect()
            };
            let (hours, days) = (encode(&hours), encode(&days));
            let longest = windows.iter().copied().max().unwrap();
            let all: Vec<(Timestamp, &[u8])> = tile_starts(t, longest, hop)
                .iter()
                .filter_map(|s| hours.get(s).map(|b| (*s, b.as_slice())))
                .collect();
            let want = values_of_encoded(&layout, &outputs, hop, &all, t).unwrap();
            let (hop_starts, day_starts) = layered_starts(t, &windows, hop);
            let pick = |starts: &[Timestamp], tiles: &BTreeMap<Timestamp, Vec<u8>>| -> Vec<(Timestamp, Vec<u8>)> {
                starts.iter().filter_map(|s| tiles.get(s).map(|b| (*s, b.clone()))).collect()
            };
            let (h, d) = (pick(&hop_starts, &hours), pick(&day_starts, &days));
            let h: Vec<(Timestamp, &[u8])> = h.iter().map(|(s, b)| (*s, b.as_slice())).collect();
            let d: Vec<(Timestamp, &[u8])> = d.iter().map(|(s, b)| (*s, b.as_slice())).collect();
            let got = values_of_layered(&layout, &outputs, hop, &h, &d, t).unwrap();
            prop_assert_eq!(format!("{got:?}"), format!("{want:?}"));
        }

        /// However events reach the tiles — whole tiles computed at once (a backfill),
        /// one delta per event merged in any order (a stream), or a mix — the values
        /// read from the tiles at T equal the training-set values at T, bit for bit.
        #[test]
        fn tiles_written_any_way_read_like_the_training_set(
            events in prop::collection::vec((0i64..120, prop::option::of(-1000i64..1000), 0u8..3), 0..60),
            t_after in 0i64..30,
            seed in any::<u64>(),
        ) {
            let (layout, windows) = layout();
            let hop = Duration::from_micros(5 * MINUTE);
            let mut evs = events.clone();
            evs.sort_by_key(|e| e.0);
            let t = (evs.last().map_or(0, |e| e.0) + 1 + t_after) * MINUTE;
            let values: Vec<Input<'static>> = evs
                .iter()
                .map(|e| e.1.map_or(Input::Null, |v| Input::Float(v as f64 / 8.0)))
                .collect();
            let orders: Vec<Order> = evs
                .iter()
                .enumerate()
                .map(|(i, e)| Order { event_ts: e.0 * MINUTE, created_ts: 0, position: i as u128 })
                .collect();
            // Training-set values at t.
            let inputs: Vec<Vec<Input<'static>>> = values.iter().map(|v| vec![*v]).collect();
            let refs: Vec<EventRef<'_>> = orders.iter().zip(&inputs)
                .map(|(o, v)| EventRef { order: *o, values: v })
                .collect();
            let features: Vec<WindowedFeature> = layout.aggregations.iter().zip(&windows)
                .map(|(a, &w)| WindowedFeature { aggregation: a.clone(), column: 0, window: w, hop })
                .collect();
            let mut want = vec![String::new(); features.len()];
            evaluate_key(&features, &refs, &[t], |_, f, v| want[f] = format!("{v:?}"));

            // Tiles through the stored bytes: per event, a backfill or a stream delta.
            let mut stored: BTreeMap<Timestamp, Vec<u8>> = BTreeMap::new();
            let mut batch: BTreeMap<Timestamp, Vec<Ir>> = BTreeMap::new();
            let mut r = seed;
            let mut order: Vec<usize> = (0..evs.len()).collect();
            for i in (1..order.len()).rev() {
                r = r.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                order.swap(i, (r >> 33) as usize % (i + 1));
            }
            for &i in &order {
                let start = align(orders[i].event_ts, hop);
                let vals = vec![values[i]; layout.aggregations.len()];
                if evs[i].2 == 0 {
                    // Stream: a one-event delta merged into the stored tile.
                    let mut irs = layout.empty();
                    layout.update(&mut irs, &vals, orders[i]);
                    let mut delta = Vec::new();
                    layout.encode(&irs, &mut delta);
                    let mut out = Vec::new();
                    layout.merge_bytes(stored.get(&start).map(|v| v.as_slice()), &delta, &mut out).unwrap();
                    stored.insert(start, out);
                } else {
                    let irs = batch.entry(start).or_insert_with(|| layout.empty());
                    layout.update(irs, &vals, orders[i]);
                }
            }
            // The backfilled part arrives as whole-tile deltas.
            for (start, irs) in &batch {
                let mut delta = Vec::new();
                layout.encode(irs, &mut delta);
                let mut out = Vec::new();
                layout.merge_bytes(stored.get(start).map(|v| v.as_slice()), &delta, &mut out).unwrap();
                stored.insert(*start, out);
            }
            let longest = windows.iter().copied().max().unwrap();
            let starts = tile_starts(t, longest, hop);
            let tiles: Vec<(Timestamp, Vec<Ir>)> = starts
                .iter()
                .filter_map(|s| stored.get(s).map(|b| (*s, layout.decode(b).unwrap())))
                .collect();
            let got: Vec<String> = values_at(&layout, &windows, hop, &tiles, t)
                .iter()
                .map(|v| format!("{v:?}"))
                .collect();
            prop_assert_eq!(got, want);
        }
    }

    /// IRs longer than 127 bytes take a longer length prefix; a tile not stored yet
    /// stores the delta's bytes; a merge into a stored tile equals the merge of the
    /// decoded IRs, also when the thread's scratch IRs last held another layout's.
    #[test]
    fn tile_bytes_of_long_irs_round_trip_and_merge() {
        let (layout, _) = layout();
        let f = DType::Float64;
        let long = TileLayout {
            aggregations: vec![
                Aggregation::new(
                    Function::LastN,
                    Some(&f),
                    Params {
                        n: Some(40),
                        ..Default::default()
                    },
                )
                .unwrap(),
                Aggregation::new(Function::Sum, Some(&f), Params::default()).unwrap(),
            ],
        };
        let tile = |from: i64, to: i64| {
            let mut irs = long.empty();
            for i in from..to {
                let order = Order {
                    event_ts: i * MINUTE,
                    created_ts: 0,
                    position: i as u128,
                };
                let x = Input::Float(i as f64 * 1e300 / 3.0);
                long.update(&mut irs, &[x, x], order);
            }
            irs
        };
        let (a, b) = (tile(0, 30), tile(30, 70));
        let mut bytes_a = Vec::new();
        long.encode(&a, &mut bytes_a);
        assert!(bytes_a.len() > 2 * 128, "{}", bytes_a.len());
        assert_eq!(long.decode(&bytes_a).unwrap(), a);
        let mut bytes_b = Vec::new();
        long.encode(&b, &mut bytes_b);

        let mut out = vec![7u8]; // existing bytes stay
        long.merge_bytes(None, &bytes_a, &mut out).unwrap();
        assert_eq!(&out[1..], &bytes_a[..]);
        assert!(long.merge_bytes(None, &bytes_a[1..], &mut out).is_err());

        // Another layout's merge first, so that the scratch IRs are of other kinds.
        let mut other = Vec::new();
        layout.encode(&layout.empty(), &mut other);
        layout
            .merge_bytes(Some(&other), &other, &mut Vec::new())
            .unwrap();
        let mut merged = Vec::new();
        long.merge_bytes(Some(&bytes_a), &bytes_b, &mut merged)
            .unwrap();
        let mut want = a.clone();
        for ((agg, ir), d) in long.aggregations.iter().zip(&mut want).zip(&b) {
            agg.merge(ir, d);
        }
        assert_eq!(long.decode(&merged).unwrap(), want);
        let mut want_bytes = Vec::new();
        long.encode(&want, &mut want_bytes);
        assert_eq!(merged, want_bytes);
    }

    #[test]
    fn tiles_of_another_layout_are_errors() {
        let (layout, _) = layout();
        let mut bytes = Vec::new();
        layout.encode(&layout.empty(), &mut bytes);
        let other = TileLayout {
            aggregations: layout.aggregations[..3].to_vec(),
        };
        assert!(other
            .decode(&bytes)
            .unwrap_err()
            .0
            .contains("holds 10 aggregations"));
        assert!(layout.decode(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn tile_starts_cover_the_longest_window_and_the_head() {
        let hop = Duration::from_micros(5 * MINUTE);
        let starts = tile_starts(62 * MINUTE, Duration::from_micros(60 * MINUTE), hop);
        assert_eq!(starts.first(), Some(&0));
        assert_eq!(starts.last(), Some(&(60 * MINUTE)));
        assert_eq!(starts.len(), 13);
    }
}
