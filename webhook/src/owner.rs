//! The workload that owns a pod, found through its controller ownerReference:
//! a StatefulSet, or the Deployment behind a ReplicaSet.

use std::{collections::BTreeMap, time::Duration};

use futures::future::BoxFuture;
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, ReplicaSet, StatefulSet},
        core::v1::ObjectReference,
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};
use kube::{Api, Client, core::PartialObjectMeta};

/// The owner workload of a pod, as far as injection cares.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Owner {
    /// `StatefulSet`, `Deployment` or (for a ReplicaSet without a Deployment) `ReplicaSet`.
    pub kind: String,
    pub api_version: String,
    pub name: String,
    pub namespace: String,
    pub uid: Option<String>,
    pub annotations: BTreeMap<String, String>,
}

impl Owner {
    /// Builds the owner from an object's metadata.
    pub fn from_meta(kind: &str, api_version: &str, namespace: &str, meta: &ObjectMeta) -> Self {
        Self {
            kind: kind.to_owned(),
            api_version: api_version.to_owned(),
            name: meta.name.clone().unwrap_or_default(),
            namespace: meta
                .namespace
                .clone()
                .unwrap_or_else(|| namespace.to_owned()),
            uid: meta.uid.clone(),
            annotations: meta.annotations.clone().unwrap_or_default(),
        }
    }

    /// The reference Events use to point at this owner.
    pub fn object_ref(&self) -> ObjectReference {
        ObjectReference {
            api_version: Some(self.api_version.clone()),
            kind: Some(self.kind.clone()),
            name: Some(self.name.clone()),
            namespace: Some(self.namespace.clone()),
            uid: self.uid.clone(),
            ..Default::default()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OwnerError {
    #[error("looking up {kind} {namespace}/{name}: {source}")]
    Get {
        kind: String,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("looking up the owner {kind} {namespace}/{name}: no answer within {timeout:?}")]
    Timeout {
        kind: String,
        namespace: String,
        name: String,
        timeout: Duration,
    },
}

/// The controller ownerReference of an object, if it has one.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
}

/// Finds the owner workload behind a pod's controller ownerReference.
pub trait OwnerLookup: Send + Sync {
    /// `Ok(None)` when the controller is not a kind baton follows (a Job, a DaemonSet...).
    fn owner<'a>(
        &'a self,
        namespace: &'a str,
        controller: &'a OwnerReference,
    ) -> BoxFuture<'a, Result<Option<Owner>, OwnerError>>;
}

/// Which objects to GET for a controller reference: pure, so it is tested without an API server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Follow {
    StatefulSet,
    /// A ReplicaSet, then its Deployment if a Deployment controls it.
    ReplicaSet,
    Ignore,
}

pub fn follow(controller: &OwnerReference) -> Follow {
    if !controller.api_version.starts_with("apps/") {
        return Follow::Ignore;
    }
    match controller.kind.as_str() {
        "StatefulSet" => Follow::StatefulSet,
        "ReplicaSet" => Follow::ReplicaSet,
        _ => Follow::Ignore,
    }
}

/// Looks owners up on the API server (RBAC: get on statefulsets, replicasets, deployments).
#[derive(Clone)]
pub struct KubeOwners {
    client: Client,
    timeout: Duration,
}

impl KubeOwners {
    pub fn new(client: Client, timeout: Duration) -> Self {
        Self { client, timeout }
    }

    async fn meta<K>(&self, namespace: &str, name: &str) -> Result<PartialObjectMeta<K>, OwnerError>
    where
        K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let kind = K::kind(&()).into_owned();
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
        match tokio::time::timeout(self.timeout, api.get_metadata(name)).await {
            Ok(Ok(meta)) => Ok(meta),
            Ok(Err(source)) => Err(OwnerError::Get {
                kind,
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                source,
            }),
            Err(_) => Err(OwnerError::Timeout {
                kind,
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                timeout: self.timeout,
            }),
        }
    }

    async fn lookup(
        &self,
        namespace: &str,
        controller: &OwnerReference,
    ) -> Result<Option<Owner>, OwnerError> {
        match follow(controller) {
            Follow::Ignore => Ok(None),
            Follow::StatefulSet => {
                let sts = self
                    .meta::<StatefulSet>(namespace, &controller.name)
                    .await?;
                Ok(Some(Owner::from_meta(
                    "StatefulSet",
                    "apps/v1",
                    namespace,
                    &sts.metadata,
                )))
            }
            Follow::ReplicaSet => {
                let rs = self.meta::<ReplicaSet>(namespace, &controller.name).await?;
                match controller_of(&rs.metadata)
                    .filter(|r| r.kind == "Deployment" && r.api_version.starts_with("apps/"))
                {
                    Some(deployment) => {
                        let deploy = self.meta::<Deployment>(namespace, &deployment.name).await?;
                        Ok(Some(Owner::from_meta(
                            "Deployment",
                            "apps/v1",
                            namespace,
                            &deploy.metadata,
                        )))
                    }
                    None => Ok(Some(Owner::from_meta(
                        "ReplicaSet",
                        "apps/v1",
                        namespace,
                        &rs.metadata,
                    ))),
                }
            }
        }
    }
}

impl OwnerLookup for KubeOwners {
    fn owner<'a>(
        &'a self,
        namespace: &'a str,
        controller: &'a OwnerReference,
    ) -> BoxFuture<'a, Result<Option<Owner>, OwnerError>> {
        Box::pin(self.lookup(namespace, controller))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(api_version: &str, kind: &str, controller: bool) -> OwnerReference {
        OwnerReference {
            api_version: api_version.into(),
            kind: kind.into(),
            name: "x".into(),
            uid: "u".into(),
            controller: Some(controller),
            block_owner_deletion: None,
        }
    }

    #[test]
    fn statefulsets_and_replicasets_are_followed_other_controllers_are_not() {
        assert_eq!(
            follow(&reference("apps/v1", "StatefulSet", true)),
            Follow::StatefulSet
        );
        assert_eq!(
            follow(&reference("apps/v1", "ReplicaSet", true)),
            Follow::ReplicaSet
        );
        assert_eq!(
            follow(&reference("apps/v1", "DaemonSet", true)),
            Follow::Ignore
        );
        assert_eq!(follow(&reference("batch/v1", "Job", true)), Follow::Ignore);
        assert_eq!(
            follow(&reference("example.com/v1", "StatefulSet", true)),
            Follow::Ignore
        );
    }

    #[test]
    fn only_the_controller_reference_counts() {
        let meta = ObjectMeta {
            owner_references: Some(vec![
                reference("apps/v1", "StatefulSet", false),
                reference("apps/v1", "ReplicaSet", true),
            ]),
            ..Default::default()
        };
        assert_eq!(
            controller_of(&meta).map(|r| r.kind.as_str()),
            Some("ReplicaSet")
        );
        assert_eq!(controller_of(&ObjectMeta::default()), None);
    }

    #[test]
    fn object_ref_points_at_the_owner_in_its_namespace() {
        let meta = ObjectMeta {
            name: Some("web".into()),
            uid: Some("123".into()),
            ..Default::default()
        };
        let owner = Owner::from_meta("StatefulSet", "apps/v1", "shop", &meta);
        let r = owner.object_ref();
        assert_eq!(r.namespace.as_deref(), Some("shop"));
        assert_eq!(r.kind.as_deref(), Some("StatefulSet"));
        assert_eq!(r.uid.as_deref(), Some("123"));
    }
}
