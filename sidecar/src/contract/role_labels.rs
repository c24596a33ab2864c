//! The role label (its key and its two values) and the group label: the
//! flags the sidecar is configured with and `kubectl baton` must be given
//! alike, and what they say about a pod.

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use serde_json::json;

use super::{ANNOTATION_HEADING, Role};

/// The label flags, one schema for the sidecar's settings and the plugin's
/// command line (both flatten it).
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct LabelFlags {
    /// Key of the role label the Service selects on.
    #[arg(long, env = "BATON_ROLE_LABEL", default_value = "role", value_parser = parse_label_key, help_heading = ANNOTATION_HEADING)]
    pub role_label: String,

    /// Role label value of the one pod that serves.
    #[arg(long, env = "BATON_ACTIVE_VALUE", default_value = "active", value_parser = parse_label_value, help_heading = ANNOTATION_HEADING)]
    pub active_value: String,

    /// Role label value of the standby pods.
    #[arg(long, env = "BATON_PASSIVE_VALUE", default_value = "passive", value_parser = parse_label_value, help_heading = ANNOTATION_HEADING)]
    pub passive_value: String,

    /// Label whose value (the Lease name) marks the pods of one group.
    #[arg(long, env = "BATON_GROUP_LABEL", default_value = "baton.dev/group", value_parser = parse_label_key)]
    pub group_label: String,
}

/// Role values that cannot tell the roles apart.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--active-value and --passive-value must differ (both {0:?})")]
pub struct SameRoleValues(pub String);

impl LabelFlags {
    /// Checks what clap cannot: the two role values must tell roles apart.
    pub fn validate(&self) -> Result<(), SameRoleValues> {
        if self.active_value == self.passive_value {
            return Err(SameRoleValues(self.active_value.clone()));
        }
        Ok(())
    }

    /// The labels of the group `group` (its Lease's name).
    pub fn for_group(&self, group: &str) -> RoleLabels {
        RoleLabels {
            key: self.role_label.clone(),
            active: self.active_value.clone(),
            passive: self.passive_value.clone(),
            group_key: self.group_label.clone(),
            group: group.to_owned(),
        }
    }
}

/// Names of the role label and its values, and of the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleLabels {
    pub key: String,
    pub active: String,
    pub passive: String,
    pub group_key: String,
    pub group: String,
}

impl RoleLabels {
    pub fn value(&self, role: Role) -> &str {
        match role {
            Role::Active => &self.active,
            Role::Passive => &self.passive,
        }
    }

    /// The role a pod's labels say it has; None for no or a foreign value.
    pub fn role_of(&self, pod: &Pod) -> Option<Role> {
        match pod.labels().get(&self.key) {
            Some(v) if *v == self.active => Some(Role::Active),
            Some(v) if *v == self.passive => Some(Role::Passive),
            _ => None,
        }
    }

    /// The role label that says `role`, as `key=value`.
    pub fn label(&self, role: Role) -> String {
        format!("{}={}", self.key, self.value(role))
    }

    /// Selects the other pods of the group that are labelled active.
    pub fn active_selector(&self) -> String {
        format!(
            "{}={},{}",
            self.group_key,
            self.group,
            self.label(Role::Active)
        )
    }

    /// The merge patch that sets `role`; with a resourceVersion it is a
    /// precondition: the patch fails with 409 if the pod changed since.
    pub fn patch(&self, role: Role, resource_version: Option<&str>) -> serde_json::Value {
        let mut meta = json!({ "labels": { self.key.as_str(): self.value(role) } });
        if let Some(rv) = resource_version {
            meta["resourceVersion"] = json!(rv);
        }
        json!({ "metadata": meta })
    }
}

/// A label value: at most 63 of `[A-Za-z0-9._-]`, alphanumeric at both ends.
fn parse_label_value(s: &str) -> Result<String, String> {
    let ok_chars = s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    let ok_ends = s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !s.is_empty() && s.len() <= 63 && ok_chars && ok_ends {
        Ok(s.to_owned())
    } else {
        Err("must be 1-63 of [A-Za-z0-9._-], starting and ending alphanumeric".to_owned())
    }
}

/// A label key: an optional DNS-subdomain prefix and '/', then a name like a value.
fn parse_label_key(s: &str) -> Result<String, String> {
    let name = match s.split_once('/') {
        Some((prefix, name)) => {
            let ok = !prefix.is_empty()
                && prefix.len() <= 253
                && prefix.split('.').all(|part| {
                    !part.is_empty()
                        && part
                            .chars()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                });
            if !ok {
                return Err(format!("prefix {prefix:?} is not a DNS subdomain"));
            }
            name
        }
        None => s,
    };
    parse_label_value(name).map(|_| s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        labels: LabelFlags,
    }

    fn flags(args: &[&str]) -> Result<LabelFlags, clap::Error> {
        let args = std::iter::once("test").chain(args.iter().copied());
        Flags::try_parse_from(args).map(|f| f.labels)
    }

    fn labels() -> RoleLabels {
        flags(&[]).expect("the defaults parse").for_group("web")
    }

    #[test]
    fn the_defaults_are_role_active_passive_and_the_group_label() {
        assert_eq!(
            labels(),
            RoleLabels {
                key: "role".into(),
                active: "active".into(),
                passive: "passive".into(),
                group_key: "baton.dev/group".into(),
                group: "web".into(),
            }
        );
    }

    #[test]
    fn the_role_values_must_differ() {
        let same = flags(&["--active-value=same", "--passive-value=same"]).expect("each parses");
        assert_eq!(same.validate(), Err(SameRoleValues("same".into())));
        assert_eq!(flags(&[]).expect("defaults").validate(), Ok(()));
        assert!(flags(&["--role-label=Bad_Prefix/role"]).is_err());
    }

    #[test]
    fn promotion_patch_carries_the_resource_version_precondition() {
        let p = labels().patch(Role::Active, Some("42"));
        assert_eq!(
            p,
            json!({"metadata": {"labels": {"role": "active"}, "resourceVersion": "42"}})
        );
        let d = labels().patch(Role::Passive, None);
        assert_eq!(d, json!({"metadata": {"labels": {"role": "passive"}}}));
    }

    #[test]
    fn role_is_read_from_the_configured_key_and_values() {
        let l = RoleLabels {
            key: "tier".into(),
            active: "primary".into(),
            passive: "standby".into(),
            ..labels()
        };
        let mut pod = Pod::default();
        assert_eq!(l.role_of(&pod), None);
        pod.metadata.labels = Some([("tier".to_string(), "primary".to_string())].into());
        assert_eq!(l.role_of(&pod), Some(Role::Active));
        pod.metadata.labels = Some([("tier".to_string(), "other".to_string())].into());
        assert_eq!(l.role_of(&pod), None);
        assert_eq!(l.active_selector(), "baton.dev/group=web,tier=primary");
    }
}
