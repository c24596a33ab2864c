//! A group's identity is its Lease (docs/design.md, rule 12): deleting the
//! Lease does not move the role, under the never-two-active guard.

use std::time::Duration;

use baton_e2e::{
    group::Group,
    harness::{labelled, wait_for_object, wait_until},
};
use k8s_openapi::api::{coordination::v1::Lease, core::v1::Pod};
use kube::{Api, ResourceExt, api::DeleteParams};

const T: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_deleted_lease_is_recreated_by_its_holder_which_keeps_the_role() {
    let (group, holder) = Group::deploy("identity-lease", 2).await;
    let leases: Api<Lease> = group.ns.api();
    let before = leases.get(&group.name).await.expect("the lease");
    let old_uid = before.uid().expect("a uid");
    let transitions = before.spec.as_ref().and_then(|s| s.lease_transitions);

    leases
        .delete(&group.name, &DeleteParams::default())
        .await
        .expect("delete the lease");
    let after = wait_for_object::<Lease, _>(
        leases.clone(),
        &group.name,
        T,
        "the lease created again with a holder",
        |l| {
            l.uid().as_deref() != Some(old_uid.as_str())
                && l.spec
                    .as_ref()
                    .and_then(|s| s.holder_identity.as_deref())
                    .is_some_and(|h| !h.is_empty())
        },
    )
    .await;
    let spec = after.spec.clone().expect("a spec");
    assert_eq!(
        spec.holder_identity.as_deref(),
        Some(holder.as_str()),
        "the holder re-created it: {after:?}"
    );
    assert_eq!(
        after.annotations().get("baton.dev/switch-reason"),
        Some(&format!("{holder} re-created the deleted lease it held")),
    );
    assert_eq!(
        spec.lease_transitions, transitions,
        "no change of holder counted (I6)"
    );
    // It still holds the role alone, and its sidecar says so.
    let pods = wait_until::<Pod, _>(group.pods(), "app=web", T, "one active pod", |pods| {
        labelled(pods, "role", "active").len() == 1
    })
    .await;
    assert_eq!(
        labelled(&pods, "role", "active"),
        std::slice::from_ref(&holder)
    );
    group.wait_active(&holder).await;
    let status = group.sidecar_status(&holder).await;
    assert_eq!(status["role"], "active", "{status}");

    let holders = group.finish().await;
    assert_eq!(
        holders,
        [Some(holder.clone())],
        "no other holder, before or after the deletion"
    );
}
