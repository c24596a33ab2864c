//! The sidecar against the real control plane and the real node: sidecar
//! and demo-app containers that kubelet runs from our images. In every test
//! a watch over the group's pods checks that two pods never carry
//! `role=active` at once.

use std::time::Duration;

use baton_e2e::{
    group::{Group, wait_for_events},
    harness::{
        Cluster, NeverTwoActive, http, labelled, pod_ip, sidecar_status, signal, wait_endpoints,
        wait_for_object, wait_role, wait_until,
    },
    workload,
};
use baton_sidecar::contract::Role;
use k8s_openapi::api::{coordination::v1::Lease, core::v1::Pod, events::v1::Event};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
};
use serde_json::json;

const T: Duration = Duration::from_secs(60);

#[tokio::test]
async fn first_election_makes_one_of_two_active_and_the_other_passive() {
    let (group, holder) = Group::deploy("sidecar-first", 2).await;
    let pods = wait_until::<Pod, _>(
        group.pods(),
        "app=web",
        T,
        "the other pod passive",
        |pods| labelled(pods, "role", "passive").len() == 1,
    )
    .await;
    let passive = labelled(&pods, "role", "passive").remove(0);
    assert_ne!(passive, holder);

    let status = group.sidecar_status(&holder).await;
    assert_eq!(status.role, Some(Role::Active), "{status:?}");
    assert_eq!(status.holder.as_deref(), Some(holder.as_str()));
    assert!(status.app_healthy, "{status:?}");
    let status = group.sidecar_status(&passive).await;
    assert_eq!(status.role, Some(Role::Passive), "{status:?}");
    assert_eq!(status.holder.as_deref(), Some(holder.as_str()));

    // The app reads its role, with leaseTransitions as a fencing token.
    let lease: Lease = group.ns.api().get("web").await.expect("lease");
    let transitions = lease
        .spec
        .and_then(|s| s.lease_transitions)
        .expect("transitions");
    for (pod, role) in [(&holder, "active"), (&passive, "passive")] {
        let path = group
            .ns
            .empty_dir(pod, workload::RUN_VOLUME)
            .await
            .join("role.json");
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let record: serde_json::Value = serde_json::from_str(&text).expect("role file is JSON");
        assert_eq!(record["role"], role, "{text}");
        assert_eq!(record["holder"], holder.as_str(), "{text}");
        assert_eq!(record["lease_transitions"], transitions, "{text}");
    }

    // A passive pod is ready: readiness must not stall StatefulSet rollouts.
    let ip = pod_ip(&group.ns, &passive).await;
    let ready = http()
        .get(format!("http://{ip}:9095/readyz"))
        .send()
        .await
        .expect("readyz");
    assert!(ready.status().is_success());
    group.finish().await;
}

#[tokio::test]
async fn failing_app_hands_the_service_to_a_healthy_pod_of_three() {
    let (group, old) = Group::deploy("sidecar-fail", 3).await;
    group.set_app_health(&old, "fail").await;
    let new = group.wait_for_new_holder(Some(&old)).await;
    assert_ne!(new, old);
    let status = group.sidecar_status(&old).await;
    assert_eq!(status.role, Some(Role::Passive), "{status:?}");
    assert!(!status.app_healthy, "{status:?}");
    // kubectl describe pod tells the story.
    let want = [
        ("AppUnhealthy", old.as_str()),
        ("Demoted", old.as_str()),
        ("Promoted", new.as_str()),
    ];
    wait_for_events(&group.ns, &want).await;
    let holders = group.finish().await;
    // An unhealthy holder releases at once (rule 4) rather than letting it expire.
    assert!(
        holders.contains(&None),
        "lease released on the way: {holders:?}"
    );
}

/// The app's process dies (SIGKILL from the node, as an OOM kill): the
/// kernel closes the probe's kept connection and refuses new connects, and
/// the sidecar hands over on that event rather than at its next periodic
/// probe and failure threshold (docs/decisions.md §14).
#[tokio::test]
async fn a_killed_app_process_hands_over_on_its_closed_connection() {
    let (group, old) = Group::deploy("sidecar-appkill", 2).await;
    let pid = group.ns.pid(&old, "app", T).await;
    signal(pid, "KILL").await;
    let new = group.wait_for_new_holder(Some(&old)).await;
    assert_ne!(new, old);
    let metrics = group.sidecar_get(&old, "/metrics").await;
    let refused_on_close = metrics.lines().find(|l| {
        l.starts_with("baton_probes_total{")
            && l.contains(r#"trigger="connection closed""#)
            && l.contains(r#"result="refused""#)
    });
    assert!(
        refused_on_close.is_some_and(|l| !l.ends_with(" 0")),
        "the probe that found the app dead was started by the closed connection:\n{metrics}"
    );
    let holders = group.finish().await;
    assert!(
        holders.contains(&None),
        "released at once (rule 4): {holders:?}"
    );
}

#[tokio::test]
async fn hung_app_hands_over_like_a_failing_one() {
    let (group, old) = Group::deploy("sidecar-hang", 2).await;
    group.set_app_health(&old, "hang").await;
    let new = group.wait_for_new_holder(Some(&old)).await;
    assert_ne!(new, old);
    let status = group.sidecar_status(&old).await;
    assert_eq!(
        status.app_last_failure.as_deref(),
        Some("timed out"),
        "{status:?}"
    );
    group.finish().await;
}

#[tokio::test]
async fn sigterm_hands_over_without_waiting_for_expiry() {
    let (group, old) = Group::deploy("sidecar-sigterm", 2).await;
    let pid = group.sidecar_pid(&old).await;
    signal(pid, "TERM").await;
    let new = group.wait_for_new_holder(Some(&old)).await;
    wait_for_events(
        &group.ns,
        &[("HandedOver", old.as_str()), ("Promoted", new.as_str())],
    )
    .await;
    let holders = group.finish().await;
    assert_eq!(
        holders,
        [Some(old), None, Some(new)],
        "the holder released the lease on SIGTERM and the other took it"
    );
}

#[tokio::test]
async fn deleting_the_active_pod_hands_over() {
    let (group, old) = Group::deploy("sidecar-delete", 2).await;
    group
        .pods()
        .delete(&old, &DeleteParams::default())
        .await
        .expect("delete the active pod");
    let new = group.wait_for_new_holder(Some(&old)).await;
    let holders = group.finish().await;
    assert_eq!(
        holders,
        [Some(old), None, Some(new)],
        "released, then taken"
    );
}

/// kubelet restarts a killed native sidecar in place. The restarted sidecar
/// has the pod's name, so it is the Lease's holder again: it rejoins and
/// renews, without a switch (the app never failed) and without two active
/// pods. (A holder that stops without releasing and does not come back is
/// the frozen holder below.)
#[tokio::test]
async fn sigkilled_sidecar_is_restarted_by_kubelet_and_rejoins_without_two_active() {
    let (group, old) = Group::deploy("sidecar-sigkill", 2).await;
    let pid = group.sidecar_pid(&old).await;
    signal(pid, "KILL").await;
    let restarted = wait_for_object::<Pod, _>(
        group.pods(),
        &old,
        T,
        "kubelet to restart the killed sidecar",
        |p| {
            p.status
                .as_ref()
                .and_then(|s| s.init_container_statuses.as_ref())
                .and_then(|c| c.iter().find(|c| c.name == "baton-sidecar"))
                .is_some_and(|c| {
                    c.restart_count >= 1 && c.state.as_ref().is_some_and(|s| s.running.is_some())
                })
        },
    )
    .await;
    assert_eq!(restarted.name_any(), old);
    let new_pid = group.sidecar_pid(&old).await;
    assert_ne!(new_pid, pid, "a new sidecar process");
    // The restarted sidecar reports itself active once it has renewed.
    let ip = pod_ip(&group.ns, &old).await;
    wait_role(&ip, Role::Active, Duration::from_secs(10)).await;
    group.wait_active(&old).await;
    let holders = group.finish().await;
    assert_eq!(holders, [Some(old)], "no switch: {holders:?}");
}

#[tokio::test]
async fn frozen_holder_is_demoted_and_stays_passive_when_it_resumes() {
    let (group, old) = Group::deploy("sidecar-sigstop", 2).await;
    let pid = group.sidecar_pid(&old).await;
    signal(pid, "STOP").await;
    let new = group.wait_for_new_holder(Some(&old)).await;
    signal(pid, "CONT").await;
    // The resumed sidecar finds its deadline passed and the lease taken.
    let ip = pod_ip(&group.ns, &old).await;
    let mut last = group.sidecar_status(&old).await;
    for _ in 1..100 {
        if last.holder.as_deref() == Some(new.as_str()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        last = group.sidecar_status(&old).await;
    }
    assert_eq!(
        last.role,
        Some(Role::Passive),
        "resumed sidecar at {ip}: {last:?}"
    );
    assert_eq!(last.holder.as_deref(), Some(new.as_str()), "{last:?}");
    group.wait_active(&new).await;
    group.finish().await;
}

#[tokio::test]
async fn role_labels_edited_by_hand_are_corrected() {
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("sidecar-handedit").await;
    // Without manifests/rbac/policy's Lease-holder policy, which would refuse
    // the first hand edit below (tested on its own): this tests the sidecar.
    ns.kubectl_ok(
        &[
            "label",
            "namespace",
            &ns.name,
            "baton.dev/lease-policy=disabled",
        ],
        None,
    );
    ns.apply(&workload::statefulset("web", 2, true, &[]));
    ns.apply(&workload::active_service("web"));
    let lease = wait_for_object::<Lease, _>(ns.api(), "web", T, "a holder", |l| {
        l.spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_ref())
            .is_some()
    })
    .await;
    let holder = lease.spec.and_then(|s| s.holder_identity).expect("holder");
    let other = if holder == "web-0" { "web-1" } else { "web-0" };
    let pods: Api<Pod> = ns.api();
    let set = |role: &'static str| Patch::Merge(json!({"metadata": {"labels": {"role": role}}}));
    wait_until::<Pod, _>(pods.clone(), "app=web", T, "roles settled", |p| {
        labelled(p, "role", "passive") == [other.to_string()]
    })
    .await;

    pods.patch(other, &PatchParams::default(), &set("active"))
        .await
        .expect("hand edit");
    wait_until::<Pod, _>(
        pods.clone(),
        "app=web",
        T,
        "the passive pod relabelled passive",
        |p| labelled(p, "role", "passive") == [other.to_string()],
    )
    .await;

    pods.patch(&holder, &PatchParams::default(), &set("passive"))
        .await
        .expect("hand edit");
    wait_until::<Pod, _>(
        pods.clone(),
        "app=web",
        T,
        "the holder relabelled active",
        |p| labelled(p, "role", "active") == [holder.clone()],
    )
    .await;
    wait_endpoints(&ns, "web-active", &[&holder], T).await;
    let now = pods.get(&holder).await.expect("holder pod");
    assert_eq!(now.labels().get("role").map(String::as_str), Some("active"));
    ns.delete().await;
}

/// manifests/rbac/policy's Lease-holder policy: no one, not even an
/// administrator, may label a pod active unless the group's Lease names it;
/// the sidecars' own promotions still go through (a promotion judged on a
/// lagging cached Lease is refused and retried).
#[tokio::test]
async fn only_the_lease_holder_may_be_labelled_active() {
    let (group, holder) = Group::deploy("sidecar-leasepolicy", 2).await;
    let other = if holder == "web-0" { "web-1" } else { "web-0" };
    let set_active = Patch::Merge(json!({"metadata": {"labels": {"role": "active"}}}));
    // The API server loads policies asynchronously: ask in dry run (which
    // admission judges in full and which changes nothing) until refused.
    let dry_run = PatchParams::default().dry_run();
    let mut refused = None;
    for _ in 0..100 {
        match group.pods().patch(other, &dry_run, &set_active).await {
            Err(e) => {
                refused = Some(e.to_string());
                break;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let refused = refused.expect("the policy never refused role=active on the standby");
    assert!(
        refused.contains(&format!(
            "pod {other} may not be labelled role=active: Lease web is held by {holder}"
        )),
        "{refused}"
    );
    let err = group
        .pods()
        .patch(other, &PatchParams::default(), &set_active)
        .await
        .expect_err("a hand-made role=active on the standby is refused");
    assert!(
        err.to_string().contains("may not be labelled role=active"),
        "{err}"
    );

    // Failover under the policy: the standby, once holder, is admitted.
    group.set_app_health(&holder, "fail").await;
    let new = group.wait_for_new_holder(Some(&holder)).await;
    assert_eq!(new, other);
    group.finish().await;
}

/// A promotion refused at admission (as the Lease-holder policy refuses one
/// judged on a lagging cached Lease) is retried, counted, and goes through
/// once admission allows it. Refusals are made here by a policy of the
/// test's own that holds promotions of a pod while it carries an annotation.
#[tokio::test]
async fn a_promotion_refused_at_admission_is_retried_until_admitted() {
    const HOLD: &str = "test.baton.dev/hold-promotion";
    let (group, holder) = Group::deploy("sidecar-refused", 2).await;
    let standby = if holder == "web-0" { "web-1" } else { "web-0" };
    let ns = group.ns.name.clone();
    // Only this test's policy judges promotions here.
    group.ns.kubectl_ok(
        &["label", "namespace", &ns, "baton.dev/lease-policy=disabled"],
        None,
    );
    let policy = format!("baton-test-hold-{ns}");
    let hold_policy = format!(
        r#"apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {{name: {policy}}}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
    - {{apiGroups: [""], apiVersions: [v1], operations: [UPDATE], resources: [pods]}}
  validations:
  - expression: >-
      !(has(object.metadata.annotations) && '{HOLD}' in object.metadata.annotations)
      || !has(object.metadata.labels) || !('role' in object.metadata.labels)
      || object.metadata.labels['role'] != 'active'
    message: "test: promotion held"
    reason: Invalid
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {{name: {policy}}}
spec:
  policyName: {policy}
  validationActions: [Deny]
  matchResources:
    namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: {ns}}}}}
"#
    );
    // Cluster-scoped: kubectl's namespace flag does not apply to them.
    group
        .ns
        .kubectl_ok(&["apply", "-f", "-"], Some(&hold_policy));
    group
        .ns
        .kubectl_ok(&["annotate", "pod", standby, &format!("{HOLD}=true")], None);
    // Until the API server has loaded the policy (dry run changes nothing).
    let set_active = Patch::Merge(json!({"metadata": {"labels": {"role": "active"}}}));
    let dry_run = PatchParams::default().dry_run();
    let mut held = false;
    for _ in 0..100 {
        match group.pods().patch(standby, &dry_run, &set_active).await {
            Err(e) if e.to_string().contains("promotion held") => {
                held = true;
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert!(held, "the test's policy never held a promotion");

    // The holder's app fails: the standby takes the Lease, but admission
    // refuses its promotion until the annotation goes.
    group.set_app_health(&holder, "fail").await;
    let mut refused = 0.0;
    for _ in 0..200 {
        refused = group
            .sidecar_get(standby, "/metrics")
            .await
            .lines()
            .find_map(|l| l.strip_prefix("baton_promotions_refused_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        if refused >= 2.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        refused >= 2.0,
        "the standby's promotion was not refused and retried: {refused}"
    );
    let lease: Api<Lease> = group.ns.api();
    let held_by = lease
        .get("web")
        .await
        .expect("lease")
        .spec
        .and_then(|s| s.holder_identity);
    assert_eq!(
        held_by.as_deref(),
        Some(standby),
        "the standby holds the Lease meanwhile"
    );

    // Lift the hold while the sidecar is frozen, so that it resumes with
    // both the retry due and the Pod changed: a promotion sent before the
    // watch shows the new Pod conflicts (409), and must then wait for the
    // watch instead of resending the stale version in a loop.
    let pid = group.sidecar_pid(standby).await;
    signal(pid, "STOP").await;
    let lifted = group
        .ns
        .kubectl(&["annotate", "pod", standby, &format!("{HOLD}-")], None);
    signal(pid, "CONT").await;
    assert!(
        lifted.status.success(),
        "{}",
        String::from_utf8_lossy(&lifted.stderr)
    );
    let new = group.wait_for_new_holder(Some(&holder)).await;
    assert_eq!(new, standby);
    group.ns.kubectl_ok(
        &[
            "delete",
            "validatingadmissionpolicybinding,validatingadmissionpolicy",
            &policy,
        ],
        None,
    );
    group.finish().await;
}

/// Issue 11's `ghost`: the group's Lease held by no pod, claimed for an
/// hour. Every sidecar says so (a `LeaseHeldByStranger` Warning Event,
/// `/status`'s `lease_problem`), and the claim counts for 10 lease
/// durations at most: then the group elects.
#[tokio::test]
async fn a_lease_held_by_a_stranger_is_reported_and_counts_for_ten_lease_durations_at_most() {
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("sidecar-stranger").await;
    let leases: Api<Lease> = ns.api();
    let ghost: Lease = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"holderIdentity": "ghost", "leaseDurationSeconds": 3600}
    }))
    .expect("a lease");
    leases
        .create(&Default::default(), &ghost)
        .await
        .expect("the ghost's lease");
    let guard = NeverTwoActive::start(ns.api(), "app=web", "role", "active").await;
    // Short timings: the bound is 10 × 2 s.
    ns.apply(&workload::statefulset(
        "web",
        2,
        true,
        &[
            ("BATON_LEASE_DURATION", "2s"),
            ("BATON_RENEW_DEADLINE", "1s"),
            ("BATON_RENEW_PERIOD", "400ms"),
            ("BATON_RETRY_PERIOD", "200ms"),
            ("BATON_API_TIMEOUT", "500ms"),
        ],
    ));
    let reported = |e: &Event| {
        e.reason.as_deref() == Some("LeaseHeldByStranger")
            && e.type_.as_deref() == Some("Warning")
            && e.note.as_deref().is_some_and(|n| n.contains("\"ghost\""))
    };
    wait_until::<Event, _>(ns.api(), "", T, "a LeaseHeldByStranger Event", |events| {
        events.iter().any(reported)
    })
    .await;
    let status = sidecar_status(&ns, "web-0").await;
    // (The claim lasts 20 s; the Event came within a few.)
    assert_eq!(status.holder.as_deref(), Some("ghost"), "{status:?}");
    assert!(
        status
            .lease_problem
            .as_deref()
            .is_some_and(|p| p.contains("\"ghost\"")),
        "{status:?}"
    );
    // 20 s after it was first seen, the claim is spent: a pod of the group
    // takes the Lease.
    let holder = wait_for_object::<Lease, _>(leases, "web", T, "a holder of the group", |l| {
        l.spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref())
            .is_some_and(|h| h.starts_with("web-"))
    })
    .await;
    let holder = holder
        .spec
        .and_then(|s| s.holder_identity)
        .expect("the holder");
    wait_until::<Pod, _>(
        ns.api(),
        "app=web",
        T,
        "the holder labelled active",
        |pods| labelled(pods, "role", "active") == [holder.clone()],
    )
    .await;
    assert_eq!(guard.assert_held().await, 1, "one active pod at a time");
    ns.delete().await;
}
