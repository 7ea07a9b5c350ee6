//! A real `update-server serve` process on loopback with its data directory, and helpers for
//! its admin CLI and API.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::bins::Binaries;
use crate::error::{Error, Result, io};
use crate::http::{Http, expect_ok};
use crate::process::{Proc, poll_until};

/// How long a server may take to start.
pub const START_LIMIT: Duration = Duration::from_secs(30);

/// A running (or stopped, restartable) update server.
#[derive(Debug)]
pub struct Server {
    bins: Binaries,
    data_dir: PathBuf,
    keys_dir: PathBuf,
    log: PathBuf,
    addr: String,
    token: String,
    proc: Option<Proc>,
    http: Http,
    extra_args: Vec<String>,
    /// Print every admin CLI command and its output (the quickstart's transcript).
    pub echo: bool,
}

impl Server {
    /// Starts a server with its data in `dir/server-data`, its log in `dir/server.log`,
    /// trusting the publisher keys in `keys_dir`, on a free loopback port.
    pub fn start(bins: &Binaries, dir: &Path, keys_dir: &Path) -> Result<Server> {
        Self::start_with(bins, dir, keys_dir, &[])
    }

    /// As [`Server::start`], with extra `serve` arguments.
    pub fn start_with(
        bins: &Binaries,
        dir: &Path,
        keys_dir: &Path,
        extra_args: &[&str],
    ) -> Result<Server> {
        Self::start_logged(bins, dir, keys_dir, &dir.join("server.log"), extra_args)
    }

    /// As [`Server::start_with`], with its log in `log`: one of several replicas sharing the
    /// data directory `dir/server-data` (and a database given in `extra_args`). The admin token
    /// is the one the first replica generated there.
    pub fn start_logged(
        bins: &Binaries,
        dir: &Path,
        keys_dir: &Path,
        log: &Path,
        extra_args: &[&str],
    ) -> Result<Server> {
        let mut s = Server {
            bins: bins.clone(),
            data_dir: dir.join("server-data"),
            keys_dir: keys_dir.to_path_buf(),
            log: log.to_path_buf(),
            addr: "127.0.0.1:0".into(),
            token: String::new(),
            proc: None,
            http: Http::new()?,
            extra_args: extra_args.iter().map(|s| (*s).to_owned()).collect(),
            echo: false,
        };
        s.spawn()?;
        Ok(s)
    }

    fn spawn(&mut self) -> Result<()> {
        let mut cmd = Command::new(&self.bins.server);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("UPDATE_SERVER_") {
                cmd.env_remove(k);
            }
        }
        cmd.arg("serve")
            .arg("--listen")
            .arg(&self.addr)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--trusted-keys")
            .arg(&self.keys_dir)
            .args(["--flush-interval-ms", "50"])
            .args(&self.extra_args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1");
        // Mark where this run's log starts, so readiness looks at this run only.
        let before = std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0);
        let mut proc = Proc::spawn("update-server", cmd, &self.log)?;
        let log = self.log.clone();
        let line = poll_until(
            "update-server to print its address",
            START_LIMIT,
            || {
                let text = std::fs::read(&log).ok()?;
                let text = String::from_utf8_lossy(text.get(before as usize..)?).into_owned();
                text.lines()
                    .find(|l| l.contains("update-server listening on http://"))
                    .map(str::to_owned)
                    .or_else(|| {
                        matches!(proc.try_status(), Ok(Some(_))).then(|| "EXITED".to_owned())
                    })
            },
            || crate::process::tail(&std::fs::read_to_string(&log).unwrap_or_default(), 30),
        )?;
        let addr = line
            .rsplit("http://")
            .next()
            .map(str::trim)
            .filter(|a| !a.is_empty() && line != "EXITED")
            .ok_or_else(|| Error::Unexpected {
                what: "update-server start",
                detail: format!("it exited or printed no address:\n{}", proc.log_tail(30)),
            })?;
        self.addr = addr.to_owned();
        let ready = format!("http://{}/readyz", self.addr);
        poll_until(
            "update-server /readyz",
            START_LIMIT,
            || (self.http.probe(&ready) == Some(200)).then_some(()),
            || proc.log_tail(30),
        )?;
        let token_file = self.data_dir.join("admin-token");
        self.token = std::fs::read_to_string(&token_file)
            .map_err(io("reading the admin token", &token_file))?
            .trim()
            .to_owned();
        self.proc = Some(proc);
        Ok(())
    }

    /// Base URL (`http://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `host:port` it listens on.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The Omaha endpoint agents are configured with.
    pub fn omaha_url(&self) -> String {
        format!("{}/v1/update/", self.url())
    }

    /// The admin token (read from `DATA_DIR/admin-token`, where the server generated it).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Where the server stores the package with this SH-256 (content-addressed).
    pub fn package_file(&self, sha256: &str) -> PathBuf {
        let prefix = sha256.get(..2).unwrap_or("");
        self.data_dir.join("packages").join(prefix).join(sha256)
    }

    /// SIGKILL: the server dies without flushing anything.
    pub fn kill(&mut self) -> Result<()> {
        match self.proc.take() {
            Some(mut p) => p.kill(),
            None => Ok(()),
        }
    }

    /// SIGTERM: a graceful stop.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut p) = self.proc.take() {
            p.terminate(Duration::from_secs(10))?;
        }
        Ok(())
    }

    /// Starts it again on the same address and data directory (after [`Server::kill`] or
    /// [`Server::stop`]).
    pub fn restart(&mut self) -> Result<()> {
        self.kill()?;
        self.spawn()
    }

    /// Runs the admin CLI (`update-server ARGS`) against this server; returns its stdout.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new(&self.bins.server);
        cmd.args(args)
            .env("UPDATE_SERVER_URL", self.url())
            .env("UPDATE_SERVER_TOKEN", &self.token);
        let out = cmd
            .output()
            .map_err(io("running update-server", &self.bins.server))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if self.echo {
            println!("    $ update-server {}", shell_words(args));
            for l in stdout.lines() {
                println!("      {l}");
            }
        }
        if !out.status.success() {
            return Err(Error::Command {
                command: format!("update-server {}", args.join(" ")),
                code: out.status.code(),
                stdout,
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(stdout)
    }

    /// Runs the admin CLI with `--json` and parses its output.
    pub fn cli_json(&self, args: &[&str]) -> Result<Value> {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.cli(&a)?;
        serde_json::from_str(&out).map_err(|e| Error::Unexpected {
            what: "update-server --json output",
            detail: format!("{e}: {out}"),
        })
    }

    /// An admin API request (`path` below `/api/v1`) with the admin token; the JSON answer.
    pub fn api(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Result<Value> {
        let url = format!("{}/api/v1{path}", self.url());
        let m = method.to_string();
        let answer = self.http.request(method, &url, Some(&self.token), body)?;
        expect_ok(&m, &url, answer)
    }

    /// `GET /api/v1{path}`.
    pub fn get(&self, path: &str) -> Result<Value> {
        self.api(reqwest::Method::GET, path, None)
    }

    /// The server's view of one machine of `app` (`GET /instances?app=…&search=…`), if known.
    pub fn instance(&self, app: &str, machine: &str) -> Result<Option<Value>> {
        let list = self.get(&format!(
            "/instances?app={}&search={machine}&limit=10",
            enc(app)
        ))?;
        let items = items(&list);
        Ok(items
            .into_iter()
            .find(|i| i["machine_id"].as_str() == Some(machine)))
    }

    /// The status the server shows for `machine` in `app` (`idle`, `installed`, `complete`…).
    pub fn instance_status(&self, app: &str, machine: &str) -> Result<Option<String>> {
        Ok(self
            .instance(app, machine)?
            .and_then(|i| i["status"].as_str().map(str::to_owned)))
    }

    /// Polls the server's view of `machine` until `cond` holds on it (check-ins are written in
    /// batches, so a fresh check-in shows up within the flush interval).
    pub fn wait_instance(
        &self,
        app: &str,
        machine: &str,
        what: &str,
        cond: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        poll_until(
            &format!("the server to show {machine} {what}"),
            Duration::from_secs(20),
            || {
                let seen = self
                    .instance(app, machine)
                    .ok()
                    .flatten()
                    .unwrap_or(Value::Null);
                cond(&seen).then_some(seen)
            },
            || format!("last seen: {:?}", self.instance(app, machine)),
        )
    }

    /// Waits until the server shows `machine` with `status`.
    pub fn wait_status(&self, app: &str, machine: &str, status: &str) -> Result<Value> {
        self.wait_instance(app, machine, &format!("as `{status}`"), |i| {
            i["status"].as_str() == Some(status)
        })
    }

    /// The ids holding a slot of FleetLock group `group`, oldest first
    /// (`GET /api/v1/fleetlock/groups/{group}`).
    pub fn fleetlock_holders(&self, group: &str) -> Result<Vec<String>> {
        let v = self.get(&format!("/fleetlock/groups/{group}"))?;
        let holders = v["holders"].as_array().ok_or_else(|| Error::Unexpected {
            what: "FleetLock group answer",
            detail: format!("no `holders` list in {v}"),
        })?;
        holders
            .iter()
            .map(|h| {
                h["id"]
                    .as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| Error::Unexpected {
                        what: "FleetLock holder",
                        detail: format!("no `id` in {h}"),
                    })
            })
            .collect()
    }

    /// The value of one Prometheus series of `/metrics`, e.g.
    /// `platte_fleetlock_requests_total{op="steady_state",result="released"}` (labels in the
    /// order the server prints them); 0 when the series is not there yet.
    pub fn metric(&self, series: &str) -> Result<f64> {
        let url = format!("{}/metrics", self.url());
        let answer = self
            .http
            .request(reqwest::Method::GET, &url, Some(&self.token), None)?;
        if answer.status != 200 {
            return Err(Error::Api {
                method: "GET".into(),
                url,
                status: answer.status,
                body: answer.body.chars().take(2000).collect(),
            });
        }
        for line in answer.body.lines() {
            if let Some(rest) = line.strip_prefix(series)
                && let Some(value) = rest.strip_prefix(' ')
            {
                return value.trim().parse().map_err(|_| Error::Unexpected {
                    what: "metrics line",
                    detail: line.to_owned(),
                });
            }
        }
        Ok(0.0)
    }

    /// The catalogue this process serves, as its admin API shows its in-memory copy: the apps,
    /// each with its channels and groups (policies included), and the packages.
    pub fn catalogue_view(&self) -> Result<Value> {
        let apps = self.get("/apps")?;
        let mut per_app = Vec::new();
        for a in apps.as_array().into_iter().flatten() {
            let id = enc(a["id"].as_str().unwrap_or_default());
            per_app.push(serde_json::json!({
                "app": a,
                "channels": self.get(&format!("/apps/{id}/channels"))?,
                "groups": self.get(&format!("/apps/{id}/groups"))?,
            }));
        }
        Ok(serde_json::json!({
            "apps": per_app,
            "packages": self.get("/packages")?,
        }))
    }

    /// The server's recorded events of `machine` (newest first).
    pub fn events(&self, machine: &str) -> Result<Vec<Value>> {
        Ok(items(
            &self.get(&format!("/events?machine={machine}&limit=200"))?,
        ))
    }
}

/// The elements of a JSON list answer: a bare array, or the first array in an object such as
/// `{"total": N, "instances": […]}`.
pub fn items(v: &Value) -> Vec<Value> {
    v.as_array()
        .or_else(|| v.as_object()?.values().find_map(Value::as_array))
        .cloned()
        .unwrap_or_default()
}

/// Percent-encodes the characters of an app id that matter in a query (`{`, `}`).
pub fn enc(s: &str) -> String {
    s.replace('{', "%7B").replace('}', "%7D")
}

/// Joins arguments for display, quoting those with spaces or shell characters.
pub fn shell_words(args: &[&str]) -> String {
    args.iter()
        .map(|a| {
            if a.is_empty() || a.chars().any(|c| " {}\"'$*;&|<>()".contains(c)) {
                format!("'{}'", a.replace('\'', "'\\''"))
            } else {
                (*a).to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
