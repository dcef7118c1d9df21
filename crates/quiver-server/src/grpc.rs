//! The gRPC service (tonic), over the same handlers as HTTP.

use std::sync::Arc;
use std::time::Instant;

use tonic::{Request, Response, Status};

use crate::api::pb;
use crate::api::pb::feature_serving_server::{FeatureServing, FeatureServingServer};
use crate::core::{ApiError, ServerState};
use crate::metrics::{EndpointLabels, RequestLabels};

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        Status::new(e.code.grpc_code(), e.message)
    }
}

struct Service(Arc<ServerState>);

impl Service {
    fn record<T>(&self, endpoint: &'static str, started: Instant, r: &Result<T, ApiError>) {
        let m = &self.0.metrics;
        m.latency
            .get_or_create(&EndpointLabels { endpoint })
            .observe(started.elapsed().as_secs_f64());
        let code = match r {
            Ok(_) => "ok",
            Err(e) if e.code.is_server_error() => "server_error",
            Err(_) => "client_error",
        };
        m.requests
            .get_or_create(&RequestLabels { endpoint, code })
            .inc();
    }
}

#[tonic::async_trait]
impl FeatureServing for Service {
    async fn get_online_features(
        &self,
        request: Request<pb::GetOnlineFeaturesRequest>,
    ) -> Result<Response<pb::GetOnlineFeaturesResponse>, Status> {
        let started = Instant::now();
        let r = self.0.get_online_features(request.into_inner()).await;
        self.record("grpc_get_online_features", started, &r);
        Ok(Response::new(r?))
    }

    async fn push(
        &self,
        request: Request<pb::PushRequest>,
    ) -> Result<Response<pb::PushResponse>, Status> {
        let started = Instant::now();
        let r = self.0.push(request.into_inner()).await;
        self.record("grpc_push", started, &r);
        Ok(Response::new(r?))
    }

    async fn health(
        &self,
        _request: Request<pb::HealthRequest>,
    ) -> Result<Response<pb::HealthResponse>, Status> {
        Ok(Response::new(self.0.check_health().await.1))
    }
}

/// The gRPC service over `state`.
pub fn service(state: Arc<ServerState>) -> FeatureServingServer<impl FeatureServing> {
    let max = state.options.max_body_bytes;
    FeatureServingServer::new(Service(state))
        .max_decoding_message_size(max)
        .max_encoding_message_size(usize::MAX)
}
