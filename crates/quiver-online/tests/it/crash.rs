//! Crash safety with a real process: a child process (this test binary, re-executed)
//! writes big batches in a loop and is killed with SIGKILL mid-stream; the store must
//! open afterwards with every committed row intact and accept new writes.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use quiver_core::encoding::row_version;
use quiver_online::{EmbeddedStore, FieldId, OnlineWrite};

use crate::{decode_sample, int_key, sample_dtypes, sample_rows};

/// Set in the child's environment to the store directory: the child test then writes.
const CHILD_DIR_VAR: &str = "QUIVER_ONLINE_CRASH_CHILD_DIR";
/// The child test's full name, to run it alone in the child process.
const CHILD_TEST: &str = "crash::crash_child_writer";
const CHILD_KEYS: i64 = 20_000;
const PARENT_KEYS: i64 = 500;
const FIELD: FieldId = *b"crash-f1";

fn child_keys() -> Vec<Vec<u8>> {
    (0..CHILD_KEYS)
        .map(|i| int_key("crash", "child", i))
        .collect()
}

fn progress_key() -> Vec<u8> {
    int_key("crash", "progress", 0)
}

/// Rows of the child keys and the progress cell for both sample variants, encoded once:
/// [`write_batch`] only stamps the batch number into their event timestamps, so that the
/// child spends its time inside write transactions rather than encoding.
struct Templates([Vec<Vec<u8>>; 2]);

impl Templates {
    fn new() -> Self {
        let rows = |variant: usize| {
            let mut versions: Vec<_> = (0..CHILD_KEYS).map(|i| (0, i, variant)).collect();
            versions.push((0, 0, variant));
            sample_rows(&versions)
        };
        Self([rows(0), rows(1)])
    }
}

/// Batch `b`: every child key at event timestamp `b` plus the progress cell, in one write.
fn write_batch(
    store: &EmbeddedStore,
    templates: &Templates,
    keys: &[Vec<u8>],
    progress: &[u8],
    b: i64,
) -> u64 {
    // Row format (quiver_core::encoding): a format byte, then the event timestamp as 8
    // little-endian bytes.
    let rows: Vec<Vec<u8>> = templates.0[(b % 2) as usize]
        .iter()
        .map(|t| {
            let mut row = t.clone();
            row[1..9].copy_from_slice(&b.to_le_bytes());
            row
        })
        .collect();
    let mut batch: Vec<OnlineWrite<'_>> = keys
        .iter()
        .zip(&rows)
        .map(|(key, row)| OnlineWrite {
            key,
            field: FIELD,
            row,
        })
        .collect();
    batch.push(OnlineWrite {
        key: progress,
        field: FIELD,
        row: &rows[rows.len() - 1],
    });
    store.write_blocking(&batch).expect("batch write").written
}

/// The writer child. A no-op in an ordinary test run; in the child process (the variable
/// set) it writes batches until killed — or until its parent is gone, as a safety net.
#[test]
fn crash_child_writer() {
    let Some(dir) = std::env::var_os(CHILD_DIR_VAR) else {
        return;
    };
    let parent = std::os::unix::process::parent_id();
    let store = EmbeddedStore::open(Path::new(&dir)).expect("the child opens the store");
    let (keys, progress, templates) = (child_keys(), progress_key(), Templates::new());
    for b in 1..100_000 {
        assert_eq!(
            write_batch(&store, &templates, &keys, &progress, b),
            CHILD_KEYS as u64 + 1
        );
        if std::os::unix::process::parent_id() != parent {
            return;
        }
    }
}

/// Kills the child if the test fails before it does.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads the progress cell and a spread of child keys in one read; asserts they are all
/// from the same batch (atomic batches, seen across processes) and returns it.
fn committed_batch(store: &EmbeddedStore, keys: &[Vec<u8>], progress: &[u8]) -> i64 {
    let mut picked: Vec<&[u8]> = vec![progress];
    picked.extend(keys.iter().step_by(997).map(Vec::as_slice));
    picked.push(&keys[keys.len() - 1]);
    let cells = store.read_blocking(&picked, &[FIELD]).expect("read");
    let versions: Vec<i64> = cells
        .iter()
        .map(|c| row_version(c.as_ref().expect("cell present")).unwrap().0)
        .collect();
    assert!(
        versions.iter().all(|&v| v == versions[0]),
        "a read mixes batches: {versions:?}"
    );
    versions[0]
}

#[test]
fn a_killed_writer_process_leaves_the_committed_state() {
    if std::env::var_os(CHILD_DIR_VAR).is_some() {
        return; // inside the child process
    }
    let dir = tempfile::tempdir().unwrap();
    let dtypes = sample_dtypes();
    let (keys, progress, templates) = (child_keys(), progress_key(), Templates::new());
    let parent_keys: Vec<Vec<u8>> = (0..PARENT_KEYS)
        .map(|i| int_key("crash", "parent", i))
        .collect();
    let parent_rows = sample_rows(
        &(0..PARENT_KEYS)
            .map(|i| (i, -i, i as usize))
            .collect::<Vec<_>>(),
    );

    // The committed state before the crash: the parent's rows and batch 0 of the child's.
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let batch: Vec<OnlineWrite<'_>> = parent_keys
        .iter()
        .zip(&parent_rows)
        .map(|(key, row)| OnlineWrite {
            key,
            field: FIELD,
            row,
        })
        .collect();
    assert_eq!(
        store.write_blocking(&batch).unwrap().written,
        PARENT_KEYS as u64
    );
    assert_eq!(
        write_batch(&store, &templates, &keys, &progress, 0),
        CHILD_KEYS as u64 + 1
    );

    let exe = std::env::current_exe().unwrap();
    let mut child = KillOnDrop(
        Command::new(exe)
            .args([CHILD_TEST, "--exact", "--test-threads=1", "--nocapture"])
            .env(CHILD_DIR_VAR, dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the writer child"),
    );

    // Wait (reading from this process while the child writes) until the child has
    // committed a few batches; a liveness guard only, not a timing assertion.
    let deadline = Instant::now() + Duration::from_secs(600);
    let seen = loop {
        let b = committed_batch(&store, &keys, &progress);
        if b >= 3 {
            break b;
        }
        if let Some(status) = child.0.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = child.0.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            panic!("the writer child exited ({status}) after batch {b}:\n{err}");
        }
        assert!(
            Instant::now() < deadline,
            "the writer child made no progress"
        );
        std::thread::sleep(Duration::from_millis(20));
    };

    child.0.kill().expect("SIGKILL the child");
    let status = child.0.wait().unwrap();
    assert!(!status.success(), "the child was killed: {status}");
    drop(child);
    drop(store); // close this process's environment; the reopen below starts afresh

    let store = EmbeddedStore::open(dir.path()).expect("the store opens after the crash");
    // The rows committed before the child started are intact.
    let parent_refs: Vec<&[u8]> = parent_keys.iter().map(Vec::as_slice).collect();
    let cells = store.read_blocking(&parent_refs, &[FIELD]).unwrap();
    for (i, (cell, row)) in cells.iter().zip(&parent_rows).enumerate() {
        assert_eq!(cell.as_ref(), Some(row), "parent row {i}");
    }
    // The child's last committed batch is there whole: every child row is of the batch
    // the progress cell names, at least the one seen before the kill.
    let last = committed_batch(&store, &keys, &progress);
    assert!(last >= seen, "batch {last} after seeing {seen}");
    let child_refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    let cells = store.read_blocking(&child_refs, &[FIELD]).unwrap();
    for (i, cell) in cells.iter().enumerate() {
        let row = decode_sample(
            cell.as_ref().expect("child row present"),
            &dtypes,
            "child row",
        );
        assert_eq!(
            (row.event_ts, row.created_ts),
            (last, i as i64),
            "child row {i}"
        );
    }
    // Every stored row decodes; nothing else is stored.
    let n = store
        .for_each_row(|_, v| {
            decode_sample(v, &dtypes, "stored row");
            Ok(())
        })
        .unwrap();
    assert_eq!(n, (PARENT_KEYS + CHILD_KEYS + 1) as u64);

    // The store takes new writes (the dead writer's lock is recovered).
    assert_eq!(
        write_batch(&store, &templates, &keys, &progress, last + 1),
        CHILD_KEYS as u64 + 1
    );
    assert_eq!(committed_batch(&store, &keys, &progress), last + 1);
    drop(store);
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(committed_batch(&store, &keys, &progress), last + 1);
}
