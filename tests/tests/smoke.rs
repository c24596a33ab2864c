//! The harness is real: pods of a StatefulSet become Ready on KWOK nodes,
//! EndpointSlices follow the role label, the API server enforces
//! resourceVersion preconditions, and the runner runs our images as local
//! processes bound to the pod IPs.

use std::time::Duration;

use baton_e2e::{
    harness::{Cluster, http, labelled, pod_ip, wait_endpoints, wait_until},
    workload,
};
use k8s_openapi::api::{coordination::v1::Lease, core::v1::Pod};
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

const T: Duration = Duration::from_secs(60);

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

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
        "2 Ready pods on KWOK nodes",
        |pods| pods.len() == 2 && pods.iter().all(is_ready),
    )
    .await;
    for p in &pods {
        let spec = p.spec.as_ref().expect("spec");
        assert!(
            spec.node_name
                .as_deref()
                .is_some_and(|n| n.starts_with("kwok-node-"))
        );
        let ip = p
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .expect("pod IP");
        assert!(
            ip.starts_with("10.244."),
            "pod IPs come from KWOK's CIDR: {ip}"
        );
    }
    wait_endpoints(&ns, "web-active", &[], T).await;

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
    let pods = wait_until::<Pod, _>(ns.api(), "app=web", T, "labels", |_| true).await;
    assert_eq!(labelled(&pods, "role", "active"), ["web-1"]);
    ns.delete().await;
}

#[tokio::test]
async fn a_lease_replace_with_a_stale_resource_version_conflicts() {
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("smoke-lease").await;
    let api = ns.api::<Lease>();
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"holderIdentity": "web-0", "leaseDurationSeconds": 6}
    }))
    .expect("a lease");
    let v1 = api
        .create(&PostParams::default(), &lease)
        .await
        .expect("create");
    let mut v2 = v1.clone();
    v2.spec.as_mut().expect("spec").holder_identity = Some("web-1".into());
    api.replace("web", &PostParams::default(), &v2)
        .await
        .expect("replace with the current version");

    let mut stale = v1.clone();
    stale.spec.as_mut().expect("spec").holder_identity = Some("web-2".into());
    match api.replace("web", &PostParams::default(), &stale).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 409, "{s:?}"),
        other => panic!("a stale replace must conflict, got {other:?}"),
    }
    let now = api.get("web").await.expect("get");
    assert_eq!(
        now.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("web-1")
    );
    ns.delete().await;
}

#[tokio::test]
async fn the_runner_starts_the_demo_app_on_the_pod_ip() {
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("smoke-runner").await;
    ns.apply(&workload::statefulset("hello", 1, false, &[]));
    wait_until::<Pod, _>(ns.api(), "app=hello", T, "a Ready pod", |pods| {
        pods.len() == 1 && pods.iter().all(is_ready)
    })
    .await;
    let pid = ns.pid("hello-0", "app", T).await;
    assert!(pid > 1);
    let ip = pod_ip(&ns, "hello-0").await;
    let url = format!("http://{ip}:8080/");
    // The process binds once started; retry connection refusals briefly.
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
