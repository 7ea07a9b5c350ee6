//! Extra files (Flatcar's OEM and extension sysexts): uploaded to a hosted package, listed in
//! the answer after the payload under the same codebase with their sizes and digests (as
//! Flatcar's post-install step looks them up), downloadable with `Range`, removable, and their
//! stored copies deleted with the package.

use reqwest::Method;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Digest as _;

use super::support::db::TestDb;
use super::{Env, FLATCAR, crau_file, point_stable_at};
use crate::both_databases;

/// Bytes standing in for a sysext image.
fn sysext(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(seed).wrapping_add(seed))
        .collect()
}

async fn extra_files_are_served_after_the_payload(db: TestDb) {
    let env = Env::new(&db).await;
    let (st, pkg) = env
        .publish(
            &format!("format=update_engine&app={FLATCAR}&version=3510.2.0&arch=amd64"),
            crau_file(),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{pkg}");
    let oem = sysext(7, 30_000);
    let podman = sysext(13, 12_345);
    let (st, v) = env
        .upload_file(&pkg["id"], "oem-azure.gz", oem.clone())
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let dir = tempfile::tempdir().unwrap();
    let podman_path = dir.path().join("flatcar-podman.gz");
    std::fs::write(&podman_path, &podman).unwrap();
    let id = pkg["id"].as_str().unwrap();
    let shown = env
        .cli(&["package", "add-file", id, podman_path.to_str().unwrap()])
        .await
        .unwrap();
    let names: Vec<&str> = shown["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["oem-azure.gz", "flatcar-podman.gz"], "{shown}");

    // Refused: the payload's own name, a name given twice, a name that is not a file name.
    for (name, want) in [
        ("update.gz", StatusCode::CONFLICT),
        ("oem-azure.gz", StatusCode::CONFLICT),
        ("oem%20azure.gz", StatusCode::BAD_REQUEST),
        ("a%2Fb", StatusCode::BAD_REQUEST),
    ] {
        let (st, v) = env.upload_file(&pkg["id"], name, b"x".to_vec()).await;
        assert_eq!(st, want, "{name}: {v}");
    }

    point_stable_at(&env, &pkg["id"], true).await;
    let uc = env
        .check("0123456789abcdef0123456789abcdef", "3510.1.0")
        .await;
    assert_eq!(uc.status.as_str(), "ok");
    let man = uc.target_manifest().unwrap();
    let listed: Vec<(&str, u64, bool)> = man
        .packages
        .iter()
        .map(|p| (p.name.as_str(), p.size, p.required))
        .collect();
    assert_eq!(
        listed,
        [
            ("update.gz", crau_file().len() as u64, true),
            ("oem-azure.gz", oem.len() as u64, false),
            ("flatcar-podman.gz", podman.len() as u64, false),
        ]
    );
    for (p, bytes) in man.packages[1..].iter().zip([&oem, &podman]) {
        let sha1: [u8; 20] = sha1::Sha1::digest(bytes).into();
        let sha256: [u8; 32] = sha2::Sha256::digest(bytes).into();
        assert_eq!(p.sha1().unwrap(), Some(sha1), "{}", p.name);
        assert_eq!(p.hash_sha256.as_deref(), Some(hex::encode(sha256).as_str()));
        // Downloadable under the same codebase, whole and by range.
        let url = format!("{}{}", uc.urls[0], p.name);
        let got = env.http.get(&url).send().await.unwrap();
        assert_eq!(got.status(), StatusCode::OK, "{url}");
        assert_eq!(got.bytes().await.unwrap().as_ref(), bytes.as_slice());
        let part = env
            .http
            .get(&url)
            .header("range", "bytes=100-199")
            .send()
            .await
            .unwrap();
        assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT, "{url}");
        assert_eq!(part.bytes().await.unwrap().as_ref(), &bytes[100..200]);
    }
    let missing = format!("{}{}", uc.urls[0], "oem-gce.gz");
    let got = env.http.get(&missing).send().await.unwrap();
    assert_eq!(got.status(), StatusCode::NOT_FOUND, "{missing}");

    // Removed: no longer listed nor served.
    let (st, v) = env
        .api(
            Method::DELETE,
            &format!("/packages/{id}/files/flatcar-podman.gz"),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let uc = env
        .check("0123456789abcdef0123456789abcdef", "3510.1.0")
        .await;
    let man = uc.target_manifest().unwrap();
    assert_eq!(man.packages.len(), 2, "{man:?}");
    let gone = format!("{}flatcar-podman.gz", uc.urls[0]);
    let got = env.http.get(&gone).send().await.unwrap();
    assert_eq!(got.status(), StatusCode::NOT_FOUND);
    let blob = |bytes: &[u8]| {
        let hex = hex::encode(sha2::Sha256::digest(bytes));
        env.dir
            .path()
            .join("data/packages")
            .join(&hex[..2])
            .join(hex)
    };
    assert!(!blob(&podman).exists(), "a removed file's copy goes");
    assert!(blob(&oem).exists());

    // Deleting the package deletes its files' copies too.
    let (st, v) = env
        .api(
            Method::PATCH,
            &format!("/apps/{FLATCAR}/channels/stable"),
            Some(json!({"update_engine_packages": {"amd64": null}})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (st, v): (StatusCode, Value) = env
        .api(Method::DELETE, &format!("/packages/{id}"), None)
        .await;
    assert!(st.is_success(), "{st} {v}");
    assert!(!blob(&oem).exists(), "the package's extra files go with it");
    assert!(!blob(&crau_file()).exists());
    env.server.shutdown().await.unwrap();
}

both_databases!(extra_files_are_served_after_the_payload);
