//! Files that read without error but could not be used: empty files and duplicate
//! column names are rejected where they are read, naming the file (and column).

use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use quiver_core::model::FileFormat;
use quiver_offline::files;

use crate::write;

#[test]
fn empty_files_are_errors_not_zero_rows() {
    let dir = tempfile::tempdir().unwrap();
    for (name, format) in [
        ("a.csv", FileFormat::Csv),
        ("a.parquet", FileFormat::Parquet),
    ] {
        let p = write(dir.path(), name, "");
        for e in [
            files::read_schema(&p, format).unwrap_err().to_string(),
            files::read_file(&p, format, None).unwrap_err().to_string(),
        ] {
            assert!(e.contains(name) && e.contains("empty (0 bytes)"), "{e}");
        }
    }
    // A header alone is a file with no rows, not an error.
    let p = write(dir.path(), "header.csv", "k,t\n");
    assert_eq!(
        files::read_file(&p, FileFormat::Csv, None)
            .unwrap()
            .iter()
            .map(RecordBatch::num_rows)
            .sum::<usize>(),
        0
    );
}

#[test]
fn duplicate_column_names_are_errors_naming_the_column() {
    let dir = tempfile::tempdir().unwrap();
    let csv = write(
        dir.path(),
        "e.csv",
        "driver_id,ts,driver_id\n1,2024-01-01,2\n",
    );
    for e in [
        files::read_schema(&csv, FileFormat::Csv)
            .unwrap_err()
            .to_string(),
        files::read_file(&csv, FileFormat::Csv, None)
            .unwrap_err()
            .to_string(),
    ] {
        assert!(
            e.contains("e.csv") && e.contains("'driver_id' appears twice (columns 1 and 3)"),
            "{e}"
        );
    }
    // Parquet allows it too; the reader does not.
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("k", DataType::Int64, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from(vec![1])),
            Arc::new(Int64Array::from(vec![2])),
        ],
    )
    .unwrap();
    let pq = dir.path().join("e.parquet");
    let mut w =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&pq).unwrap(), schema, None)
            .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let e = files::read_file(&pq, FileFormat::Parquet, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("e.parquet") && e.contains("'k' appears twice"),
        "{e}"
    );
}
