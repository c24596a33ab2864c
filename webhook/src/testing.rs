//! Fixture builders that read like the case: `pod().annotated(...)`.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{Container, ContainerPort, Pod, PodSpec},
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};

use crate::owner::Owner;

/// A pod with one app container `app` and nothing else.
pub fn pod() -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some("web-0".into()),
            namespace: Some("default".into()),
            labels: Some(BTreeMap::from([("app".into(), "web".into())])),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "app".into(),
                image: Some("nginx".into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// An owner workload (`StatefulSet`, `Deployment`) without annotations.
pub fn owner(kind: &str, name: &str) -> Owner {
    Owner {
        kind: kind.into(),
        api_version: "apps/v1".into(),
        name: name.into(),
        namespace: "default".into(),
        uid: Some(format!("uid-of-{name}")),
        annotations: BTreeMap::new(),
    }
}

pub trait Annotated: Sized {
    fn annotated(self, key: &str, value: &str) -> Self;
}

impl Annotated for Owner {
    fn annotated(mut self, key: &str, value: &str) -> Self {
        self.annotations.insert(key.into(), value.into());
        self
    }
}

pub trait PodExt: Sized {
    fn with_port(self, port: i32) -> Self;
    fn host_network(self) -> Self;
    fn without_token(self) -> Self;
    fn owned_by(self, kind: &str, name: &str) -> Self;
    fn spec_mut(&mut self) -> &mut PodSpec;
}

impl Annotated for Pod {
    fn annotated(mut self, key: &str, value: &str) -> Self {
        self.metadata
            .annotations
            .get_or_insert_default()
            .insert(key.into(), value.into());
        self
    }
}

impl PodExt for Pod {
    fn with_port(mut self, port: i32) -> Self {
        if let Some(app) = self.spec_mut().containers.first_mut() {
            app.ports.get_or_insert_default().push(ContainerPort {
                container_port: port,
                ..Default::default()
            });
        }
        self
    }

    fn host_network(mut self) -> Self {
        self.spec_mut().host_network = Some(true);
        self
    }

    fn without_token(mut self) -> Self {
        self.spec_mut().automount_service_account_token = Some(false);
        self
    }

    fn owned_by(mut self, kind: &str, name: &str) -> Self {
        self.metadata
            .owner_references
            .get_or_insert_default()
            .push(OwnerReference {
                api_version: "apps/v1".into(),
                kind: kind.into(),
                name: name.into(),
                uid: format!("uid-of-{name}"),
                controller: Some(true),
                block_owner_deletion: Some(true),
            });
        self
    }

    fn spec_mut(&mut self) -> &mut PodSpec {
        self.spec.get_or_insert_default()
    }
}

/// Answers every owner lookup with the same owner.
pub struct StaticOwners(pub Option<Owner>);

impl crate::owner::OwnerLookup for StaticOwners {
    fn owner<'a>(
        &'a self,
        _: &'a str,
        _: &'a OwnerReference,
    ) -> futures::future::BoxFuture<'a, Result<Option<Owner>, crate::owner::OwnerError>> {
        Box::pin(async move { Ok(self.0.clone()) })
    }
}

/// Drops every event.
pub struct NoEvents;

impl crate::events::EventSink for NoEvents {
    fn record(&self, _: &Owner, _: crate::events::AdmissionEvent) {}
}

/// A request as [`ScriptedApi`] saw it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// The JSON body; `Null` when there is none.
    pub body: serde_json::Value,
}

type Answer = dyn Fn(&Request) -> (u16, serde_json::Value) + Send + Sync;

/// A scripted API server: kube's `Client` over a function that answers
/// each request, keeping every request it was sent. (The sidecar's unit
/// tests have the same one; a crate of shared code is another change.)
#[derive(Clone)]
pub struct ScriptedApi {
    answer: std::sync::Arc<Answer>,
    seen: std::sync::Arc<std::sync::Mutex<Vec<Request>>>,
}

impl ScriptedApi {
    pub fn new(
        answer: impl Fn(&Request) -> (u16, serde_json::Value) + Send + Sync + 'static,
    ) -> Self {
        Self {
            answer: std::sync::Arc::new(answer),
            seen: std::sync::Arc::default(),
        }
    }

    /// A client of this server (default namespace `default`).
    pub fn client(&self) -> kube::Client {
        use axum::{body::Body, http};
        let api = self.clone();
        let service = tower::service_fn(move |req: http::Request<kube::client::Body>| {
            let api = api.clone();
            async move {
                let (parts, body) = req.into_parts();
                let bytes = axum::body::to_bytes(Body::new(body), usize::MAX)
                    .await
                    .unwrap_or_default();
                let request = Request {
                    method: parts.method.to_string(),
                    path: parts.uri.path().to_owned(),
                    body: serde_json::from_slice(&bytes).unwrap_or_default(),
                };
                let (status, answer) = (api.answer)(&request);
                api.seen.lock().expect("not poisoned").push(request);
                let response = http::Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Body::from(answer.to_string()))
                    .expect("a valid response");
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        kube::Client::new(service, "default")
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.seen.lock().expect("not poisoned").clone()
    }

    /// Waits until `n` requests have come (work spawned in the background).
    pub async fn wait_for(&self, n: usize, timeout: std::time::Duration) {
        let arrived = async {
            while self.seen.lock().expect("not poisoned").len() < n {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(timeout, arrived)
            .await
            .unwrap_or_else(|_| panic!("{n} requests within {timeout:?}: {:?}", self.requests()));
    }
}

/// As the API server answers a create: 201 and the object.
pub fn created(request: &Request) -> (u16, serde_json::Value) {
    (201, request.body.clone())
}
