//! The agent's side of runtime extensions ([`crate::extensions`]): opening them at start,
//! reconciling once, adding their apps to every OS check and handling their answers, fetching
//! builds for a newly staged OS, and the [`RebootGate`] that keeps a staged OS update from the
//! reboot driver until every enabled extension is ready for it.
//!
//! An extension's failure never fails the OS update: the module reports it on the extension's
//! own app (`3/0` with its code) and rolls the extension back; the only effect on the OS is the
//! hold of its reboot while an extension has no build for the staged version.

use omaha::{AppRequest, Response};

use super::Agent;
use crate::config::Settings;
use crate::extensions::{ExtensionOutcome, Extensions, ExtensionsEnv, Outcome, Readiness};
use crate::identity::Identity;
use crate::omaha_client::OmahaClient;

/// Whether runtime extensions let a staged OS update reboot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum RebootGate {
    /// No runtime extension is enabled: any staged update may reboot.
    Open,
    /// Extensions are enabled and ready for this staged OS version (`None`: for none yet, so
    /// a version staged since the last evaluation is held until it is evaluated).
    ReadyFor(Option<String>),
}

impl RebootGate {
    /// The gate before anything was evaluated.
    pub(super) fn initial(extensions: Option<&Extensions>) -> Self {
        if extensions.is_some_and(Extensions::any_enabled) {
            RebootGate::ReadyFor(None)
        } else {
            RebootGate::Open
        }
    }

    /// The staged version the reboot driver may act on.
    pub(super) fn rebootable(&self, staged: Option<&str>) -> Option<String> {
        let staged = staged?;
        match self {
            RebootGate::Open => Some(staged.to_owned()),
            RebootGate::ReadyFor(Some(v)) if v == staged => Some(staged.to_owned()),
            RebootGate::ReadyFor(_) => None,
        }
    }
}

/// The configured extensions with their persisted state (`None`: none configured, or the state
/// cannot be read, which is logged: the OS updates go on without them).
pub(super) fn open(
    settings: &Settings,
    identity: &Identity,
    http: &reqwest::Client,
    omaha: &OmahaClient,
) -> Option<Extensions> {
    if settings.extensions.extensions.is_empty() {
        return None;
    }
    let env = ExtensionsEnv {
        state_dir: settings.state_dir.clone(),
        trusted_keys_dir: settings.updates.trusted_keys_dir.clone(),
        http: http.clone(),
        omaha: omaha.clone(),
        identity: identity.clone(),
        // Connected to the system bus when a unit must be restarted.
        systemd: None,
    };
    match Extensions::new(settings.extensions.clone(), env) {
        Ok(e) => {
            let names: Vec<&str> = e.settings().enabled().map(|x| x.name.as_str()).collect();
            tracing::info!(extensions = ?names, "runtime extensions enabled");
            Some(e)
        }
        Err(e) => {
            tracing::error!(error = %e, dir = %settings.state_dir.display(),
                "cannot load the runtime extension state; extensions are not managed until the agent restarts");
            None
        }
    }
}

fn log_outcomes(what: &str, out: &[ExtensionOutcome]) {
    for o in out {
        match &o.outcome {
            Outcome::NoUpdate => {
                tracing::debug!(extension = %o.name, phase = what, "no extension update")
            }
            other => {
                tracing::info!(extension = %o.name, phase = what, outcome = ?other, "runtime extension")
            }
        }
    }
}

impl Agent {
    /// The runtime extensions (`None`: none configured).
    pub fn extensions(&self) -> Option<&Extensions> {
        self.extensions.as_ref()
    }

    /// The enabled extensions' `<app>`s for an OS check (`target_os`: the staged OS version).
    pub(super) fn extension_apps(&self, target_os: Option<&str>) -> Vec<AppRequest> {
        self.extensions
            .as_ref()
            .map(|e| e.app_requests(target_os))
            .unwrap_or_default()
    }

    /// Handles the extensions' `<app>`s of an OS check's answer.
    pub(super) async fn handle_extensions(&mut self, resp: &Response, target_os: Option<&str>) {
        let Some(ext) = self.extensions.as_mut().filter(|e| e.any_enabled()) else {
            return;
        };
        let out = ext.handle_response(resp, target_os).await;
        log_outcomes("check", &out);
    }

    /// Right after OS `os_version` was staged: asks for (and stages) the extension builds that
    /// support it. A failed request is logged; the reboot then waits for a later check.
    pub(super) async fn stage_extensions(&mut self, os_version: &str, interactive: bool) {
        let Some(ext) = self.extensions.as_mut().filter(|e| e.any_enabled()) else {
            return;
        };
        tracing::info!(
            os_version,
            "asking for runtime extension builds for the staged OS"
        );
        match ext.check(Some(os_version), interactive).await {
            Ok(out) => log_outcomes("staging", &out),
            Err(e) => tracing::warn!(os_version, error = %e,
                "cannot ask for runtime extension builds for the staged OS; the next check asks again"),
        }
    }

    /// Once per agent start: finishes what a reboot or a crash left (see
    /// [`Extensions::reconcile`]).
    pub(super) async fn reconcile_extensions(&mut self) {
        if std::mem::replace(&mut self.extensions_reconciled, true) {
            return;
        }
        if let Some(ext) = self.extensions.as_mut().filter(|e| e.any_enabled()) {
            let out = ext.reconcile().await;
            log_outcomes("start", &out);
        }
        self.sync_extensions();
    }

    /// Publishes the extensions' status and whether the staged OS update may reboot.
    pub(super) fn sync_extensions(&self) {
        let Some(ext) = &self.extensions else {
            return;
        };
        let target = self.flow.staged_version().map(str::to_owned);
        let status = ext.status(target.as_deref());
        let (gate, wait) = match (&target, ext.any_enabled()) {
            (_, false) => (RebootGate::Open, String::new()),
            (None, true) => (RebootGate::ReadyFor(None), String::new()),
            (Some(t), true) => match ext.readiness(t) {
                Readiness::Ready => (RebootGate::ReadyFor(Some(t.clone())), String::new()),
                r @ Readiness::Waiting(_) => (RebootGate::ReadyFor(None), r.reason()),
            },
        };
        let before = self.info.borrow().extensions_wait.clone();
        if wait != before {
            match &target {
                Some(t) if !wait.is_empty() => {
                    tracing::warn!(os_version = %t, reason = %wait, "the staged OS update waits for runtime extensions")
                }
                Some(t) => {
                    tracing::info!(os_version = %t, "runtime extensions are ready for the staged OS")
                }
                None => {}
            }
        }
        self.publisher.set_gate(gate, &self.flow);
        self.info.send_if_modified(|i| {
            let a = super::replace_if_changed(&mut i.extensions, status);
            let b = super::replace_if_changed(&mut i.extensions_wait, wait);
            a || b
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_holds_a_staged_version_until_it_was_found_ready() {
        assert_eq!(
            RebootGate::Open.rebootable(Some("2.0.0")).as_deref(),
            Some("2.0.0")
        );
        assert_eq!(RebootGate::Open.rebootable(None), None);
        let ready = RebootGate::ReadyFor(Some("2.0.0".into()));
        assert_eq!(ready.rebootable(Some("2.0.0")).as_deref(), Some("2.0.0"));
        // A newer version staged since: held until evaluated.
        assert_eq!(ready.rebootable(Some("2.1.0")), None);
        assert_eq!(RebootGate::ReadyFor(None).rebootable(Some("2.0.0")), None);
        assert_eq!(RebootGate::initial(None), RebootGate::Open);
    }
}
