//! `kubectl baton pause` / `resume`: the Lease annotation that stops
//! automatic failover.

use anyhow::Context;
use baton_sidecar::contract::controls::PAUSED;
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, api::Patch};

use crate::{
    cluster::{CallError, Cluster, annotation_patch, patch_params},
    output,
    refusal::Refusal,
};

/// What to print once it is done.
pub fn done_message(group: &str, pause: bool) -> String {
    if pause {
        format!(
            "group {group} paused: a failing app is reported, not failed over; switchovers still work"
        )
    } else {
        format!("group {group} resumed")
    }
}

pub async fn run(cluster: &Cluster, group: &str, pause: bool) -> anyhow::Result<()> {
    let namespace = cluster.namespace.as_str();
    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), namespace);
    let patch = annotation_patch(PAUSED, pause.then_some("true"));
    // The patch itself finds out whether the Lease exists: one request, and
    // no window between a check and the write.
    match cluster
        .call(leases.patch(group, &patch_params(), &Patch::Merge(&patch)))
        .await
    {
        Ok(_) => output::line(done_message(group, pause)),
        Err(CallError::Kube(kube::Error::Api(status))) if status.is_not_found() => {
            Err(Refusal::NoLease {
                lease: group.to_owned(),
                namespace: namespace.to_owned(),
            }
            .into())
        }
        Err(err) => {
            Err(err).with_context(|| format!("annotating lease {group} in namespace {namespace:?}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pausing_says_what_still_works() {
        assert_eq!(
            done_message("web", true),
            "group web paused: a failing app is reported, not failed over; switchovers still work"
        );
        assert_eq!(done_message("web", false), "group web resumed");
    }
}
