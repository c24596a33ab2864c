//! The driver against a scripted API server: a call cut at its deadline,
//! SIGTERM cutting a hung call, the shutdown's bound, Events flushed before
//! exit, and what it shows and logs. Order and counts, never a wall-clock
//! window: the timeouts below are guards that fail a hung test.

use std::time::{Duration, Instant};

use kube::Api;
use tokio::sync::watch;

use super::*;
use crate::{
    candidate::Candidate,
    contract::Status,
    election::LeaseClient,
    events::Events,
    labels::Labeller,
    metrics::Metrics,
    testing::{self, ScriptedApi},
};

/// How long a test may take before it is a hang: never a measure.
const GUARD: Duration = Duration::from_secs(30);

/// A driver of `state` talking to `api`; the health sender stays open.
fn driver(
    api: &ScriptedApi,
    state: State,
) -> (Candidate, watch::Receiver<Status>, watch::Sender<Health>) {
    let client = api.client();
    let (health_tx, health) = watch::channel(state.health.clone());
    let (status, shown) = watch::channel(Status::default());
    let mut c = Candidate::new(
        state.settings.clone(),
        LeaseClient::new(Api::default_namespaced(client.clone()), "web"),
        Labeller::new(
            Api::default_namespaced(client.clone()),
            state.labels.clone(),
        ),
        Events::new(client, "web-0"),
        Metrics::new(),
        health,
        status,
    );
    c.state = state;
    (c, shown, health_tx)
}

/// An API server that accepts connections and never answers.
fn frozen() -> ScriptedApi {
    ScriptedApi::new(testing::forbidden).hanging_when(|_| true)
}

fn calls(api: &ScriptedApi) -> Vec<String> {
    api.requests()
        .iter()
        .filter(|r| !r.path.contains("/events"))
        .map(|r| format!("{} {}", r.method, r.path))
        .collect()
}

/// A renewal the API server never answers waits until the Lease it renews
/// would expire (not the api-timeout, nor the holder's deadline), and the
/// holder shows passive at its deadline while it waits (rule 5). Then the
/// call returns and the Lease is to be re-read.
#[tokio::test]
async fn a_renewal_shows_passive_at_the_deadline_while_it_waits() {
    let flags = SHORT;
    let api = frozen();
    let (mut c, mut shown, _health) = driver(&api, holder(Instant::now() - 200 * MS, &flags));
    let renew = decide(&c.state, Instant::now()).expect("a renewal due");
    let expiry = c.state.lease.last_renew_sent.expect("renewed") + S;
    {
        let mut call = std::pin::pin!(c.carry_out(renew));
        let passive_while_waiting = tokio::select! {
            _ = &mut call => false,
            _ = shown.wait_for(|s| s.role == Some(Role::Passive)) => true,
        };
        assert!(
            passive_while_waiting,
            "passive shown before the call returned"
        );
        let acted = tokio::time::timeout(GUARD, call)
            .await
            .expect("cut when the lease would expire");
        assert!(acted);
    }
    assert!(
        Instant::now() >= expiry,
        "not cut before the lease would expire"
    );
    assert_eq!(
        calls(&api),
        ["PUT /apis/coordination.k8s.io/v1/namespaces/default/leases/web"]
    );
    assert_eq!(c.state.lease.view, LeaseView::Unknown, "re-read next");
    assert!(!c.state.api.calls.reachable());
    assert_eq!(c.state.outward_role(Instant::now()), Some(Role::Passive));
    let counted = "baton_api_calls_total{operation=\"renew lease\"} 1";
    assert!(c.metrics.encode().contains(counted), "{counted}");
}

/// Rule 6 during an outage: SIGTERM cuts short a call that hangs, and no
/// handover call follows.
#[tokio::test]
async fn sigterm_while_the_api_server_hangs_ends_the_loop_at_once() {
    let api = frozen();
    // A standby reading the Lease, with a call that would wait an hour.
    let flags = ["--api-timeout=1h", "--lease-duration=2h"];
    let (c, shown, _health) = driver(&api, standby(Instant::now(), &flags));
    let (sigterm, on_sigterm) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(c.run(
        futures::stream::pending(),
        futures::stream::pending(),
        async move {
            let _ = on_sigterm.await;
        },
    ));
    api.wait_for(1, GUARD).await;
    let before = api.requests().len();
    sigterm.send(()).expect("the loop listens");
    tokio::time::timeout(GUARD, run)
        .await
        .expect("the loop ended after SIGTERM although the API server hangs")
        .expect("the loop did not panic");
    assert_eq!(
        api.requests().len(),
        before,
        "no call once it hangs: {:?}",
        calls(&api)
    );
    assert_eq!(shown.borrow().role, Some(Role::Passive));
}

/// A holder told to stop while the API server hangs: each handover call
/// gets at most a second, and the first that fails ends the handover, so
/// the loop ends although `--api-timeout` is an hour.
#[tokio::test]
async fn the_handover_ends_at_its_first_failed_call() {
    let api = frozen();
    let (c, shown, _health) = driver(&api, holder(Instant::now(), &["--api-timeout=1h"]));
    let run = c.run(
        futures::stream::pending(),
        futures::stream::pending(),
        async {},
    );
    tokio::time::timeout(GUARD, run)
        .await
        .expect("the handover is bounded");
    assert_eq!(
        calls(&api),
        ["PATCH /api/v1/namespaces/default/pods/web-0"],
        "one try"
    );
    assert_eq!(shown.borrow().role, Some(Role::Passive));
}

/// SIGTERM to a holder while it waits: passive label, then release; the
/// Events said on the way are sent before the loop returns.
#[tokio::test]
async fn the_handover_flushes_its_events_before_the_loop_ends() {
    let api = ScriptedApi::new(move |req| match req.method.as_str() {
        "PUT" => {
            let mut written = req.body.clone();
            written["metadata"]["resourceVersion"] = "8".into();
            (200, written)
        }
        "PATCH" => {
            let mut pod = serde_json::to_value(pod("20", "passive")).expect("a pod");
            pod["apiVersion"] = "v1".into();
            pod["kind"] = "Pod".into();
            (200, pod)
        }
        _ => testing::created(req),
    });
    let (c, shown, _health) = driver(&api, holder(Instant::now(), &[]));
    // Resolves on its second poll: while the loop waits, not in its first
    // turn (a signal during a call makes it re-read the Lease first).
    let sigterm = tokio::task::yield_now();
    let run = c.run(
        futures::stream::pending(),
        futures::stream::pending(),
        sigterm,
    );
    tokio::time::timeout(GUARD, run).await.expect("handed over");
    assert_eq!(
        calls(&api),
        [
            "PATCH /api/v1/namespaces/default/pods/web-0",
            "PUT /apis/coordination.k8s.io/v1/namespaces/default/leases/web",
        ]
    );
    let released = api
        .requests()
        .into_iter()
        .find(|r| r.method == "PUT")
        .expect("the release")
        .body;
    assert_eq!(released["spec"]["holderIdentity"], serde_json::Value::Null);
    let reasons: Vec<_> = api
        .sent("reason")
        .into_iter()
        .filter(|r| r.starts_with("POST"))
        .collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons[0].ends_with(": Demoted") && reasons[1].ends_with(": HandedOver"));
    assert_eq!(shown.borrow().role, Some(Role::Passive));
}

/// What a holder whose RBAC is gone shows and logs: `/status` and
/// `baton_role_active` turn passive at its deadline while its label stays
/// active; the API failing and the passive label failing are logged once
/// each, as warnings, with the error.
#[tokio::test]
async fn status_metrics_and_logs_follow_the_core() {
    testing::capture_logs();
    let api = frozen();
    let t0 = Instant::now();
    let (mut c, shown, _health) = driver(&api, holder(t0, &[]));
    c.publish_status(t0 + 2 * S);
    assert_eq!(shown.borrow().role, Some(Role::Active));
    assert!(c.metrics.encode().contains("baton_role_active 1"));

    c.publish_status(t0 + 4 * S);
    let status = shown.borrow().clone();
    assert_eq!(status.role, Some(Role::Passive), "{status:?}");
    assert_eq!(status.label_role, Some(Role::Active), "{status:?}");
    assert!(status.last_change.is_some());
    let metrics = c.metrics.encode();
    assert!(metrics.contains("baton_role_active 0"), "{metrics}");
    assert!(
        metrics.contains("baton_role_changes_total{role=\"passive\"} 1"),
        "{metrics}"
    );

    let renew = decide(&c.state, t0 + 2 * S).expect("a renewal");
    let Action::WriteLease(write) = renew else {
        panic!("{renew:?}")
    };
    let refused = Outcome::LeaseWritten {
        write,
        sent: t0 + 2 * S,
        renew_time: None,
        result: Err(WriteError::Api {
            lease: "web".into(),
            source: api_error(403, "Forbidden"),
        }),
    };
    let mut notices = settle(&mut c.state, refused, t0 + 2 * S, JITTER);
    for _ in 0..3 {
        let failed = Outcome::LabelledPassive(Err(label_error(403, Role::Passive)));
        notices.extend(settle(&mut c.state, failed, t0 + 4 * S, JITTER));
    }
    c.say(notices);
    let logs = testing::logged();
    let api_failed: Vec<_> = logs
        .iter()
        .filter(|l| l.contains("Kubernetes API call failed"))
        .collect();
    assert_eq!(api_failed.len(), 1, "{logs:#?}");
    let said: Vec<_> = logs
        .iter()
        .filter(|l| l.contains("cannot label this pod passive"))
        .collect();
    assert_eq!(said.len(), 1, "{logs:#?}");
    assert!(
        said[0].starts_with("WARN") && said[0].contains("Forbidden"),
        "{said:?}"
    );
    assert!(
        c.metrics
            .encode()
            .contains("baton_api_errors_total{operation=\"label passive\"} 3")
    );
}
