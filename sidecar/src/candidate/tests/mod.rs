//! The candidate's tests. Most are synchronous calls on [`State`] with
//! explicit instants (`t0 + 2 * S`): no clock, no API server. A few drive
//! the real loop against a scripted API server (`driver.rs`), asserting
//! order and counts, never a wall-clock window.

mod controls;
mod deleted;
mod driver;
mod group;
mod ladder;
mod leaving;
mod not_ready;
mod pure;
mod slow;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use clap::Parser;
use k8s_openapi::{
    api::{
        coordination::v1::{Lease, LeaseSpec},
        core::v1::Pod,
    },
    jiff::Timestamp,
};

use super::{Action, Labelled, Notice, Outcome, decide, settle, state::State};
use crate::{
    contract::Role,
    contract::role_labels::RoleLabels,
    election::{self, LeaseView, WriteError},
    endpoints::Pointed,
    labels::{LabelError, Membership},
    probe::{Health, Outcome as Probe},
    settings::Settings,
};

pub const S: Duration = Duration::from_secs(1);
pub const MS: Duration = Duration::from_millis(1);
/// Short timings that keep the settings' relations: lease 1 s, renew
/// deadline 400 ms, renew and retry every 100 ms, API timeout 500 ms.
pub const SHORT: [&str; 5] = [
    "--lease-duration=1s",
    "--renew-deadline=400ms",
    "--renew-period=100ms",
    "--retry-period=100ms",
    "--api-timeout=500ms",
];
/// The jitter every test settles with: the middle of the range.
pub const JITTER: f64 = 0.5;

pub fn settings(flags: &[&str]) -> Settings {
    let args = [
        "baton-sidecar",
        "--pod-name=web-0",
        "--pod-namespace=default",
        "--lease-name=web",
    ];
    Settings::try_parse_from(args.iter().chain(flags)).expect("valid settings")
}

pub fn labels(settings: &Settings) -> RoleLabels {
    settings.labels.for_group(&settings.lease_name)
}

pub fn healthy() -> Health {
    Health::default().fold(&Probe::Success, 1, 1)
}

pub fn failing(why: &str) -> Health {
    healthy().fold(&Probe::Failure(why.into()), 1, 1)
}

/// Pod web-0 at `version`, labelled `role`.
pub fn pod(version: &str, role: &str) -> Pod {
    let mut pod = Pod::default();
    pod.metadata.name = Some("web-0".into());
    pod.metadata.namespace = Some("default".into());
    pod.metadata.resource_version = Some(version.into());
    pod.metadata.labels = Some(BTreeMap::from([
        ("role".to_owned(), role.to_owned()),
        ("baton.dev/group".to_owned(), "web".to_owned()),
    ]));
    pod
}

/// Lease `web` as read: `holder`'s, at `version`, claimed for `seconds`.
pub fn held_by(holder: &str, version: &str, seconds: i32) -> Lease {
    let mut lease = Lease::default();
    lease.metadata.name = Some("web".into());
    lease.metadata.resource_version = Some(version.into());
    lease.spec = Some(LeaseSpec {
        holder_identity: Some(holder.into()),
        lease_duration_seconds: Some(seconds),
        lease_transitions: Some(1),
        ..Default::default()
    });
    lease
}

/// web-0 as the holder of lease `web` (version 7), labelled active (pod
/// version 12), healthy, its last renewal sent at `sent`.
pub fn holder(sent: Instant, flags: &[&str]) -> State {
    let settings = settings(flags);
    let mut s = State::new(settings.clone(), labels(&settings), "web".into());
    s.handle_health(healthy());
    s.said.was_healthy = true;
    let mut n = Vec::new();
    s.observe_lease(Some(&held_by("web-0", "7", 6)), sent, &mut n);
    s.lease.last_renew_sent = Some(sent);
    s.observe_pod(pod("12", "active"), sent, &mut n);
    s.own.role = Some(Role::Active);
    s
}

/// web-0 as a standby labelled passive that has not read the Lease yet.
pub fn standby(t0: Instant, flags: &[&str]) -> State {
    let mut s = holder(t0, flags);
    s.lease = Default::default();
    let mut n = Vec::new();
    s.observe_pod(pod("13", "passive"), t0, &mut n);
    s.own.role = Some(Role::Passive);
    s
}

/// The version after `version`, as the API server counts.
pub fn next_version(version: &mut Option<String>) {
    let rv: u64 = version.as_deref().and_then(|v| v.parse().ok()).unwrap_or(0);
    *version = Some((rv + 1).to_string());
}

/// `s`'s Lease with `annotations` set (None removes), seen anew at `at`.
pub fn annotate_lease(s: &mut State, at: Instant, annotations: &[(&str, Option<&str>)]) {
    let mut lease = s.lease.object.clone().expect("a lease");
    for (key, value) in annotations {
        election::annotate(&mut lease, key, value.map(str::to_owned));
    }
    next_version(&mut lease.metadata.resource_version);
    s.observe_lease(Some(&lease), at, &mut Vec::new());
}

/// `lease` as the API server answers a write of it: the next version.
pub fn bumped(mut lease: Lease) -> Lease {
    next_version(&mut lease.metadata.resource_version);
    lease
}

/// The Lease that `write` would send from `s`.
pub fn sent(s: &State, action: &Action) -> Lease {
    let wall = Timestamp::UNIX_EPOCH;
    let duration = s.settings.lease_duration;
    match action {
        Action::WriteLease(w) => w.desired(s.write_base(w.step), s.me(), duration, wall),
        Action::HandOver(h) => h.desired(s.lease.object.as_ref().expect("a lease"), duration, wall),
        other => panic!("not a Lease write: {other:?}"),
    }
}

/// Web-0 with its role label set to `role`, one version on.
pub fn relabelled(s: &State, role: &str) -> Pod {
    let mut p = s.pod().cloned().expect("the pod");
    next_version(&mut p.metadata.resource_version);
    p.metadata
        .labels
        .get_or_insert_default()
        .insert("role".into(), role.into());
    p
}

/// What an API server that accepts everything answers to `action`.
pub fn accept(s: &State, action: &Action, at: Instant) -> Outcome {
    match action {
        Action::LabelPassive { .. } => {
            Outcome::LabelledPassive(Ok(Labelled::Pod(Box::new(relabelled(s, "passive")))))
        }
        Action::ReadLease { .. } => Outcome::LeaseRead(Ok(s.lease.object.clone())),
        Action::WriteLease(write) => Outcome::LeaseWritten {
            write: write.clone(),
            sent: at,
            renew_time: None,
            result: Ok(bumped(sent(s, action))),
        },
        Action::HandOver(handover) => Outcome::HandedOver {
            handover: handover.clone(),
            sent: at,
            result: Ok(bumped(sent(s, action))),
        },
        Action::PointService { .. } => Outcome::ServicePointed(Ok(Pointed::Written)),
        Action::Promote { version, .. } => Outcome::Promoted {
            demoted: Ok(Vec::new()),
            version: version.clone(),
            label: Ok(Labelled::Pod(Box::new(relabelled(s, "active")))),
        },
        Action::CountGroup { .. } => Outcome::GroupCounted(Ok(1)),
        Action::CheckHolder { holder, .. } => Outcome::HolderChecked {
            holder: holder.clone(),
            result: Ok(Membership::Member),
        },
        Action::PublishHealth { healthy, .. } => {
            let mut p = relabelled(s, "active");
            p.metadata.labels = s.pod().and_then(|p| p.metadata.labels.clone());
            Outcome::HealthPublished {
                healthy: *healthy,
                result: Ok(Box::new(p)),
            }
        }
        Action::AdoptHealth(h) => Outcome::HealthAdopted(*h),
        Action::AdoptRole(r) => Outcome::RoleAdopted(*r),
    }
}

/// Settles `action` at `at` as an API server that accepts everything would.
pub fn accepted(s: &mut State, action: &Action, at: Instant) -> Vec<Notice> {
    let outcome = accept(s, action, at);
    settle(s, outcome, at, JITTER)
}

/// Runs turns of the core at `at` as the driver would, answering each
/// action with `answer`, until nothing is left to do or `max` actions.
pub fn turns(
    s: &mut State,
    at: Instant,
    max: usize,
    mut answer: impl FnMut(&State, &Action) -> Outcome,
) -> (Vec<Action>, Vec<Notice>) {
    let mut actions = Vec::new();
    let mut notices = Vec::new();
    while actions.len() < max {
        notices.extend(s.note(at));
        s.enforce(at);
        let Some(action) = decide(s, at) else { break };
        let outcome = answer(s, &action);
        notices.extend(settle(s, outcome, at, JITTER));
        actions.push(action);
    }
    (actions, notices)
}

/// The first `(step, …)` of each action, for comparing sequences.
pub fn kinds(actions: &[Action]) -> Vec<&'static str> {
    actions
        .iter()
        .map(|a| match a {
            Action::AdoptHealth(_) => "adopt health",
            Action::AdoptRole(_) => "adopt role",
            a => a.operation().expect("an action that calls"),
        })
        .collect()
}

/// The reasons of the Events among `notices`.
pub fn events(notices: &[Notice]) -> Vec<&'static str> {
    notices.iter().filter_map(Notice::reason).collect()
}

pub fn api_error(code: u16, reason: &str) -> kube::Error {
    kube::Error::Api(
        kube::core::Status::failure(&format!("{reason} on purpose"), reason)
            .with_code(code)
            .boxed(),
    )
}

pub fn write_timeout() -> WriteError {
    WriteError::Timeout {
        lease: "web".into(),
        after: 2 * S,
    }
}

pub fn label_error(code: u16, role: Role) -> LabelError {
    LabelError::Patch {
        pod: "web-0".into(),
        role,
        source: api_error(code, "Forbidden"),
    }
}

pub fn lease_view(s: &State) -> &LeaseView {
    &s.lease.view
}
