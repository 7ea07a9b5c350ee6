//! Maps Nebraska's data onto the bodies of Platte's admin API, and lists what does not map and
//! why. Pure: it takes what was read from Nebraska and what Platte already has, and returns the
//! [`Plan`]; [`super::apply`] carries it out. The mapping is documented in [`super`].

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::{Map, Value, json};

use super::schema::{
    FLATCAR_APP_ID, File, Group, NebraskaDb, PKG_TYPE_FLATCAR, Package, UNLIMITED_UPDATES,
    arch_name, package_type_name,
};
use crate::model::{GroupPolicy, normalize_appid};
use crate::rollout::RolloutSpec;

/// Options passed through to every package created.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Have the server download and check each payload and extra file first.
    pub verify: bool,
    /// Have the server download, check and host each payload and extra file.
    pub host: bool,
}

/// What Platte already has, as its admin API lists it.
#[derive(Debug, Clone, Default)]
pub struct Existing {
    /// Application ids.
    pub apps: BTreeSet<String>,
    /// Packages.
    pub packages: Vec<ExistingPackage>,
    /// Channels: (application id, name).
    pub channels: BTreeSet<(String, String)>,
    /// Groups.
    pub groups: Vec<ExistingGroup>,
}

/// A package Platte has.
#[derive(Debug, Clone, Default)]
pub struct ExistingPackage {
    /// Its id.
    pub id: String,
    /// Application id.
    pub app: String,
    /// Version.
    pub version: String,
    /// Architecture.
    pub arch: String,
    /// Payload format (`platte`, `update_engine`).
    pub format: String,
}

/// A group Platte has.
#[derive(Debug, Clone, Default)]
pub struct ExistingGroup {
    /// Application id.
    pub app: String,
    /// Its id.
    pub id: String,
    /// Its track.
    pub track: String,
}

/// Whether a step creates something or finds it there already.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Not in Platte yet: to be created.
    Create,
    /// Already in Platte: left as it is.
    Exists,
}

/// An application to create (`POST /apps`).
#[derive(Debug, Clone)]
pub struct AppStep {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Create or already there.
    pub state: State,
    /// The request body.
    pub body: Value,
}

/// A package to publish by reference (`POST /packages/by-reference`).
#[derive(Debug, Clone)]
pub struct PackageStep {
    /// Nebraska's package id (channels name packages by it until they have a Platte id).
    pub nebraska_id: String,
    /// Application id.
    pub app: String,
    /// Version.
    pub version: String,
    /// Platte architecture.
    pub arch: String,
    /// Create or already there.
    pub state: State,
    /// Platte's id of the package already there.
    pub existing_id: Option<String>,
    /// The request body.
    pub body: Value,
}

/// A channel to create (`POST /apps/{app}/channels`).
#[derive(Debug, Clone)]
pub struct ChannelStep {
    /// Application id.
    pub app: String,
    /// Name.
    pub name: String,
    /// Create or already there.
    pub state: State,
    /// Its pointers: Platte architecture → Nebraska package id (of a [`PackageStep`]).
    pub pointers: BTreeMap<String, String>,
}

/// A group to create (`POST /apps/{app}/groups`).
#[derive(Debug, Clone)]
pub struct GroupStep {
    /// Application id.
    pub app: String,
    /// Its id (Nebraska's).
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its track in Platte.
    pub track: String,
    /// Create or already there.
    pub state: State,
    /// The request body.
    pub body: Value,
}

/// Something of Nebraska's that Platte does not get (or gets only in part), and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unmapped {
    /// `app`, `package`, `extra file`, `package attribute`, `channel`, `group` or `policy`.
    pub kind: &'static str,
    /// The Nebraska row's id.
    pub id: String,
    /// What it is, for a reader (`package 3510.2.0 (amd64) of …`).
    pub item: String,
    /// Why it is not mapped, and what was done instead.
    pub reason: String,
}

/// Everything the import would do, in order, and what it leaves out.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Applications.
    pub apps: Vec<AppStep>,
    /// Packages.
    pub packages: Vec<PackageStep>,
    /// Channels.
    pub channels: Vec<ChannelStep>,
    /// Groups.
    pub groups: Vec<GroupStep>,
    /// What does not map.
    pub unmapped: Vec<Unmapped>,
    /// Things mapped with a change worth knowing.
    pub notes: Vec<String>,
}

impl Plan {
    fn lost(&mut self, kind: &'static str, id: &str, item: String, reason: String) {
        self.unmapped.push(Unmapped {
            kind,
            id: id.to_owned(),
            item,
            reason,
        });
    }
}

/// A text column's value when it is not blank.
fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// A size column (text) as bytes.
fn bytes(v: &Option<String>) -> Option<u64> {
    given(v).and_then(|s| s.parse().ok())
}

/// How a report names a Nebraska package.
fn package_item(p: &Package) -> String {
    let arch = arch_name(p.arch).map_or_else(|| format!("arch code {}", p.arch), str::to_owned);
    format!(
        "package {} ({arch}) of {}",
        p.version,
        normalize_appid(&p.app_id)
    )
}

/// Seconds in a PostgreSQL interval as Nebraska stores its policy periods (`15 minutes`,
/// `1 hours`, `2 days 3 hours`, `01:30:00`, `@ 1 hour`), rounded up to whole seconds; `None` when
/// it is not one or is not positive.
pub fn interval_secs(text: &str) -> Option<u64> {
    let mut total = 0f64;
    let mut words = text.trim().trim_start_matches('@').split_whitespace();
    let mut any = false;
    while let Some(word) = words.next() {
        any = true;
        if word.contains(':') {
            let mut parts = word.split(':');
            let mut secs = 0f64;
            for (i, unit) in [3600f64, 60f64, 1f64].into_iter().enumerate() {
                match parts.next() {
                    Some(p) => secs += p.parse::<f64>().ok().filter(|v| *v >= 0.0)? * unit,
                    None if i >= 2 => {}
                    None => return None,
                }
            }
            if parts.next().is_some() {
                return None;
            }
            total += secs;
            continue;
        }
        let n: f64 = word.parse().ok()?;
        let unit = match words.next()?.to_ascii_lowercase().as_str() {
            "millisecond" | "milliseconds" | "ms" | "msec" | "msecs" => 0.001,
            "second" | "seconds" | "sec" | "secs" | "s" => 1.0,
            "minute" | "minutes" | "min" | "mins" | "m" => 60.0,
            "hour" | "hours" | "hr" | "hrs" | "h" => 3600.0,
            "day" | "days" | "d" => 86_400.0,
            "week" | "weeks" | "w" => 604_800.0,
            "mon" | "mons" | "month" | "months" => 30.0 * 86_400.0,
            "year" | "years" | "y" => 365.25 * 86_400.0,
            _ => return None,
        };
        total += n * unit;
    }
    if !any || !total.is_finite() || total <= 0.0 || total > u32::MAX as f64 {
        return None;
    }
    Some(total.ceil() as u64)
}

/// An extra file's entry in a by-reference body, or why it cannot have one.
fn file_body(f: &File) -> Result<Value, String> {
    let size = bytes(&f.size).ok_or_else(|| format!("size {:?} is not a number", f.size))?;
    let sha1 = given(&f.sha1).ok_or("no SHA-1 (hash)")?;
    let sha256 = given(&f.sha256).ok_or("no SHA-256 (hash256), which Platte needs")?;
    Ok(json!({"name": f.name, "size": size, "sha1": sha1, "sha256": sha256}))
}

/// The by-reference body of a Nebraska package, with what of it was left out; or why it does
/// not map at all.
fn package_body(
    p: &Package,
    app: &str,
    arch: &str,
    opts: Options,
) -> Result<(Value, Vec<(String, String)>), String> {
    if p.kind != PKG_TYPE_FLATCAR {
        return Err(format!(
            "a {} package (Nebraska type {}): Platte takes only Flatcar update payloads from \
             Nebraska, which it serves in update_engine format",
            package_type_name(p.kind),
            p.kind
        ));
    }
    let action = p.action.as_ref().ok_or(
        "no Flatcar action: Platte needs the payload's SHA-256, which Nebraska keeps there",
    )?;
    let sha256 =
        given(&action.sha256).ok_or("its Flatcar action has no SHA-256, which Platte needs")?;
    let sha1 = given(&p.sha1).ok_or("no SHA-1 (hash), which Platte needs")?;
    let url = given(&p.url).ok_or("no URL")?;
    let filename = given(&p.filename).ok_or("no file name")?;
    let size = bytes(&p.size)
        .filter(|s| *s > 0)
        .ok_or_else(|| format!("size {:?} is not a number of bytes", p.size))?;
    let sep = if url.ends_with('/') { "" } else { "/" };
    let mut lost = Vec::new();
    let mut files = Vec::new();
    for f in &p.files {
        match file_body(f) {
            Ok(v) => files.push(v),
            Err(reason) => lost.push((
                format!("extra file {}", f.name),
                format!("{reason}: the package is imported without it"),
            )),
        }
    }
    let mut body = json!({
        "format": "update_engine",
        "app": app,
        "version": p.version,
        "arch": arch,
        "url": format!("{url}{sep}{filename}"),
        "size": size,
        "sha1": sha1,
        "sha256": sha256,
        "is_delta": action.is_delta.unwrap_or(false),
        "disable_payload_backoff": action.disable_payload_backoff.unwrap_or(true),
        "needs_admin": action.needs_admin.unwrap_or(false),
        "files": files,
        "verify": opts.verify,
        "host": opts.host,
    });
    if let Some(m) = given(&action.metadata_size) {
        match m.parse::<u64>() {
            Ok(n) => body["metadata_size"] = json!(n),
            Err(_) => lost.push((
                "MetadataSize".to_owned(),
                format!("{m:?} is not a number: not imported"),
            )),
        }
    }
    if let Some(s) = given(&action.metadata_signature_rsa) {
        body["metadata_signature_rsa"] = json!(s);
    }
    if let Some(d) = given(&action.deadline) {
        body["deadline"] = json!(d);
    }
    Ok((body, lost))
}

/// A group's policy in Platte's terms (see the table in [`super`]), with the parts that do not
/// map: (Nebraska field, reason).
pub fn group_policy(
    g: &Group,
    floors: &[String],
    blocked: &[String],
) -> (Value, Vec<(&'static str, String)>) {
    let mut p = Map::new();
    let mut lost = Vec::new();
    let mut paused = !g.updates_enabled;
    if g.max_updates_per_period < UNLIMITED_UPDATES {
        let count = g.max_updates_per_period.max(1);
        match interval_secs(&g.period_interval) {
            Some(secs) => {
                p.insert(
                    "rate_limit".into(),
                    json!({"count": count, "period_secs": secs}),
                );
            }
            None => lost.push((
                "policy_period_interval",
                format!(
                    "{:?} is not an interval the importer reads: no rate limit set",
                    g.period_interval
                ),
            )),
        }
        p.insert("concurrency_limit".into(), json!(count));
    }
    match interval_secs(&g.update_timeout) {
        Some(secs) => {
            p.insert("update_timeout_secs".into(), json!(secs));
        }
        None => lost.push((
            "policy_update_timeout",
            format!(
                "{:?} is not an interval the importer reads: no update timeout set",
                g.update_timeout
            ),
        )),
    }
    if g.safe_mode {
        lost.push((
            "policy_safe_mode",
            "Platte has no safe mode (one machine at a time until one attempted the version, \
             updates disabled once as many updates timed out as the limit allows): not set; \
             the nearest is auto_halt with canaries, set by hand"
                .to_owned(),
        ));
    }
    if g.office_hours {
        let tz = given(&g.timezone);
        let window = tz
            .map(|tz| format!("Mon-Fri 09:00 8h {tz}"))
            .filter(|w| w.parse::<maintenance_window::Window>().is_ok());
        match window {
            Some(w) => {
                p.insert("windows".into(), json!([w]));
            }
            None => {
                paused = true;
                lost.push((
                    "policy_office_hours",
                    format!(
                        "office hours in time zone {tz:?}, which is no IANA time zone: Nebraska \
                         grants no update then; imported as paused"
                    ),
                ));
            }
        }
    }
    if !floors.is_empty() {
        p.insert("floors".into(), json!(floors));
    }
    if !blocked.is_empty() {
        p.insert("blocked_versions".into(), json!(blocked));
    }
    p.insert("paused".into(), json!(paused));
    (Value::Object(p), lost)
}

/// The plan: what to create in Platte from `db`, given what Platte has (`existing`).
pub fn plan(db: &NebraskaDb, existing: &Existing, opts: Options) -> Plan {
    let mut plan = Plan::default();

    for a in &db.apps {
        let id = normalize_appid(&a.id);
        let completes_on = if id == FLATCAR_APP_ID {
            "reboot"
        } else {
            "install"
        };
        if let Some(p) = given(&a.product_id) {
            plan.lost(
                "app",
                &id,
                format!("application {}: product id {p}", a.name),
                "Platte knows an application by its Omaha appid only: clients sending the \
                 product id as their appid are not recognised (configure them with the appid)"
                    .to_owned(),
            );
        }
        plan.apps.push(AppStep {
            state: if existing.apps.contains(&id) {
                State::Exists
            } else {
                State::Create
            },
            body: json!({
                "id": id,
                "name": a.name,
                "description": a.description.clone().unwrap_or_default(),
                "completes_on": completes_on,
            }),
            id,
            name: a.name.clone(),
        });
    }

    // Packages, by Nebraska id: those mapped, and every one (for versions of floors).
    let by_id: BTreeMap<&str, &Package> = db.packages.iter().map(|p| (p.id.as_str(), p)).collect();
    let mut mapped: BTreeMap<&str, String> = BTreeMap::new();
    for p in &db.packages {
        let app = normalize_appid(&p.app_id);
        let Some(arch) = arch_name(p.arch) else {
            plan.lost(
                "package",
                &p.id,
                package_item(p),
                format!("unknown Nebraska architecture code {}", p.arch),
            );
            continue;
        };
        match package_body(p, &app, arch, opts) {
            Err(reason) => plan.lost("package", &p.id, package_item(p), reason),
            Ok((body, lost)) => {
                for (what, reason) in lost {
                    let kind = if what.starts_with("extra file") {
                        "extra file"
                    } else {
                        "package attribute"
                    };
                    plan.lost(
                        kind,
                        &p.id,
                        format!("{what} of {}", package_item(p)),
                        reason,
                    );
                }
                let there = existing.packages.iter().find(|e| {
                    e.app == app
                        && e.version == p.version
                        && e.arch == arch
                        && e.format == "update_engine"
                });
                mapped.insert(&p.id, arch.to_owned());
                plan.packages.push(PackageStep {
                    nebraska_id: p.id.clone(),
                    app,
                    version: p.version.clone(),
                    arch: arch.to_owned(),
                    state: if there.is_some() {
                        State::Exists
                    } else {
                        State::Create
                    },
                    existing_id: there.map(|e| e.id.clone()),
                    body,
                });
            }
        }
    }

    // Channels: Nebraska's rows of one name (one per arch) become one channel.
    let mut channels: BTreeMap<(String, String), ChannelStep> = BTreeMap::new();
    for c in &db.channels {
        let app = normalize_appid(&c.app_id);
        let step = channels
            .entry((app.clone(), c.name.clone()))
            .or_insert_with(|| ChannelStep {
                state: if existing.channels.contains(&(app.clone(), c.name.clone())) {
                    State::Exists
                } else {
                    State::Create
                },
                app: app.clone(),
                name: c.name.clone(),
                pointers: BTreeMap::new(),
            });
        let Some(arch) = arch_name(c.arch) else {
            plan.lost(
                "channel",
                &c.id,
                format!("channel {} (arch code {}) of {app}", c.name, c.arch),
                format!("unknown Nebraska architecture code {}", c.arch),
            );
            continue;
        };
        let Some(pkg) = &c.package_id else { continue };
        let item = || {
            let version = by_id.get(pkg.as_str()).map_or("?", |p| p.version.as_str());
            format!(
                "channel {} ({arch}) of {app} pointing at package {version}",
                c.name
            )
        };
        match mapped.get(pkg.as_str()) {
            None => plan.lost(
                "channel",
                &c.id,
                item(),
                "its package is not imported (see that package): the channel has no pointer \
                 for this architecture"
                    .to_owned(),
            ),
            Some(pkg_arch) => {
                let key = if pkg_arch == "all" { arch } else { pkg_arch };
                if step.pointers.contains_key(key) {
                    plan.lost(
                        "channel",
                        &c.id,
                        item(),
                        format!("another channel {} already points for {key}", c.name),
                    );
                } else {
                    step.pointers.insert(key.to_owned(), pkg.clone());
                }
            }
        }
    }
    plan.channels = channels.into_values().collect();

    // Groups: one per Nebraska group, keeping its id; a track only once per application.
    let channel_of: BTreeMap<&str, &str> = db
        .channels
        .iter()
        .map(|c| (c.id.as_str(), c.name.as_str()))
        .collect();
    // The versions of packages named by id, sorted, once each.
    let versions = |ids: Vec<&String>| -> Vec<String> {
        let mut v: Vec<String> = ids
            .into_iter()
            .filter_map(|id| by_id.get(id.as_str()).map(|p| p.version.clone()))
            .collect();
        v.sort();
        v.dedup();
        v
    };
    // First group of each (application, lowercase track): its name, channel and policy.
    let mut tracks: BTreeMap<(String, String), (String, Option<String>, Value)> = BTreeMap::new();
    for g in &db.groups {
        let app = normalize_appid(&g.app_id);
        let channel = g
            .channel_id
            .as_deref()
            .and_then(|c| channel_of.get(c))
            .map(|c| (*c).to_owned());
        let own = |id: &String| g.channel_id.as_ref() == Some(id);
        let floors = versions(
            db.floors
                .iter()
                .filter(|(c, p)| own(c) && mapped.contains_key(p.as_str()))
                .map(|(_, p)| p)
                .collect(),
        );
        for (c, p) in &db.floors {
            if own(c) && !mapped.contains_key(p.as_str()) {
                plan.lost(
                    "policy",
                    &g.id,
                    format!(
                        "floor {} of group {}",
                        by_id
                            .get(p.as_str())
                            .map_or(p.as_str(), |p| p.version.as_str()),
                        g.name
                    ),
                    "its package is not imported: not a floor in Platte".to_owned(),
                );
            }
        }
        let blocked = versions(
            db.blacklist
                .iter()
                .filter(|(_, c)| own(c))
                .map(|(p, _)| p)
                .collect(),
        );
        let (policy, lost) = group_policy(g, &floors, &blocked);
        for (field, reason) in lost {
            plan.lost(
                "policy",
                &g.id,
                format!("{field} of group {} ({app})", g.name),
                reason,
            );
        }
        let valid = serde_json::from_value::<GroupPolicy>(policy.clone())
            .map_err(|e| e.to_string())
            .and_then(|p| RolloutSpec::parse_valid(&p).map_err(|e| e.to_string()));
        if let Err(e) = valid {
            plan.lost(
                "group",
                &g.id,
                format!("group {} ({app})", g.name),
                format!("its policy is not one Platte accepts ({e}): not imported"),
            );
            continue;
        }
        let wanted = if g.track.trim().is_empty() {
            g.id.clone()
        } else {
            g.track.trim().to_owned()
        };
        let track = match tracks.get(&(app.clone(), wanted.to_ascii_lowercase())) {
            None => wanted.clone(),
            Some((first, first_channel, first_policy)) => {
                let what = format!(
                    "group {} shares track {wanted} with group {first}: hosts sending \
                     GROUP={wanted} reach {first} (Platte resolves a track to one group of the \
                     application); {} keeps its id {} as its track, so GROUP={} still reaches it",
                    g.name, g.name, g.id, g.id
                );
                if *first_channel == channel && *first_policy == policy {
                    plan.notes
                        .push(format!("{what} (same channel and policy as {first})"));
                } else {
                    plan.lost(
                        "group",
                        &g.id,
                        format!("track {wanted} of group {} ({app})", g.name),
                        format!("{what}; {first}'s channel or policy differs from this group's"),
                    );
                }
                g.id.clone()
            }
        };
        tracks.insert(
            (app.clone(), track.to_ascii_lowercase()),
            (g.name.clone(), channel.clone(), policy.clone()),
        );
        let there = existing
            .groups
            .iter()
            .any(|e| e.app == app && (e.id == g.id || e.track.eq_ignore_ascii_case(&track)));
        let mut body = json!({
            "id": g.id,
            "name": g.name,
            "track": track,
            "description": g.description,
            "policy": policy,
        });
        if let Some(c) = &channel {
            body["channel"] = json!(c);
        }
        plan.groups.push(GroupStep {
            app,
            id: g.id.clone(),
            name: g.name.clone(),
            track,
            state: if there { State::Exists } else { State::Create },
            body,
        });
    }
    plan
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::nebraska::schema::{Action, App, Channel};

    const OTHER: &str = "7b3f6a2e-5c1d-4e8a-9f40-2d6b8c1e9a53";

    fn group(id: &str, track: &str, channel: &str) -> Group {
        Group {
            id: id.into(),
            app_id: FLATCAR_APP_ID.into(),
            name: format!("g-{id}"),
            description: "d".into(),
            track: track.into(),
            channel_id: Some(channel.into()),
            updates_enabled: true,
            safe_mode: false,
            office_hours: false,
            timezone: None,
            period_interval: "15 minutes".into(),
            max_updates_per_period: 5,
            update_timeout: "60 minutes".into(),
        }
    }

    fn flatcar_package(id: &str, version: &str, arch: i32) -> Package {
        Package {
            id: id.into(),
            app_id: FLATCAR_APP_ID.into(),
            kind: PKG_TYPE_FLATCAR,
            version: version.into(),
            url: Some("https://mirror.example/amd64-usr/3510.2.0/".into()),
            filename: Some("flatcar_production_update.gz".into()),
            size: Some("1000".into()),
            sha1: Some("c2hhMQ==".into()),
            arch,
            action: Some(Action {
                sha256: Some("c2hhMjU2".into()),
                needs_admin: Some(false),
                is_delta: Some(false),
                disable_payload_backoff: Some(true),
                metadata_signature_rsa: Some(String::new()),
                metadata_size: Some("4242".into()),
                deadline: Some(String::new()),
            }),
            files: vec![
                File {
                    name: "oem-azure.gz".into(),
                    size: Some("10".into()),
                    sha1: Some("a".into()),
                    sha256: Some("b".into()),
                },
                File {
                    name: "flatcar-old.gz".into(),
                    size: Some("10".into()),
                    sha1: Some("a".into()),
                    sha256: Some(String::new()),
                },
            ],
        }
    }

    fn db() -> NebraskaDb {
        NebraskaDb {
            apps: vec![
                App {
                    id: FLATCAR_APP_ID.into(),
                    name: "Flatcar".into(),
                    ..App::default()
                },
                App {
                    id: OTHER.into(),
                    name: "Add-on".into(),
                    product_id: Some("io.example.addon".into()),
                    ..App::default()
                },
            ],
            packages: vec![
                flatcar_package("p1", "3510.2.0", 1),
                flatcar_package("p2", "3510.2.0", 2),
                Package {
                    id: "p3".into(),
                    app_id: OTHER.into(),
                    kind: 4,
                    version: "1.0.0".into(),
                    ..Package::default()
                },
            ],
            channels: vec![
                Channel {
                    id: "c1".into(),
                    app_id: FLATCAR_APP_ID.into(),
                    name: "stable".into(),
                    arch: 1,
                    package_id: Some("p1".into()),
                },
                Channel {
                    id: "c2".into(),
                    app_id: FLATCAR_APP_ID.into(),
                    name: "stable".into(),
                    arch: 2,
                    package_id: Some("p2".into()),
                },
                Channel {
                    id: "c3".into(),
                    app_id: OTHER.into(),
                    name: "main".into(),
                    arch: 0,
                    package_id: Some("p3".into()),
                },
            ],
            groups: vec![
                group("g1", "stable", "c1"),
                group("g2", "stable", "c2"),
                Group {
                    safe_mode: true,
                    office_hours: true,
                    timezone: Some("Europe/Berlin".into()),
                    updates_enabled: false,
                    max_updates_per_period: UNLIMITED_UPDATES,
                    ..group("g3", "", "c1")
                },
            ],
            floors: Vec::new(),
            blacklist: vec![("p1".into(), "c2".into())],
        }
    }

    #[test]
    fn intervals_are_read_as_postgresql_writes_them() {
        assert_eq!(interval_secs("15 minutes"), Some(900));
        assert_eq!(interval_secs("1 hours"), Some(3600));
        assert_eq!(interval_secs("2 days 3 hours"), Some(2 * 86_400 + 3 * 3600));
        assert_eq!(interval_secs("01:30:00"), Some(5400));
        assert_eq!(interval_secs("1 day 00:00:30"), Some(86_430));
        assert_eq!(interval_secs("@ 1 hour"), Some(3600));
        assert_eq!(interval_secs("100 milliseconds"), Some(1));
        for bad in [
            "",
            "soon",
            "5",
            "5 fortnights",
            "0 minutes",
            "-1 hours",
            "1:2:3:4",
        ] {
            assert_eq!(interval_secs(bad), None, "{bad}");
        }
    }

    #[test]
    fn apps_complete_on_reboot_for_flatcar_and_on_install_otherwise() {
        let p = plan(&db(), &Existing::default(), Options::default());
        assert_eq!(p.apps[0].body["completes_on"], "reboot");
        assert_eq!(p.apps[1].body["completes_on"], "install");
        assert!(p.apps.iter().all(|a| a.state == State::Create));
        let u = p.unmapped.iter().find(|u| u.kind == "app").unwrap();
        assert!(u.item.contains("io.example.addon"), "{u:?}");
    }

    #[test]
    fn flatcar_packages_map_with_their_action_and_files_others_do_not() {
        let opts = Options {
            verify: true,
            host: false,
        };
        let p = plan(&db(), &Existing::default(), opts);
        assert_eq!(p.packages.len(), 2);
        let b = &p.packages[0].body;
        assert_eq!(
            b["url"],
            "https://mirror.example/amd64-usr/3510.2.0/flatcar_production_update.gz"
        );
        assert_eq!(b["arch"], "amd64");
        assert_eq!(p.packages[1].arch, "arm64");
        assert_eq!(b["sha256"], "c2hhMjU2");
        assert_eq!(b["metadata_size"], 4242);
        assert_eq!(b["verify"], true);
        assert!(b.get("deadline").is_none() && b.get("metadata_signature_rsa").is_none());
        assert_eq!(b["files"].as_array().unwrap().len(), 1);
        assert_eq!(b["files"][0]["name"], "oem-azure.gz");
        let lost_file = p.unmapped.iter().filter(|u| u.kind == "extra file").count();
        assert_eq!(lost_file, 2, "flatcar-old.gz of both packages");
        let other = p.unmapped.iter().find(|u| u.id == "p3").unwrap();
        assert!(other.reason.contains("a other package"), "{other:?}");
        // Its channel has no pointer, and says why.
        assert!(p.unmapped.iter().any(|u| u.id == "c3"));
    }

    #[test]
    fn channels_of_one_name_merge_into_one_with_a_pointer_per_arch() {
        let p = plan(&db(), &Existing::default(), Options::default());
        let stable = p.channels.iter().find(|c| c.name == "stable").unwrap();
        assert_eq!(
            stable.pointers,
            BTreeMap::from([
                ("amd64".to_owned(), "p1".to_owned()),
                ("arm64".to_owned(), "p2".to_owned())
            ])
        );
    }

    #[test]
    fn groups_keep_their_id_and_a_track_once() {
        let p = plan(&db(), &Existing::default(), Options::default());
        let g: Vec<(&str, &str)> = p
            .groups
            .iter()
            .map(|g| (g.id.as_str(), g.track.as_str()))
            .collect();
        assert_eq!(g, [("g1", "stable"), ("g2", "g2"), ("g3", "g3")]);
        let g1 = &p.groups[0].body;
        assert_eq!(g1["id"], "g1");
        assert_eq!(g1["channel"], "stable");
        assert_eq!(
            g1["policy"],
            json!({"paused": false, "rate_limit": {"count": 5, "period_secs": 900},
                   "concurrency_limit": 5, "update_timeout_secs": 3600})
        );
        // g2 has a blocked version, so its policy differs from g1's: reported.
        assert_eq!(
            p.groups[1].body["policy"]["blocked_versions"],
            json!(["3510.2.0"])
        );
        assert!(
            p.unmapped
                .iter()
                .any(|u| u.id == "g2" && u.kind == "group" && u.reason.contains("GROUP=g2"))
        );
        let g3 = &p.groups[2].body["policy"];
        assert_eq!(
            *g3,
            json!({"paused": true, "update_timeout_secs": 3600,
                   "windows": ["Mon-Fri 09:00 8h Europe/Berlin"]})
        );
        assert!(
            p.unmapped
                .iter()
                .any(|u| u.id == "g3" && u.item.starts_with("policy_safe_mode"))
        );
    }

    #[test]
    fn office_hours_without_a_time_zone_pause_the_group() {
        let g = Group {
            office_hours: true,
            timezone: Some("Mars/Olympus".into()),
            ..group("g", "t", "c")
        };
        let (policy, lost) = group_policy(&g, &[], &[]);
        assert_eq!(policy["paused"], true);
        assert!(policy.get("windows").is_none());
        assert_eq!(lost[0].0, "policy_office_hours");
    }

    #[test]
    fn what_exists_is_left_as_it_is() {
        let existing = Existing {
            apps: BTreeSet::from([FLATCAR_APP_ID.to_owned()]),
            packages: vec![ExistingPackage {
                id: "platte-1".into(),
                app: FLATCAR_APP_ID.into(),
                version: "3510.2.0".into(),
                arch: "amd64".into(),
                format: "update_engine".into(),
            }],
            channels: BTreeSet::from([(FLATCAR_APP_ID.to_owned(), "stable".to_owned())]),
            groups: vec![ExistingGroup {
                app: FLATCAR_APP_ID.into(),
                id: "other".into(),
                track: "STABLE".into(),
            }],
        };
        let p = plan(&db(), &existing, Options::default());
        assert_eq!(p.apps[0].state, State::Exists);
        assert_eq!(p.apps[1].state, State::Create);
        assert_eq!(p.packages[0].state, State::Exists);
        assert_eq!(p.packages[0].existing_id.as_deref(), Some("platte-1"));
        assert_eq!(p.packages[1].state, State::Create);
        let state = |name: &str| p.channels.iter().find(|c| c.name == name).unwrap().state;
        assert_eq!(
            (state("stable"), state("main")),
            (State::Exists, State::Create)
        );
        assert_eq!(p.groups[0].state, State::Exists);
        assert_eq!(p.groups[1].state, State::Create);
    }
}
