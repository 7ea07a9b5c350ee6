//! Version ordering (`omaha::version::compare`), applied by the server and the agent to versions
//! that come from clients, manifests and operators: its documented promise is a total preorder
//! on all strings (so sorting by it never panics and the two sides never disagree). Checks
//! reflexivity, antisymmetry, transitivity and that equal versions compare alike with a third;
//! `is_valid` must not panic either.
//!
//! Input: up to three strings separated by NUL bytes.
#![no_main]

use std::cmp::Ordering;

use libfuzzer_sys::fuzz_target;
use omaha::version::{compare, is_valid};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.splitn(3, '\0');
    let a = parts.next().unwrap_or("");
    let b = parts.next().unwrap_or("");
    let c = parts.next().unwrap_or("");
    for v in [a, b, c] {
        let _ = is_valid(v);
        assert_eq!(compare(v, v), Ordering::Equal, "not reflexive: {v:?}");
    }
    let (ab, bc, ac) = (compare(a, b), compare(b, c), compare(a, c));
    assert_eq!(
        compare(b, a),
        ab.reverse(),
        "not antisymmetric: {a:?} {b:?}"
    );
    assert_eq!(
        compare(c, b),
        bc.reverse(),
        "not antisymmetric: {b:?} {c:?}"
    );
    if ab != Ordering::Greater && bc != Ordering::Greater {
        assert_ne!(
            ac,
            Ordering::Greater,
            "not transitive: {a:?} <= {b:?} <= {c:?}"
        );
    }
    if ab != Ordering::Less && bc != Ordering::Less {
        assert_ne!(
            ac,
            Ordering::Less,
            "not transitive: {a:?} >= {b:?} >= {c:?}"
        );
    }
    if ab == Ordering::Equal {
        assert_eq!(
            ac, bc,
            "{a:?} = {b:?} but they compare differently with {c:?}"
        );
    }
    let mut sorted = [a, b, c];
    sorted.sort_by(|x, y| compare(x, y));
});
