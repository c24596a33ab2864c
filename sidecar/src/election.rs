//! The Lease: what a candidate should do next (pure), and the writes that
//! do it (thin). The election rules are numbered in `docs/design.md`.
//!
//! - Every write carries the `resourceVersion` that was read; a 409 means
//!   someone else wrote first, and the answer is to re-read (rule 1).
//! - Expiry is judged by the local monotonic clock: a Lease is expired when
//!   its current `resourceVersion` has been seen unchanged for its duration.
//!   `renewTime` is written for people, never compared with our clock
//!   (rule 2).
//! - Leadership is a deadline: the time the last successful renewal was
//!   sent plus the renew deadline (rule 5).

use std::time::{Duration, Instant};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::Timestamp,
};
use kube::{
    Api,
    api::{ObjectMeta, PostParams},
};

/// What a candidate knows of the Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// `holderIdentity`; None when released.
    pub holder: Option<String>,
    pub resource_version: String,
    /// The holder's own claim (`leaseDurationSeconds`), as counted: at most
    /// [`MAX_CLAIMED_DURATION_FACTOR`] times ours.
    pub duration: Duration,
    /// The claim as written.
    pub claimed: Duration,
    pub transitions: i32,
    /// Local monotonic time when this `resource_version` was first seen.
    pub seen_at: Instant,
}

/// The longest lease duration a holder's claim counts for, in multiples of
/// our own `--lease-duration`: every member of a group has the same settings
/// (one template), so more is junk or a foreign Lease, and must not block
/// the group for longer (a `leaseDurationSeconds` of 2^31 would, for decades).
pub const MAX_CLAIMED_DURATION_FACTOR: u32 = 10;

/// The holder a Lease names; an empty name (a release) is none.
pub fn lease_holder(lease: &Lease) -> Option<String> {
    lease
        .spec
        .as_ref()?
        .holder_identity
        .clone()
        .filter(|h| !h.is_empty())
}

impl Observed {
    /// Reads a Lease as seen at `now`, keeping `seen_at` when the
    /// `resourceVersion` is the one already known (a re-list, not a write).
    /// The holder's claimed duration counts up to
    /// [`MAX_CLAIMED_DURATION_FACTOR`] times `default_duration`.
    pub fn from_lease(
        lease: &Lease,
        previous: Option<&Observed>,
        default_duration: Duration,
        now: Instant,
    ) -> Observed {
        let spec = lease.spec.as_ref();
        let resource_version = lease.metadata.resource_version.clone().unwrap_or_default();
        let seen_at = match previous {
            Some(p) if p.resource_version == resource_version => p.seen_at,
            _ => now,
        };
        let claimed = spec
            .and_then(|s| s.lease_duration_seconds)
            .and_then(|s| u64::try_from(s).ok())
            .filter(|s| *s > 0)
            .map_or(default_duration, Duration::from_secs);
        Observed {
            holder: lease_holder(lease),
            resource_version,
            duration: claimed.min(default_duration * MAX_CLAIMED_DURATION_FACTOR),
            claimed,
            transitions: spec.and_then(|s| s.lease_transitions).unwrap_or(0),
            seen_at,
        }
    }

    pub fn expires_at(&self) -> Instant {
        self.seen_at + self.duration
    }
}

/// What is known of the Lease right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseView {
    /// Not read yet (starting, or re-reading after a failed write).
    Unknown,
    /// Read, and it does not exist.
    Absent,
    Present(Observed),
}

/// The next thing to do about the Lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Read it (nothing known, or a write may have committed).
    Read,
    /// Create it with us as holder.
    Create,
    /// Take it over (released, or expired by local observation).
    Acquire,
    /// Renew our holding.
    Renew,
    /// Give it up: clear `holderIdentity`.
    Release,
    /// Nothing to do until the given time (or an input changes).
    WaitUntil(Option<Instant>),
}

/// The inputs of [`next_step`].
#[derive(Debug, Clone)]
pub struct Situation<'a> {
    pub me: &'a str,
    /// May hold the Lease: app healthy (or the group paused while we hold
    /// it) and pod not terminating.
    pub eligible: bool,
    /// May also take it: eligible and not cordoned (rule 10).
    pub may_take: bool,
    /// The group is paused: an expired Lease is not taken (rule 10).
    pub paused: bool,
    /// A switchover hands the Lease to us: it names us, and we have not
    /// renewed it ourselves (rule 10).
    pub offered: bool,
    /// A switchover of ours in flight: the Lease version we wrote, and when
    /// we take it back if it is still that version (rule 10).
    pub handed_over: Option<(&'a str, Instant)>,
    pub lease: &'a LeaseView,
    /// The Lease as last observed before it went missing (rule 12): whose
    /// it was, and when that version would expire.
    pub last_seen: Option<&'a Observed>,
    /// When our last successful write was sent, if we hold the Lease.
    pub last_renew_sent: Option<Instant>,
    pub renew_period: Duration,
    pub now: Instant,
}

/// What a candidate should do next, given what it has observed.
pub fn next_step(s: &Situation<'_>) -> Step {
    let observed = match s.lease {
        LeaseView::Unknown => return Step::Read,
        LeaseView::Absent => return missing(s),
        LeaseView::Present(o) => o,
    };
    match observed.holder.as_deref() {
        // Handed to us by a switchover: taken only if we may; otherwise
        // left alone (not released), so that the holder that offered it
        // takes it back (rule 10).
        Some(h) if h == s.me && s.offered && s.last_renew_sent.is_none() => {
            if s.may_take {
                Step::Renew
            } else {
                Step::WaitUntil(None)
            }
        }
        Some(h) if h == s.me => {
            if !s.eligible {
                return Step::Release;
            }
            // A holder with no renewal of its own (a restarted sidecar of
            // the same pod) renews at once.
            match s.last_renew_sent {
                Some(sent) if s.now < sent + s.renew_period => {
                    Step::WaitUntil(Some(sent + s.renew_period))
                }
                _ => Step::Renew,
            }
        }
        _ if !s.eligible => Step::WaitUntil(None),
        // Our switchover, not taken by its bound: we keep the role.
        _ if s
            .handed_over
            .is_some_and(|(version, _)| version == observed.resource_version) =>
        {
            match s.handed_over {
                Some((_, until)) if s.now < until => Step::WaitUntil(Some(until)),
                _ => Step::Acquire,
            }
        }
        _ if !s.may_take => Step::WaitUntil(None),
        None => Step::Acquire,
        // Paused: a holder that stopped renewing keeps the Lease until
        // someone resumes the group or switches it over.
        Some(_) if s.paused => Step::WaitUntil(None),
        Some(_) if s.now >= observed.expires_at() => Step::Acquire,
        Some(_) => Step::WaitUntil(Some(observed.expires_at())),
    }
}

/// Rule 12: a missing Lease. Deleting it does not end a claim: the pod it
/// named when last seen creates it again at once (eligible suffices, as for
/// a renewal), and the others wait until that version would have expired
/// (rule 2's clock, kept across the deletion), then create it if nobody
/// has. A Lease never seen, or seen released, is created at once.
fn missing(s: &Situation<'_>) -> Step {
    let claim = s
        .last_seen
        .and_then(|o| o.holder.as_deref().map(|h| (h, o.expires_at())));
    match claim {
        Some((h, _)) if h == s.me && s.eligible => Step::Create,
        _ if !s.may_take => Step::WaitUntil(None),
        Some((h, expires)) if h != s.me && s.now < expires => Step::WaitUntil(Some(expires)),
        _ => Step::Create,
    }
}

/// Until when we may act as holder: the deadline of our last successful
/// renewal, if the Lease as last seen names us (also when it has since been
/// deleted, `last_seen`: the holder keeps its role while it re-creates it,
/// rule 12).
pub fn leading_until(
    lease: &LeaseView,
    last_seen: Option<&Observed>,
    me: &str,
    last_renew_sent: Option<Instant>,
    renew_deadline: Duration,
) -> Option<Instant> {
    let named = |o: &Observed| o.holder.as_deref() == Some(me);
    match lease {
        LeaseView::Present(o) if named(o) => last_renew_sent.map(|sent| sent + renew_deadline),
        LeaseView::Absent if last_seen.is_some_and(named) => {
            last_renew_sent.map(|sent| sent + renew_deadline)
        }
        _ => None,
    }
}

/// The label a Lease carries on the write that creates it or changes its
/// holder to the writer, and loses on the holder's next renewal. The
/// admission policies judge a sidecar's Lease write against its own pod
/// (group membership) only when the Lease carries it, so the renewals, which
/// are nearly all of the writes, cost the API server one cheap check instead
/// of one evaluation per pod of the namespace (docs/decisions.md §16).
pub const NEW_HOLDER_LABEL: &str = "baton.dev/new-holder";

/// Marks (or unmarks) `lease` as written by a new holder ([`NEW_HOLDER_LABEL`]).
fn mark_new_holder(lease: &mut Lease, new_holder: bool) {
    if new_holder {
        lease
            .metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(NEW_HOLDER_LABEL.to_owned(), "true".to_owned());
    } else if let Some(labels) = lease.metadata.labels.as_mut() {
        labels.remove(NEW_HOLDER_LABEL);
    }
}

/// The Lease after `step`, written as `me` at wall time `wall` (for people).
pub fn desired_lease(
    current: Option<&Lease>,
    step: Step,
    me: &str,
    duration: Duration,
    wall: Timestamp,
) -> Lease {
    let mut lease = current.cloned().unwrap_or_default();
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let now = Some(MicroTime(wall));
    match step {
        Step::Create | Step::Acquire => {
            let previous = spec.holder_identity.clone().filter(|h| !h.is_empty());
            if step == Step::Acquire && previous.as_deref() != Some(me) {
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            } else if step == Step::Create {
                spec.lease_transitions = Some(0);
            }
            spec.holder_identity = Some(me.to_owned());
            spec.acquire_time = now.clone();
            spec.renew_time = now;
        }
        Step::Renew => {
            spec.holder_identity = Some(me.to_owned());
            spec.renew_time = now;
        }
        Step::Release => {
            spec.holder_identity = None;
            spec.acquire_time = None;
            spec.renew_time = now;
        }
        Step::Read | Step::WaitUntil(_) => {}
    }
    spec.lease_duration_seconds =
        Some(i32::try_from(duration.as_secs().max(1)).unwrap_or(i32::MAX));
    match step {
        Step::Create | Step::Acquire => mark_new_holder(&mut lease, true),
        Step::Renew | Step::Release => mark_new_holder(&mut lease, false),
        Step::Read | Step::WaitUntil(_) => {}
    }
    lease
}

/// The Lease handed by its holder to `to` in a switchover (rule 10), or
/// released for any standby to take when `to` is None. A change of holder
/// counts as a transition.
pub fn handed_lease(
    current: &Lease,
    to: Option<&str>,
    duration: Duration,
    wall: Timestamp,
) -> Lease {
    let mut lease = current.clone();
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let now = Some(MicroTime(wall));
    spec.holder_identity = to.map(str::to_owned);
    spec.acquire_time = to.and(now.clone());
    spec.renew_time = now;
    if to.is_some() {
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.lease_duration_seconds =
        Some(i32::try_from(duration.as_secs().max(1)).unwrap_or(i32::MAX));
    // Written by the holder it names before the write: judged as a renewal.
    mark_new_holder(&mut lease, false);
    lease
}

/// Sets (Some) or removes (None) one annotation of the Lease.
pub fn annotate(lease: &mut Lease, key: &str, value: Option<String>) {
    let annotations = lease
        .metadata
        .annotations
        .get_or_insert_with(Default::default);
    match value {
        Some(v) => {
            annotations.insert(key.to_owned(), v);
        }
        None => {
            annotations.remove(key);
        }
    }
}

/// A write to the Lease that did not land.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Someone else wrote first (409): re-read, never retry blindly.
    #[error("lease {lease} changed since it was read")]
    Conflict { lease: String },
    /// No answer in time: the write may have committed, so re-read.
    #[error("writing lease {lease} timed out after {after:?}")]
    Timeout { lease: String, after: Duration },
    #[error("writing lease {lease}")]
    Api {
        lease: String,
        #[source]
        source: kube::Error,
    },
}

impl WriteError {
    /// Whether the Lease must be re-read before the next decision.
    pub fn needs_read(&self) -> bool {
        matches!(
            self,
            WriteError::Conflict { .. } | WriteError::Timeout { .. }
        )
    }
}

/// Reads and writes the group's Lease, each call bounded by a timeout.
#[derive(Clone)]
pub struct LeaseClient {
    api: Api<Lease>,
    name: String,
}

impl LeaseClient {
    pub fn new(api: Api<Lease>, name: impl Into<String>) -> Self {
        Self {
            api,
            name: name.into(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub async fn read(&self, timeout: Duration) -> Result<Option<Lease>, WriteError> {
        match tokio::time::timeout(timeout, self.api.get_opt(&self.name)).await {
            Ok(Ok(lease)) => Ok(lease),
            Ok(Err(source)) => Err(WriteError::Api {
                lease: self.name.clone(),
                source,
            }),
            Err(_) => Err(WriteError::Timeout {
                lease: self.name.clone(),
                after: timeout,
            }),
        }
    }

    /// Creates (when `current` is None) or replaces the Lease; a replace
    /// carries `current`'s resourceVersion, so it fails if anyone wrote since.
    pub async fn write(
        &self,
        current: Option<&Lease>,
        desired: Lease,
        timeout: Duration,
    ) -> Result<Lease, WriteError> {
        let pp = PostParams::default();
        // `desired` was made from `current` (its annotations edited, maybe).
        let mut desired = desired;
        desired.metadata = ObjectMeta {
            name: Some(self.name.clone()),
            resource_version: current.and_then(|c| c.metadata.resource_version.clone()),
            ..desired.metadata
        };
        let call = async {
            match current {
                None => self.api.create(&pp, &desired).await,
                Some(_) => self.api.replace(&self.name, &pp, &desired).await,
            }
        };
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(lease)) => Ok(lease),
            Ok(Err(kube::Error::Api(status))) if status.code == 409 => Err(WriteError::Conflict {
                lease: self.name.clone(),
            }),
            Ok(Err(source)) => Err(WriteError::Api {
                lease: self.name.clone(),
                source,
            }),
            Err(_) => Err(WriteError::Timeout {
                lease: self.name.clone(),
                after: timeout,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RENEW: Duration = Duration::from_secs(2);
    const DURATION: Duration = Duration::from_secs(6);

    fn observed(holder: Option<&str>, seen_at: Instant) -> LeaseView {
        LeaseView::Present(Observed {
            holder: holder.map(Into::into),
            resource_version: "7".into(),
            duration: DURATION,
            claimed: DURATION,
            transitions: 3,
            seen_at,
        })
    }

    fn step(
        lease: &LeaseView,
        eligible: bool,
        last_renew_sent: Option<Instant>,
        now: Instant,
    ) -> Step {
        next_step(&situation(lease, eligible, last_renew_sent, now))
    }

    fn situation(
        lease: &LeaseView,
        eligible: bool,
        last_renew_sent: Option<Instant>,
        now: Instant,
    ) -> Situation<'_> {
        Situation {
            me: "web-0",
            eligible,
            may_take: eligible,
            paused: false,
            offered: false,
            handed_over: None,
            lease,
            last_seen: None,
            last_renew_sent,
            renew_period: RENEW,
            now,
        }
    }

    #[test]
    fn a_cordoned_pod_keeps_renewing_what_it_holds_but_takes_nothing() {
        let now = Instant::now();
        fn cordoned(lease: &LeaseView, at: Instant) -> Situation<'_> {
            Situation {
                may_take: false,
                ..situation(lease, true, None, at)
            }
        }
        for free in [
            LeaseView::Absent,
            observed(None, now),
            observed(Some("web-1"), now),
        ] {
            assert_eq!(
                next_step(&cordoned(&free, now + DURATION)),
                Step::WaitUntil(None),
                "{free:?}"
            );
        }
        let mine = observed(Some("web-0"), now);
        let holding = Situation {
            last_renew_sent: Some(now),
            ..cordoned(&mine, now + RENEW)
        };
        assert_eq!(next_step(&holding), Step::Renew);
    }

    #[test]
    fn a_paused_group_takes_a_released_lease_but_not_an_expired_one() {
        let seen = Instant::now();
        let later = seen + DURATION * 2;
        let expired = observed(Some("web-1"), seen);
        let released = observed(None, seen);
        fn paused(lease: &LeaseView, at: Instant) -> Situation<'_> {
            Situation {
                paused: true,
                ..situation(lease, true, None, at)
            }
        }
        assert_eq!(next_step(&paused(&expired, later)), Step::WaitUntil(None));
        assert_eq!(next_step(&paused(&released, later)), Step::Acquire);
    }

    #[test]
    fn a_lease_offered_by_a_switchover_is_taken_only_by_a_pod_that_may_take_it() {
        let now = Instant::now();
        let offered = observed(Some("web-0"), now);
        let target = |may_take| Situation {
            offered: true,
            may_take,
            ..situation(&offered, true, None, now)
        };
        assert_eq!(next_step(&target(true)), Step::Renew);
        assert_eq!(
            next_step(&target(false)),
            Step::WaitUntil(None),
            "a cordoned target leaves it for the old holder to take back, it does not release it"
        );
        let unhealthy = Situation {
            eligible: false,
            ..target(false)
        };
        assert_eq!(next_step(&unhealthy), Step::WaitUntil(None));
    }

    #[test]
    fn a_switchover_not_taken_by_its_bound_is_taken_back_and_only_then() {
        let now = Instant::now();
        let until = now + DURATION / 2;
        for lease in [observed(Some("web-1"), now), observed(None, now)] {
            let mine = |at| Situation {
                handed_over: Some(("7", until)),
                ..situation(&lease, true, None, at)
            };
            assert_eq!(
                next_step(&mine(now)),
                Step::WaitUntil(Some(until)),
                "{lease:?}"
            );
            assert_eq!(next_step(&mine(until)), Step::Acquire, "{lease:?}");
        }
        // Someone wrote since (the target renewed): the usual rules.
        let taken = observed(Some("web-1"), now);
        let other_version = Situation {
            handed_over: Some(("6", until)),
            ..situation(&taken, true, None, until)
        };
        assert_eq!(
            next_step(&other_version),
            Step::WaitUntil(Some(now + DURATION))
        );
    }

    #[test]
    fn nothing_known_means_read_first() {
        let now = Instant::now();
        assert_eq!(step(&LeaseView::Unknown, true, None, now), Step::Read);
        assert_eq!(step(&LeaseView::Unknown, false, None, now), Step::Read);
    }

    #[test]
    fn absent_lease_is_created_only_by_an_eligible_pod() {
        let now = Instant::now();
        assert_eq!(step(&LeaseView::Absent, true, None, now), Step::Create);
        assert_eq!(
            step(&LeaseView::Absent, false, None, now),
            Step::WaitUntil(None)
        );
    }

    #[test]
    fn released_lease_is_acquired_at_once_by_an_eligible_pod() {
        let now = Instant::now();
        let lease = observed(None, now);
        assert_eq!(step(&lease, true, None, now), Step::Acquire);
        assert_eq!(step(&lease, false, None, now), Step::WaitUntil(None));
    }

    #[test]
    fn expired_lease_is_taken_only_after_local_observation() {
        let seen = Instant::now();
        let lease = observed(Some("web-1"), seen);
        let almost = seen + DURATION - Duration::from_millis(1);
        assert_eq!(
            step(&lease, true, None, almost),
            Step::WaitUntil(Some(seen + DURATION))
        );
        assert_eq!(step(&lease, true, None, seen + DURATION), Step::Acquire);
        assert_eq!(
            step(&lease, false, None, seen + DURATION * 2),
            Step::WaitUntil(None)
        );
    }

    #[test]
    fn a_new_resource_version_restarts_the_expiry_clock_but_a_relist_does_not() {
        let t0 = Instant::now();
        let mut lease = Lease::default();
        lease.metadata.resource_version = Some("1".into());
        let first = Observed::from_lease(&lease, None, DURATION, t0);
        let relist = Observed::from_lease(&lease, Some(&first), DURATION, t0 + RENEW);
        assert_eq!(relist.seen_at, t0);
        lease.metadata.resource_version = Some("2".into());
        let renewed = Observed::from_lease(&lease, Some(&first), DURATION, t0 + RENEW);
        assert_eq!(renewed.seen_at, t0 + RENEW);
    }

    #[test]
    fn a_junk_lease_duration_counts_for_ten_of_ours_at_most() {
        let mut lease = Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some("ghost".into()),
                lease_duration_seconds: Some(i32::MAX),
                ..Default::default()
            }),
            ..Default::default()
        };
        let o = Observed::from_lease(&lease, None, DURATION, Instant::now());
        assert_eq!(o.duration, DURATION * 10);
        lease.spec.as_mut().expect("spec").lease_duration_seconds = Some(8);
        let o = Observed::from_lease(&lease, None, DURATION, Instant::now());
        assert_eq!(
            o.duration,
            Duration::from_secs(8),
            "a claim within the bound counts"
        );
    }

    #[test]
    fn renew_time_in_the_lease_is_never_compared_with_our_clock() {
        // A renewTime far in the past (skewed clock) does not make it expired.
        let now = Instant::now();
        let mut lease = Lease::default();
        lease.metadata.resource_version = Some("5".into());
        lease.spec = Some(LeaseSpec {
            holder_identity: Some("web-1".into()),
            renew_time: Some(MicroTime(Timestamp::UNIX_EPOCH)),
            lease_duration_seconds: Some(6),
            ..Default::default()
        });
        let view = LeaseView::Present(Observed::from_lease(&lease, None, DURATION, now));
        assert_eq!(
            step(&view, true, None, now),
            Step::WaitUntil(Some(now + DURATION))
        );
    }

    #[test]
    fn holder_renews_every_renew_period() {
        let sent = Instant::now();
        let lease = observed(Some("web-0"), sent);
        assert_eq!(
            step(&lease, true, Some(sent), sent + RENEW / 2),
            Step::WaitUntil(Some(sent + RENEW))
        );
        assert_eq!(step(&lease, true, Some(sent), sent + RENEW), Step::Renew);
        assert_eq!(
            step(&lease, true, None, sent),
            Step::Renew,
            "restarted holder"
        );
    }

    #[test]
    fn unhealthy_or_terminating_holder_releases_at_once() {
        let now = Instant::now();
        let lease = observed(Some("web-0"), now);
        assert_eq!(step(&lease, false, Some(now), now), Step::Release);
    }

    #[test]
    fn leadership_ends_at_the_renew_deadline_of_the_last_renewal_sent() {
        let sent = Instant::now();
        let deadline = Duration::from_secs(4);
        let mine = observed(Some("web-0"), sent);
        assert_eq!(
            leading_until(&mine, None, "web-0", Some(sent), deadline),
            Some(sent + deadline)
        );
        assert_eq!(leading_until(&mine, None, "web-0", None, deadline), None);
        let theirs = observed(Some("web-1"), sent);
        assert_eq!(
            leading_until(&theirs, None, "web-0", Some(sent), deadline),
            None
        );
        assert_eq!(
            leading_until(&LeaseView::Absent, None, "web-0", Some(sent), deadline),
            None
        );
    }

    #[test]
    fn transitions_count_changes_of_holder_only() {
        let wall = Timestamp::UNIX_EPOCH;
        let created = desired_lease(None, Step::Create, "web-0", DURATION, wall);
        let spec = created.spec.as_ref().expect("spec");
        assert_eq!(spec.lease_transitions, Some(0));
        assert_eq!(spec.holder_identity.as_deref(), Some("web-0"));
        assert_eq!(spec.lease_duration_seconds, Some(6));

        let renewed = desired_lease(Some(&created), Step::Renew, "web-0", DURATION, wall);
        assert_eq!(
            renewed.spec.as_ref().and_then(|s| s.lease_transitions),
            Some(0)
        );

        let released = desired_lease(Some(&renewed), Step::Release, "web-0", DURATION, wall);
        assert_eq!(
            released
                .spec
                .as_ref()
                .and_then(|s| s.holder_identity.clone()),
            None
        );

        let taken = desired_lease(Some(&released), Step::Acquire, "web-1", DURATION, wall);
        assert_eq!(
            taken.spec.as_ref().and_then(|s| s.lease_transitions),
            Some(1)
        );
        let retaken = desired_lease(Some(&taken), Step::Acquire, "web-1", DURATION, wall);
        assert_eq!(
            retaken.spec.as_ref().and_then(|s| s.lease_transitions),
            Some(1),
            "same holder again is no transition"
        );
    }

    fn new_holder_mark(lease: &Lease) -> Option<&str> {
        lease
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(NEW_HOLDER_LABEL))
            .map(String::as_str)
    }

    #[test]
    fn only_a_write_that_makes_the_writer_holder_carries_the_new_holder_mark() {
        let wall = Timestamp::UNIX_EPOCH;
        let mut foreign = desired_lease(None, Step::Create, "web-0", DURATION, wall);
        foreign
            .metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert("team".into(), "shop".into());
        assert_eq!(new_holder_mark(&foreign), Some("true"), "created");

        let renewed = desired_lease(Some(&foreign), Step::Renew, "web-0", DURATION, wall);
        assert_eq!(new_holder_mark(&renewed), None, "a renewal clears it");
        assert_eq!(
            renewed.metadata.labels.as_ref().and_then(|l| l.get("team")),
            Some(&"shop".to_owned()),
            "other labels are kept"
        );
        let taken = desired_lease(Some(&renewed), Step::Acquire, "web-1", DURATION, wall);
        assert_eq!(new_holder_mark(&taken), Some("true"), "acquired");
        let handed = handed_lease(&taken, Some("web-0"), DURATION, wall);
        assert_eq!(new_holder_mark(&handed), None, "handed on by its holder");
        let taken_back = desired_lease(Some(&handed), Step::Acquire, "web-1", DURATION, wall);
        assert_eq!(new_holder_mark(&taken_back), Some("true"), "taken back");
        let released = desired_lease(Some(&taken_back), Step::Release, "web-1", DURATION, wall);
        assert_eq!(new_holder_mark(&released), None, "released by its holder");
    }
}
