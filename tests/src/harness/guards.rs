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
