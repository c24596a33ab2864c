//! One group of two demo-app pods run either by baton (a sidecar in each
//! pod) or by the baseline controller (a bash loop outside), and the runs
//! the bench repeats on it: unplanned failover, planned handover, and the
//! holder's sidecar killed.

use std::{path::PathBuf, process::Stdio, time::Duration};

use anyhow::Context as _;
use baton_e2e::{
    harness::{Cluster, TestNamespace, http, parse_status, repo_root, signal},
    workload,
};
use baton_sidecar::Settings;
use k8s_openapi::api::core::v1::Pod;
use kube::api::DeleteParams;
use tokio::process::{Child, Command};

use super::{
    measure::{ProcSample, proc_sample},
    recorder::{Change, Recorder, State},
    stats::{now, parse_log_time},
    timing::{DEFAULT_TIMING, Timing},
};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum System {
    Baton,
    /// The baseline controller with its poll interval in seconds.
    Baseline(u64),
}

impl System {
    pub fn label(&self) -> String {
        match self {
            System::Baton => "baton".into(),
            System::Baseline(i) => format!("baseline {i}s"),
        }
    }
    pub fn slug(&self) -> String {
        match self {
            System::Baton => "baton".into(),
            System::Baseline(i) => format!("baseline-{i}s"),
        }
    }
    /// Longest a failover may take before the run counts as failed.
    fn timeout(&self) -> Duration {
        match self {
            System::Baton => Duration::from_secs(60),
            System::Baseline(i) => Duration::from_secs(2 * i + 60),
        }
    }
}

pub const APP_PORT: u16 = 8080;
pub const STATUS_PORT: u16 = 9095;

/// One measured run.
#[derive(Clone, Debug, Default)]
pub struct Run {
    pub scenario: String,
    pub system: String,
    pub index: usize,
    pub t0: f64,
    /// From t0 until the decision (sidecar log / controller log), seconds.
    pub detection: Option<f64>,
    /// From t0 until the EndpointSlice lists only the new pod, seconds.
    pub total: f64,
    pub two_active: f64,
    pub none_active: f64,
    pub requests: u64,
    pub failed: u64,
    /// Sidecars' CPU (percent of a core, summed) and max RSS during the run.
    pub cpu_percent: Option<f64>,
    pub rss_kib: Option<u64>,
    pub history: Vec<Change>,
}

/// A group of pods on KWOK nodes run by one [`System`] (baton, or the
/// polling baseline against the same pods): what the comparison measures.
pub struct SystemGroup {
    pub ns: TestNamespace,
    pub name: String,
    pub system: System,
    /// The settings the sidecars run with (baton only).
    sidecar: Settings,
    pub rec: Recorder,
    controller: Option<Child>,
    pub controller_log: PathBuf,
    pub cost_file: PathBuf,
}

impl SystemGroup {
    pub async fn deploy(
        cluster: &Cluster,
        system: System,
        timing: &'static Timing,
        out: &std::path::Path,
    ) -> anyhow::Result<SystemGroup> {
        let slug = match system {
            System::Baton if timing.name != DEFAULT_TIMING.name => format!("baton-{}", timing.name),
            _ => system.slug(),
        };
        let ns = cluster.namespace(&format!("bench-{slug}")).await;
        let rec = Recorder::start(ns.api(), ns.api()).await;
        let name = "web".to_string();
        ns.apply(&workload::statefulset(
            &name,
            2,
            system == System::Baton,
            timing.env,
        ));
        ns.apply(&workload::active_service(&name));
        let controller_log = out.join(format!("{}-controller.log", system.slug()));
        let cost_file = out.join(format!("{}-kubectl-cost.txt", system.slug()));
        let mut group = SystemGroup {
            ns,
            name,
            system,
            sidecar: timing.sidecar(),
            rec,
            controller: None,
            controller_log,
            cost_file,
        };
        // Both apps answer before anything decides (the baseline's first poll
        // would otherwise find nothing and sleep a whole interval).
        let st = group
            .rec
            .wait(Duration::from_secs(120), "two pods with IPs", |s| {
                s.group_pods("web")
                    .iter()
                    .filter(|(_, p)| p.ip.is_some() && !p.terminating)
                    .count()
                    == 2
            })
            .await?;
        for (pod, _) in st.group_pods("web") {
            group.wait_app(&pod).await?;
        }
        if let System::Baseline(interval) = system {
            group.start_controller(cluster, interval)?;
        }
        group.stable(None).await?;
        Ok(group)
    }

    fn start_controller(&mut self, cluster: &Cluster, interval: u64) -> anyhow::Result<()> {
        let script = repo_root().join("tests/bench/baseline-controller.sh");
        let log = std::fs::File::create(&self.controller_log)?;
        let _ = std::fs::remove_file(&self.cost_file);
        let child = Command::new("bash")
            .arg(script)
            .args(["--namespace", &self.ns.name, "--app", &self.name])
            .args(["--interval", &interval.to_string()])
            .env("KUBECONFIG", cluster.dir.join("kubeconfig"))
            .env("KUBECTL", &cluster.kubectl)
            .env("BASELINE_COST_FILE", &self.cost_file)
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .context("starting the baseline controller")?;
        self.controller = Some(child);
        Ok(())
    }

    pub async fn stop(mut self) {
        if let Some(mut c) = self.controller.take() {
            if let Some(pid) = c.id() {
                signal(pid, "TERM").await;
            }
            let _ = tokio::time::timeout(Duration::from_secs(5), c.wait()).await;
            let _ = c.kill().await;
        }
        let ns = self.ns;
        drop(self.rec);
        ns.delete().await;
    }

    fn service(&self) -> String {
        format!("{}-active", self.name)
    }

    pub fn ip(&self, pod: &str) -> anyhow::Result<String> {
        self.rec
            .state()
            .pods
            .get(pod)
            .and_then(|p| p.ip.clone())
            .with_context(|| format!("pod {pod} has no IP"))
    }

    /// Polls a local process (the demo app, a sidecar's status server) until
    /// `ok` holds for its answer: these are processes, not API objects, so
    /// there is nothing to watch.
    async fn poll_http(
        &self,
        url: &str,
        timeout: Duration,
        ok: impl Fn(u16, &str) -> bool,
    ) -> anyhow::Result<()> {
        let client = http();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last;
        loop {
            match client.get(url).timeout(Duration::from_secs(1)).send().await {
                Ok(r) => {
                    let code = r.status().as_u16();
                    let body = r.text().await.unwrap_or_default();
                    if ok(code, &body) {
                        return Ok(());
                    }
                    last = format!("{code} {body}");
                }
                Err(e) => last = e.to_string(),
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!("{url} not as expected within {timeout:?}; last: {last}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_app(&self, pod: &str) -> anyhow::Result<()> {
        let url = format!("http://{}:{APP_PORT}/healthz", self.ip(pod)?);
        self.poll_http(&url, Duration::from_secs(60), |c, _| c == 200)
            .await
    }

    /// Waits until the pod's sidecar sees its app healthy and knows `holder`.
    async fn wait_sidecar(&self, pod: &str, holder: &str) -> anyhow::Result<()> {
        let url = format!("http://{}:{STATUS_PORT}/status", self.ip(pod)?);
        self.poll_http(&url, Duration::from_secs(60), |c, body| {
            c == 200 && {
                let s = parse_status(&url, body);
                s.app_healthy && s.holder.as_deref() == Some(holder)
            }
        })
        .await
    }

    async fn set_health(&self, pod: &str, health: &str) -> anyhow::Result<()> {
        let url = format!(
            "http://{}:{APP_PORT}/control?health={health}",
            self.ip(pod)?
        );
        let r = http().post(url).send().await?;
        anyhow::ensure!(
            r.status().is_success(),
            "control {health} on {pod}: {}",
            r.status()
        );
        Ok(())
    }

    /// Waits for a steady group: two running pods, one labelled active, the
    /// Service's only endpoint; with baton the other is passive and its
    /// sidecar ready to take over, with the baseline its app answers.
    /// Returns (active, standby).
    pub async fn stable(&self, active: Option<&str>) -> anyhow::Result<(String, String)> {
        let svc = self.service();
        let st = self
            .rec
            .wait(Duration::from_secs(180), "a steady group", |s| {
                let pods = s.group_pods("web");
                let live: Vec<_> = pods
                    .iter()
                    .filter(|(_, p)| !p.terminating && p.ip.is_some())
                    .collect();
                let act = s.active("web");
                live.len() == 2
                    && pods.len() == 2
                    && act.len() == 1
                    && active.is_none_or(|a| act[0] == a)
                    && s.endpoint_pods(&svc) == act
                    && (self.system != System::Baton
                        || live
                            .iter()
                            .any(|(_, p)| p.role.as_deref() == Some("passive")))
            })
            .await?;
        let a = st.active("web").remove(0);
        let b = st
            .group_pods("web")
            .into_iter()
            .map(|(n, _)| n)
            .find(|n| *n != a)
            .context("a standby")?;
        match self.system {
            System::Baton => {
                self.wait_sidecar(&b, &a).await?;
                self.wait_sidecar(&a, &a).await?;
            }
            System::Baseline(_) => self.wait_app(&b).await?,
        }
        Ok((a, b))
    }

    /// The sidecar pids of the active pod and of the standby, in that order.
    pub fn holder_and_standby_pids(&self) -> Option<[u32; 2]> {
        let st = self.rec.state();
        let active = st.active("web");
        let [holder] = active.as_slice() else {
            return None;
        };
        let standby = st
            .group_pods("web")
            .into_iter()
            .map(|(n, _)| n)
            .find(|n| n != holder)?;
        Some([self.sidecar_pid(holder)?, self.sidecar_pid(&standby)?])
    }

    fn sidecar_pid(&self, pod: &str) -> Option<u32> {
        let f = self.ns.pod_dir(pod).join("baton-sidecar.pid");
        std::fs::read_to_string(f).ok()?.trim().parse().ok()
    }

    /// Samples of every sidecar of the group (empty for the baseline).
    pub fn sidecar_samples(&self) -> Vec<ProcSample> {
        if self.system != System::Baton {
            return Vec::new();
        }
        self.rec
            .state()
            .group_pods("web")
            .iter()
            .filter_map(|(n, _)| self.sidecar_pid(n).and_then(proc_sample))
            .collect()
    }

    /// When the old active decided: its sidecar's "app unhealthy" line, or
    /// the baseline's "swap from=<old>" line, at or after `t0`.
    fn decision_time(&self, old: &str, t0: f64) -> Option<f64> {
        let (file, needle) = match self.system {
            System::Baton => (
                self.ns.pod_dir(old).join("baton-sidecar.log"),
                "app unhealthy".to_string(),
            ),
            System::Baseline(_) => (self.controller_log.clone(), format!("swap from={old} ")),
        };
        let text = std::fs::read_to_string(file).ok()?;
        text.lines()
            .filter(|l| l.contains(&needle))
            .filter_map(|l| match self.system {
                System::Baton => parse_log_time(l),
                System::Baseline(_) => l.split_whitespace().next()?.parse().ok(),
            })
            .find(|t| *t >= t0 - 0.005)
    }

    fn finish_run(&self, scenario: &str, index: usize, t0: f64, total: f64, settled: f64) -> Run {
        let (two, none) = self.rec.two_and_none("web", t0, settled);
        Run {
            scenario: scenario.into(),
            system: self.system.label(),
            index,
            t0,
            total,
            two_active: two,
            none_active: none,
            history: self.rec.history("web", t0, settled),
            ..Run::default()
        }
    }

    /// The period of what detects a failure: the sidecar's probe period,
    /// or the baseline's poll interval.
    fn cadence(&self) -> Duration {
        match self.system {
            System::Baton => self.sidecar.probe_period,
            System::Baseline(i) => Duration::from_secs(i),
        }
    }

    /// Failures come at any moment, not just after a poll: each run waits
    /// a random part of the detector's period (uniform) before acting, so
    /// that a poll loop is measured at its average, not its worst or best
    /// phase (the previous run ends in step with the detector).
    async fn random_phase(&self, period: Duration) {
        tokio::time::sleep(period.mul_f64(fastrand::f64())).await;
    }

    /// The active app starts failing; ends when the Service lists only the standby.
    pub async fn failover(&self, index: usize) -> anyhow::Result<Run> {
        let (a, b) = self.stable(None).await?;
        self.random_phase(self.cadence()).await;
        let before = self.sidecar_samples();
        let t0 = now();
        self.set_health(&a, "fail").await?;
        let svc = self.service();
        let done = self
            .rec
            .wait(
                self.system.timeout(),
                "the standby as the only endpoint",
                |s| s.endpoint_pods(&svc) == [b.clone()],
            )
            .await?;
        let after = self.sidecar_samples();
        let total = done.t - t0;
        self.set_health(&a, "ok").await?;
        self.stable(Some(&b)).await?;
        let mut run = self.finish_run("failover", index, t0, total, now());
        run.detection = self.decision_time(&a, t0).map(|t| t - t0);
        if before.len() == after.len() && !before.is_empty() {
            run.cpu_percent = Some(
                before
                    .iter()
                    .zip(&after)
                    .map(|(x, y)| super::measure::cpu_percent(x, y, total))
                    .sum(),
            );
            run.rss_kib = after.iter().map(|s| s.rss_kib).max();
        }
        Ok(run)
    }

    /// The active pod is deleted while a client follows the Service's
    /// endpoint; ends when a ready endpoint other than the deleted pod appears.
    pub async fn planned(&self, index: usize) -> anyhow::Result<Run> {
        let (a, _b) = self.stable(None).await?;
        let old_uid = self
            .rec
            .state()
            .pods
            .get(&a)
            .map(|p| p.uid.clone())
            .unwrap_or_default();
        let stop = tokio_util::sync::CancellationToken::new();
        let client = tokio::spawn(client_loop(
            self.rec_state_fn(),
            self.service(),
            stop.clone(),
        ));
        // Some traffic before the deletion, so the client is warm.
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.random_phase(self.cadence()).await;
        let t0 = now();
        let pods: kube::Api<Pod> = self.ns.api();
        pods.delete(&a, &DeleteParams::default()).await?;
        let svc = self.service();
        let done = self
            .rec
            .wait(self.system.timeout(), "a new ready endpoint", |s| {
                let eps = s.endpoints(&svc);
                !eps.is_empty() && eps.iter().all(|e| e.uid != old_uid)
            })
            .await?;
        let total = done.t - t0;
        // The client keeps going a little after the switch, as clients do.
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.cancel();
        let log = client.await.unwrap_or_default();
        self.stable(None).await?;
        let mut run = self.finish_run("planned", index, t0, total, now());
        let window: Vec<_> = log.iter().filter(|(t, _)| *t >= t0).collect();
        run.requests = window.len() as u64;
        run.failed = window.iter().filter(|(_, ok)| !ok).count() as u64;
        Ok(run)
    }

    fn rec_state_fn(&self) -> impl Fn() -> std::sync::Arc<State> + Send + 'static {
        let rx = self.rec.rx_clone();
        move || rx.borrow().clone()
    }

    /// When `standby` became active and the Service's only endpoint, after
    /// a holder that stopped without releasing: within a few lease
    /// durations.
    async fn standby_took_over(&self, standby: &str) -> anyhow::Result<f64> {
        let svc = self.service();
        let done = self
            .rec
            .wait(
                self.sidecar.lease_duration * 3 + Duration::from_secs(30),
                "the standby active and the only endpoint",
                |s| s.endpoint_pods(&svc) == [standby] && s.active("web") == [standby],
            )
            .await?;
        Ok(done.t)
    }

    /// The holder's sidecar gets SIGKILL: no release, no relabel.
    pub async fn killed(&self, index: usize) -> anyhow::Result<Run> {
        let (a, b) = self.stable(None).await?;
        let pid = self.sidecar_pid(&a).context("the holder's sidecar pid")?;
        self.random_phase(self.sidecar.renew_period).await;
        let t0 = now();
        signal(pid, "KILL").await;
        let total = self.standby_took_over(&b).await? - t0;
        // The runner restarts the killed container (after its back-off).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while self.sidecar_pid(&a) == Some(pid) || self.sidecar_pid(&a).is_none() {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "the runner did not restart {a}'s sidecar"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.stable(Some(&b)).await?;
        Ok(self.finish_run("sigkill", index, t0, total, now()))
    }

    /// The holder's sidecar is frozen (SIGSTOP), as on a node that is lost:
    /// no release, no relabel and, unlike SIGKILL, no restart that would
    /// renew the Lease again when the lease outlasts the runner's restart
    /// delay. Ends when the standby is active and the only endpoint; the
    /// sidecar is thawed then, and the group must settle on the standby.
    pub async fn frozen(&self, index: usize) -> anyhow::Result<Run> {
        let (a, b) = self.stable(None).await?;
        let pid = self.sidecar_pid(&a).context("the holder's sidecar pid")?;
        self.random_phase(self.sidecar.renew_period).await;
        let t0 = now();
        signal(pid, "STOP").await;
        let done = self.standby_took_over(&b).await;
        signal(pid, "CONT").await;
        let total = done? - t0;
        self.stable(Some(&b)).await?;
        Ok(self.finish_run("frozen", index, t0, total, now()))
    }
}

/// Sends GET / every 10 ms to the Service's current endpoint (the first
/// ready one, as read from the EndpointSlice); no endpoint is a failure.
async fn client_loop(
    state: impl Fn() -> std::sync::Arc<State>,
    service: String,
    stop: tokio_util::sync::CancellationToken,
) -> Vec<(f64, bool)> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(500))
        .build()
        .expect("an HTTP client");
    let mut log = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.is_cancelled() {
        tick.tick().await;
        let t = now();
        let ok = match state().endpoints(&service).first() {
            None => false,
            Some(ep) => client
                .get(format!("http://{}:{APP_PORT}/", ep.ip))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success()),
        };
        log.push((t, ok));
    }
    log
}
