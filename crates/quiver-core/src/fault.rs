//! Crash points for fault-injection tests.
//!
//! A process started with `QUIVER_CRASH_AT=NAME` aborts when it reaches the crash point
//! `NAME`: no unwinding, no destructors, no buffered writes flushed — what `kill -9` at
//! that instant would leave. Tests use it to stop a run exactly between two steps of a
//! write (e.g. after an offline table is created and before its first commit) and check
//! that the next run recovers. Without the variable a crash point is one load and one
//! comparison.
//!
//! Points: `ingest.after_create`, `ingest.before_commit`, `write.after_online_batch`
//! (after each committed online write batch), `materialize.before_state`,
//! `compact.before_commit` (offline file compaction, its new files written).

use std::sync::OnceLock;

/// The environment variable naming the crash point to stop at.
pub const CRASH_AT_VAR: &str = "QUIVER_CRASH_AT";

/// Aborts the process when `QUIVER_CRASH_AT` names this point.
#[inline]
pub fn crash_point(name: &str) {
    static AT: OnceLock<Option<String>> = OnceLock::new();
    if AT
        .get_or_init(|| std::env::var(CRASH_AT_VAR).ok())
        .as_deref()
        == Some(name)
    {
        eprintln!("quiver: stopping at crash point {name} ({CRASH_AT_VAR})");
        std::process::abort();
    }
}
