//! Serialising a [`Response`] so update_engine's parser accepts it: children of an app in
//! Nebraska's order (ping, updatecheck, events), `codebase` URLs, packages and the postinstall
//! action with its base64 `sha256`.

use crate::encode::DECLARATION;
use crate::response::{Action, AppResponse, Manifest, Response, UpdateCheckResponse};
use crate::xml::writer::{Tag, close};

/// Writes `response` as an XML document.
pub(crate) fn write(response: &Response) -> String {
    let mut out = String::with_capacity(1024);
    out.push_str(DECLARATION);
    Tag::open(&mut out, 0, "response")
        .attr("protocol", "3.0")
        .attr_opt("server", response.server.as_deref())
        .finish();
    out.push('\n');
    if let Some(day) = &response.daystart {
        Tag::open(&mut out, 2, "daystart")
            .num("elapsed_seconds", day.elapsed_seconds)
            .num_opt("elapsed_days", day.elapsed_days)
            .finish_empty();
        out.push('\n');
    }
    for app in &response.apps {
        write_app(&mut out, app);
    }
    close(&mut out, 0, "response");
    out
}

fn write_app(out: &mut String, app: &AppResponse) {
    let tag = Tag::open(out, 2, "app")
        .attr("appid", &app.appid)
        .attr("status", app.status.as_str());
    if app.ping.is_none() && app.updatecheck.is_none() && app.events.is_empty() {
        tag.finish_empty();
        out.push('\n');
        return;
    }
    tag.finish();
    out.push('\n');
    if let Some(ping) = &app.ping {
        Tag::open(out, 4, "ping")
            .attr("status", &ping.status)
            .finish_empty();
        out.push('\n');
    }
    if let Some(check) = &app.updatecheck {
        write_updatecheck(out, check);
    }
    for event in &app.events {
        Tag::open(out, 4, "event")
            .attr("status", &event.status)
            .finish_empty();
        out.push('\n');
    }
    close(out, 2, "app");
}

fn write_updatecheck(out: &mut String, check: &UpdateCheckResponse) {
    let tag = Tag::open(out, 4, "updatecheck")
        .attr("status", check.status.as_str())
        .num_opt("PollInterval", check.poll_interval)
        .attr_opt("_rollback", check.rollback.then_some("true"));
    if check.urls.is_empty() && check.manifests.is_empty() {
        tag.finish_empty();
        out.push('\n');
        return;
    }
    tag.finish();
    out.push('\n');
    if !check.urls.is_empty() {
        out.push_str("      <urls>\n");
        for url in &check.urls {
            Tag::open(out, 8, "url")
                .attr("codebase", url)
                .finish_empty();
            out.push('\n');
        }
        close(out, 6, "urls");
    }
    for manifest in &check.manifests {
        write_manifest(out, manifest);
    }
    close(out, 4, "updatecheck");
}

fn write_manifest(out: &mut String, manifest: &Manifest) {
    Tag::open(out, 6, "manifest")
        .attr("version", &manifest.version)
        .attr_opt("is_floor", manifest.is_floor.then_some("true"))
        .attr_opt("floor_reason", manifest.floor_reason.as_deref())
        .attr_opt("is_target", manifest.is_target.then_some("true"))
        .finish();
    out.push('\n');
    out.push_str("        <packages>\n");
    for p in &manifest.packages {
        Tag::open(out, 10, "package")
            .attr("name", &p.name)
            .attr_opt("hash", p.hash.as_deref())
            .attr_opt("hash_sha256", p.hash_sha256.as_deref())
            .num("size", p.size)
            .attr("required", crate::xml::writer::bool_str(p.required))
            .finish_empty();
        out.push('\n');
    }
    close(out, 8, "packages");
    out.push_str("        <actions>\n");
    for a in &manifest.actions {
        write_action(out, a);
    }
    close(out, 8, "actions");
    close(out, 6, "manifest");
}

fn write_action(out: &mut String, action: &Action) {
    Tag::open(out, 10, "action")
        .attr("event", action.event.as_str())
        .attr_opt("run", action.run.as_deref())
        .attr_opt("arguments", action.arguments.as_deref())
        .attr_opt("sha256", action.sha256.as_deref())
        .attr_opt(
            "DisablePayloadBackoff",
            action.disable_payload_backoff.then_some("true"),
        )
        .num_opt("MaxFailureCountPerUrl", action.max_failure_count_per_url)
        .attr_opt("IsDeltaPayload", action.is_delta_payload.then_some("true"))
        .attr_opt("ChromeOSVersion", action.chromeos_version.as_deref())
        .num_opt("MetadataSize", action.metadata_size)
        .attr_opt(
            "MetadataSignatureRsa",
            action.metadata_signature_rsa.as_deref(),
        )
        .attr_opt(
            "needsadmin",
            action.needs_admin.map(|n| if n { "true" } else { "false" }),
        )
        .attr_opt("deadline", action.deadline.as_deref())
        .finish_empty();
    out.push('\n');
}
