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

/// Every group is empty.
pub struct NoGroupPods;

impl crate::group::GroupPods for NoGroupPods {
    fn pods<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<Vec<crate::group::Listed>, crate::group::GroupError>>
    {
        Box::pin(async { Ok(Vec::new()) })
    }
}

/// Drops every event.
pub struct NoEvents;

impl crate::events::EventSink for NoEvents {
    fn record(&self, _: &Owner, _: crate::events::AdmissionEvent) {}
}

// The scripted API server is the sidecar crate's (feature `testing`).
pub use baton_sidecar::testing::{ScriptedApi, created};
