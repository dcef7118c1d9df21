//! The conformance suite every [`OnlineStore`] backend runs: the guarantees of the trait
//! documentation, checked through the trait alone.
//!
//! Every check panics (with the backend name and what went wrong) when the store breaks a
//! guarantee or returns an error, so a backend's test is just
//! `conformance::run_all(Arc::new(store)).await` (inside a tokio runtime: some checks
//! run writers and readers on threads of their own).
//!
//! The suite is compiled with the crate's `testing` feature, which backend crates enable
//! in their dev-dependencies.
//!
//! Checks may run on a shared, non-empty store, and may run again on the same store:
//! each check writes under keys and field ids unique to that run of that check (a
//! project name and field ids derived from a per-run nonce), and never reads or deletes
//! anything else.
//!
//! Rows are opaque to a backend except for their version header: besides real rows
//! (`quiver_core::encoding::encode_row` of `sample_columns`), checks write rows made of a
//! valid header followed by arbitrary bytes, to tell cells apart and to test large values.
//! Tile checks ([`tiles`]) bring their own IRs and mergers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use quiver_core::encoding::{decode_row, encode_key_value, encode_row, sample_columns};
use quiver_core::{Timestamp, Value};

use crate::{entity_key, FieldId, OnlineStore, OnlineWrite, WriteStats};

pub mod tiles;

/// Runs every check, in order: rows, tiles, then the capabilities the store declares.
pub async fn run_all(store: Arc<dyn OnlineStore>) {
    let s = &*store;
    newer_wins(s).await;
    within_batch_newest_wins(s).await;
    replay_is_idempotent(s).await;
    missing_cells_read_none(s).await;
    reads_are_key_major(s).await;
    key_prefixes_do_not_collide(s).await;
    long_keys(s).await;
    delete_older_than_is_per_field(s).await;
    values_round_trip(s).await;
    tiles::merges_apply_in_order(s).await;
    tiles::tiles_do_not_mix(s).await;
    tiles::replays_are_no_ops(s).await;
    tiles::delete_tiles_before_is_per_view(s).await;
    tiles::concurrent_merges_lose_no_update(&store).await;
    tiles::declared_capabilities_hold(&store).await;
}

/// A namespace unique to one run of one check: a project name and field ids.
struct Ns {
    check: &'static str,
    project: String,
    nonce: u64,
}

impl Ns {
    fn new(check: &'static str) -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let seed = format!(
            "{check}/{}/{nanos}/{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let nonce = xxhash_rust::xxh3::xxh3_64(seed.as_bytes());
        Self {
            check,
            project: format!("conformance-{check}-{nonce:016x}"),
            nonce,
        }
    }

    /// The entity key of integer `id` in entity set `set`.
    fn key(&self, set: &str, id: i64) -> Vec<u8> {
        let mut v = Vec::new();
        encode_key_value(&Value::Int64(id), &mut v).expect("int keys encode");
        entity_key(&self.project, set, &v)
    }

    /// Field id number `i` of this namespace.
    fn field(&self, i: u64) -> FieldId {
        let mut seed = self.nonce.to_le_bytes().to_vec();
        seed.extend_from_slice(&i.to_le_bytes());
        xxhash_rust::xxh3::xxh3_64(&seed).to_le_bytes()
    }

    fn fail(&self, store: &dyn OnlineStore, what: std::fmt::Arguments<'_>) -> ! {
        panic!("conformance [{}] {}: {what}", store.backend(), self.check)
    }

    async fn write(&self, store: &dyn OnlineStore, rows: &[OnlineWrite<'_>]) -> WriteStats {
        match store.write(rows).await {
            Ok(s) => s,
            Err(e) => self.fail(
                store,
                format_args!("write of {} rows failed: {e}", rows.len()),
            ),
        }
    }

    async fn read(
        &self,
        store: &dyn OnlineStore,
        keys: &[&[u8]],
        fields: &[FieldId],
    ) -> Vec<Option<Vec<u8>>> {
        let cells = match store.read(keys, fields).await {
            Ok(c) => c,
            Err(e) => self.fail(store, format_args!("read failed: {e}")),
        };
        if cells.len() != keys.len() * fields.len() {
            self.fail(
                store,
                format_args!(
                    "read of {} keys x {} fields returned {} cells",
                    keys.len(),
                    fields.len(),
                    cells.len()
                ),
            );
        }
        cells
    }

    async fn read_one(
        &self,
        store: &dyn OnlineStore,
        key: &[u8],
        field: FieldId,
    ) -> Option<Vec<u8>> {
        self.read(store, &[key], &[field])
            .await
            .pop()
            .expect("one cell")
    }

    async fn delete(&self, store: &dyn OnlineStore, field: FieldId, cutoff: Timestamp) -> u64 {
        match store.delete_older_than(field, cutoff).await {
            Ok(n) => n,
            Err(e) => self.fail(store, format_args!("delete_older_than failed: {e}")),
        }
    }

    /// Asserts a cell holds exactly `want` (or nothing).
    async fn expect_cell(
        &self,
        store: &dyn OnlineStore,
        key: &[u8],
        field: FieldId,
        want: Option<&[u8]>,
        context: &str,
    ) {
        let got = self.read_one(store, key, field).await;
        if got.as_deref() != want {
            self.fail(
                store,
                format_args!(
                    "{context}: cell holds {}, expected {}",
                    describe(got.as_deref()),
                    describe(want)
                ),
            );
        }
    }

    fn expect_stats(
        &self,
        store: &dyn OnlineStore,
        got: WriteStats,
        written: u64,
        skipped: u64,
        context: &str,
    ) {
        if got != (WriteStats { written, skipped }) {
            self.fail(
                store,
                format_args!(
                    "{context}: write stats {got:?}, expected written {written}, skipped {skipped}"
                ),
            );
        }
    }
}

/// A row's version and length, for messages.
fn describe(row: Option<&[u8]>) -> String {
    match row {
        None => "nothing".into(),
        Some(r) => match quiver_core::encoding::row_version(r) {
            Ok((e, c)) => format!("a row of version ({e}, {c}), {} bytes", r.len()),
            Err(_) => format!("{} bytes that are not a row", r.len()),
        },
    }
}

/// A real row: `sample_columns` row `variant` (0 or 1) at the given version.
fn sample_row(event_ts: Timestamp, created_ts: Timestamp, variant: usize) -> Vec<u8> {
    let arrays: Vec<_> = sample_columns().into_iter().map(|(_, a)| a).collect();
    let mut buf = Vec::new();
    encode_row(event_ts, created_ts, &arrays, variant % 2, &mut buf).expect("sample rows encode");
    buf
}

/// A row header at the given version followed by `payload`.
fn tagged_row(event_ts: Timestamp, created_ts: Timestamp, payload: &[u8]) -> Vec<u8> {
    let mut buf = Vec::new();
    encode_row(event_ts, created_ts, &[], 0, &mut buf).expect("headers encode");
    buf.extend_from_slice(payload);
    buf
}

fn one<'a>(key: &'a [u8], field: FieldId, row: &'a [u8]) -> [OnlineWrite<'a>; 1] {
    [OnlineWrite { key, field, row }]
}

/// Newer wins: an older row never replaces the stored one, an equally new row does (the
/// last written of equal versions wins, as in the offline store); versions compare as
/// (event timestamp, creation timestamp), numerically (negative timestamps, multi-byte
/// values), and per (key, field).
pub async fn newer_wins(store: &dyn OnlineStore) {
    let ns = Ns::new("newer_wins");
    let (f, g) = (ns.field(0), ns.field(1));
    let k = ns.key("e", 1);

    let v10 = sample_row(10, 1, 0);
    let s = ns.write(store, &one(&k, f, &v10)).await;
    ns.expect_stats(store, s, 1, 0, "first write of a cell");
    ns.expect_cell(store, &k, f, Some(&v10), "after the first write")
        .await;

    let older = sample_row(5, 99, 1);
    let s = ns.write(store, &one(&k, f, &older)).await;
    ns.expect_stats(store, s, 0, 1, "older event timestamp");
    ns.expect_cell(store, &k, f, Some(&v10), "an older row was written")
        .await;

    let same = sample_row(10, 1, 1); // same version, different values: a correction
    let s = ns.write(store, &one(&k, f, &same)).await;
    ns.expect_stats(store, s, 1, 0, "equal version");
    ns.expect_cell(
        store,
        &k,
        f,
        Some(&same),
        "an equally new row did not replace the stored one",
    )
    .await;
    let back = tagged_row(10, 1, b"equal version, other bytes");
    let s = ns.write(store, &one(&k, f, &back)).await;
    ns.expect_stats(store, s, 1, 0, "equal version again");
    ns.expect_cell(
        store,
        &k,
        f,
        Some(&back),
        "a second equally new row did not replace the stored one",
    )
    .await;

    let created_later = sample_row(10, 2, 1);
    let s = ns.write(store, &one(&k, f, &created_later)).await;
    ns.expect_stats(
        store,
        s,
        1,
        0,
        "same event timestamp, later creation timestamp",
    );
    ns.expect_cell(store, &k, f, Some(&created_later), "creation tie-break")
        .await;

    let created_earlier = sample_row(10, 0, 0);
    let s = ns.write(store, &one(&k, f, &created_earlier)).await;
    ns.expect_stats(
        store,
        s,
        0,
        1,
        "same event timestamp, earlier creation timestamp",
    );
    ns.expect_cell(
        store,
        &k,
        f,
        Some(&created_later),
        "creation tie-break (older)",
    )
    .await;

    let event_dominates = sample_row(11, -5, 0);
    let s = ns.write(store, &one(&k, f, &event_dominates)).await;
    ns.expect_stats(
        store,
        s,
        1,
        0,
        "later event timestamp, smaller creation timestamp",
    );
    ns.expect_cell(
        store,
        &k,
        f,
        Some(&event_dominates),
        "event timestamp dominates",
    )
    .await;

    // Another field of the same key is a separate cell.
    let other_field = sample_row(1, 0, 1);
    let s = ns.write(store, &one(&k, g, &other_field)).await;
    ns.expect_stats(store, s, 1, 0, "an older row in another field of the key");
    ns.expect_cell(store, &k, g, Some(&other_field), "other field")
        .await;
    ns.expect_cell(
        store,
        &k,
        f,
        Some(&event_dominates),
        "other field overwrote this one",
    )
    .await;

    // Numeric order of event timestamps: negative < positive, 1 < 256 (a byte-wise
    // comparison of the little-endian encoding gets both wrong).
    let k2 = ns.key("e", 2);
    let steps: [(Timestamp, Timestamp, bool); 6] = [
        (-1, 0, true),
        (1, 0, true),
        (256, 0, true),
        (255, 0, false),
        (-300, 0, false),
        (1 << 40, 0, true),
    ];
    let mut current = Vec::new();
    for (ev, cr, wins) in steps {
        let row = sample_row(ev, cr, 0);
        let s = ns.write(store, &one(&k2, f, &row)).await;
        let context = format!("event timestamp {ev} after {}", describe(Some(&current)));
        ns.expect_stats(store, s, wins as u64, !wins as u64, &context);
        if wins {
            current = row;
        }
        ns.expect_cell(store, &k2, f, Some(&current), &context)
            .await;
    }

    // Numeric order of creation timestamps.
    let k3 = ns.key("e", 3);
    let steps: [(Timestamp, Timestamp, bool); 5] = [
        (7, -1, true),
        (7, 1, true),
        (7, 256, true),
        (7, 256, true), // equal version (other values): replaces
        (7, 255, false),
    ];
    let mut current = Vec::new();
    for (i, (ev, cr, wins)) in steps.into_iter().enumerate() {
        let row = sample_row(ev, cr, i);
        let s = ns.write(store, &one(&k3, f, &row)).await;
        let context = format!("creation timestamp {cr} after {}", describe(Some(&current)));
        ns.expect_stats(store, s, wins as u64, !wins as u64, &context);
        if wins {
            current = row;
        }
        ns.expect_cell(store, &k3, f, Some(&current), &context)
            .await;
    }
}

/// Within one batch the newest row of a cell wins wherever it stands; among rows of equal
/// version for a cell the last in the batch wins; rows of other cells in the batch do
/// not interfere.
pub async fn within_batch_newest_wins(store: &dyn OnlineStore) {
    let ns = Ns::new("within_batch_newest_wins");
    let f = ns.field(0);
    let orders: [[Timestamp; 3]; 6] = [
        [3, 7, 5],
        [3, 5, 7],
        [5, 3, 7],
        [5, 7, 3],
        [7, 3, 5],
        [7, 5, 3],
    ];
    for (i, order) in orders.iter().enumerate() {
        let k = ns.key("e", i as i64);
        let rows: Vec<Vec<u8>> = order
            .iter()
            .map(|&ts| tagged_row(ts, 0, format!("ts{ts}").as_bytes()))
            .collect();
        let batch: Vec<OnlineWrite<'_>> = rows
            .iter()
            .map(|r| OnlineWrite {
                key: &k,
                field: f,
                row: r,
            })
            .collect();
        let s = ns.write(store, &batch).await;
        let context = format!("batch with event timestamps {order:?}");
        if s.written + s.skipped != 3 || s.written == 0 {
            ns.fail(
                store,
                format_args!("{context}: write stats {s:?} do not account for 3 rows"),
            );
        }
        let newest = &rows[order.iter().position(|&t| t == 7).expect("7 is there")];
        ns.expect_cell(store, &k, f, Some(newest), &context).await;

        // A batch entirely older than the stored row changes nothing.
        let stale: Vec<Vec<u8>> = [5, 3]
            .iter()
            .map(|&ts| tagged_row(ts, 9, b"stale"))
            .collect();
        let batch: Vec<OnlineWrite<'_>> = stale
            .iter()
            .map(|r| OnlineWrite {
                key: &k,
                field: f,
                row: r,
            })
            .collect();
        let s = ns.write(store, &batch).await;
        ns.expect_stats(store, s, 0, 2, "a batch older than the stored row");
        ns.expect_cell(
            store,
            &k,
            f,
            Some(newest),
            "a batch older than the stored row",
        )
        .await;
    }

    // Rows of equal version for a cell: the last of them in the batch wins, unless a
    // newer row of the cell is in the batch.
    type Case = (
        &'static [(Timestamp, Timestamp, &'static str)],
        &'static str,
    );
    let cases: [Case; 5] = [
        (&[(5, 0, "first"), (5, 0, "second")], "second"),
        (
            &[
                (5, 0, "first"),
                (5, 0, "second"),
                (3, 0, "older"),
                (5, 0, "third"),
            ],
            "third",
        ),
        (&[(7, 0, "newest"), (5, 0, "a"), (5, 0, "b")], "newest"),
        (&[(5, 0, "a"), (7, 0, "x"), (7, 0, "y"), (5, 0, "b")], "y"),
        (&[(5, 1, "a"), (5, 0, "b"), (5, 1, "c"), (5, 0, "d")], "c"),
    ];
    let tagged = |rows: &[(Timestamp, Timestamp, &str)]| -> Vec<Vec<u8>> {
        rows.iter()
            .map(|&(ev, cr, tag)| tagged_row(ev, cr, tag.as_bytes()))
            .collect()
    };
    for (i, (spec, want)) in cases.iter().enumerate() {
        let k = ns.key("equal", i as i64);
        let rows = tagged(spec);
        let batch: Vec<OnlineWrite<'_>> = rows
            .iter()
            .map(|r| OnlineWrite {
                key: &k,
                field: f,
                row: r,
            })
            .collect();
        let s = ns.write(store, &batch).await;
        let context = format!("batch of rows (event ts, creation ts, tag) {spec:?}");
        if s.written + s.skipped != spec.len() as u64 || s.written == 0 {
            ns.fail(
                store,
                format_args!(
                    "{context}: write stats {s:?} do not account for {} rows",
                    spec.len()
                ),
            );
        }
        let winner = &rows[spec.iter().position(|r| r.2 == *want).expect("known tag")];
        ns.expect_cell(store, &k, f, Some(winner), &context).await;
    }

    // Over a stored row of the same version, the last equal row of the batch wins too.
    let k = ns.key("equal", 0); // holds (5, 0, "second")
    let spec = [
        (5, 0, "p"),
        (4, 9, "older"),
        (5, 0, "q"),
        (5, -1, "older too"),
    ];
    let rows = tagged(&spec);
    let batch: Vec<OnlineWrite<'_>> = rows
        .iter()
        .map(|r| OnlineWrite {
            key: &k,
            field: f,
            row: r,
        })
        .collect();
    let s = ns.write(store, &batch).await;
    if s.written + s.skipped != 4 || s.written == 0 {
        ns.fail(
            store,
            format_args!("equal rows over a stored equal row: write stats {s:?}"),
        );
    }
    ns.expect_cell(
        store,
        &k,
        f,
        Some(&rows[2]),
        "equal rows over a stored equal row",
    )
    .await;

    // Two cells interleaved in one batch.
    let (a, b) = (ns.key("mix", 1), ns.key("mix", 2));
    let rows = [
        tagged_row(3, 0, b"a3"),
        tagged_row(9, 0, b"b9"),
        tagged_row(7, 0, b"a7"),
        tagged_row(2, 0, b"b2"),
        tagged_row(7, -1, b"a7-earlier"),
        tagged_row(9, 0, b"b9-corrected"),
    ];
    let keys: [&[u8]; 6] = [&a, &b, &a, &b, &a, &b];
    let batch: Vec<OnlineWrite<'_>> = rows
        .iter()
        .zip(keys)
        .map(|(r, key)| OnlineWrite {
            key,
            field: f,
            row: r,
        })
        .collect();
    let s = ns.write(store, &batch).await;
    if s.written + s.skipped != 6 || s.written < 2 {
        ns.fail(store, format_args!("interleaved batch: write stats {s:?}"));
    }
    ns.expect_cell(store, &a, f, Some(&rows[2]), "interleaved batch, key a")
        .await;
    ns.expect_cell(store, &b, f, Some(&rows[5]), "interleaved batch, key b")
        .await;
}

/// Replaying a batch leaves the same content (its rows are of equal version, so they are
/// rewritten, and count as written); replaying an older one after a newer one changes
/// nothing; a newer batch in any order replaces every row.
pub async fn replay_is_idempotent(store: &dyn OnlineStore) {
    let ns = Ns::new("replay_is_idempotent");
    let fields = [ns.field(0), ns.field(1)];
    let keys: Vec<Vec<u8>> = (0..50).map(|i| ns.key("e", i)).collect();
    let key_refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    let n = (keys.len() * fields.len()) as u64;
    // One row per cell, key-major (the order `read` returns them in).
    let make = |base: Timestamp, tag: &str| -> Vec<Vec<u8>> {
        let mut rows = Vec::new();
        for k in 0..keys.len() {
            for f in 0..fields.len() {
                let ts = base + (k * 2 + f) as Timestamp;
                rows.push(tagged_row(ts, 0, format!("{tag}-{k}-{f}").as_bytes()));
            }
        }
        rows
    };
    let check = |cells: Vec<Option<Vec<u8>>>, want: &[Vec<u8>], context: &str| {
        if let Some(i) = (0..want.len()).find(|&i| cells[i].as_ref() != Some(&want[i])) {
            ns.fail(
                store,
                format_args!(
                    "{context}: cell {i} holds {}, expected {}",
                    describe(cells[i].as_deref()),
                    describe(Some(&want[i]))
                ),
            );
        }
    };

    let v1 = make(1000, "v1");
    let s = ns
        .write(store, &cell_batch(&key_refs, &fields, &v1, false))
        .await;
    ns.expect_stats(store, s, n, 0, "first batch");
    check(ns.read(store, &key_refs, &fields).await, &v1, "first batch");

    let s = ns
        .write(store, &cell_batch(&key_refs, &fields, &v1, false))
        .await;
    ns.expect_stats(store, s, n, 0, "replayed batch");
    check(
        ns.read(store, &key_refs, &fields).await,
        &v1,
        "replayed batch",
    );

    // The batch twice in one write (the second copy reversed): identical rows of equal
    // version, whichever stands the content is the same.
    let mut twice = cell_batch(&key_refs, &fields, &v1, false);
    twice.extend(cell_batch(&key_refs, &fields, &v1, true));
    let s = ns.write(store, &twice).await;
    if s.written + s.skipped != 2 * n || s.written < n {
        ns.fail(
            store,
            format_args!("batch replayed twice in one write: write stats {s:?}"),
        );
    }
    check(
        ns.read(store, &key_refs, &fields).await,
        &v1,
        "batch replayed twice in one write",
    );

    let v0 = make(500, "v0");
    let s = ns
        .write(store, &cell_batch(&key_refs, &fields, &v0, true))
        .await;
    ns.expect_stats(store, s, 0, n, "older batch after a newer one");
    check(ns.read(store, &key_refs, &fields).await, &v1, "older batch");

    let v2 = make(2000, "v2");
    let s = ns
        .write(store, &cell_batch(&key_refs, &fields, &v2, true))
        .await;
    ns.expect_stats(store, s, n, 0, "newer batch in reverse order");
    check(ns.read(store, &key_refs, &fields).await, &v2, "newer batch");
}

/// Writes of `rows` (one per cell, key-major), optionally in reverse order.
fn cell_batch<'a>(
    keys: &[&'a [u8]],
    fields: &[FieldId],
    rows: &'a [Vec<u8>],
    reverse: bool,
) -> Vec<OnlineWrite<'a>> {
    let mut batch: Vec<OnlineWrite<'a>> = rows
        .iter()
        .enumerate()
        .map(|(i, row)| OnlineWrite {
            key: keys[i / fields.len()],
            field: fields[i % fields.len()],
            row,
        })
        .collect();
    if reverse {
        batch.reverse();
    }
    batch
}

/// Cells never written read as `None`, including other fields of a written key and the
/// same field of other keys; empty requests return no cells.
pub async fn missing_cells_read_none(store: &dyn OnlineStore) {
    let ns = Ns::new("missing_cells_read_none");
    let (fa, fb) = (ns.field(0), ns.field(1));
    let (k1, k2, k3) = (ns.key("e", 1), ns.key("e", 2), ns.key("other", 1));

    let cells = ns.read(store, &[&k1, &k2, &k3], &[fa, fb]).await;
    if cells.iter().any(Option::is_some) {
        ns.fail(
            store,
            format_args!("unwritten cells read as present: {cells:?}"),
        );
    }
    if !ns.read(store, &[], &[fa]).await.is_empty() {
        ns.fail(store, format_args!("a read of no keys returned cells"));
    }
    if !ns.read(store, &[&k1], &[]).await.is_empty() {
        ns.fail(store, format_args!("a read of no fields returned cells"));
    }

    let row = sample_row(1, 1, 0);
    ns.write(store, &one(&k1, fa, &row)).await;
    let cells = ns.read(store, &[&k1, &k2, &k3], &[fa, fb]).await;
    let want = [Some(row), None, None, None, None, None];
    if cells != want {
        let got: Vec<String> = cells.iter().map(|c| describe(c.as_deref())).collect();
        ns.fail(
            store,
            format_args!("after writing (k1, fa) only, cells are {got:?}"),
        );
    }
}

/// `read` returns `keys.len() * fields.len()` cells key-major, for any order of keys and
/// fields, with repeated keys or fields, and with missing cells in between.
pub async fn reads_are_key_major(store: &dyn OnlineStore) {
    let ns = Ns::new("reads_are_key_major");
    let (nk, nf) = (7usize, 5usize);
    let keys: Vec<Vec<u8>> = (0..nk).map(|i| ns.key("e", i as i64)).collect();
    let fields: Vec<FieldId> = (0..nf).map(|i| ns.field(i as u64)).collect();
    let present = |k: usize, f: usize| !(k + f).is_multiple_of(4);
    let mut rows = Vec::new();
    for k in 0..nk {
        for f in 0..nf {
            if present(k, f) {
                rows.push((
                    k,
                    f,
                    tagged_row(1, 1, format!("key{k}-field{f}").as_bytes()),
                ));
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
    let s = ns.write(store, &batch).await;
    ns.expect_stats(store, s, rows.len() as u64, 0, "distinct cells");
    let expected = |k: usize, f: usize| {
        present(k, f).then(|| tagged_row(1, 1, format!("key{k}-field{f}").as_bytes()))
    };

    let key_order = [6usize, 0, 3, 3, 1, 5, 2, 4];
    let field_order = [4usize, 1, 0, 1, 3, 2];
    let key_refs: Vec<&[u8]> = key_order.iter().map(|&k| keys[k].as_slice()).collect();
    let field_ids: Vec<FieldId> = field_order.iter().map(|&f| fields[f]).collect();
    let cells = ns.read(store, &key_refs, &field_ids).await;
    for (ki, &k) in key_order.iter().enumerate() {
        for (fi, &f) in field_order.iter().enumerate() {
            let cell = &cells[ki * field_order.len() + fi];
            if *cell != expected(k, f) {
                ns.fail(
                    store,
                    format_args!(
                        "cell [{ki} * {} + {fi}] (key {k}, field {f}) holds {:?}",
                        field_order.len(),
                        cell.as_deref().map(String::from_utf8_lossy)
                    ),
                );
            }
        }
    }
}

/// Keys that differ only in their project or entity set, or of which one is a prefix of
/// another, are different keys.
pub async fn key_prefixes_do_not_collide(store: &dyn OnlineStore) {
    let ns = Ns::new("key_prefixes_do_not_collide");
    let f = ns.field(0);
    let mut v = Vec::new();
    encode_key_value(&Value::String("same".into()), &mut v).expect("string keys encode");
    let mut longer = v.clone();
    longer.push(0);
    let p1 = format!("{}-a", ns.project);
    let p2 = format!("{}-b", ns.project);
    let p1x = format!("{}-a\u{0}s", ns.project); // p1x \0 "" \0 v  vs  p1 \0 "s" \0 \0 v
    let keys = [
        entity_key(&p1, "s", &v),
        entity_key(&p2, "s", &v),
        entity_key(&p1, "t", &v),
        entity_key(&p1, "s", &longer),
        entity_key(&p1, "s", &v[..v.len() - 1]),
        entity_key(&p1, "s", &[]),
        entity_key(&p1, "", &v),
        entity_key(&p1x, "", &v),
    ];
    for (i, a) in keys.iter().enumerate() {
        for b in &keys[i + 1..] {
            assert_ne!(a, b, "the check's keys must differ");
        }
    }
    let rows: Vec<Vec<u8>> = (0..keys.len())
        .map(|i| tagged_row(5, 5, format!("key {i}").as_bytes()))
        .collect();
    let batch: Vec<OnlineWrite<'_>> = keys
        .iter()
        .zip(&rows)
        .map(|(key, row)| OnlineWrite { key, field: f, row })
        .collect();
    let s = ns.write(store, &batch).await;
    ns.expect_stats(store, s, keys.len() as u64, 0, "distinct keys");
    for (i, key) in keys.iter().enumerate() {
        ns.expect_cell(store, key, f, Some(&rows[i]), &format!("key {i}"))
            .await;
    }
}

/// Keys longer than LMDB's 511-byte limit (and around it) are stored and read like any
/// other, keep newer-wins (equal versions replace), and are told apart even when they
/// share a long prefix.
pub async fn long_keys(store: &dyn OnlineStore) {
    let ns = Ns::new("long_keys");
    let f = ns.field(0);
    let base = ns.key("long", 0);
    let padded = |len: usize, last: u8| {
        let mut k = base.clone();
        k.resize(len.max(base.len() + 1) - 1, b'x');
        k.push(last);
        k
    };
    let mut keys = Vec::new();
    for len in [
        495, 502, 503, 504, 505, 510, 511, 512, 513, 600, 1024, 4096, 70_000,
    ] {
        keys.push(padded(len, b'a'));
        keys.push(padded(len, b'b')); // differs only in the last byte
    }
    let twin = keys
        .iter()
        .position(|k| k.len() == 4096)
        .expect("a 4096-byte key");
    let mut first_differs = keys[twin].clone();
    first_differs[base.len()] = b'y'; // differs from `keys[twin]` in one early byte only
    keys.push(first_differs);

    let rows: Vec<Vec<u8>> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| tagged_row(10, 0, format!("key {i} of {} bytes", k.len()).as_bytes()))
        .collect();
    let batch: Vec<OnlineWrite<'_>> = keys
        .iter()
        .zip(&rows)
        .map(|(key, row)| OnlineWrite { key, field: f, row })
        .collect();
    let s = ns.write(store, &batch).await;
    ns.expect_stats(store, s, keys.len() as u64, 0, "distinct long keys");

    let key_refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    let cells = ns.read(store, &key_refs, &[f]).await;
    for (i, cell) in cells.iter().enumerate() {
        if cell.as_deref() != Some(rows[i].as_slice()) {
            ns.fail(
                store,
                format_args!(
                    "key {i} ({} bytes) holds {:?}",
                    keys[i].len(),
                    cell.as_deref().map(String::from_utf8_lossy)
                ),
            );
        }
    }

    // Newer wins on long keys too.
    let long = &keys[keys.len() - 1];
    let older = tagged_row(9, 0, b"older");
    let s = ns.write(store, &one(long, f, &older)).await;
    ns.expect_stats(store, s, 0, 1, "an older row under a long key");
    let newer = tagged_row(11, 0, b"newer");
    let s = ns.write(store, &one(long, f, &newer)).await;
    ns.expect_stats(store, s, 1, 0, "a newer row under a long key");
    ns.expect_cell(store, long, f, Some(&newer), "newer row under a long key")
        .await;
    let corrected = tagged_row(11, 0, b"newer, corrected");
    let s = ns.write(store, &one(long, f, &corrected)).await;
    ns.expect_stats(store, s, 1, 0, "an equal row under a long key");
    ns.expect_cell(
        store,
        long,
        f,
        Some(&corrected),
        "equal row under a long key",
    )
    .await;
    ns.expect_cell(
        store,
        &keys[twin],
        f,
        Some(&rows[twin]),
        "writing a long key changed another differing in one byte",
    )
    .await;
}

/// `delete_older_than(field, cutoff)` deletes exactly the rows of that field with an
/// event timestamp strictly below the cutoff (numerically), in every key, long ones
/// included, and nothing of other fields; a deleted cell then reads as `None` and accepts
/// any row.
pub async fn delete_older_than_is_per_field(store: &dyn OnlineStore) {
    let ns = Ns::new("delete_older_than_is_per_field");
    let (fa, fb, fc) = (ns.field(0), ns.field(1), ns.field(2));
    let mut long = ns.key("long", 4);
    long.resize(700, b'z');
    let keys = [ns.key("e", 1), ns.key("e", 2), ns.key("e", 3), long];
    let cells: [(usize, FieldId, Timestamp); 9] = [
        (0, fa, 10),
        (1, fa, 20),
        (2, fa, 30),
        (3, fa, 5),
        (0, fb, 10),
        (1, fb, 5),
        (3, fb, 1),
        (0, fc, -5),
        (1, fc, 3),
    ];
    let rows: Vec<Vec<u8>> = cells
        .iter()
        .map(|&(k, _, ts)| tagged_row(ts, 100, format!("k{k} ts{ts}").as_bytes()))
        .collect();
    let batch: Vec<OnlineWrite<'_>> = cells
        .iter()
        .zip(&rows)
        .map(|(&(k, field, _), row)| OnlineWrite {
            key: &keys[k],
            field,
            row,
        })
        .collect();
    let s = ns.write(store, &batch).await;
    ns.expect_stats(store, s, cells.len() as u64, 0, "setup");

    let n = ns.delete(store, fa, 20).await;
    if n != 2 {
        ns.fail(
            store,
            format_args!("delete_older_than(fa, 20) deleted {n} rows, expected 2 (ts 10 and 5)"),
        );
    }
    let key_refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    let got = ns.read(store, &key_refs, &[fa, fb, fc]).await;
    let mut want: Vec<Option<&[u8]>> = vec![None; keys.len() * 3];
    for (i, &(k, field, _)) in cells.iter().enumerate() {
        let f = [fa, fb, fc]
            .iter()
            .position(|&x| x == field)
            .expect("known field");
        want[k * 3 + f] = Some(&rows[i]);
    }
    want[0] = None; // (k0, fa, 10)
    want[3 * 3] = None; // (long, fa, 5)
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        if g.as_deref() != *w {
            ns.fail(
                store,
                format_args!(
                    "after delete_older_than(fa, 20), cell (key {}, field {}) holds {}, expected {}",
                    i / 3,
                    ["fa", "fb", "fc"][i % 3],
                    describe(g.as_deref()),
                    describe(*w)
                ),
            );
        }
    }

    let n = ns.delete(store, fa, 20).await;
    if n != 0 {
        ns.fail(store, format_args!("a repeated delete deleted {n} rows"));
    }
    let n = ns.delete(store, fb, Timestamp::MIN).await;
    if n != 0 {
        ns.fail(
            store,
            format_args!("delete_older_than(fb, i64::MIN) deleted {n} rows"),
        );
    }
    let n = ns.delete(store, fc, 0).await;
    if n != 1 {
        ns.fail(
            store,
            format_args!("delete_older_than(fc, 0) deleted {n} rows, expected 1 (ts -5)"),
        );
    }
    ns.expect_cell(
        store,
        &keys[0],
        fc,
        None,
        "negative timestamp below the cutoff",
    )
    .await;
    ns.expect_cell(
        store,
        &keys[1],
        fc,
        Some(&rows[8]),
        "timestamp 3 above cutoff 0",
    )
    .await;

    // A deleted cell holds nothing, so any row may be written to it again.
    let late = tagged_row(1, 0, b"late");
    let s = ns.write(store, &one(&keys[0], fa, &late)).await;
    ns.expect_stats(store, s, 1, 0, "a write to a deleted cell");
    ns.expect_cell(
        store,
        &keys[0],
        fa,
        Some(&late),
        "a write to a deleted cell",
    )
    .await;
}

/// Stored values come back bit-exact: real rows of every storage type, a bare header,
/// and large rows holding every byte value.
pub async fn values_round_trip(store: &dyn OnlineStore) {
    let ns = Ns::new("values_round_trip");
    let f = ns.field(0);
    let cols = sample_columns();
    let dtypes: Vec<_> = cols.iter().map(|c| &c.0).collect();

    let pattern = |n: usize| -> Vec<u8> { (0..n).map(|i| (i * 7 + i / 256) as u8).collect() };
    let rows = [
        sample_row(1_700_000_000_000_000, 1_700_000_000_000_001, 0),
        sample_row(-1, Timestamp::MAX, 1),
        tagged_row(Timestamp::MIN, Timestamp::MIN, &[]),
        tagged_row(3, 3, &pattern(4096)),
        tagged_row(4, 4, &pattern(300_000)),
    ];
    let keys: Vec<Vec<u8>> = (0..rows.len()).map(|i| ns.key("e", i as i64)).collect();
    let batch: Vec<OnlineWrite<'_>> = keys
        .iter()
        .zip(&rows)
        .map(|(key, row)| OnlineWrite { key, field: f, row })
        .collect();
    let s = ns.write(store, &batch).await;
    ns.expect_stats(store, s, rows.len() as u64, 0, "distinct keys");
    let key_refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    let cells = ns.read(store, &key_refs, &[f]).await;
    for (i, (cell, row)) in cells.iter().zip(&rows).enumerate() {
        if cell.as_deref() != Some(row.as_slice()) {
            ns.fail(
                store,
                format_args!(
                    "row {i} ({} bytes) came back as {}",
                    row.len(),
                    describe(cell.as_deref())
                ),
            );
        }
    }
    for (i, cell) in cells.iter().take(2).enumerate() {
        let bytes = cell.as_deref().expect("checked above");
        let got = decode_row(bytes, &dtypes);
        let want = decode_row(&rows[i], &dtypes).expect("sample rows decode");
        match got {
            Ok(got) if got == want => {}
            other => ns.fail(
                store,
                format_args!("row {i} decodes as {other:?}, expected {want:?}"),
            ),
        }
    }
}
