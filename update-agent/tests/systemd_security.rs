//! The shipped units' sandboxing cannot regress silently: `systemd-analyze security --offline`
//! rates every unit, alone (the GPT backend) and with its `systemd/systemd-boot/` drop-in, and
//! the exposure must stay at or below the score recorded here and in docs/usage/operations.md ("Unit
//! hardening"). Lower a score here when a unit is hardened further; raising one needs a reason
//! in that table. The drop-in configuration must also pass `systemd-analyze verify`.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Highest accepted exposure (systemd-analyze's 0.0–10.0) per unit: (unit, alone, with the
/// systemd-boot drop-in).
const MAX_EXPOSURE: [(&str, f64, Option<f64>); 3] = [
    ("update-agent.service", 2.6, Some(2.8)),
    ("update-agent-mark-good.service", 2.8, Some(2.8)),
    ("update-server.service", 1.5, None),
];

fn systemd_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../systemd"))
}

/// Why the checks cannot run here, if they cannot: systemd-analyze missing or too old for
/// `security --offline` (systemd 250).
fn unsupported() -> Option<String> {
    let help = match Command::new("systemd-analyze").arg("--help").output() {
        Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
        Err(e) => return Some(format!("systemd-analyze is not installed ({e})")),
    };
    (!help.contains("--offline") || !help.contains("--threshold")).then(|| {
        "this systemd-analyze has no `security --offline`/`--threshold` (systemd < 250)".into()
    })
}

/// A fake root with the shipped units (and, with `dropins`, the systemd-boot drop-ins where
/// install-platte.sh and docs/usage/operations.md put them) and stub executables for verify.
fn fake_root(dropins: bool) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    for (dir, name) in [
        ("usr/bin", "update-agent"),
        ("usr/bin", "update-server"),
        ("bin", "sh"),
    ] {
        let dir = root.path().join(dir);
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let units = root.path().join("etc/systemd/system");
    std::fs::create_dir_all(&units).unwrap();
    for (unit, _, _) in MAX_EXPOSURE {
        std::fs::copy(systemd_dir().join(unit), units.join(unit)).unwrap();
    }
    if dropins {
        for (unit, _, with) in MAX_EXPOSURE {
            if with.is_none() {
                continue;
            }
            let d = units.join(format!("{unit}.d"));
            std::fs::create_dir_all(&d).unwrap();
            let src = systemd_dir().join(format!("systemd-boot/{unit}.d/systemd-boot.conf"));
            std::fs::copy(src, d.join("systemd-boot.conf")).unwrap();
        }
    }
    root
}

/// The overall exposure `systemd-analyze security --offline` gives `unit` under `root`.
fn exposure(root: &Path, unit: &str, max: f64) -> (f64, bool, String) {
    // --threshold takes tenths: exit status non-zero above it.
    let threshold = (max * 10.0).round() as u32;
    let out = Command::new("systemd-analyze")
        .arg("security")
        .arg("--offline=true")
        .arg(format!("--root={}", root.display()))
        .arg(format!("--threshold={threshold}"))
        .arg("--no-pager")
        .arg(unit)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let score = text
        .lines()
        .find_map(|l| {
            l.split_once("Overall exposure level for ")?
                .1
                .split_once(": ")?
                .1
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| {
            panic!(
                "no overall exposure for {unit} in:\n{text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    (score, out.status.success(), text)
}

#[test]
fn unit_exposure_does_not_regress() {
    if let Some(why) = unsupported() {
        eprintln!("!!!!! SKIPPED: {why}; unit exposure NOT checked !!!!!");
        return;
    }
    let mut failures = Vec::new();
    for dropins in [false, true] {
        let root = fake_root(dropins);
        for (unit, alone, with) in MAX_EXPOSURE {
            let max = if dropins {
                match with {
                    Some(m) => m,
                    None => continue,
                }
            } else {
                alone
            };
            let (score, within, text) = exposure(root.path(), unit, max);
            let what = if dropins {
                " with the systemd-boot drop-in"
            } else {
                ""
            };
            eprintln!("{unit}{what}: exposure {score:.1} (at most {max:.1})");
            if !within || score > max + 1e-9 {
                let worst: Vec<&str> = text.lines().filter(|l| l.starts_with('✗')).collect();
                failures.push(format!(
                    "{unit}{what}: exposure {score:.1}, more than the {max:.1} recorded in \
                     docs/usage/operations.md; exposed:\n{}",
                    worst.join("\n")
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn units_with_systemd_boot_dropins_pass_verify() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("!!!!! SKIPPED: systemd-analyze is not installed; drop-ins NOT verified !!!!!");
        return;
    }
    let root = fake_root(true);
    // The host's own units (boot-complete.target, shutdown.target...) seen inside the fake root.
    std::fs::create_dir_all(root.path().join("usr/lib/systemd")).unwrap();
    std::os::unix::fs::symlink(
        "/usr/lib/systemd/system",
        root.path().join("usr/lib/systemd/system"),
    )
    .unwrap();
    let units = root.path().join("etc/systemd/system");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.path().display()))
        .arg(units.join("update-agent.service"))
        .arg(units.join("update-agent-mark-good.service"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    assert!(
        !stderr
            .lines()
            .any(|l| l.contains("update-agent") && !l.contains("Failed to")),
        "warnings about the agent's units with their drop-ins:\n{stderr}"
    );
}
