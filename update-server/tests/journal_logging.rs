//! The server's log output as systemd and operators see it: plain text on a file or pipe, no
//! colour with `NO_COLOR` even on a terminal, and `<N>` priority prefixes when `JOURNAL_STREAM`
//! says standard error is the journal (so that `journalctl -p err` selects by level). Each test
//! runs the real `update-server serve`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_update-server");
/// The admin token the tests put in the data directory.
const TOKEN: &str = "0123456789abcdef0123456789abcdef";
const ESC: u8 = 0x1b;

/// `update-server serve` on a fresh data directory under `dir`, with the logging variables of
/// the environment removed and `env` added.
fn serve_command(dir: &Path, env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("UPDATE_SERVER_")
            || ["NO_COLOR", "JOURNAL_STREAM", "RUST_LOG"].contains(&&*k)
        {
            cmd.env_remove(&*k);
        }
    }
    cmd.arg("serve")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Waits for the "listening on" line of the server's stdout; returns the address and every
/// line read so far.
fn address_of(child: &mut Child) -> (String, String) {
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "update-server exited before listening:\n{seen}"
        );
        seen.push_str(&line);
        if let Some(addr) = line.split("update-server listening on http://").nth(1) {
            return (addr.trim().to_owned(), seen);
        }
    }
}

/// Polls `file` until it contains `needle` (at most 20 s); returns its content.
fn wait_for(file: &Path, needle: &str) -> String {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if text.contains(needle) || start.elapsed() > Duration::from_secs(20) {
            return text;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends one HTTP/1.1 request and returns the status line.
fn request(addr: &str, head: &str, body: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn logs_written_to_a_file_carry_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr.log");
    let mut child = serve_command(dir.path(), &[])
        .stdout(Stdio::piped())
        .stderr(File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let (_, stdout) = address_of(&mut child);
    let text = wait_for(&log, "database open");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(text.contains(" INFO "), "no log line on stderr:\n{text}");
    assert!(
        !text.as_bytes().contains(&ESC),
        "escape codes in a file:\n{text:?}"
    );
    assert!(
        !text.starts_with('<'),
        "a priority prefix outside the journal:\n{text}"
    );
    // Standard output keeps the command's own lines; logs go to standard error.
    assert!(!stdout.contains(" INFO "), "logs on stdout:\n{stdout}");
}

/// Runs the server for two seconds on a pseudo-terminal (`script` from util-linux); returns what
/// the terminal showed.
fn on_a_terminal(env: &[(&str, &str)]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let mut inner = vec![
        "timeout".to_owned(),
        "-s".to_owned(),
        "INT".to_owned(),
        "2".to_owned(),
        BIN.to_owned(),
    ];
    let serve = serve_command(dir.path(), env);
    inner.extend(serve.get_args().map(|a| a.to_string_lossy().into_owned()));
    let quoted: Vec<String> = inner
        .iter()
        .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
        .collect();
    let mut cmd = Command::new("script");
    cmd.args(["-q", "-e", "-c", &quoted.join(" "), "/dev/null"]);
    for (k, v) in serve.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .expect("running script (util-linux) to give the server a terminal");
    out.stdout
}

#[test]
fn no_color_turns_colour_off_even_on_a_terminal() {
    let coloured = on_a_terminal(&[]);
    let text = String::from_utf8_lossy(&coloured);
    assert!(
        text.contains("database open"),
        "no log on the terminal:\n{text}"
    );
    assert!(coloured.contains(&ESC), "no colour on a terminal:\n{text}");

    let plain = on_a_terminal(&[("NO_COLOR", "1")]);
    let text = String::from_utf8_lossy(&plain);
    assert!(
        text.contains("database open"),
        "no log on the terminal:\n{text}"
    );
    assert!(!plain.contains(&ESC), "colour despite NO_COLOR:\n{text:?}");
}

#[test]
fn under_the_journal_each_line_starts_with_its_priority() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("journal-stream");
    let file = File::create(&log).unwrap();
    let meta = file.metadata().unwrap();
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    // A token file others may read: the server warns (priority 4).
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let token_file = data.join("admin-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();

    let mut child = serve_command(dir.path(), &[("JOURNAL_STREAM", &stream)])
        .stdout(Stdio::piped())
        .stderr(file)
        .spawn()
        .unwrap();
    let (addr, _) = address_of(&mut child);
    // Publishing without trusted keys is answered 503, logged as an error (priority 3).
    let status = request(
        &addr,
        &format!(
            "POST /api/v1/packages HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Type: application/octet-stream\r\nContent-Length: 4\r\nConnection: close\r\n\r\n"
        ),
        b"junk",
    );
    assert!(status.contains(" 503 "), "{status}");
    let text = wait_for(&log, "request failed");
    child.kill().unwrap();
    child.wait().unwrap();

    assert!(
        !text.as_bytes().contains(&ESC),
        "escape codes in the journal:\n{text:?}"
    );
    for line in text.lines() {
        let (prefix, rest) = line.split_at_checked(3).unwrap_or(("", line));
        assert!(
            ["<3>", "<4>", "<6>", "<7>"].contains(&prefix),
            "a line without a priority prefix: {line:?}\n{text}"
        );
        // The journal stamps lines itself: no timestamp in the text.
        assert!(
            !rest.starts_with("20"),
            "a timestamp in the journal: {line:?}"
        );
    }
    let with = |prefix: &str, level: &str, what: &str| {
        assert!(
            text.lines()
                .any(|l| l.starts_with(prefix) && l.contains(level) && l.contains(what)),
            "no {prefix} {level} line about {what:?}:\n{text}"
        );
    };
    with("<6>", "INFO", "database open");
    with("<4>", "WARN", "token file is readable by group or others");
    with("<3>", "ERROR", "request failed");
}
