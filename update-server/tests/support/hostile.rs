//! Hostile-connection harness shared by `tests/hostile_connections.rs` and
//! `benches/hostile_connections.rs`: runs the real `update-server` binary under a fixed
//! open-file limit (`prlimit`), registers an app so that update checks do real work, opens idle
//! and slowloris connections against it over loopback, and measures update checks sent from
//! fresh connections meanwhile.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::{Notify, watch};

/// The Flatcar app id the checks use.
pub const APP: &str = "e96281a6-d1af-4bde-9a0a-97b76e56dc57";

/// A server process started by [`Server::spawn`]; killed on drop if still running.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Bound address.
    pub addr: SocketAddr,
    /// Admin token.
    pub token: String,
    out: Arc<Mutex<String>>,
    _dir: Option<tempfile::TempDir>,
}

impl Server {
    /// Runs `bin serve` on an ephemeral loopback port (under `prlimit --nofile=N:N` when
    /// `nofile` is given, so it cannot raise its soft limit) with `env` added, and waits (at
    /// most 30 s) for the line announcing its address.
    pub fn spawn(bin: &str, nofile: Option<u64>, env: &[(&str, String)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        Self::spawn_in(bin, nofile, env, &data, Some(dir))
    }

    /// [`Server::spawn`] with data directory `data`, which several servers may share (replicas
    /// on one PostgreSQL database share their packages and tokens); `dir` is kept until drop.
    pub fn spawn_in(
        bin: &str,
        nofile: Option<u64>,
        env: &[(&str, String)],
        data: &std::path::Path,
        dir: Option<tempfile::TempDir>,
    ) -> Self {
        let mut cmd = match nofile {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg("--").arg(bin);
                c
            }
            None => Command::new(bin),
        };
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("UPDATE_SERVER_") {
                cmd.env_remove(k);
            }
        }
        cmd.arg("serve")
            .env("UPDATE_SERVER_LISTEN", "127.0.0.1:0")
            .env("UPDATE_SERVER_DATA_DIR", data)
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {bin} (prlimit from util-linux needed): {e}"));
        let out = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let out = Arc::clone(&out);
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if let Some(a) = line.split("update-server listening on http://").nth(1) {
                        let _ = tx.send(a.trim().to_owned());
                    }
                    let mut o = out.lock().unwrap();
                    if o.len() < 1 << 20 {
                        o.push_str(&line);
                        o.push('\n');
                    }
                }
            });
        }
        let addr: SocketAddr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => a.parse().unwrap(),
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "update-server printed no address in 30 s:\n{}",
                    out.lock().unwrap()
                );
            }
        };
        let token = std::fs::read_to_string(data.join("admin-token"))
            .unwrap()
            .trim()
            .to_owned();
        Self {
            child,
            base: format!("http://{addr}"),
            addr,
            token,
            out,
            _dir: dir,
        }
    }

    /// The process id.
    pub fn pid(&self) -> rustix::process::Pid {
        rustix::process::Pid::from_child(&self.child)
    }

    /// What the server printed so far.
    pub fn output(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    /// Sends SIGTERM and waits (at most 20 s, polling) for the exit.
    pub fn terminate(mut self) -> ExitStatus {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "update-server did not exit within 20 s of SIGTERM:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Raises this process's soft open-file limit to at least `want` (up to the hard limit).
pub fn raise_own_nofile(want: u64) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let l = getrlimit(Resource::Nofile);
    if l.current.is_some_and(|c| c < want) {
        let target = l.maximum.map_or(want, |m| m.min(want));
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(target),
                maximum: l.maximum,
            },
        );
    }
}

/// Creates the app and its `stable` group through the admin API.
pub async fn register_app(base: &str, token: &str) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    for (path, body) in [
        (
            "/api/v1/apps".to_owned(),
            format!(r#"{{"id":"{APP}","name":"Flatcar"}}"#),
        ),
        (
            format!("/api/v1/apps/{APP}/groups"),
            r#"{"name":"stable"}"#.to_owned(),
        ),
    ] {
        let r = http
            .post(format!("{base}{path}"))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "POST {path}: {}", r.status());
    }
}

/// An update check with a ping and an event from machine `i`.
pub fn check_xml(i: usize) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<request protocol="3.0" version="platte-agent-0.1.0" updaterversion="platte-agent-0.1.0" installsource="scheduler" ismachine="1">
<os version="Chateau" platform="CoreOS" sp="3510.2.0_x86_64"></os>
<app appid="{{{APP}}}" version="3510.2.0" track="stable" bootid="{{b}}" oem="qemu" machineid="machine-{i:08}" board="amd64-usr"><ping active="1"></ping><updatecheck></updatecheck><event eventtype="3" eventresult="2" previousversion=""></event></app>
</request>"#
    )
}

/// What one round of requests saw.
#[derive(Debug, Default)]
pub struct Round {
    /// Latency of each answered request.
    pub latencies: Vec<Duration>,
    /// Requests that failed or were not answered with 200 in time (what and why).
    pub failures: Vec<String>,
}

impl Round {
    /// The `q` quantile (0..=1) of the latencies.
    pub fn quantile(&self, q: f64) -> Duration {
        quantile(&self.latencies, q)
    }
}

/// The `q` quantile (0..=1) of `v` (zero when empty).
pub fn quantile(v: &[Duration], q: f64) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    v[((v.len() as f64 * q) as usize).min(v.len() - 1)]
}

/// Failed requests after which a round gives up (the rest are not sent), so that a server that
/// does not answer fails a test in seconds rather than minutes.
pub const GIVE_UP_AFTER: usize = 6;

/// `checks` update checks (machines `first..`) and `health` `/healthz` requests, interleaved,
/// `concurrency` at a time, each from a fresh connection and bounded by `limit`; stops after
/// [`GIVE_UP_AFTER`] failures.
pub async fn round(
    base: &str,
    first: usize,
    checks: usize,
    health: usize,
    concurrency: usize,
    limit: Duration,
) -> (Round, Round) {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(limit)
        .build()
        .unwrap();
    // Health checks spread evenly among the update checks.
    let mut order: Vec<(f64, bool)> = (0..checks)
        .map(|i| (i as f64 / checks as f64, false))
        .chain((0..health).map(|i| ((i as f64 + 0.5) / health as f64, true)))
        .collect();
    order.sort_by(|a, b| a.0.total_cmp(&b.0));
    let order: Arc<Vec<bool>> = Arc::new(order.into_iter().map(|(_, h)| h).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let http = http.clone();
        let next = Arc::clone(&next);
        let order = Arc::clone(&order);
        let failed = Arc::clone(&failed);
        let base = base.to_owned();
        tasks.push(tokio::spawn(async move {
            let (mut c, mut h) = (Round::default(), Round::default());
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(&is_health) = order.get(k) else {
                    return (c, h);
                };
                if failed.load(Ordering::Relaxed) >= GIVE_UP_AFTER {
                    return (c, h);
                }
                let t = Instant::now();
                let (what, res) = if is_health {
                    (
                        "GET /healthz",
                        http.get(format!("{base}/healthz")).send().await,
                    )
                } else {
                    (
                        "POST /v1/update/",
                        http.post(format!("{base}/v1/update/"))
                            .header("content-type", "text/xml")
                            .body(check_xml(first + k))
                            .send()
                            .await,
                    )
                };
                let out = if is_health { &mut h } else { &mut c };
                let before = out.failures.len();
                match res {
                    Ok(r) if r.status() == 200 => match r.text().await {
                        Ok(body) if is_health || body.contains("<app ") => {
                            out.latencies.push(t.elapsed())
                        }
                        Ok(body) => out
                            .failures
                            .push(format!("{what}: unexpected answer {body}")),
                        Err(e) => out.failures.push(format!("{what}: reading answer: {e}")),
                    },
                    Ok(r) => out.failures.push(format!("{what}: status {}", r.status())),
                    Err(e) => out
                        .failures
                        .push(format!("{what}: {e} after {:?}", t.elapsed())),
                }
                if out.failures.len() > before {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let (mut c, mut h) = (Round::default(), Round::default());
    for t in tasks {
        let (tc, th) = t.await.unwrap();
        c.latencies.extend(tc.latencies);
        c.failures.extend(tc.failures);
        h.latencies.extend(th.latencies);
        h.failures.extend(th.failures);
    }
    (c, h)
}

/// The value of a metric line `name` (exact, labels included) from `/metrics` (`None` if
/// absent or not answered within 5 s).
pub async fn metric(base: &str, name: &str) -> Option<f64> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .ok()?;
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The shape of an attack.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Connections that connect and never send a byte.
    pub silent: usize,
    /// Connections that send one request, read its answer, then stay silent (kept alive).
    pub kept_alive: usize,
    /// Connections trickling header lines, never finishing the headers (reconnecting when
    /// closed).
    pub slow_headers: usize,
    /// Connections sending complete headers with a `Content-Length`, then trickling the body
    /// (reconnecting when closed).
    pub slow_body: usize,
    /// Pause between header lines.
    pub header_trickle: Duration,
    /// Pause between body bytes.
    pub body_trickle: Duration,
}

/// What the attackers saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// Connections established (every attempt).
    pub opened: AtomicUsize,
    /// Connection attempts refused or failed.
    pub connect_errors: AtomicUsize,
    /// Silent and kept-alive connections the server closed.
    pub idle_closed: AtomicUsize,
    /// Slow-header connections: time from connect to the server closing it.
    pub header_closed_after: Mutex<Vec<Duration>>,
    /// Slow-body connections: time from the last body byte sent to the server closing it.
    pub body_closed_after: Mutex<Vec<Duration>>,
    /// Every attacker has connected once.
    all_started: Notify,
    started: AtomicUsize,
}

/// A running attack.
pub struct Attack {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// What the attackers saw.
    pub seen: Arc<Seen>,
    count: usize,
}

impl Attack {
    /// Starts the attackers against `addr`.
    pub fn start(addr: SocketAddr, plan: Plan) -> Self {
        let (stop, rx) = watch::channel(false);
        let seen = Arc::new(Seen::default());
        let mut tasks = Vec::new();
        let kinds = [
            (plan.silent, Kind::Silent),
            (plan.kept_alive, Kind::KeptAlive),
            (plan.slow_headers, Kind::SlowHeaders(plan.header_trickle)),
            (plan.slow_body, Kind::SlowBody(plan.body_trickle)),
        ];
        for (n, kind) in kinds {
            for _ in 0..n {
                tasks.push(tokio::spawn(attacker(
                    addr,
                    kind,
                    Arc::clone(&seen),
                    rx.clone(),
                )));
            }
        }
        let count = tasks.len();
        Self {
            stop,
            tasks,
            seen,
            count,
        }
    }

    /// Waits until every attacker has connected once (at most `limit`); returns whether they
    /// did.
    pub async fn wait_started(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let n = self.seen.all_started.notified();
            if self.seen.started.load(Ordering::Acquire) >= self.count {
                return true;
            }
            if tokio::time::timeout_at(deadline, n).await.is_err() {
                return false;
            }
        }
    }

    /// Stops every attacker and waits for them (their sockets are closed).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Silent,
    KeptAlive,
    SlowHeaders(Duration),
    SlowBody(Duration),
}

fn started(seen: &Seen, first: &mut bool) {
    seen.opened.fetch_add(1, Ordering::Relaxed);
    if std::mem::take(first) {
        seen.started.fetch_add(1, Ordering::AcqRel);
        seen.all_started.notify_waiters();
    }
}

/// Whether the server closed the connection (EOF or reset); consumes any answer bytes.
async fn closed(r: &mut (impl tokio::io::AsyncRead + Unpin), buf: &mut [u8]) -> bool {
    matches!(r.read(buf).await, Ok(0) | Err(_))
}

async fn attacker(addr: SocketAddr, kind: Kind, seen: Arc<Seen>, mut stop: watch::Receiver<bool>) {
    let mut first = true;
    let mut buf = [0u8; 4096];
    loop {
        if *stop.borrow() {
            return;
        }
        let mut s = match TcpStream::connect(addr).await {
            Ok(s) => s,
            Err(_) => {
                seen.connect_errors.fetch_add(1, Ordering::Relaxed);
                if first {
                    // Count it as started: the server's backlog was full, not our doing.
                    started(&seen, &mut first);
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(200)) => continue,
                    _ = stop.changed() => return,
                }
            }
        };
        started(&seen, &mut first);
        match kind {
            Kind::Silent | Kind::KeptAlive => {
                if matches!(kind, Kind::KeptAlive)
                    && s.write_all(b"GET /healthz HTTP/1.1\r\nHost: attacker\r\n\r\n")
                        .await
                        .is_err()
                {
                    seen.idle_closed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                loop {
                    tokio::select! {
                        c = closed(&mut s, &mut buf) => if c {
                            seen.idle_closed.fetch_add(1, Ordering::Relaxed);
                            // Idle attackers do not come back.
                            return;
                        },
                        _ = stop.changed() => return,
                    }
                }
            }
            Kind::SlowHeaders(every) => {
                let t0 = Instant::now();
                let (mut rd, mut wr) = s.split();
                let mut tick = tokio::time::interval(every);
                let mut line: &[u8] = b"GET /healthz HTTP/1.1\r\n";
                loop {
                    tokio::select! {
                        c = closed(&mut rd, &mut buf) => if c { break },
                        _ = tick.tick() => {
                            if wr.write_all(line).await.is_err() { break }
                            line = b"X-Slow: 1\r\n";
                        }
                        _ = stop.changed() => return,
                    }
                }
                seen.header_closed_after.lock().unwrap().push(t0.elapsed());
            }
            Kind::SlowBody(every) => {
                let head = format!(
                    "POST /v1/update/ HTTP/1.1\r\nHost: attacker\r\nContent-Type: text/xml\r\nContent-Length: 60000\r\n\r\n{}",
                    "<request protocol=\"3.0\">"
                );
                if s.write_all(head.as_bytes()).await.is_err() {
                    continue;
                }
                let mut last = tokio::time::Instant::now();
                let (mut rd, mut wr) = s.split();
                loop {
                    tokio::select! {
                        c = closed(&mut rd, &mut buf) => if c { break },
                        () = tokio::time::sleep_until(last + every) => {
                            if wr.write_all(b" ").await.is_err() { break }
                            last = tokio::time::Instant::now();
                        }
                        _ = stop.changed() => return,
                    }
                }
                seen.body_closed_after.lock().unwrap().push(last.elapsed());
            }
        }
        // Slowloris attackers come back after a short pause.
        drop(s);
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = stop.changed() => return,
        }
    }
}
