//! baton installed the way the README tells users to, on the real node:
//! `kubectl apply -k manifests/webhook` (the webhook as a Deployment, with
//! self-managed certificates, called by the API server through its
//! ClusterIP), then the helloworld example with `kubectl apply -k`. The
//! injected sidecars elect one active pod; a client of the Service's
//! ClusterIP reaches that pod; the dashboards and alert rules name metrics
//! that the running sidecar and webhook expose. Alone in its test binary:
//! the installed webhook serves the whole cluster while it runs.

use std::time::Duration;

use baton_e2e::{
    harness::{
        Cluster, NeverTwoActive, http, pod_ip, repo_root, wait_endpoints, wait_for_holder,
        wait_roles, wait_until,
    },
    install::InstalledWebhook,
    prometheus::{exposed, referenced},
    webhook::sidecars,
};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::ResourceExt;

const T: Duration = Duration::from_secs(120);

/// The Prometheus text a process serves at `url`.
async fn metrics(url: &str) -> String {
    let response = http().get(url).send().await;
    let response = response.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    response.text().await.expect("metrics text")
}

#[tokio::test]
async fn installed_as_the_readme_says_the_example_serves_through_one_active_pod() {
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("manifests-helloworld").await;
    let webhook = InstalledWebhook::install(&ns).await;
    let guard = NeverTwoActive::start(ns.api(), "app=helloworld", "role", "active").await;

    let example = repo_root().join("manifests/examples/helloworld");
    ns.kubectl_ok(
        &["apply", "-k", example.to_str().expect("utf-8 path")],
        None,
    );
    let pods = wait_until::<Pod, _>(
        ns.api(),
        "app=helloworld",
        T,
        "two helloworld pods with the sidecar",
        |pods| pods.len() == 2 && pods.iter().all(|p| sidecars(p) == 1),
    )
    .await;
    for p in &pods {
        assert_eq!(
            p.labels().get("baton.dev/group").map(String::as_str),
            Some("helloworld"),
            "the webhook put {} in the StatefulSet's group",
            p.name_any()
        );
    }

    let holder = wait_for_holder(&ns, "helloworld", None).await;
    let pods = wait_roles(&ns, "app=helloworld", &holder, 1).await;
    assert!(pods.iter().any(|p| p.name_any() == holder));
    wait_endpoints(&ns, "helloworld", &[&holder], T).await;
    wait_endpoints(
        &ns,
        "helloworld-headless",
        &["helloworld-0", "helloworld-1"],
        T,
    )
    .await;

    // What a client of the Service gets through its ClusterIP (kube-proxy
    // applies a new endpoint at its next sync, at most a second later).
    let svc: Service = ns.api().get("helloworld").await.expect("the Service");
    let cluster_ip = svc.spec.and_then(|s| s.cluster_ip).expect("a ClusterIP");
    let mut body = String::new();
    for _ in 0..100 {
        match http().get(format!("http://{cluster_ip}/")).send().await {
            Ok(r) => body = r.text().await.unwrap_or_default(),
            Err(e) => body = e.to_string(),
        }
        if body == format!("hello from {holder}\n") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        body,
        format!("hello from {holder}\n"),
        "through {cluster_ip}"
    );
    let ip = pod_ip(&ns, &holder).await;

    // The dashboard and the alert rules name metrics the processes expose.
    let mut names = exposed(&metrics(&format!("http://{ip}:9095/metrics")).await);
    for pod in webhook.pods().await {
        let ip = pod
            .status
            .and_then(|s| s.pod_ip)
            .expect("the webhook pod's IP");
        names.extend(exposed(
            &metrics(&format!("http://{ip}:8080/metrics")).await,
        ));
    }
    // Families without samples yet (no API error so far) are not exposed:
    // take those from the sidecar's code, with one sample each.
    let code = baton_sidecar::metrics::Metrics::new();
    code.api_error("renew");
    code.set_role(true, true);
    code.observe_probe("success", Duration::from_millis(1));
    code.observe_handover(Duration::from_millis(1));
    names.extend(exposed(&code.encode()));
    let observability = repo_root().join("manifests/observability");
    for file in ["grafana-dashboard.json", "prometheus-rules.yaml"] {
        let text = std::fs::read_to_string(observability.join(file)).expect(file);
        let wanted = referenced(&text);
        assert!(wanted.len() >= 5, "{file} uses baton's metrics: {wanted:?}");
        let missing: Vec<&String> = wanted.difference(&names).collect();
        assert!(
            missing.is_empty(),
            "{file} names metrics nobody exposes: {missing:?}; exposed: {names:?}"
        );
    }

    assert_eq!(guard.assert_held(), 1);
    ns.delete().await;
    webhook.uninstall();
}
