//! End-to-end test world: a real `update-server` (in-process, over loopback), a small fault
//! injecting HTTP proxy in front of it, a GPT disk image, and the `update-agent` binary run
//! against them with a test config directory and host root.
//!
//! Include with `mod support;`. The submodules: [`agent_bus`] (the daemon on a private bus,
//! `updatectl`, polling), [`ext_world`] (the runtime-extension world). What is not about the
//! agent comes from the test kit (`testkit`): the fault-injecting proxy, the private
//! `dbus-daemon` and the logind and systemd stand-ins, `sgdisk` disk images, image bytes and
//! signing keys; a test that needs only those uses `testkit` directly.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod agent_bus;
pub mod ext_world;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use update_server::config::Settings;
use update_server::server::{RunningServer, start};

pub use testkit::fault_proxy::Proxy;
pub use testkit::release::{noise, release_key};

/// Platte's default app id (the agent's default `updates.app_id`).
pub const APP: &str = "{7b3f6a2e-5c1d-4e8a-9f40-2d6b8c1e9a53}";
/// Machine id of the test host.
pub const MACHINE: &str = "0123456789abcdef0123456789abcdef";
/// Image chunk size in payloads: one operation per 256 KiB.
pub const CHUNK: u32 = 256 << 10;
/// Size of test images.
pub const IMAGE_LEN: usize = 6 << 20;

/// A release image: noise with a zero hole in the middle (so ZERO operations are exercised).
pub fn image(seed: u64) -> Vec<u8> {
    let mut v = noise(IMAGE_LEN, seed);
    v[(2 << 20)..(2 << 20) + (512 << 10)].fill(0);
    v
}

/// Writes an executable `/bin/sh` script with `body`.
pub fn script(path: &Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The lines of the file `p` (none when it does not exist).
pub fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// `cmd` without the proxy variables of the environment the tests run in: the agent talks to
/// the servers on loopback directly.
pub fn without_proxy_env(cmd: &mut Command) -> &mut Command {
    for v in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        cmd.env_remove(v);
    }
    cmd
}

/// Builds and signs a payload of `image` as `version`.
pub fn build_payload(key: &payloads::SigningKey, version: &str, image: &[u8]) -> Vec<u8> {
    let mut opts = testkit::release::options(APP, version);
    opts.chunk_size = CHUNK;
    opts.threads = 1;
    testkit::release::signed_payload_with(key, image, &opts)
}

/// The test world.
pub struct World {
    pub dir: tempfile::TempDir,
    pub rt: tokio::runtime::Runtime,
    pub server: RunningServer,
    pub base: String,
    pub http: reqwest::Client,
    pub proxy: Proxy,
    pub key: payloads::SigningKey,
    pub img: PathBuf,
    pub conf: PathBuf,
    pub root: PathBuf,
    pub state_dir: PathBuf,
    pub log: PathBuf,
}

impl World {
    /// Server (trusting the publisher key), proxy, disk image with slot A filled, agent config
    /// for version `running` booted from slot A.
    pub fn new(running: &str) -> Self {
        Self::with_server(running, |_, _| {})
    }

    /// As [`World::new`], with `tweak` applied to the server settings before it starts; it gets
    /// the proxy's address (`http://host:port`) for settings that name URLs.
    pub fn with_server(running: &str, tweak: impl FnOnce(&mut Settings, &str)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (key, server_keys, agent_keys) = release_key(dir.path());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let proxy = rt.block_on(Proxy::start());
        let mut s = Settings::for_tests(&dir.path().join("server-data"));
        // Download URLs point at the proxy too.
        s.public_url = Some(format!("http://{}", proxy.addr));
        s.trusted_keys = Some(server_keys);
        s.flush_interval = Duration::from_millis(50);
        tweak(&mut s, &format!("http://{}", proxy.addr));
        let server = rt.block_on(start(s)).unwrap();
        let base = format!("http://{}", server.addr);
        let http = reqwest::Client::new();
        // Readiness: poll /readyz (bounded), no fixed sleep.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = rt.block_on(async {
                http.get(format!("{base}/readyz"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            });
            if ok {
                break;
            }
            assert!(Instant::now() < deadline, "server never became ready");
            std::thread::yield_now();
        }
        proxy.with(|f| f.upstream = base.clone());
        let img = testkit::sgdisk::make_image(dir.path());
        // Slot A holds the running release.
        let a = testkit::sgdisk::info(&img, 1, "First sector");
        let a_off: u64 = a.split_whitespace().next().unwrap().parse::<u64>().unwrap() * 512;
        write_at(&img, a_off, &noise(IMAGE_LEN, 0xA));
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("proc/sys/kernel/random")).unwrap();
        std::fs::write(root.join("etc/machine-id"), format!("{MACHINE}\n")).unwrap();
        let conf = dir.path().join("conf");
        std::fs::create_dir_all(&conf).unwrap();
        // Written as /var/lib/platte in the config; `--host-root` puts it under the root.
        let state_dir = root.join("var/lib/platte");
        let log = dir.path().join("agent.log");
        let w = Self {
            dir,
            rt,
            server,
            base,
            http,
            proxy,
            key,
            img,
            conf,
            root,
            state_dir,
            log,
        };
        w.set_boot_id("boot-1");
        w.write_config("10-base.toml", &w.base_config(running, &agent_keys));
        w
    }

    fn base_config(&self, running: &str, keys: &Path) -> String {
        format!(
            r#"[updates]
server = "http://{proxy}/v1/update/"
group = "stable"
trusted_keys_dir = "{keys}"

[identity]
os_version = "{running}"
board = "amd64-usr"

[boot]
disk = "{img}"
booted_slot = "A"

{common}"#,
            proxy = self.proxy.addr,
            common = testkit::agent::COMMON_CONFIG,
            keys = keys.display(),
            img = self.img.display(),
        )
    }

    /// Writes a drop-in.
    pub fn write_config(&self, name: &str, text: &str) {
        std::fs::write(self.conf.join(name), text).unwrap();
    }

    /// Sets the boot id (a new one simulates a reboot).
    pub fn set_boot_id(&self, id: &str) {
        let hex: String = id.bytes().map(|b| format!("{b:02x}")).collect();
        let h = format!("{hex:0<32}");
        let uuid = format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        );
        std::fs::write(
            self.root.join("proc/sys/kernel/random/boot_id"),
            format!("{uuid}\n"),
        )
        .unwrap();
    }

    /// Simulates a reboot into `slot` running `version`.
    pub fn reboot_into(&self, boot_id: &str, slot: &str, version: &str) {
        self.set_boot_id(boot_id);
        self.write_config(
            "60-booted.toml",
            &format!(
                "[boot]\nbooted_slot = \"{slot}\"\n\n[identity]\nos_version = \"{version}\"\n"
            ),
        );
    }

    /// An admin API call.
    pub fn api(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let token = &self.server.admin_token;
        let (st, v) = self.rt.block_on(testkit::http::api(
            &self.http, &self.base, token, method, path, body,
        ));
        (st.as_u16(), v)
    }

    /// Publishes a payload; returns its package id.
    pub fn publish(&self, payload: &[u8]) -> String {
        let resp = self.rt.block_on(testkit::http::publish_text(
            &self.http,
            &self.base,
            &self.server.admin_token,
            "platte_update.payload",
            payload.to_vec(),
        ));
        assert_eq!(resp.0, 201, "publish: {}", resp.1);
        let v: Value = serde_json::from_str(&resp.1).unwrap();
        v["id"].as_str().unwrap().to_owned()
    }

    /// App, channel `stable` pointing at a published `version` of `image`, group `stable`.
    pub fn seed(&self, version: &str, image: &[u8]) -> Vec<u8> {
        let (st, v) = self.api(
            reqwest::Method::POST,
            "/apps",
            Some(json!({"id": APP, "name": "Platte"})),
        );
        assert_eq!(st, 201, "{v}");
        let payload = build_payload(&self.key, version, image);
        let pkg = self.publish(&payload);
        let (st, v) = self.api(
            reqwest::Method::POST,
            &format!("/apps/{APP}/channels"),
            Some(json!({"name": "stable", "packages": {"amd64": pkg}})),
        );
        assert_eq!(st, 201, "{v}");
        let (st, v) = self.api(
            reqwest::Method::POST,
            &format!("/apps/{APP}/groups"),
            Some(json!({"name": "stable", "channel": "stable"})),
        );
        assert_eq!(st, 201, "{v}");
        payload
    }

    /// Publishes `version` and points the channel at it.
    pub fn release(&self, version: &str, image: &[u8]) -> Vec<u8> {
        let payload = build_payload(&self.key, version, image);
        let pkg = self.publish(&payload);
        let (st, v) = self.api(
            reqwest::Method::PATCH,
            &format!("/apps/{APP}/channels/stable"),
            Some(json!({"packages": {"amd64": pkg}})),
        );
        assert_eq!(st, 200, "{v}");
        payload
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_update-agent"));
        c.arg("--config-dir")
            .arg(&self.conf)
            .arg("--host-root")
            .arg(&self.root)
            .args(args)
            .env("RUST_LOG", "update_agent=debug,info")
            .stdin(Stdio::null());
        without_proxy_env(&mut c);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        c.stdout(log.try_clone().unwrap()).stderr(log);
        c
    }

    /// Runs `update-agent run --once`; returns its exit code.
    pub fn once(&self) -> i32 {
        let st: ExitStatus = self.command(&["run", "--once"]).status().unwrap();
        st.code().unwrap_or(-1)
    }

    /// Runs `update-agent run --once` with further arguments (e.g. `--repair`); returns its
    /// exit code.
    pub fn once_with(&self, extra: &[&str]) -> i32 {
        let args: Vec<&str> = ["run", "--once"].iter().chain(extra).copied().collect();
        let st: ExitStatus = self.command(&args).status().unwrap();
        st.code().unwrap_or(-1)
    }

    /// Writes `data` at byte `off` of partition `n` (behind the agent's back).
    pub fn write_part(&self, n: u32, off: u64, data: &[u8]) {
        let (start, _) = self.part_range(n);
        write_at(&self.img, start + off, data);
    }

    /// Starts `update-agent run` (the daemon) or `run --once` in the background.
    pub fn spawn(&self, once: bool) -> Child {
        let args: &[&str] = if once { &["run", "--once"] } else { &["run"] };
        self.command(args).spawn().unwrap()
    }

    /// The agent's log so far (for assertion messages).
    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The reboot-required sentinel's content (`None`: no sentinel). The default
    /// `/run/reboot-required`, under the host root.
    pub fn reboot_required(&self) -> Option<String> {
        std::fs::read_to_string(self.root.join("run/reboot-required")).ok()
    }

    /// The persisted agent state.
    pub fn state(&self) -> Value {
        std::fs::read(self.state_dir.join("state.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null)
    }

    /// Polls `cond` on the state until it holds (bounded by `limit`).
    pub fn wait_state(&self, limit: Duration, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let s = self.state();
            if cond(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; state {s}\nagent log:\n{}",
                self.agent_log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The server's recorded events of the test machine (newest first), polled until `cond`.
    pub fn wait_events(&self, what: &str, cond: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (_, v) = self.api(
                reqwest::Method::GET,
                &format!("/events?machine={MACHINE}"),
                None,
            );
            let list = v.as_array().cloned().unwrap_or_default();
            if cond(&list) {
                return list;
            }
            assert!(
                Instant::now() < deadline,
                "server never recorded {what}: {v}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// (offset, length) of partition `n` in bytes.
    pub fn part_range(&self, n: u32) -> (u64, u64) {
        let first: u64 = testkit::sgdisk::info(&self.img, n, "First sector")
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let last: u64 = testkit::sgdisk::info(&self.img, n, "Last sector")
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        (first * 512, (last - first + 1) * 512)
    }

    /// The first `len` bytes of partition `n`.
    pub fn read_part(&self, n: u32, len: usize) -> Vec<u8> {
        use std::os::unix::fs::FileExt;
        let (off, _) = self.part_range(n);
        let f = std::fs::File::open(&self.img).unwrap();
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, off).unwrap();
        buf
    }
}

fn write_at(path: &Path, off: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(data, off).unwrap();
}

/// The omaha event `(type, result, errorcode)` triples recorded by the server, oldest first.
pub fn event_triples(events: &[Value]) -> Vec<(i64, i64, Option<i64>)> {
    let mut v: Vec<_> = events
        .iter()
        .map(|e| {
            (
                e["event_type"].as_i64().unwrap(),
                e["event_result"].as_i64().unwrap(),
                e["error_code"].as_i64(),
            )
        })
        .collect();
    v.reverse();
    v
}
