//! The stable rollout bucket of a machine: `SHA-256("platte-rollout-v1\0" ‖ app ‖ "\0" ‖
//! machine_id)`, first 8 bytes as a big-endian `u64`, scaled to `0..10_000` (basis points).
//! A machine is inside a percentage `p` when `bucket < p × 100`. No server state is needed, raising
//! the percentage only adds machines, and a machine never flips in and out. Mixing in the app
//! keeps one machine from being first for every application.

use sha2::{Digest, Sha256};

/// Number of buckets (basis points: 0.01 % resolution).
pub const BUCKETS: u32 = 10_000;

/// The bucket (`0..BUCKETS`) of a machine for an application.
pub fn bucket(app_id: &str, machine_id: &str) -> u32 {
    let mut h = Sha256::new();
    h.update(b"platte-rollout-v1\0");
    h.update(app_id.as_bytes());
    h.update(b"\0");
    h.update(machine_id.as_bytes());
    let d = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&d[..8]);
    let x = u128::from(u64::from_be_bytes(first));
    u32::try_from((x * u128::from(BUCKETS)) >> 64).unwrap_or(BUCKETS - 1)
}

/// Whether the machine is inside `percent` (clamped to 0..=100) of the application's fleet.
pub fn in_percentage(app_id: &str, machine_id: &str, percent: f64) -> bool {
    let limit = (percent.clamp(0.0, 100.0) * 100.0).round();
    f64::from(bucket(app_id, machine_id)) < limit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_and_monotonic() {
        let b = bucket("app", "machine-1");
        assert_eq!(b, bucket("app", "machine-1"));
        assert!(b < BUCKETS);
        let mut was_in = false;
        for p in 0..=100 {
            let now_in = in_percentage("app", "machine-1", f64::from(p));
            assert!(!was_in || now_in, "flipped out at {p}%");
            was_in = now_in;
        }
        assert!(was_in, "100% includes everyone");
        assert!(!in_percentage("app", "machine-1", 0.0));
    }

    #[test]
    fn roughly_uniform_and_app_dependent() {
        let n = 20_000;
        let inside = (0..n)
            .filter(|i| in_percentage("app", &format!("m{i}"), 25.0))
            .count();
        assert!((4_500..5_500).contains(&inside), "{inside} of {n} in 25%");
        let differ = (0..200)
            .filter(|i| bucket("a", &format!("m{i}")) != bucket("b", &format!("m{i}")))
            .count();
        assert!(differ > 190);
    }
}
