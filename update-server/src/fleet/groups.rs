//! Groups: the machines of an application that share a track, follow one channel and roll out
//! under one policy. A policy is validated as a [`RolloutSpec`] before it is stored; the fields
//! only the server sets (`halted` by auto-halt, `halt_counted_since` by a resume) survive a
//! policy replaced by an operator.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{
    Fleet, FleetError, FleetResult, activity, check_text, find_app, find_channel, find_group,
    new_id,
};
use crate::model::{Group, GroupPolicy};
use crate::rollout::RolloutSpec;

/// Longest group name or track, bytes.
const MAX_NAME: usize = 100;
/// Policy fields the server sets and a replaced policy keeps as stored (docs/usage/rollouts.md).
const SERVER_POLICY_FIELDS: [&str; 2] = ["halted", "halt_counted_since"];

/// Body of `POST /apps/{app}/groups`.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct CreateGroup {
    /// The group's id: 1..=100 letters, digits and `-` (for instance the id a group had on
    /// another server, which its hosts may send as their track); refused (409) when taken
    /// [default: a new random UUID].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Human name.
    pub name: String,
    /// Omaha track clients send [default: the name].
    pub track: Option<String>,
    /// Channel (id or name) to follow.
    pub channel: Option<String>,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Rollout policy.
    #[serde(default)]
    pub policy: GroupPolicy,
}

/// Body of `PATCH /apps/{app}/groups/{group}`.
#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
pub struct UpdateGroup {
    /// New name.
    pub name: Option<String>,
    /// New track.
    pub track: Option<String>,
    /// Channel (id or name); empty string detaches.
    pub channel: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// Replacement policy.
    pub policy: Option<GroupPolicy>,
}

/// Checks a group id given by the caller: 1..=[`MAX_NAME`] ASCII letters, digits and `-`.
fn check_group_id(id: &str) -> FleetResult<()> {
    if id.is_empty()
        || id.len() > MAX_NAME
        || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(FleetError::Invalid(format!(
            "group id {id:?} must be 1..={MAX_NAME} letters, digits and -"
        )));
    }
    Ok(())
}

/// Checks that a policy is a valid rollout spec.
fn check_policy(policy: &GroupPolicy) -> FleetResult<()> {
    valid_spec(policy).map(|_| ())
}

/// The rollout spec of a policy, validated as a stored policy is.
pub(super) fn valid_spec(policy: &GroupPolicy) -> FleetResult<RolloutSpec> {
    RolloutSpec::parse_valid(policy).map_err(|e| FleetError::Invalid(e.to_string()))
}

impl Fleet {
    /// The groups of the application `app` names.
    pub fn list_groups(&self, app: &str) -> FleetResult<Vec<Group>> {
        let cat = self.catalogue();
        let a = find_app(&cat, app)?;
        Ok(cat
            .data()
            .groups
            .iter()
            .filter(|g| g.app_id == a.id)
            .cloned()
            .collect())
    }

    /// The group `group` (id, track or name) of the application `app` names.
    pub fn group(&self, app: &str, group: &str) -> FleetResult<Group> {
        let cat = self.catalogue();
        let a = find_app(&cat, app)?;
        find_group(&cat, &a.id, group)
    }

    /// Creates a group.
    pub async fn create_group(&self, app: &str, input: CreateGroup) -> FleetResult<Group> {
        check_text("name", &input.name, MAX_NAME)?;
        check_policy(&input.policy)?;
        let track = input.track.unwrap_or_else(|| input.name.clone());
        check_text("track", &track, MAX_NAME)?;
        if let Some(id) = &input.id {
            check_group_id(id)?;
        }
        let _writing = self.write_lock.lock().await;
        let cat = self.catalogue();
        let a = find_app(&cat, app)?;
        if let Some(id) = input.id.as_deref().filter(|id| cat.group(id).is_some()) {
            return Err(FleetError::Conflict(format!("group id {id} is taken")));
        }
        let channel_id = match input.channel.as_deref().filter(|c| !c.is_empty()) {
            Some(c) => Some(find_channel(&cat, &a.id, c)?.id),
            None => None,
        };
        let g = Group {
            id: input.id.unwrap_or_else(new_id),
            app_id: a.id.clone(),
            name: input.name,
            track,
            channel_id,
            description: input.description,
            policy: input.policy,
            created_at: self.now(),
        };
        let mut act = activity(
            "group_created",
            Some(&a.id),
            format!("group {} created", g.name),
        );
        act.group_id = Some(g.id.clone());
        self.store.insert_group(&g, &act).await?;
        self.reload().await?;
        Ok(g)
    }

    /// Updates a group (name, track, channel, description, policy). A group changed by someone
    /// else between this read and the write (an auto-halt, another replica) is refused with
    /// [`FleetError::Conflict`]: read it again and retry.
    pub async fn update_group(
        &self,
        app: &str,
        group: &str,
        input: UpdateGroup,
    ) -> FleetResult<Group> {
        self.update_group_if(app, group, input, |_| true).await
    }

    /// As [`Fleet::update_group`], only if `unchanged` holds for the group as committed (read
    /// under the write lock): a caller that showed the group to an operator refuses, with
    /// [`FleetError::Conflict`], to overwrite a change made since (a pause, another save).
    pub async fn update_group_if(
        &self,
        app: &str,
        group: &str,
        input: UpdateGroup,
        unchanged: impl FnOnce(&Group) -> bool,
    ) -> FleetResult<Group> {
        let _writing = self.write_lock.lock().await;
        // The group as committed: another process (or an auto-halt) may have changed it since
        // this process's snapshot; a change racing this one is refused by the store.
        self.reload().await?;
        let cat = self.catalogue();
        let a = find_app(&cat, app)?;
        let mut g = find_group(&cat, &a.id, group)?;
        if !unchanged(&g) {
            return Err(FleetError::Conflict(format!(
                "group {} changed since it was shown: read it again",
                g.name
            )));
        }
        let seen = g.clone();
        if let Some(n) = input.name {
            check_text("name", &n, MAX_NAME)?;
            g.name = n;
        }
        if let Some(t) = input.track {
            check_text("track", &t, MAX_NAME)?;
            g.track = t;
        }
        if let Some(c) = input.channel {
            g.channel_id = if c.is_empty() {
                None
            } else {
                Some(find_channel(&cat, &a.id, &c)?.id)
            };
        }
        if let Some(d) = input.description {
            g.description = d;
        }
        if let Some(mut p) = input.policy {
            for key in SERVER_POLICY_FIELDS {
                match g.policy.extra.get(key) {
                    Some(v) => {
                        p.extra.insert(key.to_owned(), v.clone());
                    }
                    None => {
                        p.extra.remove(key);
                    }
                }
            }
            check_policy(&p)?;
            g.policy = p;
        }
        let mut act = activity(
            "group_updated",
            Some(&a.id),
            format!("group {} updated", g.name),
        );
        act.group_id = Some(g.id.clone());
        self.store.update_group(&g, &seen, &act).await?;
        self.reload().await?;
        Ok(g)
    }

    /// Deletes a group.
    pub async fn delete_group(&self, app: &str, group: &str) -> FleetResult<()> {
        let _writing = self.write_lock.lock().await;
        let cat = self.catalogue();
        let a = find_app(&cat, app)?;
        let g = find_group(&cat, &a.id, group)?;
        let mut act = activity(
            "group_deleted",
            Some(&a.id),
            format!("group {} deleted", g.name),
        );
        act.group_id = Some(g.id.clone());
        self.store.delete_group(&g.id, &act).await?;
        self.reload().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_group_id_is_letters_digits_and_dashes() {
        for ok in [
            "9a2deb70-37be-4026-853f-bfdd6b347bbe",
            "a",
            "Stable-2",
            &"x".repeat(100),
        ] {
            assert!(check_group_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "a/b", "{9a2deb70}", "é", &"x".repeat(101)] {
            assert!(
                matches!(check_group_id(bad), Err(FleetError::Invalid(_))),
                "{bad}"
            );
        }
    }
}
