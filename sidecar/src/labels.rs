//! Role labels on the pods of the group.
//!
//! A new holder demotes every other active pod of its group, then promotes
//! itself; the promotion carries the pod's resourceVersion, so a holder that
//! was frozen between its deadline check and the write cannot label itself
//! active after someone demoted it (`docs/design.md`, rule 3).

use std::time::Duration;

use crate::contract::{Role, role_labels::RoleLabels};
use futures::{StreamExt, stream::BoxStream};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams},
    runtime::{WatchStreamExt, watcher},
};

use crate::backoff::WatchBackoff;

#[derive(Debug, thiserror::Error)]
pub enum LabelError {
    #[error("labelling pod {pod} {role:?}")]
    Patch {
        pod: String,
        role: Role,
        #[source]
        source: kube::Error,
    },
    #[error("pod {pod} changed since it was read; not labelled {role:?}")]
    Conflict { pod: String, role: Role },
    /// Admission refused the label (422): the Lease-holder policy of
    /// manifests/rbac/policy, whose cached Lease may lag our write.
    #[error("labelling pod {pod} {role:?} refused at admission: {message}")]
    Refused {
        pod: String,
        role: Role,
        message: String,
    },
    #[error("listing the active pods of group {group}")]
    List {
        group: String,
        #[source]
        source: kube::Error,
    },
    #[error("setting the app-healthy condition of pod {pod}")]
    Condition {
        pod: String,
        #[source]
        source: kube::Error,
    },
    #[error("calling the API server about pod {pod} timed out after {after:?}")]
    Timeout { pod: String, after: Duration },
}

/// What the Lease's holder is, as a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    Member,
    /// A pod, not of this group.
    OtherPod,
    NoSuchPod,
}

/// Patches role labels, each call bounded by a timeout.
#[derive(Clone)]
pub struct Labeller {
    api: Api<Pod>,
    labels: RoleLabels,
}

impl Labeller {
    pub fn new(api: Api<Pod>, labels: RoleLabels) -> Self {
        Self { api, labels }
    }

    pub fn labels(&self) -> &RoleLabels {
        &self.labels
    }

    /// Whether pod `name` exists and belongs to our group (its group label).
    pub async fn group_member(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<Membership, LabelError> {
        match tokio::time::timeout(timeout, self.api.get_opt(name)).await {
            Ok(Ok(None)) => Ok(Membership::NoSuchPod),
            Ok(Ok(Some(pod))) => {
                let group = pod
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(&self.labels.group_key));
                Ok(if group == Some(&self.labels.group) {
                    Membership::Member
                } else {
                    Membership::OtherPod
                })
            }
            Ok(Err(source)) => Err(LabelError::List {
                group: self.labels.group.clone(),
                source,
            }),
            Err(_) => Err(LabelError::Timeout {
                pod: name.to_owned(),
                after: timeout,
            }),
        }
    }

    /// Sets a pod's role label; with `resource_version`, only if the pod
    /// has not changed since. Returns the patched pod (None if it is gone).
    pub async fn set(
        &self,
        pod: &str,
        role: Role,
        resource_version: Option<&str>,
        timeout: Duration,
    ) -> Result<Option<Pod>, LabelError> {
        let patch = Patch::Merge(self.labels.patch(role, resource_version));
        let pp = PatchParams::default();
        let call = self.api.patch(pod, &pp, &patch);
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(p)) => Ok(Some(p)),
            Ok(Err(kube::Error::Api(s))) if s.code == 404 => Ok(None),
            Ok(Err(kube::Error::Api(s))) if s.code == 409 => Err(LabelError::Conflict {
                pod: pod.to_owned(),
                role,
            }),
            Ok(Err(kube::Error::Api(s))) if s.code == 422 => Err(LabelError::Refused {
                pod: pod.to_owned(),
                role,
                message: s.message,
            }),
            Ok(Err(source)) => Err(LabelError::Patch {
                pod: pod.to_owned(),
                role,
                source,
            }),
            Err(_) => Err(LabelError::Timeout {
                pod: pod.to_owned(),
                after: timeout,
            }),
        }
    }

    /// Sets our Pod's app-healthy condition (`docs/design.md`, rule 10), on
    /// the status subresource.
    pub async fn set_health_condition(
        &self,
        pod: &str,
        patch: serde_json::Value,
        timeout: Duration,
    ) -> Result<Pod, LabelError> {
        let patch = Patch::Strategic(patch);
        let pp = PatchParams::default();
        let call = self.api.patch_status(pod, &pp, &patch);
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(source)) => Err(LabelError::Condition {
                pod: pod.to_owned(),
                source,
            }),
            Err(_) => Err(LabelError::Timeout {
                pod: pod.to_owned(),
                after: timeout,
            }),
        }
    }

    /// The metadata of the pods that `selector` selects.
    async fn list(
        &self,
        selector: &str,
        timeout: Duration,
    ) -> Result<Vec<kube::core::PartialObjectMeta<Pod>>, LabelError> {
        let lp = ListParams::default().labels(selector);
        match tokio::time::timeout(timeout, self.api.list_metadata(&lp)).await {
            Ok(Ok(list)) => Ok(list.items),
            Ok(Err(source)) => Err(LabelError::List {
                group: self.labels.group.clone(),
                source,
            }),
            Err(_) => Err(LabelError::Timeout {
                pod: format!("group {}", self.labels.group),
                after: timeout,
            }),
        }
    }

    /// The group's pods, watched: the holder's view of its group (the
    /// census), opened only while it holds the Lease. One watch per group,
    /// its list served from the API server's watch cache (any version).
    pub fn group_events(
        &self,
        retry_period: Duration,
    ) -> BoxStream<'static, Result<watcher::Event<Pod>, watcher::Error>> {
        let group = format!("{}={}", self.labels.group_key, self.labels.group);
        let config = watcher::Config::default().labels(&group).any_semantic();
        watcher(self.api.clone(), config)
            .backoff(WatchBackoff::new(retry_period))
            .boxed()
    }

    /// How many pods of the group, other than `me`, exist and are not
    /// being deleted: those that could take the Lease over.
    pub async fn count_others(&self, me: &str, timeout: Duration) -> Result<usize, LabelError> {
        let group = format!("{}={}", self.labels.group_key, self.labels.group);
        let list = self.list(&group, timeout).await?;
        Ok(list
            .iter()
            .filter(|p| p.name_any() != me && p.metadata.deletion_timestamp.is_none())
            .count())
    }

    /// Labels passive every pod of the group, other than `me`, that is
    /// labelled active, except pods being deleted: such a pod is never a
    /// Ready endpoint, and while it drains (`docs/design.md`, rule 8) it is
    /// what kube-proxy falls back to until our own label reaches it.
    /// Returns the names demoted.
    pub async fn demote_others(
        &self,
        me: &str,
        timeout: Duration,
    ) -> Result<Vec<String>, LabelError> {
        let list = self.list(&self.labels.active_selector(), timeout).await?;
        let mut demoted = Vec::new();
        let others = list
            .iter()
            .filter(|p| p.name_any() != me && p.metadata.deletion_timestamp.is_none());
        for other in others {
            let name = other.name_any();
            self.set(&name, Role::Passive, None, timeout).await?;
            demoted.push(name);
        }
        Ok(demoted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> RoleLabels {
        RoleLabels {
            key: "role".into(),
            active: "active".into(),
            passive: "passive".into(),
            group_key: "baton.dev/group".into(),
            group: "web".into(),
        }
    }

    /// A new holder demotes the other active pods, but not one being
    /// deleted: that one drains (docs/design.md, rule 8), and demoting it
    /// first would leave the Service with no endpoint at all until our own
    /// label reaches kube-proxy.
    #[tokio::test]
    async fn a_new_holder_demotes_active_pods_but_not_a_draining_one() {
        use crate::testing::ScriptedApi;
        use serde_json::json;
        let api = ScriptedApi::new(|req| {
            if req.method == "GET" {
                let item = |name: &str, deleted: bool| {
                    let mut meta = json!({"name": name, "labels": {"role": "active"}});
                    if deleted {
                        meta["deletionTimestamp"] = json!("2026-12-01T00:00:00Z");
                    }
                    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": meta})
                };
                let list = json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
                    "metadata": {}, "items": [item("web-0", true), item("web-1", false), item("web-2", false)]});
                (200, list)
            } else {
                (200, json!({"metadata": {"name": "patched"}}))
            }
        });
        let labeller = Labeller::new(Api::default_namespaced(api.client()), labels());
        let demoted = labeller
            .demote_others("web-2", Duration::from_secs(5))
            .await
            .expect("demoted");
        assert_eq!(demoted, ["web-1"]);
        let patched: Vec<String> = api
            .requests()
            .into_iter()
            .filter(|r| r.method == "PATCH")
            .map(|r| r.path)
            .collect();
        assert_eq!(patched, ["/api/v1/namespaces/default/pods/web-1"]);
    }
}
