//! baton installed as the README tells users to: `kubectl apply -k
//! manifests/webhook` runs the webhook as a Deployment on the real node,
//! with self-managed certificates, behind its Service's ClusterIP.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use k8s_openapi::api::core::v1::Pod;
use kube::Api;

use crate::{
    harness::{Cluster, TestNamespace, cached_tool, repo_root},
    webhook::dry_run_until_injected,
};

const ROLLOUT: &str = "120s";

/// The installed webhook; [`InstalledWebhook::uninstall`] removes it as
/// docs/install.md says.
pub struct InstalledWebhook {
    cluster: Cluster,
    /// The kustomization applied: `manifests/webhook`, or a user's overlay of it.
    dir: PathBuf,
}

impl InstalledWebhook {
    /// `kubectl apply -k manifests/webhook`, then waits until the
    /// Deployment is rolled out and the API server calls the webhook for a
    /// pod of `ns`.
    pub async fn install(ns: &TestNamespace) -> InstalledWebhook {
        InstalledWebhook::install_from(ns, &repo_root().join("manifests/webhook")).await
    }

    /// `kubectl apply -k dir` (an overlay of `manifests/webhook`, as a user
    /// customises the install), then as [`InstalledWebhook::install`].
    pub async fn install_from(ns: &TestNamespace, dir: &Path) -> InstalledWebhook {
        Self::install_with(ns, dir, |_| {}).await
    }

    /// [`InstalledWebhook::install_from`], with `prepare` run between the
    /// apply and the rollout: what the user provides, such as the Secret
    /// and the caBundle of `manifests/webhook/base`.
    pub async fn install_with(
        ns: &TestNamespace,
        dir: &Path,
        prepare: impl FnOnce(&Cluster),
    ) -> InstalledWebhook {
        let cluster = ns.cluster.clone();
        // From nothing, as a user's first install: another test binary's
        // install (webhook.rs's stays in place) would leave its Secret,
        // whose certificate this install would then adopt.
        kubectl_ok(
            &cluster,
            &[
                "delete",
                "-k",
                dir.to_str().expect("utf-8 path"),
                "--ignore-not-found",
                "--wait=true",
                "--timeout=120s",
            ],
        );
        kubectl_ok(
            &cluster,
            &["apply", "-k", dir.to_str().expect("utf-8 path")],
        );
        prepare(&cluster);
        roll_out(&cluster);
        let webhook = InstalledWebhook {
            cluster,
            dir: dir.to_owned(),
        };
        webhook.wait_until_injecting(ns).await;
        webhook
    }

    /// The webhook as one install serves every test of a test binary: the
    /// first caller applies `manifests/webhook` (once, as a user would), each
    /// waits until the API server calls it for pods of its own `ns`. It stays
    /// installed (tests/tests/install.rs, another binary, uninstalls it).
    pub async fn shared(ns: &TestNamespace) -> InstalledWebhook {
        static APPLIED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
        let cluster = ns.cluster.clone();
        let dir = repo_root().join("manifests/webhook");
        APPLIED
            .get_or_init(|| async { apply_and_roll_out(&cluster, &dir) })
            .await;
        let webhook = InstalledWebhook { cluster, dir };
        webhook.wait_until_injecting(ns).await;
        webhook
    }

    /// Enables injection in `ns` as the README says (`kubectl label
    /// namespace NS baton.dev/injection=enabled`), then waits until the API
    /// server calls the webhook for its pods.
    pub async fn wait_until_injecting(&self, ns: &TestNamespace) {
        wait_until_injecting(ns).await;
    }

    /// `kubectl apply -k dir` over the installed webhook, as a user applies
    /// a newer release's manifests (or an overlay that moves its image
    /// tags), then waits until the Deployment has rolled out: every
    /// replica of the new template ready, none of the old left.
    pub fn upgrade(&mut self, dir: &Path) {
        apply_and_roll_out(&self.cluster, dir);
        dir.clone_into(&mut self.dir);
    }

    /// The webhook's pods, to read their metrics.
    pub async fn pods(&self) -> Vec<Pod> {
        let api: Api<Pod> = Api::namespaced(self.cluster.client.clone(), "baton-system");
        api.list(&kube::api::ListParams::default().labels("app.kubernetes.io/name=baton-webhook"))
            .await
            .expect("the webhook's pods")
            .items
    }

    /// The Prometheus text of every webhook pod, one after the other: an
    /// admission may have gone to either replica.
    pub async fn metrics(&self) -> String {
        let mut text = String::new();
        for pod in self.pods().await {
            let Some(ip) = pod.status.and_then(|s| s.pod_ip) else {
                continue;
            };
            let url = format!("http://{ip}:8080/metrics");
            if let Ok(r) = crate::harness::http().get(&url).send().await {
                text.push_str(&r.text().await.unwrap_or_default());
            }
        }
        text
    }

    /// `kubectl delete -k manifests/webhook` (or the overlay installed), and
    /// waits until it is gone.
    pub fn uninstall(self) {
        kubectl_ok(
            &self.cluster,
            &[
                "delete",
                "-k",
                self.dir.to_str().expect("utf-8 path"),
                "--wait=true",
                "--timeout=120s",
            ],
        );
    }
}

/// Enables injection in `ns`, then waits until the API server calls the
/// webhook for its pods.
async fn wait_until_injecting(ns: &TestNamespace) {
    enable_injection(ns);
    if let Err(last) = dry_run_until_injected(ns, Duration::from_secs(60)).await {
        panic!("the API server never called the installed webhook: {last}");
    }
}

/// baton installed with its Helm chart (`manifests/helm/baton`, release
/// `baton` in `baton-system`), as docs/install.md's first way.
pub struct HelmRelease {
    cluster: Cluster,
    helm: PathBuf,
}

impl HelmRelease {
    /// `helm install baton manifests/helm/baton -n baton-system
    /// --create-namespace --wait ARGS`, from nothing (a kustomize install
    /// another test left is deleted first: the chart would not adopt its
    /// objects), then waits until the API server calls it for pods of `ns`.
    pub async fn install(ns: &TestNamespace, args: &[&str]) -> HelmRelease {
        let cluster = ns.cluster.clone();
        let kustomized = repo_root().join("manifests/webhook");
        kubectl_ok(
            &cluster,
            &[
                "delete",
                "-k",
                kustomized.to_str().expect("utf-8 path"),
                "--ignore-not-found",
                "--wait=true",
                "--timeout=120s",
            ],
        );
        let release = HelmRelease {
            helm: cached_tool("build-helm.sh", "helm"),
            cluster,
        };
        let _ = release.helm(&["uninstall", "baton", "-n", "baton-system", "--wait"]);
        release.helm_ok(&[&["install", "--create-namespace"], args].concat());
        wait_until_injecting(ns).await;
        release
    }

    /// `helm upgrade baton manifests/helm/baton --reuse-values --wait ARGS`:
    /// returns once the Deployment has rolled out.
    pub fn upgrade(&self, args: &[&str]) {
        self.helm_ok(&[&["upgrade", "--reuse-values"], args].concat());
    }

    /// `helm uninstall baton -n baton-system --wait`.
    pub fn uninstall(self) {
        let out = self.helm(&["uninstall", "baton", "-n", "baton-system", "--wait"]);
        assert!(
            out.status.success(),
            "helm uninstall: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `helm VERB baton manifests/helm/baton -n baton-system --wait
    /// --timeout 120s ARGS` (VERB and its flags first in `args`).
    fn helm_ok(&self, args: &[&str]) {
        let (verb, rest) = args.split_first().expect("a helm verb");
        let chart = repo_root().join("manifests/helm/baton");
        let mut all = vec![*verb, "baton", chart.to_str().expect("utf-8 path")];
        all.extend(["-n", "baton-system", "--wait", "--timeout", ROLLOUT]);
        all.extend(rest);
        let out = self.helm(&all);
        assert!(
            out.status.success(),
            "helm {all:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn helm(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(&self.helm)
            .arg("--kubeconfig")
            .arg(self.cluster.dir.join("kubeconfig"))
            .args(args)
            .output()
            .expect("running helm")
    }
}

/// `kubectl label namespace NS baton.dev/injection=enabled`: the webhook
/// sees only the pods of namespaces so labelled.
pub fn enable_injection(ns: &TestNamespace) {
    kubectl_ok(
        &ns.cluster,
        &[
            "label",
            "namespace",
            &ns.name,
            "baton.dev/injection=enabled",
            "--overwrite",
        ],
    );
}

/// `kubectl apply -k dir`, then the webhook's Deployment rolled out.
fn apply_and_roll_out(cluster: &Cluster, dir: &Path) {
    kubectl_ok(cluster, &["apply", "-k", dir.to_str().expect("utf-8 path")]);
    roll_out(cluster);
}

/// `kubectl rollout status` of the webhook's Deployment.
fn roll_out(cluster: &Cluster) {
    kubectl_ok(
        cluster,
        &[
            "-n",
            "baton-system",
            "rollout",
            "status",
            "deployment/baton-webhook",
            &format!("--timeout={ROLLOUT}"),
        ],
    );
}

/// kubectl against the cluster; panics with its output when it fails.
pub fn kubectl_ok(cluster: &Cluster, args: &[&str]) {
    let out = cluster.kubectl(args, None);
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
