//! The real-server harness, shared with other crates' tests: `quiver_redis::testing`.

pub use quiver_redis::testing::*;
