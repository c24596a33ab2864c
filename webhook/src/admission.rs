//! The HTTPS endpoints the API server calls: `POST /mutate` (Pod CREATE:
//! inject the sidecar) and `POST /validate` (StatefulSet and Deployment
//! CREATE/UPDATE: refuse invalid `baton.dev/*` annotations at once).
//! `POST /validate/namespace-not-enabled` validates the same, for workloads
//! in namespaces without the injection label, and warns that their pods will
//! not be injected there.

use std::{sync::Arc, time::Instant};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::post,
};
use baton_sidecar::telemetry::ErrorChain;
use k8s_openapi::api::{
    apps::v1::{Deployment, StatefulSet},
    core::v1::{Pod, PodTemplateSpec},
};
use kube::core::{
    DynamicObject,
    admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation as Op},
};
use serde::de::DeserializeOwned;
use tracing::Instrument;

use crate::{
    annotations::{self, OptIn, Sources},
    events::{AdmissionEvent, EventSink},
    group::{self, CheckError, GroupPods, Member},
    inject::{self, Config, Decision},
    metrics::{Metrics, Operation, Outcome},
    owner::{self, Owner, OwnerLookup},
};

/// The API server sends at most 3 MiB; leave room for the envelope.
const BODY_LIMIT_BYTES: usize = 8 * 1024 * 1024;
const REVIEW_API_VERSION: &str = "admission.k8s.io/v1";

/// What the handlers share.
pub struct Admission {
    pub config: Config,
    pub owners: Arc<dyn OwnerLookup>,
    pub groups: Arc<dyn GroupPods>,
    pub events: Arc<dyn EventSink>,
    pub metrics: Metrics,
}

/// The namespace label that opts a namespace in: only its pods are sent to
/// `/mutate` (the webhook configurations' `namespaceSelector`).
pub const NAMESPACE_LABEL: &str = "baton.dev/injection";
pub const NAMESPACE_LABEL_ENABLED: &str = "enabled";

/// `POST /mutate`, `POST /validate` and `POST /validate/namespace-not-enabled`.
pub fn router(state: Arc<Admission>) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
        .route("/validate", post(validate))
        .route(
            "/validate/namespace-not-enabled",
            post(validate_namespace_not_enabled),
        )
        .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES))
        .with_state(state)
}

/// A request that is not a well-formed AdmissionReview of the expected kind: HTTP 400.
#[derive(Debug, thiserror::Error)]
pub enum BadRequest {
    #[error("body is not JSON")]
    NotJson(#[source] serde_json::Error),
    #[error(
        "body is not an {REVIEW_API_VERSION} AdmissionReview (apiVersion {api_version:?}, kind {kind:?})"
    )]
    NotReview { api_version: String, kind: String },
    #[error("body is not a valid AdmissionReview")]
    Malformed(#[source] serde_json::Error),
    #[error("AdmissionReview has no request")]
    NoRequest,
    #[error("expected {expected}, got {got}")]
    WrongKind { expected: &'static str, got: String },
    #[error("{operation:?} request has no object")]
    NoObject { operation: Op },
    #[error("object is not a valid {kind}")]
    BadObject {
        kind: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// The webhook failed to build its answer: HTTP 500, the API server applies its failurePolicy.
#[derive(Debug, thiserror::Error)]
pub enum Internal {
    #[error("serializing the pod")]
    Serialize(#[source] serde_json::Error),
    #[error("serializing the patch")]
    Patch(#[source] kube::core::admission::SerializePatchError),
}

enum Answer {
    Review(Box<AdmissionResponse>, Outcome),
    Bad(BadRequest),
    Failed(Internal),
}

impl Answer {
    fn outcome(&self) -> Outcome {
        match self {
            Answer::Review(_, outcome) => *outcome,
            Answer::Bad(_) => Outcome::Invalid,
            Answer::Failed(_) => Outcome::Error,
        }
    }

    fn into_response(self) -> Response {
        match self {
            Answer::Review(response, _) => match review_json(*response) {
                Ok(review) => Json(review).into_response(),
                Err(err) => Answer::Failed(Internal::Serialize(err)).into_response(),
            },
            // The reason goes back to the API server's caller: with its causes.
            Answer::Bad(err) => {
                (StatusCode::BAD_REQUEST, ErrorChain(&err).to_string()).into_response()
            }
            Answer::Failed(err) => {
                let error = ErrorChain(&err).to_string();
                tracing::error!(%error, "answering an admission failed");
                (StatusCode::INTERNAL_SERVER_ERROR, error).into_response()
            }
        }
    }
}

impl From<BadRequest> for Answer {
    fn from(err: BadRequest) -> Self {
        Answer::Bad(err)
    }
}

impl From<Internal> for Answer {
    fn from(err: Internal) -> Self {
        Answer::Failed(err)
    }
}

/// The AdmissionReview to send back, its patch base64-encoded as the API
/// documents for JSON (`Vec<u8>` would go out as an array of numbers).
fn review_json(response: AdmissionResponse) -> Result<serde_json::Value, serde_json::Error> {
    use base64::Engine as _;
    let patch = response.patch.clone();
    let mut review = serde_json::to_value(response.into_review())?;
    if let (Some(patch), Some(slot)) = (patch, review.pointer_mut("/response/patch")) {
        *slot = serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(patch));
    }
    Ok(review)
}

/// Reads the body once into JSON and checks that it is an
/// `admission.k8s.io/v1` AdmissionReview. The request is then typed straight
/// from that JSON ([`typed_request`], by reference: no copy), and the object
/// as sent stays at hand for the patch check.
fn parse_review(body: &[u8]) -> Result<serde_json::Value, BadRequest> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(BadRequest::NotJson)?;
    let field = |name: &str| {
        value
            .get(name)
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let (api_version, kind) = (field("apiVersion"), field("kind"));
    if api_version != REVIEW_API_VERSION || kind != "AdmissionReview" {
        return Err(BadRequest::NotReview { api_version, kind });
    }
    Ok(value)
}

/// The request's `kind` (group, version, kind), when it has one: checked
/// before the object is typed, so that a wrong kind is said as such.
fn request_kind(review: &serde_json::Value) -> Option<(String, String, String)> {
    let kind = review.pointer("/request/kind")?;
    let text = |name: &str| kind.get(name)?.as_str().map(str::to_owned);
    Some((text("group")?, text("version")?, text("kind")?))
}

/// The request, its object typed as `K` (`kind` names it in errors): a
/// review that does not parse as one is `Malformed`, unless only its object
/// is at fault, which is a `BadObject`.
fn typed_request<K>(
    review: &serde_json::Value,
    kind: &'static str,
) -> Result<AdmissionRequest<K>, BadRequest>
where
    K: kube::Resource + DeserializeOwned,
{
    use serde::Deserialize as _;
    let parsed =
        AdmissionReview::<K>::deserialize(review).map_err(|source| {
            match AdmissionReview::<DynamicObject>::deserialize(review) {
                Ok(_) => BadRequest::BadObject { kind, source },
                Err(envelope) => BadRequest::Malformed(envelope),
            }
        })?;
    parsed.try_into().map_err(|_| BadRequest::NoRequest)
}

/// A workload's metadata and pod template.
type Workload = (
    k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    Option<PodTemplateSpec>,
);

/// A workload's request typed as `K`: the response to fill in, the
/// operation, the namespace, and the object's metadata and pod template.
fn workload_request<K>(
    review: &serde_json::Value,
    kind: &'static str,
    parts: fn(K) -> Workload,
) -> Result<(AdmissionResponse, Op, Option<String>, Option<Workload>), BadRequest>
where
    K: kube::Resource + DeserializeOwned,
{
    let mut req: AdmissionRequest<K> = typed_request(review, kind)?;
    let workload = req.object.take().map(parts);
    Ok((
        AdmissionResponse::from(&req),
        req.operation,
        req.namespace,
        workload,
    ))
}

/// Pod fields the injection may change; a patch that replaces them whole is
/// the fallback when the fine-grained one does not fit the object as sent.
const INJECTED_FIELDS: [&str; 5] = [
    "/metadata/labels",
    "/metadata/annotations",
    "/spec/initContainers",
    "/spec/containers",
    "/spec/volumes",
];

/// The JSONPatch from `before` to `after` (the pod as typed), checked against
/// the object as the API server sent it. The typed pod can differ from it (a
/// required field missing from the request gets a default when parsed):
/// then the changed fields are replaced whole. `None` if even that fails.
fn patch_for(
    raw: &serde_json::Value,
    before: &serde_json::Value,
    after: &serde_json::Value,
) -> Option<json_patch::Patch> {
    use json_patch::{AddOperation, PatchOperation, jsonptr::PointerBuf};
    let applies = |patch: &json_patch::Patch| json_patch::patch(&mut raw.clone(), patch).is_ok();
    let fine = json_patch::diff(before, after);
    if applies(&fine) {
        return Some(fine);
    }
    let coarse = json_patch::Patch(
        INJECTED_FIELDS
            .iter()
            .filter(|field| before.pointer(field) != after.pointer(field))
            .filter_map(|field| {
                Some(PatchOperation::Add(AddOperation {
                    path: PointerBuf::parse(*field).ok()?,
                    value: after.pointer(field)?.clone(),
                }))
            })
            .collect(),
    );
    applies(&coarse).then_some(coarse)
}

fn pod_display_name(pod: &Pod) -> String {
    match (&pod.metadata.name, &pod.metadata.generate_name) {
        (Some(name), _) => name.clone(),
        (None, Some(prefix)) => format!("{prefix}*"),
        (None, None) => "(unnamed)".to_owned(),
    }
}

async fn mutate(State(state): State<Arc<Admission>>, body: Bytes) -> Response {
    let started = Instant::now();
    let answer = match state.mutate(&body).await {
        Ok(answer) | Err(answer) => answer,
    };
    state.metrics.observe(
        Operation::Mutate,
        answer.outcome(),
        started.elapsed().as_secs_f64(),
    );
    answer.into_response()
}

async fn validate(State(state): State<Arc<Admission>>, body: Bytes) -> Response {
    validate_in(&state, &body, NamespaceInjection::Enabled)
}

async fn validate_namespace_not_enabled(
    State(state): State<Arc<Admission>>,
    body: Bytes,
) -> Response {
    validate_in(&state, &body, NamespaceInjection::NotEnabled)
}

/// Whether the workload's namespace carries the injection label: each
/// validating webhook's `namespaceSelector` tells, so no lookup is needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NamespaceInjection {
    Enabled,
    NotEnabled,
}

fn validate_in(state: &Admission, body: &[u8], namespace: NamespaceInjection) -> Response {
    let started = Instant::now();
    let answer = match state.validate(body, namespace) {
        Ok(answer) | Err(answer) => answer,
    };
    state.metrics.observe(
        Operation::Validate,
        answer.outcome(),
        started.elapsed().as_secs_f64(),
    );
    answer.into_response()
}

impl Admission {
    async fn mutate(&self, body: &[u8]) -> Result<Answer, Answer> {
        let review = parse_review(body)?;
        if let Some((group, version, kind)) = request_kind(&review)
            && (!group.is_empty() || kind != "Pod")
        {
            return Err(BadRequest::WrongKind {
                expected: "a v1 Pod",
                got: format!("{group}/{version} {kind}"),
            }
            .into());
        }
        let mut req: AdmissionRequest<Pod> = typed_request(&review, "Pod")?;
        let response = AdmissionResponse::from(&req);
        if req.operation != Op::Create {
            return Ok(Answer::Review(Box::new(response), Outcome::Skipped));
        }
        let pod = req.object.take().ok_or(BadRequest::NoObject {
            operation: req.operation.clone(),
        })?;
        let raw = review
            .pointer("/request/object")
            .unwrap_or(&serde_json::Value::Null);
        let namespace = req
            .namespace
            .clone()
            .or_else(|| pod.metadata.namespace.clone())
            .unwrap_or_default();
        let name = pod_display_name(&pod);
        // Instrumented, not entered: a guard held across the owner lookup's
        // await would leave the span entered on whichever request the worker
        // thread polls next (spans nested across requests, then a panic in
        // tracing-subscriber's registry under load).
        let span = tracing::info_span!("mutate", %namespace, pod = %name, uid = %req.uid, dry_run = req.dry_run);
        self.mutate_pod(&req, raw, response, pod, &namespace, &name)
            .instrument(span)
            .await
    }

    /// Decides on one Pod CREATE: its owner, injection or not, the Events.
    async fn mutate_pod(
        &self,
        req: &AdmissionRequest<Pod>,
        raw: &serde_json::Value,
        response: AdmissionResponse,
        pod: Pod,
        namespace: &str,
        name: &str,
    ) -> Result<Answer, Answer> {
        let owner = if annotations::opt_in(&Sources::new(&pod, None)) == Ok(OptIn::OptedOut) {
            None // the pod's own "false" wins: no need to ask the API server
        } else {
            match owner::controller_of(&pod.metadata) {
                None => None,
                Some(controller) => match self.owners.owner(namespace, controller).await {
                    Ok(owner) => owner,
                    Err(err) => {
                        let message =
                            format!("baton: cannot decide on injection: {}", ErrorChain(&err));
                        tracing::warn!(error = %message, "owner lookup failed");
                        return Ok(Answer::Review(
                            Box::new(response.deny(message)),
                            Outcome::Denied,
                        ));
                    }
                },
            }
        };

        let decision = inject::decide(&pod, owner.as_ref(), &self.config);
        // Events go on the owner, and a dry run has no side effects.
        let events = if req.dry_run { None } else { owner.as_ref() };
        match decision {
            Decision::Deny(denial) => {
                tracing::info!(reason = %denial, "denied");
                Ok(Answer::Review(
                    Box::new(response.deny(denial.to_string())),
                    Outcome::Denied,
                ))
            }
            Decision::Skip(skip) => {
                tracing::debug!(reason = skip.reason(), "skipped");
                if let (Some(owner), true) = (events, skip.opted_in()) {
                    self.events
                        .record(owner, AdmissionEvent::skipped(name, skip.reason()));
                }
                Ok(Answer::Review(Box::new(response), Outcome::Skipped))
            }
            Decision::Inject(injection) => {
                let admitted =
                    group::workload_of(owner.as_ref(), owner::controller_of(&pod.metadata));
                match self
                    .group_conflict(namespace, &pod, admitted.as_ref(), &injection.lease)
                    .await
                {
                    Ok(None) => {}
                    Ok(Some(conflict)) => {
                        tracing::info!(reason = %conflict, "denied");
                        return Ok(Answer::Review(
                            Box::new(response.deny(conflict.to_string())),
                            Outcome::Denied,
                        ));
                    }
                    Err(err) => {
                        // As for a failed owner lookup: refused with the
                        // cause, and the controller retries.
                        let message = format!(
                            "baton: cannot check group {:?} for pods of another workload: {}",
                            injection.lease,
                            ErrorChain(&err)
                        );
                        tracing::warn!(error = %message, "group check failed");
                        return Ok(Answer::Review(
                            Box::new(response.deny(message)),
                            Outcome::Denied,
                        ));
                    }
                }
                let before = serde_json::to_value(&pod).map_err(Internal::Serialize)?;
                let after = serde_json::to_value(&injection.pod).map_err(Internal::Serialize)?;
                let Some(patch) = patch_for(raw, &before, &after) else {
                    let message = "baton: cannot patch this pod: its containers, volumes or metadata are malformed";
                    tracing::info!(reason = message, "denied");
                    return Ok(Answer::Review(
                        Box::new(response.deny(message)),
                        Outcome::Denied,
                    ));
                };
                let response = response.with_patch(patch).map_err(Internal::Patch)?;
                tracing::info!(lease = %injection.lease, native = injection.native, "injected");
                if let Some(owner) = events {
                    self.events.record(
                        owner,
                        AdmissionEvent::injected(name, &injection.lease, &self.config.image),
                    );
                }
                Ok(Answer::Review(Box::new(response), Outcome::Injected))
            }
        }
    }

    /// Lists the group's pods and finds each one's workload (one lookup per
    /// distinct controller; none for the admitted pod's own), then
    /// [`group::conflict`] decides. A bare pod is never in conflict: no list.
    async fn group_conflict(
        &self,
        namespace: &str,
        pod: &Pod,
        admitted: Option<&group::Workload>,
        group: &str,
    ) -> Result<Option<group::Conflict>, CheckError> {
        let Some(admitted) = admitted else {
            return Ok(None);
        };
        let own = owner::controller_of(&pod.metadata).map(|c| c.uid.as_str());
        let listed = self.groups.pods(namespace, group).await?;
        let mut known: Vec<(String, Option<group::Workload>)> = Vec::new();
        let mut members = Vec::with_capacity(listed.len());
        for pod in listed {
            let workload = match &pod.controller {
                _ if pod.terminating => None, // ignored: not looked up
                None => None,
                Some(c) if Some(c.uid.as_str()) == own => Some(admitted.clone()),
                Some(c) => match known.iter().find(|(uid, _)| *uid == c.uid) {
                    Some((_, w)) => w.clone(),
                    None => {
                        let found = self.owners.owner(namespace, c).await.map_err(|source| {
                            CheckError::Owner {
                                pod: pod.pod.clone(),
                                source,
                            }
                        })?;
                        let w = group::workload_of(found.as_ref(), Some(c));
                        known.push((c.uid.clone(), w.clone()));
                        w
                    }
                },
            };
            members.push(Member {
                pod: pod.pod,
                workload,
                terminating: pod.terminating,
            });
        }
        Ok(group::conflict(Some(admitted), group, &members))
    }

    fn validate(&self, body: &[u8], injection: NamespaceInjection) -> Result<Answer, Answer> {
        let review = parse_review(body)?;
        let Some((group, version, kind_name)) = request_kind(&review) else {
            // No request, or no kind: what is wrong with the review as a whole.
            let error = typed_request::<DynamicObject>(&review, "object").err();
            return Err(error.unwrap_or(BadRequest::NoRequest).into());
        };
        let kind: &'static str = match (group.as_str(), kind_name.as_str()) {
            ("apps", "StatefulSet") => "StatefulSet",
            ("apps", "Deployment") => "Deployment",
            _ => {
                return Err(BadRequest::WrongKind {
                    expected: "an apps StatefulSet or Deployment",
                    got: format!("{group}/{version} {kind_name}"),
                }
                .into());
            }
        };
        // The request's common fields, and the workload's metadata and pod
        // template, typed once as the kind it is.
        let (response, operation, namespace, workload) = if kind == "StatefulSet" {
            workload_request(&review, kind, |s: StatefulSet| {
                (s.metadata, s.spec.map(|s| s.template))
            })?
        } else {
            workload_request(&review, kind, |d: Deployment| {
                (d.metadata, d.spec.map(|s| s.template))
            })?
        };
        if !matches!(operation, Op::Create | Op::Update) {
            return Ok(Answer::Review(Box::new(response), Outcome::Allowed));
        }
        let (meta, template) = workload.ok_or(BadRequest::NoObject { operation })?;
        let namespace = namespace.unwrap_or_default();
        let PodTemplateSpec { metadata, spec } = template.unwrap_or_default();
        let pod = Pod {
            metadata: metadata.unwrap_or_default(),
            spec,
            status: None,
        };
        let owner = Owner::from_meta(kind, "apps/v1", &namespace, &meta);
        match inject::decide(&pod, Some(&owner), &self.config) {
            Decision::Deny(denial) => Ok(Answer::Review(
                Box::new(response.deny(denial.to_string())),
                Outcome::Denied,
            )),
            Decision::Inject(_) if injection == NamespaceInjection::NotEnabled => {
                let mut response = response;
                response.warnings = Some(vec![format!(
                    "baton.dev/inject is set but namespace {namespace} is not enabled for baton: \
                     pods of {kind} {} will not be injected; enable it with \
                     `kubectl label namespace {namespace} {NAMESPACE_LABEL}={NAMESPACE_LABEL_ENABLED}`",
                    owner.name,
                )]);
                Ok(Answer::Review(Box::new(response), Outcome::Allowed))
            }
            Decision::Skip(skip) if skip.opted_in() => {
                let mut response = response;
                response.warnings = Some(vec![format!(
                    "baton.dev/inject is set but pods of {kind} {} will not be injected: {}",
                    owner.name,
                    skip.reason()
                )]);
                Ok(Answer::Review(Box::new(response), Outcome::Allowed))
            }
            Decision::Skip(_) | Decision::Inject(_) => {
                Ok(Answer::Review(Box::new(response), Outcome::Allowed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        path::PathBuf,
        sync::{
            Mutex,
            atomic::{AtomicUsize, Ordering},
        },
        time::Duration,
    };

    use axum::{body::Body, http::Request};
    use base64::Engine as _;
    use futures::future::BoxFuture;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use serde_json::{Value, json};

    use super::*;
    use crate::{
        annotations::Resources,
        inject::{SIDECAR_NAME, Skip},
        owner::OwnerError,
        testing::{Annotated, owner},
    };

    /// Answers every lookup with one owner (or an error), counting the
    /// calls; a controller whose uid is in `by_uid` gets that owner.
    struct FakeOwners {
        answer: Option<Owner>,
        by_uid: Mutex<Vec<(String, Owner)>>,
        fail: bool,
        calls: AtomicUsize,
    }

    impl OwnerLookup for FakeOwners {
        fn owner<'a>(
            &'a self,
            namespace: &'a str,
            controller: &'a OwnerReference,
        ) -> BoxFuture<'a, Result<Option<Owner>, OwnerError>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                // As a real lookup does: let other requests run meanwhile.
                tokio::task::yield_now().await;
                if self.fail {
                    return Err(OwnerError::Timeout {
                        kind: controller.kind.clone(),
                        namespace: namespace.to_owned(),
                        name: controller.name.clone(),
                        timeout: Duration::from_secs(3),
                    });
                }
                let by_uid = self.by_uid.lock().expect("not poisoned");
                match by_uid.iter().find(|(uid, _)| *uid == controller.uid) {
                    Some((_, o)) => Ok(Some(o.clone())),
                    None => Ok(self.answer.clone()),
                }
            })
        }
    }

    /// Lists the same pods for every group (or fails), counting the calls.
    #[derive(Default)]
    struct FakeGroups {
        listed: Mutex<Vec<group::Listed>>,
        fail: std::sync::atomic::AtomicBool,
        calls: AtomicUsize,
    }

    impl GroupPods for FakeGroups {
        fn pods<'a>(
            &'a self,
            namespace: &'a str,
            group: &'a str,
        ) -> BoxFuture<'a, Result<Vec<group::Listed>, group::GroupError>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                if self.fail.load(Ordering::SeqCst) {
                    return Err(group::GroupError::Timeout {
                        namespace: namespace.to_owned(),
                        group: group.to_owned(),
                        timeout: Duration::from_secs(3),
                    });
                }
                Ok(self.listed.lock().expect("not poisoned").clone())
            })
        }
    }

    /// A listed pod of the group, controlled by `kind/name` with `uid`.
    fn listed(pod: &str, kind: &str, name: &str, uid: &str) -> group::Listed {
        group::Listed {
            pod: pod.into(),
            controller: Some(OwnerReference {
                api_version: "apps/v1".into(),
                kind: kind.into(),
                name: name.into(),
                uid: uid.into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }),
            terminating: false,
        }
    }

    #[derive(Default)]
    struct FakeEvents(Mutex<Vec<(String, AdmissionEvent)>>);

    impl EventSink for FakeEvents {
        fn record(&self, regarding: &Owner, event: AdmissionEvent) {
            let who = format!("{}/{}", regarding.kind, regarding.name);
            self.0.lock().expect("not poisoned").push((who, event));
        }
    }

    impl FakeEvents {
        fn taken(&self) -> Vec<(String, AdmissionEvent)> {
            std::mem::take(&mut *self.0.lock().expect("not poisoned"))
        }
    }

    struct Harness {
        state: Arc<Admission>,
        owners: Arc<FakeOwners>,
        groups: Arc<FakeGroups>,
        events: Arc<FakeEvents>,
    }

    fn harness_with(answer: Option<Owner>, fail: bool) -> Harness {
        let owners = Arc::new(FakeOwners {
            answer,
            by_uid: Mutex::default(),
            fail,
            calls: AtomicUsize::new(0),
        });
        let groups = Arc::new(FakeGroups::default());
        let events = Arc::new(FakeEvents::default());
        let state = Arc::new(Admission {
            config: Config {
                image: "baton-sidecar:test".into(),
                native: true,
                resources: Resources {
                    cpu_request: Some("10m".into()),
                    memory_request: Some("16Mi".into()),
                    cpu_limit: None,
                    memory_limit: Some("64Mi".into()),
                },
            },
            owners: owners.clone(),
            groups: groups.clone(),
            events: events.clone(),
            metrics: Metrics::new(),
        });
        Harness {
            state,
            owners,
            groups,
            events,
        }
    }

    /// The StatefulSet `web` of the fixtures, not annotated itself.
    fn harness() -> Harness {
        let mut web = owner("StatefulSet", "web");
        web.namespace = "shop".into();
        harness_with(Some(web), false)
    }

    fn fixture(name: &str) -> Vec<u8> {
        let path: PathBuf = [
            env!("CARGO_MANIFEST_DIR"),
            "..",
            "tests",
            "fixtures",
            "webhook",
            name,
        ]
        .iter()
        .collect();
        std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
    }

    fn fixture_json(name: &str) -> Value {
        serde_json::from_slice(&fixture(name)).expect("fixture is JSON")
    }

    async fn post(h: &Harness, path: &str, body: Vec<u8>) -> (StatusCode, Vec<u8>) {
        let request = Request::post(path)
            .header("content-type", "application/json")
            .body(Body::from(body))
            .expect("request builds");
        baton_sidecar::testing::call(router(h.state.clone()), request).await
    }

    /// Posts and expects an AdmissionReview answer: its `response`.
    async fn review(h: &Harness, path: &str, body: Vec<u8>) -> Value {
        let (status, bytes) = post(h, path, body).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&bytes)
        );
        let v: Value = serde_json::from_slice(&bytes).expect("answer is JSON");
        assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(v["kind"], "AdmissionReview");
        v["response"].clone()
    }

    fn patch_of(response: &Value) -> json_patch::Patch {
        assert_eq!(response["patchType"], "JSONPatch", "{response}");
        let b64 = response["patch"]
            .as_str()
            .expect("patch is a base64 string");
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("base64");
        serde_json::from_slice(&raw).expect("patch is a JSON patch")
    }

    /// Applies the answer's patch to the fixture's pod, as the API server does.
    fn patched_pod(fixture_name: &str, response: &Value) -> Pod {
        let mut object = fixture_json(fixture_name)["request"]["object"].clone();
        json_patch::patch(&mut object, &patch_of(response)).expect("patch applies to the request");
        serde_json::from_value(object).expect("patched object is a pod")
    }

    thread_local! {
        /// The most `mutate` spans an event on this thread was logged inside.
        static MUTATE_SPAN_DEPTH: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    struct MutateSpanDepth;

    impl<S> tracing_subscriber::Layer<S> for MutateSpanDepth
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            ctx: tracing_subscriber::layer::Context<'_, S>,
        ) {
            let depth = ctx.event_scope(event).map_or(0, |scope| {
                scope.filter(|span| span.name() == "mutate").count()
            });
            MUTATE_SPAN_DEPTH.with(|d| d.set(d.get().max(depth)));
        }
    }

    /// A process-wide subscriber, set once: a thread-scoped one (`set_default`)
    /// misses events while tests on other threads register the same callsites.
    fn record_mutate_span_depth() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            use tracing_subscriber::layer::SubscriberExt as _;
            tracing::subscriber::set_global_default(
                tracing_subscriber::registry().with(MutateSpanDepth),
            )
            .expect("no other test sets a global subscriber");
        });
        MUTATE_SPAN_DEPTH.with(|d| d.set(0));
    }

    #[tokio::test]
    async fn concurrent_requests_log_each_in_its_own_span() {
        record_mutate_span_depth();
        let h = harness();
        // One thread polls both: each request's owner lookup yields to the other.
        let (a, b) = tokio::join!(
            review(&h, "/mutate", fixture("pod-of-statefulset.json")),
            review(&h, "/mutate", fixture("pod-of-statefulset.json")),
        );
        assert_eq!(
            (a["allowed"].clone(), b["allowed"].clone()),
            (json!(true), json!(true))
        );
        assert_eq!(h.owners.calls.load(Ordering::SeqCst), 2);
        assert_eq!(
            MUTATE_SPAN_DEPTH.with(std::cell::Cell::get),
            1,
            "a request's events were logged inside another request's span (or none in its own)"
        );
    }

    #[tokio::test]
    async fn annotated_statefulset_pod_gets_a_patch_that_applies_to_the_request() {
        let h = harness();
        let r = review(&h, "/mutate", fixture("pod-of-statefulset.json")).await;
        assert_eq!(r["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert_eq!(r["allowed"], true);
        let pod = patched_pod("pod-of-statefulset.json", &r);
        let spec = pod.spec.as_ref().expect("spec");
        let inits = spec.init_containers.as_ref().expect("init containers");
        assert_eq!(inits[0].name, SIDECAR_NAME);
        // The app is untouched, the pod's own token is shared with the sidecar.
        assert_eq!(spec.containers.len(), 1);
        assert_eq!(
            inits[0].volume_mounts.as_ref().map(|m| m[0].name.as_str()),
            Some("kube-api-access-x7k2p")
        );
        let labels = pod.metadata.labels.as_ref().expect("labels");
        assert_eq!(
            labels.get("baton.dev/group").map(String::as_str),
            Some("web")
        );
        assert_eq!(labels.get("role").map(String::as_str), Some("passive"));
        assert_eq!(labels.get("app").map(String::as_str), Some("web"));
        // Feeding the patched pod back in changes nothing.
        assert_eq!(
            inject::decide(&pod, None, &h.state.config),
            Decision::Skip(Skip::AlreadyInjected)
        );
        let events = h.events.taken();
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].0, "StatefulSet/web");
        assert_eq!(events[0].1.reason, "Injected");
    }

    #[tokio::test]
    async fn patch_touches_only_what_injection_adds() {
        let h = harness();
        let r = review(&h, "/mutate", fixture("pod-of-statefulset.json")).await;
        let paths: Vec<String> = patch_of(&r)
            .0
            .iter()
            .map(|op| op.path().to_string())
            .collect();
        for path in &paths {
            assert!(
                path.starts_with("/metadata/labels/")
                    || path.starts_with("/metadata/annotations/")
                    || path == "/spec/initContainers"
                    // The app's preStop hook (inject.rs, hold_apps_until_drained).
                    || (path.starts_with("/spec/containers/") && path.ends_with("/lifecycle")),
                "unexpected patch path {path} in {paths:?}"
            );
        }
    }

    #[tokio::test]
    async fn already_injected_pod_is_allowed_unchanged() {
        let h = harness();
        let r = review(&h, "/mutate", fixture("pod-already-injected.json")).await;
        assert_eq!(r["allowed"], true);
        assert!(r.get("patch").is_none(), "{r}");
        let events = h.events.taken();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].1.reason, "InjectionSkipped");
        assert!(events[0].1.note.contains("already injected"));
    }

    #[tokio::test]
    async fn host_network_pod_is_allowed_unchanged_with_a_skip_event() {
        let h = harness();
        let r = review(&h, "/mutate", fixture("pod-host-network.json")).await;
        assert_eq!(r["allowed"], true);
        assert!(r.get("patch").is_none(), "{r}");
        let events = h.events.taken();
        assert_eq!(events.len(), 1);
        assert!(events[0].1.note.contains("hostNetwork"), "{events:?}");
    }

    #[tokio::test]
    async fn invalid_annotation_denies_naming_it() {
        let h = harness();
        let r = review(&h, "/mutate", fixture("pod-invalid-annotation.json")).await;
        assert_eq!(r["allowed"], false);
        let message = r["status"]["message"].as_str().expect("message");
        assert!(
            message.starts_with("annotation baton.dev/probe-period=\"fast\": invalid value"),
            "{message}"
        );
        assert!(h.events.taken().is_empty());
    }

    #[tokio::test]
    async fn dry_run_answers_the_same_without_events() {
        let h = harness();
        let dry = review(&h, "/mutate", fixture("pod-dry-run.json")).await;
        assert!(h.events.taken().is_empty(), "dry run records no events");
        let wet = review(&h, "/mutate", fixture("pod-of-statefulset.json")).await;
        assert_eq!(h.events.taken().len(), 1);
        assert_eq!(patch_of(&dry), patch_of(&wet));
    }

    #[tokio::test]
    async fn deployment_opt_in_reaches_pods_through_the_replicaset() {
        let mut api = owner("Deployment", "api").annotated("baton.dev/inject", "true");
        api.namespace = "shop".into();
        let h = harness_with(Some(api), false);
        let r = review(&h, "/mutate", fixture("pod-of-deployment.json")).await;
        let pod = patched_pod("pod-of-deployment.json", &r);
        let labels = pod.metadata.labels.expect("labels");
        assert_eq!(
            labels.get("baton.dev/group").map(String::as_str),
            Some("api")
        );
        assert_eq!(h.owners.calls.load(Ordering::SeqCst), 1);
        let events = h.events.taken();
        assert_eq!(events[0].0, "Deployment/api");
        assert!(events[0].1.note.contains("api-6b7f9c8d4-*"), "{events:?}");
    }

    #[tokio::test]
    async fn failed_owner_lookup_denies_with_the_cause() {
        let h = harness_with(None, true);
        let r = review(&h, "/mutate", fixture("pod-of-statefulset.json")).await;
        assert_eq!(r["allowed"], false);
        let message = r["status"]["message"].as_str().expect("message");
        assert!(message.contains("StatefulSet shop/web"), "{message}");
        assert!(message.contains("no answer within 3s"), "{message}");
    }

    #[tokio::test]
    async fn bare_pod_with_lease_name_needs_no_owner_lookup() {
        let h = harness_with(None, true);
        let r = review(&h, "/mutate", fixture("pod-bare.json")).await;
        let pod = patched_pod("pod-bare.json", &r);
        let labels = pod.metadata.labels.expect("labels");
        assert_eq!(
            labels.get("baton.dev/group").map(String::as_str),
            Some("solo")
        );
        assert_eq!(h.owners.calls.load(Ordering::SeqCst), 0);
        assert_eq!(
            h.groups.calls.load(Ordering::SeqCst),
            0,
            "a bare pod joins any group"
        );
        assert!(h.events.taken().is_empty(), "no owner, no event");
    }

    /// The uid of the StatefulSet in pod-of-statefulset.json.
    const WEB_STS_UID: &str = "9a1d8c52-3b7e-4f0a-8e61-2f4c5d6e7f80";

    #[tokio::test]
    async fn pod_joining_a_group_of_another_workload_is_denied_naming_both() {
        let h = harness();
        let mut deploy = owner("Deployment", "web");
        deploy.namespace = "shop".into();
        h.owners
            .by_uid
            .lock()
            .expect("not poisoned")
            .push(("rs-uid".into(), deploy));
        *h.groups.listed.lock().expect("not poisoned") = vec![
            listed(
                "web-6b7f9c8d4-abcde",
                "ReplicaSet",
                "web-6b7f9c8d4",
                "rs-uid",
            ),
            listed(
                "web-6b7f9c8d4-fghij",
                "ReplicaSet",
                "web-6b7f9c8d4",
                "rs-uid",
            ),
        ];
        let r = review(&h, "/mutate", fixture("pod-of-statefulset.json")).await;
        assert_eq!(r["allowed"], false, "{r}");
        let message = r["status"]["message"].as_str().expect("message");
        for part in [
            "StatefulSet/web cannot join group \"web\"",
            "pods of Deployment/web (e.g. web-6b7f9c8d4-abcde)",
            "baton.dev/lease-name: web-sts on StatefulSet/web",
        ] {
            assert!(message.contains(part), "{part:?} in {message}");
        }
        assert_eq!(
            h.owners.calls.load(Ordering::SeqCst),
            2,
            "the pod's owner, then one lookup for the ReplicaSet's two pods"
        );
        assert!(h.events.taken().is_empty(), "{r}");
        let text = h.state.metrics.encode().expect("encodes");
        let line = "baton_webhook_admissions_total{operation=\"mutate\",result=\"denied\"} 1";
        assert!(text.contains(line), "{line} missing in\n{text}");
    }

    #[tokio::test]
    async fn pod_joining_its_own_workloads_group_is_injected_without_a_lookup() {
        let h = harness();
        let mut leaving = listed("web-2", "StatefulSet", "old", "gone-uid");
        leaving.terminating = true;
        *h.groups.listed.lock().expect("not poisoned") =
            vec![listed("web-1", "StatefulSet", "web", WEB_STS_UID), leaving];
        let r = review(&h, "/mutate", fixture("pod-of-statefulset.json")).await;
        assert_eq!(r["allowed"], true, "{r}");
        assert!(r.get("patch").is_some(), "{r}");
        assert_eq!(h.groups.calls.load(Ordering::SeqCst), 1);
        assert_eq!(
            h.owners.calls.load(Ordering::SeqCst),
            1,
            "only the pod's own owner: its sibling shares the controller, the terminating pod is ignored"
        );
    }

    #[tokio::test]
    async fn failed_group_list_denies_with_the_cause() {
        let h = harness();
        h.groups.fail.store(true, Ordering::SeqCst);
        let r = review(&h, "/mutate", fixture("pod-of-statefulset.json")).await;
        assert_eq!(r["allowed"], false, "{r}");
        let message = r["status"]["message"].as_str().expect("message");
        assert!(
            message.starts_with("baton: cannot check group \"web\""),
            "{message}"
        );
        assert!(
            message.contains("listing the pods of group web in shop: no answer within 3s"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn opted_out_pod_is_not_looked_up() {
        let h = harness_with(None, true);
        let mut body = fixture_json("pod-of-statefulset.json");
        body["request"]["object"]["metadata"]["annotations"]["baton.dev/inject"] = json!("false");
        let r = review(&h, "/mutate", body.to_string().into_bytes()).await;
        assert_eq!(r["allowed"], true);
        assert!(r.get("patch").is_none());
        assert_eq!(h.owners.calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn pod_delete_is_allowed_unchanged() {
        let h = harness();
        let mut body = fixture_json("pod-of-statefulset.json");
        body["request"]["operation"] = json!("DELETE");
        body["request"]["oldObject"] = body["request"]["object"].take();
        let r = review(&h, "/mutate", body.to_string().into_bytes()).await;
        assert_eq!(r["allowed"], true);
        assert!(r.get("patch").is_none());
    }

    #[tokio::test]
    async fn valid_statefulset_is_allowed() {
        let h = harness();
        let r = review(&h, "/validate", fixture("statefulset-valid.json")).await;
        assert_eq!(r["allowed"], true, "{r}");
        assert!(r.get("warnings").is_none(), "{r}");
    }

    #[tokio::test]
    async fn opted_in_statefulset_in_a_namespace_not_enabled_is_allowed_with_a_warning_naming_the_label()
     {
        let h = harness();
        let path = "/validate/namespace-not-enabled";
        let r = review(&h, path, fixture("statefulset-valid.json")).await;
        assert_eq!(r["allowed"], true, "{r}");
        let warning = r["warnings"][0].as_str().expect("a warning");
        assert!(
            warning.contains("will not be injected")
                && warning.contains("baton.dev/injection=enabled"),
            "{warning}"
        );
        // Not opted in: nothing to warn about.
        let mut body = fixture_json("statefulset-valid.json");
        body["request"]["object"]["metadata"]["annotations"] = json!({});
        let r = review(&h, path, body.to_string().into_bytes()).await;
        assert_eq!(r["allowed"], true, "{r}");
        assert!(r.get("warnings").is_none(), "{r}");
        // Invalid annotations are refused there too.
        let r = review(&h, path, fixture("statefulset-invalid.json")).await;
        assert_eq!(r["allowed"], false, "{r}");
    }

    #[tokio::test]
    async fn statefulset_with_invalid_template_annotation_is_denied_naming_it() {
        let h = harness();
        let r = review(&h, "/validate", fixture("statefulset-invalid.json")).await;
        assert_eq!(r["allowed"], false);
        let message = r["status"]["message"].as_str().expect("message");
        assert!(
            message.starts_with("annotation baton.dev/failure-threshold=\"many\": invalid value"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn statefulset_not_opted_in_is_allowed_whatever_its_annotations() {
        let h = harness();
        let mut body = fixture_json("statefulset-invalid.json");
        body["request"]["object"]["metadata"]["annotations"] = json!({});
        let r = review(&h, "/validate", body.to_string().into_bytes()).await;
        assert_eq!(r["allowed"], true);
    }

    #[tokio::test]
    async fn host_network_workload_is_allowed_with_a_warning() {
        let h = harness();
        let mut body = fixture_json("statefulset-valid.json");
        body["request"]["object"]["spec"]["template"]["spec"]["hostNetwork"] = json!(true);
        let r = review(&h, "/validate", body.to_string().into_bytes()).await;
        assert_eq!(r["allowed"], true);
        let warning = r["warnings"][0].as_str().expect("a warning");
        assert!(warning.contains("hostNetwork"), "{warning}");
    }

    #[tokio::test]
    async fn deployment_with_conflicting_annotations_is_denied() {
        let h = harness();
        let mut body = fixture_json("statefulset-valid.json");
        body["request"]["kind"]["kind"] = json!("Deployment");
        let object = &mut body["request"]["object"];
        object["kind"] = json!("Deployment");
        object["spec"]
            .as_object_mut()
            .expect("spec")
            .remove("serviceName");
        object["metadata"]["annotations"]["baton.dev/renew-deadline"] = json!("10s");
        let r = review(&h, "/validate", body.to_string().into_bytes()).await;
        assert_eq!(r["allowed"], false, "{r}");
        let message = r["status"]["message"].as_str().expect("message");
        assert!(message.contains("baton.dev/renew-deadline"), "{message}");
    }

    #[tokio::test]
    async fn malformed_bodies_are_400_with_a_reason() {
        let h = harness();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"not json".to_vec(), "not JSON"),
            (b"{}".to_vec(), "not an admission.k8s.io/v1 AdmissionReview"),
            (
                json!({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"})
                    .to_string()
                    .into_bytes(),
                "not an admission.k8s.io/v1 AdmissionReview",
            ),
            (
                json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"})
                    .to_string()
                    .into_bytes(),
                "no request",
            ),
            (fixture("statefulset-valid.json"), "expected a v1 Pod"),
        ];
        for (body, reason) in cases {
            let (status, text) = post(&h, "/mutate", body).await;
            let text = String::from_utf8_lossy(&text);
            assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
            assert!(text.contains(reason), "{text:?} should contain {reason:?}");
        }
        let (status, text) = post(&h, "/validate", fixture("pod-of-statefulset.json")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(String::from_utf8_lossy(&text).contains("StatefulSet or Deployment"));

        let mut body = fixture_json("pod-of-statefulset.json");
        body["request"]["object"]["kind"] = json!("Service");
        let (status, text) = post(&h, "/mutate", body.to_string().into_bytes()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(String::from_utf8_lossy(&text).contains("not a valid Pod"));
    }

    #[tokio::test]
    async fn answers_are_counted_in_metrics() {
        let h = harness();
        review(&h, "/mutate", fixture("pod-of-statefulset.json")).await;
        review(&h, "/mutate", fixture("pod-invalid-annotation.json")).await;
        post(&h, "/mutate", b"[".to_vec()).await;
        let text = h.state.metrics.encode().expect("encodes");
        for line in [
            "baton_webhook_admissions_total{operation=\"mutate\",result=\"injected\"} 1",
            "baton_webhook_admissions_total{operation=\"mutate\",result=\"denied\"} 1",
            "baton_webhook_admissions_total{operation=\"mutate\",result=\"invalid\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
    }

    #[tokio::test]
    async fn the_patch_applies_to_the_pod_as_sent_even_when_parsing_filled_in_defaults() {
        // An init container without a name: parsed, it gets name "", so a
        // patch computed from the parsed pod alone would not apply.
        let mut review: Value =
            serde_json::from_slice(&fixture("pod-bare.json")).expect("fixture is JSON");
        review["request"]["object"]["spec"]["initContainers"] = json!([{}]);
        let (status, answer) = post(&harness(), "/mutate", review.to_string().into_bytes()).await;
        assert_eq!(status, StatusCode::OK);
        let v: Value = serde_json::from_slice(&answer).expect("JSON");
        assert_eq!(v["response"]["allowed"], true, "{v}");
        let mut pod = review["request"]["object"].clone();
        json_patch::patch(&mut pod, &patch_of(&v["response"])).expect("applies to what was sent");
        let init = pod["spec"]["initContainers"]
            .as_array()
            .expect("init containers");
        assert_eq!(
            init.len(),
            2,
            "the sidecar, then the nameless container: {init:?}"
        );
        assert_eq!(init[0]["name"], SIDECAR_NAME);
    }

    mod fuzz;
}
