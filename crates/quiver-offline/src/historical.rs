//! Historical retrieval: point-in-time-correct training sets (DESIGN §2, §5).
//!
//! For every input row (join keys, a time `T`, any other columns) and every requested
//! view, the value is the view's row with the greatest (event_timestamp,
//! created_timestamp) at or before `T`, null when it is older than `T − ttl` or absent.
//! Rows keep their input order; none is dropped or duplicated.
//!
//! The join runs from one of two sides (see [`quiver_core::pit`] and `view_columns`).
//! From the labels' side, in two passes over a view's files: the first reads only keys
//! and times and keeps the rows that can answer some label; the second reads feature
//! columns only of the files holding winners and gathers them. From the rows' side,
//! when the labels are no fewer than the rows and grouped by key: every file's keys,
//! times and requested features are read, the rows indexed, each label searched.

use std::sync::Arc;

use arrow::array::PrimitiveArray;
use arrow::array::{new_null_array, Array, ArrayRef, AsArray, BooleanArray, RecordBatch};
use arrow::buffer::{BooleanBuffer, Buffer, NullBuffer};
use arrow::compute::{concat_batches, interleave};
use arrow::datatypes::{
    ArrowPrimitiveType, DataType, Field, Float32Type, Float64Type, Int32Type, Int64Type, Schema,
    SchemaRef, TimestampMicrosecondType,
};
use parquet::arrow::arrow_reader::ArrowReaderMetadata;
use quiver_core::contract::NO_CREATED;
use quiver_core::encoding::encode_key_part;
use quiver_core::model::ResolvedView;
use quiver_core::pit::{
    BytesKeyIndex, Candidate, IntKeyIndex, LabelIndex, RowIndex, NO_GROUP, NO_MATCH,
};
use quiver_core::time::Timestamp;
use rayon::prelude::*;

use crate::normalize::{
    cast_key, created_at, table_schema, to_timestamps, Origin, Rounding, CREATED_TIMESTAMP,
    EVENT_TIMESTAMP,
};
use crate::store::{
    data_file_footer, read_data_file_columns, DataFile, OfflineStore, READ_BATCH_ROWS,
};
use crate::{Error, Result};

/// The features wanted from one view, with their output column names.
#[derive(Clone, Debug)]
pub struct ViewRequest {
    pub view: ResolvedView,
    /// (feature name, output column name)
    pub features: Vec<(String, String)>,
}

/// A historical retrieval request.
#[derive(Clone, Debug)]
pub struct HistoricalRequest {
    /// The entity rows: join keys, the time column and anything else (passed through).
    pub entities: Vec<RecordBatch>,
    /// The name of the time column in `entities`.
    pub timestamp_column: String,
    pub views: Vec<ViewRequest>,
}

/// Phase timings of a retrieval, as `debug` events of `quiver_offline`
/// (`QUIVER_LOG=quiver_offline=debug`).
pub(crate) struct Phases {
    last: std::time::Instant,
}

impl Phases {
    pub(crate) fn new() -> Self {
        Phases {
            last: std::time::Instant::now(),
        }
    }
    pub(crate) fn mark(&mut self, what: &str) {
        tracing::debug!(
            phase = what,
            seconds = self.last.elapsed().as_secs_f64(),
            rss_mib = resident_mib(),
            "historical retrieval"
        );
        self.last = std::time::Instant::now();
    }
}

/// The process's resident memory in MiB, now and at its peak (Linux; zeros elsewhere):
/// for the phase timings.
fn resident_mib() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
            / 1024
    };
    format!("{} (peak {})", field("VmRSS:"), field("VmHWM:"))
}

/// Reads columns `cols` of one data file, split between rayon's threads: each unit of
/// work — a row group, or part of its columns when the row groups are fewer than the
/// threads — is decoded by its own reader from the file's `footer` (parsed once), so
/// that one large file or row group does not hold up a pass. The batches hold `cols`
/// in order.
fn read_file_columns(
    file: &DataFile,
    footer: &ArrowReaderMetadata,
    schema: &SchemaRef,
    cols: &[&str],
) -> Result<Vec<RecordBatch>> {
    let row_groups = footer.metadata().num_row_groups();
    let units_per_group = (2 * rayon::current_num_threads())
        .div_ceil(row_groups.max(1))
        .clamp(1, cols.len().max(1));
    let per_unit = cols.len().div_ceil(units_per_group).max(1);
    let units: Vec<(usize, &[&str])> = (0..row_groups)
        .flat_map(|rg| cols.chunks(per_unit).map(move |part| (rg, part)))
        .collect();
    let parts: Vec<Vec<RecordBatch>> = units
        .par_iter()
        .map(|&(rg, part)| read_data_file_columns(&file.path, footer, schema, part, &[rg]))
        .collect::<Result<_>>()?;
    // Each row group's units (consecutive, columns in order) batch alike: batch b of
    // the row group is batch b of each unit, side by side.
    let per_group = cols.chunks(per_unit).len().max(1);
    let mut out = Vec::new();
    for (group, group_units) in parts.chunks(per_group).zip(units.chunks(per_group)) {
        let n = group.first().map_or(0, Vec::len);
        if group.iter().any(|p| p.len() != n) {
            return Err(Error::Data(format!(
                "{}: the columns' batches differ",
                file.path.display()
            )));
        }
        for b in 0..n {
            let mut fields: Vec<Field> = Vec::with_capacity(cols.len());
            let mut arrays: Vec<ArrayRef> = Vec::with_capacity(cols.len());
            for (unit, &(_, part)) in group.iter().zip(group_units) {
                for c in part {
                    let a = unit[b].column_by_name(c).ok_or_else(|| {
                        Error::Data(format!("{}: no column '{c}'", file.path.display()))
                    })?;
                    fields.push(Field::new(*c, a.data_type().clone(), true));
                    arrays.push(a.clone());
                }
            }
            out.push(RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)?);
        }
    }
    Ok(out)
}

/// Bits of a location that hold the row within its batch.
const BATCH_ROW_BITS: u32 = 16;
const _: () = assert!(READ_BATCH_ROWS <= 1 << BATCH_ROW_BITS);

/// A candidate row's location: its file, its batch in the file (as read), its row in
/// the batch — in the order of rows in the file, for the snapshot rule's tie-break,
/// and addressing the row in the feature columns' batches (read alike) without a
/// search.
fn location(file: usize, batch: usize, row: usize) -> u64 {
    ((file as u64) << 32) | ((batch as u64) << BATCH_ROW_BITS) | row as u64
}

/// (batch, row) of a location's low half.
fn batch_row(low: u32) -> (usize, usize) {
    (
        (low >> BATCH_ROW_BITS) as usize,
        (low & ((1 << BATCH_ROW_BITS) - 1)) as usize,
    )
}

/// A file's winning rows, each as (its location's low half, its label), in label order.
type Winners = [(u32, u32)];

/// A file's winners' values of one primitive column (`sources`: its batches), in
/// `wanted` order: the fast path of pass 2, with no index list built for them.
fn gather<T: ArrowPrimitiveType>(sources: &[ArrayRef], wanted: &Winners) -> ArrayRef {
    let sources: Vec<&PrimitiveArray<T>> = sources.iter().map(|a| a.as_primitive::<T>()).collect();
    let values: Vec<T::Native> = wanted
        .iter()
        .map(|&(low, _)| {
            let (b, r) = batch_row(low);
            sources[b].value(r)
        })
        .collect();
    let nulls = sources.iter().any(|a| a.null_count() > 0).then(|| {
        NullBuffer::from_iter(wanted.iter().map(|&(low, _)| {
            let (b, r) = batch_row(low);
            sources[b].is_valid(r)
        }))
    });
    Arc::new(PrimitiveArray::<T>::new(values.into(), nulls))
}

/// Labels per task of [`scatter`] (a multiple of 64: tasks own whole validity words).
const SCATTER_CHUNK: usize = 64 * 1024;

/// Writes each part's values (in `wanted` order, which is label order) to their
/// labels' positions: the fast path for primitive columns, in parallel over ranges of
/// labels.
fn scatter<'a, T: ArrowPrimitiveType>(
    n: usize,
    parts: impl Iterator<Item = (&'a dyn Array, &'a Winners)>,
) -> ArrayRef {
    let parts: Vec<(&PrimitiveArray<T>, &Winners)> =
        parts.map(|(a, w)| (a.as_primitive::<T>(), w)).collect();
    let mut values = vec![T::Native::default(); n];
    let mut valid = vec![0u64; n.div_ceil(64)];
    values
        .par_chunks_mut(SCATTER_CHUNK)
        .zip(valid.par_chunks_mut(SCATTER_CHUNK / 64))
        .enumerate()
        .for_each(|(chunk, (values, valid))| {
            let first = (chunk * SCATTER_CHUNK) as u32;
            let end = first as u64 + values.len() as u64;
            for &(a, wanted) in &parts {
                let from = wanted.partition_point(|&(_, label)| label < first);
                let to = from + wanted[from..].partition_point(|&(_, l)| (l as u64) < end);
                let nulls = a.nulls().filter(|n| n.null_count() > 0);
                for (pos, &(_, label)) in (from..to).zip(&wanted[from..to]) {
                    if nulls.is_none_or(|n| n.is_valid(pos)) {
                        let at = (label - first) as usize;
                        values[at] = a.value(pos);
                        valid[at / 64] |= 1 << (at % 64);
                    }
                }
            }
        });
    let valid = BooleanBuffer::new(Buffer::from_vec(valid), 0, n);
    Arc::new(PrimitiveArray::<T>::new(
        values.into(),
        Some(NullBuffer::new(valid)),
    ))
}

/// Rows per block of the first pass (see there).
const PASS1_BLOCK: usize = 256;

enum KeyLookup {
    Int(IntKeyIndex),
    Bytes(BytesKeyIndex),
}

impl OfflineStore {
    /// Builds the training set: the entity rows with one column per requested feature.
    /// The tables' file lists are read first; the join itself (Parquet decoding, index
    /// building, gathering) runs on the blocking pool and rayon.
    pub async fn historical(&self, req: HistoricalRequest) -> Result<RecordBatch> {
        let mut files = Vec::with_capacity(req.views.len());
        for v in &req.views {
            files.push(self.data_files(&v.view).await?);
        }
        crate::blocking(move || join(&req, &files)).await
    }
}

/// The point-in-time join of `req` over each view's data `files`.
fn join(req: &HistoricalRequest, files: &[Vec<DataFile>]) -> Result<RecordBatch> {
    let Some(first) = req.entities.first() else {
        return Err(Error::Invalid("the entity rows are empty".into()));
    };
    let labels = concat_batches(&first.schema(), &req.entities)?;
    let schema = labels.schema();
    // Output names must be unique and distinct from the input columns.
    let mut names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    for v in &req.views {
        for (_, out) in &v.features {
            if names.contains(&out.as_str()) {
                return Err(Error::Invalid(format!(
                    "output column '{out}' appears twice (a feature name shared by several \
                         views, or an input column): use full feature names (view__feature)"
                )));
            }
            names.push(out);
        }
    }
    let ts_col = labels
        .column_by_name(&req.timestamp_column)
        .ok_or_else(|| {
            Error::Invalid(format!(
                "the entity rows have no '{}' column (columns: {})",
                req.timestamp_column,
                schema
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
    let origin = Origin {
        file: "entity rows",
        first_row: 1,
    };
    // Label times round down, feature rows' times up: no row from after a label's
    // time reaches it, however fine the input's precision.
    let times = to_timestamps(
        ts_col.as_ref(),
        &req.timestamp_column,
        &origin,
        true,
        Rounding::Down,
    )?;
    let times: &[Timestamp] = times.values();

    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    let mut columns: Vec<ArrayRef> = labels.columns().to_vec();
    for (v, files) in req.views.iter().zip(files) {
        let cols = view_columns(v, files, &labels, times)?;
        for ((_, out), col) in v.features.iter().zip(cols) {
            fields.push(Field::new(out, col.data_type().clone(), true));
            columns.push(col);
        }
    }
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

/// The labels' columns of a view's join keys (as the keys' types), and which labels
/// have a null key (such a label matches nothing).
struct LabelKeys {
    cols: Vec<ArrayRef>,
    nulls: Option<NullBuffer>,
}

impl LabelKeys {
    /// Whether label `i` has no null key.
    fn valid(&self, i: usize) -> bool {
        self.nulls.as_ref().is_none_or(|n| n.is_valid(i))
    }
}

/// The labels' keys for `view`'s join keys.
fn label_keys(view: &ResolvedView, labels: &RecordBatch) -> Result<LabelKeys> {
    let key_cols: Vec<ArrayRef> = view
        .join_keys
        .iter()
        .map(|k| {
            let c = labels.column_by_name(&k.name).ok_or_else(|| {
                Error::Invalid(format!(
                    "the entity rows have no column '{}', a join key of feature view '{}'",
                    k.name, view.name
                ))
            })?;
            cast_key(c, k)
        })
        .collect::<Result<_>>()?;
    let nulls = key_cols.iter().fold(None, |acc: Option<NullBuffer>, c| {
        NullBuffer::union(acc.as_ref(), c.logical_nulls().as_ref())
    });
    Ok(LabelKeys {
        cols: key_cols,
        nulls,
    })
}

/// Whether `key_cols` are one 64-bit integer key (looked up without encoding).
fn int_key(key_cols: &[ArrayRef]) -> Option<&PrimitiveArray<Int64Type>> {
    match key_cols {
        [k] if k.data_type() == &DataType::Int64 => Some(k.as_primitive::<Int64Type>()),
        _ => None,
    }
}

/// The key index and label index of the labels (`keys`, `times`).
fn label_index(keys: &LabelKeys, times: &[Timestamp]) -> Result<(KeyLookup, LabelIndex)> {
    let n = times.len();
    let valid = |i: usize| keys.valid(i);
    Ok(if let Some(int_keys) = int_key(&keys.cols) {
        let (idx, labels) = LabelIndex::from_int_labels(int_keys.values(), times, valid);
        (KeyLookup::Int(idx), labels)
    } else {
        let mut idx = BytesKeyIndex::new();
        let mut buf = Vec::new();
        let mut groups = vec![NO_GROUP; n];
        for (i, g) in groups.iter_mut().enumerate() {
            if valid(i) {
                buf.clear();
                for c in &keys.cols {
                    encode_key_part(c.as_ref(), i, &mut buf)?;
                }
                *g = idx.insert(&buf);
            }
        }
        let labels = LabelIndex::new(&groups, times, idx.len());
        (KeyLookup::Bytes(idx), labels)
    })
}

/// What a join reads of one view's data files: the files, their footers (parsed
/// once), the stored schema, the key and time columns (pass 1) and the requested
/// features with their declared types.
struct ViewFiles<'a> {
    view: &'a ResolvedView,
    files: &'a [DataFile],
    footers: Vec<ArrowReaderMetadata>,
    schema: SchemaRef,
    keys_and_times: Vec<&'a str>,
    feature_names: Vec<&'a str>,
    feature_types: Vec<DataType>,
}

impl ViewFiles<'_> {
    /// File `fi`'s join keys, event and creation times, in batches.
    fn keys(&self, fi: usize) -> Result<Vec<RecordBatch>> {
        let f = &self.files[fi];
        read_file_columns(f, &self.footers[fi], &self.schema, &self.keys_and_times)
    }

    /// File `fi`'s requested features, in the batches [`Self::keys`] reads.
    fn features(&self, fi: usize) -> Result<Vec<RecordBatch>> {
        let f = &self.files[fi];
        read_file_columns(f, &self.footers[fi], &self.schema, &self.feature_names)
    }

    /// Feature `c` of `batches` as its declared type.
    fn sources(&self, batches: &[RecordBatch], c: usize) -> Result<Vec<ArrayRef>> {
        let dt = &self.feature_types[c];
        batches
            .iter()
            .map(|b| {
                let a = b.column(c);
                Ok(if a.data_type() == dt {
                    a.clone()
                } else {
                    arrow::compute::cast(a, dt)?
                })
            })
            .collect()
    }

    /// The rows in all files.
    fn rows(&self) -> usize {
        self.footers
            .iter()
            .map(|f| usize::try_from(f.metadata().file_metadata().num_rows()).unwrap_or(0))
            .sum()
    }
}

/// `req`'s feature columns for the labels (`times`: their times), from the view's data
/// `files`. When the labels are no fewer than the rows and grouped by key, the rows
/// are indexed and each label searched ([`by_rows`]); otherwise the labels are indexed
/// and the rows streamed past them ([`by_labels`]), so that memory follows the labels
/// and the rows that can answer them, not the whole history.
fn view_columns(
    req: &ViewRequest,
    files: &[DataFile],
    labels: &RecordBatch,
    times: &[Timestamp],
) -> Result<Vec<ArrayRef>> {
    let view = &req.view;
    let feature_types: Vec<DataType> = req
        .features
        .iter()
        .map(|(f, _)| {
            view.features
                .iter()
                .find(|x| &x.name == f)
                .map(|x| x.dtype.to_arrow())
                .ok_or_else(|| {
                    Error::Invalid(format!("feature view '{}' has no feature '{f}'", view.name))
                })
        })
        .collect::<Result<_>>()?;
    if files.len() >= 1 << 31 {
        return Err(Error::Invalid("too many data files".into()));
    }
    let mut keys_and_times: Vec<&str> = view.join_keys.iter().map(|k| k.name.as_str()).collect();
    keys_and_times.extend([EVENT_TIMESTAMP, CREATED_TIMESTAMP]);
    let footers = files
        .par_iter()
        .map(|f| data_file_footer(&f.path))
        .collect::<Result<_>>()?;
    let data = ViewFiles {
        view,
        files,
        footers,
        schema: table_schema(view),
        keys_and_times,
        feature_names: req.features.iter().map(|(f, _)| f.as_str()).collect(),
        feature_types,
    };
    let keys = label_keys(view, labels)?;
    if rows_side_pays(&data, &keys, times.len()) {
        by_rows(&data, &keys, times)
    } else {
        by_labels(&data, &keys, times)
    }
}

/// Whether the join from the rows' side ([`by_rows`]) pays: when the labels are no
/// fewer than the rows (it holds every row's keys, times and requested features, so
/// its memory is bounded by the labels as the other side's is) and mostly come grouped
/// by key, as an entity frame built entity by entity does — consecutive labels then
/// search the same part of the rows' index. Labels in no particular order (e.g.
/// sorted by time) would miss the cache at every search and gather, and the labels'
/// side, which sorts them, is faster (measured in BENCHMARKS.md, "Seventh pass").
fn rows_side_pays(data: &ViewFiles, keys: &LabelKeys, n: usize) -> bool {
    data.rows() <= n && 2 * labels_after_their_key(&keys.cols) >= n
}

/// How many labels have the same (non-null) join key as the label before them (none
/// counted for a key type the comparison kernel does not take).
fn labels_after_their_key(key_cols: &[ArrayRef]) -> usize {
    let n = key_cols.first().map_or(0, |c| c.len());
    if n < 2 {
        return 0;
    }
    let mut same: Option<BooleanArray> = None;
    for c in key_cols {
        let Ok(eq) = arrow::compute::kernels::cmp::eq(&c.slice(1, n - 1), &c.slice(0, n - 1))
        else {
            return 0;
        };
        same = Some(match same {
            None => eq,
            Some(s) => match arrow::compute::and(&s, &eq) {
                Ok(both) => both,
                Err(_) => return 0,
            },
        });
    }
    same.map_or(0, |s| s.true_count())
}

/// Checks that a file's batches (as read) fit in a location.
fn check_batches(file: &DataFile, batches: &[RecordBatch]) -> Result<()> {
    if batches.len() > 1 << (32 - BATCH_ROW_BITS) {
        return Err(Error::Data(format!(
            "{}: too many rows in one data file",
            file.path.display()
        )));
    }
    Ok(())
}

/// The error for feature columns read in other batches than the keys.
fn batches_differ(file: &DataFile) -> Error {
    Error::Data(format!(
        "{}: the feature columns' batches differ from the keys'",
        file.path.display()
    ))
}

/// The join from the rows' side ([`RowIndex`]): every file's keys and times are read,
/// the rows indexed by key, and each label's row found by a search among its key's
/// rows — while every file's requested features are decoded on the threads left (a
/// file without winners too: reading them meanwhile is what makes this side fast) —
/// then the feature columns gathered in label order. Memory: every row's keys, times
/// and requested features (the rows being no more than the labels) and one location
/// per label.
fn by_rows(data: &ViewFiles, labels: &LabelKeys, times: &[Timestamp]) -> Result<Vec<ArrayRef>> {
    let mut phases = Phases::new();
    let (found, features) = rayon::join(
        || -> Result<Vec<u64>> {
            let keys: Vec<Vec<RecordBatch>> = (0..data.files.len())
                .into_par_iter()
                .map(|fi| {
                    let keys = data.keys(fi)?;
                    check_batches(&data.files[fi], &keys)?;
                    Ok(keys)
                })
                .collect::<Result<_>>()?;
            phases.mark("read keys and times (features decoded meanwhile)");
            let found = find_rows(data, &keys, labels, times)?;
            phases.mark("row index and lookup");
            Ok(found)
        },
        || {
            (0..data.files.len())
                .into_par_iter()
                .map(|fi| data.features(fi))
                .collect::<Result<Vec<_>>>()
        },
    );
    let (found, features) = (found?, features?);
    // Each winner's (batch, row) must exist in its file's feature batches.
    let rows: Vec<Vec<usize>> = features
        .iter()
        .map(|f| f.iter().map(RecordBatch::num_rows).collect())
        .collect();
    if let Some(&loc) = found.iter().find(|&&loc| {
        loc != NO_MATCH && {
            let (b, r) = batch_row(loc as u32);
            rows[(loc >> 32) as usize].get(b).is_none_or(|&n| r >= n)
        }
    }) {
        return Err(batches_differ(&data.files[(loc >> 32) as usize]));
    }
    phases.mark("features decoded");

    // Each feature column in label order, from the rows found.
    let out = (0..data.feature_types.len())
        .into_par_iter()
        .map(|c| -> Result<ArrayRef> {
            let sources: Vec<Vec<ArrayRef>> = features
                .iter()
                .map(|f| data.sources(f, c))
                .collect::<Result<_>>()?;
            Ok(match &data.feature_types[c] {
                DataType::Float64 => gather_found::<Float64Type>(&sources, &found),
                DataType::Float32 => gather_found::<Float32Type>(&sources, &found),
                DataType::Int64 => gather_found::<Int64Type>(&sources, &found),
                DataType::Int32 => gather_found::<Int32Type>(&sources, &found),
                dt => {
                    let null = new_null_array(dt, 1);
                    let mut flat: Vec<&dyn Array> = vec![null.as_ref()];
                    let mut first = Vec::with_capacity(sources.len());
                    for file in &sources {
                        first.push(flat.len());
                        flat.extend(file.iter().map(|a| a.as_ref()));
                    }
                    let picks: Vec<(usize, usize)> = found
                        .par_iter()
                        .map(|&loc| {
                            if loc == NO_MATCH {
                                return (0, 0);
                            }
                            let (b, r) = batch_row(loc as u32);
                            (first[(loc >> 32) as usize] + b, r)
                        })
                        .collect();
                    interleave(&flat, &picks)?
                }
            })
        })
        .collect::<Result<Vec<_>>>()?;
    phases.mark("gather");
    Ok(out)
}

/// Each label's row (its location, or [`NO_MATCH`]) among the rows of `keys` (per
/// file, its batches of join keys, event and creation times).
fn find_rows(
    data: &ViewFiles,
    keys: &[Vec<RecordBatch>],
    labels: &LabelKeys,
    times: &[Timestamp],
) -> Result<Vec<u64>> {
    let nkeys = data.view.join_keys.len();
    let ttl = data.view.ttl;
    let batches = || keys.iter().flatten();
    let n_rows: usize = batches().map(RecordBatch::num_rows).sum();
    // The rows' times and locations, in file and batch order.
    let mut row_times: Vec<Timestamp> = Vec::with_capacity(n_rows);
    let mut created: Vec<Timestamp> = Vec::with_capacity(n_rows);
    let mut locs: Vec<u64> = Vec::with_capacity(n_rows);
    for (fi, file) in keys.iter().enumerate() {
        for (bi, b) in file.iter().enumerate() {
            let ts = b.column(nkeys).as_primitive::<TimestampMicrosecondType>();
            let cr = b
                .column(nkeys + 1)
                .as_primitive::<TimestampMicrosecondType>();
            row_times.extend_from_slice(ts.values());
            match cr.null_count() {
                0 => created.extend_from_slice(cr.values()),
                n if n == cr.len() => created.extend(std::iter::repeat_n(NO_CREATED, n)),
                _ => created.extend((0..cr.len()).map(|r| created_at(cr, r))),
            }
            locs.extend((0..b.num_rows()).map(|r| location(fi, bi, r)));
        }
    }
    if let Some(label_keys) = int_key(&labels.cols) {
        let mut row_keys: Vec<i64> = Vec::with_capacity(n_rows);
        for b in batches() {
            row_keys.extend_from_slice(b.column(0).as_primitive::<Int64Type>().values());
        }
        // Stored keys are never null; a null one would match nothing.
        let mut valid: Vec<bool> = Vec::new();
        if batches().any(|b| b.column(0).null_count() > 0) {
            for c in batches().map(|b| b.column(0)) {
                valid.extend((0..c.len()).map(|r| c.is_valid(r)));
            }
        }
        let (lookup, groups) =
            IntKeyIndex::from_labels(&row_keys, |i| valid.is_empty() || valid[i]);
        drop(row_keys);
        let lookup = lookup.hashed();
        let index = RowIndex::new(&groups, &row_times, &created, &locs, lookup.len());
        drop((groups, row_times, created, locs));
        Ok(label_keys
            .values()
            .par_iter()
            .zip(times)
            .enumerate()
            .map(|(i, (&k, &t))| match lookup.get(k) {
                Some(g) if labels.valid(i) => index.lookup(g, t, ttl),
                _ => NO_MATCH,
            })
            .collect())
    } else {
        let mut lookup = BytesKeyIndex::new();
        let mut groups: Vec<u32> = Vec::with_capacity(n_rows);
        let mut buf = Vec::new();
        for b in batches() {
            let cols = &b.columns()[..nkeys];
            for r in 0..b.num_rows() {
                buf.clear();
                for c in cols {
                    encode_key_part(c.as_ref(), r, &mut buf)?;
                }
                groups.push(lookup.insert(&buf));
            }
        }
        let index = RowIndex::new(&groups, &row_times, &created, &locs, lookup.len());
        drop((groups, row_times, created, locs));
        (0..times.len())
            .into_par_iter()
            .map_init(Vec::new, |buf, i| -> Result<u64> {
                if !labels.valid(i) {
                    return Ok(NO_MATCH);
                }
                buf.clear();
                for c in &labels.cols {
                    encode_key_part(c.as_ref(), i, buf)?;
                }
                Ok(lookup
                    .get(buf)
                    .map_or(NO_MATCH, |g| index.lookup(g, times[i], ttl)))
            })
            .collect()
    }
}

/// One primitive feature column in label order: each label's value at its `found`
/// location in `sources` (per file, its batches), null for [`NO_MATCH`] and null
/// values — labels in parallel, values and validity words written in order.
fn gather_found<T: ArrowPrimitiveType>(sources: &[Vec<ArrayRef>], found: &[u64]) -> ArrayRef {
    let sources: Vec<Vec<&PrimitiveArray<T>>> = sources
        .iter()
        .map(|file| file.iter().map(|a| a.as_primitive::<T>()).collect())
        .collect();
    let at = |loc: u64| {
        let (b, r) = batch_row(loc as u32);
        (sources[(loc >> 32) as usize][b], r)
    };
    let values: Vec<T::Native> = found
        .par_iter()
        .map(|&loc| {
            if loc == NO_MATCH {
                T::Native::default()
            } else {
                let (a, r) = at(loc);
                a.value(r)
            }
        })
        .collect();
    let nullable = sources.iter().flatten().any(|a| a.null_count() > 0);
    let valid: Vec<u64> = found
        .par_chunks(64)
        .map(|word| {
            word.iter().enumerate().fold(0u64, |w, (j, &loc)| {
                let ok = loc != NO_MATCH
                    && (!nullable || {
                        let (a, r) = at(loc);
                        a.is_valid(r)
                    });
                w | (ok as u64) << j
            })
        })
        .collect();
    let valid = BooleanBuffer::new(Buffer::from_vec(valid), 0, found.len());
    Arc::new(PrimitiveArray::<T>::new(
        values.into(),
        Some(NullBuffer::new(valid)),
    ))
}

/// The join from the labels' side ([`LabelIndex`]): the labels are indexed, each
/// file's keys and times streamed past them keeping the rows that can answer some
/// label (pass 1), the snapshot rule resolved per label, and the winners' features
/// gathered a file at a time (pass 2).
fn by_labels(data: &ViewFiles, labels: &LabelKeys, times: &[Timestamp]) -> Result<Vec<ArrayRef>> {
    let mut phases = Phases::new();
    let (view, files) = (data.view, data.files);
    let feature_types = &data.feature_types;
    let nkeys = view.join_keys.len();
    let ttl = view.ttl;
    // The labels are indexed (mostly on one thread) while the first files are decoded:
    // their keys and times, and their features too, which pass 2 then need not read
    // (a file holding rows that can answer labels nearly always holds some winners;
    // these are at most one file per thread).
    let head = files.len().min(rayon::current_num_threads());
    let (index, head_batches) = rayon::join(
        || label_index(labels, times),
        || {
            (0..head)
                .into_par_iter()
                .map(|fi| {
                    let (keys, features) = rayon::join(|| data.keys(fi), || data.features(fi));
                    Ok((keys?, features?))
                })
                .collect::<Result<Vec<_>>>()
        },
    );
    let (lookup, label_index) = index?;
    let (head_batches, head_features): (Vec<_>, Vec<_>) = head_batches?.into_iter().unzip();
    let mut decoded: Vec<Option<Vec<RecordBatch>>> = head_features.into_iter().map(Some).collect();
    decoded.resize(files.len(), None);
    phases.mark("label index (the first files decoded meanwhile)");
    let scan = |fi: usize, bi: usize, b: &RecordBatch| -> Result<Vec<Candidate>> {
        let mut out = Vec::new();
        let mut hint = 0usize;
        let mut buf = Vec::new();
        // Rows go in blocks: first every row's group, then the label check. Lookups
        // of one block do not depend on each other, so their cache misses overlap.
        let mut block = [NO_GROUP; PASS1_BLOCK];
        let ts = b.column(nkeys).as_primitive::<TimestampMicrosecondType>();
        let created = b
            .column(nkeys + 1)
            .as_primitive::<TimestampMicrosecondType>();
        let rows = b.num_rows();
        for start in (0..rows).step_by(PASS1_BLOCK) {
            let end = (start + PASS1_BLOCK).min(rows);
            let groups = &mut block[..end - start];
            match &lookup {
                KeyLookup::Int(idx) => {
                    let keys = &b.column(0).as_primitive::<Int64Type>().values()[start..end];
                    for (g, &k) in groups.iter_mut().zip(keys) {
                        *g = idx.find_from(k, &mut hint).unwrap_or(NO_GROUP);
                    }
                }
                KeyLookup::Bytes(idx) => {
                    for (g, r) in groups.iter_mut().zip(start..end) {
                        buf.clear();
                        for k in 0..nkeys {
                            encode_key_part(b.column(k).as_ref(), r, &mut buf)?;
                        }
                        *g = idx.get(&buf).unwrap_or(NO_GROUP);
                    }
                }
            }
            for (&group, r) in groups.iter().zip(start..end) {
                if group == NO_GROUP {
                    continue;
                }
                let t = ts.value(r);
                if let Some(slot) = label_index.slot(group, t, ttl) {
                    out.push(Candidate {
                        slot,
                        ts: t,
                        created: created_at(created, r),
                        loc: location(fi, bi, r),
                    });
                }
            }
        }
        Ok(out)
    };
    let scan_file = |fi: usize, batches: Vec<RecordBatch>| -> Result<Vec<Vec<Candidate>>> {
        check_batches(&files[fi], &batches)?;
        batches
            .par_iter()
            .enumerate()
            .map(|(bi, b)| scan(fi, bi, b))
            .collect()
    };
    let mut candidates: Vec<Vec<Vec<Candidate>>> = head_batches
        .into_par_iter()
        .enumerate()
        .map(|(fi, batches)| scan_file(fi, batches))
        .collect::<Result<_>>()?;
    // Then a file at a time per thread (its columns in parallel, then its batches), so
    // that memory holds a few files' keys and times, not the whole table's.
    candidates.extend(
        (head..files.len())
            .into_par_iter()
            .map(|fi| scan_file(fi, data.keys(fi)?))
            .collect::<Result<Vec<_>>>()?,
    );
    phases.mark("pass 1 (keys, times)");
    let batches: Vec<&[Candidate]> = candidates.iter().flatten().map(Vec::as_slice).collect();
    let locs = label_index.resolve(&batches, ttl);
    drop(batches);
    drop(candidates);
    drop(label_index);
    phases.mark("resolve");

    // Pass 2: gather the winning rows' features, a file at a time per thread (its
    // columns decoded in parallel unless decoded with the first files, its winners
    // picked from its batches).
    let mut counts = vec![0usize; files.len()];
    for &loc in locs.iter().filter(|&&l| l != NO_MATCH) {
        counts[(loc >> 32) as usize] += 1;
    }
    let mut wanted: Vec<Vec<(u32, u32)>> = counts.iter().map(|&c| Vec::with_capacity(c)).collect();
    for (label, &loc) in locs.iter().enumerate() {
        if loc != NO_MATCH {
            wanted[(loc >> 32) as usize].push((loc as u32, label as u32));
        }
    }
    drop(locs);
    let gathered: Vec<Option<Vec<ArrayRef>>> = wanted
        .par_iter()
        .zip(decoded)
        .enumerate()
        .map(|(fi, (want, decoded))| -> Result<Option<Vec<ArrayRef>>> {
            if want.is_empty() {
                return Ok(None);
            }
            let batches = match decoded {
                Some(batches) => batches,
                None => data.features(fi)?,
            };
            // The feature columns are read in the batches pass 1 read the keys in.
            let rows: Vec<usize> = batches.iter().map(RecordBatch::num_rows).collect();
            if !want.iter().all(|&(low, _)| {
                let (b, r) = batch_row(low);
                rows.get(b).is_some_and(|&n| r < n)
            }) {
                return Err(batches_differ(&files[fi]));
            }
            let cols = (0..feature_types.len())
                .into_par_iter()
                .map(|c| -> Result<ArrayRef> {
                    let sources = data.sources(&batches, c)?;
                    Ok(match &feature_types[c] {
                        DataType::Float64 => gather::<Float64Type>(&sources, want),
                        DataType::Float32 => gather::<Float32Type>(&sources, want),
                        DataType::Int64 => gather::<Int64Type>(&sources, want),
                        DataType::Int32 => gather::<Int32Type>(&sources, want),
                        _ => {
                            let sources: Vec<&dyn Array> =
                                sources.iter().map(|a| a.as_ref()).collect();
                            let picks: Vec<(usize, usize)> =
                                want.iter().map(|&(low, _)| batch_row(low)).collect();
                            interleave(&sources, &picks)?
                        }
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(Some(cols))
        })
        .collect::<Result<_>>()?;
    phases.mark("pass 2 (gather)");
    // Each file's winners (in `wanted` order) go to their labels: a scatter for
    // primitive columns; for others an interleave in label order, where one null row
    // stands for no match.
    let n_labels = times.len();
    let out = feature_types
        .par_iter()
        .enumerate()
        .map(|(c, dt)| -> Result<ArrayRef> {
            let parts = || {
                gathered
                    .iter()
                    .zip(&wanted)
                    .filter_map(|(g, w)| g.as_ref().map(|cols| (cols[c].as_ref(), w.as_slice())))
            };
            Ok(match dt {
                DataType::Float64 => scatter::<Float64Type>(n_labels, parts()),
                DataType::Float32 => scatter::<Float32Type>(n_labels, parts()),
                DataType::Int64 => scatter::<Int64Type>(n_labels, parts()),
                DataType::Int32 => scatter::<Int32Type>(n_labels, parts()),
                _ => {
                    let null = new_null_array(dt, 1);
                    let mut sources: Vec<&dyn Array> = Vec::new();
                    let mut index = vec![(0usize, 0usize); n_labels];
                    for (array, w) in parts() {
                        for (pos, &(_, label)) in w.iter().enumerate() {
                            index[label as usize] = (sources.len() + 1, pos);
                        }
                        sources.push(array);
                    }
                    sources.insert(0, null.as_ref());
                    interleave(&sources, &index)?
                }
            })
        })
        .collect::<Result<Vec<_>>>()?;
    phases.mark("assemble");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int64Array, StringArray};
    use parquet::arrow::ArrowWriter;
    use parquet::file::properties::WriterProperties;

    /// Writes `batch` to a Parquet file at `path` in row groups of `group_rows`.
    fn write_parquet(path: &std::path::Path, batch: &RecordBatch, group_rows: usize) {
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(group_rows))
            .build();
        let file = std::fs::File::create(path).unwrap();
        let mut w = ArrowWriter::try_new(file, batch.schema(), Some(props)).unwrap();
        w.write(batch).unwrap();
        w.close().unwrap();
    }

    /// Both sides of the join give the same training set from the same files, whatever
    /// the rule that picks one: three files (one of two row groups), ties in event time
    /// broken by creation time (some null) and by location, a feature stored as
    /// float32 but declared float64 (cast), a string feature, null feature values;
    /// labels with null and unknown keys, in key order and in no order, with a TTL.
    #[test]
    fn both_sides_of_the_join_give_the_same_training_set() {
        use quiver_core::model::{Feature, JoinKey};
        use quiver_core::time::Duration;
        use quiver_core::DType;
        use rand::{Rng, SeedableRng};

        let feature = |name: &str, dtype| Feature {
            name: name.into(),
            dtype,
            description: String::new(),
            allow_non_finite: false,
        };
        let view = ResolvedView {
            name: "v".into(),
            version: 1,
            project: "test".into(),
            entities: vec!["e".into()],
            join_keys: vec![JoinKey {
                name: "k".into(),
                dtype: DType::Int64,
            }],
            features: vec![
                feature("x", DType::Float64),
                feature("s", DType::String),
                feature("n", DType::Int64),
            ],
            ttl: Duration::from_micros(40),
            aggregations: Vec::new(),
            retention: None,
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let dir = tempfile::tempdir().unwrap();
        let mut files = Vec::new();
        let mut next = 0i64;
        for (f, rows) in [3_000usize, 150, 2_500].into_iter().enumerate() {
            let keys: Vec<i64> = (0..rows).map(|_| rng.gen_range(0..300)).collect();
            let ts: Vec<i64> = (0..rows).map(|_| rng.gen_range(0..200)).collect();
            let created: Vec<Option<i64>> = (0..rows)
                .map(|_| rng.gen_bool(0.7).then(|| rng.gen_range(0..3)))
                .collect();
            let ns: Vec<i64> = (next..next + rows as i64).collect();
            next += rows as i64;
            let time = |v: Vec<Option<i64>>| {
                Arc::new(arrow::array::TimestampMicrosecondArray::from(v).with_timezone("UTC"))
                    as ArrayRef
            };
            let stored = RecordBatch::try_from_iter([
                ("k", Arc::new(Int64Array::from(keys)) as ArrayRef),
                ("event_timestamp", time(ts.into_iter().map(Some).collect())),
                ("created_timestamp", time(created)),
                (
                    "x",
                    Arc::new(arrow::array::Float32Array::from_iter(
                        ns.iter().map(|&n| (n % 9 != 0).then_some(n as f32 / 4.0)),
                    )) as ArrayRef,
                ),
                (
                    "s",
                    Arc::new(StringArray::from_iter(
                        ns.iter()
                            .map(|&n| (n % 11 != 0).then(|| format!("row {n}"))),
                    )) as ArrayRef,
                ),
                ("n", Arc::new(Int64Array::from(ns)) as ArrayRef),
            ])
            .unwrap();
            let path = dir.path().join(format!("part-{f}.parquet"));
            write_parquet(&path, &stored, 2_000);
            files.push(DataFile { path, day: None });
        }
        let data = ViewFiles {
            view: &view,
            files: &files,
            footers: files
                .iter()
                .map(|f| data_file_footer(&f.path).unwrap())
                .collect(),
            schema: table_schema(&view),
            keys_and_times: vec!["k", EVENT_TIMESTAMP, CREATED_TIMESTAMP],
            feature_names: vec!["x", "s", "n"],
            feature_types: vec![DataType::Float64, DataType::Utf8, DataType::Int64],
        };
        // 20,000 labels: keys among 320 (some unknown), one in 50 null, times 0..240.
        let mut labels: Vec<(Option<i64>, i64)> = (0..20_000)
            .map(|_| {
                let k = (!rng.gen_bool(0.02)).then(|| rng.gen_range(0..320));
                (k, rng.gen_range(0..240))
            })
            .collect();
        let mut matched_somewhere = false;
        for grouped in [false, true] {
            if grouped {
                labels.sort_by_key(|l| l.0);
            }
            let batch = RecordBatch::try_from_iter([(
                "k",
                Arc::new(Int64Array::from_iter(labels.iter().map(|l| l.0))) as ArrayRef,
            )])
            .unwrap();
            let times: Vec<Timestamp> = labels.iter().map(|l| l.1).collect();
            let keys = label_keys(&view, &batch).unwrap();
            let rows = by_rows(&data, &keys, &times).unwrap();
            let by_label = by_labels(&data, &keys, &times).unwrap();
            assert_eq!(rows.len(), 3);
            for (c, (a, b)) in rows.iter().zip(&by_label).enumerate() {
                assert_eq!(a.data_type(), &data.feature_types[c]);
                assert_eq!(a.as_ref(), b.as_ref(), "feature {c}, grouped {grouped}");
            }
            let n = rows[2].as_primitive::<Int64Type>();
            matched_somewhere |= n.null_count() < n.len() / 2;
            for (i, l) in labels.iter().enumerate() {
                if l.0.is_none() {
                    assert!(n.is_null(i), "label {i} has a null key");
                }
            }
        }
        assert!(
            matched_somewhere,
            "most labels found no row: the test proves little"
        );
    }

    /// Repeats count where the whole key equals the previous label's, never on nulls.
    #[test]
    fn labels_after_their_key_counts_repeats_of_the_whole_key() {
        let a: ArrayRef = Arc::new(Int64Array::from(vec![
            Some(1),
            Some(1),
            Some(2),
            None,
            None,
            Some(2),
        ]));
        let b: ArrayRef = Arc::new(StringArray::from(vec!["x", "y", "y", "z", "z", "z"]));
        assert_eq!(labels_after_their_key(std::slice::from_ref(&a)), 1);
        assert_eq!(labels_after_their_key(std::slice::from_ref(&b)), 3);
        assert_eq!(labels_after_their_key(&[a, b]), 0);
        assert_eq!(labels_after_their_key(&[]), 0);
    }

    /// A file of several row groups (and several batches in one of them), its columns
    /// stored in another order than asked and one asked for missing: the split read
    /// gives the rows in file order, the columns in the order asked, the missing one
    /// as nulls — for any number of columns asked.
    #[test]
    fn split_reads_give_the_files_rows_and_the_columns_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("part.parquet");
        let n = 150_000i64;
        let stored = RecordBatch::try_from_iter([
            (
                "b",
                Arc::new(Float64Array::from_iter_values(
                    (0..n).map(|i| i as f64 / 2.0),
                )) as ArrayRef,
            ),
            (
                "a",
                Arc::new(Int64Array::from_iter_values(0..n)) as ArrayRef,
            ),
            (
                "s",
                Arc::new(StringArray::from_iter_values(
                    (0..n).map(|i| format!("r{i}")),
                )) as ArrayRef,
            ),
        ])
        .unwrap();
        // Row groups of 70,000, 70,000 and 10,000 rows; batches of 64k within them.
        write_parquet(&path, &stored, 70_000);
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, false),
            Field::new("b", DataType::Float64, true),
            Field::new("s", DataType::Utf8, true),
            Field::new("late", DataType::Float64, true),
        ]));
        let file = DataFile { path, day: None };
        let asks: [&[&str]; 4] = [
            &["a"],
            &["a", "b"],
            &["s", "late", "a"],
            &["late", "b", "s", "a"],
        ];
        for cols in asks {
            let footer = data_file_footer(&file.path).unwrap();
            let batches = read_file_columns(&file, &footer, &schema, cols).unwrap();
            assert!(batches.len() >= 3, "{cols:?}: {} batches", batches.len());
            let names: Vec<String> = batches[0]
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect();
            assert_eq!(names, cols, "{cols:?}");
            let all = concat_batches(&batches[0].schema(), &batches).unwrap();
            assert_eq!(all.num_rows(), n as usize, "{cols:?}");
            for (i, c) in cols.iter().enumerate() {
                let col = all.column(i);
                match *c {
                    "a" => assert_eq!(
                        col.as_primitive::<Int64Type>().values().to_vec(),
                        (0..n).collect::<Vec<_>>()
                    ),
                    "b" => assert!(col
                        .as_primitive::<Float64Type>()
                        .values()
                        .iter()
                        .enumerate()
                        .all(|(r, &v)| v == r as f64 / 2.0)),
                    "s" => assert!(col
                        .as_string::<i32>()
                        .iter()
                        .enumerate()
                        .all(|(r, v)| v == Some(format!("r{r}").as_str()))),
                    _ => assert_eq!(col.null_count(), n as usize, "{c}"),
                }
            }
        }
        // A column neither in the file nor nullable in the view is an error naming it.
        let footer = data_file_footer(&file.path).unwrap();
        let err = read_file_columns(&file, &footer, &schema, &["a", "nope"]).unwrap_err();
        assert!(err.to_string().contains("no column 'nope'"), "{err}");
    }
}
