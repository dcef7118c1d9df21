//! Why the embedded online store runs on LMDB: the same workload on LMDB (quiver's
//! `EmbeddedStore`) and on redb, with the same key layout and the same conditional
//! (newer-wins) write.

use std::time::Instant;

use anyhow::Result;
use quiver_core::encoding::row_version;
use quiver_online::{EmbeddedStore, OnlineWrite};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

const ROWS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("rows");

fn key(i: u64) -> Vec<u8> {
    let mut k = b"bench\0entity\0\x01".to_vec();
    k.extend_from_slice(&i.to_be_bytes());
    k.extend_from_slice(&[7u8; 8]); // field id
    k
}

fn row(version: i64) -> Vec<u8> {
    // An encoded row of 50 float64 features: format, two timestamps, 50 × (flag + 8).
    let mut r = vec![1u8];
    r.extend_from_slice(&version.to_le_bytes());
    r.extend_from_slice(&version.to_le_bytes());
    for f in 0..50u8 {
        r.push(1);
        r.extend_from_slice(&(f as f64 * 0.5).to_le_bytes());
    }
    r
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

pub fn bench_engines(keys: u64, reads: usize) -> Result<()> {
    let batch = 20_000u64;
    let keyset: Vec<Vec<u8>> = (0..keys).map(key).collect();
    let r = row(1_000);
    println!("embedded engines: {keys} keys, rows of 50 float64 features ({} bytes), conditional writes in {batch}-row transactions, {reads} point reads", r.len());

    // LMDB through quiver's store.
    let dir = tempfile::tempdir()?;
    let lmdb = EmbeddedStore::open(dir.path())?;
    let t = Instant::now();
    for chunk in keyset.chunks(batch as usize) {
        let w: Vec<OnlineWrite<'_>> = chunk
            .iter()
            .map(|k| OnlineWrite {
                key: &k[..k.len() - 8],
                field: [7; 8],
                row: &r,
            })
            .collect();
        lmdb.write_blocking(&w)?;
    }
    let lmdb_write = keys as f64 / t.elapsed().as_secs_f64();
    let mut lat = Vec::with_capacity(reads);
    for i in 0..reads {
        let k = &keyset[(i as u64 * 7919 % keys) as usize];
        let t = Instant::now();
        let cells = lmdb.read_blocking(&[&k[..k.len() - 8]], &[[7; 8]])?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
        assert!(cells[0].is_some());
    }
    let (l50, l99) = (pct(&mut lat, 0.5), pct(&mut lat, 0.99));

    // redb, same layout and conditional write.
    let dir = tempfile::tempdir()?;
    let db = redb::Database::create(dir.path().join("rows.redb"))?;
    let t = Instant::now();
    for chunk in keyset.chunks(batch as usize) {
        let tx = db.begin_write()?;
        {
            let mut table = tx.open_table(ROWS)?;
            for k in chunk {
                let newer = match table.get(k.as_slice())? {
                    Some(old) => row_version(old.value())? < row_version(&r)?,
                    None => true,
                };
                if newer {
                    table.insert(k.as_slice(), r.as_slice())?;
                }
            }
        }
        tx.commit()?;
    }
    let redb_write = keys as f64 / t.elapsed().as_secs_f64();
    let mut lat = Vec::with_capacity(reads);
    for i in 0..reads {
        let k = &keyset[(i as u64 * 7919 % keys) as usize];
        let t = Instant::now();
        let tx = db.begin_read()?;
        let table = tx.open_table(ROWS)?;
        let v = table.get(k.as_slice())?.map(|v| v.value().to_vec());
        lat.push(t.elapsed().as_secs_f64() * 1e6);
        assert!(v.is_some());
    }
    let (r50, r99) = (pct(&mut lat, 0.5), pct(&mut lat, 0.99));
    println!("  LMDB (heed)  writes {lmdb_write:10.0} rows/s   point read p50 {l50:6.2} µs  p99 {l99:6.2} µs   readers in other processes: yes");
    println!("  redb         writes {redb_write:10.0} rows/s   point read p50 {r50:6.2} µs  p99 {r99:6.2} µs   readers in other processes: no (exclusive lock)");
    Ok(())
}
