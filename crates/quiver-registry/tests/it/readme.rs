//! The README's example repository parses and resolves, and the error it quotes is the
//! one its example gives with the misspelt source.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use quiver_core::model::Source;
use quiver_registry::{resolve, Definitions, RepoConfig, SourceSchema, SourceSchemas};

use crate::common::NOW;

fn readme() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md");
    std::fs::read_to_string(path).unwrap()
}

/// The contents of the README's code blocks of `lang` (`yaml`, or `` for plain ones).
fn blocks(text: &str, lang: &str) -> Vec<String> {
    let mut out = Vec::new();
    // The open block: whether it is of `lang`, and its text.
    let mut current: Option<(bool, String)> = None;
    for line in text.lines() {
        let fence = line.trim_end().strip_prefix("```");
        match (&mut current, fence) {
            (None, Some(l)) => current = Some((l == lang, String::new())),
            (None, None) => {}
            (Some(_), Some(_)) => {
                if let Some((true, block)) = current.take() {
                    out.push(block);
                }
            }
            (Some((_, block)), None) => {
                block.push_str(line);
                block.push('\n');
            }
        }
    }
    out
}

/// The example's one source, with the columns its view reads.
struct ExampleSource;

impl SourceSchemas for ExampleSource {
    fn schema(&self, source: &Source) -> Result<SourceSchema, String> {
        if source.name() != "driver_stats_source" {
            return Err(format!("no data for {}", source.name()));
        }
        let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        let schema = Schema::new(vec![
            Field::new("driver_id", DataType::Int64, false),
            Field::new("event_timestamp", ts.clone(), false),
            Field::new("created", ts, true),
            Field::new("conv_rate", DataType::Float64, true),
            Field::new("acc_rate", DataType::Float32, true),
            Field::new("avg_daily_trips", DataType::Int64, true),
        ]);
        Ok(SourceSchema {
            schema: Arc::new(schema),
            typed: true,
        })
    }
}

#[test]
fn readme_examples_resolve_and_the_quoted_error_is_exact() {
    let readme = readme();
    let yaml = blocks(&readme, "yaml");
    let config = yaml
        .iter()
        .find(|b| b.starts_with("# quiver.yaml"))
        .expect("the README shows quiver.yaml");
    let config = RepoConfig::parse(config).unwrap();
    let features = yaml
        .iter()
        .find(|b| b.starts_with("# features.yaml"))
        .expect("the README shows features.yaml");

    let mut defs = Definitions::default();
    defs.add_file("features.yaml", features).unwrap();
    let state = resolve(&config.project, &defs, &ExampleSource, None, NOW).unwrap();
    assert_eq!(state.feature_services.len(), 2);

    let quoted = blocks(&readme, "")
        .into_iter()
        .find(|b| b.starts_with("error: "))
        .expect("the README quotes an error");
    let misspelt = features.replace(
        "source: driver_stats_source\n    ttl:",
        "source: driver_stats_sorce\n    ttl:",
    );
    assert_ne!(&misspelt, features);
    let mut defs = Definitions::default();
    defs.add_file("features.yaml", &misspelt).unwrap();
    let e = resolve(&config.project, &defs, &ExampleSource, None, NOW).unwrap_err();
    assert_eq!(format!("error: {e}\n"), quoted);
}
