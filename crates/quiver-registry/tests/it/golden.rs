//! Golden files for definition errors: every directory under `tests/golden/` is a small
//! repository with (usually) one mistake, and its `expected.txt` holds what resolving it
//! reports, exactly as rendered. `UPDATE_GOLDEN=1 cargo nextest run -p quiver-registry`
//! rewrites the expected files from the current output (review the diff before
//! committing it). See `tests/golden/README.md` for the layout of a case.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use quiver_registry::Plan;

use crate::common::{load_and_resolve, write_fixture_data};

/// The file of a case that holds its expected output; every other file is the repository.
const EXPECTED: &str = "expected.txt";

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

#[test]
fn definition_errors_match_golden_files() {
    let update = std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(cases_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(cases.len() >= 12, "only {} golden cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let repo = tempfile::tempdir().unwrap();
        write_fixture_data(repo.path());
        copy_case(case, repo.path());
        let got = render(repo.path());
        let expected_path = case.join(EXPECTED);
        if update {
            std::fs::write(&expected_path, &got).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (UPDATE_GOLDEN=1 writes it)",
                expected_path.display()
            )
        });
        if got != expected {
            failures.push(format!(
                "case {name}:\n--- expected ({})\n{expected}--- got\n{got}",
                expected_path.display()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} golden case(s) differ (UPDATE_GOLDEN=1 rewrites the expected files):\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// Loads and resolves the repository at `repo` as `quiver plan` would, and renders the
/// outcome: the error as displayed, or for a valid repository the plan and the key types.
fn render(repo: &Path) -> String {
    match load_and_resolve(repo, None) {
        Err(e) => format!("{e}\n"),
        Ok(state) => {
            let mut out = format!("ok\n{}", Plan::diff(None, &state));
            for (name, e) in &state.entities {
                let keys: Vec<String> = e
                    .join_keys
                    .iter()
                    .map(|k| format!("{} {}", k.name, k.dtype))
                    .collect();
                writeln!(out, "entity '{name}': {}", keys.join(", ")).unwrap();
            }
            for (name, o) in &state.on_demand_feature_views {
                let deps: Vec<String> = o.dependencies.iter().map(|d| d.to_string()).collect();
                writeln!(
                    out,
                    "on-demand feature view '{name}': request fields [{}], dependencies [{}]",
                    o.request_fields.join(", "),
                    deps.join(", ")
                )
                .unwrap();
            }
            out
        }
    }
}

/// Copies a case's files (all but the expected output) into `repo`.
fn copy_case(from: &Path, repo: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let (src, name) = (entry.path(), entry.file_name());
        let dst = repo.join(&name);
        if src.is_dir() {
            std::fs::create_dir_all(&dst).unwrap();
            copy_case(&src, &dst);
        } else if name != EXPECTED {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}
