//! Races for one Lease on the real API server with baton's election. A
//! "double holder" is a round in which more than one candidate came out
//! believing it holds the Lease: baton's election must never produce one,
//! and every round has a winner. `kube-leader-election`'s `LeaseLock` in the
//! same race is a figure of `make bench` (tests/kle-race, outside the
//! workspace: it needs kube 4), not a test: it measures someone else's code.

use std::{sync::Arc, time::Duration};

use baton_e2e::harness::{Cluster, TestNamespace};
use baton_sidecar::election::{
    self, LeaseClient, LeaseView, Observed, Situation, Step, WriteError,
};
use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::{SignedDuration, Timestamp},
};
use kube::{Api, api::PostParams};
use tokio::{sync::Barrier, time::Instant};

const CANDIDATES: usize = 3;
const ROUNDS: usize = 8;
const DURATION: Duration = Duration::from_secs(1);
const TIMEOUT: Duration = Duration::from_secs(5);

/// Puts the Lease back to "held by `old`, last renewed long ago", or "released".
async fn reset(api: &Api<Lease>, name: &str, holder: Option<&str>) {
    let spec = LeaseSpec {
        holder_identity: holder.map(Into::into),
        lease_duration_seconds: Some(1),
        lease_transitions: Some(0),
        acquire_time: Some(MicroTime(Timestamp::now() - SignedDuration::from_hours(1))),
        renew_time: Some(MicroTime(Timestamp::now() - SignedDuration::from_hours(1))),
        ..Default::default()
    };
    let mut lease = api.get_opt(name).await.expect("get").unwrap_or_default();
    lease.metadata.name = Some(name.into());
    lease.spec = Some(spec);
    if lease.metadata.resource_version.is_some() {
        api.replace(name, &PostParams::default(), &lease)
            .await
            .expect("reset");
    } else {
        api.create(&PostParams::default(), &lease)
            .await
            .expect("create");
    }
}

/// One baton candidate: read, wait out the lease by local observation if
/// someone holds it, then write with the resourceVersion it read.
async fn baton_candidate(client: LeaseClient, me: String, start: Arc<Barrier>) -> bool {
    let lease = client.read(TIMEOUT).await.expect("read").expect("exists");
    let seen = Instant::now().into_std();
    let view = LeaseView::Present(Observed::from_lease(&lease, None, DURATION, seen));
    let mut now = seen;
    let step = loop {
        let step = election::next_step(&Situation {
            me: &me,
            eligible: true,
            may_take: true,
            paused: false,
            offered: false,
            handed_over: None,
            lease: &view,
            last_seen: None,
            last_renew_sent: None,
            renew_period: Duration::from_millis(200),
            now,
        });
        match step {
            Step::WaitUntil(Some(t)) => {
                tokio::time::sleep_until(t.into()).await;
                now = t;
            }
            other => break other,
        }
    };
    assert_eq!(step, Step::Acquire);
    start.wait().await;
    let desired = election::desired_lease(Some(&lease), step, &me, DURATION, Timestamp::now());
    match client.write(Some(&lease), desired, TIMEOUT).await {
        Ok(_) => true,
        Err(WriteError::Conflict { .. }) => false,
        Err(e) => panic!("unexpected error: {e}"),
    }
}

#[derive(Debug, Default)]
struct Tally {
    rounds: usize,
    /// Rounds with more than one winner, and with none.
    double_rounds: usize,
    empty_rounds: usize,
}

impl Tally {
    fn add(&mut self, winners: usize) {
        self.rounds += 1;
        self.double_rounds += usize::from(winners > 1);
        self.empty_rounds += usize::from(winners == 0);
    }
}

async fn race(ns: &TestNamespace, start_held: bool) -> Tally {
    let api: Api<Lease> = ns.api();
    let name = format!("race-{start_held}");
    let mut tally = Tally::default();
    for _ in 0..ROUNDS {
        reset(&api, &name, Some(if start_held { "old" } else { "" })).await;
        let start = Arc::new(Barrier::new(CANDIDATES));
        let tasks: Vec<_> = (0..CANDIDATES)
            .map(|i| {
                let client = LeaseClient::new(api.clone(), name.clone());
                tokio::spawn(baton_candidate(
                    client,
                    format!("candidate-{i}"),
                    start.clone(),
                ))
            })
            .collect();
        let mut winners = 0;
        for t in tasks {
            winners += usize::from(t.await.expect("candidate task"));
        }
        tally.add(winners);
    }
    tally
}

#[tokio::test]
async fn three_candidates_racing_for_an_expired_or_released_lease() {
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("election-race").await;
    for start_held in [true, false] {
        let what = if start_held { "expired" } else { "released" };
        let ours = race(&ns, start_held).await;
        eprintln!("race for a {what} lease, {CANDIDATES} candidates x {ROUNDS} rounds: {ours:?}");
        assert_eq!(
            (ours.rounds, ours.double_rounds, ours.empty_rounds),
            (ROUNDS, 0, 0),
            "every round of the race for a {what} lease has exactly one winner"
        );
    }
    ns.delete().await;
}

#[tokio::test]
async fn a_stale_holder_cannot_renew_after_another_took_over() {
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("election-stale").await;
    let api: Api<Lease> = ns.api();
    let client = LeaseClient::new(api.clone(), "stale");

    // candidate-0 creates and holds the lease, then freezes (no renewals).
    let created = election::desired_lease(
        None,
        Step::Create,
        "candidate-0",
        DURATION,
        Timestamp::now(),
    );
    let held = client.write(None, created, TIMEOUT).await.expect("create");

    // candidate-1 reads it and takes it over (whether it waited out the
    // duration is the election's business, unit-tested; the server judges
    // only the resourceVersion).
    let seen = client.read(TIMEOUT).await.expect("read").expect("exists");
    let taken = election::desired_lease(
        Some(&seen),
        Step::Acquire,
        "candidate-1",
        DURATION,
        Timestamp::now(),
    );
    client
        .write(Some(&seen), taken, TIMEOUT)
        .await
        .expect("takeover");

    // candidate-0 resumes and renews from what it last knew: refused.
    let renew = election::desired_lease(
        Some(&held),
        Step::Renew,
        "candidate-0",
        DURATION,
        Timestamp::now(),
    );
    let result = client.write(Some(&held), renew, TIMEOUT).await;
    assert!(
        matches!(result, Err(WriteError::Conflict { .. })),
        "a stale renewal must conflict, got {result:?}"
    );
    let now = api.get("stale").await.expect("get");
    assert_eq!(
        now.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("candidate-1")
    );
    ns.delete().await;
}
