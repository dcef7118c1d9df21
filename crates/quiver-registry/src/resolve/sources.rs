//! Sources: a readable schema with usable time columns.

use std::collections::{BTreeMap, HashMap};

use arrow::datatypes::{DataType, SchemaRef};

use super::{column_list, Errors, SourceSchema, SourceSchemas};
use quiver_core::model::Source;

use crate::repo::Definitions;
use crate::state::suggest;
use crate::state::SourceRecord;

/// The schemas of the sources that passed their checks.
pub(super) struct CheckedSources<'a> {
    /// Source name → its schema.
    pub schemas: HashMap<&'a str, SchemaRef>,
    /// The sources whose column types are inferred (CSV), not the data's own.
    pub untyped: Vec<&'a str>,
}

/// Reads every source's schema and checks its time columns.
pub(super) fn check<'a>(
    defs: &'a Definitions,
    schemas: &dyn SourceSchemas,
    errs: &mut Errors,
) -> CheckedSources<'a> {
    let mut source_schemas: HashMap<&str, SchemaRef> = HashMap::new();
    let mut untyped: Vec<&str> = Vec::new();
    for s in &defs.sources {
        let obj = format!("source '{}'", s.value.name());
        if let Source::Kafka(k) = &s.value {
            // Settings the worker's exactly-once effect depends on.
            for key in k.options.keys() {
                if PINNED_KAFKA_OPTIONS.contains(&key.as_str()) {
                    errs.at(
                        s,
                        obj.clone(),
                        "options",
                        format!(
                            "'{key}' is set by quiver (offsets are committed only after \
                             the events are written; use brokers and group)"
                        ),
                    );
                }
            }
        }
        // A stream's events carry the columns of its batch source (a file source).
        let (read, field) = match s.value.batch_source() {
            None => (schemas.schema(&s.value), "path"),
            Some(batch) => {
                let found = defs.sources.iter().find(|b| b.value.name() == batch);
                let read = match found.map(|b| &b.value) {
                    Some(b @ Source::File(_)) => schemas.schema(b),
                    Some(_) => Err(format!(
                        "source '{batch}' is not a file source: a stream's history is read \
                         from files"
                    )),
                    None => Err(format!(
                        "unknown source '{batch}'{}",
                        suggest(
                            batch,
                            defs.sources
                                .iter()
                                .map(|b| b.value.name().to_string())
                                .collect::<Vec<_>>()
                                .iter()
                        )
                    )),
                };
                (read, "batch_source")
            }
        };
        match read {
            Err(msg) => errs.at(s, obj, field, msg),
            Ok(SourceSchema { schema, typed }) => {
                if !typed {
                    untyped.push(s.value.name());
                }
                let mut ok = true;
                let fields = [
                    ("timestamp_field", Some(s.value.timestamp_field())),
                    ("created_timestamp_field", s.value.created_timestamp_field()),
                ];
                for (field, col) in fields {
                    let Some(col) = col else { continue };
                    match schema.field_with_name(col) {
                        Err(_) => {
                            ok = false;
                            errs.at(
                                s,
                                obj.clone(),
                                field,
                                match s.value.batch_source() {
                                    None => format!(
                                        "column '{col}' is not in the source (columns: {})",
                                        column_list(&schema)
                                    ),
                                    Some(b) => format!(
                                        "column '{col}' is not a column of batch source \
                                         '{b}', whose columns the events carry (columns: {})",
                                        column_list(&schema)
                                    ),
                                },
                            );
                        }
                        Ok(f) if !is_time_type(f.data_type()) => {
                            ok = false;
                            errs.at(
                                s,
                                obj.clone(),
                                field,
                                format!(
                                "column '{col}' has type {}, expected a timestamp, date or string",
                                f.data_type()),
                            );
                        }
                        Ok(_) => {}
                    }
                }
                if ok {
                    source_schemas.insert(s.value.name(), schema);
                }
            }
        }
    }
    CheckedSources {
        schemas: source_schemas,
        untyped,
    }
}

/// Kafka consumer settings a source's `options` may not override.
const PINNED_KAFKA_OPTIONS: [&str; 6] = [
    "enable.auto.commit",
    "enable.auto.offset.store",
    "group.id",
    "bootstrap.servers",
    "metadata.broker.list",
    "enable.partition.eof",
];

fn is_time_type(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Timestamp(_, _)
            | DataType::Date32
            | DataType::Date64
            | DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
            | DataType::Null
    )
}

/// The sources' records.
pub(super) fn records(defs: &Definitions) -> BTreeMap<String, SourceRecord> {
    defs.sources
        .iter()
        .map(|s| {
            (
                s.value.name().to_string(),
                SourceRecord {
                    def: s.value.clone(),
                    file: s.file.clone(),
                },
            )
        })
        .collect()
}
