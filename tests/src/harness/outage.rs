//! What the chaos tests (`tests/tests/chaos.rs`, `brownout.rs`) add to the
//! harness: the never-two-active guard through a declared outage of the
//! control plane, a record of when a group had an active pod, and an API
//! server made slow rather than dead.

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

/// A slow API server: the process frozen (SIGSTOP) for `frozen`, then
/// resumed (SIGCONT) for `running`, over and over, until stopped or
/// dropped. A request that arrives during a freeze waits for its end, so
/// every client of the API server (baton, kubelet, controllers, kube-proxy)
/// sees answers up to `frozen` late, as under an overloaded server, while
/// nothing fails outright. It always ends resumed, also when a test panics.
pub struct Brownout {
    pid: u32,
    stop: Arc<std::sync::atomic::AtomicBool>,
    cycles: Option<std::thread::JoinHandle<u32>>,
}

impl Brownout {
    pub fn start(pid: u32, frozen: Duration, running: Duration) -> Brownout {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        // A thread of its own: a busy test runtime must not stretch the freeze.
        let cycles = std::thread::spawn(move || {
            let mut cycles = 0;
            while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
                send(pid, "STOP");
                std::thread::sleep(frozen);
                send(pid, "CONT");
                cycles += 1;
                std::thread::sleep(running);
            }
            cycles
        });
        Brownout {
            pid,
            stop,
            cycles: Some(cycles),
        }
    }

    /// Ends the brownout with the API server running; the cycles it ran.
    pub fn stop(mut self) -> u32 {
        self.end()
    }

    fn end(&mut self) -> u32 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let cycles = self
            .cycles
            .take()
            .map_or(0, |t| t.join().unwrap_or_default());
        send(self.pid, "CONT");
        cycles
    }
}

impl Drop for Brownout {
    fn drop(&mut self) {
        self.end();
    }
}

/// `kill -SIG pid`, from a thread that may not await.
fn send(pid: u32, sig: &str) {
    let _ = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

/// What the pods of a group tell their apps, sampled from each sidecar's
/// `/status` every 100 ms by pod IP (the status server needs no API server,
/// so this keeps seeing through a control-plane outage).
pub struct ToldActive {
    task: tokio::task::JoinHandle<()>,
    samples: Arc<Mutex<Vec<(Instant, usize)>>>,
    changes: Arc<Mutex<usize>>,
}

impl ToldActive {
    /// Samples the sidecars at these pod IPs until dropped.
    pub fn start(ips: Vec<String>) -> ToldActive {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let changes = Arc::new(Mutex::new(0));
        let (record, count) = (samples.clone(), changes.clone());
        let task = tokio::spawn(async move {
            let http = super::http();
            let mut last: Vec<Option<bool>> = vec![None; ips.len()];
            loop {
                let mut active = 0;
                for (ip, last) in ips.iter().zip(last.iter_mut()) {
                    let url = format!("http://{ip}:9095/status");
                    let Ok(r) = http.get(url).send().await else {
                        continue;
                    };
                    let Ok(status) = r.json::<baton_sidecar::contract::Status>().await else {
                        continue;
                    };
                    let is_active = status.role == Some(baton_sidecar::contract::Role::Active);
                    active += usize::from(is_active);
                    if last.is_some_and(|was| was != is_active) {
                        *count.lock().expect("not poisoned") += 1;
                    }
                    *last = Some(is_active);
                }
                record
                    .lock()
                    .expect("not poisoned")
                    .push((Instant::now(), active));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        ToldActive {
            task,
            samples,
            changes,
        }
    }

    /// How many times a sidecar's role, as told to its app, changed.
    pub fn changes(&self) -> usize {
        *self.changes.lock().expect("not poisoned")
    }

    /// The most sidecars that told their apps active in one sample.
    pub fn most_active(&self) -> usize {
        let samples = self.samples.lock().expect("not poisoned");
        samples.iter().map(|(_, n)| *n).max().unwrap_or(0)
    }

    /// The total time, from sample to sample, during which no sidecar told
    /// its app active.
    pub fn without_active(&self) -> Duration {
        let samples = self.samples.lock().expect("not poisoned");
        samples
            .windows(2)
            .filter(|w| w[0].1 == 0)
            .map(|w| w[1].0 - w[0].0)
            .sum()
    }
}

impl Drop for ToldActive {
    fn drop(&mut self) {
        self.task.abort();
    }
}
