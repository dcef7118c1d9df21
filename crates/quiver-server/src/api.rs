//! The serving messages (`proto/quiver/serving/v1/serving.proto`), shared by gRPC and
//! the HTTP JSON API, and their conversions to quiver's own types.
//!
//! JSON forms: a [`Value`](pb::Value) is a bare JSON value (null, boolean, number,
//! string or array), a [`ValueList`](pb::ValueList) an array, a status its name.

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};

use quiver_core::finite::non_finite_name;
use quiver_core::time::format_timestamp;
use quiver_core::{FeatureStatus, Value};

/// The generated messages and service.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("quiver.serving.v1");
}

pub use pb::value::Kind;

impl Serialize for pb::Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.kind {
            None => s.serialize_none(),
            Some(Kind::BoolValue(v)) => s.serialize_bool(*v),
            Some(Kind::Int32Value(v)) => s.serialize_i32(*v),
            Some(Kind::Int64Value(v)) => s.serialize_i64(*v),
            // Non-finite numbers as the protobuf JSON mapping writes them, never as
            // null, which means missing (quiver_core::finite).
            Some(Kind::FloatValue(v)) => match non_finite_name(*v as f64) {
                Some(name) => s.serialize_str(name),
                None => s.serialize_f32(*v),
            },
            Some(Kind::DoubleValue(v)) => match non_finite_name(*v) {
                Some(name) => s.serialize_str(name),
                None => s.serialize_f64(*v),
            },
            Some(Kind::StringValue(v)) => s.serialize_str(v),
            Some(Kind::BytesValue(v)) => {
                s.serialize_str(&v.iter().map(|b| format!("{b:02x}")).collect::<String>())
            }
            Some(Kind::TimestampValue(v)) => s.serialize_str(&format_timestamp(*v)),
            Some(Kind::ListValue(l)) => l.values.serialize(s),
        }
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = pb::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("null, a boolean, a number, a string or an array")
    }
    fn visit_unit<E: de::Error>(self) -> Result<pb::Value, E> {
        Ok(pb::Value { kind: None })
    }
    fn visit_none<E: de::Error>(self) -> Result<pb::Value, E> {
        Ok(pb::Value { kind: None })
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<pb::Value, E> {
        Ok(kind(Kind::BoolValue(v)))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<pb::Value, E> {
        Ok(kind(Kind::Int64Value(v)))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<pb::Value, E> {
        i64::try_from(v)
            .map(|v| kind(Kind::Int64Value(v)))
            .map_err(|_| E::custom(format!("integer {v} is out of the int64 range")))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<pb::Value, E> {
        Ok(kind(Kind::DoubleValue(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<pb::Value, E> {
        Ok(kind(Kind::StringValue(v.to_string())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<pb::Value, E> {
        Ok(kind(Kind::StringValue(v)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<pb::Value, A::Error> {
        let mut values = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(v) = seq.next_element::<pb::Value>()? {
            values.push(v);
        }
        Ok(kind(Kind::ListValue(pb::ValueList { values })))
    }
}

impl<'de> Deserialize<'de> for pb::Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

fn kind(k: Kind) -> pb::Value {
    pb::Value { kind: Some(k) }
}

/// A JSON object as a map in which a key given twice is an error: JSON parsers differ on
/// which of two equal keys wins, so `{"driver_id": [1], "driver_id": [2]}` is refused
/// rather than answered for one of them.
pub fn unique_keys<'de, D, V>(d: D) -> Result<std::collections::BTreeMap<String, V>, D::Error>
where
    D: Deserializer<'de>,
    V: Deserialize<'de>,
{
    struct Unique<V>(std::marker::PhantomData<V>);
    impl<'de, V: Deserialize<'de>> Visitor<'de> for Unique<V> {
        type Value = std::collections::BTreeMap<String, V>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: de::MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
            let mut out = std::collections::BTreeMap::new();
            while let Some(k) = m.next_key::<String>()? {
                if out.contains_key(&k) {
                    return Err(de::Error::custom(format!(
                        "'{k}' appears twice in one object; give each column once"
                    )));
                }
                let v = m.next_value()?;
                out.insert(k, v);
            }
            Ok(out)
        }
    }
    d.deserialize_map(Unique(std::marker::PhantomData))
}

/// JSON form of the `statuses` maps: status names instead of enum numbers.
pub mod status_map {
    use std::collections::BTreeMap;

    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::pb::FeatureStatus;

    pub fn serialize<S: Serializer>(m: &BTreeMap<String, i32>, s: S) -> Result<S::Ok, S::Error> {
        let named: BTreeMap<&str, &str> = m
            .iter()
            .map(|(k, v)| {
                let name = FeatureStatus::try_from(*v)
                    .map(|s| s.as_str_name())
                    .unwrap_or("FEATURE_STATUS_UNSPECIFIED");
                (k.as_str(), name)
            })
            .collect();
        named.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, i32>, D::Error> {
        let named = BTreeMap::<String, String>::deserialize(d)?;
        named
            .into_iter()
            .map(|(k, v)| {
                FeatureStatus::from_str_name(&v)
                    .map(|s| (k, s as i32))
                    .ok_or_else(|| D::Error::custom(format!("unknown feature status {v:?}")))
            })
            .collect()
    }
}

/// A request value as a quiver value.
pub fn to_value(v: &pb::Value) -> Value {
    match &v.kind {
        None => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::Int32Value(i)) => Value::Int32(*i),
        Some(Kind::Int64Value(i)) => Value::Int64(*i),
        Some(Kind::FloatValue(x)) => Value::Float32(*x),
        Some(Kind::DoubleValue(x)) => Value::Float64(*x),
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::BytesValue(b)) => Value::Bytes(b.clone()),
        Some(Kind::TimestampValue(t)) => Value::Timestamp(*t),
        Some(Kind::ListValue(l)) => Value::List(l.values.iter().map(to_value).collect()),
    }
}

/// A quiver value as a message value.
pub fn from_value(v: Value) -> pb::Value {
    pb::Value {
        kind: match v {
            Value::Null => None,
            Value::Bool(b) => Some(Kind::BoolValue(b)),
            Value::Int32(i) => Some(Kind::Int32Value(i)),
            Value::Int64(i) => Some(Kind::Int64Value(i)),
            Value::Float32(x) => Some(Kind::FloatValue(x)),
            Value::Float64(x) => Some(Kind::DoubleValue(x)),
            Value::String(s) => Some(Kind::StringValue(s)),
            Value::Bytes(b) => Some(Kind::BytesValue(b)),
            Value::Timestamp(t) => Some(Kind::TimestampValue(t)),
            Value::List(items) => Some(Kind::ListValue(pb::ValueList {
                values: items.into_iter().map(from_value).collect(),
            })),
        },
    }
}

/// A status as its message enum.
pub fn from_status(s: FeatureStatus) -> pb::FeatureStatus {
    match s {
        FeatureStatus::Present => pb::FeatureStatus::Present,
        FeatureStatus::Missing => pb::FeatureStatus::Missing,
        FeatureStatus::OutsideTtl => pb::FeatureStatus::OutsideTtl,
        FeatureStatus::Invalid => pb::FeatureStatus::Invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_request_shape() {
        let r: pb::GetOnlineFeaturesRequest = serde_json::from_str(
            r#"{"feature_service":"s","entities":{"driver_id":[1001,-2,null,"x",1.5,[1,2]]}}"#,
        )
        .unwrap();
        assert_eq!(r.feature_service.as_deref(), Some("s"));
        let vals: Vec<Value> = r.entities["driver_id"]
            .values
            .iter()
            .map(to_value)
            .collect();
        assert_eq!(
            vals,
            vec![
                Value::Int64(1001),
                Value::Int64(-2),
                Value::Null,
                Value::String("x".into()),
                Value::Float64(1.5),
                Value::List(vec![Value::Int64(1), Value::Int64(2)])
            ]
        );
        let e =
            serde_json::from_str::<pb::GetOnlineFeaturesRequest>(r#"{"entitys":{}}"#).unwrap_err();
        assert!(e.to_string().contains("entitys"), "{e}");
    }

    #[test]
    fn json_response_shape() {
        let mut fv = pb::FeatureVector::default();
        fv.features
            .insert("a".into(), from_value(Value::Float64(0.5)));
        fv.features.insert("b".into(), from_value(Value::Null));
        fv.statuses
            .insert("a".into(), pb::FeatureStatus::Present as i32);
        fv.statuses
            .insert("b".into(), pb::FeatureStatus::OutsideTtl as i32);
        let j = serde_json::to_value(&fv).unwrap();
        assert_eq!(j["features"]["a"], 0.5);
        assert!(j["features"]["b"].is_null());
        assert_eq!(j["statuses"]["b"], "OUTSIDE_TTL");
        let back: pb::FeatureVector = serde_json::from_value(j).unwrap();
        assert_eq!(back, fv);
    }
}
