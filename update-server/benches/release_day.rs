//! Bench binary `release_day`: the real `update-server` binary, in its own process, with a large
//! registered fleet (default 1,000,000 machines), under load from separate `wrk` processes
//! (issue 17, item 4). It talks to the server only from outside: the admin HTTP API for the
//! catalogue, the database for the fleet (bulk-inserted while the server is stopped) and for
//! durability polls (read-only), `/proc` for memory, and HTTP for the load. The database is the
//! server's default SQLite file in a temporary data directory, or with `BENCH_DATABASE` a
//! throwaway PostgreSQL database the bench creates (`platte_bench_<pid>`, byte-wise collation,
//! vacuumed and analysed after the fleet insert) and drops at the end, also when it fails or is
//! interrupted (Ctrl-C).
//!
//! Scenarios, each `BENCH_SECS` seconds (`wrk -t2 -c32` unless stated):
//! 1. the constant route `GET /healthz` (the ceiling);
//! 2. `noupdate` checks from the first 100,000 registered machines (version 2.0.0);
//! 3. first-check grants to never-seen machine ids (version 1.0.0), at 1, 4 and 32 connections;
//! 4. grants while the fleet checks in: two `wrk` processes at once (one thread each), 16
//!    connections of scenario 2 and 16 of scenario 3, reported separately.
//!
//! Every `wrk` script counts the answers in `response()` (`<updatecheck status="ok"`,
//! `<updatecheck status="noupdate"`, anything else, non-200) and prints one parseable line from
//! `done()`. The bench fails (exit 1) when a `noupdate` scenario got an update, a grant scenario
//! got anything but `ok`, any answer was not 200 or a socket error occurred, or the server did
//! not exit 0 on SIGTERM. It also reports the server's VmRSS/VmHWM after start and after the
//! load, and how long the database lagged behind the acknowledged check-ins and grants. The
//! issue's goals are printed beside the figures for reference; missing them does not fail it.
//!
//! Run (needs `wrk`, Debian package `wrk`):
//!
//! ```sh
//! cargo bench -p update-server --bench release_day
//! BENCH_MACHINES=200000 BENCH_SECS=5 cargo bench -p update-server --bench release_day
//! BENCH_DATABASE=postgres://postgres@127.0.0.1:5432/test BENCH_MACHINES=200000 \
//!     cargo bench -p update-server --bench release_day
//! BENCH_DATABASE=postgres://postgres@127.0.0.1:5432/test BENCH_COMPARE=1 \
//!     cargo bench -p update-server --bench release_day
//! ```
//!
//! Knobs (environment): `BENCH_MACHINES` (registered fleet, 1,000,000), `BENCH_SECS` (seconds
//! per scenario, 10), `BENCH_POLICY` (the group's policy as JSON, `{"percentage": 100}`; e.g.
//! `{"percentage": 100, "auto_halt": {"max_failure_rate": 0.05, "min_attempts": 100}}`),
//! `BENCH_DATABASE` (unset: SQLite; `postgres://USER@HOST/DB`: a PostgreSQL server, reached
//! through database `DB`, on which the bench creates its own database; the user must be allowed
//! to create databases, and to run `CHECKPOINT` or the bench warns), `BENCH_REPLICAS` (with
//! `BENCH_DATABASE`: this many server processes on the one database, 1; every load is spread
//! over them, one `wrk` process per replica with one thread each, and their rates summed),
//! `BENCH_COMPARE=1` (with `BENCH_DATABASE`: three runs one after the other — SQLite,
//! PostgreSQL with one replica, PostgreSQL with `BENCH_REPLICAS` or 3 — and a side-by-side
//! table of them, each with its own fresh fleet), `BENCH_SERVER_BIN` (the `update-server` binary
//! to measure instead of this build's, e.g. a copy built from an earlier commit, to compare two
//! builds in alternating runs on a noisy machine).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use sqlx::Connection as _;
use sqlx::postgres::PgConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteSynchronous};

/// Flatcar's application id.
const APP: &str = "e96281a6-d1af-4bde-9a0a-97b76e56dc57";
/// The version the channel serves and the registered fleet runs.
const RELEASE: &str = "2.0.0";
/// Registered machines the `noupdate` scenarios check in as (the first ones).
const CHECKING_MACHINES: u64 = 100_000;
/// Rows per bulk-insert transaction.
const INSERT_BATCH: u64 = 250_000;
/// Longest wait for the database to catch up with the acknowledged answers.
const LAG_CAP: Duration = Duration::from_secs(60);
/// Interval of the durability polls.
const LAG_POLL: Duration = Duration::from_millis(100);
/// Longest wait for a server to print its address (loading a large fleet takes a while).
const START_CAP: Duration = Duration::from_secs(900);
/// Longest wait for a server to exit after SIGTERM.
const STOP_CAP: Duration = Duration::from_secs(120);

/// Shared by every script: thread numbering, answer counting and the result line.
const LUA_COMMON: &str = r#"
local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

function init(args)
  ok, noupdate, other, non200, distinct = 0, 0, 0, 0, 0
  start(args)
end

function response(status, headers, body)
  if status ~= 200 then
    non200 = non200 + 1
  elseif string.find(body, ok_mark, 1, true) then
    ok = ok + 1
  elseif string.find(body, noupdate_mark, 1, true) then
    noupdate = noupdate + 1
  else
    other = other + 1
  end
  distinct = reached(ok + noupdate)
end

function done(summary, latency, requests)
  local t = { ok = 0, noupdate = 0, other = 0, non200 = 0, distinct = 0 }
  for _, th in ipairs(threads) do
    for k, v in pairs(t) do
      t[k] = v + th:get(k)
    end
  end
  local e = summary.errors
  io.write(string.format("PLATTE-RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d " ..
    "max_us=%d ok=%d noupdate=%d other=%d non200=%d distinct=%d connect=%d read=%d " ..
    "write=%d timeout=%d\n", summary.requests, summary.duration, latency:percentile(50),
    latency:percentile(99), latency.max, t.ok, t.noupdate, t.other, t.non200, t.distinct,
    e.connect, e.read, e.write, e.timeout))
end

omaha_headers = { ["Content-Type"] = "text/xml" }

function omaha(machine, version)
  return string.format([==[<?xml version="1.0" encoding="UTF-8"?>
<request protocol="3.0" version="platte-agent-0.1.0" updaterversion="platte-agent-0.1.0" installsource="scheduler" ismachine="1">
<os version="Chateau" platform="CoreOS" sp="%s_x86_64"></os>
<app appid="{e96281a6-d1af-4bde-9a0a-97b76e56dc57}" version="%s" track="stable" bootid="{c0ffee00-0000-4000-8000-000000000000}" oem="qemu" machineid="%s" board="amd64-usr"><ping active="1"></ping><updatecheck></updatecheck></app>
</request>]==], version, version, machine)
end
"#;

/// `GET /healthz`; no arguments.
const LUA_HEALTHZ: &str = r#"
ok_mark = "ok"
noupdate_mark = "<no such answer>"

function start(args) end

function reached(answered) return 0 end

function request()
  return wrk.format("GET")
end
"#;

/// Checks from registered machines `m-%08d` at version 2.0.0. Arguments: wrk threads, machines
/// checking in (`m-00000000`.. upwards), first machine. Thread `t` takes every `threads`-th one.
const LUA_NOUPDATE: &str = r#"
ok_mark = '<updatecheck status="ok"'
noupdate_mark = '<updatecheck status="noupdate"'

function start(args)
  nthreads, span, first = tonumber(args[1]), tonumber(args[2]), tonumber(args[3])
  k = 0
  mine = math.floor((span - tid) / nthreads) + 1
end

function reached(answered) return math.min(answered, mine) end

function request()
  local i = (first + (tid - 1) + k * nthreads) % span
  k = k + 1
  return wrk.format("POST", nil, omaha_headers, omaha(string.format("m-%08d", i), "2.0.0"))
end
"#;

/// First checks from never-seen machines `new-<tag>-<thread>-<n>` at version 1.0.0. Argument:
/// the tag (unique per run).
const LUA_GRANTS: &str = r#"
ok_mark = '<updatecheck status="ok"'
noupdate_mark = '<updatecheck status="noupdate"'

function start(args)
  tag = args[1]
  k = 0
end

function reached(answered) return ok end

function request()
  k = k + 1
  return wrk.format("POST", nil, omaha_headers,
    omaha(string.format("new-%s-%d-%d", tag, tid, k), "1.0.0"))
end
"#;

/// Reads a numeric knob from the environment.
fn knob(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .with_context(|| format!("{name}={v:?} is not a whole number")),
        Err(_) => Ok(default),
    }
}

fn unix_now() -> i64 {
    i64::try_from(payloads::unix_now()).unwrap_or(i64::MAX)
}

// ---------------------------------------------------------------------------------------------
// The server process

/// Memory of a process, from `/proc/<pid>/status`, in KiB.
#[derive(Debug, Clone, Copy)]
struct Memory {
    rss_kib: u64,
    hwm_kib: u64,
}

/// Warnings and errors the server logged.
#[derive(Debug, Default)]
struct ServerLog {
    problems: usize,
    samples: Vec<String>,
    /// The first lines of its output, whatever they say (why it exited, if it did at start).
    head: Vec<String>,
}

/// A running `update-server serve`; killed on drop if still running.
struct Server {
    child: Child,
    base: String,
    log: Arc<Mutex<ServerLog>>,
}

impl Server {
    /// Starts `bin serve` on an ephemeral loopback port over `data` (and `db`) and waits until it
    /// printed its address (within [`START_CAP`]) and answers `/healthz` (within 30 s).
    async fn start(
        bin: &str,
        data: &Path,
        db: &Database,
        keys: &Path,
        http: &reqwest::Client,
    ) -> Result<Self> {
        let mut cmd = Command::new(bin);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("UPDATE_SERVER_") {
                cmd.env_remove(k);
            }
        }
        if let Database::Postgres(url) = db {
            // From the environment rather than `--database`: a password stays out of `ps`.
            cmd.env("UPDATE_SERVER_DATABASE", url);
        }
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data)
            .arg("--trusted-keys")
            .arg(keys)
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().with_context(|| format!("starting {bin}"))?;
        let log = Arc::new(Mutex::new(ServerLog::default()));
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let streams: [Box<dyn std::io::Read + Send>; 2] = [
            Box::new(child.stdout.take().unwrap()),
            Box::new(child.stderr.take().unwrap()),
        ];
        for stream in streams {
            let log = Arc::clone(&log);
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    {
                        let mut l = log.lock().unwrap();
                        if l.head.len() < 8 {
                            l.head.push(line.clone());
                        }
                    }
                    if let Some(a) = line.split("update-server listening on http://").nth(1) {
                        let _ = tx.send(a.trim().to_owned());
                    } else if line.contains("WARN") || line.contains("ERROR") {
                        let mut l = log.lock().unwrap();
                        l.problems += 1;
                        if l.samples.len() < 8 {
                            l.samples.push(line);
                        }
                    }
                }
            });
        }
        drop(tx);
        let addr = match rx.recv_timeout(START_CAP) {
            Ok(a) => a,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                let st = child.wait()?;
                bail!(
                    "update-server exited ({st}) before printing its address; its output began:\n    {}",
                    log.lock().unwrap().head.join("\n    ")
                );
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "update-server printed no address within {START_CAP:?}; its warnings: {:?}",
                    log.lock().unwrap().samples
                );
            }
        };
        let server = Self {
            child,
            base: format!("http://{addr}"),
            log,
        };
        server.wait_healthy(http).await?;
        Ok(server)
    }

    /// Polls `/healthz` until it answers 200 (at most 30 s).
    async fn wait_healthy(&self, http: &reqwest::Client) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = http.get(format!("{}/healthz", self.base)).send().await;
            if r.as_ref().is_ok_and(|r| r.status().is_success()) {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "{}/healthz did not answer 200 within 30 s: {r:?}",
                self.base
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// VmRSS and VmHWM of the server process.
    fn memory(&self) -> Result<Memory> {
        let path = format!("/proc/{}/status", self.pid());
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .with_context(|| format!("no {name} in {path}"))
        };
        Ok(Memory {
            rss_kib: field("VmRSS:")?,
            hwm_kib: field("VmHWM:")?,
        })
    }

    /// Sends SIGTERM and waits (at most [`STOP_CAP`], polling) for the exit.
    fn stop(mut self) -> Result<(ExitStatus, Duration)> {
        let t = Instant::now();
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM)
            .context("sending SIGTERM to update-server")?;
        loop {
            if let Some(st) = self.child.try_wait()? {
                return Ok((st, t.elapsed()));
            }
            ensure!(
                t.elapsed() < STOP_CAP,
                "update-server did not exit within {STOP_CAP:?} of SIGTERM"
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

// ---------------------------------------------------------------------------------------------
// Set-up: catalogue over the admin API, fleet straight into SQLite

/// A signing key whose public half is trusted from `keys/release.pub`.
fn trusted_key(keys: &Path) -> Result<payloads::SigningKey> {
    let key = payloads::keys::generate_signing_key();
    std::fs::create_dir_all(keys)?;
    std::fs::write(
        keys.join("release.pub"),
        payloads::keys::public_key_pem(&key.verifying_key()),
    )?;
    Ok(key)
}

/// A signed amd64 payload of [`RELEASE`] over 64 KiB of incompressible data.
fn release_payload(key: &payloads::SigningKey) -> Result<Vec<u8>> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let image: Vec<u8> = (0..64 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    let opts = payloads::BuildOptions::new(APP, RELEASE, "amd64", payloads::unix_now() - 10);
    Ok(payloads::build_to_vec(&image, std::slice::from_ref(key), &opts)?.0)
}

/// One admin request that must succeed; returns the parsed answer.
async fn admin(
    http: &reqwest::Client,
    server: &Server,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: reqwest::Body,
    content_type: &str,
) -> Result<serde_json::Value> {
    let r = http
        .request(method.clone(), format!("{}/api/v1{path}", server.base))
        .bearer_auth(token)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .with_context(|| format!("{method} {path}"))?;
    let status = r.status();
    let text = r.text().await?;
    ensure!(status.is_success(), "{method} {path}: {status}: {text}");
    serde_json::from_str(&text).with_context(|| format!("{method} {path}: answer {text:?}"))
}

/// Creates the app, publishes the 2.0.0 package, points channel `stable` at it and creates group
/// `stable` following it at 100 %; returns the group id.
async fn create_catalogue(
    http: &reqwest::Client,
    server: &Server,
    token: &str,
    key: &payloads::SigningKey,
) -> Result<String> {
    let json = |v: serde_json::Value| reqwest::Body::from(v.to_string());
    let post = reqwest::Method::POST;
    let app_body = json(serde_json::json!({"id": APP, "name": "Flatcar"}));
    admin(
        http,
        server,
        token,
        post.clone(),
        "/apps",
        app_body,
        "application/json",
    )
    .await?;
    let package = admin(
        http,
        server,
        token,
        post.clone(),
        "/packages?filename=flatcar-2.0.0.payload",
        reqwest::Body::from(release_payload(key)?),
        "application/octet-stream",
    )
    .await?;
    let package_id = package["id"].as_str().context("package without id")?;
    let channel = json(serde_json::json!({"name": "stable", "packages": {"amd64": package_id}}));
    let path = format!("/apps/{APP}/channels");
    admin(
        http,
        server,
        token,
        post.clone(),
        &path,
        channel,
        "application/json",
    )
    .await?;
    // `BENCH_POLICY`: the group's policy as JSON (default: the new version at 100 %).
    let policy: serde_json::Value = match std::env::var("BENCH_POLICY") {
        Ok(p) => serde_json::from_str(&p).context("BENCH_POLICY is not JSON")?,
        Err(_) => serde_json::json!({"percentage": 100}),
    };
    let group = json(serde_json::json!({
        "name": "stable", "track": "stable", "channel": "stable",
        "policy": policy,
    }));
    let path = format!("/apps/{APP}/groups");
    let group = admin(http, server, token, post, &path, group, "application/json").await?;
    Ok(group["id"].as_str().context("group without id")?.to_owned())
}

/// Registered machines `m-00000000`.. at [`RELEASE`] in `group`: 90 % `complete`, 10 % `idle`,
/// last checked within the hour before the bench, created a week before. One statement per
/// [`INSERT_BATCH`] rows, each its own transaction.
const INSERT_FLEET: &str = "
WITH RECURSIVE seq(i) AS (SELECT ?1 UNION ALL SELECT i + 1 FROM seq WHERE i + 1 < ?2)
INSERT INTO instances (machine_id, app_id, alias, ip, version, group_id, track, oem,
    oem_version, board, boot_id, last_check_at, granted_version, granted_at, status,
    status_detail, error_code, status_at, created_at)
SELECT printf('m-%08d', i), ?3, '',
    '10.' || (i / 65536 % 256) || '.' || (i / 256 % 256) || '.' || (i % 256),
    '2.0.0', ?4, 'stable', 'qemu', '', 'amd64-usr', '', ?5 - 60 - (i % 3540),
    CASE WHEN i % 10 = 0 THEN NULL ELSE '2.0.0' END,
    CASE WHEN i % 10 = 0 THEN NULL ELSE ?6 END,
    CASE WHEN i % 10 = 0 THEN 'idle' ELSE 'complete' END,
    '', NULL, ?6, ?6
FROM seq";

/// The PostgreSQL spelling of [`INSERT_FLEET`]: the same rows, from `generate_series`, in one
/// statement (its own transaction) per [`INSERT_BATCH`] rows. The `repeat` pads like SQLite's
/// `printf('m-%08d', i)`, and `||` turns the numbers into the same text.
const INSERT_FLEET_PG: &str = "
INSERT INTO instances (machine_id, app_id, alias, ip, version, group_id, track, oem,
    oem_version, board, boot_id, last_check_at, granted_version, granted_at, status,
    status_detail, error_code, status_at, created_at)
SELECT 'm-' || repeat('0', 8 - length(i::text)) || i, $3, '',
    '10.' || (i / 65536 % 256) || '.' || (i / 256 % 256) || '.' || (i % 256),
    '2.0.0', $4, 'stable', 'qemu', '', 'amd64-usr', '', $5 - 60 - (i % 3540),
    CASE WHEN i % 10 = 0 THEN NULL ELSE '2.0.0' END,
    CASE WHEN i % 10 = 0 THEN NULL ELSE $6 END,
    CASE WHEN i % 10 = 0 THEN 'idle' ELSE 'complete' END,
    '', NULL, $6, $6
FROM generate_series($1::BIGINT, $2::BIGINT - 1) AS i";

/// Bulk-inserts `machines` registered instances into the (stopped) server's database.
async fn insert_fleet(db: &Database, machines: u64, group_id: &str) -> Result<()> {
    let mut conn = DbConn::open(db, Access::BulkInsert).await?;
    let now = unix_now();
    let mut lo = 0;
    while lo < machines {
        let hi = (lo + INSERT_BATCH).min(machines);
        conn.insert_fleet_batch(lo, hi, group_id, now)
            .await
            .context("inserting the fleet")?;
        lo = hi;
    }
    conn.settle().await?;
    conn.close().await
}

// ---------------------------------------------------------------------------------------------
// The database: SQLite or PostgreSQL

/// The database the server runs on.
enum Database {
    /// The server's default: this file in its data directory.
    Sqlite(PathBuf),
    /// A PostgreSQL database (the bench's [`Scratch`] one), by URL.
    Postgres(String),
}

/// What the bench opens a connection for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    /// The fleet insert, with the server stopped: durability is not needed.
    BulkInsert,
    /// The durability polls, while the server writes.
    ReadOnly,
}

/// One connection of the bench's own to the server's database.
enum DbConn {
    Sqlite(SqliteConnection),
    Postgres(PgConnection),
}

impl DbConn {
    async fn open(db: &Database, access: Access) -> Result<Self> {
        match db {
            Database::Sqlite(path) => {
                let opts = SqliteConnectOptions::new().filename(path);
                let (opts, what) = match access {
                    // WAL lets it read while the server writes.
                    Access::ReadOnly => (opts.read_only(true), " read-only"),
                    Access::BulkInsert => (
                        opts.journal_mode(SqliteJournalMode::Wal)
                            .synchronous(SqliteSynchronous::Off),
                        "",
                    ),
                };
                let conn = SqliteConnection::connect_with(&opts)
                    .await
                    .with_context(|| format!("opening {}{what}", path.display()))?;
                Ok(Self::Sqlite(conn))
            }
            Database::Postgres(url) => {
                let mut conn = PgConnection::connect(url)
                    .await
                    .context("connecting to the bench's PostgreSQL database")?;
                let session = match access {
                    Access::ReadOnly => "SET default_transaction_read_only = on",
                    Access::BulkInsert => "SET synchronous_commit = off",
                };
                sqlx::raw_sql(session).execute(&mut conn).await?;
                Ok(Self::Postgres(conn))
            }
        }
    }

    /// Inserts registered machines `lo..hi` ([`INSERT_FLEET`]) in one transaction.
    async fn insert_fleet_batch(&mut self, lo: u64, hi: u64, group: &str, now: i64) -> Result<()> {
        let (lo, hi) = (i64::try_from(lo)?, i64::try_from(hi)?);
        let created = now - 7 * 86_400;
        match self {
            Self::Sqlite(conn) => {
                let mut tx = conn.begin().await?;
                sqlx::query(INSERT_FLEET)
                    .bind(lo)
                    .bind(hi)
                    .bind(APP)
                    .bind(group)
                    .bind(now)
                    .bind(created)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
            Self::Postgres(conn) => {
                sqlx::query(INSERT_FLEET_PG)
                    .bind(lo)
                    .bind(hi)
                    .bind(APP)
                    .bind(group)
                    .bind(now)
                    .bind(created)
                    .execute(conn)
                    .await?;
            }
        }
        Ok(())
    }

    /// Leaves the database as a long-running server would find it after the bulk insert: SQLite's
    /// WAL checkpointed and truncated; PostgreSQL's table vacuumed and analysed (the planner's
    /// statistics and visibility map, which autovacuum would otherwise bring up to date in the
    /// middle of a scenario) and checkpointed.
    async fn settle(&mut self) -> Result<()> {
        match self {
            Self::Sqlite(conn) => {
                sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                    .execute(conn)
                    .await?;
            }
            Self::Postgres(conn) => {
                sqlx::raw_sql("VACUUM (ANALYZE) instances")
                    .execute(&mut *conn)
                    .await
                    .context("vacuuming the fleet")?;
                if let Err(e) = sqlx::raw_sql("CHECKPOINT").execute(conn).await {
                    eprintln!(
                        "release_day: warning: CHECKPOINT after the fleet insert failed ({e}); \
                         a checkpoint may run during the scenarios"
                    );
                }
            }
        }
        Ok(())
    }

    /// Rows with `lo <= machine_id < hi` checked at or after `since` ([`COUNT_CHECKED`]).
    async fn count_checked(&mut self, range: &(String, String), since: i64) -> Result<u64> {
        let count: i64 = match self {
            Self::Sqlite(conn) => {
                sqlx::query_scalar(COUNT_CHECKED)
                    .bind(&range.0)
                    .bind(&range.1)
                    .bind(since)
                    .fetch_one(conn)
                    .await?
            }
            Self::Postgres(conn) => {
                sqlx::query_scalar(COUNT_CHECKED_PG)
                    .bind(&range.0)
                    .bind(&range.1)
                    .bind(since)
                    .fetch_one(conn)
                    .await?
            }
        };
        Ok(u64::try_from(count).unwrap_or(0))
    }

    async fn close(self) -> Result<()> {
        match self {
            Self::Sqlite(conn) => conn.close().await?,
            Self::Postgres(conn) => conn.close().await?,
        }
        Ok(())
    }
}

/// The throwaway PostgreSQL database of a `BENCH_DATABASE` run.
struct Scratch {
    /// `BENCH_DATABASE`: where to create and drop it from.
    server: String,
    name: String,
    /// The database's URL (`BENCH_DATABASE` with the database name replaced).
    url: String,
    /// Server version and `synchronous_commit`, for the report.
    describe: String,
}

impl Scratch {
    /// Creates `platte_bench_<pid>` (dropping a leftover of that name first), with byte-wise
    /// collation so that the polls' machine-id ranges mean what they do on SQLite.
    async fn create(server: &str) -> Result<Self> {
        let mut url = url::Url::parse(server).context("BENCH_DATABASE is not a URL")?;
        let name = format!("platte_bench_{}", std::process::id());
        let mut conn = PgConnection::connect(server)
            .await
            .context("connecting to BENCH_DATABASE")?;
        sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .execute(&mut conn)
            .await?;
        sqlx::raw_sql(&format!(
            "CREATE DATABASE \"{name}\" TEMPLATE template0 ENCODING 'UTF8' LOCALE 'C'"
        ))
        .execute(&mut conn)
        .await
        .with_context(|| format!("creating database {name}"))?;
        conn.close().await?;
        url.set_path(&format!("/{name}"));
        let mut scratch = Self {
            server: server.to_owned(),
            name,
            url: url.into(),
            describe: String::new(),
        };
        match scratch.settings().await {
            Ok(d) => scratch.describe = d,
            Err(e) => {
                scratch.drop_database().await?;
                return Err(e);
            }
        }
        Ok(scratch)
    }

    /// `PostgreSQL <version>, synchronous_commit=<setting>`, as the server's sessions see them.
    async fn settings(&self) -> Result<String> {
        let mut conn = PgConnection::connect(&self.url)
            .await
            .with_context(|| format!("connecting to database {}", self.name))?;
        let version: String = sqlx::query_scalar("SHOW server_version")
            .fetch_one(&mut conn)
            .await?;
        let sync: String = sqlx::query_scalar("SHOW synchronous_commit")
            .fetch_one(&mut conn)
            .await?;
        conn.close().await?;
        let version = version.split_whitespace().next().unwrap_or("").to_owned();
        Ok(format!("PostgreSQL {version}, synchronous_commit={sync}"))
    }

    /// Drops the database, ending any session still on it.
    async fn drop_database(&self) -> Result<()> {
        let mut conn = PgConnection::connect(&self.server)
            .await
            .context("connecting to BENCH_DATABASE")?;
        sqlx::raw_sql(&format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.name
        ))
        .execute(&mut conn)
        .await
        .with_context(|| format!("dropping database {}", self.name))?;
        conn.close().await?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Load: wrk processes

/// The scripts, written to a temporary directory.
struct Scripts {
    healthz: PathBuf,
    noupdate: PathBuf,
    grants: PathBuf,
}

fn write_scripts(dir: &Path) -> Result<Scripts> {
    let write = |name: &str, body: &str| -> Result<PathBuf> {
        let p = dir.join(name);
        std::fs::write(&p, format!("-- release_day: {name}\n{LUA_COMMON}{body}"))?;
        Ok(p)
    };
    Ok(Scripts {
        healthz: write("healthz.lua", LUA_HEALTHZ)?,
        noupdate: write("noupdate.lua", LUA_NOUPDATE)?,
        grants: write("grants.lua", LUA_GRANTS)?,
    })
}

/// Fails with a clear message when `wrk` cannot be run.
fn require_wrk() -> Result<()> {
    match Command::new("wrk").arg("--version").output() {
        Ok(_) => Ok(()),
        Err(e) => bail!(
            "this bench drives the load with `wrk`, which could not be run ({e}); install it \
             (Debian/Ubuntu: `apt-get install wrk`) and run the bench again"
        ),
    }
}

/// One `wrk` run.
struct Load<'a> {
    threads: u32,
    connections: u32,
    script: &'a Path,
    url: String,
    args: Vec<String>,
}

impl Load<'_> {
    fn spawn(&self, secs: u64) -> Result<Child> {
        Command::new("wrk")
            .arg(format!("-t{}", self.threads))
            .arg(format!("-c{}", self.connections))
            .arg(format!("-d{secs}s"))
            .args(["--timeout", "10s", "-s"])
            .arg(self.script)
            .arg(&self.url)
            .arg("--")
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting wrk")
    }
}

/// What a `wrk` run measured and counted.
#[derive(Debug, Clone, Default)]
struct WrkResult {
    requests: u64,
    rps: f64,
    p50: Duration,
    p99: Duration,
    max: Duration,
    ok: u64,
    noupdate: u64,
    other: u64,
    non200: u64,
    /// Distinct machines that got an answer.
    distinct: u64,
    socket_errors: u64,
}

/// Waits for a `wrk` run and parses its `PLATTE-RESULT` line.
fn finish(child: Child) -> Result<WrkResult> {
    let out = child.wait_with_output().context("waiting for wrk")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success(),
        "wrk failed ({}):\n{stdout}{stderr}",
        out.status
    );
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("PLATTE-RESULT "))
        .with_context(|| format!("wrk printed no result line:\n{stdout}{stderr}"))?;
    let v: HashMap<&str, u64> = line
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
        .collect();
    let get = |k: &str| v.get(k).copied().unwrap_or(0);
    let secs = get("duration_us") as f64 / 1e6;
    Ok(WrkResult {
        requests: get("requests"),
        rps: if secs > 0.0 {
            get("requests") as f64 / secs
        } else {
            0.0
        },
        p50: Duration::from_micros(get("p50_us")),
        p99: Duration::from_micros(get("p99_us")),
        max: Duration::from_micros(get("max_us")),
        ok: get("ok"),
        noupdate: get("noupdate"),
        other: get("other"),
        non200: get("non200"),
        distinct: get("distinct"),
        socket_errors: get("connect") + get("read") + get("write") + get("timeout"),
    })
}

/// Starts every load; on a failure, those started are waited for.
fn spawn_all(loads: &[Load<'_>], secs: u64) -> Result<Vec<Child>> {
    let mut children = Vec::with_capacity(loads.len());
    for load in loads {
        match load.spawn(secs) {
            Ok(c) => children.push(c),
            Err(e) => {
                for c in children {
                    let _ = finish(c);
                }
                return Err(e);
            }
        }
    }
    Ok(children)
}

/// Waits for every load; sums their counts and rates, and keeps the slowest percentiles (those
/// of separate processes cannot be merged).
fn finish_all(children: Vec<Child>) -> Result<WrkResult> {
    let results: Vec<Result<WrkResult>> = children.into_iter().map(finish).collect();
    let mut sum = WrkResult::default();
    for r in results {
        let r = r?;
        sum.requests += r.requests;
        sum.rps += r.rps;
        sum.p50 = sum.p50.max(r.p50);
        sum.p99 = sum.p99.max(r.p99);
        sum.max = sum.max.max(r.max);
        sum.ok += r.ok;
        sum.noupdate += r.noupdate;
        sum.other += r.other;
        sum.non200 += r.non200;
        sum.distinct += r.distinct;
        sum.socket_errors += r.socket_errors;
    }
    Ok(sum)
}

// ---------------------------------------------------------------------------------------------
// Durability lag

/// How long the database took to hold what the server had acknowledged.
#[derive(Debug, Clone)]
enum Lag {
    Reached { after: Duration, target: u64 },
    NotReached { count: u64, target: u64 },
}

/// Rows of `instances` with `lo <= machine_id < hi` and `last_check_at >= since`.
const COUNT_CHECKED: &str = "SELECT COUNT(*) FROM instances
    WHERE machine_id >= ?1 AND machine_id < ?2 AND last_check_at >= ?3";
/// [`COUNT_CHECKED`] on PostgreSQL.
const COUNT_CHECKED_PG: &str = "SELECT COUNT(*) FROM instances
    WHERE machine_id >= $1 AND machine_id < $2 AND last_check_at >= $3";

/// What the database must come to hold: at least `target` rows of `instances` with
/// `lo <= machine_id < hi` checked at or after `since` ([`COUNT_CHECKED`]).
struct Probe {
    name: String,
    range: (String, String),
    since: i64,
    target: u64,
}

/// Polls the database every [`LAG_POLL`], all probes in each round, until each reaches its
/// target (at most [`LAG_CAP`]); the clock runs from `load_end` (when the load stopped).
async fn wait_durable(
    db: &mut DbConn,
    probes: Vec<Probe>,
    load_end: Instant,
) -> Result<Vec<LagRow>> {
    let mut lags: Vec<Option<Lag>> = vec![None; probes.len()];
    loop {
        for (p, lag) in probes.iter().zip(lags.iter_mut()) {
            if lag.is_some() {
                continue;
            }
            let count = db
                .count_checked(&p.range, p.since)
                .await
                .context("polling the database")?;
            if count >= p.target {
                *lag = Some(Lag::Reached {
                    after: load_end.elapsed(),
                    target: p.target,
                });
            } else if load_end.elapsed() >= LAG_CAP {
                *lag = Some(Lag::NotReached {
                    count,
                    target: p.target,
                });
            }
        }
        if lags.iter().all(Option::is_some) {
            break;
        }
        tokio::time::sleep(LAG_POLL).await;
    }
    Ok(probes
        .into_iter()
        .zip(lags)
        .map(|(p, lag)| LagRow {
            name: p.name,
            lag: lag.expect("every probe resolved"),
        })
        .collect())
}

// ---------------------------------------------------------------------------------------------
// Scenarios

/// What answers a scenario must get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Healthy,
    NoUpdate,
    Grant,
}

/// One line of the results table.
struct Row {
    name: String,
    connections: u32,
    expect: Expect,
    result: WrkResult,
}

/// One durability line.
struct LagRow {
    name: String,
    lag: Lag,
}

/// Everything measured.
#[derive(Default)]
struct Report {
    machines: u64,
    secs: u64,
    /// The database the server ran on: `SQLite` or `PostgreSQL <version>, synchronous_commit=…`.
    database: String,
    insert_time: Duration,
    start_time: Duration,
    memory_start: Option<Memory>,
    memory_after: Option<Memory>,
    rows: Vec<Row>,
    lags: Vec<LagRow>,
    server_problems: usize,
    server_samples: Vec<String>,
    stop_status: Option<ExitStatus>,
    stop_time: Duration,
    /// Why the scenarios stopped early, if they did.
    error: Option<String>,
}

/// The machine-id range of the checking machines: `m-00000000` ..< `m-<span>`.
fn known_range(span: u64) -> (String, String) {
    ("m-".to_owned(), format!("m-{span:08}"))
}

/// The machine-id range of the new machines tagged `tag`: `new-<tag>-*`.
fn new_range(tag: &str) -> (String, String) {
    (format!("new-{tag}-"), format!("new-{tag}."))
}

struct Bench<'a> {
    /// One base URL per server replica; each load is spread over them.
    bases: Vec<String>,
    scripts: &'a Scripts,
    secs: u64,
    span: u64,
    db: DbConn,
}

impl Bench<'_> {
    /// `connections` spread over the replicas as evenly as can be: (replica, its share), shares
    /// of none left out. Each replica's share is one `wrk` process; with several, each runs one
    /// thread (two cores in all).
    fn spread(&self, connections: u32) -> Vec<(usize, u32)> {
        let n = u32::try_from(self.bases.len()).unwrap_or(1).max(1);
        (0..n)
            .map(|i| (i as usize, connections / n + u32::from(i < connections % n)))
            .filter(|&(_, c)| c > 0)
            .collect()
    }

    fn threads(&self, wanted: u32, connections: u32) -> u32 {
        if self.bases.len() > 1 {
            1
        } else {
            wanted.min(connections)
        }
    }

    fn healthz(&self, connections: u32) -> Vec<Load<'_>> {
        self.spread(connections)
            .into_iter()
            .map(|(i, c)| Load {
                threads: self.threads(2, c),
                connections: c,
                script: &self.scripts.healthz,
                url: format!("{}/healthz", self.bases[i]),
                args: vec![],
            })
            .collect()
    }

    fn noupdate(&self, threads: u32, connections: u32) -> Vec<Load<'_>> {
        let parts = self.spread(connections);
        let n = parts.len() as u64;
        parts
            .into_iter()
            .map(|(i, c)| {
                let threads = self.threads(threads, c);
                // Each replica's share checks in from its own slice of the machines.
                let first = self.span * i as u64 / n.max(1);
                Load {
                    threads,
                    connections: c,
                    script: &self.scripts.noupdate,
                    url: format!("{}/v1/update/", self.bases[i]),
                    args: vec![
                        threads.to_string(),
                        self.span.to_string(),
                        first.to_string(),
                    ],
                }
            })
            .collect()
    }

    fn grants(&self, threads: u32, connections: u32, tag: &str) -> Vec<Load<'_>> {
        let several = self.bases.len() > 1;
        self.spread(connections)
            .into_iter()
            .map(|(i, c)| Load {
                threads: self.threads(threads, c),
                connections: c,
                script: &self.scripts.grants,
                url: format!("{}/v1/update/", self.bases[i]),
                // Machine ids `new-<tag>-r<i>-…` stay within the tag's range.
                args: vec![if several {
                    format!("{tag}-r{i}")
                } else {
                    tag.to_owned()
                }],
            })
            .collect()
    }

    /// Runs loads at once for the scenario's duration; their results summed (the percentiles:
    /// the slowest process's).
    fn run(&self, loads: &[Load<'_>]) -> Result<WrkResult> {
        finish_all(spawn_all(loads, self.secs)?)
    }

    /// Scenario 2: `noupdate` checks; then the lag until their check-ins are durable.
    async fn noupdate_checks(&mut self, report: &mut Report) -> Result<()> {
        let since = unix_now();
        let result = self.run(&self.noupdate(2, 32))?;
        let end = Instant::now();
        let probe = Probe {
            name: "noupdate check-ins (scenario 2)".into(),
            range: known_range(self.span),
            since,
            target: result.distinct.min(self.span),
        };
        report
            .lags
            .extend(wait_durable(&mut self.db, vec![probe], end).await?);
        report.rows.push(Row {
            name: "2 noupdate checks".into(),
            connections: 32,
            expect: Expect::NoUpdate,
            result,
        });
        Ok(())
    }

    /// Scenario 3: first-check grants at `connections`; then the lag until they are durable.
    async fn first_grants(&mut self, connections: u32, report: &mut Report) -> Result<()> {
        let tag = format!("c{connections}");
        let result = self.run(&self.grants(connections.min(2), connections, &tag))?;
        let end = Instant::now();
        let probe = Probe {
            name: format!("grants to new machines (scenario 3, {connections} conn.)"),
            range: new_range(&tag),
            since: 0,
            target: result.ok,
        };
        report
            .lags
            .extend(wait_durable(&mut self.db, vec![probe], end).await?);
        report.rows.push(Row {
            name: "3 first-check grants".into(),
            connections,
            expect: Expect::Grant,
            result,
        });
        Ok(())
    }

    /// Scenario 4: grants while the fleet checks in, two `wrk` processes at once.
    async fn grants_during_checkins(&mut self, report: &mut Report) -> Result<()> {
        let since = unix_now();
        let checks = spawn_all(&self.noupdate(1, 16), self.secs)?;
        let grants = match spawn_all(&self.grants(1, 16, "mix"), self.secs) {
            Ok(g) => g,
            Err(e) => {
                let _ = finish_all(checks);
                return Err(e);
            }
        };
        let checks = finish_all(checks);
        let grants = finish_all(grants)?;
        let checks = checks?;
        let end = Instant::now();
        let probes = vec![
            Probe {
                name: "noupdate check-ins (scenario 4)".into(),
                range: known_range(self.span),
                since,
                target: checks.distinct.min(self.span),
            },
            Probe {
                name: "grants to new machines (scenario 4)".into(),
                range: new_range("mix"),
                since: 0,
                target: grants.ok,
            },
        ];
        report
            .lags
            .extend(wait_durable(&mut self.db, probes, end).await?);
        report.rows.push(Row {
            name: "4 during check-ins: noupdate".into(),
            connections: 16,
            expect: Expect::NoUpdate,
            result: checks,
        });
        report.rows.push(Row {
            name: "4 during check-ins: grants".into(),
            connections: 16,
            expect: Expect::Grant,
            result: grants,
        });
        Ok(())
    }
}

/// Set-up, the four scenarios and the shutdown, on SQLite or (given) the scratch PostgreSQL
/// database with `replicas` server processes; returns what was measured.
async fn run(
    machines: u64,
    secs: u64,
    postgres: Option<&Scratch>,
    replicas: usize,
) -> Result<Report> {
    require_wrk()?;
    let bin = std::env::var("BENCH_SERVER_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_update-server").to_owned());
    let bin = bin.as_str();
    let work = tempfile::tempdir()?;
    let data = work.path().join("data");
    let keys = work.path().join("keys");
    let (db, database) = match postgres {
        None => (
            Database::Sqlite(data.join("platte.sqlite")),
            "SQLite".into(),
        ),
        Some(s) if replicas > 1 => (
            Database::Postgres(s.url.clone()),
            format!("{}, {replicas} replicas", s.describe),
        ),
        Some(s) => (Database::Postgres(s.url.clone()), s.describe.clone()),
    };
    let scripts = write_scripts(work.path())?;
    let key = trusted_key(&keys)?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let mut report = Report {
        machines,
        secs,
        database,
        ..Default::default()
    };

    println!(
        "release_day: {machines} registered machines, {secs} s per scenario, on {}",
        report.database
    );
    let server = Server::start(bin, &data, &db, &keys, &http).await?;
    let token = std::fs::read_to_string(data.join("admin-token"))
        .context("reading the admin token the server wrote")?;
    let group_id = create_catalogue(&http, &server, token.trim(), &key).await?;
    let (st, _) = server.stop()?;
    ensure!(st.success(), "the set-up server exited with {st}");
    println!("catalogue created (group {group_id}); server stopped");

    let t = Instant::now();
    insert_fleet(&db, machines, &group_id).await?;
    report.insert_time = t.elapsed();
    println!(
        "inserted {machines} instances in {:.1?}",
        report.insert_time
    );

    let t = Instant::now();
    // Replicas share the data directory (its package files and admin token) and the database.
    let mut servers = Vec::with_capacity(replicas);
    for _ in 0..replicas.max(1) {
        servers.push(Server::start(bin, &data, &db, &keys, &http).await?);
    }
    report.start_time = t.elapsed();
    report.memory_start = Some(servers[0].memory()?);
    println!(
        "{} restarted with the fleet in {:.1?}; pids {:?}",
        if servers.len() > 1 {
            "servers"
        } else {
            "server"
        },
        report.start_time,
        servers.iter().map(Server::pid).collect::<Vec<_>>()
    );

    let mut bench = Bench {
        bases: servers.iter().map(|s| s.base.clone()).collect(),
        scripts: &scripts,
        secs,
        span: CHECKING_MACHINES.min(machines),
        db: DbConn::open(&db, Access::ReadOnly).await?,
    };
    let loaded = scenarios(&mut bench, &mut report).await;
    report.memory_after = servers[0].memory().ok();
    for server in &servers {
        let log = server.log.lock().unwrap();
        report.server_problems += log.problems;
        report.server_samples.extend(
            log.samples
                .iter()
                .take(8 - report.server_samples.len().min(8))
                .cloned(),
        );
    }
    for server in servers {
        let (st, stop_time) = server.stop()?;
        report.stop_time = report.stop_time.max(stop_time);
        if report.stop_status.is_none_or(|s| s.success()) {
            report.stop_status = Some(st);
        }
    }
    if let Err(e) = loaded {
        report.error = Some(format!("{e:#}"));
    }
    Ok(report)
}

/// Scenarios 1 to 4, in order.
async fn scenarios(bench: &mut Bench<'_>, report: &mut Report) -> Result<()> {
    // Warm-up of the constant route (not reported).
    finish_all(spawn_all(&bench.healthz(32), 2)?)?;
    println!("running scenario 1 (constant route)");
    let result = bench.run(&bench.healthz(32))?;
    report.rows.push(Row {
        name: "1 constant route /healthz".into(),
        connections: 32,
        expect: Expect::Healthy,
        result,
    });
    println!("running scenario 2 (noupdate checks)");
    bench.noupdate_checks(report).await?;
    for c in [1, 4, 32] {
        println!("running scenario 3 (first-check grants, {c} connections)");
        bench.first_grants(c, report).await?;
    }
    println!("running scenario 4 (grants during check-ins)");
    bench.grants_during_checkins(report).await
}

// ---------------------------------------------------------------------------------------------
// Report

/// Why the answers of `row` fail the bench, if they do.
fn failures(row: &Row) -> Vec<String> {
    let r = &row.result;
    let mut out = Vec::new();
    let what = format!("{} ({} conn.)", row.name, row.connections);
    if r.requests == 0 {
        out.push(format!("{what}: no request completed"));
    }
    if r.non200 > 0 {
        out.push(format!("{what}: {} answers were not 200", r.non200));
    }
    if r.socket_errors > 0 {
        out.push(format!(
            "{what}: {} socket errors (connect/read/write/timeout)",
            r.socket_errors
        ));
    }
    if r.other > 0 {
        out.push(format!(
            "{what}: {} answers were neither ok nor noupdate",
            r.other
        ));
    }
    match row.expect {
        Expect::Healthy => {}
        Expect::NoUpdate if r.ok > 0 => {
            out.push(format!(
                "{what}: {} machines at 2.0.0 were offered an update",
                r.ok
            ));
        }
        Expect::Grant if r.noupdate > 0 => {
            out.push(format!(
                "{what}: {} new machines were answered noupdate",
                r.noupdate
            ));
        }
        Expect::NoUpdate | Expect::Grant => {}
    }
    out
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Prints the results table, memory, lags and goals; returns the failures.
fn print_report(report: &Report) -> Vec<String> {
    let ceiling = report
        .rows
        .first()
        .map(|r| r.result.rps)
        .filter(|&r| r > 0.0);
    let ratio = |rps: f64| ceiling.map_or(f64::NAN, |c| rps / c);
    println!();
    println!(
        "== release_day on {}: {} registered machines, {} s per scenario, wrk 2 threads in all",
        report.database, report.machines, report.secs
    );
    println!(
        "{:<30} {:>5} {:>9} {:>10} {:>10} {:>10} {:>6}   answers (ok/noupdate/other/non-200/socket errors)",
        "scenario", "conns", "req/s", "p50", "p99", "max", "ratio"
    );
    for row in &report.rows {
        let r = &row.result;
        println!(
            "{:<30} {:>5} {:>9.0} {:>10} {:>10} {:>10} {:>6.2}   {}/{}/{}/{}/{}",
            row.name,
            row.connections,
            r.rps,
            ms(r.p50),
            ms(r.p99),
            ms(r.max),
            ratio(r.rps),
            r.ok,
            r.noupdate,
            r.other,
            r.non200,
            r.socket_errors
        );
    }
    println!();
    println!(
        "fleet insert ({}, bench process): {:.1?}",
        report
            .database
            .split_whitespace()
            .next()
            .unwrap_or_default(),
        report.insert_time
    );
    println!(
        "server start with the fleet, to /healthz 200: {:.1?}",
        report.start_time
    );
    for (when, m) in [
        ("after start with the fleet", report.memory_start),
        ("after the load", report.memory_after),
    ] {
        match m {
            Some(m) => println!(
                "server RSS {when}: VmRSS {:.0} MiB, VmHWM {:.0} MiB",
                mib(m.rss_kib),
                mib(m.hwm_kib)
            ),
            None => println!("server RSS {when}: not measured"),
        }
    }
    for l in &report.lags {
        match &l.lag {
            Lag::Reached { after, target } => println!(
                "durable lag, {}: {target} machines in the database {} after the load ended",
                l.name,
                ms(*after)
            ),
            Lag::NotReached { count, target } => println!(
                "durable lag, {}: not reached within {LAG_CAP:?} ({count} of {target} machines)",
                l.name
            ),
        }
    }
    match report.stop_status {
        Some(st) => println!(
            "server exit after SIGTERM: {st} in {:.1?}",
            report.stop_time
        ),
        None => println!("server exit after SIGTERM: not reached"),
    }
    println!(
        "server log: {} warning/error lines{}",
        report.server_problems,
        if report.server_samples.is_empty() {
            String::new()
        } else {
            format!(
                ", first ones:\n    {}",
                report.server_samples.join("\n    ")
            )
        }
    );
    print_goals(report, ratio);

    let mut fails: Vec<String> = report.rows.iter().flat_map(failures).collect();
    fails.extend(
        report
            .error
            .iter()
            .map(|e| format!("scenarios stopped early: {e}")),
    );
    if let Some(st) = report.stop_status
        && !st.success()
    {
        fails.push(format!("the server exited with {st} after SIGTERM"));
    }
    fails
}

/// The issue's goals beside the measured figures.
fn print_goals(report: &Report, ratio: impl Fn(f64) -> f64) {
    let find = |name: &str, conns: u32| {
        report
            .rows
            .iter()
            .find(|r| r.name == name && r.connections == conns)
            .map(|r| &r.result)
    };
    let mark = |ok: bool| if ok { "met" } else { "MISSED" };
    println!();
    println!("goals (issue 17), for reference:");
    if let Some(r) = find("2 noupdate checks", 32) {
        let x = ratio(r.rps);
        println!("  noupdate >= 0.5x constant: {x:.2}x  {}", mark(x >= 0.5));
    }
    if let Some(r) = find("3 first-check grants", 32) {
        let x = ratio(r.rps);
        let ok = x >= 0.25 && r.p99 < Duration::from_millis(50);
        println!(
            "  grants >= 0.25x constant, p99 < 50 ms (32 conn.): {x:.2}x, p99 {}  {}",
            ms(r.p99),
            mark(ok)
        );
    }
    if let Some(r) = find("4 during check-ins: grants", 16) {
        let x = ratio(r.rps);
        let ok = x >= 0.1 && r.p99 < Duration::from_millis(100);
        println!(
            "  grants during check-ins >= 0.1x, p99 < 100 ms: {x:.2}x, p99 {}  {}",
            ms(r.p99),
            mark(ok)
        );
    }
    // The high-water mark after the load covers the start too.
    if let Some(m) = report.memory_after.or(report.memory_start) {
        println!(
            "  RSS <= 512 MB at 1M machines: VmHWM {:.0} MiB after the load, {} machines  {}",
            mib(m.hwm_kib),
            report.machines,
            if report.machines == 1_000_000 {
                mark(m.hwm_kib <= 512 * 1024)
            } else {
                "(not 1M machines)"
            }
        );
    }
    let worst = report
        .lags
        .iter()
        .map(|l| match &l.lag {
            Lag::Reached { after, .. } => Some(*after),
            Lag::NotReached { .. } => None,
        })
        .try_fold(Duration::ZERO, |m, a| a.map(|a| m.max(a)));
    match worst {
        Some(w) => println!(
            "  check-ins durable within 5 s: worst {}  {}",
            ms(w),
            mark(w <= Duration::from_secs(5))
        ),
        None => println!("  check-ins durable within 5 s: not reached within 60 s  MISSED"),
    }
}

/// [`run`] on a scratch database created on `server` and dropped afterwards, whether the run
/// succeeded, failed, panicked or was interrupted (Ctrl-C).
fn run_on_postgres(
    rt: &tokio::runtime::Runtime,
    server: &str,
    machines: u64,
    secs: u64,
    replicas: usize,
) -> Result<Report> {
    let scratch = rt.block_on(Scratch::create(server))?;
    println!("release_day: created database {}", scratch.name);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rt.block_on(async {
            tokio::select! {
                r = run(machines, secs, Some(&scratch), replicas) => r,
                _ = tokio::signal::ctrl_c() => bail!("interrupted"),
            }
        })
    }));
    match rt.block_on(scratch.drop_database()) {
        Ok(()) => println!("release_day: dropped database {}", scratch.name),
        Err(e) => eprintln!(
            "release_day: could not drop database {} (drop it by hand): {e:#}",
            scratch.name
        ),
    }
    outcome.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

fn main() -> ExitCode {
    let machines = match knob("BENCH_MACHINES", 1_000_000).and_then(|m| {
        ensure!(m > 0, "BENCH_MACHINES must be at least 1");
        Ok(m)
    }) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("release_day: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let secs = match knob("BENCH_SECS", 10) {
        Ok(s) if s > 0 => s,
        Ok(_) | Err(_) => {
            eprintln!("release_day: BENCH_SECS must be a whole number of seconds, at least 1");
            return ExitCode::FAILURE;
        }
    };
    let postgres = match std::env::var("BENCH_DATABASE") {
        Ok(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => Some(url),
        Ok(url) if url.trim().is_empty() => None,
        Ok(_) => {
            eprintln!("release_day: BENCH_DATABASE must be a postgres:// URL");
            return ExitCode::FAILURE;
        }
        Err(_) => None,
    };
    let replicas = match knob("BENCH_REPLICAS", 1) {
        Ok(n @ 1..=8) => n as usize,
        Ok(_) | Err(_) => {
            eprintln!("release_day: BENCH_REPLICAS must be a number from 1 to 8");
            return ExitCode::FAILURE;
        }
    };
    let compare = std::env::var("BENCH_COMPARE").is_ok_and(|v| v == "1");
    if (replicas > 1 || compare) && postgres.is_none() {
        eprintln!("release_day: BENCH_REPLICAS and BENCH_COMPARE need BENCH_DATABASE (PostgreSQL)");
        return ExitCode::FAILURE;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    // The runs: SQLite, or PostgreSQL with `replicas`; or, to compare, SQLite, PostgreSQL with
    // one replica and with several (`BENCH_REPLICAS`, else 3), one after the other.
    let runs: Vec<Option<usize>> = match (compare, &postgres) {
        (true, _) => vec![None, Some(1), Some(if replicas > 1 { replicas } else { 3 })],
        (false, Some(_)) => vec![Some(replicas)],
        (false, None) => vec![None],
    };
    let mut reports = Vec::new();
    let mut fails = Vec::new();
    for run_on in runs {
        let outcome = match (run_on, &postgres) {
            (Some(n), Some(server)) => run_on_postgres(&rt, server, machines, secs, n),
            _ => rt.block_on(run(machines, secs, None, 1)),
        };
        match outcome {
            Ok(r) => {
                fails.extend(print_report(&r));
                reports.push(r);
            }
            Err(e) => {
                eprintln!("release_day: FAILED: {e:#}");
                return ExitCode::FAILURE;
            }
        }
    }
    if let [sqlite, one, several] = reports.as_slice() {
        print_comparison(sqlite, one, several);
    }
    if fails.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!();
        for f in &fails {
            eprintln!("release_day: FAILED: {f}");
        }
        ExitCode::FAILURE
    }
}

/// The three runs of `BENCH_COMPARE` side by side: each scenario's rate on SQLite, on PostgreSQL
/// with one replica and with several, with the ratios the issue sets goals for.
fn print_comparison(sqlite: &Report, one: &Report, several: &Report) {
    let rate = |r: &Report, row: &Row| {
        r.rows
            .iter()
            .find(|x| x.name == row.name && x.connections == row.connections)
            .map(|x| (x.result.rps, x.result.p99))
    };
    println!();
    println!(
        "== side by side, {} registered machines, {} s per scenario (req/s, p99)",
        sqlite.machines, sqlite.secs
    );
    println!(
        "{:<30} {:>5} {:>18} {:>18} {:>8} {:>18} {:>8}",
        "scenario", "conns", "SQLite", "PostgreSQL x1", "x1/SQL", "PostgreSQL xN", "xN/x1"
    );
    let cell = |v: Option<(f64, Duration)>| {
        v.map_or("-".to_owned(), |(rps, p99)| {
            format!("{rps:.0} ({})", ms(p99))
        })
    };
    let ratio = |a: Option<(f64, Duration)>, b: Option<(f64, Duration)>| match (a, b) {
        (Some((a, _)), Some((b, _))) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".to_owned(),
    };
    for row in &sqlite.rows {
        let (s, o, n) = (rate(sqlite, row), rate(one, row), rate(several, row));
        println!(
            "{:<30} {:>5} {:>18} {:>18} {:>8} {:>18} {:>8}",
            row.name,
            row.connections,
            cell(s),
            cell(o),
            ratio(o, s),
            cell(n),
            ratio(n, o)
        );
    }
    println!("({})", several.database);
    println!(
        "goals (issue 19): PostgreSQL grants >= 0.5x SQLite's; several replicas >= 0.8x one's"
    );
}
