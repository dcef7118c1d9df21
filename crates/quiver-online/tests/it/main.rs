//! Integration tests of quiver-online: the conformance suite on the embedded store, its
//! persistence, concurrency and crash safety, and checks that the suite itself catches
//! broken stores.

mod cache;
mod catches;
mod crash;
mod embedded;

use quiver_core::encoding::{decode_row, encode_key_value, encode_row, sample_columns, DecodedRow};
use quiver_core::{DType, Timestamp, Value};
use quiver_online::entity_key;

/// Rows of `sample_columns` (row `variant % 2`), one per `(event_ts, created_ts,
/// variant)`.
pub fn sample_rows(versions: &[(Timestamp, Timestamp, usize)]) -> Vec<Vec<u8>> {
    let arrays: Vec<_> = sample_columns().into_iter().map(|(_, a)| a).collect();
    versions
        .iter()
        .map(|&(ev, cr, variant)| {
            let mut buf = Vec::new();
            encode_row(ev, cr, &arrays, variant % 2, &mut buf).expect("sample rows encode");
            buf
        })
        .collect()
}

/// One sample row.
pub fn sample_row(event_ts: Timestamp, created_ts: Timestamp, variant: usize) -> Vec<u8> {
    sample_rows(&[(event_ts, created_ts, variant)]).remove(0)
}

/// The feature types of the sample rows.
pub fn sample_dtypes() -> Vec<DType> {
    sample_columns().into_iter().map(|(t, _)| t).collect()
}

/// Decodes a sample row, panicking with `context` if it does not decode.
pub fn decode_sample(bytes: &[u8], dtypes: &[DType], context: &str) -> DecodedRow {
    let refs: Vec<&DType> = dtypes.iter().collect();
    decode_row(bytes, &refs).unwrap_or_else(|e| panic!("{context}: row does not decode: {e}"))
}

/// The entity key of integer `id` in `project` / `set`.
pub fn int_key(project: &str, set: &str, id: i64) -> Vec<u8> {
    let mut v = Vec::new();
    encode_key_value(&Value::Int64(id), &mut v).expect("int keys encode");
    entity_key(project, set, &v)
}
