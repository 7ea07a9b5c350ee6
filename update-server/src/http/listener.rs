//! The HTTP/1 accept loop: serves the router on every accepted connection with hyper, keeps a
//! table of open connections (idle or busy), closes connections that time out (headers, idle
//! keep-alive, stalled bodies, answers the client does not read), sheds the longest-idle connections when the open-connection
//! cap is reached or the process runs out of file descriptors, and shuts down gracefully
//! (stop accepting, close idle connections, let requests in flight finish). A handler that
//! panics is answered 500; a connection whose task panics anyway (in hyper, or while writing an
//! answer's body) still leaves the table.
//!
//! The rules (deadlines, which connection to shed, the default cap) are in
//! [`super::connections`]; this module owns the sockets and the clock.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::time::{Instant, Sleep};

use super::connections::{
    ConnState, HttpSettings, IdlePhase, TimeoutKind, Timeouts, deadline, default_max_connections,
    pick_shed, shed_batch,
};
use crate::metrics::Metrics;

/// Listen backlog asked for (the kernel caps it at `net.core.somaxconn`): room for a burst of
/// connections while the accept loop sheds, so that a client's SYN is not dropped (and retried
/// only a second later).
pub const LISTEN_BACKLOG: u32 = 4096;

/// Longest pause of the accept loop after running out of file descriptors before it retries.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// The soft and hard open-file limits, before and after [`raise_nofile_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimits {
    /// Soft limit found at start (`None`: unlimited).
    pub soft_before: Option<u64>,
    /// Hard limit (`None`: unlimited).
    pub hard: Option<u64>,
    /// Soft limit in force now.
    pub soft: Option<u64>,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (every connection is a file descriptor)
/// and logs both; keeps the soft limit if raising it is refused.
pub fn raise_nofile_limit() -> NofileLimits {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let before = getrlimit(Resource::Nofile);
    let mut soft = before.current;
    if before.current != before.maximum {
        let raised = Rlimit {
            current: before.maximum,
            maximum: before.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => soft = before.maximum,
            Err(e) => tracing::warn!(
                error = %e,
                soft = ?before.current,
                hard = ?before.maximum,
                "cannot raise the open-file limit to the hard limit"
            ),
        }
    }
    let limits = NofileLimits {
        soft_before: before.current,
        hard: before.maximum,
        soft,
    };
    tracing::info!(
        soft_before = ?limits.soft_before,
        soft = ?limits.soft,
        hard = ?limits.hard,
        "open-file limit (RLIMIT_NOFILE)"
    );
    limits
}

/// Binds a listening socket on `addr` (`SO_REUSEADDR`, [`LISTEN_BACKLOG`]).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves `router` on `listener` until `shutdown` completes, then closes idle connections,
/// lets requests in flight finish and returns once every connection is closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    settings: HttpSettings,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let limits = raise_nofile_limit();
    let cap = settings
        .max_connections
        .unwrap_or_else(|| default_max_connections(limits.soft));
    tracing::info!(
        max_connections = cap,
        header_read_timeout_ms = settings.timeouts.header_read.as_millis() as u64,
        idle_timeout_secs = settings.timeouts.idle.as_secs(),
        body_read_timeout_ms = settings.timeouts.body_read.as_millis() as u64,
        body_deadline_ms = settings.timeouts.body_deadline.as_millis() as u64,
        write_stall_timeout_ms = settings.timeouts.write_stall.as_millis() as u64,
        "HTTP connection limits"
    );
    let table = Arc::new(Table {
        epoch: Instant::now(),
        conns: Mutex::new(HashMap::new()),
        shedding: AtomicUsize::new(0),
        closed: Notify::new(),
        metrics,
        timeouts: settings.timeouts,
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut next_id: u64 = 0;
    let mut last_warning: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) if is_out_of_files(&e) => {
                // No descriptor for the next connection: close the longest-idle ones and retry
                // as soon as one is gone (axum::serve would sleep a whole second here).
                let gone = table.closed.notified();
                let shed = table.shed_idle(shed_batch(cap));
                if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    tracing::warn!(error = %e, open = table.len(), shed, "accept failed: out of file descriptors; shedding idle connections");
                    last_warning = Some(Instant::now());
                }
                tokio::select! {
                    () = gone => {}
                    () = tokio::time::sleep(ACCEPT_RETRY) => {}
                    () = &mut shutdown => break,
                }
                continue;
            }
            Err(e) => {
                // Per-connection errors (reset before accept, ...): the next one may be fine.
                tracing::debug!(error = %e, "accept failed");
                continue;
            }
        };
        // At the cap: close the longest-idle connections; if none may be shed (all busy, or
        // not read yet), hold this one (new ones wait in the kernel's backlog) until one closes
        // or may be shed.
        while table.live() >= cap {
            let gone = table.closed.notified();
            let need = (table.live() + 1 - cap).max(shed_batch(cap));
            if table.shed_idle(need) > 0 || table.live() < cap {
                break;
            }
            tokio::select! {
                () = gone => {}
                () = tokio::time::sleep(ACCEPT_RETRY) => {}
                () = &mut shutdown => {
                    drop(stream);
                    return drain(table, stop_tx).await;
                }
            }
        }
        next_id += 1;
        let registration = Registration::new(&table, next_id);
        let _ = stream.set_nodelay(true);
        tokio::spawn(run_connection(
            registration,
            stream,
            peer,
            router.clone(),
            stop_rx.clone(),
        ));
    }
    drop(listener);
    drain(table, stop_tx).await
}

/// Tells every connection to stop and waits until all are closed.
async fn drain(table: Arc<Table>, stop: watch::Sender<bool>) -> io::Result<()> {
    let _ = stop.send(true);
    loop {
        let gone = table.closed.notified();
        let mut gone = std::pin::pin!(gone);
        gone.as_mut().enable();
        if table.len() == 0 {
            return Ok(());
        }
        gone.await;
    }
}

/// Whether an accept error means the process or the system has no file descriptor left.
fn is_out_of_files(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(c) if c == rustix::io::Errno::MFILE.raw_os_error()
            || c == rustix::io::Errno::NFILE.raw_os_error()
            || c == rustix::io::Errno::NOBUFS.raw_os_error()
            || c == rustix::io::Errno::NOMEM.raw_os_error()
    )
}

/// The table of open connections.
#[derive(Debug)]
struct Table {
    epoch: Instant,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    /// Connections told to close but not closed yet (not counted against the cap).
    shedding: AtomicUsize,
    /// Notified whenever a connection closes.
    closed: Notify,
    metrics: Arc<Metrics>,
    timeouts: Timeouts,
}

impl Table {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        match self.conns.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    /// Open connections not already told to close.
    fn live(&self) -> usize {
        self.len()
            .saturating_sub(self.shedding.load(Ordering::Acquire))
    }

    /// Adds a connection; only [`Registration::new`] calls this, so that every entry is removed
    /// again.
    fn insert(&self, id: u64) -> Arc<Conn> {
        let now = millis(self.now());
        let conn = Arc::new(Conn {
            id,
            in_flight: AtomicU32::new(0),
            idle_since: AtomicU64::new(now),
            headers_since: AtomicU64::new(now + 1),
            quiet: AtomicBool::new(false),
            shed: AtomicBool::new(false),
            body_timed_out: AtomicBool::new(false),
            body_unread: AtomicBool::new(false),
            write_blocked_since: AtomicU64::new(0),
            wake: Notify::new(),
        });
        let mut conns = self.lock();
        conns.insert(id, Arc::clone(&conn));
        self.metrics.http_connections_open.set(conns.len() as i64);
        conn
    }

    /// Removes a connection; only [`Registration`]'s `Drop` calls this.
    fn remove(&self, conn: &Conn) {
        {
            let mut conns = self.lock();
            conns.remove(&conn.id);
            self.metrics.http_connections_open.set(conns.len() as i64);
        }
        if conn.shed.swap(false, Ordering::AcqRel) {
            self.shedding.fetch_sub(1, Ordering::AcqRel);
        }
        self.closed.notify_waiters();
    }

    /// Tells up to `n` of the longest-idle connections to close; returns how many were told.
    fn shed_idle(&self, n: usize) -> usize {
        let conns = self.lock();
        let states: Vec<(u64, ConnState)> = conns
            .values()
            .filter(|c| !c.shed.load(Ordering::Acquire))
            .map(|c| (c.id, c.state()))
            .collect();
        let victims = pick_shed(&states, n);
        for id in &victims {
            if let Some(c) = conns.get(id)
                && !c.shed.swap(true, Ordering::AcqRel)
            {
                self.shedding.fetch_add(1, Ordering::AcqRel);
                c.wake.notify_one();
            }
        }
        victims.len()
    }
}

/// A connection's entry in the table, removed when this is dropped: when its task returns, and
/// also when the task panics or is dropped unpolled (a leaked entry would count against the cap
/// forever, inflate `platte_http_connections_open`, and make the graceful shutdown wait for it
/// forever).
struct Registration {
    conn: Arc<Conn>,
    table: Arc<Table>,
}

impl Registration {
    /// Adds connection `id` to `table`.
    fn new(table: &Arc<Table>, id: u64) -> Self {
        Self {
            conn: table.insert(id),
            table: Arc::clone(table),
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!(
                conn = self.conn.id,
                "HTTP connection task panicked; connection closed"
            );
        }
        self.table.remove(&self.conn);
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// One open connection, shared by its task, its request/response bodies and the table.
#[derive(Debug)]
struct Conn {
    id: u64,
    /// Requests in flight (0: idle).
    in_flight: AtomicU32,
    /// Milliseconds since the epoch when the last request in flight ended (or the start).
    idle_since: AtomicU64,
    /// 0: no header byte while idle; else milliseconds + 1 when the header clock started.
    headers_since: AtomicU64,
    /// A read found nothing more since the connection became idle (see [`ConnState::Idle`]).
    quiet: AtomicBool,
    /// Told to close by the table (checked against its state by its own task).
    shed: AtomicBool,
    /// A request body stalled: close once the answer is written.
    body_timed_out: AtomicBool,
    /// The current request's body has not been read to its end (HTTP/1: one request at a time).
    body_unread: AtomicBool,
    /// 0: the last write made progress (or none was tried); else milliseconds + 1 when a write
    /// last found the socket full, with no byte written since.
    write_blocked_since: AtomicU64,
    /// Wakes the connection's task to re-evaluate (state change, shed, body timeout).
    wake: Notify,
}

impl Conn {
    /// When a write last found the socket full, with no byte written since.
    fn write_blocked_since(&self) -> Option<Duration> {
        match self.write_blocked_since.load(Ordering::Acquire) {
            0 => None,
            w => Some(Duration::from_millis(w - 1)),
        }
    }

    fn state(&self) -> ConnState {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return ConnState::Busy;
        }
        let since = Duration::from_millis(self.idle_since.load(Ordering::Acquire));
        let phase = match self.headers_since.load(Ordering::Acquire) {
            0 => IdlePhase::KeepAlive,
            h => IdlePhase::ReadingHeaders {
                since: Duration::from_millis(h - 1),
            },
        };
        ConnState::Idle {
            since,
            phase,
            quiet: self.quiet.load(Ordering::Acquire),
        }
    }
}

/// Why a connection task ended (for the logs and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closed {
    /// The connection finished: the client closed it, or its last answer was written (after a
    /// graceful stop, or when the request's body was not read to its end).
    Done,
    /// A protocol or I/O error.
    Failed,
    /// Shed to make room.
    Shed,
    /// A timeout.
    TimedOut(TimeoutKind),
    /// Idle while the server is stopping.
    Stopping,
}

/// Serves one connection until it closes, times out, is shed, or the server stops.
///
/// `registration` is the first parameter so that it is dropped last (parameters drop in reverse
/// order), also when the task panics: the socket is closed before the table hears that the
/// connection closed.
async fn run_connection(
    registration: Registration,
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    mut stop: watch::Receiver<bool>,
) {
    let conn = Arc::clone(&registration.conn);
    let table = Arc::clone(&registration.table);
    let io = TokioIo::new(Observed {
        inner: stream,
        conn: Arc::clone(&conn),
        epoch: table.epoch,
    });
    let service = ConnService {
        router,
        peer,
        conn: Arc::clone(&conn),
        table: Arc::clone(&table),
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    // Header and idle timeouts are ours (hyper's would also cut kept-alive connections).
    builder.header_read_timeout(None);
    let mut http = builder.serve_connection(io, service);
    let closed = {
        let mut stopping = *stop.borrow();
        let mut graceful = false;
        if stopping {
            Pin::new(&mut http).graceful_shutdown();
            graceful = true;
        }
        loop {
            let state = conn.state();
            let idle = state != ConnState::Busy;
            if conn.shed.load(Ordering::Acquire) {
                if idle {
                    break Closed::Shed;
                }
                // It became busy since it was chosen: keep it, it counts against the cap again.
                if conn.shed.swap(false, Ordering::AcqRel) {
                    table.shedding.fetch_sub(1, Ordering::AcqRel);
                }
            }
            if stopping && idle {
                break Closed::Stopping;
            }
            if !graceful && conn.body_timed_out.load(Ordering::Acquire) {
                // Answer the request (its handler saw the error), then close.
                Pin::new(&mut http).graceful_shutdown();
                graceful = true;
            }
            let due = deadline(state, conn.write_blocked_since(), &table.timeouts);
            let now = table.now();
            if let Some((at, kind)) = due
                && at <= now
            {
                break Closed::TimedOut(kind);
            }
            let sleep = due.map(|(at, _)| tokio::time::sleep_until(table.epoch + at));
            tokio::select! {
                r = std::future::poll_fn(|cx| http.poll_without_shutdown(cx)) => {
                    match r {
                        Ok(()) => break Closed::Done,
                        Err(e) => {
                            tracing::debug!(error = %e, %peer, "HTTP connection error");
                            break Closed::Failed;
                        }
                    }
                }
                () = conn.wake.notified() => {}
                () = async { if let Some(s) = sleep { s.await } else { std::future::pending().await } } => {}
                _ = stop.wait_for(|s| *s), if !stopping => {
                    stopping = true;
                    if !graceful {
                        Pin::new(&mut http).graceful_shutdown();
                        graceful = true;
                    }
                }
            }
        }
    };
    match closed {
        Closed::Shed => {
            table.metrics.http_connections_shed.inc();
        }
        Closed::TimedOut(kind) => {
            table.metrics.connection_timeout(kind);
            tracing::debug!(%peer, kind = kind.as_str(), "closing connection: timeout");
        }
        Closed::Done if !conn.body_timed_out.load(Ordering::Acquire) => {
            linger(http.into_parts().io.into_inner().inner, &conn).await;
        }
        Closed::Done | Closed::Failed | Closed::Stopping => {}
    }
    // The socket is closed by now (dropped with `http`, or by `linger`); dropping
    // `registration` removes the connection from the table.
}

/// Longest a finished connection's socket is read and discarded before it is closed.
const LINGER_TIME: Duration = Duration::from_secs(2);
/// Most bytes read and discarded that way.
const LINGER_BYTES: usize = 64 << 20;

/// Closes a connection whose last answer was written, the way HTTP/1.1 servers must (RFC 9112
/// §9.6, "lingering close"): the write side first, then reading and discarding what the client
/// still sends until it closes too (at most [`LINGER_TIME`] and [`LINGER_BYTES`], and no longer
/// once the connection is shed to make room). Closing a socket with unread data makes the
/// kernel reset the connection, and a client still sending a request body then loses the
/// answer that refused it (tests/server.rs: an upload refused for its token).
async fn linger(mut stream: TcpStream, conn: &Conn) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    if stream.shutdown().await.is_err() {
        return;
    }
    let drain = async {
        let mut buf = vec![0; 16 * 1024];
        let mut left = LINGER_BYTES;
        while left > 0 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let shed = async {
        while !conn.shed.load(Ordering::Acquire) {
            conn.wake.notified().await;
        }
    };
    tokio::select! {
        () = drain => {}
        () = shed => {}
        () = tokio::time::sleep(LINGER_TIME) => {}
    }
}

/// The socket, noting when the first byte of a request arrives on an idle connection (the
/// header-read clock of a kept-alive connection starts there) and when writing stalls (the
/// write-stall clock runs from the first write that finds the socket full, until a byte is
/// written).
struct Observed {
    inner: TcpStream,
    conn: Arc<Conn>,
    epoch: Instant,
}

impl Observed {
    /// Notes the outcome of a write: progress stops the write-stall clock, a full socket starts
    /// it (if not running) and wakes the connection's task to arm its deadline.
    fn note_write(&self, polled: &Poll<io::Result<usize>>) {
        match polled {
            Poll::Ready(Ok(n)) if *n > 0 => {
                self.conn.write_blocked_since.store(0, Ordering::Release);
            }
            Poll::Pending => {
                if self.conn.write_blocked_since.load(Ordering::Acquire) == 0 {
                    let now = millis(self.epoch.elapsed());
                    self.conn
                        .write_blocked_since
                        .store(now.saturating_add(1), Ordering::Release);
                    self.conn.wake.notify_one();
                }
            }
            Poll::Ready(_) => {}
        }
    }
}

impl AsyncRead for Observed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let Poll::Ready(read) = Pin::new(&mut self.inner).poll_read(cx, buf) else {
            // Nothing to read: no request of this client is waiting unread.
            if self.conn.in_flight.load(Ordering::Acquire) == 0 {
                self.conn.quiet.store(true, Ordering::Release);
            }
            return Poll::Pending;
        };
        read?;
        if buf.filled().len() > before
            && self.conn.in_flight.load(Ordering::Acquire) == 0
            && self.conn.headers_since.load(Ordering::Acquire) == 0
        {
            let now = millis(self.epoch.elapsed());
            self.conn.headers_since.store(now + 1, Ordering::Release);
            self.conn.wake.notify_one();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Observed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note_write(&polled);
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.note_write(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The per-connection service: marks the connection busy for the life of each request (until
/// its answer's body is written or dropped), adds `ConnectInfo<SocketAddr>` and the body-read
/// timeout, and calls the router.
#[derive(Clone)]
struct ConnService {
    router: Router,
    peer: SocketAddr,
    conn: Arc<Conn>,
    table: Arc<Table>,
}

impl hyper::service::Service<hyper::Request<Incoming>> for ConnService {
    type Response = hyper::Response<GuardedBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        let guard = BusyGuard::new(Arc::clone(&self.conn), Arc::clone(&self.table));
        self.conn
            .body_unread
            .store(!req.body().is_end_stream(), Ordering::Release);
        let body_timeout = TimeoutBody {
            inner: None,
            sleep: None,
            timeout: self.table.timeouts.body_read,
            conn: Arc::clone(&self.conn),
            table: Arc::clone(&self.table),
        };
        let mut req = req.map(|b| {
            axum::body::Body::new(TimeoutBody {
                inner: Some(b),
                ..body_timeout
            })
        });
        req.extensions_mut().insert(ConnectInfo(self.peer));
        let mut router = self.router.clone();
        let fut = tower_service::Service::call(&mut router, req);
        let peer = self.peer;
        let conn = Arc::clone(&self.conn);
        Box::pin(async move {
            let mut resp = match catch_panic(fut).await {
                Ok(Ok(r)) => r,
                Ok(Err(never)) => match never {},
                Err(payload) => {
                    tracing::error!(%peer, panic = panic_message(payload.as_ref()), "request handler panicked; answering 500");
                    hyper::Response::builder()
                        .status(hyper::StatusCode::INTERNAL_SERVER_ERROR)
                        .body(axum::body::Body::empty())
                        .unwrap_or_default()
                }
            };
            // Answered before its body was read to the end (a refusal from the headers): hyper
            // closes the connection after this answer, and says so only if told here. A client
            // not told would send its next request on a connection that is closing.
            if conn.body_unread.load(Ordering::Acquire) {
                resp.headers_mut().insert(
                    hyper::header::CONNECTION,
                    hyper::header::HeaderValue::from_static("close"),
                );
            }
            Ok(resp.map(|inner| GuardedBody {
                inner,
                _guard: guard,
            }))
        })
    }
}

/// Runs `fut`, turning a panic while it is polled into `Err` with the panic's payload (the
/// future is not polled again after that).
async fn catch_panic<F: Future>(fut: F) -> Result<F::Output, Box<dyn std::any::Any + Send>> {
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(move |cx| {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
            Ok(Poll::Ready(out)) => Poll::Ready(Ok(out)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => Poll::Ready(Err(payload)),
        }
    })
    .await
}

/// The message of a panic payload (`panic!` with a literal or a formatted message), if any.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// Counts a request in flight on its connection from the service call until dropped (with
/// the answer's body, or with the request future if the connection goes away first).
struct BusyGuard {
    conn: Arc<Conn>,
    table: Arc<Table>,
}

impl BusyGuard {
    fn new(conn: Arc<Conn>, table: Arc<Table>) -> Self {
        conn.in_flight.fetch_add(1, Ordering::AcqRel);
        conn.headers_since.store(0, Ordering::Release);
        conn.quiet.store(false, Ordering::Release);
        Self { conn, table }
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        if self.conn.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.conn
                .idle_since
                .store(millis(self.table.now()), Ordering::Release);
            self.conn.headers_since.store(0, Ordering::Release);
            self.conn.quiet.store(false, Ordering::Release);
            self.conn.wake.notify_one();
        }
    }
}

/// An answer's body, keeping its request counted as in flight until written or dropped.
struct GuardedBody {
    inner: axum::body::Body,
    _guard: BusyGuard,
}

impl HttpBody for GuardedBody {
    type Data = <axum::body::Body as HttpBody>::Data;
    type Error = <axum::body::Body as HttpBody>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body whose reader gets an error when the client sends nothing for the body-read
/// timeout while the handler waits for it; the connection is then closed after the answer.
struct TimeoutBody {
    inner: Option<Incoming>,
    /// Running while the handler waits for the next chunk.
    sleep: Option<Pin<Box<Sleep>>>,
    timeout: Duration,
    conn: Arc<Conn>,
    table: Arc<Table>,
}

/// The error a handler sees when a request body stalls.
#[derive(Debug, thiserror::Error)]
#[error("request body stalled: nothing received for {0:?}")]
pub struct BodyReadTimeout(pub Duration);

impl HttpBody for TimeoutBody {
    type Data = <Incoming as HttpBody>::Data;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(&mut *inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.sleep = None;
                if inner.is_end_stream() {
                    this.conn.body_unread.store(false, Ordering::Release);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.sleep = None;
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Ready(None) => {
                this.sleep = None;
                this.conn.body_unread.store(false, Ordering::Release);
                Poll::Ready(None)
            }
            Poll::Pending => {
                // The inactivity clock runs from the first poll that found nothing.
                let timeout = this.timeout;
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.sleep = None;
                this.inner = None;
                this.table.metrics.connection_timeout(TimeoutKind::Body);
                this.conn.body_timed_out.store(true, Ordering::Release);
                this.conn.wake.notify_one();
                Poll::Ready(Some(Err(Box::new(BodyReadTimeout(timeout)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), HttpBody::size_hint)
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Bytes;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::sync::oneshot;

    use super::*;

    /// How long the server gets to close a connection or to finish a graceful stop.
    const BOUND: Duration = Duration::from_secs(5);

    /// A response body that panics when hyper polls it: outside the handler, so the panic
    /// unwinds through the connection's task.
    struct PanickingBody;

    impl HttpBody for PanickingBody {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            panic!("response body panicked (test)")
        }
    }

    async fn handler_panics() -> &'static str {
        panic!("handler panicked (test)")
    }

    async fn body_panics() -> axum::body::Body {
        axum::body::Body::new(PanickingBody)
    }

    /// A server on 127.0.0.1 with `/ok`, `/handler-panics` and `/body-panics`.
    struct Running {
        addr: SocketAddr,
        metrics: Arc<Metrics>,
        stop: oneshot::Sender<()>,
        served: tokio::task::JoinHandle<io::Result<()>>,
    }

    async fn start() -> Running {
        let router = Router::new()
            .route("/ok", get(|| async { "ok" }))
            .route("/handler-panics", get(handler_panics))
            .route("/body-panics", get(body_panics));
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::new());
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(serve(
            listener,
            router,
            HttpSettings::default(),
            Arc::clone(&metrics),
            async {
                let _ = stopped.await;
            },
        ));
        Running {
            addr,
            metrics,
            stop,
            served,
        }
    }

    /// Sends `GET path` on `s` and returns the status line of the answer (empty if the
    /// connection closed first).
    async fn get_status(s: &mut TcpStream, path: &str) -> String {
        let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match tokio::time::timeout(BOUND, s.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => break,
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                Err(_) => panic!("no answer to {path} within {BOUND:?}"),
            }
        }
        let text = String::from_utf8_lossy(&got);
        text.lines().next().unwrap_or_default().to_owned()
    }

    /// Waits until the server's table of open connections is empty.
    async fn wait_no_connections(metrics: &Metrics) {
        let until = Instant::now() + BOUND;
        while metrics.http_connections_open.get() != 0 {
            assert!(
                Instant::now() < until,
                "{} connections still open after {BOUND:?}",
                metrics.http_connections_open.get()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn stop(server: Running) {
        let _ = server.stop.send(());
        tokio::time::timeout(BOUND, server.served)
            .await
            .expect("graceful shutdown did not complete")
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn a_panicking_handler_is_answered_500_and_the_connection_lives_on() {
        let server = start().await;
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        assert_eq!(
            get_status(&mut s, "/handler-panics").await,
            "HTTP/1.1 500 Internal Server Error"
        );
        assert_eq!(get_status(&mut s, "/ok").await, "HTTP/1.1 200 OK");
        assert_eq!(server.metrics.http_connections_open.get(), 1);
        drop(s);
        wait_no_connections(&server.metrics).await;
        stop(server).await;
    }

    #[tokio::test]
    async fn a_panicking_connection_task_leaves_the_table_and_shutdown_completes() {
        let server = start().await;
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        // The task dies: the client sees the connection close, not an answer.
        let _ = get_status(&mut s, "/body-panics").await;
        wait_no_connections(&server.metrics).await;
        // The server still serves new connections.
        let mut fresh = TcpStream::connect(server.addr).await.unwrap();
        assert_eq!(get_status(&mut fresh, "/ok").await, "HTTP/1.1 200 OK");
        drop(fresh);
        drop(s);
        stop(server).await;
    }
}
