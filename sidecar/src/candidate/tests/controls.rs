//! Rule 10 as synchronous calls: switchovers, cordon, pause and the
//! app-healthy condition.

use std::time::Instant;

use super::*;
use crate::{
    candidate::{decide::next_wake, say::status},
    contract::controls::{
        self, APP_HEALTHY_CONDITION, CORDONED, PAUSED, SWITCH_REASON, SWITCHOVER_TO, Target,
    },
};

fn annotation<'a>(lease: &'a Lease, key: &str) -> Option<&'a str> {
    lease
        .metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

fn holder_identity(lease: &Lease) -> Option<&str> {
    lease.spec.as_ref()?.holder_identity.as_deref()
}

#[test]
fn a_switchover_hands_the_lease_on_keeps_the_label_and_takes_it_back_if_nobody_takes_it() {
    let t0 = Instant::now();
    let mut s = holder(t0, &[]);
    annotate_lease(&mut s, t0, &[(SWITCHOVER_TO, Some("web-1"))]);

    let action = decide(&s, t0).expect("hands over");
    let written = sent(&s, &action);
    assert_eq!(holder_identity(&written), Some("web-1"));
    assert_eq!(
        written.spec.as_ref().and_then(|s| s.lease_transitions),
        Some(2)
    );
    assert_eq!(
        annotation(&written, SWITCH_REASON),
        Some("web-0 handed over to web-1 (switchover requested)")
    );
    assert_eq!(
        annotation(&written, SWITCHOVER_TO),
        Some("web-1"),
        "the request stays until the target takes it"
    );
    let n = accepted(&mut s, &action, t0);
    assert!(n.contains(&Notice::Switchover("handed_over")), "{n:?}");
    assert_eq!(events(&n), ["SwitchingOver"]);
    assert!(!s.leading(t0));

    // Not leading, yet the label stays active: no passive label, no Lease
    // write (the new holder, looked up once, is all it does).
    let (actions, _) = turns(&mut s, t0 + S, 5, |s, a| accept(s, a, t0 + S));
    assert_eq!(kinds(&actions), ["check lease holder"]);
    let h = s.controls.handing_over.clone().expect("in flight");
    assert_eq!(h.until - h.began, s.settings.lease_duration / 2);
    assert_eq!(next_wake(&s, t0 + S), Some(h.until));

    // Nobody took it by the bound: taken back, on the version written.
    let take_back = decide(&s, h.until).expect("the take-back");
    let written = sent(&s, &take_back);
    assert_eq!(holder_identity(&written), Some("web-0"));
    assert_eq!(written.metadata.resource_version.as_deref(), Some("9"));
    assert_eq!(
        annotation(&written, SWITCH_REASON),
        Some("switchover to web-1 not taken within 3s; web-0 keeps the role")
    );
    assert_eq!(
        annotation(&written, SWITCHOVER_TO),
        None,
        "the request ends"
    );
    let n = accepted(&mut s, &take_back, h.until);
    assert!(s.leading(h.until));
    assert!(n.contains(&Notice::Switchover("taken_back")), "{n:?}");
    assert_eq!(events(&n), ["SwitchoverFailed"]);
    let (actions, _) = turns(&mut s, h.until, 5, |s, a| accept(s, a, h.until));
    assert!(actions.is_empty(), "the label never moved: {actions:?}");
}

#[test]
fn a_pod_offered_the_lease_takes_it_and_ends_the_request() {
    let t0 = Instant::now();
    let mut s = holder(t0, &[]);
    s.lease.last_renew_sent = None;
    s.observe_pod(relabelled(&s, "passive"), t0, &mut Vec::new());
    annotate_lease(&mut s, t0, &[(SWITCHOVER_TO, Some("web-0"))]);
    assert!(s.offered());
    let action = decide(&s, t0).expect("takes it");
    assert_eq!(kinds(std::slice::from_ref(&action)), ["renew lease"]);
    let written = sent(&s, &action);
    assert_eq!(holder_identity(&written), Some("web-0"));
    assert_eq!(annotation(&written, SWITCHOVER_TO), None);
}

#[test]
fn a_cordoned_holder_releases_for_any_standby() {
    let t0 = Instant::now();
    let mut s = holder(t0, &[]);
    let mut pod = relabelled(&s, "active");
    pod.metadata.annotations = Some(BTreeMap::from([(CORDONED.to_owned(), "true".to_owned())]));
    s.observe_pod(pod, t0, &mut Vec::new());
    let action = decide(&s, t0).expect("hands over");
    let written = sent(&s, &action);
    assert_eq!(holder_identity(&written), None);
    assert_eq!(
        annotation(&written, SWITCH_REASON),
        Some("web-0 handed over to any healthy standby (cordoned)")
    );
    accepted(&mut s, &action, t0);
    // It does not take the released Lease back before the bound.
    assert_eq!(decide(&s, t0), None);

    // Nobody took it: taken back, and the next handover waits a lease
    // duration rather than releasing again at once.
    let until = s.controls.handing_over.as_ref().expect("in flight").until;
    let take_back = decide(&s, until).expect("the take-back");
    assert_eq!(holder_identity(&sent(&s, &take_back)), Some("web-0"));
    accepted(&mut s, &take_back, until);
    let retry = s.controls.handover_retry_at.expect("a retry time");
    assert_eq!(retry, until + s.settings.lease_duration);
    assert_eq!(s.handover_wanted(until), None);
    assert_eq!(s.handover_wanted(retry).map(|(t, _)| t), Some(Target::Any));
}

#[test]
fn the_health_condition_is_written_when_the_verdict_changes_and_never_fought_over() {
    let t0 = Instant::now();
    let mut s = holder(t0, &[]);
    s.controls.health_condition = true;
    let published = |actions: &[Action]| -> Vec<(bool, Option<String>)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::PublishHealth {
                    healthy,
                    last_failure,
                    ..
                } => Some((*healthy, last_failure.clone())),
                _ => None,
            })
            .collect()
    };
    let (actions, _) = turns(&mut s, t0, 5, |s, a| accept(s, a, t0));
    assert_eq!(published(&actions), [(true, None)]);
    let patch = controls::app_healthy_patch(true, None, Timestamp::UNIX_EPOCH);
    assert_eq!(
        patch["status"]["conditions"][0]["type"],
        APP_HEALTHY_CONDITION
    );
    assert_eq!(patch["status"]["conditions"][0]["status"], "True");

    // Another writer drops it: not written back (no fight).
    let mut pod = relabelled(&s, "active");
    pod.status = None;
    s.observe_pod(pod, t0, &mut Vec::new());
    let (actions, _) = turns(&mut s, t0, 5, |s, a| accept(s, a, t0));
    assert!(published(&actions).is_empty(), "{actions:?}");

    // The verdict changes: written.
    s.handle_health(failing("503"));
    let (actions, _) = turns(&mut s, t0, 8, |s, a| accept(s, a, t0));
    assert_eq!(
        published(&actions),
        [(false, Some("503".into()))],
        "{actions:?}"
    );
}

#[test]
fn a_restarted_sidecar_whose_pod_already_shows_the_verdict_writes_nothing() {
    let t0 = Instant::now();
    let mut s = holder(t0, &[]);
    s.controls.health_condition = true;
    let mut pod = relabelled(&s, "active");
    let patch = controls::app_healthy_patch(true, None, Timestamp::UNIX_EPOCH);
    pod.status = serde_json::from_value(patch["status"].clone()).expect("a pod status");
    s.observe_pod(pod, t0, &mut Vec::new());
    let (actions, _) = turns(&mut s, t0, 5, |s, a| accept(s, a, t0));
    assert_eq!(kinds(&actions), ["adopt health"]);
    assert_eq!(s.controls.health_published, Some(true));
}

#[test]
fn a_paused_holder_keeps_the_lease_while_its_app_fails_and_gives_it_up_on_resume() {
    let t0 = Instant::now();
    let mut s = holder(t0, &[]);
    let now = t0 + 2 * S;
    annotate_lease(&mut s, t0, &[(PAUSED, Some("true"))]);
    let n = s.note(now);
    assert!(n.contains(&Notice::GroupPaused(true)), "{n:?}");
    assert_eq!(events(&n), ["Paused"]);
    assert_eq!(s.controls.paused_said, Some(true), "baton_group_paused 1");

    s.handle_health(failing("503"));
    let mut renewed = None;
    let (actions, n) = turns(&mut s, now, 1, |s, a| {
        renewed = Some(sent(s, a));
        accept(s, a, now)
    });
    assert_eq!(events(&n), ["UnhealthyWhilePaused"]);
    assert_eq!(kinds(&actions), ["renew lease"], "renewed, not released");
    assert_eq!(holder_identity(&renewed.expect("a write")), Some("web-0"));
    let shown = status(&s, now);
    assert!(shown.paused);
    assert_eq!(shown.role, Some(Role::Active));

    // Resumed: the unhealthy holder gives up (release, then passive label).
    annotate_lease(&mut s, now, &[(PAUSED, None)]);
    let mut released = None;
    let (actions, n) = turns(&mut s, now, 2, |s, a| {
        if matches!(a, Action::WriteLease(_)) {
            released = Some(sent(s, a));
        }
        accept(s, a, now)
    });
    assert!(n.contains(&Notice::GroupPaused(false)), "{n:?}");
    assert_eq!(kinds(&actions), ["release lease", "label passive"]);
    let released = released.expect("the release");
    assert_eq!(holder_identity(&released), None);
    assert!(
        annotation(&released, SWITCH_REASON)
            .is_some_and(|r| r.starts_with("web-0 gave up: app unhealthy (503)")),
        "{released:?}"
    );
}

#[test]
fn a_handing_over_holder_shows_passive_before_its_write_lands() {
    let t0 = Instant::now();
    let mut s = holder(t0, &[]);
    annotate_lease(&mut s, t0, &[(SWITCHOVER_TO, Some("web-1"))]);
    assert_eq!(s.outward_role(t0), Some(Role::Active));
    let action = decide(&s, t0).expect("hands over");
    assert!(matches!(action, Action::HandOver(_)), "{action:?}");

    // What the driver does right before the write: the proxy and the role
    // file must not outlive the Lease handed on (rule 11).
    s.begin_handover_write();
    assert_eq!(s.outward_role(t0), Some(Role::Passive));

    // Someone wrote first: the flag goes, and what it shows is the
    // Lease's story again (a re-read after the 409, rule 1).
    let Action::HandOver(handover) = action else {
        unreachable!("matched above")
    };
    let refused = Outcome::HandedOver {
        handover,
        sent: t0,
        result: Err(WriteError::Conflict {
            lease: "web".into(),
        }),
    };
    settle(&mut s, refused, t0, JITTER);
    assert!(!s.controls.handover_sending);

    // Landed: passive for good (the label stays until the new holder).
    let mut s2 = holder(t0, &[]);
    annotate_lease(&mut s2, t0, &[(SWITCHOVER_TO, Some("web-1"))]);
    let handover = decide(&s2, t0).expect("hands over");
    s2.begin_handover_write();
    accepted(&mut s2, &handover, t0);
    assert_eq!(s2.outward_role(t0), Some(Role::Passive));
    assert!(!s2.leading(t0));
}
