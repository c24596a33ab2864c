//! `kubectl baton cordon` / `uncordon`: the pod annotation that keeps a pod
//! from becoming active.

use anyhow::Context;
use baton_sidecar::contract::{controls::CORDONED, role_labels::LabelFlags};
use k8s_openapi::api::{coordination::v1::Lease, core::v1::Pod};
use kube::{Api, api::Patch};

use crate::{
    cluster::{Cluster, annotation_patch, patch_params},
    group::{LeaseState, PodState},
    output,
    refusal::Refusal,
};

/// What to do to a pod asked to be cordoned (or uncordoned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CordonPlan {
    AlreadyDone,
    /// Write the annotation; the pod is in `group`.
    Write {
        group: String,
    },
}

/// Whether a pod can be (un)cordoned, and whether it needs to be.
pub fn plan_cordon(
    name: &str,
    namespace: &str,
    pod: Option<&PodState>,
    cordon: bool,
    group_label: &str,
) -> Result<CordonPlan, Refusal> {
    let pod = pod.ok_or_else(|| Refusal::PodNotFound {
        pod: name.to_owned(),
        namespace: namespace.to_owned(),
    })?;
    let group = pod.group.clone().ok_or_else(|| Refusal::InNoGroup {
        pod: name.to_owned(),
        group_label: group_label.to_owned(),
    })?;
    // A value that means nothing is rewritten either way.
    let meaningless = pod.problems.iter().any(|p| p.key == CORDONED);
    if pod.cordoned == cordon && !meaningless {
        Ok(CordonPlan::AlreadyDone)
    } else {
        Ok(CordonPlan::Write { group })
    }
}

/// What to print once it is done.
pub fn done_message(pod: &str, cordon: bool, plan: &CordonPlan, holds: Option<&str>) -> String {
    let verb = if cordon { "cordoned" } else { "uncordoned" };
    match (plan, holds) {
        (CordonPlan::AlreadyDone, _) => format!("pod/{pod} already {verb}"),
        (CordonPlan::Write { .. }, Some(group)) if cordon => {
            format!("pod/{pod} {verb}; it holds {group} and hands over to a healthy standby")
        }
        (CordonPlan::Write { .. }, _) => format!("pod/{pod} {verb}"),
    }
}

pub async fn run(
    cluster: &Cluster,
    name: &str,
    cordon: bool,
    keys: &LabelFlags,
) -> anyhow::Result<()> {
    let namespace = cluster.namespace.as_str();
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), namespace);
    let pod = cluster
        .call(pods.get_opt(name))
        .await
        .with_context(|| format!("getting pod {name} in namespace {namespace:?}"))?
        .map(|pod| PodState::from_pod(&pod, keys));
    let plan = plan_cordon(name, namespace, pod.as_ref(), cordon, &keys.group_label)?;
    let CordonPlan::Write { group } = &plan else {
        return output::line(done_message(name, cordon, &plan, None));
    };
    let patch = annotation_patch(CORDONED, cordon.then_some("true"));
    cluster
        .call(pods.patch(name, &patch_params(), &Patch::Merge(&patch)))
        .await
        .with_context(|| format!("annotating pod {name} in namespace {namespace:?}"))?;

    let holds = if cordon && holds_lease(cluster, group, name).await {
        Some(group.as_str())
    } else {
        None
    };
    output::line(done_message(name, cordon, &plan, holds))
}

/// Whether `pod` holds its group's Lease. Only to say so: the cordon is
/// done, so a Lease we may not read is no reason to fail.
async fn holds_lease(cluster: &Cluster, group: &str, pod: &str) -> bool {
    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    match cluster.call(leases.get_opt(group)).await {
        Ok(Some(lease)) => LeaseState::from_lease(&lease).holder.as_deref() == Some(pod),
        Ok(None) | Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::fixtures::*;

    fn plan(pod: Option<&PodState>, cordon: bool) -> Result<CordonPlan, Refusal> {
        plan_cordon("web-0", "shop", pod, cordon, "baton.dev/group")
    }

    #[test]
    fn only_a_pod_of_a_group_is_cordoned() {
        assert_eq!(
            plan(None, true).unwrap_err().to_string(),
            r#"pod "web-0" not found in namespace "shop""#
        );
        let mut loner = pod("web-0");
        loner.metadata.labels = None;
        assert_eq!(
            plan(Some(&state(&loner)), true).unwrap_err().to_string(),
            r#"pod "web-0" is in no baton group (it has no baton.dev/group label)"#
        );
    }

    #[test]
    fn a_pod_already_so_is_left_alone() {
        let free = state(&pod("web-0"));
        let cordoned = state(&with_annotation(pod("web-0"), CORDONED, "true"));
        let write = CordonPlan::Write {
            group: "web".into(),
        };
        assert_eq!(plan(Some(&free), true), Ok(write.clone()));
        assert_eq!(plan(Some(&cordoned), true), Ok(CordonPlan::AlreadyDone));
        assert_eq!(plan(Some(&cordoned), false), Ok(write.clone()));
        assert_eq!(plan(Some(&free), false), Ok(CordonPlan::AlreadyDone));
        // "false" is uncordoned already; a value that means nothing is not.
        let unset = state(&with_annotation(pod("web-0"), CORDONED, "false"));
        assert_eq!(plan(Some(&unset), false), Ok(CordonPlan::AlreadyDone));
        let garbled = state(&with_annotation(pod("web-0"), CORDONED, "yes"));
        assert_eq!(plan(Some(&garbled), false), Ok(write.clone()));
        assert_eq!(plan(Some(&garbled), true), Ok(write));
    }

    #[test]
    fn cordoning_the_holder_says_it_hands_over() {
        let write = CordonPlan::Write {
            group: "web".into(),
        };
        assert_eq!(
            done_message("web-0", true, &write, Some("web")),
            "pod/web-0 cordoned; it holds web and hands over to a healthy standby"
        );
        assert_eq!(
            done_message("web-1", true, &write, None),
            "pod/web-1 cordoned"
        );
        assert_eq!(
            done_message("web-0", false, &write, None),
            "pod/web-0 uncordoned"
        );
        assert_eq!(
            done_message("web-0", true, &CordonPlan::AlreadyDone, None),
            "pod/web-0 already cordoned"
        );
        assert_eq!(
            done_message("web-0", false, &CordonPlan::AlreadyDone, None),
            "pod/web-0 already uncordoned"
        );
    }
}
