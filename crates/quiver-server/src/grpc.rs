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

/// Serves the gRPC service on `listener` until `shutdown` turns true, within `limits`:
/// at most `max_connections` open connections (further clients wait in the listen
/// backlog); a connection from which nothing arrives for `header_timeout` is closed — a
/// client stalled before or inside the HTTP/2 handshake, a frozen or vanished peer —
/// while live idle clients stay connected by answering the keep-alive pings the
/// server sends every half of it; a request must complete within `body_timeout`.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<ServerState>,
    limits: crate::http::ConnectionLimits,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Conn>>(1);
    let mut accept_shutdown = shutdown.clone();
    let idle = (!limits.header_timeout.is_zero()).then_some(limits.header_timeout);
    tokio::spawn(async move {
        let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
        loop {
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
                _ = crate::http::stopped(&mut accept_shutdown) => return,
            };
            let stream = tokio::select! {
                r = listener.accept() => match r {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting a gRPC connection failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = crate::http::stopped(&mut accept_shutdown) => return,
            };
            let _ = stream.set_nodelay(true);
            let conn = Conn {
                io: stream,
                _permit: permit,
                idle,
                deadline: idle.map(|d| Box::pin(tokio::time::sleep(d))),
            };
            if tx.send(Ok(conn)).await.is_err() {
                return;
            }
        }
    });
    let mut server = tonic::transport::Server::builder()
        .http2_keepalive_interval(idle.map(|d| d / 2))
        .http2_keepalive_timeout(idle.map(|d| d / 2));
    if !limits.body_timeout.is_zero() {
        server = server.timeout(limits.body_timeout);
    }
    let _ = server
        .add_service(service(state))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            async move { crate::http::stopped(&mut shutdown).await },
        )
        .await;
}

/// An accepted gRPC connection: holds its slot of the connection limit until dropped,
/// and fails its reads once nothing has arrived for `idle`.
struct Conn {
    io: tokio::net::TcpStream,
    _permit: tokio::sync::OwnedSemaphorePermit,
    idle: Option<std::time::Duration>,
    deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl tokio::io::AsyncRead for Conn {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::future::Future;
        use std::task::Poll;
        let this = &mut *self;
        let before = buf.filled().len();
        match std::pin::Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if let (Some(d), Some(idle)) = (this.deadline.as_mut(), this.idle) {
                    if buf.filled().len() > before {
                        d.as_mut().reset(tokio::time::Instant::now() + idle);
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let expired = match this.deadline.as_mut() {
                    Some(d) => d.as_mut().poll(cx).is_ready(),
                    None => false,
                };
                if expired {
                    Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "nothing arrived within serving.header_timeout",
                    )))
                } else {
                    Poll::Pending
                }
            }
            other => other,
        }
    }
}

impl tokio::io::AsyncWrite for Conn {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}
