//! Races `kube-leader-election` 0.44's `LeaseLock` for one Lease: three
//! candidates, started together by a barrier, each calling
//! `try_acquire_or_renew` once on a Lease that expired or was released, for
//! a number of rounds. A "double holder" is a round in which more than one
//! candidate came out believing it holds the Lease.
//!
//! `make bench` runs it beside baton's own race (tests/tests/election_race.rs
//! asserts that baton never produces one) and reports the figures; it
//! measures someone else's code, so nothing here asserts.
//!
//! Usage: `baton-kle-race NAMESPACE [ROUNDS]`, with the kubeconfig of the
//! cluster; prints one JSON object.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::{SignedDuration, Timestamp},
};
use kube::{Api, Client, api::PostParams};
use kube_leader_election::{LeaseLock, LeaseLockParams, LeaseLockResult};
use tokio::sync::Barrier;

const CANDIDATES: usize = 3;
const TTL: Duration = Duration::from_secs(1);

/// Puts the Lease back to "held by `old`, last renewed an hour ago" or
/// "released" (an empty holder, as the crate's own `step_down` writes).
async fn reset(api: &Api<Lease>, name: &str, held: bool) -> anyhow::Result<()> {
    let long_ago = MicroTime(Timestamp::now() - SignedDuration::from_hours(1));
    let spec = LeaseSpec {
        holder_identity: Some(if held { "old" } else { "" }.into()),
        lease_duration_seconds: Some(1),
        lease_transitions: Some(0),
        acquire_time: Some(long_ago.clone()),
        renew_time: Some(long_ago),
        ..Default::default()
    };
    let mut lease = api.get_opt(name).await?.unwrap_or_default();
    lease.metadata.name = Some(name.into());
    lease.spec = Some(spec);
    if lease.metadata.resource_version.is_some() {
        api.replace(name, &PostParams::default(), &lease).await?;
    } else {
        api.create(&PostParams::default(), &lease).await?;
    }
    Ok(())
}

/// (rounds, rounds with more than one holder, most holders in a round).
async fn race(client: &Client, ns: &str, held: bool, rounds: usize) -> anyhow::Result<[usize; 3]> {
    let name = format!("kle-race-{}", if held { "expired" } else { "released" });
    let api: Api<Lease> = Api::namespaced(client.clone(), ns);
    let (mut doubles, mut most) = (0, 0);
    for _ in 0..rounds {
        reset(&api, &name, held).await?;
        let start = Arc::new(Barrier::new(CANDIDATES));
        let tasks: Vec<_> = (0..CANDIDATES)
            .map(|i| {
                let lock = LeaseLock::new(
                    client.clone(),
                    ns,
                    LeaseLockParams {
                        lease_name: name.clone(),
                        holder_id: format!("candidate-{i}"),
                        lease_ttl: TTL,
                    },
                );
                let start = start.clone();
                tokio::spawn(async move {
                    start.wait().await;
                    matches!(
                        lock.try_acquire_or_renew().await,
                        Ok(LeaseLockResult::Acquired(_))
                    )
                })
            })
            .collect();
        let mut winners = 0;
        for t in tasks {
            winners += usize::from(t.await?);
        }
        doubles += usize::from(winners > 1);
        most = most.max(winners);
    }
    Ok([rounds, doubles, most])
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let ns = args.next().context("usage: baton-kle-race NAMESPACE [ROUNDS]")?;
    let rounds = args.next().map_or(Ok(20), |r| r.parse()).context("ROUNDS")?;
    let client = Client::try_default().await.context("a kubeconfig")?;
    let mut out = serde_json::Map::new();
    for (what, held) in [("expired", true), ("released", false)] {
        let [rounds, doubles, most] = race(&client, &ns, held, rounds).await?;
        out.insert(
            what.into(),
            serde_json::json!({"rounds": rounds, "double_rounds": doubles, "most_holders": most}),
        );
    }
    out.insert("candidates".into(), CANDIDATES.into());
    println!("{}", serde_json::Value::Object(out));
    Ok(())
}
