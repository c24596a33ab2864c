//! Kubernetes Events on the sidecar's own Pod, so that `kubectl describe
//! pod` and `kubectl get events` tell what happened. Published in the
//! background: an Event is never worth delaying a handover for.

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::{
    Client, Resource,
    runtime::events::{Event, EventType, Recorder, Reporter},
};
use std::{sync::Arc, time::Duration};

use std::sync::Mutex;

use tokio::task::JoinSet;
use tracing::debug;

#[derive(Clone)]
pub struct Events {
    recorder: Recorder,
    /// Publications under way, so that the last ones (the handover on
    /// shutdown) can be waited for before the process exits.
    in_flight: Arc<Mutex<JoinSet<()>>>,
}

impl Events {
    pub fn new(client: Client, pod_name: &str) -> Self {
        let reporter = Reporter {
            controller: "baton-sidecar".into(),
            instance: Some(pod_name.to_owned()),
        };
        Events {
            recorder: Recorder::new(client, reporter),
            in_flight: Arc::default(),
        }
    }

    /// Publishes `reason` with `note` about `pod`, without waiting.
    pub fn publish(&self, pod: &Pod, warning: bool, reason: &'static str, note: String) {
        let reference: ObjectReference = pod.object_ref(&());
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            note: Some(note),
            action: reason.into(),
            secondary: None,
        };
        let recorder = self.recorder.clone();
        let task = async move {
            if let Err(err) = recorder.publish(&event, &reference).await {
                debug!(error = %err, reason, "event not published");
            }
        };
        let mut set = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        // Forget the finished ones as new ones come.
        while set.try_join_next().is_some() {}
        set.spawn(task);
    }

    /// Waits, at most `timeout`, for the Events still being published.
    pub async fn flush(&self, timeout: Duration) {
        let mut set =
            std::mem::take(&mut *self.in_flight.lock().unwrap_or_else(|e| e.into_inner()));
        let _ =
            tokio::time::timeout(timeout, async { while set.join_next().await.is_some() {} }).await;
    }
}
