//! Finding the workspace binaries the scenarios drive, and building them first.
//!
//! Cargo builds another package's binaries only when asked, so the harness asks: when run by
//! cargo (`CARGO` is set, as `cargo test` and `cargo run` do), it runs
//! `$CARGO build --bins -p update-server -p update-agent -p payloads` for the profile of the
//! running executable once per process, then uses the binaries in `target/<profile>/`.
//! `PLATTE_BIN_DIR` points at prebuilt binaries instead (nothing is built);
//! `PLATTE_E2E_NO_BUILD=1` uses whatever is in `target/<profile>/`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::error::{Error, Result, io};

/// Packages whose binaries the harness drives.
pub const PACKAGES: [&str; 3] = ["update-server", "update-agent", "payloads"];

/// Paths of the workspace binaries.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// Directory holding them (`target/<profile>/`).
    pub dir: PathBuf,
    /// `update-server`.
    pub server: PathBuf,
    /// `update-agent`.
    pub agent: PathBuf,
    /// `payload`.
    pub payload: PathBuf,
    /// `updatectl`, when built.
    pub updatectl: Option<PathBuf>,
}

impl Binaries {
    /// The binaries, built first when running under cargo (see the module docs).
    ///
    /// Building happens once per process; later calls return the same result.
    pub fn get() -> Result<Binaries> {
        static ONCE: OnceLock<Result<Binaries, String>> = OnceLock::new();
        ONCE.get_or_init(|| Self::prepare().map_err(|e| e.to_string()))
            .clone()
            .map_err(|detail| Error::Unexpected {
                what: "workspace binaries",
                detail,
            })
    }

    fn prepare() -> Result<Binaries> {
        if let Some(dir) = std::env::var_os("PLATTE_BIN_DIR") {
            return Self::in_dir(PathBuf::from(dir));
        }
        let dir = profile_dir()?;
        let skip = std::env::var("PLATTE_E2E_NO_BUILD").is_ok_and(|v| v == "1");
        if let (Some(cargo), false) = (std::env::var_os("CARGO"), skip) {
            build(Path::new(&cargo), &dir)?;
        }
        Self::in_dir(dir)
    }

    /// The binaries in `dir`, without building anything.
    pub fn in_dir(dir: PathBuf) -> Result<Binaries> {
        let find = |name: &str| -> Result<PathBuf> {
            let p = dir.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                Err(Error::BinaryMissing {
                    name: name.to_owned(),
                    dir: dir.clone(),
                })
            }
        };
        Ok(Binaries {
            server: find("update-server")?,
            agent: find("update-agent")?,
            payload: find("payload")?,
            updatectl: find("updatectl").ok(),
            dir,
        })
    }
}

/// `target/<profile>/`: the directory of the running executable, or its parent for test
/// executables (which live in `target/<profile>/deps/`).
pub fn profile_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(io("locating the running executable", "."))?;
    let mut dir = exe
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| Error::Unexpected {
            what: "executable path",
            detail: format!("{} has no parent directory", exe.display()),
        })?;
    if dir.file_name().is_some_and(|n| n == "deps")
        && let Some(parent) = dir.parent()
    {
        dir = parent.to_path_buf();
    }
    Ok(dir)
}

/// Runs `cargo build --bins` for [`PACKAGES`] in the profile `dir` belongs to.
fn build(cargo: &Path, dir: &Path) -> Result<()> {
    let profile = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug")
        .to_owned();
    let mut cmd = Command::new(cargo);
    // `cargo test`/`cargo run` describe the running package in the environment; build scripts
    // (ring's, for one) rerun when those change, so a nested build must not inherit them.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        let per_package = [
            "CARGO_MANIFEST_",
            "CARGO_PKG_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
            "CARGO_CFG_",
            "CARGO_PRIMARY_PACKAGE",
            "CARGO_TARGET_TMPDIR",
        ]
        .iter()
        .any(|p| k.starts_with(p));
        if per_package || k == "OUT_DIR" {
            cmd.env_remove(&k);
        }
    }
    cmd.arg("build").arg("--bins");
    for p in PACKAGES {
        cmd.args(["-p", p]);
    }
    match profile.as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    let line = format!(
        "{} {}",
        cargo.display(),
        cmd.get_args()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    eprintln!("platte-e2e: building the binaries it drives: {line}");
    let status = cmd.status().map_err(io("running cargo", cargo))?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::Build {
            command: line,
            status,
        })
    }
}
