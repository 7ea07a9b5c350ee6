//! GPT disk image files written and read without `sgdisk`: protective MBR, primary and backup
//! headers and entry arrays with their CRC32s (UEFI 2.x, 512-byte sectors, 128 entries of 128
//! bytes), and attribute updates that keep both copies valid.
//!
//! Written independently of the agent's GPT code on purpose: the scenarios check the agent's
//! writes with a second implementation (and with `sgdisk -v` where it is installed).

use std::fmt;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::error::{Error, Result, io};

/// Sector size of the images.
pub const SECTOR: u64 = 512;
/// Entries in each entry array.
pub const ENTRIES: u32 = 128;
/// Size of one entry.
pub const ENTRY_SIZE: u32 = 128;
/// Sectors of one entry array (128 × 128 B = 16 KiB).
const ARRAY_SECTORS: u64 = (ENTRIES as u64 * ENTRY_SIZE as u64) / SECTOR;
/// Partition alignment: 1 MiB.
const ALIGN: u64 = 2048;
/// Header size written.
const HEADER_SIZE: usize = 92;

const CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

/// A GUID, stored in GPT's mixed-endian byte order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Guid(pub [u8; 16]);

impl FromStr for Guid {
    type Err = Error;

    fn from_str(s: &str) -> Result<Guid> {
        let bad = || Error::Unexpected {
            what: "GUID",
            detail: format!("`{s}` is not of the form 8-4-4-4-12 hex digits"),
        };
        let parts: Vec<&str> = s.split('-').collect();
        let lens: Vec<usize> = parts.iter().map(|p| p.len()).collect();
        if lens != [8, 4, 4, 4, 12] {
            return Err(bad());
        }
        let hex: String = parts.concat();
        let mut raw = [0u8; 16];
        for (i, b) in raw.iter_mut().enumerate() {
            *b = hex
                .get(2 * i..2 * i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(bad)?;
        }
        // Mixed endian: the first three fields are little-endian on disk.
        raw[0..4].reverse();
        raw[4..6].reverse();
        raw[6..8].reverse();
        Ok(Guid(raw))
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-",
            b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9]
        )?;
        for x in &b[10..] {
            write!(f, "{x:02x}")?;
        }
        Ok(())
    }
}

impl Guid {
    /// A random-looking (version 4) GUID derived deterministically from `seed`.
    pub fn from_seed(seed: u64) -> Guid {
        let mut x = seed ^ 0x9e37_79b9_7f4a_7c15;
        let mut raw = [0u8; 16];
        for chunk in raw.chunks_mut(8) {
            // splitmix64
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_le_bytes());
        }
        raw[7] = (raw[7] & 0x0f) | 0x40;
        raw[8] = (raw[8] & 0x3f) | 0x80;
        Guid(raw)
    }
}

/// A partition to create.
#[derive(Debug, Clone)]
pub struct PartitionSpec {
    /// Name (PARTLABEL), at most 36 UTF-16 units.
    pub name: String,
    /// Type GUID.
    pub type_guid: Guid,
    /// Size in bytes (rounded up to whole sectors).
    pub size: u64,
    /// Attribute word.
    pub attributes: u64,
}

/// A used partition entry as read from an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Partition number (1-based).
    pub number: u32,
    /// Type GUID.
    pub type_guid: Guid,
    /// Unique partition GUID (PARTUUID).
    pub part_guid: Guid,
    /// First sector.
    pub first_lba: u64,
    /// Last sector (inclusive).
    pub last_lba: u64,
    /// Attribute word.
    pub attributes: u64,
    /// Name (PARTLABEL).
    pub name: String,
}

impl Entry {
    /// (offset, length) in bytes.
    pub fn byte_range(&self) -> (u64, u64) {
        (
            self.first_lba * SECTOR,
            (self.last_lba + 1 - self.first_lba) * SECTOR,
        )
    }
}

/// Creates `path` as a sparse GPT disk image holding `parts` in order, each aligned to 1 MiB,
/// with 1 MiB free at the end (for the backup GPT). `seed` makes the disk and partition GUIDs.
pub fn create(path: &Path, seed: u64, parts: &[PartitionSpec]) -> Result<Vec<Entry>> {
    if parts.is_empty() || parts.len() > ENTRIES as usize {
        return Err(disk_err(path, "a disk needs 1 to 128 partitions"));
    }
    let mut entries = Vec::new();
    let mut next = ALIGN;
    for (i, p) in parts.iter().enumerate() {
        let sectors = p.size.div_ceil(SECTOR).max(1);
        let number = u32::try_from(i + 1).map_err(|_| disk_err(path, "too many partitions"))?;
        if p.name.encode_utf16().count() > 36 {
            return Err(disk_err(
                path,
                &format!("name `{}` is over 36 characters", p.name),
            ));
        }
        entries.push(Entry {
            number,
            type_guid: p.type_guid,
            part_guid: Guid::from_seed(seed.wrapping_mul(131).wrapping_add(u64::from(number))),
            first_lba: next,
            last_lba: next + sectors - 1,
            attributes: p.attributes,
            name: p.name.clone(),
        });
        next = (next + sectors).div_ceil(ALIGN) * ALIGN;
    }
    let total = next + ALIGN;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io("creating a disk image", path))?;
    file.set_len(total * SECTOR)
        .map_err(io("sizing a disk image", path))?;
    write_at(&file, path, 0, &protective_mbr(total))?;
    let array = encode_entries(&entries);
    let disk_guid = Guid::from_seed(seed);
    write_copies(&file, path, total, disk_guid, &array)?;
    file.sync_all().map_err(io("syncing a disk image", path))?;
    Ok(entries)
}

fn protective_mbr(total: u64) -> Vec<u8> {
    let mut mbr = vec![0u8; SECTOR as usize];
    let p = &mut mbr[446..462];
    p[0] = 0; // not bootable
    p[1..4].copy_from_slice(&[0x00, 0x02, 0x00]); // CHS of LBA 1
    p[4] = 0xEE; // GPT protective
    p[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
    p[8..12].copy_from_slice(&1u32.to_le_bytes());
    let size = u32::try_from(total - 1).unwrap_or(u32::MAX);
    p[12..16].copy_from_slice(&size.to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xAA;
    mbr
}

fn encode_entries(entries: &[Entry]) -> Vec<u8> {
    let mut array = vec![0u8; (ENTRIES * ENTRY_SIZE) as usize];
    for e in entries {
        let at = (e.number as usize - 1) * ENTRY_SIZE as usize;
        let b = &mut array[at..at + ENTRY_SIZE as usize];
        b[0..16].copy_from_slice(&e.type_guid.0);
        b[16..32].copy_from_slice(&e.part_guid.0);
        b[32..40].copy_from_slice(&e.first_lba.to_le_bytes());
        b[40..48].copy_from_slice(&e.last_lba.to_le_bytes());
        b[48..56].copy_from_slice(&e.attributes.to_le_bytes());
        for (i, u) in e.name.encode_utf16().take(36).enumerate() {
            b[56 + 2 * i..58 + 2 * i].copy_from_slice(&u.to_le_bytes());
        }
    }
    array
}

fn header(total: u64, primary: bool, disk_guid: Guid, array_crc: u32) -> Vec<u8> {
    let (my, alt, entries_lba) = if primary {
        (1, total - 1, 2)
    } else {
        (total - 1, 1, total - 1 - ARRAY_SECTORS)
    };
    let mut h = vec![0u8; SECTOR as usize];
    h[0..8].copy_from_slice(b"EFI PART");
    h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
    h[12..16].copy_from_slice(&(HEADER_SIZE as u32).to_le_bytes());
    h[24..32].copy_from_slice(&u64::to_le_bytes(my));
    h[32..40].copy_from_slice(&u64::to_le_bytes(alt));
    h[40..48].copy_from_slice(&(2 + ARRAY_SECTORS).to_le_bytes());
    h[48..56].copy_from_slice(&(total - 2 - ARRAY_SECTORS).to_le_bytes());
    h[56..72].copy_from_slice(&disk_guid.0);
    h[72..80].copy_from_slice(&u64::to_le_bytes(entries_lba));
    h[80..84].copy_from_slice(&ENTRIES.to_le_bytes());
    h[84..88].copy_from_slice(&ENTRY_SIZE.to_le_bytes());
    h[88..92].copy_from_slice(&array_crc.to_le_bytes());
    let crc = CRC32.checksum(&h[..HEADER_SIZE]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Writes the backup copy, then the primary (each: entry array, then header).
fn write_copies(file: &File, path: &Path, total: u64, disk_guid: Guid, array: &[u8]) -> Result<()> {
    let crc = CRC32.checksum(array);
    let backup_entries = total - 1 - ARRAY_SECTORS;
    write_at(file, path, backup_entries * SECTOR, array)?;
    write_at(
        file,
        path,
        (total - 1) * SECTOR,
        &header(total, false, disk_guid, crc),
    )?;
    write_at(file, path, 2 * SECTOR, array)?;
    write_at(file, path, SECTOR, &header(total, true, disk_guid, crc))?;
    Ok(())
}

fn write_at(file: &File, path: &Path, offset: u64, buf: &[u8]) -> Result<()> {
    file.write_all_at(buf, offset)
        .map_err(io("writing a disk image", path))
}

fn read_at(file: &File, path: &Path, offset: u64, len: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset)
        .map_err(io("reading a disk image", path))?;
    Ok(buf)
}

fn disk_err(path: &Path, reason: &str) -> Error {
    Error::Disk {
        path: path.to_path_buf(),
        reason: reason.to_owned(),
    }
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

/// A GPT read from an image, both copies checked.
#[derive(Debug, Clone)]
pub struct Table {
    /// The image file.
    pub path: PathBuf,
    /// Disk size in sectors.
    pub total: u64,
    /// Disk GUID.
    pub disk_guid: Guid,
    /// Used entries, by number.
    pub entries: Vec<Entry>,
}

impl Table {
    /// Reads `path`, failing unless the protective MBR and both GPT copies are valid (header
    /// signature, size and CRC; entry array CRC; locations; identical entry arrays).
    pub fn read(path: &Path) -> Result<Table> {
        let file = File::open(path).map_err(io("opening a disk image", path))?;
        let len = file
            .metadata()
            .map_err(io("reading a disk image's size", path))?
            .len();
        let total = len / SECTOR;
        if total < 2 * (2 + ARRAY_SECTORS) + 1 {
            return Err(disk_err(path, "too small to hold a GPT"));
        }
        let mbr = read_at(&file, path, 0, SECTOR as usize)?;
        if mbr[510..512] != [0x55, 0xAA] || mbr[446 + 4] != 0xEE {
            return Err(disk_err(path, "no protective MBR"));
        }
        let (ph, pa) = read_copy(&file, path, 1, total, "primary")?;
        let (bh, ba) = read_copy(&file, path, total - 1, total, "backup")?;
        if pa != ba {
            return Err(disk_err(path, "primary and backup entry arrays differ"));
        }
        if ph[56..72] != bh[56..72] {
            return Err(disk_err(path, "primary and backup disk GUIDs differ"));
        }
        let mut disk_guid = [0u8; 16];
        disk_guid.copy_from_slice(&ph[56..72]);
        let entries = decode_entries(&pa);
        Ok(Table {
            path: path.to_path_buf(),
            total,
            disk_guid: Guid(disk_guid),
            entries,
        })
    }

    /// Entry number `n`.
    pub fn entry(&self, n: u32) -> Result<&Entry> {
        self.entries
            .iter()
            .find(|e| e.number == n)
            .ok_or_else(|| disk_err(&self.path, &format!("no partition {n}")))
    }

    /// The entry named `name`.
    pub fn by_name(&self, name: &str) -> Result<&Entry> {
        self.entries
            .iter()
            .find(|e| e.name == name)
            .ok_or_else(|| disk_err(&self.path, &format!("no partition named {name}")))
    }
}

/// Each GPT copy of an image judged on its own, as firmware and boot loaders see a disk whose
/// copies disagree (e.g. after a writer was killed between them): the primary copy is used when
/// it is valid, else the backup (UEFI 2.x, 5.3.2; GRUB's `gpt` module).
#[derive(Debug, Clone)]
pub struct Copies {
    /// The image file.
    pub path: PathBuf,
    /// The primary copy's used entries, or why the copy is not valid.
    pub primary: std::result::Result<Vec<Entry>, String>,
    /// The backup copy's used entries, or why the copy is not valid.
    pub backup: std::result::Result<Vec<Entry>, String>,
}

impl Copies {
    /// Reads both copies of `path`; fails only when the file cannot be read or holds no
    /// protective MBR (a damaged copy is reported in [`Copies::primary`]/[`Copies::backup`]).
    pub fn read(path: &Path) -> Result<Copies> {
        let file = File::open(path).map_err(io("opening a disk image", path))?;
        let len = file
            .metadata()
            .map_err(io("reading a disk image's size", path))?
            .len();
        let total = len / SECTOR;
        if total < 2 * (2 + ARRAY_SECTORS) + 1 {
            return Err(disk_err(path, "too small to hold a GPT"));
        }
        let mbr = read_at(&file, path, 0, SECTOR as usize)?;
        if mbr[510..512] != [0x55, 0xAA] || mbr[446 + 4] != 0xEE {
            return Err(disk_err(path, "no protective MBR"));
        }
        let copy = |lba: u64, name: &str| match read_copy(&file, path, lba, total, name) {
            Ok((_, array)) => Ok(decode_entries(&array)),
            Err(Error::Disk { reason, .. }) => Err(reason),
            Err(e) => Err(e.to_string()),
        };
        Ok(Copies {
            path: path.to_path_buf(),
            primary: copy(1, "primary"),
            backup: copy(total - 1, "backup"),
        })
    }

    /// The entries a boot loader uses: the primary copy's when it is valid, else the backup's;
    /// `None` when neither copy is valid.
    pub fn boot_view(&self) -> Option<&[Entry]> {
        self.primary
            .as_deref()
            .ok()
            .or_else(|| self.backup.as_deref().ok())
    }

    /// Whether both copies are valid and hold the same entries (what [`Table::read`] demands).
    pub fn consistent(&self) -> bool {
        matches!((&self.primary, &self.backup), (Ok(p), Ok(b)) if p == b)
    }
}

/// Byte ranges `[start, end)` of the GPT structures of a disk of `len` bytes: the primary
/// header and entry array (LBA 1–33), and the backup entry array and header (the last 33
/// sectors). A write outside them touches the MBR or partition data.
pub fn metadata_ranges(len: u64) -> [(u64, u64); 2] {
    let total = len / SECTOR;
    [
        (SECTOR, (2 + ARRAY_SECTORS) * SECTOR),
        (
            total.saturating_sub(1 + ARRAY_SECTORS) * SECTOR,
            total * SECTOR,
        ),
    ]
}

fn read_copy(
    file: &File,
    path: &Path,
    lba: u64,
    total: u64,
    copy: &str,
) -> Result<(Vec<u8>, Vec<u8>)> {
    let h = read_at(file, path, lba * SECTOR, SECTOR as usize)?;
    let bad = |why: &str| disk_err(path, &format!("{copy} GPT header: {why}"));
    if &h[0..8] != b"EFI PART" {
        return Err(bad("no signature"));
    }
    let size = le32(&h, 12) as usize;
    if !(HEADER_SIZE..=SECTOR as usize).contains(&size) {
        return Err(bad("bad header size"));
    }
    let mut check = h[..size].to_vec();
    check[16..20].fill(0);
    if CRC32.checksum(&check) != le32(&h, 16) {
        return Err(bad("header CRC mismatch"));
    }
    if le64(&h, 24) != lba {
        return Err(bad("MyLBA is not where the header is"));
    }
    let alt = if lba == 1 { total - 1 } else { 1 };
    if le64(&h, 32) != alt {
        return Err(bad("AlternateLBA does not point at the other copy"));
    }
    let n = le32(&h, 80);
    let esz = le32(&h, 84);
    if n != ENTRIES || esz != ENTRY_SIZE {
        return Err(bad("unexpected entry geometry"));
    }
    let array = read_at(
        file,
        path,
        le64(&h, 72) * SECTOR,
        (ENTRIES * ENTRY_SIZE) as usize,
    )?;
    if CRC32.checksum(&array) != le32(&h, 88) {
        return Err(bad("entry array CRC mismatch"));
    }
    Ok((h, array))
}

fn decode_entries(array: &[u8]) -> Vec<Entry> {
    let mut out = Vec::new();
    for (i, b) in array.chunks(ENTRY_SIZE as usize).enumerate() {
        if b[0..16].iter().all(|&x| x == 0) {
            continue;
        }
        let mut t = [0u8; 16];
        t.copy_from_slice(&b[0..16]);
        let mut u = [0u8; 16];
        u.copy_from_slice(&b[16..32]);
        let units: Vec<u16> = b[56..128]
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&c| c != 0)
            .collect();
        out.push(Entry {
            number: u32::try_from(i + 1).unwrap_or(u32::MAX),
            type_guid: Guid(t),
            part_guid: Guid(u),
            first_lba: le64(b, 32),
            last_lba: le64(b, 40),
            attributes: le64(b, 48),
            name: String::from_utf16_lossy(&units),
        });
    }
    out
}

/// Sets partition `number`'s attribute word in both copies (backup first), recomputing CRCs.
pub fn set_attributes(path: &Path, number: u32, attributes: u64) -> Result<()> {
    let table = Table::read(path)?;
    let mut entries = table.entries.clone();
    let e = entries
        .iter_mut()
        .find(|e| e.number == number)
        .ok_or_else(|| disk_err(path, &format!("no partition {number}")))?;
    e.attributes = attributes;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io("opening a disk image", path))?;
    // Keep any bytes of the array this writer does not model (there are none it writes).
    write_copies(
        &file,
        path,
        table.total,
        table.disk_guid,
        &encode_entries(&entries),
    )?;
    file.sync_all().map_err(io("syncing a disk image", path))
}

/// Reads `len` bytes at the start of partition `number`.
pub fn read_partition(path: &Path, number: u32, len: usize) -> Result<Vec<u8>> {
    let table = Table::read(path)?;
    let (off, size) = table.entry(number)?.byte_range();
    if len as u64 > size {
        return Err(disk_err(
            path,
            &format!("partition {number} is smaller than {len} bytes"),
        ));
    }
    let file = File::open(path).map_err(io("opening a disk image", path))?;
    read_at(&file, path, off, len)
}

/// Reads `len` bytes at the start of the partition `entry` describes (taken from a
/// [`Copies`] view, so it works on a table whose copies disagree).
pub fn read_entry(path: &Path, entry: &Entry, len: usize) -> Result<Vec<u8>> {
    let (off, size) = entry.byte_range();
    if len as u64 > size {
        return Err(disk_err(
            path,
            &format!("partition {} is smaller than {len} bytes", entry.number),
        ));
    }
    let file = File::open(path).map_err(io("opening a disk image", path))?;
    read_at(&file, path, off, len)
}

/// Writes `data` at the start of partition `number`.
pub fn write_partition(path: &Path, number: u32, data: &[u8]) -> Result<()> {
    let table = Table::read(path)?;
    let (off, size) = table.entry(number)?.byte_range();
    if data.len() as u64 > size {
        return Err(disk_err(
            path,
            &format!("partition {number} is smaller than the data"),
        ));
    }
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io("opening a disk image", path))?;
    write_at(&file, path, off, data)?;
    file.sync_all().map_err(io("syncing a disk image", path))
}

/// The output of `sgdisk -v` on the image (it contains "No problems found" for a valid GPT), or
/// `None` when `sgdisk` is not installed.
pub fn sgdisk_verify(path: &Path) -> Result<Option<String>> {
    match std::process::Command::new("sgdisk")
        .arg("-v")
        .arg(path)
        .output()
    {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Io {
            what: "running sgdisk",
            path: path.to_path_buf(),
            source: e,
        }),
        Ok(out) => Ok(Some(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))),
    }
}
