//! An app that closes its kept-alive connections by design (an idle timeout,
//! a maximum connection age) is not a dead app: the probe's kept connection
//! closing starts a probe at once, which must succeed on a new connection
//! and never fail over (docs/decisions.md §14). A group of two whose apps
//! close every connection every 200 ms, on the real node; then each
//! sidecar killed once and restarted by kubelet.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use baton_e2e::{
    app_env,
    harness::{
        self, Cluster, LeaseHistory, NeverTwoActive, TestNamespace, labelled, pod_ip, pod_ready,
        sidecar_restarts, signal, wait_app_healthy, wait_endpoints, wait_for_holder,
        wait_for_object, wait_role, wait_until,
    },
    prometheus::sample_sum,
    workload,
};
use baton_sidecar::contract::Role;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher;

const T: Duration = Duration::from_secs(60);
const GROUP: &str = "web";
/// How often the apps close every connection they hold.
const CLOSE_EVERY: &str = "200ms";
/// Probes started by a closed connection, and answered, before the test
/// judges (at about two a second: a closed-connection probe at most
/// between two periodic ones, every 500 ms).
const CLOSED_PROBES: f64 = 50.0;
const CLOSED_SUCCESS: &str = r#"baton_probes_total{trigger="connection closed",result="success"}"#;

/// `workload::statefulset` with the apps closing their connections every
/// [`CLOSE_EVERY`]. Its `env` goes to the sidecar, and `Group` (which
/// applies the StatefulSet itself) has no way to give the app container
/// env: the group is deployed here rather than by `Group::deploy_with`.
fn closing_statefulset(replicas: u32) -> String {
    app_env::with_app_env(
        &workload::statefulset(GROUP, replicas, true, &[]),
        app_env::CLOSE_CONNECTIONS_EVERY,
        CLOSE_EVERY,
    )
}

/// Every pod of the group ever seen labelled active, from a watch started
/// before the group exists.
struct EverActive {
    task: tokio::task::JoinHandle<()>,
    pods: Arc<Mutex<BTreeSet<String>>>,
}

impl EverActive {
    fn start(ns: &TestNamespace) -> EverActive {
        let pods: Arc<Mutex<BTreeSet<String>>> = Arc::default();
        let seen = pods.clone();
        let config = watcher::Config::default().labels(&format!("app={GROUP}"));
        let mut stream = watcher(ns.api::<Pod>(), config).boxed();
        let task = tokio::spawn(async move {
            while let Some(event) = stream.next().await {
                if let Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) = event {
                    let active = labelled(std::slice::from_ref(&p), "role", "active");
                    seen.lock().expect("not poisoned").extend(active);
                }
            }
        });
        EverActive { task, pods }
    }

    fn pods(&self) -> BTreeSet<String> {
        self.pods.lock().expect("not poisoned").clone()
    }
}

impl Drop for EverActive {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn metrics(ns: &TestNamespace, pod: &str) -> String {
    harness::sidecar_get(ns, pod, "/metrics").await
}

/// Waits until `pod`'s sidecar has counted `n` successful probes started by
/// a closed connection; returns its metrics then.
async fn wait_closed_probes(ns: &TestNamespace, pod: &str, n: f64) -> String {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let text = metrics(ns, pod).await;
        if sample_sum(&text, CLOSED_SUCCESS) >= n {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{pod}'s sidecar did not count {n} successful closed-connection probes in {T:?}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Probes with `result` (failure, refused, timeout), whatever started them.
fn probes(metrics: &str, result: &str) -> f64 {
    ["period", "connection closed"]
        .iter()
        .map(|t| {
            sample_sum(
                metrics,
                &format!(r#"baton_probes_total{{trigger="{t}",result="{result}"}}"#),
            )
        })
        .sum()
}

/// Asserts that `pod`'s sidecar counted no failed and no refused probe
/// since `since` (its metrics once its app was healthy: the sidecar starts
/// before the app, and its first probes are refused): a connection closed
/// by design is never taken for a dead app. (A timeout, 400 ms, is the
/// machine's scheduling, not the app's closing: printed.)
fn assert_no_failed_probes(pod: &str, since: &str, metrics: &str) {
    for result in ["failure", "refused"] {
        assert_eq!(
            probes(metrics, result) - probes(since, result),
            0.0,
            "{pod}'s sidecar counted {result} probes since its app was healthy:\n{since}\nthen:\n{metrics}"
        );
    }
    println!(
        "soak: {pod}: {} closed-connection probes answered, {} timed out",
        sample_sum(metrics, CLOSED_SUCCESS),
        // (An empty sum of floats is -0.)
        probes(metrics, "timeout") + 0.0
    );
}

/// Kills `pod`'s sidecar (SIGKILL: no release) and waits until kubelet has
/// restarted it and the pod is Ready again.
async fn kill_sidecar(ns: &TestNamespace, pod: &str) {
    let pods = ns.api::<Pod>();
    let restarts = sidecar_restarts(&pods.get(pod).await.expect("the pod"));
    let pid = ns.pid(pod, "baton-sidecar", T).await;
    signal(pid, "KILL").await;
    wait_for_object::<Pod, _>(
        pods,
        pod,
        T,
        &format!("{pod}'s sidecar restarted by kubelet and the pod Ready"),
        |p| sidecar_restarts(p) == restarts + 1 && pod_ready(p),
    )
    .await;
    assert_ne!(
        ns.pid(pod, "baton-sidecar", T).await,
        pid,
        "a new sidecar process"
    );
}

#[tokio::test]
async fn an_app_that_closes_every_connection_is_never_failed_over() {
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("soak").await;
    let guard = NeverTwoActive::start(ns.api(), &format!("app={GROUP}"), "role", "active").await;
    let history = LeaseHistory::start(ns.api(), GROUP).await;
    let ever_active = EverActive::start(&ns);
    ns.apply(&closing_statefulset(2));
    ns.apply(&workload::active_service(GROUP));
    let holder = wait_for_holder(&ns, GROUP, None).await;
    let standby = if holder == "web-0" { "web-1" } else { "web-0" };
    wait_until::<Pod, _>(ns.api(), &format!("app={GROUP}"), T, "roles settled", |p| {
        labelled(p, "role", "active") == [holder.clone()]
            && labelled(p, "role", "passive") == [standby.to_string()]
    })
    .await;
    for pod in [holder.as_str(), standby] {
        wait_app_healthy(&ns, pod).await;
    }
    let (holder_since, standby_since) = (metrics(&ns, &holder).await, metrics(&ns, standby).await);

    // The apps close the probe's connection five times a second: each close
    // starts a probe (at most one between two periodic ones), and every one
    // of them succeeds on a new connection.
    let holder_metrics = wait_closed_probes(&ns, &holder, CLOSED_PROBES).await;
    let standby_metrics = wait_closed_probes(&ns, standby, 1.0).await;
    assert_no_failed_probes(&holder, &holder_since, &holder_metrics);
    assert_no_failed_probes(standby, &standby_since, &standby_metrics);
    assert_eq!(history.holders(), [Some(holder.clone())], "no switch");

    // The standby's sidecar crashes: kubelet restarts it; nothing moves.
    kill_sidecar(&ns, standby).await;
    wait_app_healthy(&ns, standby).await;
    assert_eq!(
        history.holders(),
        [Some(holder.clone())],
        "no switch when the standby's sidecar restarted"
    );

    // The holder's sidecar crashes: restarted at once (kubelet's first
    // restart has no back-off), it renews the Lease that names its pod
    // before the Lease expires, and rejoins as holder without a switch
    // (design rule 2's own-name case; tests/tests/sidecar.rs asserts the same).
    kill_sidecar(&ns, &holder).await;
    let ip = pod_ip(&ns, &holder).await;
    wait_role(&ip, Role::Active, Duration::from_secs(10)).await;
    wait_endpoints(&ns, &format!("{GROUP}-active"), &[&holder], T).await;
    assert_eq!(
        history.holders(),
        [Some(holder.clone())],
        "no switch when the holder's sidecar restarted"
    );

    // The restarted sidecars probe as before: their apps still close every
    // connection, and no probe fails (their counters start from zero with
    // the app already up).
    let holder_metrics = wait_closed_probes(&ns, &holder, 10.0).await;
    let standby_metrics = wait_closed_probes(&ns, standby, 10.0).await;
    assert_no_failed_probes(&holder, "", &holder_metrics);
    assert_no_failed_probes(standby, "", &standby_metrics);

    assert_eq!(history.holders(), [Some(holder.clone())], "no switch");
    assert_eq!(
        ever_active.pods(),
        BTreeSet::from([holder.clone()]),
        "no pod but the first holder was ever labelled active"
    );
    assert_eq!(guard.assert_held().await, 1, "one active pod at a time");
    ns.delete().await;
}
