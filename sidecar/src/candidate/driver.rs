//! The driver: owns the API clients, the clocks, random numbers and every
//! `.await`. Each turn it feeds the core what arrived, shows the role, asks
//! [`decide`] for one action, carries it out within its bound (racing
//! SIGTERM), hands the outcome to [`settle`], and otherwise sleeps until an
//! input comes or the next instant a decision may change.

use std::{pin::pin, time::Instant};

use futures::{FutureExt, Stream, StreamExt, stream::BoxStream};
use k8s_openapi::{api::coordination::v1::Lease, api::core::v1::Pod, jiff::Timestamp};
use kube::runtime::watcher;
use tokio::sync::watch;
use tracing::{info, warn};

use super::{
    Action, Labelled, Outcome, decide, decide::next_wake, settle, state::CallBound, state::State,
};
use crate::{
    contract::controls,
    contract::{Role, Status},
    election::LeaseClient,
    endpoints::ServiceEndpoints,
    events::Events,
    labels::{LabelError, Labeller},
    metrics::Metrics,
    probe::Health,
    settings::Settings,
};

/// The loop's state and the handles it acts through.
pub struct Candidate {
    pub(super) leases: LeaseClient,
    pub(super) labeller: Labeller,
    pub(super) events: Events,
    pub(super) metrics: Metrics,
    pub(super) health: watch::Receiver<Health>,
    pub(super) status: watch::Sender<Status>,
    pub(super) service_endpoints: Option<ServiceEndpoints>,
    /// What the role file says: (role, holder, transitions).
    pub(super) role_file_written: Option<(Role, Option<String>, i32)>,
    /// Whether the holder watches its group's pods (the census).
    pub(super) group_watch: bool,
    pub(super) state: State,
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
        let state = State::new(
            settings,
            labeller.labels().clone(),
            leases.name().to_owned(),
        );
        Candidate {
            leases,
            labeller,
            events,
            metrics,
            health,
            status,
            service_endpoints: None,
            role_file_written: None,
            group_watch: false,
            state,
        }
    }

    /// The sidecar also keeps its Pod's app-healthy condition (rule 10).
    pub fn with_health_condition(mut self, on: bool) -> Self {
        self.state.controls.health_condition = on;
        self
    }

    /// The holder also watches its group's pods, while it holds the Lease,
    /// and says what their census finds.
    pub fn with_group_watch(mut self, on: bool) -> Self {
        self.group_watch = on;
        self
    }

    /// The holder also makes itself the one endpoint of this Service (rule 9).
    pub fn with_service_endpoints(mut self, endpoints: Option<ServiceEndpoints>) -> Self {
        self.state.endpoint.service = endpoints.as_ref().map(|e| e.service().to_owned());
        self.service_endpoints = endpoints;
        self
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
        let mut group_events = None;
        loop {
            let now = Instant::now();
            self.sync_health();
            self.sync_group_watch(&mut group_events);
            let notices = self.state.note(now);
            self.say(notices);
            // Before acting too: at the deadline the action is the passive
            // label, which may take an API timeout, and what we show must
            // not wait for it (rule 5).
            self.show_role(now).await;
            if self.state.shutdown_deadline().is_some_and(|d| now >= d) {
                warn!(
                    "API server did not answer the handover in time; exiting without it (a standby takes over once the Lease expires)"
                );
                return;
            }
            // A holder that stops leading here (rule 4) shows it before
            // its first call, the release included.
            if self.state.enforce(now) {
                self.show_role(now).await;
            }
            let action = decide(&self.state, now);
            // An action waits on the API server, up to its bound, again and
            // again while it hangs: SIGTERM cuts it short (rule 6).
            let acted = if self.state.shutting_down() {
                match action {
                    Some(action) => self.carry_out(action).await,
                    None => false,
                }
            } else {
                let cut = match action {
                    Some(action) => tokio::select! {
                        biased;
                        _ = &mut shutdown => None,
                        acted = self.carry_out(action) => Some(acted),
                    },
                    None => (&mut shutdown)
                        .now_or_never()
                        .map_or(Some(false), |()| None),
                };
                cut.unwrap_or_else(|| {
                    let notices = self.state.cut_short(Instant::now());
                    self.say(notices);
                    true
                })
            };
            self.sync_health();
            self.show_role(Instant::now()).await;
            if self.state.shutting_down() && self.state.handover_done() {
                if let Some(started) = self.state.life.handover_started {
                    self.metrics.observe_handover(started.elapsed());
                }
                info!("handover done; exiting");
                self.events.flush(self.state.settings.api_timeout).await;
                return;
            }
            if acted {
                continue;
            }
            let wake = next_wake(&self.state, now);
            let notices = tokio::select! {
                _ = &mut shutdown, if !self.state.shutting_down() => {
                    self.state.begin_shutdown(Instant::now())
                }
                changed = health.changed() => match changed {
                    Ok(()) => Vec::new(),
                    Err(_) => self.state.handle_probe_stopped(Instant::now()),
                },
                Some(event) = lease_events.next() => {
                    self.state.handle_lease_event(event, Instant::now())
                }
                Some(event) = pod_events.next() => {
                    self.state.handle_pod_event(event, Instant::now())
                }
                Some(event) = next_group_event(&mut group_events) => {
                    self.state.handle_group_event(event, Instant::now())
                }
                _ = sleep_until(wake) => Vec::new(),
            };
            self.say(notices);
        }
    }

    /// Opens the group watch when the core wants it (we hold the Lease) and
    /// closes it when it no longer does: one watch per group, on its
    /// holder, and none on the standbys.
    fn sync_group_watch(&mut self, events: &mut Option<GroupEvents>) {
        let wanted = self.group_watch && self.state.wants_group_view();
        match (wanted, events.is_some()) {
            (true, false) => {
                let retry = self.state.settings.retry_period;
                *events = Some(self.labeller.group_events(retry));
            }
            (false, true) => {
                *events = None;
                self.state.close_group_view();
            }
            _ => {}
        }
    }

    /// The probe's verdict as it stands now, into the core.
    fn sync_health(&mut self) {
        let health = self.health.borrow().clone();
        self.state.handle_health(health);
    }

    /// Carries out `action` and settles its outcome; false when nothing
    /// was sent after all (rule 9's write, no longer holder by then).
    pub(super) async fn carry_out(&mut self, action: Action) -> bool {
        if matches!(action, Action::HandOver(_)) {
            // Passive outward before the write can land: the new holder's
            // term begins with it (rules 10 and 11).
            self.state.begin_handover_write();
            self.show_role(Instant::now()).await;
        }
        let operation = action.operation();
        let Some(outcome) = self.call(action).await else {
            return false;
        };
        if let Some(operation) = operation {
            self.metrics.api_call(operation);
        }
        let notices = settle(&mut self.state, outcome, Instant::now(), fastrand::f64());
        self.say(notices);
        true
    }

    /// The calls of `action`, each within its bound.
    async fn call(&mut self, action: Action) -> Option<Outcome> {
        let s = &self.state;
        let me = s.me().to_owned();
        let duration = s.settings.lease_duration;
        Some(match action {
            Action::AdoptHealth(healthy) => Outcome::HealthAdopted(healthy),
            Action::AdoptRole(role) => Outcome::RoleAdopted(role),
            Action::LabelPassive { bound } => {
                Outcome::LabelledPassive(self.label(Role::Passive, None, bound).await)
            }
            Action::ReadLease { bound } => {
                Outcome::LeaseRead(self.leases.read(bound.at(Instant::now())).await)
            }
            Action::WriteLease(write) => {
                let current = s.write_base(write.step).cloned();
                let desired = write.desired(current.as_ref(), &me, duration, Timestamp::now());
                let renew_time = desired.spec.as_ref().and_then(|s| s.renew_time.clone());
                let sent = Instant::now();
                let timeout = write.bound.at(sent);
                let leases = self.leases.clone();
                let written = leases.write(current.as_ref(), desired, timeout);
                let result = self.showing_role_meanwhile(written).await;
                Outcome::LeaseWritten {
                    write,
                    sent,
                    renew_time,
                    result,
                }
            }
            Action::HandOver(handover) => {
                let current = s.lease.object.clone()?;
                let desired = handover.desired(&current, duration, Timestamp::now());
                let sent = Instant::now();
                let timeout = handover.bound.at(sent);
                let result = self.leases.write(Some(&current), desired, timeout).await;
                Outcome::HandedOver {
                    handover,
                    sent,
                    result,
                }
            }
            Action::PointService { until, bound } => {
                let now = Instant::now();
                let endpoints = self.service_endpoints.as_ref()?;
                let pod = s.pod().filter(|_| now < until)?;
                Outcome::ServicePointed(endpoints.point_at(pod, bound.at(now)).await)
            }
            Action::Promote {
                version,
                until,
                bound,
            } => {
                let timeout = bound.at(Instant::now());
                let demoted = self.labeller.demote_others(&me, timeout).await;
                // Still holder right before the write (rule 5).
                let label = if demoted.is_ok() && Instant::now() < until {
                    self.label(Role::Active, version.clone(), bound).await
                } else {
                    Ok(Labelled::NotSent)
                };
                Outcome::Promoted {
                    demoted,
                    version,
                    label,
                }
            }
            Action::CountGroup { bound } => {
                let timeout = bound.at(Instant::now());
                Outcome::GroupCounted(self.labeller.count_others(&me, timeout).await)
            }
            Action::CheckHolder { holder, bound } => {
                let timeout = bound.at(Instant::now());
                let result = self.labeller.group_member(&holder, timeout).await;
                Outcome::HolderChecked { holder, result }
            }
            Action::PublishHealth {
                healthy,
                last_failure,
                bound,
            } => {
                let wall = Timestamp::now();
                let patch = controls::app_healthy_patch(healthy, last_failure.as_deref(), wall);
                let timeout = bound.at(Instant::now());
                let result = self
                    .labeller
                    .set_health_condition(&me, patch, timeout)
                    .await
                    .map(Box::new);
                Outcome::HealthPublished { healthy, result }
            }
        })
    }

    /// Awaits `call`, showing the role again whenever the holder's deadline
    /// passes meanwhile: a renewal may outlast it (`State::renewal_bound`),
    /// and what we show must not wait for it (rule 5).
    async fn showing_role_meanwhile<T>(&mut self, call: impl Future<Output = T>) -> T {
        let mut call = pin!(call);
        loop {
            let deadline = self.state.leading_until().filter(|d| *d > Instant::now());
            tokio::select! {
                result = &mut call => return result,
                () = sleep_until(deadline) => self.show_role(Instant::now()).await,
            }
        }
    }

    /// Sets our own role label; a promotion carries our Pod's version.
    async fn label(
        &self,
        role: Role,
        version: Option<String>,
        bound: CallBound,
    ) -> Result<Labelled, LabelError> {
        let timeout = bound.at(Instant::now());
        let me = self.state.me();
        let patched = self.labeller.set(me, role, version.as_deref(), timeout);
        Ok(match patched.await? {
            Some(pod) => Labelled::Pod(Box::new(pod)),
            None => Labelled::Gone,
        })
    }
}

type GroupEvents = BoxStream<'static, Result<watcher::Event<Pod>, watcher::Error>>;

/// The next event of the group watch; pending while there is none.
async fn next_group_event(
    events: &mut Option<GroupEvents>,
) -> Option<Result<watcher::Event<Pod>, watcher::Error>> {
    match events {
        Some(events) => events.next().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}
