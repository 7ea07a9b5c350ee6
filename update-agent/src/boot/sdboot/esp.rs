//! Writing to the ESP: crash-safe file writes (through a hidden temporary sibling, then fsync of
//! the directory) and the install of the target slot's kernel and initrd.

use std::fs::{self, File};
use std::io;
use std::path::Path;

use super::{SdbootBackend, resolve_in_root};
use crate::atomic_file::{self, WriteError};
use crate::boot::{BootError, TargetSlot};

pub(super) fn esp_err(
    path: &Path,
    action: &'static str,
) -> impl FnOnce(io::Error) -> BootError + use<> {
    let path = path.to_owned();
    move |source| BootError::Esp {
        path,
        action,
        source,
    }
}

/// A step of a crash-safe ESP write failed.
pub(super) fn esp_write(e: WriteError) -> BootError {
    BootError::Esp {
        path: e.path,
        action: e.step,
        source: e.source,
    }
}

/// fsyncs a directory of the ESP (see [`atomic_file::sync_dir`]).
pub(super) fn sync_dir(dir: &Path) -> Result<(), BootError> {
    atomic_file::sync_dir(dir).map_err(esp_write)
}

/// Writes `dst` crash-safely through its hidden `.NAME.tmp` sibling ([`atomic_file::replace`]).
pub(super) fn install_file(
    dst: &Path,
    write: impl FnOnce(&mut File) -> io::Result<()>,
) -> Result<(), BootError> {
    atomic_file::replace(dst, &atomic_file::tmp_path(dst), 0o644, write).map_err(esp_write)
}

impl SdbootBackend {
    /// Copies the target's kernel and initrd onto the ESP (`/<name>/<slot>/vmlinuz`,
    /// `initrd.img`), each crash-safely; returns the slot's `PRETTY_NAME`, if it has one.
    pub(super) fn install_kernel(&self, target: &TargetSlot) -> Result<Option<String>, BootError> {
        let dst_dir = self.config.esp.join(self.kernel_dir(target.slot()));
        fs::create_dir_all(&dst_dir).map_err(esp_err(&dst_dir, "creating"))?;
        let mut pretty = None;
        let slot = target.slot();
        let cfg = &self.config;
        self.files.with_root(target, &mut |root| {
            for (src, name) in [
                (&cfg.kernel_path, "vmlinuz"),
                (&cfg.initrd_path, "initrd.img"),
            ] {
                let missing = |e: io::Error| BootError::SlotFiles {
                    slot,
                    detail: format!("{} in the new slot: {e}", src.display()),
                };
                let real = resolve_in_root(root, src).map_err(missing)?;
                let mut from = File::open(&real).map_err(missing)?;
                install_file(&dst_dir.join(name), |to| {
                    io::copy(&mut from, to).map(|_| ())
                })?;
            }
            pretty = ["etc/os-release", "usr/lib/os-release"]
                .iter()
                .find_map(|p| {
                    let real = resolve_in_root(root, Path::new(p)).ok()?;
                    let text = fs::read_to_string(real).ok()?;
                    text.lines().find_map(|l| {
                        let v = l.strip_prefix("PRETTY_NAME=")?;
                        let v = v.trim().trim_matches(['"', '\'']);
                        (!v.is_empty() && !v.chars().any(char::is_control)).then(|| v.to_owned())
                    })
                });
            Ok(())
        })?;
        Ok(pretty)
    }
}
