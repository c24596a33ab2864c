//! A steady-state window: the API server's request counters scraped at
//! both ends, and the processes of interest sampled from /proc.

use std::time::Duration;

use baton_e2e::harness::Cluster;

use super::{
    measure::{ProcSample, Requests, cpu_percent, proc_sample, rates, requests},
    stats::now,
};

#[derive(Debug, Default, Clone)]
pub struct Window {
    pub secs: f64,
    /// Requests per minute by (resource, verb).
    pub rates: Requests,
    /// Each sampled process's CPU in percent of one core, in the order of
    /// the pids given.
    pub procs_cpu_each: Vec<f64>,
    pub procs_rss_kib: Vec<u64>,
    pub procs_anon_kib: Vec<u64>,
    /// The other processes' CPU, summed, in percent of one core.
    pub others_cpu: f64,
    pub apiserver_cpu: f64,
    pub apiserver_rss_kib: u64,
    pub etcd_cpu: f64,
    /// The whole machine's busy CPU (all but idle and iowait), in percent
    /// of one core: what every process together used.
    pub machine_busy: f64,
}

impl Window {
    /// The sampled processes' CPU together, in percent of one core.
    pub fn procs_cpu(&self) -> f64 {
        self.procs_cpu_each.iter().sum()
    }

    /// Requests per minute on leases and pods (any subresource, any verb).
    pub fn leases_and_pods(&self) -> (f64, f64) {
        let sum = |prefix: &str| {
            self.rates
                .iter()
                .filter(|((r, _), _)| r == prefix || r.starts_with(&format!("{prefix}/")))
                .map(|(_, v)| v)
                .sum()
        };
        (sum("leases"), sum("pods"))
    }

    pub fn total(&self) -> f64 {
        self.rates.values().sum()
    }
}

pub fn scrape(cluster: &Cluster) -> anyhow::Result<Requests> {
    let out = cluster.kubectl(&["get", "--raw", "/metrics"], None);
    anyhow::ensure!(
        out.status.success(),
        "kubectl get --raw /metrics: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(requests(&String::from_utf8_lossy(&out.stdout)))
}

fn component_pid(cluster: &Cluster, name: &str) -> Option<u32> {
    std::fs::read_to_string(cluster.dir.join("pids").join(format!("{name}.pid")))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Measures for `secs`: request rates, CPU/RSS of `pids`, the CPU of
/// `others` together, and the API server's and etcd's. The scrapes' own
/// requests are a few per window.
pub async fn window(
    cluster: &Cluster,
    secs: u64,
    pids: &[u32],
    others: &[u32],
) -> anyhow::Result<Window> {
    let api = component_pid(cluster, "kube-apiserver");
    let etcd = component_pid(cluster, "etcd");
    let sample = |p: Option<u32>| p.and_then(proc_sample);
    let before = scrape(cluster)?;
    let scraped = now();
    // The processes are sampled right around the sleep, with their own
    // clock: a scrape of a saturated API server takes seconds, which
    // must not count as part of the window.
    let procs_before: Vec<Option<ProcSample>> = pids.iter().map(|p| proc_sample(*p)).collect();
    let others_before: Vec<Option<ProcSample>> = others.iter().map(|p| proc_sample(*p)).collect();
    let (api0, etcd0) = (sample(api), sample(etcd));
    let machine0 = machine_jiffies();
    let t0 = now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let machine1 = machine_jiffies();
    let (api1, etcd1) = (sample(api), sample(etcd));
    let procs_after: Vec<Option<ProcSample>> = pids.iter().map(|p| proc_sample(*p)).collect();
    let others_after: Vec<Option<ProcSample>> = others.iter().map(|p| proc_sample(*p)).collect();
    let sampled = now() - t0;
    let after = scrape(cluster)?;
    let mut w = Window {
        secs: sampled,
        rates: rates(&before, &after, now() - scraped),
        ..Window::default()
    };
    for (b, a) in procs_before.into_iter().zip(procs_after) {
        if let (Some(b), Some(a)) = (b, a) {
            w.procs_cpu_each.push(cpu_percent(&b, &a, sampled));
            w.procs_rss_kib.push(a.rss_kib);
            w.procs_anon_kib.push(a.anon_kib);
        }
    }
    w.others_cpu = others_before
        .into_iter()
        .zip(others_after)
        .filter_map(|(b, a)| Some(cpu_percent(&b?, &a?, sampled)))
        .sum();
    if let (Some(a), Some(b)) = (api0, api1) {
        w.apiserver_cpu = cpu_percent(&a, &b, sampled);
        w.apiserver_rss_kib = b.rss_kib;
    }
    if let (Some(a), Some(b)) = (etcd0, etcd1) {
        w.etcd_cpu = cpu_percent(&a, &b, sampled);
    }
    if let (Some((busy0, all0)), Some((busy1, all1))) = (machine0, machine1) {
        let all = all1.saturating_sub(all0).max(1) as f64;
        w.machine_busy = busy1.saturating_sub(busy0) as f64 / all * cores() as f64 * 100.0;
    }
    Ok(w)
}

/// The machine's cores (1 if unknown).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// (busy, all) jiffies of the machine, from /proc/stat's `cpu` line.
fn machine_jiffies() -> Option<(u64, u64)> {
    parse_cpu_line(&std::fs::read_to_string("/proc/stat").ok()?)
}

fn parse_cpu_line(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    // user nice system idle iowait irq softirq steal (guest time is in user).
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let all: u64 = v.iter().sum();
    Some((all - v[3] - v.get(4).copied().unwrap_or(0), all))
}

#[cfg(test)]
mod tests {
    #[test]
    fn machine_busy_is_all_but_idle_and_iowait() {
        let stat = "cpu  100 5 50 800 40 2 3 0 0 0\ncpu0 50 2 25 400 20 1 1 0 0 0\n";
        assert_eq!(super::parse_cpu_line(stat), Some((160, 1000)));
    }
}
