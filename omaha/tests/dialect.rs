//! What Platte sends: requests built by the agent match update_engine's shapes, and responses
//! built by the server carry everything update_engine's parser requires.
#![allow(clippy::unwrap_used)]

use omaha::{
    Action, AppRequest, AppResponse, AppStatus, DayStart, DecodedErrorCode, ErrorCode, ErrorFlags,
    EventRequest, Manifest, Os, Package, Request, Response, UpdateCheckResponse, UpdateCheckStatus,
    parse_request, parse_response,
};

const FLATCAR: &str = "{e96281a6-d1af-4bde-9a0a-97b76e56dc57}";

#[test]
fn built_update_check_equals_update_engines() {
    let sample = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/testdata/omaha/update_engine-request-updatecheck.xml"
    );
    let want = parse_request(&std::fs::read(sample).unwrap()).unwrap();
    let mut app = AppRequest::new("e96281a6-d1af-4bde-9a0a-97b76e56dc57", "1.2.3")
        .with_active_ping()
        .with_updatecheck()
        .with_event(EventRequest::update_installed());
    app.track = Some("alpha".into());
    app.bootid = Some("{965fb4c5-ad3e-4eb7-a4c2-ca0c0e31ec84}".into());
    app.oem = Some("ami".into());
    app.oemversion = Some("0.1.1-r1".into());
    app.alephversion = Some("1688.5.3".into());
    app.machineid = Some("abce671d61774703ac7be60715220bfe".into());
    app.lang = Some("en-US".into());
    app.board = Some("amd64-usr".into());
    app.hardware_class = Some(String::new());
    app.delta_okay = Some(false);
    let built = Request::new("update_engine-0.4.10")
        .with_installsource("scheduler")
        .with_os(Os::new("CoreOS", "Chateau", "2512.2.0_x86_64"))
        .with_app(app);
    assert_eq!(built, want);
    let xml = built.to_xml();
    assert!(xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<request protocol=\"3.0\" version=\"update_engine-0.4.10\" updaterversion=\"update_engine-0.4.10\" installsource=\"scheduler\" ismachine=\"1\">"), "{xml}");
    assert!(xml.contains("<ping active=\"1\"></ping>\n        <updatecheck></updatecheck>\n        <event eventtype=\"3\" eventresult=\"1\"></event>"), "{xml}");
}

#[test]
fn event_requests_have_update_engines_shapes() {
    let app = |e| {
        Request::new("platte")
            .with_app(AppRequest::new(FLATCAR, "1.0.0").with_event(e))
            .to_xml()
    };
    let started = app(EventRequest::download_started());
    assert!(
        started.contains(r#"<event eventtype="13" eventresult="1"></event>"#),
        "{started}"
    );
    assert!(!started.contains("<ping") && !started.contains("<updatecheck"));
    assert!(app(EventRequest::download_finished()).contains(r#"eventtype="14" eventresult="1""#));
    let reboot = app(EventRequest::rebooted("3374.2.4"));
    assert!(
        reboot.contains(
            r#"<event eventtype="3" eventresult="2" previousversion="3374.2.4"></event>"#
        )
    );
    let code = DecodedErrorCode::new(ErrorCode::PostinstallRunnerError)
        .with_flags(ErrorFlags::NON_PRODUCTION_SERVER);
    let failed = app(EventRequest::error(code));
    assert!(
        failed.contains(r#"<event eventtype="3" eventresult="0" errorcode="268435461"></event>"#),
        "{failed}"
    );
    let deferred = parse_request(
        app(EventRequest::deferred(
            ErrorCode::OmahaUpdateDeferredForBackoff.into(),
        ))
        .as_bytes(),
    )
    .unwrap();
    let ev = &deferred.apps[0].events[0];
    assert_eq!(
        (ev.result.to_u32(), ev.errorcode.unwrap().to_raw()),
        (9, 40)
    );
}

/// What update_engine's `ParseResponse` demands of the first app (reference §3.4), checked on
/// the serialised text re-parsed.
fn update_engine_accepts(xml: &str) -> Result<Option<String>, String> {
    let r = parse_response(xml.as_bytes()).map_err(|e| e.to_string())?;
    let app = r.apps.first().ok_or("no app")?;
    let check = app.updatecheck.as_ref().ok_or("no updatecheck (34)")?;
    match check.status {
        UpdateCheckStatus::NoUpdate => return Ok(None),
        UpdateCheckStatus::Ok => {}
        _ => return Err("status neither ok nor noupdate (34)".into()),
    }
    let manifest = check.manifests.first().ok_or("no manifest")?;
    if check.urls.is_empty() || check.urls.iter().any(String::is_empty) {
        return Err("missing or empty codebase".into());
    }
    let package = manifest.packages.first().ok_or("no package")?;
    if package.name.is_empty() || package.size == 0 {
        return Err("package name/size".into());
    }
    let post = manifest.postinstall().ok_or("no postinstall action")?;
    post.sha256_digest()
        .map_err(|e| e.to_string())?
        .ok_or("no sha256")?;
    Ok(Some(manifest.version.clone()))
}

#[test]
fn server_ok_response_satisfies_update_engine() {
    let sha1 = [0x11; 20];
    let sha256 = [0x22; 32];
    let manifest = Manifest::new("3374.2.5")
        .with_package(
            Package::new("flatcar_production_update.gz", 364_314_900)
                .with_sha1(&sha1)
                .with_sha256(&sha256)
                .required(true),
        )
        .with_package(Package::new("oem-azure.gz", 40_897_503).with_sha256(&[0x33; 32]))
        .with_action(
            Action::postinstall(&sha256)
                .with_disable_payload_backoff(true)
                .with_max_failure_count_per_url(5)
                .with_is_delta_payload(false),
        );
    let check = UpdateCheckResponse::ok("https://updates.example/pkg/3374.2.5/", manifest)
        .with_url("https://mirror.example/3374.2.5/")
        .with_poll_interval(3600);
    let response = Response::new(
        "platte",
        DayStart {
            elapsed_seconds: 100,
            elapsed_days: Some(6000),
        },
    )
    .with_app(
        AppResponse::new(FLATCAR)
            .with_ping_ack()
            .with_updatecheck(check)
            .with_event_acks(1),
    );
    let xml = response.to_xml();
    assert_eq!(update_engine_accepts(&xml), Ok(Some("3374.2.5".into())));
    for needle in [
        r#"<response protocol="3.0" server="platte">"#,
        r#"<daystart elapsed_seconds="100" elapsed_days="6000"/>"#,
        r#"<updatecheck status="ok" PollInterval="3600">"#,
        r#"<url codebase="https://updates.example/pkg/3374.2.5/"/>"#,
        r#"<package name="flatcar_production_update.gz" hash="ERERERERERERERERERERERERERE=" hash_sha256="2222222222222222222222222222222222222222222222222222222222222222" size="364314900" required="true"/>"#,
        r#"<action event="postinstall" sha256="IiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiI=" DisablePayloadBackoff="true" MaxFailureCountPerUrl="5"/>"#,
    ] {
        assert!(xml.contains(needle), "missing {needle} in\n{xml}");
    }
    // Ack order is Nebraska's: ping, updatecheck, events.
    let (p, u, e) = (
        xml.find("<ping").unwrap(),
        xml.find("<updatecheck").unwrap(),
        xml.find("<event").unwrap(),
    );
    assert!(p < u && u < e);
    let back = parse_response(xml.as_bytes()).unwrap();
    assert_eq!(back, response);
    let pkg = &back.apps[0].updatecheck.as_ref().unwrap().manifests[0].packages[0];
    assert_eq!(pkg.sha1().unwrap(), Some(sha1));
    assert_eq!(pkg.sha256().unwrap(), Some(sha256));
}

#[test]
fn noupdate_unknown_app_and_rollback() {
    let response = Response::new("platte", DayStart::default())
        .with_app(
            AppResponse::new(FLATCAR)
                .with_ping_ack()
                .with_updatecheck(UpdateCheckResponse::noupdate()),
        )
        .with_app(AppResponse::unknown_application(
            "{00000000-0000-0000-0000-000000000000}",
        ));
    let xml = response.to_xml();
    assert!(xml.contains(r#"<updatecheck status="noupdate"/>"#), "{xml}");
    assert!(xml.contains(r#"<app appid="{00000000-0000-0000-0000-000000000000}" status="error-unknownApplication"/>"#), "{xml}");
    assert_eq!(update_engine_accepts(&xml), Ok(None));
    let back = parse_response(xml.as_bytes()).unwrap();
    assert_eq!(back.apps[1].status, AppStatus::ErrorUnknownApplication);
    assert!(back.apps[1].status.is_error());

    let downgrade = UpdateCheckResponse::ok(
        "https://u/",
        Manifest::new("3374.2.4")
            .with_package(Package::new("p", 1))
            .with_action(Action::postinstall(&[1; 32])),
    )
    .with_rollback(true);
    let xml = Response::default()
        .with_app(AppResponse::new(FLATCAR).with_updatecheck(downgrade))
        .to_xml();
    assert!(
        xml.contains(r#"<updatecheck status="ok" _rollback="true">"#),
        "{xml}"
    );
    assert!(
        parse_response(xml.as_bytes()).unwrap().apps[0]
            .updatecheck
            .as_ref()
            .unwrap()
            .rollback
    );
}

#[test]
fn floors_are_serialised_in_order() {
    let m = |v: &str| {
        Manifest::new(v)
            .with_package(Package::new("p", 1))
            .with_action(Action::postinstall(&[0; 32]))
    };
    let check = UpdateCheckResponse::ok(
        "https://u/",
        m("1.5.0").as_floor(Some("partition migration".into())),
    )
    .with_manifest(m("4.0.0").as_target());
    let xml = Response::default()
        .with_app(AppResponse::new(FLATCAR).with_updatecheck(check))
        .to_xml();
    assert!(xml.contains(
        r#"<manifest version="1.5.0" is_floor="true" floor_reason="partition migration">"#
    ));
    assert!(xml.contains(r#"<manifest version="4.0.0" is_target="true">"#));
    // update_engine reads only the first manifest: it installs the floor first.
    assert_eq!(update_engine_accepts(&xml), Ok(Some("1.5.0".into())));
}

#[test]
fn values_are_escaped() {
    let codebase = r#"https://u/?a=1&b="2"<x>'"#;
    let check = UpdateCheckResponse::ok(
        codebase,
        Manifest::new("1").with_package(Package::new("p&q", 1)),
    );
    let xml = Response::default()
        .with_app(AppResponse::new("a<b").with_updatecheck(check))
        .to_xml();
    assert!(
        xml.contains(r#"codebase="https://u/?a=1&amp;b=&quot;2&quot;&lt;x&gt;&apos;""#),
        "{xml}"
    );
    let back = parse_response(xml.as_bytes()).unwrap();
    assert_eq!(back.apps[0].appid, "a<b");
    let check = back.apps[0].updatecheck.as_ref().unwrap();
    assert_eq!(check.urls[0], codebase);
    assert_eq!(check.manifests[0].packages[0].name, "p&q");
}
