//! One simulated host: a host root (`/etc/machine-id`, boot id, `/proc/cmdline`,
//! `/etc/os-release`, trust store, state), a GPT disk image file as its disk, an agent
//! configuration directory, and the `update-agent` commands an operator or systemd would run.
//!
//! A simulated boot runs the gptprio boot loader stand-in on the disk image, puts the chosen
//! partition's PARTUUID on the kernel command line (`mount.usr=PARTUUID=…`, as Flatcar's GRUB
//! config does), takes the OS version from the image in that partition, and draws a new boot id.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::bins::Binaries;
use crate::bootloader::{self, Prio};
use crate::dbus::Bus;
use crate::error::{Error, Result, io};
use crate::gpt::{self, Guid, PartitionSpec};
use crate::process::Proc;
use crate::release::{self, Publisher};

/// Platte's own Omaha app id (the agent's default `updates.app_id`).
pub const APP: &str = "7b3f6a2e-5c1d-4e8a-9f40-2d6b8c1e9a53";
/// Linux filesystem data partition type (the ROOT partition; not a gptprio candidate).
pub const LINUX_FS_TYPE: &str = "0fc63daf-8483-4772-8e79-3d69d8477de4";
/// Partition numbers of the slots.
pub const USR_A: u32 = 1;
/// Partition number of slot B.
pub const USR_B: u32 = 2;

/// Sizes of a machine's partitions.
#[derive(Debug, Clone, Copy)]
pub struct DiskLayout {
    /// USR-A, bytes.
    pub slot_a: u64,
    /// USR-B, bytes.
    pub slot_b: u64,
}

impl Default for DiskLayout {
    fn default() -> Self {
        DiskLayout {
            slot_a: 4 << 20,
            slot_b: 4 << 20,
        }
    }
}

/// Where machines are created and what they share: binaries, a directory, the publisher whose
/// key they trust, the server's Omaha URL.
#[derive(Debug, Clone, Copy)]
pub struct Site<'a> {
    /// Workspace binaries.
    pub bins: &'a Binaries,
    /// Parent directory of the machines' files.
    pub dir: &'a Path,
    /// Publisher whose public key hosts trust.
    pub publisher: &'a Publisher,
    /// Omaha endpoint for the agent config.
    pub omaha_url: &'a str,
}

/// What a simulated boot came up on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Booted {
    /// Partition label (`USR-A`/`USR-B`).
    pub label: String,
    /// Partition number.
    pub partition: u32,
    /// The OS version in that partition.
    pub version: String,
    /// The new boot id.
    pub boot_id: String,
}

/// The result of one agent command.
#[derive(Debug, Clone)]
pub struct AgentRun {
    /// Exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error (the agent's log).
    pub stderr: String,
}

/// A simulated host.
#[derive(Debug)]
pub struct Machine {
    /// Name (used as alias and in paths).
    pub name: String,
    /// `/etc/machine-id` (32 hex digits).
    pub machine_id: String,
    /// The host root the agent runs under (`--host-root`).
    pub root: PathBuf,
    /// Agent drop-in directory (`--config-dir`).
    pub conf: PathBuf,
    /// The disk image file.
    pub disk: PathBuf,
    /// Log of every agent command run on this machine.
    pub log: PathBuf,
    agent_bin: PathBuf,
    updatectl_bin: Option<PathBuf>,
    boots: u64,
    seed: u64,
}

impl Machine {
    /// Creates a host under `dir/NAME`: disk image (USR-A holding `version`, priority 1,
    /// successful; USR-B empty; a ROOT partition), host files, the publisher's public key in
    /// its trust store, agent config pointing at `omaha_url`; then boots it.
    pub fn create(
        site: &Site<'_>,
        name: &str,
        seed: u64,
        layout: DiskLayout,
        version: &str,
    ) -> Result<Machine> {
        let Site {
            bins,
            dir,
            publisher,
            omaha_url,
        } = *site;
        let home = dir.join(name);
        let root = home.join("root");
        let conf = home.join("agent.d");
        for d in [
            root.join("etc"),
            root.join("proc/sys/kernel/random"),
            root.join("run"),
            root.join("var/lib/platte"),
            conf.clone(),
        ] {
            std::fs::create_dir_all(&d).map_err(io("creating a host directory", &d))?;
        }
        let machine_id = Guid::from_seed(seed).to_string().replace('-', "");
        write(&root.join("etc/machine-id"), &format!("{machine_id}\n"))?;
        let keys = root.join("usr/share/platte/keys.d");
        publisher.install_public(&keys)?;
        let disk = home.join("disk.img");
        let usr: Guid = bootloader::USR_TYPE.parse()?;
        gpt::create(
            &disk,
            seed,
            &[
                PartitionSpec {
                    name: "USR-A".into(),
                    type_guid: usr,
                    size: layout.slot_a,
                    attributes: Prio {
                        priority: 1,
                        tries: 0,
                        successful: true,
                    }
                    .encode(0),
                },
                PartitionSpec {
                    name: "USR-B".into(),
                    type_guid: usr,
                    size: layout.slot_b,
                    attributes: 0,
                },
                PartitionSpec {
                    name: "ROOT".into(),
                    type_guid: LINUX_FS_TYPE.parse()?,
                    size: 1 << 20,
                    attributes: 0,
                },
            ],
        )?;
        let image = release::os_image(version, (layout.slot_a as usize).min(1 << 20));
        gpt::write_partition(&disk, USR_A, &image)?;
        let mut m = Machine {
            name: name.to_owned(),
            machine_id,
            log: home.join("agent.log"),
            root,
            conf,
            disk,
            agent_bin: bins.agent.clone(),
            updatectl_bin: bins.updatectl.clone(),
            boots: 0,
            seed,
        };
        m.write_dropin("10-e2e.toml", &m.base_config(omaha_url, &keys))?;
        m.boot()?;
        Ok(m)
    }

    fn base_config(&self, omaha_url: &str, keys: &Path) -> String {
        format!(
            r#"# Written by the platte-e2e harness for machine {name}.
[updates]
server = "{omaha_url}"
group = "stable"
app_id = "{APP}"
trusted_keys_dir = "{keys}"

[identity]
alias = "{name}"
board = "amd64-usr"

[boot]
disk = "{disk}"

{common}"#,
            name = self.name,
            common = testkit::agent::COMMON_CONFIG,
            keys = keys.display(),
            disk = self.disk.display(),
        )
    }

    /// Writes (replaces) a drop-in in the agent's configuration directory.
    pub fn write_dropin(&self, name: &str, text: &str) -> Result<()> {
        write(&self.conf.join(name), text)
    }

    /// Simulated boot: the boot loader stand-in picks a partition (decrementing its tries), the
    /// kernel command line names it, `/etc/os-release` says the version in it, new boot id.
    pub fn boot(&mut self) -> Result<Booted> {
        let chosen = bootloader::gptprio_next(&self.disk)?.ok_or_else(|| Error::Disk {
            path: self.disk.clone(),
            reason: "no bootable /usr partition (gptprio found nothing)".into(),
        })?;
        let head = gpt::read_partition(&self.disk, chosen.number, 256)?;
        let version = release::image_version(&head).ok_or_else(|| Error::Disk {
            path: self.disk.clone(),
            reason: format!("partition {} does not hold a demo OS image", chosen.name),
        })?;
        self.boots += 1;
        let boot_id =
            Guid::from_seed(self.seed.wrapping_mul(7919).wrapping_add(self.boots)).to_string();
        write(
            &self.root.join("proc/cmdline"),
            &format!(
                "BOOT_IMAGE=/flatcar/vmlinuz-{} mount.usr=PARTUUID={} rootflags=rw console=ttyS0\n",
                if chosen.number == USR_A { "a" } else { "b" },
                chosen.part_guid
            ),
        )?;
        write(
            &self.root.join("etc/os-release"),
            &format!("NAME=\"Platte demo OS\"\nID=platte-demo\nVERSION_ID={version}\n"),
        )?;
        write(
            &self.root.join("proc/sys/kernel/random/boot_id"),
            &format!("{boot_id}\n"),
        )?;
        // A reboot empties /run.
        let run = self.root.join("run");
        let _ = std::fs::remove_dir_all(&run);
        std::fs::create_dir_all(&run).map_err(io("creating /run", &run))?;
        Ok(Booted {
            label: chosen.name.clone(),
            partition: chosen.number,
            version,
            boot_id,
        })
    }

    /// The `update-agent` command for `args`, with this host's config dir and host root.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.agent_bin);
        c.arg("--config-dir")
            .arg(&self.conf)
            .arg("--host-root")
            .arg(&self.root)
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1");
        for k in [
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "http_proxy",
            "https_proxy",
            "all_proxy",
            "NOTIFY_SOCKET",
        ] {
            c.env_remove(k);
        }
        c
    }

    /// Runs `update-agent ARGS` to completion.
    pub fn agent(&self, args: &[&str]) -> Result<AgentRun> {
        let out = self
            .command(args)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(io("running update-agent", &self.agent_bin))?;
        let run = AgentRun {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        let mut log = crate::process::open_log(&self.log)?;
        use std::io::Write as _;
        let _ = writeln!(
            log,
            "=== update-agent {} -> {:?}\n{}{}",
            args.join(" "),
            run.code,
            run.stdout,
            run.stderr
        );
        Ok(run)
    }

    /// `update-agent run --once`: 0 nothing new, 2 staged, 3 refused by policy, 1 error.
    pub fn run_once(&self) -> Result<AgentRun> {
        self.agent(&["run", "--once"])
    }

    /// Starts `update-agent ARGS` in the background (output to this machine's log).
    pub fn spawn(&self, args: &[&str]) -> Result<Proc> {
        Proc::spawn(
            &format!("update-agent on {}", self.name),
            self.command(args),
            &self.log,
        )
    }

    /// Starts the agent daemon (`update-agent run`) on `bus` (its `DBUS_SYSTEM_BUS_ADDRESS`):
    /// it serves its D-Bus API there and reboots through the logind on that bus. Output goes to
    /// this machine's log; the daemon is killed when the [`Proc`] is dropped.
    pub fn spawn_daemon(&self, bus: &Bus) -> Result<Proc> {
        let mut cmd = self.command(&["run"]);
        cmd.env("DBUS_SYSTEM_BUS_ADDRESS", bus.address());
        let mut log = crate::process::open_log(&self.log)?;
        use std::io::Write as _;
        let _ = writeln!(log, "=== update-agent run (daemon on {})", bus.address());
        Proc::spawn(
            &format!("update-agent daemon on {}", self.name),
            cmd,
            &self.log,
        )
    }

    /// Runs `updatectl ARGS` against the agent on `bus`.
    pub fn updatectl(&self, bus: &Bus, args: &[&str]) -> Result<AgentRun> {
        let bin = self
            .updatectl_bin
            .as_ref()
            .ok_or_else(|| Error::BinaryMissing {
                name: "updatectl".into(),
                dir: self
                    .agent_bin
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_default(),
            })?;
        let out = Command::new(bin)
            .args(args)
            .env("DBUS_SYSTEM_BUS_ADDRESS", bus.address())
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(io("running updatectl", bin))?;
        Ok(AgentRun {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// The agent's D-Bus properties (`updatectl status --json`: `status`, `held_lock`,
    /// `reboot_wait`, `booted_slot`, …); an error while the daemon is not serving yet.
    pub fn dbus_status(&self, bus: &Bus) -> Result<Value> {
        let run = self.updatectl(bus, &["status", "--json"])?;
        if run.code != Some(0) {
            return Err(Error::Command {
                command: "updatectl status --json".into(),
                code: run.code,
                stdout: run.stdout,
                stderr: run.stderr,
            });
        }
        serde_json::from_str(&run.stdout).map_err(|e| Error::Unexpected {
            what: "updatectl status --json output",
            detail: format!("{e}: {}", run.stdout),
        })
    }

    /// The id this host uses with FleetLock servers (see [`fleetlock_id`]).
    pub fn fleetlock_id(&self) -> Result<String> {
        fleetlock_id(&self.machine_id)
    }

    /// `update-agent mark-good`.
    pub fn mark_good(&self) -> Result<AgentRun> {
        self.agent(&["mark-good"])
    }

    /// The agent's persisted state, through `update-agent state`.
    pub fn state(&self) -> Result<Value> {
        let run = self.agent(&["state"])?;
        if run.code != Some(0) {
            return Err(Error::Command {
                command: "update-agent state".into(),
                code: run.code,
                stdout: run.stdout,
                stderr: run.stderr,
            });
        }
        serde_json::from_str(&run.stdout).map_err(|e| Error::Unexpected {
            what: "update-agent state output",
            detail: format!("{e}: {}", run.stdout),
        })
    }

    /// The state file read directly (for polling while an agent runs; `Null` if absent).
    pub fn state_file(&self) -> Value {
        std::fs::read(self.root.join("var/lib/platte/state.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null)
    }

    /// gptprio fields of slot `partition`, read from the disk image (both GPT copies checked).
    pub fn slot(&self, partition: u32) -> Result<Prio> {
        let t = gpt::Table::read(&self.disk)?;
        Ok(Prio::decode(t.entry(partition)?.attributes))
    }

    /// The first `len` bytes of slot `partition`.
    pub fn slot_bytes(&self, partition: u32, len: usize) -> Result<Vec<u8>> {
        gpt::read_partition(&self.disk, partition, len)
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The machine's directory (host root, disk image, drop-ins, logs).
    pub fn home(&self) -> PathBuf {
        self.root
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }

    /// A file under the host root (e.g. `run/reboot-required`).
    pub fn host_file(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }
}

/// The app id whose app-specific machine id the agent sends to FleetLock servers.
pub const FLEETLOCK_APP_ID: &str = "a0c3f1d2e4b5468797a8b9cadbecfd0e";

/// The FleetLock client id of a host with `/etc/machine-id` = `machine_id`, computed from the
/// documented rule (docs/usage/agent.md, "FleetLock"), independently of the agent's code: systemd's
/// `sd_id128_get_machine_app_specific` — HMAC-SHA256 keyed with the 16 machine-id bytes over
/// the 16 app-id bytes, truncated to 16 bytes, marked as a UUID v4 — in 32 lowercase hex digits.
pub fn fleetlock_id(machine_id: &str) -> Result<String> {
    use hmac::{Hmac, Mac};
    let bytes = |s: &str| -> Result<Vec<u8>> {
        let s = s.trim();
        let bad = || Error::Unexpected {
            what: "machine or app id",
            detail: format!("{s:?} is not 32 hexadecimal digits"),
        };
        if s.len() != 32 {
            return Err(bad());
        }
        (0..16)
            .map(|i| {
                s.get(2 * i..2 * i + 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(bad)
            })
            .collect()
    };
    let key = bytes(machine_id)?;
    let mut mac =
        <Hmac<sha2::Sha256> as Mac>::new_from_slice(&key).map_err(|e| Error::Unexpected {
            what: "HMAC key",
            detail: e.to_string(),
        })?;
    mac.update(&bytes(FLEETLOCK_APP_ID)?);
    let digest = mac.finalize().into_bytes();
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    Ok(id.iter().map(|b| format!("{b:02x}")).collect())
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(io("writing a host file", path))
}
