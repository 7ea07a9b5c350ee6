//! A test world: a temporary directory, the binaries, a publisher key pair, a running update
//! server trusting it, and helpers for the operator's steps (app, channel, group, releases).
//! Everything it started is stopped and every file removed when it is dropped, also when the
//! test panics (`PLATTE_E2E_KEEP=1` keeps the directory and prints where it is).

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::bins::Binaries;
use crate::error::{Error, Result, io};
use crate::machine::{APP, DiskLayout, Machine, Site};
use crate::release::{self, Publisher};
use crate::server::Server;

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
    /// The update server (declared first: stopped before the directory goes).
    pub server: Server,
    /// Workspace binaries.
    pub bins: Binaries,
    /// The release key pair.
    pub publisher: Publisher,
    omaha_url: String,
    /// Removes the directory when dropped (`None`: kept).
    _dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl World {
    /// Builds (if needed) and finds the binaries, makes a key pair, starts a server.
    pub fn new() -> Result<World> {
        Self::with_server_args(&[])
    }

    /// As [`World::new`], with extra `update-server serve` arguments.
    pub fn with_server_args(args: &[&str]) -> Result<World> {
        let bins = Binaries::get()?;
        let dir = tempfile::Builder::new()
            .prefix("platte-e2e-")
            .tempdir()
            .map_err(io("creating a temporary directory", std::env::temp_dir()))?;
        let path = dir.path().to_path_buf();
        Self::in_dir(bins, path, Some(dir), args)
    }

    /// A world in an existing directory `path` (kept afterwards), e.g. the quickstart's.
    pub fn in_dir(
        bins: Binaries,
        path: PathBuf,
        dir: Option<tempfile::TempDir>,
        args: &[&str],
    ) -> Result<World> {
        let publisher = Publisher::keygen(&bins, &path.join("release-keys"))?;
        let trusted = path.join("server-trusted-keys");
        publisher.install_public(&trusted)?;
        let server = Server::start_with(&bins, &path, &trusted, args)?;
        let omaha_url = server.omaha_url();
        let mut dir = dir;
        if std::env::var("PLATTE_E2E_KEEP").is_ok_and(|v| v == "1")
            && let Some(d) = dir.take()
        {
            eprintln!("platte-e2e: keeping {}", d.keep().display());
        }
        Ok(World {
            server,
            bins,
            publisher,
            omaha_url,
            _dir: dir,
            path,
        })
    }

    /// Makes machines created from now on talk to `base` (`http://host:port`, e.g. a
    /// [`crate::proxy::Proxy`] in front of the server) instead of the server itself.
    pub fn route_agents_via(&mut self, base: &str) {
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
        Ok(())
    }

    /// Builds a demo image of `len` bytes for `version`, signs it (`payload build`) and
    /// publishes it (`update-server package publish`). The channel is not changed.
    pub fn publish(&self, version: &str, len: usize) -> Result<Release> {
        let dir = self.releases_dir()?;
        let image = release::os_image(version, len);
        let img = dir.join(format!("usr-{version}.img"));
        std::fs::write(&img, &image).map_err(io("writing an image", &img))?;
        let payload = dir.join(format!("platte-{version}.payload"));
        self.publisher.build(APP, version, &img, &payload)?;
        self.publish_payload(version, image, payload)
    }

    /// Operator setup of a runtime extension's own app through the admin CLI: app `app` named
    /// `name`, channel `stable`, group `stable` following it (see docs/container-runtime.md).
    pub fn setup_extension_app(&self, app: &str, name: &str) -> Result<()> {
        self.server.cli(&["app", "create", app, name])?;
        self.server.cli(&["channel", "create", app, "stable"])?;
        self.server
            .cli(&["group", "create", app, "stable", "--channel", "stable"])?;
        Ok(())
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
        Ok(())
    }

    /// Replaces group `stable`'s rollout policy (`update-server rollout set`).
    pub fn set_policy(&self, policy: &Value) -> Result<()> {
        self.set_policy_of(APP, policy)
    }

    /// Replaces the rollout policy of group `stable` of `app`.
    pub fn set_policy_of(&self, app: &str, policy: &Value) -> Result<()> {
        self.server
            .cli(&["rollout", "set", app, "stable", &policy.to_string()])?;
        Ok(())
    }

    /// `update-server rollout status --json` of group `stable`.
    pub fn rollout_status(&self) -> Result<Value> {
        self.rollout_status_of(APP)
    }

    /// `update-server rollout status --json` of group `stable` of `app`.
    pub fn rollout_status_of(&self, app: &str) -> Result<Value> {
        self.server.cli_json(&["rollout", "status", app, "stable"])
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // Stop the server before `dir` (a TempDir) removes its files.
        let _ = self.server.kill();
    }
}
