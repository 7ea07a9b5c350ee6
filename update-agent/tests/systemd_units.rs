//! The shipped systemd units pass `systemd-analyze verify`, and the D-Bus policy is accepted by
//! a real `dbus-daemon`.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;

use testkit::dbus as dbus_daemon;

fn systemd_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../systemd"))
}

#[test]
fn units_pass_systemd_analyze_verify() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("!!!!! SKIPPED: systemd-analyze is not installed; units NOT verified !!!!!");
        return;
    }
    // verify wants the ExecStart binaries to exist: give it stubs on a fake root.
    let root = tempfile::tempdir().unwrap();
    let bin = root.path().join("usr/bin");
    std::fs::create_dir_all(&bin).unwrap();
    for b in ["update-agent", "update-server"] {
        let p = bin.join(b);
        std::fs::write(&p, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    // The host's own units (sysinit.target, boot-complete.target...) seen inside the fake root.
    std::fs::create_dir_all(root.path().join("usr/lib/systemd")).unwrap();
    std::os::unix::fs::symlink(
        "/usr/lib/systemd/system",
        root.path().join("usr/lib/systemd/system"),
    )
    .unwrap();
    let units = root.path().join("etc/systemd/system");
    std::fs::create_dir_all(&units).unwrap();
    let mut paths = Vec::new();
    for u in [
        "update-agent.service",
        "update-agent-mark-good.service",
        "update-server.service",
    ] {
        let dst = units.join(u);
        std::fs::copy(systemd_dir().join(u), &dst).unwrap();
        paths.push(dst);
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.path().display()))
        .args(&paths)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    // The agent tells systemd when it is ready and what it does.
    let agent = std::fs::read_to_string(systemd_dir().join("update-agent.service")).unwrap();
    let keys: Vec<&str> = agent.lines().map(str::trim).collect();
    assert!(keys.contains(&"Type=notify"), "{agent}");
    assert!(keys.contains(&"NotifyAccess=main"), "{agent}");
    // Runtime extensions: /var/lib/extensions (the NAME.raw links) is created and writable.
    assert!(
        keys.iter().any(|k| k
            .strip_prefix("StateDirectory=")
            .is_some_and(|v| v.split_whitespace().any(|d| d == "extensions"))),
        "{agent}"
    );
    // Warnings about our own units count as failures too.
    for u in ["update-agent", "update-server"] {
        assert!(
            !stderr
                .lines()
                .any(|l| l.contains(u) && !l.contains("Failed to")),
            "warnings about {u}:\n{stderr}"
        );
    }
}

#[test]
fn dbus_policy_is_accepted_by_dbus_daemon() {
    let policy = systemd_dir().join("org.platte.Update1.conf");
    let bus = dbus_daemon::DbusDaemon::start_with(&format!(
        "<include>{}</include>",
        policy.canonicalize().unwrap().display()
    ));
    assert!(
        bus.is_ok(),
        "dbus-daemon refused the policy: {:?}",
        bus.err()
    );

    // Control: a malformed policy is refused, so the check above can fail.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.conf");
    std::fs::write(
        &bad,
        "<busconfig><policy user=\"root\"><allow own=\"x\"></policy>",
    )
    .unwrap();
    let refused =
        dbus_daemon::DbusDaemon::start_with(&format!("<include>{}</include>", bad.display()));
    assert!(refused.is_err());
}
