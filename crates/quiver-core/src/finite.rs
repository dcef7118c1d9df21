//! The one rule for non-finite and out-of-range numbers, the same on every path.
//!
//! * A stored float feature (`float32`, `float64`, a list of them) holds finite numbers
//!   or null. A NaN or ±infinity in a source file, a push or a stream event is rejected
//!   with the file (or request), row and column, unless the feature declares
//!   `allow_non_finite: true`; then it is stored, trained on and served as given.
//! * A number narrowed to `float32` (a float64 pushed or sent for a float32 field) must
//!   fit: `1e300` is an error, never a silent infinity.
//! * An on-demand feature whose expression fails on one row (integer overflow, integer
//!   division by zero, a result that does not fit its declared type) or gives a
//!   non-finite float (the square root of a negative number, `ln(0)`, `x / 0.0`) where
//!   the feature does not allow it is null on that row, with status `INVALID` online;
//!   the other rows are unaffected. Offline and online compute it by the same evaluator.
//! * In JSON, where a number cannot be non-finite, an allowed non-finite value is written
//!   as the string `"NaN"`, `"Infinity"` or `"-Infinity"` (the protobuf JSON mapping), so
//!   it is never mistaken for a missing value.

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Float32Type, Float64Type};

/// The JSON name of a non-finite float (`"NaN"`, `"Infinity"`, `"-Infinity"`), or `None`
/// for a finite one.
pub fn non_finite_name(x: f64) -> Option<&'static str> {
    if x.is_nan() {
        Some("NaN")
    } else if x == f64::INFINITY {
        Some("Infinity")
    } else if x == f64::NEG_INFINITY {
        Some("-Infinity")
    } else {
        None
    }
}

/// The float a JSON name of [`non_finite_name`] stands for.
pub fn non_finite_from_name(s: &str) -> Option<f64> {
    match s {
        "NaN" => Some(f64::NAN),
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        _ => None,
    }
}

/// `x` as a float32, or `None` when it is finite but beyond float32's range.
pub fn narrow_to_f32(x: f64) -> Option<f32> {
    let y = x as f32;
    (y.is_finite() || !x.is_finite()).then_some(y)
}

/// Whether arrays of `dtype` can hold non-finite values (floats and lists of floats).
pub fn holds_floats(dtype: &DataType) -> bool {
    match dtype {
        DataType::Float32 | DataType::Float64 => true,
        DataType::List(f) | DataType::LargeList(f) => holds_floats(f.data_type()),
        _ => false,
    }
}

/// Calls `f(row, value)` for every non-null row of `array` that holds a non-finite
/// float (for a list, the row's first non-finite item), in row order, until `f`
/// returns `false`. Arrays of other types have none.
pub fn for_each_non_finite(array: &dyn Array, mut f: impl FnMut(usize, f64) -> bool) {
    visit(array, &mut f);
}

fn visit(array: &dyn Array, f: &mut dyn FnMut(usize, f64) -> bool) -> bool {
    fn scan<T: Copy + Into<f64>>(
        values: &[T],
        array: &dyn Array,
        f: &mut dyn FnMut(usize, f64) -> bool,
    ) -> bool {
        for (i, v) in values.iter().enumerate() {
            let x: f64 = (*v).into();
            if !x.is_finite() && array.is_valid(i) && !f(i, x) {
                return false;
            }
        }
        true
    }
    match array.data_type() {
        DataType::Float32 => scan(array.as_primitive::<Float32Type>().values(), array, f),
        DataType::Float64 => scan(array.as_primitive::<Float64Type>().values(), array, f),
        DataType::List(_) => {
            let list = array.as_list::<i32>();
            if !holds_floats(&list.value_type()) {
                return true;
            }
            let offsets = list.value_offsets();
            let mut last_row = usize::MAX;
            let mut go = true;
            visit(list.values().as_ref(), &mut |item, x| {
                // The row whose items include `item` (offsets are non-decreasing).
                let row = offsets.partition_point(|&o| (o as usize) <= item) - 1;
                if row < list.len() && row != last_row && list.is_valid(row) {
                    last_row = row;
                    go = f(row, x);
                }
                go
            });
            go
        }
        _ => true,
    }
}

/// The first non-null row of `array` holding a non-finite float, with the value.
pub fn first_non_finite(array: &dyn Array) -> Option<(usize, f64)> {
    let mut found = None;
    for_each_non_finite(array, |row, x| {
        found = Some((row, x));
        false
    });
    found
}

/// The first row where `narrowed` (a float32 cast of `source`) is infinite though the
/// source value was finite: a number beyond float32's range. Both arrays have the same
/// length; `source` holds floats or integers.
pub fn first_overflow_to_f32(source: &dyn Array, narrowed: &dyn Array) -> Option<(usize, f64)> {
    let mut found = None;
    for_each_non_finite(narrowed, |row, _| {
        let was = match source.data_type() {
            DataType::Float64 => source.as_primitive::<Float64Type>().value(row),
            _ => return true,
        };
        if was.is_finite() {
            found = Some((row, was));
            return false;
        }
        true
    });
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float32Array, Float64Array, ListArray};
    use arrow::datatypes::Float64Type;

    #[test]
    fn non_finite_values_have_json_names() {
        assert_eq!(non_finite_name(f64::NAN), Some("NaN"));
        assert_eq!(non_finite_name(f64::INFINITY), Some("Infinity"));
        assert_eq!(non_finite_name(f64::NEG_INFINITY), Some("-Infinity"));
        assert_eq!(non_finite_name(1.5), None);
    }

    #[test]
    fn narrowing_to_f32_rejects_finite_numbers_beyond_its_range() {
        assert_eq!(narrow_to_f32(0.1), Some(0.1f32));
        assert_eq!(narrow_to_f32(1e300), None);
        assert_eq!(narrow_to_f32(-1e39), None);
        assert!(narrow_to_f32(f64::NAN).unwrap().is_nan());
        assert_eq!(narrow_to_f32(f64::INFINITY), Some(f32::INFINITY));
    }

    #[test]
    fn non_finite_rows_skip_nulls_and_find_list_items() {
        // A null slot whose buffer holds NaN is not a value.
        let a = Float64Array::new(
            vec![1.0, f64::NAN, f64::INFINITY, 2.0].into(),
            Some(vec![true, false, true, true].into()),
        );
        assert_eq!(first_non_finite(&a), Some((2, f64::INFINITY)));
        let b = Float32Array::from(vec![Some(1.0), None, Some(3.0)]);
        assert_eq!(first_non_finite(&b), None);

        let l = ListArray::from_iter_primitive::<Float64Type, _, _>(vec![
            Some(vec![Some(1.0), Some(2.0)]),
            None,
            Some(vec![]),
            Some(vec![Some(f64::NAN), Some(f64::NEG_INFINITY)]),
            Some(vec![Some(f64::INFINITY)]),
        ]);
        let mut rows = Vec::new();
        for_each_non_finite(&l, |r, _| {
            rows.push(r);
            true
        });
        assert_eq!(rows, vec![3, 4]);
    }

    #[test]
    fn overflow_to_f32_is_told_from_a_non_finite_source() {
        let src = Float64Array::from(vec![Some(1.0), Some(f64::INFINITY), Some(1e300)]);
        let narrowed = arrow::compute::cast(&src, &DataType::Float32).unwrap();
        assert_eq!(
            first_overflow_to_f32(&src, narrowed.as_ref()),
            Some((2, 1e300))
        );
    }
}
