//! Validation of input rows and conversion to the stored form.
//!
//! Stored form of a view's rows: the join keys (int64, string or bytes), a non-null
//! `event_timestamp` and a nullable `created_timestamp` (microseconds, UTC), the
//! features typed as declared, and `event_date` (the day partition).
//!
//! Source times finer than a microsecond are rounded by the time contract's side
//! ([`Rounding`]): a feature row's event and creation times up, a label's time down, so
//! no row from after a label's time can reach it. Two rows of one key that differ only
//! below a microsecond would become one stored row: that is an error naming both rows.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Date32Array, Int64Array, RecordBatch, TimestampMicrosecondArray,
};
use arrow::compute::{cast_with_options, CastOptions};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit, TimestampNanosecondType};
use quiver_core::dtype::{timestamp_type, DType};
use quiver_core::finite::first_non_finite;
use quiver_core::model::{JoinKey, ResolvedView};
pub use quiver_core::time::Rounding;
use quiver_core::time::{
    self as time, day_of, parse_timestamp, parse_timestamp_nanos, round_micros, MICROS_PER_DAY,
};
use rayon::prelude::*;

use crate::files::is_plain_integer;
use crate::{Error, Result};

/// Name of the stored event-time column.
pub const EVENT_TIMESTAMP: &str = "event_timestamp";
/// Name of the stored creation-time column.
pub const CREATED_TIMESTAMP: &str = "created_timestamp";
/// Name of the day-partition column.
pub const EVENT_DATE: &str = "event_date";

/// The creation time of row `row` as the time contract orders it:
/// [`quiver_core::contract::NO_CREATED`] when there is none.
#[inline]
pub fn created_at(
    created: &arrow::array::TimestampMicrosecondArray,
    row: usize,
) -> quiver_core::Timestamp {
    if created.is_null(row) {
        quiver_core::contract::NO_CREATED
    } else {
        created.value(row)
    }
}

/// The version (event and creation time) of row `row` of a batch in the stored form of
/// a view with `nkeys` join keys.
pub fn stored_version(
    batch: &RecordBatch,
    nkeys: usize,
    row: usize,
) -> quiver_core::contract::RowVersion {
    use arrow::datatypes::TimestampMicrosecondType;
    let ts = batch
        .column(nkeys)
        .as_primitive::<TimestampMicrosecondType>();
    let created = batch
        .column(nkeys + 1)
        .as_primitive::<TimestampMicrosecondType>();
    quiver_core::contract::RowVersion {
        event_ts: ts.value(row),
        created_ts: created_at(created, row),
    }
}

/// The Arrow type a join key is stored as.
pub fn key_arrow_type(t: &DType) -> DataType {
    match t {
        DType::Int32 | DType::Int64 => DataType::Int64,
        other => other.to_arrow(),
    }
}

/// The Arrow type a join-key column of a CSV file is read as: integer keys as text,
/// which [`normalize_batch`] turns into integers only where each is written as a plain
/// integer ([`crate::files::is_plain_integer`]), so `007` is never read as `7`; other
/// keys as stored.
pub fn key_csv_type(t: &DType) -> DataType {
    match key_arrow_type(t) {
        DataType::Int64 => DataType::Utf8,
        other => other,
    }
}

/// The stored schema of a view's table.
pub fn table_schema(view: &ResolvedView) -> SchemaRef {
    let mut fields: Vec<Field> = view
        .join_keys
        .iter()
        .map(|k| Field::new(&k.name, key_arrow_type(&k.dtype), false))
        .collect();
    fields.push(Field::new(EVENT_TIMESTAMP, timestamp_type(), false));
    fields.push(Field::new(CREATED_TIMESTAMP, timestamp_type(), true));
    fields.extend(
        view.features
            .iter()
            .map(|f| Field::new(&f.name, f.dtype.to_arrow(), true)),
    );
    fields.push(Field::new(EVENT_DATE, DataType::Date32, false));
    Arc::new(Schema::new(fields))
}

/// Where a batch came from, for messages: a file and the row number of its first row.
#[derive(Clone, Debug)]
pub struct Origin<'a> {
    pub file: &'a str,
    /// 1-based number of the batch's first data row in the file.
    pub first_row: usize,
}

impl Origin<'_> {
    fn err(&self, row: usize, column: &str, msg: impl std::fmt::Display) -> Error {
        Error::Data(format!(
            "{}: row {}, column '{column}': {msg}",
            self.file,
            self.first_row + row
        ))
    }
}

/// Converts a time column (timestamps of any unit and zone, dates, or strings) to UTC
/// microseconds. Nulls stay null; `required` turns a null into an error. Times finer
/// than a microsecond are rounded as `rounding` says: [`Rounding::Up`] for a feature
/// row's event and creation times, [`Rounding::Down`] for label and entity-row times.
pub fn to_timestamps(
    col: &dyn Array,
    name: &str,
    origin: &Origin<'_>,
    required: bool,
    rounding: Rounding,
) -> Result<TimestampMicrosecondArray> {
    to_timestamps_nanos(col, name, origin, required, rounding).map(|(t, _)| t)
}

/// Rows from which a time column is converted on rayon's threads.
const PARALLEL_ROWS: usize = 1 << 16;

/// Like [`to_timestamps`], also returning per row the nanoseconds (0..1000) past the
/// whole microsecond of the source time, when some row has them.
fn to_timestamps_nanos(
    col: &dyn Array,
    name: &str,
    origin: &Origin<'_>,
    required: bool,
    rounding: Rounding,
) -> Result<(TimestampMicrosecondArray, Option<Vec<u16>>)> {
    let mut sub: Option<Vec<u16>> = None;
    // Whether the type cannot hold a time outside the years stored.
    let mut always_in_range = false;
    let out: TimestampMicrosecondArray = match col.data_type() {
        DataType::Timestamp(TimeUnit::Nanosecond, _) => {
            let a = col.as_primitive::<TimestampNanosecondType>();
            let ns = a.values();
            // Without a branch per row (label columns run to millions of rows); the
            // nanoseconds past the microsecond are gathered only when some row has them.
            let micros =
                |&n: &i64| round_micros(n.div_euclid(1_000), n.rem_euclid(1_000) as u16, rounding);
            let values: Vec<i64> = if ns.len() >= PARALLEL_ROWS {
                ns.par_iter().map(micros).collect()
            } else {
                ns.iter().map(micros).collect()
            };
            if ns.iter().any(|&n| n % 1_000 != 0) {
                let s = sub.insert(vec![0; a.len()]);
                for (i, &n) in ns.iter().enumerate() {
                    if a.is_valid(i) {
                        s[i] = n.rem_euclid(1_000) as u16;
                    }
                }
            }
            // Nanoseconds in an i64 span 1677–2262.
            always_in_range = true;
            TimestampMicrosecondArray::new(values.into(), a.nulls().cloned())
        }
        DataType::Timestamp(_, _) | DataType::Date32 | DataType::Date64 => {
            let target = DataType::Timestamp(TimeUnit::Microsecond, None);
            let c = cast_with_options(
                col,
                &target,
                &CastOptions {
                    safe: false,
                    ..Default::default()
                },
            )
            .map_err(|e| origin.err(0, name, e))?;
            c.as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                .clone()
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            let c = cast_with_options(col, &DataType::Utf8, &CastOptions::default())?;
            let s = c.as_string::<i32>();
            let mut v = Vec::with_capacity(s.len());
            for i in 0..s.len() {
                if s.is_null(i) {
                    v.push(None);
                } else {
                    let (floor, r) =
                        parse_timestamp_nanos(s.value(i)).map_err(|e| origin.err(i, name, e))?;
                    if r != 0 {
                        sub.get_or_insert_with(|| vec![0; s.len()])[i] = r;
                    }
                    v.push(Some(round_micros(floor, r, rounding)));
                }
            }
            TimestampMicrosecondArray::from(v)
        }
        other => {
            return Err(origin.err(
                0,
                name,
                format!("type {other} is not a timestamp, date or string"),
            ))
        }
    };
    if required && out.null_count() > 0 {
        let row = (0..out.len()).find(|&i| out.is_null(i)).unwrap_or(0);
        return Err(origin.err(row, name, "timestamp is null"));
    }
    let out_of_range = if always_in_range {
        None
    } else {
        (0..out.len()).find(|&i| out.is_valid(i) && !time::in_range(out.value(i)))
    };
    if let Some(row) = out_of_range {
        return Err(origin.err(
            row,
            name,
            format!(
                "time {} µs since the epoch is outside the years 1–9999 quiver stores",
                out.value(row)
            ),
        ));
    }
    Ok((out.with_timezone("UTC"), sub))
}

/// Casts a join-key column to its stored type.
pub fn cast_key(col: &ArrayRef, key: &JoinKey) -> Result<ArrayRef> {
    let target = key_arrow_type(&key.dtype);
    if col.data_type() == &target {
        return Ok(col.clone());
    }
    let ok = DType::from_arrow(col.data_type())
        .is_some_and(|t| t.is_key_type() && key_arrow_type(&t) == target);
    if !ok {
        return Err(Error::Invalid(format!(
            "join key '{}' has type {} but the registry declares {}",
            key.name,
            col.data_type(),
            key.dtype
        )));
    }
    Ok(cast_with_options(
        col,
        &target,
        &CastOptions {
            safe: false,
            ..Default::default()
        },
    )?)
}

/// Parses a text column of integer join keys (nulls already rejected), each of which
/// must be written as a plain integer.
fn plain_int_keys(col: &ArrayRef, key: &JoinKey, origin: &Origin<'_>) -> Result<ArrayRef> {
    let c = cast_with_options(col, &DataType::Utf8, &CastOptions::default())?;
    let s = c.as_string::<i32>();
    let mut out = Vec::with_capacity(s.len());
    for i in 0..s.len() {
        let v = s.value(i);
        if !is_plain_integer(v) {
            return Err(origin.err(
                i,
                &key.name,
                format!(
                    "'{v}' is not a plain integer but the join key is {}: read as a number, \
                     spellings like 007 and 7 would be one entity; declare the key as \
                     {{ name: {}, dtype: string }} in its entity to keep them apart",
                    key.dtype, key.name
                ),
            ));
        }
        out.push(v.parse::<i64>().expect("plain integers parse"));
    }
    Ok(Arc::new(Int64Array::from(out)))
}

fn column<'b>(batch: &'b RecordBatch, name: &str, origin: &Origin<'_>) -> Result<&'b ArrayRef> {
    batch.column_by_name(name).ok_or_else(|| {
        Error::Data(format!(
            "{}: missing column '{name}' (columns: {})",
            origin.file,
            batch
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })
}

/// A batch in the view's stored form ([`normalize`]) with what microseconds could not
/// hold of its source times, so that an ingest tells rows that rounding made equal from
/// rows that were equal (a repeated row, a re-ingest).
#[derive(Clone, Debug)]
pub struct NormalizedBatch {
    pub batch: RecordBatch,
    /// Per row, the nanoseconds (0..1000) past the whole microsecond of the source's
    /// event and creation times; `None` when every time was whole microseconds.
    pub sub_micros: Option<Vec<[u16; 2]>>,
    /// Where the rows came from, for messages (empty when unknown).
    pub file: String,
    /// 1-based number of the batch's first row in `file`.
    pub first_row: usize,
}

impl From<RecordBatch> for NormalizedBatch {
    /// A batch already in the stored form, its times whole microseconds.
    fn from(batch: RecordBatch) -> Self {
        NormalizedBatch {
            batch,
            sub_micros: None,
            file: String::new(),
            first_row: 1,
        }
    }
}

impl NormalizedBatch {
    /// Names row `row` of this batch, the `index`th of an ingest, in messages.
    pub(crate) fn row_name(&self, index: usize, row: usize) -> String {
        if self.file.is_empty() {
            format!("batch {} row {}", index + 1, self.first_row + row)
        } else {
            format!("{}: row {}", self.file, self.first_row + row)
        }
    }
}

/// Validates a source batch and converts it to the view's stored form: keys present
/// and non-null, timestamps parsable (rounded up to the microsecond), features of an
/// accepted type. Two rows of one key that rounding made equal in (event time, creation
/// time) are an error naming both. Use [`normalize`] and pass its batches to
/// [`crate::OfflineStore::ingest`] to catch them across the batches of one ingest too.
pub fn normalize_batch(
    batch: &RecordBatch,
    view: &ResolvedView,
    timestamp_field: &str,
    created_field: Option<&str>,
    origin: &Origin<'_>,
) -> Result<RecordBatch> {
    let n = normalize(batch, view, timestamp_field, created_field, origin)?;
    if n.sub_micros.is_some() {
        crate::store::check_rounding(view, std::slice::from_ref(&n))?;
    }
    Ok(n.batch)
}

/// Like [`normalize_batch`], keeping what rounding to microseconds took from the source
/// times, for [`crate::OfflineStore::ingest`] to check across all batches of an ingest
/// (this function checks nothing across rows).
pub fn normalize(
    batch: &RecordBatch,
    view: &ResolvedView,
    timestamp_field: &str,
    created_field: Option<&str>,
    origin: &Origin<'_>,
) -> Result<NormalizedBatch> {
    let schema = table_schema(view);
    let mut cols: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for k in &view.join_keys {
        let c = column(batch, &k.name, origin)?;
        if c.null_count() > 0 {
            let row = (0..c.len()).find(|&i| c.is_null(i)).unwrap_or(0);
            return Err(origin.err(row, &k.name, "join key is null"));
        }
        let text = matches!(
            c.data_type(),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
        );
        if text && key_arrow_type(&k.dtype) == DataType::Int64 {
            cols.push(plain_int_keys(c, k, origin)?);
            continue;
        }
        cols.push(cast_key(c, k).map_err(|e| Error::Data(format!("{}: {e}", origin.file)))?);
    }
    let (ts, ts_sub) = to_timestamps_nanos(
        column(batch, timestamp_field, origin)?.as_ref(),
        timestamp_field,
        origin,
        true,
        Rounding::Up,
    )?;
    let dates: Date32Array = ts.values().iter().map(|&t| Some(day_of(t))).collect();
    cols.push(Arc::new(ts));
    let mut created_sub = None;
    match created_field {
        Some(c) => {
            let (created, sub) = to_timestamps_nanos(
                column(batch, c, origin)?.as_ref(),
                c,
                origin,
                false,
                Rounding::Up,
            )?;
            created_sub = sub;
            cols.push(Arc::new(created));
        }
        None => cols.push(arrow::array::new_null_array(
            &timestamp_type(),
            batch.num_rows(),
        )),
    }
    let sub_micros = match (ts_sub, created_sub) {
        (None, None) => None,
        (e, c) => Some(
            (0..batch.num_rows())
                .map(|i| {
                    [
                        e.as_ref().map_or(0, |v| v[i]),
                        c.as_ref().map_or(0, |v| v[i]),
                    ]
                })
                .collect(),
        ),
    };
    for f in &view.features {
        let c = column(batch, &f.name, origin)?;
        let target = f.dtype.to_arrow();
        if !f.allow_non_finite {
            if let Some((row, x)) = first_non_finite(c.as_ref()) {
                return Err(origin.err(
                    row,
                    &f.name,
                    format!(
                        "{x} is not a finite number (write a missing value as null, or \
                         declare the feature with allow_non_finite: true)"
                    ),
                ));
            }
        }
        if c.data_type() == &target {
            cols.push(c.clone());
            continue;
        }
        let src = DType::from_arrow(c.data_type());
        if !src.as_ref().is_some_and(|s| f.dtype.accepts(s)) {
            return Err(Error::Data(format!(
                "{}: column '{}' has type {} but the feature is declared {}",
                origin.file,
                f.name,
                c.data_type(),
                f.dtype
            )));
        }
        let casted = cast_with_options(
            c,
            &target,
            &CastOptions {
                safe: false,
                ..Default::default()
            },
        )
        .map_err(|e| origin.err(0, &f.name, e))?;
        cols.push(casted);
    }
    cols.push(Arc::new(dates));
    Ok(NormalizedBatch {
        batch: RecordBatch::try_new(schema, cols)?,
        sub_micros,
        file: origin.file.to_string(),
        first_row: origin.first_row,
    })
}

/// The day (days since the epoch) of a Date32 partition value written `YYYY-MM-DD`.
pub fn parse_day(s: &str) -> Option<i32> {
    parse_timestamp(s).ok().map(|t| (t / MICROS_PER_DAY) as i32)
}
