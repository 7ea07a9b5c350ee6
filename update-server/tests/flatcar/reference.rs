//! Packages by reference: a release hosted elsewhere (here by a second Platte server, as an
//! upstream mirror would host it) is named by URL, size and digests, with its extra files, and
//! is recorded as given, verified once (a mismatch is refused, naming it), or hosted here, so
//! that clients are served entirely by this server after the upstream is gone.

use reqwest::Method;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Digest as _;

use super::support::db::TestDb;
use super::{Env, FLATCAR, MANIFEST_LEN, crau_file, point_stable_at};
use crate::both_databases;

/// Hex SHA-1 and SHA-256 of `bytes`.
fn digests(bytes: &[u8]) -> (String, String) {
    (
        hex::encode(sha1::Sha1::digest(bytes)),
        hex::encode(sha2::Sha256::digest(bytes)),
    )
}

async fn a_package_by_reference_is_recorded_verified_or_hosted(db: TestDb) {
    // The upstream: a release with an OEM sysext, hosted there.
    let upstream = Env::new(&TestDb::Sqlite).await;
    let payload = crau_file();
    let (st, up) = upstream
        .publish(
            &format!("format=update_engine&app={FLATCAR}&version=3510.2.0&arch=amd64"),
            payload.clone(),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{up}");
    let oem: Vec<u8> = (0..20_000u32).map(|i| (i % 253) as u8).collect();
    let (st, v) = upstream
        .upload_file(&up["id"], "oem-azure.gz", oem.clone())
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    point_stable_at(&upstream, &up["id"], true).await;
    let uc = upstream
        .check("00000000000000000000000000000001", "1.0.0")
        .await;
    let codebase = uc.urls[0].clone();
    let url = format!("{codebase}update.gz");
    let (sha1, sha256) = digests(&payload);
    let (oem_sha1, oem_sha256) = digests(&oem);
    let oem_ref = json!({"name": "oem-azure.gz", "size": oem.len(), "sha1": oem_sha1,
        "sha256": oem_sha256});
    let reference = |version: &str, extra: Value| {
        let mut r = json!({"app": FLATCAR, "version": version, "arch": "amd64", "url": url,
            "size": payload.len(), "sha1": sha1, "sha256": sha256, "files": [oem_ref]});
        for (k, v) in extra.as_object().unwrap() {
            r[k] = v.clone();
        }
        r
    };

    let env = Env::new(&db).await;
    let publish = |body: Value| env.api(Method::POST, "/packages/by-reference", Some(body));

    // Recorded as given: served from the upstream's codebase, with the given metadata size.
    let (st, given) = publish(reference("3510.1.0", json!({"metadata_size": 1020}))).await;
    assert_eq!(st, StatusCode::CREATED, "{given}");
    assert_eq!(
        (&given["external_url"], &given["metadata_size"]),
        (&json!(codebase), &json!(1020)),
        "{given}"
    );

    // Verified: a wrong digest or size is refused, naming what differs; nothing is recorded.
    let mut wrong = reference("3510.2.0", json!({"verify": true}));
    wrong["sha256"] = json!("00".repeat(32));
    let (st, v) = publish(wrong).await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(v.to_string().contains("SHA-256"), "{v}");
    let mut wrong = reference("3510.2.0", json!({"verify": true}));
    wrong["files"][0]["size"] = json!(oem.len() + 1);
    let (st, v) = publish(wrong).await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(v.to_string().contains("oem-azure.gz"), "{v}");
    let (st, v) = publish(reference(
        "3510.2.0",
        json!({"verify": true, "metadata_size": 7}),
    ))
    .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let (st, list) = env.api(Method::GET, "/packages", None).await;
    assert_eq!(
        (st, list.as_array().unwrap().len()),
        (StatusCode::OK, 1),
        "{list}"
    );
    // The CLI, verifying: the metadata size is read from the file.
    let oem_arg = format!("oem-azure.gz:{}:{oem_sha1}:{oem_sha256}", oem.len());
    let size = payload.len().to_string();
    let verified = env
        .cli(&[
            "package",
            "add-url",
            &url,
            "--app",
            FLATCAR,
            "--version",
            "3510.2.0",
            "--arch",
            "amd64",
            "--size",
            &size,
            "--sha1",
            &sha1,
            "--sha256",
            &sha256,
            "--file",
            &oem_arg,
            "--verify",
        ])
        .await
        .unwrap();
    assert_eq!(verified["external_url"], json!(codebase), "{verified}");
    assert_eq!(verified["metadata_size"], 20 + MANIFEST_LEN, "{verified}");
    // A Platte payload is never recorded unverified.
    let (st, v) = publish(reference("3510.2.1", json!({"format": "platte"}))).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");

    // Hosted: kept here, and served from here once the upstream is gone.
    let (st, hosted) = publish(reference("3510.3.0", json!({"host": true}))).await;
    assert_eq!(st, StatusCode::CREATED, "{hosted}");
    assert!(hosted["external_url"].is_null(), "{hosted}");
    upstream.server.shutdown().await.unwrap();
    point_stable_at(&env, &hosted["id"], true).await;
    let uc = env.check("0123456789abcdef0123456789abcdef", "1.0.0").await;
    assert!(uc.urls[0].starts_with(&env.base), "{:?}", uc.urls);
    let man = uc.target_manifest().unwrap();
    assert_eq!(man.version, "3510.3.0");
    for (p, bytes) in man.packages.iter().zip([&payload, &oem]) {
        let got = env
            .http
            .get(format!("{}{}", uc.urls[0], p.name))
            .send()
            .await
            .unwrap();
        assert_eq!(got.status(), StatusCode::OK, "{}", p.name);
        assert_eq!(got.bytes().await.unwrap().as_ref(), bytes.as_slice());
    }
    // With the upstream gone, verifying fails with the reason and records nothing.
    let (st, v) = publish(reference("3510.4.0", json!({"verify": true}))).await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(v.to_string().contains("downloading"), "{v}");
    env.server.shutdown().await.unwrap();
}

both_databases!(a_package_by_reference_is_recorded_verified_or_hosted);
