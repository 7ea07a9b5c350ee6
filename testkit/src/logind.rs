//! A logind stand-in: `org.freedesktop.login1` at `/org/freedesktop/login1` on a given bus, with
//! `ListInhibitors`, `ListSessions` (and `Session.Class` on each session object) and `Reboot`,
//! which it records instead of rebooting (and reports to a hook, for a log shared by several
//! hosts). The test sets inhibitors and sessions.
//!
//! Like the real logind when called by root, `Reboot` succeeds even while a block inhibitor is
//! held (root may ignore inhibitors): honouring them is the caller's job, which is what the
//! agent's tests check.

use std::sync::{Arc, Mutex};

use zbus::zvariant::OwnedObjectPath;

/// logind's bus name.
pub const LOGIND_NAME: &str = "org.freedesktop.login1";
/// logind's manager object.
pub const LOGIND_PATH: &str = "/org/freedesktop/login1";

/// One inhibitor as `ListInhibitors` returns it: (what, who, why, mode, uid, pid).
pub type InhibitorRow = (String, String, String, String, u32, u32);

/// Called with the `interactive` argument of every `Reboot` call, as it arrives.
pub type RebootHook = Arc<dyn Fn(bool) + Send + Sync>;

/// What the stand-in serves and records.
#[derive(Debug, Default)]
pub struct State {
    /// Inhibitors returned by `ListInhibitors`.
    pub inhibitors: Vec<InhibitorRow>,
    /// (id, uid, user, seat, class) of each session.
    pub sessions: Vec<(String, u32, String, String, String)>,
    /// The `interactive` argument of every `Reboot` call.
    pub reboots: Vec<bool>,
}

struct Manager {
    state: Arc<Mutex<State>>,
    on_reboot: Option<RebootHook>,
}

fn session_path(id: &str) -> String {
    format!("{LOGIND_PATH}/session/_3{id}")
}

#[zbus::interface(name = "org.freedesktop.login1.Manager")]
impl Manager {
    fn list_inhibitors(&self) -> Vec<InhibitorRow> {
        self.state
            .lock()
            .map(|s| s.inhibitors.clone())
            .unwrap_or_default()
    }

    fn list_sessions(&self) -> Vec<(String, u32, String, String, OwnedObjectPath)> {
        let Ok(s) = self.state.lock() else {
            return Vec::new();
        };
        s.sessions
            .iter()
            .filter_map(|(id, uid, user, seat, _)| {
                let path = OwnedObjectPath::try_from(session_path(id)).ok()?;
                Some((id.clone(), *uid, user.clone(), seat.clone(), path))
            })
            .collect()
    }

    fn reboot(&self, interactive: bool) {
        if let Ok(mut s) = self.state.lock() {
            s.reboots.push(interactive);
        }
        if let Some(hook) = &self.on_reboot {
            hook(interactive);
        }
    }
}

struct Session {
    class: String,
}

#[zbus::interface(name = "org.freedesktop.login1.Session")]
impl Session {
    #[zbus(property)]
    fn class(&self) -> String {
        self.class.clone()
    }
}

/// A running stand-in.
pub struct LogindStandin {
    /// Shared state: set inhibitors, read reboots.
    pub state: Arc<Mutex<State>>,
    conn: zbus::Connection,
}

impl std::fmt::Debug for LogindStandin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogindStandin")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl LogindStandin {
    /// Serves logind on the bus at `address`.
    pub async fn start(address: &str) -> zbus::Result<Self> {
        Self::serve(address, None).await
    }

    /// Serves logind on the bus at `address`, calling `on_reboot` at every `Reboot` call.
    pub async fn start_with_hook(address: &str, on_reboot: RebootHook) -> zbus::Result<Self> {
        Self::serve(address, Some(on_reboot)).await
    }

    async fn serve(address: &str, on_reboot: Option<RebootHook>) -> zbus::Result<Self> {
        let state = Arc::new(Mutex::new(State::default()));
        let conn = zbus::connection::Builder::address(address)?
            .serve_at(
                LOGIND_PATH,
                Manager {
                    state: state.clone(),
                    on_reboot,
                },
            )?
            .name(LOGIND_NAME)?
            .build()
            .await?;
        Ok(Self { state, conn })
    }

    /// Adds a block or delay inhibitor.
    pub fn inhibit(&self, what: &str, who: &str, why: &str, mode: &str) {
        if let Ok(mut s) = self.state.lock() {
            s.inhibitors
                .push((what.into(), who.into(), why.into(), mode.into(), 0, 4242));
        }
    }

    /// Drops all inhibitors.
    pub fn clear_inhibitors(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.inhibitors.clear();
        }
    }

    /// Adds a session of `user` with logind class `class` (`user`, `manager`, `background`...).
    pub async fn add_session(&self, id: &str, user: &str, class: &str) -> zbus::Result<()> {
        self.conn
            .object_server()
            .at(
                session_path(id),
                Session {
                    class: class.into(),
                },
            )
            .await?;
        if let Ok(mut s) = self.state.lock() {
            s.sessions
                .push((id.into(), 1000, user.into(), "seat0".into(), class.into()));
        }
        Ok(())
    }

    /// Removes all sessions from `ListSessions`.
    pub fn clear_sessions(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.sessions.clear();
        }
    }

    /// The `interactive` flags of the `Reboot` calls so far.
    pub fn reboots(&self) -> Vec<bool> {
        self.state
            .lock()
            .map(|s| s.reboots.clone())
            .unwrap_or_default()
    }
}
