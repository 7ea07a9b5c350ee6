//! The end of a run: the summary (machines, requests, simulated and wall time, final counts, halt
//! and its reason) and the agreement check of the simulator's counts against the server's own
//! rollout status.

use std::fmt;
use std::time::Duration;

use crate::rollout::Halt;
use crate::rollout::status::RolloutStatus;

use super::fleet::{Counts, Totals};
use super::options::format_duration;

/// Why the run stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// Every machine runs the new version (and the run lingered).
    Completed,
    /// The rollout halted itself (and the run lingered).
    Halted,
    /// `--max-duration` was reached first.
    MaxDuration,
}

impl StopReason {
    /// Text form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Halted => "halted",
            Self::MaxDuration => "max duration reached",
        }
    }
}

/// One number the simulator and the server disagree on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// What was compared.
    pub what: &'static str,
    /// The simulator's count.
    pub simulator: u64,
    /// The server's count.
    pub server: u64,
}

/// A count as both sides see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compared {
    /// What is counted.
    pub what: &'static str,
    /// The simulator's count.
    pub simulator: u64,
    /// The server's count.
    pub server: u64,
}

/// The simulator's counts next to the server's, for the same instant: grant counts of the target
/// version (the rollout's own table: machines, by the state of their latest attempt) and instance
/// statuses (the lifecycle). A failed machine is not compared by status: once it checks in again
/// its status becomes `on_hold` or `granted`.
pub fn compare(counts: &Counts, st: &RolloutStatus, to_version: &str) -> Vec<Compared> {
    let status = |k: &str| st.by_status.get(k).copied().unwrap_or(0);
    let g = &st.grants;
    vec![
        Compared {
            what: "machines registered",
            simulator: counts.registered,
            server: st.machines,
        },
        Compared {
            what: "machines on the new version",
            simulator: counts.on_new(),
            server: st.by_version.get(to_version).copied().unwrap_or(0),
        },
        Compared {
            what: "machines that attempted",
            simulator: counts.attempted,
            server: g.attempts,
        },
        Compared {
            what: "grants in flight",
            simulator: counts.in_flight,
            server: g.in_flight,
        },
        Compared {
            what: "grants installed (awaiting reboot)",
            simulator: counts.installed,
            server: g.installed,
        },
        Compared {
            what: "grants complete",
            simulator: counts.complete,
            server: g.complete,
        },
        Compared {
            what: "grants failed or timed out (last try)",
            simulator: counts.failed,
            server: g.failed + g.timed_out,
        },
        Compared {
            what: "instances in flight",
            simulator: counts.in_flight,
            server: status("granted") + status("downloading") + status("downloaded"),
        },
        Compared {
            what: "instances installed",
            simulator: counts.installed,
            server: status("installed"),
        },
        Compared {
            what: "instances complete",
            simulator: counts.complete,
            server: status("complete"),
        },
    ]
}

/// Wall-clock latencies of a kind of request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Latency {
    /// Requests measured.
    pub count: u64,
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Slowest.
    pub max: Duration,
}

impl Latency {
    /// The percentiles of `times` (nearest rank).
    pub fn of(mut times: Vec<Duration>) -> Self {
        times.sort_unstable();
        let rank = |q: f64| {
            let i = ((times.len() as f64 * q).ceil() as usize).saturating_sub(1);
            times.get(i).copied().unwrap_or_default()
        };
        Self {
            count: times.len() as u64,
            p50: rank(0.50),
            p99: rank(0.99),
            max: times.last().copied().unwrap_or_default(),
        }
    }
}

/// The summary of a run.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Fleet size.
    pub machines: u64,
    /// Failure rate injected.
    pub failure_rate: f64,
    /// Requests sent.
    pub requests: u64,
    /// Simulated time covered.
    pub simulated_secs: u64,
    /// Wall-clock time of the drive.
    pub wall: Duration,
    /// Why it stopped.
    pub stop: StopReason,
    /// Final counts.
    pub counts: Counts,
    /// Final totals.
    pub totals: Totals,
    /// The halt as the server recorded it.
    pub halt: Option<Halt>,
    /// Hours after the start the halt happened.
    pub halt_hours: Option<f64>,
    /// Grants made after the halt (must be 0).
    pub grants_after_halt: u64,
    /// The server's final rollout status.
    pub server: RolloutStatus,
    /// Both sides' final counts.
    pub compared: Vec<Compared>,
    /// Simulated seconds until every machine had been granted the new version at least once.
    pub all_granted_secs: Option<u64>,
    /// Wall-clock latency of the update checks.
    pub check_latency: Latency,
}

impl Summary {
    /// Requests per wall-clock second.
    pub fn requests_per_sec(&self) -> f64 {
        let s = self.wall.as_secs_f64();
        if s > 0.0 {
            self.requests as f64 / s
        } else {
            0.0
        }
    }

    /// The counts both sides disagree on.
    pub fn mismatches(&self) -> Vec<Mismatch> {
        self.compared
            .iter()
            .filter(|c| c.simulator != c.server)
            .map(|c| Mismatch {
                what: c.what,
                simulator: c.simulator,
                server: c.server,
            })
            .collect()
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.counts;
        let t = &self.totals;
        writeln!(
            f,
            "machines {}  injected failure rate {:.2}%  stopped: {}",
            self.machines,
            self.failure_rate * 100.0,
            self.stop.as_str()
        )?;
        writeln!(
            f,
            "requests {}  simulated {}  wall {:.1} s  {:.0} req/s",
            self.requests,
            format_duration(self.simulated_secs),
            self.wall.as_secs_f64(),
            self.requests_per_sec()
        )?;
        writeln!(
            f,
            "final: waiting {}  in flight {}  installed {}  complete {}  failed {}  \
             (attempts {}, failed attempts {}, request errors {}, unexpected answers {})",
            c.waiting,
            c.in_flight,
            c.installed,
            c.complete,
            c.failed,
            t.grants,
            t.failures,
            t.transport_errors,
            t.unexpected
        )?;
        match self.all_granted_secs {
            Some(secs) => writeln!(
                f,
                "every machine granted after {} (simulated)",
                format_duration(secs)
            )?,
            None => writeln!(f, "not every machine was granted")?,
        }
        let l = &self.check_latency;
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        writeln!(
            f,
            "update checks: {}  wall-clock latency p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
            l.count,
            ms(l.p50),
            ms(l.p99),
            ms(l.max)
        )?;
        match (&self.halt, self.halt_hours) {
            (Some(h), Some(hours)) => writeln!(
                f,
                "halted: yes, after {hours:.1} h: {}  (grants after the halt: {})",
                h.reason, self.grants_after_halt
            )?,
            _ => writeln!(f, "halted: no")?,
        }
        writeln!(
            f,
            "server: effective {}%  failure rate {:.2}%  share on target {:.1}%",
            self.server.effective_percent,
            self.server.failure_rate * 100.0,
            self.server.share_complete * 100.0
        )?;
        writeln!(f, "{:<36} {:>10} {:>10}", "count", "simulator", "server")?;
        for r in &self.compared {
            let mark = if r.simulator == r.server {
                ""
            } else {
                "  MISMATCH"
            };
            writeln!(
                f,
                "{:<36} {:>10} {:>10}{mark}",
                r.what, r.simulator, r.server
            )?;
        }
        if let Some(e) = &t.last_error {
            writeln!(f, "last request error: {e}")?;
        }
        Ok(())
    }
}
