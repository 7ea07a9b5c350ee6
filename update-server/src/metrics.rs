//! Prometheus metrics (`/metrics`): HTTP requests and latency per endpoint, update checks by
//! outcome, events, update outcomes and errors by code, and instances by
//! app/group/channel/version/status (computed from the in-memory fleet at scrape time).
//!
//! Every label value comes from a closed set or from the operator's catalogue, never verbatim
//! from a client: event types and results, error codes and HTTP methods outside the known ones
//! are labelled `other` ([`event_type_label`], [`event_result_label`], [`error_code_label`],
//! [`method_label`]), apps not in the catalogue `unknown`, unrouted paths `unmatched`, and the
//! instance gauge labels at most [`MAX_VERSION_LABELS`] versions per app (the rest `other`).

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
    /// Application (in the catalogue).
    pub app: String,
    /// Event type number if Omaha names it, else `other`.
    pub event_type: String,
    /// Event result number if Omaha names it, else `other`.
    pub result: String,
}

/// Labels of client events acknowledged but not stored.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DroppedEventLabels {
    /// `machine_budget` (the machine's stored-event budget of the hour is spent) or
    /// `request_cap` (beyond the events-per-request cap: neither applied nor stored).
    pub reason: &'static str,
}

/// Most versions per app the instance gauge labels; the rest are counted as `other`.
pub const MAX_VERSION_LABELS: usize = 32;

/// The `event_type` label: the number if [`omaha::EventType`] names it, else `other`.
pub fn event_type_label(t: u32) -> String {
    match omaha::EventType::from_u32(t) {
        omaha::EventType::Other(_) => "other".to_owned(),
        named => named.to_u32().to_string(),
    }
}

/// The `result` label: the number if [`omaha::EventResult`] names it, else `other`.
pub fn event_result_label(r: u32) -> String {
    match omaha::EventResult::from_u32(r) {
        omaha::EventResult::Other(_) => "other".to_owned(),
        named => named.to_u32().to_string(),
    }
}

/// The `code` label of an error code without flags: the number if update_engine or Platte
/// names it or it carries an HTTP status (100-599), else `other`.
pub fn error_code_label(code: u32) -> String {
    let c = omaha::ErrorCode::from_u32(code);
    let known = c.description().is_some()
        || c.http_status().is_some_and(|s| (100..600).contains(&s))
        || omaha::PlatteCode::from_u32(code).description().is_some();
    if known {
        code.to_string()
    } else {
        "other".to_owned()
    }
}

/// The `method` label: a standard HTTP method, else `other`.
pub fn method_label(m: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    const KNOWN: [Method; 9] = [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::OPTIONS,
        Method::TRACE,
        Method::CONNECT,
    ];
    KNOWN
        .iter()
        .find(|k| *k == m)
        .map_or("other", Method::as_str)
}

/// Labels of update errors.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// Application.
    pub app: String,
    /// update_engine error code, flag bits masked off ([`error_code_label`]: `other` when
    /// unknown).
    pub code: String,
    /// Its name (`other` when the code is unknown).
    pub name: String,
}

/// Labels of the payloads update checks offered.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PayloadLabels {
    /// Application.
    pub app: String,
    /// `full` or `delta`.
    pub payload: &'static str,
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

/// Labels of the connection timeout counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnTimeoutLabels {
    /// `header`, `idle`, `body` or `write`.
    pub kind: &'static str,
}

impl Metrics {
    /// Counts a connection closed by a timeout.
    pub fn connection_timeout(&self, kind: crate::http::connections::TimeoutKind) {
        self.http_connection_timeouts
            .get_or_create(&ConnTimeoutLabels {
                kind: kind.as_str(),
            })
            .inc();
    }
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
    /// Payloads offered, full or delta.
    pub payloads_offered: Family<PayloadLabels, Counter>,
    /// Client events.
    pub events: Family<EventLabels, Counter>,
    /// Client events acknowledged but not stored, by reason.
    pub events_dropped: Family<DroppedEventLabels, Counter>,
    /// Update errors by code.
    pub update_errors: Family<ErrorLabels, Counter>,
    /// Update outcomes.
    pub update_outcomes: Family<OutcomeLabels, Counter>,
    /// Instances (set at scrape time).
    pub instances: Family<InstanceLabels, Gauge>,
    /// Omaha bodies refused (malformed, oversized).
    pub omaha_rejected: Counter,
    /// Open HTTP client connections.
    pub http_connections_open: Gauge,
    /// Idle HTTP connections closed to make room (connection cap or no file descriptor left).
    pub http_connections_shed: Counter,
    /// HTTP connections closed by a timeout, by kind (`header`, `idle`, `body`).
    pub http_connection_timeouts: Family<ConnTimeoutLabels, Counter>,
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
        let payloads_offered = Family::<PayloadLabels, Counter>::default();
        r.register(
            "update_payloads_offered",
            "Payloads offered by update checks, full or delta",
            payloads_offered.clone(),
        );
        let events = Family::<EventLabels, Counter>::default();
        r.register("client_events", "Omaha client events", events.clone());
        let events_dropped = Family::<DroppedEventLabels, Counter>::default();
        r.register(
            "client_events_dropped",
            "Omaha client events acknowledged but not stored, by reason",
            events_dropped.clone(),
        );
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
        let http_connections_open = Gauge::default();
        r.register(
            "http_connections_open",
            "Open HTTP client connections",
            http_connections_open.clone(),
        );
        let http_connections_shed = Counter::default();
        r.register(
            "http_connections_shed",
            "Idle HTTP connections closed to make room for new ones",
            http_connections_shed.clone(),
        );
        let http_connection_timeouts = Family::<ConnTimeoutLabels, Counter>::default();
        r.register(
            "http_connection_timeouts",
            "HTTP connections closed by a header, idle, body or write-stall timeout",
            http_connection_timeouts.clone(),
        );
        Self {
            registry: Mutex::new(r),
            http_requests,
            http_latency,
            update_checks,
            payloads_offered,
            events,
            events_dropped,
            update_errors,
            update_outcomes,
            instances,
            omaha_rejected,
            http_connections_open,
            http_connections_shed,
            http_connection_timeouts,
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

    /// Counts a payload an update check offered (`full` or `delta`).
    pub fn payload_offered(&self, app: &str, payload: &'static str) {
        self.payloads_offered
            .get_or_create(&PayloadLabels {
                app: app.to_owned(),
                payload,
            })
            .inc();
    }

    /// Counts a client event of a catalogue `app` (type and result from the closed sets).
    pub fn event(&self, app: &str, event_type: u32, result: u32) {
        self.events
            .get_or_create(&EventLabels {
                app: app.to_owned(),
                event_type: event_type_label(event_type),
                result: event_result_label(result),
            })
            .inc();
    }

    /// Counts client events acknowledged but not stored.
    pub fn events_dropped(&self, reason: &'static str, n: u64) {
        if n > 0 {
            self.events_dropped
                .get_or_create(&DroppedEventLabels { reason })
                .inc_by(n);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_numbers_map_to_closed_label_sets() {
        assert_eq!(event_type_label(3), "3");
        assert_eq!(event_type_label(800), "800");
        assert_eq!(event_type_label(54), "other");
        assert_eq!(event_type_label(u32::MAX), "other");
        assert_eq!(event_result_label(9), "9");
        assert_eq!(event_result_label(11), "other");
        assert_eq!(error_code_label(44), "44");
        assert_eq!(error_code_label(3112), "3112");
        assert_eq!(error_code_label(2000 + 404), "2404");
        assert_eq!(error_code_label(12_345), "other");
        assert_eq!(method_label(&axum::http::Method::PATCH), "PATCH");
        let odd = axum::http::Method::from_bytes(b"FROBNICATE").unwrap();
        assert_eq!(method_label(&odd), "other");
    }
}
