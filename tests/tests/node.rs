//! What only a real node shows: each pod has its own network namespace (the
//! sidecar's probe of 127.0.0.1 reaches its own app, never a neighbour's),
//! and a client of the Service's ClusterIP, routed by kube-proxy, is answered
//! by the active pod alone, before and after a failover.

use std::{collections::BTreeMap, time::Duration};

use baton_e2e::{
    harness::{Cluster, NeverTwoActive, TestNamespace, http, pod_ip, wait_for_object, wait_until},
    workload,
};
use k8s_openapi::api::{
    coordination::v1::Lease,
    core::v1::{Pod, Service},
};
use kube::Api;

const T: Duration = Duration::from_secs(60);

/// The sidecar's `/status`, once it answers.
async fn status(ns: &TestNamespace, pod: &str) -> serde_json::Value {
    let ip = pod_ip(ns, pod).await;
    for _ in 0..100 {
        if let Ok(r) = http().get(format!("http://{ip}:9095/status")).send().await
            && let Ok(v) = r.json::<serde_json::Value>().await
        {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{pod}'s sidecar never answered /status");
}

async fn holder(ns: &TestNamespace, lease: &str, not: Option<&str>) -> String {
    let l = wait_for_object::<Lease, _>(ns.api(), lease, T, "a holder", |l| {
        l.spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref())
            .is_some_and(|h| !h.is_empty() && Some(h) != not)
    })
    .await;
    l.spec.and_then(|s| s.holder_identity).expect("a holder")
}

/// A pod whose app does not listen on the probed port is unhealthy, even
/// though another pod's app listens on that port: 127.0.0.1 is the pod's
/// own. (Where pods shared one network namespace, the neighbour answered.)
#[tokio::test]
async fn the_probe_reaches_the_pods_own_app_only() {
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("node-localhost").await;
    // A neighbour serving on 8080, without a sidecar.
    ns.apply(&workload::statefulset("neighbour", 1, false, &[]));
    // A group whose app listens on 8081 while its sidecar probes 8080.
    ns.apply(
        &workload::statefulset("web", 1, true, &[])
            .replace(r#"value: "0.0.0.0:8080""#, r#"value: "0.0.0.0:8081""#),
    );
    wait_until::<Pod, _>(ns.api(), "app=neighbour", T, "the neighbour running", |p| {
        p.len() == 1
            && p.iter()
                .all(|p| p.status.as_ref().is_some_and(|s| s.pod_ip.is_some()))
    })
    .await;
    let neighbour = pod_ip(&ns, "neighbour-0").await;
    let mut answered = false;
    for _ in 0..100 {
        if http()
            .get(format!("http://{neighbour}:8080/healthz"))
            .send()
            .await
            .is_ok()
        {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answered, "the neighbour's app serves on 8080");
    // The sidecar has probed (and failed) several times by now.
    let mut last = serde_json::Value::Null;
    for _ in 0..100 {
        last = status(&ns, "web-0").await;
        if !last["app_last_failure"].is_null() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last["app_healthy"], false, "{last}");
    assert!(
        last["app_last_failure"]
            .as_str()
            .is_some_and(|f| f.contains("onnection refused")),
        "the probe found nothing on its own 127.0.0.1:8080: {last}"
    );
    let lease: Api<Lease> = ns.api();
    let held = lease
        .get_opt("web")
        .await
        .expect("reading the lease")
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty());
    assert_eq!(held, None, "an unhealthy pod never takes the Lease");
    ns.delete().await;
}

/// Which pod answers each request to the ClusterIP, a new connection each.
async fn answers(ip: &str, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        let body = match http().get(format!("http://{ip}/")).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => "failed".to_owned(),
        };
        out.push(body.trim().trim_start_matches("hello from ").to_owned());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    out
}

/// Through kube-proxy, the Service's ClusterIP is answered by the active
/// pod only; after a failover, once the new pod answers, the old one never
/// does again.
#[tokio::test]
async fn clients_of_the_cluster_ip_reach_only_the_active_pod_before_and_after_a_failover() {
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("node-clusterip").await;
    let guard = NeverTwoActive::start(ns.api(), "app=web", "role", "active").await;
    ns.apply(&workload::statefulset("web", 2, true, &[]));
    ns.apply(&workload::active_service("web"));
    let old = holder(&ns, "web", None).await;
    let other = if old == "web-0" { "web-1" } else { "web-0" };
    // Both apps healthy: the standby is warm.
    for pod in ["web-0", "web-1"] {
        let mut healthy = false;
        for _ in 0..100 {
            if status(&ns, pod).await["app_healthy"] == true {
                healthy = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(healthy, "{pod}'s app turned healthy");
    }
    let svc: Service = ns.api().get("web-active").await.expect("the Service");
    let ip = svc.spec.and_then(|s| s.cluster_ip).expect("a ClusterIP");
    // kube-proxy applies the endpoint at its next sync: wait for the first answer.
    let mut first = Vec::new();
    for _ in 0..50 {
        first = answers(&ip, 1).await;
        if first == [old.clone()] {
            break;
        }
    }
    assert_eq!(
        first,
        std::slice::from_ref(&old),
        "the holder answers through {ip}"
    );
    let before = answers(&ip, 50).await;
    assert!(
        before.iter().all(|a| *a == old),
        "only the holder: {before:?}"
    );

    // The holder's app fails; the standby takes over.
    let old_ip = pod_ip(&ns, &old).await;
    let r = http()
        .post(format!("http://{old_ip}:8080/control?health=fail"))
        .send()
        .await
        .expect("the demo app answers");
    assert!(r.status().is_success());
    let new = holder(&ns, "web", Some(&old)).await;
    assert_eq!(new, other);
    // Until the new pod answers (at most a few kube-proxy syncs), then 50 more.
    let mut during = Vec::new();
    for _ in 0..250 {
        let a = answers(&ip, 1).await;
        let done = a == [new.clone()];
        during.extend(a);
        if done {
            break;
        }
    }
    assert_eq!(
        during.last(),
        Some(&new),
        "the new holder answers: {during:?}"
    );
    let after = answers(&ip, 50).await;
    assert!(
        after.iter().all(|a| *a == new),
        "once the new holder answered, only it did: {after:?}"
    );
    let tally: BTreeMap<&str, usize> = during.iter().fold(BTreeMap::new(), |mut m, a| {
        *m.entry(a.as_str()).or_default() += 1;
        m
    });
    eprintln!("answers during the switch: {tally:?}");
    assert_eq!(guard.assert_held(), 1);
    ns.delete().await;
}
