//! What the candidate knows, in small named parts, and the simple facts
//! that follow from it (what follows for the lead and the Lease is in
//! `lead.rs`). Plain data: no handle, no clock, no `.await`.

use std::{collections::BTreeMap, time::Instant};

use k8s_openapi::{
    api::{coordination::v1::Lease, core::v1::Pod},
    apimachinery::pkg::apis::meta::v1::MicroTime,
};

use super::Phase;
use crate::{
    backoff::{ApiState, Streak},
    contract::Role,
    contract::census::Census,
    contract::controls::{self, CORDONED, PAUSED, Target},
    contract::role_labels::RoleLabels,
    election::{self, LeaseView, Observed},
    labels::Membership,
    probe::Health,
    relisted::Relisted,
    settings::Settings,
};

/// Everything the loop knows. The driver feeds it events and outcomes with
/// the instant they arrived at, and carries out what [`super::decide`] asks.
#[derive(Debug, Clone)]
pub struct State {
    pub settings: Settings,
    pub labels: RoleLabels,
    /// The group's Lease, by name.
    pub lease_name: String,
    /// The app's health as last handed in by the probe task.
    pub health: Health,
    pub lease: LeaseKnowledge,
    pub own: OwnPod,
    pub life: Lifecycle,
    pub api: ApiHealth,
    pub endpoint: Endpoint,
    pub controls: Controls,
    pub group: GroupView,
    pub said: Said,
}

/// What is known of the Lease.
#[derive(Debug, Clone)]
pub struct LeaseKnowledge {
    pub view: LeaseView,
    /// The Lease as last observed, kept while `view` is `Unknown`.
    pub last_observed: Option<Observed>,
    /// The Lease object as last read or written: the base of the next replace.
    pub object: Option<Lease>,
    /// When our last successful write was sent (rule 5).
    pub last_renew_sent: Option<Instant>,
    /// Our last renewal, if it got no answer: when it was sent and the
    /// `renewTime` it carried. Seen landed later, it counts from when it was
    /// sent, as an answered one does (rule 5).
    pub unanswered_renewal: Option<(Instant, MicroTime)>,
    /// Lease events seen since the watch (re)listed.
    pub listed: bool,
    /// The Lease's holder (not us) as a pod, checked once per holder.
    pub holder_pod: Option<(String, Membership)>,
    /// The holder as last seen and the resourceVersion it was first seen
    /// with: a later version under the same holder means it renews.
    pub holder_since: Option<(String, String)>,
}

impl Default for LeaseKnowledge {
    fn default() -> Self {
        LeaseKnowledge {
            view: LeaseView::Unknown,
            last_observed: None,
            object: None,
            last_renew_sent: None,
            unanswered_renewal: None,
            listed: false,
            holder_pod: None,
            holder_since: None,
        }
    }
}

/// What is known of our own Pod, and the role decided for it.
#[derive(Debug, Clone, Default)]
pub struct OwnPod {
    /// As last seen; None before the first list or once deleted.
    pub pod: Option<Pod>,
    pub deleted: bool,
    /// The resourceVersion a promotion conflicted with (409): promote again
    /// only once the watch shows a newer one (rule 3).
    pub conflicted_version: Option<String>,
    /// The role this process decided (labelled, or adopted from the label).
    pub role: Option<Role>,
}

/// Where the pod is on its way out (rules 6 and 8).
#[derive(Debug, Clone, Default)]
pub struct Lifecycle {
    pub phase: Phase,
    /// When a holder began handing over, for the handover histogram.
    pub handover_started: Option<Instant>,
}

/// Whether the API server answers, and when to call it again.
#[derive(Debug, Clone, Default)]
pub struct ApiHealth {
    /// Whether calls fail, and how many in a row.
    pub calls: ApiState,
    /// The last failed call got no answer (timeout, no connection) and no
    /// Lease write has landed since: rule 7's exception.
    pub out_of_reach: bool,
    /// Consecutive labels refused at admission.
    pub refused: u32,
    /// Failed attempts to label ourselves passive, logged per streak.
    pub passive_label_failures: Streak,
    /// No call before this instant (a back-off).
    pub retry_at: Option<Instant>,
}

/// Rule 9: the Service whose one endpoint the holder writes, if any.
#[derive(Debug, Clone, Default)]
pub struct Endpoint {
    pub service: Option<String>,
    /// Whether the Service's slice names us since we last became holder.
    pub current: bool,
    pub retry_at: Option<Instant>,
    pub failures: Streak,
    /// The misconfiguration last said in a Warning Event, said once.
    pub problem_said: Option<String>,
}

/// Rule 10: switchovers, cordon, pause and the app-healthy condition.
#[derive(Debug, Clone, Default)]
pub struct Controls {
    /// Our switchover in flight, or just ended.
    pub handing_over: Option<HandingOver>,
    /// The handover's write is being sent: everything we show (and serve,
    /// through the proxy, rule 11) says passive from before the write, so
    /// that nothing of this holder outlives the Lease it hands on.
    pub handover_sending: bool,
    /// A cordoned holder whose handover nobody took tries again then.
    pub handover_retry_at: Option<Instant>,
    /// Whether the group was paused when last said.
    pub paused_said: Option<bool>,
    /// The invalid control annotation last said, said once.
    pub problem_said: Option<String>,
    /// Keep our Pod's app-healthy condition.
    pub health_condition: bool,
    pub health_retry_at: Option<Instant>,
    pub health_failures: Streak,
    /// The verdict this process last wrote to that condition.
    pub health_published: Option<bool>,
}

/// The holder's view of its group's pods, from a watch that runs only
/// while it holds the Lease, and what it last said about them.
#[derive(Debug, Clone, Default)]
pub struct GroupView {
    /// The pods as the watch last listed and followed them; no table while
    /// not watching, or before its first list is complete.
    pub pods: Relisted<Pod>,
    /// The census of `pods`, as of the last turn.
    pub census: Option<Census>,
    /// The node said to hold every standby, while that is so.
    pub one_node_said: Option<String>,
    /// The owners said to share the group, while there are several.
    pub owners_said: Option<Vec<String>>,
    /// Failed events of the watch, said once per streak.
    pub watch_failures: Streak,
}

/// A switchover we started: the Lease version we wrote, whom it hands the
/// role to, and when we take it back if nobody has taken it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandingOver {
    pub version: String,
    pub target: Target,
    pub began: Instant,
    pub until: Instant,
}

/// What was said once and must not be said again until it changes.
#[derive(Debug, Clone, Default)]
pub struct Said {
    pub was_healthy: bool,
    /// Why no pod of the group can hold the Lease, while that is so.
    pub stranger: Option<String>,
    pub stranger_event_sent: bool,
}

/// The bound of one API call: `cap`, and no later than `deadline`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallBound {
    pub cap: std::time::Duration,
    pub deadline: Option<Instant>,
}

impl CallBound {
    /// The timeout of a call started at `now`.
    pub fn at(&self, now: Instant) -> std::time::Duration {
        match self.deadline {
            Some(d) => self.cap.min(d.saturating_duration_since(now)),
            None => self.cap,
        }
    }
}

impl State {
    pub fn new(settings: Settings, labels: RoleLabels, lease_name: String) -> Self {
        State {
            settings,
            labels,
            lease_name,
            health: Health::default(),
            lease: LeaseKnowledge::default(),
            own: OwnPod::default(),
            life: Lifecycle::default(),
            api: ApiHealth::default(),
            endpoint: Endpoint::default(),
            controls: Controls::default(),
            group: GroupView::default(),
            said: Said::default(),
        }
    }

    pub fn me(&self) -> &str {
        &self.settings.pod_name
    }

    pub fn pod(&self) -> Option<&Pod> {
        self.own.pod.as_ref()
    }

    /// Our Pod as last seen is the version a promotion conflicted with.
    pub fn pod_seen_stale(&self) -> bool {
        is_stale(self.pod(), self.own.conflicted_version.as_deref())
    }

    /// Until when we may act as holder (`docs/design.md`, rule 5).
    pub fn leading_until(&self) -> Option<Instant> {
        election::leading_until(
            &self.lease.view,
            self.lease.last_observed.as_ref(),
            self.me(),
            self.lease.last_renew_sent,
            self.settings.renew_deadline,
        )
    }

    pub fn leading(&self, now: Instant) -> bool {
        self.leading_until().is_some_and(|until| now < until)
    }

    /// Whether the driver should keep a watch on the group's pods: only
    /// the holder looks at them together, and only while it holds the
    /// Lease and is not on its way out. The Lease as last observed, so
    /// that a re-read (the view `Unknown` for one call) does not restart
    /// the watch and its list.
    pub fn wants_group_view(&self) -> bool {
        let observed = self.lease.last_observed.as_ref();
        !self.terminating() && observed.and_then(|o| o.holder.as_deref()) == Some(self.me())
    }

    pub fn terminating(&self) -> bool {
        self.life.phase.gave_up().is_some()
    }

    pub fn shutting_down(&self) -> bool {
        matches!(self.life.phase, Phase::ShuttingDown { .. })
    }

    /// When a shutdown stops trying to hand over and exits.
    pub fn shutdown_deadline(&self) -> Option<Instant> {
        match self.life.phase {
            Phase::ShuttingDown { deadline, .. } => Some(deadline),
            _ => None,
        }
    }

    /// May hold the Lease: the app is healthy, or the group is paused and
    /// we hold it (rule 10), and the pod is not on its way out.
    pub fn eligible(&self) -> bool {
        let app_ok = self.health.healthy || (self.paused() && self.holder() == Some(self.me()));
        app_ok && !self.terminating()
    }

    /// May also take the Lease: eligible and not cordoned (rule 10).
    pub fn may_take(&self) -> bool {
        self.eligible() && !self.cordoned()
    }

    /// Our Pod carries `baton.dev/cordoned=true`.
    pub fn cordoned(&self) -> bool {
        self.pod()
            .is_some_and(|p| controls::flag(p.metadata.annotations.as_ref(), CORDONED) == Ok(true))
    }

    pub fn lease_annotations(&self) -> Option<&BTreeMap<String, String>> {
        self.lease
            .object
            .as_ref()
            .and_then(|l| l.metadata.annotations.as_ref())
    }

    /// The group's Lease carries `baton.dev/paused=true`.
    pub fn paused(&self) -> bool {
        controls::flag(self.lease_annotations(), PAUSED) == Ok(true)
    }

    /// The switchover asked for on the Lease, if any (and valid).
    pub fn switchover_request(&self) -> Option<Target> {
        controls::switchover_target(self.lease_annotations())
            .ok()
            .flatten()
    }

    /// The Lease names us because a switchover hands it to us.
    pub fn offered(&self) -> bool {
        matches!(self.switchover_request(), Some(Target::Pod(p)) if p == self.me())
            && self.holder() == Some(self.me())
    }
}

/// Whether our Pod as last seen is the version a promotion conflicted with.
pub fn is_stale(pod: Option<&Pod>, conflicted_version: Option<&str>) -> bool {
    conflicted_version.is_some()
        && pod.and_then(|p| p.metadata.resource_version.as_deref()) == conflicted_version
}
