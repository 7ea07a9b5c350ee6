//! systemd-boot backend: Boot Loader Specification (type #1) entries with boot counting on the
//! EFI system partition, and the booted entry read from the loader's EFI variables.
//!
//! Each slot is a partition (`ROOT-A`/`ROOT-B` by default) and has one entry on the ESP,
//! `loader/entries/<name>-a.conf` or `<name>-b.conf`, whose kernel and initrd live on the ESP
//! under `/<name>/a/` or `/<name>/b/` (systemd-boot cannot read the slot's own filesystem).
//! A newly installed slot gets a *counted* entry, `<name>-b+N.conf` with a higher `version`,
//! so that `default <name>-*` in `loader.conf` makes systemd-boot try it first. systemd-boot
//! renames it to `+(N-1)-1` before starting the kernel; once the tries are used up (`+0-…`) it
//! sorts the entry last and boots the other slot: the automatic fallback. A passing health gate
//! (`update-agent mark-good`) renames the booted entry to its plain name (`<name>-b.conf`), the
//! same rename `systemd-bless-boot` does, which then finds nothing left to do.
//!
//! The booted slot comes from `LoaderEntrySelected` (efivarfs), checked against the kernel
//! command line's `root=`; the booted slot and its entry are never written.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use super::slots::{SlotPartitions, disk_from_config, open_disk};
use super::{
    BootBackend, BootError, SlotBootState, SlotId, SlotSpec, SlotStatus, SlotWriter, SlotsConfig,
    TargetSlot,
};
use crate::atomic_file::{self, WriteError};

/// Vendor GUID of the Boot Loader Interface's EFI variables (`LoaderEntrySelected`, ...).
pub const LOADER_VENDOR_GUID: &str = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";
/// Where efivarfs is mounted.
pub const DEFAULT_EFIVARS_DIR: &str = "/sys/firmware/efi/efivars";
/// Default ESP mount point (the Boot Loader Specification's preferred `/efi`).
pub const DEFAULT_ESP: &str = "/efi";
/// Default entry name: entries `platte-a.conf`/`platte-b.conf`, kernels under `/platte/`.
pub const DEFAULT_ENTRY_NAME: &str = "platte";
/// Default kernel path inside a slot's filesystem (symlinks are followed inside the slot).
pub const DEFAULT_KERNEL_PATH: &str = "/boot/vmlinuz";
/// Default initrd path inside a slot's filesystem.
pub const DEFAULT_INITRD_PATH: &str = "/boot/initrd.img";
/// Default kernel options appended after `root=…`.
pub const DEFAULT_KERNEL_OPTIONS: &str = "rw";
/// Default slot partition names for this backend.
pub const DEFAULT_SLOT_LABELS: [&str; 2] = ["ROOT-A", "ROOT-B"];
/// Largest entry file read (a BLS entry is a few hundred bytes).
const MAX_ENTRY_BYTES: u64 = 64 * 1024;
/// Most symlinks followed when resolving a path inside a slot.
const MAX_SYMLINKS: usize = 40;

/// How the backend is configured (`[boot.systemd_boot]`, see `docs/usage/agent.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdbootConfig {
    /// ESP mount point.
    pub esp: PathBuf,
    /// Entry name: entry ids `<name>-a`/`<name>-b`, kernel directory `/<name>/` on the ESP.
    pub entry_name: String,
    /// Kernel inside a slot's filesystem.
    pub kernel_path: PathBuf,
    /// Initrd inside a slot's filesystem.
    pub initrd_path: PathBuf,
    /// Kernel options after `root=…`.
    pub kernel_options: String,
    /// efivarfs directory.
    pub efivars_dir: PathBuf,
}

impl Default for SdbootConfig {
    fn default() -> Self {
        Self {
            esp: PathBuf::from(DEFAULT_ESP),
            entry_name: DEFAULT_ENTRY_NAME.into(),
            kernel_path: PathBuf::from(DEFAULT_KERNEL_PATH),
            initrd_path: PathBuf::from(DEFAULT_INITRD_PATH),
            kernel_options: DEFAULT_KERNEL_OPTIONS.into(),
            efivars_dir: PathBuf::from(DEFAULT_EFIVARS_DIR),
        }
    }
}

/// Whether `name` may be an entry name: 1..=64 of `[A-Za-z0-9._-]`, not starting with `.` or `-`
/// (no `+`: it starts the boot counter).
pub fn valid_entry_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

// ---------------------------------------------------------------------------------------------
// Entry file names and boot counters
// ---------------------------------------------------------------------------------------------

/// A boot counter, the `+LEFT[-DONE]` of an entry file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    /// Tries left.
    pub left: u32,
    /// Tries used (absent before the first try).
    pub done: Option<u32>,
}

/// An entry file name split per Boot Loader Specification boot counting: `ID[+LEFT[-DONE]].conf`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryFileName {
    /// The entry id without counter and `.conf`.
    pub id: String,
    /// The boot counter; `None` for a blessed (or never counted) entry.
    pub counter: Option<Counter>,
}

fn all_digits(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl EntryFileName {
    /// Parses a file name; `None` unless it ends in `.conf` with a non-empty id.
    pub fn parse(file_name: &str) -> Option<Self> {
        let stem = file_name.strip_suffix(".conf")?;
        Self::parse_id(stem)
    }

    /// Parses an entry id that may carry a counter (`platte-b+1`, `platte-b+0-1`, `platte-b`).
    pub fn parse_id(stem: &str) -> Option<Self> {
        let (id, counter) = match stem.rsplit_once('+') {
            Some((id, c)) => {
                let counter = match c.split_once('-') {
                    Some((l, d)) => all_digits(l)
                        .zip(all_digits(d))
                        .map(|(left, done)| Counter {
                            left,
                            done: Some(done),
                        }),
                    None => all_digits(c).map(|left| Counter { left, done: None }),
                };
                match counter {
                    Some(c) => (id, Some(c)),
                    None => (stem, None),
                }
            }
            None => (stem, None),
        };
        (!id.is_empty()).then(|| Self {
            id: id.to_owned(),
            counter,
        })
    }

    /// The file name.
    pub fn file_name(&self) -> String {
        match self.counter {
            None => format!("{}.conf", self.id),
            Some(Counter { left, done: None }) => format!("{}+{left}.conf", self.id),
            Some(Counter {
                left,
                done: Some(d),
            }) => format!("{}+{left}-{d}.conf", self.id),
        }
    }

    /// Whether systemd-boot treats it as bad (counted, no tries left): sorted last, not chosen.
    pub fn exhausted(&self) -> bool {
        matches!(self.counter, Some(Counter { left: 0, .. }))
    }
}

/// One slot entry found on the ESP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundEntry {
    /// Its file name, parsed.
    pub name: EntryFileName,
    /// Its `version` line, if any.
    pub version: Option<String>,
}

impl FoundEntry {
    /// The boot state this entry gives its slot (priority filled in by the caller).
    fn state(&self) -> SlotBootState {
        match self.name.counter {
            None => SlotBootState {
                priority: 1,
                tries: 0,
                successful: true,
            },
            Some(c) => SlotBootState {
                priority: 1,
                tries: u8::try_from(c.left.min(15)).unwrap_or(15),
                successful: false,
            },
        }
    }
}

/// Compares two `version` values the way the entries' generations are written: numbers
/// numerically, anything else as text; a missing version is lowest.
fn version_cmp(a: Option<&str>, b: Option<&str>) -> std::cmp::Ordering {
    match (a, b) {
        (Some(x), Some(y)) => match (x.parse::<u64>(), y.parse::<u64>()) {
            (Ok(p), Ok(q)) => p.cmp(&q),
            _ => x.cmp(y),
        },
        (a, b) => a.is_some().cmp(&b.is_some()),
    }
}

/// Reads the value of `key` from BLS entry text.
pub fn entry_field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        let l = l.trim();
        let rest = l.strip_prefix(key)?;
        rest.starts_with([' ', '\t']).then(|| rest.trim())
    })
}

// ---------------------------------------------------------------------------------------------
// EFI variables
// ---------------------------------------------------------------------------------------------

/// Reads a Boot Loader Interface string variable (`NAME-4a67b082-…` in efivarfs: a 4-byte
/// attribute word, then NUL-terminated UTF-16LE). `Ok(None)` when the variable does not exist.
pub fn read_loader_var(efivars_dir: &Path, name: &str) -> Result<Option<String>, BootError> {
    let path = efivars_dir.join(format!("{name}-{LOADER_VENDOR_GUID}"));
    let bad = |detail: String| BootError::Efivar {
        path: path.clone(),
        detail,
    };
    // efivarfs files cannot seek ("Illegal seek"): read the whole file in one go.
    let mut data = Vec::new();
    match File::open(&path).and_then(|f| f.take(64 * 1024).read_to_end(&mut data)) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(bad(e.to_string())),
    }
    let body = data.get(4..).ok_or_else(|| {
        bad(format!(
            "{} bytes: shorter than the attribute word",
            data.len()
        ))
    })?;
    if body.len() % 2 != 0 {
        return Err(bad(format!("odd UTF-16 length {}", body.len())));
    }
    let units: Vec<u16> = body
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16(&units)
        .map(Some)
        .map_err(|e| bad(format!("not UTF-16: {e}")))
}

// ---------------------------------------------------------------------------------------------
// Reading a freshly written slot's files
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Crash-safe ESP writes
// ---------------------------------------------------------------------------------------------

fn esp_err(path: &Path, action: &'static str) -> impl FnOnce(io::Error) -> BootError + use<> {
    let path = path.to_owned();
    move |source| BootError::Esp {
        path,
        action,
        source,
    }
}

/// A step of a crash-safe ESP write failed.
fn esp_write(e: WriteError) -> BootError {
    BootError::Esp {
        path: e.path,
        action: e.step,
        source: e.source,
    }
}

/// fsyncs a directory of the ESP (see [`atomic_file::sync_dir`]).
fn sync_dir(dir: &Path) -> Result<(), BootError> {
    atomic_file::sync_dir(dir).map_err(esp_write)
}

/// Writes `dst` crash-safely through its hidden `.NAME.tmp` sibling ([`atomic_file::replace`]).
fn install_file(
    dst: &Path,
    write: impl FnOnce(&mut File) -> io::Result<()>,
) -> Result<(), BootError> {
    atomic_file::replace(dst, &atomic_file::tmp_path(dst), 0o644, write).map_err(esp_write)
}

// ---------------------------------------------------------------------------------------------
// The backend
// ---------------------------------------------------------------------------------------------

/// Where the backend learns which slot is booted.
#[derive(Debug, Clone, PartialEq, Eq)]
enum BootedSource {
    Override(SlotId),
    Loader { cmdline: PathBuf },
}

/// The systemd-boot backend over one disk (block device or image file) and one ESP directory.
#[derive(Debug)]
pub struct SdbootBackend {
    disk: PathBuf,
    slot_a: SlotSpec,
    slot_b: SlotSpec,
    config: SdbootConfig,
    booted: BootedSource,
    files: Box<dyn SlotFiles>,
}

fn slot_letter(slot: SlotId) -> &'static str {
    match slot {
        SlotId::A => "a",
        SlotId::B => "b",
    }
}

impl SdbootBackend {
    /// A backend for `disk` with the slots found by `slot_a`/`slot_b`, entries on `config.esp`,
    /// the booted slot read from EFI variables and `/proc/cmdline`, and new kernels read by
    /// mounting the target partition under `/run/platte`.
    pub fn new(
        disk: impl Into<PathBuf>,
        slot_a: SlotSpec,
        slot_b: SlotSpec,
        config: SdbootConfig,
    ) -> Self {
        Self {
            disk: disk.into(),
            slot_a,
            slot_b,
            config,
            booted: BootedSource::Loader {
                cmdline: PathBuf::from("/proc/cmdline"),
            },
            files: Box::new(MountSlotFiles {
                dev_dir: PathBuf::from("/dev"),
                mount_base: PathBuf::from("/run/platte"),
            }),
        }
    }

    /// Reads the kernel command line from `path` instead of `/proc/cmdline`.
    pub fn with_cmdline_path(mut self, path: impl Into<PathBuf>) -> Self {
        if let BootedSource::Loader { cmdline } = &mut self.booted {
            *cmdline = path.into();
        }
        self
    }

    /// Takes the booted slot from configuration instead of the loader and command line.
    pub fn with_booted_override(mut self, slot: Option<SlotId>) -> Self {
        if let Some(s) = slot {
            self.booted = BootedSource::Override(s);
        }
        self
    }

    /// Reads new kernels and initrds through `files` instead of mounting the target.
    pub fn with_slot_files(mut self, files: Box<dyn SlotFiles>) -> Self {
        self.files = files;
        self
    }

    /// Builds the backend from its configuration (the slots and `config`), finding the disk from
    /// slot A's link when unset.
    pub fn from_config(
        slots: &SlotsConfig,
        config: SdbootConfig,
        paths: &crate::paths::HostPaths,
    ) -> Result<Self, BootError> {
        let disk = disk_from_config(slots, paths)?;
        Ok(
            Self::new(disk, slots.slot_a.clone(), slots.slot_b.clone(), config)
                .with_cmdline_path(paths.kernel_cmdline.clone())
                .with_booted_override(slots.booted_slot)
                .with_slot_files(Box::new(MountSlotFiles {
                    dev_dir: paths.dev_dir.clone(),
                    mount_base: PathBuf::from("/run/platte"),
                })),
        )
    }

    /// The disk this backend manages.
    pub fn disk(&self) -> &Path {
        &self.disk
    }

    /// Its configuration.
    pub fn config(&self) -> &SdbootConfig {
        &self.config
    }

    /// The entries directory, `<esp>/loader/entries`.
    pub fn entries_dir(&self) -> PathBuf {
        self.config.esp.join("loader/entries")
    }

    /// The entry id of `slot` (`platte-a`).
    pub fn entry_id(&self, slot: SlotId) -> String {
        format!("{}-{}", self.config.entry_name, slot_letter(slot))
    }

    /// Where `slot`'s kernel and initrd go, relative to the ESP root (`platte/b`).
    pub fn kernel_dir(&self, slot: SlotId) -> PathBuf {
        PathBuf::from(&self.config.entry_name).join(slot_letter(slot))
    }

    fn slot_of_id(&self, id: &str) -> Option<SlotId> {
        [SlotId::A, SlotId::B]
            .into_iter()
            .find(|&s| self.entry_id(s) == id)
    }

    /// The entry files of `slot` on the ESP (normally at most one).
    pub fn slot_entries(&self, slot: SlotId) -> Result<Vec<FoundEntry>, BootError> {
        let dir = self.entries_dir();
        let want = self.entry_id(slot);
        let mut found = Vec::new();
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(found),
            Err(e) => return Err(esp_err(&dir, "listing")(e)),
        };
        for de in rd {
            let de = de.map_err(esp_err(&dir, "listing"))?;
            let Some(name) = de.file_name().to_str().and_then(EntryFileName::parse) else {
                continue;
            };
            if name.id != want {
                continue;
            }
            let path = de.path();
            let mut text = String::new();
            File::open(&path)
                .and_then(|f| f.take(MAX_ENTRY_BYTES).read_to_string(&mut text))
                .map_err(esp_err(&path, "reading"))?;
            found.push(FoundEntry {
                name,
                version: entry_field(&text, "version").map(str::to_owned),
            });
        }
        found.sort_by_key(|e| e.name.file_name());
        Ok(found)
    }

    /// The entry systemd-boot would prefer among `entries` (blessed or tries left first, then
    /// highest version).
    fn best(entries: &[FoundEntry]) -> Option<&FoundEntry> {
        entries.iter().max_by(|x, y| {
            (!x.name.exhausted())
                .cmp(&!y.name.exhausted())
                .then_with(|| version_cmp(x.version.as_deref(), y.version.as_deref()))
        })
    }

    /// Both slots' boot state as read from the ESP: priority 2 for the entry systemd-boot tries
    /// first (not exhausted, highest version), 1 for the other, 0 without an entry; tries = the
    /// counter's tries left; successful = the entry has no counter (blessed).
    pub fn entry_states(&self) -> Result<[SlotBootState; 2], BootError> {
        let a = self.slot_entries(SlotId::A)?;
        let b = self.slot_entries(SlotId::B)?;
        let (ea, eb) = (Self::best(&a), Self::best(&b));
        let mut sa = ea.map(FoundEntry::state).unwrap_or_default();
        let mut sb = eb.map(FoundEntry::state).unwrap_or_default();
        if let (Some(x), Some(y)) = (ea, eb) {
            let order = (!x.name.exhausted())
                .cmp(&!y.name.exhausted())
                .then_with(|| version_cmp(x.version.as_deref(), y.version.as_deref()));
            if order == std::cmp::Ordering::Less {
                sb.priority = 2;
            } else {
                sa.priority = 2;
            }
        }
        Ok([sa, sb])
    }

    /// Whether the running boot fell back: the other slot's entry is counted with no tries
    /// left (systemd-boot gave up on it), while the booted slot is not that one.
    pub fn fell_back(&self) -> Result<bool, BootError> {
        let booted = self.booted_slot()?;
        Ok(self
            .slot_entries(booted.other())?
            .iter()
            .any(|e| e.name.exhausted()))
    }

    fn locate(&self) -> Result<SlotPartitions, BootError> {
        let file = open_disk(&self.disk, false)?;
        SlotPartitions::read(&self.disk, &file, &self.slot_a, &self.slot_b)
    }

    /// The slot the loader says it booted (`LoaderEntrySelected` naming one of our entries).
    fn loader_slot(&self) -> Result<Option<(SlotId, String)>, BootError> {
        let Some(sel) = read_loader_var(&self.config.efivars_dir, "LoaderEntrySelected")? else {
            return Ok(None);
        };
        let parsed = EntryFileName::parse(&sel).or_else(|| EntryFileName::parse_id(&sel));
        Ok(parsed
            .and_then(|p| self.slot_of_id(&p.id))
            .map(|s| (s, sel)))
    }

    fn booted_in(&self, loc: &SlotPartitions) -> Result<SlotId, BootError> {
        let cmdline = match &self.booted {
            BootedSource::Override(s) => return Ok(*s),
            BootedSource::Loader { cmdline } => cmdline,
        };
        let loader = self.loader_slot()?;
        // The slot whose partition the kernel command line mounts as root (or `/usr`).
        let (kernel, _) = loc.named_by_cmdline(cmdline)?;
        match (loader, kernel) {
            (Some((l, sel)), Some(k)) if l != k => Err(BootError::BootedUnknown {
                detail: format!(
                    "the loader booted entry {sel:?} (slot {l}) but {} mounts slot {k}",
                    cmdline.display()
                ),
            }),
            (Some((l, _)), _) => Ok(l),
            (None, Some(k)) => Ok(k),
            (None, None) => Err(BootError::BootedUnknown {
                detail: format!(
                    "LoaderEntrySelected in {} names neither {}.conf nor {}.conf, and {} has no \
                     root=, usr=, mount.usr= or verity.usr= naming a slot partition on {}",
                    self.config.efivars_dir.display(),
                    self.entry_id(SlotId::A),
                    self.entry_id(SlotId::B),
                    cmdline.display(),
                    self.disk.display()
                ),
            }),
        }
    }

    /// Re-reads the GPT and checks `target` still names the inactive slot's partition.
    fn recheck(&self, target: &TargetSlot) -> Result<SlotPartitions, BootError> {
        let loc = self.locate()?;
        loc.check_target(target, self.booted_in(&loc)?)?;
        Ok(loc)
    }

    /// Removes every entry file of `slot` except `keep`; fsyncs the directory.
    fn remove_entries(&self, slot: SlotId, keep: Option<&str>) -> Result<usize, BootError> {
        let dir = self.entries_dir();
        let mut removed = 0;
        for e in self.slot_entries(slot)? {
            let name = e.name.file_name();
            if Some(name.as_str()) == keep {
                continue;
            }
            let path = dir.join(&name);
            fs::remove_file(&path).map_err(esp_err(&path, "removing"))?;
            removed += 1;
        }
        if removed > 0 {
            sync_dir(&dir)?;
        }
        Ok(removed)
    }

    /// The kernel parameter naming `slot`'s partition as root.
    fn root_option(&self, slot: SlotId) -> String {
        let spec = match slot {
            SlotId::A => &self.slot_a,
            SlotId::B => &self.slot_b,
        };
        let value = spec.to_string();
        if value.chars().any(char::is_whitespace) {
            format!("root=\"{value}\"")
        } else {
            format!("root={value}")
        }
    }

    /// Copies the target's kernel and initrd onto the ESP (`/<name>/<slot>/vmlinuz`,
    /// `initrd.img`), each crash-safely; returns the slot's `PRETTY_NAME`, if it has one.
    fn install_kernel(&self, target: &TargetSlot) -> Result<Option<String>, BootError> {
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

impl BootBackend for SdbootBackend {
    fn describe(&self) -> Result<Vec<SlotStatus>, BootError> {
        let loc = self.locate()?;
        let booted = self.booted_in(&loc).ok();
        let [a, b] = self.entry_states()?;
        Ok(vec![
            loc.status(SlotId::A, a, booted),
            loc.status(SlotId::B, b, booted),
        ])
    }

    fn booted_slot(&self) -> Result<SlotId, BootError> {
        let loc = self.locate()?;
        self.booted_in(&loc)
    }

    fn target_slot(&self) -> Result<TargetSlot, BootError> {
        let loc = self.locate()?;
        loc.target(&self.disk, self.booted_in(&loc)?)
    }

    fn mark_unbootable(&self, target: &TargetSlot) -> Result<(), BootError> {
        self.recheck(target)?;
        let removed = self.remove_entries(target.slot(), None)?;
        tracing::info!(slot = %target.slot(), removed, "removed the target slot's boot entry");
        Ok(())
    }

    fn mark_active(&self, target: &TargetSlot, tries: u8) -> Result<(), BootError> {
        self.recheck(target)?;
        let slot = target.slot();
        let pretty = self.install_kernel(target)?;
        // The new entry's version is above every entry of either slot, so it sorts first.
        let mut top: u64 = 0;
        for s in [SlotId::A, SlotId::B] {
            for e in self.slot_entries(s)? {
                if let Some(v) = e.version.as_deref().and_then(|v| v.parse::<u64>().ok()) {
                    top = top.max(v);
                }
            }
        }
        let version = top.saturating_add(1);
        let name = EntryFileName {
            id: self.entry_id(slot),
            counter: Some(Counter {
                left: u32::from(tries.clamp(1, 15)),
                done: None,
            }),
        };
        let file_name = name.file_name();
        let kdir = self.kernel_dir(slot);
        let kdir = kdir.to_string_lossy();
        let title = match pretty {
            Some(p) => format!("{p} (slot {slot})"),
            None => format!("Platte slot {slot}"),
        };
        let mut options = self.root_option(slot);
        if !self.config.kernel_options.is_empty() {
            options.push(' ');
            options.push_str(&self.config.kernel_options);
        }
        let text = format!(
            "title {title}\nsort-key {name}\nversion {version}\nlinux /{kdir}/vmlinuz\n\
             initrd /{kdir}/initrd.img\noptions {options}\n",
            name = self.config.entry_name,
        );
        let dir = self.entries_dir();
        fs::create_dir_all(&dir).map_err(esp_err(&dir, "creating"))?;
        self.remove_entries(slot, None)?;
        install_file(&dir.join(&file_name), |f| f.write_all(text.as_bytes()))?;
        tracing::info!(
            slot = %slot,
            entry = %file_name,
            version,
            tries = tries.clamp(1, 15),
            "wrote a counted boot entry for the next boot"
        );
        Ok(())
    }

    fn mark_booted_good(&self) -> Result<(), BootError> {
        let loc = self.locate()?;
        let booted = self.booted_in(&loc)?;
        let entries = self.slot_entries(booted)?;
        let dir = self.entries_dir();
        let blessed = EntryFileName {
            id: self.entry_id(booted),
            counter: None,
        };
        if entries.iter().any(|e| e.name.counter.is_none()) {
            tracing::info!(slot = %booted, "booted slot's entry is already blessed");
            return Ok(());
        }
        let Some(counted) = Self::best(&entries) else {
            tracing::warn!(slot = %booted, dir = %dir.display(), "booted slot has no boot entry; nothing to bless");
            return Ok(());
        };
        let from = dir.join(counted.name.file_name());
        let to = dir.join(blessed.file_name());
        fs::rename(&from, &to).map_err(esp_err(&from, "renaming to its blessed name"))?;
        sync_dir(&dir)?;
        tracing::info!(slot = %booted, from = %counted.name.file_name(), to = %blessed.file_name(), "blessed the booted slot's boot entry");
        Ok(())
    }

    fn open_target(&self, target: &TargetSlot) -> Result<SlotWriter, BootError> {
        self.recheck(target)?;
        let file = open_disk(&self.disk, true)?;
        Ok(SlotWriter::new(
            file,
            target.slot,
            target.offset,
            target.len,
        ))
    }

    fn disk(&self) -> &Path {
        &self.disk
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_with_and_without_counters() {
        let p = |s: &str| EntryFileName::parse(s);
        assert_eq!(
            p("platte-b+3.conf"),
            Some(EntryFileName {
                id: "platte-b".into(),
                counter: Some(Counter {
                    left: 3,
                    done: None
                })
            })
        );
        let used = p("platte-b+0-1.conf").unwrap();
        assert_eq!(
            used.counter,
            Some(Counter {
                left: 0,
                done: Some(1)
            })
        );
        assert!(used.exhausted());
        assert_eq!(used.file_name(), "platte-b+0-1.conf");
        assert_eq!(p("platte-a.conf").unwrap().counter, None);
        // A `+` not followed by a counter belongs to the id.
        assert_eq!(p("a+b.conf").unwrap().id, "a+b");
        assert_eq!(p("a+1-.conf").unwrap().id, "a+1-");
        assert_eq!(p("platte-a.txt"), None);
        assert_eq!(p(".conf"), None);
        assert_eq!(p("+1.conf"), None);
    }

    #[test]
    fn versions_compare_numerically() {
        use std::cmp::Ordering::*;
        assert_eq!(version_cmp(Some("10"), Some("9")), Greater);
        assert_eq!(version_cmp(None, Some("1")), Less);
        assert_eq!(version_cmp(Some("b"), Some("a")), Greater);
    }

    #[test]
    fn fields_are_read_by_whole_key() {
        let t = "title X\nversion 7\nversionx 9\noptions root=PARTLABEL=ROOT-A rw\n";
        assert_eq!(entry_field(t, "version"), Some("7"));
        assert_eq!(entry_field(t, "options"), Some("root=PARTLABEL=ROOT-A rw"));
        assert_eq!(entry_field(t, "linux"), None);
    }

    #[test]
    fn entry_names_are_restricted() {
        assert!(valid_entry_name("platte"));
        assert!(valid_entry_name("os.v2_x-y"));
        for bad in ["", "-x", ".x", "a+b", "a/b", "a b"] {
            assert!(!valid_entry_name(bad), "{bad:?}");
        }
    }
}
