//! A slow API server, not a dead one (`baton_e2e::brownout`): two groups
//! with the sidecar's default timings serve kept-alive clients through the
//! ClusterIP, one through the role-label Service and one through the
//! README's Service of the whole group, while kube-apiserver is frozen and
//! resumed in a duty cycle for a minute.
//!
//! It slows the cluster for everyone, so it lives in a test binary of its
//! own (cargo runs test binaries one after another), and its cases run one
//! at a time.

use std::time::Duration;

use baton_e2e::{
    brownout::{self, Outcome, Plan, Shape},
    harness::Cluster,
};

/// One case at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn brownout(test: &str, frozen: Duration) -> Vec<Outcome> {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::connect().await;
    let plan = Plan {
        frozen,
        baseline: Duration::from_secs(20),
        brownout: Duration::from_secs(60),
    };
    let outcomes = brownout::run(&cluster, test, plan, "").await;
    for o in &outcomes {
        eprintln!("brownout: {o}");
    }
    outcomes
}

/// Calls answered up to 1 s late, for a minute: every renewal still lands
/// well within the renew deadline (it is sent every 2 s and must be
/// answered within 4 s of the last one that was; the tolerated latency is
/// 2 s with the defaults, docs/operations.md "Tuning"), so nothing
/// changes: the same holder, no role change told to any app, never a
/// moment without an active pod, the Services' ready endpoints never
/// change, and no request through the proxy fails. Half the tolerance, so
/// that a busy test machine's own delays do not push an answer past it;
/// `make bench` measures the latencies up to and past it.
///
/// Through the role-label Service no baton component is in the data path:
/// baton can fail its requests only by moving the label (an endpoint
/// change) or the role. With neither, one request in about 6,000 once
/// failed in CI ("connect error", the client opening a connection per
/// request), as a connection through kube-proxy can; more than one, or any
/// with an endpoint change, fails the test. The proxy is in the path of the
/// other Service, so there every failed request is baton's to explain.
#[tokio::test]
async fn an_api_server_slow_by_1_s_changes_no_role_and_fails_no_request() {
    for o in brownout("brownout-1000", Duration::from_millis(1000)).await {
        assert_eq!(o.role_changes, 0, "{o}");
        assert_eq!(o.without_active, Duration::ZERO, "{o}");
        assert_eq!(o.most_active, 1, "{o}");
        assert_eq!(o.transitions, 0, "{o}");
        assert_eq!(o.holders.len(), 1, "{o}");
        assert_eq!(o.ready_endpoints.len(), 1, "{o}");
        match o.shape {
            Shape::RoleLabel => assert!(o.failed <= 1, "{o}"),
            Shape::WholeGroup => assert_eq!(o.failed, 0, "{o}"),
        }
        assert_eq!(o.by_another_pod, 0, "{o}");
    }
}

/// Calls answered up to 3 s late: past `--api-timeout` (2 s), so some
/// renewals are not answered by the holder's deadline and it tells its app
/// passive until one is (rule 5). But they land, so no other pod could take
/// the Lease: the holder keeps it and keeps its label (rule 7), never two
/// pods are told active, and the role-label Service, whose endpoint does
/// not move, fails at most a few requests of its client that opens a
/// connection per request (1 of about 6,000 once; fewer than a second of
/// one client's requests is the bound). Through the proxy, connections that
/// arrive while no pod is told active wait up to `proxy-route-wait`; the
/// count is printed, and measured by `make bench`.
#[tokio::test]
async fn an_api_server_slow_past_the_api_timeout_keeps_the_holder_and_its_label() {
    for o in brownout("brownout-3000", Duration::from_millis(3000)).await {
        assert!(o.most_active <= 1, "{o}");
        assert_eq!(o.transitions, 0, "{o}");
        assert_eq!(o.holders.len(), 1, "{o}");
        assert_eq!(o.by_another_pod, 0, "{o}");
        if o.shape == Shape::RoleLabel {
            assert!(o.failed < brownout::RATE as usize, "{o}");
        }
    }
}
