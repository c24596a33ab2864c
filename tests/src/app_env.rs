//! Env for the demo app's container of a `workload` StatefulSet, whose
//! `env` argument goes to the sidecar: the soak's apps close their
//! connections (tests/tests/soak.rs, the bench's soak).

use crate::workload;

/// The demo app's setting that closes every HTTP/1.1 connection each period.
pub const CLOSE_CONNECTIONS_EVERY: &str = "CLOSE_CONNECTIONS_EVERY";

/// `statefulset` (from `workload::statefulset*`) with `name=value` added to
/// the app container's env, after its `TCP_LISTEN_ADDR` line (the app's
/// alone: the sidecar has no such variable). Panics if that line is gone.
pub fn with_app_env(statefulset: &str, name: &str, value: &str) -> String {
    let anchor = format!(
        "        - {{name: TCP_LISTEN_ADDR, value: \"0.0.0.0:{}\"}}\n",
        workload::LINES_PORT
    );
    assert_eq!(
        statefulset.matches(&anchor).count(),
        1,
        "the app's TCP_LISTEN_ADDR line has moved in workload.rs:\n{statefulset}"
    );
    statefulset.replace(
        &anchor,
        &format!("{anchor}        - {{name: {name}, value: \"{value}\"}}\n"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_env_goes_to_the_app_container_only() {
        let set = workload::statefulset("web", 2, true, &[("BATON_X", "1")]);
        let with = with_app_env(&set, CLOSE_CONNECTIONS_EVERY, "1s");
        let line = "        - {name: CLOSE_CONNECTIONS_EVERY, value: \"1s\"}\n";
        assert_eq!(with.matches(line).count(), 1, "{with}");
        let app = with.find("      - name: app\n").expect("the app container");
        assert!(with.find(line).expect("the line") > app, "{with}");
        assert_eq!(with.replace(line, ""), set);
    }
}
