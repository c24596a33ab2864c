//! The pod runner: stands in for kubelet's container runtime on the KWOK
//! nodes. It watches pods and, for each container whose image is one of the
//! project's own, runs the matching local binary with the env the API server
//! stored (see [`super::podenv`]), bound to the pod's IP, and with API
//! credentials of the pod's own service account (a bound token, as kubelet
//! would project), so RBAC applies as in a real cluster.
//!
//! Files per pod under `<state>/<namespace>/<pod>/`: `kubeconfig`,
//! `<container>.log` and `<container>.pid` (the running process).

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::api::{
    authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec},
    core::v1::{Container, Pod, ServiceAccount},
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, PostParams, Preconditions},
    runtime::{WatchStreamExt, watcher},
};
use tokio::{process::Command, sync::watch};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use super::podenv;
use crate::harness::signal;

/// Images of ours, by repository name; each is a binary of the workspace.
pub const OUR_IMAGES: [&str; 2] = ["baton-sidecar", "baton-demo-app"];

#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "baton-runner",
    about = "Runs the project's containers of KWOK pods as local processes"
)]
pub struct RunnerSettings {
    /// Where the binaries named like our images are.
    #[arg(long, env = "BATON_BIN_DIR")]
    pub bin_dir: PathBuf,
    /// Per-pod files: kubeconfig, logs, pid files.
    #[arg(long, env = "BATON_RUNNER_STATE_DIR")]
    pub state_dir: PathBuf,
    /// The API server's CA, written into each pod's kubeconfig.
    #[arg(long, env = "BATON_CA_FILE")]
    pub ca_file: PathBuf,
    /// Delay before a container that exited is started again (kubelet's first back-off).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub restart_delay: Duration,
    /// Longest time a process gets between SIGTERM and SIGKILL.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub max_grace: Duration,
}

/// Whether a pod's processes should be running now.
pub fn should_run(pod: &Pod) -> bool {
    // Pods of the real node beside the KWOK nodes are kubelet's.
    let on_kwok_node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| n.starts_with(KWOK_NODE_PREFIX));
    let running = pod.status.as_ref().is_some_and(|s| {
        s.phase.as_deref() == Some("Running")
            && s.pod_ip.as_deref().is_some_and(|ip| !ip.is_empty())
    });
    on_kwok_node && running && pod.metadata.deletion_timestamp.is_none()
}

/// up.sh names its KWOK nodes `kwok-node-<i>`.
const KWOK_NODE_PREFIX: &str = "kwok-node-";

/// The containers to run: native sidecars (init containers that restart
/// always) first, then the regular containers; only images of ours.
pub fn runnable_containers(pod: &Pod) -> Vec<(&Container, &'static str)> {
    let Some(spec) = pod.spec.as_ref() else {
        return Vec::new();
    };
    let sidecars = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"));
    sidecars
        .chain(spec.containers.iter())
        .filter_map(|c| {
            let image = c.image.as_deref()?;
            podenv::binary_for_image(image, &OUR_IMAGES).map(|b| (c, b))
        })
        .collect()
}

struct Running {
    stop: CancellationToken,
    done: watch::Receiver<bool>,
    ip: String,
}

pub async fn run(
    settings: RunnerSettings,
    client: Client,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::all(client.clone());
    let mut running: HashMap<String, Running> = HashMap::new();
    let mut seen_in_relist: HashSet<String> = HashSet::new();
    let mut stream = watcher(pods, watcher::Config::default())
        .default_backoff()
        .boxed();
    info!(bin_dir = %settings.bin_dir.display(), "runner watching pods");
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => break,
            e = stream.next() => match e {
                Some(Ok(e)) => e,
                Some(Err(err)) => { warn!(error = %err, "pod watch failed; retrying"); continue }
                None => break,
            },
        };
        match event {
            watcher::Event::Init => seen_in_relist.clear(),
            watcher::Event::InitApply(pod) | watcher::Event::Apply(pod) => {
                let uid = pod.uid().unwrap_or_default();
                seen_in_relist.insert(uid.clone());
                if should_run(&pod) && !running.contains_key(&uid) {
                    let ip_taken = running
                        .values()
                        .find(|r| {
                            Some(&r.ip) == pod.status.as_ref().and_then(|s| s.pod_ip.as_ref())
                        })
                        .map(|r| r.done.clone());
                    if let Some(r) = start_pod(&settings, &client, &pod, ip_taken) {
                        running.insert(uid, r);
                    }
                } else if !should_run(&pod)
                    && let Some(r) = running.get(&uid)
                {
                    r.stop.cancel();
                }
            }
            watcher::Event::Delete(pod) => {
                if let Some(r) = running.get(&pod.uid().unwrap_or_default()) {
                    r.stop.cancel();
                }
            }
            watcher::Event::InitDone => {
                for (uid, r) in &running {
                    if !seen_in_relist.contains(uid) {
                        r.stop.cancel();
                    }
                }
            }
        }
        running.retain(|_, r| !*r.done.borrow());
    }
    info!(pods = running.len(), "runner stopping its pods");
    for r in running.values() {
        r.stop.cancel();
    }
    for r in running.values_mut() {
        let _ = r.done.wait_for(|d| *d).await;
    }
    Ok(())
}

fn start_pod(
    settings: &RunnerSettings,
    client: &Client,
    pod: &Pod,
    ip_taken: Option<watch::Receiver<bool>>,
) -> Option<Running> {
    let containers: Vec<(Container, &'static str)> = runnable_containers(pod)
        .into_iter()
        .map(|(c, b)| (c.clone(), b))
        .collect();
    if containers.is_empty() {
        return None;
    }
    let ns = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let ip = pod.status.as_ref()?.pod_ip.clone()?;
    let dir = settings.state_dir.join(&ns).join(&name);
    let stop = CancellationToken::new();
    let (done_tx, done) = watch::channel(false);
    let grace = pod
        .spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .map_or(settings.max_grace, |s| Duration::from_secs(s.max(0) as u64))
        .min(settings.max_grace);
    let (settings, client, pod, stop2) =
        (settings.clone(), client.clone(), pod.clone(), stop.clone());
    let span = info_span!("pod", namespace = %ns, pod = %name, ip = %ip);
    tokio::spawn(
        async move {
            if let Some(mut old) = ip_taken {
                // KWOK reuses IPs: the previous owner must release the address first.
                let _ = tokio::time::timeout(settings.max_grace * 2, old.wait_for(|d| *d)).await;
            }
            if let Err(err) = tokio::fs::create_dir_all(&dir).await {
                warn!(error = %err, "cannot create the pod's state dir");
            }
            let kubeconfig = match write_kubeconfig(&settings, &client, &pod, &dir).await {
                Ok(path) => Some(path),
                Err(err) => {
                    warn!(error = %err, "no token for the pod's service account; its processes get no API credentials");
                    None
                }
            };
            let tasks: Vec<_> = containers
                .into_iter()
                .map(|(container, binary)| {
                    let ctx = Supervised {
                        binary: settings.bin_dir.join(binary),
                        dir: dir.clone(),
                        kubeconfig: kubeconfig.clone(),
                        restart_delay: settings.restart_delay,
                        grace,
                    };
                    let (pod, stop) = (pod.clone(), stop2.clone());
                    tokio::spawn(
                        async move { ctx.supervise(&pod, &container, stop).await }
                            .instrument(tracing::Span::current()),
                    )
                })
                .collect();
            for t in tasks {
                let _ = t.await;
            }
            // As kubelet: once the containers of a deleted pod have exited,
            // remove the pod object, so that a StatefulSet's replacement of
            // the same name starts only after the old processes are gone.
            if pod_deleting(&client, &pod).await {
                let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
                let dp = DeleteParams {
                    grace_period_seconds: Some(0),
                    preconditions: Some(Preconditions { uid: pod.metadata.uid.clone(), resource_version: None }),
                    ..Default::default()
                };
                if let Err(err) = api.delete(&pod.name_any(), &dp).await {
                    tracing::debug!(error = %err, "pod already gone");
                }
            }
            let _ = done_tx.send(true);
        }
        .instrument(span),
    );
    Some(Running { stop, done, ip })
}

/// Whether the pod (this very one, by uid) is being deleted or is gone.
async fn pod_deleting(client: &Client, pod: &Pod) -> bool {
    let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
    match api.get_opt(&pod.name_any()).await {
        Ok(Some(p)) => {
            p.metadata.uid == pod.metadata.uid && p.metadata.deletion_timestamp.is_some()
        }
        _ => false,
    }
}

/// A kubeconfig with a token bound to the pod, for its service account.
async fn write_kubeconfig(
    settings: &RunnerSettings,
    client: &Client,
    pod: &Pod,
    dir: &Path,
) -> anyhow::Result<PathBuf> {
    let ns = pod.namespace().unwrap_or_default();
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![],
            expiration_seconds: Some(3600 * 6),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        },
        ..Default::default()
    };
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    // A new namespace's service account appears a moment after the namespace.
    let mut attempt = 0;
    let token = loop {
        match api
            .create_subresource::<_, TokenRequest>("token", &sa, &PostParams::default(), &request)
            .await
        {
            Ok(t) => break t.status.map(|s| s.token).unwrap_or_default(),
            Err(err) if attempt < 50 => {
                attempt += 1;
                tracing::debug!(error = %err, "token request failed; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => return Err(err.into()),
        }
    };
    let config = kube::config::Kubeconfig::read()?;
    let cluster_server = config
        .clusters
        .first()
        .and_then(|c| c.cluster.as_ref())
        .and_then(|c| c.server.clone())
        .unwrap_or_default();
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: {cluster_server}\n    certificate-authority: {ca}\nusers:\n- name: {sa}\n  user:\n    token: {token}\ncontexts:\n- name: pod\n  context: {{cluster: local, user: {sa}, namespace: {ns}}}\ncurrent-context: pod\n",
        ca = settings.ca_file.display(),
    );
    let path = dir.join("kubeconfig");
    tokio::fs::write(&path, text).await?;
    Ok(path)
}

struct Supervised {
    binary: PathBuf,
    dir: PathBuf,
    kubeconfig: Option<PathBuf>,
    restart_delay: Duration,
    grace: Duration,
}

impl Supervised {
    /// Runs the container's process until `stop`, restarting it after a
    /// delay when it exits (restartPolicy Always).
    async fn supervise(&self, pod: &Pod, container: &Container, stop: CancellationToken) {
        let (env, unresolved) = podenv::container_env(pod, container);
        if !unresolved.is_empty() {
            warn!(container = %container.name, ?unresolved, "env the runner cannot resolve is left out");
        }
        // Our images' entrypoint is the binary: command[0] is replaced by it.
        let args: Vec<String> = container
            .command
            .iter()
            .flatten()
            .skip(1)
            .chain(container.args.iter().flatten())
            .cloned()
            .collect();
        let log_path = self.dir.join(format!("{}.log", container.name));
        let pid_path = self.dir.join(format!("{}.pid", container.name));
        loop {
            let log = match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
            {
                Ok(f) => f,
                Err(err) => {
                    warn!(error = %err, "cannot open the container log");
                    return;
                }
            };
            let mut cmd = Command::new(&self.binary);
            cmd.args(&args)
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .envs(env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::null())
                .stdout(
                    log.try_clone()
                        .map(Stdio::from)
                        .unwrap_or_else(|_| Stdio::null()),
                )
                .stderr(Stdio::from(log))
                .kill_on_drop(true);
            if let Some(k) = &self.kubeconfig {
                cmd.env("KUBECONFIG", k);
            }
            let mut child = match cmd.spawn() {
                Ok(c) => c,
                Err(err) => {
                    warn!(container = %container.name, binary = %self.binary.display(), error = %err, "cannot start");
                    tokio::select! { _ = stop.cancelled() => return, _ = tokio::time::sleep(self.restart_delay) => continue }
                }
            };
            let pid = child.id().unwrap_or_default();
            let _ = std::fs::write(&pid_path, pid.to_string());
            info!(container = %container.name, pid, "started");
            tokio::select! {
                status = child.wait() => {
                    warn!(container = %container.name, pid, ?status, "exited; restarting after the back-off");
                    let _ = std::fs::remove_file(&pid_path);
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(self.restart_delay) => continue,
                    }
                }
                _ = stop.cancelled() => {
                    signal(pid, "TERM").await;
                    match tokio::time::timeout(self.grace, child.wait()).await {
                        Ok(status) => info!(container = %container.name, pid, ?status, "stopped"),
                        Err(_) => {
                            warn!(container = %container.name, pid, "grace period over; killing");
                            let _ = child.kill().await;
                        }
                    }
                    let _ = std::fs::remove_file(&pid_path);
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSpec, PodStatus};

    fn container(name: &str, image: &str, restart: Option<&str>) -> Container {
        Container {
            name: name.into(),
            image: Some(image.into()),
            restart_policy: restart.map(Into::into),
            ..Default::default()
        }
    }

    #[test]
    fn runs_native_sidecars_and_containers_of_our_images_only() {
        let pod = Pod {
            spec: Some(PodSpec {
                init_containers: Some(vec![
                    container("setup", "baton-demo-app", None),
                    container("baton-sidecar", "x/baton-sidecar:1", Some("Always")),
                ]),
                containers: vec![
                    container("app", "baton-demo-app:dev", None),
                    container("proxy", "envoy:1", None),
                ],
                ..Default::default()
            }),
            ..Default::default()
        };
        let names: Vec<_> = runnable_containers(&pod)
            .iter()
            .map(|(c, _)| c.name.as_str())
            .collect();
        assert_eq!(names, ["baton-sidecar", "app"]);
    }

    #[test]
    fn only_running_pods_of_kwok_nodes_with_an_ip_that_are_not_deleted_run() {
        let mut pod = Pod {
            spec: Some(PodSpec {
                node_name: Some("kwok-node-1".into()),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                pod_ip: Some("127.64.0.2".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(should_run(&pod));
        pod.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        assert!(!should_run(&pod));
        pod.metadata.deletion_timestamp = None;
        if let Some(s) = pod.status.as_mut() {
            s.phase = Some("Pending".into());
        }
        assert!(!should_run(&pod));
        if let Some(s) = pod.status.as_mut() {
            s.phase = Some("Running".into());
        }
        // The real node's pods are kubelet's.
        if let Some(s) = pod.spec.as_mut() {
            s.node_name = Some("baton-node-0".into());
        }
        assert!(!should_run(&pod));
    }
}
