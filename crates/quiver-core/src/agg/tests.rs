//! The engine's properties: for every function, any cut of the events into tiles and
//! any merge order give the same encoded IR and the same value, equal to a brute-force
//! reference (exact sums by Shewchuk's algorithm, as Python's `math.fsum`; percentiles
//! within the sketch's bound).

use proptest::prelude::*;

use super::*;

/// Python's `math.fsum`: the correctly rounded sum (no intermediate overflow here).
fn fsum(xs: &[f64]) -> f64 {
    let mut partials: Vec<f64> = Vec::new();
    for &x0 in xs {
        let mut x = x0;
        let mut i = 0;
        for k in 0..partials.len() {
            let mut y = partials[k];
            if x.abs() < y.abs() {
                std::mem::swap(&mut x, &mut y);
            }
            let hi = x + y;
            let lo = y - (hi - x);
            if lo != 0.0 {
                partials[i] = lo;
                i += 1;
            }
            x = hi;
        }
        partials.truncate(i);
        partials.push(x);
    }
    let mut n = partials.len();
    if n == 0 {
        return 0.0;
    }
    n -= 1;
    let mut hi = partials[n];
    let mut lo = 0.0;
    while n > 0 {
        let x = hi;
        n -= 1;
        let y = partials[n];
        hi = x + y;
        let yr = hi - x;
        lo = y - yr;
        if lo != 0.0 {
            break;
        }
    }
    if n > 0 && ((lo < 0.0 && partials[n - 1] < 0.0) || (lo > 0.0 && partials[n - 1] > 0.0)) {
        let y = lo * 2.0;
        let x = hi + y;
        if y == x - hi {
            hi = x;
        }
    }
    hi
}

#[derive(Clone, Debug)]
struct Ev {
    value: Option<f64>,
    order: Order,
}

fn events() -> impl Strategy<Value = Vec<Ev>> {
    let value = prop_oneof![
        3 => (-1000i64..1000).prop_map(|i| Some(i as f64 / 4.0)),
        1 => Just(None),
        1 => Just(Some(1e300)),
        1 => Just(Some(-1e300)),
        1 => Just(Some(0.1)),
        1 => Just(Some(-0.0)),
        1 => any::<f64>().prop_filter("finite, moderate", |x| x.is_finite() && x.abs() < 1e300).prop_map(Some),
    ];
    // Few distinct times, so that ties on event time are common.
    let order =
        (0i64..6, prop_oneof![Just(i64::MIN), 0i64..3], 0u128..3).prop_map(|(t, c, p)| Order {
            event_ts: t,
            created_ts: c,
            position: p,
        });
    prop::collection::vec(
        (value, order).prop_map(|(value, order)| Ev { value, order }),
        0..40,
    )
}

fn aggregations() -> Vec<Aggregation> {
    let f64t = DType::Float64;
    let p = |f, params| Aggregation::new(f, Some(&f64t), params).unwrap();
    vec![
        p(Function::Count, Params::default()),
        Aggregation::new(Function::CountStar, None, Params::default()).unwrap(),
        p(Function::Sum, Params::default()),
        p(Function::Mean, Params::default()),
        p(Function::Min, Params::default()),
        p(Function::Max, Params::default()),
        p(Function::Variance, Params::default()),
        p(Function::Stddev, Params::default()),
        p(Function::First, Params::default()),
        p(Function::Last, Params::default()),
        p(
            Function::FirstN,
            Params {
                n: Some(3),
                ..Default::default()
            },
        ),
        p(
            Function::LastN,
            Params {
                n: Some(3),
                ..Default::default()
            },
        ),
        p(
            Function::CountDistinct,
            Params {
                max_distinct: Some(10),
                ..Default::default()
            },
        ),
        p(Function::ApproxCountDistinct, Params::default()),
        p(
            Function::ApproxPercentile,
            Params {
                percentile: Some(0.9),
                ..Default::default()
            },
        ),
    ]
}

fn input(v: Option<f64>) -> Input<'static> {
    v.map_or(Input::Null, Input::Float)
}

/// The IR of `evs` built as tiles cut at `cuts`, each tile's events in the given order,
/// tiles merged in reverse.
fn tiled(agg: &Aggregation, evs: &[Ev], cuts: &[usize]) -> Ir {
    let mut bounds: Vec<usize> = cuts.iter().map(|&c| c % (evs.len() + 1)).collect();
    bounds.push(0);
    bounds.push(evs.len());
    bounds.sort_unstable();
    let mut tiles = Vec::new();
    for w in bounds.windows(2) {
        let mut ir = agg.empty();
        for e in &evs[w[0]..w[1]] {
            agg.update(&mut ir, input(e.value), e.order);
        }
        // Through the encoding, as a stored tile would be.
        let mut bytes = Vec::new();
        agg.encode(&ir, &mut bytes);
        tiles.push(agg.decode(&bytes).unwrap());
    }
    let mut out = agg.empty();
    for t in tiles.iter().rev() {
        agg.merge(&mut out, t);
    }
    out
}

fn bits(v: &Value) -> Vec<u64> {
    match v {
        Value::Float64(x) => vec![x.to_bits()],
        Value::Int64(i) => vec![*i as u64],
        Value::List(items) => items.iter().flat_map(bits).collect(),
        Value::Null => vec![u64::MAX - 1],
        other => panic!("{other:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn tiling_and_order_never_change_the_ir_or_the_value(
        evs in events(),
        cuts in prop::collection::vec(any::<usize>(), 0..5),
        seed in any::<u64>(),
    ) {
        let mut shuffled = evs.clone();
        let mut r = seed;
        for i in (1..shuffled.len()).rev() {
            r = r.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            shuffled.swap(i, (r >> 33) as usize % (i + 1));
        }
        for agg in aggregations() {
            let a = tiled(&agg, &evs, &[]);
            let b = tiled(&agg, &shuffled, &cuts);
            let (mut ea, mut eb) = (Vec::new(), Vec::new());
            agg.encode(&a, &mut ea);
            agg.encode(&b, &mut eb);
            prop_assert_eq!(&ea, &eb, "{}: encodings differ", agg.function());
            let (va, vb) = (agg.finalize(&a), agg.finalize(&b));
            match (&va, &vb) {
                (Ok(x), Ok(y)) => prop_assert_eq!(bits(x), bits(y), "{}", agg.function()),
                _ => prop_assert_eq!(&va, &vb),
            }
            check_reference(&agg, &evs, va)?;
        }
    }
}

/// Checks a finalized value against a brute-force computation over the events.
fn check_reference(
    agg: &Aggregation,
    evs: &[Ev],
    got: Result<Value, FinalizeError>,
) -> Result<(), TestCaseError> {
    let xs: Vec<f64> = evs.iter().filter_map(|e| e.value).collect();
    let f = agg.function();
    let got = match got {
        Ok(v) => v,
        Err(e) => {
            // Only count_distinct over its bound has no value.
            let mut keys: Vec<u64> = xs
                .iter()
                .map(|x| if *x == 0.0 { 0 } else { x.to_bits() })
                .collect();
            keys.sort_unstable();
            keys.dedup();
            prop_assert!(f == Function::CountDistinct && keys.len() > 10, "{f}: {e}");
            return Ok(());
        }
    };
    let null_if_empty = |v: Value| if xs.is_empty() { Value::Null } else { v };
    let want = match f {
        Function::Count => Value::Int64(xs.len() as i64),
        Function::CountStar => Value::Int64(evs.len() as i64),
        // An exact zero sum is +0.0, whatever zeros were added (IEEE would keep −0.0 for
        // a sum of −0.0s only, which depends on nothing but is not worth a flag).
        Function::Sum => null_if_empty(Value::Float64(fsum(&xs) + 0.0)),
        Function::Mean => null_if_empty(Value::Float64((fsum(&xs) + 0.0) / xs.len() as f64)),
        Function::Min => null_if_empty(Value::Float64(
            xs.iter()
                .copied()
                .min_by(|a, b| a.total_cmp(b))
                .unwrap_or(0.0),
        )),
        Function::Max => null_if_empty(Value::Float64(
            xs.iter()
                .copied()
                .max_by(|a, b| a.total_cmp(b))
                .unwrap_or(0.0),
        )),
        Function::First | Function::Last | Function::FirstN | Function::LastN => {
            let mut sorted: Vec<(Order, f64)> = evs
                .iter()
                .filter_map(|e| e.value.map(|v| (e.order, v)))
                .collect();
            sorted.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
            if matches!(f, Function::Last | Function::LastN) {
                sorted.reverse();
            }
            let take: Vec<Value> = sorted
                .iter()
                .take(if matches!(f, Function::First | Function::Last) {
                    1
                } else {
                    3
                })
                .map(|(_, v)| Value::Float64(*v))
                .collect();
            match f {
                Function::First | Function::Last => take.into_iter().next().unwrap_or(Value::Null),
                _ => Value::List(take),
            }
        }
        Function::CountDistinct => {
            let mut keys: Vec<u64> = xs
                .iter()
                .map(|x| if *x == 0.0 { 0 } else { x.to_bits() })
                .collect();
            keys.sort_unstable();
            keys.dedup();
            Value::Int64(keys.len() as i64)
        }
        Function::Variance | Function::Stddev => {
            if xs.len() < 2 {
                Value::Null
            } else {
                // Close to a two-pass computation on moderate values (1e300 overflows it).
                if xs.iter().all(|x| x.abs() < 1e100) {
                    let m = fsum(&xs) / xs.len() as f64;
                    let dev: Vec<f64> = xs.iter().map(|x| (x - m) * (x - m)).collect();
                    let var = fsum(&dev) / (xs.len() - 1) as f64;
                    // Double-double combination: accurate to about 1e-28 of the mean
                    // square (a variance far below it reads as 0).
                    let (want, floor) = if f == Function::Stddev {
                        (var.sqrt(), 1e-14 * m.abs())
                    } else {
                        (var, 1e-28 * m * m)
                    };
                    if let Value::Float64(g) = got {
                        prop_assert!(
                            (g - want).abs() <= 1e-9 * want.abs() + floor + 1e-300,
                            "{f}: {g} vs {want}"
                        );
                    } else {
                        prop_assert!(false, "{f}: {got:?}");
                    }
                }
                return Ok(());
            }
        }
        Function::ApproxCountDistinct => return Ok(()),
        Function::ApproxPercentile => {
            let mut s = xs.clone();
            s.retain(|x| !x.is_nan());
            s.sort_by(|a, b| a.total_cmp(b));
            if s.is_empty() {
                Value::Null
            } else {
                let rank = ((0.9 * s.len() as f64).ceil() as usize).clamp(1, s.len());
                let want = s[rank - 1];
                if let Value::Float64(g) = got {
                    // Relative for normal numbers; below f64::MIN_POSITIVE buckets are
                    // 2^-1029 wide.
                    let bound =
                        (want.abs() * QuantileSketch::RELATIVE_ERROR).max(f64::from_bits(1 << 44));
                    prop_assert!((g - want).abs() <= bound, "p90 {g} vs {want}");
                } else {
                    prop_assert!(false, "p90 {got:?}");
                }
                return Ok(());
            }
        }
    };
    prop_assert_eq!(bits(&got), bits(&want), "{}: {:?} vs {:?}", f, got, want);
    Ok(())
}

#[test]
fn definitions_are_checked_against_the_column_type() {
    let s = DType::String;
    let e = Aggregation::new(Function::Sum, Some(&s), Params::default()).unwrap_err();
    assert_eq!(e.field, "function");
    assert!(
        e.message
            .contains("sum does not apply to a column of type string"),
        "{e:?}"
    );
    assert!(Aggregation::new(Function::Last, Some(&s), Params::default()).is_ok());
    let e = Aggregation::new(
        Function::LastN,
        Some(&s),
        Params {
            n: Some(0),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert_eq!(e.field, "n");
    let e = Aggregation::new(
        Function::ApproxPercentile,
        Some(&DType::Float64),
        Params {
            percentile: Some(90.0),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(e.message.contains("0.9 for the 90th"), "{e:?}");
    let e = Aggregation::new(Function::CountStar, Some(&s), Params::default()).unwrap_err();
    assert_eq!(e.field, "column");
    let e = Aggregation::new(
        Function::CountDistinct,
        Some(&s),
        Params {
            max_distinct: Some(1_000_000),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(e.message.contains("approx_count_distinct"), "{e:?}");
    let e = Aggregation::new(
        Function::Sum,
        Some(&DType::Float64),
        Params {
            n: Some(3),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert_eq!(e.field, "n");
}

#[test]
fn integer_sums_are_exact_and_overflow_is_an_error() {
    let agg = Aggregation::new(Function::Sum, Some(&DType::Int64), Params::default()).unwrap();
    assert_eq!(agg.output_dtype(), DType::Int64);
    let mut ir = agg.empty();
    assert_eq!(agg.finalize(&ir).unwrap(), Value::Null);
    for v in [i64::MAX, i64::MAX, -i64::MAX] {
        agg.update(&mut ir, Input::Int(v), Order::default());
    }
    assert_eq!(agg.finalize(&ir).unwrap(), Value::Int64(i64::MAX));
    agg.update(&mut ir, Input::Int(1), Order::default());
    assert!(agg
        .finalize(&ir)
        .unwrap_err()
        .0
        .contains("does not fit int64"));
    // The mean of large integers is the correctly rounded quotient of the exact sum.
    let mean = Aggregation::new(Function::Mean, Some(&DType::Int64), Params::default()).unwrap();
    let mut ir = mean.empty();
    for v in [i64::MAX, i64::MAX] {
        mean.update(&mut ir, Input::Int(v), Order::default());
    }
    assert_eq!(mean.finalize(&ir).unwrap(), Value::Float64(i64::MAX as f64));
}

#[test]
fn empty_windows_have_the_documented_values() {
    for agg in aggregations() {
        let v = agg.finalize(&agg.empty()).unwrap();
        let want = match agg.function() {
            Function::Count
            | Function::CountStar
            | Function::CountDistinct
            | Function::ApproxCountDistinct => Value::Int64(0),
            Function::FirstN | Function::LastN => Value::List(vec![]),
            _ => Value::Null,
        };
        assert_eq!(v, want, "{}", agg.function());
    }
}

#[test]
fn corrupt_or_foreign_tiles_are_errors_not_panics() {
    for agg in aggregations() {
        let mut ir = agg.empty();
        agg.update(&mut ir, Input::Float(2.5), Order::default());
        let mut bytes = Vec::new();
        agg.encode(&ir, &mut bytes);
        assert!(agg.decode(&[]).is_err());
        let mut other = bytes.clone();
        other[0] = IR_VERSION + 1;
        assert!(agg.decode(&other).unwrap_err().0.contains("version"));
        for cut in 1..bytes.len() {
            let _ = agg.decode(&bytes[..cut]); // an error or a shorter IR, never a panic
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(agg.decode(&longer).is_err(), "{}", agg.function());
    }
}

/// Decoding into an IR that held another tile (of this aggregation or of another kind)
/// gives exactly what a fresh decode gives: nothing of the earlier tile stays.
#[test]
fn decoding_into_a_used_ir_equals_a_fresh_decode() {
    let all = aggregations();
    for agg in &all {
        let tile = |xs: &[f64]| {
            let mut ir = agg.empty();
            for (i, &x) in xs.iter().enumerate() {
                let order = Order {
                    event_ts: i as i64,
                    ..Order::default()
                };
                agg.update(&mut ir, Input::Float(x), order);
            }
            let mut bytes = Vec::new();
            agg.encode(&ir, &mut bytes);
            bytes
        };
        let (big, small, none) = (tile(&[1e300, -3.5, 0.25, 7.0]), tile(&[2.5]), tile(&[]));
        for other in &all {
            let mut ir = other.empty();
            let mut b = Vec::new();
            other.update(&mut ir, Input::Float(9.0), Order::default());
            other.encode(&ir, &mut b);
            other.decode_into(&b, &mut ir).unwrap();
            for bytes in [&big, &small, &none, &big] {
                agg.decode_into(bytes, &mut ir).unwrap();
                assert_eq!(
                    ir,
                    agg.decode(bytes).unwrap(),
                    "{} after {}",
                    agg.function(),
                    other.function()
                );
            }
        }
    }
}

/// A reset IR equals a fresh empty one whatever it held, of any aggregation, and
/// updates after it as a fresh one does.
#[test]
fn a_reset_ir_is_an_empty_one() {
    let all = aggregations();
    for agg in &all {
        for other in &all {
            let mut ir = other.empty();
            for x in [1e300, -3.5, 0.25] {
                other.update(&mut ir, Input::Float(x), Order::default());
            }
            agg.reset(&mut ir);
            assert_eq!(
                ir,
                agg.empty(),
                "{} after {}",
                agg.function(),
                other.function()
            );
            let mut fresh = agg.empty();
            agg.update(&mut ir, Input::Float(2.5), Order::default());
            agg.update(&mut fresh, Input::Float(2.5), Order::default());
            assert_eq!(ir, fresh, "{} after {}", agg.function(), other.function());
        }
    }
}

#[test]
fn output_names_follow_one_pattern() {
    let f64t = DType::Float64;
    let sum = Aggregation::new(Function::Sum, Some(&f64t), Params::default()).unwrap();
    assert_eq!(output_name(Some("amount"), &sum, "1h"), "amount_sum_1h");
    let star = Aggregation::new(Function::CountStar, None, Params::default()).unwrap();
    assert_eq!(output_name(None, &star, "5m"), "count_star_5m");
    let p = Aggregation::new(
        Function::ApproxPercentile,
        Some(&f64t),
        Params {
            percentile: Some(0.9),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(output_name(Some("amount"), &p, "7d"), "amount_p90_7d");
    let p = Aggregation::new(
        Function::ApproxPercentile,
        Some(&f64t),
        Params {
            percentile: Some(0.995),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(output_name(Some("amount"), &p, "7d"), "amount_p99_5_7d");
    let l = Aggregation::new(
        Function::LastN,
        Some(&DType::String),
        Params {
            n: Some(5),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        output_name(Some("category"), &l, "7d"),
        "category_last_5_7d"
    );
}
