//! Watches that run while a test acts and are checked at its end: the
//! never-two-active guard (invariant I1), and the histories of a Service's
//! Ready endpoints and of a Lease's holders.

use std::{
    collections::BTreeSet,
    fmt::Debug,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::api::{core::v1::Pod, discovery::v1::EndpointSlice};
use kube::{Api, Resource, runtime::watcher};
use serde::de::DeserializeOwned;

use super::{TestNamespace, ready_endpoints, serving_active, waits::Listed};

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

/// Watches a group's pods from before a test acts until it ends, and
/// records every moment at which more than one pod not being deleted
/// carried the active label.
/// A guard that stops seeing fails the test: a watch error (events may have
/// been missed), a watch that ends, or one that never lists the pods.
pub struct NeverTwoActive {
    pub(super) task: tokio::task::JoinHandle<()>,
    pub(super) violations: Arc<Mutex<Vec<Vec<String>>>>,
    pub(super) most: Arc<Mutex<usize>>,
    pub(super) blind: Arc<Mutex<Vec<String>>>,
    /// The pods active in the guard's latest complete view.
    active_seen: tokio::sync::watch::Receiver<Vec<String>>,
    pub(super) api: Api<Pod>,
    pub(super) labels: String,
    pub(super) key: String,
    pub(super) active: String,
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

/// Sets of Ready endpoints, each with when the watch delivered it (s since
/// the epoch), in order.
pub type TimedViews = Vec<(f64, BTreeSet<String>)>;

/// Watches a Service's EndpointSlices while a test acts and keeps every
/// set of pods they listed as Ready, in order: what kube-proxy may balance
/// across (a terminating pod it uses only while none is Ready).
pub struct ReadyEndpointsHistory {
    task: tokio::task::JoinHandle<()>,
    views: Arc<Mutex<TimedViews>>,
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
                if views.last().map(|(_, last)| last) != Some(&ready) {
                    views.push((crate::clients::now(), ready));
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
        self.timed().into_iter().map(|(_, v)| v).collect()
    }

    /// Every set of Ready endpoints seen so far, with when the watch
    /// delivered it ([`ReadyEndpointsHistory::went_blind`] says whether
    /// changes may be missing).
    pub fn timed(&self) -> TimedViews {
        self.views.lock().expect("not poisoned").clone()
    }

    /// Whether the watch failed or ended at some point.
    pub fn went_blind(&self) -> bool {
        !self.blind.lock().expect("not poisoned").is_empty()
    }
}

impl Drop for ReadyEndpointsHistory {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Seconds within `[from, to]` during which the timed views (as
/// [`ReadyEndpointsHistory::timed`] gives them, in order) listed no ready
/// endpoint, and two or more.
pub fn endpoint_gaps(views: &[(f64, BTreeSet<String>)], from: f64, to: f64) -> (f64, f64) {
    let (mut none, mut two) = (0.0, 0.0);
    for (i, (t, v)) in views.iter().enumerate() {
        let start = t.max(from);
        let end = views.get(i + 1).map_or(to, |(next, _)| *next).min(to);
        let d = (end - start).max(0.0);
        match v.len() {
            0 => none += d,
            1 => {}
            _ => two += d,
        }
    }
    (none, two)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn set(pods: &[&str]) -> BTreeSet<String> {
        pods.iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn gaps_count_only_the_window_and_end_at_the_next_view() {
        let views = vec![
            (0.0, set(&["a"])),
            (10.0, set(&[])),
            (12.5, set(&["a", "b"])),
            (13.0, set(&["b"])),
            (20.0, set(&[])),
        ];
        // From 5 to 22: none 10..12.5 and 20..22, two 12.5..13.
        assert_eq!(endpoint_gaps(&views, 5.0, 22.0), (4.5, 0.5));
        // A window inside one view takes that view's state.
        assert_eq!(endpoint_gaps(&views, 10.5, 11.0), (0.5, 0.0));
        // Before the first view nothing is known: nothing is counted.
        assert_eq!(endpoint_gaps(&views[1..], 0.0, 11.0), (1.0, 0.0));
    }
}
