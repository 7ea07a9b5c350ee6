//! Who may change state: only root. The shipped bus policy (`org.platte.Update1.conf`) already
//! denies other users the state-changing methods; as defence in depth each such method also asks
//! the bus for the caller's uid (`GetConnectionUnixUser`) and refuses anyone but uid 0.

use zbus::fdo::DBusProxy;
use zbus::message::Header;
use zbus::names::BusName;

/// Why a caller was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The caller is not root.
    #[error("{method} changes the update state and is allowed to root only (caller uid {uid})")]
    NotRoot {
        /// The method called.
        method: &'static str,
        /// The caller's uid.
        uid: u32,
    },
    /// The bus could not tell who called.
    #[error("{method}: cannot tell who called: {reason}")]
    Unknown {
        /// The method called.
        method: &'static str,
        /// What went wrong.
        reason: String,
    },
}

/// Succeeds when the sender of `hdr` runs as uid 0.
pub async fn require_root(
    conn: &zbus::Connection,
    hdr: &Header<'_>,
    method: &'static str,
) -> Result<(), AuthError> {
    let unknown = |reason: String| AuthError::Unknown { method, reason };
    let sender = hdr
        .sender()
        .ok_or_else(|| unknown("the message has no sender".into()))?;
    let dbus = DBusProxy::new(conn)
        .await
        .map_err(|e| unknown(e.to_string()))?;
    let uid = dbus
        .get_connection_unix_user(BusName::Unique(sender.clone()))
        .await
        .map_err(|e| unknown(e.to_string()))?;
    if uid == 0 {
        Ok(())
    } else {
        tracing::warn!(method, uid, "refused a state change from a non-root caller");
        Err(AuthError::NotRoot { method, uid })
    }
}
