//! The conformance suite can fail: a reference in-memory store passes it, and each of a
//! set of deliberately broken variants fails the check aimed at its flaw.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use quiver_core::encoding::row_version;
use quiver_online::{conformance, FieldId, OnlineStore, OnlineWrite, Result, WriteStats};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flaw {
    None,
    /// Every write replaces the stored row.
    AlwaysOverwrites,
    /// A row of equal version never replaces the stored one (the first stands).
    SkipsEqual,
    /// A row of equal version replaces a row stored before the batch, but within a batch
    /// the first of rows of equal version stands.
    FirstEqualOfBatchWins,
    /// Only event timestamps are compared.
    IgnoresCreatedTs,
    /// Versions compared as their little-endian bytes.
    ComparesBytes,
    /// Batch rows are compared with the state before the batch only: the last winner of
    /// a cell in the batch stands.
    LastOfBatchWins,
    /// Counts skipped rows as written.
    MiscountsSkips,
    /// Cells keyed by entity key alone.
    IgnoresField,
    /// Cells keyed by the join-key values alone (project and entity set dropped).
    IgnoresKeyPrefix,
    /// Keys cut to 503 bytes.
    TruncatesKeys,
    /// Values cut to 64 KiB.
    TruncatesValues,
    /// Cells returned field-major.
    FieldMajor,
    /// Missing cells read as empty values.
    MissingAsEmpty,
    /// `delete_older_than` deletes older rows of every field.
    DeleteIgnoresField,
    /// `delete_older_than` deletes rows at the cutoff too.
    DeleteInclusive,
}

/// Rows by (entity key, field).
type Cells = HashMap<(Vec<u8>, FieldId), Vec<u8>>;

struct MemStore {
    flaw: Flaw,
    cells: Mutex<Cells>,
}

impl MemStore {
    fn new(flaw: Flaw) -> Self {
        Self {
            flaw,
            cells: Mutex::default(),
        }
    }

    fn cell(&self, key: &[u8], field: FieldId) -> (Vec<u8>, FieldId) {
        let field = if self.flaw == Flaw::IgnoresField {
            [0; 8]
        } else {
            field
        };
        let key = match self.flaw {
            Flaw::TruncatesKeys => key[..key.len().min(503)].to_vec(),
            Flaw::IgnoresKeyPrefix => {
                let mut parts = key.splitn(3, |&b| b == 0);
                parts.nth(2).unwrap_or(key).to_vec()
            }
            _ => key.to_vec(),
        };
        (key, field)
    }

    /// Whether `new` replaces `old`; `same_batch` when `old` was written by the batch
    /// of `new`.
    fn wins(&self, new: &[u8], old: &[u8], same_batch: bool) -> bool {
        let (n, o) = (row_version(new).unwrap(), row_version(old).unwrap());
        match self.flaw {
            Flaw::AlwaysOverwrites => true,
            Flaw::SkipsEqual => n > o,
            Flaw::FirstEqualOfBatchWins if same_batch => n > o,
            Flaw::IgnoresCreatedTs => n.0 >= o.0,
            Flaw::ComparesBytes => new[1..17] >= old[1..17],
            _ => n >= o,
        }
    }
}

#[async_trait]
impl OnlineStore for MemStore {
    async fn write(&self, rows: &[OnlineWrite<'_>]) -> Result<WriteStats> {
        let mut cells = self.cells.lock().unwrap();
        let before = cells.clone();
        let mut stats = WriteStats::default();
        let mut touched = std::collections::HashSet::new();
        for w in rows {
            let cell = self.cell(w.key, w.field);
            let stored = if self.flaw == Flaw::LastOfBatchWins {
                before.get(&cell)
            } else {
                cells.get(&cell)
            };
            let same_batch = touched.contains(&cell);
            if stored.is_none_or(|old| self.wins(w.row, old, same_batch)) {
                touched.insert(cell.clone());
                let mut row = w.row.to_vec();
                if self.flaw == Flaw::TruncatesValues {
                    row.truncate(1 << 16);
                }
                cells.insert(cell, row);
                stats.written += 1;
            } else if self.flaw == Flaw::MiscountsSkips {
                stats.written += 1;
            } else {
                stats.skipped += 1;
            }
        }
        Ok(stats)
    }

    async fn read(&self, keys: &[&[u8]], fields: &[FieldId]) -> Result<Vec<Option<Vec<u8>>>> {
        let cells = self.cells.lock().unwrap();
        let get = |k: &[u8], f: FieldId| match cells.get(&self.cell(k, f)) {
            None if self.flaw == Flaw::MissingAsEmpty => Some(Vec::new()),
            v => v.cloned(),
        };
        let mut out = Vec::new();
        if self.flaw == Flaw::FieldMajor {
            for &f in fields {
                for k in keys {
                    out.push(get(k, f));
                }
            }
        } else {
            for k in keys {
                for &f in fields {
                    out.push(get(k, f));
                }
            }
        }
        Ok(out)
    }

    async fn delete_older_than(&self, field: FieldId, cutoff: i64) -> Result<u64> {
        let field = self.cell(b"", field).1;
        let mut cells = self.cells.lock().unwrap();
        let before = cells.len();
        cells.retain(|(_, f), row| {
            let ts = row_version(row).unwrap().0;
            let old = if self.flaw == Flaw::DeleteInclusive {
                ts <= cutoff
            } else {
                ts < cutoff
            };
            let ours = *f == field || self.flaw == Flaw::DeleteIgnoresField;
            !(ours && old)
        });
        Ok((before - cells.len()) as u64)
    }

    fn backend(&self) -> &'static str {
        "memory-reference"
    }
}

#[derive(Clone, Copy, Debug)]
enum Check {
    NewerWins,
    WithinBatch,
    Replay,
    Missing,
    KeyMajor,
    Prefixes,
    LongKeys,
    Delete,
    RoundTrip,
}

async fn run(check: Check, store: &dyn OnlineStore) {
    match check {
        Check::NewerWins => conformance::newer_wins(store).await,
        Check::WithinBatch => conformance::within_batch_newest_wins(store).await,
        Check::Replay => conformance::replay_is_idempotent(store).await,
        Check::Missing => conformance::missing_cells_read_none(store).await,
        Check::KeyMajor => conformance::reads_are_key_major(store).await,
        Check::Prefixes => conformance::key_prefixes_do_not_collide(store).await,
        Check::LongKeys => conformance::long_keys(store).await,
        Check::Delete => conformance::delete_older_than_is_per_field(store).await,
        Check::RoundTrip => conformance::values_round_trip(store).await,
    }
}

#[tokio::test]
async fn the_reference_store_passes_the_suite() {
    let store = MemStore::new(Flaw::None);
    conformance::run_all(&store).await;
    conformance::run_all(&store).await;
}

#[tokio::test]
async fn each_flaw_fails_its_check() {
    let cases = [
        (Flaw::AlwaysOverwrites, Check::NewerWins),
        (Flaw::AlwaysOverwrites, Check::Replay),
        (Flaw::SkipsEqual, Check::NewerWins),
        (Flaw::SkipsEqual, Check::WithinBatch),
        (Flaw::SkipsEqual, Check::Replay),
        (Flaw::SkipsEqual, Check::LongKeys),
        (Flaw::FirstEqualOfBatchWins, Check::WithinBatch),
        (Flaw::IgnoresCreatedTs, Check::NewerWins),
        (Flaw::ComparesBytes, Check::NewerWins),
        (Flaw::LastOfBatchWins, Check::WithinBatch),
        (Flaw::MiscountsSkips, Check::Replay),
        (Flaw::IgnoresField, Check::NewerWins),
        (Flaw::IgnoresField, Check::KeyMajor),
        (Flaw::IgnoresField, Check::Missing),
        (Flaw::IgnoresKeyPrefix, Check::Prefixes),
        (Flaw::TruncatesKeys, Check::LongKeys),
        (Flaw::TruncatesValues, Check::RoundTrip),
        (Flaw::FieldMajor, Check::KeyMajor),
        (Flaw::MissingAsEmpty, Check::Missing),
        (Flaw::DeleteIgnoresField, Check::Delete),
        (Flaw::DeleteInclusive, Check::Delete),
    ];
    for (flaw, check) in cases {
        // The flawless store passes the check...
        let good: Arc<MemStore> = Arc::new(MemStore::new(Flaw::None));
        let passed = tokio::spawn(async move { run(check, &*good).await }).await;
        assert!(passed.is_ok(), "{check:?} fails on the reference store");
        // ...and the flawed one fails it.
        let bad: Arc<MemStore> = Arc::new(MemStore::new(flaw));
        let result = tokio::spawn(async move { run(check, &*bad).await }).await;
        match result {
            Err(e) if e.is_panic() => {
                let msg = e.into_panic();
                let msg = msg
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| msg.downcast_ref::<&str>().copied())
                    .unwrap_or("");
                assert!(
                    msg.contains("conformance [memory-reference]"),
                    "{flaw:?}: {msg}"
                );
            }
            other => panic!("{check:?} did not catch {flaw:?}: {other:?}"),
        }
    }
}
