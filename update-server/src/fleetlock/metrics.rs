//! FleetLock metrics: requests by operation and result (grants, re-entrant grants, denials,
//! releases, refusals), and holders and slots per group.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::metrics::Metrics;

/// Labels of the request counter (bounded: fixed operations and results).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `pre_reboot` or `steady_state`.
    pub op: &'static str,
    /// `granted`, `already_held`, `denied`, `released`, `not_held`, or an error kind.
    pub result: &'static str,
}

/// Labels of the per-group gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabels {
    /// Reboot group.
    pub group: String,
}

/// The FleetLock metric families.
#[derive(Debug, Clone, Default)]
pub struct FleetLockMetrics {
    /// Requests by operation and result.
    pub requests: Family<RequestLabels, Counter>,
    /// Current holders per group (as last seen by this server).
    pub holders: Family<GroupLabels, Gauge>,
    /// Slots per group (as last seen by this server).
    pub slots: Family<GroupLabels, Gauge>,
}

impl FleetLockMetrics {
    /// Creates the families and registers them with the server's registry.
    pub fn register(metrics: &Metrics) -> Self {
        let m = Self::default();
        metrics.register(
            "fleetlock_requests",
            "FleetLock requests by operation and result",
            m.requests.clone(),
        );
        metrics.register(
            "fleetlock_holders",
            "Reboot slots held per FleetLock group",
            m.holders.clone(),
        );
        metrics.register(
            "fleetlock_slots",
            "Reboot slots per FleetLock group",
            m.slots.clone(),
        );
        m
    }

    /// Counts a request.
    pub fn request(&self, op: &'static str, result: &'static str) {
        self.requests
            .get_or_create(&RequestLabels { op, result })
            .inc();
    }

    /// Records a group's holders (and slots when known).
    pub fn group(&self, group: &str, holders: u32, slots: Option<u32>) {
        let labels = GroupLabels {
            group: group.to_owned(),
        };
        self.holders.get_or_create(&labels).set(i64::from(holders));
        if let Some(s) = slots {
            self.slots.get_or_create(&labels).set(i64::from(s));
        }
    }
}
