//! Training-set values of aggregated feature views (DESIGN §2 "Aggregation windows"):
//! for each label row at time T, each requested aggregation over its window
//! `[align(T − w, hop), T)` of the key's raw events.
//!
//! Columnar throughout: label rows and events are grouped by key once (dense key ids
//! — by direct address for one int64 key over a narrow range, else by a hash map —
//! then counting sorts, and each key's run sorted by time), and the labels answered by the
//! aggregation engine — its range kernels ([`quiver_core::agg::range`], one pass per
//! window and column, chunks of keys in parallel) for counts, sums, means, extremes and first/last
//! over int64 and float64 columns, its tiles ([`evaluate_key`], keys in parallel) for
//! every other function. Nothing is allocated per row.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch};
use arrow::datatypes::{
    DataType, Float32Type, Float64Type, Int32Type, Int64Type, TimestampMicrosecondType,
};
use hashbrown::HashMap;
use quiver_core::agg::range::{self, ranged, Column, Keys, RangeFeature, Typed, Values};
use quiver_core::agg::window::{evaluate_key, EventRef, WindowedFeature};
use quiver_core::agg::{Input, Order};
use quiver_core::encoding::encode_key_part;
use quiver_core::model::ResolvedView;
use quiver_core::time::Timestamp;
use quiver_core::value::{values_to_array, Value};
use rayon::prelude::*;

use crate::normalize::{cast_key, created_at, to_timestamps, Origin, Rounding};
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
        let mut phases = crate::historical::Phases::new();
        let events = self.read_range(view, t0.saturating_sub(reach), t1).await?;
        phases.mark("aggregations: read events");
        let view = view.clone();
        let labels = labels.clone();
        let specs: Vec<_> = specs.into_iter().cloned().collect();
        let names: Vec<String> = features.iter().map(|(_, o)| o.clone()).collect();
        crate::blocking(move || compute(&view, &labels, &times, &specs, &names, events)).await
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

/// A key id no label row has.
const NONE: u32 = u32::MAX;

/// Join-key values (their encoded bytes) to dense key ids, for keys other than one
/// int64 ([`Ids::of_int`]).
struct KeyIndex(HashMap<Box<[u8]>, u32>);

impl KeyIndex {
    /// The index of the label rows' keys (ids in order of first appearance) and each
    /// row's id.
    fn of_labels(cols: &[ArrayRef]) -> Result<(KeyIndex, Vec<u32>)> {
        let rows = cols.first().map_or(0, |c| c.len());
        let mut ids = Vec::with_capacity(rows);
        let mut map: HashMap<Box<[u8]>, u32> = HashMap::new();
        let mut buf = Vec::new();
        for row in 0..rows {
            buf.clear();
            for c in cols {
                encode_key_part(c.as_ref(), row, &mut buf)?;
            }
            let id = match map.get(buf.as_slice()) {
                Some(&id) => id,
                None => {
                    let id = map.len() as u32;
                    map.insert(buf.as_slice().into(), id);
                    id
                }
            };
            ids.push(id);
        }
        Ok((KeyIndex(map), ids))
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    /// The key ids of a batch of stored events ([`NONE`] for keys no label row has).
    fn of_events(&self, batch: &RecordBatch, nkeys: usize) -> Result<Vec<u32>> {
        let mut buf = Vec::new();
        (0..batch.num_rows())
            .map(|row| {
                buf.clear();
                for k in 0..nkeys {
                    encode_key_part(batch.column(k).as_ref(), row, &mut buf)?;
                }
                Ok(self.0.get(buf.as_slice()).copied().unwrap_or(NONE))
            })
            .collect()
    }
}

/// Items grouped by key id: `offsets[k]..offsets[k + 1]` of the result are key `k`'s
/// items, in their order. Item `i` (of `ids`) is `item(part, row, i)`, where
/// `starts[part] + row == i` (`starts`: where each part of the items begins, and their
/// count last). Items with id [`NONE`] are left out.
///
/// A two-pass radix partition, so that no pass writes to random places of a large
/// array: the items' indices are first appended to one of ~256 runs of keys (a
/// sequential stream each), then each run — whose items' places span a few MiB — is
/// laid out by key, runs in parallel.
fn group_by_key<T: Default + Clone + Send>(
    ids: &[u32],
    keys: usize,
    starts: &[usize],
    item: impl Fn(usize, usize, usize) -> T + Sync,
) -> (Vec<usize>, Vec<T>) {
    let mut offsets = vec![0usize; keys + 1];
    for &k in ids {
        if k != NONE {
            offsets[k as usize + 1] += 1;
        }
    }
    for k in 0..keys {
        offsets[k + 1] += offsets[k];
    }
    // Runs of 2^shift keys.
    let shift = (usize::BITS - keys.leading_zeros()).saturating_sub(8);
    let runs = (keys >> shift) + 1;
    let run_start = |r: usize| offsets[(r << shift).min(keys)];
    let mut cursor: Vec<usize> = (0..runs).map(run_start).collect();
    let mut by_run = vec![0u32; offsets[keys]];
    for (i, &k) in ids.iter().enumerate() {
        if k != NONE {
            let r = (k >> shift) as usize;
            by_run[cursor[r]] = i as u32;
            cursor[r] += 1;
        }
    }
    let mut out = vec![T::default(); offsets[keys]];
    let mut parts: Vec<(usize, &mut [T])> = Vec::with_capacity(runs);
    let mut rest = out.as_mut_slice();
    for r in 0..runs {
        let len = run_start(r + 1) - run_start(r);
        let (head, tail) = std::mem::take(&mut rest).split_at_mut(len);
        parts.push((r, head));
        rest = tail;
    }
    parts.into_par_iter().for_each(|(r, part)| {
        let (k0, k1) = ((r << shift).min(keys), ((r + 1) << shift).min(keys));
        let base = offsets[k0];
        let mut at: Vec<usize> = offsets[k0..k1].iter().map(|o| o - base).collect();
        // The run's items in index order: their part (batch) only moves forward.
        let mut p = 0;
        for &i in &by_run[base..offsets[k1]] {
            let i = i as usize;
            while starts[p + 1] <= i {
                p += 1;
            }
            let slot = &mut at[ids[i] as usize - k0];
            part[*slot] = item(p, i - starts[p], i);
            *slot += 1;
        }
    });
    (offsets, out)
}

/// Sorts each key's slice of `items` (grouped by `offsets`), keys in parallel.
fn sort_each_key<T: Ord + Send>(items: &mut [T], offsets: &[usize]) {
    let mut slices = Vec::with_capacity(offsets.len().saturating_sub(1));
    let mut rest = items;
    for w in offsets.windows(2) {
        let (head, tail) = rest.split_at_mut(w[1] - w[0]);
        slices.push(head);
        rest = tail;
    }
    slices
        .par_iter_mut()
        .with_min_len(1024)
        .for_each(|s| s.sort_unstable());
}

/// The event columns the features read, in the keys' event order.
enum Sorted {
    /// Only validity is read.
    None,
    Int(Vec<i64>),
    Float(Vec<f64>),
}

fn compute(
    view: &ResolvedView,
    labels: &RecordBatch,
    times: &[Timestamp],
    specs: &[quiver_core::model::ResolvedAggregation],
    names: &[String],
    events: Vec<RecordBatch>,
) -> Result<Vec<(String, ArrayRef)>> {
    let nkeys = view.join_keys.len();
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
    // Which features the range kernels compute, and what each column must hold for them.
    let kinds: Vec<Option<(Option<Typed>, Typed)>> =
        features.iter().map(|f| ranged(&f.aggregation)).collect();
    let mut column_kind: Vec<Option<Option<Typed>>> = vec![None; read.len()];
    for (f, k) in features.iter().zip(&kinds) {
        if let (Some((input, _)), Some(slot)) = (k, column_kind.get_mut(f.column)) {
            *slot = Some(slot.flatten().or(*input));
        }
    }
    let ranged_features: Vec<RangeFeature> = features
        .iter()
        .zip(&kinds)
        .filter(|(_, k)| k.is_some())
        .map(|(f, _)| RangeFeature {
            aggregation: f.aggregation.clone(),
            column: f.column,
            window: f.window,
            hop: f.hop,
        })
        .collect();
    let tiled_features: Vec<WindowedFeature> = features
        .iter()
        .zip(&kinds)
        .filter(|(_, k)| k.is_none())
        .map(|(f, _)| f.clone())
        .collect();

    // Label rows and events by key, each key's labels by (time, row) and events by
    // (event time, creation time). Positions are held in u32.
    let total: usize = events.iter().map(|b| b.num_rows()).sum();
    if total >= u32::MAX as usize || labels.num_rows() >= u32::MAX as usize {
        return Err(Error::Invalid(format!(
            "feature view '{}': a training set over {total} events and {} label rows \
             is beyond what one request takes (fewer than 2^32 of each); split the \
             entity rows by time",
            view.name,
            labels.num_rows()
        )));
    }
    let mut phases = crate::historical::Phases::new();
    let ids = match key_cols.as_slice() {
        [k] if k.data_type() == &DataType::Int64 && k.null_count() == 0 => {
            Ids::of_int(k.as_primitive::<Int64Type>().values(), &events)
        }
        _ => Ids::hashed(&key_cols, &events, nkeys)?,
    };
    let g = group(ids, times, &events, nkeys);
    let flat = concat_columns(&events, &read, view, nkeys)?;
    let event_bytes: usize = events.iter().map(|b| b.get_array_memory_size()).sum();
    drop(events);
    // Worth a pass over the allocator's arenas only after large inputs.
    if event_bytes > 64 << 20 {
        release_freed_memory();
    }
    phases.mark("aggregations: group by key");
    let Grouped {
        label_offsets,
        label_times,
        label_rows,
        event_offsets,
        ts,
        created,
        perm,
    } = g;
    // The columns the range kernels read, gathered into that order.
    let sorted: Vec<(Sorted, Vec<bool>)> = flat
        .par_iter()
        .zip(&column_kind)
        .map(|(col, kind)| match kind {
            None => (Sorted::None, Vec::new()),
            Some(kind) => {
                let valid: Vec<bool> = match col.nulls() {
                    None => vec![true; perm.len()],
                    Some(n) => perm.iter().map(|&e| n.is_valid(e as usize)).collect(),
                };
                let values = match kind {
                    None => Sorted::None,
                    Some(Typed::Int) => {
                        let v = col.as_primitive::<Int64Type>().values();
                        Sorted::Int(perm.iter().map(|&e| v[e as usize]).collect())
                    }
                    Some(Typed::Float) => {
                        let v = col.as_primitive::<Float64Type>().values();
                        Sorted::Float(perm.iter().map(|&e| v[e as usize]).collect())
                    }
                };
                (values, valid)
            }
        })
        .collect();
    phases.mark("aggregations: gather columns");
    let flat: Vec<ArrayRef> = if tiled_features.is_empty() {
        Vec::new()
    } else {
        flat
    };

    let rows = labels.num_rows();
    let keys_view = Keys {
        event_ts: &ts,
        event_created: &created,
        event_offsets: &event_offsets,
        label_ts: &label_times,
        label_offsets: &label_offsets,
        label_rows: &label_rows,
    };
    // The range kernels' features: one pass per window and column.
    let columns: Vec<Column<'_>> = sorted
        .iter()
        .map(|(values, valid)| Column {
            values: match values {
                Sorted::None => Values::None,
                Sorted::Int(v) => Values::Int(v),
                Sorted::Float(v) => Values::Float(v),
            },
            valid,
        })
        .collect();
    let mut ranged_out = if ranged_features.is_empty() {
        Vec::new()
    } else {
        range::evaluate(&keys_view, &columns, &ranged_features)
    }
    .into_iter();
    phases.mark("aggregations: range kernels");
    // The others from tiles, keys in parallel, in label order; then in row order.
    let mut tiled_out = tiled(&keys_view, &flat, &perm, &tiled_features).into_iter();
    let mut out = Vec::with_capacity(features.len());
    for ((f, k), name) in features.iter().zip(&kinds).zip(names) {
        let array: ArrayRef = match k {
            Some(_) => match ranged_out.next().expect("one per ranged feature") {
                range::Output::Int { values, nulls } => {
                    Arc::new(Int64Array::new(values.into(), nulls))
                }
                range::Output::Float { values, nulls } => {
                    Arc::new(Float64Array::new(values.into(), nulls))
                }
            },
            None => {
                let sorted = tiled_out.next().expect("one per tiled feature");
                let mut v = vec![Value::Null; rows];
                for (x, &r) in sorted.into_iter().zip(&label_rows) {
                    v[r as usize] = x;
                }
                values_to_array(&v, &f.aggregation.output_dtype())?
            }
        };
        out.push((name.clone(), array));
    }
    phases.mark("aggregations: tiled features, arrays");
    Ok(out)
}

/// Gives the memory of freed inputs back to the system. The event batches are many
/// mid-sized buffers that the C allocator keeps (fragmented) after they are freed: at M
/// scale ~0.35 GiB that would otherwise count in the peak when the outputs are
/// allocated. glibc only; elsewhere nothing.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // Safety: malloc_trim only returns free pages of the allocator's heaps to the
    // system; it takes no pointers and is thread-safe.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Label rows and events grouped by key: key `k`'s labels are
/// `label_offsets[k]..label_offsets[k + 1]` of `label_times`/`label_rows` (by time,
/// then row), its events `event_offsets[k]..event_offsets[k + 1]` of `ts`/`created`/
/// `perm` (by event time, then creation time; `perm`: the event's index in the
/// batches' concatenation). Events of keys no label has are left out.
struct Grouped {
    label_offsets: Vec<usize>,
    label_times: Vec<Timestamp>,
    label_rows: Vec<u32>,
    event_offsets: Vec<usize>,
    ts: Vec<Timestamp>,
    created: Vec<Timestamp>,
    perm: Vec<u32>,
}

/// One value per event of `events` (the batches' concatenation), each batch's part
/// filled by `fill(batch, its part)`, batches in parallel.
fn per_event<T: Clone + Send>(
    events: &[RecordBatch],
    zero: T,
    fill: impl Fn(&RecordBatch, &mut [T]) + Sync,
) -> Vec<T> {
    let n = events.iter().map(|b| b.num_rows()).sum();
    let mut out = vec![zero; n];
    let mut parts: Vec<(&RecordBatch, &mut [T])> = Vec::with_capacity(events.len());
    let mut rest = out.as_mut_slice();
    for b in events {
        let (head, tail) = std::mem::take(&mut rest).split_at_mut(b.num_rows());
        parts.push((b, head));
        rest = tail;
    }
    parts.into_par_iter().for_each(|(b, part)| fill(b, part));
    out
}

/// Dense key ids of the label rows' keys (`0..keys`) and each label row's and event's
/// id (an event's is [`NONE`] when no label row has its key).
struct Ids {
    keys: usize,
    labels: Vec<u32>,
    events: Vec<u32>,
}

impl Ids {
    /// For one int64 join key (column 0 of the events): ids by direct address when the
    /// label keys span a narrow range (ids in key order), else by a hash map.
    fn of_int(keys: &[i64], events: &[RecordBatch]) -> Ids {
        let (Some(&lo), Some(&hi)) = (keys.iter().min(), keys.iter().max()) else {
            return Ids {
                keys: 0,
                labels: Vec::new(),
                events: per_event(events, NONE, |_, _| {}),
            };
        };
        let span = (hi as i128 - lo as i128 + 1) as u128;
        let event_keys = |b: &RecordBatch| b.column(0).as_primitive::<Int64Type>().values().clone();
        if span <= (4 * keys.len()).max(1 << 20) as u128 {
            let span = span as usize;
            let mut slot = vec![NONE; span];
            for &k in keys {
                slot[(k - lo) as usize] = 0;
            }
            let mut next = 0u32;
            for s in slot.iter_mut().filter(|s| **s == 0) {
                *s = next;
                next += 1;
            }
            let id = |k: i64| -> u32 {
                let d = k.wrapping_sub(lo) as u64;
                if d < span as u64 {
                    slot[d as usize]
                } else {
                    NONE
                }
            };
            Ids {
                keys: next as usize,
                labels: keys.par_iter().map(|&k| id(k)).collect(),
                events: per_event(events, NONE, |b, part| {
                    for (o, &k) in part.iter_mut().zip(event_keys(b).iter()) {
                        *o = id(k);
                    }
                }),
            }
        } else {
            let mut map: HashMap<i64, u32> = HashMap::with_capacity(keys.len() / 2);
            let labels = keys
                .iter()
                .map(|&k| {
                    let n = map.len() as u32;
                    *map.entry(k).or_insert(n)
                })
                .collect();
            Ids {
                keys: map.len(),
                labels,
                events: per_event(events, NONE, |b, part| {
                    for (o, k) in part.iter_mut().zip(event_keys(b).iter()) {
                        *o = map.get(k).copied().unwrap_or(NONE);
                    }
                }),
            }
        }
    }

    /// For any join keys: a hash index of their encoded bytes.
    fn hashed(key_cols: &[ArrayRef], events: &[RecordBatch], nkeys: usize) -> Result<Ids> {
        let (index, labels) = KeyIndex::of_labels(key_cols)?;
        let events = events
            .par_iter()
            .map(|b| index.of_events(b, nkeys))
            .collect::<Result<Vec<_>>>()?
            .concat();
        Ok(Ids {
            keys: index.len(),
            labels,
            events,
        })
    }
}

/// [`Grouped`] from key ids: label rows and events grouped by counting sorts (the two
/// side by side), then each key's run sorted, keys in parallel.
fn group(ids: Ids, times: &[Timestamp], events: &[RecordBatch], nkeys: usize) -> Grouped {
    let Ids {
        keys,
        labels,
        events: event_ids,
    } = ids;
    // Labels and events side by side: each a counting sort by key, then each key's run
    // sorted — labels by (time, row), events by (time, creation, index).
    let ((label_offsets, by_time), (event_offsets, by_order)) = rayon::join(
        || {
            let (offsets, mut by_time) =
                group_by_key(&labels, keys, &[0, times.len()], |_, r, _| {
                    (times[r], r as u32)
                });
            drop(labels);
            sort_each_key(&mut by_time, &offsets);
            (offsets, by_time)
        },
        || {
            let mut starts = vec![0];
            for b in events {
                starts.push(starts.last().expect("0") + b.num_rows());
            }
            let columns: Vec<_> = events
                .iter()
                .map(|b| {
                    (
                        b.column(nkeys).as_primitive::<TimestampMicrosecondType>(),
                        b.column(nkeys + 1)
                            .as_primitive::<TimestampMicrosecondType>(),
                    )
                })
                .collect();
            let (offsets, mut by_order) = group_by_key(&event_ids, keys, &starts, |b, r, e| {
                let (ts, created) = columns[b];
                (ts.value(r), created_at(created, r), e as u32)
            });
            drop(event_ids);
            sort_each_key(&mut by_order, &offsets);
            (offsets, by_order)
        },
    );
    Grouped {
        label_offsets,
        label_times: by_time.par_iter().map(|p| p.0).collect(),
        label_rows: by_time.par_iter().map(|p| p.1).collect(),
        event_offsets,
        ts: by_order.par_iter().map(|p| p.0).collect(),
        created: by_order.par_iter().map(|p| p.1).collect(),
        perm: by_order.par_iter().map(|p| p.2).collect(),
    }
}

/// Each read column of the events as one array (typed as stored when there are none).
fn concat_columns(
    events: &[RecordBatch],
    read: &[usize],
    view: &ResolvedView,
    nkeys: usize,
) -> Result<Vec<ArrayRef>> {
    read.iter()
        .map(|&i| {
            let parts: Vec<&dyn Array> = events.iter().map(|b| b.column(i).as_ref()).collect();
            Ok(match parts.as_slice() {
                [] => arrow::array::new_empty_array(&view.features[i - nkeys - 2].dtype.to_arrow()),
                _ => arrow::compute::concat(&parts)?,
            })
        })
        .collect()
}

/// The values of features only tiles compute, per key from its events (`flat`: the
/// read columns, `perm`: each sorted event's index in them), keys in parallel: one
/// buffer per feature, in label order.
fn tiled(
    keys: &Keys<'_>,
    flat: &[ArrayRef],
    perm: &[u32],
    features: &[WindowedFeature],
) -> Vec<Vec<Value>> {
    if features.is_empty() {
        return Vec::new();
    }
    let n = keys.label_ts.len();
    let mut outputs: Vec<Vec<Value>> = features.iter().map(|_| vec![Value::Null; n]).collect();
    let bounds = range::key_chunks(
        keys.label_offsets,
        keys.event_offsets,
        rayon::current_num_threads() * 16,
    );
    // Each chunk of keys gets its slice of every output.
    let mut chunks: Vec<(std::ops::Range<usize>, Vec<&mut [Value]>)> = bounds
        .windows(2)
        .map(|w| (w[0]..w[1], Vec::with_capacity(features.len())))
        .collect();
    for out in outputs.iter_mut() {
        let mut rest = out.as_mut_slice();
        for (keys_of, slices) in chunks.iter_mut() {
            let len = keys.label_offsets[keys_of.end] - keys.label_offsets[keys_of.start];
            let (head, tail) = std::mem::take(&mut rest).split_at_mut(len);
            slices.push(head);
            rest = tail;
        }
    }
    let width = flat.len();
    chunks.par_iter_mut().for_each(|(keys_of, slices)| {
        let base = keys.label_offsets[keys_of.start];
        let mut inputs: Vec<Input<'_>> = Vec::new();
        for k in keys_of.clone() {
            let (l0, l1) = (keys.label_offsets[k], keys.label_offsets[k + 1]);
            let (e0, e1) = (keys.event_offsets[k], keys.event_offsets[k + 1]);
            inputs.clear();
            for &e in &perm[e0..e1] {
                inputs.extend(flat.iter().map(|c| input_at(c.as_ref(), e as usize)));
            }
            let refs: Vec<EventRef<'_>> = (e0..e1)
                .enumerate()
                .map(|(i, j)| EventRef {
                    order: Order {
                        event_ts: keys.event_ts[j],
                        created_ts: keys.event_created[j],
                        position: 0,
                    },
                    values: &inputs[i * width..(i + 1) * width],
                })
                .collect();
            let at = l0 - base;
            evaluate_key(features, &refs, &keys.label_ts[l0..l1], |li, fi, v| {
                slices[fi][at + li] = v.unwrap_or(Value::Null);
            });
        }
    });
    outputs
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The radix grouping equals a stable sort by key id, whatever the number of
        /// keys (one run per key below 256, several keys per run above), items left out
        /// for NONE, and items in several parts.
        #[test]
        fn grouping_by_key_is_a_stable_sort_by_key(
            keys in prop::sample::select(vec![1usize, 3, 255, 256, 5000, 70_000]),
            raw in prop::collection::vec((any::<u32>(), 0u8..10), 0..3000),
            cut in 0usize..3000,
        ) {
            let ids: Vec<u32> = raw
                .iter()
                .map(|&(k, none)| if none == 0 { NONE } else { k % keys as u32 })
                .collect();
            let cut = cut.min(ids.len());
            let starts = [0, cut, ids.len()];
            let (offsets, items) = group_by_key(&ids, keys, &starts, |p, r, i| {
                assert_eq!(starts[p] + r, i, "part {p}, row {r}");
                i as u32
            });
            let mut want: Vec<u32> = (0..ids.len() as u32).filter(|&i| ids[i as usize] != NONE).collect();
            want.sort_by_key(|&i| ids[i as usize]);
            prop_assert_eq!(&items, &want);
            prop_assert_eq!(offsets.len(), keys + 1);
            for k in 0..keys {
                for &i in &items[offsets[k]..offsets[k + 1]] {
                    prop_assert_eq!(ids[i as usize], k as u32);
                }
            }
        }
    }
}
