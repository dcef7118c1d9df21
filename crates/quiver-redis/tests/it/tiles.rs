//! Tile merges on Redis beyond the conformance suite: the fields in the entity hash, the
//! compare-and-set retry when another writer changes a key between read and write, its
//! bound, the version bump of tile deletion, key expiry and script reloading.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use quiver_online::conformance::tiles::Count;
use quiver_online::tiles::{position_field, tile_field, POSITION_FIELD_LEN, TILE_FIELD_LEN};
use quiver_online::{
    KeyMerge, MergeStats, OnlineStore, Result, StreamPosition, TileDelta, TileMerger,
};
use quiver_redis::{redis_key, RedisConfig, RedisStore, MERGE_ATTEMPTS, VERSION_FIELD};

use crate::{connect, field, harness, key, project};

fn version(conn: &mut redis::Connection, entity: &[u8]) -> Option<i64> {
    redis::cmd("HGET")
        .arg(redis_key(entity))
        .arg(VERSION_FIELD)
        .query(conn)
        .expect("HGET version")
}

/// Counts, and before each of its first `times` merges changes the key behind the
/// store's back, as another writer would: sets the tile to 100 and bumps the version.
struct Interferer {
    url: String,
    entity: Vec<u8>,
    tile: [u8; TILE_FIELD_LEN],
    times: AtomicU32,
}

impl TileMerger for Interferer {
    fn merge(&self, stored: Option<&[u8]>, delta: &[u8], out: &mut Vec<u8>) -> Result<()> {
        if self
            .times
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            let mut c = harness::connect(&self.url);
            let _: () = redis::pipe()
                .atomic()
                .cmd("HSET")
                .arg(redis_key(&self.entity))
                .arg(&self.tile[..])
                .arg(&Count::ir(100)[..])
                .ignore()
                .cmd("HINCRBY")
                .arg(redis_key(&self.entity))
                .arg(VERSION_FIELD)
                .arg(1)
                .ignore()
                .query(&mut c)
                .expect("interfere");
        }
        Count.merge(stored, delta, out)
    }
}

/// A merge stores its tiles and position as fields of the entity's one hash, in the
/// shared layout, and counts the change in the version field; with a key TTL it sets
/// the hash's expiry.
#[tokio::test]
async fn merges_write_the_shared_layout_into_the_entity_hash() {
    let server = harness::standalone();
    let store =
        connect(&RedisConfig::standalone(server.url()).with_key_ttl(Duration::from_secs(3600)))
            .await;
    let p = project("layout");
    let (view, k) = (field(&p, 0), key(&p, 1));
    let ir = Count::ir(3);
    let t = [TileDelta {
        layer: None,
        start: -300_000_000,
        ir: &ir,
    }];
    let position = StreamPosition {
        partition: b"orders/7",
        offset: 42,
        follows: None,
    };
    let m = [KeyMerge {
        key: &k,
        view,
        position: Some(position),
        tiles: &t,
    }];
    store.merge_tiles(&m, &Count).await.expect("merge");

    let mut inspect = harness::connect(&server.url());
    let mut fields: Vec<(Vec<u8>, Vec<u8>)> = redis::cmd("HGETALL")
        .arg(redis_key(&k))
        .query(&mut inspect)
        .expect("HGETALL");
    fields.sort();
    let mut stored_position = 42u128.to_be_bytes().to_vec();
    stored_position.extend_from_slice(b"orders/7");
    let mut want = vec![
        (VERSION_FIELD.to_vec(), b"1".to_vec()),
        (tile_field(&view, -300_000_000).to_vec(), ir.to_vec()),
        (position_field(&view, b"orders/7").to_vec(), stored_position),
    ];
    want.sort();
    assert_eq!(fields, want);
    let mut lens: Vec<usize> = fields.iter().map(|(f, _)| f.len()).collect();
    lens.sort();
    assert_eq!(
        lens,
        [VERSION_FIELD.len(), TILE_FIELD_LEN, POSITION_FIELD_LEN]
    );
    let pttl: i64 = redis::cmd("PTTL")
        .arg(redis_key(&k))
        .query(&mut inspect)
        .expect("PTTL");
    assert!(pttl > 0 && pttl <= 3_600_000, "PTTL {pttl}");

    // A replay writes nothing, not even the version.
    let s = store.merge_tiles(&m, &Count).await.expect("replay");
    assert_eq!((s.applied, s.skipped), (0, 1));
    assert_eq!(version(&mut inspect, &k), Some(1));
}

/// When another writer changes the key between the merge's read and its write, the
/// compare-and-set fails and the merge is read and computed again from the new state:
/// nothing is lost, and the retry is counted.
#[tokio::test]
async fn a_merge_that_loses_a_race_reads_and_merges_again() {
    for cluster in [false, true] {
        let (config, url, _servers) = if cluster {
            let c = harness::cluster();
            let nodes = c.nodes();
            (RedisConfig::cluster(nodes.clone()), None, (None, Some(c)))
        } else {
            let s = harness::standalone();
            let url = s.url();
            (
                RedisConfig::standalone(url.clone()),
                Some(url),
                (Some(s), None),
            )
        };
        let store = connect(&config).await;
        let p = project("race");
        let (view, k) = (field(&p, 0), key(&p, 1));
        // The node that owns the key (on a cluster, ask any node where it lives).
        let url = url.unwrap_or_else(|| owner(&config.cluster[0], &redis_key(&k)));
        let one = Count::ir(1);
        let t = [TileDelta {
            layer: None,
            start: 0,
            ir: &one,
        }];
        let m = [KeyMerge {
            key: &k,
            view,
            position: None,
            tiles: &t,
        }];
        store.merge_tiles(&m, &Count).await.expect("first merge");
        let interferer = Interferer {
            url: url.clone(),
            entity: k.clone(),
            tile: tile_field(&view, 0),
            times: AtomicU32::new(1),
        };
        let s = store.merge_tiles(&m, &interferer).await.expect("merge");
        assert_eq!(
            s,
            MergeStats {
                applied: 1,
                skipped: 0,
                tiles: 1,
                retries: 1,
                conflicts: 0,
                left_out: vec![],
            },
            "cluster: {cluster}"
        );
        let got = store.read_tiles(&[&k], view, &[0]).await.expect("read");
        assert_eq!(
            got.get(0).and_then(Count::value),
            Some(101),
            "the merge is applied to the other writer's 100, cluster: {cluster}"
        );
        let mut inspect = harness::connect(&url);
        assert_eq!(version(&mut inspect, &k), Some(3), "cluster: {cluster}");
    }
}

/// The node of a cluster that serves `key`'s slot.
fn owner(seed: &str, key: &[u8]) -> String {
    let seed = if seed.contains("://") {
        seed.to_string()
    } else {
        format!("redis://{seed}")
    };
    let mut c = harness::connect(&seed);
    let slot = harness::keyslot(&mut c, key);
    harness::primaries(&seed)
        .into_iter()
        .find(|(_, ranges)| ranges.iter().any(|&(a, b)| (a..=b).contains(&slot)))
        .map(|(url, _)| url)
        .expect("every slot is served")
}

/// A key that changes under every attempt makes the merge fail after
/// [`MERGE_ATTEMPTS`] attempts, saying so, instead of retrying forever.
#[tokio::test]
async fn merges_give_up_after_a_bounded_number_of_attempts() {
    let server = harness::standalone();
    let store = connect(&RedisConfig::standalone(server.url())).await;
    let p = project("giveup");
    let (view, k) = (field(&p, 0), key(&p, 1));
    let one = Count::ir(1);
    let t = [TileDelta {
        layer: None,
        start: 0,
        ir: &one,
    }];
    let m = [KeyMerge {
        key: &k,
        view,
        position: None,
        tiles: &t,
    }];
    let interferer = Interferer {
        url: server.url(),
        entity: k.clone(),
        tile: tile_field(&view, 0),
        times: AtomicU32::new(u32::MAX),
    };
    let e = store
        .merge_tiles(&m, &interferer)
        .await
        .expect_err("never settles");
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("after {MERGE_ATTEMPTS} attempts")),
        "{msg}"
    );
    assert_eq!(
        interferer.times.load(Ordering::SeqCst),
        u32::MAX - MERGE_ATTEMPTS,
        "one merge per attempt"
    );
}

/// Deleting tiles increments the version of each hash it deleted from (so that a merge
/// that read a deleted tile cannot write it back), and only then.
#[tokio::test]
async fn tile_deletes_bump_the_version() {
    let server = harness::standalone();
    let store = connect(&RedisConfig::standalone(server.url())).await;
    let p = project("delver");
    let (view, k) = (field(&p, 0), key(&p, 1));
    let one = Count::ir(1);
    let t = [
        TileDelta {
            layer: None,
            start: 0,
            ir: &one,
        },
        TileDelta {
            layer: None,
            start: 600,
            ir: &one,
        },
    ];
    let m = [KeyMerge {
        key: &k,
        view,
        position: None,
        tiles: &t,
    }];
    store.merge_tiles(&m, &Count).await.expect("merge");
    let mut inspect = harness::connect(&server.url());
    assert_eq!(version(&mut inspect, &k), Some(1));
    assert_eq!(
        store.delete_tiles_before(view, 300).await.expect("delete"),
        1
    );
    assert_eq!(version(&mut inspect, &k), Some(2));
    assert_eq!(
        store.delete_tiles_before(view, 300).await.expect("delete"),
        0
    );
    assert_eq!(version(&mut inspect, &k), Some(2));
    assert_eq!(
        store
            .read_tiles(&[&k], view, &[0, 600])
            .await
            .expect("read"),
        vec![None, Some(one.to_vec())].into()
    );
}

/// After `SCRIPT FLUSH` merges and tile deletes load their scripts again.
#[tokio::test]
async fn merge_scripts_are_reloaded_after_a_flush() {
    let server = harness::standalone();
    let store: RedisStore = connect(&RedisConfig::standalone(server.url())).await;
    let p = project("mflush");
    let (view, k) = (field(&p, 0), key(&p, 1));
    let mut inspect = harness::connect(&server.url());
    let flush = |c: &mut redis::Connection| {
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query(c)
            .expect("SCRIPT FLUSH");
    };
    let one = Count::ir(1);
    let t = [TileDelta {
        layer: None,
        start: 0,
        ir: &one,
    }];
    let m = [KeyMerge {
        key: &k,
        view,
        position: None,
        tiles: &t,
    }];
    flush(&mut inspect);
    let s = store
        .merge_tiles(&m, &Count)
        .await
        .expect("merge after a flush");
    assert_eq!(s.applied, 1);
    flush(&mut inspect);
    assert_eq!(
        store
            .delete_tiles_before(view, 1)
            .await
            .expect("tile delete after a flush"),
        1
    );
}
