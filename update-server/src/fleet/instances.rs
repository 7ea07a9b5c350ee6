//! Instances: one row per machine and application, written by check-ins. An operator lists and
//! inspects them, deletes retired machines, clears a machine's refusals so it may be offered a
//! version again, and names machines with an operator alias (the only alias canaries match).
//! Pending check-ins are written first, so every machine that checked in is seen.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{Fleet, FleetError, FleetResult, activity, check_text};
use crate::lifecycle::InstanceStatus;
use crate::model::{Instance, StatusChange, normalize_appid};
use crate::store::rollout::RefusedVersion;
use crate::store::{InstanceFilter, StoreError};
use crate::version;

/// Most bytes of an operator-assigned alias.
const MAX_ALIAS: usize = 64;
/// Instances a page lists by default.
const DEFAULT_PAGE: u32 = 100;
/// Most instances a page lists.
const MAX_PAGE: u32 = 1000;
/// Status changes shown per application of a machine.
const HISTORY_SHOWN: u32 = 200;

/// Query of `GET /instances`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InstanceQuery {
    /// Application.
    pub app: Option<String>,
    /// Group (id).
    pub group: Option<String>,
    /// Exact version.
    pub version: Option<String>,
    /// Status (`granted`, `installed`, `error`...).
    pub status: Option<String>,
    /// Substring of machine id, alias or IP.
    pub search: Option<String>,
    /// Page size (default 100, max 1000).
    pub limit: Option<u32>,
    /// Offset.
    pub offset: Option<u32>,
}

/// A page of instances.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InstancePage {
    /// Total matching.
    pub total: u64,
    /// This page.
    pub instances: Vec<Instance>,
}

/// One app of a machine with its history.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InstanceWithHistory {
    /// Current row.
    pub instance: Instance,
    /// Status history, newest first.
    pub history: Vec<StatusChange>,
    /// Versions this machine is never offered again (it rolled back from them or deny-listed
    /// them), oldest first; cleared by `POST /instances/{machine}/retry`.
    #[serde(default)]
    pub refused_versions: Vec<RefusedVersion>,
}

/// A machine with every app it runs.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InstanceDetail {
    /// Machine id.
    pub machine_id: String,
    /// The alias an operator assigned (`PATCH /instances/{machine}`), if any; each app's
    /// `instance.alias` is the one the machine reports.
    #[serde(default)]
    pub operator_alias: Option<String>,
    /// Per application.
    pub apps: Vec<InstanceWithHistory>,
}

/// Query of `DELETE /instances/{machine}`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteInstanceQuery {
    /// Only this application's row.
    pub app: Option<String>,
}

/// Query of `POST /instances/{machine}/retry`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RetryQuery {
    /// Only this application [default: every application of the machine].
    pub app: Option<String>,
    /// Only this version [default: every refused version].
    pub version: Option<String>,
}

/// Answer of `POST /instances/{machine}/retry`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RetryAnswer {
    /// Machine id.
    pub machine_id: String,
    /// The refusals cleared (empty when there were none).
    pub cleared: Vec<RefusedVersion>,
}

/// Body of `PATCH /instances/{machine}`.
#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
pub struct UpdateInstance {
    /// The alias an operator assigns to the machine (1..=64 printable characters, no spaces,
    /// unique among machines); rollout canaries may name the machine by it. `null` or `""`
    /// removes it. The alias the machine reports itself is kept apart and never matched.
    pub alias: Option<String>,
}

/// Answer of `PATCH /instances/{machine}`.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct InstanceAlias {
    /// Machine id.
    pub machine_id: String,
    /// The alias an operator assigned, if any.
    pub operator_alias: Option<String>,
}

impl Fleet {
    /// A page of the instances matching `query`.
    pub async fn list_instances(&self, query: InstanceQuery) -> FleetResult<InstancePage> {
        let status = match query.status.as_deref() {
            Some(s) => Some(
                InstanceStatus::parse(s)
                    .ok_or_else(|| FleetError::Invalid(format!("unknown status {s:?}")))?,
            ),
            None => None,
        };
        self.flush_checkins().await?;
        let f = InstanceFilter {
            machine_id: None,
            app_id: query.app.map(|a| normalize_appid(&a)),
            group_id: query.group,
            version: query.version,
            status,
            search: query.search,
            limit: query.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE),
            offset: query.offset.unwrap_or(0),
        };
        let (instances, total) = self.store.list_instances(&f).await?;
        Ok(InstancePage { total, instances })
    }

    /// A machine: every application it runs with its status history and refused versions.
    pub async fn instance(&self, machine: &str) -> FleetResult<InstanceDetail> {
        self.flush_checkins().await?;
        let f = InstanceFilter {
            machine_id: Some(machine.to_owned()),
            limit: MAX_PAGE,
            ..Default::default()
        };
        let (rows, _) = self.store.list_instances(&f).await?;
        if rows.is_empty() {
            return Err(FleetError::NotFound(format!("instance {machine}")));
        }
        let refused = self
            .service
            .rollouts
            .grants
            .refused_versions(machine, None)
            .await?;
        let mut apps = Vec::new();
        for instance in rows {
            let history = self
                .store
                .instance_history(machine, &instance.app_id, HISTORY_SHOWN)
                .await?;
            let refused_versions = refused
                .iter()
                .filter(|r| r.app_id == instance.app_id)
                .cloned()
                .collect();
            apps.push(InstanceWithHistory {
                instance,
                history,
                refused_versions,
            });
        }
        let operator_alias = self.catalogue().operator_alias(machine).map(str::to_owned);
        Ok(InstanceDetail {
            machine_id: machine.to_owned(),
            operator_alias,
            apps,
        })
    }

    /// Deletes a machine (or one application's row of it), pending check-ins included; it
    /// registers again if it checks in again.
    pub async fn delete_instance(
        &self,
        machine: &str,
        query: DeleteInstanceQuery,
    ) -> FleetResult<()> {
        let app = query.app.map(|a| normalize_appid(&a));
        // Pending check-ins first: a machine only seen so far is deleted too. No batch is
        // written while the row is deleted, so none re-creates it.
        let known = self.instance_known(machine, app.as_deref()).await?;
        let _no_batches = self.service.checkins.hold().await;
        self.service.checkins.forget(machine, app.as_deref());
        let mut act = activity(
            "instance_deleted",
            app.as_deref(),
            format!("instance {machine} deleted"),
        );
        act.machine_id = Some(machine.to_owned());
        match self
            .store
            .delete_instance(machine, app.as_deref(), &act)
            .await
        {
            Ok(_) => Ok(()),
            Err(StoreError::NotFound(_)) if known => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Lets a machine be offered versions it refused again (it rolled back from them or
    /// deny-listed them): clears its refusals (for one app or all, one version or all). Its
    /// next check goes through the rollout policy as usual.
    pub async fn retry_instance(
        &self,
        machine: &str,
        query: RetryQuery,
    ) -> FleetResult<RetryAnswer> {
        let app = query.app.map(|a| normalize_appid(&a));
        if let Some(v) = &query.version
            && !version::is_valid(v)
        {
            return Err(FleetError::Invalid(format!(
                "version {v:?} is not a version (expected e.g. 3510.2.0)"
            )));
        }
        let grants = &self.service.rollouts.grants;
        let known = self.instance_known(machine, app.as_deref()).await?
            || !grants
                .refused_versions(machine, app.as_deref())
                .await?
                .is_empty();
        if !known {
            let what = app.map_or_else(
                || format!("instance {machine}"),
                |a| format!("instance {machine} of {a}"),
            );
            return Err(FleetError::NotFound(what));
        }
        let which = query.version.as_deref().unwrap_or("every refused version");
        let mut act = activity(
            "instance_retry",
            app.as_deref(),
            format!("{machine} may be offered {which} again (refusal cleared by an operator)"),
        );
        act.machine_id = Some(machine.to_owned());
        act.version.clone_from(&query.version);
        let cleared = grants
            .clear_refusals(
                machine,
                app.as_deref(),
                query.version.as_deref(),
                &act,
                self.now(),
            )
            .await?;
        Ok(RetryAnswer {
            machine_id: machine.to_owned(),
            cleared,
        })
    }

    /// Assigns (or, with no alias or an empty one, removes) a machine's operator alias: the
    /// only alias rollout canaries match.
    pub async fn set_instance_alias(
        &self,
        machine: &str,
        input: UpdateInstance,
    ) -> FleetResult<InstanceAlias> {
        let alias = input.alias.filter(|a| !a.is_empty());
        if let Some(a) = &alias {
            check_text("alias", a, MAX_ALIAS)?;
            if a.chars().any(char::is_whitespace) {
                return Err(FleetError::Invalid("alias must not contain spaces".into()));
            }
        }
        let _writing = self.write_lock.lock().await;
        if !self.instance_known(machine, None).await? {
            return Err(FleetError::NotFound(format!("instance {machine}")));
        }
        let message = match &alias {
            Some(a) => format!("{machine} is now called {a:?} by the operators"),
            None => format!("{machine}'s operator alias was removed"),
        };
        let mut act = activity("instance_alias_set", None, message);
        act.machine_id = Some(machine.to_owned());
        self.service
            .rollouts
            .grants
            .set_machine_alias(machine, alias.as_deref(), &act, self.now())
            .await?;
        self.reload().await?;
        Ok(InstanceAlias {
            machine_id: machine.to_owned(),
            operator_alias: alias,
        })
    }

    /// Whether the machine has an instance (of `app`, or of any application), pending
    /// check-ins included.
    pub async fn instance_known(&self, machine: &str, app: Option<&str>) -> FleetResult<bool> {
        self.flush_checkins().await?;
        let f = InstanceFilter {
            machine_id: Some(machine.to_owned()),
            app_id: app.map(str::to_owned),
            limit: 1,
            ..Default::default()
        };
        Ok(self.store.list_instances(&f).await?.1 > 0)
    }
}
