//! The simulated machines' side of the wire: builds each [`Step`] as the Omaha XML update_engine
//! sends (with the `omaha` crate), posts it to `/v1/update/`, and reads the answer back into an
//! [`Answer`]. The requests name their client `platte-agent-sim`: the simulated release is a
//! Platte payload, which the server offers only to Platte's agent (docs/development/protocol.md, "Who is
//! asking"). With downloads on, 14/1 is sent only after the payload was fetched and its size
//! and SHA-256 matched the offered manifest (else 3/0 with a download error is sent instead).

use omaha::{AppRequest, DecodedErrorCode, ErrorCode, ErrorFlags, EventRequest, Os, Request};
use sha2::{Digest as _, Sha256};

use super::machine::{Answer, Step};

/// The payload as offered by the server (for `--download`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offered {
    /// Full download URL (codebase + package name).
    pub url: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256, if the manifest gave one.
    pub sha256: Option<[u8; 32]>,
}

/// Sends machines' requests to one server.
#[derive(Debug, Clone)]
pub struct Wire {
    http: reqwest::Client,
    url: String,
    appid: String,
    track: String,
    from_version: String,
    to_version: String,
}

/// A machine's id on the wire.
pub fn machine_id(id: u32) -> String {
    format!("sim-{id:07}")
}

impl Wire {
    /// A client posting to `base_url` + `/v1/update/` for app `appid` on `track`.
    pub fn new(
        base_url: &str,
        appid: &str,
        track: &str,
        from_version: &str,
        to_version: &str,
        parallel: usize,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(parallel)
            .timeout(std::time::Duration::from_secs(60))
            .build()?;
        Ok(Self {
            http,
            url: format!("{}/v1/update/", base_url.trim_end_matches('/')),
            appid: format!("{{{appid}}}"),
            track: track.to_owned(),
            from_version: from_version.to_owned(),
            to_version: to_version.to_owned(),
        })
    }

    /// The request body of `step` for machine `id`.
    pub fn body(&self, id: u32, step: Step) -> String {
        let version = match step {
            Step::PostReboot | Step::CheckNew => &self.to_version,
            _ => &self.from_version,
        };
        let mut app = AppRequest::new(&self.appid, version);
        app.track = Some(self.track.clone());
        app.machineid = Some(machine_id(id));
        app.bootid = Some(format!("{{sim-boot-{id}}}"));
        app.oem = Some("qemu".into());
        app.board = Some("amd64-usr".into());
        let code =
            |c: ErrorCode| DecodedErrorCode::new(c).with_flags(ErrorFlags::NON_PRODUCTION_SERVER);
        app = match step {
            Step::Check | Step::CheckNew => app.with_active_ping().with_updatecheck(),
            Step::DownloadStarted => app.with_event(EventRequest::download_started()),
            Step::DownloadFinished => app.with_event(EventRequest::download_finished()),
            Step::InstallDone => app.with_event(EventRequest::update_installed()),
            Step::Error(c) => app.with_event(EventRequest::error(code(c))),
            Step::PostReboot => app
                .with_active_ping()
                .with_updatecheck()
                .with_event(EventRequest::rebooted(&self.from_version)),
        };
        Request::new("platte-agent-sim")
            .with_installsource("scheduler")
            .with_os(Os::new("CoreOS", "Chateau", format!("{version}_x86_64")))
            .with_app(app)
            .to_xml()
    }

    /// The request body of machine `id`'s registration: a ping on the old version, no update
    /// check (the server learns the machine before the rollout begins).
    pub fn register_body(&self, id: u32) -> String {
        let mut app = AppRequest::new(&self.appid, &self.from_version);
        app.track = Some(self.track.clone());
        app.machineid = Some(machine_id(id));
        app.bootid = Some(format!("{{sim-boot-{id}}}"));
        app.oem = Some("qemu".into());
        app.board = Some("amd64-usr".into());
        Request::new("platte-agent-sim")
            .with_installsource("scheduler")
            .with_os(Os::new(
                "CoreOS",
                "Chateau",
                format!("{}_x86_64", self.from_version),
            ))
            .with_app(app.with_active_ping())
            .to_xml()
    }

    /// Registers machine `id` (see [`Wire::register_body`]).
    pub async fn register(&self, id: u32) -> Result<(), String> {
        self.post(self.register_body(id)).await.map(|_| ())
    }

    async fn post(&self, body: String) -> Result<omaha::Response, String> {
        let resp = self
            .http
            .post(&self.url)
            .header("content-type", "text/xml")
            .body(body)
            .send()
            .await
            .map_err(|e| format!("POST {}: {e}", self.url))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| format!("reading answer of POST {}: {e}", self.url))?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned();
            return Err(format!(
                "POST {} answered {status}: {}",
                self.url,
                text.trim()
            ));
        }
        omaha::parse_response(&bytes).map_err(|e| format!("unparsable Omaha answer: {e}"))
    }

    /// Sends `step` for machine `id`; `offered` is the payload to fetch before 14/1 when
    /// downloads are on. Returns the answer and, for a grant, what was offered.
    pub async fn send(
        &self,
        id: u32,
        step: Step,
        offered: Option<&Offered>,
    ) -> (Answer, Option<Offered>) {
        if let (Step::DownloadFinished, Some(o)) = (step, offered)
            && let Err(e) = self.download(o).await
        {
            tracing::debug!(machine = id, error = %e, "simulated download failed");
            let err = Step::Error(ErrorCode::DownloadTransferError);
            return match self.post(self.body(id, err)).await {
                Ok(_) => (Answer::DownloadFailed, None),
                Err(e) => (Answer::Failed(e), None),
            };
        }
        let resp = match self.post(self.body(id, step)).await {
            Ok(r) => r,
            Err(e) => return (Answer::Failed(e), None),
        };
        read_answer(&resp, &self.appid, step)
    }

    async fn download(&self, o: &Offered) -> Result<(), String> {
        let resp = self
            .http
            .get(&o.url)
            .send()
            .await
            .map_err(|e| format!("GET {}: {e}", o.url))?;
        if !resp.status().is_success() {
            return Err(format!("GET {} answered {}", o.url, resp.status()));
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| format!("GET {}: {e}", o.url))?;
        if bytes.len() as u64 != o.size {
            return Err(format!("{} bytes, manifest says {}", bytes.len(), o.size));
        }
        if let Some(want) = o.sha256
            && Sha256::digest(&bytes).as_slice() != want
        {
            return Err("SHA-256 does not match the manifest".into());
        }
        Ok(())
    }
}

/// Reads the answer to `step` from a parsed response.
pub fn read_answer(resp: &omaha::Response, appid: &str, step: Step) -> (Answer, Option<Offered>) {
    let Some(app) = resp.app(appid) else {
        return (Answer::Failed("answer without our <app>".into()), None);
    };
    if app.status.is_error() {
        return (
            Answer::Failed(format!("app status {}", app.status.as_str())),
            None,
        );
    }
    if !matches!(step, Step::Check | Step::CheckNew | Step::PostReboot) {
        return (Answer::Ack, None);
    }
    let Some(uc) = &app.updatecheck else {
        return (
            Answer::Failed("check answered without <updatecheck>".into()),
            None,
        );
    };
    match &uc.status {
        omaha::UpdateCheckStatus::NoUpdate => (Answer::NoUpdate, None),
        omaha::UpdateCheckStatus::Ok => {
            let Some(man) = uc.next_manifest() else {
                return (Answer::Failed("ok without <manifest>".into()), None);
            };
            let offered = match (uc.urls.first(), man.packages.first()) {
                (Some(base), Some(p)) => Some(Offered {
                    url: format!("{base}{}", p.name),
                    size: p.size,
                    sha256: p.sha256().ok().flatten(),
                }),
                _ => None,
            };
            (
                Answer::Update {
                    version: man.version.clone(),
                },
                offered,
            )
        }
        other => (
            Answer::Failed(format!("updatecheck status {}", other.as_str())),
            None,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire() -> Wire {
        Wire::new("http://127.0.0.1:1/", "abc", "stable", "1.0.0", "2.0.0", 4).unwrap()
    }

    #[test]
    fn bodies_parse_back_as_update_engine_requests() {
        let w = wire();
        let check = omaha::parse_request(w.body(5, Step::Check).as_bytes()).unwrap();
        let app = &check.apps[0];
        assert_eq!(app.machineid.as_deref(), Some("sim-0000005"));
        assert_eq!(app.version.as_deref(), Some("1.0.0"));
        assert_eq!(app.track.as_deref(), Some("stable"));
        assert!(app.updatecheck.is_some() && app.ping.is_some());
        let later = omaha::parse_request(w.body(5, Step::CheckNew).as_bytes()).unwrap();
        assert_eq!(later.apps[0].version.as_deref(), Some("2.0.0"));
        assert!(later.apps[0].events.is_empty());
        let reboot = omaha::parse_request(w.body(5, Step::PostReboot).as_bytes()).unwrap();
        let app = &reboot.apps[0];
        assert_eq!(app.version.as_deref(), Some("2.0.0"));
        assert!(app.events[0].is_reboot_completion());
        assert_eq!(app.events[0].previousversion.as_deref(), Some("1.0.0"));
        let err = omaha::parse_request(
            w.body(5, Step::Error(ErrorCode::PostinstallRunnerError))
                .as_bytes(),
        )
        .unwrap();
        let e = &err.apps[0].events[0];
        assert_eq!((e.event_type.to_u32(), e.result.to_u32()), (3, 0));
        assert_eq!(e.errorcode.map(|c| c.to_raw()), Some(268_435_461));
        for (step, t, r) in [
            (Step::DownloadStarted, 13, 1),
            (Step::DownloadFinished, 14, 1),
            (Step::InstallDone, 3, 1),
        ] {
            let req = omaha::parse_request(w.body(1, step).as_bytes()).unwrap();
            let e = &req.apps[0].events[0];
            assert_eq!((e.event_type.to_u32(), e.result.to_u32()), (t, r));
            assert!(req.apps[0].updatecheck.is_none());
        }
    }

    #[test]
    fn answers_are_read_from_responses() {
        use omaha::{AppResponse, DayStart, Manifest, Package, Response, UpdateCheckResponse};
        let ok = Response::new("t", DayStart::default()).with_app(
            AppResponse::new("{abc}").with_updatecheck(UpdateCheckResponse::ok(
                "http://h/p/",
                Manifest::new("2.0.0").with_package(Package::new("u.payload", 7)),
            )),
        );
        let (a, o) = read_answer(&ok, "{ABC}", Step::Check);
        assert_eq!(
            a,
            Answer::Update {
                version: "2.0.0".into()
            }
        );
        assert_eq!(o.unwrap().url, "http://h/p/u.payload");
        let no = Response::new("t", DayStart::default())
            .with_app(AppResponse::new("abc").with_updatecheck(UpdateCheckResponse::noupdate()));
        assert_eq!(read_answer(&no, "abc", Step::Check).0, Answer::NoUpdate);
        assert_eq!(read_answer(&no, "abc", Step::InstallDone).0, Answer::Ack);
        let unknown = Response::new("t", DayStart::default())
            .with_app(AppResponse::unknown_application("abc"));
        assert!(matches!(
            read_answer(&unknown, "abc", Step::Check).0,
            Answer::Failed(_)
        ));
    }
}
