//! Events on the owner workload: "Injected" and "InjectionSkipped", so that
//! `kubectl describe statefulset web` tells whether its pods got the sidecar.

use kube::runtime::events::{Event, EventType, Recorder, Reporter};

use crate::owner::Owner;

/// Reporting controller of the Events.
pub const REPORTER: &str = "baton-webhook";

/// One Event to record on an owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmissionEvent {
    pub warning: bool,
    /// `Injected` or `InjectionSkipped`.
    pub reason: &'static str,
    pub note: String,
}

impl AdmissionEvent {
    pub fn injected(pod: &str, lease: &str, image: &str) -> Self {
        Self {
            warning: false,
            reason: "Injected",
            note: format!("injected baton-sidecar ({image}) into pod {pod}, lease {lease}"),
        }
    }

    pub fn skipped(pod: &str, why: &str) -> Self {
        Self {
            warning: true,
            reason: "InjectionSkipped",
            note: format!("pod {pod} asked for baton-sidecar but was not injected: {why}"),
        }
    }
}

/// Records Events without making the admission wait for them.
pub trait EventSink: Send + Sync {
    fn record(&self, regarding: &Owner, event: AdmissionEvent);
}

/// Publishes through kube's [`Recorder`] (RBAC: create, patch on events.k8s.io events).
#[derive(Clone)]
pub struct KubeEvents {
    recorder: Recorder,
}

impl KubeEvents {
    pub fn new(client: kube::Client, instance: Option<String>) -> Self {
        let reporter = Reporter {
            controller: REPORTER.to_owned(),
            instance,
        };
        Self {
            recorder: Recorder::new(client, reporter),
        }
    }
}

impl EventSink for KubeEvents {
    fn record(&self, regarding: &Owner, event: AdmissionEvent) {
        let recorder = self.recorder.clone();
        let reference = regarding.object_ref();
        tokio::spawn(async move {
            let ev = Event {
                type_: if event.warning {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                reason: event.reason.to_owned(),
                note: Some(event.note),
                action: "Inject".to_owned(),
                secondary: None,
            };
            if let Err(error) = recorder.publish(&ev, &reference).await {
                tracing::warn!(
                    %error,
                    kind = reference.kind.as_deref().unwrap_or_default(),
                    name = reference.name.as_deref().unwrap_or_default(),
                    "recording an event failed"
                );
            }
        });
    }
}
