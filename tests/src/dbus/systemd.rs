//! A systemd stand-in on a host's private bus: what the agent uses of
//! `org.freedesktop.systemd1` to restart a runtime extension's units (`extensions/systemd.rs`),
//! answered as systemd answers it, with every restart recorded and a restart made to fail on
//! demand.
//!
//! - `Manager.Subscribe()`: accepted (signals go to every client anyway).
//! - `Manager.Reload()`: recorded (with how many restarts came before it).
//! - `Manager.RestartUnit(name, mode)`: a job; returns its path at once. The job then ends:
//!   the unit's `ActiveState` becomes its final state and `Manager.JobRemoved(id, job, unit,
//!   result)` is broadcast, after the reply as systemd does once the job has run. An unknown
//!   unit is `org.freedesktop.systemd1.NoSuchUnit`, an unknown mode `InvalidArgs`.
//! - `Manager.GetUnit(name)`: the unit's object path (`/org/freedesktop/systemd1/unit/…`, with
//!   systemd's escaping), whose `org.freedesktop.systemd1.Unit.ActiveState` property is served.
//!
//! A restart succeeds (`done`, then `active`) unless the test queued a [`RestartFault`] for that
//! unit with [`Systemd::fail_next_restart`]: each fault is used by one restart, so the restart
//! that follows (the agent's rollback) succeeds again.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use zbus::object_server::SignalEmitter;
use zbus::zvariant::{ObjectPath, OwnedObjectPath};

use super::Bus;
use crate::error::{Error, Result, io};

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

#[derive(Debug, Default)]
struct Shared {
    /// `ActiveState` of each unit the stand-in knows.
    units: BTreeMap<String, String>,
    /// Faults queued per unit, used one per restart.
    faults: BTreeMap<String, VecDeque<RestartFault>>,
    restarts: Vec<UnitRestart>,
    /// Per `Reload` call: the number of restarts before it.
    reloads: Vec<usize>,
    last_job: u32,
}

fn lock(s: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
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
struct Manager {
    shared: Arc<Mutex<Shared>>,
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
    ) -> Result<OwnedObjectPath, SystemdError> {
        if !JOB_MODES.contains(&mode.as_str()) {
            return Err(SystemdError::InvalidArgs(format!(
                "Job mode {mode} invalid"
            )));
        }
        let (id, job, result, state) = {
            let mut s = lock(&self.shared);
            if !s.units.contains_key(&name) {
                return Err(SystemdError::NoSuchUnit(format!("Unit {name} not found.")));
            }
            let fault = s.faults.get_mut(&name).and_then(VecDeque::pop_front);
            let (result, state) = match fault {
                None => ("done", "active"),
                Some(RestartFault::JobFailed) => ("failed", "failed"),
                Some(RestartFault::UnitFailed) => ("done", "failed"),
            };
            s.last_job += 1;
            let id = s.last_job;
            let job = format!("{SYSTEMD_PATH}/job/{id}");
            s.units.insert(name.clone(), "activating".to_owned());
            s.restarts.push(UnitRestart {
                unit: name.clone(),
                mode,
                job: job.clone(),
                result: result.to_owned(),
                active_state: state.to_owned(),
            });
            (id, job, result, state)
        };
        let path = OwnedObjectPath::try_from(job.clone())
            .map_err(|e| SystemdError::ZBus(zbus::Error::Variant(e)))?;
        // The job runs once this handler has returned (its reply is queued first on the
        // stand-in's one worker thread, as systemd replies before the job runs); it leaves the
        // unit in its final state, then announces the job's result.
        let emitter = emitter.into_owned();
        let shared = Arc::clone(&self.shared);
        tokio::spawn(async move {
            tokio::task::yield_now().await;
            lock(&shared).units.insert(name.clone(), state.to_owned());
            if let Ok(p) = ObjectPath::try_from(job.as_str()) {
                let _ = Manager::job_removed(&emitter, id, p, &name, result).await;
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
struct Unit {
    shared: Arc<Mutex<Shared>>,
    name: String,
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

/// A systemd stand-in serving on one host's bus, in this process (on its own runtime thread).
#[derive(Debug)]
pub struct Systemd {
    shared: Arc<Mutex<Shared>>,
    // Declared before the runtime: the connection is closed before its executor goes.
    _conn: zbus::Connection,
    _rt: tokio::runtime::Runtime,
}

impl Systemd {
    /// Owns `org.freedesktop.systemd1` on `bus`, with `units` loaded and `active`.
    pub fn start(bus: &Bus, units: &[&str]) -> Result<Systemd> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(io("starting an async runtime", "tokio"))?;
        let shared = Arc::new(Mutex::new(Shared {
            units: units
                .iter()
                .map(|u| ((*u).to_owned(), "active".to_owned()))
                .collect(),
            ..Shared::default()
        }));
        let conn = rt
            .block_on(async {
                let mut b = zbus::connection::Builder::address(bus.address())?.serve_at(
                    SYSTEMD_PATH,
                    Manager {
                        shared: Arc::clone(&shared),
                    },
                )?;
                for u in units {
                    b = b.serve_at(
                        unit_path(u),
                        Unit {
                            shared: Arc::clone(&shared),
                            name: (*u).to_owned(),
                        },
                    )?;
                }
                b.name(SYSTEMD_NAME)?.build().await
            })
            .map_err(|e| Error::Dbus {
                what: "starting the systemd stand-in",
                detail: format!("{e} (bus {})", bus.address()),
            })?;
        Ok(Systemd {
            shared,
            _conn: conn,
            _rt: rt,
        })
    }

    /// Makes the next restart of `unit` go wrong as `fault` says (one restart per call; queued
    /// faults are used in order).
    pub fn fail_next_restart(&self, unit: &str, fault: RestartFault) {
        lock(&self.shared)
            .faults
            .entry(unit.to_owned())
            .or_default()
            .push_back(fault);
    }

    /// Every restart so far, oldest first.
    pub fn restarts(&self) -> Vec<UnitRestart> {
        lock(&self.shared).restarts.clone()
    }

    /// For each `Reload` call so far, how many restarts came before it.
    pub fn reloads(&self) -> Vec<usize> {
        lock(&self.shared).reloads.clone()
    }

    /// The units restarted so far, in order (a unit once per restart).
    pub fn restarted_units(&self) -> Vec<String> {
        self.restarts().into_iter().map(|r| r.unit).collect()
    }

    /// `unit`'s `ActiveState` now (`None`: not loaded).
    pub fn active_state(&self, unit: &str) -> Option<String> {
        lock(&self.shared).units.get(unit).cloned()
    }

    /// Faults queued and not used yet, per unit.
    pub fn pending_faults(&self, unit: &str) -> usize {
        lock(&self.shared).faults.get(unit).map_or(0, VecDeque::len)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use futures_util::StreamExt as _;

    use super::*;

    const MANAGER: &str = "org.freedesktop.systemd1.Manager";

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

    /// What a client sees of one restart: the job path, then `JobRemoved`'s result and the
    /// unit's `ActiveState`, or the D-Bus error name.
    async fn restart(
        conn: &zbus::Connection,
        unit: &str,
        mode: &str,
    ) -> std::result::Result<(String, String, String), String> {
        let rule = zbus::MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .interface(MANAGER)
            .unwrap()
            .member("JobRemoved")
            .unwrap()
            .build();
        let mut signals = zbus::MessageStream::for_match_rule(rule, conn, None)
            .await
            .unwrap();
        let reply = conn
            .call_method(
                Some(SYSTEMD_NAME),
                SYSTEMD_PATH,
                Some(MANAGER),
                "RestartUnit",
                &(unit, mode),
            )
            .await;
        let job: OwnedObjectPath = match reply {
            Ok(m) => m.body().deserialize().unwrap(),
            Err(zbus::Error::MethodError(name, _, _)) => return Err(name.to_string()),
            Err(e) => panic!("{e}"),
        };
        let result = loop {
            let m = signals.next().await.unwrap().unwrap();
            let (_, path, _, result): (u32, OwnedObjectPath, String, String) =
                m.body().deserialize().unwrap();
            if path == job {
                break result;
            }
        };
        let unit_obj: OwnedObjectPath = conn
            .call_method(
                Some(SYSTEMD_NAME),
                SYSTEMD_PATH,
                Some(MANAGER),
                "GetUnit",
                &(unit,),
            )
            .await
            .unwrap()
            .body()
            .deserialize()
            .unwrap();
        let props = zbus::fdo::PropertiesProxy::builder(conn)
            .destination(SYSTEMD_NAME)
            .unwrap()
            .path(unit_obj)
            .unwrap()
            .build()
            .await
            .unwrap();
        let iface = zbus::names::InterfaceName::try_from("org.freedesktop.systemd1.Unit").unwrap();
        let state = String::try_from(props.get(iface, "ActiveState").await.unwrap()).unwrap();
        Ok((job.to_string(), result, state))
    }

    #[test]
    fn restarts_answer_like_systemd_and_fail_on_demand() {
        if !super::super::available() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let bus = Bus::start(dir.path()).unwrap();
        let systemd = Systemd::start(&bus, &["containerd.service"]).unwrap();
        systemd.fail_next_restart("containerd.service", RestartFault::JobFailed);
        systemd.fail_next_restart("containerd.service", RestartFault::UnitFailed);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let seen = rt.block_on(async {
            let conn = zbus::connection::Builder::address(bus.address())
                .unwrap()
                .build()
                .await
                .unwrap();
            let mut seen = Vec::new();
            for (unit, mode) in [
                ("containerd.service", "replace"),
                ("containerd.service", "replace"),
                ("containerd.service", "replace"),
                ("docker.service", "replace"),
                ("containerd.service", "sideways"),
            ] {
                seen.push(restart(&conn, unit, mode).await);
            }
            seen
        });
        let job = |n: u32| format!("{SYSTEMD_PATH}/job/{n}");
        assert_eq!(
            seen,
            [
                Ok((job(1), "failed".into(), "failed".into())),
                Ok((job(2), "done".into(), "failed".into())),
                Ok((job(3), "done".into(), "active".into())),
                Err("org.freedesktop.systemd1.NoSuchUnit".into()),
                Err("org.freedesktop.DBus.Error.InvalidArgs".into()),
            ]
        );
        let r = systemd.restarts();
        assert_eq!(r.len(), 3, "{r:?}");
        assert!(
            r.iter()
                .all(|r| r.unit == "containerd.service" && r.mode == "replace")
        );
        assert_eq!(systemd.pending_faults("containerd.service"), 0);
        assert_eq!(
            systemd.active_state("containerd.service").as_deref(),
            Some("active")
        );
        assert_eq!(systemd.active_state("docker.service"), None);
    }
}
