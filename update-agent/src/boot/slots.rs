//! What every boot backend reads from the GPT the same way: the disk to use, the two slot
//! partitions found in one read of the table ([`SlotPartitions`]), which of them the kernel
//! command line names, the write target and its re-check before each write, and the slot
//! descriptions. The backends differ only in where they keep the boot state (GPT attribute bits,
//! boot entries on the ESP) and how they learn which slot booted.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use super::cmdline::{self, PartRef};
use super::gpt::{Entry, GptTable};
use super::{BootError, SlotBootState, SlotId, SlotSpec, SlotStatus, SlotsConfig, TargetSlot};
use crate::paths::HostPaths;

/// The disk holding the slots: `slots.disk` (`boot.disk`), else found from slot A's
/// `/dev/disk/by-*` link.
pub(crate) fn disk_from_config(
    slots: &SlotsConfig,
    paths: &HostPaths,
) -> Result<PathBuf, BootError> {
    match &slots.disk {
        Some(d) => Ok(d.clone()),
        None => super::disk::discover_disk(&slots.slot_a, paths),
    }
}

/// Opens `disk` for reading, and for writing when `write`.
pub(crate) fn open_disk(disk: &Path, write: bool) -> Result<File, BootError> {
    OpenOptions::new()
        .read(true)
        .write(write)
        .open(disk)
        .map_err(|source| BootError::Open {
            disk: disk.to_owned(),
            source,
        })
}

/// Reads the kernel command line at `path`.
pub(crate) fn read_cmdline(path: &Path) -> Result<String, BootError> {
    std::fs::read_to_string(path).map_err(|source| BootError::Cmdline {
        path: path.to_owned(),
        source,
    })
}

/// What a kernel command line names as root or `/usr`: (parameter, partition), in the order
/// [`cmdline::candidates`] ranks them.
pub(crate) type Candidates = Vec<(&'static str, PartRef)>;

/// The two slot partitions as found in one read of the GPT.
pub(crate) struct SlotPartitions {
    /// The table they were found in.
    pub table: GptTable,
    /// Slot A's partition.
    pub a: Entry,
    /// Slot B's partition.
    pub b: Entry,
}

impl SlotPartitions {
    /// Reads the GPT of `disk` from `file` and finds slot A (`slot_a`) and slot B (`slot_b`)
    /// in it: an error when either is missing, ambiguous or outside the disk, or when both
    /// name the same partition.
    pub fn read(
        disk: &Path,
        file: &File,
        slot_a: &SlotSpec,
        slot_b: &SlotSpec,
    ) -> Result<Self, BootError> {
        let table = GptTable::read(file).map_err(|source| BootError::Gpt {
            disk: disk.to_owned(),
            source,
        })?;
        let a = slot_a.find_in(&table, SlotId::A, disk)?;
        let b = slot_b.find_in(&table, SlotId::B, disk)?;
        if a.number == b.number {
            return Err(BootError::SameSlot {
                partition: a.number,
                disk: disk.to_owned(),
            });
        }
        Ok(Self { table, a, b })
    }

    /// `slot`'s partition.
    pub fn entry(&self, slot: SlotId) -> &Entry {
        match slot {
            SlotId::A => &self.a,
            SlotId::B => &self.b,
        }
    }

    /// The slot whose partition the first of the command line's `candidates` naming one of
    /// them names (see [`cmdline::candidates`]).
    pub fn named_by(&self, candidates: &[(&'static str, PartRef)]) -> Option<SlotId> {
        candidates.iter().find_map(|(_, r)| {
            [SlotId::A, SlotId::B].into_iter().find(|&slot| {
                let e = self.entry(slot);
                match r {
                    PartRef::PartUuid(u) => e.part_guid == *u,
                    PartRef::PartLabel(l) => e.name == *l,
                }
            })
        })
    }

    /// The slot whose partition the kernel command line at `path` mounts (`root=`, `usr=`,
    /// `mount.usr=`, `verity.usr=`), with the candidates it found.
    pub fn named_by_cmdline(&self, path: &Path) -> Result<(Option<SlotId>, Candidates), BootError> {
        let text = read_cmdline(path)?;
        let candidates = cmdline::candidates(&text);
        Ok((self.named_by(&candidates), candidates))
    }

    /// `slot` described for `status-slots` and the D-Bus status, with its boot `state` and
    /// whether it is the `booted` one (`None`: unknown).
    pub fn status(&self, slot: SlotId, state: SlotBootState, booted: Option<SlotId>) -> SlotStatus {
        let e = self.entry(slot);
        let (offset, len) = self.table.byte_range(e).unwrap_or((0, 0));
        SlotStatus {
            slot,
            partition: e.number,
            label: e.name.clone(),
            partuuid: e.part_guid.to_string(),
            type_guid: e.type_guid.to_string(),
            offset,
            len,
            state,
            booted: booted.map(|b| b == slot),
        }
    }

    /// The write target on `disk`: the slot that is not `booted`.
    pub fn target(&self, disk: &Path, booted: SlotId) -> Result<TargetSlot, BootError> {
        let slot = booted.other();
        let e = self.entry(slot);
        let (offset, len) = self.table.byte_range(e).ok_or(BootError::OutsideDisk {
            slot,
            partition: e.number,
        })?;
        Ok(TargetSlot {
            slot,
            disk: disk.to_owned(),
            partuuid: e.part_guid,
            partition: e.number,
            offset,
            len,
        })
    }

    /// The booted slot — the other slot than `target`, which [`Self::check_target`] has checked
    /// — as a read-only delta source over `file` (the disk `disk`, opened read-only).
    pub fn source(
        &self,
        disk: &Path,
        file: File,
        target: &TargetSlot,
    ) -> Result<payloads::Source, BootError> {
        let slot = target.slot.other();
        let e = self.entry(slot);
        let (offset, len) = self.table.byte_range(e).ok_or(BootError::OutsideDisk {
            slot,
            partition: e.number,
        })?;
        payloads::Source::new(file, offset, len).map_err(|source| BootError::Open {
            disk: disk.to_owned(),
            source,
        })
    }

    /// Checks that `target` (chosen earlier) still names the inactive slot's partition, with
    /// the same byte range, now that `booted` is the booted slot.
    pub fn check_target(&self, target: &TargetSlot, booted: SlotId) -> Result<(), BootError> {
        let changed = |reason: &str| BootError::TargetChanged {
            slot: target.slot,
            reason: reason.to_owned(),
        };
        if booted == target.slot {
            return Err(changed("it is now the booted slot"));
        }
        let e = self.entry(target.slot);
        if e.part_guid != target.partuuid || e.number != target.partition {
            return Err(changed("its partition changed"));
        }
        if self.table.byte_range(e) != Some((target.offset, target.len)) {
            return Err(changed("its byte range changed"));
        }
        Ok(())
    }
}
