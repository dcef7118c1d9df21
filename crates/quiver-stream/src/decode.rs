//! Events of a stream decoded into a feature view's stored rows, one bad event never
//! stopping the others: an event that is not one JSON object, lacks a key, holds a
//! value of the wrong type or fails the write path's validation (a null key, an event
//! time that does not parse or lies in the future, a non-finite number) becomes a
//! [`DeadLetter`] with the reason, and the batch goes on without it.
//!
//! The fast path decodes the whole batch at once (arrow's JSON tape decoder) and
//! validates it at once; only when that fails are the events taken one by one to find
//! the bad ones.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, TimeUnit};
use quiver::write::{validate, Input};
use quiver_core::model::{EpochUnit, ResolvedView};
use quiver_core::Timestamp;
use quiver_offline::normalize::{key_arrow_type, NormalizedBatch, Origin};

/// An event that could not be written, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// The event's index in the batch given to [`EventDecoder::decode`].
    pub index: usize,
    pub reason: String,
}

/// What a batch of events decoded to.
#[derive(Debug)]
pub struct Decoded {
    /// The valid events as the view's stored rows (`None` when none was valid).
    pub rows: Option<NormalizedBatch>,
    /// For each row of `rows`, the index of its event.
    pub events: Vec<usize>,
    pub dead: Vec<DeadLetter>,
}

/// Decodes a stream's JSON events into one feature view's stored rows.
#[derive(Clone, Debug)]
pub struct EventDecoder {
    view: ResolvedView,
    /// The JSON fields read (keys, features, times), as decoded.
    schema: SchemaRef,
    timestamp_field: String,
    created_field: Option<String>,
    unit: Option<EpochUnit>,
}

impl EventDecoder {
    /// A decoder of events carrying `view`'s source columns, whose event (and creation)
    /// time fields are named `timestamp_field` (`created_field`), written as text or,
    /// when `unit` is given, as numbers since the epoch.
    pub fn new(
        view: ResolvedView,
        timestamp_field: &str,
        created_field: Option<&str>,
        unit: Option<EpochUnit>,
    ) -> Self {
        let time_type = match unit {
            Some(_) => DataType::Int64,
            None => DataType::Utf8,
        };
        let mut fields: Vec<Field> = view
            .join_keys
            .iter()
            .map(|k| Field::new(&k.name, key_arrow_type(&k.dtype), true))
            .collect();
        fields.push(Field::new(timestamp_field, time_type.clone(), true));
        if let Some(c) = created_field {
            fields.push(Field::new(c, time_type, true));
        }
        fields.extend(
            view.features
                .iter()
                .map(|f| Field::new(&f.name, f.dtype.to_arrow(), true)),
        );
        EventDecoder {
            schema: Arc::new(Schema::new(fields)),
            view,
            timestamp_field: timestamp_field.to_string(),
            created_field: created_field.map(str::to_string),
            unit,
        }
    }

    /// The view the decoder writes.
    pub fn view(&self) -> &ResolvedView {
        &self.view
    }

    /// Decodes and validates `events` (each one JSON object); `origin` names where they
    /// came from in error messages, `not_after` is the latest event time accepted.
    pub fn decode(&self, events: &[&[u8]], origin: &str, not_after: Timestamp) -> Decoded {
        let mut dead = Vec::new();
        let all: Vec<usize> = (0..events.len()).collect();
        // Decoded rows and their events: all at once, else one by one.
        let (batch, kept) = match self.decode_json(events) {
            Ok(b) if b.num_rows() == events.len() => (Some(b), all),
            _ => {
                let mut parts = Vec::new();
                let mut kept = Vec::new();
                for (i, e) in events.iter().enumerate() {
                    match self.decode_json(std::slice::from_ref(e)) {
                        Ok(b) if b.num_rows() == 1 => {
                            parts.push(b);
                            kept.push(i);
                        }
                        Ok(b) => dead.push(DeadLetter {
                            index: i,
                            reason: format!("expected one JSON object, found {}", b.num_rows()),
                        }),
                        Err(reason) => dead.push(DeadLetter { index: i, reason }),
                    }
                }
                let batch = (!parts.is_empty()).then(|| {
                    arrow::compute::concat_batches(&self.schema, &parts)
                        .expect("batches of one schema concatenate")
                });
                (batch, kept)
            }
        };
        let Some(batch) = batch else {
            return Decoded {
                rows: None,
                events: Vec::new(),
                dead,
            };
        };
        let batch = match self.times_to_micros(batch) {
            Ok(b) => b,
            // A time out of range in some event: found below, one by one.
            Err(_) => return self.validate_each(events, origin, not_after, dead),
        };
        match self.validate(&batch, origin, not_after) {
            Ok(rows) => Decoded {
                rows: Some(rows),
                events: kept,
                dead,
            },
            Err(_) => self.validate_each(events, origin, not_after, dead),
        }
    }

    /// The slow path: each event decoded and validated alone.
    fn validate_each(
        &self,
        events: &[&[u8]],
        origin: &str,
        not_after: Timestamp,
        mut dead: Vec<DeadLetter>,
    ) -> Decoded {
        let known: Vec<usize> = dead.iter().map(|d| d.index).collect();
        let mut parts = Vec::new();
        let mut kept = Vec::new();
        for (i, e) in events.iter().enumerate() {
            if known.contains(&i) {
                continue;
            }
            let one = self
                .decode_json(std::slice::from_ref(e))
                .and_then(|b| self.times_to_micros(b))
                .and_then(|b| {
                    self.validate(&b, origin, not_after)
                        .map_err(|e| e.to_string())
                });
            match one {
                Ok(rows) => {
                    parts.push(rows);
                    kept.push(i);
                }
                Err(reason) => dead.push(DeadLetter { index: i, reason }),
            }
        }
        dead.sort_by_key(|d| d.index);
        let rows = (!parts.is_empty()).then(|| {
            let batches: Vec<RecordBatch> = parts.iter().map(|p| p.batch.clone()).collect();
            NormalizedBatch::from(
                arrow::compute::concat_batches(&batches[0].schema(), &batches)
                    .expect("batches of one schema concatenate"),
            )
        });
        Decoded {
            rows,
            events: kept,
            dead,
        }
    }

    fn decode_json(&self, events: &[&[u8]]) -> Result<RecordBatch, String> {
        // Room for one more row than events: an event holding two values shows as a
        // row too many instead of stopping the decoder.
        let mut decoder = arrow::json::ReaderBuilder::new(self.schema.clone())
            .with_batch_size(events.len() + 1)
            .build_decoder()
            .map_err(|e| e.to_string())?;
        for (i, e) in events.iter().enumerate() {
            let before = decoder.len();
            let mut rest = *e;
            while !rest.is_empty() {
                let used = decoder.decode(rest).map_err(|e| e.to_string())?;
                if used == 0 {
                    break;
                }
                rest = &rest[used..];
            }
            // Separates events: two values without a separator would run together.
            decoder.decode(b"\n").map_err(|e| e.to_string())?;
            // Exactly one row per event, so that rows and events stay paired (an event
            // of two objects beside an empty one would otherwise shift them).
            // (`len` counts a record begun and not finished too: an event cut short
            // would run on into the next one.)
            let added = decoder.len() - before;
            if added != 1 || !rest.is_empty() || decoder.has_partial_record() {
                let found = if rest.is_empty() {
                    added.to_string()
                } else {
                    "more".into()
                };
                return Err(match events.len() {
                    1 => format!("expected one JSON object, found {found}"),
                    _ => format!("event {i}: expected one JSON object, found {found}"),
                });
            }
        }
        Ok(decoder
            .flush()
            .map_err(|e| e.to_string())?
            .unwrap_or_else(|| RecordBatch::new_empty(self.schema.clone())))
    }

    /// Numeric times (with a unit) as microsecond timestamps, for the write path.
    fn times_to_micros(&self, batch: RecordBatch) -> Result<RecordBatch, String> {
        let Some(unit) = self.unit else {
            return Ok(batch);
        };
        let mut fields: Vec<Field> = batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        let mut cols: Vec<ArrayRef> = batch.columns().to_vec();
        let names = std::iter::once(&self.timestamp_field).chain(self.created_field.as_ref());
        for name in names {
            let i = batch
                .schema()
                .index_of(name)
                .expect("decoded with the schema");
            let ints = cols[i].as_primitive::<Int64Type>();
            let (mul, div) = match unit {
                EpochUnit::S => (1_000_000, 1),
                EpochUnit::Ms => (1_000, 1),
                EpochUnit::Us => (1, 1),
                EpochUnit::Ns => (1, 1_000),
            };
            let mut out = Vec::with_capacity(ints.len());
            for r in 0..ints.len() {
                out.push(if ints.is_null(r) {
                    None
                } else {
                    let v = ints.value(r);
                    // Nanoseconds round up to the microsecond, as text times do.
                    let micros = if div > 1 {
                        v.div_euclid(div) + i64::from(v.rem_euclid(div) != 0)
                    } else {
                        v.checked_mul(mul).ok_or_else(|| {
                            format!("field '{name}': {v} is out of range for a time in {unit:?}")
                        })?
                    };
                    Some(micros)
                });
            }
            cols[i] = Arc::new(arrow::array::TimestampMicrosecondArray::from(out));
            fields[i] = Field::new(name, DataType::Timestamp(TimeUnit::Microsecond, None), true);
        }
        RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).map_err(|e| e.to_string())
    }

    fn validate(
        &self,
        batch: &RecordBatch,
        origin: &str,
        not_after: Timestamp,
    ) -> quiver::Result<NormalizedBatch> {
        let input = Input {
            timestamp_field: &self.timestamp_field,
            created_field: self.created_field.as_deref(),
            origin: Origin {
                file: origin,
                first_row: 1,
            },
            not_after,
        };
        validate(&self.view, batch, &input)
    }
}
