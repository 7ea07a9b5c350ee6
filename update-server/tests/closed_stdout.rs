//! The `update-server` binary with a standard output nobody reads (`update-server openapi | head
//! -1` once `head` has exited): no panic, the command's own exit status.
#![allow(clippy::unwrap_used)]

use std::process::Command;

#[test]
fn a_closed_stdout_is_no_panic() {
    for args in [&["openapi"][..], &["--help"][..]] {
        // A pipe whose read end is closed: every write to it fails with EPIPE.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(env!("CARGO_BIN_EXE_update-server"))
            .args(args)
            .stdout(writer)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
            "{args:?}: {stderr}"
        );
    }
}
