//! Bearer-token authentication of the admin API: an admin token may do anything, a read-only
//! token may only GET/HEAD. Tokens are compared in constant time. The `Bearer` scheme is matched
//! in any case (RFC 9110 §11.1). Token files are written atomically with mode 0600, and a token
//! file readable by group or others is reported.

use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::Response;
use rand_core::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;

/// The two tokens.
#[derive(Clone)]
pub struct Tokens {
    admin: [u8; 32],
    read_only: [u8; 32],
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens(..)")
    }
}

/// Access level of a presented token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Full access.
    Admin,
    /// GET/HEAD only.
    ReadOnly,
}

fn digest(t: &str) -> [u8; 32] {
    Sha256::digest(t.trim().as_bytes()).into()
}

impl Tokens {
    /// Tokens from their clear text.
    pub fn new(admin: &str, read_only: &str) -> Self {
        Self {
            admin: digest(admin),
            read_only: digest(read_only),
        }
    }

    /// The access a presented token grants (compared in constant time on SHA-256 digests).
    pub fn check(&self, presented: &str) -> Option<Access> {
        let d = digest(presented);
        let is_admin: bool = d.ct_eq(&self.admin).into();
        let is_ro: bool = d.ct_eq(&self.read_only).into();
        if is_admin {
            Some(Access::Admin)
        } else if is_ro {
            Some(Access::ReadOnly)
        } else {
            None
        }
    }
}

/// A new random token (32 bytes, hex).
pub fn generate_token() -> String {
    let mut b = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

/// Shortest token accepted, in characters (a shorter token file is replaced by a new token).
pub const MIN_TOKEN_LEN: usize = 16;

/// The credentials of an `Authorization` header value using the `Bearer` scheme, matched in any
/// case and with surrounding whitespace ignored (`bEaReR  tok ` gives `tok`); `None` for another
/// scheme or no credentials.
pub fn bearer_token(value: &str) -> Option<&str> {
    let v = value.trim();
    let (scheme, rest) = v.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case("bearer") || !rest.starts_with([' ', '\t']) {
        return None;
    }
    Some(rest.trim()).filter(|t| !t.is_empty())
}

/// Whether a file mode lets group or others read (or write) the file.
fn mode_is_loose(mode: u32) -> bool {
    mode & 0o077 != 0
}

/// Warns when the token file `file` is accessible to group or others.
fn warn_if_loose(file: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = std::fs::metadata(file) {
            let mode = m.permissions().mode() & 0o777;
            if mode_is_loose(mode) {
                tracing::warn!(
                    file = %file.display(),
                    mode = format!("{mode:o}"),
                    "token file is readable by group or others; run chmod 600 on it"
                );
            }
        }
    }
    #[cfg(not(unix))]
    let _ = file;
}

/// Reads a token from `file` (surrounding whitespace trimmed); warns when the file is readable
/// by group or others. An error names the file; a token shorter than [`MIN_TOKEN_LEN`] is one.
pub fn read_token_file(file: &Path) -> std::io::Result<String> {
    let t = std::fs::read_to_string(file)?;
    let t = t.trim();
    if t.len() < MIN_TOKEN_LEN {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "token file {} holds fewer than {MIN_TOKEN_LEN} characters",
                file.display()
            ),
        ));
    }
    warn_if_loose(file);
    Ok(t.to_owned())
}

/// Writes `token` to `file` atomically: a new file of mode 0600 in the same directory, synced,
/// renamed over `file`, and the directory synced. Whatever mode an older file had, the result
/// is 0600.
/// Writes `token` to `file` atomically. Unless `replace`, a file another process created
/// meanwhile (a replica starting on the same data directory) is kept: then `false`.
fn write_token_file(file: &Path, token: &str, replace: bool) -> std::io::Result<bool> {
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // tempfile creates the file with mode 0600 on Unix.
    let mut tmp = tempfile::Builder::new()
        .prefix(".token-")
        .tempfile_in(dir)?;
    std::io::Write::write_all(&mut tmp, format!("{token}\n").as_bytes())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    tmp.as_file().sync_all()?;
    if replace {
        tmp.persist(file).map_err(|e| e.error)?;
    } else {
        match tmp.persist_noclobber(file) {
            Ok(_) => {}
            Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(e.error),
        }
    }
    #[cfg(unix)]
    std::fs::File::open(dir)?.sync_all()?;
    Ok(true)
}

/// Returns `explicit`, else the token in `file`, else a new one written to `file` (mode 0600,
/// atomically; an existing file too short to hold a token is replaced, its mode with it). The
/// bool says whether a token was generated. An existing token file readable by group or others
/// is used, with a warning.
pub fn load_or_create(explicit: Option<&str>, file: &Path) -> std::io::Result<(String, bool)> {
    if let Some(t) = explicit {
        return Ok((t.trim().to_owned(), false));
    }
    let replace = match std::fs::read_to_string(file) {
        Ok(t) if t.trim().len() >= MIN_TOKEN_LEN => {
            warn_if_loose(file);
            return Ok((t.trim().to_owned(), false));
        }
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(e),
    };
    let token = generate_token();
    if write_token_file(file, &token, replace)? {
        return Ok((token, true));
    }
    // Another process sharing the data directory created it first: use its token.
    let t = std::fs::read_to_string(file)?;
    Ok((t.trim().to_owned(), false))
}

/// Middleware: requires a valid token; writes need the admin one.
pub async fn require_token(
    State(tokens): State<Arc<Tokens>>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .ok_or(ApiError::Unauthorized)?;
    let access = tokens.check(presented).ok_or(ApiError::Unauthorized)?;
    let read = matches!(*req.method(), Method::GET | Method::HEAD);
    if access == Access::ReadOnly && !read {
        return Err(ApiError::Forbidden);
    }
    Ok(next.run(req).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_grant_their_level_only() {
        let t = Tokens::new("admin-token-0123456789", "reader-token-0123456789");
        assert_eq!(t.check("admin-token-0123456789"), Some(Access::Admin));
        assert_eq!(t.check("reader-token-0123456789"), Some(Access::ReadOnly));
        assert_eq!(t.check("admin-token-012345678"), None);
        assert_eq!(t.check(""), None);
    }

    /// Two replicas starting on one shared data directory end up with one token: a file
    /// created by the other between the read and the write is kept, never replaced.
    #[test]
    fn a_token_file_created_meanwhile_by_another_process_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("admin-token");
        let first = "token-of-replica-one-0123456789";
        assert!(write_token_file(&f, first, false).unwrap());
        assert!(!write_token_file(&f, "token-of-replica-two-0123456789", false).unwrap());
        assert_eq!(std::fs::read_to_string(&f).unwrap().trim(), first);
        assert_eq!(load_or_create(None, &f).unwrap(), (first.to_owned(), false));
        // A file too short to hold a token is replaced.
        std::fs::write(&f, "short").unwrap();
        let (t, created) = load_or_create(None, &f).unwrap();
        assert!(created && t != "short");
    }

    #[test]
    fn generated_token_file_is_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("admin-token");
        let (t1, created) = load_or_create(None, &f).unwrap();
        assert!(created);
        assert_eq!(t1.len(), 64);
        let (t2, created) = load_or_create(None, &f).unwrap();
        assert!(!created);
        assert_eq!(t1, t2);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let (t3, _) = load_or_create(Some("explicit-token-123456"), &f).unwrap();
        assert_eq!(t3, "explicit-token-123456");
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        for v in [
            "Bearer tok",
            "bearer tok",
            "BEARER tok",
            "bEaReR tok",
            "  Bearer   tok  ",
            "Bearer\ttok",
        ] {
            assert_eq!(bearer_token(v), Some("tok"), "{v:?}");
        }
        for v in [
            "",
            "Bearer",
            "Bearer ",
            "Bearertok",
            "Basic dG9rOg==",
            "Bear tok",
            "Béarer tok",
        ] {
            assert_eq!(bearer_token(v), None, "{v:?}");
        }
    }

    #[cfg(unix)]
    fn mode(f: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(f).unwrap().permissions().mode() & 0o777
    }

    #[cfg(unix)]
    #[test]
    fn a_regenerated_token_file_is_0600_whatever_the_old_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("admin-token");
        // An existing file too short to be a token, world-readable.
        std::fs::write(&f, "short\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (t, created) = load_or_create(None, &f).unwrap();
        assert!(created);
        assert_eq!(mode(&f), 0o600);
        assert_eq!(std::fs::read_to_string(&f).unwrap(), format!("{t}\n"));
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[cfg(unix)]
    #[test]
    fn token_files_are_read_and_loose_modes_detected() {
        use std::os::unix::fs::PermissionsExt;
        assert!(mode_is_loose(0o644));
        assert!(mode_is_loose(0o640));
        assert!(mode_is_loose(0o602));
        assert!(!mode_is_loose(0o600));
        assert!(!mode_is_loose(0o400));
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tok");
        std::fs::write(&f, "  a-token-of-sufficient-length \n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        // Loose but usable: read (with a warning), mode left alone (it is the operator's file).
        assert_eq!(read_token_file(&f).unwrap(), "a-token-of-sufficient-length");
        assert_eq!(mode(&f), 0o644);
        std::fs::write(&f, "short").unwrap();
        let e = read_token_file(&f).unwrap_err();
        assert!(e.to_string().contains("fewer than 16"), "{e}");
        assert!(read_token_file(&dir.path().join("missing")).is_err());
    }
}
