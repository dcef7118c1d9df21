//! Integration tests of the feature server over HTTP and gRPC.

mod aggregated;
mod fuzz;
mod non_finite;
mod server;
