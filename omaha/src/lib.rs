//! Omaha v3 protocol as spoken by Flatcar/CoreOS update_engine and Nebraska: typed requests and
//! responses, a bounded parser and a serialiser. No I/O: callers own sockets, files and clocks.
//!
//! - Server side: [`parse_request`] a client's body, build a [`Response`] (e.g.
//!   [`UpdateCheckResponse::ok`], [`UpdateCheckResponse::noupdate`],
//!   [`AppResponse::unknown_application`]) and send [`Response::to_xml`].
//! - Agent side: build a [`Request`] ([`AppRequest::with_updatecheck`],
//!   [`EventRequest::download_started`]...), send [`Request::to_xml`], [`parse_response`] the
//!   answer.
//!
//! Parsing enforces [`Limits`] while tokenising, rejects DOCTYPE/entity declarations, invalid
//! UTF-8 and truncated input, skips unknown elements and attributes, and never panics. The dialect
//! is described in `docs/development/protocol.md`.
//!
//! ```
//! use omaha::{parse_request, AppResponse, Manifest, Package, Action, Response, DayStart,
//!             UpdateCheckResponse};
//!
//! let body = br#"<request protocol="3.0"><app appid="{E96281A6-D1AF-4BDE-9A0A-97B76E56DC57}"
//!     version="3374.2.5" track="stable"><updatecheck/></app></request>"#;
//! let req = parse_request(body).unwrap();
//! assert_eq!(req.apps[0].normalized_appid(), "e96281a6-d1af-4bde-9a0a-97b76e56dc57");
//!
//! let manifest = Manifest::new("3374.2.6")
//!     .with_package(Package::new("flatcar_production_update.gz", 1024)
//!         .with_sha1(&[0; 20]).required(true))
//!     .with_action(Action::postinstall(&[0; 32]).with_disable_payload_backoff(true));
//! let resp = Response::new("platte", DayStart::default()).with_app(
//!     AppResponse::new(&req.apps[0].appid)
//!         .with_updatecheck(UpdateCheckResponse::ok("https://example.invalid/pkg/", manifest)),
//! );
//! assert!(resp.to_xml().contains(r#"sha256="AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=""#));
//! ```

mod appid;
pub mod codes;
pub mod credential;
mod decode;
mod digest;
mod encode;
mod error;
mod limits;
pub mod request;
pub mod response;
pub mod version;
mod xml;

pub use appid::normalize_appid;
pub use codes::error_code::{DecodedErrorCode, ErrorCode, ErrorFlags};
pub use codes::event::{EventResult, EventType};
pub use codes::platte::PlatteCode;
pub use digest::{DigestError, decode_hex_or_base64};
pub use error::ParseError;
pub use limits::{Limits, MAX_ID_LEN, MAX_NAME_LEN};
pub use request::{AppRequest, EventRequest, Os, PingRequest, Request, UpdateCheckRequest};
pub use response::{
    Ack, Action, ActionEvent, AppResponse, AppStatus, DayStart, Manifest, Package, Response,
    UpdateCheckResponse, UpdateCheckStatus,
};

/// Parses a request body with [`Limits::REQUEST`].
pub fn parse_request(body: &[u8]) -> Result<Request, ParseError> {
    parse_request_with_limits(body, &Limits::REQUEST)
}

/// Parses a request body with the given limits.
pub fn parse_request_with_limits(body: &[u8], limits: &Limits) -> Result<Request, ParseError> {
    let root = xml::tree::parse(body, limits, &decode::request::SCHEMA)?;
    decode::request::request(&root, limits)
}

/// Parses a response body with [`Limits::RESPONSE`].
pub fn parse_response(body: &[u8]) -> Result<Response, ParseError> {
    parse_response_with_limits(body, &Limits::RESPONSE)
}

/// Parses a response body with the given limits.
pub fn parse_response_with_limits(body: &[u8], limits: &Limits) -> Result<Response, ParseError> {
    let root = xml::tree::parse(body, limits, &decode::response::SCHEMA)?;
    decode::response::response(&root)
}

impl Request {
    /// Serialises in update_engine's dialect (attribute order, explicit end tags, UTF-8
    /// declaration); values are escaped.
    pub fn to_xml(&self) -> String {
        encode::request::write(self)
    }
}

impl Response {
    /// Serialises so update_engine's parser accepts it; values are escaped.
    pub fn to_xml(&self) -> String {
        encode::response::write(self)
    }
}
