//! A/B boot slots: the [`BootBackend`] trait and one module per boot loader backend
//! ([`gptprio`], [`sdboot`]); what every backend reads from the GPT the same way (the slot
//! partitions, the write target and its re-check, the slot descriptions) is shared in the
//! private `slots` module.
//!
//! Each backend is built from its own configuration ([`SlotsConfig`], plus [`SdbootConfig`] for
//! systemd-boot, together a [`BackendConfig`]); the agent's configuration builds these, this
//! module does not read it.
//!
//! The booted slot can never be a write target: the only way to get a [`TargetSlot`] (and from
//! it a [`SlotWriter`]) is [`BootBackend::target_slot`], which returns the slot that is *not*
//! booted, and fails when the booted slot is unknown. The booted slot is only ever opened
//! read-only, as a delta payload's source ([`BootBackend::open_source`]).

pub mod cmdline;
pub mod disk;
pub mod gpt;
pub mod gptprio;
pub mod sdboot;
mod slots;
pub mod writer;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

pub use gpt::Guid;
pub use gptprio::{GptprioBackend, Selection, gptprio_select, gptprio_select_type};
pub use sdboot::{SdbootBackend, SdbootConfig};
pub use writer::SlotWriter;

/// One of the two slots.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum SlotId {
    /// Slot A (`USR-A` by default).
    A,
    /// Slot B (`USR-B` by default).
    B,
}

impl SlotId {
    /// The other slot.
    pub fn other(self) -> SlotId {
        match self {
            SlotId::A => SlotId::B,
            SlotId::B => SlotId::A,
        }
    }
}

impl fmt::Display for SlotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SlotId::A => "A",
            SlotId::B => "B",
        })
    }
}

/// Why a slot name was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a slot name: expected A or B")]
pub struct SlotIdParseError;

impl FromStr for SlotId {
    type Err = SlotIdParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "A" | "a" => Ok(SlotId::A),
            "B" | "b" => Ok(SlotId::B),
            _ => Err(SlotIdParseError),
        }
    }
}

/// How a slot's partition is found in the GPT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotSpec {
    /// By partition name (PARTLABEL).
    Label(String),
    /// By unique partition GUID (PARTUUID).
    PartUuid(Guid),
}

impl SlotSpec {
    /// Whether `entry` is this slot's partition.
    pub fn matches(&self, entry: &gpt::Entry) -> bool {
        match self {
            SlotSpec::Label(l) => entry.name == *l,
            SlotSpec::PartUuid(u) => entry.part_guid == *u,
        }
    }

    /// The one partition of `table` (read from `disk`) that is `slot`'s: an error when none or
    /// several match, or when it lies outside the disk.
    pub fn find_in(
        &self,
        table: &gpt::GptTable,
        slot: SlotId,
        disk: &std::path::Path,
    ) -> Result<gpt::Entry, BootError> {
        let mut hits = table.entries.iter().filter(|e| self.matches(e));
        let first = hits.next().ok_or_else(|| BootError::SlotNotFound {
            slot,
            spec: self.to_string(),
            disk: disk.to_path_buf(),
        })?;
        if hits.next().is_some() {
            return Err(BootError::SlotAmbiguous {
                slot,
                spec: self.to_string(),
                disk: disk.to_path_buf(),
            });
        }
        if table.byte_range(first).is_none() {
            return Err(BootError::OutsideDisk {
                slot,
                partition: first.number,
            });
        }
        Ok(first.clone())
    }
}

impl fmt::Display for SlotSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SlotSpec::Label(l) => write!(f, "PARTLABEL={l}"),
            SlotSpec::PartUuid(u) => write!(f, "PARTUUID={u}"),
        }
    }
}

/// Boot-loader state of a slot (GPT gptprio attributes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct SlotBootState {
    /// Priority 0–15; 0 is never booted.
    pub priority: u8,
    /// Boot tries left 0–15.
    pub tries: u8,
    /// Marked as having booted successfully.
    pub successful: bool,
}

impl SlotBootState {
    /// Whether the boot loader may choose this slot.
    pub fn bootable(&self) -> bool {
        self.priority > 0 && (self.tries > 0 || self.successful)
    }
}

/// A description of one slot, for `status-slots` and the D-Bus status.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SlotStatus {
    /// Which slot.
    pub slot: SlotId,
    /// GPT partition number.
    pub partition: u32,
    /// Partition name.
    pub label: String,
    /// Unique partition GUID, lowercase.
    pub partuuid: String,
    /// Partition type GUID, lowercase.
    pub type_guid: String,
    /// Byte offset on the disk.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// Boot-loader state.
    pub state: SlotBootState,
    /// Whether this is the running slot (`None` when unknown).
    pub booted: Option<bool>,
}

/// The inactive slot, the only slot that may be written.
///
/// It cannot be built outside this module tree: get one from [`BootBackend::target_slot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetSlot {
    slot: SlotId,
    disk: PathBuf,
    partuuid: Guid,
    partition: u32,
    offset: u64,
    len: u64,
}

impl TargetSlot {
    /// Which slot.
    pub fn slot(&self) -> SlotId {
        self.slot
    }
    /// The disk it is on.
    pub fn disk(&self) -> &std::path::Path {
        &self.disk
    }
    /// Its unique partition GUID.
    pub fn partuuid(&self) -> Guid {
        self.partuuid
    }
    /// Its GPT partition number.
    pub fn partition(&self) -> u32 {
        self.partition
    }
    /// Byte range `(offset, length)` of the slot on the disk.
    pub fn byte_range(&self) -> (u64, u64) {
        (self.offset, self.len)
    }
}

/// What went wrong with the slots.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The disk cannot be opened.
    #[error("cannot open disk {}: {source}", disk.display())]
    Open {
        /// The disk.
        disk: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The disk's GPT cannot be read or written.
    #[error("GPT on {}: {source}", disk.display())]
    Gpt {
        /// The disk.
        disk: PathBuf,
        /// The GPT error.
        source: gpt::GptError,
    },
    /// No partition matches a slot.
    #[error("slot {slot} ({spec}) not found on {}", disk.display())]
    SlotNotFound {
        /// Which slot.
        slot: SlotId,
        /// How it was searched.
        spec: String,
        /// The disk.
        disk: PathBuf,
    },
    /// More than one partition matches a slot.
    #[error("slot {slot} ({spec}) matches several partitions on {}", disk.display())]
    SlotAmbiguous {
        /// Which slot.
        slot: SlotId,
        /// How it was searched.
        spec: String,
        /// The disk.
        disk: PathBuf,
    },
    /// Both slots name the same partition.
    #[error("slots A and B are the same partition {partition} on {}", disk.display())]
    SameSlot {
        /// The partition number.
        partition: u32,
        /// The disk.
        disk: PathBuf,
    },
    /// A slot's partition extends past the end of the disk.
    #[error("slot {slot} (partition {partition}) lies outside the disk")]
    OutsideDisk {
        /// Which slot.
        slot: SlotId,
        /// The partition number.
        partition: u32,
    },
    /// The kernel command line cannot be read.
    #[error("cannot read the kernel command line {}: {source}", path.display())]
    Cmdline {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Neither the config nor the command line says which slot is running.
    #[error(
        "cannot tell which slot is booted: {detail}; set boot.booted_slot to \"A\" or \"B\" to override"
    )]
    BootedUnknown {
        /// What was found instead.
        detail: String,
    },
    /// The disk holding the slots cannot be found.
    #[error("cannot find the disk holding slot A ({detail}); set boot.disk")]
    DiskUnknown {
        /// What went wrong.
        detail: String,
    },
    /// A file or directory on the EFI system partition cannot be read or written.
    #[error("ESP: {action} {}: {source}", path.display())]
    Esp {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A boot loader EFI variable cannot be read or decoded.
    #[error("EFI variable {}: {detail}", path.display())]
    Efivar {
        /// The efivarfs file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// The new slot's files (kernel, initrd) cannot be read.
    #[error("cannot read the files of slot {slot}: {detail}")]
    SlotFiles {
        /// Which slot.
        slot: SlotId,
        /// What went wrong.
        detail: String,
    },
    /// The target slot changed since it was chosen (re-partitioned, or booted).
    #[error("target slot {slot} is no longer a valid write target: {reason}")]
    TargetChanged {
        /// Which slot.
        slot: SlotId,
        /// What changed.
        reason: String,
    },
}

/// A boot loader's view of the A/B slots.
///
/// Implementations: [`gptprio::GptprioBackend`] (GRUB `gptprio`, CoreOS/Flatcar) and
/// [`sdboot::SdbootBackend`] (systemd-boot, Boot Loader Specification boot counting).
pub trait BootBackend {
    /// The disk holding the slots.
    fn disk(&self) -> &std::path::Path;
    /// Both slots with their boot state, A first.
    fn describe(&self) -> Result<Vec<SlotStatus>, BootError>;
    /// The slot the running system booted from.
    fn booted_slot(&self) -> Result<SlotId, BootError>;
    /// The inactive slot, as the only possible write target.
    fn target_slot(&self) -> Result<TargetSlot, BootError>;
    /// Makes `target` unbootable (before writing to it).
    fn mark_unbootable(&self, target: &TargetSlot) -> Result<(), BootError>;
    /// Makes `target` the slot to try on next boot, with `tries` attempts (after a verified write).
    fn mark_active(&self, target: &TargetSlot, tries: u8) -> Result<(), BootError>;
    /// Marks the booted slot as good (after the health checks passed).
    fn mark_booted_good(&self) -> Result<(), BootError>;
    /// Opens `target` for writing, confined to its byte range.
    fn open_target(&self, target: &TargetSlot) -> Result<SlotWriter, BootError>;
    /// Opens the booted slot — the other slot than `target`, checked to be the booted one —
    /// **read-only**, as the source a delta payload copies from. No write handle on it exists.
    fn open_source(&self, target: &TargetSlot) -> Result<payloads::Source, BootError>;
}

/// Where a backend finds its two slots and which one is booted: what every backend is built with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotsConfig {
    /// Disk holding the slots; `None` means found from slot A's `/dev/disk/by-*` link.
    pub disk: Option<PathBuf>,
    /// How to find slot A.
    pub slot_a: SlotSpec,
    /// How to find slot B.
    pub slot_b: SlotSpec,
    /// Booted slot override (`None`: the backend finds out).
    pub booted_slot: Option<SlotId>,
}

/// Which backend to build, with its configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendConfig {
    /// [`GptprioBackend`]: the slots only.
    Gptprio(SlotsConfig),
    /// [`SdbootBackend`]: the slots and the ESP side (`[boot.systemd_boot]`).
    SystemdBoot(SlotsConfig, SdbootConfig),
}

/// The backend `boot.backend` selects, built from the settings (the agent's `[boot]` settings
/// convert into a [`BackendConfig`]; see each backend's `from_config`).
pub fn from_settings(
    config: impl Into<BackendConfig>,
    paths: &crate::paths::HostPaths,
) -> Result<Box<dyn BootBackend + Send + Sync>, BootError> {
    Ok(match config.into() {
        BackendConfig::Gptprio(slots) => Box::new(GptprioBackend::from_config(&slots, paths)?),
        BackendConfig::SystemdBoot(slots, sd) => {
            Box::new(SdbootBackend::from_config(&slots, sd, paths)?)
        }
    })
}
