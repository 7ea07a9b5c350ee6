//! The `/run/reboot-required` sentinel (what kured and Debian's tools watch): written while an
//! update is staged and the reboot may go ahead, removed when none is. The daemon's reboot
//! driver and `update-agent run --once` keep it in step with the same rule ([`sync`]).

use std::io;
use std::path::{Path, PathBuf};

use crate::atomic_file;

/// The sentinel could not be written or removed.
#[derive(Debug, thiserror::Error)]
#[error("cannot update {}: {source}", path.display())]
pub struct SentinelError {
    /// The sentinel path.
    pub path: PathBuf,
    /// The I/O error.
    #[source]
    pub source: io::Error,
}

/// Writes the sentinel (creating its directory) crash-safely, with a line naming the staged
/// version.
pub fn write(path: &Path, version: &str) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let text = format!("*** System restart required to apply update {version} ***\n");
    atomic_file::replace_with_bytes(path, &atomic_file::tmp_path(path), 0o644, text.as_bytes())
        .map_err(|e| io::Error::new(e.source.kind(), e))
}

/// Brings the sentinel at `path` in line with `rebootable`, the staged version the reboot may go
/// ahead with: written naming it, or removed when `None` (nothing staged, or the staged update
/// is held for runtime extensions). `path` `None` (`reboot.reboot_required_path = ""`): nothing
/// is done.
pub fn sync(path: Option<&Path>, rebootable: Option<&str>) -> Result<(), SentinelError> {
    let Some(path) = path else {
        return Ok(());
    };
    match rebootable {
        Some(v) => write(path, v),
        None => remove(path),
    }
    .map_err(|source| SentinelError {
        path: path.to_owned(),
        source,
    })
}

/// Removes the sentinel; a missing file is fine.
pub fn remove(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn write_then_remove() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("run/reboot-required");
        write(&p, "4230.1.0").unwrap();
        assert!(std::fs::read_to_string(&p).unwrap().contains("4230.1.0"));
        remove(&p).unwrap();
        assert!(!p.exists());
        remove(&p).unwrap();
    }

    #[test]
    fn sync_follows_the_rebootable_version() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("run/reboot-required");
        sync(Some(&p), Some("2.0.0")).unwrap();
        assert!(std::fs::read_to_string(&p).unwrap().contains("2.0.0"));
        sync(Some(&p), Some("2.1.0")).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains("2.1.0") && !text.contains("2.0.0"), "{text}");
        // Held or nothing staged: removed.
        sync(Some(&p), None).unwrap();
        assert!(!p.exists());
        sync(Some(&p), None).unwrap();
        // Disabled: nothing written.
        sync(None, Some("2.0.0")).unwrap();
        assert!(!p.exists());
        assert_eq!(std::fs::read_dir(p.parent().unwrap()).unwrap().count(), 0);
    }
}
