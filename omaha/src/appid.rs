//! Application id normalisation: one rule used everywhere appids are compared.

/// Normalises an Omaha appid for comparison: surrounding whitespace and one pair of braces are
/// removed and ASCII letters are lowercased, so `{E96281A6-D1AF-4BDE-9A0A-97B76E56DC57}` and
/// `e96281a6-d1af-4bde-9a0a-97b76e56dc57` compare equal (as Nebraska matches them).
///
/// A lone leading or trailing brace is removed as well. Messages keep the appid as sent; call this
/// only to compare or to look up.
pub fn normalize_appid(appid: &str) -> String {
    let trimmed = appid.trim();
    let trimmed = trimmed.strip_prefix('{').unwrap_or(trimmed);
    let trimmed = trimmed.strip_suffix('}').unwrap_or(trimmed);
    trimmed.trim().to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::normalize_appid;

    #[test]
    fn braces_and_case_are_removed() {
        let want = "e96281a6-d1af-4bde-9a0a-97b76e56dc57";
        assert_eq!(
            normalize_appid("{E96281A6-D1AF-4BDE-9A0A-97B76E56DC57}"),
            want
        );
        assert_eq!(
            normalize_appid("e96281a6-d1af-4bde-9a0a-97b76e56dc57"),
            want
        );
        assert_eq!(
            normalize_appid(" {e96281a6-D1AF-4bde-9a0a-97b76e56dc57} "),
            want
        );
    }

    #[test]
    fn inner_braces_are_kept() {
        assert_eq!(normalize_appid("{a{b}c}"), "a{b}c");
        assert_eq!(normalize_appid(""), "");
        assert_eq!(normalize_appid("{}"), "");
    }
}
