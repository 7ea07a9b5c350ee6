//! The `update-agent` binary on a fake host root: `status-slots`, `mark-good`, `check-config`.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use testkit::sgdisk::{self as common, assert_verified, attrs, gptprio, make_image};

struct Host {
    root: tempfile::TempDir,
    img: PathBuf,
}

fn write(p: &Path, text: &str) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, text).unwrap();
}

impl Host {
    /// A host booted from USR-B after an update (B: priority 2, tries 0, not yet successful).
    fn new(extra_config: &str) -> Self {
        let root = tempfile::tempdir().unwrap();
        let img = make_image(root.path());
        common::sgdisk(&["-A", "2:set:49", img.to_str().unwrap()]);
        write(
            &root.path().join("proc/cmdline"),
            "mount.usr=/dev/disk/by-partlabel/USR-B root=LABEL=ROOT\n",
        );
        let systemctl = root.path().join("bin/systemctl");
        // Active units are those listed in $ROOT/active-units.
        write(
            &systemctl,
            &format!(
                "#!/bin/sh\n[ \"$1\" = is-active ] || exit 9\ngrep -qx \"$4\" {}\n",
                root.path().join("active-units").display()
            ),
        );
        fs::set_permissions(&systemctl, fs::Permissions::from_mode(0o755)).unwrap();
        write(&root.path().join("active-units"), "containerd.service\n");
        write(
            &root.path().join("etc/platte/agent.d/50-test.toml"),
            &format!(
                "[boot]\ndisk = \"{}\"\n[health]\nsystemctl = \"{}\"\nunits = [\"containerd.service\"]\n{extra_config}",
                img.display(),
                systemctl.display()
            ),
        );
        Self { root, img }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_update-agent"))
            .arg("--host-root")
            .arg(self.root.path())
            .args(args)
            .output()
            .unwrap()
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn status_slots_json() {
    let h = Host::new("");
    let out = h.run(&["status-slots", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["slot"], "A");
    assert_eq!(v[0]["label"], "USR-A");
    assert_eq!(v[0]["booted"], false);
    assert_eq!(v[1]["booted"], true);
    assert_eq!(v[1]["state"]["priority"], 2);
    assert_eq!(v[1]["state"]["successful"], false);
    let table = h.run(&["status-slots"]);
    assert!(text(&table).contains("USR-B"), "{}", text(&table));
}

#[test]
fn mark_good_marks_the_booted_slot_when_checks_pass() {
    let h = Host::new("[health.checks.ok]\ncommand = [\"/bin/true\"]\n");
    let out = h.run(&["mark-good"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_verified(&h.img);
    assert_eq!(attrs(&h.img, 2), gptprio(2, 0, true));
    assert_eq!(
        attrs(&h.img, 1),
        gptprio(1, 0, true),
        "the other slot is untouched"
    );
}

#[test]
fn mark_good_leaves_the_slot_unmarked_when_a_command_fails() {
    let h = Host::new("[health.checks.net]\ncommand = [\"/bin/sh\", \"-c\", \"exit 4\"]\n");
    let before = fs::read(&h.img).unwrap();
    let out = h.run(&["mark-good"]);
    assert!(!out.status.success());
    let t = text(&out);
    assert!(t.contains("\"net\"") && t.contains("exit code 4"), "{t}");
    assert_eq!(fs::read(&h.img).unwrap(), before);
}

#[test]
fn mark_good_leaves_the_slot_unmarked_when_a_unit_is_inactive() {
    let h = Host::new("");
    write(&h.root.path().join("active-units"), "other.service\n");
    let out = h.run(&["mark-good"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("containerd.service is not active"),
        "{}",
        text(&out)
    );
    assert_eq!(attrs(&h.img, 2), gptprio(2, 0, false));
}

#[test]
fn check_config_reports_warnings_and_errors() {
    let h = Host::new("[health.typo]\nx = 1\n");
    write(
        &h.root.path().join("etc/platte/agent.d/60-x.yaml"),
        "a: 1\n",
    );
    let out = h.run(&["check-config"]);
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("unknown key `health.typo`") && t.contains("60-x.yaml"),
        "{t}"
    );
    write(
        &h.root.path().join("etc/platte/agent.d/70-bad.toml"),
        "[boot]\ntries = 0\n",
    );
    let out = h.run(&["check-config"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("boot.tries"), "{}", text(&out));
}

/// Standard output nobody reads: a pipe whose read end is already closed, so every write to it
/// fails with `EPIPE` (like `update-agent check-config | head -1` once `head` has exited).
fn closed_pipe() -> std::io::PipeWriter {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    writer
}

/// Runs `bin` with `args` and a closed standard output.
fn run_unread(bin: &str, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .stdout(closed_pipe())
        .output()
        .unwrap()
}

#[test]
fn a_closed_stdout_is_no_panic_and_keeps_the_exit_status() {
    let h = Host::new("[health.checks.ok]\ncommand = [\"/bin/true\"]\n");
    let root = h.root.path().to_str().unwrap().to_owned();
    let agent = env!("CARGO_BIN_EXE_update-agent");
    let updatectl = env!("CARGO_BIN_EXE_updatectl");
    for (bin, args) in [
        (agent, vec!["--host-root", &root, "check-config"]),
        (agent, vec!["--host-root", &root, "status-slots"]),
        (agent, vec!["--host-root", &root, "status-slots", "--json"]),
        (agent, vec!["--host-root", &root, "state"]),
        (agent, vec!["--help"]),
        (updatectl, vec!["completions", "bash"]),
        (updatectl, vec!["--version"]),
    ] {
        let out = run_unread(bin, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{bin} {args:?}: {stderr}");
        assert!(
            !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
            "{bin} {args:?}: {stderr}"
        );
    }
    // The command still does its work: the booted slot is marked although nobody reads.
    let out = run_unread(agent, &["--host-root", &root, "mark-good"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(attrs(&h.img, 2), gptprio(2, 0, true));
    // And its exit status stays its own: an invalid configuration is still reported as one.
    write(
        &h.root.path().join("etc/platte/agent.d/70-bad.toml"),
        "[boot]\ntries = 0\n",
    );
    let out = run_unread(agent, &["--host-root", &root, "check-config"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("boot.tries"));
}
