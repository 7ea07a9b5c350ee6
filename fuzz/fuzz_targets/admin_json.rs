//! The admin API's JSON bodies: deserialisation as axum's `Json` extractor does it
//! (`serde_json::from_slice`) of every body type, then the validation the handlers run on a
//! group's rollout policy (`RolloutSpec::parse_valid`). A valid spec must store and read back
//! unchanged, and the rollout engine's pure uses of it (ramp percentage, next step, windows)
//! must not panic and stay in range.
//!
//! Input: one selector byte (which body type), then the JSON body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use maintenance_window::Timestamp;
use update_server::fleet::apps::{CreateApp, UpdateApp};
use update_server::fleet::channels::{CreateChannel, UpdateChannel};
use update_server::fleet::groups::{CreateGroup, UpdateGroup};
use update_server::model::GroupPolicy;
use update_server::rollout::RolloutSpec;
use update_server::rollout::ramp::{effective_percent, next_step};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let policy = match selector % 7 {
        0 => serde_json::from_slice::<CreateApp>(body).map(|_| None),
        1 => serde_json::from_slice::<UpdateApp>(body).map(|_| None),
        2 => serde_json::from_slice::<CreateChannel>(body).map(|_| None),
        3 => serde_json::from_slice::<UpdateChannel>(body).map(|_| None),
        4 => serde_json::from_slice::<CreateGroup>(body).map(|g| Some(g.policy)),
        5 => serde_json::from_slice::<UpdateGroup>(body).map(|g| g.policy),
        _ => serde_json::from_slice::<GroupPolicy>(body).map(Some),
    };
    let Ok(Some(policy)) = policy else {
        return;
    };
    let Ok(spec) = RolloutSpec::parse_valid(&policy) else {
        return;
    };
    // What the admin API stores is what the engine reads back.
    let mut stored = policy.clone();
    spec.store_into(&mut stored).expect("a valid spec stores");
    let text = serde_json::to_vec(&stored).expect("a policy serialises");
    let back: GroupPolicy = serde_json::from_slice(&text).expect("a stored policy reads back");
    assert_eq!(
        RolloutSpec::parse_valid(&back).expect("a stored spec is valid"),
        spec
    );

    let start = spec.ramp.as_ref().map_or(0, |r| r.start_at);
    for now in [
        i64::MIN,
        start.saturating_sub(1),
        start,
        start.saturating_add(3_600),
        i64::MAX,
    ] {
        let p = effective_percent(&spec, now);
        assert!((0.0..=100.0).contains(&p), "percentage {p} at {now}");
        if let Some((at, p)) = next_step(&spec, now) {
            assert!(at > now, "next step at {at} is not after {now}");
            assert!((0.0..=100.0).contains(&p), "next percentage {p}");
        }
    }
    let t = Timestamp::from_second(1_774_747_800).expect("in range");
    for w in &spec.windows {
        let _ = w.contains(t);
        if let Some(next) = w.next_start_after(t) {
            assert!(next > t);
        }
    }
});
