//! Checks of tile merges, stream positions, tile deletion and declared capabilities.
//!
//! IRs are opaque to a store, so these checks bring their own [`TileMerger`]s: [`Count`]
//! (an 8-byte little-endian `u64`, merged by addition, to count lost updates exactly),
//! [`Append`] (the bytes of the deltas in the order they were merged, to see order and
//! values bit for bit) and [`FailOn`] (appends, but fails on one marked delta).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use quiver_core::Timestamp;

use super::{tagged_row, Ns};
use crate::{
    Error, FieldId, KeyMerge, MergeStats, OnlineStore, OnlineWrite, Result, StreamPosition,
    TileDelta, TileMerger,
};

/// An IR that counts: 8 bytes, a little-endian `u64`; merge adds.
pub struct Count;

impl Count {
    /// The IR of `n`.
    pub fn ir(n: u64) -> [u8; 8] {
        n.to_le_bytes()
    }

    /// The count an IR holds.
    pub fn value(ir: &[u8]) -> Option<u64> {
        Some(u64::from_le_bytes(ir.try_into().ok()?))
    }
}

impl TileMerger for Count {
    fn merge(&self, stored: Option<&[u8]>, delta: &[u8], out: &mut Vec<u8>) -> Result<()> {
        let parse = |b: &[u8]| {
            Count::value(b)
                .ok_or_else(|| Error::Invalid(format!("a count IR of {} bytes", b.len())))
        };
        let sum = stored.map_or(Ok(0), parse)? + parse(delta)?;
        out.extend_from_slice(&Count::ir(sum));
        Ok(())
    }
}

/// An IR that is the concatenation of its deltas, in merge order.
pub struct Append;

impl TileMerger for Append {
    fn merge(&self, stored: Option<&[u8]>, delta: &[u8], out: &mut Vec<u8>) -> Result<()> {
        out.extend_from_slice(stored.unwrap_or_default());
        out.extend_from_slice(delta);
        Ok(())
    }
}

/// [`Append`], failing on the delta `marker`.
pub struct FailOn(pub &'static [u8]);

impl TileMerger for FailOn {
    fn merge(&self, stored: Option<&[u8]>, delta: &[u8], out: &mut Vec<u8>) -> Result<()> {
        if delta == self.0 {
            return Err(Error::Invalid("the delta marked to fail".into()));
        }
        Append.merge(stored, delta, out)
    }
}

fn tiles<'a>(deltas: &[(Timestamp, &'a [u8])]) -> Vec<TileDelta<'a>> {
    deltas
        .iter()
        .map(|&(start, ir)| TileDelta {
            layer: None,
            start,
            ir,
        })
        .collect()
}

fn at(partition: &[u8], offset: u128) -> Option<StreamPosition<'_>> {
    Some(StreamPosition {
        partition,
        offset,
        follows: None,
    })
}

impl Ns {
    async fn merge(
        &self,
        store: &dyn OnlineStore,
        merges: &[KeyMerge<'_>],
        merger: &dyn TileMerger,
    ) -> MergeStats {
        match store.merge_tiles(merges, merger).await {
            Ok(s) => s,
            Err(e) => self.fail(
                store,
                format_args!("merge_tiles of {} requests failed: {e}", merges.len()),
            ),
        }
    }

    async fn read_tiles(
        &self,
        store: &dyn OnlineStore,
        keys: &[&[u8]],
        view: FieldId,
        starts: &[Timestamp],
    ) -> Vec<Option<Vec<u8>>> {
        let cells = match store.read_tiles(keys, view, starts).await {
            Ok(c) => c.to_vecs(),
            Err(e) => self.fail(store, format_args!("read_tiles failed: {e}")),
        };
        if cells.len() != keys.len() * starts.len() {
            self.fail(
                store,
                format_args!(
                    "read_tiles of {} keys x {} starts returned {} tiles",
                    keys.len(),
                    starts.len(),
                    cells.len()
                ),
            );
        }
        cells
    }

    /// Asserts the tiles of (`keys` x `starts`), key-major, are `want`.
    async fn expect_tiles(
        &self,
        store: &dyn OnlineStore,
        keys: &[&[u8]],
        view: FieldId,
        starts: &[Timestamp],
        want: &[Option<&[u8]>],
        context: &str,
    ) {
        let got = self.read_tiles(store, keys, view, starts).await;
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            if g.as_deref() != *w {
                self.fail(
                    store,
                    format_args!(
                        "{context}: tile of key {} at start {} holds {}, expected {}",
                        i / starts.len(),
                        starts[i % starts.len()],
                        show(g.as_deref()),
                        show(*w)
                    ),
                );
            }
        }
    }

    async fn positions(
        &self,
        store: &dyn OnlineStore,
        keys: &[&[u8]],
        view: FieldId,
        partition: &[u8],
    ) -> Vec<Option<u128>> {
        match store.stream_positions(keys, view, partition).await {
            Ok(p) if p.len() == keys.len() => p,
            Ok(p) => self.fail(
                store,
                format_args!(
                    "stream_positions of {} keys returned {}",
                    keys.len(),
                    p.len()
                ),
            ),
            Err(e) => self.fail(store, format_args!("stream_positions failed: {e}")),
        }
    }

    async fn expect_position(
        &self,
        store: &dyn OnlineStore,
        key: &[u8],
        view: FieldId,
        partition: &[u8],
        want: Option<u128>,
        context: &str,
    ) {
        let got = self.positions(store, &[key], view, partition).await[0];
        if got != want {
            self.fail(
                store,
                format_args!(
                    "{context}: the position of partition {:?} is {got:?}, expected {want:?}",
                    String::from_utf8_lossy(partition)
                ),
            );
        }
    }

    fn expect_merge_stats(
        &self,
        store: &dyn OnlineStore,
        got: MergeStats,
        applied: u64,
        skipped: u64,
        tiles: u64,
        context: &str,
    ) {
        if (got.applied, got.skipped, got.tiles) != (applied, skipped, tiles) {
            self.fail(
                store,
                format_args!(
                    "{context}: merge stats {got:?}, expected applied {applied}, skipped \
                     {skipped}, tiles {tiles}"
                ),
            );
        }
    }

    async fn delete_tiles(&self, store: &dyn OnlineStore, view: FieldId, cutoff: Timestamp) -> u64 {
        match store.delete_tiles_before(view, cutoff).await {
            Ok(n) => n,
            Err(e) => self.fail(store, format_args!("delete_tiles_before failed: {e}")),
        }
    }
}

/// An IR for messages: text when it is text, else its length.
fn show(ir: Option<&[u8]>) -> String {
    match ir {
        None => "nothing".into(),
        Some(b) => match (Count::value(b), std::str::from_utf8(b)) {
            (_, Ok(s)) if b.len() <= 64 && !s.contains('\0') => format!("{s:?}"),
            (Some(n), _) => format!("count {n}"),
            _ => format!("{} bytes", b.len()),
        },
    }
}

/// Merges into empty tiles store the deltas; later merges see the stored IR and apply in
/// call order (several deltas for one tile in a request, several requests for one key
/// in a call); `read_tiles` is key-major with `None` for missing tiles; tile starts at
/// the ends of the range, long keys and large IRs round-trip.
pub async fn merges_apply_in_order(store: &dyn OnlineStore) {
    let ns = Ns::new("merges_apply_in_order");
    let v = ns.field(0);
    let (k1, k2, missing) = (ns.key("e", 1), ns.key("e", 2), ns.key("e", 3));
    let mut long = ns.key("long", 1);
    long.resize(700, b'z');

    let empty: [KeyMerge<'_>; 0] = [];
    let s = ns.merge(store, &empty, &Append).await;
    ns.expect_merge_stats(store, s, 0, 0, 0, "an empty call");
    if !ns.read_tiles(store, &[], v, &[0]).await.is_empty()
        || !ns.read_tiles(store, &[&k1], v, &[]).await.is_empty()
    {
        ns.fail(store, format_args!("an empty read_tiles returned tiles"));
    }

    let t1 = tiles(&[(0, b"a"), (300, b"b")]);
    let t2 = tiles(&[(0, b"c")]);
    let t3 = tiles(&[
        (-600, b"d"),
        (Timestamp::MIN, b"min"),
        (Timestamp::MAX, b"max"),
    ]);
    let first = [
        KeyMerge {
            key: &k1,
            view: v,
            position: None,
            tiles: &t1,
        },
        KeyMerge {
            key: &k2,
            view: v,
            position: None,
            tiles: &t2,
        },
        KeyMerge {
            key: &long,
            view: v,
            position: None,
            tiles: &t3,
        },
    ];
    let s = ns.merge(store, &first, &Append).await;
    ns.expect_merge_stats(store, s, 3, 0, 6, "merges into empty tiles");
    let starts = [0, 300, -600, Timestamp::MIN, Timestamp::MAX];
    let none: Option<&[u8]> = None;
    let b = |s: &'static str| Some(s.as_bytes());
    #[rustfmt::skip]
    let want = [
        b("a"), b("b"), none, none, none,
        b("c"), none, none, none, none,
        none, none, b("d"), b("min"), b("max"),
        none, none, none, none, none,
    ];
    ns.expect_tiles(
        store,
        &[&k1, &k2, &long, &missing],
        v,
        &starts,
        &want,
        "after merges into empty tiles",
    )
    .await;

    // Stored IRs are merged with; deltas apply in call order.
    let t1 = tiles(&[(0, b"x"), (300, b"1"), (300, b"2")]);
    let t2a = tiles(&[(0, b"3")]);
    let t2b = tiles(&[(0, b"4"), (900, b"new")]);
    let second = [
        KeyMerge {
            key: &k2,
            view: v,
            position: None,
            tiles: &t2a,
        },
        KeyMerge {
            key: &k1,
            view: v,
            position: None,
            tiles: &t1,
        },
        KeyMerge {
            key: &k2,
            view: v,
            position: None,
            tiles: &t2b,
        },
    ];
    let s = ns.merge(store, &second, &Append).await;
    ns.expect_merge_stats(store, s, 3, 0, 6, "merges into stored tiles");
    ns.expect_tiles(
        store,
        &[&k1, &k2, &k2, &k1],
        v,
        &[300, 0, 900],
        &[
            b("b12"),
            b("ax"),
            none,
            none,
            b("c34"),
            b("new"),
            none,
            b("c34"),
            b("new"),
            b("b12"),
            b("ax"),
            none,
        ],
        "after merges into stored tiles (keys and starts in any order, repeated)",
    )
    .await;

    // Large IRs, every byte value.
    let big: Vec<u8> = (0..300_000usize).map(|i| (i * 7 + i / 256) as u8).collect();
    let t = [TileDelta {
        layer: None,
        start: 1_700_000_000_000_000,
        ir: &big,
    }];
    let m = [KeyMerge {
        key: &long,
        view: v,
        position: None,
        tiles: &t,
    }];
    ns.merge(store, &m, &Append).await;
    ns.merge(store, &m, &Append).await;
    let mut twice = big.clone();
    twice.extend_from_slice(&big);
    ns.expect_tiles(
        store,
        &[&long],
        v,
        &[1_700_000_000_000_000],
        &[Some(&twice)],
        "a large IR merged twice",
    )
    .await;
}

/// Tiles of different keys (differing only in project, entity set or a suffix), of
/// different views and of different starts never mix; rows and tiles under the same
/// field id are distinct, and each kind's deletion leaves the other alone.
pub async fn tiles_do_not_mix(store: &dyn OnlineStore) {
    let ns = Ns::new("tiles_do_not_mix");
    let (v, w) = (ns.field(0), ns.field(1));
    let p1 = format!("{}-a", ns.project);
    let p2 = format!("{}-b", ns.project);
    let keys = [
        crate::entity_key(&p1, "s", b"\x01k"),
        crate::entity_key(&p2, "s", b"\x01k"),
        crate::entity_key(&p1, "t", b"\x01k"),
        crate::entity_key(&p1, "s", b"\x01k\x00"),
        crate::entity_key(&p1, "s", b"\x01"),
    ];
    let deltas: Vec<[Vec<u8>; 2]> = (0..keys.len())
        .map(|i| [format!("k{i}v").into_bytes(), format!("k{i}w").into_bytes()])
        .collect();
    let tv: Vec<[TileDelta<'_>; 1]> = deltas
        .iter()
        .map(|d| {
            [TileDelta {
                layer: None,
                start: 0,
                ir: &d[0],
            }]
        })
        .collect();
    let tw: Vec<[TileDelta<'_>; 1]> = deltas
        .iter()
        .map(|d| {
            [TileDelta {
                layer: None,
                start: 0,
                ir: &d[1],
            }]
        })
        .collect();
    let mut merges = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        merges.push(KeyMerge {
            key,
            view: v,
            position: None,
            tiles: &tv[i],
        });
        merges.push(KeyMerge {
            key,
            view: w,
            position: None,
            tiles: &tw[i],
        });
    }
    // A row under the field id of view `v`, in the first key.
    let row = tagged_row(10, 0, b"a row");
    let s = ns
        .write(
            store,
            &[OnlineWrite {
                key: &keys[0],
                field: v,
                row: &row,
            }],
        )
        .await;
    ns.expect_stats(store, s, 1, 0, "a row beside tiles");
    let s = ns.merge(store, &merges, &Append).await;
    ns.expect_merge_stats(store, s, 10, 0, 10, "one tile per (key, view)");
    let key_refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    for (view, which) in [(v, 0), (w, 1)] {
        let want: Vec<Option<&[u8]>> = deltas
            .iter()
            .flat_map(|d| [Some(d[which].as_slice()), None])
            .collect();
        ns.expect_tiles(
            store,
            &key_refs,
            view,
            &[0, 1],
            &want,
            &format!("view {which}"),
        )
        .await;
    }
    ns.expect_cell(
        store,
        &keys[0],
        v,
        Some(&row),
        "a row after merges into tiles of the same field id",
    )
    .await;

    // Deleting rows leaves tiles; deleting tiles leaves rows.
    let n = ns.delete(store, v, Timestamp::MAX).await;
    if n != 1 {
        ns.fail(
            store,
            format_args!("delete_older_than deleted {n} rows, expected the 1 row"),
        );
    }
    ns.expect_tiles(
        store,
        &key_refs[..1],
        v,
        &[0],
        &[Some(&deltas[0][0])],
        "after delete_older_than of the same field id",
    )
    .await;
    ns.write(
        store,
        &[OnlineWrite {
            key: &keys[0],
            field: v,
            row: &row,
        }],
    )
    .await;
    let n = ns.delete_tiles(store, v, Timestamp::MAX).await;
    if n != keys.len() as u64 {
        ns.fail(
            store,
            format_args!(
                "delete_tiles_before(v, MAX) deleted {n} tiles, expected {}",
                keys.len()
            ),
        );
    }
    ns.expect_cell(
        store,
        &keys[0],
        v,
        Some(&row),
        "a row after delete_tiles_before of the same field id",
    )
    .await;
    let want: Vec<Option<&[u8]>> = deltas.iter().map(|d| Some(d[1].as_slice())).collect();
    ns.expect_tiles(
        store,
        &key_refs,
        w,
        &[0],
        &want,
        "view w after deleting view v's tiles",
    )
    .await;
}

/// A merge whose stream position is at or below the stored one for its (key, view,
/// partition) changes nothing and counts as skipped; a higher one applies and stores its
/// position. Positions compare as numbers (128 bits), and are kept per key, per view and
/// per partition; merges without a position always apply; requests of one call see the
/// positions stored by earlier requests of the call.
pub async fn replays_are_no_ops(store: &dyn OnlineStore) {
    let ns = Ns::new("replays_are_no_ops");
    let (v, w) = (ns.field(0), ns.field(1));
    let (k, other) = (ns.key("e", 1), ns.key("e", 2));
    let (p0, p1): (&[u8], &[u8]) = (b"topic/0", b"topic/1");
    let one = Count::ir(1);
    let t = [TileDelta {
        layer: None,
        start: 0,
        ir: &one,
    }];
    let merge = |key, view, position| KeyMerge {
        key,
        view,
        position,
        tiles: &t,
    };
    let count = |n: u64| Count::ir(n).to_vec();

    ns.expect_position(store, &k, v, p0, None, "before any merge")
        .await;
    let s = ns.merge(store, &[merge(&k, v, at(p0, 10))], &Count).await;
    ns.expect_merge_stats(store, s, 1, 0, 1, "first merge at 10");
    ns.expect_position(store, &k, v, p0, Some(10), "after a merge at 10")
        .await;
    for (offset, context) in [(10, "a replay at the stored position"), (5, "below it")] {
        let s = ns
            .merge(store, &[merge(&k, v, at(p0, offset))], &Count)
            .await;
        ns.expect_merge_stats(store, s, 0, 1, 0, context);
        ns.expect_tiles(store, &[&k], v, &[0], &[Some(&count(1))], context)
            .await;
        ns.expect_position(store, &k, v, p0, Some(10), context)
            .await;
    }
    let s = ns.merge(store, &[merge(&k, v, at(p0, 11))], &Count).await;
    ns.expect_merge_stats(store, s, 1, 0, 1, "a merge at 11");
    ns.expect_tiles(store, &[&k], v, &[0], &[Some(&count(2))], "after 11")
        .await;

    // Per partition, per view, per key; without a position, always.
    let s = ns
        .merge(
            store,
            &[
                merge(&k, v, at(p1, 3)),
                merge(&k, w, at(p0, 1)),
                merge(&other, v, at(p0, 1)),
                merge(&k, v, None),
                merge(&k, v, None),
            ],
            &Count,
        )
        .await;
    ns.expect_merge_stats(store, s, 5, 0, 5, "other partition, view, key; no position");
    ns.expect_tiles(
        store,
        &[&k, &other],
        v,
        &[0],
        &[Some(&count(5)), Some(&count(1))],
        "after them",
    )
    .await;
    ns.expect_tiles(store, &[&k], w, &[0], &[Some(&count(1))], "view w")
        .await;
    let got = ns.positions(store, &[&k, &other], v, p0).await;
    if got != [Some(11), Some(1)] {
        ns.fail(
            store,
            format_args!("positions of p0 under v: {got:?}, expected [11, 1]"),
        );
    }
    ns.expect_position(store, &k, v, p1, Some(3), "partition 1")
        .await;
    ns.expect_position(store, &k, w, p0, Some(1), "view w")
        .await;
    ns.expect_position(store, &k, w, p1, None, "view w, partition 1")
        .await;

    // Within one call, later requests see earlier requests' positions.
    let s = ns
        .merge(
            store,
            &[
                merge(&k, v, at(p0, 20)),
                merge(&k, v, at(p0, 20)),
                merge(&k, v, at(p0, 19)),
                merge(&k, v, at(p0, 21)),
            ],
            &Count,
        )
        .await;
    let mut left_out = s.left_out.clone();
    left_out.sort_unstable();
    if left_out != [1, 2] {
        ns.fail(
            store,
            format_args!("positions 20, 20, 19, 21: left out {left_out:?}, expected [1, 2]"),
        );
    }
    ns.expect_merge_stats(store, s, 2, 2, 2, "positions 20, 20, 19, 21 in one call");

    // A merge following a position no longer stored is a conflict, left out; one
    // following the stored one applies.
    let follow = |offset, follows| {
        Some(StreamPosition {
            partition: p0,
            offset,
            follows: Some(follows),
        })
    };
    let s = ns
        .merge(
            store,
            &[
                merge(&other, v, at(p0, 2)),
                merge(&k, v, follow(30, Some(20))),
                merge(&k, v, follow(31, Some(21))),
            ],
            &Count,
        )
        .await;
    if (s.conflicts, s.left_out.as_slice()) != (1, &[1][..]) {
        ns.fail(
            store,
            format_args!("a merge following a stale position: {s:?}, expected merge 1 left out"),
        );
    }
    ns.expect_merge_stats(store, s, 2, 0, 2, "merges following a position");
    ns.expect_position(store, &k, v, p0, Some(31), "after following 21")
        .await;
    ns.expect_tiles(
        store,
        &[&k],
        v,
        &[0],
        &[Some(&count(8))],
        "after 20, 20, 19, 21 and 31",
    )
    .await;

    // Numeric order over all 128 bits (not byte order of a little-endian encoding).
    let big = [
        255u128,
        256,
        (1 << 64) - 1,
        1 << 64,
        u128::MAX - 1,
        u128::MAX,
    ];
    let p2: &[u8] = b"topic/2";
    for (i, &o) in big.iter().enumerate() {
        let s = ns.merge(store, &[merge(&k, v, at(p2, o))], &Count).await;
        ns.expect_merge_stats(store, s, 1, 0, 1, &format!("offset {o}"));
        if i > 0 {
            let s = ns
                .merge(store, &[merge(&k, v, at(p2, big[i - 1]))], &Count)
                .await;
            ns.expect_merge_stats(
                store,
                s,
                0,
                1,
                0,
                &format!("offset {} after {o}", big[i - 1]),
            );
        }
    }
    ns.expect_position(store, &k, v, p2, Some(u128::MAX), "the largest offset")
        .await;

    // A request with a position and no tiles stores the position.
    let none: [TileDelta<'_>; 0] = [];
    let m = [KeyMerge {
        key: &other,
        view: w,
        position: at(p1, 7),
        tiles: &none,
    }];
    let s = ns.merge(store, &m, &Count).await;
    ns.expect_merge_stats(store, s, 1, 0, 0, "a position without tiles");
    ns.expect_position(store, &other, w, p1, Some(7), "a position without tiles")
        .await;
    ns.expect_tiles(
        store,
        &[&other],
        w,
        &[0],
        &[None],
        "a position without tiles",
    )
    .await;

    // A merge whose tiles name their layers (an aggregated view's tile groups): each
    // tile goes to its layer, the one position is the merge's view's, and a replay
    // leaves every layer as it is.
    let (x, y) = (ns.field(2), ns.field(3));
    let layered = [
        TileDelta {
            layer: Some(x),
            start: 0,
            ir: &one,
        },
        TileDelta {
            layer: Some(y),
            start: 60,
            ir: &one,
        },
        TileDelta {
            layer: None,
            start: 0,
            ir: &one,
        },
    ];
    for (offset, applied, context) in [(5, 1, "layered merge at 5"), (5, 0, "its replay")] {
        let m = [KeyMerge {
            key: &other,
            view: w,
            position: at(p2, offset),
            tiles: &layered,
        }];
        let s = ns.merge(store, &m, &Count).await;
        ns.expect_merge_stats(store, s, applied, 1 - applied, 3 * applied, context);
        ns.expect_tiles(store, &[&other], x, &[0], &[Some(&count(1))], context)
            .await;
        ns.expect_tiles(store, &[&other], y, &[60], &[Some(&count(1))], context)
            .await;
        ns.expect_tiles(store, &[&other], w, &[0], &[Some(&count(1))], context)
            .await;
        ns.expect_position(store, &other, w, p2, Some(5), context)
            .await;
        ns.expect_position(store, &other, x, p2, None, context)
            .await;
    }
}

/// `delete_tiles_before(view, cutoff)` deletes exactly the tiles of that view starting
/// before the cutoff, in every key, long ones included; stream positions stay, so a
/// replay is still skipped; a deleted tile merges afresh.
pub async fn delete_tiles_before_is_per_view(store: &dyn OnlineStore) {
    let ns = Ns::new("delete_tiles_before_is_per_view");
    let (v, w) = (ns.field(0), ns.field(1));
    let mut long = ns.key("long", 1);
    long.resize(700, b'z');
    let keys = [ns.key("e", 1), long];
    let key_refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    let starts = [Timestamp::MIN, -600, -300, 0, 300, Timestamp::MAX];
    let one = Count::ir(1);
    let t: Vec<TileDelta<'_>> = starts
        .iter()
        .map(|&start| TileDelta {
            layer: None,
            start,
            ir: &one,
        })
        .collect();
    let p: &[u8] = b"partition";
    let mut merges = Vec::new();
    for key in &key_refs {
        for view in [v, w] {
            merges.push(KeyMerge {
                key,
                view,
                position: at(p, 5),
                tiles: &t,
            });
        }
    }
    let s = ns.merge(store, &merges, &Count).await;
    ns.expect_merge_stats(store, s, 4, 0, 24, "setup");

    let n = ns.delete_tiles(store, v, 0).await;
    if n != 6 {
        ns.fail(
            store,
            format_args!("delete_tiles_before(v, 0) deleted {n} tiles, expected 6 (3 per key)"),
        );
    }
    let c1 = Count::ir(1);
    let present: Option<&[u8]> = Some(&c1);
    let kept: Vec<Option<&[u8]>> = (0..2)
        .flat_map(|_| [None, None, None, present, present, present])
        .collect();
    ns.expect_tiles(
        store,
        &key_refs,
        v,
        &starts,
        &kept,
        "view v after the delete",
    )
    .await;
    let all = vec![present; 12];
    ns.expect_tiles(
        store,
        &key_refs,
        w,
        &starts,
        &all,
        "view w after deleting v's tiles",
    )
    .await;
    for (cutoff, context) in [
        (0, "a repeated delete"),
        (Timestamp::MIN, "a delete before MIN"),
    ] {
        let n = ns.delete_tiles(store, v, cutoff).await;
        if n != 0 {
            ns.fail(store, format_args!("{context} deleted {n} tiles"));
        }
    }
    // Positions stay: a replay is skipped and does not bring the tiles back.
    let s = ns.merge(store, &merges[..1], &Count).await;
    ns.expect_merge_stats(store, s, 0, 1, 0, "a replay after the delete");
    ns.expect_tiles(store, &key_refs, v, &starts, &kept, "after a replay")
        .await;
    // A new merge into a deleted tile starts from nothing.
    let t = [TileDelta {
        layer: None,
        start: -300,
        ir: &one,
    }];
    let m = [KeyMerge {
        key: &keys[0],
        view: v,
        position: at(p, 6),
        tiles: &t,
    }];
    let s = ns.merge(store, &m, &Count).await;
    ns.expect_merge_stats(store, s, 1, 0, 1, "a merge into a deleted tile");
    ns.expect_tiles(
        store,
        &key_refs[..1],
        v,
        &[-300],
        &[present],
        "a merge into a deleted tile",
    )
    .await;
}

/// Tasks merging at once into the same tiles of the same keys lose no update: each of 8
/// tasks, on its own thread, adds its amount to the same tiles of the same keys, round
/// after round, half of them with a stream position of their own partition (and a
/// replay of each round, which must be skipped), half without. Afterwards every tile
/// holds the total and every partition's position its last round.
pub async fn concurrent_merges_lose_no_update(store: &Arc<dyn OnlineStore>) {
    const TASKS: u64 = 8;
    const ROUNDS: u64 = 20;
    let ns = Arc::new(Ns::new("concurrent_merges_lose_no_update"));
    let view = ns.field(0);
    let keys: Arc<Vec<Vec<u8>>> = Arc::new((0..4).map(|i| ns.key("e", i)).collect());
    let starts = [0, 300_000_000];
    let handle = tokio::runtime::Handle::current();
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let (store, ns, keys, handle) = (store.clone(), ns.clone(), keys.clone(), handle.clone());
        tasks.push(tokio::task::spawn_blocking(move || {
            let amount = Count::ir(task + 1);
            let t: Vec<TileDelta<'_>> = starts
                .iter()
                .map(|&start| TileDelta {
                    layer: None,
                    start,
                    ir: &amount,
                })
                .collect();
            let partition = format!("partition-{task}").into_bytes();
            for round in 1..=ROUNDS as u128 {
                let position = (task % 2 == 0).then(|| StreamPosition {
                    partition: &partition,
                    offset: round,
                    follows: None,
                });
                let merges: Vec<KeyMerge<'_>> = keys
                    .iter()
                    .map(|key| KeyMerge {
                        key,
                        view,
                        position,
                        tiles: &t,
                    })
                    .collect();
                let s = handle.block_on(ns.merge(&*store, &merges, &Count));
                ns.expect_merge_stats(&*store, s, 4, 0, 8, &format!("task {task} round {round}"));
                if position.is_some() {
                    let s = handle.block_on(ns.merge(&*store, &merges, &Count));
                    ns.expect_merge_stats(
                        &*store,
                        s,
                        0,
                        4,
                        0,
                        &format!("task {task}, the replay of round {round}"),
                    );
                }
            }
        }));
    }
    for t in tasks {
        if let Err(e) = t.await {
            std::panic::resume_unwind(e.into_panic());
        }
    }
    let store = &**store;
    let total = ROUNDS * (1..=TASKS).sum::<u64>();
    let key_refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    let got = ns.read_tiles(store, &key_refs, view, &starts).await;
    for (i, g) in got.iter().enumerate() {
        if g.as_deref().and_then(Count::value) != Some(total) {
            ns.fail(
                store,
                format_args!(
                    "tile {i} holds {} after concurrent merges, expected count {total}",
                    show(g.as_deref())
                ),
            );
        }
    }
    for task in (0..TASKS).step_by(2) {
        let partition = format!("partition-{task}").into_bytes();
        let got = ns.positions(store, &key_refs, view, &partition).await;
        if got.iter().any(|p| *p != Some(ROUNDS as u128)) {
            ns.fail(
                store,
                format_args!("positions of task {task}'s partition: {got:?}, expected {ROUNDS}"),
            );
        }
    }
}

/// The capabilities the store declares hold, and so does per-key atomicity, which every
/// store gives:
/// * a merge call whose merger fails returns an error and leaves the failing key's
///   tiles and positions as they were (its tiles merged before the failure included);
///   with `atomic_batches`, every key of the call as it was;
/// * a reader running beside a writer sees each key's tiles of one merge all or none;
///   with `atomic_batches`, all keys of one call all or none.
///
/// Sharing across processes and hosts and durability are properties of deployments;
/// each backend's own tests show them.
pub async fn declared_capabilities_hold(store: &Arc<dyn OnlineStore>) {
    let ns = Arc::new(Ns::new("declared_capabilities_hold"));
    let caps = store.capabilities();
    if !caps.atomic_per_key {
        ns.fail(
            &**store,
            format_args!("every store is atomic per key; it declares {caps:?}"),
        );
    }
    failing_merges_change_nothing(&ns, &**store, caps.atomic_batches).await;
    readers_see_whole_merges(&ns, store, caps.atomic_batches).await;
}

async fn failing_merges_change_nothing(ns: &Ns, store: &dyn OnlineStore, atomic_batches: bool) {
    let v = ns.field(0);
    let keys: Vec<Vec<u8>> = (0..3).map(|i| ns.key("fail", i)).collect();
    let p: &[u8] = b"partition";
    let before = tiles(&[(0, b"0"), (300, b"0")]);
    let setup: Vec<KeyMerge<'_>> = keys
        .iter()
        .map(|key| KeyMerge {
            key,
            view: v,
            position: at(p, 1),
            tiles: &before,
        })
        .collect();
    ns.merge(store, &setup, &Append).await;
    // Key 1 fails on its second tile; keys 0 and 2 would succeed.
    let ok = tiles(&[(0, b"a"), (300, b"b")]);
    let bad = tiles(&[(0, b"a"), (300, b"FAIL")]);
    let merges: Vec<KeyMerge<'_>> = keys
        .iter()
        .enumerate()
        .map(|(i, key)| KeyMerge {
            key,
            view: v,
            position: at(p, 2),
            tiles: if i == 1 { &bad } else { &ok },
        })
        .collect();
    match store.merge_tiles(&merges, &FailOn(b"FAIL")).await {
        Ok(s) => ns.fail(
            store,
            format_args!("a failing merger did not fail the call: {s:?}"),
        ),
        Err(e) if !e.to_string().contains("the delta marked to fail") => ns.fail(
            store,
            format_args!("the error of a failing merger does not carry its message: {e}"),
        ),
        Err(_) => {}
    }
    let checked: Vec<usize> = if atomic_batches {
        vec![0, 1, 2]
    } else {
        vec![1]
    };
    for i in checked {
        let context = format!("key {i} after a call whose merger failed on key 1");
        ns.expect_tiles(
            store,
            &[&keys[i]],
            v,
            &[0, 300],
            &[Some(b"0"), Some(b"0")],
            &context,
        )
        .await;
        ns.expect_position(store, &keys[i], v, p, Some(1), &context)
            .await;
    }
}

async fn readers_see_whole_merges(
    ns: &Arc<Ns>,
    store: &Arc<dyn OnlineStore>,
    atomic_batches: bool,
) {
    const CALLS: u64 = 100;
    let view = ns.field(1);
    let keys: Arc<Vec<Vec<u8>>> = Arc::new((0..8).map(|i| ns.key("whole", i)).collect());
    let starts = [0, 300, 600];
    let done = Arc::new(AtomicBool::new(false));
    let handle = tokio::runtime::Handle::current();
    let writer = {
        let (store, ns, keys, done, handle) = (
            store.clone(),
            ns.clone(),
            keys.clone(),
            done.clone(),
            handle.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let one = Count::ir(1);
            let t: Vec<TileDelta<'_>> = starts
                .iter()
                .map(|&start| TileDelta {
                    layer: None,
                    start,
                    ir: &one,
                })
                .collect();
            let merges: Vec<KeyMerge<'_>> = keys
                .iter()
                .map(|key| KeyMerge {
                    key,
                    view,
                    position: None,
                    tiles: &t,
                })
                .collect();
            for _ in 0..CALLS {
                handle.block_on(ns.merge(&*store, &merges, &Count));
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    let reader = {
        let (store, ns, keys, done) = (store.clone(), ns.clone(), keys.clone(), done.clone());
        tokio::task::spawn_blocking(move || {
            let key_refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
            let mut reads = 0u64;
            while !done.load(Ordering::SeqCst) || reads == 0 {
                let got = handle.block_on(ns.read_tiles(&*store, &key_refs, view, &starts));
                let counts: Vec<u64> = got
                    .iter()
                    .map(|c| c.as_deref().and_then(Count::value).unwrap_or(0))
                    .collect();
                for (k, key_counts) in counts.chunks(starts.len()).enumerate() {
                    if key_counts.iter().any(|&c| c != key_counts[0]) {
                        ns.fail(
                            &*store,
                            format_args!(
                                "a read saw part of one key's merge: key {k} tiles hold {key_counts:?}"
                            ),
                        );
                    }
                }
                if atomic_batches && counts.iter().any(|&c| c != counts[0]) {
                    ns.fail(
                        &*store,
                        format_args!(
                            "the store declares atomic batches, but a read saw part of a call: \
                             {counts:?}"
                        ),
                    );
                }
                reads += 1;
            }
        })
    };
    for t in [writer, reader] {
        if let Err(e) = t.await {
            std::panic::resume_unwind(e.into_panic());
        }
    }
    let key_refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    let got = ns.read_tiles(&**store, &key_refs, view, &starts).await;
    if got
        .iter()
        .any(|c| c.as_deref().and_then(Count::value) != Some(CALLS))
    {
        ns.fail(
            &**store,
            format_args!("after {CALLS} merges of 1 the tiles hold {got:?}"),
        );
    }
}
