//! Settings versus failover time and API cost (the table of
//! docs/operations.md): for each timing, a group of two pods on KWOK nodes
//! with the sidecars set by their environment (what the injection
//! annotations set), a steady-state window, unplanned failovers, and the
//! holder's sidecar frozen as on a lost node.

use std::fmt::Write as _;

use baton_sidecar::Settings;
use clap::Parser as _;

use super::{SystemResult, load::Window, scenario::Run, stats::summary};

/// One set of the sidecar's timing settings, as the sidecar's environment
/// (what the injection annotations set).
pub struct Timing {
    pub name: &'static str,
    /// Empty for the defaults.
    pub env: &'static [(&'static str, &'static str)],
}

pub static DEFAULT_TIMING: Timing = Timing {
    name: "default",
    env: &[],
};

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
    },
    &Timing {
        name: "relaxed",
        env: &[
            ("BATON_RENEW_PERIOD", "5s"),
            ("BATON_RENEW_DEADLINE", "10s"),
            ("BATON_LEASE_DURATION", "15s"),
        ],
    },
    // Kubernetes' node Leases: renewed every 10 s, 40 s long.
    &Timing {
        name: "node-like",
        env: &[
            ("BATON_RENEW_PERIOD", "10s"),
            ("BATON_RENEW_DEADLINE", "30s"),
            ("BATON_LEASE_DURATION", "40s"),
        ],
    },
];

/// `BATON_RENEW_PERIOD` → `renew-period`: the flag, and the annotation
/// without `baton.dev/`.
fn setting_name(env: &str) -> String {
    env.trim_start_matches("BATON_")
        .to_lowercase()
        .replace('_', "-")
}

impl Timing {
    /// The sidecar's settings under this timing, parsed and checked by the
    /// sidecar's own code, so that the bench's clocks (probe period, renew
    /// period, lease duration) are the sidecar's.
    pub fn sidecar(&self) -> Settings {
        let flags = self
            .env
            .iter()
            .map(|(k, v)| format!("--{}={v}", setting_name(k)));
        let required = [
            "baton-sidecar",
            "--pod-name=p",
            "--pod-namespace=n",
            "--lease-name=l",
        ];
        let settings =
            Settings::try_parse_from(required.map(String::from).into_iter().chain(flags))
                .unwrap_or_else(|e| panic!("timing {}: {e}", self.name));
        settings
            .validate()
            .unwrap_or_else(|e| panic!("timing {}: {e}", self.name));
        settings
    }

    /// The settings as annotations (`baton.dev/` left out), e.g.
    /// `renew-period 5s, lease-duration 15s`.
    pub fn annotations(&self) -> String {
        if self.env.is_empty() {
            let s = self.sidecar();
            return format!(
                "the defaults: probe-period {:?}, renew-period {:?}, retry-period {:?}, renew-deadline {:?}, lease-duration {:?}",
                s.probe_period, s.renew_period, s.retry_period, s.renew_deadline, s.lease_duration
            );
        }
        self.env
            .iter()
            .map(|(k, v)| format!("{} {v}", setting_name(k)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The report's table: one row per timing.
pub fn markdown(results: &[(&Timing, SystemResult)], background: &Window) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "| settings (`baton.dev/` annotations) | unplanned failover, s (median / p99) | … detection, s (median / p99) | holder lost (sidecar frozen): standby takes over, s (median / max) | Lease writes/min per group (60 / renew-period) | API requests/min per group: leases / pods / all (background subtracted) | sidecar CPU at rest, % of a core: holder / standby | errors |"
    );
    let _ = writeln!(md, "| --- | --- | --- | --- | --- | --- | --- | --- |");
    let (bg_leases, bg_pods) = background.leases_and_pods();
    for (timing, r) in results {
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
                        60.0 / timing.sidecar().renew_period.as_secs_f64()
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
            timing.name,
            timing.annotations(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_timing_is_one_the_sidecar_accepts() {
        for t in TIMINGS {
            let s = t.sidecar();
            assert_eq!(
                t.env.is_empty(),
                s == DEFAULT_TIMING.sidecar(),
                "{}",
                t.name
            );
        }
        assert_eq!(
            TIMINGS[2].annotations(),
            "renew-period 5s, renew-deadline 10s, lease-duration 15s"
        );
        assert!(DEFAULT_TIMING.annotations().contains("lease-duration 6s"));
    }
}
