//! Finding and parsing a repository's definition files.

use std::path::{Path, PathBuf};

use quiver_core::model::{Entity, FeatureService, FeatureView, Source};
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
    feature_views: Vec<FeatureView>,
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
    pub feature_views: Vec<Located<FeatureView>>,
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
        let locate = |name: &str| find_name_line(text, name);
        let at = |name: &str| (file.to_string(), locate(name));
        for v in parsed.entities {
            let (file, line) = at(&v.name);
            self.entities.push(Located {
                value: v,
                file,
                line,
            });
        }
        for v in parsed.sources {
            let (file, line) = at(v.name());
            self.sources.push(Located {
                value: v,
                file,
                line,
            });
        }
        for v in parsed.feature_views {
            let (file, line) = at(&v.name);
            self.feature_views.push(Located {
                value: v,
                file,
                line,
            });
        }
        for v in parsed.feature_services {
            let (file, line) = at(&v.name);
            self.feature_services.push(Located {
                value: v,
                file,
                line,
            });
        }
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

/// The line of the first `name: <name>` (block or flow style) in `text`.
fn find_name_line(text: &str, name: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
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
        })
        .map(|i| i + 1)
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
}
