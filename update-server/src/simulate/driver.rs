//! The driver: moves simulated time in ticks, sends the requests of every machine whose action is
//! due with a bounded number in flight, feeds the answers back to the fleet, samples the fleet and
//! the server's rollout status, and stops once the rollout completed or halted and stayed so for
//! `--linger` (or at `--max-duration`).
//!
//! In accelerated mode the clock jumps straight to the next tick that has work (an action or a
//! sample), so idle stretches cost nothing; every request of a tick sees the same server time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use tokio::task::JoinSet;

use super::fleet::Fleet;
use super::machine::{Answer, Model, Step};
use super::options::SimulateArgs;
use super::report::{Latency, StopReason};
use super::sample::{Sample, ServerPoint};
use super::setup::Env;
use super::wire::{Offered, Wire};
use crate::rollout::Halt;
use crate::rollout::status::RolloutStatus;

/// The record of a run.
#[derive(Debug)]
pub struct Run {
    /// The fleet at the end.
    pub fleet: Fleet,
    /// The time series.
    pub samples: Vec<Sample>,
    /// The halt, as the server recorded it.
    pub halt: Option<Halt>,
    /// The server's status at the end.
    pub last_status: RolloutStatus,
    /// Why the run stopped.
    pub stop: StopReason,
    /// Simulated seconds covered.
    pub simulated_secs: u64,
    /// Wall-clock time of the drive.
    pub wall: std::time::Duration,
    /// Simulated seconds after the start until every machine had been granted the new version
    /// at least once (`None`: not every machine was).
    pub all_granted_secs: Option<u64>,
    /// Wall-clock time of every update check answered (routine checks and the first check after
    /// a reboot; event reports aside).
    pub check_latency: Latency,
}

/// The machine model of the arguments.
pub fn model(args: &SimulateArgs) -> Model {
    Model {
        seed: args.seed,
        failure_rate: args.failure_rate,
        to_version: args.to_version.clone(),
        check_interval: args.check_interval,
        jitter: args.jitter,
        download: args.download_time,
        install: args.install_time,
        reboot: args.reboot_delay,
        retry: 60,
    }
}

/// A request answered: machine, step, answer, the payload offered, requests sent, and how long
/// the update request took.
type Done = (u32, Step, Answer, Option<Offered>, u64, Duration);

/// Sends every due action, at most `parallel` at once; returns the answers.
async fn send_all(
    wire: &Arc<Wire>,
    due: Vec<(u32, Step)>,
    parallel: usize,
    offered: Option<&Offered>,
) -> anyhow::Result<Vec<Done>> {
    let mut out = Vec::with_capacity(due.len());
    let mut set = JoinSet::new();
    let mut pending = due.into_iter();
    loop {
        while set.len() < parallel {
            let Some((id, step)) = pending.next() else {
                break;
            };
            let w = Arc::clone(wire);
            let off = match step {
                Step::DownloadFinished => offered.cloned(),
                _ => None,
            };
            set.spawn(async move {
                let sent = Instant::now();
                let (answer, o) = w.send(id, step, off.as_ref()).await;
                let took = sent.elapsed();
                let requests = 1 + u64::from(off.is_some());
                (id, step, answer, o, requests, took)
            });
        }
        match set.join_next().await {
            Some(Ok(done)) => out.push(done),
            Some(Err(e)) => bail!("a simulated machine's task failed: {e}"),
            None => break,
        }
    }
    Ok(out)
}

/// Registers every machine (one ping each, at most `parallel` in flight) before the rollout
/// begins, as a real fleet is known to its server before a release is rolled out: the machines
/// are established, not new to the rollout (which would weigh them less for auto-halt and grant
/// them at a bounded rate per network). Returns the requests sent.
async fn register_all(wire: &Arc<Wire>, machines: u32, parallel: usize) -> anyhow::Result<u64> {
    let mut set = JoinSet::new();
    let mut pending = 0..machines;
    loop {
        while set.len() < parallel {
            let Some(id) = pending.next() else {
                break;
            };
            let w = Arc::clone(wire);
            set.spawn(async move { w.register(id).await });
        }
        match set.join_next().await {
            Some(Ok(Ok(()))) => {}
            Some(Ok(Err(e))) => bail!("registering a simulated machine failed: {e}"),
            Some(Err(e)) => bail!("a simulated machine's task failed: {e}"),
            None => break,
        }
    }
    Ok(u64::from(machines))
}

/// Runs the simulation against a provisioned server.
pub async fn drive(args: &SimulateArgs, env: &Env) -> anyhow::Result<Run> {
    let m = model(args);
    let wire = Arc::new(Wire::new(
        &env.base_url,
        &env.app_id,
        &env.group,
        &args.from_version,
        &args.to_version,
        args.parallel,
    )?);
    let start = env.start;
    let tick = if env.clock.is_accelerated() {
        i64::try_from(args.tick).unwrap_or(60)
    } else {
        1
    };
    let sample_every = i64::try_from(args.sample_every).unwrap_or(1800);
    let linger = i64::try_from(args.linger).unwrap_or(0);
    let max_end = start.saturating_add(i64::try_from(args.max_duration).unwrap_or(i64::MAX));
    // Never stop before every machine had its first check (so all are registered and every one
    // checked in at least once after an early halt).
    let first_round =
        start.saturating_add((args.check_interval as f64 * (1.0 + args.jitter)) as i64 + tick);
    let n = u64::from(args.machines);

    let mut fleet = Fleet::new(args.machines, start, &m);
    fleet.totals.requests += register_all(&wire, args.machines, args.parallel).await?;
    // The rollout's first grant comes a second after the registrations.
    env.clock
        .advance_to(env.clock.now().saturating_add(1))
        .await;
    let mut samples = Vec::new();
    let mut offered: Option<Offered> = None;
    let mut halt: Option<Halt> = None;
    let mut settled: Option<(i64, StopReason)> = None;
    let mut next_sample = start;
    let mut check_times = Vec::new();
    let mut all_granted_at = None;
    let wall = Instant::now();
    let mut now = env.clock.now();
    let (last_status, stop) = loop {
        let due = fleet.pop_due(now);
        let download = if args.download {
            offered.as_ref()
        } else {
            None
        };
        for (id, step, answer, o, requests, took) in
            send_all(&wire, due, args.parallel, download).await?
        {
            fleet.totals.requests += requests;
            if matches!(step, Step::Check | Step::CheckNew | Step::PostReboot) {
                check_times.push(took);
            }
            if offered.is_none() {
                offered = o;
            }
            fleet.apply(id, step, &answer, now, &m);
        }

        // Every machine granted at least once (counted only once enough grants were made).
        if all_granted_at.is_none() && fleet.totals.grants >= n && fleet.counts().attempted == n {
            all_granted_at = Some(now);
        }

        if now >= next_sample || now >= max_end {
            while next_sample <= now {
                next_sample += sample_every;
            }
            let st = env.status().await?;
            let counts = fleet.counts();
            let s = Sample {
                t: now - start,
                at: now,
                counts,
                grants: fleet.totals.grants,
                failures: fleet.totals.failures,
                requests: fleet.totals.requests,
                server: ServerPoint::of(&st, &args.to_version),
            };
            if args.progress {
                crate::outln!(
                    "{:7.1} h  ramp {:5.1}%  old {:>7}  new {:>7}  in flight {:>6}  installed {:>6}  \
                     failed {:>5}  attempts {:>7}  requests {:>9}{}",
                    s.hours(),
                    s.server.effective_percent,
                    counts.on_old(),
                    counts.on_new(),
                    counts.in_flight,
                    counts.installed,
                    counts.failed,
                    s.grants,
                    s.requests,
                    if s.server.halted { "  HALTED" } else { "" }
                );
            }
            samples.push(s);
            if halt.is_none() {
                halt.clone_from(&st.halted);
            }
            if settled.is_none() {
                if st.halted.is_some() {
                    settled = Some((now, StopReason::Halted));
                } else if counts.complete == n && st.effective_percent >= 100.0 {
                    settled = Some((now, StopReason::Completed));
                }
            }
            match settled {
                Some((at, why)) if now >= at.saturating_add(linger).max(first_round) => {
                    break (st, why);
                }
                _ if now >= max_end => break (st, StopReason::MaxDuration),
                _ => {}
            }
        }

        let target = fleet
            .next_due()
            .unwrap_or(i64::MAX)
            .min(next_sample)
            .min(max_end);
        // The next tick boundary at or after the target, at least one tick on.
        let k = (target - start + tick - 1).div_euclid(tick);
        let next = (start + k * tick).max(now + tick);
        env.clock.advance_to(next).await;
        now = if env.clock.is_accelerated() {
            next
        } else {
            env.clock.now()
        };
    };
    Ok(Run {
        simulated_secs: u64::try_from(now - start).unwrap_or(0),
        fleet,
        samples,
        halt,
        last_status,
        stop,
        wall: wall.elapsed(),
        all_granted_secs: all_granted_at.map(|t| u64::try_from(t - start).unwrap_or(0)),
        check_latency: Latency::of(check_times),
    })
}
