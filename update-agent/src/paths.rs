//! Host file locations the agent reads, every one overridable so tests run without root.

use std::path::{Path, PathBuf};

/// Default drop-in directories, lowest precedence first.
pub const DEFAULT_CONFIG_DIRS: [&str; 3] = [
    "/usr/lib/platte/agent.d",
    "/etc/platte/agent.d",
    "/run/platte/agent.d",
];

/// Legacy Flatcar `update.conf` files, highest precedence first.
pub const DEFAULT_LEGACY_UPDATE_CONF: [&str; 2] =
    ["/etc/flatcar/update.conf", "/usr/share/flatcar/update.conf"];

/// Every host path the agent reads; [`HostPaths::default`] gives the real locations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPaths {
    /// Drop-in directories, lowest precedence first.
    pub config_dirs: Vec<PathBuf>,
    /// Legacy `update.conf` files, highest precedence first.
    pub legacy_update_conf: Vec<PathBuf>,
    /// The machine id file (`/etc/machine-id`).
    pub machine_id: PathBuf,
    /// The boot id file (`/proc/sys/kernel/random/boot_id`).
    pub boot_id: PathBuf,
    /// os-release files, first existing one wins (`/etc/os-release`, `/usr/lib/os-release`).
    pub os_release: Vec<PathBuf>,
    /// The kernel command line (`/proc/cmdline`).
    pub kernel_cmdline: PathBuf,
    /// The device directory (`/dev`), used to resolve `/dev/disk/by-*` links.
    pub dev_dir: PathBuf,
    /// The sysfs block class directory (`/sys/class/block`), used to find a partition's disk.
    pub sys_class_block: PathBuf,
}

impl Default for HostPaths {
    fn default() -> Self {
        Self {
            config_dirs: DEFAULT_CONFIG_DIRS.iter().map(PathBuf::from).collect(),
            legacy_update_conf: DEFAULT_LEGACY_UPDATE_CONF
                .iter()
                .map(PathBuf::from)
                .collect(),
            machine_id: PathBuf::from("/etc/machine-id"),
            boot_id: PathBuf::from("/proc/sys/kernel/random/boot_id"),
            os_release: vec![
                PathBuf::from("/etc/os-release"),
                PathBuf::from("/usr/lib/os-release"),
            ],
            kernel_cmdline: PathBuf::from("/proc/cmdline"),
            dev_dir: PathBuf::from("/dev"),
            sys_class_block: PathBuf::from("/sys/class/block"),
        }
    }
}

impl HostPaths {
    /// All default paths re-rooted under `root` (e.g. a test's temporary directory).
    pub fn under(root: &Path) -> Self {
        let d = Self::default();
        let r = |p: &PathBuf| reroot(root, p);
        Self {
            config_dirs: d.config_dirs.iter().map(r).collect(),
            legacy_update_conf: d.legacy_update_conf.iter().map(r).collect(),
            machine_id: r(&d.machine_id),
            boot_id: r(&d.boot_id),
            os_release: d.os_release.iter().map(r).collect(),
            kernel_cmdline: r(&d.kernel_cmdline),
            dev_dir: r(&d.dev_dir),
            sys_class_block: r(&d.sys_class_block),
        }
    }
}

/// `root` joined with the absolute path `p` (its leading `/` dropped).
pub fn reroot(root: &Path, p: &Path) -> PathBuf {
    root.join(p.strip_prefix("/").unwrap_or(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn under_reroots_every_path() {
        let p = HostPaths::under(Path::new("/tmp/x"));
        assert_eq!(p.machine_id, PathBuf::from("/tmp/x/etc/machine-id"));
        assert_eq!(p.config_dirs[1], PathBuf::from("/tmp/x/etc/platte/agent.d"));
        assert_eq!(
            p.legacy_update_conf[1],
            PathBuf::from("/tmp/x/usr/share/flatcar/update.conf")
        );
        assert_eq!(p.kernel_cmdline, PathBuf::from("/tmp/x/proc/cmdline"));
    }
}
