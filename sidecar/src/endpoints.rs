//! The Service's one endpoint, written by the Lease holder (`--service`,
//! `docs/design.md` rule 9).
//!
//! With role labels, a switch reaches kube-proxy as two EndpointSlice
//! changes (the old pod leaves, the new one joins), and kube-proxy applies
//! at most one sync per `minSyncPeriod` (1 s by default): clients find no
//! endpoint for that second. A Service without a selector has no slice but
//! the ones others write: the holder replaces its slice's one endpoint with
//! itself in a single write, guarded by the slice's resourceVersion, so the
//! switch is one change and the slice never lists two pods.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::{
    api::{
        core::v1::{ObjectReference, Pod, Service},
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::{
        apis::meta::v1::{ObjectMeta, OwnerReference},
        util::intstr::IntOrString,
    },
};
use kube::{
    Api, ResourceExt,
    api::{PostParams, Resource},
};

/// `endpointslice.kubernetes.io/managed-by` of the slices baton writes;
/// the EndpointSlice controller leaves slices of other managers alone.
pub const MANAGED_BY: &str = "baton.dev";
const MANAGED_BY_KEY: &str = "endpointslice.kubernetes.io/managed-by";
const SERVICE_NAME_KEY: &str = "kubernetes.io/service-name";

/// The name of the slice baton writes for `service`.
pub fn slice_name(service: &str) -> String {
    format!("{service}-baton")
}

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error(
        "Service {service} (named by baton.dev/service) does not exist; create it without a selector"
    )]
    NoService { service: String },
    #[error(
        "Service {service} (named by baton.dev/service) has a selector; baton writes the endpoint of a Service without one (remove spec.selector, or unset baton.dev/service and select the role label)"
    )]
    HasSelector { service: String },
    #[error("Service {service} port {port}: target port {target:?} is no port of pod {pod}")]
    UnknownPortName {
        service: String,
        port: i32,
        target: String,
        pod: String,
    },
    #[error("pod {pod} has no IP yet")]
    NoPodIp { pod: String },
    #[error("EndpointSlice {slice} changed since it was read")]
    Conflict { slice: String },
    /// Admission refused the slice (422): the Lease-holder policy, whose
    /// cached Lease may lag our write, as for the role label.
    #[error("EndpointSlice {slice} refused at admission: {message}")]
    Refused { slice: String, message: String },
    #[error("writing EndpointSlice {slice}")]
    Api {
        slice: String,
        #[source]
        source: kube::Error,
    },
    #[error("writing EndpointSlice {slice} timed out after {after:?}")]
    Timeout { slice: String, after: Duration },
}

impl EndpointError {
    /// A lasting misconfiguration of the user's objects, worth an Event.
    pub fn is_misconfiguration(&self) -> bool {
        matches!(
            self,
            EndpointError::NoService { .. }
                | EndpointError::HasSelector { .. }
                | EndpointError::UnknownPortName { .. }
        )
    }
}

/// What a call to [`ServiceEndpoints::point_at`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pointed {
    Written,
    /// The slice already named the pod (a restarted holder).
    AlreadySo,
}

/// The slice that makes `pod` the one endpoint of `service`, owned by the
/// Service (deleted with it) and labelled with the group.
pub fn desired_slice(
    service: &Service,
    pod: &Pod,
    group: (&str, &str),
) -> Result<EndpointSlice, EndpointError> {
    let service_name = service.name_any();
    let spec = service.spec.clone().unwrap_or_default();
    if spec.selector.as_ref().is_some_and(|s| !s.is_empty()) {
        return Err(EndpointError::HasSelector {
            service: service_name,
        });
    }
    let pod_name = pod.name_any();
    let ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .ok_or_else(|| EndpointError::NoPodIp {
            pod: pod_name.clone(),
        })?;
    let ports = spec
        .ports
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            let port = match &p.target_port {
                None => p.port,
                Some(IntOrString::Int(n)) => *n,
                Some(IntOrString::String(name)) => {
                    named_port(pod, name).ok_or_else(|| EndpointError::UnknownPortName {
                        service: service_name.clone(),
                        port: p.port,
                        target: name.clone(),
                        pod: pod_name.clone(),
                    })?
                }
            };
            Ok(EndpointPort {
                name: Some(p.name.unwrap_or_default()),
                port: Some(port),
                protocol: Some(p.protocol.unwrap_or_else(|| "TCP".into())),
                app_protocol: p.app_protocol,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let labels = BTreeMap::from([
        (SERVICE_NAME_KEY.to_owned(), service_name.clone()),
        (MANAGED_BY_KEY.to_owned(), MANAGED_BY.to_owned()),
        (group.0.to_owned(), group.1.to_owned()),
    ]);
    let owner = service.meta().uid.clone().map(|uid| OwnerReference {
        api_version: "v1".into(),
        kind: "Service".into(),
        name: service_name.clone(),
        uid,
        controller: Some(true),
        block_owner_deletion: None,
    });
    let endpoint = Endpoint {
        addresses: vec![ip],
        // Ready by our word, not the pod's Ready condition: a restarting
        // sidecar must not take a serving app out of the Service.
        conditions: Some(EndpointConditions {
            ready: Some(true),
            serving: Some(true),
            terminating: Some(false),
        }),
        node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".into()),
            name: Some(pod_name),
            namespace: pod.namespace(),
            uid: pod.uid(),
            ..Default::default()
        }),
        ..Default::default()
    };
    Ok(EndpointSlice {
        metadata: ObjectMeta {
            name: Some(slice_name(&service_name)),
            namespace: service.namespace(),
            labels: Some(labels),
            owner_references: Some(owner.into_iter().collect()),
            ..Default::default()
        },
        address_type: if endpoint.addresses[0].contains(':') {
            "IPv6".into()
        } else {
            "IPv4".into()
        },
        endpoints: vec![endpoint],
        ports: Some(ports),
    })
}

/// Whether `slice` already says what `desired` says (endpoint, ports, labels).
pub fn already_so(slice: &EndpointSlice, desired: &EndpointSlice) -> bool {
    let has_labels = desired
        .labels()
        .iter()
        .all(|(k, v)| slice.labels().get(k) == Some(v));
    slice.endpoints == desired.endpoints && slice.ports == desired.ports && has_labels
}

/// The number of the container port named `name` in the pod's containers,
/// the sidecar's among them (a native sidecar is an init container): a
/// Service may target the sidecar's proxy, `baton-proxy` (rule 11).
fn named_port(pod: &Pod, name: &str) -> Option<i32> {
    let spec = pod.spec.as_ref()?;
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some(name))
        .map(|p| p.container_port)
}

/// Reads the Service and writes its slice, each call within one timeout.
#[derive(Clone)]
pub struct ServiceEndpoints {
    services: Api<Service>,
    slices: Api<EndpointSlice>,
    service: String,
    group: (String, String),
}

impl ServiceEndpoints {
    pub fn new(
        client: kube::Client,
        namespace: &str,
        service: String,
        group: (String, String),
    ) -> Self {
        Self {
            services: Api::namespaced(client.clone(), namespace),
            slices: Api::namespaced(client, namespace),
            service,
            group,
        }
    }

    pub fn service(&self) -> &str {
        &self.service
    }

    /// Makes `pod` the Service's one endpoint: reads the Service and the
    /// slice, and replaces the slice (conditional on the version read)
    /// unless it already names the pod.
    pub async fn point_at(&self, pod: &Pod, timeout: Duration) -> Result<Pointed, EndpointError> {
        let slice = slice_name(&self.service);
        match tokio::time::timeout(timeout, self.write(pod, &slice)).await {
            Ok(result) => result,
            Err(_) => Err(EndpointError::Timeout {
                slice,
                after: timeout,
            }),
        }
    }

    async fn write(&self, pod: &Pod, slice: &str) -> Result<Pointed, EndpointError> {
        let api_error = |source: kube::Error| match source {
            kube::Error::Api(s) if s.code == 409 => EndpointError::Conflict {
                slice: slice.to_owned(),
            },
            kube::Error::Api(s) if s.code == 422 => EndpointError::Refused {
                slice: slice.to_owned(),
                message: s.message,
            },
            source => EndpointError::Api {
                slice: slice.to_owned(),
                source,
            },
        };
        let service = self
            .services
            .get_opt(&self.service)
            .await
            .map_err(api_error)?
            .ok_or_else(|| EndpointError::NoService {
                service: self.service.clone(),
            })?;
        let mut desired = desired_slice(&service, pod, (&self.group.0, &self.group.1))?;
        let pp = PostParams::default();
        match self.slices.get_opt(slice).await.map_err(api_error)? {
            Some(current) if already_so(&current, &desired) => Ok(Pointed::AlreadySo),
            Some(current) => {
                desired.metadata.resource_version = current.metadata.resource_version;
                self.slices
                    .replace(slice, &pp, &desired)
                    .await
                    .map_err(api_error)?;
                Ok(Pointed::Written)
            }
            None => {
                self.slices.create(&pp, &desired).await.map_err(api_error)?;
                Ok(Pointed::Written)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(spec: serde_json::Value) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop", "uid": "s-1"}, "spec": spec
        }))
        .expect("a Service")
    }

    fn selectorless() -> Service {
        service(serde_json::json!({"ports": [
            {"name": "http", "port": 80, "targetPort": "http"},
            {"name": "admin", "port": 81, "targetPort": 9000, "protocol": "TCP"},
            {"name": "plain", "port": 82},
            {"name": "proxied", "port": 83, "targetPort": "baton-proxy"}
        ]}))
    }

    fn pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "shop", "uid": "u-1"},
            "spec": {"nodeName": "node-a", "containers": [
                {"name": "app", "ports": [{"name": "http", "containerPort": 8080}]}],
                "initContainers": [{"name": "baton-sidecar", "restartPolicy": "Always",
                    "ports": [{"name": "baton-proxy", "containerPort": 9096}]}]},
            "status": {"podIP": "10.1.0.7"}
        }))
        .expect("a Pod")
    }

    #[test]
    fn the_slice_names_the_pod_alone_with_the_services_ports_resolved() {
        let slice =
            desired_slice(&selectorless(), &pod(), ("baton.dev/group", "web")).expect("a slice");
        assert_eq!(slice.metadata.name.as_deref(), Some("web-baton"));
        assert_eq!(slice.address_type, "IPv4");
        assert_eq!(slice.endpoints.len(), 1);
        let endpoint = &slice.endpoints[0];
        assert_eq!(endpoint.addresses, ["10.1.0.7"]);
        assert_eq!(endpoint.node_name.as_deref(), Some("node-a"));
        let target = endpoint.target_ref.as_ref().expect("a target");
        assert_eq!(
            (target.name.as_deref(), target.uid.as_deref()),
            (Some("web-1"), Some("u-1"))
        );
        let ready = endpoint.conditions.as_ref().and_then(|c| c.ready);
        assert_eq!(ready, Some(true));
        let ports: Vec<_> = slice
            .ports
            .iter()
            .flatten()
            .map(|p| {
                (
                    p.name.clone().unwrap_or_default(),
                    p.port.unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(
            ports,
            [
                ("http".to_owned(), 8080),
                ("admin".to_owned(), 9000),
                ("plain".to_owned(), 82),
                ("proxied".to_owned(), 9096)
            ]
        );
        let labels = slice.labels();
        assert_eq!(
            labels.get(SERVICE_NAME_KEY).map(String::as_str),
            Some("web")
        );
        assert_eq!(
            labels.get(MANAGED_BY_KEY).map(String::as_str),
            Some(MANAGED_BY)
        );
        assert_eq!(
            labels.get("baton.dev/group").map(String::as_str),
            Some("web")
        );
        let owner = &slice.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("Service", "s-1")
        );
    }

    #[test]
    fn a_service_with_a_selector_or_an_unknown_port_name_is_refused_by_name() {
        let with_selector =
            service(serde_json::json!({"selector": {"app": "web"}, "ports": [{"port": 80}]}));
        let err = desired_slice(&with_selector, &pod(), ("g", "web")).unwrap_err();
        assert!(err.is_misconfiguration());
        assert!(
            err.to_string().contains("Service web") && err.to_string().contains("selector"),
            "{err}"
        );

        let unknown = service(serde_json::json!({"ports": [{"port": 80, "targetPort": "grpc"}]}));
        let err = desired_slice(&unknown, &pod(), ("g", "web")).unwrap_err();
        assert!(err.to_string().contains("\"grpc\""), "{err}");
        assert!(err.to_string().contains("web-1"), "{err}");
    }

    #[test]
    fn a_slice_naming_another_pod_is_not_already_so() {
        let desired = desired_slice(&selectorless(), &pod(), ("g", "web")).expect("a slice");
        assert!(already_so(&desired, &desired));
        let mut other = desired.clone();
        other.endpoints[0].addresses = vec!["10.1.0.8".into()];
        assert!(!already_so(&other, &desired));
        let mut unlabelled = desired.clone();
        unlabelled.metadata.labels = None;
        assert!(!already_so(&unlabelled, &desired));
    }
}
