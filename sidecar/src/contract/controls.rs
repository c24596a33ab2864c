//! Operator controls (`docs/design.md`, rule 10): annotations that a person,
//! a script, GitOps or `kubectl baton` sets, and that the sidecars read from
//! the objects they already watch (the group's Lease, their own Pod). The
//! sidecars write back only what happened: the reason of the last switch on
//! the Lease, and their app's health as a condition of their own Pod.

use std::collections::BTreeMap;

use k8s_openapi::{api::core::v1::Pod, jiff::Timestamp};
use serde_json::{Value, json};

/// On the group's Lease: `"true"` pauses automatic failover.
pub const PAUSED: &str = "baton.dev/paused";
/// On the group's Lease: the pod the holder hands the role to, or
/// [`ANY_POD`]. Removed by whoever ends the switchover (the pod that takes
/// the role, or the holder that keeps it).
pub const SWITCHOVER_TO: &str = "baton.dev/switchover-to";
/// The value of [`SWITCHOVER_TO`] that lets any healthy standby take over.
pub const ANY_POD: &str = "*";
/// On the group's Lease, written by the sidecars: why the holder last
/// changed, or why a switchover did not happen.
pub const SWITCH_REASON: &str = "baton.dev/switch-reason";
/// On a Pod: `"true"` keeps it from becoming active (a holder hands over).
pub const CORDONED: &str = "baton.dev/cordoned";
/// The condition each sidecar keeps on its own Pod: `True` while its app
/// passes its probe.
pub const APP_HEALTHY_CONDITION: &str = "baton.dev/app-healthy";

/// An annotation of ours with a value that means nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {key}: {value:?} is not {expected}")]
pub struct ControlError {
    pub key: &'static str,
    pub value: String,
    pub expected: &'static str,
}

/// Whom a switchover hands the role to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Any,
    Pod(String),
}

impl Target {
    /// The value of [`SWITCHOVER_TO`] that asks for it.
    pub fn annotation_value(&self) -> &str {
        match self {
            Target::Any => ANY_POD,
            Target::Pod(name) => name,
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Any => f.write_str("any healthy standby"),
            Target::Pod(name) => f.write_str(name),
        }
    }
}

/// A `"true"`/`"false"` annotation; absent is false.
pub fn flag(
    annotations: Option<&BTreeMap<String, String>>,
    key: &'static str,
) -> Result<bool, ControlError> {
    match annotations.and_then(|a| a.get(key)).map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(ControlError {
            key,
            value: other.to_owned(),
            expected: "\"true\" or \"false\"",
        }),
    }
}

/// The switchover asked for on the Lease, if any.
pub fn switchover_target(
    annotations: Option<&BTreeMap<String, String>>,
) -> Result<Option<Target>, ControlError> {
    let Some(value) = annotations.and_then(|a| a.get(SWITCHOVER_TO)) else {
        return Ok(None);
    };
    if value == ANY_POD {
        return Ok(Some(Target::Any));
    }
    if is_dns_subdomain(value) {
        return Ok(Some(Target::Pod(value.clone())));
    }
    Err(ControlError {
        key: SWITCHOVER_TO,
        value: value.clone(),
        expected: "a pod name or \"*\"",
    })
}

/// What our Pod's [`APP_HEALTHY_CONDITION`] says, if it is there.
pub fn app_healthy_condition(pod: &Pod) -> Option<bool> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == APP_HEALTHY_CONDITION)
        .map(|c| c.status == "True")
}

/// A strategic-merge patch of the Pod's status that sets
/// [`APP_HEALTHY_CONDITION`] (conditions merge by type: kubelet keeps the
/// ones it does not own).
pub fn app_healthy_patch(healthy: bool, last_failure: Option<&str>, wall: Timestamp) -> Value {
    let (status, reason, message) = if healthy {
        (
            "True",
            "ProbeSucceeded",
            "the app passes its probe".to_owned(),
        )
    } else {
        (
            "False",
            "ProbeFailed",
            last_failure.unwrap_or("the app fails its probe").to_owned(),
        )
    };
    json!({"status": {"conditions": [{
        "type": APP_HEALTHY_CONDITION,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": wall.to_string(),
    }]}})
}

/// A pod name: a DNS-1123 subdomain.
fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_flag_is_true_false_or_an_error_that_names_the_annotation_and_value() {
        assert_eq!(flag(None, PAUSED), Ok(false));
        assert_eq!(
            flag(Some(&annotations(&[(PAUSED, "true")])), PAUSED),
            Ok(true)
        );
        assert_eq!(
            flag(Some(&annotations(&[(PAUSED, "false")])), PAUSED),
            Ok(false)
        );
        let err = flag(Some(&annotations(&[(PAUSED, "yes")])), PAUSED).unwrap_err();
        assert_eq!(
            err.to_string(),
            "annotation baton.dev/paused: \"yes\" is not \"true\" or \"false\""
        );
    }

    #[test]
    fn a_switchover_names_a_pod_or_any() {
        assert_eq!(switchover_target(None), Ok(None));
        assert_eq!(
            switchover_target(Some(&annotations(&[(SWITCHOVER_TO, "web-1")]))),
            Ok(Some(Target::Pod("web-1".into())))
        );
        assert_eq!(
            switchover_target(Some(&annotations(&[(SWITCHOVER_TO, "*")]))),
            Ok(Some(Target::Any))
        );
        for bad in ["", "Web-1", "-web", "web_1", "web..1"] {
            let err = switchover_target(Some(&annotations(&[(SWITCHOVER_TO, bad)]))).unwrap_err();
            assert!(err.to_string().contains(SWITCHOVER_TO), "{err}");
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }
}
