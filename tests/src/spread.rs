//! A group of two pods spread over the real nodes, one per node, with a
//! PodDisruptionBudget and the Service kind asked for: what the node-event
//! tests (tests/tests/nodes.rs) and the bench's node part (bench/nodes.rs)
//! put under a node's fault.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{Api, ResourceExt};

use crate::{
    harness::{
        Cluster, TestNamespace, node_ready, nodes::RealNode, pod_node, pod_ready, wait_app_healthy,
        wait_endpoints, wait_for_holder, wait_for_object, wait_roles, wait_until,
    },
    workload,
};

/// The group's name, its Lease's and its pods' `app` label.
pub const GROUP: &str = "web";
/// The Service that selects the role label or holds the holder's endpoint.
pub const SERVICE: &str = "web-active";

/// How the Service follows the holder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The Service selects `role: active`.
    Labels,
    /// A Service without a selector; the holder writes its endpoint.
    HolderEndpoint,
    /// A Service of the whole group through the sidecars' proxy (README's
    /// install); the role-label Service beside it keeps the watchers' view.
    Proxy,
}

/// The deployed group: who holds, who stands by, where each pod runs.
#[derive(Clone, Debug)]
pub struct Placed {
    pub holder: String,
    pub standby: String,
    /// Each pod's node.
    pub node_of: BTreeMap<String, String>,
    /// The Service the group's clients call.
    pub client_service: String,
}

impl Placed {
    /// The real node of the holder's pod.
    pub fn holder_node(&self, cluster: &Cluster) -> RealNode {
        cluster.node(&self.node_of[&self.holder]).clone()
    }
}

/// Deploys the group in `ns` (the sidecar writes its role file) and waits
/// until the holder alone is active, both apps healthy and [`SERVICE`]
/// lists the holder; panics, as the harness's waits do, if the pods do not
/// land on two nodes.
pub async fn deploy(ns: &TestNamespace, kind: Kind) -> Placed {
    let role_file = format!("{}/role.json", workload::RUN_DIR);
    let mut env = vec![("BATON_ROLE_FILE", role_file.as_str())];
    let service = match kind {
        Kind::Labels | Kind::Proxy => workload::active_service(GROUP),
        Kind::HolderEndpoint => {
            env.push(("BATON_SERVICE", SERVICE));
            workload::holder_endpoint_service(GROUP)
        }
    };
    ns.apply(&service);
    let client_service = if kind == Kind::Proxy {
        ns.apply(&workload::proxied_service(
            GROUP,
            workload::ProxiedService::WholeGroup,
        ));
        workload::proxied_service_name(GROUP)
    } else {
        SERVICE.to_owned()
    };
    // The sidecar's probes are the webhook's (workload.rs is checked
    // against it): the pod is Ready (for the PodDisruptionBudget, the
    // Service) once /readyz answers.
    ns.apply(&workload::statefulset_placed(
        GROUP,
        2,
        true,
        &env,
        &workload::spread_over_nodes(GROUP),
    ));
    ns.apply(&workload::pod_disruption_budget(GROUP));
    let holder = wait_for_holder(ns, GROUP, None).await;
    let t = Duration::from_secs(60);
    let labels = format!("app={GROUP}");
    let pods = wait_until::<Pod, _>(ns.api(), &labels, t, "2 pods with an IP", |pods| {
        pods.len() == 2
            && pods
                .iter()
                .all(|p| p.status.as_ref().is_some_and(|s| s.pod_ip.is_some()))
    })
    .await;
    let node_of: BTreeMap<String, String> =
        pods.iter().map(|p| (p.name_any(), pod_node(p))).collect();
    assert_eq!(
        node_of.values().collect::<BTreeSet<_>>().len(),
        2,
        "the pods are spread over two nodes: {node_of:?}"
    );
    let standby = node_of
        .keys()
        .find(|p| **p != holder)
        .expect("two pods")
        .clone();
    for pod in node_of.keys() {
        wait_app_healthy(ns, pod).await;
    }
    wait_roles(ns, &labels, &holder, 1).await;
    wait_endpoints(ns, SERVICE, &[&holder], t).await;
    Placed {
        holder,
        standby,
        node_of,
        client_service,
    }
}

/// Waits until `node` is Ready again after a fault (within the node
/// lifecycle controller's grace period and some), `pod` is Ready and
/// [`SERVICE`] lists `serving` alone.
pub async fn wait_back(
    cluster: &Cluster,
    ns: &TestNamespace,
    node: &str,
    pod: &str,
    serving: &str,
) {
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    wait_for_object::<Node, _>(
        nodes,
        node,
        Duration::from_secs(120),
        "the node Ready again",
        node_ready,
    )
    .await;
    let t = Duration::from_secs(60);
    wait_for_object::<Pod, _>(ns.api(), pod, t, "the pod Ready again", pod_ready).await;
    wait_endpoints(ns, SERVICE, &[serving], t).await;
}

/// Whether the group's Lease holder runs on `node` now.
pub async fn holder_on(ns: &TestNamespace, node: &str) -> bool {
    let holder = wait_for_holder(ns, GROUP, None).await;
    let pod: Pod = ns.api().get(&holder).await.expect("the holder's pod");
    pod_node(&pod) == node
}

/// `kubectl drain` of `node`, as a node's maintenance begins, then waits
/// until the group serves from the pod left: a holder, labelled alone
/// active, the one endpoint of [`SERVICE`]. The evicted pod waits Pending
/// for a node of its own, since the spread counts a cordoned node
/// ([`workload::spread_over_nodes`]). kubectl blocks for the whole drain,
/// so it runs off the runtime's threads and the clients keep sending.
/// Returns the holder.
pub async fn drain(cluster: &Cluster, ns: &TestNamespace, node: &str) -> String {
    let kubectl = cluster.clone();
    let n = node.to_owned();
    let out = tokio::task::spawn_blocking(move || {
        kubectl.kubectl(
            &[
                "drain",
                &n,
                "--ignore-daemonsets",
                "--delete-emptydir-data",
                "--timeout=180s",
            ],
            None,
        )
    })
    .await
    .expect("kubectl drain ran");
    assert!(
        out.status.success(),
        "kubectl drain {node}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let holder = wait_for_holder(ns, GROUP, None).await;
    let what = format!("{holder} alone active");
    let t = Duration::from_secs(60);
    wait_until::<Pod, _>(ns.api(), &format!("app={GROUP}"), t, &what, |pods| {
        let active = pods
            .iter()
            .filter(|p| p.labels().get("role").is_some_and(|r| r == "active"));
        active.map(|p| p.name_any()).eq([holder.clone()])
    })
    .await;
    wait_endpoints(ns, SERVICE, &[&holder], Duration::from_secs(60)).await;
    holder
}

/// `kubectl uncordon` of `node` after [`drain`], then waits until the
/// group is whole again: the pod that waited is placed there, Ready and
/// healthy, passive beside `holder`.
pub async fn uncordon(cluster: &Cluster, ns: &TestNamespace, node: &str, holder: &str) {
    let out = cluster.kubectl(&["uncordon", node], None);
    assert!(out.status.success(), "kubectl uncordon {node}");
    let labels = format!("app={GROUP}");
    let t = Duration::from_secs(120);
    let pods = wait_until::<Pod, _>(ns.api(), &labels, t, "2 Ready pods", |pods| {
        pods.len() == 2
            && pods
                .iter()
                .all(|p| pod_ready(p) && p.metadata.deletion_timestamp.is_none())
    })
    .await;
    for pod in &pods {
        wait_app_healthy(ns, &pod.name_any()).await;
    }
    wait_roles(ns, &labels, holder, 1).await;
}
