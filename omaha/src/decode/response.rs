//! Decoding a response element tree into [`Response`].

use crate::decode::{boolean, check_protocol, number, required, required_number, string};
use crate::error::ParseError;
use crate::response::{
    Ack, Action, ActionEvent, AppResponse, AppStatus, DayStart, Manifest, Package, Response,
    UpdateCheckResponse, UpdateCheckStatus,
};
use crate::xml::tree::{Element, Schema};

/// The elements a response model keeps.
pub(crate) const SCHEMA: Schema = Schema {
    root: "response",
    kept: &[
        ("response", "daystart"),
        ("response", "app"),
        ("app", "ping"),
        ("app", "updatecheck"),
        ("app", "event"),
        ("updatecheck", "urls"),
        ("updatecheck", "manifest"),
        ("urls", "url"),
        ("manifest", "packages"),
        ("manifest", "actions"),
        ("packages", "package"),
        ("actions", "action"),
    ],
};

const I64: &str = "a signed integer";
const U32: &str = "an unsigned 32-bit integer";
const U64: &str = "an unsigned 64-bit integer";

/// Builds a [`Response`] from its `<response>` element.
pub(crate) fn response(root: &Element) -> Result<Response, ParseError> {
    check_protocol(root)?;
    Ok(Response {
        server: string(root, "server"),
        daystart: root.child_once("daystart")?.map(daystart).transpose()?,
        apps: root.children("app").map(app).collect::<Result<_, _>>()?,
    })
}

fn daystart(el: &Element) -> Result<DayStart, ParseError> {
    Ok(DayStart {
        elapsed_seconds: required_number(el, "elapsed_seconds", I64)?,
        elapsed_days: number(el, "elapsed_days", I64)?,
    })
}

fn ack(el: &Element) -> Ack {
    Ack {
        status: el.attr("status").unwrap_or_default().to_owned(),
    }
}

fn app(el: &Element) -> Result<AppResponse, ParseError> {
    Ok(AppResponse {
        appid: required(el, "appid")?.to_owned(),
        status: el
            .attr("status")
            .map_or(AppStatus::Ok, AppStatus::from_wire),
        ping: el.child_once("ping")?.map(ack),
        updatecheck: el.child_once("updatecheck")?.map(updatecheck).transpose()?,
        events: el.children("event").map(ack).collect(),
    })
}

fn updatecheck(el: &Element) -> Result<UpdateCheckResponse, ParseError> {
    let urls = match el.child_once("urls")? {
        Some(urls) => urls
            .children("url")
            .map(|u| required(u, "codebase").map(str::to_owned))
            .collect::<Result<_, _>>()?,
        None => Vec::new(),
    };
    Ok(UpdateCheckResponse {
        status: UpdateCheckStatus::from_wire(required(el, "status")?),
        poll_interval: number(el, "PollInterval", U32)?,
        rollback: boolean(el, "_rollback")?.unwrap_or(false),
        urls,
        manifests: el
            .children("manifest")
            .map(manifest)
            .collect::<Result<_, _>>()?,
    })
}

fn manifest(el: &Element) -> Result<Manifest, ParseError> {
    let packages = match el.child_once("packages")? {
        Some(p) => p
            .children("package")
            .map(package)
            .collect::<Result<_, _>>()?,
        None => Vec::new(),
    };
    let actions = match el.child_once("actions")? {
        Some(a) => a.children("action").map(action).collect::<Result<_, _>>()?,
        None => Vec::new(),
    };
    Ok(Manifest {
        version: required(el, "version")?.to_owned(),
        is_floor: boolean(el, "is_floor")?.unwrap_or(false),
        floor_reason: string(el, "floor_reason"),
        is_target: boolean(el, "is_target")?.unwrap_or(false),
        packages,
        actions,
    })
}

fn package(el: &Element) -> Result<Package, ParseError> {
    Ok(Package {
        name: required(el, "name")?.to_owned(),
        size: required_number(el, "size", "an unsigned 64-bit integer")?,
        hash: string(el, "hash"),
        hash_sha256: string(el, "hash_sha256"),
        required: boolean(el, "required")?.unwrap_or(false),
    })
}

fn action(el: &Element) -> Result<Action, ParseError> {
    Ok(Action {
        event: ActionEvent::from_wire(required(el, "event")?),
        run: string(el, "run"),
        arguments: string(el, "arguments"),
        sha256: string(el, "sha256"),
        disable_payload_backoff: boolean(el, "DisablePayloadBackoff")?.unwrap_or(false),
        max_failure_count_per_url: number(el, "MaxFailureCountPerUrl", U32)?,
        is_delta_payload: boolean(el, "IsDeltaPayload")?.unwrap_or(false),
        chromeos_version: string(el, "ChromeOSVersion"),
        metadata_size: number(el, "MetadataSize", U64)?,
        metadata_signature_rsa: string(el, "MetadataSignatureRsa"),
        needs_admin: boolean(el, "needsadmin")?,
        deadline: string(el, "deadline"),
    })
}
