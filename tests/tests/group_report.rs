//! What the holder says about its group's pods looked at together, on the
//! two real nodes, with hand-written sidecars (no webhook: its group check
//! would refuse the second workload). Every standby on the holder's node:
//! the holder's `/status`, its metric, a Warning Event and `kubectl baton
//! status` say so, and stop saying it once the standby runs elsewhere (a
//! Normal Event). Pods of a StatefulSet and a Deployment in one group: the
//! same places name both owners. Each under the never-two-active guard.

use std::time::Duration;

use baton_e2e::{
    harness::{
        Cluster, NeverTwoActive, TestNamespace, pod_ip, pod_node, sidecar_get, wait_for_holder,
        wait_status, wait_until,
    },
    workload,
};
use baton_sidecar::contract::{Role, Status};
use k8s_openapi::api::{core::v1::Pod, events::v1::Event};
use kube::{ResourceExt, api::DeleteParams};
use serde_json::Value;

const T: Duration = Duration::from_secs(90);
const GROUP: &str = "web";

/// A namespace on two real nodes, and the guard of group `web`.
async fn setup(test: &str) -> (Cluster, TestNamespace, NeverTwoActive) {
    let cluster = Cluster::connect().await;
    assert!(
        cluster.nodes.len() >= 2,
        "these tests need two real nodes (BATON_REAL_NODES=2, as make test starts)"
    );
    let ns = cluster.namespace(test).await;
    let selector = format!("baton.dev/group={GROUP}");
    let guard = NeverTwoActive::start(ns.api(), &selector, "role", "active").await;
    (cluster, ns, guard)
}

/// The StatefulSet `web` of `replicas` pods with `pod_spec` lines, updated
/// only when a pod is deleted: a changed placement then moves only the pod
/// the test deletes.
fn statefulset(replicas: u32, pod_spec: &str) -> String {
    workload::statefulset_placed(GROUP, replicas, true, &[], pod_spec).replace(
        "  podManagementPolicy: Parallel\n",
        "  podManagementPolicy: Parallel\n  updateStrategy: {type: OnDelete}\n",
    )
}

/// A Deployment `name` of one pod whose sidecar joins group `web` (its
/// Lease and its group label), as a Deployment admitted while the webhook
/// was down would.
fn deployment_in_group(name: &str) -> String {
    let set = workload::statefulset_placed(name, 1, true, &[], "");
    let lease = format!("{{name: BATON_LEASE_NAME, value: \"{name}\"}}");
    let group = format!("baton.dev/group: {name},");
    assert!(set.contains(&lease) && set.contains(&group), "{set}");
    set.replace("kind: StatefulSet", "kind: Deployment")
        .replace(&format!("  serviceName: {name}\n"), "")
        .replace("  podManagementPolicy: Parallel\n", "")
        .replace(
            &lease,
            &format!("{{name: BATON_LEASE_NAME, value: \"{GROUP}\"}}"),
        )
        .replace(&group, &format!("baton.dev/group: {GROUP},"))
}

/// The holder's `/status` once `done` holds for it.
async fn holder_status(
    ns: &TestNamespace,
    holder: &str,
    what: &str,
    done: impl Fn(&Status) -> bool,
) -> Status {
    let ip = pod_ip(ns, holder).await;
    let status = wait_status(&ip, T, what, done).await;
    assert_eq!(status.pod, holder, "{what}: {status:?}");
    status
}

/// The value of the gauge `name` in `pod`'s metrics.
async fn gauge(ns: &TestNamespace, pod: &str, name: &str) -> Option<i64> {
    let text = sidecar_get(ns, pod, "/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Waits for an Event of the sidecar on `pod` with `reason`; its notes.
async fn wait_event(ns: &TestNamespace, reason: &str, pod: &str) -> Vec<String> {
    let matching = |e: &Event| {
        e.reason.as_deref() == Some(reason)
            && e.reporting_controller.as_deref() == Some("baton-sidecar")
            && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(pod)
    };
    let what = format!("a {reason} Event on pod {pod}");
    let events =
        wait_until::<Event, _>(ns.api(), "", T, &what, |events| events.iter().any(matching)).await;
    events
        .iter()
        .filter(|e| matching(e))
        .map(|e| e.note.clone().unwrap_or_default())
        .collect()
}

/// `kubectl baton status web -o json`'s group, and the table's stderr.
fn plugin_view(ns: &TestNamespace) -> (Value, String) {
    let out = ns.kubectl_baton(&["status", GROUP, "-o", "json"]);
    assert!(out.status.success(), "{out:?}");
    let json: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let table = ns.kubectl_baton(&["status", GROUP]);
    assert!(table.status.success(), "{table:?}");
    let text = String::from_utf8_lossy(&table.stdout).into_owned()
        + &String::from_utf8_lossy(&table.stderr);
    (json["groups"][0].clone(), text)
}

/// Two pods pinned to one node: the holder reports every standby on its
/// node; the standby moved to the other node (spread constraints, then the
/// standby deleted), the report clears.
#[tokio::test]
async fn standbys_on_the_holders_node_are_reported_until_one_runs_elsewhere() {
    let (cluster, ns, guard) = setup("group-one-node").await;
    ns.apply(&statefulset(2, workload::ON_REAL_NODE));
    let holder = wait_for_holder(&ns, GROUP, None).await;
    let pods = wait_until::<Pod, _>(ns.api(), "app=web", T, "2 scheduled pods", |pods| {
        pods.len() == 2
            && pods
                .iter()
                .all(|p| p.spec.as_ref().is_some_and(|s| s.node_name.is_some()))
    })
    .await;
    let node = pod_node(&pods[0]);
    assert!(pods.iter().all(|p| pod_node(p) == node), "pinned to {node}");
    let standby = pods
        .iter()
        .map(ResourceExt::name_any)
        .find(|p| *p != holder)
        .expect("two pods");

    let status = holder_status(&ns, &holder, "every standby on the holder's node", |s| {
        s.standbys_on_own_node
    })
    .await;
    assert!(status.standbys_on_own_node, "{status:?}");
    assert_eq!(status.group_pods, Some(2), "{status:?}");
    assert_eq!(
        status.group_nodes,
        std::slice::from_ref(&node),
        "{status:?}"
    );
    assert_eq!(status.group_owners, ["StatefulSet/web"], "{status:?}");
    let warnings = &status.group_warnings;
    assert!(
        warnings.len() == 1 && warnings[0].contains(&node),
        "{status:?}"
    );
    assert_eq!(
        gauge(&ns, &holder, "baton_group_standbys_same_node").await,
        Some(1)
    );
    let standby_ip = pod_ip(&ns, &standby).await;
    let standby_status = wait_status(&standby_ip, T, "the standby passive", |s| {
        s.role == Some(Role::Passive)
    })
    .await;
    assert_eq!(
        standby_status.group_pods, None,
        "only the holder looks at the group: {standby_status:?}"
    );
    assert_eq!(
        gauge(&ns, &standby, "baton_group_standbys_same_node").await,
        Some(0)
    );
    let notes = wait_event(&ns, "GroupOnOneNode", &holder).await;
    assert!(
        notes
            .iter()
            .any(|n| n.contains(&node) && n.contains("topologySpreadConstraints")),
        "{notes:?}"
    );
    let (group, table) = plugin_view(&ns);
    assert_eq!(group["standbysOnHolderNode"], true, "{group}");
    assert!(
        table.contains("one-node") && table.contains(&format!("runs on node {node}")),
        "{table}"
    );

    // Spread constraints in place of the pin; the standby deleted comes
    // back on the other node (the holder's counts on its own).
    ns.apply(&statefulset(2, &workload::spread_over_nodes(GROUP)));
    ns.api::<Pod>()
        .delete(&standby, &DeleteParams::default())
        .await
        .expect("deleting the standby");
    let moved = wait_until::<Pod, _>(
        ns.api(),
        "app=web",
        T,
        "the standby re-created on another node",
        |pods| {
            pods.iter().any(|p| {
                p.name_any() == standby
                    && p.metadata.deletion_timestamp.is_none()
                    && p.spec
                        .as_ref()
                        .and_then(|s| s.node_name.as_deref())
                        .is_some_and(|n| n != node)
            })
        },
    )
    .await;
    let other = moved
        .iter()
        .find(|p| p.name_any() == standby)
        .map(pod_node)
        .expect("the standby");
    let status = holder_status(&ns, &holder, "the standby on another node", |s| {
        !s.standbys_on_own_node && s.group_nodes.len() == 2
    })
    .await;
    assert!(!status.standbys_on_own_node, "{status:?}");
    let mut nodes = vec![node.clone(), other];
    nodes.sort();
    assert_eq!(status.group_nodes, nodes, "{status:?}");
    assert!(status.group_warnings.is_empty(), "{status:?}");
    assert_eq!(
        gauge(&ns, &holder, "baton_group_standbys_same_node").await,
        Some(0)
    );
    let notes = wait_event(&ns, "GroupSpread", &holder).await;
    assert!(notes.iter().any(|n| n.contains(&node)), "{notes:?}");
    let (group, table) = plugin_view(&ns);
    assert_eq!(group["standbysOnHolderNode"], false, "{group}");
    assert!(!table.contains("one-node"), "{table}");

    let most = guard.assert_held().await;
    assert_eq!(most, 1, "some pod was active at some point");
    ns.delete().await;
    drop(cluster);
}

/// A StatefulSet and a Deployment whose pods share group `web` (as pods
/// admitted while the webhook was down would): the holder names both.
#[tokio::test]
async fn pods_of_two_workloads_in_one_group_are_reported_with_both_owners() {
    let (cluster, ns, guard) = setup("group-owners").await;
    ns.apply(&statefulset(1, ""));
    ns.apply(&deployment_in_group("web-deploy"));
    let holder = wait_for_holder(&ns, GROUP, None).await;
    let owners = ["Deployment/web-deploy", "StatefulSet/web"];
    let status = holder_status(&ns, &holder, "both owners", |s| s.group_owners == owners).await;
    assert_eq!(status.group_owners, owners, "{status:?}");
    assert!(
        status
            .group_warnings
            .iter()
            .any(|w| w.contains("several workloads")),
        "{status:?}"
    );
    assert_eq!(gauge(&ns, &holder, "baton_group_owners").await, Some(2));
    let notes = wait_event(&ns, "GroupHasSeveralOwners", &holder).await;
    assert!(
        notes
            .iter()
            .any(|n| n.contains("(Deployment/web-deploy, StatefulSet/web)")
                && n.contains("baton.dev/lease-name")),
        "{notes:?}"
    );
    let (group, table) = plugin_view(&ns);
    assert_eq!(group["owners"], serde_json::json!(owners), "{group}");
    assert!(table.contains("several-owners"), "{table}");

    let most = guard.assert_held().await;
    assert_eq!(most, 1, "some pod was active at some point");
    ns.delete().await;
    drop(cluster);
}
