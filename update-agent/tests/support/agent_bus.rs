//! Test support for the D-Bus, reboot and `updatectl` tests: the `update-agent` daemon (as a
//! child process on a private bus, or in-process with an injected clock), an sd_notify listener,
//! `updatectl` runs, a manual clock, and bounded polling.
//!
//! Part of `support` (it uses `support::World`): include with `mod support;`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use tokio::sync::watch;
use update_agent::HostPaths;
use update_agent::agent::Agent;
use update_agent::agent::daemon::{self, DaemonOptions};
use update_agent::dbus::proxy::{Fetched, fetch_properties};
use update_agent::reboot::time::{Clock, Sleeper};

use testkit::dbus::DbusDaemon;

use super::World;

/// Longest any one wait of these tests may take.
pub const LONG: Duration = Duration::from_secs(60);

/// A drop-in that keeps the daemon from checking on its own: the tests ask for checks.
pub const QUIET: &str = "[check]\ninitial_delay_secs = 86400\n";

/// A private bus and a test world running `running` (see [`World::new`]); `None` when
/// `dbus-daemon` is not installed (the test is then skipped, loudly).
pub fn bus_world(running: &str) -> Option<(DbusDaemon, World)> {
    if !DbusDaemon::available() {
        return None;
    }
    Some((DbusDaemon::start(), World::new(running)))
}

/// A new client connection to the bus at `address`.
pub async fn connect(address: &str) -> zbus::Connection {
    zbus::connection::Builder::address(address)
        .unwrap()
        .build()
        .await
        .unwrap()
}

/// Polls `cond` every 10 ms until it returns `Some` (panics after `limit`, naming `what`).
pub fn wait_for<T>(limit: Duration, what: &str, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = cond() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Receives sd_notify datagrams on a socket in a temporary directory.
pub struct NotifyListener {
    sock: UnixDatagram,
    /// The socket path (`NOTIFY_SOCKET`).
    pub path: PathBuf,
    /// Everything received so far.
    pub seen: Vec<String>,
    _dir: tempfile::TempDir,
}

impl NotifyListener {
    /// Binds the socket.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        Self {
            sock,
            path,
            seen: Vec::new(),
            _dir: dir,
        }
    }

    /// Waits (at most `limit`) for a message satisfying `pred`; returns it.
    pub fn wait(&mut self, limit: Duration, what: &str, pred: impl Fn(&str) -> bool) -> String {
        if let Some(m) = self.seen.iter().find(|m| pred(m)) {
            return m.clone();
        }
        let deadline = Instant::now() + limit;
        let mut buf = [0u8; 4096];
        loop {
            if let Ok(n) = self.sock.recv(&mut buf) {
                let m = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.seen.push(m.clone());
                if pred(&m) {
                    return m;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no sd_notify message for {what}; got {:?}",
                self.seen
            );
        }
    }
}

/// `update-agent run` as a child process on the bus at `address`; SIGTERM and wait on drop.
pub struct DaemonProcess {
    /// The child.
    pub child: Child,
}

impl DaemonProcess {
    /// Starts the daemon of `w` on `address`, with `NOTIFY_SOCKET` = `notify` if given.
    pub fn start(w: &World, address: &str, notify: Option<&Path>) -> Self {
        let mut c = Command::new(env!("CARGO_BIN_EXE_update-agent"));
        c.arg("--config-dir")
            .arg(&w.conf)
            .arg("--host-root")
            .arg(&w.root)
            .arg("run")
            .env("DBUS_SYSTEM_BUS_ADDRESS", address)
            .env("RUST_LOG", "update_agent=debug,info")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null());
        super::without_proxy_env(&mut c);
        if let Some(n) = notify {
            c.env("NOTIFY_SOCKET", n);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&w.log)
            .unwrap();
        c.stdout(log.try_clone().unwrap()).stderr(log);
        Self {
            child: c.spawn().unwrap(),
        }
    }

    /// SIGTERM, then the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.child.wait().unwrap()
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `updatectl ARGS` against the bus at `address` (as `nobody` when `as_nobody`).
pub fn updatectl(address: &str, args: &[&str], as_nobody: bool) -> Output {
    let bin = env!("CARGO_BIN_EXE_updatectl");
    let mut c = if as_nobody {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", bin]);
        c
    } else {
        Command::new(bin)
    };
    c.args(args)
        .env("DBUS_SYSTEM_BUS_ADDRESS", address)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Exit code, stdout and stderr of an `updatectl` run.
pub fn parts(o: &Output) -> (i32, String, String) {
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Every `org.platte.Update1` property, read over a fresh connection to `address`.
pub fn props(w: &World, address: &str) -> Option<Fetched> {
    w.rt.block_on(async {
        let conn = zbus::connection::Builder::address(address)
            .ok()?
            .build()
            .await
            .ok()?;
        fetch_properties(&conn).await.ok()
    })
}

/// Waits until the agent of `w` serves its properties on `address` and `cond` holds.
pub fn wait_props(
    w: &World,
    address: &str,
    limit: Duration,
    what: &str,
    cond: impl Fn(&Fetched) -> bool,
) -> Fetched {
    let deadline = Instant::now() + limit;
    loop {
        let p = props(w, address);
        if let Some(p) = &p
            && cond(p)
        {
            return p.clone();
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; properties {p:?}\nagent log:\n{}",
            w.agent_log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A clock the test sets; sleeping waits until the test moves the clock past the deadline.
#[derive(Clone)]
pub struct ManualClock(Arc<watch::Sender<Timestamp>>);

impl ManualClock {
    /// A clock at `t`.
    pub fn new(t: &str) -> Self {
        Self(Arc::new(watch::channel(t.parse().unwrap()).0))
    }

    /// Moves the clock to `t`.
    pub fn set(&self, t: Timestamp) {
        self.0.send_replace(t);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.0.borrow()
    }
}

impl Sleeper for ManualClock {
    fn sleep(&self, d: Duration) -> impl Future<Output = ()> + Send {
        let mut rx = self.0.subscribe();
        let target = self
            .now()
            .checked_add(jiff::SignedDuration::try_from(d).unwrap())
            .unwrap_or(Timestamp::MAX);
        async move {
            loop {
                if *rx.borrow_and_update() >= target {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        }
    }
}

/// The daemon of a host (config dir, host root) run in this process, on its own thread.
pub struct InProcess {
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl InProcess {
    /// Starts it with `opts`, `clock` and `sleeper` (state and sentinel under `root`).
    pub fn start<C, S>(conf: &Path, root: &Path, opts: DaemonOptions, clock: C, sleeper: S) -> Self
    where
        C: Clock + Clone + Send + 'static,
        S: Sleeper + Clone + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (conf, root) = (conf.to_owned(), root.to_owned());
        let thread = std::thread::spawn(move || -> Result<(), String> {
            let mut paths = HostPaths::under(&root);
            paths.config_dirs = vec![conf];
            let mut cfg = update_agent::config::load(&paths.config_dirs, &paths.legacy_update_conf)
                .map_err(|e| e.to_string())?;
            cfg.settings.state_dir = update_agent::paths::reroot(&root, &cfg.settings.state_dir);
            cfg.settings.reboot.reboot_required = cfg
                .settings
                .reboot
                .reboot_required
                .map(|p| update_agent::paths::reroot(&root, &p));
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async move {
                let agent = Agent::open(&paths, cfg.settings).map_err(|e| e.to_string())?;
                daemon::run(agent, opts, clock, sleeper, async {
                    let _ = rx.await;
                })
                .await
                .map_err(|e| e.to_string())
            })
        });
        Self {
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    /// Stops the daemon; returns how it ended.
    pub fn stop(&mut self) -> Result<(), String> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.thread.take() {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err("daemon thread panicked".into())),
            None => Ok(()),
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// The FleetLock group `group` on `w`'s server: its holders' ids.
pub fn lock_holders(w: &World, group: &str) -> Vec<String> {
    let (st, v) = w.api(
        reqwest::Method::GET,
        &format!("/fleetlock/groups/{group}"),
        None,
    );
    assert_eq!(st, 200, "{v}");
    v["holders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_str().unwrap().to_owned())
        .collect()
}
