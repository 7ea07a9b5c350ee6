//! update_engine's D-Bus interface, exactly as Flatcar's `update_engine` exposes it, so tools
//! that watch it (locksmith, the Flatcar Kubernetes update operator, scripts calling
//! `update_engine_client`-style `GetStatus`) work unchanged: bus name `com.coreos.update1`,
//! object `/com/coreos/update1`, interface `com.coreos.update1.Manager`, methods
//! `AttemptUpdate()`, `ResetStatus()`, `GetStatus() → (x last_checked_time, d progress,
//! s current_operation, s new_version, x new_size)` and the signal `StatusUpdate(xdssx)` with
//! update_engine's `UPDATE_STATUS_*` names, `"0.0.0"` for no version, and progress only while
//! downloading.

// zbus generates the signal's trait, stream and argument types without documentation.
#![allow(missing_docs)]

use std::sync::Arc;

use zbus::fdo;
use zbus::message::Header;
use zbus::object_server::SignalEmitter;

use super::Context;
use super::auth::require_root;
use super::view::CompatStatus;

/// The `com.coreos.update1.Manager` object.
pub struct Manager {
    pub(super) ctx: Arc<Context>,
}

impl Manager {
    async fn root(
        &self,
        conn: &zbus::Connection,
        hdr: &Header<'_>,
        method: &'static str,
    ) -> fdo::Result<()> {
        require_root(conn, hdr, method)
            .await
            .map_err(|e| fdo::Error::AccessDenied(e.to_string()))
    }
}

#[zbus::interface(name = "com.coreos.update1.Manager")]
impl Manager {
    /// Starts an interactive update check (an offered update is downloaded and staged).
    async fn attempt_update(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
    ) -> fdo::Result<()> {
        self.root(conn, &hdr, "AttemptUpdate").await?;
        let serial = self.ctx.agent.check_now();
        tracing::info!(serial, "check requested over the update_engine interface");
        Ok(())
    }

    /// Back to `UPDATE_STATUS_IDLE`, forgetting a staged update (see `org.platte.Update1.Reset`).
    async fn reset_status(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
    ) -> fdo::Result<()> {
        self.root(conn, &hdr, "ResetStatus").await?;
        self.ctx
            .command(self.ctx.agent.reset())
            .await
            .map_err(|e: super::error::UpdateError| {
                fdo::Error::Failed(format!("ResetStatus failed: {e}"))
            })
    }

    /// `(last_checked_time, progress, current_operation, new_version, new_size)`.
    #[zbus(out_args(
        "last_checked_time",
        "progress",
        "current_operation",
        "new_version",
        "new_size"
    ))]
    // Spelled out: the macro makes out arguments only of a literal tuple type (an alias would be
    // one `(xdssx)` struct, not update_engine's five arguments).
    fn get_status(&self) -> (i64, f64, String, String, i64) {
        let c: CompatStatus = self.ctx.snapshot.borrow().compat.clone();
        c
    }

    /// Sent on every status change (progress throttled to 1 % or 10 s), and once at startup.
    #[zbus(signal)]
    pub async fn status_update(
        emitter: &SignalEmitter<'_>,
        last_checked_time: i64,
        progress: f64,
        current_operation: &str,
        new_version: &str,
        new_size: i64,
    ) -> zbus::Result<()>;
}
