//! What one client may make the server keep. The Omaha parser already bounds every attribute the
//! server keeps ([`omaha::MAX_ID_LEN`], [`omaha::MAX_NAME_LEN`]); here is the server's own policy
//! on top of it:
//!
//! - identities ([`check_identity`]): a machine id and a boot id are refused (400, naming the
//!   attribute) unless they are printable ASCII without spaces and without
//!   ``/ \ ? # " ' ` < > &`` ([`is_identity`]), so every in-memory fleet row and every stored
//!   row is keyed by a short, printable id that fits a URL path segment
//!   (`/api/v1/instances/{machine}`) and a log line as it is;
//! - events ([`EventBudget`]): a machine stores at most a configured number of event rows per
//!   window; events beyond it are acknowledged and still drive the instance lifecycle and the
//!   rollout accounting, but leave no row. The cap on events per request lives in the Omaha
//!   endpoint.
//!
//! Metric label sets are closed in [`crate::metrics`].

use std::collections::HashMap;
use std::sync::Mutex;

/// Length of one [`EventBudget`] window, in seconds (one hour).
pub const EVENT_WINDOW_SECS: i64 = 3600;

/// Why a client-supplied identity was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "attribute {attribute} must be printable ASCII without spaces or any of / \\ ? # \" ' ` < > &"
)]
pub struct IdentityError {
    /// The Omaha attribute at fault (`machineid`, `bootid`).
    pub attribute: &'static str,
}

/// Whether `id` is made only of the characters an identity may hold: printable ASCII (no
/// space, no control character) except ``/ \ ? # " ' ` < > &``, which have a meaning in URL
/// paths or markup, and is not `.` or `..` (path segments a browser or proxy resolves, whatever
/// their encoding). The empty string is acceptable (an absent id).
pub fn is_identity(id: &str) -> bool {
    id != "."
        && id != ".."
        && id.bytes().all(|b| {
            b.is_ascii_graphic()
                && !matches!(
                    b,
                    b'/' | b'\\' | b'?' | b'#' | b'"' | b'\'' | b'`' | b'<' | b'>' | b'&'
                )
        })
}

/// Checks the identities of one `<app>`: machine id and boot id (lengths are bounded by the
/// parser already; this checks the character set).
pub fn check_identity(machine_id: &str, boot_id: &str) -> Result<(), IdentityError> {
    if !is_identity(machine_id.trim()) {
        return Err(IdentityError {
            attribute: "machineid",
        });
    }
    if !is_identity(boot_id) {
        return Err(IdentityError {
            attribute: "bootid",
        });
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: i64,
    used: u32,
}

#[derive(Debug, Default)]
struct BudgetState {
    machines: HashMap<String, Window>,
    next_sweep: i64,
}

/// Per-machine budget of stored event rows: at most `limit` rows per machine in each window of
/// `window_secs` (a fixed window that starts with the machine's first stored event). Memory is
/// one entry per machine that stored an event in the last two windows: expired entries are
/// swept once per window.
#[derive(Debug)]
pub struct EventBudget {
    limit: u32,
    window_secs: i64,
    state: Mutex<BudgetState>,
}

impl EventBudget {
    /// A budget of `limit` rows per machine per `window_secs` seconds (`limit` 0 stores none).
    pub fn new(limit: u32, window_secs: i64) -> Self {
        Self {
            limit,
            window_secs: window_secs.max(1),
            state: Mutex::new(BudgetState::default()),
        }
    }

    /// The number of rows a machine may store per window.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// Takes one row from `machine`'s budget at `now`; false when the window's budget is spent
    /// (the caller then does not store the row).
    pub fn take(&self, machine: &str, now: i64) -> bool {
        let mut st = match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let window = self.window_secs;
        if now >= st.next_sweep {
            st.machines.retain(|_, w| now - w.start < window);
            st.next_sweep = now.saturating_add(window);
        }
        let limit = self.limit;
        if let Some(w) = st.machines.get_mut(machine) {
            if now - w.start >= window {
                *w = Window {
                    start: now,
                    used: 0,
                };
            }
            if w.used >= limit {
                return false;
            }
            w.used += 1;
            return true;
        }
        if limit == 0 {
            return false;
        }
        st.machines.insert(
            machine.to_owned(),
            Window {
                start: now,
                used: 1,
            },
        );
        true
    }

    /// Machines currently tracked (for tests and diagnostics).
    pub fn tracked(&self) -> usize {
        match self.state.lock() {
            Ok(g) => g.machines.len(),
            Err(p) => p.into_inner().machines.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_are_short_printable_ids() {
        for ok in [
            "",
            "abce671d61774703ac7be60715220bfe",
            "{8a5bd2c1-0f3e-4b8e-9d7a-1c2b3a4d5e6f}",
            "host-1.example:a_b",
        ] {
            assert!(is_identity(ok), "{ok:?}");
        }
        assert!(
            is_identity("%s"),
            "a template placeholder is odd but harmless"
        );
        for bad in [
            "a b", "a/b", "é", "a\tb", "<x>", "a\"b", "a?b", "a#b", "a\\b", "a&b", ".", "..",
        ] {
            assert!(!is_identity(bad), "{bad:?}");
        }
        assert_eq!(check_identity("  m-1 ", "{b}"), Ok(()));
        assert_eq!(
            check_identity("m 1", "").unwrap_err().attribute,
            "machineid"
        );
        let e = check_identity("m1", "b/1").unwrap_err();
        assert_eq!(e.attribute, "bootid");
        assert!(e.to_string().contains("bootid"), "{e}");
    }

    #[test]
    fn budget_is_per_machine_and_per_window() {
        let b = EventBudget::new(3, 100);
        assert!((0..3).all(|_| b.take("m1", 1000)));
        assert!(!b.take("m1", 1050), "spent for this window");
        assert!(b.take("m2", 1050), "another machine has its own budget");
        assert!(!b.take("m1", 1099));
        assert!(b.take("m1", 1100), "a new window starts");
        assert!(b.take("m1", 1101) && b.take("m1", 1102));
        assert!(!b.take("m1", 1103));
        let none = EventBudget::new(0, 100);
        assert!(!none.take("m1", 0));
        assert_eq!(none.tracked(), 0);
    }

    #[test]
    fn budget_memory_is_swept() {
        let b = EventBudget::new(1, 10);
        for i in 0..1000 {
            assert!(b.take(&format!("m{i}"), 5));
        }
        assert_eq!(b.tracked(), 1000);
        // The next window's first call sweeps every expired entry.
        assert!(b.take("late", 20));
        assert_eq!(b.tracked(), 1);
    }
}
