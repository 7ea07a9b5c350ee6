//! Helpers shared by the integration tests (each test file includes this module with
//! `mod common;`): admin API requests, Omaha posts, trusted keys and signed payloads.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use reqwest::StatusCode;
use serde_json::Value;

/// One admin API request (`{base}/api/v1{path}`, bearer `token`, optional JSON body); returns
/// the status and the parsed body (`Null` when empty or not JSON).
pub async fn api(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut r = http
        .request(method, format!("{base}/api/v1{path}"))
        .bearer_auth(token);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    let st = resp.status();
    let text = resp.text().await.unwrap();
    (st, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Posts an Omaha request body to `{base}/v1/update/` with extra `headers`; returns the status
/// and the answer text.
pub async fn omaha_post(
    http: &reqwest::Client,
    base: &str,
    body: impl Into<reqwest::Body>,
    headers: &[(&str, &str)],
) -> (StatusCode, String) {
    let mut r = http
        .post(format!("{base}/v1/update/"))
        .header("content-type", "text/xml");
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let r = r.body(body).send().await.unwrap();
    (r.status(), r.text().await.unwrap())
}

/// The Prometheus text of `{base}/metrics`.
pub async fn metrics(http: &reqwest::Client, base: &str) -> String {
    let r = http.get(format!("{base}/metrics")).send().await.unwrap();
    assert!(
        r.status().is_success(),
        "GET {base}/metrics: {}",
        r.status()
    );
    r.text().await.unwrap()
}

/// Publishes a payload file through the admin API; returns the status and the package.
pub async fn publish(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    filename: &str,
    payload: Vec<u8>,
) -> (StatusCode, Value) {
    let r = http
        .post(format!("{base}/api/v1/packages?filename={filename}"))
        .bearer_auth(token)
        .body(payload)
        .send()
        .await
        .unwrap();
    let st = r.status();
    let text = r.text().await.unwrap();
    (
        st,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// A new signing key whose public half is trusted from `dir/keys/{name}.pub`.
pub fn trusted_key(dir: &Path, name: &str) -> payloads::SigningKey {
    let key = payloads::keys::generate_signing_key();
    let keys_dir = dir.join("keys");
    std::fs::create_dir_all(&keys_dir).unwrap();
    std::fs::write(
        keys_dir.join(format!("{name}.pub")),
        payloads::keys::public_key_pem(&key.verifying_key()),
    )
    .unwrap();
    key
}

/// `len` bytes of incompressible, deterministic data (an OS image stand-in).
pub fn image(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A payload of `version` for `app` (amd64) over `image`, signed by `key`.
pub fn signed_payload(
    key: &payloads::SigningKey,
    app: &str,
    version: &str,
    image: &[u8],
) -> Vec<u8> {
    let opts = payloads::BuildOptions::new(app, version, "amd64", payloads::unix_now() - 10);
    payloads::build_to_vec(image, std::slice::from_ref(key), &opts)
        .unwrap()
        .0
}
