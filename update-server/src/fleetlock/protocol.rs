//! The FleetLock wire format as Zincati speaks it: the `fleet-lock-protocol: true` header, the
//! `{"client_params":{"id","group"}}` body, and errors as `{"kind","value"}` JSON with a small,
//! fixed set of kinds (clients use `kind` as a metric label).

use hyper::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};

/// Name of the header every FleetLock request must carry with the value `true`.
pub const PROTOCOL_HEADER: &str = "fleet-lock-protocol";
/// Largest accepted request body.
pub const MAX_BODY: usize = 4096;
/// Longest accepted client id or group.
pub const MAX_LABEL: usize = 256;

/// Body of `pre-reboot` and `steady-state`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Who asks.
    pub client_params: ClientParams,
}

/// The client's identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientParams {
    /// Client id (case-sensitive, non-empty; e.g. the node UUID).
    pub id: String,
    /// Reboot group, matching `^[a-zA-Z0-9.-]+$`.
    pub group: String,
}

/// A FleetLock error: an HTTP status and the `{"kind","value"}` body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FleetLockError {
    /// The `fleet-lock-protocol: true` header is missing or wrong (400).
    #[error("missing or invalid {PROTOCOL_HEADER} header: it must be present with the value true")]
    MissingHeader,
    /// The body is not a valid request (400).
    #[error("invalid request body: {0}")]
    InvalidBody(String),
    /// The group is not acceptable (400).
    #[error("invalid group {0:?}: it must match ^[a-zA-Z0-9.-]+$ and be at most 256 bytes")]
    InvalidGroup(String),
    /// The id is not acceptable (400).
    #[error("invalid client id: it must be non-empty, printable and at most 256 bytes")]
    InvalidId,
    /// The shared secret is missing or wrong (401).
    #[error("missing or invalid FleetLock token")]
    Unauthorized,
    /// The endpoints are turned off on this server (404).
    #[error("FleetLock is disabled on this server")]
    Disabled,
    /// Every slot of the group is held by other clients (409).
    #[error("semaphore of group {group} is full: all {slots} slot(s) are locked")]
    SemaphoreFull {
        /// Group.
        group: String,
        /// Its slots.
        slots: u32,
    },
    /// The group is new and clients already hold locks in as many unconfigured groups as the
    /// server allows (409; an operator configures the group, or raises `fleetlock.max_groups`).
    #[error(
        "too many FleetLock groups: clients hold locks in {max} groups not configured on the server; configure this group's slots through the admin API"
    )]
    TooManyGroups {
        /// The limit (`fleetlock.max_groups`).
        max: u32,
    },
    /// The database failed (500).
    #[error("lock storage failed: {0}")]
    Internal(String),
}

impl FleetLockError {
    /// HTTP status and `kind`.
    pub fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            Self::MissingHeader => (StatusCode::BAD_REQUEST, "missing_protocol_header"),
            Self::InvalidBody(_) => (StatusCode::BAD_REQUEST, "invalid_body"),
            Self::InvalidGroup(_) => (StatusCode::BAD_REQUEST, "invalid_group"),
            Self::InvalidId => (StatusCode::BAD_REQUEST, "invalid_id"),
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::Disabled => (StatusCode::NOT_FOUND, "fleetlock_disabled"),
            Self::SemaphoreFull { .. } => (StatusCode::CONFLICT, "failed_lock_semaphore_full"),
            Self::TooManyGroups { .. } => (StatusCode::CONFLICT, "failed_lock_too_many_groups"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
        }
    }

    /// The `kind` alone.
    pub fn kind(&self) -> &'static str {
        self.parts().1
    }
}

/// The error body (the admin API's handlers write it, `crate::http::fleetlock`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Error type identifier (small, fixed set).
    pub kind: String,
    /// Human description.
    pub value: String,
}

/// Checks the `fleet-lock-protocol: true` header (value compared case-insensitively).
pub fn check_header(headers: &HeaderMap) -> Result<(), FleetLockError> {
    match headers.get(PROTOCOL_HEADER).map(|v| v.to_str()) {
        Some(Ok(v)) if v.trim().eq_ignore_ascii_case("true") => Ok(()),
        _ => Err(FleetLockError::MissingHeader),
    }
}

/// Whether `group` is a valid FleetLock group name.
pub fn valid_group(group: &str) -> bool {
    !group.is_empty()
        && group.len() <= MAX_LABEL
        && group
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
}

/// Whether `id` is a valid client id.
pub fn valid_id(id: &str) -> bool {
    !id.trim().is_empty() && id.len() <= MAX_LABEL && !id.chars().any(char::is_control)
}

/// Parses and validates a request body.
pub fn parse_request(body: &[u8]) -> Result<ClientParams, FleetLockError> {
    if body.len() > MAX_BODY {
        return Err(FleetLockError::InvalidBody(format!(
            "{} bytes is above the {MAX_BODY}-byte limit",
            body.len()
        )));
    }
    let req: Request =
        serde_json::from_slice(body).map_err(|e| FleetLockError::InvalidBody(e.to_string()))?;
    let p = req.client_params;
    if !valid_group(&p.group) {
        return Err(FleetLockError::InvalidGroup(
            p.group.chars().take(64).collect(),
        ));
    }
    if !valid_id(&p.id) {
        return Err(FleetLockError::InvalidId);
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_zincati_body() {
        let p = parse_request(
            br#"{"client_params":{"group":"default","id":"c988d2509fdf5cdcbed39037c56406fb"}}"#,
        )
        .unwrap();
        assert_eq!(p.group, "default");
        assert_eq!(p.id, "c988d2509fdf5cdcbed39037c56406fb");
    }

    #[test]
    fn refuses_bad_bodies_with_the_right_kind() {
        let kind = |b: &[u8]| parse_request(b).unwrap_err().kind();
        assert_eq!(kind(b"not json"), "invalid_body");
        assert_eq!(kind(br#"{"client_params":{"id":"a"}}"#), "invalid_body");
        assert_eq!(
            kind(br#"{"client_params":{"id":"a","group":"bad group"}}"#),
            "invalid_group"
        );
        assert_eq!(
            kind(br#"{"client_params":{"id":"a","group":""}}"#),
            "invalid_group"
        );
        assert_eq!(
            kind(br#"{"client_params":{"id":"","group":"g"}}"#),
            "invalid_id"
        );
        assert_eq!(kind(&vec![b' '; MAX_BODY + 1]), "invalid_body");
    }

    #[test]
    fn header_must_say_true() {
        let mut h = HeaderMap::new();
        assert_eq!(check_header(&h), Err(FleetLockError::MissingHeader));
        h.insert(PROTOCOL_HEADER, "false".parse().unwrap());
        assert_eq!(check_header(&h), Err(FleetLockError::MissingHeader));
        h.insert(PROTOCOL_HEADER, "true".parse().unwrap());
        assert_eq!(check_header(&h), Ok(()));
    }

    #[test]
    fn group_charset_is_enforced() {
        assert!(valid_group("workers.eu-1"));
        assert!(!valid_group("a/b"));
        assert!(!valid_group("é"));
        assert!(!valid_group(&"a".repeat(MAX_LABEL + 1)));
    }
}
