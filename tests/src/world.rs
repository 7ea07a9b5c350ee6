//! A test world: a temporary directory, the binaries, a publisher key pair, a running update
//! server trusting it, and helpers for the operator's steps (app, channel, group, releases).
//! Everything it started is stopped and every file removed when it is dropped, also when the
//! test panics (`PLATTE_E2E_KEEP=1` keeps the directory and prints where it is).
//!
//! A world runs its server in one of two [`Mode`]s: a single `update-server serve` on SQLite, or
//! [`REPLICAS`] replicas on one throwaway PostgreSQL database ([`crate::pg`]) sharing one data
//! directory, with a round-robin TCP forwarder ([`Proxy::round_robin`]) in front, so each new
//! agent connection goes to the next replica. [`in_both_modes!`](crate::in_both_modes) runs a
//! scenario in both.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use testkit::tcp_proxy::Proxy;

use crate::bins::Binaries;
use crate::error::{Error, Result, io};
use crate::machine::{APP, DiskLayout, Machine, Site};
use crate::pg::TestDatabase;
use crate::process::poll_until;
use crate::release::{self, Publisher};
use crate::server::Server;

/// How many server replicas a world runs in [`Mode::Replicas`].
pub const REPLICAS: usize = 2;

/// How long the replicas may take to agree on a catalogue change ([`World::settle`]): they poll
/// the generation every 250 ms besides being notified.
const SETTLE_LIMIT: Duration = Duration::from_secs(10);

/// How a world's update server runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One `update-server serve` with its SQLite database in its data directory.
    Single,
    /// [`REPLICAS`] `update-server serve` processes on one throwaway PostgreSQL database, sharing
    /// one data directory (package files, tokens), started one after the other. Agents (and the
    /// download URLs the servers hand out) reach them through a round-robin forwarder: each new
    /// connection goes to the next replica. The admin CLI and API go to replica 0
    /// ([`World::server`]).
    Replicas,
}

/// Generates, for each scenario function `NAME(mode: Mode)` named, a module `NAME` with the
/// tests `single` ([`Mode::Single`]) and `replicas` ([`Mode::Replicas`]). The replica variant
/// returns at once where no PostgreSQL answers (see [`crate::pg::available`]).
#[macro_export]
macro_rules! in_both_modes {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[test]
            fn single() {
                super::$name($crate::Mode::Single)
            }

            #[test]
            fn replicas() {
                if $crate::pg::available() {
                    super::$name($crate::Mode::Replicas)
                }
            }
        }
    )+};
}

/// A published release.
#[derive(Debug, Clone)]
pub struct Release {
    /// Version.
    pub version: String,
    /// The image it carries.
    pub image: Vec<u8>,
    /// The signed payload file.
    pub payload: PathBuf,
    /// Package id on the server.
    pub package_id: String,
    /// SHA-256 (hex) of the payload, as the server stores it.
    pub sha256: String,
}

/// Server, publisher and directory shared by a scenario's machines.
#[derive(Debug)]
pub struct World {
    /// The update server, replica 0 in [`Mode::Replicas`]: the admin CLI and API go here
    /// (declared first: stopped before the directory goes).
    pub server: Server,
    /// The further replicas (replica 1…; none in [`Mode::Single`]).
    others: Vec<Server>,
    /// The round-robin forwarder in front of the replicas ([`Mode::Replicas`]).
    balancer: Option<Proxy>,
    /// The replicas' database, dropped once they are stopped ([`Mode::Replicas`]).
    database: Option<TestDatabase>,
    /// Workspace binaries.
    pub bins: Binaries,
    /// The release key pair.
    pub publisher: Publisher,
    mode: Mode,
    /// Base URL machines are configured with (`http://host:port`).
    agent_base: String,
    omaha_url: String,
    /// Removes the directory when dropped (`None`: kept).
    _dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl World {
    /// Builds (if needed) and finds the binaries, makes a key pair, starts a server.
    pub fn new() -> Result<World> {
        Self::start(Mode::Single)
    }

    /// As [`World::new`], with extra `update-server serve` arguments.
    pub fn with_server_args(args: &[&str]) -> Result<World> {
        Self::start_with(Mode::Single, args)
    }

    /// As [`World::new`], with the server(s) run in `mode`.
    pub fn start(mode: Mode) -> Result<World> {
        Self::start_with(mode, &[])
    }

    /// As [`World::start`], with extra `update-server serve` arguments (for every replica).
    pub fn start_with(mode: Mode, args: &[&str]) -> Result<World> {
        let bins = Binaries::get()?;
        let dir = tempfile::Builder::new()
            .prefix("platte-e2e-")
            .tempdir()
            .map_err(io("creating a temporary directory", std::env::temp_dir()))?;
        let path = dir.path().to_path_buf();
        Self::in_dir_as(bins, path, Some(dir), mode, args)
    }

    /// A world with one server in an existing directory `path` (kept afterwards), e.g. the
    /// quickstart's.
    pub fn in_dir(
        bins: Binaries,
        path: PathBuf,
        dir: Option<tempfile::TempDir>,
        args: &[&str],
    ) -> Result<World> {
        Self::in_dir_as(bins, path, dir, Mode::Single, args)
    }

    fn in_dir_as(
        bins: Binaries,
        path: PathBuf,
        dir: Option<tempfile::TempDir>,
        mode: Mode,
        args: &[&str],
    ) -> Result<World> {
        let publisher = Publisher::keygen(&bins, &path.join("release-keys"))?;
        let trusted = path.join("server-trusted-keys");
        publisher.install_public(&trusted)?;
        let (server, others, balancer, database) = match mode {
            Mode::Single => (
                Server::start_with(&bins, &path, &trusted, args)?,
                Vec::new(),
                None,
                None,
            ),
            Mode::Replicas => {
                let database = TestDatabase::create()?;
                // The forwarder first: its address is the replicas' public URL (unless the
                // caller sets one, e.g. a proxy of its own in front of the forwarder).
                let balancer = Proxy::round_robin(&[])?;
                let public = format!("http://{}", balancer.addr());
                // Scenarios side by side stay well under the database's 100 connections.
                let mut serve = vec![
                    "--database",
                    database.url(),
                    "--database-max-connections",
                    "8",
                ];
                if !args.contains(&"--public-url") {
                    serve.extend(["--public-url", &public]);
                }
                serve.extend_from_slice(args);
                // One after the other: the first creates the schema and the tokens the others
                // read from the shared data directory.
                let mut replicas = Vec::with_capacity(REPLICAS);
                for i in 0..REPLICAS {
                    let log = match i {
                        0 => path.join("server.log"),
                        _ => path.join(format!("server-{i}.log")),
                    };
                    replicas.push(Server::start_logged(&bins, &path, &trusted, &log, &serve)?);
                }
                let addrs: Vec<&str> = replicas.iter().map(Server::addr).collect();
                balancer.set_upstreams(&addrs);
                let mut replicas = replicas.into_iter();
                let first = replicas.next().ok_or_else(|| Error::Unexpected {
                    what: "replica set",
                    detail: "no replica started".into(),
                })?;
                (first, replicas.collect(), Some(balancer), Some(database))
            }
        };
        let agent_base = match &balancer {
            Some(b) => format!("http://{}", b.addr()),
            None => server.url(),
        };
        let mut dir = dir;
        if std::env::var("PLATTE_E2E_KEEP").is_ok_and(|v| v == "1")
            && let Some(d) = dir.take()
        {
            eprintln!("platte-e2e: keeping {}", d.keep().display());
        }
        Ok(World {
            server,
            others,
            balancer,
            database,
            bins,
            publisher,
            mode,
            omaha_url: format!("{agent_base}/v1/update/"),
            agent_base,
            _dir: dir,
            path,
        })
    }

    /// How the server runs.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Every server process: [`World::server`] first, then the further replicas.
    pub fn servers(&self) -> Vec<&Server> {
        std::iter::once(&self.server).chain(&self.others).collect()
    }

    /// Server (replica) `i` of [`World::servers`], e.g. to kill and restart it.
    ///
    /// # Panics
    /// When there is no server `i`.
    pub fn server_mut(&mut self, i: usize) -> &mut Server {
        match i {
            0 => &mut self.server,
            _ => &mut self.others[i - 1],
        }
    }

    /// The index (in [`World::servers`]) of the server the newest agent connection went to: in
    /// [`Mode::Replicas`] the replica the forwarder chose for it, else 0.
    pub fn last_agent_server(&self) -> usize {
        self.balancer
            .as_ref()
            .and_then(|b| b.routed().last().copied())
            .unwrap_or(0)
    }

    /// How many agent connections the forwarder sent to each server of [`World::servers`] so far
    /// ([`Mode::Replicas`]; empty with a single server, which is reached directly).
    pub fn agent_connections(&self) -> Vec<usize> {
        let Some(b) = &self.balancer else {
            return Vec::new();
        };
        let mut per = vec![0; 1 + self.others.len()];
        for i in b.routed() {
            if let Some(n) = per.get_mut(i) {
                *n += 1;
            }
        }
        per
    }

    /// The base URL (`http://host:port`) machines created from now on are configured with: the
    /// server, the replicas' forwarder, or what [`World::route_agents_via`] set.
    pub fn agent_url(&self) -> &str {
        &self.agent_base
    }

    /// `host:port` a proxy of the test's own in front of the server should forward to: the
    /// server itself, or the replicas' forwarder.
    pub fn upstream(&self) -> String {
        match &self.balancer {
            Some(b) => b.addr().to_string(),
            None => self.server.addr().to_owned(),
        }
    }

    /// The sum over every server process of one Prometheus series (see [`Server::metric`]):
    /// each replica counts what it served.
    pub fn metric(&self, series: &str) -> Result<f64> {
        self.servers().iter().map(|s| s.metric(series)).sum()
    }

    /// With replicas: waits until every replica serves the catalogue replica 0 serves (apps,
    /// channels, groups with their policies, packages, as the admin API shows each replica's
    /// in-memory copy). A replica picks up a change made through another one (or a rollout
    /// halted by another one) a moment later, on a notification from PostgreSQL or its periodic
    /// poll of the catalogue generation; the process that made the change has reloaded before
    /// answering, so agreement means every replica serves it. The world's own operator steps
    /// call this after each change; a scenario changing the catalogue with
    /// [`Server::cli`] directly calls it itself. Without replicas: nothing to wait for.
    pub fn settle(&self) -> Result<()> {
        if self.others.is_empty() {
            return Ok(());
        }
        let views = || -> Vec<Result<Value, String>> {
            self.servers()
                .iter()
                .map(|s| s.catalogue_view().map_err(|e| e.to_string()))
                .collect()
        };
        poll_until(
            "the replicas to serve the same catalogue",
            SETTLE_LIMIT,
            || {
                let seen = views();
                let first = seen.first()?.as_ref().ok()?;
                seen.iter()
                    .all(|v| v.as_ref().is_ok_and(|v| v == first))
                    .then_some(())
            },
            || format!("the replicas' catalogues: {:?}", views()),
        )
    }

    /// The name of the replicas' PostgreSQL database ([`Mode::Replicas`]).
    pub fn database(&self) -> Option<&str> {
        self.database.as_ref().map(TestDatabase::name)
    }

    /// Makes machines created from now on talk to `base` (`http://host:port`, e.g. a
    /// [`Proxy`] in front of the server) instead of the server itself.
    pub fn route_agents_via(&mut self, base: &str) {
        base.clone_into(&mut self.agent_base);
        self.omaha_url = format!("{base}/v1/update/");
    }

    /// The world's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where machines are created.
    pub fn site(&self) -> Site<'_> {
        Site {
            bins: &self.bins,
            dir: &self.path,
            publisher: &self.publisher,
            omaha_url: &self.omaha_url,
        }
    }

    /// A machine running `version` from slot A (see [`Machine::create`]).
    pub fn machine(
        &self,
        name: &str,
        seed: u64,
        layout: DiskLayout,
        version: &str,
    ) -> Result<Machine> {
        Machine::create(&self.site(), name, seed, layout, version)
    }

    /// Operator setup through the admin CLI: app [`APP`], channel `stable`, group `stable`
    /// following it.
    pub fn setup_app(&self) -> Result<()> {
        self.server.cli(&["app", "create", APP, "Platte demo OS"])?;
        self.server.cli(&["channel", "create", APP, "stable"])?;
        self.server
            .cli(&["group", "create", APP, "stable", "--channel", "stable"])?;
        self.settle()
    }

    /// Builds a demo image of `len` bytes for `version`, signs it (`payload build`) and
    /// publishes it (`update-server package publish`). The channel is not changed.
    pub fn publish(&self, version: &str, len: usize) -> Result<Release> {
        self.publish_image(version, release::os_image(version, len))
    }

    /// Signs `image` as `version` (`payload build`) and publishes it. The channel is not
    /// changed.
    pub fn publish_image(&self, version: &str, image: Vec<u8>) -> Result<Release> {
        let dir = self.releases_dir()?;
        let img = dir.join(format!("usr-{version}.img"));
        std::fs::write(&img, &image).map_err(io("writing an image", &img))?;
        let payload = dir.join(format!("platte-{version}.payload"));
        self.publisher.build(APP, version, &img, &payload)?;
        self.publish_payload(version, image, payload)
    }

    /// Builds a delta from `from_image` (the image of `from_version`) to `to`'s image
    /// (`payload delta`) and publishes it (`update-server package publish`), linked to `to`'s
    /// package; returns the package as the server shows it, with its deltas.
    pub fn publish_delta(
        &self,
        from_version: &str,
        from_image: &[u8],
        to: &Release,
    ) -> Result<Value> {
        let dir = self.releases_dir()?;
        let from = dir.join(format!("usr-{from_version}.source.img"));
        std::fs::write(&from, from_image).map_err(io("writing an image", &from))?;
        let to_img = dir.join(format!("usr-{}.target.img", to.version));
        std::fs::write(&to_img, &to.image).map_err(io("writing an image", &to_img))?;
        let out = dir.join(format!("platte-{from_version}-to-{}.payload", to.version));
        self.publisher
            .delta(APP, from_version, &from, &to.version, &to_img, &out)?;
        let p = out.display().to_string();
        let v = self.server.cli_json(&["package", "publish", &p])?;
        self.settle()?;
        Ok(v)
    }

    /// Operator setup of a runtime extension's own app through the admin CLI: app `app` named
    /// `name`, channel `stable`, group `stable` following it (see docs/usage/container-runtime.md).
    pub fn setup_extension_app(&self, app: &str, name: &str) -> Result<()> {
        self.server.cli(&["app", "create", app, name])?;
        self.server.cli(&["channel", "create", app, "stable"])?;
        self.server
            .cli(&["group", "create", app, "stable", "--channel", "stable"])?;
        self.settle()
    }

    /// Builds a demo sysext image of `len` bytes for extension `name` `version`, signs it as a
    /// `file` payload of `app` supporting `os_versions` (`payload build --kind file --meta
    /// os.versions=…`) and publishes it. No channel is changed.
    pub fn publish_extension(
        &self,
        app: &str,
        name: &str,
        version: &str,
        os_versions: &str,
        len: usize,
    ) -> Result<Release> {
        let dir = self.releases_dir()?;
        let image = release::extension_image(name, version, len);
        let img = dir.join(format!("{name}-{version}.raw"));
        std::fs::write(&img, &image).map_err(io("writing an extension image", &img))?;
        let payload = dir.join(format!("{name}-{version}.payload"));
        self.publisher
            .build_extension(app, version, os_versions, &img, &payload)?;
        self.publish_payload(version, image, payload)
    }

    fn releases_dir(&self) -> Result<PathBuf> {
        let dir = self.path.join("releases");
        std::fs::create_dir_all(&dir).map_err(io("creating the releases directory", &dir))?;
        Ok(dir)
    }

    /// `update-server package publish PAYLOAD --json`; the package's id and SHA-256.
    fn publish_payload(&self, version: &str, image: Vec<u8>, payload: PathBuf) -> Result<Release> {
        let p = payload.display().to_string();
        let v = self.server.cli_json(&["package", "publish", &p])?;
        self.settle()?;
        let field = |k: &str| -> Result<String> {
            v[k].as_str()
                .map(str::to_owned)
                .ok_or_else(|| Error::Unexpected {
                    what: "package publish output",
                    detail: format!("no `{k}` in {v}"),
                })
        };
        Ok(Release {
            version: version.to_owned(),
            image,
            payload,
            package_id: field("id")?,
            sha256: field("sha256_hex")?,
        })
    }

    /// Points channel `stable` at `release`.
    pub fn point_stable(&self, release: &Release) -> Result<()> {
        self.point(APP, release)
    }

    /// Points channel `stable` of `app` at `release` (`update-server channel set`).
    pub fn point(&self, app: &str, release: &Release) -> Result<()> {
        self.server
            .cli(&["channel", "set", app, "stable", &release.package_id])?;
        self.settle()
    }

    /// Replaces group `stable`'s rollout policy (`update-server rollout set`).
    pub fn set_policy(&self, policy: &Value) -> Result<()> {
        self.set_policy_of(APP, policy)
    }

    /// Replaces the rollout policy of group `stable` of `app`.
    pub fn set_policy_of(&self, app: &str, policy: &Value) -> Result<()> {
        self.server
            .cli(&["rollout", "set", app, "stable", &policy.to_string()])?;
        self.settle()
    }

    /// `update-server rollout status --json` of group `stable`.
    pub fn rollout_status(&self) -> Result<Value> {
        self.rollout_status_of(APP)
    }

    /// `update-server rollout status --json` of group `stable` of `app` (with replicas, once
    /// they agree: a halt one of them decided is seen by replica 0 too).
    pub fn rollout_status_of(&self, app: &str) -> Result<Value> {
        self.settle()?;
        self.server.cli_json(&["rollout", "status", app, "stable"])
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // Stop the servers before `database` is dropped and `dir` (a TempDir) removes its files.
        let _ = self.server.kill();
        for s in &mut self.others {
            let _ = s.kill();
        }
    }
}
