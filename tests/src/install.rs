//! baton installed as the README tells users to: `kubectl apply -k
//! manifests/webhook` runs the webhook as a Deployment on the real node,
//! with self-managed certificates, behind its Service's ClusterIP.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;

use crate::{
    harness::{Cluster, TestNamespace, repo_root},
    webhook::dry_run_until_injected,
};

const ROLLOUT: &str = "120s";

/// The installed webhook; [`InstalledWebhook::uninstall`] removes it as
/// docs/install.md says.
pub struct InstalledWebhook {
    cluster: Cluster,
}

impl InstalledWebhook {
    /// `kubectl apply -k manifests/webhook`, then waits until the
    /// Deployment is rolled out and the API server calls the webhook for a
    /// pod of `ns`.
    pub async fn install(ns: &TestNamespace) -> InstalledWebhook {
        let cluster = ns.cluster.clone();
        let dir = repo_root().join("manifests/webhook");
        let dir = dir.to_str().expect("utf-8 path");
        kubectl_ok(&cluster, &["apply", "-k", dir]);
        kubectl_ok(
            &cluster,
            &[
                "-n",
                "baton-system",
                "rollout",
                "status",
                "deployment/baton-webhook",
                &format!("--timeout={ROLLOUT}"),
            ],
        );
        let webhook = InstalledWebhook { cluster };
        webhook.wait_until_injecting(ns).await;
        webhook
    }

    async fn wait_until_injecting(&self, ns: &TestNamespace) {
        if let Err(last) = dry_run_until_injected(ns, Duration::from_secs(60)).await {
            panic!("the API server never called the installed webhook: {last}");
        }
    }

    /// The webhook's pods, to read their metrics.
    pub async fn pods(&self) -> Vec<Pod> {
        let api: Api<Pod> = Api::namespaced(self.cluster.client.clone(), "baton-system");
        api.list(&kube::api::ListParams::default().labels("app.kubernetes.io/name=baton-webhook"))
            .await
            .expect("the webhook's pods")
            .items
    }

    /// `kubectl delete -k manifests/webhook`, and waits until it is gone.
    pub fn uninstall(self) {
        let dir = repo_root().join("manifests/webhook");
        kubectl_ok(
            &self.cluster,
            &[
                "delete",
                "-k",
                dir.to_str().expect("utf-8 path"),
                "--wait=true",
                "--timeout=120s",
            ],
        );
    }
}

fn kubectl_ok(cluster: &Cluster, args: &[&str]) {
    let out = cluster.kubectl(args, None);
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
