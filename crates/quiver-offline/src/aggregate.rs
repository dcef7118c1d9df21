//! Training-set values of aggregated feature views (DESIGN §2 "Aggregation windows"):
//! for each label row at time T, each requested aggregation over its window
//! `[align(T − w, hop), T)` of the key's raw events, computed by the aggregation
//! engine's [`evaluate_key`] — tiles built once per key and slid over, the same IRs
//! every other path uses.

use std::collections::HashMap;

use rayon::prelude::*;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float32Type, Float64Type, Int32Type, Int64Type};
use quiver_core::agg::window::{evaluate_key, EventRef, WindowedFeature};
use quiver_core::agg::{Input, Order};
use quiver_core::encoding::encode_key_part;
use quiver_core::model::ResolvedView;
use quiver_core::time::Timestamp;
use quiver_core::value::{values_to_array, Value};

use crate::normalize::{cast_key, stored_version, to_timestamps, Origin, Rounding};
use crate::{Error, OfflineStore, Result};

impl OfflineStore {
    /// The values of `features` ((output feature, output column) pairs) of aggregated
    /// view `view` for every row of `labels` (join keys and `timestamp_column`), in row
    /// order: one column per feature. A window whose value cannot be given (an integer
    /// sum beyond int64, a distinct set over its bound) is null.
    pub async fn aggregate(
        &self,
        labels: &RecordBatch,
        timestamp_column: &str,
        view: &ResolvedView,
        features: &[(String, String)],
    ) -> Result<Vec<(String, ArrayRef)>> {
        let ts_col = labels.column_by_name(timestamp_column).ok_or_else(|| {
            Error::Invalid(format!(
                "the entity rows have no '{timestamp_column}' column"
            ))
        })?;
        let origin = Origin {
            file: "entity rows",
            first_row: 1,
        };
        let times = to_timestamps(
            ts_col.as_ref(),
            timestamp_column,
            &origin,
            true,
            Rounding::Down,
        )?;
        let times: Vec<Timestamp> = times.values().to_vec();
        let specs = features
            .iter()
            .map(|(f, _)| {
                view.aggregations
                    .iter()
                    .find(|a| &a.name == f)
                    .ok_or_else(|| {
                        Error::Invalid(format!(
                            "aggregated feature view '{}' has no feature '{f}'",
                            view.name
                        ))
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        let reach = specs
            .iter()
            .map(|a| a.window.micros() + a.hop.micros())
            .max()
            .unwrap_or(0);
        let (Some(&t0), Some(&t1)) = (times.iter().min(), times.iter().max()) else {
            return Ok(Vec::new());
        };
        let events = self.read_range(view, t0.saturating_sub(reach), t1).await?;
        let view = view.clone();
        let labels = labels.clone();
        let specs: Vec<_> = specs.into_iter().cloned().collect();
        let names: Vec<String> = features.iter().map(|(_, o)| o.clone()).collect();
        crate::blocking(move || compute(&view, &labels, &times, &specs, &names, &events)).await
    }
}

/// How an event column's values become engine inputs.
pub fn input_at<'a>(col: &'a dyn Array, row: usize) -> Input<'a> {
    if col.is_null(row) {
        return Input::Null;
    }
    match col.data_type() {
        DataType::Int64 => Input::Int(col.as_primitive::<Int64Type>().value(row)),
        DataType::Int32 => Input::Int(col.as_primitive::<Int32Type>().value(row) as i64),
        DataType::Float64 => Input::Float(col.as_primitive::<Float64Type>().value(row)),
        DataType::Float32 => Input::Float(col.as_primitive::<Float32Type>().value(row) as f64),
        DataType::Boolean => Input::Int(col.as_boolean().value(row) as i64),
        DataType::Timestamp(_, _) => Input::Int(
            col.as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                .value(row),
        ),
        DataType::Utf8 => Input::Bytes(col.as_string::<i32>().value(row).as_bytes()),
        DataType::Binary => Input::Bytes(col.as_binary::<i32>().value(row)),
        _ => Input::Null,
    }
}

fn compute(
    view: &ResolvedView,
    labels: &RecordBatch,
    times: &[Timestamp],
    specs: &[quiver_core::model::ResolvedAggregation],
    names: &[String],
    events: &[RecordBatch],
) -> Result<Vec<(String, ArrayRef)>> {
    let nkeys = view.join_keys.len();
    // The label rows of each key, by the key's encoded bytes.
    let mut key_cols = Vec::with_capacity(nkeys);
    for k in &view.join_keys {
        let c = labels.column_by_name(&k.name).ok_or_else(|| {
            Error::Invalid(format!(
                "the entity rows have no '{}' column (a join key of feature view '{}')",
                k.name, view.name
            ))
        })?;
        key_cols.push(cast_key(c, k)?);
    }
    let mut by_key: HashMap<Vec<u8>, Vec<usize>> = HashMap::new();
    let mut buf = Vec::new();
    for row in 0..labels.num_rows() {
        buf.clear();
        for c in &key_cols {
            encode_key_part(c.as_ref(), row, &mut buf)?;
        }
        by_key.entry(buf.clone()).or_default().push(row);
    }
    // The events of those keys: (batch, row), by key.
    let mut events_by_key: HashMap<Vec<u8>, Vec<(u32, u32)>> = HashMap::new();
    for (bi, b) in events.iter().enumerate() {
        for row in 0..b.num_rows() {
            buf.clear();
            for k in 0..nkeys {
                encode_key_part(b.column(k).as_ref(), row, &mut buf)?;
            }
            if let Some(list) = events_by_key.get_mut(buf.as_slice()) {
                list.push((bi as u32, row as u32));
            } else if by_key.contains_key(buf.as_slice()) {
                events_by_key.insert(buf.clone(), vec![(bi as u32, row as u32)]);
            }
        }
    }
    // The stored columns the aggregations read: their index in the event batches.
    let column_index = |name: &Option<String>| -> usize {
        name.as_ref()
            .and_then(|c| view.features.iter().position(|f| &f.name == c))
            .map(|i| nkeys + 2 + i)
            .unwrap_or(usize::MAX)
    };
    let read: Vec<usize> = {
        let mut v: Vec<usize> = specs.iter().map(|a| column_index(&a.column)).collect();
        v.sort_unstable();
        v.dedup();
        v.retain(|&i| i != usize::MAX);
        v
    };
    let features: Vec<WindowedFeature> = specs
        .iter()
        .map(|a| {
            let dtype = a
                .column
                .as_ref()
                .and_then(|c| view.features.iter().find(|f| &f.name == c))
                .map(|f| f.dtype.clone());
            let aggregation = a
                .aggregation(dtype.as_ref())
                .map_err(|p| Error::Invalid(format!("aggregation '{}': {}", a.name, p.message)))?;
            let ci = column_index(&a.column);
            Ok(WindowedFeature {
                aggregation,
                column: read.iter().position(|&i| i == ci).unwrap_or(usize::MAX),
                window: a.window,
                hop: a.hop,
            })
        })
        .collect::<Result<_>>()?;

    // Keys are independent: evaluated in parallel, each giving its label rows' values.
    let keys: Vec<(&Vec<u8>, &Vec<usize>)> = by_key.iter().collect();
    let width = read.len();
    let per_key: Vec<(Vec<usize>, Vec<Value>)> = keys
        .par_iter()
        .map(|(key, rows)| {
            let empty: Vec<(u32, u32)> = Vec::new();
            let mut evs = events_by_key.get(*key).unwrap_or(&empty).clone();
            let order_of = |&(bi, r): &(u32, u32)| -> Order {
                stored_version(&events[bi as usize], nkeys, r as usize).into()
            };
            evs.sort_by_key(order_of);
            let mut inputs: Vec<Input<'_>> = Vec::with_capacity(evs.len() * width);
            for &(bi, r) in &evs {
                let b = &events[bi as usize];
                for &ci in &read {
                    inputs.push(input_at(b.column(ci).as_ref(), r as usize));
                }
            }
            let refs: Vec<EventRef<'_>> = evs
                .iter()
                .enumerate()
                .map(|(i, e)| EventRef {
                    order: order_of(e),
                    values: &inputs[i * width..(i + 1) * width],
                })
                .collect();
            let mut label_rows = (*rows).clone();
            label_rows.sort_by_key(|&r| (times[r], r));
            let label_times: Vec<Timestamp> = label_rows.iter().map(|&r| times[r]).collect();
            // Label-major: values[li * nf + fi].
            let nf = features.len();
            let mut values = vec![Value::Null; label_rows.len() * nf];
            evaluate_key(&features, &refs, &label_times, |li, fi, v| {
                values[li * nf + fi] = v.unwrap_or(Value::Null);
            });
            (label_rows, values)
        })
        .collect();
    let mut out: Vec<Vec<Value>> = vec![vec![Value::Null; labels.num_rows()]; specs.len()];
    let nf = features.len();
    for (rows, mut values) in per_key {
        for (li, &row) in rows.iter().enumerate() {
            for (fi, col) in out.iter_mut().enumerate() {
                col[row] = std::mem::replace(&mut values[li * nf + fi], Value::Null);
            }
        }
    }
    let mut columns = Vec::with_capacity(specs.len());
    for ((values, f), name) in out.iter().zip(&features).zip(names) {
        let array = values_to_array(values, &f.aggregation.output_dtype())?;
        columns.push((name.clone(), Arc::clone(&array)));
    }
    Ok(columns)
}
