//! Config loading across drop-in directories and legacy `update.conf` files on a fake host root.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use update_agent::HostPaths;
use update_agent::config::{self, ConfigError, WarningKind};

fn write(p: &Path, text: &str) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, text).unwrap();
}

fn host() -> (tempfile::TempDir, HostPaths) {
    let d = tempfile::tempdir().unwrap();
    let paths = HostPaths::under(d.path());
    (d, paths)
}

fn load(p: &HostPaths) -> Result<config::LoadedConfig, ConfigError> {
    config::load(&p.config_dirs, &p.legacy_update_conf)
}

#[test]
fn no_files_gives_defaults() {
    let (_d, p) = host();
    let c = load(&p).unwrap();
    assert!(c.warnings.is_empty() && c.dropins.is_empty());
    assert_eq!(c.settings.updates.group, "stable");
    assert_eq!(c.settings.updates.server, None);
}

#[test]
fn precedence_across_dirs_and_names() {
    let (d, p) = host();
    let [usr, etc, run] = [&p.config_dirs[0], &p.config_dirs[1], &p.config_dirs[2]];
    write(
        &usr.join("10-defaults.toml"),
        "[updates]\ngroup = 'alpha'\nserver = 'https://vendor.example/v1/update/'\n[boot]\ntries = 2\n",
    );
    // Same name in /etc replaces the vendor file entirely (its tries = 2 is gone).
    write(&etc.join("10-defaults.toml"), "[updates]\ngroup = 'beta'\n");
    // Lexical order across directories: /usr/lib/…/20 applies after /etc/…/10.
    write(&usr.join("20-more.toml"), "[check]\ninterval_secs = 1800\n");
    // /run/…/05 sorts first, so later files win over it despite /run's higher directory rank.
    write(
        &run.join("05-early.toml"),
        "[updates]\ngroup = 'run-early'\n",
    );
    write(&run.join("90-late.toml"), "[check]\ninterval_secs = 900\n");
    let c = load(&p).unwrap();
    let s = &c.settings;
    assert_eq!(s.updates.group, "beta");
    assert_eq!(
        s.updates.server, None,
        "the replaced vendor file's server is gone"
    );
    assert_eq!(s.boot.tries, 1);
    assert_eq!(s.check.interval.as_secs(), 900);
    let names: Vec<String> = c
        .dropins
        .iter()
        .map(|f| f.strip_prefix(d.path()).unwrap().display().to_string())
        .collect();
    assert_eq!(
        names,
        [
            "run/platte/agent.d/05-early.toml",
            "etc/platte/agent.d/10-defaults.toml",
            "usr/lib/platte/agent.d/20-more.toml",
            "run/platte/agent.d/90-late.toml",
        ]
    );
}

#[test]
fn dev_null_symlink_masks_a_file() {
    let (_d, p) = host();
    write(
        &p.config_dirs[0].join("50-group.toml"),
        "[updates]\ngroup = 'alpha'\n",
    );
    fs::create_dir_all(&p.config_dirs[1]).unwrap();
    symlink("/dev/null", p.config_dirs[1].join("50-group.toml")).unwrap();
    let c = load(&p).unwrap();
    assert_eq!(c.settings.updates.group, "stable");
    assert!(c.dropins.is_empty());
    assert!(c.warnings.is_empty());
}

#[test]
fn ignored_files_and_unknown_keys_warn() {
    let (_d, p) = host();
    let etc = &p.config_dirs[1];
    write(&etc.join("50-updates.yaml"), "updates:\n  enabled: false\n");
    write(
        &etc.join("60-x.toml"),
        "[updates]\nenabld = false\n[udpates]\ngroup = 'x'\n",
    );
    write(&etc.join(".hidden.toml.swp"), "junk");
    fs::create_dir_all(etc.join("70-dir.toml")).unwrap();
    let c = load(&p).unwrap();
    assert!(c.settings.updates.enabled, "the .yaml file must not apply");
    let text: Vec<String> = c.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(c.warnings.len(), 4, "{text:#?}");
    assert!(matches!(
        &c.warnings[0].kind,
        WarningKind::IgnoredFile { .. }
    ));
    assert!(
        text[0].contains("50-updates.yaml") && text[0].contains("*.toml"),
        "{}",
        text[0]
    );
    assert!(text[1].contains("70-dir.toml"), "{}", text[1]);
    let unknown: Vec<&String> = c
        .warnings
        .iter()
        .filter_map(|w| match &w.kind {
            WarningKind::UnknownKey { key } => Some(key),
            _ => None,
        })
        .collect();
    assert_eq!(unknown.len(), 2);
    assert!(unknown.iter().any(|k| *k == "updates.enabld"));
    assert!(unknown.iter().any(|k| *k == "udpates"));
    assert!(c.warnings[2].file.ends_with("60-x.toml"));
}

#[test]
fn legacy_update_conf_precedence() {
    let (_d, p) = host();
    let [etc_conf, usr_conf] = [&p.legacy_update_conf[0], &p.legacy_update_conf[1]];
    write(
        usr_conf,
        "GROUP=stable\nSERVER=https://usr.example/v1/update/\nMACHINE_ALIAS=usr\n",
    );
    write(etc_conf, "GROUP=beta\nREBOOT_STRATEGY=off\n");
    let c = load(&p).unwrap();
    assert_eq!(
        c.settings.updates.group, "beta",
        "/etc wins over /usr/share"
    );
    assert_eq!(
        c.settings.updates.server.as_ref().unwrap().as_str(),
        "https://usr.example/v1/update/"
    );
    assert_eq!(c.settings.identity.alias.as_deref(), Some("usr"));
    assert!(
        c.warnings.is_empty(),
        "unknown legacy keys are not warned about"
    );

    // Drop-ins win over legacy files.
    write(
        &p.config_dirs[1].join("10-g.toml"),
        "[updates]\ngroup = 'platte'\n",
    );
    assert_eq!(load(&p).unwrap().settings.updates.group, "platte");

    // SERVER=disabled turns updates off; a drop-in can turn them back on.
    write(etc_conf, "SERVER=disabled\n");
    assert!(!load(&p).unwrap().settings.updates.enabled);
    write(
        &p.config_dirs[2].join("10-on.toml"),
        "[updates]\nenabled = true\n",
    );
    assert!(load(&p).unwrap().settings.updates.enabled);
}

#[test]
fn invalid_legacy_value_names_the_legacy_file() {
    let (_d, p) = host();
    write(&p.legacy_update_conf[0], "SERVER=ftp://nope/\n");
    let e = load(&p).unwrap_err().to_string();
    assert!(e.contains("updates.server"), "{e}");
    assert!(
        e.contains("etc/flatcar/update.conf") && e.contains("SERVER"),
        "{e}"
    );
}

#[test]
fn invalid_dropin_names_key_and_file() {
    let (_d, p) = host();
    write(
        &p.config_dirs[1].join("30-bad.toml"),
        "[boot]\ntries = 99\n",
    );
    let e = load(&p).unwrap_err().to_string();
    assert!(e.contains("boot.tries") && e.contains("30-bad.toml"), "{e}");
    write(&p.config_dirs[1].join("30-bad.toml"), "[boot\n");
    let e = load(&p).unwrap_err().to_string();
    assert!(e.contains("30-bad.toml"), "{e}");
}

#[test]
fn oversized_file_is_refused() {
    let (_d, p) = host();
    let big = format!("# {}\n", "x".repeat(300 * 1024));
    write(&p.config_dirs[1].join("10-big.toml"), &big);
    assert!(matches!(load(&p), Err(ConfigError::TooLarge { .. })));
}
