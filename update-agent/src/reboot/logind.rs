//! Client of systemd-logind (`org.freedesktop.login1.Manager`) over D-Bus: inhibitors,
//! interactive sessions, and `Reboot(false)`.

use zbus::zvariant::OwnedObjectPath;

use super::coordinator::Inhibitor;
use crate::dbus::client::{self, ConnectError};

/// logind's bus name.
pub const LOGIN1_NAME: &str = "org.freedesktop.login1";
/// logind's manager object.
pub const LOGIN1_PATH: &str = "/org/freedesktop/login1";

/// A logind call failed.
#[derive(Debug, thiserror::Error)]
pub enum LogindError {
    /// Connecting to the bus failed.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// A method call or property read failed.
    #[error("logind {call} failed: {source}")]
    Call {
        /// The method.
        call: &'static str,
        /// zbus' error.
        source: Box<zbus::Error>,
    },
}

#[zbus::proxy(
    interface = "org.freedesktop.login1.Manager",
    default_service = "org.freedesktop.login1",
    default_path = "/org/freedesktop/login1",
    gen_blocking = false
)]
trait Manager {
    /// (what, who, why, mode, uid, pid) of every inhibitor.
    fn list_inhibitors(&self) -> zbus::Result<Vec<(String, String, String, String, u32, u32)>>;
    /// (id, uid, user, seat, path) of every session.
    fn list_sessions(&self) -> zbus::Result<Vec<(String, u32, String, String, OwnedObjectPath)>>;
    /// Reboots; `interactive` asks polkit for authentication (never, for the agent).
    fn reboot(&self, interactive: bool) -> zbus::Result<()>;
}

#[zbus::proxy(
    interface = "org.freedesktop.login1.Session",
    default_service = "org.freedesktop.login1",
    gen_blocking = false
)]
trait Session {
    /// `user`, `greeter`, `lock-screen`, `background`, `manager`, ...
    #[zbus(property)]
    fn class(&self) -> zbus::Result<String>;
}

/// A connection to logind.
#[derive(Debug, Clone)]
pub struct Logind {
    conn: zbus::Connection,
}

fn call(call: &'static str) -> impl FnOnce(zbus::Error) -> LogindError {
    move |source| LogindError::Call {
        call,
        source: Box::new(source),
    }
}

impl Logind {
    /// logind on the system bus.
    pub async fn system() -> Result<Self, LogindError> {
        Ok(Self::from_connection(client::connect(None).await?))
    }

    /// logind (or a stand-in) on the bus at `address` (tests: a private `dbus-daemon`).
    pub async fn at_address(address: &str) -> Result<Self, LogindError> {
        Ok(Self::from_connection(client::connect(Some(address)).await?))
    }

    /// Over an existing connection.
    pub fn from_connection(conn: zbus::Connection) -> Self {
        Self { conn }
    }

    async fn manager(&self) -> Result<ManagerProxy<'static>, LogindError> {
        ManagerProxy::new(&self.conn).await.map_err(call("proxy"))
    }

    /// All inhibitor locks (the coordinator honours `block` ones on `shutdown`).
    pub async fn inhibitors(&self) -> Result<Vec<Inhibitor>, LogindError> {
        let list = self
            .manager()
            .await?
            .list_inhibitors()
            .await
            .map_err(call("ListInhibitors"))?;
        Ok(list
            .into_iter()
            .map(|(what, who, why, mode, _, _)| Inhibitor {
                what,
                who,
                why,
                mode,
            })
            .collect())
    }

    /// Names of users with interactive sessions (class `user*`), sorted, without duplicates.
    pub async fn interactive_users(&self) -> Result<Vec<String>, LogindError> {
        let sessions = self
            .manager()
            .await?
            .list_sessions()
            .await
            .map_err(call("ListSessions"))?;
        let mut users = Vec::new();
        for (_, _, user, _, path) in sessions {
            let proxy: SessionProxy<'_> = client::uncached_proxy(&self.conn, path)
                .await
                .map_err(call("Session"))?;
            // A session that ended in between has no Class any more: skip it.
            match proxy.class().await {
                Ok(class) if class.starts_with("user") => users.push(user),
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, user, "session vanished"),
            }
        }
        users.sort();
        users.dedup();
        Ok(users)
    }

    /// `Reboot(false)`: reboot now, without interactive authentication.
    pub async fn reboot(&self) -> Result<(), LogindError> {
        self.manager()
            .await?
            .reboot(false)
            .await
            .map_err(call("Reboot"))
    }
}
