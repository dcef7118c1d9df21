//! The definitions fuzz target's property, shared by the bounded property test run in
//! CI (`tests/it/fuzz.rs`) and the cargo-fuzz target (`fuzz/fuzz_targets/definitions.rs`):
//! any text as a definitions file is either resolved or rejected with errors that name
//! the file, never a panic or a stack overflow; a resolved state survives its own
//! storage round trip and a re-apply.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use quiver_core::model::Source;

use crate::{resolve, Definitions, Error, RegistryState, SourceSchema, SourceSchemas};

/// The file name inputs are parsed as.
pub const FILE: &str = "features.yaml";

/// Every source has the golden fixture's columns: `driver_id` int64, `customer_id`
/// string, `ts` timestamp, `rate` float64, `city` string, `trips` int64.
struct FixedSchemas;

impl SourceSchemas for FixedSchemas {
    fn schema(&self, _: &Source) -> Result<SourceSchema, String> {
        Ok(SourceSchema {
            schema: Arc::new(Schema::new(vec![
                Field::new("driver_id", DataType::Int64, false),
                Field::new("customer_id", DataType::Utf8, true),
                Field::new(
                    "ts",
                    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                    false,
                ),
                Field::new("rate", DataType::Float64, true),
                Field::new("city", DataType::Utf8, true),
                Field::new("trips", DataType::Int64, true),
            ])),
            typed: true,
        })
    }
}

/// Checks the property for one input; panics when it does not hold.
pub fn check_definitions(text: &str) {
    let mut defs = Definitions::default();
    if let Err(e) = defs.add_file(FILE, text) {
        assert_eq!(e.file, FILE, "a parse error names its file: {e}");
        assert!(!e.to_string().is_empty());
        return;
    }
    match resolve("fuzz", &defs, &FixedSchemas, None, 0) {
        Err(Error::Definitions(errors)) => {
            assert!(!errors.is_empty(), "a rejection gives its reasons");
            for e in errors {
                assert_eq!(e.file, FILE, "every error names its file: {e}");
                assert!(!e.message.is_empty(), "every error says what is wrong: {e}");
            }
        }
        Err(other) => panic!("definitions are rejected as definitions, not {other}"),
        Ok(state) => {
            let stored = serde_json::to_string(&state).expect("a state serializes");
            let back: RegistryState = serde_json::from_str(&stored).expect("and reads back");
            assert_eq!(back, state, "the stored state reads back equal");
            let again = resolve("fuzz", &defs, &FixedSchemas, Some(&state), 1)
                .expect("what resolved once resolves again");
            for (name, v) in &again.feature_views {
                assert_eq!(
                    v.version, state.feature_views[name].version,
                    "re-applying the same definitions keeps versions"
                );
            }
        }
    }
}
