//! Settings versus failover time and API cost (the table of
//! docs/operations.md): for each timing, a group of two pods on KWOK nodes
//! with the sidecars set by their environment (what the injection
//! annotations set), a steady-state window, unplanned failovers, and the
//! holder's sidecar frozen as on a lost node.

use std::{fmt::Write as _, time::Duration};

use baton_e2e::harness::Cluster;

use super::{
    load::{self, Window},
    say,
    scale::wait_namespace_gone,
    scenario::{Group, Run, System},
    stats::summary,
};

/// One set of the sidecar's timing settings.
pub struct Timing {
    pub name: &'static str,
    /// The sidecar's environment that sets it; empty for the defaults.
    pub env: &'static [(&'static str, &'static str)],
    pub probe_period: Duration,
    pub renew_period: Duration,
    pub lease_duration: Duration,
}

pub static DEFAULT_TIMING: Timing = Timing {
    name: "default",
    env: &[],
    probe_period: Duration::from_millis(500),
    renew_period: Duration::from_secs(2),
    lease_duration: Duration::from_secs(6),
};

/// Each satisfies the sidecar's rules (renew-period + retry-period <
/// renew-deadline, renew-deadline + api-timeout ≤ lease-duration,
/// probe-timeout ≤ probe-period).
pub static TIMINGS: [&Timing; 4] = [
    &DEFAULT_TIMING,
    &Timing {
        name: "fast",
        env: &[
            ("BATON_PROBE_PERIOD", "250ms"),
            ("BATON_PROBE_TIMEOUT", "200ms"),
            ("BATON_RENEW_PERIOD", "1s"),
            ("BATON_RETRY_PERIOD", "500ms"),
            ("BATON_RENEW_DEADLINE", "2s"),
            ("BATON_LEASE_DURATION", "4s"),
        ],
        probe_period: Duration::from_millis(250),
        renew_period: Duration::from_secs(1),
        lease_duration: Duration::from_secs(4),
    },
    &Timing {
        name: "relaxed",
        env: &[
            ("BATON_RENEW_PERIOD", "5s"),
            ("BATON_RENEW_DEADLINE", "10s"),
            ("BATON_LEASE_DURATION", "15s"),
        ],
        probe_period: Duration::from_millis(500),
        renew_period: Duration::from_secs(5),
        lease_duration: Duration::from_secs(15),
    },
    // Kubernetes' node Leases: renewed every 10 s, 40 s long.
    &Timing {
        name: "node-like",
        env: &[
            ("BATON_RENEW_PERIOD", "10s"),
            ("BATON_RENEW_DEADLINE", "30s"),
            ("BATON_LEASE_DURATION", "40s"),
        ],
        probe_period: Duration::from_millis(500),
        renew_period: Duration::from_secs(10),
        lease_duration: Duration::from_secs(40),
    },
];

impl Timing {
    /// The settings as annotations (`baton.dev/` left out), e.g.
    /// `renew-period 5s, lease-duration 15s`.
    pub fn annotations(&self) -> String {
        if self.env.is_empty() {
            return "the defaults: probe-period 500ms, renew-period 2s, retry-period 1s, renew-deadline 4s, lease-duration 6s".into();
        }
        self.env
            .iter()
            .map(|(k, v)| {
                let name = k
                    .trim_start_matches("BATON_")
                    .to_lowercase()
                    .replace('_', "-");
                format!("{name} {v}")
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

pub struct TimingResult {
    pub timing: &'static Timing,
    pub runs: Vec<Run>,
    pub idle: Option<Window>,
    pub errors: Vec<String>,
}

pub async fn run(
    cluster: &Cluster,
    out: &std::path::Path,
    timing: &'static Timing,
    failovers: usize,
    freezes: usize,
    window: u64,
) -> TimingResult {
    let mut r = TimingResult {
        timing,
        runs: Vec::new(),
        idle: None,
        errors: Vec::new(),
    };
    let group = match Group::deploy(cluster, System::Baton, timing, out).await {
        Ok(g) => g,
        Err(e) => {
            r.errors.push(format!("deploy: {e:#}"));
            return r;
        }
    };
    say(&format!("timing {}: steady-state window", timing.name));
    let pids: Vec<u32> = group
        .holder_and_standby_pids()
        .map(Vec::from)
        .unwrap_or_default();
    match load::window(cluster, window, &pids, &[]).await {
        Ok(w) => r.idle = Some(w),
        Err(e) => r.errors.push(format!("window: {e:#}")),
    }
    for (scenario, n) in [("failover", failovers), ("frozen", freezes)] {
        for i in 0..n {
            say(&format!("timing {}: {scenario} {}/{n}", timing.name, i + 1));
            let res = match scenario {
                "failover" => group.failover(i).await,
                _ => group.frozen(i).await,
            };
            match res {
                Ok(run) => {
                    say(&format!("  {:.3} s", run.total));
                    r.runs.push(run);
                }
                Err(e) => {
                    say(&format!("  failed: {e:#}"));
                    r.errors.push(format!("{scenario} {i}: {e:#}"));
                    break;
                }
            }
        }
    }
    let name = group.ns.name.clone();
    group.stop().await;
    wait_namespace_gone(cluster, &name, Duration::from_secs(120)).await;
    r
}

/// The report's table: one row per timing.
pub fn markdown(results: &[TimingResult], background: &Window) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "| settings (`baton.dev/` annotations) | unplanned failover, s (median / p99) | … detection, s (median / p99) | holder lost (sidecar frozen): standby takes over, s (median / max) | Lease writes/min per group (60 / renew-period) | API requests/min per group: leases / pods / all (background subtracted) | sidecar CPU at rest, % of a core: holder / standby | errors |"
    );
    let _ = writeln!(md, "| --- | --- | --- | --- | --- | --- | --- | --- |");
    let (bg_leases, bg_pods) = background.leases_and_pods();
    for r in results {
        let of = |sc: &str, f: &dyn Fn(&Run) -> Option<f64>| {
            summary(
                &r.runs
                    .iter()
                    .filter(|x| x.scenario == sc)
                    .filter_map(f)
                    .collect::<Vec<_>>(),
            )
        };
        let cpu = match r.idle.as_ref().map(|w| w.procs_cpu_each.as_slice()) {
            Some([holder, standby]) => format!("{holder:.3} / {standby:.3}"),
            _ => "–".into(),
        };
        let (writes, api) = match &r.idle {
            Some(w) => {
                let (l, p) = w.leases_and_pods();
                let lease_puts = |w: &Window| -> f64 {
                    w.rates
                        .iter()
                        .filter(|((res, verb), _)| res == "leases" && verb == "PUT")
                        .map(|(_, v)| v)
                        .sum()
                };
                let writes = lease_puts(w) - lease_puts(background);
                (
                    format!(
                        "{writes:.1} ({:.0})",
                        60.0 / r.timing.renew_period.as_secs_f64()
                    ),
                    format!(
                        "{:.1} / {:.1} / {:.1}",
                        l - bg_leases,
                        p - bg_pods,
                        w.total() - background.total()
                    ),
                )
            }
            None => ("–".into(), "–".into()),
        };
        let frozen = of("frozen", &|x| Some(x.total));
        let frozen = if frozen.n == 0 {
            "–".into()
        } else {
            format!("{:.2} / {:.2} (n={})", frozen.median, frozen.max, frozen.n)
        };
        let _ = writeln!(
            md,
            "| {}: {} | {} | {} | {frozen} | {writes} | {api} | {cpu} | {} |",
            r.timing.name,
            r.timing.annotations(),
            of("failover", &|x| Some(x.total)).cell(2),
            of("failover", &|x| x.detection).cell(2),
            if r.errors.is_empty() {
                "none".into()
            } else {
                r.errors.join("; ")
            },
        );
    }
    md
}
