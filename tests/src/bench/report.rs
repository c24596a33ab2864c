//! The bench's report: `report.md` (every part's section, in the order
//! they ran), the CSV files of the raw runs and the SVG plots.

use std::{collections::BTreeMap, fmt::Write as _};

use baton_e2e::harness::repo_root;

use super::{
    Args, SystemResult, brownout, clusterip, kle,
    load::{self, Window},
    measure, mib, nodes, scale,
    scenario::{Run, System},
    soak,
    stats::summary,
    svg, timing, webhook,
};

pub(super) struct Report<'a> {
    pub(super) args: &'a Args,
    pub(super) background: &'a Window,
    pub(super) systems: &'a [(System, SystemResult)],
    pub(super) webhook: Option<&'a Result<webhook::WebhookResult, String>>,
    pub(super) kle: Option<&'a kle::KleRace>,
    pub(super) clusterip: &'a [clusterip::ClusterIpResult],
    pub(super) soak: Option<&'a soak::SoakResult>,
    pub(super) brownout: Option<&'a brownout::BrownoutResult>,
    pub(super) nodes: Option<&'a nodes::NodesResult>,
    pub(super) timings: &'a [(&'static timing::Timing, SystemResult)],
    pub(super) scales: &'a [scale::ScaleResult],
    pub(super) minutes: f64,
}

impl Report<'_> {
    fn runs<'b>(
        &'b self,
        sys: &'b SystemResult,
        scenario: &'b str,
    ) -> impl Iterator<Item = &'b Run> + 'b {
        sys.runs.iter().filter(move |r| r.scenario == scenario)
    }

    fn col(&self, f: impl Fn(&System, &SystemResult) -> String) -> String {
        self.systems
            .iter()
            .map(|(s, r)| format!(" {} |", f(s, r)))
            .collect()
    }

    fn machine(&self) -> Vec<(String, String)> {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpu = read("/proc/cpuinfo")
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .unwrap_or("")
            .trim()
            .to_string();
        let mem = read("/proc/meminfo")
            .lines()
            .find(|l| l.starts_with("MemTotal"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(String::new(), |k| format!("{:.1} GiB", k / 1024.0 / 1024.0));
        let versions = read(
            &repo_root()
                .join("tests/cluster/versions.env")
                .to_string_lossy(),
        )
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains('='))
        .collect::<Vec<_>>()
        .join(", ");
        let git = std::process::Command::new("git")
            .args([
                "-C",
                &repo_root().to_string_lossy(),
                "rev-parse",
                "--short",
                "HEAD",
            ])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        let nproc = load::cores();
        vec![
            ("nproc".into(), nproc.to_string()),
            ("CPU".into(), cpu),
            ("memory".into(), mem),
            (
                "kernel".into(),
                read("/proc/sys/kernel/osrelease").trim().to_string(),
            ),
            ("upstream".into(), versions),
            (
                "baton".into(),
                format!(
                    "{} (git {git}), {} builds ({})",
                    env!("CARGO_PKG_VERSION"),
                    build_kind(&self.args.bin_dir),
                    self.args.bin_dir.display()
                ),
            ),
            ("bench took".into(), format!("{:.1} min", self.minutes)),
        ]
    }

    /// The main table: one column per system.
    pub(super) fn table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(t, "| measure |{}", self.col(|s, _| s.label()));
        let _ = writeln!(t, "| --- |{}", self.col(|_, _| "---".into()));
        let sum = |sys: &SystemResult, sc: &str, f: &dyn Fn(&Run) -> Option<f64>| {
            summary(&self.runs(sys, sc).filter_map(f).collect::<Vec<_>>())
        };
        let mut row = |name: &str, f: &dyn Fn(&System, &SystemResult) -> String| {
            let _ = writeln!(t, "| {name} |{}", self.col(f));
        };
        row(
            "unplanned failover: app fails → endpoint is the standby, s (median / p99)",
            &|_, r| sum(r, "failover", &|x| Some(x.total)).cell(2),
        );
        row(
            "… detection: until the decision (sidecar log / controller log), s",
            &|_, r| sum(r, "failover", &|x| x.detection).cell(2),
        );
        row(
            "… handover: decision → endpoint switched, s",
            &|_, r| sum(r, "failover", &|x| x.detection.map(|d| x.total - d)).cell(2),
        );
        row(
            "planned handover (active pod deleted): switch time, s",
            &|_, r| sum(r, "planned", &|x| Some(x.total)).cell(2),
        );
        row(
            "… failed client requests per handover (of ~100/s)",
            &|_, r| sum(r, "planned", &|x| Some(x.failed as f64)).cell(0),
        );
        row("holder's sidecar SIGKILLed: takeover, s", &|s, r| {
            if *s == System::Baton {
                sum(r, "sigkill", &|x| Some(x.total)).cell(2)
            } else {
                "n/a (no holder process)".into()
            }
        });
        row(
            "time with two pods labelled active, all runs, s (total / worst run)",
            &|_, r| {
                let v: Vec<f64> = r.runs.iter().map(|x| x.two_active).collect();
                format!("{:.3} / {:.3}", v.iter().sum::<f64>(), summary(&v).max)
            },
        );
        row(
            "time with no pod labelled active, all runs, s (total / worst run)",
            &|_, r| {
                let v: Vec<f64> = r.runs.iter().map(|x| x.none_active).collect();
                format!("{:.3} / {:.3}", v.iter().sum::<f64>(), summary(&v).max)
            },
        );
        row(
            "sidecar memory idle, MiB per sidecar: RSS (private part, RssAnon)",
            &|s, r| match (s, &r.idle) {
                (System::Baton, Some(w)) if !w.procs_rss_kib.is_empty() => format!(
                    "{} ({})",
                    mib(w.procs_rss_kib.iter().sum::<u64>() as f64 / w.procs_rss_kib.len() as f64),
                    mib(w.procs_anon_kib.iter().sum::<u64>() as f64
                        / w.procs_anon_kib.len().max(1) as f64)
                ),
                (System::Baton, _) => "–".into(),
                _ => "none (no sidecar)".into(),
            },
        );
        row(
            "sidecar CPU idle, % of a core per sidecar",
            &|s, r| match (s, &r.idle) {
                (System::Baton, Some(w)) if !w.procs_rss_kib.is_empty() => {
                    format!("{:.2}", w.procs_cpu() / w.procs_rss_kib.len() as f64)
                }
                _ => "–".into(),
            },
        );
        row(
            "sidecars during failover: CPU % of a core (both) / max RSS MiB",
            &|_, r| {
                let cpu = sum(r, "failover", &|x| x.cpu_percent);
                let rss = sum(r, "failover", &|x| x.rss_kib.map(|k| k as f64 / 1024.0));
                if cpu.n == 0 {
                    "–".into()
                } else {
                    format!("{:.1} / {:.1}", cpu.median, rss.max)
                }
            },
        );
        row(
            "baseline: per kubectl run, wall s / CPU s / max RSS MiB (median); kubectl runs per poll: quiet / with a swap",
            &|s, r| {
                if *s == System::Baton || r.kubectl.is_empty() {
                    return "–".into();
                }
                let med = |f: &dyn Fn(&measure::KubectlCost) -> f64| {
                    summary(&r.kubectl.iter().map(f).collect::<Vec<_>>()).median
                };
                let mut per_poll: BTreeMap<u64, usize> = BTreeMap::new();
                for c in &r.kubectl {
                    *per_poll.entry(c.poll).or_default() += 1;
                }
                let quiet = per_poll.values().copied().min().unwrap_or(0);
                let busy = per_poll.values().copied().max().unwrap_or(0);
                format!(
                    "{:.2} / {:.2} / {:.0}; {quiet} / {busy}",
                    med(&|c| c.wall),
                    med(&|c| c.cpu),
                    med(&|c| c.max_rss_kib as f64) / 1024.0
                )
            },
        );
        let bg = self.background.leases_and_pods();
        row(
            "API requests per minute per group, steady state: leases / pods / all (background subtracted)",
            &|_, r| match &r.idle {
                Some(w) => {
                    let (l, p) = w.leases_and_pods();
                    format!(
                        "{:.0} / {:.0} / {:.0}",
                        l - bg.0,
                        p - bg.1,
                        w.total() - self.background.total()
                    )
                }
                None => "–".into(),
            },
        );
        t
    }

    pub(super) fn write(&self, out: &std::path::Path) -> anyhow::Result<()> {
        let mut md = String::new();
        let _ = writeln!(md, "# baton bench\n");
        let _ = writeln!(
            md,
            "Command: `make bench` (driver `baton-bench {}`), on a fresh local control plane in its own network namespace.\n",
            std::env::args().skip(1).collect::<Vec<_>>().join(" ")
        );
        let _ = writeln!(md, "## Machine\n\n| | |\n| --- | --- |");
        for (k, v) in self.machine() {
            let _ = writeln!(md, "| {k} | {v} |");
        }
        for c in self.clusterip {
            let _ = writeln!(
                md,
                "\n## Through the ClusterIP, on the real node: {}\n",
                c.mode.title()
            );
            md.push_str(&c.markdown());
        }
        if let Some(s) = self.soak {
            let _ = writeln!(
                md,
                "\n## Soak: apps that close every connection, on the real node\n"
            );
            md.push_str(&s.markdown());
        }
        if let Some(b) = self.brownout {
            let _ = writeln!(md, "\n## Brownout: a slow API server, on the real node\n");
            md.push_str(&b.markdown());
        }
        if let Some(n) = self.nodes {
            let _ = writeln!(md, "\n## Node events: two real nodes\n");
            md.push_str(&n.markdown());
        }
        let a = self.args;
        let _ = writeln!(md, "\n## baton vs the baseline controller\n");
        let _ = writeln!(
            md,
            "This section, the webhook's and the scale measure run on KWOK nodes: the pod runner starts the {} binaries as local processes; there is no kubelet and no kube-proxy, and the times are the EndpointSlice's, not a client's.\n",
            build_kind(&a.bin_dir)
        );
        let _ = writeln!(
            md,
            "Runs: unplanned failover {} (baton) / {} (baseline {} s) / {} (baseline {} s); planned handover {} (baton, the baselines half or at least 2); SIGKILL {}; steady-state windows of {:.0} s.\n",
            a.failover_runs,
            a.baseline_runs,
            a.fast_interval,
            a.slow_runs,
            a.slow_interval,
            a.planned_runs,
            a.kill_runs,
            self.background.secs
        );
        let _ = writeln!(
            md,
            "Baseline: `tests/bench/baseline-controller.sh` (bash, kubectl, curl; polls both pods and swaps labels) against the same pods without the sidecar. Times are from the driver's watches (as kube-proxy sees the EndpointSlice). p99 is nearest-rank: with fewer than 100 runs it is the worst run.\n"
        );
        md.push_str(&self.table());
        let _ = writeln!(
            md,
            "\nBackground (empty cluster) requests per minute: leases {:.0}, pods {:.0}, all {:.0}; API server CPU {:.1} % of a core, RSS {} MiB.\n",
            self.background.leases_and_pods().0,
            self.background.leases_and_pods().1,
            self.background.total(),
            self.background.apiserver_cpu,
            mib(self.background.apiserver_rss_kib as f64)
        );
        for (s, r) in self.systems {
            if let Some(w) = &r.idle {
                let _ = writeln!(
                    md,
                    "Steady state, {}: API server CPU {:.1} % of a core (background {:.1}); requests per minute by resource and verb: {}.\n",
                    s.label(),
                    w.apiserver_cpu,
                    self.background.apiserver_cpu,
                    w.rates
                        .iter()
                        .filter(|((res, _), v)| (res.starts_with("leases")
                            || res.starts_with("pods"))
                            && **v >= 0.5)
                        .map(|((res, verb), v)| format!("{verb} {res} {v:.0}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            for e in &r.errors {
                let _ = writeln!(md, "- {} error: {e}", s.label());
            }
        }
        let _ = writeln!(md, "\n![failover times](failover-distribution.svg)\n");
        for (s, _) in self.systems {
            let f = format!("timeline-{}.svg", s.slug());
            if out.join(&f).exists() {
                let _ = writeln!(md, "![timeline {}]({f})\n", s.label());
            }
        }
        if let Some(k) = self.kle {
            let _ = writeln!(
                md,
                "## kube-leader-election 0.44 racing for one Lease ({} rounds each)\n",
                k.rounds
            );
            md.push_str(&k.markdown());
            md.push('\n');
        }
        if let Some(w) = self.webhook {
            let _ = writeln!(md, "## Webhook\n");
            match w {
                Ok(w) => {
                    let _ = writeln!(
                        md,
                        "`baton-webhook` ({} build) beside the API server, self-signed (`--ca-out-file`), registered for one namespace; {} pods owned by an annotated StatefulSet (so the webhook looks the owner up for each) created with server-side dry run (admission runs in full, nothing is stored), 8 at a time. Direct load: AdmissionReviews of a bare pod that opts in by annotation (no owner lookup).\n",
                        build_kind(&self.args.bin_dir),
                        w.pods
                    );
                    let _ = writeln!(md, "| measure | value |\n| --- | --- |");
                    let _ = writeln!(
                        md,
                        "| admission latency from `apiserver_admission_webhook_admission_duration_seconds`, ms (p50 / p99, bucket-interpolated; {} calls) | {} / {} |",
                        w.admission_count,
                        w.admission_p50.map_or("–".into(), |v| format!("{v:.1}")),
                        w.admission_p99.map_or("–".into(), |v| format!("{v:.1}"))
                    );
                    let _ = writeln!(
                        md,
                        "| owner lookups during those creates: from the webhook's cache / from the API server | {:.0} / {:.0} |",
                        w.owner_lookups_cache, w.owner_lookups_api
                    );
                    let _ = writeln!(
                        md,
                        "| pod create (dry run) through the webhook, client side, ms | {} |",
                        w.create_with.cell(1)
                    );
                    let _ = writeln!(
                        md,
                        "| pod create (dry run) without a webhook, ms | {} |",
                        w.create_without.cell(1)
                    );
                    let why = if w.rejections.is_empty() {
                        String::new()
                    } else {
                        format!(" (first: {})", w.rejections.join("; ").replace('|', "/"))
                    };
                    let _ = writeln!(md, "| creates rejected | {}{why} |", w.rejected);
                    let _ = writeln!(
                        md,
                        "| direct POST /mutate, {} connections: requests/s (errors) | {:.0} ({}) |",
                        w.direct_concurrency, w.direct_rps, w.direct_errors
                    );
                    let _ = writeln!(
                        md,
                        "| direct POST /mutate latency, ms | {} |",
                        w.direct_latency.cell(2)
                    );
                    let _ = writeln!(
                        md,
                        "| webhook RSS after the load, MiB | {} |",
                        mib(w.webhook_rss_kib as f64)
                    );
                }
                Err(e) => {
                    let _ = writeln!(md, "The webhook measure failed: {e}");
                }
            }
        }
        if !self.timings.is_empty() {
            let _ = writeln!(
                md,
                "\n## Settings versus failover time and API cost\n\nOne group of two pods per timing, on KWOK nodes ({} builds): {} unplanned failovers, the holder's sidecar frozen {} times (SIGSTOP: no release and, unlike SIGKILL, no restart that renews the Lease again), and a steady-state window of {} s.\n",
                build_kind(&self.args.bin_dir),
                self.args.timing_failovers,
                self.args.timing_freezes,
                self.args.timing_window
            );
            md.push_str(&timing::markdown(self.timings, self.background));
        }
        if !self.scales.is_empty() {
            let _ = writeln!(
                md,
                "\n## Scale: groups of two pods with the sidecar on one control plane\n"
            );
            if !self.args.scale_namespace_labels.is_empty() {
                let _ = writeln!(
                    md,
                    "Each step's namespace labelled `{}` before its groups were created.\n",
                    self.args.scale_namespace_labels.join("`, `")
                );
            }
            let _ = writeln!(
                md,
                "| groups | settle s | failover s (median / p99) | detection s | failed failovers | flaps in window | leases+pods req/min per group | all req/min | API server CPU % | API server RSS MiB | etcd CPU % | sidecars: total RSS MiB (private) / CPU % of a core | apps CPU % | machine busy, % of a core (of {}) | admission policies until settled: s summed / requests | note |",
                100 * load::cores()
            );
            let _ = writeln!(
                md,
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
            );
            let bg = self.background.leases_and_pods();
            for s in self.scales {
                let apps = s
                    .window
                    .as_ref()
                    .map_or("–".into(), |w| format!("{:.0}", w.others_cpu));
                let busy = s
                    .window
                    .as_ref()
                    .map_or("–".into(), |w| format!("{:.0}", w.machine_busy));
                let (lp, all, api, apirss, etcd, side) = match &s.window {
                    Some(w) => {
                        let (l, p) = w.leases_and_pods();
                        (
                            format!("{:.1}", (l + p - bg.0 - bg.1) / s.groups as f64),
                            format!("{:.0}", w.total()),
                            format!("{:.0}", w.apiserver_cpu),
                            mib(w.apiserver_rss_kib as f64),
                            format!("{:.0}", w.etcd_cpu),
                            format!(
                                "{} ({}) / {:.0}",
                                mib(w.procs_rss_kib.iter().sum::<u64>() as f64),
                                mib(w.procs_anon_kib.iter().sum::<u64>() as f64),
                                w.procs_cpu()
                            ),
                        )
                    }
                    None => Default::default(),
                };
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} | {lp} | {all} | {api} | {apirss} | {etcd} | {side} | {apps} | {busy} | {} | {} |",
                    s.groups,
                    s.settle.map_or("–".into(), |v| format!("{v:.0}")),
                    s.failover.cell(2),
                    s.detection.cell(2),
                    s.failed_failovers,
                    s.flaps,
                    s.policy_admission
                        .map_or("–".into(), |(secs, n)| format!("{secs:.1} / {n:.0}")),
                    s.broke.clone().unwrap_or_default()
                );
            }
        }
        let _ = writeln!(
            md,
            "\nRaw data: `runs.csv`, `windows.csv`, `scale.csv`; controller logs and kubectl costs beside them."
        );
        std::fs::write(out.join("report.md"), md)?;
        self.write_csv(out)?;
        self.write_svg(out)?;
        Ok(())
    }

    fn write_csv(&self, out: &std::path::Path) -> anyhow::Result<()> {
        let mut runs = String::from(
            "system,scenario,run,t0,total_s,detection_s,two_active_s,none_active_s,requests,failed,sidecar_cpu_percent,sidecar_rss_kib\n",
        );
        for (_, r) in self.systems {
            for x in &r.runs {
                let _ = writeln!(
                    runs,
                    "{},{},{},{:.3},{:.4},{},{:.4},{:.4},{},{},{},{}",
                    x.system,
                    x.scenario,
                    x.index,
                    x.t0,
                    x.total,
                    x.detection.map_or(String::new(), |d| format!("{d:.4}")),
                    x.two_active,
                    x.none_active,
                    x.requests,
                    x.failed,
                    x.cpu_percent.map_or(String::new(), |c| format!("{c:.2}")),
                    x.rss_kib.map_or(String::new(), |k| k.to_string())
                );
            }
        }
        std::fs::write(out.join("runs.csv"), runs)?;
        let mut win = String::from("window,resource,verb,per_minute\n");
        let mut add = |name: &str, w: &Window| {
            for ((res, verb), v) in &w.rates {
                let _ = writeln!(win, "{name},{res},{verb},{v:.2}");
            }
        };
        add("background", self.background);
        for (s, r) in self.systems {
            if let Some(w) = &r.idle {
                add(&s.slug(), w);
            }
        }
        for s in self.scales {
            if let Some(w) = &s.window {
                add(&format!("scale-{}", s.groups), w);
            }
        }
        std::fs::write(out.join("windows.csv"), win)?;
        let mut sc = String::from(
            "groups,settle_s,failover_median_s,failover_p99_s,failed_failovers,flaps,all_req_per_min,apiserver_cpu_percent,sidecar_rss_total_kib,sidecar_cpu_percent,broke\n",
        );
        for s in self.scales {
            let w = s.window.clone().unwrap_or_default();
            let _ = writeln!(
                sc,
                "{},{},{:.3},{:.3},{},{},{:.0},{:.1},{},{:.1},\"{}\"",
                s.groups,
                s.settle.unwrap_or(f64::NAN),
                s.failover.median,
                s.failover.p99,
                s.failed_failovers,
                s.flaps,
                w.total(),
                w.apiserver_cpu,
                w.procs_rss_kib.iter().sum::<u64>(),
                w.procs_cpu(),
                s.broke.clone().unwrap_or_default().replace('"', "'")
            );
        }
        std::fs::write(out.join("scale.csv"), sc)?;
        Ok(())
    }

    fn write_svg(&self, out: &std::path::Path) -> anyhow::Result<()> {
        let series: Vec<(String, Vec<f64>)> = self
            .systems
            .iter()
            .map(|(s, r)| {
                (
                    s.label(),
                    self.runs(r, "failover").map(|x| x.total).collect(),
                )
            })
            .collect();
        std::fs::write(
            out.join("failover-distribution.svg"),
            svg::distributions(
                "Unplanned failover: app fails → Service endpoint is the standby",
                &series,
            ),
        )?;
        for (s, r) in self.systems {
            // The median run: typical, not the luckiest.
            let mut fo: Vec<&Run> = self.runs(r, "failover").collect();
            fo.sort_by(|a, b| a.total.total_cmp(&b.total));
            if let Some(run) = fo.get(fo.len() / 2) {
                let mut marks = vec![("app fails", run.t0)];
                if let Some(d) = run.detection {
                    marks.push(("decision", run.t0 + d));
                }
                marks.push(("switched", run.t0 + run.total));
                let end = run.t0 + run.total * 1.15 + 0.3;
                let title = format!(
                    "{}: one unplanned failover (median run, {:.2} s)",
                    s.label(),
                    run.total
                );
                std::fs::write(
                    out.join(format!("timeline-{}.svg", s.slug())),
                    svg::timeline(&title, run.t0, end, &run.history, &marks),
                )?;
            }
        }
        Ok(())
    }
}

/// Which build the binaries of `dir` are: `make bench` gives the images'
/// release binaries (target/image/bin), `cargo build` the debug ones.
fn build_kind(dir: &std::path::Path) -> &'static str {
    let release =
        dir.ends_with("image/bin") || dir.components().any(|c| c.as_os_str() == "release");
    if release { "release" } else { "debug" }
}
