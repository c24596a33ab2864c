//! What the sidecar, the webhook and `kubectl baton` must agree on, in one
//! place and without I/O: the names of baton's annotations, labels and
//! env vars, the role label flags, the role a pod carries, the `/status`
//! JSON, and the parsers of the control annotations and the app-healthy
//! condition. Each side reads these; none re-declares them.

pub mod census;
pub mod controls;
pub mod role_labels;

use serde::{Deserialize, Serialize};

/// Prefix of baton's own annotations and labels.
pub const ANNOTATION_PREFIX: &str = "baton.dev/";

/// Help heading that marks the sidecar settings a pod may set by
/// annotation `baton.dev/<flag>`: the webhook turns those annotations into
/// the flags' env vars.
pub const ANNOTATION_HEADING: &str = "Settable by pod annotation baton.dev/<flag>";

/// The annotation a sidecar puts on its own pod when its proxy starts: its
/// peer port takes a hello and acknowledges a forwarded connection once
/// served (`proxy.rs`; decisions.md §22). Pods of an earlier build lack
/// it; forwarders then splice to them at once. The role-label admission
/// policy lets the sidecars write this one annotation, with this value.
pub const PEER_PROTOCOL_ANNOTATION: &str = "baton.dev/proxy-peer-protocol";
/// Its value: the peer protocol's version, the hello's last byte.
pub const PEER_PROTOCOL: &str = "1";

/// The env vars that the webhook sets on the sidecar it injects, beyond the
/// annotated settings (each is the `env` of a sidecar flag).
pub mod env {
    pub const POD_NAME: &str = "BATON_POD_NAME";
    pub const POD_NAMESPACE: &str = "BATON_POD_NAMESPACE";
    pub const POD_IP: &str = "BATON_POD_IP";
    pub const LEASE_NAME: &str = "BATON_LEASE_NAME";
    pub const PROBE_HOST: &str = "BATON_PROBE_HOST";
    pub const STATUS_ADDR: &str = "BATON_STATUS_ADDR";
    pub const PROXY_ADDR: &str = "BATON_PROXY_ADDR";
    pub const PROXY_PEER_ADDR: &str = "BATON_PROXY_PEER_ADDR";
}

/// The role a pod carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Active,
    Passive,
}

/// What the sidecar's `/status` shows.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub pod: String,
    pub namespace: String,
    pub pod_ip: Option<String>,
    pub lease: String,
    /// The role to act on: active only while the pod holds the Lease within
    /// its leadership deadline and is not handing it over
    /// (`State::outward_role`), so a holder past its deadline says passive
    /// even while its label cannot be changed, and a new holder says active
    /// as soon as its Lease write lands, before its label does. None until
    /// the first decision.
    pub role: Option<Role>,
    /// The role label on the pod as last seen (None: no or a foreign value).
    /// It lags `role` while the API server refuses or misses the relabel.
    pub label_role: Option<Role>,
    pub holder: Option<String>,
    /// Why no pod of the group can hold the Lease now, if that is so: it is
    /// held by something that is not a pod of the group.
    pub lease_problem: Option<String>,
    pub app_healthy: bool,
    pub app_last_failure: Option<String>,
    pub lease_transitions: i32,
    /// Whether the last Kubernetes API call succeeded.
    pub api_reachable: bool,
    /// Wall-clock time of the last role change (RFC 3339), for people.
    pub last_change: Option<String>,
    pub terminating: bool,
    /// Deleted while active: the app serves on until the new holder has
    /// had time to reach kube-proxy (`docs/design.md`, rule 8); the
    /// injected preStop hook (`/prestop`) waits for this to end.
    pub draining: bool,
    /// The group's Lease says `baton.dev/paused=true` (rule 10).
    pub paused: bool,
    /// Our Pod says `baton.dev/cordoned=true` (rule 10).
    pub cordoned: bool,
    /// The switchover asked for on the Lease, while it is under way.
    pub switchover: Option<String>,
    /// What the holder sees of its group's pods (`census`); the fields
    /// below are empty on the other pods and before the first list. Each
    /// has a default, so that the status of an older sidecar still parses.
    /// The pods of the group not being deleted, the holder included.
    #[serde(default)]
    pub group_pods: Option<usize>,
    /// The nodes they are scheduled on.
    #[serde(default)]
    pub group_nodes: Vec<String>,
    /// There is a standby, and every one runs on the holder's node.
    #[serde(default)]
    pub standbys_on_own_node: bool,
    /// The workloads the pods belong to, as `Kind/name`.
    #[serde(default)]
    pub group_owners: Vec<String>,
    /// What a user must be told about the group, one line each.
    #[serde(default)]
    pub group_warnings: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_reads_back_what_the_sidecar_serves() {
        let status = Status {
            pod: "web-0".into(),
            role: Some(Role::Active),
            label_role: Some(Role::Passive),
            holder: Some("web-0".into()),
            lease_transitions: 4,
            ..Status::default()
        };
        let json = serde_json::to_value(&status).expect("serializes");
        assert_eq!(json["role"], "active");
        assert_eq!(json["label_role"], "passive");
        let back: Status = serde_json::from_value(json).expect("deserializes");
        assert_eq!(back, status);
    }

    #[test]
    fn the_status_of_a_sidecar_without_the_group_fields_still_parses() {
        let mut json = serde_json::to_value(Status::default()).expect("serializes");
        let fields = json.as_object_mut().expect("an object");
        for key in [
            "group_pods",
            "group_nodes",
            "standbys_on_own_node",
            "group_owners",
            "group_warnings",
        ] {
            assert!(fields.remove(key).is_some(), "{key} is served");
        }
        let back: Status = serde_json::from_value(json).expect("deserializes");
        assert_eq!(back, Status::default());
    }
}
