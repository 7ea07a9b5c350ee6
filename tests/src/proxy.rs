//! A TCP proxy between agents and the server, for fault scenarios: it can throttle what flows
//! to the agent (so a download is still running when the server is killed), records the request
//! lines and `Range` headers it forwards, and cuts every connection when the upstream closes.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::{Result, io};

#[derive(Debug, Default)]
struct Shared {
    upstream: Mutex<String>,
    rate: AtomicU64,
    requests: Mutex<Vec<String>>,
    conns: Mutex<Vec<TcpStream>>,
    stop: AtomicBool,
}

/// A running proxy; stopped (and its connections cut) on drop.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream` (`host:port`).
    pub fn start(upstream: &str) -> Result<Proxy> {
        let listener =
            TcpListener::bind("127.0.0.1:0").map_err(io("binding the proxy", "127.0.0.1:0"))?;
        let addr = listener
            .local_addr()
            .map_err(io("reading the proxy address", "127.0.0.1:0"))?;
        let shared = Arc::new(Shared {
            upstream: Mutex::new(upstream.to_owned()),
            ..Shared::default()
        });
        let s = Arc::clone(&shared);
        let accept = std::thread::spawn(move || accept_loop(&listener, &s));
        Ok(Proxy {
            addr,
            shared,
            accept: Some(accept),
        })
    }

    /// `host:port` to give clients.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Forwards new connections to `upstream` (`host:port`) from now on.
    pub fn set_upstream(&self, upstream: &str) {
        upstream.clone_into(&mut lock(&self.shared.upstream));
    }

    /// Limits the bytes per second sent to clients (0: unlimited).
    pub fn set_rate(&self, bytes_per_sec: u64) {
        self.shared.rate.store(bytes_per_sec, Ordering::SeqCst);
    }

    /// Cuts every open connection, both sides, dropping whatever is still buffered in the
    /// proxy's sockets: what a client sees when the server dies with its connections (a killed
    /// server's data still sitting in kernel buffers would otherwise reach the client).
    pub fn cut(&self) {
        for c in lock(&self.shared.conns).drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    /// Request lines seen so far (`GET /path HTTP/1.1`, followed by ` | Range: …` when sent).
    pub fn requests(&self) -> Vec<String> {
        lock(&self.shared.requests).clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        for c in lock(&self.shared.conns).drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    for conn in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = conn else { continue };
        let target = lock(&shared.upstream).clone();
        let Ok(server) = TcpStream::connect(&target) else {
            // Upstream down: the client sees its connection closed, as with a dead server.
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        let (Ok(c2), Ok(s2), Ok(c3), Ok(s3)) = (
            client.try_clone(),
            server.try_clone(),
            client.try_clone(),
            server.try_clone(),
        ) else {
            continue;
        };
        lock(&shared.conns).extend([c3, s3]);
        let up = Arc::clone(shared);
        std::thread::spawn(move || upstream_copy(client, server, &up));
        let down = Arc::clone(shared);
        std::thread::spawn(move || downstream_copy(s2, c2, &down));
    }
}

/// Client → server, recording request lines and `Range` headers.
fn upstream_copy(mut client: TcpStream, mut server: TcpStream, shared: &Shared) {
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = match client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        record(shared, &buf[..n]);
        if server.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = server.shutdown(Shutdown::Write);
}

fn record(shared: &Shared, chunk: &[u8]) {
    let text = String::from_utf8_lossy(chunk);
    let mut reqs = lock(&shared.requests);
    for line in text.split("\r\n") {
        if ["GET ", "POST ", "HEAD "]
            .iter()
            .any(|m| line.starts_with(m))
        {
            reqs.push(line.to_owned());
        } else if line.to_ascii_lowercase().starts_with("range:")
            && let Some(last) = reqs.last_mut()
        {
            last.push_str(" | ");
            last.push_str(line);
        }
    }
}

/// Server → client, throttled; when the server side ends, the client connection is cut.
fn downstream_copy(mut server: TcpStream, mut client: TcpStream, shared: &Shared) {
    let mut buf = vec![0u8; 8 << 10];
    loop {
        let n = match server.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if client.write_all(&buf[..n]).is_err() {
            break;
        }
        let rate = shared.rate.load(Ordering::SeqCst);
        if let Some(micros) = (n as u64 * 1_000_000).checked_div(rate) {
            // Rate shaping, not synchronisation: spread this chunk over its share of a second.
            std::thread::sleep(Duration::from_micros(micros));
        }
    }
    let _ = client.shutdown(Shutdown::Both);
}
