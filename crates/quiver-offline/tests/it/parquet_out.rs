//! Parquet output: row groups encoded column by column in parallel and written as they
//! finish read back as written, in order, with the codec, row-group size and
//! statistics asked for.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Float64Array, Int64Array, ListArray, RecordBatch, StringArray, StructArray,
};
use arrow::datatypes::{DataType, Field, Float32Type, Schema};
use parquet::basic::Compression;
use parquet::file::reader::{FileReader, SerializedFileReader};
use quiver_core::model::FileFormat;
use quiver_offline::files::{self, ParquetOptions};

use crate::concat;

fn sample(n: usize, offset: i64) -> RecordBatch {
    let ids = Int64Array::from_iter_values((0..n as i64).map(|i| i + offset));
    let x = Float64Array::from_iter((0..n).map(|i| (i % 7 != 0).then_some(i as f64 * 0.5)));
    let s = StringArray::from_iter((0..n).map(|i| (i % 5 != 0).then(|| format!("s{}", i % 13))));
    let l = ListArray::from_iter_primitive::<Float32Type, _, _>(
        (0..n).map(|i| (i % 3 != 0).then(|| vec![Some(i as f32), None])),
    );
    let schema = Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("x", DataType::Float64, true),
        Field::new("s", DataType::Utf8, true),
        Field::new("l", l.data_type().clone(), true),
    ]);
    RecordBatch::try_new(
        Arc::new(schema),
        vec![Arc::new(ids), Arc::new(x), Arc::new(s), Arc::new(l)],
    )
    .unwrap()
}

#[test]
fn parallel_row_groups_read_back_in_order() {
    let dir = tempfile::tempdir().unwrap();
    // Batches of uneven sizes, cut into row groups of 1,000 rows across batch edges.
    let batches = vec![sample(2_500, 0), sample(10, 2_500), sample(1_490, 2_510)];
    for (codec, compression) in [
        ("snappy", Compression::SNAPPY),
        ("none", Compression::UNCOMPRESSED),
        (
            "zstd(3)",
            ParquetOptions::parse_compression("zstd(3)").unwrap(),
        ),
    ] {
        let path = dir
            .path()
            .join(format!("out-{}.parquet", codec.replace(['(', ')'], "")));
        let options = ParquetOptions {
            compression: ParquetOptions::parse_compression(codec).unwrap(),
            row_group_rows: 1_000,
        };
        assert_eq!(options.compression, compression);
        files::write_file_with(&path, batches[0].schema(), &batches, &options).unwrap();
        let back = files::read_file(&path, FileFormat::Parquet, None).unwrap();
        assert_eq!(concat(&back), concat(&batches), "{codec}");
        let reader = SerializedFileReader::new(std::fs::File::open(&path).unwrap()).unwrap();
        let meta = reader.metadata();
        assert_eq!(meta.num_row_groups(), 4, "{codec}");
        assert!(meta
            .row_groups()
            .iter()
            .take(3)
            .all(|g| g.num_rows() == 1_000));
        // Chunk statistics for keys and text (what readers filter on), none for floats.
        for g in meta.row_groups() {
            assert!(g.column(0).statistics().is_some(), "{codec}: id");
            assert!(g.column(1).statistics().is_none(), "{codec}: x");
            assert!(g.column(2).statistics().is_some(), "{codec}: s");
        }
        // (The file records the codec, not its level.)
        assert_eq!(
            std::mem::discriminant(&meta.row_group(0).column(1).compression()),
            std::mem::discriminant(&compression),
            "{codec}"
        );
    }
}

#[test]
fn nested_columns_and_empty_outputs_are_written_too() {
    let dir = tempfile::tempdir().unwrap();
    let a: ArrayRef = Arc::new(Int64Array::from(vec![1, 2]));
    let b: ArrayRef = Arc::new(StringArray::from(vec!["x", "y"]));
    let st = StructArray::from(vec![
        (Arc::new(Field::new("a", DataType::Int64, false)), a),
        (Arc::new(Field::new("b", DataType::Utf8, false)), b),
    ]);
    let schema = Arc::new(Schema::new(vec![Field::new(
        "st",
        st.data_type().clone(),
        false,
    )]));
    let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(st)]).unwrap();
    let path = dir.path().join("nested.parquet");
    files::write_file(&path, schema, std::slice::from_ref(&batch)).unwrap();
    let back = files::read_file(&path, FileFormat::Parquet, None).unwrap();
    assert_eq!(concat(&back), batch);

    let empty = sample(0, 0);
    let path = dir.path().join("empty.parquet");
    files::write_file(&path, empty.schema(), &[]).unwrap();
    assert_eq!(
        files::read_schema(&path, FileFormat::Parquet).unwrap(),
        empty.schema()
    );
}

#[test]
fn unknown_codecs_are_errors_naming_the_choices() {
    for bad in ["lzo", "zstd(99)", "zstd(x)"] {
        let e = ParquetOptions::parse_compression(bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains("zstd"), "{bad}: {e}");
    }
}
