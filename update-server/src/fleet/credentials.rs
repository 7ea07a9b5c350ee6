//! Machine credentials as an operator manages them (see [`crate::credential`]): show, enroll and
//! forget the ed25519 public key bound to a machine id.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Fleet, FleetError, FleetResult};
use crate::credential::MAX_MACHINE_ID_LEN;
use crate::model::NewActivity;
use crate::store::credential::{CredentialSource, MachineCredential};

/// Longest base64 text accepted for a public key (32 bytes take 44).
const MAX_KEY_TEXT: usize = 64;

/// Body of `PUT /instances/{machine}/credential`.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrollBody {
    /// The machine's ed25519 public key, standard base64 of its 32 bytes (as the agent prints
    /// with `update-agent machine-key`).
    pub public_key: String,
}

/// The machine id, trimmed, if it is 1..=[`MAX_MACHINE_ID_LEN`] printable characters.
fn check_machine(machine: &str) -> FleetResult<&str> {
    let m = machine.trim();
    if m.is_empty() || m.len() > MAX_MACHINE_ID_LEN || m.chars().any(char::is_control) {
        return Err(FleetError::Invalid(format!(
            "machine id must be 1..={MAX_MACHINE_ID_LEN} printable characters"
        )));
    }
    Ok(m)
}

/// Decodes and checks a public key; returns its canonical base64.
pub fn parse_public_key(text: &str) -> FleetResult<String> {
    let bad = |why: &str| {
        FleetError::Invalid(format!(
            "public_key must be the standard base64 of a 32-byte ed25519 public key: {why}"
        ))
    };
    let text = text.trim();
    if text.len() > MAX_KEY_TEXT {
        return Err(bad("too long"));
    }
    let bytes = STANDARD.decode(text).map_err(|_| bad("not base64"))?;
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|b: Vec<u8>| bad(&format!("{} bytes", b.len())))?;
    ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|_| bad("not a curve point"))?;
    Ok(STANDARD.encode(bytes))
}

/// An activity entry about a machine's credential.
fn activity(kind: &str, machine: &str, message: String) -> NewActivity {
    NewActivity {
        kind: kind.to_owned(),
        severity: "info",
        machine_id: Some(machine.to_owned()),
        message,
        ..Default::default()
    }
}

impl Fleet {
    /// The key bound to a machine id.
    pub async fn machine_credential(&self, machine: &str) -> FleetResult<MachineCredential> {
        let m = check_machine(machine)?;
        self.credentials
            .store()
            .machine_credential(m)
            .await?
            .ok_or_else(|| FleetError::NotFound(format!("credential of machine {m}")))
    }

    /// Enrolls a machine's public key, replacing any key bound to it (by enrollment or first
    /// use).
    pub async fn enroll_credential(
        &self,
        machine: &str,
        input: EnrollBody,
    ) -> FleetResult<MachineCredential> {
        let m = check_machine(machine)?;
        let key = parse_public_key(&input.public_key)?;
        let cred = MachineCredential {
            machine_id: m.to_owned(),
            public_key: key.clone(),
            source: CredentialSource::Enrolled,
            created_at: self.now(),
        };
        let act = activity(
            "machine_credential_enrolled",
            m,
            format!("machine {m} enrolled with key {key}"),
        );
        self.credentials
            .store()
            .enroll_credential(&cred, &act)
            .await?;
        tracing::info!(machine = m, key = %key, "machine credential enrolled");
        Ok(cred)
    }

    /// Forgets the key bound to a machine id: its next signed request binds a new one (if trust
    /// on first use is on) or it stays unauthenticated until enrolled.
    pub async fn forget_credential(&self, machine: &str) -> FleetResult<()> {
        let m = check_machine(machine)?;
        let act = activity(
            "machine_credential_forgotten",
            m,
            format!("machine {m}'s credential forgotten"),
        );
        if self
            .credentials
            .store()
            .forget_credential(m, &act, self.now())
            .await?
        {
            tracing::info!(machine = m, "machine credential forgotten");
            Ok(())
        } else {
            Err(FleetError::NotFound(format!("credential of machine {m}")))
        }
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
