//! What real peers send is accepted: any attribute order and whitespace, quotes of either kind,
//! with or without declaration or BOM, unknown elements and attributes, entities in values.
#![allow(clippy::unwrap_used)]

use omaha::{EventType, UpdateCheckStatus, parse_request, parse_response};

#[test]
fn attribute_order_whitespace_quotes_and_no_declaration() {
    let body = "\u{feff}  <request\n\tismachine = '1'   protocol=\"3.0\"\r\n>\n<app\n  track='stable'\n  appid=\"{E96281A6-d1af-4bde-9a0a-97b76e56dc57}\"   version = \"1.0.0\" ></app ></request >";
    let r = parse_request(body.as_bytes()).unwrap();
    assert_eq!(r.ismachine, Some(true));
    let app = &r.apps[0];
    assert_eq!(app.appid, "{E96281A6-d1af-4bde-9a0a-97b76e56dc57}");
    assert_eq!(
        app.normalized_appid(),
        "e96281a6-d1af-4bde-9a0a-97b76e56dc57"
    );
    assert_eq!(app.track.as_deref(), Some("stable"));
    assert_eq!(app.version.as_deref(), Some("1.0.0"));
}

#[test]
fn unknown_elements_and_attributes_are_skipped() {
    let body = r#"<?xml version="1.0" encoding="utf-8"?>
        <request protocol="3.0" futureattr="x" dedup="cr">
          <hw physmemory="8" sse2="1"/>
          <future><app appid="hidden"><updatecheck/></app></future>
          <app appid="a" experiments="e" version="1">
            <data name="install" index="verboselogging"/>
            <disabled reason="1"/>
            <packages><package fp="1.abc"/></packages>
            <updatecheck tttoken="t" sameversionupdate="true" targetversionprefix="3374."/>
            <!-- a comment --><?pi data?><![CDATA[ <event eventtype="1"/> ]]>
            text that is ignored
          </app>
        </request>"#;
    let r = parse_request(body.as_bytes()).unwrap();
    assert_eq!(
        r.apps.len(),
        1,
        "the <app> inside <future> is not a request app"
    );
    let app = &r.apps[0];
    assert_eq!(app.appid, "a");
    assert_eq!(
        app.updatecheck
            .as_ref()
            .unwrap()
            .targetversionprefix
            .as_deref(),
        Some("3374.")
    );
    assert!(app.events.is_empty(), "CDATA is text, not an event");
}

#[test]
fn entities_and_character_references_in_values() {
    let body = r#"<request protocol="3.0"><app appid="a" track="a&amp;b&#x41;&#66;&lt;&gt;&quot;&apos;" machinealias="two
lines	tab"/></request>"#;
    let r = parse_request(body.as_bytes()).unwrap();
    assert_eq!(r.apps[0].track.as_deref(), Some("a&bAB<>\"'"));
    // Literal newlines and tabs in attribute values are normalised to spaces, as XML requires.
    assert_eq!(r.apps[0].machinealias.as_deref(), Some("two lines tab"));
    let escaped =
        r#"<request protocol="3.0"><app appid="a" machinealias="two&#10;lines&#9;tab"/></request>"#;
    let r = parse_request(escaped.as_bytes()).unwrap();
    assert_eq!(r.apps[0].machinealias.as_deref(), Some("two\nlines\ttab"));
}

#[test]
fn updatecheck_and_event_in_one_app_and_lenient_values() {
    let body = r#"<request protocol="3.0"><app appid="a" delta_okay="False" multi_manifest_ok="TRUE">
        <ping active="1" r="1" status="1"/><updatecheck/>
        <event eventtype="3" eventresult="2" previousversion="3374.2.4"/>
        <event eventtype=" 13 " eventresult="1" errorcode="" />
        <event eventtype="54"/>
        </app></request>"#;
    let app = &parse_request(body.as_bytes()).unwrap().apps[0];
    assert_eq!(app.delta_okay, Some(false));
    assert_eq!(app.multi_manifest_ok, Some(true));
    assert!(app.updatecheck.is_some());
    assert!(app.events[0].is_reboot_completion());
    assert_eq!(app.events[1].event_type, EventType::UpdateDownloadStarted);
    assert_eq!(
        app.events[1].errorcode, None,
        "an empty number reads as absent"
    );
    assert_eq!(app.events[2].event_type, EventType::Other(54));
    assert_eq!(
        app.events[2].result.to_u32(),
        0,
        "a missing eventresult is 0"
    );
}

#[test]
fn response_extensions_and_defaults() {
    let body = r#"<response protocol="3.0"><app appid="a">
        <updatecheck status="ok" PollInterval="3600" _rollback="true" info="x">
          <urls><url codebase="https://a/"/><url codebase="https://b/" codebasediff="https://c/"/></urls>
          <manifest version="1.0.0"><packages><package name="p" size="1" fp="2.1"/></packages>
          <actions><action event="postinstall" sha256="x" MaxFailureCountPerUrl="3" IsDeltaPayload="true" needsadmin="false"/></actions>
          </manifest></updatecheck></app></response>"#;
    let r = parse_response(body.as_bytes()).unwrap();
    let app = &r.apps[0];
    assert_eq!(
        app.status.as_str(),
        "ok",
        "a missing app status reads as ok"
    );
    let check = app.updatecheck.as_ref().unwrap();
    assert_eq!(check.status, UpdateCheckStatus::Ok);
    assert_eq!(check.poll_interval, Some(3600));
    assert!(check.rollback);
    assert_eq!(check.urls, ["https://a/", "https://b/"]);
    let action = check.manifests[0].postinstall().unwrap();
    assert_eq!(action.max_failure_count_per_url, Some(3));
    assert!(action.is_delta_payload);
    assert!(!check.manifests[0].packages[0].required);
}
