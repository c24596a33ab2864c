//! How the driver says things: notices into logs, Events and metrics, and
//! what the core knows into `/status`, the role gauges and the role file.

use std::time::Instant;

use k8s_openapi::jiff::Timestamp;
use tracing::{debug, info, warn};

use super::{Notice, driver::Candidate, state::State};
use crate::{
    contract::{Role, Status},
    election::LeaseView,
    rolefile::{self, RoleRecord},
};

/// `/status` as of `now`, but for `last_change` (wall time, the driver's).
pub fn status(s: &State, now: Instant) -> Status {
    Status {
        pod: s.settings.pod_name.clone(),
        namespace: s.settings.pod_namespace.clone(),
        pod_ip: s.settings.pod_ip.clone(),
        lease: s.lease_name.clone(),
        role: s.outward_role(now),
        serves: s.serves(now),
        label_role: s.label_role(),
        holder: s.holder().map(str::to_owned),
        lease_problem: s.said.stranger.clone(),
        app_healthy: s.health.healthy,
        app_last_failure: s.health.last_failure.clone(),
        lease_transitions: s.transitions(),
        api_reachable: s.api.calls.reachable(),
        last_change: None,
        terminating: s.terminating(),
        draining: s.draining(now),
        paused: s.paused(),
        cordoned: s.cordoned(),
        switchover: s.switchover_request().map(|t| t.to_string()),
        ..group_status(s)
    }
}

/// The census fields of `/status`: the holder's, empty on the others.
fn group_status(s: &State) -> Status {
    let Some(c) = &s.group.census else {
        return Status::default();
    };
    Status {
        group_pods: Some(c.pods),
        group_nodes: c.nodes.iter().cloned().collect(),
        standbys_on_own_node: c.standbys_on_holder_node,
        group_owners: c.owner_names(),
        group_warnings: c.warnings(&s.labels.group),
        ..Status::default()
    }
}

impl Candidate {
    /// Logs, Events and counts, as the core asked.
    pub(super) fn say(&self, notices: Vec<Notice>) {
        let lease = self.state.lease_name.as_str();
        let service = self.state.endpoint.service.as_deref().unwrap_or_default();
        for notice in notices {
            match notice {
                Notice::Event {
                    warning,
                    reason,
                    note,
                } => {
                    if let Some(pod) = self.state.pod() {
                        self.events.publish(pod, warning, reason, note);
                    }
                }
                Notice::ApiError(operation) => self.metrics.api_error(operation),
                Notice::PromotionRefused => self.metrics.promotion_refused(),
                Notice::Switchover(result) => self.metrics.switchover(result),
                Notice::HandoverTook(took) => self.metrics.observe_handover(took),
                Notice::ApiFailing { operation, error } => warn!(
                    operation,
                    %error,
                    "Kubernetes API call failed; retrying with back-off (logged again when it recovers)"
                ),
                Notice::ApiRecovered { failed_calls } => {
                    info!(failed_calls, "Kubernetes API reachable again")
                }
                Notice::RenewalLandedLate => debug!(
                    "a renewal that timed out had landed; the lead counts from when it was sent"
                ),
                Notice::ProbeStopped => warn!("probe stopped; handing over"),
                Notice::ShutdownRequested => info!("shutdown requested; handing over"),
                Notice::PodDeleted => info!("pod deleted; handing over"),
                Notice::PodTerminating => info!("pod terminating; handing over"),
                Notice::UnhealthyWhilePaused { why } => {
                    warn!(%why, "app failed its probe; the group is paused: keeping the lease")
                }
                Notice::Stranger(Some(problem)) => {
                    warn!(%problem, "the lease is held by a stranger")
                }
                Notice::Stranger(None) => {
                    info!(%lease, "the lease is no longer held by a stranger")
                }
                Notice::GroupPaused(true) => {
                    info!(%lease, "group paused: a failing app is reported, not failed over")
                }
                Notice::GroupPaused(false) => {
                    info!(%lease, "group resumed: automatic failover is back")
                }
                Notice::InvalidControl(problem) => warn!(%problem, "invalid control annotation"),
                Notice::GroupOnOneNode(Some(node)) => warn!(
                    %node,
                    "every standby of the group runs on the holder's node: a failure of that node takes the whole group"
                ),
                Notice::GroupOnOneNode(None) => {
                    info!("the group's standbys no longer all run on the holder's node")
                }
                Notice::GroupOwners(Some(owners)) => warn!(
                    owners = %owners.join(", "),
                    "the group's pods belong to several workloads, which share one Lease and one active pod"
                ),
                Notice::GroupOwners(None) => {
                    info!("the group's pods no longer belong to several workloads")
                }
                Notice::GroupWatchFailing { error } => warn!(
                    %error,
                    "cannot watch the group's pods; whether they share a node or a workload is not reported (retrying; logged again when it works)"
                ),
                Notice::GroupWatchLanded { failed_attempts } => {
                    info!(failed_attempts, "watching the group's pods again")
                }
                Notice::NoStandby => {
                    info!("no other pod in the group to take over; the app stops without a drain")
                }
                Notice::PassiveLabelFailing { error } => warn!(
                    %error,
                    "cannot label this pod passive; /status, metrics and the role file say passive, \
                     the label stays until the API server takes it (retrying; logged again when it does)"
                ),
                Notice::PassiveLabelLanded { failed_attempts } => {
                    info!(failed_attempts, "labelled passive at last")
                }
                Notice::LabelRefused { operation, error } => info!(
                    operation,
                    %error,
                    "label refused at admission; retrying (logged again when admitted)"
                ),
                Notice::ReRead { operation, error } => {
                    debug!(operation, %error, "re-reading the lease")
                }
                Notice::PodChanged { operation, error } => {
                    debug!(operation, %error, "pod changed; deciding again")
                }
                Notice::SwitchoverNotTaken { reason } => {
                    warn!(%reason, "switchover not taken; keeping the role")
                }
                Notice::Released => info!(%lease, "released the lease"),
                Notice::Acquired { transitions } => {
                    info!(%lease, transitions, "acquired the lease")
                }
                Notice::HandingOver { reason } => info!(%lease, %reason, "handing over"),
                Notice::HealthConditionLanded { failed_attempts } => {
                    info!(failed_attempts, "app-healthy condition set at last")
                }
                Notice::HealthConditionFailing { error } => warn!(
                    %error,
                    "cannot set this pod's app-healthy condition (retrying; logged again when it lands)"
                ),
                Notice::EndpointLanded { failed_attempts } => info!(
                    %service,
                    failed_attempts,
                    "the Service's endpoint written at last"
                ),
                Notice::EndpointWritten => info!(%service, "made this pod the Service's endpoint"),
                Notice::EndpointConflict { error } => debug!(%error, "deciding again"),
                Notice::EndpointFailing { error } => warn!(
                    %error,
                    "cannot make this pod the Service's endpoint; clients still reach the previous one (retrying; logged again when it lands)"
                ),
                Notice::Demoted { pod } => info!(%pod, "demoted a stale active pod"),
                Notice::LabelAdmitted { refused } => info!(refused, "label admitted"),
                Notice::Labelled {
                    role: Role::Active,
                    transitions,
                    ..
                } => info!(%lease, transitions, "labelled active"),
                Notice::Labelled {
                    role: Role::Passive,
                    holder,
                    ..
                } => info!(%lease, %holder, "labelled passive"),
                Notice::TakenOver { holder } => info!(
                    ?holder,
                    drain = ?self.state.settings.handover_drain,
                    "another pod took the Lease; the app serves on while kube-proxy moves to it"
                ),
            }
        }
    }

    /// What we show outside, `/status`, metrics and the role file, in step
    /// with what we know at `now`.
    pub(super) async fn show_role(&mut self, now: Instant) {
        self.sync_role_file(now).await;
        self.publish_status(now);
    }

    /// Keeps the role file in step with the outward role.
    async fn sync_role_file(&mut self, now: Instant) {
        let Some(path) = self.state.settings.role_file.clone() else {
            return;
        };
        let Some(role) = self.state.outward_role(now) else {
            return;
        };
        let record = RoleRecord {
            role,
            holder: self.state.holder(),
            lease_transitions: self.state.transitions(),
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

    /// Publishes `/status` and the gauges as of `now`.
    pub(super) fn publish_status(&self, now: Instant) {
        let s = &self.state;
        self.metrics.set_app_healthy(s.health.healthy);
        self.metrics
            .set_lease_held_by_stranger(s.said.stranger.is_some());
        if let Some(o) = &s.lease.last_observed {
            self.metrics.set_lease_transitions(o.transitions);
        }
        if let Some(paused) = s.controls.paused_said {
            self.metrics.set_group_paused(paused);
        }
        if s.lease.view != LeaseView::Unknown {
            self.metrics.set_cordoned(s.cordoned());
        }
        let census = s.group.census.as_ref();
        self.metrics.set_group_census(
            census.is_some_and(|c| c.standbys_on_holder_node),
            census.map_or(0, |c| c.owners.len()),
        );
        let next = status(s, now);
        let role = next.role;
        let mut role_changed = false;
        self.status.send_if_modified(|shown| {
            let mut next = next;
            next.last_change = shown.last_change.clone();
            if shown.role != next.role {
                next.last_change = Some(Timestamp::now().to_string());
                role_changed = true;
            }
            let changed = *shown != next;
            *shown = next;
            changed
        });
        if let (true, Some(role)) = (role_changed, role) {
            self.metrics.set_role(role == Role::Active, true);
        }
    }
}
