//! The harness is real: pods of a StatefulSet become Ready on the real nodes
//! (kubelet, containerd, CNI, each node's pod range from node IPAM),
//! EndpointSlices follow the role label,
//! and kube-proxy routes a Service's ClusterIP to its endpoint. (That the
//! API server refuses a stale resourceVersion, through baton's own Lease
//! client, is tests/tests/election_race.rs's.)

use std::time::Duration;

use baton_e2e::{
    harness::{Cluster, http, labelled, pod_ip, pod_ready, wait_endpoints, wait_until},
    workload,
};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use serde_json::json;

const T: Duration = Duration::from_secs(60);

#[tokio::test]
async fn endpoints_follow_the_role_label_across_pods() {
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("smoke-endpoints").await;
    // No sidecar: this test moves the label by hand.
    ns.apply(&workload::statefulset("web", 2, false, &[]));
    ns.apply(&workload::active_service("web"));
    let pods = wait_until::<Pod, _>(
        ns.api(),
        "app=web",
        T,
        "2 Ready pods on the real nodes",
        |pods| pods.len() == 2 && pods.iter().all(pod_ready),
    )
    .await;
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    for p in &pods {
        let spec = p.spec.as_ref().expect("spec");
        let node = spec.node_name.as_deref().expect("a scheduled pod");
        assert!(
            cluster.nodes.iter().any(|n| n.name == node),
            "{node} is a real node"
        );
        // Node IPAM gives each node a /24; its CNI bridge hands them out.
        let range = nodes
            .get(node)
            .await
            .expect("the pod's node")
            .spec
            .and_then(|s| s.pod_cidr)
            .expect("node IPAM gave the node a pod range");
        let prefix = range.trim_end_matches("0/24");
        let ip = p
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .expect("pod IP");
        assert!(
            range.ends_with(".0/24") && ip.starts_with(prefix),
            "pod IPs come from the node's range {range}: {ip}"
        );
    }

    let api = ns.api::<Pod>();
    let set = |role: &'static str| Patch::Merge(json!({"metadata": {"labels": {"role": role}}}));
    api.patch("web-0", &PatchParams::default(), &set("active"))
        .await
        .expect("label web-0");
    wait_endpoints(&ns, "web-active", &["web-0"], T).await;

    api.patch("web-0", &PatchParams::default(), &set("passive"))
        .await
        .expect("unlabel web-0");
    api.patch("web-1", &PatchParams::default(), &set("active"))
        .await
        .expect("label web-1");
    wait_endpoints(&ns, "web-active", &["web-1"], T).await;
    let pods = ns
        .api::<Pod>()
        .list(&Default::default())
        .await
        .expect("pods");
    assert_eq!(labelled(&pods.items, "role", "active"), ["web-1"]);
    // kube-proxy routes the ClusterIP to that one pod.
    let svc: Service = ns.api().get("web-active").await.expect("the Service");
    let ip = svc.spec.and_then(|s| s.cluster_ip).expect("a ClusterIP");
    let mut last = String::new();
    for _ in 0..100 {
        match http().get(format!("http://{ip}/")).send().await {
            Ok(r) => {
                last = r.text().await.unwrap_or_default();
                if last == "hello from web-1\n" {
                    break;
                }
            }
            Err(e) => last = e.to_string(),
        }
        // kube-proxy applies the endpoint once per sync (at most 1 s apart).
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last, "hello from web-1\n", "through the ClusterIP {ip}");
    ns.delete().await;
}

#[tokio::test]
async fn the_node_runs_the_demo_app_image_on_the_pod_ip() {
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("smoke-node").await;
    ns.apply(&workload::statefulset("hello", 1, false, &[]));
    wait_until::<Pod, _>(ns.api(), "app=hello", T, "a Ready pod", |pods| {
        pods.len() == 1 && pods.iter().all(pod_ready)
    })
    .await;
    let pid = ns.pid("hello-0", "app", T).await;
    assert!(pid > 1);
    let ip = pod_ip(&ns, "hello-0").await;
    let url = format!("http://{ip}:8080/");
    // The process binds once started; retry connection refusals briefly.
    // Ready (the pod has no probe) means started, not yet bound.
    let mut body = String::new();
    for _ in 0..100 {
        if let Ok(r) = http().get(&url).send().await {
            body = r.text().await.expect("body");
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        body,
        "hello from hello-0\n",
        "log: {}",
        ns.log_tail("hello-0", "app")
    );
    ns.delete().await;
}
