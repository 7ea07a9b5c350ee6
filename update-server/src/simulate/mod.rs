//! `update-server simulate`: a fleet simulator that drives N simulated machines against a real
//! server over HTTP, to see a staged rollout (ramp, auto-halt, limits) play out on a large fleet.
//!
//! Map: [`options`] (command line), [`setup`] (in-process or external server, provisioned through
//! the admin API), [`machine`] (one machine's update state machine, pure), [`fleet`] (all
//! machines and their action queue), [`random`] (seeded, order-independent draws), [`wire`]
//! (Omaha requests and answers), [`driver`] (ticks, bounded concurrency, sampling, stopping),
//! [`sample`], [`csv`] and [`chart`] (outputs), [`report`] (summary and the agreement check
//! against the server's own rollout status). See `docs/usage/rollouts.md`, "Fleet simulator".

pub mod chart;
pub mod csv;
pub mod driver;
pub mod fleet;
pub mod machine;
pub mod options;
pub mod random;
pub mod report;
pub mod sample;
pub mod setup;
pub mod wire;

pub use options::SimulateArgs;
pub use report::{Latency, Mismatch, StopReason, Summary};

use anyhow::Context as _;

use sample::Sample;

/// What a run produced.
#[derive(Debug)]
pub struct Outcome {
    /// The summary (printed at the end).
    pub summary: Summary,
    /// The time series (written as CSV).
    pub samples: Vec<Sample>,
}

fn default_title(args: &SimulateArgs) -> String {
    let ramp: Vec<String> = args.ramp.iter().map(|p| format!("{p}")).collect();
    format!(
        "{} machines, {}% failures: ramp {}% every {}",
        args.machines,
        args.failure_rate * 100.0,
        ramp.join(" → "),
        options::format_duration(args.step_interval)
    )
}

/// Runs a simulation: starts or connects to the server, provisions the rollout, drives the fleet,
/// writes the CSV and the chart, and returns the summary (which it does not print).
pub async fn simulate(args: SimulateArgs) -> anyhow::Result<Outcome> {
    let args = args.validated()?;
    let env = setup::Env::start(&args).await?;
    let run = driver::drive(&args, &env).await;
    let run = match run {
        Ok(r) => r,
        Err(e) => {
            let _ = env.shutdown().await;
            return Err(e);
        }
    };
    let halt_hours = run
        .halt
        .as_ref()
        .map(|h| (h.at - env.start) as f64 / 3600.0);
    let grants_after_halt = run
        .halt
        .as_ref()
        .map_or(0, |h| run.fleet.grants_after(h.at));
    let counts = run.fleet.counts();
    let compared = report::compare(&counts, &run.last_status, &args.to_version);
    csv::write(
        &args.csv,
        &args.from_version,
        &args.to_version,
        &run.samples,
    )?;
    let info = chart::ChartInfo {
        title: args.title.clone().unwrap_or_else(|| default_title(&args)),
        from_version: args.from_version.clone(),
        to_version: args.to_version.clone(),
        machines: u64::from(args.machines),
        halt_hours,
    };
    chart::render(&args.chart, &run.samples, &info)
        .with_context(|| format!("writing {}", args.chart.display()))?;
    env.shutdown().await?;
    Ok(Outcome {
        summary: Summary {
            machines: u64::from(args.machines),
            failure_rate: args.failure_rate,
            requests: run.fleet.totals.requests,
            simulated_secs: run.simulated_secs,
            wall: run.wall,
            stop: run.stop,
            counts,
            totals: run.fleet.totals.clone(),
            halt: run.halt,
            halt_hours,
            grants_after_halt,
            server: run.last_status,
            compared,
            all_granted_secs: run.all_granted_secs,
            check_latency: run.check_latency,
        },
        samples: run.samples,
    })
}

/// `update-server simulate`: runs, prints the summary, and fails when the simulator and the
/// server disagree or a grant was made after a halt.
pub async fn run(args: SimulateArgs) -> anyhow::Result<()> {
    let (csv, chart) = (args.csv.clone(), args.chart.clone());
    let out = simulate(args).await?;
    crate::out!("{}", out.summary);
    crate::outln!("wrote {} and {}", csv.display(), chart.display());
    let bad = out.summary.mismatches();
    if !bad.is_empty() {
        anyhow::bail!(
            "the simulator and the server disagree on {} count(s): {}",
            bad.len(),
            bad.iter().map(|m| m.what).collect::<Vec<_>>().join(", ")
        );
    }
    if out.summary.grants_after_halt > 0 {
        anyhow::bail!(
            "{} attempts were granted after the rollout halted",
            out.summary.grants_after_halt
        );
    }
    Ok(())
}
