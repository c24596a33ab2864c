//! A slow API server, not a dead one, under groups that serve clients: the
//! measure shared by the e2e test (`tests/tests/brownout.rs`) and `make
//! bench`. kube-apiserver is frozen and resumed in a duty cycle
//! ([`Brownout`]), so that every call waits up to the freeze, while two
//! groups with the sidecar's default timings each serve two clients (one
//! keeping its connections, one opening one per request)
//! through the ClusterIP: one through the role-label Service, one through
//! the README's Service of the whole group (the sidecars' proxy). Counted
//! per group: role changes told to the apps, time with no pod told active,
//! Lease transitions, failed requests, answers by another pod than the
//! holder, and baton's API calls a second before and during the brownout.

use std::{collections::BTreeSet, time::Duration};

use k8s_openapi::api::coordination::v1::Lease;

use crate::{
    clients::{Client, Connections, Sample, client_through, now},
    group::Group,
    harness::{
        self, Cluster, ReadyEndpointsHistory,
        outage::{Brownout, ToldActive},
        pod_ip,
    },
    prometheus::family_sum,
    workload::{self, ProxiedService},
};

/// Requests a second per client.
pub const RATE: u32 = 50;
/// The API server runs this long between freezes: enough to drain what
/// queued up during one.
pub const RUNNING: Duration = Duration::from_millis(500);

/// The Service shape a client meets the group through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `role: active` selects the one pod (`web-active`).
    RoleLabel,
    /// The whole group, through each sidecar's proxy (the README's).
    WholeGroup,
}

impl Shape {
    pub fn label(self) -> &'static str {
        match self {
            Shape::RoleLabel => "role label",
            Shape::WholeGroup => "whole group (proxy)",
        }
    }
}

/// How slow, for how long.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// The longest an API call waits: the freeze of each cycle.
    pub frozen: Duration,
    /// Steady state before, to compare baton's call rate with.
    pub baseline: Duration,
    pub brownout: Duration,
}

/// What a brownout did to one group.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub shape: Shape,
    pub frozen: Duration,
    /// Changes of the role a sidecar told its app (`/status`, sampled).
    pub role_changes: usize,
    pub without_active: Duration,
    pub most_active: usize,
    pub transitions: i32,
    /// The Lease's holders, from its watch.
    pub holders: Vec<Option<String>>,
    /// Every set of pods the Service's EndpointSlices listed as Ready, from
    /// the clients' steady state to the end, and whether that watch failed
    /// at some point (so that a set may be missing).
    pub ready_endpoints: Vec<BTreeSet<String>>,
    pub endpoints_watch_failed: bool,
    pub requests: usize,
    pub failed: usize,
    /// The distinct errors of the failed requests, the first few.
    pub errors: Vec<String>,
    pub by_another_pod: usize,
    pub calls_per_s_before: f64,
    pub calls_per_s_during: f64,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "API server frozen {:.1} s in every {:.1} s, {}: {} role changes, \
             {:.1} s with no pod told active, at most {} told active, {} lease transitions, \
             holders {:?}, ready endpoints {:?}{}, {} of {} requests failed {:?}, \
             {} answered by another pod, API calls {:.2}/s before, {:.2}/s during",
            self.frozen.as_secs_f64(),
            (self.frozen + RUNNING).as_secs_f64(),
            self.shape.label(),
            self.role_changes,
            self.without_active.as_secs_f64(),
            self.most_active,
            self.transitions,
            self.holders,
            self.ready_endpoints,
            if self.endpoints_watch_failed {
                " (that watch failed at some point)"
            } else {
                ""
            },
            self.failed,
            self.requests,
            self.errors,
            self.by_another_pod,
            self.calls_per_s_before,
            self.calls_per_s_during,
        )
    }
}

/// A group serving a client, and what its sidecars tell their apps.
struct Served {
    shape: Shape,
    group: Group,
    holder: String,
    ips: Vec<String>,
    /// One client keeping its connections, one opening one per request
    /// (which an endpoint dropped from the Service would fail at once).
    clients: Vec<Client>,
    endpoints: ReadyEndpointsHistory,
    told: ToldActive,
    transitions: i32,
}

async fn transitions(group: &Group) -> i32 {
    let lease: Lease = group.ns.api().get(&group.name).await.expect("the Lease");
    lease
        .spec
        .and_then(|s| s.lease_transitions)
        .unwrap_or_default()
}

async fn serve(test: &str, shape: Shape, placement: &str) -> Served {
    let (group, holder) = Group::deploy_placed(test, 2, placement).await;
    let service = match shape {
        Shape::RoleLabel => format!("{}-active", group.name),
        Shape::WholeGroup => {
            let kind = ProxiedService::WholeGroup;
            group
                .ns
                .apply(&workload::proxied_service(&group.name, kind));
            workload::proxied_service_name(&group.name)
        }
    };
    let mut clients = Vec::new();
    for connections in Connections::BOTH {
        clients.push(client_through(&group.ns, &service, connections, RATE, &holder).await);
    }
    let endpoints = ReadyEndpointsHistory::start(&group.ns, &service).await;
    let mut ips = Vec::new();
    for i in 0..2 {
        ips.push(pod_ip(&group.ns, &format!("{}-{i}", group.name)).await);
    }
    let told = ToldActive::start(ips.clone());
    let transitions = transitions(&group).await;
    Served {
        shape,
        group,
        holder,
        ips,
        clients,
        endpoints,
        told,
        transitions,
    }
}

/// The API calls the sidecars at `ips` have made so far.
async fn api_calls(ips: &[String]) -> f64 {
    let http = harness::http();
    let mut calls = 0.0;
    for ip in ips {
        let text = http
            .get(format!("http://{ip}:9095/metrics"))
            .send()
            .await
            .expect("the sidecar's status server answers")
            .text()
            .await
            .expect("a body");
        calls += family_sum(&text, "baton_api_calls_total");
    }
    calls
}

/// Both groups (pods placed by `placement`'s pod-spec lines), a baseline,
/// then the API server frozen for `plan.frozen` in every
/// `plan.frozen + RUNNING`; the groups are deleted after.
pub async fn run(cluster: &Cluster, name: &str, plan: Plan, placement: &str) -> Vec<Outcome> {
    let served = [
        serve(&format!("{name}-role"), Shape::RoleLabel, placement).await,
        serve(&format!("{name}-group"), Shape::WholeGroup, placement).await,
    ];
    let mut before = Vec::new();
    for s in &served {
        before.push(api_calls(&s.ips).await);
    }
    tokio::time::sleep(plan.baseline).await;
    let mut at_start = Vec::new();
    for s in &served {
        at_start.push(api_calls(&s.ips).await);
    }
    let began = now();
    let slow = Brownout::start(
        cluster.component_pid("kube-apiserver"),
        plan.frozen,
        RUNNING,
    );
    tokio::time::sleep(plan.brownout).await;
    slow.stop();
    let ended = now();
    let mut outcomes = Vec::new();
    for (i, s) in served.into_iter().enumerate() {
        let during = api_calls(&s.ips).await - at_start[i];
        let samples: Vec<Sample> = s
            .clients
            .iter()
            .flat_map(Client::samples)
            .filter(|x| x.sent >= began && x.sent <= ended)
            .collect();
        let transitions = transitions(&s.group).await - s.transitions;
        drop(s.clients);
        let endpoints_watch_failed = s.endpoints.went_blind();
        let ready_endpoints = s.endpoints.timed().into_iter().map(|(_, v)| v).collect();
        outcomes.push(Outcome {
            shape: s.shape,
            frozen: plan.frozen,
            role_changes: s.told.changes(),
            without_active: s.told.without_active(),
            most_active: s.told.most_active(),
            transitions,
            holders: s.group.finish().await,
            ready_endpoints,
            endpoints_watch_failed,
            requests: samples.len(),
            failed: samples.iter().filter(|x| x.answer.is_err()).count(),
            errors: first_errors(&samples),
            by_another_pod: samples
                .iter()
                .filter(|x| matches!(&x.answer, Ok(p) if *p != s.holder))
                .count(),
            calls_per_s_before: (at_start[i] - before[i]) / plan.baseline.as_secs_f64(),
            calls_per_s_during: during / plan.brownout.as_secs_f64(),
        });
    }
    outcomes
}

/// The distinct errors among `samples`, at most three.
fn first_errors(samples: &[Sample]) -> Vec<String> {
    let mut errors: Vec<String> = Vec::new();
    for e in samples.iter().filter_map(|x| x.answer.as_ref().err()) {
        if errors.len() < 3 && !errors.contains(e) {
            errors.push(e.clone());
        }
    }
    errors
}
