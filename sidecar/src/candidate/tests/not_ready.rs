//! Rule 13 as synchronous calls: a holder whose own pod the node lifecycle
//! controller marked not Ready hands over to a Ready standby, and only
//! then.

use std::time::Instant;

use k8s_openapi::api::core::v1::PodSpec;
use kube::runtime::watcher::Event;
use serde_json::json;

use super::*;
use crate::contract::controls::{SWITCH_REASON, Target};

/// `pod` on `node` with the Ready and ContainersReady conditions given.
fn on_node(mut pod: Pod, node: &str, ready: &str, containers_ready: &str) -> Pod {
    pod.spec = Some(PodSpec {
        node_name: Some(node.into()),
        ..Default::default()
    });
    pod.status = Some(
        serde_json::from_value(json!({
            "phase": "Running",
            "podIP": "10.0.0.1",
            "conditions": [
                {"type": "ContainersReady", "status": containers_ready},
                {"type": "Ready", "status": ready},
            ],
        }))
        .expect("a pod status"),
    );
    pod
}

fn named(name: &str) -> Pod {
    let mut p = Pod::default();
    p.metadata.name = Some(name.into());
    p
}

/// The holder web-0 on node n1, its own pod as `ready`/`containers_ready`
/// say, and its group watch listing itself and `standbys`.
fn holder_on_n1(t0: Instant, ready: &str, containers_ready: &str, standbys: &[Pod]) -> State {
    let mut s = holder(t0, &[]);
    let own = on_node(relabelled(&s, "active"), "n1", ready, containers_ready);
    s.observe_pod(own.clone(), t0, &mut Vec::new());
    s.handle_group_event(Ok(Event::Init), t0);
    for p in std::iter::once(&own).chain(standbys) {
        s.handle_group_event(Ok(Event::InitApply(p.clone())), t0);
    }
    s.handle_group_event(Ok(Event::InitDone), t0);
    s
}

fn holder_identity(lease: &Lease) -> Option<&str> {
    lease.spec.as_ref()?.holder_identity.as_deref()
}

#[test]
fn a_holder_marked_not_ready_hands_over_to_the_ready_standby_on_another_node() {
    let t0 = Instant::now();
    let standbys = [
        on_node(named("web-1"), "n1", "False", "True"),
        on_node(named("web-2"), "n2", "True", "True"),
    ];
    let mut s = holder_on_n1(t0, "False", "True", &standbys);
    let action = decide(&s, t0).expect("hands over");
    let written = sent(&s, &action);
    assert_eq!(holder_identity(&written), Some("web-2"));
    assert_eq!(
        written
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(SWITCH_REASON))
            .map(String::as_str),
        Some(
            "web-0 handed over to web-2 (its pod was marked not Ready by the node lifecycle controller)"
        )
    );
    // What it shows says passive before the write is sent (rule 10).
    s.begin_handover_write();
    assert_eq!(s.outward_role(t0), Some(Role::Passive));
    accepted(&mut s, &action, t0);

    // Not taken: taken back, and handed over again a lease duration later.
    let until = s.controls.handing_over.as_ref().expect("in flight").until;
    let take_back = decide(&s, until).expect("the take-back");
    assert_eq!(holder_identity(&sent(&s, &take_back)), Some("web-0"));
    accepted(&mut s, &take_back, until);
    let retry = s.controls.handover_retry_at.expect("a retry time");
    assert_eq!(s.handover_wanted(until), None);
    assert_eq!(
        s.handover_wanted(retry).map(|(t, _)| t),
        Some(Target::Pod("web-2".into()))
    );
}

#[test]
fn a_holder_marked_not_ready_keeps_the_role_when_no_standby_is_ready() {
    let t0 = Instant::now();
    // The standby's node is down too, or the standby's app failed.
    let s = holder_on_n1(
        t0,
        "False",
        "True",
        &[on_node(named("web-1"), "n2", "False", "True")],
    );
    assert_eq!(s.handover_wanted(t0), None);
    assert_eq!(decide(&s, t0), None, "nothing to do before the renewal");
}

#[test]
fn a_holder_whose_own_containers_are_not_ready_is_kubelets_case_not_this_rules() {
    let t0 = Instant::now();
    let standby = [on_node(named("web-1"), "n2", "True", "True")];
    // A restarting sidecar or the app's own readiness: kubelet's verdict.
    let s = holder_on_n1(t0, "False", "False", &standby);
    assert_eq!(s.handover_wanted(t0), None);
    // Ready: nothing to hand over.
    let s = holder_on_n1(t0, "True", "True", &standby);
    assert_eq!(s.handover_wanted(t0), None);
}

#[test]
fn a_standby_is_no_target_before_the_group_watch_has_listed() {
    let t0 = Instant::now();
    let mut s = holder_on_n1(t0, "False", "True", &[]);
    s.close_group_view();
    assert_eq!(s.handover_wanted(t0), None);
}
