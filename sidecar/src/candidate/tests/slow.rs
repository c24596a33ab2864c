//! A slow API server (answers later than `--api-timeout`, writes that land
//! unanswered): the holder never gives up a role nobody else could have
//! taken, and still shows passive by its deadline (rules 5 and 7).

use std::time::Instant;

use super::*;

fn version(s: &State) -> Option<&str> {
    s.lease
        .object
        .as_ref()?
        .metadata
        .resource_version
        .as_deref()
}

/// The renewal due at `t0 + 2 s` sent and timed out at `at`; returns the
/// Lease as it landed on the API server.
fn renewal_times_out(s: &mut State, t0: Instant, at: Instant) -> Lease {
    let renew = decide(s, t0 + 2 * S).expect("a renewal due");
    assert_eq!(kinds(std::slice::from_ref(&renew)), ["renew lease"]);
    let landed = bumped(sent(s, &renew));
    let Action::WriteLease(write) = renew else {
        unreachable!()
    };
    let renew_time = landed.spec.as_ref().and_then(|l| l.renew_time.clone());
    let timed_out = Outcome::LeaseWritten {
        write,
        sent: t0 + 2 * S,
        renew_time,
        result: Err(write_timeout()),
    };
    settle(s, timed_out, at, JITTER);
    landed
}

/// Sent at t0 + 2 s, unanswered by the deadline (t0 + 4 s): passive then.
/// Seen landed at t0 + 4.5 s (the watch, once the server catches up), it
/// counts from when it was sent: active again until t0 + 6 s.
#[test]
fn a_renewal_seen_landed_after_its_timeout_counts_from_when_it_was_sent() {
    let t0 = Instant::now();
    let mut s = holder(t0, &[]);
    let landed = renewal_times_out(&mut s, t0, t0 + 4 * S);
    assert_eq!(s.outward_role(t0 + 4 * S), Some(Role::Passive));

    let mut n = Vec::new();
    s.observe_lease(Some(&landed), t0 + 4500 * MS, &mut n);
    assert!(n.contains(&Notice::RenewalLandedLate), "{n:?}");
    assert_eq!(s.outward_role(t0 + 4500 * MS), Some(Role::Active));
    assert_eq!(s.outward_role(t0 + 6 * S), Some(Role::Passive));
    assert!(s.lease.unanswered_renewal.is_none(), "credited once");
}

/// Only our own write is credited: a Lease that names us with another
/// `renewTime` (a handover to us, an older write) is not that renewal.
#[test]
fn a_lease_naming_us_with_another_renew_time_is_not_credited() {
    let t0 = Instant::now();
    let mut s = holder(t0, &[]);
    let mut other = renewal_times_out(&mut s, t0, t0 + 4 * S);
    if let Some(spec) = other.spec.as_mut() {
        spec.renew_time = None;
    }
    let mut n = Vec::new();
    s.observe_lease(Some(&bumped(other)), t0 + 4500 * MS, &mut n);
    assert!(!n.contains(&Notice::RenewalLandedLate), "{n:?}");
    assert_eq!(s.outward_role(t0 + 4500 * MS), Some(Role::Passive));
}

/// A renewal that timed out, retried: the retry conflicts with the first
/// one, which landed. The conflict says nothing of being cut off, so the
/// holder past its deadline keeps its label (rule 7's exception), reads,
/// finds the Lease still its own and renews: no passive label, no
/// promotion, only the calls a renewal needs.
#[test]
fn a_conflict_with_our_own_landed_renewal_keeps_the_label() {
    let t0 = Instant::now();
    let mut s = holder(t0, &[]);
    let landed = renewal_times_out(&mut s, t0, t0 + 4 * S);
    assert!(s.api.out_of_reach, "no answer: cut off for now");
    let at = t0 + 5 * S;
    // The re-read after the timeout is answered with the version before
    // the landed write (a lagging cache), so the retry conflicts.
    settle(
        &mut s,
        Outcome::LeaseRead(Ok(Some(held_by("web-0", "7", 6)))),
        at,
        JITTER,
    );
    let (actions, _) = turns(&mut s, at, 6, |s, action| match action {
        // Written on version 7: conflicts with the landed one.
        Action::WriteLease(w) if version(s) == Some("7") => Outcome::LeaseWritten {
            write: w.clone(),
            sent: at,
            renew_time: None,
            result: Err(WriteError::Conflict {
                lease: "web".into(),
            }),
        },
        Action::ReadLease { .. } => Outcome::LeaseRead(Ok(Some(landed.clone()))),
        other => accept(s, other, at),
    });
    assert!(
        !kinds(&actions).contains(&"label passive"),
        "{:?}",
        kinds(&actions)
    );
    assert!(
        !kinds(&actions).contains(&"promote"),
        "{:?}",
        kinds(&actions)
    );
    assert_eq!(s.outward_role(at), Some(Role::Active), "renewed");
    assert_eq!(s.label_role(), Some(Role::Active));
}

/// The conflict was another pod's write: the re-read names it, and the
/// old holder labels itself passive.
#[test]
fn a_conflict_with_a_new_holder_labels_passive() {
    let t0 = Instant::now();
    let mut s = holder(t0, &[]);
    renewal_times_out(&mut s, t0, t0 + 4 * S);
    let at = t0 + 9 * S;
    settle(
        &mut s,
        Outcome::LeaseRead(Ok(Some(held_by("web-0", "7", 6)))),
        at,
        JITTER,
    );
    let (actions, _) = turns(&mut s, at, 4, |s, action| match action {
        Action::WriteLease(w) if s.holder() == Some("web-0") => Outcome::LeaseWritten {
            write: w.clone(),
            sent: at,
            renew_time: None,
            result: Err(WriteError::Conflict {
                lease: "web".into(),
            }),
        },
        Action::ReadLease { .. } => Outcome::LeaseRead(Ok(Some(held_by("web-1", "9", 6)))),
        other => accept(s, other, at),
    });
    assert!(
        kinds(&actions).contains(&"label passive"),
        "{:?}",
        kinds(&actions)
    );
    assert_eq!(s.outward_role(at), Some(Role::Passive));
}
