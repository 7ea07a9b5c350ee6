//! The server side of a simulation: an in-process server (temporary SQLite store, a
//! [`ManualClock`] shared with the simulator in accelerated mode) or an external one, and the
//! rollout set up through the admin API over HTTP as an operator would: application, signed
//! release (a throwaway key whose public half the server trusts; the server never holds a private
//! key), channel, and a group with the rollout policy.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use super::options::SimulateArgs;
use crate::cli::ApiClient;
use crate::clock::{Clock, ManualClock, SystemClock};
use crate::config::Settings;
use crate::rollout::RolloutEngine;
use crate::rollout::status::RolloutStatus;
use crate::server::{RunningServer, start_with};

/// Size of the simulated release's image.
const IMAGE_SIZE: usize = 64 * 1024;

/// The simulation's time source.
#[derive(Debug, Clone)]
pub enum SimClock {
    /// Accelerated: a manual clock the in-process server reads too.
    Manual(Arc<ManualClock>),
    /// Real time: the system clock.
    System,
}

impl SimClock {
    /// Now, in Unix seconds.
    pub fn now(&self) -> i64 {
        match self {
            Self::Manual(c) => c.now(),
            Self::System => SystemClock.now(),
        }
    }

    /// Moves to `t`: advances the manual clock, or sleeps until the system clock reaches `t`.
    pub async fn advance_to(&self, t: i64) {
        match self {
            Self::Manual(c) => {
                let now = c.now();
                if t > now {
                    c.advance(t - now);
                }
            }
            Self::System => loop {
                let now = SystemClock.now();
                if now >= t {
                    break;
                }
                let secs = u64::try_from(t - now).unwrap_or(1);
                tokio::time::sleep(Duration::from_secs(secs)).await;
            },
        }
    }

    /// True for accelerated mode.
    pub fn is_accelerated(&self) -> bool {
        matches!(self, Self::Manual(_))
    }
}

/// The server under simulation, provisioned.
#[derive(Debug)]
pub struct Env {
    /// Admin API client.
    pub admin: ApiClient,
    /// Server base URL (Omaha and downloads).
    pub base_url: String,
    /// Application id.
    pub app_id: String,
    /// Group name (and track).
    pub group: String,
    /// Time source.
    pub clock: SimClock,
    /// Simulated start (the ramp's `start_at`).
    pub start: i64,
    /// Where the in-process server keeps its data, if it is in-process.
    pub data_dir: Option<PathBuf>,
    server: Option<RunningServer>,
    _tmp: Option<tempfile::TempDir>,
}

fn temp_root(args: &SimulateArgs) -> anyhow::Result<tempfile::TempDir> {
    let b = tempfile::Builder::new().prefix("platte-sim-").clone();
    let shm = Path::new("/dev/shm");
    let dir = match &args.data_dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            b.tempdir_in(d)
        }
        None if shm.is_dir() => b.tempdir_in(shm).or_else(|_| b.tempdir()),
        None => b.tempdir(),
    };
    dir.context("creating the simulation's temporary directory")
}

/// The rollout policy of the simulated group.
pub fn policy(args: &SimulateArgs, start: i64) -> Value {
    let first = args.ramp.first().copied().unwrap_or(100.0);
    let steps: Vec<Value> = args
        .ramp
        .iter()
        .skip(1)
        .enumerate()
        .map(|(i, p)| json!({"after_secs": (i as u64 + 1) * args.step_interval, "percent": p}))
        .collect();
    let mut p = json!({
        "ramp": {"start_at": start, "start_percent": first, "steps": steps},
    });
    if !args.no_auto_halt {
        p["auto_halt"] =
            json!({"max_failure_rate": args.halt_rate, "min_attempts": args.halt_min_attempts});
    }
    if let Some(c) = args.concurrency_limit {
        p["concurrency_limit"] = json!(c);
    }
    if let Some(t) = args.update_timeout {
        p["update_timeout_secs"] = json!(t);
    }
    p
}

fn image(seed: u64) -> Vec<u8> {
    (0..IMAGE_SIZE)
        .map(|i| (super::random::hash(seed, i as u32 / 4096, 0, 3) >> ((i % 8) * 8)) as u8)
        .collect()
}

impl Env {
    /// Starts (or connects to) the server; does not provision yet.
    pub async fn start(args: &SimulateArgs) -> anyhow::Result<Self> {
        let key = match &args.signing_key {
            Some(p) => payloads::keys::load_signing_key(p)
                .with_context(|| format!("loading --signing-key {}", p.display()))?,
            None => payloads::keys::generate_signing_key(),
        };
        let tmp = temp_root(args)?;
        let payload_path = tmp.path().join("simulated_update.payload");
        if let Some(url) = &args.server {
            let token = args.token()?;
            let env = Self {
                admin: ApiClient::new(url, token.as_deref())?,
                base_url: url.trim_end_matches('/').to_owned(),
                app_id: args.app_id(),
                group: args.group.clone(),
                clock: SimClock::System,
                start: SystemClock.now(),
                data_dir: None,
                server: None,
                _tmp: Some(tmp),
            };
            env.provision(args, &key, &payload_path).await?;
            return Ok(env);
        }
        let keys = tmp.path().join("keys");
        std::fs::create_dir_all(&keys).with_context(|| format!("creating {}", keys.display()))?;
        std::fs::write(
            keys.join("simulator.pub"),
            payloads::keys::public_key_pem(&key.verifying_key()),
        )
        .context("writing the simulator's public key")?;
        let data = tmp.path().join("data");
        let mut settings = Settings::for_tests(&data);
        settings.trusted_keys = Some(keys);
        let now = SystemClock.now();
        let clock = if args.real_time {
            SimClock::System
        } else {
            SimClock::Manual(ManualClock::new(now - now.rem_euclid(3600)))
        };
        let server_clock: Arc<dyn Clock> = match &clock {
            SimClock::Manual(c) => c.clone(),
            SimClock::System => Arc::new(SystemClock),
        };
        let server = start_with(settings, server_clock, Arc::new(RolloutEngine))
            .await
            .context("starting the in-process server")?;
        let base_url = format!("http://{}", server.addr);
        let env = Self {
            admin: ApiClient::new(&base_url, Some(&server.admin_token))?,
            base_url,
            app_id: args.app_id(),
            group: args.group.clone(),
            start: clock.now(),
            clock,
            data_dir: Some(data),
            server: Some(server),
            _tmp: Some(tmp),
        };
        env.provision(args, &key, &payload_path).await?;
        Ok(env)
    }

    /// Creates the application, publishes the signed release, creates the channel and the group
    /// with its rollout policy, all through the admin API.
    async fn provision(
        &self,
        args: &SimulateArgs,
        key: &payloads::SigningKey,
        payload_path: &Path,
    ) -> anyhow::Result<()> {
        let app = &self.app_id;
        self.admin
            .post(
                "/apps",
                &json!({"id": app, "name": "Simulated fleet",
                        "description": format!("update-server simulate, seed {}", args.seed)}),
            )
            .await
            .with_context(|| {
                format!("creating application {app} (an earlier run? use another --seed or --app)")
            })?;
        let created = u64::try_from(self.start).unwrap_or(0).saturating_sub(3600);
        let mut opts = payloads::BuildOptions::new(app, &args.to_version, "amd64", created);
        opts.threads = 1;
        let (bytes, _) =
            payloads::build_to_vec(&image(args.seed), std::slice::from_ref(key), &opts)
                .context("building the simulated release")?;
        std::fs::write(payload_path, &bytes)
            .with_context(|| format!("writing {}", payload_path.display()))?;
        let file = tokio::fs::File::open(payload_path)
            .await
            .with_context(|| format!("opening {}", payload_path.display()))?;
        let pkg = match self
            .admin
            .upload("/packages?filename=simulated_update.payload", file)
            .await
        {
            Ok(p) => p,
            Err(e) if args.server.is_some() && args.signing_key.is_none() => {
                bail!(
                    "{e:#}\nthe server does not trust the simulator's throwaway key: pass \
                     --signing-key with a key whose public half is in its --trusted-keys"
                )
            }
            Err(e) => return Err(e.context("publishing the simulated release")),
        };
        let pkg_id = pkg["id"]
            .as_str()
            .context("the publish answer has no package id")?;
        self.admin
            .post(
                &format!("/apps/{app}/channels"),
                &json!({"name": self.group, "packages": {"amd64": pkg_id}}),
            )
            .await
            .context("creating the channel")?;
        self.admin
            .post(
                &format!("/apps/{app}/groups"),
                &json!({"name": self.group, "track": self.group, "channel": self.group,
                        "policy": policy(args, self.start)}),
            )
            .await
            .context("creating the group with its rollout policy")?;
        Ok(())
    }

    /// The group's rollout status as the server reports it.
    pub async fn status(&self) -> anyhow::Result<RolloutStatus> {
        let v = self
            .admin
            .get(&format!(
                "/apps/{}/groups/{}/rollout",
                self.app_id, self.group
            ))
            .await?;
        serde_json::from_value(v).context("reading the rollout status")
    }

    /// Stops the in-process server (an external one is left running).
    pub async fn shutdown(self) -> anyhow::Result<()> {
        if let Some(s) = self.server {
            s.shutdown().await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[test]
    fn policy_has_the_ramp_and_the_limits() {
        let args = SimulateArgs::try_parse_from([
            "simulate",
            "--ramp",
            "1,10,100",
            "--step-interval",
            "2h",
            "--concurrency-limit",
            "7",
            "--update-timeout",
            "1h",
        ])
        .unwrap();
        let p = policy(&args, 1000);
        assert_eq!(p["ramp"]["start_at"], 1000);
        assert_eq!(p["ramp"]["start_percent"], 1.0);
        assert_eq!(p["ramp"]["steps"][1]["after_secs"], 14_400);
        assert_eq!(p["ramp"]["steps"][1]["percent"], 100.0);
        assert_eq!(p["auto_halt"]["min_attempts"], 200);
        assert_eq!(p["concurrency_limit"], 7);
        assert_eq!(p["update_timeout_secs"], 3600);
        // The server accepts it.
        let gp: crate::model::GroupPolicy = serde_json::from_value(p).unwrap();
        crate::rollout::RolloutSpec::parse_valid(&gp).unwrap();
        let off = SimulateArgs::try_parse_from(["simulate", "--no-auto-halt"]).unwrap();
        assert!(policy(&off, 0).get("auto_halt").is_none());
    }
}
