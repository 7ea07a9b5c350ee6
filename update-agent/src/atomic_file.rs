//! Crash-safe file replacement: the new content goes to a temporary file in the same directory,
//! which is fsynced, renamed over the target, and the directory fsynced. After a crash or
//! `kill -9` at any point the target holds its old or its new content, never a mix, and a
//! leftover temporary file is only ever overwritten by the next write.
//!
//! Used for `state.json` and `extensions.json` ([`crate::state`]), the systemd-boot entries and
//! kernels on the ESP ([`crate::boot::sdboot`]), and the `/run/reboot-required` sentinel
//! ([`crate::reboot::sentinel`]).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

/// `EINVAL`: what `fsync` of a directory returns on filesystems that cannot sync directories.
const EINVAL: i32 = 22;

/// One step of a crash-safe write failed.
#[derive(Debug, thiserror::Error)]
#[error("{step} {}: {source}", path.display())]
pub struct WriteError {
    /// The step: `removing stale`, `creating`, `writing`, `syncing`, `renaming into place`,
    /// `opening directory` or `syncing directory`.
    pub step: &'static str,
    /// The file or directory the step concerned.
    pub path: PathBuf,
    /// The I/O error.
    #[source]
    pub source: io::Error,
}

fn step(step: &'static str, path: &Path) -> impl FnOnce(io::Error) -> WriteError + use<> {
    let path = path.to_owned();
    move |source| WriteError { step, path, source }
}

/// Fsyncs the directory `dir` (after a rename or an unlink in it). A filesystem that cannot sync
/// directories (`EINVAL`) is tolerated: there is nothing more to make durable there.
pub fn sync_dir(dir: &Path) -> Result<(), WriteError> {
    let d = File::open(dir).map_err(step("opening directory", dir))?;
    match d.sync_all() {
        Err(e) if e.raw_os_error() == Some(EINVAL) => Ok(()),
        r => r.map_err(step("syncing directory", dir)),
    }
}

/// The default temporary sibling of `path`: `.NAME.tmp` in the same directory (hidden, so that
/// nothing that lists the directory mistakes it for the real file).
pub fn tmp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    parent(path).join(format!(".{name}.tmp"))
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        Some(_) => Path::new("."),
        None => Path::new("/"),
    }
}

/// Replaces `path` with what `write` writes: into `tmp` (a file in the same directory, created
/// afresh with permissions `mode`: one left over by a crash is removed first), fsync, rename over
/// `path`, fsync the directory. `tmp` is removed again when a step before the rename fails.
pub fn replace(
    path: &Path,
    tmp: &Path,
    mode: u32,
    write: impl FnOnce(&mut File) -> io::Result<()>,
) -> Result<(), WriteError> {
    match fs::remove_file(tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(step("removing stale", tmp)(e));
        }
        _ => {}
    }
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(tmp)
            .map_err(step("creating", tmp))?;
        write(&mut f).map_err(step("writing", tmp))?;
        f.sync_all().map_err(step("syncing", tmp))?;
        drop(f);
        fs::rename(tmp, path).map_err(step("renaming into place", path))
    })();
    if written.is_err() {
        let _ = fs::remove_file(tmp);
    }
    written?;
    sync_dir(parent(path))
}

/// [`replace`] with `bytes` as the new content.
pub fn replace_with_bytes(
    path: &Path,
    tmp: &Path,
    mode: u32,
    bytes: &[u8],
) -> Result<(), WriteError> {
    replace(path, tmp, mode, |f| f.write_all(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn replaces_content_with_the_mode_and_leaves_no_temporary_file() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("state.json");
        let tmp = tmp_path(&path);
        assert_eq!(tmp, d.path().join(".state.json.tmp"));
        replace_with_bytes(&path, &tmp, 0o600, b"one").unwrap();
        // A leftover temporary file from a crash (with other permissions) is replaced, never
        // read or reused.
        fs::write(&tmp, b"partial garbage that is longer").unwrap();
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o666)).unwrap();
        replace_with_bytes(&path, &tmp, 0o600, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert!(!tmp.exists());
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_failed_write_keeps_the_old_content_and_removes_the_temporary_file() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("f");
        let tmp = tmp_path(&path);
        replace_with_bytes(&path, &tmp, 0o644, b"old").unwrap();
        let e = replace(&path, &tmp, 0o644, |f| {
            f.write_all(b"half")?;
            Err(io::Error::other("disk full"))
        })
        .unwrap_err();
        assert_eq!(e.step, "writing");
        assert_eq!(e.path, tmp);
        assert!(e.to_string().contains("disk full"), "{e}");
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert!(!tmp.exists());
    }

    #[test]
    fn errors_name_the_step_and_the_path() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("missing-dir/f");
        let e = replace_with_bytes(&path, &tmp_path(&path), 0o644, b"x").unwrap_err();
        assert_eq!(e.step, "creating");
        assert!(e.to_string().contains("missing-dir/.f.tmp"), "{e}");
        let e = sync_dir(&d.path().join("nope")).unwrap_err();
        assert_eq!(e.step, "opening directory");
    }
}
