//! Unit tests of the evaluator: values are checked against the same arithmetic done
//! here in Rust, nulls against SQL rules, and every kind of compile error.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int32Array, Int64Array, StringArray,
};
use arrow::datatypes::{Float32Type, Float64Type, Int32Type, Int64Type};
use quiver_core::model::{OnDemandFeature, OnDemandSource};

use super::*;

/// A view over request source `req` and feature views `stats` and `other`, with one
/// feature per (name, dtype, expr).
fn view(features: &[(&str, &str, &str)]) -> OnDemandFeatureView {
    OnDemandFeatureView {
        name: "ctx".into(),
        sources: vec![
            OnDemandSource::Request("req".into()),
            OnDemandSource::View("stats".into()),
            OnDemandSource::View("other".into()),
        ],
        features: features
            .iter()
            .map(|(n, t, e)| OnDemandFeature {
                name: n.to_string(),
                dtype: DType::parse(t).unwrap(),
                expr: e.to_string(),
                description: String::new(),
                allow_non_finite: false,
            })
            .collect(),
        owner: String::new(),
        description: String::new(),
        tags: Default::default(),
    }
}

/// Request fields `distance_km` (float64), `lat`/`lon` (float64), `n` (int64); view
/// features `stats__conv_rate` (float64), `stats__trips` (int64), `stats__city`
/// (string), `stats__shared` and `other__shared` (float64).
fn inputs() -> Schema {
    Schema::new(vec![
        Field::new("distance_km", DataType::Float64, true),
        Field::new("lat", DataType::Float64, true),
        Field::new("lon", DataType::Float64, true),
        Field::new("n", DataType::Int64, true),
        Field::new("stats__conv_rate", DataType::Float64, true),
        Field::new("stats__trips", DataType::Int64, true),
        Field::new("stats__city", DataType::Utf8, true),
        Field::new("stats__shared", DataType::Float64, true),
        Field::new("other__shared", DataType::Float64, true),
    ])
}

const DIST: [Option<f64>; 4] = [Some(2.5), None, Some(12.0), Some(0.0)];
const CONV: [Option<f64>; 4] = [Some(0.4), Some(0.9), None, Some(0.25)];
const TRIPS: [Option<i64>; 4] = [Some(7), Some(3), Some(-4), None];

fn batch() -> RecordBatch {
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Float64Array::from(DIST.to_vec())),
        Arc::new(Float64Array::from(vec![48.8566, 0.0, 10.0, 1.0])),
        Arc::new(Float64Array::from(vec![2.3522, 0.0, 20.0, 2.0])),
        Arc::new(Int64Array::from(vec![Some(2), Some(0), None, Some(5)])),
        Arc::new(Float64Array::from(CONV.to_vec())),
        Arc::new(Int64Array::from(TRIPS.to_vec())),
        Arc::new(StringArray::from(vec![
            Some("paris"),
            None,
            Some("rome"),
            Some("oslo"),
        ])),
        Arc::new(Float64Array::from(vec![1.0, 2.0, 3.0, 4.0])),
        Arc::new(Float64Array::from(vec![10.0, 20.0, 30.0, 40.0])),
    ];
    RecordBatch::try_new(Arc::new(inputs()), cols).unwrap()
}

fn compile(features: &[(&str, &str, &str)]) -> CompiledOdfv {
    CompiledOdfv::compile(&view(features), &inputs()).unwrap()
}

/// Evaluates one float64 feature over [`batch`].
fn f64s(expr: &str) -> Vec<Option<f64>> {
    let out = compile(&[("f", "float64", expr)])
        .evaluate(&batch())
        .unwrap();
    out[0].as_primitive::<Float64Type>().iter().collect()
}

fn errors(features: &[(&str, &str, &str)]) -> Vec<ExprError> {
    match CompiledOdfv::compile(&view(features), &inputs()) {
        Ok(_) => panic!("compiled: {features:?}"),
        Err(Error::Invalid { errors, .. }) => errors,
        Err(e) => panic!("unexpected error {e}"),
    }
}

fn one_error(expr: &str, dtype: &str) -> ExprError {
    let mut e = errors(&[("f", dtype, expr)]);
    assert_eq!(e.len(), 1, "{e:?}");
    e.remove(0)
}

fn zip_map<A: Copy, B: Copy, R>(
    a: &[Option<A>],
    b: &[Option<B>],
    f: impl Fn(A, B) -> R,
) -> Vec<Option<R>> {
    a.iter()
        .zip(b)
        .map(|(x, y)| match (x, y) {
            (Some(x), Some(y)) => Some(f(*x, *y)),
            _ => None,
        })
        .collect()
}

#[test]
fn arithmetic_over_request_fields_and_bare_feature_names() {
    let want = zip_map(&CONV, &DIST, |c, d| c * d);
    assert_eq!(f64s("conv_rate * distance_km"), want);
    // The full input name means the same column.
    assert_eq!(f64s("stats__conv_rate * distance_km"), want);
    // int64 and float64 mix as float64; nulls propagate.
    assert_eq!(
        f64s("trips * distance_km + 1"),
        zip_map(&TRIPS, &DIST, |t, d| t as f64 * d + 1.0)
    );
    assert_eq!(
        f64s("(distance_km - conv_rate) / 2 % 1"),
        zip_map(&DIST, &CONV, |d, c| ((d - c) / 2.0) % 1.0)
    );
    assert_eq!(
        f64s("-distance_km"),
        DIST.iter().map(|d| d.map(|d| -d)).collect::<Vec<_>>()
    );
    // Integer arithmetic stays integer (7 / 2 = 3) and then becomes the declared type.
    let out = compile(&[
        ("i", "int64", "trips / 2 + n"),
        ("d", "float64", "trips / 2"),
    ])
    .evaluate(&batch())
    .unwrap();
    let i: Vec<Option<i64>> = out[0].as_primitive::<Int64Type>().iter().collect();
    assert_eq!(i, vec![Some(5), Some(1), None, None]);
    let d: Vec<Option<f64>> = out[1].as_primitive::<Float64Type>().iter().collect();
    assert_eq!(d, vec![Some(3.0), Some(1.0), Some(-2.0), None]);
}

#[test]
fn functions_compute_what_rust_computes() {
    let d = |f: fn(f64) -> f64| DIST.iter().map(|x| x.map(f)).collect::<Vec<_>>();
    assert_eq!(f64s("abs(-distance_km)"), d(|x| x.abs()));
    assert_eq!(f64s("sqrt(distance_km)"), d(f64::sqrt));
    assert_eq!(f64s("exp(distance_km)"), d(f64::exp));
    assert_eq!(f64s("ln(distance_km + 1)"), d(|x| (x + 1.0).ln()));
    assert_eq!(f64s("pow(distance_km, 2)"), d(|x| x.powf(2.0)));
    assert_eq!(f64s("power(distance_km, 0.5)"), d(|x| x.powf(0.5)));
    assert_eq!(f64s("floor(distance_km / 5)"), d(|x| (x / 5.0).floor()));
    assert_eq!(f64s("ceil(distance_km / 5)"), d(|x| (x / 5.0).ceil()));
    assert_eq!(f64s("round(distance_km / 5)"), d(|x| (x / 5.0).round()));
    assert_eq!(f64s("round(conv_rate * 7, 2)"), {
        CONV.iter()
            .map(|c| c.map(|c| (c * 7.0 * 100.0).round() / 100.0))
            .collect::<Vec<_>>()
    });
    // least/greatest skip nulls (SQL), mixing int64 and float64.
    assert_eq!(
        f64s("greatest(distance_km, trips)"),
        vec![Some(7.0), Some(3.0), Some(12.0), Some(0.0)]
    );
    assert_eq!(
        f64s("least(distance_km, trips, 1)"),
        vec![Some(1.0), Some(1.0), Some(-4.0), Some(0.0)]
    );
    // Function names are case-insensitive.
    assert_eq!(f64s("ABS(distance_km)"), d(|x| x.abs()));
}

#[test]
fn case_when_and_boolean_logic_follow_sql_null_rules() {
    let out = compile(&[
        (
            "band",
            "string",
            "CASE WHEN distance_km > 10 THEN 'long' WHEN distance_km > 1 THEN 'mid' ELSE 'short' END",
        ),
        ("far_and_keen", "bool", "distance_km > 1 AND conv_rate >= 0.4"),
        ("either", "bool", "distance_km > 100 OR conv_rate IS NULL"),
        ("no_dist", "bool", "distance_km IS NULL"),
        ("in_list", "bool", "trips IN (3, 7) AND NOT (city = 'rome')"),
    ])
    .evaluate(&batch())
    .unwrap();
    let band: Vec<Option<&str>> = out[0].as_string::<i32>().iter().collect();
    // A null distance makes every WHEN unknown: ELSE, as in SQL.
    assert_eq!(
        band,
        vec![Some("mid"), Some("short"), Some("long"), Some("short")]
    );
    let b = |i: usize| out[i].as_boolean().iter().collect::<Vec<_>>();
    // null AND true = null; true AND null = null; false AND x = false.
    assert_eq!(b(1), vec![Some(true), None, None, Some(false)]);
    // false OR true = true; null OR false = null.
    assert_eq!(b(2), vec![Some(false), None, Some(true), Some(false)]);
    assert_eq!(
        b(3),
        vec![Some(false), Some(true), Some(false), Some(false)]
    );
    // city is null in row 1: NOT (null) is null, true AND null is null; trips is null
    // in row 3: null IN (..) is null, null AND true is null.
    assert_eq!(b(4), vec![Some(true), None, Some(false), None]);
}

#[test]
fn coalesce_replaces_nulls_only_when_asked_and_stays_null_otherwise() {
    assert_eq!(
        f64s("coalesce(conv_rate, distance_km)"),
        vec![Some(0.4), Some(0.9), Some(12.0), Some(0.25)]
    );
    // Both null in no row here, so build one where they are.
    let out = compile(&[("c", "float64", "coalesce(conv_rate, distance_km)")]);
    let b = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("distance_km", DataType::Float64, true),
            Field::new("stats__conv_rate", DataType::Float64, true),
        ])),
        vec![
            Arc::new(Float64Array::from(vec![None, Some(1.0)])),
            Arc::new(Float64Array::from(vec![None, None])),
        ],
    )
    .unwrap();
    let c = out.evaluate(&b).unwrap();
    assert_eq!(
        c[0].as_primitive::<Float64Type>()
            .iter()
            .collect::<Vec<_>>(),
        vec![None, Some(1.0)]
    );
    // Mixed int64 / float64 arguments are coerced to a common type.
    assert_eq!(
        f64s("coalesce(trips, conv_rate)"),
        vec![Some(7.0), Some(3.0), Some(-4.0), Some(0.25)]
    );
    // nullif turns a zero divisor into null instead of an error.
    let out = compile(&[("r", "float64", "trips / nullif(n, 0)")])
        .evaluate(&batch())
        .unwrap();
    assert_eq!(
        out[0]
            .as_primitive::<Float64Type>()
            .iter()
            .collect::<Vec<_>>(),
        vec![Some(3.0), None, None, None]
    );
}

#[test]
fn haversine_km_paris_london_and_nulls() {
    // Paris (48.8566, 2.3522) to London (51.5074, -0.1278): about 343.5 km.
    let out = compile(&[("d", "float64", "haversine_km(lat, lon, 51.5074, -0.1278)")])
        .evaluate(&batch())
        .unwrap();
    let d = out[0].as_primitive::<Float64Type>();
    assert!((d.value(0) - 343.5).abs() < 0.5, "{}", d.value(0));
    assert_eq!(d.value(0), haversine_km(48.8566, 2.3522, 51.5074, -0.1278));
    // Integer arguments are widened; a null argument gives null.
    let out = compile(&[("d", "float64", "haversine_km(0, 0, 0, trips)")])
        .evaluate(&batch())
        .unwrap();
    let d = out[0].as_primitive::<Float64Type>();
    let one_degree = EARTH_RADIUS_KM * std::f64::consts::PI / 180.0;
    assert!((d.value(0) - 7.0 * one_degree).abs() < 1e-9);
    assert!(d.is_null(3));
    assert_eq!(d.null_count(), 1);
}

#[test]
fn results_are_cast_to_the_declared_dtype() {
    let out = compile(&[
        ("r", "int64", "round(distance_km)"),
        ("f32", "float32", "conv_rate * 2"),
        ("i32", "int32", "trips"),
        ("s", "string", "trips"),
        ("b2f", "float64", "distance_km > 1"),
        ("explicit", "float64", "CAST(trips AS DOUBLE) / 2"),
        ("parsed", "float64", "CAST('1.25' AS DOUBLE) + distance_km"),
    ])
    .evaluate(&batch())
    .unwrap();
    assert_eq!(out[0].data_type(), &DataType::Int64);
    assert_eq!(
        out[0]
            .as_primitive::<Int64Type>()
            .iter()
            .collect::<Vec<_>>(),
        vec![Some(3), None, Some(12), Some(0)]
    );
    assert_eq!(out[1].as_primitive::<Float32Type>().value(0), 0.8f32);
    assert!(out[1].is_null(2));
    assert_eq!(
        out[2]
            .as_primitive::<Int32Type>()
            .iter()
            .collect::<Vec<_>>(),
        vec![Some(7), Some(3), Some(-4), None]
    );
    assert_eq!(
        out[3].as_string::<i32>().iter().collect::<Vec<_>>(),
        vec![Some("7"), Some("3"), Some("-4"), None]
    );
    assert_eq!(
        out[4]
            .as_primitive::<Float64Type>()
            .iter()
            .collect::<Vec<_>>(),
        vec![Some(1.0), None, Some(1.0), Some(0.0)]
    );
    assert_eq!(
        out[5]
            .as_primitive::<Float64Type>()
            .iter()
            .collect::<Vec<_>>(),
        vec![Some(3.5), Some(1.5), Some(-2.0), None]
    );
    assert_eq!(out[6].as_primitive::<Float64Type>().value(0), 3.75);
}

#[test]
fn a_value_that_does_not_fit_the_dtype_is_an_invalid_row_not_a_wrong_value() {
    // DIST = [2.5, null, 12.0, 0.0]: rows 0 and 2 do not fit int32; row 1 is null (a
    // null input), row 3 fits.
    let odfv = compile(&[("big", "int32", "distance_km * 1e12")]);
    let out = odfv.evaluate_reporting(&batch()).unwrap();
    let big = out.columns[0].as_primitive::<Int32Type>();
    assert_eq!(
        big.iter().collect::<Vec<_>>(),
        vec![None, None, None, Some(0)]
    );
    assert_eq!(out.invalid[0].rows, vec![0, 2]);
    let why = out.invalid[0].first_reason.as_deref().unwrap();
    assert!(why.starts_with("row 0: ") && why.contains("Int32"), "{why}");

    // Integer division by zero fails its row alone: trips / n with n = [2, 0, null, 5].
    let odfv = compile(&[("q", "int64", "trips / n")]);
    let out = odfv.evaluate_reporting(&batch()).unwrap();
    let q = out.columns[0].as_primitive::<Int64Type>();
    assert_eq!(
        q.iter().collect::<Vec<_>>(),
        vec![Some(3), None, None, None]
    );
    assert_eq!(out.invalid[0].rows, vec![1]);
    let why = out.invalid[0].first_reason.as_deref().unwrap();
    assert!(why.to_lowercase().contains("divide by zero"), "{why}");
}

#[test]
fn integer_overflow_is_an_invalid_row_never_a_wrapped_value() {
    // n = [2, 0, null, 5]; 2^62 * n overflows int64 for 2 and 5 (DataFusion wraps by
    // default: 2^62 * 2 would be served as i64::MIN).
    let odfv = compile(&[
        ("m", "int64", "n * 4611686018427387904"),
        ("s", "int64", "n + 9223372036854775806"),
        ("neg", "int64", "-(n - 9223372036854775807 - 1)"),
        ("ok", "int64", "n * 2"),
    ]);
    let out = odfv.evaluate_reporting(&batch()).unwrap();
    let col = |i: usize| {
        out.columns[i]
            .as_primitive::<Int64Type>()
            .iter()
            .collect::<Vec<_>>()
    };
    assert_eq!(col(0), vec![None, Some(0), None, None]);
    assert_eq!(out.invalid[0].rows, vec![0, 3]);
    assert_eq!(col(1), vec![None, Some(i64::MAX - 1), None, None]);
    assert_eq!(out.invalid[1].rows, vec![0, 3]);
    // n - 2^63 is i64::MIN for n = 0; its negation overflows.
    assert_eq!(out.invalid[2].rows, vec![1], "{:?}", col(2));
    assert_eq!(col(3), vec![Some(4), Some(0), None, Some(10)]);
    assert!(out.invalid[3].rows.is_empty());
}

#[test]
fn non_finite_results_are_invalid_unless_the_feature_allows_them() {
    // distance_km = [2.5, null, 12.0, 0.0]; ln(0) = -inf, x / 0.0 = inf, sqrt(-x) = NaN.
    let mut def = view(&[
        ("l", "float64", "ln(distance_km)"),
        ("r", "float64", "1.0 / distance_km"),
        ("q", "float32", "sqrt(0.0 - distance_km)"),
        ("kept", "float64", "ln(distance_km)"),
    ]);
    def.features[3].allow_non_finite = true;
    let out = CompiledOdfv::compile(&def, &inputs())
        .unwrap()
        .evaluate_reporting(&batch())
        .unwrap();
    let l = out.columns[0].as_primitive::<Float64Type>();
    assert_eq!(l.value(0), 2.5f64.ln());
    assert!(l.is_null(3));
    assert_eq!(out.invalid[0].rows, vec![3]);
    assert!(
        out.invalid[0]
            .first_reason
            .as_deref()
            .unwrap()
            .contains("-inf"),
        "{:?}",
        out.invalid[0]
    );
    assert_eq!(out.invalid[1].rows, vec![3]);
    // sqrt of a negative number: rows 0 and 2; sqrt(-0.0) is -0.0, a number.
    assert_eq!(out.invalid[2].rows, vec![0, 2]);
    assert_eq!(out.columns[2].as_primitive::<Float32Type>().value(3), 0.0);
    let kept = out.columns[3].as_primitive::<Float64Type>();
    assert_eq!(kept.value(3), f64::NEG_INFINITY);
    assert!(out.invalid[3].rows.is_empty());
}

#[test]
fn many_failing_rows_among_many_good_ones_are_each_found() {
    // 10,000 rows, every 997th with n = 0.
    let n: Vec<Option<i64>> = (0..10_000)
        .map(|i| Some(if i % 997 == 0 { 0 } else { i }))
        .collect();
    let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, true)]));
    let b = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(n))]).unwrap();
    let out = compile(&[("q", "int64", "100000 / n")])
        .evaluate_reporting(&b)
        .unwrap();
    let want: Vec<usize> = (0..10_000).filter(|i| i % 997 == 0).collect();
    assert_eq!(out.invalid[0].rows, want);
    let q = out.columns[0].as_primitive::<Int64Type>();
    assert_eq!(q.len(), 10_000);
    assert_eq!(q.value(1), 100_000);
    assert_eq!(q.value(9_999), 100_000 / 9_999);
    assert_eq!(q.null_count(), want.len());
}

#[test]
fn only_the_columns_read_are_inputs_and_batches_are_matched_by_name() {
    let odfv = compile(&[
        ("a", "float64", "conv_rate * 2"),
        ("b", "float64", "distance_km"),
    ]);
    assert_eq!(odfv.input_columns(), ["distance_km", "stats__conv_rate"]);
    assert_eq!(odfv.output_schema().field(1).name(), "b");
    // A batch with just those columns, in another order, and an int32 widened input.
    let b = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("stats__conv_rate", DataType::Float64, true),
            Field::new("extra", DataType::Utf8, true),
            Field::new("distance_km", DataType::Int32, true),
        ])),
        vec![
            Arc::new(Float64Array::from(vec![0.5])),
            Arc::new(StringArray::from(vec!["x"])),
            Arc::new(Int32Array::from(vec![3])),
        ],
    )
    .unwrap();
    let out = odfv.evaluate_batch(&b).unwrap();
    assert_eq!(out.num_rows(), 1);
    assert_eq!(out.column(0).as_primitive::<Float64Type>().value(0), 1.0);
    assert_eq!(out.column(1).as_primitive::<Float64Type>().value(0), 3.0);
    // A missing column and a narrowing type are errors that name the column.
    let missing = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new(
            "distance_km",
            DataType::Float64,
            true,
        )])),
        vec![Arc::new(Float64Array::from(vec![1.0]))],
    )
    .unwrap();
    let e = odfv.evaluate(&missing).unwrap_err().to_string();
    assert!(
        e.contains("no column 'stats__conv_rate'") && e.contains("distance_km"),
        "{e}"
    );
    let wrong = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("distance_km", DataType::Utf8, true),
            Field::new("stats__conv_rate", DataType::Float64, true),
        ])),
        vec![
            Arc::new(StringArray::from(vec!["1"])),
            Arc::new(Float64Array::from(vec![1.0])),
        ],
    )
    .unwrap();
    let e = odfv.evaluate(&wrong).unwrap_err().to_string();
    assert!(e.contains("'distance_km' is Utf8, expected Float64"), "{e}");
}

#[test]
fn constant_expressions_fill_every_row() {
    let out = compile(&[("k", "int64", "1 + 2"), ("z", "float64", "NULL")])
        .evaluate(&batch())
        .unwrap();
    assert_eq!(out[0].len(), 4);
    assert!(out[0]
        .as_primitive::<Int64Type>()
        .values()
        .iter()
        .all(|v| *v == 3));
    assert_eq!(out[1].null_count(), 4);
    let odfv = compile(&[("k", "int64", "7")]);
    assert!(odfv.input_columns().is_empty());
    let empty = RecordBatch::try_new_with_options(
        Arc::new(Schema::empty()),
        vec![],
        &RecordBatchOptions::new().with_row_count(Some(3)),
    )
    .unwrap();
    assert_eq!(odfv.evaluate(&empty).unwrap()[0].len(), 3);
    let b: BooleanArray = compile(&[("t", "bool", "TRUE")]).evaluate(&empty).unwrap()[0]
        .as_boolean()
        .clone();
    assert_eq!(b.true_count(), 3);
}

#[test]
fn syntax_errors_are_reported_per_feature() {
    let e = errors(&[
        ("ok", "float64", "conv_rate"),
        ("bad", "float64", "conv_rate *"),
        ("worse", "float64", "(distance_km"),
        ("trailing", "float64", "distance_km distance_km"),
        ("empty", "float64", "  "),
    ]);
    let kinds: Vec<(&str, ExprErrorKind)> =
        e.iter().map(|e| (e.feature.as_str(), e.kind)).collect();
    assert_eq!(
        kinds,
        vec![
            ("bad", ExprErrorKind::Syntax),
            ("worse", ExprErrorKind::Syntax),
            ("trailing", ExprErrorKind::Syntax),
            ("empty", ExprErrorKind::Syntax),
        ]
    );
    assert!(e[0].message.contains("conv_rate *"), "{}", e[0].message);
    assert!(e.iter().all(|e| e.field == "expr"));
}

#[test]
fn unknown_and_ambiguous_names_are_explained() {
    let e = one_error("conv_rat * distance_km", "float64");
    assert_eq!(e.kind, ExprErrorKind::UnknownColumn);
    assert!(
        e.message.contains("unknown column 'conv_rat'"),
        "{}",
        e.message
    );
    assert!(
        e.message.contains("did you mean 'conv_rate'"),
        "{}",
        e.message
    );
    assert!(e.message.contains("inputs: distance_km, lat, lon, n, conv_rate, trips, city, stats__shared, other__shared"), "{}", e.message);
    // `shared` is a feature of two views: ambiguous; the full names work.
    let e = one_error("shared + 1", "float64");
    assert_eq!(e.kind, ExprErrorKind::AmbiguousColumn);
    assert!(
        e.message
            .contains("feature view 'stats' and feature view 'other'")
            && e.message.contains("stats__shared or other__shared"),
        "{}",
        e.message
    );
    assert_eq!(
        f64s("stats__shared + other__shared"),
        vec![Some(11.0), Some(22.0), Some(33.0), Some(44.0)]
    );
    // Qualified names point to the `view__feature` form.
    let e = one_error("stats.conv_rate", "float64");
    assert_eq!(e.kind, ExprErrorKind::UnknownColumn);
    assert!(e.message.contains("stats__conv_rate"), "{}", e.message);
    // Names are case-sensitive.
    let e = one_error("Conv_Rate", "float64");
    assert_eq!(e.kind, ExprErrorKind::UnknownColumn);
}

#[test]
fn unknown_functions_and_unsupported_constructs_are_rejected() {
    let e = one_error("sqr(distance_km)", "float64");
    assert_eq!(e.kind, ExprErrorKind::UnknownFunction);
    assert!(
        e.message.contains("unknown function 'sqr'"),
        "{}",
        e.message
    );
    assert!(e.message.contains("did you mean 'sqrt'"), "{}", e.message);
    assert!(e.message.contains("haversine_km"), "{}", e.message);
    // Aggregates are not functions of a row.
    assert_eq!(
        one_error("sum(distance_km)", "float64").kind,
        ExprErrorKind::UnknownFunction
    );
    assert_eq!(
        one_error("distance_km AS d", "float64").kind,
        ExprErrorKind::Unsupported
    );
    assert_eq!(
        one_error("(SELECT 1)", "float64").kind,
        ExprErrorKind::Unsupported
    );
}

#[test]
fn type_errors_are_found_at_compile_time() {
    for expr in [
        "conv_rate + 'abc'",
        "abs(city)",
        "haversine_km(city, 1, 2, 3)",
        "NOT distance_km",
        "distance_km + TRUE",
        "distance_km AND conv_rate",
        "pow(city, 2)",
    ] {
        let e = one_error(expr, "float64");
        assert!(
            matches!(
                e.kind,
                ExprErrorKind::Type | ExprErrorKind::Cast | ExprErrorKind::Unsupported
            ),
            "{expr}: {e:?}"
        );
        assert_eq!(e.kind, ExprErrorKind::Type, "{expr}: {}", e.message);
        assert!(!e.message.is_empty());
    }
}

#[test]
fn results_that_cannot_be_stored_as_the_dtype_are_rejected() {
    let e = one_error("city", "float64");
    assert_eq!(e.kind, ExprErrorKind::Cast);
    assert_eq!(e.field, "dtype");
    assert!(
        e.message.contains("is string")
            && e.message.contains("declared float64")
            && e.message.contains("CAST"),
        "{}",
        e.message
    );
    let e = one_error("distance_km * 2", "bool");
    assert_eq!(e.kind, ExprErrorKind::Cast);
    assert!(
        e.message.contains("float64") && e.message.contains("bool"),
        "{}",
        e.message
    );
    assert_eq!(
        one_error("distance_km > 1", "timestamp").kind,
        ExprErrorKind::Cast
    );
    assert!(castable(&DataType::Int64, &DataType::Float32));
    assert!(castable(&DataType::Null, &DataType::Boolean));
    assert!(!castable(&DataType::Utf8, &DataType::Int64));
}

#[test]
fn duplicate_input_columns_and_feature_names_are_errors() {
    let dup = Schema::new(vec![
        Field::new("x", DataType::Float64, true),
        Field::new("x", DataType::Float64, true),
    ]);
    let e = CompiledOdfv::compile(&view(&[("f", "float64", "1")]), &dup).unwrap_err();
    assert!(e.to_string().contains("'x' appears twice"), "{e}");
    let e = errors(&[("f", "float64", "1"), ("f", "float64", "2")]);
    assert_eq!(e[0].field, "name");
}

#[test]
fn compiled_views_are_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<CompiledOdfv>();
    let odfv = compile(&[("f", "float64", "conv_rate * distance_km")]);
    let b = batch();
    let results: Vec<Vec<Option<f64>>> = std::thread::scope(|s| {
        (0..3)
            .map(|_| {
                let (o, b) = (odfv.clone(), &b);
                s.spawn(move || {
                    o.evaluate(b).unwrap()[0]
                        .as_primitive::<Float64Type>()
                        .iter()
                        .collect()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect()
    });
    assert!(results
        .iter()
        .all(|r| r == &zip_map(&CONV, &DIST, |c, d| c * d)));
}

/// `conv_rate + conv_rate + …` with `terms` terms: a tree as deep as it is long.
fn chain(terms: usize) -> String {
    vec!["conv_rate"; terms].join(" + ")
}

#[test]
fn expressions_beyond_the_token_bound_are_rejected_not_a_stack_overflow() {
    for terms in [800, 3_000, 50_000] {
        let e = one_error(&chain(terms), "float64");
        assert_eq!(e.kind, ExprErrorKind::TooLarge, "{terms} terms");
        assert!(
            e.message.contains(&format!("{} tokens", 2 * terms - 1))
                && e.message.contains(&MAX_EXPR_TOKENS.to_string()),
            "{}",
            e.message
        );
    }
}

#[test]
fn the_largest_expression_allowed_compiles_and_evaluates_on_a_small_stack() {
    // The deepest tree the bound admits, on a thread with a tokio worker's 2 MiB stack
    // and this unoptimized test build's larger frames: compiling, evaluating and
    // dropping it must fit.
    let terms = MAX_EXPR_TOKENS.div_ceil(2);
    let expr = chain(terms);
    let got = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || {
            let odfv = compile(&[("f", "float64", &expr)]);
            let out = odfv.evaluate(&batch()).unwrap();
            out[0]
                .as_primitive::<Float64Type>()
                .iter()
                .collect::<Vec<_>>()
        })
        .unwrap()
        .join()
        .expect("no stack overflow");
    let want: Vec<Option<f64>> = CONV.iter().map(|c| c.map(|c| c * terms as f64)).collect();
    for (g, w) in got.iter().zip(&want) {
        match (g, w) {
            (Some(g), Some(w)) => assert!((g - w).abs() <= 1e-9 * w.abs().max(1.0), "{g} {w}"),
            _ => assert_eq!(g, w),
        }
    }
}
