//! `baton-bench`: measures baton side by side with the baseline controller
//! (tests/bench/baseline-controller.sh) on the local control plane, and
//! writes target/bench/{report.md, *.svg, *.csv}. `make bench` runs it
//! inside the network namespace of a fresh cluster of its own.

mod brownout;
mod clusterip;
mod kle;
mod load;
mod measure;
mod nodes;
mod proxy_cost;
mod recorder;
mod report;
mod scale;
mod scenario;
mod soak;
mod stats;
mod svg;
mod timing;
mod webhook;

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use baton_e2e::harness::{Cluster, repo_root};
use clap::Parser;

use load::Window;
use measure::kubectl_costs;
use report::Report;
use scenario::{Run, System, SystemGroup};
use stats::now;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "baton-bench",
    about = "Failover, handover, resource and admission figures: baton vs the polling baseline"
)]
struct Args {
    /// Where report.md, the SVG plots and the CSV files go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Unplanned failovers with baton.
    #[arg(long, default_value_t = 30)]
    failover_runs: usize,
    /// Unplanned failovers with the baseline at the fast interval.
    #[arg(long, default_value_t = 10)]
    baseline_runs: usize,
    /// Unplanned failovers with the baseline at the post's interval.
    #[arg(long, default_value_t = 5)]
    slow_runs: usize,
    /// Planned handovers (active pod deleted) with baton; the baselines get half (at least 2).
    #[arg(long, default_value_t = 10)]
    planned_runs: usize,
    /// Holder's sidecar SIGKILLed (baton only).
    #[arg(long, default_value_t = 6)]
    kill_runs: usize,
    /// The baseline's fast poll interval (its example repository), seconds.
    #[arg(long, default_value_t = 10)]
    fast_interval: u64,
    /// The baseline's poll interval in the post, seconds.
    #[arg(long, default_value_t = 60)]
    slow_interval: u64,
    /// Length of each steady-state window (API load, idle resources), seconds.
    #[arg(long, default_value_t = 30)]
    window: u64,
    /// Pods created (dry run) through the webhook.
    #[arg(long, default_value_t = 1000)]
    webhook_pods: usize,
    /// Seconds of direct load on /mutate.
    #[arg(long, default_value_t = 10)]
    direct_secs: u64,
    /// Group counts of the scale measure.
    #[arg(long, value_delimiter = ',', default_value = "50,100,200")]
    scale: Vec<usize>,
    /// Failovers per scale step (in distinct groups).
    #[arg(long, default_value_t = 10)]
    scale_failovers: usize,
    /// Labels put on each scale step's namespace before its groups are
    /// created, e.g. `baton.dev/sidecar-policy=disabled` to leave it out
    /// of the admission policies (docs/operations.md, Limits).
    #[arg(long, value_delimiter = ',')]
    scale_namespace_labels: Vec<String>,
    /// Unplanned failovers through the ClusterIP on the real node.
    #[arg(long, default_value_t = 10)]
    clusterip_failovers: usize,
    /// Planned handovers (active pod deleted) through the ClusterIP.
    #[arg(long, default_value_t = 10)]
    clusterip_planned: usize,
    /// Switchovers to the standby (design rule 10) through the ClusterIP.
    #[arg(long, default_value_t = 10)]
    clusterip_switchovers: usize,
    /// `kubectl rollout restart` of the group, through the ClusterIP.
    #[arg(long, default_value_t = 3)]
    clusterip_rollouts: usize,
    /// The active app's process SIGKILLed, through the ClusterIP (kubelet
    /// restarts it, later each time: its restart back-off).
    #[arg(long, default_value_t = 10)]
    clusterip_app_kills: usize,
    /// The holder's sidecar SIGKILLed, through the ClusterIP (the second
    /// and later meet kubelet's restart back-off).
    #[arg(long, default_value_t = 1)]
    clusterip_kills: usize,
    /// How the Service follows the active pod, each measured in turn: a
    /// Service of the whole group through the sidecars' proxy (proxy,
    /// README's install), the role label (labels), or the holder writing
    /// its endpoint (holder-endpoint, `baton.dev/service`).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "proxy,labels,holder-endpoint"
    )]
    clusterip_modes: Vec<clusterip::ServiceMode>,
    /// Seconds the group's sidecars rest, measured, before the switches
    /// (each kind of Service); 0 skips it.
    #[arg(long, default_value_t = 60)]
    clusterip_idle_secs: u64,
    /// Seconds of fixed-rate load on each path of the proxy cost measure
    /// (the proxy mode; throughput runs half as long); 0 skips it.
    #[arg(long, default_value_t = 10)]
    proxy_cost_secs: u64,
    /// Requests per second of each ClusterIP client.
    #[arg(long, default_value_t = 200)]
    clusterip_rate: u32,
    /// Unplanned failovers per timing of the settings table.
    #[arg(long, default_value_t = 10)]
    timing_failovers: usize,
    /// The holder's sidecar frozen (as on a lost node), per timing.
    #[arg(long, default_value_t = 3)]
    timing_freezes: usize,
    /// Steady-state window per timing, seconds (long enough for several
    /// renewals at the slowest renew period).
    #[arg(long, default_value_t = 60)]
    timing_window: u64,
    /// Which timings of the settings table to measure (by name; all by default).
    #[arg(long, value_delimiter = ',')]
    timings: Vec<String>,
    /// Rounds of kube-leader-election's race (tests/kle-race), per Lease state.
    #[arg(long, default_value_t = 20)]
    kle_rounds: usize,
    /// The kube-leader-election racer `make bench` builds outside the workspace.
    #[arg(long, default_value = "target/kle-race/debug/baton-kle-race")]
    kle_racer: PathBuf,
    /// Seconds of the soak: apps that close every connection every second,
    /// each sidecar killed once, on the real node.
    #[arg(long, default_value_t = 600)]
    soak_secs: u64,
    /// The API latencies of the brownout, seconds (each the freeze of a
    /// duty cycle of the API server).
    #[arg(long, value_delimiter = ',', default_value = "1,1.5,2.5,4")]
    brownout_latencies: Vec<f64>,
    /// Seconds each brownout lasts.
    #[arg(long, default_value_t = 120)]
    brownout_secs: u64,
    /// Runs of each node event per Service kind (two real nodes).
    #[arg(long, default_value_t = 3)]
    node_runs: usize,
    /// Runs of the stopped kubelet per Service kind (each over two
    /// minutes); `--node-runs` by default.
    #[arg(long)]
    node_kubelet_runs: Option<usize>,
    /// Which node events to measure.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "partition,freeze,kubelet,drain"
    )]
    node_faults: Vec<nodes::NodeFault>,
    /// The Service kinds the node events are measured under.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "labels,holder-endpoint,proxy"
    )]
    node_modes: Vec<clusterip::ServiceMode>,
    /// Parts to skip: clusterip, soak, brownout, nodes, baton, fast, slow, timing, webhook, scale, kle.
    #[arg(long, value_delimiter = ',')]
    skip: Vec<String>,
    /// Where the binaries the bench measures are: the webhook's, and (up.sh,
    /// BATON_POD_BIN_DIR) those the pod runner starts for KWOK pods.
    /// `make bench` gives the release binaries of the images.
    #[arg(long, env = "BATON_BIN_DIR", default_value = "target/debug")]
    bin_dir: PathBuf,
}

#[derive(Default)]
struct SystemResult {
    runs: Vec<Run>,
    errors: Vec<String>,
    idle: Option<Window>,
    kubectl: Vec<measure::KubectlCost>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let out = if args.out.is_absolute() {
        args.out.clone()
    } else {
        repo_root().join(&args.out)
    };
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let started = now();
    let cluster = Cluster::connect().await;
    let skip = |p: &str| args.skip.iter().any(|s| s == p);

    say("steady-state window on the empty cluster (background load)");
    let background = load::window(&cluster, args.window, &[], &[])
        .await
        .context("background window")?;

    let mut clusterip = Vec::new();
    if !skip("clusterip") {
        for &mode in &args.clusterip_modes {
            say(&format!(
                "clusterip: a group on the real node, clients through the ClusterIP ({})",
                mode.title()
            ));
            clusterip.push(
                clusterip::run(
                    &cluster,
                    mode,
                    args.clusterip_rate,
                    args.clusterip_failovers,
                    args.clusterip_planned,
                    args.clusterip_switchovers,
                    args.clusterip_app_kills,
                    args.clusterip_kills,
                    args.clusterip_rollouts,
                    Duration::from_secs(args.clusterip_idle_secs),
                    Duration::from_secs(args.proxy_cost_secs),
                    say,
                )
                .await,
            );
        }
    }

    let soak = if skip("soak") {
        None
    } else {
        say(&format!(
            "soak: apps closing every connection every {} for {} s, on the real node",
            soak::CLOSE_EVERY,
            args.soak_secs
        ));
        Some(soak::run(&cluster, args.soak_secs, say).await)
    };

    let brownout = if skip("brownout") {
        None
    } else {
        Some(brownout::run(&cluster, &args.brownout_latencies, args.brownout_secs, say).await)
    };

    let nodes = if skip("nodes") {
        None
    } else {
        say("nodes: node events under a group spread over two real nodes");
        Some(
            nodes::run(
                &cluster,
                &args.node_faults,
                &args.node_modes,
                args.node_runs,
                args.node_kubelet_runs.unwrap_or(args.node_runs),
                args.clusterip_rate,
                &out,
                say,
            )
            .await,
        )
    };

    let mut systems: Vec<(System, SystemResult)> = Vec::new();
    let plan = [
        (
            System::Baton,
            "baton",
            args.failover_runs,
            args.planned_runs,
            args.kill_runs,
        ),
        (
            System::Baseline(args.fast_interval),
            "fast",
            args.baseline_runs,
            (args.planned_runs / 2).max(2),
            0,
        ),
        (
            System::Baseline(args.slow_interval),
            "slow",
            args.slow_runs,
            (args.planned_runs / 4).max(2),
            0,
        ),
    ];
    for (system, part, failovers, planned, kills) in plan {
        if skip(part) {
            continue;
        }
        let window = (system == System::Baton || system == System::Baseline(args.fast_interval))
            .then_some(args.window);
        let steps = [
            ("failover", failovers),
            ("planned", planned),
            ("sigkill", kills),
        ];
        systems.push((
            system,
            measure_system(
                &cluster,
                system,
                &timing::DEFAULT_TIMING,
                &out,
                window,
                &steps,
            )
            .await,
        ));
    }

    let mut timings = Vec::new();
    if !skip("timing") {
        let chosen = timing::TIMINGS
            .iter()
            .filter(|t| args.timings.is_empty() || args.timings.iter().any(|n| n == t.name));
        let steps = [
            ("failover", args.timing_failovers),
            ("frozen", args.timing_freezes),
        ];
        for t in chosen {
            say(&format!("timing {}: {}", t.name, t.annotations()));
            let result = measure_system(
                &cluster,
                System::Baton,
                t,
                &out,
                Some(args.timing_window),
                &steps,
            )
            .await;
            timings.push((*t, result));
        }
    }

    let webhook = if skip("webhook") {
        None
    } else {
        say(&format!(
            "webhook: {} pods (dry run) through the API server, then {} s of direct load",
            args.webhook_pods, args.direct_secs
        ));
        let bin_dir = if args.bin_dir.is_absolute() {
            args.bin_dir.clone()
        } else {
            repo_root().join(&args.bin_dir)
        };
        Some(
            webhook::run(
                &cluster,
                &bin_dir,
                &out,
                args.webhook_pods,
                args.direct_secs,
            )
            .await
            .map_err(|e| format!("{e:#}")),
        )
    };

    let kle = if skip("kle") {
        None
    } else {
        say("kle: kube-leader-election's LeaseLock racing for one Lease");
        let racer = if args.kle_racer.is_absolute() {
            args.kle_racer.clone()
        } else {
            repo_root().join(&args.kle_racer)
        };
        Some(kle::run(&cluster, &racer, args.kle_rounds).await)
    };

    let mut scales = Vec::new();
    if !skip("scale") {
        // Private memory of one pod (sidecar + app), from the last step; a
        // generous guess before the first.
        let mut per_pod_kib = 40.0 * 1024.0;
        for &n in &args.scale {
            let need = n as f64 * 2.0 * per_pod_kib;
            let available = scale::mem_available_kib();
            if need > available - 3.0 * 1024.0 * 1024.0 {
                let note = format!(
                    "not run: {n} groups need about {} MiB, {} MiB available (keeping 3 GiB for the rest of the machine)",
                    mib(need),
                    mib(available)
                );
                say(&note);
                scales.push(scale::ScaleResult {
                    groups: n,
                    broke: Some(note),
                    ..Default::default()
                });
                break;
            }
            say(&format!("scale: {n} groups"));
            let r = scale::run(
                &cluster,
                n,
                args.window,
                args.scale_failovers,
                &args.scale_namespace_labels,
            )
            .await;
            if let Some(k) = r.pod_anon_kib {
                per_pod_kib = k + 1024.0;
            }
            let broke = r.broke.is_some();
            scales.push(r);
            if broke {
                say("stopping the scale measure here: it broke");
                break;
            }
        }
    }

    let report = Report {
        args: &args,
        background: &background,
        systems: &systems,
        webhook: webhook.as_ref(),
        kle: kle.as_ref(),
        clusterip: &clusterip,
        soak: soak.as_ref(),
        brownout: brownout.as_ref(),
        nodes: nodes.as_ref(),
        timings: &timings,
        scales: &scales,
        minutes: (now() - started) / 60.0,
    };
    report.write(&out)?;
    println!("{}", report.table());
    say(&format!("report: {}", out.join("report.md").display()));
    Ok(())
}

fn say(msg: &str) {
    eprintln!("[bench {}] {msg}", chrono_free_time());
}

fn chrono_free_time() -> String {
    let t = now() as u64 % 86400;
    format!("{:02}:{:02}:{:02}", t / 3600, t / 60 % 60, t % 60)
}

/// One group of `system` under `timing`: a steady-state window of
/// `window` seconds if asked, then each step's runs in turn (a step stops
/// after three failures in a row).
async fn measure_system(
    cluster: &Cluster,
    system: System,
    timing: &'static timing::Timing,
    out: &std::path::Path,
    window: Option<u64>,
    steps: &[(&'static str, usize)],
) -> SystemResult {
    let mut r = SystemResult::default();
    let label = match system {
        System::Baton if timing.name != timing::DEFAULT_TIMING.name => {
            format!("{} ({})", system.label(), timing.name)
        }
        _ => system.label(),
    };
    say(&format!("{label}: deploying a group of two pods"));
    let group = match SystemGroup::deploy(cluster, system, timing, out).await {
        Ok(g) => g,
        Err(e) => {
            r.errors.push(format!("deploy: {e:#}"));
            return r;
        }
    };
    if let Some(secs) = window {
        say(&format!("{label}: steady-state window"));
        let pids: Vec<u32> = group
            .holder_and_standby_pids()
            .map(Vec::from)
            .unwrap_or_default();
        match load::window(cluster, secs, &pids, &[]).await {
            Ok(w) => r.idle = Some(w),
            Err(e) => r.errors.push(format!("window: {e:#}")),
        }
    }
    for &(scenario, n) in steps {
        let mut consecutive = 0;
        for i in 0..n {
            say(&format!("{label}: {scenario} {}/{n}", i + 1));
            let res = match scenario {
                "failover" => group.failover(i).await,
                "planned" => group.planned(i).await,
                "sigkill" => group.killed(i).await,
                "frozen" => group.frozen(i).await,
                other => unreachable!("no scenario {other}"),
            };
            match res {
                Ok(run) => {
                    say(&format!(
                        "  {:.3} s (detection {:?})",
                        run.total,
                        run.detection.map(|d| (d * 1000.0).round() / 1000.0)
                    ));
                    r.runs.push(run);
                    consecutive = 0;
                }
                Err(e) => {
                    say(&format!("  failed: {e:#}"));
                    r.errors.push(format!("{scenario} {i}: {e:#}"));
                    consecutive += 1;
                    if consecutive >= 3 {
                        break;
                    }
                }
            }
        }
    }
    if system != System::Baton {
        r.kubectl = kubectl_costs(&std::fs::read_to_string(&group.cost_file).unwrap_or_default());
    }
    let name = group.ns.name.clone();
    group.stop().await;
    scale::wait_namespace_gone(cluster, &name, std::time::Duration::from_secs(120)).await;
    r
}

/// KiB as MiB with one decimal.
fn mib(kib: f64) -> String {
    format!("{:.1}", kib / 1024.0)
}
