//! Why a command will not do what it was asked: each says what is wrong in
//! the user's terms, and is printed as `error: <it>` with exit code 1.

use baton_sidecar::contract::controls::APP_HEALTHY_CONDITION;

use crate::group::{Health, PodState};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no baton group {group:?} in namespace {namespace:?}")]
    NoGroup { group: String, namespace: String },
    #[error("no baton group {group:?} in any namespace")]
    NoGroupAnywhere { group: String },
    #[error("lease {lease:?} not found in namespace {namespace:?}: is it a baton group?")]
    NoLease { lease: String, namespace: String },
    #[error("group {group} has no holder: nothing to switch over")]
    NoHolder { group: String },
    #[error("pod {pod:?} not found in namespace {namespace:?}")]
    PodNotFound { pod: String, namespace: String },
    #[error("pod {pod:?} is in no baton group (it has no {group_label} label)")]
    InNoGroup { pod: String, group_label: String },
    #[error(
        "pod {pod:?} is not in group {group:?} ({})",
        match label {
            Some(value) => format!("its {group_label} label is {value:?}"),
            None => format!("it has no {group_label} label"),
        }
    )]
    NotInGroup {
        pod: String,
        group: String,
        group_label: String,
        label: Option<String>,
    },
    #[error("pod {pod:?} {why}")]
    Unfit { pod: String, why: Unfit },
    #[error("group {group} has no pod besides its holder {holder}: nothing to switch over to")]
    OnlyHolder { group: String, holder: String },
    #[error(
        "group {group} has no healthy standby to switch over to: {}",
        standbys.iter().map(|(pod, why)| format!("{pod} {why}")).collect::<Vec<_>>().join("; ")
    )]
    NoStandby {
        group: String,
        standbys: Vec<(String, Unfit)>,
    },
}

/// Why a pod cannot take the active role.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unfit {
    #[error("is terminating")]
    Terminating,
    #[error("is cordoned")]
    Cordoned,
    #[error("is unhealthy: {0}")]
    Unhealthy(String),
    #[error(
        "has unknown health: it has no {APP_HEALTHY_CONDITION} condition (is its sidecar running?)"
    )]
    HealthUnknown,
}

impl Unfit {
    /// Why `pod` cannot become active, if it cannot; the same rules as the
    /// sidecars' (a terminating or cordoned pod never takes the Lease, an
    /// unhealthy one gives it up), and a health we cannot see counts as bad.
    pub fn of(pod: &PodState) -> Option<Unfit> {
        if pod.terminating {
            return Some(Unfit::Terminating);
        }
        if pod.cordoned {
            return Some(Unfit::Cordoned);
        }
        match pod.health() {
            Health::Healthy => None,
            Health::Unhealthy => Some(Unfit::Unhealthy(
                pod.health_message
                    .clone()
                    .unwrap_or_else(|| "its probe fails".to_owned()),
            )),
            Health::Unknown => Some(Unfit::HealthUnknown),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::fixtures::*;
    use baton_sidecar::contract::controls::CORDONED;

    #[test]
    fn a_pod_is_unfit_when_terminating_cordoned_unhealthy_or_unknown_in_that_order() {
        assert_eq!(Unfit::of(&state(&pod("web-1"))), None);
        let cordoned = with_annotation(pod("web-1"), CORDONED, "true");
        assert_eq!(Unfit::of(&state(&cordoned)), Some(Unfit::Cordoned));
        assert_eq!(
            Unfit::of(&state(&terminating(cordoned))),
            Some(Unfit::Terminating)
        );
        let failing = with_conditions(
            pod("web-1"),
            vec![condition(
                APP_HEALTHY_CONDITION,
                "False",
                Some("connection refused"),
            )],
        );
        assert_eq!(
            Unfit::of(&state(&failing)),
            Some(Unfit::Unhealthy("connection refused".into()))
        );
        let silent = with_conditions(pod("web-1"), vec![]);
        assert_eq!(Unfit::of(&state(&silent)), Some(Unfit::HealthUnknown));
    }

    #[test]
    fn messages_name_the_pod_the_group_and_the_label() {
        let not_in_group = Refusal::NotInGroup {
            pod: "x".into(),
            group: "web".into(),
            group_label: "baton.dev/group".into(),
            label: Some("api".into()),
        };
        assert_eq!(
            not_in_group.to_string(),
            r#"pod "x" is not in group "web" (its baton.dev/group label is "api")"#
        );
        let unhealthy = Refusal::Unfit {
            pod: "web-1".into(),
            why: Unfit::Unhealthy("GET /healthz: 503".into()),
        };
        assert_eq!(
            unhealthy.to_string(),
            r#"pod "web-1" is unhealthy: GET /healthz: 503"#
        );
        let none = Refusal::NoStandby {
            group: "web".into(),
            standbys: vec![
                ("web-1".into(), Unfit::Cordoned),
                ("web-2".into(), Unfit::Terminating),
            ],
        };
        assert_eq!(
            none.to_string(),
            "group web has no healthy standby to switch over to: web-1 is cordoned; web-2 is terminating"
        );
    }
}
