//! GRUB gptprio backend against real GPT disk image files made with `sgdisk`; every attribute
//! change is checked with `sgdisk -v` (both headers and CRCs valid) and `sgdisk -i`.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use common::{assert_verified, attrs, gptprio, info, make_image, sgdisk};
use update_agent::boot::gpt::GptTable;
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

#[test]
fn damaged_copy_is_never_written_over() {
    let h = Host::new();
    let len = fs::metadata(&h.img).unwrap().len();
    // Corrupt the backup header (last sector) inside its CRC-covered area.
    flip_byte(&h.img, len - 512 + 40);
    let table = GptTable::read(&fs::File::open(&h.img).unwrap()).unwrap();
    assert_eq!(table.entries.len(), 3, "the primary copy is still readable");
    assert!(!table.problems().is_empty());
    let before = fs::read(&h.img).unwrap();
    let b = h.backend();
    let t = b.target_slot().unwrap();
    let e = b.mark_unbootable(&t).unwrap_err();
    assert!(e.to_string().contains("backup"), "{e}");
    assert_eq!(fs::read(&h.img).unwrap(), before);
}

#[test]
fn primary_damage_falls_back_to_backup_for_reading() {
    let h = Host::new();
    // Corrupt the primary entry array (LBA 2): its CRC no longer matches.
    flip_byte(&h.img, 2 * 512 + 60);
    let table = GptTable::read(&fs::File::open(&h.img).unwrap()).unwrap();
    assert_eq!(table.entries[0].name, "USR-A");
    assert!(table.problems()[0].starts_with("primary"));
    assert!(h.backend().mark_booted_good().is_err());
}
