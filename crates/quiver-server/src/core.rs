//! The server's shared state and request handling, used by both HTTP and gRPC.

use quiver::freshness::Freshness;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use quiver::{Error, ErrorKind, FeatureStore, Snapshot};
use quiver_core::time::{Clock, SystemClock};
use quiver_core::Value;
use quiver_online::{Columns, OnlineStore, ReadPlan};

use crate::api::{self, pb};
use crate::metrics::Metrics;

/// What kind of error a request gets: mapped once to an HTTP status
/// ([`http_status`](Self::http_status)) and a gRPC code ([`grpc_code`](Self::grpc_code)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ApiCode {
    InvalidArgument,
    NotFound,
    PayloadTooLarge,
    MethodNotAllowed,
    /// The client did not send its request in time.
    Timeout,
    Unavailable,
    Internal,
}

impl ApiCode {
    /// The code's name in JSON error bodies.
    pub fn as_str(self) -> &'static str {
        match self {
            ApiCode::InvalidArgument => "INVALID_ARGUMENT",
            ApiCode::NotFound => "NOT_FOUND",
            ApiCode::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            ApiCode::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            ApiCode::Timeout => "REQUEST_TIMEOUT",
            ApiCode::Unavailable => "UNAVAILABLE",
            ApiCode::Internal => "INTERNAL",
        }
    }

    /// The HTTP status answered.
    pub fn http_status(self) -> axum::http::StatusCode {
        use axum::http::StatusCode as S;
        match self {
            ApiCode::InvalidArgument => S::BAD_REQUEST,
            ApiCode::NotFound => S::NOT_FOUND,
            ApiCode::PayloadTooLarge => S::PAYLOAD_TOO_LARGE,
            ApiCode::MethodNotAllowed => S::METHOD_NOT_ALLOWED,
            ApiCode::Timeout => S::REQUEST_TIMEOUT,
            ApiCode::Unavailable => S::SERVICE_UNAVAILABLE,
            ApiCode::Internal => S::INTERNAL_SERVER_ERROR,
        }
    }

    /// The gRPC status code answered.
    pub fn grpc_code(self) -> tonic::Code {
        use tonic::Code as C;
        match self {
            ApiCode::InvalidArgument | ApiCode::MethodNotAllowed => C::InvalidArgument,
            ApiCode::NotFound => C::NotFound,
            ApiCode::PayloadTooLarge => C::ResourceExhausted,
            ApiCode::Timeout => C::DeadlineExceeded,
            ApiCode::Unavailable => C::Unavailable,
            ApiCode::Internal => C::Internal,
        }
    }

    /// Whether the failure is the server's (counted as `server_error` in metrics).
    pub fn is_server_error(self) -> bool {
        matches!(self, ApiCode::Unavailable | ApiCode::Internal)
    }
}

impl From<ErrorKind> for ApiCode {
    fn from(k: ErrorKind) -> Self {
        match k {
            ErrorKind::InvalidInput => ApiCode::InvalidArgument,
            ErrorKind::NotFound => ApiCode::NotFound,
            ErrorKind::TooLarge => ApiCode::PayloadTooLarge,
            ErrorKind::Unavailable => ApiCode::Unavailable,
            ErrorKind::Internal => ApiCode::Internal,
        }
    }
}

/// A request error: what to answer, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: ApiCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ApiCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ApiCode::InvalidArgument, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ApiCode::NotFound, message)
    }
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(ApiCode::PayloadTooLarge, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ApiCode::Internal, message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError::new(e.kind().into(), e.to_string())
    }
}

impl From<quiver_online::Error> for ApiError {
    fn from(e: quiver_online::Error) -> Self {
        Error::from(e).into()
    }
}

/// How the server runs.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub http: SocketAddr,
    /// The gRPC address; `None` serves HTTP only.
    pub grpc: Option<SocketAddr>,
    /// Largest number of entity rows one request may ask for.
    pub max_entity_rows: usize,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// How often the registry file is checked for changes.
    pub reload_interval: std::time::Duration,
    /// Timeouts and the connection limit of the HTTP listener.
    pub limits: crate::http::ConnectionLimits,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            http: SocketAddr::from(([127, 0, 0, 1], 6566)),
            grpc: Some(SocketAddr::from(([127, 0, 0, 1], 6567))),
            max_entity_rows: 1000,
            max_body_bytes: 4 << 20,
            reload_interval: std::time::Duration::from_millis(500),
            limits: Default::default(),
        }
    }
}

/// Everything a request handler needs; shared by the HTTP and gRPC services.
pub struct ServerState {
    pub(crate) store: FeatureStore,
    pub(crate) online: Arc<dyn OnlineStore>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) metrics: Metrics,
    pub(crate) options: ServeOptions,
    /// Offline writes of pushes to push sources, committed in groups.
    pub(crate) offline_commits: crate::push::OfflineCommits,
    /// What pushes applied online since the last freshness report, by view.
    pub(crate) push_reports: std::sync::Mutex<std::collections::HashMap<String, Freshness>>,
}

impl ServerState {
    /// Opens the repository's registry and online store for serving.
    pub async fn new(
        store: FeatureStore,
        options: ServeOptions,
        clock: Arc<dyn Clock>,
    ) -> quiver::Result<Arc<Self>> {
        store.snapshot()?;
        let online = store.online().await?;
        let metrics = Metrics::new(online.clone());
        Ok(Arc::new(ServerState {
            store,
            online,
            clock,
            metrics,
            options,
            offline_commits: Default::default(),
            push_reports: Default::default(),
        }))
    }

    /// The registry snapshot being served (the store's).
    pub fn snapshot(&self) -> Result<Arc<Snapshot>, ApiError> {
        Ok(self.store.snapshot()?)
    }

    /// Reloads the registry if its file changed; returns whether it did. A registry
    /// that does not load is an error and the previous one keeps serving.
    pub fn reload_if_changed(&self) -> quiver::Result<bool> {
        let changed = self.store.refresh()?;
        if changed {
            self.metrics.reloads.inc();
        }
        Ok(changed)
    }

    /// The registry serial being served.
    pub fn registry_serial(&self) -> u64 {
        self.store.snapshot().map_or(0, |s| s.serial())
    }

    /// Serves one `GetOnlineFeatures` request as its message (gRPC).
    pub async fn get_online_features(
        &self,
        req: pb::GetOnlineFeaturesRequest,
    ) -> Result<pb::GetOnlineFeaturesResponse, ApiError> {
        Ok(self.read(req).await?.into_message())
    }

    /// Reads the feature vectors of a request.
    #[tracing::instrument(level = "debug", skip_all, fields(
        service = req.feature_service.as_deref(),
        features = req.features.len(),
    ))]
    pub(crate) async fn read(&self, req: pb::GetOnlineFeaturesRequest) -> Result<Served, ApiError> {
        let started = Instant::now();
        let plan = self.snapshot()?.plan(
            req.feature_service.as_deref(),
            &req.features,
            req.full_feature_names,
        )?;
        if req.entities.is_empty() {
            return Err(ApiError::invalid(format!(
                "no entities given: 'entities' needs a column per join key ({})",
                key_list(&plan)
            )));
        }
        let columns: Vec<(String, Vec<Value>)> = req
            .entities
            .iter()
            .map(|(k, v)| (k.clone(), v.values.iter().map(api::to_value).collect()))
            .collect();
        let entities = Columns::new(columns)?;
        if entities.len() > self.options.max_entity_rows {
            return Err(ApiError::too_large(format!(
                "{} entity rows requested; at most {} per request (serving.max_entity_rows)",
                entities.len(),
                self.options.max_entity_rows
            )));
        }
        if entities.is_empty() {
            return Err(ApiError::invalid("the entity columns hold no rows"));
        }
        let context = Columns::new(
            req.request_context
                .iter()
                .map(|(k, v)| (k.clone(), v.values.iter().map(api::to_value).collect()))
                .collect(),
        )?;
        let at = self.clock.now();
        let vectors = plan
            .execute_with(self.online.as_ref(), &entities, &context, at)
            .await?;
        self.metrics.observe_statuses(&plan, &vectors.statuses);
        Ok(Served {
            entities: req.entities,
            plan,
            vectors,
            started,
        })
    }

    /// Serves one `Health` request.
    pub fn health(&self) -> pb::HealthResponse {
        pb::HealthResponse {
            status: "ok".into(),
            project: self.store.project().to_string(),
            registry_serial: self.registry_serial(),
            online_store: self.online.backend().to_string(),
        }
    }

    /// [`Self::health`] after a round trip to the online store: `status` is `ok`, or
    /// `unavailable: …` with the store's error, and the flag says which (load balancers
    /// take the server out of rotation on 503).
    pub async fn check_health(&self) -> (bool, pb::HealthResponse) {
        let mut h = self.health();
        match self.online.ping().await {
            Ok(()) => (true, h),
            Err(e) => {
                h.status = format!("unavailable: online store: {e}");
                (false, h)
            }
        }
    }
}

/// The vectors of one request, ready to encode as a message (gRPC) or as JSON (HTTP).
pub(crate) struct Served {
    entities: std::collections::BTreeMap<String, pb::ValueList>,
    plan: Arc<ReadPlan>,
    vectors: quiver_online::Vectors,
    started: Instant,
}

impl Served {
    /// A guess of the JSON size, to allocate once.
    pub fn size_hint(&self) -> usize {
        self.vectors.values.len() * 48 + self.vectors.rows() * 64
    }

    fn latency_ms(&self) -> f64 {
        self.started.elapsed().as_secs_f64() * 1e3
    }

    /// The response message.
    pub fn into_message(self) -> pb::GetOnlineFeaturesResponse {
        let names = self.plan.feature_names();
        let nout = names.len();
        let rows = self.vectors.rows();
        let latency_ms = self.latency_ms();
        let mut results = Vec::with_capacity(rows);
        let mut values = self.vectors.values.into_iter();
        for row in 0..rows {
            let mut fv = pb::FeatureVector::default();
            for (k, col) in &self.entities {
                fv.entities.insert(k.clone(), col.values[row].clone());
            }
            for (i, name) in names.iter().enumerate() {
                let v = values.next().expect("rows × features values");
                fv.features.insert(name.clone(), api::from_value(v));
                fv.statuses.insert(
                    name.clone(),
                    api::from_status(self.vectors.statuses[row * nout + i]) as i32,
                );
            }
            results.push(fv);
        }
        pb::GetOnlineFeaturesResponse {
            results,
            metadata: Some(pb::ResponseMetadata {
                feature_service: self.plan.service().map(|(s, _)| s.to_string()),
                feature_service_version: self.plan.service().map(|(_, v)| v),
                feature_names: names.to_vec(),
                latency_ms,
            }),
        }
    }

    /// The JSON form of [`into_message`](Self::into_message), written straight from the
    /// vectors (features in request order) without building the message first.
    pub fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        use serde::ser::{SerializeMap, SerializeSeq, Serializer};
        struct Row<'a>(&'a Served, usize);
        struct Entities<'a>(&'a Served, usize);
        struct Features<'a>(&'a Served, usize);
        struct Statuses<'a>(&'a Served, usize);
        impl serde::Serialize for Entities<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut m = s.serialize_map(Some(self.0.entities.len()))?;
                for (k, col) in &self.0.entities {
                    m.serialize_entry(k, &col.values[self.1])?;
                }
                m.end()
            }
        }
        impl serde::Serialize for Features<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let names = self.0.plan.feature_names();
                let base = self.1 * names.len();
                let mut m = s.serialize_map(Some(names.len()))?;
                for (i, n) in names.iter().enumerate() {
                    m.serialize_entry(n, &self.0.vectors.values[base + i])?;
                }
                m.end()
            }
        }
        impl serde::Serialize for Statuses<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let names = self.0.plan.feature_names();
                let base = self.1 * names.len();
                let mut m = s.serialize_map(Some(names.len()))?;
                for (i, n) in names.iter().enumerate() {
                    m.serialize_entry(n, self.0.vectors.statuses[base + i].as_str())?;
                }
                m.end()
            }
        }
        impl serde::Serialize for Row<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut m = s.serialize_map(Some(3))?;
                m.serialize_entry("entities", &Entities(self.0, self.1))?;
                m.serialize_entry("features", &Features(self.0, self.1))?;
                m.serialize_entry("statuses", &Statuses(self.0, self.1))?;
                m.end()
            }
        }
        let mut ser = serde_json::Serializer::new(out);
        let mut top = ser.serialize_map(Some(2))?;
        struct Results<'a>(&'a Served);
        impl serde::Serialize for Results<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let rows = self.0.vectors.rows();
                let mut seq = s.serialize_seq(Some(rows))?;
                for r in 0..rows {
                    seq.serialize_element(&Row(self.0, r))?;
                }
                seq.end()
            }
        }
        top.serialize_entry("results", &Results(self))?;
        let meta = pb::ResponseMetadata {
            feature_service: self.plan.service().map(|(s, _)| s.to_string()),
            feature_service_version: self.plan.service().map(|(_, v)| v),
            feature_names: self.plan.feature_names().to_vec(),
            latency_ms: self.latency_ms(),
        };
        top.serialize_entry("metadata", &meta)?;
        SerializeMap::end(top)
    }
}

fn key_list(plan: &ReadPlan) -> String {
    plan.join_keys()
        .iter()
        .map(|k| k.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A running server: its bound addresses, and a handle to stop it.
pub struct Server {
    pub http_addr: SocketAddr,
    pub grpc_addr: Option<SocketAddr>,
    pub state: Arc<ServerState>,
    shutdown: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// How often what pushes applied is added to the views' freshness records.
const PUSH_REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

impl ServerState {
    /// Adds what pushes applied online since the last call to each view's freshness
    /// record (see [`quiver::freshness`]), with the rate over the interval.
    async fn report_pushes(&self) {
        let taken = std::mem::take(&mut *self.push_reports.lock().expect("not poisoned"));
        if taken.is_empty() {
            return;
        }
        let Ok(snapshot) = self.snapshot() else {
            return;
        };
        let now = self.clock.now();
        let seconds = PUSH_REPORT_EVERY.as_secs_f64();
        for (view, mut by_partition) in taken {
            for r in by_partition.values_mut() {
                r.events_per_s = r.applied as f64 / seconds;
                r.consumer = "feature server".into();
                r.reported_at = now;
            }
            let project = &snapshot.state.project;
            if let Err(e) =
                quiver::freshness::report_named(&self.store, project, &view, by_partition).await
            {
                tracing::warn!(view = %view, error = %e, "the push freshness report was not stored");
            }
        }
    }
}

impl Server {
    /// Binds the listeners and starts serving in the current tokio runtime (ports may
    /// be 0 to pick free ones; the bound addresses are in the result).
    pub async fn start(
        store: FeatureStore,
        options: ServeOptions,
        clock: Option<Arc<dyn Clock>>,
    ) -> quiver::Result<Server> {
        let clock = clock.unwrap_or_else(|| Arc::new(SystemClock));
        let state = ServerState::new(store, options.clone(), clock).await?;
        let (tx, rx) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();

        let listener = tokio::net::TcpListener::bind(options.http)
            .await
            .map_err(|source| Error::Io {
                context: format!("cannot listen on {}", options.http),
                source,
            })?;
        let http_addr = listener.local_addr().expect("bound");
        let app = crate::http::router(state.clone());
        tasks.push(tokio::spawn(crate::http::serve(
            listener,
            app,
            options.limits,
            rx.clone(),
        )));

        let grpc_addr = match options.grpc {
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| Error::Io {
                        context: format!("cannot listen on {addr}"),
                        source,
                    })?;
                let bound = listener.local_addr().expect("bound");
                tasks.push(tokio::spawn(crate::grpc::serve(
                    listener,
                    state.clone(),
                    options.limits,
                    rx.clone(),
                )));
                Some(bound)
            }
            None => None,
        };

        let reload_state = state.clone();
        let mut rx_reload = rx.clone();
        let interval = options.reload_interval;
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = rx_reload.wait_for(|s| *s) => return,
                }
                let s = reload_state.clone();
                match tokio::task::spawn_blocking(move || s.reload_if_changed()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::warn!(
                        error = %e,
                        "registry reload failed (still serving the previous one)"
                    ),
                    Err(e) => tracing::error!(error = %e, "registry reload task failed"),
                }
            }
        }));

        let report_state = state.clone();
        let mut rx_report = rx.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let stopping = tokio::select! {
                    _ = tokio::time::sleep(PUSH_REPORT_EVERY) => false,
                    _ = rx_report.wait_for(|s| *s) => true,
                };
                report_state.report_pushes().await;
                if stopping {
                    return;
                }
            }
        }));

        Ok(Server {
            http_addr,
            grpc_addr,
            state,
            shutdown: tx,
            tasks,
        })
    }

    /// Stops accepting requests, lets in-flight ones finish, and returns.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
