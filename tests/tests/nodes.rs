//! Node events, on two real nodes: the holder's node partitioned then
//! healed, frozen whole then thawed, its kubelet alone stopped for longer
//! than the node lifecycle controller's grace period, and `kubectl drain` of
//! one node then the other under a PodDisruptionBudget. Each with both
//! Service kinds (the role label, and the holder's endpoint of
//! `baton.dev/service`), the partition and the drain also through a Service
//! of the whole group that targets the sidecars' proxy (README's install),
//! the two pods spread over the nodes, a client of the
//! ClusterIP in the control plane's network namespace (a node that survives
//! every fault here), under the never-two-active guard and a
//! never-two-ready-endpoints guard.
//!
//! A fault on a node hits every pod there, so these tests run one at a time
//! (and cargo runs this file alone, after or before the others). They run on
//! a multi-threaded runtime: the client keeps sending while a test waits on
//! a blocking call (kubectl drain).

use std::{collections::BTreeSet, time::Duration};

use baton_e2e::{
    clients::{self, Connections},
    harness::{
        Cluster, LeaseHistory, NeverTwoActive, ReadyEndpointsHistory, TestNamespace,
        lease_acquired, node_ready,
        nodes::{Fault, RealNode},
        pod_ip, pod_ready, poll_status, wait_endpoints, wait_for_holder, wait_for_object,
        wait_nodes_healthy, wait_roles,
    },
    spread::{self, Kind, Placed, SERVICE},
};
use baton_sidecar::contract::Role;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;

const T: Duration = Duration::from_secs(60);
/// kube-controller-manager's default node-monitor-grace-period (50 s), with
/// room for its 5 s monitor period and a busy machine.
const NODE_GRACE: Duration = Duration::from_secs(120);
/// What a client reads of a request cut in flight with its connection.
const IN_FLIGHT_CUT: &str = "connection closed before message completed";
/// The client's requests per second.
const RATE: u32 = 20;

/// One node event at a time on the cluster.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A group of two pods on two nodes, its Service, watchers and a client.
struct Spread {
    cluster: Cluster,
    ns: TestNamespace,
    guard: NeverTwoActive,
    endpoints: ReadyEndpointsHistory,
    leases: LeaseHistory,
    client: clients::Client,
    holder: String,
    standby: String,
    placed: Placed,
    _one: tokio::sync::MutexGuard<'static, ()>,
}

impl Spread {
    async fn deploy(test: &str, kind: Kind) -> Spread {
        let one = ONE_AT_A_TIME.lock().await;
        let cluster = Cluster::connect().await;
        assert!(
            cluster.nodes.len() >= 2,
            "these tests need two real nodes (BATON_REAL_NODES=2, as make test starts)"
        );
        wait_nodes_healthy(&cluster, NODE_GRACE).await;
        let ns = cluster.namespace(test).await;
        let guard = NeverTwoActive::start(ns.api(), "app=web", "role", "active").await;
        let leases = LeaseHistory::start(ns.api(), "web").await;
        let endpoints = ReadyEndpointsHistory::start(&ns, SERVICE).await;
        let placed = spread::deploy(&ns, kind).await;
        let (holder, standby) = (placed.holder.clone(), placed.standby.clone());
        let ip = ns.cluster_ip(&placed.client_service).await;
        let client = clients::Client::start(Connections::New, format!("http://{ip}/"), RATE)
            .expect("a client");
        client
            .wait_steady_on(&holder, 20)
            .await
            .expect("the client reaches the holder through the ClusterIP");
        Spread {
            cluster,
            ns,
            guard,
            endpoints,
            leases,
            client,
            holder,
            standby,
            placed,
            _one: one,
        }
    }

    /// The Lease moved from `old` to `new`, which alone is labelled active,
    /// is the Service's endpoint and answers the client.
    async fn moved(&self, old: &str, new: &str) {
        assert_eq!(wait_for_holder(&self.ns, "web", Some(old)).await, new);
        wait_roles(&self.ns, "app=web", new, 1).await;
        wait_endpoints(&self.ns, SERVICE, &[new], T).await;
        self.client
            .wait_steady_on(new, 20)
            .await
            .expect("the client moves to the new holder");
    }

    fn holder_node(&self) -> RealNode {
        self.placed.holder_node(&self.cluster)
    }

    /// Requests sent at or after `t0` that failed.
    fn failed_since(&self, t0: f64) -> usize {
        self.client
            .samples()
            .iter()
            .filter(|s| s.sent >= t0 && s.answer.is_err())
            .count()
    }

    /// The never-two-active and never-two-ready-endpoints guards hold; the
    /// Lease's holders; the sets of ready endpoints seen. Deletes the
    /// namespace and waits until both nodes are healthy again.
    async fn finish(self) -> (Vec<Option<String>>, Vec<BTreeSet<String>>) {
        let holders = self.leases.holders();
        let most = self.guard.assert_held().await;
        assert_eq!(most, 1, "some pod was active at some point");
        let views = self.endpoints.views();
        assert!(
            views.iter().all(|v| v.len() <= 1),
            "the Service listed two ready endpoints at once: {views:?}"
        );
        self.ns.delete().await;
        wait_nodes_healthy(&self.cluster, NODE_GRACE).await;
        (holders, views)
    }
}

/// The holder's node is lost to `fault` and comes back; in between, the
/// standby on the other node takes the Lease once it expired, relabels the
/// old pod passive through the API server and serves the client. Back,
/// the old pod finds the Lease another's and stays passive: the Lease
/// changed hands once.
///
/// - `Partition`, the node's link down: the holder cannot renew and tells
///   its app passive at renew-deadline, before the new Lease begins.
/// - `Freeze`, everything of the node frozen (kubelet, containerd, shims
///   and containers): the frozen sidecar tells its app nothing until it is
///   thawed, and then passive.
async fn holders_node_lost_then_back(kind: Kind, fault: Fault) {
    let what = match fault {
        Fault::Partition => "partition",
        Fault::Freeze => "node frozen",
        Fault::StopKubelet => unreachable!("kubelet_stopped covers it"),
    };
    let s = Spread::deploy(&format!("nodes-{}", what.replace(' ', "-")), kind).await;
    let (old, new) = (s.holder.clone(), s.standby.clone());
    let role_file = s.ns.follow_role_file(&old).await;
    let t0 = clients::now();
    let lost = s
        .holder_node()
        .inject(fault)
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    s.moved(&old, &new).await;
    if fault == Fault::Partition {
        // The old holder told its app passive before the new Lease began.
        let began = lease_acquired(&s.ns, "web").await;
        let role = s.ns.role_file(&old).await;
        assert_eq!(role["role"], "passive", "{old}'s role file: {role}");
        let turned = role_file.turned("passive");
        assert!(
            turned.is_some_and(|t| t < began),
            "{old}'s role file said passive at {turned:?}, not before the new Lease began at {began}"
        );
    }
    let first = s.client.first_answer_by(&new, t0).expect("an answer");
    let failed = s.failed_since(t0);
    lost.undo()
        .unwrap_or_else(|e| panic!("undoing the {what}: {e}"));
    // Back: the old sidecar sees the new holder and stays passive.
    let ip = pod_ip(&s.ns, &old).await;
    let status = poll_status(&ip, T, |st| st.holder.as_deref() == Some(new.as_str())).await;
    assert_eq!(
        status.as_ref().and_then(|st| st.holder.as_deref()),
        Some(new.as_str()),
        "{old} after the {what}: {status:?}"
    );
    assert_eq!(
        status.as_ref().and_then(|st| st.role),
        Some(Role::Passive),
        "{old} after the {what}: {status:?}"
    );
    let role = s.ns.role_file(&old).await;
    assert_eq!(role["role"], "passive", "{old}'s role file: {role}");
    wait_roles(&s.ns, "app=web", &new, 1).await;
    s.client
        .wait_steady_on(&new, 20)
        .await
        .expect("the new holder alone serves after the fault is undone");
    eprintln!(
        "{what} ({kind:?}): first answer by {new} {:.2} s after the fault; {failed} failed requests",
        first - t0
    );
    let (holders, _) = s.finish().await;
    assert_eq!(holders, [Some(old), Some(new)], "one change of hands");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holders_node_partitioned_then_healed_role_label() {
    holders_node_lost_then_back(Kind::Labels, Fault::Partition).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holders_node_partitioned_then_healed_holder_endpoint() {
    holders_node_lost_then_back(Kind::HolderEndpoint, Fault::Partition).await;
}

/// Through the proxy the partitioned pod stays an endpoint of the Service
/// until the node lifecycle controller marks it not ready: the connections
/// kube-proxy still sends to it fail meanwhile (counted, not bounded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holders_node_partitioned_then_healed_whole_group_through_the_proxy() {
    holders_node_lost_then_back(Kind::Proxy, Fault::Partition).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holders_node_frozen_then_thawed_role_label() {
    holders_node_lost_then_back(Kind::Labels, Fault::Freeze).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holders_node_frozen_then_thawed_holder_endpoint() {
    holders_node_lost_then_back(Kind::HolderEndpoint, Fault::Freeze).await;
}

/// kubelet alone stops on the holder's node, while its containers and
/// network live: the holder keeps renewing. After node-monitor-grace-period
/// the node lifecycle controller marks the node NotReady and the holder's
/// pod Ready=False; the holder sees its pod so marked and hands over to the
/// Ready standby on the other node (design rule 13), telling its app
/// passive before the write. Returns the sets of ready endpoints seen (of
/// the role-label or holder's-endpoint Service) and the client's failed
/// requests, and checks that the Lease changed hands once, to the standby,
/// and stays there once kubelet is back.
async fn kubelet_stopped(kind: Kind) -> (Vec<BTreeSet<String>>, usize) {
    let s = Spread::deploy("nodes-kubelet", kind).await;
    let (old, new) = (s.holder.clone(), s.standby.clone());
    let node = s.holder_node();
    let t0 = clients::now();
    let stopped = node
        .inject(Fault::StopKubelet)
        .expect("stopping the node's kubelet");
    let nodes: Api<Node> = Api::all(s.cluster.client.clone());
    wait_for_object::<Node, _>(
        nodes.clone(),
        &node.name,
        NODE_GRACE,
        "the node NotReady",
        |n| !node_ready(n),
    )
    .await;
    wait_for_object::<Pod, _>(s.ns.api(), &old, T, "the holder's pod not Ready", |p| {
        !pod_ready(p)
    })
    .await;
    s.moved(&old, &new).await;
    // The old holder told its app passive before the new Lease began. Its
    // sidecar runs on (only kubelet is stopped), so it rewrites its role
    // file when it sees the new holder: the time it turned passive is its
    // `/status`'s `last_change`.
    let began = lease_acquired(&s.ns, "web").await;
    let role = s.ns.role_file(&old).await;
    assert_eq!(role["role"], "passive", "{old}'s role file: {role}");
    let ip = pod_ip(&s.ns, &old).await;
    let status = poll_status(&ip, T, |st| st.role == Some(Role::Passive)).await;
    let turned: k8s_openapi::jiff::Timestamp = status
        .as_ref()
        .and_then(|st| st.last_change.as_deref())
        .unwrap_or_else(|| panic!("{old}'s status has no last change: {status:?}"))
        .parse()
        .expect("last_change is a timestamp");
    assert!(
        turned <= began,
        "{old} turned passive at {turned}, after the new Lease began at {began}"
    );
    let handed_over = s.failed_since(t0);
    stopped.undo().expect("continuing kubelet");
    // Ready again, the old pod stays a standby: no switch back.
    spread::wait_back(&s.cluster, &s.ns, &node.name, &old, &new).await;
    wait_roles(&s.ns, "app=web", &new, 1).await;
    s.client
        .wait_steady_on(&new, 20)
        .await
        .expect("the new holder alone serves once kubelet is back");
    let failed = s.failed_since(t0);
    eprintln!(
        "kubelet stopped ({kind:?}): {handed_over} requests failed until the standby served, {failed} in all"
    );
    let (holders, views) = s.finish().await;
    assert_eq!(holders, [Some(old), Some(new)], "one change of hands");
    (views, failed)
}

/// With the role label, the Service's only endpoint is the holder's pod,
/// which the node lifecycle controller marks not Ready; the handover moves
/// the label, and the Service, to the standby while kubelet is still
/// stopped. The requests sent between the two EndpointSlice changes fail,
/// as in any unplanned switch of that Service kind (the second change waits
/// up to kube-proxy's 1 s `minSyncPeriod`): counted, and bounded by a few
/// seconds' worth, where before this rule every request failed until
/// kubelet returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holders_kubelet_stopped_hands_the_role_label_service_to_the_standby() {
    let (_, failed) = kubelet_stopped(Kind::Labels).await;
    assert!(
        failed < 3 * RATE as usize,
        "{failed} requests failed: more than 3 seconds' worth"
    );
}

/// The holder's own endpoint of `baton.dev/service` does not follow the
/// pod's Ready condition; the handover moves it to the standby in one
/// change: the Service never lists no endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holders_kubelet_stopped_moves_the_holder_endpoint_in_one_change() {
    let (views, _) = kubelet_stopped(Kind::HolderEndpoint).await;
    assert!(
        views.iter().skip(1).all(|v| v.len() == 1),
        "the Service always had one ready endpoint: {views:?}"
    );
}

/// Through a Service of the whole group, the holder's pod turning not
/// Ready leaves the standby's pod as the endpoint, whose proxy forwards to
/// the holder, then serves itself once the handover lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holders_kubelet_stopped_hands_over_through_the_standbys_proxy() {
    let (_, failed) = kubelet_stopped(Kind::Proxy).await;
    assert!(
        failed < RATE as usize,
        "{failed} requests failed: more than a second's worth"
    );
}

/// `kubectl drain` of the holder's node, then (once it is back in service,
/// as an upgrade does it) of the other node: the PodDisruptionBudget lets
/// one pod go at a time, the evicted pod waits Pending until its node is
/// uncordoned (the spread counts a cordoned node), the holder hands over
/// when evicted, and no request fails (through the proxy, none but those
/// in flight at a switch). The Lease changes hands once per drained node
/// that hosted the holder, and on no other.
async fn drain_both(kind: Kind) {
    let s = Spread::deploy("nodes-drain", kind).await;
    let t0 = clients::now();
    let first = s.placed.node_of[&s.holder].clone();
    let second = s.placed.node_of[&s.standby].clone();
    let mut holder_nodes = 0;
    for node in [&first, &second] {
        if spread::holder_on(&s.ns, node).await {
            holder_nodes += 1;
        }
        let now_holder = spread::drain(&s.cluster, &s.ns, node).await;
        s.client
            .wait_steady_on(&now_holder, 20)
            .await
            .expect("the client reaches the holder after the drain");
        spread::uncordon(&s.cluster, &s.ns, node, &now_holder).await;
    }
    let failed = s.failed_since(t0);
    let sent = s.client.samples().iter().filter(|x| x.sent >= t0).count();
    let errors: Vec<String> = s
        .client
        .samples()
        .iter()
        .filter(|x| x.sent >= t0)
        .filter_map(|x| {
            x.answer
                .as_ref()
                .err()
                .map(|e| format!("{:.2} s: {e}", x.sent - t0))
        })
        .collect();
    eprintln!("drain of both nodes ({kind:?}): {failed} of {sent} requests failed {errors:?}");
    let (holders, _) = s.finish().await;
    let mut held: Vec<&String> = holders.iter().flatten().collect();
    held.dedup();
    let switches_seen = held.len() - 1;
    if kind == Kind::Proxy {
        // Through the proxy a request in flight on a connection at the
        // switch is cut with it (design rule 11: nothing of a demoted app
        // reaches a client afterwards): under load one or two per run were.
        // Nothing else fails, and never more than a handful per switch.
        assert!(
            errors.iter().all(|e| e.contains(IN_FLIGHT_CUT)),
            "only requests in flight at a switch failed: {errors:?}"
        );
        assert!(
            failed <= 3 * switches_seen,
            "at most 3 requests cut per switch ({switches_seen}): {errors:?}"
        );
    } else {
        assert_eq!(failed, 0, "no request failed through both drains");
    }
    // A handover releases the Lease between two holders (None).
    eprintln!(
        "drain ({kind:?}): {switches_seen} switches, {holder_nodes} drained nodes hosted the holder: {holders:?}"
    );
    assert_eq!(
        switches_seen, holder_nodes,
        "one switch per drained node that hosted the holder: {holders:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_of_each_node_in_turn_fails_no_request_role_label() {
    drain_both(Kind::Labels).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_of_each_node_in_turn_fails_no_request_holder_endpoint() {
    drain_both(Kind::HolderEndpoint).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_of_each_node_in_turn_cuts_only_requests_in_flight_through_the_proxy() {
    drain_both(Kind::Proxy).await;
}
