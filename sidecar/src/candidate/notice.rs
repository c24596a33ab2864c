//! What the core asks to be said: a log line, an Event about our Pod, or a
//! count. The driver says it (`say.rs`); tests read it as plain data.

use std::time::Duration;

use crate::contract::Role;

/// One thing to say, once, where the core decided it is news.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// An Event regarding our Pod.
    Event {
        warning: bool,
        reason: &'static str,
        note: String,
    },
    /// `baton_api_errors_total{operation}`.
    ApiError(&'static str),
    /// `baton_promotions_refused_total`.
    PromotionRefused,
    /// `baton_switchovers_total{result}`.
    Switchover(&'static str),
    /// `baton_handover_duration_seconds`.
    HandoverTook(Duration),
    /// The first failed call of an outage (logged once).
    ApiFailing {
        operation: &'static str,
        error: String,
    },
    /// A renewal that got no answer was seen landed: it counts from when it
    /// was sent (rule 5).
    RenewalLandedLate,
    /// The first call that answered after an outage.
    ApiRecovered {
        failed_calls: u32,
    },
    ProbeStopped,
    ShutdownRequested,
    PodDeleted,
    PodTerminating,
    /// A paused holder's app failed: it keeps the Lease (rule 10).
    UnhealthyWhilePaused {
        why: String,
    },
    /// The Lease is held by a stranger (Some), or no longer (None).
    Stranger(Option<String>),
    /// The group was paused (true) or resumed (false).
    GroupPaused(bool),
    InvalidControl(String),
    /// Every standby runs on this node with the holder (Some), or no longer.
    GroupOnOneNode(Option<String>),
    /// The group's pods belong to these workloads (Some), or to one again.
    GroupOwners(Option<Vec<String>>),
    /// The group watch fails (the first of a streak), or lists again.
    GroupWatchFailing {
        error: String,
    },
    GroupWatchLanded {
        failed_attempts: u32,
    },
    /// A deleted holder alone in its group: nothing to drain for (rule 8).
    NoStandby,
    PassiveLabelFailing {
        error: String,
    },
    PassiveLabelLanded {
        failed_attempts: u32,
    },
    LabelRefused {
        operation: &'static str,
        error: String,
    },
    /// A Lease write needs a re-read (conflict, or a timeout).
    ReRead {
        operation: &'static str,
        error: String,
    },
    /// Our Pod changed since it was read: deciding again (rule 3).
    PodChanged {
        operation: &'static str,
        error: String,
    },
    SwitchoverNotTaken {
        reason: String,
    },
    Released,
    Acquired {
        transitions: i32,
    },
    HandingOver {
        reason: String,
    },
    HealthConditionLanded {
        failed_attempts: u32,
    },
    HealthConditionFailing {
        error: String,
    },
    EndpointLanded {
        failed_attempts: u32,
    },
    EndpointWritten,
    EndpointConflict {
        error: String,
    },
    EndpointFailing {
        error: String,
    },
    /// A stale active pod labelled passive by the new holder (rule 3).
    Demoted {
        pod: String,
    },
    LabelAdmitted {
        refused: u32,
    },
    /// Our role changed: what the label now says.
    Labelled {
        role: Role,
        transitions: i32,
        holder: String,
    },
    /// Another pod took the Lease while we drain (rule 8).
    TakenOver {
        holder: Option<String>,
    },
}

impl Notice {
    pub fn event(warning: bool, reason: &'static str, note: String) -> Notice {
        Notice::Event {
            warning,
            reason,
            note,
        }
    }

    /// The reason, if this is an Event.
    #[cfg(test)]
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            Notice::Event { reason, .. } => Some(reason),
            _ => None,
        }
    }
}
