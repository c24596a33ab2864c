//! What we ship as YAML is accepted by a real API server, and does what it
//! says: every kustomize build and every `helm template` rendering passes
//! `kubectl apply --dry-run=server`; the helloworld example, applied for real
//! with the webhook (run as a local process) injecting the sidecar, elects
//! one active pod behind its Service; the dashboards and alert rules name
//! metrics that the running sidecar and webhook expose.

use std::{
    collections::BTreeSet,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use baton_e2e::harness::{
    Cluster, NeverTwoActive, TestNamespace, http, labelled, pod_ip, repo_root, wait_endpoints,
    wait_for_object, wait_until,
};
use k8s_openapi::api::{coordination::v1::Lease, core::v1::Pod};
use kube::{Api, ResourceExt, api::PostParams};
use serde_json::json;

const T: Duration = Duration::from_secs(60);
/// API groups of CRDs the local control plane does not have.
const FOREIGN_GROUPS: [&str; 2] = ["cert-manager.io", "monitoring.coreos.com"];
const FOREIGN_KINDS: [&str; 6] = [
    "Certificate",
    "Issuer",
    "ClusterIssuer",
    "PodMonitor",
    "ServiceMonitor",
    "PrometheusRule",
];

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Runs a script of tests/cluster that prints a bin directory (building once,
/// outside the network namespace: `make cluster-binaries`).
fn cached_tool(script: &str, tool: &str) -> PathBuf {
    let out = Command::new(repo_root().join("tests/cluster").join(script))
        .stderr(Stdio::piped())
        .output()
        .unwrap_or_else(|e| panic!("running tests/cluster/{script}: {e}"));
    assert!(
        out.status.success(),
        "tests/cluster/{script} failed (run it outside the cluster's network namespace first, \
         as `make cluster-binaries` does): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join(tool)
}

/// `kubectl kustomize` of a directory of the repository.
fn kustomize(cluster: &Cluster, dir: &str) -> String {
    let path = repo_root().join(dir);
    let out = cluster.kubectl(&["kustomize", path_str(&path)], None);
    assert!(
        out.status.success(),
        "kustomize {dir}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `helm template` of the chart with `args`, in namespace `ns`.
fn helm_template(ns: &str, args: &[&str]) -> String {
    let helm = cached_tool("build-helm.sh", "helm");
    let chart = repo_root().join("manifests/helm/baton");
    let out = Command::new(&helm)
        .args(["template", "baton", path_str(&chart), "--namespace", ns])
        .args(args)
        .output()
        .expect("running helm");
    assert!(
        out.status.success(),
        "helm template {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Objects of a multi-document YAML stream, as (kind, text).
fn documents(yaml: &str) -> Vec<(String, String)> {
    yaml.split("\n---")
        .map(|doc| doc.trim_start_matches("---").to_owned())
        .filter_map(|doc| {
            let kind = doc
                .lines()
                .find_map(|l| l.strip_prefix("kind: "))?
                .trim()
                .to_owned();
            Some((kind, doc))
        })
        .collect()
}

/// Every namespaced object of `yaml` moved into the test namespace (the
/// installs name their own, which a dry run cannot create first).
fn into_namespace(yaml: &str, ns: &str) -> String {
    yaml.lines()
        .map(|l| match l.strip_prefix("  namespace: ") {
            Some(_) => format!("  namespace: {ns}"),
            None => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `kubectl apply --dry-run=server` of `yaml` in the test namespace; returns
/// the objects the server accepted, as kubectl names them.
fn dry_run(ns: &TestNamespace, what: &str, yaml: &str) -> Vec<String> {
    let out = ns.kubectl(
        &["apply", "--dry-run=server", "-o", "name", "-f", "-"],
        Some(&into_namespace(yaml, &ns.name)),
    );
    assert!(
        out.status.success(),
        "{what} is refused by the API server: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let accepted: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        accepted.len(),
        documents(yaml).len(),
        "{what}: every object accepted: {accepted:?}"
    );
    accepted
}

#[tokio::test]
async fn every_kustomize_build_passes_a_server_side_dry_run() {
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("manifests-kustomize").await;
    let mut dirs = vec![
        "manifests/rbac",
        "manifests/rbac/policy",
        "manifests/examples/helloworld",
        "manifests/observability",
    ];
    // The webhook install and its overlays, when they are there.
    let webhook = repo_root().join("manifests/webhook");
    let mut overlays: Vec<String> = std::fs::read_dir(&webhook)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("kustomization.yaml").exists())
        .map(|e| format!("manifests/webhook/{}", e.file_name().to_string_lossy()))
        .collect();
    overlays.sort();
    if webhook.join("kustomization.yaml").exists() {
        dirs.push("manifests/webhook");
    }
    dirs.extend(overlays.iter().map(String::as_str));
    for dir in dirs {
        let yaml = kustomize(&cluster, dir);
        // cert-manager's and prometheus-operator's kinds need their CRDs,
        // which this cluster lacks: those are left out of the dry run.
        let (ours, foreign): (Vec<_>, Vec<_>) =
            documents(&yaml).into_iter().partition(|(_, doc)| {
                !FOREIGN_GROUPS
                    .iter()
                    .any(|g| doc.contains(&format!("apiVersion: {g}/")))
            });
        let ours: Vec<String> = ours.into_iter().map(|(_, d)| d).collect();
        let accepted = dry_run(&ns, dir, &ours.join("\n---\n"));
        assert!(!accepted.is_empty(), "{dir} builds to some objects");
        for (kind, _) in foreign {
            assert!(
                FOREIGN_KINDS.contains(&kind.as_str()),
                "{dir}: unexpected kind {kind} of a CRD"
            );
        }
    }
    let example = kustomize(&cluster, "manifests/examples/helloworld");
    let kinds: BTreeSet<String> = documents(&example).into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        kinds,
        ["Role", "RoleBinding", "Service", "StatefulSet"]
            .map(String::from)
            .into(),
        "the example carries the sidecar's RBAC"
    );
    ns.delete().await;
}

#[tokio::test]
async fn helm_chart_renders_every_certificate_mode_into_objects_the_server_accepts() {
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("manifests-helm").await;
    let lint = Command::new(cached_tool("build-helm.sh", "helm"))
        .args([
            "lint",
            "--strict",
            path_str(&repo_root().join("manifests/helm/baton")),
        ])
        .output()
        .expect("helm lint");
    assert!(
        lint.status.success(),
        "helm lint: {}",
        String::from_utf8_lossy(&lint.stdout)
    );

    let self_signed = helm_template(&ns.name, &[]);
    let accepted = dry_run(&ns, "helm template (selfSigned)", &self_signed);
    for want in [
        "deployment.apps/baton-webhook",
        "secret/baton-webhook-tls",
        "poddisruptionbudget.policy/baton-webhook",
        "mutatingwebhookconfiguration.admissionregistration.k8s.io/baton-webhook",
        "validatingwebhookconfiguration.admissionregistration.k8s.io/baton-webhook",
    ] {
        assert!(accepted.iter().any(|a| a == want), "{want} in {accepted:?}");
    }
    // The chart's CA signed the served certificate, and is the caBundle.
    let ca_in_secret = self_signed
        .lines()
        .find_map(|l| l.trim().strip_prefix("ca.crt: "))
        .expect("ca.crt in the Secret");
    let bundles: Vec<&str> = self_signed
        .lines()
        .filter_map(|l| l.trim().strip_prefix("caBundle: "))
        .collect();
    assert_eq!(bundles, [ca_in_secret; 2], "both webhooks trust the CA");

    let existing = helm_template(
        &ns.name,
        &[
            "--set",
            "certificates.mode=existingSecret",
            "--set",
            "certificates.existingSecret.name=my-tls",
            "--set-string",
            "certificates.existingSecret.caBundle=-----BEGIN CERTIFICATE-----",
            "--set",
            "failurePolicy=Ignore",
            "--set",
            "validation.enabled=false",
            "--set",
            "sidecar.nativeSidecar=false",
            "--set",
            "sidecar.resources.cpuLimit=100m",
            "--set",
            "podDisruptionBudget.enabled=false",
        ],
    );
    dry_run(&ns, "helm template (existingSecret)", &existing);
    assert!(existing.contains("secretName: my-tls"));
    assert!(!existing.contains("kind: Secret\n"), "no Secret of ours");
    assert!(!existing.contains("ValidatingWebhookConfiguration"));
    assert!(existing.contains("failurePolicy: Ignore"));
    assert!(existing.contains("{name: BATON_WEBHOOK_SIDECAR_CPU_LIMIT, value: \"100m\"}"));

    let cert_manager = helm_template(&ns.name, &["--set", "certificates.mode=certManager"]);
    let (ours, theirs): (Vec<_>, Vec<_>) = documents(&cert_manager)
        .into_iter()
        .partition(|(_, d)| !d.contains("apiVersion: cert-manager.io/"));
    let ours: Vec<String> = ours.into_iter().map(|(_, d)| d).collect();
    dry_run(&ns, "helm template (certManager)", &ours.join("\n---\n"));
    let mut theirs: Vec<String> = theirs.into_iter().map(|(k, _)| k).collect();
    theirs.sort();
    assert_eq!(
        theirs,
        ["Certificate", "Certificate", "Issuer", "Issuer"],
        "a CA, its issuers and the serving certificate"
    );
    assert!(cert_manager.contains(&format!(
        "cert-manager.io/inject-ca-from: {}/baton-webhook-tls",
        ns.name
    )));

    let bad = Command::new(cached_tool("build-helm.sh", "helm"))
        .args(["template", "baton"])
        .arg(repo_root().join("manifests/helm/baton"))
        .args(["--set", "certificates.mode=manual"])
        .output()
        .expect("helm");
    assert!(!bad.status.success(), "an unknown certificate mode fails");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("certificates.mode must be one of"));
    ns.delete().await;
}

/// The webhook as a local process inside the cluster's network namespace,
/// with a MutatingWebhookConfiguration that sends it this namespace's pods.
struct LocalWebhook {
    child: Child,
    http_addr: String,
    config_name: String,
    cluster: Cluster,
}

impl LocalWebhook {
    async fn start(ns: &TestNamespace) -> LocalWebhook {
        let free_port = || {
            TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port()
        };
        let (https, plain) = (free_port(), free_port());
        let bin_dir = std::env::var_os("BATON_BIN_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join("target/debug"));
        let ca_file = std::env::temp_dir().join(format!("baton-manifests-{}-ca.pem", ns.name));
        let log =
            std::fs::File::create(ns.cluster.dir.join(format!("logs/webhook-{}.log", ns.name)))
                .expect("webhook log file");
        let child = Command::new(bin_dir.join("baton-webhook"))
            .env("KUBECONFIG", ns.cluster.dir.join("kubeconfig"))
            .env("RUST_LOG", "info")
            .args([
                format!("--listen-addr=127.0.0.1:{https}"),
                format!("--http-addr=127.0.0.1:{plain}"),
                "--tls-san=127.0.0.1".to_owned(),
                format!("--ca-out-file={}", ca_file.display()),
            ])
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("starting baton-webhook (make build)");
        let mut webhook = LocalWebhook {
            child,
            http_addr: format!("127.0.0.1:{plain}"),
            config_name: format!("baton-{}", ns.name),
            cluster: ns.cluster.clone(),
        };
        // A local process: poll its health endpoint until it serves.
        let deadline = tokio::time::Instant::now() + T;
        while http()
            .get(format!("http://{}/healthz", webhook.http_addr))
            .send()
            .await
            .is_err()
        {
            assert!(
                webhook.child.try_wait().expect("webhook status").is_none(),
                "baton-webhook exited at start"
            );
            assert!(
                tokio::time::Instant::now() < deadline,
                "webhook never served"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let ca = std::fs::read(&ca_file).expect("the webhook wrote its CA");
        let _ = std::fs::remove_file(&ca_file);
        let config = json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": webhook.config_name},
            "webhooks": [{
                "name": "inject.baton.dev",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "NoneOnDryRun",
                "failurePolicy": "Fail",
                "timeoutSeconds": 5,
                "clientConfig": {
                    "url": format!("https://127.0.0.1:{https}/mutate"),
                    "caBundle": base64(&ca),
                },
                "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns.name}},
            }]
        });
        ns.apply(&config.to_string());
        webhook.wait_until_injecting(ns).await;
        webhook
    }

    /// The API server picks webhook configurations up asynchronously: create
    /// opted-in pods in dry-run until they come back injected.
    async fn wait_until_injecting(&self, ns: &TestNamespace) {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "probe", "annotations": {"baton.dev/inject": "true", "baton.dev/lease-name": "probe"}},
            "spec": {"containers": [{"name": "app", "image": "ghcr.io/baton-dev/baton-demo-app:0.1.0"}]}
        }))
        .expect("a pod");
        let api: Api<Pod> = ns.api();
        let params = PostParams {
            dry_run: true,
            ..Default::default()
        };
        let deadline = tokio::time::Instant::now() + T;
        loop {
            if let Ok(p) = api.create(&params, &pod).await
                && injected(&p)
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the API server never called the webhook"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn metrics(&self) -> String {
        http()
            .get(format!("http://{}/metrics", self.http_addr))
            .send()
            .await
            .expect("webhook /metrics")
            .text()
            .await
            .expect("metrics text")
    }
}

impl Drop for LocalWebhook {
    fn drop(&mut self) {
        let _ = self.cluster.kubectl(
            &["delete", "mutatingwebhookconfiguration", &self.config_name],
            None,
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn injected(pod: &Pod) -> bool {
    pod.spec.as_ref().is_some_and(|s| {
        s.init_containers
            .iter()
            .flatten()
            .chain(s.containers.iter())
            .any(|c| c.name == "baton-sidecar")
    })
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Metric names a Prometheus text exposition declares (`# TYPE name kind`),
/// with the sample suffixes each kind adds.
fn exposed(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .flat_map(|l| {
            let mut parts = l.split_whitespace();
            let name = parts.next().unwrap_or_default().to_owned();
            let suffixes: &[&str] = match parts.next() {
                Some("counter") => &["_total"],
                Some("histogram") => &["", "_bucket", "_sum", "_count"],
                _ => &[""],
            };
            suffixes
                .iter()
                .map(|s| format!("{name}{s}"))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Every `baton_*` name in a text (a dashboard, alert rules).
fn referenced(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("baton_") {
        let start = i + at;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(text.len(), |e| start + e);
        if boundary {
            names.insert(text[start..end].to_owned());
        }
        i = end;
    }
    names
}

#[tokio::test]
async fn helloworld_example_elects_one_active_pod_through_the_injected_sidecar() {
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("manifests-helloworld").await;
    let webhook = LocalWebhook::start(&ns).await;
    let guard = NeverTwoActive::start(ns.api(), "app=helloworld", "role", "active").await;

    let example = kustomize(&cluster, "manifests/examples/helloworld");
    ns.apply(&example);
    let pods = wait_until::<Pod, _>(
        ns.api(),
        "app=helloworld",
        T,
        "two helloworld pods with the sidecar",
        |pods| pods.len() == 2 && pods.iter().all(injected),
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

    let lease = wait_for_object::<Lease, _>(ns.api(), "helloworld", T, "a holder", |l| {
        l.spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref())
            .is_some_and(|h| !h.is_empty())
    })
    .await;
    let holder = lease
        .spec
        .and_then(|s| s.holder_identity)
        .expect("a holder");
    let pods = wait_until::<Pod, _>(
        ns.api(),
        "app=helloworld",
        T,
        "the holder active and the other pod passive",
        |pods| {
            labelled(pods, "role", "active") == [holder.clone()]
                && labelled(pods, "role", "passive").len() == 1
        },
    )
    .await;
    assert!(pods.iter().any(|p| p.name_any() == holder));
    wait_endpoints(&ns, "helloworld", &[&holder], T).await;
    wait_endpoints(
        &ns,
        "helloworld-headless",
        &["helloworld-0", "helloworld-1"],
        T,
    )
    .await;

    // What the Service's one endpoint serves.
    let ip = pod_ip(&ns, &holder).await;
    let body = http()
        .get(format!("http://{ip}:8080/"))
        .send()
        .await
        .expect("the active app answers")
        .text()
        .await
        .expect("body");
    assert_eq!(body, format!("hello from {holder}\n"));

    // The dashboard and the alert rules name metrics the processes expose.
    let sidecar_metrics = http()
        .get(format!("http://{ip}:9095/metrics"))
        .send()
        .await
        .expect("the sidecar's /metrics")
        .text()
        .await
        .expect("metrics text");
    let mut names = exposed(&sidecar_metrics);
    names.extend(exposed(&webhook.metrics().await));
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
    drop(webhook);
    ns.delete().await;
}

#[test]
fn referenced_finds_whole_metric_names_only() {
    let names = referenced(r#"sum(rate(baton_probes_total[5m])) / x_baton_no + baton_role_active"#);
    assert_eq!(
        names,
        ["baton_probes_total", "baton_role_active"]
            .map(String::from)
            .into()
    );
    assert_eq!(base64(b"ab"), "YWI=");
    assert_eq!(base64(b"abc"), "YWJj");
    assert_eq!(base64(b"a"), "YQ==");
}

/// The PrometheusRule's `spec` as a plain rule file (what promtool reads).
fn rule_file(prometheus_rule: &str) -> String {
    let mut lines = prometheus_rule.lines().skip_while(|l| *l != "spec:");
    assert_eq!(lines.next(), Some("spec:"), "a PrometheusRule with a spec");
    lines
        .map(|l| l.strip_prefix("  ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn alert_rules_pass_promtool_checks_and_their_unit_tests() {
    let promtool = cached_tool("build-promtool.sh", "promtool");
    let observability = repo_root().join("manifests/observability");
    let rules =
        std::fs::read_to_string(observability.join("prometheus-rules.yaml")).expect("rules");
    let dir = std::env::temp_dir().join(format!("baton-rules-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join("baton-rules.yaml"), rule_file(&rules)).expect("rule file");
    std::fs::copy(
        observability.join("prometheus-rules.test.yaml"),
        dir.join("prometheus-rules.test.yaml"),
    )
    .expect("test file");
    let run = |args: &[&str]| {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("running promtool");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "promtool {args:?}:\n{text}");
        text
    };
    let alerts = rules.matches("- alert: ").count();
    let checked = run(&["check", "rules", "baton-rules.yaml"]);
    assert!(
        checked.contains(&format!("SUCCESS: {alerts} rules found")),
        "{checked}"
    );
    for alert in [
        "BatonNoActivePod",
        "BatonMoreThanOneActive",
        "BatonFrequentRoleChanges",
        "BatonWebhookErrors",
        "BatonWebhookCertificateExpiring",
    ] {
        assert!(rules.contains(&format!("- alert: {alert}\n")), "{alert}");
    }
    run(&["test", "rules", "prometheus-rules.test.yaml"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn grafana_dashboard_panels_query_prometheus() {
    let path = repo_root().join("manifests/observability/grafana-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("dashboard")).expect("JSON");
    assert_eq!(dashboard["uid"], "baton");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut queried = 0;
    for p in panels {
        assert!(ids.insert(p["id"].as_i64().expect("an id")), "unique ids");
        if p["type"] == "row" {
            continue;
        }
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{} queries something", p["title"]);
        for t in targets {
            let expr = t["expr"].as_str().expect("expr");
            assert!(expr.contains("baton_"), "{expr}");
            assert_eq!(
                expr.matches('(').count(),
                expr.matches(')').count(),
                "{expr}"
            );
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}");
        queried += 1;
    }
    assert!(queried >= 10, "sidecar and webhook panels");
    for metric in [
        "baton_role_active",
        "baton_app_healthy",
        "baton_lease_transitions",
        "baton_role_changes_total",
        "baton_probes_total",
        "baton_probe_duration_seconds_bucket",
        "baton_api_errors_total",
        "baton_handover_duration_seconds_bucket",
        "baton_webhook_admissions_total",
        "baton_webhook_admission_duration_seconds_bucket",
    ] {
        assert!(
            referenced(&dashboard.to_string()).contains(metric),
            "the dashboard shows {metric}"
        );
    }
}

/// The webhook configurations of a YAML stream, as JSON by kind, through
/// kubectl's own conversion (a client-side dry run).
fn webhook_configurations(cluster: &Cluster, yaml: &str) -> Vec<(String, serde_json::Value)> {
    let configs: Vec<String> = documents(yaml)
        .into_iter()
        .filter(|(kind, _)| kind.ends_with("WebhookConfiguration"))
        .map(|(_, doc)| doc)
        .collect();
    let out = cluster.kubectl(
        &["create", "--dry-run=client", "-o", "json", "-f", "-"],
        Some(&configs.join("\n---\n")),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // One JSON object after the other.
    let mut configs: Vec<(String, serde_json::Value)> =
        serde_json::Deserializer::from_slice(&out.stdout)
            .into_iter::<serde_json::Value>()
            .map(|o| {
                let o = o.expect("JSON objects");
                (o["kind"].as_str().expect("kind").to_owned(), o)
            })
            .collect();
    configs.sort_by(|a, b| a.0.cmp(&b.0));
    configs
}

/// `v` with every run of whitespace in its strings made one space (CEL
/// expressions folded differently in YAML are the same expression).
fn spaced(v: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::String(s) => Value::String(s.split_whitespace().collect::<Vec<_>>().join(" ")),
        Value::Array(a) => Value::Array(a.iter().map(spaced).collect()),
        Value::Object(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), spaced(v))).collect()),
        other => other.clone(),
    }
}

#[tokio::test]
async fn helm_chart_webhooks_match_the_kustomize_install() {
    let cluster = Cluster::connect().await;
    let kustomized = webhook_configurations(&cluster, &kustomize(&cluster, "manifests/webhook"));
    let charted = webhook_configurations(&cluster, &helm_template("baton-system", &[]));
    assert_eq!(kustomized.len(), 2, "a mutating and a validating webhook");
    assert_eq!(
        kustomized.iter().map(|(k, _)| k).collect::<Vec<_>>(),
        charted.iter().map(|(k, _)| k).collect::<Vec<_>>()
    );
    for ((kind, ours), (_, theirs)) in charted.iter().zip(&kustomized) {
        let (ours, theirs) = (&ours["webhooks"][0], &theirs["webhooks"][0]);
        for field in [
            "name",
            "rules",
            "namespaceSelector",
            "matchConditions",
            "failurePolicy",
            "sideEffects",
            "timeoutSeconds",
            "reinvocationPolicy",
            "admissionReviewVersions",
        ] {
            assert_eq!(
                spaced(&ours[field]),
                spaced(&theirs[field]),
                "{kind}: the chart's {field} differs from manifests/webhook's"
            );
        }
        let (svc, want) = (
            &ours["clientConfig"]["service"],
            &theirs["clientConfig"]["service"],
        );
        assert_eq!(svc, want, "{kind}: the same Service, namespace and path");
    }
}
