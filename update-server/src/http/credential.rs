//! Admin API of machine credentials (see [`crate::credential`]): show, enroll and forget the
//! ed25519 public key bound to a machine id, under `/api/v1/instances/{machine}/credential`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use crate::credential::MAX_MACHINE_ID_LEN;
use crate::error::{ApiError, ErrorBody};
use crate::model::NewActivity;
use crate::store::credential::{CredentialSource, MachineCredential};

/// Body of `PUT /instances/{machine}/credential`.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrollBody {
    /// The machine's ed25519 public key, standard base64 of its 32 bytes (as the agent prints
    /// with `update-agent machine-key`).
    pub public_key: String,
}

fn check_machine(machine: &str) -> Result<&str, ApiError> {
    let m = machine.trim();
    if m.is_empty() || m.len() > MAX_MACHINE_ID_LEN || m.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(format!(
            "machine id must be 1..={MAX_MACHINE_ID_LEN} printable characters"
        )));
    }
    Ok(m)
}

/// Decodes and checks a public key; returns its canonical base64.
pub fn parse_public_key(text: &str) -> Result<String, ApiError> {
    let bad = |why: &str| {
        ApiError::BadRequest(format!(
            "public_key must be the standard base64 of a 32-byte ed25519 public key: {why}"
        ))
    };
    let text = text.trim();
    if text.len() > 64 {
        return Err(bad("too long"));
    }
    let bytes = STANDARD.decode(text).map_err(|_| bad("not base64"))?;
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|b: Vec<u8>| bad(&format!("{} bytes", b.len())))?;
    ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|_| bad("not a curve point"))?;
    Ok(STANDARD.encode(bytes))
}

fn activity(kind: &str, machine: &str, message: String) -> NewActivity {
    NewActivity {
        kind: kind.to_owned(),
        severity: "info",
        machine_id: Some(machine.to_owned()),
        message,
        ..Default::default()
    }
}

/// Shows the key bound to a machine id.
#[utoipa::path(get, path = "/api/v1/instances/{machine}/credential", tag = "instances",
    params(("machine" = String, Path)),
    responses((status = 200, body = MachineCredential), (status = 404, body = ErrorBody)))]
pub async fn get_credential(
    State(st): State<AppState>,
    Path(machine): Path<String>,
) -> Result<Json<MachineCredential>, ApiError> {
    let m = check_machine(&machine)?;
    st.credentials
        .store()
        .machine_credential(m)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("credential of machine {m}")))
}

/// Enrolls a machine's public key, replacing any key bound to it (by enrollment or first use).
#[utoipa::path(put, path = "/api/v1/instances/{machine}/credential", tag = "instances",
    params(("machine" = String, Path)), request_body = EnrollBody,
    responses((status = 200, body = MachineCredential), (status = 400, body = ErrorBody)))]
pub async fn enroll_credential(
    State(st): State<AppState>,
    Path(machine): Path<String>,
    Json(body): Json<EnrollBody>,
) -> Result<Json<MachineCredential>, ApiError> {
    let m = check_machine(&machine)?;
    let key = parse_public_key(&body.public_key)?;
    let cred = MachineCredential {
        machine_id: m.to_owned(),
        public_key: key.clone(),
        source: CredentialSource::Enrolled,
        created_at: st.service.clock.now(),
    };
    let act = activity(
        "machine_credential_enrolled",
        m,
        format!("machine {m} enrolled with key {key}"),
    );
    st.credentials
        .store()
        .enroll_credential(&cred, &act)
        .await?;
    tracing::info!(machine = m, key = %key, "machine credential enrolled");
    Ok(Json(cred))
}

/// Forgets the key bound to a machine id: its next signed request binds a new one (if trust on
/// first use is on) or it stays unauthenticated until enrolled.
#[utoipa::path(delete, path = "/api/v1/instances/{machine}/credential", tag = "instances",
    params(("machine" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn forget_credential(
    State(st): State<AppState>,
    Path(machine): Path<String>,
) -> Result<StatusCode, ApiError> {
    let m = check_machine(&machine)?;
    let act = activity(
        "machine_credential_forgotten",
        m,
        format!("machine {m}'s credential forgotten"),
    );
    let now = st.service.clock.now();
    if st
        .credentials
        .store()
        .forget_credential(m, &act, now)
        .await?
    {
        tracing::info!(machine = m, "machine credential forgotten");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!("credential of machine {m}")))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const NOT_A_POINT: [u8; 32] = {
        let mut b = [0u8; 32];
        b[0] = 2;
        b
    };

    #[test]
    fn public_keys_are_checked() {
        let k = ed25519_dalek::SigningKey::from_bytes(&[3; 32]).verifying_key();
        let b64 = STANDARD.encode(k.to_bytes());
        assert_eq!(parse_public_key(&format!(" {b64}\n")).unwrap(), b64);
        for bad in [
            "",
            "not base64!",
            &STANDARD.encode([1u8; 31]),
            // y = 2 is on no point of the curve.
            &STANDARD.encode(NOT_A_POINT),
            &"A".repeat(100),
        ] {
            assert!(parse_public_key(bad).is_err(), "{bad}");
        }
    }
}
