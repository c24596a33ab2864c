//! The one loop of the sidecar. It reacts to the app's health, the Lease
//! (watched), its own Pod (watched) and shutdown; each turn it takes at most
//! one action, decided by the pure functions of `election`, then looks again.
//! There is no fixed sleep between decisions: it waits for an input or for
//! the next instant at which a decision changes (renewal due, lease expiry,
//! leadership deadline, back-off over).
//!
//! "Rule N" in the comments below is rule N of `docs/design.md`.

use std::{
    pin::pin,
    time::{Duration, Instant},
};

use futures::{Stream, StreamExt};
use k8s_openapi::{api::coordination::v1::Lease, api::core::v1::Pod, jiff::Timestamp};
use kube::runtime::watcher;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::{
    backoff::{self, ApiState, Streak},
    controls::{self, CORDONED, PAUSED, SWITCH_REASON, SWITCHOVER_TO, Target},
    election::{self, LeaseClient, LeaseView, Observed, Situation, Step, WriteError},
    endpoints::{EndpointError, Pointed, ServiceEndpoints},
    events::Events,
    labels::{LabelError, Labeller, Membership},
    metrics::Metrics,
    probe::Health,
    rolefile::{self, RoleRecord},
    settings::Settings,
    status::{Role, Status},
};

/// First wait after a label refused at admission: about one informer hop.
const REFUSED_RETRY_BASE: Duration = Duration::from_millis(20);

/// Longest one API call may take once shutdown is asked for: a healthy API
/// server answers in milliseconds, and a hung one must not keep kubelet
/// waiting (`docs/design.md`, rule 6). The first failure ends the handover.
const SHUTDOWN_CALL_TIMEOUT: Duration = Duration::from_secs(1);

/// Everything the loop knows and the handles it acts through.
pub struct Candidate {
    pub settings: Settings,
    pub leases: LeaseClient,
    pub labeller: Labeller,
    pub events: Events,
    pub metrics: Metrics,
    pub health: watch::Receiver<Health>,
    pub status: watch::Sender<Status>,
    lease: LeaseView,
    /// The Lease as last observed, kept while `lease` is `Unknown`.
    last_observed: Option<Observed>,
    /// The Lease object as last read or written: the base of the next replace.
    lease_object: Option<Lease>,
    last_renew_sent: Option<Instant>,
    /// Our Pod as last seen; None before the first list or once deleted.
    pod: Option<Pod>,
    pod_deleted: bool,
    /// Where the pod is on its way out, if it is (rules 6 and 8).
    phase: Phase,
    handover_started: Option<Instant>,
    api: ApiState,
    /// The last failed call got no answer (timeout, no connection) and no
    /// Lease write has landed since: the API server was out of reach,
    /// rather than refusing. See `act`, rule 7's exception.
    out_of_reach: bool,
    /// Consecutive labels refused at admission (see `settle`).
    refused: u32,
    /// Failed attempts to label ourselves passive, logged per streak.
    passive_label_failures: Streak,
    /// The resourceVersion of our Pod that a promotion conflicted with (409):
    /// the Pod has changed since, so promote again only once the watch shows
    /// a newer one (acting again at once would send the same stale version).
    conflicted_pod_version: Option<String>,
    retry_at: Option<Instant>,
    role: Option<Role>,
    was_healthy: bool,
    /// Lease events seen since the watch (re)listed.
    lease_listed: bool,
    /// The Lease's holder (not us) as a pod, checked once per holder.
    holder_pod: Option<(String, Membership)>,
    /// The holder as last seen and the resourceVersion it was first seen
    /// with: a later version under the same holder means it renews.
    holder_since: Option<(String, String)>,
    /// Why no pod of the group can hold the Lease, while that is so.
    stranger: Option<String>,
    /// Whether `stranger`'s Warning Event went out.
    stranger_event_sent: bool,
    /// What the role file says: (role, holder, transitions).
    role_file_written: Option<(Role, Option<String>, i32)>,
    /// The Service whose one endpoint the holder writes (rule 9), if any.
    service_endpoints: Option<ServiceEndpoints>,
    /// Whether the Service's slice names us since we last became holder.
    endpoint_current: bool,
    endpoint_retry_at: Option<Instant>,
    endpoint_failures: Streak,
    /// The misconfiguration last said in a Warning Event, said once.
    endpoint_problem_said: Option<String>,
    /// Our switchover in flight, or just ended (rule 10).
    handing_over: Option<HandingOver>,
    /// A cordoned holder whose handover nobody took tries again then.
    handover_retry_at: Option<Instant>,
    /// Whether the group was paused when last said (log, metric, Event).
    paused_said: Option<bool>,
    /// The invalid control annotation last said, said once.
    control_problem_said: Option<String>,
    /// Keep our Pod's app-healthy condition (rule 10).
    health_condition: bool,
    health_retry_at: Option<Instant>,
    health_failures: Streak,
    /// The verdict this process last wrote to that condition.
    health_published: Option<bool>,
}

/// A switchover we started (rule 10): the Lease version we wrote, whom it
/// hands the role to, and when we take it back if nobody has taken it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HandingOver {
    version: String,
    target: Target,
    began: Instant,
    until: Instant,
}

/// Why an action failed, for back-off and logs.
#[derive(Debug, thiserror::Error)]
enum ActionError {
    #[error(transparent)]
    Lease(#[from] WriteError),
    #[error(transparent)]
    Label(#[from] LabelError),
}

impl ActionError {
    /// The API server gave no answer (a timeout, no connection) or could
    /// not serve it (5xx, 429: frozen, restarting, overloaded, its etcd
    /// away), as opposed to refusing the call (403, 404, 409, 422).
    fn unanswered(&self) -> bool {
        let no_answer = |e: &kube::Error| match e {
            kube::Error::Api(status) => status.code >= 500 || status.code == 429,
            _ => true,
        };
        match self {
            ActionError::Lease(WriteError::Timeout { .. })
            | ActionError::Label(LabelError::Timeout { .. }) => true,
            ActionError::Lease(WriteError::Api { source, .. })
            | ActionError::Label(
                LabelError::Patch { source, .. }
                | LabelError::List { source, .. }
                | LabelError::Condition { source, .. },
            ) => no_answer(source),
            _ => false,
        }
    }
}

impl Candidate {
    pub fn new(
        settings: Settings,
        leases: LeaseClient,
        labeller: Labeller,
        events: Events,
        metrics: Metrics,
        health: watch::Receiver<Health>,
        status: watch::Sender<Status>,
    ) -> Self {
        Candidate {
            settings,
            leases,
            labeller,
            events,
            metrics,
            health,
            status,
            lease: LeaseView::Unknown,
            last_observed: None,
            lease_object: None,
            last_renew_sent: None,
            pod: None,
            pod_deleted: false,
            phase: Phase::Candidate,
            handover_started: None,
            api: ApiState::default(),
            out_of_reach: false,
            refused: 0,
            passive_label_failures: Streak::default(),
            conflicted_pod_version: None,
            retry_at: None,
            role: None,
            was_healthy: false,
            lease_listed: false,
            role_file_written: None,
            holder_pod: None,
            holder_since: None,
            stranger: None,
            stranger_event_sent: false,
            service_endpoints: None,
            endpoint_current: false,
            endpoint_retry_at: None,
            endpoint_failures: Streak::default(),
            endpoint_problem_said: None,
            handing_over: None,
            handover_retry_at: None,
            paused_said: None,
            control_problem_said: None,
            health_condition: false,
            health_retry_at: None,
            health_failures: Streak::default(),
            health_published: None,
        }
    }

    /// The sidecar also keeps its Pod's app-healthy condition (rule 10).
    pub fn with_health_condition(mut self, on: bool) -> Self {
        self.health_condition = on;
        self
    }

    /// The holder also makes itself the one endpoint of this Service (rule 9).
    pub fn with_service_endpoints(mut self, endpoints: Option<ServiceEndpoints>) -> Self {
        self.service_endpoints = endpoints;
        self
    }

    fn me(&self) -> &str {
        &self.settings.pod_name
    }

    fn pod_seen_stale(&self) -> bool {
        is_stale(self.pod.as_ref(), self.conflicted_pod_version.as_deref())
    }

    /// Until when we may act as holder (`docs/design.md`, rule 5).
    fn leading_until(&self) -> Option<Instant> {
        election::leading_until(
            &self.lease,
            &self.settings.pod_name,
            self.last_renew_sent,
            self.settings.renew_deadline,
        )
    }

    fn leading(&self, now: Instant) -> bool {
        self.leading_until().is_some_and(|until| now < until)
    }

    fn terminating(&self) -> bool {
        self.gave_up().is_some()
    }

    /// Why the pod stopped being eligible for good, if it did (rule 6).
    fn gave_up(&self) -> Option<GiveUp> {
        match self.phase {
            Phase::Candidate => None,
            Phase::GivenUp { why, .. } | Phase::ShuttingDown { why, .. } => Some(why),
        }
    }

    fn shutting_down(&self) -> bool {
        matches!(self.phase, Phase::ShuttingDown { .. })
    }

    /// When a shutdown stops trying to hand over and exits.
    fn shutdown_deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::ShuttingDown { deadline, .. } => Some(deadline),
            _ => None,
        }
    }

    /// A deleted holder's drain, while it lasts or is due (rule 8).
    fn drain(&self) -> Option<&Drain> {
        match &self.phase {
            Phase::GivenUp { drain, .. } => drain.as_ref(),
            _ => None,
        }
    }

    /// May hold the Lease: the app is healthy, or the group is paused and
    /// we hold it (a failing app is reported, not acted on: rule 10), and
    /// the pod is not on its way out.
    fn eligible(&self) -> bool {
        let app_ok =
            self.health.borrow().healthy || (self.paused() && self.holder() == Some(self.me()));
        app_ok && !self.terminating()
    }

    /// May also take the Lease: eligible and not cordoned (rule 10).
    fn may_take(&self) -> bool {
        self.eligible() && !self.cordoned()
    }

    /// Our Pod carries `baton.dev/cordoned=true`.
    fn cordoned(&self) -> bool {
        self.pod
            .as_ref()
            .is_some_and(|p| controls::flag(p.metadata.annotations.as_ref(), CORDONED) == Ok(true))
    }

    fn lease_annotations(&self) -> Option<&std::collections::BTreeMap<String, String>> {
        self.lease_object
            .as_ref()
            .and_then(|l| l.metadata.annotations.as_ref())
    }

    /// The group's Lease carries `baton.dev/paused=true`.
    fn paused(&self) -> bool {
        controls::flag(self.lease_annotations(), PAUSED) == Ok(true)
    }

    /// The switchover asked for on the Lease, if any (and valid).
    fn switchover_request(&self) -> Option<Target> {
        controls::switchover_target(self.lease_annotations())
            .ok()
            .flatten()
    }

    /// The Lease names us because a switchover hands it to us.
    fn offered(&self) -> bool {
        matches!(self.switchover_request(), Some(Target::Pod(p)) if p == self.me())
            && self.holder() == Some(self.me())
    }

    /// Our switchover is under way: we keep our active label until the
    /// new holder demotes us (as it does before it promotes itself), so
    /// that the Service is not left without an endpoint in between; at
    /// most a lease duration.
    fn keeps_label_while_handing_over(&self, now: Instant) -> bool {
        self.phase == Phase::Candidate
            && self.eligible()
            && self
                .handing_over
                .as_ref()
                .is_some_and(|h| now < h.began + self.settings.lease_duration)
    }

    /// Whom the holder should hand the role to now, and why (rule 10).
    fn handover_wanted(&self, now: Instant) -> Option<(Target, &'static str)> {
        if self.cordoned() && self.handover_retry_at.is_none_or(|t| now >= t) {
            return Some((Target::Any, "cordoned"));
        }
        match self.switchover_request()? {
            Target::Pod(p) if p == self.me() => None,
            target => Some((target, "switchover requested")),
        }
    }

    /// Rule 8: our pod is being deleted while labelled active. It keeps
    /// the label (a terminating pod is never a Ready endpoint; kube-proxy
    /// routes to it only while the Service has no Ready one) until another
    /// pod has held the Lease for `handover_drain`, or at most a lease
    /// duration plus that when nobody takes over.
    fn draining(&self, now: Instant) -> bool {
        self.drain().is_some_and(|d| d.standbys != Some(0))
            && self.label_role() == Some(Role::Active)
            && self.drain_ends().is_some_and(|end| now < end)
    }

    fn drain_ends(&self) -> Option<Instant> {
        let d = self.drain()?;
        let drain = self.settings.handover_drain;
        let bound = d.began + self.settings.lease_duration + drain;
        Some(d.taken_over_at.map_or(bound, |t| (t + drain).min(bound)))
    }

    fn label_role(&self) -> Option<Role> {
        self.pod
            .as_ref()
            .and_then(|p| self.labeller.labels().role_of(p))
    }

    /// Time left for an API call: the configured timeout, shortened to the
    /// time we have left as holder.
    fn call_timeout(&self, now: Instant) -> Duration {
        let mut t = self.settings.api_timeout;
        if let Some(until) = self.leading_until().filter(|u| *u > now) {
            t = t.min(until - now);
        }
        if let Some(deadline) = self.shutdown_deadline() {
            t = t
                .min(SHUTDOWN_CALL_TIMEOUT)
                .min(deadline.saturating_duration_since(now));
        }
        t
    }

    /// Runs until `shutdown` resolves and the handover is done.
    pub async fn run(
        mut self,
        lease_events: impl Stream<Item = Result<watcher::Event<Lease>, watcher::Error>>,
        pod_events: impl Stream<Item = Result<watcher::Event<Pod>, watcher::Error>>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let mut lease_events = pin!(lease_events);
        let mut pod_events = pin!(pod_events);
        let mut shutdown = pin!(shutdown);
        let mut health = self.health.clone();
        loop {
            let now = Instant::now();
            self.note_health();
            self.note_stranger();
            self.note_controls();
            // Before acting too: at the deadline the action is the passive
            // label, which may take an API timeout, and what we show must
            // not wait for it (`docs/design.md`, rule 5).
            self.show_role(now).await;
            if self.shutdown_deadline().is_some_and(|d| now >= d) {
                warn!(
                    "API server did not answer the handover in time; exiting without it (a standby takes over once the Lease expires)"
                );
                return;
            }
            // An action waits on the API server, up to a timeout, again and
            // again while it hangs: SIGTERM cuts it short (rule 6).
            let acted = if self.shutting_down() {
                self.act(now).await
            } else {
                tokio::select! {
                    biased;
                    _ = &mut shutdown => None,
                    acted = self.act(now) => Some(acted),
                }
                .unwrap_or_else(|| {
                    // Whatever the cut call did may have landed: read again.
                    self.lease = LeaseView::Unknown;
                    self.begin_shutdown();
                    true
                })
            };
            self.show_role(Instant::now()).await;
            if self.shutting_down() && self.handover_done() {
                if let Some(started) = self.handover_started {
                    self.metrics.observe_handover(started.elapsed());
                }
                info!("handover done; exiting");
                self.events.flush(self.settings.api_timeout).await;
                return;
            }
            if acted {
                continue;
            }
            let wake = [self.next_wake(now), self.shutdown_deadline()]
                .into_iter()
                .flatten()
                .min();
            tokio::select! {
                _ = &mut shutdown, if !self.shutting_down() => self.begin_shutdown(),
                changed = health.changed() => {
                    if changed.is_err() {
                        warn!("probe stopped; handing over");
                        self.start_giving_up(GiveUp::ProbeStopped);
                    }
                }
                Some(event) = lease_events.next() => self.on_lease_event(event),
                Some(event) = pod_events.next() => self.on_pod_event(event),
                _ = sleep_until(wake) => {}
            }
        }
    }

    /// SIGTERM: hand over within a bounded time. With the API server
    /// already failing there is nothing to try: exit at once, the Lease
    /// expires as after a crash.
    /// A drain in progress ends: the label goes passive at once.
    fn begin_shutdown(&mut self) {
        info!("shutdown requested; handing over");
        self.start_giving_up(GiveUp::Shutdown);
        let now = Instant::now();
        self.phase = Phase::ShuttingDown {
            why: self.gave_up().unwrap_or(GiveUp::Shutdown),
            deadline: if self.api.reachable() {
                now + self.settings.api_timeout * 3
            } else {
                now
            },
        };
    }

    /// Done handing over: not the holder (as last seen), not labelled active.
    fn handover_done(&self) -> bool {
        let holds =
            matches!(&self.lease, LeaseView::Present(o) if o.holder.as_deref() == Some(self.me()));
        let labelled_active = !self.pod_deleted && self.label_role() == Some(Role::Active);
        !holds && !labelled_active
    }

    /// Shutdown or pod deletion: no longer eligible, hand over (`docs/design.md`, rule 6).
    /// The first cause is kept: a pod deletion is followed by kubelet's SIGTERM.
    fn start_giving_up(&mut self, why: GiveUp) {
        if self.phase == Phase::Candidate {
            self.phase = Phase::GivenUp { why, drain: None };
        }
        self.stop_leading();
    }

    /// Rule 4 of `docs/design.md`: stop acting as holder at once; the passive
    /// label and the release follow in the next turns.
    fn stop_leading(&mut self) {
        if self.handover_started.is_none() && self.leading(Instant::now()) {
            self.handover_started = Some(Instant::now());
        }
        self.last_renew_sent = None;
        self.retry_at = None;
    }

    fn note_health(&mut self) {
        let healthy = self.health.borrow().healthy;
        self.metrics.set_app_healthy(healthy);
        if self.was_healthy && !healthy && self.leading(Instant::now()) {
            let why = self
                .health
                .borrow()
                .last_failure
                .clone()
                .unwrap_or_default();
            if self.paused() {
                warn!(%why, "app failed its probe; the group is paused: keeping the lease");
                if let Some(pod) = &self.pod {
                    self.events.publish(
                        pod,
                        true,
                        "UnhealthyWhilePaused",
                        format!(
                            "app failed its probe ({why}); group paused: keeping lease {} (resume to fail over: kubectl baton resume {})",
                            self.leases.name(),
                            self.leases.name()
                        ),
                    );
                }
                self.was_healthy = healthy;
                return;
            }
            if let Some(pod) = &self.pod {
                self.events.publish(
                    pod,
                    true,
                    "AppUnhealthy",
                    format!(
                        "app failed its probe ({why}); handing over the lease {}",
                        self.leases.name()
                    ),
                );
            }
            self.stop_leading();
        }
        self.was_healthy = healthy;
    }

    /// Says once per change when the Lease is held by something that is
    /// not a pod of the group (a Warning Event, the log, the metric); the
    /// group has no active pod until it lets go, at most its counted claim.
    fn note_stranger(&mut self) {
        let stranger = match (&self.lease, &self.holder_pod, &self.holder_since) {
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
                        lease = self.leases.name(),
                        group = self.labeller.labels().group,
                        bound = o.duration,
                        ns = self.settings.pod_namespace,
                    )
                })
            }
            _ => None,
        };
        if stranger != self.stranger {
            self.metrics.set_lease_held_by_stranger(stranger.is_some());
            match &stranger {
                Some(problem) => warn!(%problem, "the lease is held by a stranger"),
                None => {
                    info!(lease = %self.leases.name(), "the lease is no longer held by a stranger")
                }
            }
            self.stranger = stranger;
            self.stranger_event_sent = false;
        }
        // The Event regards our Pod, which a starting sidecar may not have
        // seen yet: sent once it has.
        if let (Some(problem), Some(pod), false) =
            (&self.stranger, &self.pod, self.stranger_event_sent)
        {
            self.events
                .publish(pod, true, "LeaseHeldByStranger", problem.clone());
            self.stranger_event_sent = true;
        }
    }

    /// Says once per change whether the group is paused (log, metric, and
    /// an Event from the holder), and any control annotation that means
    /// nothing (rule 10).
    fn note_controls(&mut self) {
        if self.lease == LeaseView::Unknown {
            return;
        }
        let paused = self.paused();
        if self.paused_said != Some(paused) {
            self.metrics.set_group_paused(paused);
            let news = self.paused_said.is_some() || paused;
            self.paused_said = Some(paused);
            if news {
                let lease = self.leases.name().to_owned();
                if paused {
                    info!(%lease, "group paused: a failing app is reported, not failed over");
                } else {
                    info!(%lease, "group resumed: automatic failover is back");
                }
                if let (Some(pod), Some(true)) = (&self.pod, self.holder().map(|h| h == self.me()))
                {
                    let (reason, note) = if paused {
                        (
                            "Paused",
                            format!(
                                "group {lease} paused: automatic failover is off; a failing app is reported, not failed over"
                            ),
                        )
                    } else {
                        (
                            "Resumed",
                            format!("group {lease} resumed: automatic failover is on"),
                        )
                    };
                    self.events.publish(pod, false, reason, note);
                }
            }
        }
        self.metrics.set_cordoned(self.cordoned());
        let problem = [
            controls::flag(self.lease_annotations(), PAUSED).err(),
            controls::switchover_target(self.lease_annotations()).err(),
            controls::flag(
                self.pod
                    .as_ref()
                    .and_then(|p| p.metadata.annotations.as_ref()),
                CORDONED,
            )
            .err(),
        ]
        .into_iter()
        .flatten()
        .map(|e| format!("{e}; ignored"))
        .next();
        if problem != self.control_problem_said {
            if let Some(problem) = &problem {
                warn!(%problem, "invalid control annotation");
                if let Some(pod) = &self.pod {
                    self.events
                        .publish(pod, true, "InvalidControl", problem.clone());
                }
            }
            self.control_problem_said = problem;
        }
    }

    /// The next instant at which a decision may change without any input.
    fn next_wake(&self, now: Instant) -> Option<Instant> {
        let step = self.step(now);
        let step_wake = match step {
            Step::WaitUntil(t) => t,
            _ => Some(now),
        };
        let drain_end = self.draining(now).then(|| self.drain_ends()).flatten();
        let endpoint_retry = self
            .endpoint_retry_at
            .filter(|_| !self.endpoint_current && self.leading(now));
        let handover_ends = self
            .handing_over
            .as_ref()
            .map(|h| h.began + self.settings.lease_duration);
        let health_retry = self.health_retry_at.filter(|_| self.health_condition);
        [
            step_wake,
            self.leading_until(),
            self.retry_at,
            drain_end,
            endpoint_retry,
            handover_ends,
            self.handover_retry_at,
            health_retry,
        ]
        .into_iter()
        .flatten()
        .filter(|t| *t > now)
        .min()
    }

    fn step(&self, now: Instant) -> Step {
        election::next_step(&Situation {
            me: self.me(),
            eligible: self.eligible(),
            may_take: self.may_take(),
            paused: self.paused(),
            offered: self.offered(),
            handed_over: self
                .handing_over
                .as_ref()
                .map(|h| (h.version.as_str(), h.until)),
            lease: &self.lease,
            last_renew_sent: self.last_renew_sent,
            renew_period: self.settings.renew_period,
            now,
        })
    }

    /// Takes at most one action; returns whether it did anything.
    async fn act(&mut self, now: Instant) -> bool {
        if self.retry_at.is_some_and(|t| now < t) {
            return false;
        }
        // docs/design.md rule 4 as an invariant: whoever is not eligible does not lead.
        if !self.eligible() && self.leading(now) {
            self.stop_leading();
        }
        let leading = self.leading(now);
        if !leading {
            self.endpoint_current = false;
        }
        let label = self.label_role();
        let have_pod = self.pod.is_some();

        // docs/design.md rules 4 and 7: whoever is not holder is labelled
        // passive, first; except a holder that missed its deadline only for
        // want of answers, which reads and renews first when the API server
        // is back: a renewal that lands (conditional on the version it last
        // saw) proves nobody took over, so it keeps its label without a flap;
        // and a deleted holder, which releases first and keeps its label
        // while it drains (rule 8).
        if !leading
            && have_pod
            && label != Some(Role::Passive)
            && !self.may_still_hold(label)
            && !self.draining(now)
            && !self.keeps_label_while_handing_over(now)
        {
            let result = self.set_own_role(Role::Passive, now).await;
            self.note_passive_label(&result);
            return self.settle("label passive", result.map(|_| ()));
        }

        // Then the Lease. Writes only once our Pod has been seen: a holder
        // that cannot label itself would leave the Service without an
        // endpoint while it renews. (A restarted holder waits for its Pod
        // too, rather than release; a deleted Pod still releases; reads go
        // on, so that an unreachable API server is noticed and said.)
        let step = self.step(now);
        if !have_pod && !self.pod_deleted && !matches!(step, Step::Read | Step::WaitUntil(_)) {
            return false;
        }
        // A release comes after the passive label above (docs/design.md, rule 3).
        if !matches!(step, Step::WaitUntil(_)) {
            let result = self.lease_step(step, now).await;
            return self.settle(step_name(step), result);
        }

        // docs/design.md rule 10: a switchover asked for, or a cordoned
        // holder, hands the Lease on; the label stays until the new holder
        // demotes us.
        if leading
            && have_pod
            && self.handing_over.is_none()
            && let Some((target, why)) = self.handover_wanted(now)
        {
            let result = self.hand_over(target, why, now).await;
            return self.settle("hand over lease", result);
        }

        // docs/design.md rule 9: a holder first makes itself the Service's
        // one endpoint, in one write: what clients see moves there.
        if leading
            && have_pod
            && !self.endpoint_current
            && self.service_endpoints.is_some()
            && self.endpoint_retry_at.is_none_or(|t| now >= t)
        {
            return match self.point_service(now).await {
                Some(result) => {
                    self.settle_endpoint(result);
                    true
                }
                None => false,
            };
        }

        // docs/design.md rule 3: a holder demotes the others, then promotes itself.
        if leading && have_pod && label != Some(Role::Active) && !self.pod_seen_stale() {
            let result = self.promote(now).await;
            return self.settle("promote", result);
        }

        // Draining: is there anyone to hand over to? (Once, after the release.)
        if self.drain().is_some_and(|d| d.standbys.is_none()) {
            let result = self
                .labeller
                .count_others(self.me(), self.call_timeout(now))
                .await
                .map(|n| {
                    if n == 0 {
                        info!(
                            "no other pod in the group to take over; the app stops without a drain"
                        );
                    }
                    if let Phase::GivenUp { drain: Some(d), .. } = &mut self.phase {
                        d.standbys = Some(n);
                    }
                });
            return self.settle("count the group", result.map_err(ActionError::from));
        }

        // Who holds the Lease, when it is not us: once per holder.
        if let Some(holder) = self.holder().filter(|h| *h != self.me()).map(str::to_owned)
            && self.holder_pod.as_ref().is_none_or(|(h, _)| *h != holder)
        {
            let result = self
                .labeller
                .group_member(&holder, self.call_timeout(now))
                .await
                .map(|m| self.holder_pod = Some((holder, m)));
            return self.settle("check lease holder", result.map_err(ActionError::from));
        }

        // Our app's health on our Pod, for people and `kubectl baton`:
        // written when the verdict changes, never to undo another writer's
        // edit (no fight with a node agent that rewrites the conditions).
        if self.health_condition && have_pod && self.health_retry_at.is_none_or(|t| now >= t) {
            let health = self.health.borrow().clone();
            let shown = self.pod.as_ref().and_then(controls::app_healthy_condition);
            if health.probed() && self.health_published.is_none() && shown == Some(health.healthy) {
                // A restarted sidecar whose pod already says so.
                self.health_published = Some(health.healthy);
            }
            if health.probed() && self.health_published != Some(health.healthy) {
                let result = self.publish_health(&health, now).await;
                self.settle_health(result);
                return true;
            }
        }

        // The label already says what we decided (a pod admitted as
        // passive, a restarted holder): that is our role too.
        if let Some(role) = label.filter(|_| self.lease != LeaseView::Unknown) {
            self.on_role(role).await;
        }
        false
    }

    /// Rule 7's exception (see `act`): eligible, labelled active, cut off
    /// from the API server, and the Lease named us when last seen (or is
    /// being re-read).
    fn may_still_hold(&self, label: Option<Role>) -> bool {
        self.out_of_reach
            && self.eligible()
            && label == Some(Role::Active)
            && match &self.lease {
                LeaseView::Unknown => true,
                LeaseView::Present(o) => o.holder.as_deref() == Some(self.me()),
                LeaseView::Absent => false,
            }
    }

    /// Logs when our passive label starts failing and when it lands: while it
    /// fails, the Service may still select this pod (until a new holder
    /// demotes it), though everything we show already says passive. Once
    /// per streak: `settle`'s log is once per API outage, and a holder whose
    /// renewals failed first would never say that its relabel fails too.
    fn note_passive_label(&mut self, result: &Result<(), ActionError>) {
        match result {
            Err(error) if self.passive_label_failures.failed() => warn!(
                %error,
                "cannot label this pod passive; /status, metrics and the role file say passive, \
                 the label stays until the API server takes it (retrying; logged again when it does)"
            ),
            Err(_) => {}
            Ok(()) => {
                if let Some(failures) = self.passive_label_failures.succeeded() {
                    info!(failed_attempts = failures, "labelled passive at last");
                }
            }
        }
    }

    /// Records an action's outcome: back-off on failure, re-read on conflict.
    fn settle(&mut self, operation: &'static str, result: Result<(), ActionError>) -> bool {
        let lease_write = [Step::Create, Step::Acquire, Step::Renew, Step::Release]
            .into_iter()
            .any(|s| step_name(s) == operation);
        match &result {
            Err(e) => self.out_of_reach = e.unanswered(),
            // Reads and other calls say nothing of whether we still hold it.
            Ok(()) if lease_write => self.out_of_reach = false,
            Ok(()) => {}
        }
        match result {
            Ok(()) => {
                self.api.succeeded();
                self.retry_at = None;
            }
            // Only a promotion: a refused passive label is a lasting
            // misconfiguration (the policies' role values), an API error.
            Err(ActionError::Label(
                e @ LabelError::Refused {
                    role: Role::Active, ..
                },
            )) => {
                // The Lease-holder policy judges by a cached Lease that may
                // lag the write that made us holder by milliseconds: try
                // again soon, backing off from a short base in case the
                // refusal lasts (a policy with other role values, say).
                self.metrics.promotion_refused();
                self.refused += 1;
                if self.refused == 1 {
                    info!(operation, error = %e, "label refused at admission; retrying (logged again when admitted)");
                }
                let wait = backoff::delay(
                    REFUSED_RETRY_BASE,
                    self.settings.retry_period,
                    self.refused,
                    fastrand::f64(),
                );
                self.retry_at = Some(Instant::now() + wait);
            }
            Err(ActionError::Lease(e)) if e.needs_read() => {
                debug!(operation, error = %e, "re-reading the lease");
                self.lease = LeaseView::Unknown;
                // Unanswered is an API failure too: without a back-off a
                // hung API server would be asked again at once, forever.
                if matches!(e, WriteError::Timeout { .. }) {
                    self.back_off(operation, &e);
                }
            }
            Err(ActionError::Label(e @ LabelError::Conflict { .. })) => {
                debug!(operation, error = %e, "pod changed; deciding again");
            }
            Err(e) => self.back_off(operation, &e),
        }
        true
    }

    /// A failed API call: counted, logged once per outage, retried after a
    /// back-off; during a shutdown it ends the handover.
    fn back_off(&mut self, operation: &'static str, error: &dyn std::error::Error) {
        self.metrics.api_error(operation);
        let failures = self.api.failed(operation, error);
        if let Phase::ShuttingDown { deadline, .. } = &mut self.phase {
            *deadline = Instant::now();
            return;
        }
        let cap = if self.leading(Instant::now()) {
            self.settings.retry_period
        } else {
            self.settings.retry_period * 4
        };
        let wait = backoff::delay(
            self.settings.retry_period / 2,
            cap,
            failures,
            fastrand::f64(),
        );
        self.retry_at = Some(Instant::now() + wait);
    }

    async fn lease_step(&mut self, step: Step, now: Instant) -> Result<(), ActionError> {
        let timeout = self.call_timeout(now);
        if step == Step::Read {
            let lease = self.leases.read(timeout).await?;
            self.observe_lease(lease.as_ref(), Instant::now());
            return Ok(());
        }
        let current = match step {
            Step::Create => None,
            _ => self.lease_object.as_ref(),
        };
        let mut desired = election::desired_lease(
            current,
            step,
            self.me(),
            self.settings.lease_duration,
            Timestamp::now(),
        );
        let taking_back = step == Step::Acquire
            && self.handing_over.as_ref().is_some_and(|h| {
                current.and_then(|c| c.metadata.resource_version.as_ref()) == Some(&h.version)
            });
        let reason = self.switch_reason(step, current, taking_back);
        if let Some(reason) = &reason {
            election::annotate(&mut desired, SWITCH_REASON, Some(reason.clone()));
        }
        if self.ends_switchover(step, taking_back) {
            election::annotate(&mut desired, SWITCHOVER_TO, None);
        }
        let sent = Instant::now();
        let written = self.leases.write(current, desired, timeout).await?;
        let before = self.holder().map(str::to_owned);
        self.observe_lease(Some(&written), Instant::now());
        if taking_back {
            let reason = reason.unwrap_or_default();
            warn!(%reason, "switchover not taken; keeping the role");
            self.metrics.switchover("taken_back");
            if let Some(pod) = &self.pod {
                self.events.publish(pod, true, "SwitchoverFailed", reason);
            }
            if self.cordoned() {
                self.handover_retry_at = Some(Instant::now() + self.settings.lease_duration);
            }
        }
        if step != Step::Release {
            self.handing_over = None;
        }
        match step {
            Step::Release => {
                self.last_renew_sent = None;
                info!(lease = %self.leases.name(), "released the lease");
                // Only a pod that gave up for good says so; an unhealthy app
                // has had its `AppUnhealthy` Event.
                if let (Some(pod), Some(why)) = (&self.pod, self.gave_up()) {
                    self.events.publish(
                        pod,
                        false,
                        "HandedOver",
                        handed_over_note(self.leases.name(), why),
                    );
                }
                let shutting_down = self.shutting_down();
                if let Some(started) = self.handover_started.take().filter(|_| !shutting_down) {
                    self.metrics.observe_handover(started.elapsed());
                }
            }
            _ => {
                self.last_renew_sent = Some(sent);
                if before.as_deref() != Some(self.me()) {
                    info!(lease = %self.leases.name(), transitions = self.transitions(), "acquired the lease");
                }
            }
        }
        Ok(())
    }

    /// Why the holder changes with this write, for `baton.dev/switch-reason`
    /// (None: leave it; a released Lease keeps what its releaser wrote).
    fn switch_reason(
        &self,
        step: Step,
        current: Option<&Lease>,
        taking_back: bool,
    ) -> Option<String> {
        let me = self.me();
        match step {
            Step::Create => Some(format!("{me} created the lease")),
            Step::Acquire if taking_back => {
                let h = self.handing_over.as_ref()?;
                Some(format!(
                    "switchover to {} not taken within {:?}; {me} keeps the role",
                    h.target,
                    h.until - h.began
                ))
            }
            Step::Acquire => current
                .and_then(|c| c.spec.as_ref())
                .and_then(|s| s.holder_identity.clone())
                .filter(|h| !h.is_empty() && h != me)
                .map(|h| format!("{h} stopped renewing; its lease expired")),
            Step::Release => Some(match self.gave_up() {
                Some(why) => format!("{me} gave up: {}", give_up_text(why)),
                None => format!(
                    "{me} gave up: app unhealthy ({})",
                    self.health
                        .borrow()
                        .last_failure
                        .clone()
                        .unwrap_or_default()
                ),
            }),
            _ => None,
        }
    }

    /// Whether this write ends the switchover asked for on the Lease: the
    /// pod it names takes the role, any pod takes it when any may, or the
    /// holder takes it back.
    fn ends_switchover(&self, step: Step, taking_back: bool) -> bool {
        match (step, self.switchover_request()) {
            (Step::Acquire, Some(_)) if taking_back => true,
            (Step::Acquire, Some(Target::Any)) => true,
            (Step::Acquire | Step::Renew, Some(Target::Pod(p))) => p == self.me(),
            _ => false,
        }
    }

    /// Rule 10: hands the Lease to `target` (or releases it for any
    /// standby), keeping our label; we take it back with the version we
    /// wrote if nobody has taken it within half a lease duration.
    async fn hand_over(
        &mut self,
        target: Target,
        why: &'static str,
        now: Instant,
    ) -> Result<(), ActionError> {
        let Some(current) = self.lease_object.clone() else {
            return Ok(());
        };
        let me = self.me().to_owned();
        let to = match &target {
            Target::Pod(p) => Some(p.as_str()),
            Target::Any => None,
        };
        let mut desired =
            election::handed_lease(&current, to, self.settings.lease_duration, Timestamp::now());
        let reason = format!("{me} handed over to {target} ({why})");
        election::annotate(&mut desired, SWITCH_REASON, Some(reason.clone()));
        let sent = Instant::now();
        let written = self
            .leases
            .write(Some(&current), desired, self.call_timeout(now))
            .await?;
        self.observe_lease(Some(&written), Instant::now());
        self.last_renew_sent = None;
        self.endpoint_current = false;
        self.handing_over = Some(HandingOver {
            version: written
                .metadata
                .resource_version
                .clone()
                .unwrap_or_default(),
            target,
            began: sent,
            until: sent + self.settings.lease_duration / 2,
        });
        info!(lease = %self.leases.name(), %reason, "handing over");
        self.metrics.switchover("handed_over");
        if let Some(pod) = &self.pod {
            self.events.publish(pod, false, "SwitchingOver", reason);
        }
        Ok(())
    }

    /// Sets our Pod's app-healthy condition to what the probe says.
    async fn publish_health(
        &mut self,
        health: &crate::probe::Health,
        now: Instant,
    ) -> Result<(), LabelError> {
        let patch = controls::app_healthy_patch(
            health.healthy,
            health.last_failure.as_deref(),
            Timestamp::now(),
        );
        let pod = self
            .labeller
            .set_health_condition(self.me(), patch, self.call_timeout(now))
            .await?;
        self.health_published = Some(health.healthy);
        self.observe_pod(pod);
        Ok(())
    }

    /// A failed health condition holds up nothing else: it is retried on
    /// its own back-off and logged once per streak.
    fn settle_health(&mut self, result: Result<(), LabelError>) {
        match result {
            Ok(()) => {
                self.health_retry_at = None;
                if let Some(failures) = self.health_failures.succeeded() {
                    info!(
                        failed_attempts = failures,
                        "app-healthy condition set at last"
                    );
                }
            }
            Err(error) => {
                self.metrics.api_error("set health condition");
                if self.health_failures.failed() {
                    warn!(error = %crate::telemetry::ErrorChain(&error), "cannot set this pod's app-healthy condition (retrying; logged again when it lands)");
                }
                let wait = backoff::delay(
                    self.settings.retry_period / 2,
                    self.settings.retry_period * 4,
                    self.health_failures.count(),
                    fastrand::f64(),
                );
                self.health_retry_at = Some(Instant::now() + wait);
            }
        }
    }

    /// Rule 9: replaces the Service slice's endpoint with our pod, if we are
    /// still holder right before the write.
    /// `None`: nothing sent (no longer holder by now).
    async fn point_service(&mut self, now: Instant) -> Option<Result<Pointed, EndpointError>> {
        let (Some(endpoints), Some(pod)) = (&self.service_endpoints, &self.pod) else {
            return None;
        };
        if !self.leading(Instant::now()) {
            return None;
        }
        Some(endpoints.point_at(pod, self.call_timeout(now)).await)
    }

    /// Records the outcome of `point_service`. A failure does not hold up
    /// the labels: it is retried on its own back-off, logged once per
    /// streak, and a misconfigured Service is said once in a Warning Event.
    fn settle_endpoint(&mut self, result: Result<Pointed, EndpointError>) {
        let service = self
            .service_endpoints
            .as_ref()
            .map(|e| e.service().to_owned())
            .unwrap_or_default();
        let error = match result {
            Ok(pointed) => {
                self.endpoint_current = true;
                self.endpoint_retry_at = None;
                self.endpoint_problem_said = None;
                if let Some(failures) = self.endpoint_failures.succeeded() {
                    info!(%service, failed_attempts = failures, "the Service's endpoint written at last");
                }
                if pointed == Pointed::Written {
                    info!(%service, "made this pod the Service's endpoint");
                }
                return;
            }
            Err(e @ EndpointError::Conflict { .. }) => {
                debug!(error = %e, "deciding again");
                return;
            }
            Err(e) => e,
        };
        let base = if let EndpointError::Refused { .. } = error {
            // As a refused promotion: the policy's cached Lease lags ours.
            self.metrics.promotion_refused();
            self.endpoint_failures.failed();
            REFUSED_RETRY_BASE
        } else {
            self.metrics.api_error("point service");
            if self.endpoint_failures.failed() {
                warn!(error = %crate::telemetry::ErrorChain(&error), "cannot make this pod the Service's endpoint; clients still reach the previous one (retrying; logged again when it lands)");
            }
            self.settings.retry_period / 2
        };
        let message = error.to_string();
        if error.is_misconfiguration() && self.endpoint_problem_said.as_ref() != Some(&message) {
            if let Some(pod) = &self.pod {
                self.events
                    .publish(pod, true, "ServiceNotWritten", message.clone());
            }
            self.endpoint_problem_said = Some(message);
        }
        let wait = backoff::delay(
            base,
            self.settings.retry_period,
            self.endpoint_failures.count(),
            fastrand::f64(),
        );
        self.endpoint_retry_at = Some(Instant::now() + wait);
    }

    /// Demotes every other active pod of the group, then labels itself
    /// active, if it is still holder right before the write.
    async fn promote(&mut self, now: Instant) -> Result<(), ActionError> {
        let demoted = self
            .labeller
            .demote_others(self.me(), self.call_timeout(now))
            .await?;
        for other in &demoted {
            info!(pod = %other, "demoted a stale active pod");
        }
        let now = Instant::now();
        if !self.leading(now) {
            return Ok(());
        }
        self.set_own_role(Role::Active, now).await
    }

    /// Sets our own role label. Promotion carries our pod's resourceVersion
    /// and is checked against the leadership deadline right before sending.
    async fn set_own_role(&mut self, role: Role, now: Instant) -> Result<(), ActionError> {
        let rv = match role {
            Role::Active => self
                .pod
                .as_ref()
                .and_then(|p| p.metadata.resource_version.clone()),
            Role::Passive => None,
        };
        if role == Role::Active && !self.leading(Instant::now()) {
            return Ok(());
        }
        let timeout = self.call_timeout(now);
        let patched = match self
            .labeller
            .set(self.me(), role, rv.as_deref(), timeout)
            .await
        {
            Ok(patched) => patched,
            Err(e) => {
                if matches!(e, LabelError::Conflict { .. }) {
                    self.conflicted_pod_version = rv;
                }
                return Err(e.into());
            }
        };
        if self.refused > 0 {
            info!(refused = self.refused, "label admitted");
            self.refused = 0;
        }
        match patched {
            Some(pod) => self.observe_pod(pod),
            None => self.pod_deleted = true,
        }
        self.on_role(role).await;
        Ok(())
    }

    async fn on_role(&mut self, role: Role) {
        let was = self.role;
        let changed = was != Some(role);
        self.role = Some(role);
        if !changed {
            return;
        }
        let lease = self.leases.name().to_owned();
        let transitions = self.transitions();
        match role {
            Role::Active => info!(%lease, transitions, "labelled active"),
            Role::Passive => {
                info!(%lease, holder = self.holder().unwrap_or(""), "labelled passive")
            }
        }
        if let Some(pod) = &self.pod {
            let (reason, note) = match role {
                Role::Active => (
                    "Promoted",
                    format!(
                        "holds lease {lease} (transition {transitions}); labelled {}={}",
                        self.settings.role_label, self.settings.active_value
                    ),
                ),
                Role::Passive => {
                    let why = match self.holder() {
                        Some(h) if h == self.me() => format!("handing over lease {lease}"),
                        Some(h) => format!("lease {lease} held by {h}"),
                        None => format!("lease {lease} not held"),
                    };
                    let label = format!(
                        "{}={}",
                        self.settings.role_label, self.settings.passive_value
                    );
                    ("Demoted", format!("{why}; labelled {label}"))
                }
            };
            // The first passive label of a new pod is no news.
            if role == Role::Active || was == Some(Role::Active) {
                self.events.publish(pod, false, reason, note);
            }
        }
    }

    /// What we show outside, `/status`, metrics and the role file, in step
    /// with what we know at `now`.
    async fn show_role(&mut self, now: Instant) {
        self.sync_role_file(now).await;
        self.publish_status(now);
    }

    /// The role to show at `now` (`docs/design.md`, rule 5): a holder that
    /// lost the API server, or its permission to write, turns passive at its
    /// deadline even when it cannot relabel itself.
    fn outward_role(&self, now: Instant) -> Option<Role> {
        election::outward_role(self.role, self.leading_until(), now)
    }

    /// Keeps the role file in step with the outward role.
    async fn sync_role_file(&mut self, now: Instant) {
        let Some(path) = self.settings.role_file.clone() else {
            return;
        };
        let Some(role) = self.outward_role(now) else {
            return;
        };
        let record = RoleRecord {
            role,
            holder: self.holder(),
            lease_transitions: self.transitions(),
        };
        let key = (
            role,
            record.holder.map(str::to_owned),
            record.lease_transitions,
        );
        if self.role_file_written.as_ref() == Some(&key) {
            return;
        }
        match rolefile::write(&path, &record).await {
            Ok(()) => self.role_file_written = Some(key),
            Err(err) => warn!(path = %path.display(), error = %err, "cannot write the role file"),
        }
    }

    fn holder(&self) -> Option<&str> {
        match &self.lease {
            LeaseView::Present(o) => o.holder.as_deref(),
            _ => None,
        }
    }

    fn transitions(&self) -> i32 {
        match &self.lease {
            LeaseView::Present(o) => o.transitions,
            _ => 0,
        }
    }

    fn observe_lease(&mut self, lease: Option<&Lease>, now: Instant) {
        match lease {
            None => {
                self.lease = LeaseView::Absent;
                self.lease_object = None;
            }
            Some(l) => {
                // Also across a re-read (`Unknown`): a write that timed out
                // and did not land must not restart the expiry clock.
                let previous = match &self.lease {
                    LeaseView::Present(o) => Some(o),
                    _ => self.last_observed.as_ref(),
                };
                let observed = Observed::from_lease(l, previous, self.settings.lease_duration, now);
                self.last_observed = Some(observed.clone());
                let holder = observed.holder.clone().unwrap_or_default();
                if self.holder_since.as_ref().is_none_or(|(h, _)| *h != holder) {
                    self.holder_since = Some((holder, observed.resource_version.clone()));
                    // A new holder is checked afresh (a pod may come back).
                    self.holder_pod = None;
                }
                self.metrics.set_lease_transitions(observed.transitions);
                let taken_over = observed.holder.as_deref().is_some_and(|h| h != self.me());
                if let Phase::GivenUp { drain: Some(d), .. } = &mut self.phase
                    && d.taken_over_at.is_none()
                    && taken_over
                {
                    info!(holder = ?observed.holder, drain = ?self.settings.handover_drain, "another pod took the Lease; the app serves on while kube-proxy moves to it");
                    d.taken_over_at = Some(now);
                }
                self.lease = LeaseView::Present(observed);
                self.lease_object = Some(l.clone());
            }
        }
    }

    fn on_lease_event(&mut self, event: Result<watcher::Event<Lease>, watcher::Error>) {
        let now = Instant::now();
        match event {
            Ok(watcher::Event::Init) => self.lease_listed = false,
            Ok(watcher::Event::InitApply(l) | watcher::Event::Apply(l)) => {
                self.lease_listed = true;
                if is_newer(
                    &l.metadata.resource_version,
                    self.lease_object
                        .as_ref()
                        .and_then(|o| o.metadata.resource_version.as_ref()),
                ) {
                    self.observe_lease(Some(&l), now);
                }
                self.api.succeeded();
            }
            Ok(watcher::Event::Delete(_)) => self.observe_lease(None, now),
            Ok(watcher::Event::InitDone) => {
                if !self.lease_listed {
                    self.observe_lease(None, now);
                }
                self.api.succeeded();
            }
            Err(err) => {
                self.metrics.api_error("watch lease");
                self.api.failed("watch lease", &err);
            }
        }
    }

    fn on_pod_event(&mut self, event: Result<watcher::Event<Pod>, watcher::Error>) {
        match event {
            Ok(watcher::Event::InitApply(p) | watcher::Event::Apply(p)) => {
                if is_newer(
                    &p.metadata.resource_version,
                    self.pod
                        .as_ref()
                        .and_then(|o| o.metadata.resource_version.as_ref()),
                ) {
                    self.observe_pod(p);
                }
            }
            Ok(watcher::Event::Delete(_)) => {
                self.pod_deleted = true;
                self.pod = None;
                if !self.terminating() {
                    info!("pod deleted; handing over");
                    self.start_giving_up(GiveUp::PodDeleted);
                }
            }
            Ok(watcher::Event::Init | watcher::Event::InitDone) => {}
            Err(err) => {
                self.metrics.api_error("watch pod");
                self.api.failed("watch pod", &err);
            }
        }
    }

    fn observe_pod(&mut self, pod: Pod) {
        if pod.metadata.deletion_timestamp.is_some() && !self.terminating() {
            info!("pod terminating; handing over");
            self.start_giving_up(GiveUp::PodTerminating);
            if self.labeller.labels().role_of(&pod) == Some(Role::Active) {
                self.phase = Phase::GivenUp {
                    why: GiveUp::PodTerminating,
                    drain: Some(Drain {
                        began: Instant::now(),
                        taken_over_at: None,
                        standbys: None,
                    }),
                };
            }
        }
        self.pod = Some(pod);
    }

    /// Publishes `/status` and the role metrics as of `now`.
    fn publish_status(&self, now: Instant) {
        let health = self.health.borrow().clone();
        let role = self.outward_role(now);
        let next = Status {
            pod: self.settings.pod_name.clone(),
            namespace: self.settings.pod_namespace.clone(),
            pod_ip: self.settings.pod_ip.clone(),
            lease: self.leases.name().to_owned(),
            role,
            label_role: self.label_role(),
            holder: self.holder().map(str::to_owned),
            lease_problem: self.stranger.clone(),
            app_healthy: health.healthy,
            app_last_failure: health.last_failure,
            lease_transitions: self.transitions(),
            api_reachable: self.api.reachable(),
            last_change: self.status.borrow().last_change.clone(),
            terminating: self.terminating(),
            draining: self.draining(now),
            paused: self.paused(),
            cordoned: self.cordoned(),
            switchover: self.switchover_request().map(|t| t.to_string()),
        };
        let mut role_changed = false;
        self.status.send_if_modified(|s| {
            let mut next = next;
            if s.role != next.role {
                next.last_change = Some(Timestamp::now().to_string());
                role_changed = true;
            }
            let changed = *s != next;
            *s = next;
            changed
        });
        if let (true, Some(role)) = (role_changed, role) {
            self.metrics.set_role(role == Role::Active, true);
        }
    }
}

/// Where the pod is on its way out. It only moves forward: a candidate
/// gives up for good (rule 6), a deleted holder drains meanwhile (rule 8),
/// and SIGTERM ends any drain and bounds what is left of the handover.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Eligible whenever its app is healthy.
    Candidate,
    /// No longer eligible, handing over; a deleted holder drains.
    GivenUp { why: GiveUp, drain: Option<Drain> },
    /// SIGTERM: hands over until `deadline`, then exits; `why` is the first
    /// cause (a pod deletion is followed by kubelet's SIGTERM).
    ShuttingDown { why: GiveUp, deadline: Instant },
}

/// A deleted holder's drain (rule 8).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Drain {
    began: Instant,
    /// When another pod was first seen holding the Lease since.
    taken_over_at: Option<Instant>,
    /// Other pods of the group not being deleted, counted once after the
    /// release: with none, nobody can take over and there is nothing to
    /// drain for.
    standbys: Option<usize>,
}

/// Why a pod stopped being eligible for good (`docs/design.md`, rule 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GiveUp {
    /// SIGTERM or SIGINT (the `shutdown` future of `run`).
    Shutdown,
    /// A `deletionTimestamp` on our Pod.
    PodTerminating,
    PodDeleted,
    /// The probe task ended: health can no longer be known.
    ProbeStopped,
}

/// Why the Lease's holder is not a pod of the group, if it is not. A pod of
/// the group that no longer exists (killed with its node, say) is not a
/// stranger: it does not renew, and claims what every member claims.
fn stranger_reason(
    holder: Membership,
    renewed: bool,
    claimed: Duration,
    own: Duration,
) -> Option<String> {
    match holder {
        Membership::Member => None,
        Membership::OtherPod => Some("a pod that is not of this group".into()),
        Membership::NoSuchPod if renewed => Some("which is no pod, and renews the lease".into()),
        Membership::NoSuchPod if claimed > own => {
            Some(format!("which is no pod, and claims it for {claimed:?}"))
        }
        Membership::NoSuchPod => None,
    }
}

/// The note of the `HandedOver` Event: the lease, and what made us give it up.
fn handed_over_note(lease: &str, why: GiveUp) -> String {
    format!("released lease {lease} ({})", give_up_text(why))
}

fn give_up_text(why: GiveUp) -> &'static str {
    match why {
        GiveUp::Shutdown => "sidecar shutting down",
        GiveUp::PodTerminating => "pod terminating",
        GiveUp::PodDeleted => "pod deleted",
        GiveUp::ProbeStopped => "app probe stopped",
    }
}

fn step_name(step: Step) -> &'static str {
    match step {
        Step::Read => "read lease",
        Step::Create => "create lease",
        Step::Acquire => "acquire lease",
        Step::Renew => "renew lease",
        Step::Release => "release lease",
        Step::WaitUntil(_) => "wait",
    }
}

/// Whether a watched object is newer than the one we hold. Our own writes
/// may overtake the watch; resourceVersions are opaque by contract but
/// etcd's are integers, so compare them when both parse.
fn is_newer(incoming: &Option<String>, held: Option<&String>) -> bool {
    match (
        incoming.as_deref().map(str::parse::<u64>),
        held.map(|h| h.parse::<u64>()),
    ) {
        (Some(Ok(a)), Some(Ok(b))) => a >= b,
        _ => true,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// Whether our Pod as last seen is the version a promotion conflicted with.
fn is_stale(pod: Option<&Pod>, conflicted_version: Option<&str>) -> bool {
    conflicted_version.is_some()
        && pod.and_then(|p| p.metadata.resource_version.as_deref()) == conflicted_version
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use clap::Parser;
    use kube::{Api, ResourceExt};

    use std::sync::Arc;

    use super::*;
    use crate::{
        labels::RoleLabels,
        probe::Outcome,
        testing::{self, ScriptedApi},
    };

    /// web-0 as the holder of lease `web`, labelled active, its last renewal
    /// sent at `sent`, talking to `api`.
    fn holder(api: &ScriptedApi, sent: Instant) -> (Candidate, watch::Receiver<Status>) {
        holder_with(api, sent, &[])
    }

    /// [`holder`] with more command-line flags.
    fn holder_with(
        api: &ScriptedApi,
        sent: Instant,
        flags: &[&str],
    ) -> (Candidate, watch::Receiver<Status>) {
        let args = [
            "baton-sidecar",
            "--pod-name=web-0",
            "--pod-namespace=default",
            "--lease-name=web",
        ];
        let settings = Settings::try_parse_from(args.iter().chain(flags)).expect("valid settings");
        let client = api.client();
        let labels = RoleLabels {
            key: settings.role_label.clone(),
            active: settings.active_value.clone(),
            passive: settings.passive_value.clone(),
            group_key: settings.group_label.clone(),
            group: settings.lease_name.clone(),
        };
        let healthy = Health::default().fold(&Outcome::Success, 1, 1);
        let (_, health) = watch::channel(healthy);
        let (status, shown) = watch::channel(Status::default());
        let mut c = Candidate::new(
            settings,
            LeaseClient::new(Api::default_namespaced(client.clone()), "web"),
            Labeller::new(Api::default_namespaced(client.clone()), labels),
            Events::new(client, "web-0"),
            Metrics::new(),
            health,
            status,
        );
        let mut lease = Lease::default();
        lease.metadata.name = Some("web".into());
        lease.metadata.resource_version = Some("7".into());
        lease.spec = Some(k8s_openapi::api::coordination::v1::LeaseSpec {
            holder_identity: Some("web-0".into()),
            lease_duration_seconds: Some(6),
            lease_transitions: Some(1),
            ..Default::default()
        });
        c.observe_lease(Some(&lease), sent);
        c.last_renew_sent = Some(sent);
        let mut pod = Pod::default();
        pod.metadata.name = Some("web-0".into());
        pod.metadata.resource_version = Some("12".into());
        pod.metadata.labels = Some(BTreeMap::from([
            ("role".to_owned(), "active".to_owned()),
            ("baton.dev/group".to_owned(), "web".to_owned()),
        ]));
        c.observe_pod(pod);
        c.role = Some(Role::Active);
        (c, shown)
    }

    /// An API server that accepts every write: a Lease replace is answered
    /// with the next resourceVersion, a pod patch with the pod patched.
    fn accepting_api() -> ScriptedApi {
        ScriptedApi::new(|req| {
            let mut body = req.body.clone();
            match req.method.as_str() {
                "PUT" => {
                    let rv: u64 = body["metadata"]["resourceVersion"]
                        .as_str()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    body["metadata"]["resourceVersion"] = (rv + 1).to_string().into();
                    (200, body)
                }
                "PATCH" => {
                    body["metadata"]["name"] = "web-0".into();
                    body["metadata"]["resourceVersion"] = "30".into();
                    if req.path.ends_with("/status") {
                        // The whole pod comes back: web-0, the active holder.
                        body["metadata"]["labels"] =
                            serde_json::json!({"baton.dev/group": "web", "role": "active"});
                    }
                    (200, body)
                }
                "GET" => (
                    200,
                    serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {
                        "name": req.path.rsplit('/').next().unwrap_or_default(),
                        "labels": {"baton.dev/group": "web", "role": "passive"}}}),
                ),
                _ => testing::created(req),
            }
        })
    }

    /// The Lease as `c` last saw it, with `annotations` added, seen anew.
    fn annotate_lease(c: &mut Candidate, annotations: &[(&str, Option<&str>)]) {
        let mut lease = c.lease_object.clone().expect("a lease");
        for (key, value) in annotations {
            election::annotate(&mut lease, key, value.map(str::to_owned));
        }
        let rv: u64 = lease
            .resource_version()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        lease.metadata.resource_version = Some((rv + 1).to_string());
        c.observe_lease(Some(&lease), Instant::now());
    }

    fn lease_writes(api: &ScriptedApi) -> Vec<serde_json::Value> {
        api.requests()
            .into_iter()
            .filter(|r| r.method == "PUT" && r.path.contains("/leases/"))
            .map(|r| r.body)
            .collect()
    }

    fn pod_patches(api: &ScriptedApi) -> usize {
        api.requests()
            .iter()
            .filter(|r| r.method == "PATCH" && r.path.contains("/pods/"))
            .count()
    }

    #[tokio::test]
    async fn a_switchover_hands_the_lease_on_keeps_the_label_and_takes_it_back_if_nobody_takes_it()
    {
        let api = accepting_api();
        let (mut c, _shown) = holder(&api, Instant::now());
        annotate_lease(&mut c, &[(SWITCHOVER_TO, Some("web-1"))]);

        assert!(c.act(Instant::now()).await, "hands over");
        let writes = lease_writes(&api);
        assert_eq!(writes.len(), 1);
        assert_eq!(writes[0]["spec"]["holderIdentity"], "web-1");
        assert_eq!(writes[0]["spec"]["leaseTransitions"], 2);
        assert_eq!(
            writes[0]["metadata"]["annotations"][SWITCH_REASON],
            "web-0 handed over to web-1 (switchover requested)"
        );
        assert_eq!(
            writes[0]["metadata"]["annotations"][SWITCHOVER_TO], "web-1",
            "the request stays until the target takes it"
        );
        assert!(!c.leading(Instant::now()));

        // Not leading, yet the label stays active: no passive label, no
        // Lease write (the new holder, looked up once, is all it does).
        for _ in 0..3 {
            c.act(Instant::now()).await;
        }
        assert_eq!(pod_patches(&api), 0, "{:?}", calls(&api));
        assert_eq!(lease_writes(&api).len(), 1, "{:?}", calls(&api));
        let until = c.handing_over.as_ref().expect("in flight").until;
        assert_eq!(
            until - c.handing_over.as_ref().expect("in flight").began,
            c.settings.lease_duration / 2
        );
        assert_eq!(c.next_wake(Instant::now()), Some(until));

        // Nobody took it by the bound: taken back, on the version written.
        assert!(c.act(until).await);
        let writes = lease_writes(&api);
        assert_eq!(writes.len(), 2);
        assert_eq!(writes[1]["spec"]["holderIdentity"], "web-0");
        assert_eq!(writes[1]["metadata"]["resourceVersion"], "9");
        assert_eq!(
            writes[1]["metadata"]["annotations"][SWITCH_REASON],
            "switchover to web-1 not taken within 3s; web-0 keeps the role"
        );
        assert!(
            writes[1]["metadata"]["annotations"]
                .get(SWITCHOVER_TO)
                .is_none(),
            "the request ends"
        );
        assert!(c.leading(Instant::now()));
        assert_eq!(pod_patches(&api), 0, "the label never moved");
        assert!(
            c.metrics
                .encode()
                .contains("baton_switchovers_total{result=\"taken_back\"} 1")
        );
    }

    #[tokio::test]
    async fn a_pod_offered_the_lease_takes_it_and_ends_the_request() {
        let api = accepting_api();
        let (mut c, _shown) = holder(&api, Instant::now());
        c.last_renew_sent = None;
        let mut pod = c.pod.clone().expect("pod");
        pod.labels_mut().insert("role".into(), "passive".into());
        c.observe_pod(pod);
        annotate_lease(&mut c, &[(SWITCHOVER_TO, Some("web-0"))]);
        assert!(c.offered());
        assert!(c.act(Instant::now()).await);
        let writes = lease_writes(&api);
        assert_eq!(writes[0]["spec"]["holderIdentity"], "web-0");
        assert!(
            writes[0]["metadata"]["annotations"]
                .get(SWITCHOVER_TO)
                .is_none()
        );
    }

    #[tokio::test]
    async fn a_cordoned_holder_releases_for_any_standby() {
        let api = accepting_api();
        let (mut c, _shown) = holder(&api, Instant::now());
        let mut pod = c.pod.clone().expect("pod");
        pod.metadata.annotations = Some(BTreeMap::from([(CORDONED.to_owned(), "true".to_owned())]));
        pod.metadata.resource_version = Some("13".into());
        c.observe_pod(pod);
        assert!(c.act(Instant::now()).await);
        let writes = lease_writes(&api);
        assert_eq!(writes[0]["spec"]["holderIdentity"], serde_json::Value::Null);
        assert_eq!(
            writes[0]["metadata"]["annotations"][SWITCH_REASON],
            "web-0 handed over to any healthy standby (cordoned)"
        );
        // It does not take the released Lease back before the bound.
        assert!(!c.act(Instant::now()).await);
        assert_eq!(lease_writes(&api).len(), 1);

        // Nobody took it: taken back, and the next handover waits a lease
        // duration rather than releasing again at once.
        let until = c.handing_over.as_ref().expect("in flight").until;
        assert!(c.act(until).await);
        let writes = lease_writes(&api);
        assert_eq!(writes.len(), 2);
        assert_eq!(writes[1]["spec"]["holderIdentity"], "web-0");
        let retry = c.handover_retry_at.expect("a retry time");
        assert!(
            retry > Instant::now() + c.settings.lease_duration / 2,
            "a lease duration from the take-back: {retry:?}"
        );
        assert_eq!(c.handover_wanted(Instant::now()), None);
        assert_eq!(c.handover_wanted(retry).map(|(t, _)| t), Some(Target::Any));
    }

    #[tokio::test]
    async fn the_health_condition_is_written_when_the_verdict_changes_and_never_fought_over() {
        let api = accepting_api();
        let (c, _shown) = holder(&api, Instant::now());
        let mut c = c.with_health_condition(true);
        let (health_tx, health_rx) =
            watch::channel(Health::default().fold(&Outcome::Success, 1, 1));
        c.health = health_rx;
        let status_patches = |api: &ScriptedApi| -> Vec<serde_json::Value> {
            api.requests()
                .into_iter()
                .filter(|r| r.method == "PATCH" && r.path.ends_with("/status"))
                .map(|r| r.body)
                .collect()
        };
        assert!(c.act(Instant::now()).await);
        let sent = status_patches(&api);
        assert_eq!(sent.len(), 1);
        assert_eq!(
            sent[0]["status"]["conditions"][0]["type"],
            controls::APP_HEALTHY_CONDITION
        );
        assert_eq!(sent[0]["status"]["conditions"][0]["status"], "True");

        // Another writer drops it: not written back (no fight).
        let mut pod = c.pod.clone().expect("pod");
        pod.status = None;
        pod.metadata.resource_version = Some("31".into());
        c.observe_pod(pod);
        for _ in 0..3 {
            c.act(Instant::now()).await;
        }
        assert_eq!(status_patches(&api).len(), 1, "{:?}", calls(&api));

        // The verdict changes: written.
        health_tx.send_modify(|h| *h = h.fold(&Outcome::Failure("503".into()), 1, 1));
        c.note_health();
        for _ in 0..6 {
            c.act(Instant::now()).await;
        }
        let sent = status_patches(&api);
        assert_eq!(sent.len(), 2, "{:?}", calls(&api));
        assert_eq!(sent[1]["status"]["conditions"][0]["status"], "False");
        assert_eq!(sent[1]["status"]["conditions"][0]["message"], "503");
    }

    #[tokio::test]
    async fn a_paused_holder_keeps_the_lease_while_its_app_fails_and_gives_it_up_on_resume() {
        let api = accepting_api();
        let (mut c, shown) = holder(&api, Instant::now() - Duration::from_secs(2));
        let (health_tx, health_rx) =
            watch::channel(Health::default().fold(&Outcome::Success, 1, 1));
        c.health = health_rx;
        c.note_health();
        annotate_lease(&mut c, &[(PAUSED, Some("true"))]);
        c.note_controls();
        assert!(c.metrics.encode().contains("baton_group_paused 1"));

        health_tx.send_modify(|h| *h = h.fold(&Outcome::Failure("503".into()), 1, 1));
        c.note_health();
        assert!(c.act(Instant::now()).await);
        let writes = lease_writes(&api);
        assert_eq!(writes.len(), 1);
        assert_eq!(
            writes[0]["spec"]["holderIdentity"], "web-0",
            "renewed, not released"
        );
        assert_eq!(pod_patches(&api), 0);
        c.publish_status(Instant::now());
        assert!(shown.borrow().paused);
        assert_eq!(shown.borrow().role, Some(Role::Active));
        let reasons = api.sent("reason");
        assert!(
            reasons
                .iter()
                .any(|r| r.ends_with(": UnhealthyWhilePaused")),
            "{reasons:?}"
        );

        // Resumed: the unhealthy holder gives up (passive label, then release).
        annotate_lease(&mut c, &[(PAUSED, None)]);
        c.note_controls();
        assert!(c.act(Instant::now()).await);
        assert_eq!(pod_patches(&api), 1);
        assert!(c.act(Instant::now()).await);
        let writes = lease_writes(&api);
        assert_eq!(
            writes.last().expect("a write")["spec"]["holderIdentity"],
            serde_json::Value::Null
        );
        assert!(
            writes.last().expect("a write")["metadata"]["annotations"][SWITCH_REASON]
                .as_str()
                .is_some_and(|r| r.starts_with("web-0 gave up: app unhealthy")),
            "{writes:?}"
        );
    }

    #[tokio::test]
    async fn a_holder_that_lost_its_rbac_shows_passive_at_its_deadline_and_says_why_once() {
        testing::capture_logs();
        let api = ScriptedApi::new(testing::forbidden);
        // Due to renew (2 s since the last renewal), 2 s left before the deadline.
        let (mut c, shown) = holder(&api, Instant::now() - Duration::from_secs(2));
        let renew_deadline = c.settings.renew_deadline;
        c.publish_status(Instant::now());
        assert_eq!(shown.borrow().role, Some(Role::Active));
        assert!(c.metrics.encode().contains("baton_role_active 1"));

        // The renewal is refused: logged as the API server failing, which
        // it now is for every call until one succeeds.
        c.act(Instant::now()).await;
        assert!(
            testing::logged()
                .iter()
                .any(|l| l.contains("Kubernetes API call failed")),
            "{:#?}",
            testing::logged()
        );
        c.publish_status(Instant::now());
        assert_eq!(
            shown.borrow().role,
            Some(Role::Active),
            "within the deadline"
        );

        // The deadline passes: the label cannot be changed, every outward sign turns passive.
        c.last_renew_sent = Some(Instant::now() - renew_deadline);
        c.publish_status(Instant::now());
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

        // Its attempts to label itself passive fail: said once, with the error.
        for _ in 0..3 {
            c.retry_at = None;
            c.act(Instant::now()).await;
        }
        let calls: Vec<_> = api
            .requests()
            .iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect();
        assert_eq!(
            calls,
            [
                "PUT /apis/coordination.k8s.io/v1/namespaces/default/leases/web",
                "PATCH /api/v1/namespaces/default/pods/web-0",
                "PATCH /api/v1/namespaces/default/pods/web-0",
                "PATCH /api/v1/namespaces/default/pods/web-0",
            ]
        );
        let logs = testing::logged();
        let said: Vec<_> = logs
            .iter()
            .filter(|l| l.contains("cannot label this pod passive"))
            .collect();
        assert_eq!(said.len(), 1, "{logs:#?}");
        assert!(
            said[0].starts_with("WARN") && said[0].contains("forbidden"),
            "{said:?}"
        );
        assert_eq!(shown.borrow().role, Some(Role::Passive));
    }

    /// An API server for a deleted holder web-0: label patches answered
    /// with the pod being deleted, the group listed as `group`, web-1 read
    /// as a pod of the group, Lease writes accepted.
    fn deletion_api(group: &'static [&'static str]) -> ScriptedApi {
        ScriptedApi::new(move |req| {
            let pod = |name: &str| {
                serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name,
                    "labels": {"baton.dev/group": "web", "role": "passive"}}})
            };
            match (req.method.as_str(), req.path.as_str()) {
                ("PATCH", _) => {
                    let mut pod = req.body.clone();
                    pod["metadata"]["name"] = "web-0".into();
                    pod["metadata"]["resourceVersion"] = "20".into();
                    pod["metadata"]["deletionTimestamp"] = "2026-12-01T00:00:00Z".into();
                    (200, pod)
                }
                ("GET", "/api/v1/namespaces/default/pods") => {
                    let items: Vec<_> = group.iter().map(|n| pod(n)).collect();
                    (
                        200,
                        serde_json::json!({"apiVersion": "v1", "kind": "PodList",
                        "metadata": {}, "items": items}),
                    )
                }
                ("GET", path) => (200, pod(path.rsplit('/').next().unwrap_or_default())),
                _ => testing::created(req),
            }
        })
    }

    /// web-0, holder and labelled active, sees its pod deleted.
    fn deleted_holder(api: &ScriptedApi) -> (Candidate, watch::Receiver<Status>) {
        let (mut c, shown) = holder_with(api, Instant::now(), &["--handover-drain=300ms"]);
        let mut deleted = c.pod.clone().expect("the pod");
        deleted.metadata.resource_version = Some("13".into());
        deleted.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::now()),
        );
        c.observe_pod(deleted);
        (c, shown)
    }

    fn calls(api: &ScriptedApi) -> Vec<String> {
        api.requests()
            .iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect()
    }

    fn patches(api: &ScriptedApi) -> usize {
        calls(api).iter().filter(|c| c.starts_with("PATCH")).count()
    }

    /// Rule 8: a deleted holder releases the Lease at once but keeps its
    /// active label (kube-proxy's fallback while no pod is Ready behind the
    /// Service) until another pod has held the Lease for the drain; then it
    /// labels itself passive.
    #[tokio::test]
    async fn a_deleted_holder_releases_first_and_keeps_its_label_while_it_drains() {
        let api = deletion_api(&["web-0", "web-1"]);
        let drain = Duration::from_millis(300);
        let (mut c, shown) = deleted_holder(&api);

        assert!(c.act(Instant::now()).await, "the release");
        assert_eq!(
            calls(&api),
            ["PUT /apis/coordination.k8s.io/v1/namespaces/default/leases/web"],
            "released, not labelled passive first"
        );
        assert!(c.act(Instant::now()).await, "the group counted");
        assert!(
            !c.act(Instant::now()).await,
            "nothing more while draining: {:?}",
            calls(&api)
        );
        c.publish_status(Instant::now());
        let status = shown.borrow().clone();
        assert!(status.draining && status.terminating, "{status:?}");
        assert_eq!(
            status.role,
            Some(Role::Passive),
            "no longer acting as holder"
        );
        assert_eq!(status.label_role, Some(Role::Active), "{status:?}");

        // web-1 takes the Lease: the drain runs from then.
        let taken = Instant::now();
        c.observe_lease(Some(&held_by("web-1", "9", 6)), taken);
        // (It reads who web-1 is, once: a pod of the group.)
        for _ in 0..3 {
            c.act(Instant::now()).await;
        }
        assert_eq!(patches(&api), 0, "still labelled active: {:?}", calls(&api));
        let wake = c
            .next_wake(Instant::now())
            .expect("a wake at the drain's end");
        assert!(wake >= taken + drain, "{wake:?}");
        tokio::time::sleep_until((taken + drain).into()).await;
        assert!(c.act(Instant::now()).await, "the passive label");
        assert_eq!(patches(&api), 1, "{:?}", calls(&api));
        let label = api
            .requests()
            .last()
            .map(|r| r.body["metadata"]["labels"]["role"].clone());
        assert_eq!(label, Some("passive".into()));
        c.publish_status(Instant::now());
        assert!(!shown.borrow().draining);
    }

    /// web-0, holder but still labelled passive, with `--service=web-svc`:
    /// `service` answers the Service's GET.
    fn new_holder_with_service(service: Option<serde_json::Value>) -> (ScriptedApi, Candidate) {
        let api = ScriptedApi::new(move |req| match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/api/v1/namespaces/default/services/web-svc") => match &service {
                Some(s) => (200, s.clone()),
                None => (
                    404,
                    serde_json::json!({"kind": "Status", "apiVersion": "v1",
                        "status": "Failure", "reason": "NotFound", "code": 404}),
                ),
            },
            (
                "GET",
                "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/web-svc-baton",
            ) => (
                404,
                serde_json::json!({"kind": "Status", "apiVersion": "v1",
                        "status": "Failure", "reason": "NotFound", "code": 404}),
            ),
            ("GET", "/api/v1/namespaces/default/pods") => (
                200,
                serde_json::json!(
                    {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": []}),
            ),
            ("PATCH", _) => {
                let mut pod = req.body.clone();
                pod["metadata"]["name"] = "web-0".into();
                (200, pod)
            }
            _ => testing::created(req),
        });
        let (mut c, _) = holder_with(&api, Instant::now(), &["--service=web-svc"]);
        let mut pod = c.pod.clone().expect("the pod");
        pod.labels_mut().insert("role".into(), "passive".into());
        pod.status = Some(k8s_openapi::api::core::v1::PodStatus {
            pod_ip: Some("10.1.0.5".into()),
            ..Default::default()
        });
        c.observe_pod(pod);
        c.role = Some(Role::Passive);
        let c = c.with_service_endpoints(Some(ServiceEndpoints::new(
            api.client(),
            "default",
            "web-svc".into(),
            ("baton.dev/group".into(), "web".into()),
        )));
        (api, c)
    }

    /// Rule 9: the new holder's first write is the Service's slice, naming
    /// it alone; then it demotes the others and labels itself.
    #[tokio::test]
    async fn a_new_holder_makes_itself_the_services_endpoint_before_it_labels() {
        let service = serde_json::json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web-svc", "namespace": "default", "uid": "s-1"},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}});
        let (api, mut c) = new_holder_with_service(Some(service));
        for _ in 0..4 {
            c.act(Instant::now()).await;
        }
        let calls: Vec<_> = calls(&api)
            .into_iter()
            .filter(|c| !c.contains("/events"))
            .collect();
        assert_eq!(
            calls,
            [
                "GET /api/v1/namespaces/default/services/web-svc",
                "GET /apis/discovery.k8s.io/v1/namespaces/default/endpointslices/web-svc-baton",
                "POST /apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
                "GET /api/v1/namespaces/default/pods",
                "PATCH /api/v1/namespaces/default/pods/web-0",
            ]
        );
        let slice = &api.requests()[2].body;
        assert_eq!(
            slice["endpoints"][0]["addresses"],
            serde_json::json!(["10.1.0.5"])
        );
        assert_eq!(slice["endpoints"][0]["targetRef"]["name"], "web-0");
        assert_eq!(slice["ports"][0]["port"], 8080);
    }

    /// A Service that is missing holds up nothing: the holder labels itself,
    /// says why once in a Warning Event, and retries the slice on its own
    /// back-off.
    #[tokio::test]
    async fn a_missing_service_is_said_once_and_the_holder_still_labels_itself() {
        let (api, mut c) = new_holder_with_service(None);
        for _ in 0..4 {
            c.act(Instant::now()).await;
        }
        api.wait_for(5, Duration::from_secs(5)).await;
        let services = calls(&api)
            .iter()
            .filter(|c| c.contains("/services/"))
            .count();
        assert_eq!(
            services,
            1,
            "retried on its back-off, not at once: {:?}",
            calls(&api)
        );
        assert_eq!(
            patches(&api),
            1,
            "labelled active all the same: {:?}",
            calls(&api)
        );
        let warnings: Vec<_> = api
            .requests()
            .into_iter()
            .filter(|r| r.body["reason"] == "ServiceNotWritten")
            .collect();
        assert_eq!(warnings.len(), 1, "{:?}", api.sent("reason"));
        let note = warnings[0].body["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            note.contains("Service web-svc") && note.contains("does not exist"),
            "{note}"
        );
        assert!(c.endpoint_retry_at.is_some_and(|t| t > Instant::now()));
    }

    /// web-0, holder, still labelled passive at pod version 12: its next
    /// action is the promotion, which `label` answers.
    fn unlabelled_holder(
        label: fn(&testing::Request) -> (u16, serde_json::Value),
    ) -> (ScriptedApi, Candidate) {
        let api = ScriptedApi::new(move |req| match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/api/v1/namespaces/default/pods") => (
                200,
                serde_json::json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": []}),
            ),
            ("PATCH", _) => label(req),
            _ => testing::created(req),
        });
        let (mut c, _) = holder(&api, Instant::now());
        let mut pod = c.pod.clone().expect("the pod");
        pod.labels_mut().insert("role".into(), "passive".into());
        c.observe_pod(pod);
        c.role = Some(Role::Passive);
        (api, c)
    }

    fn status(code: u16, reason: &str) -> (u16, serde_json::Value) {
        (
            code,
            serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "message": format!("{reason} on purpose"), "reason": reason, "code": code}),
        )
    }

    /// Rule 3's precondition: a promotion that conflicts (409, the pod
    /// changed since it was read) is not sent again with the same stale
    /// version; it waits until the watch shows a newer pod.
    #[tokio::test]
    async fn a_promotion_that_conflicts_waits_for_the_watch_not_a_resend() {
        let (api, mut c) = unlabelled_holder(|_| status(409, "Conflict"));
        assert!(c.act(Instant::now()).await, "the promotion");
        assert_eq!(patches(&api), 1);
        let sent = api.requests().last().expect("the patch").body.clone();
        assert_eq!(sent["metadata"]["resourceVersion"], "12", "{sent}");
        for _ in 0..3 {
            c.act(Instant::now()).await;
        }
        assert_eq!(patches(&api), 1, "not resent: {:?}", calls(&api));

        let mut newer = c.pod.clone().expect("the pod");
        newer.metadata.resource_version = Some("14".into());
        c.observe_pod(newer);
        assert!(c.act(Instant::now()).await, "promoted again");
        assert_eq!(patches(&api), 2, "{:?}", calls(&api));
        let sent = api.requests().last().expect("the patch").body.clone();
        assert_eq!(sent["metadata"]["resourceVersion"], "14", "{sent}");
    }

    /// A promotion refused at admission (422: the Lease-holder policy, whose
    /// cached Lease may lag the write that made us holder) is counted and
    /// retried after about 20 ms, not at once and not after the API back-off.
    #[tokio::test]
    async fn a_promotion_refused_at_admission_is_retried_soon_and_counted() {
        let (api, mut c) = unlabelled_holder(|_| status(422, "Invalid"));
        assert!(c.act(Instant::now()).await, "the promotion");
        assert_eq!(patches(&api), 1);
        assert!(
            c.metrics
                .encode()
                .contains("baton_promotions_refused_total 1")
        );
        let retry = c.retry_at.expect("a retry");
        let wait = retry - Instant::now();
        assert!(wait <= REFUSED_RETRY_BASE * 2, "soon: {wait:?}");
        assert!(!c.act(Instant::now()).await, "not at once");
        tokio::time::sleep_until(retry.into()).await;
        assert!(c.act(Instant::now()).await, "retried");
        assert_eq!(patches(&api), 2, "{:?}", calls(&api));
        assert!(c.api.reachable(), "a refusal is no API failure");
    }

    /// A renewal the API server never answers times out at the holder's
    /// deadline (the call is cut to the time left): the holder backs off,
    /// re-reads the Lease, and shows passive from its deadline on.
    #[tokio::test]
    async fn a_renewal_that_times_out_ends_at_the_deadline_and_shows_passive() {
        let api = frozen();
        let flags = [
            "--lease-duration=1s",
            "--renew-deadline=400ms",
            "--renew-period=100ms",
            "--retry-period=100ms",
            "--api-timeout=500ms",
        ];
        // The last renewal sent 200 ms ago: one is due, 200 ms left.
        let sent = Instant::now() - Duration::from_millis(200);
        let (mut c, shown) = holder_with(&api, sent, &flags);
        let deadline = sent + Duration::from_millis(400);
        assert!(c.act(Instant::now()).await, "the renewal");
        let ended = Instant::now();
        assert_eq!(
            calls(&api),
            ["PUT /apis/coordination.k8s.io/v1/namespaces/default/leases/web"]
        );
        assert!(ended >= deadline, "cut at the deadline, not before");
        assert!(
            ended < deadline + Duration::from_millis(250),
            "not the whole api-timeout"
        );
        assert_eq!(c.lease, LeaseView::Unknown, "re-read next");
        assert!(c.retry_at.is_some() && !c.api.reachable(), "backing off");
        c.publish_status(Instant::now());
        assert_eq!(shown.borrow().role, Some(Role::Passive));
    }

    /// SIGTERM to the sidecar of a deleted holder that drains (a restarted
    /// sidecar, or a regular container beside the app) ends the drain: the
    /// label goes passive at once, and the handover is then done.
    #[tokio::test]
    async fn sigterm_while_draining_ends_the_drain_and_labels_passive_at_once() {
        let api = deletion_api(&["web-0", "web-1"]);
        let (mut c, _shown) = deleted_holder(&api);
        assert!(c.act(Instant::now()).await, "the release");
        assert!(c.act(Instant::now()).await, "the group counted");
        assert!(c.draining(Instant::now()), "draining, web-1 may take over");
        assert_eq!(patches(&api), 0);

        c.begin_shutdown();
        assert!(!c.draining(Instant::now()), "SIGTERM ends the drain");
        assert_eq!(
            c.gave_up(),
            Some(GiveUp::PodTerminating),
            "the first cause is kept"
        );
        assert!(c.act(Instant::now()).await, "the passive label");
        assert_eq!(patches(&api), 1, "{:?}", calls(&api));
        assert!(c.handover_done(), "released and labelled passive");
    }

    /// A group of one: nobody can take over, so the app is not held.
    #[tokio::test]
    async fn a_deleted_holder_alone_in_its_group_does_not_drain() {
        let api = deletion_api(&["web-0"]);
        let (mut c, shown) = deleted_holder(&api);
        assert!(c.act(Instant::now()).await, "the release");
        assert!(c.act(Instant::now()).await, "the group counted");
        assert!(c.act(Instant::now()).await, "the passive label at once");
        assert_eq!(patches(&api), 1, "{:?}", calls(&api));
        c.publish_status(Instant::now());
        assert!(!shown.borrow().draining);
    }

    /// Lease `web` as read: `holder`'s, at `version`, claimed for `seconds`.
    fn held_by(holder: &str, version: &str, seconds: i32) -> Lease {
        let mut lease = Lease::default();
        lease.metadata.resource_version = Some(version.into());
        lease.spec = Some(k8s_openapi::api::coordination::v1::LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(seconds),
            ..Default::default()
        });
        lease
    }

    /// An API server that accepts connections and never answers.
    fn frozen() -> ScriptedApi {
        ScriptedApi::new(testing::forbidden).hanging_when(|_| true)
    }

    /// web-0 as a standby labelled passive that has not read the Lease yet.
    fn standby(api: &ScriptedApi, flags: &[&str]) -> (Candidate, watch::Receiver<Status>) {
        let (mut c, shown) = holder_with(api, Instant::now(), flags);
        c.lease = LeaseView::Unknown;
        c.lease_object = None;
        c.last_renew_sent = None;
        let mut pod = c.pod.clone().expect("the pod");
        pod.metadata.resource_version = Some("13".into());
        pod.metadata
            .labels
            .get_or_insert_default()
            .insert("role".into(), "passive".into());
        c.observe_pod(pod);
        c.role = Some(Role::Passive);
        (c, shown)
    }

    #[tokio::test]
    async fn a_re_read_of_an_unchanged_lease_keeps_its_expiry_clock() {
        let api = frozen();
        let (mut c, _shown) = standby(&api, &[]);
        let lease = held_by("web-1", "8", 6);
        let first = Instant::now();
        c.observe_lease(Some(&lease), first);
        // An acquire timed out: the Lease is re-read, and has not changed.
        c.lease = LeaseView::Unknown;
        c.observe_lease(Some(&lease), first + Duration::from_secs(5));
        let LeaseView::Present(o) = &c.lease else {
            panic!("read: {:?}", c.lease)
        };
        assert_eq!(o.seen_at, first, "expires 6 s after it was first seen");
    }

    /// Rule 7's exception: a holder cut off from the API server past its
    /// deadline, once the server is back, reads and renews before anything
    /// else, and keeps its active label (it used to label itself passive
    /// first, then active again: a flap with no active pod in between).
    #[tokio::test]
    async fn a_holder_back_from_an_outage_renews_before_relabelling_and_keeps_its_label() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let frozen = Arc::new(AtomicBool::new(true));
        let lease = serde_json::json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "web", "namespace": "default", "resourceVersion": "7"},
            "spec": {"holderIdentity": "web-0", "leaseDurationSeconds": 6, "leaseTransitions": 1},
        });
        let api = ScriptedApi::new(move |r| match r.method.as_str() {
            "GET" => (200, lease.clone()),
            "PUT" => {
                let mut written = r.body.clone();
                written["metadata"]["resourceVersion"] = "8".into();
                (200, written)
            }
            _ => testing::forbidden(r),
        })
        .hanging_when({
            let frozen = frozen.clone();
            move |_| frozen.load(Ordering::SeqCst)
        });
        // Due to renew; the renewal hangs.
        let (mut c, shown) = holder_with(
            &api,
            Instant::now() - Duration::from_secs(2),
            &["--api-timeout=100ms"],
        );
        assert!(c.act(Instant::now()).await);
        assert_eq!(
            api.sent("kind"),
            ["PUT /apis/coordination.k8s.io/v1/namespaces/default/leases/web: Lease"]
        );
        // The deadline passes while the API server stays out of reach.
        c.last_renew_sent = Some(Instant::now() - c.settings.renew_deadline);
        c.publish_status(Instant::now());
        assert_eq!(
            shown.borrow().role,
            Some(Role::Passive),
            "passive at the deadline"
        );

        frozen.store(false, Ordering::SeqCst);
        for _ in 0..3 {
            c.retry_at = None;
            c.act(Instant::now()).await;
        }
        let calls = api.sent("kind");
        assert!(
            !calls.iter().any(|c| c.starts_with("PATCH")),
            "no relabel: {calls:#?}"
        );
        assert!(c.leading(Instant::now()), "renewed: {calls:#?}");
        assert_eq!(c.label_role(), Some(Role::Active));
        c.publish_status(Instant::now());
        assert_eq!(shown.borrow().role, Some(Role::Active));
    }

    #[test]
    fn a_stranger_is_another_groups_pod_or_no_pod_that_renews_or_claims_more() {
        let own = Duration::from_secs(6);
        let r =
            |m, renewed, claimed| stranger_reason(m, renewed, Duration::from_secs(claimed), own);
        assert_eq!(r(Membership::Member, true, 3600), None);
        assert!(r(Membership::OtherPod, false, 6).is_some());
        assert!(r(Membership::NoSuchPod, true, 6).is_some(), "renews");
        assert!(
            r(Membership::NoSuchPod, false, 3600).is_some(),
            "claims more"
        );
        assert_eq!(
            r(Membership::NoSuchPod, false, 6),
            None,
            "a member lost with its node"
        );
    }

    /// The `ghost` holder of issue 11: no such pod, a one-hour claim. Said
    /// once (Warning Event, log, metric, `/status`), cleared when it goes.
    #[tokio::test]
    async fn a_lease_held_by_a_stranger_is_said_once_everywhere_until_it_goes() {
        let api = ScriptedApi::new(|r| match (r.method.as_str(), r.path.as_str()) {
            ("GET", "/api/v1/namespaces/default/pods/ghost") => (
                404,
                serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                   "reason": "NotFound", "code": 404}),
            ),
            ("POST", _) => testing::created(r),
            _ => testing::forbidden(r),
        });
        let (mut c, shown) = standby(&api, &[]);
        let mut lease = held_by("ghost", "20", 3600);
        c.observe_lease(Some(&lease), Instant::now());
        assert!(c.act(Instant::now()).await, "it looked the holder up");
        // The Event regards our Pod: none goes out while it is unseen.
        let own_pod = c.pod.take();
        c.note_stranger();
        c.pod = own_pod;
        for _ in 0..3 {
            c.note_stranger();
        }
        c.publish_status(Instant::now());
        let problem = shown
            .borrow()
            .lease_problem
            .clone()
            .expect("a lease problem");
        assert!(
            problem.contains("\"ghost\"") && problem.contains("kubectl delete lease web"),
            "{problem}"
        );
        assert!(
            c.metrics
                .encode()
                .contains("baton_lease_held_by_stranger 1")
        );
        api.wait_for(2, Duration::from_secs(5)).await;
        let events: Vec<_> = api
            .sent("reason")
            .into_iter()
            .filter(|l| l.starts_with("POST"))
            .collect();
        assert_eq!(events.len(), 1, "once: {events:?}");
        assert!(events[0].ends_with("LeaseHeldByStranger"), "{events:?}");

        // Released: nothing to say any more.
        lease.metadata.resource_version = Some("21".into());
        lease.spec.as_mut().expect("spec").holder_identity = None;
        c.observe_lease(Some(&lease), Instant::now());
        c.note_stranger();
        c.publish_status(Instant::now());
        assert_eq!(shown.borrow().lease_problem, None);
        assert!(
            c.metrics
                .encode()
                .contains("baton_lease_held_by_stranger 0")
        );
    }

    /// A sidecar that has not seen its own Pod (its watch slow, or not
    /// allowed) neither creates, acquires nor renews the Lease: it could not
    /// label itself active, and the group would have no endpoint.
    #[tokio::test]
    async fn no_lease_write_before_the_own_pod_is_seen() {
        let api = ScriptedApi::new(testing::created);
        let (mut c, _shown) = standby(&api, &[]);
        c.pod = None;
        c.lease = LeaseView::Absent;
        assert!(!c.act(Instant::now()).await, "waits");
        // Reading is harmless, and says whether the API server answers.
        c.lease = LeaseView::Unknown;
        assert!(c.act(Instant::now()).await, "reads");
        let reads = api.requests().len();
        assert_eq!(reads, 1, "{:?}", api.sent("kind"));
        let (mut h, _shown) = holder(&api, Instant::now() - Duration::from_secs(2));
        h.pod = None;
        assert!(
            !h.act(Instant::now()).await,
            "a holder due to renew waits too"
        );
        assert_eq!(api.requests().len(), reads, "{:?}", api.sent("kind"));
    }

    #[tokio::test]
    async fn a_lease_read_that_times_out_backs_off_like_any_failed_call() {
        let api = frozen();
        let (mut c, _shown) = standby(&api, &["--api-timeout=100ms"]);
        assert!(c.act(Instant::now()).await, "it read");
        assert_eq!(api.sent("kind").len(), 1);
        assert!(
            api.sent("kind")[0].starts_with("GET "),
            "{:?}",
            api.sent("kind")
        );
        assert!(!c.api.reachable(), "an unanswered read is a failed call");
        assert!(c.retry_at.is_some(), "backing off before reading again");
        assert!(!c.act(Instant::now()).await, "not asked again at once");
        assert_eq!(api.requests().len(), 1);
    }

    /// Rule 6 during an outage: SIGTERM cuts short a call that hangs (the
    /// loop used to wait for its timeout, and a standby re-read the Lease at
    /// once after each), and no handover call follows.
    #[tokio::test]
    async fn sigterm_while_the_api_server_hangs_ends_the_loop_at_once() {
        let api = frozen();
        // A standby reading the Lease, with a call that would wait an hour.
        let (c, shown) = standby(&api, &["--api-timeout=1h", "--lease-duration=2h"]);
        let (sigterm, on_sigterm) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(c.run(
            futures::stream::pending(),
            futures::stream::pending(),
            async move {
                let _ = on_sigterm.await;
            },
        ));
        api.wait_for(1, Duration::from_secs(30)).await;
        let before = api.requests().len();
        sigterm.send(()).expect("the loop listens");
        tokio::time::timeout(Duration::from_secs(20), run)
            .await
            .expect("the loop ended after SIGTERM although the API server hangs")
            .expect("the loop did not panic");
        let after_sigterm = api.requests().len() - before;
        assert_eq!(
            after_sigterm,
            0,
            "no call once the API server is known to hang: {:?}",
            api.sent("kind")
        );
        assert_eq!(shown.borrow().role, Some(Role::Passive));
    }

    #[test]
    fn a_conflicted_promotion_waits_for_a_newer_pod_version() {
        let mut pod = Pod::default();
        pod.metadata.resource_version = Some("41".into());
        assert!(!is_stale(Some(&pod), None), "no conflict yet");
        assert!(
            is_stale(Some(&pod), Some("41")),
            "the version that conflicted"
        );
        pod.metadata.resource_version = Some("42".into());
        assert!(
            !is_stale(Some(&pod), Some("41")),
            "the watch showed a newer pod"
        );
        assert!(!is_stale(None, Some("41")));
    }

    #[test]
    fn handed_over_says_what_made_the_pod_give_up() {
        // Never "app unhealthy": an unhealthy app releases without this Event.
        let cases = [
            (GiveUp::PodTerminating, "pod terminating"),
            (GiveUp::PodDeleted, "pod deleted"),
            (GiveUp::ProbeStopped, "app probe stopped"),
            (GiveUp::Shutdown, "sidecar shutting down"),
        ];
        for (why, said) in cases {
            assert_eq!(
                handed_over_note("web", why),
                format!("released lease web ({said})")
            );
        }
    }

    #[test]
    fn watch_events_older_than_our_own_write_are_ignored() {
        assert!(is_newer(&Some("10".into()), Some(&"9".to_string())));
        assert!(is_newer(&Some("10".into()), Some(&"10".to_string())));
        assert!(!is_newer(&Some("9".into()), Some(&"10".to_string())));
        assert!(
            is_newer(&Some("abc".into()), Some(&"10".to_string())),
            "opaque: accept"
        );
        assert!(is_newer(&Some("1".into()), None));
    }
}
