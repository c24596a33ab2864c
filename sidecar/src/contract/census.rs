//! What a group's pods, looked at together, say about how fragile the group
//! is: whether every standby runs on the holder's node (a node failure then
//! takes the whole group), and whether the pods belong to more than one
//! workload (two workloads sharing one Lease and one active pod). Pure:
//! the holder's sidecar feeds it the pods its group watch shows, and
//! `kubectl baton status` the pods it lists; neither re-implements it.

use std::{collections::BTreeSet, fmt};

use k8s_openapi::api::core::v1::Pod;
use serde::{Deserialize, Serialize};

/// The label the Deployment controller puts on its pods and appends (after
/// a dash) to the names of its ReplicaSets.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";

/// The workload a pod belongs to, as far as its own ownerReferences say:
/// its controller, but a Deployment's ReplicaSet counts as the Deployment,
/// so that the old and new ReplicaSets of a rolling update are one owner.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Workload {
    pub kind: String,
    pub name: String,
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.name)
    }
}

/// The workload of `pod`; None for a bare pod (no controller), which joins
/// its group on purpose (its `baton.dev/lease-name` is the user's choice,
/// as the webhook's group check also holds).
pub fn workload_of(pod: &Pod) -> Option<Workload> {
    let controller = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))?;
    let hash = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(POD_TEMPLATE_HASH));
    let deployment = match (controller.kind.as_str(), hash) {
        ("ReplicaSet", Some(hash)) => controller
            .name
            .strip_suffix(hash.as_str())
            .and_then(|n| n.strip_suffix('-'))
            .filter(|n| !n.is_empty()),
        _ => None,
    };
    Some(match deployment {
        Some(name) => Workload {
            kind: "Deployment".into(),
            name: name.into(),
        },
        None => Workload {
            kind: controller.kind.clone(),
            name: controller.name.clone(),
        },
    })
}

/// What the group's pods say, seen from its holder.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Census {
    /// Pods of the group not being deleted, the holder included.
    pub pods: usize,
    /// The other pods not being deleted: those that could take over.
    pub standbys: usize,
    /// The nodes those pods are scheduled on.
    pub nodes: BTreeSet<String>,
    /// The node the holder runs on, once it is scheduled and seen.
    pub holder_node: Option<String>,
    /// There is a standby, and every one is scheduled on the holder's node.
    pub standbys_on_holder_node: bool,
    /// Standbys not scheduled yet: where they land is not known.
    pub unscheduled: usize,
    /// The workloads the pods belong to (bare pods have none).
    pub owners: BTreeSet<Workload>,
}

impl Census {
    /// The group's pods belong to more than one workload.
    pub fn several_owners(&self) -> bool {
        self.owners.len() > 1
    }

    /// The holder's node when every standby shares it.
    pub fn on_one_node(&self) -> Option<&str> {
        self.holder_node
            .as_deref()
            .filter(|_| self.standbys_on_holder_node)
    }

    /// Whether where the standbys run is known: the holder and every
    /// standby scheduled, and a standby at all. Until it is, a holder keeps
    /// what it said (a standby deleted to move it elsewhere is no news).
    pub fn placement_known(&self) -> bool {
        self.holder_node.is_some() && self.standbys > 0 && self.unscheduled == 0
    }

    /// The owners as `Kind/name`, in order.
    pub fn owner_names(&self) -> Vec<String> {
        self.owners.iter().map(ToString::to_string).collect()
    }

    /// What a user must be told, one line each, naming the fix.
    pub fn warnings(&self, group: &str) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some(node) = self.on_one_node() {
            lines.push(on_one_node_warning(group, node, self.standbys));
        }
        if self.several_owners() {
            lines.push(several_owners_warning(group, &self.owner_names()));
        }
        lines
    }
}

/// The warning of a group whose standbys all share the holder's node.
pub fn on_one_node_warning(group: &str, node: &str, standbys: usize) -> String {
    format!(
        "every standby of group {group} ({standbys}) runs on node {node} with the holder: a failure or drain of {node} takes the whole group; spread the pods over nodes (topologySpreadConstraints on kubernetes.io/hostname, or pod anti-affinity)"
    )
}

/// The warning of a group whose pods belong to several workloads.
pub fn several_owners_warning(group: &str, owners: &[String]) -> String {
    format!(
        "the pods of group {group} belong to several workloads ({}): they share one Lease and one active pod; give each workload its own group with the annotation baton.dev/lease-name on its pod template",
        owners.join(", ")
    )
}

/// The census of a group whose pods are `pods`, seen from `holder` (a pod
/// name). Pods being deleted are left out: they are on their way out and
/// take over nothing. A pod not yet scheduled shares no node. A group of
/// the holder alone has no standby and so none on its node: that is a
/// condition of its own (too few replicas), not this one.
pub fn census<'a>(holder: &str, pods: impl IntoIterator<Item = &'a Pod>) -> Census {
    let mut c = Census::default();
    let mut standby_nodes = Vec::new();
    for pod in pods {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        c.pods += 1;
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty());
        if let Some(node) = &node {
            c.nodes.insert(node.clone());
        }
        if let Some(owner) = workload_of(pod) {
            c.owners.insert(owner);
        }
        if pod.metadata.name.as_deref() == Some(holder) {
            c.holder_node = node;
        } else {
            c.standbys += 1;
            c.unscheduled += usize::from(node.is_none());
            standby_nodes.push(node);
        }
    }
    c.standbys_on_holder_node = c.holder_node.is_some()
        && !standby_nodes.is_empty()
        && standby_nodes.iter().all(|n| *n == c.holder_node);
    c
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};

    use super::*;

    fn pod(name: &str, node: Option<&str>) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        p.spec = Some(k8s_openapi::api::core::v1::PodSpec {
            node_name: node.map(Into::into),
            ..Default::default()
        });
        p
    }

    fn owned(mut p: Pod, kind: &str, name: &str) -> Pod {
        p.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "apps/v1".into(),
            kind: kind.into(),
            name: name.into(),
            controller: Some(true),
            ..Default::default()
        }]);
        p
    }

    fn of_replicaset(p: Pod, replicaset: &str, hash: &str) -> Pod {
        let mut p = owned(p, "ReplicaSet", replicaset);
        p.metadata.labels = Some(BTreeMap::from([(POD_TEMPLATE_HASH.into(), hash.into())]));
        p
    }

    fn terminating(mut p: Pod) -> Pod {
        p.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        p
    }

    fn workload(kind: &str, name: &str) -> Workload {
        Workload {
            kind: kind.into(),
            name: name.into(),
        }
    }

    #[test]
    fn standbys_all_on_the_holders_node_are_found() {
        let pods = [
            owned(pod("web-0", Some("n1")), "StatefulSet", "web"),
            owned(pod("web-1", Some("n1")), "StatefulSet", "web"),
            owned(pod("web-2", Some("n1")), "StatefulSet", "web"),
        ];
        let c = census("web-0", &pods);
        assert_eq!((c.pods, c.standbys), (3, 2));
        assert_eq!(c.on_one_node(), Some("n1"));
        assert_eq!(c.nodes, BTreeSet::from(["n1".to_owned()]));
        assert_eq!(c.owner_names(), ["StatefulSet/web"]);
        let warnings = c.warnings("web");
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("node n1"), "{warnings:?}");
    }

    #[test]
    fn one_standby_elsewhere_spreads_the_group() {
        let pods = [
            pod("web-0", Some("n1")),
            pod("web-1", Some("n1")),
            pod("web-2", Some("n2")),
        ];
        let c = census("web-0", &pods);
        assert!(!c.standbys_on_holder_node);
        assert_eq!(c.nodes.len(), 2);
        assert!(c.warnings("web").is_empty());
    }

    #[test]
    fn a_pending_standby_without_a_node_does_not_share_the_holders() {
        let c = census("web-0", &[pod("web-0", Some("n1")), pod("web-1", None)]);
        assert!(!c.standbys_on_holder_node);
        assert_eq!((c.standbys, c.unscheduled), (1, 1));
        assert_eq!(c.nodes.len(), 1);
        assert!(!c.placement_known());
    }

    #[test]
    fn an_unscheduled_or_unseen_holder_shares_nothing() {
        let c = census("web-0", &[pod("web-0", None), pod("web-1", None)]);
        assert!(!c.standbys_on_holder_node);
        let c = census(
            "web-9",
            &[pod("web-0", Some("n1")), pod("web-1", Some("n1"))],
        );
        assert_eq!((c.holder_node.as_deref(), c.on_one_node()), (None, None));
    }

    #[test]
    fn terminating_pods_are_left_out() {
        let pods = [
            pod("web-0", Some("n1")),
            terminating(pod("web-1", Some("n2"))),
            pod("web-2", Some("n1")),
            terminating(owned(pod("old-0", Some("n1")), "StatefulSet", "old")),
        ];
        let c = census("web-0", &pods);
        assert_eq!((c.pods, c.standbys), (2, 1));
        assert_eq!(c.on_one_node(), Some("n1"));
        assert!(c.owners.is_empty());
    }

    #[test]
    fn a_group_of_the_holder_alone_has_no_standby_on_its_node() {
        let c = census("web-0", &[pod("web-0", Some("n1"))]);
        assert_eq!((c.pods, c.standbys), (1, 0));
        assert!(!c.standbys_on_holder_node && !c.placement_known());
        assert!(c.warnings("web").is_empty());
    }

    #[test]
    fn replicasets_of_one_deployment_in_a_rolling_update_are_one_owner() {
        let pods = [
            of_replicaset(pod("web-6d4-a", Some("n1")), "web-6d4cf56db6", "6d4cf56db6"),
            of_replicaset(pod("web-7f9-b", Some("n2")), "web-7f98bd4b5c", "7f98bd4b5c"),
        ];
        let c = census("web-6d4-a", &pods);
        assert_eq!(c.owners, BTreeSet::from([workload("Deployment", "web")]));
        assert!(!c.several_owners());
    }

    #[test]
    fn a_replicaset_without_the_deployments_hash_is_its_own_owner() {
        let plain = owned(pod("rs-x", Some("n1")), "ReplicaSet", "web-abc");
        assert_eq!(workload_of(&plain), Some(workload("ReplicaSet", "web-abc")));
        let other_hash = of_replicaset(pod("rs-y", Some("n1")), "web-abc", "zzz");
        assert_eq!(
            workload_of(&other_hash),
            Some(workload("ReplicaSet", "web-abc"))
        );
    }

    #[test]
    fn a_statefulset_and_a_deployment_of_one_name_are_two_owners() {
        let pods = [
            owned(pod("web-0", Some("n1")), "StatefulSet", "web"),
            of_replicaset(pod("web-5c-x", Some("n2")), "web-5c9d7b8f4", "5c9d7b8f4"),
        ];
        let c = census("web-0", &pods);
        assert!(c.several_owners());
        assert_eq!(c.owner_names(), ["Deployment/web", "StatefulSet/web"]);
        let warnings = c.warnings("web");
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].contains("(Deployment/web, StatefulSet/web)")
                && warnings[0].contains("baton.dev/lease-name"),
            "{warnings:?}"
        );
    }

    #[test]
    fn a_bare_pod_has_no_owner_and_joins_a_workloads_group_unremarked() {
        let bare = pod("debug", Some("n2"));
        assert_eq!(workload_of(&bare), None);
        let pods = [owned(pod("web-0", Some("n1")), "StatefulSet", "web"), bare];
        let c = census("web-0", &pods);
        assert_eq!(c.owner_names(), ["StatefulSet/web"]);
        assert_eq!(c.standbys, 1);
    }

    #[test]
    fn only_the_controller_reference_names_the_owner() {
        let mut p = owned(pod("web-0", Some("n1")), "StatefulSet", "web");
        p.metadata.owner_references.get_or_insert_default().insert(
            0,
            OwnerReference {
                kind: "ConfigMap".into(),
                name: "not-a-controller".into(),
                ..Default::default()
            },
        );
        assert_eq!(workload_of(&p), Some(workload("StatefulSet", "web")));
    }
}
