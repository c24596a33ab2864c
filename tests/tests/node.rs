//! What only a real node shows: each pod has its own network namespace (the
//! sidecar's probe of 127.0.0.1 reaches its own app, never a neighbour's);
//! a client of the Service's ClusterIP, routed by kube-proxy, is answered by
//! the active pod alone, before and after a failover; kubelet starts the
//! native sidecar before the app and stops it only after the app.

use std::{collections::BTreeMap, time::Duration};

use baton_e2e::{
    harness::{
        Cluster, NeverTwoActive, TestNamespace, http, pod_ip, set_app_health, sidecar_status,
        wait_for_holder, wait_until,
    },
    workload,
};
use k8s_openapi::api::{
    coordination::v1::Lease,
    core::v1::{Pod, Service},
};
use kube::Api;

const T: Duration = Duration::from_secs(60);

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
    let mut last = sidecar_status(&ns, "web-0").await;
    for _ in 1..100 {
        if last.app_last_failure.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        last = sidecar_status(&ns, "web-0").await;
    }
    assert!(!last.app_healthy, "{last:?}");
    assert!(
        last.app_last_failure
            .as_deref()
            .is_some_and(|f| f.contains("onnection refused")),
        "the probe found nothing on its own 127.0.0.1:8080: {last:?}"
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
    let old = wait_for_holder(&ns, "web", None).await;
    let other = if old == "web-0" { "web-1" } else { "web-0" };
    // Both apps healthy: the standby is warm.
    for pod in ["web-0", "web-1"] {
        let mut healthy = false;
        for _ in 0..100 {
            if sidecar_status(&ns, pod).await.app_healthy {
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
    set_app_health(&ns, &old, "fail").await;
    let new = wait_for_holder(&ns, "web", Some(&old)).await;
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
    assert_eq!(guard.assert_held().await, 1);
    ns.delete().await;
}

/// When a container wrote its first log line, as the runtime stamped it.
fn first_line_at(ns: &TestNamespace, pod: &str, container: &str) -> k8s_openapi::jiff::Timestamp {
    let logs = ns.kubectl_ok(&["logs", pod, "-c", container, "--timestamps"], None);
    let first = logs
        .lines()
        .next()
        .unwrap_or_else(|| panic!("{container} logged nothing"));
    let stamp = first.split_whitespace().next().unwrap_or_default();
    stamp
        .parse()
        .unwrap_or_else(|e| panic!("{container}'s log stamp {stamp:?}: {e}"))
}

/// kubelet starts the native sidecar before the app, and stops it only
/// after the app: while the app, told to stop, still finishes a request in
/// flight (it stops accepting at once), the sidecar keeps serving; it never
/// stops while the app still accepts.
#[tokio::test]
async fn the_native_sidecar_starts_before_the_app_and_outlives_it_on_deletion() {
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("node-order").await;
    ns.apply(&workload::statefulset("web", 1, true, &[]));
    wait_for_holder(&ns, "web", None).await;
    let ip = pod_ip(&ns, "web-0").await;
    let status = sidecar_status(&ns, "web-0").await;
    assert!(status.app_healthy, "{status:?}");

    // Start: kubelet launches the app only once the sidecar runs, so the
    // sidecar's first line comes first (a sidecar among the regular
    // containers would start beside the app, after it in the list).
    // (kubectl logs needs the pod's status to say so, which may lag the app.)
    ns.pid("web-0", "app", T).await;
    let sidecar_at = first_line_at(&ns, "web-0", "baton-sidecar");
    let app_at = first_line_at(&ns, "web-0", "app");
    assert!(
        sidecar_at < app_at,
        "the sidecar's first line ({sidecar_at}) precedes the app's ({app_at})"
    );

    // A request that hangs keeps the app running after SIGTERM, until kubelet
    // kills it at the end of the grace period (5 s in the workload).
    set_app_health(&ns, "web-0", "hang").await;
    let patient = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("a client");
    let in_flight = tokio::spawn({
        let url = format!("http://{ip}:8080/healthz");
        async move { patient.get(url).send().await.map(|r| r.status()) }
    });
    // The hanging request has reached the app once its probe times out too.
    let mut hung = false;
    for _ in 0..100 {
        if sidecar_status(&ns, "web-0")
            .await
            .app_last_failure
            .as_deref()
            == Some("timed out")
        {
            hung = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(hung, "the app hangs on /healthz");

    let pods: Api<Pod> = ns.api();
    pods.delete("web-0", &Default::default())
        .await
        .expect("deleting the pod");
    // (app accepts, sidecar answers), one sample every 50 ms until both stop.
    let quick = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(300))
        .build()
        .expect("a client");
    let up = |url: String| {
        let quick = quick.clone();
        async move { quick.get(url).send().await.is_ok() }
    };
    let mut samples = Vec::new();
    for _ in 0..400 {
        let app = up(format!("http://{ip}:8080/")).await;
        let sidecar = up(format!("http://{ip}:9095/healthz")).await;
        samples.push((app, sidecar));
        if !app && !sidecar {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        samples.last(),
        Some(&(false, false)),
        "both stopped in 20 s"
    );
    assert!(
        !samples.iter().any(|&(app, sidecar)| app && !sidecar),
        "the sidecar stopped while the app still accepted: {samples:?}"
    );
    let app_gone_sidecar_up = samples.iter().filter(|&&s| s == (false, true)).count();
    assert!(
        app_gone_sidecar_up >= 10,
        "the sidecar served on after the app stopped accepting: {app_gone_sidecar_up} samples of {samples:?}"
    );
    // kubelet's SIGKILL at the grace period ended the request in flight.
    let ended = in_flight.await.expect("the request task");
    assert!(ended.is_err(), "the hanging request was cut: {ended:?}");
    ns.delete().await;
}
