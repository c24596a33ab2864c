//! The one loop of the sidecar, as a pure core and a thin driver.
//!
//! The core ([`State`], [`decide`], [`settle`] and the `handle_*` methods of
//! `State`) has no handle, no clock and no `.await`: it is fed the Lease and
//! Pod watch events, the app's health and the outcome of each call, each
//! with the instant it arrived at; [`decide`] says the one thing to do next
//! (the ladder of `docs/design.md`, "The sidecar's loop"), [`settle`] what a
//! call's outcome changes, and both say what must be logged, published as
//! an Event or counted as [`Notice`]s. The driver ([`Candidate`]) owns the
//! clocks, random numbers, API clients and `.await`s: it runs each
//! [`Action`] within its bound, races SIGTERM, sleeps until an input comes
//! or the next instant a decision may change, and turns notices into logs,
//! Events, metrics, `/status` and the role file.
//!
//! "Rule N" in the comments is rule N of `docs/design.md`.

mod decide;
mod driver;
mod group;
mod lead;
mod notice;
mod observe;
mod readiness;
mod record;
mod say;
mod settle;
mod state;
#[cfg(test)]
mod tests;

use std::time::{Duration, Instant};

pub use decide::{Action, Handover, LeaseWrite, decide};
pub use driver::Candidate;
pub use notice::Notice;
pub use settle::{Labelled, Outcome, settle};
pub use state::HandingOver;

use crate::labels::Membership;

/// First wait after a label refused at admission: about one informer hop.
pub const REFUSED_RETRY_BASE: Duration = Duration::from_millis(20);

/// Longest one API call may take once shutdown is asked for: a healthy API
/// server answers in milliseconds, and a hung one must not keep kubelet
/// waiting (rule 6). The first failure ends the handover.
pub const SHUTDOWN_CALL_TIMEOUT: Duration = Duration::from_secs(1);

/// Where the pod is on its way out. It only moves forward: a candidate
/// gives up for good (rule 6), a deleted holder drains meanwhile (rule 8),
/// and SIGTERM ends any drain and bounds what is left of the handover.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Phase {
    /// Eligible whenever its app is healthy.
    #[default]
    Candidate,
    /// No longer eligible, handing over; a deleted holder drains.
    GivenUp { why: GiveUp, drain: Option<Drain> },
    /// SIGTERM: hands over until `deadline`, then exits; `why` is the first
    /// cause (a pod deletion is followed by kubelet's SIGTERM).
    ShuttingDown { why: GiveUp, deadline: Instant },
}

impl Phase {
    /// Why the pod stopped being eligible for good, if it did (rule 6).
    pub fn gave_up(&self) -> Option<GiveUp> {
        match self {
            Phase::Candidate => None,
            Phase::GivenUp { why, .. } | Phase::ShuttingDown { why, .. } => Some(*why),
        }
    }

    /// A deleted holder's drain, while it lasts or is due (rule 8).
    pub fn drain(&self) -> Option<&Drain> {
        match self {
            Phase::GivenUp { drain, .. } => drain.as_ref(),
            _ => None,
        }
    }
}

/// A deleted holder's drain (rule 8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drain {
    pub began: Instant,
    /// When another pod was first seen holding the Lease since.
    pub taken_over_at: Option<Instant>,
    /// Other pods of the group not being deleted, counted once after the
    /// release: with none, nobody can take over and there is nothing to
    /// drain for.
    pub standbys: Option<usize>,
}

/// Why a pod stopped being eligible for good (rule 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUp {
    /// SIGTERM or SIGINT (the `shutdown` future of `run`).
    Shutdown,
    /// A `deletionTimestamp` on our Pod.
    PodTerminating,
    PodDeleted,
    /// The probe task ended: health can no longer be known.
    ProbeStopped,
}

impl GiveUp {
    pub fn text(self) -> &'static str {
        match self {
            GiveUp::Shutdown => "sidecar shutting down",
            GiveUp::PodTerminating => "pod terminating",
            GiveUp::PodDeleted => "pod deleted",
            GiveUp::ProbeStopped => "app probe stopped",
        }
    }
}

/// The note of the `HandedOver` Event: the lease, and what made us give it up.
pub fn handed_over_note(lease: &str, why: GiveUp) -> String {
    format!("released lease {lease} ({})", why.text())
}

/// Why the Lease's holder is not a pod of the group, if it is not. A pod of
/// the group that no longer exists (killed with its node, say) is not a
/// stranger: it does not renew, and claims what every member claims.
pub fn stranger_reason(
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

/// Whether a watched object is newer than the one we hold. Our own writes
/// may overtake the watch; resourceVersions are opaque by contract but
/// etcd's are integers, so compare them when both parse.
pub fn is_newer(incoming: &Option<String>, held: Option<&String>) -> bool {
    match (
        incoming.as_deref().map(str::parse::<u64>),
        held.map(|h| h.parse::<u64>()),
    ) {
        (Some(Ok(a)), Some(Ok(b))) => a >= b,
        _ => true,
    }
}
