//! What `updatectl` prints: the progress of `update --wait` (one redrawn line on a terminal,
//! plain lines otherwise: on every phase change and every 10 % of the download) and the
//! `status` table.

use std::io::Write;
use std::time::Instant;

use jiff::Timestamp;

use crate::dbus::proxy::Fetched;
use crate::dbus::view::Properties;

/// Bytes as MiB with one decimal.
fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / (1024.0 * 1024.0))
}

/// The progress line for `p`, with the download rate in bytes per second when known.
pub fn line(p: &Properties, rate: Option<f64>) -> String {
    let v = &p.new_version;
    match p.status.as_str() {
        "downloading" => {
            let total = p.new_size as f64;
            let mut s = format!(
                "downloading {v}: {:.0}% ({} of {}",
                p.progress * 100.0,
                mib(p.progress * total).trim_end_matches(" MiB"),
                mib(total)
            );
            if let Some(r) = rate {
                s.push_str(&format!(", {}/s", mib(r)));
            }
            s.push(')');
            s
        }
        "update_available" => format!("update {v} available"),
        "verifying" | "finalizing" | "staged" | "rebooting" => format!("{} {v}", p.status),
        "error" => format!("error: {}", p.last_error),
        other => other.to_owned(),
    }
}

/// Follows one update for `update --wait`.
#[derive(Debug)]
pub struct Progress {
    tty: bool,
    phase: String,
    step: i64,
    start: Option<(Instant, f64)>,
    shown: String,
}

impl Progress {
    /// Progress output for a terminal (`tty`: one redrawn line) or a pipe (plain lines).
    pub fn new(tty: bool) -> Self {
        Self {
            tty,
            phase: String::new(),
            step: -1,
            start: None,
            shown: String::new(),
        }
    }

    /// Shows `p` as seen at `now`.
    pub fn show(
        &mut self,
        out: &mut impl Write,
        p: &Properties,
        now: Instant,
    ) -> std::io::Result<()> {
        let bytes = p.progress * p.new_size as f64;
        let rate = match (p.status.as_str(), self.start) {
            ("downloading", None) => {
                self.start = Some((now, bytes));
                None
            }
            ("downloading", Some((t0, b0))) => {
                let dt = now.saturating_duration_since(t0).as_secs_f64();
                (dt >= 0.2).then(|| (bytes - b0).max(0.0) / dt)
            }
            _ => None,
        };
        let text = line(p, rate);
        let step = (p.progress * 10.0).floor() as i64;
        let new_phase = p.status != self.phase;
        if self.tty {
            if text != self.shown {
                if new_phase && !self.shown.is_empty() {
                    writeln!(out)?;
                }
                write!(out, "\r\x1b[2K{text}")?;
                out.flush()?;
            }
        } else if new_phase || (p.status == "downloading" && step > self.step) {
            writeln!(out, "{text}")?;
            out.flush()?;
        }
        if new_phase {
            self.phase = p.status.clone();
            self.step = -1;
        }
        if p.status == "downloading" {
            self.step = self.step.max(step);
        }
        self.shown = text;
        Ok(())
    }

    /// Ends the redrawn line on a terminal.
    pub fn finish(&mut self, out: &mut impl Write) -> std::io::Result<()> {
        if self.tty && !self.shown.is_empty() {
            writeln!(out)?;
        }
        Ok(())
    }
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

fn when(secs: i64) -> String {
    match Timestamp::from_second(secs) {
        Ok(t) if secs > 0 => t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string(),
        _ => "-".to_owned(),
    }
}

/// The `updatectl status` table.
pub fn status_table(f: &Fetched, _now: Timestamp) -> String {
    let p = &f.props;
    let mut rows: Vec<(&str, String)> = vec![
        ("Status", p.status.clone()),
        (
            "Current version",
            format!("{} (slot {})", p.current_version, or_dash(&p.booted_slot)),
        ),
    ];
    if !p.new_version.is_empty() {
        let mut about = Vec::new();
        if p.new_size > 0 {
            about.push(mib(p.new_size as f64));
        }
        if p.new_is_delta {
            about.push(format!("delta from {}", p.current_version));
        }
        let about = if about.is_empty() {
            String::new()
        } else {
            format!(" ({})", about.join(", "))
        };
        rows.push(("New version", format!("{}{about}", p.new_version)));
    }
    if p.status == "downloading" {
        rows.push(("Progress", format!("{:.0}%", p.progress * 100.0)));
    }
    rows.push(("Last check", when(p.last_check_time)));
    rows.push((
        "Last check result",
        or_dash(&p.last_check_result).to_owned(),
    ));
    rows.push(("Last error", or_dash(&p.last_error).to_owned()));
    rows.push(("Reboot strategy", p.reboot_strategy.clone()));
    if f.next_reboot_window > 0 {
        rows.push(("Next reboot window", when(f.next_reboot_window)));
    }
    if !p.reboot_wait.is_empty() {
        rows.push(("Reboot waits", p.reboot_wait.clone()));
    }
    rows.push((
        "Fleet lock held",
        if p.held_lock { "yes" } else { "no" }.to_owned(),
    ));
    rows.push((
        "Deny list",
        if p.deny_list.is_empty() {
            "-".to_owned()
        } else {
            p.deny_list.join(", ")
        },
    ));
    // One line per runtime extension: `NAME VERSION (STATE)`.
    for (n, (name, version, state)) in p.extensions.iter().enumerate() {
        let key = if n == 0 { "Extensions" } else { "" };
        rows.push((key, format!("{name} {} ({state})", or_dash(version))));
    }
    rows.iter()
        .map(|(k, v)| {
            let key = if k.is_empty() {
                String::new()
            } else {
                format!("{k}:")
            };
            format!("{key:<19} {v}\n")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use super::*;

    fn p(status: &str, progress: f64) -> Properties {
        Properties {
            status: status.into(),
            progress,
            new_version: "2.0.0".into(),
            new_size: 10 << 20,
            ..Properties::default()
        }
    }

    #[test]
    fn plain_lines_on_phase_changes_and_every_ten_percent() {
        let t0 = Instant::now();
        let mut pr = Progress::new(false);
        let mut out = Vec::new();
        pr.show(&mut out, &p("checking", 0.0), t0).unwrap();
        pr.show(&mut out, &p("checking", 0.0), t0).unwrap();
        pr.show(&mut out, &p("downloading", 0.01), t0).unwrap();
        pr.show(
            &mut out,
            &p("downloading", 0.05),
            t0 + Duration::from_secs(1),
        )
        .unwrap();
        pr.show(
            &mut out,
            &p("downloading", 0.51),
            t0 + Duration::from_secs(2),
        )
        .unwrap();
        pr.show(&mut out, &p("verifying", 1.0), t0 + Duration::from_secs(3))
            .unwrap();
        pr.show(&mut out, &p("staged", 1.0), t0 + Duration::from_secs(3))
            .unwrap();
        pr.finish(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert_eq!(lines[0], "checking");
        assert_eq!(lines[1], "downloading 2.0.0: 1% (0.1 of 10.0 MiB)");
        // 0.51 * 10 MiB − 0.01 * 10 MiB over 2 s.
        assert_eq!(
            lines[2],
            "downloading 2.0.0: 51% (5.1 of 10.0 MiB, 2.5 MiB/s)"
        );
        assert_eq!(lines[3], "verifying 2.0.0");
        assert_eq!(lines[4], "staged 2.0.0");
    }

    #[test]
    fn terminal_redraws_one_line() {
        let t0 = Instant::now();
        let mut pr = Progress::new(true);
        let mut out = Vec::new();
        pr.show(&mut out, &p("downloading", 0.1), t0).unwrap();
        pr.show(
            &mut out,
            &p("downloading", 0.2),
            t0 + Duration::from_secs(1),
        )
        .unwrap();
        pr.finish(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches("\r\x1b[2K").count(), 2, "{text:?}");
        assert!(text.ends_with("MiB/s)\n"), "{text:?}");
    }

    #[test]
    fn status_table_shows_what_matters() {
        let f = Fetched {
            props: Properties {
                status: "staged".into(),
                current_version: "1.0.0".into(),
                booted_slot: "A".into(),
                new_version: "2.0.0".into(),
                new_size: 3 << 20,
                new_is_delta: true,
                reboot_strategy: "windows".into(),
                reboot_wait: "outside the maintenance windows".into(),
                deny_list: vec!["1.5.0".into()],
                extensions: vec![
                    ("containerd".into(), "1.7.22".into(), "active".into()),
                    ("docker".into(), String::new(), "not-installed".into()),
                ],
                ..Properties::default()
            },
            next_reboot_window: 1_748_865_780,
        };
        let t = status_table(&f, Timestamp::UNIX_EPOCH);
        assert!(
            t.contains("Extensions:         containerd 1.7.22 (active)\n                    docker - (not-installed)\n"),
            "{t}"
        );
        assert!(t.contains("Current version:    1.0.0 (slot A)"), "{t}");
        assert!(
            t.contains("New version:        2.0.0 (3.0 MiB, delta from 1.0.0)"),
            "{t}"
        );
        assert!(
            t.contains("Next reboot window: 2025-06-02 12:03:00 UTC"),
            "{t}"
        );
        assert!(t.contains("Deny list:          1.5.0"), "{t}");
    }
}
