//! Integration tests of quiver through its public API and its command line.

mod agg_parity;
mod aggregations;
mod common;
mod crash;
mod definitions;
mod end_to_end;
mod facade;
mod fault;
mod ingest;
mod materialize;
mod on_demand;
mod on_demand_serving;
mod parity;
mod point_in_time;
mod stream;
mod stream_kafka;
mod versions;
