//! Test support: a systemd stand-in — `org.freedesktop.systemd1` at `/org/freedesktop/systemd1`
//! on a given bus, with `Subscribe`, `Reload` (recorded), `RestartUnit` (recorded; the job ends with the result the
//! test set for the unit, `done` by default, announced by a `JobRemoved` signal after the reply),
//! `GetUnit`, and each unit's `ActiveState` (`active` after a `done` job, `failed` otherwise,
//! unless the test overrides it). Part of `support`; stands alone, so a test may also include
//! just this file with `#[path = "support/systemd_standin.rs"] mod systemd_standin;`.

#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use zbus::object_server::SignalEmitter;
use zbus::zvariant::{ObjectPath, OwnedObjectPath};

/// What the stand-in serves and records.
#[derive(Debug, Default)]
pub struct State {
    /// `(unit, mode)` of every `RestartUnit` call, in order.
    pub restarts: Vec<(String, String)>,
    /// `Reload` calls, and how many restarts had been called before each.
    pub reloads: Vec<usize>,
    /// Job result per unit (default `done`).
    pub results: BTreeMap<String, String>,
    /// One-shot job results per unit, used before `results`.
    pub next_results: BTreeMap<String, VecDeque<String>>,
    /// `ActiveState` override per unit (after its job).
    pub active_state: BTreeMap<String, String>,
    /// Current `ActiveState` per unit.
    pub states: BTreeMap<String, String>,
    /// Jobs issued.
    pub next_job: u32,
}

/// Escapes a unit name like systemd does for object paths (`containerd.service` →
/// `containerd_2eservice`).
pub fn unit_path(unit: &str) -> String {
    let mut s = String::from("/org/freedesktop/systemd1/unit/");
    for b in unit.bytes() {
        if b.is_ascii_alphanumeric() {
            s.push(b as char);
        } else {
            s.push_str(&format!("_{b:02x}"));
        }
    }
    s
}

struct Manager {
    state: Arc<Mutex<State>>,
}

#[zbus::interface(name = "org.freedesktop.systemd1.Manager")]
impl Manager {
    fn subscribe(&self) {}

    fn reload(&self) -> zbus::fdo::Result<()> {
        let mut s = self
            .state
            .lock()
            .map_err(|_| zbus::fdo::Error::Failed("poisoned".into()))?;
        let before = s.restarts.len();
        s.reloads.push(before);
        Ok(())
    }

    async fn restart_unit(
        &self,
        name: String,
        mode: String,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
        #[zbus(object_server)] server: &zbus::ObjectServer,
    ) -> zbus::fdo::Result<OwnedObjectPath> {
        let (id, result) = {
            let mut s = self
                .state
                .lock()
                .map_err(|_| zbus::fdo::Error::Failed("poisoned".into()))?;
            s.restarts.push((name.clone(), mode));
            s.next_job += 1;
            let result = s
                .next_results
                .get_mut(&name)
                .and_then(VecDeque::pop_front)
                .or_else(|| s.results.get(&name).cloned())
                .unwrap_or_else(|| "done".into());
            let state = s
                .active_state
                .get(&name)
                .cloned()
                .unwrap_or_else(|| if result == "done" { "active" } else { "failed" }.into());
            s.states.insert(name.clone(), state);
            (s.next_job, result)
        };
        // The unit object exists from its first restart on.
        let path = unit_path(&name);
        let unit = Unit {
            state: self.state.clone(),
            name: name.clone(),
        };
        let _ = server.at(path.as_str(), unit).await;
        let job = format!("/org/freedesktop/systemd1/job/{id}");
        let job_path = OwnedObjectPath::try_from(job.clone())
            .map_err(|e| zbus::fdo::Error::Failed(e.to_string()))?;
        // JobRemoved after the reply, as systemd sends it once the job ran.
        let emitter = emitter.into_owned();
        tokio::spawn(async move {
            tokio::task::yield_now().await;
            if let Ok(p) = ObjectPath::try_from(job.as_str()) {
                let _ = Manager::job_removed(&emitter, id, p, &name, &result).await;
            }
        });
        Ok(job_path)
    }

    fn get_unit(&self, name: String) -> zbus::fdo::Result<OwnedObjectPath> {
        let known = self
            .state
            .lock()
            .map(|s| s.states.contains_key(&name))
            .unwrap_or(false);
        if !known {
            return Err(zbus::fdo::Error::Failed(format!("Unit {name} not loaded.")));
        }
        OwnedObjectPath::try_from(unit_path(&name))
            .map_err(|e| zbus::fdo::Error::Failed(e.to_string()))
    }

    #[zbus(signal)]
    async fn job_removed(
        emitter: &SignalEmitter<'_>,
        id: u32,
        job: ObjectPath<'_>,
        unit: &str,
        result: &str,
    ) -> zbus::Result<()>;
}

struct Unit {
    state: Arc<Mutex<State>>,
    name: String,
}

#[zbus::interface(name = "org.freedesktop.systemd1.Unit")]
impl Unit {
    #[zbus(property)]
    fn active_state(&self) -> String {
        self.state
            .lock()
            .ok()
            .and_then(|s| s.states.get(&self.name).cloned())
            .unwrap_or_else(|| "inactive".into())
    }
}

/// A running stand-in.
pub struct SystemdStandin {
    /// Shared state.
    pub state: Arc<Mutex<State>>,
    _conn: zbus::Connection,
}

impl SystemdStandin {
    /// Serves systemd on the bus at `address`.
    pub async fn start(address: &str) -> zbus::Result<Self> {
        let state = Arc::new(Mutex::new(State::default()));
        let conn = zbus::connection::Builder::address(address)?
            .serve_at(
                "/org/freedesktop/systemd1",
                Manager {
                    state: state.clone(),
                },
            )?
            .name("org.freedesktop.systemd1")?
            .build()
            .await?;
        Ok(Self { state, _conn: conn })
    }

    /// The job result of the next restarts of `unit` (`done`, `failed`, `timeout`...).
    pub fn set_result(&self, unit: &str, result: &str) {
        if let Ok(mut s) = self.state.lock() {
            s.results.insert(unit.into(), result.into());
        }
    }

    /// The job result of the next restart of `unit` only.
    pub fn fail_next(&self, unit: &str, result: &str) {
        if let Ok(mut s) = self.state.lock() {
            s.next_results
                .entry(unit.into())
                .or_default()
                .push_back(result.into());
        }
    }

    /// The `ActiveState` `unit` has after its next restarts, whatever the job result.
    pub fn set_active_state(&self, unit: &str, state: &str) {
        if let Ok(mut s) = self.state.lock() {
            s.active_state.insert(unit.into(), state.into());
        }
    }

    /// Forgets overrides: jobs succeed and units become active again.
    pub fn reset(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.results.clear();
            s.active_state.clear();
        }
    }

    /// The units restarted so far, in order.
    pub fn restarts(&self) -> Vec<String> {
        self.state
            .lock()
            .map(|s| s.restarts.iter().map(|(u, _)| u.clone()).collect())
            .unwrap_or_default()
    }

    /// For each `Reload` call so far, how many `RestartUnit` calls came before it.
    pub fn reloads(&self) -> Vec<usize> {
        self.state
            .lock()
            .map(|s| s.reloads.clone())
            .unwrap_or_default()
    }

    /// The modes of the `RestartUnit` calls so far.
    pub fn modes(&self) -> Vec<String> {
        self.state
            .lock()
            .map(|s| s.restarts.iter().map(|(_, m)| m.clone()).collect())
            .unwrap_or_default()
    }
}
