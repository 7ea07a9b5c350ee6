//! The CSV time series: one row per sample, the simulator's counts (machines registered, per
//! version and per state, cumulative attempts and failures, requests) and the server's rollout
//! status (effective percentage, halted and paused flags, grant counts, machines on the target).

use std::io::Write;
use std::path::Path;

use anyhow::Context as _;

use super::sample::Sample;
use crate::clock::format_utc;

/// The header line for a rollout from `from` to `to`.
pub fn header(from: &str, to: &str) -> String {
    format!(
        "t_hours,sim_time_utc,registered,machines_{from},machines_{to},waiting,in_flight,installed,complete,\
         failed,attempts,failures,requests,server_percent,server_halted,server_paused,\
         server_attempts,server_in_flight,server_installed,server_complete,server_failed,\
         server_timed_out,server_on_target"
    )
}

/// One data line.
pub fn row(s: &Sample) -> String {
    let c = &s.counts;
    let g = &s.server.grants;
    format!(
        "{:.3},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
        s.hours(),
        format_utc(s.at),
        c.registered,
        c.on_old(),
        c.on_new(),
        c.waiting,
        c.in_flight,
        c.installed,
        c.complete,
        c.failed,
        s.grants,
        s.failures,
        s.requests,
        s.server.effective_percent,
        u8::from(s.server.halted),
        u8::from(s.server.paused),
        g.attempts,
        g.in_flight,
        g.installed,
        g.complete,
        g.failed,
        g.timed_out,
        s.server.on_target,
    )
}

/// Writes the samples to `path`.
pub fn write(path: &Path, from: &str, to: &str, samples: &[Sample]) -> anyhow::Result<()> {
    let f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = std::io::BufWriter::new(f);
    writeln!(w, "{}", header(from, to))?;
    for s in samples {
        writeln!(w, "{}", row(s))?;
    }
    w.flush()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::fleet::Counts;
    use super::super::sample::ServerPoint;
    use super::*;

    #[test]
    fn rows_match_the_header() {
        let s = Sample {
            t: 5400,
            at: 1_700_000_000,
            counts: Counts {
                registered: 16,
                waiting: 5,
                in_flight: 2,
                installed: 1,
                complete: 7,
                failed: 1,
                attempted: 11,
            },
            grants: 11,
            failures: 1,
            requests: 99,
            server: ServerPoint {
                effective_percent: 20.0,
                halted: true,
                ..Default::default()
            },
        };
        let h = header("1.0.0", "2.0.0");
        let r = row(&s);
        assert_eq!(h.split(',').count(), r.split(',').count());
        assert!(
            r.starts_with("1.500,2023-11-14 22:13:20,16,9,7,5,2,1,7,1,11,1,99,20,1,0,"),
            "{r}"
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.csv");
        write(&p, "1.0.0", "2.0.0", &[s, s]).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap().lines().count(), 3);
    }
}
