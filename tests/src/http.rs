//! A small blocking HTTP client for the admin API and health routes (reqwest on a private
//! current-thread runtime, so the harness stays synchronous).

use serde_json::Value;

use crate::error::{Error, Result, io};

/// Blocking JSON-over-HTTP client.
#[derive(Debug)]
pub struct Http {
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
}

/// An answer: status and body text.
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Body text.
    pub body: String,
}

impl Answer {
    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

impl Http {
    /// A client without proxies (tests talk to loopback only).
    pub fn new() -> Result<Http> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io("starting an async runtime", "tokio"))?;
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|source| Error::Http {
                method: "CLIENT".into(),
                url: String::new(),
                source,
            })?;
        Ok(Http { rt, client })
    }

    /// Sends a request with an optional bearer token and JSON body.
    pub fn request(
        &self,
        method: reqwest::Method,
        url: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Answer> {
        let m = method.to_string();
        self.rt.block_on(async {
            let mut r = self.client.request(method, url);
            if let Some(t) = token {
                r = r.bearer_auth(t);
            }
            if let Some(b) = body {
                r = r.json(b);
            }
            let err = |source| Error::Http {
                method: m.clone(),
                url: url.to_owned(),
                source,
            };
            let resp = r.send().await.map_err(err)?;
            let status = resp.status().as_u16();
            let body = resp.text().await.map_err(err)?;
            Ok(Answer { status, body })
        })
    }

    /// POSTs `body` as `content_type` (an Omaha request, for one), without a token.
    pub fn post_text(&self, url: &str, content_type: &str, body: String) -> Result<Answer> {
        self.rt.block_on(async {
            let err = |source| Error::Http {
                method: "POST".into(),
                url: url.to_owned(),
                source,
            };
            let resp = self
                .client
                .post(url)
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(body)
                .send()
                .await
                .map_err(err)?;
            let status = resp.status().as_u16();
            let body = resp.text().await.map_err(err)?;
            Ok(Answer { status, body })
        })
    }

    /// GET `url`; `Ok(None)` when the connection itself fails (server not up).
    pub fn probe(&self, url: &str) -> Option<u16> {
        self.request(reqwest::Method::GET, url, None, None)
            .ok()
            .map(|a| a.status)
    }
}

/// Checks that `answer` has a 2xx status and returns its JSON.
pub fn expect_ok(method: &str, url: &str, answer: Answer) -> Result<Value> {
    if (200..300).contains(&answer.status) {
        Ok(answer.json())
    } else {
        Err(Error::Api {
            method: method.to_owned(),
            url: url.to_owned(),
            status: answer.status,
            body: answer.body.chars().take(2000).collect(),
        })
    }
}
