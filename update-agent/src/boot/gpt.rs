//! A small, bounded GPT reader and attribute writer for disks and disk image files.
//!
//! Only partition attribute words are ever changed. A change is written to the backup copy first
//! (entry array, then header, then `fsync`), then to the primary copy, so one complete valid copy
//! with matching CRCs exists on the disk at every instant, and both are valid when a call returns.
//!
//! A write interrupted half-way (the agent killed, power lost) can leave the two copies
//! disagreeing, or one of them with a bad CRC. Before the next change, [`repair`] takes the copy a
//! boot loader uses — the primary when its header and entry-array CRCs are valid, else the
//! backup — as the truth and rewrites the other copy from it, so the table is never moved away
//! from what the machine would boot. With neither copy valid nothing is written.

use std::fmt;
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::str::FromStr;

/// Sector sizes probed for the primary header, in order.
const SECTOR_SIZES: [u64; 2] = [512, 4096];
/// Largest partition entry array read (bounds memory on hostile disks).
const MAX_ENTRY_ARRAY_BYTES: u64 = 1024 * 1024;
/// GPT header signature.
const SIGNATURE: &[u8; 8] = b"EFI PART";
/// CRC-32 as used by GPT (IEEE 802.3).
const CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

/// A GUID in GPT on-disk byte order (first three fields little-endian).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Guid(pub [u8; 16]);

/// Why a GUID string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a GUID: expected 8-4-4-4-12 hexadecimal digits")]
pub struct GuidParseError;

impl Guid {
    /// The all-zero GUID (an unused entry's type).
    pub const ZERO: Guid = Guid([0; 16]);
}

impl FromStr for Guid {
    type Err = GuidParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b = s.as_bytes();
        if b.len() != 36 || [8, 13, 18, 23].iter().any(|&i| b[i] != b'-') {
            return Err(GuidParseError);
        }
        let hex: Vec<u8> = b.iter().copied().filter(|&c| c != b'-').collect();
        if hex.len() != 32 {
            return Err(GuidParseError);
        }
        let mut canon = [0u8; 16];
        for (i, pair) in hex.chunks_exact(2).enumerate() {
            let hi = (pair[0] as char).to_digit(16).ok_or(GuidParseError)?;
            let lo = (pair[1] as char).to_digit(16).ok_or(GuidParseError)?;
            canon[i] = u8::try_from(hi * 16 + lo).map_err(|_| GuidParseError)?;
        }
        let mut out = canon;
        out[0..4].reverse();
        out[4..6].reverse();
        out[6..8].reverse();
        Ok(Guid(out))
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = &self.0;
        write!(
            f,
            "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-",
            d[3], d[2], d[1], d[0], d[5], d[4], d[7], d[6], d[8], d[9]
        )?;
        for x in &d[10..16] {
            write!(f, "{x:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Guid({self})")
    }
}

/// What went wrong reading or writing a GPT.
#[derive(Debug, thiserror::Error)]
pub enum GptError {
    /// An I/O error at a byte offset.
    #[error("I/O error {what} at byte {offset}: {source}")]
    Io {
        /// What was being read or written.
        what: &'static str,
        /// Byte offset on the disk.
        offset: u64,
        /// The I/O error.
        source: std::io::Error,
    },
    /// No GPT header at LBA 1 for 512- or 4096-byte sectors.
    #[error("no GPT found (no \"EFI PART\" header at LBA 1 for 512- or 4096-byte sectors)")]
    NotGpt,
    /// Neither header copy is usable.
    #[error(
        "both GPT copies are damaged (primary: {primary}; backup: {backup}); nothing can be read \
         from or written to this table: restore it by hand (e.g. from an `sgdisk --backup` file)"
    )]
    BothDamaged {
        /// Why the primary copy was rejected.
        primary: String,
        /// Why the backup copy was rejected.
        backup: String,
    },
    /// A copy is damaged or stale and cannot be rebuilt from the other one where it belongs.
    #[error(
        "refusing to write: the {copy} GPT copy is not valid ({reason}) and cannot be rebuilt \
         from the {other} copy ({why}); repair the table first (e.g. `sgdisk -e`/`cgpt repair`)"
    )]
    NeedsRepair {
        /// Which copy.
        copy: GptCopy,
        /// The copy it would be rebuilt from.
        other: GptCopy,
        /// What is wrong with it.
        reason: String,
        /// Why it cannot be rebuilt.
        why: String,
    },
    /// No partition entry with that number.
    #[error("no partition number {0} in the GPT")]
    NoSuchPartition(u32),
    /// After writing, the table did not read back as written.
    #[error("GPT write did not read back as written: {0}")]
    Verify(String),
}

/// One of the two copies of a GPT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GptCopy {
    /// The primary copy: header at LBA 1, entry array after it. Boot loaders read it first.
    Primary,
    /// The backup copy: entry array and header at the end of the disk.
    Backup,
}

impl fmt::Display for GptCopy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GptCopy::Primary => "primary",
            GptCopy::Backup => "backup",
        })
    }
}

/// What [`repair`] rewrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repair {
    /// The copy that was rewritten.
    pub rewritten: GptCopy,
    /// The copy it was rewritten from (the one a boot loader uses).
    pub from: GptCopy,
    /// What was wrong before: the rewritten copy's damage, or how the copies differed.
    pub reason: String,
}

/// One used partition entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Partition number (1-based index in the entry array).
    pub number: u32,
    /// Partition type GUID.
    pub type_guid: Guid,
    /// Unique partition GUID (PARTUUID).
    pub part_guid: Guid,
    /// First sector.
    pub first_lba: u64,
    /// Last sector (inclusive).
    pub last_lba: u64,
    /// The 64-bit attribute word.
    pub attributes: u64,
    /// Partition name (PARTLABEL).
    pub name: String,
}

/// A validated GPT header copy.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Header {
    /// The header bytes (`header_size` long).
    raw: Vec<u8>,
    lba: u64,
    alternate_lba: u64,
    entries_lba: u64,
    num_entries: u32,
    entry_size: u32,
}

impl Header {
    fn entries_len(&self) -> u64 {
        u64::from(self.num_entries) * u64::from(self.entry_size)
    }

    /// Sectors the entry array takes with `ss`-byte sectors.
    fn entries_sectors(&self, ss: u64) -> u64 {
        self.entries_len().div_ceil(ss)
    }

    fn first_usable_lba(&self) -> u64 {
        le64(&self.raw, 40)
    }

    fn last_usable_lba(&self) -> u64 {
        le64(&self.raw, 48)
    }
}

/// A GPT as read from a disk: geometry and used partition entries.
#[derive(Debug, Clone)]
pub struct GptTable {
    /// Logical sector size in bytes.
    pub sector_size: u64,
    /// Disk size in bytes.
    pub disk_bytes: u64,
    /// Used partition entries in number order.
    pub entries: Vec<Entry>,
    primary: Result<(Header, Vec<u8>), String>,
    backup: Result<(Header, Vec<u8>), String>,
}

fn le32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn read_at(file: &File, what: &'static str, offset: u64, len: u64) -> Result<Vec<u8>, GptError> {
    let len = usize::try_from(len).map_err(|_| GptError::Io {
        what,
        offset,
        source: std::io::Error::other("length does not fit in memory"),
    })?;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset)
        .map_err(|source| GptError::Io {
            what,
            offset,
            source,
        })?;
    Ok(buf)
}

fn write_at(file: &File, what: &'static str, offset: u64, buf: &[u8]) -> Result<(), GptError> {
    file.write_all_at(buf, offset)
        .map_err(|source| GptError::Io {
            what,
            offset,
            source,
        })
}

/// Size in bytes of a disk or image file (works for block devices too).
pub fn disk_size(file: &File) -> Result<u64, GptError> {
    let mut f = file;
    f.seek(SeekFrom::End(0)).map_err(|source| GptError::Io {
        what: "finding the disk size",
        offset: 0,
        source,
    })
}

/// Header CRC over `raw` with the CRC field zeroed.
fn header_crc(raw: &[u8]) -> u32 {
    let mut tmp = raw.to_vec();
    tmp[16..20].fill(0);
    CRC32.checksum(&tmp)
}

/// Reads and validates one header copy at `lba` and its entry array.
fn read_copy(
    file: &File,
    ss: u64,
    disk_bytes: u64,
    lba: u64,
) -> Result<Result<(Header, Vec<u8>), String>, GptError> {
    let last_lba = disk_bytes / ss - 1;
    if lba == 0 || lba > last_lba {
        return Ok(Err(format!("header LBA {lba} is outside the disk")));
    }
    let sector = read_at(file, "reading a GPT header", lba * ss, ss)?;
    if &sector[0..8] != SIGNATURE {
        return Ok(Err(format!("no \"EFI PART\" signature at LBA {lba}")));
    }
    let header_size = u64::from(le32(&sector, 12));
    if !(92..=ss).contains(&header_size) {
        return Ok(Err(format!("header size {header_size} is invalid")));
    }
    // Bounded by `ss` above, so this conversion is lossless.
    let raw = sector[..header_size as usize].to_vec();
    if header_crc(&raw) != le32(&raw, 16) {
        return Ok(Err(format!("header CRC mismatch at LBA {lba}")));
    }
    let h = Header {
        lba: le64(&raw, 24),
        alternate_lba: le64(&raw, 32),
        entries_lba: le64(&raw, 72),
        num_entries: le32(&raw, 80),
        entry_size: le32(&raw, 84),
        raw,
    };
    if h.lba != lba {
        return Ok(Err(format!(
            "header at LBA {lba} says it is at LBA {}",
            h.lba
        )));
    }
    if h.entry_size < 128 || !h.entry_size.is_multiple_of(8) || h.entry_size > 4096 {
        return Ok(Err(format!(
            "partition entry size {} is invalid",
            h.entry_size
        )));
    }
    let len = h.entries_len();
    if len == 0 || len > MAX_ENTRY_ARRAY_BYTES {
        return Ok(Err(format!(
            "entry array of {} × {} bytes is empty or larger than {MAX_ENTRY_ARRAY_BYTES}",
            h.num_entries, h.entry_size
        )));
    }
    let start = h.entries_lba.checked_mul(ss);
    match start.and_then(|s| s.checked_add(len)) {
        Some(end) if h.entries_lba > 0 && end <= disk_bytes => {}
        _ => return Ok(Err("partition entry array lies outside the disk".into())),
    }
    let entries = read_at(file, "reading GPT entries", h.entries_lba * ss, len)?;
    if CRC32.checksum(&entries) != le32(&h.raw, 88) {
        return Ok(Err(format!(
            "partition entry array CRC mismatch (header at LBA {lba})"
        )));
    }
    Ok(Ok((h, entries)))
}

fn parse_entries(h: &Header, raw: &[u8]) -> Vec<Entry> {
    let size = h.entry_size as usize;
    raw.chunks_exact(size)
        .enumerate()
        .filter_map(|(i, e)| {
            let mut type_bytes = [0u8; 16];
            type_bytes.copy_from_slice(&e[0..16]);
            let type_guid = Guid(type_bytes);
            if type_guid == Guid::ZERO {
                return None;
            }
            let mut part = [0u8; 16];
            part.copy_from_slice(&e[16..32]);
            let units: Vec<u16> = e[56..128]
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .take_while(|&u| u != 0)
                .collect();
            Some(Entry {
                number: u32::try_from(i + 1).ok()?,
                type_guid,
                part_guid: Guid(part),
                first_lba: le64(e, 32),
                last_lba: le64(e, 40),
                attributes: le64(e, 48),
                name: String::from_utf16_lossy(&units),
            })
        })
        .collect()
}

impl GptTable {
    /// Reads the GPT of `file`, preferring the primary copy and falling back to the backup.
    pub fn read(file: &File) -> Result<Self, GptError> {
        let disk_bytes = disk_size(file)?;
        for ss in SECTOR_SIZES {
            if disk_bytes < ss * 3 {
                continue;
            }
            let sig = read_at(file, "probing for a GPT header", ss, 8)?;
            if sig != SIGNATURE {
                continue;
            }
            let primary = read_copy(file, ss, disk_bytes, 1)?;
            let backup_lba = match &primary {
                Ok((h, _)) => h.alternate_lba,
                Err(_) => disk_bytes / ss - 1,
            };
            let backup = read_copy(file, ss, disk_bytes, backup_lba)?;
            return Self::from_copies(ss, disk_bytes, primary, backup);
        }
        // No primary header at all (its sector overwritten): a boot loader still uses a valid
        // backup at the end of the disk, and so does this reader.
        for ss in SECTOR_SIZES {
            if disk_bytes < ss * 3 {
                continue;
            }
            if let Ok(backup) = read_copy(file, ss, disk_bytes, disk_bytes / ss - 1)? {
                let primary = Err("no \"EFI PART\" signature at LBA 1".to_owned());
                return Self::from_copies(ss, disk_bytes, primary, Ok(backup));
            }
        }
        Err(GptError::NotGpt)
    }

    fn from_copies(
        sector_size: u64,
        disk_bytes: u64,
        primary: Result<(Header, Vec<u8>), String>,
        backup: Result<(Header, Vec<u8>), String>,
    ) -> Result<Self, GptError> {
        let entries = match (&primary, &backup) {
            (Ok((h, raw)), _) | (Err(_), Ok((h, raw))) => parse_entries(h, raw),
            (Err(p), Err(b)) => {
                return Err(GptError::BothDamaged {
                    primary: p.clone(),
                    backup: b.clone(),
                });
            }
        };
        Ok(Self {
            sector_size,
            disk_bytes,
            entries,
            primary,
            backup,
        })
    }

    /// Problems with either copy, if any (an empty list means both copies are valid and agree).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Err(e) = &self.primary {
            out.push(format!("primary: {e}"));
        }
        if let Err(e) = &self.backup {
            out.push(format!("backup: {e}"));
        }
        if let (Ok((ph, pe)), Ok((bh, be))) = (&self.primary, &self.backup) {
            if pe != be || ph.entry_size != bh.entry_size {
                out.push("primary and backup partition entries differ".into());
            }
            if ph.alternate_lba != bh.lba || bh.alternate_lba != ph.lba {
                out.push("primary and backup headers do not point at each other".into());
            }
        }
        out
    }

    /// The entry with partition number `number`.
    pub fn entry(&self, number: u32) -> Option<&Entry> {
        self.entries.iter().find(|e| e.number == number)
    }

    /// Byte range `(offset, length)` of `entry` on the disk, if it lies within the disk.
    pub fn byte_range(&self, entry: &Entry) -> Option<(u64, u64)> {
        let sectors = entry
            .last_lba
            .checked_sub(entry.first_lba)?
            .checked_add(1)?;
        let offset = entry.first_lba.checked_mul(self.sector_size)?;
        let len = sectors.checked_mul(self.sector_size)?;
        (offset.checked_add(len)? <= self.disk_bytes).then_some((offset, len))
    }
}

/// Where a rebuilt copy goes: its header LBA and its entry array's first LBA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Placement {
    lba: u64,
    entries_lba: u64,
}

/// Where the `target` copy belongs, given the valid copy `truth` (and the stale `old` copy if it
/// is valid, whose entry-array location is kept). `Err` says why it cannot be placed.
fn placement(
    target: GptCopy,
    truth: &Header,
    old: Option<&Header>,
    ss: u64,
    disk_bytes: u64,
) -> Result<Placement, String> {
    let sectors = truth.entries_sectors(ss);
    let last_lba = disk_bytes / ss - 1;
    let (lba, standard, lowest, end) = match target {
        GptCopy::Primary => {
            if truth.alternate_lba != 1 {
                return Err(format!(
                    "the backup header names LBA {} as the primary's, not LBA 1",
                    truth.alternate_lba
                ));
            }
            // Entry array between the header (LBA 1) and the first usable sector.
            (1, 2, 2, truth.first_usable_lba())
        }
        GptCopy::Backup => {
            let lba = truth.alternate_lba;
            if lba > last_lba || lba <= truth.last_usable_lba() || lba < 2 {
                return Err(format!(
                    "the primary header puts the backup at LBA {lba}, outside the space after \
                     the last usable LBA {} on a disk of {} sectors",
                    truth.last_usable_lba(),
                    last_lba + 1
                ));
            }
            // Entry array between the last usable sector and the header, usually right before
            // the header.
            let lowest = truth.last_usable_lba().saturating_add(1);
            (lba, lba.saturating_sub(sectors), lowest, lba)
        }
    };
    let fits = |start: u64| start >= lowest && start.checked_add(sectors).is_some_and(|e| e <= end);
    let entries_lba = match old {
        Some(h) if h.lba == lba && fits(h.entries_lba) => h.entries_lba,
        _ if fits(standard) => standard,
        _ => {
            return Err(format!(
                "no room for an entry array of {sectors} sectors between LBA {lowest} and LBA {end}"
            ));
        }
    };
    Ok(Placement { lba, entries_lba })
}

/// Best-effort name of the open disk, for log lines (`/proc/self/fd`).
fn disk_name(file: &File) -> String {
    use std::os::fd::AsRawFd;
    std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "?".to_owned())
}

/// Makes the two copies of `table` (just read from `file`) valid and identical again, if they are
/// not, by rewriting the copy a boot loader does not use from the one it does (see [`repair`]).
fn repair_table(file: &File, table: GptTable) -> Result<(GptTable, Option<Repair>), GptError> {
    let problems = table.problems();
    if problems.is_empty() {
        return Ok((table, None));
    }
    let reason = problems.join("; ");
    let ss = table.sector_size;
    // The boot loader's choice: the primary whenever its CRCs are valid, even if the backup is
    // newer (a write interrupted between the two copies); the backup only when the primary is
    // damaged. `GptTable::read` already returned `BothDamaged` when neither is valid.
    let (from, target, (truth, entries), old) = match (&table.primary, &table.backup) {
        (Ok(p), b) => (GptCopy::Primary, GptCopy::Backup, p, b.as_ref().ok()),
        (Err(_), Ok(b)) => (GptCopy::Backup, GptCopy::Primary, b, None),
        (Err(p), Err(b)) => {
            return Err(GptError::BothDamaged {
                primary: p.clone(),
                backup: b.clone(),
            });
        }
    };
    let place =
        placement(target, truth, old.map(|(h, _)| h), ss, table.disk_bytes).map_err(|why| {
            GptError::NeedsRepair {
                copy: target,
                other: from,
                reason: reason.clone(),
                why,
            }
        })?;
    let mut raw = truth.raw.clone();
    raw[24..32].copy_from_slice(&place.lba.to_le_bytes());
    raw[32..40].copy_from_slice(&truth.lba.to_le_bytes());
    raw[72..80].copy_from_slice(&place.entries_lba.to_le_bytes());
    let crc = header_crc(&raw);
    raw[16..20].copy_from_slice(&crc.to_le_bytes());
    // A whole sector: the rest of a header's sector is reserved and must be zero.
    let mut sector = raw;
    sector.resize(usize::try_from(ss).unwrap_or(512), 0);
    // The copy being rebuilt is not what a boot loader uses (it is damaged, or the primary is
    // valid and wins), and the copy it does use is not touched: a crash here changes nothing a
    // boot loader sees. Entry array first, then the header whose CRCs make the copy valid.
    write_at(
        file,
        "rebuilding GPT entries",
        place.entries_lba * ss,
        entries,
    )?;
    write_at(file, "rebuilding a GPT header", place.lba * ss, &sector)?;
    // Durable before the next change starts overwriting the copy it was rebuilt from.
    file.sync_data().map_err(|source| GptError::Io {
        what: "syncing the rebuilt GPT copy",
        offset: place.lba * ss,
        source,
    })?;
    let after = GptTable::read(file)?;
    if let Some(p) = after.problems().into_iter().next() {
        return Err(GptError::Verify(format!(
            "after rebuilding the {target} copy from the {from} copy: {p}"
        )));
    }
    tracing::warn!(
        disk = %disk_name(file),
        rewritten = %target,
        from = %from,
        reason = %reason,
        "GPT copies did not agree (an earlier write was interrupted?): rewrote one copy from \
         the one boot loaders use"
    );
    Ok((
        after,
        Some(Repair {
            rewritten: target,
            from,
            reason,
        }),
    ))
}

/// Makes both GPT copies of `file` valid and identical, if they are not: the copy a boot loader
/// uses (the primary when its header and entry-array CRCs are valid, else the backup) is taken as
/// the truth and the other copy is rewritten from it (entry array, header, `fsync`), with a
/// warning logged. Returns the table as read back and what was rewritten (`None`: nothing was
/// wrong). Fails with [`GptError::BothDamaged`] when neither copy is valid and with
/// [`GptError::NeedsRepair`] when the other copy's place on the disk is unusable; nothing is
/// written then. `file` must be open for reading and writing.
pub fn repair(file: &File) -> Result<(GptTable, Option<Repair>), GptError> {
    repair_table(file, GptTable::read(file)?)
}

/// Sets the attribute words of the given partitions, keeping a valid GPT copy on the disk
/// throughout.
///
/// Rereads the table from `file` first (never writes from a stale copy) and [`repair`]s it if
/// the copies disagree (e.g. an earlier call was interrupted). `file` must be open for reading
/// and writing. Returns the table as read back after the write.
pub fn write_attributes(file: &File, changes: &[(u32, u64)]) -> Result<GptTable, GptError> {
    let (table, _) = repair(file)?;
    let (Ok((ph, pe)), Ok((bh, _))) = (&table.primary, &table.backup) else {
        return Err(GptError::Verify(
            "a GPT copy is not valid after the repair".into(),
        ));
    };
    let mut entries = pe.clone();
    let size = ph.entry_size as usize;
    for &(number, attrs) in changes {
        if table.entry(number).is_none() {
            return Err(GptError::NoSuchPartition(number));
        }
        let at = (number as usize - 1) * size + 48;
        entries[at..at + 8].copy_from_slice(&attrs.to_le_bytes());
    }
    let entries_crc = CRC32.checksum(&entries);
    let ss = table.sector_size;
    // Backup first, then the primary, each entry array before its header and synced before the
    // other copy is touched. Boot loaders read the primary and fall back to the backup only when
    // the primary's CRCs fail. While the backup is written the primary is untouched and valid
    // (old table). Once the backup is synced it holds the new table; while the primary is then
    // written it is either still the old table (header not reached) or fails its entry-array CRC
    // (new entries under the old header, or a torn header), so the boot loader takes the backup:
    // the new table. A boot loader thus sees the old or the new table, never a mixture, at any
    // instant; and an interrupted write leaves copies that [`repair`] reconciles in favour of
    // what a boot loader would use.
    for (h, copy) in [(bh, GptCopy::Backup), (ph, GptCopy::Primary)] {
        let mut raw = h.raw.clone();
        raw[88..92].copy_from_slice(&entries_crc.to_le_bytes());
        let crc = header_crc(&raw);
        raw[16..20].copy_from_slice(&crc.to_le_bytes());
        write_at(file, "writing GPT entries", h.entries_lba * ss, &entries)?;
        write_at(file, "writing a GPT header", h.lba * ss, &raw)?;
        file.sync_data().map_err(|source| GptError::Io {
            what: match copy {
                GptCopy::Backup => "syncing the backup GPT",
                GptCopy::Primary => "syncing the primary GPT",
            },
            offset: h.lba * ss,
            source,
        })?;
    }
    let after = GptTable::read(file)?;
    if let Some(p) = after.problems().into_iter().next() {
        return Err(GptError::Verify(p));
    }
    for &(number, attrs) in changes {
        if after.entry(number).map(|e| e.attributes) != Some(attrs) {
            return Err(GptError::Verify(format!(
                "partition {number} attributes did not stick"
            )));
        }
    }
    Ok(after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_round_trips_in_mixed_endian() {
        let s = "5dfbf5f4-2848-4bac-aa5e-0d9a20b745a6";
        let g: Guid = s.parse().unwrap();
        assert_eq!(g.0[0..4], [0xf4, 0xf5, 0xfb, 0x5d]);
        assert_eq!(g.0[8], 0xaa);
        assert_eq!(g.to_string(), s);
        assert_eq!(
            "5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A6"
                .parse::<Guid>()
                .unwrap(),
            g
        );
    }

    #[test]
    fn guid_rejects_malformed() {
        for bad in [
            "",
            "5dfbf5f4-2848-4bac-aa5e-0d9a20b745a",
            "5dfbf5f4-2848-4bac-aa5e-0d9a20b745ag",
            "5dfbf5f4+2848-4bac-aa5e-0d9a20b745a6",
            "{5dfbf5f4-2848-4bac-aa5e-0d9a20b745a}",
            "5dfbf5f4-2848-4bac-aa5e-0d9a20b745é",
        ] {
            assert!(bad.parse::<Guid>().is_err(), "{bad}");
        }
    }

    #[test]
    fn non_gpt_file_is_rejected() {
        let f = tempfile::tempfile().unwrap();
        f.set_len(1 << 20).unwrap();
        assert!(matches!(GptTable::read(&f), Err(GptError::NotGpt)));
    }

    #[test]
    fn tiny_file_is_rejected() {
        let f = tempfile::tempfile().unwrap();
        f.write_all_at(b"x", 0).unwrap();
        assert!(matches!(GptTable::read(&f), Err(GptError::NotGpt)));
    }
}
