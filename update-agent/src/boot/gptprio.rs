//! GRUB `gptprio` backend (CoreOS/Flatcar): boot state in GPT partition attribute bits.
//!
//! Bits 48–51 priority (0 = never boot), 52–55 tries left, 56 successful. GRUB's
//! `gptprio.next` boots the highest-priority partition of the CoreOS `/usr` type that has
//! tries left or is marked successful (first one wins a tie), decrementing tries when above 0.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::gpt::{self, Entry, GptTable, Guid};
use super::slots::{SlotPartitions, disk_from_config, open_disk};
use super::{
    BootBackend, BootError, SlotBootState, SlotId, SlotSpec, SlotStatus, SlotWriter, SlotsConfig,
    TargetSlot,
};

/// Partition type GUID GRUB's `gptprio.next` considers: CoreOS/Flatcar `/usr`.
pub const COREOS_USR_TYPE: &str = "5dfbf5f4-2848-4bac-aa5e-0d9a20b745a6";

const PRIORITY_SHIFT: u32 = 48;
const TRIES_SHIFT: u32 = 52;
const SUCCESSFUL_BIT: u32 = 56;

/// Decodes the gptprio fields of an attribute word.
pub fn decode(attrs: u64) -> SlotBootState {
    SlotBootState {
        priority: ((attrs >> PRIORITY_SHIFT) & 0xf) as u8,
        tries: ((attrs >> TRIES_SHIFT) & 0xf) as u8,
        successful: (attrs >> SUCCESSFUL_BIT) & 1 == 1,
    }
}

/// Replaces the gptprio fields of `attrs` with `state`, keeping every other bit.
/// Priority and tries are clamped to 15.
pub fn encode(attrs: u64, state: SlotBootState) -> u64 {
    let mask = (0xf << PRIORITY_SHIFT) | (0xf << TRIES_SHIFT) | (1 << SUCCESSFUL_BIT);
    (attrs & !mask)
        | (u64::from(state.priority.min(15)) << PRIORITY_SHIFT)
        | (u64::from(state.tries.min(15)) << TRIES_SHIFT)
        | (u64::from(state.successful) << SUCCESSFUL_BIT)
}

/// The partition a `gptprio.next` run chose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// Partition number.
    pub partition: u32,
    /// Unique partition GUID.
    pub partuuid: Guid,
    /// Partition name.
    pub label: String,
    /// Its state after selection (tries already decremented).
    pub state: SlotBootState,
}

/// Simulates GRUB `gptprio.next` on `disk`, over partitions of the CoreOS `/usr` type.
///
/// Returns `None` when no partition is bootable. Decrements the chosen partition's tries (and
/// writes the GPT) when they are above 0, exactly as GRUB does.
pub fn gptprio_select(disk: &Path) -> Result<Option<Selection>, BootError> {
    let usr: Guid = COREOS_USR_TYPE
        .parse()
        .map_err(|_| BootError::DiskUnknown {
            detail: "internal: bad CoreOS usr type GUID".into(),
        })?;
    gptprio_select_type(disk, usr)
}

/// [`gptprio_select`] over partitions of type `type_guid`.
pub fn gptprio_select_type(disk: &Path, type_guid: Guid) -> Result<Option<Selection>, BootError> {
    let file = open_disk(disk, true)?;
    let table = GptTable::read(&file).map_err(|source| gpt_err(disk, source))?;
    let mut found: Option<(&Entry, SlotBootState)> = None;
    for e in table.entries.iter().filter(|e| e.type_guid == type_guid) {
        let s = decode(e.attributes);
        let best = found.map_or(0, |(_, b)| b.priority);
        if (s.tries > 0 || s.successful) && s.priority > best {
            found = Some((e, s));
        }
    }
    let Some((entry, mut state)) = found else {
        return Ok(None);
    };
    if state.tries > 0 {
        state.tries -= 1;
        gpt::write_attributes(&file, &[(entry.number, encode(entry.attributes, state))])
            .map_err(|source| gpt_err(disk, source))?;
    }
    Ok(Some(Selection {
        partition: entry.number,
        partuuid: entry.part_guid,
        label: entry.name.clone(),
        state,
    }))
}

fn gpt_err(disk: &Path, source: gpt::GptError) -> BootError {
    BootError::Gpt {
        disk: disk.to_owned(),
        source,
    }
}

/// Where the backend learns which slot is booted.
#[derive(Debug, Clone, PartialEq, Eq)]
enum BootedSource {
    Override(SlotId),
    Cmdline(PathBuf),
}

/// The gptprio backend over one disk (block device or image file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GptprioBackend {
    disk: PathBuf,
    slot_a: SlotSpec,
    slot_b: SlotSpec,
    booted: BootedSource,
}

impl GptprioBackend {
    /// A backend for `disk` with the slots found by `slot_a`/`slot_b`; the booted slot is read
    /// from `/proc/cmdline` unless overridden.
    pub fn new(disk: impl Into<PathBuf>, slot_a: SlotSpec, slot_b: SlotSpec) -> Self {
        Self {
            disk: disk.into(),
            slot_a,
            slot_b,
            booted: BootedSource::Cmdline(PathBuf::from("/proc/cmdline")),
        }
    }

    /// Reads the kernel command line from `path` instead of `/proc/cmdline`.
    pub fn with_cmdline_path(mut self, path: impl Into<PathBuf>) -> Self {
        if let BootedSource::Cmdline(_) = self.booted {
            self.booted = BootedSource::Cmdline(path.into());
        }
        self
    }

    /// Takes the booted slot from configuration instead of the command line.
    pub fn with_booted_override(mut self, slot: Option<SlotId>) -> Self {
        if let Some(s) = slot {
            self.booted = BootedSource::Override(s);
        }
        self
    }

    /// Builds the backend from its configuration, finding the disk from slot A's link when unset.
    pub fn from_config(
        slots: &SlotsConfig,
        paths: &crate::paths::HostPaths,
    ) -> Result<Self, BootError> {
        let disk = disk_from_config(slots, paths)?;
        Ok(Self::new(disk, slots.slot_a.clone(), slots.slot_b.clone())
            .with_cmdline_path(paths.kernel_cmdline.clone())
            .with_booted_override(slots.booted_slot))
    }

    /// The disk this backend manages.
    pub fn disk(&self) -> &Path {
        &self.disk
    }

    fn locate_in(&self, file: &File) -> Result<SlotPartitions, BootError> {
        SlotPartitions::read(&self.disk, file, &self.slot_a, &self.slot_b)
    }

    fn booted_in(&self, loc: &SlotPartitions) -> Result<SlotId, BootError> {
        let path = match &self.booted {
            BootedSource::Override(s) => return Ok(*s),
            BootedSource::Cmdline(p) => p,
        };
        let (named, cands) = loc.named_by_cmdline(path)?;
        if let Some(slot) = named {
            return Ok(slot);
        }
        let seen: Vec<String> = cands.iter().map(|(p, r)| format!("{p}={r:?}")).collect();
        Err(BootError::BootedUnknown {
            detail: if seen.is_empty() {
                format!(
                    "no mount.usr=, verity.usr=, usr= or root= naming a PARTUUID/PARTLABEL in {}",
                    path.display()
                )
            } else {
                format!(
                    "{} names neither slot partition on {}",
                    seen.join(", "),
                    self.disk.display()
                )
            },
        })
    }

    /// Writes new gptprio states for the given slots in one GPT update.
    fn write(
        &self,
        file: &File,
        loc: &SlotPartitions,
        changes: &[(SlotId, SlotBootState)],
    ) -> Result<(), BootError> {
        let words: Vec<(u32, u64)> = changes
            .iter()
            .map(|(slot, st)| {
                let e = loc.entry(*slot);
                (e.number, encode(e.attributes, *st))
            })
            .collect();
        gpt::write_attributes(file, &words).map_err(|source| gpt_err(&self.disk, source))?;
        Ok(())
    }

    /// Re-reads the GPT and checks `target` still names the inactive slot's partition.
    fn recheck(&self, file: &File, target: &TargetSlot) -> Result<SlotPartitions, BootError> {
        let loc = self.locate_in(file)?;
        loc.check_target(target, self.booted_in(&loc)?)?;
        Ok(loc)
    }
}

impl BootBackend for GptprioBackend {
    fn disk(&self) -> &Path {
        &self.disk
    }

    fn describe(&self) -> Result<Vec<SlotStatus>, BootError> {
        let file = open_disk(&self.disk, false)?;
        let loc = self.locate_in(&file)?;
        let booted = self.booted_in(&loc).ok();
        let status = |slot: SlotId| loc.status(slot, decode(loc.entry(slot).attributes), booted);
        Ok(vec![status(SlotId::A), status(SlotId::B)])
    }

    fn booted_slot(&self) -> Result<SlotId, BootError> {
        let file = open_disk(&self.disk, false)?;
        let loc = self.locate_in(&file)?;
        self.booted_in(&loc)
    }

    fn target_slot(&self) -> Result<TargetSlot, BootError> {
        let file = open_disk(&self.disk, false)?;
        let loc = self.locate_in(&file)?;
        loc.target(&self.disk, self.booted_in(&loc)?)
    }

    fn mark_unbootable(&self, target: &TargetSlot) -> Result<(), BootError> {
        let file = open_disk(&self.disk, true)?;
        let loc = self.recheck(&file, target)?;
        self.write(&file, &loc, &[(target.slot, SlotBootState::default())])?;
        tracing::info!(slot = %target.slot, partition = target.partition, "marked target slot unbootable");
        Ok(())
    }

    fn mark_active(&self, target: &TargetSlot, tries: u8) -> Result<(), BootError> {
        let file = open_disk(&self.disk, true)?;
        let loc = self.recheck(&file, target)?;
        let other = target.slot.other();
        let mut other_state = decode(loc.entry(other).attributes);
        if other_state.priority >= 15 {
            other_state.priority = 14;
        }
        let new = SlotBootState {
            priority: (other_state.priority + 1).max(1),
            tries: tries.clamp(1, 15),
            successful: false,
        };
        let mut changes = vec![(target.slot, new)];
        if other_state != decode(loc.entry(other).attributes) {
            changes.push((other, other_state));
        }
        self.write(&file, &loc, &changes)?;
        tracing::info!(
            slot = %target.slot,
            priority = new.priority,
            tries = new.tries,
            "marked target slot active for next boot"
        );
        Ok(())
    }

    fn mark_booted_good(&self) -> Result<(), BootError> {
        let file = open_disk(&self.disk, true)?;
        let loc = self.locate_in(&file)?;
        let booted = self.booted_in(&loc)?;
        let mut state = decode(loc.entry(booted).attributes);
        if state.priority == 0 {
            tracing::warn!(slot = %booted, "booted slot has priority 0; the boot loader would not choose it");
        }
        state.tries = 0;
        state.successful = true;
        self.write(&file, &loc, &[(booted, state)])?;
        tracing::info!(slot = %booted, "marked booted slot successful");
        Ok(())
    }

    fn open_target(&self, target: &TargetSlot) -> Result<SlotWriter, BootError> {
        let file = open_disk(&self.disk, true)?;
        self.recheck(&file, target)?;
        Ok(SlotWriter::new(
            file,
            target.slot,
            target.offset,
            target.len,
        ))
    }

    fn open_source(&self, target: &TargetSlot) -> Result<payloads::Source, BootError> {
        let file = open_disk(&self.disk, false)?;
        let loc = self.recheck(&file, target)?;
        loc.source(&self.disk, file, target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_bits_round_trip_and_keep_other_bits() {
        let other_bits = (1u64 << 0) | (1 << 60) | (1 << 63);
        let s = SlotBootState {
            priority: 2,
            tries: 1,
            successful: false,
        };
        let w = encode(other_bits, s);
        assert_eq!(w, other_bits | (2 << 48) | (1 << 52));
        assert_eq!(decode(w), s);
        let good = SlotBootState {
            priority: 15,
            tries: 0,
            successful: true,
        };
        assert_eq!(encode(0, good), 0x010f_0000_0000_0000);
        assert_eq!(decode(u64::MAX).priority, 15);
        assert_eq!(
            encode(
                0,
                SlotBootState {
                    priority: 200,
                    tries: 99,
                    successful: false
                }
            ),
            0x00ff_0000_0000_0000
        );
    }
}
