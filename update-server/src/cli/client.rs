//! HTTP client of the admin API: bearer token, JSON in and out, API errors turned into
//! readable messages.

use anyhow::{Context as _, bail};
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// A client bound to a server and token.
#[derive(Debug, Clone)]
pub struct ApiClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl ApiClient {
    /// A client for `server` (e.g. `http://127.0.0.1:8370`).
    pub fn new(server: &str, token: Option<&str>) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .build()
            .context("building HTTP client")?;
        Ok(Self {
            base: format!("{}/api/v1", server.trim_end_matches('/')),
            token: token.map(str::to_owned),
            http,
        })
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<reqwest::Body>,
        json: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method.clone(), &url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(j) = json {
            req = req.json(j);
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/octet-stream")
                .body(b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {url}"))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .with_context(|| format!("reading answer of {method} {url}"))?;
        if status == StatusCode::NO_CONTENT {
            return Ok(Value::Null);
        }
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if !status.is_success() {
            let msg = v["error"]["message"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| v.to_string());
            let code = v["error"]["code"].as_str().unwrap_or("error");
            bail!("{method} {url} failed ({status}, {code}): {msg}");
        }
        Ok(v)
    }

    /// GET.
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(Method::GET, path, None, None).await
    }
    /// POST JSON.
    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(Method::POST, path, None, Some(body)).await
    }
    /// PATCH JSON.
    pub async fn patch(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(Method::PATCH, path, None, Some(body)).await
    }
    /// PUT JSON.
    pub async fn put(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(Method::PUT, path, None, Some(body)).await
    }
    /// DELETE.
    pub async fn delete(&self, path: &str) -> anyhow::Result<Value> {
        self.send(Method::DELETE, path, None, None).await
    }
    /// POST a file as the raw body (streamed).
    pub async fn upload(&self, path: &str, file: tokio::fs::File) -> anyhow::Result<Value> {
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
        self.send(Method::POST, path, Some(body), None).await
    }
    /// PUT a file as the raw body (streamed).
    pub async fn upload_put(&self, path: &str, file: tokio::fs::File) -> anyhow::Result<Value> {
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
        self.send(Method::PUT, path, Some(body), None).await
    }
}
