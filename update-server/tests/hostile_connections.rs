//! Idle and slowloris connections do not take the server offline: the real binary, under a soft
//! open-file limit of 1024 it cannot raise, keeps answering update checks and `/healthz` from
//! fresh connections while 1,100 idle and 500 slowloris connections are open; it sheds the
//! longest-idle connections at its cap, closes the slowloris ones within the configured
//! timeouts, and still stops gracefully. A request body trickled faster than the body-read
//! timeout is cut by the body deadline on the unauthenticated endpoints (not on uploads), and a
//! download its client does not read is closed after the write-stall timeout.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "common/mod.rs"]
mod common;
#[path = "support/hostile.rs"]
mod hostile;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;

use hostile::{Attack, Plan, Server};

const HEADER_TIMEOUT: Duration = Duration::from_millis(1500);
const BODY_TIMEOUT: Duration = Duration::from_millis(1500);
/// Scheduling slack on top of a timeout before a connection counts as not closed in time.
const SLACK: Duration = Duration::from_millis(1500);
/// Each request must be answered within this, attack or not.
const ANSWER_LIMIT: Duration = Duration::from_secs(5);
const CHECKS: usize = 100;
const HEALTH: usize = 40;

/// One attack at a time: both tests load the same two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn server_bin() -> String {
    std::env::var("PLATTE_HOSTILE_SERVER_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_update-server").to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slowloris_connections_do_not_take_the_server_offline() {
    let _serial = SERIAL.lock().await;
    hostile::raise_own_nofile(8192);
    let bin = server_bin();
    // Configured through the environment (which also exercises those names).
    let server = Server::spawn(
        &bin,
        Some(1024),
        &[
            (
                "UPDATE_SERVER_HTTP_HEADER_READ_TIMEOUT_MS",
                HEADER_TIMEOUT.as_millis().to_string(),
            ),
            (
                "UPDATE_SERVER_HTTP_BODY_READ_TIMEOUT_MS",
                BODY_TIMEOUT.as_millis().to_string(),
            ),
        ],
    );
    hostile::register_app(&server.base, &server.token).await;

    // Without attack (first round warms up).
    hostile::round(&server.base, 0, 20, 5, 2, ANSWER_LIMIT).await;
    let (calm, calm_health) =
        hostile::round(&server.base, 1000, CHECKS, HEALTH, 2, ANSWER_LIMIT).await;
    assert!(calm.failures.is_empty(), "{:?}", calm.failures);
    assert!(
        calm_health.failures.is_empty(),
        "{:?}",
        calm_health.failures
    );

    let attack = Attack::start(
        server.addr,
        Plan {
            silent: 550,
            kept_alive: 550,
            slow_headers: 250,
            slow_body: 250,
            header_trickle: Duration::from_millis(300),
            body_trickle: BODY_TIMEOUT * 2,
        },
    );
    // Checks go ahead even if some attackers are still connecting (the kernel's backlog full).
    let all_connected = attack.wait_started(Duration::from_secs(15)).await;
    let (hot, hot_health) =
        hostile::round(&server.base, 2000, CHECKS, HEALTH, 2, ANSWER_LIMIT).await;

    // Every slowloris connection has been closed at least once by now, or is about to be.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let h = attack.seen.header_closed_after.lock().unwrap().len();
        let b = attack.seen.body_closed_after.lock().unwrap().len();
        if (h >= 250 && b >= 250) || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let shed = hostile::metric(&server.base, "platte_http_connections_shed_total").await;
    let header_timeouts = hostile::metric(
        &server.base,
        "platte_http_connection_timeouts_total{kind=\"header\"}",
    )
    .await;
    let body_timeouts = hostile::metric(
        &server.base,
        "platte_http_connection_timeouts_total{kind=\"body\"}",
    )
    .await;
    let open = hostile::metric(&server.base, "platte_http_connections_open").await;
    let header_closed = attack.seen.header_closed_after.lock().unwrap().clone();
    let body_closed = attack.seen.body_closed_after.lock().unwrap().clone();
    let opened = attack
        .seen
        .opened
        .load(std::sync::atomic::Ordering::Relaxed);
    let idle_closed = attack
        .seen
        .idle_closed
        .load(std::sync::atomic::Ordering::Relaxed);
    attack.stop().await;

    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
    println!(
        "update checks, fresh connection each ({CHECKS} per round): p50 {:.2?} / p99 {:.2?} without attack, p50 {:.2?} / p99 {:.2?} during the attack; ratio p50 {:.2}, p99 {:.2}",
        calm.quantile(0.5),
        calm.quantile(0.99),
        hot.quantile(0.5),
        hot.quantile(0.99),
        ratio(hot.quantile(0.5), calm.quantile(0.5)),
        ratio(hot.quantile(0.99), calm.quantile(0.99)),
    );
    println!(
        "/healthz ({HEALTH} per round): p99 {:.2?} without attack, {:.2?} during it",
        calm_health.quantile(0.99),
        hot_health.quantile(0.99)
    );
    println!(
        "attack: {opened} connections opened, {idle_closed} idle ones closed by the server; slowloris closed: {} header (max {:.2?} after connecting), {} body (max {:.2?} after the last byte); server: shed {shed:?}, header timeouts {header_timeouts:?}, body timeouts {body_timeouts:?}, open {open:?}",
        header_closed.len(),
        header_closed.iter().max().copied().unwrap_or_default(),
        body_closed.len(),
        body_closed.iter().max().copied().unwrap_or_default(),
    );

    assert!(
        hot.failures.is_empty() && hot_health.failures.is_empty(),
        "requests not answered during the attack: {} update checks, {} health checks: {:?} {:?}\nserver output:\n{}",
        hot.failures.len(),
        hot_health.failures.len(),
        hot.failures.iter().take(5).collect::<Vec<_>>(),
        hot_health.failures.iter().take(5).collect::<Vec<_>>(),
        server.output()
    );
    assert!(
        all_connected,
        "the attackers could not all connect within 15 s"
    );
    assert_eq!(hot.latencies.len(), CHECKS);
    assert_eq!(hot_health.latencies.len(), HEALTH);
    // Slowloris connections: every one closed, within its timeout (or earlier, when shed).
    assert!(
        header_closed.len() >= 250 && body_closed.len() >= 250,
        "slowloris connections still open: {} of 250 header, {} of 250 body ones closed",
        header_closed.len(),
        body_closed.len()
    );
    let late_headers: Vec<_> = header_closed
        .iter()
        .filter(|d| **d > HEADER_TIMEOUT + SLACK)
        .collect();
    assert!(
        late_headers.is_empty(),
        "slow-header connections closed late: {late_headers:?}"
    );
    let late_bodies: Vec<_> = body_closed
        .iter()
        .filter(|d| **d > BODY_TIMEOUT + SLACK)
        .collect();
    assert!(
        late_bodies.is_empty(),
        "slow-body connections closed late: {late_bodies:?}"
    );
    // The cap, not the timeouts alone, kept the kept-alive idle connections from filling the
    // descriptor table: idle connections were shed, and the open count stayed under the cap.
    assert!(
        shed.is_some_and(|n| n > 0.0),
        "no connection shed: {shed:?}"
    );
    assert!(header_timeouts.is_some_and(|n| n > 0.0));
    assert!(body_timeouts.is_some_and(|n| n > 0.0));
    assert!(
        open.is_some_and(|n| n <= 768.0),
        "open connections {open:?} above the cap of 768 (limit 1024)"
    );

    let status = server.terminate();
    assert!(status.success(), "graceful stop failed: {status}");
}

/// With a connection cap above what the process may open, accepting fails with EMFILE: the
/// server sheds idle connections and accepts again at once instead of pausing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_sheds_idle_connections_and_keeps_accepting() {
    let _serial = SERIAL.lock().await;
    hostile::raise_own_nofile(8192);
    let server = Server::spawn(
        &server_bin(),
        Some(1024),
        &[("UPDATE_SERVER_HTTP_MAX_CONNECTIONS", "100000".to_owned())],
    );
    hostile::register_app(&server.base, &server.token).await;
    // Kept-alive idle connections only: no timeout closes them within the test (60 s).
    let attack = Attack::start(
        server.addr,
        Plan {
            silent: 0,
            kept_alive: 1100,
            slow_headers: 0,
            slow_body: 0,
            header_trickle: Duration::from_secs(1),
            body_trickle: Duration::from_secs(1),
        },
    );
    let all_connected = attack.wait_started(Duration::from_secs(15)).await;
    let (checks, health) = hostile::round(&server.base, 0, 50, 10, 2, ANSWER_LIMIT).await;
    let idle_closed = attack
        .seen
        .idle_closed
        .load(std::sync::atomic::Ordering::Relaxed);
    let shed = hostile::metric(&server.base, "platte_http_connections_shed_total").await;
    attack.stop().await;
    println!(
        "out of descriptors: checks p50 {:.2?} p99 {:.2?}, shed {shed:?}, {idle_closed} idle connections closed by the server",
        checks.quantile(0.5),
        checks.quantile(0.99)
    );
    assert!(
        checks.failures.is_empty() && health.failures.is_empty(),
        "{:?} {:?}\nserver output:\n{}",
        checks.failures,
        health.failures,
        server.output()
    );
    assert!(
        all_connected,
        "the attackers could not all connect within 15 s"
    );
    assert!(
        shed.is_some_and(|n| n > 0.0) && idle_closed > 0,
        "no connection shed: {shed:?}, {idle_closed} closed"
    );
    let status = server.terminate();
    assert!(status.success(), "graceful stop failed: {status}");
}

/// What a trickling client saw.
#[derive(Debug)]
struct Trickled {
    /// The answer received (possibly empty).
    answer: String,
    /// From the end of the headers to the server closing the connection (`None`: still open
    /// at the end of the wait).
    closed_after: Option<Duration>,
}

/// Sends `head`, then one body byte every `every`, until the server closes the connection or
/// `wait` has passed since the end of the headers; collects the answer.
async fn trickle(addr: SocketAddr, head: &str, every: Duration, wait: Duration) -> Trickled {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let t0 = Instant::now();
    let (mut rd, mut wr) = s.split();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let mut next = t0 + every;
    let mut writing = true;
    let closed_after = loop {
        tokio::select! {
            r = rd.read(&mut buf) => match r {
                Ok(0) | Err(_) => break Some(t0.elapsed()),
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            },
            () = tokio::time::sleep_until(next), if writing => {
                // The server may have stopped reading: a failed write is not the end yet.
                writing = wr.write_all(b" ").await.is_ok();
                next += every;
            }
            () = tokio::time::sleep_until(t0 + wait) => break None,
        }
    };
    Trickled {
        answer: String::from_utf8_lossy(&answer).into_owned(),
        closed_after,
    }
}

/// A body trickled faster than the body-read timeout: cut by the body deadline on the Omaha and
/// FleetLock endpoints (408, connection closed); a package upload trickled just as slowly is
/// not (its size is unbounded; only the body-read timeout applies).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_body_is_cut_by_the_body_deadline_except_uploads() {
    const READ_TIMEOUT: Duration = Duration::from_secs(4);
    const DEADLINE: Duration = Duration::from_millis(1500);
    const EVERY: Duration = Duration::from_millis(200);
    let _serial = SERIAL.lock().await;
    let keys = tempfile::tempdir().unwrap();
    let _key = common::trusted_key(keys.path(), "release");
    let server = Server::spawn(
        &server_bin(),
        None,
        &[
            (
                "UPDATE_SERVER_HTTP_BODY_READ_TIMEOUT_MS",
                READ_TIMEOUT.as_millis().to_string(),
            ),
            (
                "UPDATE_SERVER_HTTP_BODY_DEADLINE_MS",
                DEADLINE.as_millis().to_string(),
            ),
            (
                "UPDATE_SERVER_TRUSTED_KEYS",
                keys.path().join("keys").display().to_string(),
            ),
        ],
    );
    let omaha = "POST /v1/update/ HTTP/1.1\r\nHost: t\r\nContent-Type: text/xml\r\nContent-Length: 60000\r\n\r\n<request".to_owned();
    let fleetlock = "POST /fleetlock/v1/pre-reboot HTTP/1.1\r\nHost: t\r\nFleet-Lock-Protocol: true\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{".to_owned();
    let upload = format!(
        "POST /api/v1/packages?filename=slow.payload HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\nContent-Length: 100000\r\n\r\n",
        server.token
    );
    // Bounded bodies: the answer must come within the deadline plus slack.
    let wait = DEADLINE + SLACK;
    // The upload is watched for twice the deadline (still well under the body-read timeout).
    let (o, f, u) = tokio::join!(
        trickle(server.addr, &omaha, EVERY, wait),
        trickle(server.addr, &fleetlock, EVERY, wait),
        trickle(server.addr, &upload, EVERY, DEADLINE * 2),
    );
    let timeouts = hostile::metric(
        &server.base,
        "platte_http_connection_timeouts_total{kind=\"body\"}",
    )
    .await;
    println!("omaha: {o:?}\nfleetlock: {f:?}\nupload: {u:?}\nbody timeouts: {timeouts:?}");
    for (what, t) in [("Omaha", &o), ("FleetLock", &f)] {
        assert!(
            t.answer.starts_with("HTTP/1.1 408 "),
            "{what}: trickled body not answered 408 within {wait:?}: {t:?}\nserver output:\n{}",
            server.output()
        );
        let closed = t
            .closed_after
            .unwrap_or_else(|| panic!("{what}: connection not closed after the 408: {t:?}"));
        assert!(
            closed >= DEADLINE - Duration::from_millis(100),
            "{what}: cut before the deadline: {closed:?}"
        );
        assert!(
            t.answer.to_ascii_lowercase().contains("connection: close"),
            "{t:?}"
        );
    }
    assert!(
        u.closed_after.is_none() && u.answer.is_empty(),
        "a slowly arriving upload was cut: {u:?}"
    );
    assert!(
        timeouts.is_some_and(|n| n >= 2.0),
        "body timeouts not counted: {timeouts:?}"
    );
    let status = server.terminate();
    assert!(status.success(), "graceful stop failed: {status}");
}

/// A download whose client reads nothing: once the socket buffers are full the server can
/// write nothing more, and closes the connection after the write-stall timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_the_client_does_not_read_is_closed_after_the_write_stall_timeout() {
    const STALL: Duration = Duration::from_millis(1500);
    // Above the server's largest send buffer (tcp_wmem max, 4 MiB by default) plus the
    // client's small receive buffer and hyper's own buffers.
    const SIZE: usize = 8 << 20;
    let _serial = SERIAL.lock().await;
    let keys = tempfile::tempdir().unwrap();
    let key = common::trusted_key(keys.path(), "release");
    let server = Server::spawn(
        &server_bin(),
        None,
        &[
            (
                "UPDATE_SERVER_HTTP_WRITE_STALL_TIMEOUT_MS",
                STALL.as_millis().to_string(),
            ),
            (
                "UPDATE_SERVER_TRUSTED_KEYS",
                keys.path().join("keys").display().to_string(),
            ),
        ],
    );
    hostile::register_app(&server.base, &server.token).await;
    let payload = common::signed_payload(&key, hostile::APP, "3600.0.0", &common::image(SIZE));
    let http = reqwest::Client::new();
    let (st, pkg) =
        common::publish(&http, &server.base, &server.token, "big.payload", payload).await;
    assert!(st.is_success(), "publish: {st} {pkg}");
    let sha = pkg["sha256_hex"].as_str().unwrap().to_owned();
    let size = pkg["size"].as_u64().unwrap();
    // Sanity: the package downloads whole for a client that reads.
    let whole = http
        .get(format!("{}/packages/{sha}/big.payload", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(whole.status(), 200);
    assert_eq!(whole.bytes().await.unwrap().len() as u64, size);

    let metric = "platte_http_connection_timeouts_total{kind=\"write\"}";
    assert_eq!(hostile::metric(&server.base, metric).await, None);
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(server.addr).await.unwrap();
    s.write_all(format!("GET /packages/{sha}/big.payload HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let t0 = Instant::now();
    // Read nothing; poll the counter (bounded) until the server gives up on the connection.
    let limit = STALL + SLACK + Duration::from_secs(2);
    let stalled_after = loop {
        if hostile::metric(&server.base, metric)
            .await
            .is_some_and(|n| n >= 1.0)
        {
            break t0.elapsed();
        }
        assert!(
            t0.elapsed() < limit,
            "download not closed within {limit:?} of the request\nserver output:\n{}",
            server.output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The connection is closed: reading now ends (EOF or reset) short of the whole package.
    let mut got = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got += n as u64,
            }
        }
    })
    .await;
    println!(
        "write stall: closed {stalled_after:?} after the request, {got} of {size} bytes received"
    );
    assert!(ended.is_ok(), "the connection was not closed");
    assert!(got < size, "the whole package was sent: {got} bytes");
    assert!(
        stalled_after >= STALL,
        "closed before the write-stall timeout: {stalled_after:?}"
    );
    let status = server.terminate();
    assert!(status.success(), "graceful stop failed: {status}");
}
