//! The connection to the local cluster and a namespace per test: kubectl
//! (and `kubectl baton`) against it, clients with a service account's
//! token, and where the repository is.

use std::{
    io::Write,
    path::PathBuf,
    process::{Command, Output, Stdio},
    time::Duration,
};

use k8s_openapi::{NamespaceResourceScope, api::core::v1::Namespace as K8sNamespace};
use kube::{
    Api, Client, Resource,
    api::{DeleteParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};

use super::nodes;

/// The repository root (this crate lives in `<repo>/tests`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A tool that a script of tests/cluster builds once into the cache (`make
/// cluster-binaries`), such as helm: the script prints its folder. Cached,
/// the script runs offline, inside the cluster's network namespace too.
pub fn cached_tool(script: &str, tool: &str) -> PathBuf {
    let out = Command::new(repo_root().join("tests/cluster").join(script))
        .stderr(Stdio::piped())
        .output()
        .unwrap_or_else(|e| panic!("running tests/cluster/{script}: {e}"));
    assert!(
        out.status.success(),
        "tests/cluster/{script} failed (run it outside the cluster's network namespace first, \
         as `make cluster-binaries` does): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join(tool)
}

#[derive(Clone)]
pub struct Cluster {
    pub client: Client,
    pub config: kube::Config,
    pub dir: PathBuf,
    pub kubectl: PathBuf,
    /// containerd's own client, `ctr`, when the cluster has a real node.
    pub ctr: Option<PathBuf>,
    /// The real nodes, as up.sh recorded them.
    pub nodes: Vec<nodes::RealNode>,
}

impl Cluster {
    /// Connects to the control plane that `make cluster-up` started.
    pub async fn connect() -> Cluster {
        let dir = std::env::var_os("BATON_CLUSTER_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join("target/cluster"));
        let kubeconfig = dir.join("kubeconfig");
        let bin_dir = std::fs::read_to_string(dir.join("bin-dir")).unwrap_or_else(|_| {
            panic!(
                "no local control plane at {}: run `make cluster-up` (or `make test`)",
                dir.display()
            )
        });
        let config = Kubeconfig::read_from(&kubeconfig).expect("reading the cluster's kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(config, &KubeConfigOptions::default())
            .await
            .expect("a usable kubeconfig");
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ctr = std::fs::read_to_string(dir.join("node-bin-dir"))
            .ok()
            .map(|d| PathBuf::from(d.trim()).join("ctr"));
        let nodes = nodes::real_nodes(&dir).expect("the cluster's record of its real nodes");
        Cluster {
            client: Client::try_from(config.clone()).expect("a client"),
            config,
            kubectl: PathBuf::from(bin_dir.trim()).join("kubectl"),
            dir,
            ctr,
            nodes,
        }
    }

    /// The real node named `name`.
    pub fn node(&self, name: &str) -> &nodes::RealNode {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("{name} is not a real node of this cluster"))
    }

    /// The host pid of a control-plane process (kube-apiserver, etcd, ...),
    /// from up.sh's pid file.
    pub fn component_pid(&self, name: &str) -> u32 {
        let path = self.dir.join(format!("pids/{name}.pid"));
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        text.trim().parse().expect("a pid")
    }

    /// A real node's folder (tests/cluster/node-config.sh).
    pub fn node_dir(&self, name: &str) -> PathBuf {
        self.node(name).dir.clone()
    }

    /// `ctr -n k8s.io ARGS` against the containerd of the real node `node`.
    pub fn ctr(&self, node: &str, args: &[&str]) -> Output {
        let ctr = self
            .ctr
            .as_ref()
            .expect("this cluster has no real node (BATON_REAL_NODES=0)");
        Command::new(ctr)
            .arg("--address")
            .arg(self.node_dir(node).join("containerd.sock"))
            .args(["-n", "k8s.io"])
            .args(args)
            .output()
            .expect("running ctr")
    }

    /// Runs kubectl against the cluster.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(self.dir.join("kubeconfig"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running kubectl");
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .expect("piped stdin")
                .write_all(input.as_bytes())
                .expect("writing kubectl's stdin");
        }
        drop(child.stdin.take());
        child.wait_with_output().expect("kubectl output")
    }

    /// A fresh namespace for one test, with the sidecar's RBAC applied.
    pub async fn namespace(&self, prefix: &str) -> TestNamespace {
        let name = format!("{prefix}-{:04x}", fastrand::u16(..));
        let api: Api<K8sNamespace> = Api::all(self.client.clone());
        let mut ns = K8sNamespace::default();
        ns.metadata.name = Some(name.clone());
        ns.metadata.labels = Some([("baton.dev/test".to_string(), prefix.to_string())].into());
        api.create(&PostParams::default(), &ns)
            .await
            .expect("creating the test namespace");
        let ns = TestNamespace {
            name,
            cluster: self.clone(),
        };
        // The sidecar's Role, and the cluster-wide policy that confines it:
        // every test runs as a real install would.
        for dir in ["manifests/rbac", "manifests/rbac/policy"] {
            let path = repo_root().join(dir);
            let args = ["apply", "-k", path.to_str().expect("utf-8 path")];
            // Tests running at once may both create the cluster-scoped
            // policy; the loser of that race applies again.
            let out = ns.kubectl(&args, None);
            if !out.status.success()
                && String::from_utf8_lossy(&out.stderr).contains("AlreadyExists")
            {
                ns.kubectl_ok(&args, None);
            } else {
                assert!(
                    out.status.success(),
                    "kubectl {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        ns
    }
}

pub struct TestNamespace {
    pub name: String,
    pub cluster: Cluster,
}

impl TestNamespace {
    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        Api::namespaced(self.cluster.client.clone(), &self.name)
    }

    /// The ClusterIP of the Service `service` of this namespace.
    pub async fn cluster_ip(&self, service: &str) -> String {
        let svc: k8s_openapi::api::core::v1::Service =
            self.api().get(service).await.expect("the Service");
        svc.spec.and_then(|s| s.cluster_ip).expect("a ClusterIP")
    }

    /// Labels the namespace itself (`key=value`), as an administrator does
    /// to opt it out of a policy (`baton.dev/sidecar-policy=disabled`).
    pub fn label_namespace(&self, label: &str) {
        self.kubectl_ok(&["label", "namespace", &self.name, label], None);
    }

    /// kubectl in this namespace; panics with its stderr when it fails.
    pub fn kubectl_ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl(args, stdin);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        self.cluster.kubectl(&all, stdin)
    }

    /// `kubectl baton ARGS -n <this namespace>` as a user types it: kubectl
    /// finds the plugin `kubectl-baton` on the PATH (the workspace's build,
    /// `BATON_BIN_DIR`) and hands it the kubeconfig through KUBECONFIG.
    pub fn kubectl_baton(&self, args: &[&str]) -> Output {
        let bin_dir = std::env::var_os("BATON_BIN_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join("target/debug"));
        let path = std::env::join_paths(std::iter::once(bin_dir).chain(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        )))
        .expect("a PATH");
        Command::new(&self.cluster.kubectl)
            .arg("baton")
            .args(args)
            .args(["-n", &self.name])
            .env("PATH", path)
            .env("KUBECONFIG", self.cluster.dir.join("kubeconfig"))
            .output()
            .expect("running kubectl baton")
    }

    /// A client that authenticates as a service account of this namespace.
    pub async fn client_as(&self, service_account: &str) -> Client {
        self.client_with_token_for(service_account, serde_json::json!({}))
            .await
    }

    /// A client with a token of `service_account` bound to `pod`: what
    /// kubelet mounts into the pod (and `kubectl create token ACCOUNT
    /// --bound-object-kind Pod --bound-object-name POD` prints). The API
    /// server names the pod in the requests it authenticates
    /// (`authentication.kubernetes.io/pod-name`), which the sidecar's
    /// admission policies key on.
    pub async fn client_of_pod(&self, service_account: &str, pod: &str) -> Client {
        use k8s_openapi::api::core::v1::Pod;
        let uid = self
            .api::<Pod>()
            .get(pod)
            .await
            .expect("the pod to bind a token to")
            .metadata
            .uid;
        let bound = serde_json::json!({
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod, "uid": uid},
        });
        self.client_with_token_for(service_account, bound).await
    }

    /// A client with a token of `service_account` (a TokenRequest whose
    /// spec is `extra` besides an hour's expiry), and nothing else.
    async fn client_with_token_for(
        &self,
        service_account: &str,
        extra: serde_json::Value,
    ) -> Client {
        use k8s_openapi::api::{authentication::v1::TokenRequest, core::v1::ServiceAccount};
        let mut spec = serde_json::json!({"audiences": [], "expirationSeconds": 3600});
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
            spec.extend(extra.clone());
        }
        let request: TokenRequest =
            serde_json::from_value(serde_json::json!({ "spec": spec })).expect("a token request");
        let api: Api<ServiceAccount> = self.api();
        // The namespace's default service account appears shortly after it.
        let mut token = None;
        for _ in 0..100 {
            match api
                .create_subresource::<_, TokenRequest>(
                    "token",
                    service_account,
                    &PostParams::default(),
                    &request,
                )
                .await
            {
                Ok(t) => {
                    token = t.status.map(|s| s.token);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        let mut config = self.cluster.config.clone();
        config.auth_info = kube::config::AuthInfo {
            token: Some(token.expect("a token for the service account").into()),
            ..Default::default()
        };
        Client::try_from(config).expect("a client")
    }

    pub fn apply(&self, yaml: &str) {
        self.kubectl_ok(&["apply", "-f", "-"], Some(yaml));
    }

    /// Deletes the namespace (its pods stop through the runner).
    pub async fn delete(self) {
        let api: Api<K8sNamespace> = Api::all(self.cluster.client.clone());
        let _ = api.delete(&self.name, &DeleteParams::background()).await;
    }
}
