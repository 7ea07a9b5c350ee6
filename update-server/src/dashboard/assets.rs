//! The dashboard's stylesheet and script, embedded in the binary and served under
//! `/ui/static/` with names that carry a digest of their content, so browsers may cache them
//! for a year and a new build is fetched at once.

use std::sync::LazyLock;

use sha2::{Digest, Sha256};

/// The stylesheet.
pub const CSS: &str = include_str!("static/dashboard.css");
/// The script (progressive enhancement only: every page works without it).
pub const JS: &str = include_str!("static/dashboard.js");

/// An embedded file: its served name (with a content digest), media type and content.
#[derive(Debug)]
pub struct Asset {
    /// File name under `/ui/static/`.
    pub name: String,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// The bytes.
    pub body: &'static str,
}

fn asset(stem: &str, ext: &str, content_type: &'static str, body: &'static str) -> Asset {
    let digest = hex::encode(Sha256::digest(body.as_bytes()));
    Asset {
        name: format!("{stem}-{}.{ext}", &digest[..12]),
        content_type,
        body,
    }
}

/// The stylesheet as served.
pub static STYLESHEET: LazyLock<Asset> =
    LazyLock::new(|| asset("dashboard", "css", "text/css; charset=utf-8", CSS));
/// The script as served.
pub static SCRIPT: LazyLock<Asset> =
    LazyLock::new(|| asset("dashboard", "js", "text/javascript; charset=utf-8", JS));

/// The embedded file served under `name`, if any.
pub fn find(name: &str) -> Option<&'static Asset> {
    [&*STYLESHEET, &*SCRIPT]
        .into_iter()
        .find(|a| a.name == name)
}

/// The URL path of an asset.
pub fn path(a: &Asset) -> String {
    format!("/ui/static/{}", a.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_are_found_by_their_digest_name_only() {
        assert!(STYLESHEET.name.starts_with("dashboard-") && STYLESHEET.name.ends_with(".css"));
        assert_eq!(find(&STYLESHEET.name).map(|a| a.body), Some(CSS));
        assert_eq!(find(&SCRIPT.name).map(|a| a.body), Some(JS));
        assert!(find("dashboard.css").is_none());
        assert!(find("../Cargo.toml").is_none());
    }
}
