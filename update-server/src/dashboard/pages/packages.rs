//! The package list: packages by application, then architecture and version (newest first),
//! with format, size, hashes, signer and the channels pointing at each; for the admin role a
//! publish form (a file upload), and per package a form pointing a channel at it and a delete
//! button, each behind a confirmation box.

use std::collections::BTreeMap;

use maud::{Markup, html};

use super::{PageOptions, Section, csrf_field, layout};
use crate::dashboard::Viewer;
use crate::dashboard::format::{path_segment, time};
use crate::fleet::packages::PackageSignature;
use crate::model::{App, Channel, Package, PackageFormat};

/// Hex digits of a SHA-256 shown in the list (the full value is the element's title).
const SHORT_HASH: usize = 12;

/// The list's URL.
pub const HREF: &str = "/ui/packages";

/// The filters of the list, as the query gave them (empty: not filtered).
#[derive(Debug, Clone, Default)]
pub struct Filters {
    /// Only this application's packages (its id).
    pub app: String,
    /// Only packages built for this architecture.
    pub arch: String,
}

/// What was just done, shown once after a redirect. Only what the catalogue holds is named:
/// nothing from the request is echoed.
#[derive(Debug, Clone)]
pub enum PackagesNotice {
    /// This package was published.
    Published(Package),
    /// A package was deleted.
    Deleted,
    /// The channel now points at the package (for the package's architecture).
    Pointed {
        /// The channel's name.
        channel: String,
        /// The package.
        package: Package,
    },
}

/// Everything the package list shows.
#[derive(Debug, Clone)]
pub struct PackagesPage {
    /// Every application (the filter's choices and the sections' names).
    pub apps: Vec<App>,
    /// Every channel of every application.
    pub channels: Vec<Channel>,
    /// Every package (the architecture filter's choices, the versions channels point at).
    pub all: Vec<Package>,
    /// The packages shown (filtered).
    pub shown: Vec<Package>,
    /// The signatures of the shown Platte packages, by package id.
    pub signatures: BTreeMap<String, Vec<PackageSignature>>,
    /// The filters in force.
    pub filters: Filters,
    /// What was just done.
    pub notice: Option<PackagesNotice>,
    /// The largest file the server accepts, bytes.
    pub max_upload: u64,
}

/// The URL of the form that deletes package `id`.
pub fn delete_href(id: &str) -> String {
    format!("{HREF}/{}/delete", path_segment(id))
}

/// The URL of the form that points a channel at package `id`.
pub fn point_href(id: &str) -> String {
    format!("{HREF}/{}/point", path_segment(id))
}

/// A byte count as a person reads it (`48.8 KiB`, `1.2 GiB`); exact below 1 KiB.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    // Display only: the loss of precision of a huge count does not matter.
    #[allow(clippy::cast_precision_loss)]
    let mut x = n as f64 / 1024.0;
    let mut unit = 0;
    while x >= 1024.0 && unit + 1 < UNITS.len() {
        x /= 1024.0;
        unit += 1;
    }
    format!("{x:.1} {}", UNITS[unit])
}

/// Packages of one application grouped by architecture (sorted), each group newest version
/// first (then newest published first).
fn by_arch<'a>(packages: &[&'a Package]) -> BTreeMap<&'a str, Vec<&'a Package>> {
    let mut groups: BTreeMap<&str, Vec<&Package>> = BTreeMap::new();
    for p in packages {
        groups.entry(p.arch.as_str()).or_default().push(p);
    }
    for list in groups.values_mut() {
        list.sort_by(|a, b| {
            crate::version::compare(&b.version, &a.version)
                .then(b.created_at.cmp(&a.created_at))
                .then(a.id.cmp(&b.id))
        });
    }
    groups
}

/// The package list.
pub fn render(viewer: &Viewer, p: &PackagesPage) -> Markup {
    let mut arches: Vec<&str> = p.all.iter().map(|k| k.arch.as_str()).collect();
    arches.sort_unstable();
    arches.dedup();
    let mut apps: Vec<&App> = p.apps.iter().collect();
    apps.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
    layout(
        Some(viewer),
        Section::Packages,
        "Packages",
        PageOptions::default(),
        html! {
            h1 { "Packages" }
            (notice(p.notice.as_ref()))
            form.filters #filters method="get" action=(HREF) {
                label { "Application"
                    select #filter-app name="app" {
                        option value="" { "any" }
                        @for a in &apps {
                            option value=(a.id) selected[a.id == p.filters.app] { (a.name) }
                        }
                    }
                }
                label { "Architecture"
                    select #filter-arch name="arch" {
                        option value="" { "any" }
                        @for arch in &arches {
                            option value=(arch) selected[*arch == p.filters.arch] { (arch) }
                        }
                    }
                }
                button #filter type="submit" { "Show" }
            }
            @if viewer.may_write() {
                (publish_form(viewer, &apps, p.max_upload))
            }
            @if p.shown.is_empty() {
                p.empty #no-packages { "No packages match." }
            }
            @for a in &apps {
                @let mine: Vec<&Package> = p.shown.iter().filter(|k| k.app_id == a.id).collect();
                @if !mine.is_empty() {
                    @let channels: Vec<&Channel> = p.channels.iter().filter(|c| c.app_id == a.id).collect();
                    section.app-packages data-app=(a.id) {
                        h2 { (a.name) " " span.sub { (a.id) } }
                        @for (arch, list) in by_arch(&mine) {
                            h3 { (arch) }
                            table.packages data-app=(a.id) data-arch=(arch) {
                                thead {
                                    tr {
                                        th { "Version" } th { "Format" } th.num { "Size" }
                                        th { "Hashes" } th { "Signer" } th { "Channels" }
                                        th { "Published" }
                                        @if viewer.may_write() { th { "Actions" } }
                                    }
                                }
                                tbody {
                                    @for k in list {
                                        (package_row(viewer, p, k, &channels))
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

fn notice(n: Option<&PackagesNotice>) -> Markup {
    html! {
        @match n {
            Some(PackagesNotice::Published(k)) => div.banner.notice #notice {
                "Published " (k.version) " (" (k.arch) ") as package " code { (k.id) } "."
            },
            Some(PackagesNotice::Deleted) => div.banner.notice #notice { "The package was deleted." },
            Some(PackagesNotice::Pointed { channel, package }) => div.banner.notice #notice {
                "Channel " (channel) " now points at " (package.version) " for " (package.arch) "."
            },
            None => {},
        }
    }
}

fn publish_form(viewer: &Viewer, apps: &[&App], max_upload: u64) -> Markup {
    html! {
        section.card #publish {
            h2 { "Publish a package" }
            p.sub {
                "A Platte payload is verified against the trusted publisher keys and names its \
                 application, version and architecture (fill them in only to make sure it is \
                 the one you mean). An update_engine payload is checked to be one (CrAU) and \
                 needs all three. Largest file: " (bytes(max_upload)) "."
            }
            // The CSRF token comes first and the file last: the server checks the token
            // before it reads anything else, and reads the options before the file.
            form #publish-form.publish method="post" action=(HREF) enctype="multipart/form-data" {
                (csrf_field(viewer))
                label { "Format"
                    select #publish-format name="format" {
                        option value="platte" selected { "platte (signed payload)" }
                        option value="update_engine" { "update_engine (CrAU)" }
                    }
                }
                label { "Application"
                    select #publish-app name="app" {
                        option value="" { "as the payload says" }
                        @for a in apps {
                            option value=(a.id) { (a.name) }
                        }
                    }
                }
                label { "Version" input #publish-version type="text" name="version" maxlength="200"; }
                label { "Architecture" input #publish-arch type="text" name="arch" maxlength="64" placeholder="amd64"; }
                label { "Download name" input #publish-filename type="text" name="filename" maxlength="200" placeholder="default"; }
                label { "External URL" input #publish-external-url type="url" name="external_url" maxlength="2000" placeholder="hosted here"; }
                label { "File" input #publish-file type="file" name="file" required; }
                button #publish-submit type="submit" { "Publish" }
            }
        }
    }
}

fn package_row(viewer: &Viewer, p: &PackagesPage, k: &Package, channels: &[&Channel]) -> Markup {
    let pointing: Vec<(&str, &str)> = channels
        .iter()
        .flat_map(|c| {
            c.all_pointers()
                .filter(|(_, _, id)| *id == k.id)
                .map(|(_, arch, _)| (c.name.as_str(), arch))
        })
        .collect();
    let short = k.sha256_hex.get(..SHORT_HASH).unwrap_or(&k.sha256_hex);
    html! {
        tr.package id={ "package-" (k.id) } data-id=(k.id) data-version=(k.version) data-arch=(k.arch) {
            td.version {
                strong { (k.version) } " " span.tag { (k.kind) }
                br;
                span.sub.mono { (k.id) }
                @for d in &k.deltas {
                    br;
                    span.sub.delta title={ (d.size) " bytes, SHA-256 " (d.sha256_hex) } {
                        "delta from " (d.source_version) ", " (bytes(d.size))
                    }
                }
            }
            td.format { (k.format.as_str()) }
            td.num.size title={ (k.size) " bytes" } data-bytes=(k.size) { (bytes(k.size)) }
            td.hashes {
                "SHA-256 " code.sha256 title=(k.sha256_hex) { (short) "…" }
                br;
                span.sub { "SHA-1 " code.sha1 { (k.sha1_base64) } }
            }
            td.signer { (signer(k, p.signatures.get(&k.id))) }
            td.channels {
                @if pointing.is_empty() {
                    span.sub { "none" }
                } @else {
                    ul.pointers {
                        @for (name, arch) in &pointing {
                            li data-channel=(name) data-arch=(arch) { (name) " " span.sub { "(" (arch) ")" } }
                        }
                    }
                }
                @if let Some(url) = &k.external_url {
                    br;
                    span.sub { "hosted at " (url) }
                }
            }
            td.published { (time(k.created_at)) }
            @if viewer.may_write() {
                td.actions {
                    (point_form(viewer, p, k, channels))
                    form.delete.action id={ "delete-form-" (k.id) } method="post" action=(delete_href(&k.id)) {
                        (csrf_field(viewer))
                        label {
                            input id={ "delete-confirm-" (k.id) } type="checkbox" name="confirm" value="yes" required;
                            " Delete it"
                        }
                        button.danger id={ "delete-" (k.id) } type="submit" { "Delete" }
                    }
                }
            }
        }
    }
}

/// Who signed a package: the first signature by a key trusted now, else the signatures' keys
/// marked as no longer trusted.
fn signer(k: &Package, signatures: Option<&Vec<PackageSignature>>) -> Markup {
    if k.format == PackageFormat::UpdateEngine {
        return html! { span.sub { "the OS vendor (checked by the hosts)" } };
    }
    let Some(signatures) = signatures else {
        return html! { span.sub { @if k.external_url.is_some() { "not kept (hosted elsewhere)" } @else { "–" } } };
    };
    match signatures.iter().find(|s| s.trusted) {
        Some(s) => html! { code.key-id { (s.key_id) } },
        None => html! {
            @for s in signatures {
                code.key-id { (s.key_id) } " "
            }
            span.sub.untrusted { "(no longer trusted)" }
        },
    }
}

fn point_form(viewer: &Viewer, p: &PackagesPage, k: &Package, channels: &[&Channel]) -> Markup {
    // What each channel points at now for this package's architecture.
    let now_at = |c: &Channel| -> String {
        match c.pointers(k.format).get(&k.arch) {
            Some(id) if *id == k.id => "already at it".to_owned(),
            Some(id) => p
                .all
                .iter()
                .find(|o| o.id == *id)
                .map_or_else(|| "now ?".to_owned(), |o| format!("now {}", o.version)),
            None => "now none".to_owned(),
        }
    };
    html! {
        @if channels.is_empty() {
            p.sub { "No channel to point at it." }
        } @else {
            form.point.action id={ "point-form-" (k.id) } method="post" action=(point_href(&k.id)) {
                (csrf_field(viewer))
                select id={ "point-channel-" (k.id) } name="channel" aria-label="Channel" {
                    @for c in channels {
                        option value=(c.id) { (c.name) " (" (now_at(c)) ")" }
                    }
                }
                label {
                    input id={ "point-confirm-" (k.id) } type="checkbox" name="confirm" value="yes" required;
                    " Point it at " (k.version) " for " (k.arch)
                }
                button id={ "point-" (k.id) } type="submit" { "Point channel" }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkg(id: &str, version: &str, arch: &str, created_at: i64) -> Package {
        Package {
            id: id.into(),
            app_id: "app".into(),
            version: version.into(),
            arch: arch.into(),
            kind: "partition".into(),
            filename: "f".into(),
            size: 1,
            sha1_base64: String::new(),
            sha256_hex: String::new(),
            external_url: None,
            created_at,
            format: PackageFormat::Platte,
            metadata_size: None,
            metadata_signature_rsa: None,
            deadline: None,
            is_delta: false,
            disable_payload_backoff: true,
            needs_admin: false,
            files: Vec::new(),
            deltas: Vec::new(),
        }
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(50_000), "48.8 KiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
    }

    #[test]
    fn versions_are_grouped_by_arch_newest_first() {
        let list = [
            pkg("a", "1.9.0", "amd64", 1),
            pkg("b", "1.10.0", "amd64", 0),
            pkg("c", "2.0.0", "arm64", 0),
            pkg("d", "1.10.0", "amd64", 5),
        ];
        let refs: Vec<&Package> = list.iter().collect();
        let groups = by_arch(&refs);
        let ids = |arch: &str| {
            groups[arch]
                .iter()
                .map(|p| p.id.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            groups.keys().copied().collect::<Vec<_>>(),
            ["amd64", "arm64"]
        );
        assert_eq!(ids("amd64"), ["d", "b", "a"]);
        assert_eq!(ids("arm64"), ["c"]);
    }
}
