//! Standard output of the `update-server` command line that survives its reader going away.
//!
//! `update-server app list | head -1` closes the pipe after one line. Rust ignores `SIGPIPE`, so
//! the next write fails with `EPIPE`, and `println!` panics on that (exit status 101). The
//! [`outln!`](crate::outln) and [`out!`](crate::out) macros print like `println!` and `print!`,
//! but the first `EPIPE` marks standard output closed and every later print is discarded: the
//! command still finishes (the server already did what was asked) and exits with its own status,
//! without a message, and `serve` keeps serving. Any other write error (a full disk behind a
//! redirection) is reported once on stderr and makes `main` exit with a failure ([`failed`]).

use std::fmt;
use std::io::{self, Write as _};
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once a write failed with `EPIPE`: nobody reads any more.
static CLOSED: AtomicBool = AtomicBool::new(false);
/// Set once a write failed otherwise.
static FAILED: AtomicBool = AtomicBool::new(false);

/// Writes `args` to standard output (see the module documentation); what [`outln!`](crate::outln)
/// and [`out!`](crate::out) call.
pub fn print(args: fmt::Arguments<'_>) {
    if CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut out = io::stdout().lock();
    if let Err(e) = out.write_fmt(args) {
        if e.kind() == io::ErrorKind::BrokenPipe {
            CLOSED.store(true, Ordering::Relaxed);
        } else if !FAILED.swap(true, Ordering::Relaxed) {
            let _ = writeln!(
                io::stderr(),
                "update-server: cannot write to standard output: {e}"
            );
        }
    }
}

/// Whether a write to standard output failed for another reason than a closed pipe.
pub fn failed() -> bool {
    FAILED.load(Ordering::Relaxed)
}

/// Whether standard output was closed by its reader (an `EPIPE` was seen).
pub fn closed() -> bool {
    CLOSED.load(Ordering::Relaxed)
}

/// `println!` that never panics on a closed pipe (see [`crate::stdout`]).
#[macro_export]
macro_rules! outln {
    () => {
        $crate::stdout::print(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::stdout::print(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` that never panics on a closed pipe (see [`crate::stdout`]).
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::stdout::print(format_args!($($arg)*))
    };
}
