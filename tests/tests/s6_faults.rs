//! S6: faults. The server is killed in the middle of a download and restarted on the same data
//! directory: the agent resumes from its checkpoint with a Range request. A payload replaced by
//! a tampered file on the server is refused and nothing is activated.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use platte_e2e::process::poll_until;
use platte_e2e::proxy::Proxy;
use platte_e2e::{APP, DiskLayout, USR_A, USR_B, World};

#[test]
fn server_killed_during_download_agent_resumes() {
    // Agents and download URLs go through a proxy that can slow the download down, so the
    // server can be killed while it is running.
    let proxy = Proxy::start("127.0.0.1:9").unwrap();
    let public = format!("http://{}", proxy.addr());
    let mut w = World::with_server_args(&["--public-url", &public]).unwrap();
    proxy.set_upstream(w.server.addr());
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
    // Wait until a checkpoint with data behind it is persisted, then kill the server.
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
    w.server.kill().unwrap();
    proxy.cut();
    assert!(
        agent.try_status().unwrap().is_none(),
        "the agent gave up at once"
    );
    w.server.restart().unwrap();
    proxy.set_rate(0);

    let st = agent.wait(Duration::from_secs(60)).unwrap();
    assert_eq!(st.code(), Some(2), "agent log:\n{}", m.log());
    assert_eq!(m.slot_bytes(USR_B, v2.image.len()).unwrap(), v2.image);
    // The download continued from the checkpoint (at or after the offset seen before the kill).
    let ranged: Vec<u64> = proxy
        .requests()
        .iter()
        .filter(|r| r.starts_with("GET /packages/"))
        .filter_map(|r| r.split("bytes=").nth(1)?.split('-').next()?.parse().ok())
        .collect();
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

#[test]
fn tampered_payload_on_the_server_is_refused() {
    let w = World::new().unwrap();
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
