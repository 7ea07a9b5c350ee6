//! The agent's one HTTP client, configured in one place from `[http]`: proxy (the `*_PROXY`
//! environment variables are honoured unless a proxy is configured), an extra CA certificate,
//! connect and stall (read) timeouts, and the user agent.

use std::path::PathBuf;

use crate::config::HttpSettings;

/// `User-Agent` of every request.
pub const USER_AGENT: &str = concat!("platte-agent/", env!("CARGO_PKG_VERSION"));

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The CA file cannot be read.
    #[error("cannot read http.ca_file {}: {source}", path.display())]
    ReadCa {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The CA file holds no PEM certificate.
    #[error("http.ca_file {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", path.display())]
    NotPem {
        /// The file.
        path: PathBuf,
    },
    /// The CA file is not a valid PEM certificate.
    #[error("http.ca_file {} is not a valid PEM certificate: {source}", path.display())]
    BadCa {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        source: reqwest::Error,
    },
    /// The proxy URL is not usable.
    #[error("http.proxy {url}: {source}")]
    BadProxy {
        /// The URL.
        url: String,
        /// The error.
        source: reqwest::Error,
    },
    /// The TLS backend could not be set up.
    #[error("cannot build the HTTP client: {0}")]
    Build(#[source] reqwest::Error),
}

/// What a PEM certificate starts with.
const CERT_MARKER: &str = "-----BEGIN CERTIFICATE-----";
/// Largest CA file read.
const MAX_CA_BYTES: u64 = 1 << 20;

/// Builds the client every request of the agent goes through.
///
/// `connect_timeout` bounds connecting; `stall_timeout` bounds the wait for any byte of a
/// response (so a stalled download is dropped and resumed); whole-request timeouts are set per
/// request (Omaha requests use `request_timeout`, downloads have none).
pub fn client(s: &HttpSettings) -> Result<reqwest::Client, HttpError> {
    let mut b = reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .connect_timeout(s.connect_timeout)
        .read_timeout(s.stall_timeout)
        .redirect(reqwest::redirect::Policy::limited(5));
    if let Some(path) = &s.ca_file {
        let pem = read_bounded(path).map_err(|source| HttpError::ReadCa {
            path: path.clone(),
            source,
        })?;
        if !pem
            .windows(CERT_MARKER.len())
            .any(|w| w == CERT_MARKER.as_bytes())
        {
            return Err(HttpError::NotPem { path: path.clone() });
        }
        let cert = reqwest::Certificate::from_pem(&pem).map_err(|source| HttpError::BadCa {
            path: path.clone(),
            source,
        })?;
        b = b.add_root_certificate(cert);
    }
    if let Some(url) = &s.proxy {
        let proxy = reqwest::Proxy::all(url.as_str()).map_err(|source| HttpError::BadProxy {
            url: url.to_string(),
            source,
        })?;
        b = b.proxy(proxy);
    }
    b.build().map_err(HttpError::Build)
}

fn read_bounded(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_CA_BYTES + 1)
        .read_to_end(&mut buf)?;
    if buf.len() as u64 > MAX_CA_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {MAX_CA_BYTES} bytes"),
        ));
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn settings() -> HttpSettings {
        HttpSettings {
            proxy: None,
            ca_file: None,
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
            stall_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn builds_and_rejects_bad_ca() {
        assert!(client(&settings()).is_ok());
        let d = tempfile::tempdir().unwrap();
        let ca = d.path().join("ca.pem");
        std::fs::write(&ca, b"not a certificate").unwrap();
        let mut s = settings();
        s.ca_file = Some(ca.clone());
        let e = client(&s).unwrap_err();
        assert!(matches!(e, HttpError::NotPem { .. }), "{e}");
        assert!(e.to_string().contains("ca.pem"), "{e}");
        s.ca_file = Some(d.path().join("missing.pem"));
        assert!(matches!(client(&s), Err(HttpError::ReadCa { .. })));
    }
}
