//! Talking to the upstream Omaha server as a client would, without I/O: the request a sync
//! sends for one channel, and the release an answer offers, read into what publishing by
//! reference needs ([`crate::fleet::packages::reference::PackageReference`]).

use omaha::{AppRequest, Os, Request, Response};

use crate::model::PackageFormat;

/// The version a sync reports running before it has seen any release of a channel: older than
/// any release, so the upstream offers its channel's current one.
pub const FIRST_VERSION: &str = "0.0.0";

/// What a sync asks the upstream for, for one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamQuery<'a> {
    /// The application's appid.
    pub app: &'a str,
    /// The upstream's track (channel or group name).
    pub track: &'a str,
    /// Architecture (`amd64`, `arm64`).
    pub arch: &'a str,
    /// The payload format wanted: the request names a client that applies it.
    pub format: PackageFormat,
    /// This installation's stable machine id for the channel (32 hex digits).
    pub machine_id: &'a str,
    /// The version reported running: the last release the upstream offered for the channel
    /// ([`FIRST_VERSION`] before any), so it offers what is newer, as to a host that installed
    /// it; a Platte upstream then also ends the grant it made for that release.
    pub running: &'a str,
}

/// The request body for `q`: an update check as update_engine sends it (or Platte's agent, for
/// Platte payloads), with `multi_manifest_ok`.
pub fn request(q: &UpstreamQuery<'_>) -> String {
    let client = match q.format {
        // A Platte upstream tells clients apart by this prefix (docs/development/protocol.md).
        PackageFormat::UpdateEngine => concat!(
            "update_engine-0.4.10+platte-sync-",
            env!("CARGO_PKG_VERSION")
        ),
        PackageFormat::Platte => concat!("platte-agent-sync-", env!("CARGO_PKG_VERSION")),
    };
    let machine = match q.arch {
        "arm64" => "aarch64",
        _ => "x86_64",
    };
    let mut app = AppRequest::new(format!("{{{}}}", q.app), q.running).with_updatecheck();
    app.track = Some(q.track.to_owned());
    app.machineid = Some(q.machine_id.to_owned());
    app.bootid = Some(format!("{{{}}}", q.machine_id));
    app.board = Some(format!("{}-usr", q.arch));
    app.oem = Some(String::new());
    app.alephversion = Some(FIRST_VERSION.to_owned());
    app.delta_okay = Some(false);
    app.multi_manifest_ok = Some(true);
    Request::new(client)
        .with_installsource("scheduler")
        .with_os(Os::new(
            "CoreOS",
            "Chateau",
            format!("{}_{machine}", q.running),
        ))
        .with_app(app)
        .to_xml()
}

/// A file of an offered release: name under the codebase, size and digests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferedFile {
    /// File name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-1.
    pub sha1: [u8; 20],
    /// SHA-256.
    pub sha256: [u8; 32],
}

/// The release an upstream answer offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferedRelease {
    /// Version.
    pub version: String,
    /// The first codebase (ending in `/`).
    pub codebase: String,
    /// The payload (the manifest's first package).
    pub payload: OfferedFile,
    /// Further files (OEM and extension sysexts), in order.
    pub files: Vec<OfferedFile>,
    /// `MetadataSize`, when sent.
    pub metadata_size: Option<u64>,
    /// `MetadataSignatureRsa`, when sent.
    pub metadata_signature_rsa: Option<String>,
    /// `IsDeltaPayload`.
    pub is_delta: bool,
    /// `DisablePayloadBackoff`.
    pub disable_payload_backoff: bool,
    /// `deadline`, when sent.
    pub deadline: Option<String>,
}

/// Why an answer could not be read as a release.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    /// Not an Omaha response.
    #[error("the upstream's answer is not an Omaha response: {0}")]
    Malformed(String),
    /// An error status.
    #[error("the upstream answered {0}")]
    Status(String),
    /// Something a release needs is missing or unreadable.
    #[error("the upstream's offer has {0}")]
    Incomplete(String),
}

/// Reads the answer to [`request`] for `app`: `Ok(None)` when nothing is offered (`noupdate`).
pub fn offered_release(body: &[u8], app: &str) -> Result<Option<OfferedRelease>, AnswerError> {
    let resp: Response =
        omaha::parse_response(body).map_err(|e| AnswerError::Malformed(e.to_string()))?;
    let want = omaha::normalize_appid(app);
    let a = resp
        .apps
        .iter()
        .find(|a| omaha::normalize_appid(&a.appid) == want)
        .ok_or_else(|| AnswerError::Incomplete(format!("no <app> for {app}")))?;
    if a.status.as_str() != "ok" {
        return Err(AnswerError::Status(format!(
            "app status {}",
            a.status.as_str()
        )));
    }
    let uc = a
        .updatecheck
        .as_ref()
        .ok_or_else(|| AnswerError::Incomplete("no <updatecheck>".into()))?;
    match uc.status.as_str() {
        "ok" => {}
        "noupdate" => return Ok(None),
        other => return Err(AnswerError::Status(format!("updatecheck status {other}"))),
    }
    let man = uc
        .target_manifest()
        .ok_or_else(|| AnswerError::Incomplete("no <manifest>".into()))?;
    let codebase = uc
        .urls
        .first()
        .filter(|u| u.ends_with('/'))
        .ok_or_else(|| AnswerError::Incomplete("no codebase URL ending in /".into()))?;
    let (first, rest) = man
        .packages
        .split_first()
        .ok_or_else(|| AnswerError::Incomplete("no <package>".into()))?;
    let action = man.postinstall();
    // update_engine checks the payload's SHA-256 from the postinstall action (base64); other
    // servers put it in `hash_sha256` (hex or base64).
    let payload_sha256 = action
        .map(|a| a.sha256_hex_or_base64())
        .transpose()
        .map_err(|e| AnswerError::Incomplete(format!("an unreadable sha256: {e}")))?
        .flatten();
    let payload = offered_file(first, payload_sha256)?;
    let files = rest
        .iter()
        .map(|p| offered_file(p, None))
        .collect::<Result<_, _>>()?;
    Ok(Some(OfferedRelease {
        version: man.version.clone(),
        codebase: codebase.clone(),
        payload,
        files,
        metadata_size: action.and_then(|a| a.metadata_size),
        metadata_signature_rsa: action.and_then(|a| a.metadata_signature_rsa.clone()),
        is_delta: action.is_some_and(|a| a.is_delta_payload),
        disable_payload_backoff: action.is_none_or(|a| a.disable_payload_backoff),
        deadline: action.and_then(|a| a.deadline.clone()),
    }))
}

/// One `<package>` as an offered file; `sha256` overrides its `hash_sha256`.
fn offered_file(p: &omaha::Package, sha256: Option<[u8; 32]>) -> Result<OfferedFile, AnswerError> {
    let unreadable = |e: omaha::DigestError| {
        AnswerError::Incomplete(format!("an unreadable digest on {}: {e}", p.name))
    };
    let sha1 = p
        .sha1()
        .map_err(unreadable)?
        .ok_or_else(|| AnswerError::Incomplete(format!("no SHA-1 for {}", p.name)))?;
    let sha256 = match sha256 {
        Some(d) => d,
        None => p
            .sha256_hex_or_base64()
            .map_err(unreadable)?
            .ok_or_else(|| AnswerError::Incomplete(format!("no SHA-256 for {}", p.name)))?,
    };
    if p.size == 0 {
        return Err(AnswerError::Incomplete(format!("size 0 for {}", p.name)));
    }
    Ok(OfferedFile {
        name: p.name.clone(),
        size: p.size,
        sha1,
        sha256,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A captured answer from `../shared/testdata/omaha/`.
    fn captured(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/testdata/omaha")
            .join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    const FLATCAR: &str = "e96281a6-d1af-4bde-9a0a-97b76e56dc57";

    #[test]
    fn nebraskas_answer_for_flatcar_reads_as_a_release() {
        let r = offered_release(&captured("nebraska-response-ok-flatcar-3374.xml"), FLATCAR)
            .unwrap()
            .unwrap();
        assert_eq!(r.version, "3374.2.5");
        assert_eq!(
            r.codebase,
            "https://update.release.flatcar-linux.net/amd64-usr/3374.2.5/"
        );
        assert_eq!(
            (r.payload.name.as_str(), r.payload.size),
            ("flatcar_production_update.gz", 364_314_900)
        );
        // The payload's SHA-256 is the postinstall action's (base64).
        assert_eq!(
            hex::encode(r.payload.sha256),
            "591d9c5d7d6421a89ef8494787a67161548e94e0f62a8fc9407be774636170c2"
        );
        assert!(r.files.is_empty() && r.disable_payload_backoff && !r.is_delta);
    }

    #[test]
    fn extra_files_come_with_their_digests() {
        let r = offered_release(&captured("nebraska-response-ok-multipackage.xml"), FLATCAR)
            .unwrap()
            .unwrap();
        assert_eq!(r.version, "3732.0.0");
        let names: Vec<(&str, u64)> = r.files.iter().map(|f| (f.name.as_str(), f.size)).collect();
        assert_eq!(names, [("oem-azure.gz", 40_897_503), ("oem-qemu.gz", 2282)]);
        assert_eq!(
            hex::encode(r.files[1].sha256),
            "8ab630ee4079ecd5f8f512c05b44fec5e4f8db844db916c67c8d54a575cfe506"
        );
    }

    #[test]
    fn noupdate_and_errors() {
        assert_eq!(
            offered_release(&captured("nebraska-response-noupdate.xml"), FLATCAR),
            Ok(None)
        );
        assert!(matches!(
            offered_release(&captured("nebraska-response-error.xml"), FLATCAR),
            Err(AnswerError::Status(_) | AnswerError::Incomplete(_))
        ));
        assert!(matches!(
            offered_release(b"<html>not omaha</html>", FLATCAR),
            Err(AnswerError::Malformed(_))
        ));
        // An answer for another application offers nothing to this one.
        assert!(matches!(
            offered_release(
                &captured("nebraska-response-ok-flatcar-3374.xml"),
                "other-app"
            ),
            Err(AnswerError::Incomplete(_))
        ));
    }

    #[test]
    fn the_request_reads_as_update_engines_and_names_the_channel() {
        let xml = request(&UpstreamQuery {
            app: FLATCAR,
            track: "beta",
            arch: "arm64",
            format: PackageFormat::UpdateEngine,
            machine_id: "0123456789abcdef0123456789abcdef",
            running: "3510.2.0",
        });
        let req = omaha::parse_request(xml.as_bytes()).unwrap();
        assert!(
            req.version
                .as_deref()
                .unwrap()
                .starts_with("update_engine-")
        );
        let app = &req.apps[0];
        assert_eq!(app.normalized_appid(), FLATCAR);
        assert_eq!(app.track.as_deref(), Some("beta"));
        assert_eq!(app.board.as_deref(), Some("arm64-usr"));
        assert_eq!(app.version.as_deref(), Some("3510.2.0"));
        assert_eq!(app.multi_manifest_ok, Some(true));
        assert!(app.updatecheck.is_some());
        let platte = request(&UpstreamQuery {
            format: PackageFormat::Platte,
            ..UpstreamQuery {
                app: FLATCAR,
                track: "beta",
                arch: "amd64",
                format: PackageFormat::Platte,
                machine_id: "0123456789abcdef0123456789abcdef",
                running: FIRST_VERSION,
            }
        });
        assert!(
            platte.contains(r#"version="platte-agent-sync-"#),
            "{platte}"
        );
    }
}
