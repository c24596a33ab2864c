//! Rule 12: a deleted Lease. Its holder creates it again at once and keeps
//! its role; a standby waits until the holder's claim would have expired
//! (rule 2's clock, kept across the deletion), then creates it if nobody
//! did; a Lease never seen is created at once, as in a first election.

use std::time::Instant;

use kube::runtime::watcher;

use super::*;
use crate::candidate::decide::next_wake;

/// The watch says `s`'s Lease was deleted, at `at`.
fn delete_lease(s: &mut State, at: Instant) {
    let lease = s.lease.object.clone().expect("a lease to delete");
    s.handle_lease_event(Ok(watcher::Event::Delete(lease)), at);
    assert_eq!(*lease_view(s), LeaseView::Absent);
}

/// The step and reason of a Lease write.
fn write_of(action: Option<Action>) -> (&'static str, String) {
    match action {
        Some(Action::WriteLease(w)) => (
            super::super::settle::step_name(w.step),
            w.reason.unwrap_or_default(),
        ),
        other => panic!("a Lease write: {other:?}"),
    }
}

#[test]
fn a_holder_whose_lease_is_deleted_recreates_it_at_once_and_keeps_its_role() {
    let t0 = Instant::now();
    let mut s = holder(t0, &[]);
    let t1 = t0 + S;
    delete_lease(&mut s, t1);
    assert!(s.leading(t1), "still holder until its deadline");
    assert_eq!(s.outward_role(t1), Some(Role::Active));
    let (step, reason) = write_of(decide(&s, t1));
    assert_eq!(step, "create lease", "at once, not at its renewal");
    assert_eq!(reason, "web-0 re-created the deleted lease it held");

    let (actions, notices) = turns(&mut s, t1, 10, |s, a| accept(s, a, t1));
    assert_eq!(
        kinds(&actions),
        ["create lease"],
        "no passive label, no promotion: the role never moved"
    );
    assert!(
        !notices.iter().any(|n| matches!(n, Notice::Acquired { .. })),
        "not a new holder: {notices:?}"
    );
    assert_eq!(s.holder(), Some("web-0"));
    assert_eq!(s.transitions(), 1, "the same holder: no transition (I6)");
    assert_eq!(s.label_role(), Some(Role::Active));
    assert_eq!(
        s.leading_until(),
        Some(t1 + s.settings.renew_deadline),
        "leadership runs from the create"
    );
}

#[test]
fn a_holder_past_its_deadline_labels_itself_passive_before_recreating() {
    let t0 = Instant::now();
    let mut s = holder(t0, &[]);
    let late = t0 + s.settings.renew_deadline;
    delete_lease(&mut s, late);
    let (actions, _) = turns(&mut s, late, 10, |s, a| accept(s, a, late));
    assert_eq!(
        kinds(&actions),
        ["label passive", "create lease", "promote"],
        "rule 7 first: it no longer led when it saw the deletion"
    );
}

#[test]
fn an_unhealthy_holder_does_not_recreate_a_deleted_lease() {
    let t0 = Instant::now();
    let mut s = holder(t0, &[]);
    s.handle_health(failing("503"));
    let t1 = t0 + S;
    delete_lease(&mut s, t1);
    let (actions, _) = turns(&mut s, t1, 10, |s, a| accept(s, a, t1));
    assert_eq!(kinds(&actions), ["label passive"], "gives up instead");
}

#[test]
fn a_standby_waits_for_the_deleted_holders_claim_then_creates_if_nobody_did() {
    let t0 = Instant::now();
    let mut s = standby(t0, &[]);
    s.observe_lease(Some(&held_by("web-1", "8", 6)), t0, &mut Vec::new());
    let t1 = t0 + S;
    delete_lease(&mut s, t1);
    let expires = t0 + 6 * S;
    assert_eq!(decide(&s, t1), None, "the holder may re-create it");
    assert_eq!(decide(&s, expires - MS), None);
    assert_eq!(
        next_wake(&s, t1),
        Some(expires),
        "wakes when the claim ends"
    );
    let (step, reason) = write_of(decide(&s, expires));
    assert_eq!(step, "create lease", "the holder is gone too");
    assert!(reason.contains("web-1"), "{reason}");

    let (actions, _) = turns(&mut s, expires, 10, |s, a| accept(s, a, expires));
    assert_eq!(kinds(&actions), ["create lease", "promote"]);
    assert_eq!(s.holder(), Some("web-0"));
    assert_eq!(s.transitions(), 2, "a change of holder counts on (I6)");
}

#[test]
fn a_standby_leaves_a_lease_its_holder_recreated() {
    let t0 = Instant::now();
    let mut s = standby(t0, &[]);
    s.observe_lease(Some(&held_by("web-1", "8", 6)), t0, &mut Vec::new());
    delete_lease(&mut s, t0 + S);
    let t2 = t0 + 2 * S;
    s.observe_lease(Some(&held_by("web-1", "1", 6)), t2, &mut Vec::new());
    s.lease.holder_pod = Some(("web-1".into(), Membership::Member));
    assert_eq!(
        decide(&s, t0 + 6 * S),
        None,
        "a new version restarts the clock (rule 2)"
    );
    assert!(matches!(
        decide(&s, t2 + 6 * S),
        Some(Action::WriteLease(w)) if w.step == election::Step::Acquire
    ));
}

#[test]
fn a_lease_never_seen_or_released_is_created_at_once() {
    let t0 = Instant::now();
    let mut first = standby(t0, &[]);
    first.observe_lease(None, t0, &mut Vec::new());
    let (step, reason) = write_of(decide(&first, t0));
    assert_eq!(step, "create lease", "first election: unchanged");
    assert_eq!(reason, "web-0 created the lease");
    let created = sent(&first, &decide(&first, t0).expect("a create"));
    let spec = created.spec.expect("a spec");
    assert_eq!(spec.lease_transitions, Some(0), "counting starts");

    let mut released = standby(t0, &[]);
    let mut lease = held_by("web-1", "8", 6);
    lease.spec.as_mut().expect("a spec").holder_identity = None;
    released.observe_lease(Some(&lease), t0, &mut Vec::new());
    delete_lease(&mut released, t0 + S);
    let (step, _) = write_of(decide(&released, t0 + S));
    assert_eq!(step, "create lease", "nobody's claim to wait for");
}
