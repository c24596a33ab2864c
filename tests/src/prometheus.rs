//! Prometheus text, read the way the tests need: which metric names a
//! process exposes, and which ones a dashboard or an alert rule names.

use std::collections::BTreeSet;

/// Metric names a Prometheus text exposition declares (`# TYPE name kind`),
/// with the sample suffixes each kind adds.
pub fn exposed(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .flat_map(|l| {
            let mut parts = l.split_whitespace();
            let name = parts.next().unwrap_or_default().to_owned();
            let suffixes: &[&str] = match parts.next() {
                Some("counter") => &["_total"],
                Some("histogram") => &["", "_bucket", "_sum", "_count"],
                _ => &[""],
            };
            suffixes
                .iter()
                .map(|s| format!("{name}{s}"))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Every `baton_*` name in a text (a dashboard, alert rules).
pub fn referenced(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("baton_") {
        let start = i + at;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(text.len(), |e| start + e);
        if boundary {
            names.insert(text[start..end].to_owned());
        }
        i = end;
    }
    names
}

/// The sum of the samples of one series (`name{labels}` exactly as exposed,
/// or a bare name) over texts from several processes, such as the webhook's
/// replicas.
pub fn sample_sum(text: &str, series: &str) -> f64 {
    text.lines()
        .filter_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .sum()
}

/// The sum of every sample of a counter or gauge family, whatever its
/// labels (`name{...} v` and `name v`).
pub fn family_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let value = match rest.strip_prefix('{') {
                Some(labelled) => labelled.split_once("} ")?.1,
                None => rest.strip_prefix(' ')?,
            };
            value.trim().parse::<f64>().ok()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn family_sum_adds_every_label_set_of_one_family_only() {
        let text = "baton_api_calls_total{operation=\"renew lease\"} 3\n\
                    baton_api_calls_total{operation=\"promote\"} 1\n\
                    baton_api_calls_total_other 9\n\
                    baton_api_errors_total{operation=\"renew lease\"} 2\n";
        assert_eq!(family_sum(text, "baton_api_calls_total"), 4.0);
        assert_eq!(family_sum("x 2\nx{a=\"b\"} 1\n", "x"), 3.0);
    }

    #[test]
    fn referenced_finds_whole_metric_names_only() {
        let names =
            referenced(r#"sum(rate(baton_probes_total[5m])) / x_baton_no + baton_role_active"#);
        assert_eq!(
            names,
            ["baton_probes_total", "baton_role_active"]
                .map(String::from)
                .into()
        );
    }
}
