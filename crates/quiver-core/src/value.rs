//! A typed scalar, used where one value at a time crosses an interface: online
//! results, entity keys typed on a command line or in a request.

use serde::{Serialize, Serializer};

use crate::dtype::DType;
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
/// RFC 3339 strings; non-finite floats as null.
impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Value::Null => s.serialize_none(),
            Value::Bool(v) => s.serialize_bool(*v),
            Value::Int32(v) => s.serialize_i32(*v),
            Value::Int64(v) => s.serialize_i64(*v),
            Value::Float32(v) if v.is_finite() => s.serialize_f32(*v),
            Value::Float64(v) if v.is_finite() => s.serialize_f64(*v),
            Value::Float32(_) | Value::Float64(_) => s.serialize_none(),
            Value::String(v) => s.serialize_str(v),
            Value::Bytes(_) | Value::Timestamp(_) => s.serialize_str(&self.to_string()),
            Value::List(items) => items.serialize(s),
        }
    }
}
