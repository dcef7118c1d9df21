//! Finding and parsing a repository's definition files.

use std::path::{Path, PathBuf};

use quiver_core::model::{
    Entity, FeatureService, FeatureView, OnDemandFeatureView, RequestSource, Source,
};
use serde::Deserialize;

use crate::config::RepoConfig;
use crate::{DefinitionError, Error, Result};

/// One definition file's content; every section is optional, unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DefinitionFile {
    #[serde(default)]
    entities: Vec<Entity>,
    #[serde(default)]
    sources: Vec<Source>,
    #[serde(default)]
    request_sources: Vec<RequestSource>,
    #[serde(default)]
    feature_views: Vec<FeatureView>,
    #[serde(default)]
    on_demand_feature_views: Vec<OnDemandFeatureView>,
    #[serde(default)]
    feature_services: Vec<FeatureService>,
}

/// An object and where it was defined.
#[derive(Clone, Debug, PartialEq)]
pub struct Located<T> {
    pub value: T,
    /// The file, relative to the repository.
    pub file: String,
    /// The 1-based line of the object's `name:`, when found.
    pub line: Option<usize>,
}

/// Every definition of a repository.
#[derive(Clone, Debug, Default)]
pub struct Definitions {
    pub entities: Vec<Located<Entity>>,
    pub sources: Vec<Located<Source>>,
    pub request_sources: Vec<Located<RequestSource>>,
    pub feature_views: Vec<Located<FeatureView>>,
    pub on_demand_feature_views: Vec<Located<OnDemandFeatureView>>,
    pub feature_services: Vec<Located<FeatureService>>,
}

impl Definitions {
    /// Finds and parses every `*.yaml`/`*.yml` below `repo` except `quiver.yaml`, hidden
    /// directories and the stores' data directories. Every file is parsed and every
    /// problem reported together.
    pub fn load(repo: &Path, config: &RepoConfig) -> Result<Self> {
        let skip: Vec<PathBuf> = config.data_dirs().iter().map(|d| repo.join(d)).collect();
        let mut files = Vec::new();
        collect_files(repo, repo, &skip, &mut files).map_err(|e| Error::Storage {
            path: repo.display().to_string(),
            message: e.to_string(),
        })?;
        files.sort();
        let mut defs = Definitions::default();
        let mut errors = Vec::new();
        for rel in files {
            let text = match std::fs::read_to_string(repo.join(&rel)) {
                Ok(t) => t,
                Err(e) => {
                    errors.push(file_error(&rel, None, format!("cannot read: {e}")));
                    continue;
                }
            };
            if let Err(e) = defs.add_file(&rel, &text) {
                errors.push(e);
            }
        }
        if errors.is_empty() {
            Ok(defs)
        } else {
            Err(Error::Definitions(errors))
        }
    }

    /// Parses one file's text (named `file` in messages) into these definitions.
    pub fn add_file(&mut self, file: &str, text: &str) -> Result<(), DefinitionError> {
        if text.trim().is_empty() {
            return Ok(());
        }
        let parsed: DefinitionFile = serde_yaml::from_str(text).map_err(|e| {
            let line = e.location().map(|l| l.line());
            file_error(file, line, e.to_string())
        })?;
        self.entities
            .extend(locate(file, text, "entities", parsed.entities, |v| &v.name));
        self.sources
            .extend(locate(file, text, "sources", parsed.sources, |v| v.name()));
        self.request_sources.extend(locate(
            file,
            text,
            "request_sources",
            parsed.request_sources,
            |v| &v.name,
        ));
        self.feature_views.extend(locate(
            file,
            text,
            "feature_views",
            parsed.feature_views,
            |v| &v.name,
        ));
        self.on_demand_feature_views.extend(locate(
            file,
            text,
            "on_demand_feature_views",
            parsed.on_demand_feature_views,
            |v| &v.name,
        ));
        self.feature_services.extend(locate(
            file,
            text,
            "feature_services",
            parsed.feature_services,
            |v| &v.name,
        ));
        Ok(())
    }
}

fn file_error(file: &str, line: Option<usize>, message: String) -> DefinitionError {
    DefinitionError {
        file: file.to_string(),
        line,
        object: String::new(),
        field: String::new(),
        message,
    }
}

/// The objects of one section of a file with their lines: the line of each object's
/// `name:` is searched for below the section's key and the previous object, so that
/// objects of the same name in different sections get their own lines.
fn locate<T>(
    file: &str,
    text: &str,
    section: &str,
    items: Vec<T>,
    name: impl Fn(&T) -> &str,
) -> Vec<Located<T>> {
    let lines: Vec<&str> = text.lines().collect();
    let mut from = lines
        .iter()
        .position(|l| {
            l.strip_prefix(section)
                .is_some_and(|rest| rest.trim_start().starts_with(':'))
        })
        .unwrap_or(0);
    items
        .into_iter()
        .map(|value| {
            let n = name(&value);
            let line = lines[from.min(lines.len())..]
                .iter()
                .position(|l| line_names(l, n))
                .map(|i| from + i + 1)
                .or_else(|| find_name_line(text, n));
            if let Some(l) = line {
                from = from.max(l);
            }
            Located {
                value,
                file: file.to_string(),
                line,
            }
        })
        .collect()
}

/// The line of the first `name: <name>` (block or flow style) in `text`.
fn find_name_line(text: &str, name: &str) -> Option<usize> {
    text.lines()
        .position(|l| line_names(l, name))
        .map(|i| i + 1)
}

/// Whether a line holds `name: <name>`.
fn line_names(l: &str, name: &str) -> bool {
    let mut rest = l;
    while let Some(i) = rest.find("name:") {
        let before_ok = i == 0
            || !rest[..i]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_');
        let after = rest[i + 5..].trim_start();
        let after = after.trim_start_matches(['"', '\'']);
        if before_ok && after.starts_with(name) {
            let tail = &after[name.len()..];
            if tail
                .chars()
                .next()
                .is_none_or(|c| !(c.is_alphanumeric() || c == '_'))
            {
                return true;
            }
        }
        rest = &rest[i + 5..];
    }
    false
}

fn collect_files(
    root: &Path,
    dir: &Path,
    skip: &[PathBuf],
    out: &mut Vec<String>,
) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || skip.iter().any(|s| s == &path) {
            continue;
        }
        let ft = entry.file_type()?;
        if ft.is_dir() {
            if name == "target" {
                continue;
            }
            collect_files(root, &path, skip, out)?;
        } else if (name.ends_with(".yaml") || name.ends_with(".yml"))
            && !(dir == root && name == RepoConfig::FILE)
        {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            out.push(rel.to_string_lossy().into_owned());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_name_lines() {
        let text = "entities:\n  - name: driver\n    join_keys: [driver_id]\nfeature_views:\n  - { name: driver_stats, source: s }\n";
        assert_eq!(find_name_line(text, "driver"), Some(2));
        assert_eq!(find_name_line(text, "driver_stats"), Some(5));
        assert_eq!(find_name_line(text, "s"), None);
        // The same name in two sections: each object gets its own line.
        let text = "feature_views:\n  - name: a\n    source: s\non_demand_feature_views:\n  - name: a\n    sources: [a]\n";
        let located = locate("f.yaml", text, "on_demand_feature_views", vec!["a"], |v| *v);
        assert_eq!(located[0].line, Some(5));
        let located = locate("f.yaml", text, "feature_views", vec!["a"], |v| *v);
        assert_eq!(located[0].line, Some(2));
    }

    #[test]
    fn unknown_fields_name_file_and_line() {
        let mut d = Definitions::default();
        let e = d
            .add_file(
                "features.yaml",
                "entities:\n  - name: driver\n    join_keys: [driver_id]\n    colour: red\n",
            )
            .unwrap_err();
        assert_eq!(e.file, "features.yaml");
        assert_eq!(e.line, Some(4));
        assert!(e.message.contains("colour"), "{}", e.message);
        let e = d.add_file("x.yaml", "feature_vews: []\n").unwrap_err();
        assert!(e.message.contains("feature_vews"));
    }

    #[test]
    fn on_demand_views_and_request_sources_parse() {
        let text = "\
on_demand_feature_views:
  - name: trip_context
    sources: [request: trip_request, driver_hourly_stats]
    owner: a@example.com
    features:
      - { name: x, dtype: float64, expr: \"conv_rate * distance_km\" }
request_sources:
  - name: trip_request
    schema: [{ name: distance_km, dtype: float64 }]
";
        let mut d = Definitions::default();
        d.add_file("odfv.yaml", text).unwrap();
        let o = &d.on_demand_feature_views[0];
        assert_eq!(o.line, Some(2));
        assert_eq!(
            o.value.sources,
            vec![
                quiver_core::model::OnDemandSource::Request("trip_request".into()),
                quiver_core::model::OnDemandSource::View("driver_hourly_stats".into()),
            ]
        );
        assert_eq!(o.value.features[0].expr, "conv_rate * distance_km");
        assert_eq!(d.request_sources[0].line, Some(8));
        // Unknown fields are rejected with their line, in the view, its features, its
        // sources and request sources.
        for (bad, line) in [
            (text.replace("    owner:", "    colour: red\n    owner:"), 4),
            (text.replace("expr:", "exp:"), 6),
            (
                text.replace("[request: trip_request,", "[requst: trip_request,"),
                3,
            ),
            (
                text.replace("dtype: float64 }]", "dtype: float64, unit: km }]"),
                9,
            ),
        ] {
            let e = Definitions::default()
                .add_file("odfv.yaml", &bad)
                .unwrap_err();
            assert_eq!(e.line, Some(line), "{e}");
        }
    }
}
