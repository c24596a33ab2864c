//! The ValidatingAdmissionPolicies of manifests/rbac/policy. A service account
//! of an app namespace, which the sidecar's Role lets patch pods, may change
//! only the role label of a pod in a baton group, and only to a role value.
//! What else confines the sidecar's credentials (its own group only) is
//! tried by tests/tests/security.rs. And the API Priority and Fairness
//! objects beside them (flowcontrol.yaml): the sidecars' Lease calls have a
//! priority level of their own.

use std::time::Duration;

use baton_e2e::{
    harness::{Cluster, wait_until},
    workload,
};
use k8s_openapi::api::{
    coordination::v1::Lease,
    core::v1::Pod,
    discovery::v1::EndpointSlice,
    flowcontrol::v1::{FlowSchema, PriorityLevelConfiguration},
};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;

const T: Duration = Duration::from_secs(60);

async fn patch(api: &Api<Pod>, pod: &str, body: serde_json::Value) -> Result<Pod, String> {
    api.patch(pod, &PatchParams::default(), &Patch::Merge(body))
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn a_service_account_may_change_only_the_role_label_of_group_pods() {
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("policy").await;
    ns.apply(&workload::statefulset("web", 1, false, &[]));
    wait_until::<Pod, _>(ns.api(), "app=web", T, "the pod", |p| p.len() == 1).await;
    // The sidecar's credentials: `default`'s token bound to the pod, as
    // kubelet mounts it.
    let as_sidecar: Api<Pod> =
        Api::namespaced(ns.client_of_pod("default", "web-0").await, &ns.name);

    // The policy is enforced once the API server has loaded it: the first
    // forbidden change is retried until it is refused (bounded).
    let mut refused = String::new();
    for _ in 0..100 {
        match patch(
            &as_sidecar,
            "web-0",
            json!({"metadata": {"labels": {"app": "evil"}}}),
        )
        .await
        {
            Err(e) => {
                refused = e;
                break;
            }
            Ok(_) => {
                // Undo, as an admin, and try again.
                let admin: Api<Pod> = ns.api();
                let _ = patch(
                    &admin,
                    "web-0",
                    json!({"metadata": {"labels": {"app": "web"}}}),
                )
                .await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    assert!(
        refused.contains("only the role label"),
        "changing another label must be refused: {refused:?}"
    );

    patch(
        &as_sidecar,
        "web-0",
        json!({"metadata": {"labels": {"role": "active"}}}),
    )
    .await
    .expect("the role label may change");
    let err = patch(
        &as_sidecar,
        "web-0",
        json!({"metadata": {"labels": {"role": "boss"}}}),
    )
    .await
    .expect_err("a foreign role value is refused");
    assert!(err.contains("must be active or passive"), "{err}");
    let err = patch(
        &as_sidecar,
        "web-0",
        json!({"metadata": {"annotations": {"x": "y"}}}),
    )
    .await
    .expect_err("annotations are not the sidecar's to change");
    assert!(
        err.contains("may not change the spec, annotations"),
        "{err}"
    );

    // Administrators are not confined by it.
    let admin: Api<Pod> = ns.api();
    patch(
        &admin,
        "web-0",
        json!({"metadata": {"labels": {"team": "a"}}}),
    )
    .await
    .expect("an admin may relabel");
    ns.delete().await;
}

/// manifests/rbac/policy's `baton-service-endpoint-holds-lease` (design
/// rule 9): an EndpointSlice baton manages for a group lists at most one
/// endpoint, the pod the group's Lease names; other slices are not judged.
#[tokio::test]
async fn a_baton_endpoint_slice_may_list_only_the_lease_holder() {
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("policy-slice").await;
    ns.apply(
        "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {name: web}\n\
         spec: {holderIdentity: web-0, leaseDurationSeconds: 6}\n",
    );
    let slices: Api<EndpointSlice> = ns.api();
    let slice = |name: &str, pods: &[&str], manager: &str| -> EndpointSlice {
        let endpoints: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, pod)| {
                json!({"addresses": [format!("10.9.0.{}", i + 1)],
                                   "targetRef": {"kind": "Pod", "name": pod}})
            })
            .collect();
        serde_json::from_value(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "labels": {
                "kubernetes.io/service-name": "web",
                "endpointslice.kubernetes.io/managed-by": manager,
                "baton.dev/group": "web"}},
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": [{"name": "http", "port": 8080}],
        }))
        .expect("an EndpointSlice")
    };
    let create = |s: EndpointSlice| {
        let slices = slices.clone();
        async move {
            slices
                .create(&PostParams::default(), &s)
                .await
                .map_err(|e| e.to_string())
        }
    };

    // Enforced once the API server has loaded the policy and the Lease:
    // retried until refused (bounded), each admitted try deleted.
    let mut refused = String::new();
    for _ in 0..100 {
        match create(slice("web-baton", &["web-1"], "baton.dev")).await {
            Err(e) => {
                refused = e;
                break;
            }
            Ok(_) => {
                let _ = slices.delete("web-baton", &Default::default()).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    assert!(
        refused.contains("may list only the holder of Lease web, web-0"),
        "a slice naming a pod that does not hold the Lease: {refused:?}"
    );
    let err = create(slice("web-baton", &["web-0", "web-1"], "baton.dev"))
        .await
        .expect_err("two endpoints are refused");
    assert!(err.contains("may list only the holder"), "{err}");
    create(slice("web-baton", &["web-0"], "baton.dev"))
        .await
        .expect("the holder alone is admitted");
    create(slice("web-other", &["web-1"], "someone-else"))
        .await
        .expect("a slice baton does not manage is not judged");
    ns.delete().await;
}

/// The flow schema and priority level the API server classified a GET of
/// `path` by `client` into (API Priority and Fairness reports their UIDs in
/// response headers).
async fn classified(client: &kube::Client, path: &str) -> (String, String) {
    let request = axum::http::Request::get(path)
        .body(kube::client::Body::from(Vec::new()))
        .expect("a request");
    let response = client.send(request).await.expect("an answer");
    assert!(
        response.status().is_success(),
        "GET {path}: {}",
        response.status()
    );
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    (
        header("X-Kubernetes-PF-FlowSchema-UID"),
        header("X-Kubernetes-PF-PriorityLevel-UID"),
    )
}

/// manifests/rbac/policy/flowcontrol.yaml: a sidecar's Lease calls, made
/// with its service account, are dispatched in baton's own priority level
/// (fair between namespaces), not in `workload-low` with every other
/// service account's requests; its other calls are not.
#[tokio::test]
async fn the_sidecars_lease_calls_have_a_priority_level_of_their_own() {
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("flowcontrol").await;
    ns.apply(&workload::statefulset("web", 1, true, &[]));
    wait_until::<Lease, _>(ns.api(), "", T, "the group's Lease", |leases| {
        !leases.is_empty()
    })
    .await;
    let schemas: Api<FlowSchema> = Api::all(cluster.client.clone());
    let levels: Api<PriorityLevelConfiguration> = Api::all(cluster.client.clone());
    let schema = schemas.get("baton-leases").await.expect("the schema");
    let level = levels.get("baton").await.expect("the level");
    let (schema_uid, level_uid) = (schema.uid().expect("a uid"), level.uid().expect("a uid"));

    let sidecar = ns.client_as("default").await;
    let lease = format!(
        "/apis/coordination.k8s.io/v1/namespaces/{}/leases/web",
        ns.name
    );
    assert_eq!(
        classified(&sidecar, &lease).await,
        (schema_uid.clone(), level_uid.clone()),
        "a Lease call of the sidecar's account"
    );
    let pod = format!("/api/v1/namespaces/{}/pods/web-0", ns.name);
    let (other_schema, other_level) = classified(&sidecar, &pod).await;
    assert!(
        !other_schema.is_empty() && other_schema != schema_uid && other_level != level_uid,
        "a Pod call is not baton's Lease traffic"
    );
    ns.delete().await;
}
