//! Connection policy of the HTTP listener, without I/O: the `[http]` settings (timeouts and the
//! open-connection cap), when a connection times out, which idle connections are shed first
//! when the cap is reached, and the default cap derived from the open-file limit.
//!
//! Times are offsets from the listener's start ([`Duration`]), so the rules are tested without
//! a clock.

use std::time::Duration;

use serde::Deserialize;

use crate::config::ConfigError;

/// Default time a client has to send a request's headers, from the connection's start or from
/// the first byte of a request on a kept-alive connection (10 s).
pub const DEFAULT_HEADER_READ_TIMEOUT_MS: u64 = 10_000;
/// Default time a kept-alive connection may wait for its next request (60 s).
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 60;
/// Default longest wait for the next chunk of a request body (30 s); a body that keeps arriving
/// (a large package upload) is never cut.
pub const DEFAULT_BODY_READ_TIMEOUT_MS: u64 = 30_000;
/// Default time a client has to send the whole body of a request to an unauthenticated endpoint
/// with a small bounded body (Omaha, FleetLock) (30 s).
pub const DEFAULT_BODY_DEADLINE_MS: u64 = 30_000;
/// Default longest time the server may be unable to write any byte of an answer to a client
/// that does not read it (60 s).
pub const DEFAULT_WRITE_STALL_TIMEOUT_MS: u64 = 60_000;
/// Open files kept for everything but client connections: at least this many...
pub const MIN_RESERVED_FILES: u64 = 64;
/// ...and at least this fraction (1/N) of the limit (the database, package files being sent).
pub const RESERVED_FILES_DIVISOR: u64 = 4;
/// Cap used when the open-file limit is unlimited (the kernel's default `fs.nr_open`).
pub const UNLIMITED_FILES_CAP: u64 = 1 << 20;

/// HTTP connection options of `update-server serve`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct HttpArgs {
    /// Time a client has to send a request's headers, in milliseconds (100..=600000), counted
    /// from the connection's start or from a request's first byte [default: 10000].
    #[arg(long, env = "UPDATE_SERVER_HTTP_HEADER_READ_TIMEOUT_MS")]
    pub http_header_read_timeout_ms: Option<u64>,
    /// Time a kept-alive connection may wait for its next request, in seconds (1..=3600)
    /// [default: 60].
    #[arg(long, env = "UPDATE_SERVER_HTTP_IDLE_TIMEOUT_SECS")]
    pub http_idle_timeout_secs: Option<u64>,
    /// Longest wait for the next chunk of a request body, in milliseconds (100..=600000)
    /// [default: 30000].
    #[arg(long, env = "UPDATE_SERVER_HTTP_BODY_READ_TIMEOUT_MS")]
    pub http_body_read_timeout_ms: Option<u64>,
    /// Time a client has to send the whole body of an Omaha or FleetLock request, in
    /// milliseconds (100..=600000), counted from the end of its headers [default: 30000].
    #[arg(long, env = "UPDATE_SERVER_HTTP_BODY_DEADLINE_MS")]
    pub http_body_deadline_ms: Option<u64>,
    /// Longest time the server may be unable to write any byte of an answer (the client does
    /// not read it) before it closes the connection, in milliseconds (100..=600000)
    /// [default: 60000].
    #[arg(long, env = "UPDATE_SERVER_HTTP_WRITE_STALL_TIMEOUT_MS")]
    pub http_write_stall_timeout_ms: Option<u64>,
    /// Most open client connections; above it the oldest idle ones are closed [default: the
    /// open-file limit minus a quarter of it (at least 64) kept for the database and files].
    #[arg(long, env = "UPDATE_SERVER_HTTP_MAX_CONNECTIONS")]
    pub http_max_connections: Option<usize>,
}

/// The `[http]` table of the configuration file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HttpFile {
    /// See [`HttpArgs::http_header_read_timeout_ms`].
    pub header_read_timeout_ms: Option<u64>,
    /// See [`HttpArgs::http_idle_timeout_secs`].
    pub idle_timeout_secs: Option<u64>,
    /// See [`HttpArgs::http_body_read_timeout_ms`].
    pub body_read_timeout_ms: Option<u64>,
    /// See [`HttpArgs::http_body_deadline_ms`].
    pub body_deadline_ms: Option<u64>,
    /// See [`HttpArgs::http_write_stall_timeout_ms`].
    pub write_stall_timeout_ms: Option<u64>,
    /// See [`HttpArgs::http_max_connections`].
    pub max_connections: Option<usize>,
}

/// Validated HTTP connection settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpSettings {
    /// The connection timeouts.
    pub timeouts: Timeouts,
    /// Most open client connections (`None`: derived from the open-file limit at start).
    pub max_connections: Option<usize>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            timeouts: Timeouts {
                header_read: Duration::from_millis(DEFAULT_HEADER_READ_TIMEOUT_MS),
                idle: Duration::from_secs(DEFAULT_IDLE_TIMEOUT_SECS),
                body_read: Duration::from_millis(DEFAULT_BODY_READ_TIMEOUT_MS),
                body_deadline: Duration::from_millis(DEFAULT_BODY_DEADLINE_MS),
                write_stall: Duration::from_millis(DEFAULT_WRITE_STALL_TIMEOUT_MS),
            },
            max_connections: None,
        }
    }
}

impl HttpSettings {
    /// Merges arguments over the file over defaults, and validates.
    pub fn resolve(args: &HttpArgs, file: Option<&HttpFile>) -> Result<Self, ConfigError> {
        let header = args
            .http_header_read_timeout_ms
            .or_else(|| file.and_then(|f| f.header_read_timeout_ms))
            .unwrap_or(DEFAULT_HEADER_READ_TIMEOUT_MS);
        let idle = args
            .http_idle_timeout_secs
            .or_else(|| file.and_then(|f| f.idle_timeout_secs))
            .unwrap_or(DEFAULT_IDLE_TIMEOUT_SECS);
        let body = args
            .http_body_read_timeout_ms
            .or_else(|| file.and_then(|f| f.body_read_timeout_ms))
            .unwrap_or(DEFAULT_BODY_READ_TIMEOUT_MS);
        let body_deadline = args
            .http_body_deadline_ms
            .or_else(|| file.and_then(|f| f.body_deadline_ms))
            .unwrap_or(DEFAULT_BODY_DEADLINE_MS);
        let write_stall = args
            .http_write_stall_timeout_ms
            .or_else(|| file.and_then(|f| f.write_stall_timeout_ms))
            .unwrap_or(DEFAULT_WRITE_STALL_TIMEOUT_MS);
        let max = args
            .http_max_connections
            .or_else(|| file.and_then(|f| f.max_connections));
        let range = |key: &'static str, v: u64, lo: u64, hi: u64| {
            if (lo..=hi).contains(&v) {
                Ok(v)
            } else {
                Err(ConfigError::Invalid {
                    key,
                    reason: format!("{v} is outside {lo}..={hi}"),
                })
            }
        };
        let header = range("http.header_read_timeout_ms", header, 100, 600_000)?;
        let idle = range("http.idle_timeout_secs", idle, 1, 3600)?;
        let body = range("http.body_read_timeout_ms", body, 100, 600_000)?;
        let body_deadline = range("http.body_deadline_ms", body_deadline, 100, 600_000)?;
        let write_stall = range("http.write_stall_timeout_ms", write_stall, 100, 600_000)?;
        if let Some(m) = max {
            range("http.max_connections", m as u64, 1, UNLIMITED_FILES_CAP)?;
        }
        Ok(Self {
            timeouts: Timeouts {
                header_read: Duration::from_millis(header),
                idle: Duration::from_secs(idle),
                body_read: Duration::from_millis(body),
                body_deadline: Duration::from_millis(body_deadline),
                write_stall: Duration::from_millis(write_stall),
            },
            max_connections: max,
        })
    }
}

/// The connection timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Time to send a request's headers: from the connection's start for its first request,
    /// from the first byte of the next request on a kept-alive connection.
    pub header_read: Duration,
    /// Time a kept-alive connection may stay silent between requests.
    pub idle: Duration,
    /// Longest wait for the next chunk of a request body while a handler reads it.
    pub body_read: Duration,
    /// Time to send the whole body of a request to an endpoint with a small bounded body
    /// (Omaha, FleetLock), from the end of its headers; applied by
    /// [`super::body_deadline`], not by the listener.
    pub body_deadline: Duration,
    /// Longest time a pending write of the answer may make no progress (the client does not
    /// read).
    pub write_stall: Duration,
}

/// Which timeout closed a connection (the `kind` label of the timeout counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutKind {
    /// Request headers not complete in time.
    Header,
    /// Kept-alive connection silent for too long.
    Idle,
    /// Request body stalled, or (bounded endpoints) not complete by its deadline.
    Body,
    /// Answer not written: the client read nothing for the write-stall timeout.
    Write,
}

impl TimeoutKind {
    /// Metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Header => "header",
            Self::Idle => "idle",
            Self::Body => "body",
            Self::Write => "write",
        }
    }
}

/// What a connection is doing, as far as timeouts and shedding are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// A request is in flight: its body being read, its handler running or its answer being
    /// written. Never shed; only the body timeouts and the write-stall timeout apply.
    Busy,
    /// No request in flight since `since` (the connection's start, or the end of its last
    /// answer).
    Idle {
        /// When the connection became idle.
        since: Duration,
        /// Waiting for a request, or part way through its headers.
        phase: IdlePhase,
        /// A read found nothing more to parse since it became idle: no request of its client is
        /// waiting unread in its buffers (false for a connection accepted but not yet read).
        quiet: bool,
    },
}

/// The two kinds of idle connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdlePhase {
    /// Kept alive after an answer; no byte of the next request yet.
    KeepAlive,
    /// Reading a request's headers since `since` (a new connection counts from its start).
    ReadingHeaders {
        /// When the header clock started.
        since: Duration,
    },
}

/// When the connection in `state` times out, and which timeout it is (`None`: never, a busy
/// connection whose writes make progress). `write_blocked_since`: when a write of the
/// connection last found the socket full with no byte written since (busy or idle alike: an
/// answer handed over whole may still sit in the connection's buffers). The earliest deadline
/// wins; on a tie, the read-side one.
pub fn deadline(
    state: ConnState,
    write_blocked_since: Option<Duration>,
    t: &Timeouts,
) -> Option<(Duration, TimeoutKind)> {
    let read = match state {
        ConnState::Busy => None,
        ConnState::Idle {
            since,
            phase: IdlePhase::KeepAlive,
            ..
        } => Some((since.saturating_add(t.idle), TimeoutKind::Idle)),
        ConnState::Idle {
            phase: IdlePhase::ReadingHeaders { since },
            ..
        } => Some((since.saturating_add(t.header_read), TimeoutKind::Header)),
    };
    let write = write_blocked_since.map(|s| (s.saturating_add(t.write_stall), TimeoutKind::Write));
    [read, write]
        .into_iter()
        .flatten()
        .min_by_key(|&(at, _)| at)
}

/// Up to `n` connections to shed: idle and quiet ones only, the longest idle first (ties: the
/// older connection id first). Busy connections are never chosen, nor idle ones not read since
/// they became idle (a client that has just connected, whose request may be waiting unread: in
/// a burst of new connections, the legitimate ones are not shed before they are read).
pub fn pick_shed(conns: &[(u64, ConnState)], n: usize) -> Vec<u64> {
    let mut idle: Vec<(Duration, u64)> = conns
        .iter()
        .filter_map(|&(id, s)| match s {
            ConnState::Idle {
                since, quiet: true, ..
            } => Some((since, id)),
            ConnState::Idle { .. } | ConnState::Busy => None,
        })
        .collect();
    if n == 0 || idle.is_empty() {
        return Vec::new();
    }
    if n < idle.len() {
        idle.select_nth_unstable(n - 1);
        idle.truncate(n);
    }
    idle.sort_unstable();
    idle.into_iter().map(|(_, id)| id).collect()
}

/// How many idle connections to shed at once when the cap is reached: about 1 % of the cap
/// (1..=256), so that a flood of new connections costs one scan of the table per batch rather
/// than per connection.
pub fn shed_batch(cap: usize) -> usize {
    (cap / 100).clamp(1, 256)
}

/// The default connection cap for a soft open-file limit (`None`: unlimited): the limit minus
/// a reserve of a quarter of it (at least [`MIN_RESERVED_FILES`]) for the database, package
/// files being sent and the listener; at least 16.
pub fn default_max_connections(nofile_soft: Option<u64>) -> usize {
    let limit = nofile_soft.unwrap_or(UNLIMITED_FILES_CAP);
    let reserve = (limit / RESERVED_FILES_DIVISOR).max(MIN_RESERVED_FILES);
    let cap = limit.saturating_sub(reserve).clamp(16, UNLIMITED_FILES_CAP);
    usize::try_from(cap).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn idle(since: u64) -> ConnState {
        ConnState::Idle {
            since: ms(since),
            phase: IdlePhase::KeepAlive,
            quiet: true,
        }
    }

    fn reading(since: u64, headers: u64) -> ConnState {
        ConnState::Idle {
            since: ms(since),
            phase: IdlePhase::ReadingHeaders { since: ms(headers) },
            quiet: true,
        }
    }

    fn unread(since: u64) -> ConnState {
        ConnState::Idle {
            since: ms(since),
            phase: IdlePhase::ReadingHeaders { since: ms(since) },
            quiet: false,
        }
    }

    #[test]
    fn sheds_the_longest_idle_first_and_never_a_busy_one() {
        let conns = [
            (1, ConnState::Busy),
            (2, idle(500)),
            (3, reading(100, 400)),
            (4, idle(300)),
            (5, ConnState::Busy),
            (6, reading(300, 300)),
        ];
        assert_eq!(pick_shed(&conns, 1), [3]);
        assert_eq!(pick_shed(&conns, 3), [3, 4, 6], "ties: older id first");
        assert_eq!(pick_shed(&conns, 10), [3, 4, 6, 2], "only idle ones");
        assert!(pick_shed(&conns, 0).is_empty());
        assert!(pick_shed(&[(1, ConnState::Busy)], 5).is_empty());
        // Accepted, not read yet: kept even when it is the oldest and nothing else is idle.
        let conns = [(1, unread(0)), (2, idle(700)), (3, ConnState::Busy)];
        assert_eq!(pick_shed(&conns, 5), [2]);
        assert!(pick_shed(&conns[..1], 5).is_empty());
    }

    #[test]
    fn deadlines_follow_the_phase() {
        let t = Timeouts {
            header_read: ms(10_000),
            idle: ms(60_000),
            body_read: ms(30_000),
            body_deadline: ms(30_000),
            write_stall: ms(60_000),
        };
        let deadline = |s, t: &Timeouts| super::deadline(s, None, t);
        assert_eq!(deadline(ConnState::Busy, &t), None);
        assert_eq!(
            deadline(idle(1_000), &t),
            Some((ms(61_000), TimeoutKind::Idle))
        );
        // A new connection: the header clock runs from its start.
        assert_eq!(
            deadline(reading(1_000, 1_000), &t),
            Some((ms(11_000), TimeoutKind::Header))
        );
        assert_eq!(
            deadline(unread(1_000), &t),
            Some((ms(11_000), TimeoutKind::Header)),
            "unread or not, the header clock runs"
        );
        // Kept alive, then the first byte of the next request: from that byte.
        assert_eq!(
            deadline(reading(1_000, 50_000), &t),
            Some((ms(60_000), TimeoutKind::Header))
        );
    }

    #[test]
    fn a_stalled_write_times_out_busy_or_idle() {
        let t = Timeouts {
            header_read: ms(10_000),
            idle: ms(60_000),
            body_read: ms(30_000),
            body_deadline: ms(30_000),
            write_stall: ms(20_000),
        };
        // Busy: no other deadline; a write blocked since 5 s times out at 25 s.
        assert_eq!(
            deadline(ConnState::Busy, Some(ms(5_000)), &t),
            Some((ms(25_000), TimeoutKind::Write))
        );
        // Idle, its answer still in the buffers: the earlier of the two deadlines.
        assert_eq!(
            deadline(idle(1_000), Some(ms(2_000)), &t),
            Some((ms(22_000), TimeoutKind::Write))
        );
        assert_eq!(
            deadline(idle(1_000), Some(ms(50_000)), &t),
            Some((ms(61_000), TimeoutKind::Idle))
        );
        assert_eq!(
            deadline(reading(0, 1_000), Some(ms(0)), &t),
            Some((ms(11_000), TimeoutKind::Header))
        );
        // A tie goes to the read side.
        assert_eq!(
            deadline(idle(0), Some(ms(40_000)), &t),
            Some((ms(60_000), TimeoutKind::Idle))
        );
        assert_eq!(TimeoutKind::Write.as_str(), "write");
    }

    #[test]
    fn default_cap_keeps_a_reserve_of_files() {
        assert_eq!(default_max_connections(Some(1024)), 768);
        assert_eq!(default_max_connections(Some(65_536)), 49_152);
        assert_eq!(default_max_connections(Some(200)), 136, "at least 64 kept");
        assert_eq!(default_max_connections(Some(20)), 16);
        assert_eq!(default_max_connections(None), (1 << 20) - (1 << 18));
        assert_eq!(shed_batch(768), 7);
        assert_eq!(shed_batch(50), 1);
        assert_eq!(shed_batch(49_152), 256);
    }

    #[test]
    fn settings_merge_and_validate() {
        let s = HttpSettings::resolve(&HttpArgs::default(), None).unwrap();
        assert_eq!(s, HttpSettings::default());
        assert_eq!(s.timeouts.header_read, ms(10_000));
        assert_eq!(s.timeouts.idle, Duration::from_secs(60));
        assert_eq!(s.timeouts.body_read, ms(30_000));
        assert_eq!(s.timeouts.body_deadline, ms(30_000));
        assert_eq!(s.timeouts.write_stall, ms(60_000));
        let file: HttpFile =
            toml::from_str("header_read_timeout_ms = 2000\nmax_connections = 100\nbody_deadline_ms = 5000\nwrite_stall_timeout_ms = 7000").unwrap();
        let args = HttpArgs {
            http_header_read_timeout_ms: Some(3000),
            ..Default::default()
        };
        let s = HttpSettings::resolve(&args, Some(&file)).unwrap();
        assert_eq!(s.timeouts.header_read, ms(3000), "arguments beat the file");
        assert_eq!(s.max_connections, Some(100));
        assert_eq!(s.timeouts.body_deadline, ms(5000));
        assert_eq!(s.timeouts.write_stall, ms(7000));
        for (args, key) in [
            (
                HttpArgs {
                    http_header_read_timeout_ms: Some(0),
                    ..Default::default()
                },
                "http.header_read_timeout_ms",
            ),
            (
                HttpArgs {
                    http_idle_timeout_secs: Some(3601),
                    ..Default::default()
                },
                "http.idle_timeout_secs",
            ),
            (
                HttpArgs {
                    http_body_read_timeout_ms: Some(99),
                    ..Default::default()
                },
                "http.body_read_timeout_ms",
            ),
            (
                HttpArgs {
                    http_body_deadline_ms: Some(600_001),
                    ..Default::default()
                },
                "http.body_deadline_ms",
            ),
            (
                HttpArgs {
                    http_write_stall_timeout_ms: Some(50),
                    ..Default::default()
                },
                "http.write_stall_timeout_ms",
            ),
            (
                HttpArgs {
                    http_max_connections: Some(0),
                    ..Default::default()
                },
                "http.max_connections",
            ),
        ] {
            let err = HttpSettings::resolve(&args, None).unwrap_err();
            assert!(err.to_string().contains(key), "{err}");
        }
        assert!(toml::from_str::<HttpFile>("idle_timeout = 1").is_err());
    }
}
