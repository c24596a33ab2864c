//! A deleted holder's drain (rule 8), a new holder's Service endpoint
//! (rule 9), and a Lease held by a stranger, as synchronous calls.

use std::time::Instant;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::*;
use crate::{
    candidate::{GiveUp, decide::next_wake, say::status},
    endpoints::EndpointError,
};

/// web-0, holder and labelled active, sees its pod deleted at `t0`.
fn deleted_holder(t0: Instant) -> State {
    let mut s = holder(t0, &["--handover-drain=300ms"]);
    let mut deleted = relabelled(&s, "active");
    deleted.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
    let n = {
        let mut n = Vec::new();
        s.observe_pod(deleted, t0, &mut n);
        n
    };
    assert_eq!(n, [Notice::PodTerminating]);
    s
}

/// Rule 8: a deleted holder releases the Lease at once but keeps its
/// active label (kube-proxy's fallback while no pod is Ready behind the
/// Service) until another pod has held the Lease for the drain; then it
/// labels itself passive.
#[test]
fn a_deleted_holder_releases_first_and_keeps_its_label_while_it_drains() {
    let t0 = Instant::now();
    let drain = 300 * MS;
    let mut s = deleted_holder(t0);
    let (actions, n) = turns(&mut s, t0, 5, |s, a| accept(s, a, t0));
    assert_eq!(
        kinds(&actions),
        ["release lease", "count the group"],
        "released, not labelled passive first; nothing more while draining"
    );
    assert_eq!(events(&n), ["HandedOver"]);
    let shown = status(&s, t0);
    assert!(shown.draining && shown.terminating, "{shown:?}");
    assert_eq!(
        shown.role,
        Some(Role::Passive),
        "no longer acting as holder"
    );
    assert_eq!(shown.label_role, Some(Role::Active), "{shown:?}");

    // web-1 takes the Lease: the drain runs from then.
    let taken = t0 + S;
    let mut n = Vec::new();
    s.observe_lease(Some(&held_by("web-1", "9", 6)), taken, &mut n);
    assert!(matches!(&n[..], [Notice::TakenOver { .. }]), "{n:?}");
    // (It reads who web-1 is, once: a pod of the group.)
    let (actions, _) = turns(&mut s, taken, 5, |s, a| accept(s, a, taken));
    assert_eq!(
        kinds(&actions),
        ["check lease holder"],
        "still labelled active"
    );
    assert_eq!(
        next_wake(&s, taken),
        Some(taken + drain),
        "a wake at the drain's end"
    );
    assert_eq!(decide(&s, taken + drain - MS), None);
    let (actions, _) = turns(&mut s, taken + drain, 5, |s, a| accept(s, a, taken + drain));
    assert_eq!(kinds(&actions), ["label passive"]);
    assert_eq!(s.label_role(), Some(Role::Passive));
    assert!(!status(&s, taken + drain).draining);
}

/// SIGTERM to the sidecar of a deleted holder that drains (a restarted
/// sidecar, or a regular container beside the app) ends the drain: the
/// label goes passive at once, and the handover is then done.
#[test]
fn sigterm_while_draining_ends_the_drain_and_labels_passive_at_once() {
    let t0 = Instant::now();
    let mut s = deleted_holder(t0);
    let (actions, _) = turns(&mut s, t0, 5, |s, a| accept(s, a, t0));
    assert_eq!(kinds(&actions), ["release lease", "count the group"]);
    assert!(s.draining(t0), "draining, web-1 may take over");

    assert_eq!(s.begin_shutdown(t0), [Notice::ShutdownRequested]);
    assert!(!s.draining(t0), "SIGTERM ends the drain");
    assert_eq!(
        s.life.phase.gave_up(),
        Some(GiveUp::PodTerminating),
        "the first cause is kept"
    );
    let (actions, _) = turns(&mut s, t0, 5, |s, a| accept(s, a, t0));
    assert_eq!(kinds(&actions), ["label passive"]);
    assert!(s.handover_done(), "released and labelled passive");
}

/// A group of one: nobody can take over, so the app is not held.
#[test]
fn a_deleted_holder_alone_in_its_group_does_not_drain() {
    let t0 = Instant::now();
    let mut s = deleted_holder(t0);
    let (actions, n) = turns(&mut s, t0, 5, |s, a| match a {
        Action::CountGroup { .. } => Outcome::GroupCounted(Ok(0)),
        a => accept(s, a, t0),
    });
    assert_eq!(
        kinds(&actions),
        ["release lease", "count the group", "label passive"],
        "the passive label at once"
    );
    assert!(n.contains(&Notice::NoStandby), "{n:?}");
    assert!(!status(&s, t0).draining);
}

/// web-0, holder but still labelled passive, with `--service=web-svc`.
fn new_holder_with_service(t0: Instant) -> State {
    let mut s = holder(t0, &["--service=web-svc"]);
    s.endpoint.service = Some("web-svc".into());
    s.observe_pod(relabelled(&s, "passive"), t0, &mut Vec::new());
    s.own.role = Some(Role::Passive);
    s
}

/// Rule 9: the new holder's first write is the Service's slice (what the
/// slice holds is `endpoints.rs`'s to test); then it demotes the others
/// and labels itself.
#[test]
fn a_new_holder_makes_itself_the_services_endpoint_before_it_labels() {
    let t0 = Instant::now();
    let mut s = new_holder_with_service(t0);
    let (actions, n) = turns(&mut s, t0, 5, |s, a| accept(s, a, t0));
    assert_eq!(kinds(&actions), ["point service", "promote"]);
    assert!(matches!(actions[0], Action::PointService { until, .. } if until == t0 + 4 * S));
    assert!(n.contains(&Notice::EndpointWritten), "{n:?}");
    assert!(s.endpoint.current);
}

/// A Service that is missing holds up nothing: the holder labels itself,
/// says why once in a Warning Event, and retries the slice on its own
/// back-off.
#[test]
fn a_missing_service_is_said_once_and_the_holder_still_labels_itself() {
    let t0 = Instant::now();
    let mut s = new_holder_with_service(t0);
    let missing = |s: &State, a: &Action| match a {
        Action::PointService { .. } => Outcome::ServicePointed(Err(EndpointError::NoService {
            service: "web-svc".into(),
        })),
        a => accept(s, a, t0),
    };
    let (actions, n) = turns(&mut s, t0, 5, missing);
    assert_eq!(
        kinds(&actions),
        ["point service", "promote"],
        "retried on its back-off, not at once; labelled active all the same"
    );
    let warnings: Vec<_> = n
        .iter()
        .filter_map(|n| match n {
            Notice::Event {
                reason: "ServiceNotWritten",
                note,
                ..
            } => Some(note),
            _ => None,
        })
        .collect();
    assert_eq!(warnings.len(), 1, "{n:?}");
    assert!(
        warnings[0].contains("Service web-svc") && warnings[0].contains("does not exist"),
        "{warnings:?}"
    );
    let retry = s.endpoint.retry_at.expect("a retry");
    assert!(retry > t0);
    let (actions, n) = turns(&mut s, retry, 5, missing);
    assert_eq!(
        kinds(&actions),
        ["point service"],
        "retried on its back-off"
    );
    assert_eq!(events(&n), Vec::<&str>::new(), "said once");
}

#[test]
fn a_lease_held_by_a_stranger_is_said_once_everywhere_until_it_goes() {
    let t0 = Instant::now();
    let mut s = standby(t0, &[]);
    let mut lease = held_by("ghost", "20", 3600);
    s.observe_lease(Some(&lease), t0, &mut Vec::new());
    let (actions, _) = turns(&mut s, t0, 1, |_, a| match a {
        Action::CheckHolder { holder, .. } => Outcome::HolderChecked {
            holder: holder.clone(),
            result: Ok(Membership::NoSuchPod),
        },
        other => panic!("only the look-up: {other:?}"),
    });
    assert_eq!(
        kinds(&actions),
        ["check lease holder"],
        "it looked the holder up"
    );
    // The Event regards our Pod: none goes out while it is unseen.
    let own_pod = s.own.pod.take();
    let mut n = s.note(t0);
    s.own.pod = own_pod;
    for _ in 0..3 {
        n.extend(s.note(t0));
    }
    let problem = status(&s, t0).lease_problem.expect("a lease problem");
    assert!(
        problem.contains("\"ghost\"") && problem.contains("kubectl delete lease web"),
        "{problem}"
    );
    assert_eq!(
        n.iter()
            .filter(|n| matches!(n, Notice::Stranger(Some(_))))
            .count(),
        1
    );
    assert_eq!(events(&n), ["LeaseHeldByStranger"], "once");

    // Released: nothing to say any more.
    lease.metadata.resource_version = Some("21".into());
    lease.spec.as_mut().expect("spec").holder_identity = None;
    s.observe_lease(Some(&lease), t0, &mut Vec::new());
    assert_eq!(s.note(t0), [Notice::Stranger(None)]);
    assert_eq!(status(&s, t0).lease_problem, None);
}

/// SIGTERM cut a call short (it may have renewed): the holder reads the
/// Lease again and releases it before it is done, rather than exiting on
/// a Lease it no longer knows and leaving it to expire.
#[test]
fn sigterm_cutting_a_call_short_reads_the_lease_again_and_releases_it() {
    let t0 = Instant::now();
    let mut s = holder(t0, &[]);
    s.cut_short(t0);
    assert!(!s.handover_done(), "the Lease may still name us");
    let mut actions = Vec::new();
    while !s.handover_done() && actions.len() < 6 {
        s.note(t0);
        s.enforce(t0);
        let Some(action) = decide(&s, t0) else { break };
        accepted(&mut s, &action, t0);
        actions.push(action);
    }
    assert!(s.handover_done());
    let kinds = kinds(&actions);
    let read = kinds.iter().position(|k| *k == "read lease");
    let release = kinds.iter().position(|k| *k == "release lease");
    assert!(
        read.is_some() && release > read,
        "read, then released: {kinds:?}"
    );
}

/// The handover on SIGTERM is timed: the driver observes it once done.
#[test]
fn a_release_on_shutdown_keeps_its_start_for_the_handover_metric() {
    let t0 = Instant::now();
    let mut s = holder(t0, &[]);
    s.begin_shutdown(t0);
    let (actions, _) = turns(&mut s, t0, 5, |s, a| accept(s, a, t0));
    assert!(kinds(&actions).contains(&"release lease"), "{actions:?}");
    assert!(s.handover_done());
    assert_eq!(s.life.handover_started, Some(t0));
}
