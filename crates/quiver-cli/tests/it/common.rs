//! Helpers of the command-line tests: the shared test repository (from
//! `quiver::testing`) and running the built `quiver` binary.

use std::path::Path;

pub use quiver::testing::*;

/// Definitions of feature view `w` over `user` events (`user_id`, `ts`, `x` in
/// `data/ev.parquet`) with the given aggregation lines (a string literal).
macro_rules! user_events_view {
    ($aggregations:literal) => {
        concat!(
            "entities: [{ name: user, join_keys: [user_id] }]\n",
            "sources: [{ name: ev, type: file, path: data/ev.parquet, timestamp_field: ts }]\n",
            "feature_views:\n",
            "  - name: w\n",
            "    entities: [user]\n",
            "    source: ev\n",
            "    aggregations:\n",
            $aggregations
        )
    };
}
pub(crate) use user_events_view;

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

/// One entity (`e`, key `k`), one Parquet source `data/s.parquet` (time `t`) and one view
/// `v` with a float64 feature `x`.
pub const ONE_VIEW: &str = "entities: [{ name: e, join_keys: [k] }]\n\
     sources: [{ name: s, type: file, path: data/s.parquet, timestamp_field: t }]\n\
     feature_views: [{ name: v, entities: [e], source: s, features: [{ name: x, dtype: float64 }] }]\n";

/// Runs each command of `steps` in `repo` in turn, failing on the first that fails.
pub fn cli_steps(repo: &Path, steps: &[&[&str]]) {
    for args in steps {
        let (ok, out, err) = cli(repo, args);
        assert!(ok, "{args:?}: {out}{err}");
    }
}

/// `quiver --json ARGS…` in `repo`, which must succeed, as JSON.
pub fn cli_json(repo: &Path, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let (ok, out, err) = cli(repo, &all);
    assert!(ok, "quiver {args:?}: {out}{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("quiver {args:?}: {e}: {out}"))
}

/// Runs `quiver ARGS…` in `repo` stopped at crash point `point` (as a kill -9 there
/// would stop it, see `quiver_core::fault`), and checks that it did not finish.
pub fn stopped_at(repo: &Path, args: &[&str], point: &str) {
    let out = std::process::Command::new(quiver_bin())
        .arg("--repo")
        .arg(repo)
        .args(args)
        .env(quiver_core::fault::CRASH_AT_VAR, point)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "quiver {args:?} was stopped at {point}"
    );
}

/// Stops a running `quiver` process with SIGTERM and checks that it exited 0; returns
/// what it printed.
pub fn stop_with_sigterm(child: std::process::Child) -> std::process::Output {
    // A process signalled before it installs its handler (while it starts, on a loaded
    // machine) dies by the signal: wait until it catches SIGTERM (Linux lists the
    // signals a process catches in /proc/PID/status, `SigCgt`, a hex mask).
    let catches_term = || {
        std::fs::read_to_string(format!("/proc/{}/status", child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("SigCgt:"))
                    .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
            })
            .is_some_and(|mask| mask & (1 << (15 - 1)) != 0)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !catches_term() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Each of `features` served online at `t` for the int64 keys `keys` of join key `key`,
/// next to the training value at `t` (a label row per key), as lines
/// `"{key} {k} {feature}: {value:?}"` — equal when serving and training agree.
pub fn served_and_trained(
    store: &quiver::FeatureStore,
    key: &str,
    keys: std::ops::Range<i64>,
    features: &[String],
    t: i64,
) -> (Vec<String>, Vec<String>) {
    use std::sync::Arc;
    let n = (keys.end - keys.start) as usize;
    let labels = batch(vec![
        (
            key,
            Arc::new(arrow::array::Int64Array::from_iter_values(keys.clone())),
        ),
        ("event_timestamp", ts(vec![t; n])),
    ]);
    let training = store
        .historical()
        .entities(labels)
        .features(features.to_vec())
        .block()
        .unwrap();
    let (mut served, mut trained) = (Vec::new(), Vec::new());
    for (row, k) in keys.enumerate() {
        let online = store
            .online_features()
            .features(features.to_vec())
            .entity_row(std::collections::BTreeMap::from([(
                key.to_string(),
                quiver::Value::Int64(k),
            )]))
            .at(t)
            .block()
            .unwrap();
        for (i, f) in features.iter().enumerate() {
            served.push(format!("{key} {k} {f}: {:?}", online.rows[0].values[i]));
            let col = training.column(2 + i);
            let value = quiver_core::value::value_at(col.as_ref(), row).unwrap();
            trained.push(format!("{key} {k} {f}: {value:?}"));
        }
    }
    (served, trained)
}
