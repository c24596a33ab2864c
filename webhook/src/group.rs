//! One group, one workload: a pod is refused when its group (its Lease)
//! already has live pods of another workload, which would silently share
//! one Lease and one active pod with it (a StatefulSet `web` and a
//! Deployment `web` in one namespace). Decided purely ([`conflict`]); the
//! pods of the group are listed thinly ([`GroupPods`]).

use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::{
    api::core::v1::Pod,
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};
use kube::{Api, Client, api::ListParams, core::PartialObjectMeta};

use crate::owner::{self, Owner};

/// The label the webhook puts on every injected pod: its group (the Lease name).
pub const GROUP_LABEL: &str = "baton.dev/group";

/// The workload a pod belongs to, as the group check compares them: the
/// sidecar's own (its holder reports a group of several workloads that
/// got past this check, `contract::census`).
pub use baton_sidecar::contract::census::Workload;

/// The owner workload the lookup found (a ReplicaSet's Deployment), else
/// the controller itself for kinds the webhook does not follow (a
/// DaemonSet, a Job), else `None`: a bare pod.
pub fn workload_of(owner: Option<&Owner>, controller: Option<&OwnerReference>) -> Option<Workload> {
    match (owner, controller) {
        (Some(o), _) => Some(Workload {
            kind: o.kind.clone(),
            name: o.name.clone(),
        }),
        (None, Some(c)) => Some(Workload {
            kind: c.kind.clone(),
            name: c.name.clone(),
        }),
        (None, None) => None,
    }
}

/// A group name to suggest for a workload: `web-deploy` for Deployment `web`.
fn suggested_group(w: &Workload) -> String {
    let suffix = match w.kind.as_str() {
        "Deployment" => "deploy".to_owned(),
        "StatefulSet" => "sts".to_owned(),
        other => other.to_ascii_lowercase(),
    };
    format!("{}-{suffix}", w.name)
}

/// A pod already in the group, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub pod: String,
    /// `None` for a bare pod.
    pub workload: Option<Workload>,
    /// It has a deletionTimestamp.
    pub terminating: bool,
}

/// Why a pod may not join its group.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "baton: {admitted} cannot join group {group:?} (Lease {group}): pods of {other} (e.g. {pod}) \
     are already in it, and two workloads in one group would share one Lease and one active pod; \
     give one of them its own group with the annotation baton.dev/lease-name on its pod template \
     (e.g. baton.dev/lease-name: {suggested} on {admitted})"
)]
pub struct Conflict {
    pub admitted: Workload,
    pub other: Workload,
    pub group: String,
    pub pod: String,
    suggested: String,
}

/// Whether a pod of `admitted` may join `group`, whose pods are `members`.
///
/// Refused only when both sides have a controlling workload and they
/// differ: pods of one workload (a Deployment's new ReplicaSet, a
/// StatefulSet's new revision) share their group; a bare pod (no
/// controller) joins or is joined on purpose, since its
/// `baton.dev/lease-name` is the user's explicit choice. Terminating pods
/// are ignored, so that a workload deleted and replaced by one of another
/// kind under the same name is not held up by its last pods.
pub fn conflict(admitted: Option<&Workload>, group: &str, members: &[Member]) -> Option<Conflict> {
    let admitted = admitted?;
    members
        .iter()
        .filter(|m| !m.terminating)
        .find_map(|m| match &m.workload {
            Some(other) if other != admitted => Some(Conflict {
                admitted: admitted.clone(),
                other: other.clone(),
                group: group.to_owned(),
                pod: m.pod.clone(),
                suggested: suggested_group(admitted),
            }),
            _ => None,
        })
}

/// A pod of the group, as listed: before its workload is looked up.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed {
    pub pod: String,
    pub controller: Option<OwnerReference>,
    pub terminating: bool,
}

impl Listed {
    pub fn from_meta(meta: &ObjectMeta) -> Self {
        Self {
            pod: meta.name.clone().unwrap_or_default(),
            controller: owner::controller_of(meta).cloned(),
            terminating: meta.deletion_timestamp.is_some(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("listing the pods of group {group} in {namespace}")]
    List {
        namespace: String,
        group: String,
        #[source]
        source: kube::Error,
    },
    #[error("listing the pods of group {group} in {namespace}: no answer within {timeout:?}")]
    Timeout {
        namespace: String,
        group: String,
        timeout: Duration,
    },
}

/// Why the group could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    List(#[from] GroupError),
    #[error("finding the workload of pod {pod}")]
    Owner {
        pod: String,
        #[source]
        source: owner::OwnerError,
    },
}

/// Lists the pods of a group (RBAC: list on pods).
pub trait GroupPods: Send + Sync {
    fn pods<'a>(
        &'a self,
        namespace: &'a str,
        group: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Listed>, GroupError>>;
}

/// One metadata-only, label-selected list per call, cut at `timeout`.
#[derive(Clone)]
pub struct KubeGroupPods {
    client: Client,
    timeout: Duration,
}

impl KubeGroupPods {
    pub fn new(client: Client, timeout: Duration) -> Self {
        Self { client, timeout }
    }

    async fn list(&self, namespace: &str, group: &str) -> Result<Vec<Listed>, GroupError> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let params = ListParams::default().labels(&format!("{GROUP_LABEL}={group}"));
        match tokio::time::timeout(self.timeout, api.list_metadata(&params)).await {
            Ok(Ok(list)) => Ok(list
                .items
                .iter()
                .map(|p: &PartialObjectMeta<Pod>| Listed::from_meta(&p.metadata))
                .collect()),
            Ok(Err(source)) => Err(GroupError::List {
                namespace: namespace.to_owned(),
                group: group.to_owned(),
                source,
            }),
            Err(_) => Err(GroupError::Timeout {
                namespace: namespace.to_owned(),
                group: group.to_owned(),
                timeout: self.timeout,
            }),
        }
    }
}

impl GroupPods for KubeGroupPods {
    fn pods<'a>(
        &'a self,
        namespace: &'a str,
        group: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Listed>, GroupError>> {
        Box::pin(self.list(namespace, group))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(kind: &str, name: &str) -> Workload {
        Workload {
            kind: kind.into(),
            name: name.into(),
        }
    }

    fn member(pod: &str, workload: Option<Workload>) -> Member {
        Member {
            pod: pod.into(),
            workload,
            terminating: false,
        }
    }

    #[test]
    fn pods_of_the_same_workload_share_their_group() {
        let deploy = w("Deployment", "web");
        let members = [
            member("web-6b7f9c8d4-abcde", Some(deploy.clone())),
            member("web-7c9d5f6b8-fghij", Some(deploy.clone())),
        ];
        assert_eq!(conflict(Some(&deploy), "web", &members), None);
    }

    #[test]
    fn another_workload_in_the_group_is_refused_naming_both_and_the_fix() {
        let sts = w("StatefulSet", "web");
        let deploy = w("Deployment", "web");
        let found = conflict(Some(&deploy), "web", &[member("web-0", Some(sts.clone()))])
            .expect("a conflict");
        assert_eq!((&found.admitted, &found.other), (&deploy, &sts));
        let msg = found.to_string();
        for part in [
            "Deployment/web",
            "StatefulSet/web",
            "group \"web\"",
            "web-0",
            "baton.dev/lease-name: web-deploy on Deployment/web",
        ] {
            assert!(msg.contains(part), "{part:?} in {msg}");
        }
        assert_eq!(msg.lines().count(), 1, "{msg}");
    }

    #[test]
    fn an_empty_group_is_joined() {
        assert_eq!(conflict(Some(&w("Deployment", "web")), "web", &[]), None);
    }

    #[test]
    fn terminating_pods_of_another_workload_are_ignored() {
        let mut old = member("web-0", Some(w("StatefulSet", "web")));
        old.terminating = true;
        assert_eq!(conflict(Some(&w("Deployment", "web")), "web", &[old]), None);
    }

    #[test]
    fn bare_pods_join_and_are_joined_on_purpose() {
        let sts = w("StatefulSet", "web");
        // A bare pod with lease-name web joins the StatefulSet's group...
        assert_eq!(
            conflict(None, "web", &[member("web-0", Some(sts.clone()))]),
            None
        );
        // ... a StatefulSet's pod joins a group of bare pods...
        assert_eq!(conflict(Some(&sts), "web", &[member("solo", None)]), None);
        // ... and bare pods share a group.
        assert_eq!(conflict(None, "web", &[member("solo", None)]), None);
    }

    #[test]
    fn a_workload_is_its_followed_owner_else_its_controller_else_none() {
        let deploy = crate::testing::owner("Deployment", "api");
        let rs = OwnerReference {
            api_version: "apps/v1".into(),
            kind: "ReplicaSet".into(),
            name: "api-6b7f9c8d4".into(),
            uid: "u".into(),
            controller: Some(true),
            block_owner_deletion: None,
        };
        assert_eq!(
            workload_of(Some(&deploy), Some(&rs)),
            Some(w("Deployment", "api"))
        );
        let ds = OwnerReference {
            kind: "DaemonSet".into(),
            name: "agent".into(),
            ..rs
        };
        assert_eq!(workload_of(None, Some(&ds)), Some(w("DaemonSet", "agent")));
        assert_eq!(workload_of(None, None), None);
    }
}
