//! Which grants a rollout still counts, so retention keeps them whatever their age: the rule,
//! computed from plain data ([`RolloutFacts`]) that a store reads inside the transaction that
//! deletes (so a channel re-pointed meanwhile is seen). A store implements only the reads and
//! turns each group's [`Protection`] into its SQL conditions.

use std::collections::HashMap;

use crate::model::GroupPolicy;
use crate::rollout::RolloutSpec;

/// One group as retention needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupFacts {
    /// The group's id.
    pub id: String,
    /// The channel it follows, if any.
    pub channel: Option<String>,
    /// Its rollout policy as stored (JSON of [`GroupPolicy`]).
    pub policy: String,
}

/// What the protection rule is computed from, read in one transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RolloutFacts {
    /// The version of every package a channel points at (every architecture), by channel id.
    pub channel_versions: HashMap<String, Vec<String>>,
    /// Every group.
    pub groups: Vec<GroupFacts>,
}

/// What of a group's grants its rollout still counts, as of one transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Protection {
    /// Versions whose grants are kept whatever their age: the group's target (the version of
    /// every package its channel points at), its floors, and the target of every group gated on
    /// this one (the gate counts this group's completions of that version). Sorted, no repeats.
    pub versions: Vec<String>,
    /// Grants made after this instant are kept: they count against the group's rate limit.
    pub rate_since: Option<i64>,
    /// Keep every grant of the group (its policy could not be read).
    pub keep_all: bool,
}

/// The protection of every group at `now` (Unix seconds), by group id. A group without an
/// entry (deleted since its grants were made) protects nothing.
pub fn protections(facts: &RolloutFacts, now: i64) -> HashMap<String, Protection> {
    let mut out: HashMap<String, Protection> = HashMap::new();
    let mut gates: Vec<(String, Vec<String>)> = Vec::new();
    for g in &facts.groups {
        let targets = g
            .channel
            .as_ref()
            .and_then(|c| facts.channel_versions.get(c).cloned())
            .unwrap_or_default();
        let spec = serde_json::from_str::<GroupPolicy>(&g.policy)
            .ok()
            .and_then(|p| RolloutSpec::from_policy(&p).ok());
        let Some(spec) = spec else {
            // Unreadable policy: nothing is known about what the rollout counts; keep it all.
            tracing::warn!(group = %g.id, "group policy unreadable; its grants are not pruned");
            out.insert(
                g.id.clone(),
                Protection {
                    keep_all: true,
                    ..Protection::default()
                },
            );
            continue;
        };
        if let Some(gate) = &spec.gate {
            gates.push((gate.group.clone(), targets.clone()));
        }
        let mut versions = targets;
        versions.extend(spec.floors.iter().cloned());
        let rate_since = spec
            .rate_limit
            .map(|r| now.saturating_sub(i64::try_from(r.period_secs).unwrap_or(i64::MAX)));
        let p = out.entry(g.id.clone()).or_default();
        p.versions.extend(versions);
        p.rate_since = rate_since;
    }
    for (gate_group, targets) in gates {
        out.entry(gate_group).or_default().versions.extend(targets);
    }
    for p in out.values_mut() {
        p.versions.sort();
        p.versions.dedup();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_000_000;

    fn group(id: &str, channel: Option<&str>, policy: &str) -> GroupFacts {
        GroupFacts {
            id: id.into(),
            channel: channel.map(Into::into),
            policy: policy.into(),
        }
    }

    fn facts() -> RolloutFacts {
        RolloutFacts {
            channel_versions: HashMap::from([
                ("c".to_owned(), vec!["2.0.0".to_owned(), "2.0.0".to_owned()]),
                ("c2".to_owned(), vec!["3.0.0".to_owned()]),
            ]),
            groups: vec![
                group(
                    "g",
                    Some("c"),
                    r#"{"floors":["1.5.0"],"rate_limit":{"count":10,"period_secs":100}}"#,
                ),
                group(
                    "h",
                    Some("c2"),
                    r#"{"gate":{"group":"g","min_complete":1}}"#,
                ),
                group("k", None, r#"{"ramp":5}"#),
                group("none", None, "{}"),
            ],
        }
    }

    #[test]
    fn a_group_keeps_its_target_its_floors_gated_targets_and_its_rate_window() {
        let p = protections(&facts(), NOW);
        assert_eq!(
            p["g"],
            Protection {
                versions: vec!["1.5.0".into(), "2.0.0".into(), "3.0.0".into()],
                rate_since: Some(NOW - 100),
                keep_all: false,
            }
        );
        assert_eq!(p["h"].versions, ["3.0.0"]);
        assert_eq!(p["h"].rate_since, None);
        assert_eq!(p["none"], Protection::default());
    }

    #[test]
    fn an_unreadable_policy_keeps_every_grant_of_its_group() {
        let p = protections(&facts(), NOW);
        assert!(p["k"].keep_all);
        let mut broken = facts();
        broken.groups[0].policy = "not json".into();
        let p = protections(&broken, NOW);
        assert!(p["g"].keep_all);
        assert!(!p.contains_key("deleted"));
    }
}
