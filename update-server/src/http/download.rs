//! Package downloads: `GET|HEAD /packages/{sha256}/{name}` with a strong ETag (the SHA-256),
//! `If-None-Match`, single-range `Range` (`bytes=a-b`, `a-`, `-n`) with `If-Range`, and exact
//! `Content-Length`. Multi-range requests get the whole file.

use std::io::SeekFrom;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use super::AppState;
use super::error::ApiError;
use crate::blobs::is_sha256_hex;

/// A parsed single byte range (inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeSpec {
    /// No usable range: whole file.
    Full,
    /// `start..=end`.
    Bytes(u64, u64),
    /// Cannot be satisfied.
    Unsatisfiable,
}

/// Parses a `Range` header value against a file length.
pub fn parse_range(value: &str, len: u64) -> RangeSpec {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeSpec::Full;
    };
    if spec.contains(',') {
        return RangeSpec::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeSpec::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    let parsed = match (a.is_empty(), b.is_empty()) {
        (true, true) => return RangeSpec::Full,
        (true, false) => match b.parse::<u64>() {
            Ok(0) => return RangeSpec::Unsatisfiable,
            Ok(n) => Some((len.saturating_sub(n), len.saturating_sub(1))),
            Err(_) => return RangeSpec::Full,
        },
        (false, _) => {
            let Ok(start) = a.parse::<u64>() else {
                return RangeSpec::Full;
            };
            let end = if b.is_empty() {
                len.saturating_sub(1)
            } else {
                match b.parse::<u64>() {
                    Ok(e) if e >= start => e.min(len.saturating_sub(1)),
                    _ => return RangeSpec::Full,
                }
            };
            Some((start, end))
        }
    };
    match parsed {
        Some((s, e)) if len > 0 && s < len && s <= e => RangeSpec::Bytes(s, e),
        _ => RangeSpec::Unsatisfiable,
    }
}

/// Serves a hosted package file: a payload, or one of its extra files, by name under the
/// payload's codebase (`/packages/<payload sha256>/<name>`), or a delta payload under its own
/// (`/packages/<delta sha256>/<name>`).
pub async fn download(
    State(st): State<AppState>,
    Path((sha, name)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if !is_sha256_hex(&sha) {
        return Err(ApiError::NotFound(format!("package {sha}")));
    }
    let cat = st.service.catalogue.get();
    let content = if let Some(pkg) = cat.hosted_package_by_sha256(&sha) {
        // The payload, or one of its extra files (served under the payload's codebase).
        if pkg.filename == name {
            sha
        } else if let Some(f) = cat.hosted_extra_file(&sha, &name) {
            f.sha256_hex.clone()
        } else {
            return Err(ApiError::NotFound(format!("package file {name}")));
        }
    } else if let Some(d) = cat.delta_by_sha256(&sha) {
        // A delta payload, under its own codebase.
        if d.filename != name {
            return Err(ApiError::NotFound(format!("package file {name}")));
        }
        sha
    } else {
        return Err(ApiError::NotFound(format!("package {sha}")));
    };
    let sha = content;
    let path = st.blobs.path_of(&sha);
    let mut file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| ApiError::Internal(format!("opening {}: {e}", path.display())))?;
    let len = file
        .metadata()
        .await
        .map_err(|e| ApiError::Internal(format!("stat {}: {e}", path.display())))?
        .len();
    let etag = format!("\"{sha}\"");
    let etag_hv = HeaderValue::from_str(&etag).map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut base = HeaderMap::new();
    base.insert(header::ETAG, etag_hv);
    base.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    base.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    base.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    // A download shares the dashboard's origin: never rendered, never sniffed as a page.
    base.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    base.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment"),
    );
    base.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox"),
    );

    if let Some(inm) = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        && inm.split(',').any(|t| t.trim() == etag || t.trim() == "*")
    {
        return Ok((StatusCode::NOT_MODIFIED, base).into_response());
    }
    let if_range_ok = headers
        .get(header::IF_RANGE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.trim() == etag);
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(r) if if_range_ok => parse_range(r, len),
        _ => RangeSpec::Full,
    };
    let (status, start, count) = match range {
        RangeSpec::Full => (StatusCode::OK, 0, len),
        RangeSpec::Bytes(s, e) => {
            let cr = format!("bytes {s}-{e}/{len}");
            base.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&cr).map_err(|e| ApiError::Internal(e.to_string()))?,
            );
            (StatusCode::PARTIAL_CONTENT, s, e - s + 1)
        }
        RangeSpec::Unsatisfiable => {
            let cr = format!("bytes */{len}");
            base.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&cr).map_err(|e| ApiError::Internal(e.to_string()))?,
            );
            base.insert(header::CONTENT_LENGTH, HeaderValue::from(0u64));
            return Ok((StatusCode::RANGE_NOT_SATISFIABLE, base).into_response());
        }
    };
    base.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    if method == Method::HEAD {
        return Ok((status, base).into_response());
    }
    file.seek(SeekFrom::Start(start))
        .await
        .map_err(|e| ApiError::Internal(format!("seek {}: {e}", path.display())))?;
    let body = Body::from_stream(ReaderStream::with_capacity(file.take(count), 64 * 1024));
    Ok((status, base, body).into_response())
}

#[cfg(test)]
mod tests {
    use super::RangeSpec::*;
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Bytes(0, 9));
        assert_eq!(parse_range("bytes=90-", 100), Bytes(90, 99));
        assert_eq!(parse_range("bytes=-10", 100), Bytes(90, 99));
        assert_eq!(parse_range("bytes=-1000", 100), Bytes(0, 99));
        assert_eq!(parse_range("bytes=50-1000", 100), Bytes(50, 99));
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Full);
        assert_eq!(parse_range("bytes=9-3", 100), Full);
        assert_eq!(parse_range("items=0-1", 100), Full);
        assert_eq!(parse_range("bytes=x-", 100), Full);
        assert_eq!(parse_range("bytes=0-", 0), Unsatisfiable);
    }
}
