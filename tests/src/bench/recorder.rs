//! Watches a namespace's pods and EndpointSlices, as kube-proxy and an
//! observer would, and keeps: the current state (for waits and for the
//! client that follows the Service's endpoint), and the history of every
//! group's role labels and ready endpoints, each change stamped with the
//! time the watch delivered it.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{StreamExt, stream};
use k8s_openapi::api::{core::v1::Pod, discovery::v1::EndpointSlice};
use kube::{Api, ResourceExt, runtime::watcher};
use tokio::sync::watch;

use super::stats::now;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodInfo {
    /// The pod's `app` label: its group.
    pub app: String,
    pub role: Option<String>,
    pub terminating: bool,
    pub uid: String,
    pub ip: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Endpoint {
    pub pod: String,
    pub uid: String,
    pub ip: String,
}

#[derive(Clone, Debug, Default)]
pub struct State {
    /// When the watch delivered the event that made this state.
    pub t: f64,
    pub pods: BTreeMap<String, PodInfo>,
    /// Ready endpoints by EndpointSlice name, with the slice's Service.
    slices: BTreeMap<String, (String, Vec<Endpoint>)>,
}

impl State {
    /// Ready endpoints of `service`, over all its slices.
    pub fn endpoints(&self, service: &str) -> Vec<Endpoint> {
        let mut eps: Vec<Endpoint> = self
            .slices
            .values()
            .filter(|(s, _)| s == service)
            .flat_map(|(_, e)| e.iter().cloned())
            .collect();
        eps.sort_by(|a, b| a.pod.cmp(&b.pod));
        eps
    }

    pub fn endpoint_pods(&self, service: &str) -> Vec<String> {
        self.endpoints(service).into_iter().map(|e| e.pod).collect()
    }

    /// Pods of `group` that carry role=active and are not terminating.
    pub fn active(&self, group: &str) -> Vec<String> {
        self.pods
            .iter()
            .filter(|(_, p)| p.app == group && !p.terminating)
            .filter(|(_, p)| p.role.as_deref() == Some("active"))
            .map(|(n, _)| n.clone())
            .collect()
    }

    pub fn group_pods(&self, group: &str) -> Vec<(String, PodInfo)> {
        self.pods
            .iter()
            .filter(|(_, p)| p.app == group)
            .map(|(n, p)| (n.clone(), p.clone()))
            .collect()
    }

    fn groups(&self) -> Vec<String> {
        let mut g: Vec<String> = self.pods.values().map(|p| p.app.clone()).collect();
        g.sort();
        g.dedup();
        g
    }

    fn view(&self, group: &str) -> GroupView {
        GroupView {
            roles: self
                .group_pods(group)
                .into_iter()
                .map(|(n, p)| {
                    let role = if p.terminating {
                        "terminating".to_string()
                    } else {
                        p.role.unwrap_or_else(|| "-".into())
                    };
                    (n, role)
                })
                .collect(),
            endpoints: self.endpoint_pods(&format!("{group}-active")),
        }
    }
}

/// What one group looked like: each pod's role ("-" unlabelled,
/// "terminating" once deleted) and the Service's ready endpoints.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GroupView {
    pub roles: BTreeMap<String, String>,
    pub endpoints: Vec<String>,
}

impl GroupView {
    pub fn active_count(&self) -> usize {
        self.roles.values().filter(|r| *r == "active").count()
    }
}

#[derive(Clone, Debug)]
pub struct Change {
    pub t: f64,
    pub group: String,
    pub view: GroupView,
}

pub struct Recorder {
    rx: watch::Receiver<Arc<State>>,
    history: Arc<Mutex<Vec<Change>>>,
    task: tokio::task::JoinHandle<()>,
}

/// Both watches' events, boxed: a Pod is much larger than a slice event.
enum Event {
    Pod(Box<Result<watcher::Event<Pod>, watcher::Error>>),
    Slice(Box<Result<watcher::Event<EndpointSlice>, watcher::Error>>),
}

impl Recorder {
    /// Starts watching; returns once both watches have listed.
    pub async fn start(pods: Api<Pod>, slices: Api<EndpointSlice>) -> Recorder {
        let (tx, rx) = watch::channel(Arc::new(State::default()));
        let history: Arc<Mutex<Vec<Change>>> = Arc::default();
        let h = history.clone();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let events = stream::select(
            watcher(pods, watcher::Config::default()).map(|e| Event::Pod(Box::new(e))),
            watcher(slices, watcher::Config::default()).map(|e| Event::Slice(Box::new(e))),
        );
        let task = tokio::spawn(async move {
            let mut events = events.boxed();
            let mut state = State::default();
            let mut last: BTreeMap<String, GroupView> = BTreeMap::new();
            let mut listed = (false, false);
            let mut ready_tx = Some(ready_tx);
            while let Some(ev) = events.next().await {
                match ev {
                    Event::Pod(e) if e.is_ok() => match (*e).expect("checked") {
                        watcher::Event::Init => {}
                        watcher::Event::InitDone => listed.0 = true,
                        watcher::Event::InitApply(p) | watcher::Event::Apply(p) => {
                            state.pods.insert(p.name_any(), pod_info(&p));
                        }
                        watcher::Event::Delete(p) => {
                            state.pods.remove(&p.name_any());
                        }
                    },
                    Event::Slice(e) if e.is_ok() => match (*e).expect("checked") {
                        watcher::Event::Init => {}
                        watcher::Event::InitDone => listed.1 = true,
                        watcher::Event::InitApply(s) | watcher::Event::Apply(s) => {
                            state.slices.insert(s.name_any(), slice_info(&s));
                        }
                        watcher::Event::Delete(s) => {
                            state.slices.remove(&s.name_any());
                        }
                    },
                    Event::Pod(_) | Event::Slice(_) => continue,
                }
                state.t = now();
                if listed == (true, true)
                    && let Some(tx) = ready_tx.take()
                {
                    let _ = tx.send(());
                }
                let mut changes = Vec::new();
                for g in state.groups() {
                    let view = state.view(&g);
                    if last.get(&g) != Some(&view) {
                        last.insert(g.clone(), view.clone());
                        changes.push(Change {
                            t: state.t,
                            group: g,
                            view,
                        });
                    }
                }
                if !changes.is_empty() {
                    h.lock().expect("not poisoned").extend(changes);
                }
                tx.send_replace(Arc::new(state.clone()));
            }
        });
        let _ = tokio::time::timeout(Duration::from_secs(30), ready_rx).await;
        Recorder { rx, history, task }
    }

    pub fn rx_clone(&self) -> watch::Receiver<Arc<State>> {
        self.rx.clone()
    }

    pub fn state(&self) -> Arc<State> {
        self.rx.borrow().clone()
    }

    /// Waits until `done` holds for the state; the state it held for (its
    /// `t` is when the watch delivered it), or an error naming `what`.
    pub async fn wait(
        &self,
        timeout: Duration,
        what: &str,
        mut done: impl FnMut(&State) -> bool,
    ) -> anyhow::Result<Arc<State>> {
        let mut rx = self.rx.clone();
        match tokio::time::timeout(timeout, rx.wait_for(|s| done(s))).await {
            Ok(Ok(s)) => Ok(s.clone()),
            Ok(Err(_)) => anyhow::bail!("the recorder stopped while waiting for {what}"),
            Err(_) => anyhow::bail!("timed out after {timeout:?} waiting for {what}"),
        }
    }

    /// The group's changes from `from` to `to`, plus the view in force at `from`.
    pub fn history(&self, group: &str, from: f64, to: f64) -> Vec<Change> {
        let all = self.history.lock().expect("not poisoned");
        let mut out: Vec<Change> = Vec::new();
        if let Some(before) = all.iter().rev().find(|c| c.group == group && c.t <= from) {
            out.push(Change {
                t: from,
                ..before.clone()
            });
        }
        out.extend(
            all.iter()
                .filter(|c| c.group == group && c.t > from && c.t <= to)
                .cloned(),
        );
        out
    }

    /// Seconds within [from, to] with two or more pods of `group`
    /// labelled active, and with none.
    pub fn two_and_none(&self, group: &str, from: f64, to: f64) -> (f64, f64) {
        let h = self.history(group, from, to);
        let (mut two, mut none) = (0.0, 0.0);
        for (i, c) in h.iter().enumerate() {
            let end = h.get(i + 1).map_or(to, |n| n.t);
            let d = (end - c.t).max(0.0);
            match c.view.active_count() {
                0 => none += d,
                1 => {}
                _ => two += d,
            }
        }
        (two, none)
    }

    /// Changes of role or endpoints of `group` within the window (flaps).
    pub fn changes(&self, group: &str, from: f64, to: f64) -> usize {
        self.history(group, from, to).len().saturating_sub(1)
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn pod_info(p: &Pod) -> PodInfo {
    PodInfo {
        app: p.labels().get("app").cloned().unwrap_or_default(),
        role: p.labels().get("role").cloned(),
        terminating: p.metadata.deletion_timestamp.is_some(),
        uid: p.uid().unwrap_or_default(),
        ip: p
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .filter(|ip| !ip.is_empty()),
    }
}

fn slice_info(s: &EndpointSlice) -> (String, Vec<Endpoint>) {
    let service = s
        .labels()
        .get("kubernetes.io/service-name")
        .cloned()
        .unwrap_or_default();
    let eps = s
        .endpoints
        .iter()
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
        .filter_map(|e| {
            let r = e.target_ref.as_ref()?;
            Some(Endpoint {
                pod: r.name.clone()?,
                uid: r.uid.clone().unwrap_or_default(),
                ip: e.addresses.first()?.clone(),
            })
        })
        .collect();
    (service, eps)
}
