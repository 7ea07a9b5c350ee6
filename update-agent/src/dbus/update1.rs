//! `org.platte.Update1` at `/org/platte/Update1`: the agent's own D-Bus interface.
//!
//! Read-only properties (anyone may read them; `PropertiesChanged` is emitted on change, see
//! [`super::view`]) and state-changing methods (root only: the bus policy and
//! [`super::auth::require_root`]).

use std::sync::Arc;

use zbus::message::Header;

use super::Context;
use super::auth::require_root;
use super::error::UpdateError;
use super::view::Properties;
use crate::reboot::RebootRequest;

/// The `org.platte.Update1` object.
pub struct Update1 {
    pub(super) ctx: Arc<Context>,
}

impl Update1 {
    fn props(&self) -> Properties {
        self.ctx.snapshot.borrow().props.clone()
    }

    async fn root(
        &self,
        conn: &zbus::Connection,
        hdr: &Header<'_>,
        method: &'static str,
    ) -> Result<(), UpdateError> {
        require_root(conn, hdr, method)
            .await
            .map_err(|e| UpdateError::AccessDenied(e.to_string()))
    }
}

#[zbus::interface(name = "org.platte.Update1")]
impl Update1 {
    /// `idle`, `checking`, `update_available`, `downloading`, `verifying`, `finalizing`,
    /// `staged`, `rebooting` or `error`.
    #[zbus(property)]
    fn status(&self) -> String {
        self.props().status
    }

    /// Download progress, 0 to 1 (1 once downloaded, 0 when nothing is being installed).
    #[zbus(property)]
    fn progress(&self) -> f64 {
        self.props().progress
    }

    /// The running OS version.
    #[zbus(property)]
    fn current_version(&self) -> String {
        self.props().current_version
    }

    /// The version being installed or staged (empty: none).
    #[zbus(property)]
    fn new_version(&self) -> String {
        self.props().new_version
    }

    /// Payload size of the new version in bytes (0: none or unknown).
    #[zbus(property)]
    fn new_size(&self) -> u64 {
        self.props().new_size
    }

    /// Whether the new version's payload is a delta, read against the running slot (false: a
    /// full payload, none, or unknown).
    #[zbus(property)]
    fn new_is_delta(&self) -> bool {
        self.props().new_is_delta
    }

    /// When the server last answered a check, in Unix seconds (0: not since the agent started).
    #[zbus(property)]
    fn last_check_time(&self) -> i64 {
        self.props().last_check_time
    }

    /// The slot the running system booted from: `A` or `B` (empty: unknown).
    #[zbus(property)]
    fn booted_slot(&self) -> String {
        self.props().booted_slot
    }

    /// `off`, `immediate`, `windows` or `fleet-lock`.
    #[zbus(property)]
    fn reboot_strategy(&self) -> String {
        self.props().reboot_strategy
    }

    /// Start of the maintenance window open now, else of the next one, in Unix seconds (0: the
    /// strategy has no windows). Computed when read; no change signal.
    #[zbus(property(emits_changed_signal = "false"))]
    fn next_reboot_window(&self) -> i64 {
        self.ctx
            .strategy
            .next_window(self.ctx.clock.now())
            .map_or(0, |t| t.as_second())
    }

    /// The last failure, `MESSAGE (code N)` (empty: none).
    #[zbus(property)]
    fn last_error(&self) -> String {
        self.props().last_error
    }

    /// Whether this machine holds a FleetLock reboot slot.
    #[zbus(property)]
    fn held_lock(&self) -> bool {
        self.props().held_lock
    }

    /// Versions never installed automatically (rolled back before).
    #[zbus(property)]
    fn deny_list(&self) -> Vec<String> {
        self.props().deny_list
    }

    /// Checks finished since the agent started; compare with what `CheckNow` returned.
    #[zbus(property)]
    fn checks_completed(&self) -> u64 {
        self.props().checks_completed
    }

    /// How the last finished check ended: `no_update`, `already_staged`, `installed`,
    /// `refused`, `check_failed`, `install_failed` (empty: none yet).
    #[zbus(property)]
    fn last_check_result(&self) -> String {
        self.props().last_check_result
    }

    /// Why a staged update does not reboot yet (empty: not waiting); `waiting for runtime
    /// extensions: …` while a runtime extension has no build for the staged OS version.
    #[zbus(property)]
    fn reboot_wait(&self) -> String {
        self.props().reboot_wait
    }

    /// Each configured runtime extension: `(name, version, state)`; the version is empty when
    /// none is installed; the state is `active`, `staged: V for OS X`, `waiting: …`,
    /// `failed: …`, `not-installed` or `disabled`.
    #[zbus(property)]
    fn extensions(&self) -> Vec<(String, String, String)> {
        self.props().extensions
    }

    /// Starts an interactive check now (no scheduling delay); an offered update is downloaded
    /// and staged. Returns the serial of the answering check: it has finished once
    /// `ChecksCompleted` reaches it, and `LastCheckResult` tells how it ended.
    async fn check_now(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
    ) -> Result<u64, UpdateError> {
        self.root(conn, &hdr, "CheckNow").await?;
        let serial = self.ctx.agent.check_now();
        tracing::info!(serial, "check requested over D-Bus");
        Ok(serial)
    }

    /// Checks, downloads and stages now. The agent installs every offer it accepts, so this is
    /// the same interactive cycle as `CheckNow`; it exists so callers can say what they mean.
    async fn apply_now(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
    ) -> Result<u64, UpdateError> {
        self.root(conn, &hdr, "ApplyNow").await?;
        let serial = self.ctx.agent.check_now();
        tracing::info!(serial, "update requested over D-Bus");
        Ok(serial)
    }

    /// Reboots into the staged update: through the coordinator (`force` false: the strategy's
    /// `off` gate and windows are skipped; FleetLock, inhibitors and the users' grace period
    /// still apply) or at once (`force` true: every gate is skipped). Fails with
    /// `org.platte.Update1.Error.NothingStaged` when no update is staged, and with
    /// `org.platte.Update1.Error.WaitingForExtensions` while a runtime extension has no build for
    /// the staged OS version (the new OS would come up without a working runtime).
    async fn reboot_now(
        &self,
        force: bool,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
    ) -> Result<(), UpdateError> {
        self.root(conn, &hdr, "RebootNow").await?;
        let Some(version) = self.ctx.agent.staged.borrow().clone() else {
            return Err(UpdateError::NothingStaged(
                "no update is staged: nothing to reboot into (use `systemctl reboot` to reboot anyway)"
                    .into(),
            ));
        };
        let waiting = self.ctx.agent.info.borrow().extensions_wait.clone();
        if !waiting.is_empty() {
            return Err(UpdateError::WaitingForExtensions(format!(
                "update {version} is staged but waits for runtime extensions: {waiting} \
                 (`systemctl reboot` reboots anyway, into an OS without a matching runtime)"
            )));
        }
        let request = if force {
            RebootRequest::Immediate
        } else {
            RebootRequest::Coordinated
        };
        tracing::info!(version = %version, ?request, "reboot requested over D-Bus");
        self.ctx.reboot.send_replace(request);
        Ok(())
    }

    /// Forgets a staged or failed update (update_engine's `ResetStatus`, but the staged slot is
    /// also made unbootable): the status becomes `idle`. Fails with `Error.Busy` while a check
    /// or install runs.
    async fn reset(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
    ) -> Result<(), UpdateError> {
        self.root(conn, &hdr, "Reset").await?;
        self.ctx.command(self.ctx.agent.reset()).await
    }

    /// Removes `version` from the deny list (`""`: every version); returns the versions
    /// removed. Fails with `Error.NotDenyListed` for a version not on the list.
    async fn clear_deny_list(
        &self,
        version: &str,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
    ) -> Result<Vec<String>, UpdateError> {
        self.root(conn, &hdr, "ClearDenyList").await?;
        let v = (!version.is_empty()).then_some(version);
        self.ctx.command(self.ctx.agent.clear_deny_list(v)).await
    }
}
