//! End-to-end: the agent binary against a real update server over loopback, writing a GPT disk
//! image file: full update, resume after `kill -9`, 500s and dropped connections, starting over
//! after repeated failures on one checkpoint, falling over to the next download URL, rejected
//! payloads, downgrade policy, rollback reporting, a newer release superseding a staged one,
//! `/run/reboot-required` kept in step by `run --once`, and the server's `PollInterval` setting
//! the daemon's next check.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use support::{IMAGE_LEN, MACHINE, World, event_triples, image};
use testkit::sgdisk::{assert_verified, attrs, gptprio};

/// Non-production-server flag update_engine (and the Platte agent) ORs into error codes.
const FLAG: i64 = 1 << 28;

fn a_attrs() -> u64 {
    gptprio(1, 0, true)
}

/// Payload offset where the signed prefix ends (first data byte).
fn prefix_len(payload: &[u8]) -> u64 {
    payloads::read_prefix(&mut std::io::Cursor::new(payload))
        .unwrap()
        .1
        .len() as u64
}

#[test]
fn full_update_into_slot_b_then_reboot_report() {
    let w = World::new("1.0.0");
    let img2 = image(2);
    let payload = w.seed("2.0.0", &img2);
    let slot_a_before = w.read_part(1, IMAGE_LEN);

    assert_eq!(w.once(), 2, "agent log:\n{}", w.agent_log());
    assert_eq!(w.read_part(2, IMAGE_LEN), img2, "slot B holds the image");
    assert_eq!(w.read_part(1, IMAGE_LEN), slot_a_before, "slot A untouched");
    assert_eq!(attrs(&w.img, 2), gptprio(2, 1, false));
    assert_eq!(attrs(&w.img, 1), a_attrs());
    assert_verified(&w.img);
    let st = w.state();
    assert_eq!(st["phase"], "staged");
    assert_eq!(st["staged"]["version"], "2.0.0");
    assert_eq!(st["staged"]["slot"], "B");
    assert!(st["checkpoint"].is_null());
    assert_eq!(
        w.proxy.with(|f| f.download_bytes),
        payload.len() as u64,
        "downloaded exactly once"
    );
    // The check's 3/2 with an empty previousversion is not a completion: not recorded.
    let ev = w.wait_events("13/1, 14/1, 3/1", |e| e.len() >= 3);
    let t = event_triples(&ev);
    assert_eq!(t, [(13, 1, None), (14, 1, None), (3, 1, None)], "{ev:?}");

    // Checking again while staged: no second download of the same version.
    assert_eq!(w.once(), 0, "agent log:\n{}", w.agent_log());
    assert_eq!(w.proxy.with(|f| f.download_bytes), payload.len() as u64);
    assert_eq!(w.state()["phase"], "staged");

    // Reboot into B running 2.0.0: the first check reports 3/2 with previousversion 1.0.0.
    w.reboot_into("boot-2", "B", "2.0.0");
    assert_eq!(w.once(), 0, "agent log:\n{}", w.agent_log());
    let last = w.proxy.with(|f| f.omaha_requests.last().cloned().unwrap());
    assert!(
        last.contains(r#"eventtype="3" eventresult="2" previousversion="1.0.0""#),
        "{last}"
    );
    let st = w.state();
    assert_eq!(st["phase"], "idle");
    assert!(st["pending_report"].is_null());
    let (_, inst) = w.api(reqwest::Method::GET, &format!("/instances/{MACHINE}"), None);
    assert_eq!(inst["apps"][0]["instance"]["status"], "complete", "{inst}");
    // And later checks send an empty previousversion.
    assert_eq!(w.once(), 0);
    let last = w.proxy.with(|f| f.omaha_requests.last().cloned().unwrap());
    assert!(last.contains(r#"previousversion="""#), "{last}");
}

#[test]
fn run_once_writes_reboot_required_while_an_update_is_staged() {
    let w = World::new("1.0.0");
    w.seed("1.0.0", &image(1));
    // Nothing staged: no sentinel; a stale one is removed.
    std::fs::create_dir_all(w.root.join("run")).unwrap();
    std::fs::write(w.root.join("run/reboot-required"), "stale\n").unwrap();
    assert_eq!(w.once(), 0, "agent log:\n{}", w.agent_log());
    assert_eq!(w.reboot_required(), None);

    // Staged: the sentinel names the version, as the daemon writes it, and stays while the
    // update stays staged.
    w.release("2.0.0", &image(2));
    assert_eq!(w.once(), 2, "agent log:\n{}", w.agent_log());
    assert_eq!(
        w.reboot_required().as_deref(),
        Some("*** System restart required to apply update 2.0.0 ***\n")
    );
    assert_eq!(w.once(), 0, "agent log:\n{}", w.agent_log());
    assert!(w.reboot_required().is_some_and(|t| t.contains("2.0.0")));
    assert!(!w.root.join("run/.reboot-required.tmp").exists());

    // Booted into it: nothing is staged any more, the sentinel goes.
    w.reboot_into("boot-2", "B", "2.0.0");
    assert_eq!(w.once(), 0, "agent log:\n{}", w.agent_log());
    assert_eq!(w.reboot_required(), None);

    // `reboot_required_path = ""` turns it off.
    w.write_config(
        "50-no-sentinel.toml",
        "[reboot]\nreboot_required_path = \"\"\n",
    );
    w.release("3.0.0", &image(3));
    assert_eq!(w.once(), 2, "agent log:\n{}", w.agent_log());
    assert_eq!(w.state()["staged"]["version"], "3.0.0");
    assert_eq!(w.reboot_required(), None);
}

#[test]
fn kill_9_mid_download_resumes_with_range() {
    let w = World::new("1.0.0");
    let img2 = image(2);
    let payload = w.seed("2.0.0", &img2);
    let prefix = prefix_len(&payload);
    let max_op = u64::from(support::CHUNK) + 4096;
    for cut in [(3 << 19) as u64, (4 << 20) as u64] {
        w.proxy.with(|f| {
            f.stall_at = Some(cut);
            f.stalled = false;
        });
        let mut child = w.spawn(true);
        // The agent persists a checkpoint while the download is stalled.
        let st = w.wait_state(Duration::from_secs(60), "a checkpoint near the cut", |s| {
            s["checkpoint"]["applier"]["payload_offset"]
                .as_u64()
                .is_some_and(|o| o + max_op > cut)
        });
        assert!(w.proxy.with(|f| f.stalled));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let offset = st["checkpoint"]["applier"]["payload_offset"]
            .as_u64()
            .unwrap();
        assert!(offset <= cut);
        assert_eq!(st["phase"], "installing");
        assert_eq!(
            attrs(&w.img, 2) >> 48 & 0xff,
            0,
            "target unbootable while writing"
        );
    }
    // Final run: no fault; the remaining bytes (plus the prefix) are fetched with Range.
    let state = w.state();
    let offset = state["checkpoint"]["applier"]["payload_offset"]
        .as_u64()
        .unwrap();
    let before = w.proxy.with(|f| {
        f.stall_at = None;
        f.ranges.clear();
        f.download_bytes
    });
    assert_eq!(w.once(), 2, "agent log:\n{}", w.agent_log());
    let fetched = w.proxy.with(|f| f.download_bytes) - before;
    assert_eq!(fetched, prefix + (payload.len() as u64 - offset));
    let ranges = w.proxy.with(|f| f.ranges.clone());
    assert_eq!(
        ranges,
        [
            Some(format!("bytes=0-{}", prefix - 1)),
            Some(format!("bytes={offset}-"))
        ]
    );
    // Overall at most one operation per interruption was downloaded twice.
    let total = w.proxy.with(|f| f.download_bytes);
    assert!(
        total <= payload.len() as u64 + 2 * (prefix + max_op),
        "total {total} for a {} byte payload",
        payload.len()
    );
    assert_eq!(w.read_part(2, IMAGE_LEN), img2);
    assert_eq!(attrs(&w.img, 2), gptprio(2, 1, false));
    assert_verified(&w.img);
}

/// SHA-256 of `data`.
fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}

/// `digest` in base64, as the postinstall action's `sha256` (and go-omaha's `hash_sha256`)
/// carry it.
fn base64_sha256(digest: &[u8; 32]) -> String {
    omaha::Action::postinstall(digest).sha256.unwrap()
}

/// The agent's log without ANSI colours.
fn plain(log: &str) -> String {
    let mut plain = String::with_capacity(log.len());
    let mut in_escape = false;
    for c in log.chars() {
        match c {
            '\x1b' => in_escape = true,
            'm' if in_escape => in_escape = false,
            _ if in_escape => {}
            _ => plain.push(c),
        }
    }
    plain
}

/// A failed install leaves the target unbootable and slot A untouched, and is reported.
fn assert_rejected(w: &World, code: i64, slot_a: &[u8]) {
    assert_eq!(
        attrs(&w.img, 2),
        gptprio(0, 0, false),
        "target left unbootable"
    );
    assert_eq!(attrs(&w.img, 1), a_attrs());
    assert_eq!(w.read_part(1, IMAGE_LEN), slot_a, "slot A untouched");
    assert_verified(&w.img);
    let st = w.state();
    assert_eq!(st["last_error"]["code"], code, "{st}");
    assert!(
        st["checkpoint"].is_null(),
        "a bad payload's checkpoint is dropped: {st}"
    );
    assert_ne!(st["phase"], "staged");
    let ev = w.wait_events("the 3/0 error event", |e| {
        event_triples(e).contains(&(3, 0, Some(FLAG | code)))
    });
    assert!(!event_triples(&ev).contains(&(3, 1, None)), "{ev:?}");
}

#[test]
fn tampered_payload_is_rejected() {
    let w = World::new("1.0.0");
    let payload = w.seed("2.0.0", &image(2));
    let slot_a = w.read_part(1, IMAGE_LEN);
    w.proxy
        .with(|f| f.tamper_at = Some(prefix_len(&payload) + 300_000));
    assert_eq!(w.once(), 1, "agent log:\n{}", w.agent_log());
    // update_engine's DownloadOperationHashMismatch.
    assert_rejected(&w, 29, &slot_a);
}

#[test]
fn payload_signed_by_an_unknown_key_is_rejected() {
    let w = World::new("1.0.0");
    w.seed("2.0.0", &image(2));
    let slot_a = w.read_part(1, IMAGE_LEN);
    // The agent trusts another key only.
    let other = payloads::keys::generate_signing_key();
    let keys = w.dir.path().join("agent-keys");
    std::fs::write(
        keys.join("release.pub"),
        payloads::keys::public_key_pem(&other.verifying_key()),
    )
    .unwrap();
    assert_eq!(w.once(), 1, "agent log:\n{}", w.agent_log());
    // DownloadPayloadPubKeyVerificationError; nothing but the prefix was downloaded.
    assert_rejected(&w, 18, &slot_a);
}

#[test]
fn size_or_hash_mismatch_with_the_response_is_rejected() {
    for (what, code) in [("size", 11), ("hash", 10)] {
        let w = World::new("1.0.0");
        let payload = w.seed("2.0.0", &image(2));
        let slot_a = w.read_part(1, IMAGE_LEN);
        let len = payload.len();
        let digest = sha256(&payload);
        let wrong = [0xAB; 32];
        w.proxy.with(|f| {
            f.rewrite_response = match what {
                "size" => vec![(format!("size=\"{len}\""), format!("size=\"{}\"", len - 1))],
                // Both places that carry the SHA-256 agree on the wrong digest: the offer is
                // usable, the download does not match it.
                _ => vec![
                    (
                        format!("hash_sha256=\"{}\"", hex::encode(digest)),
                        format!("hash_sha256=\"{}\"", hex::encode(wrong)),
                    ),
                    (
                        format!("sha256=\"{}\"", base64_sha256(&digest)),
                        format!("sha256=\"{}\"", base64_sha256(&wrong)),
                    ),
                ],
            }
        });
        assert_eq!(w.once(), 1, "{what}: agent log:\n{}", w.agent_log());
        assert_rejected(&w, code, &slot_a);
    }
}

#[test]
fn no_trusted_keys_means_no_update() {
    let w = World::new("1.0.0");
    w.seed("2.0.0", &image(2));
    std::fs::remove_file(w.dir.path().join("agent-keys/release.pub")).unwrap();
    let b_before = attrs(&w.img, 2);
    assert_eq!(w.once(), 1, "agent log:\n{}", w.agent_log());
    assert!(
        w.agent_log().contains("no trusted payload keys"),
        "{}",
        w.agent_log()
    );
    assert_eq!(attrs(&w.img, 2), b_before, "target slot not even touched");
    assert_eq!(w.proxy.with(|f| f.download_bytes), 0);
    assert_eq!(w.state()["last_error"]["code"], 3103);
}

#[test]
fn server_errors_and_dropped_connections_back_off_then_succeed() {
    let w = World::new("1.0.0");
    let img2 = image(2);
    let payload = w.seed("2.0.0", &img2);
    w.proxy.with(|f| {
        f.omaha_500s = 2;
        f.cut_at = Some(3 << 20);
    });
    let mut daemon = w.spawn(false);
    w.wait_state(Duration::from_secs(60), "the update staged", |s| {
        s["phase"] == "staged"
    });
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    // Checks: 500, 500, then OK; waits of ≥ 1 s then ≥ 2 s (backoff_base 1 s, doubled).
    let times = w.proxy.with(|f| f.omaha_times.clone());
    assert!(times.len() >= 3);
    let gap1 = times[1] - times[0];
    let gap2 = times[2] - times[1];
    assert!(gap1 >= Duration::from_millis(900), "{gap1:?}");
    assert!(gap2 >= Duration::from_millis(1900), "{gap2:?}");
    assert!(gap2 < Duration::from_secs(10), "{gap2:?}");
    // The cut download was resumed with Range, not restarted.
    let ranges = w.proxy.with(|f| f.ranges.clone());
    assert_eq!(ranges.len(), 3, "{ranges:?}");
    assert!(
        ranges[2]
            .as_deref()
            .is_some_and(|r| r != "bytes=0-" && r.ends_with('-')),
        "{ranges:?}"
    );
    assert!(w.proxy.with(|f| f.download_bytes) < payload.len() as u64 + (1 << 20));
    assert_eq!(w.read_part(2, IMAGE_LEN), img2);
    assert_eq!(attrs(&w.img, 2), gptprio(2, 1, false));
}

#[test]
fn downgrade_refused_unless_marked_and_allowed() {
    let w = World::new("3.0.0");
    w.seed("2.0.0", &image(2));
    // The server never offers a lower version; make it think the host runs 1.0.0.
    w.proxy.with(|f| {
        f.rewrite_request = vec![(r#"version="3.0.0""#.into(), r#"version="1.0.0""#.into())]
    });
    let b_before = attrs(&w.img, 2);
    assert_eq!(w.once(), 3, "agent log:\n{}", w.agent_log());
    assert!(w.agent_log().contains("refusing downgrade"));
    // Reported as deferred by policy (3/9, code 35), not as a failure.
    let ev = w.wait_events("the 3/9 event", |e| {
        event_triples(e).contains(&(3, 9, Some(FLAG | 35)))
    });
    assert!(
        !event_triples(&ev).iter().any(|(_, r, _)| *r == 0),
        "{ev:?}"
    );
    // Marked as a rollback, but allow_downgrade is off.
    w.proxy.with(|f| {
        f.rewrite_response = vec![(
            r#"<updatecheck status="ok""#.into(),
            r#"<updatecheck status="ok" _rollback="true""#.into(),
        )]
    });
    assert_eq!(w.once(), 3, "agent log:\n{}", w.agent_log());
    assert_eq!(attrs(&w.img, 2), b_before, "nothing touched");
    assert_eq!(w.proxy.with(|f| f.download_bytes), 0);
    assert_eq!(w.state()["last_error"]["code"], 35);
    // Marked and allowed: installed.
    w.write_config("70-downgrade.toml", "[updates]\nallow_downgrade = true\n");
    assert_eq!(w.once(), 2, "agent log:\n{}", w.agent_log());
    assert_eq!(w.read_part(2, IMAGE_LEN), image(2));
}

#[test]
fn rollback_is_detected_reported_and_deny_listed() {
    let w = World::new("1.0.0");
    w.seed("2.0.0", &image(2));
    assert_eq!(w.once(), 2, "agent log:\n{}", w.agent_log());
    // The boot loader fell back: new boot, still slot A running 1.0.0.
    w.reboot_into("boot-2", "A", "1.0.0");
    let downloaded = w.proxy.with(|f| f.download_bytes);
    // The rollback report reaches the server before the check, so the server no longer offers
    // 2.0.0 to this machine: no update (0), not a refusal by the deny list (3).
    assert_eq!(w.once(), 0, "agent log:\n{}", w.agent_log());
    let last = w.proxy.with(|f| f.omaha_responses.last().cloned().unwrap());
    assert!(last.contains(r#"status="noupdate""#), "{last}");
    let st = w.state();
    assert_eq!(st["deny_list"], serde_json::json!(["2.0.0"]));
    assert!(st["pending_report"].is_null(), "reported: {st}");
    // The server shows the rollback error (update_engine's code 44).
    w.wait_events("the rollback event", |e| {
        event_triples(e).contains(&(3, 0, Some(FLAG | 44)))
    });
    let (_, inst) = w.api(reqwest::Method::GET, &format!("/instances/{MACHINE}"), None);
    let history = inst["apps"][0]["history"].as_array().unwrap();
    assert!(
        history
            .iter()
            .any(|h| h["status"] == "error" && h["error_code"] == FLAG | 44),
        "{inst}"
    );
    // The offered 2.0.0 is not downloaded again.
    assert_eq!(w.proxy.with(|f| f.download_bytes), downloaded);
    assert_eq!(w.once(), 0);
    assert_eq!(w.proxy.with(|f| f.download_bytes), downloaded);
}

#[test]
fn newer_release_supersedes_a_staged_one() {
    let w = World::new("1.0.0");
    w.seed("2.0.0", &image(2));
    assert_eq!(w.once(), 2, "agent log:\n{}", w.agent_log());
    let img3 = image(3);
    w.release("2.1.0", &img3);
    let downloaded = w.proxy.with(|f| f.download_bytes);
    // The instance still runs 1.0.0 with 2.0.0 staged: the server offers the newer release.
    assert_eq!(w.once(), 2, "agent log:\n{}", w.agent_log());
    assert_eq!(w.read_part(2, IMAGE_LEN), img3);
    assert_eq!(attrs(&w.img, 2), gptprio(2, 1, false));
    assert_eq!(attrs(&w.img, 1), a_attrs());
    let st = w.state();
    assert_eq!(st["staged"]["version"], "2.1.0");
    assert_eq!(st["installed_before_reboot"]["version"], "2.1.0");
    assert_eq!(st["installed_before_reboot"]["from_version"], "1.0.0");
    assert_verified(&w.img);
    let payload3 = w.proxy.with(|f| f.download_bytes) - downloaded;
    assert!(
        payload3 > IMAGE_LEN as u64 / 2,
        "2.1.0 downloaded: {payload3}"
    );
    let (_, inst) = w.api(reqwest::Method::GET, &format!("/instances/{MACHINE}"), None);
    let i = &inst["apps"][0]["instance"];
    assert_eq!(i["status"], "installed", "{inst}");
    assert_eq!(i["granted_version"], "2.1.0", "{inst}");
    // Staged 2.1.0 is the channel's version: no third download.
    assert_eq!(w.once(), 0, "agent log:\n{}", w.agent_log());
    assert_eq!(w.proxy.with(|f| f.download_bytes), downloaded + payload3);
    let last = w.proxy.with(|f| f.omaha_responses.last().cloned().unwrap());
    assert!(last.contains(r#"status="noupdate""#), "{last}");
}

/// An agent killed after it made the staged update's slot unbootable for a newer release, but
/// before its first checkpoint, restarts with an unfinished install of the newer release: its
/// state never names a staged update whose slot no longer boots (a reboot would fall back and
/// report the staged version as rolled back).
#[test]
fn killed_after_the_target_is_claimed_the_agent_restarts_with_an_unfinished_install() {
    let w = World::new("1.0.0");
    w.seed("2.0.0", &image(2));
    assert_eq!(w.once(), 2, "agent log:\n{}", w.agent_log());
    assert_eq!(w.state()["phase"], "staged");
    let img3 = image(3);
    w.release("2.1.0", &img3);
    // The download of 2.1.0 stalls after its first bytes, long before a checkpoint.
    w.proxy.with(|f| {
        f.stall_at = Some(64);
        f.stalled = false;
    });
    let mut child = w.spawn(true);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !w.proxy.with(|f| f.stalled) {
        assert!(
            Instant::now() < deadline,
            "the download never stalled; agent log:\n{}",
            w.agent_log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(attrs(&w.img, 2) >> 48 & 0xff, 0, "target unbootable");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let st = w.state();
    assert_eq!(st["phase"], "installing", "{st}");
    assert_eq!(st["staged"]["version"], "2.1.0", "{st}");
    assert!(st["checkpoint"].is_null(), "{st}");
    assert!(st["installed_before_reboot"].is_null(), "{st}");
    // Restarted without the fault: 2.1.0 installs and is staged; nothing is deny-listed.
    w.proxy.with(|f| f.stall_at = None);
    assert_eq!(w.once(), 2, "agent log:\n{}", w.agent_log());
    let st = w.state();
    assert_eq!(st["phase"], "staged", "{st}");
    assert_eq!(st["staged"]["version"], "2.1.0", "{st}");
    assert_eq!(st["deny_list"], serde_json::json!([]), "{st}");
    assert_eq!(w.read_part(2, IMAGE_LEN), img3);
    assert_eq!(attrs(&w.img, 2), gptprio(2, 1, false));
}

#[test]
fn repeated_failures_on_one_checkpoint_start_the_download_over() {
    let w = World::new("1.0.0");
    let img2 = image(2);
    let payload = w.seed("2.0.0", &img2);
    let prefix = prefix_len(&payload);
    // Two attempts per install; a checkpoint on which two attempts failed is dropped.
    w.write_config(
        "70-retries.toml",
        "[install]\nattempts_per_url = 2\nstart_over_after = 2\n",
    );
    // The first download is cut at 3 MiB; every resumed (ranged) request then fails.
    let cut = 3u64 << 20;
    w.proxy.with(|f| {
        f.cut_at = Some(cut);
        f.refuse_ranges = true;
    });
    assert_eq!(w.once(), 1, "agent log:\n{}", w.agent_log());
    let st = w.state();
    let offset = st["checkpoint"]["applier"]["payload_offset"]
        .as_u64()
        .unwrap();
    assert!(offset > prefix && offset <= cut, "{st}");
    assert_eq!(st["checkpoint"]["failures"], 2, "{st}");
    assert_eq!(
        w.proxy.with(|f| f.ranges.clone()),
        [None, Some(format!("bytes=0-{}", prefix - 1))],
        "whole file, then the resume's prefix fetch (refused)"
    );
    assert_eq!(attrs(&w.img, 2) >> 48 & 0xff, 0, "target still unbootable");

    // Next run: the checkpoint has had its failures; the download starts from byte 0 (no Range
    // header at all, although ranged requests would still fail) and completes.
    let before = w.proxy.with(|f| {
        f.ranges.clear();
        f.download_bytes
    });
    assert_eq!(w.once(), 2, "agent log:\n{}", w.agent_log());
    assert_eq!(w.proxy.with(|f| f.ranges.clone()), [None]);
    assert_eq!(
        w.proxy.with(|f| f.download_bytes) - before,
        payload.len() as u64
    );
    assert!(
        w.agent_log().contains("starting the download over"),
        "{}",
        w.agent_log()
    );
    assert_eq!(w.read_part(2, IMAGE_LEN), img2);
    assert_eq!(attrs(&w.img, 2), gptprio(2, 1, false));
    assert!(w.state()["checkpoint"].is_null());
    assert_verified(&w.img);
}

#[test]
fn tries_the_next_url_when_several_are_given() {
    // Nothing listens on this port: connection refused.
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let refused2 = refused.clone();
    // The server's download mirrors: a dead one, one answering 404 (a path the server does not
    // serve, through the proxy), then the server's own URL.
    let w = World::with_server("1.0.0", move |s, proxy| {
        s.omaha.download_mirrors = vec![refused2, format!("{proxy}/no-such-mirror")];
    });
    let img2 = image(2);
    let payload = w.seed("2.0.0", &img2);
    w.write_config("70-retries.toml", "[install]\nattempts_per_url = 2\n");
    assert_eq!(w.once(), 2, "agent log:\n{}", w.agent_log());

    // The update-check answer (later ones acknowledge events).
    let answer = w.proxy.with(|f| {
        f.omaha_responses
            .iter()
            .find(|r| r.contains("<updatecheck"))
            .cloned()
            .unwrap()
    });
    let codebases: Vec<&str> = answer
        .split("codebase=\"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .collect();
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&payload))
    };
    let proxy = format!("http://{}", w.proxy.addr);
    assert_eq!(
        codebases,
        [
            format!("{refused}/packages/{sha}/"),
            format!("{proxy}/no-such-mirror/packages/{sha}/"),
            format!("{proxy}/packages/{sha}/"),
        ],
        "{answer}"
    );
    // The refused URL was tried twice (attempts_per_url), the 404 once, then the server's.
    let log = w.agent_log();
    let refused_tries = log
        .lines()
        .filter(|l| l.contains("download attempt failed") && l.contains(&refused))
        .count();
    assert_eq!(refused_tries, 2, "{log}");
    let file = format!("packages/{sha}/platte_update.payload");
    assert_eq!(
        w.proxy.with(|f| f.download_paths.clone()),
        [format!("/no-such-mirror/{file}"), format!("/{file}")]
    );
    assert_eq!(w.proxy.with(|f| f.download_bytes), payload.len() as u64);
    assert_eq!(w.read_part(2, IMAGE_LEN), img2);
    assert_eq!(attrs(&w.img, 2), gptprio(2, 1, false));
    // Falling over is no failure: no error event.
    let ev = w.wait_events("13/1, 14/1, 3/1", |e| e.len() >= 3);
    assert_eq!(
        event_triples(&ev),
        [(13, 1, None), (14, 1, None), (3, 1, None)],
        "{ev:?}"
    );
}

/// `next_check_in_s` values the daemon logged, in order (ANSI colours stripped).
fn next_checks(log: &str) -> Vec<u64> {
    let mut plain = String::with_capacity(log.len());
    let mut in_escape = false;
    for c in log.chars() {
        match c {
            '\x1b' => in_escape = true,
            'm' if in_escape => in_escape = false,
            _ if in_escape => {}
            _ => plain.push(c),
        }
    }
    plain
        .lines()
        .filter(|l| l.contains("waiting for the next check"))
        .filter_map(|l| l.split("next_check_in_s=").nth(1))
        .filter_map(|v| v.split_whitespace().next()?.parse().ok())
        .collect()
}

#[test]
fn server_poll_interval_sets_the_next_check() {
    // The server sends PollInterval="7200"; the agent's own interval is 60 s, jitter 0.
    let w = World::with_server("2.0.0", |s, _| s.omaha.poll_interval_secs = Some(7200));
    w.seed("2.0.0", &image(2));
    let mut daemon = w.spawn(false);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let waits = loop {
        let waits = next_checks(&w.agent_log());
        if waits.len() >= 2 {
            break waits;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon never scheduled its second check:\n{}",
            w.agent_log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    let answer = w
        .proxy
        .with(|f| f.omaha_responses.first().cloned().unwrap());
    assert!(answer.contains(r#"PollInterval="7200""#), "{answer}");
    assert!(answer.contains(r#"status="noupdate""#), "{answer}");
    // First check at once (initial delay 0), then the server's interval, not the agent's 60 s
    // (a few milliseconds have passed when the wait is logged, hence 7199).
    assert_eq!(waits[0], 0, "{waits:?}");
    assert!((7199..=7200).contains(&waits[1]), "{waits:?}");
}

#[test]
fn an_offer_of_the_running_version_keeps_the_fallback_slot() {
    // A version-blind server (nebraska.py) offers the version the host already runs. The Platte
    // server does not, so it is told the host runs 1.0.0 while it runs 2.0.0.
    let w = World::new("2.0.0");
    let img2 = image(2);
    w.seed("2.0.0", &img2);
    w.proxy.with(|f| {
        f.rewrite_request = vec![(r#"version="2.0.0""#.into(), r#"version="1.0.0""#.into())]
    });
    // A rewritten request no longer matches its machine signature: send none.
    w.write_config(
        "70-unsigned.toml",
        "[updates]\nmachine_credential = false\n",
    );
    // Slot B holds the previous release: the fallback.
    let fallback = support::noise(IMAGE_LEN, 0xB);
    w.write_part(2, 0, &fallback);
    let b_attrs = attrs(&w.img, 2);

    // Declined: nothing downloaded or touched, not an error (exit 0, like noupdate).
    assert_eq!(w.once(), 0, "agent log:\n{}", w.agent_log());
    let last = w
        .proxy
        .with(|f| f.omaha_responses.first().cloned().unwrap());
    assert!(last.contains(r#"<manifest version="2.0.0""#), "{last}");
    assert_eq!(w.proxy.with(|f| f.download_bytes), 0);
    assert_eq!(
        w.read_part(2, IMAGE_LEN),
        fallback,
        "the fallback slot is kept"
    );
    assert_eq!(attrs(&w.img, 2), b_attrs);
    assert_eq!(attrs(&w.img, 1), a_attrs());
    // Nothing to remember: no state written (or an idle one), no error.
    let st = w.state();
    assert!(st.is_null() || st["phase"] == "idle", "{st}");
    assert!(st["last_error"].is_null(), "{st}");
    assert!(
        plain(&w.agent_log()).contains("offered version is already running"),
        "{}",
        w.agent_log()
    );
    // The server hears "deferred" (3/9) with Platte's code 3104, no failure.
    let ev = w.wait_events("the 3/9 event", |e| {
        event_triples(e).contains(&(3, 9, Some(FLAG | 3104)))
    });
    assert!(
        !event_triples(&ev).iter().any(|(_, r, _)| *r == 0),
        "{ev:?}"
    );

    // An operator's explicit repair installs it into the inactive slot.
    assert_eq!(
        w.once_with(&["--repair"]),
        2,
        "agent log:\n{}",
        w.agent_log()
    );
    assert_eq!(w.read_part(2, IMAGE_LEN), img2);
    assert_eq!(attrs(&w.img, 2), gptprio(2, 1, false));
    assert_verified(&w.img);
}

#[test]
fn base64_hash_sha256_as_go_omaha_serves_it_is_accepted() {
    let w = World::new("1.0.0");
    let img2 = image(2);
    let payload = w.seed("2.0.0", &img2);
    let digest = sha256(&payload);
    // go-omaha's `Package.FromReader` fills `hash_sha256` with base64, not hex.
    w.proxy.with(|f| {
        f.rewrite_response = vec![(
            format!("hash_sha256=\"{}\"", hex::encode(digest)),
            format!("hash_sha256=\"{}\"", base64_sha256(&digest)),
        )]
    });
    assert_eq!(w.once(), 2, "agent log:\n{}", w.agent_log());
    let answer = w
        .proxy
        .with(|f| f.omaha_responses.first().cloned().unwrap());
    assert!(
        answer.contains(&format!("hash_sha256=\"{}\"", base64_sha256(&digest))),
        "{answer}"
    );
    assert_eq!(w.read_part(2, IMAGE_LEN), img2);
    assert_eq!(attrs(&w.img, 2), gptprio(2, 1, false));
    assert_verified(&w.img);
}

#[test]
fn an_unusable_offer_is_reported_to_the_server() {
    let w = World::new("1.0.0");
    let payload = w.seed("2.0.0", &image(2));
    let slot_a = w.read_part(1, IMAGE_LEN);
    let b_attrs = attrs(&w.img, 2);
    // `hash_sha256` disagrees with the postinstall action's `sha256`: which one is right?
    w.proxy.with(|f| {
        f.rewrite_response = vec![(
            format!("hash_sha256=\"{}\"", hex::encode(sha256(&payload))),
            format!("hash_sha256=\"{}\"", "ab".repeat(32)),
        )]
    });
    assert_eq!(w.once(), 1, "agent log:\n{}", w.agent_log());
    assert_eq!(w.proxy.with(|f| f.download_bytes), 0, "nothing downloaded");
    assert_eq!(attrs(&w.img, 2), b_attrs, "target slot not touched");
    assert_eq!(w.read_part(1, IMAGE_LEN), slot_a);
    let st = w.state();
    // update_engine's OmahaResponseHandlerError.
    assert_eq!(st["last_error"]["code"], 3, "{st}");
    assert!(
        st["last_error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("disagree")),
        "{st}"
    );
    // The server hears it as a failure (3/0) with that code.
    w.wait_events("the 3/0 event", |e| {
        event_triples(e).contains(&(3, 0, Some(FLAG | 3)))
    });
}

#[test]
fn a_server_ignoring_range_does_not_make_the_resume_rewrite_the_slot() {
    let w = World::new("1.0.0");
    let img2 = image(2);
    let payload = w.seed("2.0.0", &img2);
    let prefix = prefix_len(&payload);
    let cut = 3u64 << 20;
    // One attempt per run: a cut download keeps its checkpoint for the next run.
    w.write_config("70-retries.toml", "[install]\nattempts_per_url = 1\n");
    let interrupted = |w: &World| {
        w.proxy.with(|f| {
            f.cut_at = Some(cut);
            f.ignore_ranges = false;
        });
        assert_eq!(w.once(), 1, "agent log:\n{}", w.agent_log());
        let offset = w.state()["checkpoint"]["applier"]["payload_offset"]
            .as_u64()
            .unwrap();
        assert!(offset > prefix + u64::from(support::CHUNK) && offset <= cut);
        w.proxy.with(|f| {
            f.ranges.clear();
            f.ignore_ranges = true;
        });
        offset
    };

    // 1. Behind the agent's back, the start of the already written region gets a sentinel. The
    // resume is answered 200 with the whole payload; the agent discards what it has written
    // instead of writing it again, so the sentinel survives (and the final re-read of the slot
    // catches it: NewRootfsVerificationError).
    let offset = interrupted(&w);
    let sentinel = vec![0xEE; 4096];
    w.write_part(2, 0, &sentinel);
    assert_eq!(w.once(), 1, "agent log:\n{}", w.agent_log());
    assert_eq!(w.read_part(2, sentinel.len()), sentinel, "not rewritten");
    assert_eq!(w.state()["last_error"]["code"], 15);
    let log = plain(&w.agent_log());
    assert!(
        log.contains("the server ignored Range")
            && log.contains(&format!("discarded_bytes={offset}")),
        "{log}"
    );

    // 2. Without the sentinel the resumed install verifies; the whole payload came again (the
    // server ignored both ranged requests) and the bytes before the checkpoint were discarded.
    let offset = interrupted(&w);
    let before = w.proxy.with(|f| f.download_bytes);
    assert_eq!(w.once(), 2, "agent log:\n{}", w.agent_log());
    assert_eq!(
        w.proxy.with(|f| f.ranges.clone()),
        [
            Some(format!("bytes=0-{}", prefix - 1)),
            Some(format!("bytes={offset}-"))
        ]
    );
    assert!(w.proxy.with(|f| f.download_bytes) - before >= payload.len() as u64);
    let log = plain(&w.agent_log());
    let staged = log
        .lines()
        .rfind(|l| l.contains("update staged"))
        .unwrap_or_default();
    assert!(
        staged.contains(&format!("discarded={offset}")) && staged.contains("resumed=true"),
        "{staged}"
    );
    assert_eq!(w.read_part(2, IMAGE_LEN), img2);
    assert_eq!(attrs(&w.img, 2), gptprio(2, 1, false));
    assert_verified(&w.img);
}
