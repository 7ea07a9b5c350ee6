//! The test kit's systemd stand-in ([`SystemdStandin`]) for a simulated host: started with the
//! units the host has (a restart of any other is `NoSuchUnit`), served from its own runtime
//! thread, its restarts read as the records [`UnitRestart`]. Restarts fail on demand with
//! [`Systemd::fail_next_restart`].

use testkit::systemd::SystemdStandin;
pub use testkit::systemd::{RestartFault, SYSTEMD_NAME, SYSTEMD_PATH, UnitRestart, unit_path};
#[cfg(test)]
use zbus::zvariant::OwnedObjectPath;

use super::Bus;
use crate::error::{Error, Result};

/// A systemd stand-in serving on one host's bus, in this process (on its own runtime thread).
#[derive(Debug)]
pub struct Systemd {
    // Declared before the runtime: the connection is closed before its executor goes.
    standin: SystemdStandin,
    _rt: tokio::runtime::Runtime,
}

impl Systemd {
    /// Owns `org.freedesktop.systemd1` on `bus`, with `units` loaded and `active`.
    pub fn start(bus: &Bus, units: &[&str]) -> Result<Systemd> {
        let rt = testkit::dbus::service_runtime()?;
        let standin = rt
            .block_on(SystemdStandin::start_with_units(bus.address(), units))
            .map_err(|e| Error::Dbus {
                what: "starting the systemd stand-in",
                detail: format!("{e} (bus {})", bus.address()),
            })?;
        Ok(Systemd { standin, _rt: rt })
    }

    /// Makes the next restart of `unit` go wrong as `fault` says (one restart per call; queued
    /// faults are used in order).
    pub fn fail_next_restart(&self, unit: &str, fault: RestartFault) {
        self.standin.fail_next_restart(unit, fault);
    }

    /// Every restart so far, oldest first.
    pub fn restarts(&self) -> Vec<UnitRestart> {
        self.standin.restart_log()
    }

    /// For each `Reload` call so far, how many restarts came before it.
    pub fn reloads(&self) -> Vec<usize> {
        self.standin.reloads()
    }

    /// The units restarted so far, in order (a unit once per restart).
    pub fn restarted_units(&self) -> Vec<String> {
        self.standin.restarts()
    }

    /// `unit`'s `ActiveState` now (`None`: not loaded).
    pub fn active_state(&self, unit: &str) -> Option<String> {
        self.standin.active_state(unit)
    }

    /// Faults queued and not used yet, per unit.
    pub fn pending_faults(&self, unit: &str) -> usize {
        self.standin.pending_faults(unit)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use futures_util::StreamExt as _;

    use super::*;

    const MANAGER: &str = "org.freedesktop.systemd1.Manager";

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
