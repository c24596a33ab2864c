//! What the end-to-end tests share: a connection to the local cluster
//! (`make cluster-up`, or `make test` which starts one), a namespace per
//! test, waits on watches with timeouts, and access to the containers that
//! the real nodes run (their host pids through containerd, their logs and
//! emptyDir volumes through kubelet's folders), and faults on those nodes
//! ([`nodes`]).
//!
//! Everything is used as `baton_e2e::harness::X`; each file holds one
//! concern:
//!
//! | file (`harness/`) | what it holds |
//! | --- | --- |
//! | `cluster.rs` | [`Cluster`] (the connection, kubectl, `ctr` on a real node), [`TestNamespace`] (a namespace per test, kubectl and `kubectl baton` in it, clients with a service account's token), [`repo_root`], [`cached_tool`] (helm and the like, built once into the cache) |
//! | `pods.rs` | a pod's node, IP, readiness, sidecar restarts and running containers; [`TestNamespace::pid`], [`TestNamespace::log_tail`], [`TestNamespace::empty_dir`], [`TestNamespace::role_file`], [`TestNamespace::pod_dir`]; [`signal`] to a host pid; which pods carry a label ([`labelled`], [`serving_active`]) |
//! | `waits.rs` | bounded waits on watches: [`wait_until`], [`wait_for_object`], [`wait_for_holder`], [`wait_roles`], [`wait_endpoints`] (and [`ready_endpoints`]), [`wait_nodes_healthy`] (and [`node_ready`]), [`lease_acquired`]; the watch state they share (`Listed`) |
//! | `guards.rs` | watches checked at a test's end: [`NeverTwoActive`] (I1), [`ReadyEndpointsHistory`] (and [`endpoint_gaps`] over its timed views), [`LeaseHistory`] |
//! | `pod_http.rs` | HTTP to pods: the shared client [`http`], the sidecar's status server ([`sidecar_get`]; its `/status` read as the contract's `Status`: [`sidecar_status`], [`get_status`], [`poll_status`], [`wait_status`], [`wait_role`], [`parse_status`], [`wait_app_healthy`]), the demo app's [`set_app_health`] |
//! | `nodes.rs` | the real nodes and faults on them (public module [`nodes`]) |
//! | `outage.rs` | the chaos tests' additions: a declared control-plane outage for [`NeverTwoActive`], [`outage::ActiveTimeline`] (public module [`outage`]) |

mod cluster;
mod guards;
mod pod_http;
mod pods;
mod waits;

pub use cluster::{Cluster, TestNamespace, cached_tool, repo_root};
pub use guards::{LeaseHistory, NeverTwoActive, ReadyEndpointsHistory, endpoint_gaps};
pub use pod_http::{
    get_status, http, parse_status, poll_status, set_app_health, sidecar_get, sidecar_status,
    wait_app_healthy, wait_role, wait_status,
};
pub use pods::{
    RoleFileHistory, labelled, pod_ip, pod_node, pod_ready, running_container_id, serving_active,
    sidecar_restarts, signal,
};
pub use waits::{
    lease_acquired, node_ready, ready_endpoints, wait_endpoints, wait_for_holder, wait_for_object,
    wait_nodes_healthy, wait_roles, wait_until,
};

/// The chaos tests' additions (tests/tests/chaos.rs).
pub mod outage;

/// The real nodes and faults on them (tests/tests/nodes.rs, the bench).
pub mod nodes;
