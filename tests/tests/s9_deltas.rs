//! S9: delta updates end to end. 1.0.0 → 1.1.0 by a delta (read from the running slot A, written
//! to slot B), 1.1.0 → 1.2.0 by the full payload because no delta exists from 1.1.0, and a host
//! whose running slot does not match the delta's source fails the delta (3105, nothing of it
//! activated, its running slot untouched) and takes the full payload at its next check. Run
//! against one server and against two replicas on PostgreSQL.
#![allow(clippy::unwrap_used)]

use platte_e2e::release::os_image;
use platte_e2e::{APP, DiskLayout, Mode, USR_A, USR_B, World};

platte_e2e::in_both_modes!(delta_then_full_then_fallback);

/// Size of the demo images: what a machine's slot A holds at creation (`Machine::create`).
const IMAGE_LEN: usize = 1 << 20;

/// The image of 1.1.0: 1.0.0's with its version header and a few blocks changed (a minor bump).
fn minor_bump(base: &[u8], version: &str) -> Vec<u8> {
    let mut image = base.to_vec();
    let head = format!(
        "{}\nVERSION_ID={version}\n",
        platte_e2e::release::IMAGE_MAGIC
    );
    image[..head.len()].copy_from_slice(head.as_bytes());
    for block in [7usize, 40, 41, 200] {
        let at = block * 4096;
        for b in &mut image[at..at + 4096] {
            *b = b.wrapping_add(0x5a);
        }
    }
    image
}

/// Completes the staged update: the boot loader picks the new slot, `mark-good` passes, and
/// the next check reports the completion.
fn reboot_into(w: &World, m: &mut platte_e2e::Machine, label: &str, version: &str) {
    let booted = m.boot().unwrap();
    assert_eq!(
        (booted.label.as_str(), booted.version.as_str()),
        (label, version)
    );
    let r = m.mark_good().unwrap();
    assert_eq!(r.code, Some(0), "mark-good:\n{}{}", r.stdout, r.stderr);
    let r = m.run_once().unwrap();
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let inst = w
        .server
        .wait_status(APP, &m.machine_id, "complete")
        .unwrap();
    assert_eq!(inst["version"], version, "{inst}");
}

fn delta_then_full_then_fallback(mode: Mode) {
    let w = World::start(mode).unwrap();
    w.setup_app().unwrap();
    let base = os_image("1.0.0", IMAGE_LEN);
    let mut m = w
        .machine("host-1", 91, DiskLayout::default(), "1.0.0")
        .unwrap();
    assert_eq!(m.slot_bytes(USR_A, IMAGE_LEN).unwrap(), base);

    // 1.1.0: the full payload and a delta from 1.0.0, linked to it.
    let v11 = w
        .publish_image("1.1.0", minor_bump(&base, "1.1.0"))
        .unwrap();
    let linked = w.publish_delta("1.0.0", &base, &v11).unwrap();
    assert_eq!(
        linked["id"].as_str(),
        Some(v11.package_id.as_str()),
        "{linked}"
    );
    let delta = &linked["deltas"][0];
    assert_eq!(delta["source_version"], "1.0.0", "{linked}");
    let delta_size = delta["size"].as_u64().unwrap();
    let full_size = std::fs::metadata(&v11.payload).unwrap().len();
    assert!(
        delta_size * 4 < full_size,
        "the delta ({delta_size} bytes) should be a fraction of the full payload ({full_size})"
    );
    w.point_stable(&v11).unwrap();

    // host-1 takes the delta: slot B holds 1.1.0, slot A (its source) is unchanged.
    let r = m.run_once().unwrap();
    assert_eq!(r.code, Some(2), "run --once did not stage:\n{}", r.stderr);
    assert_eq!(m.slot_bytes(USR_B, IMAGE_LEN).unwrap(), v11.image);
    assert_eq!(m.slot_bytes(USR_A, IMAGE_LEN).unwrap(), base);
    let inst = w
        .server
        .wait_status(APP, &m.machine_id, "installed")
        .unwrap();
    assert_eq!(inst["served_payload"], "delta", "{inst}");
    reboot_into(&w, &mut m, "USR-B", "1.1.0");

    // 1.2.0 has no delta from 1.1.0: the full payload, into slot A.
    let v12 = w
        .publish_image("1.2.0", minor_bump(&v11.image, "1.2.0"))
        .unwrap();
    w.point_stable(&v12).unwrap();
    let r = m.run_once().unwrap();
    assert_eq!(r.code, Some(2), "run --once did not stage:\n{}", r.stderr);
    assert_eq!(m.slot_bytes(USR_A, IMAGE_LEN).unwrap(), v12.image);
    let inst = w
        .server
        .wait_status(APP, &m.machine_id, "installed")
        .unwrap();
    assert_eq!(inst["served_payload"], "full", "{inst}");
    reboot_into(&w, &mut m, "USR-A", "1.2.0");

    // host-2 runs 1.0.0, but a block of its slot A that the delta copies differs from the
    // image the delta was built from. 1.2.0 gets a delta from 1.0.0 too.
    let linked = w.publish_delta("1.0.0", &base, &v12).unwrap();
    assert_eq!(linked["deltas"][0]["source_version"], "1.0.0", "{linked}");
    let mut h2 = w
        .machine("host-2", 92, DiskLayout::default(), "1.0.0")
        .unwrap();
    let mut drifted = base.clone();
    for b in &mut drifted[100 * 4096..100 * 4096 + 16] {
        *b ^= 0xff;
    }
    platte_e2e::gpt::write_partition(&h2.disk, USR_A, &drifted).unwrap();
    let r = h2.run_once().unwrap();
    assert_eq!(
        r.code,
        Some(1),
        "a delta on a wrong source was accepted:\n{}",
        r.stderr
    );
    let st = h2.state().unwrap();
    assert_eq!(st["last_error"]["code"], 3105, "{st}");
    assert_ne!(st["phase"], "staged", "{st}");
    assert!(!h2.slot(USR_B).unwrap().bootable(), "slot B was activated");
    assert_eq!(
        h2.slot_bytes(USR_A, IMAGE_LEN).unwrap(),
        drifted,
        "slot A was written"
    );
    // Reported as deferred with 3105, not as a failure: the rollout does not count it.
    let inst = w
        .server
        .wait_instance(APP, &h2.machine_id, "deferred", |i| {
            i["status"] == "deferred"
        })
        .unwrap();
    assert_eq!(inst["served_payload"], "delta", "{inst}");
    assert_eq!(
        inst["error_code"].as_i64().map(|c| c & 0xfff_ffff),
        Some(3105),
        "{inst}"
    );

    // Its next check asks for the full payload, and installs it.
    let r = h2.run_once().unwrap();
    assert_eq!(
        r.code,
        Some(2),
        "the full payload was not staged:\n{}",
        r.stderr
    );
    assert_eq!(h2.slot_bytes(USR_B, IMAGE_LEN).unwrap(), v12.image);
    let inst = w
        .server
        .wait_status(APP, &h2.machine_id, "installed")
        .unwrap();
    assert_eq!(inst["served_payload"], "full", "{inst}");
    reboot_into(&w, &mut h2, "USR-B", "1.2.0");
    assert_eq!(
        w.metric(&format!(
            r#"platte_update_payloads_offered_total{{app="{APP}",payload="delta"}}"#
        ))
        .unwrap(),
        2.0
    );
}
