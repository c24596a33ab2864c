//! What a call that landed records: our role label, a Lease write, a
//! handover; and what each of them says.

use std::time::Instant;

use k8s_openapi::api::coordination::v1::Lease;

use super::{
    HandingOver, Handover, LeaseWrite, Notice, handed_over_note, settle::ActionError,
    settle::Labelled, state::State,
};
use crate::{contract::Role, election::Step, labels::LabelError, telemetry::ErrorChain};

impl State {
    /// Our role label patched (or not): what it changes.
    pub(super) fn labelled(
        &mut self,
        role: Role,
        version: Option<String>,
        result: Result<Labelled, LabelError>,
        now: Instant,
        n: &mut Vec<Notice>,
    ) -> Result<(), ActionError> {
        let labelled = match result {
            Ok(Labelled::NotSent) => return Ok(()),
            Ok(labelled) => labelled,
            Err(e) => {
                if matches!(e, LabelError::Conflict { .. }) {
                    self.own.conflicted_version = version;
                }
                return Err(e.into());
            }
        };
        if self.api.refused > 0 {
            n.push(Notice::LabelAdmitted {
                refused: self.api.refused,
            });
            self.api.refused = 0;
        }
        match labelled {
            Labelled::Pod(pod) => self.observe_pod(*pod, now, n),
            Labelled::Gone | Labelled::NotSent => self.own.deleted = true,
        }
        self.on_role(role, n);
        Ok(())
    }

    /// Says when our passive label starts failing and when it lands: while
    /// it fails the Service may still select this pod, though everything we
    /// show already says passive. Once per streak of this action.
    pub(super) fn note_passive_label(
        &mut self,
        result: &Result<(), ActionError>,
        n: &mut Vec<Notice>,
    ) {
        match result {
            Err(e) if self.api.passive_label_failures.failed() => {
                n.push(Notice::PassiveLabelFailing {
                    error: ErrorChain(e).to_string(),
                });
            }
            Err(_) => {}
            Ok(()) => {
                if let Some(failed_attempts) = self.api.passive_label_failures.succeeded() {
                    n.push(Notice::PassiveLabelLanded { failed_attempts });
                }
            }
        }
    }

    /// Our role changed: said in the log, and in an Event but for the first
    /// passive label of a new pod.
    pub(super) fn on_role(&mut self, role: Role, n: &mut Vec<Notice>) {
        let was = self.own.role;
        if was == Some(role) {
            return;
        }
        self.own.role = Some(role);
        let lease = &self.lease_name;
        let transitions = self.transitions();
        let holder = self.holder().unwrap_or_default().to_owned();
        n.push(Notice::Labelled {
            role,
            transitions,
            holder: holder.clone(),
        });
        if self.own.pod.is_none() || (role == Role::Passive && was != Some(Role::Active)) {
            return;
        }
        let label = self.labels.label(role);
        n.push(match role {
            Role::Active => Notice::event(
                false,
                "Promoted",
                format!("holds lease {lease} (transition {transitions}); labelled {label}"),
            ),
            Role::Passive => {
                let why = match self.holder() {
                    Some(h) if h == self.me() => format!("handing over lease {lease}"),
                    Some(_) => format!("lease {lease} held by {holder}"),
                    None => format!("lease {lease} not held"),
                };
                Notice::event(false, "Demoted", format!("{why}; labelled {label}"))
            }
        });
    }

    /// A Lease write landed.
    pub(super) fn written(
        &mut self,
        write: &LeaseWrite,
        sent: Instant,
        lease: &Lease,
        now: Instant,
        n: &mut Vec<Notice>,
    ) {
        let before = self.last_holder().map(str::to_owned);
        self.observe_lease(Some(lease), now, n);
        if write.taking_back {
            let reason = write.reason.clone().unwrap_or_default();
            n.push(Notice::SwitchoverNotTaken {
                reason: reason.clone(),
            });
            n.push(Notice::Switchover("taken_back"));
            if self.own.pod.is_some() {
                n.push(Notice::event(true, "SwitchoverFailed", reason));
            }
            // A cordoned holder, or one marked not Ready, wants to hand
            // over again at once: it waits a lease duration first.
            self.controls.handover_retry_at = Some(now + self.settings.lease_duration);
        }
        if write.step != Step::Release {
            self.controls.handing_over = None;
            self.lease.last_renew_sent = Some(sent);
            if before.as_deref() != Some(self.me()) {
                n.push(Notice::Acquired {
                    transitions: self.transitions(),
                });
            }
            return;
        }
        self.lease.last_renew_sent = None;
        n.push(Notice::Released);
        // Only a pod that gave up for good says so; an unhealthy app has had
        // its `AppUnhealthy` Event.
        if let (Some(_), Some(why)) = (&self.own.pod, self.life.phase.gave_up()) {
            let note = handed_over_note(&self.lease_name, why);
            n.push(Notice::event(false, "HandedOver", note));
        }
        // On shutdown the driver observes the handover when it is done.
        if !self.shutting_down()
            && let Some(started) = self.life.handover_started.take()
        {
            n.push(Notice::HandoverTook(now - started));
        }
    }

    /// Rule 10: the Lease handed on; we keep our label, and take the Lease
    /// back with the version we wrote if nobody has taken it by the bound.
    pub(super) fn handed_over(
        &mut self,
        handover: Handover,
        sent: Instant,
        written: &Lease,
        now: Instant,
        n: &mut Vec<Notice>,
    ) {
        self.observe_lease(Some(written), now, n);
        self.lease.last_renew_sent = None;
        self.endpoint.current = false;
        self.controls.handing_over = Some(HandingOver {
            version: written
                .metadata
                .resource_version
                .clone()
                .unwrap_or_default(),
            target: handover.target,
            began: sent,
            until: sent + self.settings.lease_duration / 2,
        });
        let reason = handover.reason;
        n.push(Notice::HandingOver {
            reason: reason.clone(),
        });
        n.push(Notice::Switchover("handed_over"));
        if self.own.pod.is_some() {
            n.push(Notice::event(false, "SwitchingOver", reason));
        }
    }
}
