//! The time contract's snapshot rule (DESIGN §2), shared by every path.
//!
//! For an entity key at time `T`, a snapshot view's value is the row with the largest
//! `event_timestamp ≤ T`; ties on `event_timestamp` go to the largest
//! `created_timestamp` (a missing creation time sorts first). The row is `OUTSIDE_TTL`
//! when `event_timestamp < T − ttl` (a row exactly `ttl` old is kept), `MISSING` when
//! there is none, `PRESENT` otherwise. `ttl = 0` means no limit. Status is computed from
//! timestamps at read time, never from whether a store deleted something.

use serde::{Deserialize, Serialize};

use crate::time::{Duration, Timestamp};

/// The status of one feature value in a served vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FeatureStatus {
    /// A row within its TTL was found.
    Present,
    /// No row exists for the key.
    Missing,
    /// The newest row is older than `T − ttl`.
    OutsideTtl,
    /// An on-demand feature that could not be computed for this row (an integer
    /// overflow, a division by zero, a non-finite result; [`crate::finite`]).
    Invalid,
}

impl FeatureStatus {
    /// The upper-case name used in outputs.
    pub fn as_str(self) -> &'static str {
        match self {
            FeatureStatus::Present => "PRESENT",
            FeatureStatus::Missing => "MISSING",
            FeatureStatus::OutsideTtl => "OUTSIDE_TTL",
            FeatureStatus::Invalid => "INVALID",
        }
    }
}

impl std::fmt::Display for FeatureStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The ordering of rows for one key: by event time, then by creation time, a missing
/// creation time (`None`) first. The greater row wins a lookup and a conditional write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RowVersion {
    pub event_ts: Timestamp,
    pub created_ts: Timestamp,
}

/// The creation time used for a row that has none: it loses every tie.
pub const NO_CREATED: Timestamp = i64::MIN;

impl RowVersion {
    /// A row version; `created` of `None` sorts before every creation time.
    pub fn new(event_ts: Timestamp, created: Option<Timestamp>) -> Self {
        RowVersion {
            event_ts,
            created_ts: created.unwrap_or(NO_CREATED),
        }
    }
}

/// Whether a row with event time `row_ts` is still valid at time `t` under `ttl`
/// (inclusive: a row exactly `ttl` old is valid).
#[inline]
pub fn within_ttl(row_ts: Timestamp, t: Timestamp, ttl: Duration) -> bool {
    ttl.is_zero() || row_ts >= t.saturating_sub(ttl.micros())
}

/// The status of a snapshot lookup at `t` whose newest row has event time `row_ts`.
/// A row stamped after `t` is not visible at `t` (no value from after `T` may be used),
/// so a store that holds only that row answers `MISSING`.
#[inline]
pub fn snapshot_status(row_ts: Option<Timestamp>, t: Timestamp, ttl: Duration) -> FeatureStatus {
    match row_ts {
        None => FeatureStatus::Missing,
        Some(ts) if ts > t => FeatureStatus::Missing,
        Some(ts) if within_ttl(ts, t, ttl) => FeatureStatus::Present,
        Some(_) => FeatureStatus::OutsideTtl,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_bound_is_inclusive() {
        let ttl = Duration::from_secs(10);
        let t = 100_000_000;
        assert!(within_ttl(t - 10_000_000, t, ttl));
        assert!(!within_ttl(t - 10_000_001, t, ttl));
        assert!(within_ttl(i64::MIN + 1, t, Duration::ZERO));
        assert_eq!(snapshot_status(None, t, ttl), FeatureStatus::Missing);
        assert_eq!(
            snapshot_status(Some(t - 20_000_000), t, ttl),
            FeatureStatus::OutsideTtl
        );
        assert_eq!(snapshot_status(Some(t), t, ttl), FeatureStatus::Present);
        assert_eq!(snapshot_status(Some(t + 1), t, ttl), FeatureStatus::Missing);
    }

    #[test]
    fn missing_created_loses_ties() {
        assert!(RowVersion::new(5, Some(0)) > RowVersion::new(5, None));
        assert!(RowVersion::new(6, None) > RowVersion::new(5, Some(100)));
    }
}
