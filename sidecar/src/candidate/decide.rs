//! The ladder: the one thing to do next, as a pure function of the state and
//! the instant (`docs/design.md`, "The sidecar's loop", items 1 to 11), and
//! the next instant at which that answer may change without any input.

use std::time::{Duration, Instant};

use k8s_openapi::{api::coordination::v1::Lease, jiff::Timestamp};

use super::state::{CallBound, State};
use crate::{
    contract::Role,
    contract::controls::{self, SWITCH_REASON, SWITCHOVER_TO, Target},
    election::{self, LeaseView, Step},
};

/// One thing for the driver to do, with everything it needs to do it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Item 2: label our Pod passive (rules 4, 7).
    LabelPassive { bound: CallBound },
    /// Item 4: read the Lease (nothing known, or a write may have landed).
    ReadLease { bound: CallBound },
    /// Item 4: create, acquire, renew or release the Lease (rules 1, 2, 5, 10).
    WriteLease(LeaseWrite),
    /// Item 5: hand the Lease on (rule 10).
    HandOver(Handover),
    /// Item 6: make our Pod the Service's one endpoint, if still holder
    /// right before the write (rule 9).
    PointService { until: Instant, bound: CallBound },
    /// Item 7: demote the others, then, if still holder before the write,
    /// label ourselves active on our Pod's `version` (rule 3).
    Promote {
        version: Option<String>,
        until: Instant,
        bound: CallBound,
    },
    /// Item 8: count the group's other pods not being deleted (rule 8).
    CountGroup { bound: CallBound },
    /// Item 9: look up the Lease's holder, once per holder.
    CheckHolder { holder: String, bound: CallBound },
    /// Item 10: set our Pod's app-healthy condition (rule 10).
    PublishHealth {
        healthy: bool,
        last_failure: Option<String>,
        bound: CallBound,
    },
    /// Item 10, no call: the Pod already shows the verdict (a restarted
    /// sidecar); take it as written.
    AdoptHealth(bool),
    /// Item 11, no call: the label already on the Pod is our role.
    AdoptRole(Role),
}

impl Action {
    /// The API operation this action calls, in logs and the
    /// `baton_api_calls_total` and `baton_api_errors_total` metrics; None
    /// for the actions that call nothing.
    pub fn operation(&self) -> Option<&'static str> {
        Some(match self {
            Action::LabelPassive { .. } => op::LABEL_PASSIVE,
            Action::ReadLease { .. } => super::settle::step_name(Step::Read),
            Action::WriteLease(w) => super::settle::step_name(w.step),
            Action::HandOver(_) => op::HAND_OVER,
            Action::PointService { .. } => op::POINT_SERVICE,
            Action::Promote { .. } => op::PROMOTE,
            Action::CountGroup { .. } => op::COUNT_GROUP,
            Action::CheckHolder { .. } => op::CHECK_HOLDER,
            Action::PublishHealth { .. } => op::SET_HEALTH,
            Action::AdoptHealth(_) | Action::AdoptRole(_) => return None,
        })
    }
}

/// The names of the calls other than the Lease's steps.
pub mod op {
    pub const LABEL_PASSIVE: &str = "label passive";
    pub const HAND_OVER: &str = "hand over lease";
    pub const POINT_SERVICE: &str = "point service";
    pub const PROMOTE: &str = "promote";
    pub const COUNT_GROUP: &str = "count the group";
    pub const CHECK_HOLDER: &str = "check lease holder";
    pub const SET_HEALTH: &str = "set health condition";
}

/// A conditional write of the Lease (rule 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseWrite {
    /// Create, Acquire, Renew or Release.
    pub step: Step,
    /// The Acquire takes back a switchover of ours nobody took (rule 10).
    pub taking_back: bool,
    /// `baton.dev/switch-reason` to write; None leaves it.
    pub reason: Option<String>,
    /// The write ends the switchover asked for: its annotation goes.
    pub ends_switchover: bool,
    /// A Create of a deleted Lease: its `leaseTransitions` carried on
    /// (I6; rule 12), one more unless it named us.
    pub transitions: Option<i32>,
    pub bound: CallBound,
}

impl LeaseWrite {
    /// The Lease to send: `current` (None to create) after this write, as
    /// `me` at wall time `wall` (`renewTime`, for people).
    pub fn desired(
        &self,
        current: Option<&Lease>,
        me: &str,
        duration: Duration,
        wall: Timestamp,
    ) -> Lease {
        let mut desired = election::desired_lease(current, self.step, me, duration, wall);
        if let Some(reason) = &self.reason {
            election::annotate(&mut desired, SWITCH_REASON, Some(reason.clone()));
        }
        if self.ends_switchover {
            election::annotate(&mut desired, SWITCHOVER_TO, None);
        }
        if let (Some(t), Some(spec)) = (self.transitions, desired.spec.as_mut()) {
            spec.lease_transitions = Some(t);
        }
        desired
    }
}

/// A holder handing the Lease on (rule 10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handover {
    pub target: Target,
    /// For `baton.dev/switch-reason`, the log and the Event.
    pub reason: String,
    pub bound: CallBound,
}

impl Handover {
    /// The Lease to send: `current` handed to the target (or released for
    /// any standby), at wall time `wall`.
    pub fn desired(&self, current: &Lease, duration: Duration, wall: Timestamp) -> Lease {
        let to = match &self.target {
            Target::Pod(p) => Some(p.as_str()),
            Target::Any => None,
        };
        let mut desired = election::handed_lease(current, to, duration, wall);
        election::annotate(&mut desired, SWITCH_REASON, Some(self.reason.clone()));
        desired
    }
}

/// The one thing to do at `now`, if any. `State::enforce` runs first.
pub fn decide(s: &State, now: Instant) -> Option<Action> {
    if s.api.retry_at.is_some_and(|t| now < t) {
        return None;
    }
    let leading = s.leading(now);
    let label = s.label_role();
    let have_pod = s.own.pod.is_some();
    let bound = s.call_timeout(now);

    // Rules 4 and 7: whoever is not holder is labelled passive, first;
    // except a holder that missed its deadline only for want of answers,
    // which reads and renews first when the API server is back (a renewal
    // that lands proves nobody took over, so it keeps its label without a
    // flap); a deleted holder, which releases first and keeps its label
    // while it drains (rule 8); a holder handing over (rule 10); and a
    // holder that gave up, which releases first (rule 4).
    if !leading
        && have_pod
        && label != Some(Role::Passive)
        && !s.may_still_hold(label)
        && !s.draining(now)
        && !s.keeps_label_while_handing_over(now)
        && !s.releases_first(now)
    {
        return Some(Action::LabelPassive { bound });
    }

    // Then the Lease. Writes only once our Pod has been seen: a holder that
    // cannot label itself would leave the Service without an endpoint while
    // it renews. (A deleted Pod still releases; reads go on, so that an
    // unreachable API server is noticed and said.)
    let step = s.step(now);
    if !have_pod && !s.own.deleted && !matches!(step, Step::Read | Step::WaitUntil(_)) {
        return None;
    }
    match step {
        Step::WaitUntil(_) => {}
        Step::Read => return Some(Action::ReadLease { bound }),
        // A release comes before the passive label above (rule 4).
        Step::Renew => {
            let bound = s.renewal_bound(now);
            return Some(Action::WriteLease(lease_write(s, Step::Renew, bound)));
        }
        step => return Some(Action::WriteLease(lease_write(s, step, bound))),
    }

    // Rule 10: a switchover asked for, or a cordoned holder, hands the
    // Lease on; the label stays until the new holder demotes us.
    if leading
        && have_pod
        && s.controls.handing_over.is_none()
        && s.lease.object.is_some()
        && let Some((target, why)) = s.handover_wanted(now)
    {
        let reason = format!("{} handed over to {target} ({why})", s.me());
        return Some(Action::HandOver(Handover {
            target,
            reason,
            bound,
        }));
    }

    let until = s.leading_until().filter(|_| leading);
    // Rule 9: a holder first makes itself the Service's one endpoint.
    if let Some(until) = until
        && have_pod
        && !s.endpoint.current
        && s.endpoint.service.is_some()
        && s.endpoint.retry_at.is_none_or(|t| now >= t)
    {
        return Some(Action::PointService { until, bound });
    }

    // Rule 3: a holder demotes the others, then promotes itself.
    if let Some(until) = until
        && have_pod
        && label != Some(Role::Active)
        && !s.pod_seen_stale()
    {
        let version = s.pod().and_then(|p| p.metadata.resource_version.clone());
        return Some(Action::Promote {
            version,
            until,
            bound,
        });
    }

    // Rule 8: is there anyone to hand over to? (Once, after the release.)
    if s.life.phase.drain().is_some_and(|d| d.standbys.is_none()) {
        return Some(Action::CountGroup { bound });
    }

    // Who holds the Lease, when it is not us: once per holder.
    if let Some(holder) = s.holder().filter(|h| *h != s.me())
        && s.lease.holder_pod.as_ref().is_none_or(|(h, _)| h != holder)
    {
        return Some(Action::CheckHolder {
            holder: holder.to_owned(),
            bound,
        });
    }

    // Rule 10: our app's health on our Pod, for people and `kubectl baton`:
    // written when the verdict changes, never to undo another writer's edit.
    let health = &s.health;
    if s.controls.health_condition
        && have_pod
        && health.probed()
        && s.controls.health_retry_at.is_none_or(|t| now >= t)
    {
        let shown = s.pod().and_then(controls::app_healthy_condition);
        if s.controls.health_published.is_none() && shown == Some(health.healthy) {
            return Some(Action::AdoptHealth(health.healthy));
        }
        if s.controls.health_published != Some(health.healthy) {
            return Some(Action::PublishHealth {
                healthy: health.healthy,
                last_failure: health.last_failure.clone(),
                bound,
            });
        }
    }

    // The label already says what we decided (a pod admitted as passive, a
    // restarted holder): that is our role too.
    label
        .filter(|role| s.lease.view != LeaseView::Unknown && s.own.role != Some(*role))
        .map(Action::AdoptRole)
}

/// The write of `step`, with what it says about a switchover.
fn lease_write(s: &State, step: Step, bound: CallBound) -> LeaseWrite {
    let current = s.write_base(step);
    let taking_back = step == Step::Acquire
        && s.controls.handing_over.as_ref().is_some_and(|h| {
            current.and_then(|c| c.metadata.resource_version.as_ref()) == Some(&h.version)
        });
    LeaseWrite {
        step,
        taking_back,
        reason: switch_reason(s, step, current, taking_back),
        ends_switchover: ends_switchover(s, step, taking_back),
        transitions: carried_transitions(s, step),
        bound,
    }
}

/// Rule 12: a deleted Lease created again keeps counting changes of holder
/// from where it was (I6): the same count when its holder re-creates it,
/// one more when another pod does.
fn carried_transitions(s: &State, step: Step) -> Option<i32> {
    if step != Step::Create || s.lease.view != LeaseView::Absent {
        return None;
    }
    let last = s.lease.last_observed.as_ref()?;
    let same = last.holder.as_deref() == Some(s.me());
    Some(last.transitions + i32::from(!same))
}

/// Why the holder changes with this write, for `baton.dev/switch-reason`
/// (None: leave it; a released Lease keeps what its releaser wrote).
fn switch_reason(
    s: &State,
    step: Step,
    current: Option<&Lease>,
    taking_back: bool,
) -> Option<String> {
    let me = s.me();
    match step {
        // Rule 12: a deleted Lease is re-created by its holder, or by a
        // standby once the holder's claim would have expired.
        Step::Create => Some(match s.last_holder() {
            Some(h) if h == me => format!("{me} re-created the deleted lease it held"),
            Some(h) => format!(
                "{me} created the deleted lease; its holder {h} did not re-create it before its claim expired"
            ),
            None => format!("{me} created the lease"),
        }),
        Step::Acquire if taking_back => {
            let h = s.controls.handing_over.as_ref()?;
            Some(format!(
                "switchover to {} not taken within {:?}; {me} keeps the role",
                h.target,
                h.until - h.began
            ))
        }
        Step::Acquire => current
            .and_then(election::lease_holder)
            .filter(|h| h != me)
            .map(|h| format!("{h} stopped renewing; its lease expired")),
        Step::Release => Some(match s.life.phase.gave_up() {
            Some(why) => format!("{me} gave up: {}", why.text()),
            None => format!(
                "{me} gave up: app unhealthy ({})",
                s.health.last_failure.clone().unwrap_or_default()
            ),
        }),
        _ => None,
    }
}

/// Whether this write ends the switchover asked for on the Lease: the pod
/// it names takes the role, any pod takes it when any may, or the holder
/// takes it back.
fn ends_switchover(s: &State, step: Step, taking_back: bool) -> bool {
    match (step, s.switchover_request()) {
        (Step::Acquire, Some(_)) if taking_back => true,
        (Step::Acquire, Some(Target::Any)) => true,
        (Step::Acquire | Step::Renew, Some(Target::Pod(p))) => p == s.me(),
        _ => false,
    }
}

/// The next instant at which a decision may change without any input.
pub fn next_wake(s: &State, now: Instant) -> Option<Instant> {
    let step_wake = match s.step(now) {
        Step::WaitUntil(t) => t,
        _ => Some(now),
    };
    let drain_end = s.draining(now).then(|| s.drain_ends()).flatten();
    let endpoint_retry = s
        .endpoint
        .retry_at
        .filter(|_| !s.endpoint.current && s.leading(now));
    let handover_ends = s
        .controls
        .handing_over
        .as_ref()
        .map(|h| h.began + s.settings.lease_duration);
    let health_retry = s
        .controls
        .health_retry_at
        .filter(|_| s.controls.health_condition);
    let due = [
        step_wake,
        s.leading_until(),
        s.api.retry_at,
        drain_end,
        endpoint_retry,
        handover_ends,
        s.controls.handover_retry_at,
        health_retry,
    ]
    .into_iter()
    .flatten()
    .filter(|t| *t > now)
    .min();
    // A shutdown's bound is due even when it has passed.
    [due, s.shutdown_deadline()].into_iter().flatten().min()
}
