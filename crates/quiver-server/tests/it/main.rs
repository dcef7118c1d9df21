//! Integration tests of the feature server over HTTP and gRPC.

mod non_finite;
mod server;
