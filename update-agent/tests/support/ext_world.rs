//! Test world for runtime extensions: a real `update-server` in-process (the test's tokio
//! runtime) with an OS app and an extension app, a private `dbus-daemon` with the systemd
//! stand-in, a recording refresh command and a controllable health command, and the agent-side
//! directories. Part of `support`: include with `mod support;`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use testkit::dbus::DbusDaemon;
use testkit::release::{options, signed_payload_with};
use testkit::systemd::SystemdStandin;
use update_agent::extensions::{
    ExtensionSettings, Extensions, ExtensionsEnv, ExtensionsSettings, Systemd,
};
use update_agent::identity::Identity;
use update_agent::omaha_client::OmahaClient;
use update_server::config::Settings;
use update_server::server::{RunningServer, start};

use super::{MACHINE, lines, noise, release_key, script};

/// The OS app id (the agent's default `updates.app_id`).
pub const OS_APP: &str = super::APP;
/// The containerd extension's app id.
pub const EXT_APP: &str = "{5e8a1c7d-2f4b-4c6e-9a1d-3b7c9e2f4a60}";
/// The extension's name.
pub const EXT: &str = "containerd";
/// The unit it restarts.
pub const UNIT: &str = "containerd.service";
/// A sysext-like image for `version` (content differs per version).
pub fn ext_image(version: &str) -> Vec<u8> {
    let seed = version
        .bytes()
        .fold(7u64, |a, b| a.wrapping_mul(31).wrapping_add(u64::from(b)));
    noise(100_000, seed)
}

/// A signed extension payload (kind `file`); `os_versions: None` leaves `os.versions` out.
pub fn ext_payload(
    key: &payloads::SigningKey,
    version: &str,
    os_versions: Option<&str>,
) -> Vec<u8> {
    let mut o = options(EXT_APP, version);
    o.kind = payloads::Kind::File;
    o.threads = 1;
    o.chunk_size = 64 << 10;
    if let Some(v) = os_versions {
        o.metadata.insert("os.versions".into(), v.into());
    }
    signed_payload_with(key, &ext_image(version), &o)
}

/// A signed OS payload (kind `partition`).
pub fn os_payload(key: &payloads::SigningKey, version: &str) -> Vec<u8> {
    let mut o = options(OS_APP, version);
    o.threads = 1;
    signed_payload_with(key, &noise(64 << 10, 3), &o)
}

/// The host side of the containerd extension, under one directory: where images and the
/// `containerd.raw` link go, a refresh command that records its arguments, and a health command
/// that records where `containerd.raw` points when it runs and exits with the code the test
/// sets ([`ExtHost::set_health`]; 0 until then). The refresh command fails while the link points
/// at an image the test names ([`ExtHost::fail_refresh_of`]).
pub struct ExtHost {
    /// Holds the `containerd.raw` link.
    pub install_dir: PathBuf,
    /// Holds the `containerd-VERSION.raw` images.
    pub image_dir: PathBuf,
    /// The refresh command (`refresh.sh`).
    pub refresh_command: PathBuf,
    /// The health command (`health.sh`).
    pub health_command: PathBuf,
    refresh_log: PathBuf,
    refresh_fail: PathBuf,
    health_log: PathBuf,
    health_rc: PathBuf,
}

impl ExtHost {
    /// Writes the scripts into `dir`; the link goes to `install_dir`, images to `image_dir`.
    pub fn new(dir: &Path, install_dir: PathBuf, image_dir: PathBuf) -> Self {
        let h = Self {
            install_dir,
            image_dir,
            refresh_command: dir.join("refresh.sh"),
            health_command: dir.join("health.sh"),
            refresh_log: dir.join("refresh.log"),
            refresh_fail: dir.join("refresh.fail"),
            health_log: dir.join("health.log"),
            health_rc: dir.join("health.rc"),
        };
        script(
            &h.refresh_command,
            &format!(
                "echo \"$*\" >> '{}'\n[ \"$(readlink '{}')\" = \"$(cat '{}' 2>/dev/null)\" ] && exit 1\nexit 0",
                h.refresh_log.display(),
                h.install_dir.join("containerd.raw").display(),
                h.refresh_fail.display()
            ),
        );
        script(
            &h.health_command,
            &format!(
                "readlink '{}' >> '{}'\nexit $(cat '{}' 2>/dev/null || echo 0)",
                h.install_dir.join("containerd.raw").display(),
                h.health_log.display(),
                h.health_rc.display()
            ),
        );
        h
    }

    /// Where `containerd.raw` points (`None`: no link).
    pub fn link(&self) -> Option<PathBuf> {
        std::fs::read_link(self.install_dir.join("containerd.raw")).ok()
    }

    /// The image file of `version`.
    pub fn image(&self, version: &str) -> PathBuf {
        self.image_dir.join(format!("containerd-{version}.raw"))
    }

    /// Lines the refresh command recorded (its arguments, one run a line).
    pub fn refreshes(&self) -> Vec<String> {
        lines(&self.refresh_log)
    }

    /// Link targets the health command saw.
    pub fn health_runs(&self) -> Vec<String> {
        lines(&self.health_log)
    }

    /// Makes the refresh command fail while `containerd.raw` points at `version`'s image.
    pub fn fail_refresh_of(&self, version: &str) {
        let target = self.image(version);
        std::fs::write(&self.refresh_fail, target.display().to_string()).unwrap();
    }

    /// Makes the health command exit with `rc`.
    pub fn set_health(&self, rc: i32) {
        std::fs::write(&self.health_rc, format!("{rc}\n")).unwrap();
    }

    /// Files in the image directory, sorted.
    pub fn image_files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.image_dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

/// The world.
pub struct World {
    pub dir: tempfile::TempDir,
    pub bus: DbusDaemon,
    pub systemd: SystemdStandin,
    pub server: RunningServer,
    pub base: String,
    pub http: reqwest::Client,
    pub key: payloads::SigningKey,
    pub agent_keys: PathBuf,
    pub state_dir: PathBuf,
    /// The extension's host side.
    pub host: ExtHost,
}

impl World {
    /// Starts everything; both apps exist with group `stable` following channel `stable`
    /// (without packages yet).
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (key, server_keys, agent_keys) = release_key(dir.path());
        let bus = DbusDaemon::start();
        let systemd = SystemdStandin::start(&bus.address).await.unwrap();
        let mut s = Settings::for_tests(&dir.path().join("server-data"));
        s.trusted_keys = Some(server_keys);
        s.flush_interval = Duration::from_millis(50);
        let server = start(s).await.unwrap();
        let base = format!("http://{}", server.addr);
        let host = ExtHost::new(
            dir.path(),
            dir.path().join("var/lib/extensions"),
            dir.path().join("var/lib/platte/extensions"),
        );
        let w = Self {
            state_dir: dir.path().join("var/lib/platte"),
            host,
            dir,
            bus,
            systemd,
            server,
            base,
            http: reqwest::Client::new(),
            key,
            agent_keys,
        };
        for (app, name) in [(OS_APP, "Platte"), (EXT_APP, "containerd")] {
            w.api(
                reqwest::Method::POST,
                "/apps",
                json!({"id": app, "name": name}),
                201,
            )
            .await;
            w.api(
                reqwest::Method::POST,
                &format!("/apps/{app}/channels"),
                json!({"name": "stable", "packages": {}}),
                201,
            )
            .await;
            w.api(
                reqwest::Method::POST,
                &format!("/apps/{app}/groups"),
                json!({"name": "stable", "channel": "stable"}),
                201,
            )
            .await;
        }
        w
    }

    /// An admin API call that must answer `want`.
    pub async fn api(&self, method: reqwest::Method, path: &str, body: Value, want: u16) -> Value {
        let resp = self
            .http
            .request(method, format!("{}/api/v1{path}", self.base))
            .bearer_auth(&self.server.admin_token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let st = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        assert_eq!(st, want, "{path}: {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    /// A GET of the admin API.
    pub async fn get(&self, path: &str) -> Value {
        let resp = self
            .http
            .get(format!("{}/api/v1{path}", self.base))
            .bearer_auth(&self.server.admin_token)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{path}");
        resp.json().await.unwrap()
    }

    /// Publishes `payload` and points `app`'s channel `stable` at it.
    pub async fn release(&self, app: &str, payload: Vec<u8>) {
        let resp = self
            .http
            .post(format!("{}/api/v1/packages?filename=p.payload", self.base))
            .bearer_auth(&self.server.admin_token)
            .body(payload)
            .send()
            .await
            .unwrap();
        let st = resp.status().as_u16();
        let v: Value = resp.json().await.unwrap();
        assert_eq!(st, 201, "publish: {v}");
        let id = v["id"].as_str().unwrap().to_owned();
        self.api(
            reqwest::Method::PATCH,
            &format!("/apps/{app}/channels/stable"),
            json!({"packages": {"amd64": id}}),
            200,
        )
        .await;
    }

    /// Pauses or resumes `app`'s group `stable`.
    pub async fn pause(&self, app: &str, paused: bool) {
        self.api(
            reqwest::Method::PATCH,
            &format!("/apps/{app}/groups/stable"),
            json!({"policy": {"paused": paused}}),
            200,
        )
        .await;
    }

    /// Events the server recorded for `app` from the test machine, oldest first, as
    /// `(type, result, error code without flags, previous version, version)`.
    pub async fn events(&self, app: &str) -> Vec<(i64, i64, Option<i64>, String, String)> {
        let norm = app.trim_matches(['{', '}']).to_ascii_lowercase();
        let v = self
            .get(&format!("/events?machine={MACHINE}&app={norm}"))
            .await;
        let mut out: Vec<_> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["event_type"].as_i64().unwrap(),
                    e["event_result"].as_i64().unwrap(),
                    e["error_code"].as_i64().map(|c| c & 0x0FFF_FFFF),
                    e["previous_version"].as_str().unwrap_or("").to_owned(),
                    e["version"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect();
        out.reverse();
        out
    }

    /// This host running `os_version` in boot `boot`.
    pub fn identity(&self, os_version: &str, boot: &str) -> Identity {
        Identity {
            machine_id: MACHINE.into(),
            boot_id: boot.into(),
            app_id: OS_APP.into(),
            group: "stable".into(),
            os_version: os_version.into(),
            board: "amd64-usr".into(),
            arch: "x86_64".into(),
            alias: None,
        }
    }

    /// The extension settings: containerd restarting its unit, the recording refresh command,
    /// the health script.
    pub fn settings(&self) -> ExtensionsSettings {
        ExtensionsSettings {
            sysext_refresh_command: vec![
                self.host.refresh_command.display().to_string(),
                "refresh".into(),
            ],
            image_dir: self.host.image_dir.clone(),
            refresh_timeout: Duration::from_secs(30),
            extensions: vec![ExtensionSettings {
                name: EXT.into(),
                app_id: EXT_APP.into(),
                group: "stable".into(),
                install_dir: self.host.install_dir.clone(),
                restart_units: vec![UNIT.into()],
                health_command: Some(vec![self.host.health_command.display().to_string()]),
                health_timeout: Duration::from_secs(30),
                restart_timeout: Duration::from_secs(20),
                pin_version: None,
                enabled: true,
            }],
        }
    }

    /// The Omaha client of the agent.
    pub fn omaha(&self) -> OmahaClient {
        OmahaClient::new(
            self.http.clone(),
            format!("{}/v1/update/", self.base).parse().unwrap(),
            Duration::from_secs(10),
        )
    }

    /// The agent's extensions, as after a start in boot `boot` running `os_version`.
    pub async fn extensions(&self, os_version: &str, boot: &str) -> Extensions {
        Extensions::new(
            self.settings(),
            ExtensionsEnv {
                state_dir: self.state_dir.clone(),
                trusted_keys_dir: self.agent_keys.clone(),
                http: self.http.clone(),
                omaha: self.omaha(),
                identity: self.identity(os_version, boot),
                systemd: Some(Systemd::at_address(&self.bus.address).await.unwrap()),
            },
        )
        .unwrap()
    }
}
