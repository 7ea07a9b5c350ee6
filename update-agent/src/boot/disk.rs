//! Finding the whole disk that holds a slot partition, from udev's `/dev/disk/by-*` links and sysfs.
//!
//! `/dev/disk/by-partlabel/USR-A` → `/dev/sda3`; `/sys/class/block/sda3` resolves to
//! `…/block/sda/sda3`, whose parent directory names the disk: `/dev/sda`.

use std::fs;
use std::path::PathBuf;

use super::{BootError, SlotSpec};
use crate::paths::HostPaths;

/// Escapes a label the way udev names `/dev/disk/by-partlabel/` links (`/` → `\x2f`, ...).
pub fn udev_escape(label: &str) -> String {
    let mut out = String::with_capacity(label.len());
    for c in label.chars() {
        if !c.is_ascii() || c.is_ascii_alphanumeric() || "#+-.:=@_".contains(c) {
            out.push(c);
        } else {
            out.push_str(&format!("\\x{:02x}", u32::from(c)));
        }
    }
    out
}

/// The whole-disk device holding the partition `spec` names.
pub fn discover_disk(spec: &SlotSpec, paths: &HostPaths) -> Result<PathBuf, BootError> {
    let link = match spec {
        SlotSpec::Label(l) => paths.dev_dir.join("disk/by-partlabel").join(udev_escape(l)),
        SlotSpec::PartUuid(u) => paths.dev_dir.join("disk/by-partuuid").join(u.to_string()),
    };
    let part_dev = fs::canonicalize(&link).map_err(|e| BootError::DiskUnknown {
        detail: format!("{}: {e}", link.display()),
    })?;
    let part_name = part_dev
        .file_name()
        .ok_or_else(|| BootError::DiskUnknown {
            detail: format!("{} has no device name", part_dev.display()),
        })?
        .to_owned();
    let sys = paths.sys_class_block.join(&part_name);
    let sys_real = fs::canonicalize(&sys).map_err(|e| BootError::DiskUnknown {
        detail: format!("{}: {e}", sys.display()),
    })?;
    if !sys_real.join("partition").exists() {
        return Err(BootError::DiskUnknown {
            detail: format!("{} is not a partition", part_dev.display()),
        });
    }
    let disk_name = sys_real
        .parent()
        .and_then(|p| p.file_name())
        .ok_or_else(|| BootError::DiskUnknown {
            detail: format!("{} has no parent device", sys_real.display()),
        })?;
    Ok(paths.dev_dir.join(disk_name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn escapes_like_udev() {
        assert_eq!(udev_escape("USR-A"), "USR-A");
        assert_eq!(udev_escape("my slot/a"), "my\\x20slot\\x2fa");
        assert_eq!(udev_escape("é"), "é");
    }

    #[test]
    fn finds_the_parent_disk_through_links() {
        let root = tempfile::tempdir().unwrap();
        let paths = HostPaths::under(root.path());
        let dev = &paths.dev_dir;
        fs::create_dir_all(dev.join("disk/by-partlabel")).unwrap();
        fs::create_dir_all(dev.join("disk/by-partuuid")).unwrap();
        fs::write(dev.join("nvme0n1p3"), b"").unwrap();
        symlink("../../nvme0n1p3", dev.join("disk/by-partlabel/USR-A")).unwrap();
        let uuid = "7130c94a-213a-4e5a-8e26-6cce9662f132";
        symlink("../../nvme0n1p3", dev.join("disk/by-partuuid").join(uuid)).unwrap();
        let sysdev = root.path().join("sys/devices/pci0/nvme/nvme0n1/nvme0n1p3");
        fs::create_dir_all(&sysdev).unwrap();
        fs::write(sysdev.join("partition"), b"3\n").unwrap();
        fs::create_dir_all(&paths.sys_class_block).unwrap();
        symlink(&sysdev, paths.sys_class_block.join("nvme0n1p3")).unwrap();

        let want = dev.join("nvme0n1");
        assert_eq!(
            discover_disk(&SlotSpec::Label("USR-A".into()), &paths).unwrap(),
            want
        );
        let spec = SlotSpec::PartUuid(uuid.parse().unwrap());
        assert_eq!(discover_disk(&spec, &paths).unwrap(), want);
        let missing = discover_disk(&SlotSpec::Label("USR-B".into()), &paths).unwrap_err();
        assert!(missing.to_string().contains("USR-B"), "{missing}");
    }
}
