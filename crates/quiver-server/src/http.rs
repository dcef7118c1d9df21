//! The HTTP JSON API (axum).

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;

use crate::core::{ApiCode, ApiError, ServerState};
use crate::metrics::{EndpointLabels, RequestLabels};

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"code": self.code.as_str(), "message": self.message});
        (
            self.code.http_status(),
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response()
    }
}

fn json_response<T: Serialize>(v: &T) -> Response {
    match serde_json::to_vec(v) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => ApiError::internal(format!("cannot encode the response: {e}")).into_response(),
    }
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::invalid(format!("malformed request: {e}")))
}

/// Times a request and counts it by result.
fn finish(state: &ServerState, endpoint: &'static str, started: Instant, r: Response) -> Response {
    state
        .metrics
        .latency
        .get_or_create(&EndpointLabels { endpoint })
        .observe(started.elapsed().as_secs_f64());
    let code = if r.status().is_success() {
        "ok"
    } else if r.status().is_client_error() {
        "client_error"
    } else {
        "server_error"
    };
    state
        .metrics
        .requests
        .get_or_create(&RequestLabels { endpoint, code })
        .inc();
    r
}

async fn get_online_features(State(state): State<Arc<ServerState>>, body: Bytes) -> Response {
    let started = Instant::now();
    let r = match parse(&body) {
        Ok(req) => match state.read(req).await {
            Ok(served) => {
                let mut body = Vec::with_capacity(256 + served.size_hint());
                match served.write_json(&mut body) {
                    Ok(()) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
                    Err(e) => ApiError::internal(format!("cannot encode the response: {e}"))
                        .into_response(),
                }
            }
            Err(e) => e.into_response(),
        },
        Err(e) => e.into_response(),
    };
    finish(&state, "get_online_features", started, r)
}

async fn push(State(state): State<Arc<ServerState>>, body: Bytes) -> Response {
    let started = Instant::now();
    let r = match parse(&body) {
        Ok(req) => match state.push(req).await {
            Ok(resp) => json_response(&resp),
            Err(e) => e.into_response(),
        },
        Err(e) => e.into_response(),
    };
    finish(&state, "push", started, r)
}

async fn health(State(state): State<Arc<ServerState>>) -> Response {
    json_response(&state.health())
}

async fn metrics(State(state): State<Arc<ServerState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn registry_list(
    State(state): State<Arc<ServerState>>,
    Path(kind): Path<String>,
) -> Response {
    let snap = match state.snapshot() {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let s = &snap.state;
    let v = match kind.as_str() {
        "entities" => serde_json::to_value(s.entities.values().collect::<Vec<_>>()),
        "sources" => serde_json::to_value(s.sources.values().collect::<Vec<_>>()),
        "feature-views" => serde_json::to_value(s.feature_views.values().collect::<Vec<_>>()),
        "feature-services" => serde_json::to_value(s.feature_services.values().collect::<Vec<_>>()),
        other => {
            return ApiError::not_found(format!(
                "unknown registry kind '{other}' (entities, sources, feature-views, \
                 feature-services)"
            ))
            .into_response()
        }
    };
    match v {
        Ok(v) => json_response(&json!({"project": s.project, "serial": s.serial, "items": v})),
        Err(e) => ApiError::internal(e.to_string()).into_response(),
    }
}

async fn registry_get(
    State(state): State<Arc<ServerState>>,
    Path((kind, name)): Path<(String, String)>,
) -> Response {
    let snap = match state.snapshot() {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let s = &snap.state;
    let found = match kind.as_str() {
        "entities" => s.entities.get(&name).map(serde_json::to_value),
        "sources" => s.sources.get(&name).map(serde_json::to_value),
        "feature-views" => s.feature_views.get(&name).map(serde_json::to_value),
        "feature-services" => s.feature_services.get(&name).map(serde_json::to_value),
        other => {
            return ApiError::not_found(format!("unknown registry kind '{other}'")).into_response()
        }
    };
    match found {
        Some(Ok(v)) => json_response(&v),
        Some(Err(e)) => ApiError::internal(e.to_string()).into_response(),
        None => ApiError::not_found(format!("no {kind} named '{name}'")).into_response(),
    }
}

async fn not_found() -> Response {
    ApiError::not_found("no such endpoint").into_response()
}

async fn method_not_allowed() -> Response {
    ApiError::new(
        ApiCode::MethodNotAllowed,
        "this endpoint does not take that method (queries are POST, the rest GET)",
    )
    .into_response()
}

/// The HTTP routes.
pub fn router(state: Arc<ServerState>) -> Router {
    let limit = state.options.max_body_bytes;
    Router::new()
        .route("/get-online-features", post(get_online_features))
        .route("/push", post(push))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/registry/{kind}", get(registry_list))
        .route("/registry/{kind}/{name}", get(registry_get))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}
