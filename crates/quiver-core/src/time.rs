//! Time: UTC timestamps in microseconds and durations.
//!
//! Every timestamp in quiver is an `i64` count of microseconds since the Unix epoch, UTC.
//! A naive timestamp in input is read as UTC; a zoned one is converted.
//!
//! Input finer than a microsecond (nanosecond timestamps, nine fractional digits) is
//! rounded by which side of the time contract it is on ([`Rounding`]): feature and
//! event times up, label and entity-row times down, so no row from after a label's time
//! can reach it.

use std::fmt;

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{Error, Result};

/// Microseconds since the Unix epoch, UTC.
pub type Timestamp = i64;

/// Microseconds per second.
pub const MICROS_PER_SECOND: i64 = 1_000_000;
/// Microseconds per day.
pub const MICROS_PER_DAY: i64 = 86_400 * MICROS_PER_SECOND;

/// The earliest time quiver stores: 0001-01-01T00:00:00Z. Times before it (or after
/// [`MAX_TIMESTAMP`]) are errors at ingest, push and in entity rows: years outside
/// 1–9999 are no event's time, and tables, dates and other readers (Spark, Delta) do
/// not represent them.
pub const MIN_TIMESTAMP: Timestamp = -62_135_596_800 * MICROS_PER_SECOND;
/// The latest time quiver stores: 9999-12-31T23:59:59.999999Z.
pub const MAX_TIMESTAMP: Timestamp = 253_402_300_800 * MICROS_PER_SECOND - 1;

/// Whether `t` lies in [`MIN_TIMESTAMP`]..=[`MAX_TIMESTAMP`].
pub fn in_range(t: Timestamp) -> bool {
    (MIN_TIMESTAMP..=MAX_TIMESTAMP).contains(&t)
}

/// The current wall-clock time as a [`Timestamp`].
pub fn now() -> Timestamp {
    Utc::now().timestamp_micros()
}

/// A source of the current time, injected where statuses depend on "now" (the feature
/// server, online reads) so tests of TTL behaviour need no sleeping.
pub trait Clock: Send + Sync {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        now()
    }
}

/// A clock that shows what it is set to (for tests).
#[derive(Debug, Default)]
pub struct ManualClock(std::sync::atomic::AtomicI64);

impl ManualClock {
    /// A clock showing `t`.
    pub fn new(t: Timestamp) -> Self {
        ManualClock(std::sync::atomic::AtomicI64::new(t))
    }
    /// Sets the time shown.
    pub fn set(&self, t: Timestamp) {
        self.0.store(t, std::sync::atomic::Ordering::SeqCst)
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// How a time finer than a microsecond becomes microseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rounding {
    /// Up to the next microsecond (ceiling): feature rows' event and creation times, so
    /// a row never moves earlier than it happened.
    Up,
    /// Down (floor): label and entity-row times, and query times, so a label never
    /// moves later than it was taken.
    Down,
}

/// Nanoseconds since the epoch in microseconds, rounded as `rounding` says (toward
/// minus infinity or plus infinity, also before 1970).
pub fn micros_from_nanos(nanos: i64, rounding: Rounding) -> Timestamp {
    round_micros(
        nanos.div_euclid(1_000),
        nanos.rem_euclid(1_000) as u16,
        rounding,
    )
}

/// A time given as whole microseconds `floor` plus `sub_nanos` (0..1000) nanoseconds,
/// rounded to microseconds as `rounding` says.
#[inline]
pub fn round_micros(floor: Timestamp, sub_nanos: u16, rounding: Rounding) -> Timestamp {
    // Without a branch: time columns are converted a row at a time.
    floor + Timestamp::from(rounding == Rounding::Up && sub_nanos > 0)
}

/// The day (days since the epoch) a timestamp falls in, as used by the offline
/// store's day partitions.
pub fn day_of(ts: Timestamp) -> i32 {
    ts.div_euclid(MICROS_PER_DAY) as i32
}

/// Parses a timestamp written as RFC 3339 (`2024-05-01T12:00:00Z`, any offset), as a
/// naive date-time (`2024-05-01 12:00:00[.ffffff]`, `2024-05-01T12:00:00`, read as UTC)
/// or as a date (`2024-05-01`, midnight UTC). Digits finer than a microsecond are
/// rounded down (a label's or a query's time); see [`parse_timestamp_nanos`].
pub fn parse_timestamp(s: &str) -> Result<Timestamp> {
    parse_timestamp_nanos(s).map(|(floor, _)| floor)
}

/// Parses a timestamp as [`parse_timestamp`] does, keeping what microseconds cannot
/// hold: the whole microseconds (rounded down) and the nanoseconds past them (0..1000),
/// for [`round_micros`].
pub fn parse_timestamp_nanos(s: &str) -> Result<(Timestamp, u16)> {
    let parts = |dt: DateTime<Utc>| {
        let nanos = dt.timestamp_subsec_nanos();
        (
            dt.timestamp() * MICROS_PER_SECOND + (nanos / 1_000) as i64,
            (nanos % 1_000) as u16,
        )
    };
    let s = s.trim();
    if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
        return Ok(parts(dt.with_timezone(&Utc)));
    }
    for fmt in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(dt) = NaiveDateTime::parse_from_str(s, fmt) {
            return Ok(parts(Utc.from_utc_datetime(&dt)));
        }
    }
    for fmt in ["%Y-%m-%d %H:%M:%S%.f%z", "%Y-%m-%d %H:%M:%S%.f%:z"] {
        if let Ok(dt) = DateTime::parse_from_str(s, fmt) {
            return Ok(parts(dt.with_timezone(&Utc)));
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        let dt = d.and_hms_opt(0, 0, 0).expect("midnight exists");
        return Ok(parts(Utc.from_utc_datetime(&dt)));
    }
    Err(Error::Invalid(format!(
        "cannot parse timestamp {s:?}: expected RFC 3339 (2024-05-01T12:00:00Z) or \
         '2024-05-01 12:00:00' (UTC)"
    )))
}

/// Formats a time of whole microseconds `floor` plus `sub_nanos` nanoseconds as RFC 3339
/// in UTC with nine fractional digits (for messages about sub-microsecond input).
pub fn format_timestamp_nanos(floor: Timestamp, sub_nanos: u16) -> String {
    match DateTime::<Utc>::from_timestamp_micros(floor) {
        Some(dt) => (dt + chrono::Duration::nanoseconds(sub_nanos as i64))
            .format("%Y-%m-%dT%H:%M:%S%.9fZ")
            .to_string(),
        None => format!("{floor}us+{sub_nanos}ns"),
    }
}

/// Formats a timestamp as RFC 3339 in UTC with microseconds when they are not zero.
pub fn format_timestamp(ts: Timestamp) -> String {
    match DateTime::<Utc>::from_timestamp_micros(ts) {
        Some(dt) if ts % MICROS_PER_SECOND == 0 => dt.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        Some(dt) => dt.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
        None => format!("{ts}us"),
    }
}

/// A non-negative span of time in microseconds. Written as `90s`, `30m`, `2h`, `1d`,
/// `4w` (units may be combined: `1h30m`) or `0` for "no limit" where a TTL is meant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(i64);

impl Duration {
    /// The zero duration; as a TTL it means "no limit".
    pub const ZERO: Duration = Duration(0);

    /// A duration of `micros` microseconds.
    pub const fn from_micros(micros: i64) -> Self {
        Duration(micros)
    }
    /// A duration of `s` seconds.
    pub const fn from_secs(s: i64) -> Self {
        Duration(s * MICROS_PER_SECOND)
    }

    /// As a `std::time::Duration` (negative durations become zero).
    pub fn to_std(self) -> std::time::Duration {
        std::time::Duration::from_micros(self.0.max(0) as u64)
    }
    /// The length in microseconds.
    pub const fn micros(self) -> i64 {
        self.0
    }
    /// Whether this is zero (as a TTL: no limit).
    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// Parses `90s`, `30m`, `2h`, `1d`, `4w`, `1h30m`, `500ms`, `0`.
    pub fn parse(s: &str) -> Result<Self> {
        let t = s.trim();
        if t == "0" {
            return Ok(Duration::ZERO);
        }
        let bad = || {
            Error::Invalid(format!(
                "invalid duration {s:?}: expected a number and a unit (ms, s, m, h, d, w), \
                 e.g. 90s, 30m, 2h, 1d, 4w, or 0"
            ))
        };
        if t.is_empty() {
            return Err(bad());
        }
        let mut total: i64 = 0;
        let mut rest = t;
        while !rest.is_empty() {
            let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
            if digits == 0 {
                return Err(bad());
            }
            let n: i64 = rest[..digits].parse().map_err(|_| bad())?;
            rest = &rest[digits..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            let unit = match &rest[..unit_len] {
                "ms" => 1_000,
                "s" => MICROS_PER_SECOND,
                "m" => 60 * MICROS_PER_SECOND,
                "h" => 3_600 * MICROS_PER_SECOND,
                "d" => MICROS_PER_DAY,
                "w" => 7 * MICROS_PER_DAY,
                _ => return Err(bad()),
            };
            rest = &rest[unit_len..];
            total = n
                .checked_mul(unit)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(bad)?;
        }
        Ok(Duration(total))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return write!(f, "0");
        }
        let units = [
            ("w", 7 * MICROS_PER_DAY),
            ("d", MICROS_PER_DAY),
            ("h", 3_600 * MICROS_PER_SECOND),
            ("m", 60 * MICROS_PER_SECOND),
            ("s", MICROS_PER_SECOND),
            ("ms", 1_000),
        ];
        let mut rest = self.0;
        for (name, len) in units {
            if rest >= len {
                write!(f, "{}{name}", rest / len)?;
                rest %= len;
            }
        }
        if rest > 0 {
            write!(f, "{rest}us")?;
        }
        Ok(())
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Duration;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a duration: a number and a unit (ms, s, m, h, d, w), e.g. 90s, 30m, 2h, 1d, 4w, or 0")
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> std::result::Result<Duration, E> {
                if n == 0 {
                    Ok(Duration::ZERO)
                } else {
                    Err(E::custom(format!(
                        "invalid duration {n}: give a unit, e.g. {n}s or {n}d"
                    )))
                }
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> std::result::Result<Duration, E> {
                match i64::try_from(n) {
                    Ok(n) => self.visit_i64(n),
                    Err(_) => Err(E::custom(format!("invalid duration {n}: too large"))),
                }
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> std::result::Result<Duration, E> {
                Duration::parse(s).map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print() {
        assert_eq!(Duration::parse("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(Duration::parse("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(Duration::parse("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(Duration::parse("1d").unwrap(), Duration::from_secs(86_400));
        assert_eq!(
            Duration::parse("4w").unwrap(),
            Duration::from_secs(28 * 86_400)
        );
        assert_eq!(Duration::parse("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(Duration::parse("0").unwrap(), Duration::ZERO);
        assert_eq!(Duration::parse("1h30m").unwrap().to_string(), "1h30m");
        assert_eq!(Duration::from_secs(86_400 * 8).to_string(), "1w1d");
        for bad in ["", "1", "h", "1y", "-1d", "1.5h", "d1"] {
            assert!(Duration::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn timestamps_parse_as_utc() {
        let z = parse_timestamp("2024-05-01T12:00:00Z").unwrap();
        assert_eq!(parse_timestamp("2024-05-01 12:00:00").unwrap(), z);
        assert_eq!(parse_timestamp("2024-05-01T14:00:00+02:00").unwrap(), z);
        assert_eq!(parse_timestamp("2024-05-01 12:00:00.000000").unwrap(), z);
        assert_eq!(format_timestamp(z), "2024-05-01T12:00:00Z");
        assert_eq!(parse_timestamp("2024-05-01").unwrap() % MICROS_PER_DAY, 0);
        assert!(parse_timestamp("yesterday").is_err());
        assert_eq!(day_of(-1), -1);
        assert_eq!(day_of(0), 0);
    }

    #[test]
    fn sub_microsecond_times_round_up_for_rows_and_down_for_labels() {
        let z = parse_timestamp("2024-05-01T12:00:00Z").unwrap();
        let late = "2024-05-01T12:00:00.000000800Z";
        assert_eq!(parse_timestamp(late).unwrap(), z);
        assert_eq!(parse_timestamp_nanos(late).unwrap(), (z, 800));
        assert_eq!(round_micros(z, 800, Rounding::Up), z + 1);
        assert_eq!(round_micros(z, 800, Rounding::Down), z);
        assert_eq!(round_micros(z, 0, Rounding::Up), z);
        let (f, n) = parse_timestamp_nanos("2024-05-01 14:00:00.123456789+02:00").unwrap();
        assert_eq!((f, n), (z + 123_456, 789));
        assert_eq!(
            format_timestamp_nanos(f, n),
            "2024-05-01T12:00:00.123456789Z"
        );
        // Before 1970 too: -1 ns is just before the epoch.
        assert_eq!(micros_from_nanos(-1, Rounding::Down), -1);
        assert_eq!(micros_from_nanos(-1, Rounding::Up), 0);
        assert_eq!(micros_from_nanos(-1_000, Rounding::Up), -1);
        assert_eq!(micros_from_nanos(1_800, Rounding::Up), 2);
        assert_eq!(micros_from_nanos(1_800, Rounding::Down), 1);
    }
}
