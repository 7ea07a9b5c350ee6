//! Prometheus metrics (`/metrics`): HTTP requests and latency per endpoint, update checks by
//! outcome, events, update outcomes and errors by code, and instances by
//! app/group/channel/version/status (computed from the in-memory fleet at scrape time).

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of HTTP request counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// Route template.
    pub endpoint: String,
    /// HTTP method.
    pub method: String,
    /// Status code.
    pub status: u16,
}

/// Labels of latency histograms.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    /// Route template.
    pub endpoint: String,
}

/// Labels of update-check outcomes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabels {
    /// Application (or `unknown`).
    pub app: String,
    /// `update`, `noupdate_<reason>`, `unknown_app`...
    pub outcome: String,
}

/// Labels of client events.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    /// Application.
    pub app: String,
    /// Event type.
    pub event_type: u32,
    /// Event result.
    pub result: u32,
}

/// Labels of update errors.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// Application.
    pub app: String,
    /// update_engine error code, flag bits masked off.
    pub code: u32,
    /// Its name.
    pub name: String,
}

/// Labels of update outcomes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// Application.
    pub app: String,
    /// `installed`, `complete`, `error`.
    pub outcome: String,
}

/// Labels of the instance gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceLabels {
    /// Application.
    pub app: String,
    /// Group name (or empty).
    pub group: String,
    /// Channel name (or empty).
    pub channel: String,
    /// Version.
    pub version: String,
    /// Status.
    pub status: String,
}

type HistogramFamily = Family<EndpointLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 18))
}

/// All server metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    /// HTTP requests.
    pub http_requests: Family<HttpLabels, Counter>,
    /// HTTP latency.
    pub http_latency: HistogramFamily,
    /// Update checks by outcome.
    pub update_checks: Family<CheckLabels, Counter>,
    /// Client events.
    pub events: Family<EventLabels, Counter>,
    /// Update errors by code.
    pub update_errors: Family<ErrorLabels, Counter>,
    /// Update outcomes.
    pub update_outcomes: Family<OutcomeLabels, Counter>,
    /// Instances (set at scrape time).
    pub instances: Family<InstanceLabels, Gauge>,
    /// Omaha bodies refused (malformed, oversized).
    pub omaha_rejected: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("platte");
        let http_requests = Family::<HttpLabels, Counter>::default();
        r.register(
            "http_requests",
            "HTTP requests by endpoint, method, status",
            http_requests.clone(),
        );
        let http_latency: HistogramFamily = Family::new_with_constructor(latency_histogram);
        r.register(
            "http_request_duration_seconds",
            "HTTP request latency",
            http_latency.clone(),
        );
        let update_checks = Family::<CheckLabels, Counter>::default();
        r.register(
            "update_checks",
            "Omaha update checks by outcome",
            update_checks.clone(),
        );
        let events = Family::<EventLabels, Counter>::default();
        r.register("client_events", "Omaha client events", events.clone());
        let update_errors = Family::<ErrorLabels, Counter>::default();
        r.register(
            "update_errors",
            "Update errors by update_engine code",
            update_errors.clone(),
        );
        let update_outcomes = Family::<OutcomeLabels, Counter>::default();
        r.register(
            "update_outcomes",
            "Update outcomes reported",
            update_outcomes.clone(),
        );
        let instances = Family::<InstanceLabels, Gauge>::default();
        r.register("instances", "Known instances", instances.clone());
        let omaha_rejected = Counter::default();
        r.register(
            "omaha_rejected_bodies",
            "Omaha bodies refused with 400",
            omaha_rejected.clone(),
        );
        Self {
            registry: Mutex::new(r),
            http_requests,
            http_latency,
            update_checks,
            events,
            update_errors,
            update_outcomes,
            instances,
            omaha_rejected,
        }
    }

    /// Counts an update-check outcome.
    pub fn check(&self, app: &str, outcome: &str) {
        self.update_checks
            .get_or_create(&CheckLabels {
                app: app.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Registers a metric owned by another module (e.g. FleetLock) under the `platte_` prefix.
    pub fn register(
        &self,
        name: &str,
        help: &str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        let mut reg = match self.registry.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        reg.register(name, help, metric);
    }

    /// Encodes the registry in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let reg = match self.registry.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &reg);
        out
    }
}
