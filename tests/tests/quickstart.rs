//! The README's quickstart (`cargo run --release -p platte-e2e --bin quickstart`) runs to its
//! end: it checks each step itself (the boot loader picks USR-B, `mark-good` passes, the server
//! sees the instance `complete`) and exits non-zero otherwise. Run here from the debug build with
//! its own `TMPDIR`, so it neither needs a release build nor touches a user's
//! `$TMPDIR/platte-quickstart`.
#![allow(clippy::unwrap_used)]

use std::process::Command;

#[test]
fn quickstart_runs_the_whole_loop() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_quickstart"))
        .env("TMPDIR", tmp.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "quickstart exited {:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    // The steps the README shows, in order.
    let mut at = 0;
    for want in [
        "== 1. A release key pair",
        "== 5. The agent checks, downloads into USR-B",
        "exit 2: update staged in the inactive slot",
        "booted USR-B (partition 2), VERSION_ID=2.0.0",
        "slot B marked successful",
        "booted the installed update version=2.0.0 previous=1.0.0",
        "slot A: priority 1 successful true; slot B: priority 2 successful true",
        "== Done in",
    ] {
        match stdout[at..].find(want) {
            Some(i) => at += i + want.len(),
            None => panic!("quickstart output lacks {want:?} (after byte {at}):\n{stdout}"),
        }
    }
    assert!(
        tmp.path().join("platte-quickstart").is_dir(),
        "the quickstart's files are not under TMPDIR"
    );
}
