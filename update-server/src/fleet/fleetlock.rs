//! FleetLock seen from the fleet: which machine holds which reboot slot. The semaphore and its
//! operations (take, release, force-release, slot counts) are [`FleetLock`]'s, which the admin
//! API and the dashboard both call; this module only ties its holders to machines.
//!
//! A holder is named by the id its client sent, which is not the machine id a machine reports
//! over Omaha: the Platte agent (like Zincati) sends its *app-specific* machine id
//! ([`agent_lock_id`]), an HMAC of `/etc/machine-id` that does not reveal it. A holder is the
//! machine whose id equals it, or whose app-specific id does.

use std::collections::HashSet;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{Fleet, FleetResult};
use crate::fleetlock::FleetLock;
use crate::store::InstanceFilter;

/// The application id the Platte agent derives its FleetLock id with
/// (`update-agent`'s `FLEET_LOCK_APP_ID`).
pub const AGENT_LOCK_APP_ID: &str = "a0c3f1d2e4b5468797a8b9cadbecfd0e";

/// Instance rows read at a time while looking for the machines behind holders.
const SCAN_PAGE: u32 = 1000;
/// Most pages of instances read to tie FleetLock ids to machines, per page view.
const MAX_SCAN_PAGES: u32 = 20;

/// A holder of a reboot slot and the machine it is, when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The id its client sent (`client_params.id`).
    pub id: String,
    /// When it took the slot (Unix seconds).
    pub since: i64,
    /// The machine id of the instance it is, if one is known.
    pub machine: Option<String>,
}

/// A FleetLock group with its holders tied to machines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HolderGroup {
    /// Group name (`client_params.group`).
    pub group: String,
    /// Reboot slots (concurrent reboots allowed).
    pub slots: u32,
    /// Whether an operator set `slots` (false: the server's default applies).
    pub configured: bool,
    /// Holders, oldest first.
    pub holders: Vec<Holder>,
}

/// A slot a machine holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineSlot {
    /// Group name.
    pub group: String,
    /// The id the slot is held under (the machine id or its app-specific id).
    pub holder_id: String,
    /// Since when (Unix seconds).
    pub since: i64,
}

/// The FleetLock id the Platte agent sends for `machine_id` (systemd's
/// `sd_id128_get_machine_app_specific` with [`AGENT_LOCK_APP_ID`]: HMAC-SHA256 keyed with the
/// machine id's 16 bytes over the application id's, truncated to 16 bytes, marked as a
/// version-4 UUID, 32 lowercase hex digits); `None` when `machine_id` is not 32 hex digits.
pub fn agent_lock_id(machine_id: &str) -> Option<String> {
    let mut key = [0u8; 16];
    hex::decode_to_slice(machine_id.trim(), &mut key).ok()?;
    let mut app = [0u8; 16];
    hex::decode_to_slice(AGENT_LOCK_APP_ID, &mut app).ok()?;
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).ok()?;
    mac.update(&app);
    let digest = mac.finalize().into_bytes();
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    Some(hex::encode(id))
}

/// Whether `holder_id` is machine `machine_id`: its id, or the app-specific id its agent sends.
pub fn holds(holder_id: &str, machine_id: &str) -> bool {
    holder_id == machine_id
        || agent_lock_id(machine_id).is_some_and(|id| id.eq_ignore_ascii_case(holder_id))
}

/// Whether `id` could be an app-specific id (32 hex digits), so worth looking for.
fn may_be_app_specific(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Fleet {
    /// Every FleetLock group (configured or with holders) with its holders tied to machines:
    /// a holder whose id is a machine's, else (reading the instances until every holder is
    /// found) one whose app-specific id is. Best effort: a holder no known machine matches
    /// keeps `machine: None`.
    pub async fn lock_groups(&self, lock: &FleetLock) -> FleetResult<Vec<HolderGroup>> {
        let groups = lock.groups().await?;
        self.flush_checkins().await?;
        let mut out = Vec::with_capacity(groups.len());
        let mut unresolved = HashSet::new();
        for g in groups {
            let mut holders = Vec::with_capacity(g.holders.len());
            for h in g.holders {
                let machine = self.known_machine(&h.id).await?.then(|| h.id.clone());
                if machine.is_none() && may_be_app_specific(&h.id) {
                    unresolved.insert(h.id.to_ascii_lowercase());
                }
                holders.push(Holder {
                    id: h.id,
                    since: h.since,
                    machine,
                });
            }
            out.push(HolderGroup {
                group: g.group,
                slots: g.slots,
                configured: g.configured,
                holders,
            });
        }
        if !unresolved.is_empty() {
            let found = self.machines_by_lock_id(unresolved).await?;
            for h in out.iter_mut().flat_map(|g| g.holders.iter_mut()) {
                if h.machine.is_none() {
                    h.machine = found
                        .iter()
                        .find(|(lock_id, _)| lock_id.eq_ignore_ascii_case(&h.id))
                        .map(|(_, machine)| machine.clone());
                }
            }
        }
        Ok(out)
    }

    /// The FleetLock slots machine `machine` holds (under its id or its app-specific id),
    /// by group name.
    pub async fn lock_slots_of(
        &self,
        lock: &FleetLock,
        machine: &str,
    ) -> FleetResult<Vec<MachineSlot>> {
        Ok(lock
            .groups()
            .await?
            .into_iter()
            .flat_map(|g| {
                g.holders
                    .into_iter()
                    .filter(|h| holds(&h.id, machine))
                    .map(move |h| MachineSlot {
                        group: g.group.clone(),
                        holder_id: h.id,
                        since: h.since,
                    })
            })
            .collect())
    }

    /// Whether some instance has machine id `id`.
    async fn known_machine(&self, id: &str) -> FleetResult<bool> {
        let f = InstanceFilter {
            machine_id: Some(id.to_owned()),
            limit: 1,
            ..Default::default()
        };
        Ok(!self.store.list_instances(&f).await?.0.is_empty())
    }

    /// The machines whose app-specific ids are among `wanted` (lowercase), as
    /// `(lock id, machine id)`: reads the instances a page at a time, most recent check-in
    /// first (a machine holding a slot is one that checks in), until all are found or
    /// [`MAX_SCAN_PAGES`] pages are read (a holder no machine matches, which any FleetLock
    /// client can create, must not make every page view read the whole fleet).
    async fn machines_by_lock_id(
        &self,
        mut wanted: HashSet<String>,
    ) -> FleetResult<Vec<(String, String)>> {
        let mut found = Vec::new();
        let mut seen = HashSet::new();
        let mut offset = 0u32;
        let mut pages = 0;
        while !wanted.is_empty() && pages < MAX_SCAN_PAGES {
            pages += 1;
            let f = InstanceFilter {
                limit: SCAN_PAGE,
                offset,
                ..Default::default()
            };
            let (rows, _) = self.store.list_instances(&f).await?;
            for row in &rows {
                if !seen.insert(row.machine_id.clone()) {
                    continue;
                }
                if let Some(id) = agent_lock_id(&row.machine_id)
                    && wanted.remove(&id)
                {
                    found.push((id, row.machine_id.clone()));
                }
            }
            if rows.len() < SCAN_PAGE as usize {
                break;
            }
            offset = offset.saturating_add(SCAN_PAGE);
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agents_lock_id_is_systemds_app_specific_id() {
        // `systemd-id128 machine-id --app-specific=a0c3f1d2e4b5468797a8b9cadbecfd0e` on a
        // machine whose /etc/machine-id is 0123456789abcdef0123456789abcdef.
        let want = "5f2dc83233ae4336a7ccaa5b681828c7";
        assert_eq!(
            agent_lock_id("0123456789abcdef0123456789abcdef").as_deref(),
            Some(want)
        );
        assert_eq!(
            agent_lock_id("0123456789ABCDEF0123456789ABCDEF\n").as_deref(),
            Some(want)
        );
        assert_eq!(agent_lock_id("m1"), None);
        assert_eq!(agent_lock_id(""), None);
    }

    #[test]
    fn a_holder_is_a_machine_by_its_id_or_its_agents_lock_id() {
        let machine = "0123456789abcdef0123456789abcdef";
        assert!(holds(machine, machine));
        assert!(holds("5f2dc83233ae4336a7ccaa5b681828c7", machine));
        assert!(holds("5F2DC83233AE4336A7CCAA5B681828C7", machine));
        assert!(!holds("5f2dc83233ae4336a7ccaa5b681828c8", machine));
        assert!(holds("web-1", "web-1"));
        assert!(!holds("web-1", "web-2"));
        assert!(!holds("Web-1", "web-1"), "plain ids are case-sensitive");
    }
}
