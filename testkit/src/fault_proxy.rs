//! A tiny fault-injecting HTTP/1.1 proxy in front of the update server: Omaha requests can get
//! 500s or have their XML rewritten; package downloads can be cut, stalled or tampered with at
//! exact payload offsets, resumed (`Range`) downloads refused or their `Range` ignored, and every
//! downloaded payload byte is counted. One request per connection.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy does to traffic, and what it saw.
#[derive(Debug, Default)]
pub struct Faults {
    /// Where requests go (`http://host:port`), set once the server runs.
    pub upstream: String,
    /// Answer this many Omaha requests with HTTP 500.
    pub omaha_500s: u32,
    /// Replace (from, to) in Omaha request bodies before forwarding.
    pub rewrite_request: Vec<(String, String)>,
    /// Replace (from, to) in Omaha response bodies.
    pub rewrite_response: Vec<(String, String)>,
    /// Close the download connection once (one-shot) when the payload offset reaches this.
    pub cut_at: Option<u64>,
    /// Stop sending (and hold the connection open) at this payload offset.
    pub stall_at: Option<u64>,
    /// Set when a download stalled.
    pub stalled: bool,
    /// Flip the byte at this payload offset.
    pub tamper_at: Option<u64>,
    /// Answer every download request carrying a `Range` header with HTTP 503.
    pub refuse_ranges: bool,
    /// Drop the `Range` header of download requests, like a server that does not do ranges:
    /// the answer is `200` with the whole file (still recorded in [`Faults::ranges`]).
    pub ignore_ranges: bool,
    /// Payload bytes sent to clients (bodies of 2xx download answers).
    pub download_bytes: u64,
    /// `Range` headers of download requests (`None`: whole file).
    pub ranges: Vec<Option<String>>,
    /// Paths of download requests, in order.
    pub download_paths: Vec<String>,
    /// Omaha response bodies as sent to the agent.
    pub omaha_responses: Vec<String>,
    /// Times of Omaha requests.
    pub omaha_times: Vec<Instant>,
    /// Omaha request bodies as received from the agent.
    pub omaha_requests: Vec<String>,
}

/// The running proxy (on the caller's tokio runtime).
#[derive(Debug)]
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// The faults to inject and what was seen; see [`Proxy::with`].
    pub faults: Arc<Mutex<Faults>>,
}

impl Proxy {
    /// Starts the proxy; requests go to [`Faults::upstream`].
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let faults = Arc::new(Mutex::new(Faults::default()));
        let f = Arc::clone(&faults);
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let f = Arc::clone(&f);
                let client = client.clone();
                tokio::spawn(async move {
                    let up = f.lock().unwrap().upstream.clone();
                    let _ = handle(sock, &up, &client, &f).await;
                });
            }
        });
        Self { addr, faults }
    }

    /// Changes the faults.
    pub fn with<R>(&self, f: impl FnOnce(&mut Faults) -> R) -> R {
        f(&mut self.faults.lock().unwrap())
    }
}

struct Head {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

async fn read_head(sock: &mut TcpStream) -> std::io::Result<(Head, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        let n = sock.read(&mut tmp).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let text = String::from_utf8_lossy(&buf[..end]).to_string();
            let rest = buf[end + 4..].to_vec();
            let mut lines = text.split("\r\n");
            let first = lines.next().unwrap_or_default();
            let mut parts = first.split(' ');
            let method = parts.next().unwrap_or_default().to_owned();
            let path = parts.next().unwrap_or_default().to_owned();
            let headers = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .collect();
            return Ok((
                Head {
                    method,
                    path,
                    headers,
                },
                rest,
            ));
        }
        if buf.len() > 64 << 10 {
            return Err(std::io::ErrorKind::InvalidData.into());
        }
    }
}

async fn respond(sock: &mut TcpStream, status: u16, headers: &[(String, String)], body: &[u8]) {
    let mut head = format!("HTTP/1.1 {status} X\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let _ = sock.write_all(head.as_bytes()).await;
    let _ = sock.write_all(body).await;
    let _ = sock.shutdown().await;
}

async fn handle(
    mut sock: TcpStream,
    upstream: &str,
    client: &reqwest::Client,
    faults: &Mutex<Faults>,
) -> std::io::Result<()> {
    let (head, mut body) = read_head(&mut sock).await?;
    let len: usize = head
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while body.len() < len {
        let mut tmp = vec![0u8; len - body.len()];
        let n = sock.read(&mut tmp).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&tmp[..n]);
    }
    let url = format!("{upstream}{}", head.path);
    if head.method == "POST" {
        let mut text = String::from_utf8_lossy(&body).to_string();
        let fail = {
            let mut f = faults.lock().unwrap();
            f.omaha_times.push(Instant::now());
            f.omaha_requests.push(text.clone());
            for (a, b) in &f.rewrite_request {
                text = text.replace(a.as_str(), b);
            }
            if f.omaha_500s > 0 {
                f.omaha_500s -= 1;
                true
            } else {
                false
            }
        };
        if fail {
            respond(&mut sock, 500, &[], b"injected failure\n").await;
            return Ok(());
        }
        let mut post = client.post(&url).header("content-type", "text/xml");
        // The agent's machine credential passes through, like any header a real proxy keeps,
        // unless the body was rewritten: then the request goes on unsigned (a signature over
        // the old body would be refused).
        if let Some(sig) = head.header(omaha::credential::HEADER_NAME)
            && text.as_bytes() == body.as_slice()
        {
            post = post.header(omaha::credential::HEADER_NAME, sig);
        }
        let r = post
            .body(text)
            .send()
            .await
            .map_err(std::io::Error::other)?;
        let status = r.status().as_u16();
        let mut out = r.text().await.map_err(std::io::Error::other)?;
        let rewrites = faults.lock().unwrap().rewrite_response.clone();
        for (a, b) in &rewrites {
            out = out.replace(a.as_str(), b);
        }
        faults.lock().unwrap().omaha_responses.push(out.clone());
        respond(
            &mut sock,
            status,
            &[("Content-Type".into(), "text/xml".into())],
            out.as_bytes(),
        )
        .await;
        return Ok(());
    }
    // Downloads.
    let range = head.header("range").map(str::to_owned);
    let (refuse, ignore) = {
        let mut f = faults.lock().unwrap();
        f.ranges.push(range.clone());
        f.download_paths.push(head.path.clone());
        (f.refuse_ranges && range.is_some(), f.ignore_ranges)
    };
    if refuse {
        respond(
            &mut sock,
            503,
            &[],
            b"injected failure of a ranged request\n",
        )
        .await;
        return Ok(());
    }
    let mut req = client.get(&url);
    if let Some(r) = range.as_ref().filter(|_| !ignore) {
        req = req.header("range", r);
    }
    let mut r = req.send().await.map_err(std::io::Error::other)?;
    let status = r.status().as_u16();
    let mut start = 0u64;
    let mut head_out = format!("HTTP/1.1 {status} X\r\nConnection: close\r\n");
    for name in [
        "content-length",
        "content-range",
        "content-type",
        "accept-ranges",
    ] {
        if let Some(v) = r.headers().get(name).and_then(|v| v.to_str().ok()) {
            head_out.push_str(&format!("{name}: {v}\r\n"));
            if name == "content-range" {
                start = v
                    .strip_prefix("bytes ")
                    .and_then(|s| s.split('-').next())
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
            }
        }
    }
    head_out.push_str("\r\n");
    sock.write_all(head_out.as_bytes()).await?;
    if !(200..300).contains(&status) {
        // An error page, not payload bytes: pass it on uncounted.
        while let Some(chunk) = r.chunk().await.map_err(std::io::Error::other)? {
            sock.write_all(&chunk).await?;
        }
        let _ = sock.shutdown().await;
        return Ok(());
    }
    let mut pos = start;
    while let Some(chunk) = r.chunk().await.map_err(std::io::Error::other)? {
        let mut data = chunk.to_vec();
        let end = pos + data.len() as u64;
        let (cut, stall) = {
            let mut f = faults.lock().unwrap();
            if let Some(t) = f.tamper_at.filter(|&t| t >= pos && t < end) {
                data[(t - pos) as usize] ^= 0xFF;
            }
            let cut = f.cut_at.filter(|&c| c >= pos && c < end);
            if cut.is_some() {
                f.cut_at = None;
            }
            (cut, f.stall_at.filter(|&s| s >= pos && s < end))
        };
        if let Some(stop) = cut.or(stall) {
            let n = (stop - pos) as usize;
            sock.write_all(&data[..n]).await?;
            sock.flush().await?;
            let hold = {
                let mut f = faults.lock().unwrap();
                f.download_bytes += n as u64;
                let hold = stall.is_some() && cut.is_none();
                f.stalled |= hold;
                hold
            };
            if hold {
                // Hold the connection open without sending anything more.
                std::future::pending::<()>().await;
            }
            return Ok(());
        }
        sock.write_all(&data).await?;
        faults.lock().unwrap().download_bytes += data.len() as u64;
        pos = end;
    }
    let _ = sock.shutdown().await;
    Ok(())
}
