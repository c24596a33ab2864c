//! What arrives without being asked for: watch events, the app's health,
//! SIGTERM; and what the core says once per change at the start of a turn.
//! Each takes the instant it arrived at; none does I/O.

use std::time::Instant;

use k8s_openapi::api::{coordination::v1::Lease, core::v1::Pod};
use kube::runtime::watcher;

use super::{Drain, GiveUp, Notice, Phase, is_newer, state::State, stranger_reason};
use crate::{
    contract::Role,
    contract::controls::{self, CORDONED, PAUSED},
    election::{LeaseView, Observed},
    probe::Health,
};

impl State {
    /// The probe's verdict as it now stands.
    pub fn handle_health(&mut self, health: Health) {
        self.health = health;
    }

    /// The probe task ended: health can no longer be known (rule 6).
    pub fn handle_probe_stopped(&mut self, now: Instant) -> Vec<Notice> {
        self.start_giving_up(GiveUp::ProbeStopped, now);
        vec![Notice::ProbeStopped]
    }

    /// SIGTERM: hand over within a bounded time. With the API server
    /// already failing there is nothing to try: the bound is now, and the
    /// Lease expires as after a crash. A drain in progress ends.
    pub fn begin_shutdown(&mut self, now: Instant) -> Vec<Notice> {
        self.start_giving_up(GiveUp::Shutdown, now);
        self.life.phase = Phase::ShuttingDown {
            why: self.life.phase.gave_up().unwrap_or(GiveUp::Shutdown),
            deadline: if self.api.calls.reachable() {
                now + self.settings.api_timeout * 3
            } else {
                now
            },
        };
        vec![Notice::ShutdownRequested]
    }

    /// SIGTERM cut a call short: whatever it did may have landed, so the
    /// Lease is read again.
    pub fn cut_short(&mut self, now: Instant) -> Vec<Notice> {
        self.lease.view = LeaseView::Unknown;
        self.begin_shutdown(now)
    }

    pub fn handle_lease_event(
        &mut self,
        event: Result<watcher::Event<Lease>, watcher::Error>,
        now: Instant,
    ) -> Vec<Notice> {
        let mut n = Vec::new();
        match event {
            Ok(watcher::Event::Init) => self.lease.listed = false,
            Ok(watcher::Event::InitApply(l) | watcher::Event::Apply(l)) => {
                self.lease.listed = true;
                let held = self.lease.object.as_ref();
                if is_newer(
                    &l.metadata.resource_version,
                    held.and_then(|o| o.metadata.resource_version.as_ref()),
                ) {
                    self.observe_lease(Some(&l), now, &mut n);
                }
                self.api_answered(&mut n);
            }
            Ok(watcher::Event::Delete(_)) => self.observe_lease(None, now, &mut n),
            Ok(watcher::Event::InitDone) => {
                if !self.lease.listed {
                    self.observe_lease(None, now, &mut n);
                }
                self.api_answered(&mut n);
            }
            Err(err) => self.watch_failed("watch lease", &err, &mut n),
        }
        n
    }

    pub fn handle_pod_event(
        &mut self,
        event: Result<watcher::Event<Pod>, watcher::Error>,
        now: Instant,
    ) -> Vec<Notice> {
        let mut n = Vec::new();
        match event {
            Ok(watcher::Event::InitApply(p) | watcher::Event::Apply(p)) => {
                let held = self
                    .pod()
                    .and_then(|o| o.metadata.resource_version.as_ref());
                if is_newer(&p.metadata.resource_version, held) {
                    self.observe_pod(p, now, &mut n);
                }
            }
            Ok(watcher::Event::Delete(_)) => {
                self.own.deleted = true;
                self.own.pod = None;
                if !self.terminating() {
                    n.push(Notice::PodDeleted);
                    self.start_giving_up(GiveUp::PodDeleted, now);
                }
            }
            Ok(watcher::Event::Init | watcher::Event::InitDone) => {}
            Err(err) => self.watch_failed("watch pod", &err, &mut n),
        }
        n
    }

    pub(super) fn api_answered(&mut self, n: &mut Vec<Notice>) {
        if let Some(failed_calls) = self.api.calls.succeeded() {
            n.push(Notice::ApiRecovered { failed_calls });
        }
    }

    fn watch_failed(
        &mut self,
        operation: &'static str,
        err: &dyn std::error::Error,
        n: &mut Vec<Notice>,
    ) {
        n.push(Notice::ApiError(operation));
        self.api_failed(operation, err, n);
    }

    /// Counts a failed call; the first of an outage is said.
    pub(super) fn api_failed(
        &mut self,
        operation: &'static str,
        err: &dyn std::error::Error,
        n: &mut Vec<Notice>,
    ) -> u32 {
        let failures = self.api.calls.failed();
        if failures == 1 {
            let error = crate::telemetry::ErrorChain(err).to_string();
            n.push(Notice::ApiFailing { operation, error });
        }
        failures
    }

    /// Shutdown or pod deletion: no longer eligible, hand over (rule 6).
    /// The first cause is kept: a pod deletion is followed by SIGTERM.
    pub fn start_giving_up(&mut self, why: GiveUp, now: Instant) {
        if self.life.phase == Phase::Candidate {
            self.life.phase = Phase::GivenUp { why, drain: None };
        }
        self.stop_leading(now);
    }

    /// Rule 4: stop acting as holder at once; the passive label and the
    /// release follow in the next turns.
    pub fn stop_leading(&mut self, now: Instant) {
        if self.life.handover_started.is_none() && self.leading(now) {
            self.life.handover_started = Some(now);
        }
        self.lease.last_renew_sent = None;
        self.api.retry_at = None;
    }

    /// Before deciding, unless backing off: whoever is not eligible does
    /// not lead (rule 4 as an invariant), and a holder no longer leading
    /// will write the Service's endpoint afresh when it leads again.
    /// Returns whether it stopped our lead.
    pub fn enforce(&mut self, now: Instant) -> bool {
        if self.api.retry_at.is_some_and(|t| now < t) {
            return false;
        }
        let stopped = !self.eligible() && self.leading(now);
        if stopped {
            self.stop_leading(now);
        }
        if !self.leading(now) {
            self.endpoint.current = false;
        }
        stopped
    }

    pub fn observe_lease(&mut self, lease: Option<&Lease>, now: Instant, n: &mut Vec<Notice>) {
        let Some(l) = lease else {
            self.lease.view = LeaseView::Absent;
            self.lease.object = None;
            return;
        };
        // Also across a re-read (`Unknown`): a write that timed out and did
        // not land must not restart the expiry clock (rule 2).
        let previous = match &self.lease.view {
            LeaseView::Present(o) => Some(o),
            _ => self.lease.last_observed.as_ref(),
        };
        let observed = Observed::from_lease(l, previous, self.settings.lease_duration, now);
        self.lease.last_observed = Some(observed.clone());
        let holder = observed.holder.clone().unwrap_or_default();
        if self
            .lease
            .holder_since
            .as_ref()
            .is_none_or(|(h, _)| *h != holder)
        {
            self.lease.holder_since = Some((holder, observed.resource_version.clone()));
            // A new holder is checked afresh (a pod may come back).
            self.lease.holder_pod = None;
        }
        self.credit_landed_renewal(l, &observed, n);
        let taken_over = observed.holder.as_deref().is_some_and(|h| h != self.me());
        if let Phase::GivenUp { drain: Some(d), .. } = &mut self.life.phase
            && d.taken_over_at.is_none()
            && taken_over
        {
            n.push(Notice::TakenOver {
                holder: observed.holder.clone(),
            });
            d.taken_over_at = Some(now);
        }
        self.lease.view = LeaseView::Present(observed);
        self.lease.object = Some(l.clone());
    }

    /// Rule 5 for a renewal that got no answer (a slow API server): seen
    /// landed, with the `renewTime` it carried under our name, it counts
    /// from when it was sent. Every other pod saw it land after that, so
    /// none can take the Lease before it was sent plus the lease duration.
    fn credit_landed_renewal(&mut self, l: &Lease, observed: &Observed, n: &mut Vec<Notice>) {
        let Some((sent, renew_time)) = &self.lease.unanswered_renewal else {
            return;
        };
        let spec = l.spec.as_ref();
        if observed.holder.as_deref() != Some(self.me())
            || spec.and_then(|s| s.renew_time.as_ref()) != Some(renew_time)
        {
            return;
        }
        let sent = *sent;
        self.lease.unanswered_renewal = None;
        if self.lease.last_renew_sent.is_none_or(|t| t < sent) {
            self.lease.last_renew_sent = Some(sent);
            n.push(Notice::RenewalLandedLate);
        }
    }

    pub fn observe_pod(&mut self, pod: Pod, now: Instant, n: &mut Vec<Notice>) {
        if pod.metadata.deletion_timestamp.is_some() && !self.terminating() {
            n.push(Notice::PodTerminating);
            self.start_giving_up(GiveUp::PodTerminating, now);
            if self.labels.role_of(&pod) == Some(Role::Active) {
                self.life.phase = Phase::GivenUp {
                    why: GiveUp::PodTerminating,
                    drain: Some(Drain {
                        began: now,
                        taken_over_at: None,
                        standbys: None,
                    }),
                };
            }
        }
        self.own.pod = Some(pod);
    }

    /// What is news at the start of a turn: the app failing under a holder,
    /// a stranger holding the Lease, the controls (rule 10), the census of
    /// the holder's group.
    pub fn note(&mut self, now: Instant) -> Vec<Notice> {
        let mut n = Vec::new();
        self.note_health(now, &mut n);
        self.note_stranger(&mut n);
        self.note_controls(&mut n);
        self.note_group(&mut n);
        n
    }

    fn note_health(&mut self, now: Instant, n: &mut Vec<Notice>) {
        let healthy = self.health.healthy;
        if self.said.was_healthy && !healthy && self.leading(now) {
            let why = self.health.last_failure.clone().unwrap_or_default();
            let lease = &self.lease_name;
            if self.paused() {
                if self.own.pod.is_some() {
                    n.push(Notice::event(
                        true,
                        "UnhealthyWhilePaused",
                        format!(
                            "app failed its probe ({why}); group paused: keeping lease {lease} (resume to fail over: kubectl baton resume {lease})"
                        ),
                    ));
                }
                n.push(Notice::UnhealthyWhilePaused { why });
                self.said.was_healthy = healthy;
                return;
            }
            if self.own.pod.is_some() {
                n.push(Notice::event(
                    true,
                    "AppUnhealthy",
                    format!("app failed its probe ({why}); handing over the lease {lease}"),
                ));
            }
            self.stop_leading(now);
        }
        self.said.was_healthy = healthy;
    }

    /// Says once per change when the Lease is held by something that is
    /// not a pod of the group; the group has no active pod until it lets
    /// go, at most its counted claim.
    fn note_stranger(&mut self, n: &mut Vec<Notice>) {
        let l = &self.lease;
        let stranger = match (&l.view, &l.holder_pod, &l.holder_since) {
            (LeaseView::Present(o), Some((checked, pod)), Some((since, first_version)))
                if o.holder.as_deref() == Some(checked.as_str()) && since == checked =>
            {
                stranger_reason(
                    *pod,
                    o.resource_version != *first_version,
                    o.claimed,
                    self.settings.lease_duration,
                )
                .map(|why| {
                    format!(
                        "lease {lease} is held by {checked:?}, {why}: no pod of group {group} can become active until it is released, or expires (its claim counts for at most {bound:?}); if it is stale: kubectl delete lease {lease} -n {ns}",
                        lease = self.lease_name,
                        group = self.labels.group,
                        bound = o.duration,
                        ns = self.settings.pod_namespace,
                    )
                })
            }
            _ => None,
        };
        if stranger != self.said.stranger {
            n.push(Notice::Stranger(stranger.clone()));
            self.said.stranger = stranger;
            self.said.stranger_event_sent = false;
        }
        // The Event regards our Pod, which a starting sidecar may not have
        // seen yet: sent once it has.
        if let (Some(problem), Some(_), false) = (
            &self.said.stranger,
            &self.own.pod,
            self.said.stranger_event_sent,
        ) {
            n.push(Notice::event(true, "LeaseHeldByStranger", problem.clone()));
            self.said.stranger_event_sent = true;
        }
    }

    /// Says once per change whether the group is paused (log, and an Event
    /// from the holder), and any control annotation that means nothing.
    fn note_controls(&mut self, n: &mut Vec<Notice>) {
        if self.lease.view == LeaseView::Unknown {
            return;
        }
        let paused = self.paused();
        if self.controls.paused_said != Some(paused) {
            let news = self.controls.paused_said.is_some() || paused;
            self.controls.paused_said = Some(paused);
            if news {
                n.push(Notice::GroupPaused(paused));
                let lease = &self.lease_name;
                if self.own.pod.is_some() && self.holder() == Some(self.me()) {
                    n.push(if paused {
                        Notice::event(
                            false,
                            "Paused",
                            format!(
                                "group {lease} paused: automatic failover is off; a failing app is reported, not failed over"
                            ),
                        )
                    } else {
                        Notice::event(
                            false,
                            "Resumed",
                            format!("group {lease} resumed: automatic failover is on"),
                        )
                    });
                }
            }
        }
        let pod_annotations = self.pod().and_then(|p| p.metadata.annotations.as_ref());
        let problem = [
            controls::flag(self.lease_annotations(), PAUSED).err(),
            controls::switchover_target(self.lease_annotations()).err(),
            controls::flag(pod_annotations, CORDONED).err(),
        ]
        .into_iter()
        .flatten()
        .map(|e| format!("{e}; ignored"))
        .next();
        if problem != self.controls.problem_said {
            if let Some(problem) = &problem {
                n.push(Notice::InvalidControl(problem.clone()));
                if self.own.pod.is_some() {
                    n.push(Notice::event(true, "InvalidControl", problem.clone()));
                }
            }
            self.controls.problem_said = problem;
        }
    }
}
