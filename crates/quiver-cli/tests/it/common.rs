//! Helpers of the command-line tests: the shared test repository (from
//! `quiver::testing`) and running the built `quiver` binary.

use std::path::Path;

pub use quiver::testing::*;

/// The path of the built `quiver` binary.
pub fn quiver_bin() -> &'static str {
    env!("CARGO_BIN_EXE_quiver")
}

/// Runs the CLI in `repo`; returns (success, stdout, stderr).
pub fn cli(repo: &Path, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(quiver_bin())
        .arg("--repo")
        .arg(repo)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
