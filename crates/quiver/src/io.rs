//! Reading and writing tables (Parquet or CSV by extension) for the CLI and the API.

use std::path::Path;

use arrow::array::RecordBatch;
use arrow::compute::concat_batches;
use quiver_core::model::FileFormat;

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

/// Writes a batch as Parquet or CSV (by extension), replacing the file atomically.
pub fn write_table(path: impl AsRef<Path>, batch: &RecordBatch) -> Result<()> {
    let path = path.as_ref();
    if FileFormat::from_path(&path.to_string_lossy()).is_none() {
        return Err(Error::Invalid(format!(
            "{}: the output must end in .parquet or .csv",
            path.display()
        )));
    }
    quiver_offline::files::write_file(path, batch.schema(), std::slice::from_ref(batch))?;
    Ok(())
}
