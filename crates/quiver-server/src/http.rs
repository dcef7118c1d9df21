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

/// The server's state and whether its online store answers: 200, or 503 when it does
/// not (reads would fail).
async fn health(State(state): State<Arc<ServerState>>) -> Response {
    let (ok, h) = state.check_health().await;
    let mut r = json_response(&h);
    if !ok {
        *r.status_mut() = axum::http::StatusCode::SERVICE_UNAVAILABLE;
    }
    r
}

/// Readiness for load balancers: 200 `ready` when requests can be served (registry
/// loaded, online store answering), else 503 with the reason.
async fn ready(State(state): State<Arc<ServerState>>) -> Response {
    if let Err(e) = state.snapshot() {
        return ApiError::new(ApiCode::Unavailable, format!("not ready: {}", e.message))
            .into_response();
    }
    let (ok, h) = state.check_health().await;
    if ok {
        "ready".into_response()
    } else {
        ApiError::new(ApiCode::Unavailable, format!("not ready: {}", h.status)).into_response()
    }
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
    Router::new()
        .route("/get-online-features", post(get_online_features))
        .route("/push", post(push))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/registry/{kind}", get(registry_list))
        .route("/registry/{kind}/{name}", get(registry_get))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // `read_body` buffers every body within the size limit and the body timeout
        // (answering 413/408 in the API's JSON), so the handlers' `Bytes` never fail.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            read_body,
        ))
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

/// Connection limits of the HTTP listener (`serving:` in `quiver.yaml`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// A request's headers must arrive within this time of the server starting to wait
    /// for them. On a kept-alive connection the wait starts after the previous
    /// response, so this is also how long an idle connection stays open. Zero: none.
    pub header_timeout: std::time::Duration,
    /// A request's body must arrive within this time of its headers. Zero: none.
    pub body_timeout: std::time::Duration,
    /// Open connections at most; further clients wait in the listen backlog until one
    /// closes.
    pub max_connections: usize,
}

impl From<&quiver_registry::config::ServingConfig> for ConnectionLimits {
    fn from(serving: &quiver_registry::config::ServingConfig) -> Self {
        ConnectionLimits {
            header_timeout: serving.header_timeout.to_std(),
            body_timeout: serving.body_timeout.to_std(),
            max_connections: serving.max_connections,
        }
    }
}

/// The defaults of `serving:` in `quiver.yaml`.
impl Default for ConnectionLimits {
    fn default() -> Self {
        (&quiver_registry::config::ServingConfig::default()).into()
    }
}

/// Reads the whole request body within `body_timeout` and at most `max_body_bytes`,
/// answering 408 or 413 with the API's JSON error otherwise; the handlers then take
/// the buffered body.
async fn read_body(
    State(state): State<Arc<ServerState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let (parts, body) = req.into_parts();
    let limit = state.options.max_body_bytes;
    let timeout = state.options.limits.body_timeout;
    // Zero: no timeout.
    let timeout = if timeout.is_zero() {
        std::time::Duration::MAX
    } else {
        timeout
    };
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => {
            next.run(axum::extract::Request::from_parts(parts, bytes.into()))
                .await
        }
        Ok(Err(e)) => {
            let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            let mut too_large = false;
            while let Some(c) = cause {
                too_large |= c.is::<http_body_util::LengthLimitError>();
                cause = c.source();
            }
            if too_large {
                ApiError::new(
                    ApiCode::PayloadTooLarge,
                    format!("the request body is larger than the {limit} bytes allowed"),
                )
                .into_response()
            } else {
                ApiError::invalid(format!("cannot read the request body: {e}")).into_response()
            }
        }
        Err(_) => ApiError::new(
            ApiCode::Timeout,
            format!(
                "the request body did not arrive within {} ms (serving.body_timeout)",
                timeout.as_millis()
            ),
        )
        .into_response(),
    }
}

/// Resolves when `shutdown` turns true (or its sender is gone).
pub(crate) async fn stopped(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// Serves `app` on `listener` until `shutdown` turns true: HTTP/1.1 with the header
/// timeout and connection limit of `limits` (the body timeout is [`read_body`]'s).
/// Connections in flight at shutdown finish their requests.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: ConnectionLimits,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout((!limits.header_timeout.is_zero()).then_some(limits.header_timeout));
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            _ = stopped(&mut shutdown) => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // E.g. out of file descriptors: wait for connections to close.
                    tracing::warn!(error = %e, "accepting an HTTP connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => break,
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            // Timeouts and clients going away end connections with an error: routine.
            let _ = conn.await;
            drop(permit);
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), graceful.shutdown()).await;
}
