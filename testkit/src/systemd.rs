//! A systemd stand-in on a private bus: what the agent uses of `org.freedesktop.systemd1` to
//! restart a runtime extension's units (`extensions/systemd.rs`), answered as systemd answers
//! it, with every restart recorded and a restart made to fail on demand.
//!
//! - `Manager.Subscribe()`: accepted (signals go to every client anyway).
//! - `Manager.Reload()`: recorded (with how many restarts came before it).
//! - `Manager.RestartUnit(name, mode)`: a job; returns its path at once. The job then ends:
//!   the unit's `ActiveState` becomes its final state and `Manager.JobRemoved(id, job, unit,
//!   result)` is broadcast, after the reply as systemd does once the job has run. An unknown
//!   mode is `org.freedesktop.DBus.Error.InvalidArgs`.
//! - `Manager.GetUnit(name)`: the unit's object path (`/org/freedesktop/systemd1/unit/…`, with
//!   systemd's escaping), whose `org.freedesktop.systemd1.Unit.ActiveState` property is served;
//!   a unit not loaded is `org.freedesktop.systemd1.NoSuchUnit`.
//!
//! Which units exist: started with a list ([`SystemdStandin::start_with_units`]), those, loaded
//! and `active`, and a restart of any other is `NoSuchUnit`; started without
//! ([`SystemdStandin::start`]), any unit may be restarted and is loaded from its first restart.
//!
//! A restart succeeds (`done`, then `active`) unless the test said otherwise: a sticky job
//! result ([`SystemdStandin::set_result`]) or `ActiveState` ([`SystemdStandin::set_active_state`])
//! for a unit, or one-shot outcomes queued per unit ([`SystemdStandin::fail_next`],
//! [`SystemdStandin::fail_next_restart`]), each used by one restart, so the restart that follows
//! (the agent's rollback) succeeds again.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// systemd's bus name.
pub const SYSTEMD_NAME: &str = "org.freedesktop.systemd1";
/// systemd's manager object.
pub const SYSTEMD_PATH: &str = "/org/freedesktop/systemd1";
/// The job modes systemd accepts for `RestartUnit`.
const JOB_MODES: [&str; 8] = [
    "replace",
    "fail",
    "isolate",
    "ignore-dependencies",
    "ignore-requirements",
    "flush",
    "triggering",
    "replace-irreversibly",
];

/// How the next restart of a unit goes wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartFault {
    /// The unit does not start: the job ends with result `failed` and the unit is `failed`.
    JobFailed,
    /// The unit starts and dies at once (a service that exits right away): the job ends `done`,
    /// the unit is `failed` by the time anyone looks.
    UnitFailed,
}

/// One `RestartUnit` call, as the stand-in answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitRestart {
    /// The unit.
    pub unit: String,
    /// The job mode asked for (the agent passes `replace`).
    pub mode: String,
    /// The job's object path.
    pub job: String,
    /// The job's result in `JobRemoved` (`done`, `failed`).
    pub result: String,
    /// The unit's `ActiveState` once the job ended (`active`, `failed`).
    pub active_state: String,
}

/// One queued outcome of a restart: the job's result, and the unit's `ActiveState` after it
/// (`None`: the sticky one, else `active` after `done` and `failed` after anything else).
#[derive(Debug, Clone)]
struct Outcome {
    result: String,
    active_state: Option<String>,
}

/// What the stand-in serves and records.
#[derive(Debug, Default)]
pub struct State {
    /// Whether only the units it started with exist.
    fixed_units: bool,
    /// `ActiveState` of each loaded unit.
    units: BTreeMap<String, String>,
    /// Sticky job result per unit (default `done`).
    results: BTreeMap<String, String>,
    /// Sticky `ActiveState` per unit after its jobs.
    active_state: BTreeMap<String, String>,
    /// One-shot outcomes per unit, used one per restart before the sticky ones.
    next: BTreeMap<String, VecDeque<Outcome>>,
    restarts: Vec<UnitRestart>,
    /// Per `Reload` call: the number of restarts before it.
    reloads: Vec<usize>,
    last_job: u32,
}

fn lock(s: &Mutex<State>) -> MutexGuard<'_, State> {
    s.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A unit's object path, escaped as systemd does (`containerd.service` →
/// `/org/freedesktop/systemd1/unit/containerd_2eservice`: every byte other than an ASCII letter
/// or digit, and a leading digit, becomes `_xx`).
pub fn unit_path(unit: &str) -> String {
    let mut path = String::from("/org/freedesktop/systemd1/unit/");
    for (i, b) in unit.bytes().enumerate() {
        if b.is_ascii_alphabetic() || (b.is_ascii_digit() && i > 0) {
            path.push(char::from(b));
        } else {
            path.push_str(&format!("_{b:02x}"));
        }
    }
    path
}

/// The bus objects (a module of their own: the interface macro makes public items).
mod service {
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    use zbus::object_server::SignalEmitter;
    use zbus::zvariant::{ObjectPath, OwnedObjectPath};

    use super::{JOB_MODES, SYSTEMD_PATH, State, UnitRestart, lock, unit_path};

    /// The errors systemd answers with.
    #[derive(Debug, zbus::DBusError)]
    #[zbus(prefix = "org.freedesktop")]
    enum SystemdError {
        /// A zbus error (an object path it could not make).
        #[zbus(error)]
        ZBus(zbus::Error),
        /// `org.freedesktop.systemd1.NoSuchUnit`.
        #[zbus(name = "systemd1.NoSuchUnit")]
        NoSuchUnit(String),
        /// `org.freedesktop.DBus.Error.InvalidArgs`.
        #[zbus(name = "DBus.Error.InvalidArgs")]
        InvalidArgs(String),
    }

    /// `org.freedesktop.systemd1.Manager`.
    pub(super) struct Manager {
        pub(super) shared: Arc<Mutex<State>>,
    }

    #[zbus::interface(name = "org.freedesktop.systemd1.Manager")]
    impl Manager {
        fn subscribe(&self) {}

        fn reload(&self) {
            let mut s = lock(&self.shared);
            let before = s.restarts.len();
            s.reloads.push(before);
        }

        async fn restart_unit(
            &self,
            name: String,
            mode: String,
            #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
            #[zbus(object_server)] server: &zbus::ObjectServer,
        ) -> Result<OwnedObjectPath, SystemdError> {
            if !JOB_MODES.contains(&mode.as_str()) {
                return Err(SystemdError::InvalidArgs(format!(
                    "Job mode {mode} invalid"
                )));
            }
            let (id, job, result, state, new_unit) = {
                let mut s = lock(&self.shared);
                let new_unit = !s.units.contains_key(&name);
                if new_unit && s.fixed_units {
                    return Err(SystemdError::NoSuchUnit(format!("Unit {name} not found.")));
                }
                let outcome = s.next.get_mut(&name).and_then(VecDeque::pop_front);
                let result = outcome
                    .as_ref()
                    .map(|o| o.result.clone())
                    .or_else(|| s.results.get(&name).cloned())
                    .unwrap_or_else(|| "done".to_owned());
                let state = outcome
                    .and_then(|o| o.active_state)
                    .or_else(|| s.active_state.get(&name).cloned())
                    .unwrap_or_else(|| {
                        if result == "done" { "active" } else { "failed" }.to_owned()
                    });
                s.last_job += 1;
                let id = s.last_job;
                let job = format!("{SYSTEMD_PATH}/job/{id}");
                s.units.insert(name.clone(), "activating".to_owned());
                s.restarts.push(UnitRestart {
                    unit: name.clone(),
                    mode,
                    job: job.clone(),
                    result: result.clone(),
                    active_state: state.clone(),
                });
                (id, job, result, state, new_unit)
            };
            if new_unit {
                // A unit restarted for the first time is loaded from now on: its object exists.
                let unit = Unit {
                    shared: Arc::clone(&self.shared),
                    name: name.clone(),
                };
                server
                    .at(unit_path(&name), unit)
                    .await
                    .map_err(SystemdError::ZBus)?;
            }
            let path = OwnedObjectPath::try_from(job.clone())
                .map_err(|e| SystemdError::ZBus(zbus::Error::Variant(e)))?;
            // The job runs once this handler has returned (its reply is queued first on the
            // stand-in's worker, as systemd replies before the job runs); it leaves the unit in its
            // final state, then announces the job's result.
            let emitter = emitter.into_owned();
            let shared = Arc::clone(&self.shared);
            tokio::spawn(async move {
                tokio::task::yield_now().await;
                lock(&shared).units.insert(name.clone(), state);
                if let Ok(p) = ObjectPath::try_from(job.as_str()) {
                    let _ = Manager::job_removed(&emitter, id, p, &name, &result).await;
                }
            });
            Ok(path)
        }

        fn get_unit(&self, name: String) -> Result<OwnedObjectPath, SystemdError> {
            if !lock(&self.shared).units.contains_key(&name) {
                return Err(SystemdError::NoSuchUnit(format!("Unit {name} not loaded.")));
            }
            OwnedObjectPath::try_from(unit_path(&name))
                .map_err(|e| SystemdError::ZBus(zbus::Error::Variant(e)))
        }

        /// A job finished: (id, job path, unit, result).
        #[zbus(signal)]
        async fn job_removed(
            emitter: &SignalEmitter<'_>,
            id: u32,
            job: ObjectPath<'_>,
            unit: &str,
            result: &str,
        ) -> zbus::Result<()>;
    }

    /// `org.freedesktop.systemd1.Unit` of one unit.
    pub(super) struct Unit {
        pub(super) shared: Arc<Mutex<State>>,
        pub(super) name: String,
    }

    #[zbus::interface(name = "org.freedesktop.systemd1.Unit")]
    impl Unit {
        #[zbus(property)]
        fn active_state(&self) -> String {
            lock(&self.shared)
                .units
                .get(&self.name)
                .cloned()
                .unwrap_or_else(|| "inactive".to_owned())
        }
    }
}

/// A running stand-in.
#[derive(Debug)]
pub struct SystemdStandin {
    /// Shared state.
    pub state: Arc<Mutex<State>>,
    _conn: zbus::Connection,
}

impl SystemdStandin {
    /// Serves systemd on the bus at `address`; any unit may be restarted.
    pub async fn start(address: &str) -> zbus::Result<Self> {
        Self::serve(address, None).await
    }

    /// Serves systemd on the bus at `address` with `units` loaded and `active`, and no others.
    pub async fn start_with_units(address: &str, units: &[&str]) -> zbus::Result<Self> {
        Self::serve(address, Some(units)).await
    }

    async fn serve(address: &str, units: Option<&[&str]>) -> zbus::Result<Self> {
        let loaded = units.unwrap_or_default();
        let state = Arc::new(Mutex::new(State {
            fixed_units: units.is_some(),
            units: loaded
                .iter()
                .map(|u| ((*u).to_owned(), "active".to_owned()))
                .collect(),
            ..State::default()
        }));
        let mut b = zbus::connection::Builder::address(address)?.serve_at(
            SYSTEMD_PATH,
            service::Manager {
                shared: Arc::clone(&state),
            },
        )?;
        for u in loaded {
            b = b.serve_at(
                unit_path(u),
                service::Unit {
                    shared: Arc::clone(&state),
                    name: (*u).to_owned(),
                },
            )?;
        }
        let conn = b.name(SYSTEMD_NAME)?.build().await?;
        Ok(Self { state, _conn: conn })
    }

    /// The job result of the next restarts of `unit` (`done`, `failed`, `timeout`...).
    pub fn set_result(&self, unit: &str, result: &str) {
        lock(&self.state).results.insert(unit.into(), result.into());
    }

    /// The job result of the next restart of `unit` only.
    pub fn fail_next(&self, unit: &str, result: &str) {
        self.queue(
            unit,
            Outcome {
                result: result.into(),
                active_state: None,
            },
        );
    }

    /// Makes the next restart of `unit` go wrong as `fault` says (one restart per call; queued
    /// faults are used in order).
    pub fn fail_next_restart(&self, unit: &str, fault: RestartFault) {
        let result = match fault {
            RestartFault::JobFailed => "failed",
            RestartFault::UnitFailed => "done",
        };
        self.queue(
            unit,
            Outcome {
                result: result.into(),
                active_state: Some("failed".into()),
            },
        );
    }

    fn queue(&self, unit: &str, outcome: Outcome) {
        lock(&self.state)
            .next
            .entry(unit.into())
            .or_default()
            .push_back(outcome);
    }

    /// The `ActiveState` `unit` has after its next restarts, whatever the job result.
    pub fn set_active_state(&self, unit: &str, state: &str) {
        lock(&self.state)
            .active_state
            .insert(unit.into(), state.into());
    }

    /// Forgets the sticky results and states: jobs succeed and units become active again.
    pub fn reset(&self) {
        let mut s = lock(&self.state);
        s.results.clear();
        s.active_state.clear();
    }

    /// The units restarted so far, in order (a unit once per restart).
    pub fn restarts(&self) -> Vec<String> {
        lock(&self.state)
            .restarts
            .iter()
            .map(|r| r.unit.clone())
            .collect()
    }

    /// Every restart so far, as answered, oldest first.
    pub fn restart_log(&self) -> Vec<UnitRestart> {
        lock(&self.state).restarts.clone()
    }

    /// The modes of the `RestartUnit` calls so far.
    pub fn modes(&self) -> Vec<String> {
        lock(&self.state)
            .restarts
            .iter()
            .map(|r| r.mode.clone())
            .collect()
    }

    /// For each `Reload` call so far, how many `RestartUnit` calls came before it.
    pub fn reloads(&self) -> Vec<usize> {
        lock(&self.state).reloads.clone()
    }

    /// `unit`'s `ActiveState` now (`None`: not loaded).
    pub fn active_state(&self, unit: &str) -> Option<String> {
        lock(&self.state).units.get(unit).cloned()
    }

    /// One-shot outcomes queued for `unit` and not used yet.
    pub fn pending_faults(&self, unit: &str) -> usize {
        lock(&self.state).next.get(unit).map_or(0, VecDeque::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_paths_are_escaped_like_systemd() {
        assert_eq!(
            unit_path("containerd.service"),
            "/org/freedesktop/systemd1/unit/containerd_2eservice"
        );
        assert_eq!(
            unit_path("getty@tty1.service"),
            "/org/freedesktop/systemd1/unit/getty_40tty1_2eservice"
        );
        assert_eq!(
            unit_path("1x-y.service"),
            "/org/freedesktop/systemd1/unit/_31x_2dy_2eservice"
        );
    }
}
