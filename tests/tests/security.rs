//! What the sidecar's credentials reach (manifests/rbac/policy/own-group.yaml,
//! docs/operations.md "Security model"): the Role is bound to the namespace's
//! `default` service account, as the README installs it, so every pod of the
//! namespace that runs as `default` holds the same token. Tried as an
//! attacker would, on the real API server, with tokens bound to real pods
//! (the kind kubelet mounts, which name their pod to the API server):
//!
//! - a pod outside any group tries each write the Role grants;
//! - the sidecar's token of group A's pod tries them against group B;
//!
//! each refused with the rule's message, while the two groups' sidecars, in
//! the same namespace and with the same account, elect and write their
//! Services' endpoints through the same policies.

use std::time::Duration;

use baton_e2e::{
    harness::{TestNamespace, wait_endpoints, wait_for_holder, wait_until},
    workload,
};
use baton_sidecar::election::NEW_HOLDER_LABEL as NEW_HOLDER;
use k8s_openapi::api::{coordination::v1::Lease, core::v1::Pod, discovery::v1::EndpointSlice};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(60);

/// The pod's IP, once it has one.
async fn ip_of(ns: &TestNamespace, pod: &str) -> String {
    let what = format!("{pod} with an IP");
    let pods = wait_until::<Pod, _>(ns.api(), "", T, &what, |pods| {
        pods.iter()
            .any(|p| p.name_any() == pod && p.status.as_ref().is_some_and(|s| s.pod_ip.is_some()))
    })
    .await;
    pods.into_iter()
        .find(|p| p.name_any() == pod)
        .and_then(|p| p.status?.pod_ip)
        .expect("the IP the wait ended on")
}

/// An EndpointSlice named `name` for `service`, listing `pod` at `ip`, with
/// `labels` besides the Service's.
fn slice(name: &str, service: &str, pod: &str, ip: &str, labels: Value) -> EndpointSlice {
    let mut all = json!({"kubernetes.io/service-name": service});
    all.as_object_mut()
        .expect("an object")
        .extend(labels.as_object().cloned().unwrap_or_default());
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "labels": all},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [ip], "targetRef": {"kind": "Pod", "name": pod}}],
        "ports": [{"name": "http", "port": 8080}],
    }))
    .expect("an EndpointSlice")
}

/// A strategic patch of the pod's status that makes it not Ready: the
/// EndpointSlice controller then drops it from its Services.
fn not_ready() -> Value {
    json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}})
}

fn baton_labels(group: &str) -> Value {
    json!({"endpointslice.kubernetes.io/managed-by": "baton.dev", "baton.dev/group": group})
}

/// Whether a Lease write carries the label the sidecar puts on the write
/// that creates or takes a Lease ([`NEW_HOLDER`]): only such writes reach
/// the rules that judge a Lease write against the writer's group; an
/// unmarked one passes only as a renewal by the holder the Lease names.
#[derive(Debug, Clone, Copy)]
enum Mark {
    /// With the new-holder mark, as the sidecar creates or takes a Lease.
    NewHolder,
    /// Without it, as the sidecar renews one.
    None,
}

impl Mark {
    /// Sets or removes the mark on `lease`.
    fn apply(self, lease: &mut Lease) {
        let labels = lease.metadata.labels.get_or_insert_default();
        match self {
            Mark::NewHolder => labels.insert(NEW_HOLDER.to_owned(), "true".to_owned()),
            Mark::None => labels.remove(NEW_HOLDER),
        };
    }
}

/// The pods of a StatefulSet `shop` of `replicas`, in no baton group.
fn shop_outside_any_group(replicas: u32) -> String {
    workload::statefulset("shop", replicas, false, &[]).replace(
        "labels: {app: shop, baton.dev/group: shop, role: passive}",
        "labels: {app: shop}",
    )
}

/// Waits until each of `leases` is unmarked: its holder renewed it after
/// taking it, as the sidecar does, so that its renewals cost the API server
/// one check each.
async fn wait_unmarked(ns: &TestNamespace, leases: &[&str]) {
    let unmarked = |l: &Lease| {
        l.metadata
            .labels
            .as_ref()
            .is_none_or(|labels| !labels.contains_key(NEW_HOLDER))
    };
    wait_until::<Lease, _>(
        ns.api(),
        "",
        T,
        &format!("Leases {leases:?} renewed without the new-holder mark"),
        |seen| {
            leases
                .iter()
                .all(|name| seen.iter().any(|l| l.name_any() == *name && unmarked(l)))
        },
    )
    .await;
}

/// The writes the sidecar's Role grants, as one holder of its token tries them.
struct Attacker {
    who: &'static str,
    pods: Api<Pod>,
    leases: Api<Lease>,
    slices: Api<EndpointSlice>,
}

impl Attacker {
    fn new(client: Client, ns: &TestNamespace, who: &'static str) -> Attacker {
        Attacker {
            who,
            pods: Api::namespaced(client.clone(), &ns.name),
            leases: Api::namespaced(client.clone(), &ns.name),
            slices: Api::namespaced(client, &ns.name),
        }
    }

    async fn label(&self, pod: &str, labels: Value) -> Result<(), String> {
        let body = json!({"metadata": {"labels": labels}});
        self.pods
            .patch(pod, &PatchParams::default(), &Patch::Merge(body))
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }

    async fn status(&self, pod: &str, body: Value) -> Result<(), String> {
        self.pods
            .patch_status(pod, &PatchParams::default(), &Patch::Strategic(body))
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// Creates a Lease naming `holder`, with the sidecar's new-holder mark
    /// when `marked` (the write the group rules judge) or without it.
    async fn create_lease(&self, name: &str, holder: &str, marked: Mark) -> Result<(), String> {
        let mut lease: Lease = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 3600}
        }))
        .expect("a Lease");
        marked.apply(&mut lease);
        self.leases
            .create(&PostParams::default(), &lease)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// Rewrites the Lease's holder, as the attack on a group's Lease does.
    /// The real holder renews the Lease every second or so; a renewal
    /// between our read and our write is a 409 from the resourceVersion
    /// check, which runs before admission, so that attempt says nothing
    /// about the rules and is made again on the fresh Lease.
    async fn take_lease(&self, name: &str, holder: &str, marked: Mark) -> Result<(), String> {
        const ATTEMPTS: usize = 10;
        for _ in 1..ATTEMPTS {
            match self.try_take_lease(name, holder, marked).await {
                Err(kube::Error::Api(e)) if e.code == 409 => continue,
                other => return other.map_err(|e| e.to_string()),
            }
        }
        self.try_take_lease(name, holder, marked)
            .await
            .map_err(|e| e.to_string())
    }

    async fn try_take_lease(
        &self,
        name: &str,
        holder: &str,
        marked: Mark,
    ) -> Result<(), kube::Error> {
        let mut lease = self.leases.get(name).await?;
        marked.apply(&mut lease);
        lease.spec.get_or_insert_default().holder_identity = Some(holder.to_owned());
        self.leases
            .replace(name, &PostParams::default(), &lease)
            .await
            .map(drop)
    }

    async fn create_slice(&self, s: EndpointSlice) -> Result<(), String> {
        self.slices
            .create(&PostParams::default(), &s)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// Asserts that `attempt` was refused with a message containing `rule`.
    fn refused(&self, what: &str, attempt: Result<(), String>, rule: &str) {
        match attempt {
            Ok(()) => panic!("{}: {what} was admitted", self.who),
            Err(e) => assert!(
                e.contains(rule),
                "{}: {what} refused, but not by the rule {rule:?}: {e}",
                self.who
            ),
        }
    }
}

#[tokio::test]
async fn the_sidecars_credentials_reach_only_its_own_group() {
    let cluster = baton_e2e::harness::Cluster::connect().await;
    let ns = cluster.namespace("security").await;
    // Two groups in one namespace, each with a Service without a selector
    // whose endpoint its holder writes (design rule 9); and a Service `shop`
    // whose pods are in no group, all running as `default`.
    // Group a is a StatefulSet's, group b a Deployment's (random pod names).
    for g in ["a", "b"] {
        let service = format!("{g}-active");
        let sts = workload::statefulset(g, 1, true, &[("BATON_SERVICE", &service)]);
        ns.apply(&if g == "a" {
            sts
        } else {
            sts.replace("kind: StatefulSet", "kind: Deployment")
                .replace(&format!("  serviceName: {g}\n"), "")
                .replace("  podManagementPolicy: Parallel\n", "")
        });
        ns.apply(&workload::holder_endpoint_service(g));
    }
    ns.apply(&shop_outside_any_group(2));
    ns.apply(
        "apiVersion: v1\nkind: Service\nmetadata: {name: shop}\n\
         spec: {selector: {app: shop}, ports: [{name: http, port: 80, targetPort: 8080}]}\n",
    );

    // What the sidecars do with the same account works: each group elects
    // its pod and writes its own Service's endpoint, under every policy.
    assert_eq!(wait_for_holder(&ns, "a", None).await, "a-0");
    let b0_name = wait_for_holder(&ns, "b", None).await;
    let b_0 = b0_name.as_str();
    assert!(b_0.starts_with("b-"), "b's holder is its pod: {b_0}");
    wait_endpoints(&ns, "a-active", &["a-0"], T).await;
    wait_endpoints(&ns, "b-active", &[b_0], T).await;
    // Each sidecar wrote its own pod's app-healthy condition (pods/status).
    wait_until::<Pod, _>(
        ns.api(),
        "baton.dev/group",
        T,
        "both holders' app-healthy conditions",
        |pods| {
            [("a-0"), b_0].iter().all(|name| {
                pods.iter().any(|p| {
                    p.name_any() == *name
                        && p.status
                            .as_ref()
                            .and_then(|s| s.conditions.as_ref())
                            .is_some_and(|c| {
                                c.iter().any(|c| {
                                    c.type_ == "baton.dev/app-healthy" && c.status == "True"
                                })
                            })
                })
            })
        },
    )
    .await;
    // Each holder renewed since it took its Lease, which unmarks it: from
    // here on an unmarked write is judged as a renewal.
    wait_unmarked(&ns, &["a", "b"]).await;
    let shop0 = ip_of(&ns, "shop-0").await;
    let a0 = ip_of(&ns, "a-0").await;
    let b0 = ip_of(&ns, b_0).await;

    let stranger = Attacker::new(
        ns.client_of_pod("default", "shop-0").await,
        &ns,
        "shop-0 (in no group)",
    );
    let no_group = "shop-0 is in no baton group";
    let unmarked = "unmarked only as the holder it names";
    let only_baton_slices = "may write only the EndpointSlice baton manages for its group";
    // The policies were loaded before the pods' sidecars could write; the
    // pods reach the API server's cache at once, so the first try counts.
    stranger.refused(
        "an EndpointSlice for another Service, to an address of its choice",
        stranger
            .create_slice(slice("shop-x", "shop", "shop-0", "10.9.9.9", json!({})))
            .await,
        only_baton_slices,
    );
    stranger.refused(
        "a baton EndpointSlice naming itself",
        stranger
            .create_slice(slice(
                "c-active-baton",
                "c-active",
                "shop-0",
                &shop0,
                baton_labels("c"),
            ))
            .await,
        no_group,
    );
    // Each Lease write both ways: unmarked, it passes only as a renewal by
    // the holder the Lease names; marked, the group rules judge it.
    for (mark, rule) in [(Mark::None, unmarked), (Mark::NewHolder, no_group)] {
        stranger.refused(
            &format!("a Lease of its own ({mark:?})"),
            stranger.create_lease("shop", "shop-0", mark).await,
            rule,
        );
        stranger.refused(
            &format!("group a's Lease rewritten to a holder that is no pod ({mark:?})"),
            stranger.take_lease("a", "ghost", mark).await,
            rule,
        );
        stranger.refused(
            &format!("group a's Lease taken for itself ({mark:?})"),
            stranger.take_lease("a", "shop-0", mark).await,
            rule,
        );
    }
    stranger.refused(
        "another pod's labels (moving Service shop's traffic)",
        stranger.label("shop-1", json!({"app": "elsewhere"})).await,
        "may change only pods of its own baton group, not pod shop-1, which is in none",
    );
    stranger.refused(
        "the role label of a group's pod",
        stranger.label("a-0", json!({"role": "passive"})).await,
        "may change the role of pod a-0 only as the holder of Lease a",
    );
    stranger.refused(
        "its own labels",
        stranger.label("shop-0", json!({"app": "elsewhere"})).await,
        "not pod shop-0, which is in none",
    );
    stranger.refused(
        "its own role label",
        stranger.label("shop-0", json!({"role": "active"})).await,
        "not pod shop-0, which is in none",
    );
    stranger.refused(
        "another pod's Ready condition (out of Service shop)",
        stranger.status("shop-1", not_ready()).await,
        "may set only its own baton.dev/app-healthy condition",
    );

    // A token of `default` bound to no pod (plain `kubectl create token`).
    let unbound = Attacker::new(
        ns.client_as("default").await,
        &ns,
        "default's unbound token",
    );
    unbound.refused(
        "group a's Lease",
        unbound.take_lease("a", "ghost", Mark::NewHolder).await,
        "with the token of a pod",
    );

    // Group A's sidecar token against group B, and against the rest.
    let a = Attacker::new(
        ns.client_of_pod("default", "a-0").await,
        &ns,
        "a-0 (group a)",
    );
    a.refused(
        "group b's Lease, unmarked",
        a.take_lease("b", "a-0", Mark::None).await,
        unmarked,
    );
    a.refused(
        "group b's Lease",
        a.take_lease("b", "a-0", Mark::NewHolder).await,
        "a-0 of group a may write only the Lease a, not b",
    );
    a.refused(
        "a Lease of another name",
        a.create_lease("x", "a-0", Mark::NewHolder).await,
        "may write only the Lease a, not x",
    );
    a.refused(
        "the role label of group b's holder",
        a.label(b_0, json!({"role": "passive"})).await,
        &format!("a-0 may change the role of pod {b_0} only as the holder of Lease b"),
    );
    a.refused(
        "a pod in no group",
        a.label("shop-1", json!({"app": "elsewhere"})).await,
        "may change only pods of its own baton group, not pod shop-1, which is in none",
    );
    a.refused(
        "group b's holder's Ready condition",
        a.status(b_0, not_ready()).await,
        "may set only its own baton.dev/app-healthy condition",
    );
    a.refused(
        "its own pod's Ready condition",
        a.status("a-0", not_ready()).await,
        "may set only its own baton.dev/app-healthy condition",
    );
    let own_slice_only =
        "may write only the EndpointSlice <service>-baton of the Service its sidecar names";
    a.refused(
        "group b's Service pointed at b's holder, at another address",
        a.create_slice(slice(
            "b-active-x",
            "b-active",
            b_0,
            "10.9.9.9",
            baton_labels("b"),
        ))
        .await,
        own_slice_only,
    );
    a.refused(
        "group b's Service pointed at itself",
        a.create_slice(slice(
            "b-active-y",
            "b-active",
            "a-0",
            &a0,
            baton_labels("a"),
        ))
        .await,
        own_slice_only,
    );
    a.refused(
        "an EndpointSlice for Service shop",
        a.create_slice(slice("shop-y", "shop", "a-0", &a0, json!({})))
            .await,
        only_baton_slices,
    );
    a.refused(
        "an EndpointSlice for Service shop, labelled as baton's",
        a.create_slice(slice("shop-z", "shop", "a-0", &a0, baton_labels("a")))
            .await,
        own_slice_only,
    );
    // Its own Service, but an address that is not its own: the slice exists
    // (its holder wrote it), so the attempt is an update.
    let mut own = a.slices.get("a-active-baton").await.expect("a's slice");
    own.endpoints[0].addresses = vec![b0.clone()];
    a.refused(
        "its own Service's slice at b's holder's address",
        a.slices
            .replace("a-active-baton", &PostParams::default(), &own)
            .await
            .map(drop)
            .map_err(|e| e.to_string()),
        own_slice_only,
    );

    // Its own group stays writable with that token: the holder's label as
    // it is, and the Lease renewed as the holder.
    a.label("a-0", json!({"role": "active"}))
        .await
        .expect("a-0's own role label");
    a.take_lease("a", "a-0", Mark::None)
        .await
        .expect("a-0 renews its Lease");
    a.take_lease("a", "a-0", Mark::NewHolder)
        .await
        .expect("a-0 writes its Lease marked, as when it took it");
    // The holder's own next renewal unmarks it, so that its renewals cost
    // the API server one check each.
    wait_unmarked(&ns, &["a"]).await;

    // Nothing of it landed: the Services still point where their holders do.
    wait_endpoints(&ns, "a-active", &["a-0"], T).await;
    wait_endpoints(&ns, "b-active", &[b_0], T).await;
    wait_endpoints(&ns, "shop", &["shop-0", "shop-1"], T).await;
    ns.delete().await;
}

/// A namespace labelled `baton.dev/sidecar-policy=disabled` is left out of
/// the confinement (docs/operations.md, Upgrading: the roll of a group whose
/// sidecars predate the new-holder mark): the same stranger's writes that
/// the other test sees refused are admitted there, and only there.
#[tokio::test]
async fn a_namespace_left_out_of_the_confinement_admits_what_it_refuses() {
    let cluster = baton_e2e::harness::Cluster::connect().await;
    let ns = cluster.namespace("security-off").await;
    ns.apply(&shop_outside_any_group(1));
    ip_of(&ns, "shop-0").await;
    let stranger = Attacker::new(
        ns.client_of_pod("default", "shop-0").await,
        &ns,
        "shop-0 (in no group)",
    );
    stranger.refused(
        "a Lease of its own, before the label",
        stranger.create_lease("shop", "shop-0", Mark::None).await,
        "unmarked only as the holder it names",
    );
    ns.label_namespace("baton.dev/sidecar-policy=disabled");
    // The API server's policy matcher reads namespaces from its cache, which
    // follows the label within moments: the first admitted attempt ends it.
    let what = "the stranger's Lease, admitted once the namespace is left out";
    let mut last = String::new();
    for _ in 0..50 {
        match stranger.create_lease("shop", "shop-0", Mark::None).await {
            Ok(()) => {
                ns.delete().await;
                return;
            }
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{what}: still refused after 10 s: {last}");
}
