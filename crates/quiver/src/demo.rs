//! The demo repository (`quiver init`; `quiver.init_demo` in Python): a working
//! repository with deterministic demo data.
//!
//! The demo is a ride-hailing company: drivers with hourly statistics, customers with
//! daily profiles, a (driver, customer) view of trips taken together, read from a CSV
//! file, on-demand features computed from the trip's distance, which arrives with each
//! request (a column of the entity rows offline), and windowed aggregations over the
//! raw trip events (trips and fares per driver over 1h, 1d and 7d). Values come from a fixed seed; timestamps end at the anchor time (by
//! default the current hour) so that the newest rows are fresh when the demo runs.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Float32Array, Float64Array, Int64Array, RecordBatch,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use quiver_core::time::{Timestamp, MICROS_PER_SECOND};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{Error, Result};

const HOUR: i64 = 3600 * MICROS_PER_SECOND;
const DAY: i64 = 24 * HOUR;

/// The demo's `quiver.yaml`.
pub const QUIVER_YAML: &str = "\
project: driver_demo
registry: data/registry            # embedded registry location (relative to the repo)
offline_store: { type: delta, path: data/offline }
online_store:  { type: embedded, path: data/online }
";

/// The demo's definitions.
pub const FEATURES_YAML: &str = "\
entities:
  - name: driver
    join_keys: [driver_id]          # types are inferred from the sources
    description: A ride-hailing driver
    owner: mobility@example.com
  - name: customer
    join_keys: [customer_id]
    description: A rider

sources:
  - name: driver_stats_source
    type: file                      # Parquet or CSV file, directory or glob
    path: data/driver_stats.parquet
    timestamp_field: event_timestamp
    created_timestamp_field: created
  - name: customer_profile_source
    type: file
    path: data/customer_profile.parquet
    timestamp_field: event_timestamp
  - name: driver_customer_source
    type: file
    path: data/driver_customer_trips.csv
    timestamp_field: ts
  - name: trip_events_source        # raw events: one row per trip
    type: file
    path: data/trip_events.parquet
    timestamp_field: event_timestamp

request_sources:
  - name: trip_request              # fields that arrive with a request
    description: The trip being ranked
    schema:
      - { name: distance_km, dtype: float64 }

feature_views:
  - name: driver_hourly_stats
    entities: [driver]
    source: driver_stats_source
    ttl: 1d                         # durations: 90s, 30m, 2h, 1d, 4w; 0 = no limit
    freshness_sla: 2h
    owner: ml-platform@example.com
    tags: { domain: mobility }
    description: Hourly driver statistics
    features:
      - { name: conv_rate, dtype: float64, description: Conversion rate }
      - { name: acc_rate, dtype: float32 }
      - { name: avg_daily_trips, dtype: int64 }
  - name: customer_profile
    entities: [customer]
    source: customer_profile_source
    ttl: 2d
    freshness_sla: 1d
    owner: growth@example.com
    features:
      - { name: current_balance, dtype: float64 }
      - { name: avg_passenger_count, dtype: float64 }
      - { name: lifetime_trip_count, dtype: int64 }
  - name: driver_customer_trips
    entities: [driver, customer]    # keyed by both join keys
    source: driver_customer_source
    ttl: 0                          # no limit
    owner: ml-platform@example.com
    features:
      - { name: trips_together, dtype: int64 }
  - name: driver_trip_windows       # windowed aggregations over the trip events
    entities: [driver]
    source: trip_events_source
    owner: ml-platform@example.com
    aggregations:
      - { function: count_star, windows: [1h, 1d, 7d] }          # count_star_1h, …
      - { column: fare, function: sum, windows: [1d, 7d] }       # fare_sum_1d, …
      - { column: fare, function: mean, windows: [7d] }
      - { column: fare, function: approx_percentile, percentile: 0.9, windows: [7d] }

on_demand_feature_views:
  - name: trip_context              # computed at request time by SQL expressions
    sources: [request: trip_request, driver_hourly_stats]
    owner: ranking-team@example.com
    features:
      - { name: conv_rate_x_distance, dtype: float64, expr: \"conv_rate * distance_km\" }
      - { name: long_trip, dtype: bool, expr: \"distance_km >= 15\" }

feature_services:
  - name: driver_activity_v1
    features: [driver_hourly_stats:conv_rate, driver_hourly_stats:avg_daily_trips]
    owner: ranking-team@example.com
  - name: ride_ranking_v1
    features:
      - driver_hourly_stats:*
      - customer_profile:current_balance
      - driver_customer_trips:trips_together
    owner: ranking-team@example.com
  - name: ride_ranking_v2
    features:
      - driver_hourly_stats:*
      - customer_profile:current_balance
      - driver_customer_trips:trips_together
      - trip_context:*
    owner: ranking-team@example.com
  - name: ride_ranking_v3
    features:
      - driver_hourly_stats:conv_rate
      - customer_profile:current_balance
      - driver_trip_windows:*
    owner: ranking-team@example.com
";

/// Sizes of the generated data.
pub const DRIVERS: i64 = 200;
pub const CUSTOMERS: i64 = 1000;
pub const DAYS: i64 = 30;

fn ts_array(v: Vec<Timestamp>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC"))
}

fn ts_field(name: &str, nullable: bool) -> Field {
    Field::new(
        name,
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        nullable,
    )
}

/// Writes the demo repository into `dir` (which must not hold a `quiver.yaml`), with
/// history ending at `anchor`.
pub fn init(dir: &Path, anchor: Timestamp) -> Result<()> {
    if dir.join("quiver.yaml").exists() {
        return Err(Error::Invalid(format!(
            "{} already holds a quiver repository",
            dir.display()
        )));
    }
    let data = dir.join("data");
    std::fs::create_dir_all(&data)
        .map_err(|e| Error::Invalid(format!("cannot create {}: {e}", data.display())))?;
    let write = |name: &str, text: &str| {
        std::fs::write(dir.join(name), text)
            .map_err(|e| Error::Invalid(format!("cannot write {name}: {e}")))
    };
    write("quiver.yaml", QUIVER_YAML)?;
    write("features.yaml", FEATURES_YAML)?;
    let end = anchor - anchor.rem_euclid(HOUR);
    let start = end - DAYS * DAY;
    let mut rng = StdRng::seed_from_u64(42);

    // Driver hourly stats: 200 drivers × 720 hours = 144,000 rows. A few rows are
    // re-stated later with a newer creation time (a correction).
    let (mut id, mut ts, mut created, mut conv, mut acc, mut trips) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for d in 0..DRIVERS {
        let base: f64 = rng.gen_range(0.2..0.9);
        for h in 0..DAYS * 24 {
            let t = start + (h + 1) * HOUR;
            let corrected = rng.gen_bool(0.01);
            for c in 0..(1 + corrected as i64) {
                id.push(1001 + d);
                ts.push(t);
                created.push(t + (5 + c * 30) * 60 * MICROS_PER_SECOND);
                conv.push((base + rng.gen_range(-0.1..0.1)).clamp(0.0, 1.0));
                acc.push(rng.gen_range(0.5f32..1.0));
                trips.push(rng.gen_range(0..40i64));
            }
        }
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("driver_id", DataType::Int64, false),
        ts_field("event_timestamp", false),
        ts_field("created", false),
        Field::new("conv_rate", DataType::Float64, true),
        Field::new("acc_rate", DataType::Float32, true),
        Field::new("avg_daily_trips", DataType::Int64, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from(id)),
            ts_array(ts),
            ts_array(created),
            Arc::new(Float64Array::from(conv)),
            Arc::new(Float32Array::from(acc)),
            Arc::new(Int64Array::from(trips)),
        ],
    )?;
    quiver_offline::files::write_file(&data.join("driver_stats.parquet"), schema, &[batch])?;

    // Customer profiles: 1000 customers × 30 days, some values missing (null).
    let (mut id, mut ts, mut bal, mut pax, mut life) = (vec![], vec![], vec![], vec![], vec![]);
    for c in 0..CUSTOMERS {
        let mut total = rng.gen_range(0..500i64);
        for day in 0..DAYS {
            id.push(5001 + c);
            ts.push(start + (day + 1) * DAY - HOUR);
            bal.push(if rng.gen_bool(0.05) {
                None
            } else {
                Some((rng.gen_range(0.0..500.0f64) * 100.0).round() / 100.0)
            });
            pax.push(Some(rng.gen_range(1.0..3.0f64)));
            total += rng.gen_range(0..4);
            life.push(Some(total));
        }
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("customer_id", DataType::Int64, false),
        ts_field("event_timestamp", false),
        Field::new("current_balance", DataType::Float64, true),
        Field::new("avg_passenger_count", DataType::Float64, true),
        Field::new("lifetime_trip_count", DataType::Int64, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from(id)),
            ts_array(ts),
            Arc::new(Float64Array::from(bal)),
            Arc::new(Float64Array::from(pax)),
            Arc::new(Int64Array::from(life)),
        ],
    )?;
    quiver_offline::files::write_file(&data.join("customer_profile.parquet"), schema, &[batch])?;

    // (driver, customer) trips together, as CSV with naive UTC timestamps.
    let mut csv = String::from("driver_id,customer_id,ts,trips_together\n");
    let mut pairs = Vec::with_capacity(20_000);
    for _ in 0..20_000 {
        let t = start + rng.gen_range(0..DAYS * DAY);
        let dt = chrono::DateTime::from_timestamp_micros(t).expect("in range");
        let (d, c) = (
            1001 + rng.gen_range(0..DRIVERS),
            5001 + rng.gen_range(0..CUSTOMERS),
        );
        pairs.push((d, c, t));
        csv.push_str(&format!(
            "{d},{c},{},{}\n",
            dt.format("%Y-%m-%d %H:%M:%S"),
            rng.gen_range(1..20)
        ));
    }
    write("data/driver_customer_trips.csv", &csv)?;

    // Training labels: 10,000 (driver, customer, time, label) rows; some exactly on a
    // feature timestamp. Each has the trip's distance (a request field; 1% unknown),
    // drawn from its own generator so that the other data do not depend on it.
    let (mut d, mut c, mut ts, mut label) = (vec![], vec![], vec![], vec![]);
    for i in 0..10_000 {
        if i % 2 == 1 {
            // A pair that has ridden together, some time after one of their trips.
            let (pd, pc, pt) = pairs[rng.gen_range(0..pairs.len())];
            d.push(pd);
            c.push(pc);
            ts.push((pt + rng.gen_range(0..3 * DAY)).min(end));
            label.push(rng.gen_bool(0.6));
            continue;
        }
        d.push(1001 + rng.gen_range(0..DRIVERS));
        c.push(5001 + rng.gen_range(0..CUSTOMERS));
        let t = if i % 10 == 0 {
            start + rng.gen_range(1..DAYS * 24) * HOUR
        } else {
            start + rng.gen_range(0..DAYS * DAY)
        };
        ts.push(t);
        label.push(rng.gen_bool(0.3));
    }
    let mut trip_rng = StdRng::seed_from_u64(7);
    let distance: Vec<Option<f64>> = (0..label.len())
        .map(|_| {
            if trip_rng.gen_bool(0.01) {
                None
            } else {
                Some((trip_rng.gen_range(0.5f64..40.0) * 10.0).round() / 10.0)
            }
        })
        .collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("driver_id", DataType::Int64, false),
        Field::new("customer_id", DataType::Int64, false),
        ts_field("event_timestamp", false),
        Field::new("trip_completed", DataType::Boolean, false),
        Field::new("distance_km", DataType::Float64, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from(d)),
            Arc::new(Int64Array::from(c)),
            ts_array(ts),
            Arc::new(BooleanArray::from(label)),
            Arc::new(Float64Array::from(distance)),
        ],
    )?;
    quiver_offline::files::write_file(&data.join("entities.parquet"), schema, &[batch])?;

    // Trip events for the windowed aggregations: the trips above, each with a fare (2%
    // unknown), from a generator of their own.
    let mut fare_rng = StdRng::seed_from_u64(9);
    let mut trips = pairs.clone();
    trips.sort_by_key(|p| p.2);
    let fares: Vec<Option<f64>> = trips
        .iter()
        .map(|_| {
            if fare_rng.gen_bool(0.02) {
                None
            } else {
                Some((fare_rng.gen_range(4.0f64..60.0) * 100.0).round() / 100.0)
            }
        })
        .collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("driver_id", DataType::Int64, false),
        Field::new("customer_id", DataType::Int64, false),
        ts_field("event_timestamp", false),
        Field::new("fare", DataType::Float64, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from_iter_values(trips.iter().map(|p| p.0))),
            Arc::new(Int64Array::from_iter_values(trips.iter().map(|p| p.1))),
            ts_array(trips.iter().map(|p| p.2).collect()),
            Arc::new(Float64Array::from(fares)),
        ],
    )?;
    quiver_offline::files::write_file(&data.join("trip_events.parquet"), schema, &[batch])?;
    Ok(())
}
