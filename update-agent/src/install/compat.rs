//! The first install step: decide, before touching any slot, whether an offer may be installed
//! on this machine at all. Fails closed: no trusted keys means no update.

use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::path::Path;

use payloads::TrustStore;

use super::error::{InstallError, Refusal};
use crate::identity::Identity;
use crate::omaha_client::Offer;
use crate::version;

/// Normalised architecture name (`x86_64`, `amd64`, `amd64-usr` → `amd64`; `aarch64` → `arm64`).
pub fn normalize_arch(s: &str) -> String {
    let s = s.trim().to_ascii_lowercase();
    let base = s.strip_suffix("-usr").unwrap_or(&s);
    match base {
        "x86_64" | "x64" | "amd64" => "amd64".to_owned(),
        "aarch64" | "arm64" => "arm64".to_owned(),
        other => other.to_owned(),
    }
}

/// Policy checks on the offered version: not deny-listed, and not older than the running one
/// unless the server marked a rollback **and** `allow_downgrade` is set.
pub fn check_version(
    offer: &Offer,
    running: &str,
    allow_downgrade: bool,
    deny_list: &BTreeSet<String>,
) -> Result<(), Refusal> {
    if deny_list.contains(&offer.version) {
        return Err(Refusal::DenyListed(offer.version.clone()));
    }
    if version::compare(&offer.version, running) == Ordering::Less
        && !(offer.rollback && allow_downgrade)
    {
        return Err(Refusal::Downgrade {
            running: running.to_owned(),
            offered: offer.version.clone(),
            marked: offer.rollback,
        });
    }
    Ok(())
}

/// Whether `offer` is the version already running (equal by the shared version ordering:
/// `1.2` = `1.2.0`, build metadata ignored). Installing it would overwrite the fallback slot with
/// a copy of the running system, so the agent declines it unless an operator asked for a repair.
pub fn is_running_version(offer: &Offer, running: &str) -> bool {
    version::compare(&offer.version, running) == Ordering::Equal
}

/// Loads the trusted keys; an empty or missing directory is an error (fail closed).
pub fn load_trust(dir: &Path) -> Result<TrustStore, InstallError> {
    if !dir.is_dir() {
        return Err(InstallError::NoTrustedKeys {
            dir: dir.to_owned(),
        });
    }
    match TrustStore::load(dir) {
        Ok(t) => Ok(t),
        Err(payloads::KeyError::EmptyTrustStore { .. }) => Err(InstallError::NoTrustedKeys {
            dir: dir.to_owned(),
        }),
        Err(e) => Err(e.into()),
    }
}

/// What the signed payload manifest must say for this offer (version, partition image, and for a
/// delta its source version: `running_version`); checked by the applier as soon as the payload's
/// prefix is verified, before any byte is written.
pub fn expectations(offer: &Offer, running_version: &str) -> payloads::Expectations {
    payloads::Expectations {
        version: Some(offer.version.clone()),
        kind: Some(payloads::Kind::Partition),
        // A delta must have been built from the version the active slot runs.
        source_version: Some(running_version.to_owned()),
        ..payloads::Expectations::default()
    }
}

/// Checks the verified manifest's app id, architecture and board against this machine
/// (normalised: braces and case of app ids, `-usr` and arch aliases).
pub fn check_manifest(id: &Identity, info: &payloads::PayloadInfo) -> Result<(), InstallError> {
    let want_app = omaha::normalize_appid(&id.app_id);
    let got_app = omaha::normalize_appid(info.app_id());
    if want_app != got_app {
        return Err(InstallError::Incompatible {
            what: "app id",
            expected: want_app,
            found: got_app,
        });
    }
    let want_arch = normalize_arch(&id.arch);
    if normalize_arch(info.arch()) != want_arch {
        return Err(InstallError::Incompatible {
            what: "arch",
            expected: want_arch,
            found: info.arch().to_owned(),
        });
    }
    if !info.board().is_empty() && info.board() != id.board {
        return Err(InstallError::Incompatible {
            what: "board",
            expected: id.board.clone(),
            found: info.board().to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(v: &str, rollback: bool) -> Offer {
        Offer {
            version: v.into(),
            urls: vec![],
            size: 1,
            sha256: [0; 32],
            rollback,
            delta: false,
        }
    }

    #[test]
    fn version_policy() {
        let none = BTreeSet::new();
        assert!(check_version(&offer("4000.0.0", false), "3999.0.0", false, &none).is_ok());
        let e = check_version(&offer("3998.0.0", false), "3999.0.0", true, &none).unwrap_err();
        assert!(matches!(e, Refusal::Downgrade { marked: false, .. }), "{e}");
        let e = check_version(&offer("3998.0.0", true), "3999.0.0", false, &none).unwrap_err();
        assert!(e.to_string().contains("allow_downgrade"), "{e}");
        assert!(check_version(&offer("3998.0.0", true), "3999.0.0", true, &none).is_ok());
        let deny: BTreeSet<String> = ["4000.0.0".to_string()].into();
        assert_eq!(
            check_version(&offer("4000.0.0", false), "3999.0.0", false, &deny),
            Err(Refusal::DenyListed("4000.0.0".into()))
        );
    }

    #[test]
    fn the_running_version_is_recognised_in_any_spelling() {
        assert!(is_running_version(&offer("2.0.0", false), "2.0.0"));
        assert!(is_running_version(&offer("2.0", false), "2.0.0"));
        assert!(is_running_version(&offer("2.0.0+b2", false), "2.0.0+b1"));
        assert!(!is_running_version(&offer("2.0.1", false), "2.0.0"));
        assert!(!is_running_version(&offer("2.0.0-rc.1", false), "2.0.0"));
        // Older and not marked a rollback: the downgrade policy refuses it (not "running").
        assert!(!is_running_version(&offer("1.0.0", false), "2.0.0"));
        assert!(check_version(&offer("1.0.0", false), "2.0.0", true, &BTreeSet::new()).is_err());
    }

    #[test]
    fn arch_aliases() {
        assert_eq!(normalize_arch("x86_64"), "amd64");
        assert_eq!(normalize_arch("amd64-usr"), "amd64");
        assert_eq!(normalize_arch("aarch64"), "arm64");
        assert_eq!(normalize_arch("riscv64"), "riscv64");
    }

    #[test]
    fn missing_or_empty_key_dir_fails_closed() {
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(
            load_trust(&d.path().join("nope")),
            Err(InstallError::NoTrustedKeys { .. })
        ));
        assert!(matches!(
            load_trust(d.path()),
            Err(InstallError::NoTrustedKeys { .. })
        ));
    }
}
