//! Chaos: the control plane itself disrupted under a running group, on the
//! shared local cluster (real control plane, real node). kube-apiserver
//! frozen, kube-apiserver restarted, etcd restarted. Each case runs under
//! the never-two-active guard, told of the outage (watch errors during it
//! are excused; a fresh list after it must show at most one active pod, and
//! so must every complete view either watch showed), and then checks that
//! the group has an active pod again within a generous bound, and that the
//! sidecars' watches and clients work again: a failover after the outage
//! reaches every sidecar. Each prints its figures on one line (`chaos:`).
//!
//! These cases disrupt the cluster for everyone, so they never overlap: a
//! static lock serialises them (cargo runs test binaries one after another,
//! so no other binary's tests run meanwhile). They need to run as root in
//! the cluster's network namespace, as every e2e test does, and
//! tests/cluster/restart.sh (with the cluster's BATON_* environment).

use std::{
    path::Path,
    time::{Duration, Instant},
};

use baton_e2e::{
    harness::{
        Cluster, LeaseHistory, NeverTwoActive, TestNamespace, labelled,
        outage::{ActiveTimeline, Outage},
        pod_ip, poll_status, repo_root, set_app_health, signal, wait_app_healthy, wait_for_holder,
        wait_roles, wait_until,
    },
    workload,
};
use baton_sidecar::contract::{Role, Status};
use k8s_openapi::api::core::v1::Pod;

/// One case at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const NAME: &str = "web";
const LABELS: &str = "app=web";
const T: Duration = Duration::from_secs(60);
/// Short timings, so that deadlines and expiries pass within the outages.
const TIMINGS: &[(&str, &str)] = &[
    ("BATON_LEASE_DURATION", "2s"),
    ("BATON_RENEW_DEADLINE", "1s"),
    ("BATON_RENEW_PERIOD", "400ms"),
    ("BATON_RETRY_PERIOD", "200ms"),
    ("BATON_API_TIMEOUT", "500ms"),
];
const LEASE_DURATION: Duration = Duration::from_secs(2);
/// The bound on the time without an active pod after the control plane is
/// back (healthy, or resumed): 3 lease durations + 10 s.
const BOUND: Duration = Duration::from_secs(3 * LEASE_DURATION.as_secs() + 10);

/// A group of two pods with sidecars, and its watchers.
struct Chaos {
    test: &'static str,
    cluster: Cluster,
    ns: TestNamespace,
    guard: NeverTwoActive,
    timeline: ActiveTimeline,
    history: LeaseHistory,
    holder: String,
    passive: String,
}

impl Chaos {
    /// Deploys the group and waits until one pod is active and both apps
    /// are healthy (a standby that can take over).
    async fn deploy(test: &'static str) -> Chaos {
        let cluster = Cluster::connect().await;
        let ns = cluster.namespace(test).await;
        let guard = NeverTwoActive::start(ns.api(), LABELS, "role", "active").await;
        let timeline = ActiveTimeline::start(ns.api(), LABELS, "role", "active").await;
        let history = LeaseHistory::start(ns.api(), NAME).await;
        ns.apply(&workload::statefulset(NAME, 2, true, TIMINGS));
        let holder = wait_for_holder(&ns, NAME, None).await;
        let pods = wait_roles(&ns, LABELS, &holder, 1).await;
        let passive = labelled(&pods, "role", "passive").remove(0);
        for pod in [&holder, &passive] {
            wait_app_healthy(&ns, pod).await;
        }
        Chaos {
            test,
            cluster,
            ns,
            guard,
            timeline,
            history,
            holder,
            passive,
        }
    }

    /// The host pid of a control-plane process, from up.sh's pid file.
    fn component_pid(&self, name: &str) -> u32 {
        let path = self.cluster.dir.join(format!("pids/{name}.pid"));
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        text.trim().parse().expect("a pid")
    }

    /// Restarts a control-plane process with tests/cluster/restart.sh, which
    /// returns once it is healthy again.
    async fn restart(&self, name: &str) {
        let script = repo_root().join("tests/cluster/restart.sh");
        let status = tokio::process::Command::new(&script)
            .arg(name)
            .env("BATON_CLUSTER_DIR", &self.cluster.dir)
            .status()
            .await
            .expect("running restart.sh");
        assert!(status.success(), "{} {name}: {status}", script.display());
    }

    /// After the outage that began at `began` and ended at `back`: checks
    /// that the group has an active pod within [`BOUND`] of `back`, that
    /// the sidecars follow a failover, and the guard; prints the figures.
    async fn recover(mut self, outage: Outage, began: Instant, back: Instant, extra: &str) {
        let excused = self.guard.outage_over(outage).await;
        // A pod labelled active whose sidecar says so too (role file,
        // /status: it renewed). Right after the outage the label may still
        // be the old holder's, which another pod is about to demote.
        let deadline = back + BOUND;
        let active = loop {
            let left = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_secs(1));
            let pods = wait_until::<Pod, _>(
                self.ns.api(),
                LABELS,
                left,
                &format!("an active pod within {BOUND:?} of the recovery"),
                |pods| labelled(pods, "role", "active").len() == 1,
            )
            .await;
            let active = labelled(&pods, "role", "active").remove(0);
            let ip = pod_ip(&self.ns, &active).await;
            let active_now = |s: &Status| s.role == Some(Role::Active);
            let status = poll_status(&ip, Duration::from_secs(2), active_now).await;
            if status.as_ref().is_some_and(active_now) {
                break active;
            }
            assert!(
                Instant::now() < deadline,
                "no pod both labelled and reporting active within {BOUND:?} of the recovery; \
                 {active}: {status:?}\n{}",
                self.logs()
            );
        };
        let gap = self.timeline.longest_gap_since(began);
        let holders = self.history.holders();
        assert!(
            gap <= BOUND,
            "{:.1} s without an active pod (bound {BOUND:?})",
            gap.as_secs_f64()
        );
        let kept = holders == [Some(self.holder.clone())] && gap.is_zero();
        let followed = self.failover_reaches_every_sidecar(&active).await;
        eprintln!(
            "chaos: {}: {:.1} s without an active pod after recovery (bound {} s); \
             holder kept without a flap: {kept}; holders {holders:?}; \
             {} watch errors excused; a failover after it reached every sidecar in {:.1} s{extra}",
            self.test,
            gap.as_secs_f64(),
            BOUND.as_secs(),
            excused.len(),
            followed.as_secs_f64(),
        );
        let most = self.guard.assert_held().await;
        assert_eq!(most, 1, "some pod was active at some point");
        self.ns.delete().await;
    }

    /// The active pod's app fails: the other pod takes over, and every
    /// sidecar's `/status` names the new holder and the API server
    /// reachable (their watches work again). Returns how long that took from
    /// the failure. Bound: 10 s. The sidecars' watches retry within four
    /// retry periods (`backoff::WatchBackoff`); with kube's default watcher
    /// back-off (doubling from 0.8 s up to 30 s, reset only after 120 s
    /// without an error) this took 13 s after an API server restart.
    async fn failover_reaches_every_sidecar(&self, active: &str) -> Duration {
        let failed = Instant::now();
        set_app_health(&self.ns, active, "fail").await;
        let new = wait_for_holder(&self.ns, NAME, Some(active)).await;
        wait_roles(&self.ns, LABELS, &new, 1).await;
        for pod in [&self.holder, &self.passive] {
            let ip = pod_ip(&self.ns, pod).await;
            let left = (failed + Duration::from_secs(10)).saturating_duration_since(Instant::now());
            let follows = |s: &Status| s.holder.as_deref() == Some(new.as_str()) && s.api_reachable;
            let status = poll_status(&ip, left, follows).await;
            assert!(
                status.as_ref().is_some_and(follows),
                "{pod} 10 s after the failover to {new}: {status:?}\n{}",
                self.logs()
            );
        }
        failed.elapsed()
    }

    /// The sidecars' last log lines, for failure messages.
    fn logs(&self) -> String {
        [&self.holder, &self.passive]
            .iter()
            .map(|pod| format!("{pod}:\n{}", self.ns.log_tail(pod, "baton-sidecar")))
            .collect()
    }
}

/// SIGCONT on drop: a failing test never leaves the API server frozen.
struct Frozen(u32);

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .arg("-CONT")
            .arg(self.0.to_string())
            .status();
    }
}

/// Whether a host process has exited (gone, or a zombie not reaped yet).
fn exited(pid: u32) -> bool {
    std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat")).map_or(
        true,
        |stat| {
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        },
    )
}

/// kube-apiserver frozen (SIGSTOP) for 30 s, then resumed. During the
/// freeze the holder's `/status` turns passive once its renew deadline has
/// passed (bound: 10 s; the deadline is 1 s after its last renewal), and a
/// passive sidecar answers SIGTERM by exiting within 5 s (rule 6: within a
/// second during an outage). After the resume: an active pod again within
/// 3 lease durations + 10 s (16 s), ideally the same holder without a flap.
#[tokio::test]
async fn apiserver_frozen_for_30_s() {
    let _serial = SERIAL.lock().await;
    let chaos = Chaos::deploy("chaos-freeze").await;
    // Read while the API server still answers.
    let holder_ip = pod_ip(&chaos.ns, &chaos.holder).await;
    let passive_pid = chaos.ns.pid(&chaos.passive, "baton-sidecar", T).await;
    let apiserver = chaos.component_pid("kube-apiserver");

    let outage = chaos.guard.outage_begins();
    let began = Instant::now();
    signal(apiserver, "STOP").await;
    let frozen = Frozen(apiserver);

    let status = poll_status(&holder_ip, Duration::from_secs(10), |s| {
        s.role == Some(Role::Passive)
    })
    .await;
    let holder_passive_after = began.elapsed();
    assert_eq!(
        status.as_ref().and_then(|s| s.role),
        Some(Role::Passive),
        "the holder past its deadline, API server frozen: {status:?}"
    );

    let sigterm = Instant::now();
    signal(passive_pid, "TERM").await;
    while !exited(passive_pid) && sigterm.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let exit_after = sigterm.elapsed();
    assert!(
        exited(passive_pid),
        "the passive sidecar (pid {passive_pid}) still runs 5 s after SIGTERM"
    );

    tokio::time::sleep_until((began + Duration::from_secs(30)).into()).await;
    drop(frozen);
    let back = Instant::now();
    let extra = format!(
        "; holder's /status passive {:.1} s into the freeze; passive sidecar exited {:.2} s after SIGTERM",
        holder_passive_after.as_secs_f64(),
        exit_after.as_secs_f64()
    );
    chaos.recover(outage, began, back, &extra).await;
}

/// Restarts `component` with tests/cluster/restart.sh under a group.
async fn restarted(test: &'static str, component: &str) {
    let _serial = SERIAL.lock().await;
    let chaos = Chaos::deploy(test).await;
    let outage = chaos.guard.outage_begins();
    let began = Instant::now();
    chaos.restart(component).await;
    let back = Instant::now();
    let extra = format!("; restart took {:.1} s", (back - began).as_secs_f64());
    let cluster = chaos.cluster.clone();
    chaos.recover(outage, began, back, &extra).await;
    controllers_work(&cluster, test, back).await;
}

/// Waits until a StatefulSet's pod runs again: kube-controller-manager and
/// kube-scheduler, whose watches back off through the outage (client-go:
/// doubling up to 30 s, with jitter), work again, so that the tests after
/// this one find a working cluster. Bound: 180 s from the recovery.
async fn controllers_work(cluster: &Cluster, test: &str, back: Instant) {
    let ns = cluster.namespace(&format!("{test}-after")).await;
    ns.apply(&workload::statefulset("probe", 1, false, &[]));
    let left = (back + Duration::from_secs(180)).saturating_duration_since(Instant::now());
    wait_until::<Pod, _>(
        ns.api(),
        "app=probe",
        left,
        "a StatefulSet's pod running",
        |pods| {
            pods.iter()
                .any(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        },
    )
    .await;
    eprintln!(
        "chaos: {test}: controllers create and run pods again {:.1} s after the recovery",
        back.elapsed().as_secs_f64()
    );
    ns.delete().await;
}

/// kube-apiserver restarted (SIGTERM, then started again with the same
/// command line): an active pod again within 3 lease durations + 10 s
/// (16 s) of the API server being ready again.
#[tokio::test]
async fn apiserver_restarted() {
    restarted("chaos-apiserver", "kube-apiserver").await;
}

/// etcd restarted (SIGTERM, then started again with the same command line
/// and data): an active pod again within 3 lease durations + 10 s (16 s)
/// of etcd being healthy again.
#[tokio::test]
async fn etcd_restarted() {
    restarted("chaos-etcd", "etcd").await;
}
