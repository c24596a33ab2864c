//! Many groups on one control plane: N StatefulSets of two pods with the
//! sidecar, in one namespace. How long they take to settle, what they cost
//! in steady state, and failovers in a sample of groups while the rest run.

use std::time::Duration;

use baton_e2e::{
    harness::{Cluster, http},
    workload,
};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::{Api, runtime::watcher};

use super::{
    load::{Window, window},
    measure::{policy_admission, proc_sample},
    recorder::Recorder,
    scenario::APP_PORT,
    stats::{Summary, now, parse_log_time, summary},
};

#[derive(Debug, Default, Clone)]
pub struct ScaleResult {
    pub groups: usize,
    /// Seconds from apply until every group had one active pod as its endpoint.
    pub settle: Option<f64>,
    pub window: Option<Window>,
    pub sidecars: usize,
    pub failover: Summary,
    pub detection: Summary,
    pub failed_failovers: usize,
    /// Role or endpoint changes during the steady window (should be 0).
    pub flaps: usize,
    pub broke: Option<String>,
    /// Private memory (RssAnon) of one pod's two processes, KiB.
    pub pod_anon_kib: Option<f64>,
    /// From the apply until it settled (or gave up): seconds the API server
    /// spent in the admission policies, summed over requests, and the
    /// requests they judged (decisions §16 says why this is watched).
    pub policy_admission: Option<(f64, f64)>,
}

/// The API server's admission policy totals now, if its metrics answer.
fn policy_admission_now(cluster: &Cluster) -> Option<(f64, f64)> {
    let out = cluster.kubectl(&["get", "--raw", "/metrics"], None);
    out.status
        .success()
        .then(|| policy_admission(&String::from_utf8_lossy(&out.stdout)))
}

/// Memory available to new processes now, KiB.
pub fn mem_available_kib() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn group_name(i: usize) -> String {
    format!("g{i:03}")
}

pub async fn run(
    cluster: &Cluster,
    groups: usize,
    window_secs: u64,
    failovers: usize,
    namespace_labels: &[String],
) -> ScaleResult {
    let mut r = ScaleResult {
        groups,
        ..ScaleResult::default()
    };
    let ns = cluster.namespace(&format!("bench-scale-{groups}")).await;
    for label in namespace_labels {
        ns.label_namespace(label);
    }
    let rec = Recorder::start(ns.api(), ns.api()).await;
    let yaml: String = (0..groups)
        .map(|i| {
            let g = group_name(i);
            format!(
                "{}---\n{}---\n",
                workload::statefulset(&g, 2, true, &[]),
                workload::active_service(&g)
            )
        })
        .collect();
    let admission_before = policy_admission_now(cluster);
    let t0 = now();
    let applied = ns.kubectl(&["apply", "-f", "-"], Some(&yaml));
    if !applied.status.success() {
        r.broke = Some(format!(
            "apply: {}",
            String::from_utf8_lossy(&applied.stderr)
        ));
        ns.delete().await;
        return r;
    }
    let names: Vec<String> = (0..groups).map(group_name).collect();
    let settled = rec
        .wait(
            // Long enough to say when a burst settles on a loaded machine,
            // not only that it missed a bound.
            Duration::from_secs((60 + 4 * groups as u64).min(900)),
            &format!("{groups} groups with one active endpoint and a passive pod each"),
            |s| {
                names.iter().all(|g| {
                    let act = s.active(g);
                    let pods = s.group_pods(g);
                    act.len() == 1
                        && s.endpoint_pods(&format!("{g}-active")) == act
                        && pods.len() == 2
                        && pods.iter().all(|(_, p)| p.role.is_some())
                })
            },
        )
        .await;
    match settled {
        Ok(s) => r.settle = Some(s.t - t0),
        Err(e) => {
            let s = rec.state();
            let ok = names.iter().filter(|g| s.active(g).len() == 1).count();
            let running = s.pods.values().filter(|p| p.ip.is_some()).count();
            r.broke = Some(format!(
                "{e}: {ok} of {groups} groups had one active pod, {running} of {} pods had an IP",
                2 * groups
            ));
        }
    }
    r.policy_admission = match (admission_before, policy_admission_now(cluster)) {
        (Some(a), Some(b)) => Some((b.0 - a.0, b.1 - a.1)),
        _ => None,
    };
    // Measured even when it did not settle: what a saturated control plane
    // and machine look like is the point of the last step.
    {
        let pids = container_pids(&ns.pod_dir(""), "baton-sidecar");
        r.sidecars = pids.len();
        let apps = container_pids(&ns.pod_dir(""), "app");
        let anon = |pids: &[u32]| -> f64 {
            let v: Vec<f64> = pids
                .iter()
                .filter_map(|p| proc_sample(*p))
                .map(|s| s.anon_kib as f64)
                .collect();
            v.iter().sum::<f64>() / v.len().max(1) as f64
        };
        r.pod_anon_kib = Some(anon(&pids) + anon(&apps));
        let from = now();
        match window(cluster, window_secs, &pids, &apps).await {
            Ok(w) => r.window = Some(w),
            Err(e) => r.broke = Some(format!("window: {e}")),
        }
        let to = now();
        r.flaps = names.iter().map(|g| rec.changes(g, from, to)).sum();
        let (mut totals, mut detections) = (Vec::new(), Vec::new());
        let step = (groups / failovers.max(1)).max(1);
        for g in names.iter().step_by(step).take(failovers) {
            match failover(&rec, &ns, g).await {
                Ok((total, det)) => {
                    totals.push(total);
                    detections.extend(det);
                }
                Err(e) => {
                    r.failed_failovers += 1;
                    eprintln!("[bench] scale {groups}: failover of {g} failed: {e}");
                }
            }
        }
        r.failover = summary(&totals);
        r.detection = summary(&detections);
    }
    let name = ns.name.clone();
    drop(rec);
    ns.delete().await;
    wait_namespace_gone(cluster, &name, Duration::from_secs(300)).await;
    r
}

async fn failover(
    rec: &Recorder,
    ns: &baton_e2e::harness::TestNamespace,
    g: &str,
) -> anyhow::Result<(f64, Option<f64>)> {
    let s = rec.state();
    let active = s.active(g);
    anyhow::ensure!(active.len() == 1, "{g} has {} active pods", active.len());
    let a = active[0].clone();
    let b = s
        .group_pods(g)
        .into_iter()
        .map(|(n, _)| n)
        .find(|n| *n != a)
        .ok_or_else(|| anyhow::anyhow!("{g} has no standby"))?;
    let ip = s
        .pods
        .get(&a)
        .and_then(|p| p.ip.clone())
        .unwrap_or_default();
    let t0 = now();
    http()
        .post(format!("http://{ip}:{APP_PORT}/control?health=fail"))
        .send()
        .await?;
    let svc = format!("{g}-active");
    let done = rec
        .wait(
            Duration::from_secs(60),
            &format!("{b} the only endpoint of {svc}"),
            |s| s.endpoint_pods(&svc) == [b.clone()],
        )
        .await?;
    let log = std::fs::read_to_string(ns.pod_dir(&a).join("baton-sidecar.log")).unwrap_or_default();
    let det = log
        .lines()
        .filter(|l| l.contains("app unhealthy"))
        .filter_map(parse_log_time)
        .find(|t| *t >= t0 - 0.005)
        .map(|t| t - t0);
    Ok((done.t - t0, det))
}

/// Pids of every `container` the runner started under a namespace's directory.
fn container_pids(ns_dir: &std::path::Path, container: &str) -> Vec<u32> {
    let Ok(dirs) = std::fs::read_dir(ns_dir) else {
        return Vec::new();
    };
    dirs.flatten()
        .filter_map(|d| std::fs::read_to_string(d.path().join(format!("{container}.pid"))).ok())
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

/// Waits (on a watch) until the namespace is gone, so that the next
/// measurement does not pay for this one's teardown.
pub async fn wait_namespace_gone(cluster: &Cluster, name: &str, timeout: Duration) {
    let api: Api<Namespace> = Api::all(cluster.client.clone());
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = watcher(api, config).boxed();
    let mut present = true;
    let wait = async {
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::Init) => present = false,
                Ok(watcher::Event::InitApply(_) | watcher::Event::Apply(_)) => present = true,
                Ok(watcher::Event::Delete(_)) => return,
                Ok(watcher::Event::InitDone) if !present => return,
                _ => {}
            }
        }
    };
    if tokio::time::timeout(timeout, wait).await.is_err() {
        eprintln!("[bench] namespace {name} still terminating after {timeout:?}; going on");
    }
}
