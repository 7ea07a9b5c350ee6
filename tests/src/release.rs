//! Release engineering as an operator does it, through the `payload` CLI: a publisher key pair,
//! demo OS images that say which version they are, demo runtime extension (sysext) images, and
//! signed payloads built from them (`partition` payloads for the OS, `file` payloads declaring
//! `os.versions` for extensions).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::bins::Binaries;
use crate::error::{Error, Result, io};

/// First line of every demo OS image; the second is `VERSION_ID=…`, as in an os-release file.
pub const IMAGE_MAGIC: &str = "PLATTE-DEMO-OS";
/// First line of every demo extension image; then `ID=NAME` and `VERSION=…`.
pub const EXTENSION_MAGIC: &str = "PLATTE-DEMO-SYSEXT";
/// Bytes of image data per payload operation (many operations: checkpoints have room to land).
pub const CHUNK_SIZE: u32 = 256 << 10;

/// A publisher key pair made by `payload keygen`; the private half never leaves the test dir.
#[derive(Debug, Clone)]
pub struct Publisher {
    payload_bin: PathBuf,
    /// Private signing key (PKCS#8 PEM).
    pub key: PathBuf,
    /// Public key (SPKI PEM), installed on the server and on hosts.
    pub public: PathBuf,
}

impl Publisher {
    /// `payload keygen --out DIR/release`.
    pub fn keygen(bins: &Binaries, dir: &Path) -> Result<Publisher> {
        std::fs::create_dir_all(dir).map_err(io("creating a key directory", dir))?;
        let prefix = dir.join("release");
        run(Command::new(&bins.payload)
            .arg("keygen")
            .arg("--out")
            .arg(&prefix))
        .map(drop)?;
        Ok(Publisher {
            payload_bin: bins.payload.clone(),
            key: prefix.with_extension("key"),
            public: prefix.with_extension("pub"),
        })
    }

    /// Copies the public key into `dir` (a trust store: the server's or a host's).
    pub fn install_public(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(io("creating a trust store", dir))?;
        let to = dir.join("release.pub");
        std::fs::copy(&self.public, &to).map_err(io("installing a public key", &to))?;
        Ok(())
    }

    /// The `payload build` arguments for `image` as `version` of `app`, written to `out`.
    pub fn build_args(&self, app: &str, version: &str, image: &Path, out: &Path) -> Vec<String> {
        let mut args = vec!["build".to_owned()];
        args.extend(self.common_args(app, version, out));
        args.extend(["--image".to_owned(), image.display().to_string()]);
        args
    }

    /// The arguments `payload build` and `payload delta` share: key, app, version, arch, chunk
    /// size, threads, output.
    fn common_args(&self, app: &str, version: &str, out: &Path) -> Vec<String> {
        [
            "--key",
            &self.key.display().to_string(),
            "--app",
            app,
            "--version",
            version,
            "--arch",
            "amd64",
            "--chunk-size",
            &CHUNK_SIZE.to_string(),
            "--threads",
            "1",
            "--out",
            &out.display().to_string(),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    }

    /// Builds and signs a payload (`payload build`).
    pub fn build(&self, app: &str, version: &str, image: &Path, out: &Path) -> Result<()> {
        run(Command::new(&self.payload_bin).args(self.build_args(app, version, image, out)))
            .map(drop)
    }

    /// Builds and signs a delta payload (`payload delta`) from `from` (the image of
    /// `from_version`) to `to` (the image of `version`), written to `out`.
    pub fn delta(
        &self,
        app: &str,
        from_version: &str,
        from: &Path,
        version: &str,
        to: &Path,
        out: &Path,
    ) -> Result<()> {
        let mut args = vec!["delta".to_owned()];
        args.extend(self.common_args(app, version, out));
        args.extend([
            "--to".to_owned(),
            to.display().to_string(),
            "--from".to_owned(),
            from.display().to_string(),
            "--from-version".to_owned(),
            from_version.to_owned(),
        ]);
        run(Command::new(&self.payload_bin).args(args)).map(drop)
    }

    /// The `payload build` arguments of a runtime extension: `image` as `version` of `app`, kind
    /// `file`, supporting the OS versions `os_versions` (metadata `os.versions`, e.g.
    /// `1.* 2.0.0`), written to `out`.
    pub fn extension_build_args(
        &self,
        app: &str,
        version: &str,
        os_versions: &str,
        image: &Path,
        out: &Path,
    ) -> Vec<String> {
        let mut args = self.build_args(app, version, image, out);
        args.extend([
            "--kind".to_owned(),
            "file".to_owned(),
            "--meta".to_owned(),
            format!("os.versions={os_versions}"),
        ]);
        args
    }

    /// Builds and signs a runtime extension payload (`payload build --kind file --meta
    /// os.versions=…`).
    pub fn build_extension(
        &self,
        app: &str,
        version: &str,
        os_versions: &str,
        image: &Path,
        out: &Path,
    ) -> Result<()> {
        let args = self.extension_build_args(app, version, os_versions, image, out);
        run(Command::new(&self.payload_bin).args(args)).map(drop)
    }
}

fn run(cmd: &mut Command) -> Result<String> {
    let line = format!("{cmd:?}");
    let out = cmd
        .output()
        .map_err(io("running payload", PathBuf::from(cmd.get_program())))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(Error::Command {
            command: line,
            code: out.status.code(),
            stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

/// `len` incompressible bytes seeded by `seed_text`.
fn noise(seed_text: &str, len: usize) -> Vec<u8> {
    testkit::release::noise(len, testkit::release::text_seed(seed_text))
}

/// `v` with `head` written over its start (as much of it as fits).
fn with_header(head: &str, mut v: Vec<u8>) -> Vec<u8> {
    let n = head.len().min(v.len());
    v[..n].copy_from_slice(&head.as_bytes()[..n]);
    v
}

/// A demo OS image of `len` bytes for `version`: a two-line header naming it, then
/// incompressible bytes seeded by the version, with a zero-filled stretch (ZERO operations).
pub fn os_image(version: &str, len: usize) -> Vec<u8> {
    let head = format!("{IMAGE_MAGIC}\nVERSION_ID={version}\n");
    let mut v = with_header(&head, noise(version, len));
    if len >= 2 << 20 {
        v[(1 << 20)..(1 << 20) + (512 << 10)].fill(0);
    }
    v
}

/// A demo runtime extension image of `len` bytes: a three-line header (`PLATTE-DEMO-SYSEXT`,
/// `ID=NAME`, `VERSION=…`), then incompressible bytes seeded by name and version.
pub fn extension_image(name: &str, version: &str, len: usize) -> Vec<u8> {
    let head = format!("{EXTENSION_MAGIC}\nID={name}\nVERSION={version}\n");
    with_header(&head, noise(&format!("{name}-{version}"), len))
}

/// The version a demo OS image names in its header (`None`: not a demo image).
pub fn image_version(bytes: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(bytes.get(..256.min(bytes.len()))?);
    let mut lines = text.lines();
    (lines.next()? == IMAGE_MAGIC).then_some(())?;
    lines.next()?.strip_prefix("VERSION_ID=").map(str::to_owned)
}
