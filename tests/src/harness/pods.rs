//! A pod as the API server and its node report it: its node, IP,
//! readiness, the sidecar's restarts, its containers' ids and host pids,
//! logs and emptyDir volumes, signals to its processes, and which pods
//! carry a label.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use super::{TestNamespace, wait_for_object};
use crate::workload::RUN_VOLUME;

/// What a test reaches of a namespace's pods on their nodes: the runner's
/// files, the containers' host pids, logs and emptyDir volumes.
impl TestNamespace {
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

impl TestNamespace {
    /// The sidecar's role file of `pod` (`BATON_ROLE_FILE` in [`crate::workload::RUN_DIR`]),
    /// read through kubelet's folder on the host, also while the pod's node
    /// is cut off. When it said what is [`RoleFileHistory`]'s: the sidecar
    /// rewrites it, so its mtime is only its last write.
    pub async fn role_file(&self, pod: &str) -> serde_json::Value {
        let path = self.empty_dir(pod, RUN_VOLUME).await.join("role.json");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{pod}'s role file {}: {e}", path.display()));
        serde_json::from_str(&text).expect("the role file is JSON")
    }

    /// Follows `pod`'s role file from now on (see [`RoleFileHistory`]).
    /// The pod must be reachable through the API server now; the file is
    /// then read through the host, also while the pod's node is cut off.
    pub async fn follow_role_file(&self, pod: &str) -> RoleFileHistory {
        let path = self.empty_dir(pod, RUN_VOLUME).await.join("role.json");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                if let Some(version) = read_role_file(&path) {
                    let mut seen = record.lock().expect("the role file history");
                    if seen.last() != Some(&version) {
                        seen.push(version);
                    }
                }
                tokio::time::sleep(ROLE_FILE_POLL).await;
            }
        });
        RoleFileHistory { seen, task }
    }
}

/// How often a followed role file is read (a file on the host has no watch
/// API; the sidecar writes it once per change of role, holder or count).
const ROLE_FILE_POLL: Duration = Duration::from_millis(20);

/// The role a role file says and when that version was written.
fn read_role_file(path: &std::path::Path) -> Option<(String, k8s_openapi::jiff::Timestamp)> {
    let text = std::fs::read_to_string(path).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    let written = std::fs::metadata(path).ok()?.modified().ok()?;
    Some((
        value["role"].as_str()?.to_owned(),
        k8s_openapi::jiff::Timestamp::try_from(written).ok()?,
    ))
}

/// The versions of a role file, as read every 20 ms: when it first said a
/// role. The sidecar rewrites the file when the holder or the count it
/// shows changes (a partitioned holder whose renewal ends unanswered at
/// the Lease's expiry forgets the holder), so the file's last mtime is not
/// when it turned passive.
pub struct RoleFileHistory {
    seen: Arc<Mutex<Vec<(String, k8s_openapi::jiff::Timestamp)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RoleFileHistory {
    /// When the file first said `role` after saying another one.
    pub fn turned(&self, role: &str) -> Option<k8s_openapi::jiff::Timestamp> {
        let seen = self.seen.lock().expect("the role file history");
        seen.windows(2)
            .find(|w| w[0].0 != role && w[1].0 == role)
            .map(|w| w[1].1)
    }
}

impl Drop for RoleFileHistory {
    fn drop(&mut self) {
        self.task.abort();
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

/// Pods of `labels` that carry `key=value`.
pub fn labelled(pods: &[Pod], key: &str, value: &str) -> Vec<String> {
    pods.iter()
        .filter(|p| p.labels().get(key).map(String::as_str) == Some(value))
        .map(|p| p.name_any())
        .collect()
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

/// Sends a signal to a host pid (a container's process on the real node, a
/// runner's process) with kill(1): the workspace forbids unsafe code.
pub async fn signal(pid: u32, sig: &str) {
    let _ = tokio::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .await;
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
