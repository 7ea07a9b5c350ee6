//! Machine credentials: Omaha has no client authentication, so anyone can claim any machine id.
//! A Platte agent signs each Omaha request with a per-host ed25519 key in the
//! `Platte-Machine-Signature` header (format in [`omaha::credential`] and `docs/development/protocol.md`).
//! The server verifies the signature and the timestamp ([`verify`]), and binds one key to each
//! machine id, by the operator (enrollment) or by the first valid signed request (trust on first
//! use, if the server allows it). A request whose signature is valid and whose key is the one
//! bound to a machine id is *authenticated* for that machine id ([`Credentials::check`]).
//!
//! A request that carries the header but fails (bad signature, another key than the bound one,
//! timestamp outside the skew or older than the last accepted one of its key) authenticates
//! nothing and binds nothing: it is handled as an unsigned request, and the answer's
//! `Platte-Machine-Signature-Status` header names the outcome. A group whose policy says `"machine_credential": "required"` ignores the
//! check-ins that are not authenticated for their machine id ([`gate`]): they get `noupdate`,
//! their events are acknowledged but neither stored nor applied, and they take no grant.

pub mod config;
pub mod metrics;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::http::HeaderMap;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, VerifyingKey};
use omaha::credential::{HEADER_NAME, MachineSignature, SignatureHeaderError, signed_message};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use utoipa::ToSchema;

pub use config::{CredentialArgs, CredentialFile, CredentialSettings};
pub use metrics::CredentialMetrics;

use crate::catalogue::Catalogue;
use crate::clock::Clock;
use crate::model::{NewActivity, normalize_appid};
use crate::service::{AppAnswer, AppCheckIn, CheckAnswer, NoUpdateReason};
use crate::store::StoreError;
use crate::store::credential::{CredentialSource, CredentialStore, MachineCredential};

/// Longest machine id a key is bound to (machine ids are 32 hex digits; longer claims are
/// never bound, so they stay unauthenticated).
pub const MAX_MACHINE_ID_LEN: usize = 128;
/// Keys whose last accepted timestamp is remembered; beyond this the memory is cleared.
const MAX_REMEMBERED_KEYS: usize = 1 << 20;
/// Hold reason of an unauthenticated check-in in a group that requires a credential.
pub const HOLD_UNAUTHENTICATED: &str = "unauthenticated";

/// Whether a group requires a machine credential: the group policy field `machine_credential`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Requirement {
    /// Every check-in counts, signed or not (update_engine hosts keep working).
    #[default]
    Optional,
    /// Only check-ins authenticated for their machine id count.
    Required,
}

impl Requirement {
    /// True for the default ([`Requirement::Optional`]), which is not written out.
    pub fn is_optional(&self) -> bool {
        *self == Self::Optional
    }
}

/// What the credential check of one request found (the metric label set is closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// No `Platte-Machine-Signature` header.
    None,
    /// Valid signature by the key bound to the request's machine id (or just bound to it).
    Valid,
    /// Valid signature, but the machine id has no key and trust on first use is off.
    Unenrolled,
    /// Malformed header, or a signature that does not verify.
    BadSignature,
    /// Valid signature by another key than the one bound to the machine id.
    KeyMismatch,
    /// Timestamp outside the allowed skew, or older than the last accepted one of the key.
    Stale,
}

impl Outcome {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Valid => "valid",
            Self::Unenrolled => "unenrolled",
            Self::BadSignature => "bad_signature",
            Self::KeyMismatch => "key_mismatch",
            Self::Stale => "stale",
        }
    }

    /// Whether a presented credential was refused (the request then counts as unsigned).
    pub fn refused(self) -> bool {
        matches!(self, Self::BadSignature | Self::KeyMismatch | Self::Stale)
    }
}

/// Why a signature header does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The header value is malformed.
    #[error("malformed Platte-Machine-Signature: {0}")]
    Malformed(#[from] SignatureHeaderError),
    /// More than one header.
    #[error("more than one Platte-Machine-Signature header")]
    Repeated,
    /// The key is not an ed25519 public key.
    #[error("Platte-Machine-Signature key is not an ed25519 public key")]
    BadKey,
    /// The signature does not match the key, timestamp and body.
    #[error("Platte-Machine-Signature does not verify over this body and timestamp")]
    BadSignature,
    /// The timestamp is too far from the server's clock.
    #[error(
        "Platte-Machine-Signature timestamp {ts} is {} s from the server's clock {now} \
         (at most {max_skew} s allowed): check the host's clock", ts.abs_diff(*now)
    )]
    Skewed {
        /// Signed timestamp.
        ts: i64,
        /// Server time.
        now: i64,
        /// Allowed skew.
        max_skew: u64,
    },
}

impl VerifyError {
    /// The metric outcome of this failure.
    pub fn outcome(&self) -> Outcome {
        match self {
            Self::Skewed { .. } => Outcome::Stale,
            _ => Outcome::BadSignature,
        }
    }
}

/// Verifies a parsed header over `body` at server time `now`: the signature first (so `stale`
/// always means a genuine signature), then the timestamp within `max_skew` seconds.
pub fn verify(
    sig: &MachineSignature,
    body: &[u8],
    now: i64,
    max_skew: u64,
) -> Result<VerifyingKey, VerifyError> {
    let key = VerifyingKey::from_bytes(&sig.public_key).map_err(|_| VerifyError::BadKey)?;
    let digest: [u8; 32] = Sha256::digest(body).into();
    key.verify_strict(
        &signed_message(sig.timestamp, &digest),
        &Signature::from_bytes(&sig.signature),
    )
    .map_err(|_| VerifyError::BadSignature)?;
    if sig.timestamp.abs_diff(now) > max_skew {
        return Err(VerifyError::Skewed {
            ts: sig.timestamp,
            now,
            max_skew,
        });
    }
    Ok(key)
}

/// Parses and verifies the `Platte-Machine-Signature` header of a request, if any.
pub fn verify_headers(
    headers: &HeaderMap,
    body: &[u8],
    now: i64,
    max_skew: u64,
) -> Option<Result<MachineSignature, VerifyError>> {
    let mut values = headers.get_all(HEADER_NAME).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return Some(Err(VerifyError::Repeated));
    }
    Some(
        MachineSignature::parse(first.as_bytes())
            .map_err(VerifyError::from)
            .and_then(|sig| verify(&sig, body, now, max_skew).map(|_| sig)),
    )
}

/// The result of [`Credentials::check`] for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// What was found.
    pub outcome: Outcome,
    /// Machine ids the request is authenticated for.
    pub authenticated: Vec<String>,
    /// Why a refused request is refused (empty otherwise).
    pub reason: String,
}

impl Verdict {
    fn of(outcome: Outcome, reason: String) -> Self {
        Self {
            outcome,
            authenticated: Vec::new(),
            reason,
        }
    }

    /// Whether the request is authenticated for `machine_id`.
    pub fn authenticates(&self, machine_id: &str) -> bool {
        self.authenticated.iter().any(|m| m == machine_id.trim())
    }
}

/// Checks requests' machine credentials against the bound keys.
#[derive(Debug)]
pub struct Credentials {
    store: Arc<dyn CredentialStore>,
    settings: CredentialSettings,
    clock: Arc<dyn Clock>,
    metrics: CredentialMetrics,
    /// Last accepted timestamp per public key (this process only; not persisted).
    last_accepted: Mutex<HashMap<[u8; 32], i64>>,
}

impl Credentials {
    /// A checker over `store` with `settings`, reading time from `clock`.
    pub fn new(
        store: Arc<dyn CredentialStore>,
        settings: CredentialSettings,
        clock: Arc<dyn Clock>,
        metrics: CredentialMetrics,
    ) -> Self {
        Self {
            store,
            settings,
            clock,
            metrics,
            last_accepted: Mutex::new(HashMap::new()),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &CredentialSettings {
        &self.settings
    }

    /// The store of bound keys.
    pub fn store(&self) -> &Arc<dyn CredentialStore> {
        &self.store
    }

    /// The metrics.
    pub fn metrics(&self) -> &CredentialMetrics {
        &self.metrics
    }

    /// Checks a request's header against `body` and the keys bound to `machine_ids` (the
    /// `machineid`s of its apps), binding the key on first use if allowed; counts the outcome.
    pub async fn check(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        machine_ids: &[&str],
    ) -> Result<Verdict, StoreError> {
        let verdict = self.decide(headers, body, machine_ids).await?;
        self.metrics.request(verdict.outcome);
        Ok(verdict)
    }

    async fn decide(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        machine_ids: &[&str],
    ) -> Result<Verdict, StoreError> {
        let now = self.clock.now();
        let sig = match verify_headers(headers, body, now, self.settings.max_skew_secs) {
            None => return Ok(Verdict::of(Outcome::None, String::new())),
            Some(Err(e)) => return Ok(Verdict::of(e.outcome(), e.to_string())),
            Some(Ok(sig)) => sig,
        };
        let key = STANDARD.encode(sig.public_key);
        let mut ids: Vec<&str> = machine_ids
            .iter()
            .map(|m| m.trim())
            .filter(|m| !m.is_empty())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        // Decide first, write last: a request that fails (another key for one of its ids, a
        // replayed timestamp) binds nothing.
        let mismatch = |machine: &str| {
            tracing::warn!(machine, key = %key, "machine credential: another key than the bound one");
            Verdict::of(
                Outcome::KeyMismatch,
                format!(
                    "machine {machine} is bound to another key than the one that signed this \
                     request (an operator may reset it with \
                     `update-server instance forget-credential {machine}`)"
                ),
            )
        };
        let mut authenticated = Vec::new();
        let mut to_bind = Vec::new();
        for machine in ids {
            match self.store.machine_credential(machine).await? {
                Some(b) if b.public_key == key => authenticated.push(machine.to_owned()),
                Some(_) => return Ok(mismatch(machine)),
                None if self.settings.trust_on_first_use && machine.len() <= MAX_MACHINE_ID_LEN => {
                    to_bind.push(machine);
                }
                None => {}
            }
        }
        let claims_a_key = !authenticated.is_empty() || !to_bind.is_empty();
        if claims_a_key && !self.accept_timestamp(sig.public_key, sig.timestamp) {
            return Ok(Verdict::of(
                Outcome::Stale,
                format!(
                    "Platte-Machine-Signature timestamp {} is older than the last one accepted \
                     from this key",
                    sig.timestamp
                ),
            ));
        }
        for machine in to_bind {
            // Another request may have bound the id meanwhile: the stored key decides.
            let bound = self.bind_first_use(machine, &key, now).await?;
            if bound.public_key != key {
                return Ok(mismatch(machine));
            }
            authenticated.push(machine.to_owned());
        }
        let outcome =
            if authenticated.is_empty() && !machine_ids.iter().all(|m| m.trim().is_empty()) {
                Outcome::Unenrolled
            } else {
                Outcome::Valid
            };
        Ok(Verdict {
            outcome,
            authenticated,
            reason: String::new(),
        })
    }

    async fn bind_first_use(
        &self,
        machine: &str,
        key: &str,
        now: i64,
    ) -> Result<MachineCredential, StoreError> {
        let cred = MachineCredential {
            machine_id: machine.to_owned(),
            public_key: key.to_owned(),
            source: CredentialSource::FirstUse,
            created_at: now,
        };
        let act = NewActivity {
            kind: "machine_credential_bound".into(),
            severity: "info",
            machine_id: Some(machine.to_owned()),
            message: format!("machine {machine} bound to key {key} on first use"),
            ..Default::default()
        };
        let bound = self.store.bind_first_use(&cred, &act).await?;
        if bound == cred {
            tracing::info!(machine, key, "machine credential bound on first use");
        }
        Ok(bound)
    }

    /// Remembers `ts` as the key's latest timestamp unless an accepted one was newer.
    fn accept_timestamp(&self, key: [u8; 32], ts: i64) -> bool {
        let mut map = match self.last_accepted.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        if map.len() >= MAX_REMEMBERED_KEYS && !map.contains_key(&key) {
            // Forget only what the skew check refuses anyway: a timestamp more than the skew
            // behind the clock can never be accepted again, so its entry protects nothing.
            // (Wiping everything would let a flood of fresh keys reopen replays for all.)
            let skew = i64::try_from(self.settings.max_skew_secs).unwrap_or(i64::MAX);
            let horizon = self.clock.now().saturating_sub(skew);
            map.retain(|_, last| *last >= horizon);
            if map.len() >= MAX_REMEMBERED_KEYS {
                // Still full of live keys (a flood of fresh ones): accept this timestamp without
                // remembering it rather than refuse real hosts; a replay inside the skew window
                // then repeats the same check-in, which the signature already allows.
                return true;
            }
        }
        let last = map.entry(key).or_insert(ts);
        if ts < *last {
            return false;
        }
        *last = ts;
        true
    }
}

/// The answer to an app check-in that a group requiring a credential ignores: `noupdate`
/// (hold `unauthenticated`), events and ping acknowledged, nothing recorded. `None` when the
/// check-in counts: it is authenticated, or neither the group its track names nor the group the
/// server has the machine in (`stored_group`, the id on its instance row) requires a
/// credential. The stored group matters: a forger must not escape a group's requirement by
/// naming another (or no) track and then report events against the machine's grants there.
/// `stored_group` is asked only when that decides it (off the common path: no group requires a
/// credential, or the request is authenticated, or its track names a group that requires one).
pub fn gate(
    cat: &Catalogue,
    app: &AppCheckIn,
    stored_group: impl FnOnce() -> Option<String>,
    verdict: &Verdict,
) -> Option<AppAnswer> {
    if !cat.credentials_required() || verdict.authenticates(&app.machine_id) {
        return None;
    }
    let app_id = normalize_appid(&app.appid);
    let requires = |g: Option<&crate::model::Group>| {
        g.is_some_and(|g| !g.policy.machine_credential.is_optional())
    };
    let required = requires(cat.resolve_group(&app_id, &app.track))
        || requires(stored_group().as_deref().and_then(|id| cat.group(id)));
    if !required {
        return None;
    }
    Some(AppAnswer::Known {
        events: app.events.len() + app.ignored_events,
        ping: app.ping,
        check: app
            .updatecheck
            .then(|| CheckAnswer::NoUpdate(NoUpdateReason::Hold(HOLD_UNAUTHENTICATED.to_owned()))),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use ed25519_dalek::{Signer as _, SigningKey};

    use super::*;

    const NOW: i64 = 1_765_000_000;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn sign(k: &SigningKey, ts: i64, body: &[u8]) -> MachineSignature {
        let digest: [u8; 32] = Sha256::digest(body).into();
        MachineSignature {
            public_key: k.verifying_key().to_bytes(),
            timestamp: ts,
            signature: k.sign(&signed_message(ts, &digest)).to_bytes(),
        }
    }

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HEADER_NAME, value.parse().unwrap());
        h
    }

    #[test]
    fn a_signature_verifies_over_its_body_and_time() {
        let k = key(1);
        let sig = sign(&k, NOW - 10, b"<request/>");
        assert_eq!(
            verify(&sig, b"<request/>", NOW, 300).unwrap(),
            k.verifying_key()
        );
        // Through the header, as the server reads it.
        let h = headers(&sig.to_header_value());
        assert_eq!(verify_headers(&h, b"<request/>", NOW, 300), Some(Ok(sig)));
        assert_eq!(verify_headers(&HeaderMap::new(), b"", NOW, 300), None);
    }

    #[test]
    fn the_documented_test_vector_verifies() {
        // docs/development/protocol.md, "Machine credential".
        let h = headers(
            "v=1; key=iojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w=; ts=1765000000; \
             sig=ItHobPL6HR4va6vpH9izVsSNeadV7RrQT4172BqZ40xQ49vbs8URzDCkebex2mnJpmWVNG0UvfJyIkqLMw8+Cg==",
        );
        let sig = verify_headers(&h, b"<request/>", NOW, 300)
            .unwrap()
            .unwrap();
        assert_eq!(sig.public_key, key(1).verifying_key().to_bytes());
        assert_eq!(sig, sign(&key(1), NOW, b"<request/>"));
    }

    #[test]
    fn a_changed_body_wrong_key_or_timestamp_fails() {
        let k = key(1);
        let sig = sign(&k, NOW, b"<request/>");
        assert_eq!(
            verify(&sig, b"<request />", NOW, 300),
            Err(VerifyError::BadSignature)
        );
        let other = MachineSignature {
            public_key: key(2).verifying_key().to_bytes(),
            ..sig
        };
        assert_eq!(
            verify(&other, b"<request/>", NOW, 300),
            Err(VerifyError::BadSignature)
        );
        // The timestamp is signed: moving it breaks the signature.
        let moved = MachineSignature {
            timestamp: NOW + 1,
            ..sig
        };
        assert_eq!(
            verify(&moved, b"<request/>", NOW, 300),
            Err(VerifyError::BadSignature)
        );
        // Skew: both directions, the limit included.
        for (ts, ok) in [
            (NOW - 300, true),
            (NOW + 300, true),
            (NOW - 301, false),
            (NOW + 301, false),
        ] {
            let r = verify(&sign(&k, ts, b"b"), b"b", NOW, 300);
            assert_eq!(r.is_ok(), ok, "ts {ts}: {r:?}");
            if let Err(e) = r {
                assert_eq!(e.outcome(), Outcome::Stale);
            }
        }
        // Not a curve point (y = 2 decompresses to none).
        let mut not_a_point = [0u8; 32];
        not_a_point[0] = 2;
        let bad_point = MachineSignature {
            public_key: not_a_point,
            ..sig
        };
        assert_eq!(
            verify(&bad_point, b"<request/>", NOW, 300),
            Err(VerifyError::BadKey)
        );
        assert_eq!(VerifyError::BadKey.outcome(), Outcome::BadSignature);
    }

    #[test]
    fn malformed_and_repeated_headers_are_bad_signatures() {
        let sig = sign(&key(1), NOW, b"b").to_header_value();
        for value in [
            sig.replace("key=", "key=*"),
            sig.replace("; ts=", "; ts=0"),
            format!(
                "v=1; key={}; ts={NOW}; sig=AAAA",
                STANDARD.encode([1u8; 32])
            ),
            format!(
                "v=1; key={}; ts={NOW}; sig=AAAA",
                STANDARD.encode([1u8; 16])
            ),
            "garbage".to_owned(),
        ] {
            let r = verify_headers(&headers(&value), b"b", NOW, 300).unwrap();
            assert_eq!(
                r.map_err(|e| e.outcome()),
                Err(Outcome::BadSignature),
                "{value}"
            );
        }
        let mut h = headers(&sig);
        h.append(HEADER_NAME, sig.parse().unwrap());
        assert_eq!(
            verify_headers(&h, b"b", NOW, 300),
            Some(Err(VerifyError::Repeated))
        );
    }

    #[test]
    fn an_older_timestamp_than_the_last_accepted_is_refused() {
        #[derive(Debug)]
        struct NoStore;
        impl CredentialStore for NoStore {
            fn machine_credential<'a>(
                &'a self,
                _: &'a str,
            ) -> crate::store::StoreFuture<'a, Option<MachineCredential>> {
                Box::pin(async { Ok(None) })
            }
            fn bind_first_use<'a>(
                &'a self,
                c: &'a MachineCredential,
                _: &'a NewActivity,
            ) -> crate::store::StoreFuture<'a, MachineCredential> {
                Box::pin(async move { Ok(c.clone()) })
            }
            fn enroll_credential<'a>(
                &'a self,
                _: &'a MachineCredential,
                _: &'a NewActivity,
            ) -> crate::store::StoreFuture<'a, ()> {
                Box::pin(async { Ok(()) })
            }
            fn forget_credential<'a>(
                &'a self,
                _: &'a str,
                _: &'a NewActivity,
                _: i64,
            ) -> crate::store::StoreFuture<'a, bool> {
                Box::pin(async { Ok(false) })
            }
        }
        let c = Credentials::new(
            Arc::new(NoStore),
            CredentialSettings::default(),
            crate::clock::ManualClock::new(NOW),
            CredentialMetrics::default(),
        );
        assert!(c.accept_timestamp([1; 32], NOW));
        assert!(c.accept_timestamp([1; 32], NOW), "the same second again");
        assert!(c.accept_timestamp([1; 32], NOW + 5));
        assert!(!c.accept_timestamp([1; 32], NOW + 4));
        assert!(c.accept_timestamp([2; 32], NOW - 100), "per key");
    }
}
