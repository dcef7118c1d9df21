//! Finding and parsing a repository's definition files.

use std::path::{Path, PathBuf};

use quiver_core::model::{
    Entity, FeatureService, FeatureView, OnDemandFeatureView, RequestSource, Source,
};
use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::config::RepoConfig;
use crate::{yaml, DefinitionError, Error, Result};

/// One definition file's content; every section is optional, unknown keys are errors.
/// Each object keeps the position it starts at.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DefinitionFile {
    #[serde(default)]
    entities: Vec<Spanned<Entity>>,
    #[serde(default)]
    sources: Vec<Spanned<Source>>,
    #[serde(default)]
    request_sources: Vec<Spanned<RequestSource>>,
    #[serde(default)]
    feature_views: Vec<Spanned<FeatureView>>,
    #[serde(default)]
    on_demand_feature_views: Vec<Spanned<OnDemandFeatureView>>,
    #[serde(default)]
    feature_services: Vec<Spanned<FeatureService>>,
}

/// An object and where it was defined.
#[derive(Clone, Debug, PartialEq)]
pub struct Located<T> {
    pub value: T,
    /// The file, relative to the repository.
    pub file: String,
    /// The 1-based line the object starts at (its first key, e.g. `name:`), when known.
    pub line: Option<u32>,
    /// The 1-based column the object starts at, when known.
    pub column: Option<u32>,
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
            source: e.into(),
        })?;
        files.sort();
        let mut defs = Definitions::default();
        let mut errors = Vec::new();
        for rel in files {
            let text = match std::fs::read_to_string(repo.join(&rel)) {
                Ok(t) => t,
                Err(e) => {
                    errors.push(file_error(&rel, format!("cannot read: {e}")));
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
        // An empty document (comments only, or `---`) defines nothing.
        let parsed: DefinitionFile = yaml::from_str::<Option<DefinitionFile>>(text)
            .map_err(|e| parse_error(file, text, e))?
            .unwrap_or_default();
        self.entities.extend(locate(file, parsed.entities));
        self.sources.extend(locate(file, parsed.sources));
        self.request_sources
            .extend(locate(file, parsed.request_sources));
        self.feature_views
            .extend(locate(file, parsed.feature_views));
        self.on_demand_feature_views
            .extend(locate(file, parsed.on_demand_feature_views));
        self.feature_services
            .extend(locate(file, parsed.feature_services));
        Ok(())
    }
}

/// A file that does not parse, at the error's position and, when the error lies in an
/// object, naming it. A missing field is reported where its object starts.
fn parse_error(file: &str, text: &str, e: yaml::YamlError) -> DefinitionError {
    let mut err = DefinitionError {
        file: file.to_string(),
        line: e.line,
        column: e.column,
        object: String::new(),
        field: String::new(),
        message: e.message,
    };
    if let (Some(line), Some(column)) = (e.line, e.column) {
        if let Some(o) = enclosing_object(text, line, column) {
            if err.message.starts_with("missing field") {
                (err.line, err.column) = (Some(o.line), Some(o.column));
            }
            err.object = o.object;
        }
    }
    err
}

/// The outline of a definition file: where each object starts and its name, read
/// without checking anything else.
#[derive(Default, Deserialize)]
struct Outline {
    #[serde(default)]
    entities: Vec<Spanned<Named>>,
    #[serde(default)]
    sources: Vec<Spanned<Named>>,
    #[serde(default)]
    request_sources: Vec<Spanned<Named>>,
    #[serde(default)]
    feature_views: Vec<Spanned<Named>>,
    #[serde(default)]
    on_demand_feature_views: Vec<Spanned<Named>>,
    #[serde(default)]
    feature_services: Vec<Spanned<Named>>,
}

#[derive(Deserialize)]
struct Named {
    #[serde(default)]
    name: Option<String>,
}

/// An object of a file: `kind 'name'` (or `section[i]` without a name) and its start.
struct OutlineObject {
    object: String,
    line: u32,
    column: u32,
}

/// The object the position `(line, column)` lies in: the last one starting before it
/// whose block holds it (at its column or deeper), when the text has an outline.
fn enclosing_object(text: &str, line: u32, column: u32) -> Option<OutlineObject> {
    let outline: Outline = yaml::from_str_lenient(text)?;
    let sections = [
        ("entity", "entities", &outline.entities),
        ("source", "sources", &outline.sources),
        (
            "request source",
            "request_sources",
            &outline.request_sources,
        ),
        ("feature view", "feature_views", &outline.feature_views),
        (
            "on-demand feature view",
            "on_demand_feature_views",
            &outline.on_demand_feature_views,
        ),
        (
            "feature service",
            "feature_services",
            &outline.feature_services,
        ),
    ];
    let mut best: Option<OutlineObject> = None;
    for (kind, section, items) in sections {
        for (i, item) in items.iter().enumerate() {
            let (Some(l), Some(c)) = yaml::position(item.referenced) else {
                continue;
            };
            let before = (l, c) <= (line, column) && c <= column;
            if !before || best.as_ref().is_some_and(|b| (b.line, b.column) > (l, c)) {
                continue;
            }
            let object = match &item.value.name {
                Some(name) => format!("{kind} '{name}'"),
                None => format!("{section}[{i}]"),
            };
            best = Some(OutlineObject {
                object,
                line: l,
                column: c,
            });
        }
    }
    best
}

fn file_error(file: &str, message: String) -> DefinitionError {
    DefinitionError {
        file: file.to_string(),
        line: None,
        column: None,
        object: String::new(),
        field: String::new(),
        message,
    }
}

/// The objects of one section of a file with their positions.
fn locate<T>(file: &str, items: Vec<Spanned<T>>) -> Vec<Located<T>> {
    items
        .into_iter()
        .map(|s| {
            let (line, column) = yaml::position(s.referenced);
            Located {
                value: s.value,
                file: file.to_string(),
                line,
                column,
            }
        })
        .collect()
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

    /// (line, column) of each located object.
    fn positions<T>(items: &[Located<T>]) -> Vec<(Option<u32>, Option<u32>)> {
        items.iter().map(|l| (l.line, l.column)).collect()
    }

    #[test]
    fn objects_are_located_where_they_start() {
        // Block and flow style; an object whose first key is not `name`.
        let text = "\
entities:
  - name: driver
    join_keys: [driver_id]
  -   join_keys: [customer_id]
      name: customer
feature_views:
  - { name: driver_stats, entities: [driver], source: s, features: [] }
";
        let mut d = Definitions::default();
        d.add_file("f.yaml", text).unwrap();
        assert_eq!(
            positions(&d.entities),
            vec![(Some(2), Some(5)), (Some(4), Some(7))]
        );
        assert_eq!(positions(&d.feature_views), vec![(Some(7), Some(5))]);
        // The same name in two sections, and a name that also appears as a value: each
        // object gets its own position.
        let text = "\
feature_views:
  - name: a
    entities: [e]
    source: s
    features: []
on_demand_feature_views:
  - name: a
    sources: [a]
    features: []
";
        let mut d = Definitions::default();
        d.add_file("f.yaml", text).unwrap();
        assert_eq!(positions(&d.feature_views), vec![(Some(2), Some(5))]);
        assert_eq!(
            positions(&d.on_demand_feature_views),
            vec![(Some(7), Some(5))]
        );
    }

    #[test]
    fn scalars_parse_as_before() {
        // A file of comments only defines nothing.
        let mut d = Definitions::default();
        d.add_file("empty.yaml", "# nothing yet\n").unwrap();
        d.add_file("empty2.yaml", "---\n").unwrap();
        assert!(d.entities.is_empty() && d.feature_views.is_empty());
        // `ttl: 0` is no limit, a bare number elsewhere is an error; tag values that look
        // like numbers or booleans are strings; quoted and plain strings are alike.
        let text = "\
feature_views:
  - name: v
    entities: [e]
    source: s
    ttl: 0
    online: false
    tags: { tier: 1, pii: no, 'team': \"a b\" }
    features:
      - { name: x, dtype: 'float64' }
";
        d.add_file("f.yaml", text).unwrap();
        let v = &d.feature_views[0].value;
        assert_eq!(v.ttl, quiver_core::Duration::ZERO);
        assert!(!v.online && v.offline);
        let tags: Vec<(&str, &str)> = v
            .tags
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(tags, [("pii", "no"), ("team", "a b"), ("tier", "1")]);
        let e = Definitions::default()
            .add_file("f.yaml", &text.replace("ttl: 0", "ttl: 30"))
            .unwrap_err();
        assert_eq!((e.line, e.column), (Some(5), Some(10)), "{e}");
        assert_eq!(e.object, "feature view 'v'");
        assert!(e.message.contains("give a unit"), "{e}");
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
