//! Serialising a [`Request`] the way update_engine writes it: attribute order, explicit end tags
//! (`<ping active="1"></ping>`), children ping, updatecheck, events.

use crate::encode::DECLARATION;
use crate::request::{AppRequest, EventRequest, Request};
use crate::xml::writer::{Tag, close};

/// Writes `request` as an XML document.
pub(crate) fn write(request: &Request) -> String {
    let mut out = String::with_capacity(1024);
    out.push_str(DECLARATION);
    Tag::open(&mut out, 0, "request")
        .attr("protocol", "3.0")
        .attr_opt("version", request.version.as_deref())
        .attr_opt("updaterversion", request.updaterversion.as_deref())
        .attr_opt("updater", request.updater.as_deref())
        .attr_opt("installsource", request.installsource.as_deref())
        .bit_opt("ismachine", request.ismachine)
        .attr_opt("sessionid", request.sessionid.as_deref())
        .attr_opt("requestid", request.requestid.as_deref())
        .attr_opt("userid", request.userid.as_deref())
        .attr_opt("testsource", request.testsource.as_deref())
        .finish();
    out.push('\n');
    if let Some(os) = &request.os {
        Tag::open(&mut out, 4, "os")
            .attr_opt("version", os.version.as_deref())
            .attr_opt("platform", os.platform.as_deref())
            .attr_opt("sp", os.sp.as_deref())
            .attr_opt("arch", os.arch.as_deref())
            .finish();
        out.push_str("</os>\n");
    }
    for app in &request.apps {
        write_app(&mut out, app);
    }
    close(&mut out, 0, "request");
    out
}

fn write_app(out: &mut String, app: &AppRequest) {
    Tag::open(out, 4, "app")
        .attr("appid", &app.appid)
        .attr_opt("version", app.version.as_deref())
        .attr_opt("track", app.track.as_deref())
        .attr_opt("from_track", app.from_track.as_deref())
        .attr_opt("bootid", app.bootid.as_deref())
        .attr_opt("oem", app.oem.as_deref())
        .attr_opt("oemversion", app.oemversion.as_deref())
        .attr_opt("alephversion", app.alephversion.as_deref())
        .attr_opt("machineid", app.machineid.as_deref())
        .attr_opt("machinealias", app.machinealias.as_deref())
        .attr_opt("lang", app.lang.as_deref())
        .attr_opt("board", app.board.as_deref())
        .attr_opt("hardware_class", app.hardware_class.as_deref())
        .bool_opt("delta_okay", app.delta_okay)
        .bool_opt("multi_manifest_ok", app.multi_manifest_ok)
        .attr_opt("nextversion", app.nextversion.as_deref())
        .attr_opt("brand", app.brand.as_deref())
        .attr_opt("client", app.client.as_deref())
        .attr_opt("ap", app.ap.as_deref())
        .attr_opt("cohort", app.cohort.as_deref())
        .attr_opt("cohorthint", app.cohorthint.as_deref())
        .attr_opt("cohortname", app.cohortname.as_deref())
        .num_opt("installage", app.installage)
        .finish();
    out.push('\n');
    if let Some(ping) = &app.ping {
        Tag::open(out, 8, "ping")
            .bit_opt("active", ping.active)
            .num_opt("a", ping.a)
            .num_opt("r", ping.r)
            .num_opt("ad", ping.ad)
            .num_opt("rd", ping.rd)
            .attr_opt("ping_freshness", ping.ping_freshness.as_deref())
            .finish();
        out.push_str("</ping>\n");
    }
    if let Some(check) = &app.updatecheck {
        Tag::open(out, 8, "updatecheck")
            .attr_opt("targetversionprefix", check.targetversionprefix.as_deref())
            .bool_opt("rollback_allowed", check.rollback_allowed)
            .bool_opt("updatedisabled", check.updatedisabled)
            .finish();
        out.push_str("</updatecheck>\n");
    }
    for event in &app.events {
        write_event(out, event);
    }
    close(out, 4, "app");
}

fn write_event(out: &mut String, event: &EventRequest) {
    Tag::open(out, 8, "event")
        .num("eventtype", event.event_type.to_u32())
        .num("eventresult", event.result.to_u32())
        .attr_opt("previousversion", event.previousversion.as_deref())
        .attr_opt("nextversion", event.nextversion.as_deref())
        .num_opt("errorcode", event.errorcode.map(|c| c.to_raw()))
        .num_opt("extracode1", event.extracode1)
        .finish();
    out.push_str("</event>\n");
}
