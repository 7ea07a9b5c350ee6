//! The dashboard's stateless session: a cookie value that carries a role and an expiry, signed
//! with HMAC-SHA256, and the CSRF token derived from it. No server state: any process that holds
//! the same key (replicas sharing a data directory) accepts the same sessions, and a session
//! ends at its expiry, when the browser drops the cookie (logout), or for every session at once
//! when the key or either access token changes.
//!
//! Cookie value: `v1.{role}.{expires_at}.{nonce}.{mac}`, where `mac` is the hex HMAC of
//! everything before it and `nonce` 16 random bytes (hex), so each login is its own session
//! with its own CSRF token. The CSRF token is the hex HMAC of the whole cookie value under a
//! separate label. Both are compared in constant time.

use hmac::{Hmac, Mac};
use rand_core::RngCore;
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// How long a session lasts after logging in: 12 hours.
pub const SESSION_SECS: i64 = 12 * 3600;

/// Name of the session cookie.
pub const COOKIE_NAME: &str = "platte_session";

/// File in the data directory holding the session key (created with mode 0600).
pub const KEY_FILE: &str = "dashboard-session-key";

/// Format version of the cookie value.
const VERSION: &str = "v1";
/// Label of the key derivation.
const KEY_LABEL: &[u8] = b"platte-dashboard-key-v1\0";
/// Label of a session's MAC.
const SESSION_LABEL: &[u8] = b"session\0";
/// Label of a CSRF token.
const CSRF_LABEL: &[u8] = b"csrf\0";
/// Longest cookie value looked at (a real one is about 110 bytes).
const MAX_VALUE_LEN: usize = 256;

/// What a logged-in user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Logged in with the admin token: may read and change.
    Admin,
    /// Logged in with the read-only token: may only read.
    ReadOnly,
}

impl Role {
    /// The text form in the cookie.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::ReadOnly => "read",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "admin" => Some(Self::Admin),
            "read" => Some(Self::ReadOnly),
            _ => None,
        }
    }

    /// Whether this role may change anything.
    pub fn may_write(self) -> bool {
        self == Self::Admin
    }
}

/// A verified session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Who is logged in.
    pub role: Role,
    /// When the session ends (Unix seconds).
    pub expires_at: i64,
    /// The CSRF token every form of this session carries.
    pub csrf: String,
}

/// The key sessions are signed with.
#[derive(Clone)]
pub struct SessionKey {
    key: [u8; 32],
}

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(..)")
    }
}

fn mac(key: &[u8], label: &[u8], data: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length: `new_from_slice` cannot fail for it.
    let mut m = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    };
    m.update(label);
    m.update(data);
    m
}

impl SessionKey {
    /// The key derived from the secret in the key file and the two access tokens in force, so
    /// that changing either token (or the file) ends every session.
    pub fn new(secret: &[u8], admin_token: &str, read_only_token: &str) -> Self {
        let mut tokens = Vec::with_capacity(64);
        tokens.extend_from_slice(&Sha256::digest(admin_token.trim().as_bytes()));
        tokens.extend_from_slice(&Sha256::digest(read_only_token.trim().as_bytes()));
        let key = mac(secret, KEY_LABEL, &tokens)
            .finalize()
            .into_bytes()
            .into();
        Self { key }
    }

    /// A new session cookie value for `role`, valid for [`SESSION_SECS`] from `now`.
    pub fn issue(&self, role: Role, now: i64) -> String {
        let mut nonce = [0u8; 16];
        rand_core::OsRng.fill_bytes(&mut nonce);
        self.issue_with(role, now.saturating_add(SESSION_SECS), &hex::encode(nonce))
    }

    fn issue_with(&self, role: Role, expires_at: i64, nonce: &str) -> String {
        let body = format!("{VERSION}.{}.{expires_at}.{nonce}", role.as_str());
        let tag = mac(&self.key, SESSION_LABEL, body.as_bytes()).finalize();
        format!("{body}.{}", hex::encode(tag.into_bytes()))
    }

    /// The session a cookie value stands for, if its signature is good and it has not expired
    /// at `now`.
    pub fn verify(&self, value: &str, now: i64) -> Option<Session> {
        if value.len() > MAX_VALUE_LEN {
            return None;
        }
        let (body, tag) = value.rsplit_once('.')?;
        let tag = hex::decode(tag).ok()?;
        mac(&self.key, SESSION_LABEL, body.as_bytes())
            .verify_slice(&tag)
            .ok()?;
        let mut parts = body.split('.');
        let (Some(VERSION), Some(role), Some(expires), Some(_nonce), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return None;
        };
        let role = Role::parse(role)?;
        let expires_at: i64 = expires.parse().ok()?;
        if now >= expires_at {
            return None;
        }
        Some(Session {
            role,
            expires_at,
            csrf: self.csrf_of(value),
        })
    }

    /// The CSRF token of a session cookie value.
    fn csrf_of(&self, value: &str) -> String {
        hex::encode(
            mac(&self.key, CSRF_LABEL, value.as_bytes())
                .finalize()
                .into_bytes(),
        )
    }

    /// Whether `presented` is the CSRF token of the session cookie `value` (constant time).
    pub fn csrf_matches(&self, value: &str, presented: &str) -> bool {
        let Ok(tag) = hex::decode(presented) else {
            return false;
        };
        mac(&self.key, CSRF_LABEL, value.as_bytes())
            .verify_slice(&tag)
            .is_ok()
    }
}

/// The value of cookie `name` in a `Cookie` request header, if present.
pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k.trim() == name).then(|| v.trim())
    })
}

/// The `Set-Cookie` value that stores a session (`secure`: the request came over HTTPS).
pub fn set_cookie(value: &str, secure: bool) -> String {
    let mut c =
        format!("{COOKIE_NAME}={value}; Max-Age={SESSION_SECS}; Path=/; HttpOnly; SameSite=Strict");
    if secure {
        c.push_str("; Secure");
    }
    c
}

/// The `Set-Cookie` value that removes the session cookie.
pub fn clear_cookie(secure: bool) -> String {
    let mut c = format!("{COOKIE_NAME}=; Max-Age=0; Path=/; HttpOnly; SameSite=Strict");
    if secure {
        c.push_str("; Secure");
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADMIN: &str = "admin-token-0123456789";
    const READER: &str = "reader-token-0123456789";

    fn key() -> SessionKey {
        SessionKey::new(b"secret-from-the-key-file", ADMIN, READER)
    }

    #[test]
    fn a_session_verifies_until_it_expires() {
        let k = key();
        let v = k.issue(Role::Admin, 1_000);
        let s = k.verify(&v, 1_000).unwrap();
        assert_eq!(s.role, Role::Admin);
        assert_eq!(s.expires_at, 1_000 + SESSION_SECS);
        assert!(k.verify(&v, 1_000 + SESSION_SECS - 1).is_some());
        assert!(k.verify(&v, 1_000 + SESSION_SECS).is_none());
        let r = k.issue(Role::ReadOnly, 1_000);
        assert_eq!(k.verify(&r, 1_000).unwrap().role, Role::ReadOnly);
        assert!(!Role::ReadOnly.may_write() && Role::Admin.may_write());
    }

    #[test]
    fn a_changed_value_or_another_key_is_refused() {
        let k = key();
        let v = k.issue_with(Role::ReadOnly, 5_000, "00ff");
        assert!(k.verify(&v, 0).is_some());
        // Promoting the role or extending the expiry breaks the signature.
        let forged = v.replacen(".read.", ".admin.", 1);
        assert!(k.verify(&forged, 0).is_none());
        let forged = v.replacen(".5000.", ".9000.", 1);
        assert!(k.verify(&forged, 0).is_none());
        // Another secret, or another token in force, is another key.
        let other = SessionKey::new(b"another-secret", ADMIN, READER);
        assert!(other.verify(&v, 0).is_none());
        let rotated = SessionKey::new(b"secret-from-the-key-file", "new-admin-token-01", READER);
        assert!(rotated.verify(&v, 0).is_none());
        for junk in [
            "",
            ".",
            "v1",
            "v1.admin.1.2.zz",
            &"a".repeat(1000),
            "v1.admin.x.00.00",
        ] {
            assert!(k.verify(junk, 0).is_none(), "{junk:?}");
        }
    }

    #[test]
    fn csrf_tokens_belong_to_one_session() {
        let k = key();
        let a = k.issue(Role::Admin, 0);
        let b = k.issue(Role::Admin, 0);
        let sa = k.verify(&a, 0).unwrap();
        let sb = k.verify(&b, 0).unwrap();
        assert_ne!(sa.csrf, sb.csrf, "each login is its own session");
        assert!(k.csrf_matches(&a, &sa.csrf));
        assert!(!k.csrf_matches(&a, &sb.csrf));
        assert!(!k.csrf_matches(&a, ""));
        assert!(!k.csrf_matches(&a, "not hex"));
    }

    #[test]
    fn cookies_are_read_and_written_with_their_attributes() {
        assert_eq!(
            cookie_value("a=1; platte_session=v1.x ; b=2", COOKIE_NAME),
            Some("v1.x")
        );
        assert_eq!(cookie_value("platte_sessionx=1", COOKIE_NAME), None);
        let c = set_cookie("v", true);
        for attr in [
            "HttpOnly",
            "SameSite=Strict",
            "Path=/",
            "Secure",
            "Max-Age=43200",
        ] {
            assert!(c.contains(attr), "{c}");
        }
        assert!(!set_cookie("v", false).contains("Secure"));
        assert!(clear_cookie(false).contains("Max-Age=0"));
    }
}
