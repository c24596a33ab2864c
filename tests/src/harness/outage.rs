//! What the chaos tests (`tests/tests/chaos.rs`) add to the harness: the
//! never-two-active guard through a declared outage of the control plane,
//! and a record of when a group had an active pod.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, runtime::watcher};

use super::{NeverTwoActive, labelled, waits::Listed};

/// A declared outage of the control plane, from [`NeverTwoActive::outage_begins`].
#[must_use = "end the outage with NeverTwoActive::outage_over"]
pub struct Outage {
    /// How many times the guard had stopped seeing before the outage.
    blind_before: usize,
}

impl NeverTwoActive {
    /// Declares that the control plane is about to be disrupted: watch
    /// errors from now until [`NeverTwoActive::outage_over`] are expected.
    /// The guard goes on checking every complete view its watch shows.
    pub fn outage_begins(&self) -> Outage {
        Outage {
            blind_before: self.blind.lock().expect("not poisoned").len(),
        }
    }

    /// Ends a declared outage, once the control plane is back: a fresh
    /// guard lists the pods (a complete view taken after the outage) and
    /// watches from there on, held to every rule of [`NeverTwoActive`]. The
    /// old watch keeps checking what it sees until the fresh one has
    /// listed, then stops; its errors since the outage began are excused
    /// (returned), anything else it recorded (two active pods, errors from
    /// before the outage, an ended watch) carries over to the fresh guard.
    /// Unseen remain only the changes between the old watch's last event
    /// and the fresh list.
    pub async fn outage_over(&mut self, outage: Outage) -> Vec<String> {
        let fresh =
            NeverTwoActive::start(self.api.clone(), &self.labels, &self.key, &self.active).await;
        let mut old = std::mem::replace(self, fresh);
        old.task.abort();
        // Ended for sure: nothing it records can come after the merge.
        let _ = (&mut old.task).await;
        let mut excused = Vec::new();
        let mut blind = self.blind.lock().expect("not poisoned");
        for (i, what) in old
            .blind
            .lock()
            .expect("not poisoned")
            .drain(..)
            .enumerate()
        {
            if i >= outage.blind_before && what.starts_with("watch error") {
                excused.push(what);
            } else {
                blind.push(what);
            }
        }
        self.violations
            .lock()
            .expect("not poisoned")
            .extend(old.violations.lock().expect("not poisoned").drain(..));
        let mut most = self.most.lock().expect("not poisoned");
        *most = (*most).max(*old.most.lock().expect("not poisoned"));
        excused
    }
}

/// When a group had an active pod, as a watch on its pods' labels saw it
/// (each complete view, stamped on arrival). A measurement, not a guard:
/// watch errors are skipped (the watch resumes or re-lists after them).
pub struct ActiveTimeline {
    task: tokio::task::JoinHandle<()>,
    /// (when, how many pods were active) at each change.
    changes: Arc<Mutex<Vec<(Instant, usize)>>>,
}

impl ActiveTimeline {
    /// Starts watching; returns once the watch has listed the pods.
    pub async fn start(api: Api<Pod>, labels: &str, key: &str, active: &str) -> ActiveTimeline {
        let changes = Arc::new(Mutex::new(Vec::new()));
        let c = changes.clone();
        let (key, active) = (key.to_owned(), active.to_owned());
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let mut stream = watcher(api, watcher::Config::default().labels(labels)).boxed();
        let task = tokio::spawn(async move {
            let mut ready_tx = Some(ready_tx);
            let mut state = Listed::default();
            while let Some(event) = stream.next().await {
                let Ok(event) = event else { continue };
                if !state.apply(event) {
                    continue;
                }
                if let Some(tx) = ready_tx.take() {
                    let _ = tx.send(());
                }
                let n = labelled(&state.items(), &key, &active).len();
                let mut all = c.lock().expect("not poisoned");
                if all.last().is_none_or(|&(_, last)| last != n) {
                    all.push((Instant::now(), n));
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(30), ready_rx)
            .await
            .expect("the active timeline listed the pods within 30 s")
            .expect("the active timeline's watch ended before it listed the pods");
        ActiveTimeline { task, changes }
    }

    /// The longest time without an active pod that ended after `since` (or
    /// has not ended: counted until now), from the last moment with an
    /// active pod to the first one again; zero if there was none.
    pub fn longest_gap_since(&self, since: Instant) -> Duration {
        let changes = self.changes.lock().expect("not poisoned");
        let mut longest = Duration::ZERO;
        let mut none_since = None;
        for &(at, n) in changes.iter() {
            match (n, none_since) {
                (0, None) => none_since = Some(at),
                (1.., Some(from)) => {
                    if at >= since {
                        longest = longest.max(at - from);
                    }
                    none_since = None;
                }
                _ => {}
            }
        }
        if let Some(from) = none_since {
            longest = longest.max(from.elapsed());
        }
        longest
    }
}

impl Drop for ActiveTimeline {
    fn drop(&mut self) {
        self.task.abort();
    }
}
