//! Standard output that survives its reader going away: `payload inspect --operations X | head`
//! closes the pipe early, the next write fails with `EPIPE` (Rust ignores `SIGPIPE`), and
//! `println!` would panic on it. Through [`Output`] the first `EPIPE` marks the output closed and
//! every later write is discarded: the command still finishes and exits with its own status,
//! without a message. Other write errors are returned as usual.

use std::io::{self, Write};

/// A writer that turns a closed pipe into "discard everything from now on".
pub struct Output<W: Write> {
    inner: W,
    closed: bool,
}

impl Output<io::Stdout> {
    /// Standard output.
    pub fn stdout() -> Self {
        Self {
            inner: io::stdout(),
            closed: false,
        }
    }
}

impl<W: Write> Output<W> {
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
