//! Small statistics over repeated runs, and the wall clock the bench uses.

/// Seconds since the epoch: the one clock shared by the driver, the
/// clients, the sidecars' log lines and the baseline controller's log.
pub use baton_e2e::clients::now;

#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    pub n: usize,
    pub median: f64,
    pub p99: f64,
    pub max: f64,
}

/// Median and p99 (nearest rank: with fewer than 100 runs, the maximum).
pub fn summary(values: &[f64]) -> Summary {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return Summary::default();
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    let rank = ((0.99 * n as f64).ceil() as usize).clamp(1, n);
    Summary {
        n,
        median,
        p99: v[rank - 1],
        max: v[n - 1],
    }
}

impl Summary {
    /// "median / p99 (n)" with `digits` decimals, or "–" without data.
    pub fn cell(&self, digits: usize) -> String {
        if self.n == 0 {
            return "–".into();
        }
        format!(
            "{:.d$} / {:.d$} (n={})",
            self.median,
            self.p99,
            self.n,
            d = digits
        )
    }
}

/// Parses the RFC 3339 UTC timestamp that starts a tracing log line
/// (`2026-11-24T18:22:26.563510Z ...`) into seconds since the epoch.
pub fn parse_log_time(line: &str) -> Option<f64> {
    let stamp = line.split_whitespace().next()?;
    let stamp = stamp.strip_suffix('Z')?;
    let (date, time) = stamp.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (h, min) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let s: f64 = t.next()?.parse().ok()?;
    let days = days_from_civil(y, m, day);
    Some((days * 86400 + h * 3600 + min * 60) as f64 + s)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_p99_of_few_runs() {
        let s = summary(&[3.0, 1.0, 2.0, 10.0]);
        assert_eq!((s.n, s.median, s.p99, s.max), (4, 2.5, 10.0, 10.0));
        assert_eq!(summary(&[]).n, 0);
    }

    #[test]
    fn p99_of_two_hundred_runs_is_not_the_maximum() {
        let v: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(summary(&v).p99, 198.0);
    }

    #[test]
    fn log_time_is_epoch_seconds() {
        let t = parse_log_time("2026-11-24T18:22:26.563510Z  INFO x").expect("a time");
        // date -u -d 2026-11-24T18:22:26Z +%s
        assert!((t - 1_795_544_546.563_51).abs() < 1e-4, "{t}");
        assert_eq!(parse_log_time("no time here"), None);
    }
}
