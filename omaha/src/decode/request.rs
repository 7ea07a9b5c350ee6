//! Decoding a request element tree into [`Request`].

use crate::codes::error_code::DecodedErrorCode;
use crate::codes::event::{EventResult, EventType};
use crate::decode::{
    boolean, check_protocol, error_code, number, required, required_number, string,
};
use crate::error::ParseError;
use crate::limits::Limits;
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

/// An optional string attribute of at most `limit` bytes (unescaped).
fn bounded(el: &Element, name: &'static str, limit: usize) -> Result<Option<String>, ParseError> {
    match el.attr(name) {
        Some(v) if v.len() > limit => Err(ParseError::AttributeTooLong {
            offset: el.offset,
            element: el.name.to_owned(),
            attribute: name.to_owned(),
            len: v.len(),
            limit,
        }),
        v => Ok(v.map(str::to_owned)),
    }
}

/// Builds a [`Request`] from its `<request>` element; the attributes a server keeps must fit
/// [`Limits::max_id_len`] and [`Limits::max_name_len`].
pub(crate) fn request(root: &Element, limits: &Limits) -> Result<Request, ParseError> {
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
        os: root.child_once("os")?.map(|o| os(o, limits)).transpose()?,
        apps: root
            .children("app")
            .map(|a| app(a, limits))
            .collect::<Result<_, _>>()?,
    })
}

fn os(el: &Element, limits: &Limits) -> Result<Os, ParseError> {
    Ok(Os {
        platform: string(el, "platform"),
        version: string(el, "version"),
        sp: string(el, "sp"),
        arch: bounded(el, "arch", limits.max_name_len)?,
    })
}

fn app(el: &Element, limits: &Limits) -> Result<AppRequest, ParseError> {
    let id = |name| bounded(el, name, limits.max_id_len);
    let name = |name| bounded(el, name, limits.max_name_len);
    let appid = required(el, "appid")?;
    if appid.len() > limits.max_id_len {
        return Err(ParseError::AttributeTooLong {
            offset: el.offset,
            element: el.name.to_owned(),
            attribute: "appid".to_owned(),
            len: appid.len(),
            limit: limits.max_id_len,
        });
    }
    Ok(AppRequest {
        appid: appid.to_owned(),
        version: id("version")?,
        nextversion: id("nextversion")?,
        lang: string(el, "lang"),
        brand: string(el, "brand"),
        client: string(el, "client"),
        ap: string(el, "ap"),
        cohort: string(el, "cohort"),
        cohorthint: string(el, "cohorthint"),
        cohortname: string(el, "cohortname"),
        installage: number(el, "installage", I64)?,
        track: name("track")?,
        from_track: string(el, "from_track"),
        bootid: id("bootid")?,
        machineid: id("machineid")?,
        machinealias: name("machinealias")?,
        oem: name("oem")?,
        oemversion: name("oemversion")?,
        alephversion: id("alephversion")?,
        board: name("board")?,
        hardware_class: string(el, "hardware_class"),
        delta_okay: boolean(el, "delta_okay")?,
        multi_manifest_ok: boolean(el, "multi_manifest_ok")?,
        ping: el.child_once("ping")?.map(ping).transpose()?,
        updatecheck: el.child_once("updatecheck")?.map(updatecheck).transpose()?,
        events: el
            .children("event")
            .map(|e| event(e, limits))
            .collect::<Result<_, _>>()?,
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

fn event(el: &Element, limits: &Limits) -> Result<EventRequest, ParseError> {
    const U32: &str = "an unsigned 32-bit integer";
    Ok(EventRequest {
        event_type: EventType::from_u32(required_number(el, "eventtype", U32)?),
        result: EventResult::from_u32(number(el, "eventresult", U32)?.unwrap_or(0)),
        errorcode: error_code(el, "errorcode")?.map(DecodedErrorCode::from_raw),
        extracode1: number(el, "extracode1", I64)?,
        previousversion: bounded(el, "previousversion", limits.max_id_len)?,
        nextversion: bounded(el, "nextversion", limits.max_id_len)?,
    })
}
