//! Bearer-token authentication of the admin API: an admin token may do anything, a read-only
//! token may only GET/HEAD. Tokens are compared in constant time.

use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::Response;
use rand_core::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

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

/// Returns `explicit`, else the token in `file`, else a new one written to `file` (mode 0600).
/// The bool says whether a token was generated.
pub fn load_or_create(explicit: Option<&str>, file: &Path) -> std::io::Result<(String, bool)> {
    if let Some(t) = explicit {
        return Ok((t.trim().to_owned(), false));
    }
    match std::fs::read_to_string(file) {
        Ok(t) if t.trim().len() >= 16 => return Ok((t.trim().to_owned(), false)),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let token = generate_token();
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(file)?;
    std::io::Write::write_all(&mut f, format!("{token}\n").as_bytes())?;
    f.sync_all()?;
    Ok((token, true))
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
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
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
}
