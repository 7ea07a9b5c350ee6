//! Image files and the `NAME.raw` link: `NAME-VERSION.raw` images live in the image directory
//! (outside systemd-sysext's search paths); `INSTALL_DIR/NAME.raw` is a symlink to the active
//! one. A switch makes a new symlink under a temporary name and renames it over `NAME.raw`, so
//! the link names the old or the new image at every instant.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use super::error::{ExtensionError, io};
use crate::atomic_file;

/// `NAME-VERSION.raw`.
pub fn image_file(name: &str, version: &str) -> String {
    format!("{name}-{version}.raw")
}

/// The temporary file an image is downloaded into (hidden, not `*.raw`).
pub fn partial_path(image_dir: &Path, name: &str, version: &str) -> PathBuf {
    image_dir.join(format!(".{name}-{version}.raw.partial"))
}

/// `INSTALL_DIR/NAME.raw`.
pub fn link_path(install_dir: &Path, name: &str) -> PathBuf {
    install_dir.join(format!("{name}.raw"))
}

/// Fsyncs a directory (after a rename or unlink in it; see [`atomic_file::sync_dir`]).
pub fn sync_dir(dir: &Path) -> Result<(), ExtensionError> {
    atomic_file::sync_dir(dir).map_err(|e| ExtensionError::Io {
        what: e.step,
        path: e.path,
        source: e.source,
    })
}

/// Where `NAME.raw` points now: `Ok(None)` when it does not exist. A regular file, a directory
/// or a link to `/dev/null` (the administrator's opt-out) is refused: the agent only manages
/// links it could have made.
pub fn current_link(install_dir: &Path, name: &str) -> Result<Option<PathBuf>, ExtensionError> {
    let link = link_path(install_dir, name);
    match fs::symlink_metadata(&link) {
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("inspecting", &link)(e)),
        Ok(m) if !m.file_type().is_symlink() => {
            return Err(ExtensionError::NotManaged {
                path: link,
                reason: "it is not a symlink".into(),
            });
        }
        Ok(_) => {}
    }
    let target = fs::read_link(&link).map_err(io("reading link", &link))?;
    if target == Path::new("/dev/null") {
        return Err(ExtensionError::NotManaged {
            path: link,
            reason: "it points to /dev/null (masked by the administrator)".into(),
        });
    }
    Ok(Some(target))
}

/// Points `NAME.raw` at `target` (`None`: removes it), atomically, and fsyncs the directory.
pub fn switch_link(
    install_dir: &Path,
    name: &str,
    target: Option<&Path>,
) -> Result<(), ExtensionError> {
    // Refuses to replace anything the agent does not manage.
    current_link(install_dir, name)?;
    fs::create_dir_all(install_dir).map_err(io("creating directory", install_dir))?;
    let link = link_path(install_dir, name);
    match target {
        Some(target) => {
            let tmp = install_dir.join(format!(".{name}.raw.link-tmp"));
            match fs::remove_file(&tmp) {
                Err(e) if e.kind() != ErrorKind::NotFound => {
                    return Err(io("removing stale", &tmp)(e));
                }
                _ => {}
            }
            symlink(target, &tmp).map_err(io("creating link", &tmp))?;
            fs::rename(&tmp, &link).map_err(io("renaming link into place", &link))?;
        }
        None => match fs::remove_file(&link) {
            Err(e) if e.kind() != ErrorKind::NotFound => return Err(io("removing", &link)(e)),
            _ => {}
        },
    }
    sync_dir(install_dir)
}

/// Deletes `image_dir/file` (missing is fine).
pub fn remove_image(image_dir: &Path, file: &str) -> Result<(), ExtensionError> {
    let path = image_dir.join(file);
    match fs::remove_file(&path) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(io("removing", &path)(e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switch_replaces_and_removes_links_and_refuses_unmanaged_ones() {
        let d = tempfile::tempdir().unwrap();
        let inst = d.path().join("extensions");
        assert_eq!(current_link(&inst, "c").unwrap(), None);
        switch_link(&inst, "c", Some(Path::new("/images/c-1.raw"))).unwrap();
        assert_eq!(
            current_link(&inst, "c").unwrap().unwrap(),
            Path::new("/images/c-1.raw")
        );
        switch_link(&inst, "c", Some(Path::new("/images/c-2.raw"))).unwrap();
        assert_eq!(
            current_link(&inst, "c").unwrap().unwrap(),
            Path::new("/images/c-2.raw")
        );
        assert!(!inst.join(".c.raw.link-tmp").exists());
        switch_link(&inst, "c", None).unwrap();
        assert_eq!(current_link(&inst, "c").unwrap(), None);

        fs::write(link_path(&inst, "f"), b"image").unwrap();
        let e = switch_link(&inst, "f", Some(Path::new("/x"))).unwrap_err();
        assert!(matches!(e, ExtensionError::NotManaged { .. }), "{e}");
        assert_eq!(fs::read(link_path(&inst, "f")).unwrap(), b"image");

        symlink("/dev/null", link_path(&inst, "m")).unwrap();
        let e = switch_link(&inst, "m", Some(Path::new("/x"))).unwrap_err();
        assert!(e.to_string().contains("/dev/null"), "{e}");
    }
}
