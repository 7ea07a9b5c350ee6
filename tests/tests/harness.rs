//! Checks of the harness itself: its GPT images are valid for `sgdisk` too, and its boot loader
//! stand-in applies gptprio's rule (highest priority with tries left or successful; tries spent).
#![allow(clippy::unwrap_used)]

use platte_e2e::bootloader::{Prio, USR_TYPE, gptprio_next};
use platte_e2e::gpt::{self, Guid, PartitionSpec, Table};

fn disk(dir: &std::path::Path, a: Prio, b: Prio) -> std::path::PathBuf {
    let usr: Guid = USR_TYPE.parse().unwrap();
    let path = dir.join("disk.img");
    let part = |name: &str, p: Prio| PartitionSpec {
        name: name.into(),
        type_guid: usr,
        size: 2 << 20,
        attributes: p.encode(0),
    };
    gpt::create(&path, 42, &[part("USR-A", a), part("USR-B", b)]).unwrap();
    path
}

fn prio(priority: u8, tries: u8, successful: bool) -> Prio {
    Prio {
        priority,
        tries,
        successful,
    }
}

#[test]
fn images_are_valid_gpt_for_sgdisk_and_the_harness_reader() {
    let dir = tempfile::tempdir().unwrap();
    let path = disk(dir.path(), prio(1, 0, true), prio(0, 0, false));
    let t = Table::read(&path).unwrap();
    assert_eq!(t.entries.len(), 2);
    assert_eq!(t.by_name("USR-B").unwrap().first_lba, 2048 + 4096);
    gpt::set_attributes(&path, 2, prio(2, 1, false).encode(0)).unwrap();
    assert_eq!(
        Prio::decode(Table::read(&path).unwrap().entry(2).unwrap().attributes),
        prio(2, 1, false)
    );
    match gpt::sgdisk_verify(&path).unwrap() {
        Some(out) => {
            assert!(out.contains("No problems found"), "sgdisk -v: {out}");
            let info = std::process::Command::new("sgdisk")
                .args(["-i", "2"])
                .arg(&path)
                .output()
                .unwrap();
            let info = String::from_utf8_lossy(&info.stdout);
            assert!(info.contains("Partition name: 'USR-B'"), "{info}");
            assert!(info.contains("Attribute flags: 0012000000000000"), "{info}");
            assert!(info.to_lowercase().contains(USR_TYPE), "{info}");
        }
        None => eprintln!("NOTE: sgdisk is not installed; checked with the harness reader only"),
    }
}

#[test]
fn corrupt_copies_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = disk(dir.path(), prio(1, 0, true), prio(0, 0, false));
    let len = std::fs::metadata(&path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    // One byte of the backup entry array.
    std::os::unix::fs::FileExt::write_all_at(&f, &[0xff], len - 512 - 16384 + 100).unwrap();
    let err = Table::read(&path).unwrap_err().to_string();
    assert!(
        err.contains("backup GPT header: entry array CRC mismatch"),
        "{err}"
    );
}

#[test]
fn gptprio_boots_new_slot_once_then_falls_back() {
    let dir = tempfile::tempdir().unwrap();
    // As the agent leaves a staged update: B above A with one try, not yet successful.
    let path = disk(dir.path(), prio(1, 0, true), prio(2, 1, false));
    assert_eq!(gptprio_next(&path).unwrap().unwrap().name, "USR-B");
    let t = Table::read(&path).unwrap();
    assert_eq!(
        Prio::decode(t.entry(2).unwrap().attributes),
        prio(2, 0, false)
    );
    // Never marked good: the next boot falls back to A, and keeps doing so.
    assert_eq!(gptprio_next(&path).unwrap().unwrap().name, "USR-A");
    assert_eq!(gptprio_next(&path).unwrap().unwrap().name, "USR-A");
    // A successful slot with priority wins and keeps its tries at 0.
    gpt::set_attributes(&path, 2, prio(2, 0, true).encode(0)).unwrap();
    assert_eq!(gptprio_next(&path).unwrap().unwrap().name, "USR-B");
    // Priority 0 never boots; nothing bootable is `None`.
    gpt::set_attributes(&path, 1, prio(0, 0, true).encode(0)).unwrap();
    gpt::set_attributes(&path, 2, prio(0, 3, true).encode(0)).unwrap();
    assert!(gptprio_next(&path).unwrap().is_none());
}
