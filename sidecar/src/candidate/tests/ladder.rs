//! The ladder's rules as synchronous calls with explicit instants: the
//! Lease (rules 1, 2, 5), the passive label (rules 4, 7), promotion (rule 3).

use std::time::Instant;

use super::*;
use crate::candidate::{REFUSED_RETRY_BASE, SHUTDOWN_CALL_TIMEOUT, say::status};

#[test]
fn renews_when_due_and_a_timeout_shows_passive_at_the_deadline() {
    let t0 = Instant::now();
    let mut s = holder(t0, &[]);
    assert_eq!(decide(&s, t0 + S), None, "not due before the renew period");
    let Some(renew @ Action::WriteLease(_)) = decide(&s, t0 + 2 * S) else {
        panic!("a renewal at t0 + 2 s: {:?}", decide(&s, t0 + 2 * S));
    };
    assert_eq!(kinds(std::slice::from_ref(&renew)), ["renew lease"]);
    let Action::WriteLease(write) = renew.clone() else {
        unreachable!()
    };
    let timed_out = Outcome::LeaseWritten {
        write,
        sent: t0 + 2 * S,
        renew_time: None,
        result: Err(write_timeout()),
    };
    let n = settle(&mut s, timed_out, t0 + 2200 * MS, JITTER);
    assert!(n.contains(&Notice::ApiError("renew lease")), "{n:?}");
    assert_eq!(
        *lease_view(&s),
        LeaseView::Unknown,
        "it may have landed: re-read"
    );
    assert_eq!(
        s.outward_role(t0 + 2200 * MS),
        Some(Role::Passive),
        "until it is read"
    );
    let lease = held_by("web-0", "7", 6);
    let retry = s.api.retry_at.expect("a back-off");
    settle(&mut s, Outcome::LeaseRead(Ok(Some(lease))), retry, JITTER);
    assert_eq!(
        s.outward_role(t0 + 3 * S),
        Some(Role::Active),
        "unchanged: still holder"
    );
    assert_eq!(
        s.outward_role(t0 + 4 * S),
        Some(Role::Passive),
        "at the deadline"
    );
}

/// A sidecar that has not seen its own Pod (its watch slow, or not
/// allowed) neither creates, acquires nor renews the Lease: it could not
/// label itself active, and the group would have no endpoint.
#[test]
fn no_lease_write_before_the_own_pod_is_seen() {
    let t0 = Instant::now();
    let mut s = standby(t0, &[]);
    s.own.pod = None;
    s.lease.view = LeaseView::Absent;
    assert_eq!(decide(&s, t0), None, "waits");
    // Reading is harmless, and says whether the API server answers.
    s.lease.view = LeaseView::Unknown;
    assert!(matches!(decide(&s, t0), Some(Action::ReadLease { .. })));
    let mut h = holder(t0, &[]);
    h.own.pod = None;
    assert_eq!(
        decide(&h, t0 + 2 * S),
        None,
        "a holder due to renew waits too"
    );
}

#[test]
fn a_lease_read_that_times_out_backs_off_like_any_failed_call() {
    let t0 = Instant::now();
    let mut s = standby(t0, &["--api-timeout=100ms"]);
    assert!(matches!(decide(&s, t0), Some(Action::ReadLease { .. })));
    let t1 = t0 + 100 * MS;
    settle(&mut s, Outcome::LeaseRead(Err(write_timeout())), t1, JITTER);
    assert!(
        !s.api.calls.reachable(),
        "an unanswered read is a failed call"
    );
    let retry = s.api.retry_at.expect("backing off before reading again");
    assert_eq!(
        retry,
        t1 + S / 2,
        "half the retry period at first: {retry:?}"
    );
    assert_eq!(decide(&s, t1), None, "not asked again at once");
    assert!(matches!(decide(&s, retry), Some(Action::ReadLease { .. })));
}

/// A renewal the API server does not answer may wait past the holder's
/// deadline and the api-timeout, until the Lease it renews would expire
/// (decisions §20): on a slow server it lands, and no standby takes over.
/// The holder shows passive from its deadline on all the same, and after
/// the timeout backs off and re-reads the Lease.
#[test]
fn a_renewal_waits_until_the_lease_would_expire_and_shows_passive_from_the_deadline() {
    let flags = SHORT;
    let t0 = Instant::now();
    let mut s = holder(t0, &flags);
    let now = t0 + 200 * MS;
    let Some(Action::WriteLease(renew)) = decide(&s, now) else {
        panic!("a renewal");
    };
    assert_eq!(
        renew.bound.at(now),
        800 * MS,
        "until the lease would expire, not the deadline or the api-timeout"
    );
    assert_eq!(renew.bound.deadline, Some(t0 + S));
    let deadline = t0 + 400 * MS;
    assert_eq!(status(&s, deadline).role, Some(Role::Passive), "meanwhile");
    let expiry = t0 + S;
    let outcome = Outcome::LeaseWritten {
        write: renew,
        sent: now,
        renew_time: None,
        result: Err(write_timeout()),
    };
    settle(&mut s, outcome, expiry, JITTER);
    assert_eq!(*lease_view(&s), LeaseView::Unknown, "re-read next");
    assert!(
        s.api.retry_at.is_some() && !s.api.calls.reachable(),
        "backing off"
    );
    assert_eq!(status(&s, expiry).role, Some(Role::Passive));
}

/// Other calls of a holder are still cut at its deadline, and every call
/// during a shutdown at its bound.
#[test]
fn only_a_renewal_outlasts_the_deadline() {
    let flags = SHORT;
    let t0 = Instant::now();
    let s = holder(t0, &flags);
    let now = t0 + 200 * MS;
    assert_eq!(s.call_timeout(now).at(now), 200 * MS);
    let mut stopping = holder(t0, &flags);
    stopping.begin_shutdown(now);
    assert!(stopping.renewal_bound(now).at(now) <= SHUTDOWN_CALL_TIMEOUT);
}

#[test]
fn a_re_read_of_an_unchanged_lease_keeps_its_expiry_clock() {
    let t0 = Instant::now();
    let mut s = standby(t0, &[]);
    let lease = held_by("web-1", "8", 6);
    s.observe_lease(Some(&lease), t0, &mut Vec::new());
    // An acquire timed out: the Lease is re-read, and has not changed.
    s.lease.view = LeaseView::Unknown;
    let n = settle(
        &mut s,
        Outcome::LeaseRead(Ok(Some(lease))),
        t0 + 5 * S,
        JITTER,
    );
    assert!(n.is_empty(), "{n:?}");
    let LeaseView::Present(o) = lease_view(&s) else {
        panic!("read: {:?}", s.lease.view)
    };
    assert_eq!(o.seen_at, t0, "expires 6 s after it was first seen");
    assert_eq!(
        decide(&s, t0 + 5 * S).map(|a| kinds(&[a])),
        Some(vec!["check lease holder"])
    );
}

/// Rule 7's exception: a holder cut off from the API server past its
/// deadline, once the server is back, reads and renews before anything
/// else, and keeps its active label (no passive-then-active flap).
#[test]
fn a_holder_back_from_an_outage_renews_before_relabelling_and_keeps_its_label() {
    let t0 = Instant::now();
    let mut s = holder(t0, &["--api-timeout=100ms"]);
    let due = t0 + 2 * S;
    let Some(Action::WriteLease(renew)) = decide(&s, due) else {
        panic!("a renewal");
    };
    let outcome = Outcome::LeaseWritten {
        write: renew,
        sent: due,
        renew_time: None,
        result: Err(write_timeout()),
    };
    settle(&mut s, outcome, due + 100 * MS, JITTER);
    // The deadline passes while the API server stays out of reach.
    let back = t0 + 5 * S;
    assert_eq!(
        status(&s, back).role,
        Some(Role::Passive),
        "passive at the deadline"
    );

    let lease = held_by("web-0", "7", 6);
    let (actions, _) = turns(&mut s, back, 3, |s, a| match a {
        Action::ReadLease { .. } => Outcome::LeaseRead(Ok(Some(lease.clone()))),
        a => accept(s, a, back),
    });
    assert_eq!(kinds(&actions), ["read lease", "renew lease"], "no relabel");
    assert!(s.leading(back), "renewed");
    assert_eq!(s.label_role(), Some(Role::Active));
    assert_eq!(status(&s, back).role, Some(Role::Active));
}

/// A holder whose RBAC is gone: the renewal is refused (said as the API
/// server failing, once), it shows passive at its deadline while its label
/// stays active, and its failing passive label is said once, with the error.
#[test]
fn a_holder_that_lost_its_rbac_shows_passive_at_its_deadline_and_says_why_once() {
    let t0 = Instant::now();
    let mut s = holder(t0, &[]);
    let due = t0 + 2 * S;
    let refused = |s: &State, a: &Action| match a {
        Action::WriteLease(w) => Outcome::LeaseWritten {
            write: w.clone(),
            sent: due,
            renew_time: None,
            result: Err(WriteError::Api {
                lease: "web".into(),
                source: api_error(403, "Forbidden"),
            }),
        },
        Action::LabelPassive { .. } => {
            Outcome::LabelledPassive(Err(label_error(403, Role::Passive)))
        }
        a => accept(s, a, due),
    };
    let (actions, n) = turns(&mut s, due, 1, refused);
    assert_eq!(kinds(&actions), ["renew lease"]);
    let failing: Vec<_> = n
        .iter()
        .filter(|n| matches!(n, Notice::ApiFailing { .. }))
        .collect();
    assert_eq!(failing.len(), 1, "{n:?}");
    assert_eq!(
        status(&s, due).role,
        Some(Role::Active),
        "within the deadline"
    );

    // The deadline passes: every outward sign turns passive, the label cannot.
    let deadline = t0 + 4 * S;
    let shown = status(&s, deadline);
    assert_eq!(shown.role, Some(Role::Passive), "{shown:?}");
    assert_eq!(shown.label_role, Some(Role::Active), "{shown:?}");

    // Its attempts to label itself passive fail: said once, with the error.
    let mut all = Vec::new();
    for _ in 0..3 {
        s.api.retry_at = None;
        let (actions, n) = turns(&mut s, deadline, 1, refused);
        assert_eq!(kinds(&actions), ["label passive"]);
        all.extend(n);
    }
    let said: Vec<_> = all
        .iter()
        .filter_map(|n| match n {
            Notice::PassiveLabelFailing { error } => Some(error),
            _ => None,
        })
        .collect();
    assert_eq!(said.len(), 1, "{all:?}");
    assert!(said[0].contains("Forbidden on purpose"), "{said:?}");
    assert_eq!(status(&s, deadline).role, Some(Role::Passive));
}

/// web-0, holder, still labelled passive at pod version 12.
fn unlabelled_holder(t0: Instant) -> State {
    let mut s = holder(t0, &[]);
    s.observe_pod(pod("12", "passive"), t0, &mut Vec::new());
    s.own.role = Some(Role::Passive);
    s
}

/// Rule 3's precondition: a promotion that conflicts (409, the pod changed
/// since it was read) is not sent again with the same stale version; it
/// waits until the watch shows a newer pod.
#[test]
fn a_promotion_that_conflicts_waits_for_the_watch_not_a_resend() {
    let t0 = Instant::now();
    let mut s = unlabelled_holder(t0);
    let conflict = |_: &State, a: &Action| match a {
        Action::Promote { version, .. } => Outcome::Promoted {
            demoted: Ok(Vec::new()),
            version: version.clone(),
            label: Err(LabelError::Conflict {
                pod: "web-0".into(),
                role: Role::Active,
            }),
        },
        other => panic!("only the promotion: {other:?}"),
    };
    let (actions, n) = turns(&mut s, t0, 4, conflict);
    assert_eq!(kinds(&actions), ["promote"], "not resent");
    assert!(matches!(&actions[0], Action::Promote { version: Some(v), .. } if v == "12"));
    assert!(
        n.iter().any(|n| matches!(n, Notice::PodChanged { .. })),
        "{n:?}"
    );

    s.observe_pod(pod("14", "passive"), t0, &mut Vec::new());
    let Some(Action::Promote { version, .. }) = decide(&s, t0) else {
        panic!("promoted again");
    };
    assert_eq!(version.as_deref(), Some("14"));
}

/// A promotion refused at admission (422: the Lease-holder policy, whose
/// cached Lease may lag the write that made us holder) is counted and
/// retried after about 20 ms, not at once and not after the API back-off.
#[test]
fn a_promotion_refused_at_admission_is_retried_soon_and_counted() {
    let t0 = Instant::now();
    let mut s = unlabelled_holder(t0);
    let Some(Action::Promote { version, .. }) = decide(&s, t0) else {
        panic!("the promotion");
    };
    let refused = Outcome::Promoted {
        demoted: Ok(vec!["web-1".into()]),
        version,
        label: Err(LabelError::Refused {
            pod: "web-0".into(),
            role: Role::Active,
            message: "not the holder".into(),
        }),
    };
    let n = settle(&mut s, refused, t0, JITTER);
    assert!(n.contains(&Notice::PromotionRefused), "counted: {n:?}");
    assert!(
        n.contains(&Notice::Demoted {
            pod: "web-1".into()
        }),
        "{n:?}"
    );
    let retry = s.api.retry_at.expect("a retry");
    assert!(
        retry - t0 <= REFUSED_RETRY_BASE * 2,
        "soon: {:?}",
        retry - t0
    );
    assert_eq!(decide(&s, t0), None, "not at once");
    assert!(
        matches!(decide(&s, retry), Some(Action::Promote { .. })),
        "retried"
    );
    assert!(s.api.calls.reachable(), "a refusal is no API failure");

    let (_, n) = turns(&mut s, retry, 1, |s, a| accept(s, a, retry));
    assert!(n.contains(&Notice::LabelAdmitted { refused: 1 }), "{n:?}");
    assert_eq!(s.label_role(), Some(Role::Active));
}

/// Item 7 after the Lease: a new holder with nothing else to do promotes
/// itself, and an Event says so; the role is adopted from the label after.
#[test]
fn a_new_holder_promotes_itself_and_says_so() {
    let t0 = Instant::now();
    let mut s = unlabelled_holder(t0);
    let (actions, n) = turns(&mut s, t0, 5, |s, a| accept(s, a, t0));
    assert_eq!(kinds(&actions), ["promote"]);
    assert_eq!(events(&n), ["Promoted"]);
    assert_eq!(status(&s, t0).role, Some(Role::Active));
}

/// Rule 3: the others first. A demotion that fails ends the promotion
/// there (nothing labelled active), backs off like any failed call, and
/// leaves the Pod version alone: the next promotion is not held up.
#[test]
fn a_failed_demotion_backs_off_without_promoting() {
    let t0 = Instant::now();
    let mut s = unlabelled_holder(t0);
    let Some(Action::Promote { version, .. }) = decide(&s, t0) else {
        panic!("the promotion");
    };
    let failed = Outcome::Promoted {
        demoted: Err(LabelError::List {
            group: "web".into(),
            source: api_error(503, "ServiceUnavailable"),
        }),
        version,
        label: Ok(Labelled::NotSent),
    };
    let n = settle(&mut s, failed, t0, JITTER);
    assert!(n.contains(&Notice::ApiError("promote")), "{n:?}");
    assert_eq!(s.label_role(), Some(Role::Passive));
    let retry = s.api.retry_at.expect("a back-off");
    assert_eq!(decide(&s, t0), None);
    assert!(
        matches!(decide(&s, retry), Some(Action::Promote { .. })),
        "not held up"
    );
}

/// Rules 5 and 11: the app is told active, and the proxy serves it, as
/// soon as our acquisition lands, before the promotion's list and patch;
/// only while we lead, and never while a holder gives up or hands over.
#[test]
fn a_new_holder_serves_once_its_acquisition_lands_and_stops_before_any_release() {
    let t0 = Instant::now();
    let mut s = standby(t0, &[]);
    s.observe_lease(Some(&held_by("web-1", "8", 6)), t0, &mut Vec::new());
    let at = t0 + 7 * S;
    assert_eq!(
        status(&s, at).role,
        Some(Role::Passive),
        "another pod's Lease"
    );
    let (actions, _) = turns(&mut s, at, 1, |s, a| accept(s, a, at));
    assert_eq!(kinds(&actions), ["acquire lease"]);
    let acquired = status(&s, at);
    assert_eq!(
        acquired.role,
        Some(Role::Active),
        "active once the write landed"
    );
    assert_eq!(acquired.label_role, Some(Role::Passive), "not yet labelled");
    assert!(matches!(decide(&s, at), Some(Action::Promote { .. })));
    let deadline = s.leading_until().expect("leads");
    assert_eq!(
        status(&s, deadline).role,
        Some(Role::Passive),
        "not past its deadline"
    );

    // A holder whose app dies stops serving before its first call.
    let mut dying = holder(t0, &[]);
    assert_eq!(status(&dying, t0).role, Some(Role::Active));
    dying.handle_health(failing("connection refused"));
    dying.enforce(t0 + MS);
    assert_eq!(status(&dying, t0 + MS).role, Some(Role::Passive));
    let (actions, _) = turns(&mut dying, t0 + MS, 3, |s, a| accept(s, a, t0 + MS));
    assert_eq!(
        kinds(&actions),
        ["release lease", "label passive"],
        "the release first: the standby waits for it, not for the label"
    );
    assert_eq!(status(&dying, t0 + MS).role, Some(Role::Passive));

    // A holder handing over stops serving before the write is sent.
    let mut handing = holder(t0, &[]);
    handing.begin_handover_write();
    assert_eq!(status(&handing, t0).role, Some(Role::Passive));
}
