//! What follows from the state at a given instant for the lead and the
//! Lease: the holder's deadline and what it shows (rule 5), the bound of a
//! call, the next step with the Lease, rule 7's exception, the handover
//! (rules 8 and 10). Plain functions of the state and the instant.

use std::time::Instant;

use k8s_openapi::api::coordination::v1::Lease;

use super::{
    Phase, SHUTDOWN_CALL_TIMEOUT, readiness,
    state::{CallBound, State},
};
use crate::{
    contract::{Role, controls::Target},
    election::{self, LeaseView, Situation, Step},
};

impl State {
    /// Our switchover is under way: we keep our active label until the new
    /// holder demotes us, at most a lease duration.
    pub fn keeps_label_while_handing_over(&self, now: Instant) -> bool {
        self.life.phase == Phase::Candidate
            && self.eligible()
            && self
                .controls
                .handing_over
                .as_ref()
                .is_some_and(|h| now < h.began + self.settings.lease_duration)
    }

    /// Whom the holder should hand the role to now, and why (rules 10
    /// and 13). A cordoned holder or one whose pod the node lifecycle
    /// controller marked not Ready tries again a lease duration after a
    /// handover nobody took.
    pub fn handover_wanted(&self, now: Instant) -> Option<(Target, &'static str)> {
        let may_retry = self.controls.handover_retry_at.is_none_or(|t| now >= t);
        if self.cordoned() && may_retry {
            return Some((Target::Any, "cordoned"));
        }
        match self.switchover_request() {
            Some(Target::Pod(p)) if p == self.me() => {}
            Some(target) => return Some((target, "switchover requested")),
            None => {}
        }
        let pod = self
            .pod()
            .filter(|p| readiness::marked_not_ready_by_node(p))?;
        if !may_retry {
            return None;
        }
        let my_node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
        let pods = self.group.pods.table()?.values();
        let target = readiness::handover_target(self.me(), my_node, pods)?;
        Some((
            Target::Pod(target.to_owned()),
            "its pod was marked not Ready by the node lifecycle controller",
        ))
    }

    /// Rule 8: a deleted holder keeps its active label until another pod
    /// has held the Lease for `handover_drain`, or at most a lease duration
    /// plus that when nobody takes over.
    pub fn draining(&self, now: Instant) -> bool {
        self.life
            .phase
            .drain()
            .is_some_and(|d| d.standbys != Some(0))
            && self.label_role() == Some(Role::Active)
            && self.drain_ends().is_some_and(|end| now < end)
    }

    pub fn drain_ends(&self) -> Option<Instant> {
        let d = self.life.phase.drain()?;
        let drain = self.settings.handover_drain;
        let bound = d.began + self.settings.lease_duration + drain;
        Some(d.taken_over_at.map_or(bound, |t| (t + drain).min(bound)))
    }

    /// The role label on our Pod as last seen.
    pub fn label_role(&self) -> Option<Role> {
        self.pod().and_then(|p| self.labels.role_of(p))
    }

    /// The bound of a call started at `now`: `--api-timeout`, shortened to
    /// the time left as holder, and during a shutdown to 1 s and its end.
    pub fn call_timeout(&self, now: Instant) -> CallBound {
        let mut cap = self.settings.api_timeout;
        let mut deadline = self.leading_until().filter(|u| *u > now);
        if let Some(end) = self.shutdown_deadline() {
            cap = cap.min(SHUTDOWN_CALL_TIMEOUT);
            deadline = Some(deadline.map_or(end, |d| d.min(end)));
        }
        CallBound { cap, deadline }
    }

    /// The bound of a renewal started at `now`: it may wait past the
    /// holder's deadline and `--api-timeout`, up to when the Lease it
    /// renews would expire (our last renewal sent plus the lease duration).
    /// On a slow API server a renewal cut at the deadline never lands, and
    /// after a lease duration a standby takes over; waited for, it lands,
    /// and nobody does. The driver shows passive at the deadline meanwhile
    /// (rule 5), and a shutdown bounds it as any call.
    pub fn renewal_bound(&self, now: Instant) -> CallBound {
        let usual = self.call_timeout(now);
        let Some(sent) = self.lease.last_renew_sent else {
            return usual;
        };
        let expiry = sent + self.settings.lease_duration;
        if self.shutdown_deadline().is_some()
            || expiry.saturating_duration_since(now) <= usual.at(now)
        {
            return usual;
        }
        CallBound {
            cap: self.settings.lease_duration,
            deadline: Some(expiry),
        }
    }

    /// The Lease a write of `step` replaces: none to create.
    pub fn write_base(&self, step: Step) -> Option<&Lease> {
        match step {
            Step::Create => None,
            _ => self.lease.object.as_ref(),
        }
    }

    /// The role every outward sign shows at `now` (`/status`, the role
    /// file, the proxy; rules 5 and 11): active while we lead (our own
    /// write of the Lease landed, its deadline is ahead) and are not
    /// sending a handover; passive otherwise; None before the first
    /// decision. It does not wait for our active label: whoever held the
    /// Lease before us showed passive before its release or handover, or
    /// passed its own deadline before the Lease could expire (rule 5), so
    /// no other app is told active by then; the label's list and patch
    /// (rule 3) are for the Services that select it, and would delay the
    /// app, and the proxy's first answer, by two calls.
    pub fn outward_role(&self, now: Instant) -> Option<Role> {
        let serves = self.leading(now) && !self.controls.handover_sending;
        match serves {
            true => Some(Role::Active),
            false => self.own.role.map(|_| Role::Passive),
        }
    }

    /// A holder whose app turned unhealthy (rule 4) releases the Lease
    /// before it labels itself passive: it already shows passive (its
    /// proxy stopped serving in the turn it gave up), and a standby may
    /// begin only once the release lands, so the label's write first would
    /// only delay the standby. The new holder demotes it before promoting
    /// itself anyway (rule 3), as it does a deleted holder (rule 8). A
    /// shutdown keeps its order (rule 6): its first failed call ends it.
    pub fn releases_first(&self, now: Instant) -> bool {
        self.life.phase == Phase::Candidate
            && !self.leading(now)
            && self.holder() == Some(self.me())
            && self.step(now) == Step::Release
    }

    /// Right before a handover's write is sent (rule 10): show passive.
    pub fn begin_handover_write(&mut self) {
        self.controls.handover_sending = true;
    }

    pub fn holder(&self) -> Option<&str> {
        match &self.lease.view {
            LeaseView::Present(o) => o.holder.as_deref(),
            _ => None,
        }
    }

    /// The holder the Lease named when last seen, also once it has been
    /// deleted (rule 12).
    pub fn last_holder(&self) -> Option<&str> {
        match &self.lease.view {
            LeaseView::Absent => self
                .lease
                .last_observed
                .as_ref()
                .and_then(|o| o.holder.as_deref()),
            _ => self.holder(),
        }
    }

    pub fn transitions(&self) -> i32 {
        match &self.lease.view {
            LeaseView::Present(o) => o.transitions,
            _ => 0,
        }
    }

    /// What `election::next_step` says about the Lease at `now`.
    pub fn step(&self, now: Instant) -> Step {
        election::next_step(&Situation {
            me: self.me(),
            eligible: self.eligible(),
            may_take: self.may_take(),
            paused: self.paused(),
            offered: self.offered(),
            handed_over: self
                .controls
                .handing_over
                .as_ref()
                .map(|h| (h.version.as_str(), h.until)),
            lease: &self.lease.view,
            last_seen: self.lease.last_observed.as_ref(),
            last_renew_sent: self.lease.last_renew_sent,
            renew_period: self.settings.renew_period,
            now,
        })
    }

    /// Rule 7's exception: eligible, labelled active, cut off from the API
    /// server, and the Lease named us when last seen (or is being re-read).
    pub fn may_still_hold(&self, label: Option<Role>) -> bool {
        self.api.out_of_reach
            && self.eligible()
            && label == Some(Role::Active)
            && match &self.lease.view {
                LeaseView::Unknown => true,
                LeaseView::Present(o) => o.holder.as_deref() == Some(self.me()),
                LeaseView::Absent => false,
            }
    }

    /// Done handing over: not the holder (as last seen), not labelled active.
    pub fn handover_done(&self) -> bool {
        // A call cut short by SIGTERM leaves the Lease to be read again: as
        // last observed, it may still name us, and then it is released
        // first (rule 6), not left to expire.
        let holds = match &self.lease.view {
            LeaseView::Unknown => self
                .lease
                .last_observed
                .as_ref()
                .is_some_and(|o| o.holder.as_deref() == Some(self.me())),
            _ => self.holder() == Some(self.me()),
        };
        let labelled_active = !self.own.deleted && self.label_role() == Some(Role::Active);
        !holds && !labelled_active
    }
}
