//! What a call's outcome changes, and what must be said about it: back-off
//! on failure (with the jitter the driver draws), a re-read on conflict, the
//! bookkeeping of the Lease, the label, the switchover and the endpoint.

use std::time::Instant;

use k8s_openapi::{
    api::{coordination::v1::Lease, core::v1::Pod},
    apimachinery::pkg::apis::meta::v1::MicroTime,
};

use super::{Handover, LeaseWrite, Notice, Phase, REFUSED_RETRY_BASE, decide::op, state::State};
use crate::{
    backoff,
    contract::Role,
    election::{LeaseView, Step, WriteError},
    endpoints::{EndpointError, Pointed},
    labels::{LabelError, Membership},
    telemetry::ErrorChain,
};

/// What a role label patch did.
#[derive(Debug, Clone)]
pub enum Labelled {
    /// Patched: the pod as it now is.
    Pod(Box<Pod>),
    /// The pod is gone (404).
    Gone,
    /// Not sent: no longer holder right before the write.
    NotSent,
}

/// The result of carrying out an [`super::Action`].
#[derive(Debug)]
pub enum Outcome {
    LabelledPassive(Result<Labelled, LabelError>),
    LeaseRead(Result<Option<Lease>, WriteError>),
    LeaseWritten {
        write: LeaseWrite,
        /// When the write was sent: leadership runs from then (rule 5).
        sent: Instant,
        /// The `renewTime` it carried: a renewal that got no answer is
        /// known by it if it is later seen to have landed.
        renew_time: Option<MicroTime>,
        result: Result<Lease, WriteError>,
    },
    HandedOver {
        handover: Handover,
        sent: Instant,
        result: Result<Lease, WriteError>,
    },
    ServicePointed(Result<Pointed, EndpointError>),
    Promoted {
        /// The stale active pods labelled passive first; an error ends
        /// the promotion there.
        demoted: Result<Vec<String>, LabelError>,
        /// Our Pod's version the promotion was conditional on.
        version: Option<String>,
        label: Result<Labelled, LabelError>,
    },
    GroupCounted(Result<usize, LabelError>),
    HolderChecked {
        holder: String,
        result: Result<Membership, LabelError>,
    },
    HealthPublished {
        healthy: bool,
        result: Result<Box<Pod>, LabelError>,
    },
    HealthAdopted(bool),
    RoleAdopted(Role),
}

/// Why an action failed, for back-off and logs.
#[derive(Debug, thiserror::Error)]
pub(super) enum ActionError {
    #[error(transparent)]
    Lease(#[from] WriteError),
    #[error(transparent)]
    Label(#[from] LabelError),
}

impl ActionError {
    /// The API server gave no answer (a timeout, no connection) or could
    /// not serve it (5xx, 429), as opposed to refusing the call.
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

/// The operation's name, in logs and `baton_api_errors_total`.
pub fn step_name(step: Step) -> &'static str {
    match step {
        Step::Read => "read lease",
        Step::Create => "create lease",
        Step::Acquire => "acquire lease",
        Step::Renew => "renew lease",
        Step::Release => "release lease",
        Step::WaitUntil(_) => "wait",
    }
}

/// Records `outcome`, arrived at `now`; `jitter` (0..1) spreads back-offs.
pub fn settle(s: &mut State, outcome: Outcome, now: Instant, jitter: f64) -> Vec<Notice> {
    let mut n = Vec::new();
    let call = |s: &mut State, op, r: Result<(), ActionError>, n: &mut Vec<Notice>| {
        s.settle_call(op, false, r, now, jitter, n);
    };
    match outcome {
        Outcome::LabelledPassive(result) => {
            let result = s.labelled(Role::Passive, None, result, now, &mut n);
            s.note_passive_label(&result, &mut n);
            call(s, op::LABEL_PASSIVE, result, &mut n);
        }
        Outcome::LeaseRead(result) => {
            let result = result.map(|l| s.observe_lease(l.as_ref(), now, &mut n));
            call(s, step_name(Step::Read), result.map_err(Into::into), &mut n);
        }
        Outcome::LeaseWritten {
            write,
            sent,
            renew_time,
            result,
        } => {
            if write.step == Step::Renew {
                s.lease.unanswered_renewal = match (&result, renew_time) {
                    (Err(WriteError::Timeout { .. }), Some(t)) => Some((sent, t)),
                    _ => None,
                };
            }
            let result = result.map(|l| s.written(&write, sent, &l, now, &mut n));
            let op = step_name(write.step);
            s.settle_call(op, true, result.map_err(Into::into), now, jitter, &mut n);
        }
        Outcome::HandedOver {
            handover,
            sent,
            result,
        } => {
            // Landed, the handover ended our lead; refused, we still lead.
            s.controls.handover_sending = false;
            let result = result.map(|l| s.handed_over(handover, sent, &l, now, &mut n));
            call(s, op::HAND_OVER, result.map_err(Into::into), &mut n);
        }
        Outcome::ServicePointed(result) => s.settle_endpoint(result, now, jitter, &mut n),
        Outcome::Promoted {
            demoted,
            version,
            label,
        } => {
            let result = match demoted {
                Ok(demoted) => {
                    n.extend(demoted.into_iter().map(|pod| Notice::Demoted { pod }));
                    s.labelled(Role::Active, version, label, now, &mut n)
                }
                Err(e) => Err(e.into()),
            };
            call(s, op::PROMOTE, result, &mut n);
        }
        Outcome::GroupCounted(result) => {
            let result = result.map(|count| {
                if count == 0 {
                    n.push(Notice::NoStandby);
                }
                if let Phase::GivenUp { drain: Some(d), .. } = &mut s.life.phase {
                    d.standbys = Some(count);
                }
            });
            call(s, op::COUNT_GROUP, result.map_err(Into::into), &mut n);
        }
        Outcome::HolderChecked { holder, result } => {
            let result = result.map(|m| s.lease.holder_pod = Some((holder, m)));
            call(s, op::CHECK_HOLDER, result.map_err(Into::into), &mut n);
        }
        Outcome::HealthPublished { healthy, result } => {
            s.settle_health(healthy, result, now, jitter, &mut n);
        }
        Outcome::HealthAdopted(healthy) => s.controls.health_published = Some(healthy),
        Outcome::RoleAdopted(role) => s.on_role(role, &mut n),
    }
    n
}

impl State {
    /// A call's result: back-off on failure, re-read on conflict.
    fn settle_call(
        &mut self,
        operation: &'static str,
        lease_write: bool,
        result: Result<(), ActionError>,
        now: Instant,
        jitter: f64,
        n: &mut Vec<Notice>,
    ) {
        match &result {
            // A conflict may be our own renewal that landed unanswered: it
            // says nothing of whether we are cut off; the re-read decides
            // (a Lease that names another pod ends rule 7's exception).
            Err(ActionError::Lease(WriteError::Conflict { .. })) => {}
            Err(e) => self.api.out_of_reach = e.unanswered(),
            // Reads and other calls say nothing of whether we still hold it.
            Ok(()) if lease_write => self.api.out_of_reach = false,
            Ok(()) => {}
        }
        match result {
            Ok(()) => {
                self.api_answered(n);
                self.api.retry_at = None;
            }
            // Only a promotion: a refused passive label is a lasting
            // misconfiguration (the policies' role values), an API error.
            Err(ActionError::Label(
                e @ LabelError::Refused {
                    role: Role::Active, ..
                },
            )) => {
                // The Lease-holder policy judges by a cached Lease that may
                // lag the write that made us holder: try again soon, backing
                // off from a short base in case the refusal lasts.
                n.push(Notice::PromotionRefused);
                self.api.refused += 1;
                if self.api.refused == 1 {
                    let error = e.to_string();
                    n.push(Notice::LabelRefused { operation, error });
                }
                let retry = self.settings.retry_period;
                let wait = backoff::delay(REFUSED_RETRY_BASE, retry, self.api.refused, jitter);
                self.api.retry_at = Some(now + wait);
            }
            Err(ActionError::Lease(e)) if e.needs_read() => {
                let error = e.to_string();
                n.push(Notice::ReRead { operation, error });
                self.lease.view = LeaseView::Unknown;
                // Unanswered is an API failure too: without a back-off a
                // hung API server would be asked again at once, forever.
                if matches!(e, WriteError::Timeout { .. }) {
                    self.back_off(operation, &e, now, jitter, n);
                }
            }
            Err(ActionError::Label(e @ LabelError::Conflict { .. })) => {
                let error = e.to_string();
                n.push(Notice::PodChanged { operation, error });
            }
            Err(e) => self.back_off(operation, &e, now, jitter, n),
        }
    }

    /// A failed API call: counted, said once per outage, retried after a
    /// back-off; during a shutdown it ends the handover.
    fn back_off(
        &mut self,
        operation: &'static str,
        error: &dyn std::error::Error,
        now: Instant,
        jitter: f64,
        n: &mut Vec<Notice>,
    ) {
        n.push(Notice::ApiError(operation));
        let failures = self.api_failed(operation, error, n);
        if let Phase::ShuttingDown { deadline, .. } = &mut self.life.phase {
            *deadline = now;
            return;
        }
        let retry = self.settings.retry_period;
        let cap = if self.leading(now) { retry } else { retry * 4 };
        let wait = backoff::delay(retry / 2, cap, failures, jitter);
        self.api.retry_at = Some(now + wait);
    }

    /// A failed health condition holds up nothing else: it is retried on
    /// its own back-off and said once per streak.
    fn settle_health(
        &mut self,
        healthy: bool,
        result: Result<Box<Pod>, LabelError>,
        now: Instant,
        jitter: f64,
        n: &mut Vec<Notice>,
    ) {
        let c = &mut self.controls;
        match result {
            Ok(pod) => {
                c.health_published = Some(healthy);
                c.health_retry_at = None;
                if let Some(failed_attempts) = c.health_failures.succeeded() {
                    n.push(Notice::HealthConditionLanded { failed_attempts });
                }
                self.observe_pod(*pod, now, n);
            }
            Err(error) => {
                n.push(Notice::ApiError(op::SET_HEALTH));
                if c.health_failures.failed() {
                    let error = ErrorChain(&error).to_string();
                    n.push(Notice::HealthConditionFailing { error });
                }
                let retry = self.settings.retry_period;
                let failures = c.health_failures.count();
                let wait = backoff::delay(retry / 2, retry * 4, failures, jitter);
                c.health_retry_at = Some(now + wait);
            }
        }
    }

    /// Rule 9's outcome. A failure does not hold up the labels: it is
    /// retried on its own back-off, said once per streak, and a
    /// misconfigured Service is said once in a Warning Event.
    fn settle_endpoint(
        &mut self,
        result: Result<Pointed, EndpointError>,
        now: Instant,
        jitter: f64,
        n: &mut Vec<Notice>,
    ) {
        let e = &mut self.endpoint;
        let error = match result {
            Ok(pointed) => {
                e.current = true;
                e.retry_at = None;
                e.problem_said = None;
                if let Some(failed_attempts) = e.failures.succeeded() {
                    n.push(Notice::EndpointLanded { failed_attempts });
                }
                if pointed == Pointed::Written {
                    n.push(Notice::EndpointWritten);
                }
                return;
            }
            Err(error @ EndpointError::Conflict { .. }) => {
                let error = error.to_string();
                n.push(Notice::EndpointConflict { error });
                return;
            }
            Err(error) => error,
        };
        let base = if let EndpointError::Refused { .. } = error {
            // As a refused promotion: the policy's cached Lease lags ours.
            n.push(Notice::PromotionRefused);
            e.failures.failed();
            REFUSED_RETRY_BASE
        } else {
            n.push(Notice::ApiError(op::POINT_SERVICE));
            if e.failures.failed() {
                let error = ErrorChain(&error).to_string();
                n.push(Notice::EndpointFailing { error });
            }
            self.settings.retry_period / 2
        };
        let message = error.to_string();
        if error.is_misconfiguration() && e.problem_said.as_ref() != Some(&message) {
            if self.own.pod.is_some() {
                n.push(Notice::event(true, "ServiceNotWritten", message.clone()));
            }
            e.problem_said = Some(message);
        }
        let retry = self.settings.retry_period;
        let wait = backoff::delay(base, retry, e.failures.count(), jitter);
        e.retry_at = Some(now + wait);
    }
}
