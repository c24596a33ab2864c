//! A group's identity is its Lease (docs/design.md, rule 12): deleting the
//! Lease does not move the role, under the never-two-active guard; and the
//! webhook refuses a second workload's pods into a group (docs/webhook.md).

use std::time::Duration;

use baton_e2e::{
    group::Group,
    harness::{Cluster, labelled, wait_for_holder, wait_for_object, wait_until},
    install::InstalledWebhook,
    webhook::sidecars,
    workload,
};
use baton_sidecar::contract::Role;
use k8s_openapi::api::{
    apps::v1::Deployment, coordination::v1::Lease, core::v1::Pod, events::v1::Event,
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
};
use serde_json::json;

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
    assert_eq!(status.role, Some(Role::Active), "{status:?}");

    let holders = group.finish().await;
    assert_eq!(
        holders,
        [Some(holder.clone())],
        "no other holder, before or after the deletion"
    );
}

/// A demo-app Deployment `name` whose pods are labelled `app: {app}`,
/// opted in by its own `baton.dev/inject` annotation.
fn opted_in_deployment(name: &str, app: &str, replicas: u32) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  annotations: {{baton.dev/inject: "true"}}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: {app}}}
  template:
    metadata:
      labels: {{app: {app}}}
    spec:
      terminationGracePeriodSeconds: 5
      containers:
      - name: app
        image: {image}
        ports: [{{name: http, containerPort: {port}}}]
        env:
        - name: POD_NAME
          valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
        - {{name: LISTEN_ADDR, value: "0.0.0.0:{port}"}}
"#,
        image = workload::DEMO_APP_IMAGE,
        port = workload::APP_PORT,
    )
}

#[tokio::test]
async fn a_second_workload_of_the_same_name_is_refused_until_it_has_its_own_group() {
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("identity-kinds").await;
    InstalledWebhook::shared(&ns).await;
    ns.apply(&workload::statefulset("web", 2, false, &[]).replacen(
        "metadata:\n  name: web\n",
        "metadata:\n  name: web\n  annotations: {baton.dev/inject: \"true\"}\n",
        1,
    ));
    wait_until::<Pod, _>(
        ns.api(),
        "app=web",
        T,
        "the StatefulSet's two injected pods, one active",
        |pods| {
            pods.len() == 2
                && pods.iter().all(|p| sidecars(p) == 1)
                && labelled(pods, "role", "active").len() == 1
        },
    )
    .await;
    let holder = wait_for_holder(&ns, "web", None).await;

    // A Deployment of the same name: applied, but its pods are refused.
    ns.apply(&opted_in_deployment("web", "web-d", 1));
    let refused = |e: &Event| {
        e.reason.as_deref() == Some("FailedCreate")
            && e.regarding.as_ref().is_some_and(|r| {
                r.kind.as_deref() == Some("ReplicaSet")
                    && r.name.as_deref().is_some_and(|n| n.starts_with("web-"))
            })
    };
    let events = wait_until::<Event, _>(
        ns.api(),
        "",
        T,
        "a FailedCreate Event on the Deployment's ReplicaSet",
        |events| events.iter().any(refused),
    )
    .await;
    let note = events
        .iter()
        .find(|e| refused(e))
        .and_then(|e| e.note.clone())
        .unwrap_or_default();
    for part in [
        "Deployment/web cannot join group \"web\"",
        "StatefulSet/web",
        "baton.dev/lease-name: web-deploy on Deployment/web",
    ] {
        assert!(note.contains(part), "{part:?} in {note}");
    }
    let pods: Api<Pod> = ns.api();
    let deployed = pods
        .list(&kube::api::ListParams::default().labels("app=web-d"))
        .await
        .expect("list the Deployment's pods");
    assert!(deployed.items.is_empty(), "{:?}", deployed.items);
    let group = wait_until::<Pod, _>(
        ns.api(),
        "baton.dev/group=web",
        T,
        "the StatefulSet's group: its two pods, one active",
        |pods| pods.len() == 2 && labelled(pods, "role", "active").len() == 1,
    )
    .await;
    assert_eq!(
        labelled(&group, "role", "active"),
        std::slice::from_ref(&holder)
    );
    assert!(
        group
            .iter()
            .all(|p| p.labels().get("app").map(String::as_str) == Some("web")),
        "only the StatefulSet's pods in group web: {:?}",
        group.iter().map(ResourceExt::name_any).collect::<Vec<_>>()
    );

    // The fix the message names: its own group.
    let deployments: Api<Deployment> = ns.api();
    let template_annotation = json!({"spec": {"template": {"metadata": {"annotations": {
        "baton.dev/lease-name": "web-deploy"
    }}}}});
    deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(&template_annotation),
        )
        .await
        .expect("annotate the Deployment's pod template");
    let own = wait_until::<Pod, _>(
        ns.api(),
        "app=web-d",
        T,
        "the Deployment's pod injected in group web-deploy",
        |pods| {
            pods.len() == 1
                && pods.iter().all(|p| {
                    sidecars(p) == 1
                        && p.labels().get("baton.dev/group").map(String::as_str)
                            == Some("web-deploy")
                })
        },
    )
    .await;
    let deploy_holder = wait_for_holder(&ns, "web-deploy", None).await;
    assert_eq!(deploy_holder, own[0].name_any());
    assert_eq!(
        wait_for_holder(&ns, "web", None).await,
        holder,
        "the StatefulSet's group kept its holder"
    );
    ns.delete().await;
}
