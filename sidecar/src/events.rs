//! Kubernetes Events on the sidecar's own Pod, so that `kubectl describe
//! pod` and `kubectl get events` tell what happened. Published in the
//! background: an Event is never worth delaying a handover for.

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::{
    Client, Resource,
    runtime::events::{Event, EventType, Recorder, Reporter},
};
use tracing::debug;

#[derive(Clone)]
pub struct Events {
    recorder: Recorder,
}

impl Events {
    pub fn new(client: Client, pod_name: &str) -> Self {
        let reporter = Reporter {
            controller: "baton-sidecar".into(),
            instance: Some(pod_name.to_owned()),
        };
        Events {
            recorder: Recorder::new(client, reporter),
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
        tokio::spawn(async move {
            if let Err(err) = recorder.publish(&event, &reference).await {
                debug!(error = %err, reason, "event not published");
            }
        });
    }
}
