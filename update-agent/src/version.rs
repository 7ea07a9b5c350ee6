//! Ordering of OS release versions (`3510.2.0`, `4000.0.0-beta.1`, `1.2.3+build`), the same rules
//! the update server uses: dotted numeric components, a `-pre` suffix sorts before the release,
//! `+build` metadata is ignored.

use std::cmp::Ordering;

/// Compares two version strings; non-numeric components compare as text after numbers.
pub fn compare(a: &str, b: &str) -> Ordering {
    let (a_core, a_pre) = split(a);
    let (b_core, b_pre) = split(b);
    let o = components(a_core, b_core, "0");
    if o != Ordering::Equal {
        return o;
    }
    match (a_pre, b_pre) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        (Some(x), Some(y)) => components(x, y, ""),
    }
}

/// Compares dot-separated components; a missing component is `fill` (`"0"` for the release
/// part; for pre-releases the shorter list sorts first).
fn components(a: &str, b: &str, fill: &str) -> Ordering {
    let mut ai = a.split('.');
    let mut bi = b.split('.');
    loop {
        let o = match (ai.next(), bi.next()) {
            (None, None) => return Ordering::Equal,
            (Some(_), None) if fill.is_empty() => return Ordering::Greater,
            (None, Some(_)) if fill.is_empty() => return Ordering::Less,
            (x, y) => component(x.unwrap_or(fill), y.unwrap_or(fill)),
        };
        if o != Ordering::Equal {
            return o;
        }
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

/// Splits off `+build` metadata and a `-pre` suffix.
fn split(v: &str) -> (&str, Option<&str>) {
    let v = v.split('+').next().unwrap_or(v);
    match v.split_once('-') {
        Some((core, pre)) => (core, Some(pre)),
        None => (v, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_versions() {
        use Ordering::*;
        assert_eq!(compare("3510.2.0", "3510.2.0"), Equal);
        assert_eq!(compare("3510.2.0", "3510.10.0"), Less);
        assert_eq!(compare("4000.0.0", "3999.9.9"), Greater);
        assert_eq!(compare("1.2", "1.2.0"), Equal);
        assert_eq!(compare("1.2.0-beta", "1.2.0"), Less);
        assert_eq!(compare("1.2.0-beta.2", "1.2.0-beta.10"), Less);
        assert_eq!(compare("1.2.0-beta", "1.2.0-beta.1"), Less);
        assert_eq!(compare("1.2.0+b1", "1.2.0+b2"), Equal);
    }
}
