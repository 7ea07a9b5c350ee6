//! A TCP proxy between agents and the server, for fault scenarios: it can throttle what flows
//! to the agent (so a download is still running when the server is killed), records the request
//! lines and `Range` headers it forwards, and the whole requests with their bodies (what an
//! agent sent, e.g. its Omaha XML), and cuts every connection when the upstream closes.
//!
//! With several upstreams ([`Proxy::round_robin`]) it is the load balancer in front of server
//! replicas: each new client connection goes to the next upstream in turn.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::{Result, io};

/// Most bytes of one connection's unfinished request kept while waiting for the rest; a larger
/// request is not recorded whole (the proxy never buffers uploads of that size for the tests).
const MAX_REQUEST_BYTES: usize = 4 << 20;

/// One HTTP request a client sent through the proxy, complete with its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    /// The request line (`POST /v1/update/ HTTP/1.1`).
    pub line: String,
    /// The body (`Content-Length` bytes; empty without one).
    pub body: Vec<u8>,
}

impl HttpRequest {
    /// The method (`GET`, `POST`…).
    pub fn method(&self) -> &str {
        self.line.split(' ').next().unwrap_or("")
    }

    /// The request target (`/v1/update/`).
    pub fn path(&self) -> &str {
        self.line.split(' ').nth(1).unwrap_or("")
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

#[derive(Debug, Default)]
struct Shared {
    /// Where connections go, in turn (one entry: always there).
    upstreams: Mutex<Vec<String>>,
    /// How many connections were accepted (the next one goes to `upstreams[next % len]`).
    next: AtomicUsize,
    /// For each connection accepted, in order, the index of the upstream it went to.
    routed: Mutex<Vec<usize>>,
    rate: AtomicU64,
    requests: Mutex<Vec<String>>,
    whole: Mutex<Vec<HttpRequest>>,
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
        Self::round_robin(&[upstream])
    }

    /// Listens on a free loopback port and forwards each new connection to the next of
    /// `upstreams` (`host:port`) in turn, starting with the first.
    pub fn round_robin(upstreams: &[&str]) -> Result<Proxy> {
        let listener =
            TcpListener::bind("127.0.0.1:0").map_err(io("binding the proxy", "127.0.0.1:0"))?;
        let addr = listener
            .local_addr()
            .map_err(io("reading the proxy address", "127.0.0.1:0"))?;
        let shared = Arc::new(Shared {
            upstreams: Mutex::new(upstreams.iter().map(|u| (*u).to_owned()).collect()),
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

    /// Forwards new connections to `upstream` (`host:port`) from now on (only there).
    pub fn set_upstream(&self, upstream: &str) {
        self.set_upstreams(&[upstream]);
    }

    /// Forwards new connections to `upstreams` in turn from now on (none: new connections are
    /// closed at once).
    pub fn set_upstreams(&self, upstreams: &[&str]) {
        *lock(&self.shared.upstreams) = upstreams.iter().map(|u| (*u).to_owned()).collect();
    }

    /// For each connection accepted so far, in order, the index of the upstream it was
    /// forwarded to (with one upstream: all 0).
    pub fn routed(&self) -> Vec<usize> {
        lock(&self.shared.routed).clone()
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

    /// The complete requests forwarded so far, with their bodies, in the order they were
    /// completed (a request is recorded once its last body byte went through).
    pub fn http_requests(&self) -> Vec<HttpRequest> {
        lock(&self.shared.whole).clone()
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
        let target = {
            let upstreams = lock(&shared.upstreams);
            let Some(i) = shared
                .next
                .fetch_add(1, Ordering::SeqCst)
                .checked_rem(upstreams.len())
            else {
                continue;
            };
            lock(&shared.routed).push(i);
            upstreams[i].clone()
        };
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

/// Client → server, recording request lines and `Range` headers, and whole requests.
fn upstream_copy(mut client: TcpStream, mut server: TcpStream, shared: &Shared) {
    let mut buf = vec![0u8; 16 << 10];
    let mut reader = RequestReader::default();
    loop {
        let n = match client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        record(shared, &buf[..n]);
        let done = reader.feed(&buf[..n]);
        if !done.is_empty() {
            lock(&shared.whole).extend(done);
        }
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

/// Splits one connection's client bytes into HTTP/1.1 requests (head, then `Content-Length`
/// bytes of body). A request it cannot delimit (chunked body, oversized) ends the recording of
/// that connection; the bytes are forwarded all the same.
#[derive(Debug, Default)]
struct RequestReader {
    buf: Vec<u8>,
    gave_up: bool,
}

impl RequestReader {
    /// Takes the next bytes; returns the requests they completed.
    fn feed(&mut self, chunk: &[u8]) -> Vec<HttpRequest> {
        let mut out = Vec::new();
        if self.gave_up {
            return out;
        }
        self.buf.extend_from_slice(chunk);
        while let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
            let mut lines = head.split("\r\n");
            let line = lines.next().unwrap_or("").to_owned();
            let mut len = Some(0usize);
            for h in lines {
                let Some((name, value)) = h.split_once(':') else {
                    continue;
                };
                if name.eq_ignore_ascii_case("content-length") {
                    len = value.trim().parse().ok();
                } else if name.eq_ignore_ascii_case("transfer-encoding") {
                    len = None;
                }
            }
            let Some(total) = len.and_then(|l| (end + 4).checked_add(l)) else {
                self.give_up();
                return out;
            };
            if self.buf.len() < total {
                break;
            }
            let body = self.buf[end + 4..total].to_vec();
            self.buf.drain(..total);
            out.push(HttpRequest { line, body });
        }
        if self.buf.len() > MAX_REQUEST_BYTES {
            self.give_up();
        }
        out
    }

    fn give_up(&mut self) {
        self.gave_up = true;
        self.buf = Vec::new();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_split_by_content_length_across_chunks() {
        let wire = b"POST /v1/update/ HTTP/1.1\r\nHost: x\r\ncontent-length: 5\r\n\r\nhello\
GET /p HTTP/1.1\r\nRange: bytes=1-\r\n\r\nPOST /v1/update/ HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc";
        for split in [1, 7, 40, 64, wire.len()] {
            let mut r = RequestReader::default();
            let mut got = Vec::new();
            for chunk in wire.chunks(split) {
                got.extend(r.feed(chunk));
            }
            let seen: Vec<(&str, &[u8])> = got
                .iter()
                .map(|q| (q.line.as_str(), q.body.as_slice()))
                .collect();
            assert_eq!(
                seen,
                [
                    ("POST /v1/update/ HTTP/1.1", &b"hello"[..]),
                    ("GET /p HTTP/1.1", &b""[..]),
                    ("POST /v1/update/ HTTP/1.1", &b"abc"[..]),
                ],
                "chunks of {split}"
            );
            assert_eq!(got[0].method(), "POST");
            assert_eq!(got[1].path(), "/p");
        }
    }

    #[test]
    fn connections_go_to_the_upstreams_in_turn() {
        let upstream = |name: &'static [u8], conns: usize| {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap().to_string();
            std::thread::spawn(move || {
                for c in l.incoming().take(conns) {
                    let _ = c.unwrap().write_all(name);
                }
            });
            addr
        };
        let (a, b) = (upstream(b"A", 2), upstream(b"B", 1));
        let proxy = Proxy::round_robin(&[&a, &b]).unwrap();
        let answers: Vec<String> = (0..3)
            .map(|_| {
                let mut c = TcpStream::connect(proxy.addr()).unwrap();
                let mut got = String::new();
                c.read_to_string(&mut got).unwrap();
                got
            })
            .collect();
        assert_eq!(answers, ["A", "B", "A"]);
        assert_eq!(proxy.routed(), [0, 1, 0]);
    }

    #[test]
    fn a_chunked_body_stops_the_recording_of_its_connection() {
        let mut r = RequestReader::default();
        let got = r.feed(
            b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
GET /b HTTP/1.1\r\n\r\n",
        );
        assert!(got.is_empty(), "{got:?}");
        assert!(r.feed(b"GET /c HTTP/1.1\r\n\r\n").is_empty());
    }
}
