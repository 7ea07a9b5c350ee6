//! The error returned when a message cannot be parsed: what was wrong and at which byte offset.

use thiserror::Error;

/// Why an Omaha message was rejected. Every variant that concerns a position in the input carries
/// `offset`, the byte offset from the start of the body of the element or construct at fault.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The body is longer than [`Limits::max_body`](crate::Limits::max_body).
    #[error("body is {size} bytes, more than the limit of {limit} bytes")]
    BodyTooLarge {
        /// Size of the body in bytes.
        size: usize,
        /// The limit in force.
        limit: usize,
    },
    /// The body is empty or only whitespace.
    #[error("empty body: no XML document")]
    Empty,
    /// The body is not valid UTF-8.
    #[error("invalid UTF-8 at byte {offset}")]
    InvalidUtf8 {
        /// Offset of the first byte that is not valid UTF-8.
        offset: usize,
    },
    /// A character XML 1.0 forbids (a control character other than tab, CR, LF; U+FFFE; U+FFFF),
    /// literally or as a character reference.
    #[error("character U+{code:04X} at byte {offset} is not allowed in XML")]
    InvalidChar {
        /// Offset of the character, or of the element whose attribute references it.
        offset: usize,
        /// The code point.
        code: u32,
    },
    /// The XML declaration names an encoding other than UTF-8.
    #[error("unsupported encoding {encoding:?} declared at byte {offset}; only UTF-8 is accepted")]
    UnsupportedEncoding {
        /// Offset of the XML declaration.
        offset: usize,
        /// The declared encoding.
        encoding: String,
    },
    /// A `<!DOCTYPE>` (and with it any entity declaration) was found; Omaha never needs one.
    #[error("DOCTYPE or entity declaration at byte {offset} is not allowed")]
    Doctype {
        /// Offset of the declaration.
        offset: usize,
    },
    /// An entity reference other than the five predefined ones or a character reference.
    #[error("unknown or malformed entity reference at byte {offset}: {detail}")]
    Entity {
        /// Offset of the element or text holding the reference.
        offset: usize,
        /// What was wrong with it.
        detail: String,
    },
    /// The input ended inside markup or before the root element was closed.
    #[error("truncated input at byte {offset}: {context}")]
    Truncated {
        /// Start of the construct left unclosed (a tag, comment...), or the end of the input
        /// when an element was left open.
        offset: usize,
        /// What was left open, e.g. "input ended before `</app>` (opened at byte 24)".
        context: String,
    },
    /// The input is not well-formed XML (reported by the XML tokenizer).
    #[error("malformed XML at byte {offset}: {detail}")]
    Syntax {
        /// Offset of the error.
        offset: usize,
        /// The tokenizer's description.
        detail: String,
    },
    /// The root element is not the one expected (`<request>` or `<response>`).
    #[error("root element at byte {offset} is <{found}>, expected <{expected}>")]
    UnexpectedRoot {
        /// Offset of the root element.
        offset: usize,
        /// The element that was expected.
        expected: &'static str,
        /// The element that was found.
        found: String,
    },
    /// Content (an element or non-whitespace text) after the root element was closed.
    #[error("content after the root element at byte {offset}")]
    TrailingContent {
        /// Offset of the extra content.
        offset: usize,
    },
    /// Elements are nested deeper than [`Limits::max_depth`](crate::Limits::max_depth).
    #[error("element at byte {offset} is nested deeper than the limit of {limit}")]
    TooDeep {
        /// Offset of the element that exceeded the limit.
        offset: usize,
        /// The limit in force.
        limit: usize,
    },
    /// More elements than [`Limits::max_elements`](crate::Limits::max_elements).
    #[error("element at byte {offset} exceeds the limit of {limit} elements per message")]
    TooManyElements {
        /// Offset of the element that exceeded the limit.
        offset: usize,
        /// The limit in force.
        limit: usize,
    },
    /// More `<app>` elements than [`Limits::max_apps`](crate::Limits::max_apps).
    #[error("<app> at byte {offset} exceeds the limit of {limit} apps per message")]
    TooManyApps {
        /// Offset of the `<app>` that exceeded the limit.
        offset: usize,
        /// The limit in force.
        limit: usize,
    },
    /// More `<event>` elements in one app than
    /// [`Limits::max_events_per_app`](crate::Limits::max_events_per_app).
    #[error("<event> at byte {offset} exceeds the limit of {limit} events per app")]
    TooManyEvents {
        /// Offset of the `<event>` that exceeded the limit.
        offset: usize,
        /// The limit in force.
        limit: usize,
    },
    /// An element has more attributes than
    /// [`Limits::max_attributes`](crate::Limits::max_attributes).
    #[error("<{element}> at byte {offset} has more than {limit} attributes")]
    TooManyAttributes {
        /// Offset of the element.
        offset: usize,
        /// The element's name.
        element: String,
        /// The limit in force.
        limit: usize,
    },
    /// An attribute value is longer than
    /// [`Limits::max_attribute_len`](crate::Limits::max_attribute_len), or a request attribute a
    /// server keeps is longer than [`Limits::max_id_len`](crate::Limits::max_id_len) or
    /// [`Limits::max_name_len`](crate::Limits::max_name_len) (then `len` is the length of the
    /// unescaped value).
    #[error(
        "attribute {attribute} of <{element}> at byte {offset} is {len} bytes, more than the limit of {limit}"
    )]
    AttributeTooLong {
        /// Offset of the element.
        offset: usize,
        /// The element's name.
        element: String,
        /// The attribute's name.
        attribute: String,
        /// Length of the value in bytes (raw, or unescaped for the per-attribute bounds).
        len: usize,
        /// The limit in force.
        limit: usize,
    },
    /// The same attribute appears twice on one element.
    #[error("attribute {attribute} appears twice on <{element}> at byte {offset}")]
    DuplicateAttribute {
        /// Offset of the element.
        offset: usize,
        /// The element's name.
        element: String,
        /// The repeated attribute.
        attribute: String,
    },
    /// An element that may appear only once in its parent appears again.
    #[error("<{element}> at byte {offset} appears more than once in its parent")]
    DuplicateElement {
        /// Offset of the second occurrence.
        offset: usize,
        /// The element's name.
        element: String,
    },
    /// `protocol` is not `3.0`.
    #[error("unsupported protocol {found:?} at byte {offset}; only \"3.0\" is spoken")]
    UnsupportedProtocol {
        /// Offset of the root element.
        offset: usize,
        /// The value found (empty when the attribute is missing).
        found: String,
    },
    /// A required attribute is missing.
    #[error("<{element}> at byte {offset} lacks the required attribute {attribute}")]
    MissingAttribute {
        /// Offset of the element.
        offset: usize,
        /// The element's name.
        element: &'static str,
        /// The missing attribute.
        attribute: &'static str,
    },
    /// An attribute value does not have the expected form (number, boolean...).
    #[error("attribute {attribute}={value:?} of <{element}> at byte {offset} is not {expected}")]
    InvalidAttribute {
        /// Offset of the element.
        offset: usize,
        /// The element's name.
        element: &'static str,
        /// The attribute's name.
        attribute: &'static str,
        /// The offending value (as unescaped).
        value: String,
        /// What was expected, e.g. "an unsigned 64-bit integer".
        expected: &'static str,
    },
}
