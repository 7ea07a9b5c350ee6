//! Log output of this binary: `tracing` events on standard error, filtered by `RUST_LOG`
//! (default `info`), in one of three forms ([`Destination`]):
//!
//! - a terminal: coloured, unless `NO_COLOR` is set to anything but the empty string;
//! - a file or a pipe: plain text, never an escape sequence;
//! - the systemd journal (`JOURNAL_STREAM`, which systemd sets to `device:inode`, names standard
//!   error): plain text without a timestamp (the journal keeps its own), each line starting with
//!   its sd-daemon(3) priority, `<3>` error, `<4>` warn, `<6>` info, `<7>` debug and trace, so
//!   that `journalctl -p err` selects by level.
//!
//! `update-server` and `update-agent` both call [`init`] first thing.

use std::ffi::OsStr;
use std::io::IsTerminal as _;
use std::os::fd::AsFd as _;
use std::os::unix::fs::MetadataExt as _;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Where log lines go, which decides their form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// A terminal, `NO_COLOR` unset: coloured text.
    Terminal,
    /// A file, a pipe, or a terminal with `NO_COLOR`: plain text.
    Plain,
    /// The systemd journal: plain text after a `<N>` priority prefix, no timestamp.
    Journal,
}

impl Destination {
    /// Decides from `JOURNAL_STREAM` (`device:inode` in decimal), standard error's device and
    /// inode (if known), whether standard error is a terminal, and `NO_COLOR`.
    pub fn decide(
        journal_stream: Option<&OsStr>,
        stderr_id: Option<(u64, u64)>,
        terminal: bool,
        no_color: Option<&OsStr>,
    ) -> Self {
        let journal = journal_stream
            .and_then(OsStr::to_str)
            .and_then(parse_device_inode);
        if journal.is_some() && journal == stderr_id {
            Self::Journal
        } else if terminal && no_color.is_none_or(OsStr::is_empty) {
            Self::Terminal
        } else {
            Self::Plain
        }
    }

    /// This process's: its environment and its standard error.
    pub fn of_process() -> Self {
        let stderr = std::io::stderr();
        let stderr_id = stderr
            .as_fd()
            .try_clone_to_owned()
            .and_then(|fd| std::fs::File::from(fd).metadata())
            .ok()
            .map(|m| (m.dev(), m.ino()));
        Self::decide(
            std::env::var_os("JOURNAL_STREAM").as_deref(),
            stderr_id,
            stderr.is_terminal(),
            std::env::var_os("NO_COLOR").as_deref(),
        )
    }
}

/// `device:inode` as `JOURNAL_STREAM` writes them.
fn parse_device_inode(s: &str) -> Option<(u64, u64)> {
    let (device, inode) = s.trim().split_once(':')?;
    Some((device.parse().ok()?, inode.parse().ok()?))
}

/// The sd-daemon(3) (syslog) priority of a level.
pub fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// An event format that writes the event's priority prefix before the inner format's line.
struct WithPriority<F>(F);

impl<S, N, F> FormatEvent<S, N> for WithPriority<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        write!(writer, "<{}>", priority(event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

/// Installs the global subscriber: standard error, `RUST_LOG` or `info`, the form
/// [`Destination::of_process`] decides.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match Destination::of_process() {
        Destination::Terminal => builder.with_ansi(true).init(),
        Destination::Plain => builder.with_ansi(false).init(),
        Destination::Journal => builder
            .with_ansi(false)
            .event_format(WithPriority(
                tracing_subscriber::fmt::format().without_time(),
            ))
            .init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(s: &str) -> Option<&OsStr> {
        Some(OsStr::new(s))
    }

    #[test]
    fn the_journal_is_standard_error_only_when_device_and_inode_match() {
        let decide = |stream, id, terminal| Destination::decide(stream, id, terminal, None);
        assert_eq!(
            decide(os("8:1234"), Some((8, 1234)), false),
            Destination::Journal
        );
        assert_eq!(
            decide(os(" 8:1234\n"), Some((8, 1234)), false),
            Destination::Journal
        );
        // stdout in the journal, stderr redirected elsewhere.
        assert_eq!(
            decide(os("8:1234"), Some((8, 99)), false),
            Destination::Plain
        );
        assert_eq!(decide(os("8:1234"), None, false), Destination::Plain);
        for garbage in ["", "8", "8:", ":1", "a:b", "8:1:2"] {
            assert_eq!(
                decide(os(garbage), Some((8, 1)), false),
                Destination::Plain,
                "{garbage:?}"
            );
        }
        assert_eq!(decide(None, Some((8, 1)), true), Destination::Terminal);
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        let decide = |terminal, no_color| Destination::decide(None, None, terminal, no_color);
        assert_eq!(decide(true, None), Destination::Terminal);
        assert_eq!(decide(true, os("1")), Destination::Plain);
        // no-color.org: an empty NO_COLOR is as if unset.
        assert_eq!(decide(true, os("")), Destination::Terminal);
        assert_eq!(decide(false, None), Destination::Plain);
        assert_eq!(decide(false, os("1")), Destination::Plain);
    }

    #[test]
    fn levels_map_to_sd_daemon_priorities() {
        assert_eq!(priority(&Level::ERROR), 3);
        assert_eq!(priority(&Level::WARN), 4);
        assert_eq!(priority(&Level::INFO), 6);
        assert_eq!(priority(&Level::DEBUG), 7);
        assert_eq!(priority(&Level::TRACE), 7);
    }
}
