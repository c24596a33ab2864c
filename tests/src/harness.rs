//! What the end-to-end tests share: a connection to the local cluster
//! (`make cluster-up`, or `make test` which starts one), a namespace per
//! test, waits on watches with timeouts, and access to the containers that
//! the real nodes run (their host pids through containerd, their logs and
//! emptyDir volumes through kubelet's folders), and faults on those nodes
//! ([`nodes`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Debug,
    io::Write,
    path::PathBuf,
    process::{Command, Output, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::{
    NamespaceResourceScope,
    api::{
        core::v1::{Namespace as K8sNamespace, Pod},
        discovery::v1::EndpointSlice,
    },
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::watcher,
};
use serde::de::DeserializeOwned;

/// The repository root (this crate lives in `<repo>/tests`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
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

    /// The directory where the pod runner keeps a KWOK pod's files (the
    /// scale bench; tests run on the real node).
    pub fn pod_dir(&self, pod: &str) -> PathBuf {
        self.cluster.dir.join("pods").join(&self.name).join(pod)
    }

    /// The host pid of a container's process on the real node, once kubelet
    /// reports it running (after a restart, the new process's).
    pub async fn pid(&self, pod: &str, container: &str, timeout: Duration) -> u32 {
        let what = format!("container {container} of pod {pod} running");
        let p = wait_for_object::<Pod, _>(self.api(), pod, timeout, &what, |p| {
            running_container_id(p, container).is_some()
        })
        .await;
        let id = running_container_id(&p, container).expect("the container the wait ended on");
        let node = pod_node(&p);
        let out = self.cluster.ctr(&node, &["tasks", "ls"]);
        let tasks = String::from_utf8_lossy(&out.stdout);
        // TASK  PID  STATUS
        tasks
            .lines()
            .find_map(|l| {
                let mut cols = l.split_whitespace();
                (cols.next() == Some(id.as_str())).then(|| cols.next()?.parse().ok())?
            })
            .unwrap_or_else(|| panic!("containerd has no task {id} ({what}): {tasks}"))
    }

    /// The last lines a container wrote, for failure messages.
    pub fn log_tail(&self, pod: &str, container: &str) -> String {
        let out = self.kubectl(&["logs", "--tail=20", pod, "-c", container], None);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// Where kubelet keeps an emptyDir volume of a pod, seen from the host.
    pub async fn empty_dir(&self, pod: &str, volume: &str) -> PathBuf {
        let p = self.api::<Pod>().get(pod).await.expect("getting the pod");
        let node = pod_node(&p);
        let uid = p.metadata.uid.expect("a pod has a uid");
        self.cluster
            .node_dir(&node)
            .join("kubelet/pods")
            .join(uid)
            .join("volumes/kubernetes.io~empty-dir")
            .join(volume)
    }
}

/// The node a (scheduled) pod runs on.
pub fn pod_node(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_else(|| panic!("pod {} is not scheduled", pod.name_any()))
}

/// The containerd id of a container (init, sidecar or app) kubelet reports running.
pub fn running_container_id(pod: &Pod, container: &str) -> Option<String> {
    let status = pod.status.as_ref()?;
    status
        .container_statuses
        .iter()
        .flatten()
        .chain(status.init_container_statuses.iter().flatten())
        .find(|c| c.name == container)
        .filter(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
        .and_then(|c| c.container_id.as_deref())
        .and_then(|id| id.strip_prefix("containerd://"))
        .map(str::to_owned)
}

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
struct Listed<K> {
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
    fn apply(&mut self, event: watcher::Event<K>) -> bool {
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

    fn items(&self) -> Vec<K> {
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

/// The `/status` of `pod`'s sidecar, once it answers.
pub async fn sidecar_status(ns: &TestNamespace, pod: &str) -> serde_json::Value {
    let ip = pod_ip(ns, pod).await;
    for _ in 0..100 {
        if let Ok(r) = http().get(format!("http://{ip}:9095/status")).send().await
            && let Ok(v) = r.json::<serde_json::Value>().await
        {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{pod}'s sidecar never answered /status");
}

/// Tells the demo app in `pod` to answer `/healthz` with `health`: `ok`,
/// `fail` (500) or `hang`.
pub async fn set_app_health(ns: &TestNamespace, pod: &str, health: &str) {
    let ip = pod_ip(ns, pod).await;
    let r = http()
        .post(format!("http://{ip}:8080/control?health={health}"))
        .send()
        .await
        .expect("the demo app answers");
    assert!(r.status().is_success(), "{pod}'s demo app: {}", r.status());
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

/// Pods of `labels` that carry `key=value`.
pub fn labelled(pods: &[Pod], key: &str, value: &str) -> Vec<String> {
    pods.iter()
        .filter(|p| p.labels().get(key).map(String::as_str) == Some(value))
        .map(|p| p.name_any())
        .collect()
}

/// Watches what `config` selects and calls `on_view` with every complete
/// view: the first list, then the state after each event. A watch error
/// or the end of the watch goes to `blind` (events may have been missed).
/// Returns once the first list is in; panics after 30 s, naming `what`.
async fn watch_views<K>(
    api: Api<K>,
    config: watcher::Config,
    what: &str,
    blind: Arc<Mutex<Vec<String>>>,
    mut on_view: impl FnMut(Vec<K>) + Send + 'static,
) -> tokio::task::JoinHandle<()>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let mut stream = watcher(api, config).boxed();
    let task = tokio::spawn(async move {
        let mut ready_tx = Some(ready_tx);
        let mut state = Listed::default();
        while let Some(event) = stream.next().await {
            let event = match event {
                Ok(event) => event,
                Err(e) => {
                    blind
                        .lock()
                        .expect("not poisoned")
                        .push(format!("watch error: {e}"));
                    continue;
                }
            };
            if !state.apply(event) {
                continue;
            }
            on_view(state.items());
            if let Some(tx) = ready_tx.take() {
                let _ = tx.send(());
            }
        }
        blind
            .lock()
            .expect("not poisoned")
            .push("the watch ended".to_owned());
    });
    tokio::time::timeout(Duration::from_secs(30), ready_rx)
        .await
        .unwrap_or_else(|_| panic!("{what} listed within 30 s"))
        .unwrap_or_else(|_| panic!("{what}'s watch ended before it listed"));
    task
}

/// Pods labelled `key=value` that are not being deleted: those a Service
/// selecting the label may list as Ready. A deleted holder keeps its active
/// label while it drains (`docs/design.md`, rule 8); a terminating pod is
/// never a Ready endpoint.
pub fn serving_active(pods: &[Pod], key: &str, value: &str) -> Vec<String> {
    let live: Vec<Pod> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .cloned()
        .collect();
    labelled(&live, key, value)
}

/// Watches a group's pods from before a test acts until it ends, and
/// records every moment at which more than one pod not being deleted
/// carried the active label.
/// A guard that stops seeing fails the test: a watch error (events may have
/// been missed), a watch that ends, or one that never lists the pods.
pub struct NeverTwoActive {
    task: tokio::task::JoinHandle<()>,
    violations: Arc<Mutex<Vec<Vec<String>>>>,
    most: Arc<Mutex<usize>>,
    blind: Arc<Mutex<Vec<String>>>,
    /// The pods active in the guard's latest complete view.
    active_seen: tokio::sync::watch::Receiver<Vec<String>>,
    api: Api<Pod>,
    labels: String,
    key: String,
    active: String,
}

impl NeverTwoActive {
    /// Starts watching; returns once the watch has listed the pods.
    pub async fn start(api: Api<Pod>, labels: &str, key: &str, active: &str) -> NeverTwoActive {
        let violations = Arc::new(Mutex::new(Vec::new()));
        let most = Arc::new(Mutex::new(0));
        let blind = Arc::new(Mutex::new(Vec::new()));
        let (v, m) = (violations.clone(), most.clone());
        let (active_tx, active_seen) = tokio::sync::watch::channel(Vec::new());
        let (key, active) = (key.to_owned(), active.to_owned());
        let (watched_key, watched_active) = (key.clone(), active.clone());
        let task = watch_views(
            api.clone(),
            watcher::Config::default().labels(labels),
            "the never-two-active guard",
            blind.clone(),
            move |pods: Vec<Pod>| {
                let active_now = serving_active(&pods, &watched_key, &watched_active);
                let mut most = m.lock().expect("not poisoned");
                *most = (*most).max(active_now.len());
                if active_now.len() > 1 {
                    v.lock().expect("not poisoned").push(active_now.clone());
                }
                drop(most);
                active_tx.send_replace(active_now);
            },
        )
        .await;
        NeverTwoActive {
            task,
            violations,
            most,
            blind,
            active_seen,
            api,
            labels: labels.to_owned(),
            key,
            active,
        }
    }

    /// Panics if two pods were ever active at once, or if the guard stopped
    /// seeing at some point; returns the most pods seen active at once.
    /// First waits until the guard's watch has caught up with what the API
    /// server lists now: the test's own watch may have seen the last change
    /// before the guard's did.
    pub async fn assert_held(mut self) -> usize {
        let pods = self
            .api
            .list(&kube::api::ListParams::default().labels(&self.labels))
            .await
            .expect("the group's pods listed");
        let now = serving_active(&pods.items, &self.key, &self.active);
        let caught_up = tokio::time::timeout(
            Duration::from_secs(30),
            self.active_seen.wait_for(|seen| *seen == now),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        assert!(
            caught_up,
            "the never-two-active guard did not see {now:?} active within 30 s: {:?}",
            *self.active_seen.borrow()
        );
        self.task.abort();
        let violations = self.violations.lock().expect("not poisoned").clone();
        assert!(
            violations.is_empty(),
            "two pods carried the active label at the same moment: {violations:?}"
        );
        let blind = self.blind.lock().expect("not poisoned").clone();
        assert!(
            blind.is_empty(),
            "the never-two-active guard stopped seeing: {blind:?}"
        );
        *self.most.lock().expect("not poisoned")
    }
}

/// Watches a Service's EndpointSlices while a test acts and keeps every
/// set of pods they listed as Ready, in order: what kube-proxy may balance
/// across (a terminating pod it uses only while none is Ready).
pub struct ReadyEndpointsHistory {
    task: tokio::task::JoinHandle<()>,
    views: Arc<Mutex<Vec<BTreeSet<String>>>>,
    blind: Arc<Mutex<Vec<String>>>,
}

impl ReadyEndpointsHistory {
    /// Starts watching; returns once the watch has listed the slices.
    pub async fn start(ns: &TestNamespace, service: &str) -> ReadyEndpointsHistory {
        let (views, blind) = (
            Arc::new(Mutex::new(Vec::new())),
            Arc::new(Mutex::new(Vec::new())),
        );
        let v = views.clone();
        let config =
            watcher::Config::default().labels(&format!("kubernetes.io/service-name={service}"));
        let task = watch_views(
            ns.api::<EndpointSlice>(),
            config,
            "the endpoints watch",
            blind.clone(),
            move |slices: Vec<EndpointSlice>| {
                let ready = ready_endpoints(&slices);
                let mut views = v.lock().expect("not poisoned");
                if views.last() != Some(&ready) {
                    views.push(ready);
                }
            },
        )
        .await;
        ReadyEndpointsHistory { task, views, blind }
    }

    /// Every set of Ready endpoints seen, without repeats; panics if the
    /// watch failed.
    pub fn views(self) -> Vec<BTreeSet<String>> {
        self.task.abort();
        let blind = self.blind.lock().expect("not poisoned").clone();
        assert!(
            blind.is_empty(),
            "the endpoints watch stopped seeing: {blind:?}"
        );
        self.views.lock().expect("not poisoned").clone()
    }
}

/// Sends a signal to a host pid (a container's process on the real node, a
/// runner's process) with kill(1): the workspace forbids unsafe code.
pub async fn signal(pid: u32, sig: &str) {
    let _ = tokio::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .await;
}

/// An HTTP client for pod IPs (loopback: never a proxy).
pub fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("an HTTP client")
}

/// Whether kubelet reports the pod Ready.
pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// How often kubelet has restarted the pod's sidecar (a native sidecar: an
/// init container).
pub fn sidecar_restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.init_container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == "baton-sidecar"))
        .map_or(0, |c| c.restart_count)
}

/// A pod's IP as the API server reports it, once kubelet has given it one.
pub async fn pod_ip(ns: &TestNamespace, pod: &str) -> String {
    let what = format!("pod {pod} to have an IP");
    let p = wait_for_object::<Pod, _>(ns.api(), pod, Duration::from_secs(60), &what, |p| {
        p.status.as_ref().is_some_and(|s| s.pod_ip.is_some())
    })
    .await;
    p.status
        .and_then(|s| s.pod_ip)
        .expect("the IP the wait ended on")
}

/// Records every holder a Lease has had, from before a test acts.
pub struct LeaseHistory {
    task: tokio::task::JoinHandle<()>,
    holders: Arc<Mutex<Vec<Option<String>>>>,
}

impl LeaseHistory {
    pub async fn start(
        api: Api<k8s_openapi::api::coordination::v1::Lease>,
        name: &str,
    ) -> LeaseHistory {
        let holders = Arc::new(Mutex::new(Vec::new()));
        let h = holders.clone();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let mut stream = watcher(api, config).boxed();
        let task = tokio::spawn(async move {
            let mut ready_tx = Some(ready_tx);
            while let Some(event) = stream.next().await {
                let lease = match event {
                    Ok(watcher::Event::InitApply(l) | watcher::Event::Apply(l)) => l,
                    Ok(watcher::Event::InitDone) => {
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(());
                        }
                        continue;
                    }
                    _ => continue,
                };
                let holder = lease
                    .spec
                    .and_then(|s| s.holder_identity)
                    .filter(|h| !h.is_empty());
                let mut all = h.lock().expect("not poisoned");
                if all.last() != Some(&holder) {
                    all.push(holder);
                }
            }
        });
        let _ = tokio::time::timeout(Duration::from_secs(30), ready_rx).await;
        LeaseHistory { task, holders }
    }

    /// The holders so far, consecutive repeats folded; None is "released".
    pub fn holders(&self) -> Vec<Option<String>> {
        self.holders.lock().expect("not poisoned").clone()
    }
}

impl Drop for LeaseHistory {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The chaos tests' additions (tests/tests/chaos.rs).
pub mod outage;

/// The real nodes and faults on them (tests/tests/nodes.rs, the bench).
pub mod nodes;

/// Waits (bounded) until `pod`'s sidecar reports its app healthy.
pub async fn wait_app_healthy(ns: &TestNamespace, pod: &str) {
    let ip = pod_ip(ns, pod).await;
    // The sidecar may not be listening yet: poll_status keeps asking.
    let last = poll_status(&ip, Duration::from_secs(20), |s| s["app_healthy"] == true).await;
    assert!(
        last["app_healthy"] == true,
        "{pod}'s app never turned healthy: {last}"
    );
}

/// Asks the sidecar at `ip` for its `/status` until `done` holds for it or
/// `timeout` has passed; returns the last status it answered (Null if none).
pub async fn poll_status(
    ip: &str,
    timeout: Duration,
    mut done: impl FnMut(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = serde_json::Value::Null;
    while tokio::time::Instant::now() < deadline {
        if let Ok(r) = http().get(format!("http://{ip}:9095/status")).send().await {
            last = r.json().await.unwrap_or_default();
            if done(&last) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    last
}
