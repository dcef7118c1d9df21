//! Reading and writing Parquet and CSV files.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use quiver_core::model::FileFormat;

use crate::{io_err, Error, Result};

/// Expands a source path (a file, a directory, or a glob) into files, sorted.
pub fn expand(path: &Path) -> Result<Vec<PathBuf>> {
    let s = path.to_string_lossy();
    let mut files = if s.contains(['*', '?', '[']) {
        glob::glob(&s)
            .map_err(|e| Error::Invalid(format!("invalid glob {s:?}: {e}")))?
            .filter_map(|p| p.ok())
            .filter(|p| p.is_file())
            .collect::<Vec<_>>()
    } else if path.is_dir() {
        let mut out = Vec::new();
        walk(path, &mut out).map_err(io_err(path.display()))?;
        out
    } else if path.is_file() {
        vec![path.to_path_buf()]
    } else {
        return Err(Error::Invalid(format!("{} does not exist", path.display())));
    };
    files.retain(|p| FileFormat::from_path(&p.to_string_lossy()).is_some() || !path.is_dir());
    files.sort();
    if files.is_empty() {
        return Err(Error::Invalid(format!(
            "{} matches no Parquet or CSV file",
            path.display()
        )));
    }
    Ok(files)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with('.') || name.starts_with('_') {
            continue;
        }
        if p.is_dir() {
            walk(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

/// The format of a file: `given`, or from its extension.
pub fn format_of(path: &Path, given: Option<FileFormat>) -> Result<FileFormat> {
    given
        .or_else(|| FileFormat::from_path(&path.to_string_lossy()))
        .ok_or_else(|| {
            Error::Invalid(format!(
                "cannot tell the format of {}: use a .parquet or .csv extension or set `format`",
                path.display()
            ))
        })
}

/// Rows of a CSV file read to infer its column types.
const CSV_INFER_ROWS: usize = 1000;

/// The schema of a file. CSV columns are typed by inference over the first rows; a
/// column is inferred to be integers only when every value read is an integer written
/// in its plain form (see [`is_plain_integer`]), else it stays text, so key values like
/// `007` and `7` stay two entities.
pub fn read_schema(path: &Path, format: FileFormat) -> Result<SchemaRef> {
    let file = open_nonempty(path)?;
    let schema = match format {
        FileFormat::Parquet => ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|e| {
                Error::Data(format!(
                    "{}: not a readable Parquet file: {e}",
                    path.display()
                ))
            })?
            .schema()
            .clone(),
        FileFormat::Csv => {
            let (schema, _) = arrow::csv::reader::Format::default()
                .with_header(true)
                .infer_schema(file, Some(CSV_INFER_ROWS))
                .map_err(|e| Error::Data(format!("{}: {e}", path.display())))?;
            Arc::new(plain_integers_only(path, schema)?)
        }
    };
    unique_columns(path, &schema)?;
    Ok(schema)
}

/// Opens a data file, which must not be empty: a 0-byte file (a truncated copy, an
/// export that failed) has no header and no schema, and is an error, not zero rows.
fn open_nonempty(path: &Path) -> Result<File> {
    let file = File::open(path).map_err(io_err(path.display()))?;
    let len = file.metadata().map_err(io_err(path.display()))?.len();
    if len == 0 {
        return Err(Error::Data(format!(
            "{}: the file is empty (0 bytes)",
            path.display()
        )));
    }
    Ok(file)
}

/// Column names must be unique: with two columns of one name, which one a key, a time
/// or a feature reads would be a guess.
fn unique_columns(path: &Path, schema: &Schema) -> Result<()> {
    let fields = schema.fields();
    for (i, f) in fields.iter().enumerate() {
        if let Some(j) = fields[..i].iter().position(|g| g.name() == f.name()) {
            return Err(Error::Data(format!(
                "{}: column '{}' appears twice (columns {} and {}); column names must be \
                 unique",
                path.display(),
                f.name(),
                j + 1,
                i + 1
            )));
        }
    }
    Ok(())
}

/// Whether `s` is an integer as it prints: an optional `-`, then digits without
/// leading zeros (`0` alone), within i64. Text like `007`, `+7`, ` 7` or `-0` is not:
/// parsed, it would become the same number as another spelling.
pub fn is_plain_integer(s: &str) -> bool {
    let digits = s.strip_prefix('-').unwrap_or(s);
    !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (s == "0" || !digits.starts_with('0'))
        && s.parse::<i64>().is_ok()
}

/// `schema` (inferred from the first rows of the CSV file at `path`) with the
/// integer columns whose text in those rows is not all plain integers turned to text.
fn plain_integers_only(path: &Path, schema: Schema) -> Result<Schema> {
    let ints: Vec<usize> = (0..schema.fields().len())
        .filter(|&i| schema.field(i).data_type().is_integer())
        .collect();
    if ints.is_empty() {
        return Ok(schema);
    }
    let ctx = |e: &dyn std::fmt::Display| Error::Data(format!("{}: {e}", path.display()));
    let text = Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| Field::new(f.name(), DataType::Utf8, true))
            .collect::<Vec<_>>(),
    );
    let file = File::open(path).map_err(io_err(path.display()))?;
    let mut reader = arrow::csv::ReaderBuilder::new(Arc::new(text))
        .with_header(true)
        .with_batch_size(CSV_INFER_ROWS)
        .with_projection(ints.clone())
        .build(file)
        .map_err(|e| ctx(&e))?;
    let Some(batch) = reader.next().transpose().map_err(|e| ctx(&e))? else {
        return Ok(schema);
    };
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    for (c, &i) in ints.iter().enumerate() {
        let col = batch.column(c).as_string::<i32>();
        if col.iter().flatten().any(|v| !is_plain_integer(v)) {
            fields[i] = Field::new(fields[i].name(), DataType::Utf8, true);
        }
    }
    Ok(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// Reads a whole file. CSV is read with `csv_schema` when given (columns typed as
/// declared), else with an inferred schema.
pub fn read_file(
    path: &Path,
    format: FileFormat,
    csv_schema: Option<SchemaRef>,
) -> Result<Vec<RecordBatch>> {
    let file = open_nonempty(path)?;
    let ctx = |e: &dyn std::fmt::Display| Error::Data(format!("{}: {e}", path.display()));
    match format {
        FileFormat::Parquet => {
            let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| ctx(&e))?;
            unique_columns(path, builder.schema())?;
            let reader = builder
                .with_batch_size(64 * 1024)
                .build()
                .map_err(|e| ctx(&e))?;
            reader.map(|b| b.map_err(|e| ctx(&e))).collect()
        }
        FileFormat::Csv => {
            let schema = match csv_schema {
                Some(s) => s,
                None => read_schema(path, format)?,
            };
            unique_columns(path, &schema)?;
            let reader = arrow::csv::ReaderBuilder::new(schema)
                .with_header(true)
                .with_batch_size(64 * 1024)
                .build(file)
                .map_err(|e| ctx(&e))?;
            reader.map(|b| b.map_err(|e| ctx(&e))).collect()
        }
    }
}

/// A CSV schema where `overrides` (column → type) replace the inferred types.
pub fn csv_schema_with(inferred: &Schema, overrides: &[(String, DataType)]) -> SchemaRef {
    Arc::new(Schema::new(
        inferred
            .fields()
            .iter()
            .map(|f| match overrides.iter().find(|(n, _)| n == f.name()) {
                Some((_, t)) => Field::new(f.name(), t.clone(), true),
                None => f.as_ref().clone(),
            })
            .collect::<Vec<_>>(),
    ))
}

/// How a Parquet output file is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParquetOptions {
    /// The codec of every column (default Snappy: fast to write and read, and what most
    /// readers expect; `zstd` for smaller files, `none` for the fastest write).
    pub compression: Compression,
    /// Rows per row group (default 1,048,576). The columns of a row group are encoded
    /// in parallel, each on its own task, while the previous group is written out;
    /// larger groups compress a little better, smaller ones start writing sooner.
    pub row_group_rows: usize,
}

impl Default for ParquetOptions {
    fn default() -> Self {
        ParquetOptions {
            compression: Compression::SNAPPY,
            row_group_rows: 1 << 20,
        }
    }
}

impl ParquetOptions {
    /// Parses a codec name: `snappy`, `zstd`, `zstd(LEVEL)` or `none`.
    pub fn parse_compression(name: &str) -> Result<Compression> {
        use parquet::basic::ZstdLevel;
        let n = name.trim().to_ascii_lowercase();
        let level = |s: &str| -> Result<ZstdLevel> {
            let l: i32 = s
                .parse()
                .map_err(|_| Error::Invalid(format!("zstd level {s:?} is not a number")))?;
            ZstdLevel::try_new(l).map_err(|e| Error::Invalid(format!("zstd level {l}: {e}")))
        };
        match n.as_str() {
            "snappy" => Ok(Compression::SNAPPY),
            "none" | "uncompressed" => Ok(Compression::UNCOMPRESSED),
            "zstd" => Ok(Compression::ZSTD(ZstdLevel::default())),
            _ => match n.strip_prefix("zstd(").and_then(|r| r.strip_suffix(')')) {
                Some(l) => Ok(Compression::ZSTD(level(l)?)),
                None => Err(Error::Invalid(format!(
                    "compression {name:?}: expected snappy, zstd, zstd(LEVEL) or none"
                ))),
            },
        }
    }

    fn writer_properties(&self, schema: &Schema) -> WriterProperties {
        use parquet::file::properties::EnabledStatistics;
        // Dictionaries pay off for text; numbers, keys and times are mostly distinct
        // per row, where a dictionary attempt only costs time.
        let mut props = WriterProperties::builder()
            .set_compression(self.compression)
            .set_max_row_group_row_count(Some(self.row_group_rows.max(1)));
        for f in schema.fields() {
            if !matches!(
                f.data_type(),
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Binary
            ) {
                props = props.set_column_dictionary_enabled(
                    parquet::schema::types::ColumnPath::from(f.name().as_str()),
                    false,
                );
            }
        }
        // Min/max per column chunk (what readers prune row groups with), not per page:
        // page statistics cost a fifth of the encoding time of a training set. None for
        // floating-point columns (feature values, seldom a filter), where the NaN-aware
        // comparison costs a tenth of the write.
        props = props.set_statistics_enabled(EnabledStatistics::Chunk);
        for f in schema.fields() {
            if matches!(
                f.data_type(),
                DataType::Float16 | DataType::Float32 | DataType::Float64
            ) {
                props = props.set_column_statistics_enabled(
                    parquet::schema::types::ColumnPath::from(f.name().as_str()),
                    EnabledStatistics::None,
                );
            }
        }
        props.build()
    }
}

/// Writes batches to `path` as Parquet or CSV (by extension), replacing it atomically.
/// Parquet is written with the default [`ParquetOptions`].
pub fn write_file(path: &Path, schema: SchemaRef, batches: &[RecordBatch]) -> Result<()> {
    write_file_with(path, schema, batches, &ParquetOptions::default())
}

/// [`write_file`] with the Parquet options given. The columns of each Parquet row group
/// are encoded in parallel (rayon) while a writer thread appends the previous group.
pub fn write_file_with(
    path: &Path,
    schema: SchemaRef,
    batches: &[RecordBatch],
    options: &ParquetOptions,
) -> Result<()> {
    let format = format_of(path, None)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io_err(dir.display()))?;
    }
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let file = File::create(&tmp).map_err(io_err(tmp.display()))?;
    let result = (|| -> Result<()> {
        match format {
            FileFormat::Parquet => write_parquet(file, schema, batches, options)?,
            FileFormat::Csv => {
                let mut w = arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(std::io::BufWriter::new(file));
                for b in batches {
                    w.write(b)?;
                }
                w.into_inner().into_inner().map_err(|e| Error::Io {
                    context: tmp.display().to_string(),
                    source: e.into_error(),
                })?;
            }
        }
        std::fs::rename(&tmp, path).map_err(io_err(path.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn write_parquet(
    file: File,
    schema: SchemaRef,
    batches: &[RecordBatch],
    options: &ParquetOptions,
) -> Result<()> {
    use parquet::arrow::arrow_writer::{compute_leaves, ArrowColumnChunk};
    use rayon::prelude::*;

    let props = options.writer_properties(&schema);
    let out = std::io::BufWriter::new(file);
    if schema.fields().iter().any(|f| leaves(f.data_type()) != 1) {
        // Nested columns (structs, maps) have several leaves: the plain writer.
        let mut w = ArrowWriter::try_new(out, schema, Some(props))?;
        for b in batches {
            w.write(b)?;
        }
        w.close()?;
        return Ok(());
    }
    let writer = ArrowWriter::try_new(out, schema.clone(), Some(props))?;
    let (mut writer, factory) = writer.into_serialized_writer()?;
    // Row groups: slices of the batches, `row_group_rows` at most each (zero-copy).
    let step = options.row_group_rows.max(1);
    let mut groups: Vec<Vec<RecordBatch>> = Vec::new();
    let mut rows_in_group = 0;
    for b in batches {
        let mut offset = 0;
        while offset < b.num_rows() {
            if groups.is_empty() || rows_in_group == step {
                groups.push(Vec::new());
                rows_in_group = 0;
            }
            let take = (step - rows_in_group).min(b.num_rows() - offset);
            groups
                .last_mut()
                .expect("pushed")
                .push(b.slice(offset, take));
            rows_in_group += take;
            offset += take;
        }
    }
    // Row groups are encoded one after the other, the columns of each in parallel;
    // a writer thread appends each finished group to the file while the next one is
    // encoded. Every column has one leaf (checked above), so one column writer each.
    let (send, receive) = std::sync::mpsc::sync_channel::<Vec<ArrowColumnChunk>>(1);
    std::thread::scope(|scope| -> Result<()> {
        let appender = scope.spawn(move || -> Result<()> {
            for chunks in receive {
                let mut rg = writer.next_row_group()?;
                for chunk in chunks {
                    chunk.append_to_row_group(&mut rg)?;
                }
                rg.close()?;
            }
            writer.close()?;
            Ok(())
        });
        let encoded = (|| -> Result<()> {
            for (g, group) in groups.iter().enumerate() {
                let chunks = factory
                    .create_column_writers(g)?
                    .into_par_iter()
                    .enumerate()
                    .map(|(c, mut w)| -> Result<ArrowColumnChunk> {
                        let field = schema.field(c);
                        for b in group {
                            for leaf in compute_leaves(field, b.column(c))? {
                                w.write(&leaf)?;
                            }
                        }
                        Ok(w.close()?)
                    })
                    .collect::<Result<Vec<_>>>()?;
                if send.send(chunks).is_err() {
                    // The writer stopped on an error, which `join` returns.
                    break;
                }
            }
            Ok(())
        })();
        drop(send);
        let written = appender.join().expect("the Parquet writer thread panicked");
        encoded.and(written)
    })
}

/// The number of Parquet leaf columns of an Arrow type.
fn leaves(t: &DataType) -> usize {
    match t {
        DataType::Struct(fields) => fields.iter().map(|f| leaves(f.data_type())).sum(),
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
            leaves(f.data_type())
        }
        DataType::Map(f, _) => leaves(f.data_type()),
        _ => 1,
    }
}
