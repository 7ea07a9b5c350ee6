//! What an agent put on the wire in an Omaha request (as [`testkit::tcp_proxy::Proxy`] recorded it):
//! its `<app>` elements with their attributes, update checks and events. A small scanner of its
//! own, independent of the `omaha` crate, so a scenario checks the agent's XML against the
//! protocol as documented rather than against the code that wrote it.

use std::collections::BTreeMap;

/// One `<app>` of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireApp {
    /// `appid`, normalised with [`normalize_appid`].
    pub app_id: String,
    /// Every attribute of the `<app>` tag (`version`, `track`, `ap`…), unescaped.
    pub attrs: BTreeMap<String, String>,
    /// Whether it asks for an update (`<updatecheck>`).
    pub update_check: bool,
    /// The attributes of each `<event>` in it, in order.
    pub events: Vec<BTreeMap<String, String>>,
}

impl WireApp {
    /// An attribute of the `<app>` tag (`""` when absent).
    pub fn attr(&self, name: &str) -> &str {
        self.attrs.get(name).map_or("", String::as_str)
    }
}

/// An app id without braces, in lower case (`{7B3F…}` → `7b3f…`), as the server stores it.
pub fn normalize_appid(id: &str) -> String {
    id.trim()
        .trim_start_matches('{')
        .trim_end_matches('}')
        .to_ascii_lowercase()
}

/// The `<app>` elements of a request body, in document order (none when it is not one).
pub fn request_apps(xml: &str) -> Vec<WireApp> {
    let mut apps = Vec::new();
    let mut rest = xml;
    while let Some((tag, after)) = next_tag(rest, "app") {
        let (inner, next) = if tag.ends_with('/') {
            ("", after)
        } else {
            match after.find("</app>") {
                Some(end) => (&after[..end], &after[end + "</app>".len()..]),
                None => (after, ""),
            }
        };
        let attrs = attributes(tag);
        let mut events = Vec::new();
        let mut children = inner;
        while let Some((ev, after_ev)) = next_tag(children, "event") {
            events.push(attributes(ev));
            children = after_ev;
        }
        apps.push(WireApp {
            app_id: normalize_appid(attrs.get("appid").map_or("", String::as_str)),
            update_check: next_tag(inner, "updatecheck").is_some(),
            attrs,
            events,
        });
        rest = next;
    }
    apps
}

/// The next `<NAME …>` tag in `text`: its inside (after the name, before `>`, a closing `/`
/// kept) and the text after it.
fn next_tag<'a>(text: &'a str, name: &str) -> Option<(&'a str, &'a str)> {
    let open = format!("<{name}");
    let mut from = 0;
    while let Some(i) = text.get(from..)?.find(&open) {
        let start = from + i + open.len();
        let rest = text.get(start..)?;
        // `<app` must not match `<apple`: the name ends at a space, `/` or `>`.
        if rest.starts_with(|c: char| c.is_ascii_whitespace() || c == '/' || c == '>') {
            let end = rest.find('>')?;
            return Some((rest[..end].trim(), &rest[end + 1..]));
        }
        from = start;
    }
    None
}

/// `name="value"` (or single-quoted) pairs of a tag's inside, values unescaped.
fn attributes(tag: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = tag;
    while let Some(eq) = rest.find('=') {
        let name = rest[..eq].trim().rsplit(char::is_whitespace).next();
        let value = rest[eq + 1..].trim_start();
        let Some(quote) = value.chars().next().filter(|c| *c == '"' || *c == '\'') else {
            break;
        };
        let Some(close) = value[1..].find(quote) else {
            break;
        };
        if let Some(name) = name.filter(|n| !n.is_empty()) {
            out.insert(name.to_owned(), unescape(&value[1..1 + close]));
        }
        rest = &value[close + 2..];
    }
    out
}

fn unescape(v: &str) -> String {
    v.replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apps_attributes_checks_and_events() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<request protocol="3.0" version="platte-agent-0.1.0">
  <os platform="CoreOS" version="Chateau" sp="1.0.0_x86_64"/>
  <app appid="{7B3F6A2E-5c1d-4e8a-9f40-2d6b8c1e9a53}" version="1.0.0" track="stable">
    <ping active="1"/><updatecheck/><event eventtype="3" eventresult="2" previousversion=""/>
  </app>
  <app appid='5e8a1c7d-2f4b-4c6e-9a1d-3b7c9e2f4a60' version="0.0.0" ap="os=1.0.0" alias="a &amp; b">
    <ping active="1"/><updatecheck></updatecheck>
  </app>
  <apple appid="x"/>
  <app appid="abc" version="9"/>
</request>"#;
        let apps = request_apps(xml);
        assert_eq!(apps.len(), 3, "{apps:?}");
        assert_eq!(apps[0].app_id, "7b3f6a2e-5c1d-4e8a-9f40-2d6b8c1e9a53");
        assert_eq!(apps[0].attr("track"), "stable");
        assert!(apps[0].update_check);
        assert_eq!(apps[0].events.len(), 1);
        assert_eq!(apps[0].events[0]["eventresult"], "2");
        assert_eq!(apps[0].events[0]["previousversion"], "");
        assert_eq!(apps[1].app_id, "5e8a1c7d-2f4b-4c6e-9a1d-3b7c9e2f4a60");
        assert_eq!(apps[1].attr("ap"), "os=1.0.0");
        assert_eq!(apps[1].attr("alias"), "a & b");
        assert!(apps[1].update_check && apps[1].events.is_empty());
        assert_eq!(
            (apps[2].app_id.as_str(), apps[2].attr("version")),
            ("abc", "9")
        );
        assert!(!apps[2].update_check);
        assert!(request_apps("<response/>").is_empty());
    }
}
