//! Channels: an application's named pointers to one package per architecture and payload
//! format (a Platte payload and an update_engine payload may both be served, each to the clients
//! that can apply it). A channel may only point at packages of its application built for the
//! pointer's architecture (or `all`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Fleet, FleetError, FleetResult, activity, check_text, find_app, find_channel, new_id};
use crate::catalogue::Catalogue;
use crate::model::{Channel, PackageFormat, normalize_arch};

/// Longest channel name, bytes.
const MAX_NAME: usize = 100;

/// Body of `POST /apps/{app}/channels`.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct CreateChannel {
    /// Channel name.
    pub name: String,
    /// Package id per architecture; each pointer is kept with the package's format.
    #[serde(default)]
    pub packages: BTreeMap<String, String>,
    /// Package id per architecture, of update_engine packages only.
    #[serde(default)]
    pub update_engine_packages: BTreeMap<String, String>,
}

/// Body of `PATCH /apps/{app}/channels/{channel}`.
#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
pub struct UpdateChannel {
    /// New name.
    pub name: Option<String>,
    /// Pointers to merge: arch → package id (the pointer of the package's format is set), or
    /// `null` to remove the arch's Platte pointer.
    #[serde(default)]
    pub packages: BTreeMap<String, Option<String>>,
    /// Pointers to merge: arch → id of an update_engine package, or `null` to remove the arch's
    /// update_engine pointer.
    #[serde(default)]
    pub update_engine_packages: BTreeMap<String, Option<String>>,
}

/// Checks that every pointer names a package of `app_id`, of the pointer's format, built for
/// its architecture (or for `all`).
fn check_pointers(cat: &Catalogue, app_id: &str, channel: &Channel) -> FleetResult<()> {
    for (format, arch, id) in channel.all_pointers() {
        let pkg = cat
            .package(id)
            .ok_or_else(|| FleetError::NotFound(format!("package {id}")))?;
        if pkg.format != format {
            return Err(FleetError::Conflict(format!(
                "package {id} is a {} payload, not {}",
                pkg.format.as_str(),
                format.as_str()
            )));
        }
        if pkg.app_id != app_id {
            return Err(FleetError::Conflict(format!(
                "package {id} belongs to {}",
                pkg.app_id
            )));
        }
        if pkg.arch != arch && pkg.arch != "all" {
            return Err(FleetError::Conflict(format!(
                "package {id} is for arch {}, not {arch}",
                pkg.arch
            )));
        }
    }
    Ok(())
}

/// The format of package `id` (which of a channel's pointers it goes in).
fn format_of(cat: &Catalogue, id: &str) -> FleetResult<PackageFormat> {
    cat.package(id)
        .map(|p| p.format)
        .ok_or_else(|| FleetError::NotFound(format!("package {id}")))
}

/// How the activity feed names a pointer's format: Platte's is implied.
fn format_label(format: PackageFormat) -> &'static str {
    match format {
        PackageFormat::Platte => "",
        PackageFormat::UpdateEngine => " (update_engine)",
    }
}

impl Fleet {
    /// The channels of the application `app` names.
    pub fn list_channels(&self, app: &str) -> FleetResult<Vec<Channel>> {
        let cat = self.catalogue();
        let a = find_app(&cat, app)?;
        Ok(cat
            .data()
            .channels
            .iter()
            .filter(|c| c.app_id == a.id)
            .cloned()
            .collect())
    }

    /// The channel `channel` (id or name) of the application `app` names.
    pub fn channel(&self, app: &str, channel: &str) -> FleetResult<Channel> {
        let cat = self.catalogue();
        let a = find_app(&cat, app)?;
        find_channel(&cat, &a.id, channel)
    }

    /// Creates a channel.
    pub async fn create_channel(&self, app: &str, input: CreateChannel) -> FleetResult<Channel> {
        check_text("name", &input.name, MAX_NAME)?;
        let _writing = self.write_lock.lock().await;
        let cat = self.catalogue();
        let a = find_app(&cat, app)?;
        let mut c = Channel {
            id: new_id(),
            app_id: a.id.clone(),
            name: input.name,
            packages: BTreeMap::new(),
            update_engine_packages: BTreeMap::new(),
            created_at: self.now(),
        };
        for (arch, id) in input.packages {
            let format = format_of(&cat, &id)?;
            c.pointers_mut(format).insert(normalize_arch(&arch), id);
        }
        for (arch, id) in input.update_engine_packages {
            c.update_engine_packages.insert(normalize_arch(&arch), id);
        }
        check_pointers(&cat, &a.id, &c)?;
        let act = activity(
            "channel_created",
            Some(&a.id),
            format!("channel {} created", c.name),
        );
        self.store.insert_channel(&c, &act).await?;
        self.reload().await?;
        Ok(c)
    }

    /// Renames a channel or re-points it at packages. Re-pointing is recorded as
    /// `channel_package_updated`, naming each architecture's new version.
    pub async fn update_channel(
        &self,
        app: &str,
        channel: &str,
        input: UpdateChannel,
    ) -> FleetResult<Channel> {
        let _writing = self.write_lock.lock().await;
        let cat = self.catalogue();
        let a = find_app(&cat, app)?;
        let mut c = find_channel(&cat, &a.id, channel)?;
        if let Some(n) = input.name {
            check_text("name", &n, MAX_NAME)?;
            c.name = n;
        }
        let mut changes = Vec::new();
        let given = (input.packages.into_iter().map(|p| (None, p))).chain(
            (input.update_engine_packages.into_iter())
                .map(|p| (Some(PackageFormat::UpdateEngine), p)),
        );
        for (named_format, (arch, p)) in given {
            let arch = normalize_arch(&arch);
            match p {
                Some(id) => {
                    let format = match named_format {
                        Some(f) => f,
                        None => format_of(&cat, &id)?,
                    };
                    changes.push(format!(
                        "{arch}={}{}",
                        cat.package(&id).map(|p| p.version.as_str()).unwrap_or("?"),
                        format_label(format)
                    ));
                    c.pointers_mut(format).insert(arch, id);
                }
                None => {
                    let format = named_format.unwrap_or(PackageFormat::Platte);
                    changes.push(format!("{arch}=none{}", format_label(format)));
                    c.pointers_mut(format).remove(&arch);
                }
            }
        }
        check_pointers(&cat, &a.id, &c)?;
        let mut act = activity(
            "channel_updated",
            Some(&a.id),
            format!("channel {} updated {}", c.name, changes.join(" ")),
        );
        if !changes.is_empty() {
            act.kind = "channel_package_updated".into();
        }
        self.store.update_channel(&c, &act).await?;
        self.reload().await?;
        Ok(c)
    }

    /// Deletes a channel (the groups following it are detached).
    pub async fn delete_channel(&self, app: &str, channel: &str) -> FleetResult<()> {
        let _writing = self.write_lock.lock().await;
        let cat = self.catalogue();
        let a = find_app(&cat, app)?;
        let c = find_channel(&cat, &a.id, channel)?;
        let act = activity(
            "channel_deleted",
            Some(&a.id),
            format!("channel {} deleted", c.name),
        );
        self.store.delete_channel(&c.id, &act).await?;
        self.reload().await?;
        Ok(())
    }
}
