//! Feature value types.

use std::fmt;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, TimeUnit};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{Error, Result};

/// The type of a feature or join key. Written in definitions as `bool`, `int32`, `int64`,
/// `float32`, `float64`, `string`, `bytes`, `timestamp`, or `list<T>` for a numeric `T`
/// (embeddings).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    Bool,
    Int32,
    Int64,
    Float32,
    Float64,
    String,
    Bytes,
    /// UTC microseconds.
    Timestamp,
    /// A list of a numeric type.
    List(Box<DType>),
}

impl DType {
    /// Parses the text form used in definitions.
    pub fn parse(s: &str) -> Result<Self> {
        let t = s.trim();
        Ok(match t {
            "bool" => DType::Bool,
            "int32" => DType::Int32,
            "int64" => DType::Int64,
            "float32" => DType::Float32,
            "float64" => DType::Float64,
            "string" => DType::String,
            "bytes" => DType::Bytes,
            "timestamp" => DType::Timestamp,
            _ => {
                let inner = t
                    .strip_prefix("list<")
                    .and_then(|r| r.strip_suffix('>'))
                    .ok_or_else(|| {
                        Error::Invalid(format!(
                            "unknown dtype {s:?}: expected one of bool, int32, int64, float32, \
                             float64, string, bytes, timestamp, list<…> of one of these"
                        ))
                    })?;
                let inner = DType::parse(inner)?;
                if matches!(inner, DType::List(_)) {
                    return Err(Error::Invalid(format!(
                        "unsupported dtype {s:?}: lists of lists are not supported"
                    )));
                }
                DType::List(Box::new(inner))
            }
        })
    }

    /// Whether this is an integer or floating-point type.
    pub fn is_numeric(&self) -> bool {
        matches!(
            self,
            DType::Int32 | DType::Int64 | DType::Float32 | DType::Float64
        )
    }

    /// Whether this type may be used as a join key.
    pub fn is_key_type(&self) -> bool {
        matches!(
            self,
            DType::Int32 | DType::Int64 | DType::String | DType::Bytes
        )
    }

    /// The Arrow type quiver stores this type as.
    pub fn to_arrow(&self) -> DataType {
        match self {
            DType::Bool => DataType::Boolean,
            DType::Int32 => DataType::Int32,
            DType::Int64 => DataType::Int64,
            DType::Float32 => DataType::Float32,
            DType::Float64 => DataType::Float64,
            DType::String => DataType::Utf8,
            DType::Bytes => DataType::Binary,
            DType::Timestamp => timestamp_type(),
            DType::List(inner) => {
                // "element" is the name Delta Lake and Parquet give a list's values.
                DataType::List(Arc::new(Field::new("element", inner.to_arrow(), true)))
            }
        }
    }

    /// The quiver type of an Arrow type, if quiver has one for it. Narrow or
    /// alternative encodings (large strings, other timestamp units and zones) map to the
    /// type they are read as.
    pub fn from_arrow(dt: &DataType) -> Option<Self> {
        Some(match dt {
            DataType::Boolean => DType::Bool,
            DataType::Int8 | DataType::Int16 | DataType::Int32 => DType::Int32,
            DataType::UInt8 | DataType::UInt16 => DType::Int32,
            DataType::Int64 | DataType::UInt32 => DType::Int64,
            DataType::Float16 | DataType::Float32 => DType::Float32,
            DataType::Float64 => DType::Float64,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => DType::String,
            DataType::Binary | DataType::LargeBinary | DataType::BinaryView => DType::Bytes,
            DataType::Timestamp(_, _) | DataType::Date32 | DataType::Date64 => DType::Timestamp,
            DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
                let inner = DType::from_arrow(f.data_type())?;
                if matches!(inner, DType::List(_)) {
                    return None;
                }
                DType::List(Box::new(inner))
            }
            _ => return None,
        })
    }

    /// Whether values of this type can be NaN or ±infinity: floats and lists of floats.
    pub fn is_float(&self) -> bool {
        match self {
            DType::Float32 | DType::Float64 => true,
            DType::List(inner) => inner.is_float(),
            _ => false,
        }
    }

    /// Whether a source column of type `source` can be read as `self` without loss:
    /// the same type, or a widening (int32 → int64, float32 → float64, int → float64).
    pub fn accepts(&self, source: &DType) -> bool {
        match (self, source) {
            (a, b) if a == b => true,
            (DType::Int64, DType::Int32) => true,
            (DType::Float64, DType::Float32 | DType::Int32) => true,
            (DType::List(a), DType::List(b)) => a.accepts(b),
            _ => false,
        }
    }
}

impl DType {
    /// The one coercion rule of on-demand request fields, the same offline (a column of
    /// the entity rows) and online (a value of the request context): a field declared
    /// `self` takes a value of type `given` when they are equal, when both are integers
    /// (the value must fit), when an integer is given for a float, or a float64 for a
    /// float32 (rounded to the nearest float32). [`crate::value::values_to_array`]
    /// converts exactly these (a test checks it).
    pub fn accepts_request(&self, given: &DType) -> bool {
        use DType::*;
        match (self, given) {
            (a, b) if a == b => true,
            (Int32 | Int64, Int32 | Int64) => true,
            (Float32 | Float64, Int32 | Int64 | Float32 | Float64) => true,
            _ => false,
        }
    }
}

/// The Arrow type of every stored timestamp: microseconds, UTC.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DType::Bool => f.write_str("bool"),
            DType::Int32 => f.write_str("int32"),
            DType::Int64 => f.write_str("int64"),
            DType::Float32 => f.write_str("float32"),
            DType::Float64 => f.write_str("float64"),
            DType::String => f.write_str("string"),
            DType::Bytes => f.write_str("bytes"),
            DType::Timestamp => f.write_str("timestamp"),
            DType::List(inner) => write!(f, "list<{inner}>"),
        }
    }
}

impl Serialize for DType {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for DType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        DType::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtypes_round_trip() {
        for s in [
            "bool",
            "int32",
            "int64",
            "float32",
            "float64",
            "string",
            "bytes",
            "timestamp",
            "list<float32>",
            "list<int64>",
            "list<string>",
            "list<timestamp>",
        ] {
            let t = DType::parse(s).unwrap();
            assert_eq!(t.to_string(), s);
            assert_eq!(DType::from_arrow(&t.to_arrow()), Some(t));
        }
        assert!(DType::parse("list<list<int64>>").is_err());
        assert!(DType::parse("float").is_err());
        assert!(DType::Float64.accepts(&DType::Float32));
        assert!(!DType::Float32.accepts(&DType::Float64));
        assert!(!DType::Int64.accepts(&DType::String));
    }
}
