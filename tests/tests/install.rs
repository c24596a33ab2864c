//! baton installed the way the README tells users to, on the real node:
//! `kubectl apply -k manifests/webhook` (the webhook as a Deployment, with
//! self-managed certificates, called by the API server through its
//! ClusterIP), then the helloworld example with `kubectl apply -k`. The
//! injected sidecars elect one active pod; the Service (the whole group,
//! through the sidecars' proxies) lists both pods, and a client of its
//! ClusterIP, or of either pod's proxy, is answered by the holder; the
//! dashboards and alert rules name metrics
//! that the running sidecar and webhook expose. Then the self-managed
//! certificates of an install whose validity an overlay shortened: shared by
//! the replicas, published as the caBundle, renewed without a gap. Alone in
//! its test binary, one install at a time: the installed webhook serves the
//! whole cluster while it runs.

use std::time::Duration;

use baton_e2e::{
    harness::{
        Cluster, NeverTwoActive, http, pod_ip, repo_root, wait_endpoints, wait_for_holder,
        wait_for_object, wait_roles, wait_until,
    },
    install::{InstalledWebhook, kubectl_ok},
    prometheus::{exposed, referenced},
    webhook::{CERT_SECRET, base64, der_of, openssl_pair, served_certificate_as, sidecars},
    workload::{self, PROXY_PORT},
};
use k8s_openapi::api::{
    core::v1::{Pod, Secret, Service},
    discovery::v1::EndpointSlice,
    events::v1::Event,
};
use kube::{Api, ResourceExt};

const T: Duration = Duration::from_secs(120);

/// Each test installs and removes the cluster-wide webhook: one at a time.
static ONE_INSTALL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The Prometheus text a process serves at `url`.
async fn metrics(url: &str) -> String {
    let response = http().get(url).send().await;
    let response = response.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    response.text().await.expect("metrics text")
}

#[tokio::test]
async fn installed_as_the_readme_says_the_example_serves_through_one_active_pod() {
    let _one = ONE_INSTALL.lock().await;
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
    // The Service selects the whole group: both pods are its endpoints,
    // the holder and the standby alike, on the sidecar's proxy port.
    wait_endpoints(&ns, "helloworld", &["helloworld-0", "helloworld-1"], T).await;
    wait_endpoints(
        &ns,
        "helloworld-headless",
        &["helloworld-0", "helloworld-1"],
        T,
    )
    .await;
    let slices = ns
        .api::<EndpointSlice>()
        .list(&kube::api::ListParams::default().labels("kubernetes.io/service-name=helloworld"))
        .await
        .expect("the Service's EndpointSlices");
    let ports: Vec<Option<i32>> = slices
        .items
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .map(|p| p.port)
        .collect();
    assert_eq!(
        ports,
        [Some(i32::from(PROXY_PORT))],
        "the Service targets the sidecar's proxy"
    );

    // What a client of the Service gets through its ClusterIP (kube-proxy
    // applies a new Service at its next sync, at most a second later).
    let svc: Service = ns.api().get("helloworld").await.expect("the Service");
    let cluster_ip = svc.spec.and_then(|s| s.cluster_ip).expect("a ClusterIP");
    let answer = |url: String| async move {
        match http().get(&url).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(e) => e.to_string(),
        }
    };
    let hello = format!("hello from {holder}\n");
    let mut body = String::new();
    for _ in 0..100 {
        body = answer(format!("http://{cluster_ip}/")).await;
        if body == hello {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(body, hello, "through {cluster_ip}");
    // Each request on a new connection (a new client each): kube-proxy
    // sends about half of them to the standby, whose proxy passes them on.
    for i in 0..20 {
        let body = answer(format!("http://{cluster_ip}/")).await;
        assert_eq!(body, hello, "request {i} through {cluster_ip}");
    }
    // Straight to each pod's proxy: the standby's too answers for the holder.
    for pod in ["helloworld-0", "helloworld-1"] {
        let ip = pod_ip(&ns, pod).await;
        let body = answer(format!("http://{ip}:{PROXY_PORT}/")).await;
        assert_eq!(body, hello, "through {pod}'s proxy at {ip}:{PROXY_PORT}");
    }
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
    code.observe_probe("period", "success", Duration::from_millis(1));
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

    assert_eq!(guard.assert_held().await, 1);
    ns.delete().await;
    webhook.uninstall();
}

/// The default install's certificate mode, as an operator would shorten its
/// validity with a kustomize overlay: renewed about 10 s after it is made.
const SHORT_LIVED: &str = r#"apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
- ../../../manifests/webhook
patches:
- patch: |-
    apiVersion: apps/v1
    kind: Deployment
    metadata: {name: baton-webhook, namespace: baton-system}
    spec:
      template:
        spec:
          containers:
          - name: webhook
            env:
            - {name: BATON_WEBHOOK_CERT_VALIDITY, value: 40s}
            - {name: BATON_WEBHOOK_CERT_RENEW_BEFORE, value: 30s}
"#;

/// The name the certificate is for: the webhook's Service.
const SERVICE_NAME: &str = "baton-webhook.baton-system.svc";

/// The HTTPS addresses of the webhook's two running replicas.
fn replica_addrs(pods: &[Pod]) -> Vec<std::net::SocketAddr> {
    let addrs: Vec<std::net::SocketAddr> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.status.as_ref()?.pod_ip.as_ref()?.parse().ok())
        .map(|ip| std::net::SocketAddr::new(ip, 8443))
        .collect();
    assert_eq!(addrs.len(), 2, "two replicas: {addrs:?}");
    addrs
}

/// Waits until every address serves `want` (DER), checked against `roots`.
async fn wait_served(
    addrs: &[std::net::SocketAddr],
    roots: &[&[u8]],
    want: &[u8],
    within: Duration,
) {
    let deadline = std::time::Instant::now() + within;
    for addr in addrs {
        while served_certificate_as(*addr, SERVICE_NAME, roots) != want {
            assert!(
                std::time::Instant::now() < deadline,
                "{addr} still serves the old certificate"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test]
async fn self_managed_certificates_are_shared_published_and_renewed_without_a_gap() {
    let _one = ONE_INSTALL.lock().await;
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("install-certs").await;
    let overlay = repo_root().join("target/install-overlays").join(&ns.name);
    std::fs::create_dir_all(&overlay).expect("the overlay's folder");
    std::fs::write(overlay.join("kustomization.yaml"), SHORT_LIVED).expect("the overlay");
    // Returned: the API server called the webhook, so the caBundle is published.
    let webhook = InstalledWebhook::install_from(&ns, &overlay).await;

    let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), "baton-system");
    let first = secrets
        .get(CERT_SECRET)
        .await
        .expect("the webhook made the Secret");
    let data = |s: &Secret, key: &str| {
        s.data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|b| b.0.clone())
            .unwrap_or_else(|| panic!("{key} in the Secret"))
    };
    let ca = data(&first, "ca.crt");
    for kind in [
        "mutatingwebhookconfiguration",
        "validatingwebhookconfiguration",
    ] {
        let bundle = cluster.kubectl(
            &[
                "get",
                kind,
                "baton-webhook",
                "-o",
                "jsonpath={.webhooks[0].clientConfig.caBundle}",
            ],
            None,
        );
        assert_eq!(
            String::from_utf8_lossy(&bundle.stdout),
            base64(&ca),
            "{kind}'s caBundle is the Secret's CA"
        );
    }

    // Every replica serves the Secret's certificate, not one of its own.
    let addrs = replica_addrs(&webhook.pods().await);
    let cert = der_of(&data(&first, "tls.crt"));
    for addr in &addrs {
        assert_eq!(
            served_certificate_as(*addr, SERVICE_NAME, &[&ca]),
            cert,
            "{addr}"
        );
    }

    // Renewal: a new serving certificate in the Secret, signed by the same CA.
    let renewed = wait_for_object::<Secret, _>(
        secrets.clone(),
        CERT_SECRET,
        T,
        "a renewed serving certificate",
        |s| der_of(&data(s, "tls.crt")) != cert,
    )
    .await;
    assert_eq!(data(&renewed, "ca.crt"), ca, "the caBundle did not change");
    let new_cert = der_of(&data(&renewed, "tls.crt"));
    // Both replicas pick it up from their watch of the Secret.
    wait_served(&addrs, &[&ca], &new_cert, Duration::from_secs(10)).await;
    // And the API server, trusting the same CA, calls it as before.
    webhook.wait_until_injecting(&ns).await;
    webhook.uninstall();
    let _ = std::fs::remove_dir_all(&overlay);
    ns.delete().await;
}

/// Sets the caBundle of every webhook of both configurations, as a user
/// of `manifests/webhook/base` does (`kubectl patch`).
fn set_ca_bundle(cluster: &Cluster, pem: &[u8]) {
    for (kind, webhooks) in [
        ("mutatingwebhookconfiguration", 1),
        ("validatingwebhookconfiguration", 2),
    ] {
        let ops: Vec<String> = (0..webhooks)
            .map(|i| {
                format!(
                    r#"{{"op": "add", "path": "/webhooks/{i}/clientConfig/caBundle", "value": "{}"}}"#,
                    base64(pem)
                )
            })
            .collect();
        let patch = format!("[{}]", ops.join(", "));
        kubectl_ok(
            cluster,
            &["patch", kind, "baton-webhook", "--type=json", "-p", &patch],
        );
    }
}

fn put_tls_secret(cluster: &Cluster, cert: &std::path::Path, key: &std::path::Path) {
    let yaml = cluster.kubectl(
        &[
            "-n",
            "baton-system",
            "create",
            "secret",
            "tls",
            CERT_SECRET,
            &format!("--cert={}", cert.display()),
            &format!("--key={}", key.display()),
            "--dry-run=client",
            "-o",
            "yaml",
        ],
        None,
    );
    assert!(
        yaml.status.success(),
        "{}",
        String::from_utf8_lossy(&yaml.stderr)
    );
    let out = cluster.kubectl(
        &["apply", "-f", "-"],
        Some(&String::from_utf8_lossy(&yaml.stdout)),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Certificates from files: `manifests/webhook/base` with the user's own
/// Secret. Renewed into another CA (both trusted meanwhile), the running
/// pods serve it once kubelet updates their volume: no restart.
#[tokio::test]
async fn own_certificate_renewed_in_its_secret_is_served_without_a_restart() {
    let _one = ONE_INSTALL.lock().await;
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("install-files").await;
    let certs = repo_root().join("target/install-certs").join(&ns.name);
    let (ca_a, cert_a, key_a) = openssl_pair(&certs, "a");
    let (ca_b, cert_b, key_b) = openssl_pair(&certs, "b");
    let base = repo_root().join("manifests/webhook/base");
    let webhook = InstalledWebhook::install_with(&ns, &base, |cluster| {
        put_tls_secret(cluster, &cert_a, &key_a);
        set_ca_bundle(cluster, &ca_a);
    })
    .await;
    let pods = webhook.pods().await;
    let addrs = replica_addrs(&pods);
    let der_a = der_of(&std::fs::read(&cert_a).expect("cert a"));
    let der_b = der_of(&std::fs::read(&cert_b).expect("cert b"));
    for addr in &addrs {
        assert_eq!(served_certificate_as(*addr, SERVICE_NAME, &[&ca_a]), der_a);
    }

    // Renewed as cert-manager would: both CAs trusted first, then the Secret.
    set_ca_bundle(&cluster, &[ca_a.as_slice(), ca_b.as_slice()].concat());
    put_tls_secret(&cluster, &cert_b, &key_b);
    // kubelet updates the volume at the pod's next sync (10 s here,
    // tests/cluster/node-config.sh); the next handshake serves it.
    wait_served(&addrs, &[&ca_a, &ca_b], &der_b, T).await;
    let now = webhook.pods().await;
    let restarts = |p: &Pod| {
        p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .map_or(0, |cs| cs.iter().map(|c| c.restart_count).sum::<i32>())
    };
    for (before, after) in pods.iter().zip(&now) {
        assert_eq!(before.uid(), after.uid(), "the same pods");
        assert_eq!(restarts(after), 0, "no restart of {}", after.name_any());
    }
    // The API server, trusting the new CA alone, calls it as before.
    set_ca_bundle(&cluster, &ca_b);
    webhook.wait_until_injecting(&ns).await;
    webhook.uninstall();
    let _ = std::fs::remove_dir_all(&certs);
    ns.delete().await;
}

/// Issue 11's webhook downtime, with no webhook replica running: pods of a
/// namespace that did not enable injection are created as usual, as is a
/// pod that opts out in an enabled one; an opted-in pod is refused with a
/// message naming the webhook, and its StatefulSet says why in a
/// `FailedCreate` Event. Once a replica is back, the controller creates
/// the pod, with its sidecar.
#[tokio::test]
async fn while_the_webhook_is_down_only_opted_in_pods_wait_for_it() {
    let _one = ONE_INSTALL.lock().await;
    let cluster = Cluster::connect().await;
    let enabled = cluster.namespace("webhook-down-enabled").await;
    let plain = cluster.namespace("webhook-down-plain").await;
    let webhook = InstalledWebhook::install(&enabled).await;
    let scale = |replicas: &str| {
        kubectl_ok(
            &cluster,
            &[
                "-n",
                "baton-system",
                "scale",
                "deployment/baton-webhook",
                &format!("--replicas={replicas}"),
            ],
        )
    };
    scale("0");
    let system: Api<Pod> = Api::namespaced(cluster.client.clone(), "baton-system");
    wait_until::<Pod, _>(
        system,
        "app.kubernetes.io/name=baton-webhook",
        T,
        "no webhook replica",
        |pods| pods.is_empty(),
    )
    .await;

    let opted_in = |name: &str| {
        workload::statefulset(name, 1, false, &[]).replacen(
            &format!("metadata:\n  name: {name}\n"),
            &format!("metadata:\n  name: {name}\n  annotations: {{baton.dev/inject: \"true\"}}\n"),
            1,
        )
    };
    // Not enabled: nothing is sent to the webhook, opted in or not.
    plain.apply(&workload::statefulset("plain", 1, false, &[]));
    plain.apply(&opted_in("elsewhere"));
    wait_until::<Pod, _>(plain.api(), "", T, "both pods created", |pods| {
        pods.len() == 2 && pods.iter().all(|p| sidecars(p) == 0)
    })
    .await;
    // Enabled: a pod that opts out is never sent either.
    let opted_out = r#"{"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "batch", "annotations": {"baton.dev/inject": "false"}},
        "spec": {"containers": [{"name": "app", "image": "ghcr.io/baton-dev/baton-demo-app:0.1.0"}]}}"#;
    enabled.kubectl_ok(&["create", "-f", "-"], Some(opted_out));
    // An opted-in pod is refused, naming the webhook that could not answer.
    let bare = opted_out.replace("\"batch\"", "\"single\"").replace(
        "\"false\"",
        "\"true\", \"baton.dev/lease-name\": \"single\"",
    );
    let out = enabled.kubectl(&["create", "-f", "-"], Some(&bare));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("failed calling webhook \"inject.baton.dev\""),
        "{out:?}"
    );
    enabled.apply(&opted_in("web"));
    let failed = |e: &Event| {
        e.reason.as_deref() == Some("FailedCreate")
            && e.note
                .as_deref()
                .is_some_and(|n| n.contains("inject.baton.dev"))
    };
    wait_until::<Event, _>(
        enabled.api(),
        "",
        T,
        "the StatefulSet's FailedCreate Event",
        |events| events.iter().any(failed),
    )
    .await;
    let pods: Api<Pod> = enabled.api();
    assert!(
        pods.get_opt("web-0").await.expect("get").is_none(),
        "never created without its sidecar"
    );

    scale("2");
    let pods = wait_until::<Pod, _>(
        enabled.api(),
        "app=web",
        T,
        "web-0 created with its sidecar once the webhook is back",
        |pods| pods.len() == 1,
    )
    .await;
    assert_eq!(sidecars(&pods[0]), 1);
    plain.delete().await;
    enabled.delete().await;
    webhook.uninstall();
}
