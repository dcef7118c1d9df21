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
    let file = File::open(path).map_err(io_err(path.display()))?;
    match format {
        FileFormat::Parquet => Ok(ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|e| {
                Error::Data(format!(
                    "{}: not a readable Parquet file: {e}",
                    path.display()
                ))
            })?
            .schema()
            .clone()),
        FileFormat::Csv => {
            let (schema, _) = arrow::csv::reader::Format::default()
                .with_header(true)
                .infer_schema(file, Some(CSV_INFER_ROWS))
                .map_err(|e| Error::Data(format!("{}: {e}", path.display())))?;
            Ok(Arc::new(plain_integers_only(path, schema)?))
        }
    }
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
    let file = File::open(path).map_err(io_err(path.display()))?;
    let ctx = |e: &dyn std::fmt::Display| Error::Data(format!("{}: {e}", path.display()));
    match format {
        FileFormat::Parquet => {
            let reader = ParquetRecordBatchReaderBuilder::try_new(file)
                .map_err(|e| ctx(&e))?
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

/// Writes batches to `path` as Parquet or CSV (by extension), replacing it atomically.
pub fn write_file(path: &Path, schema: SchemaRef, batches: &[RecordBatch]) -> Result<()> {
    let format = format_of(path, None)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io_err(dir.display()))?;
    }
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let file = File::create(&tmp).map_err(io_err(tmp.display()))?;
    let result = (|| -> Result<()> {
        match format {
            FileFormat::Parquet => {
                let props = WriterProperties::builder()
                    .set_compression(Compression::SNAPPY)
                    .build();
                let mut w = ArrowWriter::try_new(file, schema, Some(props))?;
                for b in batches {
                    w.write(b)?;
                }
                w.close()?;
            }
            FileFormat::Csv => {
                let mut w = arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(file);
                for b in batches {
                    w.write(b)?;
                }
            }
        }
        std::fs::rename(&tmp, path).map_err(io_err(path.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
