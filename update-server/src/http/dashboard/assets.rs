//! `/ui/static/{name}`: the embedded stylesheet and script, cached for a year (their names
//! change with their content).

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::dashboard::assets::find;

/// Serves an embedded file by its digest name.
pub async fn serve(Path(name): Path<String>) -> Response {
    match find(&name) {
        Some(a) => (
            [
                (header::CONTENT_TYPE, a.content_type),
                (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
            ],
            a.body,
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
