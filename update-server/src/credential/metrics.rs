//! Machine-credential metrics: Omaha requests by credential outcome (a closed label set, see
//! [`super::Outcome`]).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use super::Outcome;
use crate::metrics::Metrics;

/// Labels of the request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// [`Outcome::as_str`].
    pub outcome: &'static str,
}

/// The machine-credential metric families.
#[derive(Debug, Clone, Default)]
pub struct CredentialMetrics {
    /// Omaha requests by credential outcome.
    pub requests: Family<OutcomeLabels, Counter>,
    /// App check-ins in groups that require a credential, answered without being recorded.
    pub ignored: Counter,
}

impl CredentialMetrics {
    /// Creates the families and registers them with the server's registry.
    pub fn register(metrics: &Metrics) -> Self {
        let m = Self::default();
        metrics.register(
            "machine_credential_requests",
            "Omaha requests by machine-credential outcome (none, valid, unenrolled, \
             bad_signature, key_mismatch, stale)",
            m.requests.clone(),
        );
        metrics.register(
            "machine_credential_ignored_checkins",
            "App check-ins without a valid machine credential in groups that require one \
             (answered noupdate; events acknowledged, not recorded)",
            m.ignored.clone(),
        );
        m
    }

    /// Counts a request.
    pub fn request(&self, outcome: Outcome) {
        self.requests
            .get_or_create(&OutcomeLabels {
                outcome: outcome.as_str(),
            })
            .inc();
    }
}
