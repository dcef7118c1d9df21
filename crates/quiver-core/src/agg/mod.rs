//! The aggregation engine (DESIGN §2 "Tiles", "Parity by construction"): one
//! implementation of every aggregation function's intermediate representation (IR) —
//! `update`, `merge`, `finalize` and a stable byte encoding — used by every path that
//! computes windowed aggregations: training sets, backfills, materialization, stream
//! ingestion and online reads.
//!
//! Every IR is a commutative monoid whose merge is exact, so a finalized value depends
//! only on the multiset of events in the window: never on arrival order, on how events
//! were cut into tiles, or on which path delivered them.
//!
//! | function | input | IR | output | empty window |
//! |---|---|---|---|---|
//! | `count` | any | non-null events | int64 | 0 |
//! | `count_star` | (none) | events | int64 | 0 |
//! | `sum` | int | i128 sum (overflow of int64 at finalize: an error) | int64 | null |
//! | `sum` | float | [`ExactSum`] | float64, correctly rounded | null |
//! | `mean` | number | exact sum and count | float64: the correctly rounded sum / count | null |
//! | `min`, `max` | number, timestamp | the extreme value (floats by total order) | input type | null |
//! | `variance`, `stddev` | number | exact Σx, Σx² and count | float64 (sample, n − 1; combined in double-double arithmetic, accurate to about 1e-28 of the mean square) | null (n < 2) |
//! | `first`, `last` | any | the first/last event and its order key | input type | null |
//! | `first_n`, `last_n` | any | the n first/last events | list of input type | `[]` |
//! | `count_distinct` | any | the distinct values, at most `max_distinct` | int64 | 0 |
//! | `approx_count_distinct` | any | [`Hll`] | int64 | 0 |
//! | `approx_percentile` | number | [`QuantileSketch`] | float64 | null |
//!
//! Nulls in the aggregated column are ignored by every function but `count_star`.
//! Events are ordered (for first/last and their lists) by event time, then creation
//! time, then stream position, then the value's bytes: a total order, so ties are
//! broken the same way on every path. A window whose `count_distinct` set outgrows
//! its bound, or whose integer sum does not fit int64, has no value: finalizing it is
//! an error, which readers report as an invalid value, never a wrong one.
//!
//! # Encoding
//!
//! [`Aggregation::encode`] writes a version byte ([`IR_VERSION`]) and the IR in a
//! canonical form: equal IRs encode to equal bytes, so re-running a backfill leaves the
//! same bytes. [`Aggregation::decode`] rejects bytes of another version or that do not
//! decode completely.

mod exact;
pub mod range;
mod sketch;
pub mod tile;
pub mod window;

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

pub use exact::ExactSum;
pub use sketch::{Hll, QuantileSketch, HLL_P, SUB_BITS};

use crate::dtype::DType;
use crate::time::Timestamp;
use crate::value::Value;
use exact::{get_uvarint, put_uvarint, unzigzag, zigzag};

/// The version byte every encoded IR starts with.
pub const IR_VERSION: u8 = 1;

/// The largest `max_distinct` a `count_distinct` may declare.
pub const MAX_DISTINCT_LIMIT: usize = 100_000;
/// `max_distinct` when a definition gives none.
pub const DEFAULT_MAX_DISTINCT: usize = 1_000;
/// The largest `n` of `first_n` / `last_n`.
pub const MAX_N: usize = 1_000;

/// An aggregation function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Function {
    Count,
    CountStar,
    Sum,
    Mean,
    Min,
    Max,
    Variance,
    Stddev,
    First,
    Last,
    FirstN,
    LastN,
    CountDistinct,
    ApproxCountDistinct,
    ApproxPercentile,
}

impl Function {
    /// Every function, in the order documented.
    pub const ALL: [Function; 15] = [
        Function::Count,
        Function::CountStar,
        Function::Sum,
        Function::Mean,
        Function::Min,
        Function::Max,
        Function::Variance,
        Function::Stddev,
        Function::First,
        Function::Last,
        Function::FirstN,
        Function::LastN,
        Function::CountDistinct,
        Function::ApproxCountDistinct,
        Function::ApproxPercentile,
    ];

    /// The name used in definitions and in output feature names.
    pub fn name(self) -> &'static str {
        match self {
            Function::Count => "count",
            Function::CountStar => "count_star",
            Function::Sum => "sum",
            Function::Mean => "mean",
            Function::Min => "min",
            Function::Max => "max",
            Function::Variance => "variance",
            Function::Stddev => "stddev",
            Function::First => "first",
            Function::Last => "last",
            Function::FirstN => "first_n",
            Function::LastN => "last_n",
            Function::CountDistinct => "count_distinct",
            Function::ApproxCountDistinct => "approx_count_distinct",
            Function::ApproxPercentile => "approx_percentile",
        }
    }

    /// Whether the result is approximate (with the error bound stated in the docs).
    pub fn is_approximate(self) -> bool {
        matches!(
            self,
            Function::ApproxCountDistinct | Function::ApproxPercentile
        )
    }
}

impl fmt::Display for Function {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How an aggregation reads its column's values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// int32, int64, timestamp (as µs), bool (as 0/1): exact integers.
    Int,
    /// float32, float64.
    Float,
    /// string, bytes, lists: opaque bytes.
    Bytes,
    /// count_star reads no column.
    None,
}

/// One event's value of the aggregated column.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Input<'a> {
    Null,
    Int(i64),
    Float(f64),
    Bytes(&'a [u8]),
}

/// Where an event sorts among events (first/last and their lists): by event time, then
/// creation time, then stream position; the value's bytes break what is left.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Order {
    pub event_ts: Timestamp,
    /// [`crate::contract::NO_CREATED`] when the source has none.
    pub created_ts: Timestamp,
    pub position: u128,
}

impl From<crate::contract::RowVersion> for Order {
    /// A stored row's order (no stream position).
    fn from(v: crate::contract::RowVersion) -> Self {
        Order {
            event_ts: v.event_ts,
            created_ts: v.created_ts,
            position: 0,
        }
    }
}

/// A compiled aggregation: a function over a column of a given type.
#[derive(Clone, Debug, PartialEq)]
pub struct Aggregation {
    function: Function,
    input: DType,
    kind: Kind,
    n: usize,
    percentile: f64,
    max_distinct: usize,
}

/// Why an aggregation cannot be defined, for the definition's error message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DefinitionProblem {
    /// The field at fault: `column`, `function`, `n`, `percentile` or `max_distinct`.
    pub field: &'static str,
    pub message: String,
}

/// A window's value that cannot be given (read as an invalid value).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FinalizeError(pub String);

/// Parameters of the functions that take one.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Params {
    /// `first_n`, `last_n`: how many.
    pub n: Option<usize>,
    /// `approx_percentile`: which, in [0, 1].
    pub percentile: Option<f64>,
    /// `count_distinct`: the bound.
    pub max_distinct: Option<usize>,
}

impl Aggregation {
    /// Checks that `function` applies to a column of type `input` (`None` for
    /// `count_star`) with `params`, and compiles it.
    pub fn new(
        function: Function,
        input: Option<&DType>,
        params: Params,
    ) -> Result<Aggregation, DefinitionProblem> {
        let problem = |field: &'static str, message: String| DefinitionProblem { field, message };
        let dtype =
            match (function, input) {
                (Function::CountStar, None) => DType::Int64,
                (Function::CountStar, Some(_)) => return Err(problem(
                    "column",
                    "count_star counts events and reads no column; remove 'column' (or use count)"
                        .into(),
                )),
                (f, None) => {
                    return Err(problem(
                        "column",
                        format!("{f} needs a 'column' to aggregate"),
                    ))
                }
                (_, Some(t)) => t.clone(),
            };
        let kind = match (&dtype, function) {
            (_, Function::CountStar) => Kind::None,
            (DType::Int32 | DType::Int64 | DType::Timestamp | DType::Bool, _) => Kind::Int,
            (DType::Float32 | DType::Float64, _) => Kind::Float,
            _ => Kind::Bytes,
        };
        let numeric = matches!(kind, Kind::Int | Kind::Float) && dtype != DType::Bool;
        let needs_number = match function {
            Function::Sum
            | Function::Mean
            | Function::Variance
            | Function::Stddev
            | Function::ApproxPercentile => numeric && dtype != DType::Timestamp,
            Function::Min | Function::Max => numeric,
            _ => true,
        };
        if !needs_number {
            return Err(problem(
                "function",
                format!("{function} does not apply to a column of type {dtype}"),
            ));
        }
        let mut agg = Aggregation {
            function,
            input: dtype,
            kind,
            n: 0,
            percentile: 0.0,
            max_distinct: 0,
        };
        match function {
            Function::FirstN | Function::LastN => {
                let n = params
                    .n
                    .ok_or_else(|| problem("n", format!("{function} needs n")))?;
                if n == 0 || n > MAX_N {
                    return Err(problem(
                        "n",
                        format!("n must be between 1 and {MAX_N}, not {n}"),
                    ));
                }
                agg.n = n;
            }
            Function::ApproxPercentile => {
                let p = params.percentile.ok_or_else(|| {
                    problem("percentile", "approx_percentile needs percentile".into())
                })?;
                if !(0.0..=1.0).contains(&p) {
                    return Err(problem(
                        "percentile",
                        format!("percentile must be between 0 and 1 (0.9 for the 90th), not {p}"),
                    ));
                }
                agg.percentile = p;
            }
            Function::CountDistinct => {
                let b = params.max_distinct.unwrap_or(DEFAULT_MAX_DISTINCT);
                if b == 0 || b > MAX_DISTINCT_LIMIT {
                    return Err(problem(
                        "max_distinct",
                        format!(
                            "max_distinct must be between 1 and {MAX_DISTINCT_LIMIT}, not {b} \
                             (use approx_count_distinct for larger sets)"
                        ),
                    ));
                }
                agg.max_distinct = b;
            }
            _ => {}
        }
        if params.n.is_some() && !matches!(function, Function::FirstN | Function::LastN) {
            return Err(problem("n", format!("{function} takes no n")));
        }
        if params.percentile.is_some() && function != Function::ApproxPercentile {
            return Err(problem(
                "percentile",
                format!("{function} takes no percentile"),
            ));
        }
        if params.max_distinct.is_some() && function != Function::CountDistinct {
            return Err(problem(
                "max_distinct",
                format!("{function} takes no max_distinct"),
            ));
        }
        Ok(agg)
    }

    pub fn function(&self) -> Function {
        self.function
    }

    /// Whether `other`'s IR is this one's: the same kind of partial aggregate of the
    /// same input (sum and mean share an exact sum and count, variance and stddev their
    /// moments, percentiles of any rank one sketch), so one stored IR serves both.
    pub fn shares_ir(&self, other: &Aggregation) -> bool {
        let class = |f: Function| match f {
            Function::Sum | Function::Mean => Function::Sum,
            Function::Variance | Function::Stddev => Function::Variance,
            f => f,
        };
        class(self.function) == class(other.function)
            && self.input == other.input
            && self.n == other.n
            && self.max_distinct == other.max_distinct
    }

    /// The type of the finalized value.
    pub fn output_dtype(&self) -> DType {
        match self.function {
            Function::Count
            | Function::CountStar
            | Function::CountDistinct
            | Function::ApproxCountDistinct => DType::Int64,
            Function::Sum if self.kind == Kind::Int => DType::Int64,
            Function::Sum
            | Function::Mean
            | Function::Variance
            | Function::Stddev
            | Function::ApproxPercentile => DType::Float64,
            Function::Min | Function::Max | Function::First | Function::Last => self.input.clone(),
            Function::FirstN | Function::LastN => DType::List(Box::new(self.input.clone())),
        }
    }

    /// The IR of no events.
    pub fn empty(&self) -> Ir {
        match self.function {
            Function::Count | Function::CountStar => Ir::Count(0),
            Function::Sum | Function::Mean if self.kind == Kind::Int => {
                Ir::IntSum { sum: 0, count: 0 }
            }
            Function::Sum | Function::Mean => Ir::FloatSum {
                sum: ExactSum::new(),
                count: 0,
            },
            Function::Min | Function::Max => Ir::Extreme(None),
            Function::Variance | Function::Stddev => Ir::Moments {
                s1: ExactSum::new(),
                s2: ExactSum::new(),
                count: 0,
            },
            Function::First | Function::Last | Function::FirstN | Function::LastN => {
                Ir::Events(Vec::new())
            }
            Function::CountDistinct => Ir::Distinct {
                values: BTreeSet::new(),
                overflow: false,
            },
            Function::ApproxCountDistinct => Ir::Hll(Hll::default()),
            Function::ApproxPercentile => Ir::Quantiles(QuantileSketch::default()),
        }
    }

    /// Makes `ir` the IR of no events ([`Self::empty`]), keeping its buffers when it is
    /// of this aggregation's kind.
    pub fn reset(&self, ir: &mut Ir) {
        match ir {
            Ir::FloatSum { sum, count } if matches!(self.empty(), Ir::FloatSum { .. }) => {
                sum.clear();
                *count = 0;
            }
            Ir::Moments { s1, s2, count } if matches!(self.empty(), Ir::Moments { .. }) => {
                s1.clear();
                s2.clear();
                *count = 0;
            }
            Ir::Events(kept) if matches!(self.empty(), Ir::Events(_)) => kept.clear(),
            _ => *ir = self.empty(),
        }
    }

    /// How many events first/last (1) and their lists (n) keep.
    fn keep(&self) -> usize {
        match self.function {
            Function::First | Function::Last => 1,
            _ => self.n,
        }
    }

    /// Whether the kept events are the latest (last, last_n) rather than the earliest.
    fn keeps_latest(&self) -> bool {
        matches!(self.function, Function::Last | Function::LastN)
    }

    /// Whether merging tiles of earlier times into `ir` can no longer change it: last
    /// and last_n holding their n events (a tile's events are all earlier than those of
    /// any later tile). Reads that merge tiles newest first stop there.
    pub fn complete_for_earlier_tiles(&self, ir: &Ir) -> bool {
        matches!(ir, Ir::Events(kept) if self.keeps_latest() && kept.len() >= self.keep())
    }

    /// Whether `v` replaces `cur` as min's or max's extreme (by the total order).
    fn improves(&self, cur: Option<&Scalar>, v: &Scalar) -> bool {
        match cur {
            None => true,
            Some(c) if self.function == Function::Min => v.cmp_total(c).is_lt(),
            Some(c) => v.cmp_total(c).is_gt(),
        }
    }

    /// Adds one event. `value` is the aggregated column's value (ignored by count_star).
    pub fn update(&self, ir: &mut Ir, value: Input<'_>, order: Order) {
        if self.function == Function::CountStar {
            if let Ir::Count(c) = ir {
                *c += 1;
            }
            return;
        }
        if value == Input::Null {
            return;
        }
        match ir {
            Ir::Count(c) => *c += 1,
            Ir::IntSum { sum, count } => {
                if let Input::Int(v) = value {
                    *sum += v as i128;
                    *count += 1;
                }
            }
            Ir::FloatSum { sum, count } => {
                if let Some(x) = as_f64(value) {
                    sum.add(x);
                    *count += 1;
                }
            }
            Ir::Moments { s1, s2, count } => {
                if let Some(x) = as_f64_exact(value, s1) {
                    add_square(s2, value, x);
                    *count += 1;
                }
            }
            Ir::Extreme(cur) => {
                let v = match value {
                    Input::Int(v) => Scalar::Int(v),
                    Input::Float(x) => Scalar::Float(x),
                    _ => return,
                };
                if self.improves(cur.as_ref(), &v) {
                    *cur = Some(v);
                }
            }
            Ir::Events(kept) => {
                let e = Event {
                    order,
                    value: Scalar::from_input(value),
                };
                keep_event(kept, e, self.keep(), self.keeps_latest());
            }
            Ir::Distinct { values, overflow } => {
                if *overflow {
                    return;
                }
                values.insert(Scalar::from_input(value).key_bytes());
                if values.len() > self.max_distinct {
                    *overflow = true;
                    values.clear();
                }
            }
            Ir::Hll(h) => h.add_bytes(&Scalar::from_input(value).key_bytes()),
            Ir::Quantiles(q) => {
                if let Some(x) = as_f64(value) {
                    q.add(x);
                }
            }
        }
    }

    /// Merges `other` into `ir` (both of this aggregation).
    pub fn merge(&self, ir: &mut Ir, other: &Ir) {
        match (ir, other) {
            (Ir::Count(a), Ir::Count(b)) => *a += b,
            (Ir::IntSum { sum, count }, Ir::IntSum { sum: s, count: c }) => {
                *sum += s;
                *count += c;
            }
            (Ir::FloatSum { sum, count }, Ir::FloatSum { sum: s, count: c }) => {
                sum.merge(s);
                *count += c;
            }
            (
                Ir::Moments { s1, s2, count },
                Ir::Moments {
                    s1: o1,
                    s2: o2,
                    count: c,
                },
            ) => {
                s1.merge(o1);
                s2.merge(o2);
                *count += c;
            }
            (Ir::Extreme(cur), Ir::Extreme(Some(v))) => {
                if self.improves(cur.as_ref(), v) {
                    *cur = Some(v.clone());
                }
            }
            (Ir::Extreme(_), Ir::Extreme(None)) => {}
            (Ir::Events(kept), Ir::Events(more)) => {
                for e in more {
                    keep_event(kept, e.clone(), self.keep(), self.keeps_latest());
                }
            }
            (
                Ir::Distinct { values, overflow },
                Ir::Distinct {
                    values: v,
                    overflow: o,
                },
            ) => {
                if *overflow || *o {
                    *overflow = true;
                    values.clear();
                    return;
                }
                values.extend(v.iter().cloned());
                if values.len() > self.max_distinct {
                    *overflow = true;
                    values.clear();
                }
            }
            (Ir::Hll(a), Ir::Hll(b)) => a.merge(b),
            (Ir::Quantiles(a), Ir::Quantiles(b)) => a.merge(b),
            (a, b) => panic!("merging IRs of different aggregations: {a:?} and {b:?}"),
        }
    }

    /// The window's value from its merged IR.
    pub fn finalize(&self, ir: &Ir) -> Result<Value, FinalizeError> {
        Ok(match (self.function, ir) {
            (_, Ir::Count(c)) => Value::Int64(*c as i64),
            (Function::Sum, Ir::IntSum { count: 0, .. }) => Value::Null,
            (Function::Sum, Ir::IntSum { sum, .. }) => Value::Int64(
                i64::try_from(*sum)
                    .map_err(|_| FinalizeError(format!("the sum {sum} does not fit int64")))?,
            ),
            (Function::Mean, Ir::IntSum { count: 0, .. }) => Value::Null,
            (Function::Mean, Ir::IntSum { sum, count }) => {
                // The sum as the nearest f64, then one division: both correctly rounded.
                Value::Float64(*sum as f64 / *count as f64)
            }
            (_, Ir::FloatSum { count: 0, .. }) => Value::Null,
            (Function::Sum, Ir::FloatSum { sum, .. }) => Value::Float64(sum.value()),
            (Function::Mean, Ir::FloatSum { sum, count }) => {
                Value::Float64(sum.value() / *count as f64)
            }
            (_, Ir::Moments { count, .. }) if *count < 2 => Value::Null,
            (f, Ir::Moments { s1, s2, count }) => {
                let var = variance(s1, s2, *count);
                Value::Float64(if f == Function::Stddev {
                    var.sqrt()
                } else {
                    var
                })
            }
            (_, Ir::Extreme(None)) => Value::Null,
            (_, Ir::Extreme(Some(v))) => v.to_value(&self.input),
            (Function::First | Function::Last, Ir::Events(kept)) => match kept.first() {
                None => Value::Null,
                Some(e) => e.value.to_value(&self.input),
            },
            (_, Ir::Events(kept)) => {
                // Kept in ascending order for first_n, descending for last_n: the list
                // reads first-to-last for first_n and latest-first for last_n.
                Value::List(kept.iter().map(|e| e.value.to_value(&self.input)).collect())
            }
            (_, Ir::Distinct { overflow: true, .. }) => {
                return Err(FinalizeError(format!(
                    "more than {} distinct values (count_distinct's max_distinct)",
                    self.max_distinct
                )))
            }
            (_, Ir::Distinct { values, .. }) => Value::Int64(values.len() as i64),
            (_, Ir::Hll(h)) => Value::Int64(h.estimate() as i64),
            (_, Ir::Quantiles(q)) => match q.quantile(self.percentile) {
                None => Value::Null,
                Some(x) => Value::Float64(x),
            },
            (f, ir) => panic!("{f} cannot finalize {ir:?}"),
        })
    }

    /// Appends the IR's canonical encoding, led by [`IR_VERSION`].
    pub fn encode(&self, ir: &Ir, out: &mut Vec<u8>) {
        out.push(IR_VERSION);
        match ir {
            Ir::Count(c) => put_uvarint(out, *c),
            Ir::IntSum { sum, count } => {
                put_uvarint(out, *count);
                let z = ((*sum << 1) ^ (*sum >> 127)) as u128;
                out.extend_from_slice(&z.to_le_bytes());
            }
            Ir::FloatSum { sum, count } => {
                put_uvarint(out, *count);
                sum.encode(out);
            }
            Ir::Moments { s1, s2, count } => {
                put_uvarint(out, *count);
                s1.encode(out);
                s2.encode(out);
            }
            Ir::Extreme(v) => match v {
                None => out.push(0),
                Some(s) => {
                    out.push(1);
                    s.encode(out);
                }
            },
            Ir::Events(kept) => {
                put_uvarint(out, kept.len() as u64);
                for e in kept {
                    put_uvarint(out, zigzag(e.order.event_ts));
                    put_uvarint(out, zigzag(e.order.created_ts));
                    out.extend_from_slice(&e.order.position.to_le_bytes());
                    e.value.encode(out);
                }
            }
            Ir::Distinct { values, overflow } => {
                if *overflow {
                    out.push(1);
                } else {
                    out.push(0);
                    put_uvarint(out, values.len() as u64);
                    for v in values {
                        put_uvarint(out, v.len() as u64);
                        out.extend_from_slice(v);
                    }
                }
            }
            Ir::Hll(h) => h.encode(out),
            Ir::Quantiles(q) => q.encode(out),
        }
    }

    /// Reads an IR that [`encode`](Self::encode) wrote for this aggregation.
    pub fn decode(&self, bytes: &[u8]) -> Result<Ir, FinalizeError> {
        let mut ir = self.empty();
        self.decode_into(bytes, &mut ir)?;
        Ok(ir)
    }

    /// [`Aggregation::decode`] into `ir`, in place when it is of this aggregation's kind
    /// (keeping its buffers: an exact sum's limbs, kept events): an online read decodes
    /// every tile of a slot into one IR. After an error `ir` holds no meaningful value.
    pub fn decode_into(&self, bytes: &[u8], ir: &mut Ir) -> Result<(), FinalizeError> {
        let bad = || FinalizeError(format!("a stored {} tile does not decode", self.function));
        let (&version, mut input) = bytes.split_first().ok_or_else(bad)?;
        if version != IR_VERSION {
            return Err(FinalizeError(format!(
                "a stored {} tile has IR version {version}; this build reads version {IR_VERSION}",
                self.function
            )));
        }
        let input = &mut input;
        let empty = self.empty();
        if std::mem::discriminant(ir) != std::mem::discriminant(&empty) {
            *ir = empty;
        }
        match ir {
            Ir::Count(c) => *c = get_uvarint(input).ok_or_else(bad)?,
            Ir::IntSum { sum, count } => {
                *count = get_uvarint(input).ok_or_else(bad)?;
                if input.len() < 16 {
                    return Err(bad());
                }
                let z = u128::from_le_bytes(input[..16].try_into().expect("16 bytes"));
                *input = &input[16..];
                *sum = ((z >> 1) as i128) ^ -((z & 1) as i128);
            }
            Ir::FloatSum { sum, count } => {
                *count = get_uvarint(input).ok_or_else(bad)?;
                sum.decode_into(input).ok_or_else(bad)?;
            }
            Ir::Moments { s1, s2, count } => {
                *count = get_uvarint(input).ok_or_else(bad)?;
                s1.decode_into(input).ok_or_else(bad)?;
                s2.decode_into(input).ok_or_else(bad)?;
            }
            Ir::Extreme(v) => {
                let (&tag, rest) = input.split_first().ok_or_else(bad)?;
                *input = rest;
                *v = match tag {
                    0 => None,
                    1 => Some(Scalar::decode(input).ok_or_else(bad)?),
                    _ => return Err(bad()),
                };
            }
            Ir::Events(kept) => {
                let len = get_uvarint(input).ok_or_else(bad)? as usize;
                if len > self.keep() {
                    return Err(bad());
                }
                kept.clear();
                for _ in 0..len {
                    let event_ts = unzigzag(get_uvarint(input).ok_or_else(bad)?);
                    let created_ts = unzigzag(get_uvarint(input).ok_or_else(bad)?);
                    if input.len() < 16 {
                        return Err(bad());
                    }
                    let position = u128::from_le_bytes(input[..16].try_into().expect("16"));
                    *input = &input[16..];
                    kept.push(Event {
                        order: Order {
                            event_ts,
                            created_ts,
                            position,
                        },
                        value: Scalar::decode(input).ok_or_else(bad)?,
                    });
                }
            }
            Ir::Distinct { values, overflow } => {
                let (&tag, rest) = input.split_first().ok_or_else(bad)?;
                *input = rest;
                values.clear();
                match tag {
                    1 => *overflow = true,
                    0 => {
                        *overflow = false;
                        let len = get_uvarint(input).ok_or_else(bad)? as usize;
                        if len > self.max_distinct {
                            return Err(bad());
                        }
                        for _ in 0..len {
                            let l = get_uvarint(input).ok_or_else(bad)? as usize;
                            if input.len() < l {
                                return Err(bad());
                            }
                            values.insert(input[..l].to_vec());
                            *input = &input[l..];
                        }
                    }
                    _ => return Err(bad()),
                }
            }
            Ir::Hll(h) => *h = Hll::decode(input).ok_or_else(bad)?,
            Ir::Quantiles(q) => *q = QuantileSketch::decode(input).ok_or_else(bad)?,
        }
        if !input.is_empty() {
            return Err(bad());
        }
        Ok(())
    }
}

/// An aggregation's intermediate representation.
#[derive(Clone, Debug, PartialEq)]
pub enum Ir {
    Count(u64),
    IntSum {
        sum: i128,
        count: u64,
    },
    FloatSum {
        sum: ExactSum,
        count: u64,
    },
    Moments {
        s1: ExactSum,
        s2: ExactSum,
        count: u64,
    },
    Extreme(Option<Scalar>),
    /// Kept events, best first (earliest for first/first_n, latest for last/last_n).
    Events(Vec<Event>),
    Distinct {
        values: BTreeSet<Vec<u8>>,
        overflow: bool,
    },
    Hll(Hll),
    Quantiles(QuantileSketch),
}

/// One kept event of first/last and their lists.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub order: Order,
    pub value: Scalar,
}

/// A value kept in an IR.
#[derive(Clone, Debug, PartialEq)]
pub enum Scalar {
    Int(i64),
    Float(f64),
    Bytes(Vec<u8>),
}

impl Scalar {
    fn from_input(v: Input<'_>) -> Scalar {
        match v {
            Input::Int(i) => Scalar::Int(i),
            Input::Float(x) => Scalar::Float(x),
            Input::Bytes(b) => Scalar::Bytes(b.to_vec()),
            Input::Null => Scalar::Bytes(Vec::new()),
        }
    }

    /// A total order: integers by value, floats by IEEE total order, bytes
    /// lexicographically (one aggregation only ever holds one kind).
    fn cmp_total(&self, other: &Scalar) -> std::cmp::Ordering {
        match (self, other) {
            (Scalar::Int(a), Scalar::Int(b)) => a.cmp(b),
            (Scalar::Float(a), Scalar::Float(b)) => a.total_cmp(b),
            (Scalar::Bytes(a), Scalar::Bytes(b)) => a.cmp(b),
            (a, b) => a.tag().cmp(&b.tag()),
        }
    }

    fn tag(&self) -> u8 {
        match self {
            Scalar::Int(_) => 0,
            Scalar::Float(_) => 1,
            Scalar::Bytes(_) => 2,
        }
    }

    /// The bytes distinct values are told apart by (and hashed from): floats by value,
    /// so that 0.0 and −0.0 are one value.
    fn key_bytes(&self) -> Vec<u8> {
        match self {
            Scalar::Int(i) => i.to_le_bytes().to_vec(),
            Scalar::Float(x) => (if *x == 0.0 { 0.0f64 } else { *x })
                .to_bits()
                .to_le_bytes()
                .to_vec(),
            Scalar::Bytes(b) => b.clone(),
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.tag());
        match self {
            Scalar::Int(i) => put_uvarint(out, zigzag(*i)),
            Scalar::Float(x) => out.extend_from_slice(&x.to_bits().to_le_bytes()),
            Scalar::Bytes(b) => {
                put_uvarint(out, b.len() as u64);
                out.extend_from_slice(b);
            }
        }
    }

    fn decode(input: &mut &[u8]) -> Option<Scalar> {
        let (&tag, rest) = input.split_first()?;
        *input = rest;
        Some(match tag {
            0 => Scalar::Int(unzigzag(get_uvarint(input)?)),
            1 => {
                if input.len() < 8 {
                    return None;
                }
                let x = f64::from_bits(u64::from_le_bytes(input[..8].try_into().ok()?));
                *input = &input[8..];
                Scalar::Float(x)
            }
            2 => {
                let l = get_uvarint(input)? as usize;
                if input.len() < l {
                    return None;
                }
                let b = input[..l].to_vec();
                *input = &input[l..];
                Scalar::Bytes(b)
            }
            _ => return None,
        })
    }

    /// The value as the column's type.
    fn to_value(&self, dtype: &DType) -> Value {
        match (self, dtype) {
            (Scalar::Int(i), DType::Int32) => Value::Int32(*i as i32),
            (Scalar::Int(i), DType::Bool) => Value::Bool(*i != 0),
            (Scalar::Int(i), DType::Timestamp) => Value::Timestamp(*i),
            (Scalar::Int(i), _) => Value::Int64(*i),
            (Scalar::Float(x), DType::Float32) => Value::Float32(*x as f32),
            (Scalar::Float(x), _) => Value::Float64(*x),
            (Scalar::Bytes(b), DType::String) => {
                Value::String(String::from_utf8_lossy(b).into_owned())
            }
            (Scalar::Bytes(b), _) => Value::Bytes(b.clone()),
        }
    }
}

/// Keeps `e` among the `keep` best events of `kept` (earliest first, or latest first),
/// by (order, value bytes): a total order, so the kept set never depends on arrival.
fn keep_event(kept: &mut Vec<Event>, e: Event, keep: usize, latest: bool) {
    let rank = |a: &Event, b: &Event| {
        let o = a
            .order
            .cmp(&b.order)
            .then_with(|| a.value.cmp_total(&b.value));
        if latest {
            o.reverse()
        } else {
            o
        }
    };
    let at = kept.partition_point(|k| rank(k, &e).is_lt());
    if at >= keep {
        return;
    }
    // Events are a multiset: an event equal to a kept one is kept too (replays are
    // kept out by stream positions, not here).
    kept.insert(at, e);
    kept.truncate(keep);
}

fn as_f64(v: Input<'_>) -> Option<f64> {
    match v {
        Input::Int(i) => Some(i as f64),
        Input::Float(x) => Some(x),
        _ => None,
    }
}

/// Adds the value to `s1` exactly (integers beyond 2^53 in two exact parts) and returns
/// it as the nearest f64.
fn as_f64_exact(v: Input<'_>, s1: &mut ExactSum) -> Option<f64> {
    match v {
        Input::Int(i) => {
            let (hi, lo) = split_int(i);
            s1.add(hi);
            s1.add(lo);
            Some(i as f64)
        }
        Input::Float(x) => {
            s1.add(x);
            Some(x)
        }
        _ => None,
    }
}

/// `i` as `hi + lo`, both exact f64s.
fn split_int(i: i64) -> (f64, f64) {
    let hi = (i >> 32) << 32;
    (hi as f64, (i - hi) as f64)
}

/// Adds the square of the value to `s2` exactly (up to underflow of the error term of
/// squares below 1e-160): error-free products (fused multiply-add) of exact parts.
fn add_square(s2: &mut ExactSum, v: Input<'_>, x: f64) {
    let two_product = |s: &mut ExactSum, a: f64, b: f64| {
        let p = a * b;
        s.add(p);
        s.add(a.mul_add(b, -p));
    };
    match v {
        Input::Int(i) => {
            // (h + l)² = h² + 2hl + l², each product error-free.
            let (h, l) = split_int(i);
            two_product(s2, h, h);
            two_product(s2, 2.0 * h, l);
            two_product(s2, l, l);
        }
        _ => two_product(s2, x, x),
    }
}

/// The sample variance from exact Σx, Σx² and n ≥ 2, in double-double arithmetic:
/// (Σx² − (Σx)²/n) / (n − 1), never below 0.
fn variance(s1: &ExactSum, s2: &ExactSum, n: u64) -> f64 {
    let (a_hi, a_lo) = s1.value_dd();
    let (b_hi, b_lo) = s2.value_dd();
    if !(a_hi.is_finite() && b_hi.is_finite()) {
        return f64::NAN;
    }
    let nf = n as f64;
    // (a_hi + a_lo)² / n, as an exact sum of error-free parts, subtracted from Σx².
    let mut acc = ExactSum::new();
    acc.add(b_hi);
    acc.add(b_lo);
    let sq = |acc: &mut ExactSum, a: f64, b: f64, sign: f64| {
        let p = a * b;
        acc.add(sign * p);
        acc.add(sign * a.mul_add(b, -p));
    };
    // m = Σx / n as a double-double, then Σx · m = (Σx)² / n.
    let m_hi = a_hi / nf;
    let r = {
        let mut t = ExactSum::new();
        t.add(a_hi);
        t.add(a_lo);
        t.add(-m_hi * nf);
        t.add(-(m_hi.mul_add(nf, -(m_hi * nf))));
        t.value()
    };
    let m_lo = r / nf;
    sq(&mut acc, a_hi, m_hi, -1.0);
    sq(&mut acc, a_hi, m_lo, -1.0);
    sq(&mut acc, a_lo, m_hi, -1.0);
    sq(&mut acc, a_lo, m_lo, -1.0);
    (acc.value() / (nf - 1.0)).max(0.0)
}

/// The name of an aggregation's output feature: `{column}_{function}_{window}` (e.g.
/// `amount_sum_1h`), `count_star_{window}` for count_star, with the percentile in
/// per cent for approx_percentile (`amount_p90_7d`) and n for the lists
/// (`category_last_5_7d`).
pub fn output_name(column: Option<&str>, agg: &Aggregation, window: &str) -> String {
    let f = match agg.function {
        Function::ApproxPercentile => {
            // Per cent, to four decimals (0.995 → 99.5, not 99.49999999999999).
            let pct = (agg.percentile * 1_000_000.0).round() / 10_000.0;
            let text = if pct.fract() == 0.0 {
                format!("{}", pct as u64)
            } else {
                format!("{pct}").replace('.', "_")
            };
            format!("p{text}")
        }
        Function::FirstN => format!("first_{}", agg.n),
        Function::LastN => format!("last_{}", agg.n),
        f => f.name().to_string(),
    };
    match column {
        Some(c) => format!("{c}_{f}_{window}"),
        None => format!("{f}_{window}"),
    }
}

#[cfg(test)]
mod tests;
