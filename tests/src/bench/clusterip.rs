//! What a client of the Service sees, through its ClusterIP on the real
//! node: kubelet, containerd and kube-proxy (nftables mode, its default
//! settings) run a group of two demo-app pods with the sidecar, from the
//! images `make image` built. Two clients call the ClusterIP at a fixed
//! rate: one opens a new connection per request, one keeps its connections
//! alive (as most HTTP clients do). Each run measures, from the moment the
//! driver acts: when the switch happened (the Service's EndpointSlice lists
//! only the new pod, or, for a Service of the whole group through the
//! sidecars' proxy, the Lease names the new holder), when each client is
//! first answered by the new pod, the requests each client lost meanwhile,
//! and the answers the old pod still gave after the switch.

use std::{fmt::Write as _, sync::Arc, time::Duration};

use anyhow::Context as _;
use baton_e2e::{
    clients::{Client, Connections, REQUEST_TIMEOUT, Sample, both_steady_on},
    harness::{
        Cluster, TestNamespace, pod_ip, pod_ready, poll_status, set_app_health, sidecar_restarts,
        signal, wait_for_holder,
    },
    workload,
};
use baton_sidecar::contract::Status;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, Patch, PatchParams};

use super::{
    measure::{ProcSample, cpu_percent, proc_sample},
    recorder::{Change, Recorder, State},
    stats::{now, summary},
};

const GROUP: &str = "web";
/// The Service that selects the role label or holds the holder's endpoint
/// (and, for the proxy mode, the proxy cost's path straight to the app).
const ACTIVE_SERVICE: &str = "web-active";
/// The Service of the whole group that targets the sidecars' proxy.
const PROXIED_SERVICE: &str = "web-proxied";
/// The goal for a Service through the proxy: no answer by another pod
/// than the holder to a request sent later than this after the switch.
const BOUND: f64 = 0.1;
/// How long each client goes on after the EndpointSlice switched, to see
/// whether it reaches the new pod at all.
const AFTER_SWITCH: Duration = Duration::from_secs(5);
/// A sidecar kill after which the standby took over (kubelet held the
/// restart back longer than the Lease lasts).
const KILL_THEN_TAKEOVER: &str = "sidecar-kill, standby took over";

/// What one client saw in one run.
#[derive(Clone, Debug, Default)]
pub struct ClientFigures {
    /// From the act until the client had the new pod's first answer (to a
    /// request sent after the act), s; `None`: not within [`AFTER_SWITCH`]
    /// after the EndpointSlice switched.
    pub first_new: Option<f64>,
    pub requests: usize,
    pub failed: usize,
    /// Answers by the old pod to requests sent later than [`BOUND`] after
    /// the switch.
    pub old_after_switch: usize,
    /// The old pod's last answer, s after the switch (negative: before);
    /// `None` without a switch or without any answer by it since the act.
    pub last_old: Option<f64>,
    /// The kinds of failure, counted.
    pub errors: Vec<(String, usize)>,
}

#[derive(Clone, Debug)]
pub struct SwitchRun {
    pub scenario: &'static str,
    /// Whether another pod took over (always, but for a sidecar kill).
    pub switched: bool,
    /// From the act until the switch, s: the EndpointSlice listed the new
    /// pod alone (for `sidecar-kill`: listed the holder again; `None` if it
    /// never stopped listing it), or through the proxy the Lease named the
    /// new holder (`None` without a new holder).
    pub slice: Option<f64>,
    /// The most ready endpoints the Service had at once during the run
    /// (through the proxy: the most pods labelled active at once).
    pub most_endpoints: usize,
    pub clients: Vec<(Connections, ClientFigures)>,
}

/// One `kubectl rollout restart` of the group, clients calling throughout.
#[derive(Clone, Debug)]
pub struct RolloutRun {
    /// Times the Service's Ready endpoint moved to another pod.
    pub switches: usize,
    /// From the restart until the group was steady again, s.
    pub duration: f64,
    pub clients: Vec<(Connections, ClientFigures)>,
}

/// How the Service follows the active pod.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ServiceMode {
    /// A Service of the whole group targets the sidecars' proxy
    /// (`baton-proxy`), which passes every connection to the holder's app
    /// and cuts them at a switch (design rule 11): README's install.
    #[default]
    Proxy,
    /// The Service selects the app's pods labelled `role: active`.
    Labels,
    /// A Service without a selector whose one endpoint the holder writes
    /// (`baton.dev/service`, design rule 9).
    HolderEndpoint,
}

impl ServiceMode {
    pub fn title(self) -> &'static str {
        match self {
            ServiceMode::Proxy => {
                "a Service of the whole group targets the sidecars' proxy (baton-proxy)"
            }
            ServiceMode::Labels => "the Service selects the role label",
            ServiceMode::HolderEndpoint => {
                "the holder writes the Service's endpoint (baton.dev/service)"
            }
        }
    }

    /// The Service the clients call.
    fn service(self) -> &'static str {
        match self {
            ServiceMode::Proxy => PROXIED_SERVICE,
            ServiceMode::Labels | ServiceMode::HolderEndpoint => ACTIVE_SERVICE,
        }
    }

    /// The Service serves `holder` as it should: through the proxy both
    /// pods are its endpoints and `holder` is the one labelled active;
    /// otherwise `holder` is its only endpoint.
    fn serves(self, s: &State, holder: &str) -> bool {
        let endpoints = s.endpoint_pods(self.service());
        match self {
            ServiceMode::Proxy => {
                s.active(GROUP) == [holder]
                    && endpoints.len() == 2
                    && endpoints.contains(&holder.to_owned())
            }
            ServiceMode::Labels | ServiceMode::HolderEndpoint => endpoints == [holder],
        }
    }
}

/// One sidecar at rest on the real node: the release binary in the image,
/// as users run it, measured from /proc over a window without switches.
#[derive(Clone, Debug)]
pub struct IdleSidecar {
    pub role: &'static str,
    pub rss_kib: u64,
    /// RssAnon: what each more pod costs (the rest is the binary's pages).
    pub anon_kib: u64,
    pub cpu_percent: f64,
}

#[derive(Default)]
pub struct ClusterIpResult {
    pub mode: ServiceMode,
    pub rate: u32,
    /// The group's two sidecars at rest, and the window, s.
    pub idle: Vec<IdleSidecar>,
    pub idle_secs: f64,
    pub runs: Vec<SwitchRun>,
    pub rollouts: Vec<RolloutRun>,
    /// What the proxy costs (the proxy mode only).
    pub proxy_cost: Option<super::proxy_cost::ProxyCost>,
    pub errors: Vec<String>,
}

impl ClusterIpResult {
    /// The report's section: one row per scenario.
    pub fn markdown(&self) -> String {
        let mut md = self.idle_markdown();
        md += &format!(
            "A group of two pods (demo app and sidecar, release builds in the images `make image` built) on the **real node**: kubelet, containerd, runc and kube-proxy (versions above) in nftables mode with its default settings. Two clients in the cluster's network namespace call the Service's ClusterIP, {} requests/s each: one opens a new connection per request, one keeps its connections alive. Times run from the driver's act: the active app's health check set to fail (failover), the active pod deleted (planned), a switchover to the standby asked on the Lease as `kubectl baton switchover --to` asks it (switchover), the holder's sidecar SIGKILLed and restarted by kubelet (sidecar-kill: no switch when kubelet restarts it at once; kills soon after one another meet kubelet's restart back-off, and the standby takes over), the active app's process SIGKILLed (app-kill, as an OOM kill or a crash: the probe's kept connection closes and the next connect is refused; the switch column is then detection plus the writes, the next one adds kube-proxy). {} A run's requests are those sent from the act until the client was answered by the new pod (at most {} s after the switch). \"Answers by the old pod\" counts answers to requests sent later than {BOUND} s after the switch; \"last answer by the old pod\" is the latest of them all, s after the switch (negative: before it). Median / p99 (nearest rank) over runs.\n\n",
            self.rate,
            match self.mode {
                ServiceMode::Proxy =>
                    "The switch is the moment the Lease names the new holder (its `acquireTime`, stamped by the machine's one clock): the Service's EndpointSlice lists both pods throughout, and each sidecar's proxy passes connections to the holder's app and cuts those it carries when its pod stops being the holder.",
                ServiceMode::Labels | ServiceMode::HolderEndpoint =>
                    "The switch is the moment the Service's EndpointSlice lists the new pod alone.",
            },
            AFTER_SWITCH.as_secs()
        );
        let switch_column = match self.mode {
            ServiceMode::Proxy => "the Lease names the new holder, s",
            ServiceMode::Labels | ServiceMode::HolderEndpoint => {
                "EndpointSlice lists the new pod alone, s"
            }
        };
        let most_column = match self.mode {
            ServiceMode::Proxy => "most pods labelled active at once",
            ServiceMode::Labels | ServiceMode::HolderEndpoint => "most ready endpoints at once",
        };
        let _ = writeln!(
            md,
            "| scenario | client | runs (with a switch) | {switch_column} | first answer by the new pod, s | requests per run | failed requests per run | answers by the old pod after the switch, per run | last answer by the old pod, s after the switch | {most_column} |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
        );
        for scenario in [
            "failover",
            "planned",
            "switchover",
            "app-kill",
            "sidecar-kill",
            KILL_THEN_TAKEOVER,
        ] {
            let runs: Vec<&SwitchRun> = self
                .runs
                .iter()
                .filter(|r| r.scenario == scenario)
                .collect();
            if runs.is_empty() {
                continue;
            }
            let slices: Vec<f64> = runs.iter().filter_map(|r| r.slice).collect();
            let slice_cell = match runs.len() - slices.len() {
                0 => summary(&slices).cell(3),
                n => format!("{}; unchanged in {n}", summary(&slices).cell(3)),
            };
            let switches = runs.iter().filter(|r| r.switched).count();
            let most = runs
                .iter()
                .map(|r| r.most_endpoints)
                .max()
                .unwrap_or_default();
            for c in Connections::BOTH {
                let seen: Vec<&ClientFigures> = runs
                    .iter()
                    .flat_map(|r| r.clients.iter().filter(|(k, _)| *k == c))
                    .map(|(_, f)| f)
                    .collect();
                let cell = |f: &dyn Fn(&ClientFigures) -> f64, digits| {
                    summary(&seen.iter().map(|x| f(x)).collect::<Vec<_>>()).cell(digits)
                };
                let firsts: Vec<f64> = seen.iter().filter_map(|x| x.first_new).collect();
                let first = match seen.len() - firsts.len() {
                    0 => summary(&firsts).cell(3),
                    n => format!(
                        "{}; {n} runs not within {} s of the switch",
                        summary(&firsts).cell(3),
                        AFTER_SWITCH.as_secs()
                    ),
                };
                let lasts: Vec<f64> = seen.iter().filter_map(|x| x.last_old).collect();
                let last = match seen.len() - lasts.len() {
                    0 => summary(&lasts).cell(3),
                    n if n == seen.len() => "none".to_owned(),
                    n => format!("{}; none in {n}", summary(&lasts).cell(3)),
                };
                let _ = writeln!(
                    md,
                    "| {scenario} | {} | {} ({switches}) | {slice_cell} | {first} | {} | {} | {} | {last} | {most} |",
                    c.label(),
                    runs.len(),
                    cell(&|x| x.requests as f64, 0),
                    cell(&|x| x.failed as f64, 0),
                    cell(&|x| x.old_after_switch as f64, 0),
                );
            }
        }
        if !self.rollouts.is_empty() {
            let switches: Vec<f64> = self.rollouts.iter().map(|r| r.switches as f64).collect();
            let durations: Vec<f64> = self.rollouts.iter().map(|r| r.duration).collect();
            let _ = writeln!(
                md,
                "\n`kubectl rollout restart statefulset` of the group ({} runs; each replaces both pods, highest ordinal first): the active role switched {} times per rollout (median / max), the rollout took {} s. Requests from the restart until the group was steady again and each client answered by the final active pod:\n\n| client | requests per rollout | failed requests per rollout |\n| --- | --- | --- |",
                self.rollouts.len(),
                summary(&switches).cell(0),
                summary(&durations).cell(1)
            );
            for c in Connections::BOTH {
                let seen: Vec<&ClientFigures> = self
                    .rollouts
                    .iter()
                    .flat_map(|r| r.clients.iter().filter(|(k, _)| *k == c))
                    .map(|(_, f)| f)
                    .collect();
                let cell = |f: &dyn Fn(&ClientFigures) -> f64| {
                    summary(&seen.iter().map(|x| f(x)).collect::<Vec<_>>()).cell(0)
                };
                let _ = writeln!(
                    md,
                    "| {} | {} | {} |",
                    c.label(),
                    cell(&|x| x.requests as f64),
                    cell(&|x| x.failed as f64)
                );
            }
        }
        let mut kinds: Vec<(String, usize)> = Vec::new();
        let rollout_clients = self.rollouts.iter().flat_map(|r| r.clients.iter());
        for (_, f) in self
            .runs
            .iter()
            .flat_map(|r| r.clients.iter())
            .chain(rollout_clients)
        {
            for (k, n) in &f.errors {
                match kinds.iter_mut().find(|(x, _)| x == k) {
                    Some((_, m)) => *m += n,
                    None => kinds.push((k.clone(), *n)),
                }
            }
        }
        if !kinds.is_empty() {
            let _ = writeln!(
                md,
                "\nFailed requests by kind, all runs: {}.",
                kinds
                    .iter()
                    .map(|(k, n)| format!("{k} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if let Some(cost) = &self.proxy_cost {
            md.push('\n');
            md.push_str(&cost.markdown());
        }
        for e in &self.errors {
            let _ = writeln!(md, "\n- error: {e}");
        }
        md
    }
}

/// Deploys the group on the real node, runs `failovers` unplanned failovers
/// (the active app's health check fails), `planned` planned handovers (the
/// active pod deleted), `switchovers` switchovers asked on the Lease (design
/// rule 10), `app_kills` SIGKILLs of the active app's process and `kills`
/// SIGKILLs of the holder's sidecar, then deletes the group.
impl ClusterIpResult {
    /// The idle sidecars and the sizes of what ships, before the switches.
    fn idle_markdown(&self) -> String {
        let size = |path: &str| {
            std::fs::metadata(baton_e2e::harness::repo_root().join(path))
                .map_or("–".to_owned(), |m| {
                    format!("{:.1}", m.len() as f64 / 1048576.0)
                })
        };
        let mut md = format!(
            "What ships: the sidecar binary {} MiB (image {} MiB), the webhook binary {} MiB (image {} MiB), the demo app {} MiB (`target/image`, release builds).\n\n",
            size("target/image/bin/baton-sidecar"),
            size("target/image/baton-sidecar.tar"),
            size("target/image/bin/baton-webhook"),
            size("target/image/baton-webhook.tar"),
            size("target/image/bin/baton-demo-app"),
        );
        if !self.idle.is_empty() {
            let _ = writeln!(
                md,
                "The group's sidecars at rest on the real node, over {:.0} s without a switch (the image's release binary; /proc of the container's process):\n\n| sidecar | RSS, MiB | of which private (RssAnon), MiB | CPU, % of a core |\n| --- | --- | --- | --- |",
                self.idle_secs
            );
            for i in &self.idle {
                let _ = writeln!(
                    md,
                    "| {} | {:.1} | {:.1} | {:.2} |",
                    i.role,
                    i.rss_kib as f64 / 1024.0,
                    i.anon_kib as f64 / 1024.0,
                    i.cpu_percent
                );
            }
            md.push('\n');
        }
        md
    }
}

#[allow(clippy::too_many_arguments)]
pub async fn run(
    cluster: &Cluster,
    mode: ServiceMode,
    rate: u32,
    failovers: usize,
    planned: usize,
    switchovers: usize,
    app_kills: usize,
    kills: usize,
    rollouts: usize,
    idle: Duration,
    cost: Duration,
    say: impl Fn(&str),
) -> ClusterIpResult {
    let mut result = ClusterIpResult {
        mode,
        rate,
        ..Default::default()
    };
    let ns = cluster
        .namespace(match mode {
            ServiceMode::Proxy => "bench-clusterip-proxy",
            ServiceMode::Labels => "bench-clusterip",
            ServiceMode::HolderEndpoint => "bench-clusterip-endpoint",
        })
        .await;
    let group = match RealNodeGroup::deploy(&ns, mode).await {
        Ok(g) => g,
        Err(e) => {
            result.errors.push(format!("deploy: {e:#}"));
            ns.delete().await;
            return result;
        }
    };
    // The group's pods are kubelet's: wait for them before the first run,
    // so that image and start-up time count in no run.
    if let Err(e) = group.stable().await {
        result.errors.push(format!("deploy: {e:#}"));
        drop(group);
        ns.delete().await;
        return result;
    }
    if !idle.is_zero() {
        say(&format!(
            "clusterip: both sidecars at rest for {} s",
            idle.as_secs()
        ));
        match group.idle(idle).await {
            Ok(sidecars) => {
                result.idle = sidecars;
                result.idle_secs = idle.as_secs_f64();
            }
            Err(e) => result.errors.push(format!("idle: {e:#}")),
        }
    }
    let steps: [(&'static str, usize); 5] = [
        ("failover", failovers),
        ("planned", planned),
        ("switchover", switchovers),
        ("app-kill", app_kills),
        ("sidecar-kill", kills),
    ];
    for (scenario, n) in steps {
        for i in 0..n {
            say(&format!("clusterip: {scenario} {}/{n}", i + 1));
            // The harness's helpers panic as a test would; a run that
            // panics is an error of that run.
            let g = group.clone();
            let r = tokio::spawn(async move { g.run(scenario, rate).await }).await;
            match r {
                Ok(Ok(run)) => {
                    say(&format!(
                        "  slice {}; first answer by the new pod {}",
                        run.slice
                            .map_or("unchanged".into(), |t| format!("{t:.3} s")),
                        run.clients
                            .iter()
                            .map(|(c, f)| format!(
                                "{}: {} ({} failed)",
                                c.label(),
                                f.first_new.map_or("none".into(), |t| format!("{t:.3} s")),
                                f.failed
                            ))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                    result.runs.push(run);
                }
                Ok(Err(e)) => result.errors.push(format!("{scenario} {i}: {e:#}")),
                Err(panic) => result.errors.push(format!("{scenario} {i}: {panic}")),
            }
        }
    }
    for i in 0..rollouts {
        say(&format!("clusterip: rollout restart {}/{rollouts}", i + 1));
        let g = group.clone();
        match tokio::spawn(async move { g.rollout(rate).await }).await {
            Ok(Ok(run)) => {
                say(&format!(
                    "  {} switches in {:.1} s; failed: {}",
                    run.switches,
                    run.duration,
                    run.clients
                        .iter()
                        .map(|(c, f)| format!("{} {}", c.label(), f.failed))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                result.rollouts.push(run);
            }
            Ok(Err(e)) => result.errors.push(format!("rollout {i}: {e:#}")),
            Err(panic) => result.errors.push(format!("rollout {i}: {panic}")),
        }
    }
    if mode == ServiceMode::Proxy && !cost.is_zero() {
        match group.proxy_cost(cost, &say).await {
            Ok(c) => result.proxy_cost = Some(c),
            Err(e) => result.errors.push(format!("proxy cost: {e:#}")),
        }
    }
    drop(group);
    ns.delete().await;
    result
}

#[derive(Clone)]
struct RealNodeGroup {
    ns: Arc<TestNamespace>,
    rec: Arc<Recorder>,
    mode: ServiceMode,
    url: String,
}

impl RealNodeGroup {
    async fn deploy(ns: &TestNamespace, mode: ServiceMode) -> anyhow::Result<RealNodeGroup> {
        let rec = Recorder::start(ns.api(), ns.api()).await;
        let (env, service): (&[(&str, &str)], _) = match mode {
            ServiceMode::Proxy => (
                &[],
                workload::proxied_service(GROUP, workload::ProxiedService::WholeGroup),
            ),
            ServiceMode::Labels => (&[], workload::active_service(GROUP)),
            ServiceMode::HolderEndpoint => (
                &[("BATON_SERVICE", ACTIVE_SERVICE)],
                workload::holder_endpoint_service(GROUP),
            ),
        };
        ns.apply(&workload::statefulset_placed(
            GROUP,
            2,
            true,
            env,
            workload::ON_REAL_NODE,
        ));
        ns.apply(&service);
        if mode == ServiceMode::Proxy {
            // The proxy cost's ClusterIP path that skips the proxy.
            ns.apply(&workload::active_service(GROUP));
        }
        let ip = cluster_ip(ns, mode.service()).await?;
        let ns = Arc::new(TestNamespace {
            name: ns.name.clone(),
            cluster: ns.cluster.clone(),
        });
        Ok(RealNodeGroup {
            ns,
            rec: Arc::new(rec),
            mode,
            url: format!("http://{ip}/"),
        })
    }

    /// Two pods running, one active and the Service's only endpoint, the
    /// other passive; both sidecars see their app healthy and the holder.
    /// Returns (active, standby).
    async fn stable(&self) -> anyhow::Result<(String, String)> {
        let st = self
            .rec
            .wait(Duration::from_secs(180), "a steady group", |s| {
                steady(s, self.mode).is_some()
            })
            .await?;
        let (a, b) = steady(&st, self.mode).context("steady")?;
        for pod in [&a, &b] {
            let ip = pod_ip(&self.ns, pod).await;
            let knows = |s: &Status| s.app_healthy && s.holder.as_deref() == Some(a.as_str());
            let last = poll_status(&ip, Duration::from_secs(60), knows).await;
            anyhow::ensure!(
                last.as_ref().is_some_and(knows),
                "{pod}: not healthy with holder {a} within 60 s; last: {last:?}"
            );
        }
        Ok((a, b))
    }

    async fn run(&self, scenario: &'static str, rate: u32) -> anyhow::Result<SwitchRun> {
        let (old, new) = self.stable().await?;
        let clients = both_steady_on(&self.url, rate, &old).await?;
        let pods: kube::Api<Pod> = self.ns.api();
        let mut t0 = now();
        // How often kubelet had restarted the killed app, for app-kill.
        let mut app_restarts = None;
        // The pod the Service must list when the run is over.
        let target = match scenario {
            "failover" => {
                set_app_health(&self.ns, &old, "fail").await;
                new.clone()
            }
            "planned" => {
                pods.delete(&old, &DeleteParams::default()).await?;
                new.clone()
            }
            "app-kill" => {
                let pid = self.ns.pid(&old, "app", Duration::from_secs(10)).await;
                app_restarts = Some(app_restart_count(&pods.get(&old).await?));
                t0 = now();
                signal(pid, "KILL").await;
                new.clone()
            }
            "switchover" => {
                // What `kubectl baton switchover --to` writes, and no more.
                let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> = self.ns.api();
                let ask = serde_json::json!({"metadata": {"annotations": {
                    baton_sidecar::controls::SWITCHOVER_TO: new,
                }}});
                leases
                    .patch(GROUP, &PatchParams::default(), &Patch::Merge(&ask))
                    .await?;
                new.clone()
            }
            _ => {
                let pid = self
                    .ns
                    .pid(&old, "baton-sidecar", Duration::from_secs(10))
                    .await;
                let restarts = sidecar_restarts(&pods.get(&old).await?);
                t0 = now();
                signal(pid, "KILL").await;
                // Over when kubelet has restarted it and the pod is Ready.
                let what = format!("{old}'s sidecar restarted and the pod Ready");
                baton_e2e::harness::wait_for_object::<Pod, _>(
                    pods.clone(),
                    &old,
                    Duration::from_secs(60),
                    &what,
                    |p| sidecar_restarts(p) > restarts && pod_ready(p),
                )
                .await;
                // Restarted at once it rejoins as holder; a second crash soon
                // after waits out kubelet's restart back-off (10 s, then
                // doubling), longer than the Lease: then the standby took over.
                wait_for_holder(&self.ns, GROUP, None).await
            }
        };
        let st = self
            .rec
            .wait(
                Duration::from_secs(60),
                &format!("the Service serving {target}"),
                |s| self.mode.serves(s, &target),
            )
            .await?;
        let slice = match self.mode {
            ServiceMode::Proxy if target != old => Some(self.acquired(&target).await? - t0),
            ServiceMode::Proxy => None,
            // From the history, not `st.t`: after a sidecar kill this wait
            // starts late, and the state's time is its latest event's.
            ServiceMode::Labels | ServiceMode::HolderEndpoint => {
                switch_time(&self.rec.history(GROUP, t0, st.t), &target).map(|t| t - t0)
            }
        };
        let switched = t0 + slice.unwrap_or_default();
        // Each client has until AFTER_SWITCH past the switch to reach the
        // target; then every request sent before the end has its answer.
        let from = if target == old { switched } else { t0 };
        let until = wait_answered(&clients, &target, from, switched).await;
        let figures = clients
            .iter()
            .map(|(kind, c)| {
                (
                    *kind,
                    figures(&c.samples(), t0, until, switched, &old, &target),
                )
            })
            .collect();
        drop(clients);
        // Through the proxy the clients' Service lists both pods all along:
        // what counts is how many pods were labelled active at once.
        let most_endpoints = self
            .rec
            .history(GROUP, t0, now())
            .iter()
            .map(|c| match self.mode {
                ServiceMode::Proxy => c.view.active_count(),
                ServiceMode::Labels | ServiceMode::HolderEndpoint => c.view.endpoints.len(),
            })
            .max()
            .unwrap_or_default();
        // Back to two healthy pods for the next run.
        if scenario == "failover" {
            set_app_health(&self.ns, &old, "ok").await;
        }
        if let Some(before) = app_restarts {
            // kubelet restarts the app, later each time (its restart
            // back-off: 10 s, doubling): wait for it, not in the run.
            let what = format!("{old}'s app restarted by kubelet and ready");
            baton_e2e::harness::wait_for_object::<Pod, _>(
                pods.clone(),
                &old,
                Duration::from_secs(360),
                &what,
                |p| app_restart_count(p) > before && app_ready(p),
            )
            .await;
        }
        let took_over = target != old;
        Ok(SwitchRun {
            // The two outcomes of a kill are two different stories.
            scenario: if scenario == "sidecar-kill" && took_over {
                KILL_THEN_TAKEOVER
            } else {
                scenario
            },
            switched: took_over,
            slice,
            most_endpoints,
            clients: figures,
        })
    }
}

impl RealNodeGroup {
    /// When the Lease says its holder `holder` took it, s since the epoch.
    async fn acquired(&self, holder: &str) -> anyhow::Result<f64> {
        let lease: k8s_openapi::api::coordination::v1::Lease = self.ns.api().get(GROUP).await?;
        let spec = lease.spec.context("the Lease has no spec")?;
        anyhow::ensure!(
            spec.holder_identity.as_deref() == Some(holder),
            "the Lease names {:?}, not {holder}",
            spec.holder_identity
        );
        let t = spec
            .acquire_time
            .context("a held Lease without acquireTime")?
            .0;
        Ok(t.as_millisecond() as f64 / 1000.0)
    }

    /// What the proxy costs on every path to the holder's app.
    async fn proxy_cost(
        &self,
        window: Duration,
        say: &impl Fn(&str),
    ) -> anyhow::Result<super::proxy_cost::ProxyCost> {
        use super::proxy_cost::{Path, measure};
        let (holder, standby) = self.stable().await?;
        let (holder_ip, standby_ip) = (
            pod_ip(&self.ns, &holder).await,
            pod_ip(&self.ns, &standby).await,
        );
        let pid = |pod: String| {
            let ns = self.ns.clone();
            async move { ns.pid(&pod, "baton-sidecar", Duration::from_secs(10)).await }
        };
        let sidecars = (pid(holder.clone()).await, pid(standby.clone()).await);
        let (app, proxy) = (workload::APP_PORT, workload::PROXY_PORT);
        let paths = [
            Path {
                name: "straight to the holder's app (pod IP, app port)",
                url: format!("http://{holder_ip}:{app}/"),
            },
            Path {
                name: "the holder's proxy (pod IP, baton-proxy)",
                url: format!("http://{holder_ip}:{proxy}/"),
            },
            Path {
                name: "a standby's proxy, forwarding to the holder's",
                url: format!("http://{standby_ip}:{proxy}/"),
            },
            Path {
                name: "ClusterIP of the role-label Service to the app port (no proxy)",
                url: format!("http://{}/", cluster_ip(&self.ns, ACTIVE_SERVICE).await?),
            },
            Path {
                name: "ClusterIP of the whole group's Service to baton-proxy",
                url: self.url.clone(),
            },
        ];
        let rate = 2000;
        let cost = measure(&paths, &holder, sidecars, rate, window, say).await?;
        let (after, _) = self.stable().await?;
        anyhow::ensure!(after == holder, "the holder changed during the measure");
        Ok(cost)
    }

    /// Both sidecars' memory and CPU over `window` with nothing happening
    /// but the holder's renewals.
    async fn idle(&self, window: Duration) -> anyhow::Result<Vec<IdleSidecar>> {
        let (active, standby) = self.stable().await?;
        let mut pids = Vec::new();
        for (role, pod) in [("holder", &active), ("standby", &standby)] {
            let pid = self
                .ns
                .pid(pod, "baton-sidecar", Duration::from_secs(10))
                .await;
            let first = proc_sample(pid).context("the sidecar's /proc")?;
            pids.push((role, pid, first));
        }
        let started = now();
        // A measure, not a wait for a state: the window is the point.
        tokio::time::sleep(window).await;
        let secs = now() - started;
        let (after, _) = self.stable().await?;
        anyhow::ensure!(after == active, "the holder changed during the window");
        pids.into_iter()
            .map(|(role, pid, first): (&'static str, u32, ProcSample)| {
                let last = proc_sample(pid).context("the sidecar's /proc")?;
                Ok(IdleSidecar {
                    role,
                    rss_kib: last.rss_kib,
                    anon_kib: last.anon_kib,
                    cpu_percent: cpu_percent(&first, &last, secs),
                })
            })
            .collect()
    }

    /// `kubectl rollout restart` of the group while both clients call it:
    /// over when kubectl says the rollout is done, the group is steady and
    /// each client has been answered by the final active pod.
    async fn rollout(&self, rate: u32) -> anyhow::Result<RolloutRun> {
        let (old, _) = self.stable().await?;
        let clients = both_steady_on(&self.url, rate, &old).await?;
        let t0 = now();
        let ns = self.ns.clone();
        tokio::task::spawn_blocking(move || {
            ns.kubectl_ok(&["rollout", "restart", "statefulset", GROUP], None);
            ns.kubectl_ok(
                &["rollout", "status", "statefulset", GROUP, "--timeout=300s"],
                None,
            );
        })
        .await?;
        let (active, _) = self.stable().await?;
        let done = now();
        let until = wait_answered(&clients, &active, done, done).await;
        let figures = clients
            .iter()
            .map(|(kind, c)| (*kind, figures(&c.samples(), t0, until, done, &old, &active)))
            .collect();
        drop(clients);
        Ok(RolloutRun {
            switches: switches(&self.rec.history(GROUP, t0, until)),
            duration: done - t0,
            clients: figures,
        })
    }
}

/// Waits until each client has been answered by `pod` for a request sent
/// at or after `from`, or until [`AFTER_SWITCH`] past `switched`; then lets
/// the requests in flight end. Returns the end of the window to count.
async fn wait_answered(
    clients: &[(Connections, Client)],
    pod: &str,
    from: f64,
    switched: f64,
) -> f64 {
    let end = switched + AFTER_SWITCH.as_secs_f64();
    while now() < end
        && clients
            .iter()
            .any(|(_, c)| c.first_answer_by(pod, from).is_none())
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let until = now() + 0.2;
    tokio::time::sleep(REQUEST_TIMEOUT + Duration::from_millis(300)).await;
    until
}

/// How many times the Service's Ready endpoint moved to another pod (a
/// moment with no endpoint in between does not count as a move).
fn switches(history: &[Change]) -> usize {
    let serving: Vec<&Vec<String>> = history
        .iter()
        .map(|c| &c.view.endpoints)
        .filter(|e| !e.is_empty())
        .collect();
    serving.windows(2).filter(|w| w[0] != w[1]).count()
}

/// When the Service came to list `target` alone for good within `history`
/// (which starts with the view in force at its start); `None` if it never
/// listed anything else.
fn switch_time(history: &[Change], target: &str) -> Option<f64> {
    let alone = |c: &Change| c.view.endpoints == [target];
    let last_other = history.iter().rposition(|c| !alone(c))?;
    history.get(last_other + 1).map(|c| c.t)
}

/// (active, standby) when the group is steady.
fn app_status(pod: &Pod) -> Option<&k8s_openapi::api::core::v1::ContainerStatus> {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == "app"))
}

/// How often kubelet has restarted the pod's app container.
fn app_restart_count(pod: &Pod) -> i32 {
    app_status(pod).map_or(0, |c| c.restart_count)
}

fn app_ready(pod: &Pod) -> bool {
    app_status(pod).is_some_and(|c| c.ready)
}

async fn cluster_ip(ns: &TestNamespace, service: &str) -> anyhow::Result<String> {
    let svc: k8s_openapi::api::core::v1::Service = ns.api().get(service).await?;
    svc.spec
        .and_then(|s| s.cluster_ip)
        .with_context(|| format!("the Service {service} has no ClusterIP"))
}

/// (holder, standby) once both pods run with an IP, one labelled active
/// and the other passive, and the Service of `mode` serves the holder.
pub(super) fn steady(s: &State, mode: ServiceMode) -> Option<(String, String)> {
    let pods = s.group_pods(GROUP);
    let live: Vec<_> = pods
        .iter()
        .filter(|(_, p)| !p.terminating && p.ip.is_some())
        .collect();
    let act = s.active(GROUP);
    if pods.len() != 2 || live.len() != 2 || act.len() != 1 || !mode.serves(s, &act[0]) {
        return None;
    }
    let standby = live
        .iter()
        .find(|(n, p)| *n != act[0] && p.role.as_deref() == Some("passive"))?;
    Some((act[0].clone(), standby.0.clone()))
}

/// One client's figures for requests sent in [t0, until): `switched` is
/// the switch to `new` (see [`SwitchRun::slice`]).
fn figures(
    samples: &[Sample],
    t0: f64,
    until: f64,
    switched: f64,
    old: &str,
    new: &str,
) -> ClientFigures {
    let window: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.sent >= t0 && s.sent < until)
        .collect();
    let mut errors: Vec<(String, usize)> = Vec::new();
    for e in window.iter().filter_map(|s| s.answer.as_ref().err()) {
        match errors.iter_mut().find(|(k, _)| k == e) {
            Some((_, n)) => *n += 1,
            None => errors.push((e.clone(), 1)),
        }
    }
    // For a sidecar kill the "new" pod is the old one: only count answers
    // after the switch by some other pod.
    let first_new = window
        .iter()
        .filter(|s| s.answer.as_deref() == Ok(new) && (new != old || s.sent >= switched))
        .map(|s| s.done - t0)
        .min_by(f64::total_cmp);
    let by_old: Vec<&&Sample> = if new == old {
        Vec::new()
    } else {
        window
            .iter()
            .filter(|s| s.answer.as_deref() == Ok(old))
            .collect()
    };
    ClientFigures {
        first_new,
        requests: window.len(),
        failed: window.iter().filter(|s| s.answer.is_err()).count(),
        old_after_switch: by_old.iter().filter(|s| s.sent > switched + BOUND).count(),
        last_old: by_old
            .iter()
            .map(|s| s.done - switched)
            .max_by(f64::total_cmp),
        errors,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recorder::GroupView;

    fn s(sent: f64, answer: Result<&str, &str>) -> Sample {
        Sample {
            sent,
            done: sent + 0.01,
            answer: answer.map(str::to_string).map_err(str::to_string),
        }
    }

    #[test]
    fn figures_count_failures_and_old_answers_within_the_window() {
        let samples = [
            s(9.0, Ok("a")),  // before the act
            s(10.0, Ok("a")), // old pod, before the switch
            s(10.2, Err("connect error")),
            s(10.3, Err("connect error")),
            s(10.55, Ok("a")), // old pod within the bound after the switch
            s(10.7, Ok("a")),  // old pod after the bound (kept alive)
            s(11.0, Ok("b")),  // first answer by the new pod
            s(11.1, Err("timeout")),
            s(20.0, Err("timeout")), // after the window
        ];
        let f = figures(&samples, 10.0, 15.0, 10.5, "a", "b");
        assert_eq!(f.requests, 7);
        assert_eq!(f.failed, 3);
        assert_eq!(f.old_after_switch, 1);
        // Answered at 10.71, 0.21 s after the switch.
        assert_eq!(f.last_old.map(|t| (t * 100.0).round()), Some(21.0));
        assert_eq!(f.first_new.map(|t| (t * 100.0).round()), Some(101.0));
        assert_eq!(
            f.errors,
            [("connect error".to_string(), 2), ("timeout".to_string(), 1)]
        );
    }

    /// The group as the recorder saw it at `t`: the Service's endpoints.
    fn at(t: f64, endpoints: &[&str]) -> Change {
        Change {
            t,
            group: GROUP.into(),
            view: GroupView {
                endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
                ..Default::default()
            },
        }
    }

    #[test]
    fn the_switch_is_when_the_target_is_listed_alone_for_good() {
        let h = [
            at(1.0, &["a"]),
            at(1.5, &[]),
            at(2.0, &["b"]),
            at(2.2, &["b"]),
        ];
        assert_eq!(switch_time(&h, "b"), Some(2.0));
        // Left and came back (a restarted sidecar): back is the time.
        assert_eq!(switch_time(&h[..2], "a"), None);
        let back = [at(1.0, &["a"]), at(1.5, &[]), at(3.0, &["a"])];
        assert_eq!(switch_time(&back, "a"), Some(3.0));
        // Never left.
        assert_eq!(switch_time(&[at(1.0, &["a"])], "a"), None);
    }

    #[test]
    fn a_rollout_counts_each_move_of_the_endpoint_not_the_gaps() {
        // web-1 active: replaced first (a move to web-0), then web-0 (a
        // move back to the new web-1), with a gap in between.
        let h = [
            at(0.0, &["web-1"]),
            at(1.0, &["web-0"]),
            at(2.0, &["web-0"]),
            at(3.0, &[]),
            at(3.5, &["web-1"]),
        ];
        assert_eq!(switches(&h), 2);
        assert_eq!(switches(&h[..1]), 0);
        let back = [at(0.0, &["web-0"]), at(1.0, &[]), at(2.0, &["web-0"])];
        assert_eq!(switches(&back), 0, "a gap alone is no move");
    }

    #[test]
    fn without_a_switch_the_first_new_answer_is_after_the_slice_is_back() {
        let samples = [
            s(10.0, Ok("a")),
            s(10.4, Err("connect error")),
            s(10.8, Ok("a")),
        ];
        let f = figures(&samples, 10.0, 12.0, 10.6, "a", "a");
        assert_eq!(f.first_new.map(|t| (t * 100.0).round()), Some(81.0));
        assert_eq!(f.old_after_switch, 0);
        assert_eq!(f.last_old, None, "no other pod, no old one");
        assert_eq!(f.failed, 1);
    }
}
