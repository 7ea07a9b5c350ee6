//! Crashes at an exact write, deterministically: a command run under `strace`, which records
//! every `pwrite64` the process (all its threads) makes to one file and can `SIGKILL` it on
//! entering the Nth one, before that write happens (strace's syscall tampering:
//! `-P FILE -e inject=pwrite64:error=EIO:signal=KILL:when=N`).
//!
//! strace counts calls *per thread*: `when=N` hits the first thread to reach its Nth write to the
//! file. [`kill_point`] picks N for a write seen in a reference run and refuses when another
//! thread could get there first; [`Traced::killed_at`] tells which write the process really died
//! at, so a scenario checks it hit the one it meant.
//!
//! strace needs ptrace; [`available`] says whether it can be used here (scenarios that need it
//! then return early with a loud note, as for `dbus-daemon`).

use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::error::{Error, Result, io};

/// Whether `strace` is installed and may trace a child (ptrace allowed); prints a loud note when
/// it cannot.
pub fn available() -> bool {
    let ok = testkit::tool_runs("strace", &["-qq", "-e", "trace=none", "true"]);
    if !ok {
        eprintln!(
            "!!!!! SKIPPED: strace is not installed or may not trace (ptrace); kill -9 at GPT writes NOT tested !!!!!"
        );
    }
    ok
}

/// One `pwrite64` to the traced file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// Thread id.
    pub tid: u32,
    /// Byte offset in the file.
    pub offset: u64,
    /// Bytes asked to write.
    pub len: u64,
    /// Whether it completed (`false`: the process died on entering it).
    pub done: bool,
}

/// What a traced run did.
#[derive(Debug, Clone)]
pub struct Traced {
    /// Exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    /// Its writes to the file, in the order strace saw them start.
    pub writes: Vec<Write>,
    /// Its standard error (the agent's log).
    pub stderr: String,
}

impl Traced {
    /// The write the process was killed on entering, if it was.
    pub fn killed_at(&self) -> Option<&Write> {
        if self.signal != Some(9) {
            return None;
        }
        self.writes.iter().rev().find(|w| !w.done)
    }
}

/// Runs `cmd` (its program, arguments, environment and directory) under strace, recording its
/// `pwrite64` calls to `file` in `trace_log`; with `kill_at = Some(n)`, the first thread to
/// enter its `n`th such call is killed with `SIGKILL` before the write happens.
pub fn run(cmd: &Command, file: &Path, kill_at: Option<u32>, trace_log: &Path) -> Result<Traced> {
    let mut s = Command::new("strace");
    // -f: all threads; -qq: no attach/exit chatter; -s 0: no data strings in the trace.
    s.args(["-f", "-qq", "-s", "0", "-o"])
        .arg(trace_log)
        .arg("-P")
        .arg(file)
        .args(["-e", "trace=pwrite64"]);
    if let Some(n) = kill_at {
        s.args([
            "-e",
            &format!("inject=pwrite64:error=EIO:signal=KILL:when={n}"),
        ]);
    }
    s.arg("--").arg(cmd.get_program()).args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => s.env(k, v),
            None => s.env_remove(k),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        s.current_dir(dir);
    }
    let out = s
        .stdin(Stdio::null())
        .output()
        .map_err(io("running strace", "strace"))?;
    let trace = std::fs::read_to_string(trace_log).map_err(io("reading a trace", trace_log))?;
    Ok(Traced {
        code: out.status.code(),
        signal: out.status.signal(),
        writes: parse(&trace)?,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// The `when=` that kills a run at `writes[index]` of a reference run (its ordinal among its
/// thread's writes), provided no other thread reaches as many writes before it in that run.
pub fn kill_point(writes: &[Write], index: usize) -> Result<u32> {
    let target = writes.get(index).ok_or_else(|| Error::Unexpected {
        what: "kill point",
        detail: format!("no write {index} among {}", writes.len()),
    })?;
    let before = &writes[..index];
    let n = before.iter().filter(|w| w.tid == target.tid).count() + 1;
    let mut per_thread = std::collections::BTreeMap::new();
    for w in before.iter().filter(|w| w.tid != target.tid) {
        *per_thread.entry(w.tid).or_insert(0usize) += 1;
    }
    if let Some((tid, count)) = per_thread.iter().find(|(_, c)| **c >= n) {
        return Err(Error::Unexpected {
            what: "kill point",
            detail: format!(
                "write {index} ({target:?}) is write {n} of its thread, but thread {tid} made {count} \
                 writes before it: strace's per-thread count cannot single it out"
            ),
        });
    }
    u32::try_from(n).map_err(|_| Error::Unexpected {
        what: "kill point",
        detail: format!("write {index} is write {n} of its thread"),
    })
}

/// Parses an `strace -f -s 0 -e trace=pwrite64` log: lines `TID pwrite64(FD, ""..., LEN, OFF) = R`,
/// also split in `<unfinished ...>` / `<... pwrite64 resumed>) = R` halves when threads
/// interleave; `= ?` (or no result at all) is a call the process died in.
fn parse(trace: &str) -> Result<Vec<Write>> {
    let mut out: Vec<Write> = Vec::new();
    for line in trace.lines() {
        let bad = || Error::Unexpected {
            what: "strace line",
            detail: line.to_owned(),
        };
        let (tid, rest) = line.trim().split_once(' ').ok_or_else(bad)?;
        let tid: u32 = tid.parse().map_err(|_| bad())?;
        let rest = rest.trim_start();
        if let Some(resumed) = rest.strip_prefix("<... pwrite64 resumed>") {
            let w = out
                .iter_mut()
                .rev()
                .find(|w| w.tid == tid && !w.done)
                .ok_or_else(bad)?;
            w.done = split_result(resumed).is_some_and(|(_, r)| completed(r));
            continue;
        }
        let Some(call) = rest.strip_prefix("pwrite64(") else {
            continue; // signals, exits
        };
        let (args, result) = match call.split_once(" <unfinished ...>") {
            Some((args, _)) => (args, None),
            None => {
                let (args, result) = split_result(call).ok_or_else(bad)?;
                (args, Some(result))
            }
        };
        let mut fields = args.rsplitn(3, ',');
        let offset = fields.next().and_then(|f| f.trim().parse().ok());
        let len = fields.next().and_then(|f| f.trim().parse().ok());
        let (Some(offset), Some(len)) = (offset, len) else {
            return Err(bad());
        };
        out.push(Write {
            tid,
            offset,
            len,
            done: result.is_some_and(completed),
        });
    }
    Ok(out)
}

/// Splits `ARGS) = RESULT` at the parenthesis that closes the arguments (the last one followed
/// by `=`; an error result has parentheses of its own: `= -1 EIO (Input/output error)`).
fn split_result(call: &str) -> Option<(&str, &str)> {
    call.rmatch_indices(')')
        .map(|(i, _)| i)
        .find(|&i| call[i + 1..].trim_start().starts_with('='))
        .map(|i| (&call[..i], &call[i + 1..]))
}

/// Whether the result part of a call (` = N`, after its closing parenthesis) reports a
/// completed write (not `?`, not an error).
fn completed(result: &str) -> bool {
    result
        .trim_start()
        .strip_prefix('=')
        .and_then(|r| r.split_whitespace().next())
        .is_some_and(|r| r.parse::<u64>().is_ok())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_whole_split_and_killed_calls() {
        let trace = "\
10 pwrite64(12, \"\"..., 16384, 1024)  = 16384
10 pwrite64(12, \"\"..., 92, 512 <unfinished ...>
11 pwrite64(12, \"\"..., 262144, 5242880) = -1 EIO (Input/output error)
10 <... pwrite64 resumed>) = 92
10 pwrite64(12, \"\"..., 92, 11533824) = ?
10 +++ killed by SIGKILL +++
";
        let w = parse(trace).unwrap();
        let short: Vec<_> = w.iter().map(|w| (w.tid, w.offset, w.len, w.done)).collect();
        assert_eq!(
            short,
            [
                (10, 1024, 16384, true),
                (10, 512, 92, true),
                (11, 5242880, 262144, false),
                (10, 11533824, 92, false),
            ]
        );
        let t = Traced {
            code: None,
            signal: Some(9),
            writes: w,
            stderr: String::new(),
        };
        assert_eq!(t.killed_at().unwrap().offset, 11533824);
    }

    #[test]
    fn kill_points_count_per_thread_and_refuse_ambiguity() {
        let w = |tid, offset| Write {
            tid,
            offset,
            len: 1,
            done: true,
        };
        let writes = [w(1, 0), w(1, 1), w(2, 2), w(2, 3), w(2, 4), w(1, 5)];
        assert_eq!(kill_point(&writes, 0).unwrap(), 1);
        assert_eq!(kill_point(&writes, 1).unwrap(), 2);
        // Thread 2's first write: thread 1 made 2 writes before it, so `when=1` would hit
        // thread 1's first write instead.
        assert!(kill_point(&writes, 2).is_err());
        // Thread 1's third write: thread 2 made 3 writes before it.
        assert!(kill_point(&writes, 5).is_err());
        assert!(kill_point(&writes, 9).is_err());
    }
}
