//! The `/run/reboot-required` sentinel (what kured and Debian's tools watch): written when an
//! update is staged, removed when none is.

use std::io;
use std::path::Path;

/// Writes the sentinel (creating its directory), with a line naming the staged version.
pub fn write(path: &Path, version: &str) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("platte-tmp");
    std::fs::write(
        &tmp,
        format!("*** System restart required to apply update {version} ***\n"),
    )?;
    std::fs::rename(&tmp, path)
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
}
