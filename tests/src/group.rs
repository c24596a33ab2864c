//! A group of demo-app pods with hand-written sidecars on the real node,
//! its Service, and the watches every test of it keeps: the never-two-active
//! guard and the Lease's holders (tests/tests/sidecar.rs, controls.rs).

use std::time::Duration;

use k8s_openapi::api::{coordination::v1::Lease, core::v1::Pod, events::v1::Event};
use kube::Api;

use crate::{
    harness::{
        Cluster, LeaseHistory, NeverTwoActive, TestNamespace, labelled, wait_endpoints,
        wait_for_object, wait_until,
    },
    workload,
};

const T: Duration = Duration::from_secs(60);

/// A group of `replicas` pods with sidecars, its Service, and its watchers.
pub struct Group {
    pub ns: TestNamespace,
    pub name: String,
    guard: NeverTwoActive,
    history: LeaseHistory,
}

impl Group {
    pub async fn deploy(test: &str, replicas: u32) -> (Group, String) {
        Self::deploy_with(test, replicas, &[]).await
    }

    /// [`Group::deploy`] with more env for the sidecars.
    pub async fn deploy_with(test: &str, replicas: u32, env: &[(&str, &str)]) -> (Group, String) {
        Self::deploy_as(test, replicas, env, false, "").await
    }

    /// [`Group::deploy`] with pod-spec lines that place the pods (such as
    /// [`workload::ON_REAL_NODE`] where KWOK nodes run beside the real one).
    pub async fn deploy_placed(test: &str, replicas: u32, placement: &str) -> (Group, String) {
        Self::deploy_as(test, replicas, &[], false, placement).await
    }

    /// [`Group::deploy`] in a namespace that enforces the restricted Pod
    /// Security profile, with pods written to meet it.
    pub async fn deploy_restricted(test: &str, replicas: u32) -> (Group, String) {
        Self::deploy_as(test, replicas, &[], true, "").await
    }

    async fn deploy_as(
        test: &str,
        replicas: u32,
        env: &[(&str, &str)],
        restricted: bool,
        placement: &str,
    ) -> (Group, String) {
        let group = Group::empty(test).await;
        let ns = &group.ns;
        if restricted {
            ns.kubectl_ok(
                &[
                    "label",
                    "namespace",
                    &ns.name,
                    "pod-security.kubernetes.io/enforce=restricted",
                ],
                None,
            );
        }
        let name = group.name.clone();
        // The role file goes to the sidecar's emptyDir, which the test
        // reads through kubelet's folder.
        let role_file = format!("{}/role.json", workload::RUN_DIR);
        let mut env = env.to_vec();
        env.push(("BATON_ROLE_FILE", &role_file));
        let set = workload::statefulset_placed(&name, replicas, true, &env, placement);
        ns.apply(&if restricted {
            workload::restricted(&set)
        } else {
            set
        });
        ns.apply(&workload::active_service(&name));
        let holder = group.wait_for_new_holder(None).await;
        // Every test starts from warm standbys: without this a standby whose
        // app is still starting cannot take over, and a re-created holder
        // (same name) may take the Lease back first.
        wait_until::<Pod, _>(
            group.pods(),
            "app=web",
            T,
            &format!("{replicas} pods with an IP"),
            |pods| {
                pods.len() == replicas as usize
                    && pods
                        .iter()
                        .all(|p| p.status.as_ref().is_some_and(|s| s.pod_ip.is_some()))
            },
        )
        .await;
        for i in 0..replicas {
            group.wait_app_healthy(&format!("{}-{i}", group.name)).await;
        }
        (group, holder)
    }

    /// A namespace for the group `web` with its watchers started and
    /// nothing in it yet: the test writes the group's workloads (all pods
    /// labelled `app: web`, the Lease named `web`) and its Services.
    pub async fn empty(test: &str) -> Group {
        let cluster = Cluster::connect().await;
        let ns = cluster.namespace(test).await;
        let name = "web".to_string();
        let guard = NeverTwoActive::start(ns.api(), "app=web", "role", "active").await;
        let history = LeaseHistory::start(ns.api(), &name).await;
        Group {
            ns,
            name,
            guard,
            history,
        }
    }

    /// Waits (bounded) until the pod's sidecar reports its app healthy.
    pub async fn wait_app_healthy(&self, pod: &str) {
        crate::harness::wait_app_healthy(&self.ns, pod).await;
    }

    pub fn pods(&self) -> Api<Pod> {
        self.ns.api()
    }

    /// Waits until the Lease names a holder other than `old`, that pod alone
    /// is labelled active, and the Service's only endpoint is that pod.
    pub async fn wait_for_new_holder(&self, old: Option<&str>) -> String {
        let lease = wait_for_object::<Lease, _>(
            self.ns.api(),
            &self.name,
            T,
            &format!("a holder other than {old:?}"),
            |l| {
                let h = l.spec.as_ref().and_then(|s| s.holder_identity.as_deref());
                h.is_some_and(|h| !h.is_empty() && Some(h) != old)
            },
        )
        .await;
        let holder = lease
            .spec
            .and_then(|s| s.holder_identity)
            .expect("a holder");
        self.wait_active(&holder).await;
        holder
    }

    /// Waits until `pod` alone carries the active label and is the endpoint.
    pub async fn wait_active(&self, pod: &str) {
        let want = vec![pod.to_string()];
        wait_until::<Pod, _>(
            self.pods(),
            "app=web",
            T,
            &format!("{pod} alone labelled active"),
            |pods| labelled(pods, "role", "active") == want,
        )
        .await;
        wait_endpoints(&self.ns, &format!("{}-active", self.name), &[pod], T).await;
    }

    /// The body of a GET of `path` on the pod's sidecar status server.
    pub async fn sidecar_get(&self, pod: &str, path: &str) -> String {
        crate::harness::sidecar_get(&self.ns, pod, path).await
    }

    pub async fn sidecar_status(&self, pod: &str) -> baton_sidecar::contract::Status {
        crate::harness::sidecar_status(&self.ns, pod).await
    }

    pub async fn set_app_health(&self, pod: &str, health: &str) {
        crate::harness::set_app_health(&self.ns, pod, health).await;
    }

    pub async fn sidecar_pid(&self, pod: &str) -> u32 {
        self.ns.pid(pod, "baton-sidecar", T).await
    }

    /// Checks the never-two-active guard and deletes the namespace.
    pub async fn finish(self) -> Vec<Option<String>> {
        let holders = self.history.holders();
        let most = self.guard.assert_held().await;
        assert_eq!(most, 1, "some pod was active at some point");
        self.ns.delete().await;
        holders
    }
}

/// Waits until the sidecars have published Events with these (reason, pod).
pub async fn wait_for_events(ns: &TestNamespace, want: &[(&str, &str)]) {
    wait_until::<Event, _>(ns.api(), "", T, &format!("Events {want:?}"), |events| {
        want.iter().all(|(reason, pod)| {
            events.iter().any(|e| {
                e.reason.as_deref() == Some(*reason)
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(*pod)
                    && e.reporting_controller.as_deref() == Some("baton-sidecar")
            })
        })
    })
    .await;
}
