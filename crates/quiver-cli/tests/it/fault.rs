//! The fault-injection suite: `kill -9` at random instants and at every crash point of
//! first and later ingests and materializations, and corrupt or truncated files. After
//! every fault the previous state is readable, the rerun completes, no offline row is
//! lost or duplicated, and the online store equals the training set for every key.
//!
//! Random choices come from one seed, printed on failure; `QUIVER_FAULT_SEED=N` replays
//! a run.

use quiver::testing::Block;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{AsArray, Float64Array, Int64Array};
use arrow::datatypes::Float64Type;
use quiver::{FeatureStatus, Value};
use rand::{Rng, SeedableRng};

use crate::common::{cli, quiver_bin, ts, Repo, ONE_VIEW};

const HOUR: i64 = 3_600_000_000;
const KEYS: i64 = 30_000;
const GENERATIONS: i64 = 6;

/// How a run is stopped.
#[derive(Clone, Debug)]
enum Fault {
    /// `QUIVER_CRASH_AT=point`: aborts there (as `kill -9` at that instant would).
    At(&'static str),
    /// SIGKILL after this long.
    KillAfter(Duration),
}

/// Runs `quiver ARGS` in `repo` and stops it by `fault`; returns whether it finished
/// anyway (the fault came too late or its point was not on this run's path).
fn run_with_fault(repo: &Path, args: &[&str], fault: &Fault) -> bool {
    let mut cmd = Command::new(quiver_bin());
    cmd.arg("--repo")
        .arg(repo)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Fault::At(point) = fault {
        cmd.env(quiver_core::fault::CRASH_AT_VAR, point);
    }
    let mut child = cmd.spawn().unwrap();
    if let Fault::KillAfter(d) = fault {
        let until = Instant::now() + *d;
        while Instant::now() < until {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let _ = child.kill();
    }
    child.wait().unwrap().success()
}

/// Generation `g` of the source: every key has a row at each hour 1..=g, x = h·KEYS + k
/// (so a value tells its row). Re-ingesting it replaces the day's partition.
fn write_source(repo: &Repo, g: i64) {
    let n = (KEYS * g) as usize;
    let mut keys = Vec::with_capacity(n);
    let mut times = Vec::with_capacity(n);
    let mut xs = Vec::with_capacity(n);
    for h in 1..=g {
        for k in 0..KEYS {
            keys.push(k);
            times.push(h * HOUR);
            xs.push((h * KEYS + k) as f64);
        }
    }
    repo.parquet(
        "data/s.parquet",
        vec![
            ("k", Arc::new(Int64Array::from(keys))),
            ("t", ts(times)),
            ("x", Arc::new(Float64Array::from(xs))),
        ],
    );
}

fn stored_rows(repo: &Repo) -> u64 {
    let store = repo.store();
    let view = store.state().unwrap().resolved_view("v").unwrap();
    store.offline().row_count(&view).block().unwrap()
}

/// The training-set value of every key at `t`.
fn training_at(repo: &Repo, t: i64) -> Vec<Option<f64>> {
    let labels = quiver::testing::batch(vec![
        ("k", Arc::new(Int64Array::from_iter_values(0..KEYS))),
        ("event_timestamp", ts(vec![t; KEYS as usize])),
    ]);
    let out = repo
        .store()
        .historical()
        .entities(labels)
        .features(["v:x"])
        .block()
        .unwrap();
    out.column_by_name("x")
        .unwrap()
        .as_primitive::<Float64Type>()
        .iter()
        .collect()
}

/// The online value and status of every key at `t`.
fn online_at(repo: &Repo, t: i64) -> Vec<(Option<f64>, FeatureStatus)> {
    let mut b = repo.store().online_features().features(["v:x"]).at(t);
    for k in 0..KEYS {
        b = b.entity_row(BTreeMap::from([("k".to_string(), Value::Int64(k))]));
    }
    b.block()
        .unwrap()
        .rows
        .iter()
        .map(|r| match &r.values[0] {
            Value::Float64(x) => (Some(*x), r.statuses[0]),
            _ => (None, r.statuses[0]),
        })
        .collect()
}

#[test]
fn kills_at_random_points_of_ingest_and_materialize_lose_nothing_and_online_equals_training() {
    let seed: u64 = std::env::var("QUIVER_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| quiver_core::time::now() as u64);
    eprintln!("fault suite seed {seed} (QUIVER_FAULT_SEED={seed} replays it)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let ctx = |what: &str| format!("seed {seed}: {what}");

    let repo = Repo::new(ONE_VIEW);
    write_source(&repo, 1);
    repo.store().apply().block().unwrap();
    // How long a clean run takes bounds the random kill instants.
    let (mut ingest_took, mut materialize_took) = (Duration::from_millis(300), Duration::ZERO);
    for g in 1..=GENERATIONS {
        write_source(&repo, g);
        let before = if g == 1 { 0 } else { stored_rows(&repo) };

        // Ingest, stopped: the table holds the previous generation or the new one, never
        // a mix (one Delta commit).
        let fault = match rng.gen_range(0..4) {
            0 => Fault::At("ingest.after_create"),
            1 => Fault::At("ingest.before_commit"),
            _ => Fault::KillAfter(ingest_took.mul_f64(rng.gen_range(0.0..1.2))),
        };
        let finished = run_with_fault(repo.path(), &["ingest"], &fault);
        eprintln!("generation {g}: ingest, {fault:?}: finished anyway: {finished}");
        let after_kill = if repo.path().join("data/offline").exists() && (g > 1 || finished) {
            stored_rows(&repo)
        } else {
            0
        };
        let full = (KEYS * g) as u64;
        assert!(
            after_kill == before || after_kill == full,
            "{}",
            ctx(&format!(
                "generation {g}, {fault:?}: {after_kill} rows, expected {before} or {full}"
            ))
        );

        // The rerun completes with exactly the source's rows.
        let started = Instant::now();
        let (ok, _, err) = cli(repo.path(), &["ingest"]);
        assert!(ok, "{}", ctx(&err));
        ingest_took = started.elapsed().max(Duration::from_millis(50));
        assert_eq!(
            stored_rows(&repo),
            full,
            "{}",
            ctx(&format!("generation {g}"))
        );

        // Materialization, stopped: every key reads the previous generation's value or
        // the new one.
        let fault = match rng.gen_range(0..4) {
            0 => Fault::At("write.after_online_batch"),
            1 => Fault::At("materialize.before_state"),
            _ => Fault::KillAfter(materialize_took.mul_f64(rng.gen_range(0.0..1.2))),
        };
        let t = g * HOUR + 1;
        // Odd generations materialize a range, even ones incrementally (up to now).
        let materialize: &[&str] = if g % 2 == 1 {
            &[
                "materialize",
                "1970-01-01T00:00:00Z",
                "1970-01-02T00:00:00Z",
            ]
        } else {
            &["materialize-incremental"]
        };
        let finished = run_with_fault(repo.path(), materialize, &fault);
        eprintln!("generation {g}: materialize, {fault:?}: finished anyway: {finished}");
        for (k, (x, _)) in online_at(&repo, t).into_iter().enumerate() {
            let k = k as i64;
            let (old, new) = (((g - 1) * KEYS + k) as f64, (g * KEYS + k) as f64);
            let readable = match x {
                None => g == 1,
                Some(x) => x == new || (g > 1 && x == old),
            };
            assert!(
                readable,
                "{}",
                ctx(&format!("generation {g}, {fault:?}: key {k} reads {x:?}"))
            );
        }

        // The rerun completes; online equals the training set at t, bit for bit.
        let started = Instant::now();
        let (ok, _, err) = cli(repo.path(), materialize);
        assert!(ok, "{}", ctx(&err));
        materialize_took = started.elapsed().max(Duration::from_millis(50));
        let training = training_at(&repo, t);
        let online = online_at(&repo, t);
        for k in 0..KEYS as usize {
            assert_eq!(
                online[k],
                (training[k], FeatureStatus::Present),
                "{}",
                ctx(&format!("generation {g}: key {k}"))
            );
            assert_eq!(training[k], Some((g * KEYS + k as i64) as f64));
        }
    }
}

/// Truncated and corrupted source files: the ingest fails naming the file (or, for a
/// flip in a value byte of a file without checksums, succeeds: nothing can tell), never
/// panics, and a failed ingest leaves the stored rows as they were.
#[test]
fn truncated_and_corrupted_sources_fail_cleanly_and_keep_stored_rows() {
    let seed: u64 = std::env::var("QUIVER_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| quiver_core::time::now() as u64);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let repo = Repo::new(ONE_VIEW);
    let n = 5_000i64;
    repo.parquet(
        "data/s.parquet",
        vec![
            ("k", Arc::new(Int64Array::from_iter_values(0..n))),
            ("t", ts(vec![HOUR; n as usize])),
            (
                "x",
                Arc::new(Float64Array::from_iter_values((0..n).map(|i| i as f64))),
            ),
        ],
    );
    let store = repo.store();
    store.apply().block().unwrap();
    store.ingest().block().unwrap();
    let good = std::fs::read(repo.path().join("data/s.parquet")).unwrap();
    let mut failures = 0;
    for case in 0..24 {
        let mut bytes = good.clone();
        let what = if case % 2 == 0 {
            let keep = rng.gen_range(0..bytes.len());
            bytes.truncate(keep);
            format!("truncated to {keep} of {} bytes", good.len())
        } else {
            let at = rng.gen_range(0..bytes.len());
            let len = rng.gen_range(1..64).min(bytes.len() - at);
            for b in &mut bytes[at..at + len] {
                *b = rng.gen();
            }
            format!("{len} random bytes at {at}")
        };
        std::fs::write(repo.path().join("data/s.parquet"), &bytes).unwrap();
        let out = Command::new(quiver_bin())
            .arg("--repo")
            .arg(repo.path())
            .arg("ingest")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        let code = out.status.code();
        assert!(
            matches!(code, Some(0..=2)),
            "seed {seed}, {what}: exit {code:?} (a panic or a signal)\n{err}"
        );
        assert!(!err.contains("panicked"), "seed {seed}, {what}: {err}");
        eprintln!("{what}: exit {code:?}");
        if !out.status.success() {
            failures += 1;
            assert!(
                err.contains("s.parquet"),
                "seed {seed}, {what}: the error names the file\n{err}"
            );
            assert_eq!(stored_rows(&repo), n as u64, "seed {seed}, {what}");
        }
        if case % 2 == 0 {
            assert!(
                !out.status.success(),
                "seed {seed}, {what}: a truncated file"
            );
        }
    }
    assert!(failures >= 12, "seed {seed}: every truncation fails");
    // The good file again: ingest and reads work.
    std::fs::write(repo.path().join("data/s.parquet"), &good).unwrap();
    let (ok, _, err) = cli(repo.path(), &["ingest"]);
    assert!(ok, "{err}");
    assert_eq!(stored_rows(&repo), n as u64);
}

/// Redis killed in the middle of a materialization and started again a second later
/// (with its append-only file, as a production server restarts): reads during the
/// outage fail fast with a clear error, the materialization re-sends its batches until
/// Redis is back and completes, and every key then reads what the training set holds.
#[test]
fn redis_killed_during_a_materialization_and_restarted_loses_nothing() {
    let mut redis = quiver_redis::testing::Server::start(&[
        "--appendonly".into(),
        "yes".into(),
        "--appendfsync".into(),
        "always".into(),
    ]);
    let repo = Repo::new(ONE_VIEW);
    repo.write(
        "quiver.yaml",
        &format!(
            "project: killed\nregistry: data/registry\n\
             offline_store: {{ type: delta, path: data/offline }}\n\
             online_store: {{ type: redis, url: \"{}\", read_timeout: 200ms, write_timeout: 500ms }}\n",
            redis.url()
        ),
    );
    write_source(&repo, 2);
    let store = repo.store();
    store.apply().block().unwrap();
    store.ingest().block().unwrap();
    let t = 2 * HOUR + 1;
    let probe = |k: i64| {
        repo.store()
            .online_features()
            .features(["v:x"])
            .at(t)
            .entity_row(BTreeMap::from([("k".to_string(), Value::Int64(k))]))
            .block()
    };

    std::thread::scope(|scope| {
        let run = scope.spawn(|| store.materialize(0, 3 * HOUR).block());
        // Kill Redis once the first batch is in.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !matches!(probe(0), Ok(r) if r.rows[0].statuses[0] == FeatureStatus::Present) {
            assert!(Instant::now() < deadline, "the first batch was written");
            std::thread::sleep(Duration::from_millis(2));
        }
        redis.kill();
        let started = Instant::now();
        let e = probe(1).unwrap_err().to_string();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a read with Redis down fails fast: {e}"
        );
        assert!(e.to_lowercase().contains("redis"), "{e}");
        std::thread::sleep(Duration::from_millis(1_000));
        redis.restart();
        let stats = run
            .join()
            .unwrap()
            .expect("the materialization outlasts the restart");
        assert!(!stats.is_empty());
    });

    let training = training_at(&repo, t);
    let online = online_at(&repo, t);
    for k in 0..KEYS as usize {
        assert_eq!(online[k], (training[k], FeatureStatus::Present), "key {k}");
        assert_eq!(training[k], Some((2 * KEYS + k as i64) as f64));
    }
}
