//! The soak: a group of two on the real node whose apps close every
//! HTTP/1.1 connection every second, by design (as an idle timeout or a
//! maximum connection age does), for many minutes, with a kept-alive client
//! through a Service of the whole group on the sidecars' proxy. The probe's
//! kept connection closing starts a probe (docs/decisions.md §14): none of
//! them may fail the app over. At a third of the soak the standby's sidecar
//! is SIGKILLed, at two thirds the holder's; kubelet restarts each.

use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

use anyhow::Context as _;
use baton_e2e::{
    app_env,
    clients::{Client, Connections, REQUEST_TIMEOUT, Sample},
    harness::{
        Cluster, LeaseHistory, TestNamespace, http, parse_status, pod_ip, pod_ready,
        sidecar_restarts, signal, wait_for_object,
    },
    workload,
};
use baton_sidecar::contract::Role;
use k8s_openapi::api::{coordination::v1::Lease, core::v1::Pod};

use super::{
    clusterip::{ServiceMode, steady},
    measure::samples,
    recorder::{Change, Recorder},
    stats::now,
};

const GROUP: &str = "web";
/// How often the apps close every connection they hold.
pub const CLOSE_EVERY: &str = "1s";
/// Requests per second of the kept-alive client.
pub const RATE: u32 = 50;
const T: Duration = Duration::from_secs(60);

/// Probes counted by (trigger, result).
pub type Probes = BTreeMap<(String, String), f64>;

/// A sidecar SIGKILLed during the soak.
#[derive(Clone, Debug, Default)]
pub struct Kill {
    /// "standby" or "holder": the pod's role when its sidecar was killed.
    pub role: &'static str,
    pub pod: String,
    /// Seconds into the soak.
    pub at: f64,
    /// From the kill until kubelet reported the sidecar restarted and the
    /// pod Ready again.
    pub restarted_after: f64,
    /// The Lease's holder once the group had settled again.
    pub holder_after: String,
    /// Whether the Lease changed holder over the kill.
    pub switched: bool,
    /// When it was killed and when both sidecars agreed on a holder again,
    /// s since the epoch.
    pub window: (f64, f64),
    /// Failed client requests sent in that window, by kind.
    pub failed: BTreeMap<String, usize>,
}

#[derive(Debug, Default)]
pub struct SoakResult {
    pub secs: f64,
    pub holder: String,
    pub standby: String,
    /// `leaseTransitions` at the start and at the end.
    pub transitions: Option<(i32, i32)>,
    /// Every holder the Lease had during the soak (consecutive repeats folded).
    pub holders: Vec<Option<String>>,
    /// Changes of the set of pods labelled active during the soak.
    pub role_changes: usize,
    /// The roles after each change of them: s into the soak, pod → role.
    pub role_history: Vec<(f64, BTreeMap<String, String>)>,
    /// Probes per pod over the soak, summed over a restarted sidecar's lives.
    pub probes: BTreeMap<String, Probes>,
    pub kills: Vec<Kill>,
    pub requests: usize,
    /// Failed requests by kind.
    pub failed: BTreeMap<String, usize>,
    /// Those sent outside every kill's window, by kind.
    pub failed_outside_kills: BTreeMap<String, usize>,
    /// Answers by pod.
    pub answered_by: BTreeMap<String, usize>,
    pub errors: Vec<String>,
}

/// The probe counters of one sidecar's `/metrics`.
pub fn probe_counts(metrics: &str) -> Probes {
    let mut out = Probes::new();
    for s in samples(metrics, "baton_probes_total") {
        let label = |k: &str| s.labels.get(k).cloned().unwrap_or_default();
        *out.entry((label("trigger"), label("result"))).or_default() += s.value;
    }
    out
}

/// `total` plus what a sidecar counted from `from` to `to` (one life of the
/// process: its counters start at zero).
pub fn add_delta(total: &mut Probes, from: &Probes, to: &Probes) {
    for (k, v) in to {
        let d = v - from.get(k).copied().unwrap_or_default();
        *total.entry(k.clone()).or_default() += d;
    }
}

/// How many times the set of pods labelled active changed in `history`
/// (whose first entry is the view at its start).
pub fn active_changes(history: &[Change]) -> usize {
    let active: Vec<Vec<&String>> = history
        .iter()
        .map(|c| {
            c.view
                .roles
                .iter()
                .filter(|(_, r)| *r == "active")
                .map(|(p, _)| p)
                .collect()
        })
        .collect();
    active.windows(2).filter(|w| w[0] != w[1]).count()
}

/// Requests sent in [from, to): how many, the failed ones by kind, the
/// answers by pod.
pub fn tally(
    samples: &[Sample],
    from: f64,
    to: f64,
) -> (usize, BTreeMap<String, usize>, BTreeMap<String, usize>) {
    let mut failed = BTreeMap::new();
    let mut answered = BTreeMap::new();
    let mut n = 0;
    for s in samples.iter().filter(|s| s.sent >= from && s.sent < to) {
        n += 1;
        match &s.answer {
            Ok(pod) => *answered.entry(pod.clone()).or_default() += 1,
            Err(e) => *failed.entry(e.clone()).or_default() += 1,
        }
    }
    (n, failed, answered)
}

pub async fn run(cluster: &Cluster, secs: u64, say: impl Fn(&str)) -> SoakResult {
    let mut result = SoakResult::default();
    let ns = cluster.namespace("bench-soak").await;
    if let Err(e) = soak(&ns, secs, &mut result, &say).await {
        result.errors.push(format!("{e:#}"));
    }
    ns.delete().await;
    result
}

async fn soak(
    ns: &TestNamespace,
    secs: u64,
    r: &mut SoakResult,
    say: &impl Fn(&str),
) -> anyhow::Result<()> {
    let rec = Recorder::start(ns.api(), ns.api()).await;
    let history = LeaseHistory::start(ns.api(), GROUP).await;
    ns.apply(&app_env::with_app_env(
        &workload::statefulset_placed(GROUP, 2, true, &[], workload::ON_REAL_NODE),
        app_env::CLOSE_CONNECTIONS_EVERY,
        CLOSE_EVERY,
    ));
    ns.apply(&workload::proxied_service(
        GROUP,
        workload::ProxiedService::WholeGroup,
    ));
    let st = rec
        .wait(Duration::from_secs(180), "a steady group", |s| {
            steady(s, ServiceMode::Proxy).is_some()
        })
        .await?;
    let (holder, standby) = steady(&st, ServiceMode::Proxy).context("steady")?;
    let settled = settle(ns, [&holder, &standby]).await?;
    anyhow::ensure!(
        settled == holder,
        "{settled} holds the Lease, {holder} is labelled active"
    );
    r.holder.clone_from(&holder);
    r.standby.clone_from(&standby);
    let service: k8s_openapi::api::core::v1::Service =
        ns.api().get(&workload::proxied_service_name(GROUP)).await?;
    let ip = service
        .spec
        .and_then(|s| s.cluster_ip)
        .context("the Service has no ClusterIP")?;
    let client = Client::start(Connections::KeepAlive, format!("http://{ip}/"), RATE)?;
    client.wait_steady_on(&holder, 20).await?;

    let t0 = now();
    let transitions0 = transitions(ns).await?;
    let holders0 = history.holders().len();
    let mut last: BTreeMap<String, Probes> = BTreeMap::new();
    for pod in [&holder, &standby] {
        last.insert(pod.clone(), probe_counts(&metrics(ns, pod).await?));
        r.probes.insert(pod.clone(), Probes::new());
    }
    say(&format!(
        "soak: {secs} s; apps close every connection every {CLOSE_EVERY}; holder {holder}"
    ));
    let start = tokio::time::Instant::now();
    for (k, role) in [(1, "standby"), (2, "holder")] {
        tokio::time::sleep_until(start + Duration::from_secs(secs) * k / 3).await;
        let current = holder_now(ns).await?;
        // The pod whose sidecar dies is the one in that role now.
        let pod = match role {
            "holder" => current.clone(),
            _ if current == holder => standby.clone(),
            _ => holder.clone(),
        };
        let before = history.holders().len();
        say(&format!("soak: SIGKILL the {role}'s sidecar ({pod})"));
        let pair = [holder.as_str(), standby.as_str()];
        let kill = kill_sidecar(ns, &pod, role, pair, now() - t0, r, &mut last).await?;
        // A holder released or taken meanwhile is a switch too, even if
        // the first holder took the Lease back.
        let kill = Kill {
            switched: kill.switched || history.holders().len() != before,
            ..kill
        };
        say(&format!(
            "  restarted and Ready after {:.1} s; holder {}{}",
            kill.restarted_after,
            kill.holder_after,
            if kill.switched { " (switched)" } else { "" }
        ));
        r.kills.push(kill);
    }
    tokio::time::sleep_until(start + Duration::from_secs(secs)).await;
    let t1 = now();
    for (pod, from) in &last {
        let to = probe_counts(&metrics(ns, pod).await?);
        add_delta(r.probes.get_mut(pod).expect("each pod"), from, &to);
    }
    r.transitions = Some((transitions0, transitions(ns).await?));
    r.holders = history.holders().split_off(holders0.saturating_sub(1));
    let roles = rec.history(GROUP, t0, t1);
    r.role_changes = active_changes(&roles);
    r.role_history = roles
        .into_iter()
        .skip(1)
        .map(|c| (c.t - t0, c.view.roles))
        .collect();
    r.secs = t1 - t0;
    // Every request sent before the end has its answer or its timeout.
    tokio::time::sleep(REQUEST_TIMEOUT + Duration::from_millis(300)).await;
    let samples = client.samples();
    (r.requests, r.failed, r.answered_by) = tally(&samples, t0, t1);
    r.failed_outside_kills = r.failed.clone();
    for k in &mut r.kills {
        k.failed = tally(&samples, k.window.0, k.window.1).1;
        for (kind, n) in &k.failed {
            if let Some(m) = r.failed_outside_kills.get_mut(kind) {
                *m -= n;
            }
        }
    }
    r.failed_outside_kills.retain(|_, n| *n > 0);
    Ok(())
}

/// SIGKILLs `pod`'s sidecar, waits until kubelet has restarted it and the
/// pod is Ready, then until both sidecars agree on a holder. Counts the
/// killed life's probes into `r` (read just before the kill).
async fn kill_sidecar(
    ns: &TestNamespace,
    pod: &str,
    role: &'static str,
    group: [&str; 2],
    at: f64,
    r: &mut SoakResult,
    last: &mut BTreeMap<String, Probes>,
) -> anyhow::Result<Kill> {
    let pods = ns.api::<Pod>();
    let restarts = sidecar_restarts(&pods.get(pod).await?);
    let pid = ns.pid(pod, "baton-sidecar", Duration::from_secs(10)).await;
    let before = probe_counts(&metrics(ns, pod).await?);
    let held_by = holder_now(ns).await?;
    let t = now();
    signal(pid, "KILL").await;
    add_delta(
        r.probes.get_mut(pod).context("a pod of the soak")?,
        &last[pod],
        &before,
    );
    // The new process counts from zero.
    last.insert(pod.to_owned(), Probes::new());
    let what = format!("{pod}'s sidecar restarted and the pod Ready");
    wait_for_object::<Pod, _>(pods, pod, T, &what, |p| {
        sidecar_restarts(p) > restarts && pod_ready(p)
    })
    .await;
    let restarted_after = now() - t;
    let holder_after = settle(ns, group).await?;
    Ok(Kill {
        window: (t, now()),
        failed: BTreeMap::new(),
        role,
        pod: pod.to_owned(),
        at,
        restarted_after,
        switched: holder_after != held_by,
        holder_after,
    })
}

async fn holder_now(ns: &TestNamespace) -> anyhow::Result<String> {
    let lease: Lease = ns.api().get(GROUP).await?;
    lease
        .spec
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty())
        .context("the Lease has no holder")
}

async fn transitions(ns: &TestNamespace) -> anyhow::Result<i32> {
    let lease: Lease = ns.api().get(GROUP).await?;
    Ok(lease
        .spec
        .and_then(|s| s.lease_transitions)
        .unwrap_or_default())
}

async fn metrics(ns: &TestNamespace, pod: &str) -> anyhow::Result<String> {
    let ip = pod_ip(ns, pod).await;
    let url = format!("http://{ip}:9095/metrics");
    let deadline = now() + T.as_secs_f64();
    loop {
        match http().get(&url).send().await {
            Ok(r) if r.status().is_success() => return Ok(r.text().await?),
            Ok(r) if now() > deadline => anyhow::bail!("{url}: {}", r.status()),
            Err(e) if now() > deadline => return Err(e).context(url),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Polls both sidecars' `/status` until both apps are healthy, both name
/// the same holder, and their roles say so (the holder active, the other
/// passive): processes, not API objects, so there is nothing to watch.
/// Returns the holder.
async fn settle(ns: &TestNamespace, group: [&str; 2]) -> anyhow::Result<String> {
    let mut urls = Vec::new();
    for pod in group {
        urls.push(format!("http://{}:9095/status", pod_ip(ns, pod).await));
    }
    let deadline = now() + T.as_secs_f64();
    let mut last = Vec::new();
    while now() < deadline {
        last.clear();
        for url in &urls {
            let status = match http().get(url).timeout(REQUEST_TIMEOUT).send().await {
                Ok(r) => r.text().await.ok().map(|body| parse_status(url, &body)),
                Err(_) => None,
            };
            last.push(status);
        }
        let holder = last[0]
            .as_ref()
            .and_then(|s| s.holder.clone())
            .unwrap_or_default();
        let agreed = group.iter().zip(&last).all(|(pod, s)| {
            let want = if *pod == holder {
                Role::Active
            } else {
                Role::Passive
            };
            s.as_ref().is_some_and(|s| {
                s.app_healthy
                    && s.holder.as_deref() == Some(holder.as_str())
                    && s.role == Some(want)
            })
        });
        if agreed && group.contains(&holder.as_str()) {
            return Ok(holder);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the sidecars did not settle on a holder within 60 s: {last:?}")
}

impl SoakResult {
    pub fn markdown(&self) -> String {
        let mut md = format!(
            "A group of two demo-app pods with the sidecar on the real node, whose apps close every HTTP/1.1 connection every {CLOSE_EVERY} (gracefully, after the request in flight, as an idle timeout or a maximum connection age does: `CLOSE_CONNECTIONS_EVERY`), so that every probe's kept connection is closed under it; one client keeps its connections alive through a Service of the whole group on the sidecars' proxy, {RATE} requests/s. At a third of the soak the standby's sidecar is SIGKILLed, at two thirds the holder's; kubelet restarts each. Goal: no switch at all.\n\n"
        );
        let _ = writeln!(md, "| measure | value |\n| --- | --- |");
        let _ = writeln!(md, "| soak, s | {:.0} |", self.secs);
        let _ = writeln!(
            md,
            "| first holder / standby | {} / {} |",
            self.holder, self.standby
        );
        let transitions = self
            .transitions
            .map_or("–".into(), |(a, b)| format!("{} ({a} → {b})", b - a));
        let _ = writeln!(md, "| Lease transitions during the soak | {transitions} |");
        let holders: Vec<String> = self
            .holders
            .iter()
            .map(|h| h.clone().unwrap_or_else(|| "(released)".into()))
            .collect();
        let _ = writeln!(md, "| Lease holders | {} |", holders.join(" → "));
        let roles: Vec<String> = self
            .role_history
            .iter()
            .map(|(t, roles)| {
                let r: Vec<String> = roles.iter().map(|(p, r)| format!("{p} {r}")).collect();
                format!("{t:.1} s: {}", r.join(", "))
            })
            .collect();
        let _ = writeln!(
            md,
            "| changes of the pod labelled active (roles after each change of any pod's) | {} ({}) |",
            self.role_changes,
            roles.join("; ")
        );
        for (pod, probes) in &self.probes {
            let cells: Vec<String> = probes
                .iter()
                .filter(|(_, v)| **v > 0.0)
                .map(|((t, res), v)| format!("{t}/{res} {v:.0}"))
                .collect();
            let _ = writeln!(
                md,
                "| probes of {pod} by trigger/result (both lives of its sidecar) | {} |",
                cells.join(", ")
            );
        }
        for k in &self.kills {
            let _ = writeln!(
                md,
                "| the {}'s sidecar ({}) killed at {:.0} s: restarted and Ready after, s; switch | {:.1}; {} |",
                k.role,
                k.pod,
                k.at,
                k.restarted_after,
                if k.switched {
                    format!("yes, to {}", k.holder_after)
                } else {
                    "no".into()
                }
            );
        }
        let failed: usize = self.failed.values().sum();
        let _ = writeln!(
            md,
            "| client requests / failed | {} / {failed} |",
            self.requests
        );
        let answers: Vec<String> = self
            .answered_by
            .iter()
            .map(|(p, n)| format!("{p} {n}"))
            .collect();
        let _ = writeln!(md, "| answered by | {} |", answers.join(", "));
        let kinds = |m: &BTreeMap<String, usize>| {
            let v: Vec<String> = m
                .iter()
                .map(|(k, n)| format!("{} {n}", k.replace('|', "/")))
                .collect();
            if v.is_empty() {
                "none".into()
            } else {
                v.join("; ")
            }
        };
        for k in &self.kills {
            let _ = writeln!(
                md,
                "| failed, sent while the {}'s sidecar restarted (kill → both sidecars agree again, {:.1} s) | {} |",
                k.role,
                k.window.1 - k.window.0,
                kinds(&k.failed)
            );
        }
        let _ = writeln!(
            md,
            "| failed, sent at any other time of the soak | {} |",
            kinds(&self.failed_outside_kills)
        );
        for e in &self.errors {
            let _ = writeln!(md, "\n- error: {e}");
        }
        md
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = r#"# TYPE baton_probes_total counter
baton_probes_total{trigger="period",result="success"} 1200
baton_probes_total{trigger="connection closed",result="success"} 1190
baton_probes_total{trigger="connection closed",result="refused"} 1
baton_probe_duration_seconds_count 2391
"#;

    fn key(t: &str, r: &str) -> (String, String) {
        (t.into(), r.into())
    }

    #[test]
    fn probe_counts_are_read_by_trigger_and_result() {
        let p = probe_counts(METRICS);
        assert_eq!(p.len(), 3);
        assert_eq!(p[&key("period", "success")], 1200.0);
        assert_eq!(p[&key("connection closed", "success")], 1190.0);
        assert_eq!(p[&key("connection closed", "refused")], 1.0);
    }

    #[test]
    fn a_restarted_sidecar_adds_both_lives() {
        let mut total = Probes::new();
        let start = BTreeMap::from([(key("period", "success"), 100.0)]);
        let at_kill = BTreeMap::from([(key("period", "success"), 150.0)]);
        add_delta(&mut total, &start, &at_kill);
        // The new process starts from zero, with a series the first lacked.
        let end = BTreeMap::from([
            (key("period", "success"), 30.0),
            (key("connection closed", "success"), 20.0),
        ]);
        add_delta(&mut total, &Probes::new(), &end);
        assert_eq!(total[&key("period", "success")], 80.0);
        assert_eq!(total[&key("connection closed", "success")], 20.0);
    }

    fn change(t: f64, roles: &[(&str, &str)]) -> Change {
        Change {
            t,
            group: GROUP.into(),
            view: super::super::recorder::GroupView {
                roles: roles
                    .iter()
                    .map(|(p, r)| (p.to_string(), r.to_string()))
                    .collect(),
                endpoints: vec![],
            },
        }
    }

    #[test]
    fn only_changes_of_the_active_pod_count() {
        let h = [
            change(0.0, &[("web-0", "active"), ("web-1", "passive")]),
            // The standby restarts: its pod changes, the active one does not.
            change(1.0, &[("web-0", "active"), ("web-1", "-")]),
            change(2.0, &[("web-0", "active"), ("web-1", "passive")]),
        ];
        assert_eq!(active_changes(&h), 0);
        let h = [
            change(0.0, &[("web-0", "active"), ("web-1", "passive")]),
            change(1.0, &[("web-0", "passive"), ("web-1", "passive")]),
            change(2.0, &[("web-0", "passive"), ("web-1", "active")]),
        ];
        assert_eq!(active_changes(&h), 2);
    }

    #[test]
    fn requests_are_tallied_by_sending_time() {
        let s = |sent: f64, answer: Result<&str, &str>| Sample {
            sent,
            done: sent + 0.01,
            answer: answer.map(str::to_owned).map_err(str::to_owned),
        };
        let samples = [
            s(0.5, Ok("web-0")),
            s(1.0, Ok("web-0")),
            s(1.5, Err("timeout")),
            s(1.6, Err("timeout")),
            s(1.7, Ok("web-1")),
            s(2.0, Err("connect error")),
        ];
        let (n, failed, answered) = tally(&samples, 1.0, 2.0);
        assert_eq!(n, 4);
        assert_eq!(failed, BTreeMap::from([("timeout".to_owned(), 2)]));
        assert_eq!(
            answered,
            BTreeMap::from([("web-0".to_owned(), 1), ("web-1".to_owned(), 1)])
        );
    }
}
