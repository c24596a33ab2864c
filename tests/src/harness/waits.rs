//! Waits on watches, each bounded by a timeout that fails the test saying
//! what it waited for and what it saw last: an object, a set of objects, a
//! Lease's holder, the group's roles, a Service's Ready endpoints, the real
//! nodes' health.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Debug,
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::api::{
    coordination::v1::Lease,
    core::v1::{Node, Pod},
    discovery::v1::EndpointSlice,
};
use kube::{Api, Resource, ResourceExt, runtime::watcher};
use serde::de::DeserializeOwned;

use super::{Cluster, TestNamespace, labelled};

/// Watches the objects matching `labels` until `done` holds for them, or
/// panics after `timeout` saying what it waited for and what it saw.
pub async fn wait_until<K, F>(
    api: Api<K>,
    labels: &str,
    timeout: Duration,
    what: &str,
    done: F,
) -> Vec<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    F: FnMut(&[K]) -> bool,
{
    wait_watched(
        api,
        watcher::Config::default().labels(labels),
        timeout,
        what,
        done,
    )
    .await
}

/// Like [`wait_until`] for one object, by name.
pub async fn wait_for_object<K, F>(
    api: Api<K>,
    name: &str,
    timeout: Duration,
    what: &str,
    mut done: F,
) -> K
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    F: FnMut(&K) -> bool,
{
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    wait_watched(api, config, timeout, what, |items| {
        items.first().is_some_and(&mut done)
    })
    .await
    .into_iter()
    .next()
    .expect("the object the wait ended on")
}

async fn wait_watched<K, F>(
    api: Api<K>,
    config: watcher::Config,
    timeout: Duration,
    what: &str,
    mut done: F,
) -> Vec<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    F: FnMut(&[K]) -> bool,
{
    let mut stream = watcher(api, config).boxed();
    let mut state = Listed::default();
    let waiting = async {
        while let Some(event) = stream.next().await {
            let Ok(event) = event else { continue };
            if state.apply(event) {
                let items = state.items();
                if done(&items) {
                    return items;
                }
            }
        }
        Vec::new()
    };
    match tokio::time::timeout(timeout, waiting).await {
        Ok(items) => items,
        Err(_) => panic!(
            "timed out after {timeout:?} waiting for {what}; last seen: {:?}",
            state.names()
        ),
    }
}

/// The objects of a watch as of its last event. A (re-)list replaces them
/// whole at its end, so that no check ever sees half a list.
pub(super) struct Listed<K> {
    state: BTreeMap<String, K>,
    listing: BTreeMap<String, K>,
    listed: bool,
}

impl<K> Default for Listed<K> {
    fn default() -> Self {
        Listed {
            state: BTreeMap::new(),
            listing: BTreeMap::new(),
            listed: false,
        }
    }
}

impl<K: Resource + Clone> Listed<K> {
    /// Takes one event; returns whether the state is a complete view.
    pub(super) fn apply(&mut self, event: watcher::Event<K>) -> bool {
        match event {
            watcher::Event::Init => self.listing.clear(),
            watcher::Event::InitApply(o) => {
                self.listing.insert(o.name_any(), o);
            }
            watcher::Event::InitDone => {
                self.state = std::mem::take(&mut self.listing);
                self.listed = true;
            }
            watcher::Event::Apply(o) => {
                self.state.insert(o.name_any(), o);
            }
            watcher::Event::Delete(o) => {
                self.state.remove(&o.name_any());
            }
        }
        self.listed
    }

    pub(super) fn items(&self) -> Vec<K> {
        self.state.values().cloned().collect()
    }

    fn names(&self) -> Vec<&String> {
        self.state.keys().collect()
    }
}

/// Waits until Lease `lease` names a holder other than `not`; returns it.
pub async fn wait_for_holder(ns: &TestNamespace, lease: &str, not: Option<&str>) -> String {
    let what = format!("a holder of lease {lease} other than {not:?}");
    let l = wait_for_object::<k8s_openapi::api::coordination::v1::Lease, _>(
        ns.api(),
        lease,
        Duration::from_secs(60),
        &what,
        |l| {
            l.spec
                .as_ref()
                .and_then(|s| s.holder_identity.as_deref())
                .is_some_and(|h| !h.is_empty() && Some(h) != not)
        },
    )
    .await;
    l.spec
        .and_then(|s| s.holder_identity)
        .expect("the holder the wait ended on")
}

/// Waits until `holder` alone among the pods of `labels` carries
/// `role=active` and the `others` other pods carry `role=passive`.
pub async fn wait_roles(ns: &TestNamespace, labels: &str, holder: &str, others: usize) -> Vec<Pod> {
    let what = format!("{holder} alone active and {others} other pods passive");
    wait_until::<Pod, _>(ns.api(), labels, Duration::from_secs(60), &what, |pods| {
        labelled(pods, "role", "active") == [holder]
            && labelled(pods, "role", "passive").len() == others
    })
    .await
}

/// Names of the pods a Service's EndpointSlices list as ready.
pub fn ready_endpoints(slices: &[EndpointSlice]) -> BTreeSet<String> {
    slices
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
        .filter_map(|e| e.target_ref.as_ref().and_then(|r| r.name.clone()))
        .collect()
}

/// Waits until the Service's EndpointSlices list exactly `pods`.
pub async fn wait_endpoints(ns: &TestNamespace, service: &str, pods: &[&str], timeout: Duration) {
    let want: BTreeSet<String> = pods.iter().map(|p| p.to_string()).collect();
    let what = format!("service {service} to have endpoints {want:?}");
    wait_until::<EndpointSlice, _>(
        ns.api(),
        &format!("kubernetes.io/service-name={service}"),
        timeout,
        &what,
        |slices| ready_endpoints(slices) == want,
    )
    .await;
}

/// The taint up.sh puts on the real nodes when KWOK nodes run beside them
/// (`make bench`): theirs from the start, not a fault's aftermath.
const REAL_NODE_TAINT: &str = "baton.dev/real-node";

/// Waits until every real node is Ready, schedulable and without a taint
/// but up.sh's own (a fault's aftermath: the node lifecycle controller
/// lifts its taints once the node reports again).
pub async fn wait_nodes_healthy(cluster: &Cluster, timeout: Duration) {
    let names: BTreeSet<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
    let api: Api<Node> = Api::all(cluster.client.clone());
    wait_until::<Node, _>(
        api,
        "",
        timeout,
        "every real node Ready, schedulable and untainted",
        |nodes| {
            names.iter().all(|name| {
                nodes.iter().any(|n| {
                    n.name_any() == *name
                        && node_ready(n)
                        && n.spec.as_ref().is_none_or(|s| {
                            s.unschedulable != Some(true)
                                && s.taints.iter().flatten().all(|t| t.key == REAL_NODE_TAINT)
                        })
                })
            })
        },
    )
    .await;
}

/// The node reports Ready.
pub fn node_ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// When Lease `lease`'s current holder acquired it.
pub async fn lease_acquired(ns: &TestNamespace, lease: &str) -> k8s_openapi::jiff::Timestamp {
    let lease: Lease = ns.api().get(lease).await.expect("the Lease");
    lease
        .spec
        .and_then(|s| s.acquire_time)
        .expect("an acquired Lease")
        .0
}
