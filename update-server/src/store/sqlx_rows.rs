//! Stored rows and values decoded into the model once for both sqlx databases (SQLite and
//! PostgreSQL): every decoder reads a [`PortableRow`] column by column, by name, and reports a
//! value that does not decode, or that no model value stands for, as corrupt data naming its
//! table and column.

use std::collections::BTreeMap;

use super::credential::{CredentialSource, MachineCredential};
use super::fleetlock::{LockGroup, LockHolder};
use super::retention::StaleInstance;
use super::rollout::{RefusalReason, RefusedVersion};
use super::sqlx_shared::{PortableRow, get};
use super::{CatalogueData, InstanceCount, StoreError};
use crate::lifecycle::InstanceStatus;
use crate::model::{
    Activity, App, Channel, CompletesOn, EventRecord, Group, GroupPolicy, Instance, Package,
    PackageDelta, PackageFile, PackageFormat, ServedPayload, Severity, StatusChange,
};
use crate::retention::protection::{GroupFacts, RolloutFacts};

/// A stored count or size, which is never negative.
pub fn u64_of(v: i64, table: &'static str, column: &'static str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt {
        table,
        column,
        detail: format!("negative {v}"),
    })
}

/// A stored instance status.
pub fn status_of(s: &str, table: &'static str) -> Result<InstanceStatus, StoreError> {
    InstanceStatus::parse(s).ok_or_else(|| StoreError::Corrupt {
        table,
        column: "status",
        detail: format!("unknown status {s:?}"),
    })
}

/// A group's stored policy.
pub fn policy_of(json: &str) -> Result<GroupPolicy, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt {
        table: "groups_",
        column: "policy",
        detail: e.to_string(),
    })
}

/// A group's policy, as stored.
pub fn policy_json(g: &Group) -> Result<String, StoreError> {
    serde_json::to_string(&g.policy).map_err(|e| StoreError::Corrupt {
        table: "groups_",
        column: "policy",
        detail: e.to_string(),
    })
}

/// A row of `instances` (selected with `*`).
pub fn instance_of<R: PortableRow>(r: &R) -> Result<Instance, StoreError> {
    const T: &str = "instances";
    Ok(Instance {
        machine_id: get(r, T, "machine_id")?,
        app_id: get(r, T, "app_id")?,
        alias: get(r, T, "alias")?,
        ip: get(r, T, "ip")?,
        version: get(r, T, "version")?,
        group_id: get(r, T, "group_id")?,
        track: get(r, T, "track")?,
        oem: get(r, T, "oem")?,
        oem_version: get(r, T, "oem_version")?,
        board: get(r, T, "board")?,
        boot_id: get(r, T, "boot_id")?,
        last_check_at: get(r, T, "last_check_at")?,
        granted_version: get(r, T, "granted_version")?,
        granted_at: get(r, T, "granted_at")?,
        status: status_of(&get::<String, _>(r, T, "status")?, T)?,
        status_detail: get(r, T, "status_detail")?,
        error_code: get(r, T, "error_code")?,
        status_at: get(r, T, "status_at")?,
        created_at: get(r, T, "created_at")?,
        served_payload: served_payload_of(get(r, T, "served_payload")?, T)?,
    })
}

/// The `served_payload` column of an instance row.
pub fn served_payload_of(
    s: Option<String>,
    table: &'static str,
) -> Result<Option<ServedPayload>, StoreError> {
    s.map(|s| {
        ServedPayload::parse(&s).ok_or_else(|| StoreError::Corrupt {
            table,
            column: "served_payload",
            detail: format!("unknown payload kind {s:?}"),
        })
    })
    .transpose()
}

/// A page of a listing of `instances` (rows selected with `*`) and the count of every row the
/// listing matches.
pub fn instance_page_of<R: PortableRow>(
    rows: &[R],
    total: i64,
) -> Result<(Vec<Instance>, u64), StoreError> {
    let page = rows.iter().map(instance_of).collect::<Result<_, _>>()?;
    Ok((page, u64_of(total, "instances", "count")?))
}

/// A row of `apps` (selected with `*`).
pub fn app_of<R: PortableRow>(r: &R) -> Result<App, StoreError> {
    const T: &str = "apps";
    Ok(App {
        id: get(r, T, "id")?,
        name: get(r, T, "name")?,
        description: get(r, T, "description")?,
        created_at: get(r, T, "created_at")?,
        completes_on: {
            let c: String = get(r, T, "completes_on")?;
            CompletesOn::parse(&c).ok_or_else(|| StoreError::Corrupt {
                table: T,
                column: "completes_on",
                detail: format!("unknown completion event {c:?}"),
            })?
        },
    })
}

/// A row of `packages` (selected with `*`).
pub fn package_of<R: PortableRow>(r: &R) -> Result<Package, StoreError> {
    const T: &str = "packages";
    Ok(Package {
        id: get(r, T, "id")?,
        app_id: get(r, T, "app_id")?,
        version: get(r, T, "version")?,
        arch: get(r, T, "arch")?,
        kind: get(r, T, "kind")?,
        filename: get(r, T, "filename")?,
        size: u64_of(get(r, T, "size")?, T, "size")?,
        sha1_base64: get(r, T, "sha1_base64")?,
        sha256_hex: get(r, T, "sha256_hex")?,
        external_url: get(r, T, "external_url")?,
        created_at: get(r, T, "created_at")?,
        format: {
            let f: String = get(r, T, "format")?;
            PackageFormat::parse(&f).ok_or_else(|| StoreError::Corrupt {
                table: T,
                column: "format",
                detail: format!("unknown package format {f:?}"),
            })?
        },
        metadata_size: get::<Option<i64>, _>(r, T, "metadata_size")?
            .map(|m| u64_of(m, T, "metadata_size"))
            .transpose()?,
        metadata_signature_rsa: get(r, T, "metadata_signature_rsa")?,
        deadline: get(r, T, "deadline")?,
        is_delta: get::<i64, _>(r, T, "is_delta")? != 0,
        disable_payload_backoff: get::<i64, _>(r, T, "disable_payload_backoff")? != 0,
        needs_admin: get::<i64, _>(r, T, "needs_admin")? != 0,
        files: Vec::new(),
        deltas: Vec::new(),
    })
}

/// The deltas of every package (rows of `package_deltas`, selected with `*`), by package id.
pub fn package_deltas_of<R: PortableRow>(
    rows: &[R],
) -> Result<BTreeMap<String, Vec<PackageDelta>>, StoreError> {
    const T: &str = "package_deltas";
    let mut deltas: BTreeMap<String, Vec<PackageDelta>> = BTreeMap::new();
    for r in rows {
        deltas
            .entry(get(r, T, "package_id")?)
            .or_default()
            .push(PackageDelta {
                source_version: get(r, T, "source_version")?,
                filename: get(r, T, "filename")?,
                size: u64_of(get(r, T, "size")?, T, "size")?,
                sha1_base64: get(r, T, "sha1_base64")?,
                sha256_hex: get(r, T, "sha256_hex")?,
                created_at: get(r, T, "created_at")?,
            });
    }
    Ok(deltas)
}

/// The extra files of every package (rows of `package_files`, selected with `*`, in order), by
/// package id.
pub fn package_files_of<R: PortableRow>(
    rows: &[R],
) -> Result<BTreeMap<String, Vec<PackageFile>>, StoreError> {
    const T: &str = "package_files";
    let mut files: BTreeMap<String, Vec<PackageFile>> = BTreeMap::new();
    for r in rows {
        files
            .entry(get(r, T, "package_id")?)
            .or_default()
            .push(PackageFile {
                name: get(r, T, "name")?,
                size: u64_of(get(r, T, "size")?, T, "size")?,
                sha1_base64: get(r, T, "sha1_base64")?,
                sha256_hex: get(r, T, "sha256_hex")?,
            });
    }
    Ok(files)
}

/// A channel's package pointers: package id by format and architecture.
type ChannelPointers = BTreeMap<(PackageFormat, String), String>;

/// The package pointers of every channel (rows of `channel_packages`, selected with `*`): the
/// package id per format and architecture, by channel id.
pub fn channel_pointers_of<R: PortableRow>(
    rows: &[R],
) -> Result<BTreeMap<String, ChannelPointers>, StoreError> {
    const T: &str = "channel_packages";
    let mut pointers: BTreeMap<String, ChannelPointers> = BTreeMap::new();
    for r in rows {
        let f: String = get(r, T, "format")?;
        let format = PackageFormat::parse(&f).ok_or_else(|| StoreError::Corrupt {
            table: T,
            column: "format",
            detail: format!("unknown package format {f:?}"),
        })?;
        pointers
            .entry(get(r, T, "channel_id")?)
            .or_default()
            .insert((format, get(r, T, "arch")?), get(r, T, "package_id")?);
    }
    Ok(pointers)
}

/// A row of `channels` (selected with `*`), with its package pointers taken from `pointers`
/// (see [`channel_pointers_of`]).
pub fn channel_of<R: PortableRow>(
    r: &R,
    pointers: &mut BTreeMap<String, ChannelPointers>,
) -> Result<Channel, StoreError> {
    const T: &str = "channels";
    let id: String = get(r, T, "id")?;
    let mut c = Channel {
        packages: BTreeMap::new(),
        update_engine_packages: BTreeMap::new(),
        id,
        app_id: get(r, T, "app_id")?,
        name: get(r, T, "name")?,
        created_at: get(r, T, "created_at")?,
    };
    for ((format, arch), package) in pointers.remove(&c.id).unwrap_or_default() {
        c.pointers_mut(format).insert(arch, package);
    }
    Ok(c)
}

/// A row of `groups_` (selected with `*`).
pub fn group_of<R: PortableRow>(r: &R) -> Result<Group, StoreError> {
    const T: &str = "groups_";
    let policy = policy_of(&get::<String, _>(r, T, "policy")?)?;
    Ok(Group {
        id: get(r, T, "id")?,
        app_id: get(r, T, "app_id")?,
        name: get(r, T, "name")?,
        track: get(r, T, "track")?,
        channel_id: get(r, T, "channel_id")?,
        description: get(r, T, "description")?,
        policy,
        created_at: get(r, T, "created_at")?,
    })
}

/// The rows the catalogue ([`CatalogueData`]) is decoded from, each table's in the order the
/// catalogue lists it.
#[derive(Debug)]
pub struct CatalogueRows<R> {
    /// Rows of `apps`.
    pub apps: Vec<R>,
    /// Rows of `packages`.
    pub packages: Vec<R>,
    /// Rows of `package_files`, in order.
    pub package_files: Vec<R>,
    /// Rows of `package_deltas`.
    pub package_deltas: Vec<R>,
    /// Rows of `channel_packages`.
    pub channel_packages: Vec<R>,
    /// Rows of `channels`.
    pub channels: Vec<R>,
    /// Rows of `groups_`.
    pub groups: Vec<R>,
    /// Machine ids and their aliases (rows of `machine_aliases`).
    pub machine_aliases: Vec<(String, String)>,
}

impl<R: PortableRow> CatalogueRows<R> {
    /// The catalogue these rows hold.
    pub fn decode(self) -> Result<CatalogueData, StoreError> {
        let apps = self.apps.iter().map(app_of).collect::<Result<_, _>>()?;
        let mut files = package_files_of(&self.package_files)?;
        let mut deltas = package_deltas_of(&self.package_deltas)?;
        let packages = self
            .packages
            .iter()
            .map(|r| {
                let mut p = package_of(r)?;
                p.files = files.remove(&p.id).unwrap_or_default();
                p.deltas = deltas.remove(&p.id).unwrap_or_default();
                Ok(p)
            })
            .collect::<Result<_, StoreError>>()?;
        let mut pointers = channel_pointers_of(&self.channel_packages)?;
        let channels = self
            .channels
            .iter()
            .map(|r| channel_of(r, &mut pointers))
            .collect::<Result<_, _>>()?;
        Ok(CatalogueData {
            apps,
            packages,
            channels,
            groups: self.groups.iter().map(group_of).collect::<Result<_, _>>()?,
            machine_aliases: self.machine_aliases.into_iter().collect(),
        })
    }
}

/// A row of the instance counts (application, group, version, status, count).
pub type InstanceCountRow = (String, Option<String>, String, String, i64);

/// A row of [`super::sqlx_shared::COUNT_GROUP_INSTANCES`].
pub type GroupInstanceCountRow = (String, String, String, i64);

/// The columns of a version sample row (see [`version_sample_of`]).
pub type VersionSampleRow = (String, String, i64, String, i64, i64);

/// One version sample, from its row.
pub fn version_sample_of(
    (app_id, group_id, at, version, other_versions, machines): VersionSampleRow,
) -> Result<super::VersionSample, StoreError> {
    Ok(super::VersionSample {
        app_id,
        group_id,
        at,
        version: (other_versions == 0).then_some(version),
        machines: u64_of(machines, "group_version_samples", "machines")?,
    })
}

/// One group instance count, from its row.
pub fn group_instance_count_of(
    (version, status, hold_reason, n): GroupInstanceCountRow,
) -> Result<super::GroupInstanceCount, StoreError> {
    Ok(super::GroupInstanceCount {
        version,
        status: status_of(&status, "instances")?,
        hold_reason,
        count: u64_of(n, "instances", "COUNT(*)")?,
    })
}

/// One instance count, from its row.
pub fn instance_count_of(
    (app_id, group_id, version, status, count): InstanceCountRow,
) -> Result<InstanceCount, StoreError> {
    Ok(InstanceCount {
        app_id,
        group_id,
        version,
        status: status_of(&status, "instances")?,
        count,
    })
}

/// A row of `instance_status_history` (selected with `*`).
pub fn status_change_of<R: PortableRow>(r: &R) -> Result<StatusChange, StoreError> {
    const T: &str = "instance_status_history";
    Ok(StatusChange {
        status: status_of(&get::<String, _>(r, T, "status")?, T)?,
        version: get(r, T, "version")?,
        detail: get(r, T, "detail")?,
        error_code: get(r, T, "error_code")?,
        at: get(r, T, "at")?,
    })
}

/// A row of `events` (selected with `*`).
pub fn event_of<R: PortableRow>(r: &R) -> Result<EventRecord, StoreError> {
    const T: &str = "events";
    Ok(EventRecord {
        id: get(r, T, "id")?,
        machine_id: get(r, T, "machine_id")?,
        app_id: get(r, T, "app_id")?,
        event_type: get(r, T, "event_type")?,
        event_result: get(r, T, "event_result")?,
        error_code: get(r, T, "error_code")?,
        previous_version: get(r, T, "previous_version")?,
        version: get(r, T, "version")?,
        at: get(r, T, "at")?,
    })
}

/// A row of `activity` (selected with `*`); an unknown severity reads as `info`.
pub fn activity_of<R: PortableRow>(r: &R) -> Result<Activity, StoreError> {
    const T: &str = "activity";
    Ok(Activity {
        id: get(r, T, "id")?,
        at: get(r, T, "at")?,
        kind: get(r, T, "kind")?,
        severity: Severity::parse(&get::<String, _>(r, T, "severity")?),
        app_id: get(r, T, "app_id")?,
        group_id: get(r, T, "group_id")?,
        machine_id: get(r, T, "machine_id")?,
        version: get(r, T, "version")?,
        message: get(r, T, "message")?,
    })
}

/// A row of `machine_credentials` (`machine_id`, `public_key`, `source`, `created_at`).
pub fn credential_of<R: PortableRow>(r: &R) -> Result<MachineCredential, StoreError> {
    const T: &str = "machine_credentials";
    let source: String = get(r, T, "source")?;
    Ok(MachineCredential {
        machine_id: get(r, T, "machine_id")?,
        public_key: get(r, T, "public_key")?,
        source: CredentialSource::parse(&source).ok_or_else(|| StoreError::Corrupt {
            table: T,
            column: "source",
            detail: format!("unknown source {source:?}"),
        })?,
        created_at: get(r, T, "created_at")?,
    })
}

/// The FleetLock table of configured groups.
const LOCK_GROUPS: &str = "fleetlock_groups";
/// The FleetLock table of slot holders.
const LOCK_HOLDERS: &str = "fleetlock_holders";

/// A counted number of FleetLock slot holders.
pub fn holder_count_of(v: i64) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| StoreError::Corrupt {
        table: LOCK_HOLDERS,
        column: "count",
        detail: format!("count {v} out of range"),
    })
}

/// A FleetLock group's stored slot count.
pub fn slots_of(v: i64) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| StoreError::Corrupt {
        table: LOCK_GROUPS,
        column: "slots",
        detail: format!("slot count {v} out of range"),
    })
}

/// Every FleetLock group, by name: the configured ones (rows of `fleetlock_groups`: `name`,
/// `slots`) and those only holders name (with `default_slots`), each with its holders (rows
/// of `fleetlock_holders`: `group_name`, `holder_id`, `since`) in the order of `holders`.
pub fn lock_groups_of<R: PortableRow>(
    groups: &[R],
    holders: &[R],
    default_slots: u32,
) -> Result<Vec<LockGroup>, StoreError> {
    let mut by_name: BTreeMap<String, LockGroup> = BTreeMap::new();
    for r in groups {
        let name: String = get(r, LOCK_GROUPS, "name")?;
        let slots = slots_of(get(r, LOCK_GROUPS, "slots")?)?;
        by_name.insert(
            name.clone(),
            LockGroup {
                group: name,
                slots,
                configured: true,
                holders: Vec::new(),
            },
        );
    }
    for r in holders {
        let name: String = get(r, LOCK_HOLDERS, "group_name")?;
        let holder = LockHolder {
            id: get(r, LOCK_HOLDERS, "holder_id")?,
            since: get(r, LOCK_HOLDERS, "since")?,
        };
        by_name
            .entry(name.clone())
            .or_insert_with(|| LockGroup {
                group: name,
                slots: default_slots,
                configured: false,
                holders: Vec::new(),
            })
            .holders
            .push(holder);
    }
    Ok(by_name.into_values().collect())
}

/// The table of refused versions.
const REFUSED: &str = "refused_versions";

/// A stored refusal reason.
pub fn refusal_reason(r: &str) -> Result<RefusalReason, StoreError> {
    RefusalReason::parse(r).ok_or_else(|| StoreError::Corrupt {
        table: REFUSED,
        column: "reason",
        detail: format!("unknown reason {r:?}"),
    })
}

/// A row of `refused_versions` (`machine_id`, `app_id`, `version`, `reason`, `error_code`,
/// `at`).
pub fn refused_version_of<R: PortableRow>(r: &R) -> Result<RefusedVersion, StoreError> {
    Ok(RefusedVersion {
        machine_id: get(r, REFUSED, "machine_id")?,
        app_id: get(r, REFUSED, "app_id")?,
        version: get(r, REFUSED, "version")?,
        reason: refusal_reason(&get::<String, _>(r, REFUSED, "reason")?)?,
        error_code: get(r, REFUSED, "error_code")?,
        at: get(r, REFUSED, "at")?,
    })
}

/// A stale instance: a row of `instances` (`machine_id`, `app_id`, `last_check_at`).
pub fn stale_instance_of<R: PortableRow>(r: &R) -> Result<StaleInstance, StoreError> {
    const T: &str = "instances";
    Ok(StaleInstance {
        key: (get(r, T, "machine_id")?, get(r, T, "app_id")?),
        last_check_at: get(r, T, "last_check_at")?,
    })
}

/// What the rollout protection rule is computed from: `targets`, the version of each package a
/// channel points at (channel id, version), and `groups`, every group (id, channel, policy as
/// stored).
pub fn rollout_facts_of(
    targets: Vec<(String, String)>,
    groups: Vec<(String, Option<String>, String)>,
) -> RolloutFacts {
    let mut facts = RolloutFacts::default();
    for (channel, version) in targets {
        facts
            .channel_versions
            .entry(channel)
            .or_default()
            .push(version);
    }
    facts.groups = groups
        .into_iter()
        .map(|(id, channel, policy)| GroupFacts {
            id,
            channel,
            policy,
        })
        .collect();
    facts
}
