//! The brownout: the API server slow, not dead, at several latencies
//! (`baton_e2e::brownout`, the same measure as the e2e test), under two
//! groups on the real node with the sidecar's default timings, each with a
//! kept-alive client through the ClusterIP (role-label Service, and the
//! whole group through the proxy).

use std::{fmt::Write as _, time::Duration};

use baton_e2e::{
    brownout::{self, Outcome, Plan, RUNNING},
    harness::Cluster,
    workload,
};

/// Every latency's outcomes, or why it broke.
pub struct BrownoutResult {
    pub secs: u64,
    pub rows: Vec<(f64, Result<Vec<Outcome>, String>)>,
}

pub async fn run(cluster: &Cluster, latencies: &[f64], secs: u64, say: fn(&str)) -> BrownoutResult {
    let mut rows = Vec::new();
    for &latency in latencies {
        say(&format!(
            "brownout: API server frozen {latency} s in every {:.1} s for {secs} s",
            latency + RUNNING.as_secs_f64()
        ));
        let plan = Plan {
            frozen: Duration::from_secs_f64(latency),
            baseline: Duration::from_secs(30),
            brownout: Duration::from_secs(secs),
        };
        let cluster = cluster.clone();
        let name = format!("brownout-{}", (latency * 1000.0) as u64);
        // A task of its own: a check that panics breaks this row only.
        let measured = tokio::spawn(async move {
            brownout::run(&cluster, &name, plan, workload::ON_REAL_NODE).await
        })
        .await
        .map_err(|e| format!("broke: {e}"));
        if let Ok(outcomes) = &measured {
            for o in outcomes {
                say(&format!("brownout: {o}"));
            }
        }
        rows.push((latency, measured));
    }
    BrownoutResult { secs, rows }
}

impl BrownoutResult {
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(
            md,
            "kube-apiserver frozen (SIGSTOP) for the latency given, then resumed for {:.1} s, over and over for {} s: every client of the API server (baton, kubelet, controllers, kube-proxy) waits up to that long for an answer. Two groups of two pods on the real node with the sidecar's default timings (renew every 2 s, renew deadline 4 s, API timeout 2 s), each with two clients at {} requests/s through the ClusterIP, one keeping its connections and one opening one per request. Role changes are those of the role a sidecar tells its app (`/status`, sampled every 0.1 s); API calls are `baton_api_calls_total` of both sidecars, over 30 s before and over the brownout.\n",
            RUNNING.as_secs_f64(),
            self.secs,
            brownout::RATE
        );
        let _ = writeln!(
            md,
            "| API latency (s) | Service | role changes | s with no pod told active | most told active | Lease transitions | failed / requests | answered by another pod | API calls/s before | during |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
        );
        for (latency, measured) in &self.rows {
            match measured {
                Ok(outcomes) => {
                    for o in outcomes {
                        let _ = writeln!(
                            md,
                            "| {latency} | {} | {} | {:.1} | {} | {} | {} / {} | {} | {:.2} | {:.2} |",
                            o.shape.label(),
                            o.role_changes,
                            o.without_active.as_secs_f64(),
                            o.most_active,
                            o.transitions,
                            o.failed,
                            o.requests,
                            o.by_another_pod,
                            o.calls_per_s_before,
                            o.calls_per_s_during,
                        );
                    }
                }
                Err(e) => {
                    let _ = writeln!(md, "| {latency} | {e} | | | | | | | | |");
                }
            }
        }
        md
    }
}
