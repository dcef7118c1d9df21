//! Integration tests of the Redis online store against real `redis-server` processes
//! (see `harness`): the conformance suite on a single server and on a 3-primary
//! cluster, the key layout on the cluster's shards, key expiry, script reloading,
//! connection errors, and tile merges (`tiles`).

mod harness;
mod tiles;

use std::sync::Arc;
use std::time::{Duration, Instant};

use quiver_core::encoding::{encode_key_value, encode_row};
use quiver_core::{Timestamp, Value};
use quiver_online::{
    conformance, entity_key, Error, FieldId, OnlineStore, OnlineWrite, WriteStats,
};
use quiver_redis::{entity_key_of, redis_key, RedisConfig, RedisStore};

/// A project name unique to this test run.
fn project(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    format!("it_{test}_{}_{nanos}", std::process::id())
}

fn key(project: &str, id: i64) -> Vec<u8> {
    let mut v = Vec::new();
    encode_key_value(&Value::Int64(id), &mut v).expect("int keys encode");
    entity_key(project, "driver", &v)
}

fn field(project: &str, i: u64) -> FieldId {
    let mut seed = project.as_bytes().to_vec();
    seed.extend_from_slice(&i.to_le_bytes());
    xxhash_rust::xxh3::xxh3_64(&seed).to_le_bytes()
}

/// A row header at the given version followed by `payload`.
fn row(event_ts: Timestamp, created_ts: Timestamp, payload: &[u8]) -> Vec<u8> {
    let mut buf = Vec::new();
    encode_row(event_ts, created_ts, &[], 0, &mut buf).expect("headers encode");
    buf.extend_from_slice(payload);
    buf
}

async fn connect(config: &RedisConfig) -> RedisStore {
    RedisStore::connect(config)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"))
}

/// The conformance suite, twice (the second time on a non-empty store), on the store of
/// `config`; every check, rows and tiles, is the suite's own, the same for every backend.
async fn run_conformance(config: &RedisConfig, backend: &str) {
    let store = connect(config).await;
    assert_eq!(store.backend(), backend);
    let store: Arc<dyn OnlineStore> = Arc::new(store);
    conformance::run_all(store.clone()).await;
    conformance::run_all(store).await;
}

#[tokio::test]
async fn conformance_standalone() {
    let server = harness::standalone();
    run_conformance(&RedisConfig::standalone(server.url()), "redis").await;
}

#[tokio::test]
async fn conformance_cluster() {
    let cluster = harness::cluster();
    run_conformance(&RedisConfig::cluster(cluster.nodes()), "redis-cluster").await;
}

/// All fields of an entity are in one hash whose slot is that of its hash tag alone;
/// different entities spread over all three primaries.
#[tokio::test]
async fn entities_spread_over_shards_each_in_one_slot() {
    let cluster = harness::cluster();
    let store = connect(&RedisConfig::cluster(cluster.nodes())).await;
    let p = project("spread");
    let (fa, fb) = (field(&p, 0), field(&p, 1));
    let n = 300;
    let keys: Vec<Vec<u8>> = (0..n).map(|i| key(&p, i)).collect();
    let rows: Vec<Vec<u8>> = (0..n).map(|i| row(i, 0, b"v")).collect();
    let mut batch = Vec::new();
    for (k, r) in keys.iter().zip(&rows) {
        batch.push(OnlineWrite {
            key: k,
            field: fa,
            row: r,
        });
        batch.push(OnlineWrite {
            key: k,
            field: fb,
            row: r,
        });
    }
    let stats = store.write(&batch).await.expect("write");
    assert_eq!(
        stats,
        WriteStats {
            written: 2 * n as u64,
            skipped: 0
        }
    );

    let primaries = harness::primaries(&cluster.nodes()[0]);
    assert_eq!(primaries.len(), 3, "a 3-primary cluster: {primaries:?}");
    let mut seed = harness::connect(&cluster.nodes()[0]);
    let mut per_node = vec![0usize; primaries.len()];
    for k in &keys {
        let rk = redis_key(k);
        assert_eq!(entity_key_of(&rk), Some(k.as_slice()));
        // The slot is the slot of the tag: `{hex}` alone, or any other suffix, lands on
        // the same slot.
        let slot = harness::keyslot(&mut seed, &rk);
        let tag = &rk[1..19]; // "{" + 16 hex + "}"
        assert_eq!(tag.first(), Some(&b'{'));
        assert_eq!(tag.last(), Some(&b'}'));
        assert_eq!(harness::keyslot(&mut seed, tag), slot);
        let mut other_suffix = rk[..19].to_vec();
        other_suffix.extend_from_slice(b"anything else");
        assert_eq!(harness::keyslot(&mut seed, &other_suffix), slot);

        let owner = primaries
            .iter()
            .position(|(_, ranges)| ranges.iter().any(|&(a, b)| (a..=b).contains(&slot)))
            .expect("every slot is served");
        per_node[owner] += 1;
        // Both fields of the entity are in its one hash, on the owner.
        let mut c = harness::connect(&primaries[owner].0);
        let len: usize = redis::cmd("HLEN").arg(&rk).query(&mut c).expect("HLEN");
        assert_eq!(len, 2, "entity hash on {}", primaries[owner].0);
    }
    for (i, (url, _)) in primaries.iter().enumerate() {
        assert!(
            per_node[i] > 0,
            "no entity on primary {url}: {per_node:?} over {primaries:?}"
        );
        let mut c = harness::connect(url);
        let dbsize: u64 = redis::cmd("DBSIZE").query(&mut c).expect("DBSIZE");
        assert!(dbsize >= per_node[i] as u64, "DBSIZE {dbsize} on {url}");
    }
    // Evenly: with 300 entities over 3 shards, no shard gets fewer than 50.
    assert!(
        per_node.iter().all(|&c| c >= 50),
        "uneven spread {per_node:?}"
    );
    assert_eq!(per_node.iter().sum::<usize>(), n as usize);
}

/// A read of keys on different shards, in any order, with repeats and missing cells,
/// returns the right cells key-major.
#[tokio::test]
async fn cross_shard_reads_are_key_major() {
    let cluster = harness::cluster();
    let store = connect(&RedisConfig::cluster(cluster.nodes())).await;
    let p = project("cross");
    let fields: Vec<FieldId> = (0..3).map(|i| field(&p, i)).collect();
    let nk = 40;
    let keys: Vec<Vec<u8>> = (0..nk).map(|i| key(&p, i)).collect();
    let present = |k: usize, f: usize| !(k + f).is_multiple_of(3);
    let payload = |k: usize, f: usize| format!("key{k} field{f}").into_bytes();
    let mut rows = Vec::new();
    for k in 0..nk as usize {
        for f in 0..fields.len() {
            if present(k, f) {
                rows.push((k, f, row(1, 1, &payload(k, f))));
            }
        }
    }
    let batch: Vec<OnlineWrite<'_>> = rows
        .iter()
        .map(|(k, f, r)| OnlineWrite {
            key: &keys[*k],
            field: fields[*f],
            row: r,
        })
        .collect();
    store.write(&batch).await.expect("write");

    // The keys read span every shard.
    let primaries = harness::primaries(&cluster.nodes()[0]);
    let mut seed = harness::connect(&cluster.nodes()[0]);
    let owners: std::collections::BTreeSet<usize> = keys
        .iter()
        .map(|k| {
            let slot = harness::keyslot(&mut seed, &redis_key(k));
            primaries
                .iter()
                .position(|(_, r)| r.iter().any(|&(a, b)| (a..=b).contains(&slot)))
                .expect("served slot")
        })
        .collect();
    assert_eq!(owners.len(), 3, "40 keys should span the 3 shards");

    let mut order: Vec<usize> = (0..nk as usize).rev().collect();
    order.extend([5, 5, 17, 0]);
    let field_order = [2usize, 0, 1, 0];
    let key_refs: Vec<&[u8]> = order.iter().map(|&k| keys[k].as_slice()).collect();
    let field_ids: Vec<FieldId> = field_order.iter().map(|&f| fields[f]).collect();
    let cells = store.read(&key_refs, &field_ids).await.expect("read");
    assert_eq!(cells.len(), order.len() * field_order.len());
    for (ki, &k) in order.iter().enumerate() {
        for (fi, &f) in field_order.iter().enumerate() {
            let want = present(k, f).then(|| row(1, 1, &payload(k, f)));
            assert_eq!(
                cells[ki * field_order.len() + fi],
                want,
                "cell of key {k} field {f} at [{ki} * {} + {fi}]",
                field_order.len()
            );
        }
    }
}

/// With a key TTL, a write that stores a row sets the hash to expire; without one, keys
/// do not expire.
#[tokio::test]
async fn key_ttl_sets_expiry() {
    let server = harness::standalone();
    let p = project("ttl");
    let f = field(&p, 0);
    let mut inspect = harness::connect(&server.url());

    let store =
        connect(&RedisConfig::standalone(server.url()).with_key_ttl(Duration::from_secs(3600)))
            .await;
    let k = key(&p, 1);
    let r = row(10, 0, b"x");
    store
        .write(&[OnlineWrite {
            key: &k,
            field: f,
            row: &r,
        }])
        .await
        .expect("write");
    let pttl: i64 = redis::cmd("PTTL")
        .arg(redis_key(&k))
        .query(&mut inspect)
        .expect("PTTL");
    assert!(pttl > 0 && pttl <= 3_600_000, "PTTL {pttl}");
    let ttl: i64 = redis::cmd("TTL")
        .arg(redis_key(&k))
        .query(&mut inspect)
        .expect("TTL");
    assert!(ttl > 3500, "TTL {ttl}");

    let plain = connect(&RedisConfig::standalone(server.url())).await;
    let k2 = key(&p, 2);
    plain
        .write(&[OnlineWrite {
            key: &k2,
            field: f,
            row: &r,
        }])
        .await
        .expect("write");
    let pttl: i64 = redis::cmd("PTTL")
        .arg(redis_key(&k2))
        .query(&mut inspect)
        .expect("PTTL");
    assert_eq!(pttl, -1, "a key without TTL");

    // A short TTL really expires the key: the cell reads as missing afterwards.
    let short =
        connect(&RedisConfig::standalone(server.url()).with_key_ttl(Duration::from_millis(200)))
            .await;
    let k3 = key(&p, 3);
    short
        .write(&[OnlineWrite {
            key: &k3,
            field: f,
            row: &r,
        }])
        .await
        .expect("write");
    assert_eq!(
        short.read(&[&k3], &[f]).await.expect("read"),
        vec![Some(r.clone())]
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while short.read(&[&k3], &[f]).await.expect("read")[0].is_some() {
        assert!(Instant::now() < deadline, "the key did not expire");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// After `SCRIPT FLUSH` (as after a restart or a failover) writes and deletes load the
/// scripts again and go through.
#[tokio::test]
async fn scripts_are_reloaded_after_a_flush() {
    let server = harness::standalone();
    let store = connect(&RedisConfig::standalone(server.url())).await;
    let p = project("flush");
    let f = field(&p, 0);
    let k = key(&p, 1);
    let mut inspect = harness::connect(&server.url());
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query(&mut inspect)
        .expect("SCRIPT FLUSH");
    let r = row(5, 0, b"a");
    let s = store
        .write(&[OnlineWrite {
            key: &k,
            field: f,
            row: &r,
        }])
        .await
        .expect("write after flush");
    assert_eq!(
        s,
        WriteStats {
            written: 1,
            skipped: 0
        }
    );
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query(&mut inspect)
        .expect("SCRIPT FLUSH");
    assert_eq!(
        store
            .delete_older_than(f, 6)
            .await
            .expect("delete after flush"),
        1
    );
    assert_eq!(store.read(&[&k], &[f]).await.expect("read"), vec![None]);
}

/// A batch larger than one pipeline (in commands and in bytes) is written whole, with
/// exact stats, and a replay rewrites the same rows.
#[tokio::test]
async fn large_batches_span_pipelines() {
    let server = harness::standalone();
    let store = connect(&RedisConfig::standalone(server.url())).await;
    let p = project("large");
    let f = field(&p, 0);
    let n = 3000;
    let keys: Vec<Vec<u8>> = (0..n).map(|i| key(&p, i)).collect();
    let rows: Vec<Vec<u8>> = (0..n).map(|i| row(i, 0, &vec![i as u8; 4096])).collect();
    let batch: Vec<OnlineWrite<'_>> = keys
        .iter()
        .zip(&rows)
        .map(|(key, row)| OnlineWrite { key, field: f, row })
        .collect();
    let s = store.write(&batch).await.expect("write");
    assert_eq!(
        s,
        WriteStats {
            written: n as u64,
            skipped: 0
        }
    );
    let s = store.write(&batch).await.expect("replay");
    assert_eq!(
        s,
        WriteStats {
            written: n as u64,
            skipped: 0
        }
    );
    let key_refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    let cells = store.read(&key_refs, &[f]).await.expect("read");
    for (i, c) in cells.iter().enumerate() {
        assert_eq!(c.as_deref(), Some(rows[i].as_slice()), "key {i}");
    }
    assert_eq!(
        store.delete_older_than(f, n / 2).await.expect("delete"),
        n as u64 / 2
    );
}

/// An invalid row fails the batch before anything is sent; keys that are not the
/// store's are left alone by `delete_older_than`.
#[tokio::test]
async fn invalid_rows_and_foreign_keys() {
    let server = harness::standalone();
    let store = connect(&RedisConfig::standalone(server.url())).await;
    let p = project("invalid");
    let f = field(&p, 0);
    let (k1, k2) = (key(&p, 1), key(&p, 2));
    let good = row(1, 0, b"good");
    let e = store
        .write(&[
            OnlineWrite {
                key: &k1,
                field: f,
                row: &good,
            },
            OnlineWrite {
                key: &k2,
                field: f,
                row: b"short",
            },
        ])
        .await
        .expect_err("a row without a header");
    assert!(matches!(e, Error::Invalid(_)), "{e}");
    assert!(e.to_string().contains("row 1"), "{e}");
    assert_eq!(store.read(&[&k1], &[f]).await.expect("read"), vec![None]);

    let mut inspect = harness::connect(&server.url());
    let foreign_string = b"q{not-ours".to_vec();
    let mut forged = b"q{0123456789abcdef}".to_vec();
    forged.extend_from_slice(&k1);
    let _: () = redis::cmd("SET")
        .arg(&foreign_string)
        .arg("x")
        .query(&mut inspect)
        .expect("SET");
    let _: () = redis::cmd("HSET")
        .arg(&forged)
        .arg(&f[..])
        .arg(&good)
        .query(&mut inspect)
        .expect("HSET");
    assert_eq!(
        store
            .delete_older_than(f, Timestamp::MAX)
            .await
            .expect("delete"),
        0
    );
    let exists: u64 = redis::cmd("EXISTS")
        .arg(&foreign_string)
        .arg(&forged)
        .query(&mut inspect)
        .expect("EXISTS");
    assert_eq!(exists, 2);
}

/// Nothing listens: `connect` fails at once, naming the address.
#[tokio::test]
async fn connection_refused_is_a_clear_error() {
    let port = harness::free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let started = Instant::now();
    let e = RedisStore::connect(&RedisConfig::standalone(&url))
        .await
        .expect_err("nothing listens");
    let msg = e.to_string();
    assert!(msg.contains(&url), "{msg}");
    assert!(msg.contains("cannot connect"), "{msg}");
    assert!(msg.to_lowercase().contains("refused"), "{msg}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );

    let node = format!("127.0.0.1:{port}");
    let e = RedisStore::connect(&RedisConfig::cluster([node.clone()]))
        .await
        .expect_err("nothing listens");
    let msg = e.to_string();
    assert!(msg.contains(&format!("redis://{node}")), "{msg}");
    assert!(msg.contains("cannot connect"), "{msg}");

    let e = RedisStore::connect(&RedisConfig::default())
        .await
        .expect_err("no address");
    assert!(e.to_string().contains("needs `url`"), "{e}");
    let e = RedisStore::connect(&RedisConfig::standalone("127.0.0.1:6379"))
        .await
        .expect_err("not a URL");
    assert!(e.to_string().contains("not a valid Redis URL"), "{e}");
}
