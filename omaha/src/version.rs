//! Ordering of OS release versions, the one both the update server and the agent use, so they
//! never disagree on what is an update and what is a downgrade.
//!
//! A version is semver-like (`3732.0.0`, `4000.0.0-beta.1`, `3340.0.0+nightly-1`) or dotted
//! numeric (`1.2.3.4`):
//!
//! - the release part is compared component by component, numbers numerically; a missing
//!   component counts as `0` (`1.2` = `1.2.0`);
//! - a component that is not a number (or does not fit in a `u64`) sorts after every number, and
//!   such components compare as text among themselves;
//! - a `-pre` suffix sorts before the release (`1.0.0-rc.1` < `1.0.0`); pre-releases compare
//!   component by component as above, and the one with fewer components sorts first
//!   (`1.0.0-beta` < `1.0.0-beta.1`);
//! - `+build` metadata is ignored (`1.2.0+b1` = `1.2.0+b2`).
//!
//! [`compare`] is a total preorder on all strings (reflexive, transitive, antisymmetric up to
//! `Equal`), so it may sort any input; [`is_valid`] says whether a string is a version the server
//! accepts at all.

use std::cmp::Ordering;

/// The longest version string [`is_valid`] accepts, in bytes.
pub const MAX_LEN: usize = 128;

/// Compares two version strings (see the module documentation for the rules).
pub fn compare(a: &str, b: &str) -> Ordering {
    let (a_core, a_pre) = split(a);
    let (b_core, b_pre) = split(b);
    let o = components(a_core, b_core, Fill::Zero);
    if o != Ordering::Equal {
        return o;
    }
    match (a_pre, b_pre) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        (Some(x), Some(y)) => components(x, y, Fill::ShorterFirst),
    }
}

/// Whether `v` is a usable version: non-empty, at most [`MAX_LEN`] bytes, printable ASCII without
/// spaces, and a release part of dot-separated decimal numbers (`3510.2.0`, `1.0.0-rc.1`,
/// `3340.0.0+nightly-1`; not `abc`, `1..2`, `1.2 3`).
pub fn is_valid(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= MAX_LEN
        && v.bytes().all(|b| b.is_ascii_graphic())
        && v.split(['+', '-']).next().is_some_and(|core| {
            !core.is_empty()
                && core
                    .split('.')
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        })
}

/// What stands for a component one side lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fill {
    /// `0` (the release part: `1.2` = `1.2.0`).
    Zero,
    /// Nothing: the shorter list sorts first (pre-releases: `beta` < `beta.1`).
    ShorterFirst,
}

/// Compares dot-separated components.
fn components(a: &str, b: &str, fill: Fill) -> Ordering {
    let mut ai = a.split('.');
    let mut bi = b.split('.');
    loop {
        let o = match (ai.next(), bi.next(), fill) {
            (None, None, _) => return Ordering::Equal,
            (Some(_), None, Fill::ShorterFirst) => return Ordering::Greater,
            (None, Some(_), Fill::ShorterFirst) => return Ordering::Less,
            (x, y, _) => component(x.unwrap_or("0"), y.unwrap_or("0")),
        };
        if o != Ordering::Equal {
            return o;
        }
    }
}

/// One component: numbers numerically and before text; text as text.
fn component(a: &str, b: &str) -> Ordering {
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        (Ok(_), Err(_)) => Ordering::Less,
        (Err(_), Ok(_)) => Ordering::Greater,
        (Err(_), Err(_)) => a.cmp(b),
    }
}

/// Splits off `+build` metadata, then a `-pre` suffix.
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
    use Ordering::*;
    use proptest::prelude::*;

    #[test]
    fn orders_numerically_not_lexically() {
        assert_eq!(compare("3510.2.0", "3510.2.0"), Equal);
        assert_eq!(compare("3510.2.0", "3510.10.0"), Less);
        assert_eq!(compare("3732.0.0", "3374.2.5"), Greater);
        assert_eq!(compare("4000.0.0", "3999.9.9"), Greater);
        assert_eq!(compare("10.0.0", "9.9.9"), Greater);
        assert_eq!(compare("1.2", "1.2.0"), Equal);
        assert_eq!(compare("1.2.3.4", "1.2.3"), Greater);
        assert_eq!(compare("1.02", "1.2"), Equal);
    }

    #[test]
    fn build_metadata_ignored_prerelease_first() {
        assert_eq!(compare("3340.0.0+nightly-1", "3340.0.0"), Equal);
        assert_eq!(compare("1.2.0+b1", "1.2.0+b2"), Equal);
        assert_eq!(compare("1.0.0-rc.1", "1.0.0"), Less);
        assert_eq!(compare("1.2.0-beta", "1.2.0"), Less);
        assert_eq!(compare("1.0.0-rc.2", "1.0.0-rc.10"), Less);
        assert_eq!(compare("1.2.0-beta.2", "1.2.0-beta.10"), Less);
        assert_eq!(compare("1.2.0-beta", "1.2.0-beta.1"), Less);
        assert_eq!(compare("1.2.0-beta.1", "1.2.0-beta"), Greater);
        // The release part decides before any pre-release.
        assert_eq!(compare("1.2.1-alpha", "1.2.0"), Greater);
    }

    #[test]
    fn text_sorts_after_numbers() {
        assert_eq!(compare("1.a", "1.999"), Greater);
        assert_eq!(compare("1.a", "1.b"), Less);
        assert_eq!(compare("1.a", "1"), Greater, "a missing component is 0");
        // Too large for a u64: text, after every number.
        assert_eq!(
            compare("18446744073709551616", "18446744073709551615"),
            Greater
        );
        assert_eq!(compare("1.0.0-alpha", "1.0.0-1"), Greater);
    }

    #[test]
    fn validity() {
        assert!(is_valid("3732.0.0"));
        assert!(is_valid("1.0.0-rc.1"));
        assert!(is_valid("3340.0.0+nightly-20220101"));
        assert!(is_valid(&"1".repeat(MAX_LEN)));
        assert!(!is_valid(&"1".repeat(MAX_LEN + 1)));
        assert!(!is_valid(""));
        assert!(!is_valid("abc"));
        assert!(!is_valid("1..2"));
        assert!(!is_valid(".1"));
        assert!(!is_valid("-rc"));
        assert!(!is_valid("1.2 3"));
        assert!(!is_valid("1.2\n"));
        assert!(!is_valid("1.é"));
    }

    /// Version-like strings, with the parts that make the rules interesting: numbers with
    /// leading zeros and beyond `u64`, text components, pre-releases and build metadata.
    fn version() -> impl Strategy<Value = String> {
        let part = prop_oneof![
            4 => (0u64..20).prop_map(|n| n.to_string()),
            1 => "0[0-9]{1,2}",
            1 => Just("18446744073709551616".to_owned()),
            1 => "[a-c]{1,2}",
        ];
        let dotted =
            |max| proptest::collection::vec(part.clone(), 1..max).prop_map(|p| p.join("."));
        (
            dotted(5),
            proptest::option::of(dotted(4)),
            proptest::option::of("[a-z0-9.-]{1,6}"),
        )
            .prop_map(|(core, pre, build)| {
                let mut v = core;
                if let Some(p) = pre {
                    v = format!("{v}-{p}");
                }
                if let Some(b) = build {
                    v = format!("{v}+{b}");
                }
                v
            })
    }

    proptest! {
        #[test]
        fn is_a_total_preorder(a in version(), b in version(), c in version()) {
            prop_assert_eq!(compare(&a, &a), Equal);
            prop_assert_eq!(compare(&a, &b), compare(&b, &a).reverse());
            if compare(&a, &b).is_le() && compare(&b, &c).is_le() {
                prop_assert!(compare(&a, &c).is_le(), "{} <= {} <= {}", a, b, c);
            }
            if compare(&a, &b).is_eq() {
                prop_assert_eq!(compare(&a, &c), compare(&b, &c));
            }
        }

        #[test]
        fn numeric_versions_order_as_number_tuples(
            a in proptest::collection::vec(0u64..1000, 3),
            b in proptest::collection::vec(0u64..1000, 3),
        ) {
            let text = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(".");
            prop_assert_eq!(compare(&text(&a), &text(&b)), a.cmp(&b));
            prop_assert!(is_valid(&text(&a)));
        }

        #[test]
        fn build_metadata_is_ignored_and_a_prerelease_comes_first(
            v in "[0-9]{1,4}(\\.[0-9]{1,4}){0,3}",
            pre in "[a-z0-9]{1,5}(\\.[a-z0-9]{1,5}){0,2}",
            build in "[a-z0-9.-]{1,8}",
        ) {
            prop_assert_eq!(compare(&format!("{v}+{build}"), &v), Equal);
            prop_assert_eq!(compare(&format!("{v}-{pre}"), &v), Less);
            prop_assert_eq!(compare(&format!("{v}-{pre}+{build}"), &format!("{v}-{pre}")), Equal);
        }

        #[test]
        fn never_panics_on_any_input(a in "\\PC{0,40}", b in "\\PC{0,40}") {
            let _ = compare(&a, &b);
            let _ = is_valid(&a);
        }
    }
}
