//! The `[reboot]` configuration: strategies, windows, FleetLock, grace period, lock retry,
//! sentinel path, and the shipped commented defaults file.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use update_agent::config::dropins::parse_str;
use update_agent::config::{ConfigError, Inputs, RebootStrategy, Settings};

const FILE: &str = "/etc/platte/agent.d/50-reboot.toml";

fn settings(text: &str) -> Result<Settings, ConfigError> {
    let mut warnings = Vec::new();
    let f = parse_str(text, Path::new(FILE), &mut warnings)?;
    assert!(warnings.is_empty(), "{warnings:?}");
    let mut i = Inputs::default();
    i.merge(f, Path::new(FILE));
    Settings::from_inputs(&i)
}

#[test]
fn defaults() {
    let r = settings("").unwrap().reboot;
    assert_eq!(r.strategy, RebootStrategy::Off);
    assert!(r.windows.is_empty() && r.fleet_lock.is_none());
    assert_eq!(r.grace_period, Duration::from_secs(300));
    assert_eq!(r.lock_retry, Duration::from_secs(60));
    assert_eq!(r.notify_command, ["/usr/bin/wall"]);
    assert_eq!(
        r.reboot_required.unwrap(),
        Path::new("/run/reboot-required")
    );
}

#[test]
fn fleet_lock_with_windows() {
    let r = settings(
        r#"
[reboot]
strategy = "fleet-lock"
windows = ["Mon-Fri 22:00 2h Europe/Berlin", { days = ["Sat"], start = "03:00", length = "1h" }]
grace_period_secs = 0
lock_retry_secs = 15
notify_command = []
reboot_required_path = ""
[reboot.fleet_lock]
base_url = "https://lock.example.com/fleetlock"
group = "workers.eu-1"
"#,
    )
    .unwrap()
    .reboot;
    assert_eq!(r.strategy, RebootStrategy::FleetLock);
    assert_eq!(r.windows.windows().len(), 2);
    let fl = r.fleet_lock.unwrap();
    assert_eq!(fl.group, "workers.eu-1");
    assert_eq!(fl.base_url.host_str(), Some("lock.example.com"));
    assert!(r.grace_period.is_zero() && r.notify_command.is_empty());
    assert_eq!(r.lock_retry, Duration::from_secs(15));
    assert_eq!(r.reboot_required, None);
    // The coordinator's strategy is built from it, with the app-specific id.
    let s = update_agent::reboot::RebootStrategy::from_settings(
        &settings("[reboot]\nstrategy='fleet-lock'\n[reboot.fleet_lock]\nbase_url='http://l/'\n")
            .unwrap()
            .reboot,
        "0123456789abcdef0123456789abcdef",
    )
    .unwrap();
    assert_eq!(s.name(), "fleet-lock");
    assert!(s.needs_lock());
}

#[test]
fn errors_name_key_and_file() {
    for (text, key) in [
        ("[reboot]\nstrategy = 'windows'\n", "reboot.windows"),
        (
            "[reboot]\nstrategy = 'windows'\nwindows = []\n",
            "reboot.windows",
        ),
        (
            "[reboot]\nstrategy = 'immediate'\nwindows = ['Mon 01:00 1h']\n",
            "reboot.windows",
        ),
        (
            "[reboot]\nstrategy = 'fleet-lock'\n",
            "reboot.fleet_lock.base_url",
        ),
        (
            "[reboot.fleet_lock]\nbase_url = 'ftp://x/'\n",
            "reboot.fleet_lock.base_url",
        ),
        (
            "[reboot.fleet_lock]\nbase_url = 'http://x/'\ngroup = 'a_b'\n",
            "reboot.fleet_lock.group",
        ),
        (
            "[reboot]\ngrace_period_secs = 7200\n",
            "reboot.grace_period_secs",
        ),
        ("[reboot]\nlock_retry_secs = 0\n", "reboot.lock_retry_secs"),
        (
            "[reboot]\nlock_retry_secs = 3601\n",
            "reboot.lock_retry_secs",
        ),
        (
            "[reboot]\nnotify_command = ['wall']\n",
            "reboot.notify_command",
        ),
        (
            "[reboot]\nreboot_required_path = 'rel'\n",
            "reboot.reboot_required_path",
        ),
        ("[reboot]\nstrategy = 'sometimes'\n", "reboot.strategy"),
    ] {
        let err = settings(text).unwrap_err().to_string();
        assert!(err.contains(key), "{text}: {err}");
        assert!(err.contains(FILE), "{text}: {err}");
    }
    // The range is in the message.
    let err = settings("[reboot]\nlock_retry_secs = 0\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("1..=3600"), "{err}");
    // Both ends of the range are accepted.
    for secs in [1, 3600] {
        let r = settings(&format!("[reboot]\nlock_retry_secs = {secs}\n"))
            .unwrap()
            .reboot;
        assert_eq!(r.lock_retry, Duration::from_secs(secs));
    }
    // A bad window is a parse error that says what is wrong.
    let err = settings("[reboot]\nwindows = ['Mon 25:00 1h']\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("25:00"), "{err}");
}

#[test]
fn shipped_defaults_file_parses_without_warnings_and_changes_nothing() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../systemd/agent.d/00-defaults.toml"
    ))
    .unwrap();
    assert_eq!(settings(&text).unwrap(), settings("").unwrap());
    // Uncommented, the reboot examples are valid too.
    let uncommented: String = text
        .lines()
        .skip_while(|l| !l.starts_with("[reboot]"))
        .map(|l| l.strip_prefix("# ").unwrap_or(l))
        .filter(|l| !l.starts_with("off |") && !l.starts_with("Weekly"))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("strategy = \"off\"", "strategy = \"fleet-lock\"");
    let r = settings(&uncommented).unwrap().reboot;
    assert_eq!(r.windows.windows().len(), 2);
    assert!(r.fleet_lock.is_some());
}
