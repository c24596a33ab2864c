//! What a client of the Service sees, through its ClusterIP on the real
//! node: kubelet, containerd and kube-proxy (nftables mode, its default
//! settings) run a group of two demo-app pods with the sidecar, from the
//! images `make image` built. Two clients call the ClusterIP at a fixed
//! rate: one opens a new connection per request, one keeps its connections
//! alive (as most HTTP clients do). Each run measures, from the moment the
//! driver acts: when the Service's EndpointSlice lists only the new pod,
//! when each client is first answered by the new pod, the requests each
//! client lost meanwhile, and the answers the old pod still gave after the
//! Service stopped listing it.

use std::{
    fmt::Write as _,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use baton_e2e::{
    harness::{Cluster, TestNamespace, http, pod_ip, set_app_health, signal, wait_for_holder},
    workload,
};
use k8s_openapi::api::core::v1::Pod;
use kube::api::DeleteParams;
use tokio::time::MissedTickBehavior;

use super::{
    recorder::{Change, Recorder, State},
    stats::{now, summary},
};

const GROUP: &str = "web";
const SERVICE: &str = "web-active";
/// How long each client goes on after the EndpointSlice switched, to see
/// whether it reaches the new pod at all.
const AFTER_SWITCH: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// A sidecar kill after which the standby took over (kubelet held the
/// restart back longer than the Lease lasts).
const KILL_THEN_TAKEOVER: &str = "sidecar-kill, standby took over";

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Connections {
    /// A new TCP connection per request.
    New,
    /// Connections kept alive and reused.
    KeepAlive,
}

impl Connections {
    pub const BOTH: [Connections; 2] = [Connections::New, Connections::KeepAlive];
    pub fn label(self) -> &'static str {
        match self {
            Connections::New => "new connection per request",
            Connections::KeepAlive => "keep-alive",
        }
    }
}

/// One request: when it was sent and when it ended (s since the epoch),
/// and the pod that answered or the error.
#[derive(Clone, Debug)]
struct Sample {
    sent: f64,
    done: f64,
    answer: Result<String, String>,
}

/// A client calling `url` `rate` times a second, each request in a task of
/// its own so that a slow answer does not hold the next one back.
struct Client {
    samples: Arc<Mutex<Vec<Sample>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Client {
    fn start(connections: Connections, url: String, rate: u32) -> anyhow::Result<Client> {
        let mut builder = reqwest::Client::builder().timeout(REQUEST_TIMEOUT);
        if connections == Connections::New {
            builder = builder.pool_max_idle_per_host(0);
        }
        let http = builder.build()?;
        let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
        let s = samples.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
            tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                let (http, url, s) = (http.clone(), url.clone(), s.clone());
                tokio::spawn(async move {
                    let sent = now();
                    let answer = match http.get(&url).send().await {
                        Ok(r) if r.status().is_success() => match r.text().await {
                            Ok(body) => body
                                .trim()
                                .strip_prefix("hello from ")
                                .map(str::to_string)
                                .ok_or(format!("unexpected answer {body:?}")),
                            Err(e) => Err(error_kind(&e)),
                        },
                        Ok(r) => Err(format!("HTTP {}", r.status().as_u16())),
                        Err(e) => Err(error_kind(&e)),
                    };
                    let done = now();
                    s.lock()
                        .expect("not poisoned")
                        .push(Sample { sent, done, answer });
                });
            }
        });
        Ok(Client { samples, task })
    }

    fn samples(&self) -> Vec<Sample> {
        self.samples.lock().expect("not poisoned").clone()
    }

    /// Waits until the last `n` answers all came from `pod`: the client is
    /// steady on the active pod before a run acts.
    async fn wait_steady_on(&self, pod: &str, n: usize) -> anyhow::Result<()> {
        let deadline = now() + 60.0;
        loop {
            let mut s = self.samples();
            s.sort_by(|a, b| a.sent.total_cmp(&b.sent));
            let last: Vec<_> = s.iter().rev().take(n).collect();
            if last.len() == n && last.iter().all(|x| x.answer.as_deref() == Ok(pod)) {
                return Ok(());
            }
            anyhow::ensure!(
                now() < deadline,
                "the client is not answered by {pod} alone; last: {:?}",
                last.first().map(|x| &x.answer)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sent at or after `t0` and answered by `pod`: the first answer's time.
    fn first_answer_by(&self, pod: &str, t0: f64) -> Option<f64> {
        self.samples()
            .iter()
            .filter(|s| s.sent >= t0 && s.answer.as_deref() == Ok(pod))
            .map(|s| s.done)
            .min_by(f64::total_cmp)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn error_kind(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connect() {
        "connect error".into()
    } else {
        // The chain names the cause (reset by peer, closed before answering).
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(s) = src {
            msg = format!("{msg}: {s}");
            src = s.source();
        }
        msg
    }
}

/// What one client saw in one run.
#[derive(Clone, Debug, Default)]
pub struct ClientFigures {
    /// From the act until the client had the new pod's first answer (to a
    /// request sent after the act), s; `None`: not within [`AFTER_SWITCH`]
    /// after the EndpointSlice switched.
    pub first_new: Option<f64>,
    pub requests: usize,
    pub failed: usize,
    /// Answers by the old pod to requests sent after the EndpointSlice no
    /// longer listed it.
    pub old_after_switch: usize,
    /// The kinds of failure, counted.
    pub errors: Vec<(String, usize)>,
}

#[derive(Clone, Debug)]
pub struct SwitchRun {
    pub scenario: &'static str,
    /// Whether another pod took over (always, but for a sidecar kill).
    pub switched: bool,
    /// From the act until the EndpointSlice listed the new pod alone, s
    /// (for `sidecar-kill`: until it listed the holder again; `None` if it
    /// never stopped listing it).
    pub slice: Option<f64>,
    /// The most ready endpoints the Service had at once during the run.
    pub most_endpoints: usize,
    pub clients: Vec<(Connections, ClientFigures)>,
}

#[derive(Default)]
pub struct ClusterIpResult {
    pub rate: u32,
    pub runs: Vec<SwitchRun>,
    pub errors: Vec<String>,
}

impl ClusterIpResult {
    /// The report's section: one row per scenario.
    pub fn markdown(&self) -> String {
        let mut md = format!(
            "A group of two pods (demo app and sidecar, release builds in the images `make image` built) on the **real node**: kubelet, containerd, runc and kube-proxy (versions above) in nftables mode with its default settings. Two clients in the cluster's network namespace call the Service's ClusterIP, {} requests/s each: one opens a new connection per request, one keeps its connections alive. Times run from the driver's act: the active app's health check set to fail (failover), the active pod deleted (planned), the holder's sidecar SIGKILLed and restarted by kubelet (sidecar-kill: no switch when kubelet restarts it at once; kills soon after one another meet kubelet's restart back-off, and the standby takes over). A run's requests are those sent from the act until the client was answered by the new pod (at most {} s after the EndpointSlice switched). Median / p99 (nearest rank) over runs.\n\n",
            self.rate,
            AFTER_SWITCH.as_secs()
        );
        md.push_str("| scenario | client | runs (with a switch) | EndpointSlice lists the new pod alone, s | first answer by the new pod, s | requests per run | failed requests per run | answers by the old pod after the switch, per run | most ready endpoints at once |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
        for scenario in ["failover", "planned", "sidecar-kill", KILL_THEN_TAKEOVER] {
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
                let _ = writeln!(
                    md,
                    "| {scenario} | {} | {} ({switches}) | {slice_cell} | {first} | {} | {} | {} | {most} |",
                    c.label(),
                    runs.len(),
                    cell(&|x| x.requests as f64, 0),
                    cell(&|x| x.failed as f64, 0),
                    cell(&|x| x.old_after_switch as f64, 0),
                );
            }
        }
        let mut kinds: Vec<(String, usize)> = Vec::new();
        for (_, f) in self.runs.iter().flat_map(|r| r.clients.iter()) {
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
        for e in &self.errors {
            let _ = writeln!(md, "\n- error: {e}");
        }
        md
    }
}

/// Deploys the group on the real node, runs `failovers` unplanned failovers
/// (the active app's health check fails), `planned` planned handovers (the
/// active pod deleted) and `kills` SIGKILLs of the holder's sidecar, then
/// deletes the group.
pub async fn run(
    cluster: &Cluster,
    rate: u32,
    failovers: usize,
    planned: usize,
    kills: usize,
    say: impl Fn(&str),
) -> ClusterIpResult {
    let mut result = ClusterIpResult {
        rate,
        ..Default::default()
    };
    let ns = cluster.namespace("bench-clusterip").await;
    let group = match Group::deploy(&ns).await {
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
    let steps: [(&'static str, usize); 3] = [
        ("failover", failovers),
        ("planned", planned),
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
    drop(group);
    ns.delete().await;
    result
}

#[derive(Clone)]
struct Group {
    ns: Arc<TestNamespace>,
    rec: Arc<Recorder>,
    url: String,
}

impl Group {
    async fn deploy(ns: &TestNamespace) -> anyhow::Result<Group> {
        let rec = Recorder::start(ns.api(), ns.api()).await;
        ns.apply(&workload::statefulset_placed(
            GROUP,
            2,
            true,
            &[],
            workload::ON_REAL_NODE,
        ));
        ns.apply(&workload::active_service(GROUP));
        let svc: k8s_openapi::api::core::v1::Service = ns.api().get(SERVICE).await?;
        let ip = svc
            .spec
            .and_then(|s| s.cluster_ip)
            .context("the Service has no ClusterIP")?;
        let ns = Arc::new(TestNamespace {
            name: ns.name.clone(),
            cluster: ns.cluster.clone(),
        });
        Ok(Group {
            ns,
            rec: Arc::new(rec),
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
                steady(s).is_some()
            })
            .await?;
        let (a, b) = steady(&st).context("steady")?;
        for pod in [&a, &b] {
            let ip = pod_ip(&self.ns, pod).await;
            poll_status(&format!("http://{ip}:9095/status"), &a).await?;
        }
        Ok((a, b))
    }

    async fn run(&self, scenario: &'static str, rate: u32) -> anyhow::Result<SwitchRun> {
        let (old, new) = self.stable().await?;
        let clients = Connections::BOTH
            .iter()
            .map(|&c| Client::start(c, self.url.clone(), rate).map(|cl| (c, cl)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        for (_, c) in &clients {
            c.wait_steady_on(&old, 20).await?;
        }
        let pods: kube::Api<Pod> = self.ns.api();
        let mut t0 = now();
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
                &format!("the Service listing {target} alone"),
                |s| s.endpoint_pods(SERVICE) == [target.clone()],
            )
            .await?;
        // From the history, not `st.t`: after a sidecar kill this wait
        // starts late, and the state's time is its latest event's.
        let slice = switch_time(&self.rec.history(GROUP, t0, st.t), &target).map(|t| t - t0);
        let switched = t0 + slice.unwrap_or_default();
        // Each client has until AFTER_SWITCH past the switch to reach the
        // target; then every request sent before the end has its answer.
        let from = if target == old { switched } else { t0 };
        let end = switched + AFTER_SWITCH.as_secs_f64();
        while now() < end
            && clients
                .iter()
                .any(|(_, c)| c.first_answer_by(&target, from).is_none())
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let until = now() + 0.2;
        tokio::time::sleep(REQUEST_TIMEOUT + Duration::from_millis(300)).await;
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
        let most_endpoints = self
            .rec
            .history(GROUP, t0, now())
            .iter()
            .map(|c| c.view.endpoints.len())
            .max()
            .unwrap_or_default();
        // Back to two healthy pods for the next run.
        if scenario == "failover" {
            set_app_health(&self.ns, &old, "ok").await;
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

/// When the Service came to list `target` alone for good within `history`
/// (which starts with the view in force at its start); `None` if it never
/// listed anything else.
fn switch_time(history: &[Change], target: &str) -> Option<f64> {
    let alone = |c: &Change| c.view.endpoints == [target];
    let last_other = history.iter().rposition(|c| !alone(c))?;
    history.get(last_other + 1).map(|c| c.t)
}

/// (active, standby) when the group is steady.
fn steady(s: &State) -> Option<(String, String)> {
    let pods = s.group_pods(GROUP);
    let live: Vec<_> = pods
        .iter()
        .filter(|(_, p)| !p.terminating && p.ip.is_some())
        .collect();
    let act = s.active(GROUP);
    if pods.len() != 2 || live.len() != 2 || act.len() != 1 || s.endpoint_pods(SERVICE) != act {
        return None;
    }
    let standby = live
        .iter()
        .find(|(n, p)| *n != act[0] && p.role.as_deref() == Some("passive"))?;
    Some((act[0].clone(), standby.0.clone()))
}

/// Polls a sidecar's `/status` until its app is healthy and it knows
/// `holder`: a process, not an API object, so there is nothing to watch.
async fn poll_status(url: &str, holder: &str) -> anyhow::Result<()> {
    let deadline = now() + 60.0;
    let mut last = String::new();
    while now() < deadline {
        if let Ok(r) = http().get(url).timeout(REQUEST_TIMEOUT).send().await {
            last = r.text().await.unwrap_or_default();
            let v: serde_json::Value = serde_json::from_str(&last).unwrap_or_default();
            if v["app_healthy"] == true && v["holder"] == holder {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("{url}: not healthy with holder {holder} within 60 s; last: {last}")
}

fn sidecar_restarts(p: &Pod) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.init_container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == "baton-sidecar"))
        .map_or(0, |c| c.restart_count)
}

fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// One client's figures for requests sent in [t0, until): `switched` is
/// when the EndpointSlice listed `new` alone.
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
    ClientFigures {
        first_new,
        requests: window.len(),
        failed: window.iter().filter(|s| s.answer.is_err()).count(),
        old_after_switch: if new == old {
            0
        } else {
            window
                .iter()
                .filter(|s| s.sent > switched && s.answer.as_deref() == Ok(old))
                .count()
        },
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
            s(10.6, Ok("a")), // old pod after the switch (kept alive)
            s(11.0, Ok("b")), // first answer by the new pod
            s(11.1, Err("timeout")),
            s(20.0, Err("timeout")), // after the window
        ];
        let f = figures(&samples, 10.0, 15.0, 10.5, "a", "b");
        assert_eq!(f.requests, 6);
        assert_eq!(f.failed, 3);
        assert_eq!(f.old_after_switch, 1);
        assert_eq!(f.first_new.map(|t| (t * 100.0).round()), Some(101.0));
        assert_eq!(
            f.errors,
            [("connect error".to_string(), 2), ("timeout".to_string(), 1)]
        );
    }

    #[test]
    fn the_switch_is_when_the_target_is_listed_alone_for_good() {
        let at = |t: f64, endpoints: &[&str]| Change {
            t,
            group: GROUP.into(),
            view: GroupView {
                endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
                ..Default::default()
            },
        };
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
    fn without_a_switch_the_first_new_answer_is_after_the_slice_is_back() {
        let samples = [
            s(10.0, Ok("a")),
            s(10.4, Err("connect error")),
            s(10.8, Ok("a")),
        ];
        let f = figures(&samples, 10.0, 12.0, 10.6, "a", "a");
        assert_eq!(f.first_new.map(|t| (t * 100.0).round()), Some(81.0));
        assert_eq!(f.old_after_switch, 0);
        assert_eq!(f.failed, 1);
    }
}
