//! The `payload` binary end to end: keygen, build, inspect, sign, verify and apply, and the
//! documented exit codes (0 ok, 1 local/I/O, 2 usage, 3 invalid payload, 4 untrusted payload,
//! 5 delta source mismatch).
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

fn payload_cmd(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_payload"))
        .current_dir(dir)
        .env_remove("SOURCE_DATE_EPOCH")
        .args(args)
        .output()
        .unwrap()
}

#[track_caller]
fn expect_code(out: &Output, code: i32) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    stdout
}

struct Env {
    dir: tempfile::TempDir,
    image: Vec<u8>,
}

impl Env {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn run(&self, args: &[&str]) -> Output {
        payload_cmd(self.dir.path(), args)
    }
}

/// A directory with a key pair `rel`, an image and a payload `p` built from it.
fn setup() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let image = mixed_image(300_000, 4);
    fs::write(dir.path().join("img"), &image).unwrap();
    let env = Env { dir, image };
    expect_code(&env.run(&["keygen", "--out", "rel"]), 0);
    let out = env.run(&[
        "build",
        "--key",
        "rel.key",
        "--app",
        "my-app",
        "--version",
        "1.2.3",
        "--kind",
        "file",
        "--arch",
        "aarch64",
        "--meta",
        "os.versions=4081.*",
        "--meta",
        "a=b",
        "--chunk-size",
        "65536",
        "--image",
        "img",
        "--out",
        "p",
    ]);
    expect_code(&out, 0);
    env
}

#[test]
fn keygen_build_inspect_verify_apply() {
    let env = setup();
    let mode = fs::metadata(env.path("rel.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    // keygen refuses to overwrite.
    expect_code(&env.run(&["keygen", "--out", "rel"]), 1);

    let json = expect_code(&env.run(&["inspect", "--json", "--operations", "p"]), 0);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["app_id"], "my-app");
    assert_eq!(v["version"], "1.2.3");
    assert_eq!(v["kind"], "file");
    assert_eq!(v["arch"], "aarch64");
    assert_eq!(v["metadata"]["os.versions"], "4081.*");
    assert_eq!(v["target_size"], env.image.len());
    assert_eq!(v["signatures"].as_array().unwrap().len(), 1);
    assert_eq!(
        v["operations"].as_array().unwrap().len(),
        v["operation_count"].as_u64().unwrap() as usize
    );
    let text = expect_code(&env.run(&["inspect", "p"]), 0);
    assert!(text.contains("app id             my-app"), "{text}");

    let out = expect_code(&env.run(&["verify", "--trusted", "rel.pub", "p"]), 0);
    assert!(out.starts_with("OK:"), "{out}");

    expect_code(
        &env.run(&[
            "apply",
            "--trusted",
            "rel.pub",
            "--target",
            "new",
            "--create",
            "p",
        ]),
        0,
    );
    assert!(fs::read(env.path("new")).unwrap() == env.image);
}

#[test]
fn sign_adds_a_rotating_key() {
    let env = setup();
    expect_code(&env.run(&["keygen", "--out", "next"]), 0);
    fs::create_dir(env.path("trust")).unwrap();
    fs::copy(env.path("next.pub"), env.path("trust/next.pub")).unwrap();
    // Signed by rel only: untrusted for a store holding just the next key.
    expect_code(&env.run(&["verify", "--trusted", "trust", "p"]), 4);
    expect_code(&env.run(&["sign", "--key", "next.key", "p"]), 0);
    expect_code(&env.run(&["verify", "--trusted", "trust", "p"]), 0);
    expect_code(&env.run(&["verify", "--trusted", "rel.pub", "p"]), 0);
    let json = expect_code(&env.run(&["inspect", "--json", "p"]), 0);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["signatures"].as_array().unwrap().len(), 2);
    // Signing twice with the same key is refused as an invalid request on the payload.
    expect_code(&env.run(&["sign", "--key", "next.key", "p"]), 3);
}

#[test]
fn exit_codes() {
    let env = setup();
    // Usage errors.
    expect_code(&env.run(&[]), 2);
    expect_code(&env.run(&["verify", "p"]), 2);
    expect_code(
        &env.run(&[
            "build",
            "--key",
            "rel.key",
            "--app",
            "a",
            "--version",
            "1",
            "--meta",
            "novalue",
            "--image",
            "img",
            "--out",
            "x",
        ]),
        2,
    );
    expect_code(
        &env.run(&[
            "build",
            "--key",
            "rel.key",
            "--app",
            "bad app",
            "--version",
            "1",
            "--image",
            "img",
            "--out",
            "x",
        ]),
        2,
    );
    // Local errors: missing files, empty trust store, target too small.
    expect_code(&env.run(&["verify", "--trusted", "rel.pub", "missing"]), 1);
    fs::create_dir(env.path("empty")).unwrap();
    expect_code(&env.run(&["verify", "--trusted", "empty", "p"]), 1);
    expect_code(&env.run(&["verify", "--trusted", "nowhere", "p"]), 1);
    fs::write(env.path("small"), vec![OLD; 1000]).unwrap();
    expect_code(
        &env.run(&["apply", "--trusted", "rel.pub", "--target", "small", "p"]),
        1,
    );
    assert_eq!(fs::read(env.path("small")).unwrap(), vec![OLD; 1000]);

    // Invalid payloads.
    let mut bytes = fs::read(env.path("p")).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(env.path("corrupt"), &bytes).unwrap();
    expect_code(&env.run(&["verify", "--trusted", "rel.pub", "corrupt"]), 3);
    fs::write(env.path("junk"), b"not a payload at all, just text").unwrap();
    expect_code(&env.run(&["verify", "--trusted", "rel.pub", "junk"]), 3);
    expect_code(&env.run(&["inspect", "junk"]), 3);
    let out = env.run(&[
        "build",
        "--key",
        "rel.key",
        "--app",
        "a",
        "--version",
        "1",
        "--created",
        "1000",
        "--expires",
        "2000",
        "--image",
        "img",
        "--out",
        "old",
    ]);
    expect_code(&out, 0);
    expect_code(&env.run(&["verify", "--trusted", "rel.pub", "old"]), 3);

    // Untrusted payloads: --create must not leave a file behind.
    expect_code(&env.run(&["keygen", "--out", "stranger"]), 0);
    expect_code(
        &env.run(&[
            "apply",
            "--trusted",
            "stranger.pub",
            "--target",
            "t",
            "--create",
            "p",
        ]),
        4,
    );
    assert!(!env.path("t").exists());
}

/// `--create` removes the file it created whenever the apply fails, also when sizing the new file
/// fails (here: a range no file can have).
#[test]
fn create_leaves_nothing_behind_when_sizing_fails() {
    let env = setup();
    for (option, value) in [("--length", u64::MAX), ("--offset", u64::MAX)] {
        let value = value.to_string();
        let out = env.run(&[
            "apply",
            "--trusted",
            "rel.pub",
            "--target",
            "t",
            "--create",
            option,
            &value,
            "p",
        ]);
        expect_code(&out, 1);
        assert!(!env.path("t").exists(), "{option} left the target behind");
    }
}

#[test]
fn apply_into_a_range_of_a_disk_image() {
    let env = setup();
    let len = env.image.len();
    let base = 1 << 20;
    let disk_len = base + len + 4096;
    fs::write(env.path("disk"), vec![OLD; disk_len]).unwrap();
    expect_code(
        &env.run(&[
            "apply",
            "--trusted",
            "rel.pub",
            "--target",
            "disk",
            "--offset",
            &base.to_string(),
            "--length",
            &(len + 100).to_string(),
            "p",
        ]),
        0,
    );
    let disk = fs::read(env.path("disk")).unwrap();
    assert_eq!(disk.len(), disk_len);
    assert!(disk[..base].iter().all(|&b| b == OLD));
    assert!(disk[base..base + len] == env.image[..]);
    assert!(disk[base + len..].iter().all(|&b| b == OLD));
}

#[test]
fn a_closed_stdout_is_no_panic_and_keeps_the_exit_status() {
    let env = setup();
    // Standard output nobody reads (`payload inspect p | head -1` once `head` has exited): a
    // pipe whose read end is closed, so every write fails with EPIPE.
    let unread = |args: &[&str]| {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        Command::new(env!("CARGO_BIN_EXE_payload"))
            .current_dir(env.dir.path())
            .env_remove("SOURCE_DATE_EPOCH")
            .args(args)
            .stdout(writer)
            .output()
            .unwrap()
    };
    for (args, code) in [
        (&["inspect", "--operations", "p"][..], 0),
        (&["inspect", "--json", "p"][..], 0),
        (&["verify", "--trusted", "rel.pub", "p"][..], 0),
        (&["keygen", "--out", "other"][..], 0),
        // The status is still the command's own: an untrusted payload is 4.
        (&["verify", "--trusted", "other.pub", "p"][..], 4),
    ] {
        let out = unread(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
            "{args:?}: {stderr}"
        );
    }
    // The work is done although nobody read the report.
    assert!(env.path("other.pub").exists());
}

#[test]
fn delta_build_inspect_verify_and_apply() {
    let env = setup();
    let mut new = env.image.clone();
    new[70_000..90_000].copy_from_slice(&random_bytes(8, 20_000));
    new.extend(random_bytes(9, 5000));
    fs::write(env.path("new"), &new).unwrap();
    let out = env.run(&[
        "delta",
        "--key",
        "rel.key",
        "--app",
        "my-app",
        "--version",
        "1.3.0",
        "--kind",
        "file",
        "--from",
        "img",
        "--from-version",
        "1.2.3",
        "--to",
        "new",
        "--out",
        "d",
    ]);
    let stdout = expect_code(&out, 0);
    assert!(stdout.contains("delta from 1.2.3"), "{stdout}");
    assert!(stdout.contains("copied from the source"), "{stdout}");

    let stdout = expect_code(&env.run(&["inspect", "d"]), 0);
    assert!(stdout.contains("version 2 (delta)"), "{stdout}");
    assert!(stdout.contains("delta from         1.2.3"), "{stdout}");
    let json: serde_json::Value =
        serde_json::from_str(&expect_code(&env.run(&["inspect", "--json", "d"]), 0)).unwrap();
    assert_eq!(json["format_version"], 2);
    assert_eq!(json["source"]["version"], "1.2.3");
    assert!(json["target_bytes"]["copied"].as_u64().unwrap() > 500_000);
    assert!(json["operation_counts"]["SOURCE_COPY"].as_u64().unwrap() > 0);

    let stdout = expect_code(&env.run(&["verify", "--trusted", "rel.pub", "d"]), 0);
    assert!(stdout.contains("NOT checked"), "{stdout}");
    expect_code(
        &env.run(&["verify", "--trusted", "rel.pub", "--source", "img", "d"]),
        0,
    );

    // Without a source: exit 5; with the right one: the new image; with a wrong one: exit 5.
    fs::write(env.path("t"), vec![OLD; new.len()]).unwrap();
    expect_code(
        &env.run(&["apply", "--trusted", "rel.pub", "--target", "t", "d"]),
        5,
    );
    expect_code(
        &env.run(&[
            "apply",
            "--trusted",
            "rel.pub",
            "--target",
            "t",
            "--source",
            "img",
            "d",
        ]),
        0,
    );
    assert!(fs::read(env.path("t")).unwrap() == new);
    fs::write(env.path("wrong"), random_bytes(3, env.image.len())).unwrap();
    let out = env.run(&[
        "apply",
        "--trusted",
        "rel.pub",
        "--target",
        "t",
        "--source",
        "wrong",
        "d",
    ]);
    expect_code(&out, 5);
    assert!(String::from_utf8_lossy(&out.stderr).contains("use the full payload"));
}
