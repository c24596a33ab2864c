//! The cluster's verdict on a pod, read from its conditions: whether the
//! node lifecycle controller (not kubelet) marked it not Ready, and which
//! standby of the group a holder so marked hands the role to (design rule
//! 13). Pure functions of Pod objects.

use k8s_openapi::api::core::v1::{Pod, PodCondition};

use crate::contract::controls::{self, CORDONED};

/// The reason kubelet gives a pod whose containers are ready but whose
/// readiness gates are not: the user's own verdict, not the node's.
const READINESS_GATES_NOT_READY: &str = "ReadinessGatesNotReady";

fn condition<'a>(pod: &'a Pod, type_: &str) -> Option<&'a PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

fn is(pod: &Pod, type_: &str, status: &str) -> bool {
    condition(pod, type_).is_some_and(|c| c.status == status)
}

/// The pod is Ready, as kubelet last said and nobody has undone since.
pub fn ready(pod: &Pod) -> bool {
    is(pod, "Ready", "True")
}

/// The node lifecycle controller marked the pod not Ready: its node stopped
/// reporting (kubelet dead or cut off) for the grace period. The controller
/// sets the Ready condition alone to False; kubelet, whenever it finds a
/// container not ready, also sets ContainersReady to False, and names its
/// readiness gates when they hold Ready back. So Ready False with
/// ContainersReady True and no gate reason is the node's verdict, not the
/// app's or the sidecar's (a restarting sidecar is not ready as a container).
pub fn marked_not_ready_by_node(pod: &Pod) -> bool {
    let Some(ready) = condition(pod, "Ready") else {
        return false;
    };
    ready.status == "False"
        && ready.reason.as_deref() != Some(READINESS_GATES_NOT_READY)
        && is(pod, "ContainersReady", "True")
}

/// The standby a holder whose own pod was marked not Ready hands over to:
/// a pod of the group other than `me`, not being deleted, Ready, not
/// cordoned, its app not reported unhealthy; on another node than `mine`
/// first (the same node's pods share its fate), then by name, so that the
/// choice is the same on every turn.
pub fn handover_target<'a>(
    me: &str,
    my_node: Option<&str>,
    pods: impl IntoIterator<Item = &'a Pod>,
) -> Option<&'a str> {
    pods.into_iter()
        .filter(|p| p.metadata.name.as_deref().is_some_and(|n| n != me))
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| ready(p))
        .filter(|p| controls::flag(p.metadata.annotations.as_ref(), CORDONED) != Ok(true))
        .filter(|p| controls::app_healthy_condition(p) != Some(false))
        .min_by_key(|p| {
            let node = p.spec.as_ref().and_then(|s| s.node_name.as_deref());
            (
                my_node.is_some() && node == my_node,
                p.metadata.name.clone(),
            )
        })
        .and_then(|p| p.metadata.name.as_deref())
}

/// What the holder's group view keeps of a pod's conditions: the ones
/// [`handover_target`] reads.
pub fn kept_condition(c: &PodCondition) -> bool {
    matches!(c.type_.as_str(), "Ready" | "ContainersReady")
        || c.type_ == controls::APP_HEALTHY_CONDITION
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use serde_json::json;

    use super::*;

    fn pod(name: &str, node: &str, ready: &str, containers_ready: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"nodeName": node, "containers": []},
            "status": {"conditions": [
                {"type": "ContainersReady", "status": containers_ready},
                {"type": "Ready", "status": ready},
            ]}
        }))
        .expect("a pod")
    }

    #[test]
    fn only_ready_false_with_containers_ready_is_the_nodes_verdict() {
        assert!(marked_not_ready_by_node(&pod("a", "n1", "False", "True")));
        // kubelet's own verdicts: a container not ready (the app's probe, a
        // restarting sidecar), or nothing wrong.
        assert!(!marked_not_ready_by_node(&pod("a", "n1", "False", "False")));
        assert!(!marked_not_ready_by_node(&pod("a", "n1", "True", "True")));
        // Not yet reported at all.
        let mut bare = pod("a", "n1", "False", "True");
        bare.status = None;
        assert!(!marked_not_ready_by_node(&bare));
    }

    #[test]
    fn readiness_gates_held_back_by_the_user_are_not_the_nodes_verdict() {
        let mut p = pod("a", "n1", "False", "True");
        let conditions = p.status.as_mut().unwrap().conditions.as_mut().unwrap();
        conditions[1].reason = Some(READINESS_GATES_NOT_READY.into());
        assert!(!marked_not_ready_by_node(&p));
    }

    #[test]
    fn the_target_is_a_ready_standby_on_another_node_first() {
        let pods = [
            pod("web-0", "n1", "False", "True"),
            pod("web-1", "n1", "True", "True"),
            pod("web-2", "n2", "True", "True"),
        ];
        assert_eq!(handover_target("web-0", Some("n1"), &pods), Some("web-2"));
        // With no other node, a Ready pod on ours will do.
        assert_eq!(
            handover_target("web-0", Some("n1"), &pods[..2]),
            Some("web-1")
        );
        // Never ourselves, and nobody when no standby is Ready.
        assert_eq!(handover_target("web-2", Some("n2"), &pods[..1]), None);
    }

    #[test]
    fn a_deleted_cordoned_or_unhealthy_standby_is_no_target() {
        let base = pod("web-1", "n2", "True", "True");
        let mut deleted = base.clone();
        deleted.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        let mut cordoned = base.clone();
        cordoned.metadata.annotations = Some([(CORDONED.to_owned(), "true".to_owned())].into());
        let mut unhealthy = base.clone();
        let conditions = unhealthy
            .status
            .as_mut()
            .unwrap()
            .conditions
            .as_mut()
            .unwrap();
        conditions.push(
            serde_json::from_value(
                json!({"type": controls::APP_HEALTHY_CONDITION, "status": "False"}),
            )
            .unwrap(),
        );
        for p in [
            deleted,
            cordoned,
            unhealthy,
            pod("web-1", "n2", "False", "True"),
        ] {
            assert_eq!(handover_target("web-0", Some("n1"), [&p]), None, "{p:?}");
        }
        assert_eq!(handover_target("web-0", Some("n1"), [&base]), Some("web-1"));
    }
}
