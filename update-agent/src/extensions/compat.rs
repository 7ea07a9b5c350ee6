//! Which OS versions an extension build supports, from the signed manifest metadata
//! `os.versions` (e.g. `4081.*`, or `4081.* 4082.0.0`), and the checks of a verified extension
//! manifest against this host and the OS version it must run on.
//!
//! A pattern is a version where `*` stands for any run of characters; a list is separated by
//! spaces or commas. A build without `os.versions` supports no OS version (fail closed): a
//! sysext merged into an OS it was not built for breaks the runtime.

use crate::identity::Identity;
use crate::install::InstallError;
use crate::install::compat::normalize_arch;

/// Manifest metadata key listing the OS versions a build supports.
pub const OS_VERSIONS_KEY: &str = "os.versions";
/// Most patterns read from one `os.versions` value.
const MAX_PATTERNS: usize = 32;
/// Longest pattern.
const MAX_PATTERN_LEN: usize = 64;

/// The OS versions a build supports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsVersions {
    patterns: Vec<String>,
}

impl OsVersions {
    /// Parses an `os.versions` value; `Err` says what is wrong with it.
    pub fn parse(value: &str) -> Result<Self, String> {
        let patterns: Vec<String> = value
            .split([' ', ',', '\t'])
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect();
        if patterns.is_empty() {
            return Err(format!("{OS_VERSIONS_KEY} is empty"));
        }
        if patterns.len() > MAX_PATTERNS {
            return Err(format!(
                "{OS_VERSIONS_KEY} lists {} patterns; at most {MAX_PATTERNS} are read",
                patterns.len()
            ));
        }
        if let Some(bad) = patterns.iter().find(|p| {
            p.len() > MAX_PATTERN_LEN
                || !p
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._+~-*".contains(&b))
        }) {
            return Err(format!(
                "{OS_VERSIONS_KEY} pattern {bad:?} is not a version with optional * wildcards"
            ));
        }
        Ok(Self { patterns })
    }

    /// Whether `os_version` matches one of the patterns.
    pub fn supports(&self, os_version: &str) -> bool {
        self.patterns.iter().any(|p| glob(p, os_version))
    }

    /// The patterns as written (space-separated), for messages and the state.
    pub fn as_text(&self) -> String {
        self.patterns.join(" ")
    }
}

/// `*` matches any run of bytes (including none); everything else matches itself. Linear
/// backtracking over the last `*` (bounded by the pattern and text lengths).
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

/// Checks a verified extension manifest: app id (normalised), architecture and board against
/// this host, and `os.versions` against `os_version` (the OS the build must run on). Returns the
/// supported versions. App id, arch and board mismatches are [`InstallError::Incompatible`];
/// an OS mismatch is `Err(Unsupported)`.
pub fn check_manifest(
    app_id: &str,
    id: &Identity,
    info: &payloads::PayloadInfo,
    os_version: &str,
) -> Result<OsVersions, CompatError> {
    let want_app = omaha::normalize_appid(app_id);
    let got_app = omaha::normalize_appid(info.app_id());
    if want_app != got_app {
        return Err(CompatError::Incompatible(InstallError::Incompatible {
            what: "app id",
            expected: want_app,
            found: got_app,
        }));
    }
    let want_arch = normalize_arch(&id.arch);
    if normalize_arch(info.arch()) != want_arch {
        return Err(CompatError::Incompatible(InstallError::Incompatible {
            what: "arch",
            expected: want_arch,
            found: info.arch().to_owned(),
        }));
    }
    if !info.board().is_empty() && info.board() != id.board {
        return Err(CompatError::Incompatible(InstallError::Incompatible {
            what: "board",
            expected: id.board.clone(),
            found: info.board().to_owned(),
        }));
    }
    let versions = match info.metadata().get(OS_VERSIONS_KEY) {
        None => {
            return Err(CompatError::Unsupported {
                supported: String::new(),
                reason: format!("the build declares no {OS_VERSIONS_KEY} in its signed manifest"),
            });
        }
        Some(v) => OsVersions::parse(v).map_err(|reason| CompatError::Unsupported {
            supported: v.clone(),
            reason,
        })?,
    };
    if !versions.supports(os_version) {
        return Err(CompatError::Unsupported {
            supported: versions.as_text(),
            reason: format!(
                "it supports OS versions {}, not {os_version}",
                versions.as_text()
            ),
        });
    }
    Ok(versions)
}

/// Why a verified build is not for this host.
#[derive(Debug)]
pub enum CompatError {
    /// App id, architecture or board differ.
    Incompatible(InstallError),
    /// The build does not support the OS version it must run on.
    Unsupported {
        /// `os.versions` as declared (empty when absent).
        supported: String,
        /// What is wrong.
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        let v = OsVersions::parse("4081.*, 4082.0.0  5*.1").unwrap();
        assert!(v.supports("4081.2.0"));
        assert!(v.supports("4081."));
        assert!(!v.supports("4081"));
        assert!(v.supports("4082.0.0"));
        assert!(!v.supports("4082.0.1"));
        assert!(v.supports("5000.1"));
        assert!(v.supports("5.1"));
        assert!(!v.supports("5000.2"));
        assert!(!v.supports("40810.1.0"));
        assert!(OsVersions::parse("*").unwrap().supports("anything"));
        assert!(OsVersions::parse("a**b").unwrap().supports("ab"));
        assert_eq!(v.as_text(), "4081.* 4082.0.0 5*.1");
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(OsVersions::parse("  ,").is_err());
        assert!(OsVersions::parse("4081.[0-9]").is_err());
        assert!(OsVersions::parse(&"1 ".repeat(33)).is_err());
        assert!(OsVersions::parse(&"9".repeat(65)).is_err());
    }

    #[test]
    fn glob_worst_case_is_bounded() {
        let p = "*a*a*a*a*a*a*a*a*b";
        let t = "a".repeat(64);
        assert!(!glob(p, &t));
    }
}
