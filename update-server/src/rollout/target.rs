//! Which version to serve a machine: the channel's version, unless it is blocked, a floor
//! (mandatory intermediate version) lies between, or it is older than the machine's (served only
//! with an explicit `allow_downgrade`, marked as a rollback).

use super::spec::RolloutSpec;
use crate::version::compare;

/// The version a machine should be offered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetChoice {
    /// Offer this version; `rollback` marks a deliberate downgrade.
    Serve {
        /// Version to serve.
        version: String,
        /// Downgrade marker (`_rollback="true"`).
        rollback: bool,
    },
    /// Nothing to do.
    UpToDate,
    /// The channel's version is blocked.
    Blocked,
}

/// Chooses the version for a machine at `client` when the channel names `channel`;
/// `has_package(v)` says whether a package of version `v` exists for the machine's arch.
pub fn choose(
    spec: &RolloutSpec,
    client: &str,
    channel: &str,
    has_package: impl Fn(&str) -> bool,
) -> TargetChoice {
    let blocked = |v: &str| spec.blocked_versions.iter().any(|b| b == v);
    if blocked(channel) {
        return TargetChoice::Blocked;
    }
    match compare(client, channel) {
        std::cmp::Ordering::Less => {
            let floor = spec
                .floors
                .iter()
                .filter(|f| {
                    compare(client, f).is_lt()
                        && compare(f, channel).is_lt()
                        && !blocked(f)
                        && has_package(f)
                })
                .min_by(|a, b| compare(a, b));
            TargetChoice::Serve {
                version: floor.map_or_else(|| channel.to_owned(), Clone::clone),
                rollback: false,
            }
        }
        std::cmp::Ordering::Greater if spec.allow_downgrade => TargetChoice::Serve {
            version: channel.to_owned(),
            rollback: true,
        },
        _ => TargetChoice::UpToDate,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve(v: &str, rollback: bool) -> TargetChoice {
        TargetChoice::Serve {
            version: v.into(),
            rollback,
        }
    }

    #[test]
    fn floors_are_served_first_in_order() {
        let s = RolloutSpec {
            floors: vec!["3.0.0".into(), "2.0.0".into(), "9.0.0".into()],
            ..Default::default()
        };
        let all = |_: &str| true;
        assert_eq!(choose(&s, "1.0.0", "4.0.0", all), serve("2.0.0", false));
        assert_eq!(choose(&s, "2.0.0", "4.0.0", all), serve("3.0.0", false));
        assert_eq!(choose(&s, "3.0.0", "4.0.0", all), serve("4.0.0", false));
        // A floor without a package for the arch is skipped rather than stalling the machine.
        assert_eq!(
            choose(&s, "1.0.0", "4.0.0", |v| v != "2.0.0"),
            serve("3.0.0", false)
        );
    }

    #[test]
    fn block_list_and_downgrade_marker() {
        let mut s = RolloutSpec {
            blocked_versions: vec!["4.0.0".into()],
            ..Default::default()
        };
        assert_eq!(
            choose(&s, "1.0.0", "4.0.0", |_| true),
            TargetChoice::Blocked
        );
        s.blocked_versions.clear();
        assert_eq!(
            choose(&s, "5.0.0", "4.0.0", |_| true),
            TargetChoice::UpToDate
        );
        assert_eq!(
            choose(&s, "4.0.0", "4.0.0", |_| true),
            TargetChoice::UpToDate
        );
        s.allow_downgrade = true;
        assert_eq!(choose(&s, "5.0.0", "4.0.0", |_| true), serve("4.0.0", true));
        assert_eq!(
            choose(&s, "4.0.0", "4.0.0", |_| true),
            TargetChoice::UpToDate
        );
    }
}
