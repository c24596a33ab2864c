//! Reading the numbers: a process's memory and CPU from /proc, the API
//! server's request counters and admission histogram from its /metrics,
//! and the baseline's per-kubectl costs.

use std::collections::BTreeMap;

/// Memory and CPU time of one process, from /proc/<pid>/{status,stat} and
/// its threads' `sched`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcSample {
    pub rss_kib: u64,
    /// The private part of the RSS (RssAnon): what each extra process costs;
    /// the rest is mostly the binary's pages, shared by all its processes.
    pub anon_kib: u64,
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    /// CPU time of the live threads in nanoseconds (the scheduler's
    /// `se.sum_exec_runtime`), where the kernel shows it. Ticks are
    /// sampled at 100 Hz: a sidecar using 1 ms a second is charged a
    /// handful of ticks a minute, too few to tell 0.1 % from 0.15 %.
    pub cpu_ns: Option<u64>,
}

/// Clock ticks per second of /proc/<pid>/stat (USER_HZ, 100 on Linux).
pub const TICKS: f64 = 100.0;

pub fn proc_sample(pid: u32) -> Option<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces, inside parentheses).
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after ')'.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(ProcSample {
        rss_kib: field("VmRSS:"),
        anon_kib: field("RssAnon:"),
        cpu_ticks: utime + stime,
        cpu_ns: threads_runtime_ns(pid),
    })
}

/// The sum of `se.sum_exec_runtime` (milliseconds, with a fraction) over
/// /proc/<pid>/task/*/sched.
fn threads_runtime_ns(pid: u32) -> Option<u64> {
    let mut total = 0.0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let sched = std::fs::read_to_string(task.ok()?.path().join("sched")).ok()?;
        total += sched_runtime_ms(&sched)?;
    }
    Some((total * 1e6) as u64)
}

fn sched_runtime_ms(sched: &str) -> Option<f64> {
    sched
        .lines()
        .find(|l| l.starts_with("se.sum_exec_runtime"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()
}

/// CPU use in percent of one core between two samples `secs` apart.
pub fn cpu_percent(a: &ProcSample, b: &ProcSample, secs: f64) -> f64 {
    if secs <= 0.0 {
        return 0.0;
    }
    match (a.cpu_ns, b.cpu_ns) {
        (Some(x), Some(y)) => y.saturating_sub(x) as f64 / 1e9 / secs * 100.0,
        _ => b.cpu_ticks.saturating_sub(a.cpu_ticks) as f64 / TICKS / secs * 100.0,
    }
}

/// One sample of a Prometheus text exposition: name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the samples named `name` (exactly) from Prometheus text.
pub fn samples(text: &str, name: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (head, value) = l.rsplit_once(' ')?;
            let (n, labels) = match head.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}')?),
                None => (head, ""),
            };
            if n != name {
                return None;
            }
            Some(Sample {
                name: n.to_string(),
                labels: parse_labels(labels),
                value: value.parse().ok()?,
            })
        })
        .collect()
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    while let Some((k, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(n);
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.insert(k.trim_start_matches(',').trim().to_string(), value);
        rest = &after[end..];
    }
    out
}

/// Time the API server spent in the ValidatingAdmissionPolicy admission
/// plugin (every policy and binding together), summed over requests, and
/// the requests it judged: `apiserver_admission_controller_admission_duration_seconds`'s
/// sum and count for that plugin.
pub fn policy_admission(metrics: &str) -> (f64, f64) {
    let total = |name: &str| {
        samples(metrics, name)
            .iter()
            .filter(|s| {
                s.labels.get("name").map(String::as_str) == Some("ValidatingAdmissionPolicy")
            })
            .map(|s| s.value)
            .sum::<f64>()
    };
    (
        total("apiserver_admission_controller_admission_duration_seconds_sum"),
        total("apiserver_admission_controller_admission_duration_seconds_count"),
    )
}

/// API requests by (resource, verb), summed over codes and scopes.
pub type Requests = BTreeMap<(String, String), f64>;

/// `apiserver_request_total` by resource and verb.
pub fn requests(metrics: &str) -> Requests {
    let mut out = Requests::new();
    for s in samples(metrics, "apiserver_request_total") {
        let get = |k: &str| s.labels.get(k).cloned().unwrap_or_default();
        let mut resource = get("resource");
        let sub = get("subresource");
        if !sub.is_empty() {
            resource = format!("{resource}/{sub}");
        }
        *out.entry((resource, get("verb"))).or_default() += s.value;
    }
    out
}

/// Per-minute rates between two scrapes `secs` apart.
pub fn rates(before: &Requests, after: &Requests, secs: f64) -> Requests {
    after
        .iter()
        .map(|(k, v)| {
            let d = v - before.get(k).copied().unwrap_or(0.0);
            (k.clone(), d / secs * 60.0)
        })
        .filter(|(_, r)| *r > 0.0)
        .collect()
}

/// A cumulative histogram: (upper bound, count) sorted by bound.
pub fn histogram(metrics: &str, name: &str, filter: impl Fn(&Sample) -> bool) -> Vec<(f64, f64)> {
    let mut by_le: BTreeMap<String, f64> = BTreeMap::new();
    for s in samples(metrics, &format!("{name}_bucket")) {
        if filter(&s)
            && let Some(le) = s.labels.get("le")
        {
            *by_le.entry(le.clone()).or_default() += s.value;
        }
    }
    let mut out: Vec<(f64, f64)> = by_le
        .into_iter()
        .filter_map(|(le, c)| {
            let b = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((b, c))
        })
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// Bucket-wise difference of two scrapes of one histogram.
pub fn histogram_delta(before: &[(f64, f64)], after: &[(f64, f64)]) -> Vec<(f64, f64)> {
    after
        .iter()
        .map(|(b, c)| {
            let prev = before
                .iter()
                .find(|(pb, _)| pb == b)
                .map_or(0.0, |(_, pc)| *pc);
            (*b, c - prev)
        })
        .collect()
}

/// The q-quantile of a cumulative histogram, interpolated linearly within
/// its bucket as Prometheus' histogram_quantile does.
pub fn quantile(h: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = h.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(b, c) in h {
        if c >= rank {
            if b.is_infinite() {
                return Some(prev.0);
            }
            let within = if c > prev.1 {
                (rank - prev.1) / (c - prev.1)
            } else {
                0.0
            };
            return Some(prev.0 + (b - prev.0) * within);
        }
        prev = (b, c);
    }
    None
}

/// One kubectl run of the baseline: poll number, wall, user, sys, max RSS.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KubectlCost {
    pub poll: u64,
    pub wall: f64,
    pub cpu: f64,
    pub max_rss_kib: u64,
}

/// Parses the baseline's BASELINE_COST_FILE (GNU time lines; a failing
/// kubectl adds a "Command exited" line, skipped).
pub fn kubectl_costs(text: &str) -> Vec<KubectlCost> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() != 5 {
                return None;
            }
            Some(KubectlCost {
                poll: f[0].parse().ok()?,
                wall: f[1].parse().ok()?,
                cpu: f[2].parse::<f64>().ok()? + f[3].parse::<f64>().ok()?,
                max_rss_kib: f[4].parse().ok()?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn policy_admission_sums_the_validating_policy_plugin_only() {
        let text = "\
apiserver_admission_controller_admission_duration_seconds_sum{name=\"ValidatingAdmissionPolicy\",operation=\"UPDATE\",rejected=\"false\",type=\"validate\"} 2.5
apiserver_admission_controller_admission_duration_seconds_sum{name=\"ValidatingAdmissionPolicy\",operation=\"CREATE\",rejected=\"true\",type=\"validate\"} 0.5
apiserver_admission_controller_admission_duration_seconds_sum{name=\"MutatingAdmissionWebhook\",operation=\"CREATE\",rejected=\"false\",type=\"admit\"} 9
apiserver_admission_controller_admission_duration_seconds_count{name=\"ValidatingAdmissionPolicy\",operation=\"UPDATE\",rejected=\"false\",type=\"validate\"} 40
apiserver_admission_controller_admission_duration_seconds_count{name=\"ValidatingAdmissionPolicy\",operation=\"CREATE\",rejected=\"true\",type=\"validate\"} 2
";
        assert_eq!(policy_admission(text), (3.0, 42.0));
    }

    use super::*;

    #[test]
    fn cpu_time_comes_from_the_scheduler_when_it_is_there() {
        let sched = "sidecar (42, #threads: 1)\n---\nse.exec_start :  1.5\nse.sum_exec_runtime                          :          1234.567891\nse.nr_migrations : 3\n";
        assert_eq!(sched_runtime_ms(sched), Some(1234.567891));
        let at = |ticks, ns| ProcSample {
            cpu_ticks: ticks,
            cpu_ns: ns,
            ..ProcSample::default()
        };
        // 1.5 ms of CPU over 1 s is 0.15 %, though no tick was charged.
        let p = cpu_percent(&at(7, Some(1_000_000)), &at(7, Some(2_500_000)), 1.0);
        assert!((p - 0.15).abs() < 1e-9, "{p}");
        // Without the scheduler's figure, ticks (1/100 s each).
        assert_eq!(cpu_percent(&at(7, None), &at(9, Some(5)), 2.0), 1.0);
    }

    const METRICS: &str = r#"# HELP x
apiserver_request_total{code="200",component="apiserver",dry_run="",group="coordination.k8s.io",resource="leases",scope="resource",subresource="",verb="PUT",version="v1"} 120
apiserver_request_total{code="409",component="apiserver",dry_run="",group="coordination.k8s.io",resource="leases",scope="resource",subresource="",verb="PUT",version="v1"} 3
apiserver_request_total{code="200",component="apiserver",dry_run="",group="",resource="pods",scope="resource",subresource="status",verb="PATCH",version="v1"} 7
d_bucket{name="w",le="0.005"} 1
d_bucket{name="w",le="0.025"} 3
d_bucket{name="w",le="+Inf"} 4
d_bucket{name="other",le="0.005"} 100
"#;

    #[test]
    fn requests_are_summed_over_codes_by_resource_and_verb() {
        let r = requests(METRICS);
        assert_eq!(r[&("leases".into(), "PUT".into())], 123.0);
        assert_eq!(r[&("pods/status".into(), "PATCH".into())], 7.0);
    }

    #[test]
    fn quantiles_interpolate_within_a_bucket() {
        let h = histogram(METRICS, "d", |s| s.labels["name"] == "w");
        assert_eq!(h.len(), 3);
        assert_eq!(quantile(&h, 0.25), Some(0.005));
        let median = quantile(&h, 0.5).expect("a median");
        assert!((median - 0.015).abs() < 1e-9, "{median}");
        assert_eq!(quantile(&h, 0.99), Some(0.025));
    }

    #[test]
    fn labels_keep_escaped_quotes() {
        let l = parse_labels(r#"a="x\"y",b="z""#);
        assert_eq!(l["a"], "x\"y");
        assert_eq!(l["b"], "z");
    }

    #[test]
    fn kubectl_costs_skip_exit_lines() {
        let c = kubectl_costs("3 0.21 0.10 0.05 51200\nCommand exited with non-zero status 1\n");
        assert_eq!(c.len(), 1);
        assert!((c[0].cpu - 0.15).abs() < 1e-9);
    }

    #[test]
    fn this_process_has_memory_and_cpu() {
        let s = proc_sample(std::process::id()).expect("/proc of self");
        assert!(s.rss_kib > 0);
    }
}
