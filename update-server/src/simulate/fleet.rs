//! The simulated fleet: every machine's state, a time-ordered queue of the next action of each,
//! and the totals the summary and the agreement check read. Pure bookkeeping; the driver pops due
//! actions, sends them and feeds the answers back.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::machine::{Answer, Effect, Machine, Model, Step, Tally};

/// Counts of the fleet at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Machines the server has answered at least once.
    pub registered: u64,
    /// Checking in on the old version, not granted.
    pub waiting: u64,
    /// Between grant and installed.
    pub in_flight: u64,
    /// Installed, awaiting reboot.
    pub installed: u64,
    /// On the new version.
    pub complete: u64,
    /// Last attempt failed.
    pub failed: u64,
    /// Machines granted the new version at least once, whatever came of it (the server's
    /// `attempts`, which counts machines, not grants).
    pub attempted: u64,
}

impl Counts {
    /// Machines on the old version.
    pub fn on_old(&self) -> u64 {
        self.waiting + self.in_flight + self.installed + self.failed
    }
    /// Machines on the new version.
    pub fn on_new(&self) -> u64 {
        self.complete
    }
}

/// Running totals.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    /// Requests sent (Omaha and downloads).
    pub requests: u64,
    /// Attempts granted.
    pub grants: u64,
    /// Attempts that ended in 3/0.
    pub failures: u64,
    /// Machines that rebooted into the new version.
    pub completions: u64,
    /// Requests that failed and were retried.
    pub transport_errors: u64,
    /// Answers a correct server would not give.
    pub unexpected: u64,
    /// Simulated time of every grant, in order.
    pub grant_times: Vec<i64>,
    /// The last transport error seen, for the summary.
    pub last_error: Option<String>,
}

/// The simulated fleet.
#[derive(Debug)]
pub struct Fleet {
    machines: Vec<Machine>,
    queue: BinaryHeap<Reverse<(i64, u32)>>,
    /// Running totals.
    pub totals: Totals,
}

impl Fleet {
    /// `n` machines on the old version, their first checks spread over one check interval
    /// after `start`.
    pub fn new(n: u32, start: i64, m: &Model) -> Self {
        let machines = vec![Machine::new(); n as usize];
        let queue = (0..n)
            .map(|id| Reverse((start + Machine::first_check(id, m), id)))
            .collect();
        Self {
            machines,
            queue,
            totals: Totals::default(),
        }
    }

    /// Number of machines.
    pub fn len(&self) -> usize {
        self.machines.len()
    }

    /// True without machines.
    pub fn is_empty(&self) -> bool {
        self.machines.is_empty()
    }

    /// When the earliest pending action is due.
    pub fn next_due(&self) -> Option<i64> {
        self.queue.peek().map(|Reverse((t, _))| *t)
    }

    /// Removes and returns every action due at or before `now`, with the machine's step.
    pub fn pop_due(&mut self, now: i64) -> Vec<(u32, Step)> {
        let mut out = Vec::new();
        while let Some(Reverse((t, id))) = self.queue.peek().copied() {
            if t > now {
                break;
            }
            self.queue.pop();
            if let Some(mc) = self.machines.get(id as usize) {
                out.push((id, mc.step()));
            }
        }
        out
    }

    /// Feeds the answer to a popped action back and schedules the machine's next action.
    pub fn apply(&mut self, id: u32, step: Step, answer: &Answer, now: i64, m: &Model) {
        let Some(mc) = self.machines.get_mut(id as usize) else {
            return;
        };
        let (next, effect) = mc.on_answer(id, step, answer, now, m);
        let t = &mut self.totals;
        match effect {
            Effect::None => {}
            Effect::Granted => {
                t.grants += 1;
                t.grant_times.push(now);
            }
            Effect::Failed => t.failures += 1,
            Effect::Completed => t.completions += 1,
            Effect::TransportError => {
                t.transport_errors += 1;
                if let Answer::Failed(e) = answer {
                    t.last_error = Some(e.clone());
                }
            }
            Effect::Unexpected => t.unexpected += 1,
        }
        self.queue.push(Reverse((next.max(now + 1), id)));
    }

    /// Counts by state now.
    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for m in &self.machines {
            c.registered += u64::from(m.seen());
            c.attempted += u64::from(m.attempts() > 0);
            match m.phase().tally() {
                Tally::Waiting => c.waiting += 1,
                Tally::InFlight => c.in_flight += 1,
                Tally::Installed => c.installed += 1,
                Tally::Complete => c.complete += 1,
                Tally::Failed => c.failed += 1,
            }
        }
        c
    }

    /// Grants made strictly after `t`.
    pub fn grants_after(&self, t: i64) -> u64 {
        let first = self.totals.grant_times.partition_point(|g| *g <= t);
        (self.totals.grant_times.len() - first) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::super::machine::Phase;
    use super::*;

    fn model() -> Model {
        Model {
            seed: 1,
            failure_rate: 0.0,
            to_version: "2".into(),
            check_interval: 1000,
            jitter: 0.0,
            download: 10,
            install: 10,
            reboot: 10,
            retry: 5,
        }
    }

    #[test]
    fn queue_pops_in_time_order_and_tallies_follow_answers() {
        let m = model();
        let mut f = Fleet::new(50, 100, &m);
        assert_eq!(f.len(), 50);
        let first = f.next_due().unwrap();
        assert!((100..1100).contains(&first));
        let due = f.pop_due(1100);
        assert_eq!(due.len(), 50, "every first check falls within one interval");
        assert!(f.pop_due(i64::MAX).is_empty());
        for (id, step) in due {
            let a = if id < 10 {
                Answer::Update {
                    version: "2".into(),
                }
            } else {
                Answer::NoUpdate
            };
            f.apply(id, step, &a, 1100, &m);
        }
        let c = f.counts();
        assert_eq!(
            (c.in_flight, c.waiting, c.on_old(), c.on_new()),
            (10, 40, 50, 0)
        );
        assert_eq!(f.totals.grants, 10);
        assert_eq!(f.grants_after(1099), 10);
        assert_eq!(f.grants_after(1100), 0);
        // The granted ones act next (13/1 within a minute), before the others' next check.
        let next = f.pop_due(1200);
        assert_eq!(next.len(), 10);
        assert!(next.iter().all(|(_, s)| *s == Step::DownloadStarted));
    }

    #[test]
    fn a_whole_update_ends_complete() {
        let m = model();
        let mut f = Fleet::new(1, 0, &m);
        let mut now = 0;
        for _ in 0..8 {
            now = f.next_due().unwrap();
            for (id, step) in f.pop_due(now) {
                let a = match step {
                    Step::Check => Answer::Update {
                        version: "2".into(),
                    },
                    Step::PostReboot | Step::CheckNew => Answer::NoUpdate,
                    _ => Answer::Ack,
                };
                f.apply(id, step, &a, now, &m);
            }
            if f.counts().complete == 1 {
                break;
            }
        }
        assert_eq!(f.counts().complete, 1, "at {now}");
        assert_eq!(f.machines[0].phase(), Phase::Complete);
        assert_eq!(f.totals.completions, 1);
    }
}
