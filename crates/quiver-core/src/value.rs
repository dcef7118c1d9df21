//! A typed scalar, used where one value at a time crosses an interface: online
//! results, entity keys typed on a command line or in a request.

use serde::{Serialize, Serializer};

use crate::dtype::DType;
use crate::finite::{narrow_to_f32, non_finite_from_name, non_finite_name};
use crate::time::{format_timestamp, parse_timestamp, Timestamp};
use crate::{Error, Result};

/// One feature or key value. `Null` is a missing value and is never turned into zero.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int32(i32),
    Int64(i64),
    Float32(f32),
    Float64(f64),
    String(String),
    Bytes(Vec<u8>),
    Timestamp(Timestamp),
    List(Vec<Value>),
}

impl Value {
    /// Whether this is `Null`.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// Parses text (a command-line argument) as a value of `dtype`.
    pub fn parse_as(s: &str, dtype: &DType) -> Result<Value> {
        let bad = || Error::Type(format!("{s:?} is not a valid {dtype}"));
        Ok(match dtype {
            DType::Bool => Value::Bool(s.parse().map_err(|_| bad())?),
            DType::Int32 => Value::Int32(s.trim().parse().map_err(|_| bad())?),
            DType::Int64 => Value::Int64(s.trim().parse().map_err(|_| bad())?),
            DType::Float32 => Value::Float32(s.trim().parse().map_err(|_| bad())?),
            DType::Float64 => Value::Float64(s.trim().parse().map_err(|_| bad())?),
            DType::String => Value::String(s.to_string()),
            DType::Bytes => Value::Bytes(s.as_bytes().to_vec()),
            DType::Timestamp => Value::Timestamp(parse_timestamp(s)?),
            DType::List(inner) => {
                let body = s
                    .trim()
                    .strip_prefix('[')
                    .and_then(|r| r.strip_suffix(']'))
                    .ok_or_else(bad)?;
                if body.trim().is_empty() {
                    Value::List(vec![])
                } else {
                    Value::List(
                        body.split(',')
                            .map(|p| Value::parse_as(p, inner))
                            .collect::<Result<_>>()?,
                    )
                }
            }
        })
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::Bool(v) => write!(f, "{v}"),
            Value::Int32(v) => write!(f, "{v}"),
            Value::Int64(v) => write!(f, "{v}"),
            Value::Float32(v) => write!(f, "{v}"),
            Value::Float64(v) => write!(f, "{v}"),
            Value::String(v) => f.write_str(v),
            Value::Bytes(v) => {
                for b in v {
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
            Value::Timestamp(v) => f.write_str(&format_timestamp(*v)),
            Value::List(items) => {
                f.write_str("[")?;
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{v}")?;
                }
                f.write_str("]")
            }
        }
    }
}

/// JSON form: numbers, strings, lists and null; bytes as a hex string, timestamps as
/// RFC 3339 strings; non-finite floats as the strings `"NaN"`, `"Infinity"`,
/// `"-Infinity"` ([`crate::finite`]), never as null, which means missing.
impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Value::Null => s.serialize_none(),
            Value::Bool(v) => s.serialize_bool(*v),
            Value::Int32(v) => s.serialize_i32(*v),
            Value::Int64(v) => s.serialize_i64(*v),
            Value::Float32(v) => match non_finite_name(*v as f64) {
                Some(name) => s.serialize_str(name),
                None => s.serialize_f32(*v),
            },
            Value::Float64(v) => match non_finite_name(*v) {
                Some(name) => s.serialize_str(name),
                None => s.serialize_f64(*v),
            },
            Value::String(v) => s.serialize_str(v),
            Value::Bytes(_) | Value::Timestamp(_) => s.serialize_str(&self.to_string()),
            Value::List(items) => items.serialize(s),
        }
    }
}

/// Builds an Arrow array of `dtype` (in its storage form, [`DType::to_arrow`]) from
/// values, as they arrive in a request: nulls stay null, integers widen to floats,
/// integers narrow to int32 only when they fit, float64 narrows to float32 when it is
/// within float32's range ([`crate::finite`]), the strings `"NaN"`, `"Infinity"` and
/// `"-Infinity"` are those floats (whether they may be stored is the writer's check), and
/// timestamps may be given as RFC 3339 strings. Anything else is an error naming the
/// (0-based) row and what was found.
pub fn values_to_array(values: &[Value], dtype: &DType) -> Result<arrow::array::ArrayRef> {
    use arrow::array::*;
    use std::sync::Arc;
    let bad = |row: usize, v: &Value| {
        Error::Type(format!(
            "row {row}: expected {dtype}, got {}",
            match v {
                Value::String(s) => format!("the string {s:?}"),
                Value::List(_) => "a list".to_string(),
                other => format!("{other:?}"),
            }
        ))
    };
    macro_rules! build {
        ($builder:expr, |$v:ident| $conv:expr) => {{
            let mut b = $builder;
            for (row, $v) in values.iter().enumerate() {
                if $v.is_null() {
                    b.append_null();
                } else {
                    match $conv {
                        Some(x) => b.append_value(x),
                        None => return Err(bad(row, $v)),
                    }
                }
            }
            Arc::new(b.finish()) as ArrayRef
        }};
    }
    let n = values.len();
    if *dtype == DType::Float32 {
        for (row, v) in values.iter().enumerate() {
            if let Value::Float64(x) = v {
                if narrow_to_f32(*x).is_none() {
                    return Err(Error::Type(format!(
                        "row {row}: {x:e} is beyond the range of float32 (±3.4e38)"
                    )));
                }
            }
        }
    }
    Ok(match dtype {
        DType::Bool => build!(BooleanBuilder::with_capacity(n), |v| match v {
            Value::Bool(b) => Some(*b),
            _ => None,
        }),
        DType::Int32 => build!(Int32Builder::with_capacity(n), |v| match v {
            Value::Int32(i) => Some(*i),
            Value::Int64(i) => i32::try_from(*i).ok(),
            _ => None,
        }),
        DType::Int64 => build!(Int64Builder::with_capacity(n), |v| match v {
            Value::Int32(i) => Some(*i as i64),
            Value::Int64(i) => Some(*i),
            _ => None,
        }),
        DType::Float32 => build!(Float32Builder::with_capacity(n), |v| match v {
            Value::Float32(x) => Some(*x),
            Value::Float64(x) => Some(*x as f32),
            Value::Int32(i) => Some(*i as f32),
            Value::Int64(i) => Some(*i as f32),
            Value::String(s) => non_finite_from_name(s).map(|x| x as f32),
            _ => None,
        }),
        DType::Float64 => build!(Float64Builder::with_capacity(n), |v| match v {
            Value::Float32(x) => Some(*x as f64),
            Value::Float64(x) => Some(*x),
            Value::Int32(i) => Some(*i as f64),
            Value::Int64(i) => Some(*i as f64),
            Value::String(s) => non_finite_from_name(s),
            _ => None,
        }),
        DType::String => build!(StringBuilder::with_capacity(n, n * 8), |v| match v {
            Value::String(s) => Some(s.as_str()),
            _ => None,
        }),
        DType::Bytes => build!(BinaryBuilder::with_capacity(n, n * 8), |v| match v {
            Value::Bytes(b) => Some(b.as_slice()),
            Value::String(s) => Some(s.as_bytes()),
            _ => None,
        }),
        DType::Timestamp => {
            let mut out = Vec::with_capacity(n);
            for (row, v) in values.iter().enumerate() {
                out.push(match v {
                    Value::Null => None,
                    Value::Timestamp(t) => Some(*t),
                    Value::String(s) => Some(
                        parse_timestamp(s).map_err(|e| Error::Type(format!("row {row}: {e}")))?,
                    ),
                    other => return Err(bad(row, other)),
                });
            }
            Arc::new(TimestampMicrosecondArray::from(out).with_timezone("UTC")) as ArrayRef
        }
        DType::List(inner) => {
            let mut offsets = Vec::with_capacity(n + 1);
            offsets.push(0i32);
            let mut flat: Vec<Value> = Vec::new();
            let mut valid = Vec::with_capacity(n);
            for (row, v) in values.iter().enumerate() {
                match v {
                    Value::Null => valid.push(false),
                    Value::List(items) => {
                        flat.extend(items.iter().cloned());
                        valid.push(true);
                    }
                    other => return Err(bad(row, other)),
                }
                offsets.push(flat.len() as i32);
            }
            let items = values_to_array(&flat, inner)
                .map_err(|e| Error::Type(format!("list element: {e}")))?;
            let field = Arc::new(arrow::datatypes::Field::new(
                "element",
                inner.to_arrow(),
                true,
            ));
            Arc::new(ListArray::try_new(
                field,
                arrow::buffer::OffsetBuffer::new(offsets.into()),
                items,
                Some(valid.into()),
            )?) as ArrayRef
        }
    })
}

/// The value at `row` of an array in a storage form ([`DType::to_arrow`]; other integer
/// and float widths are widened); an unsupported type is an error.
pub fn value_at(array: &dyn arrow::array::Array, row: usize) -> Result<Value> {
    use arrow::array::AsArray;
    use arrow::datatypes::{DataType, Float32Type, Float64Type, Int32Type, Int64Type};
    if array.is_null(row) {
        return Ok(Value::Null);
    }
    Ok(match array.data_type() {
        DataType::Boolean => Value::Bool(array.as_boolean().value(row)),
        DataType::Int32 => Value::Int32(array.as_primitive::<Int32Type>().value(row)),
        DataType::Int64 => Value::Int64(array.as_primitive::<Int64Type>().value(row)),
        DataType::Float32 => Value::Float32(array.as_primitive::<Float32Type>().value(row)),
        DataType::Float64 => Value::Float64(array.as_primitive::<Float64Type>().value(row)),
        DataType::Utf8 => Value::String(array.as_string::<i32>().value(row).to_string()),
        DataType::Binary => Value::Bytes(array.as_binary::<i32>().value(row).to_vec()),
        DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, _) => Value::Timestamp(
            array
                .as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                .value(row),
        ),
        DataType::List(_) => {
            let items = array.as_list::<i32>().value(row);
            Value::List(
                (0..items.len())
                    .map(|i| value_at(items.as_ref(), i))
                    .collect::<Result<_>>()?,
            )
        }
        other => {
            let widened = match other {
                DataType::Int8 | DataType::Int16 | DataType::UInt8 | DataType::UInt16 => {
                    DataType::Int32
                }
                DataType::UInt32 => DataType::Int64,
                DataType::Float16 => DataType::Float32,
                DataType::LargeUtf8 | DataType::Utf8View => DataType::Utf8,
                DataType::LargeBinary | DataType::BinaryView => DataType::Binary,
                DataType::Timestamp(_, tz) => {
                    DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, tz.clone())
                }
                _ => {
                    return Err(Error::Type(format!(
                        "values of Arrow type {other} are not supported"
                    )))
                }
            };
            let one = arrow::compute::cast(&array.slice(row, 1), &widened)?;
            value_at(one.as_ref(), 0)?
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Online request values are converted by `values_to_array`; offline request columns
    /// by `DType::accepts_request` and a checked cast. Both must accept the same types.
    #[test]
    fn values_to_array_accepts_exactly_the_request_rule() {
        let samples = [
            (DType::Bool, Value::Bool(true)),
            (DType::Int32, Value::Int32(7)),
            (DType::Int64, Value::Int64(7)),
            (DType::Float32, Value::Float32(1.5)),
            (DType::Float64, Value::Float64(1.5)),
            (DType::String, Value::String("x".into())),
        ];
        for (declared, _) in &samples {
            for (given, v) in &samples {
                let online = values_to_array(std::slice::from_ref(v), declared).is_ok();
                assert_eq!(
                    online,
                    declared.accepts_request(given),
                    "a {given} value for a field declared {declared}"
                );
            }
        }
    }
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Float32Type, Float64Type, Int32Type};

    #[test]
    fn values_become_typed_arrays() {
        let a = values_to_array(
            &[Value::Int64(2), Value::Null, Value::Float64(0.5)],
            &DType::Float64,
        )
        .unwrap();
        let a = a.as_primitive::<Float64Type>();
        assert_eq!((a.value(0), a.is_null(1), a.value(2)), (2.0, true, 0.5));
        let a = values_to_array(&[Value::Float64(0.1)], &DType::Float32).unwrap();
        assert_eq!(a.as_primitive::<Float32Type>().value(0), 0.1f32);
        let a = values_to_array(&[Value::Int64(7)], &DType::Int32).unwrap();
        assert_eq!(a.as_primitive::<Int32Type>().value(0), 7);
        let l = values_to_array(
            &[
                Value::List(vec![Value::Float64(1.0), Value::Null]),
                Value::Null,
            ],
            &DType::List(Box::new(DType::Float32)),
        )
        .unwrap();
        assert_eq!(
            l.data_type(),
            &DType::List(Box::new(DType::Float32)).to_arrow()
        );
        assert!(l.is_null(1) && l.as_list::<i32>().value(0).is_null(1));
        let ts = values_to_array(
            &[Value::String("2024-05-01T00:00:00Z".into())],
            &DType::Timestamp,
        )
        .unwrap();
        assert_eq!(ts.data_type(), &DType::Timestamp.to_arrow());
    }

    #[test]
    fn arrays_round_trip_through_values() {
        let cases = [
            (DType::Float64, vec![Value::Float64(0.5), Value::Null]),
            (DType::Int32, vec![Value::Int32(-3), Value::Null]),
            (DType::String, vec![Value::String("a".into()), Value::Null]),
            (DType::Bool, vec![Value::Bool(true), Value::Null]),
            (
                DType::Timestamp,
                vec![Value::Timestamp(1_700_000_000_000_000), Value::Null],
            ),
            (
                DType::List(Box::new(DType::Int64)),
                vec![Value::List(vec![Value::Int64(1), Value::Null]), Value::Null],
            ),
        ];
        for (t, vals) in cases {
            let a = values_to_array(&vals, &t).unwrap();
            let back: Vec<Value> = (0..a.len())
                .map(|i| value_at(a.as_ref(), i).unwrap())
                .collect();
            assert_eq!(back, vals, "{t}");
        }
        let small = arrow::array::Int16Array::from(vec![7i16]);
        assert_eq!(value_at(&small, 0).unwrap(), Value::Int32(7));
    }

    #[test]
    fn wrong_types_name_the_row() {
        let e = values_to_array(
            &[Value::Float64(1.0), Value::String("x".into())],
            &DType::Float64,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("row 1") && e.to_string().contains("\"x\""),
            "{e}"
        );
        let e = values_to_array(&[Value::Int64(1 << 40)], &DType::Int32).unwrap_err();
        assert!(e.to_string().contains("int32"), "{e}");
        assert!(values_to_array(&[Value::Float64(1.5)], &DType::Int64).is_err());
        assert!(values_to_array(&[Value::String("soon".into())], &DType::Timestamp).is_err());
    }

    #[test]
    fn float64_beyond_float32_is_an_error_not_infinity() {
        let e = values_to_array(
            &[Value::Float64(1.0), Value::Float64(1e300)],
            &DType::Float32,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("row 1") && e.to_string().contains("float32"),
            "{e}"
        );
        let list = DType::List(Box::new(DType::Float32));
        let e = values_to_array(&[Value::List(vec![Value::Float64(-1e39)])], &list).unwrap_err();
        assert!(e.to_string().contains("float32"), "{e}");
    }

    #[test]
    fn non_finite_floats_are_json_strings_not_null() {
        let j = serde_json::to_value([
            Value::Float64(f64::NAN),
            Value::Float64(f64::INFINITY),
            Value::Float32(f32::NEG_INFINITY),
            Value::Float64(0.5),
            Value::Null,
        ])
        .unwrap();
        assert_eq!(
            j,
            serde_json::json!(["NaN", "Infinity", "-Infinity", 0.5, null])
        );
    }
}
