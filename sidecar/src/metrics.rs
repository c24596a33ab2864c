//! The sidecar's metric families, registered once, served at `/metrics`.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

type Labels = Vec<(&'static str, &'static str)>;

/// Cheap to clone: every field is a handle to the shared metric.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    role_active: Gauge,
    app_healthy: Gauge,
    lease_transitions: Gauge,
    lease_held_by_stranger: Gauge,
    role_changes: Family<Labels, Counter>,
    probes: Family<Labels, Counter>,
    probe_duration: Histogram,
    api_calls: Family<Labels, Counter>,
    api_errors: Family<Labels, Counter>,
    promotions_refused: Counter,
    handover_duration: Histogram,
    group_paused: Gauge,
    group_standbys_same_node: Gauge,
    group_owners: Gauge,
    cordoned: Gauge,
    switchovers: Family<Labels, Counter>,
    proxy_connections: Family<Labels, Counter>,
    proxy_cuts: Family<Labels, Counter>,
    proxy_open: Gauge,
}

/// Counts a proxied connection as open until dropped.
pub struct OpenConnection(Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("baton");
        let m = Metrics {
            registry: Arc::default(),
            role_active: Gauge::default(),
            app_healthy: Gauge::default(),
            lease_transitions: Gauge::default(),
            lease_held_by_stranger: Gauge::default(),
            role_changes: Family::default(),
            probes: Family::default(),
            probe_duration: Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            ]),
            api_calls: Family::default(),
            api_errors: Family::default(),
            promotions_refused: Counter::default(),
            handover_duration: Histogram::new([
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            group_paused: Gauge::default(),
            group_standbys_same_node: Gauge::default(),
            group_owners: Gauge::default(),
            cordoned: Gauge::default(),
            switchovers: Family::default(),
            proxy_connections: Family::default(),
            proxy_cuts: Family::default(),
            proxy_open: Gauge::default(),
        };
        registry.register(
            "role_active",
            "1 while this pod is active: holding the Lease within its leadership deadline, else 0",
            m.role_active.clone(),
        );
        registry.register(
            "app_healthy",
            "1 when the app passes its probe thresholds, else 0",
            m.app_healthy.clone(),
        );
        registry.register(
            "lease_transitions",
            "leaseTransitions of the group's Lease as last seen (a fencing token)",
            m.lease_transitions.clone(),
        );
        registry.register(
            "lease_held_by_stranger",
            "1 while the group's Lease is held by something that is not a pod of the group, else 0",
            m.lease_held_by_stranger.clone(),
        );
        registry.register(
            "role_changes",
            "Changes of this pod's role, by the role taken",
            m.role_changes.clone(),
        );
        registry.register("probes", "App probes by result", m.probes.clone());
        registry.register(
            "probe_duration_seconds",
            "Time an app probe took",
            m.probe_duration.clone(),
        );
        registry.register(
            "api_calls",
            "Kubernetes API calls the sidecar's loop started, by operation (a promotion, which lists the group and patches labels, counts once; watches are not counted)",
            m.api_calls.clone(),
        );
        registry.register(
            "api_errors",
            "Failed Kubernetes API calls by operation",
            m.api_errors.clone(),
        );
        registry.register(
            "promotions_refused",
            "Promotions of this pod refused at admission (the Lease-holder policy), retried after a short back-off",
            m.promotions_refused.clone(),
        );
        registry.register(
            "handover_duration_seconds",
            "From deciding to give up the Lease to having released it",
            m.handover_duration.clone(),
        );
        registry.register(
            "group_paused",
            "1 while the group's Lease says baton.dev/paused=true (automatic failover off), else 0",
            m.group_paused.clone(),
        );
        registry.register(
            "group_standbys_same_node",
            "1 on the holder while the group has a standby and every standby runs on the holder's node (a failure of that node takes the whole group), else 0",
            m.group_standbys_same_node.clone(),
        );
        registry.register(
            "group_owners",
            "On the holder: how many workloads (StatefulSet, Deployment, ...) the group's pods belong to, more than 1 being a misconfiguration; 0 on the other pods",
            m.group_owners.clone(),
        );
        registry.register(
            "pod_cordoned",
            "1 while this pod says baton.dev/cordoned=true (it never becomes active), else 0",
            m.cordoned.clone(),
        );
        registry.register(
            "switchovers",
            "Switchovers this pod started as holder (handed_over), and those nobody took so that it kept the role (taken_back)",
            m.switchovers.clone(),
        );
        registry.register(
            "proxy_connections",
            "What became of the connections the proxy accepted, by listener (front: the Service's port, peer: forwarded by another pod of the group): local: spliced to the app; forward: sent to the holder; no_route: closed, not served within the route wait; and, before one of those, each try that was not served: unreachable: the app or the holder refused; rerouted: the pod forwarded to did not serve it; and moved: a connection whose route changed moved to the new one instead of being closed (nothing passed on yet, or HTTP/1.1 between requests), counted again there",
            m.proxy_connections.clone(),
        );
        registry.register(
            "proxy_cuts",
            "Proxied connections closed because their route changed (this pod demoted, or the holder changed), by listener",
            m.proxy_cuts.clone(),
        );
        registry.register(
            "proxy_open_connections",
            "Connections the proxy carries now",
            m.proxy_open.clone(),
        );
        *m.registry.lock().expect("fresh mutex") = registry;
        m
    }

    pub fn set_group_paused(&self, paused: bool) {
        self.group_paused.set(i64::from(paused));
    }

    /// The holder's census of its group; (false, 0) on the other pods.
    pub fn set_group_census(&self, standbys_same_node: bool, owners: usize) {
        self.group_standbys_same_node
            .set(i64::from(standbys_same_node));
        self.group_owners
            .set(i64::try_from(owners).unwrap_or(i64::MAX));
    }

    pub fn set_cordoned(&self, cordoned: bool) {
        self.cordoned.set(i64::from(cordoned));
    }

    pub fn switchover(&self, result: &'static str) {
        self.switchovers
            .get_or_create(&vec![("result", result)])
            .inc();
    }

    pub fn proxy_connection(&self, listener: &'static str, result: &'static str) {
        self.proxy_connections
            .get_or_create(&vec![("listener", listener), ("result", result)])
            .inc();
    }

    pub fn proxy_cut(&self, listener: &'static str) {
        self.proxy_cuts
            .get_or_create(&vec![("listener", listener)])
            .inc();
    }

    /// One more open connection, until the returned guard drops.
    pub fn proxy_open(&self) -> OpenConnection {
        self.proxy_open.inc();
        OpenConnection(self.proxy_open.clone())
    }

    pub fn observe_probe(&self, trigger: &'static str, result: &'static str, took: Duration) {
        self.probes
            .get_or_create(&vec![("trigger", trigger), ("result", result)])
            .inc();
        self.probe_duration.observe(took.as_secs_f64());
    }

    pub fn set_role(&self, active: bool, changed: bool) {
        self.role_active.set(i64::from(active));
        if changed {
            let role = if active { "active" } else { "passive" };
            self.role_changes.get_or_create(&vec![("role", role)]).inc();
        }
    }

    pub fn set_app_healthy(&self, healthy: bool) {
        self.app_healthy.set(i64::from(healthy));
    }

    pub fn set_lease_transitions(&self, transitions: i32) {
        self.lease_transitions.set(i64::from(transitions));
    }

    pub fn set_lease_held_by_stranger(&self, stranger: bool) {
        self.lease_held_by_stranger.set(i64::from(stranger));
    }

    pub fn api_call(&self, operation: &'static str) {
        self.api_calls
            .get_or_create(&vec![("operation", operation)])
            .inc();
    }

    pub fn api_error(&self, operation: &'static str) {
        self.api_errors
            .get_or_create(&vec![("operation", operation)])
            .inc();
    }

    pub fn promotion_refused(&self) {
        self.promotions_refused.inc();
    }

    pub fn observe_handover(&self, took: Duration) {
        self.handover_duration.observe(took.as_secs_f64());
    }

    /// The Prometheus text exposition of every family.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_prefixed_and_carry_units() {
        let m = Metrics::new();
        m.observe_probe("period", "success", Duration::from_millis(3));
        m.set_role(true, true);
        m.api_error("renew");
        m.api_call("renew lease");
        let text = m.encode();
        for needle in [
            "baton_probes_total{trigger=\"period\",result=\"success\"} 1",
            "baton_role_active 1",
            "baton_role_changes_total{role=\"active\"} 1",
            "baton_api_errors_total{operation=\"renew\"} 1",
            "baton_api_calls_total{operation=\"renew lease\"} 1",
            "baton_probe_duration_seconds_count 1",
            "# EOF",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
