//! Every sample in `../shared/testdata/omaha/` parses (or, for the one malformed original, fails
//! clearly), with the fields that matter checked, and serialise∘parse is stable on each.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use omaha::{
    ActionEvent, AppStatus, ErrorCode, EventResult, EventType, ParseError, Request, Response,
    UpdateCheckStatus, normalize_appid, parse_request, parse_response,
};

const FLATCAR: &str = "e96281a6-d1af-4bde-9a0a-97b76e56dc57";

fn corpus_dir() -> PathBuf {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/testdata/omaha"
    ))
    .to_path_buf()
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(corpus_dir().join(name)).unwrap()
}

fn request(name: &str) -> Request {
    let r = parse_request(&read(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_request_round_trip(&r);
    r
}

fn response(name: &str) -> Response {
    let r = parse_response(&read(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_response_round_trip(&r);
    r
}

fn assert_request_round_trip(r: &Request) {
    let xml = r.to_xml();
    let again = parse_request(xml.as_bytes()).unwrap();
    assert_eq!(&again, r, "parse(serialise(m)) != m for\n{xml}");
    assert_eq!(again.to_xml(), xml, "serialisation is not stable");
}

fn assert_response_round_trip(r: &Response) {
    let xml = r.to_xml();
    let again = parse_response(xml.as_bytes()).unwrap();
    assert_eq!(&again, r, "parse(serialise(m)) != m for\n{xml}");
    assert_eq!(again.to_xml(), xml, "serialisation is not stable");
}

/// Checks one sample by name; returns false for a name it does not know.
fn check(name: &str) -> bool {
    match name {
        "update_engine-request-updatecheck.xml" => {
            let r = request(name);
            assert_eq!(r.version.as_deref(), Some("update_engine-0.4.10"));
            assert_eq!(r.installsource.as_deref(), Some("scheduler"));
            assert_eq!(r.ismachine, Some(true));
            let os = r.os.as_ref().unwrap();
            assert_eq!(os.platform.as_deref(), Some("CoreOS"));
            assert_eq!(os.sp.as_deref(), Some("2512.2.0_x86_64"));
            let app = &r.apps[0];
            assert_eq!(app.appid, FLATCAR);
            assert_eq!(app.version.as_deref(), Some("1.2.3"));
            assert_eq!(app.track.as_deref(), Some("alpha"));
            assert_eq!(
                app.machineid.as_deref(),
                Some("abce671d61774703ac7be60715220bfe")
            );
            assert_eq!(app.oem.as_deref(), Some("ami"));
            assert_eq!(app.oemversion.as_deref(), Some("0.1.1-r1"));
            assert_eq!(app.alephversion.as_deref(), Some("1688.5.3"));
            assert_eq!(app.board.as_deref(), Some("amd64-usr"));
            assert_eq!(app.hardware_class.as_deref(), Some(""));
            assert_eq!(app.delta_okay, Some(false));
            assert_eq!(app.ping.as_ref().unwrap().active, Some(true));
            assert!(app.updatecheck.is_some());
            assert_eq!(app.events.len(), 1);
            assert_eq!(app.events[0].event_type, EventType::UpdateComplete);
            assert_eq!(app.events[0].result, EventResult::Success);
        }
        "update_engine-request-updatecheck-fixture.xml" => {
            let r = request(name);
            let app = &r.apps[0];
            assert_eq!(
                app.normalized_appid(),
                "87efface-864d-49a5-9bb3-4b050a7c227a"
            );
            assert_eq!(
                app.machineid.as_deref(),
                Some("{8BDE4C4D-9083-4D61-B41C-3253212C0C37}")
            );
            assert_eq!(app.machinealias.as_deref(), Some("mymachine"));
            assert_eq!(app.track.as_deref(), Some("dev-channel"));
            assert_eq!(app.from_track.as_deref(), Some("developer-build"));
            let ping = app.ping.as_ref().unwrap();
            assert_eq!(
                (ping.active, ping.a, ping.r),
                (Some(true), Some(-1), Some(-1))
            );
            let check = app.updatecheck.as_ref().unwrap();
            assert_eq!(check.targetversionprefix.as_deref(), Some(""));
            let ev = &app.events[0];
            assert_eq!(
                (ev.event_type, ev.result),
                (EventType::UpdateComplete, EventResult::SuccessReboot)
            );
            assert_eq!(ev.previousversion.as_deref(), Some(""));
            assert!(
                !ev.is_reboot_completion(),
                "empty previousversion is not a completion"
            );
        }
        "update_engine-request-event-fixture.xml" => {
            let r = request(name);
            assert_eq!(r.installsource.as_deref(), Some("ondemandupdate"));
            let app = &r.apps[0];
            assert_eq!(app.track.as_deref(), Some(""));
            assert!(app.updatecheck.is_none() && app.ping.is_none());
            assert_eq!(app.events.len(), 1);
            assert_eq!(app.events[0].event_type, EventType::UpdateComplete);
            assert_eq!(app.events[0].result, EventResult::Success);
        }
        "coreupdate-request-event-updatecomplete.xml" => {
            let r = request(name);
            let app = &r.apps[0];
            assert_eq!(app.appid, FLATCAR);
            assert_eq!(app.bootid.as_deref(), Some("{fake-client-018}"));
            assert_eq!(app.track.as_deref(), Some("beta"));
            assert_eq!(app.events[0].result, EventResult::SuccessReboot);
            assert_eq!(app.events[0].previousversion, None);
        }
        "nebraska-request-updatecheck-template.xml" => {
            let template = String::from_utf8(read(name)).unwrap();
            assert_eq!(template.matches("%s").count(), 3);
            let filled = template
                .replacen("%s", "{E96281A6-D1AF-4BDE-9A0A-97B76E56DC57}", 1)
                .replacen("%s", "stable", 1)
                .replacen("%s", "b0b2a6e7d5d5435fb3e1f8e2a0d1c3b4", 1);
            let r = parse_request(filled.as_bytes()).unwrap();
            assert_request_round_trip(&r);
            assert_eq!(r.installsource.as_deref(), Some("scheduler"));
            let app = &r.apps[0];
            assert_eq!(app.normalized_appid(), FLATCAR);
            assert_eq!(app.appid, "{E96281A6-D1AF-4BDE-9A0A-97B76E56DC57}");
            assert_eq!(app.track.as_deref(), Some("stable"));
            assert_eq!(
                app.machineid.as_deref(),
                Some("b0b2a6e7d5d5435fb3e1f8e2a0d1c3b4")
            );
            assert_eq!(app.oem.as_deref(), Some("fakeclient"));
            assert_eq!(app.ping.as_ref().unwrap().r, Some(1));
            assert!(app.updatecheck.is_some());
            assert_eq!(app.events[0].event_type, EventType::UpdateComplete);
        }
        "google-omaha-request-updatecheck.xml" => {
            let r = request(name);
            assert_eq!(
                r.sessionid.as_deref(),
                Some("{5FAD27D4-6BFA-4daa-A1B3-5A1F821FEE0F}")
            );
            assert_eq!(
                r.requestid.as_deref(),
                Some("{C8F6EDF3-B623-4ee6-B2DA-1D08A0B4C665}")
            );
            assert_eq!(
                r.userid.as_deref(),
                Some("{D0BBD725-742D-44ae-8D46-0231E881D58E}")
            );
            assert_eq!(r.testsource.as_deref(), Some("ossdev"));
            assert_eq!(r.ismachine, Some(false));
            assert_eq!(r.os.as_ref().unwrap().arch.as_deref(), Some("x64"));
            assert_eq!(r.apps.len(), 2);
            assert_eq!(r.apps[0].brand.as_deref(), Some("GGLS"));
            assert_eq!(r.apps[0].installage, Some(39));
            assert_eq!(r.apps[1].version.as_deref(), Some("2.2.2.0"));
            assert!(
                r.apps
                    .iter()
                    .all(|a| a.updatecheck.is_some() && a.ping.as_ref().unwrap().r == Some(1))
            );
        }
        "google-omaha-request-event.xml" => {
            let r = request(name);
            let app = &r.apps[0];
            assert_eq!(app.nextversion.as_deref(), Some("13.0.782.112"));
            assert_eq!(app.version.as_deref(), Some(""));
            let types: Vec<_> = app.events.iter().map(|e| e.event_type).collect();
            assert_eq!(
                types,
                [
                    EventType::NewApplicationInstallStarted,
                    EventType::DownloadStarted,
                    EventType::InstallComplete
                ]
            );
            let last = &app.events[2];
            assert_eq!(last.result, EventResult::Cancelled);
            // A negative HRESULT is kept as its 32-bit two's complement.
            assert_eq!(last.errorcode.unwrap().to_raw(), 0x8004_0810_u32);
            assert_eq!(last.extracode1, Some(268_435_463));
        }
        "nebraska-response-ok-multipackage.xml" => {
            let r = response(name);
            assert_eq!(r.server.as_deref(), Some("nebraska"));
            let app = r.app(FLATCAR).unwrap();
            assert_eq!(app.ping.as_ref().unwrap().status, "ok");
            assert_eq!(app.events.len(), 1);
            let check = app.updatecheck.as_ref().unwrap();
            assert_eq!(check.status, UpdateCheckStatus::Ok);
            assert_eq!(
                check.urls,
                ["https://update.release.flatcar-linux.net/amd64-usr/3732.0.0/"]
            );
            let m = &check.manifests[0];
            assert_eq!(m.version, "3732.0.0");
            assert_eq!(m.packages.len(), 3);
            let main = &m.packages[0];
            assert_eq!(main.name, "flatcar_production_update.gz");
            assert_eq!(main.size, 382_137_917);
            assert!(main.required);
            assert_eq!(main.hash.as_deref(), Some("I6DGNAOrJRUxPbCuLw+AITfiVMo="));
            assert!(main.sha1().unwrap().is_some());
            let azure = &m.packages[1];
            assert!(!azure.required);
            assert_eq!(
                azure.hash_sha256.as_deref(),
                Some("3aed3129de50b959a97e4913ba485bd60e72d2bb6aa377d5ed404103f0680043")
            );
            assert!(azure.sha256().unwrap().is_some());
            let post = m.postinstall().unwrap();
            assert_eq!(
                post.sha256.as_deref(),
                Some("stLG3U/o4Ar8TMHFwT/RWB0iNkaWOO6QtLrq6+AHBbA=")
            );
            assert!(post.sha256_digest().unwrap().is_some());
            assert!(post.disable_payload_backoff);
        }
        "nebraska-response-ok-flatcar-3374.xml" => {
            let r = response(name);
            let app = &r.apps[0];
            assert_eq!(app.appid, "{e96281a6-d1af-4bde-9a0a-97b76e56dc57}");
            assert!(r.app(FLATCAR).is_some());
            let check = app.updatecheck.as_ref().unwrap();
            let m = check.next_manifest().unwrap();
            assert_eq!(m.version, "3374.2.5");
            assert_eq!(m.packages[0].size, 364_314_900);
            assert_eq!(
                m.packages[0].hash.as_deref(),
                Some("quPS8xPVCw/HUCIZfKD4lt9kHr8=")
            );
            assert_eq!(
                m.postinstall().unwrap().sha256.as_deref(),
                Some("WR2cXX1kIaie+ElHh6ZxYVSOlOD2Ko/JQHvndGNhcMI=")
            );
        }
        "nebraska-response-ok.xml" => {
            let r = response(name);
            let check = r.apps[0].updatecheck.as_ref().unwrap();
            assert_eq!(check.status, UpdateCheckStatus::Ok);
            assert_eq!(check.urls, ["https://flatcar.org/test/response"]);
            let m = &check.manifests[0];
            assert_eq!(m.version, "2191.5.0");
            assert_eq!(m.packages[0].size, 465_881_871);
            // The test values are not real digests: kept as strings, reported on decoding.
            assert_eq!(m.packages[0].hash.as_deref(), Some("test+x2zIoeClk="));
            assert!(m.postinstall().unwrap().sha256_digest().is_err());
        }
        "nebraska-response-noupdate.xml" | "coreupdate-response-noupdate.xml" => {
            let r = response(name);
            let app = &r.apps[0];
            assert_eq!(app.status, AppStatus::Ok);
            let check = app.updatecheck.as_ref().unwrap();
            assert_eq!(check.status, UpdateCheckStatus::NoUpdate);
            assert!(check.urls.is_empty() && check.manifests.is_empty());
        }
        "nebraska-response-error.xml" => {
            let r = response(name);
            let app = &r.apps[0];
            assert_eq!(
                app.status,
                AppStatus::Other("error-failedToRetrieveUpdatePackageInfo".into())
            );
            assert!(app.status.is_error());
            let check = app.updatecheck.as_ref().unwrap();
            assert_eq!(check.status, UpdateCheckStatus::ErrorInternal);
            assert!(check.status.is_error());
        }
        "nebraska-response-app-error-no-updatecheck.xml" => {
            let r = response(name);
            assert_eq!(r.apps[0].status, AppStatus::ErrorInternal);
            assert!(r.apps[0].updatecheck.is_none());
        }
        "go-omaha-response-ok-fixture.xml" => {
            let r = response(name);
            assert_eq!(r.daystart.unwrap().elapsed_seconds, 49008);
            let check = r.apps[0].updatecheck.as_ref().unwrap();
            assert_eq!(check.urls, ["http://kam:8080/static/"]);
            let m = &check.manifests[0];
            assert_eq!(m.version, "9999.0.0");
            assert_eq!(
                m.packages[0].hash.as_deref(),
                Some("+LXvjiaPkeYDLHoNKlf9qbJwvnk=")
            );
            assert_eq!(m.packages[0].size, 67_546_213);
            let post = m.postinstall().unwrap();
            assert_eq!(
                post.sha256.as_deref(),
                Some("0VAlQW3RE99SGtSB5R4m08antAHO8XDoBMKDyxQT/Mg=")
            );
            assert!(post.sha256_digest().unwrap().is_some());
            assert!(!post.is_delta_payload, "IsDelta is not IsDeltaPayload");
        }
        "go-omaha-response-noupdate-fixture.xml" => {
            // Malformed in the original: `<response"` and no `</response>`.
            let err = parse_response(&read(name)).unwrap_err();
            // The stray quote opens a quoted run, so the tag at byte 39 never closes.
            assert!(
                matches!(err, ParseError::Truncated { offset: 39, .. }),
                "{err:?}"
            );
            assert_eq!(
                err.to_string(),
                "truncated input at byte 39: tag not closed: `>` not found before end of input"
            );
        }
        "go-omaha-response-multimanifest.xml" => {
            let r = response(name);
            let check = r.apps[0].updatecheck.as_ref().unwrap();
            let versions: Vec<_> = check.manifests.iter().map(|m| m.version.as_str()).collect();
            assert_eq!(versions, ["1.5.0", "2.0.0", "4.0.0"]);
            let floors: Vec<_> = check
                .manifests
                .iter()
                .map(|m| (m.is_floor, m.is_target))
                .collect();
            assert_eq!(floors, [(true, false), (true, false), (false, true)]);
            assert_eq!(
                check.manifests[0].floor_reason.as_deref(),
                Some("Required for partition migration")
            );
            assert_eq!(
                check.manifests[1].floor_reason.as_deref(),
                Some("Bootloader update required")
            );
            assert_eq!(check.next_manifest().unwrap().version, "1.5.0");
            assert_eq!(check.target_manifest().unwrap().version, "4.0.0");
            assert_eq!(check.manifests[2].packages[0].size, 542_373_876);
            assert_eq!(
                check.manifests[2].postinstall().unwrap().sha256.as_deref(),
                Some("sha256_4_0_0")
            );
        }
        "coreupdate-response-ok.xml" => {
            let r = response(name);
            assert_eq!(r.server.as_deref(), Some("update.core-os.net"));
            let check = r.apps[0].updatecheck.as_ref().unwrap();
            let m = &check.manifests[0];
            assert_eq!(check.urls, ["http://index.example.com/webapp:1.0.2"]);
            assert_eq!(m.packages[0].name, "update.gz");
            assert_eq!(m.packages[0].size, 23);
            assert!(!m.packages[0].required);
            let post = m.postinstall().unwrap();
            assert!(post.disable_payload_backoff);
            assert_eq!(post.needs_admin, Some(false));
            assert_eq!(post.metadata_size, Some(190));
            assert_eq!(post.metadata_signature_rsa.as_deref(), Some("ixi6Oebo"));
            // This document uses hex where real traffic uses base64: decoding says so.
            assert!(post.sha256_digest().is_err());
        }
        "coreupdate-response-event-ack.xml" => {
            let r = response(name);
            let app = &r.apps[0];
            assert_eq!(app.status, AppStatus::Ok);
            assert!(app.events.is_empty() && app.ping.is_none() && app.updatecheck.is_none());
        }
        "google-omaha-response-ok.xml" => {
            let r = response(name);
            assert_eq!(r.apps.len(), 2);
            let first = r.apps[0].updatecheck.as_ref().unwrap();
            assert_eq!(first.status, UpdateCheckStatus::NoUpdate);
            let check = r
                .app("{d0ab2ebc-931b-4013-9feb-c9c4c2225c8c}")
                .unwrap()
                .updatecheck
                .as_ref()
                .unwrap();
            let m = &check.manifests[0];
            assert_eq!(m.version, "13.0.782.112");
            assert_eq!(m.packages[0].size, 23_963_192);
            assert_eq!(m.actions[0].event, ActionEvent::Install);
            assert_eq!(m.actions[0].run.as_deref(), Some("chrome_installer.exe"));
            assert_eq!(
                m.actions[0].arguments.as_deref(),
                Some("--do-not-launch-chrome")
            );
            assert_eq!(m.postinstall().unwrap().sha256, None);
            // The <ping> after <updatecheck> is found regardless of order.
            assert!(r.apps[1].ping.is_some());
        }
        "google-omaha-response-event-ack.xml" => {
            let r = response(name);
            assert_eq!(r.apps[0].events.len(), 3);
            assert!(r.apps[0].events.iter().all(|a| a.status == "ok"));
            assert_eq!(r.daystart.unwrap().elapsed_seconds, 56754);
        }
        "update_engine-response-sample-chromeos.xml" => {
            let r = response(name);
            assert_eq!(
                normalize_appid(&r.apps[0].appid),
                "90f229ce-83e2-4faf-8479-e368a34938b1"
            );
            let m = &r.apps[0].updatecheck.as_ref().unwrap().manifests[0];
            assert_eq!(m.version, "3095.0.0");
            assert_eq!(m.packages[0].size, 400_752_559);
            assert_eq!(m.actions.len(), 2);
            assert_eq!(m.actions[0].event, ActionEvent::Update);
            let post = m.postinstall().unwrap();
            assert_eq!(
                post.sha256.as_deref(),
                Some("DIAVxoI+8NpsudUawOA5U92VHlaxQBS3ejN4EPM6T2A=")
            );
            assert!(!post.is_delta_payload);
            assert_eq!(post.chromeos_version.as_deref(), Some("3095.0.0"));
            assert_eq!(post.metadata_size, Some(58_315));
            assert!(
                post.metadata_signature_rsa
                    .as_deref()
                    .is_some_and(|s| s.starts_with("xXrO/LahHlKk") && s.ends_with("Q2VUxtcAGw=="))
            );
        }
        "update_engine-unittest-response-ok.xml" => {
            let r = response(name);
            assert_eq!(r.daystart.unwrap().elapsed_seconds, 100);
            let check = r.apps[0].updatecheck.as_ref().unwrap();
            assert_eq!(check.urls, ["http://missing/field/test/"]);
            let m = &check.manifests[0];
            assert_eq!(
                (m.packages[0].name.as_str(), m.packages[0].size),
                ("f", 587)
            );
            assert!(!m.packages[0].required, "missing required reads as false");
            let post = m.postinstall().unwrap();
            assert_eq!(post.sha256.as_deref(), Some("lkq34j5345"));
            assert!(!post.is_delta_payload);
        }
        _ => return false,
    }
    true
}

#[test]
fn every_sample_is_classified_and_checked() {
    let mut seen = BTreeSet::new();
    for entry in std::fs::read_dir(corpus_dir()).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name == "INDEX.md" {
            continue;
        }
        assert!(
            check(&name),
            "unclassified sample {name}: add its checks to tests/corpus.rs"
        );
        seen.insert(name);
    }
    assert_eq!(seen.len(), 23, "samples seen: {seen:?}");
}

#[test]
fn error_events_in_real_traffic_decode() {
    // The shape of coreos/bugs#2348 (postinstall failure) against a self-hosted server.
    let body = br#"<request protocol="3.0"><app appid="{103867da-e3a2-4c92-b0b3-7fbd7f7d8b71}"
        track="beta"><event eventtype="3" eventresult="0" errorcode="268435461"></event></app></request>"#;
    let r = parse_request(body).unwrap();
    let code = r.apps[0].events[0].errorcode.unwrap();
    assert_eq!(code.code, ErrorCode::PostinstallRunnerError);
    assert_eq!(
        code.to_string(),
        "postinstall failed (non-production server)"
    );
}
