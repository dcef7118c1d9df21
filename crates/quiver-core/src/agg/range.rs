//! Window values at many label times of many keys at once, straight from the keys'
//! events in order: the training-set path's kernels for the functions whose windows
//! can be read off ranges of events — `count_star`, `count`, `sum`, `mean`, `min`,
//! `max`, `first` and `last` over int64 and float64 columns.
//!
//! A window `[align(T − w, h), T)` covers a contiguous range `[a, b)` of a key's events
//! sorted by time, and both ends only move forward as T grows. Each kernel computes
//! exactly the value that folding the range's events into the function's IR and
//! finalizing it gives — the IR's value depends only on the multiset of events (DESIGN
//! §2 "Parity by construction"), and these kernels compute that same value by exact
//! arithmetic as the window slides (events enter at its end, leave at its start):
//! - counts: running counts;
//! - integer sums: a running sum in i128 (exact; int64 overflow at finalize: no value);
//! - float sums: every finite f64 is an integer multiple of 2^-1074, so when a key's
//!   values span few enough bits they are integers of one common power of two, and a
//!   running i128 sum holds every window's sum exactly; it is rounded once, as the
//!   exact accumulator rounds. Otherwise an exact accumulator slides over the key's
//!   events (each added once and subtracted once, both exact). Non-finite values are
//!   counted apart, as the accumulator counts them;
//! - min and max: a two-stack sliding window over order-preserving integer keys
//!   (ties: equal bits, by the total order);
//! - first and last: for every prefix (suffix) of a key's events the event first/last
//!   picks, by the engine's order: event time, creation time, then the value.
//!
//! Everything is laid out flat — all keys' events in one sorted run, all labels in
//! another. One pass per window and column computes every function of it, chunks of
//! keys in parallel, each label's values written straight into its output row; what a
//! pass keeps per key (its window's state, the key's first/last picks) is sized by that
//! key's events. Every other function goes through tiles
//! ([`super::window::evaluate_key`]).

use std::cmp::Ordering;

use arrow::buffer::{BooleanBuffer, NullBuffer};
use rayon::prelude::*;

use super::exact::ExactSum;
use super::window::window_range;
use super::{Aggregation, Function, Kind};
use crate::dtype::DType;
use crate::time::{Duration, Timestamp};

/// The values of one event column, in the events' order.
#[derive(Clone, Copy, Debug)]
pub enum Values<'a> {
    /// Only validity is read (`count`, `count_star`).
    None,
    Int(&'a [i64]),
    Float(&'a [f64]),
}

/// One event column: its values and which are not null.
#[derive(Clone, Copy, Debug)]
pub struct Column<'a> {
    pub values: Values<'a>,
    pub valid: &'a [bool],
}

/// Which typed values a ranged aggregation reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Typed {
    Int,
    Float,
}

/// How the range kernels compute `agg`: the column values it reads (`None`: validity
/// only) and the values it writes; `None` when only tiles compute it.
pub fn ranged(agg: &Aggregation) -> Option<(Option<Typed>, Typed)> {
    let input = match agg.input {
        DType::Int64 if agg.kind == Kind::Int => Some(Typed::Int),
        DType::Float64 => Some(Typed::Float),
        _ => None,
    };
    match agg.function {
        Function::CountStar | Function::Count => Some((None, Typed::Int)),
        Function::Sum => input.map(|t| (Some(t), t)),
        Function::Mean => input.map(|t| (Some(t), Typed::Float)),
        Function::Min | Function::Max | Function::First | Function::Last => {
            input.map(|t| (Some(t), t))
        }
        _ => None,
    }
}

/// One output feature of the range kernels ([`ranged`] must accept its aggregation).
#[derive(Clone, Debug)]
pub struct RangeFeature {
    pub aggregation: Aggregation,
    /// Which of the columns it reads (ignored by count_star).
    pub column: usize,
    pub window: Duration,
    pub hop: Duration,
}

/// Keys' events and labels, flat: key `k`'s events are
/// `events[event_offsets[k]..event_offsets[k + 1]]`, sorted by (event time, creation
/// time), and its labels `label_ts[label_offsets[k]..label_offsets[k + 1]]`, ascending.
#[derive(Clone, Copy, Debug)]
pub struct Keys<'a> {
    pub event_ts: &'a [Timestamp],
    pub event_created: &'a [Timestamp],
    pub event_offsets: &'a [usize],
    pub label_ts: &'a [Timestamp],
    pub label_offsets: &'a [usize],
    /// The output row of each label (a permutation of the rows).
    pub label_rows: &'a [u32],
}

impl Keys<'_> {
    /// Key `k`'s labels and events.
    fn of(&self, k: usize) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
        (
            self.label_offsets[k]..self.label_offsets[k + 1],
            self.event_offsets[k]..self.event_offsets[k + 1],
        )
    }

    /// Whether events `i` and `j` sort equal (their values decide between them).
    fn same_order(&self, i: usize, j: usize) -> bool {
        self.event_ts[i] == self.event_ts[j] && self.event_created[i] == self.event_created[j]
    }
}

/// A feature's values in output-row order, with the rows that are null (none: every
/// row has a value).
#[derive(Debug)]
pub enum Output {
    Int {
        values: Vec<i64>,
        nulls: Option<NullBuffer>,
    },
    Float {
        values: Vec<f64>,
        nulls: Option<NullBuffer>,
    },
}

impl Output {
    /// Whether `row` has a value.
    pub fn is_valid(&self, row: usize) -> bool {
        match self {
            Output::Int { nulls, .. } | Output::Float { nulls, .. } => {
                nulls.as_ref().is_none_or(|n| n.is_valid(row))
            }
        }
    }
}

/// A sentinel event index: none.
const NONE: u32 = u32::MAX;

/// Chunks of keys of similar work (labels plus events): key bounds cutting the keys
/// into about `parts` runs, for work that runs keys in parallel.
pub fn key_chunks(label_offsets: &[usize], event_offsets: &[usize], parts: usize) -> Vec<usize> {
    let k = label_offsets.len() - 1;
    let total = label_offsets[k] + event_offsets[k];
    let per = total / parts.max(1) + 1;
    let mut bounds = vec![0];
    let mut next = per;
    for i in 0..k {
        if label_offsets[i + 1] + event_offsets[i + 1] >= next {
            bounds.push(i + 1);
            next = label_offsets[i + 1] + event_offsets[i + 1] + per;
        }
    }
    if *bounds.last().expect("0") != k {
        bounds.push(k);
    }
    bounds
}

/// Checks what the parallel writes of [`evaluate`] rely on: offsets that start at 0,
/// never decrease and end at the number of labels (events), so that every label
/// belongs to exactly one key; event positions that fit below [`NONE`].
fn check_layout(keys: &Keys<'_>) {
    for (offsets, n, what) in [
        (keys.label_offsets, keys.label_ts.len(), "label"),
        (keys.event_offsets, keys.event_ts.len(), "event"),
    ] {
        assert!(
            offsets.first() == Some(&0)
                && offsets.windows(2).all(|w| w[0] <= w[1])
                && offsets.last() == Some(&n),
            "{what} offsets of the keys do not partition the {what}s"
        );
    }
    assert_eq!(
        keys.label_offsets.len(),
        keys.event_offsets.len(),
        "one run per key"
    );
    assert_eq!(
        keys.label_rows.len(),
        keys.label_ts.len(),
        "one row per label"
    );
    assert_eq!(
        keys.event_created.len(),
        keys.event_ts.len(),
        "one creation time per event"
    );
    assert!(
        keys.event_ts.len() < NONE as usize,
        "fewer than 2^32 - 1 events"
    );
}

/// The features one pass computes: those over one window and one column (count_star
/// joins a column's pass of its window).
struct Pass {
    window: (Duration, Duration),
    column: Option<usize>,
    features: Vec<usize>,
}

/// The passes of `features`.
fn passes(features: &[RangeFeature]) -> Vec<Pass> {
    let mut out: Vec<Pass> = Vec::new();
    for (i, f) in features.iter().enumerate() {
        let window = (f.window, f.hop);
        let column = (f.aggregation.function != Function::CountStar).then_some(f.column);
        match out
            .iter_mut()
            .find(|p| p.window == window && p.column == column)
        {
            Some(p) => p.features.push(i),
            None => out.push(Pass {
                window,
                column,
                features: vec![i],
            }),
        }
    }
    // count_star rides along with a column's pass of its window.
    let mut merged: Vec<Pass> = Vec::with_capacity(out.len());
    for p in out {
        match merged
            .iter_mut()
            .find(|q| q.window == p.window && (q.column.is_none() || p.column.is_none()))
        {
            Some(q) => {
                q.features.extend(p.features);
                q.column = q.column.or(p.column);
            }
            None => merged.push(p),
        }
    }
    merged
}

/// Whether a function's window value is null exactly when the window holds no valid
/// value (every ranged function but the counts; an int sum beyond int64 aside).
fn nullable(f: Function) -> bool {
    !matches!(f, Function::CountStar | Function::Count)
}

/// Output columns in row order, written by many threads at once: every label writes
/// its own row, and the rows of the labels are a permutation of `0..n`, checked when
/// built — so no two writes ever meet, and no value is read until every writer ends.
struct Rows<'a, T> {
    ptr: *mut T,
    len: usize,
    _columns: std::marker::PhantomData<&'a mut [T]>,
}

// Safety: writes through `put` go to distinct rows (see [`Rows`]); `T` is plain data.
#[allow(unsafe_code)]
unsafe impl<T: Send> Send for Rows<'_, T> {}
#[allow(unsafe_code)]
unsafe impl<T: Send> Sync for Rows<'_, T> {}

impl<'a, T: Copy> Rows<'a, T> {
    /// Writes into `column` (`rows`, checked to be a permutation of the column's rows,
    /// by [`permutation`]).
    fn new(column: &'a mut [T], rows: &Permutation<'_>) -> Self {
        assert_eq!(column.len(), rows.0.len(), "one row per label");
        Rows {
            ptr: column.as_mut_ptr(),
            len: column.len(),
            _columns: std::marker::PhantomData,
        }
    }

    #[inline]
    fn put(&self, row: u32, v: T) {
        let row = row as usize;
        assert!(row < self.len);
        // Safety: in bounds (checked), and no other write goes to this row (the rows
        // are a permutation and each label is written by one task).
        #[allow(unsafe_code)]
        unsafe {
            self.ptr.add(row).write(v)
        }
    }
}

/// The labels' rows, checked to be a permutation of `0..n`.
struct Permutation<'a>(&'a [u32]);

fn permutation(rows: &[u32]) -> Permutation<'_> {
    let mut seen = vec![false; rows.len()];
    for &r in rows {
        let r = r as usize;
        assert!(
            r < rows.len() && !std::mem::replace(&mut seen[r], true),
            "label rows are a permutation"
        );
    }
    Permutation(rows)
}

/// A pass's output of one feature.
enum Buf<'a> {
    Int(Rows<'a, i64>),
    Float(Rows<'a, f64>),
}

impl Buf<'_> {
    #[inline]
    fn int(&self, row: u32, v: i64) {
        if let Buf::Int(b) = self {
            b.put(row, v);
        }
    }

    #[inline]
    fn float(&self, row: u32, v: f64) {
        if let Buf::Float(b) = self {
            b.put(row, v);
        }
    }
}

/// A feature's values in row order while the passes run.
enum Column64 {
    Int(Vec<i64>),
    Float(Vec<f64>),
}

/// Computes `features` over `columns` for every label of `keys`: one output per
/// feature, in row order. Every pass (one per window and column) runs over chunks of
/// keys in parallel, each label's values written to its row; then each feature gets
/// its null rows: those of its pass's empty windows, and an int sum's overflows.
pub fn evaluate(keys: &Keys<'_>, columns: &[Column<'_>], features: &[RangeFeature]) -> Vec<Output> {
    check_layout(keys);
    let chunks = &key_chunks(
        keys.label_offsets,
        keys.event_offsets,
        rayon::current_num_threads() * 8,
    );
    let n = keys.label_rows.len();
    let rows = permutation(keys.label_rows);
    let passes = passes(features);
    let mut values: Vec<Column64> = features
        .iter()
        .map(
            |f| match ranged(&f.aggregation).expect("a ranged aggregation").1 {
                Typed::Int => Column64::Int(vec![0; n]),
                Typed::Float => Column64::Float(vec![0.0; n]),
            },
        )
        .collect();
    // Per pass with nullable features: whether each row's window has a valid value.
    let mut counts: Vec<Option<Vec<bool>>> = passes
        .iter()
        .map(|p| {
            p.features
                .iter()
                .any(|&f| nullable(features[f].aggregation.function))
                .then(|| vec![false; n])
        })
        .collect();
    let overflows: Vec<(usize, u32)> = {
        let bufs: Vec<Buf<'_>> = values
            .iter_mut()
            .map(|v| match v {
                Column64::Int(v) => Buf::Int(Rows::new(v, &rows)),
                Column64::Float(v) => Buf::Float(Rows::new(v, &rows)),
            })
            .collect();
        let count_rows: Vec<Option<Rows<'_, bool>>> = counts
            .iter_mut()
            .map(|c| c.as_mut().map(|c| Rows::new(c, &rows)))
            .collect();
        let tasks: Vec<(usize, usize)> = (0..passes.len())
            .flat_map(|p| (0..chunks.len() - 1).map(move |c| (p, c)))
            .collect();
        tasks
            .into_par_iter()
            .flat_map_iter(|(pi, c)| {
                let p = &passes[pi];
                let mut over = Vec::new();
                run_pass(
                    keys,
                    p.column.map(|c| &columns[c]),
                    p.window,
                    features,
                    chunks[c]..chunks[c + 1],
                    &p.features
                        .iter()
                        .map(|&f| (f, &bufs[f]))
                        .collect::<Vec<_>>(),
                    count_rows[pi].as_ref(),
                    &mut over,
                );
                over
            })
            .collect()
    };
    let valid: Vec<Option<BooleanBuffer>> = counts
        .par_iter()
        .map(|c| c.as_ref().map(|c| BooleanBuffer::collect_bool(n, |r| c[r])))
        .collect();
    drop(counts);
    let pass_of: Vec<usize> = (0..features.len())
        .map(|f| {
            passes
                .iter()
                .position(|p| p.features.contains(&f))
                .expect("every feature in a pass")
        })
        .collect();
    values
        .into_iter()
        .enumerate()
        .map(|(f, v)| {
            let nulls = nullable(features[f].aggregation.function)
                .then(|| {
                    let base = valid[pass_of[f]].clone().expect("counted");
                    let over: Vec<u32> =
                        overflows.iter().filter(|o| o.0 == f).map(|o| o.1).collect();
                    if over.is_empty() {
                        base
                    } else {
                        let mut b = arrow::array::BooleanBufferBuilder::new(n);
                        b.append_buffer(&base);
                        for r in over {
                            b.set_bit(r as usize, false);
                        }
                        b.finish()
                    }
                })
                .map(NullBuffer::new)
                .filter(|b| b.null_count() > 0);
            match v {
                Column64::Int(values) => Output::Int { values, nulls },
                Column64::Float(values) => Output::Float { values, nulls },
            }
        })
        .collect()
}

/// Values min and max compare by the engine's total order, as an order-preserving i64
/// (floats: the IEEE total order, so equal keys are equal bits).
trait Ordered: Copy {
    fn key(self) -> i64;
    fn from_key(key: i64) -> Self;
}

impl Ordered for i64 {
    #[inline]
    fn key(self) -> i64 {
        self
    }
    #[inline]
    fn from_key(key: i64) -> Self {
        key
    }
}

impl Ordered for f64 {
    /// Negative floats' magnitude bits flipped: the sign-magnitude order becomes two's
    /// complement order (as `f64::total_cmp` does); the map is its own inverse.
    #[inline]
    fn key(self) -> i64 {
        let b = self.to_bits() as i64;
        b ^ (((b >> 63) as u64) >> 1) as i64
    }
    #[inline]
    fn from_key(key: i64) -> Self {
        f64::from_bits((key ^ (((key >> 63) as u64) >> 1) as i64) as u64)
    }
}

/// The order key of event `i` of a column (the identity of min, resp. max, for nulls:
/// a valid value equal to it gives the same result).
#[inline]
fn key_at(column: &Column<'_>, i: usize, ident: i64) -> i64 {
    if !column.valid[i] {
        return ident;
    }
    match column.values {
        Values::Int(v) => v[i].key(),
        Values::Float(v) => v[i].key(),
        Values::None => ident,
    }
}

/// min (`MAX` false) or max of a key's windows as they slide forward: two stacks whose
/// inner loops pick by `min`/`max`, not by comparing and branching. The front holds the suffix extremes of `[a, c)`,
/// the back the running extreme of `[c, b)`; when a window's start passes `c` the front
/// is rebuilt over the window. Each event enters the back once and the front at most
/// once.
struct Extreme<const MAX: bool> {
    front: Vec<i64>,
    e0: usize,
    next: usize,
    c: usize,
    back: i64,
}

impl<const MAX: bool> Extreme<MAX> {
    const IDENT: i64 = if MAX { i64::MIN } else { i64::MAX };

    fn new() -> Self {
        Extreme {
            front: Vec::new(),
            e0: 0,
            next: 0,
            c: 0,
            back: Self::IDENT,
        }
    }

    #[inline]
    fn pick(x: i64, y: i64) -> i64 {
        if MAX {
            x.max(y)
        } else {
            x.min(y)
        }
    }

    /// A new key whose events are `events`.
    fn start(&mut self, events: &std::ops::Range<usize>) {
        if self.front.len() < events.len() {
            self.front.resize(events.len(), Self::IDENT);
        }
        self.e0 = events.start;
        self.next = events.start;
        self.c = events.start;
        self.back = Self::IDENT;
    }

    /// The extreme's key over `[a, b)` (the identity when there is no valid value).
    #[inline]
    fn window(&mut self, column: &Column<'_>, a: usize, b: usize) -> i64 {
        while self.next < b {
            self.back = Self::pick(self.back, key_at(column, self.next, Self::IDENT));
            self.next += 1;
        }
        if a >= self.c {
            let mut run = Self::IDENT;
            for i in (a..self.next).rev() {
                run = Self::pick(run, key_at(column, i, Self::IDENT));
                self.front[i - self.e0] = run;
            }
            self.c = self.next;
            self.back = Self::IDENT;
        }
        if a < self.c {
            Self::pick(self.front[a - self.e0], self.back)
        } else {
            self.back
        }
    }
}

/// A float column's exact sum sliding over a key's events: each event added once as
/// it enters and subtracted once as it leaves, both exact.
struct Slide {
    running: ExactSum,
    round: ExactSum,
    added: usize,
    removed: usize,
}

impl Slide {
    fn start(&mut self, events: &std::ops::Range<usize>) {
        self.running.clear();
        self.added = events.start;
        self.removed = events.start;
    }

    fn window(&mut self, x: &[f64], valid: &[bool], a: usize, b: usize) -> f64 {
        while self.added < b {
            if valid[self.added] && x[self.added].is_finite() {
                self.running.add(x[self.added]);
            }
            self.added += 1;
        }
        while self.removed < a {
            if valid[self.removed] && x[self.removed].is_finite() {
                self.running.add(-x[self.removed]);
            }
            self.removed += 1;
        }
        self.running.value_using(&mut self.round)
    }
}

/// A window's sum: exact in i128 for an int column, rounded once for a float one.
enum Total {
    Int(i128),
    Float(f64),
}

/// How a key's window sums are kept as the window slides.
#[derive(Clone, Copy)]
enum SumMode {
    /// An int column: exact in i128.
    Int,
    /// A float column whose values are all integers of 2^(shift − 1074) spanning few
    /// enough bits: exact in i128, rounded once (`scale` = 2^(shift − 1074), a normal
    /// number).
    Scaled { shift: i32, scale: f64 },
    /// A float column spanning too many bits: an exact accumulator slides.
    Slide,
}

/// The valid values of a key's window `[a, b)` as it slides: their count, their sum
/// (an int column's, or a float column's finite values as integers of its scale) and
/// its non-finite values (NaN, +inf, −inf), counted apart as the exact accumulator
/// counts them.
#[derive(Default)]
struct Running {
    count: u32,
    total: i128,
    non_finite: [u32; 3],
}

impl Running {
    /// Event `i` enters (`sign` 1) or leaves (`sign` −1) the window.
    #[inline]
    fn step(&mut self, column: &Column<'_>, i: usize, sum: Option<SumMode>, sign: i32) {
        if !column.valid[i] {
            return;
        }
        self.count = self.count.wrapping_add_signed(sign);
        let Some(mode) = sum else { return };
        match (column.values, mode) {
            (Values::Int(v), _) => self.total += sign as i128 * v[i] as i128,
            (Values::Float(v), _) if !v[i].is_finite() => {
                let slot = if v[i].is_nan() {
                    0
                } else if v[i] > 0.0 {
                    1
                } else {
                    2
                };
                self.non_finite[slot] = self.non_finite[slot].wrapping_add_signed(sign);
            }
            (Values::Float(v), SumMode::Scaled { shift, .. }) => {
                self.total += sign as i128 * as_multiple(v[i], shift)
            }
            _ => {}
        }
    }

    /// The window's sum when it holds non-finite values (as IEEE arithmetic gives it).
    fn non_finite_sum(&self) -> Option<f64> {
        let [nan, pos, neg] = self.non_finite;
        if nan > 0 || (pos > 0 && neg > 0) {
            Some(f64::NAN)
        } else if pos > 0 {
            Some(f64::INFINITY)
        } else if neg > 0 {
            Some(f64::NEG_INFINITY)
        } else {
            None
        }
    }
}

/// The event `last` (`latest`) or `first` picks in every prefix (suffix) of a key's
/// events: `out[i]` for the prefix `[e0, e0 + i)` (the suffix `[e0 + i, e1)`), [`NONE`]
/// when it has no valid value. By the engine's order: a later (earlier) event replaces
/// the pick; among events that sort equal, the greater (lesser) value.
fn key_picks(
    keys: &Keys<'_>,
    column: &Column<'_>,
    events: std::ops::Range<usize>,
    latest: bool,
    out: &mut Vec<u32>,
) {
    out.clear();
    out.resize(events.len() + 1, NONE);
    let wanted = if latest {
        Ordering::Greater
    } else {
        Ordering::Less
    };
    let consider = |i: usize, best: &mut u32| {
        if !column.valid[i] {
            return;
        }
        let b = *best as usize;
        if *best == NONE || !keys.same_order(i, b) || compare(column.values, i, b) == wanted {
            *best = i as u32;
        }
    };
    let e0 = events.start;
    let mut best = NONE;
    if latest {
        for i in events {
            consider(i, &mut best);
            out[i + 1 - e0] = best;
        }
    } else {
        for i in events.rev() {
            consider(i, &mut best);
            out[i - e0] = best;
        }
    }
}

/// One pass over the keys `range` for the window `(window, hop)`: every feature of
/// `bufs` for each label, into its row; whether each label's window has a valid value
/// into `counts`, and int sums beyond int64 into `over` as (feature, row).
///
/// Per key, the window `[a, b)` of its events slides forward with the labels' times:
/// counts and sums are kept as events enter and leave (exact integer arithmetic, or
/// the exact accumulator), extremes by two stacks ([`Extreme`]), first and last from
/// the key's prefix and suffix picks. Nothing the size of all events is built.
#[allow(clippy::too_many_arguments)]
fn run_pass(
    keys: &Keys<'_>,
    column: Option<&Column<'_>>,
    (window, hop): (Duration, Duration),
    features: &[RangeFeature],
    range: std::ops::Range<usize>,
    bufs: &[(usize, &Buf<'_>)],
    counts: Option<&Rows<'_, bool>>,
    over: &mut Vec<(usize, u32)>,
) {
    let functions: Vec<Function> = bufs
        .iter()
        .map(|(f, _)| features[*f].aggregation.function)
        .collect();
    let has = |f: Function| functions.contains(&f);
    let need_sum = has(Function::Sum) || has(Function::Mean);
    let (need_min, need_max) = (has(Function::Min), has(Function::Max));
    let (need_last, need_first) = (has(Function::Last), has(Function::First));
    let (mut lo, mut hi) = (Extreme::<false>::new(), Extreme::<true>::new());
    let mut slide = Slide {
        running: ExactSum::new(),
        round: ExactSum::new(),
        added: 0,
        removed: 0,
    };
    let (mut last, mut first) = (Vec::new(), Vec::new());
    for k in range {
        let (labels, events) = keys.of(k);
        let (e0, e1) = (events.start, events.end);
        let Some(column) = column else {
            // count_star alone: the window's bounds are all it needs.
            let (mut a, mut b) = (e0, e0);
            for l in labels {
                let t = keys.label_ts[l];
                let edge = window_range(t, window, hop).0;
                while b < e1 && keys.event_ts[b] < t {
                    b += 1;
                }
                while a < e1 && keys.event_ts[a] < edge {
                    a += 1;
                }
                for (_, buf) in bufs {
                    buf.int(keys.label_rows[l], (b - a) as i64);
                }
            }
            continue;
        };
        let sum = need_sum.then(|| match column.values {
            Values::Float(v) => {
                match fixed_point(&v[events.clone()], &column.valid[events.clone()]) {
                    // 2^(shift − 1074): a normal f64 (shift ≥ 52).
                    Some(shift) => SumMode::Scaled {
                        shift,
                        scale: f64::from_bits(((shift - 1074 + 1023) as u64) << 52),
                    },
                    None => SumMode::Slide,
                }
            }
            _ => SumMode::Int,
        });
        if need_min {
            lo.start(&events);
        }
        if need_max {
            hi.start(&events);
        }
        if matches!(sum, Some(SumMode::Slide)) {
            slide.start(&events);
        }
        if need_last {
            key_picks(keys, column, events.clone(), true, &mut last);
        }
        if need_first {
            key_picks(keys, column, events.clone(), false, &mut first);
        }
        let mut running = Running::default();
        let (mut a, mut b) = (e0, e0);
        for l in labels {
            let t = keys.label_ts[l];
            let row = keys.label_rows[l];
            // Events enter below the label's time and leave below its window's start
            // (never past b: the start is before the time).
            let edge = window_range(t, window, hop).0;
            while b < e1 && keys.event_ts[b] < t {
                running.step(column, b, sum, 1);
                b += 1;
            }
            while a < e1 && keys.event_ts[a] < edge {
                running.step(column, a, sum, -1);
                a += 1;
            }
            let count = running.count;
            if let Some(c) = counts {
                c.put(row, count > 0);
            }
            let total = sum.filter(|_| count > 0).map(|mode| match mode {
                SumMode::Int => Total::Int(running.total),
                SumMode::Scaled { scale, .. } => Total::Float(
                    running
                        .non_finite_sum()
                        .unwrap_or(running.total as f64 * scale),
                ),
                SumMode::Slide => Total::Float(running.non_finite_sum().unwrap_or_else(|| {
                    let Values::Float(x) = column.values else {
                        unreachable!("only float sums slide")
                    };
                    slide.window(x, column.valid, a, b)
                })),
            });
            let min = if need_min { lo.window(column, a, b) } else { 0 };
            let max = if need_max { hi.window(column, a, b) } else { 0 };
            for ((f, buf), &function) in bufs.iter().zip(&functions) {
                match function {
                    Function::CountStar => buf.int(row, (b - a) as i64),
                    Function::Count => buf.int(row, count as i64),
                    _ if count == 0 => {}
                    Function::Sum => match total {
                        Some(Total::Int(s)) => match i64::try_from(s) {
                            Ok(s) => buf.int(row, s),
                            Err(_) => over.push((*f, row)),
                        },
                        Some(Total::Float(s)) => buf.float(row, s),
                        None => {}
                    },
                    Function::Mean => match total {
                        Some(Total::Int(s)) => buf.float(row, s as f64 / count as f64),
                        Some(Total::Float(s)) => buf.float(row, s / count as f64),
                        None => {}
                    },
                    Function::Min | Function::Max => {
                        let m = if function == Function::Max { max } else { min };
                        match column.values {
                            Values::Int(_) => buf.int(row, i64::from_key(m)),
                            Values::Float(_) => buf.float(row, f64::from_key(m)),
                            Values::None => {}
                        }
                    }
                    Function::Last | Function::First => {
                        let j = if function == Function::Last {
                            last[b - e0]
                        } else {
                            first[a - e0]
                        } as usize;
                        match column.values {
                            Values::Int(v) => buf.int(row, v[j]),
                            Values::Float(v) => buf.float(row, v[j]),
                            Values::None => {}
                        }
                    }
                    other => panic!("{other} has no range kernel"),
                }
            }
        }
    }
}

/// The engine's order of two values of a column (floats by the total order).
fn compare(values: Values<'_>, i: usize, j: usize) -> Ordering {
    match values {
        Values::Int(v) => v[i].cmp(&v[j]),
        Values::Float(v) => v[i].total_cmp(&v[j]),
        Values::None => Ordering::Equal,
    }
}

/// A finite nonzero f64 as (mantissa, shift): `x = ±mantissa · 2^(shift − 1074)`.
fn parts(x: f64) -> (u64, i32) {
    let bits = x.to_bits();
    let exp = ((bits >> 52) & 0x7ff) as i32;
    let frac = bits & ((1 << 52) - 1);
    if exp == 0 {
        (frac, 0)
    } else {
        (frac | (1 << 52), exp - 1)
    }
}

/// The common shift when every window sum of these values is an exact i128 multiple
/// of 2^(shift − 1074) whose f64 scales exactly: the values span few enough bits, and
/// the scale is a normal number.
fn fixed_point(values: &[f64], valid: &[bool]) -> Option<i32> {
    let (mut lo, mut hi) = (i32::MAX, i32::MIN);
    let mut n = 0u64;
    for (&x, &ok) in values.iter().zip(valid) {
        if ok && x.is_finite() && x != 0.0 {
            let (_, shift) = parts(x);
            lo = lo.min(shift);
            hi = hi.max(shift);
            n += 1;
        }
    }
    if n == 0 {
        return Some(1074);
    }
    // Each value below 2^(53 + hi − lo); n of them below 2^126.
    let count_bits = 64 - n.leading_zeros() as i32;
    (lo >= 52 && hi <= 1900 && 53 + (hi - lo) + count_bits <= 126).then_some(lo)
}

/// `x / 2^(shift − 1074)` as an integer (exact: `x`'s own shift is at least `shift`).
fn as_multiple(x: f64, shift: i32) -> i128 {
    if x == 0.0 {
        return 0;
    }
    let (m, s) = parts(x);
    let v = (m as i128) << (s - shift);
    if x < 0.0 {
        -v
    } else {
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agg::window::align;
    use crate::agg::{Input, Order, Params};
    use crate::value::Value;
    use proptest::prelude::*;

    const MINUTE: i64 = 60_000_000;

    fn functions() -> Vec<Function> {
        vec![
            Function::CountStar,
            Function::Count,
            Function::Sum,
            Function::Mean,
            Function::Min,
            Function::Max,
            Function::First,
            Function::Last,
        ]
    }

    fn float_value() -> impl Strategy<Value = Option<f64>> {
        prop_oneof![
            3 => (-400i32..400).prop_map(|v| Some(v as f64 * 0.25)),
            1 => prop::sample::select(vec![
                1e300, -1e300, 0.1, -0.0, 0.0, 1e-310, 3.5e15, f64::MAX, f64::MIN_POSITIVE,
            ]).prop_map(Some),
            1 => prop::sample::select(vec![f64::NAN, f64::INFINITY, f64::NEG_INFINITY]).prop_map(Some),
            1 => Just(None),
        ]
    }

    /// One event: (key, minute, created, value).
    type Event = (usize, i64, i64, Input<'static>);

    /// Runs the kernels over `keys` keys and, for every label and feature, folds the
    /// window's events of the label's key into the engine's IR and finalizes it: the
    /// two must be the same bits.
    fn check(
        dtype: DType,
        keys: usize,
        mut events: Vec<Event>,
        mut labels: Vec<(usize, i64)>,
        window: i64,
        hop: i64,
    ) -> Result<(), TestCaseError> {
        events.sort_by_key(|e| (e.0, e.1, e.2));
        // Labels in shuffled rows: row r is the r-th label as generated.
        let mut order: Vec<usize> = (0..labels.len()).collect();
        order.sort_by_key(|&r| (labels[r].0, labels[r].1, r));
        let offsets = |of: &dyn Fn(usize) -> usize, n: usize| -> Vec<usize> {
            let mut o = vec![0; keys + 1];
            for i in 0..n {
                o[of(i) + 1] += 1;
            }
            for k in 0..keys {
                o[k + 1] += o[k];
            }
            o
        };
        let event_offsets = offsets(&|i| events[i].0, events.len());
        let label_offsets = offsets(&|i| labels[i].0, labels.len());
        let ts: Vec<i64> = events.iter().map(|e| e.1 * MINUTE).collect();
        let created: Vec<i64> = events.iter().map(|e| e.2).collect();
        let valid: Vec<bool> = events.iter().map(|e| e.3 != Input::Null).collect();
        let ints: Vec<i64> = events
            .iter()
            .map(|e| if let Input::Int(v) = e.3 { v } else { 0 })
            .collect();
        let floats: Vec<f64> = events
            .iter()
            .map(|e| if let Input::Float(v) = e.3 { v } else { 0.0 })
            .collect();
        let values = if dtype == DType::Int64 {
            Values::Int(&ints)
        } else {
            Values::Float(&floats)
        };
        let label_ts: Vec<i64> = order.iter().map(|&r| labels[r].1 * MINUTE).collect();
        let label_rows: Vec<u32> = order.iter().map(|&r| r as u32).collect();
        // The same values as two columns: three passes — every function over column 0,
        // sum and max over column 1, and count_star alone over a longer window.
        let column = Column {
            values,
            valid: &valid,
        };
        let columns = [column, column];
        let (window, hop) = (Duration::from_micros(window), Duration::from_micros(hop));
        let longer = Duration::from_micros(window.micros() + hop.micros());
        let feature = |f: Function, column: usize, window: Duration| RangeFeature {
            aggregation: Aggregation::new(
                f,
                (f != Function::CountStar).then_some(&dtype),
                Params::default(),
            )
            .unwrap(),
            column,
            window,
            hop,
        };
        let mut features: Vec<RangeFeature> = functions()
            .into_iter()
            .map(|f| feature(f, 0, window))
            .collect();
        features.push(feature(Function::Sum, 1, window));
        features.push(feature(Function::CountStar, 0, longer));
        features.push(feature(Function::Max, 1, window));
        let k = Keys {
            event_ts: &ts,
            event_created: &created,
            event_offsets: &event_offsets,
            label_ts: &label_ts,
            label_offsets: &label_offsets,
            label_rows: &label_rows,
        };
        let out = evaluate(&k, &columns, &features);
        labels.iter_mut().for_each(|l| l.1 *= MINUTE);
        for (row, &(key, t)) in labels.iter().enumerate() {
            for (fi, f) in features.iter().enumerate() {
                let lo = align(t.saturating_sub(f.window.micros()), hop);
                let mut ir = f.aggregation.empty();
                for e in events
                    .iter()
                    .filter(|e| e.0 == key && e.1 * MINUTE >= lo && e.1 * MINUTE < t)
                {
                    let order = Order {
                        event_ts: e.1 * MINUTE,
                        created_ts: e.2,
                        position: 0,
                    };
                    f.aggregation.update(&mut ir, e.3, order);
                }
                let want = f.aggregation.finalize(&ir).unwrap_or(Value::Null);
                let got = match &out[fi] {
                    o if !o.is_valid(row) => Value::Null,
                    Output::Int { values, .. } => Value::Int64(values[row]),
                    Output::Float { values, .. } => Value::Float64(values[row]),
                };
                let same = match (&got, &want) {
                    (Value::Float64(a), Value::Float64(b)) => a.to_bits() == b.to_bits(),
                    (a, b) => a == b,
                };
                prop_assert!(
                    same,
                    "{} of key {} at {}: ranges gave {:?}, the IR {:?}",
                    f.aggregation.function(),
                    key,
                    t,
                    got,
                    want
                );
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        /// Keys 0..3 have events, key 3 none; labels on and off hop and window edges,
        /// events sharing times, in rows not sorted by key or time.
        #[test]
        fn float_ranges_equal_the_folded_ir(
            events in prop::collection::vec((0usize..3, 0i64..40, 0i64..3, float_value()), 0..80),
            labels in prop::collection::vec((0usize..4, 0i64..48), 1..30),
            window_hops in 1i64..6,
            hop_min in prop::sample::select(vec![1i64, 2, 5]),
        ) {
            let events = events.into_iter()
                .map(|(k, t, c, v)| (k, t, c, v.map_or(Input::Null, Input::Float)))
                .collect();
            check(DType::Float64, 4, events, labels, window_hops * hop_min * MINUTE, hop_min * MINUTE)?;
        }

        #[test]
        fn int_ranges_equal_the_folded_ir(
            events in prop::collection::vec((0usize..3, 0i64..40, 0i64..3, prop::option::of(prop_oneof![
                -1000i64..1000, Just(i64::MAX), Just(i64::MIN)])), 0..80),
            labels in prop::collection::vec((0usize..4, 0i64..48), 1..30),
            window_hops in 1i64..6,
        ) {
            let events = events.into_iter()
                .map(|(k, t, c, v)| (k, t, c, v.map_or(Input::Null, Input::Int)))
                .collect();
            check(DType::Int64, 4, events, labels, window_hops * 5 * MINUTE, 5 * MINUTE)?;
        }
    }

    #[test]
    fn values_spanning_few_bits_sum_as_integers_and_far_apart_ones_slide() {
        assert!(fixed_point(&[0.25, 1e6, -3.5], &[true; 3]).is_some());
        assert!(fixed_point(&[1e300, 1.0], &[true; 2]).is_none());
        assert!(fixed_point(&[1e-310, 1.0], &[true; 2]).is_none());
    }
}
