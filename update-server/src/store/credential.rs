//! Persistence of machine credentials: which ed25519 public key is bound to which machine id
//! (see [`crate::credential`]). A separate trait from [`super::Store`]; every write is one
//! transaction with its activity entry, durable when the future resolves.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::StoreFuture;
use crate::model::NewActivity;

/// How a key came to be bound to a machine id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CredentialSource {
    /// An operator enrolled it (admin API or `update-server instance enroll`).
    Enrolled,
    /// The first valid signed request for the machine id brought it (trust on first use).
    FirstUse,
}

impl CredentialSource {
    /// Stored and displayed form (`enrolled`, `first_use`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enrolled => "enrolled",
            Self::FirstUse => "first_use",
        }
    }

    /// Parses [`Self::as_str`]'s form.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "enrolled" => Some(Self::Enrolled),
            "first_use" => Some(Self::FirstUse),
            _ => None,
        }
    }
}

/// The key bound to one machine id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MachineCredential {
    /// Machine id as clients send it.
    pub machine_id: String,
    /// The ed25519 public key, standard base64 (32 bytes).
    pub public_key: String,
    /// How it was bound.
    pub source: CredentialSource,
    /// When it was bound (Unix seconds).
    pub created_at: i64,
}

/// Storage of machine credentials.
pub trait CredentialStore: Send + Sync + std::fmt::Debug {
    /// The key bound to `machine_id`, if any.
    fn machine_credential<'a>(
        &'a self,
        machine_id: &'a str,
    ) -> StoreFuture<'a, Option<MachineCredential>>;
    /// Binds `cred` unless the machine id already has a key (first use); returns the key bound
    /// afterwards, which is another one when a concurrent request or an operator came first.
    /// `act` is recorded only when `cred` was bound.
    fn bind_first_use<'a>(
        &'a self,
        cred: &'a MachineCredential,
        act: &'a NewActivity,
    ) -> StoreFuture<'a, MachineCredential>;
    /// Binds `cred`, replacing any key the machine id had (operator enrollment).
    fn enroll_credential<'a>(
        &'a self,
        cred: &'a MachineCredential,
        act: &'a NewActivity,
    ) -> StoreFuture<'a, ()>;
    /// Removes the machine id's key; `false` when it had none (then nothing is recorded).
    fn forget_credential<'a>(
        &'a self,
        machine_id: &'a str,
        act: &'a NewActivity,
        at: i64,
    ) -> StoreFuture<'a, bool>;
}
