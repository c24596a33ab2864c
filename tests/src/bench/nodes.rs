//! Node events under the bench's clients: the holder's node partitioned
//! then healed, frozen whole then thawed (a dead node that comes back),
//! its kubelet alone stopped past the node lifecycle controller's grace
//! period then continued, and `kubectl drain` of the holder's node then of
//! the other under the example's PodDisruptionBudget. The group of two
//! pods is spread over two real nodes (`baton_e2e::spread`, as
//! tests/tests/nodes.rs deploys it); the clients (one opening a connection
//! per request, one keeping its connections) call the ClusterIP from the
//! control plane's network namespace, which no fault here touches.

use std::{collections::BTreeMap, fmt::Write as _, path::Path, sync::Arc, time::Duration};

use anyhow::Context as _;
use baton_e2e::{
    clients::{Client, Connections, both_steady_on},
    harness::{
        Cluster, LeaseHistory, ReadyEndpointsHistory, TestNamespace, endpoint_gaps, lease_acquired,
        nodes::{Fault, RealNode},
        pod_ip, pod_node, pod_ready, poll_status, wait_endpoints, wait_for_holder,
        wait_nodes_healthy, wait_roles, wait_until,
    },
    spread::{self, GROUP, SERVICE},
};
use k8s_openapi::api::{coordination::v1::Lease, core::v1::Pod};
use kube::ResourceExt;

use super::{
    clusterip::ServiceMode,
    scale::wait_namespace_gone,
    stats::{now, summary},
};

const T: Duration = Duration::from_secs(60);
/// kube-controller-manager's node-monitor-grace-period (50 s), with room
/// for its 5 s monitor period and a busy machine.
const NODE_GRACE: Duration = Duration::from_secs(120);
/// How long kubelet stays stopped: past the 50 s grace period, long enough
/// for the controller to mark the node and its pods not Ready.
const KUBELET_STOPPED: Duration = Duration::from_secs(70);
/// How long the clients go on after a lost node is back: kept connections
/// to the old holder's app outlive the fault (below).
const AFTER_BACK: Duration = Duration::from_secs(5);
/// The goal for a lost holder's node: the standby answers through the
/// ClusterIP within lease-duration + 1 s (the sidecar's defaults).
const TAKEOVER_GOAL: f64 = 7.0;

/// A node event the part measures (`--node-faults`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum NodeFault {
    /// The holder's node's link down, then up.
    Partition,
    /// Everything of the holder's node frozen, then thawed.
    Freeze,
    /// The holder's node's kubelet stopped for 70 s, then continued.
    Kubelet,
    /// `kubectl drain` of the holder's node, then of the other.
    Drain,
}

impl NodeFault {
    pub fn label(self) -> &'static str {
        match self {
            NodeFault::Partition => "partition, healed",
            NodeFault::Freeze => "node frozen (dead), thawed",
            NodeFault::Kubelet => "kubelet stopped 70 s",
            NodeFault::Drain => "drain of each node in turn",
        }
    }

    fn slug(self) -> &'static str {
        match self {
            NodeFault::Partition => "partition",
            NodeFault::Freeze => "freeze",
            NodeFault::Kubelet => "kubelet",
            NodeFault::Drain => "drain",
        }
    }
}

fn kind(mode: ServiceMode) -> spread::Kind {
    match mode {
        ServiceMode::Proxy => spread::Kind::Proxy,
        ServiceMode::Labels => spread::Kind::Labels,
        ServiceMode::HolderEndpoint => spread::Kind::HolderEndpoint,
    }
}

fn mode_slug(mode: ServiceMode) -> &'static str {
    match mode {
        ServiceMode::Proxy => "proxy",
        ServiceMode::Labels => "labels",
        ServiceMode::HolderEndpoint => "endpoint",
    }
}

fn mode_label(mode: ServiceMode) -> &'static str {
    match mode {
        ServiceMode::Proxy => "whole group via proxy",
        ServiceMode::Labels => "role label",
        ServiceMode::HolderEndpoint => "holder's endpoint",
    }
}

/// What one client saw in one run.
#[derive(Clone, Debug, Default)]
pub struct ClientRun {
    /// From the fault until the first answer by the standby of before the
    /// fault (to a request sent after it), s; `None`: it never answered.
    pub first_new: Option<f64>,
    pub requests: usize,
    pub failed: usize,
    /// Answers by the holder of before the fault to requests sent after the
    /// standby's first answer: a kept connection to the old holder's app
    /// that outlived the fault (the role-label and holder's-endpoint
    /// Services move new connections only).
    pub old_after: usize,
}

/// One run of one fault under one Service kind.
#[derive(Clone, Debug)]
pub struct NodeRun {
    pub fault: NodeFault,
    pub mode: ServiceMode,
    pub clients: Vec<(Connections, ClientRun)>,
    /// Seconds the Service the clients call listed no ready endpoint.
    pub without_ready: f64,
    /// Seconds the role-label or holder's-endpoint Service listed two
    /// ready endpoints (through the proxy: the role-label Service beside).
    pub two_ready: f64,
    /// The old holder's role file said passive, written before the new
    /// holder's Lease began; `None` without a new holder.
    pub passive_first: Option<bool>,
    pub transitions: i32,
    /// Times the Lease went to another pod.
    pub switches: usize,
    /// Drained nodes that hosted the holder when drained (drain only).
    pub holder_nodes: usize,
}

impl NodeRun {
    /// Whether the run met the fault's goal: the standby answers within
    /// [`TAKEOVER_GOAL`] and never two ready endpoints (a lost node); no
    /// time without a ready endpoint (kubelet stopped); no failed request
    /// and at most one switch per drained node that hosted the holder.
    pub fn goal_met(&self) -> bool {
        match self.fault {
            NodeFault::Partition | NodeFault::Freeze => {
                self.two_ready == 0.0
                    && self
                        .clients
                        .iter()
                        .all(|(_, c)| c.first_new.is_some_and(|t| t <= TAKEOVER_GOAL))
            }
            NodeFault::Kubelet => self.without_ready == 0.0,
            NodeFault::Drain => {
                self.switches <= self.holder_nodes
                    && self.clients.iter().all(|(_, c)| c.failed == 0)
            }
        }
    }
}

#[derive(Default)]
pub struct NodesResult {
    pub rate: u32,
    /// Why the part did not run.
    pub skipped: Option<String>,
    pub runs: Vec<NodeRun>,
    pub errors: Vec<String>,
}

/// Runs `runs` of each fault (`kubelet_runs` of the kubelet stop) under
/// each Service kind in `modes`, each run on a group of its own; each
/// run's requests go to `out`/nodes-FAULT-KIND-RUN.csv.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    cluster: &Cluster,
    faults: &[NodeFault],
    modes: &[ServiceMode],
    runs: usize,
    kubelet_runs: usize,
    rate: u32,
    out: &Path,
    say: fn(&str),
) -> NodesResult {
    let mut result = NodesResult {
        rate,
        ..Default::default()
    };
    if cluster.nodes.len() < 2 {
        let why = format!(
            "skipped: node events need two real nodes, this cluster has {} (BATON_REAL_NODES)",
            cluster.nodes.len()
        );
        say(&format!("nodes: {why}"));
        result.skipped = Some(why);
        return result;
    }
    for &fault in faults {
        let n = if fault == NodeFault::Kubelet {
            kubelet_runs
        } else {
            runs
        };
        for &mode in modes {
            for i in 0..n {
                let what = format!("{} ({}) {i}", fault.slug(), mode_label(mode));
                // A group of its own per run, on a Service of its own: the
                // client's namespace keeps for 120 s the conntrack entries
                // of connections that timed out against a lost pod, and a
                // later connection from a reused source port follows them
                // to that pod (measured; see docs/bench.md).
                let name = format!("bench-nodes-{}-{}-{i}", fault.slug(), mode_slug(mode));
                let g = match Spread::deploy(cluster, &name, mode).await {
                    Ok(g) => Arc::new(g),
                    Err(e) => {
                        result.errors.push(format!("{what}: deploy: {e:#}"));
                        continue;
                    }
                };
                say(&format!(
                    "nodes: {} ({}) {}/{n}",
                    fault.label(),
                    mode_label(mode),
                    i + 1
                ));
                let csv = out.join(format!(
                    "nodes-{}-{}-{i}.csv",
                    fault.slug(),
                    mode_slug(mode)
                ));
                // The harness's waits panic as a test would; a run that
                // panics is an error of that run (its fault undone as the
                // handle drops).
                let run = tokio::spawn({
                    let g = g.clone();
                    async move { g.run(fault, rate, &csv).await }
                })
                .await;
                match run {
                    Ok(Ok(r)) => {
                        say(&format!("  {}", r.line()));
                        result.runs.push(r);
                    }
                    Ok(Err(e)) => {
                        say(&format!("  failed: {e:#}"));
                        result.errors.push(format!("{what}: {e:#}"));
                    }
                    Err(panic) => {
                        say(&format!("  failed: {panic}"));
                        result.errors.push(format!("{what}: {panic}"));
                    }
                }
                g.remove().await;
            }
        }
    }
    result
}

/// The spread group under measure, and its watchers.
struct Spread {
    cluster: Cluster,
    ns: TestNamespace,
    mode: ServiceMode,
    url: String,
    /// The Service the clients call.
    called: ReadyEndpointsHistory,
    /// [`SERVICE`], when the clients call another (through the proxy).
    active: Option<ReadyEndpointsHistory>,
    leases: LeaseHistory,
}

impl Spread {
    async fn deploy(cluster: &Cluster, name: &str, mode: ServiceMode) -> anyhow::Result<Spread> {
        let ns = Arc::new(cluster.namespace(name).await);
        let leases = LeaseHistory::start(ns.api(), GROUP).await;
        let active = ReadyEndpointsHistory::start(&ns, SERVICE).await;
        // The harness's waits panic: a task of its own.
        let placed = tokio::spawn({
            let ns = ns.clone();
            async move { spread::deploy(&ns, kind(mode)).await }
        })
        .await;
        let ns = Arc::into_inner(ns).context("the namespace, once deployed")?;
        let placed = match placed {
            Ok(p) => p,
            Err(panic) => {
                ns.delete().await;
                wait_namespace_gone(cluster, name, T * 2).await;
                anyhow::bail!("{panic}");
            }
        };
        let (called, active) = if placed.client_service == SERVICE {
            (active, None)
        } else {
            let called = ReadyEndpointsHistory::start(&ns, &placed.client_service).await;
            (called, Some(active))
        };
        let url = format!("http://{}/", ns.cluster_ip(&placed.client_service).await);
        Ok(Spread {
            cluster: cluster.clone(),
            ns,
            mode,
            url,
            called,
            active,
            leases,
        })
    }

    /// Deletes the group's namespace and waits until it is gone (its pods
    /// off the nodes), if no run holds the group any more.
    async fn remove(self: Arc<Self>) {
        let Some(s) = Arc::into_inner(self) else {
            return;
        };
        let name = s.ns.name.clone();
        s.ns.delete().await;
        wait_namespace_gone(&s.cluster, &name, T * 2).await;
    }

    fn labels() -> String {
        format!("app={GROUP}")
    }

    /// One fault, from a steady group: the holder alone active and serving
    /// both clients, the nodes healthy.
    /// Each client's requests of the run go to `csv`.
    async fn run(&self, fault: NodeFault, rate: u32, csv: &Path) -> anyhow::Result<NodeRun> {
        wait_nodes_healthy(&self.cluster, NODE_GRACE).await;
        let holder = wait_for_holder(&self.ns, GROUP, None).await;
        let pods = wait_until::<Pod, _>(self.ns.api(), &Self::labels(), T, "2 Ready pods", |p| {
            p.len() == 2 && p.iter().all(pod_ready)
        })
        .await;
        let node_of: BTreeMap<String, String> =
            pods.iter().map(|p| (p.name_any(), pod_node(p))).collect();
        let standby = node_of
            .keys()
            .find(|p| **p != holder)
            .context("a second pod")?
            .clone();
        anyhow::ensure!(
            node_of[&holder] != node_of[&standby],
            "the pods are not on two nodes: {node_of:?}"
        );
        wait_roles(&self.ns, &Self::labels(), &holder, 1).await;
        wait_endpoints(&self.ns, SERVICE, &[&holder], T).await;
        let clients = both_steady_on(&self.url, rate, &holder).await?;
        let transitions = self.transitions().await?;
        let held_before = self.leases.holders().len();
        let t0 = now();
        let holder_node = self.cluster.node(&node_of[&holder]).clone();
        let (passive_first, holder_nodes) = match fault {
            NodeFault::Partition | NodeFault::Freeze => {
                let f = if fault == NodeFault::Partition {
                    Fault::Partition
                } else {
                    Fault::Freeze
                };
                let p = self
                    .lost_then_back(&holder_node, f, &holder, &clients)
                    .await?;
                (Some(p), 0)
            }
            NodeFault::Kubelet => {
                self.kubelet_stopped(&holder_node, &clients).await?;
                (None, 0)
            }
            NodeFault::Drain => {
                let other = node_of[&standby].clone();
                let n = self.drain_both(&holder_node.name, &other, &clients).await?;
                (None, n)
            }
        };
        let t1 = now();
        write_samples(csv, &clients, t0, t1)?;
        let (without_ready, _) = endpoint_gaps(&self.called.timed(), t0, t1);
        let (_, two_ready) = endpoint_gaps(
            &self.active.as_ref().unwrap_or(&self.called).timed(),
            t0,
            t1,
        );
        anyhow::ensure!(
            !self.called.went_blind() && !self.active.as_ref().is_some_and(|a| a.went_blind()),
            "an endpoints watch stopped seeing"
        );
        let mut held: Vec<String> = self.leases.holders()[held_before.saturating_sub(1)..]
            .iter()
            .flatten()
            .cloned()
            .collect();
        held.dedup();
        Ok(NodeRun {
            fault,
            mode: self.mode,
            clients: clients
                .iter()
                .map(|(k, c)| (*k, client_run(c, &holder, &standby, t0, t1)))
                .collect(),
            without_ready,
            two_ready,
            passive_first,
            transitions: self.transitions().await? - transitions,
            switches: held.len().saturating_sub(1),
            holder_nodes,
        })
    }

    async fn transitions(&self) -> anyhow::Result<i32> {
        let lease: Lease = self.ns.api().get(GROUP).await.context("the Lease")?;
        Ok(lease
            .spec
            .and_then(|s| s.lease_transitions)
            .unwrap_or_default())
    }

    /// The holder's node lost to `fault`: waits until the standby holds and
    /// serves both clients, reads the old holder's role file (through the
    /// host, the node still lost), undoes the fault and waits until the old
    /// sidecar sees the new holder. Whether the old app was told passive
    /// before the new Lease began.
    async fn lost_then_back(
        &self,
        node: &RealNode,
        fault: Fault,
        old: &str,
        clients: &[(Connections, Client)],
    ) -> anyhow::Result<bool> {
        let role_file = self.ns.follow_role_file(old).await;
        let lost = node.inject(fault)?;
        let new = wait_for_holder(&self.ns, GROUP, Some(old)).await;
        wait_roles(&self.ns, &Self::labels(), &new, 1).await;
        wait_endpoints(&self.ns, SERVICE, &[&new], T).await;
        steady(clients, &new).await?;
        let began = lease_acquired(&self.ns, GROUP).await;
        let role = self.ns.role_file(old).await;
        let passive_first =
            role["role"] == "passive" && role_file.turned("passive").is_some_and(|t| t < began);
        lost.undo()?;
        let ip = pod_ip(&self.ns, old).await;
        poll_status(&ip, T, |st| st.holder.as_deref() == Some(new.as_str()))
            .await
            .with_context(|| format!("{old} did not see {new} hold after the fault"))?;
        wait_roles(&self.ns, &Self::labels(), &new, 1).await;
        steady(clients, &new).await?;
        tokio::time::sleep(AFTER_BACK).await;
        Ok(passive_first)
    }

    /// kubelet stopped on the holder's node for [`KUBELET_STOPPED`], then
    /// continued: waits until the node and the old holder's pod are Ready
    /// again and the holder (whoever it is by then: the old one hands over
    /// once its pod is marked not Ready, design rule 13) serves both
    /// clients.
    async fn kubelet_stopped(
        &self,
        node: &RealNode,
        clients: &[(Connections, Client)],
    ) -> anyhow::Result<()> {
        let old = wait_for_holder(&self.ns, GROUP, None).await;
        let stopped = node.inject(Fault::StopKubelet)?;
        tokio::time::sleep(KUBELET_STOPPED).await;
        stopped.undo()?;
        let holder = wait_for_holder(&self.ns, GROUP, None).await;
        spread::wait_back(&self.cluster, &self.ns, &node.name, &old, &holder).await;
        steady(clients, &holder).await
    }

    /// `kubectl drain` of `first` then `second`, each uncordoned once the
    /// group serves again from the pod left (the evicted one waits Pending
    /// for its node); the drained nodes that hosted the holder when
    /// drained.
    async fn drain_both(
        &self,
        first: &str,
        second: &str,
        clients: &[(Connections, Client)],
    ) -> anyhow::Result<usize> {
        let mut holder_nodes = 0;
        for node in [first, second] {
            if spread::holder_on(&self.ns, node).await {
                holder_nodes += 1;
            }
            let now_holder = spread::drain(&self.cluster, &self.ns, node).await;
            steady(clients, &now_holder).await?;
            spread::uncordon(&self.cluster, &self.ns, node, &now_holder).await;
        }
        Ok(holder_nodes)
    }
}

/// Waits until the client that opens a connection per request is
/// answered by `pod` alone. The keep-alive client is not waited for: its
/// kept connections to a lost holder's app may outlive the fault and be
/// answered by that app again once the node is back (counted, as
/// [`ClientRun::old_after`]).
async fn steady(clients: &[(Connections, Client)], pod: &str) -> anyhow::Result<()> {
    for (_, c) in clients.iter().filter(|(k, _)| *k == Connections::New) {
        c.wait_steady_on(pod, 20).await?;
    }
    Ok(())
}

/// The clients' requests sent within `[t0, t1]`: client, sent and ended
/// (s after `t0`), the answering pod or the error.
fn write_samples(
    path: &Path,
    clients: &[(Connections, Client)],
    t0: f64,
    t1: f64,
) -> anyhow::Result<()> {
    let mut csv = String::from("client,sent,done,answer\n");
    for (k, c) in clients {
        for s in c.samples().iter().filter(|s| s.sent >= t0 && s.sent <= t1) {
            let answer = match &s.answer {
                Ok(pod) => pod.clone(),
                Err(e) => format!("error: {}", e.replace(',', ";")),
            };
            let _ = writeln!(
                csv,
                "{},{:.3},{:.3},{answer}",
                k.label(),
                s.sent - t0,
                s.done - t0
            );
        }
    }
    std::fs::write(path, csv).with_context(|| format!("writing {}", path.display()))
}

/// A client's requests sent within `[t0, t1]`, its first answer by
/// `standby` after `t0`, and the answers by `old` after that one.
fn client_run(c: &Client, old: &str, standby: &str, t0: f64, t1: f64) -> ClientRun {
    let sent: Vec<_> = c
        .samples()
        .into_iter()
        .filter(|s| s.sent >= t0 && s.sent <= t1)
        .collect();
    let first = c.first_answer_by(standby, t0);
    ClientRun {
        first_new: first.map(|t| t - t0),
        requests: sent.len(),
        failed: sent.iter().filter(|s| s.answer.is_err()).count(),
        old_after: first.map_or(0, |first| {
            sent.iter()
                .filter(|s| s.sent > first && s.answer.as_deref() == Ok(old))
                .count()
        }),
    }
}

impl NodeRun {
    /// The run in one line, for the bench's progress.
    fn line(&self) -> String {
        let clients: Vec<String> = self
            .clients
            .iter()
            .map(|(k, c)| {
                format!(
                    "{}: first answer by the standby {}, {} of {} failed, {} by the old holder after",
                    k.label(),
                    c.first_new.map_or("none".into(), |t| format!("{t:.2} s")),
                    c.failed,
                    c.requests,
                    c.old_after
                )
            })
            .collect();
        format!(
            "{}; {:.1} s without a ready endpoint, {:.1} s with two; {} transitions, {} switches; goal {}",
            clients.join("; "),
            self.without_ready,
            self.two_ready,
            self.transitions,
            self.switches,
            if self.goal_met() { "met" } else { "missed" }
        )
    }
}

/// "median / worst" with `digits` decimals, or "–" without data.
fn median_worst(values: &[f64], digits: usize) -> String {
    let s = summary(values);
    if s.n == 0 {
        return "–".into();
    }
    format!("{:.d$} / {:.d$}", s.median, s.max, d = digits)
}

impl NodesResult {
    /// The report's section: one row per fault, Service kind and client.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        if let Some(why) = &self.skipped {
            let _ = writeln!(md, "{why}");
            return md;
        }
        let _ = writeln!(
            md,
            "A group of two pods (release images, the sidecar's default timings: lease 6 s) spread over two real nodes with a PodDisruptionBudget of minAvailable 1; two clients at {} requests/s each call the ClusterIP from the control plane's network namespace, one opening a connection per request, one keeping its connections. Faults on the holder's node: its link down then up (partition), everything on it frozen then thawed (a dead node), its kubelet alone stopped for {} s (node-monitor-grace-period is 50 s) then continued, and `kubectl drain` of the holder's node then of the other, each uncordoned once the group serves again. A run lasts from the fault until the group serves again after it is undone (a lost node: {} s more, for the kept connections below). \"First answer\" is by the pod that stood by before the fault, s after it; \"answers by the old holder\" are to requests sent after that first answer: a kept connection to the old holder's app outlives a partition or a freeze, and once the node is back that (now passive) app answers on it again, as the role-label and holder's-endpoint Services move new connections only; \"no ready endpoint\" is the Service the clients call (EndpointSlices as a watch delivers them); \"two ready endpoints\" is the role-label or holder's-endpoint Service (through the proxy: the role-label Service beside it); \"passive first\" counts runs where the old holder's role file first said passive (its versions read every 20 ms: the sidecar rewrites it when the holder it shows changes) before the new holder's Lease began (`acquireTime`). Goals: a lost node's standby answers within {TAKEOVER_GOAL} s and never two ready endpoints; kubelet stopped, no time without a ready endpoint; a drain, no failed request and at most one switch per drained node that hosted the holder. Median / worst over the runs.\n",
            self.rate,
            KUBELET_STOPPED.as_secs(),
            AFTER_BACK.as_secs()
        );
        let _ = writeln!(
            md,
            "| fault | Service | client | runs | first answer by the standby, s | failed requests | requests | answers by the old holder after the standby's first | s without a ready endpoint | s with two ready endpoints | passive first | Lease transitions | switches (nodes that hosted the holder) | goal met |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
        );
        let mut keys: Vec<(NodeFault, ServiceMode)> = Vec::new();
        for r in &self.runs {
            if !keys.contains(&(r.fault, r.mode)) {
                keys.push((r.fault, r.mode));
            }
        }
        for (fault, mode) in keys {
            let runs: Vec<&NodeRun> = self
                .runs
                .iter()
                .filter(|r| r.fault == fault && r.mode == mode)
                .collect();
            let col = |f: &dyn Fn(&NodeRun) -> f64, d| {
                median_worst(&runs.iter().map(|r| f(r)).collect::<Vec<_>>(), d)
            };
            let passive: Vec<bool> = runs.iter().filter_map(|r| r.passive_first).collect();
            let passive = if passive.is_empty() {
                "–".to_owned()
            } else {
                format!(
                    "{} of {}",
                    passive.iter().filter(|p| **p).count(),
                    passive.len()
                )
            };
            let switches = format!(
                "{}{}",
                col(&|r| r.switches as f64, 0),
                if fault == NodeFault::Drain {
                    format!(" ({})", col(&|r| r.holder_nodes as f64, 0))
                } else {
                    String::new()
                }
            );
            let met = runs.iter().filter(|r| r.goal_met()).count();
            for c in Connections::BOTH {
                let seen: Vec<&ClientRun> = runs
                    .iter()
                    .flat_map(|r| r.clients.iter().filter(|(k, _)| *k == c))
                    .map(|(_, f)| f)
                    .collect();
                let firsts: Vec<f64> = seen.iter().filter_map(|x| x.first_new).collect();
                let first = match seen.len() - firsts.len() {
                    0 => median_worst(&firsts, 2),
                    n if n == seen.len() => "none".to_owned(),
                    n => format!("{}; none in {n}", median_worst(&firsts, 2)),
                };
                let count = |f: fn(&ClientRun) -> usize| {
                    median_worst(&seen.iter().map(|x| f(x) as f64).collect::<Vec<_>>(), 0)
                };
                let (failed, requests, old) = (
                    count(|x| x.failed),
                    count(|x| x.requests),
                    count(|x| x.old_after),
                );
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {first} | {failed} | {requests} | {old} | {} | {} | {passive} | {} | {switches} | {met} of {} |",
                    fault.label(),
                    mode_label(mode),
                    c.label(),
                    runs.len(),
                    col(&|r| r.without_ready, 1),
                    col(&|r| r.two_ready, 1),
                    col(&|r| r.transitions as f64, 0),
                    runs.len(),
                );
            }
        }
        for e in &self.errors {
            let _ = writeln!(md, "\n- error: {e}");
        }
        md
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(fault: NodeFault, first: Option<f64>, failed: usize) -> NodeRun {
        NodeRun {
            fault,
            mode: ServiceMode::Labels,
            clients: vec![(
                Connections::New,
                ClientRun {
                    first_new: first,
                    requests: 1000,
                    failed,
                    old_after: 0,
                },
            )],
            without_ready: 0.0,
            two_ready: 0.0,
            passive_first: None,
            transitions: 1,
            switches: 1,
            holder_nodes: 1,
        }
    }

    #[test]
    fn a_lost_node_meets_its_goal_when_the_standby_answers_in_time_and_alone() {
        assert!(run(NodeFault::Partition, Some(6.5), 30).goal_met());
        assert!(!run(NodeFault::Partition, Some(7.5), 30).goal_met());
        assert!(!run(NodeFault::Freeze, None, 30).goal_met());
        let mut two = run(NodeFault::Freeze, Some(6.0), 0);
        two.two_ready = 0.2;
        assert!(!two.goal_met());
    }

    #[test]
    fn a_stopped_kubelet_meets_its_goal_only_without_a_gap() {
        let mut r = run(NodeFault::Kubelet, None, 0);
        assert!(r.goal_met());
        r.without_ready = 12.0;
        assert!(!r.goal_met());
    }

    #[test]
    fn a_drain_meets_its_goal_without_failures_and_one_switch_per_holder_node() {
        assert!(run(NodeFault::Drain, Some(1.0), 0).goal_met());
        assert!(!run(NodeFault::Drain, Some(1.0), 1).goal_met());
        let mut r = run(NodeFault::Drain, Some(1.0), 0);
        r.switches = 2;
        assert!(!r.goal_met());
    }

    #[test]
    fn median_and_worst_or_a_dash() {
        assert_eq!(median_worst(&[3.0, 1.0, 2.0], 1), "2.0 / 3.0");
        assert_eq!(median_worst(&[], 1), "–");
    }
}
