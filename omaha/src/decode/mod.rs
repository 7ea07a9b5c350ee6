//! Turning the bounded element tree into typed messages: attribute conversion helpers shared by
//! the request and response decoders.

pub(crate) mod request;
pub(crate) mod response;

use std::str::FromStr;

use crate::error::ParseError;
use crate::xml::tree::Element;

/// Checks `protocol="3.0"` on the root element.
pub(crate) fn check_protocol(root: &Element) -> Result<(), ParseError> {
    match root.attr("protocol") {
        Some(p) if p.trim() == "3.0" => Ok(()),
        other => Err(ParseError::UnsupportedProtocol {
            offset: root.offset,
            found: other.unwrap_or_default().to_owned(),
        }),
    }
}

/// An optional string attribute, kept as sent (empty stays `Some("")`).
pub(crate) fn string(el: &Element, name: &str) -> Option<String> {
    el.attr(name).map(str::to_owned)
}

/// A required string attribute.
pub(crate) fn required<'a>(el: &'a Element, name: &'static str) -> Result<&'a str, ParseError> {
    el.attr(name).ok_or(ParseError::MissingAttribute {
        offset: el.offset,
        element: el.name,
        attribute: name,
    })
}

fn invalid(el: &Element, name: &'static str, value: &str, expected: &'static str) -> ParseError {
    ParseError::InvalidAttribute {
        offset: el.offset,
        element: el.name,
        attribute: name,
        value: value.to_owned(),
        expected,
    }
}

/// An optional number; an empty or all-whitespace value counts as absent.
pub(crate) fn number<T: FromStr>(
    el: &Element,
    name: &'static str,
    expected: &'static str,
) -> Result<Option<T>, ParseError> {
    match el.attr(name).map(str::trim) {
        None | Some("") => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| invalid(el, name, v, expected)),
    }
}

/// A required number.
pub(crate) fn required_number<T: FromStr>(
    el: &Element,
    name: &'static str,
    expected: &'static str,
) -> Result<T, ParseError> {
    number(el, name, expected)?.ok_or(ParseError::MissingAttribute {
        offset: el.offset,
        element: el.name,
        attribute: name,
    })
}

/// An optional boolean: `true`/`false`/`1`/`0` in any case; empty counts as absent.
pub(crate) fn boolean(el: &Element, name: &'static str) -> Result<Option<bool>, ParseError> {
    match el.attr(name).map(str::trim) {
        None | Some("") => Ok(None),
        Some(v) if v.eq_ignore_ascii_case("true") || v == "1" => Ok(Some(true)),
        Some(v) if v.eq_ignore_ascii_case("false") || v == "0" => Ok(Some(false)),
        Some(v) => Err(invalid(el, name, v, "a boolean (true, false, 1 or 0)")),
    }
}

/// An error code: an unsigned 32-bit number, or a negative 32-bit one (Google clients send
/// HRESULTs) kept as its two's complement.
pub(crate) fn error_code(el: &Element, name: &'static str) -> Result<Option<u32>, ParseError> {
    const EXPECTED: &str = "a 32-bit integer";
    match number::<i64>(el, name, EXPECTED)? {
        None => Ok(None),
        Some(v) => u32::try_from(v)
            .ok()
            .or_else(|| {
                i32::try_from(v)
                    .ok()
                    .map(|n| u32::from_ne_bytes(n.to_ne_bytes()))
            })
            .map(Some)
            .ok_or_else(|| invalid(el, name, &v.to_string(), EXPECTED)),
    }
}
