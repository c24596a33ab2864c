//! The workload that owns a pod, found through its controller ownerReference:
//! a StatefulSet, or the Deployment behind a ReplicaSet.

use std::{collections::BTreeMap, time::Duration};

use baton_sidecar::telemetry::ErrorChain;
use futures::{StreamExt as _, future::BoxFuture};
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, ReplicaSet, StatefulSet},
        core::v1::ObjectReference,
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};
use kube::{
    Api, Client,
    core::PartialObjectMeta,
    runtime::{WatchStreamExt as _, reflector, reflector::ObjectRef, watcher},
};

use crate::metrics::{LookupSource, Metrics};

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
    #[error("looking up {kind} {namespace}/{name}")]
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

/// Whether a read may be answered by the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Read {
    CacheFirst,
    Api,
}

/// The metadata of one kind of owner, cached from a metadata watch over the
/// whole cluster, stripped to what injection reads.
type MetaStore<K> = reflector::Store<PartialObjectMeta<K>>;

/// The three caches, one per kind the webhook follows.
#[derive(Clone)]
pub struct OwnerCaches {
    statefulsets: MetaStore<StatefulSet>,
    replicasets: MetaStore<ReplicaSet>,
    deployments: MetaStore<Deployment>,
}

/// A kind whose metadata is cached.
trait Cached: Sized + kube::Resource<DynamicType = ()> + 'static {
    fn store(caches: &OwnerCaches) -> &MetaStore<Self>;
}

impl Cached for StatefulSet {
    fn store(caches: &OwnerCaches) -> &MetaStore<Self> {
        &caches.statefulsets
    }
}

impl Cached for ReplicaSet {
    fn store(caches: &OwnerCaches) -> &MetaStore<Self> {
        &caches.replicasets
    }
}

impl Cached for Deployment {
    fn store(caches: &OwnerCaches) -> &MetaStore<Self> {
        &caches.deployments
    }
}

/// Keeps what injection reads of an owner: name, namespace, uid, the
/// controller reference and the `baton.dev/*` annotations. The rest (most
/// of all `kubectl.kubernetes.io/last-applied-configuration` and
/// managedFields) would only cost memory.
pub fn strip<K>(meta: &mut PartialObjectMeta<K>) {
    let m = &mut meta.metadata;
    m.managed_fields = None;
    m.labels = None;
    if let Some(annotations) = m.annotations.as_mut() {
        annotations.retain(|k, _| k.starts_with("baton.dev/"));
    }
}

/// The cached entry for `name`, if it is the object `uid` names.
fn cached<K: Cached>(
    caches: &OwnerCaches,
    namespace: &str,
    name: &str,
    uid: &str,
) -> Option<PartialObjectMeta<K>>
where
    PartialObjectMeta<K>: Clone,
{
    let found = K::store(caches).get(&ObjectRef::new(name).within(namespace))?;
    (found.metadata.uid.as_deref() == Some(uid)).then(|| (*found).clone())
}

impl OwnerCaches {
    /// Starts the three metadata watches; each is retried with kube's
    /// default back-off, and its failures are logged once per change. The
    /// returned future runs them (until dropped).
    pub fn start(client: Client) -> (Self, impl std::future::Future<Output = ()> + Send) {
        let (statefulsets, sts_writer) = reflector::store();
        let (replicasets, rs_writer) = reflector::store();
        let (deployments, deploy_writer) = reflector::store();
        let run = futures::future::join3(
            keep_cached::<StatefulSet>(client.clone(), sts_writer),
            keep_cached::<ReplicaSet>(client.clone(), rs_writer),
            keep_cached::<Deployment>(client, deploy_writer),
        );
        let caches = Self {
            statefulsets,
            replicasets,
            deployments,
        };
        (caches, async move {
            run.await;
        })
    }
}

/// Feeds one kind's cache from a metadata watch, forever.
async fn keep_cached<K>(client: Client, writer: reflector::store::Writer<PartialObjectMeta<K>>)
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let kind = K::kind(&()).into_owned();
    // An Api of PartialObjectMeta lists and watches metadata only.
    let api: Api<PartialObjectMeta<K>> = Api::all(client);
    let mut events = std::pin::pin!(
        watcher(api, watcher::Config::default())
            .modify(strip::<K>)
            .default_backoff()
            .reflect(writer)
    );
    let mut failing = false;
    while let Some(event) = events.next().await {
        match event {
            Err(error) if !failing => {
                failing = true;
                tracing::warn!(%kind, error = %ErrorChain(&error), "owner cache: watch failed; retrying with back-off, owners are read from the API server meanwhile");
            }
            Err(_) => {}
            Ok(watcher::Event::InitDone) => {
                if std::mem::take(&mut failing) {
                    tracing::info!(%kind, "owner cache: watch back");
                } else {
                    tracing::info!(%kind, "owner cache: listed");
                }
            }
            Ok(_) => {}
        }
    }
}

/// Looks owners up in the cache, and on the API server on a miss (RBAC:
/// get, list and watch on statefulsets, replicasets, deployments).
#[derive(Clone)]
pub struct KubeOwners {
    client: Client,
    timeout: Duration,
    caches: OwnerCaches,
    metrics: Metrics,
}

impl KubeOwners {
    /// Cache first, a GET on a miss; each lookup counted in `metrics`.
    pub fn cached(
        client: Client,
        timeout: Duration,
        caches: OwnerCaches,
        metrics: Metrics,
    ) -> Self {
        Self {
            client,
            timeout,
            caches,
            metrics,
        }
    }

    async fn meta<K>(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        read: Read,
    ) -> Result<(PartialObjectMeta<K>, LookupSource), OwnerError>
    where
        K: Cached
            + kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let hit = match read {
            Read::CacheFirst => cached::<K>(&self.caches, namespace, name, uid),
            Read::Api => None,
        };
        let source = if hit.is_some() {
            LookupSource::Cache
        } else {
            LookupSource::Api
        };
        self.metrics.owner_lookup(source);
        if let Some(meta) = hit {
            return Ok((meta, source));
        }
        let kind = K::kind(&()).into_owned();
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
        match tokio::time::timeout(self.timeout, api.get_metadata(name)).await {
            Ok(Ok(meta)) => Ok((meta, source)),
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

    /// The owner, from the cache where it has it. An owner that does not
    /// opt in and came (even in part) from the cache is read again from the
    /// API server: the cache may not have
    /// seen a `kubectl annotate` made a moment before the pods were
    /// re-created, and a pod created without its sidecar would fail
    /// silently. (A cached opt-in is trusted: a stale one costs a sidecar
    /// the user has just turned off, on pods re-created within the moment.)
    async fn lookup(
        &self,
        namespace: &str,
        controller: &OwnerReference,
    ) -> Result<Option<Owner>, OwnerError> {
        let (owner, from_cache) = self
            .resolve(namespace, controller, Read::CacheFirst)
            .await?;
        match owner {
            Some(o) if from_cache && !o.annotations.contains_key(crate::keys::INJECT) => {
                Ok(self.resolve(namespace, controller, Read::Api).await?.0)
            }
            other => Ok(other),
        }
    }

    async fn resolve(
        &self,
        namespace: &str,
        controller: &OwnerReference,
        read: Read,
    ) -> Result<(Option<Owner>, bool), OwnerError> {
        match follow(controller) {
            Follow::Ignore => Ok((None, false)),
            Follow::StatefulSet => {
                let (sts, source) = self
                    .meta::<StatefulSet>(namespace, &controller.name, &controller.uid, read)
                    .await?;
                let owner = Owner::from_meta("StatefulSet", "apps/v1", namespace, &sts.metadata);
                Ok((Some(owner), source == LookupSource::Cache))
            }
            Follow::ReplicaSet => {
                let (rs, rs_source) = self
                    .meta::<ReplicaSet>(namespace, &controller.name, &controller.uid, read)
                    .await?;
                match controller_of(&rs.metadata)
                    .filter(|r| r.kind == "Deployment" && r.api_version.starts_with("apps/"))
                {
                    Some(deployment) => {
                        let (deploy, source) = self
                            .meta::<Deployment>(namespace, &deployment.name, &deployment.uid, read)
                            .await?;
                        let owner =
                            Owner::from_meta("Deployment", "apps/v1", namespace, &deploy.metadata);
                        let from_cache =
                            rs_source == LookupSource::Cache || source == LookupSource::Cache;
                        Ok((Some(owner), from_cache))
                    }
                    None => {
                        let owner =
                            Owner::from_meta("ReplicaSet", "apps/v1", namespace, &rs.metadata);
                        Ok((Some(owner), rs_source == LookupSource::Cache))
                    }
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

    fn cached_meta<K>(name: &str, uid: &str, annotations: &[(&str, &str)]) -> PartialObjectMeta<K>
    where
        K: kube::Resource<DynamicType = ()>,
    {
        use kube::core::PartialObjectMetaExt as _;
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some("shop".into()),
            uid: Some(uid.into()),
            annotations: Some(
                annotations
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        }
        .into_response_partial::<K>()
    }

    /// Caches holding `web` (uid `sts-1`, opted in) and nothing else.
    fn caches_with_web() -> OwnerCaches {
        let (statefulsets, mut sts) = reflector::store();
        let (replicasets, mut rs) = reflector::store();
        let (deployments, mut deploy) = reflector::store();
        sts.apply_watcher_event(&watcher::Event::InitDone);
        sts.apply_watcher_event(&watcher::Event::Apply(cached_meta::<StatefulSet>(
            "web",
            "sts-1",
            &[("baton.dev/inject", "true")],
        )));
        sts.apply_watcher_event(&watcher::Event::Apply(cached_meta::<StatefulSet>(
            "db",
            "sts-db",
            &[],
        )));
        rs.apply_watcher_event(&watcher::Event::InitDone);
        deploy.apply_watcher_event(&watcher::Event::InitDone);
        OwnerCaches {
            statefulsets,
            replicasets,
            deployments,
        }
    }

    fn controlled_by(kind: &str, name: &str, uid: &str) -> OwnerReference {
        OwnerReference {
            api_version: "apps/v1".into(),
            kind: kind.into(),
            name: name.into(),
            uid: uid.into(),
            controller: Some(true),
            block_owner_deletion: None,
        }
    }

    /// A cached owner that opts in costs no API call; one cached under
    /// another uid (the StatefulSet deleted and created again), not cached
    /// yet, or cached without an opt-in is read from the API server, once.
    /// Each read is counted by where it was answered.
    #[tokio::test]
    async fn owners_are_read_from_the_cache_and_from_the_api_server_on_a_miss() {
        use baton_sidecar::testing::ScriptedApi;
        let api = ScriptedApi::new(|req| {
            let name = req.path.rsplit('/').next().unwrap_or_default().to_owned();
            let deployment = "{\"apiVersion\":\"apps/v1\",\"kind\":\"Deployment\",\"name\":\"api\",\"uid\":\"d-1\",\"controller\":true}";
            let owners: serde_json::Value = if name == "api-7d9" {
                serde_json::from_str(&format!("[{deployment}]")).expect("json")
            } else {
                serde_json::json!([])
            };
            (
                200,
                serde_json::json!({
                    "apiVersion": "meta.k8s.io/v1",
                    "kind": "PartialObjectMetadata",
                    "metadata": {
                        "name": name, "namespace": "shop", "uid": format!("{name}-from-api"),
                        "annotations": if name == "plain" { serde_json::json!({}) }
                            else { serde_json::json!({"baton.dev/inject": "true", "note": "fresh"}) },
                        "ownerReferences": owners,
                    }
                }),
            )
        });
        let metrics = Metrics::new();
        let owners = KubeOwners::cached(
            api.client(),
            Duration::from_secs(5),
            caches_with_web(),
            metrics.clone(),
        );

        let web = owners
            .lookup("shop", &controlled_by("StatefulSet", "web", "sts-1"))
            .await
            .expect("found")
            .expect("followed");
        assert_eq!(web.uid.as_deref(), Some("sts-1"), "from the cache");
        assert!(api.requests().is_empty(), "{:?}", api.requests());

        let recreated = owners
            .lookup("shop", &controlled_by("StatefulSet", "web", "sts-2"))
            .await
            .expect("found")
            .expect("followed");
        assert_eq!(recreated.uid.as_deref(), Some("web-from-api"));
        let deployment = owners
            .lookup("shop", &controlled_by("ReplicaSet", "api-7d9", "rs-1"))
            .await
            .expect("found")
            .expect("followed");
        assert_eq!(
            (deployment.kind.as_str(), deployment.name.as_str()),
            ("Deployment", "api")
        );
        // Cached without an opt-in: maybe annotated a moment ago, so the
        // API server is asked (and here says it is).
        let db = owners
            .lookup("shop", &controlled_by("StatefulSet", "db", "sts-db"))
            .await
            .expect("found")
            .expect("followed");
        assert_eq!(
            db.annotations.get("baton.dev/inject").map(String::as_str),
            Some("true")
        );
        // Not cached and not opted in: the API server's answer is fresh,
        // read once.
        let plain = owners
            .lookup("shop", &controlled_by("StatefulSet", "plain", "sts-p"))
            .await
            .expect("found")
            .expect("followed");
        assert!(plain.annotations.is_empty(), "{plain:?}");
        let paths: Vec<String> = api.requests().into_iter().map(|r| r.path).collect();
        assert_eq!(
            paths,
            [
                "/apis/apps/v1/namespaces/shop/statefulsets/web",
                "/apis/apps/v1/namespaces/shop/replicasets/api-7d9",
                "/apis/apps/v1/namespaces/shop/deployments/api",
                "/apis/apps/v1/namespaces/shop/statefulsets/db",
                "/apis/apps/v1/namespaces/shop/statefulsets/plain",
            ]
        );
        let text = metrics.encode().expect("encodes");
        assert!(
            text.contains("baton_webhook_owner_lookups_total{source=\"cache\"} 2")
                && text.contains("baton_webhook_owner_lookups_total{source=\"api\"} 5"),
            "{text}"
        );
    }

    #[test]
    fn the_cache_keeps_only_what_injection_reads() {
        let mut meta = cached_meta::<StatefulSet>(
            "web",
            "sts-1",
            &[
                ("baton.dev/inject", "true"),
                ("kubectl.kubernetes.io/last-applied-configuration", "{...}"),
            ],
        );
        meta.metadata.labels = Some([("app".to_owned(), "web".to_owned())].into());
        meta.metadata.managed_fields = Some(vec![Default::default()]);
        meta.metadata.owner_references = Some(vec![controlled_by("Deployment", "d", "u")]);
        strip(&mut meta);
        let m = &meta.metadata;
        assert_eq!(
            m.annotations.as_ref().map(|a| a.keys().collect::<Vec<_>>()),
            Some(vec![&"baton.dev/inject".to_owned()])
        );
        assert_eq!((&m.labels, &m.managed_fields), (&None, &None));
        assert_eq!(m.owner_references.as_ref().map(Vec::len), Some(1));
        assert_eq!(m.uid.as_deref(), Some("sts-1"));
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
