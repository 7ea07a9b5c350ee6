//! Instance rows inside a write transaction ([`InstanceTx`]): the operations the check path
//! needs, column-wise. A check-in ([`CheckIn`]) writes only what a client reports (version, track,
//! addresses, last contact) and only when it is newer than what is stored; a status change
//! ([`StatusColumns`]) writes only the status columns, decided from the row read in the same
//! transaction. No write overwrites a whole row, so two servers sharing the database cannot undo
//! each other's changes.

use super::InstanceChange;
use super::tx::TxFuture;
use crate::lifecycle::InstanceStatus;
use crate::model::{Instance, ServedPayload};
use crate::rollout::prefetch::{GrantContext, GrantPrefetch};

/// What one check reports about the machine: the check-in columns of its instance row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckIn {
    /// Machine.
    pub machine_id: String,
    /// Application.
    pub app_id: String,
    /// Version it runs (empty: keep the stored one).
    pub version: String,
    /// Group its track resolved to (`None`: none).
    pub group_id: Option<String>,
    /// Track as sent.
    pub track: String,
    /// Alias as sent (empty: keep).
    pub alias: String,
    /// Source address (empty: keep).
    pub ip: String,
    /// OEM (empty: keep).
    pub oem: String,
    /// OEM version (empty: keep).
    pub oem_version: String,
    /// Board (empty: keep).
    pub board: String,
    /// Boot id (empty: keep).
    pub boot_id: String,
    /// When it checked in (Unix seconds); an older check-in never overwrites a newer one.
    pub at: i64,
    /// When this process first saw the machine, if its row is not written yet (else `at`): a
    /// new row's `created_at` (its first contact, which decides whether it is new to a rollout).
    pub first_seen: i64,
}

impl CheckIn {
    /// A new instance row as this check-in creates it (status `idle`).
    pub fn new_row(&self) -> Instance {
        Instance {
            machine_id: self.machine_id.clone(),
            app_id: self.app_id.clone(),
            alias: self.alias.clone(),
            ip: self.ip.clone(),
            version: self.version.clone(),
            group_id: self.group_id.clone(),
            track: self.track.clone(),
            oem: self.oem.clone(),
            oem_version: self.oem_version.clone(),
            board: self.board.clone(),
            boot_id: self.boot_id.clone(),
            last_check_at: self.at,
            granted_version: None,
            granted_at: None,
            status: InstanceStatus::Idle,
            status_detail: String::new(),
            error_code: None,
            status_at: self.at,
            created_at: self.first_seen.min(self.at),
            served_payload: None,
        }
    }

    /// Applies this check-in to a row (as the store's conditional write does).
    pub fn apply_to(&self, row: &mut Instance) {
        if self.at < row.last_check_at {
            return;
        }
        row.last_check_at = self.at;
        if !self.version.is_empty() {
            row.version.clone_from(&self.version);
        }
        row.track.clone_from(&self.track);
        row.group_id.clone_from(&self.group_id);
        for (value, field) in [
            (&self.alias, &mut row.alias),
            (&self.ip, &mut row.ip),
            (&self.oem, &mut row.oem),
            (&self.oem_version, &mut row.oem_version),
            (&self.board, &mut row.board),
            (&self.boot_id, &mut row.boot_id),
        ] {
            if !value.is_empty() {
                field.clone_from(value);
            }
        }
    }
}

#[cfg(test)]
impl CheckIn {
    /// A check-in of `machine` for `app` at `at`: version 1.0.0, track `stable`, no group, and
    /// nothing else reported.
    pub(crate) fn example(machine: &str, app: &str, at: i64) -> Self {
        Self {
            machine_id: machine.into(),
            app_id: app.into(),
            version: "1.0.0".into(),
            group_id: None,
            track: "stable".into(),
            alias: String::new(),
            ip: String::new(),
            oem: String::new(),
            oem_version: String::new(),
            board: String::new(),
            boot_id: String::new(),
            at,
            first_seen: at,
        }
    }
}

/// The status columns of an instance row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusColumns {
    /// Status.
    pub status: InstanceStatus,
    /// Detail.
    pub status_detail: String,
    /// Error code of the last error.
    pub error_code: Option<i64>,
    /// When the status was set.
    pub status_at: i64,
    /// Version granted (the open grant's, or the last).
    pub granted_version: Option<String>,
    /// When it was granted.
    pub granted_at: Option<i64>,
    /// Which payload the last offer served.
    pub served_payload: Option<ServedPayload>,
}

impl StatusColumns {
    /// The status columns of `row`.
    pub fn of(row: &Instance) -> Self {
        Self {
            status: row.status,
            status_detail: row.status_detail.clone(),
            error_code: row.error_code,
            status_at: row.status_at,
            granted_version: row.granted_version.clone(),
            granted_at: row.granted_at,
            served_payload: row.served_payload,
        }
    }
}

/// Instance operations inside a write transaction.
pub trait InstanceTx: Send {
    /// The stored row of a machine's instance, as of this transaction.
    fn instance<'a>(
        &'a mut self,
        machine_id: &'a str,
        app_id: &'a str,
    ) -> TxFuture<'a, Option<Instance>>;
    /// Writes check-ins: creates missing rows (status `idle`), and updates the check-in columns
    /// of a stored row unless it holds a newer check-in.
    fn check_in<'a>(&'a mut self, rows: &'a [CheckIn]) -> TxFuture<'a, ()>;
    /// Writes one check-in as [`InstanceTx::check_in`] does and returns the machine's row as
    /// it was stored before: [`InstanceTx::instance`] then [`InstanceTx::check_in`], in one
    /// round trip where the store talks to a server.
    fn check_in_returning_previous<'a>(
        &'a mut self,
        row: &'a CheckIn,
    ) -> TxFuture<'a, Option<Instance>> {
        Box::pin(async move {
            let previous = self.instance(&row.machine_id, &row.app_id).await?;
            self.check_in(std::slice::from_ref(row)).await?;
            Ok(previous)
        })
    }
    /// [`InstanceTx::check_in_returning_previous`] and, where the store can in the same round
    /// trip, what the grant attempt `grant` plans to read
    /// ([`crate::rollout::grants::GrantTx::prefetch_grant`], the group's lock taken), as of
    /// before the check-in (which changes nothing the attempt reads: a new row's first contact is
    /// the one the attempt is given). `None` for the context: read it when the attempt comes.
    fn check_in_and_prefetch<'a>(
        &'a mut self,
        row: &'a CheckIn,
        grant: Option<&'a GrantPrefetch<'a>>,
    ) -> TxFuture<'a, (Option<Instance>, Option<GrantContext>)> {
        let _ = grant;
        Box::pin(async move { Ok((self.check_in_returning_previous(row).await?, None)) })
    }
    /// Sets the status columns of an existing row.
    fn set_status<'a>(
        &'a mut self,
        machine_id: &'a str,
        app_id: &'a str,
        status: &'a StatusColumns,
    ) -> TxFuture<'a, ()>;
    /// Appends what explains a change: the status history entry, event rows (stamped with the
    /// version the machine ran and the time) and activity entries.
    fn record_change<'a>(
        &'a mut self,
        machine_id: &'a str,
        app_id: &'a str,
        version: &'a str,
        at: i64,
        change: &'a InstanceChange,
    ) -> TxFuture<'a, ()>;
}
