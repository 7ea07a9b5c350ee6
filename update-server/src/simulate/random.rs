//! Deterministic randomness: every draw is a hash (SplitMix64 finaliser) of the seed, the machine,
//! a per-machine counter and the purpose of the draw. A run is therefore reproducible from its
//! seed whatever order concurrent requests complete in, and draws for different decisions are
//! independent.

/// What a draw decides (keeps the draws of different decisions apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Offset of the first check within one check interval.
    FirstCheck = 1,
    /// Jitter of a check interval.
    CheckJitter = 2,
    /// Whether an attempt fails.
    Failure = 3,
    /// How an attempt fails (download or install, which code).
    FailureKind = 4,
    /// Delay between a grant and the 13/1 event.
    StartDelay = 5,
    /// Download time.
    Download = 6,
    /// Install time.
    Install = 7,
    /// Reboot delay.
    Reboot = 8,
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A 64-bit hash of the inputs.
pub fn hash(seed: u64, machine: u32, counter: u32, salt: u64) -> u64 {
    let h = mix(seed);
    let h = mix(h ^ u64::from(machine));
    let h = mix(h ^ (u64::from(counter) << 16));
    mix(h ^ salt)
}

/// A uniform draw in `[0, 1)`.
pub fn unit(seed: u64, machine: u32, counter: u32, purpose: Purpose) -> f64 {
    let h = hash(seed, machine, counter, purpose as u64);
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// `mean` seconds spread uniformly over `mean × (1 ± spread)`, at least one second.
pub fn spread(mean: u64, spread: f64, u: f64) -> i64 {
    let f = 1.0 - spread + 2.0 * spread * u;
    let v = (mean as f64 * f).round();
    if v < 1.0 { 1 } else { v as i64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_are_reproducible_uniform_and_independent() {
        let draws: Vec<f64> = (0..20_000)
            .map(|m| unit(42, m, 0, Purpose::Failure))
            .collect();
        assert!(draws.iter().all(|u| (0.0..1.0).contains(u)));
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        assert!((mean - 0.5).abs() < 0.01, "{mean}");
        let below = draws.iter().filter(|u| **u < 0.02).count();
        assert!((300..500).contains(&below), "{below} of 20000 below 2 %");
        assert_eq!(
            unit(42, 7, 3, Purpose::Failure),
            unit(42, 7, 3, Purpose::Failure)
        );
        assert_ne!(
            unit(42, 7, 3, Purpose::Failure),
            unit(42, 7, 3, Purpose::Download)
        );
        assert_ne!(
            unit(42, 7, 3, Purpose::Failure),
            unit(43, 7, 3, Purpose::Failure)
        );
        assert_ne!(
            unit(42, 7, 3, Purpose::Failure),
            unit(42, 7, 4, Purpose::Failure)
        );
    }

    #[test]
    fn spread_stays_in_range() {
        assert_eq!(spread(100, 0.5, 0.0), 50);
        assert_eq!(spread(100, 0.5, 0.999_999), 150);
        assert_eq!(spread(100, 0.0, 0.7), 100);
        assert_eq!(spread(0, 0.5, 0.7), 1);
    }
}
