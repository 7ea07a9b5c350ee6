//! Minimal XML writing helpers with attribute escaping.

use std::fmt::Write as _;

/// Appends `value` escaped for a double-quoted attribute: markup characters become entities,
/// tab/CR/LF become character references (so they survive attribute-value normalisation), and
/// characters XML 1.0 forbids become U+FFFD.
pub(crate) fn escape_into(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c if is_xml_char(c) => out.push(c),
            _ => out.push('\u{fffd}'),
        }
    }
}

/// Whether `c` is allowed in an XML 1.0 document.
pub(crate) fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}' | '\u{10000}'..)
}

/// Builds an element's start tag attribute by attribute.
pub(crate) struct Tag<'a> {
    out: &'a mut String,
}

impl<'a> Tag<'a> {
    /// Writes `indent` spaces and `<name`.
    pub fn open(out: &'a mut String, indent: usize, name: &str) -> Self {
        for _ in 0..indent {
            out.push(' ');
        }
        out.push('<');
        out.push_str(name);
        Tag { out }
    }

    /// Writes ` name="value"` with the value escaped.
    pub fn attr(self, name: &str, value: &str) -> Self {
        self.out.push(' ');
        self.out.push_str(name);
        self.out.push_str("=\"");
        escape_into(self.out, value);
        self.out.push('"');
        self
    }

    /// Writes the attribute if `value` is `Some`.
    pub fn attr_opt(self, name: &str, value: Option<&str>) -> Self {
        match value {
            Some(v) => self.attr(name, v),
            None => self,
        }
    }

    /// Writes a numeric attribute if `value` is `Some`.
    pub fn num_opt<N: std::fmt::Display>(self, name: &str, value: Option<N>) -> Self {
        match value {
            Some(v) => {
                let _ = write!(self.out, " {name}=\"{v}\"");
                self
            }
            None => self,
        }
    }

    /// Writes a numeric attribute.
    pub fn num<N: std::fmt::Display>(self, name: &str, value: N) -> Self {
        self.num_opt(name, Some(value))
    }

    /// Writes `name="true"`/`"false"` if `value` is `Some`.
    pub fn bool_opt(self, name: &str, value: Option<bool>) -> Self {
        self.attr_opt(name, value.map(bool_str))
    }

    /// Writes `name="1"`/`"0"` if `value` is `Some`.
    pub fn bit_opt(self, name: &str, value: Option<bool>) -> Self {
        self.attr_opt(name, value.map(|b| if b { "1" } else { "0" }))
    }

    /// Ends the start tag with `>` (children follow).
    pub fn finish(self) {
        self.out.push('>');
    }

    /// Ends the tag as `/>`.
    pub fn finish_empty(self) {
        self.out.push_str("/>");
    }
}

/// `"true"` or `"false"`.
pub(crate) fn bool_str(b: bool) -> &'static str {
    if b { "true" } else { "false" }
}

/// Writes `indent` spaces and `</name>` and a newline.
pub(crate) fn close(out: &mut String, indent: usize, name: &str) {
    for _ in 0..indent {
        out.push(' ');
    }
    out.push_str("</");
    out.push_str(name);
    out.push_str(">\n");
}

#[cfg(test)]
mod tests {
    use super::escape_into;

    #[test]
    fn escapes_markup_whitespace_and_forbidden_chars() {
        let mut s = String::new();
        escape_into(&mut s, "a&b<c>d\"e'f\tg\nh\ri\u{1}j\u{fffe}é");
        assert_eq!(
            s,
            "a&amp;b&lt;c&gt;d&quot;e&apos;f&#9;g&#10;h&#13;i\u{fffd}j\u{fffd}é"
        );
    }
}
