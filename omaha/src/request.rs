//! The typed Omaha v3 request: what an agent sends and a server reads.
//!
//! Unknown attributes and elements are dropped when parsing. Optional attributes are `Option` so a
//! value sent empty (`previousversion=""`) stays distinguishable from one not sent.

use crate::appid::normalize_appid;
use crate::codes::error_code::DecodedErrorCode;
use crate::codes::event::{EventResult, EventType};

/// A `<request protocol="3.0">`: client identity, the OS, and one or more apps.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Request {
    /// `version`: client name and version (update_engine: `update_engine-0.4.10`).
    pub version: Option<String>,
    /// `updater`: updater name (Google clients).
    pub updater: Option<String>,
    /// `updaterversion`: updater version (update_engine repeats `version`).
    pub updaterversion: Option<String>,
    /// `installsource`: why this request was made (`scheduler`, `ondemandupdate`...).
    pub installsource: Option<String>,
    /// `ismachine`: system-wide install (`1`); update_engine always sends `1`.
    pub ismachine: Option<bool>,
    /// `sessionid`: one GUID per update flow.
    pub sessionid: Option<String>,
    /// `requestid`: one GUID per request attempt.
    pub requestid: Option<String>,
    /// `userid`: per-client GUID (opt-in).
    pub userid: Option<String>,
    /// `testsource`: non-empty marks test traffic.
    pub testsource: Option<String>,
    /// `<os>`, if sent.
    pub os: Option<Os>,
    /// The `<app>` elements in order.
    pub apps: Vec<AppRequest>,
}

impl Request {
    /// A request as update_engine sends it: `version` and `updaterversion` both set to
    /// `client_version` (e.g. `platte-agent-0.1.0`), `ismachine="1"`, no apps yet.
    pub fn new(client_version: impl Into<String>) -> Self {
        let v = client_version.into();
        Request {
            version: Some(v.clone()),
            updaterversion: Some(v),
            ismachine: Some(true),
            ..Request::default()
        }
    }

    /// Sets `installsource` (`scheduler` for periodic checks, `ondemandupdate` for interactive).
    pub fn with_installsource(mut self, source: impl Into<String>) -> Self {
        self.installsource = Some(source.into());
        self
    }

    /// Sets `<os>`.
    pub fn with_os(mut self, os: Os) -> Self {
        self.os = Some(os);
        self
    }

    /// Appends an `<app>`.
    pub fn with_app(mut self, app: AppRequest) -> Self {
        self.apps.push(app);
        self
    }
}

/// `<os platform version sp arch>`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Os {
    /// `platform` (update_engine: `CoreOS`).
    pub platform: Option<String>,
    /// `version` (update_engine: `Chateau`).
    pub version: Option<String>,
    /// `sp`: service pack; update_engine sends `<version>_<machine>`, e.g. `2512.2.0_x86_64`.
    pub sp: Option<String>,
    /// `arch` (`x64`, `arm`...; update_engine does not send it).
    pub arch: Option<String>,
}

impl Os {
    /// An `<os>` with the three attributes update_engine sends.
    pub fn new(
        platform: impl Into<String>,
        version: impl Into<String>,
        sp: impl Into<String>,
    ) -> Self {
        Os {
            platform: Some(platform.into()),
            version: Some(version.into()),
            sp: Some(sp.into()),
            arch: None,
        }
    }
}

/// One request `<app>`: Google attributes, the CoreOS/Flatcar extensions and the body.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AppRequest {
    /// `appid` exactly as sent (braced or not, any case); compare with
    /// [`AppRequest::normalized_appid`].
    pub appid: String,
    /// `version`: installed version.
    pub version: Option<String>,
    /// `nextversion`: version of an upgrade in progress.
    pub nextversion: Option<String>,
    /// `lang`.
    pub lang: Option<String>,
    /// `brand`.
    pub brand: Option<String>,
    /// `client`.
    pub client: Option<String>,
    /// `ap`: additional parameters.
    pub ap: Option<String>,
    /// `cohort`.
    pub cohort: Option<String>,
    /// `cohorthint`.
    pub cohorthint: Option<String>,
    /// `cohortname`.
    pub cohortname: Option<String>,
    /// `installage`: days since install.
    pub installage: Option<i64>,
    /// `track`: the group/channel name (or a legacy group UUID).
    pub track: Option<String>,
    /// `from_track` (ChromeOS).
    pub from_track: Option<String>,
    /// `bootid`: `{boot_id}`.
    pub bootid: Option<String>,
    /// `machineid`: `/etc/machine-id`, unbraced; the instance identity.
    pub machineid: Option<String>,
    /// `machinealias`.
    pub machinealias: Option<String>,
    /// `oem`: OEM id.
    pub oem: Option<String>,
    /// `oemversion`.
    pub oemversion: Option<String>,
    /// `alephversion`: first version ever installed.
    pub alephversion: Option<String>,
    /// `board`, e.g. `amd64-usr`.
    pub board: Option<String>,
    /// `hardware_class` (update_engine sends it empty).
    pub hardware_class: Option<String>,
    /// `delta_okay` (update_engine sends `false`).
    pub delta_okay: Option<bool>,
    /// `multi_manifest_ok`: the client accepts several `<manifest>`s (floors).
    pub multi_manifest_ok: Option<bool>,
    /// `<ping>`, if sent.
    pub ping: Option<PingRequest>,
    /// `<updatecheck>`, if sent.
    pub updatecheck: Option<UpdateCheckRequest>,
    /// `<event>`s in order (update_engine may send one alongside an updatecheck).
    pub events: Vec<EventRequest>,
}

impl AppRequest {
    /// An app with `appid` and installed `version`, no body yet.
    pub fn new(appid: impl Into<String>, version: impl Into<String>) -> Self {
        AppRequest {
            appid: appid.into(),
            version: Some(version.into()),
            ..AppRequest::default()
        }
    }

    /// The appid normalised with [`normalize_appid`].
    pub fn normalized_appid(&self) -> String {
        normalize_appid(&self.appid)
    }

    /// Adds `<ping active="1">` (as update_engine always does).
    pub fn with_active_ping(mut self) -> Self {
        self.ping = Some(PingRequest::active());
        self
    }

    /// Adds an attribute-less `<updatecheck>`.
    pub fn with_updatecheck(mut self) -> Self {
        self.updatecheck = Some(UpdateCheckRequest::default());
        self
    }

    /// Appends an `<event>`.
    pub fn with_event(mut self, event: EventRequest) -> Self {
        self.events.push(event);
        self
    }
}

/// Request `<ping>`: activity counting.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PingRequest {
    /// `active`: the app was active since the last ping.
    pub active: Option<bool>,
    /// `a`: days since the last active ping (-1 never).
    pub a: Option<i64>,
    /// `r`: days since the last ping of any kind (-1 never).
    pub r: Option<i64>,
    /// `ad`: server `elapsed_days` of the last active ping.
    pub ad: Option<i64>,
    /// `rd`: server `elapsed_days` of the last ping.
    pub rd: Option<i64>,
    /// `ping_freshness`.
    pub ping_freshness: Option<String>,
}

impl PingRequest {
    /// `<ping active="1">`.
    pub fn active() -> Self {
        PingRequest {
            active: Some(true),
            ..PingRequest::default()
        }
    }
}

/// Request `<updatecheck>`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UpdateCheckRequest {
    /// `targetversionprefix`: pin to versions with this dotted prefix.
    pub targetversionprefix: Option<String>,
    /// `rollback_allowed`: the client accepts a downgrade.
    pub rollback_allowed: Option<bool>,
    /// `updatedisabled`: the client will not apply an update (policy).
    pub updatedisabled: Option<bool>,
}

/// Request `<event>`: a step of the update flow or an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRequest {
    /// `eventtype`.
    pub event_type: EventType,
    /// `eventresult` (0 when absent).
    pub result: EventResult,
    /// `errorcode`: update_engine's code with flag bits. A negative value (Google clients send
    /// HRESULTs) is kept as its 32-bit two's complement.
    pub errorcode: Option<DecodedErrorCode>,
    /// `extracode1`.
    pub extracode1: Option<i64>,
    /// `previousversion`: version before the update (empty or `0.0.0.0` = not a completion).
    pub previousversion: Option<String>,
    /// `nextversion`.
    pub nextversion: Option<String>,
}

impl EventRequest {
    /// An event with `event_type` and `result`, nothing else.
    pub fn new(event_type: EventType, result: EventResult) -> Self {
        EventRequest {
            event_type,
            result,
            errorcode: None,
            extracode1: None,
            previousversion: None,
            nextversion: None,
        }
    }

    /// 13/1: update download started.
    pub fn download_started() -> Self {
        Self::new(EventType::UpdateDownloadStarted, EventResult::Success)
    }

    /// 14/1: update download finished.
    pub fn download_finished() -> Self {
        Self::new(EventType::UpdateDownloadFinished, EventResult::Success)
    }

    /// 3/1: update installed (before the reboot).
    pub fn update_installed() -> Self {
        Self::new(EventType::UpdateComplete, EventResult::Success)
    }

    /// 3/2 with `previousversion`: the check after a reboot into the new version (empty
    /// `previous_version` on later checks, as update_engine sends).
    pub fn rebooted(previous_version: impl Into<String>) -> Self {
        EventRequest {
            previousversion: Some(previous_version.into()),
            ..Self::new(EventType::UpdateComplete, EventResult::SuccessReboot)
        }
    }

    /// 3/0 with `errorcode`: the update failed.
    pub fn error(code: DecodedErrorCode) -> Self {
        EventRequest {
            errorcode: Some(code),
            ..Self::new(EventType::UpdateComplete, EventResult::Error)
        }
    }

    /// 3/9 with `errorcode`: the update was deferred (policy or backoff).
    pub fn deferred(code: DecodedErrorCode) -> Self {
        EventRequest {
            errorcode: Some(code),
            ..Self::new(EventType::UpdateComplete, EventResult::UpdateDeferred)
        }
    }

    /// Whether this is a 3/2 that reports a real completion: `previousversion` is set and is
    /// neither empty nor `0.0.0.0` (Nebraska's rule).
    pub fn is_reboot_completion(&self) -> bool {
        self.event_type == EventType::UpdateComplete
            && self.result == EventResult::SuccessReboot
            && self
                .previousversion
                .as_deref()
                .is_some_and(|v| !v.is_empty() && v != "0.0.0.0")
    }
}
