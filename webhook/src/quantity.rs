//! A syntax check of Kubernetes resource quantities ("10m", "64Mi", "1.5", "2e3").
//!
//! The API server parses them again; this check only lets the webhook deny a bad
//! annotation with a message that names it, instead of a patch the API server rejects.

/// Checks `s` against the quantity grammar, without a sign (resources are never negative).
pub fn check(s: &str) -> Result<(), String> {
    let reason = || format!("{s:?} is not a resource quantity (write e.g. 100m, 0.5, 64Mi, 1G)");
    let s = s.strip_prefix('+').unwrap_or(s);
    let number_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(number_end);
    let mut parts = number.split('.');
    let whole = parts.next().unwrap_or_default();
    let frac = parts.next();
    if parts.next().is_some() || (whole.is_empty() && frac.is_none_or(str::is_empty)) {
        return Err(reason());
    }
    let suffix_ok = match suffix {
        "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" => true,
        "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" => true,
        exp => exp
            .strip_prefix(['e', 'E'])
            .map(|e| e.strip_prefix(['+', '-']).unwrap_or(e))
            .is_some_and(|d| !d.is_empty() && d.chars().all(|c| c.is_ascii_digit())),
    };
    if suffix_ok { Ok(()) } else { Err(reason()) }
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn kubernetes_quantities_pass() {
        for q in [
            "10m", "16Mi", "64Mi", "1", "0.5", ".5", "5.", "1G", "2Gi", "1e3", "1E-2", "+3", "100k",
        ] {
            assert_eq!(check(q), Ok(()), "{q}");
        }
    }

    #[test]
    fn non_quantities_fail_naming_the_value() {
        for q in [
            "", "lots", "-1", "10mb", "1.2.3", ".", "Mi", "1 Mi", "1e", "1ee2", "10MI",
        ] {
            let err = check(q).expect_err(q);
            assert!(err.contains(&format!("{q:?}")), "{err}");
        }
    }
}
