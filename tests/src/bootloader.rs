//! A stand-in for GRUB's `gptprio.next`, applied to a disk image at each simulated boot.
//!
//! The rule (CoreOS GRUB `gptprio.c`): among partitions of the CoreOS `/usr` type, boot the one
//! with the highest priority (bits 48–51) that has tries left (bits 52–55) or is marked
//! successful (bit 56); on a tie the first one wins; priority 0 never boots. Before booting it,
//! decrement its tries when above 0 (so a new slot that never gets marked good is skipped on the
//! boot after its last try, and the old, successful slot comes up).

use std::path::Path;

use crate::error::Result;
use crate::gpt::{self, Entry, Guid, Table};

/// The CoreOS/Flatcar `/usr` partition type.
pub const USR_TYPE: &str = "5dfbf5f4-2848-4bac-aa5e-0d9a20b745a6";

/// The gptprio fields of an attribute word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prio {
    /// Priority (0–15; 0 never boots).
    pub priority: u8,
    /// Tries left (0–15).
    pub tries: u8,
    /// Marked successful.
    pub successful: bool,
}

impl Prio {
    /// Decodes an attribute word.
    pub fn decode(attrs: u64) -> Prio {
        Prio {
            priority: ((attrs >> 48) & 0xf) as u8,
            tries: ((attrs >> 52) & 0xf) as u8,
            successful: (attrs >> 56) & 1 == 1,
        }
    }

    /// Replaces the gptprio bits of `attrs`.
    pub fn encode(self, attrs: u64) -> u64 {
        let mask = (0xf << 48) | (0xf << 52) | (1 << 56);
        (attrs & !mask)
            | (u64::from(self.priority & 0xf) << 48)
            | (u64::from(self.tries & 0xf) << 52)
            | (u64::from(self.successful) << 56)
    }

    /// Whether gptprio would consider it at all.
    pub fn bootable(self) -> bool {
        self.priority > 0 && (self.tries > 0 || self.successful)
    }
}

/// The partition `gptprio.next` would choose among `entries` (without spending a try): the
/// `/usr`-type partition with the highest priority that has tries left or is successful, the
/// first one on a tie. `None`: nothing is bootable.
pub fn choose(entries: &[Entry]) -> Result<Option<Entry>> {
    let usr: Guid = USR_TYPE.parse()?;
    let mut best: Option<(&Entry, Prio)> = None;
    for e in entries.iter().filter(|e| e.type_guid == usr) {
        let p = Prio::decode(e.attributes);
        if p.bootable() && best.is_none_or(|(_, b)| p.priority > b.priority) {
            best = Some((e, p));
        }
    }
    Ok(best.map(|(e, _)| e.clone()))
}

/// Chooses the partition to boot, as `gptprio.next` does, and decrements its tries on the disk.
/// `None`: nothing is bootable. The table must be valid in both copies ([`Table::read`]).
pub fn gptprio_next(disk: &Path) -> Result<Option<Entry>> {
    let table = Table::read(disk)?;
    let Some(entry) = choose(&table.entries)? else {
        return Ok(None);
    };
    let mut prio = Prio::decode(entry.attributes);
    let mut chosen = entry;
    if prio.tries > 0 {
        prio.tries -= 1;
        chosen.attributes = prio.encode(chosen.attributes);
        gpt::set_attributes(disk, chosen.number, chosen.attributes)?;
    }
    Ok(Some(chosen))
}
