//! Hostile and broken input: each gives its specific error variant, never a panic.
#![allow(clippy::unwrap_used)]

use omaha::{Limits, ParseError, parse_request, parse_request_with_limits, parse_response};

const SAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/testdata/omaha/update_engine-request-updatecheck.xml"
);

fn app_with(body: &str) -> String {
    format!(r#"<request protocol="3.0"><app appid="x">{body}</app></request>"#)
}

#[test]
fn oversized_body_is_rejected_before_parsing() {
    let mut body = String::from(r#"<request protocol="3.0">"#);
    body.push_str(&" ".repeat(64 * 1024));
    body.push_str("</request>");
    let err = parse_request(body.as_bytes()).unwrap_err();
    assert_eq!(
        err,
        ParseError::BodyTooLarge {
            size: body.len(),
            limit: 64 * 1024
        }
    );
    // The response limit is larger: the same padding is fine there.
    let resp = body.replace("request", "response");
    assert!(parse_response(resp.as_bytes()).is_ok());
    let limits = Limits {
        max_body: 100,
        ..Limits::RESPONSE
    };
    let small = omaha::parse_response_with_limits(resp.as_bytes(), &limits).unwrap_err();
    assert!(matches!(small, ParseError::BodyTooLarge { limit: 100, .. }));
}

#[test]
fn deep_nesting_stops_at_the_limit() {
    let depth = 5_000;
    let body = app_with(&format!("{}{}", "<x>".repeat(depth), "</x>".repeat(depth)));
    let err = parse_request(body.as_bytes()).unwrap_err();
    // request (1) + app (2) + 14 <x> fit in 16; the 15th <x> starts after 14 * 3 bytes.
    let first_x = body.find("<x>").unwrap();
    assert_eq!(
        err,
        ParseError::TooDeep {
            offset: first_x + 14 * 3,
            limit: 16
        }
    );
    // Exactly at the limit is accepted.
    let ok = app_with(&format!("{}{}", "<x>".repeat(14), "</x>".repeat(14)));
    assert!(parse_request(ok.as_bytes()).is_ok());
}

#[test]
fn doctype_is_rejected() {
    let body = r#"<?xml version="1.0"?><!DOCTYPE request SYSTEM "file:///etc/passwd"><request protocol="3.0"/>"#;
    assert_eq!(
        parse_request(body.as_bytes()).unwrap_err(),
        ParseError::Doctype { offset: 21 }
    );
}

#[test]
fn billion_laughs_is_rejected_at_the_doctype() {
    let mut dtd = String::from(r#"<!DOCTYPE lolz [<!ENTITY lol0 "lol">"#);
    for i in 1..10 {
        let prev = format!("&lol{};", i - 1);
        dtd.push_str(&format!(r#"<!ENTITY lol{i} "{}">"#, prev.repeat(10)));
    }
    dtd.push(']');
    dtd.push('>');
    let body = format!(r#"{dtd}<request protocol="3.0"><app appid="&lol9;"/></request>"#);
    assert_eq!(
        parse_request(body.as_bytes()).unwrap_err(),
        ParseError::Doctype { offset: 0 }
    );
}

#[test]
fn undeclared_entities_are_rejected_without_a_doctype() {
    let in_attr = r#"<request protocol="3.0"><app appid="&lol9;"/></request>"#;
    assert!(matches!(
        parse_request(in_attr.as_bytes()).unwrap_err(),
        ParseError::Entity { offset: 24, .. }
    ));
    let in_text = r#"<request protocol="3.0"><app appid="x">&lol9;</app></request>"#;
    assert!(matches!(
        parse_request(in_text.as_bytes()).unwrap_err(),
        ParseError::Entity { offset: 39, .. }
    ));
}

/// Skipped (unknown) elements are still well-formedness checked, attributes included: an
/// undeclared entity, a malformed or duplicate attribute, or one beyond the limits is refused
/// there too, as libxml2 (update_engine) would refuse it.
#[test]
fn attributes_of_skipped_elements_are_checked() {
    let entity = app_with(r#"<unknown a="&lol9;"/>"#);
    assert!(matches!(
        parse_request(entity.as_bytes()).unwrap_err(),
        ParseError::Entity { offset: 39, .. }
    ));
    let malformed = app_with(r#"<unknown a></unknown>"#);
    assert!(matches!(
        parse_request(malformed.as_bytes()).unwrap_err(),
        ParseError::Syntax { offset: 39, .. }
    ));
    let duplicate = app_with(r#"<unknown a="1" a="2"/>"#);
    assert_eq!(
        parse_request(duplicate.as_bytes()).unwrap_err(),
        ParseError::DuplicateAttribute {
            offset: 39,
            element: "unknown".into(),
            attribute: "a".into()
        }
    );
    let long = app_with(&format!(r#"<unknown a="{}"/>"#, "a".repeat(4097)));
    assert!(matches!(
        parse_request(long.as_bytes()).unwrap_err(),
        ParseError::AttributeTooLong { offset: 39, .. }
    ));
    let fine = app_with(r#"<unknown a="&amp;&#65;" b='x'/>"#);
    assert!(parse_request(fine.as_bytes()).is_ok());
}

#[test]
fn invalid_utf8_is_reported_at_its_offset() {
    let mut body = br#"<request protocol="3.0"><app appid="ab"#.to_vec();
    let at = body.len();
    body.extend_from_slice(b"\xff\xfe\"/></request>");
    assert_eq!(
        parse_request(&body).unwrap_err(),
        ParseError::InvalidUtf8 { offset: at }
    );
    // A truncated multi-byte sequence at the end is invalid too.
    let cut = "<request protocol=\"3.0\">é".as_bytes();
    let err = parse_request(&cut[..cut.len() - 1]).unwrap_err();
    assert_eq!(
        err,
        ParseError::InvalidUtf8 {
            offset: cut.len() - 2
        }
    );
}

#[test]
fn every_truncation_of_a_real_request_is_an_error() {
    let full = std::fs::read(SAMPLE).unwrap();
    let end = full.windows(10).position(|w| w == b"</request>").unwrap() + 10;
    assert!(parse_request(&full[..end]).is_ok());
    for cut in 0..end {
        match parse_request(&full[..cut]) {
            Err(ParseError::Truncated { .. }) => {}
            Err(ParseError::Empty) => assert_eq!(cut, 0),
            other => panic!("prefix of {cut} bytes gave {other:?}"),
        }
    }
}

#[test]
fn too_many_apps() {
    let apps: String = (0..33).map(|i| format!(r#"<app appid="a{i}"/>"#)).collect();
    let body = format!(r#"<request protocol="3.0">{apps}</request>"#);
    let offset = body.find(r#"<app appid="a32""#).unwrap();
    assert_eq!(
        parse_request(body.as_bytes()).unwrap_err(),
        ParseError::TooManyApps { offset, limit: 32 }
    );
    // <app> elements inside an unknown element are not apps and are not counted.
    let hidden = format!(r#"<request protocol="3.0"><x>{apps}</x></request>"#);
    assert!(parse_request(hidden.as_bytes()).unwrap().apps.is_empty());
}

#[test]
fn too_many_events_per_app() {
    let events = r#"<event eventtype="3" eventresult="1"/>"#.repeat(65);
    let body = app_with(&events);
    let offset =
        body.find("<event").unwrap() + 64 * r#"<event eventtype="3" eventresult="1"/>"#.len();
    assert_eq!(
        parse_request(body.as_bytes()).unwrap_err(),
        ParseError::TooManyEvents { offset, limit: 64 }
    );
    // The count is per app: 64 in each of two apps is fine.
    let ok_events = r#"<event eventtype="3"/>"#.repeat(64);
    let two = format!(
        r#"<request protocol="3.0"><app appid="a">{ok_events}</app><app appid="b">{ok_events}</app></request>"#
    );
    let r = parse_request(two.as_bytes()).unwrap();
    assert_eq!(r.apps[1].events.len(), 64);
}

#[test]
fn overlong_attribute_value() {
    let body = format!(
        r#"<request protocol="3.0"><app appid="{}"/></request>"#,
        "a".repeat(4097)
    );
    assert_eq!(
        parse_request(body.as_bytes()).unwrap_err(),
        ParseError::AttributeTooLong {
            offset: 24,
            element: "app".into(),
            attribute: "appid".into(),
            len: 4097,
            limit: 4096
        }
    );
    // An attribute the server does not keep may use the whole general limit.
    let fits = format!(
        r#"<request protocol="3.0"><app appid="a" lang="{}"/></request>"#,
        "a".repeat(4096)
    );
    assert!(parse_request(fits.as_bytes()).is_ok());
}

#[test]
fn kept_attributes_have_their_own_bounds() {
    let at = |attrs: &str, body: &str| {
        format!(r#"<request protocol="3.0"><app appid="a" {attrs}>{body}</app></request>"#)
    };
    let too_long = |body: String, attribute: &str, len: usize, limit: usize| match parse_request(
        body.as_bytes(),
    )
    .unwrap_err()
    {
        ParseError::AttributeTooLong {
            attribute: a,
            len: l,
            limit: m,
            ..
        } => assert_eq!((a.as_str(), l, m), (attribute, len, limit), "{body:.80}"),
        other => panic!("{attribute}: {other:?}"),
    };
    let id = omaha::MAX_ID_LEN;
    let name = omaha::MAX_NAME_LEN;
    for attr in [
        "machineid",
        "bootid",
        "version",
        "nextversion",
        "alephversion",
    ] {
        let fits = at(&format!(r#"{attr}="{}""#, "f".repeat(id)), "");
        assert!(parse_request(fits.as_bytes()).is_ok(), "{attr}");
        too_long(
            at(&format!(r#"{attr}="{}""#, "f".repeat(4096)), ""),
            attr,
            4096,
            id,
        );
    }
    for attr in ["machinealias", "track", "oem", "oemversion", "board"] {
        let fits = at(&format!(r#"{attr}="{}""#, "n".repeat(name)), "");
        assert!(parse_request(fits.as_bytes()).is_ok(), "{attr}");
        too_long(
            at(&format!(r#"{attr}="{}""#, "n".repeat(name + 1)), ""),
            attr,
            name + 1,
            name,
        );
    }
    // The bound applies to the unescaped value: 43 `&amp;` are 43 bytes, not 215.
    let escaped = at(&format!(r#"machinealias="{}""#, "&amp;".repeat(43)), "");
    assert!(parse_request(escaped.as_bytes()).is_ok());
    too_long(
        format!(
            r#"<request protocol="3.0"><app appid="{}"/></request>"#,
            "a".repeat(id + 1)
        ),
        "appid",
        id + 1,
        id,
    );
    too_long(
        at(
            "",
            &format!(
                r#"<event eventtype="3" eventresult="2" previousversion="{}"/>"#,
                "1".repeat(id + 1)
            ),
        ),
        "previousversion",
        id + 1,
        id,
    );
    too_long(
        format!(
            r#"<request protocol="3.0"><os arch="{}"/><app appid="a"/></request>"#,
            "x".repeat(name + 1)
        ),
        "arch",
        name + 1,
        name,
    );
    // Custom limits relax them.
    let relaxed = Limits {
        max_id_len: 4096,
        ..Limits::REQUEST
    };
    let long = at(&format!(r#"machineid="{}""#, "f".repeat(4096)), "");
    assert!(omaha::parse_request_with_limits(long.as_bytes(), &relaxed).is_ok());
}

#[test]
fn too_many_attributes() {
    let attrs: String = (0..65).map(|i| format!(r#" x{i}="1""#)).collect();
    let body = format!(r#"<request protocol="3.0"><app appid="a"{attrs}/></request>"#);
    assert!(matches!(
        parse_request(body.as_bytes()).unwrap_err(),
        ParseError::TooManyAttributes {
            offset: 24,
            limit: 64,
            ..
        }
    ));
}

#[test]
fn too_many_elements_counts_skipped_ones() {
    let limits = Limits {
        max_elements: 10,
        ..Limits::REQUEST
    };
    let body = app_with(&"<unknown/>".repeat(9));
    assert!(matches!(
        parse_request_with_limits(body.as_bytes(), &limits).unwrap_err(),
        ParseError::TooManyElements { limit: 10, .. }
    ));
    let body = app_with(&"<unknown/>".repeat(8));
    assert!(parse_request_with_limits(body.as_bytes(), &limits).is_ok());
}

#[test]
fn duplicate_attribute_and_element() {
    let body = r#"<request protocol="3.0"><app appid="a" appid="b"/></request>"#;
    assert_eq!(
        parse_request(body.as_bytes()).unwrap_err(),
        ParseError::DuplicateAttribute {
            offset: 24,
            element: "app".into(),
            attribute: "appid".into()
        }
    );
    let body = app_with("<updatecheck/><updatecheck/>");
    assert_eq!(
        parse_request(body.as_bytes()).unwrap_err(),
        ParseError::DuplicateElement {
            offset: 53,
            element: "updatecheck".into()
        }
    );
}

#[test]
fn protocol_root_and_attribute_errors() {
    assert_eq!(
        parse_request(br#"<request protocol="2.0"/>"#).unwrap_err(),
        ParseError::UnsupportedProtocol {
            offset: 0,
            found: "2.0".into()
        }
    );
    assert_eq!(
        parse_request(b"<request/>").unwrap_err(),
        ParseError::UnsupportedProtocol {
            offset: 0,
            found: String::new()
        }
    );
    assert_eq!(
        parse_request(br#"<response protocol="3.0"/>"#).unwrap_err(),
        ParseError::UnexpectedRoot {
            offset: 0,
            expected: "request",
            found: "response".into()
        }
    );
    assert_eq!(
        parse_request(br#"<request protocol="3.0"><app version="1"/></request>"#).unwrap_err(),
        ParseError::MissingAttribute {
            offset: 24,
            element: "app",
            attribute: "appid"
        }
    );
    let err = parse_request(app_with(r#"<event eventtype="three"/>"#).as_bytes()).unwrap_err();
    assert!(matches!(
        err,
        ParseError::InvalidAttribute {
            element: "event",
            attribute: "eventtype",
            ..
        }
    ));
    assert_eq!(
        err.to_string(),
        "attribute eventtype=\"three\" of <event> at byte 39 is not an unsigned 32-bit integer"
    );
    let err =
        parse_request(app_with(r#"<event eventtype="3" errorcode="99999999999"/>"#).as_bytes())
            .unwrap_err();
    assert!(matches!(
        err,
        ParseError::InvalidAttribute {
            attribute: "errorcode",
            ..
        }
    ));
    let err = parse_request(br#"<request protocol="3.0" ismachine="maybe"/>"#).unwrap_err();
    assert!(matches!(
        err,
        ParseError::InvalidAttribute {
            attribute: "ismachine",
            ..
        }
    ));
}

#[test]
fn malformed_structure() {
    assert_eq!(parse_request(b"").unwrap_err(), ParseError::Empty);
    assert_eq!(parse_request(b" \n ").unwrap_err(), ParseError::Empty);
    assert!(matches!(
        parse_request(b"<?xml version=\"1.0\"?><!-- nothing -->").unwrap_err(),
        ParseError::Truncated { offset: 37, .. }
    ));
    assert_eq!(
        parse_request(br#"<request protocol="3.0"/><request protocol="3.0"/>"#).unwrap_err(),
        ParseError::TrailingContent { offset: 25 }
    );
    assert_eq!(
        parse_request(br#"<request protocol="3.0"/>junk"#).unwrap_err(),
        ParseError::TrailingContent { offset: 25 }
    );
    assert!(matches!(
        parse_request(br#"<request protocol="3.0"><app appid="x"></request>"#).unwrap_err(),
        ParseError::Syntax { offset: 39, .. }
    ));
    assert!(matches!(
        parse_request(br#"<?xml version="1.0" encoding="UTF-16"?><request protocol="3.0"/>"#)
            .unwrap_err(),
        ParseError::UnsupportedEncoding { .. }
    ));
}

#[test]
fn characters_xml_forbids() {
    assert_eq!(
        parse_request(b"<request protocol=\"3.0\"><app appid=\"a\x0eb\"/></request>").unwrap_err(),
        ParseError::InvalidChar {
            offset: 37,
            code: 0x0e
        }
    );
    assert_eq!(
        parse_request(br#"<request protocol="3.0"><app appid="a&#1;b"/></request>"#).unwrap_err(),
        ParseError::InvalidChar {
            offset: 24,
            code: 1
        }
    );
    assert_eq!(
        parse_request(br#"<request protocol="3.0"><app appid="a">&#xFFFF;</app></request>"#)
            .unwrap_err(),
        ParseError::InvalidChar {
            offset: 39,
            code: 0xffff
        }
    );
    assert!(matches!(
        parse_request(br#"<request protocol="3.0"><app appid="a&#0;"/></request>"#).unwrap_err(),
        ParseError::Entity { offset: 24, .. }
    ));
}
