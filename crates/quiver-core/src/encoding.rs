//! Byte encodings shared by every online backend (DESIGN §4) and by the offline join
//! for keys that are not a single integer.
//!
//! **Entity keys.** Join-key values in the view's key order, each as a tag byte and the
//! value: integers (int32 and int64 alike, so a key typed int32 in one source and int64
//! in a request is the same key) as 8 big-endian bytes, strings and bytes as a 4-byte
//! length and the bytes.
//!
//! **Rows.** A format byte, the event and creation timestamps (8 bytes little-endian
//! each), then per feature a presence byte and, when present, the value: fixed-width
//! little-endian numbers, a 4-byte length and the bytes for strings and bytes, and for
//! lists a 4-byte length and per element a presence byte and the value.

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BooleanArray, Float32Array, Float64Array, Int32Array,
    Int64Array, ListArray, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Float32Type, Float64Type, Int32Type, Int64Type};

use crate::dtype::DType;
use crate::time::Timestamp;
use crate::value::Value;
use crate::{Error, Result};

const TAG_INT: u8 = 1;
const TAG_STR: u8 = 2;
const TAG_BYTES: u8 = 3;
const ROW_FORMAT: u8 = 1;

/// Bytes of a row's header: the format byte, the event time and the creation time. A
/// row of only its header stores no values (see [`DecodedRow::stored`]).
pub const ROW_HEADER_LEN: usize = 17;

/// Appends the encoding of key column `col` at `row` to `buf`. Keys are Int32, Int64,
/// Utf8 or Binary arrays; a null key is an error for the caller to have rejected.
#[inline]
pub fn encode_key_part(col: &dyn Array, row: usize, buf: &mut Vec<u8>) -> Result<()> {
    if col.is_null(row) {
        return Err(Error::Invalid(format!("null join key at row {row}")));
    }
    match col.data_type() {
        DataType::Int64 => push_int(buf, col.as_primitive::<Int64Type>().value(row)),
        DataType::Int32 => push_int(buf, col.as_primitive::<Int32Type>().value(row) as i64),
        DataType::Utf8 => push_var(buf, TAG_STR, col.as_string::<i32>().value(row).as_bytes()),
        DataType::Binary => push_var(buf, TAG_BYTES, col.as_binary::<i32>().value(row)),
        other => {
            return Err(Error::Type(format!(
                "join keys must be int32, int64, string or bytes, not {other}"
            )))
        }
    }
    Ok(())
}

/// Appends the encoding of a key value to `buf`.
pub fn encode_key_value(v: &Value, buf: &mut Vec<u8>) -> Result<()> {
    match v {
        Value::Int64(i) => push_int(buf, *i),
        Value::Int32(i) => push_int(buf, *i as i64),
        Value::String(s) => push_var(buf, TAG_STR, s.as_bytes()),
        Value::Bytes(b) => push_var(buf, TAG_BYTES, b),
        other => {
            return Err(Error::Type(format!(
                "join keys must be int32, int64, string or bytes, not {other:?}"
            )))
        }
    }
    Ok(())
}

#[inline]
fn push_int(buf: &mut Vec<u8>, v: i64) {
    buf.push(TAG_INT);
    buf.extend_from_slice(&v.to_be_bytes());
}

#[inline]
fn push_var(buf: &mut Vec<u8>, tag: u8, bytes: &[u8]) {
    buf.push(tag);
    buf.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    buf.extend_from_slice(bytes);
}

/// Appends the row encoding of `columns` at `row` (columns typed as the view's features
/// in storage form, see [`DType::to_arrow`]).
pub fn encode_row(
    event_ts: Timestamp,
    created_ts: Timestamp,
    columns: &[ArrayRef],
    row: usize,
    buf: &mut Vec<u8>,
) -> Result<()> {
    buf.push(ROW_FORMAT);
    buf.extend_from_slice(&event_ts.to_le_bytes());
    buf.extend_from_slice(&created_ts.to_le_bytes());
    for col in columns {
        encode_cell(col.as_ref(), row, buf)?;
    }
    Ok(())
}

/// Appends the encoding of one value (as stored in online rows) to `buf`: what tells
/// apart two events' values.
pub fn encode_value_cell(col: &dyn Array, row: usize, buf: &mut Vec<u8>) -> Result<()> {
    encode_cell(col, row, buf)
}

fn encode_cell(col: &dyn Array, row: usize, buf: &mut Vec<u8>) -> Result<()> {
    if col.is_null(row) {
        buf.push(0);
        return Ok(());
    }
    buf.push(1);
    match col.data_type() {
        DataType::Boolean => buf.push(col.as_boolean().value(row) as u8),
        DataType::Int32 => {
            buf.extend_from_slice(&col.as_primitive::<Int32Type>().value(row).to_le_bytes())
        }
        DataType::Int64 => {
            buf.extend_from_slice(&col.as_primitive::<Int64Type>().value(row).to_le_bytes())
        }
        DataType::Float32 => {
            buf.extend_from_slice(&col.as_primitive::<Float32Type>().value(row).to_le_bytes())
        }
        DataType::Float64 => {
            buf.extend_from_slice(&col.as_primitive::<Float64Type>().value(row).to_le_bytes())
        }
        DataType::Timestamp(_, _) => {
            let a = col
                .as_any()
                .downcast_ref::<TimestampMicrosecondArray>()
                .ok_or_else(|| Error::Type("timestamps must be stored in microseconds".into()))?;
            buf.extend_from_slice(&a.value(row).to_le_bytes())
        }
        DataType::Utf8 => {
            let v = col.as_string::<i32>().value(row).as_bytes();
            buf.extend_from_slice(&(v.len() as u32).to_le_bytes());
            buf.extend_from_slice(v);
        }
        DataType::Binary => {
            let v = col.as_binary::<i32>().value(row);
            buf.extend_from_slice(&(v.len() as u32).to_le_bytes());
            buf.extend_from_slice(v);
        }
        DataType::List(_) => {
            let list = col.as_list::<i32>();
            let items = list.value(row);
            buf.extend_from_slice(&(items.len() as u32).to_le_bytes());
            for i in 0..items.len() {
                encode_cell(items.as_ref(), i, buf)?;
            }
        }
        other => return Err(Error::Type(format!("cannot store values of type {other}"))),
    }
    Ok(())
}

/// A decoded row.
#[derive(Clone, Debug, PartialEq)]
pub struct DecodedRow {
    pub event_ts: Timestamp,
    pub created_ts: Timestamp,
    pub values: Vec<Value>,
    /// How many of `values` the row stored: a row written before features were
    /// appended to its view stores fewer, and the rest read as null (MISSING online).
    pub stored: usize,
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| Error::Corrupt("row is truncated".into()))?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("length checked"))
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn len(&mut self) -> Result<usize> {
        Ok(u32::from_le_bytes(self.arr()?) as usize)
    }
    fn at_end(&self) -> bool {
        self.pos == self.bytes.len()
    }
}

/// The event and creation timestamps of an encoded row, without decoding its values
/// (what a conditional write compares).
pub fn row_version(bytes: &[u8]) -> Result<(Timestamp, Timestamp)> {
    let mut r = Reader { bytes, pos: 0 };
    if r.u8()? != ROW_FORMAT {
        return Err(Error::Corrupt("unknown row format".into()));
    }
    Ok((i64::from_le_bytes(r.arr()?), i64::from_le_bytes(r.arr()?)))
}

/// Decodes a row of the given feature types, the types of a view's features in order.
///
/// A view's features may be appended to without a new data version, so a row may
/// store fewer values than `dtypes` asks for (the rest decode as null and
/// [`DecodedRow::stored`] says how many were stored) or, read by a reader that has not
/// seen the appended features yet, more (the extra ones are not decoded). A value cut
/// short is an error.
pub fn decode_row(bytes: &[u8], dtypes: &[&DType]) -> Result<DecodedRow> {
    let mut r = Reader { bytes, pos: 0 };
    if r.u8()? != ROW_FORMAT {
        return Err(Error::Corrupt("unknown row format".into()));
    }
    let event_ts = i64::from_le_bytes(r.arr()?);
    let created_ts = i64::from_le_bytes(r.arr()?);
    let mut values = Vec::with_capacity(dtypes.len());
    let mut stored = 0;
    for t in dtypes {
        if r.at_end() {
            values.push(Value::Null);
        } else {
            values.push(decode_cell(&mut r, t)?);
            stored += 1;
        }
    }
    Ok(DecodedRow {
        event_ts,
        created_ts,
        values,
        stored,
    })
}

fn decode_cell(r: &mut Reader<'_>, t: &DType) -> Result<Value> {
    match r.u8()? {
        0 => return Ok(Value::Null),
        1 => {}
        b => return Err(Error::Corrupt(format!("bad presence byte {b}"))),
    }
    Ok(match t {
        DType::Bool => Value::Bool(r.u8()? != 0),
        DType::Int32 => Value::Int32(i32::from_le_bytes(r.arr()?)),
        DType::Int64 => Value::Int64(i64::from_le_bytes(r.arr()?)),
        DType::Float32 => Value::Float32(f32::from_le_bytes(r.arr()?)),
        DType::Float64 => Value::Float64(f64::from_le_bytes(r.arr()?)),
        DType::Timestamp => Value::Timestamp(i64::from_le_bytes(r.arr()?)),
        DType::String => {
            let n = r.len()?;
            let s = std::str::from_utf8(r.take(n)?)
                .map_err(|_| Error::Corrupt("invalid UTF-8 in a string".into()))?;
            Value::String(s.to_string())
        }
        DType::Bytes => {
            let n = r.len()?;
            Value::Bytes(r.take(n)?.to_vec())
        }
        DType::List(inner) => {
            let n = r.len()?;
            if n > r.bytes.len() {
                return Err(Error::Corrupt("list length exceeds row".into()));
            }
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                items.push(decode_cell(r, inner)?);
            }
            Value::List(items)
        }
    })
}

/// Arrays of every storage type, for tests of encoders and stores.
#[doc(hidden)]
pub fn sample_columns() -> Vec<(DType, ArrayRef)> {
    use std::sync::Arc;
    let list = ListArray::from_iter_primitive::<Float32Type, _, _>(vec![
        Some(vec![Some(1.5f32), None, Some(-2.0)]),
        None,
    ]);
    vec![
        (
            DType::Bool,
            Arc::new(BooleanArray::from(vec![Some(true), None])) as ArrayRef,
        ),
        (
            DType::Int32,
            Arc::new(Int32Array::from(vec![Some(-7), None])),
        ),
        (
            DType::Int64,
            Arc::new(Int64Array::from(vec![None, Some(1 << 40)])),
        ),
        (
            DType::Float32,
            Arc::new(Float32Array::from(vec![Some(0.25f32), None])),
        ),
        (
            DType::Float64,
            Arc::new(Float64Array::from(vec![Some(f64::MIN_POSITIVE), None])),
        ),
        (
            DType::String,
            Arc::new(StringArray::from(vec![Some("héllo"), None])),
        ),
        (
            DType::Bytes,
            Arc::new(BinaryArray::from(vec![Some(&b"\x00\xff"[..]), None])),
        ),
        (
            DType::Timestamp,
            Arc::new(
                TimestampMicrosecondArray::from(vec![Some(1_700_000_000_000_000), None])
                    .with_timezone("UTC"),
            ),
        ),
        (DType::List(Box::new(DType::Float32)), Arc::new(list)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_of_strings_round_trip() {
        let list = crate::value::values_to_array(
            &[
                Value::List(vec![
                    Value::String("a".into()),
                    Value::Null,
                    Value::String("é".into()),
                ]),
                Value::List(vec![]),
                Value::Null,
            ],
            &DType::List(Box::new(DType::String)),
        )
        .unwrap();
        let t = DType::List(Box::new(DType::String));
        for row in 0..3 {
            let mut buf = Vec::new();
            encode_row(1, 2, std::slice::from_ref(&list), row, &mut buf).unwrap();
            let got = decode_row(&buf, &[&t]).unwrap();
            assert_eq!(
                got.values[0],
                crate::value::value_at(list.as_ref(), row).unwrap()
            );
        }
    }

    #[test]
    fn rows_round_trip_every_type() {
        let cols = sample_columns();
        let arrays: Vec<ArrayRef> = cols.iter().map(|c| c.1.clone()).collect();
        let dtypes: Vec<&DType> = cols.iter().map(|c| &c.0).collect();
        let mut buf = Vec::new();
        encode_row(10, 20, &arrays, 0, &mut buf).unwrap();
        let row = decode_row(&buf, &dtypes).unwrap();
        assert_eq!((row.event_ts, row.created_ts), (10, 20));
        assert_eq!(row.values[0], Value::Bool(true));
        assert_eq!(row.values[1], Value::Int32(-7));
        assert_eq!(row.values[2], Value::Null);
        assert_eq!(row.values[4], Value::Float64(f64::MIN_POSITIVE));
        assert_eq!(row.values[5], Value::String("héllo".into()));
        assert_eq!(row.values[6], Value::Bytes(vec![0, 255]));
        assert_eq!(row.values[7], Value::Timestamp(1_700_000_000_000_000));
        assert_eq!(
            row.values[8],
            Value::List(vec![Value::Float32(1.5), Value::Null, Value::Float32(-2.0)])
        );
        assert_eq!(row_version(&buf).unwrap(), (10, 20));

        buf.clear();
        encode_row(1, 2, &arrays, 1, &mut buf).unwrap();
        let row = decode_row(&buf, &dtypes).unwrap();
        assert_eq!(row.values[2], Value::Int64(1 << 40));
        assert!(row
            .values
            .iter()
            .enumerate()
            .all(|(i, v)| i == 2 || v.is_null()));
    }

    #[test]
    fn corrupt_rows_are_errors_not_panics() {
        let cols = sample_columns();
        let arrays: Vec<ArrayRef> = cols.iter().map(|c| c.1.clone()).collect();
        let dtypes: Vec<&DType> = cols.iter().map(|c| &c.0).collect();
        let mut buf = Vec::new();
        encode_row(10, 20, &arrays, 0, &mut buf).unwrap();
        // Where a row of the first k features ends: a row stored before features were
        // appended to its view. Cut anywhere else, the row is corrupt.
        let ends: Vec<usize> = (0..=arrays.len())
            .map(|k| {
                let mut b = Vec::new();
                encode_row(10, 20, &arrays[..k], 0, &mut b).unwrap();
                b.len()
            })
            .collect();
        for cut in 0..buf.len() {
            match ends.iter().position(|&e| e == cut) {
                Some(k) => {
                    let row = decode_row(&buf[..cut], &dtypes).unwrap();
                    assert_eq!(row.stored, k, "cut at {cut}");
                    assert!(row.values[k..].iter().all(Value::is_null), "cut at {cut}");
                }
                None => assert!(decode_row(&buf[..cut], &dtypes).is_err(), "cut at {cut}"),
            }
        }
        // A reader that does not know the appended features yet reads the others.
        let row = decode_row(&buf, &dtypes[..3]).unwrap();
        assert_eq!((row.stored, row.values.len()), (3, 3));
    }

    #[test]
    fn int_keys_of_both_widths_encode_alike() {
        let a = Int32Array::from(vec![42]);
        let b = Int64Array::from(vec![42]);
        let (mut x, mut y, mut z) = (Vec::new(), Vec::new(), Vec::new());
        encode_key_part(&a, 0, &mut x).unwrap();
        encode_key_part(&b, 0, &mut y).unwrap();
        encode_key_value(&Value::Int64(42), &mut z).unwrap();
        assert_eq!(x, y);
        assert_eq!(y, z);
        assert!(encode_key_part(&Int64Array::from(vec![None]), 0, &mut x).is_err());
    }
}
