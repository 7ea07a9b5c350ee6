//! S6: faults. The server is killed in the middle of a download and restarted on the same data
//! directory: the agent resumes from its checkpoint with a Range request. A payload replaced by
//! a tampered file on the server is refused and nothing is activated. The agent is killed with
//! `SIGKILL` at each of its writes to the GPT (the target slot marked unbootable, then made the
//! next boot): the disk always keeps a valid GPT copy and a bootable slot holding a whole release,
//! and the restarted agent repairs the copies where the kill left them disagreeing and finishes
//! the install.
//!
//! Every scenario runs against one server and against two replicas on PostgreSQL. With replicas
//! the kill takes down the replica serving the download (the one the forwarder sent the agent's
//! connection to): the agent resumes from the other replica while it is down (the package files
//! are in the shared data directory), then the killed replica is restarted. The tampered file is
//! the one both replicas serve.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use platte_e2e::bootloader::{self, Prio};
use platte_e2e::gpt::{self, Copies, Entry, Table};
use platte_e2e::inject::{self, Write};
use platte_e2e::process::poll_until;
use platte_e2e::{APP, DiskLayout, Machine, Mode, Release, USR_A, USR_B, World, release};
use testkit::tcp_proxy::Proxy;

platte_e2e::in_both_modes!(
    server_killed_during_download_agent_resumes,
    tampered_payload_on_the_server_is_refused,
    agent_killed_at_each_gpt_write_leaves_a_valid_copy_and_a_bootable_slot,
    agent_restarted_after_a_kill_at_any_gpt_write_finishes_the_install,
);

/// The start offsets of the `Range` requests for package files among `requests` (proxy request
/// lines).
fn range_starts(requests: &[String]) -> Vec<u64> {
    requests
        .iter()
        .filter(|r| r.starts_with("GET /packages/"))
        .filter_map(|r| r.split("bytes=").nth(1)?.split('-').next()?.parse().ok())
        .collect()
}

fn server_killed_during_download_agent_resumes(mode: Mode) {
    // Agents and download URLs go through a proxy that can slow the download down, so the
    // server can be killed while it is running (with replicas: in front of their forwarder).
    let proxy = Proxy::start("127.0.0.1:9").unwrap();
    let public = format!("http://{}", proxy.addr());
    let mut w = World::start_with(mode, &["--public-url", &public]).unwrap();
    proxy.set_upstream(&w.upstream());
    w.route_agents_via(&public);
    w.setup_app().unwrap();
    let m = w
        .machine("host-1", 61, DiskLayout::default(), "1.0.0")
        .unwrap();
    m.write_dropin("50-retries.toml", "[install]\nattempts_per_url = 6\n")
        .unwrap();
    let v2 = w.publish("2.0.0", 3 << 20).unwrap();
    w.point_stable(&v2).unwrap();

    proxy.set_rate(512 << 10);
    let mut agent = m.spawn(&["run", "--once"]).unwrap();
    // Wait until a checkpoint with data behind it is persisted, then kill the server (with
    // replicas: the one serving the download, which the forwarder sent the agent's newest
    // connection to; the other one stays up).
    let offset = poll_until(
        "a download checkpoint",
        Duration::from_secs(30),
        || {
            let off = m.state_file()["checkpoint"]["applier"]["payload_offset"].as_u64()?;
            (off > 256 << 10).then_some(off)
        },
        || format!("state: {}\nagent log:\n{}", m.state_file(), m.log()),
    )
    .unwrap();
    let victim = w.last_agent_server();
    let seen_before_kill = proxy.requests().len();
    let routed_before_kill = w.agent_connections();
    w.server_mut(victim).kill().unwrap();
    proxy.cut();
    assert!(
        agent.try_status().unwrap().is_none(),
        "the agent gave up at once"
    );
    if w.mode() == Mode::Replicas {
        // The agent's next connection goes to the other replica, which serves the rest of the
        // package from the shared data directory while the killed one is still down.
        poll_until(
            "the download to resume from the surviving replica",
            Duration::from_secs(30),
            || {
                range_starts(&proxy.requests()[seen_before_kill..])
                    .into_iter()
                    .any(|from| from >= offset)
                    .then_some(())
            },
            || format!("requests: {:?}\nagent log:\n{}", proxy.requests(), m.log()),
        )
        .unwrap();
        let routed = w.agent_connections();
        assert!(
            (0..routed.len()).any(|i| i != victim && routed[i] > routed_before_kill[i]),
            "no connection since the kill went to a surviving replica: {routed_before_kill:?} \
             then {routed:?} (replica {victim} killed)"
        );
    }
    w.server_mut(victim).restart().unwrap();
    proxy.set_rate(0);

    let st = agent.wait(Duration::from_secs(60)).unwrap();
    assert_eq!(st.code(), Some(2), "agent log:\n{}", m.log());
    assert_eq!(m.slot_bytes(USR_B, v2.image.len()).unwrap(), v2.image);
    // The download continued from the checkpoint (at or after the offset seen before the kill).
    let ranged = range_starts(&proxy.requests());
    assert!(
        ranged.iter().any(|&from| from >= offset),
        "no resumed Range request from >= {offset}: {:?}",
        proxy.requests()
    );
    assert!(m.log().contains("resumed=true"), "{}", m.log());
    // The restarted server got the install events.
    w.server
        .wait_status(APP, &m.machine_id, "installed")
        .unwrap();
}

fn tampered_payload_on_the_server_is_refused(mode: Mode) {
    let w = World::start(mode).unwrap();
    w.setup_app().unwrap();
    let mut m = w
        .machine("host-2", 62, DiskLayout::default(), "1.0.0")
        .unwrap();
    let v2 = w.publish("2.0.0", 3 << 20).unwrap();
    w.point_stable(&v2).unwrap();

    // Someone with access to the server's disk flips one byte of the payload's data.
    let file = w.server.package_file(&v2.sha256);
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes.len() - 1000;
    bytes[at] ^= 0x55;
    std::fs::write(&file, &bytes).unwrap();

    let r = m.run_once().unwrap();
    assert_eq!(
        r.code,
        Some(1),
        "a tampered payload was accepted:\n{}",
        r.stderr
    );
    let st = m.state().unwrap();
    let code = st["last_error"]["code"].as_i64().unwrap();
    // Operation hash mismatch (29) or whole-payload hash mismatch (10), never activated.
    assert!([10, 29].contains(&code), "{st}");
    assert_ne!(st["phase"], "staged", "{st}");
    assert!(!m.slot(USR_B).unwrap().bootable(), "slot B was activated");
    let a = m.slot(USR_A).unwrap();
    assert!(a.successful && a.priority == 1, "slot A: {a:?}");
    w.server
        .wait_instance(APP, &m.machine_id, "in error", |i| i["status"] == "error")
        .unwrap();
    // The next boot is still the old release.
    let booted = m.boot().unwrap();
    assert_eq!(
        (booted.label.as_str(), booted.version.as_str()),
        ("USR-A", "1.0.0")
    );
}

fn prio(priority: u8, tries: u8, successful: bool) -> Prio {
    Prio {
        priority,
        tries,
        successful,
    }
}

/// The gptprio fields of slots A and B in `entries`.
fn slots(entries: &[Entry]) -> (Prio, Prio) {
    let of = |n: u32| {
        entries
            .iter()
            .find(|e| e.number == n)
            .map(|e| Prio::decode(e.attributes))
            .unwrap_or_else(|| panic!("no partition {n} in {entries:?}"))
    };
    (of(USR_A), of(USR_B))
}

/// A host that has updated once before: slot A runs 1.0.0 (priority 2, successful) and slot B
/// still holds the release before it, 0.9.0 (priority 1, successful). Installing into B changes
/// the table twice: B marked unbootable, then B made the next boot.
fn host_after_an_earlier_update(w: &World, name: &str, seed: u64) -> Machine {
    let mut m = w
        .machine(name, seed, DiskLayout::default(), "1.0.0")
        .unwrap();
    gpt::write_partition(&m.disk, USR_B, &release::os_image("0.9.0", 1 << 20)).unwrap();
    gpt::set_attributes(&m.disk, USR_A, prio(2, 0, true).encode(0)).unwrap();
    gpt::set_attributes(&m.disk, USR_B, prio(1, 0, true).encode(0)).unwrap();
    assert_eq!(m.boot().unwrap().label, "USR-A");
    m
}

/// Where a kill lands: the `k`th write to the GPT of an install, as the reference run made it.
struct KillPoint {
    /// Ordinal among the install's GPT writes (0-based).
    k: usize,
    /// strace's `when=` for it.
    when: u32,
    /// The write itself (offset, length) in the reference run.
    write: Write,
}

/// The GPT-kill scenario's world: 2.0.0 published, the slot states an install passes through,
/// and every write to the GPT an install makes (from a traced, uninterrupted reference run).
struct GptKills {
    w: World,
    v2: Release,
    /// (A, B) before, after B is marked unbootable, after B is made the next boot.
    states: [(Prio, Prio); 3],
    points: Vec<KillPoint>,
}

fn is_gpt_write(disk_len: u64, w: &Write) -> bool {
    gpt::metadata_ranges(disk_len)
        .iter()
        .any(|&(start, end)| w.offset >= start && w.offset + w.len <= end)
}

fn gpt_kills(mode: Mode) -> GptKills {
    let w = World::start(mode).unwrap();
    w.setup_app().unwrap();
    // 1 MiB: four payload chunks, so the thread that writes them makes fewer writes than the
    // GPT writer has made before the second table change (strace counts writes per thread).
    let v2 = w.publish("2.0.0", 1 << 20).unwrap();
    w.point_stable(&v2).unwrap();

    let reference = host_after_an_earlier_update(&w, "reference", 90);
    let before = slots(&Table::read(&reference.disk).unwrap().entries);
    let run = inject::run(
        &reference.command(&["run", "--once"]),
        &reference.disk,
        None,
        &w.path().join("reference.trace"),
    )
    .unwrap();
    assert_eq!(run.code, Some(2), "reference install:\n{}", run.stderr);
    let after = slots(&Table::read(&reference.disk).unwrap().entries);
    assert_eq!(after, (before.0, prio(3, 1, false)), "reference install");
    let len = std::fs::metadata(&reference.disk).unwrap().len();
    let points: Vec<KillPoint> = run
        .writes
        .iter()
        .enumerate()
        .filter(|(_, wr)| is_gpt_write(len, wr))
        .enumerate()
        .map(|(k, (index, wr))| KillPoint {
            k,
            when: inject::kill_point(&run.writes, index).unwrap(),
            write: wr.clone(),
        })
        .collect();
    // Two table changes, each written to both copies (entry array, then header).
    assert!(
        points.len() >= 8,
        "expected at least 8 GPT writes, traced: {:?}",
        run.writes
    );
    GptKills {
        w,
        v2,
        states: [before, (before.0, prio(0, 0, false)), after],
        points,
    }
}

/// Runs `update-agent run --once` on a fresh host, killed on entering GPT write `p`; checks
/// that it died exactly there. Returns the host and a description for messages.
fn kill_at(g: &GptKills, p: &KillPoint, seed: u64) -> (Machine, String) {
    let m = host_after_an_earlier_update(&g.w, &format!("kill-{}", p.k), seed);
    let what = format!(
        "agent killed on entering GPT write {} ({} bytes at offset {})",
        p.k, p.write.len, p.write.offset
    );
    let t = inject::run(
        &m.command(&["run", "--once"]),
        &m.disk,
        Some(p.when),
        &g.w.path().join(format!("kill-{}.trace", p.k)),
    )
    .unwrap();
    let at = t.killed_at().unwrap_or_else(|| {
        panic!(
            "{what}: it was not killed (exit {:?}):\n{}",
            t.code, t.stderr
        )
    });
    assert_eq!(
        (at.offset, at.len),
        (p.write.offset, p.write.len),
        "{what}: it died at another write; trace: {:?}",
        t.writes
    );
    let len = std::fs::metadata(&m.disk).unwrap().len();
    let gpt_done = t
        .writes
        .iter()
        .filter(|wr| wr.done && is_gpt_write(len, wr))
        .count();
    assert_eq!(
        gpt_done, p.k,
        "{what}: GPT writes completed before the kill"
    );
    (m, what)
}

fn agent_killed_at_each_gpt_write_leaves_a_valid_copy_and_a_bootable_slot(mode: Mode) {
    if !inject::available() {
        return;
    }
    let g = gpt_kills(mode);
    let v1 = release::os_image("1.0.0", 1 << 20);
    let mut torn = Vec::new();
    for p in &g.points {
        let (m, what) = kill_at(&g, p, 100 + p.k as u64);
        let copies = Copies::read(&m.disk).unwrap();
        assert!(
            copies.primary.is_ok() || copies.backup.is_ok(),
            "{what}: no valid GPT copy left: {copies:?}"
        );
        // A valid copy holds the table as it was before or after one of the agent's changes,
        // never a mixture.
        for entries in [&copies.primary, &copies.backup].into_iter().flatten() {
            let s = slots(entries);
            assert!(
                g.states.contains(&s),
                "{what}: a valid copy holds {s:?}, not one of {:?}",
                g.states
            );
        }
        // The boot loader (primary copy if valid, else the backup) finds a slot holding a whole
        // release: A with 1.0.0, or B with all of 2.0.0.
        let view = copies.boot_view().unwrap();
        let chosen = bootloader::choose(view)
            .unwrap()
            .unwrap_or_else(|| panic!("{what}: nothing bootable in {view:?}"));
        let (version, image) = if chosen.number == USR_A {
            ("1.0.0", &v1)
        } else {
            ("2.0.0", &g.v2.image)
        };
        let got = gpt::read_entry(&m.disk, &chosen, image.len()).unwrap();
        assert!(
            got == *image,
            "{what}: the boot loader picks {} ({:?}), which does not hold all of {version}",
            chosen.name,
            release::image_version(&got)
        );
        if copies.consistent() {
            // Between two table changes: both copies agree, for sgdisk too, and a restarted
            // agent finishes the install.
            if let Some(out) = gpt::sgdisk_verify(&m.disk).unwrap() {
                assert!(
                    out.contains("No problems found"),
                    "{what}: sgdisk -v: {out}"
                );
            }
            let r = m.run_once().unwrap();
            assert_eq!(r.code, Some(2), "{what}: restarted agent:\n{}", r.stderr);
            let t = Table::read(&m.disk).unwrap();
            assert_eq!(slots(&t.entries), g.states[2], "{what}: after the restart");
            assert_eq!(m.slot_bytes(USR_B, g.v2.image.len()).unwrap(), g.v2.image);
        } else {
            torn.push(p.k);
        }
    }
    // The kills do land inside the table changes (one copy written, the other not yet).
    assert!(
        !torn.is_empty(),
        "no kill point left the copies disagreeing; are the writes traced?"
    );
    eprintln!(
        "{} GPT writes, {} kill points left the two copies disagreeing: {torn:?}",
        g.points.len(),
        torn.len()
    );
}

/// Whatever write the kill interrupted, the restarted agent first rewrites the copy a boot loader
/// does not use from the one it does (a warning names it), then finishes the install: both copies
/// valid and equal, B the next boot with 2.0.0.
fn agent_restarted_after_a_kill_at_any_gpt_write_finishes_the_install(mode: Mode) {
    if !inject::available() {
        return;
    }
    let g = gpt_kills(mode);
    let mut failed = Vec::new();
    for p in &g.points {
        let (mut m, what) = kill_at(&g, p, 200 + p.k as u64);
        let torn = !Copies::read(&m.disk).unwrap().consistent();
        let r = m.run_once().unwrap();
        let sgdisk = gpt::sgdisk_verify(&m.disk).unwrap();
        let table = Table::read(&m.disk);
        // A repair is logged exactly when the kill left the copies disagreeing.
        let repaired = r.stderr.contains("GPT copies did not agree");
        let ok = r.code == Some(2)
            && repaired == torn
            && sgdisk
                .as_deref()
                .is_none_or(|o| o.contains("No problems found"))
            && table
                .as_ref()
                .is_ok_and(|t| slots(&t.entries) == g.states[2]);
        if !ok {
            failed.push(format!(
                "{what}: restart exited {:?}, copies torn {torn}, repair logged {repaired}, \
                 table {:?}\n{}",
                r.code,
                table.map(|t| slots(&t.entries)),
                r.stderr
                    .lines()
                    .filter(|l| l.contains("ERROR") || l.contains("WARN"))
                    .collect::<Vec<_>>()
                    .join("\n")
            ));
            continue;
        }
        let booted = m.boot().unwrap();
        assert_eq!(
            (booted.label.as_str(), booted.version.as_str()),
            ("USR-B", "2.0.0")
        );
    }
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
}
