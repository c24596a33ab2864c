//! Kubernetes Events on the sidecar's own Pod, so that `kubectl describe
//! pod` and `kubectl get events` tell what happened. Published in the
//! background: an Event is never worth delaying a handover for.
//!
//! Each occurrence is its own Event, written through the core/v1 Events API
//! by the small [`Recorder`] below rather than kube's `Recorder`. kube's
//! (kube-runtime 4.2) folds every repeat of (type, reason, action, reporter,
//! regarding, related) within six minutes into the first Event's `series`
//! and keeps that Event's note (events.k8s.io/v1 makes `note` immutable), so
//! `Promoted` ×2 told "transition 0" about transition 2. And it writes
//! events.k8s.io/v1, whose create refuses `deprecatedLastTimestamp`, so
//! `kubectl get events --sort-by=.lastTimestamp` had nothing to sort on. The
//! core/v1 API takes `eventTime` (for events.k8s.io readers) together with
//! `firstTimestamp`, `lastTimestamp` and `count` (for kubectl). The webhook
//! records its Events through this module too.

use k8s_openapi::{
    api::core::v1::{Event, EventSource, ObjectReference, Pod},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time},
    jiff::Timestamp,
};
use kube::{Api, Client, Resource, api::PostParams};
use std::{sync::Arc, time::Duration};

use std::sync::Mutex;

use tokio::task::JoinSet;
use tracing::debug;

/// The API server's limits (`pkg/apis/core/validation/events.go`): a longer
/// note or instance makes it refuse the whole Event.
const NOTE_LIMIT: usize = 1024;
const INSTANCE_LIMIT: usize = 128;

/// Who reports the Events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reporter {
    /// `reportingComponent` (and `source.component`, which older kubectl
    /// shows as "From"): `baton-sidecar`, `baton-webhook`.
    pub controller: String,
    /// `reportingInstance`: the reporting pod.
    pub instance: String,
}

/// Something that happened to one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Occurrence {
    pub warning: bool,
    /// Short, `PascalCase`: `Promoted`, `Injected`.
    pub reason: String,
    /// What was done: `Promoted`, `Inject`.
    pub action: String,
    pub note: String,
}

/// The Event that tells `what` about `regarding`, as observed at `now`: a
/// new Event of its own (count 1), never a repeat folded into an older one,
/// so its note is always the one that happened.
pub fn event_for(
    reporter: &Reporter,
    regarding: &ObjectReference,
    what: &Occurrence,
    now: Timestamp,
) -> Event {
    let name = regarding.name.as_deref().unwrap_or(&reporter.controller);
    Event {
        metadata: ObjectMeta {
            // As client-go names them: unique per object and instant.
            name: Some(format!("{name}.{:x}", now.as_nanosecond())),
            // A cluster-scoped object's Events go to "default", as kubectl looks for them.
            namespace: Some(
                regarding
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".to_owned()),
            ),
            ..Default::default()
        },
        involved_object: regarding.clone(),
        type_: Some(if what.warning { "Warning" } else { "Normal" }.to_owned()),
        reason: Some(what.reason.clone()),
        action: Some(what.action.clone()),
        message: Some(truncated(&what.note, NOTE_LIMIT)),
        event_time: Some(MicroTime(now)),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        count: Some(1),
        reporting_component: Some(reporter.controller.clone()),
        reporting_instance: Some(truncated(&reporter.instance, INSTANCE_LIMIT)),
        source: Some(EventSource {
            component: Some(reporter.controller.clone()),
            host: None,
        }),
        related: None,
        series: None,
    }
}

/// `s` cut to at most `max` bytes, on a character boundary.
fn truncated(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// Creates Events (RBAC: `create` on core `events`).
#[derive(Clone)]
pub struct Recorder {
    client: Client,
    reporter: Reporter,
}

impl Recorder {
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Self { client, reporter }
    }

    /// The Event for `what`, stamped now: build it when it happens, send it
    /// whenever, and its time is still the right one.
    pub fn event(&self, regarding: &ObjectReference, what: &Occurrence) -> Event {
        event_for(&self.reporter, regarding, what, Timestamp::now())
    }

    pub async fn send(&self, event: &Event) -> Result<(), kube::Error> {
        let namespace = event.metadata.namespace.as_deref().unwrap_or("default");
        Api::<Event>::namespaced(self.client.clone(), namespace)
            .create(&PostParams::default(), event)
            .await
            .map(|_| ())
    }
}

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
            instance: pod_name.to_owned(),
        };
        Events {
            recorder: Recorder::new(client, reporter),
            in_flight: Arc::default(),
        }
    }

    /// Publishes `reason` with `note` about `pod`, without waiting.
    pub fn publish(&self, pod: &Pod, warning: bool, reason: &'static str, note: String) {
        let regarding: ObjectReference = pod.object_ref(&());
        let event = self.recorder.event(
            &regarding,
            &Occurrence {
                warning,
                reason: reason.into(),
                action: reason.into(),
                note,
            },
        );
        let recorder = self.recorder.clone();
        let task = async move {
            if let Err(err) = recorder.send(&event).await {
                debug!(error = %crate::telemetry::ErrorChain(&err), reason, "event not published");
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{ScriptedApi, created};

    fn reporter() -> Reporter {
        Reporter {
            controller: "baton-sidecar".into(),
            instance: "web-0".into(),
        }
    }

    fn pod_ref() -> ObjectReference {
        ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some("web-0".into()),
            namespace: Some("shop".into()),
            uid: Some("uid-0".into()),
            ..Default::default()
        }
    }

    fn promoted(transition: i32) -> Occurrence {
        Occurrence {
            warning: false,
            reason: "Promoted".into(),
            action: "Promoted".into(),
            note: format!("holds lease web (transition {transition}); labelled role=active"),
        }
    }

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + seconds).expect("a valid instant")
    }

    #[test]
    fn an_event_carries_its_own_note_and_times_kubectl_sorts_by() {
        let e = event_for(&reporter(), &pod_ref(), &promoted(2), at(5));
        assert_eq!(
            e.message.as_deref(),
            Some("holds lease web (transition 2); labelled role=active")
        );
        assert_eq!(
            e.last_timestamp,
            Some(Time(at(5))),
            "--sort-by=.lastTimestamp"
        );
        assert_eq!(e.first_timestamp, Some(Time(at(5))));
        assert_eq!(e.event_time, Some(MicroTime(at(5))));
        assert_eq!(e.count, Some(1));
        assert_eq!(e.series, None);
        assert_eq!(e.involved_object, pod_ref());
        assert_eq!(e.metadata.namespace.as_deref(), Some("shop"));
        assert_eq!(
            e.metadata.name,
            Some(format!("web-0.{:x}", at(5).as_nanosecond()))
        );
        assert_eq!(e.type_.as_deref(), Some("Normal"));
        assert_eq!(
            (e.reason.as_deref(), e.action.as_deref()),
            (Some("Promoted"), Some("Promoted"))
        );
        assert_eq!(e.reporting_component.as_deref(), Some("baton-sidecar"));
        assert_eq!(e.reporting_instance.as_deref(), Some("web-0"));
        assert_eq!(
            e.source.and_then(|s| s.component).as_deref(),
            Some("baton-sidecar")
        );
    }

    #[test]
    fn a_repeat_with_another_note_is_another_event() {
        let first = event_for(&reporter(), &pod_ref(), &promoted(0), at(0));
        let again = event_for(&reporter(), &pod_ref(), &promoted(2), at(7));
        assert_ne!(first.metadata.name, again.metadata.name);
        assert!(
            again
                .message
                .as_deref()
                .is_some_and(|m| m.contains("transition 2"))
        );
        assert_eq!(again.last_timestamp, Some(Time(at(7))));
    }

    #[test]
    fn notes_and_instances_beyond_the_api_limits_are_cut_on_a_character() {
        let long = Occurrence {
            warning: true,
            note: "é".repeat(600),
            ..promoted(0)
        };
        let who = Reporter {
            instance: "p".repeat(200),
            ..reporter()
        };
        let e = event_for(&who, &pod_ref(), &long, at(0));
        assert_eq!(e.message.as_deref(), Some("é".repeat(512).as_str()));
        assert_eq!(e.reporting_instance.map(|i| i.len()), Some(128));
        assert_eq!(e.type_.as_deref(), Some("Warning"));
    }

    #[tokio::test]
    async fn each_publication_creates_its_own_event_with_its_note() {
        let api = ScriptedApi::new(created);
        let events = Events::new(api.client(), "web-0");
        let mut pod = Pod::default();
        pod.metadata.name = Some("web-0".into());
        pod.metadata.namespace = Some("shop".into());
        for transition in [0, 2] {
            events.publish(&pod, false, "Promoted", promoted(transition).note);
            // One at a time, as roles change: kube's recorder then patched
            // the second into the first Event's series, with the first note.
            events.flush(Duration::from_secs(5)).await;
        }
        assert_eq!(
            api.sent("message"),
            [
                "POST /api/v1/namespaces/shop/events: holds lease web (transition 0); labelled role=active",
                "POST /api/v1/namespaces/shop/events: holds lease web (transition 2); labelled role=active",
            ]
        );
        let sent = api.requests();
        for r in &sent {
            assert!(r.body["lastTimestamp"].is_string(), "{}", r.body);
            assert_eq!(r.body["count"], 1);
        }
    }
}
