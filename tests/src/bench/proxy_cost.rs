//! What the sidecar's proxy costs (design rule 11), on the real node with
//! the images' release binaries: the same open-loop load, a fixed number of
//! requests a second over kept-alive connections, sent on each path to the
//! holder's app in turn (straight to the app, through the holder's proxy,
//! through a standby's proxy that forwards to the holder, and through the
//! ClusterIP of either kind of Service), with both sidecars' CPU and memory
//! over each window; then each path's throughput with a fixed number of
//! clients calling back to back.

use std::{
    fmt::Write as _,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::time::MissedTickBehavior;

use super::{
    measure::{ProcSample, cpu_percent, proc_sample},
    stats::now,
};

/// Clients calling back to back in the throughput measure.
const CLOSED_LOOP_CLIENTS: usize = 16;
/// Requests are sent in batches on this tick: tokio's timer has a
/// millisecond's resolution, finer than 2,000 requests a second need.
const TICK: Duration = Duration::from_millis(5);

/// One path to the holder's app.
pub struct Path {
    pub name: &'static str,
    pub url: String,
}

/// What one path cost.
#[derive(Clone, Debug, Default)]
pub struct PathCost {
    pub name: &'static str,
    /// Requests a second sent and answered in the fixed-rate window.
    pub achieved: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub failed: usize,
    /// Answers by a pod other than the holder (must be none).
    pub by_other: usize,
    /// Each sidecar's CPU over the fixed-rate window, % of one core.
    pub holder_cpu: f64,
    pub standby_cpu: f64,
    /// Each sidecar's resident memory at the end of the window, KiB.
    pub holder_rss_kib: u64,
    pub standby_rss_kib: u64,
    /// Requests a second answered with [`CLOSED_LOOP_CLIENTS`] clients
    /// calling back to back.
    pub throughput: f64,
}

#[derive(Clone, Debug, Default)]
pub struct ProxyCost {
    pub rate: u32,
    pub secs: f64,
    pub paths: Vec<PathCost>,
}

/// One request's latency in ms, or its failure; and who answered.
type Outcome = Result<(f64, String), String>;

async fn get(http: &reqwest::Client, url: &str) -> Outcome {
    let t = Instant::now();
    let body = http
        .get(url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| e.to_string())?
        .text()
        .await
        .map_err(|e| e.to_string())?;
    let pod = body
        .trim()
        .strip_prefix("hello from ")
        .ok_or_else(|| format!("unexpected answer {body:?}"))?;
    Ok((t.elapsed().as_secs_f64() * 1000.0, pod.to_owned()))
}

/// `rate` requests a second to `url` for `window`, each in a task of its
/// own (open loop: a slow answer holds no later request back).
async fn fixed_rate(
    http: &reqwest::Client,
    url: &str,
    rate: u32,
    window: Duration,
) -> Vec<Outcome> {
    let outcomes: Arc<Mutex<Vec<Outcome>>> = Arc::default();
    let per_tick = (f64::from(rate) * TICK.as_secs_f64()).round() as usize;
    let ticks = (window.as_secs_f64() / TICK.as_secs_f64()) as usize;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..ticks {
        tick.tick().await;
        for _ in 0..per_tick {
            let (http, url, outcomes) = (http.clone(), url.to_owned(), outcomes.clone());
            tasks.spawn(async move {
                let o = get(&http, &url).await;
                outcomes.lock().expect("not poisoned").push(o);
            });
        }
    }
    while tasks.join_next().await.is_some() {}
    Arc::try_unwrap(outcomes)
        .map(|m| m.into_inner().expect("not poisoned"))
        .unwrap_or_default()
}

/// Answers a second with [`CLOSED_LOOP_CLIENTS`] clients calling `url`
/// back to back for `window`.
async fn closed_loop(http: &reqwest::Client, url: &str, window: Duration) -> f64 {
    let deadline = Instant::now() + window;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CLOSED_LOOP_CLIENTS {
        let (http, url) = (http.clone(), url.to_owned());
        tasks.spawn(async move {
            let mut answered = 0usize;
            while Instant::now() < deadline {
                if get(&http, &url).await.is_ok() {
                    answered += 1;
                }
            }
            answered
        });
    }
    let mut answered = 0;
    while let Some(n) = tasks.join_next().await {
        answered += n.unwrap_or_default();
    }
    answered as f64 / window.as_secs_f64()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Measures every path in turn; `sidecars` are the (holder, standby)
/// sidecar processes, `holder` the pod every answer must come from.
pub async fn measure(
    paths: &[Path],
    holder: &str,
    sidecars: (u32, u32),
    rate: u32,
    window: Duration,
    say: impl Fn(&str),
) -> anyhow::Result<ProxyCost> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let sample = |pid| proc_sample(pid).context("a sidecar's /proc");
    let mut cost = ProxyCost {
        rate,
        secs: window.as_secs_f64(),
        paths: Vec::new(),
    };
    for path in paths {
        say(&format!("proxy cost: {}", path.name));
        // Warm up: connections opened, caches filled.
        fixed_rate(&http, &path.url, rate, Duration::from_secs(1)).await;
        let before: (ProcSample, ProcSample) = (sample(sidecars.0)?, sample(sidecars.1)?);
        let started = now();
        let outcomes = fixed_rate(&http, &path.url, rate, window).await;
        let secs = now() - started;
        let after: (ProcSample, ProcSample) = (sample(sidecars.0)?, sample(sidecars.1)?);
        let mut latencies: Vec<f64> = outcomes
            .iter()
            .filter_map(|o| o.as_ref().ok())
            .map(|(ms, _)| *ms)
            .collect();
        latencies.sort_by(f64::total_cmp);
        let by_other = outcomes
            .iter()
            .filter(|o| matches!(o, Ok((_, pod)) if pod != holder))
            .count();
        let throughput = closed_loop(&http, &path.url, window / 2).await;
        cost.paths.push(PathCost {
            name: path.name,
            achieved: latencies.len() as f64 / secs,
            p50_ms: percentile(&latencies, 0.5),
            p99_ms: percentile(&latencies, 0.99),
            failed: outcomes.iter().filter(|o| o.is_err()).count(),
            by_other,
            holder_cpu: cpu_percent(&before.0, &after.0, secs),
            standby_cpu: cpu_percent(&before.1, &after.1, secs),
            holder_rss_kib: after.0.rss_kib,
            standby_rss_kib: after.1.rss_kib,
            throughput,
        });
    }
    Ok(cost)
}

impl ProxyCost {
    /// The report's table; the first path is the direct one the others
    /// are compared with.
    pub fn markdown(&self) -> String {
        let mut md = format!(
            "What the proxy costs: {} requests/s for {:.0} s on each path in turn, over kept-alive connections, open loop (each request in a task of its own), sent from the cluster's network namespace by the bench (a debug build sharing the machine's 2 cores with everything else); then each path's throughput with {CLOSED_LOOP_CLIENTS} clients calling back to back. The sidecars' CPU is over the fixed-rate window, in % of one core. Latency is per request, from its send to its whole answer.\n\n| path | answered, requests/s | p50, ms | p99, ms | added p50 / p99 vs the first row, ms | failed | answered by another pod than the holder | holder's sidecar CPU, % | standby's sidecar CPU, % | holder's / standby's sidecar RSS, MiB | throughput, requests/s |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
            self.rate, self.secs
        );
        let Some(direct) = self.paths.first() else {
            return md;
        };
        for p in &self.paths {
            let _ = writeln!(
                md,
                "| {} | {:.0} | {:.2} | {:.2} | {:+.2} / {:+.2} | {} | {} | {:.1} | {:.1} | {:.1} / {:.1} | {:.0} |",
                p.name,
                p.achieved,
                p.p50_ms,
                p.p99_ms,
                p.p50_ms - direct.p50_ms,
                p.p99_ms - direct.p99_ms,
                p.failed,
                p.by_other,
                p.holder_cpu,
                p.standby_cpu,
                p.holder_rss_kib as f64 / 1024.0,
                p.standby_rss_kib as f64 / 1024.0,
                p.throughput,
            );
        }
        md
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank_of_the_sorted_latencies() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 51.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert!(percentile(&[], 0.5).is_nan());
    }

    #[test]
    fn every_path_is_compared_with_the_first() {
        let path = |name, p50_ms, p99_ms| PathCost {
            name,
            p50_ms,
            p99_ms,
            ..Default::default()
        };
        let cost = ProxyCost {
            rate: 2000,
            secs: 10.0,
            paths: vec![path("direct", 0.5, 2.0), path("proxy", 0.75, 3.5)],
        };
        let md = cost.markdown();
        assert!(
            md.contains("| direct | 0 | 0.50 | 2.00 | +0.00 / +0.00 |"),
            "{md}"
        );
        assert!(
            md.contains("| proxy | 0 | 0.75 | 3.50 | +0.25 / +1.50 |"),
            "{md}"
        );
    }
}
