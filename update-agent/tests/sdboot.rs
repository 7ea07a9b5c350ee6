//! systemd-boot backend on a fake host: a GPT disk image made with `sgdisk` (ESP, ROOT-A,
//! ROOT-B), an ESP directory, a fake efivarfs directory and each slot's file tree. A small
//! stand-in for systemd-boot (written here, independently of the backend) picks the entry,
//! counts the boot down and sets `LoaderEntrySelected` like the real loader does.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileExt, symlink};
use std::path::{Path, PathBuf};

use testkit::sgdisk::sgdisk;
use update_agent::boot::sdboot::{
    DirSlotFiles, EntryFileName, LOADER_VENDOR_GUID, SdbootConfig, read_loader_var, resolve_in_root,
};
use update_agent::boot::{BootBackend, BootError, SdbootBackend, SlotId, SlotSpec};
use update_agent::rollback::{self, BootObservation, Outcome};
use update_agent::state::InstalledUpdate;

struct Host {
    dir: tempfile::TempDir,
    img: PathBuf,
}

impl Host {
    /// A host running slot A: `platte-a.conf` (blessed, version 1) on the ESP, A selected.
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        fs::File::create(&img).unwrap().set_len(16 << 20).unwrap();
        sgdisk(&[
            "-o",
            "-n",
            "1:2048:+2M",
            "-c",
            "1:ESP",
            "-t",
            "1:ef00",
            "-n",
            "2:0:+4M",
            "-c",
            "2:ROOT-A",
            "-t",
            "2:8304",
            "-n",
            "3:0:+4M",
            "-c",
            "3:ROOT-B",
            "-t",
            "3:8304",
            img.to_str().unwrap(),
        ]);
        let h = Host { dir, img };
        for d in ["esp/loader/entries", "esp/platte/a", "efivars"] {
            fs::create_dir_all(h.path(d)).unwrap();
        }
        fs::write(
            h.path("esp/loader/loader.conf"),
            "timeout 0\ndefault platte-*\n",
        )
        .unwrap();
        fs::write(
            h.path("esp/loader/entries/platte-a.conf"),
            "title Slot A\nsort-key platte\nversion 1\nlinux /platte/a/vmlinuz\n\
             initrd /platte/a/initrd.img\noptions root=PARTLABEL=ROOT-A rw\n",
        )
        .unwrap();
        fs::write(h.path("esp/platte/a/vmlinuz"), b"kernel 1").unwrap();
        fs::write(h.path("esp/platte/a/initrd.img"), b"initrd 1").unwrap();
        // An unrelated entry the backend must leave alone.
        fs::write(
            h.path("esp/loader/entries/other+2.conf"),
            "title other\nversion 99\n",
        )
        .unwrap();
        h.slot_tree("a", "1.0.0");
        h.slot_tree("b", "2.0.0");
        assert_eq!(h.loader_boot(), "platte-a.conf");
        h
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The files of a slot's root filesystem the way Debian lays them out: versioned kernel
    /// and initrd in /boot, reached through absolute and relative symlinks.
    fn slot_tree(&self, slot: &str, version: &str) {
        let root = self.path(&format!("slots/{slot}"));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("boot")).unwrap();
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::create_dir_all(root.join("usr/lib")).unwrap();
        fs::write(
            root.join(format!("boot/vmlinuz-{version}")),
            format!("kernel {version}"),
        )
        .unwrap();
        fs::write(
            root.join(format!("boot/initrd.img-{version}")),
            format!("initrd {version}"),
        )
        .unwrap();
        // Absolute target: must resolve inside the slot, not on the host.
        symlink(
            format!("/boot/vmlinuz-{version}"),
            root.join("boot/vmlinuz"),
        )
        .unwrap();
        symlink(
            format!("initrd.img-{version}"),
            root.join("boot/initrd.img"),
        )
        .unwrap();
        fs::write(
            root.join("usr/lib/os-release"),
            format!("ID=demo\nVERSION_ID={version}\nPRETTY_NAME=\"Demo OS {version}\"\n"),
        )
        .unwrap();
        symlink("../usr/lib/os-release", root.join("etc/os-release")).unwrap();
    }

    fn config(&self) -> SdbootConfig {
        SdbootConfig {
            esp: self.path("esp"),
            efivars_dir: self.path("efivars"),
            kernel_options: "rw console=ttyS0".into(),
            ..SdbootConfig::default()
        }
    }

    fn backend(&self) -> SdbootBackend {
        SdbootBackend::new(
            &self.img,
            SlotSpec::Label("ROOT-A".into()),
            SlotSpec::Label("ROOT-B".into()),
            self.config(),
        )
        .with_cmdline_path(self.path("cmdline"))
        .with_slot_files(Box::new(DirSlotFiles {
            base: self.path("slots"),
        }))
    }

    fn entries(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.path("esp/loader/entries"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn set_var(&self, name: &str, value: &str) {
        let mut data = vec![0x06, 0, 0, 0];
        for u in value.encode_utf16().chain([0]) {
            data.extend_from_slice(&u.to_le_bytes());
        }
        fs::write(
            self.path(&format!("efivars/{name}-{LOADER_VENDOR_GUID}")),
            data,
        )
        .unwrap();
    }

    /// systemd-boot stand-in: among `platte-*` entries, entries with tries left (or no counter)
    /// come before exhausted ones, then the highest version; a counted entry is renamed
    /// `+LEFT-DONE` → `+(LEFT-1)-(DONE+1)` before "starting the kernel"; the loader variables
    /// and the kernel command line are set. Returns the selected file name as the loader
    /// reports it (systemd 252: with the counter as it was before the rename).
    fn loader_boot(&self) -> String {
        let dir = self.path("esp/loader/entries");
        let mut cands: Vec<(bool, u64, String)> = self
            .entries()
            .into_iter()
            .filter(|n| n.starts_with("platte-") && n.ends_with(".conf"))
            .map(|n| {
                let text = fs::read_to_string(dir.join(&n)).unwrap();
                let version = text
                    .lines()
                    .find_map(|l| l.strip_prefix("version "))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                let counter = n.trim_end_matches(".conf").rsplit_once('+').map(|x| x.1);
                let bad = counter.is_some_and(|c| c.split('-').next() == Some("0"));
                (!bad, version, n)
            })
            .collect();
        cands.sort();
        let (_, _, chosen) = cands.pop().expect("no bootable entry");
        let stem = chosen.trim_end_matches(".conf").to_owned();
        let mut now = chosen.clone();
        if let Some((id, c)) = stem.rsplit_once('+') {
            let (left, done) = match c.split_once('-') {
                Some((l, d)) => (l.parse::<u32>().unwrap(), d.parse::<u32>().unwrap()),
                None => (c.parse::<u32>().unwrap(), 0),
            };
            if left > 0 {
                now = format!("{id}+{}-{}.conf", left - 1, done + 1);
                fs::rename(dir.join(&chosen), dir.join(&now)).unwrap();
                self.set_var("LoaderBootCountPath", &format!("\\loader\\entries\\{now}"));
            }
        } else {
            let _ = fs::remove_file(
                self.path(&format!("efivars/LoaderBootCountPath-{LOADER_VENDOR_GUID}")),
            );
        }
        let text = fs::read_to_string(dir.join(&now)).unwrap();
        let options = text
            .lines()
            .find_map(|l| l.strip_prefix("options "))
            .unwrap();
        fs::write(
            self.path("cmdline"),
            format!("initrd=\\platte\\x\\initrd.img {options}\n"),
        )
        .unwrap();
        self.set_var("LoaderEntrySelected", &chosen);
        chosen
    }

    fn partition_bytes(&self, n: u32) -> Vec<u8> {
        let out = sgdisk(&["-i", &n.to_string(), self.img.to_str().unwrap()]);
        let first: u64 = out
            .lines()
            .find_map(|l| l.strip_prefix("First sector: "))
            .and_then(|v| v.split_whitespace().next())
            .unwrap()
            .parse()
            .unwrap();
        let mut buf = vec![0u8; 4 << 20];
        fs::File::open(&self.img)
            .unwrap()
            .read_exact_at(&mut buf, first * 512)
            .unwrap();
        buf
    }
}

#[test]
fn booted_slot_comes_from_the_loader_variable_and_must_match_the_command_line() {
    let h = Host::new();
    let b = h.backend();
    assert_eq!(b.booted_slot().unwrap(), SlotId::A);
    assert_eq!(b.target_slot().unwrap().slot(), SlotId::B);

    // The loader and the kernel disagree: no booted slot, so no write target either.
    fs::write(h.path("cmdline"), "root=PARTLABEL=ROOT-B rw\n").unwrap();
    let e = b.target_slot().unwrap_err();
    assert!(matches!(e, BootError::BootedUnknown { .. }), "{e}");
    assert!(e.to_string().contains("platte-a.conf"), "{e}");

    // Without the variable (another loader, or a manual entry) the command line decides.
    fs::remove_file(h.path(&format!("efivars/LoaderEntrySelected-{LOADER_VENDOR_GUID}"))).unwrap();
    assert_eq!(b.booted_slot().unwrap(), SlotId::B);

    // Neither says anything: refused, with what was looked at.
    fs::write(h.path("cmdline"), "root=/dev/vda2 rw\n").unwrap();
    let e = b.booted_slot().unwrap_err().to_string();
    assert!(
        e.contains("LoaderEntrySelected") && e.contains("cmdline"),
        "{e}"
    );
    // The configured override wins over everything.
    let o = h.backend().with_booted_override(Some(SlotId::A));
    assert_eq!(o.booted_slot().unwrap(), SlotId::A);
}

#[test]
fn efi_variables_are_decoded_and_bad_ones_named() {
    let h = Host::new();
    let dir = h.path("efivars");
    h.set_var("LoaderBootCountPath", "\\loader\\entries\\x+0-1.conf");
    assert_eq!(
        read_loader_var(&dir, "LoaderBootCountPath").unwrap(),
        Some("\\loader\\entries\\x+0-1.conf".into())
    );
    assert_eq!(read_loader_var(&dir, "Nope").unwrap(), None);
    let p = dir.join(format!("LoaderEntrySelected-{LOADER_VENDOR_GUID}"));
    fs::write(&p, [6, 0, 0]).unwrap();
    let e = h.backend().booted_slot().unwrap_err();
    assert!(
        matches!(&e, BootError::Efivar { path, .. } if path == &p),
        "{e}"
    );
    fs::write(&p, [6, 0, 0, 0, b'a', 0, b'b']).unwrap();
    assert!(
        read_loader_var(&dir, "LoaderEntrySelected")
            .unwrap_err()
            .to_string()
            .contains("odd")
    );
}

#[test]
fn update_boot_bless_cycle() {
    let h = Host::new();
    let b = h.backend();
    let a_entry = fs::read(h.path("esp/loader/entries/platte-a.conf")).unwrap();
    let a_part = h.partition_bytes(2);
    // A stale entry for B from an earlier attempt.
    fs::write(
        h.path("esp/loader/entries/platte-b+0-1.conf"),
        "title old\nversion 5\n",
    )
    .unwrap();

    let target = b.target_slot().unwrap();
    assert_eq!(target.slot(), SlotId::B);
    b.mark_unbootable(&target).unwrap();
    assert_eq!(h.entries(), ["other+2.conf", "platte-a.conf"]);
    let st = b.describe().unwrap();
    assert_eq!(st[1].state.priority, 0);
    assert!(!st[1].state.bootable());

    let mut w = b.open_target(&target).unwrap();
    w.write_all(b"ROOT-B image 2.0.0").unwrap();
    w.sync().unwrap();
    b.mark_active(&target, 2).unwrap();

    // Kernel and initrd of slot B's tree (through its symlinks) on the ESP; nothing else moved.
    assert_eq!(
        fs::read(h.path("esp/platte/b/vmlinuz")).unwrap(),
        b"kernel 2.0.0"
    );
    assert_eq!(
        fs::read(h.path("esp/platte/b/initrd.img")).unwrap(),
        b"initrd 2.0.0"
    );
    assert_eq!(
        fs::read(h.path("esp/platte/a/vmlinuz")).unwrap(),
        b"kernel 1"
    );
    assert_eq!(
        h.entries(),
        ["other+2.conf", "platte-a.conf", "platte-b+2.conf"]
    );
    assert!(
        fs::read_dir(h.path("esp/platte/b")).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".tmp"))
    );
    let text = fs::read_to_string(h.path("esp/loader/entries/platte-b+2.conf")).unwrap();
    assert_eq!(
        text,
        "title Demo OS 2.0.0 (slot B)\nsort-key platte\nversion 2\nlinux /platte/b/vmlinuz\n\
         initrd /platte/b/initrd.img\noptions root=PARTLABEL=ROOT-B rw console=ttyS0\n"
    );
    // The booted slot's entry and partition are untouched.
    assert_eq!(
        fs::read(h.path("esp/loader/entries/platte-a.conf")).unwrap(),
        a_entry
    );
    assert_eq!(h.partition_bytes(2), a_part);
    assert!(h.partition_bytes(3).starts_with(b"ROOT-B image 2.0.0"));
    let st = b.describe().unwrap();
    assert_eq!(
        (
            st[0].state.priority,
            st[1].state.priority,
            st[1].state.tries
        ),
        (1, 2, 2)
    );
    assert!(st[0].state.successful && !st[1].state.successful);

    // Reboot: the loader tries B and counts the try.
    assert_eq!(h.loader_boot(), "platte-b+2.conf");
    assert_eq!(
        h.entries(),
        ["other+2.conf", "platte-a.conf", "platte-b+1-1.conf"]
    );
    assert_eq!(b.booted_slot().unwrap(), SlotId::B);
    assert!(!b.fell_back().unwrap());
    let st = b.describe().unwrap();
    assert_eq!(st[1].booted, Some(true));
    assert_eq!((st[1].state.tries, st[1].state.successful), (1, false));

    // The health gate passed: the entry is blessed (what systemd-bless-boot would do).
    b.mark_booted_good().unwrap();
    assert_eq!(
        h.entries(),
        ["other+2.conf", "platte-a.conf", "platte-b.conf"]
    );
    let st = b.describe().unwrap();
    assert!(st[1].state.successful && st[1].state.bootable());
    // Again (bless-boot ran first, or mark-good runs twice): nothing to do.
    b.mark_booted_good().unwrap();
    assert_eq!(
        h.entries(),
        ["other+2.conf", "platte-a.conf", "platte-b.conf"]
    );
    // The blessed B stays the loader's choice (higher version), A is the next target.
    assert_eq!(h.loader_boot(), "platte-b.conf");
    assert_eq!(b.target_slot().unwrap().slot(), SlotId::A);
}

#[test]
fn a_failed_new_slot_falls_back_and_is_reported_as_a_rollback() {
    let h = Host::new();
    let b = h.backend();
    let t = b.target_slot().unwrap();
    b.mark_unbootable(&t).unwrap();
    b.mark_active(&t, 1).unwrap();
    let installed = InstalledUpdate {
        version: "2.0.0".into(),
        slot: SlotId::B,
        from_version: "1.0.0".into(),
        boot_id: "boot-1".into(),
    };

    // B is tried once; its health gate fails, so nobody blesses it.
    assert_eq!(h.loader_boot(), "platte-b+1.conf");
    assert_eq!(b.booted_slot().unwrap(), SlotId::B);
    assert_eq!(
        h.entries(),
        ["other+2.conf", "platte-a.conf", "platte-b+0-1.conf"]
    );
    // Next boot: B is exhausted and sorts last, the loader boots A on its own.
    assert_eq!(h.loader_boot(), "platte-a.conf");
    assert_eq!(b.booted_slot().unwrap(), SlotId::A);
    assert!(b.fell_back().unwrap());
    let st = b.describe().unwrap();
    assert!(!st[1].state.bootable(), "{:?}", st[1]);
    assert_eq!(st[0].state.priority, 2);
    // What the agent concludes from it.
    let seen = BootObservation {
        boot_id: "boot-3",
        booted_slot: b.booted_slot().unwrap(),
        running_version: "1.0.0",
    };
    assert_eq!(
        rollback::detect(Some(&installed), &seen),
        Outcome::RolledBack {
            version: "2.0.0".into()
        }
    );
    // B is the target again; mark_unbootable clears the exhausted entry.
    let t = b.target_slot().unwrap();
    assert_eq!(t.slot(), SlotId::B);
    b.mark_unbootable(&t).unwrap();
    assert_eq!(h.entries(), ["other+2.conf", "platte-a.conf"]);
}

#[test]
fn the_booted_slot_is_never_written() {
    let h = Host::new();
    let b = h.backend();
    let t = b.target_slot().unwrap();
    b.mark_active(&t, 1).unwrap();
    // The machine is now running B (booted into the new entry); the old handle is stale.
    h.loader_boot();
    let before = h.entries();
    let kernel = fs::read(h.path("esp/platte/b/vmlinuz")).unwrap();
    h.slot_tree("b", "9.9.9");
    for r in [
        b.mark_unbootable(&t).map(|_| ()),
        b.mark_active(&t, 1),
        b.open_target(&t).map(|_| ()),
    ] {
        let e = r.unwrap_err();
        assert!(matches!(e, BootError::TargetChanged { .. }), "{e}");
    }
    assert_eq!(h.entries(), before);
    assert_eq!(fs::read(h.path("esp/platte/b/vmlinuz")).unwrap(), kernel);
}

#[test]
fn a_missing_kernel_in_the_new_slot_leaves_no_entry() {
    let h = Host::new();
    let b = h.backend();
    fs::remove_file(h.path("slots/b/boot/initrd.img-2.0.0")).unwrap();
    let t = b.target_slot().unwrap();
    b.mark_unbootable(&t).unwrap();
    let e = b.mark_active(&t, 1).unwrap_err();
    assert!(
        matches!(
            e,
            BootError::SlotFiles {
                slot: SlotId::B,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("/boot/initrd.img"), "{e}");
    assert_eq!(h.entries(), ["other+2.conf", "platte-a.conf"]);
    assert!(
        fs::read_dir(h.path("esp/platte/b")).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with('.'))
    );
}

#[test]
fn paths_resolve_inside_the_slot() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    fs::create_dir_all(r.join("boot")).unwrap();
    fs::write(r.join("boot/k"), "k").unwrap();
    symlink("/boot/k", r.join("vmlinuz")).unwrap();
    symlink("../../../../boot/k", r.join("boot/up")).unwrap();
    symlink("loop2", r.join("loop1")).unwrap();
    symlink("loop1", r.join("loop2")).unwrap();
    assert_eq!(
        resolve_in_root(r, Path::new("/vmlinuz")).unwrap(),
        r.join("boot/k")
    );
    assert_eq!(
        resolve_in_root(r, Path::new("/boot/up")).unwrap(),
        r.join("boot/k")
    );
    assert!(resolve_in_root(r, Path::new("/loop1")).is_err());
    assert!(resolve_in_root(r, Path::new("/nope")).is_err());
}

#[test]
fn entry_file_names_round_trip() {
    for n in ["platte-b+3.conf", "platte-b+0-2.conf", "platte-a.conf"] {
        assert_eq!(EntryFileName::parse(n).unwrap().file_name(), n);
    }
}

#[test]
fn configured_through_drop_ins() {
    use update_agent::config::{self, BootBackendKind};
    let d = tempfile::tempdir().unwrap();
    let conf = d.path().join("agent.d");
    fs::create_dir_all(&conf).unwrap();
    fs::write(
        conf.join("10-boot.toml"),
        "[boot]\nbackend = \"systemd-boot\"\n[boot.systemd_boot]\nesp = \"/boot/efi\"\n\
         kernel_options = \"rw quiet\"\n",
    )
    .unwrap();
    let loaded = config::load(std::slice::from_ref(&conf), &[]).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let boot = &loaded.settings.boot;
    assert_eq!(boot.backend, BootBackendKind::SystemdBoot);
    assert_eq!(boot.slot_a, SlotSpec::Label("ROOT-A".into()));
    assert_eq!(boot.systemd_boot.esp, Path::new("/boot/efi"));
    assert_eq!(boot.systemd_boot.entry_name, "platte");
    assert_eq!(boot.systemd_boot.kernel_options, "rw quiet");
    assert_eq!(boot.systemd_boot.kernel_path, Path::new("/boot/vmlinuz"));

    fs::write(
        conf.join("20-bad.toml"),
        "[boot.systemd_boot]\nentry_name = \"a+b\"\n",
    )
    .unwrap();
    let e = config::load(std::slice::from_ref(&conf), &[])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("boot.systemd_boot.entry_name") && e.contains("20-bad.toml"),
        "{e}"
    );
    fs::write(
        conf.join("20-bad.toml"),
        "[boot.systemd_boot]\nesp = \"efi\"\n",
    )
    .unwrap();
    let e = config::load(std::slice::from_ref(&conf), &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("boot.systemd_boot.esp"), "{e}");
}

#[test]
fn settings_select_the_backend() {
    use update_agent::config;
    let h = Host::new();
    let conf = h.path("agent.d");
    fs::create_dir_all(&conf).unwrap();
    let mut f = fs::File::create(conf.join("10-boot.toml")).unwrap();
    writeln!(
        f,
        "[boot]\nbackend = \"systemd-boot\"\ndisk = {:?}\n[boot.systemd_boot]\nesp = {:?}\n\
         efivars_dir = {:?}",
        h.img,
        h.path("esp"),
        h.path("efivars")
    )
    .unwrap();
    let loaded = config::load(std::slice::from_ref(&conf), &[]).unwrap();
    let mut paths = update_agent::HostPaths::under(h.dir.path());
    paths.kernel_cmdline = h.path("cmdline");
    let b = update_agent::boot::from_settings(&loaded.settings.boot, &paths).unwrap();
    assert_eq!(b.disk(), h.img.as_path());
    let st = b.describe().unwrap();
    assert_eq!(st[0].label, "ROOT-A");
    assert_eq!(st[0].booted, Some(true));
    assert!(st[0].state.successful);
}
