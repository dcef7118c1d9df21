//! The feature server (DESIGN §6): HTTP JSON (axum) and gRPC (tonic) over one core,
//! serving a [`quiver::FeatureStore`]: its registry snapshot, read plans and online store
//! connection. `quiver serve` (in `quiver-cli`) runs it; the proto in `proto/` defines
//! both APIs' messages.
//!
//! * `POST /get-online-features` and gRPC `GetOnlineFeatures`: feature vectors with a
//!   status per feature, in request order, from a compiled [`ReadPlan`](quiver_online::ReadPlan)
//!   per feature service.
//! * `POST /push` and gRPC `Push`: rows for a feature view, validated like an ingest and
//!   written with the conditional newer-wins write, online and/or offline.
//! * `GET /health`, `GET /metrics` (Prometheus text), and read-only registry endpoints
//!   under `/registry/…`.
//!
//! Feature services are compiled once into read plans. A background task watches the
//! registry file and swaps in a newly compiled snapshot when `quiver apply` (or a
//! materialization) rewrites it, without a restart and without blocking requests.
//!
//! Every error is answered as JSON `{"code": …, "message": …}` with a 4xx status for bad
//! requests (gRPC: `INVALID_ARGUMENT`, `NOT_FOUND`) and 5xx for store failures; no request
//! can panic the server.

pub mod api;
mod core;
#[doc(hidden)]
pub mod fuzz;
mod grpc;
mod http;
mod metrics;
mod push;

pub use self::core::{ApiCode, ApiError, ServeOptions, Server, ServerState};
pub use self::http::ConnectionLimits;
