//! Carries out a [`Plan`] through Platte's admin API: reads what Platte has (for the plan),
//! then creates applications, packages, channels and groups in that order, each step's outcome
//! in the [`Report`]. A step that fails is reported and the rest go on (a channel then lacks
//! the failed package's pointer; a group whose channel failed fails too).

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Value, json};

use super::plan::{Existing, ExistingGroup, ExistingPackage, Plan, State, Unmapped};
use super::schema::NebraskaDb;
use crate::cli::ApiClient;
use crate::model::normalize_appid;

/// What happened to one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Created now.
    Created,
    /// Already there: left as it is.
    Exists,
    /// Dry run: would be created.
    WouldCreate,
    /// The server refused it or could not be reached (see `error`).
    Failed,
}

/// One step of the import and its outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Done {
    /// Application id.
    pub app: String,
    /// What it is: an application's name, a package's `version (arch)`, a channel's name, a
    /// group's `name (track …)`.
    pub item: String,
    /// The Nebraska row's id (packages and groups).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nebraska_id: Option<String>,
    /// What happened.
    pub outcome: Outcome,
    /// Platte's id of what was created or found (packages, channels, groups).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platte_id: Option<String>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The request body sent (or, in a dry run, that would be sent).
    pub body: Value,
}

/// What an import did (or, in a dry run, would do), and what it could not map.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// A dry run: nothing was written.
    pub dry_run: bool,
    /// Applications.
    pub apps: Vec<Done>,
    /// Packages.
    pub packages: Vec<Done>,
    /// Channels.
    pub channels: Vec<Done>,
    /// Groups.
    pub groups: Vec<Done>,
    /// What Platte does not get from Nebraska, and why.
    pub unmapped: Vec<Unmapped>,
    /// Things mapped with a change worth knowing.
    pub notes: Vec<String>,
    /// Steps that created something (or would, in a dry run).
    pub created: usize,
    /// Steps whose result was there already.
    pub existing: usize,
    /// Steps that failed.
    pub failed: usize,
}

impl Report {
    fn new(plan: &Plan, dry_run: bool) -> Self {
        Self {
            dry_run,
            apps: Vec::new(),
            packages: Vec::new(),
            channels: Vec::new(),
            groups: Vec::new(),
            unmapped: plan.unmapped.clone(),
            notes: plan.notes.clone(),
            created: 0,
            existing: 0,
            failed: 0,
        }
    }

    fn count(&mut self) {
        let all = self
            .apps
            .iter()
            .chain(&self.packages)
            .chain(&self.channels)
            .chain(&self.groups);
        let (mut c, mut e, mut f) = (0, 0, 0);
        for d in all {
            match d.outcome {
                Outcome::Created | Outcome::WouldCreate => c += 1,
                Outcome::Exists => e += 1,
                Outcome::Failed => f += 1,
            }
        }
        (self.created, self.existing, self.failed) = (c, e, f);
    }
}

/// Percent-encodes a path segment.
fn seg(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn text(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap_or_default().to_owned()
}

/// What Platte has of the applications `db` names: the applications, and their packages,
/// channels and groups.
pub async fn existing(c: &ApiClient, db: &NebraskaDb) -> anyhow::Result<Existing> {
    let mut ex = Existing::default();
    let apps = c.get("/apps").await?;
    for a in apps.as_array().map(Vec::as_slice).unwrap_or_default() {
        ex.apps.insert(text(a, "id"));
    }
    for a in &db.apps {
        let app = normalize_appid(&a.id);
        if !ex.apps.contains(&app) {
            continue;
        }
        let packages = c.get(&format!("/packages?app={}", seg(&app))).await?;
        for p in packages.as_array().map(Vec::as_slice).unwrap_or_default() {
            ex.packages.push(ExistingPackage {
                id: text(p, "id"),
                app: text(p, "app_id"),
                version: text(p, "version"),
                arch: text(p, "arch"),
                format: p["format"].as_str().unwrap_or("platte").to_owned(),
            });
        }
        let channels = c.get(&format!("/apps/{}/channels", seg(&app))).await?;
        for ch in channels.as_array().map(Vec::as_slice).unwrap_or_default() {
            ex.channels.insert((app.clone(), text(ch, "name")));
        }
        let groups = c.get(&format!("/apps/{}/groups", seg(&app))).await?;
        for g in groups.as_array().map(Vec::as_slice).unwrap_or_default() {
            ex.groups.push(ExistingGroup {
                app: app.clone(),
                id: text(g, "id"),
                track: text(g, "track"),
            });
        }
    }
    Ok(ex)
}

/// A step's outcome: `exists`, or the result of `create` (skipped in a dry run).
async fn step(
    state: State,
    dry_run: bool,
    create: impl AsyncFnOnce() -> anyhow::Result<Value>,
) -> (Outcome, Option<Value>, Option<String>) {
    match (state, dry_run) {
        (State::Exists, _) => (Outcome::Exists, None, None),
        (State::Create, true) => (Outcome::WouldCreate, None, None),
        (State::Create, false) => match create().await {
            Ok(v) => (Outcome::Created, Some(v), None),
            Err(e) => (Outcome::Failed, None, Some(format!("{e:#}"))),
        },
    }
}

/// Carries out `plan` with `client` (a dry run writes nothing) and reports each step.
pub async fn apply(client: &ApiClient, plan: &Plan, dry_run: bool) -> Report {
    let mut report = Report::new(plan, dry_run);
    let post = async |path: String, body: &Value| client.post(&path, body).await;

    for a in &plan.apps {
        let (outcome, _, error) = step(a.state, dry_run, || post("/apps".into(), &a.body)).await;
        report.apps.push(Done {
            app: a.id.clone(),
            item: a.name.clone(),
            nebraska_id: None,
            outcome,
            platte_id: None,
            error,
            body: a.body.clone(),
        });
    }

    // Nebraska package id → Platte package id (known, or created now).
    let mut platte: BTreeMap<&str, String> = BTreeMap::new();
    for p in &plan.packages {
        let (outcome, created, error) = step(p.state, dry_run, || {
            post("/packages/by-reference".into(), &p.body)
        })
        .await;
        let id = created
            .as_ref()
            .and_then(|v| v["id"].as_str().map(str::to_owned))
            .or_else(|| p.existing_id.clone());
        if let Some(id) = &id {
            platte.insert(&p.nebraska_id, id.clone());
        }
        report.packages.push(Done {
            app: p.app.clone(),
            item: format!("{} ({})", p.version, p.arch),
            nebraska_id: Some(p.nebraska_id.clone()),
            outcome,
            platte_id: id,
            error,
            body: p.body.clone(),
        });
    }

    for c in &plan.channels {
        let mut pointers = serde_json::Map::new();
        for (arch, nebraska) in &c.pointers {
            match platte.get(nebraska.as_str()) {
                Some(id) => {
                    pointers.insert(arch.clone(), json!(id));
                }
                None if dry_run => {
                    pointers.insert(arch.clone(), json!(format!("nebraska:{nebraska}")));
                }
                None if c.state == State::Create => report.notes.push(format!(
                    "channel {} of {}: no {arch} pointer, its package failed",
                    c.name, c.app
                )),
                None => {}
            }
        }
        let body = json!({"name": c.name, "packages": pointers});
        let path = format!("/apps/{}/channels", seg(&c.app));
        let (outcome, created, error) = step(c.state, dry_run, || post(path, &body)).await;
        report.channels.push(Done {
            app: c.app.clone(),
            item: c.name.clone(),
            nebraska_id: None,
            outcome,
            platte_id: created.and_then(|v| v["id"].as_str().map(str::to_owned)),
            error,
            body,
        });
    }

    for g in &plan.groups {
        let path = format!("/apps/{}/groups", seg(&g.app));
        let (outcome, created, error) = step(g.state, dry_run, || post(path, &g.body)).await;
        report.groups.push(Done {
            app: g.app.clone(),
            item: format!("{} (track {})", g.name, g.track),
            nebraska_id: Some(g.id.clone()),
            outcome,
            platte_id: created.and_then(|v| v["id"].as_str().map(str::to_owned)),
            error,
            body: g.body.clone(),
        });
    }
    report.count();
    report
}
