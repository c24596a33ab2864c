//! The webhook under load: the `baton-webhook` binary started beside the
//! control plane with a self-signed certificate, registered for one
//! namespace, and many pods created through it (server-side dry run, so
//! admission runs in full but nothing is stored or scheduled); the API
//! server's own admission histogram gives the latency it adds. Then
//! AdmissionReviews sent straight to /mutate give its request rate.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use baton_e2e::{
    harness::{Cluster, TestNamespace, http},
    prometheus::sample_sum,
    webhook::base64,
};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use tokio::process::Command;

use super::{
    measure::{histogram, histogram_delta, quantile},
    stats::{Summary, summary},
};

const WEBHOOK_NAME: &str = "mutate.bench.baton.dev";
const CONFIG_NAME: &str = "baton-bench";

#[derive(Debug, Default, Clone)]
pub struct WebhookResult {
    pub pods: usize,
    /// Client-side create latency (ms) through the webhook and without one.
    pub create_with: Summary,
    pub create_without: Summary,
    /// From apiserver_admission_webhook_admission_duration_seconds (ms).
    pub admission_count: f64,
    pub admission_p50: Option<f64>,
    pub admission_p99: Option<f64>,
    pub rejected: usize,
    /// Why, for the first few rejections: the API server's message.
    pub rejections: Vec<String>,
    /// Direct POSTs to /mutate.
    pub direct_concurrency: usize,
    pub direct_rps: f64,
    pub direct_errors: u64,
    pub direct_latency: Summary,
    pub webhook_rss_kib: u64,
    /// Owner lookups during the creates, answered by the webhook's cache
    /// and by the API server (`baton_webhook_owner_lookups_total`).
    pub owner_lookups_cache: f64,
    pub owner_lookups_api: f64,
}

pub async fn run(
    cluster: &Cluster,
    bin_dir: &Path,
    out: &Path,
    pods: usize,
    direct_secs: u64,
) -> anyhow::Result<WebhookResult> {
    let (https, plain) = ("127.0.0.1:18443", "127.0.0.1:18080");
    let ca_file = out.join("webhook-ca.pem");
    let _ = std::fs::remove_file(&ca_file);
    let log = std::fs::File::create(out.join("webhook.log"))?;
    let mut child = Command::new(bin_dir.join("baton-webhook"))
        .args(["--listen-addr", https, "--http-addr", plain])
        .arg("--ca-out-file")
        .arg(&ca_file)
        // Not run by anyone: dry-run pods are never scheduled.
        .args(["--sidecar-image", "ghcr.io/baton-dev/baton-sidecar:bench"])
        .env("KUBECONFIG", cluster.dir.join("kubeconfig"))
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .context("starting baton-webhook")?;
    let pid = child.id().unwrap_or_default();
    let result = measure(cluster, https, plain, &ca_file, pods, direct_secs, pid).await;
    let _ = cluster.kubectl(
        &[
            "delete",
            "mutatingwebhookconfiguration",
            CONFIG_NAME,
            "--ignore-not-found",
        ],
        None,
    );
    let _ = child.kill().await;
    result
}

async fn measure(
    cluster: &Cluster,
    https: &str,
    plain: &str,
    ca_file: &PathBuf,
    pods: usize,
    direct_secs: u64,
    pid: u32,
) -> anyhow::Result<WebhookResult> {
    // Ready: its plain-HTTP health answers and the CA is written.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let up = http().get(format!("http://{plain}/healthz")).send().await;
        if up.is_ok_and(|r| r.status().is_success()) && ca_file.exists() {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "baton-webhook did not start (see webhook.log)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ca = std::fs::read(ca_file)?;
    let with = cluster.namespace("bench-webhook").await;
    let without = cluster.namespace("bench-nowebhook").await;
    cluster_apply(cluster, &webhook_config(https, &with.name, &base64(&ca)))?;
    // The pods' owner, as for a real workload: the webhook looks it up for
    // every pod (its annotations opt in and set the group).
    with.apply(OWNER);
    let uid = with.kubectl_ok(
        &["get", "statefulset", "wh", "-o", "jsonpath={.metadata.uid}"],
        None,
    );
    let owned = |name: &str| pod(name, Some(&uid));

    // The API server picks the configuration up asynchronously.
    let api: Api<Pod> = with.api();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let p = api.create(&dry_run(), &owned("probe")).await;
        if p.is_ok_and(|p| injected(&p)) {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the webhook is not called for {}",
            with.name
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let name_is_ours = |s: &super::measure::Sample| {
        s.labels.get("name").map(String::as_str) == Some(WEBHOOK_NAME)
            && s.labels.get("type").map(String::as_str) == Some("admit")
    };
    let metric = "apiserver_admission_webhook_admission_duration_seconds";
    let lookups = |text: &str, source: &str| {
        sample_sum(
            text,
            &format!("baton_webhook_owner_lookups_total{{source=\"{source}\"}}"),
        )
    };
    let webhook_metrics = || async {
        let r = http().get(format!("http://{plain}/metrics")).send().await?;
        anyhow::Ok(r.text().await?)
    };
    let before = histogram(&raw_metrics(cluster)?, metric, name_is_ours);
    let lookups_before = webhook_metrics().await?;
    let (lat_with, rejections) = create_many(&with, pods, Some(&uid)).await;
    let after = histogram(&raw_metrics(cluster)?, metric, name_is_ours);
    let lookups_after = webhook_metrics().await?;
    let owner_lookups_cache = lookups(&lookups_after, "cache") - lookups(&lookups_before, "cache");
    let owner_lookups_api = lookups(&lookups_after, "api") - lookups(&lookups_before, "api");
    let delta = histogram_delta(&before, &after);
    let (lat_without, _) = create_many(&without, pods.min(300), None).await;
    let rejected = rejections.len();
    let webhook_rss_kib = super::measure::proc_sample(pid).map_or(0, |s| s.rss_kib);

    let (rps, errors, direct) =
        direct_load(https, &ca, 8, Duration::from_secs(direct_secs)).await?;
    let names = [with.name.clone(), without.name.clone()];
    with.delete().await;
    without.delete().await;
    for n in names {
        super::scale::wait_namespace_gone(cluster, &n, Duration::from_secs(120)).await;
    }
    Ok(WebhookResult {
        pods,
        create_with: summary(&lat_with),
        create_without: summary(&lat_without),
        admission_count: delta.last().map_or(0.0, |(_, c)| *c),
        admission_p50: quantile(&delta, 0.5).map(|s| s * 1000.0),
        admission_p99: quantile(&delta, 0.99).map(|s| s * 1000.0),
        rejected,
        rejections: rejections.into_iter().take(3).collect(),
        direct_concurrency: 8,
        direct_rps: rps,
        direct_errors: errors,
        direct_latency: summary(&direct),
        webhook_rss_kib,
        owner_lookups_cache,
        owner_lookups_api,
    })
}

fn raw_metrics(cluster: &Cluster) -> anyhow::Result<String> {
    let out = cluster.kubectl(&["get", "--raw", "/metrics"], None);
    anyhow::ensure!(
        out.status.success(),
        "kubectl get --raw /metrics: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn cluster_apply(cluster: &Cluster, yaml: &str) -> anyhow::Result<()> {
    let out = cluster.kubectl(&["apply", "-f", "-"], Some(yaml));
    anyhow::ensure!(
        out.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Creates `n` pods (dry run) 8 at a time; latencies in ms and the errors
/// of the rejected ones.
async fn create_many(ns: &TestNamespace, n: usize, owner: Option<&str>) -> (Vec<f64>, Vec<String>) {
    let api: Api<Pod> = ns.api();
    let api = Arc::new(api);
    let results: Vec<Result<f64, String>> = futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            let p = pod(&format!("p-{i}"), owner);
            async move {
                let start = Instant::now();
                let r = api.create(&dry_run(), &p).await;
                r.map(|_| start.elapsed().as_secs_f64() * 1000.0)
                    .map_err(|e| e.to_string())
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let mut latencies = Vec::with_capacity(results.len());
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok(ms) => latencies.push(ms),
            Err(e) => errors.push(e),
        }
    }
    (latencies, errors)
}

fn dry_run() -> PostParams {
    PostParams {
        dry_run: true,
        ..PostParams::default()
    }
}

/// An annotated StatefulSet with no replicas: the owner of the created pods.
const OWNER: &str = r#"apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: wh
  annotations: {baton.dev/inject: "true"}
spec:
  replicas: 0
  serviceName: wh
  selector: {matchLabels: {app: wh}}
  template:
    metadata:
      labels: {app: wh}
    spec:
      containers:
      - {name: app, image: "ghcr.io/baton-dev/baton-demo-app:dev"}
"#;

fn pod(name: &str, owner_uid: Option<&str>) -> Pod {
    let mut p = pod_json(name);
    if let Some(uid) = owner_uid {
        p["metadata"]["ownerReferences"] = serde_json::json!([{
            "apiVersion": "apps/v1", "kind": "StatefulSet", "name": "wh", "uid": uid,
            "controller": true, "blockOwnerDeletion": true
        }]);
    }
    serde_json::from_value(p).expect("a valid pod")
}

/// A pod that opts in by itself (no owner to look up).
fn pod_json(name: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "wh"},
                     "annotations": {"baton.dev/inject": "true", "baton.dev/lease-name": "wh"}},
        "spec": {"containers": [{"name": "app", "image": "ghcr.io/baton-dev/baton-demo-app:dev",
                 "ports": [{"containerPort": 8080}]}]}
    })
}

fn injected(p: &Pod) -> bool {
    let spec = p.spec.as_ref();
    spec.into_iter()
        .flat_map(|s| {
            s.init_containers
                .iter()
                .flatten()
                .chain(s.containers.iter())
        })
        .any(|c| c.name == "baton-sidecar")
}

fn webhook_config(addr: &str, namespace: &str, ca_b64: &str) -> String {
    format!(
        r#"apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata:
  name: {CONFIG_NAME}
webhooks:
- name: {WEBHOOK_NAME}
  admissionReviewVersions: [v1]
  sideEffects: None
  failurePolicy: Fail
  timeoutSeconds: 10
  clientConfig:
    url: https://{addr}/mutate
    caBundle: {ca_b64}
  rules:
  - {{apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [pods]}}
  namespaceSelector:
    matchLabels: {{kubernetes.io/metadata.name: {namespace}}}
"#
    )
}

/// POSTs AdmissionReviews to /mutate from `workers` connections for `dur`:
/// requests per second, errors, and latencies in ms.
async fn direct_load(
    addr: &str,
    ca: &[u8],
    workers: usize,
    dur: Duration,
) -> anyhow::Result<(f64, u64, Vec<f64>)> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .add_root_certificate(reqwest::Certificate::from_pem(ca)?)
        .timeout(Duration::from_secs(5))
        .build()?;
    let body = serde_json::json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "00000000-0000-0000-0000-000000000001",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "bench", "operation": "CREATE",
            "userInfo": {"username": "bench"},
            "object": pod_json("direct"), "dryRun": false
        }
    })
    .to_string();
    let url = format!("https://{addr}/mutate");
    let start = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let (client, body, url) = (client.clone(), body.clone(), url.clone());
            tokio::spawn(async move {
                let (mut lat, mut errors) = (Vec::new(), 0u64);
                while start.elapsed() < dur {
                    let t = Instant::now();
                    let r = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await;
                    let allowed = match r {
                        Ok(r) if r.status().is_success() => {
                            r.text().await.is_ok_and(|b| b.contains("\"allowed\":true"))
                        }
                        _ => false,
                    };
                    if allowed {
                        lat.push(t.elapsed().as_secs_f64() * 1000.0);
                    } else {
                        errors += 1;
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    let (mut all, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (l, e) = t.await?;
        all.extend(l);
        errors += e;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok((all.len() as f64 / secs, errors, all))
}
