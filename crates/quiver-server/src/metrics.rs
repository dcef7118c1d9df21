//! Prometheus metrics of the feature server (`GET /metrics`, text exposition format).

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use quiver_core::FeatureStatus;
use quiver_online::OnlineStore;

use quiver_online::ReadPlan;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub endpoint: &'static str,
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub feature_view: String,
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: &'static str,
}

/// The server's metrics.
pub struct Metrics {
    registry: Registry,
    pub latency: Family<EndpointLabels, Histogram>,
    pub requests: Family<RequestLabels, Counter>,
    pub statuses: Family<StatusLabels, Counter>,
    pub reloads: Counter,
    online: Arc<dyn OnlineStore>,
}

fn latency_histogram() -> Histogram {
    // 25 µs to ~1.6 s, doubling.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.000_025, 2.0, 17,
    ))
}

impl Metrics {
    pub fn new(online: Arc<dyn OnlineStore>) -> Self {
        let mut registry = Registry::with_prefix("quiver");
        let latency = Family::<EndpointLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "request_duration_seconds",
            "Time to serve a request, by endpoint",
            latency.clone(),
        );
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests served, by endpoint and result code",
            requests.clone(),
        );
        let statuses = Family::<StatusLabels, Counter>::default();
        registry.register(
            "feature_values",
            "Feature values served, by feature view and status",
            statuses.clone(),
        );
        let reloads = Counter::default();
        registry.register(
            "registry_reloads",
            "Registry changes picked up without restart",
            reloads.clone(),
        );
        Metrics {
            registry,
            latency,
            requests,
            statuses,
            reloads,
            online,
        }
    }

    /// Counts the statuses of one response by feature view.
    pub fn observe_statuses(&self, plan: &ReadPlan, statuses: &[FeatureStatus]) {
        let nout = plan.feature_names().len();
        if nout == 0 {
            return;
        }
        let views: Vec<&str> = plan.view_names().collect();
        let mut counts = vec![[0u64; ALL.len()]; views.len()];
        for row in statuses.chunks(nout) {
            for (i, s) in row.iter().enumerate() {
                counts[plan.output_view_index(i)][*s as usize] += 1;
            }
        }
        const ALL: [FeatureStatus; 4] = [
            FeatureStatus::Present,
            FeatureStatus::Missing,
            FeatureStatus::OutsideTtl,
            FeatureStatus::Invalid,
        ];
        for (v, c) in counts.iter().enumerate() {
            for (s, n) in c.iter().enumerate() {
                if *n > 0 {
                    self.statuses
                        .get_or_create(&StatusLabels {
                            feature_view: views[v].to_string(),
                            status: ALL[s].as_str(),
                        })
                        .inc_by(*n);
                }
            }
        }
    }

    /// The metrics in Prometheus' text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode_registry(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        if let Some(c) = self.online.cache_stats() {
            out.push_str(&format!(
                "# HELP quiver_cache_hits Online cells served from the hot-key cache.\n\
                 # TYPE quiver_cache_hits counter\nquiver_cache_hits_total {}\n\
                 # HELP quiver_cache_misses Online cells read from the store behind the cache.\n\
                 # TYPE quiver_cache_misses counter\nquiver_cache_misses_total {}\n",
                c.hits, c.misses
            ));
        }
        prometheus_client::encoding::text::encode_eof(&mut out).expect("writing to a String");
        out
    }
}
