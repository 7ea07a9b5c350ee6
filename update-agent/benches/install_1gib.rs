//! End-to-end install benchmark: a 1 GiB payload published on a local update server, installed
//! by the `update-agent` daemon (a child process) into slot B of a GPT disk image, next to a
//! plain HTTP download of the same bytes into the same kind of target, in the same run.
//! Prints both throughputs, their ratio, and the agent's idle and peak RSS (VmRSS / VmHWM).
//!
//! Run with `cargo bench -p update-agent --bench install_1gib` (needs `sgdisk`, ~5 GiB of disk).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use update_server::config::Settings;

const APP: &str = "{7b3f6a2e-5c1d-4e8a-9f40-2d6b8c1e9a53}";
const MIB: f64 = 1024.0 * 1024.0;

fn sgdisk(args: &[&str]) -> String {
    let out = Command::new("sgdisk")
        .args(args)
        .output()
        .expect("sgdisk (gdisk) is needed");
    assert!(out.status.success(), "sgdisk {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Byte offset of partition `n`.
fn part_offset(img: &Path, n: u32) -> u64 {
    let out = sgdisk(&["-i", &n.to_string(), img.to_str().unwrap()]);
    let first: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("First sector: "))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    first * 512
}

fn proc_status_kib(pid: u32, key: &str) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Writes back all dirty pages (`sync`), so one measurement does not pay for the last one's.
fn flush_all() {
    let _ = Command::new("sync").status();
}

fn spawn_agent(dir: &Path, log: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_update-agent"))
        .arg("--config-dir")
        .arg(dir.join("conf"))
        .arg("--host-root")
        .arg(dir.join("root"))
        .arg("run")
        .env("RUST_LOG", "info")
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .env_remove("ALL_PROXY")
        .env_remove("all_proxy")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(log).unwrap())
        .spawn()
        .unwrap()
}

fn main() {
    let dir =
        tempfile::tempdir_in(std::env::var_os("BENCH_DIR").unwrap_or_else(|| "/var/tmp".into()))
            .unwrap();
    let d = dir.path();
    println!("install_1gib: work directory {}", d.display());

    // 1 GiB of incompressible image data, and its signed payload.
    let image = d.join("image.bin");
    {
        let mut f = std::io::BufWriter::with_capacity(1 << 20, File::create(&image).unwrap());
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..1024 {
            for c in buf.chunks_exact_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                c.copy_from_slice(&x.to_le_bytes());
            }
            f.write_all(&buf).unwrap();
        }
        f.flush().unwrap();
    }
    let key = payloads::keys::generate_signing_key();
    for k in ["server-keys", "agent-keys"] {
        fs::create_dir_all(d.join(k)).unwrap();
        fs::write(
            d.join(k).join("release.pub"),
            payloads::keys::public_key_pem(&key.verifying_key()),
        )
        .unwrap();
    }
    let payload = d.join("update.payload");
    let t = Instant::now();
    let opts = payloads::BuildOptions::new(APP, "2.0.0", "amd64", payloads::unix_now() - 10);
    payloads::build_file(&image, &payload, std::slice::from_ref(&key), &opts).unwrap();
    let payload_len = fs::metadata(&payload).unwrap().len();
    println!(
        "payload: {payload_len} bytes built in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    fs::remove_file(&image).unwrap();

    // Disk image: two 1100 MiB slots.
    let img = d.join("disk.img");
    File::create(&img).unwrap().set_len(2300 << 20).unwrap();
    let usr = "5dfbf5f4-2848-4bac-aa5e-0d9a20b745a6";
    sgdisk(&[
        "-o",
        "-n",
        "1:2048:+1100M",
        "-c",
        "1:USR-A",
        "-t",
        &format!("1:{usr}"),
        "-n",
        "2:0:+1100M",
        "-c",
        "2:USR-B",
        "-t",
        &format!("2:{usr}"),
        "-A",
        "1:set:48",
        "-A",
        "1:set:56",
        img.to_str().unwrap(),
    ]);
    let b_off = part_offset(&img, 2);

    // Server.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut s = Settings::for_tests(&d.join("server-data"));
    s.trusted_keys = Some(d.join("server-keys"));
    let server = rt.block_on(update_server::server::start(s)).unwrap();
    let base = format!("http://{}", server.addr);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let api = |method: reqwest::Method, path: &str, body: serde_json::Value| {
        rt.block_on(async {
            let r = http
                .request(method, format!("{base}/api/v1{path}"))
                .bearer_auth(&server.admin_token)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{path}: {}", r.status());
            r.json::<serde_json::Value>().await.unwrap()
        })
    };
    api(
        reqwest::Method::POST,
        "/apps",
        serde_json::json!({"id": APP, "name": "Platte"}),
    );
    let pkg: serde_json::Value = rt.block_on(async {
        let f = tokio::fs::File::open(&payload).await.unwrap();
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(f));
        let r = http
            .post(format!("{base}/api/v1/packages?filename=update.payload"))
            .bearer_auth(&server.admin_token)
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "publish: {}", r.status());
        r.json().await.unwrap()
    });
    let sha = pkg["sha256_hex"].as_str().unwrap().to_owned();
    api(
        reqwest::Method::POST,
        &format!("/apps/{APP}/channels"),
        serde_json::json!({"name": "stable", "packages": {"amd64": pkg["id"]}}),
    );
    api(
        reqwest::Method::POST,
        &format!("/apps/{APP}/groups"),
        serde_json::json!({"name": "stable", "channel": "stable"}),
    );
    let url = format!("{base}/packages/{sha}/update.payload");

    // Baseline: plain HTTP download of the same bytes into slot B of the same disk image.
    // Both measurements start with no dirty pages left over from building and publishing.
    flush_all();
    let t = Instant::now();
    let got = rt.block_on(async {
        let disk = OpenOptions::new().write(true).open(&img).unwrap();
        let mut r = http.get(&url).send().await.unwrap();
        // Written in 2 MiB blocks, like the applier's operations.
        let mut pos = 0u64;
        let mut buf = Vec::with_capacity(2 << 20);
        while let Some(c) = r.chunk().await.unwrap() {
            buf.extend_from_slice(&c);
            if buf.len() >= 2 << 20 {
                disk.write_all_at(&buf, b_off + pos).unwrap();
                pos += buf.len() as u64;
                buf.clear();
            }
        }
        disk.write_all_at(&buf, b_off + pos).unwrap();
        pos += buf.len() as u64;
        disk.sync_data().unwrap();
        pos
    });
    let plain_s = t.elapsed().as_secs_f64();
    assert_eq!(got, payload_len);

    // The agent host.
    let root = d.join("root");
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::create_dir_all(root.join("proc/sys/kernel/random")).unwrap();
    fs::write(
        root.join("etc/machine-id"),
        "0123456789abcdef0123456789abcdef\n",
    )
    .unwrap();
    fs::write(
        root.join("proc/sys/kernel/random/boot_id"),
        "11111111-2222-4333-8444-555555555555\n",
    )
    .unwrap();
    fs::create_dir_all(d.join("conf")).unwrap();
    fs::write(
        d.join("conf/10-bench.toml"),
        format!(
            "[updates]\nserver = \"{base}/v1/update/\"\ntrusted_keys_dir = \"{keys}\"\n\n\
             [identity]\nos_version = \"1.0.0\"\nboard = \"amd64-usr\"\n\n\
             [boot]\ndisk = \"{img}\"\nbooted_slot = \"A\"\n\n[agent]\nstate_dir = \"/var/lib/platte\"\n\n\
             [check]\ninitial_delay_secs = 3600\njitter_secs = 0\n",
            keys = d.join("agent-keys").display(),
            img = img.display(),
        ),
    )
    .unwrap();
    let log = d.join("agent.log");

    // Idle RSS: the daemon waiting for its first check.
    let mut idle = spawn_agent(d, &log);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("waiting for the next check")
    {
        assert!(
            Instant::now() < deadline,
            "agent did not start: {}",
            fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let idle_rss = proc_status_kib(idle.id(), "VmRSS:").unwrap_or(0);
    let idle_hwm = proc_status_kib(idle.id(), "VmHWM:").unwrap_or(0);
    idle.kill().unwrap();
    idle.wait().unwrap();

    // The install: the daemon checks at once, installs, then idles again.
    fs::write(
        d.join("conf/20-now.toml"),
        "[check]\ninitial_delay_secs = 0\n",
    )
    .unwrap();
    flush_all();
    let t = Instant::now();
    let mut agent = spawn_agent(d, &log);
    let state = d.join("root/var/lib/platte/state.json");
    let mut peak = 0;
    let deadline = Instant::now() + Duration::from_secs(1200);
    loop {
        peak = peak.max(proc_status_kib(agent.id(), "VmHWM:").unwrap_or(0));
        // Done once the agent has saved the staged state and logged it (after the 3/1 event).
        let staged = fs::read_to_string(&state).is_ok_and(|s| s.contains("\"phase\": \"staged\""))
            && fs::read_to_string(&log).is_ok_and(|l| l.contains("update staged"));
        if staged {
            break;
        }
        if let Ok(Some(st)) = agent.try_wait() {
            panic!(
                "agent exited {st}: {}",
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "install did not finish");
        std::thread::sleep(Duration::from_millis(20));
    }
    let agent_s = t.elapsed().as_secs_f64();
    peak = peak.max(proc_status_kib(agent.id(), "VmHWM:").unwrap_or(0));
    let after_rss = proc_status_kib(agent.id(), "VmRSS:").unwrap_or(0);
    agent.kill().unwrap();
    agent.wait().unwrap();

    let mb = payload_len as f64 / MIB;
    let plain_tp = mb / plain_s;
    let agent_tp = mb / agent_s;
    println!("plain HTTP download to slot B: {plain_s:.2}s, {plain_tp:.0} MiB/s");
    println!(
        "agent install (check, download, verify, re-read, activate): {agent_s:.2}s, {agent_tp:.0} MiB/s"
    );
    println!(
        "ratio agent/plain: {:.2} (goal >= 0.8)",
        agent_tp / plain_tp
    );
    println!(
        "agent RSS: idle {:.1} MiB (VmHWM before any check {:.1} MiB; goal < 10), peak {:.1} MiB (goal < 32), after install {:.1} MiB",
        idle_rss as f64 / 1024.0,
        idle_hwm as f64 / 1024.0,
        peak as f64 / 1024.0,
        after_rss as f64 / 1024.0
    );
    rt.block_on(server.shutdown()).unwrap();
}
