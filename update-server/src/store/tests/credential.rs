//! Machine credentials ([`crate::store::CredentialStore`]) on both databases.

use crate::model::NewActivity;
use crate::store::credential::{CredentialSource, MachineCredential};
use crate::store::testkit::{TestStores, both_stores};

fn cred(machine: &str, key: &str, source: CredentialSource) -> MachineCredential {
    MachineCredential {
        machine_id: machine.into(),
        public_key: key.into(),
        source,
        created_at: 100,
    }
}

async fn first_use_binds_once_and_enrollment_replaces(kit: &mut TestStores) {
    let s = &kit.credentials;
    let act = NewActivity::default();
    assert_eq!(s.machine_credential("m").await.unwrap(), None);
    let first = cred("m", "A", CredentialSource::FirstUse);
    assert_eq!(s.bind_first_use(&first, &act).await.unwrap(), first);
    // A second first use keeps the first key.
    let second = cred("m", "B", CredentialSource::FirstUse);
    assert_eq!(s.bind_first_use(&second, &act).await.unwrap(), first);
    let enrolled = cred("m", "C", CredentialSource::Enrolled);
    s.enroll_credential(&enrolled, &act).await.unwrap();
    assert_eq!(s.machine_credential("m").await.unwrap(), Some(enrolled));
    assert!(s.forget_credential("m", &act, 5).await.unwrap());
    assert!(!s.forget_credential("m", &act, 5).await.unwrap());
    assert_eq!(s.machine_credential("m").await.unwrap(), None);
}

both_stores!(first_use_binds_once_and_enrollment_replaces);
