//! `update-server simulate` options: the command line ([`SimulateArgs`]) and its validation.
//! Durations are written `90s`, `30m`, `12h`, `2d` (a bare number is seconds); in accelerated
//! mode they are simulated time, in real-time mode wall-clock time.

use std::path::PathBuf;

use anyhow::{Context as _, bail, ensure};

/// Default Omaha track / group name of the simulated fleet.
pub const DEFAULT_GROUP: &str = "simulated";

/// `update-server simulate` options.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "simulate")]
pub struct SimulateArgs {
    /// Number of simulated machines.
    #[arg(long, default_value_t = 1000)]
    pub machines: u32,
    /// Share (0..=1) of update attempts that fail (3/0 with an error code).
    #[arg(long, default_value_t = 0.0)]
    pub failure_rate: f64,
    /// Ramp percentages: the first from the start, then one step per further value.
    #[arg(long, value_delimiter = ',', default_value = "1,5,20,50,100")]
    pub ramp: Vec<f64>,
    /// Time between two ramp steps.
    #[arg(long, default_value = "12h", value_parser = parse_duration)]
    pub step_interval: u64,
    /// Auto-halt when failures / attempts exceeds this (0..=1).
    #[arg(long, default_value_t = 0.01)]
    pub halt_rate: f64,
    /// ... after at least this many attempts.
    #[arg(long, default_value_t = 200)]
    pub halt_min_attempts: u32,
    /// No auto-halt in the policy.
    #[arg(long)]
    pub no_auto_halt: bool,
    /// Concurrency limit of the policy (machines between grant and installed).
    #[arg(long)]
    pub concurrency_limit: Option<u32>,
    /// Update timeout of the policy (a grant without progress this long counts as failed).
    #[arg(long, value_parser = parse_duration)]
    pub update_timeout: Option<u64>,
    /// Mean time between two update checks of a machine.
    #[arg(long, default_value = "6h", value_parser = parse_duration)]
    pub check_interval: u64,
    /// Jitter of the check interval, as a fraction (0.25: ±25 %).
    #[arg(long, default_value_t = 0.25)]
    pub jitter: f64,
    /// Mean download time (±50 %) between 13/1 and 14/1.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub download_time: u64,
    /// Mean install time (±50 %) between 14/1 and 3/1.
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    pub install_time: u64,
    /// Mean delay (±50 %) between 3/1 (installed) and the post-reboot check (reboot window, lock).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub reboot_delay: u64,
    /// Also download the payload from its codebase URL and check its size and SHA-256.
    #[arg(long)]
    pub download: bool,
    /// Simulated time per tick (accelerated mode): actions due within a tick run at its end.
    #[arg(long, default_value = "1m", value_parser = parse_duration)]
    pub tick: u64,
    /// Time between two CSV samples (each also reads the server's rollout status).
    #[arg(long, default_value = "15m", value_parser = parse_duration)]
    pub sample_every: u64,
    /// Keep going this long after the rollout completed or halted.
    #[arg(long, default_value = "3h", value_parser = parse_duration)]
    pub linger: u64,
    /// Stop after this much time whatever the rollout does.
    #[arg(long, default_value = "21d", value_parser = parse_duration)]
    pub max_duration: u64,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64)]
    pub parallel: usize,
    /// Real-time mode: the system clock, durations are wall-clock time.
    #[arg(long)]
    pub real_time: bool,
    /// Drive an external server at this URL instead of an in-process one (implies --real-time).
    #[arg(long, requires = "token_file")]
    pub server: Option<String>,
    /// File holding the external server's admin token.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Ed25519 signing key (PEM) the external server trusts [default: a throwaway key].
    #[arg(long)]
    pub signing_key: Option<PathBuf>,
    /// Data directory of the in-process server [default: a temporary directory, on /dev/shm when
    /// it exists].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Version the machines run at the start.
    #[arg(long, default_value = "4081.2.0")]
    pub from_version: String,
    /// Version rolled out.
    #[arg(long, default_value = "4152.2.0")]
    pub to_version: String,
    /// Application id [default: derived from the seed].
    #[arg(long)]
    pub app: Option<String>,
    /// Group name and Omaha track.
    #[arg(long, default_value = DEFAULT_GROUP)]
    pub group: String,
    /// Seed of every random draw (jitter, failures): equal seeds give equal runs.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// CSV time series output.
    #[arg(long, default_value = "simulation.csv")]
    pub csv: PathBuf,
    /// SVG chart output.
    #[arg(long, default_value = "simulation.svg")]
    pub chart: PathBuf,
    /// Chart title [default: machines, failure rate and ramp].
    #[arg(long)]
    pub title: Option<String>,
    /// Print a progress line at every sample.
    #[arg(long)]
    pub progress: bool,
}

impl SimulateArgs {
    /// Checks ranges and combinations; external servers imply real time.
    pub fn validated(mut self) -> anyhow::Result<Self> {
        ensure!(self.machines > 0, "--machines must be at least 1");
        ensure!(
            (0.0..=1.0).contains(&self.failure_rate),
            "--failure-rate {} is outside 0..=1",
            self.failure_rate
        );
        ensure!(
            (0.0..=1.0).contains(&self.halt_rate),
            "--halt-rate {} is outside 0..=1",
            self.halt_rate
        );
        ensure!(
            (0.0..=1.0).contains(&self.jitter),
            "--jitter {} is outside 0..=1",
            self.jitter
        );
        ensure!(
            !self.ramp.is_empty(),
            "--ramp needs at least one percentage"
        );
        ensure!(
            self.ramp.iter().all(|p| (0.0..=100.0).contains(p)),
            "--ramp percentages must be within 0..=100"
        );
        ensure!(
            self.ramp.last().is_some_and(|p| *p >= 100.0),
            "--ramp must end at 100 for the rollout to complete"
        );
        for (name, v) in [
            ("--step-interval", self.step_interval),
            ("--check-interval", self.check_interval),
            ("--tick", self.tick),
            ("--sample-every", self.sample_every),
            ("--max-duration", self.max_duration),
        ] {
            ensure!(v > 0, "{name} must be positive");
        }
        ensure!(
            (1..=4096).contains(&self.parallel),
            "--parallel must be within 1..=4096"
        );
        if self.server.is_some() {
            self.real_time = true;
        }
        ensure!(
            self.from_version != self.to_version,
            "--from-version and --to-version are equal"
        );
        if crate::version::compare(&self.from_version, &self.to_version).is_ge() {
            bail!(
                "--to-version {} must be newer than --from-version {}",
                self.to_version,
                self.from_version
            );
        }
        Ok(self)
    }

    /// The application id: `--app`, else a UUID derived from the seed (so the machines' rollout
    /// buckets, which hash the app id, are the same in every run with that seed).
    pub fn app_id(&self) -> String {
        if let Some(a) = &self.app {
            return crate::model::normalize_appid(a);
        }
        let h = |salt: u64| super::random::hash(self.seed, u32::MAX, 0, salt);
        let hex = format!("{:016x}{:016x}", h(1), h(2));
        format!(
            "{}-{}-4{}-8{}-{}",
            &hex[..8],
            &hex[8..12],
            &hex[13..16],
            &hex[17..20],
            &hex[20..32]
        )
    }

    /// The admin token of an external server, read from `--token-file`.
    pub fn token(&self) -> anyhow::Result<Option<String>> {
        match &self.token_file {
            None => Ok(None),
            Some(p) => {
                let t = std::fs::read_to_string(p)
                    .with_context(|| format!("reading --token-file {}", p.display()))?;
                let t = t.trim().to_owned();
                ensure!(!t.is_empty(), "--token-file {} is empty", p.display());
                Ok(Some(t))
            }
        }
    }
}

/// Parses `90s`, `30m`, `12h`, `2d`, `1w` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 90s, 30m, 12h, 2d)"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        other => {
            return Err(format!(
                "unknown duration unit {other:?} in {s:?} (s, m, h, d, w)"
            ));
        }
    };
    n.checked_mul(mult)
        .filter(|v| *v <= 10 * 365 * 86_400)
        .ok_or_else(|| format!("duration {s:?} is longer than ten years"))
}

/// Formats seconds as `2d 3h 4m` (for summaries).
pub fn format_duration(secs: u64) -> String {
    let (d, h, m, s) = (
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    let mut out = Vec::new();
    if d > 0 {
        out.push(format!("{d}d"));
    }
    if h > 0 {
        out.push(format!("{h}h"));
    }
    if m > 0 {
        out.push(format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push(format!("{s}s"));
    }
    out.join(" ")
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[test]
    fn durations_parse_and_format() {
        assert_eq!(parse_duration("90"), Ok(90));
        assert_eq!(parse_duration("90s"), Ok(90));
        assert_eq!(parse_duration("30m"), Ok(1800));
        assert_eq!(parse_duration("12h"), Ok(43_200));
        assert_eq!(parse_duration("2d"), Ok(172_800));
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("5y").is_err());
        assert!(parse_duration("99999999999w").is_err());
        assert_eq!(format_duration(93_784), "1d 2h 3m 4s");
        assert_eq!(format_duration(0), "0s");
    }

    #[test]
    fn validation_rejects_bad_combinations() {
        let parse = |extra: &[&str]| {
            let mut v = vec!["simulate"];
            v.extend_from_slice(extra);
            SimulateArgs::try_parse_from(v).unwrap().validated()
        };
        assert!(parse(&[]).is_ok());
        assert!(parse(&["--failure-rate", "1.5"]).is_err());
        assert!(parse(&["--ramp", "1,5,50"]).is_err());
        assert!(parse(&["--from-version", "2.0.0", "--to-version", "1.0.0"]).is_err());
        assert!(parse(&["--machines", "0"]).is_err());
        let ext = SimulateArgs::try_parse_from([
            "simulate",
            "--server",
            "http://x",
            "--token-file",
            "/t",
        ])
        .unwrap()
        .validated()
        .unwrap();
        assert!(ext.real_time, "an external server implies real time");
        assert!(SimulateArgs::try_parse_from(["simulate", "--server", "http://x"]).is_err());
    }

    #[test]
    fn app_id_is_a_stable_uuid_per_seed() {
        let a = SimulateArgs::try_parse_from(["simulate", "--seed", "7"]).unwrap();
        let b = SimulateArgs::try_parse_from(["simulate", "--seed", "8"]).unwrap();
        assert_eq!(a.app_id(), a.clone().app_id());
        assert_ne!(a.app_id(), b.app_id());
        assert_eq!(a.app_id().len(), 36);
        assert_eq!(&a.app_id()[14..15], "4");
    }
}
