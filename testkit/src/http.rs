//! Requests to an update server as tests make them: the admin API, package publishing, Omaha
//! posts and the metrics page. Each panics when the request cannot be made (the server under
//! test is on loopback) and returns the status and the answer for the test to check.
#![allow(clippy::unwrap_used, clippy::expect_used)]

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

/// Publishes a payload file through the admin API; returns the status and the answer text.
pub async fn publish_text(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    filename: &str,
    payload: Vec<u8>,
) -> (StatusCode, String) {
    let r = http
        .post(format!("{base}/api/v1/packages?filename={filename}"))
        .bearer_auth(token)
        .body(payload)
        .send()
        .await
        .unwrap();
    (r.status(), r.text().await.unwrap())
}

/// Publishes a payload file through the admin API; returns the status and the package (the
/// answer as a JSON string when it is not JSON).
pub async fn publish(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    filename: &str,
    payload: Vec<u8>,
) -> (StatusCode, Value) {
    let (st, text) = publish_text(http, base, token, filename, payload).await;
    (
        st,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}
