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
//!
//! Here: the configuration and the backend. Apart: the entries (file names, boot counters,
//! fields: `entries.rs`), the EFI variables (`efivars.rs`), reading the new slot's files by
//! mounting it (`slot_files.rs`), and the ESP writes with the kernel install (`esp.rs`).

mod efivars;
mod entries;
mod esp;
mod slot_files;

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::slots::{SlotPartitions, disk_from_config, open_disk};
use super::{
    BootBackend, BootError, SlotBootState, SlotId, SlotSpec, SlotStatus, SlotWriter, SlotsConfig,
    TargetSlot,
};
pub use efivars::read_loader_var;
use entries::version_cmp;
pub use entries::{Counter, EntryFileName, FoundEntry, entry_field, valid_entry_name};
use esp::{esp_err, install_file, sync_dir};
pub use slot_files::{DirSlotFiles, MountSlotFiles, SlotFiles, resolve_in_root};

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

    fn open_source(&self, target: &TargetSlot) -> Result<payloads::Source, BootError> {
        let loc = self.recheck(target)?;
        let file = open_disk(&self.disk, false)?;
        loc.source(&self.disk, file, target)
    }

    fn disk(&self) -> &Path {
        &self.disk
    }
}
