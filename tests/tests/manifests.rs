//! What we ship as YAML is accepted by a real API server: every kustomize
//! build and every `helm template` rendering passes `kubectl apply
//! --dry-run=server`, the Helm chart's webhooks match the kustomize install,
//! the alert rules pass promtool. (The install applied for real, and the
//! metrics the dashboards name, are tests/tests/install.rs.)

use std::{collections::BTreeSet, path::Path, process::Command};

use baton_e2e::{
    harness::{Cluster, TestNamespace, cached_tool, repo_root},
    prometheus::referenced,
};
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
        "manifests/rbac/operator",
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
        [
            "PodDisruptionBudget",
            "Role",
            "RoleBinding",
            "Service",
            "StatefulSet"
        ]
        .map(String::from)
        .into(),
        "the example carries the sidecar's RBAC and a PodDisruptionBudget"
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
        "clusterrole.rbac.authorization.k8s.io/baton-operator",
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
    assert_eq!(
        bundles, [ca_in_secret; 3],
        "all three webhooks trust the CA"
    );

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
    let each = |configs: &[(String, serde_json::Value)]| -> Vec<(String, serde_json::Value)> {
        configs
            .iter()
            .flat_map(|(kind, c)| {
                let hooks = c["webhooks"].as_array().cloned().unwrap_or_default();
                hooks.into_iter().map(move |h| (kind.clone(), h))
            })
            .collect()
    };
    let (charted, kustomized) = (each(&charted), each(&kustomized));
    assert_eq!(
        charted.len(),
        kustomized.len(),
        "as many webhooks in the chart as in manifests/webhook"
    );
    for ((kind, ours), (_, theirs)) in charted.iter().zip(&kustomized) {
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

/// The admission policies and their bindings of a YAML stream, as JSON by
/// kind and name, through kubectl's own conversion (a client-side dry run).
fn admission_policies(cluster: &Cluster, yaml: &str) -> Vec<(String, serde_json::Value)> {
    cluster_objects(cluster, yaml, &["ValidatingAdmissionPolicy"])
}

/// The objects of `yaml` whose kind starts with one of `kinds`, as the API
/// server would take them: (kind and name, spec), sorted.
fn cluster_objects(
    cluster: &Cluster,
    yaml: &str,
    kinds: &[&str],
) -> Vec<(String, serde_json::Value)> {
    let docs: Vec<String> = documents(yaml)
        .into_iter()
        .filter(|(kind, _)| kinds.iter().any(|k| kind.starts_with(k)))
        .map(|(_, doc)| doc)
        .collect();
    let out = cluster.kubectl(
        &["create", "--dry-run=client", "-o", "json", "-f", "-"],
        Some(&docs.join("\n---\n")),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut objects: Vec<(String, serde_json::Value)> =
        serde_json::Deserializer::from_slice(&out.stdout)
            .into_iter::<serde_json::Value>()
            .map(|o| {
                let o = o.expect("JSON objects");
                let key = format!(
                    "{} {}",
                    o["kind"].as_str().expect("kind"),
                    o["metadata"]["name"].as_str().expect("name")
                );
                (key, spaced(&o["spec"]))
            })
            .collect();
    objects.sort_by(|a, b| a.0.cmp(&b.0));
    objects
}

/// The chart installs the same admission policies as manifests/rbac/policy,
/// which the README's kustomize install applies: the sidecars' credentials
/// are confined either way.
#[tokio::test]
async fn helm_chart_policies_match_the_kustomize_install() {
    let cluster = Cluster::connect().await;
    let kustomized = admission_policies(&cluster, &kustomize(&cluster, "manifests/rbac/policy"));
    let charted = admission_policies(&cluster, &helm_template("baton-system", &[]));
    let names =
        |o: &[(String, serde_json::Value)]| o.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(&kustomized).len(),
        15,
        "seven policies and their eight bindings: {:?}",
        names(&kustomized)
    );
    assert_eq!(names(&charted), names(&kustomized));
    for ((name, ours), (_, theirs)) in charted.iter().zip(&kustomized) {
        assert_eq!(
            ours, theirs,
            "{name}: the chart's spec differs from manifests/rbac/policy's"
        );
    }
    let off = helm_template("baton-system", &["--set", "policies.enabled=false"]);
    assert!(
        admission_policies_absent(&off),
        "policies.enabled=false renders no policy"
    );
}

/// The chart gives the sidecars' Lease calls the same priority level as
/// manifests/rbac/policy (API Priority and Fairness), and can leave it out.
#[tokio::test]
async fn helm_chart_flow_control_matches_the_kustomize_install() {
    let cluster = Cluster::connect().await;
    let kinds = ["FlowSchema", "PriorityLevelConfiguration"];
    let kustomized = kustomize(&cluster, "manifests/rbac/policy");
    let kustomized = cluster_objects(&cluster, &kustomized, &kinds);
    let charted = cluster_objects(&cluster, &helm_template("baton-system", &[]), &kinds);
    let names: Vec<_> = kustomized.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "FlowSchema baton-leases",
            "PriorityLevelConfiguration baton"
        ]
    );
    assert_eq!(charted, kustomized, "the chart's objects differ");
    for off in ["flowControl.enabled=false", "policies.enabled=false"] {
        let yaml = helm_template("baton-system", &["--set", off]);
        assert!(
            documents(&yaml)
                .iter()
                .all(|(kind, _)| !kinds.contains(&kind.as_str())),
            "{off} renders none"
        );
    }
}

fn admission_policies_absent(yaml: &str) -> bool {
    documents(yaml)
        .iter()
        .all(|(kind, _)| !kind.starts_with("ValidatingAdmissionPolicy"))
}
