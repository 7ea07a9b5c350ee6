//! End-to-end: the agent binary signs its Omaha requests with its machine key, and a real update
//! server (in-process, over loopback) whose group requires a machine credential accepts them:
//! bound on first use, or enrolled by the operator from `update-agent machine-key`. With
//! `updates.machine_credential = false` the agent sends unsigned requests, which such a group
//! ignores.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::os::unix::fs::PermissionsExt as _;
use std::process::{Command, Stdio};

use serde_json::json;
use support::{APP, MACHINE, World, event_triples, image, without_proxy_env};

/// Makes group `stable` require a machine credential.
fn require_credential(w: &World) {
    let (st, v) = w.api(
        reqwest::Method::PATCH,
        &format!("/apps/{APP}/groups/stable"),
        Some(json!({"policy": {"machine_credential": "required"}})),
    );
    assert_eq!(st, 200, "{v}");
}

/// `update-agent machine-key`: the public key it prints.
fn machine_key(w: &World) -> String {
    let mut c = Command::new(env!("CARGO_BIN_EXE_update-agent"));
    c.arg("--config-dir")
        .arg(&w.conf)
        .arg("--host-root")
        .arg(&w.root)
        .arg("machine-key")
        .stdin(Stdio::null());
    without_proxy_env(&mut c);
    let out = c.output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn credential(w: &World) -> (u16, serde_json::Value) {
    w.api(
        reqwest::Method::GET,
        &format!("/instances/{MACHINE}/credential"),
        None,
    )
}

#[test]
fn the_agent_signs_and_a_group_requiring_credentials_serves_it() {
    let w = World::new("1.0.0");
    w.seed("2.0.0", &image(2));
    require_credential(&w);

    assert_eq!(w.once(), 2, "agent log:\n{}", w.agent_log());
    // The key was created at the first run, private to its owner, and bound on first use.
    let key_file = w.state_dir.join("machine-key");
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let (st, cred) = credential(&w);
    assert_eq!(st, 200, "{cred}");
    assert_eq!(cred["source"], "first_use");
    assert_eq!(cred["public_key"], machine_key(&w));
    // Its signed progress events were recorded (an unsigned one would be ignored).
    let ev = w.wait_events("13/1, 14/1, 3/1", |e| e.len() >= 3);
    assert_eq!(
        event_triples(&ev),
        [(13, 1, None), (14, 1, None), (3, 1, None)],
        "{ev:?}"
    );
}

#[test]
fn an_enrolled_key_is_accepted_when_first_use_is_off() {
    let w = World::with_server("1.0.0", |s, _| {
        s.machine_credentials.trust_on_first_use = false;
    });
    w.seed("2.0.0", &image(2));
    require_credential(&w);

    // Not enrolled yet: the signed check is not authenticated, so no update.
    assert_eq!(w.once(), 0, "agent log:\n{}", w.agent_log());
    assert_eq!(credential(&w).0, 404);

    let public_key = machine_key(&w);
    let (st, v) = w.api(
        reqwest::Method::PUT,
        &format!("/instances/{MACHINE}/credential"),
        Some(json!({ "public_key": public_key })),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(w.once(), 2, "agent log:\n{}", w.agent_log());
}

#[test]
fn an_agent_with_the_credential_off_sends_unsigned_requests() {
    let w = World::new("1.0.0");
    w.seed("2.0.0", &image(2));
    require_credential(&w);
    w.write_config(
        "50-no-credential.toml",
        "[updates]\nmachine_credential = false\n",
    );

    assert_eq!(w.once(), 0, "agent log:\n{}", w.agent_log());
    assert!(!w.state_dir.join("machine-key").exists());
    assert_eq!(credential(&w).0, 404);
}
