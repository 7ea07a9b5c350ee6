//! Standard output of the command-line tools (`update-agent`, `updatectl`) that survives its
//! reader going away.
//!
//! `update-agent check-config | head -1` closes the pipe after one line. Rust ignores `SIGPIPE`,
//! so the next write fails with `EPIPE`, and `println!` panics on that (exit status 101). Written
//! through an [`Output`], the first `EPIPE` marks the output closed and every later write is
//! discarded: the command still finishes what it does (`mark-good` still marks the slot) and
//! exits with its own status, without a message. A command that only prints until interrupted
//! (`updatectl watch`) asks [`Output::is_closed`] and stops, exit status 0. Any other write
//! error (a full disk behind a redirection) is returned as usual.

use std::io::{self, Write};

/// A writer that turns a closed pipe into "discard everything from now on".
#[derive(Debug)]
pub struct Output<W: Write> {
    inner: W,
    closed: bool,
}

impl Output<io::Stdout> {
    /// Standard output (locked for each write only, so holding it blocks nobody).
    pub fn stdout() -> Self {
        Self::new(io::stdout())
    }
}

impl<W: Write> Output<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            closed: false,
        }
    }

    /// Whether the reader has gone away (a write or flush failed with `EPIPE`).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// `result`, with a broken pipe turned into `ok` (and the output marked closed).
    fn absorb<T>(&mut self, result: io::Result<T>, ok: T) -> io::Result<T> {
        match result {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(ok)
            }
            other => other,
        }
    }
}

impl<W: Write> Write for Output<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.closed {
            return Ok(buf.len());
        }
        let r = self.inner.write(buf);
        self.absorb(r, buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.closed {
            return Ok(());
        }
        let r = self.inner.flush();
        self.absorb(r, ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Accepts `room` bytes, then fails with `kind`.
    struct Pipe {
        room: usize,
        got: Vec<u8>,
        kind: io::ErrorKind,
    }

    impl Write for Pipe {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(self.kind.into());
            }
            let n = buf.len().min(self.room);
            self.room -= n;
            self.got.extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_pipe_discards_the_rest_without_an_error() {
        let mut out = Output::new(Pipe {
            room: 4,
            got: Vec::new(),
            kind: io::ErrorKind::BrokenPipe,
        });
        writeln!(out, "one").unwrap();
        assert!(!out.is_closed());
        writeln!(out, "two").unwrap();
        assert!(out.is_closed());
        writeln!(out, "three").unwrap();
        out.flush().unwrap();
        assert_eq!(out.inner.got, b"one\n");
    }

    #[test]
    fn other_write_errors_are_returned() {
        let mut out = Output::new(Pipe {
            room: 0,
            got: Vec::new(),
            kind: io::ErrorKind::StorageFull,
        });
        let e = writeln!(out, "x").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::StorageFull);
        assert!(!out.is_closed());
    }
}
