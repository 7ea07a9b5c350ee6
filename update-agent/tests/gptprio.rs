//! GRUB gptprio backend against real GPT disk image files made with `sgdisk`; every attribute
//! change is checked with `sgdisk -v` (both headers and CRCs valid) and `sgdisk -i`. A table left
//! inconsistent by an interrupted write (one copy stale or damaged) is repaired from the copy a
//! boot loader uses before the next change; with both copies damaged nothing is written.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use testkit::sgdisk::{assert_verified, attrs, gptprio, info, make_image, sgdisk};
use update_agent::boot::gpt::{self, GptCopy, GptError, GptTable, Repair};
use update_agent::boot::{
    BootBackend, BootError, GptprioBackend, SlotId, SlotSpec, gptprio_select,
};

struct Host {
    _dir: tempfile::TempDir,
    img: PathBuf,
    cmdline: PathBuf,
}

impl Host {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let img = make_image(dir.path());
        let cmdline = dir.path().join("cmdline");
        let h = Self {
            img,
            cmdline,
            _dir: dir,
        };
        h.boot("USR-A");
        h
    }

    /// Simulates booting from the partition with `label`.
    fn boot(&self, label: &str) {
        fs::write(
            &self.cmdline,
            format!("BOOT_IMAGE=/flatcar/vmlinuz mount.usr=PARTLABEL={label} root=LABEL=ROOT\n"),
        )
        .unwrap();
    }

    fn backend(&self) -> GptprioBackend {
        GptprioBackend::new(
            &self.img,
            SlotSpec::Label("USR-A".into()),
            SlotSpec::Label("USR-B".into()),
        )
        .with_cmdline_path(&self.cmdline)
    }

    fn region(&self, n: u32) -> Vec<u8> {
        let first: u64 = info(&self.img, n, "First sector")
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let last: u64 = info(&self.img, n, "Last sector")
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let f = fs::File::open(&self.img).unwrap();
        let mut buf = vec![0u8; ((last - first + 1) * 512) as usize];
        f.read_exact_at(&mut buf, first * 512).unwrap();
        buf
    }
}

#[test]
fn full_update_cycle_a_to_b() {
    let h = Host::new();
    let b = h.backend();
    assert_eq!(b.booted_slot().unwrap(), SlotId::A);

    let target = b.target_slot().unwrap();
    assert_eq!(target.slot(), SlotId::B);
    assert_eq!(target.partition(), 2);
    assert_eq!(target.byte_range(), (18432 * 512, 8 << 20));
    assert_eq!(
        target.partuuid().to_string().to_uppercase(),
        info(&h.img, 2, "Partition unique GUID")
    );

    let a_before = h.region(1);
    let root_before = h.region(3);

    b.mark_unbootable(&target).unwrap();
    assert_verified(&h.img);
    assert_eq!(attrs(&h.img, 2), 0);
    assert_eq!(attrs(&h.img, 1), gptprio(1, 0, true));

    let mut w = b.open_target(&target).unwrap();
    assert_eq!(w.len(), 8 << 20);
    let payload: Vec<u8> = (0..(8u32 << 20)).map(|i| (i % 251) as u8).collect();
    w.write_all(&payload).unwrap();
    assert!(w.write_all(b"one byte too many").is_err());
    w.sync().unwrap();
    drop(w);
    assert_eq!(h.region(2), payload);
    assert_eq!(h.region(1), a_before, "booted slot must be untouched");
    assert_eq!(h.region(3), root_before);
    assert_verified(&h.img);

    b.mark_active(&target, 1).unwrap();
    assert_verified(&h.img);
    assert_eq!(attrs(&h.img, 2), gptprio(2, 1, false));
    assert_eq!(attrs(&h.img, 1), gptprio(1, 0, true));

    // The boot loader picks B and spends its one try.
    let sel = gptprio_select(&h.img).unwrap().unwrap();
    assert_eq!((sel.partition, sel.label.as_str()), (2, "USR-B"));
    assert_verified(&h.img);
    assert_eq!(attrs(&h.img, 2), gptprio(2, 0, false));

    h.boot("USR-B");
    assert_eq!(b.booted_slot().unwrap(), SlotId::B);
    b.mark_booted_good().unwrap();
    assert_verified(&h.img);
    assert_eq!(attrs(&h.img, 2), gptprio(2, 0, true));

    // Successful slots keep being chosen without spending tries.
    let sel = gptprio_select(&h.img).unwrap().unwrap();
    assert_eq!(sel.partition, 2);
    assert_eq!(attrs(&h.img, 2), gptprio(2, 0, true));

    // Next update goes back to A.
    let t = b.target_slot().unwrap();
    assert_eq!(t.slot(), SlotId::A);
    b.mark_unbootable(&t).unwrap();
    b.mark_active(&t, 1).unwrap();
    assert_verified(&h.img);
    assert_eq!(attrs(&h.img, 1), gptprio(3, 1, false));
}

#[test]
fn failed_boot_falls_back_to_the_old_slot() {
    let h = Host::new();
    let b = h.backend();
    let t = b.target_slot().unwrap();
    b.mark_unbootable(&t).unwrap();
    b.mark_active(&t, 1).unwrap();

    assert_eq!(gptprio_select(&h.img).unwrap().unwrap().partition, 2);
    // B never got marked good: the next boot falls back to A, which is left as it was.
    let sel = gptprio_select(&h.img).unwrap().unwrap();
    assert_eq!(sel.partition, 1);
    assert_verified(&h.img);
    assert_eq!(attrs(&h.img, 2), gptprio(2, 0, false));
    assert_eq!(attrs(&h.img, 1), gptprio(1, 0, true));
}

#[test]
fn several_tries_are_counted_down() {
    let h = Host::new();
    let b = h.backend();
    let t = b.target_slot().unwrap();
    b.mark_active(&t, 3).unwrap();
    assert_eq!(attrs(&h.img, 2), gptprio(2, 3, false));
    for left in [2, 1, 0] {
        assert_eq!(gptprio_select(&h.img).unwrap().unwrap().partition, 2);
        assert_eq!(attrs(&h.img, 2), gptprio(2, left, false));
        assert_verified(&h.img);
    }
    assert_eq!(gptprio_select(&h.img).unwrap().unwrap().partition, 1);
}

#[test]
fn nothing_bootable_selects_nothing_and_ties_go_to_the_first() {
    let h = Host::new();
    let p = h.img.to_str().unwrap();
    sgdisk(&["-A", "1:clear:56", p]);
    assert_eq!(gptprio_select(&h.img).unwrap(), None);
    // Same priority, both successful: the lower partition number wins, like GRUB.
    sgdisk(&["-A", "1:set:56", "-A", "2:set:48", "-A", "2:set:56", p]);
    assert_eq!(gptprio_select(&h.img).unwrap().unwrap().partition, 1);
}

#[test]
fn top_priority_is_compressed_and_other_bits_are_kept() {
    let h = Host::new();
    let p = h.img.to_str().unwrap();
    // A at priority 15; B carries unrelated attribute bits (read-only 60, legacy-bootable 2).
    sgdisk(&["-A", "1:set:49", "-A", "1:set:50", "-A", "1:set:51", p]);
    sgdisk(&["-A", "2:set:60", "-A", "2:set:2", p]);
    assert_eq!(attrs(&h.img, 1), gptprio(15, 0, true));
    let b = h.backend();
    let t = b.target_slot().unwrap();
    b.mark_unbootable(&t).unwrap();
    assert_eq!(attrs(&h.img, 2), (1 << 60) | (1 << 2));
    b.mark_active(&t, 1).unwrap();
    assert_verified(&h.img);
    assert_eq!(attrs(&h.img, 1), gptprio(14, 0, true));
    assert_eq!(
        attrs(&h.img, 2),
        gptprio(15, 1, false) | (1 << 60) | (1 << 2)
    );
    assert_eq!(gptprio_select(&h.img).unwrap().unwrap().partition, 2);
}

#[test]
fn booted_slot_is_never_a_write_target() {
    let h = Host::new();
    let b = h.backend();
    let t = b.target_slot().unwrap();
    assert_eq!(t.slot(), SlotId::B);
    // The machine now runs from B (e.g. it rebooted): the old target handle is refused.
    h.boot("USR-B");
    let before = fs::read(&h.img).unwrap();
    for err in [
        b.open_target(&t).map(|_| ()).unwrap_err(),
        b.mark_unbootable(&t).unwrap_err(),
        b.mark_active(&t, 1).unwrap_err(),
    ] {
        assert!(
            matches!(
                err,
                BootError::TargetChanged {
                    slot: SlotId::B,
                    ..
                }
            ),
            "{err}"
        );
    }
    assert_eq!(fs::read(&h.img).unwrap(), before, "nothing may be written");
    assert_eq!(b.target_slot().unwrap().slot(), SlotId::A);

    // Unknown booted slot: no target at all.
    fs::write(&h.cmdline, "root=/dev/sda9 quiet\n").unwrap();
    let err = b.target_slot().unwrap_err();
    assert!(matches!(err, BootError::BootedUnknown { .. }), "{err}");
    assert!(err.to_string().contains("boot.booted_slot"), "{err}");
}

#[test]
fn partuuid_specs_verity_cmdline_and_override() {
    let h = Host::new();
    let ua = info(&h.img, 1, "Partition unique GUID");
    let ub = info(&h.img, 2, "Partition unique GUID");
    fs::write(
        &h.cmdline,
        format!(
            "mount.usr=/dev/mapper/usr verity.usr=PARTUUID={} root=LABEL=ROOT",
            ub.to_lowercase()
        ),
    )
    .unwrap();
    let b = GptprioBackend::new(
        &h.img,
        SlotSpec::PartUuid(ua.parse().unwrap()),
        SlotSpec::PartUuid(ub.parse().unwrap()),
    )
    .with_cmdline_path(&h.cmdline);
    assert_eq!(b.booted_slot().unwrap(), SlotId::B);
    let slots = b.describe().unwrap();
    assert_eq!(slots[0].label, "USR-A");
    assert_eq!(slots[1].booted, Some(true));
    assert_eq!(slots[0].state.priority, 1);
    assert!(slots[0].state.successful);

    let over = b.clone().with_booted_override(Some(SlotId::A));
    assert_eq!(over.target_slot().unwrap().slot(), SlotId::B);
}

#[test]
fn missing_and_duplicate_slots_are_errors() {
    let h = Host::new();
    let b = GptprioBackend::new(
        &h.img,
        SlotSpec::Label("USR-A".into()),
        SlotSpec::Label("USR-C".into()),
    )
    .with_cmdline_path(&h.cmdline);
    let e = b.describe().unwrap_err();
    assert!(e.to_string().contains("PARTLABEL=USR-C"), "{e}");
    sgdisk(&["-c", "3:USR-A", h.img.to_str().unwrap()]);
    let e = h.backend().describe().unwrap_err();
    assert!(matches!(e, BootError::SlotAmbiguous { .. }), "{e}");
}

fn flip_byte(img: &Path, offset: u64) {
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(img)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= 0xff;
    f.write_all_at(&b, offset).unwrap();
}

/// Bytes `[offset, offset + len)` of `img`.
fn bytes_at(img: &Path, offset: u64, len: usize) -> Vec<u8> {
    let f = fs::File::open(img).unwrap();
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, offset).unwrap();
    buf
}

/// Overwrites `img` at `offset` with `data` (a copy half-written, damaged or restored).
fn put_bytes(img: &Path, offset: u64, data: &[u8]) {
    let f = fs::OpenOptions::new().write(true).open(img).unwrap();
    f.write_all_at(data, offset).unwrap();
}

/// The primary GPT (header at LBA 1, entry array at LBA 2..34) of the 512-byte-sector images.
const PRIMARY: (u64, usize) = (512, 33 * 512);

/// The backup GPT (entry array, then header in the last sector) of an image of `len` bytes.
fn backup_range(len: u64) -> (u64, usize) {
    (len - 33 * 512, 33 * 512)
}

fn open_rw(img: &Path) -> fs::File {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(img)
        .unwrap()
}

/// Both copies valid and identical, by this crate's reader and by `sgdisk -v`.
fn assert_consistent(img: &Path) {
    let t = GptTable::read(&fs::File::open(img).unwrap()).unwrap();
    assert_eq!(t.problems(), Vec::<String>::new());
    assert_verified(img);
}

#[test]
fn primary_stale_backup_new_is_repaired_from_the_primary() {
    // An earlier write was interrupted after the backup copy was written and synced, before the
    // primary was touched: the backup holds B as the next boot, the primary still the old table.
    let h = Host::new();
    let b = h.backend();
    let t = b.target_slot().unwrap();
    let old_primary = bytes_at(&h.img, PRIMARY.0, PRIMARY.1);
    b.mark_active(&t, 1).unwrap();
    put_bytes(&h.img, PRIMARY.0, &old_primary);
    let table = GptTable::read(&fs::File::open(&h.img).unwrap()).unwrap();
    assert_eq!(
        table.problems(),
        ["primary and backup partition entries differ"]
    );
    // What a boot loader sees (the primary): B not bootable.
    assert_eq!(table.entry(2).unwrap().attributes, 0);

    let (after, repair) = gpt::repair(&open_rw(&h.img)).unwrap();
    assert_eq!(
        repair,
        Some(Repair {
            rewritten: GptCopy::Backup,
            from: GptCopy::Primary,
            reason: "primary and backup partition entries differ".into(),
        })
    );
    assert_eq!(after.entry(2).unwrap().attributes, 0, "the primary won");
    assert_consistent(&h.img);
    assert_eq!(gpt::repair(&open_rw(&h.img)).unwrap().1, None, "once");

    // Torn again the same way: the next change repairs first, then writes both copies.
    let old_primary = bytes_at(&h.img, PRIMARY.0, PRIMARY.1);
    b.mark_active(&t, 1).unwrap();
    put_bytes(&h.img, PRIMARY.0, &old_primary);
    b.mark_unbootable(&t).unwrap();
    assert_consistent(&h.img);
    let backup = GptTable::read(&fs::File::open(&h.img).unwrap()).unwrap();
    assert_eq!(attrs(&h.img, 2), 0);
    assert_eq!(attrs(&h.img, 1), gptprio(1, 0, true));
    assert_eq!(backup.entry(2).unwrap().attributes, 0);
    b.mark_active(&t, 1).unwrap();
    assert_consistent(&h.img);
    assert_eq!(attrs(&h.img, 2), gptprio(2, 1, false));
}

#[test]
fn primary_corrupt_is_rebuilt_from_the_backup() {
    let h = Host::new();
    let b = h.backend();
    let t = b.target_slot().unwrap();
    let good_primary = bytes_at(&h.img, PRIMARY.0, PRIMARY.1);
    // (what is damaged, offset, bytes): a bad entry-array CRC, a bad header CRC, a header sector
    // wiped (no signature at all), and the primary torn between its entry array (written, new)
    // and its header (not written, old), as a kill inside a change leaves it.
    let cases: [(&str, u64, Vec<u8>); 3] = [
        ("entry array", 2 * 512 + 60, vec![0x5a]),
        ("header", 512 + 40, vec![0x5a]),
        ("header sector wiped", 512, vec![0u8; 512]),
    ];
    for (what, offset, data) in cases {
        put_bytes(&h.img, PRIMARY.0, &good_primary);
        put_bytes(&h.img, offset, &data);
        let table = GptTable::read(&fs::File::open(&h.img).unwrap()).unwrap();
        assert!(table.problems()[0].starts_with("primary"), "{what}");
        assert_eq!(
            table.entries[0].name, "USR-A",
            "{what}: read from the backup"
        );
        let (_, repair) = gpt::repair(&open_rw(&h.img)).unwrap();
        let repair = repair.unwrap();
        assert_eq!(
            (repair.rewritten, repair.from),
            (GptCopy::Primary, GptCopy::Backup),
            "{what}"
        );
        assert!(repair.reason.starts_with("primary: "), "{what}: {repair:?}");
        assert_consistent(&h.img);
        assert_eq!(
            bytes_at(&h.img, PRIMARY.0, PRIMARY.1),
            good_primary,
            "{what}: rebuilt exactly as sgdisk made it"
        );
    }

    // Torn primary: the new table is in the backup and in the primary's entry array only.
    let old_header = bytes_at(&h.img, 512, 512);
    b.mark_active(&t, 1).unwrap();
    put_bytes(&h.img, 512, &old_header);
    let table = GptTable::read(&fs::File::open(&h.img).unwrap()).unwrap();
    assert!(table.problems()[0].contains("entry array CRC"), "{table:?}");
    assert_eq!(
        table.entry(2).unwrap().attributes,
        gptprio(2, 1, false),
        "a boot loader takes the backup: the new table"
    );
    // The backend's next write repairs, keeping the new table, and goes ahead.
    b.mark_booted_good().unwrap();
    assert_consistent(&h.img);
    assert_eq!(attrs(&h.img, 2), gptprio(2, 1, false));
    assert_eq!(attrs(&h.img, 1), gptprio(1, 0, true));
}

#[test]
fn backup_corrupt_is_rebuilt_from_the_primary() {
    let h = Host::new();
    let len = fs::metadata(&h.img).unwrap().len();
    let (start, size) = backup_range(len);
    let good_backup = bytes_at(&h.img, start, size);
    for (what, offset) in [("header", len - 512 + 40), ("entry array", start + 200)] {
        put_bytes(&h.img, start, &good_backup);
        let mut b = bytes_at(&h.img, offset, 1);
        b[0] ^= 0xff;
        put_bytes(&h.img, offset, &b);
        let table = GptTable::read(&fs::File::open(&h.img).unwrap()).unwrap();
        assert_eq!(
            table.entries.len(),
            3,
            "{what}: the primary is still readable"
        );
        assert!(table.problems()[0].starts_with("backup"), "{what}");
        let backend = h.backend();
        let t = backend.target_slot().unwrap();
        backend.mark_unbootable(&t).unwrap();
        assert_consistent(&h.img);
        assert_eq!(
            bytes_at(&h.img, start, size),
            good_backup,
            "{what}: rebuilt as it was (B was unbootable already)"
        );
        assert_eq!(attrs(&h.img, 1), gptprio(1, 0, true));
    }
}

#[test]
fn both_copies_corrupt_are_refused_and_left_alone() {
    let h = Host::new();
    let len = fs::metadata(&h.img).unwrap().len();
    flip_byte(&h.img, 2 * 512 + 60);
    flip_byte(&h.img, len - 512 + 40);
    let before = fs::read(&h.img).unwrap();
    let e = GptTable::read(&fs::File::open(&h.img).unwrap()).unwrap_err();
    assert!(matches!(e, GptError::BothDamaged { .. }), "{e}");
    let e = gpt::repair(&open_rw(&h.img)).unwrap_err();
    assert!(e.to_string().contains("both GPT copies are damaged"), "{e}");
    let b = GptprioBackend::new(
        &h.img,
        SlotSpec::Label("USR-A".into()),
        SlotSpec::Label("USR-B".into()),
    )
    .with_cmdline_path(&h.cmdline);
    let e = b.mark_booted_good().unwrap_err();
    assert!(e.to_string().contains("both GPT copies are damaged"), "{e}");
    assert_eq!(fs::read(&h.img).unwrap(), before, "nothing may be written");
}

#[test]
fn backup_outside_a_shrunk_disk_is_refused_not_moved() {
    // The image lost its last MiB: the primary names a backup LBA past the end. Rebuilding the
    // backup elsewhere is a decision for an operator (`sgdisk -e`), not for the agent.
    let h = Host::new();
    let len = fs::metadata(&h.img).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&h.img)
        .unwrap()
        .set_len(len - (1 << 20))
        .unwrap();
    let before = fs::read(&h.img).unwrap();
    let b = h.backend();
    let t = b.target_slot().unwrap();
    let e = b.mark_unbootable(&t).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("refusing to write: the backup GPT copy is not valid")
            && msg.contains("outside"),
        "{msg}"
    );
    assert_eq!(fs::read(&h.img).unwrap(), before, "nothing may be written");
}
