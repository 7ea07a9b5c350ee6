//! `cargo run --release -p platte-e2e --bin quickstart`: the whole update loop on one machine,
//! without root, in about a minute. It builds the binaries, starts an update server with the
//! embedded store, publishes a signed demo OS image, lets an agent install it into slot B of a
//! disk image file, simulates the reboot, marks the new slot good and shows the server's view,
//! printing the command an operator would type for each step.

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use platte_e2e::bins::Binaries;
use platte_e2e::machine::{APP, DiskLayout, USR_A, USR_B};
use platte_e2e::world::World;
use testkit::tcp_proxy::Proxy;

/// Size of the demo OS image.
const IMAGE_LEN: usize = 48 << 20;
/// Download speed the demo allows itself (loopback is too fast to watch otherwise).
const DEMO_RATE: u64 = 24 << 20;

fn main() -> Result<()> {
    let started = Instant::now();
    step("Building the binaries (update-server, update-agent, payload)");
    let bins = Binaries::get().context("building or finding the workspace binaries")?;
    say(&format!("using {}", bins.dir.display()));

    let dir = std::env::temp_dir().join("platte-quickstart");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let d = dir.display();

    step("1. A release key pair (the private key stays offline) and an update server");
    cmd(&format!("payload keygen --out {d}/release-keys/release"));
    cmd(&format!(
        "cp {d}/release-keys/release.pub {d}/server-trusted-keys/   # the server trusts this publisher"
    ));
    // Downloads go through a local throttle so the progress can be watched.
    let proxy = Proxy::start("127.0.0.1:9").context("starting the demo throttle")?;
    let public = format!("http://{}", proxy.addr());
    cmd(&format!(
        "update-server serve --data-dir {d}/server-data --trusted-keys {d}/server-trusted-keys --listen 127.0.0.1:0 --public-url {public}"
    ));
    let mut w = World::in_dir(bins, dir.clone(), None, &["--public-url", &public])
        .context("starting the update server")?;
    proxy.set_upstream(w.server.addr());
    w.route_agents_via(&public);
    say(&format!(
        "listening on {} (agents and downloads go through {public}, limited to {} MiB/s for the demo)",
        w.server.url(),
        DEMO_RATE >> 20
    ));
    say(&format!(
        "admin token generated into {d}/server-data/admin-token"
    ));
    cmd(&format!(
        "export UPDATE_SERVER_URL={} UPDATE_SERVER_TOKEN=$(cat {d}/server-data/admin-token)",
        w.server.url()
    ));
    w.server.echo = true;

    step("2. An app, a channel and a group (admin CLI)");
    w.setup_app().context("creating app, channel and group")?;

    step("3. A host: a GPT disk image with USR-A (running 1.0.0) and an empty USR-B");
    let mut m = w
        .machine(
            "demo-host",
            7,
            DiskLayout {
                slot_a: 64 << 20,
                slot_b: 64 << 20,
            },
            "1.0.0",
        )
        .context("creating the demo host")?;
    say(&format!(
        "disk {} (sparse), host root {}, agent config {}",
        m.disk.display(),
        m.root.display(),
        m.conf.display()
    ));
    say("on this simulated host every update-agent command runs with --config-dir and --host-root");
    show_agent(&m, &["status-slots"])?;

    step("4. Build, sign and publish the 2.0.0 OS image, then point `stable` at it");
    cmd(&format!(
        "payload build --key {d}/release-keys/release.key --app {APP} --version 2.0.0 --arch amd64 --image usr-2.0.0.img --out platte-2.0.0.payload"
    ));
    let v2 = w.publish("2.0.0", IMAGE_LEN).context("publishing 2.0.0")?;
    say(&format!(
        "payload {} ({:.1} MiB, image {} MiB)",
        v2.payload.display(),
        file_mib(&v2.payload),
        IMAGE_LEN >> 20
    ));
    w.point_stable(&v2).context("pointing the channel")?;

    step("5. The agent checks, downloads into USR-B, verifies, stages");
    cmd("update-agent run --once");
    proxy.set_rate(DEMO_RATE);
    let code = watch_install(&m)?;
    proxy.set_rate(0);
    match code {
        Some(2) => say("exit 2: update staged in the inactive slot; reboot to activate it"),
        other => bail!(
            "update-agent run --once exited {other:?}; see {}",
            m.log.display()
        ),
    }
    let sentinel = m.host_file("run/reboot-required");
    match std::fs::read_to_string(&sentinel) {
        Ok(text) => say(&format!(
            "reboot requested: /run/reboot-required says `{}`",
            text.trim()
        )),
        Err(_) => say(
            "reboot requested (strategy `off`: an operator, kured or `updatectl reboot` reboots)",
        ),
    }
    show_agent(&m, &["status-slots"])?;
    w.server
        .wait_status(APP, &m.machine_id, "installed")
        .context("waiting for the server to see the install")?;
    w.server.cli(&["instance", "list"])?;

    step("6. Reboot (simulated): GRUB's gptprio picks the highest-priority slot with tries left");
    let booted = m.boot().context("simulated reboot")?;
    say(&format!(
        "booted {} (partition {}), VERSION_ID={}; kernel command line: {}",
        booted.label,
        booted.partition,
        booted.version,
        std::fs::read_to_string(m.host_file("proc/cmdline"))
            .unwrap_or_default()
            .trim()
    ));
    if booted.partition != USR_B {
        bail!("the boot loader chose {} instead of USR-B", booted.label);
    }

    step("7. Health gate: mark the new slot good (systemd runs this before boot-complete.target)");
    show_agent(&m, &["mark-good"])?;
    show_agent(&m, &["status-slots"])?;

    step("8. The next check reports the successful update (event 3/2, previous version 1.0.0)");
    show_agent(&m, &["run", "--once"])?;
    w.server
        .wait_status(APP, &m.machine_id, "complete")
        .context("waiting for the server to see the update complete")?;

    step("9. The server's view");
    w.server.cli(&["instance", "list"])?;
    w.server.cli(&["rollout", "status", APP, "stable"])?;
    let a = m.slot(USR_A)?;
    let b = m.slot(USR_B)?;
    say(&format!(
        "slot A: priority {} successful {}; slot B: priority {} successful {} (the new release stays)",
        a.priority, a.successful, b.priority, b.successful
    ));
    w.server.stop().context("stopping the server")?;
    step(&format!(
        "Done in {:.1} s. Everything is under {d} (server log, agent log, disk image).",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Runs `update-agent run --once` in the background, printing its log lines and the download
/// progress (from the checkpoint in its state file) until it exits.
fn watch_install(m: &platte_e2e::Machine) -> Result<Option<i32>> {
    let from = std::fs::metadata(&m.log).map(|x| x.len()).unwrap_or(0);
    let mut p = m.spawn(&["run", "--once"])?;
    let mut printed = from;
    let mut last_pct = None;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        printed = print_new_log(&m.log, printed);
        let st = m.state_file();
        let cp = &st["checkpoint"];
        if let (Some(off), Some(size)) = (
            cp["applier"]["payload_offset"].as_u64(),
            cp["payload_size"].as_u64(),
        ) && size > 0
        {
            let pct = off * 100 / size;
            if last_pct.is_none_or(|l| pct >= l + 10) {
                say(&format!(
                    "  downloading: {:5.1} / {:.1} MiB ({pct:3}%)",
                    off as f64 / 1048576.0,
                    size as f64 / 1048576.0
                ));
                last_pct = Some(pct);
            }
        }
        if let Some(status) = p.try_status()? {
            print_new_log(&m.log, printed);
            return Ok(status.code());
        }
        if Instant::now() > deadline {
            p.kill()?;
            bail!(
                "the agent did not finish in 5 minutes; see {}",
                m.log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Prints log lines after byte `from` (without timestamps); returns the new end.
fn print_new_log(log: &Path, from: u64) -> u64 {
    let Ok(bytes) = std::fs::read(log) else {
        return from;
    };
    let Some(new) = bytes.get(from as usize..) else {
        return from;
    };
    let text = String::from_utf8_lossy(new);
    let complete = text.rfind('\n').map_or(0, |i| i + 1);
    for line in text[..complete].lines() {
        say(&format!("  agent: {}", strip_timestamp(line)));
    }
    from + complete as u64
}

fn strip_timestamp(line: &str) -> &str {
    // tracing's format: `2026-01-01T00:00:00.000000Z  INFO target: message`
    match line.split_once('Z') {
        Some((ts, rest)) if ts.len() >= 19 && ts.as_bytes().get(4) == Some(&b'-') => rest.trim(),
        _ => line,
    }
}

/// Runs an agent command, printing it and its output.
fn show_agent(m: &platte_e2e::Machine, args: &[&str]) -> Result<()> {
    cmd(&format!("update-agent {}", args.join(" ")));
    let r = m.agent(args)?;
    for l in r.stdout.lines() {
        say(&format!("  {l}"));
    }
    for l in r.stderr.lines() {
        say(&format!("  agent: {}", strip_timestamp(l)));
    }
    if r.code != Some(0) {
        bail!("update-agent {} exited {:?}", args.join(" "), r.code);
    }
    Ok(())
}

fn file_mib(p: &Path) -> f64 {
    std::fs::metadata(p).map_or(0.0, |m| m.len() as f64 / 1048576.0)
}

fn step(s: &str) {
    println!("\n== {s}");
}

fn cmd(s: &str) {
    println!("    $ {s}");
}

fn say(s: &str) {
    println!("    {s}");
    let _ = std::io::stdout().flush();
}
