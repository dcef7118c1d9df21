//! Reading and writing tables (Parquet or CSV by extension) for the CLI and the API.
//! These are blocking calls: from async code run them in [`crate::blocking`].

use std::path::Path;

use arrow::array::RecordBatch;
use arrow::compute::concat_batches;
use quiver_core::model::FileFormat;
use quiver_core::DType;

use crate::{Error, Result};

/// Reads a Parquet or CSV file into one batch.
pub fn read_table(path: impl AsRef<Path>) -> Result<RecordBatch> {
    let path = path.as_ref();
    let format = quiver_offline::files::format_of(path, None)?;
    let batches = quiver_offline::files::read_file(path, format, None)?;
    let schema = match batches.first() {
        Some(b) => b.schema(),
        None => quiver_offline::files::read_schema(path, format)?,
    };
    Ok(concat_batches(&schema, &batches)?)
}

pub use quiver_offline::files::ParquetOptions;

/// Writes a batch as Parquet or CSV (by extension), replacing the file atomically.
pub fn write_table(path: impl AsRef<Path>, batch: &RecordBatch) -> Result<()> {
    write_table_with(path, batch, &ParquetOptions::default())
}

/// [`write_table`] with the given Parquet options (codec, row-group size); each row
/// group's columns are encoded in parallel while the previous group is written.
pub fn write_table_with(
    path: impl AsRef<Path>,
    batch: &RecordBatch,
    options: &ParquetOptions,
) -> Result<()> {
    let path = path.as_ref();
    if FileFormat::from_path(&path.to_string_lossy()).is_none() {
        return Err(Error::Invalid(format!(
            "{}: the output must end in .parquet or .csv",
            path.display()
        )));
    }
    quiver_offline::files::write_file_with(
        path,
        batch.schema(),
        std::slice::from_ref(batch),
        options,
    )?;
    Ok(())
}

/// Reads entity rows for a historical retrieval, as the file's batches (not copied into
/// one). CSV columns carry no types, so the
/// time column is read as text (parsed by the time contract's rules, fractions of a
/// second kept), registered join keys as their registered types (a key `007` of a
/// string entity stays `007`) and request fields as their declared types.
pub fn read_entities(
    path: impl AsRef<Path>,
    state: &quiver_registry::RegistryState,
    timestamp_column: &str,
) -> Result<Vec<RecordBatch>> {
    let path = path.as_ref();
    let format = quiver_offline::files::format_of(path, None)?;
    if format != FileFormat::Csv {
        let batches = quiver_offline::files::read_file(path, format, None)?;
        return Ok(if batches.is_empty() {
            vec![read_table(path)?]
        } else {
            batches
        });
    }
    let mut overrides = vec![(
        timestamp_column.to_string(),
        arrow::datatypes::DataType::Utf8,
    )];
    for e in state.entities.values() {
        for k in &e.join_keys {
            overrides.push((
                k.name.clone(),
                quiver_offline::normalize::key_arrow_type(&k.dtype),
            ));
        }
    }
    // Request fields of on-demand views are columns of the entity rows: read as declared.
    for r in state.request_sources.values() {
        for f in &r.def.schema {
            let scalar = matches!(
                f.dtype,
                DType::Bool
                    | DType::Int32
                    | DType::Int64
                    | DType::Float32
                    | DType::Float64
                    | DType::String
            );
            if scalar && !overrides.iter().any(|(n, _)| n == &f.name) {
                overrides.push((f.name.clone(), f.dtype.to_arrow()));
            }
        }
    }
    let batches = crate::write::read_typed(path, format, &overrides)?;
    Ok(if batches.is_empty() {
        vec![read_table(path)?]
    } else {
        batches
    })
}
