//! Races for one Lease on the real API server, against baton's election and
//! against `kube-leader-election` 0.44's `LeaseLock` (the crate the project
//! was asked to consider). A "double holder" is a round in which more than
//! one candidate came out believing it holds the Lease.
//!
//! baton's election must never produce one; the crate's figures are printed
//! for `docs/decisions.md` (run with `--nocapture`), not asserted, since
//! they measure someone else's code.

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
use kube_leader_election::{LeaseLock, LeaseLockParams, LeaseLockResult};
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
            lease: &view,
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

async fn kle_candidate(ns: &TestNamespace, name: &str, me: String, start: Arc<Barrier>) -> bool {
    let lock = LeaseLock::new(
        ns.cluster.client.clone(),
        &ns.name,
        LeaseLockParams {
            lease_name: name.into(),
            holder_id: me,
            lease_ttl: DURATION,
        },
    );
    start.wait().await;
    matches!(
        lock.try_acquire_or_renew().await,
        Ok(LeaseLockResult::Acquired(_))
    )
}

#[derive(Debug, Default)]
struct Tally {
    rounds: usize,
    double_rounds: usize,
    most_holders: usize,
}

impl Tally {
    fn add(&mut self, winners: usize) {
        self.rounds += 1;
        if winners > 1 {
            self.double_rounds += 1;
        }
        self.most_holders = self.most_holders.max(winners);
    }
}

async fn race(ns: &TestNamespace, baton: bool, start_held: bool) -> Tally {
    let api: Api<Lease> = ns.api();
    let name = format!(
        "race-{}-{}",
        if baton { "baton" } else { "kle" },
        start_held
    );
    let mut tally = Tally::default();
    for _ in 0..ROUNDS {
        // Released is an empty holder, as the crate's own step_down writes
        // (it fails on a missing one); baton treats both alike.
        reset(&api, &name, Some(if start_held { "old" } else { "" })).await;
        let start = Arc::new(Barrier::new(CANDIDATES));
        let tasks: Vec<_> = (0..CANDIDATES)
            .map(|i| {
                let me = format!("candidate-{i}");
                let start = start.clone();
                let client = LeaseClient::new(api.clone(), name.clone());
                let (ns_name, cluster) = (ns.name.clone(), ns.cluster.clone());
                let name = name.clone();
                tokio::spawn(async move {
                    if baton {
                        baton_candidate(client, me, start).await
                    } else {
                        let ns = TestNamespace {
                            name: ns_name,
                            cluster,
                        };
                        kle_candidate(&ns, &name, me, start).await
                    }
                })
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
        let ours = race(&ns, true, start_held).await;
        let theirs = race(&ns, false, start_held).await;
        eprintln!(
            "race for a {what} lease, {CANDIDATES} candidates x {ROUNDS} rounds: \
             baton {ours:?}; kube-leader-election 0.44 {theirs:?}"
        );
        assert_eq!(
            ours.double_rounds, 0,
            "baton produced double holders: {ours:?}"
        );
        assert_eq!(
            ours.most_holders, 1,
            "every round has exactly one winner: {ours:?}"
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

    // candidate-1 sees it, waits out its duration on its own clock, takes it.
    let seen = client.read(TIMEOUT).await.expect("read").expect("exists");
    tokio::time::sleep(DURATION).await;
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
