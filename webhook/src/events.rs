//! Events on the owner workload: "Injected" and "InjectionSkipped", so that
//! `kubectl describe statefulset web` tells whether its pods got the sidecar.

use baton_sidecar::{
    events::{Occurrence, Recorder, Reporter},
    telemetry::ErrorChain,
};

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

/// Records through the sidecar's [`Recorder`]: each admission its own Event,
/// with its pod's name in the note and a `lastTimestamp` (kube's recorder
/// folded every `Injected` on an owner into the first one, naming the first
/// pod; see `baton_sidecar::events`). RBAC: `create` on core `events`.
#[derive(Clone)]
pub struct KubeEvents {
    recorder: Recorder,
}

impl KubeEvents {
    pub fn new(client: kube::Client, instance: Option<String>) -> Self {
        let reporter = Reporter {
            controller: REPORTER.to_owned(),
            instance: instance.unwrap_or_else(|| REPORTER.to_owned()),
        };
        Self {
            recorder: Recorder::new(client, reporter),
        }
    }
}

impl EventSink for KubeEvents {
    fn record(&self, regarding: &Owner, event: AdmissionEvent) {
        let reference = regarding.object_ref();
        // Stamped at admission; sent without making the admission wait.
        let ev = self.recorder.event(
            &reference,
            &Occurrence {
                warning: event.warning,
                reason: event.reason.to_owned(),
                action: "Inject".to_owned(),
                note: event.note,
            },
        );
        let recorder = self.recorder.clone();
        tokio::spawn(async move {
            if let Err(error) = recorder.send(&ev).await {
                tracing::warn!(
                    error = %ErrorChain(&error),
                    kind = reference.kind.as_deref().unwrap_or_default(),
                    name = reference.name.as_deref().unwrap_or_default(),
                    "recording an event failed"
                );
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::testing::{ScriptedApi, created, owner};

    #[tokio::test]
    async fn each_injection_is_its_own_event_naming_its_pod() {
        let api = ScriptedApi::new(created);
        let events = KubeEvents::new(api.client(), Some("baton-webhook-7d9f-x2".into()));
        let web = owner("StatefulSet", "web");
        for (n, pod) in ["web-0", "web-1"].into_iter().enumerate() {
            events.record(
                &web,
                AdmissionEvent::injected(pod, "web", "baton-sidecar:1"),
            );
            // One after the other, as pods are admitted: kube's recorder
            // then patched the second into the first Event's series.
            api.wait_for(n + 1, Duration::from_secs(5)).await;
        }
        assert_eq!(
            api.sent("message"),
            [
                "POST /api/v1/namespaces/default/events: injected baton-sidecar (baton-sidecar:1) into pod web-0, lease web",
                "POST /api/v1/namespaces/default/events: injected baton-sidecar (baton-sidecar:1) into pod web-1, lease web",
            ]
        );
        let sent = api.requests();
        for r in &sent {
            assert!(r.body["lastTimestamp"].is_string(), "{}", r.body);
            assert_eq!(r.body["involvedObject"]["kind"], "StatefulSet");
            assert_eq!(r.body["reportingComponent"], REPORTER);
            assert_eq!(r.body["reportingInstance"], "baton-webhook-7d9f-x2");
        }
    }
}
