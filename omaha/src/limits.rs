//! Hard limits applied while parsing, so hostile input costs little.

/// Bounds checked while a message is tokenised; exceeding any of them is a [`ParseError`].
///
/// [`Limits::REQUEST`] suits a server reading client requests, [`Limits::RESPONSE`] an agent
/// reading server responses (which may be larger: several manifests and packages).
///
/// [`ParseError`]: crate::ParseError
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Maximum body size in bytes.
    pub max_body: usize,
    /// Maximum element nesting depth (the root element is depth 1).
    pub max_depth: usize,
    /// Maximum number of elements of any kind, known or skipped.
    pub max_elements: usize,
    /// Maximum number of `<app>` elements.
    pub max_apps: usize,
    /// Maximum number of `<event>` elements in one `<app>`.
    pub max_events_per_app: usize,
    /// Maximum number of attributes on one element.
    pub max_attributes: usize,
    /// Maximum length in bytes of one raw (still escaped) attribute value.
    pub max_attribute_len: usize,
    /// Maximum length in bytes of a request attribute that identifies something a server keeps
    /// per machine: `appid`, `machineid`, `bootid`, and the versions (`version`, `nextversion`,
    /// `alephversion`, an event's `previousversion` and `nextversion`). Checked on the
    /// unescaped value; only requests are checked.
    pub max_id_len: usize,
    /// Maximum length in bytes of any other request attribute a server keeps or uses as a
    /// name: `machinealias`, `track`, `oem`, `oemversion`, `board`, and `<os arch>`. Checked on
    /// the unescaped value; only requests are checked.
    pub max_name_len: usize,
}

/// [`Limits::max_id_len`] of [`Limits::REQUEST`]: 128 bytes (a machine id is 32 hex digits, a
/// braced GUID 38 characters, a version rarely more than 40).
pub const MAX_ID_LEN: usize = 128;

/// [`Limits::max_name_len`] of [`Limits::REQUEST`]: 255 bytes (a fully qualified host name, as
/// an alias, has at most 253).
pub const MAX_NAME_LEN: usize = 255;

impl Limits {
    /// Limits for requests read by a server: 64 KiB body (as Nebraska), depth 16, 32 apps,
    /// 64 events per app, 64 attributes per element, 4 KiB per attribute value, 4096 elements;
    /// identities and versions at most [`MAX_ID_LEN`] bytes, names at most [`MAX_NAME_LEN`].
    pub const REQUEST: Limits = Limits {
        max_body: 64 * 1024,
        max_depth: 16,
        max_elements: 4096,
        max_apps: 32,
        max_events_per_app: 64,
        max_attributes: 64,
        max_attribute_len: 4 * 1024,
        max_id_len: MAX_ID_LEN,
        max_name_len: MAX_NAME_LEN,
    };

    /// Limits for responses read by an agent: as [`Limits::REQUEST`] but a 1 MiB body (as
    /// go-omaha) and 16384 elements.
    pub const RESPONSE: Limits = Limits {
        max_body: 1024 * 1024,
        max_elements: 16 * 1024,
        ..Limits::REQUEST
    };
}

impl Default for Limits {
    /// The request limits, [`Limits::REQUEST`].
    fn default() -> Self {
        Limits::REQUEST
    }
}
