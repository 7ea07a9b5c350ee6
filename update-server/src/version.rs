//! Version ordering for OS releases: semver-like (`3732.0.0`, `3340.0.0+nightly-1`) or dotted
//! numeric (`1.2.3.4`). Build metadata after `+` is ignored; a `-pre` suffix sorts before the
//! release, as in semver.

use std::cmp::Ordering;

/// Compares two version strings; unparsable components compare as text after numbers.
pub fn compare(a: &str, b: &str) -> Ordering {
    let (a_core, a_pre) = split(a);
    let (b_core, b_pre) = split(b);
    let mut ai = a_core.split('.');
    let mut bi = b_core.split('.');
    loop {
        match (ai.next(), bi.next()) {
            (None, None) => break,
            (x, y) => {
                let o = component(x.unwrap_or("0"), y.unwrap_or("0"));
                if o != Ordering::Equal {
                    return o;
                }
            }
        }
    }
    match (a_pre, b_pre) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        (Some(x), Some(y)) => {
            let mut xi = x.split('.');
            let mut yi = y.split('.');
            loop {
                match (xi.next(), yi.next()) {
                    (None, None) => return Ordering::Equal,
                    (None, Some(_)) => return Ordering::Less,
                    (Some(_), None) => return Ordering::Greater,
                    (Some(p), Some(q)) => {
                        let o = component(p, q);
                        if o != Ordering::Equal {
                            return o;
                        }
                    }
                }
            }
        }
    }
}

/// True when `v` is a usable version string (non-empty, bounded, printable, no spaces).
pub fn is_valid(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.bytes().all(|b| b.is_ascii_graphic())
        && v.split(['+', '-']).next().is_some_and(|c| {
            !c.is_empty()
                && c.split('.')
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        })
}

fn split(v: &str) -> (&str, Option<&str>) {
    let v = v.split('+').next().unwrap_or(v);
    match v.split_once('-') {
        Some((c, p)) => (c, Some(p)),
        None => (v, None),
    }
}

fn component(a: &str, b: &str) -> Ordering {
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        (Ok(_), Err(_)) => Ordering::Less,
        (Err(_), Ok(_)) => Ordering::Greater,
        (Err(_), Err(_)) => a.cmp(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Ordering::*;

    #[test]
    fn orders_numerically_not_lexically() {
        assert_eq!(compare("3732.0.0", "3374.2.5"), Greater);
        assert_eq!(compare("10.0.0", "9.9.9"), Greater);
        assert_eq!(compare("1.2", "1.2.0"), Equal);
        assert_eq!(compare("1.2.3.4", "1.2.3"), Greater);
    }

    #[test]
    fn build_metadata_ignored_prerelease_first() {
        assert_eq!(compare("3340.0.0+nightly-1", "3340.0.0"), Equal);
        assert_eq!(compare("1.0.0-rc.1", "1.0.0"), Less);
        assert_eq!(compare("1.0.0-rc.2", "1.0.0-rc.10"), Less);
    }

    #[test]
    fn validity() {
        assert!(is_valid("3732.0.0"));
        assert!(is_valid("3340.0.0+nightly-20220101"));
        assert!(!is_valid(""));
        assert!(!is_valid("abc"));
        assert!(!is_valid("1..2"));
        assert!(!is_valid("1.2 3"));
    }
}
