//! The worker's Prometheus metrics (`GET /metrics` on `--metrics-addr`, text format):
//! per feature view and partition, events applied, replayed, late and dead-lettered, and
//! the newest event time applied (lag in seconds is `time() - ` that); per source, the
//! entries read; per source and partition, the entries not yet read by the group.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ViewLabels {
    pub feature_view: String,
    pub partition: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    pub source: String,
    pub partition: String,
}

/// The worker's metrics, shared by its sources' tasks and the HTTP endpoint.
pub struct Metrics {
    registry: Registry,
    pub entries: Family<SourceLabels, Counter>,
    pub lag_entries: Family<PartitionLabels, Gauge>,
    pub applied: Family<ViewLabels, Counter>,
    pub replayed: Family<ViewLabels, Counter>,
    pub late: Family<ViewLabels, Counter>,
    pub dead_letters: Family<ViewLabels, Counter>,
    pub newest_event: Family<ViewLabels, Gauge<f64, AtomicU64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("quiver_stream");
        let entries = Family::<SourceLabels, Counter>::default();
        registry.register("entries", "Stream entries read, by source", entries.clone());
        let lag_entries = Family::<PartitionLabels, Gauge>::default();
        registry.register(
            "lag_entries",
            "Entries of a partition not yet read by the group (a Kafka partition's events \
             after the consumer's position, a Redis stream's undelivered entries)",
            lag_entries.clone(),
        );
        let applied = Family::<ViewLabels, Counter>::default();
        registry.register(
            "events_applied",
            "Events applied online, by feature view and partition",
            applied.clone(),
        );
        let replayed = Family::<ViewLabels, Counter>::default();
        registry.register(
            "events_replayed",
            "Events found applied already (a replay), by feature view and partition",
            replayed.clone(),
        );
        let late = Family::<ViewLabels, Counter>::default();
        registry.register(
            "events_late",
            "Events older than every tile their view keeps, by feature view and partition",
            late.clone(),
        );
        let dead_letters = Family::<ViewLabels, Counter>::default();
        registry.register(
            "dead_letters",
            "Events written to the dead-letter table, by feature view and partition",
            dead_letters.clone(),
        );
        let newest_event = Family::<ViewLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "newest_event_time_seconds",
            "The newest event time applied online (seconds since the epoch), by feature view \
             and partition",
            newest_event.clone(),
        );
        Metrics {
            registry,
            entries,
            lag_entries,
            applied,
            replayed,
            late,
            dead_letters,
            newest_event,
        }
    }
}

impl Metrics {
    /// The metrics in Prometheus' text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// Labels of a view's partition.
    pub fn view(view: &str, partition: &[u8]) -> ViewLabels {
        ViewLabels {
            feature_view: view.to_string(),
            partition: String::from_utf8_lossy(partition).into_owned(),
        }
    }
}

/// Serves `GET /metrics` on `addr` until the process ends; returns the bound address.
pub async fn serve(
    addr: std::net::SocketAddr,
    metrics: Arc<Metrics>,
) -> std::io::Result<std::net::SocketAddr> {
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let m = metrics.clone();
            async move { ([("content-type", "text/plain; version=0.0.4")], m.render()) }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the metrics endpoint stopped");
        }
    });
    Ok(bound)
}
