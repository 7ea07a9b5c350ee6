//! Bounded XML reading: tokenises with quick-xml, enforces [`Limits`] as it goes, rejects DOCTYPE
//! and unknown entities, and keeps only the elements named in a [`Schema`] (other subtrees are
//! skipped after being checked for well-formedness).

use std::borrow::Cow;

use quick_xml::Reader;
use quick_xml::errors::{Error as XmlError, SyntaxError};
use quick_xml::escape::{EscapeError, resolve_xml_entity, unescape_with};
use quick_xml::events::{BytesRef, BytesStart, Event};

use crate::error::ParseError;
use crate::limits::Limits;
use crate::xml::writer::is_xml_char;

/// Which elements a message model keeps: the root name and the `(parent, child)` pairs below it.
/// Each name is a parent under at most one path, so a pair identifies the position.
pub(crate) struct Schema {
    /// Name of the root element.
    pub root: &'static str,
    /// Kept `(parent, child)` element pairs.
    pub kept: &'static [(&'static str, &'static str)],
}

impl Schema {
    fn kept_name(&self, parent: &'static str, child: &[u8]) -> Option<&'static str> {
        self.kept
            .iter()
            .find(|(p, c)| *p == parent && c.as_bytes() == child)
            .map(|(_, c)| *c)
    }
}

/// A kept element: its name, where it starts, its attributes (unescaped) and kept children.
#[derive(Debug)]
pub(crate) struct Element {
    /// Element name (from the schema).
    pub name: &'static str,
    /// Byte offset of the `<` that opens it.
    pub offset: usize,
    /// Attributes in document order, values unescaped and normalised.
    pub attrs: Vec<(String, String)>,
    /// Kept child elements in document order.
    pub children: Vec<Element>,
}

impl Element {
    /// The value of attribute `name`, if present.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Children named `name`, in order.
    pub fn children(&self, name: &'static str) -> impl Iterator<Item = &Element> {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// The only child named `name`, if any; a second one is an error.
    pub fn child_once(&self, name: &'static str) -> Result<Option<&Element>, ParseError> {
        let mut it = self.children(name);
        let first = it.next();
        match it.next() {
            Some(dup) => Err(ParseError::DuplicateElement {
                offset: dup.offset,
                element: name.to_owned(),
            }),
            None => Ok(first),
        }
    }
}

/// One open element on the stack; `element` is `None` inside a skipped subtree.
struct Frame {
    element: Option<Element>,
    /// Length in bytes of the element's name as written (it starts at `offset + 1`).
    name_len: usize,
    offset: usize,
    apps: usize,
    events: usize,
}

/// Parses `input` into the tree of elements `schema` keeps, enforcing `limits`.
pub(crate) fn parse(input: &[u8], limits: &Limits, schema: &Schema) -> Result<Element, ParseError> {
    if input.len() > limits.max_body {
        return Err(ParseError::BodyTooLarge {
            size: input.len(),
            limit: limits.max_body,
        });
    }
    let text = std::str::from_utf8(input).map_err(|e| ParseError::InvalidUtf8 {
        offset: e.valid_up_to(),
    })?;
    let (base, text) = match text.strip_prefix('\u{feff}') {
        Some(rest) => ('\u{feff}'.len_utf8(), rest),
        None => (0, text),
    };
    if let Some((at, code)) = find_forbidden_char(text) {
        return Err(ParseError::InvalidChar {
            offset: base + at,
            code,
        });
    }
    Builder {
        limits,
        schema,
        base,
        stack: Vec::new(),
        root: None,
        elements: 0,
    }
    .run(text)
}

struct Builder<'l> {
    limits: &'l Limits,
    schema: &'l Schema,
    base: usize,
    stack: Vec<Frame>,
    root: Option<Element>,
    elements: usize,
}

impl Builder<'_> {
    fn run(mut self, text: &str) -> Result<Element, ParseError> {
        let mut reader = Reader::from_str(text);
        let config = reader.config_mut();
        config.check_end_names = true;
        config.expand_empty_elements = false;
        config.trim_text(false);
        loop {
            let pos = self.base + usize::try_from(reader.buffer_position()).unwrap_or(usize::MAX);
            let event = reader.read_event().map_err(|e| {
                let at = self.base + usize::try_from(reader.error_position()).unwrap_or(usize::MAX);
                self.xml_error(e, at)
            })?;
            match event {
                Event::Decl(decl) => {
                    if let Some(Ok(enc)) = decl.encoding() {
                        let enc = String::from_utf8_lossy(&enc).into_owned();
                        if !enc.eq_ignore_ascii_case("utf-8") && !enc.eq_ignore_ascii_case("utf8") {
                            return Err(ParseError::UnsupportedEncoding {
                                offset: pos,
                                encoding: enc,
                            });
                        }
                    }
                }
                Event::DocType(_) => return Err(ParseError::Doctype { offset: pos }),
                Event::Start(start) => self.start(&start, pos, false)?,
                Event::Empty(start) => self.start(&start, pos, true)?,
                Event::End(_) => self.end()?,
                Event::Text(t) => {
                    if self.stack.is_empty() && !t.iter().all(u8::is_ascii_whitespace) {
                        return Err(self.outside_root(pos));
                    }
                }
                Event::CData(_) => {
                    if self.stack.is_empty() {
                        return Err(self.outside_root(pos));
                    }
                }
                Event::GeneralRef(r) => {
                    if self.stack.is_empty() {
                        return Err(self.outside_root(pos));
                    }
                    check_reference(&r, pos)?;
                }
                Event::Comment(_) | Event::PI(_) => {}
                Event::Eof => break,
            }
        }
        if let Some(open) = self.stack.last() {
            let start = open.offset.saturating_sub(self.base) + 1;
            let name = text.get(start..start + open.name_len).unwrap_or("?");
            return Err(ParseError::Truncated {
                offset: self.base + text.len(),
                context: format!(
                    "input ended before </{name}> (opened at byte {})",
                    open.offset
                ),
            });
        }
        match self.root {
            Some(root) => Ok(root),
            None if text.trim_start().is_empty() => Err(ParseError::Empty),
            None => Err(ParseError::Truncated {
                offset: self.base + text.len(),
                context: "input ended before the root element".to_owned(),
            }),
        }
    }

    fn outside_root(&self, pos: usize) -> ParseError {
        if self.root.is_some() {
            ParseError::TrailingContent { offset: pos }
        } else {
            ParseError::Syntax {
                offset: pos,
                detail: "content before the root element".to_owned(),
            }
        }
    }

    fn xml_error(&self, e: XmlError, at: usize) -> ParseError {
        match e {
            XmlError::Syntax(s @ SyntaxError::InvalidBangMarkup) => ParseError::Syntax {
                offset: at,
                detail: s.to_string(),
            },
            XmlError::Syntax(SyntaxError::UnclosedDoctype) => ParseError::Doctype { offset: at },
            XmlError::Syntax(s) => ParseError::Truncated {
                offset: at,
                context: s.to_string(),
            },
            XmlError::Escape(e) => ParseError::Entity {
                offset: at,
                detail: e.to_string(),
            },
            other => ParseError::Syntax {
                offset: at,
                detail: other.to_string(),
            },
        }
    }

    fn start(&mut self, start: &BytesStart<'_>, pos: usize, empty: bool) -> Result<(), ParseError> {
        let raw_name = start.name();
        let raw_name = raw_name.as_ref();
        if self.stack.is_empty() && self.root.is_some() {
            return Err(ParseError::TrailingContent { offset: pos });
        }
        self.elements += 1;
        if self.elements > self.limits.max_elements {
            return Err(ParseError::TooManyElements {
                offset: pos,
                limit: self.limits.max_elements,
            });
        }
        if self.stack.len() + 1 > self.limits.max_depth {
            return Err(ParseError::TooDeep {
                offset: pos,
                limit: self.limits.max_depth,
            });
        }
        let depth = self.stack.len();
        let kept = match self.stack.last_mut() {
            None => {
                if raw_name != self.schema.root.as_bytes() {
                    return Err(ParseError::UnexpectedRoot {
                        offset: pos,
                        expected: self.schema.root,
                        found: String::from_utf8_lossy(raw_name).into_owned(),
                    });
                }
                Some(self.schema.root)
            }
            Some(parent) => match &parent.element {
                Some(p) => {
                    let kept = self.schema.kept_name(p.name, raw_name);
                    match kept {
                        Some("app") if depth == 1 => {
                            parent.apps += 1;
                            if parent.apps > self.limits.max_apps {
                                return Err(ParseError::TooManyApps {
                                    offset: pos,
                                    limit: self.limits.max_apps,
                                });
                            }
                        }
                        Some("event") if p.name == "app" => {
                            parent.events += 1;
                            if parent.events > self.limits.max_events_per_app {
                                return Err(ParseError::TooManyEvents {
                                    offset: pos,
                                    limit: self.limits.max_events_per_app,
                                });
                            }
                        }
                        _ => {}
                    }
                    kept
                }
                None => None,
            },
        };
        let element = match kept {
            Some(name) => Some(Element {
                name,
                offset: pos,
                attrs: self.attributes(start, name, pos)?,
                children: Vec::new(),
            }),
            None => {
                // Skipped, but its attributes are still checked (syntax, limits, entities).
                self.attributes(start, &String::from_utf8_lossy(raw_name), pos)?;
                None
            }
        };
        let frame = Frame {
            element,
            name_len: raw_name.len(),
            offset: pos,
            apps: 0,
            events: 0,
        };
        self.stack.push(frame);
        if empty { self.end() } else { Ok(()) }
    }

    fn end(&mut self) -> Result<(), ParseError> {
        // quick-xml checks end names, so an End always matches the top frame.
        let Some(frame) = self.stack.pop() else {
            return Ok(());
        };
        let Some(element) = frame.element else {
            return Ok(());
        };
        match self.stack.last_mut() {
            Some(parent) => {
                if let Some(p) = parent.element.as_mut() {
                    p.children.push(element);
                }
            }
            None => self.root = Some(element),
        }
        Ok(())
    }

    fn attributes(
        &self,
        start: &BytesStart<'_>,
        element: &str,
        pos: usize,
    ) -> Result<Vec<(String, String)>, ParseError> {
        let mut attrs: Vec<(String, String)> = Vec::new();
        let mut iter = start.attributes();
        iter.with_checks(false);
        for attr in iter {
            let attr = attr.map_err(|e| ParseError::Syntax {
                offset: pos,
                detail: format!("in attributes of <{element}>: {e}"),
            })?;
            if attrs.len() >= self.limits.max_attributes {
                return Err(ParseError::TooManyAttributes {
                    offset: pos,
                    element: element.to_owned(),
                    limit: self.limits.max_attributes,
                });
            }
            let key = utf8(attr.key.as_ref(), pos)?.to_owned();
            if attr.value.len() > self.limits.max_attribute_len {
                return Err(ParseError::AttributeTooLong {
                    offset: pos,
                    element: element.to_owned(),
                    attribute: key,
                    len: attr.value.len(),
                    limit: self.limits.max_attribute_len,
                });
            }
            if attrs.iter().any(|(k, _)| *k == key) {
                return Err(ParseError::DuplicateAttribute {
                    offset: pos,
                    element: element.to_owned(),
                    attribute: key,
                });
            }
            let value =
                unescape_attribute(utf8(&attr.value, pos)?).map_err(|e| ParseError::Entity {
                    offset: pos,
                    detail: format!("in attribute {key} of <{element}>: {e}"),
                })?;
            if let Some(c) = value.chars().find(|c| !is_xml_char(*c)) {
                return Err(ParseError::InvalidChar {
                    offset: pos,
                    code: u32::from(c),
                });
            }
            attrs.push((key, value));
        }
        Ok(attrs)
    }
}

/// The first character XML 1.0 forbids: a C0 control other than tab, LF, CR, or U+FFFE/U+FFFF
/// (every other char of a Rust string is allowed). Chunks without a suspicious byte are skipped
/// with a branch-free test, so plain text costs little.
fn find_forbidden_char(text: &str) -> Option<(usize, u32)> {
    const CHUNK: usize = 64;
    let suspicious = |b: u8| (b < 0x20 && b != b'\t' && b != b'\n' && b != b'\r') || b == 0xEF;
    let bytes = text.as_bytes();
    for (n, chunk) in bytes.chunks(CHUNK).enumerate() {
        if !chunk.iter().fold(false, |acc, &b| acc | suspicious(b)) {
            continue;
        }
        for (j, &b) in chunk.iter().enumerate() {
            let i = n * CHUNK + j;
            if b < 0x20 && suspicious(b) {
                return Some((i, u32::from(b)));
            }
            // U+FFFE and U+FFFF are EF BF BE and EF BF BF in UTF-8.
            if b == 0xEF && bytes.get(i + 1) == Some(&0xBF) {
                match bytes.get(i + 2) {
                    Some(0xBE) => return Some((i, 0xFFFE)),
                    Some(0xBF) => return Some((i, 0xFFFF)),
                    _ => {}
                }
            }
        }
    }
    None
}

/// A slice of the (already validated) input as `str`; quick-xml splits only at ASCII bytes, so
/// this cannot fail in practice, but it is reported rather than assumed.
fn utf8(bytes: &[u8], pos: usize) -> Result<&str, ParseError> {
    std::str::from_utf8(bytes).map_err(|e| ParseError::InvalidUtf8 {
        offset: pos + e.valid_up_to(),
    })
}

/// Applies XML attribute-value normalisation (literal tab, CR, LF become a space; CRLF one space)
/// and resolves the predefined entities and character references.
fn unescape_attribute(raw: &str) -> Result<String, EscapeError> {
    let normalised: Cow<'_, str> = if raw.contains(['\t', '\n', '\r']) {
        Cow::Owned(raw.replace("\r\n", " ").replace(['\t', '\n', '\r'], " "))
    } else {
        Cow::Borrowed(raw)
    };
    Ok(unescape_with(&normalised, resolve_xml_entity)?.into_owned())
}

/// Accepts a reference in text only if it is a valid character reference or a predefined entity.
fn check_reference(r: &BytesRef<'_>, pos: usize) -> Result<(), ParseError> {
    let name = String::from_utf8_lossy(r);
    let ok = match r.resolve_char_ref() {
        Ok(Some(c)) => {
            if !is_xml_char(c) {
                return Err(ParseError::InvalidChar {
                    offset: pos,
                    code: u32::from(c),
                });
            }
            true
        }
        Ok(None) => resolve_xml_entity(&name).is_some(),
        Err(_) => false,
    };
    if ok {
        Ok(())
    } else {
        Err(ParseError::Entity {
            offset: pos,
            detail: format!("undeclared entity &{name};"),
        })
    }
}
