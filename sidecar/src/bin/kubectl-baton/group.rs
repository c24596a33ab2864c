//! What a group's pods and Lease say, read from the API objects once, in
//! the terms of the contract with the sidecars (`baton_sidecar::contract::controls`).

use std::collections::BTreeMap;

use baton_sidecar::contract::{
    controls::{
        self, APP_HEALTHY_CONDITION, CORDONED, ControlError, PAUSED, SWITCH_REASON, SWITCHOVER_TO,
    },
    role_labels::LabelFlags,
};
use k8s_openapi::{
    api::{coordination::v1::Lease, core::v1::Pod},
    apimachinery::pkg::apis::meta::v1::{MicroTime, Time},
};
use kube::ResourceExt;
use serde::Serialize;

/// One pod of a group (or one that was named as if it were).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodState {
    pub name: String,
    /// The value of its role label.
    pub role: Option<String>,
    /// Its sidecar's verdict on the app, read as the sidecars read it
    /// (any status but "True" is unhealthy); None when it has given none.
    pub healthy: Option<bool>,
    /// Why the app last failed its probe.
    pub health_message: Option<String>,
    pub cordoned: bool,
    /// The pod's own Ready condition.
    pub ready: bool,
    pub terminating: bool,
    pub node: Option<String>,
    /// The value of its group label.
    #[serde(skip)]
    pub group: Option<String>,
    #[serde(skip)]
    pub created: Option<Time>,
    /// Annotations of ours whose values mean nothing (taken as unset).
    #[serde(skip)]
    pub problems: Vec<ControlError>,
}

/// Whether a pod's app is healthy, by its sidecar's condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Healthy,
    Unhealthy,
    Unknown,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
            Health::Unknown => "unknown",
        }
    }
}

impl PodState {
    pub fn from_pod(pod: &Pod, keys: &LabelFlags) -> Self {
        let conditions = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_deref())
            .unwrap_or_default();
        let condition = |type_: &str| conditions.iter().find(|c| c.type_ == type_);
        let app = condition(APP_HEALTHY_CONDITION);
        let mut problems = Vec::new();
        let cordoned =
            controls::flag(pod.metadata.annotations.as_ref(), CORDONED).unwrap_or_else(|problem| {
                problems.push(problem);
                false
            });
        PodState {
            name: pod.name_any(),
            role: pod.labels().get(&keys.role_label).cloned(),
            // The sidecars' own reading: only "True" is healthy.
            healthy: controls::app_healthy_condition(pod),
            health_message: app
                .and_then(|c| c.message.clone())
                .filter(|m| !m.is_empty()),
            cordoned,
            ready: condition("Ready").is_some_and(|c| c.status == "True"),
            terminating: pod.metadata.deletion_timestamp.is_some(),
            node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            group: pod.labels().get(&keys.group_label).cloned(),
            created: pod.metadata.creation_timestamp.clone(),
            problems,
        }
    }

    pub fn health(&self) -> Health {
        match self.healthy {
            Some(true) => Health::Healthy,
            Some(false) => Health::Unhealthy,
            None => Health::Unknown,
        }
    }
}

/// A group's Lease (flattened into `kubectl baton status -o json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseState {
    /// None when released.
    pub holder: Option<String>,
    pub transitions: Option<i32>,
    pub acquire_time: Option<MicroTime>,
    pub renew_time: Option<MicroTime>,
    pub switch_reason: Option<String>,
    pub paused: bool,
    /// The raw value of the switchover request: its presence is what counts.
    pub switchover_to: Option<String>,
    /// Annotations of ours whose values mean nothing (taken as unset).
    #[serde(skip)]
    pub problems: Vec<ControlError>,
}

impl LeaseState {
    pub fn from_lease(lease: &Lease) -> Self {
        let spec = lease.spec.clone().unwrap_or_default();
        let annotations: Option<&BTreeMap<String, String>> = lease.metadata.annotations.as_ref();
        let annotation = |key: &str| annotations.and_then(|a| a.get(key)).cloned();
        let mut problems = Vec::new();
        let paused = controls::flag(annotations, PAUSED).unwrap_or_else(|problem| {
            problems.push(problem);
            false
        });
        LeaseState {
            holder: baton_sidecar::election::lease_holder(lease),
            transitions: spec.lease_transitions,
            acquire_time: spec.acquire_time,
            renew_time: spec.renew_time,
            switch_reason: annotation(SWITCH_REASON).filter(|r| !r.is_empty()),
            paused,
            switchover_to: annotation(SWITCHOVER_TO),
            problems,
        }
    }
}

/// Builders of API objects for the unit tests of every module.
#[cfg(test)]
pub mod fixtures {
    use super::*;
    use k8s_openapi::{
        api::{
            coordination::v1::LeaseSpec,
            core::v1::{PodCondition, PodSpec, PodStatus},
        },
        apimachinery::pkg::apis::meta::v1::ObjectMeta,
        jiff::Timestamp,
    };

    /// The sidecars' default labels, as the command line gives them.
    pub fn keys() -> LabelFlags {
        use clap::Parser;
        crate::cli::Cli::try_parse_from(["kubectl-baton", "status"])
            .expect("the defaults parse")
            .labels
    }

    pub fn time(s: &str) -> Timestamp {
        s.parse().expect("an RFC 3339 time")
    }

    /// A pod of group `web`, passive, healthy, Ready, on node-1.
    pub fn pod(name: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("shop".into()),
                labels: Some(BTreeMap::from([
                    ("baton.dev/group".into(), "web".into()),
                    ("role".into(), "passive".into()),
                ])),
                creation_timestamp: Some(Time(time("2025-01-01T00:00:00Z"))),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("node-1".into()),
                ..Default::default()
            }),
            status: Some(PodStatus {
                conditions: Some(vec![
                    condition(APP_HEALTHY_CONDITION, "True", None),
                    condition("Ready", "True", None),
                ]),
                ..Default::default()
            }),
        }
    }

    pub fn condition(type_: &str, status: &str, message: Option<&str>) -> PodCondition {
        PodCondition {
            type_: type_.into(),
            status: status.into(),
            message: message.map(Into::into),
            ..Default::default()
        }
    }

    pub fn with_label(mut pod: Pod, key: &str, value: &str) -> Pod {
        pod.metadata
            .labels
            .get_or_insert_default()
            .insert(key.into(), value.into());
        pod
    }

    pub fn with_annotation(mut pod: Pod, key: &str, value: &str) -> Pod {
        pod.metadata
            .annotations
            .get_or_insert_default()
            .insert(key.into(), value.into());
        pod
    }

    pub fn with_conditions(mut pod: Pod, conditions: Vec<PodCondition>) -> Pod {
        pod.status.get_or_insert_default().conditions = Some(conditions);
        pod
    }

    pub fn terminating(mut pod: Pod) -> Pod {
        pod.metadata.deletion_timestamp = Some(Time(time("2025-01-02T00:00:00Z")));
        pod
    }

    pub fn state(pod: &Pod) -> PodState {
        PodState::from_pod(pod, &keys())
    }

    /// The Lease `web` held by `holder`.
    pub fn lease(holder: Option<&str>, annotations: &[(&str, &str)]) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("shop".into()),
                annotations: Some(
                    annotations
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(Into::into),
                lease_transitions: Some(3),
                acquire_time: Some(MicroTime(time("2025-01-01T11:56:48Z"))),
                renew_time: Some(MicroTime(time("2025-01-01T11:59:59Z"))),
                ..Default::default()
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

    #[test]
    fn a_pod_reads_its_role_health_cordon_and_readiness() {
        let p = with_annotation(
            with_conditions(
                with_label(pod("web-0"), "role", "active"),
                vec![
                    condition(APP_HEALTHY_CONDITION, "False", Some("GET /healthz: 503")),
                    condition("Ready", "False", None),
                ],
            ),
            CORDONED,
            "true",
        );
        let s = state(&terminating(p));
        assert_eq!(s.role.as_deref(), Some("active"));
        assert_eq!(s.health(), Health::Unhealthy);
        assert_eq!(s.health_message.as_deref(), Some("GET /healthz: 503"));
        assert!(s.cordoned && s.terminating && !s.ready);
        assert_eq!(s.group.as_deref(), Some("web"));
        assert_eq!(s.node.as_deref(), Some("node-1"));
    }

    #[test]
    fn a_pod_without_the_condition_has_unknown_health() {
        let s = state(&with_conditions(pod("web-0"), vec![]));
        assert_eq!(s.health(), Health::Unknown);
        assert_eq!(s.healthy, None);
    }

    /// The sidecars take any status but "True" as unhealthy (a standby
    /// whose condition is "Unknown" is not offered the Lease): so does the
    /// plugin.
    #[test]
    fn an_unknown_condition_is_unhealthy_as_for_the_sidecars() {
        let p = with_conditions(
            pod("web-0"),
            vec![condition(APP_HEALTHY_CONDITION, "Unknown", None)],
        );
        assert_eq!(controls::app_healthy_condition(&p), Some(false));
        let s = state(&p);
        assert_eq!(s.healthy, Some(false));
        assert_eq!(s.health(), Health::Unhealthy);
    }

    #[test]
    fn a_meaningless_annotation_is_unset_and_reported() {
        let s = state(&with_annotation(pod("web-0"), CORDONED, "yes"));
        assert!(!s.cordoned);
        assert_eq!(s.problems.len(), 1);
        let l = LeaseState::from_lease(&lease(Some("web-0"), &[(PAUSED, "1")]));
        assert!(!l.paused);
        assert_eq!(l.problems[0].key, PAUSED);
    }

    #[test]
    fn an_empty_holder_is_no_holder() {
        let l = LeaseState::from_lease(&lease(Some(""), &[]));
        assert_eq!(l.holder, None);
        let l = LeaseState::from_lease(&lease(
            Some("web-0"),
            &[
                (PAUSED, "true"),
                (SWITCHOVER_TO, "*"),
                (SWITCH_REASON, "web-1 failed its probe"),
            ],
        ));
        assert_eq!(l.holder.as_deref(), Some("web-0"));
        assert!(l.paused);
        assert_eq!(l.switchover_to.as_deref(), Some("*"));
        assert_eq!(l.switch_reason.as_deref(), Some("web-1 failed its probe"));
        assert_eq!(l.transitions, Some(3));
    }
}
