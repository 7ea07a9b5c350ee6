//! Decoding a request element tree into [`Request`].

use crate::codes::error_code::DecodedErrorCode;
use crate::codes::event::{EventResult, EventType};
use crate::decode::{
    boolean, check_protocol, error_code, number, required, required_number, string,
};
use crate::error::ParseError;
use crate::request::{AppRequest, EventRequest, Os, PingRequest, Request, UpdateCheckRequest};
use crate::xml::tree::{Element, Schema};

/// The elements a request model keeps.
pub(crate) const SCHEMA: Schema = Schema {
    root: "request",
    kept: &[
        ("request", "os"),
        ("request", "app"),
        ("app", "ping"),
        ("app", "updatecheck"),
        ("app", "event"),
    ],
};

const I64: &str = "a signed integer";

/// Builds a [`Request`] from its `<request>` element.
pub(crate) fn request(root: &Element) -> Result<Request, ParseError> {
    check_protocol(root)?;
    Ok(Request {
        version: string(root, "version"),
        updater: string(root, "updater"),
        updaterversion: string(root, "updaterversion"),
        installsource: string(root, "installsource"),
        ismachine: boolean(root, "ismachine")?,
        sessionid: string(root, "sessionid"),
        requestid: string(root, "requestid"),
        userid: string(root, "userid"),
        testsource: string(root, "testsource"),
        os: root.child_once("os")?.map(os),
        apps: root.children("app").map(app).collect::<Result<_, _>>()?,
    })
}

fn os(el: &Element) -> Os {
    Os {
        platform: string(el, "platform"),
        version: string(el, "version"),
        sp: string(el, "sp"),
        arch: string(el, "arch"),
    }
}

fn app(el: &Element) -> Result<AppRequest, ParseError> {
    Ok(AppRequest {
        appid: required(el, "appid")?.to_owned(),
        version: string(el, "version"),
        nextversion: string(el, "nextversion"),
        lang: string(el, "lang"),
        brand: string(el, "brand"),
        client: string(el, "client"),
        ap: string(el, "ap"),
        cohort: string(el, "cohort"),
        cohorthint: string(el, "cohorthint"),
        cohortname: string(el, "cohortname"),
        installage: number(el, "installage", I64)?,
        track: string(el, "track"),
        from_track: string(el, "from_track"),
        bootid: string(el, "bootid"),
        machineid: string(el, "machineid"),
        machinealias: string(el, "machinealias"),
        oem: string(el, "oem"),
        oemversion: string(el, "oemversion"),
        alephversion: string(el, "alephversion"),
        board: string(el, "board"),
        hardware_class: string(el, "hardware_class"),
        delta_okay: boolean(el, "delta_okay")?,
        multi_manifest_ok: boolean(el, "multi_manifest_ok")?,
        ping: el.child_once("ping")?.map(ping).transpose()?,
        updatecheck: el.child_once("updatecheck")?.map(updatecheck).transpose()?,
        events: el.children("event").map(event).collect::<Result<_, _>>()?,
    })
}

fn ping(el: &Element) -> Result<PingRequest, ParseError> {
    Ok(PingRequest {
        active: boolean(el, "active")?,
        a: number(el, "a", I64)?,
        r: number(el, "r", I64)?,
        ad: number(el, "ad", I64)?,
        rd: number(el, "rd", I64)?,
        ping_freshness: string(el, "ping_freshness"),
    })
}

fn updatecheck(el: &Element) -> Result<UpdateCheckRequest, ParseError> {
    Ok(UpdateCheckRequest {
        targetversionprefix: string(el, "targetversionprefix"),
        rollback_allowed: boolean(el, "rollback_allowed")?,
        updatedisabled: boolean(el, "updatedisabled")?,
    })
}

fn event(el: &Element) -> Result<EventRequest, ParseError> {
    const U32: &str = "an unsigned 32-bit integer";
    Ok(EventRequest {
        event_type: EventType::from_u32(required_number(el, "eventtype", U32)?),
        result: EventResult::from_u32(number(el, "eventresult", U32)?.unwrap_or(0)),
        errorcode: error_code(el, "errorcode")?.map(DecodedErrorCode::from_raw),
        extracode1: number(el, "extracode1", I64)?,
        previousversion: string(el, "previousversion"),
        nextversion: string(el, "nextversion"),
    })
}
