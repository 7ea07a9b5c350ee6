//! A runtime extension on a simulated host, set up as an administrator would
//! (docs/usage/container-runtime.md, "Agent configuration"): a directory for the `NAME.raw` link and
//! one for the images, a refresh command and a health command, and the `[extensions.NAME]`
//! drop-in naming them, the extension's app id and the units to restart.
//!
//! The two commands are shell scripts that record where `NAME.raw` pointed each time they ran
//! (the refresh command stands in for `systemctl restart systemd-sysext.service`); the health
//! command exits with the code the test set ([`HostExtension::set_health_exit`], 0 at first).
//! What the agent did is then read from files: the link, the images, the scripts' records and
//! the agent's documented `extensions.json`.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Result, io};
use crate::machine::Machine;

/// What a recording script writes when `NAME.raw` does not exist.
pub const NO_LINK: &str = "-";

/// One extension configured on one machine.
#[derive(Debug, Clone)]
pub struct HostExtension {
    /// The extension's name (`NAME.raw`, `[extensions.NAME]`).
    pub name: String,
    /// Its Omaha app id.
    pub app: String,
    /// `install_dir`: where the `NAME.raw` link lives.
    pub install_dir: PathBuf,
    /// `image_dir`: where the agent keeps `NAME-VERSION.raw` images.
    pub image_dir: PathBuf,
    refresh_log: PathBuf,
    health_log: PathBuf,
    health_exit: PathBuf,
    state_file: PathBuf,
}

impl HostExtension {
    /// Writes the scripts under the machine's directory (`ext-NAME/`) and the drop-in
    /// `40-extension-NAME.toml`: extension `name` of app `app` in group `stable`, restarting
    /// `units` after each switch.
    pub fn configure(m: &Machine, name: &str, app: &str, units: &[&str]) -> Result<HostExtension> {
        let dir = m.home().join(format!("ext-{name}"));
        let ext = HostExtension {
            name: name.to_owned(),
            app: app.to_owned(),
            install_dir: dir.join("extensions"),
            image_dir: dir.join("images"),
            refresh_log: dir.join("refresh.log"),
            health_log: dir.join("health.log"),
            health_exit: dir.join("health.exit"),
            state_file: m.host_file("var/lib/platte/extensions.json"),
        };
        for d in [&dir, &ext.install_dir, &ext.image_dir] {
            std::fs::create_dir_all(d).map_err(io("creating an extension directory", d))?;
        }
        let link = ext.install_dir.join(format!("{name}.raw"));
        let record = |log: &Path| {
            format!(
                "t=$(readlink '{}')\necho \"${{t:-{NO_LINK}}}\" >> '{}'",
                link.display(),
                log.display()
            )
        };
        let refresh = dir.join("refresh.sh");
        script(&refresh, &record(&ext.refresh_log))?;
        let health = dir.join("health.sh");
        script(
            &health,
            &format!(
                "{}\nexit \"$(cat '{}' 2>/dev/null || echo 0)\"",
                record(&ext.health_log),
                ext.health_exit.display()
            ),
        )?;
        let units = units
            .iter()
            .map(|u| format!("\"{u}\""))
            .collect::<Vec<_>>()
            .join(", ");
        m.write_dropin(
            &format!("40-extension-{name}.toml"),
            &format!(
                r#"# Written by the platte-e2e harness: runtime extension {name}.
[extensions]
sysext_refresh_command = ["{refresh}"]
image_dir = "{images}"

[extensions.{name}]
app_id = "{app}"
group = "stable"
install_dir = "{install}"
restart_units = [{units}]
health_command = ["{health}"]
restart_timeout_secs = 20
health_timeout_secs = 20
"#,
                refresh = refresh.display(),
                images = ext.image_dir.display(),
                install = ext.install_dir.display(),
                health = health.display(),
            ),
        )?;
        Ok(ext)
    }

    /// Where `NAME.raw` points (`None`: no link).
    pub fn link(&self) -> Option<PathBuf> {
        std::fs::read_link(self.install_dir.join(format!("{}.raw", self.name))).ok()
    }

    /// The agent's image file of `version` (`image_dir/NAME-VERSION.raw`).
    pub fn image(&self, version: &str) -> PathBuf {
        self.image_dir.join(format!("{}-{version}.raw", self.name))
    }

    /// Where `NAME.raw` pointed at each run of the refresh command, oldest first
    /// ([`NO_LINK`]: no link).
    pub fn refreshes(&self) -> Vec<String> {
        lines(&self.refresh_log)
    }

    /// Where `NAME.raw` pointed at each run of the health command, oldest first.
    pub fn health_runs(&self) -> Vec<String> {
        lines(&self.health_log)
    }

    /// The exit code of the health command from now on.
    pub fn set_health_exit(&self, code: i32) -> Result<()> {
        std::fs::write(&self.health_exit, format!("{code}\n")).map_err(io(
            "writing the health command's exit code",
            &self.health_exit,
        ))
    }

    /// The agent's record of this extension in `extensions.json` (`Null` when there is none).
    pub fn record(&self) -> Value {
        std::fs::read(&self.state_file)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .map_or(Value::Null, |v| v["extensions"][&self.name].clone())
    }

    /// The versions on the agent's deny list for this extension.
    pub fn deny_list(&self) -> Vec<String> {
        self.record()["deny_list"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    }
}

fn script(path: &Path, body: &str) -> Result<()> {
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).map_err(io("writing a script", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .map_err(io("making a script executable", path))
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}
