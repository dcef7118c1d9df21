//! The embedded (LMDB) backend: conformance, layout, persistence, concurrency.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use quiver_core::encoding::row_version;
use quiver_online::embedded::{storage_key, HASHED_KEY_PREFIX};
use quiver_online::{
    conformance, EmbeddedConfig, EmbeddedStore, Error, FieldId, KeyMerge, OnlineStore, OnlineWrite,
    StreamPosition, TileDelta,
};

use crate::{decode_sample, int_key, sample_dtypes, sample_row, sample_rows};

const F: FieldId = *b"field-f0";
const G: FieldId = *b"field-g1";

fn writes<'a>(keys: &'a [Vec<u8>], field: FieldId, rows: &'a [Vec<u8>]) -> Vec<OnlineWrite<'a>> {
    keys.iter()
        .zip(rows)
        .map(|(key, row)| OnlineWrite { key, field, row })
        .collect()
}

fn refs(keys: &[Vec<u8>]) -> Vec<&[u8]> {
    keys.iter().map(Vec::as_slice).collect()
}

#[tokio::test]
async fn conformance_suite_passes_on_a_fresh_store_and_again_on_the_same_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(store.backend(), "embedded");
    conformance::run_all(Arc::new(store.clone())).await;
    // The checks namespace their keys per run, so they pass on a non-empty store too.
    conformance::run_all(Arc::new(store)).await;
}

#[tokio::test]
async fn open_creates_the_directory_and_shares_one_environment_per_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/online");
    let s1 = EmbeddedStore::open(&path).unwrap();
    assert!(path.join("data.mdb").exists());
    // Another spelling of the same directory gets the same environment (LMDB forbids two
    // in one process) and sees the other handle's writes.
    let s2 = EmbeddedStore::open(&dir.path().join("a/./b/../b/online")).unwrap();
    assert_eq!(s1.path(), s2.path());
    let key = int_key("p", "e", 1);
    let row = sample_row(1, 1, 0);
    s1.write(&[OnlineWrite {
        key: &key,
        field: F,
        row: &row,
    }])
    .await
    .unwrap();
    assert_eq!(s2.read(&[&key], &[F]).await.unwrap(), vec![Some(row)]);
    // A second directory is a separate store.
    let other = EmbeddedStore::open(&dir.path().join("other")).unwrap();
    assert_eq!(other.read(&[&key], &[F]).await.unwrap(), vec![None]);
}

#[tokio::test]
async fn rows_persist_across_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let keys: Vec<Vec<u8>> = (0..1000).map(|i| int_key("p", "e", i)).collect();
    let rows = sample_rows(&(0..1000).map(|i| (i, 0, i as usize)).collect::<Vec<_>>());
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let s = store.write(&writes(&keys, F, &rows)).await.unwrap();
        assert_eq!((s.written, s.skipped), (1000, 0));
    } // the last handle closes the environment
    for round in 0..3 {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(store.row_count().unwrap(), 1000, "round {round}");
        let cells = store.read(&refs(&keys), &[F]).await.unwrap();
        let want: Vec<Option<Vec<u8>>> = rows.iter().cloned().map(Some).collect();
        assert_eq!(cells, want, "round {round}");
        // The stored versions still guard against older rows.
        let older = sample_rows(&(0..1000).map(|i| (i - 1, 0, 0)).collect::<Vec<_>>());
        let s = store.write(&writes(&keys, F, &older)).await.unwrap();
        assert_eq!((s.written, s.skipped), (0, 1000), "round {round}");
    }
}

#[tokio::test]
async fn long_keys_and_keys_starting_with_0xff_are_stored_hashed() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let direct = vec![b'a'; 503]; // 503 + 8 = 511: the longest direct key
    let hashed = vec![b'a'; 504];
    let ff = vec![HASHED_KEY_PREFIX, 1, 2, 3];
    // A short key spelling exactly the hashed storage key of `hashed` (minus the field):
    // it starts with 0xFF, so it is hashed too and cannot collide.
    let mut forged = vec![HASHED_KEY_PREFIX];
    forged.extend_from_slice(&xxhash_rust::xxh3::xxh3_128(&hashed).to_be_bytes());
    let keys = vec![direct.clone(), hashed.clone(), ff.clone(), forged.clone()];
    let rows = sample_rows(&[(1, 0, 0), (2, 0, 1), (3, 0, 0), (4, 0, 1)]);
    let s = store.write(&writes(&keys, F, &rows)).await.unwrap();
    assert_eq!((s.written, s.skipped), (4, 0));

    let mut stored = Vec::new();
    store
        .for_each_row(|k, v| {
            stored.push((k.to_vec(), v.to_vec()));
            Ok(())
        })
        .unwrap();
    let mut expect: Vec<(Vec<u8>, Vec<u8>)> = keys
        .iter()
        .zip(&rows)
        .map(|(k, r)| {
            let mut sk = Vec::new();
            storage_key(k, &F, &mut sk);
            (sk, r.clone())
        })
        .collect();
    expect.sort();
    assert_eq!(stored, expect);
    let lens: Vec<usize> = expect.iter().map(|(k, _)| k.len()).collect();
    assert!(
        lens.contains(&511),
        "the 503-byte key is stored directly: {lens:?}"
    );
    assert_eq!(lens.iter().filter(|&&l| l == 25).count(), 3, "{lens:?}");
    assert!(expect.iter().all(|(k, _)| k.len() <= 511));

    let cells = store.read(&refs(&keys), &[F, G]).await.unwrap();
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(cells[i * 2].as_ref(), Some(row), "key {i}");
        assert_eq!(cells[i * 2 + 1], None, "key {i}, other field");
    }
}

#[tokio::test]
async fn a_batch_with_an_invalid_row_is_rejected_whole() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let (k1, k2) = (int_key("p", "e", 1), int_key("p", "e", 2));
    let good = sample_row(1, 1, 0);
    for bad in [&b""[..], b"\x07garbage-not-a-row", b"\x01short"] {
        let batch = [
            OnlineWrite {
                key: &k1,
                field: F,
                row: &good,
            },
            OnlineWrite {
                key: &k2,
                field: F,
                row: bad,
            },
        ];
        match store.write(&batch).await {
            Err(Error::Invalid(msg)) => assert!(msg.contains("row 1"), "{msg}"),
            other => panic!("expected Error::Invalid, got {other:?}"),
        }
        assert_eq!(
            store.read(&[&k1, &k2], &[F]).await.unwrap(),
            vec![None, None]
        );
    }
    assert_eq!(store.row_count().unwrap(), 0);
    let s = store.write(&[]).await.unwrap();
    assert_eq!((s.written, s.skipped), (0, 0));
}

#[tokio::test]
async fn write_stats_count_superseded_batch_rows_as_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let k = int_key("p", "e", 1);
    let rows = sample_rows(&[(3, 0, 0), (7, 0, 1), (5, 0, 0), (7, 0, 0)]);
    let batch: Vec<OnlineWrite<'_>> = rows
        .iter()
        .map(|row| OnlineWrite {
            key: &k,
            field: F,
            row,
        })
        .collect();
    let s = store.write(&batch).await.unwrap();
    assert_eq!((s.written, s.skipped), (1, 3));
    // Of two rows of equal version in one batch, the last stands.
    assert_eq!(
        store.read(&[&k], &[F]).await.unwrap(),
        vec![Some(rows[3].clone())]
    );

    // A row of equal version replaces the stored one and counts as written; an older
    // one is skipped.
    let corrected = sample_row(7, 0, 1);
    let older = sample_row(7, -1, 0);
    let batch = [
        OnlineWrite {
            key: &k,
            field: F,
            row: &corrected,
        },
        OnlineWrite {
            key: &k,
            field: F,
            row: &older,
        },
    ];
    let s = store.write(&batch).await.unwrap();
    assert_eq!((s.written, s.skipped), (1, 1));
    assert_eq!(
        store.read(&[&k], &[F]).await.unwrap(),
        vec![Some(corrected.clone())]
    );
    // Replaying the same row rewrites it: written, content unchanged.
    let s = store.write(&batch[..1]).await.unwrap();
    assert_eq!((s.written, s.skipped), (1, 0));
    assert_eq!(
        store.read(&[&k], &[F]).await.unwrap(),
        vec![Some(corrected)]
    );
    assert_eq!(store.row_count().unwrap(), 1);
}

#[tokio::test]
async fn equal_versions_in_a_batch_resolve_to_the_last_per_cell() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let keys: Vec<Vec<u8>> = (0..3).map(|i| int_key("p", "e", i)).collect();
    // Cells (key, field) and rows, interleaved; every row of a cell has the same version
    // except where noted.
    let cells: [(usize, FieldId, (i64, i64, usize)); 9] = [
        (0, F, (4, 4, 0)),
        (1, F, (4, 4, 0)),
        (0, G, (4, 4, 1)),
        (0, F, (4, 4, 1)), // last of (0, F)
        (1, F, (9, 0, 1)), // newest of (1, F)
        (2, G, (1, 1, 0)),
        (0, G, (4, 4, 0)), // last of (0, G)
        (1, F, (4, 4, 1)),
        (2, G, (1, 1, 1)), // last of (2, G)
    ];
    let versions: Vec<_> = cells.iter().map(|c| c.2).collect();
    let rows = sample_rows(&versions);
    let batch: Vec<OnlineWrite<'_>> = cells
        .iter()
        .zip(&rows)
        .map(|(&(k, field, _), row)| OnlineWrite {
            key: &keys[k],
            field,
            row,
        })
        .collect();
    let s = store.write_blocking(&batch).unwrap();
    assert_eq!((s.written, s.skipped), (4, 5));
    let got = store.read_blocking(&refs(&keys), &[F, G]).unwrap();
    let want = vec![
        Some(rows[3].clone()),
        Some(rows[6].clone()),
        Some(rows[4].clone()),
        None,
        None,
        Some(rows[8].clone()),
    ];
    assert_eq!(got, want);
}

#[test]
fn delete_older_than_scans_in_chunks_and_keeps_other_fields() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let keys: Vec<Vec<u8>> = (0..100).map(|i| int_key("p", "e", i)).collect();
    let mut long = int_key("p", "e", 100);
    long.resize(900, 7);
    let f_rows = sample_rows(&(0..100).map(|i| (i, 0, 0)).collect::<Vec<_>>());
    let g_rows = sample_rows(&(0..100).map(|_| (0, 0, 1)).collect::<Vec<_>>());
    let long_row = sample_row(-1, 0, 0);
    let mut batch = writes(&keys, F, &f_rows);
    batch.extend(writes(&keys, G, &g_rows));
    batch.push(OnlineWrite {
        key: &long,
        field: F,
        row: &long_row,
    });
    store.write_blocking(&batch).unwrap();

    for (chunk, cutoff, expect) in [(7, 50, 51), (1, 60, 10), (1000, 60, 0), (3, 100, 40)] {
        let n = store.delete_older_than_chunked(F, cutoff, chunk).unwrap();
        assert_eq!(n, expect, "chunk {chunk}, cutoff {cutoff}");
    }
    let cells = store.read_blocking(&refs(&keys), &[F, G]).unwrap();
    assert!(cells.iter().step_by(2).all(Option::is_none));
    assert!(cells.iter().skip(1).step_by(2).all(Option::is_some));
    assert_eq!(store.read_blocking(&[&long], &[F]).unwrap(), vec![None]);
    assert_eq!(store.row_count().unwrap(), 100);
    assert_eq!(store.delete_older_than_blocking(G, 1).unwrap(), 100);
    assert_eq!(store.row_count().unwrap(), 0);
}

/// Compaction keeps an expired row's timestamps and drops its values: a read decodes
/// the same version with no stored value, other fields and fresh rows are untouched,
/// and a write older than the kept version is still refused. On a multi-thread runtime
/// (the write transactions run off the worker).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_keeps_the_versions_of_expired_rows_and_drops_their_values() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let keys: Vec<Vec<u8>> = (0..10).map(|i| int_key("p", "e", i)).collect();
    let f_rows = sample_rows(&(0..10).map(|i| (i * 10, 0, 0)).collect::<Vec<_>>());
    let g_rows = sample_rows(&(0..10).map(|_| (0, 0, 1)).collect::<Vec<_>>());
    let mut batch = writes(&keys, F, &f_rows);
    batch.extend(writes(&keys, G, &g_rows));
    store.write(&batch).await.unwrap();

    // Rows at 0..=40 are before the cutoff 45.
    assert_eq!(store.compact_expired(F, 45).await.unwrap(), 5);
    assert_eq!(
        store.compact_expired(F, 45).await.unwrap(),
        0,
        "already compact"
    );
    let dtypes = sample_dtypes();
    let cells = store.read(&refs(&keys), &[F, G]).await.unwrap();
    for (i, pair) in cells.chunks(2).enumerate() {
        let f = decode_sample(pair[0].as_deref().unwrap(), &dtypes, "f");
        assert_eq!(f.event_ts, i as i64 * 10);
        let want_stored = if i < 5 { 0 } else { dtypes.len() };
        assert_eq!(f.stored, want_stored, "row {i}");
        let g = pair[1].as_deref().unwrap();
        assert_eq!(g, g_rows[i].as_slice(), "another field is untouched");
    }
    // Newer wins against the kept version: an older row stays out, a newer one lands.
    let older = sample_row(5, 0, 0);
    let newer = sample_row(25, 0, 1);
    let stats = store
        .write(&[
            OnlineWrite {
                key: &keys[1],
                field: F,
                row: &older,
            },
            OnlineWrite {
                key: &keys[2],
                field: F,
                row: &newer,
            },
        ])
        .await
        .unwrap();
    assert_eq!(stats.written, 1);
    let cells = store.read(&refs(&keys[1..3]), &[F]).await.unwrap();
    assert_eq!(row_version(cells[0].as_deref().unwrap()).unwrap(), (10, 0));
    assert_eq!(cells[1].as_deref().unwrap(), newer.as_slice());
}

/// Readers running while a writer commits big batches see, in each read, one whole
/// committed batch (every row complete and decodable, all from the same batch), never
/// going back in time; after the writer is done they see its last batch everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_readers_see_whole_batches() {
    const KEYS: i64 = 3000;
    const BATCHES: i64 = 25;
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let keys: Arc<Vec<Vec<u8>>> = Arc::new((0..KEYS).map(|i| int_key("p", "e", i)).collect());
    let done = Arc::new(AtomicBool::new(false));

    let writer = {
        let (store, keys, done) = (store.clone(), keys.clone(), done.clone());
        tokio::spawn(async move {
            for b in 1..=BATCHES {
                let versions: Vec<_> = (0..KEYS).map(|i| (b, i, b as usize)).collect();
                let rows = sample_rows(&versions);
                let s = store.write(&writes(&keys, F, &rows)).await.unwrap();
                assert_eq!((s.written, s.skipped), (KEYS as u64, 0));
                tokio::task::yield_now().await;
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    let readers: Vec<_> = (0..3usize)
        .map(|r| {
            let (store, keys, done) = (store.clone(), keys.clone(), done.clone());
            tokio::spawn(async move {
                let dtypes = sample_dtypes();
                let values: Vec<_> = (0..2)
                    .map(|v| decode_sample(&sample_row(0, 0, v), &dtypes, "sample").values)
                    .collect();
                let picked: Vec<&[u8]> =
                    keys.iter().skip(r).step_by(7).map(Vec::as_slice).collect();
                let mut last = 0;
                let mut reads = 0u64;
                loop {
                    let finished = done.load(Ordering::SeqCst);
                    let cells = store.read(&picked, &[F]).await.unwrap();
                    reads += 1;
                    let mut seen = None;
                    for (i, cell) in cells.iter().enumerate() {
                        let ts = match cell {
                            None => 0,
                            Some(bytes) => {
                                let row = decode_sample(bytes, &dtypes, "reader");
                                let variant = (row.event_ts % 2) as usize;
                                assert_eq!(row.values, values[variant], "reader {r}: cell {i}");
                                row.event_ts
                            }
                        };
                        match seen {
                            None => seen = Some(ts),
                            Some(s) => {
                                assert_eq!(s, ts, "reader {r}: cell {i} is from another batch")
                            }
                        }
                    }
                    let ts = seen.unwrap_or(0);
                    assert!(ts >= last, "reader {r} went back from batch {last} to {ts}");
                    last = ts;
                    if finished {
                        assert_eq!(ts, BATCHES, "reader {r} after the writer finished");
                        return reads;
                    }
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    writer.await.unwrap();
    for r in readers {
        assert!(r.await.unwrap() >= 1);
    }
    let cells = store.read(&refs(&keys), &[F]).await.unwrap();
    for (i, cell) in cells.iter().enumerate() {
        let bytes = cell.as_ref().unwrap_or_else(|| panic!("key {i} missing"));
        assert_eq!(row_version(bytes).unwrap(), (BATCHES, i as i64));
    }
}

/// `online_store: { type: embedded, path }` parses into [`EmbeddedConfig`] (unknown
/// fields rejected, the path required) and opens relative to the repository.
#[test]
fn the_config_section_parses_and_opens_relative_to_the_repository() {
    #[derive(Debug, PartialEq, serde::Deserialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
    enum OnlineStoreSection {
        Embedded(EmbeddedConfig),
    }
    let cfg: OnlineStoreSection =
        serde_saphyr::from_str("{ type: embedded, path: data/online }").unwrap();
    assert_eq!(cfg, OnlineStoreSection::Embedded(EmbeddedConfig::default()));
    for (yaml, want) in [
        ("{ type: embedded, path: x, size: 5 }", "size"),
        ("{ type: embedded }", "path"),
    ] {
        let e = serde_saphyr::from_str::<OnlineStoreSection>(yaml).unwrap_err();
        assert!(e.to_string().contains(want), "{yaml}: {e}");
    }
    let text = serde_saphyr::to_string(&EmbeddedConfig::default()).unwrap();
    assert_eq!(
        serde_saphyr::from_str::<EmbeddedConfig>(&text).unwrap(),
        EmbeddedConfig::default()
    );

    let repo = tempfile::tempdir().unwrap();
    let store = EmbeddedConfig::default().open(repo.path()).unwrap();
    assert_eq!(
        store.path(),
        repo.path().join("data/online").canonicalize().unwrap()
    );
    let absolute = tempfile::tempdir().unwrap();
    let cfg = EmbeddedConfig {
        path: absolute.path().to_path_buf(),
    };
    assert_eq!(
        cfg.open(repo.path()).unwrap().path(),
        absolute.path().canonicalize().unwrap()
    );
}

fn count(n: u64) -> [u8; 8] {
    n.to_le_bytes()
}

/// A delta of the merge's own view (no layer named) at `start`.
fn tile(start: i64, ir: &[u8]) -> TileDelta<'_> {
    TileDelta {
        layer: None,
        start,
        ir,
    }
}

fn add(stored: Option<&[u8]>, delta: &[u8], out: &mut Vec<u8>) -> quiver_online::Result<()> {
    let v = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap());
    out.extend_from_slice(&count(stored.map_or(0, v) + v(delta)));
    Ok(())
}

/// A store written before tiles existed (only the `rows` database) opens with its rows
/// intact and takes tile merges.
#[tokio::test]
async fn a_store_without_tile_databases_opens_and_gains_them() {
    let dir = tempfile::tempdir().unwrap();
    let key = int_key("p", "e", 1);
    let row = sample_row(1, 1, 0);
    {
        let mut options = heed::EnvOpenOptions::new();
        options.map_size(1 << 30).max_dbs(4);
        // SAFETY: a fresh directory that nothing else opens while this environment
        // lives; it is closed before the store opens it.
        #[allow(unsafe_code)]
        let env = unsafe { options.open(dir.path()) }.unwrap();
        type Db = heed::Database<'static, heed::types::Bytes, heed::types::Bytes>;
        let wtxn = env.write_txn().unwrap();
        let rows: Db = env
            .create_databases_and_commit(wtxn, |dbo, wtxn| {
                dbo.create_database(wtxn, Some("rows"))
                    .map(heed::CommitOrAbort::<_, ()>::Commit)
            })
            .unwrap()
            .unwrap_commit();
        let mut wtxn = env.write_txn().unwrap();
        let mut sk = Vec::new();
        storage_key(&key, &F, &mut sk);
        rows.put(&mut wtxn, &sk, &row).unwrap();
        wtxn.commit().unwrap();
        env.prepare_for_closing().wait();
    }
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(store.read(&[&key], &[F]).await.unwrap(), vec![Some(row)]);
    let one = count(1);
    let t = [tile(0, &one)];
    let m = [KeyMerge {
        key: &key,
        view: F,
        position: None,
        tiles: &t,
    }];
    store.merge_tiles(&m, &add).await.unwrap();
    assert_eq!(
        store.read_tiles(&[&key], F, &[0]).await.unwrap(),
        vec![Some(one.to_vec())].into()
    );
}

/// Tiles and positions persist across close and reopen, long entity keys included, and
/// a merge call is one transaction: a failing merger leaves nothing of the call.
#[tokio::test]
async fn tiles_and_positions_persist_and_a_failed_call_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut long = int_key("p", "e", 2);
    long.resize(600, b'x');
    let keys = [int_key("p", "e", 1), long];
    let one = count(1);
    let t = [tile(300, &one)];
    let merges: Vec<KeyMerge<'_>> = keys
        .iter()
        .map(|key| KeyMerge {
            key,
            view: G,
            position: Some(StreamPosition {
                partition: b"p",
                offset: 9,
                follows: None,
            }),
            tiles: &t,
        })
        .collect();
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let s = store.merge_tiles(&merges, &add).await.unwrap();
        assert_eq!((s.applied, s.tiles), (2, 2));
    }
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let key_refs = refs(&keys);
    assert_eq!(
        store.read_tiles(&key_refs, G, &[300]).await.unwrap(),
        vec![Some(one.to_vec()), Some(one.to_vec())].into()
    );
    assert_eq!(
        store.stream_positions(&key_refs, G, b"p").await.unwrap(),
        vec![Some(9), Some(9)]
    );
    // Rows are not tiles: the rows database is empty.
    assert_eq!(store.row_count().unwrap(), 0);

    let fail_on_long = |stored: Option<&[u8]>, delta: &[u8], out: &mut Vec<u8>| {
        if delta == b"boom" {
            return Err(quiver_online::Error::Invalid("boom".into()));
        }
        add(stored, delta, out)
    };
    let boom = [tile(300, b"boom")];
    let calls = [
        KeyMerge {
            key: &keys[0],
            view: G,
            position: None,
            tiles: &t,
        },
        KeyMerge {
            key: &keys[1],
            view: G,
            position: None,
            tiles: &boom,
        },
    ];
    let e = store.merge_tiles(&calls, &fail_on_long).await.unwrap_err();
    assert!(e.to_string().contains("boom"), "{e}");
    assert!(e.to_string().contains("tile at 300"), "{e}");
    assert_eq!(
        store.read_tiles(&key_refs, G, &[300]).await.unwrap(),
        vec![Some(one.to_vec()), Some(one.to_vec())].into(),
        "nothing of the failed call is stored"
    );
}

/// A merge writes a tile not stored yet before it meets the key's stored ones: when
/// merging into a stored tile then fails, the tile written first is gone with the call
/// (and a call that succeeds merges into the stored tile, not over it).
#[tokio::test]
async fn a_merge_failing_on_a_stored_tile_leaves_no_new_tile_of_the_call() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let key = int_key("p", "e", 1);
    let one = count(1);
    let first = [tile(300, &one)];
    let merge = |tiles| KeyMerge {
        key: &key,
        view: G,
        position: None,
        tiles,
    };
    store.merge_tiles(&[merge(&first)], &add).await.unwrap();
    // New tiles before (0) and after (600) the stored one (300).
    let both = [tile(0, &one), tile(300, &one), tile(600, &one)];
    let refuse_stored = |stored: Option<&[u8]>, delta: &[u8], out: &mut Vec<u8>| {
        if stored.is_some() {
            return Err(quiver_online::Error::Invalid("stored tile refused".into()));
        }
        add(stored, delta, out)
    };
    let e = store
        .merge_tiles(&[merge(&both)], &refuse_stored)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("stored tile refused"), "{e}");
    assert_eq!(
        store.read_tiles(&[&key], G, &[0, 300, 600]).await.unwrap(),
        vec![None, Some(one.to_vec()), None].into(),
        "nothing of the failed call is stored"
    );
    let s = store.merge_tiles(&[merge(&both)], &add).await.unwrap();
    assert_eq!((s.applied, s.tiles), (1, 3));
    assert_eq!(
        store.read_tiles(&[&key], G, &[0, 300, 600]).await.unwrap(),
        vec![
            Some(one.to_vec()),
            Some(count(2).to_vec()),
            Some(one.to_vec())
        ]
        .into()
    );
}

#[test]
fn store_errors_keep_the_backend_error_as_their_source() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-directory");
    std::fs::write(&file, b"x").unwrap();
    let Err(e) = EmbeddedStore::open(&file) else {
        panic!("a file is not a store directory");
    };
    assert!(matches!(e, Error::Store { .. }), "{e:?}");
    let source = std::error::Error::source(&e).expect("the I/O error is kept");
    assert!(
        source.downcast_ref::<std::io::Error>().is_some(),
        "{source:?}"
    );
    assert!(e.to_string().contains(&source.to_string()), "{e}");
}
