//! Reading the filesystem just written into the target slot (its kernel, initrd and
//! os-release): by mounting the partition read-only, or from a directory holding its tree; and
//! resolving paths inside it as if it were `/`.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use crate::boot::{BootError, TargetSlot};

/// Most symlinks followed when resolving a path inside a slot.
const MAX_SYMLINKS: usize = 40;

/// Resolves `path` inside the directory tree `root` as if `root` were `/`: symlinks are
/// followed (absolute targets re-rooted at `root`), `..` never leaves `root`.
pub fn resolve_in_root(root: &Path, path: &Path) -> io::Result<PathBuf> {
    let mut pending: Vec<std::ffi::OsString> = path
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut done: Vec<std::ffi::OsString> = Vec::new();
    let mut links = 0;
    while let Some(c) = pending.pop() {
        if c == ".." {
            done.pop();
            continue;
        }
        let mut here = root.to_path_buf();
        here.extend(&done);
        here.push(&c);
        match fs::symlink_metadata(&here) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(io::Error::other(format!(
                        "too many symbolic links resolving {}",
                        path.display()
                    )));
                }
                let target = fs::read_link(&here)?;
                if target.is_absolute() {
                    done.clear();
                }
                for t in target.components().rev() {
                    match t {
                        Component::Normal(n) => pending.push(n.to_owned()),
                        Component::ParentDir => pending.push("..".into()),
                        _ => {}
                    }
                }
            }
            Ok(_) => done.push(c),
            Err(e) => return Err(e),
        }
    }
    let mut out = root.to_path_buf();
    out.extend(&done);
    Ok(out)
}

/// Gives read access to the filesystem just written into the target slot.
pub trait SlotFiles: std::fmt::Debug + Send + Sync {
    /// Makes `target`'s filesystem readable (e.g. mounts it read-only), calls `f` with its root
    /// directory, and undoes it again, also when `f` fails.
    fn with_root(
        &self,
        target: &TargetSlot,
        f: &mut dyn FnMut(&Path) -> Result<(), BootError>,
    ) -> Result<(), BootError>;
}

/// Mounts the target partition (`/dev/disk/by-partuuid/<uuid>`) read-only with `mount(8)`
/// under a private directory, and unmounts it afterwards. Needs root and the `@mount` system
/// calls (see `docs/usage/agent.md` for the unit drop-in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSlotFiles {
    /// The device directory (`/dev`).
    pub dev_dir: PathBuf,
    /// Directory under which the mount point is created (`/run/platte`).
    pub mount_base: PathBuf,
}

impl MountSlotFiles {
    fn run(&self, what: &str, cmd: &mut Command) -> Result<(), String> {
        let out = cmd
            .output()
            .map_err(|e| format!("cannot run {what}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{what} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

impl SlotFiles for MountSlotFiles {
    fn with_root(
        &self,
        target: &TargetSlot,
        f: &mut dyn FnMut(&Path) -> Result<(), BootError>,
    ) -> Result<(), BootError> {
        let device = self
            .dev_dir
            .join("disk/by-partuuid")
            .join(target.partuuid().to_string());
        let fail = |detail: String| BootError::SlotFiles {
            slot: target.slot(),
            detail,
        };
        let dir = self
            .mount_base
            .join(format!("slot-{}.{}", target.slot(), std::process::id()));
        fs::create_dir_all(&dir).map_err(|e| fail(format!("creating {}: {e}", dir.display())))?;
        if let Err(e) = self.run(
            "mount",
            Command::new("mount")
                .args(["-o", "ro,nodev,nosuid,noexec"])
                .arg(&device)
                .arg(&dir),
        ) {
            let _ = fs::remove_dir(&dir);
            return Err(fail(format!(
                "{} on {}: {e}",
                device.display(),
                dir.display()
            )));
        }
        let result = f(&dir);
        let unmounted = self.run("umount", Command::new("umount").arg(&dir));
        match unmounted {
            Ok(()) => {
                let _ = fs::remove_dir(&dir);
            }
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot unmount the target slot");
                if result.is_ok() {
                    return Err(fail(format!("{}: {e}", dir.display())));
                }
            }
        }
        result
    }
}

/// Reads each slot's files from a directory that holds its tree (`a/` and `b/` below `base`):
/// for tests, and for hosts where something else unpacks the slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirSlotFiles {
    /// Holds `a/` and `b/`.
    pub base: PathBuf,
}

impl SlotFiles for DirSlotFiles {
    fn with_root(
        &self,
        target: &TargetSlot,
        f: &mut dyn FnMut(&Path) -> Result<(), BootError>,
    ) -> Result<(), BootError> {
        f(&self
            .base
            .join(target.slot().to_string().to_ascii_lowercase()))
    }
}
